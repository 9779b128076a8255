//! The active/passive recipe (README "One leader among replicas", `examples/leader.yaml`): every
//! replica runs `pglock run --key NAME -- ./scheduler`, one runs, the others wait. These tests
//! measure the two failover times the README states: the leader's process dies (its socket
//! closes) and a standby's child starts within milliseconds; the leader's host vanishes and the
//! server frees the lock after `--release-after`, never before the leader's child is dead.

use crate::harness::*;
use nix::sys::signal::Signal;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A replica: `pglock run` whose child writes the time it started (ns) and its pid, then sleeps.
fn replica(url: &str, args: &[&str], name: &str, stamp: &Path) -> Command {
    let script = format!(
        "echo $$ > {s}.pid; date +%s%N > {s}; exec sleep 600",
        s = stamp.display()
    );
    let mut c = Run::new(name).args(["-q"]).args(args).url(url).sh(&script);
    c.stderr(Stdio::piped());
    c
}

fn read_ns(p: &Path) -> Option<i128> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn alive(pid_file: &Path) -> bool {
    let pid = std::fs::read_to_string(pid_file).unwrap();
    std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
        .is_ok_and(|s| s.rsplit(") ").next().is_some_and(|r| !r.starts_with('Z')))
}

fn waiting(c: &Cluster, id: i64) -> bool {
    c.locks_on(id).iter().any(|l| l.contains(",f,"))
}

#[test]
fn the_leader_killed_its_standby_starts_within_milliseconds() {
    let name = key("leader-kill");
    let id = lock_id(&name);
    let dir = tmpdir("leader-kill");
    let (a, b) = (dir.join("a"), dir.join("b"));
    let mut leader = hold(replica(&pg().url(), &[], &name, &a), id);
    assert!(wait_until(Duration::from_secs(10), || read_ns(&a).is_some()));
    let mut standby = replica(&pg().url(), &[], &name, &b).spawn().unwrap();
    assert!(wait_until(Duration::from_secs(10), || waiting(pg(), id)));
    let mut took = Vec::new();
    // SIGKILL of pglock: its guard kills the child, the socket closes, the server frees the lock.
    signal(&leader, Signal::SIGKILL);
    let killed = now_ns();
    let _ = leader.wait();
    assert!(
        wait_until(Duration::from_secs(5), || read_ns(&b).is_some()),
        "the standby took over"
    );
    took.push((read_ns(&b).unwrap() - killed) as f64 / 1e6);
    assert!(
        !alive(&a.with_extension("pid")),
        "the old leader's child survived"
    );
    // And a leader that is stopped in the ordinary way (a rolling update: SIGTERM to the pod).
    std::fs::remove_file(&a).unwrap();
    let mut third = replica(&pg().url(), &[], &name, &a).spawn().unwrap();
    assert!(wait_until(Duration::from_secs(10), || waiting(pg(), id)));
    signal(&standby, Signal::SIGTERM);
    let stopped = now_ns();
    let _ = standby.wait();
    assert!(
        wait_until(Duration::from_secs(5), || read_ns(&a).is_some()),
        "the third took over"
    );
    took.push((read_ns(&a).unwrap() - stopped) as f64 / 1e6);
    eprintln!("leader failover: standby's child started {:.1} ms after SIGKILL of the leader, {:.1} ms after SIGTERM", took[0], took[1]);
    for ms in &took {
        assert!(*ms < 1000.0, "failover took {ms} ms");
    }
    signal(&third, Signal::SIGTERM);
    let _ = third.wait();
}

/// The leader's host vanishes: its address disappears inside a network namespace of this test's
/// own, so neither side hears from the other again and nothing is closed. The leader stops its
/// child within 2 heartbeats + kill-after and exits 74; the server frees the lock only when its
/// keepalive gives up, `--release-after` after the last it heard of the leader; then the standby
/// starts.
#[test]
fn the_leaders_host_vanishes_the_lock_is_freed_after_release_after_never_before() {
    if !require_root("a network namespace") || !require_tool("ip") {
        return;
    }
    // The namespace belongs to one thread and the processes it starts.
    std::thread::spawn(vanishing_host).join().unwrap();
}

fn vanishing_host() {
    // SAFETY: unshare(2) with CLONE_NEWNET only changes this thread's network namespace; no
    // memory is involved.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    let ip_bin = find_tool("ip").expect("ip (iproute2)");
    let ip = |args: &str| {
        let out = Command::new(&ip_bin)
            .args(args.split(' '))
            .output()
            .expect("ip (iproute2)");
        assert!(out.status.success(), "ip {args}: {out:?}");
    };
    ip("link set lo up");
    // The leader's "host": an address of its own, which the test removes.
    ip("addr add 10.77.0.1/32 dev lo");
    let c = Cluster::start_with(
        "vanish",
        "listen_addresses = '127.0.0.1,10.77.0.1'",
        "host all all 10.77.0.1/32 scram-sha-256",
    );
    let url = |host: &str| {
        format!(
            "postgres://postgres:{SUPERUSER_PASSWORD}@{host}:{}/postgres?sslmode=disable",
            c.port
        )
    };
    let name = key("leader-vanish");
    let id = lock_id(&name);
    let dir = tmpdir("leader-vanish");
    let (a, b) = (dir.join("a"), dir.join("b"));
    // 3 x 1s + 1s + 1s <= 5s: the timing rule holds.
    let (heartbeat, release_after) = (1.0, 5.0);
    let timing = [
        "--heartbeat",
        "1s",
        "--kill-after",
        "1s",
        "--release-after",
        "5s",
    ];
    let mut leader = replica(&url("10.77.0.1"), &timing, &name, &a)
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || read_ns(&a).is_some()),
        "the leader started"
    );
    let standby = replica(&url("127.0.0.1"), &[], &name, &b).spawn().unwrap();
    assert!(wait_until(Duration::from_secs(10), || waiting(&c, id)));
    std::thread::sleep(Duration::from_millis(1500));
    // The leader's backend: the lock is freed when it no longer holds it.
    let backend = c.psql_super(&format!(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
         AND classid = {} AND objid = {}",
        (id as u64) >> 32,
        id as u64 & 0xffff_ffff
    ));
    let held_by_leader = || {
        c.psql_super(&format!(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = {backend}"
        )) != "0"
    };
    assert!(held_by_leader(), "backend {backend}");

    ip("addr del 10.77.0.1/32 dev lo");
    let t0 = Instant::now();
    let vanished = now_ns();
    // The leader stops its child; the standby's child can only start once the server has
    // freed the lock: its start time is when the lock was freed (within milliseconds).
    let mut child_dead = None;
    while t0.elapsed() < Duration::from_secs(15) && (child_dead.is_none() || read_ns(&b).is_none())
    {
        if child_dead.is_none() && !alive(&a.with_extension("pid")) {
            child_dead = Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let child_dead = child_dead.expect("the leader's child stopped");
    let status = leader.wait().unwrap();
    let mut err = String::new();
    use std::io::Read;
    leader
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(74), "{err}");
    assert!(read_ns(&b).is_some(), "the standby took over");
    assert!(!held_by_leader(), "backend {backend} still holds the lock");
    let started = Duration::from_nanos((read_ns(&b).unwrap() - vanished) as u64);
    eprintln!(
        "host vanished: leader's child stopped after {child_dead:?}, standby's child started after {started:?} (--heartbeat 1s --kill-after 1s --release-after 5s)"
    );
    // Detection within 2 heartbeats, then SIGTERM (sleep dies at once); slack for a busy machine.
    assert!(
        child_dead < Duration::from_secs_f64(2.0 * heartbeat + 1.5),
        "{child_dead:?}"
    );
    // Never before: the server's clock started at the last word from the leader, at most one
    // heartbeat before the address vanished; and never before the leader's child was dead.
    assert!(
        started > child_dead,
        "the standby started {started:?}, before the leader's child died {child_dead:?}"
    );
    assert!(
        started >= Duration::from_secs_f64(release_after - heartbeat),
        "the lock was freed after {started:?}"
    );
    assert!(
        started < Duration::from_secs_f64(release_after + 2.0),
        "the lock was freed after {started:?}"
    );
    stop(standby);
}

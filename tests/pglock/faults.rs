//! Contract §4-§6 under faults: the child runs only while the lock is held, through server-side
//! kills, restarts, silent partitions and SIGKILL of pglock; --max-runtime; PID 1; nesting.

use crate::harness::*;
use nix::sys::signal::Signal;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// A child that appends `<tag> <ns>` lines to `file` in a loop until it is killed.
fn writer(file: &std::path::Path, tag: &str, ignore_term: bool) -> String {
    format!(
        "{}echo $$ > {f}.pid.{tag}; while :; do echo {tag} $(date +%s%N) >> {f}; done",
        if ignore_term { "trap '' TERM; " } else { "" },
        f = file.display()
    )
}

/// (last ns written with `a`, first ns written with `b`).
fn last_a_first_b(file: &std::path::Path) -> (i128, i128) {
    let text = std::fs::read_to_string(file).unwrap();
    let stamps = |tag: &str| -> Vec<i128> {
        text.lines()
            .filter_map(|l| l.strip_prefix(tag))
            .filter_map(|v| v.trim().parse().ok())
            .collect()
    };
    let a = stamps("a ");
    let b = stamps("b ");
    assert!(
        !a.is_empty() && !b.is_empty(),
        "both children wrote: {} a, {} b",
        a.len(),
        b.len()
    );
    (*a.iter().max().unwrap(), *b.iter().min().unwrap())
}

fn backend_of(c: &Cluster, name: &str) -> String {
    let q = format!("SELECT pid FROM pg_stat_activity WHERE application_name = 'pglock:{name}' AND pid IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)");
    let mut pid = String::new();
    assert!(wait_until(Duration::from_secs(10), || {
        pid = c.psql_super(&q);
        !pid.is_empty()
    }));
    pid
}

fn waiting(c: &Cluster, id: i64) -> bool {
    c.locks_on(id).iter().any(|l| l.contains(",f,"))
}

fn pid_alive(file: &std::path::Path) -> bool {
    // A zombie (dead, not yet reaped by its new parent) has stopped running: it counts as dead.
    let pid: i32 = std::fs::read_to_string(file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    state_of(pid).is_some_and(|s| s != 'Z')
}

/// A cluster of its own for the tests that restart the server.
fn restart_cluster() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| Cluster::start("restart", ""))
}

/// The server ends the lock's session while the child runs: the child gets SIGTERM, pglock exits
/// 74 quickly, and the next waiter's child starts only after the first child's last write.
fn server_ends_the_session(c: &Cluster, name: &str, end_it: impl FnOnce(&str)) -> Duration {
    let id = lock_id(name);
    let dir = tmpdir("srvend");
    let file = dir.join("stamps");
    let a = Run::new(name)
        .on(c)
        .sh(&writer(&file, "a", false))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let backend = backend_of(c, name);
    let b = Run::new(name)
        .on(c)
        .sh(&format!("echo b $(date +%s%N) >> {}", file.display()))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || waiting(c, id)),
        "B queued"
    );
    let t = Instant::now();
    end_it(&backend);
    let out = a.wait_with_output().unwrap();
    let took = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(74), "{err}");
    assert!(
        took < Duration::from_secs(2),
        "pglock took {took:?} to stop"
    );
    assert!(err.contains("lock lost"), "{err}");
    assert!(!pid_alive(&dir.join("stamps.pid.a")), "the child survived");
    all_succeed(vec![b]);
    let (last_a, first_b) = last_a_first_b(&file);
    assert!(
        last_a < first_b,
        "overlap: A wrote at {last_a}, B started at {first_b}"
    );
    took
}

#[test]
fn pg_terminate_backend_stops_the_child_and_the_next_waiter_starts_after_it() {
    let name = key("terminate");
    let took = server_ends_the_session(pg(), &name, |backend| {
        pg().psql_super(&format!("SELECT pg_terminate_backend({backend})"));
    });
    eprintln!("pg_terminate_backend: pglock exited 74 after {took:?}");
}

#[test]
fn a_server_restart_stops_the_child_and_the_waiter_reconnects() {
    let c = restart_cluster();
    let name = key("restart");
    let took = server_ends_the_session(c, &name, |_| c.restart());
    eprintln!("restart: pglock exited 74 {took:?} after the restart began");
}

/// A TCP relay that can go silent: it stops forwarding without closing either side.
struct Relay {
    port: u16,
    frozen: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
}

impl Relay {
    fn start(to: u16) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let closed = Arc::new(AtomicBool::new(false));
        let (f, cl) = (frozen.clone(), closed.clone());
        std::thread::spawn(move || {
            for client in l.incoming().flatten() {
                let server = TcpStream::connect(("127.0.0.1", to)).unwrap();
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let (f, cl) = (f.clone(), cl.clone());
                    std::thread::spawn(move || {
                        let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
                        let mut buf = [0u8; 16384];
                        loop {
                            if cl.load(Ordering::SeqCst) {
                                let _ = from.shutdown(std::net::Shutdown::Both);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                                return;
                            }
                            if f.load(Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(20));
                                continue;
                            }
                            match from.read(&mut buf) {
                                Ok(0) => {
                                    let _ = to.shutdown(std::net::Shutdown::Write);
                                    return;
                                }
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        return;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => return,
                            }
                        }
                    });
                }
            }
        });
        Relay {
            port,
            frozen,
            closed,
        }
    }
}

#[test]
fn a_silent_partition_is_detected_within_the_heartbeat_bound_and_the_server_keeps_the_lock_until_the_child_is_dead(
) {
    let name = key("partition");
    let id = lock_id(&name);
    let relay = Relay::start(pg().port);
    let url = format!(
        "postgres://postgres:{SUPERUSER_PASSWORD}@127.0.0.1:{}/postgres?sslmode=disable",
        relay.port
    );
    let dir = tmpdir("partition");
    let file = dir.join("stamps");
    let mut cmd = Run::new(&name)
        .args(["--heartbeat", "300ms", "--kill-after", "500ms"])
        .args(["--release-after", "3s"])
        .url(url)
        .sh(&writer(&file, "a", true));
    cmd.stderr(Stdio::piped());
    let a = hold(cmd, id);
    std::thread::sleep(Duration::from_millis(400));
    let t = Instant::now();
    relay.frozen.store(true, Ordering::SeqCst);
    let out = a.wait_with_output().unwrap();
    let took = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(74), "{err}");
    assert!(err.contains("no answer from the server"), "{err}");
    // Detection within 2 x heartbeat, plus kill-after (the child ignores SIGTERM), plus slack.
    assert!(
        took < Duration::from_millis(600 + 500 + 700),
        "took {took:?}"
    );
    assert!(!pid_alive(&dir.join("stamps.pid.a")), "the child survived");
    // The child is dead and the server still holds the lock for the vanished session.
    assert_eq!(
        pg().locks_on(id).len(),
        1,
        "the server freed the lock while the child may have run"
    );
    eprintln!("partition: detected and child stopped {took:?} after the relay went silent (bound 2 x 300ms + 500ms kill-after)");
    relay.closed.store(true, Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(10), || pg().locks_on(id).is_empty()),
        "released once the connection closes"
    );
}

/// SIGKILLs pglock `a` once a second pglock waits for lock `id`, and reaps it.
fn kill_once_queued(mut a: std::process::Child, id: i64) {
    assert!(
        wait_until(Duration::from_secs(10), || waiting(pg(), id)),
        "B queued"
    );
    signal(&a, Signal::SIGKILL);
    let _ = a.wait();
}

#[test]
fn sigkill_of_pglock_never_lets_the_next_child_overlap() {
    let name = key("sigkill");
    let id = lock_id(&name);
    for round in 0..20 {
        let dir = tmpdir("sigkill");
        let file = dir.join("stamps");
        // A's child ignores SIGTERM: the guard kills it after --kill-after.
        let a = Run::new(&name)
            .args(["-q", "--kill-after", "200ms"])
            .sh(&writer(&file, "a", true))
            .spawn()
            .unwrap();
        assert!(wait_until(Duration::from_secs(10), || std::fs::metadata(
            &file
        )
        .is_ok_and(|m| m.len() > 0)));
        let b = Run::new(&name)
            .args(["-q"])
            .sh(&format!("echo b $(date +%s%N) >> {}", file.display()))
            .spawn()
            .unwrap();
        kill_once_queued(a, id);
        let bout = b.wait_with_output().unwrap();
        assert_eq!(bout.status.code(), Some(0));
        let (last_a, first_b) = last_a_first_b(&file);
        assert!(
            last_a < first_b,
            "round {round}: A's child wrote at {last_a}, after B's child started at {first_b}"
        );
        assert!(
            !pid_alive(&dir.join("stamps.pid.a")),
            "round {round}: A's child survived"
        );
    }
}

/// The guard alone: a child that exec'd a set-user-ID program has lost its parent-death signal
/// (the kernel clears it), so only the guard kills it when pglock is SIGKILLed, and the lock
/// must stay held until it is dead.
#[test]
fn sigkill_of_pglock_kills_a_set_uid_child_before_the_lock_is_freed() {
    if !require_root("a set-user-ID program of another user") {
        return;
    }
    let name = key("guard-suid");
    let id = lock_id(&name);
    let dir = tmpdir("guard-suid");
    let sleeper = dir.join("sleep-as-postgres");
    std::fs::copy("/bin/sleep", &sleeper).unwrap();
    let uid = nix::unistd::User::from_name("postgres")
        .unwrap()
        .unwrap()
        .uid
        .as_raw();
    std::os::unix::fs::chown(&sleeper, Some(uid), None).unwrap();
    std::fs::set_permissions(&sleeper, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let a = Run::new(&name)
        .args(["-q"])
        .child([sleeper.as_os_str(), "30".as_ref()])
        .spawn()
        .unwrap();
    let mut child = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            child = children_of(a.id() as i32).into_iter().find(|&p| {
                stat_fields(p).is_some_and(|_| {
                    std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|e| e == sleeper)
                })
            });
            child.is_some()
        }),
        "A's child started"
    );
    let child = child.unwrap();
    // B's child reports the state of A's child when it starts: gone, or a zombie.
    let b = Run::new(&name)
        .args(["-q"])
        .sh(&format!(
            "cut -d' ' -f3 /proc/{child}/stat 2>/dev/null; true"
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    kill_once_queued(a, id);
    assert!(
        wait_until(Duration::from_secs(5), || state_of(child)
            .is_none_or(|s| s == 'Z')),
        "A's set-uid child was not killed when pglock died"
    );
    let out = b.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let seen = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        seen.is_empty() || seen == "Z",
        "B's child started while A's child was alive (state {seen})"
    );
}

#[test]
fn max_runtime_stops_the_child_exits_124_and_releases() {
    let name = key("maxrt");
    let id = lock_id(&name);
    let dir = tmpdir("maxrt");
    let file = dir.join("stamps");
    let t = Instant::now();
    let (_, err) = expect_code(
        Run::new(&name)
            .args(["--max-runtime", "500ms", "--kill-after", "300ms"])
            .sh(&writer(&file, "a", true)),
        124,
    );
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(err.contains("--max-runtime"), "{err}");
    assert!(!pid_alive(&dir.join("stamps.pid.a")));
    assert!(pg().locks_on(id).is_empty());
}

#[test]
fn as_pid_1_it_reaps_orphans_and_forwards_sigterm() {
    if !require_root("unshare --pid") || !require_tool("unshare") {
        return;
    }
    let name = key("pid1");
    let dir = tmpdir("pid1");
    let ready = dir.join("ready");
    // The child leaves an orphan (the subshell's sleep) that is reparented to pglock as PID 1.
    let script = format!("trap 'echo TERM > {d}/term; exit 0' TERM; (sleep 0.2 &); touch {r}; while :; do sleep 0.05; done", d = dir.display(), r = ready.display());
    let mut cmd = Run::new(&name)
        .under(["unshare", "--pid", "--fork", "--kill-child"])
        .sh(&script);
    cmd.stderr(Stdio::piped());
    let unshare = cmd.spawn().unwrap();
    assert!(wait_until(Duration::from_secs(10), || ready.exists()));
    std::thread::sleep(Duration::from_millis(600));
    // pglock is unshare's child; it must have no zombie children.
    let pglock_pid = children_of(unshare.id() as i32)[0];
    let zombies: Vec<i32> = children_of(pglock_pid)
        .into_iter()
        .filter(|p| state_of(*p) == Some('Z'))
        .collect();
    assert!(zombies.is_empty(), "zombies under PID 1: {zombies:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pglock_pid), Signal::SIGTERM).unwrap();
    all_succeed(vec![unshare]);
    assert_eq!(
        std::fs::read_to_string(dir.join("term")).unwrap().trim(),
        "TERM"
    );
}

fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if ppid_of(p) == Some(pid) {
            out.push(p);
        }
    }
    out
}

fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(
        s[s.rfind(')')? + 2..]
            .split_whitespace()
            .map(str::to_string)
            .collect(),
    )
}

fn ppid_of(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

fn state_of(pid: i32) -> Option<char> {
    stat_fields(pid)?.first()?.chars().next()
}

#[test]
fn nesting_runs_at_once_when_covered_and_fails_at_once_when_not() {
    let name = key("nest");
    let t = Instant::now();
    expect_code(
        Run::new(&name).child([bin(), "run", "--key", &name, "--", "true"]),
        0,
    );
    // Through a shell in between, and with the key from the inherited PGLOCK_KEY.
    expect_code(pglock_sh(&name, &format!("{} run -- true", bin())), 0);
    expect_code(
        Run::new(&name)
            .args(["--shared"])
            .sh(&format!("{} run --shared -- true", bin())),
        0,
    );
    let (_, err) = expect_code(
        Run::new(&name)
            .args(["--shared"])
            .child([bin(), "run", "--key", &name, "--", "true"]),
        2,
    );
    assert!(err.contains("shared") && err.contains("forever"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn timing_values_that_break_the_rule_are_refused() {
    let (_, err) = expect_code(
        Run::new("x").args(["--heartbeat", "10s"]).child(["true"]),
        2,
    );
    assert!(
        err.contains("--release-after") && err.contains("41s"),
        "{err}"
    );
    let (_, err) = expect_code(
        Run::new("x").args(["--kill-after", "1m"]).child(["true"]),
        2,
    );
    assert!(err.contains("76s"), "{err}");
    expect_code(
        Run::new(&key("rule"))
            .args(["--kill-after", "1m", "--release-after", "2m"])
            .child(["true"]),
        0,
    );
}

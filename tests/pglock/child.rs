//! Contract §5 and §8: what the child inherits and gets, and the log lines around it.

use crate::harness::*;
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

#[test]
fn the_child_gets_stdio_cwd_env_and_the_pglock_variables() {
    let name = key("childenv");
    let dir = tmpdir("childenv");
    let script = "read line; echo \"in=$line\"; echo \"cwd=$(pwd)\"; echo \"key=$PGLOCK_KEY\"; echo \"id=$PGLOCK_LOCK_ID\"; echo \"run=$PGLOCK_RUN_ID\"; echo \"mine=$MY_VAR\"; echo \"keyid=${PGLOCK_KEY_ID-unset}\"";
    let mut c = pglock_sh(&name, script);
    c.current_dir(&dir)
        .env("MY_VAR", "kept")
        .env("PGLOCK_KEY_ID", "should-be-removed");
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"piped input\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let id = lock_id(&name);
    for want in [
        "in=piped input".to_string(),
        format!("cwd={}", dir.display()),
        format!("key={name}"),
        format!("id={id}"),
        "mine=kept".to_string(),
        "keyid=unset".to_string(),
    ] {
        assert!(
            stdout.lines().any(|l| l == want),
            "missing {want:?} in:\n{stdout}"
        );
    }
    let run_id = stdout.lines().find_map(|l| l.strip_prefix("run=")).unwrap();
    assert_eq!(run_id.len(), 16, "{run_id}");
    for line in stderr.lines() {
        assert!(
            line.starts_with("pglock: ") && line.contains(run_id),
            "log line without the run id: {line}"
        );
    }
}

#[test]
fn no_descriptor_of_pglock_reaches_the_child() {
    let name = key("fds");
    // ls lists its own descriptors. Run straight from here, it shows what this test process
    // passes on (cargo's jobserver, say); under pglock it must show exactly the same set.
    let baseline = std::process::Command::new("ls")
        .arg("/proc/self/fd")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let baseline = String::from_utf8_lossy(&baseline.stdout).into_owned();
    let (out, err) = expect_code(Run::new(&name).child(["ls", "/proc/self/fd"]), 0);
    let mut fds: Vec<&str> = out.split_whitespace().collect();
    let mut want: Vec<&str> = baseline.split_whitespace().collect();
    fds.sort();
    want.sort();
    assert_eq!(
        fds, want,
        "the child has descriptors that plain ls does not: {err}"
    );
    assert!(fds.len() >= 4);
}

#[test]
fn json_logs_carry_the_contract_fields_and_the_last_event_the_totals() {
    let name = key("json");
    let (_, err) = expect_code(
        Run::new(&name).args(["--log-format", "json"]).sh("exit 7"),
        7,
    );
    let lines: Vec<&str> = err.lines().collect();
    assert!(lines.len() >= 2, "{err}");
    for l in &lines {
        assert!(l.starts_with('{') && l.ends_with('}'), "{l}");
        for f in [
            "\"ts\":",
            "\"level\":",
            "\"event\":",
            "\"key\":",
            "\"lock_id\":",
            "\"run_id\":",
        ] {
            assert!(l.contains(f), "{f} missing in {l}");
        }
        assert!(l.contains(&format!("\"key\":\"{name}\"")), "{l}");
        assert!(
            l.contains(&format!("\"lock_id\":\"{}\"", lock_id(&name))),
            "{l}"
        );
    }
    let last = lines.last().unwrap();
    for f in ["\"waited_ms\":", "\"ran_ms\":", "\"exit_code\":7"] {
        assert!(last.contains(f), "{f} missing in the last event {last}");
    }
    assert!(lines[0].contains("\"event\":\"acquired\""), "{}", lines[0]);
    // A failure's last event carries them too.
    let id = lock_id(&name);
    let holder = hold(Run::new(&name).child(["sleep", "30"]), id);
    let (_, err) = expect_code(
        Run::new(&name)
            .args(["-n", "--log-format", "json"])
            .child(["true"]),
        75,
    );
    let last = err.lines().last().unwrap();
    assert!(
        last.contains("\"event\":\"not_acquired\"")
            && last.contains("\"exit_code\":75")
            && last.contains("\"waited_ms\":"),
        "{last}"
    );
    stop(holder);
}

#[test]
fn quiet_prints_nothing_on_success_and_verbose_more() {
    let name = key("quiet");
    let (_, err) = expect_code(Run::new(&name).args(["-q"]).child(["true"]), 0);
    assert_eq!(err, "");
    let (_, normal) = expect_code(Run::new(&name).child(["true"]), 0);
    let (_, verbose) = expect_code(Run::new(&name).args(["-v"]).child(["true"]), 0);
    assert!(
        verbose.lines().count() > normal.lines().count(),
        "{normal}\n---\n{verbose}"
    );
    assert!(
        normal.contains("acquired") && normal.contains("released"),
        "{normal}"
    );
}

/// The child runs with pglock's own CPU affinity, whatever it is: all CPUs, or the set pglock
/// was started with. (A spawn that holds the child to one CPU, as src/proc/spawn.rs once did for its
/// start, must not leave the command there.)
#[test]
fn the_child_runs_with_pglock_cpu_affinity() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        note("skipped: one CPU, so no affinity to compare");
        return;
    }
    let cpus_allowed = |status: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap_or_else(|| panic!("no Cpus_allowed_list in {status:?}"))
            .trim()
            .to_string()
    };
    let allowed = |mask: Option<&'static [usize]>| {
        let mut cmd = pglock_sh(
            &key("affinity"),
            "grep ^Cpus_allowed_list: /proc/self/status",
        );
        if let Some(cpus) = mask {
            // SAFETY: sched_setaffinity is async-signal-safe; the cpu_set_t is a stack local.
            unsafe {
                before_exec(&mut cmd, move || {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    for &c in cpus {
                        libc::CPU_SET(c, &mut set);
                    }
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                });
            }
        }
        let (out, _) = expect_code(cmd, 0);
        cpus_allowed(&out)
    };
    let mine = cpus_allowed(&std::fs::read_to_string("/proc/self/status").unwrap());
    for _ in 0..5 {
        assert_eq!(allowed(None), mine, "the child's CPUs differ from pglock's");
    }
    assert_eq!(allowed(Some(&[0, 1])), "0-1");
    assert_eq!(allowed(Some(&[1])), "1");
}

/// The scheduling lines of /proc/self/sched that pglock could change: policy, priority (the
/// nice value) and the EEVDF slice (Linux 6.6+; pglock shortens its own, see proc/sched.rs).
const SCHED_LINES: &str = "grep -E '^(policy|prio|se.slice) ' /proc/self/sched";

#[test]
fn the_child_runs_with_the_scheduling_pglock_was_started_with() {
    let direct = |nice: i32| {
        let mut c = std::process::Command::new("sh");
        c.args(["-c", SCHED_LINES]);
        expect_code(under_nice(c, nice), 0).0
    };
    if !direct(0).contains("se.slice") {
        note("skipped: this kernel shows no se.slice in /proc/self/sched");
        return;
    }
    let name = key("sched");
    for nice in [0, 7] {
        let want = direct(nice);
        // Without a wait the slice changes after the spawn; a waiting run changes it before.
        let (out, err) = expect_code(under_nice(pglock_sh(&name, SCHED_LINES), nice), 0);
        assert_eq!(out, want, "a run that took the lock at once: {err}");
        let holder = under_nice(pglock_sh(&name, "exec sleep 60"), nice)
            .spawn()
            .unwrap();
        let id = lock_id(&name);
        assert!(wait_until(Duration::from_secs(10), || someone_holds(id)));
        let mut waiter = under_nice(pglock_sh(&name, SCHED_LINES), nice);
        waiter.stdout(Stdio::piped()).stderr(Stdio::piped());
        let waiter = waiter.spawn().unwrap();
        assert!(wait_until(Duration::from_secs(10), || someone_waits(id)));
        // The holder's child ends at SIGTERM, and with it the holder (143).
        assert_eq!(stop(holder), Some(143));
        let done = waiter.wait_with_output().unwrap();
        let (out, err) = (
            String::from_utf8_lossy(&done.stdout),
            String::from_utf8_lossy(&done.stderr),
        );
        assert!(done.status.success(), "{err}");
        assert!(err.contains("waiting for lock"), "{err}");
        assert_eq!(out, want, "a run that waited for the lock: {err}");
    }
}

/// `cmd` started with nice value `nice` (0: as this test runs).
fn under_nice(mut cmd: std::process::Command, nice: i32) -> std::process::Command {
    if nice != 0 {
        // SAFETY: nice(2) is async-signal-safe.
        unsafe {
            before_exec(&mut cmd, move || {
                libc::nice(nice);
            })
        };
    }
    cmd
}

#[test]
fn the_child_starts_with_no_signal_blocked_or_ignored_by_pglock() {
    let name = key("sigmask");
    let mut cmd = Run::new(&name).child(["grep", "-E", "^Sig(Blk|Ign):", "/proc/self/status"]);
    // pglock itself starts with SIGUSR2 and SIGALRM blocked; its child must not inherit that.
    // SAFETY: sigemptyset, sigaddset and sigprocmask are async-signal-safe; the sigset_t is a
    // stack local.
    unsafe {
        before_exec(&mut cmd, || {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR2);
            libc::sigaddset(&mut set, libc::SIGALRM);
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        });
    }
    let (out, err) = expect_code(cmd, 0);
    let field = |f: &str| {
        let v = out
            .lines()
            .find_map(|l| l.strip_prefix(f))
            .unwrap_or_else(|| panic!("{out}{err}"));
        u64::from_str_radix(v.trim(), 16).unwrap()
    };
    assert_eq!(field("SigBlk:"), 0, "blocked signals in the child: {out}");
    // SIGPIPE (13) is ignored inside pglock (Rust's runtime) and must not be in the child.
    assert_eq!(
        field("SigIgn:") & (1 << 12),
        0,
        "SIGPIPE ignored in the child: {out}"
    );
    // The forwarded signals are at their defaults, not ignored.
    for sig in [1, 2, 3, 10, 12, 15, 28] {
        assert_eq!(
            field("SigIgn:") & (1 << (sig - 1)),
            0,
            "signal {sig} ignored in the child: {out}"
        );
    }
}

/// A child that starts two grandchildren in its process group and waits: one that traps
/// nothing, one that ignores SIGTERM. Their pids go to `dir/g1` and `dir/g2`, then `dir/ready`.
fn family_script(dir: &std::path::Path) -> String {
    format!(
        "sleep 30 & echo $! > {d}/g1; (trap '' TERM; exec sleep 30) & echo $! > {d}/g2; \
         touch {d}/ready; wait",
        d = dir.display()
    )
}

/// The state of a process: None when gone, 'Z' for a zombie (dead, not yet reaped).
fn state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 2..].chars().next()
}

fn grandchildren(dir: &std::path::Path) -> [i32; 2] {
    ["g1", "g2"].map(|g| {
        std::fs::read_to_string(dir.join(g))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    })
}

fn dead(pid: i32) -> bool {
    state(pid).is_none_or(|s| s == 'Z')
}

/// Starts pglock A with the family under `args`, and waits until the grandchildren run.
fn start_family(name: &str, dir: &std::path::Path, args: &[&str]) -> std::process::Child {
    let mut all = vec!["run", "-q", "--kill-after", "1s"];
    all.extend_from_slice(args);
    all.extend(["--key", name, "--", "sh", "-c"]);
    let a = pglock(&all).arg(family_script(dir)).spawn().unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || dir.join("ready").exists()),
        "the grandchildren started"
    );
    a
}

/// SIGKILL of pglock: the guard stops the child's whole process group (the grandchild that
/// ignores SIGTERM by SIGKILL after --kill-after) before the server frees the lock, so the next
/// holder's child finds both grandchildren dead.
#[test]
fn sigkill_of_pglock_kills_the_whole_group_before_the_next_holder_starts() {
    let name = key("group-kill9");
    let id = lock_id(&name);
    let dir = tmpdir("group-kill9");
    let mut a = start_family(&name, &dir, &[]);
    let [g1, g2] = grandchildren(&dir);
    // B's child reports the grandchildren's states when it starts: gone, or zombies.
    let b = Run::new(&name).args(["-q"]).child(["sh", "-c"])
        .arg(format!(
            "for g in {g1} {g2}; do s=$(cut -d' ' -f3 /proc/$g/stat 2>/dev/null); echo \"$g ${{s:-gone}}\"; done"
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || someone_waits(id)),
        "B queued"
    );
    let t = std::time::Instant::now();
    signal(&a, nix::sys::signal::Signal::SIGKILL);
    let _ = a.wait();
    let out = b.wait_with_output().unwrap();
    let took = t.elapsed();
    let seen = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("after SIGKILL of pglock, B's child started after {took:?} and saw: {seen:?}");
    assert_eq!(out.status.code(), Some(0));
    for line in seen.lines() {
        assert!(
            line.ends_with(" gone") || line.ends_with(" Z"),
            "B's child started while a grandchild of A was alive: {seen}"
        );
    }
    assert_eq!(seen.lines().count(), 2, "{seen}");
    assert!(dead(g1) && dead(g2));
}

/// SIGKILL of pglock: the child itself gets SIGTERM first, as the rest of its group does, and
/// can clean up within --kill-after.
#[test]
fn sigkill_of_pglock_gives_the_child_sigterm_first() {
    let name = key("group-term");
    let dir = tmpdir("group-term");
    let f = dir.join("term");
    let a = Run::new(&name)
        .args(["-q", "--kill-after", "2s"])
        .child(["sh", "-c"])
        .arg(format!(
            "trap 'echo cleaned > {f}; exit 0' TERM; touch {f}.ready; sleep 30 & wait",
            f = f.display()
        ))
        .spawn()
        .unwrap();
    let ready = dir.join("term.ready");
    assert!(wait_until(Duration::from_secs(10), || ready.exists()));
    signal(&a, nix::sys::signal::Signal::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(&f)
            .is_ok_and(|s| s.trim() == "cleaned")),
        "the child got no SIGTERM to clean up on"
    );
    let mut a = a;
    let _ = a.wait();
    expect_code(Run::new(&name).args(["-w", "5s"]).child(["true"]), 0);
}

/// A lost lock (pg_terminate_backend of pglock's session): the whole group is stopped, the
/// grandchild that ignores SIGTERM by SIGKILL after --kill-after, before pglock exits 74.
#[test]
fn a_lost_lock_stops_the_whole_group() {
    let name = key("group-lost");
    let id = lock_id(&name);
    let dir = tmpdir("group-lost");
    let a = start_family(&name, &dir, &[]);
    let [g1, g2] = grandchildren(&dir);
    pg().psql_super(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = {}",
        id & 0xffff_ffff
    ));
    let out = a.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(74));
    assert!(
        dead(g1) && dead(g2),
        "grandchildren after a lost lock: {:?} {:?}",
        state(g1),
        state(g2)
    );
}

/// --max-runtime: the whole group is stopped before pglock exits 124 and releases.
#[test]
fn max_runtime_stops_the_whole_group() {
    let name = key("group-maxrt");
    let dir = tmpdir("group-maxrt");
    let a = start_family(&name, &dir, &["--max-runtime", "1s"]);
    let [g1, g2] = grandchildren(&dir);
    let out = a.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(124));
    assert!(
        dead(g1) && dead(g2),
        "grandchildren after --max-runtime: {:?} {:?}",
        state(g1),
        state(g2)
    );
}

/// The child exits and leaves members of its group running: they are stopped before the lock is
/// released, and pglock exits with the child's status.
#[test]
fn members_left_behind_by_the_child_are_stopped_before_the_release() {
    let name = key("group-left");
    let dir = tmpdir("group-left");
    let script = format!(
        "sleep 30 & echo $! > {d}/g1; (trap '' TERM; exec sleep 30) & echo $! > {d}/g2; exit 3",
        d = dir.display()
    );
    let t = std::time::Instant::now();
    let (_, err) = expect_code(Run::new(&name).args(["--kill-after", "1s"]).sh(&script), 3);
    let [g1, g2] = grandchildren(&dir);
    assert!(dead(g1) && dead(g2), "{err}");
    assert!(
        err.contains("processes of its process group remain"),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

/// A process that leaves the group with setsid is out of reach (the README says so).
#[test]
fn a_process_that_leaves_the_group_with_setsid_is_out_of_reach() {
    let name = key("group-setsid");
    let dir = tmpdir("group-setsid");
    let script = format!(
        "setsid sh -c 'echo $$ > {d}/g1; exec sleep 30' </dev/null >/dev/null 2>&1 & while [ ! -s {d}/g1 ]; do sleep 0.01; done",
        d = dir.display()
    );
    expect_code(pglock_sh(&name, &script), 0);
    let g: i32 = std::fs::read_to_string(dir.join("g1"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!dead(g), "the setsid process was stopped");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(g),
        nix::sys::signal::Signal::SIGKILL,
    );
}

//! Contract §5 and §8: what the child inherits and gets, and the log lines around it.

use crate::harness::*;
use std::io::Write;
use std::process::Stdio;

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
    let (out, err) = expect_code(
        pglock(&["run", "--key", &name, "--", "ls", "/proc/self/fd"]),
        0,
    );
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
        pglock(&[
            "run",
            "--log-format",
            "json",
            "--key",
            &name,
            "--",
            "sh",
            "-c",
            "exit 7",
        ]),
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
            l.contains(&format!("\"lock_id\":{}", lock_id(&name))),
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
    let holder = hold(pglock(&["run", "--key", &name, "--", "sleep", "30"]), id);
    let (_, err) = expect_code(
        pglock(&[
            "run",
            "-n",
            "--log-format",
            "json",
            "--key",
            &name,
            "--",
            "true",
        ]),
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
    let (_, err) = expect_code(pglock(&["run", "-q", "--key", &name, "--", "true"]), 0);
    assert_eq!(err, "");
    let (_, normal) = expect_code(pglock(&["run", "--key", &name, "--", "true"]), 0);
    let (_, verbose) = expect_code(pglock(&["run", "-v", "--key", &name, "--", "true"]), 0);
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
/// was started with. (A spawn that holds the child to one CPU, as src/spawn.rs once did for its
/// start, must not leave the command there.)
#[test]
fn the_child_runs_with_pglock_cpu_affinity() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        eprintln!("one CPU: nothing to check");
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
            // SAFETY: the closure runs in the forked child before exec and calls only
            // async-signal-safe functions (sched_setaffinity) on a stack-local cpu_set_t.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    for &c in cpus {
                        libc::CPU_SET(c, &mut set);
                    }
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                    Ok(())
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

#[test]
fn the_child_starts_with_no_signal_blocked_or_ignored_by_pglock() {
    let name = key("sigmask");
    let mut cmd = pglock(&[
        "run",
        "--key",
        &name,
        "--",
        "grep",
        "-E",
        "^Sig(Blk|Ign):",
        "/proc/self/status",
    ]);
    // pglock itself starts with SIGUSR2 and SIGALRM blocked; its child must not inherit that.
    // SAFETY: the closure runs in the forked child before exec and calls only async-signal-safe
    // functions (sigemptyset, sigaddset, sigprocmask) on a stack-local sigset_t.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR2);
            libc::sigaddset(&mut set, libc::SIGALRM);
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            Ok(())
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

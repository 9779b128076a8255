//! Contract §4 and §5: signals while waiting cancel the wait; signals while the child runs reach
//! it exactly once, sent to pglock alone, to pglock's process group or by GNU timeout; a
//! terminal's Ctrl-C reaches the child once, the child can read the terminal, and Ctrl-Z
//! suspends the whole job.

use crate::harness::*;
use nix::sys::signal::Signal;
use std::process::Stdio;
use std::time::{Duration, Instant};

const FORWARDED: [(Signal, &str); 7] = [
    (Signal::SIGHUP, "HUP"),
    (Signal::SIGINT, "INT"),
    (Signal::SIGQUIT, "QUIT"),
    (Signal::SIGTERM, "TERM"),
    (Signal::SIGUSR1, "USR1"),
    (Signal::SIGUSR2, "USR2"),
    (Signal::SIGWINCH, "WINCH"),
];

/// A child that writes a line to LOG for every delivery of a forwarded signal, then `ready`, and
/// runs until STOP exists. Perl with unsafe (immediate) signals: a shell's trap, run once for
/// however many deliveries are pending, would hide a second delivery.
const RECORDER: &str = r#"
    my ($log, $stop) = @ARGV;
    open(my $fh, ">>", $log) or die "$log: $!";
    for my $s (qw(HUP INT QUIT TERM USR1 USR2 WINCH)) {
        $SIG{$s} = sub { syswrite($fh, "$s\n") };
    }
    syswrite($fh, "ready\n");
    until (-e $stop) { select(undef, undef, undef, 0.02) }
"#;

/// `pglock ARGS...` + the recorder as its command, with the environment the recorder needs.
fn recorder_args<'a>(log: &'a std::path::Path, stop: &'a std::path::Path) -> [&'a str; 5] {
    [
        "perl",
        "-e",
        RECORDER,
        log.to_str().unwrap(),
        stop.to_str().unwrap(),
    ]
}

fn count(log: &std::path::Path, word: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == word)
        .count()
}

#[test]
fn each_forwarded_signal_reaches_the_child_exactly_once() {
    let name = key("forward");
    let dir = tmpdir("forward");
    let (log, stopf) = (dir.join("log"), dir.join("stop"));
    let mut args = vec!["run", "--key", &name, "--"];
    args.extend(recorder_args(&log, &stopf));
    let child = pglock(&args).env("PERL_SIGNALS", "unsafe").spawn().unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || count(&log, "ready") == 1),
        "child ready"
    );
    for (sig, n) in FORWARDED {
        signal(&child, sig);
        assert!(
            wait_until(Duration::from_secs(5), || count(&log, n) >= 1),
            "{n} did not reach the child"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    for (_, n) in FORWARDED {
        assert_eq!(
            count(&log, n),
            1,
            "{n} reached the child {} times",
            count(&log, n)
        );
    }
    std::fs::write(&stopf, "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn a_second_usr1_or_hup_soon_after_the_first_is_forwarded_too() {
    // Only INT, TERM and QUIT repeats from one sender within 200 ms count once (GNU timeout);
    // a reload or report request sent twice reaches the child twice.
    let name = key("repeat");
    let dir = tmpdir("repeat");
    let (log, stopf) = (dir.join("log"), dir.join("stop"));
    let mut args = vec!["run", "--key", &name, "--"];
    args.extend(recorder_args(&log, &stopf));
    let child = pglock(&args).env("PERL_SIGNALS", "unsafe").spawn().unwrap();
    assert!(wait_until(Duration::from_secs(10), || count(&log, "ready") == 1));
    for (sig, n) in [(Signal::SIGUSR1, "USR1"), (Signal::SIGHUP, "HUP")] {
        signal(&child, sig);
        std::thread::sleep(Duration::from_millis(100));
        signal(&child, sig);
        assert!(
            wait_until(Duration::from_secs(5), || count(&log, n) == 2),
            "{n} reached the child {} times, not 2",
            count(&log, n)
        );
    }
    std::fs::write(&stopf, "").unwrap();
    assert_eq!(child.wait_with_output().unwrap().status.code(), Some(0));
}

#[test]
fn a_signal_while_waiting_cancels_the_wait_at_once() {
    let name = key("waitsig");
    let id = lock_id(&name);
    let dir = tmpdir("waitsig");
    let marker = dir.join("ran");
    let holder = hold(Run::new(&name).child(["sleep", "60"]), id);
    for (sig, n) in [
        (Signal::SIGINT, 2),
        (Signal::SIGTERM, 15),
        (Signal::SIGHUP, 1),
        (Signal::SIGQUIT, 3),
    ] {
        let waiter = Run::new(&name)
            .child(["touch", marker.to_str().unwrap()])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || pg().locks_on(id).len() == 2),
            "waiter queued"
        );
        let t = Instant::now();
        signal(&waiter, sig);
        let out = waiter.wait_with_output().unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "took {:?}",
            t.elapsed()
        );
        assert_eq!(
            out.status.code(),
            Some(128 + n),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("nothing was run"));
        // The server-side wait ended too: only the holder is left.
        assert_eq!(
            pg().locks_on(id),
            vec![format!("ExclusiveLock,t,pglock:{name}")],
            "after {sig}"
        );
    }
    assert!(!marker.exists(), "the command ran");
    stop(holder);
}

/// Runs pglock on a new pseudo-terminal as its session's foreground process group, the way a
/// shell in a terminal would.
fn spawn_on_pty(args: &[&str]) -> (std::process::Child, std::fs::File) {
    spawn_cmd_on_pty(pglock(args))
}

/// Runs `cmd` on a new pseudo-terminal as its session's leader, with the terminal as its
/// controlling terminal; returns it and the terminal's master side.
fn spawn_cmd_on_pty(mut cmd: std::process::Command) -> (std::process::Child, std::fs::File) {
    use std::os::fd::OwnedFd;
    use std::os::unix::process::CommandExt;
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave: OwnedFd = pty.slave;
    cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave));
    // SAFETY: the closure runs in the forked child before exec and calls only async-signal-safe
    // functions (setsid, ioctl TIOCSCTTY on its own stdin).
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if libc::ioctl(0, libc::TIOCSCTTY as _, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    let master = std::fs::File::from(pty.master);
    // Drain the terminal's output so that nothing blocks on a full buffer.
    let mut reader = master.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while matches!(std::io::Read::read(&mut reader, &mut buf), Ok(n) if n > 0) {}
    });
    (child, master)
}

/// Types Ctrl-C on the terminal; the child's trap must log exactly one `INT` (within 5 s, and
/// none more 300 ms later).
fn ctrl_c_reaches_the_child_once(master: &mut std::fs::File, log: &std::path::Path) {
    use std::io::Write;
    master.write_all(&[0x03]).unwrap(); // Ctrl-C
    assert!(
        wait_until(Duration::from_secs(5), || count(log, "INT") >= 1),
        "Ctrl-C did not reach the child"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        count(log, "INT"),
        1,
        "Ctrl-C reached the child {} times",
        count(log, "INT")
    );
}

#[test]
fn ctrl_c_on_a_terminal_reaches_the_child_once_and_the_child_reads_the_terminal() {
    use std::io::Write;
    let name = key("pty");
    let dir = tmpdir("pty");
    let (log, stopf) = (dir.join("log"), dir.join("stop"));
    let script = format!(
        "trap 'echo INT >> {log}' INT; echo ready >> {log}; read line; echo \"got $line\" >> {log}; \
         while [ ! -e {stop} ]; do sleep 0.02; done",
        log = log.display(),
        stop = stopf.display()
    );
    let (child, mut master) = spawn_on_pty(&["run", "--key", &name, "--", "bash", "-c", &script]);
    assert!(
        wait_until(Duration::from_secs(10), || count(&log, "ready") == 1),
        "child ready"
    );
    master.write_all(b"hello from the terminal\n").unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || count(
            &log,
            "got hello from the terminal"
        ) == 1),
        "the child could not read the terminal"
    );
    ctrl_c_reaches_the_child_once(&mut master, &log);
    std::fs::write(&stopf, "").unwrap();
    let status = child.wait_with_output().unwrap().status;
    assert_eq!(status.code(), Some(0));
}

/// Starts `pglock run` with the trapping child under `launch` (which may wrap it), waits until
/// the child is ready, has `send` deliver SIGINT somehow, and returns how many INTs the child
/// saw, with pglock's exit code.
fn sigint_count(
    test: &str,
    launch: impl FnOnce(&[&str]) -> std::process::Command,
    send: impl FnOnce(&std::process::Child),
) -> (usize, Option<i32>) {
    let name = key(test);
    let dir = tmpdir(test);
    let (log, stopf) = (dir.join("log"), dir.join("stop"));
    let mut args = vec!["run", "--key", &name, "--"];
    args.extend(recorder_args(&log, &stopf));
    let mut cmd = launch(&args);
    let child = cmd.env("PERL_SIGNALS", "unsafe").spawn().unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || count(&log, "ready") == 1),
        "child ready"
    );
    send(&child);
    assert!(
        wait_until(Duration::from_secs(5), || count(&log, "INT") >= 1),
        "INT did not reach the child"
    );
    // A second copy, if any, would have arrived by now.
    std::thread::sleep(Duration::from_millis(500));
    let seen = count(&log, "INT");
    std::fs::write(&stopf, "").unwrap();
    let status = child.wait_with_output().unwrap().status;
    (seen, status.code())
}

#[test]
fn sigint_to_pglock_alone_reaches_the_child_once() {
    let (seen, code) = sigint_count("int-alone", pglock, |c| signal(c, Signal::SIGINT));
    assert_eq!(seen, 1, "the child saw INT {seen} times");
    assert_eq!(code, Some(0));
}

/// `kill -INT -PGID` of pglock's process group (a CI runner cancelling a job): the child is in a
/// group of its own, so only pglock gets it, and forwards it once.
#[test]
fn sigint_to_pglocks_process_group_reaches_the_child_once() {
    use std::os::unix::process::CommandExt;
    let (seen, code) = sigint_count(
        "int-group",
        |args| {
            let mut c = pglock(args);
            c.process_group(0);
            c
        },
        |c| {
            let pgid = nix::unistd::Pid::from_raw(-(c.id() as i32));
            nix::sys::signal::kill(pgid, Signal::SIGINT).unwrap();
        },
    );
    assert_eq!(seen, 1, "the child saw INT {seen} times");
    assert_eq!(code, Some(0));
}

/// GNU timeout sends its signal to pglock, then to its own process group (pglock again), then
/// SIGCONT to both: the child sees the INT once.
#[test]
fn timeout_s_int_reaches_the_child_once() {
    let (seen, code) = sigint_count(
        "int-timeout",
        |args| {
            let c = pglock(args);
            let program = c.get_program().to_owned();
            let mut t = std::process::Command::new("timeout");
            t.args(["-s", "INT", "1"]).arg(program).args(args);
            for (k, v) in c.get_envs() {
                match v {
                    Some(v) => t.env(k, v),
                    None => t.env_remove(k),
                };
            }
            t.stdin(Stdio::null());
            t
        },
        |_| {},
    );
    assert_eq!(seen, 1, "the child saw INT {seen} times");
    // timeout's own status when the time ran out.
    assert_eq!(code, Some(124));
}

fn proc_state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 2..].chars().next()
}

fn read_pid(p: &std::path::Path) -> i32 {
    std::fs::read_to_string(p).unwrap().trim().parse().unwrap()
}

/// A job-control shell on a terminal runs pglock as a job: Ctrl-Z stops the whole job (pglock
/// and its child, state T), `fg` continues it with the terminal, Ctrl-C reaches the child once,
/// and the child reads the terminal.
#[test]
fn ctrl_z_suspends_the_whole_job_and_fg_resumes_it_in_a_job_control_shell() {
    use std::io::Write;
    let name = key("jobctl");
    let dir = tmpdir("jobctl");
    let (log, stopf) = (dir.join("log"), dir.join("stop"));
    let script = format!(
        "trap 'echo INT >> {log}' INT; echo $$ > {d}/child; echo $PPID > {d}/pglock; \
         echo ready >> {log}; read line; echo \"got $line\" >> {log}; \
         while [ ! -e {stop} ]; do sleep 0.02; done",
        log = log.display(),
        d = dir.display(),
        stop = stopf.display()
    );
    // bash -i as the session leader on the terminal, with pglock's environment.
    let mut shell = pglock(&[]);
    let mut sh = std::process::Command::new("bash");
    sh.args(["--norc", "--noprofile", "-i"]);
    for (k, v) in shell.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    sh.env("PS1", "$ ").env("PGLOCK_BIN", shell.get_program());
    std::mem::swap(&mut shell, &mut sh);
    let (mut bash, mut master) = spawn_cmd_on_pty(shell);
    let line = format!(
        "\"$PGLOCK_BIN\" run --key {name} -- bash -c '{}'\n",
        script.replace('\'', "'\\''"),
    );
    master.write_all(line.as_bytes()).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || count(&log, "ready") == 1),
        "child ready"
    );
    let child = read_pid(&dir.join("child"));
    let pglock_pid = read_pid(&dir.join("pglock"));
    master.write_all(&[0x1a]).unwrap(); // Ctrl-Z
    assert!(
        wait_until(Duration::from_secs(5), || proc_state(child) == Some('T')
            && proc_state(pglock_pid) == Some('T')),
        "Ctrl-Z: child {:?}, pglock {:?}",
        proc_state(child),
        proc_state(pglock_pid)
    );
    master.write_all(b"fg\n").unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || proc_state(child) != Some('T')
            && proc_state(pglock_pid) != Some('T')),
        "fg: child {:?}, pglock {:?}",
        proc_state(child),
        proc_state(pglock_pid)
    );
    master.write_all(b"hello after fg\n").unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || count(&log, "got hello after fg")
            == 1),
        "the child could not read the terminal after fg"
    );
    ctrl_c_reaches_the_child_once(&mut master, &log);
    std::fs::write(&stopf, "").unwrap();
    // The shell reads this once its foreground job, pglock, has ended: `$?` is pglock's status.
    let status = format!("echo status $? >> {}\n", log.display());
    master.write_all(status.as_bytes()).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || count(&log, "status 0") == 1),
        "pglock did not exit 0: {:?}",
        std::fs::read_to_string(&log)
    );
    master.write_all(b"exit\n").unwrap();
    let _ = bash.wait();
}

//! Contract §4 and §5: signals while waiting cancel the wait; signals while the child runs are
//! forwarded exactly once; a terminal's Ctrl-C reaches the child once and the child can read the
//! terminal.

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

fn trap_script(log: &std::path::Path, stop: &std::path::Path) -> String {
    let traps: String = FORWARDED
        .iter()
        .map(|(_, n)| format!("trap 'echo {n} >> {}' {n}; ", log.display()))
        .collect();
    format!(
        "{traps} echo ready >> {log}; while [ ! -e {stop} ]; do sleep 0.02; done",
        log = log.display(),
        stop = stop.display()
    )
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
    let child = pglock(&[
        "run",
        "--key",
        &name,
        "--",
        "bash",
        "-c",
        &trap_script(&log, &stopf),
    ])
    .spawn()
    .unwrap();
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
fn a_signal_while_waiting_cancels_the_wait_at_once() {
    let name = key("waitsig");
    let id = lock_id(&name);
    let dir = tmpdir("waitsig");
    let marker = dir.join("ran");
    let holder = hold(pglock(&["run", "--key", &name, "--", "sleep", "60"]), id);
    for (sig, n) in [
        (Signal::SIGINT, 2),
        (Signal::SIGTERM, 15),
        (Signal::SIGHUP, 1),
        (Signal::SIGQUIT, 3),
    ] {
        let waiter = pglock(&[
            "run",
            "--key",
            &name,
            "--",
            "touch",
            marker.to_str().unwrap(),
        ])
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
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave: OwnedFd = pty.slave;
    let mut cmd = pglock(args);
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
    let _ = master.as_raw_fd();
    (child, master)
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
    master.write_all(&[0x03]).unwrap(); // Ctrl-C
    assert!(
        wait_until(Duration::from_secs(5), || count(&log, "INT") >= 1),
        "Ctrl-C did not reach the child"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        count(&log, "INT"),
        1,
        "Ctrl-C reached the child {} times",
        count(&log, "INT")
    );
    std::fs::write(&stopf, "").unwrap();
    let status = child.wait_with_output().unwrap().status;
    assert_eq!(status.code(), Some(0));
}

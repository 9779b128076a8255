//! The child (contract §5) and the loop that supervises it, in the manner of tini: one thread
//! polls the signal pipe and the lock connection's socket. SIGCHLD reaps (every child, which
//! matters as PID 1); a forwardable signal is forwarded by the policy below; the socket and the
//! heartbeat tick watch the lock.
//!
//! Forwarding policy:
//!
//! | signal                                | sent by a process (`kill`) | sent by the kernel (terminal) |
//! |---------------------------------------|----------------------------|-------------------------------|
//! | HUP, INT, QUIT, TERM, USR1, USR2, WINCH | forwarded to the child     | not forwarded: the terminal delivers it to the child's process group itself |
//!
//! (A terminal hang-up that reaches pglock as a session leader is forwarded: the kernel sends it to
//! the session leader alone.) The child stays in pglock's process group, so it can read the
//! terminal, and a Ctrl-C reaches it exactly once.

use crate::error::{Error, Kind, Result};
use crate::log;
use crate::pg::{Conn, QueryResult, ReadErr};
use crate::signals::{Received, Signals};
use crate::spawn::Exec;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::ffi::OsString;
use std::time::{Duration, Instant};

/// Prepares COMMAND's start (see `spawn`): `env` is added to the inherited environment;
/// `remove` names variables the child must not inherit.
pub fn prepare(command: &[OsString], env: &[(&str, String)], remove: &[&str]) -> Result<Exec> {
    Exec::new(command, env, remove).map_err(|e| not_started(command, e))
}

/// Starts a prepared command without a shell; `pidfd` receives a pidfd of the child.
pub fn start(
    command: &[OsString],
    exec: &Exec,
    pidfd: Option<&std::sync::atomic::AtomicI32>,
) -> Result<Pid> {
    // No signal is lost around the spawn: one that arrives meanwhile waits in the pipe (or, while
    // the child is being started, in the blocked mask) and is forwarded once the pid is known.
    exec.spawn(pidfd)
        .map(Pid::from_raw)
        .map_err(|e| not_started(command, e))
}

fn not_started(command: &[OsString], e: std::io::Error) -> Error {
    let name = command[0].to_string_lossy();
    if e.kind() == std::io::ErrorKind::NotFound {
        Error::new(Kind::NotFound, format!("command not found: {name}"))
    } else {
        Error::new(Kind::NotExecutable, format!("cannot execute {name}: {e}"))
    }
}

/// How the child's run ended.
pub enum End {
    /// The child exited (its code, or 128+N for signal N).
    Exited(i32),
    /// The lock was lost while the child ran; the child was stopped.
    LockLost(String),
    /// `--max-runtime` elapsed; the child was stopped.
    MaxRuntime,
}

/// What the loop watches besides the child: the lock connection (absent when an ancestor pglock
/// holds the lock) and the time limits.
pub struct Watch<'a> {
    pub conn: Option<&'a mut Conn>,
    /// A query that returns `t` while this session holds the lock.
    pub check_sql: String,
    pub heartbeat: Duration,
    pub kill_after: Duration,
    pub max_runtime: Option<Duration>,
}

fn status_code(ws: WaitStatus) -> Option<(Pid, i32)> {
    match ws {
        WaitStatus::Exited(pid, code) => Some((pid, code)),
        WaitStatus::Signaled(pid, sig, _) => Some((pid, 128 + sig as i32)),
        _ => None,
    }
}

/// Reaps every exited child; returns the code of `child` when it is among them.
fn reap(child: Pid) -> Option<i32> {
    let mut found = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return found,
            Ok(ws) => {
                if let Some((pid, code)) = status_code(ws) {
                    if pid == child {
                        found = Some(code);
                    } else {
                        log::debug("reap", &format!("reaped process {pid} (status {code})"));
                    }
                }
            }
        }
    }
}

fn should_forward(r: &Received) -> bool {
    if r.from_process {
        return true;
    }
    // A hang-up of the terminal goes to the session leader alone.
    r.sig == Signal::SIGHUP && nix::unistd::getsid(None).ok() == Some(nix::unistd::getpid())
}

/// The heartbeat's answer: why the lock is lost, or `None` while this session holds it.
fn heartbeat_verdict(result: QueryResult) -> Option<String> {
    match result {
        QueryResult::Rows(rows) => match rows.first().and_then(|r| r.first()) {
            Some(Some(v)) if v == "t" => None,
            _ => Some("this session's backend no longer holds the lock (pg_locks)".into()),
        },
        QueryResult::Error(e) => Some(format!("the lock check failed: {e}")),
    }
}

/// The child's stop, once a reason to stop it has come: SIGTERM now, SIGKILL at `kill_at`.
struct Stopping {
    end: End,
    kill_at: Option<Instant>,
}

/// Supervises `child` until it exits.
pub fn supervise(child: Pid, mut w: Watch, signals: &Signals) -> End {
    let started = Instant::now();
    let mut status = reap(child);
    let mut stopping: Option<Stopping> = None;
    let mut hb_sent: Option<Instant> = None;
    let mut next_hb = started + w.heartbeat;
    let deadline = w.max_runtime.map(|d| started + d);

    let stop = |end: End, stopping: &mut Option<Stopping>| {
        if stopping.is_some() {
            return;
        }
        let after = crate::duration::format(w.kill_after);
        match &end {
            End::LockLost(why) => log::event(
                log::Level::Error,
                "lock_lost",
                &format!("lock lost while the command ran: {why}; stopping it (SIGTERM, SIGKILL after {after})"),
                &[("reason", log::V::S(why))],
            ),
            _ => log::warn(
                "max_runtime",
                &format!("--max-runtime reached; stopping the command (SIGTERM, SIGKILL after {after})"),
                &[],
            ),
        }
        let _ = kill(child, Signal::SIGTERM);
        *stopping = Some(Stopping {
            end,
            kill_at: Some(Instant::now() + w.kill_after),
        });
    };

    while status.is_none() {
        let now = Instant::now();
        let watching = stopping.is_none() && w.conn.is_some();
        let mut wake = now + Duration::from_secs(3600);
        if watching {
            wake = wake.min(next_hb);
        }
        if let (Some(d), None) = (deadline, &stopping) {
            wake = wake.min(d);
        }
        if let Some(k) = stopping.as_ref().and_then(|s| s.kill_at) {
            wake = wake.min(k);
        }
        let buffered = watching && w.conn.as_ref().is_some_and(|c| c.has_buffered());
        let timeout = if buffered {
            0
        } else {
            wake.saturating_duration_since(now)
                .as_millis()
                .min(i32::MAX as u128) as i32
        };
        let (sig_ready, readable) = {
            let mut fds = vec![PollFd::new(signals.fd(), PollFlags::POLLIN)];
            if let (true, Some(c)) = (watching, w.conn.as_ref()) {
                fds.push(PollFd::new(c.fd(), PollFlags::POLLIN));
            }
            // Interrupted: a signal's handler has just written to the pipe (SIGCHLD when the
            // child exits), read it now rather than poll again.
            let interrupted = match nix::poll::poll(
                &mut fds,
                PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX),
            ) {
                Ok(_) => false,
                Err(nix::errno::Errno::EINTR) => true,
                Err(e) => {
                    log::debug("poll", &format!("poll failed: {e}"));
                    false
                }
            };
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            (interrupted || ready(&fds[0]), fds.get(1).is_some_and(ready))
        };

        if sig_ready {
            for r in signals.drain() {
                if r.sig == Signal::SIGCHLD {
                    continue;
                }
                if should_forward(&r) {
                    log::debug(
                        "signal",
                        &format!("forwarding {} to the command (pid {child})", r.sig),
                    );
                    let _ = kill(child, r.sig);
                } else {
                    log::debug("signal", &format!("{} came from the terminal, which delivers it to the command too; not forwarded", r.sig));
                }
            }
            if let Some(code) = reap(child) {
                status = Some(code);
                break;
            }
        }

        if readable || buffered {
            if let Some(conn) = w.conn.as_deref_mut() {
                match conn.poll_result(readable) {
                    Ok(None) => {}
                    Ok(Some(result)) => {
                        if let Some(why) = heartbeat_verdict(result) {
                            stop(End::LockLost(why), &mut stopping);
                        }
                        hb_sent = None;
                    }
                    Err(ReadErr::Protocol(m)) => stop(
                        End::LockLost(format!("the server broke the protocol ({m})")),
                        &mut stopping,
                    ),
                    Err(e) => stop(
                        End::LockLost(format!("the connection to the server broke ({e})")),
                        &mut stopping,
                    ),
                }
            }
        }

        let now = Instant::now();
        if stopping.is_none() && now >= next_hb {
            if let Some(conn) = w.conn.as_deref_mut() {
                if let Some(sent) = hb_sent {
                    let why = format!(
                        "no answer from the server for {} ms (heartbeat)",
                        now.duration_since(sent).as_millis()
                    );
                    stop(End::LockLost(why), &mut stopping);
                } else if let Err(e) = conn.send_query(&w.check_sql) {
                    stop(
                        End::LockLost(format!("the connection to the server broke ({e})")),
                        &mut stopping,
                    );
                } else {
                    hb_sent = Some(now);
                }
            }
            next_hb = now + w.heartbeat;
        }
        if stopping.is_none() && deadline.is_some_and(|d| now >= d) {
            stop(End::MaxRuntime, &mut stopping);
        }
        if let Some(s) = stopping.as_mut() {
            if s.kill_at.is_some_and(|k| now >= k) {
                log::warn("kill", &format!("the command did not stop within --kill-after; sending SIGKILL to pid {child}"), &[]);
                let _ = kill(child, Signal::SIGKILL);
                s.kill_at = None;
            }
        }
    }
    let code = status.unwrap_or(0);
    match stopping {
        Some(s) => {
            log::debug("child", &format!("the command stopped with status {code}"));
            s.end
        }
        None => End::Exited(code),
    }
}

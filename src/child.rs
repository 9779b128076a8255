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
use crate::pg::{Conn, ServerError};
use crate::signals::{Received, Signals};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::ffi::OsString;
use std::process::Command;
use std::time::{Duration, Instant};

/// Starts COMMAND without a shell. `env` is added to the inherited environment; `remove` names
/// variables the child must not inherit.
pub fn spawn(command: &[OsString], env: &[(&str, String)], remove: &[&str]) -> Result<Pid> {
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..]);
    for var in remove {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    // No signal is blocked around the spawn: a blocked mask would be inherited by the child.
    // posix_spawn resets handled signals to their defaults in the child, and a signal that
    // arrives meanwhile waits in the pipe and is forwarded once the pid is known.
    let spawned = cmd.spawn();
    let name = command[0].to_string_lossy();
    match spawned {
        Ok(child) => Ok(Pid::from_raw(child.id() as i32)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::new(
            Kind::NotFound,
            format!("command not found: {name}"),
        )),
        Err(e) => Err(Error::new(
            Kind::NotExecutable,
            format!("cannot execute {name}: {e}"),
        )),
    }
}

/// How the child's run ended.
pub enum End {
    /// The child exited (its code, or 128+N for signal N).
    Exited(i32),
    /// The lock was lost while the child ran; the child was stopped.
    LockLost(String),
}

/// What the loop watches besides the child.
pub struct Watch<'a> {
    pub conn: &'a mut Conn,
    /// A query that returns `t` while this session holds the lock.
    pub check_sql: String,
    pub heartbeat: Duration,
    pub kill_after: Duration,
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
                        log::debug("reap", &format!("reaped orphaned process {pid}"));
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

/// Supervises `child` until it exits.
pub fn supervise(child: Pid, w: Watch, signals: &Signals) -> End {
    let mut status = reap(child);
    let mut lost: Option<String> = None;
    let mut kill_at: Option<Instant> = None;
    let mut hb_sent: Option<Instant> = None;
    let mut hb_ok = false;
    let mut next_hb = Instant::now() + w.heartbeat;

    let lose = |why: String, lost: &mut Option<String>, kill_at: &mut Option<Instant>| {
        if lost.is_some() {
            return;
        }
        log::event(
            log::Level::Error,
            "lock_lost",
            &format!(
                "lock lost while the command ran: {why}; stopping it (SIGTERM, SIGKILL after {})",
                crate::duration::format(w.kill_after)
            ),
            &[("reason", log::V::S(&why))],
        );
        let _ = kill(child, Signal::SIGTERM);
        *kill_at = Some(Instant::now() + w.kill_after);
        *lost = Some(why);
    };

    while status.is_none() {
        let now = Instant::now();
        let mut wake = if lost.is_none() {
            next_hb
        } else {
            now + Duration::from_secs(3600)
        };
        if let Some(k) = kill_at {
            wake = wake.min(k);
        }
        let timeout = wake
            .saturating_duration_since(now)
            .as_millis()
            .min(i32::MAX as u128) as i32;
        let watching = lost.is_none();
        let (sig_ready, sock_ready) = {
            let mut fds = vec![PollFd::new(signals.fd(), PollFlags::POLLIN)];
            if watching {
                fds.push(PollFd::new(w.conn.fd(), PollFlags::POLLIN));
            }
            let t = if watching && w.conn.has_buffered() {
                0
            } else {
                timeout
            };
            match nix::poll::poll(
                &mut fds,
                PollTimeout::try_from(t).unwrap_or(PollTimeout::MAX),
            ) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => log::debug("poll", &format!("poll failed: {e}")),
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            (
                ready(&fds[0]),
                fds.get(1).is_some_and(ready) || (watching && w.conn.has_buffered()),
            )
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

        if sock_ready && lost.is_none() {
            match w.conn.read_available() {
                Err(m) => lose(
                    format!("the connection to the server broke ({m})"),
                    &mut lost,
                    &mut kill_at,
                ),
                Ok(msgs) => {
                    for (tag, body) in msgs {
                        match tag {
                            b'E' => {
                                let e = ServerError::parse(&body);
                                if e.severity == "FATAL"
                                    || e.severity == "PANIC"
                                    || hb_sent.is_none()
                                {
                                    lose(
                                        format!("the server ended the session: {e}"),
                                        &mut lost,
                                        &mut kill_at,
                                    );
                                } else {
                                    lose(
                                        format!("the lock check failed: {e}"),
                                        &mut lost,
                                        &mut kill_at,
                                    );
                                }
                            }
                            b'D' => hb_ok = body.len() >= 7 && body[6] == b't',
                            b'Z' if hb_sent.is_some() => {
                                if !hb_ok && lost.is_none() {
                                    lose("this session's backend no longer holds the lock (pg_locks)".into(), &mut lost, &mut kill_at);
                                }
                                hb_sent = None;
                                hb_ok = false;
                            }
                            _ => {}
                        }
                    }
                }
            }
        }

        let now = Instant::now();
        if lost.is_none() && now >= next_hb {
            if let Some(sent) = hb_sent {
                lose(
                    format!(
                        "no answer from the server for {} ms",
                        now.duration_since(sent).as_millis()
                    ),
                    &mut lost,
                    &mut kill_at,
                );
            } else if let Err(e) = w.conn.send_query(&w.check_sql) {
                lose(
                    format!("the connection to the server broke ({e:?})"),
                    &mut lost,
                    &mut kill_at,
                );
            } else {
                hb_sent = Some(now);
            }
            next_hb = now + w.heartbeat;
        }
        if kill_at.is_some_and(|k| now >= k) {
            log::warn(
                "kill",
                &format!(
                    "the command did not stop within --kill-after; sending SIGKILL to pid {child}"
                ),
                &[],
            );
            let _ = kill(child, Signal::SIGKILL);
            kill_at = None;
        }
    }
    let code = status.unwrap_or(0);
    match lost {
        Some(why) => {
            log::debug(
                "child",
                &format!("the command stopped with status {code} after the lock was lost"),
            );
            End::LockLost(why)
        }
        None => End::Exited(code),
    }
}

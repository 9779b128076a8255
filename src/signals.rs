//! Signals as events: a handler writes each signal into a pipe that the main loop polls beside the
//! lock connection's socket (the self-pipe trick, portable across Unix systems).
//!
//! The handler records whether a process sent the signal (`kill`, `sigqueue`) or the kernel did
//! (a terminal's Ctrl-C, Ctrl-\ or resize, which reach the child directly as a member of the
//! terminal's foreground process group). pglock forwards only the former, so a Ctrl-C reaches the
//! child once, not twice. No disposition is ever set to SIG_IGN: ignored dispositions survive
//! exec, handled ones are reset to the default in the child.

use crate::error::{Error, Result};
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

/// The signals forwarded to the child (contract §5).
pub const FORWARDED: [Signal; 7] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// The signals that cancel a wait for the lock (contract §4).
pub fn cancels_wait(sig: Signal) -> bool {
    matches!(
        sig,
        Signal::SIGHUP | Signal::SIGINT | Signal::SIGQUIT | Signal::SIGTERM
    )
}

static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    pub sig: Signal,
    /// Sent by a process (kill, sigqueue), as opposed to the kernel (a terminal).
    pub from_process: bool,
}

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // Only async-signal-safe calls here: read si_code, write(2), keep errno.
    let code = if info.is_null() {
        0
    } else {
        // SAFETY: the handler is installed with SA_SIGINFO, so the kernel passes a pointer to a
        // siginfo_t on the handler's stack, valid and initialised for the handler's run; it is
        // not null (checked above) and only read here.
        unsafe { (*info).si_code }
    };
    let from_process = sent_by_process(code);
    let fd = PIPE_WRITE.load(Ordering::Relaxed);
    if fd >= 0 {
        let errno = nix::errno::Errno::last_raw();
        let rec = [sig as u8, from_process as u8];
        // SAFETY: write(2) reads 2 bytes from `rec`, a live local array of 2 bytes, and is
        // async-signal-safe. `fd` is the pipe's write end: `Signals` sets the number to -1
        // before it closes the pipe. (nix's write would need a `BorrowedFd`, made from this
        // raw number as unsafely.)
        unsafe { libc::write(fd, rec.as_ptr().cast(), 2) };
        nix::errno::Errno::set_raw(errno);
    }
}

#[cfg(target_os = "linux")]
fn sent_by_process(code: libc::c_int) -> bool {
    // SI_USER (0), SI_QUEUE (-1), SI_TKILL (-6) ...: Linux's SI_FROMUSER is si_code <= 0.
    code <= 0
}

#[cfg(not(target_os = "linux"))]
fn sent_by_process(code: libc::c_int) -> bool {
    code == libc::SI_USER || code == libc::SI_QUEUE
}

impl Drop for Signals {
    /// The handlers stay installed until exit; they must not write to a descriptor number that
    /// may be reused once the pipe is closed.
    fn drop(&mut self) {
        PIPE_WRITE.store(-1, Ordering::Relaxed);
    }
}

/// The installed handlers and the read end of their pipe.
pub struct Signals {
    read: OwnedFd,
    _write: OwnedFd,
}

impl Signals {
    /// Installs the handlers for the forwarded signals and SIGCHLD. Call once, before connecting.
    pub fn install() -> Result<Signals> {
        let (read, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(|e| Error::internal(format!("cannot create the signal pipe: {e}")))?;
        PIPE_WRITE.store(write.as_raw_fd(), Ordering::Relaxed);
        let action = SigAction::new(
            SigHandler::SigAction(on_signal),
            SaFlags::SA_SIGINFO | SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        for sig in FORWARDED.iter().copied().chain([Signal::SIGCHLD]) {
            // SAFETY: the handler may run at any point of the program, so it must be
            // async-signal-safe, and `on_signal` is: it reads si_code, loads an atomic, calls
            // write(2) and saves and restores errno; it allocates nothing, takes no lock and
            // cannot panic.
            unsafe { signal::sigaction(sig, &action) }
                .map_err(|e| Error::internal(format!("cannot handle {sig}: {e}")))?;
        }
        Ok(Signals {
            read,
            _write: write,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// The signals received since the last call, in order.
    pub fn drain(&self) -> Vec<Received> {
        let mut out = Vec::new();
        let mut buf = [0u8; 128];
        loop {
            match nix::unistd::read(&self.read, &mut buf) {
                Ok(n) if n > 0 => {
                    for rec in buf[..n].chunks_exact(2) {
                        if let Ok(sig) = Signal::try_from(i32::from(rec[0])) {
                            out.push(Received {
                                sig,
                                from_process: rec[1] != 0,
                            });
                        }
                    }
                }
                Err(nix::errno::Errno::EINTR) => continue,
                _ => break,
            }
        }
        out
    }

    /// The first signal that cancels a wait, among those received since the last call.
    pub fn take_cancel(&self) -> Option<Signal> {
        let got = self.drain();
        for r in &got {
            if !cancels_wait(r.sig) && r.sig != Signal::SIGCHLD {
                crate::log::debug(
                    "signal",
                    &format!("ignored {} while not running a command", r.sig),
                );
            }
        }
        got.into_iter().map(|r| r.sig).find(|s| cancels_wait(*s))
    }
}

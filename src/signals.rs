//! Signals as events: a handler writes each signal into a pipe that the main loop polls beside the
//! lock connection's socket (the self-pipe trick, portable across Unix systems).
//!
//! The handler records the sender's pid (0 for the kernel: a terminal's Ctrl-C, Ctrl-\ or
//! resize), from which the supervisor tells one sender's repeat (child.rs). No disposition is ever set to SIG_IGN: ignored dispositions survive
//! exec, handled ones are reset to the default in the child.

use crate::error::{Error, Result};
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

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

/// Job control while the child runs: Ctrl-Z typed while pglock's own group has the terminal, and
/// the SIGCONT that resumes the job (see child.rs). Handled only while a child runs, so that a
/// Ctrl-Z while pglock waits for the lock suspends pglock the ordinary way.
pub const JOB_CONTROL: [Signal; 2] = [Signal::SIGTSTP, Signal::SIGCONT];

static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);
/// How many SIGCONTs have arrived: `stop_self` tells from it whether pglock was stopped.
static CONTINUED: AtomicU32 = AtomicU32::new(0);

/// The size of one record in the pipe: the signal, a pad, the sender's pid.
const RECORD: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    pub sig: Signal,
    /// The pid of the process that sent it (kill, sigqueue); 0 when the kernel did (a terminal,
    /// a child's exit).
    pub sender: i32,
}

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // Only async-signal-safe calls here: read siginfo, write(2), keep errno.
    let sender = if info.is_null() {
        0
    } else {
        // SAFETY: the handler is installed with SA_SIGINFO, so the kernel passes a pointer to a
        // siginfo_t on the handler's stack, valid and initialised for the handler's run; it is
        // not null (checked above) and only read here.
        sender_of(unsafe { &*info })
    };
    if sig == libc::SIGCONT {
        CONTINUED.fetch_add(1, Ordering::SeqCst);
    }
    let fd = PIPE_WRITE.load(Ordering::Relaxed);
    if fd >= 0 {
        let errno = nix::errno::Errno::last_raw();
        let mut rec = [0u8; RECORD];
        rec[0] = sig as u8;
        rec[4..].copy_from_slice(&sender.to_ne_bytes());
        // SAFETY: write(2) reads RECORD bytes from `rec`, a live local array of that size, and
        // is async-signal-safe; a write of less than PIPE_BUF bytes to a pipe is atomic, so
        // records never interleave. `fd` is the pipe's write end: `Signals` sets the number to
        // -1 before it closes the pipe. (nix's write would need a `BorrowedFd`, made from this
        // raw number as unsafely.)
        unsafe { libc::write(fd, rec.as_ptr().cast(), RECORD) };
        nix::errno::Errno::set_raw(errno);
    }
}

/// The pid of the process that sent the signal, or 0 when the kernel did (si_code > 0) or the
/// code carries no sender.
#[cfg(target_os = "linux")]
fn sender_of(info: &libc::siginfo_t) -> i32 {
    // SI_USER (kill), SI_QUEUE (sigqueue), SI_TKILL (tgkill): the codes that carry a sender.
    if matches!(info.si_code, 0 | -1 | -6) {
        // SAFETY: for these codes the kernel fills the union's kill fields, si_pid among them.
        unsafe { info.si_pid() }
    } else {
        0
    }
}

#[cfg(not(target_os = "linux"))]
fn sender_of(info: &libc::siginfo_t) -> i32 {
    if info.si_code == libc::SI_USER || info.si_code == libc::SI_QUEUE {
        info.si_pid
    } else {
        0
    }
}

/// Installs `on_signal` for `sig`.
fn handle(sig: Signal) -> nix::Result<SigAction> {
    let action = SigAction::new(
        SigHandler::SigAction(on_signal),
        SaFlags::SA_SIGINFO | SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler may run at any point of the program, so it must be async-signal-safe,
    // and `on_signal` is: it reads siginfo, updates atomics, calls write(2) and saves and
    // restores errno; it allocates nothing, takes no lock and cannot panic.
    unsafe { signal::sigaction(sig, &action) }
}

/// Ignores `sig` (SIG_IGN).
#[cfg(all(target_os = "linux", target_env = "gnu", not(test)))]
pub fn ignore(sig: Signal) {
    let ign = SigAction::new(SigHandler::SigIgn, SaFlags::SA_RESTART, SigSet::empty());
    // SAFETY: SIG_IGN installs no handler of ours: no code of pglock's runs for it.
    let _ = unsafe { signal::sigaction(sig, &ign) };
}

/// Sets each of `sigs` back to the default action. Async-signal-safe (sigemptyset, sigaction,
/// no allocation, no lock): the vfork-style child calls it before it execs (spawn.rs).
#[inline(never)]
pub fn reset_to_default(sigs: &[Signal]) {
    let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for &sig in sigs {
        // SAFETY: SIG_DFL installs no handler of ours: no code of pglock's runs for it.
        let _ = unsafe { signal::sigaction(sig, &dfl) };
    }
}

/// SIGTSTP and SIGCONT handled while this lives (`Signals::catch_job_control`).
/// (Tied to `Signals`: the handlers write into its pipe.)
pub struct JobControl<'a>(std::marker::PhantomData<&'a Signals>);

impl Drop for JobControl<'_> {
    /// Back to the defaults: a Ctrl-Z after the child's end suspends pglock the ordinary way.
    fn drop(&mut self) {
        reset_to_default(&JOB_CONTROL);
    }
}

/// Stops pglock itself with `sig` (SIGTSTP, SIGTTIN or SIGTTOU, its default action), the way a
/// job stops, and returns once it runs again: `true` when it was stopped and continued, `false`
/// when the kernel discarded the stop (pglock's process group is orphaned: no job-control shell
/// could ever continue it).
pub fn stop_self(sig: Signal) -> bool {
    let before = CONTINUED.load(Ordering::SeqCst);
    let handled = JOB_CONTROL.contains(&sig);
    if handled {
        reset_to_default(&[sig]);
    }
    // Delivered before kill returns: the signal is not blocked, and pglock sends it to itself.
    // A SIGCONT that continues pglock runs `on_signal`, which counts it, before kill returns.
    let _ = signal::kill(nix::unistd::getpid(), sig);
    if handled {
        let _ = handle(sig);
    }
    CONTINUED.load(Ordering::SeqCst) != before
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
        for sig in FORWARDED.iter().copied().chain([Signal::SIGCHLD]) {
            handle(sig).map_err(|e| Error::internal(format!("cannot handle {sig}: {e}")))?;
        }
        Ok(Signals {
            read,
            _write: write,
        })
    }

    /// Handles SIGTSTP and SIGCONT until the returned value is dropped (see `JOB_CONTROL`).
    pub fn catch_job_control(&self) -> JobControl<'_> {
        for sig in JOB_CONTROL {
            if let Err(e) = handle(sig) {
                crate::log::debug("signal", &format!("cannot handle {sig}: {e}"));
            }
        }
        JobControl(std::marker::PhantomData)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// The signals received since the last call, in order.
    pub fn drain(&self) -> Vec<Received> {
        let mut out = Vec::new();
        // A multiple of RECORD: whole records only, as each was written at once.
        let mut buf = [0u8; 32 * RECORD];
        loop {
            match nix::unistd::read(&self.read, &mut buf) {
                Ok(n) if n > 0 => {
                    for rec in buf[..n].chunks_exact(RECORD) {
                        if let Ok(sig) = Signal::try_from(i32::from(rec[0])) {
                            let sender = i32::from_ne_bytes([rec[4], rec[5], rec[6], rec[7]]);
                            out.push(Received { sig, sender });
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

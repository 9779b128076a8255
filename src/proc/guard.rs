//! The child never outlives the lock's protection, even when pglock dies by SIGKILL (contract §5).
//!
//! Two mechanisms on Linux:
//! - the child gets `PR_SET_PDEATHSIG = SIGKILL` (src/spawn.rs): it is killed when pglock dies;
//! - a guard process, started once the connection is open, shares pglock's descriptor table
//!   (`clone(CLONE_VM | CLONE_FILES)`: no memory is copied, so it costs tens of microseconds).
//!   When pglock dies, its descriptors, the lock connection's socket among them, stay open as
//!   long as the guard lives, so the server keeps the lock. The guard waits on a pidfd of pglock;
//!   when pglock is gone it stops the child's whole process group (the child leads one, see
//!   spawn.rs): SIGTERM, then SIGKILL after `--kill-after`, as on a lost lock. It waits until no
//!   process of the group is left (zombies are dead: they do not count), kills the direct child
//!   through its pidfd in case it left the group, waits for it, and only then exits, closing the
//!   socket: the server frees the lock after the group is dead, never before.
//!
//! When the child has been reaped, pglock sends the unlock and then tells the guard to exit
//! (closing a pipe it polls), so that the guard's exit runs while the server works on the unlock
//! rather than on the path to the next holder; pglock closes the connection itself. The guard's
//! exit sends pglock no signal (its exit signal is 0), which would otherwise interrupt pglock
//! while the server hands the lock over. pglock reaps it before it exits (`waitpid` with
//! `__WCLONE`; by then it has long exited), so no zombie of pglock's is left for the reaper of
//! pglock's parent, which a slow reaper (PID 1 in a container) would collect in numbers.
//!
//! The guard runs with every signal blocked and in a process group of its own, so neither a
//! terminal's Ctrl-C nor a kill of pglock's process group, SIGKILL included (a CI runner
//! cancelling a job, `timeout -s KILL`), ends it before it has stopped the child's group.
//!
//! Reach: the child's process group. A process that leaves it (`setsid`, a job-control shell's
//! jobs) is out of reach; see docs/child-and-signals.md.

/// The child's process group, as the supervisor (child.rs) and the guard stop it.
pub mod group {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;

    /// Sends `sig` to every process of group `pgid`.
    pub fn signal(pgid: i32, sig: Signal) {
        let _ = killpg(Pid::from_raw(pgid), sig);
    }

    /// Whether a process of group `pgid` is alive. A zombie is dead and does not count: when
    /// pglock dies its children go to a reaper that may be slow (or, in some containers, never
    /// reap). Allocates nothing: the guard calls it.
    pub fn alive(pgid: i32) -> bool {
        match nix::sys::signal::kill(Pid::from_raw(-pgid), None) {
            Err(nix::errno::Errno::ESRCH) => false,
            _ => live_member(pgid).unwrap_or(true),
        }
    }

    /// A process of group `pgid` that is not a zombie, from /proc (`None`: /proc unreadable).
    #[cfg(target_os = "linux")]
    fn live_member(pgid: i32) -> Option<bool> {
        use nix::fcntl::{open, OFlag};
        let dir = open(
            c"/proc",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok()?;
        // getdents64(2) into a local buffer: the guard must not allocate, which rules out
        // std::fs::read_dir (and nix's Dir, which is libc's opendir).
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        let mut entries = rustix::fs::RawDir::new(&dir, &mut buf);
        loop {
            match entries.next() {
                None => return Some(false),
                Some(Err(_)) => return None,
                Some(Ok(entry)) => {
                    let name = entry.file_name().to_bytes();
                    if !name.is_empty()
                        && name.iter().all(u8::is_ascii_digit)
                        && live_in(name, pgid)
                    {
                        return Some(true);
                    }
                }
            }
        }
    }

    /// Whether process `pid` (its decimal digits) is in group `pgid` and not a zombie.
    #[cfg(target_os = "linux")]
    fn live_in(pid: &[u8], pgid: i32) -> bool {
        use nix::fcntl::{open, OFlag};
        let mut path = [0u8; 40];
        let parts: [&[u8]; 3] = [b"/proc/", pid, b"/stat\0"];
        let mut len = 0;
        for p in parts {
            if len + p.len() > path.len() {
                return false;
            }
            path[len..len + p.len()].copy_from_slice(p);
            len += p.len();
        }
        // NUL-terminated by its last part: a &CStr, which nix's open passes on as it is.
        let Ok(path) = std::ffi::CStr::from_bytes_until_nul(&path[..len]) else {
            return false;
        };
        let Ok(file) = open(
            path,
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        ) else {
            return false;
        };
        // "pid (comm) S ppid pgrp ...": comm is at most 16 bytes, the fields after it are
        // numbers, so the last ')' of the line's start closes comm.
        let mut stat = [0u8; 128];
        let Ok(n) = nix::unistd::read(&file, &mut stat) else {
            return false;
        };
        let stat = &stat[..n];
        let Some(close) = stat.iter().rposition(|&b| b == b')') else {
            return false;
        };
        let mut fields = stat[close + 1..]
            .split(|&b| b == b' ')
            .filter(|f| !f.is_empty());
        let state = fields.next().and_then(|f| f.first().copied());
        let group = fields.nth(1).and_then(|f| {
            f.iter().try_fold(0i32, |acc, &d| {
                d.is_ascii_digit()
                    .then(|| acc.saturating_mul(10).saturating_add(i32::from(d - b'0')))
            })
        });
        group == Some(pgid) && !matches!(state, Some(b'Z' | b'X') | None)
    }

    #[cfg(not(target_os = "linux"))]
    fn live_member(_pgid: i32) -> Option<bool> {
        None
    }
}

/// Why a run has no guard (`Guard::start`). The child then dies with pglock by its parent-death
/// signal alone (SIGKILL, see spawn.rs; none outside Linux): the rest of its process group is
/// not stopped, and the server may free the lock before the child is dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoGuard {
    /// Not Linux: no guard process exists there.
    #[cfg(not(target_os = "linux"))]
    Unsupported,
    /// A guard was started in this process already (it has one stack, for one guard).
    AlreadyStarted,
    /// No pidfd of pglock: ENOSYS before Linux 5.3 (or under a seccomp filter older than
    /// pidfd_open, which may answer EPERM).
    Pidfd(nix::errno::Errno),
    /// No pipe to tell the guard to go (out of descriptors).
    Pipe(nix::errno::Errno),
    /// No guard process (a process limit, EAGAIN; memory, ENOMEM).
    Clone(nix::errno::Errno),
}

impl NoGuard {
    /// Whether it is the system's limitation (said at the debug level) rather than a failure
    /// (a warning).
    pub fn expected(self) -> bool {
        use nix::errno::Errno;
        #[cfg(not(target_os = "linux"))]
        if self == NoGuard::Unsupported {
            return true;
        }
        matches!(self, NoGuard::Pidfd(Errno::ENOSYS | Errno::EPERM))
    }

    /// Says why the run has no guard, and what that means; the caller says it once.
    pub fn log(&self) {
        let (call, errno) = match *self {
            #[cfg(not(target_os = "linux"))]
            NoGuard::Unsupported => ("guard", nix::errno::Errno::ENOSYS),
            NoGuard::AlreadyStarted => ("guard stack in use", nix::errno::Errno::EBUSY),
            NoGuard::Pidfd(e) => ("pidfd_open", e),
            NoGuard::Pipe(e) => ("pipe", e),
            NoGuard::Clone(e) => ("clone", e),
        };
        let msg = format!(
            "no guard process ({call}: {errno}): should pglock be killed, {}",
            if cfg!(target_os = "linux") {
                "the command dies with it, but the rest of its process group does not"
            } else {
                "the command goes on"
            }
        );
        if self.expected() {
            crate::log::debug("guard", &msg);
        } else {
            crate::log::warn("guard", &msg, &[]);
        }
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use super::NoGuard;
    use crate::proc::spawn::ChildSlot;
    use crate::proc::stack::Stack;
    use nix::errno::Errno;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
    use nix::sys::wait::{waitpid, WaitPidFlag};
    use nix::unistd::Pid;
    use std::cell::Cell;
    use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
    use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    /// What the guard reads from memory it shares with pglock: pglock's pidfd, the child's pidfd
    /// and process group, `--kill-after`.
    pub(super) static PGLOCK_PIDFD: AtomicI32 = AtomicI32::new(-1);
    static CHILD: ChildSlot = ChildSlot::new();
    static KILL_AFTER_MS: AtomicU64 = AtomicU64::new(10_000);
    /// How long the guard waits for the group's end once it has sent SIGKILL: a process in an
    /// uninterruptible sleep dies when it leaves it, and it runs no code of its own meanwhile.
    const AFTER_KILL: Duration = Duration::from_secs(1);
    /// The read end of a pipe whose write end pglock closes to tell the guard to go.
    pub(super) static STOP_FD: AtomicI32 = AtomicI32::new(-1);

    /// The guard's stack, in pglock's memory, which outlives pglock as long as the guard does.
    /// For one guard, for good: STACK_TAKEN, once set by a guard's start, stays set.
    static STACK: Stack<{ 64 * 1024 }> = Stack::new();
    static STACK_TAKEN: AtomicBool = AtomicBool::new(false);

    /// Holds the write end of the guard's stop pipe.
    pub struct Guard {
        stop: Cell<Option<OwnedFd>>,
        pid: libc::pid_t,
    }

    /// Waits on `fds` until poll reports at least one of them ready.
    fn wait_ready(fds: &mut [PollFd]) {
        while !matches!(poll(fds, PollTimeout::NONE), Ok(n) if n > 0) {}
    }

    /// The guard's whole life. It runs on its own stack in pglock's address space and descriptor
    /// table (CLONE_VM | CLONE_FILES), with every signal blocked: system calls through thin
    /// wrappers only (nix's, libc's), no allocation, no unwinding.
    extern "C" fn guard_main(_arg: *mut libc::c_void) -> libc::c_int {
        let _ = nix::sys::prctl::set_name(c"pglock-guard");
        // A process group of its own: a kill of pglock's group (SIGKILL included) spares it.
        let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
        // SAFETY: `Guard::start` opened both descriptors and stored them here before it cloned
        // this process, and nothing ever closes them: pglock keeps them for its whole life, and
        // once it has gone the descriptor table it shares with this process lives on as long as
        // this process does. So they stay open for as long as these borrows are used.
        let (pglock, stop) = unsafe {
            (
                BorrowedFd::borrow_raw(PGLOCK_PIDFD.load(Ordering::SeqCst)),
                BorrowedFd::borrow_raw(STOP_FD.load(Ordering::SeqCst)),
            )
        };
        let mut fds = [
            PollFd::new(pglock, PollFlags::POLLIN),
            PollFd::new(stop, PollFlags::POLLIN),
        ];
        wait_ready(&mut fds);
        // Nothing on pglock's pidfd (revents 0): told to go, the child has been reaped, there is
        // nothing left to guard.
        if fds[0].revents() != Some(PollFlags::empty()) {
            // pglock is gone (exited or killed). Its descriptors stay open while this process
            // lives, the lock connection's socket among them.
            let pgid = CHILD.pgid.load(Ordering::SeqCst);
            if pgid > 0 {
                stop_group(pgid);
            }
            kill_child();
        }
        // SAFETY: _exit(2) ends this process at once and has no precondition. Unlike `exit`, it
        // runs none of pglock's atexit handlers or destructors in the memory this process shares
        // with pglock.
        unsafe { libc::_exit(0) }
    }

    /// The child's group, pglock gone: SIGTERM (and SIGCONT, so that a stopped job handles it),
    /// SIGKILL after --kill-after, until no process of it is alive. (A child whose group is not
    /// known yet had not reached its `execve`, and never will: see spawn.rs.)
    fn stop_group(pgid: i32) {
        use super::group;
        use nix::sys::signal::Signal;
        group::signal(pgid, Signal::SIGTERM);
        group::signal(pgid, Signal::SIGCONT);
        let kill_after = Duration::from_millis(KILL_AFTER_MS.load(Ordering::SeqCst));
        if wait_group_end(pgid, kill_after) {
            return;
        }
        group::signal(pgid, Signal::SIGKILL);
        wait_group_end(pgid, AFTER_KILL);
    }

    /// Waits up to `limit` until no process of group `pgid` is alive; `true` when none is.
    fn wait_group_end(pgid: i32, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        let mut nap = Duration::from_millis(1);
        loop {
            if !super::group::alive(pgid) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(20));
        }
    }

    /// The direct child, wherever its group: SIGKILL through its pidfd (immune to pid reuse),
    /// then wait until it has exited.
    fn kill_child() {
        let child = CHILD.pidfd.load(Ordering::SeqCst);
        if child < 0 {
            return;
        }
        // SAFETY: a descriptor in the slot is the child's pidfd, which the kernel put there
        // (CLONE_PIDFD). Only `Guard`'s drop closes it, in pglock, after taking it out of the
        // slot; pglock is gone, so that drop never runs any more, and the descriptor stays open
        // while this process lives.
        let child = unsafe { BorrowedFd::borrow_raw(child) };
        let _ = rustix::process::pidfd_send_signal(child, rustix::process::Signal::KILL);
        wait_ready(&mut [PollFd::new(child, PollFlags::POLLIN)]);
    }

    impl Guard {
        /// Starts the guard, which gives the child's group `kill_after` between SIGTERM and
        /// SIGKILL, or says why there is none: the child then dies with pglock by PDEATHSIG
        /// alone. Whatever it made before a failure is closed again, and the guard's statics are
        /// left as they were.
        pub fn start(kill_after: Duration) -> Result<Guard, NoGuard> {
            let errno = |e: rustix::io::Errno| Errno::from_raw(e.raw_os_error());
            let me = rustix::process::pidfd_open(
                rustix::process::getpid(),
                rustix::process::PidfdFlags::empty(),
            )
            .map_err(|e| NoGuard::Pidfd(errno(e)))?;
            let (read, write) =
                nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(NoGuard::Pipe)?;
            if STACK_TAKEN.swap(true, Ordering::SeqCst) {
                return Err(NoGuard::AlreadyStarted);
            }
            KILL_AFTER_MS.store(
                kill_after.as_millis().try_into().unwrap_or(u64::MAX),
                Ordering::SeqCst,
            );
            PGLOCK_PIDFD.store(me.as_raw_fd(), Ordering::SeqCst);
            STOP_FD.store(read.as_raw_fd(), Ordering::SeqCst);
            // Every signal blocked in the guard: a terminal's Ctrl-C or a process-group kill
            // must neither end it nor run pglock's handlers in it.
            let mut old = SigSet::empty();
            let _ = pthread_sigmask(
                SigmaskHow::SIG_SETMASK,
                Some(&SigSet::all()),
                Some(&mut old),
            );
            // Not pinned to a CPU: the guard wakes where the scheduler finds room, so that its
            // wake-up and exit do not queue behind pglock's own work during the handoff.
            // No exit signal: see the module's comment. (pglock's own reaping, a
            // `waitpid(-1)` without `__WALL`, leaves such a child alone.)
            // SAFETY: the new process runs `guard_main` on STACK's top, a static that no other
            // process uses (STACK_TAKEN) and that lives as long as the memory the guard shares.
            // It shares pglock's memory (CLONE_VM) but writes only to its own stack, and reads
            // only that and the atomics above: it allocates nothing, takes no lock, has no
            // reachable panic (its descriptors, stored above, are never -1) and ends by _exit
            // without returning, so it can neither corrupt nor race with pglock's state. It has
            // no thread-local storage of its own (no CLONE_SETTLS): the one thread-local it could
            // write is errno, by a failing call, and while pglock lives its calls (prctl, setpgid
            // of itself, a poll of valid descriptors with every signal blocked) do not fail.
            // Every signal is blocked across the clone, so no handler of pglock's runs on that
            // stack; pglock's mask is restored just after.
            let pid = unsafe {
                libc::clone(
                    guard_main,
                    STACK.top(),
                    libc::CLONE_VM | libc::CLONE_FILES,
                    std::ptr::null_mut(),
                )
            };
            // (pthread_sigmask returns its error rather than set errno: clone's errno stays.)
            let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
            if pid < 0 {
                let clone_err = Errno::last();
                // No guard runs: `me` and `read` are closed on return, the statics forget them.
                PGLOCK_PIDFD.store(-1, Ordering::SeqCst);
                STOP_FD.store(-1, Ordering::SeqCst);
                STACK_TAKEN.store(false, Ordering::SeqCst);
                return Err(NoGuard::Clone(clone_err));
            }
            // The guard polls both for its whole life, which may outlast pglock's: from here on
            // the statics hold them, open until the last of pglock and the guard exits.
            let _ = (me.into_raw_fd(), read.into_raw_fd());
            Ok(Guard {
                stop: Cell::new(Some(write)),
                pid,
            })
        }

        /// Where the child's pidfd and group go: `spawn` has the kernel write the pidfd there
        /// (`CLONE_PIDFD`) before the child runs, and the child its group before it execs, so
        /// the guard knows the child from its first instant.
        pub fn child_slot(&self) -> &'static ChildSlot {
            &CHILD
        }

        /// Tells the guard to exit: the child has been reaped (or never ran), there is nothing
        /// left to guard. Idempotent.
        pub fn stop(&self) {
            // The group is gone: nothing for the guard to signal, whatever reuses its number.
            CHILD.pgid.store(-1, Ordering::SeqCst);
            // Closing the write end (OwnedFd's drop) is what the guard polls for.
            drop(self.stop.take());
        }
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            self.stop();
            // Told to go, the guard exits at once (pglock is alive, so it is not killing a
            // child): this returns as soon as it has, usually at once.
            while matches!(
                waitpid(Pid::from_raw(self.pid), Some(WaitPidFlag::__WCLONE)),
                Err(Errno::EINTR)
            ) {}
            let fd = CHILD.pidfd.swap(-1, Ordering::SeqCst);
            if fd >= 0 {
                // SAFETY: a descriptor in the slot is the child's pidfd, which the kernel opened
                // for pglock (CLONE_PIDFD) and which nothing else owns or closes. The swap took
                // it out of the slot, so this is its one owner from now on; the guard reads the
                // slot only once pglock is gone, which is not yet the case while this runs.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use crate::proc::spawn::ChildSlot;

    /// Elsewhere there is no guard: the child is not killed when pglock dies (docs/install.md,
    /// Platforms).
    pub struct Guard;

    impl Guard {
        pub fn start(_kill_after: std::time::Duration) -> Result<Guard, super::NoGuard> {
            Err(super::NoGuard::Unsupported)
        }
        pub fn stop(&self) {}
        pub fn child_slot(&self) -> &'static ChildSlot {
            static NONE: ChildSlot = ChildSlot::new();
            &NONE
        }
    }
}

pub use imp::Guard;

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::{Guard, NoGuard};
    use nix::errno::Errno;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    #[test]
    fn a_missing_pidfd_is_the_systems_limit_other_failures_are_not() {
        assert!(NoGuard::Pidfd(Errno::ENOSYS).expected());
        assert!(NoGuard::Pidfd(Errno::EPERM).expected());
        assert!(!NoGuard::Pidfd(Errno::EMFILE).expected());
        assert!(!NoGuard::Pipe(Errno::EMFILE).expected());
        assert!(!NoGuard::Clone(Errno::EAGAIN).expected());
        assert!(!NoGuard::AlreadyStarted.expected());
    }

    /// The one test that starts a guard: a process has one guard stack.
    #[test]
    fn a_second_guard_is_refused_and_leaves_the_first_ones_descriptors_alone() {
        let first = match Guard::start(Duration::from_secs(1)) {
            Ok(g) => g,
            // A kernel without pidfd_open: nothing to start, nothing to check.
            Err(NoGuard::Pidfd(_)) => return,
            Err(e) => panic!("no guard: {e:?}"),
        };
        let fds = (
            super::imp::PGLOCK_PIDFD.load(Ordering::SeqCst),
            super::imp::STOP_FD.load(Ordering::SeqCst),
        );
        assert!(fds.0 >= 0 && fds.1 >= 0);
        assert_eq!(
            Guard::start(Duration::from_secs(1)).err(),
            Some(NoGuard::AlreadyStarted)
        );
        let after = (
            super::imp::PGLOCK_PIDFD.load(Ordering::SeqCst),
            super::imp::STOP_FD.load(Ordering::SeqCst),
        );
        assert_eq!(after, fds);
        // Still open: the refused start closed only what it had opened itself.
        for fd in [fds.0, fds.1] {
            assert!(std::fs::symlink_metadata(format!("/proc/self/fd/{fd}")).is_ok());
        }
        drop(first);
    }
}

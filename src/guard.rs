//! The child never outlives the lock's protection, even when pglock dies by SIGKILL (contract §5).
//!
//! Two mechanisms on Linux:
//! - the child gets `PR_SET_PDEATHSIG = SIGKILL` (src/spawn.rs): it is killed when pglock dies;
//! - a guard process, started once the connection is open, shares pglock's descriptor table
//!   (`clone(CLONE_VM | CLONE_FILES)`: no memory is copied, so it costs tens of microseconds).
//!   When pglock dies, its descriptors, the lock connection's socket among them, stay open as
//!   long as the guard lives, so the server keeps the lock. The guard waits on a pidfd of pglock;
//!   when pglock is gone it kills the child (through a pidfd, immune to pid reuse), waits until it
//!   has exited, and only then exits, closing the socket: the server frees the lock after the
//!   child is dead, never before.
//!
//! When the child has been reaped, pglock sends the unlock and then tells the guard to exit
//! (closing a pipe it polls), so that the guard's exit runs while the server works on the unlock
//! rather than on the path to it; pglock closes the connection itself. The guard's exit sends
//! pglock no signal (its exit signal is 0), which would otherwise interrupt pglock while the
//! server hands the lock over. pglock reaps it before it exits (`waitpid` with `__WCLONE`; by
//! then it has long exited), so no zombie of pglock's is left for the reaper of pglock's parent
//! (reparented with a SIGCHLD that wakes that reaper, while the next pglock takes the lock
//! over: 28-48 zombie guards were waiting for PID 1 in one bench run before this).
//!
//! The guard runs with every signal blocked, so a terminal's Ctrl-C or a process-group kill
//! other than SIGKILL leaves it alone.
//!
//! Reach: the direct child. Processes the child starts are its own business (a wrapper script
//! should `exec` the real command); see the README.

#[cfg(target_os = "linux")]
mod imp {
    use std::cell::Cell;
    use std::os::fd::RawFd;
    use std::sync::atomic::{AtomicI32, Ordering};

    /// pidfds the guard reads from memory it shares with pglock.
    static PGLOCK_PIDFD: AtomicI32 = AtomicI32::new(-1);
    static CHILD_PIDFD: AtomicI32 = AtomicI32::new(-1);
    /// The read end of a pipe whose write end pglock closes to tell the guard to go.
    static STOP_FD: AtomicI32 = AtomicI32::new(-1);

    const STACK: usize = 64 * 1024;

    /// Holds the write end of the guard's stop pipe.
    pub struct Guard {
        stop: Cell<RawFd>,
        pid: libc::pid_t,
    }

    fn pidfd_open(pid: i32) -> RawFd {
        unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) as RawFd }
    }

    /// The guard's whole life. It runs on its own stack in pglock's address space and descriptor
    /// table (CLONE_VM | CLONE_FILES), with every signal blocked: raw system calls only, no
    /// allocation, no unwinding.
    extern "C" fn guard_main(_arg: *mut libc::c_void) -> libc::c_int {
        unsafe {
            libc::prctl(libc::PR_SET_NAME, c"pglock-guard".as_ptr());
            let mut fds = [
                libc::pollfd {
                    fd: PGLOCK_PIDFD.load(Ordering::SeqCst),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: STOP_FD.load(Ordering::SeqCst),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            while libc::poll(fds.as_mut_ptr(), 2, -1) <= 0 {}
            if fds[0].revents == 0 {
                // Told to go: the child has been reaped, there is nothing left to guard.
                libc::_exit(0)
            }
            // pglock is gone (exited or killed). Its descriptors stay open while this process
            // lives, the lock connection's socket among them.
            let child = CHILD_PIDFD.load(Ordering::SeqCst);
            if child >= 0 {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    child,
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                );
                let mut c = libc::pollfd {
                    fd: child,
                    events: libc::POLLIN,
                    revents: 0,
                };
                while libc::poll(&mut c, 1, -1) <= 0 {}
            }
            libc::_exit(0)
        }
    }

    impl Guard {
        /// Starts the guard. `None` when it cannot be started (no pidfd before Linux 5.3): the
        /// child then dies with pglock by PDEATHSIG alone.
        pub fn start() -> Option<Guard> {
            let me = pidfd_open(std::process::id() as i32);
            if me < 0 {
                return None;
            }
            PGLOCK_PIDFD.store(me, Ordering::SeqCst);
            let mut pipe = [-1; 2];
            if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
                return None;
            }
            STOP_FD.store(pipe[0], Ordering::SeqCst);
            unsafe {
                let stack = libc::mmap(
                    std::ptr::null_mut(),
                    STACK,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                    -1,
                    0,
                );
                if stack == libc::MAP_FAILED {
                    return None;
                }
                // Every signal blocked in the guard: a terminal's Ctrl-C or a process-group kill
                // must neither end it nor run pglock's handlers in it.
                let mut all: libc::sigset_t = std::mem::zeroed();
                let mut old: libc::sigset_t = std::mem::zeroed();
                libc::sigfillset(&mut all);
                libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
                let top = (stack as *mut u8).add(STACK) as *mut libc::c_void;
                // Not pinned to a CPU: the guard wakes where the scheduler finds room when
                // pglock exits. (It was pinned to pglock's CPU when it started after a forked
                // child; started during connect, pinning measured no different for run -- true
                // and worse for the handoff: 0.89x vs 0.81x over five runs of 120.)
                // No exit signal: see the module's comment. (pglock's own reaping, a
                // `waitpid(-1)` without `__WALL`, leaves such a child alone.)
                let pid = libc::clone(
                    guard_main,
                    top,
                    libc::CLONE_VM | libc::CLONE_FILES,
                    std::ptr::null_mut(),
                );
                libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
                (pid > 0).then_some(Guard {
                    stop: Cell::new(pipe[1]),
                    pid,
                })
            }
        }

        /// Where the child's pidfd goes: `spawn` has the kernel write it there (`CLONE_PIDFD`)
        /// before the child runs, so the guard knows the child from its first instant.
        pub fn child_slot(&self) -> &'static AtomicI32 {
            &CHILD_PIDFD
        }

        /// Tells the guard to exit: the child has been reaped (or never ran), there is nothing
        /// left to guard. Idempotent.
        pub fn stop(&self) {
            let fd = self.stop.replace(-1);
            if fd >= 0 {
                unsafe { libc::close(fd) };
            }
        }
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            self.stop();
            // Told to go, the guard exits at once (pglock is alive, so it is not killing a
            // child): this returns as soon as it has, usually at once.
            while unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), libc::__WCLONE) } < 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
            {}
            let fd = CHILD_PIDFD.swap(-1, Ordering::SeqCst);
            if fd >= 0 {
                unsafe { libc::close(fd) };
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    /// Elsewhere there is no guard: the child is not killed when pglock dies (see the README).
    pub struct Guard;

    impl Guard {
        pub fn start() -> Option<Guard> {
            None
        }
        pub fn stop(&self) {}
        pub fn child_slot(&self) -> &'static std::sync::atomic::AtomicI32 {
            static NONE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);
            &NONE
        }
    }
}

pub use imp::Guard;

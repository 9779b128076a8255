//! The child never outlives the lock's protection, even when pglock dies by SIGKILL (contract §5).
//!
//! Two mechanisms on Linux:
//! - the child gets `PR_SET_PDEATHSIG = SIGKILL`: it is killed when pglock dies;
//! - a guard process, forked from pglock before the lock is taken, holds a duplicate of the lock
//!   connection's socket. When pglock dies, the kernel closes pglock's descriptors, but the socket
//!   stays open in the guard, so the server keeps the lock. The guard kills the child (through a
//!   pidfd, immune to pid reuse), waits until it has exited, and only then exits, closing the last
//!   copy of the socket: the server frees the lock after the child is dead, never before.
//!
//! The guard learns the child through a pidfd that pglock passes over a socket pair, and ends when
//! that pair closes (pglock exited, normally or not). It ignores the signals a terminal or a
//! process-group kill sends, and uses no memory of its own beyond what fork shares.
//!
//! Reach: the direct child. Processes the child starts are its own business (a wrapper script
//! should `exec` the real command); see the README.

#[cfg(target_os = "linux")]
mod imp {
    use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags};
    use std::io::IoSliceMut;
    use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
    use std::os::unix::net::UnixStream;

    pub struct Guard {
        chan: UnixStream,
    }

    fn pidfd_open(pid: i32) -> Option<OwnedFd> {
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }

    impl Guard {
        /// Forks the guard, which keeps `sock` (the lock connection) open until the child is dead.
        /// `None` when it cannot be started (pglock then runs with PDEATHSIG alone).
        pub fn start(sock: BorrowedFd<'_>) -> Option<Guard> {
            let (ours, theirs) = UnixStream::pair().ok()?;
            // Safety: pglock is single-threaded here, and the guard calls only async-signal-safe
            // functions and _exit.
            match unsafe { nix::unistd::fork() } {
                Ok(nix::unistd::ForkResult::Child) => {
                    drop(ours);
                    guard_main(theirs.as_raw_fd(), sock.as_raw_fd())
                }
                Ok(nix::unistd::ForkResult::Parent { .. }) => Some(Guard { chan: ours }),
                Err(_) => None,
            }
        }

        /// Tells the guard which process to wait for.
        pub fn watch(&self, child: i32) {
            let Some(pidfd) = pidfd_open(child) else {
                return;
            };
            let fds = [pidfd.as_raw_fd()];
            let cmsg = [ControlMessage::ScmRights(&fds)];
            let iov = [std::io::IoSlice::new(b"c")];
            let _ =
                socket::sendmsg::<()>(self.chan.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None);
        }
    }

    fn guard_main(chan: RawFd, _sock: RawFd) -> ! {
        unsafe {
            for sig in [
                libc::SIGHUP,
                libc::SIGINT,
                libc::SIGQUIT,
                libc::SIGTERM,
                libc::SIGUSR1,
                libc::SIGUSR2,
                libc::SIGWINCH,
                libc::SIGPIPE,
            ] {
                libc::signal(sig, libc::SIG_IGN);
            }
            libc::signal(libc::SIGCHLD, libc::SIG_DFL);
            let name = b"pglock-guard\0";
            libc::prctl(libc::PR_SET_NAME, name.as_ptr());
        }
        let mut pidfd: Option<RawFd> = None;
        loop {
            let mut byte = [0u8; 1];
            let mut iov = [IoSliceMut::new(&mut byte)];
            let mut space = nix::cmsg_space!([RawFd; 1]);
            match socket::recvmsg::<()>(chan, &mut iov, Some(&mut space), MsgFlags::empty()) {
                Ok(msg) if msg.bytes > 0 => {
                    if let Ok(cmsgs) = msg.cmsgs() {
                        for c in cmsgs {
                            if let ControlMessageOwned::ScmRights(fds) = c {
                                pidfd = fds.first().copied();
                            }
                        }
                    }
                }
                Err(nix::errno::Errno::EINTR) => continue,
                // pglock is gone (exited or killed): stop the child, wait for its end.
                _ => break,
            }
        }
        if let Some(fd) = pidfd {
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd,
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                );
                let mut p = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                while libc::poll(&mut p, 1, -1) < 0
                    && nix::errno::Errno::last() == nix::errno::Errno::EINTR
                {}
            }
        }
        // Exiting closes the last copy of the lock connection's socket.
        unsafe { libc::_exit(0) }
    }

    /// In the child between fork and exec: die with pglock. Async-signal-safe calls only.
    pub fn die_with_parent(parent: i32) -> std::io::Result<()> {
        unsafe {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // pglock may have died before the prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(137);
            }
        }
        Ok(())
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::os::fd::BorrowedFd;

    /// Elsewhere there is no guard: the child is not killed when pglock dies (see the README).
    pub struct Guard;

    impl Guard {
        pub fn start(_sock: BorrowedFd<'_>) -> Option<Guard> {
            None
        }
        pub fn watch(&self, _child: i32) {}
    }

    pub fn die_with_parent(_parent: i32) -> std::io::Result<()> {
        Ok(())
    }
}

pub use imp::{die_with_parent, Guard};

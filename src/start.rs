//! The executable's entry point on Linux with glibc: glibc's start-up code calls this `main`,
//! as it calls a C program's, in place of Rust's runtime start-up.
//!
//! That start-up reads `/proc/self/maps` and maps an alternate signal stack, for its message on
//! a stack overflow: about 50 us of every `pglock run` (docs/performance.md), which has no deep
//! recursion to overflow. What pglock relies on of the rest it does here, as Rust's runtime
//! would: descriptors 0, 1 and 2 open, so that no socket or pipe of pglock's takes the number
//! of a standard stream, and SIGPIPE ignored, so that a write to a closed pipe is an error to
//! report rather than the end of pglock. The arguments reach `std::env::args_os` as before:
//! glibc passes them to the initialisers of the executable, where the standard library reads
//! them. (Elsewhere `main.rs` has Rust's `fn main`.)

use std::os::fd::{AsRawFd, IntoRawFd};

// SAFETY: the one symbol `main` of the executable, with the C signature glibc calls it by.
#[unsafe(no_mangle)]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    open_standard_descriptors();
    crate::signals::ignore(nix::sys::signal::Signal::SIGPIPE);
    crate::run()
}

/// Opens /dev/null on each of descriptors 0, 1 and 2 that is closed, as Rust's runtime does; a
/// process that cannot is aborted, as there.
fn open_standard_descriptors() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: poll(2) reads and writes the three `pollfd` of `fds`, and no memory besides; a
    // closed descriptor is reported in `revents` (POLLNVAL), not used.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 3, 0) };
    if n <= 0 {
        return;
    }
    for p in fds.iter().filter(|p| p.revents & libc::POLLNVAL != 0) {
        // The lowest free number, so this one (the closed ones are opened in order).
        let null = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null");
        match null {
            Ok(f) if f.as_raw_fd() == p.fd => {
                // Inherited by the child, as the descriptor it stands for would have been.
                let _ = nix::fcntl::fcntl(
                    &f,
                    nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
                );
                let _ = f.into_raw_fd();
            }
            _ => std::process::abort(),
        }
    }
}

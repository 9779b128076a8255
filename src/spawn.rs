//! Starting the child: `execvp` semantics (a PATH search when COMMAND has no slash), the given
//! environment, every handled signal reset to its default, and on Linux `PR_SET_PDEATHSIG`, so
//! that the child dies with pglock (contract §5).
//!
//! On Linux this is a vfork-style spawn, the way glibc's `posix_spawn` works: the child runs in
//! pglock's memory on a stack of its own until it calls `execve`, and pglock is suspended
//! meanwhile (`clone(CLONE_VM | CLONE_VFORK)`). Nothing is copied, where a `fork` copies
//! pglock's page tables only for `execve` to throw them away: this is on the path from a lock
//! grant to the child's start (the handoff), and costs 0.1-0.2 ms there. `posix_spawn` itself
//! cannot set the parent-death signal, hence this module.
//!
//! Between `clone` and `execve` the child runs with every signal blocked until it has reset the
//! handlers (pglock's handlers must not run in it), and calls only async-signal-safe functions:
//! `sigaction`, `sigprocmask`, `prctl`, `getppid`, `execve`, `_exit`. It reports a failed
//! `execve` through memory it shares with pglock, which reads it once `clone` has returned.
//!
//! Where the child first runs is left to the kernel. (Starting it on pglock's own CPU, which
//! pglock gives up at once, was tried: it shortened the child's median wait, but a child held
//! to one CPU cannot be taken by the other when something long is queued ahead of it there,
//! such as the releasing session's backend tearing down: a 2 ms stall in a quarter of the
//! handoffs.)

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;

/// What the child is to run, prepared before the lock is taken: from a lock grant to the
/// child's start only the arrays of pointers to these strings are left to build.
pub struct Exec {
    /// Where COMMAND may be, in `execvp`'s order.
    paths: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

fn cstring(b: &[u8]) -> io::Result<CString> {
    CString::new(b)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in an argument"))
}

impl Exec {
    pub fn new(command: &[OsString], env: &[(&str, String)], remove: &[&str]) -> io::Result<Exec> {
        let argv = command
            .iter()
            .map(|a| cstring(a.as_bytes()))
            .collect::<io::Result<Vec<_>>>()?;
        let mut envp = Vec::new();
        for (k, v) in std::env::vars_os() {
            let skip = remove.iter().any(|r| OsStr::new(r) == k)
                || env.iter().any(|(e, _)| OsStr::new(e) == k);
            if !skip {
                envp.push(cstring(&[k.as_bytes(), b"=", v.as_bytes()].concat())?);
            }
        }
        for (k, v) in env {
            envp.push(cstring(format!("{k}={v}").as_bytes())?);
        }
        let name = command[0].as_bytes();
        let paths = if name.contains(&b'/') {
            vec![cstring(name)?]
        } else {
            // glibc's execvp default when PATH is unset.
            let path = std::env::var_os("PATH").unwrap_or_else(|| "/bin:/usr/bin".into());
            path.as_bytes()
                .split(|&c| c == b':')
                .map(|dir| {
                    let dir = if dir.is_empty() { b".".as_slice() } else { dir };
                    cstring(&[dir, b"/", name].concat())
                })
                .collect::<io::Result<Vec<_>>>()?
        };
        Ok(Exec { paths, argv, envp })
    }
}

fn pointers(v: &[CString]) -> Vec<*const libc::c_char> {
    v.iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

#[cfg(target_os = "linux")]
mod imp {
    use super::{pointers, Exec};
    use std::io;
    use std::sync::atomic::AtomicI32;

    /// Shared between pglock and the child, which writes `errno` here when it cannot exec.
    #[repr(C)]
    struct Shared {
        paths: *const *const libc::c_char,
        argv: *const *const libc::c_char,
        envp: *const *const libc::c_char,
        /// `/bin/sh`, a slot for the file, then COMMAND's arguments: execvp's way with a file
        /// that is not an executable format (a script without `#!`).
        sh_argv: *mut *const libc::c_char,
        /// pglock's signal mask before the spawn, restored in pglock once the child has exec'd.
        mask: libc::sigset_t,
        /// The signals with a handler in pglock, and SIGPIPE.
        reset: *const libc::c_int,
        reset_len: usize,
        parent: libc::pid_t,
        errno: libc::c_int,
    }

    /// The child's stack until it execs: one at a time, in pglock's memory (CLONE_VM). Static,
    /// so nothing is allocated or zeroed for it; the child touches a page or two.
    struct Stack(std::cell::UnsafeCell<[u8; 32 * 1024]>);
    // Safety: used by one spawn at a time, in a single-threaded program.
    unsafe impl Sync for Stack {}
    static STACK: Stack = Stack(std::cell::UnsafeCell::new([0; 32 * 1024]));

    extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
        // Safety: `arg` is the `Shared` of `spawn`, which is suspended until execve or _exit.
        unsafe {
            let sh = &mut *(arg as *mut Shared);
            // pglock's handlers would write into its signal pipe: the child gets the defaults
            // back, and SIGPIPE too, which Rust's runtime ignores (as std's Command does).
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            for i in 0..sh.reset_len {
                libc::sigaction(*sh.reset.add(i), &dfl, std::ptr::null_mut());
            }
            // No signal blocked in the child, whatever pglock inherited (as std's Command did).
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                sh.errno = *libc::__errno_location();
                libc::_exit(127);
            }
            // pglock may have died before the prctl took effect.
            if libc::getppid() != sh.parent {
                libc::_exit(137);
            }
            // execvp's search: go on past a directory without it, remember a refusal.
            let mut err = libc::ENOENT;
            let mut p = sh.paths;
            while !(*p).is_null() {
                libc::execve(*p, sh.argv, sh.envp);
                match *libc::__errno_location() {
                    libc::ENOEXEC => {
                        *sh.sh_argv.add(1) = *p;
                        libc::execve(*sh.sh_argv, sh.sh_argv, sh.envp);
                        err = *libc::__errno_location();
                        break;
                    }
                    libc::EACCES => err = libc::EACCES,
                    libc::ENOENT
                    | libc::ENOTDIR
                    | libc::ESTALE
                    | libc::ENODEV
                    | libc::ETIMEDOUT => {}
                    e => {
                        err = e;
                        break;
                    }
                }
                p = p.add(1);
            }
            sh.errno = err;
            libc::_exit(127)
        }
    }

    pub fn spawn(prep: &Exec, pidfd: Option<&AtomicI32>) -> io::Result<i32> {
        let paths = pointers(&prep.paths);
        let argv = pointers(&prep.argv);
        let envp = pointers(&prep.envp);
        let mut sh_argv: Vec<*const libc::c_char> = [c"/bin/sh".as_ptr(), std::ptr::null()]
            .into_iter()
            .chain(argv[1..].iter().copied())
            .collect();
        let reset: Vec<libc::c_int> = crate::signals::FORWARDED
            .iter()
            .map(|&s| s as libc::c_int)
            .chain([libc::SIGCHLD, libc::SIGSEGV, libc::SIGBUS, libc::SIGPIPE])
            .collect();
        // Safety: the child runs `child_main` on STACK with `shared`, which lives until clone
        // returns, which CLONE_VFORK holds back until the child has exec'd or exited.
        unsafe {
            let mut shared = Shared {
                paths: paths.as_ptr(),
                argv: argv.as_ptr(),
                envp: envp.as_ptr(),
                sh_argv: sh_argv.as_mut_ptr(),
                mask: std::mem::zeroed(),
                reset: reset.as_ptr(),
                reset_len: reset.len(),
                parent: libc::getpid(),
                errno: 0,
            };
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut shared.mask);
            let stack = STACK.0.get();
            let top =
                ((stack as usize + std::mem::size_of_val(&*stack)) & !15) as *mut libc::c_void;
            // With CLONE_PIDFD the kernel stores the child's pidfd in `pidfd` before the child
            // runs: the guard, which reads it from shared memory, knows the child at once.
            let flags = libc::CLONE_VM
                | libc::CLONE_VFORK
                | libc::SIGCHLD
                | if pidfd.is_some() {
                    libc::CLONE_PIDFD
                } else {
                    0
                };
            let pid = libc::clone(
                child_main,
                top,
                flags,
                (&mut shared as *mut Shared).cast(),
                pidfd.map_or(std::ptr::null_mut(), |a| a.as_ptr()),
            );
            let clone_err = io::Error::last_os_error();
            libc::pthread_sigmask(libc::SIG_SETMASK, &shared.mask, std::ptr::null_mut());
            if pid < 0 {
                return Err(clone_err);
            }
            let errno = std::ptr::read_volatile(&shared.errno);
            if errno != 0 {
                // The pidfd left in the slot is closed by the slot's owner (the Guard's drop).
                let mut status = 0;
                while libc::waitpid(pid, &mut status, 0) < 0
                    && *libc::__errno_location() == libc::EINTR
                {}
                return Err(io::Error::from_raw_os_error(errno));
            }
            Ok(pid)
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::Exec;
    use std::io;
    use std::os::unix::ffi::OsStrExt;

    /// Elsewhere: the standard library's spawn, with no parent-death signal (see the README).
    pub fn spawn(prep: &Exec, _pidfd: Option<&std::sync::atomic::AtomicI32>) -> io::Result<i32> {
        let os = |c: &std::ffi::CString| std::ffi::OsStr::from_bytes(c.as_bytes()).to_os_string();
        let mut cmd = std::process::Command::new(os(&prep.argv[0]));
        cmd.args(prep.argv[1..].iter().map(os)).env_clear();
        for kv in &prep.envp {
            let b = kv.as_bytes();
            let eq = b.iter().position(|&c| c == b'=').unwrap_or(b.len());
            cmd.env(
                std::ffi::OsStr::from_bytes(&b[..eq]),
                std::ffi::OsStr::from_bytes(&b[(eq + 1).min(b.len())..]),
            );
        }
        Ok(cmd.spawn()?.id() as i32)
    }
}

impl Exec {
    /// Starts the child; `pidfd`, where the kernel is to put a pidfd of it (Linux), for the
    /// guard. Returns the child's pid.
    pub fn spawn(&self, pidfd: Option<&std::sync::atomic::AtomicI32>) -> io::Result<i32> {
        imp::spawn(self, pidfd)
    }
}

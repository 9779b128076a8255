//! Starting the child: `execvp` semantics (a PATH search when COMMAND has no slash), the given
//! environment, every handled signal reset to its default, a process group of its own (led by
//! the child, the way a shell starts a job), the terminal's foreground when pglock hands it over,
//! and on Linux `PR_SET_PDEATHSIG`, so that the child dies with pglock (contract §5).
//!
//! On Linux this is a vfork-style spawn, the way glibc's `posix_spawn` works: the child runs in
//! pglock's memory on a stack of its own until it calls `execve`, and pglock is suspended
//! meanwhile (`clone(CLONE_VM | CLONE_VFORK)`). Nothing is copied, where a `fork` copies
//! pglock's page tables only for `execve` to throw them away, on the path from a lock grant to
//! the child's start. `posix_spawn` itself cannot set the parent-death signal, hence this module.
//!
//! Between `clone` and `execve` the child runs with every signal blocked until it has reset the
//! handlers (pglock's handlers must not run in it), and calls only async-signal-safe functions:
//! `sigemptyset` and `sigaction` (signals::reset_to_default), `setpgid`, `getpid`, `tcsetpgrp`
//! (rustix's bare ioctl), `sigprocmask`, `prctl`, `getppid`, `execve`, `_exit`. It reports a
//! failed `execve` through memory it shares with pglock, which reads it once `clone` has returned.
//!
//! A shell calls `setpgid` for a job in both the parent and the child, because either may run
//! first after `fork`. Here pglock runs again only once the child has exec'd (`CLONE_VFORK`), so
//! the child's own `setpgid(0, 0)` has happened by then and the parent has nothing to add (its
//! call would fail with EACCES after the exec). The same holds for `tcsetpgrp`: the child takes
//! the terminal's foreground, with every signal still blocked (so no SIGTTOU stops it), before it
//! execs, so the command never reads the terminal from a background group.
//!
//! Where the child first runs is left to the kernel: a child held to pglock's CPU could not
//! move to another when something long (the releasing session's backend tearing down) is
//! queued ahead of it there.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::AtomicI32;

/// Where the spawn leaves what the guard (guard.rs) needs to know of the child, in memory the
/// guard shares: written before the child can run any code of COMMAND's.
pub struct ChildSlot {
    /// A pidfd of the child, which the kernel writes (`CLONE_PIDFD`) before the child runs; -1
    /// when none.
    pub pidfd: AtomicI32,
    /// The child's process group (its pid), which the child writes once it leads the group and
    /// before it execs; -1 until then.
    pub pgid: AtomicI32,
}

impl ChildSlot {
    pub const fn new() -> ChildSlot {
        ChildSlot {
            pidfd: AtomicI32::new(-1),
            pgid: AtomicI32::new(-1),
        }
    }
}

impl Default for ChildSlot {
    fn default() -> Self {
        Self::new()
    }
}

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

impl Exec {
    /// Adds (or replaces) one variable of the child's environment, for what is known only once
    /// the lock is held.
    pub fn add_env(&mut self, key: &str, value: &str) -> io::Result<()> {
        let prefix = format!("{key}=");
        self.envp
            .retain(|e| !e.as_bytes().starts_with(prefix.as_bytes()));
        self.envp
            .push(cstring(format!("{prefix}{value}").as_bytes())?);
        Ok(())
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
    use super::{pointers, ChildSlot, Exec};
    use crate::proc::stack::Stack;
    use crate::signals::{FORWARDED, JOB_CONTROL};
    use nix::errno::Errno;
    use nix::sys::signal::{pthread_sigmask, sigprocmask, SigSet, SigmaskHow, Signal};
    use nix::sys::wait::waitpid;
    use nix::unistd::Pid;
    use std::io;
    use std::os::fd::BorrowedFd;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Shared between pglock and the child, which writes `errno` here when it cannot exec.
    struct Shared<'a> {
        /// Where COMMAND may be, in execvp's order, then a null pointer.
        paths: &'a [*const libc::c_char],
        argv: *const *const libc::c_char,
        envp: *const *const libc::c_char,
        /// `/bin/sh`, a slot for the file, then COMMAND's arguments: execvp's way with a file
        /// that is not an executable format (a script without `#!`).
        sh_argv: &'a mut [*const libc::c_char],
        /// The signals with a handler in pglock, and SIGPIPE.
        reset: &'a [Signal],
        parent: Pid,
        /// Where the child writes its process group for the guard, if there is a guard.
        slot: Option<&'a ChildSlot>,
        /// The controlling terminal, to be handed to the child's group.
        tty: Option<BorrowedFd<'a>>,
        errno: libc::c_int,
    }

    /// The signals with a handler in pglock, and SIGPIPE, which Rust's runtime ignores: the
    /// child sets them back to the default. A constant: nothing is built for it on the way from
    /// a lock grant to the child's start.
    const RESET: [Signal; FORWARDED.len() + JOB_CONTROL.len() + 4] = {
        let rest = [
            Signal::SIGCHLD,
            Signal::SIGSEGV,
            Signal::SIGBUS,
            Signal::SIGPIPE,
        ];
        let (f, j) = (FORWARDED.len(), JOB_CONTROL.len());
        let mut all = [Signal::SIGPIPE; FORWARDED.len() + JOB_CONTROL.len() + 4];
        let mut i = 0;
        while i < all.len() {
            all[i] = if i < f {
                FORWARDED[i]
            } else if i < f + j {
                JOB_CONTROL[i - f]
            } else {
                rest[i - f - j]
            };
            i += 1;
        }
        all
    };

    const STACK_SIZE: usize = 32 * 1024;

    /// The child's stack until it execs: one at a time (STACK_IN_USE), in pglock's memory
    /// (CLONE_VM). Static, so nothing is allocated or zeroed for it; the child touches a page
    /// or two.
    static STACK: Stack<STACK_SIZE> = Stack::new();
    /// Set while a child runs on STACK (pglock spawns from one thread, so it is never found set).
    static STACK_IN_USE: AtomicBool = AtomicBool::new(false);

    /// Ends the child.
    fn exit(code: libc::c_int) -> ! {
        // SAFETY: _exit(2) has no precondition. Unlike `exit`, it runs none of pglock's atexit
        // handlers or destructors, and flushes none of its buffers, in the memory the child
        // shares with pglock.
        unsafe { libc::_exit(code) }
    }

    /// The child until it execs, on STACK, in pglock's memory while pglock is suspended: only
    /// async-signal-safe calls through thin wrappers, no allocation, no lock, no unwinding.
    extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` is `spawn`'s `Shared`, live and not used by `spawn` again until clone
        // has returned there, which CLONE_VFORK holds back until this process has exec'd or
        // exited: this is the only reference to it meanwhile.
        let sh = unsafe { &mut *arg.cast::<Shared>() };
        // pglock's handlers would write into its signal pipe: the child gets the defaults
        // back, and SIGPIPE too, which Rust's runtime ignores (as std's Command does).
        crate::signals::reset_to_default(sh.reset);
        // And pglock's scheduler slice goes: COMMAND runs as it would without pglock.
        crate::proc::sched::restore_in_child();
        // A process group of its own, led by the child (a job, as a shell starts one): a signal
        // to pglock's group does not reach it, and its whole group can be stopped (child.rs).
        if nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0)).is_err() {
            sh.errno = Errno::last_raw();
            exit(127);
        }
        // The guard can stop the group from now on; nothing of COMMAND's has run yet.
        if let Some(slot) = sh.slot {
            slot.pgid
                .store(nix::unistd::getpid().as_raw(), Ordering::SeqCst);
        }
        // The terminal's foreground is the child's group, when pglock had it: the command reads
        // the terminal, and Ctrl-C, Ctrl-Z reach its group alone. Every signal is still blocked,
        // so this background process gets no SIGTTOU for it. A failure leaves the command in the
        // background, where pglock hands it the terminal when it stops on it (child.rs).
        if let Some(tty) = sh.tty {
            let _ = rustix::termios::tcsetpgrp(tty, rustix::process::getpid());
        }
        // No signal blocked in the child, whatever pglock inherited (as std's Command did).
        let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
        // With a guard, which stops the whole group when pglock dies (TERM, then KILL after
        // --kill-after), the child gets the same TERM first; without one, only SIGKILL is sure.
        let on_death = if sh.slot.is_some() {
            Signal::SIGTERM
        } else {
            Signal::SIGKILL
        };
        if nix::sys::prctl::set_pdeathsig(on_death).is_err() {
            sh.errno = Errno::last_raw();
            exit(127);
        }
        // pglock may have died before the prctl took effect.
        if nix::unistd::getppid() != sh.parent {
            exit(137);
        }
        // execvp's search: go on past a directory without it, remember a refusal.
        let mut err = libc::ENOENT;
        for &path in sh.paths.iter().take_while(|p| !p.is_null()) {
            // SAFETY: execve(2) only reads: `path` is a NUL-terminated string of `Exec`'s, and
            // `argv` and `envp` are null-terminated arrays of such strings, all alive in
            // `spawn`'s frame and its caller's until clone has returned there.
            unsafe { libc::execve(path, sh.argv, sh.envp) };
            match Errno::last_raw() {
                libc::ENOEXEC => {
                    // `sh_argv` has at least three entries: /bin/sh, this slot, a null.
                    sh.sh_argv[1] = path;
                    // SAFETY: as above; `sh_argv` is a null-terminated array of NUL-terminated
                    // strings too (`/bin/sh` a static one, the others `Exec`'s).
                    unsafe { libc::execve(sh.sh_argv[0], sh.sh_argv.as_ptr(), sh.envp) };
                    err = Errno::last_raw();
                    break;
                }
                libc::EACCES => err = libc::EACCES,
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
                e => {
                    err = e;
                    break;
                }
            }
        }
        sh.errno = err;
        exit(127)
    }

    pub fn spawn(
        prep: &Exec,
        slot: Option<&ChildSlot>,
        tty: Option<BorrowedFd<'_>>,
    ) -> io::Result<i32> {
        let paths = pointers(&prep.paths);
        let argv = pointers(&prep.argv);
        let envp = pointers(&prep.envp);
        let mut sh_argv: Vec<*const libc::c_char> = [c"/bin/sh".as_ptr(), std::ptr::null()]
            .into_iter()
            .chain(argv[1..].iter().copied())
            .collect();
        let mut shared = Shared {
            paths: &paths,
            argv: argv.as_ptr(),
            envp: envp.as_ptr(),
            sh_argv: &mut sh_argv,
            reset: &RESET,
            parent: nix::unistd::getpid(),
            slot,
            tty,
            errno: 0,
        };
        if STACK_IN_USE.swap(true, Ordering::Acquire) {
            return Err(io::Error::other("another child is being started"));
        }
        // Every signal blocked until the child has reset the handlers; pglock's mask is kept
        // here and restored once the child has exec'd.
        let mut mask = SigSet::empty();
        let _ = pthread_sigmask(
            SigmaskHow::SIG_SETMASK,
            Some(&SigSet::all()),
            Some(&mut mask),
        );
        let top = STACK.top();
        // With CLONE_PIDFD the kernel stores the child's pidfd in `pidfd` before the child
        // runs: the guard, which reads it from shared memory, knows the child at once.
        let flags = libc::CLONE_VM
            | libc::CLONE_VFORK
            | libc::SIGCHLD
            | if slot.is_some() { libc::CLONE_PIDFD } else { 0 };
        // SAFETY: the child runs `child_main` with `shared` on STACK, below `top` (16-byte
        // aligned, in bounds). STACK_IN_USE makes it the only user of STACK, and CLONE_VFORK
        // holds clone back until the child has exec'd or exited, so its use of STACK, of
        // `shared` and of everything `shared` points into (this frame's vectors, `prep`'s
        // strings, the slot) ends before this frame goes on. In pglock's memory (CLONE_VM) and on its
        // thread's thread-locals (errno), the child runs while this thread is suspended, with
        // every signal blocked until it has reset the handled ones to the default, so no
        // handler of pglock's runs in it; `child_main` calls only async-signal-safe functions,
        // allocates nothing, takes no lock, and ends by execve or _exit without returning. The
        // pidfd slot, when given, is an AtomicI32 the kernel writes a descriptor into before
        // clone returns.
        let pid = unsafe {
            libc::clone(
                child_main,
                top,
                flags,
                (&raw mut shared).cast(),
                slot.map_or(std::ptr::null_mut(), |s| s.pidfd.as_ptr()),
            )
        };
        let clone_err = io::Error::last_os_error();
        STACK_IN_USE.store(false, Ordering::Release);
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&mask), None);
        if pid < 0 {
            return Err(clone_err);
        }
        // Written by the child, if it could not exec, through the pointer clone was given: the
        // compiler cannot assume the call left it alone.
        let errno = shared.errno;
        if errno != 0 {
            // The pidfd left in the slot is closed by the slot's owner (the Guard's drop).
            while matches!(waitpid(Pid::from_raw(pid), None), Err(Errno::EINTR)) {}
            return Err(io::Error::from_raw_os_error(errno));
        }
        Ok(pid)
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::Exec;
    use std::io;

    /// Elsewhere: the standard library's spawn, with no parent-death signal (docs/install.md,
    /// Platforms).
    /// The child leads a process group of its own; pglock hands it the terminal when it stops
    /// on it (child.rs).
    pub fn spawn(
        prep: &Exec,
        _slot: Option<&super::ChildSlot>,
        _tty: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> io::Result<i32> {
        use std::os::unix::process::CommandExt;
        Ok(prep.command().process_group(0).spawn()?.id() as i32)
    }
}

impl Exec {
    /// The command as the standard library runs it: what `Exec` holds, and nothing inherited.
    #[cfg(not(target_os = "linux"))]
    fn command(&self) -> std::process::Command {
        let os = |c: &CString| OsStr::from_bytes(c.as_bytes()).to_os_string();
        let mut cmd = std::process::Command::new(os(&self.argv[0]));
        cmd.args(self.argv[1..].iter().map(os)).env_clear();
        for kv in &self.envp {
            let b = kv.as_bytes();
            let eq = b.iter().position(|&c| c == b'=').unwrap_or(b.len());
            cmd.env(
                OsStr::from_bytes(&b[..eq]),
                OsStr::from_bytes(&b[(eq + 1).min(b.len())..]),
            );
        }
        cmd
    }

    /// Replaces pglock with the command (execvp's search, no signal blocked, SIGPIPE back to its
    /// default as for any child; handled signals are reset by the exec itself): returns only the
    /// error of a command that could not be run. (Not through `std::process::Command`, whose code
    /// would sit in the binary for this one rare path.)
    pub fn exec_in_place(&self) -> io::Error {
        use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
        let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
        crate::signals::reset_to_default(&[Signal::SIGPIPE]);
        crate::proc::sched::restore_in_child();
        let argv = pointers(&self.argv);
        let envp = pointers(&self.envp);
        let mut err = io::Error::from_raw_os_error(libc::ENOENT);
        for path in &self.paths {
            // SAFETY: execve(2) only reads: `path` is a NUL-terminated string, `argv` and `envp`
            // null-terminated arrays of such strings, all alive until it returns (on failure).
            // (nix's execve would build both arrays again for each path tried.)
            unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(
                    libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT,
                ) => {}
                Some(libc::EACCES) => err = e,
                // A script without `#!`: /bin/sh runs it, as execvp does (and the spawn above).
                Some(libc::ENOEXEC) => {
                    let mut sh_argv = vec![c"/bin/sh".as_ptr(), path.as_ptr()];
                    sh_argv.extend(argv.iter().skip(1));
                    // SAFETY: as above; `sh_argv` is null-terminated (the tail of `argv`).
                    unsafe { libc::execve(c"/bin/sh".as_ptr(), sh_argv.as_ptr(), envp.as_ptr()) };
                    return io::Error::last_os_error();
                }
                _ => return e,
            }
        }
        err
    }
}

impl Exec {
    /// Starts the child in a process group of its own; `slot`, where the kernel and the child
    /// leave its pidfd and group for the guard (Linux); `tty`, the controlling terminal whose
    /// foreground the child's group takes. Returns the child's pid, which is its group's id.
    pub fn spawn(
        &self,
        slot: Option<&ChildSlot>,
        tty: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> io::Result<i32> {
        imp::spawn(self, slot, tty)
    }
}

//! Starting the child quickly and tied to pglock (Linux): `clone(CLONE_VM | CLONE_VFORK)` like
//! posix_spawn (no page tables copied, pglock waits only until the exec), with what posix_spawn
//! cannot do, `PR_SET_PDEATHSIG = SIGKILL`, set in the child before the exec. Like std's Command,
//! the child starts with no signal blocked and SIGPIPE at its default.
//!
//! The child runs on its own small stack in pglock's memory until it execs: it makes raw system
//! calls only (no allocation, no locks). Signals are blocked in pglock around the clone so that no
//! handler of pglock's runs in the child; the child resets those handlers to the default and
//! restores the mask before exec. The program is looked up in PATH here, before the clone, with
//! execvp's rules: an executable found wins; otherwise a file found but not executable is EACCES
//! (exit 126), nothing found ENOENT (127).

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What the child needs, prepared before the clone (the child may not allocate).
struct Exec {
    path: CString,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    parent: libc::pid_t,
    old_mask: libc::sigset_t,
    handled: [libc::c_int; 8],
    /// Set by the child when the exec failed: its errno.
    errno: libc::c_int,
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a NUL byte in the command or environment",
        )
    })
}

fn is_executable_file(p: &Path) -> Option<bool> {
    let meta = std::fs::metadata(p).ok()?;
    if !meta.is_file() {
        return Some(false);
    }
    let c = cstring(p.as_os_str()).ok()?;
    Some(unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0)
}

/// execvp's search: a name with a slash is used as is; otherwise the PATH entries in order.
fn resolve(program: &OsStr, path_var: Option<&OsStr>) -> io::Result<PathBuf> {
    if program.as_bytes().contains(&b'/') {
        return Ok(PathBuf::from(program));
    }
    let default = OsString::from("/usr/local/bin:/usr/bin:/bin");
    let mut saw_denied = false;
    for dir in std::env::split_paths(path_var.unwrap_or(&default)) {
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        let candidate = dir.join(program);
        match is_executable_file(&candidate) {
            Some(true) => return Ok(candidate),
            Some(false) => saw_denied = true,
            None => {}
        }
    }
    Err(io::Error::from_raw_os_error(if saw_denied {
        libc::EACCES
    } else {
        libc::ENOENT
    }))
}

extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // Safety: arg points to the Exec of the suspended parent (CLONE_VFORK), alive until exec.
    unsafe {
        let e = &mut *(arg as *mut Exec);
        for &sig in &e.handled {
            libc::signal(sig, libc::SIG_DFL);
        }
        // Rust ignores SIGPIPE in pglock; an ignored disposition would survive the exec, so the
        // child gets the default back (as std's Command does).
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 && libc::getppid() != e.parent {
            libc::_exit(137);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &e.old_mask, std::ptr::null_mut());
        libc::execve(e.path.as_ptr(), e.argv.as_ptr(), e.envp.as_ptr());
        e.errno = *libc::__errno_location();
        libc::_exit(127)
    }
}

const STACK: usize = 64 * 1024;

/// Starts `command` with `env` as its whole environment; returns its pid.
pub fn spawn(
    command: &[OsString],
    env: &[(OsString, OsString)],
    handled: [libc::c_int; 8],
) -> io::Result<libc::pid_t> {
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_os_str());
    let path = resolve(&command[0], path_var)?;
    let args: Vec<CString> = command
        .iter()
        .map(|a| cstring(a))
        .collect::<io::Result<_>>()?;
    let vars: Vec<CString> = env
        .iter()
        .map(|(k, v)| {
            let mut kv = k.clone();
            kv.push("=");
            kv.push(v);
            cstring(&kv)
        })
        .collect::<io::Result<_>>()?;
    let mut e = Exec {
        path: cstring(path.as_os_str())?,
        argv: args
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect(),
        envp: vars
            .iter()
            .map(|v| v.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect(),
        parent: std::process::id() as libc::pid_t,
        old_mask: unsafe { std::mem::zeroed() },
        handled,
        errno: 0,
    };
    let mut stack = vec![0u8; STACK];
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut e.old_mask);
        let top = stack.as_mut_ptr().add(STACK) as *mut libc::c_void;
        let pid = libc::clone(
            child_main,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &mut e as *mut Exec as *mut libc::c_void,
        );
        let clone_errno = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &e.old_mask, std::ptr::null_mut());
        if pid < 0 {
            return Err(clone_errno);
        }
        // CLONE_VFORK: the child has exec'd or exited by now.
        let errno = std::ptr::read_volatile(&e.errno);
        if errno != 0 {
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
            return Err(io::Error::from_raw_os_error(errno));
        }
        Ok(pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_lookup_follows_execvp() {
        let path = OsString::from("/nonexistent:/usr/bin:/bin");
        assert!(resolve(OsStr::new("sh"), Some(&path))
            .unwrap()
            .ends_with("sh"));
        assert_eq!(
            resolve(OsStr::new("no-such-program-x"), Some(&path))
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ENOENT)
        );
        // /etc/passwd exists but is not executable.
        let etc = OsString::from("/etc");
        assert_eq!(
            resolve(OsStr::new("passwd"), Some(&etc))
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EACCES)
        );
        assert_eq!(
            resolve(OsStr::new("./x"), None).unwrap(),
            PathBuf::from("./x")
        );
    }
}

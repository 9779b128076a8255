//! The child process: starting it (`spawn`), the guard process that stops it if pglock dies
//! (`guard`), and the supervisor that runs it, forwards signals and watches the lock (`child`).

pub mod child;
pub mod guard;
#[cfg(target_os = "linux")]
pub mod sched;
/// Elsewhere there is no slice to ask for.
#[cfg(not(target_os = "linux"))]
pub mod sched {
    pub fn prefer_short_slice() {}
    pub fn restore_in_child() {}
}
pub mod spawn;
#[cfg(target_os = "linux")]
mod stack;

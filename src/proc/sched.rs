//! A short scheduler slice for pglock while it waits for a grant or for the child's exit; never
//! for the child.
//!
//! At those two moments pglock sleeps, then has tens of microseconds of work to do at once:
//! start the child when the lock is granted, send the unlock when the child exits. On a busy
//! machine the wake-up waits in a run queue behind whatever holds the CPU, for up to one whole
//! slice of the default length (a base of 0.7 ms, 0.75 ms before Linux 6.13, times 1 + log2 of
//! the CPU count up to 8 CPUs). Linux's EEVDF scheduler (6.12 and later) lets a normal task ask
//! for a shorter slice (`sched_attr.sched_runtime`, clamped to 0.1-100 ms). Such a task gets no
//! more CPU time than before, but its earlier deadline lets it preempt a task with a longer
//! slice when it wakes. Older kernels accept the value and ignore it for normal tasks.
//!
//! It is asked for after pglock's start-up, not before. In a short slice, the start-up's
//! ~0.5 ms of work is preempted more often, and `run -- true` measured slower
//! (docs/performance.md).
//!
//! Nothing else changes:
//! - The policy and the nice value pglock inherited are kept.
//! - A slice that is already as short is left alone, and so are the real-time, batch and idle
//!   policies and a process with the reset-on-fork flag.
//! - The child asks for the kernel's default slice again before it execs (`restore_in_child`),
//!   with the policy and nice value it has then. So COMMAND runs as it would have without
//!   pglock, except that a custom slice pglock inherited is not handed on: the kernel reports
//!   a default slice and a custom one alike, so pglock cannot tell which it started with.
//! - The guard, started before, keeps the default slice.

use std::sync::atomic::{AtomicBool, Ordering};

/// The slice pglock asks for: the shortest the kernel accepts (0.1 ms), several times what
/// pglock runs between two sleeps. 0.3 ms gained less (docs/performance.md).
const SLICE_NS: u64 = 100_000;

/// `struct sched_attr` of `<linux/sched/types.h>` in its first version (48 bytes), which every
/// kernel that has the call accepts.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

const SIZE: u32 = std::mem::size_of::<SchedAttr>() as u32;
const SCHED_OTHER: u32 = 0;
const SCHED_BATCH: u32 = 3;
const SCHED_IDLE: u32 = 5;
/// What the child would get under this flag (its nice value reset when negative) is the
/// kernel's doing at fork: pglock leaves a process that has it alone.
const SCHED_FLAG_RESET_ON_FORK: u64 = 0x01;

/// Set once pglock runs with its short slice: the child then asks for the default one again.
static CHANGED: AtomicBool = AtomicBool::new(false);

/// sched_getattr(2) on the calling thread. Async-signal-safe: one system call into a local.
fn get() -> Option<SchedAttr> {
    let mut attr = SchedAttr::default();
    // SAFETY: sched_getattr(2) writes at most SIZE bytes into `attr`, a live local of that size;
    // pid 0 is the calling thread.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0 as libc::c_long,
            &mut attr as *mut SchedAttr,
            SIZE as libc::c_long,
            0 as libc::c_long,
        )
    };
    (r == 0).then_some(attr)
}

/// sched_setattr(2) on the calling thread. Async-signal-safe: one system call, no allocation.
fn set(attr: &SchedAttr) -> bool {
    // SAFETY: sched_setattr(2) reads `attr.size` (SIZE) bytes of `attr`, a live `SchedAttr`;
    // pid 0 is the calling thread.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            0 as libc::c_long,
            attr as *const SchedAttr,
            0 as libc::c_long,
        )
    };
    r == 0
}

/// Asks for pglock's short slice, when pglock runs under the normal policy with a longer one.
/// A refusal (a kernel without the call, a seccomp filter) changes nothing. Before Linux 6.12
/// the kernel reports no slice and ignores it: each call then makes both system calls again.
pub fn prefer_short_slice() {
    let Some(mut attr) = get() else { return };
    if !may_shorten(&attr) || (attr.runtime != 0 && attr.runtime <= SLICE_NS) {
        return;
    }
    attr.size = SIZE;
    attr.flags = 0;
    attr.runtime = SLICE_NS;
    if set(&attr) {
        CHANGED.store(true, Ordering::Relaxed);
    }
}

/// Whether pglock may shorten a slice under `attr`: the normal policy, without the reset-on-fork
/// flag.
fn may_shorten(attr: &SchedAttr) -> bool {
    attr.policy == SCHED_OTHER && attr.flags & SCHED_FLAG_RESET_ON_FORK == 0
}

/// In the child before it execs (or in pglock before it becomes the command): the kernel's
/// default slice again (`runtime` 0, which also clears the mark of a custom slice), under the
/// normal, batch or idle policy and the nice value the process has now, so that a renice while
/// pglock waited holds and needs no privilege. Async-signal-safe: two system calls on a stack
/// local; the only memory of pglock's it may write (the child shares it until it execs) is
/// errno, on a failure, as every call of the child's does.
pub fn restore_in_child() {
    if !CHANGED.load(Ordering::Relaxed) {
        return;
    }
    let Some(mut attr) = get() else { return };
    if ![SCHED_OTHER, SCHED_BATCH, SCHED_IDLE].contains(&attr.policy) {
        return;
    }
    attr.size = SIZE;
    attr.flags &= SCHED_FLAG_RESET_ON_FORK;
    attr.runtime = 0;
    let _ = set(&attr);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attribute_block_is_the_kernels_first_version() {
        assert_eq!(SIZE, 48);
    }

    /// sched_setattr(2) with pid 0 changes the calling thread alone: the test runs in one of
    /// its own, which no other test shares. Under another policy or the reset-on-fork flag
    /// (`chrt -R cargo test`) nothing is to change.
    #[test]
    fn the_child_gets_back_the_slice_and_nice_value_pglock_started_with() {
        std::thread::spawn(|| {
            let Some(before) = get() else { return };
            prefer_short_slice();
            let short = get().map(|a| a.runtime);
            match may_shorten(&before) && before.runtime != 0 {
                true => assert_eq!(short, Some(SLICE_NS.min(before.runtime))),
                false => assert_eq!(short, Some(before.runtime)),
            }
            restore_in_child();
            let after = get().expect("sched_getattr");
            assert_eq!(
                (after.policy, after.nice, after.runtime, after.flags),
                (before.policy, before.nice, before.runtime, before.flags)
            );
        })
        .join()
        .unwrap();
    }

    /// A renice while pglock waited (upwards, as any user may) holds in the child, and the
    /// child still gets the default slice back: nothing it asks for needs a privilege.
    #[test]
    fn a_renice_while_waiting_holds_in_the_child() {
        std::thread::spawn(|| {
            let Some(before) = get() else { return };
            if !may_shorten(&before) || before.runtime == 0 || before.nice > 15 {
                return;
            }
            prefer_short_slice();
            let mut reniced = get().expect("sched_getattr");
            reniced.size = SIZE;
            reniced.nice = before.nice + 3;
            assert!(set(&reniced));
            restore_in_child();
            let after = get().expect("sched_getattr");
            assert_eq!(
                (after.nice, after.runtime),
                (before.nice + 3, before.runtime)
            );
        })
        .join()
        .unwrap();
    }
}

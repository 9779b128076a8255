//! A stack for a process that `clone(CLONE_VM)` starts in pglock's memory: the vfork-style
//! child until it execs (spawn.rs), the guard for pglock's whole life (guard.rs).

use std::cell::UnsafeCell;

/// Bytes for a cloned process's stack, in a static: nothing is mapped, allocated or zeroed for
/// it (.bss pages are zero-filled by the kernel when first touched), and nothing can fail.
pub struct Stack<const N: usize>(UnsafeCell<[u8; N]>);

// SAFETY: no reference to the bytes is ever made: `Stack` only gives out a raw pointer past
// their end (`top`), and whoever hands that pointer to clone answers, at that unsafe call, for
// one process at a time running on it.
unsafe impl<const N: usize> Sync for Stack<N> {}

impl<const N: usize> Stack<N> {
    pub const fn new() -> Self {
        Stack(UnsafeCell::new([0; N]))
    }

    /// The stack's top for clone: its end, rounded down to 16 bytes (stacks grow down).
    pub fn top(&self) -> *mut libc::c_void {
        let end = self.0.get().cast::<u8>().wrapping_add(N);
        end.wrapping_sub(end as usize & 15).cast()
    }
}

//! pglock leaves nothing behind for the reaper of its parent: its guard process (src/proc/guard.rs)
//! is reaped by pglock itself. A test binary of its own, because it makes its process a child
//! subreaper (orphans of every descendant come to it), which the other tests must not share.

#[path = "pglock/harness.rs"]
mod harness;

use harness::*;
use std::time::Duration;

#[test]
fn pglock_reaps_its_guard_and_hands_no_process_to_its_parents_reaper() {
    // The cluster first: pg_ctl's server, orphaned on purpose, is not ours to look at.
    let _ = pg();
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let name = key("reap");
    // The child lists pglock's children (itself and the guard), then its own pid.
    let mut cmd = pglock_sh(&name, "cat /proc/$PPID/task/$PPID/children; echo; echo $$");
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&cmd, &out));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let kids: Vec<i32> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let sh: i32 = lines.last().unwrap().trim().parse().unwrap();
    let others: Vec<i32> = kids.iter().copied().filter(|&p| p != sh).collect();
    assert_eq!(
        others.len(),
        1,
        "pglock's children besides the command: {kids:?}"
    );
    let guard = others[0];
    std::thread::sleep(Duration::from_millis(200));
    // Gone: not running, and not a zombie handed to us (the nearest subreaper) to reap.
    let stat = std::fs::read_to_string(format!("/proc/{guard}/stat"));
    assert!(stat.is_err(), "the guard outlived pglock: {stat:?}");
}

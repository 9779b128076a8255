//! Contract §4 (--limit): a counting semaphore over slot locks, with waiters woken by the
//! releasing pglock and a killed holder's slot taken over.

use crate::harness::*;
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

/// The largest number of intervals that overlap at one moment.
fn max_concurrent(iv: &[(i128, i128)]) -> usize {
    iv.iter()
        .map(|(s, _)| iv.iter().filter(|(a, b)| a <= s && s < b).count())
        .max()
        .unwrap_or(0)
}

#[test]
fn ten_runs_with_limit_3_run_exactly_3_at_a_time() {
    let name = key("limit3");
    let dir = tmpdir("limit3");
    let file = dir.join("stamps");
    let script = format!(
        "{}; echo slot $PGLOCK_SLOT >> {}",
        stamp_script(&file, "0.4"),
        dir.join("slots").display()
    );
    let runs: Vec<_> = (0..10)
        .map(|_| {
            Run::new(&name)
                .args(["-q", "--limit", "3"])
                .sh(&script)
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    all_succeed(runs);
    let iv = intervals(&file);
    assert_eq!(iv.len(), 10, "all 10 ran: {iv:?}");
    assert_eq!(
        max_concurrent(&iv),
        3,
        "at most and at least 3 at once: {iv:?}"
    );
    let slots = std::fs::read_to_string(dir.join("slots")).unwrap();
    assert!(
        slots
            .lines()
            .all(|l| ["slot 0", "slot 1", "slot 2"].contains(&l)),
        "{slots}"
    );
    // Each freed slot is taken within milliseconds, not at a poll: every start after the first
    // three follows some end closely.
    for (s, _) in iv.iter().skip(3) {
        let gap = iv
            .iter()
            .map(|(_, e)| s - e)
            .filter(|g| *g >= 0)
            .min()
            .unwrap();
        assert!(
            gap < 250_000_000,
            "a waiter started {} ms after the last release",
            gap / 1_000_000
        );
    }
}

#[test]
fn a_killed_holders_slot_is_taken_over() {
    let name = key("limitkill");
    let id = lock_id(&name);
    let holder = Run::new(&name)
        .args(["--limit", "1"])
        .child(["sleep", "60"])
        .spawn()
        .unwrap();
    let slot0 = {
        let (out, _) = expect_code(pglock_bare(&["key", &name, "--limit", "1"]), 0);
        out.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<i64>()
            .unwrap()
    };
    assert!(wait_until(Duration::from_secs(10), || !pg()
        .locks_on(slot0)
        .is_empty()));
    let dir = tmpdir("limitkill");
    let marker = dir.join("ran");
    let waiter = Run::new(&name)
        .args(["--limit", "1"])
        .child(["touch", marker.to_str().unwrap()])
        .spawn()
        .unwrap();
    // The waiter is first in line (holds the queue lock) before the holder dies.
    assert!(wait_until(Duration::from_secs(10), || !pg()
        .locks_on(crate::harness::lock_id_of_queue(id))
        .is_empty()));
    signal(&holder, Signal::SIGKILL);
    let t = Instant::now();
    all_succeed(vec![waiter]);
    assert!(marker.exists());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took over after {:?}",
        t.elapsed()
    );
    let mut holder = holder;
    let _ = holder.wait();
}

#[test]
fn application_sql_takes_the_same_slots() {
    let name = key("limitsql");
    let (sql, _) = expect_code(pglock_bare(&["key", &name, "--limit", "1", "--sql"]), 0);
    // Application code holds the only slot through the documented SQL.
    let mut app = pg().psql_cmd();
    app.args(["-c", sql.trim(), "-c", "SELECT pg_sleep(30)"]);
    let app = app.stdout(std::process::Stdio::null()).spawn().unwrap();
    let (out, _) = expect_code(pglock_bare(&["key", &name, "--limit", "1"]), 0);
    let slot0: i64 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(wait_until(Duration::from_secs(10), || !pg()
        .locks_on(slot0)
        .is_empty()));
    let (_, err) = expect_code(
        Run::new(&name).args(["-n", "--limit", "1"]).child(["true"]),
        75,
    );
    assert!(err.contains("slots") && err.contains("psql"), "{err}");
    pg().psql_super(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = {}",
        (slot0 as u64 & 0xffff_ffff) as u32
    ));
    stop(app);
    assert!(wait_until(Duration::from_secs(10), || pg()
        .locks_on(slot0)
        .is_empty()));
    expect_code(
        Run::new(&name).args(["-n", "--limit", "1"]).child(["true"]),
        0,
    );
}

#[test]
fn bad_limit_combinations_are_usage_errors() {
    for args in [
        vec!["--limit", "0"],
        vec!["--limit", "x"],
        vec!["--limit", "2", "--shared"],
        vec!["--limit", "2", "--scope", "transaction"],
        vec!["--limit", "100000"],
    ] {
        let mut all = vec!["run", "--key", "k"];
        all.extend(args.iter());
        all.extend(["--", "true"]);
        let (_, err) = expect_code(pglock(&all), 2);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    expect_code(
        Run::new("k").args(["--scope", "sometimes"]).child(["true"]),
        2,
    );
}

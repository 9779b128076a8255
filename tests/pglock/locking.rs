//! Contract §2 and §4: mutual exclusion, waiting, no-wait, timeout, shared locks, what pg_locks
//! shows, and application code taking the same lock through plain SQL.

use crate::harness::*;
use std::time::{Duration, Instant};

#[test]
fn eight_concurrent_runs_never_overlap_and_all_run() {
    let name = key("mutex");
    let dir = tmpdir("mutex");
    let file = dir.join("stamps");
    let script = stamp_script(&file, "0.05");
    let children: Vec<_> = (0..8)
        .map(|_| {
            Run::new(&name)
                .args(["-q"])
                .sh(&script)
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    all_succeed(children);
    let iv = intervals(&file);
    assert_eq!(iv.len(), 8, "all 8 ran: {iv:?}");
    assert_one_at_a_time(&iv);
}

#[test]
fn the_lock_shows_in_pg_locks_as_the_contract_says() {
    let name = key("pglocks");
    let id = lock_id(&name);
    let holder = hold(Run::new(&name).child(["sleep", "30"]), id);
    // locks_on selects locktype advisory, classid = id >> 32, objid = id & 0xffffffff, objsubid 1.
    assert_eq!(
        pg().locks_on(id),
        vec![format!("ExclusiveLock,t,pglock:{name}")]
    );
    assert_eq!(stop(holder), Some(143));
    assert!(pg().locks_on(id).is_empty(), "released on exit");
}

#[test]
fn negative_ids_map_to_classid_and_objid() {
    let holder = pglock(&["run", "--key-id", "-2", "--", "sleep", "30"])
        .spawn()
        .unwrap();
    // -2 = 0xfffffffffffffffe: classid 4294967295, objid 4294967294.
    let q = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 4294967295 AND objid = 4294967294 AND objsubid = 1 AND granted";
    assert!(wait_until(Duration::from_secs(10), || pg().psql_super(q) == "1"));
    stop(holder);
}

#[test]
fn no_wait_returns_at_once_and_timeout_waits_then_gives_up_server_side_too() {
    let name = key("timeout");
    let id = lock_id(&name);
    let holder = hold(Run::new(&name).child(["sleep", "30"]), id);

    for once in [&["-n"][..], &["-w", "0"], &["--timeout", "0s"]] {
        let t = Instant::now();
        let args = [&["run"][..], once, &["--key", &name, "--", "true"]].concat();
        let (_, err) = expect_code(pglock(&args), 75);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{once:?} took {:?}",
            t.elapsed()
        );
        assert!(
            err.contains("busy, --no-wait") && err.contains("pid "),
            "{err}"
        );
    }

    let t = Instant::now();
    let (_, err) = expect_code(Run::new(&name).args(["-w", "1s"]).child(["true"]), 75);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(4),
        "--timeout 1s took {took:?}"
    );
    assert!(
        err.contains("--timeout 1s reached") && err.contains("pid "),
        "{err}"
    );
    // No backend of pglock's is left waiting.
    assert_eq!(
        pg().locks_on(id),
        vec![format!("ExclusiveLock,t,pglock:{name}")]
    );
    stop(holder);
}

#[test]
fn a_waiter_starts_well_under_100ms_after_the_release() {
    let name = key("handoff");
    let id = lock_id(&name);
    let dir = tmpdir("handoff");
    let end = dir.join("end");
    let start = dir.join("start");
    let holder = hold(
        pglock_sh(&name, &format!("sleep 1; date +%s%N > {}", end.display())),
        id,
    );
    let waiter = pglock_sh(&name, &format!("date +%s%N > {}", start.display()))
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || pg().locks_on(id).len() == 2),
        "waiter queued"
    );
    for c in [holder, waiter] {
        assert_eq!(c.wait_with_output().unwrap().status.code(), Some(0));
    }
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .unwrap()
            .trim()
            .parse::<i128>()
            .unwrap()
    };
    let gap_ms = (read(&start) - read(&end)) as f64 / 1e6;
    assert!(gap_ms > 0.0 && gap_ms < 100.0, "handoff took {gap_ms} ms");
}

#[test]
fn shared_holders_run_together_and_exclude_exclusive_ones() {
    let name = key("shared");
    let id = lock_id(&name);
    let s1 = hold(
        Run::new(&name).args(["--shared"]).child(["sleep", "30"]),
        id,
    );
    // A second shared holder runs at once, beside the first.
    expect_code(Run::new(&name).args(["--shared", "-n"]).child(["true"]), 0);
    // An exclusive one cannot.
    let (_, err) = expect_code(Run::new(&name).args(["-n"]).child(["true"]), 75);
    assert!(err.contains("shared"), "{err}");
    stop(s1);
    // And while an exclusive holder runs, a shared one cannot.
    let x = Run::new(&name).child(["sleep", "30"]).spawn().unwrap();
    assert!(wait_until(Duration::from_secs(10), || pg().locks_on(id)
        == vec![format!("ExclusiveLock,t,pglock:{name}")]));
    expect_code(Run::new(&name).args(["--shared", "-n"]).child(["true"]), 75);
    stop(x);
}

#[test]
fn application_sql_and_pglock_exclude_each_other() {
    let name = key("appsql");
    let id = lock_id(&name);
    // Application code holds pg_advisory_lock(<id>) through psql: pglock must not run.
    let mut app = pg().psql_cmd();
    app.args([
        "-c",
        &format!("SELECT pg_advisory_lock({id})"),
        "-c",
        "SELECT pg_sleep(30)",
    ]);
    let app = hold(app, id);
    let (_, err) = expect_code(Run::new(&name).args(["-n"]).child(["true"]), 75);
    assert!(err.contains("psql"), "holder's application named: {err}");
    // End the application's session (psql's own death would leave its backend in pg_sleep).
    pg().psql_super(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = {}",
        (id as u64 & 0xffff_ffff) as u32
    ));
    stop(app);
    assert!(wait_until(Duration::from_secs(10), || pg()
        .locks_on(id)
        .is_empty()));
    // pglock holds it: application code's pg_try_advisory_lock(<id>) fails, using the SQL from
    // `pglock key --sql`.
    let holder = hold(Run::new(&name).child(["sleep", "30"]), id);
    let (sql, _) = expect_code(pglock_bare(&["key", &name, "--sql"]), 0);
    assert_eq!(
        pg().psql_super(&format!("SELECT pg_try_advisory_lock({})", sql.trim())),
        "f"
    );
    stop(holder);
    assert_eq!(
        pg().psql_super(&format!("SELECT pg_try_advisory_lock({id})")),
        "t"
    );
}

/// The lock session ends with the run: released and gone from the server (pglock sends
/// Terminate after the unlock's answer).
#[test]
fn the_session_ends_with_the_run() {
    let name = key("session-ends");
    let (_, err) = expect_code(Run::new(&name).child(["true"]), 0);
    assert!(err.contains("released the lock"), "{err}");
    assert!(pg().locks_on(lock_id(&name)).is_empty());
    let sql =
        format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pglock:{name}'");
    assert!(
        wait_until(Duration::from_secs(2), || pg().psql_super(&sql).trim()
            == "0"),
        "the lock session outlived pglock"
    );
}

/// Contract §4: a blocked waiter says once who holds the lock (pid, application, client address,
/// since when), then again at growing intervals (the first repeat 10-15 s later), not more often.
#[test]
fn a_blocked_waiter_names_the_holder_then_reports_again_later() {
    use std::io::BufRead;
    use std::sync::{Arc, Mutex};
    let name = key("names-holder");
    let id = lock_id(&name);
    let holder = hold(Run::new(&name).child(["sleep", "60"]), id);
    let holder_pid = pg().psql_super(&format!(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = {} AND objid = {} AND granted",
        (id as u64) >> 32,
        id as u64 & 0xffff_ffff
    ));
    let holder_port = pg().psql_super(&format!(
        "SELECT client_port FROM pg_stat_activity WHERE pid = {holder_pid}"
    ));
    let mut waiter = Run::new(&name)
        .child(["true"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<(Instant, String)>::new()));
    let reader = {
        let lines = lines.clone();
        let err = waiter.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(err).lines() {
                lines.lock().unwrap().push((Instant::now(), l.unwrap()));
            }
        })
    };
    let waits = || -> Vec<(Instant, String)> {
        let v = lines.lock().unwrap();
        v.iter()
            .filter(|(_, l)| l.contains("waiting for lock"))
            .cloned()
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(10), || !waits().is_empty()),
        "no waiting line: {:?}",
        lines.lock().unwrap()
    );
    let (first_at, first) = waits()[0].clone();
    for part in [
        format!("waiting for lock \"{name}\" (exclusive mode): held by pid {holder_pid} ("),
        format!("application \"pglock:{name}\""),
        format!("client 127.0.0.1:{holder_port},"),
        "connected since 20".to_string(),
    ] {
        assert!(first.contains(&part), "{part:?} missing from: {first}");
    }
    // Nothing more for 10 s; then one "still waiting" line naming the holder again.
    assert!(
        wait_until(Duration::from_secs(20), || waits().len() >= 2),
        "no second report: {:?}",
        lines.lock().unwrap()
    );
    let w = waits();
    let after = w[1].0 - first_at;
    assert!(
        after >= Duration::from_secs(9) && after <= Duration::from_secs(17),
        "second report after {after:?}"
    );
    assert!(
        w[1].1.contains("still waiting for lock")
            && w[1].1.contains(&format!("held by pid {holder_pid} (")),
        "{}",
        w[1].1
    );
    assert_eq!(w.len(), 2, "{w:?}");
    assert_eq!(stop(holder), Some(143));
    assert_eq!(waiter.wait().unwrap().code(), Some(0));
    reader.join().unwrap();
}

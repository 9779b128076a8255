//! Contract §4 (poolers), through real PgBouncers as users run them: PgBouncer's own defaults
//! (server connections reused last-in-first-out), transaction and session pooling, pools of one
//! and five server connections and the default, cold and warm. The outcome asserted is the user's:
//! from the children's own timestamps, no two ran at once; nothing is left in `pg_locks`; nothing
//! is left on a pooled server connection.

use crate::harness::*;
use std::process::{Child, Stdio};
use std::time::Duration;

/// The PgBouncer configurations of the tests: (name, settings).
const TRANSACTION_POOLS: [(&str, &str); 3] = [
    ("tx1", "pool_mode = transaction\ndefault_pool_size = 1"),
    ("tx5", "pool_mode = transaction\ndefault_pool_size = 5"),
    ("txdefault", "pool_mode = transaction"),
];

/// Starts `n` runs at once of `args` followed by `-- sh -c STAMP` (recording into `file`).
fn start_runs(b: &Bouncer, n: usize, args: &[&str], file: &std::path::Path) -> Vec<Child> {
    let script = stamp_script(file, "0.2");
    (0..n)
        .map(|_| {
            Run::keyless()
                .args(args)
                .through(b)
                .sh(&script)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect()
}

/// Waits for the runs; returns their exit codes and stderr.
fn finish(runs: Vec<Child>) -> Vec<(i32, String)> {
    runs.into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
        .collect()
}

/// Warms the pool: several transactions at once, so that PgBouncer opens server connections.
fn warm(b: &Bouncer) {
    let name = key("warm");
    let runs: Vec<_> = (0..5)
        .map(|_| {
            Run::new(&name)
                .args(["-q", "--scope", "transaction"])
                .through(b)
                .child(["sleep", "0.2"])
                .spawn()
                .unwrap()
        })
        .collect();
    all_succeed(runs);
}

fn assert_nothing_left(id: i64) {
    assert!(
        wait_until(Duration::from_secs(5), || pg().locks_on(id).is_empty()),
        "left in pg_locks: {:?}",
        pg().locks_on(id)
    );
}

#[test]
fn a_session_lock_through_a_transaction_pooler_is_refused_cold_warm_and_concurrent() {
    for (name, conf) in TRANSACTION_POOLS {
        let b = Bouncer::start(name, conf);
        for state in ["cold", "warm"] {
            if state == "warm" {
                warm(&b);
            }
            for n in [1, 2, 5] {
                let lock = key("pgb-refuse");
                let file = tmpdir("pgb-refuse").join("stamps");
                let results = finish(start_runs(&b, n, &["--key", &lock], &file));
                for (code, err) in &results {
                    assert_eq!(*code, 69, "{name} {state} x{n}: {err}");
                    assert!(
                        err.contains("--scope transaction") && err.contains("--pooler session"),
                        "{name} {state}: {err}"
                    );
                }
                assert!(intervals(&file).is_empty(), "{name} {state}: a child ran");
                assert_nothing_left(lock_id(&lock));
            }
        }
    }
}

/// How many times each configuration's concurrent runs are repeated: `PGLOCK_POOLER_ROUNDS`
/// (1 by default; more for a soak, whose counts the tests print).
fn rounds() -> usize {
    std::env::var("PGLOCK_POOLER_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1)
}

/// One configuration's concurrent runs: `n` runs of one key at once (`rounds()` times); every
/// run exits with one of `codes` and no two children overlap. Returns how many children ran in
/// the last round.
fn never_two(b: &Bouncer, what: &str, args: &[&str], n: usize, codes: &[i32]) -> usize {
    let (mut ran, mut total) = (0, 0);
    for _ in 0..rounds() {
        let lock = key("pgb-two");
        let file = tmpdir("pgb-two").join("stamps");
        let mut a = vec!["--key", &lock];
        a.extend_from_slice(args);
        let results = finish(start_runs(b, n, &a, &file));
        for (code, err) in &results {
            assert!(codes.contains(code), "{what} {args:?}: exit {code}: {err}");
        }
        let iv = intervals(&file);
        assert_one_at_a_time(&iv);
        ran = iv.len();
        total += iv.len();
    }
    eprintln!(
        "pooler-soak: {what} {args:?} x{n}: {} runs started, {total} children ran, 0 overlapped",
        n * rounds()
    );
    ran
}

#[test]
fn transaction_scope_through_transaction_poolers_runs_one_at_a_time() {
    for (name, conf) in TRANSACTION_POOLS {
        let b = Bouncer::start(name, conf);
        for n in [2, 5] {
            let lock_args = ["--scope", "transaction"];
            let ran = never_two(&b, name, &lock_args, n, &[0]);
            assert_eq!(ran, n, "{name}: every waiting run runs");
            // Tries: one at least runs, the others are busy.
            let ran = never_two(&b, name, &["--scope", "transaction", "-n"], n, &[0, 75]);
            assert!(ran >= 1, "{name}");
        }
    }
}

#[test]
fn a_declared_session_pooler_runs_session_locks_one_at_a_time() {
    for (name, conf) in [
        ("sess1", "pool_mode = session\ndefault_pool_size = 1"),
        ("sess5", "pool_mode = session\ndefault_pool_size = 5"),
    ] {
        let b = Bouncer::start(name, conf);
        for n in [2, 5] {
            let ran = never_two(&b, name, &["--pooler", "session"], n, &[0]);
            assert_eq!(ran, n, "{name}");
            let ran = never_two(&b, name, &["--pooler", "session", "-n"], n, &[0, 75]);
            assert!(ran >= 1, "{name}");
        }
        // Undeclared, it is refused like any pooler: nothing tells pglock how it pools.
        let lock = key("pgb-sess");
        let (_, err) = expect_code(Run::new(&lock).through(&b).child(["true"]), 69);
        assert!(err.contains("--pooler session"), "{err}");
        // Session pooling with the environment variable.
        let mut c = Run::new(&lock).through(&b).child(["true"]);
        c.env("PGLOCK_POOLER", "session");
        let (_, err) = expect_code(c, 0);
        assert!(!err.contains("pooler"), "no warning once declared: {err}");
        assert_nothing_left(lock_id(&lock));
    }
}

/// `--pooler session` on a transaction pooler (misdeclared): a session lock taken on one pooled
/// server connection is never granted to another client of it, so no two children overlap, even
/// though runs may then fail (74: the session changed under a heartbeat or the release) or give
/// up (75).
#[test]
fn a_misdeclared_transaction_pooler_still_never_runs_two_at_once() {
    for (name, conf) in [TRANSACTION_POOLS[0], TRANSACTION_POOLS[1]] {
        let b = Bouncer::start(name, conf);
        warm(&b);
        for n in [2, 5] {
            never_two(
                &b,
                name,
                &["--pooler", "session", "-w", "5s"],
                n,
                &[0, 69, 74, 75],
            );
            never_two(
                &b,
                name,
                &["--pooler", "session", "-n"],
                n,
                &[0, 69, 74, 75],
            );
        }
    }
}

/// A second client of the one server connection of a pool never gets the session lock that the
/// first client holds there, in any form: try and wait, exclusive and shared, --limit.
#[test]
fn a_lock_the_serving_session_holds_is_never_granted_again() {
    let b = Bouncer::start("held1", "pool_mode = transaction\ndefault_pool_size = 1");
    for extra in [&[][..], &["--shared"][..], &["--limit", "2"][..]] {
        let lock = key("pgb-held");
        let session = |wait: &[&str]| {
            Run::new(&lock)
                .args(["--pooler", "session"])
                .args(extra)
                .args(wait)
                .through(&b)
        };
        let holder = session(&[])
            .child(["sleep", "3"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        assert!(wait_until(Duration::from_secs(5), || !pg()
            .psql_super(
                "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid IN \
                 (SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'pglock:pgb-held%')"
            )
            .is_empty()));
        for wait in [&["-n"][..], &["-w", "1s"][..]] {
            let (_, err) = expect_code(session(wait).child(["touch", "/nonexistent/ran"]), 75);
            assert!(
                err.contains("already holds it"),
                "{extra:?} {wait:?}: {err}"
            );
        }
        let out = holder.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A psql session on the main cluster, directly, that holds lock `id` for `secs` seconds; returns
/// once the lock shows in pg_locks.
fn hold_directly(id: i64, secs: &str) -> Child {
    let direct = pg()
        .psql_cmd()
        .args([
            "-c",
            &format!("SELECT pg_advisory_lock({id}); SELECT pg_sleep({secs})"),
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || !pg()
        .locks_on(id)
        .is_empty()));
    direct
}

/// What `SHOW` says of the role's settings through the pool's one server connection.
fn pooled_settings(b: &Bouncer) -> String {
    b.psql(
        &b.pooled_url(),
        "SELECT current_setting('statement_timeout') || ' ' || current_setting('lock_timeout') \
         || ' ' || current_setting('idle_in_transaction_session_timeout')",
    )
}

/// PgBouncer refuses startup options, so pglock's session settings are made local to its own
/// transactions: a role's defaults are what the pool's other clients still see afterwards, and
/// they do not cut pglock's waits or its open transaction short.
#[test]
fn nothing_is_left_on_a_pooled_server_connection() {
    let b = Bouncer::start("leak1", "pool_mode = transaction\ndefault_pool_size = 1");
    let role = "2s 1500ms 2s";
    assert_eq!(pooled_settings(&b), role);
    let lock = key("pgb-leak");
    let run = |args: &[&str]| Run::new(&lock).args(args).pooled(&b);
    // Refused, and nothing left.
    expect_code(run(&[]).child(["true"]), 69);
    assert_eq!(pooled_settings(&b), role);
    // A transaction lock held longer than the role's idle_in_transaction_session_timeout.
    expect_code(run(&["--scope", "transaction"]).child(["sleep", "2.5"]), 0);
    assert_eq!(pooled_settings(&b), role);
    // A session lock (declared session pooler) waited for longer than the role's
    // statement_timeout and lock_timeout, then held.
    let id = lock_id(&lock);
    let mut direct = hold_directly(id, "2.5");
    let (_, err) = expect_code(run(&["--pooler", "session"]).child(["true"]), 0);
    assert!(err.contains("waiting for lock"), "{err}");
    direct.wait().unwrap();
    assert_eq!(pooled_settings(&b), role);
    // A wait with --timeout: its lock_timeout is the statement's alone.
    let mut direct = hold_directly(id, "2");
    expect_code(
        run(&["--scope", "transaction", "-w", "500ms"]).child(["true"]),
        75,
    );
    assert_eq!(pooled_settings(&b), role);
    direct.wait().unwrap();
    assert_nothing_left(id);
}

#[test]
fn transaction_scope_through_pgbouncer_excludes_and_leaves_nothing_behind() {
    let name = key("pgbx");
    let id = lock_id(&name);
    let file = tmpdir("pgbx").join("stamps");
    let runs = start_runs(
        bouncer(),
        4,
        &["-q", "--scope", "transaction", "--key", &name],
        &file,
    );
    // While they run, one holds the lock on the real server, inside a transaction.
    assert!(wait_until(Duration::from_secs(10), || pg()
        .locks_on(id)
        .iter()
        .any(|l| l.contains(",t,"))));
    let (_, err) = expect_code(
        Run::new(&name)
            .args(["-n", "--scope", "transaction"])
            .through(bouncer())
            .child(["true"]),
        75,
    );
    assert!(err.contains("held by pid"), "{err}");
    for (code, err) in finish(runs) {
        assert_eq!(code, 0, "{err}");
    }
    let iv = intervals(&file);
    assert_eq!(iv.len(), 4, "{iv:?}");
    assert_one_at_a_time(&iv);
    assert_nothing_left(id);
    // Transaction scope works directly too.
    expect_code(
        Run::new(&name)
            .args(["--scope", "transaction"])
            .child(["true"]),
        0,
    );
}

/// pglock ends its session with Terminate: PgBouncer logs a close request, never an unexpected
/// end of file.
#[test]
fn through_pgbouncer_the_session_ends_with_terminate() {
    let name = key("pgb-terminate");
    expect_code(
        Run::new(&name)
            .args(["--scope", "transaction"])
            .through(bouncer())
            .child(["true"]),
        0,
    );
    let log = || std::fs::read_to_string(&bouncer().log).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(5), || log()
            .contains("closing because: client close request")),
        "{}",
        log()
    );
    assert!(!log().contains("client unexpected eof"), "{}", log());
}

/// Status through the pooler that a holder came through says that the holder's client address
/// and age are the pooler's (its server connection's), in the table and in JSON; connected
/// directly it cannot tell and says nothing.
#[test]
fn status_through_the_pooler_says_the_client_and_age_are_the_poolers() {
    let name = key("pgb-status");
    let id = lock_id(&name);
    let holder = hold(
        Run::new(&name)
            .args(["--scope", "transaction"])
            .through(bouncer())
            .child(["sleep", "3"]),
        id,
    );
    let (out, _) = expect_code(bouncer().pglock(&["status", "--key", &name]), 0);
    let line = out
        .lines()
        .find(|l| l.contains(&id.to_string()))
        .unwrap_or_default();
    assert!(line.contains("(pooler?)"), "{out}");
    assert!(out.contains("CLIENT and AGE are the pooler's"), "{out}");
    let (json, _) = expect_code(bouncer().pglock(&["status", "--key", &name, "--json"]), 0);
    assert!(json.contains("\"via_pooler\":true"), "{json}");
    let (direct, _) = expect_code(pglock(&["status", "--key", &name]), 0);
    assert!(!direct.contains("(pooler"), "{direct}");
    all_succeed(vec![holder]);
}

/// `--pooler session` misdeclared on a transaction pooler: another client of the server
/// connection can free the lock (`DISCARD ALL`, as drivers reset on close). Then the heartbeat,
/// which behind a declared pooler also confirms the lock in `pg_locks`, finds it gone and stops
/// the child (74) within a heartbeat; the README says that this case only bounds the overlap.
#[test]
fn a_misdeclared_pooler_whose_lock_another_client_frees_stops_the_child_at_the_next_heartbeat() {
    let b = Bouncer::start("discard1", "pool_mode = transaction\ndefault_pool_size = 1");
    let name = key("pgb-discard");
    let id = lock_id(&name);
    let run = Run::new(&name)
        .args(["--pooler", "session", "--heartbeat", "1s"])
        .through(&b)
        .child(["sleep", "20"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || !pg()
        .locks_on(id)
        .is_empty()));
    let t0 = std::time::Instant::now();
    b.psql(&b.url(), "DISCARD ALL");
    let out = run.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(74), "{err}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "{:?} {err}",
        t0.elapsed()
    );
}

/// A PgBouncer that drops pglock's startup options silently (`ignore_startup_parameters =
/// options`, a common setting) instead of refusing them: the role's defaults still cannot end a
/// wait or the lock's transaction, since pglock makes its settings local to its transactions.
#[test]
fn settings_dropped_silently_by_a_pooler_do_not_let_role_defaults_end_the_run() {
    let b = Bouncer::start(
        "ignore2",
        "pool_mode = transaction\ndefault_pool_size = 2\nignore_startup_parameters = options",
    );
    let lock = key("pgb-ignore");
    let id = lock_id(&lock);
    let run = || Run::new(&lock).args(["--scope", "transaction"]).pooled(&b);
    // Held longer than the role's idle_in_transaction_session_timeout (2s).
    expect_code(run().child(["sleep", "2.5"]), 0);
    // A wait longer than the role's statement_timeout (2s) and lock_timeout (1.5s).
    let mut direct = hold_directly(id, "2.5");
    expect_code(run().child(["true"]), 0);
    direct.wait().unwrap();
    assert_eq!(pooled_settings(&b), "2s 1500ms 2s");
}

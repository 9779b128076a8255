//! Contract §4 (--scope): through a real PgBouncer in transaction pooling mode, transaction-scoped
//! locks exclude each other and vanish with their transaction; a session lock is refused there.

use crate::harness::*;
use std::time::Duration;

/// `run --scope transaction --key NAME -- true`.
fn xact_run_true(name: &str) -> [&str; 7] {
    ["run", "--scope", "transaction", "--key", name, "--", "true"]
}

fn via_bouncer(args: &[&str]) -> std::process::Command {
    let mut c = pglock_bare(args);
    c.env("PGLOCK_DATABASE_URL", bouncer().url());
    c
}

#[test]
fn transaction_scope_through_pgbouncer_excludes_and_leaves_nothing_behind() {
    let name = key("pgbx");
    let id = lock_id(&name);
    let dir = tmpdir("pgbx");
    let file = dir.join("stamps");
    let script = stamp_script(&file, "0.1");
    let runs: Vec<_> = (0..4)
        .map(|_| {
            via_bouncer(&[
                "run",
                "-q",
                "--scope",
                "transaction",
                "--key",
                &name,
                "--",
                "sh",
                "-c",
                &script,
            ])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    // While they run, exactly one holds the lock on the real server, inside a transaction.
    assert!(wait_until(Duration::from_secs(10), || pg()
        .locks_on(id)
        .iter()
        .any(|l| l.contains(",t,"))));
    let (_, err) = expect_code(
        via_bouncer(&[
            "run",
            "-n",
            "--scope",
            "transaction",
            "--key",
            &name,
            "--",
            "true",
        ]),
        75,
    );
    assert!(err.contains("held by pid"), "{err}");
    all_succeed(runs);
    let iv = intervals(&file);
    assert_eq!(iv.len(), 4, "{iv:?}");
    assert_one_at_a_time(&iv);
    assert!(
        pg().locks_on(id).is_empty(),
        "left behind: {:?}",
        pg().locks_on(id)
    );
    // Transaction scope works directly too.
    expect_code(pglock(&xact_run_true(&name)), 0);
}

#[test]
fn session_scope_through_a_transaction_pooler_is_refused() {
    let name = key("pgbs");
    let id = lock_id(&name);
    // Warm the pool so that there are several server connections to rotate through.
    let warm: Vec<_> = (0..3)
        .map(|_| {
            via_bouncer(&[
                "run",
                "-q",
                "--scope",
                "transaction",
                "--key",
                &key("warm"),
                "--",
                "sleep",
                "0.3",
            ])
            .spawn()
            .unwrap()
        })
        .collect();
    for mut w in warm {
        w.wait().unwrap();
    }
    let (_, err) = expect_code(via_bouncer(&["run", "--key", &name, "--", "true"]), 69);
    assert!(
        err.contains("--scope transaction") && err.contains("transaction pooler"),
        "{err}"
    );
    // Refused before locking: no session lock is left with a pooled server connection.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        pg().locks_on(id).is_empty(),
        "leaked: {:?}",
        pg().locks_on(id)
    );
}

/// pglock ends its session with Terminate: PgBouncer logs a close request, never an unexpected
/// end of file.
#[test]
fn through_pgbouncer_the_session_ends_with_terminate() {
    let name = key("pgb-terminate");
    expect_code(via_bouncer(&xact_run_true(&name)), 0);
    let log = || std::fs::read_to_string(&bouncer().log).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(5), || log()
            .contains("closing because: client close request")),
        "{}",
        log()
    );
    assert!(!log().contains("client unexpected eof"), "{}", log());
}

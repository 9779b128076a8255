//! Contract §12: `--once TOKEN` and the run ledger. Each test uses a ledger table of its own
//! (`--ledger`), so that the tests run in parallel and assert on exact rows.

use crate::harness::*;
use std::process::{Command, Stdio};

/// A ledger table name for one test (unquoted-safe; dropped first if a rerun left it).
fn ledger(test: &str) -> String {
    let t = format!("once_{}", test.replace('-', "_"));
    pg().psql_super(&format!("DROP TABLE IF EXISTS {t}"));
    t
}

/// `pglock run --key NAME --ledger TABLE EXTRA... -- sh -c SCRIPT`, with `$PSQL` for the child.
fn run(name: &str, table: &str, extra: &[&str], script: &str) -> Command {
    run_to(&pg().url(), name, table, extra, script)
}

/// `run` connecting to `url`, and `$PSQL` too.
fn run_to(url: &str, name: &str, table: &str, extra: &[&str], script: &str) -> Command {
    let mut c = Run::new(name)
        .args(["--ledger", table])
        .args(extra)
        .url(url)
        .sh(script);
    c.env(
        "PSQL",
        format!(
            "{} -X -Atq -v ON_ERROR_STOP=1 -d {url}",
            pg().bin.join("psql").display(),
        ),
    );
    c
}

fn lines(p: &std::path::Path) -> usize {
    std::fs::read_to_string(p).map_or(0, |s| s.lines().count())
}

#[test]
fn five_concurrent_runs_with_one_token_run_one_child() {
    let name = key("once-five");
    let t = ledger("five");
    let dir = tmpdir("once-five");
    let ran = dir.join("ran");
    let script = format!("echo $PGLOCK_RUN_ID >> {}; sleep 0.3", ran.display());
    let children: Vec<_> = (0..5)
        .map(|_| {
            run(&name, &t, &["--once", "2026-12-07"], &script)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let codes: Vec<_> = outs.iter().map(|o| o.status.code()).collect();
    assert_eq!(lines(&ran), 1, "children run: {codes:?}");
    assert_eq!(
        codes.iter().filter(|c| **c == Some(0)).count(),
        1,
        "{codes:?}"
    );
    assert_eq!(
        codes.iter().filter(|c| **c == Some(75)).count(),
        4,
        "{codes:?}"
    );
    let winner = std::fs::read_to_string(&ran).unwrap().trim().to_string();
    for o in outs.iter().filter(|o| o.status.code() == Some(75)) {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("already done by run {winner}")) && err.contains("ran "),
            "{err}"
        );
    }
    assert_eq!(
        pg().psql_super(&format!(
            "SELECT count(*), bool_and(done), min(exit_code) FROM {t}"
        )),
        "1|t|0"
    );
}

#[test]
fn a_failed_run_is_retried_and_a_new_token_runs() {
    let name = key("once-retry");
    let t = ledger("retry");
    let dir = tmpdir("once-retry");
    let ran = dir.join("ran");
    let log = format!("echo x >> {}", ran.display());
    expect_code(
        run(&name, &t, &["--once", "a"], &format!("{log}; exit 3")),
        3,
    );
    expect_code(run(&name, &t, &["--once", "a"], &log), 0);
    let (_, err) = expect_code(run(&name, &t, &["--once", "a"], &log), 75);
    assert!(err.contains("already done"), "{err}");
    // -E and -q -E 0: the skip is not an error, and -q prints nothing for it.
    expect_code(run(&name, &t, &["--once", "a", "-E", "9"], &log), 9);
    // (With -q it is also silent once issue 22's rule for -q -E 0 is merged: the skip is a
    // Kind::NotAcquired, as a busy lock is.)
    let (_, err) = expect_code(run(&name, &t, &["--once", "a", "-E", "0"], &log), 0);
    assert!(err.contains("already done"), "{err}");
    assert_eq!(lines(&ran), 2);
    expect_code(run(&name, &t, &["--once", "b"], &log), 0);
    assert_eq!(lines(&ran), 3);
    assert_eq!(
        pg().psql_super(&format!(
            "SELECT string_agg(token || ':' || exit_code || ':' || done, ' ' ORDER BY started_at) FROM {t}"
        )),
        "a:3:false a:0:true b:0:true"
    );
}

/// The child commits `PGLOCK_ONCE_SQL` with its work, then its pglock is killed (SIGKILL, by
/// the child itself) before it can record anything: the token is done all the same. Without
/// `PGLOCK_ONCE_SQL` the same kill leaves it not done, and the next run runs the child again.
#[test]
fn sigkill_after_the_childs_commit_with_and_without_once_sql() {
    for (with_sql, runs_again) in [(true, false), (false, true)] {
        let name = key("once-kill");
        let t = ledger(&format!("kill_{with_sql}"));
        let dir = tmpdir("once-kill");
        let ran = dir.join("ran");
        let commit = if with_sql {
            "$PSQL -c \"$PGLOCK_ONCE_SQL\""
        } else {
            "true"
        };
        let script = format!(
            "echo x >> {}; {commit} && kill -9 $PPID; sleep 5",
            ran.display()
        );
        let out = run(&name, &t, &["--once", "t1"], &script).output().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&out.status),
            Some(9),
            "pglock was not killed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let again = format!("echo x >> {}", ran.display());
        let code = if runs_again { 0 } else { 75 };
        let (_, err) = expect_code(run(&name, &t, &["--once", "t1"], &again), code);
        assert_eq!(
            lines(&ran),
            if runs_again { 2 } else { 1 },
            "with_sql {with_sql}: {err}"
        );
        if !runs_again {
            assert!(err.contains("its end not recorded"), "{err}");
        }
    }
}

#[test]
fn a_once_token_through_pgbouncer_in_transaction_scope_runs_its_child_once() {
    let name = key("once-bouncer");
    let t = ledger("bouncer");
    let dir = tmpdir("once-bouncer");
    let ran = dir.join("ran");
    let extra = ["--scope", "transaction", "--once", "x"];
    let go = |script: &str| run_to(&bouncer().url(), &name, &t, &extra, script);
    // The first run creates the ledger (committed before its child, which writes to it through
    // the pool), the second finds the token done.
    let script = format!("echo x >> {}; $PSQL -c \"$PGLOCK_ONCE_SQL\"", ran.display());
    expect_code(go(&script), 0);
    let (_, err) = expect_code(go(&script), 75);
    assert!(err.contains("already done"), "{err}");
    assert_eq!(lines(&ran), 1);
    assert_eq!(
        pg().psql_super(&format!(
            "SELECT count(*), bool_and(done), min(exit_code) FROM {t}"
        )),
        "1|t|0"
    );
}

#[test]
fn a_role_without_create_is_refused_before_the_child_until_a_dba_creates_the_ledger() {
    let role = "once_nocreate";
    let schema = "once_nocreate_s";
    pg().psql_super(&format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; DROP ROLE IF EXISTS {role}; \
         CREATE ROLE {role} LOGIN PASSWORD 'nc-pw'; CREATE SCHEMA {schema}; \
         GRANT USAGE ON SCHEMA {schema} TO {role}; ALTER ROLE {role} SET search_path = {schema}"
    ));
    let url = format!(
        "postgres://{role}:nc-pw@127.0.0.1:{}/postgres?sslmode=disable",
        pg().port
    );
    let name = key("once-nocreate");
    let dir = tmpdir("once-nocreate");
    let ran = dir.join("ran");
    let go = || {
        Run::new(&name)
            .args(["--once", "d1"])
            .url(&url)
            .sh(&format!("echo x >> {}", ran.display()))
    };
    let (_, err) = expect_code(go(), 69);
    assert!(
        err.contains("pglock key --ledger-sql") && err.contains("CREATE"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(lines(&ran), 0);
    // The DBA runs the printed SQL in the role's schema and grants.
    let (sql, _) = expect_code(pglock_bare(&["key", "--ledger-sql"]), 0);
    pg().psql_super(&format!(
        "SET search_path = {schema}; {sql} GRANT SELECT, INSERT, UPDATE ON pglock_runs TO {role};"
    ));
    expect_code(go(), 0);
    expect_code(go(), 75);
    assert_eq!(lines(&ran), 1);
    // Read but not written: refused before the child too.
    pg().psql_super(&format!(
        "REVOKE INSERT ON {schema}.pglock_runs FROM {role}"
    ));
    let (_, err) = expect_code(go(), 69);
    assert!(err.contains("lacks INSERT"), "{err}");
    assert_eq!(lines(&ran), 1);
}

#[test]
fn ledger_without_once_records_every_run_and_history_lists_them() {
    let name = key("once-audit");
    let t = ledger("audit");
    for code in [0, 5, 0] {
        expect_code(run(&name, &t, &[], &format!("exit {code}")), code);
    }
    let (out, _) = expect_code(
        pglock(&["history", "--key", &name, "--ledger", &t, "--json"]),
        0,
    );
    let codes: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split("\"exit_code\":").nth(1))
        .map(|r| r.split(',').next().unwrap())
        .collect();
    assert_eq!(codes, ["0", "5", "0"], "{out}");
    let id = lock_id(&name).to_string();
    assert_eq!(
        out.matches(&format!("\"lock_id\":\"{id}\"")).count(),
        3,
        "{out}"
    );
    assert!(out.contains("\"token\":null"), "{out}");
    // Newest first: the started_at values descend.
    let started: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split("\"started_at\":\"").nth(1))
        .map(|r| r.split('"').next().unwrap())
        .collect();
    assert!(
        started.windows(2).all(|w| w[0] >= w[1]) && started.len() == 3,
        "{started:?}"
    );
    let (text, _) = expect_code(pglock(&["history", "--key", &name, "--ledger", &t]), 0);
    assert_eq!(text.lines().count(), 4, "{text}");
}

#[test]
fn schema_qualified_and_quote_needing_ledger_names() {
    pg().psql_super("DROP SCHEMA IF EXISTS \"Once Ops\" CASCADE; CREATE SCHEMA \"Once Ops\"");
    for table in ["Once Ops.runs", "Once Ops.Run \"Log\"; --"] {
        let name = key("once-names");
        expect_code(run(&name, table, &["--once", "n"], "true"), 0);
        expect_code(run(&name, table, &["--once", "n"], "true"), 75);
        let (out, _) = expect_code(
            pglock(&["history", "--key", &name, "--ledger", table, "--json"]),
            0,
        );
        assert_eq!(out.matches("\"done\":true").count(), 1, "{out}");
    }
    assert_eq!(
        pg().psql_super(
            "SELECT string_agg(tablename, '|' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'Once Ops'"
        ),
        "Run \"Log\"; --|runs"
    );
}

#[test]
fn a_nested_run_with_the_same_token_is_the_same_run_and_another_token_is_refused() {
    let name = key("once-nested");
    let t = ledger("nested");
    let inner = |token: &str| {
        format!(
            "{} run --key {name} --ledger {t} --once {token} -- sh -c 'test -n \"$PGLOCK_ONCE_SQL\" && echo inner:$PGLOCK_ONCE_TOKEN'",
            bin()
        )
    };
    let (out, _) = expect_code(run(&name, &t, &["--once", "o"], &inner("o")), 0);
    assert_eq!(out.trim(), "inner:o");
    let (_, err) = expect_code(run(&name, &t, &["--once", "p"], &inner("q")), 2);
    assert!(err.contains("same run"), "{err}");
    // An inherited PGLOCK_ONCE does not make another lock's pglock a --once run.
    let other = key("once-nested-other");
    let (out, _) = expect_code(
        run(
            &name,
            &t,
            &["--once", "r"],
            &format!(
                "{} run --key {other} -- sh -c 'echo [$PGLOCK_ONCE$PGLOCK_ONCE_TOKEN]'",
                bin()
            ),
        ),
        0,
    );
    assert_eq!(out.trim(), "[]");
}

#[test]
fn status_with_a_ledger_shows_a_held_locks_last_success() {
    let name = key("once-status");
    let t = ledger("status");
    let (_, err) = expect_code(run(&name, &t, &["--once", "s1"], "true"), 0);
    let winner = err
        .split("[run ")
        .nth(1)
        .unwrap()
        .split(']')
        .next()
        .unwrap();
    let holder = hold(run(&name, &t, &["--once", "s2"], "sleep 2"), lock_id(&name));
    let (out, _) = expect_code(pglock(&["status", "--key", &name, "--ledger", &t]), 0);
    stop(holder);
    let last = out.split("LAST SUCCESS").nth(1).unwrap_or_default();
    assert!(last.contains(winner) && last.contains("s1"), "{out}");
}

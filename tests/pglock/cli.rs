//! Command line: bad input is one line and exit 2; `pglock key` and its SQL agree with the server.

use crate::harness::*;

fn one_line_usage(args: &[&str], env: &[(&str, &str)], needle: &str) {
    let mut c = pglock(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let (_, err) = expect_code(c, 2);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected for {args:?}: {err}");
    assert!(lines[0].starts_with("pglock: "), "{err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected '{needle}' in: {err}"
    );
}

#[test]
fn bad_input_is_a_one_line_usage_error() {
    let long = "x".repeat(1025);
    one_line_usage(&["run", "--key", "", "--", "true"], &[], "empty");
    one_line_usage(&["run", "--key", &long, "--", "true"], &[], "1025 bytes");
    one_line_usage(
        &["run", "--key-id", "12abc", "--", "true"],
        &[],
        "invalid --key-id",
    );
    one_line_usage(
        &["run", "--key-id", "99999999999999999999", "--", "true"],
        &[],
        "invalid --key-id",
    );
    one_line_usage(
        &["run", "--key", "a", "--key-id", "1", "--", "true"],
        &[],
        "give one lock",
    );
    one_line_usage(&["run", "--", "true"], &[], "no lock given");
    one_line_usage(&["run", "--key", "a"], &[], "COMMAND");
    one_line_usage(
        &["run", "--key", "a", "-n", "-w", "5s", "--", "true"],
        &[],
        "exclude each other",
    );
    one_line_usage(
        &["run", "--key", "a", "-w", "5 parsecs", "--", "true"],
        &[],
        "invalid duration",
    );
    one_line_usage(
        &["run", "--key", "a", "-w", "10 s", "--", "true"],
        &[],
        "invalid duration",
    );
    one_line_usage(
        &["run", "--key", "a", "-E", "300", "--", "true"],
        &[],
        "0 to 255",
    );
    // A negative value is the value's error, not clap's "unexpected argument '-1'".
    one_line_usage(
        &["run", "--key", "a", "-w", "-1s", "--", "true"],
        &[],
        "--timeout: invalid duration '-1s': a duration cannot be negative",
    );
    one_line_usage(
        &["run", "--key", "a", "--max-runtime=-5m", "--", "true"],
        &[],
        "--max-runtime: invalid duration '-5m': a duration cannot be negative",
    );
    one_line_usage(
        &["run", "--key", "a", "-w", "--shared", "--", "true"],
        &[],
        "--timeout: expected a duration such as 10 (seconds), 1.5s, 250ms, 5m, 1h or 1m30s, found '--shared'",
    );
    one_line_usage(
        &["run", "--key", "a", "-E", "-1", "--", "true"],
        &[],
        "--conflict-exit-code '-1': give a number from 0 to 255",
    );
    one_line_usage(
        &["run", "--key", "a", "--limit", "-3", "--", "true"],
        &[],
        "--limit '-3': give a number of slots from 1",
    );
    one_line_usage(
        &["run", "--key", "a", "--frobnicate", "--", "true"],
        &[],
        "--frobnicate",
    );
    one_line_usage(&["bogus"], &[], "bogus");
    one_line_usage(
        &["run", "--", "true"],
        &[("PGLOCK_TIMEOUT", "soon")],
        "no lock given",
    );
    one_line_usage(
        &["run", "--key", "a", "--", "true"],
        &[("PGLOCK_TIMEOUT", "soon")],
        "invalid duration",
    );
    one_line_usage(
        &[
            "run",
            "--key",
            "a",
            "--database-url",
            "postgres://h/db?sslmode=sometimes",
            "--",
            "true",
        ],
        &[],
        "invalid sslmode",
    );
    one_line_usage(
        &[
            "run",
            "--key",
            "a",
            "--database-url",
            "host=h frob=1",
            "--",
            "true",
        ],
        &[],
        "invalid connection option",
    );
    one_line_usage(&["key", ""], &[], "empty");
}

#[test]
fn key_prints_the_contract_mapping() {
    // First 8 bytes of SHA-256("seed") = 19b25856e1c150ca, big-endian, signed.
    let (out, _) = expect_code(pglock_bare(&["key", "seed"]), 0);
    assert_eq!(out.trim(), (0x19b2_5856_e1c1_50ca_u64 as i64).to_string());
}

#[test]
fn key_sql_evaluated_by_the_server_equals_key() {
    for name in [
        "seed",
        "it's",
        r"back\slash'quote",
        "ünïcödé ✓",
        "with space",
        &"long".repeat(200),
    ] {
        let (id, _) = expect_code(pglock_bare(&["key", name]), 0);
        let (sql, _) = expect_code(pglock_bare(&["key", name, "--sql"]), 0);
        let got = pg().psql_super(&format!("SELECT {}", sql.trim()));
        assert_eq!(got, id.trim(), "name {name:?}: sql {sql}");
        // And with the other setting of standard_conforming_strings.
        let got = pg().psql_super(&format!(
            "SET standard_conforming_strings = off; SELECT {}",
            sql.trim()
        ));
        assert_eq!(
            got.lines().last().unwrap(),
            id.trim(),
            "name {name:?} (scs off)"
        );
    }
}

#[test]
fn key_id_takes_hex_negative_and_i64_max_and_the_child_sees_the_id() {
    let k = "0x47524f4f";
    let dir = tmpdir("keyid");
    let f = dir.join("env");
    let script = format!("echo \"$PGLOCK_LOCK_ID\" > {}", f.display());
    for (arg, id) in [
        (k, 0x4752_4f4f_i64),
        ("-42", -42),
        ("9223372036854775807", i64::MAX),
    ] {
        expect_code(
            pglock(&["run", "--key-id", arg, "--", "sh", "-c", &script]),
            0,
        );
        assert_eq!(std::fs::read_to_string(&f).unwrap().trim(), id.to_string());
    }
}

#[test]
fn help_names_env_vars_and_version_works() {
    let (out, _) = expect_code(pglock_bare(&["run", "--help"]), 0);
    for needle in [
        "PGLOCK_KEY",
        "PGLOCK_TIMEOUT",
        "PGLOCK_NO_WAIT",
        "PGLOCK_DATABASE_URL",
        "PGLOCK_CONFLICT_EXIT_CODE",
        "Examples:",
    ] {
        assert!(out.contains(needle), "run --help lacks {needle}:\n{out}");
    }
    // Every exit status of contract §7 (and 70), the way the help's summary words them.
    let (_, summary) = out
        .split_once("Exit status:")
        .expect("an exit status summary");
    let summary = summary.split_whitespace().collect::<Vec<_>>().join(" ");
    for code in [
        "128+N",
        "2 usage",
        "69 PostgreSQL",
        "70 internal",
        "74 lock lost",
        "75 lock not",
        "124 --max-runtime",
        "126 COMMAND",
        "127 COMMAND",
    ] {
        assert!(
            summary.contains(code),
            "run --help's exit status lacks {code:?}: {summary}"
        );
    }
    let (out, _) = expect_code(pglock_bare(&["--version"]), 0);
    assert!(out.starts_with("pglock "), "{out}");
}

#[test]
fn options_come_from_the_environment() {
    let name = key("envopts");
    let holder = pg().psql_cmd();
    // Hold the lock from SQL, then a run configured only by PGLOCK_* must give up at once with
    // the exit code from PGLOCK_CONFLICT_EXIT_CODE.
    let id = lock_id(&name);
    let mut h = holder;
    h.args([
        "-c",
        &format!("SELECT pg_advisory_lock({id})"),
        "-c",
        "SELECT pg_sleep(3)",
    ]);
    let h = h.spawn().unwrap();
    assert!(wait_until(std::time::Duration::from_secs(5), || !pg()
        .locks_on(id)
        .is_empty()));
    let mut c = pglock(&["run", "--", "true"]);
    c.env("PGLOCK_KEY", &name)
        .env("PGLOCK_NO_WAIT", "true")
        .env("PGLOCK_CONFLICT_EXIT_CODE", "9");
    expect_code(c, 9);
    stop(h);
}

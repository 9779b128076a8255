//! Issue 13: the locks that existing code and migration tools take (`--key-id A,B`,
//! `--key-hashtext`, `--lock-of TOOL`).
//!
//! Every expected id is computed here, from the tool's published formula and the names this test
//! gave its databases, schemas and tables, with checksums written here (and checked against the
//! tools' own test vectors), never from pglock's code. Each lock is then checked on the server both
//! ways: while pglock holds it, a session running the tool's own statement does not get it; while
//! such a session holds it, `pglock run -n` exits 75.

use crate::harness::*;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

// ---- the tools' formulas, written independently of src/ --------------------------------------

/// CRC-32/IEEE, table-driven (zlib's, Go's `crc32.ChecksumIEEE`, Ruby's `Zlib.crc32`, the `crc`
/// crate's `CRC_32_ISO_HDLC`).
fn crc32_ieee(data: &[u8]) -> u32 {
    let table: Vec<u32> = (0..256u32)
        .map(|n| {
            (0..8).fold(n, |c, _| {
                if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                }
            })
        })
        .collect();
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c = table[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    c ^ 0xFFFF_FFFF
}

/// `java.lang.String#hashCode`: s[0]*31^(n-1) + ... + s[n-1] over UTF-16 units, in int arithmetic.
fn java_string_hash(s: &str) -> i32 {
    let mut h: i32 = 0;
    for unit in s.encode_utf16() {
        h = h.wrapping_mul(31).wrapping_add(unit as i32);
    }
    h
}

/// FNV-1, 32 bits (Go's `hash/fnv.New32`): offset basis 2166136261, prime 16777619.
fn fnv1(data: &[u8]) -> u32 {
    let mut h: u32 = 2_166_136_261;
    for &b in data {
        h = h.wrapping_mul(16_777_619);
        h ^= u32::from(b);
    }
    h
}

/// golang-migrate `database/util.go` `GenerateAdvisoryLockId(db, schema, table)`:
/// `crc32(schema \0 table \0 db) * 1486364155` in uint32.
fn golang_migrate(db: &str, schema: &str, table: &str) -> i64 {
    let joined = [schema, table, db].join("\u{0}");
    i64::from(crc32_ieee(joined.as_bytes()).wrapping_mul(1_486_364_155))
}

/// sqlx `sqlx-postgres/src/migrate.rs` `generate_lock_id`.
fn sqlx(db: &str) -> i64 {
    0x3d32ad9e_i64 * i64::from(crc32_ieee(db.as_bytes()))
}

/// Rails `migration.rb` `generate_migrator_advisory_lock_id`: `MIGRATOR_SALT * Zlib.crc32(db)`.
fn rails(db: &str) -> i64 {
    2_053_462_845_i64 * i64::from(crc32_ieee(db.as_bytes()))
}

/// Flyway `PostgreSQLAdvisoryLockTemplate`: `LOCK_MAGIC_NUM + table.toString().hashCode()`, where
/// the table prints as `"schema"."table"`.
fn flyway(schema: &str, table: &str) -> i64 {
    let magic: i64 = (0x46 << 40) + (0x6C << 32) + (0x79 << 24) + (0x77 << 16) + (0x61 << 8) + 0x79;
    magic + i64::from(java_string_hash(&format!("\"{schema}\".\"{table}\"")))
}

#[test]
fn the_formulas_here_reproduce_the_tools_own_vectors() {
    assert_eq!(crc32_ieee(b"123456789"), 0xCBF4_3926);
    // golang-migrate database/util_test.go (the database name comes last).
    assert_eq!(
        i64::from(crc32_ieee(b"database_name").wrapping_mul(1_486_364_155)),
        1_764_327_054
    );
    assert_eq!(
        golang_migrate("database_name", "schema_name_1", "schema_name_2"),
        3_743_845_847
    );
    // goose lock/session_locker_options.go: DefaultLockID = crc32("goose").
    assert_eq!(crc32_ieee(b"goose"), 4_097_083_626);
    assert_eq!(fnv1(b"a"), 0x050c_5d7e);
    assert_eq!(java_string_hash("hello"), 99_162_322);
}

// ---- the databases -----------------------------------------------------------------------------

/// Two databases with different names for the tools' locks; the second one's search_path is a
/// schema that is not `public`, so `current_schema()` there is `ledger`. A third one for the other
/// tests, so that no two tests running at once take the same lock.
struct Dbs {
    orders: String,
    billing: String,
    misc: String,
}

fn dbs() -> &'static Dbs {
    static DBS: OnceLock<Dbs> = OnceLock::new();
    DBS.get_or_init(|| {
        let pid = std::process::id();
        let d = Dbs {
            orders: format!("orders_{pid}"),
            billing: format!("billing_{pid}"),
            misc: format!("misc_{pid}"),
        };
        pg().psql_super(&format!("CREATE DATABASE {}", d.misc));
        pg().psql_super(&format!("CREATE DATABASE {}", d.orders));
        pg().psql_super(&format!("CREATE DATABASE {}", d.billing));
        psql_in(&d.billing, &["CREATE SCHEMA ledger"]);
        pg().psql_super(&format!(
            "ALTER DATABASE {} SET search_path = ledger",
            d.billing
        ));
        assert_eq!(psql_in(&d.billing, &["SELECT current_schema()"]), "ledger");
        d
    })
}

fn url_of(db: &str) -> String {
    format!(
        "postgres://postgres:{SUPERUSER_PASSWORD}@127.0.0.1:{}/{db}?sslmode=disable",
        pg().port
    )
}

fn psql_cmd_in(db: &str, app: &str, cmds: &[&str]) -> Command {
    let mut c = Command::new(pg().bin.join("psql"));
    c.args([
        "-X",
        "-A",
        "-t",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        &format!(
            "host={} port={} user=postgres dbname={db} application_name={app}",
            pg().dir.display(),
            pg().port
        ),
    ]);
    for s in cmds {
        c.args(["-c", s]);
    }
    c.stdin(Stdio::null());
    c
}

/// Runs the statements in one session of `db`; returns stdout, trimmed.
fn psql_in(db: &str, cmds: &[&str]) -> String {
    let mut c = psql_cmd_in(db, "pglock-test", cmds);
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", show(&c, &out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `pglock ARGS` connected to `db`.
fn pglock_in(db: &str, args: &[&str]) -> Command {
    let mut c = pglock_bare(args);
    c.env("PGLOCK_DATABASE_URL", url_of(db));
    c
}

/// (classid, objid, objsubid) of the granted advisory locks of `db` held by the sessions whose
/// application_name is `app`.
fn locks_of(db: &str, app: &str) -> Vec<(u32, u32, u32)> {
    psql_in(
        db,
        &[&format!(
            "SELECT l.classid || ' ' || l.objid || ' ' || l.objsubid FROM pg_locks l \
             JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted \
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND a.application_name = '{app}'"
        )],
    )
    .lines()
    .filter(|l| !l.is_empty())
    .map(|l| {
        let f: Vec<u32> = l.split(' ').map(|x| x.parse().unwrap()).collect();
        (f[0], f[1], f[2])
    })
    .collect()
}

/// What the tool runs, and how it sits in pg_locks.
#[derive(Clone, Copy)]
enum Lock {
    /// `pg_try_advisory_lock(<bigint>)`
    Big(i64),
    /// Flyway: `pg_try_advisory_xact_lock(<bigint>)` in its migration's transaction.
    BigXact(i64),
    /// `pg_try_advisory_lock(<int>, <int>)`
    Pair(i32, i32),
}

impl Lock {
    fn pg_locks(self) -> (u32, u32, u32) {
        match self {
            Lock::Big(id) | Lock::BigXact(id) => (((id as u64) >> 32) as u32, id as u64 as u32, 1),
            Lock::Pair(a, b) => (a as u32, b as u32, 2),
        }
    }
    fn printed(self) -> String {
        match self {
            Lock::Big(id) | Lock::BigXact(id) => id.to_string(),
            Lock::Pair(a, b) => format!("{a},{b}"),
        }
    }
    /// The tool's own statements that try the lock and print t or f (one session).
    fn try_sql(self, arg: &str) -> Vec<String> {
        match self {
            Lock::Big(_) | Lock::Pair(..) => vec![format!("SELECT pg_try_advisory_lock({arg})")],
            Lock::BigXact(_) => vec![
                "BEGIN".into(),
                format!("SELECT pg_try_advisory_xact_lock({arg})"),
                "COMMIT".into(),
            ],
        }
    }
}

/// One lock form on one database: the arguments, the expected lock, and the SQL argument with
/// which the tool (or the application code) names it.
struct Case<'a> {
    args: Vec<&'a str>,
    lock: Lock,
    tool_arg: String,
}

fn case<'a>(args: &[&'a str], lock: Lock) -> Case<'a> {
    let tool_arg = match lock {
        Lock::Big(id) | Lock::BigXact(id) => id.to_string(),
        Lock::Pair(a, b) => format!("{a}, {b}"),
    };
    Case {
        args: args.to_vec(),
        lock,
        tool_arg,
    }
}

/// The checks of one case on `db`.
fn check(db: &str, c: &Case, tag: &str) {
    let what = format!("{:?} on {db}", c.args);
    // 1. pglock key prints the id.
    let mut key_args = vec!["key"];
    key_args.extend(&c.args);
    let (out, _) = expect_code(pglock_in(db, &key_args), 0);
    assert_eq!(out.trim(), c.lock.printed(), "pglock key {what}");

    // 2. pglock run holds exactly that lock, and tells the child its id.
    let dir = tmpdir(tag);
    let (idf, stopf) = (dir.join("id"), dir.join("stop"));
    let script = format!(
        "echo \"$PGLOCK_LOCK_ID\" > {id}.tmp && mv {id}.tmp {id}; while [ ! -e {stop} ]; do sleep 0.02; done",
        id = idf.display(),
        stop = stopf.display()
    );
    let mut cmd = Run::keyless().args(&c.args).url(url_of(db)).sh(&script);
    let me = format!("pglock-{tag}");
    let holder = cmd
        .env("PGAPPNAME", &me)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || idf.exists()),
        "{what}: the child did not start"
    );
    assert_eq!(
        std::fs::read_to_string(&idf).unwrap().trim(),
        c.lock.printed(),
        "PGLOCK_LOCK_ID {what}"
    );
    assert_eq!(
        locks_of(db, &me),
        vec![c.lock.pg_locks()],
        "pg_locks of pglock {what}"
    );
    // 3. The tool's own statement, from another session, does not get it.
    let stmts = c.lock.try_sql(&c.tool_arg);
    let stmts: Vec<&str> = stmts.iter().map(String::as_str).collect();
    assert_eq!(
        psql_in(db, &stmts),
        "f",
        "{stmts:?} while pglock holds {what}"
    );
    std::fs::write(&stopf, "").unwrap();
    let out = holder.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // 4. The other way: while a session that ran the tool's statement holds it, pglock -n gives
    // up with 75 and names that session.
    let app = format!("tool-{tag}");
    let mut hold_stmts: Vec<String> = match c.lock {
        Lock::BigXact(_) => vec![
            "BEGIN".into(),
            format!("SELECT pg_try_advisory_xact_lock({})", c.tool_arg),
        ],
        _ => vec![format!("SELECT pg_try_advisory_lock({})", c.tool_arg)],
    };
    hold_stmts.push("SELECT pg_sleep(60)".into());
    let hold_stmts: Vec<&str> = hold_stmts.iter().map(String::as_str).collect();
    let tool = psql_cmd_in(db, &app, &hold_stmts)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || locks_of(db, &app)
            == vec![c.lock.pg_locks()]),
        "{what}: the tool's session did not take its lock"
    );
    let try_it = Run::keyless().args(["-n"]).args(&c.args).url(url_of(db));
    let (_, err) = expect_code(try_it.child(["true"]), 75);
    assert!(err.contains(&app), "{what}: the holder is not named: {err}");
    end_session(db, &app, tool);
}

/// Ends the sessions of `app` on the server (psql's own SIGTERM would leave the backend
/// sleeping with the lock).
fn end_session(db: &str, app: &str, child: Child) {
    psql_in(
        db,
        &[&format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '{app}'"
        )],
    );
    let _ = child.wait_with_output();
}

/// The locks of every form on `db`, whose `current_schema()` is `schema`.
fn cases_for<'a>(db: &str, schema: &str) -> Vec<Case<'a>> {
    let slash_db = format!("/{db}");
    vec![
        case(
            &["--lock-of", "golang-migrate"],
            Lock::Big(golang_migrate(&slash_db, schema, "schema_migrations")),
        ),
        case(
            &["--lock-of", "golang-migrate-with-instance"],
            Lock::Big(golang_migrate(db, schema, "schema_migrations")),
        ),
        case(
            &[
                "--lock-of",
                "golang-migrate",
                "--lock-schema",
                "ops",
                "--lock-table",
                "app_migrations",
            ],
            Lock::Big(golang_migrate(&slash_db, "ops", "app_migrations")),
        ),
        case(&["--lock-of", "sqlx"], Lock::Big(sqlx(db))),
        case(&["--lock-of", "rails"], Lock::Big(rails(db))),
        case(&["--lock-of", "prisma"], Lock::Big(72_707_369)),
        case(
            &["--lock-of", "flyway"],
            Lock::BigXact(flyway(schema, "flyway_schema_history")),
        ),
        case(
            &["--lock-of", "flyway", "--lock-table", "schema_history"],
            Lock::BigXact(flyway(schema, "schema_history")),
        ),
        case(
            &["--lock-of", "flyway", "--lock-schema", "My\"Schema"],
            Lock::BigXact(flyway("My\"\"Schema", "flyway_schema_history")),
        ),
        case(
            &["--lock-of", "atlas"],
            Lock::Big(i64::from(fnv1(b"atlas_migrate_execute"))),
        ),
        case(
            &["--lock-of", "goose"],
            Lock::Big(i64::from(crc32_ieee(b"goose"))),
        ),
        case(
            &["--lock-of", "goose-before-3.26"],
            Lock::Big(crc64_ecma(b"goose") as i64),
        ),
        case(&["--lock-of", "sqitch"], Lock::Big(75_474_063)),
        case(
            &["--lock-of", "graphile-migrate"],
            Lock::Big(4_727_445_306_447_283),
        ),
        case(
            &["--lock-of", "node-pg-migrate"],
            Lock::Big(7_241_865_325_823_964),
        ),
        case(&["--key-id", "1111,-2222"], Lock::Pair(1111, -2222)),
    ]
}

#[test]
fn tool_locks_on_a_public_schema_database() {
    let db = &dbs().orders;
    for (i, c) in cases_for(db, "public").iter().enumerate() {
        check(db, c, &format!("orders-{i}"));
    }
}

#[test]
fn tool_locks_on_another_database_and_schema() {
    let db = &dbs().billing;
    for (i, c) in cases_for(db, "ledger").iter().enumerate() {
        check(db, c, &format!("billing-{i}"));
    }
    // The same tool, another database: another lock (where the formula takes the database).
    assert_ne!(rails(&dbs().orders), rails(db));
}

#[test]
fn key_hashtext_takes_the_lock_the_servers_hashtext_names() {
    let db = &dbs().misc;
    for (i, name) in ["cron:status-sync:global", "migrate", "it's \\ odd"]
        .iter()
        .enumerate()
    {
        let lit = format!("'{}'", name.replace('\'', "''"));
        // The reference is the server's own function, asked here.
        let h: i64 = psql_in(
            db,
            &[&format!("SELECT hashtext(E{})", lit.replace('\\', "\\\\"))],
        )
        .parse()
        .unwrap();
        let mut c = case(&["--key-hashtext", name], Lock::Big(h));
        c.tool_arg = format!("hashtext(E{})", lit.replace('\\', "\\\\"));
        check(db, &c, &format!("hashtext-{i}"));
        let (sql, _) = expect_code(pglock_bare(&["key", "--key-hashtext", name, "--sql"]), 0);
        assert_eq!(
            psql_in(db, &[&format!("SELECT {}", sql.trim())]),
            h.to_string(),
            "--sql of {name:?}"
        );
    }
}

#[test]
fn two_int4_keys_are_another_key_space() {
    let db = &dbs().misc;
    let dir = tmpdir("pair");
    let stop = dir.join("stop");
    let script = format!("while [ ! -e {} ]; do sleep 0.02; done", stop.display());
    let holder = Run::keyless()
        .args(["--key-id", "7,8"])
        .url(url_of(db))
        .sh(&script)
        .env("PGAPPNAME", "pglock-pair")
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || locks_of(
        db,
        "pglock-pair"
    ) == vec![(7, 8, 2)]));
    // The bigint with the same classid and objid is a different lock ...
    let big = (7i64 << 32) + 8;
    assert_eq!(
        psql_in(
            db,
            &[&format!(
                "SELECT pg_try_advisory_lock({big})::text || pg_advisory_unlock({big})::text"
            )]
        ),
        "truetrue"
    );
    expect_code(
        Run::keyless()
            .args(["-n", "--key-id", &big.to_string()])
            .url(url_of(db))
            .child(["true"]),
        0,
    );
    // ... and a nested pglock inherits the pair, not the bigint.
    let (_, err) = expect_code(
        Run::keyless()
            .args(["-n", "--key-id", "7,8"])
            .url(url_of(db))
            .child(["true"]),
        75,
    );
    assert!(err.contains("7,8"), "{err}");
    // pglock status shows it as A,B.
    let (table, _) = expect_code(pglock_in(db, &["status"]), 0);
    assert!(
        table.lines().any(|l| l.starts_with("7,8 ")),
        "status:\n{table}"
    );
    std::fs::write(&stop, "").unwrap();
    all_succeed(vec![holder]);
}

#[test]
fn nesting_with_server_computed_and_pair_ids() {
    let db = &dbs().misc;
    for outer in [
        vec!["--lock-of", "goose"],
        vec!["--lock-of", "golang-migrate"],
        vec!["--key-hashtext", "nest"],
        vec!["--key-id", "3,4"],
    ] {
        // The inner run names the same lock with the same form, or only inherits it.
        for inner in [outer.clone(), vec![]] {
            let mut args = vec!["run"];
            args.extend(&outer);
            args.extend(["--", bin(), "run", "-n"]);
            args.extend(&inner);
            args.extend(["--", "sh", "-c", "echo \"$PGLOCK_KEY_ID\""]);
            let (out, err) = expect_code(pglock_in(db, &args), 0);
            assert!(err.contains("already held"), "{args:?}: {err}");
            assert!(!out.trim().is_empty(), "{args:?}: PGLOCK_KEY_ID is empty");
        }
    }
}

#[test]
fn status_names_the_tools_locks() {
    let db = &dbs().misc;
    let app = "status-tools";
    let stmts = [
        format!("SELECT pg_advisory_lock({})", rails(db)),
        format!(
            "SELECT pg_advisory_lock({})",
            flyway("public", "flyway_schema_history")
        ),
        "SELECT pg_advisory_lock(72707369)".into(),
        "SELECT pg_advisory_lock(-5, 6)".into(),
        "SELECT pg_sleep(60)".into(),
    ];
    let stmts: Vec<&str> = stmts.iter().map(String::as_str).collect();
    let tool = psql_cmd_in(db, app, &stmts)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || locks_of(db, app)
        .len()
        == 4));
    let (table, _) = expect_code(pglock_in(db, &["status"]), 0);
    for want in [
        "rails migrations",
        "flyway migrations",
        "prisma migrations",
        "-5,6",
    ] {
        assert!(table.contains(want), "status lacks {want}:\n{table}");
    }
    // Filters by the forms: only that lock.
    for (filter, want) in [
        (vec!["--lock-of", "rails"], "rails migrations"),
        (vec!["--key-id", "-5,6"], "-5,6"),
        (
            vec!["--lock-of", "flyway", "--lock-schema", "public"],
            "flyway migrations",
        ),
    ] {
        let mut args = vec!["status"];
        args.extend(&filter);
        let (only, _) = expect_code(pglock_in(db, &args), 0);
        assert_eq!(only.lines().count(), 2, "{filter:?}:\n{only}");
        assert!(only.contains(want), "{filter:?}:\n{only}");
    }
    let (none, _) = expect_code(pglock_in(db, &["status", "--key-hashtext", "x"]), 1);
    assert!(
        none.lines().count() == 1 && none.contains("is not held"),
        "{none}"
    );
    let (json, _) = expect_code(pglock_in(db, &["status", "--json"]), 0);
    assert!(json.contains("\"lock_of\":\"rails\""), "{json}");
    assert!(json.contains("\"key1\":-5,\"key2\":6"), "{json}");
    // Another database: the same id is not rails' lock there (status reads the database).
    let orders = &dbs().orders;
    let rails_here = rails(db);
    let other = "status-other";
    let holder = psql_cmd_in(
        orders,
        other,
        &[
            &format!("SELECT pg_advisory_lock({rails_here})"),
            "SELECT pg_sleep(60)",
        ],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    assert!(wait_until(Duration::from_secs(10), || locks_of(
        orders, other
    )
    .len()
        == 1));
    let (there, _) = expect_code(pglock_in(orders, &["status"]), 0);
    let line = there
        .lines()
        .find(|l| l.starts_with(&format!("{rails_here} ")))
        .unwrap_or_else(|| panic!("{there}"));
    assert!(!line.contains("rails"), "{line}");
    end_session(orders, other, holder);
    end_session(db, app, tool);
}

#[test]
fn forms_exclude_each_other_in_one_usage_error() {
    let usage = |args: &[&str], env: &[(&str, &str)], needle: &str| {
        let mut c = pglock(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let (_, err) = expect_code(c, 2);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?} {env:?}: want {needle:?} in {err}"
        );
    };
    usage(
        &["run", "--key", "a", "--lock-of", "rails", "--", "true"],
        &[],
        "--key and --lock-of exclude each other",
    );
    usage(
        &[
            "run",
            "--key-hashtext",
            "a",
            "--key-id",
            "1,2",
            "--",
            "true",
        ],
        &[],
        "give one lock",
    );
    usage(
        &["run", "--", "true"],
        &[("PGLOCK_LOCK_OF", "rails"), ("PGLOCK_KEY_HASHTEXT", "x")],
        "PGLOCK_KEY_HASHTEXT and PGLOCK_LOCK_OF are set in the environment",
    );
    usage(
        &["run", "--lock-of", "liquibase", "--", "true"],
        &[],
        "liquibase",
    );
    usage(
        &[
            "run",
            "--lock-of",
            "rails",
            "--lock-schema",
            "s",
            "--",
            "true",
        ],
        &[],
        "does not depend on a schema",
    );
    usage(
        &["run", "--key", "a", "--lock-table", "t", "--", "true"],
        &[],
        "--lock-table goes with --lock-of",
    );
    usage(
        &["run", "--key-id", "1,2", "--limit", "2", "--", "true"],
        &[],
        "two-int4",
    );
    usage(
        &["run", "--lock-of", "prisma", "--limit", "2", "--", "true"],
        &[],
        "--limit works with --key NAME",
    );
    usage(
        &["run", "--key-id", "1,99999999999", "--", "true"],
        &[],
        "32-bit",
    );
    usage(
        &["run", "--key-hashtext", "", "--", "true"],
        &[],
        "--key-hashtext",
    );
}

#[test]
fn lock_forms_come_from_the_environment_and_the_command_line_wins() {
    let db = &dbs().misc;
    let dir = tmpdir("envforms");
    let f = dir.join("id");
    let script = format!("echo \"$PGLOCK_LOCK_ID $PGLOCK_LOCK_OF\" > {}", f.display());
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut c = Run::keyless().args(args).url(url_of(db)).sh(&script);
        for (k, v) in env {
            c.env(k, v);
        }
        expect_code(c, 0);
        std::fs::read_to_string(&f).unwrap().trim().to_string()
    };
    assert_eq!(
        run(
            &[
                ("PGLOCK_LOCK_OF", "flyway"),
                ("PGLOCK_LOCK_SCHEMA", "ops"),
                ("PGLOCK_LOCK_TABLE", "history")
            ],
            &[]
        ),
        flyway("ops", "history").to_string()
    );
    assert_eq!(
        run(&[("PGLOCK_KEY_ID", "5,6")], &[]),
        "5,6",
        "the pair from PGLOCK_KEY_ID"
    );
    // A form on the command line wins over the environment's, whose inputs it ignores.
    assert_eq!(
        run(
            &[
                ("PGLOCK_LOCK_OF", "golang-migrate"),
                ("PGLOCK_LOCK_TABLE", "t")
            ],
            &["--lock-of", "sqlx"]
        ),
        sqlx(db).to_string()
    );
    let k = key("envhash");
    let h: i64 = psql_in(db, &[&format!("SELECT hashtext('{k}')")])
        .parse()
        .unwrap();
    assert_eq!(run(&[("PGLOCK_KEY_HASHTEXT", &k)], &[]), h.to_string());
}

#[test]
fn key_never_connects_where_no_server_is_needed() {
    // No server at all: these must still answer.
    let bare = |args: &[&str]| {
        let mut c = pglock_bare(args);
        c.env("PGLOCK_DATABASE_URL", "postgres://nobody@127.0.0.1:1/none");
        expect_code(c, 0).0.trim().to_string()
    };
    assert_eq!(bare(&["key", "--lock-of", "prisma"]), "72707369");
    assert_eq!(bare(&["key", "--key-id", "1,2"]), "1,2");
    assert_eq!(bare(&["key", "--key-id", "1,2", "--sql"]), "1, 2");
    assert_eq!(
        bare(&["key", "--key-hashtext", "x", "--sql"]),
        "hashtext('x')"
    );
    assert_eq!(
        bare(&["key", "--lock-of", "flyway", "--lock-schema", "public"]),
        flyway("public", "flyway_schema_history").to_string()
    );
    // One that needs the server fails as unavailable.
    let mut c = pglock_bare(&["key", "--lock-of", "rails"]);
    c.env("PGLOCK_DATABASE_URL", "postgres://nobody@127.0.0.1:1/none");
    expect_code(c, 69);
    // --sql of a tool's lock, evaluated by the server, is the id.
    let db = &dbs().misc;
    let (sql, _) = expect_code(pglock_in(db, &["key", "--lock-of", "rails", "--sql"]), 0);
    assert_eq!(
        psql_in(db, &[&format!("SELECT {}", sql.trim())]),
        rails(db).to_string()
    );
}

#[test]
fn json_logs_carry_the_computed_id() {
    let db = &dbs().misc;
    let (_, err) = expect_code(
        Run::keyless()
            .args([
                "--log-format",
                "json",
                "--lock-of",
                "golang-migrate-with-instance",
            ])
            .url(url_of(db))
            .child(["true"]),
        0,
    );
    let acquired = err
        .lines()
        .find(|l| l.contains("\"event\":\"acquired\""))
        .unwrap_or_else(|| panic!("{err}"));
    let want = golang_migrate(db, "public", "schema_migrations");
    assert!(
        acquired.contains(&format!("\"lock_id\":\"{want}\"")),
        "{acquired}"
    );
    assert!(
        acquired.contains("\"key\":\"golang-migrate-with-instance migrations\""),
        "{acquired}"
    );
    let (_, err) = expect_code(
        Run::keyless()
            .args(["--log-format", "json", "--key-id", "1,2"])
            .url(url_of(db))
            .child(["true"]),
        0,
    );
    assert!(err.contains("\"lock_id\":\"1,2\""), "{err}");
}

/// Advisory locks are per database: an inner run for the same constant id (prisma's) in another
/// database is not covered by its ancestor's lock, and takes its own there.
#[test]
fn a_nested_run_in_another_database_is_not_covered_and_takes_its_own_lock() {
    let d = dbs();
    let inner_url = url_of(&d.orders);
    let script = format!(
        "psql -XAtc \"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
         AND objid = 72707369 AND granted AND database = \
         (SELECT oid FROM pg_database WHERE datname = current_database())\" '{inner_url}'"
    );
    let inner = [
        "run",
        "-n",
        "--lock-of",
        "prisma",
        "--database-url",
        &inner_url,
    ];
    let mut cmd = Run::keyless()
        .args(["--lock-of", "prisma"])
        .url(url_of(&d.misc))
        .child(
            [bin()]
                .iter()
                .chain(&inner)
                .chain(&["--", "sh", "-c", &script]),
        );
    cmd.env(
        "PATH",
        format!(
            "{}:{}",
            pg().bin.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    );
    let (out, err) = expect_code(cmd, 0);
    assert!(!err.contains("already held"), "{err}");
    assert_eq!(
        out.trim(),
        "1",
        "the inner run holds prisma's lock in its own database: {err}"
    );
}

/// CRC-64 with the ECMA-182 polynomial, reflected, as Go's `hash/crc64` with `crc64.ECMA`
/// (goose 3.16-3.25's DefaultLockID is `crc64.Checksum([]byte("goose"), ECMA)`).
fn crc64_ecma(data: &[u8]) -> u64 {
    let mut crc = !0u64;
    for &b in data {
        crc ^= u64::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xC96C_5795_D787_0F42
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn the_reference_crc64_ecma_gives_gos_check_value_and_gooses_lock_id() {
    // Go: crc64.Checksum([]byte("123456789"), crc64.MakeTable(crc64.ECMA)) = 0x995dc9bbdf1939fa.
    assert_eq!(crc64_ecma(b"123456789"), 0x995d_c9bb_df19_39fa);
    // The value goose 3.16-3.25 wrote in lock/session_locker_options.go.
    assert_eq!(crc64_ecma(b"goose"), 5_887_940_537_704_921_958);
}

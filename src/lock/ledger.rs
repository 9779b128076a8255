//! The run ledger (contract §12): `--once TOKEN` makes a run happen at most once per lock and
//! token, and `--ledger TABLE` records every run, in a table of the lock's database.
//!
//! The cost is one round trip before the child (the look-up, only with `--once` or `--ledger`) and
//! none of its own after: the record rides in the release's round trip (see `lock::release`),
//! committed *before* the session lock is let go, so the next holder's look-up sees it.
//!
//! Everything built into SQL here from user input is quoted: the table's name as identifiers
//! (double quotes doubled), the token and the host as literals (`key::sql_literal`), and inside
//! the `DO` block of `PGLOCK_ONCE_SQL` under a dollar-quote tag that the body does not contain.

use crate::error::{Error, Kind, Result};
use crate::lock;
use crate::lock::fence;
use crate::lock::key::{self, sql_literal, LockId};
use crate::lock::{Mode, Scope};
use crate::log;
use crate::pg::{Conn, TxStatus};
use crate::signals::Signals;
use std::time::{SystemTime, UNIX_EPOCH};

/// The ledger's table when `--ledger` is not given: unqualified, so in `current_schema()`.
pub const DEFAULT_TABLE: &str = "pglock_runs";

/// Rows of a lock older than this are deleted as that lock's rows are added.
pub const RETENTION_DAYS: u32 = 180;

/// The longest `--once` token, in bytes.
pub const MAX_TOKEN: usize = 1024;

/// PostgreSQL's identifier limit (NAMEDATALEN - 1): a longer name would be cut silently.
const MAX_IDENT: usize = 63;

/// The ledger table, as given: `TABLE` or `SCHEMA.TABLE` (split at the first dot), each part
/// taken literally (case and characters kept) and quoted as an identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    pub schema: Option<String>,
    pub table: String,
}

/// `name` as an SQL identifier: in double quotes, a double quote doubled.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Ledger {
    pub fn parse(text: &str) -> Result<Ledger> {
        let (schema, table) = match text.split_once('.') {
            Some((s, t)) => (Some(s), t),
            None => (None, text),
        };
        for part in schema.iter().chain([&table]) {
            if part.is_empty() || part.len() > MAX_IDENT || part.contains('\0') {
                return Err(Error::usage(format!(
                    "--ledger '{text}': give TABLE or SCHEMA.TABLE, each a name of 1 to {MAX_IDENT} bytes"
                )));
            }
        }
        Ok(Ledger {
            schema: schema.map(str::to_string),
            table: table.to_string(),
        })
    }

    /// The table in SQL: `"schema"."table"`, or `"table"` (found through `search_path`).
    pub fn sql(&self) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", ident(s), ident(&self.table)),
            None => ident(&self.table),
        }
    }

    /// As the user wrote it, for messages.
    pub fn label(&self) -> String {
        match &self.schema {
            Some(s) => format!("{s}.{}", self.table),
            None => self.table.clone(),
        }
    }

    /// An index's name, `<table>_<suffix>`, within PostgreSQL's 63 bytes: a table name too long
    /// for it is cut (at a character boundary) and followed by a hash of the whole name, so
    /// that two long names that share their start still get two names.
    pub fn index_name(&self, suffix: &str) -> String {
        let whole = format!("{}_{suffix}", self.table);
        if whole.len() <= MAX_IDENT {
            return whole;
        }
        let hash = format!("{:08x}", key::id_of(&self.table) as u64 >> 32);
        let mut end = MAX_IDENT - suffix.len() - hash.len() - 2;
        while !self.table.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}_{hash}_{suffix}", &self.table[..end])
    }

    /// The statements that create the ledger (`pglock key --ledger-sql`, and a run's first use).
    /// The partial unique index makes a token's success unique and its look-up one probe; the
    /// other serves `pglock history` and the pruning.
    pub fn create_sql(&self) -> String {
        let t = self.sql();
        format!(
            "CREATE TABLE IF NOT EXISTS {t} (\n  \
               run_id text PRIMARY KEY,\n  \
               lock_id text NOT NULL,\n  \
               token text,\n  \
               host text,\n  \
               pid integer,\n  \
               started_at timestamptz NOT NULL,\n  \
               ended_at timestamptz,\n  \
               exit_code integer,\n  \
               done boolean NOT NULL DEFAULT false,\n  \
               pglock_version text\n);\n\
             CREATE UNIQUE INDEX IF NOT EXISTS {} ON {t} (lock_id, token) WHERE done;\n\
             CREATE INDEX IF NOT EXISTS {} ON {t} (lock_id, started_at DESC);",
            ident(&self.index_name("done")),
            ident(&self.index_name("history")),
        )
    }

    /// The advisory lock that serialises the creation of this table by concurrent runs (of
    /// different locks: runs of one lock are serialised by the lock itself), so that two
    /// `CREATE TABLE IF NOT EXISTS` never race into a duplicate-key error.
    fn create_lock(&self) -> i64 {
        key::id_of(&format!("pglock ledger {}", self.sql()))
    }

    /// The hint of every ledger error: what a DBA runs.
    fn hint(&self) -> String {
        let opt = if self.table == DEFAULT_TABLE && self.schema.is_none() {
            String::new()
        } else {
            format!(" --ledger {}", shell_word(&self.label()))
        };
        format!("a DBA can create it with the SQL of `pglock key --ledger-sql{opt}` and GRANT SELECT, INSERT, UPDATE, DELETE on it")
    }
}

/// `s` for a shell command line in a message: as it is when it needs no quoting.
fn shell_word(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "_.-/".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Validates a `--once` token: non-empty UTF-8 without NUL (which `text` cannot hold).
pub fn validate_token(t: &str) -> Result<()> {
    if t.is_empty() || t.len() > MAX_TOKEN || t.contains('\0') {
        return Err(Error::usage(format!(
            "--once: give a TOKEN of 1 to {MAX_TOKEN} bytes without NUL (for example \"$(date -u +%F)\" or \"$GIT_SHA\")"
        )));
    }
    Ok(())
}

/// Seconds since the epoch, for `to_timestamp()`.
fn epoch_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// This machine's name (the pod's, in Kubernetes), or "" when it cannot be read.
fn host_name() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A run's entry in the ledger: what it looks up before the child and records after it.
#[derive(Debug)]
pub struct Book {
    pub ledger: Ledger,
    /// `--once TOKEN`; `None` for a `--ledger` run that only records.
    pub token: Option<String>,
    /// The lock's id as pglock prints it (the key's, also with `--limit`).
    lock_id: String,
    run_id: String,
    host: String,
    /// When the child started (epoch seconds), set by `child_vars`.
    started: f64,
    /// Whether the role may delete old rows (the look-up asks): pruning is skipped without.
    may_delete: bool,
    /// The table's schema, as the look-up found it: `PGLOCK_ONCE_SQL` names it, so that the
    /// child's own `search_path` does not matter.
    schema: Option<String>,
}

/// What the look-up found.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// The ledger is there and writable, the token not done: run the child.
    Ready,
    /// The table does not exist (yet): create it, then look again.
    Missing,
}

impl Book {
    pub fn new(ledger: Ledger, token: Option<String>, lock: LockId, run_id: &str) -> Book {
        Book {
            ledger,
            token,
            lock_id: lock.to_string(),
            run_id: run_id.to_string(),
            host: host_name(),
            started: epoch_now(),
            may_delete: false,
            schema: None,
        }
    }

    /// The look-up: one statement that checks the role's rights on the table, finds its schema
    /// and probes the unique index for the token's success.
    fn look_up_sql(&self) -> String {
        let name = sql_literal(&self.ledger.sql());
        let token = match &self.token {
            Some(t) => format!("token = {}", sql_literal(t)),
            None => "false".into(),
        };
        format!(
            "SELECT has_table_privilege({name}, 'INSERT'), has_table_privilege({name}, 'UPDATE'), \
             has_table_privilege({name}, 'DELETE'), \
             (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = {name}::regclass), \
             r.run_id, r.host, r.pid, to_char(r.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
             round(extract(epoch FROM r.ended_at - r.started_at))::bigint \
             FROM (SELECT) AS one LEFT JOIN LATERAL (SELECT run_id, host, pid, started_at, ended_at FROM {t} \
             WHERE lock_id = {id} AND {token} AND done LIMIT 1) AS r ON true",
            t = self.ledger.sql(),
            id = sql_literal(&self.lock_id),
        )
    }

    /// Looks the token up under the lock (contract §12), on the lock's connection. In
    /// transaction scope the look-up runs in a savepoint of the lock's transaction, so that a
    /// missing table does not end the transaction (and the lock with it).
    pub fn look_up(
        &mut self,
        conn: &mut Conn,
        scope: Scope,
        label: &str,
        conflict_exit_code: i32,
        signals: &Signals,
    ) -> Result<Found> {
        let sql = match scope {
            Scope::Session => self.look_up_sql(),
            Scope::Transaction => format!(
                "SAVEPOINT pglock_ledger; {}; RELEASE SAVEPOINT pglock_ledger",
                self.look_up_sql()
            ),
        };
        let rows = match lock::query(conn, &sql, signals) {
            Ok(rows) => rows,
            Err(e) => {
                if scope == Scope::Transaction && conn.tx_status() == TxStatus::Failed {
                    lock::query(
                        conn,
                        "ROLLBACK TO SAVEPOINT pglock_ledger; RELEASE SAVEPOINT pglock_ledger",
                        signals,
                    )?;
                }
                return match e.sqlstate.as_deref() {
                    Some("42P01") => Ok(Found::Missing),
                    _ => Err(self.unusable(conn, "cannot be read", &e)),
                };
            }
        };
        let row = rows.first().map(Vec::as_slice).unwrap_or_default();
        let get = |i: usize| row.get(i).cloned().flatten();
        let yes = |i: usize| get(i).as_deref() == Some("t");
        if !(yes(0) && yes(1)) {
            let missing = if yes(0) { "UPDATE" } else { "INSERT" };
            return Err(Error::unavailable(format!(
                "the run ledger {} cannot be written: role {} lacks {missing} on it; the command was not run ({})",
                self.ledger.label(),
                conn.user(),
                self.ledger.hint()
            )));
        }
        self.may_delete = yes(2);
        self.schema = get(3);
        match get(4) {
            None => Ok(Found::Ready),
            Some(run) => Err(Error::new(
                Kind::NotAcquired(conflict_exit_code),
                format!(
                    "lock \"{label}\" --once {}: already done by run {run} on host {} (pid {}) at {}, {}; the command was not run",
                    sql_literal(self.token.as_deref().unwrap_or_default()),
                    get(5).unwrap_or_else(|| "?".into()),
                    get(6).unwrap_or_else(|| "?".into()),
                    get(7).unwrap_or_else(|| "?".into()),
                    match get(8) {
                        Some(s) => format!("ran {s}s"),
                        None => "its end not recorded (killed after its PGLOCK_ONCE_SQL committed, or still running)".into(),
                    }
                ),
            )),
        }
    }

    /// Creates the ledger, in a transaction of its own (the connection must be idle: in
    /// transaction scope the caller lets the lock's transaction go first, so that the table is
    /// committed, and visible to the child's `PGLOCK_ONCE_SQL`, before the child starts).
    pub fn create(&self, conn: &mut Conn, signals: &Signals) -> Result<()> {
        let sql = format!(
            "BEGIN; SELECT pg_advisory_xact_lock({}); {}; COMMIT",
            self.ledger.create_lock(),
            self.ledger.create_sql()
        );
        let r = lock::query(conn, &sql, signals);
        if conn.tx_status() != TxStatus::Idle {
            let _ = lock::query(conn, "ROLLBACK", signals);
        }
        match r {
            Ok(_) => {
                log::info(
                    "ledger",
                    &format!("created the run ledger {}", self.ledger.label()),
                    &[],
                );
                Ok(())
            }
            Err(e) if e.sqlstate.as_deref() == Some("42501") => Err(Error::unavailable(format!(
                "the run ledger {} does not exist and role {} may not create it (it lacks CREATE on the schema); the command was not run ({})",
                self.ledger.label(),
                conn.user(),
                self.ledger.hint()
            ))),
            Err(e) => Err(self.unusable(conn, "cannot be created", &e)),
        }
    }

    fn unusable(&self, conn: &Conn, what: &str, e: &Error) -> Error {
        let why = e.msg.trim_start_matches("the server refused a query: ");
        Error::unavailable(format!(
            "the run ledger {} {what} by role {} ({why}); the command was not run ({})",
            self.ledger.label(),
            conn.user(),
            self.ledger.hint()
        ))
    }

    /// The table in SQL, in the schema the look-up found it in.
    fn table_sql(&self) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", ident(s), ident(&self.ledger.table)),
            None => self.ledger.sql(),
        }
    }

    /// The child's variables, set as it starts (which is this run's `started_at`):
    /// `PGLOCK_ONCE_TOKEN` and `PGLOCK_ONCE_SQL`, with `--once`. `fence_lock`, `mode` and
    /// `holder` are those of the fence statement (with `--limit`, the slot's lock).
    pub fn child_vars(
        &mut self,
        fence_lock: LockId,
        mode: Mode,
        holder: &fence::Holder,
    ) -> Vec<(&'static str, String)> {
        self.started = epoch_now();
        let Some(token) = &self.token else {
            return Vec::new();
        };
        vec![
            ("PGLOCK_ONCE_TOKEN", token.clone()),
            ("PGLOCK_ONCE_SQL", self.once_sql(fence_lock, mode, holder)),
        ]
    }

    /// `PGLOCK_ONCE_SQL`: one statement (a `DO` block, for drivers that refuse several) that
    /// runs the fence check of contract §11 and then records this run's success, in the child's
    /// transaction: the token is done if and only if that transaction commits.
    pub fn once_sql(&self, fence_lock: LockId, mode: Mode, holder: &fence::Holder) -> String {
        let check = fence::check_body(
            fence_lock,
            mode,
            &holder.pid.to_string(),
            &format!("'{}'", holder.start),
            &self.run_id,
        );
        let body = format!(
            "BEGIN {check} {} ON CONFLICT (run_id) DO UPDATE SET done = true; END",
            self.insert_sql(None, "true")
        );
        dollar_quoted("DO ", &body)
    }

    /// The INSERT of this run's row: `exit_code` and the end given once the child has ended.
    fn insert_sql(&self, exit_code: Option<i32>, done: &str) -> String {
        let (ended, code) = match exit_code {
            Some(c) => (format!("to_timestamp({:.6})", epoch_now()), c.to_string()),
            None => ("NULL".into(), "NULL".into()),
        };
        format!(
            "INSERT INTO {} AS r (run_id, lock_id, token, host, pid, started_at, ended_at, exit_code, done, pglock_version) \
             VALUES ({}, {}, {}, {}, {}, to_timestamp({:.6}), {ended}, {code}, {done}, {})",
            self.table_sql(),
            sql_literal(&self.run_id),
            sql_literal(&self.lock_id),
            self.token.as_deref().map_or("NULL".into(), sql_literal),
            sql_literal(&self.host),
            std::process::id(),
            self.started,
            sql_literal(env!("CARGO_PKG_VERSION")),
        )
    }

    /// The record after the child (contract §12), for the release's round trip: the row
    /// completed with the end and the exit code, the token done only by exit 0 (or already by
    /// the child's `PGLOCK_ONCE_SQL`), and this lock's rows past the retention pruned. At session
    /// scope it is its own transaction, committed before the unlock that follows it; at
    /// transaction scope it goes in the lock's transaction, which the release commits.
    ///
    /// A `--shared` run that ends 0 after another shared holder marked the token done is
    /// recorded as not done (the unique index admits one success).
    pub fn record_sql(&self, scope: Scope, exit_code: i32) -> String {
        let done = match &self.token {
            Some(t) if exit_code == 0 => format!(
                "NOT EXISTS (SELECT FROM {} WHERE lock_id = {} AND token = {} AND done AND run_id <> {})",
                self.table_sql(),
                sql_literal(&self.lock_id),
                sql_literal(t),
                sql_literal(&self.run_id)
            ),
            _ => "false".into(),
        };
        let mut sql = format!(
            "{} ON CONFLICT (run_id) DO UPDATE SET ended_at = EXCLUDED.ended_at, \
             exit_code = EXCLUDED.exit_code, done = r.done OR EXCLUDED.done; ",
            self.insert_sql(Some(exit_code), &done)
        );
        if self.may_delete {
            sql.push_str(&format!(
                "DELETE FROM {} WHERE lock_id = {} AND started_at < now() - interval '{RETENTION_DAYS} days'; ",
                self.table_sql(),
                sql_literal(&self.lock_id)
            ));
        }
        match scope {
            Scope::Session => format!("BEGIN; {sql}COMMIT; "),
            Scope::Transaction => sql,
        }
    }
}

/// `prefix` and `body` in dollar quotes whose tag the body does not contain (the body holds a
/// user's token, host and table names: a fixed tag in them would end the quote early).
fn dollar_quoted(prefix: &str, body: &str) -> String {
    let mut tag = "$pglock$".to_string();
    let mut n = 0;
    while body.contains(&tag) {
        n += 1;
        tag = format!("$pglock{n}$");
    }
    format!("{prefix}{tag}{body}{tag}")
}

/// Logs a record that failed after the child ran: the run's outcome stands (the child's status
/// is passed through), but the ledger does not show it, and a `--once` token is not done.
pub fn not_recorded(ledger: &Ledger, e: &Error) {
    log::event(
        log::Level::Error,
        "not_recorded",
        &format!(
            "the run was not recorded in the run ledger {}: {}; with --once, its token is not done",
            ledger.label(),
            e.msg
        ),
        &[],
    );
}

/// The variables of a nested run (contract §12): the same lock and token is the same run, and
/// keeps the inherited `PGLOCK_ONCE_TOKEN` and `PGLOCK_ONCE_SQL` when `innermost` (the pglock
/// directly above holds this lock: the variables are its own). Another token is a usage error.
pub fn nested_vars(
    once: Option<&str>,
    innermost: bool,
    label: &str,
    ancestor_pid: i32,
) -> Result<Vec<(&'static str, String)>> {
    let inherited = |k: &str| std::env::var(k).ok().filter(|_| innermost);
    let token = inherited("PGLOCK_ONCE_TOKEN");
    if let Some(want) = once {
        if token.as_deref() != Some(want) {
            return Err(Error::usage(format!(
                "lock \"{label}\" is held by the ancestor pglock (pid {ancestor_pid}) for {}, not for --once {}: a nested run of the same lock is the same run; give --once to the outer run only",
                match &token {
                    Some(t) => format!("--once {}", sql_literal(t)),
                    None => "a run without --once (or with a pglock in between)".into(),
                },
                sql_literal(want)
            )));
        }
    }
    let mut vars = Vec::new();
    if let (Some(t), Some(sql)) = (token, inherited("PGLOCK_ONCE_SQL")) {
        vars.push(("PGLOCK_ONCE_TOKEN", t));
        vars.push(("PGLOCK_ONCE_SQL", sql));
    }
    Ok(vars)
}

/// The child's variables of this module, which an inherited value must not fill: a token is
/// per run (`PGLOCK_ONCE` is also `--once`'s variable, which a nested pglock would read).
pub const CHILD_VARS: [&str; 3] = ["PGLOCK_ONCE", "PGLOCK_ONCE_TOKEN", "PGLOCK_ONCE_SQL"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_quoted_and_split_at_the_first_dot() {
        let l = Ledger::parse("ops.Run \"Log\"").unwrap();
        assert_eq!(l.sql(), "\"ops\".\"Run \"\"Log\"\"\"");
        assert_eq!(
            Ledger::parse("pglock_runs").unwrap().sql(),
            "\"pglock_runs\""
        );
        for bad in ["", ".t", "s.", &"x".repeat(64)] {
            assert!(Ledger::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn index_names_fit_in_63_bytes_and_differ() {
        let a = Ledger::parse(&format!("{}a", "é".repeat(31))).unwrap();
        let b = Ledger::parse(&format!("{}b", "é".repeat(31))).unwrap();
        for l in [&a, &b] {
            assert!(l.index_name("history").len() <= 63);
        }
        assert_ne!(a.index_name("done"), b.index_name("done"));
        assert_eq!(
            Ledger::parse("runs").unwrap().index_name("done"),
            "runs_done"
        );
    }

    #[test]
    fn the_once_statement_cannot_be_ended_early_by_a_token() {
        let l = Ledger::parse("t").unwrap();
        let b = Book::new(
            l,
            Some("x$pglock$; DROP TABLE t; --'".into()),
            LockId::Big(7),
            "ab",
        );
        let h = fence::Holder {
            pid: 5,
            start: "2026-01-01 00:00:00.000001".into(),
        };
        let s = b.once_sql(LockId::Big(7), Mode::Exclusive, &h);
        assert!(s.starts_with("DO $pglock1$"), "{s}");
        assert!(s.ends_with("$pglock1$"));
        assert!(s.contains("'x$pglock$; DROP TABLE t; --'''"));
    }

    #[test]
    fn tokens() {
        assert!(validate_token("2026-12-07").is_ok());
        assert!(validate_token("").is_err());
        assert!(validate_token("a\0b").is_err());
        assert!(validate_token(&"x".repeat(MAX_TOKEN + 1)).is_err());
    }
}

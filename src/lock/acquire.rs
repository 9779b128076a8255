//! Taking and releasing the advisory lock (contract §4) on the dedicated connection.
//!
//! Uncontended, taking the lock is one round trip (`pg_try_advisory_lock`). Contended, pglock
//! names the holder, then waits with the server's own blocking `pg_advisory_lock`, so a waiter
//! wakes the moment the holder releases; `--timeout` is the server's `lock_timeout` for that one
//! statement, so the server-side wait ends with it. A cancelling signal sends a CancelRequest and
//! waits for the server to confirm, so no backend of pglock's is left waiting in `pg_locks`.

use crate::error::{Error, Kind, Result};
use crate::lock::fence;
use crate::lock::key::{lock_match, locks_filter, LockKey};
use crate::lock::{Mode, Scope, Wait};
use crate::log::{self, V};
use crate::pg::conninfo::ConnParams;
use crate::pg::{self, Conn, QueryResult, ReadErr, Rows, Startup, TxStatus};
use crate::signals::Signals;
use std::time::{Duration, Instant};

/// Who holds a lock, as `pg_locks` and `pg_stat_activity` show it to this role.
#[derive(Debug, Clone)]
pub struct Holder {
    pub pid: String,
    pub mode: String,
    pub application: Option<String>,
    pub user: Option<String>,
    pub client: String,
    pub since: Option<String>,
    pub age_s: Option<i64>,
}

/// A session's client as `pg_stat_activity` shows it (`client_addr`, `client_port`):
/// `10.0.3.7:52814`, `[::1]:52814`, or `local socket`; `None` when hidden from this role.
/// The port tells apart several sessions from one host (a pooler, a node's pods).
pub fn client_label(addr: Option<String>, port: Option<String>) -> Option<String> {
    match (addr, port) {
        (Some(addr), Some(port)) if port != "-1" && addr.contains(':') => {
            Some(format!("[{addr}]:{port}"))
        }
        (Some(addr), Some(port)) if port != "-1" => Some(format!("{addr}:{port}")),
        (Some(addr), _) => Some(addr),
        (None, Some(port)) if port == "-1" => Some("local socket".into()),
        _ => None,
    }
}

impl Holder {
    fn from_row(r: &[Option<String>]) -> Holder {
        let get = |i: usize| r.get(i).cloned().flatten();
        let client =
            client_label(get(3), get(7)).unwrap_or_else(|| "not visible to this role".into());
        Holder {
            pid: get(0).unwrap_or_default(),
            mode: get(1).unwrap_or_default(),
            application: get(2).filter(|s| !s.is_empty()),
            user: get(4),
            client,
            since: get(5),
            age_s: get(6).and_then(|s| s.parse().ok()),
        }
    }

    /// The holder for a log line. Its fields are the server's text, so the line is made
    /// printable as a whole (a role name can hold ESC, BEL or a line feed).
    pub fn describe(&self) -> String {
        let mut s = format!("pid {}", self.pid);
        let mut parts = Vec::new();
        if let Some(a) = &self.application {
            parts.push(format!("application \"{a}\""));
        }
        if let Some(u) = &self.user {
            parts.push(format!("user {u}"));
        }
        parts.push(format!("client {}", self.client));
        if let Some(since) = &self.since {
            let age = self
                .age_s
                .map(|a| format!(", {}", human_secs(a)))
                .unwrap_or_default();
            parts.push(format!("connected since {since}{age}"));
        }
        if self.mode == "ShareLock" {
            parts.push("shared".into());
        }
        s.push_str(&format!(" ({})", parts.join(", ")));
        crate::log::printable(&s)
    }
}

fn human_secs(s: i64) -> String {
    match s {
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s => format!("{}h{:02}m ago", s / 3600, s % 3600 / 60),
    }
}

pub fn describe_holders(h: &[Holder]) -> String {
    match h.len() {
        0 => "held by a session this role cannot see (or just released)".into(),
        1..=3 => format!(
            "held by {}",
            h.iter()
                .map(Holder::describe)
                .collect::<Vec<_>>()
                .join("; ")
        ),
        n => format!(
            "held by {} and {} more",
            h[..3]
                .iter()
                .map(Holder::describe)
                .collect::<Vec<_>>()
                .join("; "),
            n - 3
        ),
    }
}

fn holders_sql(key: &LockKey) -> String {
    format!(
        "SELECT l.pid, l.mode, a.application_name, host(a.client_addr), a.usename, \
         to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
         floor(extract(epoch FROM now() - a.backend_start))::bigint, a.client_port \
         FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.granted AND {} ORDER BY a.backend_start NULLS LAST",
        locks_filter(key)
    )
}

/// The heartbeat's statement (contract §4, ownership): `t` while the backend that took the lock
/// (pid *and* `backend_start`, so a reused pid never passes) still serves this connection, and the
/// lock's transaction is the one still open (transaction scope) or no transaction is (session
/// scope). Nothing but pglock sends statements on its connection, and an advisory lock leaves its
/// session only by an unlock, the end of its transaction or the end of the session: so the same
/// session, alive and in the same transaction state, still holds the lock. It reads one entry of
/// the backend status array, not `pg_locks`, whose cost grows with every lock on the server.
///
/// Behind a declared session pooler (`owned`: the lock's `pg_locks` match) that reasoning rests
/// on the user's word: misdeclared on a transaction pooler, another client of the server
/// connection can free the lock (`DISCARD ALL`), so the heartbeat also confirms in `pg_locks`,
/// filtered on this backend, that the lock is still held.
pub fn heartbeat_sql(holder: &fence::Holder, scope: Scope, owned: Option<&str>) -> String {
    // Inside the open transaction, a statement starts after its transaction; alone, with it.
    let tx = match scope {
        Scope::Transaction => ">",
        Scope::Session => "=",
    };
    let held = owned.map_or_else(String::new, |m| {
        format!(
            " AND EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = pg_backend_pid() \
             AND l.locktype = 'advisory' AND l.granted AND {m})"
        )
    });
    // Two statements: a load balancer that sends single read-only SELECTs to a standby
    // (pgpool-II) sends a multi-statement query to the primary, where the lock is.
    format!(
        "SELECT WHERE false; SELECT {} AND statement_timestamp() {tx} transaction_timestamp(){held}",
        holder.serving_sql()
    )
}

/// The settings whose names make the guard's refusals: `current_setting` of a parameter that no
/// server knows fails naming it, and the failure ends the round trip before the lock statement.
/// (A session lock's try, alone in its round trip, names it in its row: `session_try_sql`.)
const REFUSED_POOLER: &str = "pglock.refused_statement_ran_on_another_backend";
const REFUSED_HELD: &str = "pglock.refused_lock_already_held_by_the_serving_session";
const REFUSED_STANDBY: &str = "pglock.refused_statement_ran_on_a_hot_standby";

/// Each refusal's name, as the guard writes it.
const REFUSALS: [(&str, Refusal); 3] = [
    (REFUSED_POOLER, Refusal::Pooler),
    (REFUSED_HELD, Refusal::Held),
    (REFUSED_STANDBY, Refusal::Standby),
];

/// Why the guard refused the lock (see `guard_sql`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The statement ran on a backend other than the one the connection's cancel key names.
    Pooler,
    /// The session that serves the statement holds the lock already.
    Held,
    /// The statement ran on a hot standby (a load balancer sent it there).
    Standby,
}

/// The guard (contract §4, poolers) and the round trip's settings, as a one-row subquery `g`
/// whose column `r` names the refusal, or is NULL when the lock statement may go on. Refused when:
/// - `expect_pid` is given and the statement runs on another backend: something between pglock
///   and the server (a pooler or proxy) hands its statements to backends of its choosing, so a
///   session lock could not be proven to be pglock's own;
/// - it runs on a hot standby, where an advisory lock excludes nobody on the primary: a load
///   balancer in front of a primary and standbys (pgpool-II) sent it there;
/// - the serving session already holds the lock, in any mode and scope: a pooled server
///   connection that another client locked (checked where the pid is not: see below). Advisory
///   locks are re-entrant within a session (and a session lock and a transaction lock of one
///   session never conflict), so the lock call alone would grant it a second time.
///
/// The settings are `LOCAL_SETTINGS`, 0 each, local to the round trip's transaction, and
/// `lock_timeout` set to `lock_timeout_ms` when given. They take effect
/// for the statements after this one: `statement_timeout` is armed as a statement starts.
///
/// `mine` is the condition on `pg_locks l` that selects the locks to refuse (`lock_match`).
fn guard_from(expect_pid: Option<i32>, mine: &str, lock_timeout_ms: Option<u128>) -> String {
    let settings: String = LOCAL_SETTINGS
        .iter()
        .map(|k| {
            let v = match (*k, lock_timeout_ms) {
                ("lock_timeout", Some(ms)) => ms.to_string(),
                _ => "0".into(),
            };
            format!("set_config('{k}', '{v}', true), ")
        })
        .collect();
    // OFFSET 0 keeps the subquery whole: evaluated once, before the statement that reads `g`,
    // and never merged into it or given its conditions.
    format!(
        "(SELECT {settings}CASE {}END AS r OFFSET 0) AS g",
        refusal_branches(expect_pid, mine)
    )
}

/// The guard's conditions (see `guard_from`), as the `WHEN` branches of a CASE that names the
/// refusal of the first that holds.
fn refusal_branches(expect_pid: Option<i32>, mine: &str) -> String {
    let pooler = match expect_pid {
        // `int4eq`, the function behind `=` on two int4: a new backend looks up a function by
        // name for less than an operator (about 25 us less, docs/performance.md), and the
        // unlock's pin (`unlock_pin`) then finds it looked up already.
        Some(pid) => format!("WHEN NOT int4eq(pg_backend_pid(), {pid}) THEN '{REFUSED_POOLER}' "),
        None => String::new(),
    };
    // The held check reads pg_locks, whose cost grows with the server's lock table: it is left
    // out where the pid check proves the statement runs on the backend of this connection's own
    // new session (direct, or a session pooler that passes its backend's key on), which holds
    // nothing it did not take.
    let held = match expect_pid {
        Some(_) => String::new(),
        None => format!(
            "WHEN EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = pg_backend_pid() AND l.locktype = 'advisory' \
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND {mine}) \
             THEN '{REFUSED_HELD}' "
        ),
    };
    format!("{pooler}WHEN pg_is_in_recovery() THEN '{REFUSED_STANDBY}' {held}")
}

/// The condition on `g` (see `guard_from`) of a statement behind the guard: true, or a failure
/// that names the refusal (`current_setting` of a parameter that no server knows), which ends
/// the round trip before the statement's own calls run (a scan's condition is evaluated before
/// its output, and CASE evaluates its branches in order).
const GUARD_PASSES: &str = "CASE WHEN g.r IS NULL THEN true ELSE current_setting(g.r) IS NULL END";

/// The guard as a statement of its own, the first of a round trip: no row, or the failure that
/// names the refusal; the settings then hold for the statements after it.
pub fn guard_sql(expect_pid: Option<i32>, mine: &str, lock_timeout_ms: Option<u128>) -> String {
    format!(
        "SELECT FROM {} WHERE NOT {GUARD_PASSES}",
        guard_from(expect_pid, mine, lock_timeout_ms)
    )
}

/// The guard's refusal that an error (SQLSTATE `code`, text `msg`) reports, if it is one.
pub fn refusal(code: Option<&str>, msg: &str) -> Option<Refusal> {
    if code != Some("42704") {
        return None;
    }
    REFUSALS
        .into_iter()
        .find_map(|(name, r)| msg.contains(name).then_some(r))
}

/// The error of a refused lock: a pooler in front of a session lock is exit 69 (nothing could be
/// proven), a lock the serving session already holds is "not acquired".
pub fn refused(conn: &Conn, r: Refusal, label: &str, exit_code: i32) -> Error {
    match r {
        Refusal::Pooler => Error::unavailable(format!(
            "{} is a pooler or proxy (its statements run on a backend other than the one the connection names): a session lock through it could be shared with its other clients, so lock \"{label}\" was not taken; use --scope transaction, or --pooler session if it pools in session mode",
            conn.target().describe()
        )),
        Refusal::Standby => Error::unavailable(format!(
            "the lock statement for \"{label}\" ran on a hot standby behind {} (a load balancer?), where an advisory lock excludes nobody on the primary: it was not taken; connect to the primary",
            conn.target().describe()
        )),
        Refusal::Held => Error::new(
            Kind::NotAcquired(exit_code),
            format!("lock \"{label}\" not acquired: the server session that serves this connection already holds it (a pooler shares one server connection among clients); the command was not run"),
        ),
    }
}

/// The backend the guard expects: for a session lock the one the connection's cancel key names,
/// unless the user declared a session pooler (whose keys are its own); a transaction lock lives
/// in a transaction that keeps its backend through any pooler.
pub fn expected_backend(conn: &Conn, a: &Acquire) -> Option<i32> {
    (a.scope == Scope::Session && !a.session_pooler).then_some(conn.backend_pid())
}

fn fn_suffix(mode: Mode) -> &'static str {
    match mode {
        Mode::Exclusive => "",
        Mode::Shared => "_shared",
    }
}

/// One round trip before the child starts (`pg::query`), its errors worded for the run.
pub fn query(conn: &mut Conn, sql: &str, signals: &Signals) -> Result<Rows> {
    pg::query(conn, sql, signals, "while taking the lock").map_err(nothing_was_run)
}

/// A signal before the child started: the run ends, and says that it ran nothing.
fn nothing_was_run(mut e: Error) -> Error {
    if matches!(e.kind, Kind::Signal(_)) {
        e.msg.push_str("; nothing was run");
    }
    e
}

fn first_bool(rows: &Rows) -> bool {
    matches!(
        rows.first()
            .and_then(|r| r.first())
            .cloned()
            .flatten()
            .as_deref(),
        Some("t")
    )
}

pub fn holders(conn: &mut Conn, key: &LockKey, signals: &Signals) -> Result<Vec<Holder>> {
    Ok(query(conn, &holders_sql(key), signals)?
        .iter()
        .map(|r| Holder::from_row(r))
        .collect())
}

/// What acquisition needs besides the connection.
#[derive(Clone, Copy)]
pub struct Acquire<'a> {
    pub key: &'a LockKey,
    pub mode: Mode,
    pub scope: Scope,
    pub wait: Wait,
    pub conflict_exit_code: i32,
    pub params: &'a ConnParams,
    pub startup: &'a Startup<'a>,
    /// Whether to wait out the fenced transactions of earlier holders once granted (§11).
    pub fence: bool,
    /// `--pooler session`: statements may run on a backend other than the cancel key's.
    pub session_pooler: bool,
}

/// The session settings that a transaction may carry, set to 0 and local (`set_config(k, v, true)`,
/// as `SET LOCAL`) in the guard of every lock statement that waits or opens the lock's
/// transaction (`guard_from`). The startup packet sets
/// them for the session, but a pooler may refuse them there (then pglock connects without) or
/// drop them silently (PgBouncer's `ignore_startup_parameters = options`): made local to each
/// of pglock's own transactions, a role's defaults cannot end a wait or the lock's transaction
/// either way, and nothing stays with a pooled server connection.
const LOCAL_SETTINGS: [&str; 3] = [
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
];

/// The statements that take the lock, in one round trip: trying once or waiting (with the
/// server's lock_timeout when `timeout_ms` is given), as a session lock or a transaction lock,
/// behind the guard (see `guard_from`). A transaction lock first opens the transaction that
/// holds it. Settings are only ever local: to the implicit transaction of the round trip at
/// session scope, to the lock's transaction at transaction scope, so that nothing stays with a
/// pooled server connection. `known`: the session as an earlier statement on this connection
/// named it.
fn lock_sql(
    conn: &Conn,
    a: &Acquire,
    try_once: bool,
    timeout_ms: Option<u128>,
    known: Option<&fence::Holder>,
) -> String {
    let (key, mode, scope) = (a.key, a.mode, a.scope);
    let expect_pid = expected_backend(conn, a);
    if try_once && scope == Scope::Session {
        return session_try_sql(a, expect_pid);
    }
    let func = format!(
        "pg_{}advisory{}_lock{}",
        if try_once { "try_" } else { "" },
        if scope == Scope::Transaction {
            "_xact"
        } else {
            ""
        },
        fn_suffix(mode)
    );
    let mut sql = String::new();
    let opens = scope == Scope::Transaction && conn.tx_status() == TxStatus::Idle;
    if opens {
        // Read committed whatever the role's default: each later statement of the lock's
        // transaction (the run ledger's look-up, contract §12) then sees what earlier holders
        // committed before they let the lock go, not a snapshot from before the grant.
        sql.push_str("BEGIN ISOLATION LEVEL READ COMMITTED; ");
    }
    let guard = guard_from(expect_pid, &lock_match(key.id), timeout_ms);
    let start = fence::backend_start_sql(known);
    let call = format!("{func}({})", key.id.sql_args());
    let lock = format!("SELECT {call} AS got, pg_backend_pid(), {start}");
    match (try_once, scope, a.fence) {
        (true, _, _) => sql.push_str(&format!("{lock} FROM {guard} WHERE {GUARD_PASSES}")),
        // A wait needs its settings in force as it starts: the guard goes first, on its own.
        // The fence follows the lock, within the same timeout (a waiter's fence wait is part of
        // its wait for the lock: --timeout and a cancelling signal end it too). For a session
        // lock it is in the lock's own statement, evaluated on the lock's row once granted
        // (OFFSET 0 keeps the subquery whole), so that nothing is left to parse or plan between
        // the grant and the answer.
        (false, Scope::Session, true) => sql.push_str(&format!(
            "SELECT FROM {guard} WHERE NOT {GUARD_PASSES}; SELECT s.*, {} FROM ({lock} OFFSET 0) AS s",
            fence::acquire_list(key.id, mode)
        )),
        (false, _, fence) => {
            sql.push_str(&format!("SELECT FROM {guard} WHERE NOT {GUARD_PASSES}; {lock}"));
            // (Reached with the fence at transaction scope only: a session lock's is above.)
            if fence {
                sql.push_str("; ");
                sql.push_str(&xact_fence_sql(key, mode, false));
            }
        }
    }
    if try_once && scope == Scope::Transaction && a.fence {
        sql.push_str("; ");
        sql.push_str(&xact_fence_sql(key, mode, true));
    }
    // The lock's transaction stays open: the timeout was for these statements only.
    if timeout_ms.is_some() && scope == Scope::Transaction {
        sql.push_str("; SET LOCAL lock_timeout = 0");
    }
    sql
}

/// The outcomes a session lock's try names in its row's first column (`session_try_sql`), besides
/// the guard's refusals.
const TRY_GOT: &str = "got";
const TRY_HELD: &str = "held";
const TRY_FENCED: &str = "fenced";

/// A session lock's try: one statement, alone in its round trip and its implicit transaction,
/// that waits for nothing, so it carries no settings (any would end with it, unused). It is one
/// query level over one function scan: on a new backend, each nested subquery costs about as much
/// planning as the lock call itself (docs/performance.md). Its row is `outcome, pid, start`:
/// - the session that ran it: its pid, and its `backend_start` from the scan of the backend
///   table that every statement reads this session's start from (`fence::THIS_BACKEND_AS_S`),
///   here as the statement's own `FROM`. The scan's condition is evaluated before its output,
///   so the outcome below is evaluated once, on that row (no row: nothing was tried, and
///   `session_found` says so). Where the guard checks the pid, `start` is the bare value in the server's own text: cheaper
///   than `to_char`, and than a `::text` cast, which gives the same text but costs a look-up in
///   `pg_cast` (`Holder::from_row` reads it; `holder` asks again in a DateStyle it does not
///   read). Elsewhere it is in the form every other statement uses, so that whatever the try's
///   outcome the session that may hold the lock is known to unlock it (`let_go`);
/// - the outcome, from one CASE, whose branches the server evaluates in order and stops at the
///   first that holds: a refusal of the guard (`refusal_branches`), `held` when the lock is taken
///   elsewhere, `fenced` when it was free but the fence (contract §11) was not (a fenced
///   transaction of an earlier holder is still open), else `got`. So the lock is tried only when
///   the guard found nothing and the fence only once the lock is taken, each once; the fence
///   locks go with the implicit transaction.
fn session_try_sql(a: &Acquire, expect_pid: Option<i32>) -> String {
    let start = match expect_pid {
        Some(_) => fence::START_OF_S,
        None => fence::START_UTC_OF_S,
    };
    let fence = match a.fence {
        true => format!(
            "WHEN NOT ({}) THEN '{TRY_FENCED}' ",
            fence::try_list(a.key.id, a.mode)
        ),
        false => String::new(),
    };
    format!(
        "SELECT CASE {}WHEN NOT pg_try_advisory_lock{}({}) THEN '{TRY_HELD}' {fence}ELSE '{TRY_GOT}' END, \
         pg_backend_pid(), {start} {}",
        refusal_branches(expect_pid, &lock_match(a.key.id)),
        fn_suffix(a.mode),
        a.key.id.sql_args(),
        fence::THIS_BACKEND_AS_S,
    )
}

/// What a try found (see `try_take`).
#[derive(Debug, PartialEq)]
enum Found {
    Refused(Refusal),
    Held,
    /// The lock is taken, but not the fence: it is to be let go again.
    Fenced,
    Got,
}

/// The outcome a session lock's try names (`session_try_sql`). Its row names the session that
/// ran it; no row, or a word the statement does not write, is the server's error: with no row,
/// nothing was tried.
fn session_found(rows: &Rows) -> Result<Found> {
    let named = rows.first().and_then(|r| r.first()).cloned().flatten();
    let found = match named.as_deref() {
        Some(TRY_GOT) => Some(Found::Got),
        Some(TRY_HELD) => Some(Found::Held),
        Some(TRY_FENCED) => Some(Found::Fenced),
        Some(other) => REFUSALS
            .into_iter()
            .find_map(|(name, r)| (name == other).then_some(Found::Refused(r))),
        None => None,
    };
    found.ok_or_else(|| {
        Error::unavailable(
            "the server's answer to the lock statement was not one it can give (no row, or an unknown outcome)",
        )
    })
}

/// The outcome of a transaction lock's try: the lock statement's first column, then the fence
/// statement's row (`xact_fence_sql`: none when the fence was not free).
fn xact_found(rows: &Rows, fence: bool) -> Found {
    if !first_bool(rows) {
        return Found::Held;
    }
    let fenced = rows.get(1).and_then(|r| r.first()).cloned().flatten();
    match fence && fenced.as_deref() != Some("t") {
        true => Found::Fenced,
        false => Found::Got,
    }
}

/// The holder's side of the fence (contract §11, see fence.rs) at `--scope transaction`, in the
/// lock statement's round trip: the fence locks taken inside a savepoint rolled back at once, so
/// that the lock's open transaction does not keep them. After a try, only when the lock is ours
/// (taking it again at transaction scope is then a no-op). (A session lock's fence is a part of
/// its lock statement: see `lock_sql`.)
fn xact_fence_sql(key: &LockKey, mode: Mode, try_once: bool) -> String {
    // A try does not wait for the fence either: one row, `f` when a fenced transaction of an
    // earlier holder is still open (see `acquire`), none when the lock was not ours.
    let take = if try_once {
        format!(
            "SELECT {} WHERE pg_try_advisory_xact_lock{}({})",
            fence::try_list(key.id, mode),
            fn_suffix(mode),
            key.id.sql_args()
        )
    } else {
        format!("SELECT {}", fence::acquire_list(key.id, mode))
    };
    format!(
        "SAVEPOINT pglock_fence; {take}; ROLLBACK TO SAVEPOINT pglock_fence; RELEASE SAVEPOINT pglock_fence"
    )
}

/// Reads on the lock connection what the lock's id needs (`hashtext`, `current_database()`,
/// `current_schema()`): one round trip, before anything that needs the id (the nesting check, the
/// child's variables, the lock itself).
pub fn resolve(conn: &mut Conn, key: &LockKey, signals: &Signals) -> Result<LockKey> {
    let Some(pending) = &key.pending else {
        return Ok(key.clone());
    };
    let rows = query(conn, &pending.sql(), signals).map_err(|e| {
        e.context_msg(&format!(
            "cannot compute the id of lock \"{}\"",
            key.label()
        ))
    })?;
    key.resolved(rows.first().map_or(&[][..], |r| &r[..]))
}

/// The session that ran the lock statement, from its second and third columns.
fn holder_of(rows: &Rows) -> Result<fence::Holder> {
    rows.first()
        .and_then(|r| fence::Holder::from_row(r))
        .ok_or_else(|| {
            Error::unavailable(
                "the server's answer to the lock statement did not name its backend (pid and start)",
            )
        })
}

/// The session that took the lock in a try: as its row names it, or, where the session's
/// DateStyle is not ISO (see `session_try_sql`), as it answers on the same session
/// (the pid the try's row names, which the guard checked against the cancel key's).
fn holder(conn: &mut Conn, rows: &Rows, signals: &Signals) -> Result<fence::Holder> {
    if let Ok(h) = holder_of(rows) {
        return Ok(h);
    }
    let h = holder_of(&query(conn, &fence::holder_sql(), signals)?)?;
    let named = rows.first().and_then(|r| r.get(1)).cloned().flatten();
    if named.as_deref() != Some(h.pid.to_string().as_str()) {
        return Err(Error::unavailable(
            "the lock statement and the next one ran on different backends (a pooler or proxy?)",
        ));
    }
    Ok(h)
}

/// How `acquire` ended well: the backend that took the lock (it differs from the connection's
/// own when a pooler sits in between). A connection replaced on the way needs nothing more: the
/// guard shares pglock's descriptor table.
#[derive(PartialEq)]
pub struct Acquired {
    pub holder: fence::Holder,
}

/// Connection losses while waiting, and a server that is down when a waiting run starts, are
/// bridged by reconnecting for at most this long (within `--timeout` when it is given).
const RECONNECT_FOR: Duration = Duration::from_secs(60);

/// Takes the lock, waiting as `a.wait` says. A connection lost while waiting (a server restart, a
/// failover) is replaced and the wait goes on, within `--timeout` and for at most a minute of
/// reconnecting.
pub fn acquire(conn: &mut Conn, a: &Acquire, signals: &Signals) -> Result<Acquired> {
    if a.key.pending.is_some() {
        return Err(Error::internal(format!(
            "lock \"{}\" was to be taken before its id was known",
            a.key.label()
        )));
    }
    let start = Instant::now();
    let (tried, rows) = try_take(conn, a, signals)?;
    if let Try::Got(got) = tried {
        return Ok(got);
    }
    let mut w = Waiter {
        a,
        start,
        deadline: match a.wait {
            Wait::Timeout(d) => Some(start + d),
            _ => None,
        },
        // The session, for the waiting statement not to ask again (what a handoff waits for).
        known: rows.first().and_then(|r| fence::Holder::from_row(r)),
        seen: holders(conn, a.key, signals)?,
        interval: Duration::from_secs(10),
    };
    if a.wait == Wait::Once {
        if tried == Try::Fenced {
            return Err(w.busy("--no-wait: it is free, but a fenced transaction of an earlier holder is still open"));
        }
        return w.try_again(conn, signals);
    }
    log::info(
        "waiting",
        &format!(
            "waiting for lock \"{}\" ({} mode): {}",
            a.key.label(),
            a.mode.as_str(),
            describe_holders(&w.seen)
        ),
        &[("holders", V::I(w.seen.len() as i64))],
    );
    w.wait(conn, signals)
}

/// How a try ended.
#[derive(PartialEq)]
enum Try {
    Got(Acquired),
    /// Another session holds the lock.
    Held,
    /// The lock was free, but a fenced transaction of an earlier holder is still open: the lock
    /// was let go again, for the wait to take both.
    Fenced,
}

/// Tries once to take the lock and, with it, its fence without waiting. Returns the rows too:
/// their first names this session.
fn try_take(conn: &mut Conn, a: &Acquire, signals: &Signals) -> Result<(Try, Rows)> {
    let sql = lock_sql(conn, a, true, None, None);
    let r = query(conn, &sql, signals);
    let rows = guarded(conn, a, r, signals)?;
    let found = match a.scope {
        Scope::Session => session_found(&rows)?,
        Scope::Transaction => xact_found(&rows, a.fence),
    };
    let tried = match found {
        Found::Refused(why) => {
            return Err(refused(conn, why, &a.key.label(), a.conflict_exit_code))
        }
        Found::Held => Try::Held,
        Found::Fenced => {
            let on = fence::Holder::from_row(rows.first().map_or(&[][..], |r| &r[..]));
            let_go(conn, a, on.as_ref(), signals)?;
            Try::Fenced
        }
        Found::Got => Try::Got(Acquired {
            holder: holder(conn, &rows, signals)?,
        }),
    };
    Ok((tried, rows))
}

/// A lock statement's result, with a refusal of its guard turned into the run's error (and the
/// transaction it failed rolled back, so that the session is left as it was found).
pub fn guarded(conn: &mut Conn, a: &Acquire, r: Result<Rows>, signals: &Signals) -> Result<Rows> {
    r.map_err(|e| refusal_checked(conn, a, e, signals))
}

/// `e`, or the refusal it reports (see `guarded`).
fn refusal_checked(conn: &mut Conn, a: &Acquire, e: Error, signals: &Signals) -> Error {
    let Some(why) = refusal(e.sqlstate.as_deref(), &e.msg) else {
        return e;
    };
    if conn.tx_status() == TxStatus::Failed {
        let _ = query(conn, "ROLLBACK", signals);
    }
    refused(conn, why, &a.key.label(), a.conflict_exit_code)
}

/// Lets go of a lock this session may hold: a transaction lock goes with its transaction, a
/// session lock is unlocked only on the session that took it (`on`, else the backend the guard
/// expected): behind a pooler another backend may hold the same lock for another client. With
/// neither (a connection replaced while waiting, behind a declared pooler) nothing is sent, and
/// the lock, if taken, stays with that server connection until the pooler resets it.
fn let_go(
    conn: &mut Conn,
    a: &Acquire,
    on: Option<&fence::Holder>,
    signals: &Signals,
) -> Result<()> {
    if a.scope == Scope::Transaction {
        return query(conn, "ROLLBACK", signals).map(|_| ());
    }
    let serving = on.map(fence::Holder::serving_sql).or_else(|| {
        expected_backend(conn, a).map(|pid| format!("int4eq(pg_backend_pid(), {pid})"))
    });
    let Some(serving) = serving else {
        return Ok(());
    };
    let sql = format!(
        "SELECT pg_advisory_unlock{}({}) WHERE {serving}",
        fn_suffix(a.mode),
        a.key.id.sql_args()
    );
    query(conn, &sql, signals).map(|_| ())
}

/// A contended acquisition: what it has seen of the holders and of its own session.
struct Waiter<'a> {
    a: &'a Acquire<'a>,
    start: Instant,
    deadline: Option<Instant>,
    /// This session as the try named it (`None` once the connection was replaced).
    known: Option<fence::Holder>,
    /// The holders last seen, for the message of a wait that ends without the lock.
    seen: Vec<Holder>,
    /// The time between two reports of the holders.
    interval: Duration,
}

impl Waiter<'_> {
    fn busy(&self, why: &str) -> Error {
        Error::new(
            Kind::NotAcquired(self.a.conflict_exit_code),
            format!(
                "lock \"{}\" not acquired ({why}): {}; the command was not run",
                self.a.key.label(),
                describe_holders(&self.seen)
            ),
        )
    }

    fn timeout_reached(&self) -> Error {
        let d = match self.a.wait {
            Wait::Timeout(d) => d,
            _ => Duration::ZERO,
        };
        self.busy(&format!("--timeout {} reached", crate::duration::format(d)))
    }

    /// `--no-wait`: the holder may have let go between the try and the look at the holders; one
    /// more try when none was seen, then report.
    fn try_again(&self, conn: &mut Conn, signals: &Signals) -> Result<Acquired> {
        if self.seen.is_empty() {
            if let (Try::Got(got), _) = try_take(conn, self.a, signals)? {
                return Ok(got);
            }
        }
        Err(self.busy("busy, --no-wait"))
    }

    /// When the next report of the holders is due: `interval` on, plus up to 50% by pid, so that
    /// the reports of many waiters started together spread out.
    fn next_report(&self) -> Instant {
        Instant::now()
            + self.interval
            + self
                .interval
                .mul_f64(f64::from(std::process::id() % 50) / 100.0)
    }

    /// Sends the waiting statement, replacing a connection found closed.
    fn send(&mut self, conn: &mut Conn, signals: &Signals) -> Result<()> {
        loop {
            let left = self.deadline.map(|d| {
                d.saturating_duration_since(Instant::now())
                    .as_millis()
                    .max(1)
            });
            let sql = lock_sql(conn, self.a, false, left, self.known.as_ref());
            match conn.send_query(&sql) {
                Err(ReadErr::Closed(m)) => self.replace(conn, m, signals)?,
                _ => return Ok(()),
            }
        }
    }

    /// Replaces a lost connection: a new session (whose backend may even have the old one's pid).
    fn replace(&mut self, conn: &mut Conn, why: String, signals: &Signals) -> Result<()> {
        let hard = conn.deadline();
        *conn = reconnect(conn, why, self.a, signals, self.deadline)?;
        conn.set_deadline(hard);
        self.known = None;
        Ok(())
    }

    /// `--timeout` passed, and its margin too, without the server's answer to the waiting
    /// statement (it ends the wait itself at the deadline: lock_timeout): the server is not
    /// answering. The wait is cancelled and the connection given up.
    fn unanswered(&self, conn: &mut Conn) -> Error {
        let why = format!(
            "no answer from {} to the lock statement {} ms after --timeout {} (the server ends the wait itself at the deadline)",
            conn.target().describe(),
            ANSWER_MARGIN.as_millis(),
            crate::duration::format(match self.a.wait {
                Wait::Timeout(d) => d,
                _ => Duration::ZERO,
            })
        );
        if let Err(e) = conn.cancel(Instant::now() + pg::CANCEL_BOUND) {
            log::debug("cancel", &format!("cancel request failed: {e}"));
        }
        conn.abandon(&why);
        Error::unavailable(format!(
            "{why}; the wait was cancelled, the connection closed, and the command was not run"
        ))
    }

    /// Waits in the server's queue until the lock is granted, `--timeout` passes, or a signal
    /// cancels the wait; names the holders now and then meanwhile.
    fn wait(&mut self, conn: &mut Conn, signals: &Signals) -> Result<Acquired> {
        let label = self.a.key.label();
        // The grant is to be answered at once: the child starts then (see proc/sched.rs).
        crate::proc::sched::prefer_short_slice();
        self.send(conn, signals)?;
        let mut next_report = self.next_report();
        loop {
            // With --timeout, the connection's deadline is the run's plus ANSWER_MARGIN.
            let hard = conn.deadline();
            let wake = hard.map_or(next_report, |h| h.min(next_report));
            match conn.wait_result(Some(wake), signals) {
                Ok(QueryResult::Rows(rows)) => {
                    return Ok(Acquired {
                        holder: holder_of(&rows)?,
                    })
                }
                Ok(QueryResult::Error(e)) if refusal(Some(&e.code), &e.message).is_some() => {
                    let e = Error::unavailable(e.to_string()).with_code(&e.code);
                    return Err(refusal_checked(conn, self.a, e, signals));
                }
                Ok(QueryResult::Error(e)) if e.code == "55P03" => {
                    if conn.tx_status() == TxStatus::Failed {
                        let _ = query(conn, "ROLLBACK", signals);
                    }
                    // The timeout may have come in the fence's wait, the session lock taken.
                    if self.a.fence && self.a.scope == Scope::Session {
                        let _ = let_go(conn, self.a, self.known.as_ref(), signals);
                    }
                    if let Ok(h) = holders(conn, self.a.key, signals) {
                        self.seen = h;
                    }
                    return Err(self.timeout_reached());
                }
                Ok(QueryResult::Error(e)) => {
                    return Err(Error::unavailable(format!(
                        "the server ended the wait for lock \"{label}\": {e}"
                    ))
                    .with_code(&e.code))
                }
                Err(ReadErr::Timeout) if hard.is_some_and(|h| Instant::now() >= h) => {
                    return Err(self.unanswered(conn))
                }
                Err(ReadErr::Timeout) => {
                    self.report(conn, signals)?;
                    next_report = self.next_report();
                }
                Err(ReadErr::Signal(s)) => {
                    let e = Error::new(
                        Kind::Signal(s as i32),
                        format!("{s} received while waiting for lock \"{label}\"; the wait was cancelled and nothing was run"),
                    );
                    return Err(cancel_wait(conn, e, signals));
                }
                // A server that broke the protocol is not trusted again: no reconnecting to it.
                Err(ReadErr::Protocol(m)) => {
                    return Err(Error::unavailable(format!(
                        "{}: {m}",
                        conn.target().describe()
                    )))
                }
                Err(ReadErr::Closed(m)) => {
                    self.replace(conn, m, signals)?;
                    if self.deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(self.timeout_reached());
                    }
                    self.send(conn, signals)?;
                }
            }
        }
    }

    /// Names the holders (through a second connection: this one is waiting), less often each
    /// time; a signal meanwhile cancels the wait.
    fn report(&mut self, conn: &mut Conn, signals: &Signals) -> Result<()> {
        match report_holders(self.a, conn.deadline(), signals) {
            Ok(h) => {
                log::info(
                    "waiting",
                    &format!(
                        "still waiting for lock \"{}\" after {}s: {}",
                        self.a.key.label(),
                        self.start.elapsed().as_secs(),
                        describe_holders(&h)
                    ),
                    &[
                        ("holders", V::I(h.len() as i64)),
                        ("waited_ms", V::I(self.start.elapsed().as_millis() as i64)),
                    ],
                );
                self.seen = h;
            }
            Err(e) if matches!(e.kind, Kind::Signal(_)) => {
                return Err(cancel_wait(conn, e, signals))
            }
            Err(e) => log::debug("waiting", &format!("cannot look up the holder: {e}")),
        }
        self.interval = (self.interval * 3).min(Duration::from_secs(900));
        Ok(())
    }
}

/// Replaces a connection lost while waiting: retries transient failures (see
/// `connect_retrying`) until it succeeds, `--timeout` passes, a signal arrives, or a minute has
/// gone.
fn reconnect(
    old: &Conn,
    why: String,
    a: &Acquire,
    signals: &Signals,
    deadline: Option<Instant>,
) -> Result<Conn> {
    log::warn(
        "reconnect",
        &format!(
            "lost the connection to {} while waiting ({why}); reconnecting to keep waiting",
            old.target().describe()
        ),
        &[],
    );
    let give_up = give_up_at(Instant::now(), deadline);
    let (c, _) = connect_retrying(
        a.params,
        a.startup,
        signals,
        give_up,
        &mut Retries::default(),
    )
    .map_err(|e| gave_up(e, "gave up reconnecting while waiting for the lock"))?;
    log::info(
        "reconnect",
        &format!("reconnected to {}; waiting again", c.target().describe()),
        &[],
    );
    Ok(c)
}

/// The reasons of the retries at a run's start, each logged once (contract §4), whether it
/// came while connecting or after, from a session the server ended before the child started.
#[derive(Default)]
pub struct Retries {
    seen: Vec<String>,
    attempt: i64,
}

impl Retries {
    /// Logs a retry: a warning the first time a reason is seen (the next ones at debug level).
    fn log(&mut self, e: &Error, left: Duration) {
        self.attempt += 1;
        if self.seen.contains(&e.msg) {
            log::debug("retry", &format!("attempt {}: {}", self.attempt, e.msg));
            return;
        }
        let msg = format!(
            "{}; retrying for up to {} more",
            e.msg,
            crate::duration::format(Duration::from_secs(left.as_secs_f64().ceil() as u64))
        );
        // A bound: a server cannot grow this list by making up reasons.
        if self.seen.len() < 64 {
            self.seen.push(e.msg.clone());
        }
        log::warn(
            "retry",
            &msg,
            &[
                ("reason", V::S(&e.msg)),
                ("sqlstate", V::S(e.sqlstate.as_deref().unwrap_or(""))),
                ("attempt", V::I(self.attempt)),
            ],
        );
    }
}

/// The margin of `--timeout` for the server's own answer: the waiting statement carries the
/// deadline as its lock_timeout, so a server that answers ends the wait at the deadline; one
/// that has not answered by the deadline plus this margin is not answering (exit 69).
pub const ANSWER_MARGIN: Duration = Duration::from_secs(1);

/// A run's start, from its first connection to the child's start (contract §4): which wait is
/// left, the deadline of every round trip, and whether a failure is tried again on a new
/// connection (a transient one, in a run that may wait, within `--timeout` or `RECONNECT_FOR`).
pub struct Start {
    wait: Wait,
    deadline: Option<Instant>,
    /// When retrying stops without `--timeout`: `RECONNECT_FOR` after the first failure.
    give_up: Option<Instant>,
    pause: Duration,
    pub retries: Retries,
}

impl Start {
    pub fn new(wait: Wait) -> Start {
        let deadline = match wait {
            Wait::Timeout(d) => Some(Instant::now() + d),
            _ => None,
        };
        Start {
            wait,
            deadline,
            give_up: None,
            pause: Duration::from_millis(250),
            retries: Retries::default(),
        }
    }

    /// The wait left for the next attempt: the run's own for the first (so that a wait that
    /// runs out names the `--timeout` given), what is left of it after a retry.
    pub fn wait_left(&self) -> Wait {
        match self.deadline {
            Some(_) if self.retries.attempt == 0 => self.wait,
            Some(d) => Wait::Timeout(
                d.saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ),
            None => self.wait,
        }
    }

    /// The latest time a round trip of an attempt connected now may end: `-n` one
    /// `round_trip` for all of them (the key, nesting and ownership queries, the try),
    /// `--timeout` its deadline plus `ANSWER_MARGIN`; a run without a bound has none beyond
    /// each round trip's own.
    pub fn deadline(&self, round_trip: Duration) -> Option<Instant> {
        match self.wait {
            Wait::Once => Some(Instant::now() + round_trip),
            Wait::Timeout(_) => self.deadline.map(|d| d + ANSWER_MARGIN),
            Wait::Forever => None,
        }
    }

    /// After an attempt failed before the child started: `Ok` to try again on a new connection
    /// (after a short pause), or the error that ends the run. Only a transient failure of a run
    /// that may wait is tried again.
    pub fn again(&mut self, e: Error, signals: &Signals) -> Result<()> {
        let give_up = self.retry_until(e)?;
        if let Some(sig) = sleep_until(
            (Instant::now() + jittered(self.pause)).min(give_up),
            signals,
        ) {
            return Err(signal_while_retrying(sig));
        }
        self.pause = (self.pause * 2).min(Duration::from_secs(2));
        Ok(())
    }

    /// Whether `e` is tried again: until when (and it is logged), or the error to end with.
    fn retry_until(&mut self, e: Error) -> Result<Instant> {
        if !e.transient || self.wait == Wait::Once {
            return Err(e);
        }
        let now = Instant::now();
        let give_up = match (self.deadline, self.give_up) {
            (Some(d), _) | (None, Some(d)) => d,
            (None, None) => *self.give_up.insert(now + RECONNECT_FOR),
        };
        if now >= give_up {
            let bound = if self.deadline.is_some() {
                "--timeout reached"
            } else {
                "for a minute"
            };
            return Err(gave_up(
                e,
                &format!("gave up waiting for the server ({bound})"),
            ));
        }
        self.retries.log(&e, give_up - now);
        Ok(give_up)
    }
}

fn signal_while_retrying(sig: nix::sys::signal::Signal) -> Error {
    Error::new(
        Kind::Signal(sig as i32),
        format!("{sig} received while waiting for the server; nothing was run"),
    )
}

/// Opens the lock connection of a run (contract §4). A run that may wait also waits for the
/// server: a transient failure (the server down, starting up, shutting down, in recovery) is
/// retried within `--timeout`, or for `RECONNECT_FOR` without one; anything else, and any
/// failure of a `--no-wait` run, fails at once. Returns the connection and the wait left.
pub fn connect_waiting(
    params: &ConnParams,
    startup: &Startup,
    wait: Wait,
    signals: &Signals,
    retries: &mut Retries,
) -> Result<(Conn, Wait)> {
    let start = Instant::now();
    let (deadline, bound) = match wait {
        Wait::Once => return Ok((Conn::connect(params, startup, signals)?, wait)),
        Wait::Timeout(d) => (Some(start + d), "--timeout reached"),
        Wait::Forever => (None, "for a minute"),
    };
    // Within --timeout, however long; without one, for a minute.
    let give_up = deadline.unwrap_or(start + RECONNECT_FOR);
    let (conn, retried) = connect_retrying(params, startup, signals, give_up, retries)
        .map_err(|e| gave_up(e, &format!("gave up waiting for the server ({bound})")))?;
    if !retried {
        return Ok((conn, wait));
    }
    // The time spent waiting for the server counts against --timeout.
    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    log::info(
        "reconnect",
        &format!(
            "connected to {} after {} ms of waiting for the server{}",
            conn.target().describe(),
            start.elapsed().as_millis(),
            left.map(|l| format!("; {} of --timeout left", crate::duration::format(l)))
                .unwrap_or_default()
        ),
        &[("waited_ms", V::I(start.elapsed().as_millis() as i64))],
    );
    let wait = left.map_or(wait, |l| Wait::Timeout(l.max(Duration::from_millis(1))));
    Ok((conn, wait))
}

/// When reconnecting stops: `RECONNECT_FOR` from `now`, or the run's deadline if sooner.
fn give_up_at(now: Instant, deadline: Option<Instant>) -> Instant {
    let bound = now + RECONNECT_FOR;
    deadline.map_or(bound, |d| d.min(bound))
}

/// The error of a connection that was retried until the bound: the last failure, with what
/// ended the retrying. A failure that was never retried is passed up as it is.
fn gave_up(e: Error, why: &str) -> Error {
    if e.transient {
        e.context_msg(why)
    } else {
        e
    }
}

/// Connects, trying again after a transient failure until `give_up` (250 ms doubling to 2 s,
/// with jitter so that many runs started together do not retry in step). Each new reason is
/// logged once; a signal ends the retrying at once; a failure that is not transient (TLS,
/// authentication, configuration, a missing database) is returned at once. Returns the
/// connection and whether it took more than one attempt.
fn connect_retrying(
    params: &ConnParams,
    startup: &Startup,
    signals: &Signals,
    give_up: Instant,
    retries: &mut Retries,
) -> Result<(Conn, bool)> {
    let mut pause = Duration::from_millis(250);
    let mut attempt = 1i64;
    loop {
        let e = match Conn::connect(&bounded(params, give_up), startup, signals) {
            Ok(mut c) => {
                // An attempt's connect_timeout was cut to the time left; the statements are not.
                c.set_round_trip(crate::pg::round_trip_bound(params));
                return Ok((c, attempt > 1));
            }
            Err(e) => e,
        };
        let now = Instant::now();
        if !e.transient || now >= give_up {
            return Err(e);
        }
        retries.log(&e, give_up - now);
        if let Some(sig) = sleep_until((now + jittered(pause)).min(give_up), signals) {
            return Err(signal_while_retrying(sig));
        }
        pause = (pause * 2).min(Duration::from_secs(2));
        attempt += 1;
    }
}

/// The connection settings of one attempt: `connect_timeout` (or its default) no longer than
/// the time left, so that a server that does not answer at all cannot hold the run past its
/// bound.
fn bounded(params: &ConnParams, give_up: Instant) -> std::borrow::Cow<'_, ConnParams> {
    let left = give_up
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(50));
    match params.connect_timeout {
        Some(t) if t <= left => std::borrow::Cow::Borrowed(params),
        t => {
            let mut p = params.clone();
            p.connect_timeout = Some(t.unwrap_or(crate::pg::DEFAULT_CONNECT_TIMEOUT).min(left));
            std::borrow::Cow::Owned(p)
        }
    }
}

/// `d` made 0 to 25% longer at random.
fn jittered(d: Duration) -> Duration {
    let r = getrandom::u32().unwrap_or(std::process::id());
    d + d.mul_f64(f64::from(r % 1000) / 4000.0)
}

/// Sleeps until `t` unless a cancelling signal arrives first.
fn sleep_until(t: Instant, signals: &Signals) -> Option<nix::sys::signal::Signal> {
    use nix::poll::{PollFd, PollFlags, PollTimeout};
    loop {
        let left = t.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let mut fds = [PollFd::new(signals.fd(), PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(left.as_millis().clamp(1, 60_000) as i32)
            .unwrap_or(PollTimeout::MAX);
        if let Ok(n) = nix::poll::poll(&mut fds, ms) {
            if n > 0 {
                if let Some(sig) = signals.take_cancel() {
                    return Some(sig);
                }
            }
        }
    }
}

/// Cancels the server-side wait and waits (briefly) for the server to confirm it, releasing the
/// lock if it was granted in the meantime. Returns `err` for the caller to pass up.
fn cancel_wait(conn: &mut Conn, err: Error, signals: &Signals) -> Error {
    if let Err(e) = conn.cancel(Instant::now() + pg::CANCEL_BOUND) {
        log::debug("cancel", &format!("cancel request failed: {e}"));
        return err;
    }
    let deadline = Some(Instant::now() + Duration::from_secs(2));
    loop {
        match conn.wait_result(deadline, signals) {
            Ok(QueryResult::Rows(_)) => {
                // Granted just before the cancel: the session ends right after, releasing it.
                log::debug(
                    "cancel",
                    "the lock was granted as the wait was cancelled; releasing it",
                );
                return err;
            }
            Ok(QueryResult::Error(_))
            | Err(ReadErr::Timeout | ReadErr::Closed(_) | ReadErr::Protocol(_)) => return err,
            Err(ReadErr::Signal(_)) => continue,
        }
    }
}

/// Looks up the holders through a short-lived second connection (the lock connection is busy
/// waiting, and leaving the queue would lose our place in it), within one round trip's bound and
/// the run's `deadline`: a server that does not answer it cannot stop the wait's own bound.
fn report_holders(
    a: &Acquire,
    deadline: Option<Instant>,
    signals: &Signals,
) -> Result<Vec<Holder>> {
    let st = Startup {
        application_name: a.startup.application_name,
        settings: Vec::new(),
        client_keepalive: None,
        while_waiting: None,
    };
    let bound = Instant::now() + crate::pg::round_trip_bound(a.params);
    let give_up = deadline.map_or(bound, |d| d.min(bound));
    let mut side = Conn::connect(&bounded(a.params, give_up), &st, signals)?;
    side.set_deadline(Some(give_up));
    let h = holders(&mut side, a.key, signals);
    side.close();
    h
}

/// How a release ended.
#[derive(Debug, PartialEq)]
pub enum Released {
    /// The server confirmed that the lock was held until now.
    Held,
    /// The server answered that the lock was no longer held, or the session was gone.
    Gone,
    /// No answer within the bound, or a signal ended the wait: the connection is given up and
    /// closed, and the server frees the lock when it notices (why: the reason).
    Unconfirmed(String),
}

/// The statements sent before the release (the run ledger's record) failed, and so nothing
/// after them ran: the lock is still held, in a failed transaction (the server's error).
#[derive(Debug)]
pub struct RecordFailed(pub String);

/// How long the release waits for the server's answer once the child has exited: as long as a
/// heartbeat may go unanswered while the child runs (contract §6).
pub fn release_bound(heartbeat: Duration) -> Duration {
    heartbeat * 2
}

/// The condition that pins an unlock to the session that took the lock (`holder`). Where the
/// guard's pid check was made (`proven`: session scope, no declared pooler), this connection is
/// that backend's own session and its pid says so; elsewhere the pid and `backend_start` (whose
/// look-up reads every backend's status) tell it from a server connection that reused the pid.
pub fn unlock_pin(holder: &fence::Holder, proven: bool) -> String {
    if proven {
        format!("int4eq(pg_backend_pid(), {})", holder.pid)
    } else {
        holder.serving_sql()
    }
}

/// Releases the lock, waiting for the server's answer until `deadline`. A transaction lock
/// ends with its transaction (held while the transaction was open, failed or not). `sent` is
/// called once the release is on its way to the server. Only an answer counts as a verdict on
/// the lock: a server that gives none, or a signal meanwhile, leaves it unconfirmed, never lost.
/// A session lock is unlocked only on `holder`, the session that took it (see `let_go`).
/// `before`: statements that go first in the same round trip (the run ledger's record,
/// contract §12), "" for none.
pub fn release(
    conn: &mut Conn,
    (key, pin, mode, scope): (&LockKey, &str, Mode, Scope),
    before: &str,
    notify: Option<&str>,
    deadline: Instant,
    signals: &Signals,
    sent: &dyn Fn(),
) -> std::result::Result<Released, RecordFailed> {
    let open = conn.tx_status() != TxStatus::Idle;
    // With --limit, the same round trip wakes the first waiter (NOTIFY is sent on commit of the
    // implicit transaction, after the unlock).
    let sql = match (scope, notify) {
        (Scope::Transaction, _) => format!("{before}COMMIT"),
        (Scope::Session, notify) => format!(
            "{before}SELECT pg_advisory_unlock{}({}) WHERE {}{}",
            fn_suffix(mode),
            key.id.sql_args(),
            pin,
            notify.map(|c| format!("; NOTIFY {c}")).unwrap_or_default()
        ),
    };
    let start = Instant::now();
    let unconfirmed = |conn: &mut Conn, why: String| {
        conn.abandon(&why);
        Released::Unconfirmed(why)
    };
    Ok(match pg::exchange(conn, &sql, deadline, signals, sent) {
        Ok(QueryResult::Rows(_)) if scope == Scope::Transaction && open => Released::Held,
        Ok(QueryResult::Rows(rows)) if scope == Scope::Session && first_bool(&rows) => {
            Released::Held
        }
        // The unlock's WHERE found another session: a transaction pooler behind --pooler
        // session handed the statement to another server connection, and the lock stays there.
        Ok(QueryResult::Rows(rows)) if scope == Scope::Session && rows.is_empty() => unconfirmed(
            conn,
            "the unlock ran on another server connection than the one that holds the lock (a transaction pooler behind --pooler session?); the lock may stay with that server connection until the pooler closes it".into(),
        ),
        Ok(QueryResult::Rows(_)) => Released::Gone,
        Ok(QueryResult::Error(e)) if !before.is_empty() && conn.tx_status() == TxStatus::Failed => {
            return Err(RecordFailed(e.to_string()))
        }
        Ok(QueryResult::Error(e)) => {
            log::debug("release", &format!("unlock failed: {e}"));
            Released::Gone
        }
        Err(ReadErr::Timeout) => unconfirmed(
            conn,
            format!(
                "no answer from {} for {} ms",
                conn.target().describe(),
                start.elapsed().as_millis()
            ),
        ),
        Err(ReadErr::Signal(s)) => unconfirmed(conn, format!("{s} received meanwhile")),
        Err(ReadErr::Closed(m) | ReadErr::Protocol(m)) => {
            log::debug("release", &format!("unlock failed: {m}"));
            Released::Gone
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_row(cells: &[Option<&str>]) -> Rows {
        vec![cells.iter().map(|c| c.map(str::to_string)).collect()]
    }

    #[test]
    fn a_session_try_reads_only_the_outcomes_its_statement_writes() {
        let start = Some("2026-12-07 12:00:00.000001");
        let found = |outcome: Option<&str>| session_found(&one_row(&[outcome, Some("42"), start]));
        assert_eq!(found(Some(TRY_GOT)).unwrap(), Found::Got);
        assert_eq!(found(Some(TRY_HELD)).unwrap(), Found::Held);
        assert_eq!(found(Some(TRY_FENCED)).unwrap(), Found::Fenced);
        for (name, r) in REFUSALS {
            assert_eq!(found(Some(name)).unwrap(), Found::Refused(r));
        }
        // The old boolean, garbage, a prefix, NULL, and no row at all: the server's error.
        for bad in [
            Some("t"),
            Some("gotx"),
            Some("pglock.refused"),
            Some(""),
            None,
        ] {
            assert!(found(bad).is_err(), "{bad:?}");
        }
        assert!(session_found(&Vec::new()).is_err());
        assert!(session_found(&vec![Vec::new()]).is_err());
    }

    #[test]
    fn a_transaction_try_is_got_only_with_its_fence_row() {
        let lock = |got: &str| vec![Some(got.to_string()), Some("42".into()), None];
        let fence = vec![Some("t".to_string())];
        assert_eq!(xact_found(&vec![lock("f")], true), Found::Held);
        assert_eq!(xact_found(&vec![lock("t")], true), Found::Fenced);
        assert_eq!(xact_found(&vec![lock("t"), fence], true), Found::Got);
        assert_eq!(xact_found(&vec![lock("t")], false), Found::Got);
    }

    #[test]
    fn reconnecting_stops_at_the_deadline_or_after_a_minute() {
        let now = Instant::now();
        assert_eq!(give_up_at(now, None), now + RECONNECT_FOR);
        let soon = now + Duration::from_secs(3);
        assert_eq!(give_up_at(now, Some(soon)), soon);
        let late = now + Duration::from_secs(600);
        assert_eq!(give_up_at(now, Some(late)), now + RECONNECT_FOR);
    }

    #[test]
    fn a_retried_failure_says_why_the_retrying_ended_and_another_is_unchanged() {
        let e = gave_up(Error::unavailable("refused").transient(), "gave up");
        assert_eq!(e.msg, "gave up: refused");
        assert_eq!(e.exit_code(), 69);
        let e = gave_up(
            Error::unavailable("password authentication failed"),
            "gave up",
        );
        assert_eq!(e.msg, "password authentication failed");
    }

    #[test]
    fn only_a_transient_failure_of_a_run_that_may_wait_is_tried_again() {
        let down = || Error::unavailable("the server ended the session").transient();
        let mut once = Start::new(Wait::Once);
        assert_eq!(once.retry_until(down()).unwrap_err().exit_code(), 69);
        let mut w = Start::new(Wait::Timeout(Duration::from_secs(30)));
        let auth = Error::unavailable("password authentication failed");
        assert_eq!(
            w.retry_until(auth).unwrap_err().msg,
            "password authentication failed"
        );
        // The first attempt waits the --timeout given; after a retry, what is left of it.
        assert_eq!(w.wait_left(), Wait::Timeout(Duration::from_secs(30)));
        assert!(w.retry_until(down()).is_ok());
        assert!(matches!(w.wait_left(), Wait::Timeout(d) if d < Duration::from_secs(30)));
        // Without --timeout: for a minute from the first failure.
        let mut f = Start::new(Wait::Forever);
        let until = f.retry_until(down()).unwrap();
        assert!(until > Instant::now() + Duration::from_secs(59));
        assert_eq!(f.retry_until(down()).unwrap(), until);
        // Past the deadline: the failure, saying why the retrying ended.
        let mut gone = Start::new(Wait::Timeout(Duration::from_millis(1)));
        std::thread::sleep(Duration::from_millis(5));
        let e = gone.retry_until(down()).unwrap_err();
        assert!(
            e.msg
                .starts_with("gave up waiting for the server (--timeout reached)"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn the_deadline_of_a_start_is_the_try_for_no_wait_and_the_margin_for_a_timeout() {
        let rt = Duration::from_secs(2);
        let t0 = Instant::now();
        let d = Start::new(Wait::Once).deadline(rt).unwrap();
        assert!(d >= t0 + rt && d < t0 + rt + Duration::from_secs(1));
        let d = Start::new(Wait::Timeout(Duration::from_secs(3)))
            .deadline(rt)
            .unwrap();
        assert!(d >= t0 + Duration::from_secs(3) + ANSWER_MARGIN);
        assert_eq!(Start::new(Wait::Forever).deadline(rt), None);
    }

    #[test]
    fn the_backoff_jitter_adds_at_most_a_quarter() {
        for _ in 0..100 {
            let d = jittered(Duration::from_millis(400));
            assert!(d >= Duration::from_millis(400) && d <= Duration::from_millis(500));
        }
    }
}

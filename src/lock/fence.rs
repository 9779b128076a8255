//! Fencing (contract §11): a child's transaction that began while the lock was held commits
//! before the next holder's child starts, or fails.
//!
//! Every lock id has two *fence* locks, bigint advisory ids derived from it the way `--limit`
//! derives its slots ([`key::id_of`] of a text):
//!
//! - `"<id>:fence"`, taken in shared mode, at transaction scope, by the fence statement of the
//!   children of **exclusive** holders;
//! - `"<id>:fence:shared"`, the same for the children of **shared** holders.
//!
//! A new holder, once granted the lock and before starting its child, takes the fence locks it
//! conflicts with exclusively and lets them go at once: an exclusive holder both, a shared holder
//! only the first (shared holders run together, so a new one must not wait for the transactions
//! of the others). That wait lasts until every fenced transaction still in flight has ended. A
//! fenced transaction that starts later finds, in `pg_locks`, that its run's session (backend pid
//! *and* `backend_start`, so a reused pid never passes) no longer holds the lock, and fails.
//!
//! The holder's exclusive fence rides in the lock statement's round trip (see `acquire.rs`): at
//! transaction scope inside a savepoint that is rolled back, so that pglock's open transaction
//! does not keep it.

use crate::error::{Error, Result};
use crate::lock::key::locks_filter;
use crate::lock::key::{self, LockId};
use crate::lock::Mode;
use crate::log::civil_from_days;

/// A scan of the server's backend table (the per-backend statistics functions) whose one row,
/// `s`, is this session's entry: the functions take the entry's position, which only the server
/// knows, so the scan finds it by pid. On a new backend it costs about 70 us less than
/// `pg_stat_get_activity(pg_backend_pid())`, whose 30-column row type is built at planning (and
/// about a tenth of the `pg_stat_activity` view); the start is the same, from the same snapshot.
pub const THIS_BACKEND_AS_S: &str = "FROM pg_stat_get_backend_idset() s \
     WHERE int4eq(pg_stat_get_backend_pid(s), pg_backend_pid())";

/// The `backend_start` of `s`, a position in the backend table (see [`THIS_BACKEND_AS_S`]), in the
/// server's own text.
pub const START_OF_S: &str = "pg_stat_get_backend_start(s)";

/// [`START_OF_S`] in a fixed text form (UTC, microseconds), whatever the session's DateStyle and
/// TimeZone.
pub const START_UTC_OF_S: &str =
    "to_char(pg_stat_get_backend_start(s) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')";

/// The SQL expression that yields this session's `backend_start` in [`START_UTC_OF_S`]'s form.
pub const BACKEND_START_SQL: &str = "(SELECT to_char(pg_stat_get_backend_start(s) AT TIME ZONE \
     'UTC', 'YYYY-MM-DD HH24:MI:SS.US') FROM pg_stat_get_backend_idset() s \
     WHERE int4eq(pg_stat_get_backend_pid(s), pg_backend_pid()))";

/// [`BACKEND_START_SQL`]'s form of the `backend_start` of `a`, a row of `pg_stat_get_activity`
/// (the fence's check reads another backend's row, by its pid).
pub const START_UTC_OF_A: &str =
    "to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')";

/// A statement whose row [`Holder::from_row`] reads: this session, in `BACKEND_START_SQL`'s form.
pub fn holder_sql() -> String {
    format!("SELECT NULL, pg_backend_pid(), {BACKEND_START_SQL}")
}

/// [`BACKEND_START_SQL`], or `known`'s start without asking when the statement runs on `known`'s
/// backend (a pooler may run it on another).
pub fn backend_start_sql(known: Option<&Holder>) -> String {
    match known {
        None => BACKEND_START_SQL.to_string(),
        Some(h) => format!(
            "CASE WHEN pg_backend_pid() = {} THEN '{}' ELSE {BACKEND_START_SQL} END",
            h.pid, h.start
        ),
    }
}

/// The fence lock that the children of a holder in `mode` take.
pub fn id(lock: LockId, mode: Mode) -> i64 {
    match mode {
        Mode::Exclusive => key::id_of(&format!("{lock}:fence")),
        Mode::Shared => key::id_of(&format!("{lock}:fence:shared")),
    }
}

/// The fence locks a new holder in `mode` waits out: every one whose holders conflict with it.
pub fn conflicting(lock: LockId, mode: Mode) -> Vec<i64> {
    match mode {
        Mode::Exclusive => vec![id(lock, Mode::Exclusive), id(lock, Mode::Shared)],
        Mode::Shared => vec![id(lock, Mode::Exclusive)],
    }
}

/// The select list that takes (at transaction scope) the fence locks a new holder waits out.
pub fn acquire_list(lock: LockId, mode: Mode) -> String {
    conflicting(lock, mode)
        .iter()
        .map(|f| format!("pg_advisory_xact_lock({f})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// [`acquire_list`] without waiting: one boolean, whether every fence lock was free.
pub fn try_list(lock: LockId, mode: Mode) -> String {
    conflicting(lock, mode)
        .iter()
        .map(|f| format!("pg_try_advisory_xact_lock({f})"))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The session that holds a run's lock, as the fence statement identifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: i32,
    /// `backend_start` as [`BACKEND_START_SQL`] writes it.
    pub start: String,
}

impl Holder {
    /// The SQL condition that holds when a statement runs on this session: the same pid and
    /// `backend_start`.
    pub fn serving_sql(&self) -> String {
        format!(
            "pg_backend_pid() = {} AND {BACKEND_START_SQL} = '{}'",
            self.pid, self.start
        )
    }

    /// Reads the backend pid and start from a lock statement's row (columns 2 and 3). What the
    /// server sent goes into SQL that the child runs: only the expected shapes are accepted.
    pub fn from_row(row: &[Option<String>]) -> Option<Holder> {
        let pid = row.get(1)?.as_deref()?.parse::<i32>().ok()?;
        let start = utc_start(row.get(2)?.as_deref()?)?;
        (pid > 0).then_some(Holder { pid, start })
    }
}

/// A backend start in [`BACKEND_START_SQL`]'s form (`YYYY-MM-DD HH:MM:SS.ffffff`, UTC), from
/// that form or from a timestamptz written in DateStyle ISO with its offset
/// (`2026-12-07 11:52:25.06+01`, `... 16:37:25.060123+05:45`); `None` for anything else.
fn utc_start(text: &str) -> Option<String> {
    let b = text.as_bytes();
    if b.len() > 40 || !text.is_ascii() {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let d = b.get(r)?;
        (!d.is_empty() && d.iter().all(u8::is_ascii_digit))
            .then(|| d.iter().fold(0, |n, c| n * 10 + i64::from(c - b'0')))
    };
    let seps = [(4, b'-'), (7, b'-'), (10, b' '), (13, b':'), (16, b':')];
    if seps.iter().any(|&(i, c)| b.get(i) != Some(&c)) {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &text[19..];
    let mut micros = 0;
    if let Some(f) = rest.strip_prefix('.') {
        let n = f.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 || n > 6 {
            return None;
        }
        micros = f[..n].parse::<i64>().ok()? * 10_i64.pow(6 - n as u32);
        rest = &f[n..];
    }
    let offset = match rest.as_bytes().first() {
        None => 0,
        Some(&sign @ (b'+' | b'-')) => {
            let parts: Vec<&str> = rest[1..].split(':').collect();
            let two_digits = |p: &&str| p.len() == 2 && p.bytes().all(|c| c.is_ascii_digit());
            if parts.is_empty() || parts.len() > 3 || !parts.iter().all(two_digits) {
                return None;
            }
            let mut secs = 0;
            for (p, unit) in parts.iter().zip([3600, 60, 1]) {
                secs += p.parse::<i64>().ok().filter(|v| *v < 60 || unit == 3600)? * unit;
            }
            if sign == b'-' {
                -secs
            } else {
                secs
            }
        }
        Some(_) => return None,
    };
    let valid = (1..=12).contains(&mo) && (1..=31).contains(&d) && h < 24 && mi < 60 && s < 60;
    // A day the month does not have (2026-02-31) does not come back from the day count.
    if !valid || y == 0 || civil_from_days(days_from_civil(y, mo, d)) != (y, mo, d) {
        return None;
    }
    let t = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s - offset;
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    let (y, mo, d) = civil_from_days(days);
    if !(1..=9999).contains(&y) {
        return None;
    }
    Some(format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02}.{micros:06}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    ))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The fence statement (`PGLOCK_FENCE_SQL`): takes the fence lock of a holder in `mode` shared
/// for the rest of the transaction, then fails unless `holder` still holds `lock` in `mode`.
pub fn check_sql(lock: LockId, mode: Mode, holder: &Holder, run_id: &str) -> String {
    statement(
        lock,
        mode,
        &holder.pid.to_string(),
        &format!("'{}'", holder.start),
        run_id,
    )
}

/// The fence statement with the holder's identity as SQL text (a literal, or a placeholder).
fn statement(lock: LockId, mode: Mode, pid: &str, start: &str, run_id: &str) -> String {
    format!(
        "DO $pglock$BEGIN {} END$pglock$",
        check_body(lock, mode, pid, start, run_id)
    )
}

/// The PL/pgSQL statements of the fence check, for a `DO` block of the caller's: the fence
/// statement's own, and `PGLOCK_ONCE_SQL`'s (ledger.rs), which records the run after them.
/// Nothing in it comes from user input (the run id is filtered to `[A-Za-z0-9_-]`).
pub fn check_body(lock: LockId, mode: Mode, pid: &str, start: &str, run_id: &str) -> String {
    let run_id: String = run_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    format!(
        "PERFORM pg_advisory_xact_lock_shared({fence}); \
         IF NOT EXISTS (SELECT FROM pg_locks l, pg_stat_get_activity({pid}) a \
         WHERE l.pid = {pid} AND a.pid = {pid} AND {START_UTC_OF_A} = {start} \
         AND l.granted AND l.mode = '{pg_mode}' AND {filter}) THEN \
         RAISE EXCEPTION 'pglock: run {run_id} no longer holds lock {lock} (backend pid {pid}); this transaction must not commit' \
         USING ERRCODE = 'P0001'; END IF;",
        fence = id(lock, mode),
        pg_mode = mode.pg_mode(),
        filter = locks_filter(&key::LockKey::from_id(lock)),
    )
}

/// `pglock key LOCK --fence-sql`: the two statements of the fence for code that takes the lock
/// itself, with the holder's identity left as placeholders.
pub fn shape(lock: LockId) -> String {
    let check = statement(
        lock,
        Mode::Exclusive,
        "HOLDER_PID",
        "'HOLDER_BACKEND_START'",
        "RUN_ID",
    );
    format!(
        "-- 1. The holder, right after taking lock {lock} (exclusive) and before its workers write:\n\
         SELECT {};\n\
         -- 2. Each worker, first in each of its transactions. HOLDER_PID is the holder's pg_backend_pid();\n\
         --    HOLDER_BACKEND_START its backend_start as {BACKEND_START_SQL} yields it;\n\
         --    RUN_ID is any word that names the holder in the error. A shared holder's workers take\n\
         --    fence lock {} and check ShareLock instead.\n\
         {check};",
        acquire_list(lock, Mode::Exclusive),
        id(lock, Mode::Shared),
    )
}

/// The SQL that reads a fencing token: the server's 64-bit transaction id, assigned now.
pub fn token_sql(server_major: Option<u32>) -> &'static str {
    let major = server_major.unwrap_or(0);
    if major >= 13 {
        "SELECT pg_current_xact_id()"
    } else {
        "SELECT txid_current()"
    }
}

/// Reads the token from the answer to [`token_sql`].
pub fn parse_token(rows: &[Vec<Option<String>>]) -> Result<u64> {
    rows.first()
        .and_then(|r| r.first())
        .and_then(|v| v.as_deref())
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|t| *t > 0)
        .ok_or_else(|| {
            Error::unavailable("the server's answer for the fencing token was not a transaction id")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cells: &[&str]) -> Vec<Option<String>> {
        cells.iter().map(|c| Some(c.to_string())).collect()
    }

    #[test]
    fn the_start_of_a_row_and_of_the_session_are_written_alike() {
        assert_eq!(
            BACKEND_START_SQL,
            format!("(SELECT {START_UTC_OF_S} {THIS_BACKEND_AS_S})")
        );
        assert_eq!(
            START_UTC_OF_S,
            START_UTC_OF_A.replace("a.backend_start", START_OF_S)
        );
    }

    #[test]
    fn fence_ids_are_fixed_and_distinct() {
        let l = LockId::Big(42);
        assert_eq!(id(l, Mode::Exclusive), key::id_of("42:fence"));
        assert_eq!(id(l, Mode::Shared), key::id_of("42:fence:shared"));
        assert_ne!(
            id(l, Mode::Exclusive),
            id(LockId::Pair(0, 42), Mode::Exclusive)
        );
        assert_eq!(conflicting(l, Mode::Shared), vec![key::id_of("42:fence")]);
        assert_eq!(conflicting(l, Mode::Exclusive).len(), 2);
    }

    #[test]
    fn holder_accepts_only_the_expected_shapes() {
        let ok = Holder::from_row(&row(&["t", "123", "2026-11-30 23:01:02.123456"]));
        assert_eq!(ok.map(|h| h.pid), Some(123));
        for bad in [
            row(&["t", "123", "2026'; DROP TABLE x; --"]),
            row(&["t", "x", "2026-11-30 23:01:02"]),
            row(&["t", "-4", "2026-11-30 23:01:02"]),
            row(&["t", "4", ""]),
            row(&["t", "4"]),
            vec![Some("t".into()), Some("4".into()), None],
            row(&["t", "4", &"1".repeat(33)]),
        ] {
            assert_eq!(Holder::from_row(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_start_in_datestyle_iso_is_brought_to_utc_with_microseconds() {
        let utc = |t: &str| utc_start(t);
        let same = "2026-11-30 23:01:02.123456";
        assert_eq!(utc(same).as_deref(), Some(same));
        for (text, want) in [
            ("2026-11-30 23:01:02.123456+00", same),
            ("2026-12-01 00:01:02.123456+01", same),
            ("2026-12-01 04:46:02.123456+05:45", same),
            ("2026-11-30 19:31:02.123456-03:30", same),
            ("2026-11-30 23:54:30.123456+00:53:28", same),
            ("2026-11-30 23:01:02+00", "2026-11-30 23:01:02.000000"),
            ("2026-11-30 23:01:02.5+00", "2026-11-30 23:01:02.500000"),
            (
                "2024-02-29 23:30:00.000001-01",
                "2024-03-01 00:30:00.000001",
            ),
            ("2027-01-01 00:30:00+01", "2026-12-31 23:30:00.000000"),
        ] {
            assert_eq!(utc(text).as_deref(), Some(want), "{text}");
        }
        for bad in [
            "Mon Nov 30 23:01:02.123456 2026 UTC",
            "30/11/2026 23:01:02.123456 UTC",
            "30.11.2026 23:01:02.123456 UTC",
            "2026-11-30T23:01:02+00",
            "2026-11-30 23:01:02.1234567+00",
            "2026-11-30 23:01:02.+00",
            "2026-11-30 23:01:02+0",
            "2026-11-30 23:01:02+00:61",
            "2026-11-30 23:01:02+-1",
            "2026-11-30 23:01:02++1",
            "2026-11-30 23:01:02+05:-1",
            "2026-02-31 23:01:02+00",
            "2025-02-29 23:01:02+00",
            "2026-13-30 23:01:02+00",
            "2026-11-30 24:01:02+00",
            "0000-11-30 23:01:02+00",
            "2026-11-30 23:01:02 BC",
            "2026-11-30 23:01:02+00 BC",
            "2026-11-30 23:01",
            "",
            "2026-11-30 23:01:02.123456'; DROP TABLE x; --",
        ] {
            assert_eq!(utc(bad), None, "{bad}");
        }
    }

    #[test]
    fn statement_names_pglock_and_the_run() {
        let h = Holder {
            pid: 77,
            start: "2026-11-30 23:01:02.123456".into(),
        };
        let s = check_sql(LockId::Big(-5), Mode::Shared, &h, "ab12'; --");
        assert!(s.contains("pglock: run ab12-- no longer holds lock -5"));
        assert!(s.contains("l.mode = 'ShareLock'"));
        assert!(s.contains(&id(LockId::Big(-5), Mode::Shared).to_string()));
        assert!(s.contains("= '2026-11-30 23:01:02.123456'"));
        assert!(!s.contains('%'));
    }

    #[test]
    fn token() {
        assert_eq!(token_sql(Some(15)), "SELECT pg_current_xact_id()");
        assert_eq!(token_sql(Some(12)), "SELECT txid_current()");
        assert_eq!(token_sql(None), "SELECT txid_current()");
        assert_eq!(parse_token(&[row(&["745"])]).ok(), Some(745));
        assert!(parse_token(&[row(&["-1"])]).is_err());
        assert!(parse_token(&[]).is_err());
    }
}

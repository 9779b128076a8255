//! `--limit N` (contract §4): a counting semaphore over N slot locks derived from the lock id.
//!
//! Slot `i` is the advisory lock [`key::slot_id`]`(id, i)`; a run holds one slot while its child
//! runs. Waiting is fair and quiet: waiters line up on a queue lock ([`key::queue_id`]) with the
//! server's own blocking wait, so only the head of the line is active. The head LISTENs on the
//! semaphore's channel and tries the slots when a releasing pglock NOTIFYs (within milliseconds),
//! or every second in case a holder died without notifying; then it lets the next waiter in.
//! Thousands of waiters therefore cost the server one query a second.

use crate::error::{Error, Kind, Result};
use crate::lock::fence;
use crate::lock::key::{self, LockId, LockKey};
use crate::lock::{self, describe_holders, Acquire};
use crate::lock::{Mode, Scope, Wait};
use crate::log::{self, V};
use crate::pg::Conn;
use crate::signals::Signals;
use std::time::{Duration, Instant};

/// The largest `--limit`.
pub const MAX_LIMIT: u32 = 10_000;

/// How often the head of the line tries the slots without a notification.
const FALLBACK_POLL: Duration = Duration::from_secs(1);

/// The LISTEN/NOTIFY channel of the semaphore on `id` (a bigint id: `--limit` refuses the
/// two-int4 form, whose slots would have no id).
pub fn channel(id: LockId) -> String {
    match id {
        LockId::Big(id) => format!("pglock_{:016x}", id as u64),
        LockId::Pair(a, b) => format!("pglock_{:08x}_{:08x}", a as u32, b as u32),
    }
}

pub struct Slot {
    pub index: u32,
    /// The slot's own lock, the one held while the child runs.
    pub key: LockKey,
    pub holder: fence::Holder,
}

/// Takes a free slot if there is one, and in the same round trip waits out the fenced
/// transactions of its earlier holders (contract §11: each slot has its own fence).
fn try_slots(conn: &mut Conn, a: &Acquire, n: u32, signals: &Signals) -> Result<Option<Slot>> {
    let Some(id) = a.key.id.big() else {
        return Ok(None);
    };
    let slot_fence = key::hash_sql(&format!(
        "({})::text || ':fence'",
        key::hash_sql(&format!("'{id}:' || s.i"))
    ));
    // The guard refuses when the serving session holds any slot (see lock::guard_sql). It reads
    // the slot ids only for the locks that session holds: usually none.
    let any_slot = format!(
        "l.objsubid = 1 AND ((l.classid::int8 << 32) | l.objid::int8) IN (SELECT {} FROM generate_series(0, {}) AS i)",
        key::hash_sql(&format!("'{id}:' || i")),
        n.saturating_sub(1)
    );
    let sql = format!(
        "{}; SELECT s.i, pg_backend_pid(), {}, pg_try_advisory_xact_lock({slot_fence}) FROM ({}) AS s",
        lock::guard_sql(lock::expected_backend(conn, a), &any_slot, None),
        fence::BACKEND_START_SQL,
        key::slot_sql(id, n)
    );
    let r = lock::query(conn, &sql, signals);
    let rows = lock::guarded(conn, a, r, signals)?;
    let Some(r) = rows.first() else {
        return Ok(None);
    };
    let index: Option<u32> = r.first().cloned().flatten().and_then(|i| i.parse().ok());
    let (Some(index), Some(holder)) = (index, fence::Holder::from_row(r)) else {
        return Err(Error::unavailable(
            "the server's answer to the slot statement was not a slot, pid and start",
        ));
    };
    let key = LockKey::from_id(LockId::Big(key::slot_id(id, index)));
    if index >= n {
        return Err(Error::unavailable(
            "the server answered a slot out of range",
        ));
    }
    if r.get(3).cloned().flatten().as_deref() != Some("t") {
        // A fenced transaction of the slot's earlier holder is still open: let the slot go and
        // try again later (on the next release or poll), as if it had been taken.
        lock::query(
            conn,
            &format!(
                "SELECT pg_advisory_unlock({}) WHERE {}",
                key.id.sql_args(),
                holder.serving_sql()
            ),
            signals,
        )?;
        return Ok(None);
    }
    Ok(Some(Slot { index, key, holder }))
}

fn slot_holders(conn: &mut Conn, id: i64, n: u32, signals: &Signals) -> Result<Vec<lock::Holder>> {
    let mut all = Vec::new();
    for i in 0..n.min(8) {
        all.extend(lock::holders(
            conn,
            &LockKey::from_id(LockId::Big(key::slot_id(id, i))),
            signals,
        )?);
    }
    Ok(all)
}

/// Takes one of `n` slots, waiting as `a.wait` says.
pub fn acquire(conn: &mut Conn, a: &Acquire, n: u32, signals: &Signals) -> Result<Slot> {
    let start = Instant::now();
    let label = a.key.label();
    let Some(id) = a.key.id.big() else {
        return Err(Error::internal(format!(
            "--limit reached lock \"{label}\", which has no bigint id"
        )));
    };
    if let Some(slot) = try_slots(conn, a, n, signals)? {
        return Ok(slot);
    }
    let busy = |conn: &mut Conn, why: &str| {
        let h = slot_holders(conn, id, n, signals).unwrap_or_default();
        Error::new(
            Kind::NotAcquired(a.conflict_exit_code),
            format!(
                "all {n} slots of lock \"{label}\" are taken ({why}): {}; the command was not run",
                describe_holders(&h)
            ),
        )
    };
    if a.wait == Wait::Once {
        return Err(busy(conn, "--no-wait"));
    }
    let deadline = match a.wait {
        Wait::Timeout(d) => Some(start + d),
        _ => None,
    };
    // Line up behind the other waiters: the server's queue, no polling.
    let queue = LockKey::described(
        LockId::Big(key::queue_id(id)),
        format!("{label} (queue for one of {n} slots)"),
    );
    let left = deadline.map(|d| {
        Wait::Timeout(
            d.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        )
    });
    let in_line = Acquire {
        key: &queue,
        mode: Mode::Exclusive,
        scope: Scope::Session,
        wait: left.unwrap_or(Wait::Forever),
        fence: false,
        ..*a
    };
    let queued = lock::acquire(conn, &in_line, signals).map_err(|e| match e.kind {
        Kind::NotAcquired(_) => Error::new(e.kind, format!("all {n} slots of lock \"{label}\" stayed taken until --timeout; the command was not run")),
        _ => e,
    })?;
    // Head of the line: listen first, so that no release between a try and the wait is missed.
    let chan = channel(a.key.id);
    lock::query(conn, &format!("LISTEN {chan}"), signals)?;
    log::info(
        "waiting",
        &format!("first in line for one of {n} slots of lock \"{label}\"; waiting for a release"),
        &[("waited_ms", V::I(start.elapsed().as_millis() as i64))],
    );
    loop {
        if let Some(slot) = try_slots(conn, a, n, signals)? {
            // Let the next waiter move up.
            lock::query(
                conn,
                &format!(
                    "UNLISTEN {chan}; SELECT pg_advisory_unlock({}) WHERE {}",
                    queue.id.sql_args(),
                    queued.holder.serving_sql()
                ),
                signals,
            )?;
            return Ok(slot);
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Err(busy(conn, "--timeout reached"));
        }
        let wake = deadline.map_or(now + FALLBACK_POLL, |d| d.min(now + FALLBACK_POLL));
        match conn.wait_notification(Some(wake), signals) {
            Ok(_) => {}
            Err(crate::pg::ReadErr::Signal(s)) => {
                return Err(Error::new(
                    Kind::Signal(s as i32),
                    format!(
                    "{s} received while waiting for a slot of lock \"{label}\"; nothing was run"
                ),
                ))
            }
            Err(crate::pg::ReadErr::Closed(m) | crate::pg::ReadErr::Protocol(m)) => {
                return Err(Error::unavailable(format!(
                    "lost the connection while waiting for a slot: {m}"
                )))
            }
            Err(crate::pg::ReadErr::Timeout) => {}
        }
    }
}

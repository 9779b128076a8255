//! One bounded round trip on a connection, with errors that say what it was for: the helper
//! every command and the lock layer use before the child starts (`status`, `history`, `key`,
//! taking the lock, the ledger, the semaphore's queue).

use super::{Conn, QueryResult, ReadErr, Rows};
use crate::error::{Error, Kind, Result};
use crate::log;
use crate::signals::Signals;
use std::time::{Duration, Instant};

/// How long a cancel request may take (connecting, sending, the server closing): a server that
/// answers nothing does not hold pglock longer than this beyond the bound that gave up on it.
pub const CANCEL_BOUND: Duration = Duration::from_secs(1);

/// One round trip, bounded by the connection's round-trip deadline (`connect_timeout`, and the
/// run's `-n` or `-w` bound). `doing` completes the error messages: "while taking the lock". A
/// statement not answered in time is cancelled (within `CANCEL_BOUND`) and the connection given
/// up: nothing of pglock's is left waiting on a live server, and the caller closes the socket.
pub fn query(conn: &mut Conn, sql: &str, signals: &Signals, doing: &str) -> Result<Rows> {
    let deadline = conn.round_trip_deadline();
    let start = Instant::now();
    match exchange(conn, sql, deadline, signals, &|| {}) {
        Ok(QueryResult::Rows(r)) => Ok(r),
        Ok(QueryResult::Error(e)) => {
            Err(Error::unavailable(format!("the server refused a query: {e}")).with_code(&e.code))
        }
        Err(ReadErr::Signal(s)) => Err(Error::new(
            Kind::Signal(s as i32),
            format!("{s} received {doing}"),
        )),
        Err(ReadErr::Timeout) => Err(unanswered(conn, start)),
        Err(ReadErr::Protocol(m)) => Err(Error::unavailable(format!(
            "{}: {m}",
            conn.target().describe()
        ))),
        Err(ReadErr::Closed(m)) => Err(lost_connection(conn, m, doing)),
    }
}

/// Sends `sql` and waits for its result until `deadline`.
pub fn exchange(
    conn: &mut Conn,
    sql: &str,
    deadline: Instant,
    signals: &Signals,
    sent: &dyn Fn(),
) -> std::result::Result<QueryResult, ReadErr> {
    conn.send_query(sql)?;
    sent();
    conn.wait_result(Some(deadline), signals)
}

/// A lost connection. Transient (contract §4: a run retries on a new connection within its
/// wait) when the socket closed or failed, or the server ended the session as it stops (57P01,
/// 57P02, 57P03); not when it ended it for another reason.
fn lost_connection(conn: &Conn, m: String, doing: &str) -> Error {
    let e = Error::unavailable(format!(
        "lost the connection to {} {doing}: {m}",
        conn.target().describe()
    ));
    match conn.ended_with() {
        Some(code) if !super::transient_sqlstate(code) => e.with_code(code),
        Some(code) => e.with_code(code).transient(),
        None => e.transient(),
    }
}

/// A statement the server did not answer in time: cancelled, the connection given up.
fn unanswered(conn: &mut Conn, since: Instant) -> Error {
    let secs = since.elapsed().as_secs_f64();
    let why = format!(
        "no answer from {} for {secs:.1} s (the bound of a round trip: connect_timeout, {} s without it, and the run's -n or --timeout bound)",
        conn.target().describe(),
        super::DEFAULT_CONNECT_TIMEOUT.as_secs()
    );
    if let Err(e) = conn.cancel(Instant::now() + CANCEL_BOUND) {
        log::debug("cancel", &format!("cancel request failed: {e}"));
    }
    conn.abandon(&why);
    Error::unavailable(format!(
        "{why}; the statement was cancelled and the connection closed"
    ))
}

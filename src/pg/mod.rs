//! A small PostgreSQL client for exactly what pglock needs: connect (TCP or Unix socket, TLS),
//! authenticate, simple queries, cancel requests, and a view of the socket for the main loop's
//! `poll`. The messages and SCRAM are postgres-protocol's; the socket, TLS and the waiting are
//! pglock's own.
//!
//! Why not a general client: pglock's one thread waits on the lock socket and on signals at the
//! same time (a signal cancels a server-side wait at once; a connection closed by the server is
//! noticed at once while the child runs), and every session setting goes in the startup packet so
//! that the uncontended path costs one round trip for the lock and one for the release. Every read
//! goes through `poll` with the signal pipe and an optional deadline, so no wait ignores a signal.
//!
//! The rest of pglock sees typed results only (rows, a server error, a notification, a lost
//! connection), never bytes: `wire` turns what the server sends into `Backend` messages and
//! refuses anything malformed or oversized as a protocol violation, after which the connection is
//! not used again.

mod auth;
mod connect;
pub mod conninfo;
mod query;
mod tls;
mod wire;

pub(crate) use connect::transient_sqlstate;
pub use connect::{round_trip_bound, DEFAULT_CONNECT_TIMEOUT};
pub use query::{exchange, query, CANCEL_BOUND};
pub use wire::ServerError;

use crate::pg::conninfo::{Host, Target};
use crate::signals::Signals;
use bytes::BytesMut;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use postgres_protocol::message::frontend;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use wire::{Backend, Inbox};

/// Why a read returned without a result.
#[derive(Debug)]
pub enum ReadErr {
    /// The deadline passed.
    Timeout,
    /// A signal that cancels waiting arrived.
    Signal(nix::sys::signal::Signal),
    /// The server closed the connection, ended the session, or the socket failed.
    Closed(String),
    /// The server sent something malformed or out of place: it is not trusted again.
    Protocol(String),
}

impl std::fmt::Display for ReadErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadErr::Timeout => write!(f, "timed out"),
            ReadErr::Signal(s) => write!(f, "{s} received"),
            ReadErr::Closed(m) | ReadErr::Protocol(m) => write!(f, "{m}"),
        }
    }
}

pub use wire::TxStatus;

/// Rows of a simple query's last result set, as text.
pub type Rows = Vec<Vec<Option<String>>>;

#[derive(Debug)]
pub enum QueryResult {
    Rows(Rows),
    Error(ServerError),
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tls::TlsStream>),
}

/// The state of the query under way.
#[derive(Default)]
struct Pending {
    rows: Rows,
    /// The rows' size so far, held to `MAX_RESULT`.
    bytes: usize,
    error: Option<ServerError>,
}

/// The largest result a connection keeps, by default: the lock session's queries return a row
/// or two, so a server that sends rows without end is stopped here rather than by the memory
/// running out. `pglock status` (a row per advisory lock on the database) allows more.
const MAX_RESULT: usize = 1024 * 1024;
const MAX_LARGE_RESULT: usize = 64 * 1024 * 1024;

/// What a row costs in memory, roughly: the row's vector, and for each value its `Option<String>`
/// and its heap block (allocator overhead included).
fn row_cost(r: &[Option<String>]) -> usize {
    64 + r
        .iter()
        .map(|v| 48 + v.as_ref().map_or(0, String::len))
        .sum::<usize>()
}

/// The major version in a `server_version` string: "15.4 (Debian 15.4-1)" -> 15, "9.6.2" -> 9.
fn major_version(v: &str) -> Option<u32> {
    v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

pub struct Conn {
    stream: Stream,
    inbox: Inbox,
    target: Target,
    user: String,
    backend_pid: i32,
    secret_key: i32,
    server_params: HashMap<String, String>,
    /// The transaction status of the last ReadyForQuery.
    tx_status: TxStatus,
    pending: Option<Pending>,
    notified: bool,
    /// Set by the first protocol violation or loss: every later read returns it again.
    broken: Option<String>,
    /// The SQLSTATE of the FATAL error with which the server ended the session, if it did.
    ended_with: Option<String>,
    max_result: usize,
    /// How long one round trip before the child starts may take (`connect_timeout`, or
    /// `DEFAULT_CONNECT_TIMEOUT`): a server that answers nothing is then given up.
    round_trip: Duration,
    /// The latest time any round trip may end (`-n`: the try's bound; `-w`: the run's deadline
    /// and its margin), on top of `round_trip`.
    deadline: Option<Instant>,
}

/// Session settings for the startup packet.
pub struct Startup<'a> {
    pub application_name: &'a str,
    /// `-c name=value` settings (the lock session's timeouts).
    pub settings: Vec<(&'a str, String)>,
    /// TCP keepalive and user timeout of pglock's own socket, from the heartbeat.
    pub client_keepalive: Option<Duration>,
    /// Work to do while the server starts the session (it forks a backend: the longest wait of
    /// a connect), called once the startup message is sent.
    pub while_waiting: Option<&'a dyn Fn()>,
}

/// Server parameters kept (ParameterStatus): a bound, so a server cannot grow pglock's memory
/// by announcing new names forever.
const MAX_SERVER_PARAMS: usize = 64;

/// Waits until `fd` is readable (or writable), a cancelling signal arrives, or the deadline passes.
fn wait_fd(
    fd: BorrowedFd<'_>,
    write: bool,
    deadline: Option<Instant>,
    signals: &Signals,
) -> Result<(), ReadErr> {
    loop {
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(ReadErr::Timeout);
                }
                PollTimeout::try_from(left.as_millis().clamp(1, i32::MAX as u128) as i32)
                    .unwrap_or(PollTimeout::MAX)
            }
        };
        let want = if write {
            PollFlags::POLLOUT
        } else {
            PollFlags::POLLIN
        };
        let mut fds = [
            PollFd::new(fd, want),
            PollFd::new(signals.fd(), PollFlags::POLLIN),
        ];
        match nix::poll::poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(ReadErr::Closed(format!("poll failed: {e}"))),
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            if let Some(sig) = signals.take_cancel() {
                return Err(ReadErr::Signal(sig));
            }
        }
        if fds[0].revents().is_some_and(|r| !r.is_empty()) {
            return Ok(());
        }
    }
}

impl Conn {
    fn new(stream: Stream, target: &Target, user: &str) -> Conn {
        Conn {
            stream,
            inbox: Inbox::new(),
            target: target.clone(),
            user: user.to_string(),
            backend_pid: 0,
            secret_key: 0,
            server_params: HashMap::new(),
            tx_status: TxStatus::Idle,
            pending: None,
            notified: false,
            broken: None,
            ended_with: None,
            max_result: MAX_RESULT,
            round_trip: connect::DEFAULT_CONNECT_TIMEOUT,
            deadline: None,
        }
    }

    /// When a round trip started now must end: `round_trip` on, or the deadline if sooner.
    pub fn round_trip_deadline(&self) -> Instant {
        let bound = Instant::now() + self.round_trip;
        self.deadline.map_or(bound, |d| d.min(bound))
    }

    /// Sets the latest time any round trip may end (`None`: `round_trip` alone).
    pub fn set_deadline(&mut self, d: Option<Instant>) {
        self.deadline = d;
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn set_round_trip(&mut self, d: Duration) {
        self.round_trip = d;
    }

    pub fn round_trip(&self) -> Duration {
        self.round_trip
    }

    /// Gives the connection up (a round trip not answered in time): every later use fails at
    /// once with `why`, and a late answer is never taken for another statement's.
    pub fn abandon(&mut self, why: &str) {
        self.broken.get_or_insert(why.to_string());
    }

    /// The SQLSTATE of the FATAL error that ended the session, when the server sent one.
    pub fn ended_with(&self) -> Option<&str> {
        self.ended_with.as_deref()
    }

    /// Allows results of up to 64 MiB (`pglock status`: a row per advisory lock).
    pub fn allow_large_results(&mut self) {
        self.max_result = MAX_LARGE_RESULT;
    }

    /// The pid of the backend the server said serves this connection (its cancel key).
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// The transaction status of the last ReadyForQuery.
    pub fn tx_status(&self) -> TxStatus {
        self.tx_status
    }

    /// A parameter the server reported (ParameterStatus), such as `in_hot_standby`.
    pub fn server_param(&self, name: &str) -> Option<&str> {
        self.server_params.get(name).map(String::as_str)
    }

    /// The server's major version (15 for "15.4 (Debian 15.4-1)"), if it reported one.
    pub fn server_major(&self) -> Option<u32> {
        major_version(self.server_param("server_version")?)
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// The socket's fd, for the main loop's poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        match &self.stream {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
            Stream::Tls(s) => s.sock.as_fd(),
        }
    }

    /// A message already read (and decrypted) but not yet consumed: poll would not show it.
    pub fn has_buffered(&self) -> bool {
        self.inbox.has_message()
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.stream {
            Stream::Tcp(s) => s.write_all(data),
            Stream::Unix(s) => s.write_all(data),
            Stream::Tls(s) => s.write_all(data),
        }
    }

    /// One read from the socket into the inbox; 0 when nothing could be read yet.
    fn read_once(&mut self) -> Result<usize, ReadErr> {
        let mut tmp = [0u8; 8192];
        let n = match &mut self.stream {
            Stream::Tcp(s) => s.read(&mut tmp),
            Stream::Unix(s) => s.read(&mut tmp),
            Stream::Tls(s) => {
                let mut plain = Vec::new();
                let r = s.read_into(&mut plain);
                self.inbox.extend(&plain);
                return match r {
                    Ok(n) => Ok(n),
                    Err(e) if retry(&e) => Ok(0),
                    Err(e) => Err(self.lost(e.to_string())),
                };
            }
        };
        match n {
            Ok(0) if !self.inbox.is_empty() => Err(self.lost(
                "protocol violation: the server closed the connection in the middle of a message"
                    .into(),
            )),
            Ok(0) => Err(self.lost("the server closed the connection".into())),
            Ok(n) => {
                self.inbox.extend(&tmp[..n]);
                Ok(n)
            }
            Err(e) if retry(&e) => Ok(0),
            Err(e) => Err(self.lost(e.to_string())),
        }
    }

    fn lost(&mut self, why: String) -> ReadErr {
        self.broken.get_or_insert(why.clone());
        ReadErr::Closed(why)
    }

    fn violation(&mut self, why: String) -> ReadErr {
        self.broken.get_or_insert(why.clone());
        ReadErr::Protocol(why)
    }

    /// Reads more, waiting with poll.
    fn fill(&mut self, deadline: Option<Instant>, signals: &Signals) -> Result<(), ReadErr> {
        loop {
            wait_fd(self.fd(), false, deadline, signals)?;
            if self.read_once()? > 0 {
                return Ok(());
            }
        }
    }

    /// The next whole message, waiting for it.
    fn read_message(
        &mut self,
        deadline: Option<Instant>,
        signals: &Signals,
    ) -> Result<Backend, ReadErr> {
        loop {
            if let Some(m) = self.next_message()? {
                return Ok(m);
            }
            self.fill(deadline, signals)?;
        }
    }

    /// The next whole message if one is buffered.
    fn next_message(&mut self) -> Result<Option<Backend>, ReadErr> {
        if let Some(why) = &self.broken {
            return Err(ReadErr::Closed(why.clone()));
        }
        self.inbox.next().map_err(|e| self.violation(e))
    }

    fn set_param(&mut self, name: String, value: String) {
        if self.server_params.len() < MAX_SERVER_PARAMS || self.server_params.contains_key(&name) {
            self.server_params.insert(name, value);
        }
    }

    /// Applies one message received after startup; a finished query's result when it was the
    /// query's ReadyForQuery.
    fn apply(&mut self, m: Backend) -> Result<Option<QueryResult>, ReadErr> {
        match m {
            Backend::Parameter { name, value } => self.set_param(name, value),
            Backend::Notice => {}
            Backend::Notification => self.notified = true,
            Backend::Error(e) if e.is_fatal() || self.pending.is_none() => {
                self.ended_with.get_or_insert(e.code.clone());
                return Err(self.lost(format!("the server ended the session: {e}")));
            }
            Backend::Error(e) => {
                if let Some(p) = self.pending.as_mut() {
                    p.error.get_or_insert(e);
                }
            }
            Backend::RowDescription | Backend::Complete if self.pending.is_some() => {}
            Backend::Row(r) if self.pending.is_some() => {
                let (size, limit) = (row_cost(&r), self.max_result);
                let full = self.pending.as_mut().is_some_and(|p| {
                    p.bytes += size;
                    p.rows.push(r);
                    p.bytes > limit
                });
                if full {
                    return Err(self.violation(format!(
                        "protocol violation: the server sent a result larger than pglock accepts ({} KiB)",
                        limit / 1024
                    )));
                }
            }
            Backend::Ready(status) if self.pending.is_some() => {
                self.tx_status = status;
                let p = self.pending.take().unwrap_or_default();
                return Ok(Some(match p.error {
                    Some(e) => QueryResult::Error(e),
                    None => QueryResult::Rows(p.rows),
                }));
            }
            other => {
                return Err(self.violation(format!(
                    "protocol violation: the server sent {} {}",
                    describe(&other),
                    if self.pending.is_some() {
                        "during a query"
                    } else {
                        "with no query under way"
                    }
                )))
            }
        }
        Ok(None)
    }

    /// Applies every buffered message; the query's result as soon as it is complete.
    fn drain(&mut self) -> Result<Option<QueryResult>, ReadErr> {
        while let Some(m) = self.next_message()? {
            if let Some(r) = self.apply(m)? {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    /// Waits for a NotificationResponse (LISTEN/NOTIFY) while no query is under way. `Ok(true)`
    /// when one came, `Ok(false)` at the deadline.
    pub fn wait_notification(
        &mut self,
        deadline: Option<Instant>,
        signals: &Signals,
    ) -> Result<bool, ReadErr> {
        loop {
            self.drain()?;
            if std::mem::take(&mut self.notified) {
                return Ok(true);
            }
            match self.fill(deadline, signals) {
                Ok(()) => {}
                Err(ReadErr::Timeout) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends a simple query without waiting for its result.
    pub fn send_query(&mut self, sql: &str) -> Result<(), ReadErr> {
        if let Some(why) = &self.broken {
            return Err(ReadErr::Closed(why.clone()));
        }
        let mut buf = BytesMut::with_capacity(sql.len() + 6);
        frontend::query(sql, &mut buf)
            .map_err(|e| ReadErr::Closed(format!("cannot send the query: {e}")))?;
        self.pending = Some(Pending::default());
        self.write_all(&buf).map_err(|e| self.lost(e.to_string()))
    }

    /// Waits for the result of the query sent last. On Timeout or Signal the query is still under
    /// way and this may be called again.
    pub fn wait_result(
        &mut self,
        deadline: Option<Instant>,
        signals: &Signals,
    ) -> Result<QueryResult, ReadErr> {
        loop {
            if let Some(r) = self.drain()? {
                return Ok(r);
            }
            self.fill(deadline, signals)?;
        }
    }

    /// For the main loop, after poll: applies what is buffered and, when poll found the socket
    /// `readable`, reads once more (never otherwise: the socket blocks, and a read with nothing
    /// to read would stop the loop). Returns the query's result if it is now complete. `Err`
    /// when the connection is gone or the server broke the protocol.
    pub fn poll_result(&mut self, readable: bool) -> Result<Option<QueryResult>, ReadErr> {
        if let Some(r) = self.drain()? {
            return Ok(Some(r));
        }
        if !readable {
            return Ok(None);
        }
        self.read_once()?;
        self.drain()
    }

    /// Asks the server to cancel the query under way, through a new connection (the protocol's
    /// CancelRequest), giving up at `deadline`: a server that does not answer cannot hold pglock.
    /// The result of the cancelled query still arrives on this connection.
    pub fn cancel(&self, deadline: Instant) -> io::Result<()> {
        let mut req = BytesMut::with_capacity(16);
        frontend::cancel_request(self.backend_pid, self.secret_key, &mut req);
        let left = || {
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        };
        let mut buf = [0u8; 1];
        match &self.target.host {
            Host::Unix(dir) => {
                let mut s = UnixStream::connect(self.target.socket_path(dir))?;
                let _ = s.set_write_timeout(Some(left()));
                s.write_all(&req)?;
                // The server closes the connection once it has read the request.
                let _ = s.set_read_timeout(Some(left()));
                let _ = s.read(&mut buf);
            }
            Host::Tcp(_) => {
                let addr = match &self.stream {
                    Stream::Tcp(s) => s.peer_addr()?,
                    Stream::Tls(s) => s.sock.peer_addr()?,
                    Stream::Unix(s) => {
                        return Err(io::Error::other(format!(
                            "a TCP target on a Unix socket ({:?})",
                            s.peer_addr()
                        )))
                    }
                };
                let mut s = TcpStream::connect_timeout(&addr, left())?;
                let _ = s.set_write_timeout(Some(left()));
                s.write_all(&req)?;
                let _ = s.set_read_timeout(Some(left()));
                let _ = s.read(&mut buf);
            }
        }
        Ok(())
    }

    /// Ends the session politely (Terminate) and closes the socket: what dropping it does.
    pub fn close(self) {}
}

impl Drop for Conn {
    /// Never waits: a server that reads nothing (its receive window full) cannot hold pglock
    /// at the close, so the Terminate is sent only if the socket takes it at once.
    fn drop(&mut self) {
        let _ = nix::fcntl::fcntl(
            self.fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
        let mut buf = BytesMut::with_capacity(5);
        frontend::terminate(&mut buf);
        let _ = self.write_all(&buf);
        if let Stream::Tls(s) = &mut self.stream {
            s.close_notify();
        }
    }
}

fn retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
    )
}

/// A message's name for errors.
fn describe(m: &Backend) -> String {
    match m {
        Backend::Auth(_) => "an authentication request".into(),
        Backend::KeyData { .. } => "a cancel key".into(),
        Backend::Ready(_) => "ReadyForQuery".into(),
        Backend::RowDescription => "a row description".into(),
        Backend::Row(_) => "a row".into(),
        Backend::Complete => "a command completion".into(),
        Backend::Error(e) => format!("an error ({e})"),
        Backend::Unexpected(what) => format!("a {what} message pglock never asks for"),
        Backend::Parameter { .. } | Backend::Notice | Backend::Notification => "a message".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::conninfo::Host;

    #[test]
    fn major_version_reads_the_leading_number() {
        assert_eq!(major_version("15.4 (Debian 15.4-1.pgdg120+1)"), Some(15));
        assert_eq!(major_version("9.6.24"), Some(9));
        assert_eq!(major_version("17devel"), Some(17));
        assert_eq!(major_version(""), None);
        assert_eq!(major_version("x15"), None);
        assert_eq!(major_version("99999999999999"), None);
    }

    /// A connection whose server side is the returned socket.
    fn pair() -> (Conn, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        let t = Target {
            host: Host::Unix("/nonexistent".into()),
            port: 5432,
            hostaddr: None,
        };
        (Conn::new(Stream::Unix(a), &t, "u"), b)
    }

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn row(v: &[u8]) -> Vec<u8> {
        let mut b = 1u16.to_be_bytes().to_vec();
        b.extend_from_slice(&(v.len() as i32).to_be_bytes());
        b.extend_from_slice(v);
        msg(b'D', &b)
    }

    fn result(conn: &mut Conn) -> Result<QueryResult, ReadErr> {
        loop {
            if let Some(r) = conn.poll_result(true)? {
                return Ok(r);
            }
        }
    }

    #[test]
    fn a_query_result_and_its_transaction_status() {
        let (mut conn, mut server) = pair();
        conn.send_query("SELECT 1").unwrap();
        let mut s = row(b"t");
        s.extend(msg(b'C', b"SELECT 1\0"));
        s.extend(msg(b'Z', b"T"));
        server.write_all(&s).unwrap();
        match result(&mut conn) {
            Ok(QueryResult::Rows(r)) => assert_eq!(r, vec![vec![Some("t".to_string())]]),
            other => panic!("{other:?}"),
        }
        assert_eq!(conn.tx_status, TxStatus::InTransaction);
    }

    #[test]
    fn a_message_after_the_result_is_applied_without_waiting() {
        let (mut conn, mut server) = pair();
        conn.send_query("SELECT 1").unwrap();
        let mut s = row(b"t");
        s.extend(msg(b'Z', b"I"));
        s.extend(msg(b'N', b"SNOTICE\0Mhi\0\0"));
        server.write_all(&s).unwrap();
        assert!(matches!(result(&mut conn), Ok(QueryResult::Rows(_))));
        // The notice is buffered; the socket has nothing more: no read may wait for it.
        assert!(conn.has_buffered());
        assert!(matches!(conn.poll_result(false), Ok(None)));
        assert!(!conn.has_buffered());
    }

    #[test]
    fn rows_without_end_are_stopped_at_the_cap() {
        let (mut conn, mut server) = pair();
        conn.send_query("SELECT 1").unwrap();
        let writer = std::thread::spawn(move || {
            let chunk: Vec<u8> = (0..64).flat_map(|_| row(&[b'x'; 1000])).collect();
            while server.write_all(&chunk).is_ok() {}
        });
        match result(&mut conn) {
            Err(ReadErr::Protocol(m)) => assert!(m.contains("larger than"), "{m}"),
            other => panic!("{other:?}"),
        }
        // Broken for good: the next query fails at once.
        assert!(conn.send_query("SELECT 1").is_err());
        drop(conn);
        writer.join().unwrap();
    }

    #[test]
    fn messages_out_of_place_are_violations() {
        let (mut conn, mut server) = pair();
        // A row with no query under way.
        server.write_all(&row(b"t")).unwrap();
        assert!(matches!(conn.poll_result(true), Err(ReadErr::Protocol(_))));
        // An authentication request after startup.
        let (mut conn, mut server) = pair();
        conn.send_query("SELECT 1").unwrap();
        server.write_all(&msg(b'R', &0i32.to_be_bytes())).unwrap();
        assert!(matches!(result(&mut conn), Err(ReadErr::Protocol(_))));
    }

    #[test]
    fn a_fatal_error_ends_the_session() {
        let (mut conn, mut server) = pair();
        server
            .write_all(&msg(b'E', b"SFATAL\0VFATAL\0C57P01\0Mterminating\0\0"))
            .unwrap();
        match conn.poll_result(true) {
            Err(ReadErr::Closed(m)) => assert!(m.contains("terminating"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}

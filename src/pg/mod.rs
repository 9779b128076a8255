//! A small PostgreSQL client for exactly what pglock needs, speaking the v3 wire protocol itself:
//! connect (TCP or Unix socket, optional TLS), authenticate (trust, password, MD5, SCRAM-SHA-256),
//! simple queries, cancel requests, and a view of the socket for the main loop's `poll`.
//!
//! Why not a general client: pglock's one thread waits on the lock socket and on signals at the
//! same time (a signal cancels a server-side wait at once; a connection closed by the server is
//! noticed at once while the child runs), and every session setting goes in the startup packet so
//! that the uncontended path costs one round trip for the lock and one for the release. Every read
//! goes through `poll` with the signal pipe and an optional deadline, so no wait ignores a signal.

pub mod scram;
mod tls;

use crate::conninfo::{ConnParams, Host, SslMode, Target};
use crate::error::{Error, Result};
use crate::signals::Signals;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// An error or notice sent by the server.
#[derive(Debug, Clone, Default)]
pub struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ServerError {
    pub fn parse(body: &[u8]) -> ServerError {
        let mut e = ServerError::default();
        for field in body.split(|b| *b == 0) {
            if field.is_empty() {
                continue;
            }
            let v = String::from_utf8_lossy(&field[1..]).into_owned();
            match field[0] {
                b'V' => e.severity = v,
                b'S' if e.severity.is_empty() => e.severity = v,
                b'C' => e.code = v,
                b'M' => e.message = v,
                b'D' => e.detail = Some(v),
                b'H' => e.hint = Some(v),
                _ => {}
            }
        }
        e
    }
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " ({d})")?;
        }
        Ok(())
    }
}

/// Why a read returned without a message.
#[derive(Debug)]
pub enum ReadErr {
    /// The deadline passed.
    Timeout,
    /// A signal that cancels waiting arrived.
    Signal(nix::sys::signal::Signal),
    /// The server closed the connection or the socket failed.
    Closed(String),
}

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

pub struct Conn {
    stream: Stream,
    buf: Vec<u8>,
    target: Target,
    user: String,
    pub backend_pid: i32,
    secret_key: i32,
    pub server_params: HashMap<String, String>,
    /// Session settings that could not go in the startup packet (a pooler such as PgBouncer
    /// refuses `options`): the caller applies them with SET or SET LOCAL.
    pub deferred_settings: Vec<(String, String)>,
    /// The transaction status of the last ReadyForQuery: b'I' idle, b'T' in a transaction,
    /// b'E' in a failed transaction.
    pub tx_status: u8,
    // A query's state while its result arrives across several reads.
    rows: Rows,
    error: Option<ServerError>,
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

const SSL_REQUEST: i32 = 80_877_103;
const CANCEL_REQUEST: i32 = 80_877_102;
const PROTOCOL_3_0: i32 = 196_608;

fn deadline_after(t: Option<Duration>) -> Option<Instant> {
    t.map(|d| Instant::now() + d)
}

/// Waits until `fd` is readable (or writable), a cancelling signal arrives, or the deadline passes.
fn wait_fd(
    fd: BorrowedFd<'_>,
    write: bool,
    deadline: Option<Instant>,
    signals: &Signals,
) -> std::result::Result<(), ReadErr> {
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

fn put_cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// A tagged frontend message.
fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(body.len() + 5);
    m.push(tag);
    m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Quotes a `-c` setting value for the `options` startup parameter (spaces and backslashes).
fn options_escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace(' ', "\\ ")
}

impl Conn {
    /// Connects to the first target that accepts (contract §3: hosts in order).
    /// Connects to the first target, in the listed order, that accepts and is a primary
    /// (contract §3): a hot standby is skipped, and refused when no primary is listed, because an
    /// advisory lock taken there excludes nobody on the primary.
    pub fn connect(params: &ConnParams, startup: &Startup, signals: &Signals) -> Result<Conn> {
        // Every host's failure, reported together when none can be used (as libpq does).
        let mut failed: Vec<Error> = Vec::new();
        let mut standbys = Vec::new();
        for target in &params.targets {
            match Self::connect_with_settings(params, target, startup, signals) {
                Ok(mut c) => match c.is_standby(signals) {
                    Ok(false) => return Ok(c),
                    Ok(true) => {
                        crate::log::debug(
                            "connect",
                            &format!(
                                "{} is a hot standby; trying the next host",
                                target.describe()
                            ),
                        );
                        standbys.push(target.describe());
                        c.close();
                    }
                    Err(e) if matches!(e.kind, crate::error::Kind::Signal(_)) => return Err(e),
                    Err(e) => failed.push(e),
                },
                Err(e) if e.kind == crate::error::Kind::Unavailable && params.targets.len() > 1 => {
                    crate::log::debug("connect", &e.msg);
                    failed.push(e);
                }
                Err(e) => return Err(e),
            }
        }
        let reasons = |failed: &[Error]| {
            failed
                .iter()
                .map(|e| e.msg.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        };
        if !standbys.is_empty() {
            return Err(Error::unavailable(format!(
                "{} {} a hot standby: an advisory lock there excludes nobody on the primary; connect to the primary (list it in the connection string){}",
                standbys.join(", "),
                if standbys.len() == 1 { "is" } else { "are" },
                if failed.is_empty() { String::new() } else { format!("; {}", reasons(&failed)) }
            )));
        }
        match failed.len() {
            0 => Err(Error::usage("no host to connect to")),
            1 => Err(failed.remove(0)),
            _ => {
                let all = reasons(&failed);
                let mut e = failed.pop().expect("two or more");
                e.msg = format!("no host could be used: {all}");
                Err(e)
            }
        }
    }

    /// Connects; a server that does not know one of the session settings (idle_session_timeout
    /// before 14, tcp_user_timeout before 12) gets them without it.
    fn connect_with_settings(
        params: &ConnParams,
        t: &Target,
        startup: &Startup,
        signals: &Signals,
    ) -> Result<Conn> {
        let mut settings = startup.settings.clone();
        loop {
            let st = Startup {
                application_name: startup.application_name,
                settings: settings.clone(),
                client_keepalive: startup.client_keepalive,
                while_waiting: startup.while_waiting,
            };
            match Self::connect_target(params, t, &st, signals) {
                // PgBouncer and other poolers refuse the options parameter: connect without it
                // and leave the settings to SET statements.
                Err(e)
                    if e.msg.contains("unsupported startup parameter: options")
                        && !settings.is_empty() =>
                {
                    crate::log::debug("connect", "the server (a pooler?) refuses startup options; applying the session settings with SET");
                    let st = Startup {
                        application_name: startup.application_name,
                        settings: Vec::new(),
                        client_keepalive: startup.client_keepalive,
                        while_waiting: startup.while_waiting,
                    };
                    let mut c = Self::connect_target(params, t, &st, signals)?;
                    c.deferred_settings = settings
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.clone()))
                        .collect();
                    return Ok(c);
                }
                Err(e) if e.sqlstate.as_deref() == Some("42704") => {
                    let before = settings.len();
                    settings.retain(|(k, _)| !e.msg.contains(&format!("\"{k}\"")));
                    if settings.len() == before {
                        return Err(e);
                    }
                    crate::log::debug(
                        "connect",
                        &format!(
                            "retrying without a setting the server does not know: {}",
                            e.msg
                        ),
                    );
                }
                other => return other,
            }
        }
    }

    /// Whether the server is a hot standby: reported at connection by PostgreSQL 14 and later,
    /// asked with one query of older servers.
    fn is_standby(&mut self, signals: &Signals) -> Result<bool> {
        if let Some(v) = self.server_params.get("in_hot_standby") {
            return Ok(v == "on");
        }
        let who = self.target.describe();
        match self
            .send_query("SELECT pg_is_in_recovery()")
            .and_then(|()| self.wait_result(None, signals))
        {
            Ok(QueryResult::Rows(r)) => Ok(matches!(
                r.first()
                    .and_then(|r| r.first())
                    .cloned()
                    .flatten()
                    .as_deref(),
                Some("t")
            )),
            Ok(QueryResult::Error(e)) => Err(Error::unavailable(format!("{who}: {e}"))),
            Err(e) => Err(Error::unavailable(format!("{who}: {e:?}"))),
        }
    }

    fn who(params: &ConnParams, t: &Target) -> String {
        format!("{} as user \"{}\"", t.describe(), params.user)
    }

    fn connect_target(
        params: &ConnParams,
        t: &Target,
        startup: &Startup,
        signals: &Signals,
    ) -> Result<Conn> {
        let who = Self::who(params, t);
        let deadline = deadline_after(params.connect_timeout);
        let fail = |what: String| Error::unavailable(format!("cannot connect to {who}: {what}"));
        let io_fail = |e: ReadErr| connect_error(&who, e);
        let plain =
            Self::open_socket(t, deadline, startup.client_keepalive, signals).map_err(io_fail)?;
        let tls_wanted = matches!(t.host, Host::Tcp(_))
            && matches!(
                params.sslmode,
                SslMode::Prefer | SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
            );
        let mut conn = Conn {
            stream: plain,
            buf: Vec::with_capacity(8192),
            target: t.clone(),
            user: params.user.clone(),
            backend_pid: 0,
            secret_key: 0,
            server_params: HashMap::new(),
            rows: Vec::new(),
            deferred_settings: Vec::new(),
            tx_status: b'I',
            error: None,
        };
        if tls_wanted {
            let mut req = Vec::with_capacity(8);
            req.extend_from_slice(&8i32.to_be_bytes());
            req.extend_from_slice(&SSL_REQUEST.to_be_bytes());
            conn.write_all(&req).map_err(|e| fail(e.to_string()))?;
            let mut answer = [0u8; 1];
            conn.read_raw_exact(&mut answer, deadline, signals)
                .map_err(io_fail)?;
            match answer[0] {
                b'S' => {
                    let Stream::Tcp(sock) = std::mem::replace(
                        &mut conn.stream,
                        Stream::Unix(UnixStream::pair().map_err(|e| fail(e.to_string()))?.0),
                    ) else {
                        unreachable!("TLS is only requested on TCP")
                    };
                    let name = t.host_name();
                    match tls::handshake(sock, &name, params, deadline, signals) {
                        Ok(s) => conn.stream = Stream::Tls(Box::new(s)),
                        Err(tls::TlsErr::Read(e)) => return Err(io_fail(e)),
                        Err(tls::TlsErr::Tls(m)) if params.sslmode == SslMode::Prefer => {
                            crate::log::debug(
                                "connect",
                                &format!("TLS failed ({m}); sslmode=prefer retries without TLS"),
                            );
                            let mut p = params.clone();
                            p.sslmode = SslMode::Disable;
                            return Self::connect_target(&p, t, startup, signals);
                        }
                        Err(tls::TlsErr::Tls(m)) => {
                            return Err(fail(format!("TLS handshake failed: {m}")))
                        }
                        Err(tls::TlsErr::Config(m)) => return Err(fail(m)),
                    }
                }
                b'N' if params.sslmode == SslMode::Prefer => {}
                b'N' => {
                    return Err(fail(format!(
                        "the server does not accept TLS, and sslmode={} requires it",
                        sslmode_name(params.sslmode)
                    )))
                }
                _ => {
                    return Err(fail(
                        "unexpected answer to the TLS request (not a PostgreSQL server?)".into(),
                    ))
                }
            }
        }
        conn.startup(params, startup, deadline, signals, &who)?;
        Ok(conn)
    }

    fn open_socket(
        t: &Target,
        deadline: Option<Instant>,
        keepalive: Option<Duration>,
        signals: &Signals,
    ) -> std::result::Result<Stream, ReadErr> {
        match &t.host {
            Host::Unix(dir) => {
                let path = t.socket_path(dir);
                UnixStream::connect(&path)
                    .map(Stream::Unix)
                    .map_err(|e| ReadErr::Closed(e.to_string()))
            }
            Host::Tcp(h) => {
                let addrs: Vec<SocketAddr> = (h.as_str(), t.port)
                    .to_socket_addrs()
                    .map_err(|e| ReadErr::Closed(format!("cannot resolve host name \"{h}\": {e}")))?
                    .collect();
                let mut last = ReadErr::Closed(format!("host name \"{h}\" has no address"));
                for addr in addrs {
                    match tcp_connect(addr, deadline, signals) {
                        Ok(s) => {
                            let _ = s.set_nodelay(true);
                            if let Some(hb) = keepalive {
                                set_keepalive(&s, hb);
                            }
                            return Ok(Stream::Tcp(s));
                        }
                        Err(e @ ReadErr::Signal(_)) => return Err(e),
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
        }
    }

    fn startup(
        &mut self,
        params: &ConnParams,
        st: &Startup,
        deadline: Option<Instant>,
        signals: &Signals,
        who: &str,
    ) -> Result<()> {
        let mut body = Vec::with_capacity(256);
        body.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
        put_cstr(&mut body, "user");
        put_cstr(&mut body, &params.user);
        put_cstr(&mut body, "database");
        put_cstr(&mut body, &params.dbname);
        put_cstr(&mut body, "application_name");
        put_cstr(&mut body, st.application_name);
        let mut options: Vec<String> = st
            .settings
            .iter()
            .map(|(k, v)| format!("-c {k}={}", options_escape(v)))
            .collect();
        if let Some(user_opts) = &params.options {
            options.push(user_opts.clone());
        }
        if !options.is_empty() {
            put_cstr(&mut body, "options");
            put_cstr(&mut body, &options.join(" "));
        }
        body.push(0);
        let mut msg = Vec::with_capacity(body.len() + 4);
        msg.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        msg.extend_from_slice(&body);
        let fail = |m: String| Error::unavailable(format!("cannot connect to {who}: {m}"));
        self.write_all(&msg).map_err(|e| fail(e.to_string()))?;
        if let Some(work) = st.while_waiting {
            work();
        }

        let mut scram: Option<scram::Scram> = None;
        loop {
            let (tag, body) = self
                .read_message(deadline, signals)
                .map_err(|e| connect_error(who, e))?;
            match tag {
                b'R' => {
                    let kind = be_i32(&body, 0);
                    let password = || {
                        params.password_for(&self.target).ok_or_else(|| {
                            fail("the server asks for a password and none is set (PGPASSWORD, ~/.pgpass or the connection string)".into())
                        })
                    };
                    match kind {
                        0 => {}
                        3 => {
                            let mut b = Vec::new();
                            put_cstr(&mut b, &password()?);
                            self.write_all(&message(b'p', &b)).map_err(|e| fail(e.to_string()))?;
                        }
                        5 => {
                            let resp = scram::md5_response(&params.user, &password()?, &body[4..8.min(body.len())]);
                            let mut b = Vec::new();
                            put_cstr(&mut b, &resp);
                            self.write_all(&message(b'p', &b)).map_err(|e| fail(e.to_string()))?;
                        }
                        10 => {
                            let mechs: Vec<&[u8]> = body[4..].split(|b| *b == 0).collect();
                            if !mechs.contains(&&b"SCRAM-SHA-256"[..]) {
                                return Err(fail("the server offers no SASL mechanism pglock supports (SCRAM-SHA-256)".into()));
                            }
                            let s = scram::Scram::new(&password()?).map_err(|e| Error::internal(format!("no randomness for SCRAM: {e}")))?;
                            let first = s.client_first();
                            let mut b = Vec::new();
                            put_cstr(&mut b, "SCRAM-SHA-256");
                            b.extend_from_slice(&(first.len() as i32).to_be_bytes());
                            b.extend_from_slice(first.as_bytes());
                            self.write_all(&message(b'p', &b)).map_err(|e| fail(e.to_string()))?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().ok_or_else(|| fail("unexpected SASL message".into()))?;
                            let fin = s.client_final(&String::from_utf8_lossy(&body[4..])).map_err(fail)?;
                            self.write_all(&message(b'p', fin.as_bytes())).map_err(|e| fail(e.to_string()))?;
                        }
                        12 => {
                            let s = scram.as_ref().ok_or_else(|| fail("unexpected SASL message".into()))?;
                            s.verify_final(&String::from_utf8_lossy(&body[4..])).map_err(fail)?;
                        }
                        other => {
                            return Err(fail(format!("the server asks for an authentication method pglock does not support (code {other}; use password, md5 or scram-sha-256)")))
                        }
                    }
                }
                b'K' => {
                    self.backend_pid = be_i32(&body, 0);
                    self.secret_key = be_i32(&body, 4);
                }
                b'S' => self.param_status(&body),
                b'N' => {}
                b'E' => {
                    let e = ServerError::parse(&body);
                    let mut m = e.message.clone();
                    if e.code == "53300" && m.contains("too many clients") {
                        m.push_str(" (max_connections is reached: raise max_connections or wait)");
                    }
                    return Err(Error::new(
                        crate::error::Kind::Unavailable,
                        format!("cannot connect to {who}: {m}"),
                    )
                    .with_code(&e.code));
                }
                b'Z' => {
                    self.tx_status = body.first().copied().unwrap_or(b'I');
                    return Ok(());
                }
                other => {
                    return Err(fail(format!(
                        "unexpected message '{}' during startup",
                        other as char
                    )))
                }
            }
        }
    }

    fn param_status(&mut self, body: &[u8]) {
        let mut parts = body.split(|b| *b == 0);
        if let (Some(k), Some(v)) = (parts.next(), parts.next()) {
            self.server_params.insert(
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            );
        }
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
    /// Only a complete message counts: with part of one, the rest is still on the socket, and
    /// poll will say so.
    pub fn has_buffered(&self) -> bool {
        self.buf.len() >= 5 && self.buf.len() > be_i32(&self.buf, 1).max(0) as usize
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.stream {
            Stream::Tcp(s) => s.write_all(data),
            Stream::Unix(s) => s.write_all(data),
            Stream::Tls(s) => s.write_all(data),
        }
    }

    /// Reads more bytes into the buffer, waiting with poll.
    fn fill(
        &mut self,
        deadline: Option<Instant>,
        signals: &Signals,
    ) -> std::result::Result<(), ReadErr> {
        loop {
            wait_fd(self.fd(), false, deadline, signals)?;
            let mut tmp = [0u8; 8192];
            let n = match &mut self.stream {
                Stream::Tcp(s) => s.read(&mut tmp),
                Stream::Unix(s) => s.read(&mut tmp),
                Stream::Tls(s) => match s.read_into(&mut self.buf) {
                    Ok(0) => continue,
                    Ok(_) => return Ok(()),
                    Err(e) => Err(e),
                },
            };
            match n {
                Ok(0) => return Err(ReadErr::Closed("the server closed the connection".into())),
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(());
                }
                Err(e)
                    if e.kind() == io::ErrorKind::Interrupted
                        || e.kind() == io::ErrorKind::WouldBlock =>
                {
                    continue
                }
                Err(e) => return Err(ReadErr::Closed(e.to_string())),
            }
        }
    }

    fn read_raw_exact(
        &mut self,
        out: &mut [u8],
        deadline: Option<Instant>,
        signals: &Signals,
    ) -> std::result::Result<(), ReadErr> {
        while self.buf.len() < out.len() {
            self.fill(deadline, signals)?;
        }
        out.copy_from_slice(&self.buf[..out.len()]);
        self.buf.drain(..out.len());
        Ok(())
    }

    /// The next complete backend message, if one is already buffered.
    fn buffered_message(&mut self) -> Option<(u8, Vec<u8>)> {
        if self.buf.len() < 5 {
            return None;
        }
        let len = be_i32(&self.buf, 1) as usize;
        if self.buf.len() < len + 1 {
            return None;
        }
        let body = self.buf[5..len + 1].to_vec();
        let tag = self.buf[0];
        self.buf.drain(..len + 1);
        Some((tag, body))
    }

    /// Reads one backend message: (tag, body).
    pub fn read_message(
        &mut self,
        deadline: Option<Instant>,
        signals: &Signals,
    ) -> std::result::Result<(u8, Vec<u8>), ReadErr> {
        loop {
            if let Some(m) = self.buffered_message() {
                return Ok(m);
            }
            self.fill(deadline, signals)?;
        }
    }

    /// Waits for a NotificationResponse (LISTEN/NOTIFY) while no query is under way. `Ok(true)`
    /// when one came, `Ok(false)` at the deadline.
    pub fn wait_notification(
        &mut self,
        deadline: Option<Instant>,
        signals: &Signals,
    ) -> std::result::Result<bool, ReadErr> {
        loop {
            match self.read_message(deadline, signals) {
                Ok((b'A', _)) => return Ok(true),
                Ok((b'E', body)) => {
                    return Err(ReadErr::Closed(format!(
                        "the server ended the session: {}",
                        ServerError::parse(&body)
                    )))
                }
                Ok((b'S', body)) => self.param_status(&body),
                Ok(_) => {}
                Err(ReadErr::Timeout) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends a simple query without waiting for its result.
    pub fn send_query(&mut self, sql: &str) -> std::result::Result<(), ReadErr> {
        let mut b = Vec::with_capacity(sql.len() + 1);
        put_cstr(&mut b, sql);
        self.rows.clear();
        self.error = None;
        self.write_all(&message(b'Q', &b))
            .map_err(|e| ReadErr::Closed(e.to_string()))
    }

    /// Waits for the result of the query sent last. On Timeout or Signal the query is still under
    /// way and this may be called again.
    pub fn wait_result(
        &mut self,
        deadline: Option<Instant>,
        signals: &Signals,
    ) -> std::result::Result<QueryResult, ReadErr> {
        loop {
            let (tag, body) = self.read_message(deadline, signals)?;
            match tag {
                b'T' => self.rows.clear(),
                b'D' => self.rows.push(parse_row(&body)),
                b'E' => {
                    let e = ServerError::parse(&body);
                    if e.severity == "FATAL" || e.severity == "PANIC" {
                        return Err(ReadErr::Closed(format!(
                            "the server ended the session: {e}"
                        )));
                    }
                    self.error.get_or_insert(e);
                }
                b'Z' => {
                    self.tx_status = body.first().copied().unwrap_or(b'I');
                    return Ok(match self.error.take() {
                        Some(e) => QueryResult::Error(e),
                        None => QueryResult::Rows(std::mem::take(&mut self.rows)),
                    });
                }
                b'S' => self.param_status(&body),
                // CommandComplete, EmptyQueryResponse, NoticeResponse, NotificationResponse.
                _ => {}
            }
        }
    }

    /// For the main loop, after poll found the socket readable: reads what is there and returns
    /// the complete messages. `Err` when the connection is gone.
    pub fn read_available(&mut self) -> std::result::Result<Vec<(u8, Vec<u8>)>, String> {
        let mut out = Vec::new();
        if self.buffered_message().map(|m| out.push(m)).is_none() {
            let mut tmp = [0u8; 8192];
            let n = match &mut self.stream {
                Stream::Tcp(s) => s.read(&mut tmp),
                Stream::Unix(s) => s.read(&mut tmp),
                Stream::Tls(s) => s.read_into(&mut self.buf).map(|_| 0),
            };
            match n {
                Ok(0) if !matches!(self.stream, Stream::Tls(_)) => {
                    return Err("the server closed the connection".into())
                }
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e)
                    if e.kind() == io::ErrorKind::Interrupted
                        || e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        while let Some(m) = self.buffered_message() {
            out.push(m);
        }
        Ok(out)
    }

    /// Asks the server to cancel the query under way, through a new connection (the protocol's
    /// CancelRequest). The result of the cancelled query still arrives on this connection.
    pub fn cancel(&self) -> io::Result<()> {
        let mut req = Vec::with_capacity(16);
        req.extend_from_slice(&16i32.to_be_bytes());
        req.extend_from_slice(&CANCEL_REQUEST.to_be_bytes());
        req.extend_from_slice(&self.backend_pid.to_be_bytes());
        req.extend_from_slice(&self.secret_key.to_be_bytes());
        let mut buf = [0u8; 1];
        match &self.target.host {
            Host::Unix(dir) => {
                let mut s = UnixStream::connect(self.target.socket_path(dir))?;
                s.write_all(&req)?;
                // The server closes the connection once it has read the request.
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.read(&mut buf);
            }
            Host::Tcp(_) => {
                let addr = match &self.stream {
                    Stream::Tcp(s) => s.peer_addr()?,
                    Stream::Tls(s) => s.sock.peer_addr()?,
                    Stream::Unix(_) => unreachable!("TCP target"),
                };
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
                s.write_all(&req)?;
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.read(&mut buf);
            }
        }
        Ok(())
    }

    /// Ends the session politely (Terminate) and closes the socket.
    pub fn close(mut self) {
        let _ = self.write_all(&message(b'X', &[]));
        if let Stream::Tls(s) = &mut self.stream {
            s.close_notify();
        }
    }
}

/// A failed read or wait while connecting to `who`, as pglock's error.
fn connect_error(who: &str, e: ReadErr) -> Error {
    match e {
        ReadErr::Signal(s) => Error::new(
            crate::error::Kind::Signal(s as i32),
            format!("{s} received while connecting; nothing was run"),
        ),
        ReadErr::Timeout => Error::unavailable(format!(
            "cannot connect to {who}: timed out (connect_timeout)"
        )),
        ReadErr::Closed(m) => Error::unavailable(format!("cannot connect to {who}: {m}")),
    }
}

fn sslmode_name(m: SslMode) -> &'static str {
    match m {
        SslMode::Disable => "disable",
        SslMode::Allow => "allow",
        SslMode::Prefer => "prefer",
        SslMode::Require => "require",
        SslMode::VerifyCa => "verify-ca",
        SslMode::VerifyFull => "verify-full",
    }
}

fn be_i32(b: &[u8], at: usize) -> i32 {
    b.get(at..at + 4)
        .map_or(0, |s| i32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn parse_row(body: &[u8]) -> Vec<Option<String>> {
    let n = body
        .get(..2)
        .map_or(0, |b| i16::from_be_bytes([b[0], b[1]]))
        .max(0) as usize;
    let mut out = Vec::with_capacity(n);
    let mut at = 2;
    for _ in 0..n {
        let len = be_i32(body, at);
        at += 4;
        if len < 0 {
            out.push(None);
        } else {
            let end = (at + len as usize).min(body.len());
            out.push(Some(String::from_utf8_lossy(&body[at..end]).into_owned()));
            at = end;
        }
    }
    out
}

/// pglock's own side of the silent-connection bound: keepalive probes after one heartbeat of
/// silence, and unacknowledged data for two heartbeats ends the connection (Linux).
fn set_keepalive(s: &TcpStream, heartbeat: Duration) {
    use nix::sys::socket::{setsockopt, sockopt};
    let secs = heartbeat.as_secs().max(1) as u32;
    let _ = setsockopt(s, sockopt::KeepAlive, &true);
    #[cfg(target_os = "linux")]
    {
        let _ = setsockopt(s, sockopt::TcpKeepIdle, &secs);
        let _ = setsockopt(s, sockopt::TcpKeepInterval, &secs.div_ceil(2).max(1));
        let _ = setsockopt(s, sockopt::TcpKeepCount, &2u32);
        let _ = setsockopt(
            s,
            sockopt::TcpUserTimeout,
            &((heartbeat.as_millis() * 2).min(u32::MAX as u128) as u32),
        );
    }
    #[cfg(not(target_os = "linux"))]
    let _ = secs;
}

/// A non-blocking TCP connect that a signal or the deadline interrupts.
fn tcp_connect(
    addr: SocketAddr,
    deadline: Option<Instant>,
    signals: &Signals,
) -> std::result::Result<TcpStream, ReadErr> {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrStorage};
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd: OwnedFd = socket::socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| ReadErr::Closed(e.to_string()))?;
    let sa = SockaddrStorage::from(addr);
    match socket::connect(fd.as_raw_fd(), &sa) {
        Ok(()) => {}
        Err(nix::errno::Errno::EINPROGRESS) | Err(nix::errno::Errno::EINTR) => {
            wait_fd(fd.as_fd(), true, deadline, signals)?;
            let err = socket::getsockopt(&fd, socket::sockopt::SocketError)
                .map_err(|e| ReadErr::Closed(e.to_string()))?;
            if err != 0 {
                return Err(ReadErr::Closed(
                    io::Error::from_raw_os_error(err).to_string(),
                ));
            }
        }
        Err(e) => return Err(ReadErr::Closed(io::Error::from(e).to_string())),
    }
    let stream = unsafe { TcpStream::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(fd)) };
    stream
        .set_nonblocking(false)
        .map_err(|e| ReadErr::Closed(e.to_string()))?;
    Ok(stream)
}

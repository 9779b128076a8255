//! Opening a session (contract §3): the hosts in order, the socket (a host name resolved within
//! `connect_timeout` and a signal), TLS as `sslmode` says, the startup packet, authentication,
//! and the refusal of hot standbys.

use super::auth::{Auth, Channel};
use super::wire::Backend;
use super::{tls, wait_fd, Conn, QueryResult, ReadErr, Startup, Stream};
use crate::error::{Error, Kind, Result};
use crate::pg::conninfo::{ConnParams, Host, SslMode, Target};
use crate::signals::Signals;
use bytes::BytesMut;
use postgres_protocol::message::frontend;
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// The bound of a connection, and of each round trip before the child starts, when
/// `connect_timeout` is not set (libpq then waits forever): a server that accepts the TCP
/// connection and then answers nothing (a hung pooler, a frozen VM, a half-open connection)
/// cannot hold a run past it.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `connect_timeout`, or the default bound.
pub fn round_trip_bound(params: &ConnParams) -> Duration {
    params.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT)
}

impl Conn {
    /// Connects to the first target, in the listed order, that accepts and is a primary
    /// (contract §3): a hot standby is skipped, and refused when no primary is listed, because an
    /// advisory lock taken there excludes nobody on the primary.
    pub fn connect(params: &ConnParams, startup: &Startup, signals: &Signals) -> Result<Conn> {
        // Every host's failure, reported together when none can be used (as libpq does).
        let mut failed: Vec<Error> = Vec::new();
        let mut standbys = Vec::new();
        for target in &params.targets {
            match connect_with_settings(params, target, startup, signals) {
                Ok(mut c) => match c.is_standby(signals) {
                    Ok(false) => {
                        // The connection's deadline is spent; the caller sets the next one.
                        c.set_deadline(None);
                        c.set_round_trip(round_trip_bound(params));
                        return Ok(c);
                    }
                    Ok(true) => {
                        crate::log::debug(
                            "connect",
                            &format!(
                                "{} is a hot standby; trying the next host",
                                target.describe()
                            ),
                        );
                        standbys.push(target.describe());
                    }
                    Err(e) if matches!(e.kind, Kind::Signal(_)) => return Err(e),
                    Err(e) => failed.push(e),
                },
                Err(e) if e.kind == Kind::Unavailable && params.targets.len() > 1 => {
                    crate::log::debug("connect", &e.msg);
                    failed.push(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(none_usable(standbys, failed))
    }

    /// A short-lived connection for a command other than `run` (`status`, `key`): the URL given,
    /// else `DATABASE_URL`, else libpq's variables; `application_name` is `name` unless set.
    pub fn connect_for(name: &str, url: Option<String>, signals: &Signals) -> Result<Conn> {
        let params = ConnParams::resolve(crate::pg::conninfo::database_url(url).as_deref())?;
        let app = params
            .application_name
            .clone()
            .unwrap_or_else(|| name.to_string());
        let startup = Startup {
            application_name: &app,
            settings: Vec::new(),
            client_keepalive: None,
            while_waiting: None,
        };
        Conn::connect(&params, &startup, signals)
    }

    /// Whether the server is a hot standby: reported at connection by PostgreSQL 14 and later,
    /// asked with one query of older servers, within the connection's deadline (libpq's rule:
    /// `connect_timeout` covers the whole connection, the check of `target_session_attrs` too).
    fn is_standby(&mut self, signals: &Signals) -> Result<bool> {
        if let Some(v) = self.server_params.get("in_hot_standby") {
            return Ok(v == "on");
        }
        let who = self.target.describe();
        match self
            .send_query("SELECT pg_is_in_recovery()")
            .and_then(|()| self.wait_result(Some(self.round_trip_deadline()), signals))
        {
            Ok(QueryResult::Rows(r)) => Ok(matches!(
                r.first().and_then(|r| r.first()),
                Some(Some(v)) if v == "t"
            )),
            Ok(QueryResult::Error(e)) => Err(Error::unavailable(format!("{who}: {e}"))),
            Err(ReadErr::Signal(s)) => Err(signal_error(s)),
            Err(ReadErr::Timeout) => Err(Error::unavailable(format!(
                "cannot connect to {who}: no answer to the standby check (pg_is_in_recovery()) within connect_timeout"
            ))
            .transient()),
            Err(e) => Err(connect_error(&who, e)),
        }
    }

    /// Sends the startup packet and authenticates, up to the first ReadyForQuery.
    fn startup(
        &mut self,
        params: &ConnParams,
        st: &Startup,
        channel: Channel,
        deadline: Option<Instant>,
        signals: &Signals,
        who: &str,
    ) -> Result<()> {
        let fail = |m: String| Error::unavailable(format!("cannot connect to {who}: {m}"));
        let options: Vec<String> = st
            .settings
            .iter()
            .map(|(k, v)| format!("-c {k}={}", options_escape(v)))
            .chain(params.options.clone())
            .collect();
        let options = options.join(" ");
        // pglock's text is UTF-8 (the names it sends to hashtext() among it), and it reads the
        // server's text as UTF-8, whatever the client_encoding setting says.
        let mut pairs = vec![
            ("user", params.user.as_str()),
            ("database", params.dbname.as_str()),
            ("application_name", st.application_name),
            ("client_encoding", "UTF8"),
        ];
        if !options.is_empty() {
            pairs.push(("options", options.as_str()));
        }
        let mut msg = BytesMut::with_capacity(256);
        frontend::startup_message(pairs, &mut msg).map_err(|e| fail(e.to_string()))?;
        self.write_all(&msg).map_err(|e| write_error(who, e))?;
        // The first search for a NUL in the server's messages (postgres-protocol's memchr) asks
        // the CPU for its features, about 50 us in a VM, where each cpuid traps: asked now,
        // while the server starts the session, not on the way from its answer to the lock.
        let _ = memchr::memchr(0, &msg);
        if let Some(work) = st.while_waiting {
            work();
        }
        let target = self.target.clone();
        let password = || params.password_for(&target);
        let mut auth = Auth::new(params, &password, channel);
        loop {
            let m = self
                .read_message(deadline, signals)
                .map_err(|e| connect_error(who, e))?;
            match m {
                Backend::Auth(req) => {
                    if let Some(reply) = auth.answer(req).map_err(fail)? {
                        self.write_all(&reply).map_err(|e| write_error(who, e))?;
                    }
                }
                Backend::KeyData { pid, secret } => {
                    self.backend_pid = pid;
                    self.secret_key = secret;
                }
                Backend::Parameter { name, value } => self.set_param(name, value),
                Backend::Notice => {}
                Backend::Error(e) => {
                    let mut err = startup_error(who, &e);
                    // A wrong password: say where it came from (never what it is).
                    if e.code == "28P01" {
                        if let Some(from) = params.password_source(&target) {
                            err.msg
                                .push_str(&format!(" (the password came from {from})"));
                        }
                    }
                    return Err(err);
                }
                Backend::Ready(status) => {
                    self.tx_status = status;
                    return Ok(());
                }
                other => {
                    return Err(fail(format!(
                        "protocol violation: the server sent {} during startup",
                        super::describe(&other)
                    )))
                }
            }
        }
    }
}

/// The error when no host could be used. It is transient (worth trying again, contract §4) when
/// every host's failure is: a server down, starting, or a standby that a promotion may turn into
/// the primary.
fn none_usable(standbys: Vec<String>, mut failed: Vec<Error>) -> Error {
    let transient = failed.iter().all(|e| e.transient);
    let mut e = none_usable_error(standbys, &mut failed);
    e.transient = transient && e.kind == Kind::Unavailable;
    e
}

fn none_usable_error(standbys: Vec<String>, failed: &mut Vec<Error>) -> Error {
    let reasons = |failed: &[Error]| {
        failed
            .iter()
            .map(|e| e.msg.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    };
    if !standbys.is_empty() {
        return Error::unavailable(format!(
            "{} {} a hot standby: an advisory lock there excludes nobody on the primary; connect to the primary (list it in the connection string){}",
            standbys.join(", "),
            if standbys.len() == 1 { "is" } else { "are" },
            if failed.is_empty() { String::new() } else { format!("; {}", reasons(failed)) }
        ));
    }
    match failed.len() {
        0 => Error::usage("no host to connect to"),
        1 => failed.remove(0),
        _ => {
            let all = reasons(failed);
            let mut e = failed.remove(failed.len() - 1);
            e.msg = format!("no host could be used: {all}");
            e
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
            settings: settings.clone(),
            ..*startup
        };
        match connect_target(params, t, &st, signals) {
            // PgBouncer and other poolers refuse the options parameter: connect without it.
            // The lock statements make these settings local to pglock's transactions anyway
            // (lock::acquire's LOCAL_SETTINGS).
            Err(e)
                if e.msg.contains("unsupported startup parameter: options")
                    && !settings.is_empty() =>
            {
                crate::log::debug("connect", "the server (a pooler?) refuses startup options; the settings go as SET LOCAL in pglock's transactions");
                let st = Startup {
                    settings: Vec::new(),
                    ..*startup
                };
                return connect_target(params, t, &st, signals);
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

fn who(params: &ConnParams, t: &Target) -> String {
    format!("{} as user \"{}\"", t.describe(), params.user)
}

/// How the TLS negotiation ended.
enum Negotiated {
    Plain(Stream),
    Tls(Box<tls::TlsStream>),
    /// sslmode=prefer and the handshake failed: start again without TLS, as libpq does.
    RetryPlain,
}

/// Connects to one target. As libpq: with sslmode=allow, a server that refuses the session
/// without TLS is asked again with TLS; with sslmode=prefer, one that refuses it over TLS is
/// asked again without.
fn connect_target(
    params: &ConnParams,
    t: &Target,
    startup: &Startup,
    signals: &Signals,
) -> Result<Conn> {
    let mut tls_used = false;
    let first = attempt(params, t, startup, signals, &mut tls_used);
    let retry = match &first {
        // A refusal by the server, except the two that connect_with_settings answers (a
        // setting the server does not know; a pooler refusing startup options).
        Err(e)
            if e.sqlstate
                .as_deref()
                .is_some_and(|c| c != "42704" && c != "08P01") =>
        {
            match params.sslmode {
                SslMode::Allow => Some(SslMode::Require),
                SslMode::Prefer if tls_used => Some(SslMode::Disable),
                _ => None,
            }
        }
        _ => None,
    };
    let (Some(mode), Err(e)) = (retry, &first) else {
        return first;
    };
    crate::log::debug(
        "connect",
        &format!(
            "{}; sslmode={} tries again {} TLS",
            e.msg,
            params.sslmode.as_str(),
            if mode == SslMode::Disable {
                "without"
            } else {
                "with"
            }
        ),
    );
    let mut p = params.clone();
    p.sslmode = mode;
    match attempt(&p, t, startup, signals, &mut tls_used) {
        // The server is starting or stopping: that, not the other sslmode's failure, is the news.
        Err(again) if e.transient && !again.transient && !matches!(again.kind, Kind::Signal(_)) => {
            first
        }
        other => other,
    }
}

/// One connection attempt; `tls_used` tells whether the session was started over TLS.
fn attempt(
    params: &ConnParams,
    t: &Target,
    startup: &Startup,
    signals: &Signals,
    tls_used: &mut bool,
) -> Result<Conn> {
    let who = who(params, t);
    let io_fail = |e: SocketErr| socket_error(params, t, &who, e);
    let (sock, deadline) = open_socket(
        t,
        Some(round_trip_bound(params)),
        startup.client_keepalive,
        signals,
    )
    .map_err(io_fail)?;
    *tls_used = false;
    let (stream, channel) = match negotiate_tls(sock, params, t, deadline, signals, &who)? {
        Negotiated::Plain(s) => (s, Channel::Plain),
        Negotiated::Tls(s) => {
            let end_point = s.tls_server_end_point();
            (Stream::Tls(s), Channel::Tls(end_point))
        }
        Negotiated::RetryPlain => {
            let mut p = params.clone();
            p.sslmode = SslMode::Disable;
            return attempt(&p, t, startup, signals, tls_used);
        }
    };
    *tls_used = matches!(channel, Channel::Tls(_));
    let mut conn = Conn::new(stream, t, &params.user);
    conn.set_deadline(deadline);
    conn.startup(params, startup, channel, deadline, signals, &who)?;
    Ok(conn)
}

/// SSLRequest and the handshake, when sslmode asks for TLS on a TCP connection. The server's
/// one-byte answer is read alone: any byte after it, before the handshake, is refused (libpq's
/// CVE-2021-23222), so nothing a man in the middle injects there is read as a server message.
fn negotiate_tls(
    sock: Stream,
    params: &ConnParams,
    t: &Target,
    deadline: Option<Instant>,
    signals: &Signals,
    who: &str,
) -> Result<Negotiated> {
    let fail = |what: String| Error::unavailable(format!("cannot connect to {who}: {what}"));
    let wanted = matches!(
        params.sslmode,
        SslMode::Prefer | SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
    );
    let Stream::Tcp(mut tcp) = sock else {
        return Ok(Negotiated::Plain(sock));
    };
    if !wanted {
        return Ok(Negotiated::Plain(Stream::Tcp(tcp)));
    }
    let mut req = BytesMut::with_capacity(8);
    frontend::ssl_request(&mut req);
    io::Write::write_all(&mut tcp, &req).map_err(|e| write_error(who, e))?;
    // A server that is stopping or restarting closes or resets the connection here: as
    // anywhere before the session starts, that is worth trying again (contract §4).
    let mut answer = [0u8; 1];
    loop {
        wait_fd(tcp.as_fd(), false, deadline, signals).map_err(|e| connect_error(who, e))?;
        match tcp.read(&mut answer) {
            Ok(0) => {
                return Err(fail(
                    "the server closed the connection before answering the TLS request".into(),
                )
                .transient())
            }
            Ok(_) => break,
            Err(e) if super::retry(&e) => continue,
            Err(e) => {
                return Err(read_error(
                    who,
                    e,
                    "while waiting for the answer to the TLS request",
                ))
            }
        }
    }
    if unread_bytes(&tcp) {
        return Err(fail("received unencrypted data after SSL response".into()));
    }
    match answer[0] {
        b'S' => {}
        b'N' if params.sslmode == SslMode::Prefer => {
            return Ok(Negotiated::Plain(Stream::Tcp(tcp)))
        }
        b'N' => {
            return Err(fail(format!(
                "the server does not accept TLS, and sslmode={} requires it",
                params.sslmode.as_str()
            )))
        }
        // An ErrorResponse: a server too old for SSLRequest, or not PostgreSQL.
        _ => {
            return Err(fail(
                "unexpected answer to the TLS request (not a PostgreSQL server?)".into(),
            ))
        }
    }
    match tls::handshake(tcp, &t.host_name(), params, deadline, signals) {
        Ok(s) => Ok(Negotiated::Tls(Box::new(s))),
        Err(tls::TlsErr::Read(e)) => Err(connect_error(who, e)),
        Err(tls::TlsErr::Tls(m)) if params.sslmode == SslMode::Prefer => {
            crate::log::debug(
                "connect",
                &format!("TLS failed ({m}); sslmode=prefer retries without TLS"),
            );
            Ok(Negotiated::RetryPlain)
        }
        Err(tls::TlsErr::Tls(m)) => Err(fail(format!("TLS handshake failed: {m}"))),
        Err(tls::TlsErr::Config(m)) => Err(fail(m)),
    }
}

/// Whether bytes are already waiting on the socket (a peek that does not wait).
fn unread_bytes(s: &TcpStream) -> bool {
    use nix::sys::socket::{recv, MsgFlags};
    let mut b = [0u8; 1];
    matches!(
        recv(
            s.as_raw_fd(),
            &mut b,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT
        ),
        Ok(n) if n > 0
    )
}

/// A socket that could not be opened, and whether that may pass by itself.
struct SocketErr {
    err: ReadErr,
    transient: bool,
}

impl From<ReadErr> for SocketErr {
    /// A wait that timed out (`connect_timeout`) may succeed later: a host that is booting, an
    /// address moving in a failover. A signal is not retried at all.
    fn from(err: ReadErr) -> SocketErr {
        let transient = matches!(err, ReadErr::Timeout);
        SocketErr { err, transient }
    }
}

impl SocketErr {
    /// A failed system call: transient when nobody listens yet (see `transient_os_error`).
    fn os(e: io::Error) -> SocketErr {
        SocketErr {
            transient: transient_os_error(&e),
            err: ReadErr::Closed(e.to_string()),
        }
    }
}

/// Whether a socket error is what a server that is down or restarting looks like: refused (no
/// listener on the port or on the socket file), the Unix socket file missing (the server removes
/// it when it stops), reset or aborted, or a host that does not answer (rebooting, an address
/// moving). Permission errors, an unreachable network and the like are configuration.
pub(crate) fn transient_os_error(e: &io::Error) -> bool {
    use nix::errno::Errno;
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(
            Errno::ECONNREFUSED
                | Errno::ENOENT
                | Errno::ECONNRESET
                | Errno::ECONNABORTED
                | Errno::ETIMEDOUT
                | Errno::EHOSTUNREACH
                | Errno::EHOSTDOWN
        )
    )
}

/// The socket, and the deadline of the rest of the attempt. As libpq, `connect_timeout`
/// applies to each address of a host name separately (and to the look-up of the name).
fn open_socket(
    t: &Target,
    timeout: Option<Duration>,
    keepalive: Option<Duration>,
    signals: &Signals,
) -> std::result::Result<(Stream, Option<Instant>), SocketErr> {
    let deadline = || timeout.map(|d| Instant::now() + d);
    let h = match &t.host {
        Host::Unix(dir) => {
            return UnixStream::connect(t.socket_path(dir))
                .map(|s| (Stream::Unix(s), deadline()))
                .map_err(SocketErr::os)
        }
        Host::Tcp(h) => h,
    };
    let addrs = match t.hostaddr {
        Some(ip) => vec![SocketAddr::new(ip, t.port)],
        None => resolve(h, t.port, deadline(), signals)?,
    };
    let mut last = SocketErr::from(ReadErr::Closed(format!("host name \"{h}\" has no address")));
    for addr in addrs {
        let until = deadline();
        match tcp_connect(addr, until, signals) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                if let Some(hb) = keepalive {
                    set_keepalive(&s, hb);
                }
                return Ok((Stream::Tcp(s), until));
            }
            Err(
                e @ SocketErr {
                    err: ReadErr::Signal(_),
                    ..
                },
            ) => return Err(e),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A host name's addresses. getaddrinfo cannot be interrupted or given a deadline, so a name
/// (not an IP address) is looked up on a short-lived thread while this one waits with poll
/// for its answer, a signal or the deadline; an abandoned look-up ends on its own.
fn resolve(
    host: &str,
    port: u16,
    deadline: Option<Instant>,
    signals: &Signals,
) -> std::result::Result<Vec<SocketAddr>, SocketErr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let cannot = |e: String| {
        SocketErr::from(ReadErr::Closed(format!(
            "cannot resolve host name \"{host}\": {e}"
        )))
    };
    let (wake, done) = UnixStream::pair().map_err(|e| cannot(e.to_string()))?;
    let (tx, rx) = std::sync::mpsc::channel();
    let name = host.to_string();
    std::thread::Builder::new()
        .name("resolve".into())
        .spawn(move || {
            let r = (name.as_str(), port)
                .to_socket_addrs()
                .map(|a| a.collect::<Vec<_>>());
            let _ = tx.send(r);
            // Dropping `done` wakes the poll below.
            drop(done);
        })
        .map_err(|e| cannot(e.to_string()))?;
    wait_fd(wake.as_fd(), false, deadline, signals)?;
    match rx.recv() {
        Ok(Ok(a)) => Ok(a),
        Ok(Err(e)) => Err(SocketErr {
            transient: temporary_dns_failure(&e),
            ..cannot(e.to_string())
        }),
        Err(_) => Err(cannot("the look-up ended without an answer".into())),
    }
}

/// Whether a failed look-up is the resolver's "try again later" (EAI_AGAIN: no DNS server
/// answered), which passes; a name that does not exist is a configuration error.
fn temporary_dns_failure(e: &io::Error) -> bool {
    // std reports getaddrinfo's error only as gai_strerror's text: compare with that text.
    // SAFETY: gai_strerror returns a pointer to a static NUL-terminated string.
    let again = unsafe { std::ffi::CStr::from_ptr(libc::gai_strerror(libc::EAI_AGAIN)) };
    again
        .to_str()
        .is_ok_and(|t| !t.is_empty() && e.to_string().ends_with(t))
}

/// A non-blocking TCP connect that a signal or the deadline interrupts.
fn tcp_connect(
    addr: SocketAddr,
    deadline: Option<Instant>,
    signals: &Signals,
) -> std::result::Result<TcpStream, SocketErr> {
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
    .map_err(|e| SocketErr::os(e.into()))?;
    let sa = SockaddrStorage::from(addr);
    match socket::connect(fd.as_raw_fd(), &sa) {
        Ok(()) => {}
        Err(nix::errno::Errno::EINPROGRESS) | Err(nix::errno::Errno::EINTR) => {
            wait_fd(fd.as_fd(), true, deadline, signals)?;
            let err = socket::getsockopt(&fd, socket::sockopt::SocketError)
                .map_err(|e| SocketErr::os(e.into()))?;
            if err != 0 {
                return Err(SocketErr::os(io::Error::from_raw_os_error(err)));
            }
        }
        Err(e) => return Err(SocketErr::os(e.into())),
    }
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(false).map_err(SocketErr::os)?;
    Ok(stream)
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

/// Quotes a `-c` setting value for the `options` startup parameter (spaces and backslashes).
fn options_escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace(' ', "\\ ")
}

fn signal_error(s: nix::sys::signal::Signal) -> Error {
    Error::new(
        Kind::Signal(s as i32),
        format!("{s} received while connecting; nothing was run"),
    )
}

/// A failed read or wait while connecting to `who`, as pglock's error. A server that went away
/// or did not answer before the session started is transient (a restart in progress); one that
/// broke the protocol is not.
fn connect_error(who: &str, e: ReadErr) -> Error {
    match e {
        ReadErr::Signal(s) => signal_error(s),
        ReadErr::Timeout => Error::unavailable(format!(
            "cannot connect to {who}: timed out (connect_timeout)"
        ))
        .transient(),
        ReadErr::Closed(m) => {
            Error::unavailable(format!("cannot connect to {who}: {m}")).transient()
        }
        ReadErr::Protocol(m) => Error::unavailable(format!("cannot connect to {who}: {m}")),
    }
}

/// A failed write while connecting: a server that went away (reset, closed) is transient.
fn write_error(who: &str, e: io::Error) -> Error {
    read_error(who, e, "while sending")
}

/// A failed socket read or write while connecting, `what` saying when: transient when the
/// peer went away (reset, aborted, a broken pipe), configuration otherwise.
fn read_error(who: &str, e: io::Error, what: &str) -> Error {
    let gone = transient_os_error(&e) || e.raw_os_error() == Some(nix::errno::Errno::EPIPE as i32);
    let err = Error::unavailable(format!("cannot connect to {who}: {e} ({what})"));
    if gone {
        err.transient()
    } else {
        err
    }
}

/// A socket that could not be opened. With nothing configured, the target is libpq's default
/// socket: say what to configure, not only that the socket is missing (and do not wait for it).
fn socket_error(params: &ConnParams, t: &Target, who: &str, e: SocketErr) -> Error {
    let SocketErr { err, transient } = e;
    match (&t.host, err) {
        (Host::Unix(dir), ReadErr::Closed(m)) if !params.configured => Error::unavailable(format!(
            "no database configured: set PGLOCK_DATABASE_URL or DATABASE_URL \
                 (postgres://user@host/db), or PGHOST and the other PG* variables; \
                 tried the local socket {}: {m}",
            t.socket_path(dir).display()
        )),
        (_, err) => Error {
            transient,
            ..connect_error(who, err)
        },
    }
}

/// SQLSTATEs of a server that refuses sessions for now (what pg_isready calls "rejecting
/// connections"): 57P03 cannot_connect_now (starting up, shutting down, in recovery, not yet
/// accepting connections), 57P01 admin_shutdown and 57P02 crash_shutdown (a session ended as
/// the server stops). Everything else the server says (authentication, a missing database, too
/// many clients) is an answer, not an absence.
pub(crate) fn transient_sqlstate(code: &str) -> bool {
    matches!(code, "57P01" | "57P02" | "57P03")
}

/// The server refused the session.
fn startup_error(who: &str, e: &super::ServerError) -> Error {
    let mut m = e.message.clone();
    if e.code == "53300" && m.contains("too many clients") {
        m.push_str(" (max_connections is reached: raise max_connections or wait)");
    }
    let err =
        Error::new(Kind::Unavailable, format!("cannot connect to {who}: {m}")).with_code(&e.code);
    Error {
        transient: transient_sqlstate(&e.code),
        ..err
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(code: &str, message: &str) -> super::super::ServerError {
        super::super::ServerError {
            severity: "FATAL".into(),
            code: code.into(),
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// pg_isready's "rejecting connections" is retried; every other answer of the server is not.
    #[test]
    fn a_server_that_refuses_sessions_for_now_is_transient() {
        for (code, msg) in [
            ("57P03", "the database system is starting up"),
            ("57P03", "the database system is shutting down"),
            ("57P03", "the database system is in recovery mode"),
            ("57P03", "the database system is not accepting connections"),
            (
                "57P01",
                "terminating connection due to administrator command",
            ),
            (
                "57P02",
                "terminating connection because of crash of another server process",
            ),
        ] {
            let e = startup_error("h", &server_error(code, msg));
            assert!(e.transient, "{code} {msg}");
            assert_eq!(e.sqlstate.as_deref(), Some(code));
            assert_eq!(e.exit_code(), 69);
        }
        for (code, msg) in [
            ("28P01", "password authentication failed for user \"app\""),
            ("28000", "no pg_hba.conf entry for host"),
            ("3D000", "database \"nope\" does not exist"),
            ("53300", "sorry, too many clients already"),
            ("42704", "unrecognized configuration parameter"),
            ("08P01", "invalid startup packet layout"),
        ] {
            assert!(
                !startup_error("h", &server_error(code, msg)).transient,
                "{code}"
            );
        }
    }

    #[test]
    fn nobody_listening_is_transient_and_configuration_is_not() {
        use nix::errno::Errno;
        let os = |e: Errno| io::Error::from_raw_os_error(e as i32);
        for e in [
            Errno::ECONNREFUSED,
            Errno::ENOENT,
            Errno::ECONNRESET,
            Errno::ETIMEDOUT,
            Errno::EHOSTUNREACH,
        ] {
            assert!(transient_os_error(&os(e)), "{e}");
        }
        for e in [Errno::EACCES, Errno::ENETUNREACH, Errno::EAFNOSUPPORT] {
            assert!(!transient_os_error(&os(e)), "{e}");
        }
        assert!(!transient_os_error(&io::Error::other("no errno")));
        // A deadline (connect_timeout) passes; a signal is never retried.
        assert!(SocketErr::from(ReadErr::Timeout).transient);
        assert!(!SocketErr::from(ReadErr::Signal(nix::sys::signal::SIGINT)).transient);
    }

    #[test]
    fn only_a_temporary_dns_failure_is_transient() {
        let gai = |code: i32| {
            // SAFETY: gai_strerror returns a pointer to a static NUL-terminated string.
            let t = unsafe { std::ffi::CStr::from_ptr(libc::gai_strerror(code)) };
            io::Error::other(format!(
                "failed to lookup address information: {}",
                t.to_string_lossy()
            ))
        };
        assert!(temporary_dns_failure(&gai(libc::EAI_AGAIN)));
        assert!(!temporary_dns_failure(&gai(libc::EAI_NONAME)));
        assert!(!temporary_dns_failure(&gai(libc::EAI_FAIL)));
    }

    #[test]
    fn several_hosts_are_transient_only_when_every_failure_is() {
        let down = || Error::unavailable("a: refused").transient();
        let auth = || Error::unavailable("b: password authentication failed");
        assert!(none_usable(vec![], vec![down(), down()]).transient);
        assert!(!none_usable(vec![], vec![down(), auth()]).transient);
        // Standbys only, or standbys and servers that are down: a promotion may be under way.
        assert!(none_usable(vec!["s:5432".into()], vec![]).transient);
        assert!(none_usable(vec!["s:5432".into()], vec![down()]).transient);
        assert!(!none_usable(vec!["s:5432".into()], vec![auth()]).transient);
        assert!(!none_usable(vec![], vec![]).transient);
    }
}

//! Every bound holds against a silent, half-answering or restarting server (contract §4, §6,
//! issue 21): fake servers written here speak just enough of the v3 protocol (the answer to
//! SSLRequest, AuthenticationOk, ParameterStatus, BackendKeyData, ReadyForQuery, rows for any
//! query) and then stall as each test scripts it: silent, half a message, a FATAL 57P01, a reset
//! or a close after the TLS request. Each test asserts pglock's exit code and how long it took.
//! The last test restarts a real server (TLS on, `sslmode=prefer`) while runs start.
//!
//! `PGLOCK_STALL_BIN` runs these tests against another build (the figures of the issue's
//! before/after table were taken that way); a run still going after `KILL_AFTER` is killed and
//! reported as hung.

use crate::harness::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a fake server answers the TLS request.
#[derive(Clone, Copy, PartialEq)]
enum Ssl {
    /// `N`: no TLS here (sslmode=prefer goes on in plain text).
    Refuse,
    /// Closes the connection (FIN) instead of answering.
    Close,
    /// Resets the connection (RST) instead of answering.
    Reset,
}

/// What a fake server does at the first query whose text contains the trigger.
#[derive(Clone, Copy, PartialEq)]
enum How {
    /// Answers nothing, ever, and keeps the connection open.
    Silent,
    /// Sends the first half of its answer, then nothing.
    Half,
    /// Ends the session as a server that shuts down does: FATAL 57P01, then closes.
    Fatal,
}

/// One connection's behaviour.
#[derive(Clone, Copy)]
struct Plan {
    ssl: Ssl,
    /// Whether the server reports `in_hot_standby` (PostgreSQL 14 and later do).
    hot_standby_param: bool,
    /// Whether the lock is taken by someone else (the try answers `f`).
    busy: bool,
    stall: Option<(&'static str, How)>,
}

const NORMAL: Plan = Plan {
    ssl: Ssl::Refuse,
    hot_standby_param: true,
    busy: false,
    stall: None,
};

/// Silent from the first query on: what a hung pooler or a frozen VM looks like once the
/// session has started.
const SILENT: Plan = Plan {
    stall: Some(("", How::Silent)),
    ..NORMAL
};

/// The backend pid the fake server reports, in BackendKeyData and in the rows.
const PID: &str = "4242";

/// A fake PostgreSQL server on a loopback port: connection `i` follows `plans[i]` (the last
/// plan for every later one). Cancel requests are recorded, not counted as connections.
/// Stopped, with its threads, when dropped.
struct Fake {
    port: u16,
    events: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Fake {
    fn start(plans: &[Plan]) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let fake = Fake {
            port: listener.local_addr().unwrap().port(),
            events: Arc::default(),
            stop: Arc::default(),
        };
        let (events, stop, plans) = (fake.events.clone(), fake.stop.clone(), plans.to_vec());
        std::thread::spawn(move || accept_loop(listener, &plans, &events, &stop));
        fake
    }

    /// A URL for this server; `extra` is appended to the query string.
    fn url(&self, extra: &str) -> String {
        format!("postgres://u@127.0.0.1:{}/db?{extra}", self.port)
    }

    fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }

    fn saw(&self, what: &str) -> bool {
        self.events().iter().any(|e| e.starts_with(what))
    }

    /// Waits a little for an event that follows pglock's exit (the close is seen after it).
    fn sees(&self, what: &str) -> bool {
        wait_until(Duration::from_secs(2), || self.saw(what))
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn accept_loop(
    l: TcpListener,
    plans: &[Plan],
    events: &Arc<Mutex<Vec<String>>>,
    stop: &Arc<AtomicBool>,
) {
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        match l.accept() {
            Ok((s, _)) => {
                let plan = plans[n.min(plans.len() - 1)];
                let (events, stop) = (events.clone(), stop.clone());
                let i = n;
                std::thread::spawn(move || {
                    let mut c = FakeConn { s, i, events, stop };
                    if c.serve(plan) {
                        c.wait_close();
                    }
                });
                n += 1;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// One connection of the fake server.
struct FakeConn {
    s: TcpStream,
    i: usize,
    events: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

const SSL_REQUEST: i32 = 80877103;
const CANCEL_REQUEST: i32 = 80877102;

impl FakeConn {
    fn event(&self, e: String) {
        self.events.lock().unwrap().push(e);
    }

    /// Reads exactly `n` bytes (at most 64 KiB: a test server trusts pglock no more than that).
    fn read_n(&mut self, n: usize) -> Option<Vec<u8>> {
        let mut b = vec![0; n.min(65536)];
        self.s.read_exact(&mut b).ok()?;
        Some(b)
    }

    /// A startup-phase packet: its code and body.
    fn packet(&mut self) -> Option<(i32, Vec<u8>)> {
        let len = i32::from_be_bytes(self.read_n(4)?.try_into().ok()?);
        let body = self.read_n((len as usize).checked_sub(4)?)?;
        let code = i32::from_be_bytes(body.get(..4)?.try_into().ok()?);
        Some((code, body))
    }

    /// Plays `plan`; `true` when the connection is left open for pglock to close.
    fn serve(&mut self, plan: Plan) -> bool {
        let _ = self.s.set_nonblocking(false);
        let Some((code, _)) = self.packet() else {
            return false;
        };
        if code == CANCEL_REQUEST {
            self.event("cancel".into());
            return false;
        }
        if code == SSL_REQUEST {
            match plan.ssl {
                Ssl::Refuse => {
                    let _ = self.s.write_all(b"N");
                }
                Ssl::Close => {
                    self.event(format!("closed at tls {}", self.i));
                    return false;
                }
                Ssl::Reset => {
                    self.reset();
                    return false;
                }
            }
            // The startup packet.
            if self.packet().is_none() {
                return false;
            }
        }
        self.event(format!("session {}", self.i));
        let _ = self.s.write_all(&startup_answer(plan.hot_standby_param));
        self.queries(plan)
    }

    /// Closes with an RST: linger on, with a zero timeout.
    fn reset(&mut self) {
        use nix::sys::socket::{setsockopt, sockopt::Linger};
        let l = nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        let _ = setsockopt(&self.s, Linger, &l);
        self.event(format!("reset at tls {}", self.i));
    }

    /// Answers queries until the plan's stall; `true` when it stalled with the socket open.
    fn queries(&mut self, plan: Plan) -> bool {
        loop {
            let Some(tag) = self.read_n(1) else {
                return false;
            };
            let Some(len) = self.read_n(4) else {
                return false;
            };
            let len = i32::from_be_bytes(len.try_into().unwrap()) as usize;
            let Some(body) = self.read_n(len.saturating_sub(4)) else {
                return false;
            };
            if tag[0] != b'Q' {
                return false;
            }
            let sql = String::from_utf8_lossy(&body).into_owned();
            self.event(format!("query {}: {sql}", self.i));
            let answer = answer_to(&sql, plan.busy);
            match plan.stall {
                Some((at, how)) if sql.contains(at) => return self.stall(how, &answer),
                _ => {
                    let _ = self.s.write_all(&answer);
                }
            }
        }
    }

    fn stall(&mut self, how: How, answer: &[u8]) -> bool {
        self.event(format!("stalled {}", self.i));
        match how {
            How::Silent => true,
            How::Half => {
                let _ = self.s.write_all(&answer[..answer.len() / 2]);
                true
            }
            How::Fatal => {
                let _ = self.s.write_all(&fatal_57p01());
                false
            }
        }
    }

    /// Reads (and ignores) what pglock still sends until it closes the connection.
    fn wait_close(&mut self) {
        let _ = self.s.set_read_timeout(Some(Duration::from_millis(100)));
        let mut b = [0u8; 512];
        while !self.stop.load(Ordering::SeqCst) {
            match self.s.read(&mut b) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => break,
            }
        }
        self.event(format!("closed {}", self.i));
    }
}

/// A backend message.
fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn param(name: &str, value: &str) -> Vec<u8> {
    msg(b'S', format!("{name}\0{value}\0").as_bytes())
}

/// AuthenticationOk, the parameters, the cancel key and ReadyForQuery.
fn startup_answer(hot_standby_param: bool) -> Vec<u8> {
    let mut a = msg(b'R', &0i32.to_be_bytes());
    a.extend(param("server_version", "15.0"));
    if hot_standby_param {
        a.extend(param("in_hot_standby", "off"));
    }
    let mut key = PID.parse::<i32>().unwrap().to_be_bytes().to_vec();
    key.extend_from_slice(&7i32.to_be_bytes());
    a.extend(msg(b'K', &key));
    a.extend(msg(b'Z', b"I"));
    a
}

/// A data row of text values.
fn row(values: &[&str]) -> Vec<u8> {
    let mut b = (values.len() as u16).to_be_bytes().to_vec();
    for v in values {
        b.extend_from_slice(&(v.len() as i32).to_be_bytes());
        b.extend_from_slice(v.as_bytes());
    }
    msg(b'D', &b)
}

/// Rows that satisfy what pglock asks before and while its child runs: the first column `t`
/// (lock taken, still held, released, fence free), this backend's pid and start; `f` for the
/// standby check, and for the try when the lock is busy. A session lock's try names its
/// outcome instead (`session_try_sql` in src/lock/acquire.rs): `got`, or `held` when busy.
fn answer_to(sql: &str, busy: bool) -> Vec<u8> {
    // The standby check alone (the lock statement's guard also names pg_is_in_recovery).
    let standby_check = sql.contains("pg_is_in_recovery") && !sql.contains("advisory");
    let session_try = sql.contains("THEN 'held'");
    let first = match (session_try, busy) {
        (true, true) => "held",
        (true, false) => "got",
        _ if standby_check || (busy && sql.contains("pg_try_advisory")) => "f",
        _ => "t",
    };
    let r = row(&[first, PID, "2026-12-07 03:00:00.000000"]);
    let mut a = r.clone();
    a.extend(msg(b'C', b"SELECT 1\0"));
    a.extend(r);
    a.extend(msg(b'C', b"SELECT 1\0"));
    a.extend(msg(b'Z', b"I"));
    a
}

fn fatal_57p01() -> Vec<u8> {
    msg(
        b'E',
        b"SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0\0",
    )
}

/// The pglock under test.
fn stall_bin() -> String {
    std::env::var("PGLOCK_STALL_BIN").unwrap_or_else(|_| bin().to_string())
}

/// A run still going after this long is hung: killed, and reported with no exit code.
const KILL_AFTER: Duration = Duration::from_secs(40);

/// How a run ended: exit code (`None`: hung, killed), seconds, stderr.
struct Ran {
    code: Option<i32>,
    secs: f64,
    err: String,
}

impl Ran {
    fn show(&self) -> String {
        format!(
            "exit {:?} after {:.2} s\n{}",
            self.code, self.secs, self.err
        )
    }

    /// Asserts the exit code and that it came within `[min, max)` seconds.
    fn expect(&self, code: i32, min: f64, max: f64) {
        eprintln!("{}", self.show());
        assert_eq!(self.code, Some(code), "{}", self.show());
        assert!(
            self.secs >= min && self.secs < max,
            "took {:.2} s, not within [{min}, {max})\n{}",
            self.secs,
            self.show()
        );
    }

    /// The reason pglock gave: its last line, one line.
    fn last_line(&self) -> &str {
        self.err.lines().last().unwrap_or_default()
    }
}

/// `pglock run ARGS --key NAME -- sh -c SCRIPT` against `url`; `during` is called with the
/// running process (to signal it).
fn run_with(
    url: &str,
    args: &[&str],
    script: &str,
    during: impl FnOnce(&std::process::Child),
) -> Ran {
    let name = key("stall");
    let mut c = Command::new(stall_bin());
    c.arg("run").args(args);
    c.args(["--key", &name, "--", "sh", "-c", script]);
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") || k == "DATABASE_URL" {
            c.env_remove(k);
        }
    }
    c.env("PGLOCK_DATABASE_URL", url)
        .env("HOME", "/nonexistent")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let t = Instant::now();
    let mut child = c.spawn().unwrap();
    during(&child);
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code().or(st.signal().map(|s| 128 + s));
        }
        if t.elapsed() > KILL_AFTER {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let secs = t.elapsed().as_secs_f64();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    Ran { code, secs, err }
}

fn run(url: &str, args: &[&str], script: &str) -> Ran {
    run_with(url, args, script, |_| {})
}

/// The lines that announce a retry.
fn retries(err: &str) -> Vec<&str> {
    err.lines()
        .filter(|l| l.contains("retrying for up to"))
        .collect()
}

// --- Deadlines before the child starts -----------------------------------------------------

/// `-n` with connect_timeout=2 against a server silent after startup: exit 69 within the
/// connect_timeout of the try (plus the cancel), the statement cancelled and the socket closed.
#[test]
fn a_no_wait_run_against_a_silent_server_ends_within_connect_timeout() {
    let fake = Fake::start(&[SILENT]);
    let r = run(
        &fake.url("sslmode=prefer&connect_timeout=2"),
        &["-n"],
        "true",
    );
    r.expect(69, 1.9, 5.0);
    assert!(r.last_line().contains("no answer from"), "{}", r.show());
    assert!(
        fake.sees("cancel"),
        "no cancel request: {:?}",
        fake.events()
    );
    assert!(
        fake.sees("closed 0"),
        "socket left open: {:?}",
        fake.events()
    );
}

/// Without connect_timeout the bound is the documented default, 10 s.
#[test]
fn without_connect_timeout_a_no_wait_run_ends_at_the_default_bound() {
    let fake = Fake::start(&[SILENT]);
    let r = run(&fake.url("sslmode=disable"), &["-n"], "true");
    r.expect(69, 9.9, 14.0);
    assert!(fake.sees("closed 0"), "{:?}", fake.events());
}

/// `-w 3s` against a server silent after startup (no connect_timeout): exit 69 at the deadline
/// plus its 1 s margin (plus the cancel's 1 s at most).
#[test]
fn a_timeout_ends_at_its_deadline_when_the_server_is_silent() {
    let fake = Fake::start(&[SILENT]);
    let r = run(&fake.url("sslmode=prefer"), &["-w", "3s"], "true");
    r.expect(69, 3.9, 7.0);
    assert!(fake.sees("cancel"), "{:?}", fake.events());
    assert!(fake.sees("closed 0"), "{:?}", fake.events());
}

/// A server that never answers the startup (a listener that accepts in the kernel and reads
/// nothing): `-w 3s` ends at its deadline, each attempt's connect_timeout cut to the time left.
#[test]
fn a_timeout_ends_at_its_deadline_when_the_server_never_starts_the_session() {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "postgres://u@127.0.0.1:{}/db?sslmode=prefer",
        silent.local_addr().unwrap().port()
    );
    let r = run(&url, &["-w", "3s"], "true");
    r.expect(69, 2.9, 5.0);
    assert!(r.last_line().contains("--timeout reached"), "{}", r.show());
}

/// The lock is busy and the server never answers the waiting statement (whose lock_timeout
/// would have ended it at the deadline): exit 69 at the deadline plus the margin, the wait
/// cancelled.
#[test]
fn a_wait_the_server_never_ends_ends_at_the_deadline() {
    let fake = Fake::start(&[Plan {
        busy: true,
        stall: Some(("SELECT pg_advisory_lock(", How::Silent)), // the waiting statement
        ..NORMAL
    }]);
    let r = run(&fake.url("sslmode=disable"), &["-w", "3s"], "true");
    r.expect(69, 3.9, 7.0);
    assert!(
        r.last_line().contains("to the lock statement"),
        "{}",
        r.show()
    );
    assert!(fake.sees("cancel"), "{:?}", fake.events());
}

/// A server that does not report in_hot_standby (before 14, or a proxy) is asked
/// `pg_is_in_recovery()` within connect_timeout, as libpq does.
#[test]
fn the_standby_check_is_within_connect_timeout() {
    let fake = Fake::start(&[Plan {
        hot_standby_param: false,
        stall: Some(("pg_is_in_recovery", How::Silent)),
        ..NORMAL
    }]);
    let r = run(
        &fake.url("sslmode=prefer&connect_timeout=2"),
        &["-n"],
        "true",
    );
    r.expect(69, 1.9, 5.0);
    assert!(r.last_line().contains("standby check"), "{}", r.show());
    assert!(fake.sees("closed 0"), "{:?}", fake.events());
}

/// Half of the try's answer, then nothing: the same bound as a silent server.
#[test]
fn half_an_answer_before_the_child_starts_is_bounded_by_connect_timeout() {
    let fake = Fake::start(&[Plan {
        stall: Some(("pg_try_advisory", How::Half)),
        ..NORMAL
    }]);
    let r = run(
        &fake.url("sslmode=disable&connect_timeout=2"),
        &["-w", "20s"],
        "true",
    );
    r.expect(69, 1.9, 5.0);
}

// --- While the child runs, and the release -------------------------------------------------

/// Half of the heartbeat's answer, then nothing: the lock counts as lost within two heartbeats.
#[test]
fn half_an_answer_while_the_child_runs_is_a_lost_lock_within_two_heartbeats() {
    let fake = Fake::start(&[Plan {
        stall: Some(("statement_timestamp()", How::Half)), // the heartbeat
        ..NORMAL
    }]);
    let r = run(
        &fake.url("sslmode=disable"),
        &["--heartbeat", "1s"],
        "sleep 30",
    );
    r.expect(74, 1.9, 6.0);
}

/// The unlock is never answered: after two heartbeats pglock closes the connection, says the
/// release was not confirmed, and exits with the child's status.
#[test]
fn an_unanswered_release_ends_with_the_childs_status() {
    let fake = Fake::start(&[Plan {
        stall: Some(("pg_advisory_unlock", How::Silent)),
        ..NORMAL
    }]);
    let r = run(
        &fake.url("sslmode=disable"),
        &["--heartbeat", "1s"],
        "exit 3",
    );
    r.expect(3, 1.9, 6.0);
    assert!(r.err.contains("was not confirmed"), "{}", r.show());
    assert!(!r.err.contains("unprotected"), "{}", r.show());
    assert!(fake.sees("closed 0"), "{:?}", fake.events());
}

/// A SIGTERM while the release waits for its answer ends the wait; the lock was held at the
/// last heartbeat, so pglock does not claim it was lost: the child's status, not 74.
#[test]
fn a_signal_during_the_release_never_claims_the_lock_was_lost() {
    let fake = Fake::start(&[Plan {
        stall: Some(("pg_advisory_unlock", How::Silent)),
        ..NORMAL
    }]);
    let r = run_with(&fake.url("sslmode=disable"), &[], "exit 0", |child| {
        let stalled = wait_until(Duration::from_secs(10), || fake.saw("stalled"));
        assert!(stalled, "{:?}", fake.events());
        std::thread::sleep(Duration::from_millis(300));
        signal(child, nix::sys::signal::Signal::SIGTERM);
    });
    r.expect(0, 0.0, 5.0);
    assert!(r.err.contains("was not confirmed"), "{}", r.show());
    assert!(
        !r.err.contains("lost") && !r.err.contains("gone"),
        "{}",
        r.show()
    );
}

// --- Transient failures at start -----------------------------------------------------------

/// Resets in answer to the TLS request (sslmode=prefer, the default) are retried on a new
/// connection within --timeout, the reason logged once; then the run runs.
#[test]
fn a_reset_after_the_tls_request_is_retried() {
    let reset = Plan {
        ssl: Ssl::Reset,
        ..NORMAL
    };
    let fake = Fake::start(&[reset, reset, NORMAL]);
    let r = run(&fake.url("sslmode=prefer"), &["-w", "10s"], "true");
    r.expect(0, 0.2, 5.0);
    assert_eq!(retries(&r.err).len(), 1, "logged once: {}", r.show());
    assert!(fake.saw("session 2"), "{:?}", fake.events());
}

/// A close in answer to the TLS request (sslmode=require) is retried until --timeout, then exit
/// 69 naming it, not at once.
#[test]
fn a_close_after_the_tls_request_is_retried_until_the_timeout() {
    let fake = Fake::start(&[Plan {
        ssl: Ssl::Close,
        ..NORMAL
    }]);
    let r = run(&fake.url("sslmode=require"), &["-w", "3s"], "true");
    r.expect(69, 2.9, 5.5);
    assert!(r.last_line().contains("--timeout reached"), "{}", r.show());
    assert_eq!(retries(&r.err).len(), 1, "logged once: {}", r.show());
}

/// `-n` tries once: a reset after the TLS request fails at once.
#[test]
fn a_no_wait_run_does_not_retry_a_reset() {
    let fake = Fake::start(&[Plan {
        ssl: Ssl::Reset,
        ..NORMAL
    }]);
    let r = run(&fake.url("sslmode=prefer"), &["-n"], "true");
    r.expect(69, 0.0, 1.5);
    assert!(retries(&r.err).is_empty(), "{}", r.show());
}

/// The server ends the session (57P01, as at a fast shutdown) at the first lock statement: the
/// run takes the lock on a new connection and runs, the reason logged once.
#[test]
fn a_session_ended_at_the_first_lock_statement_is_retried() {
    let fatal = Plan {
        stall: Some(("pg_try_advisory", How::Fatal)),
        ..NORMAL
    };
    let fake = Fake::start(&[fatal, fatal, NORMAL]);
    let r = run(&fake.url("sslmode=prefer"), &["-w", "10s"], "true");
    r.expect(0, 0.2, 5.0);
    let lines = retries(&r.err);
    assert_eq!(lines.len(), 1, "logged once: {}", r.show());
    assert!(
        lines[0].contains("57P01") || lines[0].contains("administrator"),
        "{}",
        r.show()
    );
}

/// The same with `-n`: exit 69 at once.
#[test]
fn a_no_wait_run_does_not_retry_a_session_ended_by_the_server() {
    let fake = Fake::start(&[Plan {
        stall: Some(("pg_try_advisory", How::Fatal)),
        ..NORMAL
    }]);
    let r = run(&fake.url("sslmode=prefer"), &["-n"], "true");
    r.expect(69, 0.0, 1.5);
}

// --- A real server restarted in a loop ----------------------------------------------------

/// A cluster with TLS on (a self-signed certificate), restarted by the loop test.
fn tls_cluster() -> &'static Cluster {
    static C: std::sync::OnceLock<Cluster> = std::sync::OnceLock::new();
    C.get_or_init(|| {
        let dir = tmpdir("stall-tls");
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args([
                "-subj",
                "/CN=localhost",
                "-keyout",
                "server.key",
                "-out",
                "server.crt",
            ])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let key = dir.join("server.key");
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        for p in [dir.as_path(), key.as_path(), &dir.join("server.crt")] {
            chown_pg(p);
        }
        Cluster::start(
            "stall-tls",
            &format!(
                "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'",
                dir.join("server.crt").display(),
                key.display()
            ),
        )
    })
}

/// One run of the loop test: its outcome and whether its command ran.
fn loop_run(url: String, file: std::path::PathBuf) -> std::thread::JoinHandle<(Ran, bool)> {
    std::thread::spawn(move || {
        let script = format!("touch '{}'", file.display());
        (run(&url, &["-w", "20s"], &script), file.exists())
    })
}

/// 60 runs with `-w 20s` and sslmode=prefer start in bursts of 5, 40 ms apart, each burst as a
/// fast restart of the server begins (the moments of resets after the TLS request and of
/// sessions ended by 57P01), 0.7 s between restarts: each one runs its command (exit 0; 74 only
/// if the lock went with a restart after the command ran), or ends at its --timeout; none
/// exits 69 before it.
#[test]
fn runs_started_while_the_server_restarts_in_a_loop_run_or_reach_their_timeout() {
    const BURSTS: usize = 12;
    const TIMEOUT: f64 = 20.0;
    let c = tls_cluster();
    let url = format!(
        "postgres://postgres:{SUPERUSER_PASSWORD}@localhost:{}/postgres?sslmode=prefer",
        c.port
    );
    let dir = tmpdir("stall-loop");
    let mut runs = Vec::new();
    for b in 0..BURSTS {
        let restart = std::thread::spawn(|| tls_cluster().restart());
        for i in 0..5 {
            runs.push(loop_run(url.clone(), dir.join(format!("ran-{b}-{i}"))));
            std::thread::sleep(Duration::from_millis(40));
        }
        restart.join().unwrap();
        std::thread::sleep(Duration::from_millis(700));
    }
    let results: Vec<(Ran, bool)> = runs.into_iter().map(|h| h.join().unwrap()).collect();
    let bad: Vec<String> = results
        .iter()
        .filter(|(r, ran)| match r.code {
            Some(0 | 74) => !ran,
            Some(69 | 75) => r.secs < TIMEOUT,
            _ => true,
        })
        .map(|(r, ran)| format!("ran={ran} {}", r.show()))
        .collect();
    let ran = results.iter().filter(|(_, ran)| *ran).count();
    eprintln!(
        "{} starts, {BURSTS} restarts: {ran} ran, {} failed before --timeout",
        results.len(),
        bad.len()
    );
    assert!(bad.is_empty(), "{}", bad.join("\n---\n"));
}

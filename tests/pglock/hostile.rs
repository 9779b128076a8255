//! A hostile fake server and man in the middle (issue 12): one test per finding, each ending with
//! a one-line error and exit code within a second, never a panic, never the child run.
//!
//! The fake server plays a script of steps on the first connection it accepts (later ones, a
//! cancel request for example, are recorded and closed), records every byte pglock sends, and
//! answers pglock's queries like a server that grants every lock: a pglock that believed the
//! hostile bytes would run its child. pglock runs under a 256 MiB address-space limit, so that an
//! unbounded allocation fails instead of succeeding, and its peak resident memory is sampled.
//! No PostgreSQL is needed.

use crate::harness::{bin, key, tmpdir};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

const PASSWORD: &str = "hostile-pw-Zq81";
const PID: i32 = 4242;
/// How long after the hostile message pglock may take to end (about 1 s, generous for CI).
const BOUND: Duration = Duration::from_secs(3);
/// A run still going after this long is killed (and fails its test).
const LIMIT: Duration = Duration::from_secs(6);
/// Peak resident memory allowed (pglock needs a few MiB; the floods below send 40 MiB).
const MAX_KIB: u64 = 16 * 1024;
const FLOOD: usize = 40 << 20;
const LOST: i32 = 74;
const UNAVAILABLE: i32 = 69;

// ---- Backend messages ----

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = header(tag, body.len() as i32 + 4);
    m.extend_from_slice(body);
    m
}

/// A message's type and length field alone (the length counts itself).
fn header(tag: u8, len: i32) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&len.to_be_bytes());
    m
}

fn auth(code: i32, rest: &[u8]) -> Vec<u8> {
    msg(b'R', &[&code.to_be_bytes()[..], rest].concat())
}

/// AuthenticationSASL offering SCRAM-SHA-256 (without channel binding).
fn sasl() -> Vec<u8> {
    auth(10, b"SCRAM-SHA-256\0\0")
}

fn ready() -> Vec<u8> {
    msg(b'Z', b"I")
}

/// AuthenticationOk and the rest of a session's start: then pglock is connected.
fn session() -> Vec<u8> {
    let mut m = auth(0, &[]);
    m.extend(msg(
        b'K',
        &[PID.to_be_bytes(), 99i32.to_be_bytes()].concat(),
    ));
    for (k, v) in [("server_version", "16.4"), ("in_hot_standby", "off")] {
        m.extend(msg(b'S', format!("{k}\0{v}\0").as_bytes()));
    }
    m.extend(ready());
    m
}

/// A DataRow announcing `n` columns, with these (declared length, bytes) columns.
fn data_row(n: i16, cols: &[(i32, &[u8])]) -> Vec<u8> {
    let mut b = n.to_be_bytes().to_vec();
    for (len, data) in cols {
        b.extend(len.to_be_bytes());
        b.extend_from_slice(data);
    }
    msg(b'D', &b)
}

/// A RowDescription of `n` text columns.
fn row_description(n: usize) -> Vec<u8> {
    let mut b = (n as i16).to_be_bytes().to_vec();
    for i in 0..n {
        b.extend(format!("c{i}\0").as_bytes());
        b.extend([
            0, 0, 0, 0, 0, 0, 0, 0, 0, 25, 255, 255, 255, 255, 255, 255, 0, 0,
        ]);
    }
    msg(b'T', &b)
}

/// One row of text values, CommandComplete and ReadyForQuery.
fn rows(values: &[&str]) -> Vec<u8> {
    let cols: Vec<(i32, &[u8])> = values
        .iter()
        .map(|v| (v.len() as i32, v.as_bytes()))
        .collect();
    let mut m = row_description(values.len());
    m.extend(data_row(values.len() as i16, &cols));
    m.extend(msg(b'C', b"SELECT 1\0"));
    m.extend(ready());
    m
}

/// The `backend_start` the fake server gives its session.
const START: &str = "2026-11-30 12:00:00.000001";

/// The answer to a session lock's try (`session_try_sql` in src/lock/acquire.rs): the lock and
/// its fence taken, on this session.
fn lock_rows(pid: &str) -> Vec<u8> {
    rows(&["got", pid, START])
}

/// What a server that grants every lock answers to pglock's statement `sql` (see src/lock/acquire.rs).
fn answer(sql: &str) -> Vec<u8> {
    let pid = PID.to_string();
    if sql.contains("_unlock") || sql.contains("statement_timestamp()") {
        // The release and the heartbeat.
        rows(&["t"])
    } else if sql.contains("_lock(") && sql.contains("pg_backend_pid()") {
        lock_rows(&pid)
    } else if sql.contains("pg_is_in_recovery") {
        rows(&["f"])
    } else if sql.contains("EXISTS") {
        rows(&["t"])
    } else if sql.contains("pg_backend_pid()") {
        rows(&[&pid])
    } else if sql.contains("SELECT") {
        rows(&["t"])
    } else {
        [msg(b'C', b"SET\0"), ready()].concat()
    }
}

/// A whole fake session in which the lock is granted, as a man in the middle would inject it.
fn injected_session() -> Vec<u8> {
    let mut m = session();
    for _ in 0..4 {
        m.extend(lock_rows(&PID.to_string()));
    }
    m
}

/// A FATAL ErrorResponse.
fn fatal(message: &str, detail: &str) -> Vec<u8> {
    msg(
        b'E',
        format!("SFATAL\0VFATAL\0C28000\0M{message}\0D{detail}\0\0").as_bytes(),
    )
}

// ---- The fake server ----

enum Step {
    /// Reads an untagged message: the SSLRequest or the startup packet.
    Untagged,
    /// Reads one message (a password, a query).
    Read,
    Send(Vec<u8>),
    /// Sends the hostile bytes, noting when.
    Hostile(Vec<u8>),
    /// Sends this many filler bytes, as far as pglock takes them.
    Flood(usize),
    /// Reads the SASL initial response; answers server-first with this iteration count (hostile).
    ScramFirst(u32),
    /// A TLS handshake with this certificate of `certs()`, as the real server behind a MITM.
    Tls(&'static str),
    /// Answers queries until pglock leaves or, given a path, until that file exists.
    Serve(Option<PathBuf>),
    /// Keeps the connection open until pglock closes it.
    Hold,
}

#[derive(Default)]
struct Record {
    /// Every byte received, per connection (decrypted after a TLS handshake).
    conns: Mutex<Vec<Vec<u8>>>,
    hostile_at: Mutex<Option<Instant>>,
    stop: AtomicBool,
}

struct Server {
    port: u16,
    rec: Arc<Record>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.rec.stop.store(true, Ordering::Relaxed);
    }
}

impl Server {
    fn start(steps: Vec<Step>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let rec = Arc::new(Record::default());
        let r = rec.clone();
        std::thread::spawn(move || {
            let mut script = Some(steps);
            while !r.stop.load(Ordering::Relaxed) {
                let Ok((sock, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let mut peer = Peer::new(sock, r.clone());
                let steps = script.take();
                std::thread::spawn(move || match steps {
                    Some(steps) => peer.play(steps),
                    None => {
                        let end = Instant::now() + Duration::from_millis(300);
                        while Instant::now() < end && peer.fill() {}
                    }
                });
            }
        });
        Server { port, rec }
    }

    /// A URL for this server with the password `PASSWORD` and these parameters.
    fn url(&self, params: &str) -> String {
        format!(
            "postgres://u:{PASSWORD}@127.0.0.1:{}/db?{params}",
            self.port
        )
    }

    fn received(&self) -> Vec<u8> {
        self.rec.conns.lock().unwrap().concat()
    }

    /// The types of the messages pglock sent after its startup packet, on every connection.
    fn tags(&self) -> Vec<u8> {
        let be = |b: &[u8], at: usize| {
            b.get(at..at + 4)
                .map(|s| i32::from_be_bytes(s.try_into().unwrap()))
        };
        let mut out = Vec::new();
        for b in self.rec.conns.lock().unwrap().iter() {
            let mut at = 0;
            // SSLRequests, then the startup packet, then tagged messages.
            while let Some(len @ 8..) = be(b, at) {
                at += len as usize;
                if be(b, at - len as usize + 4) != Some(80_877_103) {
                    break;
                }
            }
            while let (Some(&tag), Some(len @ 4..)) = (b.get(at), be(b, at + 1)) {
                out.push(tag);
                at += 1 + len as usize;
            }
        }
        out
    }

    fn hostile_at(&self) -> Option<Instant> {
        *self.rec.hostile_at.lock().unwrap()
    }
}

struct Peer {
    tcp: TcpStream,
    tls: Option<Box<rustls::ServerConnection>>,
    pending: Vec<u8>,
    rec: Arc<Record>,
    idx: usize,
}

impl Peer {
    fn new(tcp: TcpStream, rec: Arc<Record>) -> Peer {
        tcp.set_nonblocking(false).unwrap();
        tcp.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        tcp.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let idx = {
            let mut c = rec.conns.lock().unwrap();
            c.push(Vec::new());
            c.len() - 1
        };
        Peer {
            tcp,
            tls: None,
            pending: Vec::new(),
            rec,
            idx,
        }
    }

    /// Reads what arrives within a tick; false once pglock closed (or the test ended).
    fn fill(&mut self) -> bool {
        if self.rec.stop.load(Ordering::Relaxed) {
            return false;
        }
        let mut tmp = [0u8; 65536];
        let r = match &mut self.tls {
            Some(c) => rustls::Stream::new(c.as_mut(), &mut self.tcp).read(&mut tmp),
            None => self.tcp.read(&mut tmp),
        };
        match r {
            Ok(0) => false,
            Ok(n) => {
                self.rec.conns.lock().unwrap()[self.idx].extend_from_slice(&tmp[..n]);
                self.pending.extend_from_slice(&tmp[..n]);
                true
            }
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }

    fn send(&mut self, data: &[u8]) -> bool {
        match &mut self.tls {
            Some(c) => {
                let mut s = rustls::Stream::new(c.as_mut(), &mut self.tcp);
                s.write_all(data).and_then(|()| s.flush())
            }
            None => self.tcp.write_all(data),
        }
        .is_ok()
    }

    /// The next message (`tagged`: with a type byte) as (type, body); None when pglock left, the
    /// test ended, the length is absurd, or `until` exists.
    fn message(&mut self, tagged: bool, until: Option<&Path>) -> Option<(u8, Vec<u8>)> {
        let head = if tagged { 5 } else { 4 };
        loop {
            if self.pending.len() >= head {
                let len = i32::from_be_bytes(self.pending[head - 4..head].try_into().unwrap());
                if !(4..1 << 24).contains(&len) {
                    return None;
                }
                let end = head - 4 + len as usize;
                if self.pending.len() >= end {
                    let tag = if tagged { self.pending[0] } else { 0 };
                    let body = self.pending[head..end].to_vec();
                    self.pending.drain(..end);
                    return Some((tag, body));
                }
            }
            if until.is_some_and(Path::exists) || !self.fill() {
                return None;
            }
        }
    }

    fn tls(&mut self, cert: &str) -> bool {
        let mut conn = rustls::ServerConnection::new(tls_config(cert)).unwrap();
        let early = std::mem::take(&mut self.pending);
        let _ = conn.read_tls(&mut early.as_slice());
        let end = Instant::now() + Duration::from_secs(5);
        while conn.is_handshaking() {
            if Instant::now() > end || self.rec.stop.load(Ordering::Relaxed) {
                return false;
            }
            if let Err(e) = conn.complete_io(&mut self.tcp) {
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) {
                    return false;
                }
            }
        }
        self.tls = Some(Box::new(conn));
        true
    }

    fn mark(&self) {
        *self.rec.hostile_at.lock().unwrap() = Some(Instant::now());
    }

    fn play(&mut self, steps: Vec<Step>) {
        for step in steps {
            let go_on = match step {
                Step::Untagged => self.message(false, None).is_some(),
                Step::Read => self.message(true, None).is_some(),
                Step::Send(b) => self.send(&b),
                Step::Hostile(b) => {
                    self.mark();
                    self.send(&b)
                }
                Step::Flood(n) => {
                    let chunk = vec![b'x'; 1 << 16];
                    (0..n / chunk.len()).all(|_| self.send(&chunk))
                }
                Step::ScramFirst(i) => match self.message(true, None) {
                    Some((_, body)) => {
                        let text = String::from_utf8_lossy(&body).into_owned();
                        let nonce = text.split(',').find_map(|p| p.strip_prefix("r="));
                        let first = format!(
                            "r={}XYZ,s=QSXCR+Q6sek8bf92,i={i}",
                            nonce.unwrap_or_default()
                        );
                        self.mark();
                        self.send(&auth(11, first.as_bytes()))
                    }
                    None => false,
                },
                Step::Tls(cert) => self.tls(cert),
                Step::Serve(until) => {
                    while let Some((tag, body)) = self.message(true, until.as_deref()) {
                        match tag {
                            b'Q' => {
                                let sql = String::from_utf8_lossy(&body);
                                if !self.send(&answer(&sql)) {
                                    break;
                                }
                            }
                            b'X' => break,
                            _ => {}
                        }
                    }
                    until.is_some_and(|p| p.exists())
                }
                Step::Hold => {
                    while self.fill() {}
                    false
                }
            };
            if !go_on {
                return;
            }
        }
    }
}

// ---- Certificates ----

/// A CA, another CA, and two server certificates signed by the first: "ip" (for 127.0.0.1) and
/// "localhost" (for the DNS name only).
fn certs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tmpdir("hostile-certs");
        let openssl = |args: String| {
            let out = Command::new("openssl")
                .args("req -x509 -nodes -days 2 -newkey ec -pkeyopt".split(' '))
                .arg("ec_paramgen_curve:prime256v1")
                .args(args.split(' '))
                .current_dir(&dir)
                .stdin(Stdio::null())
                .output()
                .expect("openssl");
            assert!(out.status.success(), "openssl {args}: {out:?}");
        };
        for ca in ["ca", "other"] {
            openssl(format!("-subj /CN={ca} -keyout {ca}.key -out {ca}.crt"));
        }
        for (name, san) in [("ip", "IP:127.0.0.1"), ("localhost", "DNS:localhost")] {
            openssl(format!(
                "-subj /CN=server -CA ca.crt -CAkey ca.key -addext subjectAltName={san} \
                 -addext basicConstraints=critical,CA:FALSE -addext extendedKeyUsage=serverAuth \
                 -keyout {name}.key -out {name}.crt"
            ));
        }
        dir
    })
}

fn cert(name: &str) -> String {
    certs().join(name).display().to_string()
}

fn tls_config(name: &str) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert(&format!("{name}.crt")))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(cert(&format!("{name}.key"))).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    Arc::new(config)
}

// ---- Running pglock ----

/// `pglock ARGS` under a 256 MiB address-space limit, with no connection settings from the
/// environment (as `harness::pglock_bare`).
fn pglock(args: &[&str]) -> Command {
    let mut c = Command::new("prlimit");
    c.arg(format!("--as={}", 256u64 << 20)).arg("--").arg(bin());
    c.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") || k == "DATABASE_URL" {
            c.env_remove(k);
        }
    }
    c.env("HOME", "/nonexistent")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// `pglock run -n` against `url` of a child that writes `file` (and then sleeps, with `sleep`).
fn run_cmd(url: &str, file: &Path, sleep: bool) -> Command {
    let script = format!(
        "exec >/dev/null 2>&1; echo ran > '{}'{}",
        file.display(),
        if sleep { "; exec sleep 10" } else { "" }
    );
    let mut c = pglock(&["run", "--key", &key("hostile"), "-n"]);
    c.args(["--database-url", url, "--", "sh", "-c", &script]);
    c
}

/// The file a test's child writes when it runs.
fn child_file() -> PathBuf {
    tmpdir("hostile").join("ran")
}

struct Running {
    child: Child,
    started: Instant,
    stderr: std::thread::JoinHandle<Vec<u8>>,
    what: String,
}

struct Ran {
    code: Option<i32>,
    signal: Option<i32>,
    stderr: String,
    started: Instant,
    ended: Instant,
    killed: bool,
    peak_kib: u64,
    what: String,
}

fn start(mut cmd: Command) -> Running {
    let what = format!("{cmd:?}");
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn prlimit pglock");
    let mut err = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    Running {
        child,
        started,
        stderr,
        what,
    }
}

/// VmHWM of a process, in KiB.
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

impl Running {
    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    /// Waits for pglock to end (killing it after `LIMIT`), sampling its memory meanwhile.
    fn finish(mut self) -> Ran {
        use std::os::unix::process::ExitStatusExt;
        let mut peak = 0;
        let mut killed = false;
        let status = loop {
            peak = peak.max(peak_kib(self.child.id()));
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if self.started.elapsed() > LIMIT {
                killed = true;
                let _ = self.child.kill();
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let ended = Instant::now();
        Ran {
            code: status.code(),
            signal: status.signal(),
            stderr: String::from_utf8_lossy(&self.stderr.join().unwrap()).into_owned(),
            started: self.started,
            ended,
            killed,
            peak_kib: peak,
            what: self.what,
        }
    }
}

fn run(cmd: Command) -> Ran {
    start(cmd).finish()
}

impl Ran {
    fn show(&self) -> String {
        format!(
            "command: {}\nexit code {:?}, signal {:?}, killed after {LIMIT:?}: {}, ran {:?}, peak {} KiB\nstderr:\n{}",
            self.what,
            self.code,
            self.signal,
            self.killed,
            self.ended - self.started,
            self.peak_kib,
            self.stderr
        )
    }

    /// pglock ended by itself with `code`, without a panic, its error on `pglock:` lines one of
    /// which has `phrase`, within `BOUND` of `hostile` (else of its start), in bounded memory.
    fn expect(&self, code: i32, phrase: &str, hostile: Option<Instant>) {
        let s = self.show();
        assert!(!self.killed, "pglock did not end by itself:\n{s}");
        assert!(
            !self.stderr.contains("panicked") && self.signal.is_none(),
            "pglock panicked or was killed by a signal:\n{s}"
        );
        assert_eq!(self.code, Some(code), "exit code:\n{s}");
        assert!(
            self.stderr.lines().all(|l| l.starts_with("pglock: ")),
            "every stderr line is one pglock line:\n{s}"
        );
        assert!(
            self.stderr.contains(phrase),
            "stderr lacks {phrase:?}:\n{s}"
        );
        let took = self
            .ended
            .saturating_duration_since(hostile.unwrap_or(self.started));
        assert!(
            took <= BOUND,
            "took {took:?} after the hostile message:\n{s}"
        );
        assert!(self.peak_kib <= MAX_KIB, "memory:\n{s}");
    }

    /// As `expect`, and the child never ran.
    fn expect_unrun(&self, code: i32, phrase: &str, server: &Server, file: &Path) {
        assert!(!file.exists(), "the child ran:\n{}", self.show());
        self.expect(code, phrase, server.hostile_at());
    }
}

/// Runs pglock -n against `server` (URL parameters `params`); returns the run and the child's file.
fn run_against(server: &Server, params: &str) -> (Ran, PathBuf) {
    let file = child_file();
    (run(run_cmd(&server.url(params), &file, false)), file)
}

const PLAIN: &str = "sslmode=disable&connect_timeout=10";

// ---- Controls: the fake server is a server pglock accepts ----

#[test]
fn control_a_fake_session_after_tls_no_runs_the_child() {
    // sslmode=prefer, no TLS: a cleartext password request is answered, as libpq does.
    let server = Server::start(vec![
        Step::Untagged,
        Step::Send(b"N".to_vec()),
        Step::Untagged,
        Step::Send(auth(3, &[])),
        Step::Read,
        Step::Send(session()),
        Step::Serve(None),
    ]);
    let (ran, file) = run_against(&server, "sslmode=prefer");
    ran.expect(0, "", None);
    assert!(file.exists(), "the child did not run:\n{}", ran.show());
    assert_eq!(server.tags().first(), Some(&b'p'), "{}", ran.show());
}

#[test]
fn control_verify_full_through_the_fake_server_runs_the_child() {
    let server = Server::start(vec![
        Step::Untagged,
        Step::Send(b"S".to_vec()),
        Step::Tls("ip"),
        Step::Untagged,
        Step::Send(session()),
        Step::Serve(None),
    ]);
    let root = cert("ca.crt");
    let (ran, file) = run_against(
        &server,
        &format!("sslmode=verify-full&sslrootcert={root}&connect_timeout=10"),
    );
    ran.expect(0, "", None);
    assert!(file.exists(), "the child did not run:\n{}", ran.show());
}

// ---- Finding 1: bytes after the answer to SSLRequest, before the TLS handshake ----

const UNENCRYPTED: &str = "received unencrypted data after SSL response";

fn bytes_after_tls_yes(params: &str) {
    let server = Server::start(vec![
        Step::Untagged,
        Step::Hostile([&b"S"[..], &injected_session()].concat()),
        Step::Hold,
    ]);
    let (ran, file) = run_against(&server, params);
    ran.expect_unrun(UNAVAILABLE, UNENCRYPTED, &server, &file);
}

#[test]
fn f1_bytes_after_tls_yes_are_refused_require() {
    bytes_after_tls_yes("sslmode=require&connect_timeout=10");
}

#[test]
fn f1_bytes_after_tls_yes_are_refused_verify_full() {
    let root = cert("ca.crt");
    bytes_after_tls_yes(&format!(
        "sslmode=verify-full&sslrootcert={root}&connect_timeout=10"
    ));
}

#[test]
fn f1_mitm_session_injected_before_the_handshake_runs_nothing() {
    // A man in the middle answers 'S' and a whole session in which the lock is granted, then
    // lets the real server (with a certificate pglock trusts) do the handshake.
    let server = Server::start(vec![
        Step::Untagged,
        Step::Hostile([&b"S"[..], &injected_session()].concat()),
        Step::Tls("ip"),
        Step::Untagged,
        Step::Serve(None),
    ]);
    let root = cert("ca.crt");
    let (ran, file) = run_against(
        &server,
        &format!("sslmode=verify-full&sslrootcert={root}&connect_timeout=10"),
    );
    ran.expect_unrun(UNAVAILABLE, UNENCRYPTED, &server, &file);
}

#[test]
fn f1_bytes_after_tls_no_are_refused_prefer() {
    // The 'N' comes with a whole session, before pglock's startup packet.
    let server = Server::start(vec![
        Step::Untagged,
        Step::Hostile([&b"N"[..], &injected_session()].concat()),
        Step::Untagged,
        Step::Serve(None),
    ]);
    let (ran, file) = run_against(&server, "sslmode=prefer&connect_timeout=10");
    ran.expect_unrun(UNAVAILABLE, UNENCRYPTED, &server, &file);
}

// ---- Finding 2: malformed, truncated and oversized messages ----

const VIOLATION: &str = "protocol violation";

/// The server sends `hostile` after the startup packet (then `more`), with the lock not taken.
fn malformed_at_connect(hostile: Vec<u8>, more: Vec<Step>) {
    let mut steps = vec![Step::Untagged, Step::Hostile(hostile)];
    steps.extend(more);
    let server = Server::start(steps);
    let (ran, file) = run_against(&server, PLAIN);
    ran.expect_unrun(UNAVAILABLE, VIOLATION, &server, &file);
}

/// The server answers pglock's first query with `hostile`, then `more`.
fn malformed_answer(hostile: Vec<u8>, more: Vec<Step>) {
    let mut steps = vec![Step::Untagged, Step::Send(session()), Step::Read];
    steps.push(Step::Hostile(hostile));
    steps.extend(more);
    let server = Server::start(steps);
    let (ran, file) = run_against(&server, PLAIN);
    ran.expect_unrun(UNAVAILABLE, VIOLATION, &server, &file);
}

#[test]
fn f2_a_negative_length_at_connect_is_a_protocol_violation_and_runs_nothing() {
    malformed_at_connect(header(b'R', -1), vec![Step::Hold]);
}

#[test]
fn f2_lengths_0_to_3_at_connect_are_a_protocol_violation_and_run_nothing() {
    for len in 0..=3 {
        malformed_at_connect(header(b'R', len), vec![Step::Hold]);
    }
}

#[test]
fn f2_a_data_row_with_fewer_columns_than_announced_runs_nothing() {
    let mut m = row_description(3);
    m.extend(data_row(3, &[(1, b"t")]));
    m.extend(msg(b'C', b"SELECT 1\0"));
    m.extend(ready());
    malformed_answer(m, vec![Step::Serve(None)]);
}

#[test]
fn f2_a_column_length_past_the_body_runs_nothing() {
    // The lock granted, and the pid column says 100 bytes where 4 are.
    let mut m = row_description(2);
    m.extend(data_row(2, &[(1, b"t"), (100, PID.to_string().as_bytes())]));
    m.extend(msg(b'C', b"SELECT 1\0"));
    m.extend(ready());
    malformed_answer(m, vec![Step::Serve(None)]);
}

#[test]
fn f2_a_huge_length_during_authentication_runs_nothing() {
    malformed_at_connect(header(b'R', i32::MAX), vec![Step::Flood(FLOOD), Step::Hold]);
}

#[test]
fn f2_a_one_gib_data_row_runs_nothing() {
    malformed_answer(
        [row_description(2), header(b'D', 1 << 30)].concat(),
        vec![Step::Flood(FLOOD), Step::Hold],
    );
}

#[test]
fn f2_a_message_cut_short_by_eof_runs_nothing() {
    // 100 bytes announced, 10 sent, then the server closes.
    malformed_at_connect([header(b'R', 100), vec![0; 10]].concat(), vec![]);
}

/// The session is fine until the child has started; then the server sends `hostile`.
fn malformed_while_the_child_runs(hostile: Vec<u8>, more: Vec<Step>) {
    let file = child_file();
    let mut steps = vec![
        Step::Untagged,
        Step::Send(session()),
        Step::Serve(Some(file.clone())),
        Step::Hostile(hostile),
    ];
    steps.extend(more);
    let server = Server::start(steps);
    let ran = run(run_cmd(&server.url(PLAIN), &file, true));
    assert!(file.exists(), "the child never started:\n{}", ran.show());
    ran.expect(LOST, VIOLATION, server.hostile_at());
}

#[test]
fn f2_a_negative_length_while_the_child_runs_stops_it_as_a_lost_lock() {
    malformed_while_the_child_runs(header(b'D', -1), vec![Step::Hold]);
}

#[test]
fn f2_a_huge_length_while_the_child_runs_stops_it_as_a_lost_lock() {
    malformed_while_the_child_runs(header(b'D', i32::MAX), vec![Step::Flood(FLOOD), Step::Hold]);
}

/// Rows without end in answer to the lock statement: stopped by the result cap, in bounded
/// memory, never buffered until the memory runs out.
#[test]
fn f2_rows_without_end_are_cut_off_in_bounded_memory_and_run_nothing() {
    let one = data_row(2, &[(1, b"t"), (4, b"4242")]);
    let flood: Vec<u8> = std::iter::repeat_n(one, (8 << 20) / 19).flatten().collect();
    malformed_answer([row_description(2), flood].concat(), vec![Step::Hold]);
}

/// A message that arrives right after the heartbeat's answer (a notice, in the same write) is
/// applied without waiting on the socket: the child's exit is still noticed at once.
#[test]
fn a_notice_after_the_heartbeat_answer_does_not_stall_the_supervisor() {
    let file = child_file();
    let notice = msg(b'N', b"SNOTICE\0VNOTICE\0C00000\0Mhello\0\0");
    let server = Server::start(vec![
        Step::Untagged,
        Step::Send(session()),
        Step::Serve(Some(file.clone())),
        Step::Read,
        Step::Hostile([rows(&["t"]), notice].concat()),
        Step::Serve(None),
    ]);
    let script = format!("echo ran > '{}'; sleep 2", file.display());
    let mut cmd = pglock(&["run", "--key", &key("hostile"), "-n", "--heartbeat", "1s"]);
    cmd.args([
        "--database-url",
        &server.url(PLAIN),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let ran = run(cmd);
    assert!(file.exists(), "the child never started:\n{}", ran.show());
    // The child exits about a second after the hostile write: pglock ends with its status.
    ran.expect(0, "released the lock", server.hostile_at());
}

// ---- Findings 3 to 5: what verifies the server's certificate ----

/// A server behind TLS with the "ip" certificate, signed by the suite's CA, granting the lock.
fn tls_server(cert: &'static str) -> Server {
    Server::start(vec![
        Step::Untagged,
        Step::Send(b"S".to_vec()),
        Step::Tls(cert),
        Step::Untagged,
        Step::Send(session()),
        Step::Serve(None),
    ])
}

#[test]
fn f3_sslrootcert_system_implies_verify_full() {
    // No sslmode: `system` means verify-full, and the system roots do not know the suite's CA.
    let server = tls_server("ip");
    let (ran, file) = run_against(&server, "sslrootcert=system&connect_timeout=10");
    ran.expect_unrun(UNAVAILABLE, "UnknownIssuer", &server, &file);
}

#[test]
fn f4_sslmode_require_verifies_the_chain_with_root_crt() {
    let home = tmpdir("hostile-home");
    std::fs::create_dir_all(home.join(".postgresql")).unwrap();
    std::fs::copy(cert("other.crt"), home.join(".postgresql/root.crt")).unwrap();
    let server = tls_server("ip");
    let file = child_file();
    let mut cmd = run_cmd(
        &server.url("sslmode=require&connect_timeout=10"),
        &file,
        false,
    );
    cmd.env("HOME", &home);
    run(cmd).expect_unrun(UNAVAILABLE, "UnknownIssuer", &server, &file);
}

#[test]
fn f5_verify_full_never_checks_a_substitute_name() {
    // "127.1" is 127.0.0.1 but no DNS name for rustls; the certificate is for "localhost" only.
    let server = tls_server("localhost");
    let root = cert("ca.crt");
    let url = format!(
        "postgres://u:{PASSWORD}@127.1:{}/db?sslmode=verify-full&sslrootcert={root}&connect_timeout=10",
        server.port
    );
    let file = child_file();
    let ran = run(run_cmd(&url, &file, false));
    ran.expect_unrun(UNAVAILABLE, "not a DNS name or IP address", &server, &file);
}

// ---- Finding 6: the SCRAM iteration count, connect_timeout, SIGTERM ----

#[test]
fn f6_scram_iteration_count_is_bounded() {
    let server = Server::start(vec![
        Step::Untagged,
        Step::Send(sasl()),
        Step::ScramFirst(u32::MAX),
        Step::Hold,
    ]);
    let (ran, file) = run_against(&server, PLAIN);
    ran.expect_unrun(UNAVAILABLE, "iteration", &server, &file);
}

#[test]
fn f6_connect_timeout_ends_a_silent_server() {
    let server = Server::start(vec![Step::Untagged, Step::Hold]);
    let (ran, file) = run_against(&server, "sslmode=disable&connect_timeout=2");
    let took = ran.ended - ran.started;
    assert!(took >= Duration::from_millis(1900), "{}", ran.show());
    assert!(!file.exists(), "the child ran:\n{}", ran.show());
    ran.expect(UNAVAILABLE, "", Some(ran.started + Duration::from_secs(2)));
}

#[test]
fn f6_sigterm_ends_a_silent_connect() {
    let server = Server::start(vec![Step::Untagged, Step::Hold]);
    let file = child_file();
    let running = start(run_cmd(&server.url(PLAIN), &file, false));
    let seen = crate::harness::wait_until(Duration::from_secs(5), || {
        server.received().windows(5).any(|w| w == b"user\0")
    });
    assert!(seen, "pglock sent no startup packet");
    let sent = Instant::now();
    nix::sys::signal::kill(running.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    let ran = running.finish();
    assert!(!file.exists(), "the child ran:\n{}", ran.show());
    ran.expect(128 + 15, "", Some(sent));
}

// ---- Finding 7: require_auth and channel_binding ----

/// The password, in clear or as an MD5 answer, never reached the server.
fn no_password_sent(server: &Server, ran: &Ran) {
    assert!(
        !server.tags().contains(&b'p'),
        "a password message was sent:\n{}",
        ran.show()
    );
    let got = server.received();
    let leaked = got
        .windows(PASSWORD.len())
        .any(|w| w == PASSWORD.as_bytes());
    assert!(!leaked, "the password reached the server:\n{}", ran.show());
}

/// The server asks for a password with `request`; pglock must not send one.
fn password_request_refused(request: Vec<u8>, params: &str, phrase: &str) {
    let server = Server::start(vec![
        Step::Untagged,
        Step::Hostile(request),
        Step::Read,
        Step::Send(session()),
        Step::Serve(None),
    ]);
    let (ran, file) = run_against(&server, params);
    no_password_sent(&server, &ran);
    ran.expect_unrun(UNAVAILABLE, phrase, &server, &file);
}

const REQUIRE_SCRAM: &str = "sslmode=disable&connect_timeout=10&require_auth=scram-sha-256";

#[test]
fn f7_require_auth_scram_sends_no_cleartext_password() {
    password_request_refused(auth(3, &[]), REQUIRE_SCRAM, "require_auth");
}

#[test]
fn f7_require_auth_scram_sends_no_md5_password() {
    password_request_refused(auth(5, b"salt"), REQUIRE_SCRAM, "require_auth");
}

#[test]
fn f7_require_auth_scram_refuses_authentication_ok_without_sasl() {
    let server = Server::start(vec![
        Step::Untagged,
        Step::Hostile(session()),
        Step::Serve(None),
    ]);
    let (ran, file) = run_against(&server, REQUIRE_SCRAM);
    ran.expect_unrun(UNAVAILABLE, "require_auth", &server, &file);
}

/// SCRAM runs, then AuthenticationOk comes without AuthenticationSASLFinal (no server signature).
fn scram_without_server_final(params: &str) {
    let server = Server::start(vec![
        Step::Untagged,
        Step::Send(sasl()),
        Step::ScramFirst(4096),
        Step::Read,
        Step::Hostile(session()),
        Step::Serve(None),
    ]);
    let (ran, file) = run_against(&server, params);
    ran.expect_unrun(UNAVAILABLE, "did not complete", &server, &file);
}

#[test]
fn f7_scram_without_server_signature_is_refused() {
    scram_without_server_final(PLAIN);
}

#[test]
fn f7_scram_without_server_signature_is_refused_with_require_auth() {
    scram_without_server_final(REQUIRE_SCRAM);
}

const BINDING_PLAIN: &str = "sslmode=disable&connect_timeout=10&channel_binding=require";

#[test]
fn f7_channel_binding_require_over_plaintext_sends_no_password() {
    password_request_refused(auth(3, &[]), BINDING_PLAIN, "channel binding");
}

#[test]
fn f7_channel_binding_require_over_plaintext_refuses_scram_without_binding() {
    let server = Server::start(vec![Step::Untagged, Step::Hostile(sasl()), Step::Hold]);
    let (ran, file) = run_against(&server, BINDING_PLAIN);
    no_password_sent(&server, &ran);
    ran.expect_unrun(UNAVAILABLE, "channel binding", &server, &file);
}

// ---- Finding 8: no password fragment in errors about the connection string ----

fn no_fragment(url: &str, fragments: &[&str]) {
    let file = child_file();
    let ran = run(run_cmd(url, &file, false));
    ran.expect(2, "", None);
    for f in fragments {
        assert!(!ran.stderr.contains(f), "{f:?} shown:\n{}", ran.show());
    }
}

#[test]
fn f8_no_password_fragment_in_uri_errors() {
    // The unencoded '/' ends the authority: "abc7" looks like a port.
    no_fragment("postgres://app:abc7/7def@127.0.0.1:1/db", &["abc7", "7def"]);
}

#[test]
fn f8_no_password_fragment_in_key_value_errors() {
    no_fragment("password=my s3cr3t host=127.0.0.1 port=1", &["s3cr3t"]);
}

// ---- Low: server text printed raw ----

#[test]
fn server_error_text_is_printed_without_control_characters() {
    let message = "evil\x1b[31m red\x1b[0m\r\x07bell\x08\x0b\x0c\x7f\x1b]0;title\x07 end";
    let server = Server::start(vec![
        Step::Untagged,
        Step::Hostile(fatal(message, "first line\nsecond line\r\n")),
    ]);
    let (ran, file) = run_against(&server, PLAIN);
    ran.expect_unrun(UNAVAILABLE, "evil", &server, &file);
    let text = ran.stderr.strip_suffix('\n').unwrap_or(&ran.stderr);
    let bad: Vec<u8> = text.bytes().filter(|b| *b < 0x20 || *b == 0x7f).collect();
    assert!(
        bad.is_empty(),
        "control bytes {bad:?} in stderr:\n{}",
        ran.show()
    );
}

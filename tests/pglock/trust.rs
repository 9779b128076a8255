//! The PostgreSQL trust boundary against the real server (issue 12): SASLprep passwords,
//! channel binding, require_auth, service files, sslrootcert=system, SAN-less certificates,
//! client key permissions, CRLs, `~/.postgresql/root.crt` with sslmode=require, hostaddr.
//!
//! Every case asserts pglock's exit code, its stderr and whether the child ran. Where the
//! installed psql (libpq 15) knows the setting, the same connection is first tried with psql:
//! libpq is the reference, and a disagreement there means the test's own setup is wrong, not
//! pglock. `require_auth` and `sslrootcert=system` are libpq 16 features: no psql check there.
//!
//! Two clusters of their own: `trust` (TLS with a certificate for "localhost", one role per
//! authentication method, log_connections) shared by most tests, and `trust-san`, whose server
//! certificate the certificate-name tests swap (one at a time, under a mutex, with a reload and a
//! check of the certificate the server then presents).

use crate::harness::*;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// What the child prints: its presence in stdout shows that the child ran.
const RAN: &str = "pglock-trust-child-ran";

// Roles of the `trust` cluster, each with the pg_hba method its name says.
const MD5_PW: &str = "md5-pw-41c2";
const CLEAR_PW: &str = "clear-pw-9d0e";
/// Passwords that SASLprep changes (soft hyphen mapped to nothing, full-width letters NFKC'd to
/// ASCII) and one it refuses to prepare (a control character: both sides then use it raw).
const SASLPREP: &[(&str, &str)] = &[
    ("sp_soft", "pass\u{AD}word-1"),
    (
        "sp_wide",
        "\u{FF50}\u{FF41}\u{FF53}\u{FF53}\u{FF57}\u{FF4F}\u{FF52}\u{FF44}-2",
    ),
    ("sp_raw", "bell\u{7}pw-3"),
];

// ---------------------------------------------------------------------------------------------
// Certificates

/// The suite's PKI for these tests, all in one directory:
/// - `ca`, `otherca`: two CAs;
/// - `server`: CN=localhost, SAN DNS:localhost, signed by `ca` (the `trust` cluster's);
/// - `client`: CN=certuser, signed by `ca`;
/// - `san-nosan` (v3, CN=localhost, no SAN), `san-other` (SAN DNS:other.example, CN=localhost)
///   and `san-v1` (the PostgreSQL docs' CA-signed recipe: an X.509 v1 certificate, CN only), all
///   with the key `san.key` and signed by `ca`; `selfsigned` (the docs' self-signed recipe);
/// - `empty.crl` (revokes nothing), `revoked.crl` (revokes `server`), `crldir/<hash>.r0`.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn path(&self, f: &str) -> String {
        self.dir.join(f).display().to_string()
    }
}

/// Runs openssl in `dir`; returns its stdout.
fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn pki() -> &'static Pki {
    static P: OnceLock<Pki> = OnceLock::new();
    P.get_or_init(|| {
        let dir = tmpdir("trust-pki");
        for ca in ["ca", "otherca"] {
            openssl(
                &dir,
                &[
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    &format!("/CN=pglock trust {ca}"), "-keyout", &format!("{ca}.key"), "-out",
                    &format!("{ca}.crt"),
                ],
            );
        }
        let csr = |name: &str, cn: &str| {
            openssl(
                &dir,
                &[
                    "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", &format!("/CN={cn}"),
                    "-keyout", &format!("{name}.key"), "-out", &format!("{name}.csr"),
                ],
            );
        };
        // Signs NAME.csr with the CA into OUT.crt, with the extensions EXT (none: an X.509 v1
        // certificate, as `openssl x509 -req` makes it in the docs' recipe).
        let sign = |name: &str, out: &str, ext: Option<&str>| {
            let mut args = vec![
                "x509", "-req", "-text", "-days", "2", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial",
            ];
            let in_file = format!("{name}.csr");
            let out_file = format!("{out}.crt");
            let ext_file = format!("{out}.ext");
            args.extend(["-in", &in_file, "-out", &out_file]);
            if let Some(ext) = ext {
                std::fs::write(dir.join(&ext_file), ext).unwrap();
                args.extend(["-extfile", &ext_file]);
            }
            openssl(&dir, &args);
        };
        csr("server", "localhost");
        sign(
            "server",
            "server",
            Some("subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n"),
        );
        csr("client", "certuser");
        sign("client", "client", Some("extendedKeyUsage=clientAuth\n"));
        csr("san", "localhost");
        sign(
            "san",
            "san-nosan",
            Some("basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
        );
        sign(
            "san",
            "san-other",
            Some("subjectAltName=DNS:other.example\nextendedKeyUsage=serverAuth\n"),
        );
        sign("san", "san-v1", None);
        // The docs' self-signed recipe, word for word but the name and the lifetime.
        openssl(
            &dir,
            &[
                "req", "-new", "-x509", "-days", "2", "-nodes", "-text", "-out",
                "selfsigned.crt", "-keyout", "selfsigned.key", "-subj", "/CN=localhost",
            ],
        );
        // CRLs from `ca`: one that revokes nothing, one that revokes `server`.
        std::fs::write(
            dir.join("ca.cnf"),
            "[ca]\ndefault_ca = ca_default\n[ca_default]\ndatabase = index.txt\ncrlnumber = crlnumber\n\
             default_md = sha256\ndefault_crl_days = 2\ncertificate = ca.crt\nprivate_key = ca.key\n",
        )
        .unwrap();
        std::fs::write(dir.join("index.txt"), "").unwrap();
        std::fs::write(dir.join("crlnumber"), "01\n").unwrap();
        openssl(&dir, &["ca", "-config", "ca.cnf", "-gencrl", "-out", "empty.crl"]);
        openssl(&dir, &["ca", "-config", "ca.cnf", "-revoke", "server.crt"]);
        openssl(&dir, &["ca", "-config", "ca.cnf", "-gencrl", "-out", "revoked.crl"]);
        let hash = openssl(&dir, &["crl", "-in", "revoked.crl", "-hash", "-noout"]);
        std::fs::create_dir_all(dir.join("crldir")).unwrap();
        std::fs::copy(
            dir.join("revoked.crl"),
            dir.join("crldir").join(format!("{}.r0", hash.trim())),
        )
        .unwrap();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "key") {
                chmod(&p, 0o600);
            }
        }
        // The server reads its certificate, key and CA as the postgres user.
        chmod(&dir, 0o755);
        for f in ["", "server.crt", "server.key", "ca.crt"] {
            chown_pg(&dir.join(f));
        }
        Pki { dir }
    })
}

// ---------------------------------------------------------------------------------------------
// Clusters

/// TLS with `server.crt`, client certificates from `ca`, a role per authentication method.
fn trust() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| {
        let p = pki();
        let cl = Cluster::start_with(
            "trust",
            &format!(
                "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nssl_ca_file = '{}'\n\
                 log_connections = on\npassword_encryption = 'scram-sha-256'",
                p.path("server.crt"),
                p.path("server.key"),
                p.path("ca.crt")
            ),
            "hostssl all certuser 127.0.0.1/32 cert\n\
             hostnossl all certuser 127.0.0.1/32 reject\n\
             hostnossl all sslonly 127.0.0.1/32 reject\n\
             hostssl all plainonly 127.0.0.1/32 reject\n\
             host all md5user 127.0.0.1/32 md5\n\
             host all pwuser,pw_never,cb_never 127.0.0.1/32 password\n\
             host all trustuser 127.0.0.1/32 trust\n\
             local all pwuser password",
        );
        let mut sql = format!(
            "SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN PASSWORD '{MD5_PW}'; \
             RESET password_encryption; \
             CREATE ROLE pwuser LOGIN PASSWORD '{CLEAR_PW}'; CREATE ROLE pw_never LOGIN PASSWORD '{CLEAR_PW}'; \
             CREATE ROLE cb_never LOGIN PASSWORD '{CLEAR_PW}'; \
             CREATE ROLE trustuser LOGIN; CREATE ROLE certuser LOGIN; \
             CREATE ROLE sslonly LOGIN PASSWORD '{CLEAR_PW}'; \
             CREATE ROLE plainonly LOGIN PASSWORD '{CLEAR_PW}';"
        );
        for (role, pw) in SASLPREP {
            sql.push_str(&format!(" CREATE ROLE {role} LOGIN PASSWORD '{pw}';"));
        }
        cl.psql_super(&sql);
        cl.psql_super("CREATE DATABASE lockdb");
        cl
    })
}

/// The cluster whose server certificate `serve` swaps; SSL files in a directory of its own.
fn san_cluster() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| {
        let p = pki();
        let serve = p.dir.join("san-serve");
        std::fs::create_dir_all(&serve).unwrap();
        std::fs::copy(p.dir.join("san-nosan.crt"), serve.join("server.crt")).unwrap();
        std::fs::copy(p.dir.join("san.key"), serve.join("server.key")).unwrap();
        chmod(&serve.join("server.key"), 0o600);
        for f in ["", "server.crt", "server.key"] {
            chown_pg(&serve.join(f));
        }
        Cluster::start(
            "trust-san",
            &format!(
                "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'",
                serve.join("server.crt").display(),
                serve.join("server.key").display()
            ),
        )
    })
}

/// The first PEM certificate in `text`.
fn pem_block(text: &str) -> Option<String> {
    let start = text.find("-----BEGIN CERTIFICATE-----")?;
    let end = text[start..].find("-----END CERTIFICATE-----")? + start;
    Some(text[start..end].split_whitespace().collect())
}

/// The certificate the server presents now (openssl s_client's STARTTLS for PostgreSQL).
fn served_certificate(port: u16) -> Option<String> {
    let out = Command::new("openssl")
        .args(["s_client", "-starttls", "postgres", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .output()
        .ok()?;
    pem_block(&String::from_utf8_lossy(&out.stdout))
}

/// Makes the `trust-san` cluster present CERT with KEY (files of the PKI) and holds the cluster
/// for the caller until the guard is dropped: tests that swap the certificate run one at a time.
fn serve(cert: &str, key: &str) -> MutexGuard<'static, ()> {
    static SERVING: Mutex<()> = Mutex::new(());
    let guard = SERVING.lock().unwrap_or_else(|e| e.into_inner());
    let cl = san_cluster();
    let p = pki();
    let serve = p.dir.join("san-serve");
    // Rewrite in place: the files keep their owner (postgres) and mode.
    std::fs::write(
        serve.join("server.crt"),
        std::fs::read(p.dir.join(cert)).unwrap(),
    )
    .unwrap();
    std::fs::write(
        serve.join("server.key"),
        std::fs::read(p.dir.join(key)).unwrap(),
    )
    .unwrap();
    cl.psql_super("SELECT pg_reload_conf()");
    let want = pem_block(&std::fs::read_to_string(p.dir.join(cert)).unwrap());
    assert!(
        wait_until(Duration::from_secs(15), || served_certificate(cl.port)
            == want),
        "the server did not switch to {cert} after a reload"
    );
    guard
}

// ---------------------------------------------------------------------------------------------
// Running pglock and psql

/// pglock's result for one case.
struct Outcome {
    what: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn ran(&self) -> bool {
        self.stdout.contains(RAN)
    }

    fn show(&self) -> String {
        format!(
            "{}\nexit: {:?}, child ran: {}\nstdout:\n{}\nstderr:\n{}",
            self.what,
            self.code,
            self.ran(),
            self.stdout,
            self.stderr
        )
    }

    /// Exit 0 and the child ran.
    #[track_caller]
    fn succeeded(&self) -> &Self {
        assert!(
            self.code == Some(0) && self.ran(),
            "expected success\n{}",
            self.show()
        );
        self
    }

    /// One of `codes`, the child did not run, and stderr (case-insensitively) contains every
    /// needle, where a needle `a|b` is satisfied by either.
    #[track_caller]
    fn refused(&self, codes: &[i32], needles: &[&str]) -> &Self {
        assert!(
            self.code.is_some_and(|c| codes.contains(&c)),
            "expected exit {codes:?}\n{}",
            self.show()
        );
        assert!(!self.ran(), "the child ran\n{}", self.show());
        let err = self.stderr.to_lowercase();
        for n in needles {
            assert!(
                n.split('|').any(|alt| err.contains(&alt.to_lowercase())),
                "stderr lacks {n:?}\n{}",
                self.show()
            );
        }
        self
    }
}

/// Runs `pglock run --key NAME [--database-url URL] -- CHILD...` with no other connection
/// settings than `env`, killing it if it takes more than 30 s.
fn pglock_child(name: &str, url: Option<&str>, env: &[(&str, &str)], child: &[&str]) -> Outcome {
    let mut args = vec!["run", "--key", name];
    if let Some(url) = url {
        args.extend(["--database-url", url]);
    }
    args.push("--");
    args.extend(child);
    let mut cmd = pglock_bare(&args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let what = format!("pglock --database-url {url:?} with {env:?}");
    let mut proc = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pglock");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = drain(Box::new(proc.stdout.take().unwrap()));
    let err = drain(Box::new(proc.stderr.take().unwrap()));
    let end = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = proc.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > end {
            let _ = proc.kill();
            let _ = proc.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let o = Outcome {
        what,
        code: status.and_then(|s| s.code()),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    assert!(
        status.is_some(),
        "pglock still ran after 30 s\n{}",
        o.show()
    );
    o
}

/// pglock with a child that only says it ran.
fn pglock(url: &str, env: &[(&str, &str)]) -> Outcome {
    pglock_child(&key("trust"), Some(url), env, &["echo", RAN])
}

/// psql (libpq) with the same settings: stdout of SQL, or None when psql fails.
fn psql(conn: Option<&str>, env: &[(&str, &str)], sql: &str) -> Option<String> {
    let mut c = Command::new(trust().bin.join("psql"));
    c.args(["-X", "-w", "-At", "-c", sql]);
    if let Some(conn) = conn {
        c.args(["-d", conn]);
    }
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") {
            c.env_remove(k);
        }
    }
    c.env("HOME", "/nonexistent").env("PGCONNECT_TIMEOUT", "10");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.stdin(Stdio::null()).output().expect("psql");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// psql connects (`ok`) or fails with these settings: the reference behaviour the pglock case
/// next to it expects. A mismatch is a broken test setup, reported as such.
#[track_caller]
fn libpq_agrees(conn: &str, env: &[(&str, &str)], ok: bool) {
    let got = psql(Some(conn), env, "SELECT 1").is_some();
    assert_eq!(
        got,
        ok,
        "the test's setup is wrong: psql (libpq) {} with {conn:?} and {env:?}",
        if got { "connects" } else { "fails" }
    );
}

/// `key=value` settings for the trust cluster: HOST, USER, then EXTRA.
fn kv(host: &str, user: &str, extra: &str) -> String {
    format!(
        "host={host} port={} user={user} dbname=postgres {extra}",
        trust().port
    )
}

/// The superuser over TCP (scram-sha-256) with its password, and EXTRA.
fn su(host: &str, extra: &str) -> String {
    kv(
        host,
        "postgres",
        &format!("password={SUPERUSER_PASSWORD} {extra}"),
    )
}

/// Percent-encodes everything but unreserved characters, for URIs.
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Asserts that the trust cluster's log never shows ROLE authenticated (nor failing to):
/// the server never received a password for it.
#[track_caller]
fn never_received_a_password(role: &str) {
    std::thread::sleep(Duration::from_millis(300));
    let log = std::fs::read_to_string(trust().dir.join("log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(role)).collect();
    assert!(
        lines.is_empty(),
        "the server received a password for {role}:\n{}",
        lines.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 1. SASLprep

#[test]
fn saslprep_passwords_work_as_typed_from_pgpassword_and_a_uri() {
    let port = trust().port;
    for (role, pw) in SASLPREP {
        let conn = kv("127.0.0.1", role, "sslmode=disable");
        libpq_agrees(&conn, &[("PGPASSWORD", pw)], true);
        pglock(&conn, &[("PGPASSWORD", pw)]).succeeded();
        let uri = format!(
            "postgres://{role}:{}@127.0.0.1:{port}/postgres?sslmode=disable",
            pct(pw)
        );
        libpq_agrees(&uri, &[], true);
        pglock(&uri, &[]).succeeded();
        // Over TLS too (SCRAM-SHA-256-PLUS by default there).
        let tls = format!(
            "postgres://{role}:{}@localhost:{port}/postgres?sslmode=require",
            pct(pw)
        );
        libpq_agrees(&tls, &[], true);
        pglock(&tls, &[]).succeeded();
    }
    // A wrong password still fails: the cases above prove something.
    let conn = kv("127.0.0.1", "sp_soft", "sslmode=disable");
    libpq_agrees(&conn, &[("PGPASSWORD", "pass-word-1")], false);
    pglock(&conn, &[("PGPASSWORD", "pass-word-1")]).refused(&[69], &["sp_soft|password"]);
}

// ---------------------------------------------------------------------------------------------
// 2. channel_binding

#[test]
fn channel_binding_require_succeeds_over_tls_with_scram() {
    let port = trust().port;
    for conn in [
        su("localhost", "sslmode=require channel_binding=require"),
        format!("postgres://app:{APP_PASSWORD}@localhost:{port}/postgres?sslmode=require&channel_binding=require"),
        // With the server's certificate verified as well.
        su(
            "localhost",
            &format!(
                "sslmode=verify-full sslrootcert={} channel_binding=require",
                pki().path("ca.crt")
            ),
        ),
    ] {
        libpq_agrees(&conn, &[], true);
        pglock(&conn, &[]).succeeded();
    }
    // PGCHANNELBINDING means the same.
    let conn = su("localhost", "sslmode=require");
    let env = [("PGCHANNELBINDING", "require")];
    libpq_agrees(&conn, &env, true);
    pglock(&conn, &env).succeeded();
    // channel_binding=disable: plain SCRAM-SHA-256 over TLS.
    let conn = su("localhost", "sslmode=require channel_binding=disable");
    libpq_agrees(&conn, &[], true);
    pglock(&conn, &[]).succeeded();
}

#[test]
fn channel_binding_require_fails_without_tls() {
    let conn = su("127.0.0.1", "sslmode=disable channel_binding=require");
    libpq_agrees(&conn, &[], false);
    pglock(&conn, &[]).refused(&[69], &["channel binding"]);
    let conn = su("127.0.0.1", "sslmode=disable");
    let env = [("PGCHANNELBINDING", "require")];
    libpq_agrees(&conn, &env, false);
    pglock(&conn, &env).refused(&[69], &["channel binding"]);
    // A server without TLS at all, with the default sslmode (prefer) falling back to plaintext.
    let conn = format!(
        "host=127.0.0.1 port={} user=app password={APP_PASSWORD} dbname=postgres channel_binding=require",
        pg().port
    );
    libpq_agrees(&conn, &[], false);
    pglock(&conn, &[]).refused(&[69], &["channel binding"]);
}

#[test]
fn channel_binding_require_fails_for_md5_password_and_trust_roles() {
    for (user, pw) in [("md5user", MD5_PW), ("pwuser", CLEAR_PW), ("trustuser", "")] {
        let base = kv(
            "localhost",
            user,
            &format!("password='{pw}' sslmode=require"),
        );
        // Without channel_binding these roles connect: the failures below are its doing.
        libpq_agrees(&base, &[], true);
        pglock(&base, &[]).succeeded();
        let conn = format!("{base} channel_binding=require");
        libpq_agrees(&conn, &[], false);
        pglock(&conn, &[]).refused(&[69], &["channel binding"]);
        let env = [("PGCHANNELBINDING", "require")];
        libpq_agrees(&base, &env, false);
        pglock(&base, &env).refused(&[69], &["channel binding"]);
    }
    // The cleartext password is not sent at all.
    let conn = kv(
        "localhost",
        "cb_never",
        &format!("password={CLEAR_PW} sslmode=require channel_binding=require"),
    );
    pglock(&conn, &[]).refused(&[69], &["channel binding"]);
    never_received_a_password("cb_never");
}

// ---------------------------------------------------------------------------------------------
// 3. require_auth (libpq 16: no psql check)

const REQUIRE_AUTH_FAILED: &str = "require_auth|authentication method requirement";

#[test]
fn require_auth_refuses_methods_it_does_not_allow() {
    let scram = || {
        kv(
            "127.0.0.1",
            "app",
            &format!("password={APP_PASSWORD} sslmode=disable"),
        )
    };
    let md5 = || {
        kv(
            "127.0.0.1",
            "md5user",
            &format!("password={MD5_PW} sslmode=disable"),
        )
    };
    let clear = || {
        kv(
            "127.0.0.1",
            "pwuser",
            &format!("password={CLEAR_PW} sslmode=disable"),
        )
    };
    let trusted = || kv("127.0.0.1", "trustuser", "sslmode=disable");
    for conn in [
        format!("{} require_auth=scram-sha-256", clear()),
        format!("{} require_auth=scram-sha-256", md5()),
        format!("{} require_auth=scram-sha-256", trusted()),
        format!("{} require_auth=md5", scram()),
        format!("{} require_auth=password", scram()),
        format!("{} require_auth=none", scram()),
        format!("{} require_auth=!password", clear()),
        format!("{} require_auth=!md5,!scram-sha-256", scram()),
        format!("{} require_auth=!none", trusted()),
        format!("{} require_auth=password,md5", scram()),
    ] {
        pglock(&conn, &[]).refused(&[69], &[REQUIRE_AUTH_FAILED]);
    }
    // The server asked for a cleartext password: none was sent.
    let conn = kv(
        "127.0.0.1",
        "pw_never",
        &format!("password={CLEAR_PW} sslmode=disable require_auth=scram-sha-256"),
    );
    pglock(&conn, &[]).refused(&[69], &[REQUIRE_AUTH_FAILED]);
    never_received_a_password("pw_never");
}

#[test]
fn require_auth_accepts_methods_it_allows() {
    let scram = kv(
        "127.0.0.1",
        "app",
        &format!("password={APP_PASSWORD} sslmode=disable"),
    );
    let md5 = kv(
        "127.0.0.1",
        "md5user",
        &format!("password={MD5_PW} sslmode=disable"),
    );
    let clear = kv(
        "127.0.0.1",
        "pwuser",
        &format!("password={CLEAR_PW} sslmode=disable"),
    );
    let trusted = kv("127.0.0.1", "trustuser", "sslmode=disable");
    for conn in [
        format!("{scram} require_auth=scram-sha-256"),
        format!("{scram} require_auth=!password"),
        format!("{scram} require_auth=!md5,!password"),
        format!("{scram} require_auth=md5,scram-sha-256"),
        format!("{md5} require_auth=md5"),
        format!("{clear} require_auth=password"),
        format!("{trusted} require_auth=none"),
        format!("{trusted} require_auth=!scram-sha-256"),
        // Over TLS with channel binding.
        su(
            "localhost",
            "sslmode=require channel_binding=require require_auth=scram-sha-256",
        ),
    ] {
        pglock(&conn, &[]).succeeded();
    }
}

#[test]
fn pgrequireauth_means_what_the_keyword_means() {
    let scram = kv(
        "127.0.0.1",
        "app",
        &format!("password={APP_PASSWORD} sslmode=disable"),
    );
    let trusted = kv("127.0.0.1", "trustuser", "sslmode=disable");
    pglock(&scram, &[("PGREQUIREAUTH", "md5")]).refused(&[69], &[REQUIRE_AUTH_FAILED]);
    pglock(&scram, &[("PGREQUIREAUTH", "none")]).refused(&[69], &[REQUIRE_AUTH_FAILED]);
    pglock(&scram, &[("PGREQUIREAUTH", "scram-sha-256")]).succeeded();
    pglock(&trusted, &[("PGREQUIREAUTH", "none")]).succeeded();
    // The connection string's keyword wins over the variable.
    pglock(
        &format!("{scram} require_auth=scram-sha-256"),
        &[("PGREQUIREAUTH", "md5")],
    )
    .succeeded();
}

#[test]
fn invalid_require_auth_and_channel_binding_values_are_usage_errors() {
    let scram = kv(
        "127.0.0.1",
        "app",
        &format!("password={APP_PASSWORD} sslmode=disable"),
    );
    for bad in [
        "foo",
        "!md5,scram-sha-256",
        "scram-sha-256,!md5",
        "md5,,password",
    ] {
        pglock(&format!("{scram} require_auth='{bad}'"), &[]).refused(&[2], &["require_auth"]);
    }
    pglock(&scram, &[("PGREQUIREAUTH", "foo")]).refused(&[2], &["require_auth|PGREQUIREAUTH"]);
    pglock(&format!("{scram} channel_binding=maybe"), &[]).refused(&[2], &["channel_binding"]);
    pglock(&scram, &[("PGCHANNELBINDING", "maybe")])
        .refused(&[2], &["channel_binding|PGCHANNELBINDING"]);
    libpq_agrees(&format!("{scram} channel_binding=maybe"), &[], false);
}

// ---------------------------------------------------------------------------------------------
// 4. Service files

/// A service file with [locktest] for the trust cluster's database `lockdb` (and a decoy).
fn service_file(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "# services for pglock's tests\n[decoy]\nhost=127.0.0.1\nport=1\n\n\
             [locktest]\nhost=127.0.0.1\nport={}\ndbname=lockdb\nuser=app\npassword={APP_PASSWORD}\nsslmode=disable\n",
            trust().port
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// Runs pglock with a child that prints "DATABASE USER" of pglock's own session, then RAN.
fn pglock_session(url: Option<&str>, env: &[(&str, &str)]) -> Outcome {
    let name = key("trust-svc");
    let script = format!(
        "'{}' -X -At -d '{}' -c \"SELECT datname || ' ' || usename FROM pg_stat_activity WHERE application_name = 'pglock:{name}'\"; echo {RAN}",
        trust().bin.join("psql").display(),
        trust().socket_url()
    );
    pglock_child(&name, url, env, &["sh", "-c", &script])
}

#[test]
fn pgservice_and_a_service_file_say_where_to_connect() {
    let dir = tmpdir("trust-svc");
    let file = service_file(&dir, "pg_service.conf");
    let env = [("PGSERVICEFILE", file.as_str()), ("PGSERVICE", "locktest")];
    assert_eq!(
        psql(None, &env, "SELECT current_database()").as_deref(),
        Some("lockdb")
    );
    let o = pglock_session(None, &env);
    o.succeeded();
    assert!(o.stdout.starts_with("lockdb app\n"), "{}", o.show());
    // ~/.pg_service.conf is the default service file.
    service_file(&dir, ".pg_service.conf");
    let home = dir.display().to_string();
    let env = [("HOME", home.as_str()), ("PGSERVICE", "locktest")];
    assert_eq!(
        psql(None, &env, "SELECT current_database()").as_deref(),
        Some("lockdb")
    );
    let o = pglock_session(None, &env);
    o.succeeded();
    assert!(o.stdout.starts_with("lockdb app\n"), "{}", o.show());
}

#[test]
fn the_service_keyword_in_a_connection_string() {
    let dir = tmpdir("trust-svc-kw");
    let file = service_file(&dir, "pg_service.conf");
    let env = [("PGSERVICEFILE", file.as_str())];
    for (url, want) in [
        ("service=locktest", "lockdb app"),
        ("postgres:///?service=locktest", "lockdb app"),
        // What the connection string says itself wins over the service.
        ("service=locktest dbname=postgres", "postgres app"),
    ] {
        let db = want.split(' ').next().unwrap();
        assert_eq!(
            psql(Some(url), &env, "SELECT current_database()").as_deref(),
            Some(db),
            "psql with {url}"
        );
        let o = pglock_session(Some(url), &env);
        o.succeeded();
        assert!(o.stdout.starts_with(&format!("{want}\n")), "{}", o.show());
    }
}

#[test]
fn an_unknown_service_is_a_usage_error() {
    let dir = tmpdir("trust-svc-unknown");
    let file = service_file(&dir, "pg_service.conf");
    let env = [("PGSERVICEFILE", file.as_str()), ("PGSERVICE", "nope")];
    assert_eq!(psql(None, &env, "SELECT 1"), None);
    pglock_session(None, &env).refused(&[2], &["nope", "not found"]);
    let env = [("PGSERVICEFILE", file.as_str())];
    assert_eq!(psql(Some("service=nope"), &env, "SELECT 1"), None);
    pglock_session(Some("service=nope"), &env).refused(&[2], &["nope", "not found"]);
}

// ---------------------------------------------------------------------------------------------
// 5. sslrootcert=system (libpq 16: no psql check)

#[test]
fn sslrootcert_system_implies_verify_full() {
    let p = pki();
    let ca = p.path("ca.crt");
    let other = p.path("otherca.crt");
    let system = [("SSL_CERT_FILE", ca.as_str())];
    // The certificate is for localhost and signed by the "system" CA.
    pglock(&su("localhost", "sslrootcert=system"), &system).succeeded();
    pglock(
        &su("localhost", "sslrootcert=system sslmode=verify-full"),
        &system,
    )
    .succeeded();
    // No sslmode given: verify-full, so the name is checked...
    pglock(&su("127.0.0.1", "sslrootcert=system"), &system)
        .refused(&[69], &["127.0.0.1", "TLS|certificate"]);
    // ... and so is the chain.
    pglock(
        &su("localhost", "sslrootcert=system"),
        &[("SSL_CERT_FILE", other.as_str())],
    )
    .refused(&[69], &["TLS|certificate"]);
    // PGSSLROOTCERT=system, the same.
    let env = [("SSL_CERT_FILE", ca.as_str()), ("PGSSLROOTCERT", "system")];
    pglock(&su("localhost", ""), &env).succeeded();
    pglock(&su("127.0.0.1", ""), &env).refused(&[69], &["127.0.0.1"]);
}

#[test]
fn sslrootcert_system_refuses_weaker_sslmodes() {
    let ca = pki().path("ca.crt");
    let system = [("SSL_CERT_FILE", ca.as_str())];
    for mode in ["require", "verify-ca", "prefer", "allow", "disable"] {
        pglock(
            &su("localhost", &format!("sslrootcert=system sslmode={mode}")),
            &system,
        )
        .refused(&[2], &["sslrootcert", mode]);
    }
    let env = [("SSL_CERT_FILE", ca.as_str()), ("PGSSLMODE", "require")];
    pglock(&su("localhost", "sslrootcert=system"), &env).refused(&[2], &["sslrootcert"]);
}

// ---------------------------------------------------------------------------------------------
// 6. Server certificates without a subjectAltName (libpq's CN fallback)

fn san_url(host: &str, extra: &str) -> String {
    format!(
        "host={host} port={} user=postgres password={SUPERUSER_PASSWORD} dbname=postgres {extra}",
        san_cluster().port
    )
}

#[test]
fn a_certificate_without_subject_alt_name_is_checked_against_its_common_name() {
    let _serving = serve("san-nosan.crt", "san.key");
    let root = format!("sslrootcert={}", pki().path("ca.crt"));
    let conn = san_url("localhost", &format!("sslmode=verify-full {root}"));
    libpq_agrees(&conn, &[], true);
    pglock(&conn, &[]).succeeded();
    // CN=localhost is not 127.0.0.1.
    let conn = san_url("127.0.0.1", &format!("sslmode=verify-full {root}"));
    libpq_agrees(&conn, &[], false);
    pglock(&conn, &[]).refused(&[69], &["127.0.0.1"]);
}

#[test]
fn a_subject_alt_name_hides_the_common_name() {
    let _serving = serve("san-other.crt", "san.key");
    let root = format!("sslrootcert={}", pki().path("ca.crt"));
    // SAN DNS:other.example, CN=localhost: not valid for localhost.
    let conn = san_url("localhost", &format!("sslmode=verify-full {root}"));
    libpq_agrees(&conn, &[], false);
    pglock(&conn, &[]).refused(&[69], &["localhost"]);
    // The chain itself is fine.
    let conn = san_url("localhost", &format!("sslmode=verify-ca {root}"));
    libpq_agrees(&conn, &[], true);
    pglock(&conn, &[]).succeeded();
}

#[test]
fn the_docs_self_signed_recipe_verifies_against_itself() {
    let _serving = serve("selfsigned.crt", "selfsigned.key");
    let conn = san_url(
        "localhost",
        &format!(
            "sslmode=verify-full sslrootcert={}",
            pki().path("selfsigned.crt")
        ),
    );
    libpq_agrees(&conn, &[], true);
    pglock(&conn, &[]).succeeded();
    let conn = san_url(
        "localhost",
        &format!("sslmode=verify-full sslrootcert={}", pki().path("ca.crt")),
    );
    libpq_agrees(&conn, &[], false);
    pglock(&conn, &[]).refused(&[69], &["TLS|certificate"]);
}

#[test]
fn the_docs_ca_signed_recipe_an_x509_v1_certificate_verifies() {
    let _serving = serve("san-v1.crt", "san.key");
    let conn = san_url(
        "localhost",
        &format!("sslmode=verify-full sslrootcert={}", pki().path("ca.crt")),
    );
    libpq_agrees(&conn, &[], true);
    pglock(&conn, &[]).succeeded();
}

// ---------------------------------------------------------------------------------------------
// 7. Client key permissions

/// certuser's connection (pg_hba `cert`) with the client certificate and KEY.
fn cert_url(key: &Path) -> String {
    let p = pki();
    kv(
        "localhost",
        "certuser",
        &format!(
            "sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
            p.path("ca.crt"),
            p.path("client.crt"),
            key.display()
        ),
    )
}

const KEY_REFUSED: &[&str] = &["private key file", "permissions"];

#[test]
fn a_client_key_readable_by_others_is_refused() {
    let dir = tmpdir("trust-key");
    let key = dir.join("client.key");
    std::fs::copy(pki().dir.join("client.key"), &key).unwrap();
    chmod(&key, 0o644);
    let conn = cert_url(&key);
    libpq_agrees(&conn, &[], false);
    pglock(&conn, &[]).refused(&[69, 2], KEY_REFUSED);
    chmod(&key, 0o600);
    libpq_agrees(&conn, &[], true);
    pglock(&conn, &[]).succeeded();
    // The default files in ~/.postgresql, the same.
    let pgdir = dir.join(".postgresql");
    std::fs::create_dir_all(&pgdir).unwrap();
    std::fs::copy(pki().dir.join("client.crt"), pgdir.join("postgresql.crt")).unwrap();
    std::fs::copy(pki().dir.join("client.key"), pgdir.join("postgresql.key")).unwrap();
    chmod(&pgdir.join("postgresql.key"), 0o644);
    let conn = kv(
        "localhost",
        "certuser",
        &format!("sslmode=verify-full sslrootcert={}", pki().path("ca.crt")),
    );
    let home = dir.display().to_string();
    let env = [("HOME", home.as_str())];
    libpq_agrees(&conn, &env, false);
    pglock(&conn, &env).refused(&[69, 2], KEY_REFUSED);
    chmod(&pgdir.join("postgresql.key"), 0o600);
    libpq_agrees(&conn, &env, true);
    pglock(&conn, &env).succeeded();
}

/// libpq accepts a key owned by root with mode 0640 (a system-wide key readable by a group).
#[test]
fn a_root_owned_client_key_may_be_group_readable() {
    if !require_root("a client key owned by root") {
        return;
    }
    let dir = tmpdir("trust-key-root");
    let key = dir.join("client.key");
    std::fs::copy(pki().dir.join("client.key"), &key).unwrap();
    chmod(&key, 0o640);
    let conn = cert_url(&key);
    libpq_agrees(&conn, &[], true);
    pglock(&conn, &[]).succeeded();
    chmod(&key, 0o660);
    libpq_agrees(&conn, &[], false);
    pglock(&conn, &[]).refused(&[69, 2], KEY_REFUSED);
}

// ---------------------------------------------------------------------------------------------
// 8. Certificate revocation lists

#[test]
fn a_crl_that_revokes_the_server_certificate_fails_verification() {
    let p = pki();
    let verify_ca = |extra: &str| {
        su(
            "localhost",
            &format!("sslmode=verify-ca sslrootcert={} {extra}", p.path("ca.crt")),
        )
    };
    for ok in [
        verify_ca(""),
        verify_ca(&format!("sslcrl={}", p.path("empty.crl"))),
    ] {
        libpq_agrees(&ok, &[], true);
        pglock(&ok, &[]).succeeded();
    }
    let revoked = verify_ca(&format!("sslcrl={}", p.path("revoked.crl")));
    libpq_agrees(&revoked, &[], false);
    pglock(&revoked, &[]).refused(&[69], &["revoked"]);
    let full = su(
        "localhost",
        &format!(
            "sslmode=verify-full sslrootcert={} sslcrl={}",
            p.path("ca.crt"),
            p.path("revoked.crl")
        ),
    );
    libpq_agrees(&full, &[], false);
    pglock(&full, &[]).refused(&[69], &["revoked"]);
    let crl = p.path("revoked.crl");
    let env = [("PGSSLCRL", crl.as_str())];
    libpq_agrees(&verify_ca(""), &env, false);
    pglock(&verify_ca(""), &env).refused(&[69], &["revoked"]);
}

/// sslcrldir and ~/.postgresql/root.crl: used (the server is revoked) or refused, never ignored.
#[test]
fn crl_directories_and_the_default_root_crl_are_never_ignored() {
    let p = pki();
    let conn = su(
        "localhost",
        &format!(
            "sslmode=verify-ca sslrootcert={} sslcrldir={}",
            p.path("ca.crt"),
            p.path("crldir")
        ),
    );
    libpq_agrees(&conn, &[], false);
    let o = pglock(&conn, &[]);
    if o.code == Some(2) {
        o.refused(&[2], &["sslcrldir"]);
    } else {
        o.refused(&[69], &["revoked"]);
    }
    let home = tmpdir("trust-rootcrl");
    let pgdir = home.join(".postgresql");
    std::fs::create_dir_all(&pgdir).unwrap();
    std::fs::copy(p.dir.join("ca.crt"), pgdir.join("root.crt")).unwrap();
    std::fs::copy(p.dir.join("revoked.crl"), pgdir.join("root.crl")).unwrap();
    let home = home.display().to_string();
    let env = [("HOME", home.as_str())];
    let conn = su("localhost", "sslmode=verify-ca");
    libpq_agrees(&conn, &env, false);
    let o = pglock(&conn, &env);
    if o.code == Some(2) {
        o.refused(&[2], &["root.crl"]);
    } else {
        o.refused(&[69], &["revoked"]);
    }
}

// ---------------------------------------------------------------------------------------------
// 9. sslmode=require with ~/.postgresql/root.crt

/// A home directory whose ~/.postgresql/root.crt is the PKI's CA file CA.
fn home_with_root(ca: &str) -> String {
    let home = tmpdir("trust-home");
    std::fs::create_dir_all(home.join(".postgresql")).unwrap();
    std::fs::copy(pki().dir.join(ca), home.join(".postgresql/root.crt")).unwrap();
    home.display().to_string()
}

#[test]
fn sslmode_require_verifies_the_chain_when_root_crt_exists() {
    let wrong = home_with_root("otherca.crt");
    let right = home_with_root("ca.crt");
    let conn = su("localhost", "sslmode=require");
    libpq_agrees(&conn, &[("HOME", &wrong)], false);
    pglock(&conn, &[("HOME", &wrong)]).refused(&[69], &["TLS|certificate"]);
    let env = [("HOME", wrong.as_str()), ("PGSSLMODE", "require")];
    pglock(&su("localhost", ""), &env).refused(&[69], &["TLS|certificate"]);
    libpq_agrees(&conn, &[("HOME", &right)], true);
    pglock(&conn, &[("HOME", &right)]).succeeded();
    // The chain, not the name (as verify-ca).
    let conn = su("127.0.0.1", "sslmode=require");
    libpq_agrees(&conn, &[("HOME", &right)], true);
    pglock(&conn, &[("HOME", &right)]).succeeded();
}

// ---------------------------------------------------------------------------------------------
// 10. hostaddr

#[test]
fn hostaddr_is_where_to_connect_and_host_is_what_to_verify() {
    let ca = pki().path("ca.crt");
    let conn = su(
        "localhost",
        &format!("hostaddr=127.0.0.1 sslmode=verify-full sslrootcert={ca}"),
    );
    libpq_agrees(&conn, &[], true);
    pglock(&conn, &[]).succeeded();
    // Connects to 127.0.0.1 (wrong.example does not resolve) and checks the certificate
    // against wrong.example.
    let conn = su(
        "wrong.example",
        &format!("hostaddr=127.0.0.1 sslmode=verify-full sslrootcert={ca}"),
    );
    libpq_agrees(&conn, &[], false);
    pglock(&conn, &[]).refused(
        &[69],
        &["wrong.example", "certificate|not valid for|does not match"],
    );
    let conn = su("wrong.example", "hostaddr=127.0.0.1 sslmode=disable");
    libpq_agrees(&conn, &[], true);
    pglock(&conn, &[]).succeeded();
    // hostaddr alone, and PGHOSTADDR.
    let port = trust().port.to_string();
    let conn = format!(
        "hostaddr=127.0.0.1 port={port} user=postgres password={SUPERUSER_PASSWORD} dbname=postgres sslmode=disable"
    );
    libpq_agrees(&conn, &[], true);
    pglock(&conn, &[]).succeeded();
    let conn = format!(
        "port={port} user=postgres password={SUPERUSER_PASSWORD} dbname=postgres sslmode=disable"
    );
    let env = [("PGHOST", "wrong.example"), ("PGHOSTADDR", "127.0.0.1")];
    libpq_agrees(&conn, &env, true);
    pglock(&conn, &env).succeeded();
    // The password file matches the host name, not the address.
    let home = tmpdir("trust-hostaddr");
    let pass = home.join(".pgpass");
    std::fs::write(
        &pass,
        format!("wrong.example:{port}:*:app:{APP_PASSWORD}\n"),
    )
    .unwrap();
    chmod(&pass, 0o600);
    let home = home.display().to_string();
    let conn = kv("wrong.example", "app", "hostaddr=127.0.0.1 sslmode=disable");
    libpq_agrees(&conn, &[("HOME", &home)], true);
    pglock(&conn, &[("HOME", &home)]).succeeded();
}

/// As libpq: a password-file line for `localhost` stands for the Unix socket of the default
/// socket directory only (issue 22); a socket in another directory (the cluster's own here)
/// matches a line that names that directory.
#[test]
fn the_password_file_maps_only_the_default_socket_directory_to_localhost() {
    let (dir, port) = (trust().dir.display().to_string(), trust().port);
    let home = tmpdir("trust-pgpass-socket");
    let pass = home.join("pgpass");
    let conn = format!("host={dir} port={port} user=pwuser dbname=postgres");
    let with_line = |host: &str| {
        std::fs::write(&pass, format!("{host}:{port}:*:pwuser:{CLEAR_PW}\n")).unwrap();
        chmod(&pass, 0o600);
        [("PGPASSFILE", pass.to_str().unwrap().to_string())]
    };
    let env = with_line("localhost");
    let env = [(env[0].0, env[0].1.as_str())];
    libpq_agrees(&conn, &env, false);
    pglock(&conn, &env).refused(&[69], &["password"]);
    let env = with_line(&dir.replace(':', "\\:"));
    let env = [(env[0].0, env[0].1.as_str())];
    libpq_agrees(&conn, &env, true);
    pglock(&conn, &env).succeeded();
}

// ---------------------------------------------------------------------------------------------
// sslmode allow and prefer: the other way when the server refuses

/// As libpq: `allow` asks again with TLS when the server refuses the session without it, and
/// `prefer` asks again without TLS when the server refuses it over TLS.
#[test]
fn allow_and_prefer_try_the_other_way_when_the_server_refuses() {
    let conn = |role: &str, mode: &str| {
        kv(
            "127.0.0.1",
            role,
            &format!("password={CLEAR_PW} sslmode={mode}"),
        )
    };
    for (role, mode, ok) in [
        ("sslonly", "allow", true),
        ("sslonly", "disable", false),
        ("plainonly", "prefer", true),
        ("plainonly", "require", false),
    ] {
        let c = conn(role, mode);
        libpq_agrees(&c, &[], ok);
        let out = pglock(&c, &[]);
        if ok {
            out.succeeded();
        } else {
            out.refused(&[69], &["reject|no pg_hba.conf entry"]);
        }
    }
}

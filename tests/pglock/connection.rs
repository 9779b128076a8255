//! Contract §3: where pglock connects, how, with which session settings, and that no password
//! ever appears in its output.

use crate::harness::*;
use std::os::unix::fs::PermissionsExt;
use std::sync::OnceLock;
use std::time::Duration;

/// Runs `pglock run` with the given environment (and no other connection settings); the child
/// prints what the server says about the lock session.
fn run_env(
    name: &str,
    env: &[(&str, &str)],
    child_sql: Option<&str>,
) -> (Option<i32>, String, String) {
    let run = Run::new(name).unconnected();
    let mut c = match child_sql {
        Some(sql) => run.sh(&format!(
            "{} -X -At -d '{}' -c \"{sql}\"",
            pg().bin.join("psql").display(),
            pg().socket_url()
        )),
        None => run.child(["true"]),
    };
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn libpq_environment_variables_are_used() {
    let name = key("pgenv");
    let port = pg().port.to_string();
    let sql = format!("SELECT usename || ' ' || datname FROM pg_stat_activity WHERE application_name = 'pglock:{name}'");
    let (code, out, err) = run_env(
        &name,
        &[
            ("PGHOST", "127.0.0.1"),
            ("PGPORT", &port),
            ("PGUSER", "app"),
            ("PGPASSWORD", APP_PASSWORD),
            ("PGDATABASE", "postgres"),
            ("PGSSLMODE", "disable"),
        ],
        Some(&sql),
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), "app postgres");
}

#[test]
fn database_url_flag_beats_pglock_database_url_beats_database_url_beats_pg_variables() {
    let name = key("urlorder");
    let bogus = "postgres://nobody:x@127.0.0.1:1/none";
    // --database-url beats PGLOCK_DATABASE_URL, which beats DATABASE_URL, which beats PG*.
    let mut c = Run::new(&name).database_url(&pg().url()).child(["true"]);
    c.env("PGLOCK_DATABASE_URL", bogus)
        .env("DATABASE_URL", bogus);
    expect_code(c, 0);
    let (code, _, err) = run_env(
        &name,
        &[
            ("PGLOCK_DATABASE_URL", &pg().url()),
            ("DATABASE_URL", bogus),
        ],
        None,
    );
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = run_env(
        &name,
        &[
            ("DATABASE_URL", &pg().url()),
            ("PGHOST", "127.0.0.1"),
            ("PGPORT", "1"),
        ],
        None,
    );
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn key_value_strings_and_urls_reach_a_unix_socket_host() {
    let name = key("kv");
    let dir = pg().dir.display().to_string();
    let port = pg().port;
    for url in [
        format!("host={dir} port={port} user=postgres dbname=postgres"),
        format!("host='{dir}' port = {port} user=postgres"),
        format!("postgresql://postgres@{}:{port}/postgres", dir.replace('/', "%2F")),
        format!("postgres:///postgres?host={dir}&port={port}&user=postgres"),
        format!("host=127.0.0.1 port={port} user=app password={APP_PASSWORD} dbname=postgres sslmode=disable"),
    ] {
        let (code, _, err) = run_env(&name, &[("PGLOCK_DATABASE_URL", &url)], None);
        assert_eq!(code, Some(0), "{url}: {err}");
    }
}

#[test]
fn the_password_file_is_read_and_ignored_when_others_can_read_it() {
    let name = key("pgpass");
    let home = tmpdir("pgpass");
    let pass = home.join(".pgpass");
    std::fs::write(
        &pass,
        format!("# comment\n127.0.0.1:{}:*:app:{APP_PASSWORD}\n", pg().port),
    )
    .unwrap();
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let url = format!(
        "postgres://app@127.0.0.1:{}/postgres?sslmode=disable",
        pg().port
    );
    let home_s = home.to_str().unwrap();
    let (code, _, err) = run_env(
        &name,
        &[("PGLOCK_DATABASE_URL", &url), ("HOME", home_s)],
        None,
    );
    assert_eq!(code, Some(0), "{err}");
    // PGPASSFILE names another file.
    let other = home.join("other");
    std::fs::copy(&pass, &other).unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, _, err) = run_env(
        &name,
        &[
            ("PGLOCK_DATABASE_URL", &url),
            ("PGPASSFILE", other.to_str().unwrap()),
        ],
        None,
    );
    assert_eq!(code, Some(0), "{err}");
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = run_env(
        &name,
        &[("PGLOCK_DATABASE_URL", &url), ("HOME", home_s)],
        None,
    );
    assert_eq!(code, Some(69), "{err}");
    assert!(
        err.contains("group or world access") && err.contains("password"),
        "{err}"
    );
}

#[test]
fn no_password_ever_appears_in_output() {
    let name = key("nopw");
    let secret = "Sup3r-Secret-Pw";
    let urls = [
        format!(
            "postgres://postgres:{secret}@127.0.0.1:{}/postgres?sslmode=disable",
            pg().port
        ), // wrong password
        format!("postgres://postgres:{secret}@127.0.0.1:1/postgres"), // refused
        format!("postgres://postgres:{secret}@127.0.0.1:notaport/postgres"), // malformed
        format!("postgres://postgres:{secret}@no-such-host.invalid/postgres"), // unknown host
        format!(
            "host=127.0.0.1 port={} user=postgres password={secret} sslmode=require",
            pg().port
        ), // TLS refused
        format!("host=127.0.0.1 password={secret} bogus=1"),
    ];
    for url in &urls {
        for verbosity in ["-v", "--log-format=json"] {
            // -w 1s: the retries of a refused connection are logged too, without a password.
            let out = Run::new(&name)
                .args([verbosity, "-w", "1s"])
                .database_url(url)
                .child(["true"])
                .output()
                .unwrap();
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                matches!(out.status.code(), Some(69) | Some(2)),
                "{url}: {all}"
            );
            assert!(!all.contains(secret), "password leaked for {url}: {all}");
            assert!(all.lines().count() >= 1);
        }
    }
    // Via PGPASSWORD too.
    let (code, _, err) = run_env(
        &name,
        &[
            ("PGHOST", "127.0.0.1"),
            ("PGPORT", "1"),
            ("PGUSER", "u"),
            ("PGPASSWORD", secret),
            ("PGLOCK_TIMEOUT", "1s"),
        ],
        None,
    );
    assert_eq!(code, Some(69));
    assert!(!err.contains(secret));
}

#[test]
fn a_failed_password_says_where_it_came_from_without_showing_it() {
    let name = key("pwsource");
    let wrong = "Wr0ng-Pw-9c1e";
    let port = pg().port.to_string();
    let home = tmpdir("pwsource");
    let pass = home.join("pgpass");
    std::fs::write(
        &pass,
        format!("# first\nelsewhere:1:*:*:x\n127.0.0.1:{port}:*:app:{wrong}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cases: [(&[(&str, &str)], String); 3] = [
        (
            &[(
                "PGLOCK_DATABASE_URL",
                &format!("postgres://app:{wrong}@127.0.0.1:{port}/postgres?sslmode=disable"),
            )],
            "(the password came from the connection URL)".into(),
        ),
        (
            &[
                ("PGHOST", "127.0.0.1"),
                ("PGPORT", &port),
                ("PGUSER", "app"),
                ("PGPASSWORD", wrong),
                ("PGSSLMODE", "disable"),
            ],
            "(the password came from PGPASSWORD)".into(),
        ),
        (
            &[
                ("PGHOST", "127.0.0.1"),
                ("PGPORT", &port),
                ("PGUSER", "app"),
                ("PGPASSFILE", pass.to_str().unwrap()),
                ("PGSSLMODE", "disable"),
            ],
            format!("(the password came from line 3 of {})", pass.display()),
        ),
    ];
    for (env, says) in cases {
        let (code, _, err) = run_env(&name, env, None);
        assert_eq!(code, Some(69), "{env:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("password authentication failed") && err.contains(&says),
            "{env:?}: {err}"
        );
        assert!(!err.contains(wrong), "password leaked: {err}");
    }
}

#[test]
fn with_nothing_configured_and_no_local_server_one_line_says_what_to_set() {
    let sockets = ["/var/run/postgresql/.s.PGSQL.5432", "/tmp/.s.PGSQL.5432"];
    if sockets.iter().any(|s| std::path::Path::new(s).exists()) {
        note("skipped: a local PostgreSQL listens on the default socket");
        return;
    }
    let (code, _, err) = run_env(&key("nothing"), &[], None);
    assert_eq!(code, Some(69), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("pglock: no database configured: set PGLOCK_DATABASE_URL or DATABASE_URL")
            && err.contains("PGHOST")
            && err.contains("tried the local socket /")
            && err.contains(".s.PGSQL.5432"),
        "{err}"
    );
    // Something configured: the usual message, naming the target (-n: a waiting run would
    // wait for a socket that may appear, restart.rs).
    let (code, _, err) = run_env(
        &key("nothing"),
        &[("PGPORT", "1"), ("PGLOCK_NO_WAIT", "true")],
        None,
    );
    assert_eq!(code, Some(69), "{err}");
    assert!(
        err.contains("cannot connect to /") && !err.contains("no database configured"),
        "{err}"
    );
}

#[test]
fn application_name_is_pglock_name_unless_set_and_cut_to_63_bytes() {
    let name = key("appname");
    let sql = "SELECT application_name FROM pg_stat_activity WHERE pid = (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid() AND classid = CLASSID AND objid = OBJID)";
    let id = lock_id(&name);
    let sql = sql
        .replace("CLASSID", &(((id as u64) >> 32) as u32).to_string())
        .replace("OBJID", &((id as u64 & 0xffff_ffff) as u32).to_string());
    let (code, out, err) = run_env(&name, &[("PGLOCK_DATABASE_URL", &pg().url())], Some(&sql));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), format!("pglock:{name}"));
    let (code, out, _) = run_env(
        &name,
        &[(
            "PGLOCK_DATABASE_URL",
            &format!("{}&application_name=mine", pg().url()),
        )],
        Some(&sql),
    );
    assert_eq!((code, out.trim()), (Some(0), "mine"));
    let (code, out, _) = run_env(
        &name,
        &[
            ("PGLOCK_DATABASE_URL", &pg().url()),
            ("PGAPPNAME", "fromenv"),
        ],
        Some(&sql),
    );
    assert_eq!((code, out.trim()), (Some(0), "fromenv"));
    // A long multibyte name is cut at a character boundary within 63 bytes (the server shows
    // each non-ASCII byte of application_name as '?').
    let long = format!("{name}-{}", "é".repeat(40));
    let lid = lock_id(&long);
    let h = hold(Run::new(&long).child(["sleep", "30"]), lid);
    let app = pg().locks_on(lid)[0].split(',').nth(2).unwrap().to_string();
    let ascii_prefix = format!("pglock:{name}-");
    assert!(
        (62..=63).contains(&app.len()) && app.starts_with(&ascii_prefix),
        "{app}"
    );
    assert!(
        app[ascii_prefix.len()..].bytes().all(|b| b == b'?')
            && (app.len() - ascii_prefix.len()).is_multiple_of(2),
        "{app}"
    );
    stop(h);
}

#[test]
fn server_and_role_timeouts_do_not_end_the_lock_session() {
    let name = key("timeouts");
    pg().psql_super(&format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'impatient') THEN \
         CREATE ROLE impatient LOGIN PASSWORD '{APP_PASSWORD}'; END IF; END $$; \
         ALTER ROLE impatient SET statement_timeout = '50ms'; ALTER ROLE impatient SET lock_timeout = '50ms'; \
         ALTER ROLE impatient SET idle_session_timeout = '200ms'; ALTER ROLE impatient SET idle_in_transaction_session_timeout = '200ms';"
    ));
    let url = format!(
        "postgres://impatient:{APP_PASSWORD}@127.0.0.1:{}/postgres?sslmode=disable",
        pg().port
    );
    // Idle for 1 s while the child runs: idle_session_timeout would have ended the session.
    let id = lock_id(&name);
    let h = hold(Run::new(&name).url(&url).child(["sleep", "1"]), id);
    // Waits longer than lock_timeout and statement_timeout would allow.
    expect_code(Run::new(&name).url(&url).child(["true"]), 0);
    assert_eq!(h.wait_with_output().unwrap().status.code(), Some(0));
}

/// Certificates made by the suite: a CA, a server certificate for "localhost" signed by it, a
/// client certificate for the role "certuser", and an unrelated CA.
pub struct Certs {
    pub dir: std::path::PathBuf,
}

impl Certs {
    pub fn path(&self, f: &str) -> String {
        self.dir.join(f).display().to_string()
    }
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn certs() -> &'static Certs {
    static C: OnceLock<Certs> = OnceLock::new();
    C.get_or_init(|| {
        let dir = tmpdir("tlscerts");
        for ca in ["ca", "otherca"] {
            openssl(
                &dir,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN=pglock test {ca}"),
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.crt"),
                ],
            );
        }
        for (name, cn, ext) in [
            (
                "server",
                "localhost",
                "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", "certuser", "extendedKeyUsage=clientAuth\n"),
        ] {
            std::fs::write(dir.join(format!("{name}.ext")), ext.replace("\\n", "\n")).unwrap();
            openssl(
                &dir,
                &[
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-subj",
                    &format!("/CN={cn}"),
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                ],
            );
            openssl(
                &dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-extfile",
                    &format!("{name}.ext"),
                    "-out",
                    &format!("{name}.crt"),
                ],
            );
        }
        for f in ["server.key", "client.key"] {
            std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        if is_root() {
            for f in ["", "server.crt", "server.key", "ca.crt"] {
                chown_pg(&dir.join(f));
            }
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Certs { dir }
    })
}

fn tls_cluster() -> &'static Cluster {
    static TLS: OnceLock<Cluster> = OnceLock::new();
    TLS.get_or_init(|| {
        let c = certs();
        let cl = Cluster::start_with(
            "tls",
            &format!(
                "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nssl_ca_file = '{}'",
                c.path("server.crt"),
                c.path("server.key"),
                c.path("ca.crt")
            ),
            "hostssl all certuser 127.0.0.1/32 cert\nhostnossl all certuser 127.0.0.1/32 reject",
        );
        cl.psql_super("CREATE ROLE certuser LOGIN");
        cl
    })
}

#[test]
fn sslmode_require_and_prefer_use_tls_and_disable_does_not() {
    let c = tls_cluster();
    let name = key("tls");
    let sql = format!("SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'pglock:{name}'");
    for (mode, want) in [("require", "t"), ("prefer", "t"), ("disable", "f")] {
        let url = format!(
            "postgres://postgres:{SUPERUSER_PASSWORD}@127.0.0.1:{}/postgres?sslmode={mode}",
            c.port
        );
        let script = format!(
            "{} -X -At -d '{}' -c \"{sql}\"",
            c.bin.join("psql").display(),
            c.socket_url()
        );
        let (out, _) = expect_code(Run::new(&name).url(url).sh(&script), 0);
        assert_eq!(out.trim(), want, "sslmode={mode}");
    }
    // The main cluster has no TLS: require fails with 69 naming the target, prefer goes plain.
    let url = format!(
        "postgres://postgres:{SUPERUSER_PASSWORD}@127.0.0.1:{}/postgres?sslmode=require",
        pg().port
    );
    let (code, _, err) = run_env(&name, &[("PGLOCK_DATABASE_URL", &url)], None);
    assert_eq!(code, Some(69), "{err}");
    assert!(
        err.contains("does not accept TLS") && err.contains(&pg().port.to_string()),
        "{err}"
    );
    let url = format!(
        "postgres://postgres:{SUPERUSER_PASSWORD}@127.0.0.1:{}/postgres?sslmode=prefer",
        pg().port
    );
    assert_eq!(
        run_env(&name, &[("PGLOCK_DATABASE_URL", &url)], None).0,
        Some(0)
    );
}

fn tls_run(url: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let name = key("tlsv");
    let mut c = Run::new(&name).url(url).child(["true"]);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn tls_verify_full_and_verify_ca_check_the_ca_and_the_host() {
    let cl = tls_cluster();
    let c = certs();
    let base = |host: &str, mode: &str, root: &str| {
        format!("postgres://postgres:{SUPERUSER_PASSWORD}@{host}:{}/postgres?sslmode={mode}&sslrootcert={root}", cl.port)
    };
    // Right CA, right host name.
    let (code, err) = tls_run(&base("localhost", "verify-full", &c.path("ca.crt")), &[]);
    assert_eq!(code, Some(0), "{err}");
    // Right CA, wrong name (the certificate is for localhost, not 127.0.0.1).
    let (code, err) = tls_run(&base("127.0.0.1", "verify-full", &c.path("ca.crt")), &[]);
    assert_eq!(code, Some(69), "{err}");
    assert!(
        err.contains("127.0.0.1")
            && err.contains("TLS")
            && err.to_lowercase().contains("not valid for"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // verify-ca does not check the name.
    let (code, err) = tls_run(&base("127.0.0.1", "verify-ca", &c.path("ca.crt")), &[]);
    assert_eq!(code, Some(0), "{err}");
    // Wrong CA: both verify modes fail, and so does require once a root certificate is given.
    for mode in ["verify-full", "verify-ca", "require"] {
        let (code, err) = tls_run(&base("localhost", mode, &c.path("otherca.crt")), &[]);
        assert_eq!(code, Some(69), "{mode}: {err}");
        assert!(err.contains("TLS handshake failed"), "{mode}: {err}");
    }
    // No CA at all for verify-full: a clear message.
    let url = format!(
        "postgres://postgres:{SUPERUSER_PASSWORD}@localhost:{}/postgres?sslmode=verify-full",
        cl.port
    );
    let (code, err) = tls_run(&url, &[("HOME", "/nonexistent")]);
    assert_eq!(code, Some(69), "{err}");
    assert!(err.contains("sslrootcert"), "{err}");
    // require without a CA succeeds; PGSSLROOTCERT and PGSSLMODE work as in libpq.
    let url = format!(
        "postgres://postgres:{SUPERUSER_PASSWORD}@localhost:{}/postgres",
        cl.port
    );
    assert_eq!(tls_run(&url, &[("PGSSLMODE", "require")]).0, Some(0));
    let (code, err) = tls_run(
        &url,
        &[
            ("PGSSLMODE", "verify-full"),
            ("PGSSLROOTCERT", &c.path("ca.crt")),
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    // disable against a server that demands TLS for this role fails.
    let url = format!(
        "postgres://certuser@127.0.0.1:{}/postgres?sslmode=disable",
        cl.port
    );
    let (code, err) = tls_run(&url, &[]);
    assert_eq!(code, Some(69), "{err}");
}

#[test]
fn a_role_that_needs_a_client_certificate_connects_with_one_and_is_refused_without() {
    let cl = tls_cluster();
    let c = certs();
    let url = format!(
        "postgres://certuser@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        cl.port,
        c.path("ca.crt"),
        c.path("client.crt"),
        c.path("client.key")
    );
    let (code, err) = tls_run(&url, &[]);
    assert_eq!(code, Some(0), "{err}");
    // Without the client certificate the server refuses the role.
    let url = format!(
        "postgres://certuser@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        cl.port,
        c.path("ca.crt")
    );
    let (code, err) = tls_run(&url, &[("HOME", "/nonexistent")]);
    assert_eq!(code, Some(69), "{err}");
}

#[test]
fn a_hot_standby_is_refused_and_a_host_list_picks_the_primary() {
    let standby = pg().standby("standby");
    let name = key("standby");
    let id = lock_id(&name);
    let on = |host_port: &str| {
        format!("postgres://postgres:{SUPERUSER_PASSWORD}@{host_port}/postgres?sslmode=disable")
    };
    // The standby alone: refused, naming it (retried for the 1 s of --timeout first: a standby
    // may be being promoted, restart.rs).
    let (code, _, err) = run_env(
        &name,
        &[
            (
                "PGLOCK_DATABASE_URL",
                &on(&format!("127.0.0.1:{}", standby.port)),
            ),
            ("PGLOCK_TIMEOUT", "1s"),
        ],
        None,
    );
    assert_eq!(code, Some(69), "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{}", standby.port)) && err.contains("hot standby"),
        "{err}"
    );
    // Standby listed first, primary second: the primary is chosen and holds the lock.
    for url in [
        on(&format!("127.0.0.1:{},127.0.0.1:{}", standby.port, pg().port)),
        format!("host=127.0.0.1,127.0.0.1 port={},{} user=postgres password={SUPERUSER_PASSWORD} dbname=postgres sslmode=disable", standby.port, pg().port),
    ] {
        let h = Run::new(&name).url(&url).child(["sleep", "30"]).spawn().unwrap();
        assert!(wait_until(Duration::from_secs(10), || pg().locks_on(id).len() == 1), "{url}: the lock is on the primary");
        stop(h);
    }
    // Only standbys (and a dead host): refused.
    let (code, _, err) = run_env(
        &name,
        &[
            (
                "PGLOCK_DATABASE_URL",
                &on(&format!("127.0.0.1:1,127.0.0.1:{}", standby.port)),
            ),
            ("PGLOCK_NO_WAIT", "true"),
        ],
        None,
    );
    assert_eq!(code, Some(69), "{err}");
    assert!(err.contains("hot standby"), "{err}");
}

/// Whether an ELF executable names a dynamic loader (a PT_INTERP program header).
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).any(|i| {
        let at = phoff + i * size;
        u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) == 3
    })
}

/// On x86_64 Linux pglock is one static executable, the musl build that ships
/// (scripts/target) and the glibc one of a plain `cargo build` (.cargo/config.toml): it runs
/// from an otherwise empty root, with no shared library, no /dev (SCRAM's nonce comes from
/// getrandom(2)) and no /etc but a hosts file, and resolves the host name there.
#[test]
fn static_binary_runs_in_an_empty_root() {
    if !cfg!(all(
        target_os = "linux",
        any(target_env = "gnu", target_env = "musl"),
        target_arch = "x86_64"
    )) {
        note("skipped: a static executable is built for x86_64 Linux only");
        return;
    }
    if !require_root("chroot(8)") {
        return;
    }
    let elf = std::fs::read(bin()).unwrap();
    assert!(
        !has_interpreter(&elf),
        "{} is dynamically linked: the crt-static flag of .cargo/config.toml (glibc) or the musl target's default did not apply",
        bin()
    );
    let root = tmpdir("static-root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::copy(bin(), root.join("bin/pglock")).unwrap();
    std::fs::write(root.join("etc/hosts"), "127.0.0.1 db.pglock.test\n").unwrap();
    let url = pg().app_url().replace("127.0.0.1", "db.pglock.test");
    let name = key("static-root");
    let out = std::process::Command::new("/usr/sbin/chroot")
        .arg(&root)
        .args(["/bin/pglock", "run", "--key", &name, "--database-url", &url])
        .args(["--", "/bin/pglock", "--version"])
        .env_clear()
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("pglock "),
        "the child did not run: {stderr}"
    );
    assert!(stderr.contains("acquired lock"), "{stderr}");
    let _ = std::fs::remove_dir_all(&root);
}

/// A root in which host names are looked up through a DNS server that never answers (a UDP
/// socket of the test's, on a loopback address of its own): the look-up hangs as it does when
/// a network drops DNS packets.
fn silent_dns_root(name: &str) -> (std::path::PathBuf, std::net::UdpSocket) {
    let root = tmpdir(name);
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::copy(bin(), root.join("bin/pglock")).unwrap();
    std::fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    std::fs::write(root.join("etc/nsswitch.conf"), "hosts: dns\n").unwrap();
    let sock = (70..120)
        .find_map(|last| {
            std::net::UdpSocket::bind(("127.0.0.".to_string() + &last.to_string(), 53)).ok()
        })
        .expect("a free loopback address for port 53");
    let ns = sock.local_addr().unwrap().ip();
    std::fs::write(
        root.join("etc/resolv.conf"),
        format!("nameserver {ns}\noptions timeout:30 attempts:5\n"),
    )
    .unwrap();
    (root, sock)
}

/// Host-name look-ups are bounded by connect_timeout and cancelled by a signal (getaddrinfo
/// itself can be neither: its own timeouts here add up to minutes).
#[test]
fn a_hanging_dns_lookup_obeys_connect_timeout_and_signals() {
    if !require_root("chroot(8)") {
        return;
    }
    let (root, _dns) = silent_dns_root("dns-hang");
    let run = |url: &str| {
        let mut c = std::process::Command::new("/usr/sbin/chroot");
        c.arg(&root)
            // -n: one look-up (a waiting run retries a DNS server that does not answer).
            .args([
                "/bin/pglock",
                "run",
                "-n",
                "--key",
                &key("dns"),
                "--database-url",
                url,
            ])
            .args(["--", "/bin/pglock", "--version"])
            .env_clear()
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c
    };
    let t = std::time::Instant::now();
    let out = run("postgres://u:p@db.never.test:5432/x?connect_timeout=2&sslmode=disable")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("timed out"), "{stderr}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("pglock "),
        "the child ran"
    );
    let took = t.elapsed();
    assert!(
        took < Duration::from_millis(4500),
        "took {took:?}: {stderr}"
    );

    // No connect_timeout: SIGTERM ends the wait at once.
    let child = run("postgres://u:p@db.never.test:5432/x?sslmode=disable")
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let t = std::time::Instant::now();
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(128 + 15), "{stderr}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
    let _ = std::fs::remove_dir_all(&root);
}

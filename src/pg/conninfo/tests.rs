//! Resolution, parsing and the files, as libpq does them.

use super::files::split_passfile_line;
use super::*;

fn resolve(s: Option<&str>, env: &[(&str, &str)]) -> Result<ConnParams> {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    ConnParams::resolve_with(s, &move |k| {
        env.iter().find(|(a, _)| a == k).map(|(_, b)| b.clone())
    })
}

/// `resolve` with PGUSER set and HOME pointing nowhere, so that no real file is read.
fn ok(s: &str, env: &[(&str, &str)]) -> ConnParams {
    let mut e = vec![("PGUSER", "u"), ("HOME", "/nonexistent")];
    e.extend_from_slice(env);
    resolve(Some(s), &e).unwrap_or_else(|e| panic!("{s}: {}", e.msg))
}

fn err(s: &str, env: &[(&str, &str)]) -> String {
    let mut e = vec![("PGUSER", "u"), ("HOME", "/nonexistent")];
    e.extend_from_slice(env);
    match resolve(Some(s), &e) {
        Ok(_) => panic!("{s}: accepted"),
        Err(e) => {
            assert_eq!(e.exit_code(), 2, "{}", e.msg);
            e.msg
        }
    }
}

/// A directory with files, removed when dropped.
struct Dir(PathBuf);
impl Dir {
    fn new(files: &[(&str, &str)]) -> Dir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("pglock-conninfo-{}-{n}", std::process::id()));
        for (rel, text) in files {
            let p = dir.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }
    fn path(&self, rel: &str) -> String {
        self.0.join(rel).display().to_string()
    }
    fn s(&self) -> &str {
        self.0.to_str().unwrap()
    }
}
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tcp(h: &str, port: u16) -> Target {
    Target {
        host: Host::Tcp(h.into()),
        port,
        hostaddr: None,
    }
}

#[test]
fn uri() {
    let p = resolve(
        Some("postgres://u:p%40ss@db.example:6432/app?sslmode=require&application_name=x"),
        &[],
    )
    .unwrap();
    assert_eq!(p.user, "u");
    assert_eq!(p.password.as_deref(), Some("p@ss"));
    assert_eq!(p.dbname, "app");
    assert_eq!(p.targets, vec![tcp("db.example", 6432)]);
    assert_eq!(p.sslmode, SslMode::Require);
    assert_eq!(p.application_name.as_deref(), Some("x"));
}

#[test]
fn uri_multi_host_ipv6_socket() {
    let p = resolve(Some("postgresql://a:1,[::1]:2,b/x?user=me"), &[]).unwrap();
    assert_eq!(p.targets.len(), 3);
    assert_eq!(p.targets[1], tcp("::1", 2));
    assert_eq!(p.targets[2].port, 5432);
    let p = resolve(Some("postgres://%2Fvar%2Frun%2Fpg/db?user=u"), &[]).unwrap();
    assert_eq!(p.targets[0].host, Host::Unix("/var/run/pg".into()));
    let p = resolve(Some("postgres:///db?host=/tmp&port=7&user=u"), &[]).unwrap();
    assert_eq!(
        p.targets[0],
        Target {
            host: Host::Unix("/tmp".into()),
            port: 7,
            hostaddr: None,
        }
    );
}

#[test]
fn uri_user_info_as_libpq() {
    // An unencoded '@' or '?' in a password: the user info ends at the last '@' before '/'.
    let p = ok("postgres://app:p@ss?w@db/x", &[]);
    assert_eq!(p.password.as_deref(), Some("p@ss?w"));
    assert_eq!(p.targets, vec![tcp("db", 5432)]);
    // An empty password is no password (PGPASSWORD still applies), as in libpq.
    let p = ok("postgres://app:@db/x", &[("PGPASSWORD", "env")]);
    assert_eq!(p.password.as_deref(), Some("env"));
    // A user name with an '@' in the query keeps working.
    let p = ok("postgres://db:5433/x?user=me@corp", &[]);
    assert_eq!((p.user.as_str(), p.targets[0].port), ("me@corp", 5433));
    assert_eq!(ok("postgres://h/d?ssl=true", &[]).sslmode, SslMode::Require);
    assert!(err("postgres://[::1/d", &[]).contains("']'"));
    assert!(err("postgres://[]:5/d", &[]).contains("empty"));
    assert!(err("postgres://h/d?frob=1", &[]).contains("invalid connection option 'frob'"));
}

#[test]
fn kv_and_env() {
    let p = resolve(
        Some("host=h port=1 password='a b\\'c' dbname = d"),
        &[("PGUSER", "envuser"), ("PGPASSWORD", "no")],
    )
    .unwrap();
    assert_eq!(p.user, "envuser");
    assert_eq!(p.password.as_deref(), Some("a b'c"));
    assert_eq!(p.dbname, "d");
    let p = resolve(
        None,
        &[
            ("PGHOST", "x"),
            ("PGPORT", "9"),
            ("PGUSER", "u"),
            ("PGSSLMODE", "disable"),
        ],
    )
    .unwrap();
    assert_eq!(p.targets[0], tcp("x", 9));
    assert_eq!(p.dbname, "u");
    assert_eq!(p.sslmode, SslMode::Disable);
    // requiressl and PGREQUIRESSL, libpq's old spellings; PGSSLMODE wins over PGREQUIRESSL.
    assert_eq!(ok("requiressl=1", &[]).sslmode, SslMode::Require);
    assert_eq!(ok("requiressl=0", &[]).sslmode, SslMode::Prefer);
    assert_eq!(ok("", &[("PGREQUIRESSL", "1")]).sslmode, SslMode::Require);
    let p = ok("", &[("PGREQUIRESSL", "1"), ("PGSSLMODE", "allow")]);
    assert_eq!(p.sslmode, SslMode::Allow);
}

#[test]
fn errors_name_the_setting_as_written() {
    assert!(err("sslmode=maybe", &[]).starts_with("invalid sslmode=maybe: use disable"));
    let e = err("", &[("PGSSLMODE", "maybe")]);
    assert!(e.starts_with("invalid PGSSLMODE=maybe:"), "{e}");
    assert!(err("port=0", &[]).contains("invalid port=0"));
    assert!(err("", &[("PGPORT", "x")]).contains("invalid PGPORT=x"));
    assert!(err("host=a,b port=1,2,3", &[]).contains("could not match 3 port numbers to 2 hosts"));
    assert!(err("connect_timeout=soon", &[]).contains("invalid connect_timeout=soon"));
    assert!(err("frob=1", &[]).contains("invalid connection option 'frob'"));
    assert!(err("host", &[]).contains("missing '=' after 'host'"));
}

#[test]
fn connect_timeout_as_libpq() {
    assert_eq!(ok("connect_timeout=0", &[]).connect_timeout, None);
    assert_eq!(ok("connect_timeout=-3", &[]).connect_timeout, None);
    let two = Some(Duration::from_secs(2));
    assert_eq!(ok("connect_timeout=1", &[]).connect_timeout, two);
    let p = ok("", &[("PGCONNECT_TIMEOUT", "30")]);
    assert_eq!(p.connect_timeout, Some(Duration::from_secs(30)));
}

const SECRET: &str = "Sw0rdfish";

#[test]
fn errors_never_show_a_password() {
    let s = SECRET;
    let cases = [
        // URIs whose password holds a '/', '?', '&' or '%' (unencoded), or is cut short.
        format!("postgres://app:{s}/def@host/db"),
        format!("postgres://app:abc/{s}@host/db"),
        format!("postgres://app:123/{s}@host/db"),
        format!("postgres://app:1/x?{s}@host"),
        format!("postgres://app:1/x?{s}=1@host"),
        format!("postgres://app:1/x?sslmode={s}@host"),
        format!("postgres://app:1/x?require_auth={s}@host"),
        format!("postgres://app:{s},x/y@host"),
        format!("postgres://u:p@h:{s}/db"),
        format!("postgres://u:p@h:1,h2:{s}/db"),
        format!("postgres://u:a%zz{s}@h/db"),
        format!("postgres://u:a%00{s}@h/db"),
        format!("postgres://u:{s}%ff@h/db"),
        format!("postgres://h/db?password=ab&{s}=1"),
        format!("postgres://h/db?password=ab&{s}"),
        format!("postgres://u:p@[::1]{s}/db"),
        // key=value strings with an unquoted space, or an unterminated quote, in a password.
        format!("host=h password=my {s} sslmode=disable"),
        format!("host=h password=my {s}=x"),
        format!("host=h password='my' {s}"),
        format!("host=h password='{s}"),
        format!("host=h sslpassword={s}"),
        format!("password=my {s}"),
    ];
    for c in &cases {
        let e = err(c, &[]);
        assert!(!e.contains(s), "{c}: {e}");
    }
    let e = err("", &[("PGPASSWORD", s), ("PGSSLMODE", "x")]);
    assert!(!e.contains(s), "{e}");
    let e = err("postgres://app:abc/def@host", &[]);
    assert!(!e.contains("abc") && !e.contains("def"), "{e}");
    assert!(e.contains("%2F"), "{e}");
    let e = err("host=h password=my secret", &[]);
    assert!(!e.contains("secret") && e.contains("password='a b'"), "{e}");
}

#[test]
fn percent_zero_is_refused() {
    for c in [
        "postgres://u%00@h/d",
        "postgres://h/d%00",
        "postgres://h/d?user=a%00",
    ] {
        assert!(err(c, &[]).contains("forbidden value %00"), "{c}");
    }
    assert!(err("postgres://h/d?user=%4", &[]).contains("percent-encoded"));
    assert!(err("postgres://h/d?user=%+1", &[]).contains("percent-encoded"));
}

#[test]
fn sslrootcert_system_implies_verify_full() {
    let p = ok("host=h sslrootcert=system", &[]);
    assert_eq!(p.sslmode, SslMode::VerifyFull);
    assert_eq!(p.tls_files.root.as_deref(), Some("system"));
    let p = ok("host=h", &[("PGSSLROOTCERT", "system")]);
    assert_eq!(p.sslmode, SslMode::VerifyFull);
    let p = ok("host=h sslrootcert=system sslmode=verify-full", &[]);
    assert_eq!(p.sslmode, SslMode::VerifyFull);
    for mode in ["disable", "allow", "prefer", "require", "verify-ca"] {
        let e = err(&format!("host=h sslrootcert=system sslmode={mode}"), &[]);
        let want = format!("sslmode={mode} cannot be used with sslrootcert=system");
        assert!(e.starts_with(&want), "{e}");
    }
    let e = err("host=h sslrootcert=system", &[("PGSSLMODE", "require")]);
    assert!(e.starts_with("PGSSLMODE=require cannot be used"), "{e}");
    let e = err(
        "host=h",
        &[("PGSSLROOTCERT", "system"), ("PGREQUIRESSL", "1")],
    );
    assert!(e.contains("PGSSLROOTCERT=system"), "{e}");
}

#[test]
fn require_verifies_with_a_root_certificate() {
    let home = Dir::new(&[(".postgresql/root.crt", "x")]);
    let env = [("PGUSER", "u"), ("HOME", home.s())];
    let p = resolve(Some("host=h sslmode=require"), &env).unwrap();
    assert_eq!(p.sslmode, SslMode::VerifyCa);
    assert_eq!(p.tls_files.root, Some(home.path(".postgresql/root.crt")));
    let p = resolve(Some("host=h"), &env).unwrap();
    assert_eq!(p.sslmode, SslMode::Prefer);
    assert_eq!(ok("host=h sslmode=require", &[]).sslmode, SslMode::Require);
    let p = ok("host=h sslmode=require sslrootcert=/ca.crt", &[]);
    assert_eq!(p.sslmode, SslMode::VerifyCa);
}

#[test]
fn sslmode_disable_looks_for_no_default_certificate_file() {
    let home = Dir::new(&[
        (".postgresql/root.crt", "x"),
        (".postgresql/root.crl", "x"),
        (".postgresql/postgresql.crt", "x"),
        (".postgresql/postgresql.key", "x"),
    ]);
    let env = [("PGUSER", "u"), ("HOME", home.s())];
    let p = resolve(Some("host=h sslmode=disable"), &env).unwrap();
    assert_eq!(p.sslmode, SslMode::Disable);
    let f = &p.tls_files;
    assert_eq!(
        (&f.root, &f.cert, &f.key, &f.crl),
        (&None, &None, &None, &None)
    );
    // The same files are found in any other mode, and a file named explicitly is kept.
    let p = resolve(Some("host=h sslmode=allow"), &env).unwrap();
    assert!(p.tls_files.root.is_some() && p.tls_files.cert.is_some());
    let p = resolve(Some("host=h sslmode=disable sslcert=/c"), &env).unwrap();
    assert_eq!(p.tls_files.cert, Some("/c".into()));
}

#[test]
fn client_certificates_and_sslcertmode() {
    let home = Dir::new(&[
        (".postgresql/postgresql.crt", "x"),
        (".postgresql/postgresql.key", "x"),
    ]);
    let env = [("PGUSER", "u"), ("HOME", home.s())];
    let p = resolve(Some("host=h"), &env).unwrap();
    assert_eq!(
        p.tls_files.cert,
        Some(home.path(".postgresql/postgresql.crt").into())
    );
    assert!(p.tls_files.key.is_some());
    let p = resolve(Some("host=h sslcertmode=disable"), &env).unwrap();
    assert_eq!((p.tls_files.cert, p.tls_files.key), (None, None));
    let p = ok("sslcert=/c sslkey=/k sslcertmode=allow", &[]);
    assert_eq!(p.tls_files.cert, Some("/c".into()));
}

#[test]
fn crls() {
    let p = ok("sslcrl=/a.crl sslcrldir=/crls", &[]);
    assert_eq!(p.tls_files.crl, Some("/a.crl".into()));
    assert_eq!(p.tls_files.crl_dir, Some("/crls".into()));
    let p = ok("", &[("PGSSLCRL", "/b.crl"), ("PGSSLCRLDIR", "/d")]);
    assert_eq!(p.tls_files.crl, Some("/b.crl".into()));
    assert_eq!(p.tls_files.crl_dir, Some("/d".into()));
    // libpq's default root.crl, with a root certificate file, when neither is set.
    let home = Dir::new(&[(".postgresql/root.crt", "x"), (".postgresql/root.crl", "x")]);
    let env = [("PGUSER", "u"), ("HOME", home.s())];
    let p = resolve(Some("host=h"), &env).unwrap();
    assert_eq!(
        p.tls_files.crl,
        Some(home.path(".postgresql/root.crl").into())
    );
    let p = resolve(Some("host=h sslcrldir=/d"), &env).unwrap();
    assert_eq!(
        (p.tls_files.crl, p.tls_files.crl_dir),
        (None, Some("/d".into()))
    );
    let p = resolve(Some("host=h sslrootcert=system"), &env).unwrap();
    assert_eq!(p.tls_files.crl, None);
    let bare = Dir::new(&[(".postgresql/root.crl", "x")]);
    let p = resolve(Some("host=h"), &[("PGUSER", "u"), ("HOME", bare.s())]).unwrap();
    assert_eq!(p.tls_files.crl, None);
}

#[test]
fn hostaddr() {
    let p = ok("host=db.example hostaddr=10.0.0.5 port=6", &[]);
    let t = &p.targets[0];
    assert_eq!(t.host, Host::Tcp("db.example".into()));
    assert_eq!(t.hostaddr, Some("10.0.0.5".parse().unwrap()));
    assert_eq!(t.host_name(), "db.example");
    assert_eq!(t.describe(), "db.example (10.0.0.5):6");
    // hostaddr alone: the address is also the host name.
    let p = ok("hostaddr=::1", &[]);
    assert_eq!(p.targets[0].host, Host::Tcp("::1".into()));
    assert_eq!(p.targets[0].describe(), "[::1]:5432");
    let p = ok("", &[("PGHOSTADDR", "127.0.0.1")]);
    assert_eq!(p.targets[0].describe(), "127.0.0.1:5432");
    // One slot per hostaddr entry; an empty entry falls back to its host.
    let p = ok("host=a,b,/sock hostaddr=10.0.0.1,,10.0.0.3 port=1,2,3", &[]);
    let got: Vec<(String, Option<IpAddr>, u16)> = p
        .targets
        .iter()
        .map(|t| (t.host_name(), t.hostaddr, t.port))
        .collect();
    let ip = |s: &str| Some(s.parse().unwrap());
    assert_eq!(
        got,
        vec![
            ("a".into(), ip("10.0.0.1"), 1),
            ("b".into(), None, 2),
            ("/sock".into(), ip("10.0.0.3"), 3)
        ]
    );
    assert_eq!(p.targets[2].host, Host::Tcp("/sock".into()));
    let e = err("host=a,b hostaddr=10.0.0.1", &[]);
    assert!(
        e.contains("could not match 2 host names to 1 hostaddr values"),
        "{e}"
    );
    let e = err("host=a hostaddr=db.example", &[]);
    assert!(
        e.starts_with("invalid hostaddr=db.example: give numeric IP"),
        "{e}"
    );
    assert!(err("", &[("PGHOSTADDR", "x")]).starts_with("invalid PGHOSTADDR=x"));
    let p = ok("postgres://db/x?hostaddr=10.1.1.1", &[]);
    assert_eq!(p.targets[0].describe(), "db (10.1.1.1):5432");
}

#[test]
fn channel_binding_and_require_auth() {
    assert_eq!(ok("", &[]).channel_binding, ChannelBinding::Prefer);
    assert_eq!(
        ok("channel_binding=require", &[]).channel_binding,
        ChannelBinding::Require
    );
    let p = ok("", &[("PGCHANNELBINDING", "disable")]);
    assert_eq!(p.channel_binding, ChannelBinding::Disable);
    let e = err("channel_binding=yes", &[]);
    assert!(e.starts_with("invalid channel_binding=yes: use disable, prefer or require"));

    assert_eq!(ok("", &[]).require_auth, RequireAuth::default());
    let r = ok("require_auth=scram-sha-256,none", &[]).require_auth;
    assert!(!r.negated);
    assert_eq!(r.methods, vec![AuthMethod::ScramSha256, AuthMethod::None]);
    assert!(r.allows(AuthMethod::None) && !r.allows(AuthMethod::Md5));
    let r = ok("", &[("PGREQUIREAUTH", "!password,!md5")]).require_auth;
    assert!(r.negated && !r.allows(AuthMethod::Password) && r.allows(AuthMethod::Gss));
    let r = ok("require_auth=!none", &[]).require_auth;
    assert!(!r.allows(AuthMethod::None) && r.allows(AuthMethod::Password));
    for (v, want) in [
        ("password,!md5", "cannot be mixed"),
        ("!password,md5", "cannot be mixed"),
        ("md5,md5", "more than once"),
        ("!none,!none", "more than once"),
        (
            "kerberos",
            "use password, md5, gss, sspi, scram-sha-256 or none",
        ),
        ("md5,", "use password"),
    ] {
        let e = err(&format!("require_auth='{v}'"), &[]);
        assert!(e.starts_with(&format!("invalid require_auth={v}: ")), "{e}");
        assert!(e.contains(want), "{v}: {e}");
    }
    let e = err("", &[("PGREQUIREAUTH", "md5,md5")]);
    assert!(e.starts_with("invalid PGREQUIREAUTH=md5,md5"), "{e}");
}

#[test]
fn keywords_are_libpq_17s() {
    let libpq = "service user password passfile channel_binding connect_timeout dbname host \
        hostaddr port client_encoding options application_name fallback_application_name \
        keepalives keepalives_idle keepalives_interval keepalives_count tcp_user_timeout \
        sslmode sslnegotiation sslcompression sslcert sslkey sslcertmode sslpassword \
        sslrootcert sslcrl sslcrldir sslsni requirepeer require_auth ssl_min_protocol_version \
        ssl_max_protocol_version gssencmode krbsrvname gsslib gssdelegation replication \
        target_session_attrs load_balance_hosts";
    let mut want: Vec<&str> = libpq.split_whitespace().collect();
    let mut have: Vec<&str> = KEYWORDS.iter().map(|k| k.name).collect();
    want.sort();
    have.sort();
    assert_eq!(have, want);
    let mut vars: Vec<&str> = KEYWORDS.iter().filter_map(|k| k.env).collect();
    let n = vars.len();
    vars.sort();
    vars.dedup();
    assert_eq!(vars.len(), n, "a variable is listed twice");
    assert!(vars.iter().all(|v| v.starts_with("PG")));
}

#[test]
fn libpq_settings_are_used_accepted_or_refused() {
    for s in [
        "gssencmode=disable gssencmode=prefer",
        "sslnegotiation=postgres sslsni=1 sslcompression=0 sslcompression=1",
        "ssl_min_protocol_version=TLSv1.2 ssl_max_protocol_version=TLSv1.3",
        "ssl_min_protocol_version=TLSv1",
        "load_balance_hosts=disable target_session_attrs=read-write",
        "target_session_attrs=primary target_session_attrs=any",
        "keepalives=0 keepalives_idle=30 keepalives_interval=5 keepalives_count=3",
        "tcp_user_timeout=1000 client_encoding=UTF8 krbsrvname=postgres gsslib=gssapi",
        "gssdelegation=0 replication=false sslcertmode=allow",
    ] {
        ok(s, &[]);
    }
    for (s, want) in [
        (
            "gssencmode=require",
            "gssencmode=require: pglock does not support GSSAPI",
        ),
        (
            "gssencmode=sometimes",
            "invalid gssencmode=sometimes: use disable",
        ),
        (
            "sslnegotiation=direct",
            "sslnegotiation=direct: pglock asks for TLS",
        ),
        ("sslsni=0", "sslsni=0: pglock always sends the server name"),
        (
            "ssl_min_protocol_version=TLSv1.3",
            "cannot insist on TLSv1.3",
        ),
        (
            "ssl_min_protocol_version=SSLv3",
            "invalid ssl_min_protocol_version=SSLv3",
        ),
        ("ssl_max_protocol_version=TLSv1.2", "cannot cap the version"),
        (
            "sslcertmode=require",
            "sslcertmode=require: pglock cannot check",
        ),
        (
            "requirepeer=postgres",
            "requirepeer=postgres: pglock cannot check",
        ),
        (
            "replication=database",
            "replication=database: pglock takes its lock",
        ),
        (
            "target_session_attrs=standby",
            "pglock always connects to a primary",
        ),
        (
            "load_balance_hosts=sometimes",
            "invalid load_balance_hosts=sometimes",
        ),
        (
            "keepalives=yes",
            "invalid keepalives=yes: give a whole number",
        ),
        (
            "sslpassword=x",
            "sslpassword: pglock cannot read password-protected",
        ),
        ("tty=x", "invalid connection option 'tty'"),
    ] {
        let e = err(s, &[]);
        assert!(e.starts_with(want) || e.contains(want), "{s}: {e}");
    }
    // A refused variable is named as such.
    for (var, val, want) in [
        (
            "PGGSSENCMODE",
            "require",
            "PGGSSENCMODE=require: pglock does not",
        ),
        (
            "PGREQUIREPEER",
            "postgres",
            "PGREQUIREPEER=postgres: pglock cannot",
        ),
        ("PGSSLNEGOTIATION", "direct", "PGSSLNEGOTIATION=direct:"),
        ("PGSSLSNI", "0", "PGSSLSNI=0:"),
        ("PGSSLCERTMODE", "require", "PGSSLCERTMODE=require:"),
        (
            "PGTARGETSESSIONATTRS",
            "standby",
            "PGTARGETSESSIONATTRS=standby:",
        ),
        (
            "PGSSLMINPROTOCOLVERSION",
            "TLSv1.3",
            "PGSSLMINPROTOCOLVERSION=TLSv1.3:",
        ),
        (
            "PGSSLMAXPROTOCOLVERSION",
            "TLSv1.2",
            "PGSSLMAXPROTOCOLVERSION=TLSv1.2:",
        ),
        (
            "PGLOADBALANCEHOSTS",
            "all",
            "invalid PGLOADBALANCEHOSTS=all",
        ),
        ("PGSSLCOMPRESSION", "2", "invalid PGSSLCOMPRESSION=2"),
    ] {
        let e = err("", &[(var, val)]);
        assert!(e.starts_with(want), "{var}: {e}");
    }
    // The connection string wins over the variable, as in libpq.
    ok("gssencmode=disable", &[("PGGSSENCMODE", "require")]);
}

#[test]
fn load_balance_hosts_random_shuffles() {
    let hosts: Vec<String> = (0..20).map(|i| format!("h{i}")).collect();
    let s = format!("host={} load_balance_hosts=random", hosts.join(","));
    let orders: Vec<Vec<String>> = (0..5)
        .map(|_| ok(&s, &[]).targets.iter().map(Target::host_name).collect())
        .collect();
    for o in &orders {
        let mut sorted = o.clone();
        sorted.sort();
        let mut want = hosts.clone();
        want.sort();
        assert_eq!(sorted, want);
    }
    assert!(orders.iter().any(|o| *o != hosts), "never shuffled");
}

#[test]
fn service_files() {
    let dir = Dir::new(&[(
        "svc.conf",
        "# comment\n\n[other]\nhost=wrong\n[main]\n  host=db.example  \nport=6000\n\
         # comment inside\ndbname=app\npassword=pw with spaces\nsslmode=verify-full\n[next]\nhost=wrong2\n",
    )]);
    let file = dir.path("svc.conf");
    let env = [("PGSERVICEFILE", file.as_str())];
    let p = ok("service=main", &env);
    assert_eq!(p.targets, vec![tcp("db.example", 6000)]);
    assert_eq!(p.dbname, "app");
    assert_eq!(p.password.as_deref(), Some("pw with spaces"));
    assert_eq!(p.sslmode, SslMode::VerifyFull);
    // PGSERVICE, and the keyword in a URI's query.
    assert_eq!(ok("", &[env[0], ("PGSERVICE", "main")]).dbname, "app");
    assert_eq!(ok("postgres:///?service=main", &env).dbname, "app");
    // The string wins over the service, the service over the variables, which fill the rest.
    let p = ok(
        "service=main dbname=mine",
        &[env[0], ("PGHOST", "envhost"), ("PGAPPNAME", "envapp")],
    );
    assert_eq!(p.dbname, "mine");
    assert_eq!(p.targets[0].host_name(), "db.example");
    assert_eq!(p.application_name.as_deref(), Some("envapp"));
    let e = err("service=nope", &env);
    assert!(
        e.starts_with("definition of service \"nope\" not found"),
        "{e}"
    );
    let e = err("service=main", &[("PGSERVICEFILE", "/nonexistent/svc")]);
    assert!(
        e.contains("cannot read service file /nonexistent/svc"),
        "{e}"
    );
}

#[test]
fn service_file_errors_name_file_and_line() {
    let dir = Dir::new(&[
        ("bad.conf", "[a]\nhost=h\nfrob=1\n"),
        ("nested.conf", "[a]\nservice=b\n"),
        ("syntax.conf", "[a]\nhost\n"),
        ("refused.conf", "[a]\ngssencmode=require\n"),
        ("ldap.conf", "[a]\nldap://ldap.example/dc=x?y?sub?(cn=a)\n"),
    ]);
    for (file, want) in [
        ("bad.conf", "line 3: unknown keyword 'frob'"),
        (
            "nested.conf",
            "line 2: nested service specifications are not supported",
        ),
        ("syntax.conf", "line 2: expected key=value"),
        ("refused.conf", "line 2): pglock does not support GSSAPI"),
        ("ldap.conf", "line 2: LDAP look-ups are not supported"),
    ] {
        let path = dir.path(file);
        let e = err("service=a", &[("PGSERVICEFILE", &path)]);
        assert!(e.contains(&path) && e.contains(want), "{file}: {e}");
    }
}

#[test]
fn service_file_search_order() {
    let home = Dir::new(&[(".pg_service.conf", "[mine]\nhost=from-home\n")]);
    let sys = Dir::new(&[(
        "pg_service.conf",
        "[mine]\nhost=from-sys\n[shared]\nhost=sys2\n",
    )]);
    let env = [
        ("PGUSER", "u"),
        ("HOME", home.s()),
        ("PGSYSCONFDIR", sys.s()),
    ];
    let host = |svc: &str, extra: &[(&str, &str)]| {
        let mut e = env.to_vec();
        e.extend_from_slice(extra);
        resolve(Some(&format!("service={svc}")), &e)
            .map(|p| p.targets[0].host_name())
            .map_err(|e| e.msg)
    };
    assert_eq!(host("mine", &[]).unwrap(), "from-home");
    assert_eq!(host("shared", &[]).unwrap(), "sys2");
    let other = Dir::new(&[("s.conf", "[x]\nhost=y\n")]);
    let f = other.path("s.conf");
    assert_eq!(host("mine", &[("PGSERVICEFILE", &f)]).unwrap(), "from-sys");
    let e = host("none", &[]).unwrap_err();
    assert!(
        e.contains(&home.path(".pg_service.conf")) && e.contains(&sys.path("pg_service.conf")),
        "{e}"
    );
}

#[test]
fn passfile_lines() {
    assert_eq!(
        split_passfile_line(r"h:5432:*:u:pa\:ss:x"),
        vec!["h", "5432", "*", "u", "pa:ss:x"]
    );
}

#[test]
fn passfile_localhost_is_only_the_default_socket_directory() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Dir::new(&[(
        "pgpass",
        "localhost:5432:*:u:local\n/srv/pg:5432:*:u:bypath\n",
    )]);
    let pass = dir.path("pgpass");
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let password = |conn: &str| {
        let p = ok(conn, &[("PGPASSFILE", &pass), ("PGUSER", "u")]);
        p.password_for(&p.targets[0])
    };
    let default = default_socket_dir().display().to_string();
    assert_eq!(
        password(&format!("host={default}")).as_deref(),
        Some("local")
    );
    assert_eq!(password("dbname=x").as_deref(), Some("local"));
    assert_eq!(password("host=localhost").as_deref(), Some("local"));
    assert_eq!(password("host=/srv/pg").as_deref(), Some("bypath"));
    assert_eq!(password("host=/srv/other"), None);
}

#[test]
fn passfile_matches_the_host_name_with_hostaddr() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Dir::new(&[(
        "pgpass",
        "db.example:5432:*:u:right\n10.0.0.9:5432:*:u:byaddr\n",
    )]);
    let pass = dir.path("pgpass");
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let p = ok(
        "host=db.example hostaddr=10.0.0.5",
        &[("PGPASSFILE", &pass)],
    );
    assert_eq!(p.password_for(&p.targets[0]).as_deref(), Some("right"));
    let p = ok("hostaddr=10.0.0.9", &[("PGPASSFILE", &pass)]);
    assert_eq!(p.password_for(&p.targets[0]).as_deref(), Some("byaddr"));
}

#[test]
fn the_password_source_is_named_never_the_password() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Dir::new(&[("pgpass", "# comment\n\nother:5432:*:u:x\ndb:5432:*:u:pw\n")]);
    let pass = dir.path("pgpass");
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let source = |s: &str, env: &[(&str, &str)]| {
        let p = ok(s, env);
        p.password_source(&p.targets[0])
    };
    let url = "postgres://u:secret@db/x";
    assert_eq!(source(url, &[]).as_deref(), Some("the connection URL"));
    assert_eq!(
        source("host=db password=secret", &[]).as_deref(),
        Some("the connection string")
    );
    assert_eq!(
        source("host=db", &[("PGPASSWORD", "secret")]).as_deref(),
        Some("PGPASSWORD")
    );
    assert_eq!(
        source("host=db", &[("PGPASSFILE", &pass)]),
        Some(format!("line 4 of {pass}"))
    );
    assert_eq!(source("host=nowhere", &[("PGPASSFILE", &pass)]), None);
}

#[test]
fn configured_means_something_said_where_to_connect() {
    let env = [("PGUSER", "u"), ("HOME", "/nonexistent")];
    assert!(!resolve(None, &env).unwrap().configured);
    let with = |k, v| {
        let mut e = env.to_vec();
        e.push((k, v));
        resolve(None, &e).unwrap().configured
    };
    assert!(!with("PGDATABASE", "x"));
    assert!(with("PGHOST", "db"));
    assert!(with("PGPORT", "5433"));
    assert!(resolve(Some("dbname=x"), &env).unwrap().configured);
}

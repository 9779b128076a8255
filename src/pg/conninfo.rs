//! Where to connect (contract §3): connection URIs and `key=value` strings, service files,
//! libpq's environment variables and defaults, and the password file. The result is a list of
//! targets and the session parameters; the wire protocol lives in `pg/`.
//!
//! Resolution is libpq's (`conninfo_add_defaults`), keyword by keyword, first found wins: the
//! connection string (from `--database-url`, `PGLOCK_DATABASE_URL` or `DATABASE_URL`), the
//! service named by `service=` or `PGSERVICE` (its section in `PGSERVICEFILE`, else
//! `~/.pg_service.conf`, then in `PGSYSCONFDIR/pg_service.conf`, by default
//! `/etc/postgresql-common` as on Debian), the `PG*` variables, then libpq's defaults. An empty
//! value counts as unset. The password: the string, the service, `PGPASSWORD`, the password file.
//!
//! `KEYWORDS` lists every libpq 17 keyword with its variable and what pglock does with it: used,
//! accepted because pglock already does what any valid value asks, or refused with a one-line
//! usage error that names the keyword or variable as the user wrote it. Nothing that changes where
//! or how pglock connects is ignored. Also read: `PGSERVICEFILE`, `PGSYSCONFDIR`, `PGREQUIRESSL`
//! (deprecated; `1` means `sslmode=require`) and `HOME`. Not forwarded: `PGDATESTYLE`, `PGTZ` and
//! `PGGEQO`, session settings that libpq sends and that do not matter to an advisory lock.
//!
//! Passwords never appear in messages: errors describe a target by host, port and user only, and a
//! parse error never shows text that may hold a password (a URI's port, what follows a
//! `password=` value, any value of a URI whose user info a `/` cut short).

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

/// Certificate files for TLS: `sslrootcert` (a PEM file, or `system` for the system's roots),
/// `sslcert` and `sslkey` (a client certificate), `sslcrl` / `sslcrldir` (revocation lists).
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub root: Option<String>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub crl: Option<PathBuf>,
    pub crl_dir: Option<PathBuf>,
}

/// libpq's `channel_binding`: whether SCRAM-SHA-256-PLUS over TLS is used or insisted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChannelBinding {
    Disable,
    #[default]
    Prefer,
    Require,
}

/// An authentication method that libpq's `require_auth` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// No authentication request at all (trust, or peer on a socket).
    None,
    Password,
    Md5,
    Gss,
    Sspi,
    ScramSha256,
}

impl AuthMethod {
    fn parse(s: &str) -> Option<AuthMethod> {
        Some(match s {
            "none" => AuthMethod::None,
            "password" => AuthMethod::Password,
            "md5" => AuthMethod::Md5,
            "gss" => AuthMethod::Gss,
            "sspi" => AuthMethod::Sspi,
            "scram-sha-256" => AuthMethod::ScramSha256,
            _ => return None,
        })
    }
}

/// libpq's `require_auth`: the methods the server may use (or, negated, may not use).
/// The default allows every method.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequireAuth {
    /// `!a,!b`: every method but these.
    pub negated: bool,
    /// Empty with `negated` false: no restriction.
    pub methods: Vec<AuthMethod>,
}

impl RequireAuth {
    /// Whether the server may authenticate with `m` (`AuthMethod::None`: with no request).
    pub fn allows(&self, m: AuthMethod) -> bool {
        if self.methods.is_empty() {
            return true;
        }
        self.methods.contains(&m) != self.negated
    }

    /// libpq's rules: a comma list, all negated with `!` or none, no method twice. The error
    /// never repeats the value (the caller's label shows it when it may be shown).
    fn parse(v: &str) -> std::result::Result<RequireAuth, &'static str> {
        let negated = v.starts_with('!');
        let mut methods = Vec::new();
        for part in v.split(',') {
            let name = part.strip_prefix('!').unwrap_or(part);
            if (name.len() != part.len()) != negated {
                return Err("negated (!) and plain methods cannot be mixed: negate all or none");
            }
            let m = AuthMethod::parse(name).ok_or(
                "use password, md5, gss, sspi, scram-sha-256 or none, all negated with ! or none",
            )?;
            if methods.contains(&m) {
                return Err("a method is listed more than once");
            }
            methods.push(m);
        }
        Ok(RequireAuth { negated, methods })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Tcp(String),
    /// A Unix-domain socket directory; the socket is `DIR/.s.PGSQL.PORT`.
    Unix(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// With `hostaddr` set, always `Tcp`: the server's name for TLS and the password file (the
    /// `host` keyword's entry, or the address as written when `host` gave none).
    pub host: Host,
    pub port: u16,
    /// libpq's `hostaddr`: when set, the address to connect to (over TCP, no name look-up),
    /// while `host` still names the server for TLS and the password file.
    pub hostaddr: Option<IpAddr>,
}

impl Target {
    /// `host:port` for messages (the socket path for Unix sockets); `host (address):port` when
    /// `hostaddr` gives an address other than the host.
    pub fn describe(&self) -> String {
        let h = match &self.host {
            Host::Unix(dir) => return self.socket_path(dir).display().to_string(),
            Host::Tcp(h) if h.contains(':') => format!("[{h}]"),
            Host::Tcp(h) => h.clone(),
        };
        match self.hostaddr {
            Some(a) if self.host != Host::Tcp(a.to_string()) => {
                format!("{h} ({a}):{}", self.port)
            }
            _ => format!("{h}:{}", self.port),
        }
    }
    pub fn socket_path(&self, dir: &Path) -> PathBuf {
        dir.join(format!(".s.PGSQL.{}", self.port))
    }
    /// The host as the password file and TLS see it.
    pub fn host_name(&self) -> String {
        match &self.host {
            Host::Tcp(h) => h.clone(),
            Host::Unix(d) => d.display().to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ConnParams {
    pub targets: Vec<Target>,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    pub sslmode: SslMode,
    pub tls_files: TlsFiles,
    pub connect_timeout: Option<Duration>,
    pub application_name: Option<String>,
    pub options: Option<String>,
    pub channel_binding: ChannelBinding,
    pub require_auth: RequireAuth,
    /// Whether anything said where to connect (a connection string, a service, `PGHOST`,
    /// `PGHOSTADDR` or `PGPORT`). When nothing did, the target is libpq's default local socket,
    /// and a failure there is reported as "no database configured".
    pub configured: bool,
    passfile: Option<PathBuf>,
    /// Where `password` came from, for messages (never the password itself).
    password_from: Option<String>,
}

/// What pglock makes of a keyword's value.
enum Verdict {
    Fine,
    /// Not a value libpq accepts; the hint lists the valid ones.
    Invalid(&'static str),
    /// A valid value that pglock cannot honour; the reason says why.
    Refused(&'static str),
}

/// A libpq keyword, the environment variable libpq reads for it, and its check.
struct Keyword {
    name: &'static str,
    env: Option<&'static str>,
    check: fn(&str) -> Verdict,
}

const fn kw(name: &'static str, env: &'static str, check: fn(&str) -> Verdict) -> Keyword {
    let env = if env.is_empty() { None } else { Some(env) };
    Keyword { name, env, check }
}

/// Every keyword of libpq 17, the one place that lists them. Unknown keywords are refused.
const KEYWORDS: &[Keyword] = &[
    // Used by `resolve`, which also checks their values.
    kw("service", "PGSERVICE", used),
    kw("host", "PGHOST", used),
    kw("hostaddr", "PGHOSTADDR", used),
    kw("port", "PGPORT", used),
    kw("user", "PGUSER", used),
    kw("password", "PGPASSWORD", used),
    kw("passfile", "PGPASSFILE", used),
    kw("dbname", "PGDATABASE", used),
    kw("options", "PGOPTIONS", used),
    kw("application_name", "PGAPPNAME", used),
    kw("fallback_application_name", "", used),
    kw("connect_timeout", "PGCONNECT_TIMEOUT", used),
    kw("channel_binding", "PGCHANNELBINDING", used),
    kw("require_auth", "PGREQUIREAUTH", used),
    kw("sslmode", "PGSSLMODE", used),
    kw("sslrootcert", "PGSSLROOTCERT", used),
    kw("sslcert", "PGSSLCERT", used),
    kw("sslkey", "PGSSLKEY", used),
    kw("sslcrl", "PGSSLCRL", used),
    kw("sslcrldir", "PGSSLCRLDIR", used),
    kw("sslcertmode", "PGSSLCERTMODE", sslcertmode),
    kw(
        "load_balance_hosts",
        "PGLOADBALANCEHOSTS",
        load_balance_hosts,
    ),
    kw(
        "target_session_attrs",
        "PGTARGETSESSIONATTRS",
        target_session_attrs,
    ),
    // Accepted: pglock sets keepalives and the TCP user timeout of its socket from --heartbeat.
    kw("keepalives", "", integer),
    kw("keepalives_idle", "", integer),
    kw("keepalives_interval", "", integer),
    kw("keepalives_count", "", integer),
    kw("tcp_user_timeout", "", integer),
    // Accepted: pglock reads the server's text as UTF-8, whatever the client encoding.
    kw("client_encoding", "PGCLIENTENCODING", anything),
    // Accepted: pglock does no GSSAPI, so these matter only to a server that asks for it, and
    // then authentication fails with its own error.
    kw("krbsrvname", "PGKRBSRVNAME", anything),
    kw("gsslib", "PGGSSLIB", anything),
    kw("gssdelegation", "PGGSSDELEGATION", zero_or_one),
    kw("gssencmode", "PGGSSENCMODE", gssencmode),
    // TLS details, accepted where pglock's TLS (TLSv1.2 and 1.3, SNI, never compressed) already
    // does what the value asks.
    kw("sslcompression", "PGSSLCOMPRESSION", zero_or_one),
    kw("sslsni", "PGSSLSNI", sslsni),
    kw("sslnegotiation", "PGSSLNEGOTIATION", sslnegotiation),
    kw(
        "ssl_min_protocol_version",
        "PGSSLMINPROTOCOLVERSION",
        ssl_min_version,
    ),
    kw(
        "ssl_max_protocol_version",
        "PGSSLMAXPROTOCOLVERSION",
        ssl_max_version,
    ),
    // Refused whatever their value.
    kw("sslpassword", "", sslpassword),
    kw("requirepeer", "PGREQUIREPEER", requirepeer),
    // Refused unless false.
    kw("replication", "", replication),
];

/// Keywords whose values are never shown in messages.
const SECRETS: &[&str] = &["password", "sslpassword"];

fn used(_: &str) -> Verdict {
    Verdict::Fine
}
fn anything(_: &str) -> Verdict {
    Verdict::Fine
}
fn integer(v: &str) -> Verdict {
    match v.trim().parse::<i64>() {
        Ok(_) => Verdict::Fine,
        Err(_) => Verdict::Invalid("give a whole number"),
    }
}
fn zero_or_one(v: &str) -> Verdict {
    match v {
        "0" | "1" => Verdict::Fine,
        _ => Verdict::Invalid("use 0 or 1"),
    }
}
fn sslcertmode(v: &str) -> Verdict {
    match v {
        // disable: no client certificate is loaded (`tls_files`).
        "disable" | "allow" => Verdict::Fine,
        "require" => {
            Verdict::Refused("pglock cannot check that the server asked for a client certificate")
        }
        _ => Verdict::Invalid("use disable, allow or require"),
    }
}
fn load_balance_hosts(v: &str) -> Verdict {
    match v {
        // random: the targets are shuffled (`ConnParams::resolve_with`).
        "disable" | "random" => Verdict::Fine,
        _ => Verdict::Invalid("use disable or random"),
    }
}
fn target_session_attrs(v: &str) -> Verdict {
    match v {
        // pglock always looks for a primary, which these accept.
        "any" | "read-write" | "primary" => Verdict::Fine,
        "read-only" | "standby" | "prefer-standby" => Verdict::Refused(
            "pglock always connects to a primary: a lock taken on a standby excludes nobody",
        ),
        _ => Verdict::Invalid("use any, read-write, primary, read-only, standby or prefer-standby"),
    }
}
fn gssencmode(v: &str) -> Verdict {
    match v {
        // Without GSSAPI credentials libpq's prefer also goes on unencrypted or with TLS.
        "disable" | "prefer" => Verdict::Fine,
        "require" => Verdict::Refused("pglock does not support GSSAPI encryption"),
        _ => Verdict::Invalid("use disable, prefer or require"),
    }
}
fn sslsni(v: &str) -> Verdict {
    match v {
        "1" => Verdict::Fine,
        "0" => Verdict::Refused("pglock always sends the server name (SNI) in the TLS handshake"),
        _ => Verdict::Invalid("use 1 or 0"),
    }
}
fn sslnegotiation(v: &str) -> Verdict {
    match v {
        "postgres" => Verdict::Fine,
        "direct" => Verdict::Refused(
            "pglock asks for TLS with an SSLRequest only; use sslnegotiation=postgres",
        ),
        _ => Verdict::Invalid("use postgres or direct"),
    }
}
fn ssl_min_version(v: &str) -> Verdict {
    match v {
        // pglock never offers less than TLSv1.2, which any of these minimums allows.
        "TLSv1" | "TLSv1.1" | "TLSv1.2" => Verdict::Fine,
        "TLSv1.3" => {
            Verdict::Refused("pglock offers TLSv1.2 and TLSv1.3 and cannot insist on TLSv1.3")
        }
        _ => Verdict::Invalid("use TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3"),
    }
}
fn ssl_max_version(v: &str) -> Verdict {
    match v {
        "TLSv1.3" => Verdict::Fine,
        "TLSv1" | "TLSv1.1" | "TLSv1.2" => Verdict::Refused(
            "pglock offers TLSv1.2 and TLSv1.3 and cannot cap the version below TLSv1.3",
        ),
        _ => Verdict::Invalid("use TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3"),
    }
}
fn sslpassword(_: &str) -> Verdict {
    Verdict::Refused(
        "pglock cannot read password-protected client keys: give sslkey an unencrypted key \
         (openssl pkey -in KEY -out PLAIN, then chmod 0600 PLAIN)",
    )
}
fn requirepeer(_: &str) -> Verdict {
    Verdict::Refused("pglock cannot check the operating-system user of the server process")
}
fn replication(v: &str) -> Verdict {
    match v.to_ascii_lowercase().as_str() {
        "false" | "off" | "no" | "0" => Verdict::Fine,
        "true" | "on" | "yes" | "1" | "database" => Verdict::Refused(
            "pglock takes its lock in a normal session, not on a replication connection",
        ),
        _ => Verdict::Invalid("use false"),
    }
}

/// Where a setting came from, so that errors name it as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Uri,
    KeyValue,
    Service { file: PathBuf, line: usize },
    Env(&'static str),
}

impl Source {
    /// Where a value came from, in words: "the connection URL", "PGPASSWORD", "line 3 of F".
    fn describe(&self) -> String {
        match self {
            Source::Uri => "the connection URL".into(),
            Source::KeyValue => "the connection string".into(),
            Source::Service { file, line } => format!("line {line} of {}", file.display()),
            Source::Env(var) => var.to_string(),
        }
    }
}

#[derive(Debug, Clone)]
struct Setting {
    value: String,
    source: Source,
}

type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The keywords gathered from the string, the service file and the environment.
#[derive(Debug, Default)]
struct Settings {
    map: BTreeMap<&'static str, Setting>,
    /// A URI whose user info a `/` may have cut short: none of its values are shown.
    quiet: bool,
}

impl Settings {
    fn keyword(name: &str) -> Option<&'static Keyword> {
        KEYWORDS.iter().find(|k| k.name == name)
    }

    /// Stores a keyword from the connection string (a later one wins, as in libpq); false when
    /// the keyword is unknown.
    fn store(&mut self, key: &str, value: String, source: Source) -> bool {
        let (key, value) = match key {
            // libpq's old spelling: requiressl=1 is sslmode=require, anything else prefer.
            "requiressl" => {
                let mode = if value.starts_with('1') {
                    "require"
                } else {
                    "prefer"
                };
                ("sslmode", mode.to_string())
            }
            _ => (key, value),
        };
        match Self::keyword(key) {
            Some(k) => {
                self.map.insert(k.name, Setting { value, source });
                true
            }
            None => false,
        }
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.map
            .get(k)
            .map(|s| s.value.as_str())
            .filter(|v| !v.is_empty())
    }

    fn path(&self, k: &str) -> Option<PathBuf> {
        self.get(k).map(PathBuf::from)
    }

    /// How messages name a setting: `sslmode=x`, `PGSSLMODE=x`, `sslmode=x (service file F, line
    /// N)`; only the name for passwords and for URI text that may hold one.
    fn label(&self, k: &str) -> String {
        let Some(s) = self.map.get(k) else {
            return k.to_string();
        };
        let name = match s.source {
            Source::Env(var) => var,
            _ => k,
        };
        let hidden =
            SECRETS.contains(&k) || (s.source == Source::Uri && (self.quiet || k == "port"));
        let mut out = if hidden {
            name.to_string()
        } else {
            format!("{name}={}", s.value)
        };
        if let Source::Service { file, line } = &s.source {
            out += &format!(" (service file {}, line {line})", file.display());
        }
        out
    }

    fn invalid(&self, k: &str, hint: &str) -> Error {
        Error::usage(format!("invalid {}: {hint}", self.label(k)))
    }

    fn refused(&self, k: &str, why: &str) -> Error {
        Error::usage(format!("{}: {why}", self.label(k)))
    }

    /// libpq's `parseServiceInfo`: the service's keywords fill what the string left unset.
    fn add_service(&mut self, env: Env) -> Result<()> {
        let Some(name) = self
            .get("service")
            .map(String::from)
            .or_else(|| env("PGSERVICE"))
        else {
            return Ok(());
        };
        let (file, lines) = find_service(&name, env)?;
        for (line, key, value) in lines {
            let at = format!("service file {}, line {line}", file.display());
            if key == "service" {
                return Err(Error::usage(format!(
                    "{at}: nested service specifications are not supported"
                )));
            }
            let k = Self::keyword(&key)
                .ok_or_else(|| Error::usage(format!("{at}: unknown keyword '{key}'")))?;
            let source = Source::Service {
                file: file.clone(),
                line,
            };
            self.map.entry(k.name).or_insert(Setting { value, source });
        }
        Ok(())
    }

    /// The `PG*` variables fill what the string and the service left unset.
    fn add_env(&mut self, env: Env) {
        for k in KEYWORDS {
            let Some(var) = k.env else { continue };
            if !self.map.contains_key(k.name) {
                if let Some(value) = env(var) {
                    let source = Source::Env(var);
                    self.map.insert(k.name, Setting { value, source });
                }
            }
        }
        if !self.map.contains_key("sslmode")
            && env("PGREQUIRESSL").is_some_and(|v| v.starts_with('1'))
        {
            let source = Source::Env("PGREQUIRESSL");
            let value = "require".to_string();
            self.map.insert("sslmode", Setting { value, source });
        }
    }

    /// Every keyword's own check (`KEYWORDS`).
    fn check(&self) -> Result<()> {
        for k in KEYWORDS {
            let Some(v) = self.get(k.name) else { continue };
            match (k.check)(v) {
                Verdict::Fine => {}
                Verdict::Invalid(hint) => return Err(self.invalid(k.name, hint)),
                Verdict::Refused(why) => return Err(self.refused(k.name, why)),
            }
        }
        Ok(())
    }

    fn params(&self, env: Env) -> Result<ConnParams> {
        let user = match self.get("user") {
            Some(u) => u.to_string(),
            None => os_user()?,
        };
        let mut targets = self.targets()?;
        if self.get("load_balance_hosts") == Some("random") {
            shuffle(&mut targets)?;
        }
        let tls_files = self.tls_files(env);
        let app = self
            .get("application_name")
            .or(self.get("fallback_application_name"));
        Ok(ConnParams {
            targets,
            dbname: self.get("dbname").unwrap_or(&user).to_string(),
            user,
            password: self.get("password").map(String::from),
            sslmode: self.sslmode(tls_files.root.as_deref())?,
            tls_files,
            connect_timeout: self.connect_timeout()?,
            application_name: app.map(String::from),
            options: self.get("options").map(String::from),
            channel_binding: self.channel_binding()?,
            require_auth: self.require_auth()?,
            configured: ["host", "hostaddr", "port", "service"]
                .iter()
                .any(|k| self.map.contains_key(k)),
            passfile: self
                .path("passfile")
                .or_else(|| home_path(env, &[".pgpass"])),
            password_from: self
                .get("password")
                .and(self.map.get("password"))
                .map(|s| s.source.describe()),
        })
    }

    /// libpq's host slots: one per `hostaddr` entry if given, else one per `host` entry.
    fn targets(&self) -> Result<Vec<Target>> {
        let hosts = list(self.get("host"));
        let addrs = list(self.get("hostaddr"));
        let n = if addrs.is_empty() {
            hosts.len().max(1)
        } else {
            addrs.len()
        };
        if !addrs.is_empty() && !hosts.is_empty() && hosts.len() != n {
            return Err(Error::usage(format!(
                "could not match {} host names to {n} hostaddr values: give one host per hostaddr",
                hosts.len()
            )));
        }
        let ports = self.ports(n)?;
        (0..n)
            .map(|i| self.target(nth(&hosts, i), nth(&addrs, i), ports[i]))
            .collect()
    }

    fn target(&self, host: &str, addr: &str, port: u16) -> Result<Target> {
        if !addr.is_empty() {
            let ip = addr.parse::<IpAddr>().map_err(|_| {
                self.invalid("hostaddr", "give numeric IP addresses (names go in host)")
            })?;
            let name = if host.is_empty() { addr } else { host };
            let host = Host::Tcp(name.to_string());
            return Ok(Target {
                host,
                port,
                hostaddr: Some(ip),
            });
        }
        let host = if host.is_empty() {
            Host::Unix(default_socket_dir())
        } else if host.starts_with('/') {
            Host::Unix(PathBuf::from(host))
        } else {
            Host::Tcp(host.to_string())
        };
        Ok(Target {
            host,
            port,
            hostaddr: None,
        })
    }

    /// One port for every host, or one per host.
    fn ports(&self, n: usize) -> Result<Vec<u16>> {
        let Some(spec) = self.get("port") else {
            return Ok(vec![5432; n]);
        };
        let ports: Vec<u16> = spec
            .split(',')
            .map(|p| self.port(p.trim()))
            .collect::<Result<_>>()?;
        match ports.len() {
            1 => Ok(vec![ports[0]; n]),
            len if len == n => Ok(ports),
            len => Err(Error::usage(format!(
                "could not match {len} port numbers to {n} hosts"
            ))),
        }
    }

    fn port(&self, p: &str) -> Result<u16> {
        match p.parse::<u16>() {
            _ if p.is_empty() => Ok(5432),
            Ok(n) if n > 0 => Ok(n),
            // What stands where a URI's port goes may be a password cut short by a '/'.
            _ if self
                .map
                .get("port")
                .is_some_and(|s| s.source == Source::Uri) =>
            {
                Err(Error::usage(
                    "invalid port in the connection URI (not shown, it may hold a password: \
                     write '/' in a password as %2F)",
                ))
            }
            _ => Err(self.invalid("port", "give a number from 1 to 65535")),
        }
    }

    /// libpq's certificate files, with its defaults in `~/.postgresql`.
    fn tls_files(&self, env: Env) -> TlsFiles {
        let home = |name: &str| home_path(env, &[".postgresql", name]).filter(|p| p.exists());
        let root = self
            .get("sslrootcert")
            .map(String::from)
            .or_else(|| home("root.crt").map(|p| p.display().to_string()));
        let (mut crl, crl_dir) = (self.path("sslcrl"), self.path("sslcrldir"));
        // libpq loads its default CRL with a root certificate file, never with system roots.
        if crl.is_none() && crl_dir.is_none() && root.as_deref().is_some_and(|r| r != "system") {
            crl = home("root.crl");
        }
        let mut cert = self.path("sslcert").or_else(|| home("postgresql.crt"));
        let mut key = self.path("sslkey").or_else(|| home("postgresql.key"));
        if self.get("sslcertmode") == Some("disable") {
            (cert, key) = (None, None);
        }
        TlsFiles {
            root,
            cert,
            key,
            crl,
            crl_dir,
        }
    }

    /// libpq 16+: `sslrootcert=system` makes the default verify-full and refuses weaker modes.
    /// A root certificate file (given, or `~/.postgresql/root.crt`) makes require verify the
    /// chain like verify-ca.
    fn sslmode(&self, root: Option<&str>) -> Result<SslMode> {
        let system = root == Some("system");
        let mode = match self.get("sslmode") {
            None if system => return Ok(SslMode::VerifyFull),
            None => SslMode::Prefer,
            Some(v) => SslMode::parse(v).ok_or_else(|| {
                self.invalid(
                    "sslmode",
                    "use disable, allow, prefer, require, verify-ca or verify-full",
                )
            })?,
        };
        if system && mode != SslMode::VerifyFull {
            return Err(Error::usage(format!(
                "{} cannot be used with {}: the system's roots only mean something with \
                 verify-full (libpq 16 refuses it too); use sslmode=verify-full or leave it unset",
                self.label("sslmode"),
                self.label("sslrootcert")
            )));
        }
        Ok(match mode {
            SslMode::Require if root.is_some() => SslMode::VerifyCa,
            m => m,
        })
    }

    fn connect_timeout(&self) -> Result<Option<Duration>> {
        let Some(t) = self.get("connect_timeout") else {
            return Ok(None);
        };
        match t.trim().parse::<i64>() {
            // As libpq: zero or less means none, and less than 2 seconds means 2.
            Ok(n) if n <= 0 => Ok(None),
            Ok(n) => Ok(Some(Duration::from_secs(n.unsigned_abs().max(2)))),
            Err(_) => Err(self.invalid("connect_timeout", "give whole seconds")),
        }
    }

    fn channel_binding(&self) -> Result<ChannelBinding> {
        Ok(match self.get("channel_binding") {
            None | Some("prefer") => ChannelBinding::Prefer,
            Some("disable") => ChannelBinding::Disable,
            Some("require") => ChannelBinding::Require,
            Some(_) => {
                return Err(self.invalid("channel_binding", "use disable, prefer or require"))
            }
        })
    }

    fn require_auth(&self) -> Result<RequireAuth> {
        match self.get("require_auth") {
            None => Ok(RequireAuth::default()),
            Some(v) => RequireAuth::parse(v).map_err(|why| self.invalid("require_auth", why)),
        }
    }
}

/// A comma list's entries, trimmed; empty when unset.
fn list(v: Option<&str>) -> Vec<&str> {
    v.map(|v| v.split(',').map(str::trim).collect())
        .unwrap_or_default()
}

/// A list's `i`th entry, empty when the list is shorter.
fn nth<'a>(v: &[&'a str], i: usize) -> &'a str {
    v.get(i).copied().unwrap_or_default()
}

/// `$HOME/a/b...`, when HOME is known.
fn home_path(env: Env, parts: &[&str]) -> Option<PathBuf> {
    let mut p = PathBuf::from(env("HOME")?);
    p.extend(parts);
    Some(p)
}

/// libpq's `load_balance_hosts=random`: the hosts in a random order (Fisher-Yates).
fn shuffle(targets: &mut [Target]) -> Result<()> {
    for i in (1..targets.len()).rev() {
        let r = getrandom::u64().map_err(|e| {
            Error::internal(format!("load_balance_hosts=random: no random numbers: {e}"))
        })?;
        let j = usize::try_from(r % (i as u64 + 1)).unwrap_or(0);
        targets.swap(i, j);
    }
    Ok(())
}

/// The connection string a command uses: the one given (`--database-url`,
/// `PGLOCK_DATABASE_URL`), else `DATABASE_URL`; empty is unset. `None` leaves it to libpq's
/// variables and defaults.
pub fn database_url(given: Option<String>) -> Option<String> {
    given
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("DATABASE_URL").ok().filter(|s| !s.is_empty()))
}

impl ConnParams {
    /// Resolves the connection from an optional connection string and the process environment.
    pub fn resolve(conn_str: Option<&str>) -> Result<ConnParams> {
        Self::resolve_with(conn_str, &|k| {
            std::env::var(k).ok().filter(|v| !v.is_empty())
        })
    }

    /// As [`ConnParams::resolve`], with `env` standing for the environment.
    pub fn resolve_with(conn_str: Option<&str>, env: Env) -> Result<ConnParams> {
        let mut s = match conn_str {
            Some(c) if c.starts_with("postgresql://") || c.starts_with("postgres://") => {
                parse_uri(c)?
            }
            Some(c) => parse_kv(c)?,
            None => Settings::default(),
        };
        s.add_service(env)?;
        s.add_env(env);
        s.check()?;
        let mut params = s.params(env)?;
        params.configured |= conn_str.is_some();
        Ok(params)
    }

    /// The password for a target: the explicit one, else the password file's match.
    pub fn password_for(&self, t: &Target) -> Option<String> {
        if self.password.is_some() {
            return self.password.clone();
        }
        let file = self.passfile.as_ref()?;
        passfile_lookup(file, t, &self.dbname, &self.user).map(|(password, _)| password)
    }

    /// Where the password for a target comes from ("the connection URL", "PGPASSWORD", "line 3
    /// of /home/u/.pgpass"), for an authentication failure to name; never the password itself.
    pub fn password_source(&self, t: &Target) -> Option<String> {
        if self.password.is_some() {
            return self.password_from.clone();
        }
        let file = self.passfile.as_ref()?;
        let (_, line) = passfile_lookup(file, t, &self.dbname, &self.user)?;
        Some(format!("line {line} of {}", file.display()))
    }
}

fn uri_error(why: &str) -> Error {
    Error::usage(format!("invalid connection URI: {why}"))
}

/// Parses `postgres://[user[:password]@][host[:port][,...]][/dbname][?k=v&...]` as libpq does.
fn parse_uri(uri: &str) -> Result<Settings> {
    let mut s = Settings::default();
    let rest = uri.split_once("://").map_or("", |x| x.1);
    // libpq looks for user info before the first '/'; pglock takes the last '@' there, so that
    // an '@' in a password works unencoded.
    let slash = rest.find('/').unwrap_or(rest.len());
    let rest = match rest[..slash].rfind('@') {
        Some(at) => {
            store_userinfo(&mut s, &rest[..at])?;
            &rest[at + 1..]
        }
        None => {
            // An '@' further on: a '/' in a password probably cut the user info short.
            s.quiet = rest.contains('@');
            rest
        }
    };
    let hosts_end = rest.find(['/', '?']).unwrap_or(rest.len());
    store_hosts(&mut s, &rest[..hosts_end])?;
    let rest = &rest[hosts_end..];
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let db = path.strip_prefix('/').unwrap_or(path);
    if s.quiet && db.contains('@') {
        return Err(uri_error(
            "'@' after the host (not shown, it may hold a password: write '/' in a password as \
             %2F, '@' in a database name as %40)",
        ));
    }
    if !db.is_empty() {
        s.store("dbname", decode(db, "the database name")?, Source::Uri);
    }
    store_query(&mut s, query)?;
    Ok(s)
}

fn store_userinfo(s: &mut Settings, info: &str) -> Result<()> {
    let (user, password) = match info.split_once(':') {
        Some((u, p)) => (u, Some(p)),
        None => (info, None),
    };
    if !user.is_empty() {
        s.store("user", decode(user, "the user name")?, Source::Uri);
    }
    if let Some(p) = password.filter(|p| !p.is_empty()) {
        s.store("password", decode(p, "the password")?, Source::Uri);
    }
    Ok(())
}

/// `host[:port]` entries separated by commas; an IPv6 address in brackets.
fn store_hosts(s: &mut Settings, spec: &str) -> Result<()> {
    if spec.is_empty() {
        return Ok(());
    }
    let (mut hosts, mut ports) = (Vec::new(), Vec::new());
    for part in spec.split(',') {
        let (host, port) = split_host_port(part)?;
        hosts.push(decode(host, "a host")?);
        ports.push(decode(port, "a port")?);
    }
    s.store("host", hosts.join(","), Source::Uri);
    if ports.iter().any(|p| !p.is_empty()) {
        s.store("port", ports.join(","), Source::Uri);
    }
    Ok(())
}

fn split_host_port(part: &str) -> Result<(&str, &str)> {
    let Some(v6) = part.strip_prefix('[') else {
        return Ok(part.split_once(':').unwrap_or((part, "")));
    };
    let (host, after) = v6
        .split_once(']')
        .ok_or_else(|| uri_error("an IPv6 host address has no closing ']'"))?;
    if host.is_empty() {
        return Err(uri_error("an IPv6 host address is empty"));
    }
    match after {
        "" => Ok((host, "")),
        _ => after
            .strip_prefix(':')
            .map(|port| (host, port))
            .ok_or_else(|| uri_error("unexpected text after ']' (expected ':' and a port)")),
    }
}

fn store_query(s: &mut Settings, query: &str) -> Result<()> {
    let mut after_secret = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| uri_error("a query parameter has no '='"))?;
        let (k, v) = (
            decode(k, "a query parameter")?,
            decode(v, "a query parameter")?,
        );
        // libpq's JDBC spelling.
        let (k, v) = match (k.as_str(), v.as_str()) {
            ("ssl", "true") => ("sslmode".to_string(), "require".to_string()),
            _ => (k, v),
        };
        if !s.store(&k, v, Source::Uri) {
            return Err(match (s.quiet, after_secret) {
                (false, false) => Error::usage(format!("invalid connection option '{k}'")),
                (true, _) => uri_error(
                    "invalid connection option (not shown, it may hold a password: write '/' \
                     in a password as %2F)",
                ),
                (false, true) => Error::usage(
                    "invalid connection option after password=... (not shown, it may hold the \
                     password: write '&' in a password as %26)",
                ),
            });
        }
        after_secret = SECRETS.contains(&k.as_str());
    }
    Ok(())
}

/// Percent-decodes one URI component; `what` names it in errors, which never show its text.
fn decode(s: &str, what: &str) -> Result<String> {
    let bad = |why: &str| uri_error(&format!("{why} in {what}"));
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let byte = s
            .get(i + 1..i + 3)
            .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or_else(|| bad("an invalid percent-encoded token"))?;
        if byte == 0 {
            return Err(bad("forbidden value %00"));
        }
        out.push(byte);
        i += 3;
    }
    String::from_utf8(out).map_err(|_| bad("percent-encoded bytes that are not UTF-8"))
}

/// Parses libpq's `key=value key='quoted value'` form.
fn parse_kv(s: &str) -> Result<Settings> {
    let mut out = Settings::default();
    let mut chars = s.chars().peekable();
    // What follows a password may be the rest of it: "password=my secret".
    let mut after_secret = false;
    let fail = |after_secret: bool, msg: String| match after_secret {
        false => Error::usage(msg),
        true => Error::usage(
            "invalid connection option after password=... (not shown, it may hold the \
             password): quote values with spaces: password='a b'",
        ),
    };
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(fail(after_secret, format!(
                "invalid connection string: missing '=' after '{key}' (use key=value pairs or a postgres:// URI)"
            )));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let value = kv_value(&mut chars)?;
        if !out.store(&key, value, Source::KeyValue) {
            return Err(fail(
                after_secret,
                format!("invalid connection option '{key}'"),
            ));
        }
        after_secret = SECRETS.contains(&key.as_str());
    }
}

/// A value: up to the next space, or quoted in `'...'`; `\` escapes the next character.
fn kv_value(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<String> {
    let mut value = String::new();
    if chars.next_if_eq(&'\'').is_none() {
        while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
            match c {
                '\\' => value.extend(chars.next()),
                c => value.push(c),
            }
        }
        return Ok(value);
    }
    loop {
        match chars.next() {
            Some('\\') => value.extend(chars.next()),
            Some('\'') => return Ok(value),
            Some(c) => value.push(c),
            None => {
                return Err(Error::usage(
                    "invalid connection string: unterminated quoted value",
                ))
            }
        }
    }
}

/// libpq's default `PGSYSCONFDIR` on Debian and Ubuntu, whose packages most servers use.
const SYSCONFDIR: &str = "/etc/postgresql-common";

/// One `key=value` line of a service section: line number, key, value.
type ServiceLine = (usize, String, String);

/// libpq's search: `PGSERVICEFILE` (which must exist) or `~/.pg_service.conf`, then
/// `PGSYSCONFDIR/pg_service.conf`; the first file with the section wins.
fn find_service(name: &str, env: Env) -> Result<(PathBuf, Vec<ServiceLine>)> {
    let user_file = match env("PGSERVICEFILE") {
        Some(f) => Some((PathBuf::from(f), true)),
        None => home_path(env, &[".pg_service.conf"]).map(|p| (p, false)),
    };
    let sys_dir = env("PGSYSCONFDIR").unwrap_or_else(|| SYSCONFDIR.to_string());
    let sys_file = (Path::new(&sys_dir).join("pg_service.conf"), false);
    let files: Vec<(PathBuf, bool)> = user_file.into_iter().chain([sys_file]).collect();
    for (file, must_exist) in &files {
        if *must_exist || file.exists() {
            if let Some(lines) = service_section(file, name)? {
                return Ok((file.clone(), lines));
            }
        }
    }
    let looked: Vec<String> = files.iter().map(|f| f.0.display().to_string()).collect();
    Err(Error::usage(format!(
        "definition of service \"{name}\" not found (service files: {})",
        looked.join(", ")
    )))
}

/// The `key=value` lines of `[name]` in a service file, None when it has no such section.
/// As libpq: lines are trimmed, `#` starts a comment line, keys and values are taken as written.
fn service_section(file: &Path, name: &str) -> Result<Option<Vec<ServiceLine>>> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Error::usage(format!("cannot read service file {}: {e}", file.display())))?;
    let mut section: Option<Vec<ServiceLine>> = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[') {
            if section.is_some() {
                break;
            }
            if header
                .strip_prefix(name)
                .is_some_and(|r| r.starts_with(']'))
            {
                section = Some(Vec::new());
            }
            continue;
        }
        let Some(lines) = section.as_mut() else {
            continue;
        };
        let at = || format!("service file {}, line {}", file.display(), i + 1);
        if line.starts_with("ldap") {
            return Err(Error::usage(format!(
                "{}: LDAP look-ups are not supported",
                at()
            )));
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| Error::usage(format!("syntax error in {}: expected key=value", at())))?;
        lines.push((i + 1, key.to_string(), value.to_string()));
    }
    Ok(section)
}

fn default_socket_dir() -> PathBuf {
    let debian = Path::new("/var/run/postgresql");
    if debian.is_dir() {
        debian.to_path_buf()
    } else {
        PathBuf::from("/tmp")
    }
}

fn os_user() -> Result<String> {
    match nix::unistd::User::from_uid(nix::unistd::getuid()) {
        Ok(Some(u)) => Ok(u.name),
        _ => std::env::var("USER").map_err(|_| {
            Error::usage(
                "cannot tell the database user: set PGUSER or put a user in the connection string",
            )
        }),
    }
}

/// Looks up `hostname:port:database:username:password` lines, libpq style. A file that group or
/// others can read is ignored, as libpq does.
/// The password file's first entry that matches, and its line number.
fn passfile_lookup(file: &Path, t: &Target, db: &str, user: &str) -> Option<(String, usize)> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(file).ok()?;
    if !meta.is_file() {
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        crate::log::warn(
            "passfile",
            &format!(
                "password file {} has group or world access; it is ignored (chmod 0600 it)",
                file.display()
            ),
            &[],
        );
        return None;
    }
    let text = std::fs::read_to_string(file).ok()?;
    let host = t.host_name();
    let port = t.port.to_string();
    // As libpq (fe-connect.c, passwordFromFile): `localhost` stands for a Unix socket only in
    // the default socket directory; a socket elsewhere matches its directory's path alone.
    let default_socket = matches!(&t.host, Host::Unix(d) if *d == default_socket_dir());
    let host_ok = |pat: &str| pat == "*" || pat == host || (default_socket && pat == "localhost");
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_passfile_line(line);
        if fields.len() < 5 {
            continue;
        }
        let ok = |pat: &str, v: &str| pat == "*" || pat == v;
        if host_ok(&fields[0])
            && ok(&fields[1], &port)
            && ok(&fields[2], db)
            && ok(&fields[3], user)
        {
            return Some((fields[4..].join(":"), n + 1));
        }
    }
    None
}

fn split_passfile_line(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut().unwrap().extend(chars.next()),
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
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
            let dir =
                std::env::temp_dir().join(format!("pglock-conninfo-{}-{n}", std::process::id()));
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
        assert!(
            err("host=a,b port=1,2,3", &[]).contains("could not match 3 port numbers to 2 hosts")
        );
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
}

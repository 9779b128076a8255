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

mod files;
mod parse;

use crate::error::{Error, Result};
use files::{default_socket_dir, find_service, os_user, passfile_lookup};
use parse::{parse_kv, parse_uri};
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
    /// The keyword's value, as libpq spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

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
        // sslmode=disable never starts TLS: as libpq, nothing looks for the default files then.
        let plain = self.get("sslmode") == Some("disable");
        let home = |name: &str| {
            (!plain)
                .then(|| home_path(env, &[".postgresql", name]))
                .flatten()
                .filter(|p| p.exists())
        };
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

#[cfg(test)]
mod tests;

//! Where to connect (contract §3): connection URIs and `key=value` strings, libpq's environment
//! variables and defaults, and the password file. The result is a list of targets and the session
//! parameters; the wire protocol lives in `pg/`.
//!
//! Resolution order, first found wins, parameter by parameter: the connection string (from
//! `--database-url`, `PGLOCK_DATABASE_URL` or `DATABASE_URL`), the `PG*` variables, libpq's
//! defaults. The password: the string, `PGPASSWORD`, then the password file. Passwords never
//! appear in messages: errors describe a target by host, port and user only.

use crate::error::{Error, Result};
use std::collections::BTreeMap;
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
    fn parse(s: &str) -> Result<SslMode> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::usage(format!(
                    "invalid sslmode '{other}': use disable, allow, prefer, require, verify-ca or verify-full"
                )))
            }
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Tcp(String),
    /// A Unix-domain socket directory; the socket is `DIR/.s.PGSQL.PORT`.
    Unix(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: Host,
    pub port: u16,
    /// libpq's `hostaddr`: the address to connect to, while `host` still names the server for
    /// TLS and the password file.
    pub hostaddr: Option<std::net::IpAddr>,
}

impl Target {
    /// `host:port` for messages (the socket path for Unix sockets).
    pub fn describe(&self) -> String {
        match &self.host {
            Host::Tcp(h) if h.contains(':') => format!("[{h}]:{}", self.port),
            Host::Tcp(h) => format!("{h}:{}", self.port),
            Host::Unix(dir) => self.socket_path(dir).display().to_string(),
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
    passfile: Option<PathBuf>,
}

/// Keywords accepted in connection strings, with the environment variable libpq reads for each.
const KEYWORDS: &[(&str, Option<&str>)] = &[
    ("host", Some("PGHOST")),
    ("hostaddr", Some("PGHOSTADDR")),
    ("port", Some("PGPORT")),
    ("user", Some("PGUSER")),
    ("password", Some("PGPASSWORD")),
    ("dbname", Some("PGDATABASE")),
    ("sslmode", Some("PGSSLMODE")),
    ("sslrootcert", Some("PGSSLROOTCERT")),
    ("sslcert", Some("PGSSLCERT")),
    ("sslkey", Some("PGSSLKEY")),
    ("sslrootcert", Some("PGSSLROOTCERT")),
    ("connect_timeout", Some("PGCONNECT_TIMEOUT")),
    ("application_name", Some("PGAPPNAME")),
    ("fallback_application_name", None),
    ("options", Some("PGOPTIONS")),
    ("passfile", Some("PGPASSFILE")),
    // Accepted for compatibility with libpq strings; pglock manages these itself.
    ("keepalives", None),
    ("keepalives_idle", None),
    ("keepalives_interval", None),
    ("keepalives_count", None),
    ("client_encoding", Some("PGCLIENTENCODING")),
    ("target_session_attrs", Some("PGTARGETSESSIONATTRS")),
];

impl ConnParams {
    /// Resolves the connection from an optional connection string and the process environment.
    pub fn resolve(conn_str: Option<&str>) -> Result<ConnParams> {
        Self::resolve_with(conn_str, &|k| {
            std::env::var(k).ok().filter(|v| !v.is_empty())
        })
    }

    pub fn resolve_with(
        conn_str: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ConnParams> {
        let mut m = match conn_str {
            Some(s) if s.starts_with("postgresql://") || s.starts_with("postgres://") => {
                parse_uri(s)?
            }
            Some(s) => parse_kv(s)?,
            None => BTreeMap::new(),
        };
        for (k, var) in KEYWORDS {
            if let (false, Some(var)) = (m.contains_key(*k), var) {
                if let Some(v) = env(var) {
                    m.insert(k.to_string(), v);
                }
            }
        }
        let get = |k: &str| m.get(k).filter(|v| !v.is_empty()).cloned();

        let user = match get("user") {
            Some(u) => u,
            None => os_user()?,
        };
        let dbname = get("dbname").unwrap_or_else(|| user.clone());
        let hosts: Vec<String> = match get("host").or_else(|| get("hostaddr")) {
            Some(h) => h.split(',').map(|s| s.trim().to_string()).collect(),
            None => vec![String::new()],
        };
        let ports: Vec<u16> = match get("port") {
            Some(p) => p
                .split(',')
                .map(|s| parse_port(s.trim()))
                .collect::<Result<_>>()?,
            None => vec![5432],
        };
        if ports.len() != 1 && ports.len() != hosts.len() {
            return Err(Error::usage(format!(
                "the connection string lists {} hosts but {} ports",
                hosts.len(),
                ports.len()
            )));
        }
        let targets = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| Target {
                host: if h.is_empty() {
                    Host::Unix(default_socket_dir())
                } else if h.starts_with('/') {
                    Host::Unix(PathBuf::from(h))
                } else {
                    Host::Tcp(h.clone())
                },
                port: if ports.len() == 1 { ports[0] } else { ports[i] },
                hostaddr: None,
            })
            .collect();
        let mut sslmode = SslMode::parse(&get("sslmode").unwrap_or_else(|| "prefer".into()))?;
        // libpq's defaults for the certificate files live in ~/.postgresql.
        let home_file = |name: &str| {
            env("HOME")
                .map(|h| Path::new(&h).join(".postgresql").join(name))
                .filter(|p| p.exists())
        };
        let explicit_root = get("sslrootcert");
        let tls_files = TlsFiles {
            root: explicit_root
                .clone()
                .or_else(|| home_file("root.crt").map(|p| p.display().to_string())),
            cert: get("sslcert")
                .map(PathBuf::from)
                .or_else(|| home_file("postgresql.crt")),
            key: get("sslkey")
                .map(PathBuf::from)
                .or_else(|| home_file("postgresql.key")),
            crl: None,
            crl_dir: None,
        };
        // As libpq: with a root certificate given, require verifies the chain like verify-ca.
        if sslmode == SslMode::Require && explicit_root.is_some() {
            sslmode = SslMode::VerifyCa;
        }
        let connect_timeout = match get("connect_timeout") {
            Some(t) => match t.trim().parse::<u64>() {
                Ok(0) => None,
                // libpq treats values below 2 seconds as 2 seconds.
                Ok(n) => Some(Duration::from_secs(n.max(2))),
                Err(_) => {
                    return Err(Error::usage(format!(
                        "invalid connect_timeout '{t}': give whole seconds"
                    )))
                }
            },
            None => None,
        };
        if let Some(tsa) = get("target_session_attrs") {
            // pglock always picks a primary (a lock on a standby excludes nobody): these agree.
            if !matches!(tsa.as_str(), "any" | "read-write" | "primary") {
                return Err(Error::usage(format!(
                    "target_session_attrs '{tsa}' cannot be used: pglock always connects to a primary"
                )));
            }
        }
        let passfile = get("passfile")
            .map(PathBuf::from)
            .or_else(|| env("HOME").map(|h| Path::new(&h).join(".pgpass")));
        Ok(ConnParams {
            targets,
            user,
            password: get("password"),
            dbname,
            sslmode,
            tls_files,
            connect_timeout,
            application_name: get("application_name").or_else(|| get("fallback_application_name")),
            options: get("options"),
            channel_binding: ChannelBinding::default(),
            require_auth: RequireAuth::default(),
            passfile,
        })
    }

    /// The password for a target: the explicit one, else the password file's match.
    pub fn password_for(&self, t: &Target) -> Option<String> {
        if self.password.is_some() {
            return self.password.clone();
        }
        let file = self.passfile.as_ref()?;
        passfile_lookup(file, t, &self.dbname, &self.user)
    }
}

fn parse_port(s: &str) -> Result<u16> {
    if s.is_empty() {
        return Ok(5432);
    }
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(Error::usage(format!(
            "invalid port '{s}' in the connection settings"
        ))),
    }
}

fn check_keyword(k: &str) -> Result<()> {
    if KEYWORDS.iter().any(|(name, _)| *name == k) {
        Ok(())
    } else {
        Err(Error::usage(format!("invalid connection option '{k}'")))
    }
}

/// Parses `postgres://[user[:password]@][host[:port][,...]][/dbname][?k=v&...]`.
fn parse_uri(uri: &str) -> Result<BTreeMap<String, String>> {
    let bad = |why: &str| Error::usage(format!("invalid connection URI: {why}"));
    let rest = uri.split_once("://").map(|x| x.1).unwrap_or_default();
    let (main, query) = match rest.split_once('?') {
        Some((a, b)) => (a, Some(b)),
        None => (rest, None),
    };
    let (authority, path) = match main.find('/') {
        Some(i) => (&main[..i], Some(&main[i + 1..])),
        None => (main, None),
    };
    let mut m = BTreeMap::new();
    let hostspec = match authority.rfind('@') {
        Some(i) => {
            let userinfo = &authority[..i];
            let (u, p) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !u.is_empty() {
                m.insert(
                    "user".into(),
                    pct_decode(u).ok_or_else(|| bad("bad %-escape in the user name"))?,
                );
            }
            if let Some(p) = p {
                m.insert(
                    "password".into(),
                    pct_decode(p).ok_or_else(|| bad("bad %-escape in the password"))?,
                );
            }
            &authority[i + 1..]
        }
        None => authority,
    };
    if !hostspec.is_empty() {
        let mut hosts = Vec::new();
        let mut ports = Vec::new();
        for part in hostspec.split(',') {
            let (h, p) = if let Some(v6) = part.strip_prefix('[') {
                let end = v6
                    .find(']')
                    .ok_or_else(|| bad("unterminated [ in the host"))?;
                let after = &v6[end + 1..];
                let port = match after.strip_prefix(':') {
                    Some(p) => p,
                    None if after.is_empty() => "",
                    None => return Err(bad("unexpected text after ]")),
                };
                (v6[..end].to_string(), port)
            } else {
                match part.rsplit_once(':') {
                    Some((h, p)) => (h.to_string(), p),
                    None => (part.to_string(), ""),
                }
            };
            hosts.push(pct_decode(&h).ok_or_else(|| bad("bad %-escape in the host"))?);
            ports.push(p.to_string());
        }
        m.insert("host".into(), hosts.join(","));
        if ports.iter().any(|p| !p.is_empty()) {
            m.insert("port".into(), ports.join(","));
        }
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        m.insert(
            "dbname".into(),
            pct_decode(db).ok_or_else(|| bad("bad %-escape in the database name"))?,
        );
    }
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| bad("a query parameter has no '='"))?;
        let k = pct_decode(k).ok_or_else(|| bad("bad %-escape in a parameter"))?;
        let v = pct_decode(v).ok_or_else(|| bad("bad %-escape in a parameter"))?;
        if k == "ssl" && v == "true" {
            m.insert("sslmode".into(), "require".into());
            continue;
        }
        check_keyword(&k)?;
        m.insert(k, v);
    }
    Ok(m)
}

fn pct_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Parses libpq's `key=value key='quoted value'` form.
fn parse_kv(s: &str) -> Result<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(Error::usage(format!(
                "invalid connection string: missing '=' after '{key}' (use key=value pairs or a postgres:// URI)"
            )));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => {
                        return Err(Error::usage(
                            "invalid connection string: unterminated quoted value",
                        ))
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        check_keyword(&key)?;
        m.insert(key, value);
    }
    Ok(m)
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
fn passfile_lookup(file: &Path, t: &Target, db: &str, user: &str) -> Option<String> {
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
    let host_ok = |pat: &str| {
        pat == "*" || pat == host || (matches!(t.host, Host::Unix(_)) && pat == "localhost")
    };
    for line in text.lines() {
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
            return Some(fields[4..].join(":"));
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
        assert_eq!(
            p.targets,
            vec![Target {
                host: Host::Tcp("db.example".into()),
                port: 6432,
                hostaddr: None,
            }]
        );
        assert_eq!(p.sslmode, SslMode::Require);
        assert_eq!(p.application_name.as_deref(), Some("x"));
    }

    #[test]
    fn uri_multi_host_ipv6_socket() {
        let p = resolve(Some("postgresql://a:1,[::1]:2,b/x?user=me"), &[]).unwrap();
        assert_eq!(p.targets.len(), 3);
        assert_eq!(
            p.targets[1],
            Target {
                host: Host::Tcp("::1".into()),
                port: 2,
                hostaddr: None,
            }
        );
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
        assert_eq!(
            p.targets[0],
            Target {
                host: Host::Tcp("x".into()),
                port: 9,
                hostaddr: None,
            }
        );
        assert_eq!(p.dbname, "u");
        assert_eq!(p.sslmode, SslMode::Disable);
    }

    #[test]
    fn errors_do_not_echo_passwords() {
        for s in [
            "postgres://u:s3cret@h:notaport/db",
            "host=h password=s3cret bogus=1",
            "password='s3cret",
        ] {
            let e = resolve(Some(s), &[("PGUSER", "u")]).unwrap_err();
            assert!(!e.msg.contains("s3cret"), "{}", e.msg);
        }
        assert!(resolve(Some("sslmode=maybe"), &[("PGUSER", "u")]).is_err());
    }

    #[test]
    fn passfile_lines() {
        assert_eq!(
            split_passfile_line(r"h:5432:*:u:pa\:ss:x"),
            vec!["h", "5432", "*", "u", "pa:ss:x"]
        );
    }
}

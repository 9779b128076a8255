//! The files libpq reads for a connection: the service file's section, the password file
//! (`~/.pgpass`, `PGPASSFILE`) with its permission rule, and the local defaults (socket
//! directory, OS user).

use super::*;

/// libpq's default `PGSYSCONFDIR` on Debian and Ubuntu, whose packages most servers use.
const SYSCONFDIR: &str = "/etc/postgresql-common";

/// One `key=value` line of a service section: line number, key, value.
type ServiceLine = (usize, String, String);

/// libpq's search: `PGSERVICEFILE` (which must exist) or `~/.pg_service.conf`, then
/// `PGSYSCONFDIR/pg_service.conf`; the first file with the section wins.
pub(super) fn find_service(name: &str, env: Env) -> Result<(PathBuf, Vec<ServiceLine>)> {
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

pub(super) fn default_socket_dir() -> PathBuf {
    let debian = Path::new("/var/run/postgresql");
    if debian.is_dir() {
        debian.to_path_buf()
    } else {
        PathBuf::from("/tmp")
    }
}

pub(super) fn os_user() -> Result<String> {
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
pub(super) fn passfile_lookup(
    file: &Path,
    t: &Target,
    db: &str,
    user: &str,
) -> Option<(String, usize)> {
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

pub(super) fn split_passfile_line(line: &str) -> Vec<String> {
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

//! Connection strings as libpq reads them: `postgres://` URIs (percent-decoded, several hosts,
//! query parameters) and `key=value` strings (quoted values, backslash escapes).

use super::*;

fn uri_error(why: &str) -> Error {
    Error::usage(format!("invalid connection URI: {why}"))
}

/// Parses `postgres://[user[:password]@][host[:port][,...]][/dbname][?k=v&...]` as libpq does.
pub(super) fn parse_uri(uri: &str) -> Result<Settings> {
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
pub(super) fn parse_kv(s: &str) -> Result<Settings> {
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

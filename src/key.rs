//! Lock identity (contract §2): the fixed mapping from a key NAME to a signed 64-bit advisory lock
//! id, the same mapping as an SQL expression, and parsing of raw `--key-id` values.
//!
//! The mapping must never change between releases: the first 8 bytes of SHA-256 of the name's UTF-8
//! bytes, read big-endian as an `i64`.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};

/// Longest accepted key name, in bytes.
pub const MAX_NAME_BYTES: usize = 1024;

/// What pglock locks: the id, and the name it came from when given by `--key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockKey {
    pub id: i64,
    pub name: Option<String>,
}

impl LockKey {
    pub fn from_name(name: &str) -> Result<LockKey> {
        validate_name(name)?;
        Ok(LockKey {
            id: id_of(name),
            name: Some(name.to_string()),
        })
    }

    pub fn from_id_text(text: &str) -> Result<LockKey> {
        Ok(LockKey {
            id: parse_id(text)?,
            name: None,
        })
    }

    /// The name for humans and for `PGLOCK_KEY`/application_name: the key name, else the id.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => self.id.to_string(),
        }
    }

    /// `pg_locks.classid` of this lock: the high 32 bits, as PostgreSQL's unsigned oid.
    pub fn classid(&self) -> u32 {
        ((self.id as u64) >> 32) as u32
    }

    /// `pg_locks.objid` of this lock: the low 32 bits.
    pub fn objid(&self) -> u32 {
        (self.id as u64 & 0xffff_ffff) as u32
    }
}

pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::usage(
            "the key name is empty; give a non-empty --key NAME",
        ));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(Error::usage(format!(
            "the key name is {} bytes long; at most {MAX_NAME_BYTES} bytes are allowed",
            name.len()
        )));
    }
    if name.contains('\0') {
        return Err(Error::usage(
            "the key name contains a NUL byte, which is not allowed",
        ));
    }
    Ok(())
}

/// The advisory lock id of a key name.
pub fn id_of(name: &str) -> i64 {
    let digest = Sha256::digest(name.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// The id of slot `i` of a `--limit` semaphore on lock `id`: [`id_of`] of the text `"<id>:<i>"`.
pub fn slot_id(id: i64, i: u32) -> i64 {
    id_of(&format!("{id}:{i}"))
}

/// The id of the queue lock that `--limit` waiters line up on: [`id_of`] of `"<id>:queue"`.
pub fn queue_id(id: i64) -> i64 {
    id_of(&format!("{id}:queue"))
}

/// SQL that takes a free slot of a `--limit` semaphore on `id` without waiting: one row with the
/// slot number when it got one, no row when all `n` are taken.
pub fn slot_sql(id: i64, n: u32) -> String {
    format!(
        "SELECT i FROM generate_series(0, {}) AS i \
         WHERE pg_try_advisory_lock(('x' || left(encode(sha256(convert_to('{id}:' || i, 'UTF8')), 'hex'), 16))::bit(64)::bigint) LIMIT 1",
        n - 1
    )
}

/// The SQL expression (PostgreSQL 11 or later, no extension) that yields [`id_of`]`(name)`.
pub fn sql_expr(name: &str) -> String {
    format!(
        "('x' || left(encode(sha256(convert_to({}, 'UTF8')), 'hex'), 16))::bit(64)::bigint",
        sql_literal(name)
    )
}

/// Quotes `s` as an SQL string literal that means the same whatever `standard_conforming_strings`
/// is: a plain literal, or an `E''` literal when the text holds a backslash.
pub fn sql_literal(s: &str) -> String {
    let quoted = s.replace('\'', "''");
    if s.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

/// Parses a raw lock id: decimal (negative allowed) or hex with `0x` (an optional leading `-`).
/// Hex values up to 16 digits are read as the 64-bit pattern, so `0xffffffffffffffff` is -1.
pub fn parse_id(text: &str) -> Result<i64> {
    let t = text.trim();
    let bad = || {
        Error::usage(format!(
            "invalid --key-id '{text}': give a 64-bit integer, decimal (-42) or hex (0x47524f4f)"
        ))
    };
    let (neg, body) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        if hex.is_empty() || hex.len() > 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let v = u64::from_str_radix(hex, 16).map_err(|_| bad())? as i64;
        return if neg {
            v.checked_neg().ok_or_else(bad)
        } else {
            Ok(v)
        };
    }
    if body.is_empty() || !body.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    t.parse::<i64>().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_ids() {
        // sha256("seed") = 19b25856e1c150ca834cffc8b59b23ad...
        assert_eq!(id_of("seed"), 0x19b2_5856_e1c1_50ca_u64 as i64);
        assert_eq!(LockKey::from_name("seed").unwrap().classid(), 0x19b2_5856);
        assert_eq!(LockKey::from_name("seed").unwrap().objid(), 0xe1c1_50ca);
    }

    #[test]
    fn ids_parse() {
        assert_eq!(parse_id("42").unwrap(), 42);
        assert_eq!(parse_id("-42").unwrap(), -42);
        assert_eq!(parse_id("0x47524f4f").unwrap(), 0x4752_4f4f);
        assert_eq!(parse_id("0xffffffffffffffff").unwrap(), -1);
        assert_eq!(parse_id("-9223372036854775808").unwrap(), i64::MIN);
        for bad in [
            "",
            "x",
            "0x",
            "1.5",
            "9223372036854775808",
            "0x1ffffffffffffffff",
            "--1",
        ] {
            assert!(parse_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_validated() {
        assert!(LockKey::from_name("").is_err());
        assert!(LockKey::from_name("a\0b").is_err());
        assert!(LockKey::from_name(&"x".repeat(1024)).is_ok());
        assert!(LockKey::from_name(&"x".repeat(1025)).is_err());
    }

    #[test]
    fn slots() {
        assert_eq!(slot_id(42, 0), id_of("42:0"));
        assert_eq!(slot_id(-7, 3), id_of("-7:3"));
        assert_ne!(slot_id(42, 0), slot_id(42, 1));
        assert_eq!(queue_id(42), id_of("42:queue"));
    }

    #[test]
    fn literals() {
        assert_eq!(sql_literal("it's"), "'it''s'");
        assert_eq!(sql_literal(r"a\b'"), r"E'a\\b'''");
    }
}

//! Lock identity (contract §2): which advisory lock pglock takes, in PostgreSQL's two key spaces
//! (one bigint, or two int4), and every way to name it: a key NAME (a fixed mapping computed
//! without a database), a raw id, `hashtext(NAME)`, or the lock a migration tool takes.
//!
//! The NAME mapping must never change between releases: the first 8 bytes of SHA-256 of the name's
//! UTF-8 bytes, read big-endian as an `i64`. `hashtext` is the server's own undocumented hash and is
//! never computed here; neither is any input a tool reads from its connection (`current_database()`,
//! `current_schema()`): those forms stay [`Pending`] until the lock connection has answered.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::fmt;

/// Longest accepted key name, in bytes.
pub const MAX_NAME_BYTES: usize = 1024;

/// An advisory lock of one database. The two key spaces never conflict with each other, even where
/// `pg_locks` shows the same classid and objid: `objsubid` tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockId {
    /// `pg_advisory_lock(bigint)`: objsubid 1, classid = id >> 32, objid = id & 0xffffffff.
    Big(i64),
    /// `pg_advisory_lock(int, int)`: objsubid 2, classid = A, objid = B.
    Pair(i32, i32),
}

impl LockId {
    /// `pg_locks.classid`, as PostgreSQL's unsigned oid.
    pub fn classid(self) -> u32 {
        match self {
            LockId::Big(id) => ((id as u64) >> 32) as u32,
            LockId::Pair(a, _) => a as u32,
        }
    }

    /// `pg_locks.objid`.
    pub fn objid(self) -> u32 {
        match self {
            LockId::Big(id) => (id as u64 & 0xffff_ffff) as u32,
            LockId::Pair(_, b) => b as u32,
        }
    }

    /// `pg_locks.objsubid`: the key space.
    pub fn objsubid(self) -> u8 {
        match self {
            LockId::Big(_) => 1,
            LockId::Pair(..) => 2,
        }
    }

    /// The arguments of `pg_advisory_lock(...)` and its relatives for this lock.
    pub fn sql_args(self) -> String {
        match self {
            LockId::Big(id) => id.to_string(),
            LockId::Pair(a, b) => format!("{a}, {b}"),
        }
    }

    /// The id as a JSON value: a string, of decimal digits for the bigint form (as protobuf's
    /// JSON mapping writes int64: jq 1.6 and JavaScript round larger numbers, contract §8),
    /// "A,B" for the two-int4 form.
    pub fn json(self) -> String {
        match self {
            LockId::Big(id) => format!("\"{id}\""),
            LockId::Pair(a, b) => format!("\"{a},{b}\""),
        }
    }

    /// The bigint id, for what only exists in that key space (`--limit`'s slots, the fence).
    pub fn big(self) -> Option<i64> {
        match self {
            LockId::Big(id) => Some(id),
            LockId::Pair(..) => None,
        }
    }

    /// Reads an id as [`fmt::Display`] writes it (`-42`, `1,2`), and as `--key-id` takes it.
    pub fn parse(text: &str) -> Result<LockId> {
        match text.split_once(',') {
            None => Ok(LockId::Big(parse_id(text)?)),
            Some((a, b)) => {
                let half = |t: &str| {
                    parse_int4(t).ok_or_else(|| {
                        Error::usage(format!(
                            "invalid --key-id '{text}': the two-key form is A,B, each a 32-bit integer (-2147483648 to 2147483647), as in pg_advisory_lock(A, B)"
                        ))
                    })
                };
                Ok(LockId::Pair(half(a)?, half(b)?))
            }
        }
    }
}

impl fmt::Display for LockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockId::Big(id) => write!(f, "{id}"),
            LockId::Pair(a, b) => write!(f, "{a},{b}"),
        }
    }
}

/// One int4 of the two-key form: decimal, or hex with `0x` read as the 32-bit pattern.
fn parse_int4(t: &str) -> Option<i32> {
    let t = t.trim();
    let (neg, body) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        if hex.is_empty() || hex.len() > 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let v = u32::from_str_radix(hex, 16).ok()? as i32;
        return if neg { v.checked_neg() } else { Some(v) };
    }
    if body.is_empty() || !body.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

/// A migration tool whose advisory lock pglock can take (`--lock-of`), computed exactly as the tool
/// computes it. The sources are in docs/migration-tools.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// golang-migrate opened from a database URL (the `migrate` CLI, `migrate.New`): its database
    /// name is the URL's path, with the leading `/`.
    GolangMigrate,
    /// golang-migrate's `postgres.WithInstance` with no `DatabaseName`: `current_database()`.
    GolangMigrateWithInstance,
    Sqlx,
    Rails,
    Prisma,
    Flyway,
    Atlas,
    /// goose 3.26 and later (`crc32("goose")`).
    Goose,
    /// goose 3.16 to 3.25 (`crc64("goose")`, ECMA table, as Go's hash/crc64).
    GooseBefore326,
    Sqitch,
    GraphileMigrate,
    NodePgMigrate,
}

/// What a tool's lock id is computed from, as read on the lock connection or given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolInputs {
    pub database: String,
    pub schema: String,
    pub table: String,
}

/// golang-migrate `database/util.go`: `advisoryLockIDSalt`.
const GOLANG_MIGRATE_SALT: u32 = 1_486_364_155;
/// sqlx `sqlx-postgres/src/migrate.rs`: `generate_lock_id`.
const SQLX_SALT: i64 = 0x3d32_ad9e;
/// Rails `activerecord/lib/active_record/migration.rb`: `MIGRATOR_SALT`.
const RAILS_SALT: i64 = 2_053_462_845;
/// Flyway `PostgreSQLAdvisoryLockTemplate.java`: `LOCK_MAGIC_NUM`, "Flyway" in ASCII.
const FLYWAY_MAGIC: i64 = 0x466C_7977_6179;

impl Tool {
    pub const ALL: [Tool; 12] = [
        Tool::GolangMigrate,
        Tool::GolangMigrateWithInstance,
        Tool::Sqlx,
        Tool::Rails,
        Tool::Prisma,
        Tool::Flyway,
        Tool::Atlas,
        Tool::Goose,
        Tool::GooseBefore326,
        Tool::Sqitch,
        Tool::GraphileMigrate,
        Tool::NodePgMigrate,
    ];

    /// The `--lock-of` value.
    pub fn name(self) -> &'static str {
        match self {
            Tool::GolangMigrate => "golang-migrate",
            Tool::GolangMigrateWithInstance => "golang-migrate-with-instance",
            Tool::Sqlx => "sqlx",
            Tool::Rails => "rails",
            Tool::Prisma => "prisma",
            Tool::Flyway => "flyway",
            Tool::Atlas => "atlas",
            Tool::Goose => "goose",
            Tool::GooseBefore326 => "goose-before-3.26",
            Tool::Sqitch => "sqitch",
            Tool::GraphileMigrate => "graphile-migrate",
            Tool::NodePgMigrate => "node-pg-migrate",
        }
    }

    pub fn from_name(s: &str) -> Result<Tool> {
        Tool::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                Error::usage(format!(
                    "--lock-of '{s}': not a tool pglock knows; give one of {}",
                    tool_names().join(", ")
                ))
            })
    }

    /// The lock's description for people: `rails migrations`.
    pub fn describe(self) -> String {
        format!("{} migrations", self.name())
    }

    /// The migrations table's default, for the tools whose users can change it (`--lock-table`).
    pub fn default_table(self) -> Option<&'static str> {
        match self {
            Tool::GolangMigrate | Tool::GolangMigrateWithInstance => Some("schema_migrations"),
            Tool::Flyway => Some("flyway_schema_history"),
            _ => None,
        }
    }

    /// Whether the id depends on the migrations table's schema (`--lock-schema`, else
    /// `current_schema()` on the lock connection).
    pub fn uses_schema(self) -> bool {
        self.default_table().is_some()
    }

    /// Whether the id depends on `current_database()`.
    pub fn uses_database(self) -> bool {
        matches!(
            self,
            Tool::GolangMigrate | Tool::GolangMigrateWithInstance | Tool::Sqlx | Tool::Rails
        )
    }

    /// The tool's lock id, computed as the tool computes it.
    pub fn id(self, i: &ToolInputs) -> i64 {
        match self {
            // crc32(schema \0 table \0 dbname) * salt, in uint32 arithmetic.
            Tool::GolangMigrate | Tool::GolangMigrateWithInstance => {
                let db = if self == Tool::GolangMigrate {
                    format!("/{}", i.database)
                } else {
                    i.database.clone()
                };
                let text = format!("{}\0{}\0{db}", i.schema, i.table);
                i64::from(crc32(text.as_bytes()).wrapping_mul(GOLANG_MIGRATE_SALT))
            }
            // Both products stay below 2^63.
            Tool::Sqlx => SQLX_SALT * i64::from(crc32(i.database.as_bytes())),
            Tool::Rails => RAILS_SALT * i64::from(crc32(i.database.as_bytes())),
            Tool::Prisma => 72_707_369,
            // The int hash of `"schema"."table"` is sign-extended into the long.
            Tool::Flyway => FLYWAY_MAGIC + i64::from(java_hash(&flyway_table(&i.schema, &i.table))),
            Tool::Atlas => i64::from(fnv1_32(b"atlas_migrate_execute")),
            Tool::Goose => i64::from(crc32(b"goose")),
            // goose v3.16.0-v3.25.0 `lock/session_locker_options.go`: DefaultLockID.
            Tool::GooseBefore326 => 5_887_940_537_704_921_958,
            Tool::Sqitch => 75_474_063,
            Tool::GraphileMigrate => 4_727_445_306_447_283,
            Tool::NodePgMigrate => 7_241_865_325_823_964,
        }
    }

    /// How the id is computed, with this lock's inputs, for `pglock key --sql` (as an SQL comment).
    pub fn formula(self, i: &ToolInputs) -> String {
        let q = |s: &str| sql_literal(s);
        match self {
            Tool::GolangMigrate | Tool::GolangMigrateWithInstance => {
                let db = if self == Tool::GolangMigrate {
                    format!("/{}", i.database)
                } else {
                    i.database.clone()
                };
                format!(
                    "crc32({} || chr(0) || {} || chr(0) || {}) * {GOLANG_MIGRATE_SALT} mod 2^32",
                    q(&i.schema),
                    q(&i.table),
                    q(&db)
                )
            }
            Tool::Sqlx => format!("{SQLX_SALT} * crc32({})", q(&i.database)),
            Tool::Rails => format!("{RAILS_SALT} * crc32({})", q(&i.database)),
            Tool::Flyway => format!(
                "{FLYWAY_MAGIC} + java_string_hashcode({})",
                q(&flyway_table(&i.schema, &i.table))
            ),
            Tool::Atlas => "fnv1_32('atlas_migrate_execute')".into(),
            Tool::Goose => "crc32('goose')".into(),
            Tool::GooseBefore326 => "crc64_ecma('goose')".into(),
            Tool::Prisma | Tool::Sqitch | Tool::GraphileMigrate | Tool::NodePgMigrate => {
                "a constant".into()
            }
        }
    }
}

/// Every `--lock-of` value.
pub fn tool_names() -> Vec<&'static str> {
    Tool::ALL.iter().map(|t| t.name()).collect()
}

/// Flyway's name of its history table, `"schema"."table"` (Flyway quotes each part, doubling a `"`).
fn flyway_table(schema: &str, table: &str) -> String {
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    format!("{}.{}", quote(schema), quote(table))
}

/// CRC-32 (IEEE 802.3, as zlib's `crc32`, Go's `crc32.ChecksumIEEE`, Ruby's `Zlib.crc32`).
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Java's `String.hashCode`: over UTF-16 code units, `h = 31 * h + c`, as a signed int.
pub fn java_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

/// 32-bit FNV-1 (multiply, then xor), Go's `hash/fnv.New32`.
pub fn fnv1_32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        h.wrapping_mul(0x0100_0193) ^ u32::from(b)
    })
}

/// A lock whose id only the server can tell: read on the lock connection before the lock is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    /// `hashtext(NAME)`, sign-extended into the bigint form as `pg_advisory_lock(hashtext(...))`
    /// does.
    Hashtext(String),
    /// A tool's lock that depends on `current_database()` or `current_schema()`.
    Tool {
        tool: Tool,
        schema: Option<String>,
        table: String,
    },
}

impl Pending {
    /// The query that reads what the id needs, on the lock connection: one row.
    pub fn sql(&self) -> String {
        match self {
            Pending::Hashtext(name) => format!("SELECT hashtext({})", sql_literal(name)),
            Pending::Tool { .. } => "SELECT current_database(), current_schema()".into(),
        }
    }
}

/// What pglock locks: the id, and what it was named by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockKey {
    /// The lock. While `pending` is set it is not known yet and is only a placeholder.
    pub id: LockId,
    /// The `--key NAME` it came from (the child's `PGLOCK_KEY`).
    pub name: Option<String>,
    /// What it is, for people, when it is not a key name: `rails migrations`, `hashtext('x')`.
    pub what: Option<String>,
    /// The SQL that yields its key, as the argument(s) of `pg_advisory_lock()` (`pglock key
    /// --sql`); empty while a tool's inputs are pending.
    pub sql: String,
    /// Set until the lock connection has answered what the id needs.
    pub pending: Option<Pending>,
}

impl LockKey {
    /// A lock known by its id alone.
    pub fn from_id(id: LockId) -> LockKey {
        LockKey {
            id,
            name: None,
            what: None,
            sql: id.sql_args(),
            pending: None,
        }
    }

    /// A lock known by its id, described for people (a `--limit` queue, a slot).
    pub fn described(id: LockId, what: String) -> LockKey {
        LockKey {
            what: Some(what),
            ..LockKey::from_id(id)
        }
    }

    pub fn from_name(name: &str) -> Result<LockKey> {
        validate_name(name)?;
        Ok(LockKey {
            id: LockId::Big(id_of(name)),
            name: Some(name.to_string()),
            what: None,
            sql: sql_expr(name),
            pending: None,
        })
    }

    /// `--key-id`: a bigint id, or the two-int4 form `A,B`.
    pub fn from_id_text(text: &str) -> Result<LockKey> {
        Ok(LockKey::from_id(LockId::parse(text)?))
    }

    /// `--key-hashtext NAME`: the lock of `pg_advisory_lock(hashtext('NAME'))`.
    pub fn hashtext(name: &str) -> Result<LockKey> {
        validate_text("--key-hashtext", name)?;
        let sql = format!("hashtext({})", sql_literal(name));
        Ok(LockKey {
            id: LockId::Big(0),
            name: None,
            what: Some(format!("hashtext({})", sql_literal(name))),
            sql,
            pending: Some(Pending::Hashtext(name.to_string())),
        })
    }

    /// `--lock-of TOOL [--lock-schema S] [--lock-table T]`.
    pub fn of_tool(tool: Tool, schema: Option<&str>, table: Option<&str>) -> Result<LockKey> {
        let name = tool.name();
        if schema.is_some() && !tool.uses_schema() {
            return Err(Error::usage(format!(
                "--lock-schema: the lock of {name} does not depend on a schema (only golang-migrate's and flyway's do)"
            )));
        }
        if table.is_some() && tool.default_table().is_none() {
            return Err(Error::usage(format!(
                "--lock-table: the lock of {name} does not depend on a table (only golang-migrate's and flyway's do)"
            )));
        }
        if let Some(s) = schema {
            validate_text("--lock-schema", s)?;
        }
        if let Some(t) = table {
            validate_text("--lock-table", t)?;
        }
        let table = table
            .or(tool.default_table())
            .unwrap_or_default()
            .to_string();
        let key = LockKey {
            id: LockId::Big(0),
            name: None,
            what: Some(tool.describe()),
            sql: String::new(),
            pending: None,
        };
        if tool.uses_database() || (tool.uses_schema() && schema.is_none()) {
            return Ok(LockKey {
                pending: Some(Pending::Tool {
                    tool,
                    schema: schema.map(str::to_string),
                    table,
                }),
                ..key
            });
        }
        // Known without the server: a constant, or Flyway with its schema given.
        let inputs = ToolInputs {
            database: String::new(),
            schema: schema.unwrap_or_default().to_string(),
            table,
        };
        Ok(tool_key(key, tool, &inputs))
    }

    /// The key once the lock connection has answered [`Pending::sql`] with `row`.
    pub fn resolved(&self, row: &[Option<String>]) -> Result<LockKey> {
        let get = |i: usize| row.get(i).cloned().flatten();
        match &self.pending {
            None => Ok(self.clone()),
            Some(Pending::Hashtext(_)) => {
                let h: i32 = get(0).and_then(|v| v.parse().ok()).ok_or_else(|| {
                    Error::unavailable("the server did not answer hashtext() with an integer")
                })?;
                Ok(LockKey {
                    id: LockId::Big(i64::from(h)),
                    pending: None,
                    ..self.clone()
                })
            }
            Some(Pending::Tool {
                tool,
                schema,
                table,
            }) => {
                let database = get(0).ok_or_else(|| {
                    Error::unavailable("the server did not answer current_database()")
                })?;
                let schema = match schema.clone().or_else(|| get(1)) {
                    Some(s) => s,
                    None => {
                        return Err(Error::usage(format!(
                            "current_schema() is NULL on this connection (no schema of its search_path exists), and the lock of {} depends on it: give --lock-schema, the schema of its migrations table",
                            tool.name()
                        )))
                    }
                };
                let inputs = ToolInputs {
                    database,
                    schema,
                    table: table.clone(),
                };
                Ok(tool_key(self.clone(), *tool, &inputs))
            }
        }
    }

    /// The name for humans and for `application_name`: the key name, else what the lock is, else
    /// the id.
    pub fn label(&self) -> String {
        match (&self.name, &self.what) {
            (Some(n), _) => n.clone(),
            (None, Some(w)) => w.clone(),
            (None, None) => self.id.to_string(),
        }
    }

    /// `pg_locks.classid` of this lock.
    pub fn classid(&self) -> u32 {
        self.id.classid()
    }

    /// `pg_locks.objid` of this lock.
    pub fn objid(&self) -> u32 {
        self.id.objid()
    }

    /// The pglock variables of the child that name the lock, and the ones to remove: the child sees
    /// one form only (`PGLOCK_KEY` for a key name, else `PGLOCK_KEY_ID` with the id), so a nested
    /// `pglock run` finds the lock its ancestor holds without asking the server again.
    pub fn child_vars(&self) -> ((&'static str, String), Vec<&'static str>) {
        let set = match &self.name {
            Some(n) => ("PGLOCK_KEY", n.clone()),
            None => ("PGLOCK_KEY_ID", self.id.to_string()),
        };
        let remove = FORM_VARS.into_iter().filter(|v| *v != set.0).collect();
        (set, remove)
    }
}

/// The environment variables of the lock forms and their inputs.
pub const FORM_VARS: [&str; 6] = [
    "PGLOCK_KEY",
    "PGLOCK_KEY_ID",
    "PGLOCK_KEY_HASHTEXT",
    "PGLOCK_LOCK_OF",
    "PGLOCK_LOCK_SCHEMA",
    "PGLOCK_LOCK_TABLE",
];

fn tool_key(key: LockKey, tool: Tool, inputs: &ToolInputs) -> LockKey {
    let id = tool.id(inputs);
    LockKey {
        id: LockId::Big(id),
        sql: format!(
            "{id} /* {}: {} */",
            tool.describe(),
            // Block comments nest in PostgreSQL: neither opens nor closes one.
            tool.formula(inputs)
                .replace("/*", "/ *")
                .replace("*/", "* /")
        ),
        pending: None,
        ..key
    }
}

/// The lock of each tool on a database and schema, for `pglock status` to name them (default
/// tables; the two golang-migrate forms both).
pub fn known_tool_locks(database: &str, schema: Option<&str>) -> Vec<(i64, Tool)> {
    Tool::ALL
        .into_iter()
        .filter(|t| schema.is_some() || !t.uses_schema())
        .map(|t| {
            let inputs = ToolInputs {
                database: database.to_string(),
                schema: schema.unwrap_or_default().to_string(),
                table: t.default_table().unwrap_or_default().to_string(),
            };
            (t.id(&inputs), t)
        })
        .collect()
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

/// A text the server reads (a `hashtext` name, a schema or table name): non-empty, no NUL,
/// at most [`MAX_NAME_BYTES`].
fn validate_text(option: &str, s: &str) -> Result<()> {
    if s.is_empty() || s.len() > MAX_NAME_BYTES || s.contains('\0') {
        return Err(Error::usage(format!(
            "{option}: give a non-empty text of at most {MAX_NAME_BYTES} bytes, without NUL"
        )));
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
        "SELECT i FROM generate_series(0, {}) AS i WHERE pg_try_advisory_lock({}) LIMIT 1",
        n.saturating_sub(1),
        hash_sql(&format!("'{id}:' || i"))
    )
}

/// The SQL expression (PostgreSQL 11 or later, no extension) that yields [`id_of`]`(name)`.
pub fn sql_expr(name: &str) -> String {
    hash_sql(&sql_literal(name))
}

/// The SQL expression that yields [`id_of`] of the text that SQL expression `text` yields.
pub fn hash_sql(text: &str) -> String {
    format!("('x' || left(encode(sha256(convert_to({text}, 'UTF8')), 'hex'), 16))::bit(64)::bigint")
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

/// The `pg_locks` condition that selects this lock, in its key space (contract §2).
pub fn locks_filter(key: &LockKey) -> String {
    format!(
        "l.locktype = 'advisory' AND l.classid = {} AND l.objid = {} AND l.objsubid = {} \
         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        key.classid(),
        key.objid(),
        key.id.objsubid()
    )
}

/// The condition on `pg_locks l` that selects lock `id`, whatever its mode.
pub fn lock_match(id: LockId) -> String {
    format!(
        "l.classid = {} AND l.objid = {} AND l.objsubid = {}",
        id.classid(),
        id.objid(),
        id.objsubid()
    )
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

    #[test]
    fn pairs() {
        assert_eq!(LockId::parse("1,2").unwrap(), LockId::Pair(1, 2));
        assert_eq!(
            LockId::parse("-2147483648, 2147483647").unwrap(),
            LockId::Pair(i32::MIN, i32::MAX)
        );
        assert_eq!(LockId::parse("0xffffffff,0").unwrap(), LockId::Pair(-1, 0));
        for bad in ["1,", ",1", "1,2,3", "2147483648,0", "a,b", "1;2"] {
            assert!(LockId::parse(bad).is_err(), "{bad}");
        }
        let p = LockId::Pair(-1, 7);
        assert_eq!((p.classid(), p.objid(), p.objsubid()), (u32::MAX, 7, 2));
        assert_eq!(p.to_string(), "-1,7");
        assert_eq!(LockId::parse(&p.to_string()).unwrap(), p);
        assert_eq!(p.sql_args(), "-1, 7");
        assert_eq!(p.json(), "\"-1,7\"");
        assert_eq!(LockId::Big(-1).objsubid(), 1);
    }

    // The checksums against published vectors: zlib/IEEE "123456789" = 0xcbf43926, FNV-1 "a" =
    // 0x050c5d7e and "foobar" = 0x31f0b262, Java "hello".hashCode() = 99162322.
    #[test]
    fn checksums() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(fnv1_32(b"a"), 0x050c_5d7e);
        assert_eq!(fnv1_32(b"foobar"), 0x31f0_b262);
        assert_eq!(java_hash("hello"), 99_162_322);
        assert_eq!(java_hash(""), 0);
    }

    // golang-migrate's own test vectors (`database/util_test.go`): the database name comes last.
    #[test]
    fn golang_migrate_vectors() {
        let gm = |names: &[&str]| {
            i64::from(crc32(names.join("\0").as_bytes()).wrapping_mul(GOLANG_MIGRATE_SALT))
        };
        assert_eq!(gm(&["database_name"]), 1_764_327_054);
        assert_eq!(gm(&["schema_name_1", "database_name"]), 2_453_313_553);
        assert_eq!(
            gm(&["schema_name_1", "schema_name_2", "database_name"]),
            3_743_845_847
        );
    }

    // The values of `mydb`, schema `public`, default tables.
    #[test]
    fn tool_ids_on_mydb() {
        let i = |t: Tool| ToolInputs {
            database: "mydb".into(),
            schema: "public".into(),
            table: t.default_table().unwrap_or_default().into(),
        };
        let want = [
            (Tool::GolangMigrate, 616_192_132),
            (Tool::GolangMigrateWithInstance, 2_103_762_914),
            (Tool::Sqlx, 293_176_876_009_260_204),
            (Tool::Rails, 586_353_752_304_064_290),
            (Tool::Prisma, 72_707_369),
            (Tool::Flyway, 77_433_833_903_597),
            (Tool::Atlas, 2_686_470_616),
            (Tool::Goose, 4_097_083_626),
            (Tool::GooseBefore326, 5_887_940_537_704_921_958),
            (Tool::Sqitch, 75_474_063),
            (Tool::GraphileMigrate, 4_727_445_306_447_283),
            (Tool::NodePgMigrate, 7_241_865_325_823_964),
        ];
        for (t, id) in want {
            assert_eq!(t.id(&i(t)), id, "{}", t.name());
        }
        let myschema = ToolInputs {
            schema: "myschema".into(),
            ..i(Tool::Flyway)
        };
        assert_eq!(Tool::Flyway.id(&myschema), 77_431_447_924_489);
    }

    #[test]
    fn forms() {
        let h = LockKey::hashtext("cron:x").unwrap();
        assert_eq!(h.sql, "hashtext('cron:x')");
        assert_eq!(
            h.pending.as_ref().unwrap().sql(),
            "SELECT hashtext('cron:x')"
        );
        let r = h.resolved(&[Some("-1323412724".into())]).unwrap();
        assert_eq!(r.id, LockId::Big(-1_323_412_724));
        assert!(r.pending.is_none());
        assert_eq!(r.label(), "hashtext('cron:x')");

        let p = LockKey::of_tool(Tool::Prisma, None, None).unwrap();
        assert!(p.pending.is_none());
        assert_eq!(p.id, LockId::Big(72_707_369));
        assert_eq!(p.label(), "prisma migrations");
        let f = LockKey::of_tool(Tool::Flyway, Some("public"), None).unwrap();
        assert_eq!(f.id, LockId::Big(77_433_833_903_597));
        let r = LockKey::of_tool(Tool::Rails, None, None).unwrap();
        let r = r
            .resolved(&[Some("mydb".into()), Some("public".into())])
            .unwrap();
        assert_eq!(r.id, LockId::Big(586_353_752_304_064_290));
        let g = LockKey::of_tool(Tool::GolangMigrate, None, Some("t")).unwrap();
        assert!(g.resolved(&[Some("db".into()), None]).is_err());
        assert!(LockKey::of_tool(Tool::Rails, Some("s"), None).is_err());
        assert!(LockKey::of_tool(Tool::Sqlx, None, Some("t")).is_err());
        assert!(LockKey::hashtext("").is_err());

        let ((k, v), remove) = r.child_vars();
        assert_eq!((k, v.as_str()), ("PGLOCK_KEY_ID", "586353752304064290"));
        assert!(remove.contains(&"PGLOCK_LOCK_OF") && !remove.contains(&"PGLOCK_KEY_ID"));
    }
}

//! `pglock status` (contract §9): every advisory lock on the database, held or awaited, with who
//! holds or awaits it; key names for pglock's own sessions (application_name `pglock:NAME` whose
//! NAME maps to the lock id), and the migration tools' locks by name (contract §2): a lock whose id
//! is a known tool's lock on this database and schema, with the tool's default table, shows as
//! `rails migrations`.

use crate::cli::StatusArgs;
use crate::cmd::request::lock_key;
use crate::error::Result;
use crate::lock::key::{self, LockId, LockKey, Tool};
use crate::log::{json_str, printable};
use crate::pg::{self, Conn};
use crate::signals::Signals;
use clap::ArgMatches;
use std::fmt::Write as _;

#[derive(Debug, Clone)]
pub struct Entry {
    /// The 64-bit id (objsubid 1), or `key1,key2` for the two-int4 form (objsubid 2).
    pub id: String,
    pub key: Option<String>,
    /// The migration tool whose lock this is (by its id on this database).
    pub tool: Option<Tool>,
    pub mode: String,
    pub granted: bool,
    pub pid: String,
    pub user: Option<String>,
    pub client: Option<String>,
    pub application: Option<String>,
    pub age_s: Option<i64>,
    /// What this lock is to the lock it belongs to: itself, a `--limit` slot, or the queue.
    pub part: Part,
    /// The session is a server connection of the pooler that status itself came through: its
    /// client address and age are the pooler's, not those of the pooler's client.
    pub via_pooler: bool,
}

/// The pieces of a lock that status names: a `--limit` run holds a slot and, while it waits,
/// its place in the queue lock (which makes it a waiter, not a holder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Lock,
    Slot(u32),
    Queue,
}

impl Entry {
    /// Whether this entry holds the lock: granted, and not a `--limit` waiter's queue place.
    pub fn held(&self) -> bool {
        self.granted && self.part != Part::Queue
    }

    fn state(&self) -> &'static str {
        if self.held() {
            "held"
        } else {
            "waiting"
        }
    }
}

fn sql(server_major: u32) -> String {
    // pg_locks.waitstart (when a wait began) exists from PostgreSQL 14.
    let since = if server_major >= 14 {
        "coalesce(l.waitstart, a.backend_start)"
    } else {
        "a.backend_start"
    };
    format!(
        "SELECT l.classid::bigint, l.objid::bigint, l.objsubid, l.mode, l.granted, l.pid, a.usename, \
         host(a.client_addr), a.application_name, \
         floor(extract(epoch FROM now() - {since}))::bigint, current_database(), current_schema(), \
         a.client_port, pg_backend_pid(), host(inet_client_addr()) \
         FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' \
         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         ORDER BY l.classid, l.objid, l.objsubid, l.granted DESC, 10 DESC NULLS LAST, l.pid"
    )
}

/// One row of `sql`. `pooler`: the address the server sees for the pooler status came through.
fn entry(r: &[Option<String>], tools: &[(i64, Tool)], pooler: Option<&str>) -> Entry {
    let get = |i: usize| r.get(i).cloned().flatten();
    let num = |i: usize| get(i).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    let (hi, lo, sub) = (num(0), num(1), num(2));
    let id = if sub == 1 {
        ((hi << 32) | lo).to_string()
    } else {
        format!("{},{}", hi as i32, lo as i32)
    };
    let application = get(8).filter(|a| !a.is_empty());
    // A pglock session names its key in application_name; trust it only when it maps to the id.
    let named = application
        .as_deref()
        .and_then(|a| a.strip_prefix("pglock:"))
        .filter(|name| sub == 1 && key::validate_name(name).is_ok())
        .and_then(|name| name_of(name, &id));
    let (key, part) = match named {
        Some((k, part)) => (Some(k), part),
        None => (None, Part::Lock),
    };
    let tool = match sub {
        1 => tools
            .iter()
            .find(|(t, _)| *t == (hi << 32) | lo)
            .map(|(_, tool)| *tool),
        _ => None,
    };
    Entry {
        key: key.or_else(|| tool.map(Tool::describe)),
        id,
        tool,
        mode: match get(3).as_deref() {
            Some("ExclusiveLock") => "exclusive".into(),
            Some("ShareLock") => "shared".into(),
            other => other.unwrap_or_default().to_string(),
        },
        granted: get(4).as_deref() == Some("t"),
        pid: get(5).unwrap_or_default(),
        user: get(6),
        client: crate::lock::client_label(get(7), get(12)),
        application,
        age_s: get(9).and_then(|v| v.parse().ok()),
        part,
        via_pooler: pooler.is_some() && get(7).as_deref() == pooler,
    }
}

/// Where status itself came through a pooler (the statement ran on a backend other than the one
/// the connection's cancel key names): the pooler's address as the server sees it.
fn pooler_address(key_pid: i32, rows: &crate::pg::Rows) -> Option<String> {
    let r = rows.first()?;
    let pid = r.get(13).cloned().flatten()?;
    (pid != key_pid.to_string())
        .then(|| r.get(14).cloned().flatten())
        .flatten()
}

/// The name of lock `id` taken by a pglock run for key `name`: the key itself, one of its
/// `--limit` slots, or the queue of its `--limit` waiters.
fn name_of(name: &str, id: &str) -> Option<(String, Part)> {
    let part = part_of(key::id_of(name), id)?;
    let label = match part {
        Part::Lock => name.to_string(),
        Part::Queue => format!("{name} (queue)"),
        Part::Slot(i) => format!("{name} [slot {i}]"),
    };
    Some((label, part))
}

/// What lock `id` is to bigint lock `base`: itself, one of its `--limit` slots or its queue.
fn part_of(base: i64, id: &str) -> Option<Part> {
    if base.to_string() == id {
        return Some(Part::Lock);
    }
    if key::queue_id(base).to_string() == id {
        return Some(Part::Queue);
    }
    (0..SLOTS_NAMED)
        .find(|i| key::slot_id(base, *i).to_string() == id)
        .map(Part::Slot)
}

/// Slots of a `--limit` semaphore that status recognises by name (and `--key` includes).
const SLOTS_NAMED: u32 = 1024;

/// The ids that belong to `k`: its own, and for a bigint id its `--limit` queue and first slots.
fn ids_of(k: &LockKey) -> std::collections::HashSet<String> {
    let mut ids = std::collections::HashSet::new();
    ids.insert(k.id.to_string());
    if let LockId::Big(id) = k.id {
        ids.extend((0..SLOTS_NAMED).map(|i| key::slot_id(id, i).to_string()));
        ids.insert(key::queue_id(id).to_string());
    }
    ids
}

fn age(s: Option<i64>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s < 120 => format!("{s}s"),
        Some(s) if s < 7200 => format!("{}m", s / 60),
        Some(s) if s < 172_800 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        Some(s) => format!("{}d", s / 86400),
    }
}

pub fn table(entries: &[Entry]) -> String {
    let header = [
        "LOCK ID",
        "KEY",
        "MODE",
        "STATE",
        "PID",
        "USER",
        "CLIENT",
        "APPLICATION",
        "AGE",
    ];
    // Every cell but the state and the age is the server's text.
    let cell = |v: &Option<String>| v.as_deref().map_or_else(|| "-".into(), printable);
    let rows: Vec<[String; 9]> = entries
        .iter()
        .map(|e| {
            [
                printable(&e.id),
                cell(&e.key),
                printable(&e.mode),
                e.state().into(),
                printable(&e.pid),
                cell(&e.user),
                if e.via_pooler {
                    format!("{} (pooler?)", cell(&e.client))
                } else {
                    cell(&e.client)
                },
                cell(&e.application),
                age(e.age_s),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(widths.iter()).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header.map(String::from));
    for r in &rows {
        line(r);
    }
    if entries.iter().any(|e| e.via_pooler) {
        out.push_str("(pooler?): the address of the pooler this status came through: likely one of its server connections, whose CLIENT and AGE are the pooler's, not those of its client\n");
    }
    out
}

pub fn json(entries: &[Entry]) -> String {
    let mut s = String::from("[");
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        // The bigint form as a string of digits (as in the logs: contract §8); the two-int4
        // form as key1/key2 (32-bit numbers).
        match e.id.split_once(',') {
            None => {
                s.push_str("\n  {\"lock_id\":");
                json_str(&mut s, &printable(&e.id));
            }
            Some((k1, k2)) => {
                let _ = write!(s, "\n  {{\"lock_id\":null,\"key1\":{k1},\"key2\":{k2}");
            }
        }
        // Server text, printable as in the table (a consumer may print it raw: `jq -r`).
        let opt = |s: &mut String, k: &str, v: &Option<String>| {
            let _ = write!(s, ",\"{k}\":");
            match v {
                Some(v) => json_str(s, &printable(v)),
                None => s.push_str("null"),
            }
        };
        opt(&mut s, "key", &e.key);
        opt(&mut s, "mode", &Some(e.mode.clone()));
        let _ = write!(
            s,
            ",\"granted\":{},\"state\":\"{}\",\"pid\":{}",
            e.held(),
            e.state(),
            e.pid.parse::<i64>().unwrap_or(0)
        );
        opt(&mut s, "user", &e.user);
        opt(&mut s, "client", &e.client);
        let _ = write!(s, ",\"via_pooler\":{}", e.via_pooler);
        opt(&mut s, "application", &e.application);
        opt(&mut s, "lock_of", &e.tool.map(|t| t.name().to_string()));
        match e.age_s {
            Some(a) => {
                let _ = write!(s, ",\"age_s\":{a}}}");
            }
            None => s.push_str(",\"age_s\":null}"),
        }
    }
    s.push_str(if entries.is_empty() { "]\n" } else { "\n]\n" });
    s
}

pub fn run(args: StatusArgs, m: &ArgMatches) -> Result<i32> {
    let filter = lock_key(&args.lock, m)?;
    let signals = Signals::install()?;
    let mut conn = Conn::connect_for("pglock status", args.conn.database_url, &signals)?;
    conn.allow_large_results();
    let major = conn.server_major();
    // A filter whose id the server computes asks this connection first.
    let filter = match filter {
        Some(k) if k.pending.is_some() => match crate::lock::resolve(&mut conn, &k, &signals) {
            Ok(k) => Some(k),
            Err(e) => {
                conn.close();
                return Err(e);
            }
        },
        other => other,
    };
    let rows = pg::query(
        &mut conn,
        &sql(major.unwrap_or(0)),
        &signals,
        "while reading the locks",
    );
    let key_pid = conn.backend_pid();
    let wanted = filter.as_ref().map(ids_of);
    let rows = rows?;
    let pooler = pooler_address(key_pid, &rows);
    // The tools' locks on this database and (for the tools whose lock depends on it) schema, as
    // the status connection sees them.
    let tools = rows.first().map_or_else(Vec::new, |r| {
        let get = |i: usize| r.get(i).cloned().flatten();
        key::known_tool_locks(&get(10).unwrap_or_default(), get(11).as_deref())
    });
    let entries: Vec<Entry> = rows
        .iter()
        .map(|r| entry(r, &tools, pooler.as_deref()))
        .filter(|e| wanted.as_ref().is_none_or(|w| w.contains(&e.id)))
        .map(|e| with_part(e, filter.as_ref()))
        .collect();
    let ledger = match &args.ledger {
        Some(t) => last_successes(&mut conn, t, &entries, &signals),
        None => Ok(String::new()),
    };
    conn.close();
    let ledger = ledger?;
    let (out, code) = render(&entries, filter.as_ref(), args.json);
    print!("{out}{ledger}");
    Ok(code)
}

/// With a lock form, an entry's part of that lock, also where no pglock application name says
/// it (a `--limit` run under its own application_name).
fn with_part(mut e: Entry, filter: Option<&LockKey>) -> Entry {
    if let Some(LockId::Big(base)) = filter.map(|k| k.id) {
        e.part = part_of(base, &e.id).unwrap_or(e.part);
    }
    e
}

/// The output and exit code. With a lock form, as `grep`: 0 when the lock is held, 1 when it is
/// not, which the text says in words. Without one, 0, and words for an empty list.
fn render(entries: &[Entry], filter: Option<&LockKey>, as_json: bool) -> (String, i32) {
    let held = entries.iter().any(Entry::held);
    let code = match filter {
        Some(_) if !held => 1,
        _ => 0,
    };
    if as_json {
        return (json(entries), code);
    }
    let mut out = if entries.is_empty() {
        String::new()
    } else {
        table(entries)
    };
    match filter {
        Some(k) if !held => {
            let waiting = entries.len();
            let _ = write!(
                out,
                "lock \"{}\" (id {}) is not held",
                printable(&k.label()),
                k.id
            );
            out.push_str(&match waiting {
                0 => "\n".into(),
                n => format!("; {n} waiting\n"),
            });
        }
        None if entries.is_empty() => {
            out.push_str("no advisory lock is held or awaited on this database\n")
        }
        _ => {}
    }
    (out, code)
}

/// `--ledger TABLE` (contract §12): after the table, each listed lock's last success in the
/// run ledger (one probe of its history index per lock). Text output only.
fn last_successes(
    conn: &mut Conn,
    table: &str,
    entries: &[Entry],
    signals: &Signals,
) -> Result<String> {
    let ledger = crate::lock::ledger::Ledger::parse(table)?;
    let mut ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut out = format!("\nLAST SUCCESS (run ledger {})\n", ledger.label());
    for id in ids {
        let sql = format!(
            "SELECT run_id, coalesce(token, '-'), host, to_char(ended_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
             FROM {} WHERE lock_id = {} AND done ORDER BY started_at DESC LIMIT 1",
            ledger.sql(),
            key::sql_literal(id)
        );
        let rows = pg::query(conn, &sql, signals, "while reading the ledger")?;
        let row = rows.first().map(|r| {
            r.iter()
                .map(|v| v.as_deref().unwrap_or("-").replace(char::is_control, " "))
                .collect::<Vec<_>>()
                .join("  ")
        });
        let _ = writeln!(out, "{id}  {}", row.as_deref().unwrap_or("none"));
    }
    Ok(out)
}

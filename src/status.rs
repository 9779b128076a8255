//! `pglock status` (contract §9): every advisory lock on the database, held or awaited, with who
//! holds or awaits it; key names for pglock's own sessions (application_name `pglock:NAME` whose
//! NAME maps to the lock id), and the migration tools' locks by name (contract §2): a lock whose id
//! is a known tool's lock on this database and schema, with the tool's default table, shows as
//! `rails migrations`.

use crate::cli::StatusArgs;
use crate::error::Result;
use crate::key::{self, LockId, LockKey, Tool};
use crate::log::json_str;
use crate::pg::Conn;
use crate::signals::Signals;
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
}

fn sql(server_version: u32) -> String {
    // pg_locks.waitstart (when a wait began) exists from PostgreSQL 14.
    let since = if server_version >= 140_000 {
        "coalesce(l.waitstart, a.backend_start)"
    } else {
        "a.backend_start"
    };
    format!(
        "SELECT l.classid::bigint, l.objid::bigint, l.objsubid, l.mode, l.granted, l.pid, a.usename, \
         host(a.client_addr), a.application_name, \
         floor(extract(epoch FROM now() - {since}))::bigint, current_database(), current_schema(), \
         a.client_port \
         FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' \
         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         ORDER BY l.classid, l.objid, l.objsubid, l.granted DESC, 10 DESC NULLS LAST, l.pid"
    )
}

fn entry(r: &[Option<String>], tools: &[(i64, Tool)]) -> Entry {
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
    let key = application
        .as_deref()
        .and_then(|a| a.strip_prefix("pglock:"))
        .filter(|name| sub == 1 && key::validate_name(name).is_ok())
        .and_then(|name| name_of(name, &id));
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
    }
}

/// The name of lock `id` taken by a pglock run for key `name`: the key itself, one of its
/// `--limit` slots, or the queue of its `--limit` waiters.
fn name_of(name: &str, id: &str) -> Option<String> {
    let base = key::id_of(name);
    if base.to_string() == id {
        return Some(name.to_string());
    }
    if key::queue_id(base).to_string() == id {
        return Some(format!("{name} (queue)"));
    }
    (0..SLOTS_NAMED)
        .find(|i| key::slot_id(base, *i).to_string() == id)
        .map(|i| format!("{name} [slot {i}]"))
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
    let rows: Vec<[String; 9]> = entries
        .iter()
        .map(|e| {
            [
                e.id.clone(),
                e.key.clone().unwrap_or_else(|| "-".into()),
                e.mode.clone(),
                if e.granted {
                    "held".into()
                } else {
                    "waiting".into()
                },
                e.pid.clone(),
                e.user.clone().unwrap_or_else(|| "-".into()),
                e.client.clone().unwrap_or_else(|| "-".into()),
                e.application.clone().unwrap_or_else(|| "-".into()),
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
    out
}

pub fn json(entries: &[Entry]) -> String {
    let mut s = String::from("[");
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        // The bigint form as a number (as in the logs); the two-int4 form as key1/key2.
        match e.id.split_once(',') {
            None => {
                let _ = write!(s, "\n  {{\"lock_id\":{}", e.id);
            }
            Some((k1, k2)) => {
                let _ = write!(s, "\n  {{\"lock_id\":null,\"key1\":{k1},\"key2\":{k2}");
            }
        }
        let opt = |s: &mut String, k: &str, v: &Option<String>| {
            let _ = write!(s, ",\"{k}\":");
            match v {
                Some(v) => json_str(s, v),
                None => s.push_str("null"),
            }
        };
        opt(&mut s, "key", &e.key);
        opt(&mut s, "mode", &Some(e.mode.clone()));
        let _ = write!(
            s,
            ",\"granted\":{},\"pid\":{}",
            e.granted,
            e.pid.parse::<i64>().unwrap_or(0)
        );
        opt(&mut s, "user", &e.user);
        opt(&mut s, "client", &e.client);
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

pub fn run(args: StatusArgs) -> Result<i32> {
    let filter = if let Some(n) = &args.key {
        Some(LockKey::from_name(n)?)
    } else if let Some(i) = &args.key_id {
        Some(LockKey::from_id_text(i)?)
    } else if let Some(n) = &args.key_hashtext {
        Some(LockKey::hashtext(n)?)
    } else if let Some(t) = &args.lock_of {
        Some(LockKey::of_tool(
            Tool::from_name(t)?,
            args.lock_schema.as_deref(),
            args.lock_table.as_deref(),
        )?)
    } else {
        None
    };
    let signals = Signals::install()?;
    let mut conn = Conn::connect_for("pglock status", args.database_url, &signals)?;
    conn.allow_large_results();
    let version = conn.server_params.get("server_version").and_then(|v| {
        let mut parts = v.split(|c: char| !c.is_ascii_digit());
        let major: u32 = parts.next()?.parse().ok()?;
        Some(major * 10_000)
    });
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
    let rows = crate::lock::query(&mut conn, &sql(version.unwrap_or(0)), &signals);
    let wanted = filter.as_ref().map(ids_of);
    let rows = rows?;
    // The tools' locks on this database and (for the tools whose lock depends on it) schema, as
    // the status connection sees them.
    let tools = rows.first().map_or_else(Vec::new, |r| {
        let get = |i: usize| r.get(i).cloned().flatten();
        key::known_tool_locks(&get(10).unwrap_or_default(), get(11).as_deref())
    });
    let entries: Vec<Entry> = rows
        .iter()
        .map(|r| entry(r, &tools))
        .filter(|e| wanted.as_ref().is_none_or(|w| w.contains(&e.id)))
        .collect();
    let ledger = match &args.ledger {
        Some(t) => last_successes(&mut conn, t, &entries, &signals),
        None => Ok(String::new()),
    };
    conn.close();
    let ledger = ledger?;
    print!(
        "{}",
        if args.json {
            json(&entries)
        } else {
            table(&entries)
        }
    );
    print!("{ledger}");
    Ok(0)
}

/// `--ledger TABLE` (contract §12): after the table, each listed lock's last success in the
/// run ledger (one probe of its history index per lock). Text output only.
fn last_successes(
    conn: &mut Conn,
    table: &str,
    entries: &[Entry],
    signals: &Signals,
) -> Result<String> {
    let ledger = crate::ledger::Ledger::parse(table)?;
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
        let rows = crate::lock::query(conn, &sql, signals)?;
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

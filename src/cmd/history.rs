//! `pglock history` (contract §12): the run ledger's rows of one lock, newest first, as a table
//! or JSON (ids as strings, contract §8).

use crate::cli::HistoryArgs;
use crate::cmd::request::lock_key;
use crate::error::{Error, Result};
use crate::lock::key::{sql_literal, LockKey};
use crate::lock::ledger::{Ledger, DEFAULT_TABLE};
use crate::log::json_str;
use crate::pg::{self, Conn, Rows};
use crate::signals::Signals;
use clap::ArgMatches;
use std::fmt::Write as _;

/// The columns, in the order of the query.
const COLUMNS: [&str; 10] = [
    "started_at",
    "ended_at",
    "run_id",
    "token",
    "host",
    "pid",
    "exit_code",
    "done",
    "pglock_version",
    "lock_id",
];

fn sql(ledger: &Ledger, lock: &LockKey) -> String {
    let ts =
        |c: &str| format!("to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')");
    format!(
        "SELECT {}, {}, run_id, token, host, pid, exit_code, done, pglock_version, lock_id FROM {} \
         WHERE lock_id = {} ORDER BY started_at DESC, run_id",
        ts("started_at"),
        ts("ended_at"),
        ledger.sql(),
        sql_literal(&lock.id.to_string())
    )
}

pub fn run(args: HistoryArgs, m: &ArgMatches) -> Result<i32> {
    let lock = lock_key(&args.lock, m)?.ok_or_else(|| {
        Error::usage(
            "give the lock: --key NAME, --key-id ID, --key-hashtext NAME or --lock-of TOOL",
        )
    })?;
    let ledger = Ledger::parse(args.ledger.as_deref().unwrap_or(DEFAULT_TABLE))?;
    let signals = Signals::install()?;
    let mut conn = Conn::connect_for("pglock history", args.conn.database_url.clone(), &signals)?;
    conn.allow_large_results();
    let rows = read(&mut conn, &lock, &ledger, &signals);
    conn.close();
    let rows = rows?;
    print!("{}", if args.json { json(&rows) } else { table(&rows) });
    Ok(0)
}

fn read(conn: &mut Conn, lock: &LockKey, ledger: &Ledger, signals: &Signals) -> Result<Rows> {
    let lock = crate::lock::resolve(conn, lock, signals)?;
    pg::query(
        conn,
        &sql(ledger, &lock),
        signals,
        "while reading the ledger",
    )
    .map_err(|e| match e.sqlstate.as_deref() {
        Some("42P01") => Error::unavailable(format!(
            "there is no run ledger {} here (runs with --once or --ledger create it)",
            ledger.label()
        )),
        _ => e.context_msg(&format!("cannot read the run ledger {}", ledger.label())),
    })
}

/// Server text for a table cell: control characters replaced (contract §8).
fn cell(v: &Option<String>) -> String {
    match v {
        Some(s) => s
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect(),
        None => "-".into(),
    }
}

fn table(rows: &Rows) -> String {
    let header = [
        "STARTED", "ENDED", "RUN ID", "TOKEN", "HOST", "PID", "EXIT", "DONE",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().take(header.len()).map(cell).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &cells {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut l = String::new();
        for (c, w) in cells.iter().zip(&widths) {
            let _ = write!(l, "{c:<w$}  ");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header.map(String::from));
    for r in &cells {
        line(r);
    }
    out
}

fn json(rows: &Rows) -> String {
    let mut s = String::from("[");
    for (i, r) in rows.iter().enumerate() {
        s.push_str(if i > 0 { ",\n  {" } else { "\n  {" });
        for (j, (name, v)) in COLUMNS.iter().zip(r).enumerate() {
            if j > 0 {
                s.push(',');
            }
            let _ = write!(s, "\"{name}\":");
            match (*name, v.as_deref()) {
                (_, None) => s.push_str("null"),
                ("pid" | "exit_code", Some(n)) if n.parse::<i64>().is_ok() => s.push_str(n),
                ("done", Some(b)) => s.push_str(if b == "t" { "true" } else { "false" }),
                (_, Some(text)) => json_str(&mut s, text),
            }
        }
        s.push('}');
    }
    s.push_str(if rows.is_empty() { "]\n" } else { "\n]\n" });
    s
}

//! `pglock key` (contract §1, §2): prints a lock's id, or with `--sql` the SQL that yields its key.
//! Forms that need the server's answer (`--key-hashtext`, a tool's lock that depends on the
//! database or schema) connect, as `pglock run` does, and ask; the others never connect.

use crate::cli::KeyArgs;
use crate::cmd::request::lock_key;
use crate::error::{Error, Result};
use crate::lock::key::{self, LockId, LockKey};
use crate::lock::semaphore::MAX_LIMIT;
use crate::pg::Conn;
use crate::signals::Signals;
use clap::ArgMatches;

pub fn run(args: KeyArgs, m: &ArgMatches) -> Result<i32> {
    if args.ledger_sql {
        let table = args
            .ledger
            .as_deref()
            .unwrap_or(crate::lock::ledger::DEFAULT_TABLE);
        println!(
            "{}",
            crate::lock::ledger::Ledger::parse(table)?.create_sql()
        );
        return Ok(0);
    }
    let form = lock_key(&args.lock, m)?;
    let mut lock = match (&args.name, form) {
        (Some(name), None) => LockKey::from_name(name)?,
        (None, Some(lock)) => lock,
        (Some(_), Some(_)) => {
            return Err(Error::usage(
                "give one lock, not 2: a key NAME and a lock option exclude each other",
            ))
        }
        (None, None) => {
            return Err(Error::usage(
                "give a key NAME, --key-id ID, --key-hashtext NAME or --lock-of TOOL",
            ))
        }
    };
    if let Some(n) = args.limit {
        if !(1..=MAX_LIMIT).contains(&n) {
            return Err(Error::usage(format!(
                "--limit {n}: give a number of slots from 1 to {MAX_LIMIT}"
            )));
        }
        let id = match (lock.name.is_some() || lock.what.is_none(), lock.id) {
            (true, LockId::Big(id)) => id,
            _ => {
                return Err(Error::usage(
                    "--limit works with a key NAME and a bigint --key-id only",
                ))
            }
        };
        if args.sql {
            println!("{}", key::slot_sql(id, n));
        } else {
            for i in 0..n {
                println!("{i} {}", key::slot_id(id, i));
            }
        }
        return Ok(0);
    }
    // hashtext('NAME') is its own SQL: only its value needs the server.
    let need_server = lock.pending.is_some() && (!args.sql || lock.sql.is_empty());
    if need_server {
        lock = ask_server(&lock, args.conn.database_url)?;
    }
    if args.fence_sql {
        println!("{}", crate::lock::fence::shape(lock.id));
    } else if args.sql {
        println!("{}", lock.sql);
    } else {
        println!("{}", lock.id);
    }
    Ok(0)
}

/// Connects as `pglock run` does and reads what the id needs.
fn ask_server(lock: &LockKey, url: Option<String>) -> Result<LockKey> {
    let signals = Signals::install()?;
    let mut conn = Conn::connect_for("pglock key", url, &signals)?;
    let resolved = crate::lock::resolve(&mut conn, lock, &signals);
    conn.close();
    resolved
}

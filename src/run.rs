//! `pglock run`: connect, take the lock, run the child, release, in that order, with the lock
//! released and the connection closed before pglock exits on every path (contract §7).

use crate::child::{self, End, Watch};
use crate::conninfo::ConnParams;
use crate::error::{Error, Kind, Result};
use crate::lock::{self, Acquire};
use crate::log::{self, Mark, V};
use crate::pg::{Conn, Startup};
use crate::request::RunRequest;
use crate::signals::Signals;

/// The session settings sent in the startup packet: server or role defaults cannot end the lock
/// session (contract §3).
fn session_settings() -> Vec<(&'static str, String)> {
    [
        "statement_timeout",
        "lock_timeout",
        "idle_session_timeout",
        "idle_in_transaction_session_timeout",
    ]
    .into_iter()
    .map(|k| (k, "0".to_string()))
    .collect()
}

/// `pglock:<NAME>`, cut to PostgreSQL's 63 bytes at a character boundary.
pub fn application_name(label: &str) -> String {
    let mut s = format!("pglock:{label}");
    let mut end = s.len().min(63);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s
}

fn connect(params: &ConnParams, startup: &Startup, signals: &Signals) -> Result<Conn> {
    let conn = match Conn::connect(params, startup, signals) {
        // Servers before 14 do not know idle_session_timeout: connect again without it.
        Err(e)
            if e.sqlstate.as_deref() == Some("42704") && e.msg.contains("idle_session_timeout") =>
        {
            let older = Startup {
                application_name: startup.application_name,
                settings: startup
                    .settings
                    .iter()
                    .filter(|(k, _)| *k != "idle_session_timeout")
                    .cloned()
                    .collect(),
            };
            Conn::connect(params, &older, signals)?
        }
        other => other?,
    };
    if conn.server_params.get("in_hot_standby").map(String::as_str) == Some("on") {
        let target = conn.target().describe();
        conn.close();
        return Err(Error::unavailable(format!(
            "{target} is a hot standby: an advisory lock there excludes nobody on the primary; connect to the primary"
        )));
    }
    log::debug(
        "connected",
        &format!(
            "connected to {} as {} (backend pid {})",
            conn.target().describe(),
            conn.user(),
            conn.backend_pid
        ),
    );
    Ok(conn)
}

pub fn run(req: RunRequest, run_id: &str) -> Result<i32> {
    let signals = Signals::install()?;
    let params = ConnParams::resolve(req.database_url.as_deref())?;
    let label = req.key.label();
    let app = params
        .application_name
        .clone()
        .unwrap_or_else(|| application_name(&label));
    let startup = Startup {
        application_name: &app,
        settings: session_settings(),
    };
    let mut conn = connect(&params, &startup, &signals)?;

    let acquire = Acquire {
        key: &req.key,
        mode: req.mode,
        wait: req.wait,
        conflict_exit_code: req.conflict_exit_code,
        params: &params,
        startup: &startup,
    };
    let locked_by = match lock::acquire(&mut conn, &acquire, &signals) {
        Ok(pid) => pid,
        Err(e) => {
            conn.close();
            return Err(e);
        }
    };
    log::mark(Mark::Acquired);
    // The backend that ran the lock statement is the one we connected to, unless something in
    // between (a pooler) hands statements to other backends: then confirm in pg_locks.
    if locked_by != conn.backend_pid && !lock::owns(&mut conn, &req.key, req.mode, &signals)? {
        conn.close();
        return Err(Error::unavailable(
            "the lock was taken on a backend that no longer serves this connection (a transaction pooler such as PgBouncer?); session locks leak there: connect directly or use a session-pooled port",
        ));
    }
    let (waited_ms, _) = log::timings();
    log::info(
        "acquired",
        &format!(
            "acquired lock \"{label}\" (id {}, {}) after {waited_ms} ms",
            req.key.id,
            req.mode.as_str()
        ),
        &[
            ("waited_ms", V::I(waited_ms)),
            ("mode", V::S(req.mode.as_str())),
        ],
    );

    let (set, remove) = if req.key.name.is_some() {
        (("PGLOCK_KEY", label.clone()), "PGLOCK_KEY_ID")
    } else {
        (("PGLOCK_KEY_ID", req.key.id.to_string()), "PGLOCK_KEY")
    };
    let env = [
        set,
        ("PGLOCK_LOCK_ID", req.key.id.to_string()),
        ("PGLOCK_RUN_ID", run_id.to_string()),
    ];
    let child = match child::spawn(&req.command, &env, &[remove]) {
        Ok(pid) => pid,
        Err(e) => {
            release(conn, &req, &signals);
            return Err(e);
        }
    };
    log::mark(Mark::ChildStart);
    log::debug(
        "child",
        &format!(
            "started {} as pid {child}",
            req.command[0].to_string_lossy()
        ),
    );

    let end = child::supervise(
        child,
        Watch {
            conn: &mut conn,
            check_sql: lock::ownership_sql(&req.key, req.mode),
            heartbeat: req.heartbeat,
            kill_after: req.kill_after,
        },
        &signals,
    );
    log::mark(Mark::ChildEnd);
    match end {
        End::Exited(code) => {
            if release(conn, &req, &signals) {
                Ok(code)
            } else {
                Err(Error::new(
                    Kind::LockLost,
                    format!("the lock was gone when the command ended (status {code}); it may have run unprotected for up to one heartbeat"),
                ))
            }
        }
        End::LockLost(why) => {
            conn.close();
            Err(Error::new(Kind::LockLost, format!("lock \"{label}\" was lost while the command ran ({why}); the command was stopped")))
        }
    }
}

/// Unlocks and closes. `false` when the server did not confirm that the lock was still held.
fn release(mut conn: Conn, req: &RunRequest, signals: &Signals) -> bool {
    let held = match lock::release(&mut conn, &req.key, req.mode, signals) {
        Ok(held) => held,
        Err(e) => {
            log::debug("release", &format!("unlock failed: {e}"));
            false
        }
    };
    conn.close();
    held
}

//! `pglock run`: connect, take the lock, run the child, release, in that order, with the lock
//! released and the connection closed before pglock exits on every path (contract §7).

use crate::cmd::request::RunRequest;
use crate::error::{Error, Kind, Result};
use crate::lock::fence;
use crate::lock::key::LockKey;
use crate::lock::ledger::{self, Book, Found};
use crate::lock::nesting::{self, Held};
use crate::lock::semaphore;
use crate::lock::{self, Acquire};
use crate::lock::{Mode, Scope, Wait};
use crate::log::{self, Mark, V};
use crate::pg::conninfo::ConnParams;
use crate::pg::{Conn, Startup};
use crate::proc::child::{self, End, Watch};
use crate::proc::guard::Guard;
use crate::proc::spawn::Exec;
use crate::signals::Signals;
use std::time::Duration;

/// The server side's TCP settings that make it free a vanished client's lock no sooner than
/// `release_after` (contract §6): keepalive idle + interval x count >= release_after, and the
/// same bound for data the client never acknowledges (tcp_user_timeout).
pub fn server_keepalive(release_after: Duration) -> [(&'static str, String); 4] {
    let total = release_after.as_secs_f64().ceil().max(3.0) as u64;
    let count = 3;
    let interval = (total / 10).clamp(1, 10);
    let idle = total.saturating_sub(count * interval).max(1);
    [
        ("tcp_keepalives_idle", idle.to_string()),
        ("tcp_keepalives_interval", interval.to_string()),
        ("tcp_keepalives_count", count.to_string()),
        ("tcp_user_timeout", release_after.as_millis().to_string()),
    ]
}

/// The session settings sent in the startup packet: server or role defaults cannot end the lock
/// session (contract §3), and the server keeps a vanished client's lock long enough (§6).
fn session_settings(req: &RunRequest) -> Vec<(&'static str, String)> {
    let mut s: Vec<(&'static str, String)> = [
        "statement_timeout",
        "lock_timeout",
        "idle_session_timeout",
        "idle_in_transaction_session_timeout",
    ]
    .into_iter()
    .map(|k| (k, "0".to_string()))
    .collect();
    s.extend(server_keepalive(req.release_after));
    s
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

/// The lock connection; a waiting run waits for a server that is down or starting (contract §4).
/// Returns the wait left for the lock. Every round trip on it before the child starts has the
/// start's deadline (see `lock::Start::deadline`).
fn connect(
    params: &ConnParams,
    startup: &Startup,
    start: &mut lock::Start,
    signals: &Signals,
) -> Result<(Conn, Wait)> {
    let (mut conn, wait) = lock::connect_waiting(
        params,
        startup,
        start.wait_left(),
        signals,
        &mut start.retries,
    )?;
    conn.set_deadline(start.deadline(conn.round_trip()));
    log::debug(
        "connected",
        &format!(
            "connected to {} as {} (backend pid {})",
            conn.target().describe(),
            conn.user(),
            conn.backend_pid()
        ),
    );
    Ok((conn, wait))
}

/// The run's lock session: the dedicated connection, the guard, and the lock once taken.
/// Dropping it releases a lock still held, tells the guard to go, and closes the connection, in
/// that order (contract §7), so every early return leaves nothing behind on the server.
struct Session<'a> {
    conn: Conn,
    guard: Option<&'a Guard>,
    lock: Option<Taken>,
    /// The run ledger's record (contract §12), sent in the release's round trip, before the
    /// unlock (see `Book::record_sql`).
    record: Option<String>,
    req: &'a RunRequest,
    signals: &'a Signals,
}

/// The lock held while the child runs: the key's own, or with --limit one of its slots.
struct Taken {
    key: LockKey,
    slot: Option<u32>,
    /// The session that holds it (the backend pid differs from the connection's behind a pooler).
    holder: fence::Holder,
}

impl<'a> Session<'a> {
    /// Takes charge of the connection. (Whether a lock can be held on it is the lock statement's
    /// own check: see lock::guard_sql.)
    fn open(
        conn: Conn,
        req: &'a RunRequest,
        guard: Option<&'a Guard>,
        signals: &'a Signals,
    ) -> Result<Session<'a>> {
        Ok(Session {
            conn,
            guard,
            lock: None,
            record: None,
            req,
            signals,
        })
    }

    /// Takes the lock (or a slot), and makes sure it is held by this connection's backend.
    fn acquire(&mut self, a: &Acquire) -> Result<()> {
        let (key, slot, holder) = match self.req.limit {
            None => {
                let got = lock::acquire(&mut self.conn, a, self.signals)?;
                (self.req.key.clone(), None, got.holder)
            }
            Some(n) => {
                let s = semaphore::acquire(&mut self.conn, a, n, self.signals)?;
                (s.key, Some(s.index), s.holder)
            }
        };
        log::mark(Mark::Acquired);
        self.lock = Some(Taken { key, slot, holder });
        Ok(())
    }

    /// The child's variables known once the lock is held: `PGLOCK_HELD` with this run's entry
    /// naming the session (and slot) that holds it, and the fencing variables.
    fn lock_vars(
        &mut self,
        held: &[Held],
        me: &mut Held,
        run_id: &str,
    ) -> Result<Vec<(&'static str, String)>> {
        if let Some(t) = &self.lock {
            me.holder = Some(t.holder.clone());
            me.slot = t.slot;
        }
        let mut vars = vec![(nesting::VAR, nesting::child_value(held, me))];
        vars.extend(self.fence_vars(run_id)?);
        Ok(vars)
    }

    /// The child's fencing variables (contract §11): the fence statement of this run's lock and
    /// session, and with `--fencing-token` the server's next transaction id.
    fn fence_vars(&mut self, run_id: &str) -> Result<Vec<(&'static str, String)>> {
        let Some(t) = &self.lock else {
            return Ok(Vec::new());
        };
        let mut vars = vec![
            ("PGLOCK_BACKEND_PID", t.holder.pid.to_string()),
            (
                "PGLOCK_FENCE_SQL",
                fence::check_sql(t.key.id, self.req.mode, &t.holder, run_id),
            ),
        ];
        if self.req.fencing_token {
            let sql = fence::token_sql(self.conn.server_major());
            let rows = lock::query(&mut self.conn, sql, self.signals)?;
            vars.push((
                "PGLOCK_FENCING_TOKEN",
                fence::parse_token(&rows)?.to_string(),
            ));
        }
        Ok(vars)
    }

    /// Unlocks, waiting for the server's answer for `lock::release_bound` at most. The guard
    /// is told to go once the release is on its way (see guard.rs).
    fn release(&mut self) -> lock::Released {
        let Some(taken) = self.lock.take() else {
            return lock::Released::Gone;
        };
        let notify = self.req.limit.map(|_| semaphore::channel(self.req.key.id));
        let guard = self.guard;
        let sent = || {
            if let Some(g) = guard {
                g.stop();
            }
        };
        let deadline = std::time::Instant::now() + lock::release_bound(self.req.heartbeat);
        let record = self.record.take();
        let proven = self.req.scope == Scope::Session && !self.req.session_pooler;
        let pin = lock::unlock_pin(&taken.holder, proven);
        let released = lock::release(
            &mut self.conn,
            (&taken.key, &pin, self.req.mode, self.req.scope),
            record.as_deref().unwrap_or_default(),
            notify.as_deref(),
            deadline,
            self.signals,
            &sent,
        );
        match released {
            Ok(released) => released,
            Err(lock::RecordFailed(why)) => self.release_unrecorded(taken, &why),
        }
    }

    /// The record failed, and the statements after it in the round trip did not run: the
    /// failed transaction is rolled back (at transaction scope, that is the release: the
    /// transaction was still open, so the lock was held) and the lock released without it.
    fn release_unrecorded(&mut self, taken: Taken, why: &str) -> lock::Released {
        if let Some(l) = &self.req.ledger {
            ledger::not_recorded(l, &Error::unavailable(why.to_string()));
        }
        let rolled_back = lock::query(&mut self.conn, "ROLLBACK", self.signals).is_ok();
        if self.req.scope == Scope::Transaction {
            return if rolled_back {
                lock::Released::Held
            } else {
                lock::Released::Gone
            };
        }
        self.lock = Some(taken);
        self.release()
    }

    /// Lets the lock's transaction go (transaction scope), for the ledger's creation to commit
    /// on its own before the lock is taken again.
    fn let_go_for_ledger(&mut self) -> Result<()> {
        self.lock = None;
        lock::query(&mut self.conn, "ROLLBACK", self.signals).map(|_| ())
    }

    /// The lock was lost: there is nothing left to release, only the connection to close.
    fn forget_lock(&mut self) {
        self.lock = None;
    }

    fn slot(&self) -> Option<u32> {
        self.lock.as_ref().and_then(|t| t.slot)
    }

    fn check_sql(&self) -> String {
        match &self.lock {
            Some(t) => lock::heartbeat_sql(
                &t.holder,
                self.req.scope,
                self.req
                    .session_pooler
                    .then(|| crate::lock::key::lock_match(t.key.id))
                    .as_deref(),
            ),
            None => "SELECT false".into(),
        }
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if self.lock.is_some() {
            self.release();
        }
        // The connection closes (Terminate) when `conn` drops, right after this.
    }
}

/// Runs and logs the last event of a run that ended with the child's own exit.
pub fn run(req: RunRequest, run_id: &str) -> Result<i32> {
    let (code, confirmed) = run_inner(req, run_id)?;
    let (waited, ran) = log::timings();
    let release = if confirmed {
        "released the lock"
    } else {
        "the release was not confirmed; the connection is closed"
    };
    log::info(
        "released",
        &format!("the command exited with status {code} after {ran} ms; {release}"),
        &[
            ("waited_ms", V::I(waited)),
            ("ran_ms", V::I(ran)),
            ("exit_code", V::I(i64::from(code))),
            ("cause", V::S("exit")),
            (
                "release",
                V::S(if confirmed {
                    "confirmed"
                } else {
                    "unconfirmed"
                }),
            ),
        ],
    );
    Ok(code)
}

/// The child's status, and whether the server confirmed the release.
fn run_inner(mut req: RunRequest, run_id: &str) -> Result<(i32, bool)> {
    let signals = Signals::install()?;
    let held = nesting::held_by_ancestors();
    let params = ConnParams::resolve(req.database_url.as_deref())?;
    let app = params
        .application_name
        .clone()
        .unwrap_or_else(|| application_name(&req.key.label()));
    // The guard is started while the server starts the session, off the path from a lock
    // grant to the child's start; the child's spawn hands it the child's pidfd (see guard.rs).
    // Declared before the session, it outlives it: the session stops it, its drop reaps it.
    let guard = std::cell::OnceCell::new();
    let kill_after = req.kill_after;
    // So is the child's start, when nothing it needs waits for the server (a key whose id the
    // server computes, a --limit slot): the first attempt takes it (see lock_session).
    let prepared = std::cell::RefCell::new(None);
    let early = (req.key.pending.is_none() && req.limit.is_none())
        .then(|| (req.key.clone(), req.command.clone(), req.mode));
    let start_guard = || {
        guard.get_or_init(|| Guard::start(kill_after).inspect_err(|why| why.log()).ok());
        // Read now, while the server starts the session, not between its answer and the lock.
        nesting::own_start();
        if let Some((key, command, mode)) = &early {
            let mut p = prepared.borrow_mut();
            if p.is_none() {
                let me = own_entry(key, *mode, &params.dbname);
                *p = Some(prepare_child((key, command), run_id, &held, &me, None));
            }
        }
    };
    // A run below another pglock may become its command (run_nested's exec), which must not
    // leave a guard behind as the command's child: it starts its guard once it knows it will not.
    let may_nest = !held.is_empty();
    let startup = Startup {
        application_name: &app,
        settings: session_settings(&req),
        client_keepalive: Some(req.heartbeat),
        while_waiting: if may_nest { None } else { Some(&start_guard) },
    };
    // Every attempt to start, on a new connection each (contract §4): one whose session the
    // server ends or loses before the child starts (a restart, a failover) is tried again
    // within the run's wait, as a refused connection is.
    let mut start = lock::Start::new(req.wait);
    loop {
        let (mut conn, wait) = connect(&params, &startup, &mut start, &signals)?;
        if !may_nest {
            start_guard();
        }
        // Nesting (contract §4): an ancestor's PGLOCK_HELD entry for this lock counts only when
        // the server confirms, on this connection, that the session it names holds the lock;
        // then the command runs under the ancestor's lock and this connection is not needed
        // (see run_nested). No entry for this lock, no query.
        match prelude(&mut conn, &mut req, &held, &params.dbname, &signals) {
            Ok(Some(h)) => {
                drop(conn);
                return run_nested(&req, &h, &held, run_id).map(|code| (code, true));
            }
            Ok(None) => start_guard(),
            Err(e) => {
                drop(conn);
                start.again(e, &signals)?;
                continue;
            }
        }
        let guard = guard.get().and_then(Option::as_ref);
        let ready = prepared.borrow_mut().take().transpose()?;
        let locked = lock_session(
            conn,
            &req,
            wait,
            guard,
            (&params, &startup),
            (&held, run_id, ready),
            &signals,
        );
        match locked {
            Ok((mut session, exec, book)) => {
                let end = run_child(&mut session, &req, &exec, &signals)?;
                if let Some(b) = &book {
                    session.record = recorded_code(&end).map(|c| b.record_sql(req.scope, c));
                }
                return finish(end, session, &req);
            }
            Err(e) => start.again(e, &signals)?,
        }
    }
}

/// What precedes the lock on a new connection: the key's id where the server computes it, and
/// the nesting check. `Some`: an ancestor holds the lock.
fn prelude(
    conn: &mut Conn,
    req: &mut RunRequest,
    held: &[Held],
    dbname: &str,
    signals: &Signals,
) -> Result<Option<Held>> {
    resolve_key(conn, req, signals)?;
    nesting::confirmed(conn, held, &req.key.id, dbname, signals)
}

/// Takes the lock on `conn` and prepares the child's start with its variables. The session's
/// round trips are bounded until here; from the child's start on, the heartbeat bounds them.
fn lock_session<'a>(
    conn: Conn,
    req: &'a RunRequest,
    wait: Wait,
    guard: Option<&'a Guard>,
    (params, startup): (&ConnParams, &Startup),
    (held, run_id, prepared): (&[Held], &str, Option<Exec>),
    signals: &'a Signals,
) -> Result<(Session<'a>, Exec, Option<Book>)> {
    let mut session = Session::open(conn, req, guard, signals)?;
    let mut me = own_entry(&req.key, req.mode, &params.dbname);
    let child = (&req.key, &req.command[..]);
    // The child's start is prepared before the wait (with --limit, once the slot is known):
    // while the server started the session, or now.
    let prepared = match (prepared, req.limit) {
        (Some(exec), _) => Some(exec),
        (None, None) => Some(prepare_child(child, run_id, held, &me, None)?),
        (None, Some(_)) => None,
    };
    let acquire = Acquire {
        key: &req.key,
        mode: req.mode,
        scope: req.scope,
        wait,
        conflict_exit_code: req.conflict_exit_code,
        params,
        startup,
        fence: true,
        session_pooler: req.session_pooler,
    };
    session.acquire(&acquire)?;
    let mut book = req
        .ledger
        .clone()
        .map(|l| Book::new(l, req.once.clone(), req.key.id, run_id));
    if let Some(b) = &mut book {
        ledger_ready(&mut session, b, &acquire)?;
    }
    let mut exec = match prepared {
        Some(exec) => exec,
        None => prepare_child(child, run_id, held, &me, session.slot())?,
    };
    let mut vars = session.lock_vars(held, &mut me, run_id)?;
    if let (Some(b), Some(t)) = (&mut book, &session.lock) {
        vars.extend(b.child_vars(t.key.id, req.mode, &t.holder));
    }
    for (k, v) in vars {
        exec.add_env(k, &v)
            .map_err(|e| Error::internal(format!("cannot pass {k} to the command: {e}")))?;
    }
    session.conn.set_deadline(None);
    Ok((session, exec, book))
}

/// The exit code a run's record shows: the child's, or 124 for one stopped at --max-runtime. A
/// run whose lock was lost is not recorded (its connection is gone, or no longer trusted).
fn recorded_code(end: &End) -> Option<i32> {
    match end {
        End::Exited(code) => Some(*code),
        End::MaxRuntime => Some(crate::error::code::MAX_RUNTIME),
        End::LockLost(_) => None,
    }
}

/// The ledger's look-up under the lock (contract §12), creating the table on first use. At
/// transaction scope the lock's transaction is let go for the creation and the lock taken
/// again: a table created inside it would stay invisible to the child's `PGLOCK_ONCE_SQL`, and
/// to every other run, until this run's child had ended (and would hold the creation lock as
/// long, stopping the runs of other locks that also found the table missing).
fn ledger_ready(session: &mut Session, book: &mut Book, a: &Acquire) -> Result<()> {
    if look_up(session, book)? == Found::Ready {
        return Ok(());
    }
    let transaction = session.req.scope == Scope::Transaction;
    if transaction {
        session.let_go_for_ledger()?;
    }
    book.create(&mut session.conn, session.signals)?;
    if transaction {
        session.acquire(a)?;
    }
    match look_up(session, book)? {
        Found::Ready => Ok(()),
        Found::Missing => Err(Error::unavailable(format!(
            "the run ledger {} was created but is not found (is its schema on search_path?); the command was not run",
            book.ledger.label()
        ))),
    }
}

/// The ledger's look-up on the session's connection.
fn look_up(session: &mut Session, book: &mut Book) -> Result<Found> {
    let req = session.req;
    book.look_up(
        &mut session.conn,
        req.scope,
        &req.key.label(),
        req.conflict_exit_code,
        session.signals,
    )
}

/// --key-hashtext, and --lock-of tools whose id depends on this connection's database or schema:
/// the id comes from this connection, before anything that needs it.
fn resolve_key(conn: &mut Conn, req: &mut RunRequest, signals: &Signals) -> Result<()> {
    if req.key.pending.is_none() {
        return Ok(());
    }
    req.key = lock::resolve(conn, &req.key, signals)?;
    log::set_lock_id(req.key.id.json());
    log::debug(
        "resolved",
        &format!("lock \"{}\" is {} here", req.key.label(), req.key.sql),
    );
    Ok(())
}

/// Starts the prepared child under the lock and supervises it until it has ended.
fn run_child(
    session: &mut Session,
    req: &RunRequest,
    exec: &Exec,
    signals: &Signals,
) -> Result<End> {
    // Written (stderr is unbuffered) before the child exists, so nothing of the child's can
    // precede it in a log that has both (contract §8).
    log_acquired(req, session.slot());
    let child = start_child(req, exec, session.guard.map(Guard::child_slot))?;
    // Its exit is to be answered at once: the unlock goes out then (see proc/sched.rs).
    crate::proc::sched::prefer_short_slice();
    let end = child::supervise(
        child,
        Watch {
            check_sql: session.check_sql(),
            conn: Some(&mut session.conn),
            heartbeat: req.heartbeat,
            kill_after: req.kill_after,
            max_runtime: req.max_runtime,
        },
        signals,
    );
    log::mark(Mark::ChildEnd);
    Ok(end)
}

/// The outcome of a run whose child has ended, after the release (or, with the lock lost, only
/// the close).
fn finish(end: End, mut session: Session, req: &RunRequest) -> Result<(i32, bool)> {
    let label = req.key.label();
    match end {
        End::Exited(code) => match session.release() {
            lock::Released::Held => Ok((code, true)),
            lock::Released::Gone => Err(Error::new(
                Kind::LockLost,
                format!("the lock was gone when the command ended (status {code}); it may have run unprotected for up to two heartbeats"),
            )),
            lock::Released::Unconfirmed(why) => {
                // The lock was held at the last heartbeat; only its release is in doubt.
                log::warn(
                    "release",
                    &format!("the release of lock \"{label}\" was not confirmed ({why}); the connection is closed, and the server frees the lock when it notices the closed connection (within --release-after if it cannot be reached)"),
                    &[],
                );
                Ok((code, false))
            }
        },
        End::LockLost(why) => {
            session.forget_lock();
            Err(Error::new(
                Kind::LockLost,
                format!("lock \"{label}\" was lost while the command ran ({why}); the command was stopped"),
            ))
        }
        End::MaxRuntime => Err(Error::new(
            Kind::MaxRuntime,
            format!(
                "the command ran longer than --max-runtime {} and was stopped",
                crate::duration::format(req.max_runtime.unwrap_or_default())
            ),
        )),
    }
}

/// The "acquired" line, logged just before the child starts.
fn log_acquired(req: &RunRequest, slot: Option<u32>) {
    let (waited_ms, _) = log::timings();
    let label = req.key.label();
    log::info(
        "acquired",
        &match (slot, req.limit) {
            (Some(i), Some(n)) => format!(
                "acquired slot {i} of {n} of lock \"{label}\" (id {}) after {waited_ms} ms",
                req.key.id
            ),
            _ => format!(
                "acquired lock \"{label}\" (id {}, {}) after {waited_ms} ms",
                req.key.id,
                req.mode.as_str()
            ),
        },
        &[
            ("waited_ms", V::I(waited_ms)),
            ("mode", V::S(req.mode.as_str())),
            ("slot", V::I(slot.map_or(-1, i64::from))),
        ],
    );
}

/// The child's variables of contract §11.
const FENCE_VARS: [&str; 3] = [
    "PGLOCK_BACKEND_PID",
    "PGLOCK_FENCE_SQL",
    "PGLOCK_FENCING_TOKEN",
];

/// Prepares the child's start with the pglock variables.
fn prepare_child(
    (key, command): (&LockKey, &[std::ffi::OsString]),
    run_id: &str,
    held: &[Held],
    me: &Held,
    slot: Option<u32>,
) -> Result<Exec> {
    let (set, mut remove) = key.child_vars();
    let env = [
        set,
        ("PGLOCK_LOCK_ID", key.id.to_string()),
        ("PGLOCK_RUN_ID", run_id.to_string()),
        (nesting::VAR, nesting::child_value(held, me)),
    ];
    let mut env = env.to_vec();
    if let Some(i) = slot {
        env.push(("PGLOCK_SLOT", i.to_string()));
    }
    remove.push("PGLOCK_SLOT");
    // The fencing variables are added once the lock is held (a nested run's: see
    // nested_fence_vars); inherited ones belong to another run, and so do the ledger's.
    remove.extend(FENCE_VARS);
    remove.extend(ledger::CHILD_VARS);
    child::prepare(command, &env, &remove)
}

/// This run's `PGLOCK_HELD` entry for its child before the lock is taken: the session that
/// holds it (and the slot) are known once it is, and the entry is set again then.
fn own_entry(key: &LockKey, mode: Mode, dbname: &str) -> Held {
    Held {
        id: key.id,
        mode,
        pid: std::process::id() as i32,
        pid_start: nesting::own_start(),
        db: Some(dbname.to_string()),
        holder: None,
        slot: None,
    }
}

/// The fencing variables of a nested run, for the ancestor's lock and session that the server
/// confirmed (`h`): not the inherited ones, which belong to the innermost pglock, whose lock may
/// be another (A, then B, then A nested). The inherited token is passed on only when that
/// innermost pglock holds this lock.
fn nested_fence_vars(
    req: &RunRequest,
    h: &Held,
    held: &[Held],
    run_id: &str,
) -> Result<Vec<(&'static str, String)>> {
    let Some(holder) = &h.holder else {
        return Ok(Vec::new());
    };
    let lock = match (h.slot, h.id.big()) {
        (Some(i), Some(id)) => crate::lock::key::LockId::Big(crate::lock::key::slot_id(id, i)),
        _ => h.id,
    };
    let mut vars = vec![
        ("PGLOCK_BACKEND_PID", holder.pid.to_string()),
        (
            "PGLOCK_FENCE_SQL",
            fence::check_sql(lock, h.mode, holder, run_id),
        ),
    ];
    let innermost = held.last().is_some_and(|l| l.pid == h.pid && l.id == h.id);
    let token = std::env::var("PGLOCK_FENCING_TOKEN")
        .ok()
        .filter(|t| innermost && t.parse::<u64>().is_ok());
    match token {
        Some(t) => vars.push(("PGLOCK_FENCING_TOKEN", t)),
        None if req.fencing_token => {
            return Err(Error::usage(format!(
                "--fencing-token: lock \"{}\" is held by the ancestor pglock (pid {}), whose token this run does not have (it was not given --fencing-token, or another pglock runs in between); give it to the ancestor, directly above",
                req.key.label(),
                h.pid
            )))
        }
        None => {}
    }
    Ok(vars)
}

/// Starts the prepared child.
fn start_child(
    req: &RunRequest,
    exec: &Exec,
    slot: Option<&crate::proc::spawn::ChildSlot>,
) -> Result<child::Child> {
    let pid = child::start(&req.command, exec, slot)?;
    log::mark(Mark::ChildStart);
    log::debug(
        "child",
        &format!("started {} as pid {pid}", req.command[0].to_string_lossy()),
    );
    Ok(pid)
}

/// An ancestor pglock holds this lock (the server confirmed `h`): become the command at once if
/// its mode covers ours, else fail at once (waiting would wait for ourselves forever).
///
/// The connection that confirmed `h` is closed before, and none is kept: the ancestor watches
/// its lock, and it cannot lose it without stopping its child's whole process group (contract
/// §5), in which the command runs. A second watch here would add a connection per nesting level
/// and catch nothing.
fn run_nested(req: &RunRequest, h: &Held, held: &[Held], run_id: &str) -> Result<i32> {
    let label = req.key.label();
    if h.mode == Mode::Shared && req.mode == Mode::Exclusive {
        return Err(Error::usage(format!(
            "lock \"{label}\" is held in shared mode by the ancestor pglock (pid {}); taking it exclusive here would wait for itself forever",
            h.pid
        )));
    }
    log::mark(Mark::Acquired);
    log::info(
        "nested",
        &format!(
            "lock \"{label}\" is already held ({}) by the ancestor pglock (pid {}, backend pid {}), as the server confirms; running the command in place (exec)",
            h.mode.as_str(),
            h.pid,
            h.holder.as_ref().map_or(0, |o| o.pid)
        ),
        &[("ancestor_pid", V::I(i64::from(h.pid)))],
    );
    let me = Held {
        id: req.key.id,
        mode: h.mode,
        pid: std::process::id() as i32,
        pid_start: nesting::own_start(),
        db: h.db.clone(),
        // Its "lock" is the ancestor's session, so a run nested in this one checks that.
        holder: h.holder.clone(),
        slot: h.slot,
    };
    let mut vars = nested_fence_vars(req, h, held, run_id)?;
    // The same lock and token is the same run: no ledger work (contract §12).
    let innermost = held.last().is_some_and(|l| l.pid == h.pid && l.id == h.id);
    vars.extend(ledger::nested_vars(
        req.once.as_deref(),
        innermost,
        &label,
        h.pid,
    )?);
    if req.max_runtime.is_some() {
        log::warn(
            "nested",
            "--max-runtime is not applied by a nested run (it becomes the command); the ancestor's applies",
            &[],
        );
    }
    let mut exec = prepare_child((&req.key, &req.command), run_id, held, &me, None)?;
    for (k, v) in vars {
        exec.add_env(k, &v)
            .map_err(|e| Error::internal(format!("cannot pass {k} to the command: {e}")))?;
    }
    // The command takes this process's place: it stays in the ancestor's child's process group,
    // which the ancestor stops as a whole when it loses the lock, reaches --max-runtime or dies
    // (contract §5), and a signal to this process reaches it once, with no pglock in between.
    let e = exec.exec_in_place();
    Err(child::not_started(&req.command, e))
}

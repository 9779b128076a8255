//! Nesting (contract §4): a `pglock run` started, directly or not, by the child of another pglock
//! for the same lock id must not wait for its own ancestor, and a copied or forged environment
//! must not let a run skip the lock.
//!
//! Every pglock passes `PGLOCK_HELD` to its child: the locks held by it and its ancestors, as
//! entries separated by `;`:
//!
//! ```text
//! ID:MODE:PID:DB:BACKENDPID:BACKENDSTART[:SLOT]
//! ```
//!
//! - ID: the lock id as it prints (`-42`, or `1,2` for the two-int4 form, a different lock from
//!   every bigint id); MODE: `exclusive` or `shared`; PID: the pglock that holds it, as
//!   `PID.START` where /proc tells when it started (see [`Held::pid_start`]);
//! - DB: the database name: advisory locks are per database, so the same id in another database
//!   is another lock (two servers with databases of the same name are not told apart);
//! - BACKENDPID, BACKENDSTART: the session that holds the lock, as the fence statement of contract
//!   §11 names it (`pg_backend_pid()`, and `backend_start` in UTC as `YYYY-MM-DD
//!   HH24:MI:SS.US`); with `--scope transaction` through a pooler the backend that ran the lock
//!   statement;
//! - SLOT: with `--limit`, the slot whose lock that session holds (ID stays the key's id).
//!
//! DB and BACKENDSTART are %-escaped: `%`, `:`, `;` and space as `%25`, `%3A`, `%3B`, `%20`.
//!
//! An entry counts only when PID is an ancestor of this process, started at START (pid 1
//! included: a container's entrypoint), **and** the server confirms, in `pg_locks` joined with
//! `pg_stat_activity`, that the session it names (pid and start, so a reused pid never passes)
//! holds that lock, granted, in the entry's mode, in the current database. The variable is
//! untrusted input: a stale or copied one never skips the lock, it only costs the query. (A
//! deliberate forger who writes an ancestor's true pid and start beside the holder's session
//! passes; docs/child-and-signals.md says so.) Entries of an older pglock (`ID:MODE:PID[:DB]`,
//! no session) are ignored.

use crate::error::Result;
use crate::lock;
use crate::lock::fence::{self, Holder};
use crate::lock::key::{self, LockId, LockKey};
use crate::lock::Mode;
use crate::log::{self, V};
use crate::pg::{Conn, Rows};
use crate::signals::Signals;

pub const VAR: &str = "PGLOCK_HELD";

/// At most this many distinct (session, lock) pairs are put to the server in one check: a real
/// chain of nested pglocks is a few deep, and a forged variable must not make a huge query.
const MAX_CHECKED: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub id: LockId,
    pub mode: Mode,
    pub pid: i32,
    /// When process `pid` started (Linux: `/proc/PID/stat`'s starttime, in clock ticks since
    /// boot): the entry names that process, not a later one with the same pid, nor the pid 1 of
    /// another container that a copied variable finds. `None` where there is no /proc.
    pub pid_start: Option<u64>,
    /// The database; `None` in an entry of an older pglock (which named none).
    pub db: Option<String>,
    /// The session that holds the lock; `None` in an entry of an older pglock, which therefore
    /// cannot be confirmed and never counts.
    pub holder: Option<Holder>,
    /// With `--limit`, the slot whose lock `holder` holds.
    pub slot: Option<u32>,
}

impl Held {
    /// Whether this entry is the lock `id` in database `db` (an entry naming no database, an
    /// older pglock's, is taken for any: it is ignored later, as it names no session).
    pub fn is(&self, id: &LockId, db: &str) -> bool {
        self.id == *id && self.db.as_deref().is_none_or(|d| d == db)
    }

    /// The advisory lock that `holder` holds: the id's own, or with a slot the slot's.
    fn lock(&self) -> Option<LockKey> {
        match (self.slot, self.id) {
            (None, id) => Some(LockKey::from_id(id)),
            (Some(i), LockId::Big(id)) => Some(LockKey::from_id(LockId::Big(key::slot_id(id, i)))),
            // --limit refuses the two-int4 form: such an entry is made up.
            (Some(_), LockId::Pair(..)) => None,
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('%', "%25")
        .replace(':', "%3A")
        .replace(';', "%3B")
        .replace(' ', "%20")
}

/// Undoes [`escape`], strictly: a `%` not followed by two hex digits, or bytes that are not
/// UTF-8, reject the field (`None`).
fn unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A positive pid (or backend pid), digits only.
fn parse_pid(s: &str) -> Option<i32> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse::<i32>().ok().filter(|p| *p > 0)
}

/// Whether `s` has the exact shape of `to_char(backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD
/// HH24:MI:SS.US')`, as the lock statement writes it.
fn is_backend_start(s: &str) -> bool {
    let shape = b"dddd-dd-dd dd:dd:dd.dddddd";
    s.len() == shape.len()
        && s.bytes().zip(shape).all(|(c, &want)| match want {
            b'd' => c.is_ascii_digit(),
            _ => c == want,
        })
}

/// One entry; `None` for anything but the documented shapes (the environment is untrusted).
fn parse_entry(e: &str) -> Option<Held> {
    let f: Vec<&str> = e.split(':').collect();
    if !matches!(f.len(), 3 | 4 | 6 | 7) {
        return None;
    }
    let id = LockId::parse(f[0]).ok()?;
    let mode = match f[1] {
        "exclusive" => Mode::Exclusive,
        "shared" => Mode::Shared,
        _ => return None,
    };
    let (pid, pid_start) = match f[2].split_once('.') {
        Some((p, t)) if !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit()) => {
            (parse_pid(p)?, Some(t.parse::<u64>().ok()?))
        }
        Some(_) => return None,
        None => (parse_pid(f[2])?, None),
    };
    let db = match f.get(3) {
        Some(d) => Some(unescape(d).filter(|d| !d.is_empty())?),
        None => None,
    };
    let holder = match (f.get(4), f.get(5)) {
        (Some(bp), Some(start)) => {
            let bp = parse_pid(bp)?;
            let start = unescape(start).filter(|s| is_backend_start(s))?;
            Some(Holder { pid: bp, start })
        }
        _ => None,
    };
    let slot = match f.get(6) {
        Some(s) if !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) => {
            Some(s.parse::<u32>().ok()?)
        }
        Some(_) => return None,
        None => None,
    };
    Some(Held {
        id,
        mode,
        pid,
        pid_start,
        db,
        holder,
        slot,
    })
}

/// The well-formed entries of a `PGLOCK_HELD` value; malformed ones are dropped.
pub fn parse(v: &str) -> Vec<Held> {
    v.split(';').filter_map(parse_entry).collect()
}

fn format_entry(h: &Held) -> String {
    let mut s = format!("{}:{}:{}", h.id, h.mode.as_str(), h.pid);
    if let Some(t) = h.pid_start {
        s.push_str(&format!(".{t}"));
    }
    if let Some(d) = &h.db {
        s.push(':');
        s.push_str(&escape(d));
        if let Some(o) = &h.holder {
            s.push_str(&format!(":{}:{}", o.pid, escape(&o.start)));
            if let Some(i) = h.slot {
                s.push_str(&format!(":{i}"));
            }
        }
    }
    s
}

/// The value to pass to the child: the inherited entries that still hold, plus this one.
pub fn child_value(inherited: &[Held], me: &Held) -> String {
    inherited
        .iter()
        .chain(std::iter::once(me))
        .map(format_entry)
        .collect::<Vec<_>>()
        .join(";")
}

/// The query that reads, for each entry to check, whether its session holds its lock: one row
/// per granted lock of one of those sessions on one of those locks in the current database,
/// `pid, backend_start (UTC text, NULL when this user may not see it), mode, classid, objid,
/// objsubid`. `None` when there is nothing to ask.
fn confirm_sql(entries: &[&Held]) -> Option<String> {
    let mut conds: Vec<String> = entries
        .iter()
        .filter_map(|h| Some((h.holder.as_ref()?.pid, h.lock()?)))
        .map(|(pid, key)| format!("(l.pid = {pid} AND {})", key::locks_filter(&key)))
        .collect();
    conds.sort();
    conds.dedup();
    conds.truncate(MAX_CHECKED);
    if conds.is_empty() {
        return None;
    }
    Some(format!(
        "SELECT l.pid, {}, l.mode, l.classid, l.objid, l.objsubid \
         FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.granted AND ({})",
        fence::START_UTC_OF_A,
        conds.join(" OR ")
    ))
}

/// Whether the server's answer (`confirm_sql`'s rows) confirms entry `h`, or why not.
/// Why an entry is not confirmed; `Hidden`: the named session holds the lock, but this role may
/// not see its start.
#[derive(Debug)]
enum NotConfirmed {
    Hidden(String),
    Unconfirmed(String),
}

impl NotConfirmed {
    #[cfg(test)]
    fn contains(&self, s: &str) -> bool {
        match self {
            NotConfirmed::Hidden(w) | NotConfirmed::Unconfirmed(w) => w.contains(s),
        }
    }
}

fn verdict(h: &Held, rows: &Rows) -> std::result::Result<(), NotConfirmed> {
    let (Some(holder), Some(key)) = (&h.holder, h.lock()) else {
        return Err(NotConfirmed::Unconfirmed(
            "it names no lock session (an entry of an older pglock)".into(),
        ));
    };
    let modes: &[&str] = match h.mode {
        Mode::Exclusive => &["ExclusiveLock"],
        Mode::Shared => &["ShareLock", "ExclusiveLock"],
    };
    let cell = |r: &[Option<String>], i: usize| r.get(i).cloned().flatten();
    let same_lock = |r: &[Option<String>]| {
        cell(r, 0) == Some(holder.pid.to_string())
            && cell(r, 3) == Some(key.classid().to_string())
            && cell(r, 4) == Some(key.objid().to_string())
            && cell(r, 5) == Some(key.id.objsubid().to_string())
            && cell(r, 2).is_some_and(|m| modes.contains(&m.as_str()))
    };
    let mine: Vec<&Vec<Option<String>>> = rows.iter().filter(|r| same_lock(r)).collect();
    if mine
        .iter()
        .any(|r| cell(r, 1).as_deref() == Some(holder.start.as_str()))
    {
        return Ok(());
    }
    if !mine.is_empty() && mine.iter().all(|r| cell(r, 1).is_none()) {
        return Err(NotConfirmed::Hidden(format!(
            "the server does not show this user the start of backend pid {} (another role's session: pg_read_all_stats sees it)",
            holder.pid
        )));
    }
    Err(NotConfirmed::Unconfirmed(format!(
        "the server does not confirm that backend pid {} started {} UTC holds it {} (stale, copied or forged)",
        holder.pid,
        holder.start,
        h.mode.as_str()
    )))
}

/// Of the entries in `held` (already those of ancestors) that name lock `id` in database `db`,
/// the one the server confirms, preferring one in exclusive mode (it covers any request). Asks
/// on `conn`, which must not hold or take the lock. When there were entries and none is
/// confirmed, logs a warning naming why: the run then takes the lock normally.
pub fn confirmed(
    conn: &mut Conn,
    held: &[Held],
    id: &LockId,
    db: &str,
    signals: &Signals,
) -> Result<Option<Held>> {
    let named: Vec<&Held> = held.iter().filter(|h| h.is(id, db)).collect();
    if named.is_empty() {
        return Ok(None);
    }
    let rows = match confirm_sql(&named) {
        Some(sql) => lock::query(conn, &sql, signals)?,
        None => Vec::new(),
    };
    let mut ok: Vec<&Held> = Vec::new();
    let mut why = None;
    let mut hidden = None;
    for h in &named {
        match verdict(h, &rows) {
            Ok(()) => ok.push(h),
            Err(NotConfirmed::Hidden(w)) => {
                hidden.get_or_insert((*h, w));
            }
            Err(NotConfirmed::Unconfirmed(w)) => {
                why.get_or_insert((*h, w));
            }
        }
    }
    if let Some(h) = ok.iter().find(|h| h.mode == Mode::Exclusive).or(ok.first()) {
        return Ok(Some((*h).clone()));
    }
    // The ancestor (pid and start time checked) holds the lock in a session this role cannot
    // see: waiting would wait for it forever.
    if let Some((h, w)) = hidden {
        return Err(crate::error::Error::usage(format!(
            "lock {id} is held by the ancestor pglock (pid {}), but {w}: waiting would wait for the ancestor forever; connect as the ancestor's role, or grant this one pg_read_all_stats",
            h.pid
        )));
    }
    if let Some((h, w)) = why {
        log::warn(
            "nesting",
            &format!(
                "{VAR} names lock {id} as held by the ancestor pglock (pid {}), but {w}: ignoring it and taking the lock normally",
                h.pid
            ),
            &[
                ("ancestor_pid", V::I(i64::from(h.pid))),
                ("entries", V::I(named.len() as i64)),
            ],
        );
    }
    Ok(None)
}

/// The entries of `PGLOCK_HELD` whose pglock is an ancestor of this process (not yet confirmed:
/// see [`confirmed`]).
pub fn held_by_ancestors() -> Vec<Held> {
    let Ok(v) = std::env::var(VAR) else {
        return Vec::new();
    };
    let ancestors = ancestors();
    parse(&v)
        .into_iter()
        .filter(|h| {
            ancestors.iter().any(|a| {
                a.pid == h.pid
                    && (!cfg!(target_os = "linux") || a.start.is_some() && a.start == h.pid_start)
            })
        })
        .collect()
}

/// A process: its pid and, where /proc tells, when it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Proc {
    pid: i32,
    start: Option<u64>,
}

/// This process's ancestors, nearest first, pid 1 included (a container's entrypoint may be the
/// ancestor pglock); Linux: from /proc; elsewhere only the parent, without its start. (0 is the
/// parent of pid 1, or of a process whose parent is outside its pid namespace.)
fn ancestors() -> Vec<Proc> {
    let mut out = Vec::new();
    let mut pid = nix::unistd::getppid().as_raw();
    while pid > 0 && out.len() < 4096 {
        let (parent, start) = stat_of(pid).unzip();
        out.push(Proc {
            pid,
            start: start.flatten(),
        });
        match parent {
            Some(p) => pid = p,
            None => break,
        }
    }
    out
}

/// When this process started (see [`Held::pid_start`]).
pub fn own_start() -> Option<u64> {
    // Read once: a run asks while the server starts its session (run.rs), off the lock's path.
    static START: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *START.get_or_init(|| stat_of(std::process::id() as i32).and_then(|(_, start)| start))
}

/// Process `pid`'s parent and start time (`/proc/PID/stat` fields 4 and 22).
#[cfg(target_os = "linux")]
fn stat_of(pid: i32) -> Option<(i32, Option<u64>)> {
    use std::io::Read;
    // One read(2) into room for the whole file (about 300 bytes; fields 4 and 22 come within
    // the first 150 after the comm). `fs::read_to_string` would stat the file (size 0, for
    // /proc) and read it in five growing pieces.
    let mut buf = [0u8; 1024];
    let n = std::fs::File::open(format!("/proc/{pid}/stat"))
        .ok()?
        .read(&mut buf)
        .ok()?;
    let stat = std::str::from_utf8(buf.get(..n)?).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let mut rest = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let ppid = rest.nth(1)?.parse().ok()?;
    // Field 22, starttime: the 19th after the comm (state is the 1st).
    let start = rest.nth(17).and_then(|t| t.parse().ok());
    Some((ppid, start))
}

#[cfg(not(target_os = "linux"))]
fn stat_of(_pid: i32) -> Option<(i32, Option<u64>)> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = "2026-11-30 23:01:02.123456";

    fn holder(pid: i32, start: &str) -> Option<Holder> {
        Some(Holder {
            pid,
            start: start.into(),
        })
    }

    fn entry(id: LockId, mode: Mode, db: &str, bpid: i32, slot: Option<u32>) -> Held {
        Held {
            id,
            mode,
            pid: 10,
            pid_start: Some(777),
            db: Some(db.into()),
            holder: holder(bpid, START),
            slot,
        }
    }

    fn row(cells: &[&str]) -> Vec<Option<String>> {
        cells.iter().map(|c| Some(c.to_string())).collect()
    }

    /// The server's row for `h`'s lock held by backend `pid` started `start` in `mode`.
    fn lock_row(h: &Held, pid: i32, start: Option<&str>, mode: &str) -> Vec<Option<String>> {
        let k = h.lock().unwrap();
        vec![
            Some(pid.to_string()),
            start.map(str::to_string),
            Some(mode.into()),
            Some(k.classid().to_string()),
            Some(k.objid().to_string()),
            Some(k.id.objsubid().to_string()),
        ]
    }

    #[test]
    fn round_trip() {
        let a = Held {
            id: LockId::Big(-5),
            mode: Mode::Shared,
            pid: 10,
            pid_start: None,
            db: None,
            holder: None,
            slot: None,
        };
        let b = Held {
            db: Some("app".into()),
            ..a.clone()
        };
        let c = Held {
            id: LockId::Pair(0, 7),
            mode: Mode::Exclusive,
            pid: 12,
            pid_start: Some(5),
            db: Some("odd:%; name".into()),
            holder: holder(4242, START),
            slot: None,
        };
        let d = entry(LockId::Big(7), Mode::Exclusive, "app", 99, Some(3));
        let v = child_value(&[a.clone(), b.clone(), c.clone()], &d);
        assert_eq!(
            v,
            "-5:shared:10;-5:shared:10:app;\
             0,7:exclusive:12.5:odd%3A%25%3B%20name:4242:2026-11-30%2023%3A01%3A02.123456;\
             7:exclusive:10.777:app:99:2026-11-30%2023%3A01%3A02.123456:3"
        );
        assert_eq!(parse(&v), vec![a.clone(), b.clone(), c.clone(), d.clone()]);
        assert_ne!(c.id, LockId::Big(7));
        // The same id in another database is another lock; an entry naming no database (an
        // older pglock's) is taken for any, and then ignored for naming no session.
        assert!(d.is(&LockId::Big(7), "app"));
        assert!(!d.is(&LockId::Big(7), "tenant2"));
        assert!(a.is(&LockId::Big(-5), "tenant2"));
        // A slot's lock is the slot's own id.
        assert_eq!(d.lock().unwrap().id, LockId::Big(key::slot_id(7, 3)));
        assert_eq!(c.lock().unwrap().id, c.id);
    }

    #[test]
    fn garbage_is_dropped_without_panicking() {
        let s = "2026-11-30%2023%3A01%3A02.123456";
        for bad in [
            "",
            ";;;",
            "garbage",
            "1:x:2",
            "1:exclusive",
            "1:exclusive:0",
            "1:exclusive:-3",
            "1:exclusive:+3",
            "1:exclusive: 3",
            "1:exclusive:99999999999",
            "x:exclusive:3",
            "1:Exclusive:3",
            "1:exclusive:3:",
            "1:exclusive:3:db:5",
            "1:exclusive:3:db:5:",
            &format!("1:exclusive:3:db:0:{s}"),
            &format!("1:exclusive:3:db:-1:{s}"),
            "1:exclusive:3:db:5:2026-11-30 23",
            "1:exclusive:3:db:5:2026-11-30%2023%3A01%3A02.12345",
            "1:exclusive:3:db:5:2026-11-30T23%3A01%3A02.123456",
            "1:exclusive:3:db:5:2026-11-30%2023%3A01%3A02.12345Z",
            "1:exclusive:3:db:5:2026'%3B%20DROP",
            "1:exclusive:3:db:5:%",
            "1:exclusive:3:db:5:%2",
            "1:exclusive:3:db:5:%zz",
            "1:exclusive:3:db:5:%C3",
            "1:exclusive:3:db%:5:1",
            "1:exclusive:3:db%ff:5:1",
            &format!("1:exclusive:3:db:5:{s}:"),
            &format!("1:exclusive:3:db:5:{s}:-1"),
            &format!("1:exclusive:3:db:5:{s}:4294967296"),
            &format!("1:exclusive:3:db:5:{s}:1:2"),
            &format!("1:exclusive:3:db:5:{}", "1".repeat(40)),
            "1,2,3:exclusive:3",
            "99999999999999999999:exclusive:3",
            "é:€:😀",
            "\u{0}:\u{0}:\u{0}",
        ] {
            assert!(parse(bad).is_empty(), "{bad:?}");
        }
        // Good entries survive their bad neighbours.
        let v = format!("junk;1:exclusive:3:db:5:{s};1:%:2");
        assert_eq!(parse(&v).len(), 1);
        // Any byte soup, cut anywhere, never panics.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let alphabet = b"0123456789:;%,- exclusivedbAF\xc3";
        for _ in 0..20_000 {
            let mut bytes = Vec::new();
            for _ in 0..(seed % 40) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                bytes.push(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            let _ = parse(&String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn only_the_named_session_holding_the_lock_confirms() {
        let ex = entry(LockId::Big(42), Mode::Exclusive, "app", 77, None);
        let sh = entry(LockId::Big(42), Mode::Shared, "app", 77, None);
        // Held as the entry says.
        assert!(verdict(&ex, &vec![lock_row(&ex, 77, Some(START), "ExclusiveLock")]).is_ok());
        assert!(verdict(&sh, &vec![lock_row(&sh, 77, Some(START), "ShareLock")]).is_ok());
        // Exclusive covers a shared entry; shared does not cover an exclusive one.
        assert!(verdict(&sh, &vec![lock_row(&sh, 77, Some(START), "ExclusiveLock")]).is_ok());
        assert!(verdict(&ex, &vec![lock_row(&ex, 77, Some(START), "ShareLock")]).is_err());
        // A reused pid (another start), another backend, nothing at all.
        let w = verdict(
            &ex,
            &vec![lock_row(
                &ex,
                77,
                Some("2026-11-30 23:01:03.000000"),
                "ExclusiveLock",
            )],
        );
        assert!(w.unwrap_err().contains("does not confirm"));
        assert!(verdict(&ex, &vec![lock_row(&ex, 78, Some(START), "ExclusiveLock")]).is_err());
        assert!(verdict(&ex, &Vec::new()).is_err());
        // Another lock held by that session.
        let other = entry(LockId::Big(43), Mode::Exclusive, "app", 77, None);
        assert!(verdict(
            &ex,
            &vec![lock_row(&other, 77, Some(START), "ExclusiveLock")]
        )
        .is_err());
        // A slot entry needs the slot's lock, not the key's.
        let slot = entry(LockId::Big(42), Mode::Exclusive, "app", 77, Some(1));
        assert!(verdict(
            &slot,
            &vec![lock_row(&ex, 77, Some(START), "ExclusiveLock")]
        )
        .is_err());
        assert!(verdict(
            &slot,
            &vec![lock_row(&slot, 77, Some(START), "ExclusiveLock")]
        )
        .is_ok());
        // A start this user may not see.
        let w = verdict(&ex, &vec![lock_row(&ex, 77, None, "ExclusiveLock")]);
        assert!(matches!(&w, Err(NotConfirmed::Hidden(_))));
        assert!(w.unwrap_err().contains("pg_read_all_stats"));
        // Short rows and nulls from a strange server.
        assert!(verdict(&ex, &vec![row(&["77"]), vec![None; 6]]).is_err());
        // An older pglock's entry names no session.
        let old = Held {
            holder: None,
            ..ex.clone()
        };
        assert!(
            verdict(&old, &vec![lock_row(&ex, 77, Some(START), "ExclusiveLock")])
                .unwrap_err()
                .contains("older pglock")
        );
    }

    #[test]
    fn the_check_asks_about_named_sessions_only() {
        let ex = entry(LockId::Big(42), Mode::Exclusive, "app", 77, None);
        let old = Held {
            holder: None,
            ..ex.clone()
        };
        assert_eq!(confirm_sql(&[&old]), None);
        let sql = confirm_sql(&[&ex, &ex, &old]).unwrap();
        assert_eq!(sql.matches("l.pid = 77").count(), 1, "{sql}");
        assert!(sql.contains("current_database()"), "{sql}");
        // A forged variable with thousands of entries makes a bounded query.
        let many: Vec<Held> = (1..5000)
            .map(|p| entry(LockId::Big(42), Mode::Exclusive, "app", p, None))
            .collect();
        let refs: Vec<&Held> = many.iter().collect();
        let sql = confirm_sql(&refs).unwrap();
        assert_eq!(sql.matches("l.pid = ").count(), MAX_CHECKED);
    }

    #[test]
    fn our_parent_is_an_ancestor() {
        let first = ancestors().first().copied().unwrap();
        assert_eq!(first.pid, nix::unistd::getppid().as_raw());
        // Its start, as our own is read: before ours.
        if cfg!(target_os = "linux") {
            assert!(first.start.is_some() && first.start <= own_start());
        }
        assert!(parse("1:exclusive:5.:app").is_empty());
        assert!(parse("1:exclusive:5.x:app").is_empty());
        assert!(parse("1:exclusive:.9:app").is_empty());
        assert_eq!(parse("1:exclusive:5.9:app")[0].pid_start, Some(9));
    }
}

//! Nesting (contract §4): a `pglock run` started, directly or not, by the child of another pglock
//! for the same lock id must not wait for its own ancestor.
//!
//! Every pglock passes `PGLOCK_HELD` to its child: the locks held by it and its ancestors, as
//! `ID:MODE:PID:DB` entries separated by `;`, ID as the lock id prints (`-42`, or `1,2` for the
//! two-int4 form, a different lock from every bigint id), DB the database name (`%`, `:` and `;`
//! %-escaped): advisory locks are per database, so the same id in another database is another
//! lock. An entry counts only while PID is an ancestor of this process, so a stale variable (a
//! daemon left behind, a copied environment) is ignored. (Two servers with databases of the same
//! name are not told apart.)

use crate::key::LockId;
use crate::request::Mode;

pub const VAR: &str = "PGLOCK_HELD";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub id: LockId,
    pub mode: Mode,
    pub pid: i32,
    /// The database; `None` in an entry of an older pglock (which named none): any database.
    pub db: Option<String>,
}

impl Held {
    /// Whether this entry is the lock `id` in database `db`.
    pub fn is(&self, id: &LockId, db: &str) -> bool {
        self.id == *id && self.db.as_deref().is_none_or(|d| d == db)
    }
}

fn escape(db: &str) -> String {
    db.replace('%', "%25")
        .replace(':', "%3A")
        .replace(';', "%3B")
}

fn unescape(db: &str) -> String {
    db.replace("%3B", ";")
        .replace("%3A", ":")
        .replace("%25", "%")
}

pub fn parse(v: &str) -> Vec<Held> {
    v.split(';')
        .filter_map(|e| {
            let mut f = e.split(':');
            let id = LockId::parse(f.next()?).ok()?;
            let mode = match f.next()? {
                "exclusive" => Mode::Exclusive,
                "shared" => Mode::Shared,
                _ => return None,
            };
            let pid = f.next()?.parse().ok()?;
            let db = f.next().map(unescape);
            Some(Held { id, mode, pid, db })
        })
        .collect()
}

/// The value to pass to the child: the inherited entries that still hold, plus this one.
pub fn child_value(inherited: &[Held], me: &Held) -> String {
    inherited
        .iter()
        .chain(std::iter::once(me))
        .map(|h| {
            let db = h.db.as_deref().map(|d| format!(":{}", escape(d)));
            format!(
                "{}:{}:{}{}",
                h.id,
                h.mode.as_str(),
                h.pid,
                db.unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// The entries of `PGLOCK_HELD` whose pglock is an ancestor of this process.
pub fn held_by_ancestors() -> Vec<Held> {
    let Ok(v) = std::env::var(VAR) else {
        return Vec::new();
    };
    let ancestors = ancestors();
    parse(&v)
        .into_iter()
        .filter(|h| ancestors.contains(&h.pid))
        .collect()
}

/// This process's ancestors, nearest first (Linux: from /proc; elsewhere only the parent).
fn ancestors() -> Vec<i32> {
    let mut out = Vec::new();
    let mut pid = nix::unistd::getppid().as_raw();
    while pid > 1 && out.len() < 4096 {
        out.push(pid);
        match parent_of(pid) {
            Some(p) => pid = p,
            None => break,
        }
    }
    out
}

#[cfg(target_os = "linux")]
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(not(target_os = "linux"))]
fn parent_of(_pid: i32) -> Option<i32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let a = Held {
            id: LockId::Big(-5),
            mode: Mode::Shared,
            pid: 10,
            db: None,
        };
        let b = Held {
            id: LockId::Big(7),
            mode: Mode::Exclusive,
            pid: 11,
            db: Some("app".into()),
        };
        let c = Held {
            id: LockId::Pair(0, 7),
            mode: Mode::Exclusive,
            pid: 12,
            db: Some("odd:%;name".into()),
        };
        let v = child_value(&[a.clone(), b.clone()], &c);
        assert_eq!(
            v,
            "-5:shared:10;7:exclusive:11:app;0,7:exclusive:12:odd%3A%25%3Bname"
        );
        assert_eq!(parse(&v), vec![a.clone(), b.clone(), c.clone()]);
        assert_ne!(c.id, LockId::Big(7));
        assert!(parse("garbage;1:x:2").is_empty());
        // The same id in another database is another lock; an entry naming no database (an
        // older pglock's) is taken for any.
        assert!(b.is(&LockId::Big(7), "app"));
        assert!(!b.is(&LockId::Big(7), "tenant2"));
        assert!(a.is(&LockId::Big(-5), "tenant2"));
    }

    #[test]
    fn our_parent_is_an_ancestor() {
        assert_eq!(
            ancestors().first().copied(),
            Some(nix::unistd::getppid().as_raw())
        );
    }
}

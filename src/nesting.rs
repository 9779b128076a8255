//! Nesting (contract §4): a `pglock run` started, directly or not, by the child of another pglock
//! for the same lock id must not wait for its own ancestor.
//!
//! Every pglock passes `PGLOCK_HELD` to its child: the locks held by it and its ancestors, as
//! `ID:MODE:PID` entries separated by `;`, ID as the lock id prints (`-42`, or `1,2` for the
//! two-int4 form, a different lock from every bigint id). An entry counts only while PID is an ancestor of this
//! process, so a stale variable (a daemon left behind, a copied environment) is ignored.

use crate::key::LockId;
use crate::request::Mode;

pub const VAR: &str = "PGLOCK_HELD";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub id: LockId,
    pub mode: Mode,
    pub pid: i32,
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
            Some(Held { id, mode, pid })
        })
        .collect()
}

/// The value to pass to the child: the inherited entries that still hold, plus this one.
pub fn child_value(inherited: &[Held], me: &Held) -> String {
    inherited
        .iter()
        .chain(std::iter::once(me))
        .map(|h| format!("{}:{}:{}", h.id, h.mode.as_str(), h.pid))
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
        };
        let b = Held {
            id: LockId::Big(7),
            mode: Mode::Exclusive,
            pid: 11,
        };
        let c = Held {
            id: LockId::Pair(0, 7),
            mode: Mode::Exclusive,
            pid: 12,
        };
        let v = child_value(&[a.clone(), b.clone()], &c);
        assert_eq!(v, "-5:shared:10;7:exclusive:11;0,7:exclusive:12");
        assert_eq!(parse(&v), vec![a, b, c.clone()]);
        assert_ne!(c.id, LockId::Big(7));
        assert!(parse("garbage;1:x:2").is_empty());
    }

    #[test]
    fn our_parent_is_an_ancestor() {
        assert_eq!(
            ancestors().first().copied(),
            Some(nix::unistd::getppid().as_raw())
        );
    }
}

//! The lock layer: what a lock is (`key`), taking and holding it on one connection (`acquire`),
//! and what builds on that: fencing tokens (`fence`), `--limit` slots (`semaphore`), nested runs
//! (`nesting`) and the run ledger (`ledger`). Below it is `pg`; above it, the commands.

pub mod acquire;
pub mod fence;
pub mod key;
pub mod ledger;
pub mod nesting;
pub mod semaphore;

pub use acquire::{
    acquire, client_label, connect_waiting, describe_holders, expected_backend, guard_sql, guarded,
    heartbeat_sql, holders, query, release, release_bound, resolve, unlock_pin, Acquire, Holder,
    RecordFailed, Released, Start,
};

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Exclusive,
    Shared,
}

impl Mode {
    /// The `pg_locks.mode` of an advisory lock taken in this mode.
    pub fn pg_mode(self) -> &'static str {
        match self {
            Mode::Exclusive => "ExclusiveLock",
            Mode::Shared => "ShareLock",
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Exclusive => "exclusive",
            Mode::Shared => "shared",
        }
    }
}

/// How long the lock lives on the server: the session, or one transaction held open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Session,
    Transaction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Forever,
    Once,
    Timeout(Duration),
}

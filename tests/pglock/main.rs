//! Integration tests: the built pglock binary against a real PostgreSQL that the suite starts
//! itself (see `harness.rs`). No mock of PostgreSQL anywhere.

#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod harness;

mod child;
mod cli;
mod connection;
mod docs;
mod exit_codes;
mod faults;
mod fence;
mod hostile;
mod leader;
mod locking;
mod migration;
mod nesting;
mod once;
mod operator;
mod pgpool;
mod pooler;
mod restart;
mod semaphore;
mod signals;
mod stall;
mod status;
mod trust;

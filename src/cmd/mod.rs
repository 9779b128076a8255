//! The commands: `run` (with `request`, which turns its command line into a validated request),
//! `status`, `key` and `history`. Each reads the CLI's arguments and drives the layers below.

pub mod history;
pub mod key;
pub mod request;
pub mod run;
pub mod status;

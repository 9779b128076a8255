//! The one error type of pglock and the exit codes of contract §7, in one place.
//!
//! Every failure travels up to `main` as an [`Error`]; `main` prints it as one `pglock:` line and
//! exits with [`Error::exit_code`]. Nothing else in the program calls `process::exit`.

use std::fmt;

/// Exit codes that are pglock's own (the child's code passes through unchanged).
pub mod code {
    /// Bad command line or option values.
    pub const USAGE: i32 = 2;
    /// An internal error: a bug in pglock.
    pub const SOFTWARE: i32 = 70;
    /// PostgreSQL unavailable: cannot connect, authentication or TLS failed, hot standby.
    pub const UNAVAILABLE: i32 = 69;
    /// The lock was lost while the child ran; the child was stopped.
    pub const LOCK_LOST: i32 = 74;
    /// `--max-runtime` elapsed; the child was stopped.
    pub const MAX_RUNTIME: i32 = 124;
    /// The lock was not acquired (busy, or `--timeout` reached). `--conflict-exit-code` overrides.
    pub const NOT_ACQUIRED: i32 = 75;
    /// COMMAND was found but could not be executed.
    pub const NOT_EXECUTABLE: i32 = 126;
    /// COMMAND was not found.
    pub const NOT_FOUND: i32 = 127;
}

/// Why pglock stops without having run the child to completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Usage,
    Unavailable,
    /// Not acquired; carries the exit code to use (75 or `--conflict-exit-code`).
    NotAcquired(i32),
    LockLost,
    MaxRuntime,
    /// A signal ended pglock before the child ran (128 + signal number).
    Signal(i32),
    NotExecutable,
    NotFound,
    Internal,
}

#[derive(Debug, Clone)]
pub struct Error {
    pub kind: Kind,
    pub msg: String,
    /// The server's SQLSTATE, when the server reported the error.
    pub sqlstate: Option<String>,
    /// A connection failure that trying again later may cure: the server down, starting up,
    /// shutting down or in recovery (contract §4). Set where the failure is classified.
    pub transient: bool,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(kind: Kind, msg: impl Into<String>) -> Error {
        Error {
            kind,
            msg: msg.into(),
            sqlstate: None,
            transient: false,
        }
    }
    pub fn with_code(mut self, sqlstate: &str) -> Error {
        self.sqlstate = Some(sqlstate.to_string());
        self
    }
    /// Marks the failure as one that trying again later may cure.
    pub fn transient(mut self) -> Error {
        self.transient = true;
        self
    }
    pub fn usage(msg: impl Into<String>) -> Error {
        Error::new(Kind::Usage, msg)
    }
    pub fn unavailable(msg: impl Into<String>) -> Error {
        Error::new(Kind::Unavailable, msg)
    }
    pub fn internal(msg: impl Into<String>) -> Error {
        Error::new(Kind::Internal, msg)
    }

    /// Prefixes the message, keeping the kind.
    pub fn context_msg(mut self, ctx: &str) -> Error {
        self.msg = format!("{ctx}: {}", self.msg);
        self
    }

    pub fn exit_code(&self) -> i32 {
        match self.kind {
            Kind::Usage => code::USAGE,
            Kind::Unavailable => code::UNAVAILABLE,
            Kind::NotAcquired(c) => c,
            Kind::LockLost => code::LOCK_LOST,
            Kind::MaxRuntime => code::MAX_RUNTIME,
            Kind::Signal(n) => 128 + n,
            Kind::NotExecutable => code::NOT_EXECUTABLE,
            Kind::NotFound => code::NOT_FOUND,
            Kind::Internal => code::SOFTWARE,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Error {}

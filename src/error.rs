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

/// One row of the exit-status table: the code as the reader sees it, a short name for `--help`,
/// and its meaning (Markdown: `code` spans only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    pub code: &'static str,
    pub name: &'static str,
    pub meaning: &'static str,
}

/// The exit-status table (contract §7), the one copy: `pglock run --help`, the man page's EXIT
/// STATUS and the Markdown tables of the README and docs/ are made from it or held equal to it
/// (tests/pglock/docs.rs).
pub const EXIT_STATUS: &[ExitStatus] = &[
    ExitStatus {
        code: "child's code",
        name: "COMMAND's own",
        meaning: "the child exited normally",
    },
    ExitStatus {
        code: "128+N",
        name: "a signal N killed COMMAND",
        meaning: "the child was killed by signal N (or pglock was, while waiting)",
    },
    ExitStatus {
        code: "2",
        name: "usage error",
        meaning: "usage error",
    },
    ExitStatus {
        code: "69",
        name: "PostgreSQL unavailable",
        meaning: "PostgreSQL unavailable: cannot connect, authentication or TLS failed, a hot \
            standby, the run ledger unusable, or no answer in time before the command started \
            (`connect_timeout`, 10 s without it; with `-n` 2 x that in all; with `-w D`, D + 2 s)",
    },
    ExitStatus {
        code: "70",
        name: "internal error",
        meaning: "internal error (a bug in pglock)",
    },
    ExitStatus {
        code: "74",
        name: "lock lost while COMMAND ran",
        meaning: "the lock was lost while the child ran; the child was stopped",
    },
    ExitStatus {
        code: "75",
        name: "lock not acquired (see -E)",
        meaning: "the lock was not acquired (busy, or `--timeout` reached), or the `--once` token \
            was already done; see `--conflict-exit-code`",
    },
    ExitStatus {
        code: "124",
        name: "--max-runtime elapsed",
        meaning: "`--max-runtime` elapsed; the child was stopped",
    },
    ExitStatus {
        code: "126",
        name: "COMMAND not executable",
        meaning: "COMMAND was found but is not executable",
    },
    ExitStatus {
        code: "127",
        name: "COMMAND not found",
        meaning: "COMMAND was not found",
    },
];

/// The exit-status paragraph of `pglock run --help`, from [`EXIT_STATUS`].
pub fn exit_status_help() -> String {
    let items: Vec<String> = EXIT_STATUS
        .iter()
        .map(|e| match e.code {
            "child's code" => e.name.to_string(),
            "128+N" => format!("128+N if {}", e.name),
            c => format!("{c} {}", e.name),
        })
        .collect();
    format!("Exit status: {}.", items.join("; "))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_status_table_has_every_code_of_pglock_once() {
        let codes: Vec<&str> = EXIT_STATUS.iter().map(|e| e.code).collect();
        for c in [
            code::USAGE,
            code::SOFTWARE,
            code::UNAVAILABLE,
            code::LOCK_LOST,
            code::MAX_RUNTIME,
            code::NOT_ACQUIRED,
            code::NOT_EXECUTABLE,
            code::NOT_FOUND,
        ] {
            let c = c.to_string();
            assert_eq!(codes.iter().filter(|x| **x == c).count(), 1, "code {c}");
        }
        assert!(codes.contains(&"child's code") && codes.contains(&"128+N"));
        assert_eq!(codes.len(), 10);
        for e in EXIT_STATUS {
            assert!(
                !e.meaning.contains('|') && !e.meaning.contains("  "),
                "{e:?}"
            );
        }
    }

    #[test]
    fn the_help_lists_every_code() {
        let help = exit_status_help();
        assert!(help.starts_with(
            "Exit status: COMMAND's own; 128+N if a signal N killed COMMAND; 2 usage error; 69 "
        ));
        for e in EXIT_STATUS {
            assert!(help.contains(e.name), "{help}");
        }
    }
}

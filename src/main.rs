//! pglock: run a command while holding a PostgreSQL advisory lock.
//!
//! `main` parses, dispatches, prints the one error line and exits with the error's code; the
//! work is in the modules.

#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
// On Linux with glibc the C runtime calls pglock's own `main` (start.rs), not Rust's start-up.
#![cfg_attr(all(target_os = "linux", target_env = "gnu", not(test)), no_main)]

mod cli;
mod cmd;
mod docs;
mod duration;
mod error;
mod lock;
mod log;
mod pg;
mod proc;
mod signals;
#[cfg(all(target_os = "linux", target_env = "gnu", not(test)))]
mod start;

// musl's allocator returns memory to the kernel at each turn (Cargo.toml); dlmalloc keeps it.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

use clap::FromArgMatches;
use error::{Error, Kind};
use std::io::Write;

#[cfg(not(all(target_os = "linux", target_env = "gnu", not(test))))]
fn main() {
    std::process::exit(run());
}

/// The whole of pglock: what it does, reported, and the status it exits with.
fn run() -> i32 {
    let code = match real_main() {
        Ok(code) => code,
        Err(e) => {
            report(&e);
            e.exit_code()
        }
    };
    let _ = std::io::stdout().flush();
    code
}

fn real_main() -> Result<i32, Error> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // `pglock run` is parsed by its subcommand alone; anything else, and whatever that cannot
    // parse (help, version, errors), by the whole command line.
    let run = args.get(1).is_some_and(|a| a == "run");
    let matches = match run.then(|| cli::run_command().try_get_matches_from(&args)) {
        Some(Ok(m)) => m,
        _ => match cli::command().try_get_matches_from(&args) {
            Ok(m) => m,
            Err(e) => return clap_error(e),
        },
    };
    let parsed = cli::Cli::from_arg_matches(&matches).map_err(|e| Error::usage(first_line(&e)))?;
    match parsed.command {
        cli::Command::Key(k) => cmd::key::run(k, sub_matches(&matches)),
        cli::Command::Status(args) => cmd::status::run(args, sub_matches(&matches)),
        cli::Command::History(args) => cmd::history::run(args, sub_matches(&matches)),
        cli::Command::Generate { what } => {
            let mut out = std::io::stdout().lock();
            match what.as_str() {
                "man" => docs::man(&mut out).map_err(|e| Error::internal(e.to_string()))?,
                // The exit-status table as the README and docs/ have it (the docs test compares).
                "exit-status" => out
                    .write_all(docs::exit_status_markdown().as_bytes())
                    .map_err(|e| Error::internal(e.to_string()))?,
                shell => docs::completion(shell, &mut out).map_err(Error::usage)?,
            }
            Ok(0)
        }
        cli::Command::Run(args) => {
            let req = cmd::request::run_request(args, sub_matches(&matches))?;
            let run_id = log::new_run_id();
            let lock_id = match req.key.pending {
                Some(_) => "null".to_string(),
                None => req.key.id.json(),
            };
            log::init(req.log.clone(), run_id.clone(), req.key.label(), lock_id);
            cmd::run::run(req, &run_id)
        }
    }
}

/// The matches of the subcommand that was parsed (clap requires one).
fn sub_matches(m: &clap::ArgMatches) -> &clap::ArgMatches {
    m.subcommand().map_or(m, |(_, sub)| sub)
}

/// The last event of a failed run: the error, with the run's timings and the exit code.
fn report(e: &Error) {
    let event = match e.kind {
        Kind::Usage => "usage_error",
        Kind::Unavailable => "unavailable",
        Kind::NotAcquired(_) => "not_acquired",
        Kind::LockLost => "lock_lost",
        Kind::MaxRuntime => "max_runtime",
        Kind::Signal(_) => "signal",
        Kind::NotExecutable | Kind::NotFound => "exec_failed",
        Kind::Internal => "internal_error",
    };
    let (waited, ran) = log::timings();
    let level = match e.kind {
        Kind::NotAcquired(_) | Kind::Signal(_) => log::Level::Warn,
        _ => log::Level::Error,
    };
    // Not acquired and interrupted are outcomes, not faults: shown unless -q, and then as errors,
    // except a skip that exits 0 (`-E 0`), which is no error at all: -q is silent, as `flock -n`.
    if !log::enabled(level) && e.kind == Kind::NotAcquired(0) {
        return;
    }
    log::event(
        if log::enabled(level) {
            level
        } else {
            log::Level::Error
        },
        event,
        &e.msg,
        &[
            ("waited_ms", log::V::I(waited)),
            ("ran_ms", log::V::I(ran)),
            ("exit_code", log::V::I(i64::from(e.exit_code()))),
            ("cause", log::V::S(event)),
        ],
    );
}

fn first_line(e: &clap::Error) -> String {
    // clap's first paragraph, on one line ("the following required arguments were not
    // provided: <COMMAND>...").
    let text = e.render().to_string();
    let para: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.is_empty())
        .collect();
    let line = para.join(" ");
    match line.strip_prefix("error: ") {
        Some(rest) => rest.to_string(),
        None if line.is_empty() => "invalid arguments".into(),
        None => line,
    }
}

/// Help and version print as clap does (exit 0); every other clap error becomes one line, exit 2.
fn clap_error(e: clap::Error) -> Result<i32, Error> {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            Ok(
                if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    2
                } else {
                    0
                },
            )
        }
        _ => Err(Error::usage(format!(
            "{} (see 'pglock --help')",
            first_line(&e)
        ))),
    }
}

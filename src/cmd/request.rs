//! Turns the raw command line (`cli.rs`) into a validated request. Every bad value and every bad
//! combination of options is rejected here, as a usage error (exit 2) with one line that says what
//! to change. Nothing below this module sees clap.

use crate::cli::{LockArgs, LogFormat, RunArgs, ScopeArg};
use crate::duration;
use crate::error::{code, Error, Result};
use crate::lock::key::{LockId, LockKey, Tool};
use crate::lock::ledger::Ledger;
use crate::lock::semaphore::MAX_LIMIT;
use crate::lock::{Mode, Scope, Wait};
use crate::log::{LogSettings, Verbosity};
use clap::parser::ValueSource;
use clap::ArgMatches;
use std::ffi::OsString;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RunRequest {
    pub key: LockKey,
    pub mode: Mode,
    pub scope: Scope,
    /// `--pooler session`: the user declared a session-mode pooler in front of the server.
    pub session_pooler: bool,
    /// `--limit N`: a semaphore of N slots.
    pub limit: Option<u32>,
    pub wait: Wait,
    pub conflict_exit_code: i32,
    pub database_url: Option<String>,
    pub heartbeat: Duration,
    pub kill_after: Duration,
    pub release_after: Duration,
    pub max_runtime: Option<Duration>,
    /// `--fencing-token`: the child gets `PGLOCK_FENCING_TOKEN` (contract §11).
    pub fencing_token: bool,
    /// `--once TOKEN` (contract §12).
    pub once: Option<String>,
    /// The run ledger: with `--once` or `--ledger` (contract §12).
    pub ledger: Option<Ledger>,
    pub log: LogSettings,
    pub command: Vec<OsString>,
}

fn from_cli(m: &ArgMatches, id: &str) -> bool {
    m.value_source(id) == Some(ValueSource::CommandLine)
}

/// The lock a command names, from its forms (contract §2), the same for every command: exactly
/// one of `--key`, `--key-id`, `--key-hashtext` and `--lock-of`, or none (`None`). A form on the
/// command line wins over the forms in the environment (`run` only: a nested pglock inherits its
/// ancestor's `PGLOCK_KEY` or `PGLOCK_KEY_ID`); two on the command line, or none there and two in
/// the environment, are a usage error.
pub fn lock_key(args: &LockArgs, m: &ArgMatches) -> Result<Option<LockKey>> {
    let forms: [(&str, &str, &str, &Option<String>); 4] = [
        ("key", "--key", "PGLOCK_KEY", &args.key),
        ("key_id", "--key-id", "PGLOCK_KEY_ID", &args.key_id),
        (
            "key_hashtext",
            "--key-hashtext",
            "PGLOCK_KEY_HASHTEXT",
            &args.key_hashtext,
        ),
        ("lock_of", "--lock-of", "PGLOCK_LOCK_OF", &args.lock_of),
    ];
    let given: Vec<_> = forms.iter().filter(|f| f.3.is_some()).collect();
    let on_cli: Vec<_> = given.iter().filter(|f| from_cli(m, f.0)).collect();
    let chosen = match (on_cli.as_slice(), given.as_slice()) {
        ([one], _) => **one,
        ([], [one]) => *one,
        ([], []) => {
            for (id, opt) in [
                ("lock_schema", "--lock-schema"),
                ("lock_table", "--lock-table"),
            ] {
                if from_cli(m, id) {
                    return Err(Error::usage(format!("{opt} goes with --lock-of TOOL")));
                }
            }
            return Ok(None);
        }
        ([], many) => {
            return Err(Error::usage(format!(
                "give one lock, not {}: {} are set in the environment",
                many.len(),
                many.iter().map(|f| f.2).collect::<Vec<_>>().join(" and ")
            )))
        }
        (many, _) => {
            return Err(Error::usage(format!(
                "give one lock, not {}: {} exclude each other",
                many.len(),
                many.iter().map(|f| f.1).collect::<Vec<_>>().join(" and ")
            )))
        }
    };
    let lock_of = chosen.0 == "lock_of";
    // --lock-schema and --lock-table belong to --lock-of; from the environment they go with an
    // environment --lock-of, and are ignored with a lock given on the command line instead.
    for (id, opt) in [
        ("lock_schema", "--lock-schema"),
        ("lock_table", "--lock-table"),
    ] {
        let set = m.value_source(id).is_some();
        if set && !lock_of && (from_cli(m, id) || !from_cli(m, chosen.0)) {
            return Err(Error::usage(format!(
                "{opt} goes with --lock-of TOOL, not with {}",
                chosen.1
            )));
        }
    }
    let value = chosen.3.as_deref().unwrap_or_default();
    let key = match chosen.0 {
        "key" => LockKey::from_name(value),
        "key_id" => LockKey::from_id_text(value),
        "key_hashtext" => LockKey::hashtext(value),
        _ => {
            let tool = Tool::from_name(value)?;
            // An input from the environment that a --lock-of on the command line does not use
            // was meant for another tool: ignored, where the command line's own is an error.
            let input = |id: &str, v: &Option<String>, used: bool| match v {
                Some(_) if !used && !from_cli(m, id) && from_cli(m, chosen.0) => None,
                v => v.clone(),
            };
            LockKey::of_tool(
                tool,
                input("lock_schema", &args.lock_schema, tool.uses_schema()).as_deref(),
                input(
                    "lock_table",
                    &args.lock_table,
                    tool.default_table().is_some(),
                )
                .as_deref(),
            )
        }
    }?;
    Ok(Some(key))
}

/// Parses duration option `--name`; the error names the variable when the value came from the
/// environment (`PGLOCK_TIMEOUT: invalid duration ...`), as the user wrote it there.
fn duration_opt(m: &ArgMatches, name: &str, text: &str) -> Result<Duration> {
    duration::parse(text).map_err(|e| {
        let from = match m.value_source(&name.replace('-', "_")) {
            Some(ValueSource::EnvVariable) => {
                format!("PGLOCK_{}", name.replace('-', "_").to_uppercase())
            }
            _ => format!("--{name}"),
        };
        Error::usage(format!("{from}: {e}"))
    })
}

/// Validates `pglock run`. `m` is the run subcommand's matches, used to tell command-line values
/// from environment ones: a key given on the command line wins over the other kind of key in the
/// environment (a nested pglock inherits `PGLOCK_KEY` from its parent).
pub fn run_request(args: RunArgs, m: &ArgMatches) -> Result<RunRequest> {
    let log = LogSettings {
        verbosity: if args.quiet {
            Verbosity::Quiet
        } else if args.verbose {
            Verbosity::Verbose
        } else {
            Verbosity::Normal
        },
        json: args.log_format == LogFormat::Json,
    };

    let key = lock_key(&args.lock, m)?.ok_or_else(|| {
        Error::usage(
            "no lock given: add one of --key NAME, --key-id ID, --key-hashtext NAME or --lock-of TOOL (or set PGLOCK_KEY, ...)",
        )
    })?;

    let wait = match (args.no_wait, &args.timeout) {
        (true, Some(_)) => {
            return Err(Error::usage(
                "--no-wait and --timeout exclude each other: choose one",
            ))
        }
        (true, None) => Wait::Once,
        (false, Some(t)) => {
            let d = duration_opt(m, "timeout", t)?;
            if d.is_zero() {
                Wait::Once
            } else {
                Wait::Timeout(d)
            }
        }
        (false, None) => Wait::Forever,
    };

    let conflict_exit_code = match args.conflict_exit_code.trim().parse::<i32>() {
        Ok(n) if (0..=255).contains(&n) => n,
        _ => {
            return Err(Error::usage(format!(
                "--conflict-exit-code '{}': give a number from 0 to 255 (default {})",
                args.conflict_exit_code,
                code::NOT_ACQUIRED
            )))
        }
    };

    let limit = match &args.limit {
        None => None,
        Some(t) => match t.trim().parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Some(n),
            _ => {
                return Err(Error::usage(format!(
                    "--limit '{t}': give a number of slots from 1 to {MAX_LIMIT}"
                )))
            }
        },
    };
    if limit.is_some() {
        // The slots are other locks, derived from a bigint id: they exclude neither the code
        // that takes the lock itself nor a tool.
        let why = if matches!(key.id, LockId::Pair(..)) {
            Some("the two-int4 form A,B has no bigint id to derive slots from")
        } else if key.name.is_none() && key.what.is_some() {
            Some("its slots would be other locks, which exclude neither the code nor the tool that takes this one")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(Error::usage(format!(
                "--limit works with --key NAME and a bigint --key-id only: with lock \"{}\", {why}",
                key.label()
            )));
        }
    }
    if limit.is_some() && args.shared {
        return Err(Error::usage(
            "--limit and --shared exclude each other: a semaphore slot is held exclusively",
        ));
    }
    if limit.is_some() && args.scope == ScopeArg::Transaction {
        return Err(Error::usage("--limit needs --scope session: its waiters are woken by LISTEN/NOTIFY, which a transaction pooler does not carry"));
    }

    let heartbeat = duration_opt(m, "heartbeat", &args.heartbeat)?;
    if heartbeat < Duration::from_millis(100) {
        return Err(Error::usage("--heartbeat must be at least 100ms"));
    }
    let kill_after = duration_opt(m, "kill-after", &args.kill_after)?;
    let release_after = duration_opt(m, "release-after", &args.release_after)?;
    check_timing_rule(heartbeat, kill_after, release_after)?;
    let max_runtime = match &args.max_runtime {
        Some(t) => match duration_opt(m, "max-runtime", t)? {
            d if d.is_zero() => return Err(Error::usage("--max-runtime must be longer than 0")),
            d => Some(d),
        },
        None => None,
    };

    if args.command.first().is_none_or(|c| c.is_empty()) {
        return Err(Error::usage(
            "no COMMAND given: pglock run --key NAME -- COMMAND [ARG...]",
        ));
    }

    let (once, ledger) = once_and_ledger(&args, m)?;

    let database_url = crate::pg::conninfo::database_url(args.conn.database_url);

    Ok(RunRequest {
        key,
        limit,
        scope: match args.scope {
            ScopeArg::Session => Scope::Session,
            ScopeArg::Transaction => Scope::Transaction,
        },
        session_pooler: args.pooler.is_some(),
        mode: if args.shared {
            Mode::Shared
        } else {
            Mode::Exclusive
        },
        wait,
        conflict_exit_code,
        database_url,
        heartbeat,
        kill_after,
        release_after,
        max_runtime,
        fencing_token: args.fencing_token,
        once,
        ledger,
        log,
        command: args.command,
    })
}

/// `--once TOKEN` and the ledger it needs (contract §12): `--ledger TABLE`, or the default table
/// when only `--once` is given. An empty `PGLOCK_ONCE` or `PGLOCK_LEDGER` in the environment is
/// unset; an empty `--once` on the command line (`--once "$GIT_SHA"` with no GIT_SHA) is an error.
fn once_and_ledger(args: &RunArgs, m: &ArgMatches) -> Result<(Option<String>, Option<Ledger>)> {
    let given =
        |id: &str, v: &Option<String>| v.clone().filter(|v| !v.is_empty() || from_cli(m, id));
    let once = given("once", &args.once);
    if let Some(t) = &once {
        crate::lock::ledger::validate_token(t)?;
    }
    let ledger = match (given("ledger", &args.ledger), &once) {
        (Some(t), _) => Some(Ledger::parse(&t)?),
        (None, Some(_)) => Some(Ledger::parse(crate::lock::ledger::DEFAULT_TABLE)?),
        (None, None) => None,
    };
    Ok((once, ledger))
}

/// Slack for scheduling and the kernel's delivery of SIGKILL, in the timing rule.
pub const RULE_MARGIN: Duration = Duration::from_secs(1);

/// The timing rule of contract §6: a vanished pglock must have stopped its child before the server
/// frees the lock. pglock detects a silent connection within 2 x heartbeat of its start, and the
/// server's idle clock may have started up to one heartbeat before it, so:
/// `3 x heartbeat + kill-after + margin <= release-after`.
pub fn check_timing_rule(
    heartbeat: Duration,
    kill_after: Duration,
    release_after: Duration,
) -> Result<()> {
    let need = heartbeat * 3 + kill_after + RULE_MARGIN;
    if release_after < need {
        return Err(Error::usage(format!(
            "--release-after {} is too short for --heartbeat {} and --kill-after {}: the server could free \
             the lock before the command is stopped; it needs at least 3 x heartbeat + kill-after + 1s = {} \
             (raise --release-after, or lower --heartbeat or --kill-after)",
            duration::format(release_after),
            duration::format(heartbeat),
            duration::format(kill_after),
            duration::format(need)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_rule() {
        let s = Duration::from_secs;
        assert!(check_timing_rule(s(5), s(10), s(30)).is_ok());
        assert!(check_timing_rule(s(5), s(10), s(26)).is_ok());
        assert!(check_timing_rule(s(5), s(10), s(25)).is_err());
        assert!(check_timing_rule(s(10), s(10), s(30)).is_err());
    }
}

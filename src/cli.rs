//! The command line as clap sees it: raw types only. `cmd/request.rs` turns these into a validated
//! request; nothing below that layer sees clap.

use clap::builder::TypedValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::ffi::{OsStr, OsString};

#[derive(Debug, Parser)]
#[command(
    name = "pglock",
    version,
    about = "Run a command while holding a PostgreSQL advisory lock",
    long_about = "Run a command while holding a PostgreSQL advisory lock.\n\n\
        pglock opens one dedicated PostgreSQL connection, takes an advisory lock, runs COMMAND as \
        its child, forwards signals to it, watches the lock while it runs, and on exit releases \
        the lock and exits with the child's status.",
    after_help = "Examples:\n  \
        pglock run --key seed -- ./seed.sh\n  \
        pglock run -n --key nightly-report -- ./report.sh     # skip if already running\n  \
        pglock run -w 5m --key migrate -- ./migrate up         # wait at most 5 minutes\n  \
        pglock key seed --sql                                  # take the same lock from SQL\n  \
        pglock run --lock-of rails -- ./seed.sh                # never while Rails migrates",
    propagate_version = true,
    disable_help_subcommand = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
pub enum Command {
    /// Take the lock, run COMMAND, release the lock, exit with COMMAND's status
    #[command(
        after_help = run_after_help(),
        override_usage = "pglock run [OPTIONS] LOCK -- COMMAND [ARG]...\n       \
            LOCK: --key NAME | --key-id ID | --key-id A,B | --key-hashtext NAME | --lock-of TOOL"
    )]
    Run(RunArgs),
    /// Print the advisory lock id of a lock (or the SQL that yields it)
    #[command(after_help = "Examples:\n  \
            pglock key seed                          # the id of --key seed, computed here\n  \
            pglock key seed --sql                    # the same as an SQL expression\n  \
            pglock key --key-id 1,2 --sql            # 1, 2: pg_advisory_lock(1, 2)\n  \
            pglock key --key-hashtext cron:sync      # asks the server: hashtext is its own hash\n  \
            pglock key --lock-of rails               # reads current_database() on the server\n  \
            pglock key --lock-of flyway --lock-schema app --sql\n\n\
            Forms that need the server's answer connect as `pglock run` does (--database-url, \
            PGLOCK_DATABASE_URL, DATABASE_URL, then libpq's PG* variables); the others never connect.")]
    Key(KeyArgs),
    /// List the advisory locks held and awaited on the database
    #[command(
        after_help = "Columns: lock id, key name (for pglock's own sessions), mode, held or waiting, pid, user,\nclient address, application, and age (waiting: since the wait began; held: since the session\nconnected); a --limit run waiting for a slot shows as waiting. A role without superuser rights\nsees its own sessions in full and the others' locks with what PostgreSQL shows it.\n\nWith a lock form (--key NAME, --key-id ID, ...) only that lock is listed and, like grep, the\nexit status is 0 when it is held and 1 when it is not (the text then says \"is not held\").\n--json writes lock ids as strings of digits (\"lock_id\":\"1851639526980669642\"): 64-bit\nintegers do not survive jq 1.6 or JavaScript as numbers.\n\nExamples:\n  pglock status\n  pglock status --key seed >/dev/null && echo \"seed is running\"\n  pglock status --json | jq -r '.[] | select(.state == \"held\") | .lock_id'"
    )]
    Status(StatusArgs),
    /// List the run ledger's rows of a lock (runs with --once or --ledger), newest first
    #[command(after_help = "Examples:\n  \
            pglock history --key seed\n  \
            pglock history --key seed --json --ledger ops.pglock_runs")]
    History(HistoryArgs),
    /// Write the man page or a shell completion script to stdout (for packaging)
    #[command(hide = true)]
    Generate {
        /// man, bash, zsh or fish
        what: String,
    },
}

const RUN_EXAMPLES: &str = "Examples:\n  \
    pglock run --key seed -- ./seed.sh\n  \
    pglock run --no-wait --key nightly -- ./nightly.sh      # exit 75 if another run holds it\n  \
    pglock run --timeout 30s --key migrate -- ./migrate up  # give up after 30 seconds\n  \
    PGLOCK_KEY=seed pglock run -- ./seed.sh                 # options from the environment\n  \
    pglock run --key-hashtext cron:sync -- ./sync.sh        # = pg_advisory_lock(hashtext('cron:sync'))\n  \
    pglock run -w 10m --lock-of golang-migrate -- ./seed.sh # wait while `migrate up` runs\n\n\
    Durations: a bare number is seconds (10, 2.5, as flock -w 10), or 250ms, 1.5s, 5m, 1h, 1m30s. \
    Boolean variables (PGLOCK_NO_WAIT, PGLOCK_SHARED, PGLOCK_FENCING_TOKEN, PGLOCK_QUIET, \
    PGLOCK_VERBOSE) take 1/0, true/false, yes/no, on/off in any case; empty is false.";

/// The examples and notes after `pglock run --help`'s options, ending with the exit status
/// (from the one table, `error::EXIT_STATUS`).
fn run_after_help() -> String {
    format!("{RUN_EXAMPLES}\n\n{}", crate::error::exit_status_help())
}

/// The lock forms (contract §2), one declaration for `run`, `status`, `history` and `key`.
/// [`command`] gives them their environment variables in `run`; which form wins, and what goes
/// with what, is checked by `cmd::request::lock_key`, the same for every command.
#[derive(Debug, Args)]
pub struct LockArgs {
    /// Lock NAME: mapped to a 64-bit advisory lock id (see `pglock key`)
    #[arg(long, value_name = "NAME", help_heading = "Lock")]
    pub key: Option<String>,

    /// Raw advisory lock id, decimal or hex (0x47524f4f), as used by pg_advisory_lock(bigint); or
    /// A,B, two 32-bit keys as used by pg_advisory_lock(int, int), a different lock
    #[arg(
        long,
        value_name = "ID",
        allow_hyphen_values = true,
        help_heading = "Lock"
    )]
    pub key_id: Option<String>,

    /// The lock of pg_advisory_lock(hashtext('NAME')), computed by the server on the lock connection
    #[arg(
        long,
        value_name = "NAME",
        allow_hyphen_values = true,
        help_heading = "Lock"
    )]
    pub key_hashtext: Option<String>,

    /// The advisory lock TOOL takes around its migrations, computed as TOOL does on this database
    ///
    /// golang-migrate is the migrate CLI and migrate.New (opened from a database URL: its database
    /// name is the URL's path with the leading slash); golang-migrate-with-instance is
    /// postgres.WithInstance (current_database()). See docs/migration-tools.md for each tool's formula and what
    /// it does while pglock holds its lock.
    #[arg(
        long,
        value_name = "TOOL",
        value_parser = tool_values(),
        help_heading = "Lock"
    )]
    pub lock_of: Option<String>,

    /// With --lock-of golang-migrate or flyway: the schema of the migrations table [default: current_schema()]
    #[arg(long, value_name = "SCHEMA", help_heading = "Lock")]
    pub lock_schema: Option<String>,

    /// With --lock-of golang-migrate or flyway: the migrations table [default: schema_migrations, flyway_schema_history]
    #[arg(long, value_name = "TABLE", help_heading = "Lock")]
    pub lock_table: Option<String>,
}

/// The connection, for every command that connects.
#[derive(Debug, Args)]
pub struct ConnArgs {
    /// PostgreSQL connection URI or key=value string [default: DATABASE_URL, then libpq's PG* variables]
    #[arg(
        long,
        value_name = "URL",
        env = "PGLOCK_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
}

/// The environment variables of `run`'s lock forms (contract §1).
const RUN_LOCK_ENV: [(&str, &str); 6] = [
    ("key", "PGLOCK_KEY"),
    ("key_id", "PGLOCK_KEY_ID"),
    ("key_hashtext", "PGLOCK_KEY_HASHTEXT"),
    ("lock_of", "PGLOCK_LOCK_OF"),
    ("lock_schema", "PGLOCK_LOCK_SCHEMA"),
    ("lock_table", "PGLOCK_LOCK_TABLE"),
];

/// The command line: [`Cli`]'s definition, with `run`'s lock forms read from the environment too
/// and `pglock key`'s `--key` hidden (its NAME is positional there).
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command()
        .mut_subcommand("run", run_env)
        .mut_subcommand("key", |key| key.mut_arg("key", |a| a.hide(true)))
}

/// `run` as [`command`] has it: its lock forms read from the environment too.
fn run_env(run: clap::Command) -> clap::Command {
    RUN_LOCK_ENV
        .iter()
        .fold(run, |c, (id, var)| c.mut_arg(*id, |a| a.env(*var)))
        .mut_arg("database_url", |a| a.help_heading("Connection"))
}

/// The command line of an argument list that starts with `run`: `pglock` with its `run`
/// subcommand alone, which parses what [`command`] parses, to the same matches, without building
/// the other subcommands (their arguments and help texts: about a tenth of a run's client time
/// before it connects). Help, version and errors are [`command`]'s: on any error the caller
/// parses again with it.
pub fn run_command() -> clap::Command {
    clap::Command::new("pglock")
        .version(env!("CARGO_PKG_VERSION"))
        .propagate_version(true)
        .disable_help_subcommand(true)
        .subcommand(run_env(RunArgs::augment_args(clap::Command::new("run"))))
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub lock: LockArgs,

    /// Try once; if the lock is held, do not run COMMAND and exit 75
    #[arg(short = 'n', long, env = "PGLOCK_NO_WAIT", value_parser = EnvBool, help_heading = "Lock")]
    pub no_wait: bool,

    /// Wait at most DURATION for the lock (10 = 10 seconds, 1.5s, 250ms, 5m, 1m30s), then exit 75;
    /// 0 is --no-wait. A server that is down or starting is waited for too (without -w: for a
    /// minute)
    #[arg(
        short = 'w',
        long,
        value_name = "DURATION",
        allow_hyphen_values = true,
        env = "PGLOCK_TIMEOUT",
        help_heading = "Lock"
    )]
    pub timeout: Option<String>,

    /// Take a shared lock: shared holders run together, exclusive holders wait for all of them
    #[arg(long, env = "PGLOCK_SHARED", value_parser = EnvBool, help_heading = "Lock")]
    pub shared: bool,

    /// session: a session lock (pg_advisory_lock); transaction: pg_advisory_xact_lock in a
    /// transaction held open while COMMAND runs, for PgBouncer in transaction pooling mode
    #[arg(
        long,
        value_name = "SCOPE",
        env = "PGLOCK_SCOPE",
        default_value = "session",
        help_heading = "Lock"
    )]
    pub scope: ScopeArg,

    /// session: a pooler or proxy in session mode sits in front of the server (PgBouncer's
    /// pool_mode = session, pgpool-II): a session lock is taken through it. Without it, a
    /// session lock through any pooler or proxy is refused (exit 69)
    #[arg(
        long,
        value_name = "MODE",
        env = "PGLOCK_POOLER",
        help_heading = "Lock"
    )]
    pub pooler: Option<PoolerArg>,

    /// A counting semaphore: up to N runs of this key at once, each holding one of N slot locks
    #[arg(
        long,
        value_name = "N",
        allow_hyphen_values = true,
        env = "PGLOCK_LIMIT",
        help_heading = "Lock"
    )]
    pub limit: Option<String>,

    /// Give COMMAND PGLOCK_FENCING_TOKEN, an integer greater than every earlier holder's on the
    /// cluster (the server's transaction id; costs one)
    #[arg(long, env = "PGLOCK_FENCING_TOKEN", value_parser = EnvBool, help_heading = "Lock")]
    pub fencing_token: bool,

    /// At most one successful run per lock and TOKEN: under the lock, a TOKEN already done in
    /// the run ledger skips COMMAND (exit 75, or -E); only exit 0 marks it done
    ///
    /// For example --once "$(date -u +%F)" (once a day) or --once "$GIT_SHA" (once per commit).
    /// COMMAND gets PGLOCK_ONCE_TOKEN and PGLOCK_ONCE_SQL, a statement to run in its own last
    /// transaction on the same database: the token is then done exactly when that transaction
    /// commits. See --ledger for the table.
    #[arg(long, value_name = "TOKEN", env = "PGLOCK_ONCE", help_heading = "Lock")]
    pub once: Option<String>,

    /// The run ledger's table, TABLE or SCHEMA.TABLE, created on first use [default:
    /// pglock_runs]; without --once, every run is recorded in it (an audit trail)
    #[arg(
        long,
        value_name = "TABLE",
        env = "PGLOCK_LEDGER",
        help_heading = "Lock"
    )]
    pub ledger: Option<String>,

    /// Exit code when the lock is not acquired
    #[arg(
        short = 'E',
        long,
        value_name = "N",
        allow_hyphen_values = true,
        env = "PGLOCK_CONFLICT_EXIT_CODE",
        default_value = "75",
        help_heading = "Lock"
    )]
    pub conflict_exit_code: String,

    #[command(flatten)]
    pub conn: ConnArgs,

    /// Stop COMMAND after DURATION (SIGTERM, then SIGKILL after --kill-after) and exit 124
    #[arg(
        long,
        value_name = "DURATION",
        allow_hyphen_values = true,
        env = "PGLOCK_MAX_RUNTIME",
        help_heading = "Child"
    )]
    pub max_runtime: Option<String>,

    /// After SIGTERM (lost lock, --max-runtime), wait this long before SIGKILL
    #[arg(
        long,
        value_name = "DURATION",
        allow_hyphen_values = true,
        env = "PGLOCK_KILL_AFTER",
        default_value = "10s",
        help_heading = "Child"
    )]
    pub kill_after: String,

    /// How often the lock is checked while COMMAND runs; a silent connection is detected within 2x this
    #[arg(
        long,
        value_name = "DURATION",
        allow_hyphen_values = true,
        env = "PGLOCK_HEARTBEAT",
        default_value = "5s",
        help_heading = "Child"
    )]
    pub heartbeat: String,

    /// The server frees the lock of a vanished pglock no sooner than this (TCP keepalive and user
    /// timeout of the session); must exceed 3 x --heartbeat + --kill-after
    #[arg(
        long,
        value_name = "DURATION",
        allow_hyphen_values = true,
        env = "PGLOCK_RELEASE_AFTER",
        default_value = "30s",
        help_heading = "Child"
    )]
    pub release_after: String,

    /// Errors only: nothing at all for a skip that exits 0 (-E 0), as flock -n
    #[arg(short, long, env = "PGLOCK_QUIET", value_parser = EnvBool, help_heading = "Output")]
    pub quiet: bool,

    /// More detail (connection, queries, signals)
    #[arg(short, long, env = "PGLOCK_VERBOSE", value_parser = EnvBool, help_heading = "Output")]
    pub verbose: bool,

    /// Log line format on stderr
    #[arg(
        long,
        value_name = "FORMAT",
        env = "PGLOCK_LOG_FORMAT",
        default_value = "text",
        help_heading = "Output"
    )]
    pub log_format: LogFormat,

    /// The command to run while the lock is held, and its arguments (no shell)
    #[arg(
        value_name = "COMMAND",
        trailing_var_arg = true,
        required = true,
        num_args = 1..
    )]
    pub command: Vec<OsString>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScopeArg {
    Session,
    Transaction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PoolerArg {
    Session,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub lock: LockArgs,

    /// One JSON array of lock objects instead of a table
    #[arg(long)]
    pub json: bool,

    /// Also show each listed lock's last success in this run ledger (TABLE or SCHEMA.TABLE)
    #[arg(long, value_name = "TABLE")]
    pub ledger: Option<String>,

    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub lock: LockArgs,

    /// The run ledger's table, TABLE or SCHEMA.TABLE [default: pglock_runs]
    #[arg(long, value_name = "TABLE", env = "PGLOCK_LEDGER")]
    pub ledger: Option<String>,

    /// One JSON array of run objects instead of a table (ids as strings)
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Args)]
pub struct KeyArgs {
    /// The key NAME (as --key NAME)
    #[arg(value_name = "NAME", allow_hyphen_values = true)]
    pub name: Option<String>,

    #[command(flatten)]
    pub lock: LockArgs,

    /// Print the SQL that yields the id (the argument(s) of pg_advisory_lock) instead of the id
    #[arg(long)]
    pub sql: bool,

    #[command(flatten)]
    pub conn: ConnArgs,

    /// Print the slot lock ids of `run --limit N` (with --sql: the SQL that takes a free slot)
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,

    /// Print the fence statements of the lock (contract §11) for code that takes it itself
    #[arg(long, conflicts_with_all = ["sql", "limit"])]
    pub fence_sql: bool,

    /// Print the CREATE statements of the run ledger (contract §12), for a DBA; no LOCK needed
    #[arg(long, conflicts_with_all = ["sql", "limit", "fence_sql"])]
    pub ledger_sql: bool,

    /// With --ledger-sql: the ledger's table, TABLE or SCHEMA.TABLE [default: pglock_runs]
    #[arg(long, value_name = "TABLE", env = "PGLOCK_LEDGER")]
    pub ledger: Option<String>,
}

/// The one rule for boolean options set from the environment (contract §1): `1/0`, `true/false`,
/// `yes/no`, `on/off` in any case, and empty is false. Anything else is a usage error that names
/// the variable. clap's `BoolishValueParser` also takes `y`, `t`, ... and names the flag, which
/// the user never typed; `FalseyValueParser` takes any other text as true.
#[derive(Clone, Copy, Debug)]
pub struct EnvBool;

impl EnvBool {
    /// The value of `text`, or `None` when it is not one of the accepted words.
    pub fn parse(text: &str) -> Option<bool> {
        match text.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Some(true),
            "" | "0" | "false" | "no" | "off" => Some(false),
            _ => None,
        }
    }
}

impl TypedValueParser for EnvBool {
    type Value = bool;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<bool, clap::Error> {
        // A flag on the command line reaches here as "true": only the environment gives words.
        if let Some(b) = value.to_str().and_then(EnvBool::parse) {
            return Ok(b);
        }
        let var = arg.and_then(clap::Arg::get_env).map_or_else(
            || "the variable".into(),
            |v| v.to_string_lossy().into_owned(),
        );
        Err(clap::Error::raw(
            clap::error::ErrorKind::ValueValidation,
            format!(
                "{var}={:?} is not a boolean: use 1 or 0, true or false, yes or no, on or off (empty is false)",
                value.to_string_lossy()
            ),
        ))
    }
}

/// The `--lock-of` values, for help and completions.
fn tool_values() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(crate::lock::key::tool_names())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn run_alone_parses_what_the_whole_command_line_parses() {
        use clap::FromArgMatches;
        let parse = |cmd: clap::Command, args: &[&str]| {
            let argv = std::iter::once("pglock").chain(args.iter().copied());
            cmd.try_get_matches_from(argv)
                .map(|m| format!("{:?}", Cli::from_arg_matches(&m).map_err(|e| e.kind())))
                .map_err(|e| e.kind())
        };
        for args in [
            &["run", "--key", "seed", "--", "./seed.sh", "-x"][..],
            &[
                "run", "-n", "-w", "5m", "--shared", "--key-id", "1,2", "--", "true",
            ],
            &[
                "run",
                "--scope",
                "transaction",
                "--lock-of",
                "rails",
                "--",
                "x",
            ],
            &[
                "run", "--limit", "3", "--once", "tok", "--key", "k", "--", "x",
            ],
            &[
                "run",
                "--key",
                "k",
                "--database-url",
                "postgres://h/d",
                "--",
                "x",
            ],
            &[
                "run",
                "--key",
                "k",
                "-q",
                "-v",
                "--log-format",
                "json",
                "--",
                "x",
            ],
        ] {
            let fast = parse(run_command(), args);
            assert!(fast.is_ok(), "{args:?}: {fast:?}");
            assert_eq!(fast, parse(command(), args), "{args:?}");
        }
        // What `run` alone cannot parse is left to the whole command line (main.rs).
        for args in [
            &["run", "--version"][..],
            &["run", "-V"],
            &["run", "--key", "-V", "--", "true"],
            &["run", "--key", "--version", "--", "true"],
            &["run", "--help"],
            &["run", "--no-such-option"],
            &["run"],
        ] {
            assert!(parse(run_command(), args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn run_reads_every_lock_form_from_the_environment_and_the_others_do_not() {
        let cmd = command();
        let env_of = |sub: &str, id: &str| {
            let sub = cmd.find_subcommand(sub).expect(sub);
            let arg = sub.get_arguments().find(|a| a.get_id() == id).expect(id);
            arg.get_env().map(|e| e.to_string_lossy().into_owned())
        };
        for (id, var) in RUN_LOCK_ENV {
            assert_eq!(env_of("run", id).as_deref(), Some(var));
            for other in ["status", "history", "key"] {
                assert_eq!(env_of(other, id), None, "{other} {id}");
            }
        }
    }

    #[test]
    fn environment_booleans() {
        for t in ["1", "true", "TRUE", "Yes", "on", "ON"] {
            assert_eq!(EnvBool::parse(t), Some(true), "{t}");
        }
        for f in ["", "0", "false", "False", "NO", "off", "Off"] {
            assert_eq!(EnvBool::parse(f), Some(false), "{f}");
        }
        for bad in ["banana", "y", "2", "enabled"] {
            assert_eq!(EnvBool::parse(bad), None, "{bad}");
        }
    }
}

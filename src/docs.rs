//! The man page and shell completions, generated from the clap definition (`pglock generate`,
//! written to `man/` and `completions/` by `scripts/gen-docs`; a test fails when they are stale).
//! The option list comes from clap; the sections clap knows nothing about are written here once.

use std::io::{self, Write};

const DESCRIPTION: &str = r#".SH DESCRIPTION
\fBpglock run\fR opens one dedicated PostgreSQL connection, takes an advisory lock (wait, try once,
or wait with a timeout), runs COMMAND as its child, forwards signals to it, watches the lock while
the child runs, and on exit releases the lock and exits with the child's status.
.PP
A key NAME maps to one signed 64\-bit advisory lock id, computed without a database: the first
8 bytes of SHA\-256 of the name's UTF\-8 bytes, read big\-endian. \fBpglock key\fR NAME prints it,
and \fBpglock key\fR NAME \fB\-\-sql\fR prints the SQL expression (PostgreSQL 11 or later, no
extension) that yields it, so that application code can take the same lock. In \fBpg_locks\fR the
lock shows as locktype advisory, classid = id >> 32, objid = id & 0xffffffff, objsubid = 1.
.PP
The other forms take the locks that existing code and migration tools already take, so that
pglock and that code exclude each other. \fB\-\-key\-id\fR A,B is the two\-int4 form,
pg_advisory_lock(A, B), objsubid = 2 in \fBpg_locks\fR: a different lock from every bigint id.
\fB\-\-key\-hashtext\fR NAME is the lock of pg_advisory_lock(hashtext('NAME')); hashtext is the
server's own hash, so the lock connection asks the server for it. \fB\-\-lock\-of\fR TOOL is the
lock that golang\-migrate, sqlx, rails, prisma, flyway, atlas, goose, sqitch, graphile\-migrate or
node\-pg\-migrate takes around its migrations, computed as the tool computes it from
current_database() and current_schema() read on the lock connection, or from
\fB\-\-lock\-schema\fR and \fB\-\-lock\-table\fR (golang\-migrate and flyway).
golang\-migrate is the migrate CLI and migrate.New (opened from a URL: the database name is the
URL's path, with its slash); golang\-migrate\-with\-instance is postgres.WithInstance
(current_database()). Most tools fail, at once or after a timeout, rather than wait while pglock
holds their lock; sqlx waits. Flyway and Ecto lock per migration, not per run. Ecto's id is
\fBmix run \-e 'IO.puts :erlang.phash2({:ecto, nil, MyApp.Repo})'\fR, for \fB\-\-key\-id\fR.
A session lock and a transaction lock on one id exclude each other. The forms exclude each other;
one on the command line wins over the environment's. \fB\-\-limit\fR works with \fB\-\-key\fR
and a bigint \fB\-\-key\-id\fR only. \fBpglock key\fR prints the id of every form (connecting
only where the server's answer is needed) and \fBpglock status\fR names the tools' locks, such
as "rails migrations", and a two\-int4 lock as A,B.
.PP
\fBpglock status\fR lists every advisory lock on the database, held or awaited: lock id, key
name (for pglock's own sessions), mode, held or waiting, pid, user, client address, application
and age (waiting: since the wait began; held: since the session connected), as a table or with
\fB\-\-json\fR; a \fB\-\-limit\fR run waiting for a slot shows as waiting. A role without
superuser rights sees what PostgreSQL shows it. With a lock form, \fBpglock status\fR lists that
lock alone and, like \fBgrep\fR, exits 0 when it is held and 1 when it is not, saying "is not
held".
.PP
Connections: \fB\-\-database\-url\fR, \fBPGLOCK_DATABASE_URL\fR, \fBDATABASE_URL\fR, then libpq's
\fBPG*\fR variables and defaults; URIs, key=value strings and service files (\fBservice=\fR,
\fBPGSERVICE\fR). Every libpq setting means what it means to libpq; one pglock does not support is
refused, never ignored. TLS follows libpq's sslmode: disable, prefer (default), require
(encrypted; the chain is verified when a root certificate is given or ~/.postgresql/root.crt
exists), verify\-ca (the chain to \fBsslrootcert\fR), verify\-full (also the host name);
\fBsslrootcert=system\fR uses the system's CAs and implies verify\-full; \fBsslcrl\fR and
\fBsslcrldir\fR check revocation; \fBsslcert\fR and \fBsslkey\fR present a client certificate.
Authentication: trust, password, MD5, SCRAM\-SHA\-256 and SCRAM\-SHA\-256\-PLUS;
\fBchannel_binding=require\fR and \fBrequire_auth\fR forbid weaker methods, and no password is
sent where they forbid it. A malformed or oversized server message is a protocol violation
(exit 69, or 74 while the command runs).
.PP
Every round trip before the command starts has a deadline: \fBconnect_timeout\fR (10s when it
is not set) bounds each connection attempt as a whole, the TLS request, authentication and the
standby check (\fBpg_is_in_recovery()\fR) included, and each statement after it; a \fB\-n\fR run
ends within 2 x connect_timeout, a \fB\-w\fR D run by D + 2s (the server ends the wait at D; 1s
for its answer, 1s for a cancel request). A server that does not answer in time is exit 69; the
statement is cancelled and the socket closed.
.PP
A waiting run (no \fB\-n\fR) started while the server is down, starting up, shutting down, in
recovery or only a hot standby (a restart, a failover) retries the connection with a short
backoff until \fB\-\-timeout\fR, or for one minute without it, logging each reason once, then
exits 69 naming the last one. A reset or close after the TLS request, and a session the server
ends (57P01, 57P02, 57P03) or that is lost before the command starts, the first lock statement
included, are retried the same way on a new connection. Authentication, TLS, a missing
database, an unknown host name and configuration errors, and every failure of a \fB\-n\fR run,
fail at once.
.PP
Every option of \fBrun\fR can also be set in the environment as \fBPGLOCK_\fIOPTION\fR; a value on
the command line wins. Durations: a bare number is seconds (10, 2.5, as \fBflock \-w 10\fR), or
with a unit, decimals allowed: 250ms, 1.5s, 5m, 1h, 1m30s. Boolean variables
(\fBPGLOCK_NO_WAIT\fR, \fBPGLOCK_SHARED\fR, \fBPGLOCK_FENCING_TOKEN\fR, \fBPGLOCK_QUIET\fR,
\fBPGLOCK_VERBOSE\fR) take 1/0, true/false, yes/no, on/off in any case, and empty is false;
any other value is a usage error that names the variable.
.PP
Logs go to stderr, one line an event. The "acquired" line is written before COMMAND starts, so
COMMAND's output follows it. \fB\-q\fR prints errors only, and nothing for a run that is not
acquired and exits 0 (\fB\-E 0\fR), as \fBflock \-n\fR. Text that came from the server (role and
application names, addresses, messages) is printed with its control characters replaced by
spaces, in every output. \fB\-\-log\-format json\fR and \fBpglock status \-\-json\fR write 64\-bit
lock ids as strings of decimal digits ("lock_id":"1851639526980669642"), as protobuf's JSON
mapping does for int64: jq 1.6 and JavaScript round larger numbers.
.PP
While the child runs, a connection that the server closes is noticed at once, and every
heartbeat pglock confirms in \fBpg_locks\fR that its own backend holds the lock; a silent
connection is detected within two heartbeats. On a lost lock pglock sends the child's process
group SIGTERM, SIGKILL after \fB\-\-kill\-after\fR, and exits 74. Half a message counts as
silence. After the command exits, the release waits for the server's answer for 2 heartbeats at
most; without it (or on a signal) pglock closes the connection, warns that the release was not
confirmed (the server frees the lock when it notices the closed connection) and exits with the
command's status, not 74. The server frees a vanished pglock's lock no
sooner than \fB\-\-release\-after\fR (TCP keepalive and user timeout of the lock session);
pglock refuses values that break 3 x heartbeat + kill\-after + 1s <= release\-after; with the
defaults, 3 x 5s + 10s + 1s = 26s <= 30s (server keepalive idle 21s + 3 probes x 3s = 30s,
tcp_user_timeout 30s). On Linux the child's process group is stopped when pglock dies, even by
SIGKILL, before the server frees the lock: the child has PR_SET_PDEATHSIG, and a guard process
keeps the lock's socket open until the group is gone. A process that leaves the group (setsid) is
out of reach.
.PP
\fB\-\-limit\fR N makes a counting semaphore: slot i of lock id X is the lock of SHA\-256("X:i");
\fBpglock key\fR NAME \fB\-\-limit\fR N prints the slot ids, with \fB\-\-sql\fR the SQL that
takes a free slot. \fB\-\-scope transaction\fR takes pg_advisory_xact_lock in a transaction held
open while COMMAND runs, which works through PgBouncer's transaction pooling. A session lock
through any pooler or proxy (its statements run on a backend other than the one its cancel key
names) is refused before it is taken (exit 69), unless \fB\-\-pooler session\fR declares a
session\-mode pooler (PgBouncer's pool_mode = session, pgpool\-II). Whatever is declared, the lock
statement refuses a lock that the serving session already holds (exit 75), so a second client of
one pooled server connection never gets it; and no session\-level SET is sent: settings a pooler
keeps out of the startup packet are applied with SET LOCAL. The heartbeat checks that the session
that took the lock (pid and backend_start) still serves the connection, at a cost that does not
grow with the number of locks on the server.
.PP
\fB\-\-once\fR TOKEN makes a run happen at most once per lock and token (\fB\-\-once
"$(date \-u +%F)"\fR once a day, \fB\-\-once "$GIT_SHA"\fR once per commit). Under the lock,
before COMMAND starts, pglock looks the token up in the run ledger, a table in the lock's database
(\fBpglock_runs\fR in current_schema(), or \fB\-\-ledger\fR TABLE or SCHEMA.TABLE, created on
first use; \fBpglock key \-\-ledger\-sql\fR prints its CREATE statements). A token already done
skips COMMAND, names the earlier run and exits 75 (or \fB\-E\fR). After COMMAND exits, before the
lock is released, the run is recorded; only exit 0 marks the token done, so a failed run is
retried. A ledger that cannot be created, read or written is exit 69 before COMMAND runs. COMMAND
gets PGLOCK_ONCE_TOKEN and PGLOCK_ONCE_SQL, a statement for its own last transaction on the same
database that runs the fence and marks the token done in that transaction: the token is then done
if and only if that transaction commits, whatever happens to pglock afterwards. Rows older than
180 days are pruned. \fB\-\-ledger\fR without \fB\-\-once\fR records every run;
\fBpglock history\fR LOCK [\fB\-\-json\fR] lists a lock's rows, newest first, and
\fBpglock status \-\-ledger\fR TABLE adds each listed lock's last success.
"#;

const SECTIONS: &str = r#".SH "EXIT STATUS"
.TP
\fIthe child's code\fR
the child exited normally
.TP
\fB128+N\fR
the child was killed by signal N (or pglock was, while waiting)
.TP
\fB2\fR
usage error
.TP
\fB69\fR
PostgreSQL unavailable: cannot connect, authentication or TLS failed, a hot standby, or no
answer in time before the command started
.TP
\fB70\fR
internal error (a bug in pglock)
.TP
\fB74\fR
the lock was lost while the child ran; the child was stopped
.TP
\fB75\fR
the lock was not acquired (busy, or \fB\-\-timeout\fR reached); see \fB\-\-conflict\-exit\-code\fR
.TP
\fB124\fR
\fB\-\-max\-runtime\fR elapsed; the child was stopped
.TP
\fB126\fR
COMMAND was found but is not executable
.TP
\fB127\fR
COMMAND was not found
.PP
When the child has exited, pglock releases the lock and closes its connection before it exits.
.SH ENVIRONMENT
.TP
\fBPGLOCK_\fIOPTION\fR
any option of \fBrun\fR, as listed above
.TP
\fBPGLOCK_DATABASE_URL\fR, \fBDATABASE_URL\fR
the connection URI or key=value string, first found wins, after \fB\-\-database\-url\fR
.TP
\fBPGHOST\fR, \fBPGHOSTADDR\fR, \fBPGPORT\fR, \fBPGUSER\fR, \fBPGPASSWORD\fR, \fBPGDATABASE\fR, \fBPGSERVICE\fR, \fBPGSERVICEFILE\fR, \fBPGSSLMODE\fR, \fBPGSSLROOTCERT\fR, \fBPGSSLCERT\fR, \fBPGSSLKEY\fR, \fBPGSSLCRL\fR, \fBPGSSLCRLDIR\fR, \fBPGCHANNELBINDING\fR, \fBPGREQUIREAUTH\fR, \fBPGCONNECT_TIMEOUT\fR, \fBPGAPPNAME\fR, \fBPGPASSFILE\fR, \fBPGOPTIONS\fR
libpq's variables, used parameter by parameter where the connection string is silent;
the password file is \fB~/.pgpass\fR unless \fBPGPASSFILE\fR names another
.TP
\fBPGLOCK_KEY\fR, \fBPGLOCK_KEY_ID\fR, \fBPGLOCK_LOCK_ID\fR, \fBPGLOCK_RUN_ID\fR, \fBPGLOCK_HELD\fR
set for the child: the key (\fBPGLOCK_KEY_ID\fR with the id for the other forms, whose variables
are removed), its lock id, this run's id (also in every log line), and the locks
held by pglock and its ancestors (a nested \fBpglock run\fR for a lock its ancestor holds runs at
once, or fails at once with exit 2 when the ancestor's shared lock cannot cover an exclusive one)
.TP
\fBPGLOCK_FENCE_SQL\fR, \fBPGLOCK_BACKEND_PID\fR, \fBPGLOCK_FENCING_TOKEN\fR
set for the child: the fence statement to run first in each of its transactions (it fails once
this run no longer holds the lock, and makes the next holder wait for the transaction), the lock
session's backend pid, and with \fB\-\-fencing\-token\fR a number greater than every earlier
holder's on the cluster
.SH SIGNALS
The child leads a process group of its own. HUP, INT, QUIT, TERM, USR1, USR2 and WINCH reach it
exactly once: sent to pglock, or to pglock's process group (GNU timeout, a CI runner), pglock
forwards them (one sender's repeat within 200 ms counts once); typed in a terminal (Ctrl\-C,
Ctrl\-\e, a resize), the terminal sends them to the child's group, which pglock hands the
terminal to when its own group has it, so the child can read the terminal. Ctrl\-Z stops the
child's group and pglock with it; fg continues both. A lost lock, \fB\-\-max\-runtime\fR, pglock's
death and members of the group left behind by the child stop the whole group (SIGTERM, SIGKILL
after \fB\-\-kill\-after\fR) before the lock is released. While pglock waits for the lock, HUP, INT, QUIT or TERM
cancel the wait at once (the server\-side wait too), run nothing and exit 128+N. As PID 1, pglock
also reaps orphaned processes.
.SH EXAMPLES
A Kubernetes CronJob command prefix (skip the run, successfully, if another holds the lock):
.PP
.nf
.RS
command: ["pglock", "run", "\-\-no\-wait", "\-E", "0", "\-\-key", "nightly\-report", "\-\-", "./report.sh"]
env: PGLOCK_DATABASE_URL from a Secret
.RE
.fi
.PP
A shell script that skips (exit 0) while another host runs the export, and passes every other
status on:
.PP
.nf
.RS
export PGLOCK_KEY=billing\-export
pglock run \-\-no\-wait \-\- ./export.sh || case $? in
  75) echo "another export is running; skipped" ;;
  *)  exit $? ;;
esac
.RE
.fi
.PP
A seed that waits while Rails migrates, and holds Rails' migration lock while it runs:
.PP
.nf
.RS
pglock run \-\-timeout 15m \-\-lock\-of rails \-\- ./seed.sh
.RE
.fi
.PP
A CI step that serialises a seed across parallel pipelines:
.PP
.nf
.RS
pglock run \-\-timeout 10m \-\-key staging\-seed \-\- ./scripts/seed.sh
.RE
.fi
.PP
Application code taking the same lock:
.PP
.nf
.RS
$ pglock key seed \-\-sql
('x' || left(encode(sha256(convert_to('seed', 'UTF8')), 'hex'), 16))::bit(64)::bigint
psql> SELECT pg_advisory_lock(('x' || left(encode(sha256(convert_to('seed', 'UTF8')), 'hex'), 16))::bit(64)::bigint);
.RE
.fi
.SH "SEE ALSO"
\fBflock\fR(1), \fBpsql\fR(1), \fBpg_locks\fR in the PostgreSQL documentation
"#;

pub fn man(out: &mut dyn Write) -> io::Result<()> {
    let cmd = crate::cli::command();
    let version = cmd.get_version().unwrap_or_default().to_string();
    let page = clap_mangen::Man::new(cmd.clone())
        .source(format!("pglock {version}"))
        .manual("User Commands");
    page.render_title(out)?;
    page.render_name_section(out)?;
    writeln!(
        out,
        ".SH SYNOPSIS\n\\fBpglock run\\fR [\\fIOPTIONS\\fR] \\fILOCK\\fR \\fB\\-\\-\\fR \\fICOMMAND\\fR [\\fIARG\\fR...]\n.br\n\\fBpglock key\\fR \\fILOCK\\fR [\\fB\\-\\-sql\\fR]\n.br\n\\fBpglock status\\fR [\\fILOCK\\fR] [\\fB\\-\\-json\\fR] [\\fB\\-\\-database\\-url\\fR \\fIURL\\fR]"
    )?;
    writeln!(
        out,
        ".br\n\\fILOCK\\fR: \\fB\\-\\-key\\fR \\fINAME\\fR | \\fB\\-\\-key\\-id\\fR \\fIID\\fR | \\fB\\-\\-key\\-id\\fR \\fIA\\fR,\\fIB\\fR | \\fB\\-\\-key\\-hashtext\\fR \\fINAME\\fR | \\fB\\-\\-lock\\-of\\fR \\fITOOL\\fR (\\fBpglock key\\fR also takes a bare \\fINAME\\fR)"
    )?;
    out.write_all(DESCRIPTION.as_bytes())?;
    let run = cmd.find_subcommand("run").expect("run subcommand");
    options(run, out)?;
    out.write_all(SECTIONS.as_bytes())?;
    writeln!(out, ".SH VERSION\nv{version}")
}

/// Escapes text for roff: backslashes and hyphens, and a leading dot or quote.
fn roff(text: &str) -> String {
    let t = text.replace('\\', "\\e").replace('-', "\\-");
    if t.starts_with('.') || t.starts_with('\'') {
        format!("\\&{t}")
    } else {
        t
    }
}

/// OPTIONS of `pglock run`, by help heading, each with its environment variable and default.
fn options(run: &clap::Command, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, ".SH OPTIONS")?;
    let mut headings: Vec<Option<&str>> = Vec::new();
    for a in run.get_arguments() {
        if !headings.contains(&a.get_help_heading()) {
            headings.push(a.get_help_heading());
        }
    }
    for heading in headings {
        if let Some(h) = heading {
            writeln!(out, ".SS {h}")?;
        }
        for a in run
            .get_arguments()
            .filter(|a| a.get_help_heading() == heading && !a.is_hide_set())
        {
            let mut names = Vec::new();
            if let Some(s) = a.get_short() {
                names.push(format!("\\fB\\-{s}\\fR"));
            }
            if let Some(l) = a.get_long() {
                names.push(format!("\\fB\\-\\-{}\\fR", roff(l)));
            }
            let takes_value = a.get_action().takes_values();
            let value = a
                .get_value_names()
                .and_then(|v| v.first())
                .map(|v| v.to_string());
            let mut line = names.join(", ");
            if let (true, Some(v)) = (takes_value, &value) {
                if names.is_empty() {
                    line = format!("\\fI{v}\\fR...");
                } else {
                    line.push_str(&format!(" \\fI{v}\\fR"));
                }
            }
            writeln!(out, ".TP\n{line}")?;
            let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            let mut text = roff(&help);
            let defaults: Vec<String> = a
                .get_default_values()
                .iter()
                .map(|d| d.to_string_lossy().into_owned())
                .collect();
            if !defaults.is_empty() {
                text.push_str(&format!(". Default: {}", roff(&defaults.join(", "))));
            }
            if let Some(env) = a.get_env() {
                text.push_str(&format!(
                    ". Environment: \\fB{}\\fR",
                    roff(&env.to_string_lossy())
                ));
            }
            writeln!(out, "{text}.")?;
        }
    }
    Ok(())
}

pub fn completion(shell: &str, out: &mut dyn Write) -> Result<(), String> {
    use clap_complete::Shell;
    let shell = match shell {
        "bash" => Shell::Bash,
        "zsh" => Shell::Zsh,
        "fish" => Shell::Fish,
        other => return Err(format!("unknown shell '{other}': use bash, zsh or fish")),
    };
    let mut cmd = crate::cli::command();
    clap_complete::generate(shell, &mut cmd, "pglock", out);
    Ok(())
}

# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_pglock_global_optspecs
    string join \n h/help V/version
end

function __fish_pglock_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_pglock_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_pglock_using_subcommand
    set -l cmd (__fish_pglock_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c pglock -n "__fish_pglock_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pglock -n "__fish_pglock_needs_command" -s V -l version -d 'Print version'
complete -c pglock -n "__fish_pglock_needs_command" -f -a "status" -d 'List the advisory locks held and awaited on the database'
complete -c pglock -n "__fish_pglock_needs_command" -f -a "history" -d 'List the run ledger\'s rows of a lock (runs with --once or --ledger), newest first'
complete -c pglock -n "__fish_pglock_needs_command" -f -a "generate" -d 'Write the man page or a shell completion script to stdout (for packaging)'
complete -c pglock -n "__fish_pglock_needs_command" -f -a "run" -d 'Take the lock, run COMMAND, release the lock, exit with COMMAND\'s status'
complete -c pglock -n "__fish_pglock_needs_command" -f -a "key" -d 'Print the advisory lock id of a lock (or the SQL that yields it)'
complete -c pglock -n "__fish_pglock_using_subcommand status" -l key -d 'Lock NAME: mapped to a 64-bit advisory lock id (see `pglock key`)' -r
complete -c pglock -n "__fish_pglock_using_subcommand status" -l key-id -d 'Raw advisory lock id, decimal or hex (0x47524f4f), as used by pg_advisory_lock(bigint); or A,B, two 32-bit keys as used by pg_advisory_lock(int, int), a different lock' -r
complete -c pglock -n "__fish_pglock_using_subcommand status" -l key-hashtext -d 'The lock of pg_advisory_lock(hashtext(\'NAME\')), computed by the server on the lock connection' -r
complete -c pglock -n "__fish_pglock_using_subcommand status" -l lock-of -d 'The advisory lock TOOL takes around its migrations, computed as TOOL does on this database' -r -f -a "golang-migrate\t''
golang-migrate-with-instance\t''
sqlx\t''
rails\t''
prisma\t''
flyway\t''
atlas\t''
goose\t''
goose-before-3.26\t''
sqitch\t''
graphile-migrate\t''
node-pg-migrate\t''"
complete -c pglock -n "__fish_pglock_using_subcommand status" -l lock-schema -d 'With --lock-of golang-migrate or flyway: the schema of the migrations table [default: current_schema()]' -r
complete -c pglock -n "__fish_pglock_using_subcommand status" -l lock-table -d 'With --lock-of golang-migrate or flyway: the migrations table [default: schema_migrations, flyway_schema_history]' -r
complete -c pglock -n "__fish_pglock_using_subcommand status" -l ledger -d 'Also show each listed lock\'s last success in this run ledger (TABLE or SCHEMA.TABLE)' -r
complete -c pglock -n "__fish_pglock_using_subcommand status" -l database-url -d 'PostgreSQL connection URI or key=value string [default: DATABASE_URL, then libpq\'s PG* variables]' -r
complete -c pglock -n "__fish_pglock_using_subcommand status" -l json -d 'One JSON array of lock objects instead of a table'
complete -c pglock -n "__fish_pglock_using_subcommand status" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pglock -n "__fish_pglock_using_subcommand status" -s V -l version -d 'Print version'
complete -c pglock -n "__fish_pglock_using_subcommand history" -l key -d 'Lock NAME: mapped to a 64-bit advisory lock id (see `pglock key`)' -r
complete -c pglock -n "__fish_pglock_using_subcommand history" -l key-id -d 'Raw advisory lock id, decimal or hex (0x47524f4f), as used by pg_advisory_lock(bigint); or A,B, two 32-bit keys as used by pg_advisory_lock(int, int), a different lock' -r
complete -c pglock -n "__fish_pglock_using_subcommand history" -l key-hashtext -d 'The lock of pg_advisory_lock(hashtext(\'NAME\')), computed by the server on the lock connection' -r
complete -c pglock -n "__fish_pglock_using_subcommand history" -l lock-of -d 'The advisory lock TOOL takes around its migrations, computed as TOOL does on this database' -r -f -a "golang-migrate\t''
golang-migrate-with-instance\t''
sqlx\t''
rails\t''
prisma\t''
flyway\t''
atlas\t''
goose\t''
goose-before-3.26\t''
sqitch\t''
graphile-migrate\t''
node-pg-migrate\t''"
complete -c pglock -n "__fish_pglock_using_subcommand history" -l lock-schema -d 'With --lock-of golang-migrate or flyway: the schema of the migrations table [default: current_schema()]' -r
complete -c pglock -n "__fish_pglock_using_subcommand history" -l lock-table -d 'With --lock-of golang-migrate or flyway: the migrations table [default: schema_migrations, flyway_schema_history]' -r
complete -c pglock -n "__fish_pglock_using_subcommand history" -l ledger -d 'The run ledger\'s table, TABLE or SCHEMA.TABLE [default: pglock_runs]' -r
complete -c pglock -n "__fish_pglock_using_subcommand history" -l database-url -d 'PostgreSQL connection URI or key=value string [default: DATABASE_URL, then libpq\'s PG* variables]' -r
complete -c pglock -n "__fish_pglock_using_subcommand history" -l json -d 'One JSON array of run objects instead of a table (ids as strings)'
complete -c pglock -n "__fish_pglock_using_subcommand history" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pglock -n "__fish_pglock_using_subcommand history" -s V -l version -d 'Print version'
complete -c pglock -n "__fish_pglock_using_subcommand generate" -s h -l help -d 'Print help'
complete -c pglock -n "__fish_pglock_using_subcommand generate" -s V -l version -d 'Print version'
complete -c pglock -n "__fish_pglock_using_subcommand run" -s w -l timeout -d 'Wait at most DURATION for the lock (10 = 10 seconds, 1.5s, 250ms, 5m, 1m30s), then exit 75; 0 is --no-wait. A server that is down or starting is waited for too (without -w: for a minute)' -r
complete -c pglock -n "__fish_pglock_using_subcommand run" -l scope -d 'session: a session lock (pg_advisory_lock); transaction: pg_advisory_xact_lock in a transaction held open while COMMAND runs, for PgBouncer in transaction pooling mode' -r -f -a "session\t''
transaction\t''"
complete -c pglock -n "__fish_pglock_using_subcommand run" -l pooler -d 'session: a pooler or proxy in session mode sits in front of the server (PgBouncer\'s pool_mode = session, pgpool-II): a session lock is taken through it. Without it, a session lock through any pooler or proxy is refused (exit 69)' -r -f -a "session\t''"
complete -c pglock -n "__fish_pglock_using_subcommand run" -l limit -d 'A counting semaphore: up to N runs of this key at once, each holding one of N slot locks' -r
complete -c pglock -n "__fish_pglock_using_subcommand run" -l once -d 'At most one successful run per lock and TOKEN: under the lock, a TOKEN already done in the run ledger skips COMMAND (exit 75, or -E); only exit 0 marks it done' -r
complete -c pglock -n "__fish_pglock_using_subcommand run" -l ledger -d 'The run ledger\'s table, TABLE or SCHEMA.TABLE, created on first use [default: pglock_runs]; without --once, every run is recorded in it (an audit trail)' -r
complete -c pglock -n "__fish_pglock_using_subcommand run" -s E -l conflict-exit-code -d 'Exit code when the lock is not acquired' -r
complete -c pglock -n "__fish_pglock_using_subcommand run" -l max-runtime -d 'Stop COMMAND after DURATION (SIGTERM, then SIGKILL after --kill-after) and exit 124' -r
complete -c pglock -n "__fish_pglock_using_subcommand run" -l kill-after -d 'After SIGTERM (lost lock, --max-runtime), wait this long before SIGKILL' -r
complete -c pglock -n "__fish_pglock_using_subcommand run" -l heartbeat -d 'How often the lock is checked while COMMAND runs; a silent connection is detected within 2x this' -r
complete -c pglock -n "__fish_pglock_using_subcommand run" -l release-after -d 'The server frees the lock of a vanished pglock no sooner than this (TCP keepalive and user timeout of the session); must exceed 3 x --heartbeat + --kill-after' -r
complete -c pglock -n "__fish_pglock_using_subcommand run" -l log-format -d 'Log line format on stderr' -r -f -a "text\t''
json\t''"
complete -c pglock -n "__fish_pglock_using_subcommand run" -l key -d 'Lock NAME: mapped to a 64-bit advisory lock id (see `pglock key`)' -r
complete -c pglock -n "__fish_pglock_using_subcommand run" -l key-id -d 'Raw advisory lock id, decimal or hex (0x47524f4f), as used by pg_advisory_lock(bigint); or A,B, two 32-bit keys as used by pg_advisory_lock(int, int), a different lock' -r
complete -c pglock -n "__fish_pglock_using_subcommand run" -l key-hashtext -d 'The lock of pg_advisory_lock(hashtext(\'NAME\')), computed by the server on the lock connection' -r
complete -c pglock -n "__fish_pglock_using_subcommand run" -l lock-of -d 'The advisory lock TOOL takes around its migrations, computed as TOOL does on this database' -r -f -a "golang-migrate\t''
golang-migrate-with-instance\t''
sqlx\t''
rails\t''
prisma\t''
flyway\t''
atlas\t''
goose\t''
goose-before-3.26\t''
sqitch\t''
graphile-migrate\t''
node-pg-migrate\t''"
complete -c pglock -n "__fish_pglock_using_subcommand run" -l lock-schema -d 'With --lock-of golang-migrate or flyway: the schema of the migrations table [default: current_schema()]' -r
complete -c pglock -n "__fish_pglock_using_subcommand run" -l lock-table -d 'With --lock-of golang-migrate or flyway: the migrations table [default: schema_migrations, flyway_schema_history]' -r
complete -c pglock -n "__fish_pglock_using_subcommand run" -l database-url -d 'PostgreSQL connection URI or key=value string [default: DATABASE_URL, then libpq\'s PG* variables]' -r
complete -c pglock -n "__fish_pglock_using_subcommand run" -s n -l no-wait -d 'Try once; if the lock is held, do not run COMMAND and exit 75'
complete -c pglock -n "__fish_pglock_using_subcommand run" -l shared -d 'Take a shared lock: shared holders run together, exclusive holders wait for all of them'
complete -c pglock -n "__fish_pglock_using_subcommand run" -l fencing-token -d 'Give COMMAND PGLOCK_FENCING_TOKEN, an integer greater than every earlier holder\'s on the cluster (the server\'s transaction id; costs one)'
complete -c pglock -n "__fish_pglock_using_subcommand run" -s q -l quiet -d 'Errors only: nothing at all for a skip that exits 0 (-E 0), as flock -n'
complete -c pglock -n "__fish_pglock_using_subcommand run" -s v -l verbose -d 'More detail (connection, queries, signals)'
complete -c pglock -n "__fish_pglock_using_subcommand run" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pglock -n "__fish_pglock_using_subcommand run" -s V -l version -d 'Print version'
complete -c pglock -n "__fish_pglock_using_subcommand key" -l key-id -d 'Raw advisory lock id, decimal or hex (0x47524f4f), as used by pg_advisory_lock(bigint); or A,B, two 32-bit keys as used by pg_advisory_lock(int, int), a different lock' -r
complete -c pglock -n "__fish_pglock_using_subcommand key" -l key-hashtext -d 'The lock of pg_advisory_lock(hashtext(\'NAME\')), computed by the server on the lock connection' -r
complete -c pglock -n "__fish_pglock_using_subcommand key" -l lock-of -d 'The advisory lock TOOL takes around its migrations, computed as TOOL does on this database' -r -f -a "golang-migrate\t''
golang-migrate-with-instance\t''
sqlx\t''
rails\t''
prisma\t''
flyway\t''
atlas\t''
goose\t''
goose-before-3.26\t''
sqitch\t''
graphile-migrate\t''
node-pg-migrate\t''"
complete -c pglock -n "__fish_pglock_using_subcommand key" -l lock-schema -d 'With --lock-of golang-migrate or flyway: the schema of the migrations table [default: current_schema()]' -r
complete -c pglock -n "__fish_pglock_using_subcommand key" -l lock-table -d 'With --lock-of golang-migrate or flyway: the migrations table [default: schema_migrations, flyway_schema_history]' -r
complete -c pglock -n "__fish_pglock_using_subcommand key" -l database-url -d 'PostgreSQL connection URI or key=value string [default: DATABASE_URL, then libpq\'s PG* variables]' -r
complete -c pglock -n "__fish_pglock_using_subcommand key" -l limit -d 'Print the slot lock ids of `run --limit N` (with --sql: the SQL that takes a free slot)' -r
complete -c pglock -n "__fish_pglock_using_subcommand key" -l ledger -d 'With --ledger-sql: the ledger\'s table, TABLE or SCHEMA.TABLE [default: pglock_runs]' -r
complete -c pglock -n "__fish_pglock_using_subcommand key" -l key -d 'Lock NAME: mapped to a 64-bit advisory lock id (see `pglock key`)' -r
complete -c pglock -n "__fish_pglock_using_subcommand key" -l sql -d 'Print the SQL that yields the id (the argument(s) of pg_advisory_lock) instead of the id'
complete -c pglock -n "__fish_pglock_using_subcommand key" -l fence-sql -d 'Print the fence statements of the lock (contract §11) for code that takes it itself'
complete -c pglock -n "__fish_pglock_using_subcommand key" -l ledger-sql -d 'Print the CREATE statements of the run ledger (contract §12), for a DBA; no LOCK needed'
complete -c pglock -n "__fish_pglock_using_subcommand key" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pglock -n "__fish_pglock_using_subcommand key" -s V -l version -d 'Print version'

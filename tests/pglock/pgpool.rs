//! Contract §4 (poolers), issue 20 item 6: through a real pgpool-II (Debian package `pgpool2`) in
//! streaming-replication clustering mode, in front of the suite's cluster (`pg()`, the primary)
//! and a streaming standby of it, with load balancing on and the standby weighted to get all the
//! reads (`backend_weight0 = 0`, `backend_weight1 = 1`): the lock is taken on the primary, or the
//! run is refused. An advisory lock granted on the standby would exclude nobody (advisory locks
//! are not replicated), so the standby's `pg_locks` must never show one. What pgpool does with
//! each of pglock's statements is in docs/pgpool-findings.md.

use crate::harness::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The database the runs use: not `postgres`, whose backend connections pgpool never caches
/// (child.c, `backend_cleanup`), so that, as for a user's application database, a later client of
/// a pgpool child reuses the cached connections (and is then sent the primary's cancel key
/// rather than the last node's: docs/pgpool-findings.md (a)).
const APP_DB: &str = "pgpool_app";

pub struct Pgpool {
    pub port: u16,
    pub log: PathBuf,
    /// The standby behind pgpool (node 1); the primary (node 0) is `pg()`.
    pub standby: &'static Cluster,
}

impl Pgpool {
    /// `postgres` without a password: pgpool reaches both backends over their Unix sockets
    /// (trust), and with `enable_pool_hba = off` passes their answer (trust) on to the client.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// psql through pgpool (a plain client of it); stdout trimmed, or the error.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(pg().bin.join("psql"))
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(format!(
                "host=127.0.0.1 port={} user=postgres dbname={db} sslmode=disable",
                self.port
            ))
            .args(["-c", sql])
            .env_remove("PGHOST")
            .env_remove("PGPORT")
            .env_remove("PGUSER")
            .env_remove("PGDATABASE")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

/// The streaming standby of `pg()` that the pgpools of these tests balance reads to, with
/// database `APP_DB` (created on the primary before the base backup).
fn standby() -> &'static Cluster {
    static S: OnceLock<Cluster> = OnceLock::new();
    S.get_or_init(|| {
        let primary = pg();
        if primary.psql_super(&format!(
            "SELECT count(*) FROM pg_database WHERE datname = '{APP_DB}'"
        )) == "0"
        {
            primary.psql_super(&format!("CREATE DATABASE {APP_DB}"));
        }
        primary.standby("pgpool-standby")
    })
}

/// pgpool-II 4.3 with 24 children (clients served at once).
pub fn pgpool() -> &'static Pgpool {
    static P: OnceLock<Pgpool> = OnceLock::new();
    P.get_or_init(|| start_pgpool("pgpool", 24))
}

/// pgpool-II 4.3 with one child: every client is served by the same pgpool process, and from the
/// second on gets back its cached backend connections (for a database other than `postgres`).
pub fn pgpool_one_child() -> &'static Pgpool {
    static P: OnceLock<Pgpool> = OnceLock::new();
    P.get_or_init(|| start_pgpool("pgpool1", 1))
}

/// pgpool-II 4.3 (`/usr/sbin/pgpool`, package pgpool2) in streaming-replication mode in front of
/// `pg()` and `standby()`, run as `postgres` in the foreground with its pid file, sockets,
/// status file and log in a directory of its own, stopped when the test process ends. No health
/// check and no replication-delay check (`sr_check_period = 0`; `sr_check_user` only lets it find
/// the primary at start), no failover.
fn start_pgpool(name: &str, children: u32) -> Pgpool {
    let bin = find_tool("pgpool")
        .map(|p| p.display().to_string())
        .expect("pgpool-II is not installed (apt-get install pgpool2; scripts/setup test does it)");
    let primary = pg();
    let standby = standby();
    assert!(wait_until(Duration::from_secs(30), || standby.psql_super(
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{APP_DB}'")
    ) == "1"));
    let dir = tmpdir(name);
    chown_pg(&dir);
    let (port, pcp_port) = (free_port(), free_port());
    let conf = dir.join("pgpool.conf");
    std::fs::write(
            &conf,
            format!(
                "backend_clustering_mode = 'streaming_replication'\n\
                 listen_addresses = '127.0.0.1'\nport = {port}\nsocket_dir = '{d}'\n\
                 pcp_listen_addresses = ''\npcp_port = {pcp_port}\npcp_socket_dir = '{d}'\n\
                 pid_file_name = '{d}/pgpool.pid'\nlogdir = '{d}'\n\
                 backend_hostname0 = '{h0}'\nbackend_port0 = {p0}\nbackend_weight0 = 0\nbackend_flag0 = 'DISALLOW_TO_FAILOVER'\n\
                 backend_hostname1 = '{h1}'\nbackend_port1 = {p1}\nbackend_weight1 = 1\nbackend_flag1 = 'DISALLOW_TO_FAILOVER'\n\
                 enable_pool_hba = off\nnum_init_children = {children}\nmax_pool = 2\n\
                 load_balance_mode = on\nallow_sql_comments = off\n\
                 sr_check_period = 0\nsr_check_user = 'postgres'\nsr_check_password = ''\n\
                 health_check_period = 0\nfailover_on_backend_error = off\nuse_watchdog = off\n\
                 memqcache_total_size = 1MB\n\
                 log_destination = 'stderr'\nlog_per_node_statement = on\nlog_line_prefix = '%m: %a %d pid %p: '\n",
                d = dir.display(),
                h0 = primary.dir.display(),
                p0 = primary.port,
                h1 = standby.dir.display(),
                p1 = standby.port,
            ),
        )
        .unwrap();
    let pcp = dir.join("pcp.conf");
    std::fs::write(&pcp, "").unwrap();
    for f in [&conf, &pcp] {
        chown_pg(f);
    }
    let log = dir.join("pgpool.log");
    // -n: in the foreground, logging to stderr. SIGINT is pgpool's fast shutdown.
    let server = format!(
        "{bin} -n -f {} -F {} >> {} 2>&1",
        conf.display(),
        pcp.display(),
        log.display()
    );
    serve_while_tests_run(&server, "INT");
    let p = Pgpool { port, log, standby };
    // Up, with node 0 found as the primary and node 1 as the standby.
    let mut nodes = String::new();
    let up = wait_until(Duration::from_secs(30), || {
        nodes = p.psql("postgres", "SHOW pool_nodes").unwrap_or_default();
        nodes.lines().filter(|l| l.contains("|up|")).count() == 2
            && nodes.contains("|primary|")
            && nodes.contains("|standby|")
    });
    assert!(up, "pgpool did not start: {nodes}\n{}", p.log_text());
    // Load balancing is on and the standby gets the reads: a plain read runs there.
    assert_eq!(
        p.psql(APP_DB, "SELECT current_setting('port')").unwrap(),
        p.standby.port.to_string(),
        "reads are not load balanced to the standby:\n{}",
        p.log_text()
    );
    p
}

/// Fills pgpool's children with cached backend connections to `db`, as earlier runs of a busy
/// application do: as many concurrent pglock runs (other keys, transaction scope) as pgpool has
/// children. (Sessions of psql did not leave connections that pglock's later sessions got back.)
fn warm(p: &Pgpool, db: &str, children: usize) {
    let kids: Vec<_> = (0..children)
        .map(|_| {
            Run::new(&key("pgpool-warm"))
                .args(["-q", "--scope", "transaction"])
                .url(p.url(db))
                .child(["sleep", "0.5"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut k in kids {
        k.wait().unwrap();
    }
}

/// The last `n` lines of pgpool's log (which node ran each statement).
fn log_tail(p: &Pgpool, n: usize) -> String {
    let log = p.log_text();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Has any intervals file line `start ID` without its `end ID`?
fn running(file: &Path) -> Option<String> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut open: Vec<&str> = Vec::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.as_slice() {
            ["start", id, _] => open.push(id),
            ["end", id, _] => open.retain(|o| o != id),
            _ => {}
        }
    }
    open.first().map(|s| s.to_string())
}

/// Five concurrent `pglock run` of one key through pgpool with `extra` options (each child
/// records its start and end, and lives through a few heartbeats): each ran (0) or was refused
/// (69) with a reason; no two children ran at once; while a child ran, the primary's `pg_locks`
/// showed the lock granted, and the standby's never showed it at all.
fn five_at_once(extra: &[&str]) {
    let p = pgpool();
    warm(p, APP_DB, 24);
    let name = key("pgpool5");
    let id = lock_id(&name);
    let dir = tmpdir("pgpool5");
    let file = dir.join("stamps");
    let script = stamp_script(&file, "0.7");
    let mut runs: Vec<_> = (0..5)
        .map(|_| {
            Run::new(&name)
                .args(["--heartbeat", "100ms", "-w", "60s"])
                .args(extra)
                .url(p.url(APP_DB))
                .sh(&script)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Watch both servers while the runs go on.
    let (mut checked, mut on_standby, mut missing) = (0, Vec::new(), Vec::new());
    let end = Instant::now() + Duration::from_secs(90);
    while Instant::now() < end {
        let before = running(&file);
        let prim = pg().locks_on(id);
        let stby = p.standby.locks_on(id);
        let after = running(&file);
        if !stby.is_empty() {
            on_standby.push(stby);
        }
        // A child that was running before and after the look ran through it: its lock was held.
        if before.is_some() && before == after {
            checked += 1;
            if !prim.iter().any(|l| l.contains(",t,")) {
                missing.push(prim);
            }
        }
        if runs.iter_mut().all(|c| c.try_wait().unwrap().is_some()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut outcomes = Vec::new();
    for c in runs {
        let out = c.wait_with_output().unwrap();
        outcomes.push((
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    let tail = log_tail(p, 60);
    for (code, err) in &outcomes {
        assert!(
            *code == Some(0) || (*code == Some(69) && !err.trim().is_empty()),
            "a run neither ran nor was refused with a reason: {code:?} {err}\nall: {outcomes:#?}\npgpool log (tail):\n{tail}"
        );
    }
    let ran = outcomes.iter().filter(|(c, _)| *c == Some(0)).count();
    let iv = intervals(&file);
    assert_eq!(
        iv.len(),
        ran,
        "children that ran vs runs that exited 0: {iv:?} {outcomes:#?}"
    );
    assert_one_at_a_time(&iv);
    assert!(
        on_standby.is_empty(),
        "the lock was taken on the standby: {on_standby:?}\n{outcomes:#?}\npgpool log (tail):\n{tail}"
    );
    assert!(
        missing.is_empty(),
        "a child ran while the primary showed no granted lock ({} of {checked} looks): {missing:?}",
        missing.len()
    );
    assert!(ran == 0 || checked > 0, "never saw a child running: {iv:?}");
    assert!(
        pg().locks_on(id).is_empty(),
        "left behind: {:?}",
        pg().locks_on(id)
    );
    assert!(p.standby.locks_on(id).is_empty());
    eprintln!("pgpool {extra:?}: {ran} of 5 ran, {} refused; {checked} looks at pg_locks while a child ran", 5 - ran);
}

#[test]
fn pgpool_transaction_scope_five_at_once_lock_on_the_primary_never_two() {
    five_at_once(&["--scope", "transaction"]);
}

#[test]
fn pgpool_declared_session_pooler_five_at_once_lock_on_the_primary_never_two() {
    five_at_once(&["--pooler", "session"]);
}

/// The default session scope through pgpool, without `--pooler session`: refused before the lock
/// (exit 69, naming both ways out), nothing left in either server's `pg_locks`.
fn session_scope_is_refused(p: &Pgpool, db: &str, name: &str) {
    let id = lock_id(name);
    for _ in 0..3 {
        let cmd = Run::new(name).url(p.url(db)).child(["true"]);
        let mut shown = format!("{cmd:?}");
        let out = {
            let mut c = cmd;
            c.output().unwrap()
        };
        shown.push_str(&format!(
            "\nstatus {:?}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
        assert_eq!(
            out.status.code(),
            Some(69),
            "{shown}\npgpool log (tail):\n{}",
            log_tail(p, 20)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--pooler session") && err.contains("--scope transaction"),
            "{err}"
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        pg().locks_on(id).is_empty(),
        "left on the primary: {:?}",
        pg().locks_on(id)
    );
    assert!(
        p.standby.locks_on(id).is_empty(),
        "left on the standby: {:?}",
        p.standby.locks_on(id)
    );
}

/// Database `postgres`: pgpool never caches its backend connections, so every client gets fresh
/// ones (and the cancel key of the last node, the standby).
#[test]
fn pgpool_session_scope_on_fresh_connections_is_refused() {
    session_scope_is_refused(pgpool(), "postgres", &key("pgpool-sess"));
}

/// An application database, through a pgpool whose one child already served a run of the same
/// key there (a job that runs again): pgpool hands each later run that child's cached backend
/// connections (it reuses them for a byte-identical startup packet, and pglock's names the key in
/// `application_name`), and with them the primary's cancel key (docs/pgpool-findings.md (a)).
/// Then every statement pglock sends (all multi-statement or volatile) runs on the backend the
/// key names, the primary: the run cannot be told from a direct one, and the lock is the session's
/// own (pgpool pools whole sessions and resets them with DISCARD ALL). So it runs, with the lock
/// on the primary through several heartbeats, or (a fresh connection) is refused.
#[test]
fn pgpool_session_scope_on_cached_connections_locks_the_primary_or_is_refused() {
    let p = pgpool_one_child();
    let name = key("pgpool-sess-cached");
    let id = lock_id(&name);
    expect_code(
        Run::new(&name)
            .args(["--scope", "transaction"])
            .url(p.url(APP_DB))
            .child(["true"]),
        0,
    );
    for _ in 0..3 {
        let run = Run::new(&name)
            .args(["--heartbeat", "100ms"])
            .url(p.url(APP_DB))
            .child(["sleep", "0.6"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut on_primary = false;
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            on_primary |= pg().locks_on(id).iter().any(|l| l.contains(",t,"));
            assert!(
                p.standby.locks_on(id).is_empty(),
                "the lock was taken on the standby"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = run.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        match out.status.code() {
            Some(0) => assert!(on_primary, "ran without the lock on the primary: {err}"),
            Some(69) => assert!(err.contains("--pooler session"), "{err}"),
            other => panic!(
                "exit {other:?}: {err}\npgpool log (tail):\n{}",
                log_tail(p, 20)
            ),
        }
    }
    assert!(
        pg().locks_on(id).is_empty(),
        "left on the primary: {:?}",
        pg().locks_on(id)
    );
    assert!(p.standby.locks_on(id).is_empty());
}

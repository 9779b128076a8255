//! The test suite's own PostgreSQL: a throwaway cluster per test run (initdb into a temp dir, a
//! free port, password authentication over TCP), run as the `postgres` OS user when the tests run
//! as root, and removed by a watchdog process once the test binary exits. Also: running the
//! pglock binary the way a user does, and assertions that print everything on failure.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const SUPERUSER_PASSWORD: &str = "s3cret-super";
pub const APP_PASSWORD: &str = "app-pw-7f3a";

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    pub bin: PathBuf,
}

/// Stops the test binary before its first test when the machine lacks what the suite needs
/// (PostgreSQL, PgBouncer, OpenSSL, groff...): `scripts/setup test --check` prints one line, what
/// is missing and the command that installs it, and the process exits with it, instead of every
/// test failing with a panic of its own. Checked once, by whichever test reaches the harness first
/// (every test does, through `bin()`); the others wait for the answer.
fn require_setup() {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        use std::io::Write;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/setup");
        let out = Command::new("bash")
            .arg(&script)
            .args(["test", "--check"])
            .stdin(Stdio::null())
            .output();
        let line = match out {
            Ok(o) if o.status.success() => return,
            Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
            Err(e) => format!("pglock: cannot run {}: {e}\n", script.display()),
        };
        // Straight to the file descriptor: libtest captures what eprintln! prints.
        let _ = std::io::stderr().write_all(line.as_bytes());
        std::process::exit(1);
    });
}

fn pg_bin() -> PathBuf {
    if let Ok(p) = std::env::var("PG_BIN") {
        return PathBuf::from(p);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
        .pop()
        .expect("PostgreSQL server binaries (set PG_BIN or install postgresql)")
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether this is a CI run: `CI` set, non-empty, and neither `false` nor `0`.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// A note on the test binary's stderr itself, past libtest's capture of `eprintln!`, naming the
/// test: a skipped check is seen in the output of a plain `cargo test`.
pub fn note(what: &str) {
    use std::io::Write;
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let _ = writeln!(std::io::stderr(), "note: {test}: {what}");
}

/// The one policy for what a test needs of the machine: when `met` is false, the test fails in
/// CI (`in_ci`), where everything is installed and the suite runs as root, so that nothing passes
/// there without having run; elsewhere it says that it skips (`note`) and the caller returns:
/// `if !require(cond, "what is missing") { return; }`.
pub fn require(met: bool, what: &str) -> bool {
    if met {
        return true;
    }
    assert!(
        !in_ci(),
        "{what}: in CI (CI={:?}) this test must run, not skip",
        std::env::var("CI").unwrap_or_default()
    );
    note(&format!("skipped: {what} (in CI this fails)"));
    false
}

/// Root, under `require`'s policy: `if !require_root("unshare --pid") { return; }`.
pub fn require_root(why: &str) -> bool {
    require(is_root(), &format!("needs root for {why}"))
}

/// An external program, under `require`'s policy: `if !require_tool("groff") { return; }`.
pub fn require_tool(tool: &str) -> bool {
    require(
        find_tool(tool).is_some(),
        &format!("needs {tool}, which is not installed (scripts/setup test installs it)"),
    )
}

/// Where `tool` is: on PATH, or in an sbin directory (not on a non-root PATH everywhere).
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            [
                "/usr/local/sbin",
                "/usr/sbin",
                "/sbin",
                "/usr/local/bin",
                "/usr/bin",
                "/bin",
            ]
            .map(PathBuf::from),
        )
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Runs a PostgreSQL server program, as `postgres` when we are root.
fn as_pg(bin: &Path, prog: &str) -> Command {
    let mut c = Command::new(bin.join(prog));
    if is_root() {
        let u = nix::unistd::User::from_name("postgres")
            .unwrap()
            .expect("a postgres OS user");
        use std::os::unix::process::CommandExt;
        c.uid(u.uid.as_raw()).gid(u.gid.as_raw());
    }
    c.env_remove("PGDATA");
    c
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn chown_pg(p: &Path) {
    if is_root() {
        let u = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        nix::unistd::chown(p, Some(u.uid), Some(u.gid)).unwrap();
    }
}

/// A cluster's directory, which holds its Unix socket: the server's user's alone (0700), so that
/// the trust authentication on that socket lets in no other local user (issue 22).
fn private_cluster_dir(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    chown_pg(dir);
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
}

fn run_ok(mut c: Command, what: &str) {
    let out = c
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Cluster {
    /// Starts a new cluster. `extra_conf` lines go into postgresql.conf.
    pub fn start(name: &str, extra_conf: &str) -> Cluster {
        Self::start_with(name, extra_conf, "")
    }

    /// Like `start`, with lines put first in pg_hba.conf.
    pub fn start_with(name: &str, extra_conf: &str, hba_first: &str) -> Cluster {
        let bin = pg_bin();
        let dir = std::env::temp_dir().join(format!("pglock-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        private_cluster_dir(&dir);
        let pwfile = dir.join("pw");
        std::fs::write(&pwfile, SUPERUSER_PASSWORD).unwrap();
        chown_pg(&pwfile);
        let data = dir.join("data");
        let mut c = as_pg(&bin, "initdb");
        c.args([
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "--no-sync",
            "--pwfile",
            pwfile.to_str().unwrap(),
        ]);
        run_ok(c, "initdb");
        let port = free_port();
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nmax_connections = 300\nfsync = off\nsynchronous_commit = off\nshared_buffers = 16MB\nlog_min_messages = warning\n{extra_conf}\n",
            dir.display()
        );
        if !hba_first.is_empty() {
            let hba = data.join("pg_hba.conf");
            let rest = std::fs::read_to_string(&hba).unwrap();
            std::fs::write(&hba, format!("{hba_first}\n{rest}")).unwrap();
        }
        let conf_path = data.join("postgresql.auto.conf");
        let mut existing = std::fs::read_to_string(&conf_path).unwrap_or_default();
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing).unwrap();
        let cluster = Cluster { dir, port, bin };
        cluster.pg_ctl_start();
        cluster.watchdog();
        cluster.psql_super(&format!(
            "CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}'; GRANT ALL ON DATABASE postgres TO app;"
        ));
        cluster
    }

    /// A streaming hot standby of this cluster (pg_basebackup -R), on a port of its own.
    pub fn standby(&self, name: &str) -> Cluster {
        let dir = std::env::temp_dir().join(format!("pglock-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        private_cluster_dir(&dir);
        let data = dir.join("data");
        let mut c = as_pg(&self.bin, "pg_basebackup");
        c.args([
            "-D",
            data.to_str().unwrap(),
            "-h",
            self.dir.to_str().unwrap(),
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-R",
            "-X",
            "stream",
            "--no-sync",
        ]);
        run_ok(c, "pg_basebackup");
        let port = free_port();
        let conf_path = data.join("postgresql.auto.conf");
        let mut conf = std::fs::read_to_string(&conf_path).unwrap();
        conf.push_str(&format!(
            "port = {port}\nunix_socket_directories = '{}'\nhot_standby = on\n",
            dir.display()
        ));
        std::fs::write(&conf_path, conf).unwrap();
        let cluster = Cluster {
            dir,
            port,
            bin: self.bin.clone(),
        };
        cluster.pg_ctl_start();
        cluster.watchdog();
        cluster
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `pg_ctl ACTION...` on this cluster, waiting up to a minute.
    fn pg_ctl(&self, action: &[&str]) {
        let mut c = as_pg(&self.bin, "pg_ctl");
        let (data, log) = (self.data(), self.dir.join("log"));
        c.args([
            "-D",
            data.to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
            "-w",
            "-t",
            "60",
        ])
        .args(action);
        run_ok(c, &format!("pg_ctl {}", action.join(" ")));
    }

    pub fn pg_ctl_start(&self) {
        self.pg_ctl(&["start"]);
    }

    /// `pg_ctl restart -m fast`.
    pub fn restart(&self) {
        self.pg_ctl(&["-m", "fast", "restart"]);
    }

    /// `pg_ctl stop -m fast`: the server is down until `pg_ctl_start`.
    pub fn stop(&self) {
        self.pg_ctl(&["-m", "fast", "stop"]);
    }

    /// `pg_ctl promote` of a standby, waiting until it is the primary.
    pub fn promote(&self) {
        self.pg_ctl(&["promote"]);
    }

    /// Stops the server and removes the directory once this test process is gone.
    fn watchdog(&self) {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             {run}'{bin}/pg_ctl' -D '{data}' -m immediate stop >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            run = as_postgres(),
            bin = self.bin.display(),
            data = self.data().display(),
            dir = self.dir.display()
        );
        spawn_detached(&script);
    }

    pub fn url(&self) -> String {
        format!(
            "postgres://postgres:{SUPERUSER_PASSWORD}@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    pub fn app_url(&self) -> String {
        format!(
            "postgres://app:{APP_PASSWORD}@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    /// Superuser over the Unix socket (trust): for the suite's own queries.
    pub fn socket_url(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.dir.display(),
            self.port
        )
    }

    pub fn psql_cmd(&self) -> Command {
        let mut c = Command::new(self.bin.join("psql"));
        c.args([
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &self.socket_url(),
        ]);
        c.env_remove("PGHOST")
            .env_remove("PGPORT")
            .env_remove("PGUSER")
            .env_remove("PGDATABASE");
        c
    }

    /// Runs SQL as the superuser; returns stdout, trimmed.
    pub fn psql_super(&self, sql: &str) -> String {
        psql_stdout(self.psql_cmd(), sql)
    }

    /// Advisory locks on `id` as (pid, mode, granted, application_name).
    pub fn locks_on(&self, id: i64) -> Vec<String> {
        let classid = ((id as u64) >> 32) as u32;
        let objid = (id as u64 & 0xffff_ffff) as u32;
        let out = self.psql_super(&format!(
            "SELECT l.mode || ',' || CASE WHEN l.granted THEN 't' ELSE 'f' END || ',' || coalesce(a.application_name, '') FROM pg_locks l \
             LEFT JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.classid = {classid} \
             AND l.objid = {objid} AND l.objsubid = 1 ORDER BY 1"
        ));
        out.lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    }
}

/// Runs `sql` with psql command `c` (`-c SQL`, no stdin), which must succeed; returns stdout,
/// trimmed.
fn psql_stdout(mut c: Command, sql: &str) -> String {
    let out = c.args(["-c", sql]).stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The main cluster of this test run: TCP with scram-sha-256, no TLS.
pub fn pg() -> &'static Cluster {
    require_setup();
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::start("main", ""))
}

/// A unique key name for one test.
pub fn key(test: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{test}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn bin() -> &'static str {
    require_setup();
    env!("CARGO_BIN_EXE_pglock")
}

/// `pglock ARGS` with a clean environment that points at the main cluster.
pub fn pglock(args: &[&str]) -> Command {
    let mut c = pglock_bare(args);
    c.env("PGLOCK_DATABASE_URL", pg().url());
    c
}

/// `pglock run --key NAME -- sh -c SCRIPT` against the main cluster.
pub fn pglock_sh(name: &str, script: &str) -> Command {
    Run::new(name).sh(script)
}

/// `pglock ARGS` with no connection settings at all.
pub fn pglock_bare(args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args);
    clean_env(&mut c);
    c
}

/// No PG* variable, no DATABASE_URL, no home (no ~/.pgpass...), no stdin.
fn clean_env(c: &mut Command) {
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") || k == "DATABASE_URL" {
            c.env_remove(k);
        }
    }
    c.env("HOME", "/nonexistent").stdin(Stdio::null());
}

/// `pglock run` the way the tests run it, built up: options, then where it connects (the main
/// cluster as the superuser unless told otherwise), then the child, which gives the `Command`
/// (`pglock_bare`'s clean environment):
///
/// ```ignore
/// Run::new(&name).args(["-q", "--heartbeat", "300ms"]).on(&cluster).sh("echo hi")
/// Run::new(&name).through(bouncer()).args(["--scope", "transaction"]).child(["sleep", "3"])
/// Run::new(&name).url(&cluster.app_url()).child(["true"])  // another role, a relay, ...
/// ```
pub struct Run {
    under: Vec<std::ffi::OsString>,
    args: Vec<std::ffi::OsString>,
    url: Option<String>,
}

impl Run {
    /// `pglock run --key KEY`, against the main cluster as the superuser.
    pub fn new(key: &str) -> Run {
        Run::keyless().args(["--key", key])
    }

    /// `pglock run` with no `--key` (it comes from the environment, `PGLOCK_KEY`...).
    pub fn keyless() -> Run {
        Run {
            under: Vec::new(),
            args: vec!["run".into()],
            url: Some(pg().url()),
        }
    }

    /// More options, before the `--` of the child.
    pub fn args<S: AsRef<std::ffi::OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Run {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Directly to cluster `c`, as its superuser.
    pub fn on(self, c: &Cluster) -> Run {
        self.url(c.url())
    }

    /// Through PgBouncer `b`, to the superuser's database (`Bouncer::url`).
    pub fn through(self, b: &Bouncer) -> Run {
        self.url(b.url())
    }

    /// Through PgBouncer `b` as role `pglock_pooled` (`Bouncer::pooled_url`).
    pub fn pooled(self, b: &Bouncer) -> Run {
        self.url(b.pooled_url())
    }

    /// To this URL (`PGLOCK_DATABASE_URL`): another role, a relay, a pooler of the test's own.
    pub fn url(mut self, url: impl Into<String>) -> Run {
        self.url = Some(url.into());
        self
    }

    /// pglock started by another program: `under(["unshare", "--pid", "--fork"])` runs
    /// `unshare --pid --fork PGLOCK run ...` (with the same environment).
    pub fn under<S: AsRef<std::ffi::OsStr>>(mut self, wrapper: impl IntoIterator<Item = S>) -> Run {
        self.under = wrapper
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        self
    }

    /// `--database-url URL` on the command line, and nothing in the environment.
    pub fn database_url(self, url: &str) -> Run {
        self.args(["--database-url", url]).unconnected()
    }

    /// With no connection settings at all (the test sets them on the `Command`, or none).
    pub fn unconnected(mut self) -> Run {
        self.url = None;
        self
    }

    /// `-- CHILD...`: the command to spawn or to give to `expect_code`.
    pub fn child<S: AsRef<std::ffi::OsStr>>(self, child: impl IntoIterator<Item = S>) -> Command {
        let mut c = match self.under.split_first() {
            None => Command::new(bin()),
            Some((wrapper, args)) => {
                let mut c = Command::new(wrapper);
                c.args(args).arg(bin());
                c
            }
        };
        c.args(&self.args).arg("--").args(child);
        clean_env(&mut c);
        if let Some(url) = &self.url {
            c.env("PGLOCK_DATABASE_URL", url);
        }
        c
    }

    /// `-- sh -c SCRIPT`.
    pub fn sh(self, script: &str) -> Command {
        self.child(["sh", "-c", script])
    }
}

pub fn show(cmd: &Command, out: &Output) -> String {
    format!(
        "command: {:?}\nstatus: {:?}\nstdout:\n{}\nstderr:\n{}",
        cmd,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs to completion; asserts the exit code. Returns (stdout, stderr).
pub fn expect_code(mut cmd: Command, code: i32) -> (String, String) {
    let out = cmd.output().expect("spawn pglock");
    assert_eq!(out.status.code(), Some(code), "{}", show(&cmd, &out));
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pglock-t-{}-{}", std::process::id(), key(name)));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Polls `cond` every 10 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

pub fn lock_id(name: &str) -> i64 {
    let (out, _) = expect_code(pglock_bare(&["key", name]), 0);
    out.trim().parse().unwrap()
}

/// CLOCK_REALTIME in nanoseconds, comparable with `date +%s%N` in the children.
pub fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128
}

/// Sends `sig` to a spawned process.
pub fn signal(child: &std::process::Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
}

/// Whether some session holds lock `id` (granted, in any mode).
pub fn someone_holds(id: i64) -> bool {
    pg().locks_on(id).iter().any(|l| l.contains(",t,"))
}

/// Whether a session waits for lock `id`.
pub fn someone_waits(id: i64) -> bool {
    pg().locks_on(id).iter().any(|l| l.contains(",f,"))
}

/// Runs `f` in `cmd`'s forked child before it execs: a process attribute set the way a parent
/// sets it for pglock (a CPU mask, a blocked signal, a nice value).
///
/// # Safety
/// `f` runs between fork and exec of this multi-threaded process: it may call only
/// async-signal-safe functions and must not allocate.
pub unsafe fn before_exec(cmd: &mut Command, mut f: impl FnMut() + Send + Sync + 'static) {
    // SAFETY: the caller's promise about `f` is pre_exec's requirement.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, move || {
            f();
            Ok(())
        });
    }
}

/// SIGTERM, then waits; returns the exit code.
pub fn stop(mut child: std::process::Child) -> Option<i32> {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    child.wait().ok().and_then(|s| s.code())
}

/// Reads `start NS` / `end NS` lines that children append to a file, as (start, end) intervals
/// in order of start.
pub fn intervals(path: &Path) -> Vec<(i128, i128)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut starts = std::collections::HashMap::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["start", id, ns] => {
                starts.insert(id.to_string(), ns.parse::<i128>().unwrap());
            }
            ["end", id, ns] => out.push((starts[*id], ns.parse::<i128>().unwrap())),
            _ => panic!("bad line {line:?} in {}", path.display()),
        }
    }
    out.sort();
    out
}

/// A child script that records its interval in `file` and sleeps `secs` in between.
pub fn stamp_script(file: &Path, secs: &str) -> String {
    format!(
        "echo start $PGLOCK_RUN_ID $(date +%s%N) >> {f}; sleep {secs}; echo end $PGLOCK_RUN_ID $(date +%s%N) >> {f}",
        f = file.display()
    )
}

/// Runs the shell command `server` in the background, as `postgres` when we are root, until this
/// test process is gone or the server has exited; then sends signal `sig` (`"TERM"`, `"INT"`...)
/// to the script's whole process group (`kill 0`), the server's included. Sent to `runuser`
/// alone, SIGINT left pgpool-II running: a background job of `sh` ignores SIGINT, and `runuser`
/// passes on only the signals it catches.
pub fn serve_while_tests_run(server: &str, sig: &str) {
    let script = format!(
        "{run}{server} & p=$!; while kill -0 {pid} 2>/dev/null && kill -0 $p 2>/dev/null; do sleep 1; done; kill -s {sig} 0",
        run = as_postgres(),
        pid = std::process::id()
    );
    spawn_detached(&script);
}

/// The prefix that runs a shell command as `postgres` when we are root (PostgreSQL refuses root).
fn as_postgres() -> &'static str {
    if is_root() {
        "runuser -u postgres -- "
    } else {
        ""
    }
}

/// Starts `sh -c SCRIPT` in a process group of its own, with no stdio, and leaves it running.
#[allow(clippy::zombie_processes)] // it must outlive this process; init reaps it
fn spawn_detached(script: &str) {
    use std::os::unix::process::CommandExt;
    Command::new("sh")
        .args(["-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("sh");
}

/// A real PgBouncer in front of the main cluster, with PgBouncer's own defaults except what a
/// test sets (`pool_mode`, `default_pool_size`...): server connections reused last-in-first-out,
/// as it comes. Run as the `postgres` user (PgBouncer refuses root); stopped when dropped, or with
/// the test process. Database `postgres` connects as the superuser, database `app` as role `app`
/// (whatever the client's user name), so that role settings can be seen through the pool.
pub struct Bouncer {
    pub port: u16,
    pub log: PathBuf,
    dir: PathBuf,
}

impl Bouncer {
    /// Starts a PgBouncer with these `[pgbouncer]` settings (one `key = value` a line).
    pub fn start(name: &str, settings: &str) -> Bouncer {
        require_setup();
        // Always a failure when missing, in CI or not: the shared PgBouncer is one of the suite's
        // own servers (scripts/setup test --check, above, stops the binary first anyway).
        let bin = find_tool("pgbouncer")
            .map(|p| p.display().to_string())
            .expect("pgbouncer is not installed (apt-get install pgbouncer; .ci/run does it)");
        let dir = tmpdir(&format!("pgbouncer-{name}"));
        chown_pg(&dir);
        let port = free_port();
        let ini = dir.join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\npostgres = host=127.0.0.1 port={pg} dbname=postgres user=postgres password={SUPERUSER_PASSWORD}\n\
                 app = host=127.0.0.1 port={pg} dbname=postgres user=app password={APP_PASSWORD}\n\
                 pooled = host=127.0.0.1 port={pg} dbname=postgres user=pglock_pooled password={POOLED_PASSWORD}\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\nauth_type = trust\n\
                 auth_file = {d}/users.txt\nlogfile = {d}/pgbouncer.log\npidfile = {d}/pgbouncer.pid\n\
                 admin_users = postgres\n{settings}\n",
                pg = pg().port,
                d = dir.display()
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("users.txt"),
            "\"postgres\" \"\"\n\"app\" \"\"\n\"pglock_pooled\" \"\"\n",
        )
        .unwrap();
        for f in ["pgbouncer.ini", "users.txt"] {
            chown_pg(&dir.join(f));
        }
        serve_while_tests_run(&format!("{bin} {}", ini.display()), "TERM");
        assert!(
            wait_until(Duration::from_secs(10), || std::net::TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "pgbouncer did not start"
        );
        Bouncer {
            port,
            log: dir.join("pgbouncer.log"),
            dir,
        }
    }

    /// The superuser's database through the pool.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    /// Role `pglock_pooled`'s database through the pool: a role with defaults that a session
    /// setting would override (see `pooled_role`).
    pub fn pooled_url(&self) -> String {
        pooled_role();
        format!(
            "postgres://pglock_pooled@127.0.0.1:{}/pooled?sslmode=disable",
            self.port
        )
    }

    /// Role `app`'s database through the pool.
    pub fn app_url(&self) -> String {
        format!("postgres://app@127.0.0.1:{}/app?sslmode=disable", self.port)
    }

    /// psql through the pool (`url`), returning stdout trimmed.
    pub fn psql(&self, url: &str, sql: &str) -> String {
        let mut c = Command::new(pg().bin.join("psql"));
        c.args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", url])
            .env_remove("PGHOST")
            .env_remove("PGPORT");
        psql_stdout(c, sql)
    }

    /// `pglock ARGS` connecting through this PgBouncer.
    pub fn pglock(&self, args: &[&str]) -> Command {
        let mut c = pglock_bare(args);
        c.env("PGLOCK_DATABASE_URL", self.url());
        c
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pgbouncer.pid")) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
    }
}

pub const POOLED_PASSWORD: &str = "pooled-pw-2c9e";

/// Role `pglock_pooled`, with role defaults that pglock's own session settings would override
/// (so that a setting left on a pooled server connection shows): statement_timeout 2s,
/// lock_timeout 1500ms, idle_in_transaction_session_timeout 2s.
pub fn pooled_role() {
    static R: OnceLock<()> = OnceLock::new();
    R.get_or_init(|| {
        pg().psql_super(&format!(
            "CREATE ROLE pglock_pooled LOGIN PASSWORD '{POOLED_PASSWORD}'; \
             ALTER ROLE pglock_pooled SET statement_timeout = '2s'; \
             ALTER ROLE pglock_pooled SET lock_timeout = '1500ms'; \
             ALTER ROLE pglock_pooled SET idle_in_transaction_session_timeout = '2s'"
        ));
    });
}

/// The suite's shared PgBouncer: transaction pooling, everything else as it comes.
pub fn bouncer() -> &'static Bouncer {
    static B: OnceLock<Bouncer> = OnceLock::new();
    B.get_or_init(|| Bouncer::start("shared", "pool_mode = transaction"))
}

/// The id of the queue lock of `--limit` waiters on lock `id` (SHA-256 of "<id>:queue").
pub fn lock_id_of_queue(id: i64) -> i64 {
    lock_id(&format!("{id}:queue"))
}

/// Spawns `cmd` (a pglock run, or application code) and waits until lock `id` shows as granted
/// in pg_locks: the lock is then held by it.
pub fn hold(mut cmd: Command, id: i64) -> std::process::Child {
    let child = cmd.stdout(Stdio::null()).spawn().expect("spawn the holder");
    assert!(
        wait_until(Duration::from_secs(10), || pg()
            .locks_on(id)
            .iter()
            .any(|l| l.contains(",t,"))),
        "lock {id} was not taken by {cmd:?}"
    );
    child
}

/// Waits for every child; each must exit 0.
pub fn all_succeed(children: Vec<std::process::Child>) {
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The intervals follow one another: no two overlap.
pub fn assert_one_at_a_time(iv: &[(i128, i128)]) {
    for w in iv.windows(2) {
        assert!(w[0].1 <= w[1].0, "overlap: {:?} then {:?}", w[0], w[1]);
    }
}

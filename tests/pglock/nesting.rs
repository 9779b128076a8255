//! Contract §4, nesting you cannot fool: an inherited `PGLOCK_HELD` entry lets a nested run skip
//! the lock only when the server confirms that the session it names holds the lock; pid 1 counts
//! as an ancestor (a container's entrypoint), and a forged, copied or stale entry never skips.
//! (The shared/exclusive and per-database cases are in faults.rs and migration.rs.)

use crate::harness::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `(backend pid, backend_start)` of the session holding lock `id` granted, as pglock writes them.
fn session_holding(id: i64) -> (String, String) {
    let classid = ((id as u64) >> 32) as u32;
    let objid = (id as u64 & 0xffff_ffff) as u32;
    let out = pg().psql_super(&format!(
        "SELECT l.pid || '|' || to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') \
         FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' \
         AND l.classid = {classid} AND l.objid = {objid} AND l.objsubid = 1 AND l.granted"
    ));
    let (pid, start) = out.split_once('|').expect("one holder");
    (pid.to_string(), start.to_string())
}

/// A live session that holds no advisory lock: the checkpointer's.
fn other_session() -> (String, String) {
    let out = pg().psql_super(
        "SELECT pid || '|' || to_char(backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') \
         FROM pg_stat_activity WHERE backend_type = 'checkpointer'",
    );
    let (pid, start) = out.split_once('|').expect("a checkpointer");
    (pid.to_string(), start.to_string())
}

fn esc(start: &str) -> String {
    start.replace(':', "%3A").replace(' ', "%20")
}

/// Shell function `st PID`: when process PID started (`/proc/PID/stat` field 22), as a genuine
/// entry names its pglock (`PID.START`): `$$.$(st $$)` is the parent shell, `1.$(st 1)` pid 1.
const ST: &str = "st() { sed 's/.*) //' /proc/$1/stat | cut -d' ' -f20; };";

/// `sh -c SCRIPT` with a clean environment pointing at the main cluster.
fn sh(script: &str) -> Command {
    let mut c = Command::new("sh");
    c.args(["-c", script]);
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") || k == "DATABASE_URL" {
            c.env_remove(k);
        }
    }
    c.env("PGLOCK_DATABASE_URL", pg().url())
        .env("HOME", "/nonexistent")
        .stdin(Stdio::null());
    c
}

/// Runs `pglock run -w 1s --key NAME -- touch RAN` from a shell with `PGLOCK_HELD` set to
/// `held`, where `$$` in it is that shell (pglock's parent); asserts that the run did not skip the
/// lock: it waited, gave up (75) and ran nothing. Returns pglock's stderr.
fn expect_waits(name: &str, held: &str, dir: &std::path::Path) -> String {
    let ran = dir.join("ran");
    let _ = std::fs::remove_file(&ran);
    // `; exit $?` keeps the shell from exec'ing pglock: the shell stays its parent.
    let script = format!(
        "{ST} PGLOCK_HELD=\"{held}\" {bin} run -w 1s --key {name} -- touch {ran}; exit $?",
        bin = bin(),
        ran = ran.display()
    );
    let (_, err) = expect_code(sh(&script), 75);
    assert!(
        !ran.exists(),
        "the command ran with PGLOCK_HELD={held}: {err}"
    );
    assert!(!err.contains("already held"), "{err}");
    err
}

#[test]
fn nesting_under_pid_1_of_a_pid_namespace_runs_at_once() {
    if !require_root("unshare --pid") || !require_tool("unshare") {
        return;
    }
    let name = key("nest-pid1");
    let dir = tmpdir("nest-pid1");
    let file = dir.join("ran");
    let inner = format!(
        "{} run -w 5s --key {name} -- touch {}",
        bin(),
        file.display()
    );
    let cmd = Run::new(&name)
        .under(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"])
        .sh(&inner);
    let t = Instant::now();
    let (_, err) = expect_code(cmd, 0);
    assert!(file.exists(), "{err}");
    assert!(err.contains("already held"), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "{:?}: {err}",
        t.elapsed()
    );
}

#[test]
fn nesting_with_a_forged_variable_waits_for_the_real_holder() {
    let name = key("nest-forged");
    let id = lock_id(&name);
    let dir = tmpdir("nest-forged");
    let holder = hold(Run::new(&name).child(["sleep", "30"]), id);
    let (hpid, hsess) = session_holding(id);
    let hstart = std::fs::read_to_string(format!("/proc/{}/stat", holder.id()))
        .unwrap()
        .rsplit(") ")
        .next()
        .unwrap()
        .split(' ')
        .nth(19)
        .unwrap()
        .to_string();
    let (opid, ostart) = other_session();
    let dbname = url_dbname();
    let wrong_start = esc("2001-02-03 04:05:06.000007");
    for (held, why) in [
        // pid 1 (always an ancestor) and the parent shell, with their true start times (as a
        // deliberate forger would write them) and some other live session.
        (
            format!("{id}:exclusive:1.$(st 1):{dbname}:{opid}:{}", esc(&ostart)),
            "does not confirm",
        ),
        (
            format!(
                "{id}:exclusive:$$.$(st $$):{dbname}:{opid}:{}",
                esc(&ostart)
            ),
            "does not confirm",
        ),
        // The real holder's backend pid with another start (a reused pid).
        (
            format!("{id}:exclusive:1.$(st 1):{dbname}:{hpid}:{wrong_start}"),
            "does not confirm",
        ),
        (
            format!("{id}:shared:$$.$(st $$):{dbname}:{hpid}:{wrong_start}"),
            "does not confirm",
        ),
        // The real holder's session, copied with pid 1 or the parent shell for the pglock but
        // the start of another process (the holder's own, or a made-up one): not an ancestor.
        (
            format!("{id}:exclusive:1.{hstart}:{dbname}:{hpid}:{}", esc(&hsess)),
            "",
        ),
        (
            format!("{id}:exclusive:$$.{hstart}:{dbname}:{hpid}:{}", esc(&hsess)),
            "",
        ),
        (
            format!("{id}:exclusive:$$.12345:{dbname}:{hpid}:{}", esc(&hsess)),
            "",
        ),
        // An older pglock's entries (no session, no start): they used to skip the lock.
        (format!("{id}:exclusive:1:{dbname}"), ""),
        (format!("{id}:exclusive:$$"), ""),
        // Several at once.
        (
            format!(
                "{id}:exclusive:1;{id}:exclusive:$$.$(st $$):{dbname}:{opid}:{};junk",
                esc(&ostart)
            ),
            "PGLOCK_HELD",
        ),
    ] {
        let err = expect_waits(&name, &held, &dir);
        assert!(err.contains(why), "PGLOCK_HELD={held}: {err}");
    }
    let _ = stop(holder);
}

/// The database name in the main cluster's URL (what the entry must name).
fn url_dbname() -> String {
    let (out, _) = expect_code(pglock_sh(&key("nest-db"), "echo \"$PGLOCK_HELD\""), 0);
    out.trim()
        .split(':')
        .nth(3)
        .expect("a DB field")
        .to_string()
}

#[test]
fn a_copied_entry_of_an_ancestor_that_exited_does_not_skip() {
    let name = key("nest-stale");
    let id = lock_id(&name);
    let dir = tmpdir("nest-stale");
    // A genuine entry, kept after its pglock (and its lock session) ended.
    let (out, _) = expect_code(pglock_sh(&name, "echo \"$PGLOCK_HELD\""), 0);
    let entry = out.trim().to_string();
    let f: Vec<&str> = entry.split(':').collect();
    assert_eq!(f.len(), 6, "{entry}");
    assert_eq!(f[0], id.to_string());
    // Its pglock pid rewritten to ancestors of the next run (pid 1, its parent shell), as a copied
    // variable in a container would be.
    let as_pid = |p: &str| {
        let mut g = f.clone();
        g[2] = p;
        g.join(":")
    };
    // With the lock free, the run takes it itself (and says why it did not skip).
    let script = format!(
        "PGLOCK_HELD=\"{}\" {} run -w 5s --key {name} -- true; exit $?",
        as_pid("$$.$(st $$)"),
        bin()
    );
    let (_, err) = expect_code(sh(&format!("{ST} {script}")), 0);
    assert!(err.contains("does not confirm"), "{err}");
    assert!(err.contains("acquired lock"), "{err}");
    assert!(!err.contains("already held"), "{err}");
    // With another session holding it, the run waits for that one.
    let holder = hold(Run::new(&name).child(["sleep", "30"]), id);
    for p in ["1.$(st 1)", "$$.$(st $$)", "1", "$$"] {
        expect_waits(&name, &as_pid(p), &dir);
    }
    let _ = stop(holder);
}

#[test]
fn nesting_is_confirmed_for_slots_and_transaction_scope() {
    let name = key("nest-slot");
    // The inner run finds the slot's session; the child's entry names the slot and the same
    // session as PGLOCK_BACKEND_PID.
    let inner = |mode: &str| {
        format!(
            "{} run {mode} -w 5s --key {name} -- sh -c 'echo \"$PGLOCK_HELD\"; echo \"$PGLOCK_BACKEND_PID\"'",
            bin()
        )
    };
    let (exclusive, shared) = (inner(""), inner("--shared"));
    for (outer, script) in [
        (&["--limit", "2"][..], &exclusive),
        (&["--scope", "transaction"][..], &exclusive),
        (&["--shared"][..], &shared),
    ] {
        let t = Instant::now();
        let (out, err) = expect_code(Run::new(&name).args(outer).sh(script), 0);
        assert!(err.contains("already held"), "{outer:?}: {err}");
        assert!(t.elapsed() < Duration::from_secs(4), "{outer:?}: {err}");
        let mut lines = out.lines();
        let held = lines.next().unwrap_or_default();
        let backend = lines.next().unwrap_or_default();
        let entries: Vec<Vec<&str>> = held.split(';').map(|e| e.split(':').collect()).collect();
        assert_eq!(entries.len(), 2, "{held}");
        // The nested run's own entry carries the ancestor's session (and slot).
        assert_eq!(entries[0][4..], entries[1][4..], "{held}");
        assert_eq!(entries[1][4], backend, "{held}");
        let slot = outer.contains(&"--limit");
        assert_eq!(entries[1].len(), if slot { 7 } else { 6 }, "{held}");
    }
}

#[test]
fn nesting_through_pgbouncer_confirms_the_backend_that_ran_the_lock_statement() {
    let name = key("nest-pgb");
    let inner = format!(
        "{} run -w 5s --scope transaction --key {name} -- sh -c 'echo \"$PGLOCK_HELD\"'",
        bin()
    );
    let cmd = Run::new(&name)
        .args(["--scope", "transaction"])
        .through(bouncer())
        .sh(&inner);
    let t = Instant::now();
    let (out, err) = expect_code(cmd, 0);
    assert!(err.contains("already held"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(4), "{err}");
    assert_eq!(out.trim().split(';').count(), 2, "{out}");
}

#[test]
fn a_nested_runs_command_dies_with_the_ancestors_group() {
    // The nested run becomes its command, inside the ancestor's child's process group: when the
    // ancestor stops that group (here at --max-runtime), a grandchild that ignores SIGTERM dies
    // too, before the lock is free for the next run.
    let name = key("nest-group");
    let dir = tmpdir("nest-group");
    let pidfile = dir.join("sleeper");
    let inner = format!(
        "{bin} run -q --key {name} -- sh -c 'trap \"\" TERM; sleep 30 & echo $! > {p}; wait'",
        bin = bin(),
        p = pidfile.display()
    );
    let mut outer = Run::new(&name)
        .args(["-q", "--max-runtime", "1s", "--kill-after", "500ms"])
        .sh(&inner);
    let out = outer.output().unwrap();
    assert_eq!(out.status.code(), Some(124), "{}", show(&outer, &out));
    let sleeper: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let alive = || {
        std::fs::read_to_string(format!("/proc/{sleeper}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
    };
    assert!(
        !alive(),
        "the nested command's grandchild {sleeper} outlived the ancestor's lock"
    );
    expect_code(Run::new(&name).args(["-n"]).child(["true"]), 0);
}

#[test]
fn a_nested_run_that_cannot_see_its_ancestors_session_fails_at_once() {
    // The inner run connects as a plain role, which pg_stat_activity does not show the start of
    // the superuser's session: it cannot confirm its ancestor, and must not wait for it forever.
    let name = key("nest-role");
    let inner = format!(
        "PGLOCK_DATABASE_URL='{url}' {bin} run --key {name} -- true; echo \"inner=$?\"",
        url = pg().app_url(),
        bin = bin()
    );
    let t = Instant::now();
    let (out, err) = expect_code(Run::new(&name).args(["-q"]).sh(&inner), 0);
    assert!(out.contains("inner=2"), "{out}{err}");
    assert!(err.contains("would wait for the ancestor forever"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn a_nested_run_execs_a_script_without_a_shebang_through_sh() {
    let name = key("nest-noshebang");
    let dir = tmpdir("nest-noshebang");
    let script = dir.join("job");
    let ran = dir.join("ran");
    std::fs::write(&script, format!("touch {}\n", ran.display())).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let inner = format!("{} run -q --key {name} -- {}", bin(), script.display());
    expect_code(Run::new(&name).args(["-q"]).sh(&inner), 0);
    assert!(ran.exists());
}

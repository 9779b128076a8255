//! Contract §11: fenced writes. A child's transaction that ran `PGLOCK_FENCE_SQL` commits before
//! the next holder's child starts, or fails; a run's fence statement fails once its session no
//! longer holds the lock; fencing tokens only grow.
//!
//! The in-flight transaction of a holder that dies is made with `setsid psql ... &`: a process
//! that leaves the child's process group, which pglock cannot stop (the README says so), and so
//! the one writer that only fencing can hold back.

use crate::harness::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `psql` against the main cluster as the superuser, for children's scripts: `$PSQL -c SQL`.
fn with_psql(mut c: Command) -> Command {
    c.env(
        "PSQL",
        format!(
            "{} -X -Atq -v ON_ERROR_STOP=1 -d {}",
            pg().bin.join("psql").display(),
            pg().url()
        ),
    );
    c
}

/// A fresh table for one test's rows.
fn table(name: &str) -> String {
    let t = format!("fence_{}", name.replace('-', "_"));
    pg().psql_super(&format!(
        "CREATE TABLE {t} (rep int, who text, at timestamptz DEFAULT clock_timestamp())"
    ));
    t
}

/// Waits until a transaction's `INSERT INTO t VALUES (rep, ...)` statement is under way in
/// another session (the writers here insert, then sleep before they commit).
fn wait_in_flight(t: &str, rep: u32) {
    assert!(
        wait_until(Duration::from_secs(10), || {
            pg().psql_super(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%INSERT INTO {t} VALUES ({rep},%' \
             AND state = 'active' AND pid <> pg_backend_pid()"
        )) == "1"
        }),
        "no transaction writing ({rep}, ...) into {t} is under way"
    );
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// One handoff: holder A's child leaves a fenced transaction in flight (rows of `rep`, committed
/// after `secs`), a second pglock waits for the lock, A is ended by `end_a`; the waiter's child
/// records its start and counts A's committed rows as its first action. Returns that count, and
/// whether the waiter's child started (timestamps recorded in the database) after A's last
/// statement before COMMIT: "1,t" when fenced.
fn handoff(
    name: &str,
    t: &str,
    rep: u32,
    fenced: bool,
    end_a: &dyn Fn(&std::process::Child, i32),
) -> String {
    let id = lock_id(name);
    let dir = tmpdir("fence-handoff");
    let seen = dir.join("seen");
    let pidfile = dir.join("backend");
    let fence_stmt = if fenced { "$PGLOCK_FENCE_SQL;" } else { "" };
    let a_script = format!(
        "echo $PGLOCK_BACKEND_PID > {p}; setsid $PSQL -c \"BEGIN; {fence_stmt} INSERT INTO {t} VALUES ({rep}, 'a'); SELECT pg_sleep(0.6); INSERT INTO {t} VALUES ({rep}, 'a-last'); COMMIT;\" >/dev/null 2>&1 & sleep 30",
        p = pidfile.display()
    );
    let a = hold(with_psql(pglock_sh(name, &a_script)), id);
    // A's transaction is under way (it has inserted; with the fence, it holds the fence lock).
    wait_in_flight(t, rep);
    let b_script = format!(
        "$PSQL -c \"INSERT INTO {t} VALUES ({rep}, 'b-start'); SELECT count(*) FROM {t} WHERE rep = {rep} AND who = 'a'\" > {s}",
        s = seen.display()
    );
    let b = with_psql(pglock_sh(name, &b_script))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || someone_waits(id)));
    let backend: i32 = read(&pidfile).parse().unwrap();
    end_a(&a, backend);
    let _ = a.wait_with_output();
    let out = b.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A's transaction ends in any case (unfenced, after the waiter's child has read).
    assert!(wait_until(Duration::from_secs(10), || pg().psql_super(
        &format!("SELECT count(*) FROM {t} WHERE rep = {rep} AND who = 'a-last'")
    ) == "1"));
    let after = pg().psql_super(&format!(
        "SELECT (SELECT at FROM {t} WHERE rep = {rep} AND who = 'b-start') > (SELECT at FROM {t} WHERE rep = {rep} AND who = 'a-last')"
    ));
    format!("{},{after}", read(&seen))
}

fn sigkill(a: &std::process::Child, _backend: i32) {
    signal(a, nix::sys::signal::Signal::SIGKILL);
}

fn terminate(_a: &std::process::Child, backend: i32) {
    pg().psql_super(&format!("SELECT pg_terminate_backend({backend})"));
}

#[test]
fn the_next_child_starts_after_a_killed_holders_fenced_transaction_committed() {
    let name = key("fence-kill");
    let t = table(&name);
    // Control: without the fence the waiter's child starts while A's transaction is still open
    // and does not see its row. (This is what makes the fenced repetitions below able to fail.)
    assert_eq!(handoff(&name, &t, 0, false, &sigkill), "0,f");
    for rep in 1..=10 {
        assert_eq!(
            handoff(&name, &t, rep, true, &sigkill),
            "1,t",
            "repetition {rep}"
        );
    }
}

#[test]
fn the_next_child_starts_after_a_terminated_holders_fenced_transaction_committed() {
    let name = key("fence-term");
    let t = table(&name);
    assert_eq!(handoff(&name, &t, 0, false, &terminate), "0,f");
    for rep in 1..=10 {
        assert_eq!(
            handoff(&name, &t, rep, true, &terminate),
            "1,t",
            "repetition {rep}"
        );
    }
}

/// Runs `sql` in a transaction that starts with fence statement `fence`: Ok, or psql's stderr.
fn fenced(fence: &str, sql: &str) -> Result<(), String> {
    let out = pg()
        .psql_cmd()
        .args(["-c", &format!("BEGIN; {fence}; {sql}; COMMIT;")])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Starts `pglock ARGS` whose child writes its fence statement, run id and backend pid to files
/// and stays; returns it once the statement is there, with (statement, run id, backend pid).
fn holder(run: Run, dir: &Path) -> (std::process::Child, String, String, i32) {
    let f = dir.join("fence.sql");
    let script = format!(
        "echo $PGLOCK_RUN_ID > {d}/run; echo $PGLOCK_BACKEND_PID > {d}/pid; echo \"$PGLOCK_FENCE_SQL\" > {f}.tmp; mv {f}.tmp {f}; sleep 30",
        d = dir.display(),
        f = f.display()
    );
    let mut cmd = run.sh(&script);
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || f.exists()),
        "{cmd:?}"
    );
    let pid = read(&dir.join("pid")).parse().unwrap();
    (child, read(&f), read(&dir.join("run")), pid)
}

#[test]
fn a_lost_lock_fails_the_old_fence_and_the_new_holder_passes() {
    let name = key("fence-lost");
    let t = table(&name);
    let dir = tmpdir("fence-lost");
    let (a, fence_a, run_a, backend_a) = holder(Run::new(&name), &dir);
    fenced(&fence_a, &format!("INSERT INTO {t} VALUES (1, 'a')")).unwrap();
    pg().psql_super(&format!("SELECT pg_terminate_backend({backend_a})"));
    let out = a.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(74));
    let err = fenced(&fence_a, &format!("INSERT INTO {t} VALUES (2, 'a')")).unwrap_err();
    assert!(err.contains("pglock") && err.contains(&run_a), "{err}");
    // The new holder's child writes; the old one still cannot.
    let dir_b = tmpdir("fence-lost-b");
    let (b, fence_b, _, _) = holder(Run::new(&name), &dir_b);
    fenced(&fence_b, &format!("INSERT INTO {t} VALUES (3, 'b')")).unwrap();
    assert!(fenced(&fence_a, &format!("INSERT INTO {t} VALUES (4, 'a')")).is_err());
    assert_eq!(stop(b), Some(143));
    assert_eq!(
        pg().psql_super(&format!(
            "SELECT string_agg(rep::text, ',' ORDER BY rep) FROM {t}"
        )),
        "1,3"
    );
}

#[test]
fn a_reused_backend_pid_does_not_pass() {
    let name = key("fence-forge");
    let dir = tmpdir("fence-forge");
    let (a, fence_a, _, backend) = holder(Run::new(&name), &dir);
    fenced(&fence_a, "SELECT 1").unwrap();
    // The right pid with another backend_start: a session that reused the pid.
    let start = fence_a
        .split("HH24:MI:SS.US') = '")
        .nth(1)
        .and_then(|s| s.split('\'').next())
        .expect("the statement names a backend_start")
        .to_string();
    let forged = fence_a.replace(&start, "2001-01-01 00:00:00.000001");
    assert!(forged.contains(&format!("l.pid = {backend}")));
    let err = fenced(&forged, "SELECT 1").unwrap_err();
    assert!(err.contains("pglock"), "{err}");
    // Another live session's pid with the holder's start does not pass either.
    let other =
        pg().psql_super("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'");
    let forged = ["l.pid = ", "a.pid = ", "pg_stat_get_activity("]
        .iter()
        .fold(fence_a.clone(), |f, at| {
            f.replace(&format!("{at}{backend}"), &format!("{at}{other}"))
        });
    assert!(!forged.contains(&format!("l.pid = {backend}")));
    assert!(fenced(&forged, "SELECT 1").is_err());
    stop(a);
}

#[test]
fn through_pgbouncer_in_transaction_scope_a_lost_holders_fence_fails_and_the_next_waits() {
    let name = key("fence-pgb");
    let dir = tmpdir("fence-pgb");
    let run = Run::new(&name)
        .args(["--scope", "transaction"])
        .through(bouncer());
    let (a, fence_a, run_a, _) = holder(run, &dir);
    // pglock's open transaction does not keep the fence lock.
    let id = lock_id(&name);
    assert!(!someone_holds(lock_id(&format!("{id}:fence"))));
    // A fenced transaction through the pooler too.
    let through_bouncer = |sql: &str| {
        Command::new(pg().bin.join("psql"))
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", &bouncer().url()])
            .args(["-c", &format!("BEGIN; {fence_a}; {sql}; COMMIT;")])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    assert!(through_bouncer("SELECT 1").status.success());
    // A fenced transaction still open when A lets go (2 s): the next holder, through the
    // pooler too, starts its child only after it has committed.
    let t = table(&name);
    let url = bouncer().url();
    let mut writer = Command::new(pg().bin.join("psql"))
        .args(["-X", "-Atq", "-v", "ON_ERROR_STOP=1", "-d", &url])
        .args([
            "-c",
            &format!(
                "BEGIN; {fence_a}; INSERT INTO {t} VALUES (1, 'a'); SELECT pg_sleep(2); COMMIT;"
            ),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_in_flight(&t, 1);
    let seen = dir.join("seen");
    let b = Run::new(&name)
        .args(["-q", "--scope", "transaction"])
        .url(&url)
        .sh(&format!(
            "{} -X -Atq -d '{url}' -c 'SELECT count(*) FROM {t}' > {}",
            pg().bin.join("psql").display(),
            seen.display()
        ))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || pg()
        .locks_on(id)
        .iter()
        .any(|l| l.contains(",f,"))));
    assert_eq!(stop(a), Some(143));
    assert_eq!(b.wait_with_output().unwrap().status.code(), Some(0));
    assert_eq!(read(&seen), "1");
    assert!(writer.wait().unwrap().success());
    let out = through_bouncer("SELECT 1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(&run_a), "{err}");
}

#[test]
fn shared_holders_are_fenced_and_an_exclusive_waiter_waits_for_both() {
    let name = key("fence-shared");
    let id = lock_id(&name);
    let t = table(&name);
    let (d1, d2) = (tmpdir("fence-sh1"), tmpdir("fence-sh2"));
    let (s1, f1, _, _) = holder(Run::new(&name).args(["--shared"]), &d1);
    let (s2, f2, _, _) = holder(Run::new(&name).args(["--shared"]), &d2);
    // Both shared holders' children leave a fenced transaction in flight (committed in 3 s)...
    let mut writers = Vec::new();
    for (i, f) in [(1, &f1), (2, &f2)] {
        writers.push(
            pg().psql_cmd()
                .args(["-c", &format!("BEGIN; {f}; INSERT INTO {t} VALUES ({i}, 's'); SELECT pg_sleep(3); COMMIT;")])
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    let shared_fence = lock_id(&format!("{id}:fence:shared"));
    assert!(wait_until(Duration::from_secs(10), || pg()
        .locks_on(shared_fence)
        .iter()
        .filter(|l| l.contains(",t,"))
        .count()
        == 2));
    // ...a third shared holder does not wait for them...
    let t0 = Instant::now();
    expect_code(Run::new(&name).args(["--shared"]).child(["true"]), 0);
    assert!(
        t0.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t0.elapsed()
    );
    // ...and an exclusive waiter, once both holders are gone, waits for both transactions.
    let dir = tmpdir("fence-shx");
    let seen = dir.join("seen");
    let w = with_psql(pglock_sh(
        &name,
        &format!("$PSQL -c \"SELECT count(*) FROM {t}\" > {}", seen.display()),
    ))
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    assert!(wait_until(Duration::from_secs(10), || someone_waits(id)));
    signal(&s1, nix::sys::signal::Signal::SIGKILL);
    signal(&s2, nix::sys::signal::Signal::SIGKILL);
    assert_eq!(w.wait_with_output().unwrap().status.code(), Some(0));
    assert_eq!(read(&seen), "2");
    for mut p in writers {
        assert!(p.wait().unwrap().success());
    }
}

#[test]
fn limit_slots_are_fenced_each() {
    let name = key("fence-limit");
    let t = table(&name);
    let (d1, d2) = (tmpdir("fence-l1"), tmpdir("fence-l2"));
    let (s1, f1, _, _) = holder(Run::new(&name).args(["--limit", "2"]), &d1);
    let (s2, f2, _, _) = holder(Run::new(&name).args(["--limit", "2"]), &d2);
    assert_ne!(f1, f2);
    fenced(&f1, &format!("INSERT INTO {t} VALUES (1, 'x')")).unwrap();
    fenced(&f2, &format!("INSERT INTO {t} VALUES (2, 'x')")).unwrap();
    // Slot holder 1 leaves a fenced transaction in flight and dies; the waiter that takes its
    // slot starts only after that transaction committed.
    let writer = pg()
        .psql_cmd()
        .args([
            "-c",
            &format!("BEGIN; {f1}; INSERT INTO {t} VALUES (3, 'x'); SELECT pg_sleep(3); COMMIT;"),
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_in_flight(&t, 3);
    let dir = tmpdir("fence-l3");
    let seen = dir.join("seen");
    let w = with_psql(Run::new(&name).args(["--limit", "2"]).sh(&format!(
        "$PSQL -c \"SELECT count(*) FROM {t} WHERE rep = 3\" > {}",
        seen.display()
    )))
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    signal(&s1, nix::sys::signal::Signal::SIGKILL);
    assert_eq!(w.wait_with_output().unwrap().status.code(), Some(0));
    assert_eq!(read(&seen), "1");
    assert!(fenced(&f1, "SELECT 1").is_err());
    stop(s2);
    let mut writer = writer;
    assert!(writer.wait().unwrap().success());
}

fn token(args: &[&str]) -> u64 {
    let (out, _) = expect_code(pglock(args), 0);
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("no token in {out:?}"))
}

#[test]
fn fencing_tokens_strictly_increase() {
    let (k1, k2) = (key("fence-tok1"), key("fence-tok2"));
    let print = ["--", "sh", "-c", "echo $PGLOCK_FENCING_TOKEN"];
    let mut last = 0;
    for _ in 0..50 {
        let t = token(
            &[
                &["run", "-q", "--fencing-token", "--key", &k1][..],
                &print[..],
            ]
            .concat(),
        );
        assert!(t > last, "{t} after {last}");
        last = t;
    }
    for i in 0..20 {
        let k = if i % 2 == 0 { &k1 } else { &k2 };
        let t = token(
            &[
                &["run", "-q", "--fencing-token", "--key", k][..],
                &print[..],
            ]
            .concat(),
        );
        assert!(t > last, "{t} after {last}");
        last = t;
    }
    // The option's environment variable; and without the option, no token.
    let mut c = pglock(&[&["run", "-q", "--key", &k1][..], &print[..]].concat());
    c.env("PGLOCK_FENCING_TOKEN", "1");
    let (out, _) = expect_code(c, 0);
    assert!(out.trim().parse::<u64>().unwrap() > last);
    let mut c = pglock(&[&["run", "-q", "--key", &k1][..], &print[..]].concat());
    c.env("PGLOCK_FENCING_TOKEN", "0");
    let (out, _) = expect_code(c, 0);
    assert_eq!(out.trim(), "");
}

#[test]
fn key_fence_sql_works_for_code_that_takes_the_lock_itself() {
    let name = key("fence-shape");
    let id = lock_id(&name);
    let (shape, _) = expect_code(pglock_bare(&["key", &name, "--fence-sql"]), 0);
    assert!(
        shape.contains(&lock_id(&format!("{id}:fence")).to_string()),
        "{shape}"
    );
    let statements: Vec<&str> = shape.lines().filter(|l| !l.starts_with("--")).collect();
    assert_eq!(statements.len(), 2, "{shape}");
    // A psql session takes the lock and the holder's fence, as the shape says...
    let dir = tmpdir("fence-shape");
    let who = dir.join("who");
    // The server writes the holder's identity there as the postgres user.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let mut h = pg()
        .psql_cmd()
        .args([
            "-c",
            &format!("SELECT pg_advisory_lock({id})"),
            "-c",
            statements[0],
            "-c",
            &format!("COPY (SELECT pg_backend_pid(), to_char(backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') FROM pg_stat_activity WHERE pid = pg_backend_pid()) TO '{}'", who.display()),
            "-c",
            "SELECT pg_sleep(3)",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || !read(&who).is_empty()));
    let who = read(&who);
    let (pid, start) = who.split_once('\t').unwrap();
    let check = statements[1]
        .trim_end_matches(';')
        .replace("HOLDER_PID", pid)
        .replace("HOLDER_BACKEND_START", start)
        .replace("RUN_ID", "mine");
    // ...its worker's fenced transaction passes, and fails once the holder is gone.
    fenced(&check, "SELECT 1").unwrap();
    h.wait().unwrap();
    let err = fenced(&check, "SELECT 1").unwrap_err();
    assert!(err.contains("pglock: run mine"), "{err}");
}

#[test]
fn a_nested_run_passes_its_ancestors_fence_on() {
    let name = key("fence-nest");
    let script = format!(
        "echo \"$PGLOCK_FENCE_SQL\"; {} run -q --key {name} -- sh -c 'echo \"$PGLOCK_FENCE_SQL\"'",
        bin()
    );
    let (out, _) = expect_code(Run::new(&name).args(["-q"]).sh(&script), 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    // The same statement (lock, fence, session); the message names each run's own id.
    let without_run = |l: &str| {
        let (head, tail) = l.split_once("pglock: run ").unwrap();
        format!("{head}{}", tail.get(16..).unwrap_or_default())
    };
    assert_eq!(without_run(lines[0]), without_run(lines[1]));
    assert!(lines[0].starts_with("DO $pglock$"));
}

#[test]
fn the_fence_wait_keeps_no_wait_and_timeout() {
    // The lock is free, but the killed holder's fenced transaction is still open (3 s): -n does
    // not wait for it, --timeout bounds the wait, and neither leaves the lock held.
    let name = key("fence-bound");
    let id = lock_id(&name);
    let t = table(&name);
    let a_script = format!(
        "setsid $PSQL -c \"BEGIN; $PGLOCK_FENCE_SQL; INSERT INTO {t} VALUES (1, 'a'); SELECT pg_sleep(3); COMMIT;\" >/dev/null 2>&1 & sleep 30"
    );
    let a = hold(with_psql(pglock_sh(&name, &a_script)), id);
    wait_in_flight(&t, 1);
    signal(&a, nix::sys::signal::Signal::SIGKILL);
    let mut a = a;
    let _ = a.wait();
    assert!(wait_until(Duration::from_secs(10), || !pg()
        .locks_on(id)
        .iter()
        .any(|l| l.contains(",t,"))));
    let t0 = Instant::now();
    let (_, err) = expect_code(Run::new(&name).args(["-n"]).child(["true"]), 75);
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );
    assert!(err.contains("fenced transaction"), "{err}");
    let t0 = Instant::now();
    expect_code(Run::new(&name).args(["-w", "500ms"]).child(["true"]), 75);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(2000),
        "{took:?}"
    );
    assert!(!pg().locks_on(id).iter().any(|l| l.contains(",t,")));
    // Without a bound the run waits for the transaction, then runs.
    let (out, _) = expect_code(
        with_psql(pglock_sh(
            &name,
            &format!("$PSQL -c \"SELECT count(*) FROM {t}\""),
        )),
        0,
    );
    assert_eq!(out.trim(), "1");
}

#[test]
fn a_nested_run_under_another_lock_fences_its_own_lock() {
    // A, then B, then A nested: the innermost child's statement is A's (its fence id, its
    // session), not B's, which it inherited; it passes while A is held.
    let (a, b) = (key("fence-nest-a"), key("fence-nest-b"));
    let (ida, idb) = (lock_id(&a), lock_id(&b));
    let dir = tmpdir("fence-nest-ab");
    let f = dir.join("fence.sql");
    let child = dir.join("child.sh");
    std::fs::write(
        &child,
        format!(
            "echo \"$PGLOCK_FENCE_SQL\" > {f}\n$PSQL -c \"BEGIN; $PGLOCK_FENCE_SQL; COMMIT;\"\n",
            f = f.display()
        ),
    )
    .unwrap();
    let inner = dir.join("inner.sh");
    std::fs::write(
        &inner,
        format!(
            "exec {} run -q --key {a} -- sh {}\n",
            bin(),
            child.display()
        ),
    )
    .unwrap();
    let middle = format!("{} run -q --key {b} -- sh {}", bin(), inner.display());
    expect_code(with_psql(Run::new(&a).args(["-q"]).sh(&middle)), 0);
    let sql = read(&f);
    assert!(
        sql.contains(&lock_id(&format!("{ida}:fence")).to_string()),
        "{sql}"
    );
    assert!(
        !sql.contains(&lock_id(&format!("{idb}:fence")).to_string()),
        "{sql}"
    );
}

/// The session that holds the lock is named in the fence statement and checked by the heartbeat
/// whatever the lock session's TimeZone and DateStyle (the server writes its start in them), at
/// either scope and behind a declared session pooler; the child's own session may have other
/// settings again.
#[test]
fn the_fence_and_the_heartbeat_hold_whatever_the_sessions_time_zone_and_date_style() {
    for (i, options) in [
        "-c TimeZone=Asia/Kathmandu",
        "-c TimeZone=America/St_Johns -c DateStyle=ISO,DMY",
        "-c TimeZone=America/St_Johns -c DateStyle=SQL,DMY",
        "-c DateStyle=German",
    ]
    .iter()
    .enumerate()
    {
        for (j, how) in [
            &[][..],
            &["--pooler", "session"],
            &["--scope", "transaction"],
        ]
        .iter()
        .enumerate()
        {
            let name = key(&format!("fence-tz-{i}-{j}"));
            let script = "$PSQL -c \"BEGIN; $PGLOCK_FENCE_SQL; SELECT 1; COMMIT;\" && sleep 0.7";
            let mut cmd = with_psql(
                Run::new(&name)
                    .args(["--heartbeat", "200ms"])
                    .args(*how)
                    .sh(&format!("PGOPTIONS='-c TimeZone=Pacific/Chatham' {script}")),
            );
            cmd.env("PGOPTIONS", options);
            let out = cmd.output().unwrap();
            let shown = show(&cmd, &out);
            assert_eq!(out.status.code(), Some(0), "{options} {how:?}: {shown}");
        }
    }
}

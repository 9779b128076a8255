//! Contract §7: every exit code this part of pglock owns.

use crate::harness::*;

#[test]
fn every_child_exit_code_passes_through() {
    // Over the Unix socket (trust) to keep 256 runs quick; the lock is the same.
    let name = key("codes");
    let url = pg().socket_url();
    for code in 0..=255 {
        let c = Run::new(&name).args(["-q"]).url(&url);
        expect_code(c.sh(&format!("exit {code}")), code);
    }
}

#[test]
fn a_child_killed_by_a_signal_gives_128_plus_n() {
    let name = key("sigdeath");
    for (sig, n) in [("KILL", 9), ("TERM", 15), ("SEGV", 11), ("USR1", 10)] {
        expect_code(pglock_sh(&name, &format!("kill -{sig} $$")), 128 + n);
    }
    assert!(pg().locks_on(lock_id(&name)).is_empty(), "lock left behind");
}

#[test]
fn not_found_127_not_executable_126_and_the_lock_is_released() {
    let name = key("exec");
    let (_, err) = expect_code(Run::new(&name).child(["/no/such/program"]), 127);
    assert!(err.contains("command not found: /no/such/program"), "{err}");
    let (_, err) = expect_code(Run::new(&name).child(["no-such-program-in-path"]), 127);
    assert!(err.contains("not found"), "{err}");
    let dir = tmpdir("exec");
    let f = dir.join("not-executable");
    std::fs::write(&f, "#!/bin/sh\necho hi\n").unwrap();
    let (_, err) = expect_code(Run::new(&name).child([f.to_str().unwrap()]), 126);
    assert!(err.contains("cannot execute"), "{err}");
    expect_code(Run::new(&name).child([dir.to_str().unwrap()]), 126);
    assert!(
        pg().locks_on(lock_id(&name)).is_empty(),
        "lock left behind: {:?}",
        pg().locks_on(lock_id(&name))
    );
    // And the next run takes it at once.
    expect_code(Run::new(&name).args(["-n"]).child(["true"]), 0);
}

/// As execvp(3) and flock(1) do: an executable file in no executable format (a script without
/// `#!`) runs through /bin/sh, found by PATH too, with its arguments and exit status.
#[test]
fn a_script_without_shebang_runs_through_sh() {
    use std::os::unix::fs::PermissionsExt;
    let name = key("no-shebang");
    let dir = tmpdir("no-shebang");
    let f = dir.join("plain-script");
    std::fs::write(&f, "echo \"args: $1 $2\"\nexit 7\n").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (out, _) = expect_code(Run::new(&name).child([f.to_str().unwrap(), "a", "b"]), 7);
    assert_eq!(out.trim(), "args: a b");
    let mut by_path = Run::new(&name).child(["plain-script", "c"]);
    by_path.env("PATH", format!("{}:/usr/bin:/bin", dir.display()));
    let (out, _) = expect_code(by_path, 7);
    assert_eq!(out.trim(), "args: c");
}

#[test]
fn unavailable_is_69_with_host_port_user() {
    let name = key("unavail");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let refused = format!("postgres://postgres:pw@127.0.0.1:{port}/postgres");
    // -n: a waiting run would retry a refused connection (restart.rs).
    let mut c = Run::new(&name)
        .args(["-n"])
        .database_url(&refused)
        .child(["true"]);
    c.env("HOME", "/nonexistent");
    let (_, err) = expect_code(c, 69);
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("\"postgres\""),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    let unknown = "postgres://u:pw@no-such-host.invalid/db";
    let (_, err) = expect_code(Run::new(&name).database_url(unknown).child(["true"]), 69);
    assert!(err.contains("no-such-host.invalid"), "{err}");

    let bad_db = format!(
        "postgres://postgres:{SUPERUSER_PASSWORD}@127.0.0.1:{}/nodb?sslmode=disable",
        pg().port
    );
    let (_, err) = expect_code(Run::new(&name).database_url(&bad_db).child(["true"]), 69);
    assert!(err.contains("nodb"), "{err}");

    // With a host list, every host's reason is given, in order, on one line.
    let both = format!(
        "host=127.0.0.1,no-such-host.invalid port={port},{} user=postgres password=pw dbname=postgres sslmode=disable",
        pg().port
    );
    let (_, err) = expect_code(Run::new(&name).database_url(&both).child(["true"]), 69);
    let first = err.find(&format!("127.0.0.1:{port}"));
    let second = err.find("no-such-host.invalid");
    assert!(
        err.contains("no host could be used") && first.is_some() && first < second,
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!err.contains("pw"), "{err}");
}

#[test]
fn not_acquired_is_75_or_the_conflict_exit_code() {
    let name = key("conflict");
    let id = lock_id(&name);
    let holder = hold(Run::new(&name).child(["sleep", "5"]), id);
    let dir = tmpdir("conflict");
    let marker = dir.join("ran");
    let touch = format!("touch {}", marker.display());
    let (_, err) = expect_code(Run::new(&name).args(["-n"]).sh(&touch), 75);
    assert!(
        err.contains("pid ")
            && err.contains(&format!("pglock:{name}"))
            && err.contains("127.0.0.1"),
        "holder not named: {err}"
    );
    expect_code(Run::new(&name).args(["-n", "-E", "0"]).sh(&touch), 0);
    expect_code(
        Run::new(&name)
            .args(["--no-wait", "--conflict-exit-code", "3"])
            .sh(&touch),
        3,
    );
    expect_code(
        Run::new(&name).args(["-w", "300ms", "-E", "4"]).sh(&touch),
        4,
    );
    assert!(!marker.exists(), "the command ran without the lock");
    stop(holder);
}

#[test]
fn too_many_connections_is_69() {
    pg().psql_super(&format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'nolimit') THEN \
         CREATE ROLE nolimit LOGIN PASSWORD '{APP_PASSWORD}' CONNECTION LIMIT 0; END IF; END $$"
    ));
    let url = format!(
        "postgres://nolimit:{APP_PASSWORD}@127.0.0.1:{}/postgres?sslmode=disable",
        pg().port
    );
    let (_, err) = expect_code(
        Run::new(&key("nolimit")).database_url(&url).child(["true"]),
        69,
    );
    assert!(err.contains("too many connections for role"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn a_full_server_is_69_naming_max_connections() {
    let tiny = Cluster::start(
        "tiny",
        "max_connections = 3\nsuperuser_reserved_connections = 0",
    );
    let url = format!(
        "postgres://postgres:{SUPERUSER_PASSWORD}@127.0.0.1:{}/postgres?sslmode=disable",
        tiny.port
    );
    // Three sessions fill it; each retries until it is in (the probe below may hold a slot for a
    // moment while one of them connects).
    let psql = format!(
        "{} -X -q -d '{}' -c 'SELECT pg_sleep(20)'",
        tiny.bin.join("psql").display(),
        tiny.socket_url()
    );
    let sessions: Vec<_> = (0..3)
        .map(|_| {
            std::process::Command::new("sh")
                .args([
                    "-c",
                    &format!("until {psql} >/dev/null 2>&1; do sleep 0.05; done"),
                ])
                .spawn()
                .unwrap()
        })
        .collect();
    let full = || {
        tiny.psql_cmd()
            .args(["-c", "SELECT 1"])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(false)
    };
    assert!(
        wait_until(std::time::Duration::from_secs(10), full),
        "the server did not fill up"
    );
    let (_, err) = expect_code(
        Run::new(&key("full")).database_url(&url).child(["true"]),
        69,
    );
    assert!(
        err.contains("max_connections") && err.contains(&tiny.port.to_string()),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    for mut s in sessions {
        let _ = s.kill();
        let _ = s.wait();
    }
}

#[test]
fn connect_timeout_bounds_a_server_that_never_answers() {
    // A socket that accepts connections in the kernel but never speaks.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let t = std::time::Instant::now();
    // -n: one attempt (a waiting run retries a server that does not answer, restart.rs).
    let mut c = Run::new(&key("silent"))
        .args(["-n"])
        .unconnected()
        .child(["true"]);
    c.env("PGHOST", "127.0.0.1")
        .env("PGPORT", port.to_string())
        .env("PGUSER", "u")
        .env("PGSSLMODE", "disable")
        .env("PGCONNECT_TIMEOUT", "2");
    let (_, err) = expect_code(c, 69);
    let took = t.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(1900) && took < std::time::Duration::from_secs(5),
        "{took:?}"
    );
    assert!(
        err.contains("timed out") && err.contains(&port.to_string()),
        "{err}"
    );
    drop(silent);
}

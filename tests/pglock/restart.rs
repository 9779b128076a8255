//! A waiting run rides through a server that is down or not yet a primary when it starts
//! (contract §4): transient failures are retried within `--timeout` (or a minute), each reason
//! logged once; authentication, a missing database and `-n` runs fail at once.

use crate::harness::*;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A cluster of this file's own, stopped and started by its tests.
fn down_cluster() -> &'static Cluster {
    static C: std::sync::OnceLock<Cluster> = std::sync::OnceLock::new();
    C.get_or_init(|| Cluster::start("retry", ""))
}

/// A TCP port on which nobody listens: a server that is down and stays down.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `pglock run ARGS --key NAME -- sh -c 'echo ran > FILE'` against `url`.
fn run_writing(url: &str, args: &[&str], file: &std::path::Path) -> Command {
    let script = format!("echo ran > '{}'", file.display());
    let mut c = Run::new(&key("retry")).args(args).url(url).sh(&script);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

/// Runs to the end: the output and how long it took.
fn timed(mut c: Command) -> (Output, Duration) {
    let t = Instant::now();
    let out = c.output().unwrap();
    (out, t.elapsed())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The warning lines of retries.
fn retries(err: &str) -> Vec<&str> {
    err.lines()
        .filter(|l| l.contains("retrying for up to"))
        .collect()
}

/// The server is stopped when the runs start (over TCP: refused; over the Unix socket: the socket
/// file is gone) and started 2 s later: both runs connect, take the lock and run the child, and
/// say once each reason they retried for.
#[test]
fn a_waiting_run_started_while_the_server_is_down_runs_once_it_is_up() {
    let c = down_cluster();
    c.stop();
    let dir = tmpdir("retry-up");
    let (tcp_file, sock_file) = (dir.join("tcp"), dir.join("socket"));
    let t = Instant::now();
    let tcp = run_writing(&c.url(), &["-w", "30s"], &tcp_file)
        .spawn()
        .unwrap();
    let sock = run_writing(&c.socket_url(), &["-w", "30s"], &sock_file)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    c.pg_ctl_start();
    for (child, file, reason) in [
        (tcp, &tcp_file, "Connection refused"),
        (sock, &sock_file, "No such file or directory"),
    ] {
        let out = child.wait_with_output().unwrap();
        let took = t.elapsed();
        let err = stderr(&out);
        eprintln!(
            "server down for 2 s: exit {:?} after {took:?}\n{err}",
            out.status
        );
        assert_eq!(out.status.code(), Some(0), "{err}");
        assert_eq!(std::fs::read_to_string(file).unwrap().trim(), "ran");
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(15),
            "{took:?}\n{err}"
        );
        let lines = retries(&err);
        assert_eq!(
            lines.iter().filter(|l| l.contains(reason)).count(),
            1,
            "each reason logged once: {err}"
        );
        assert!(
            err.contains("of waiting for the server; ") && err.contains("of --timeout left"),
            "{err}"
        );
        assert!(err.contains("acquired lock"), "{err}");
    }
}

/// The server never comes back: the run gives up at --timeout with exit 69, naming the last reason.
#[test]
fn a_server_that_stays_down_ends_the_run_at_its_timeout_with_69() {
    let port = closed_port();
    let url = format!("postgres://postgres:pw@127.0.0.1:{port}/postgres?sslmode=disable");
    let file = tmpdir("retry-never").join("ran");
    let (out, took) = timed(run_writing(&url, &["-w", "3s"], &file));
    let err = stderr(&out);
    eprintln!(
        "server never up, -w 3s: exit {:?} after {took:?}",
        out.status
    );
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(5),
        "{took:?}\n{err}"
    );
    assert!(!file.exists(), "the child ran");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("gave up waiting for the server (--timeout reached)")
            && last.contains("Connection refused")
            && last.contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert_eq!(retries(&err).len(), 1, "one reason, logged once: {err}");
    // -v shows every attempt: several within the 3 s (backoff from 250 ms up to 2 s).
    let (out, _) = timed(run_writing(&url, &["-v", "-w", "3s"], &file));
    let attempts = stderr(&out).matches("Connection refused").count();
    assert!((3..=8).contains(&attempts), "{}", stderr(&out));
}

/// `-n` tries once: a server that is down fails the run at once.
#[test]
fn a_no_wait_run_does_not_wait_for_the_server() {
    let url = format!(
        "postgres://postgres:pw@127.0.0.1:{}/postgres?sslmode=disable",
        closed_port()
    );
    let file = tmpdir("retry-n").join("ran");
    let (out, took) = timed(run_writing(&url, &["-n"], &file));
    let err = stderr(&out);
    eprintln!("server down, -n: exit {:?} after {took:?}", out.status);
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(
        retries(&err).is_empty() && err.contains("Connection refused"),
        "{err}"
    );
}

/// A wrong password, a database that does not exist, a host name that does not exist and TLS
/// that the server does not offer are answers, not absences: no retrying, even with a long wait.
#[test]
fn configuration_and_authentication_errors_fail_at_once() {
    let port = pg().port;
    let cases = [
        (
            format!("postgres://app:wrong@127.0.0.1:{port}/postgres?sslmode=disable"),
            "password authentication failed",
        ),
        (
            format!("postgres://postgres:{SUPERUSER_PASSWORD}@127.0.0.1:{port}/nodb?sslmode=disable"),
            "\"nodb\" does not exist",
        ),
        (
            "postgres://postgres:pw@no-such-host.invalid/postgres".to_string(),
            "no-such-host.invalid",
        ),
        (
            format!("postgres://postgres:{SUPERUSER_PASSWORD}@127.0.0.1:{port}/postgres?sslmode=require"),
            "TLS",
        ),
    ];
    let file = tmpdir("retry-auth").join("ran");
    for (url, phrase) in cases {
        let (out, took) = timed(run_writing(&url, &["-w", "30s"], &file));
        let err = stderr(&out);
        eprintln!("{phrase}: exit {:?} after {took:?}", out.status);
        assert_eq!(out.status.code(), Some(69), "{err}");
        assert!(took < Duration::from_secs(2), "{phrase}: {took:?}\n{err}");
        assert!(err.contains(phrase), "{err}");
        assert!(retries(&err).is_empty(), "{err}");
    }
    assert!(!file.exists(), "the child ran");
}

/// SIGTERM while waiting for the server ends pglock at once with 128+15, running nothing.
#[test]
fn a_signal_ends_the_wait_for_the_server_at_once() {
    let url = format!(
        "postgres://postgres:pw@127.0.0.1:{}/postgres?sslmode=disable",
        closed_port()
    );
    let file = tmpdir("retry-sig").join("ran");
    let child = run_writing(&url, &["-w", "30s"], &file).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let t = Instant::now();
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    let out = child.wait_with_output().unwrap();
    let took = t.elapsed();
    let err = stderr(&out);
    eprintln!(
        "SIGTERM while retrying: exit {:?} after {took:?}",
        out.status
    );
    assert_eq!(out.status.code(), Some(143), "{err}");
    assert!(took < Duration::from_millis(500), "{took:?}");
    assert!(!file.exists(), "the child ran");
}

/// A standby that is being promoted (a failover): the run retries the hot standby, naming it,
/// and takes the lock on it once it is the primary.
#[test]
fn a_run_against_a_standby_rides_through_its_promotion() {
    let primary = Cluster::start("retry-primary", "");
    let standby = primary.standby("retry-standby");
    let url = format!(
        "postgres://postgres:{SUPERUSER_PASSWORD}@127.0.0.1:{}/postgres?sslmode=disable",
        standby.port
    );
    let file = tmpdir("retry-promote").join("ran");
    let t = Instant::now();
    let child = run_writing(&url, &["-w", "30s"], &file).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    standby.promote();
    let out = child.wait_with_output().unwrap();
    let took = t.elapsed();
    let err = stderr(&out);
    eprintln!(
        "standby promoted after 2 s: exit {:?} after {took:?}\n{err}",
        out.status
    );
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), "ran");
    assert!(took < Duration::from_secs(15), "{took:?}");
    let lines = retries(&err);
    assert!(
        lines.len() == 1 && lines[0].contains("hot standby"),
        "{err}"
    );
}

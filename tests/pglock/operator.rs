//! Issue 22, the operator's first day: environment booleans and durations as `flock` users write
//! them, a silent `-q` skip, the "acquired" line before the child's output, `pglock status` as
//! a script's question, 64-bit ids as JSON strings, server text made printable everywhere, the
//! guard's name and no guard behind a nested run.

use crate::harness::*;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The boolean options and their variables (contract §1: one rule for all of them).
const BOOLEANS: [&str; 5] = [
    "PGLOCK_NO_WAIT",
    "PGLOCK_SHARED",
    "PGLOCK_FENCING_TOKEN",
    "PGLOCK_QUIET",
    "PGLOCK_VERBOSE",
];

/// `pglock run --key NAME -- sh -c SCRIPT` with `env` added.
fn run_env(name: &str, env: &[(&str, &str)], script: &str) -> std::process::Command {
    let mut c = pglock_sh(name, script);
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

#[test]
fn every_boolean_variable_takes_the_same_words_and_refuses_others_by_name() {
    let name = key("bools");
    for var in BOOLEANS {
        for word in [
            "1", "0", "true", "FALSE", "Yes", "no", "ON", "off", "", "True",
        ] {
            let (out, err) = expect_code(run_env(&name, &[(var, word)], "echo ran"), 0);
            assert_eq!(out, "ran\n", "{var}={word:?}: {err}");
        }
        for bad in ["banana", "2", "y", "enabled"] {
            let (out, err) = expect_code(run_env(&name, &[(var, bad)], "echo ran"), 2);
            assert!(out.is_empty(), "{var}={bad}: the child ran");
            assert!(
                err.contains(&format!("{var}=\"{bad}\" is not a boolean"))
                    && err.contains("yes or no")
                    && err.lines().count() == 1,
                "{var}={bad}: {err}"
            );
        }
    }
}

#[test]
fn boolean_words_mean_what_they_say() {
    let name = key("boolmean");
    let id = lock_id(&name);
    let holder = hold(Run::new(&name).child(["sleep", "30"]), id);
    // PGLOCK_NO_WAIT: true words skip at once, false words wait (here up to --timeout).
    for word in ["yes", "1", "On"] {
        let start = Instant::now();
        expect_code(run_env(&name, &[("PGLOCK_NO_WAIT", word)], "true"), 75);
        assert!(start.elapsed() < Duration::from_secs(5), "{word}");
    }
    for word in ["no", "0", "", "OFF"] {
        let env = [("PGLOCK_NO_WAIT", word), ("PGLOCK_TIMEOUT", "300ms")];
        let (_, err) = expect_code(run_env(&name, &env, "true"), 75);
        assert!(err.contains("--timeout 300ms reached"), "{word:?}: {err}");
    }
    stop(holder);
    let token = "echo \"token=${PGLOCK_FENCING_TOKEN:-none}\"";
    let (out, _) = expect_code(run_env(&name, &[("PGLOCK_FENCING_TOKEN", "YES")], token), 0);
    assert!(out.starts_with("token=") && !out.contains("none"), "{out}");
    let (out, _) = expect_code(run_env(&name, &[("PGLOCK_FENCING_TOKEN", "off")], token), 0);
    assert_eq!(out, "token=none\n");
    let (_, err) = expect_code(run_env(&name, &[("PGLOCK_QUIET", "TRUE")], "true"), 0);
    assert!(err.is_empty(), "{err}");
    let (_, err) = expect_code(run_env(&name, &[("PGLOCK_VERBOSE", "on")], "true"), 0);
    assert!(err.contains("connected to"), "{err}");
    let (_, err) = expect_code(run_env(&name, &[("PGLOCK_SHARED", "1")], "true"), 0);
    assert!(err.contains(", shared)"), "{err}");
}

#[test]
fn durations_take_bare_seconds_and_decimals() {
    let name = key("durations");
    let id = lock_id(&name);
    let holder = hold(Run::new(&name).child(["sleep", "30"]), id);
    for (t, at_least, below) in [("1.5", 1400, 4000), ("0.4s", 350, 3000), ("1", 900, 3500)] {
        let start = Instant::now();
        let (_, err) = expect_code(Run::new(&name).args(["-w", t]).child(["true"]), 75);
        let took = start.elapsed().as_millis();
        assert!(
            (at_least..below).contains(&took),
            "-w {t} gave up after {took} ms: {err}"
        );
    }
    let mut c = Run::new(&name).child(["true"]);
    c.env("PGLOCK_TIMEOUT", "0.3");
    expect_code(c, 75);
    stop(holder);
    let (_, err) = expect_code(
        Run::new(&name)
            .args(["--max-runtime", "0.5"])
            .child(["sleep", "10"]),
        124,
    );
    assert!(err.contains("--max-runtime 500ms"), "{err}");
    for bad in ["1m30", "1..5s", "3d", "ten"] {
        let (_, err) = expect_code(Run::new(&name).args(["-w", bad]).child(["true"]), 2);
        assert!(err.contains("10 (seconds), 1.5s, 250ms"), "{bad}: {err}");
    }
    let mut c = Run::new(&name).child(["true"]);
    c.env("PGLOCK_HEARTBEAT", "1 s");
    let (_, err) = expect_code(c, 2);
    assert!(
        err.starts_with("pglock: PGLOCK_HEARTBEAT: invalid duration"),
        "{err}"
    );
    let (help, _) = expect_code(pglock_bare(&["run", "--help"]), 0);
    assert!(help.contains("10 = 10 seconds, 1.5s, 250ms"), "{help}");
}

#[test]
fn quiet_skips_that_exit_0_print_nothing_but_errors_still_print() {
    let name = key("quietskip");
    let id = lock_id(&name);
    let holder = hold(Run::new(&name).child(["sleep", "30"]), id);
    let (out, err) = expect_code(
        Run::new(&name)
            .args(["-q", "-n", "-E", "0"])
            .child(["echo", "ran"]),
        0,
    );
    assert!(out.is_empty() && err.is_empty(), "{out}{err}");
    // Without -E 0 the skip is a failure, reported under -q too; without -q it is reported.
    let (_, err) = expect_code(Run::new(&name).args(["-q", "-n"]).child(["true"]), 75);
    assert!(err.contains("not acquired"), "{err}");
    let (_, err) = expect_code(Run::new(&name).args(["-n", "-E", "0"]).child(["true"]), 0);
    assert!(err.contains("not acquired"), "{err}");
    stop(holder);
    let (_, err) = expect_code(Run::new(&name).args(["-q", "-w", "x"]).child(["true"]), 2);
    assert!(err.contains("invalid duration"), "{err}");
}

#[test]
fn the_acquired_line_is_written_before_the_child_starts() {
    let name = key("order");
    let dir = tmpdir("order");
    let log = dir.join("log");
    let file = std::fs::File::create(&log).unwrap();
    // The child's first act: count the acquired lines already in pglock's stderr.
    let mut c = Run::new(&name).child(["grep", "-c", "acquired lock"]);
    c.arg(&log).stderr(file);
    let (out, _) = expect_code(c, 0);
    assert_eq!(out, "1\n", "{}", std::fs::read_to_string(&log).unwrap());
}

/// `pglock status ARGS` against the main cluster: (exit code, stdout).
fn status(args: &[&str]) -> (Option<i32>, String) {
    let mut all = vec!["status"];
    all.extend_from_slice(args);
    let out = pglock(&all).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn status_of_a_lock_answers_like_grep() {
    let (name, other) = (key("stgrep"), key("stgrep-other"));
    let (id, oid) = (lock_id(&name), lock_id(&other));
    let holder = hold(Run::new(&name).child(["sleep", "30"]), id);
    let bystander = hold(Run::new(&other).child(["sleep", "30"]), oid);
    let (code, out) = status(&["--key", &name]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        out.lines().count(),
        2,
        "only the header and this lock: {out}"
    );
    assert!(
        out.lines().nth(1).unwrap().starts_with(&format!("{id} ")),
        "{out}"
    );
    let (code, out) = status(&["--key-id", &id.to_string(), "--json"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out.matches("\"lock_id\"").count(), 1, "{out}");
    stop(holder);
    let (code, out) = status(&["--key", &name]);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(out, format!("lock \"{name}\" (id {id}) is not held\n"));
    let (code, out) = status(&["--key", &name, "--json"]);
    assert_eq!((code, out.trim()), (Some(1), "[]"));
    stop(bystander);
}

#[test]
fn status_shows_a_limit_waiter_waiting() {
    let name = key("stlimit");
    let id = lock_id(&name);
    let slot0 = lock_id(&format!("{id}:0"));
    let holder = hold(
        Run::new(&name)
            .args(["--limit", "1"])
            .child(["sleep", "30"]),
        slot0,
    );
    let waiter = Run::new(&name)
        .args(["--limit", "1"])
        .child(["true"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let queue = lock_id_of_queue(id);
    assert!(wait_until(Duration::from_secs(10), || !pg()
        .locks_on(queue)
        .is_empty()));
    let (code, out) = status(&["--key", &name]);
    assert_eq!(code, Some(0), "{out}");
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{out}");
    let state = |part: &str| {
        rows.iter()
            .find(|r| r.contains(part))
            .map(|r| r.contains(" held ") as u8 + 2 * r.contains(" waiting ") as u8)
    };
    assert_eq!(state("[slot 0]"), Some(1), "the slot is held: {out}");
    assert_eq!(state("(queue)"), Some(2), "the waiter is waiting: {out}");
    let (_, json) = status(&["--key", &name, "--json"]);
    assert!(
        json.contains("\"granted\":false,\"state\":\"waiting\"")
            && json.contains("\"granted\":true,\"state\":\"held\""),
        "{json}"
    );
    stop(holder);
    all_succeed(vec![waiter]);
    assert_eq!(status(&["--key", &name]).0, Some(1));
}

#[test]
fn json_writes_lock_ids_as_strings_of_digits() {
    // 1851639526980669642 > 2^53: jq 1.6 and JavaScript would round it as a number.
    let name = key("jsonid");
    let id = lock_id(&name);
    let holder = hold(Run::new(&name).child(["sleep", "30"]), id);
    let (_, out) = status(&["--key", &name, "--json"]);
    assert!(out.contains(&format!("\"lock_id\":\"{id}\"")), "{out}");
    let (_, err) = expect_code(
        Run::new(&name)
            .args(["--log-format", "json", "-n"])
            .child(["true"]),
        75,
    );
    assert!(err.contains(&format!("\"lock_id\":\"{id}\"")), "{err}");
    // jq (Debian 12's is 1.6) reads the exact id back.
    let jq = std::process::Command::new("jq")
        .args(["-r", ".[0].lock_id"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn();
    if let Ok(mut jq) = jq {
        use std::io::Write;
        jq.stdin.take().unwrap().write_all(out.as_bytes()).unwrap();
        let got = jq.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), id.to_string());
    }
    stop(holder);
}

/// A role name any role with CREATEROLE can make: ESC, BEL, a line feed that would forge a line.
const EVIL: &str = "evil\u{1b}[31m\u{7}x\npglock: forged";

#[test]
fn server_text_reaches_no_output_raw() {
    let role = format!("{EVIL}-{}", std::process::id());
    let quoted = role.replace('"', "\"\"");
    pg().psql_super(&format!("CREATE ROLE \"{quoted}\" LOGIN"));
    let name = key("evil");
    let id = lock_id(&name);
    let url = format!(
        "host={} port={} user='{}' dbname=postgres",
        pg().dir.display(),
        pg().port,
        role.replace('\\', "\\\\").replace('\'', "\\'")
    );
    let holder = hold(Run::new(&name).url(&url).child(["sleep", "30"]), id);
    let clean = |what: &str, text: &str, lines: usize| {
        assert!(
            !text.contains(['\u{1b}', '\u{7}']) && text.lines().count() == lines,
            "{what}: {text:?}"
        );
        assert!(
            text.lines().all(|l| !l.starts_with("pglock: forged")),
            "{what}: {text:?}"
        );
        assert!(
            text.contains("evil [31m x pglock: forged"),
            "{what}: {text:?}"
        );
    };
    let (_, table) = status(&["--key", &name]);
    clean("status", &table, 2);
    let (_, json) = status(&["--key", &name, "--json"]);
    assert!(!json.contains("\\u001b") && !json.contains("\\n"), "{json}");
    clean("status --json", &json, 3);
    let (_, err) = expect_code(Run::new(&name).args(["-n"]).child(["true"]), 75);
    clean("-n", &err, 1);
    let (_, err) = expect_code(Run::new(&name).args(["-w", "0.5"]).child(["true"]), 75);
    assert!(err.contains("waiting for lock"), "{err}");
    clean("waiting", &err, 2);
    stop(holder);
    pg().psql_super(&format!("DROP ROLE \"{quoted}\""));
}

/// The processes whose parent is `pid`: (pid, comm), from /proc.
fn children_of(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let ppid = stat[close + 2..]
            .split(' ')
            .nth(1)
            .and_then(|f| f.parse().ok());
        if ppid == Some(pid) {
            out.push((p, stat[open + 1..close].to_string()));
        }
    }
    out
}

#[test]
fn the_guard_is_named_pglock_guard_and_a_nested_run_leaves_none() {
    let name = key("guardname");
    let id = lock_id(&name);
    let run = hold(Run::new(&name).child(["sleep", "30"]), id);
    let kids = children_of(run.id());
    let guards: Vec<_> = kids.iter().filter(|(_, c)| c == "pglock-guard").collect();
    assert_eq!(guards.len(), 1, "{kids:?}");
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", guards[0].0)).unwrap();
    assert_eq!(comm, "pglock-guard\n");
    let ps = std::process::Command::new("ps")
        .args(["-o", "comm=", "-p", &guards[0].0.to_string()])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&ps.stdout).trim(), "pglock-guard");
    stop(run);

    // The nested run becomes `sleep` (exec): no guard of its own may be left as its child.
    let outer = Run::new(&name)
        .child([bin(), "run", "--key", &name, "--", "sleep", "30"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut sleep = None;
    assert!(wait_until(Duration::from_secs(10), || {
        sleep = children_of(outer.id())
            .into_iter()
            .find(|(_, c)| c == "sleep")
            .map(|(p, _)| p);
        sleep.is_some()
    }));
    std::thread::sleep(Duration::from_millis(200));
    let left = children_of(sleep.unwrap());
    assert!(left.is_empty(), "the nested run left {left:?} behind");
    stop(outer);
}

#[test]
fn scripts_try_serves_trust_on_a_private_socket_and_no_tcp() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // The child looks at the server that scripts/try started for it.
    let probe = r#"set -e
dir=${PGLOCK_DATABASE_URL#host=}; dir=${dir%% *}
echo "mode=$(stat -c %a "$dir")"
q() { psql -XAt -d "$PGLOCK_DATABASE_URL" -c "$1"; }
echo "listen=$(q 'show listen_addresses')"
echo "open_host_rules=$(q "select count(*) from pg_hba_file_rules where type like 'host%' and auth_method <> 'reject'")"
echo "url=$PGLOCK_DATABASE_URL""#;
    let mut c = std::process::Command::new(root.join("scripts/try"));
    c.args(["--key", "try-probe", "--", "sh", "-c", probe]);
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") || k == "DATABASE_URL" {
            c.env_remove(k);
        }
    }
    let path = format!(
        "{}:{}",
        pg().bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    c.env("PGLOCK_BIN", bin())
        .env("PATH", path)
        .stdin(Stdio::null());
    let (out, err) = expect_code(c, 0);
    assert!(err.contains("no TCP"), "{err}");
    for want in [
        "mode=700\n",
        "listen=\n",
        "open_host_rules=0\n",
        "url=host=/",
    ] {
        assert!(out.contains(want), "{want:?} in\n{out}\n{err}");
    }
}

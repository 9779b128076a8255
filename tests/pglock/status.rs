//! Contract §9: `pglock status` lists held, waiting and shared advisory locks, with key names for
//! pglock's sessions, as a table or JSON, and works for a role without superuser rights.

use crate::harness::*;
use std::time::Duration;

fn status(url: &str, args: &[&str]) -> String {
    let mut all = vec!["status"];
    all.extend_from_slice(args);
    let mut c = pglock_bare(&all);
    c.env("PGLOCK_DATABASE_URL", url);
    expect_code(c, 0).0
}

#[test]
fn status_shows_held_waiting_and_shared_locks_with_key_names() {
    let (x, s) = (key("stx"), key("sts"));
    let (xid, sid) = (lock_id(&x), lock_id(&s));
    let holder = hold(Run::new(&x).child(["sleep", "30"]), xid);
    let waiter = Run::new(&x).child(["true"]).spawn().unwrap();
    let s1 = Run::new(&s)
        .args(["--shared"])
        .child(["sleep", "30"])
        .spawn()
        .unwrap();
    let s2 = Run::new(&s)
        .args(["--shared"])
        .child(["sleep", "30"])
        .spawn()
        .unwrap();
    // Application code's lock, taken with the raw id: no key name.
    let mut app = pg().psql_cmd();
    app.args([
        "-c",
        "SELECT pg_advisory_lock(424242)",
        "-c",
        "SELECT pg_sleep(30)",
    ]);
    let app = app.stdout(std::process::Stdio::null()).spawn().unwrap();
    assert!(wait_until(Duration::from_secs(10), || pg()
        .locks_on(xid)
        .len()
        == 2
        && pg().locks_on(sid).len() == 2
        && !pg().locks_on(424242).is_empty()));

    let table = status(&pg().url(), &[]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("LOCK ID")
            && lines[0].contains("APPLICATION")
            && lines[0].contains("AGE"),
        "{table}"
    );
    let row = |id: i64, state: &str| {
        lines
            .iter()
            .filter(|l| l.starts_with(&id.to_string()) && l.contains(state))
            .count()
    };
    assert_eq!(row(xid, " held "), 1, "{table}");
    assert_eq!(row(xid, " waiting "), 1, "{table}");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with(&sid.to_string())
                && l.contains(" shared ")
                && l.contains(" held "))
            .count(),
        2,
        "{table}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with(&xid.to_string())
            && l.contains(&format!(" {x} "))
            && l.contains("127.0.0.1")),
        "{table}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("424242 ") && l.contains(" - ") && l.contains("psql")),
        "{table}"
    );
    // The client as address:port, as the waiting line shows it; psql came over the socket.
    let holder_client = pg().psql_super(&format!(
        "SELECT host(a.client_addr) || ':' || a.client_port FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
         WHERE l.granted AND l.locktype = 'advisory' AND l.objid = {} AND l.classid = {}",
        xid as u64 & 0xffff_ffff,
        (xid as u64) >> 32
    ));
    assert!(holder_client.starts_with("127.0.0.1:"), "{holder_client}");
    assert!(
        lines.iter().any(|l| l.starts_with(&xid.to_string())
            && l.contains(" held ")
            && l.contains(&format!(" {holder_client} "))),
        "{holder_client} in {table}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("424242 ") && l.contains(" local socket ")),
        "{table}"
    );

    let json = status(&pg().url(), &["--json", "--key", &x]);
    assert_eq!(json.matches("\"lock_id\":").count(), 2, "{json}");
    assert!(
        json.contains(&format!(
            "\"lock_id\":\"{xid}\",\"key\":\"{x}\",\"mode\":\"exclusive\",\"granted\":true"
        )),
        "{json}"
    );
    assert!(
        json.contains("\"granted\":false") && json.contains("\"age_s\":"),
        "{json}"
    );
    let only = status(&pg().url(), &["--key-id", "424242"]);
    assert_eq!(only.lines().count(), 2, "{only}");

    pg().psql_super("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = 424242");
    for c in [holder, waiter, s1, s2, app] {
        stop(c);
    }
}

#[test]
fn status_works_for_a_role_without_superuser_rights() {
    let name = key("stapp");
    let id = lock_id(&name);
    // Held by the superuser; looked at by the unprivileged role "app".
    let holder = hold(Run::new(&name).child(["sleep", "30"]), id);
    let mine = key("stapp-own");
    let mid = lock_id(&mine);
    let own = {
        let mut c = Run::new(&mine).unconnected().child(["sleep", "30"]);
        c.env("PGLOCK_DATABASE_URL", pg().app_url());
        hold(c, mid)
    };
    let table = status(&pg().app_url(), &[]);
    let other = table
        .lines()
        .find(|l| l.starts_with(&id.to_string()))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        other.contains(" held ") && other.contains(" exclusive "),
        "{other}"
    );
    let own_row = table
        .lines()
        .find(|l| l.starts_with(&mid.to_string()))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        own_row.contains(&mine) && own_row.contains("127.0.0.1") && own_row.contains(" app "),
        "{own_row}"
    );
    stop(holder);
    stop(own);
}

#[test]
fn status_of_a_lock_not_held_says_so_and_bad_filters_are_usage_errors() {
    let name = key("nothing");
    let mut c = pglock(&["status", "--key", &name]);
    let (out, _) = expect_code(c, 1);
    assert_eq!(
        out,
        format!("lock \"{name}\" (id {}) is not held\n", lock_id(&name))
    );
    c = pglock(&["status", "--json", "--key", &name]);
    assert_eq!(expect_code(c, 1).0.trim(), "[]");
    expect_code(pglock(&["status", "--key", ""]), 2);
    expect_code(pglock(&["status", "--key-id", "nope"]), 2);
}

#[test]
fn status_shows_the_two_int4_form_of_application_locks() {
    let mut app = pg().psql_cmd();
    app.args([
        "-c",
        "SELECT pg_advisory_lock(77001, -5)",
        "-c",
        "SELECT pg_sleep(30)",
    ]);
    let app = app.stdout(std::process::Stdio::null()).spawn().unwrap();
    let q = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 AND classid = 77001";
    assert!(wait_until(Duration::from_secs(10), || pg().psql_super(q) == "1"));
    let table = status(&pg().url(), &[]);
    assert!(table.lines().any(|l| l.starts_with("77001,-5 ")), "{table}");
    let json = status(&pg().url(), &["--json"]);
    assert!(
        json.contains("\"lock_id\":null,\"key1\":77001,\"key2\":-5"),
        "{json}"
    );
    pg().psql_super("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 AND classid = 77001");
    stop(app);
}

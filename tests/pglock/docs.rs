//! The committed man page and completions are what the clap definition and the docs generate
//! now; the exit-status tables of the README and docs/ are the one table of `src/error.rs`; the
//! internal links resolve; every shell example of the README, docs/ and the man page runs.

use crate::harness::*;

#[test]
fn man_page_and_completions_are_up_to_date() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (what, file) in [
        ("man", "man/pglock.1"),
        ("bash", "completions/pglock.bash"),
        ("zsh", "completions/_pglock"),
        ("fish", "completions/pglock.fish"),
    ] {
        let (fresh, _) = expect_code(pglock_bare(&["generate", what]), 0);
        let committed = std::fs::read_to_string(root.join(file)).unwrap_or_default();
        assert!(
            fresh == committed,
            "{file} is stale: run scripts/gen-docs and commit the result"
        );
    }
}

#[test]
fn the_man_page_has_every_section_and_renders() {
    let (man, _) = expect_code(pglock_bare(&["generate", "man"]), 0);
    for section in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "\"EXIT STATUS\"",
        "\"LOCKS, KEYS AND OPTIONS\"",
        "\"CONNECTION AND TLS\"",
        "\"THE CHILD AND SIGNALS\"",
        "\"LOSING THE LOCK AND FENCING\"",
        "\"POOLERS AND HIGH AVAILABILITY\"",
        "\"MIGRATION TOOLS\"",
        "\"ONCE, AND THE RUN LEDGER\"",
        "\"STATUS, HISTORY AND LOGS\"",
        "\"HOW IT WORKS\"",
        "EXAMPLES",
        "\"SEE ALSO\"",
    ] {
        assert!(
            man.contains(&format!(".SH {section}")),
            "missing section {section}"
        );
    }
    for needle in [
        "PGLOCK_TIMEOUT",
        "\\fB124\\fR",
        "\\fBflock\\fR(1)",
        "\\fBpsql\\fR(1)",
        "CronJob",
    ] {
        assert!(man.contains(needle), "man page lacks {needle}");
    }
    // groff renders it without warnings. Without groff the check is skipped with a note, but
    // not in CI (CI set), where a missing groff fails.
    let groff = std::process::Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match groff {
        Ok(child) => child,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none_or(|v| v.is_empty()),
                "groff is missing ({e}) and CI is set: install it (scripts/setup test)"
            );
            eprintln!("note: groff not found ({e}): the man page's rendering is not checked");
            return;
        }
    };
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(man.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "groff warnings: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Markdown files whose examples run and whose tables and links are checked.
fn markdown_files() -> Vec<std::path::PathBuf> {
    let mut files = vec![root().join("README.md")];
    let mut docs: Vec<_> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

fn relative(path: &std::path::Path) -> String {
    path.strip_prefix(root()).unwrap().display().to_string()
}

#[test]
fn every_exit_status_table_is_the_one_of_the_source() {
    let (table, _) = expect_code(pglock_bare(&["generate", "exit-status"]), 0);
    assert!(table.starts_with("| code | meaning |\n"), "{table}");
    let mut found = Vec::new();
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (n, line) in lines.iter().enumerate() {
            if line.trim() != "| code | meaning |" {
                continue;
            }
            let copy: Vec<&str> = lines[n..]
                .iter()
                .take_while(|l| l.starts_with('|'))
                .copied()
                .collect();
            assert_eq!(
                copy.join("\n"),
                table.trim_end(),
                "{}:{}: the exit-status table differs from src/error.rs's EXIT_STATUS; it must read:\n{table}",
                relative(&file),
                n + 1
            );
            found.push(relative(&file));
        }
    }
    assert!(
        found.iter().any(|f| f == "README.md"),
        "the README has no exit-status table: {found:?}"
    );
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown file's headings, outside code fences.
fn anchors(text: &str) -> Vec<String> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.push(anchor(line.trim_start_matches('#')));
        }
    }
    out
}

#[test]
fn every_internal_link_resolves() {
    assert_eq!(
        anchor("Who holds what: `pglock status`"),
        "who-holds-what-pglock-status"
    );
    assert_eq!(anchor("Semaphores: `--limit N`"), "semaphores---limit-n");
    let mut bad = Vec::new();
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let dir = file.parent().unwrap();
        for (n, line) in text.lines().enumerate() {
            for part in line.split("](").skip(1) {
                let Some(target) = part.split(')').next() else {
                    continue;
                };
                if target.contains("://") || target.is_empty() {
                    continue;
                }
                let (path, frag) = target.split_once('#').unwrap_or((target, ""));
                let dest = if path.is_empty() {
                    file.clone()
                } else {
                    dir.join(path)
                };
                let ok = dest.exists()
                    && (frag.is_empty()
                        || anchors(&std::fs::read_to_string(&dest).unwrap_or_default())
                            .iter()
                            .any(|a| a == frag));
                if !ok {
                    bad.push(format!("{}:{}: {target}", relative(&file), n + 1));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "links that do not resolve:\n{}",
        bad.join("\n")
    );
}

#[test]
fn completions_know_the_options() {
    for shell in ["bash", "zsh", "fish"] {
        let (out, _) = expect_code(pglock_bare(&["generate", shell]), 0);
        for opt in [
            "no-wait",
            "timeout",
            "key-id",
            "conflict-exit-code",
            "max-runtime",
        ] {
            assert!(out.contains(opt), "{shell} completion lacks --{opt}");
        }
    }
    expect_code(pglock_bare(&["generate", "tcsh"]), 2);
}

// ---------------------------------------------------------------------------------------------
// The shell examples of the README and the man page, run as written (issue 22)

/// One example: where it is, its code block's language, its text.
struct Example {
    at: String,
    lang: String,
    text: String,
}

fn root() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The fenced code blocks of the README and the docs/ pages.
fn markdown_examples() -> Vec<Example> {
    markdown_files()
        .iter()
        .flat_map(|f| examples_of(f))
        .collect()
}

/// A Markdown file's fenced code blocks (also those indented in a list item).
fn examples_of(file: &std::path::Path) -> Vec<Example> {
    let text = std::fs::read_to_string(file).unwrap();
    let name = relative(file);
    let mut out = Vec::new();
    // The open block: its first line, its fence's indentation, its language, its lines.
    let mut open: Option<(usize, usize, String, Vec<&str>)> = None;
    for (n, line) in text.lines().enumerate() {
        let t = line.trim_start();
        let indent = line.len() - t.len();
        match (t.strip_prefix("```"), open.take()) {
            (Some(lang), None) => open = Some((n + 1, indent, lang.trim().to_string(), Vec::new())),
            (Some(_), Some((at, _, lang, lines))) => out.push(Example {
                at: format!("{name}:{at}"),
                lang,
                text: lines.join("\n"),
            }),
            (None, Some((at, ind, lang, mut lines))) => {
                let cut = indent.min(ind);
                lines.push(&line[cut..]);
                open = Some((at, ind, lang, lines));
            }
            (None, None) => {}
        }
    }
    out
}

/// The man page's EXAMPLES, each `.nf` ... `.fi` block as the reader sees it (roff unescaped).
/// A block with a shell construct is a script (`sh`); the others are lines of commands.
fn man_examples() -> Vec<Example> {
    let man = std::fs::read_to_string(root().join("man/pglock.1")).unwrap();
    let section = man
        .split("\n.SH EXAMPLES\n")
        .nth(1)
        .and_then(|s| s.split("\n.SH ").next())
        .expect("an EXAMPLES section");
    section
        .split("\n.nf\n")
        .skip(1)
        .filter_map(|b| b.split("\n.fi").next())
        .map(|b| {
            let text: Vec<String> = b
                .lines()
                .filter(|l| !matches!(*l, ".RS" | ".RE"))
                .map(|l| {
                    l.replace("\\-", "-")
                        .replace("\\e", "\\")
                        .replace("\\&", "")
                })
                .collect();
            let script = text
                .iter()
                .any(|l| l.starts_with("export ") || l.ends_with(" in"));
            Example {
                at: "man/pglock.1 EXAMPLES".into(),
                lang: if script { "sh" } else { "" }.into(),
                text: text.join("\n"),
            }
        })
        .collect()
}

/// What to do with one line of a block of commands.
#[derive(Debug, PartialEq)]
enum Line {
    /// A command, run with `sh -c`; with `$ `, the lines that follow are its expected output.
    Run(String),
    /// SQL for psql (`psql> ...`).
    Sql(String),
    /// Not runnable against the test cluster, for the reason given.
    Skip(&'static str),
}

/// The command of a line, without a trailing `# comment`.
fn command(line: &str) -> String {
    match line.find("  #").or_else(|| line.find(" # ")) {
        Some(i) => line[..i].trim().to_string(),
        None => line.trim().to_string(),
    }
}

/// Every line of an example is classified: an unknown kind of line fails the test, so that a
/// new example is either run here or skipped for a stated reason.
fn classify(line: &str) -> Line {
    let l = line.trim();
    let first = l.split_whitespace().next().unwrap_or("");
    if let Some(cmd) = l.strip_prefix("$ ") {
        return Line::Run(command(cmd));
    }
    if let Some(sql) = l.strip_prefix("psql> ") {
        return Line::Sql(sql.to_string());
    }
    if let Some(argv) = l.strip_prefix("command: [") {
        // A container's command, as a JSON array of plain words.
        let words: Vec<&str> = argv
            .trim_end_matches(']')
            .split(',')
            .map(|w| w.trim().trim_matches('"'))
            .collect();
        return Line::Run(words.join(" "));
    }
    if let Some(cmd) = l.strip_prefix("run: ") {
        return Line::Run(command(cmd));
    }
    // A host that is a placeholder (db.example.com) cannot be reached from the test.
    if l.contains(".example.com") {
        return Line::Skip("a placeholder host");
    }
    // A pglock command after environment assignments (PGLOCK_KEY=seed pglock run ...).
    if first.contains('=') && l.contains(" pglock ") {
        return Line::Run(command(l));
    }
    // A synopsis: placeholders in capitals (LOCK, [OPTIONS], [--ledger TABLE]).
    if l.contains(" LOCK") || l.contains("[OPTIONS]") || l.contains(" TABLE]") {
        return Line::Skip("a synopsis");
    }
    match first {
        "pglock" => Line::Run(command(l)),
        "" => Line::Skip("empty"),
        "pglock:" => Line::Skip("sample log output"),
        "scripts/try" => Line::Run(command(l)),
        "scripts/test" => Line::Skip("the whole test suite"),
        "scripts/package" | "sudo" => Line::Skip("builds or installs the package"),
        _ => Line::Skip("not a command"),
    }
}

/// The directory examples run in: `./NAME` (or `bin/NAME`) in `text` is a script that exits with
/// `$EXAMPLE_EXIT` (0 when unset), so that `-- ./seed.sh` runs as written.
fn stage(dir: &std::path::Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    for word in text.split(|c: char| c.is_whitespace() || c == '"' || c == ',') {
        // `./NAME`, or a program of the project such as `bin/rails`.
        let project = word.split_once('/').is_some_and(|(d, f)| {
            !d.is_empty()
                && d.chars().all(|c| c.is_ascii_lowercase())
                && !f.is_empty()
                && f.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        });
        let Some(rel) = word.strip_prefix("./").or(project.then_some(word)) else {
            continue;
        };
        let path = dir.join(rel);
        if rel.is_empty() || path.exists() {
            continue;
        }
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "#!/bin/sh\nexit \"${EXAMPLE_EXIT:-0}\"\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// `sh ARGS` in `dir`, as a user with the test cluster in PGLOCK_DATABASE_URL, this build of
/// pglock and psql on PATH, and `env`.
fn sh(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let bin_dir = std::path::Path::new(bin()).parent().unwrap();
    let path = format!(
        "{}:{}:{}",
        bin_dir.display(),
        pg().bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = std::process::Command::new("sh");
    c.args(args).current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") || k == "DATABASE_URL" {
            c.env_remove(k);
        }
    }
    c.env("PATH", path)
        .env("HOME", "/nonexistent")
        .env("PGLOCK_DATABASE_URL", pg().url())
        .env("PGLOCK_BIN", bin())
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// The outcome of an example as text for a failure message.
fn report(ex: &Example, what: &str, out: &std::process::Output) -> String {
    format!(
        "{} ({what}): {:?}\nstdout:\n{}\nstderr:\n{}",
        ex.at,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a block of command lines; returns how many ran.
fn run_lines(ex: &Example, dir: &std::path::Path) -> usize {
    let lines: Vec<&str> = ex.text.lines().collect();
    let mut ran = 0;
    for (i, line) in lines.iter().enumerate() {
        match classify(line) {
            Line::Skip(_) => {}
            Line::Sql(sql) => {
                let out = pg().psql_super(&sql);
                assert!(!out.contains("ERROR"), "{}: {sql}: {out}", ex.at);
                ran += 1;
            }
            Line::Run(cmd) => {
                stage(dir, &cmd);
                // The checkout's scripts run from its root, as the README shows them.
                let cwd = if cmd.starts_with("scripts/") {
                    root()
                } else {
                    dir
                };
                let out = sh(cwd, &["-c", &cmd], &[]);
                // A `$ ` line: the lines up to the next command are its output, compared
                // unless they are a live status table.
                let expected: Vec<&str> = lines[i + 1..]
                    .iter()
                    .take_while(|l| !l.starts_with("$ ") && !l.starts_with("psql> "))
                    .copied()
                    .collect();
                let live = expected.first().is_some_and(|l| l.starts_with("LOCK ID"));
                if line.starts_with("$ ") && !expected.is_empty() && !live {
                    let got = String::from_utf8_lossy(&out.stdout);
                    assert_eq!(
                        got.trim_end(),
                        expected.join("\n"),
                        "{}",
                        report(ex, &cmd, &out)
                    );
                } else {
                    assert!(out.status.success(), "{}", report(ex, &cmd, &out));
                }
                ran += 1;
            }
        }
    }
    ran
}

/// Runs a shell script example; returns how many runs it took.
fn run_script(ex: &Example, dir: &std::path::Path) -> usize {
    let script = dir.join("example.sh");
    std::fs::write(&script, &ex.text).unwrap();
    stage(dir, &ex.text);
    let script = script.to_str().unwrap();
    // `# NAME, run as: COMMAND`: the script is ./NAME, run by COMMAND.
    let run_as = ex
        .text
        .lines()
        .find_map(|l| l.split_once(", run as: "))
        .map(|(name, cmd)| (name.trim_start_matches("# ").to_string(), cmd.to_string()));
    if let Some((name, cmd)) = run_as {
        use std::os::unix::fs::PermissionsExt;
        let file = dir.join(&name);
        std::fs::write(&file, &ex.text).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = sh(dir, &["-c", &cmd], &[]);
        assert!(out.status.success(), "{}", report(ex, &cmd, &out));
        return 1;
    }
    if ex.text.contains("./export.sh") {
        return run_export_script(ex, dir, script);
    }
    let out = sh(dir, &[script], &[]);
    assert!(out.status.success(), "{}", report(ex, "the script", &out));
    1
}

/// The skip-if-running script: success runs, a busy lock skips with exit 0, and the export's
/// own failure (exit 3) passes through.
fn run_export_script(ex: &Example, dir: &std::path::Path, script: &str) -> usize {
    let out = sh(dir, &[script], &[]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !text.contains("skipped"),
        "the export ran and succeeded: {}",
        report(ex, "lock free", &out)
    );
    let out = sh(dir, &[script], &[("EXAMPLE_EXIT", "3")]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "the export's status: {}",
        report(ex, "export exits 3", &out)
    );
    let id = lock_id("billing-export");
    let holder = hold(
        pglock(&["run", "--key", "billing-export", "--", "sleep", "30"]),
        id,
    );
    let out = sh(dir, &[script], &[]);
    stop(holder);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("skipped"),
        "{}",
        report(ex, "lock held", &out)
    );
    3
}

#[test]
fn every_shell_example_of_the_readme_the_docs_and_the_man_page_runs_as_written() {
    // The fencing example updates this table.
    pg().psql_super(
        "CREATE TABLE IF NOT EXISTS invoices (batch int, state text); \
         INSERT INTO invoices VALUES (42, 'new')",
    );
    let mut ran = Vec::new();
    for ex in markdown_examples().into_iter().chain(man_examples()) {
        let dir = tmpdir("example");
        let n = match ex.lang.as_str() {
            "sh" => run_script(&ex, &dir),
            "" | "console" | "yaml" if !ex.text.contains('│') => run_lines(&ex, &dir),
            "sql" => {
                let out = pg().psql_super(&ex.text);
                assert!(!out.contains("ERROR"), "{}: {out}", ex.at);
                1
            }
            // Not shell: a Dockerfile, Python, a diagram, a formula (text).
            _ => 0,
        };
        if n > 0 {
            ran.push(format!("{} ({n})", ex.at));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert_eq!(
        pg().psql_super("SELECT count(*) FROM invoices WHERE batch = 42 AND state = 'sent'"),
        "1",
        "the fencing example's UPDATE did not commit"
    );
    assert!(ran.len() >= 25, "too few examples ran: {ran:?}");
}

#[test]
fn example_lines_are_classified() {
    assert_eq!(
        classify("$ pglock key seed"),
        Line::Run("pglock key seed".into())
    );
    assert_eq!(
        classify("scripts/try     # runs pglock's main job"),
        Line::Run("scripts/try".into())
    );
    assert_eq!(
        classify(r#"command: ["pglock", "run", "--", "./report.sh"]"#),
        Line::Run("pglock run -- ./report.sh".into())
    );
    assert_eq!(
        classify("pglock run [OPTIONS] LOCK -- COMMAND [ARG...]"),
        Line::Skip("a synopsis")
    );
}

//! The committed man page and completions are what the clap definition generates now.

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
        "ENVIRONMENT",
        "SIGNALS",
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
    // groff, when present, renders it without warnings.
    if let Ok(out) = std::process::Command::new("groff")
        .args(["-man", "-ww", "-z"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(man.as_bytes())?;
            c.wait_with_output()
        })
    {
        assert!(
            out.stderr.is_empty(),
            "groff warnings: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
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

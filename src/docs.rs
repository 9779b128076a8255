//! The man page and shell completions, generated from the clap definition (`pglock generate`,
//! written to `man/` and `completions/` by `scripts/gen-docs`; a test fails when they are stale).
//! The option list comes from clap, the exit status from `error::EXIT_STATUS`, and every other
//! section from the Markdown of the README and docs/, converted to roff here: no third copy.

use crate::error::EXIT_STATUS;
use std::io::{self, Write};

// ---------------------------------------------------------------------------------------------
// The Markdown the long sections come from: the README and the pages of docs/, compiled in.

const README: &str = include_str!("../README.md");

/// The docs/ pages that are sections of the man page, in the man page's order. Each page's
/// `# Title` is a section (`.SH`), its `##` and `###` headings are subsections.
const PAGES: &[&str] = &[
    include_str!("../docs/locks-and-keys.md"),
    include_str!("../docs/connection-and-tls.md"),
    include_str!("../docs/child-and-signals.md"),
    include_str!("../docs/lock-loss-and-fencing.md"),
    include_str!("../docs/poolers-and-ha.md"),
    include_str!("../docs/migration-tools.md"),
    include_str!("../docs/once-and-ledger.md"),
    include_str!("../docs/status-and-logs.md"),
];

pub fn man(out: &mut dyn Write) -> io::Result<()> {
    let cmd = crate::cli::command();
    let version = cmd.get_version().unwrap_or_default().to_string();
    let page = clap_mangen::Man::new(cmd.clone())
        .source(format!("pglock {version}"))
        .manual("User Commands");
    page.render_title(out)?;
    page.render_name_section(out)?;
    writeln!(
        out,
        ".SH SYNOPSIS\n\\fBpglock run\\fR [\\fIOPTIONS\\fR] \\fILOCK\\fR \\fB\\-\\-\\fR \\fICOMMAND\\fR [\\fIARG\\fR...]\n.br\n\\fBpglock key\\fR \\fILOCK\\fR [\\fB\\-\\-sql\\fR | \\fB\\-\\-limit\\fR \\fIN\\fR | \\fB\\-\\-fence\\-sql\\fR]\n.br\n\\fBpglock status\\fR [\\fILOCK\\fR] [\\fB\\-\\-json\\fR] [\\fB\\-\\-ledger\\fR \\fITABLE\\fR] [\\fB\\-\\-database\\-url\\fR \\fIURL\\fR]\n.br\n\\fBpglock history\\fR \\fILOCK\\fR [\\fB\\-\\-json\\fR] [\\fB\\-\\-ledger\\fR \\fITABLE\\fR]"
    )?;
    writeln!(
        out,
        ".br\n\\fILOCK\\fR: \\fB\\-\\-key\\fR \\fINAME\\fR | \\fB\\-\\-key\\-id\\fR \\fIID\\fR | \\fB\\-\\-key\\-id\\fR \\fIA\\fR,\\fIB\\fR | \\fB\\-\\-key\\-hashtext\\fR \\fINAME\\fR | \\fB\\-\\-lock\\-of\\fR \\fITOOL\\fR (\\fBpglock key\\fR also takes a bare \\fINAME\\fR)"
    )?;
    writeln!(out, ".SH DESCRIPTION")?;
    out.write_all(to_roff(intro(README)).as_bytes())?;
    subsection(out, "## Why not a few lines of SQL?")?;
    let run = cmd.find_subcommand("run").expect("run subcommand");
    options(run, out)?;
    writeln!(out, ".SH \"EXIT STATUS\"")?;
    for e in EXIT_STATUS {
        writeln!(out, ".TP\n\\fB{}\\fR\n{}", roff(e.code), inline(e.meaning))?;
    }
    out.write_all(to_roff(&without_tables(section(README, "## Exit status"))).as_bytes())?;
    for page in PAGES {
        out.write_all(to_roff(page).as_bytes())?;
    }
    writeln!(out, ".SH \"HOW IT WORKS\"")?;
    out.write_all(to_roff(section(README, "## How it works")).as_bytes())?;
    writeln!(out, ".SH EXAMPLES")?;
    out.write_all(to_roff(section(README, "## Examples")).as_bytes())?;
    writeln!(
        out,
        ".SH \"SEE ALSO\"\n\\fBflock\\fR(1), \\fBpsql\\fR(1), \\fBpg_locks\\fR in the PostgreSQL documentation.\n.PP\nThe sections above are the pages of \\fBdocs/\\fR in pglock's source, where \\fBdocs/performance.md\\fR also has the measurements."
    )?;
    writeln!(out, ".SH VERSION\nv{version}")
}

/// A README section as a subsection of the man page: `.SS` and the section's text.
fn subsection(out: &mut dyn Write, heading: &str) -> io::Result<()> {
    let title = heading.trim_start_matches('#').trim();
    writeln!(out, ".SS \"{}\"", inline(title).replace('"', "\\(dq"))?;
    out.write_all(to_roff(section(README, heading)).as_bytes())
}

/// The exit-status table as Markdown, as the README and docs/ must have it (`pglock generate
/// exit-status`; tests/pglock/docs.rs compares).
pub fn exit_status_markdown() -> String {
    let mut t = String::from("| code | meaning |\n|---|---|\n");
    for e in EXIT_STATUS {
        t.push_str(&format!("| {} | {} |\n", e.code, e.meaning));
    }
    t
}

/// The text before a Markdown document's first `##` heading, without its `#` title.
fn intro(md: &str) -> &str {
    let body = md.split_once('\n').map_or("", |(_, rest)| rest);
    let end = headings(body)
        .find(|&(_, level)| level >= 1)
        .map_or(body.len(), |(at, _)| at);
    &body[..end]
}

/// The body of the section whose heading line is `heading` (`## Examples`), up to the next
/// heading of the same or a higher level. Panics when there is none: the man page must not
/// silently lose a section.
fn section<'a>(md: &'a str, heading: &str) -> &'a str {
    let level = heading.chars().take_while(|&c| c == '#').count();
    let (start, _) = headings(md)
        .find(|&(at, _)| md[at..].lines().next() == Some(heading))
        .unwrap_or_else(|| panic!("no section {heading:?}"));
    let body_at = start + md[start..].find('\n').map_or(md.len() - start, |i| i + 1);
    let end = headings(md)
        .find(|&(at, l)| at >= body_at && l <= level)
        .map_or(md.len(), |(at, _)| at);
    &md[body_at..end]
}

/// The byte offset and level of every heading line, outside code fences.
fn headings(md: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut at = 0;
    let mut fenced = false;
    md.split_inclusive('\n').filter_map(move |line| {
        let here = at;
        at += line.len();
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            return None;
        }
        let level = line.chars().take_while(|&c| c == '#').count();
        (!fenced && level > 0 && line[level..].starts_with(' ')).then_some((here, level))
    })
}

/// Markdown without its tables.
fn without_tables(md: &str) -> String {
    md.lines()
        .filter(|l| !l.trim_start().starts_with('|'))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// A list item's marker: `- `, `* ` or `N. `, and the text after it.
fn list_item(line: &str) -> Option<(String, &str)> {
    if let Some(rest) = line.strip_prefix("- ").or_else(|| line.strip_prefix("* ")) {
        return Some(("\\(bu 2".into(), rest));
    }
    let digits = line.chars().take_while(|c| c.is_ascii_digit()).count();
    let rest = line[digits..].strip_prefix(". ")?;
    (digits > 0).then(|| (format!("{}. 4", &line[..digits]), rest))
}

/// The cells of a table row, split at `|` outside code spans.
fn cells(row: &str) -> Vec<String> {
    let row = row.trim().trim_start_matches('|');
    let row = row.strip_suffix('|').unwrap_or(row);
    let (mut out, mut cell, mut code) = (Vec::new(), String::new(), false);
    for c in row.chars() {
        match c {
            '`' => {
                code = !code;
                cell.push(c);
            }
            '|' if !code => out.push(std::mem::take(&mut cell).trim().to_string()),
            _ => cell.push(c),
        }
    }
    out.push(cell.trim().to_string());
    out
}

/// A small Markdown subset to man(7) roff: `#` headings (`#` a section, deeper a subsection),
/// paragraphs, fenced code (also indented in a list item), `-`/`*`/`N.` lists with indented
/// continuation lines, tables (each row a tagged paragraph: the first cell is the tag, the
/// others follow with their column's name), and inline `code`, **bold**, *emphasis* and links
/// (their text only).
pub fn to_roff(md: &str) -> String {
    let lines: Vec<&str> = md.lines().collect();
    let mut out = String::new();
    let mut in_list = false;
    let mut i = 0;
    let starts_block = |l: &str| {
        let t = l.trim_start();
        t.is_empty()
            || t.starts_with("```")
            || t.starts_with('|')
            || l.starts_with('#')
            || list_item(l).is_some()
    };
    while i < lines.len() {
        let line = lines[i];
        let t = line.trim_start();
        let indent = line.len() - t.len();
        if t.is_empty() {
            i += 1;
        } else if let Some(fence) = t.strip_prefix("```") {
            let _lang = fence;
            i += 1;
            out.push_str(if in_list && indent > 0 {
                ".IP\n"
            } else {
                ".PP\n"
            });
            out.push_str(".nf\n.RS\n");
            while i < lines.len() && !lines[i].trim_start().starts_with("```") {
                let l = lines[i];
                let cut = l.len() - l.trim_start().len();
                out.push_str(&line_start(&escape(&l[cut.min(indent)..])));
                out.push('\n');
                i += 1;
            }
            out.push_str(".RE\n.fi\n");
            i += 1;
        } else if line.starts_with('#') {
            let level = line.chars().take_while(|&c| c == '#').count();
            let title = inline(line[level..].trim());
            let title = title.replace('"', "\\(dq");
            if level == 1 {
                out.push_str(&format!(".SH \"{}\"\n", title.to_uppercase()));
            } else {
                out.push_str(&format!(".SS \"{title}\"\n"));
            }
            in_list = false;
            i += 1;
        } else if t.starts_with('|') {
            let mut rows = Vec::new();
            while i < lines.len() && lines[i].trim_start().starts_with('|') {
                let row = cells(lines[i]);
                let rule = row
                    .iter()
                    .all(|c| !c.is_empty() && c.chars().all(|c| matches!(c, '-' | ':')));
                if !rule {
                    rows.push(row);
                }
                i += 1;
            }
            let header = rows.remove(0);
            for row in rows {
                out.push_str(&format!(".TP\n{}\n", line_start(&inline(&row[0]))));
                let rest: Vec<String> = (1..row.len())
                    .filter(|&j| !row[j].is_empty())
                    .map(|j| match (header.len() > 2, header.get(j)) {
                        (true, Some(h)) if !h.is_empty() => {
                            format!("{}: {}", inline(h), inline(&row[j]))
                        }
                        _ => inline(&row[j]),
                    })
                    .collect();
                out.push_str(&line_start(&rest.join("\n.br\n")));
                out.push('\n');
            }
            in_list = false;
        } else if let (0, Some((marker, first))) = (indent, list_item(line)) {
            let mut text = vec![first];
            i += 1;
            while i < lines.len()
                && lines[i].starts_with("  ")
                && !lines[i].trim_start().starts_with("```")
                && !lines[i].trim().is_empty()
            {
                text.push(lines[i].trim());
                i += 1;
            }
            out.push_str(&format!(".IP {marker}\n"));
            out.push_str(&line_start(&inline(&text.join(" "))));
            out.push('\n');
            in_list = true;
        } else {
            let continued = in_list && indent > 0;
            let mut text = vec![t];
            i += 1;
            while i < lines.len() && !starts_block(lines[i]) {
                text.push(lines[i].trim());
                i += 1;
            }
            out.push_str(if continued { ".IP\n" } else { ".PP\n" });
            out.push_str(&line_start(&inline(&text.join(" "))));
            out.push('\n');
            in_list = continued;
        }
    }
    out
}

/// A text line that roff would take for a request (a leading `.` or `'`) is guarded.
fn line_start(text: &str) -> String {
    if text.starts_with('.') || text.starts_with('\'') {
        format!("\\&{text}")
    } else {
        text.to_string()
    }
}

/// Text for roff: backslashes, hyphens, and every character beyond ASCII as `\[uXXXX]`.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\e"),
            '-' => out.push_str("\\-"),
            c if c.is_ascii() => out.push(c),
            c => out.push_str(&format!("\\[u{:04X}]", c as u32)),
        }
    }
    out
}

/// Inline Markdown to roff: `code` and **bold** in bold, *emphasis* in italics, a link as its
/// text; everything else escaped.
fn inline(md: &str) -> String {
    let mut out = String::new();
    let mut bold = false;
    let mut rest = md;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("**") {
            out.push_str(if bold { "\\fR" } else { "\\fB" });
            bold = !bold;
            rest = after;
        } else if let Some((code, after)) = rest
            .strip_prefix('`')
            .and_then(|r| r.find('`').map(|e| (&r[..e], &r[e + 1..])))
        {
            if bold {
                out.push_str(&escape(code));
            } else {
                out.push_str(&format!("\\fB{}\\fR", escape(code)));
            }
            rest = after;
        } else if let Some((text, after)) = link(rest) {
            out.push_str(&inline_in(text, bold));
            rest = after;
        } else if let Some((em, after)) = rest
            .strip_prefix('*')
            .filter(|r| r.starts_with(|c: char| c.is_alphanumeric()))
            .and_then(|r| r.find('*').map(|e| (&r[..e], &r[e + 1..])))
        {
            let back = if bold { "\\fB" } else { "\\fR" };
            out.push_str(&format!("\\fI{}{back}", escape(em)));
            rest = after;
        } else {
            out.push_str(&escape(&rest[..c.len_utf8()]));
            rest = &rest[c.len_utf8()..];
        }
    }
    if bold {
        out.push_str("\\fR");
    }
    out
}

/// `inline` of a link's text inside bold text, or not.
fn inline_in(text: &str, bold: bool) -> String {
    if bold {
        inline(&format!("**{text}**"))
            .trim_start_matches("\\fB")
            .trim_end_matches("\\fR")
            .to_string()
    } else {
        inline(text)
    }
}

/// `[text](target)` at the start of `md`: the text and what follows the link.
fn link(md: &str) -> Option<(&str, &str)> {
    let r = md.strip_prefix('[')?;
    let close = r.find("](")?;
    let text = &r[..close];
    if text.contains('[') || text.contains(']') {
        return None;
    }
    let after = &r[close + 2..];
    let end = after.find(')')?;
    Some((text, &after[end + 1..]))
}

/// Escapes text for roff: backslashes and hyphens, and a leading dot or quote.
fn roff(text: &str) -> String {
    let t = text.replace('\\', "\\e").replace('-', "\\-");
    if t.starts_with('.') || t.starts_with('\'') {
        format!("\\&{t}")
    } else {
        t
    }
}

/// OPTIONS of `pglock run`, by help heading, each with its environment variable and default.
fn options(run: &clap::Command, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, ".SH OPTIONS")?;
    let mut headings: Vec<Option<&str>> = Vec::new();
    for a in run.get_arguments() {
        if !headings.contains(&a.get_help_heading()) {
            headings.push(a.get_help_heading());
        }
    }
    for heading in headings {
        if let Some(h) = heading {
            writeln!(out, ".SS {h}")?;
        }
        for a in run
            .get_arguments()
            .filter(|a| a.get_help_heading() == heading && !a.is_hide_set())
        {
            let mut names = Vec::new();
            if let Some(s) = a.get_short() {
                names.push(format!("\\fB\\-{s}\\fR"));
            }
            if let Some(l) = a.get_long() {
                names.push(format!("\\fB\\-\\-{}\\fR", roff(l)));
            }
            let takes_value = a.get_action().takes_values();
            let value = a
                .get_value_names()
                .and_then(|v| v.first())
                .map(|v| v.to_string());
            let mut line = names.join(", ");
            if let (true, Some(v)) = (takes_value, &value) {
                if names.is_empty() {
                    line = format!("\\fI{v}\\fR...");
                } else {
                    line.push_str(&format!(" \\fI{v}\\fR"));
                }
            }
            writeln!(out, ".TP\n{line}")?;
            let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            let mut text = roff(&help);
            let defaults: Vec<String> = a
                .get_default_values()
                .iter()
                .map(|d| d.to_string_lossy().into_owned())
                .collect();
            if !defaults.is_empty() {
                text.push_str(&format!(". Default: {}", roff(&defaults.join(", "))));
            }
            if let Some(env) = a.get_env() {
                text.push_str(&format!(
                    ". Environment: \\fB{}\\fR",
                    roff(&env.to_string_lossy())
                ));
            }
            writeln!(out, "{text}.")?;
        }
    }
    Ok(())
}

/// A shell's completion script (`pglock generate bash|zsh|fish`).
pub fn completion(shell: &str, out: &mut dyn Write) -> Result<(), String> {
    use clap_complete::Shell;
    let shell = match shell {
        "bash" => Shell::Bash,
        "zsh" => Shell::Zsh,
        "fish" => Shell::Fish,
        other => return Err(format!("unknown shell '{other}': use bash, zsh or fish")),
    };
    let mut cmd = crate::cli::command();
    clap_complete::generate(shell, &mut cmd, "pglock", out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_paragraphs_and_inline() {
        let md = "# Poolers and HA\n\nA `--scope` run\nis **not `safe`** for *one* [page](x.md#a).\n\n## The rule\n\n.dot-led — line\n";
        assert_eq!(
            to_roff(md),
            ".SH \"POOLERS AND HA\"\n.PP\nA \\fB\\-\\-scope\\fR run is \\fBnot safe\\fR for \\fIone\\fR page.\n.SS \"The rule\"\n.PP\n\\&.dot\\-led \\[u2014] line\n"
        );
    }

    #[test]
    fn code_blocks_are_kept_line_by_line() {
        let md = "```sh\n.x \\ y -z\n  indented\n```\n";
        assert_eq!(
            to_roff(md),
            ".PP\n.nf\n.RS\n\\&.x \\e y \\-z\n  indented\n.RE\n.fi\n"
        );
    }

    #[test]
    fn lists_with_continuations_and_code() {
        let md = "- one\n  two\n\n  more\n\n  ```sh\n  pglock run\n  ```\n1. first\n\nafter\n";
        assert_eq!(
            to_roff(md),
            ".IP \\(bu 2\none two\n.IP\nmore\n.IP\n.nf\n.RS\npglock run\n.RE\n.fi\n.IP 1. 4\nfirst\n.PP\nafter\n"
        );
    }

    #[test]
    fn tables_become_tagged_paragraphs() {
        let two = "| code | meaning |\n|---|---|\n| 2 | usage `a|b` |\n";
        assert_eq!(to_roff(two), ".TP\n2\nusage \\fBa|b\\fR\n");
        let three = "| tool | option | id |\n|---|---|---|\n| Rails | `--lock-of rails` | |\n";
        assert_eq!(
            to_roff(three),
            ".TP\nRails\noption: \\fB\\-\\-lock\\-of rails\\fR\n"
        );
    }

    #[test]
    fn sections_are_found_outside_code() {
        let md = "# t\nintro\n## A\n```\n# not a heading\n```\na\n### A1\nsub\n## B\nb\n";
        assert_eq!(intro(md), "intro\n");
        assert_eq!(
            section(md, "## A"),
            "```\n# not a heading\n```\na\n### A1\nsub\n"
        );
        assert_eq!(section(md, "### A1"), "sub\n");
        assert_eq!(section(md, "## B"), "b\n");
        assert_eq!(without_tables("a\n| x |\nb\n"), "a\nb\n");
    }

    #[test]
    fn the_exit_status_markdown_is_the_table() {
        let md = exit_status_markdown();
        assert!(md.starts_with(
            "| code | meaning |\n|---|---|\n| child's code | the child exited normally |\n"
        ));
        assert_eq!(md.lines().count(), EXIT_STATUS.len() + 2);
    }

    #[test]
    fn every_page_has_one_title_and_renders() {
        for page in PAGES {
            assert!(page.starts_with("# "), "{}", &page[..40]);
            assert_eq!(headings(page).filter(|&(_, l)| l == 1).count(), 1);
            assert!(!to_roff(page).is_empty());
        }
    }
}

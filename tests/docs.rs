//! The documentation against the binary, with no servers: every long flag and every
//! variable that `leaflock-backup <command> --help` shows is in the reference
//! (`docs/configuration.md`), each flag on a line with its own variable, every command
//! has its row there, and every flag the reference names exists; every relative link
//! in the README and `docs/` resolves (file, and heading when it names one).

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{repo_root, runner};

const REFERENCE: &str = "docs/configuration.md";

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn help(args: &[&str]) -> String {
    let out = runner().args(args).arg("--help").output().unwrap();
    assert!(
        out.status.success(),
        "{args:?} --help: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The subcommands `leaflock-backup --help` lists (without `help`).
fn subcommands() -> Vec<String> {
    let top = help(&[]);
    let list = top
        .split("\nCommands:\n")
        .nth(1)
        .expect("a Commands: section")
        .split("\n\n")
        .next()
        .unwrap();
    let cmds: Vec<String> = list
        .lines()
        // A command's line is indented by two; its wrapped description by more.
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .filter(|c| c != "help")
        .collect();
    assert!(cmds.len() >= 10, "subcommands: {cmds:?}");
    cmds
}

/// One option as `--help` shows it: its long flag, aliases and variable.
#[derive(Debug)]
struct Opt {
    flag: String,
    aliases: Vec<String>,
    env: Option<String>,
}

fn is_flag_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// Every `--name` in `text`.
fn long_flags(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("--") {
        let before = rest[..i].chars().next_back();
        let tail = &rest[i + 2..];
        let name: String = tail.chars().take_while(|&c| is_flag_char(c)).collect();
        if before.is_none_or(|c| !is_flag_char(c))
            && name.starts_with(|c: char| c.is_ascii_lowercase())
        {
            found.push(format!("--{name}"));
        }
        rest = &tail[name.len()..];
    }
    found
}

/// Every `[env: NAME...]` in `text`.
fn env_vars(text: &str) -> Vec<String> {
    text.split("[env: ")
        .skip(1)
        .map(|s| {
            s.chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect()
}

/// The options a `--help` defines: lines indented by two to six spaces that start with
/// `-`, with the `[env: ...]` and `[alias: ...]` lines under them.
fn options(help: &str) -> Vec<Opt> {
    let mut opts: Vec<Opt> = Vec::new();
    for line in help.lines() {
        let indent = line.len() - line.trim_start().len();
        let t = line.trim();
        if (2..=6).contains(&indent) && t.starts_with('-') {
            if let Some(flag) = long_flags(t.split(" <").next().unwrap()).into_iter().next() {
                opts.push(Opt {
                    flag,
                    aliases: Vec::new(),
                    env: None,
                });
            }
            continue;
        }
        let Some(cur) = opts.last_mut() else { continue };
        if t.starts_with("[env: ") {
            cur.env = env_vars(t).into_iter().next();
        } else if t.starts_with("[alias: ") || t.starts_with("[aliases: ") {
            cur.aliases.extend(long_flags(t));
        }
    }
    opts
}

/// `token` occurs in `text` as a whole word (not as the start or end of a longer flag or
/// variable: `--sse` is not found in `--sse-c-key`).
fn mentions(text: &str, token: &str) -> bool {
    text.match_indices(token).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + token.len()..].chars().next();
        before.is_none_or(|c| !is_flag_char(c)) && after.is_none_or(|c| !is_flag_char(c))
    })
}

#[test]
fn every_flag_and_variable_of_every_command_is_in_the_reference() {
    let reference = read(REFERENCE);
    let mut missing = Vec::new();
    let mut known = BTreeSet::new();
    let top = help(&[]);
    for o in options(&top) {
        known.insert(o.flag.clone());
        if !mentions(&reference, &o.flag) {
            missing.push(format!("leaflock-backup {}", o.flag));
        }
    }
    for cmd in subcommands() {
        let h = help(&[&cmd]);
        if !reference
            .lines()
            .any(|l| l.starts_with(&format!("| `{cmd}` |")))
        {
            missing.push(format!("{cmd}: no row in the table of options by command"));
        }
        let opts = options(&h);
        assert!(
            opts.iter().any(|o| o.flag == "--help"),
            "{cmd}: no options read from its --help"
        );
        for o in &opts {
            known.insert(o.flag.clone());
            known.extend(o.aliases.iter().cloned());
            // The flag on a line with its own variable: the reference says which is which.
            let paired = reference
                .lines()
                .any(|l| mentions(l, &o.flag) && o.env.as_ref().is_none_or(|e| mentions(l, e)));
            if !paired {
                missing.push(match &o.env {
                    Some(e) => format!("{cmd} {} on a line with {e}", o.flag),
                    None => format!("{cmd} {}", o.flag),
                });
            }
            for a in &o.aliases {
                if !mentions(&reference, a) {
                    missing.push(format!("{cmd} {a} (alias of {})", o.flag));
                }
            }
        }
        // And everything else --help names: flags in the descriptions, every variable.
        for f in long_flags(&h) {
            if !mentions(&reference, &f) {
                missing.push(format!("{cmd} --help mentions {f}"));
            }
        }
        for e in env_vars(&h) {
            if !mentions(&reference, &e) {
                missing.push(format!("{cmd} {e}"));
            }
        }
    }
    missing.dedup();
    assert!(
        missing.is_empty(),
        "{REFERENCE} lacks what --help shows:\n  {}",
        missing.join("\n  ")
    );

    // The other way round: no flag in the reference that no command has.
    let stale: BTreeSet<String> = long_flags(&reference)
        .into_iter()
        .filter(|f| !known.contains(f))
        .collect();
    assert!(
        stale.is_empty(),
        "{REFERENCE} names flags that no command has: {stale:?}"
    );
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The headings' anchors and the `[text](target)` links of a Markdown file, outside code
/// blocks.
fn headings_and_links(md: &str) -> (BTreeSet<String>, Vec<String>) {
    let (mut anchors, mut links) = (BTreeSet::new(), Vec::new());
    let mut fence = false;
    for line in md.lines() {
        if line.trim_start().starts_with("```") {
            fence = !fence;
            continue;
        }
        if fence {
            continue;
        }
        if line.starts_with('#') {
            anchors.insert(slug(line.trim_start_matches('#')));
        }
        for part in line.split("](").skip(1) {
            if let Some(end) = part.find(')') {
                links.push(part[..end].to_string());
            }
        }
    }
    (anchors, links)
}

#[test]
fn every_relative_link_in_the_readme_and_docs_resolves() {
    let root = repo_root();
    let mut files = vec!["README.md".to_string(), "ARCHITECTURE.md".to_string()];
    for e in std::fs::read_dir(root.join("docs")).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".md") {
            files.push(format!("docs/{name}"));
        }
    }
    assert!(files.iter().any(|f| f == REFERENCE));
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let (own_anchors, links) = headings_and_links(&read(file));
        let dir = Path::new(file).parent().unwrap();
        for link in links {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = match link.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (link.as_str(), None),
            };
            let anchors = if path.is_empty() {
                own_anchors.clone()
            } else {
                let target = root.join(dir).join(path);
                if !target.exists() {
                    broken.push(format!("{file}: {link} (no such file)"));
                    continue;
                }
                match (anchor, path.ends_with(".md")) {
                    (Some(_), true) => {
                        headings_and_links(&std::fs::read_to_string(&target).unwrap()).0
                    }
                    _ => BTreeSet::new(),
                }
            };
            if let Some(a) = anchor {
                if !anchors.contains(a) {
                    broken.push(format!("{file}: {link} (no heading #{a})"));
                }
            }
        }
    }
    assert!(checked > 30, "only {checked} links found");
    assert!(
        broken.is_empty(),
        "broken links:\n  {}",
        broken.join("\n  ")
    );
}

/// Each group of the reference says which commands take it (`Commands: …`), a row may
/// narrow that (`(… only.)`): every command offers exactly the flags the reference says
/// it takes, so a read command that starts offering a write flag (or the reverse) is
/// caught here.
#[test]
fn each_command_offers_exactly_the_flags_its_groups_give_it() {
    let reference = read(REFERENCE);
    let ticks = |s: &str| -> Vec<String> {
        s.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    };
    // flag -> the commands the reference gives it to.
    let mut given: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    for section in reference.split("\n### ").skip(1) {
        let Some(line) = section
            .lines()
            .find(|l| l.starts_with("Commands:") || l.starts_with("Every command"))
        else {
            continue;
        };
        let group: BTreeSet<String> = ticks(line.split_once(':').map_or(line, |x| x.1))
            .into_iter()
            .filter(|c| !c.starts_with('-'))
            .collect();
        for row in section.lines().filter(|l| l.starts_with("| `-")) {
            let first = row.split('|').nth(1).unwrap();
            let Some(flag) = long_flags(first).into_iter().next() else {
                continue;
            };
            let only: Option<BTreeSet<String>> = row
                .rfind("only.)")
                .and_then(|end| row[..end].rfind('(').map(|start| &row[start..end]))
                .map(|p| ticks(p).into_iter().collect());
            given
                .entry(flag)
                .or_default()
                .extend(only.unwrap_or_else(|| group.clone()));
        }
    }
    assert!(given.len() > 50, "rows read: {}", given.len());
    let mut wrong = Vec::new();
    for cmd in subcommands() {
        let offered: BTreeSet<String> = options(&help(&[&cmd]))
            .into_iter()
            .map(|o| o.flag)
            .collect();
        for f in &offered {
            if !given.get(f).is_some_and(|cs| cs.contains(&cmd)) {
                wrong.push(format!(
                    "{cmd} offers {f}, which the reference does not give it"
                ));
            }
        }
        for (f, cs) in &given {
            if cs.contains(&cmd) && !offered.contains(f) && f != "--version" {
                wrong.push(format!(
                    "the reference gives {cmd} {f}, which it does not offer"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{REFERENCE}:\n  {}", wrong.join("\n  "));
}

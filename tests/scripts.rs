//! The repository's shell scripts pass shellcheck: every `scripts/*.sh` and `.ci/run`,
//! with the files they source (`scripts/lib.sh`) followed, at shellcheck's default
//! severity and without any `.shellcheckrc`. A warning that is wrong for a line is
//! silenced on that line with a `# shellcheck disable=SCxxxx` and its reason.
//! shellcheck is installed by `scripts/testbed.sh install`.

mod common;

use common::repo_root;
use std::process::{Command, Stdio};

/// `scripts/*.sh` and `.ci/run`, relative to the repository's root.
fn shell_scripts() -> Vec<String> {
    let mut scripts: Vec<String> = std::fs::read_dir(repo_root().join("scripts"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sh"))
        .map(|n| format!("scripts/{n}"))
        .collect();
    scripts.sort();
    scripts.push(".ci/run".to_string());
    scripts
}

#[test]
fn every_script_is_shellcheck_clean() {
    let scripts = shell_scripts();
    for s in ["scripts/lib.sh", "scripts/testbed.sh", "scripts/test.sh"] {
        assert!(scripts.iter().any(|x| x == s), "{s} in {scripts:?}");
    }
    let out = match Command::new("shellcheck")
        .args(["--norc", "--external-sources", "--color=never"])
        .args(&scripts)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .output()
    {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("SKIPPED: shellcheck is not installed: run `scripts/testbed.sh install`");
            return;
        }
        other => other.expect("shellcheck runs"),
    };
    assert!(
        out.status.success(),
        "shellcheck (exit {:?}) on {scripts:?}:\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

//! `gen-assets DIR`: the man pages and shell completions of `leaflock-backup`,
//! generated from its clap definitions (`cli.rs`, compiled in here as it is) into
//! `DIR/man/` and `DIR/completions/`. Used by `scripts/build-deb.sh` before
//! `cargo deb`; not shipped.
//!
//! A separate binary rather than a hidden subcommand: the shipped binary keeps its
//! surface (and `main.rs` its wiring) unchanged, and the generators are not linked
//! into it.

#[allow(dead_code)]
#[path = "../cli.rs"]
mod cli;

use clap::CommandFactory;
use clap_complete::Shell;
use std::path::PathBuf;

/// One man page, `DIR/NAME.1`, with every option's variable under ENVIRONMENT.
fn write_page(cmd: &clap::Command, name: &str, dir: &std::path::Path) -> std::io::Result<()> {
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    let vars: Vec<String> = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter_map(|a| {
            let var = a.get_env()?.to_string_lossy().to_string();
            let flag = a
                .get_long()
                .map(|l| format!("\\-\\-{}", l.replace('-', "\\-")));
            Some(format!(
                ".TP\n\\fB{}\\fR\n{}\n",
                var,
                flag.map(|f| format!("Sets \\fB{f}\\fR."))
                    .unwrap_or_default()
            ))
        })
        .collect();
    if !vars.is_empty() {
        page.extend_from_slice(b".SH ENVIRONMENT\nEvery option can be set through its variable:\n");
        for v in vars {
            page.extend_from_slice(v.as_bytes());
        }
    }
    std::fs::write(dir.join(format!("{name}.1")), page)
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: gen-assets DIR");
        std::process::exit(2);
    };
    let dir = PathBuf::from(dir);
    let man = dir.join("man");
    let completions = dir.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;

    // leaflock-backup.1 and one page per subcommand (leaflock-backup-run.1, ...), each
    // with an ENVIRONMENT section: clap_mangen does not list the variables.
    let mut root = cli::Cli::command();
    root.build();
    write_page(&root, root.get_name(), &man)?;
    for sub in root.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("{}-{}", root.get_name(), sub.get_name());
        let sub = sub
            .clone()
            .name(&*Box::leak(name.clone().into_boxed_str()))
            .bin_name(format!("{} {}", root.get_name(), sub.get_name()));
        write_page(&sub, &name, &man)?;
    }

    let mut cmd = cli::Cli::command();
    let name = cmd.get_name().to_string();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, &name, &completions)?;
    }
    Ok(())
}

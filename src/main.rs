//! `leaflock-backup`: wiring only. Parse flags, start logging, run the subcommand on a
//! tokio runtime, turn its result into the exit status of the contract (see
//! `error.rs`).

mod cli;
mod commands;
mod compress;
mod config;
mod conninfo;
mod database;
mod dump;
mod error;
mod logging;
mod manifest;
mod metrics;
mod pipeline;
mod progress;
mod schedule;
mod signals;
mod storage;

use clap::Parser;
use std::time::Duration;

fn main() {
    let cli = cli::Cli::parse();
    let term = logging::init(&cli.log);
    pipeline::return_freed_buffers_to_the_os();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("leaflock-backup")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            std::process::exit(error::EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            cli::Command::Run(args) => commands::run::execute(args, term).await,
            cli::Command::NextRun(args) => commands::next_run::execute(args),
        }
    });
    let code = match result {
        Ok(()) => error::EXIT_OK,
        Err(e) => {
            let code = error::exit_code(&e);
            let what = match code {
                error::EXIT_USAGE => "configuration error",
                error::EXIT_LOCKED => "another run is in progress",
                _ => "backup failed",
            };
            tracing::error!(error = format!("{e:#}"), exit_code = code, "{what}: {e:#}");
            code
        }
    };
    runtime.shutdown_timeout(Duration::from_secs(2));
    std::process::exit(code);
}

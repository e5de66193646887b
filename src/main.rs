//! `leaflock-backup`: wiring only. Parse flags, start logging, run the subcommand on a
//! tokio runtime, turn its result into the exit status of the contract (see
//! `error.rs`).

mod amcheck;
mod archive;
mod backup;
mod catalog;
mod check;
mod cli;
mod clock;
mod commands;
mod compress;
mod config;
mod conninfo;
mod crypto;
mod database;
mod debris;
mod drill;
mod dump;
mod error;
mod gate;
mod httptls;
mod lock;
mod logging;
mod manifest;
mod metrics;
mod notify;
mod old_script;
mod pgtool;
mod pipeline;
mod progress;
mod readback;
mod record;
mod report;
mod restore;
mod retention;
mod schedule;
mod scope;
mod secrets;
mod signals;
mod signing;
mod sqlscript;
mod storage;
mod textfile;

use clap::Parser;
use std::time::Duration;

fn main() {
    let clock = std::time::Instant::now();
    // Bad configuration found before logging exists: one line on stderr, exit 2.
    let refuse = |e: error::UsageError| -> ! {
        eprintln!("error: {e}");
        std::process::exit(error::EXIT_USAGE)
    };
    if let Err(e) = secrets::load_files() {
        refuse(e);
    }
    logging::redact(secrets::values());
    let cli = cli::Cli::parse();
    let term = logging::init(&cli.log).unwrap_or_else(|e| refuse(e));
    // Every command's lines share a request id (the first warning included); `run` and
    // `schedule` set one per run.
    logging::set_run_id(&logging::new_run_id(chrono::Utc::now()));
    secrets::warn_about_argv();
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
            cli::Command::Check(args) => commands::check::execute(args).await,
            cli::Command::NextRun(args) => commands::next_run::execute(args),
            cli::Command::List(args) => commands::list::execute(args).await,
            cli::Command::Verify(args) => commands::verify::execute(args).await,
            cli::Command::Restore(args) => commands::restore::execute(args).await,
            cli::Command::Drill(args) => commands::drill::execute(args).await,
            cli::Command::Prune(args) => commands::prune::execute(args).await,
            cli::Command::Schedule(args) => commands::schedule::execute(args, term).await,
            cli::Command::Keygen(args) => commands::keygen::execute(args),
            cli::Command::Report(args) => commands::report::execute(args).await,
        }
    });
    let code = match result {
        Ok(()) => error::EXIT_OK,
        Err(e) => {
            let code = error::exit_code(&e);
            let what = match code {
                error::EXIT_USAGE => "configuration error",
                error::EXIT_LOCKED => "another run is in progress",
                _ => match &cli.command {
                    cli::Command::Run(_) | cli::Command::Schedule(_) => "backup failed",
                    cli::Command::Verify(_) => "verification failed",
                    cli::Command::Check(_) => "check failed",
                    cli::Command::Restore(_) => "restore failed",
                    cli::Command::Drill(_) => "restore drill failed",
                    cli::Command::Prune(_) => "prune failed",
                    cli::Command::Report(_) => "report failed",
                    _ => "failed",
                },
            };
            tracing::error!(
                error = format!("{e:#}"),
                exit_code = code,
                duration_seconds = logging::seconds(clock),
                "{what}: {e:#}"
            );
            code
        }
    };
    runtime.shutdown_timeout(Duration::from_secs(2));
    std::process::exit(code);
}

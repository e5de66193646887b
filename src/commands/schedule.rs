//! `leaflock-backup schedule`: the runner as a long-lived process for hosts and
//! docker-compose files without cron. At each slot of the schedule it performs one
//! whole `run` (same flags, same lock, same metrics); runs never overlap — slots that
//! pass during a long run are skipped, with a warning. SIGTERM or SIGINT between runs
//! exits 0 at once; during a run, the run is aborted cleanly (as `run` does) and the
//! process exits with that run's status.

use crate::cli::RunArgs;
use crate::commands::run::run_once;
use crate::config::{self, process_env};
use crate::error::usage;
use crate::logging::Terminal;
use crate::signals::Cancel;
use anyhow::{Context, Result};
use chrono::Utc;

pub async fn execute(args: &RunArgs, term: Terminal) -> Result<()> {
    let cfg = config::resolve_run(args, &process_env)?;
    let Some(schedule) = cfg.schedule.clone() else {
        return usage(
            "--schedule / --cron / LEAFLOCK_BACKUP_SCHEDULE (or BACKUP_SCHEDULE) is required",
        );
    };
    let cancel = Cancel::install().context("cannot install signal handlers")?;
    let mut runs = 0u64;
    loop {
        let now = Utc::now();
        let Some(next) = schedule.next_after(now) else {
            tracing::warn!("the schedule has no further slot; stopping");
            return Ok(());
        };
        tracing::info!(
            schedule = %schedule.expression,
            timezone = %schedule.timezone.name(),
            next_run = %next.to_rfc3339(),
            runs,
            "next backup at {} ({})",
            next.to_rfc3339(),
            next.with_timezone(&schedule.timezone).format("%Y-%m-%d %H:%M:%S %Z")
        );
        let wait = (next - now).to_std().unwrap_or_default();
        tokio::select! {
            sig = cancel.cancelled() => {
                tracing::info!(signal = sig, runs, "{sig} between runs: stopping");
                return Ok(());
            }
            _ = tokio::time::sleep(wait) => {}
        }
        runs += 1;
        let clock = std::time::Instant::now();
        let result = run_once(&cfg, &cancel, term).await;
        if let Some(sig) = cancel.signal() {
            tracing::info!(signal = sig, runs, "{sig} during a run: stopping after it");
            return result;
        }
        if let Err(e) = &result {
            let code = crate::error::exit_code(e);
            tracing::error!(
                error = format!("{e:#}"),
                exit_code = code,
                duration_seconds = crate::logging::seconds(clock),
                "this run failed; waiting for the next slot"
            );
        }
        let after = Utc::now();
        let missed = schedule
            .upcoming(next, 1000)
            .into_iter()
            .take_while(|t| *t <= after)
            .count();
        if missed > 0 {
            tracing::warn!(
                missed,
                "the run outlasted {missed} slot(s); they were skipped (runs never overlap)"
            );
        }
    }
}

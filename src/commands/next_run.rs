//! `leaflock-backup next-run`: print when a schedule fires next, so an operator (and
//! the test suite, for the shipped CronJob and timer) can check an expression with the
//! same parser `run --schedule` uses.

use crate::cli::NextRunArgs;
use crate::config::{process_env, resolve_schedule};
use crate::error::usage;
use anyhow::Result;
use chrono::Utc;

pub fn execute(args: &NextRunArgs) -> Result<()> {
    let Some(schedule) = resolve_schedule(&args.schedule, &process_env)? else {
        return usage("--schedule / LEAFLOCK_BACKUP_SCHEDULE (or BACKUP_SCHEDULE) is required");
    };
    if !(1..=1000).contains(&args.count) {
        return usage("--count / LEAFLOCK_BACKUP_NEXT_RUN_COUNT: expected 1..1000");
    }
    for t in schedule.upcoming(Utc::now(), args.count) {
        println!(
            "{}  ({} {})",
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            t.with_timezone(&schedule.timezone)
                .format("%Y-%m-%d %H:%M:%S %a"),
            schedule.timezone.name()
        );
    }
    Ok(())
}

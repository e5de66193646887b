//! `leaflock-backup prune`: apply the retention policy now (`--dry-run` to see what
//! would go and which rule keeps each kept backup).

use crate::cli::PruneArgs;
use crate::config::{process_env, resolve_destination, resolve_retention};
use crate::error::usage;
use crate::{retention, storage};
use anyhow::Result;

pub async fn execute(args: &PruneArgs) -> Result<()> {
    let dest = resolve_destination(&args.destination, &process_env)?;
    let Some(policy) = resolve_retention(&args.retention, &process_env)? else {
        return usage(
            "no retention rule given: set --keep-last, --keep-daily, --keep-weekly, --keep-monthly \
             or --max-age (BACKUP_RETENTION_DAYS)",
        );
    };
    let storage = storage::open(&dest).await?;
    let (kept, deleted) =
        retention::apply(storage.as_ref(), dest.prefix(), &policy, args.dry_run).await?;
    tracing::info!(
        kept,
        deleted,
        dry_run = args.dry_run,
        "{}: {kept} kept, {deleted} {}",
        if args.dry_run { "dry run" } else { "pruned" },
        if args.dry_run {
            "would be deleted"
        } else {
            "deleted"
        }
    );
    Ok(())
}

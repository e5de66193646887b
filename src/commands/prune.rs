//! `leaflock-backup prune`: remove the debris of interrupted runs older than
//! `--orphan-grace` (see `debris.rs`), then apply the retention policy (`--dry-run` to
//! see what would go and which rule keeps each kept backup).

use crate::cli::PruneArgs;
use crate::config::{process_env, resolve_destination, resolve_orphan_grace, resolve_retention};
use crate::error::usage;
use crate::{debris, retention, storage};
use anyhow::Result;

pub async fn execute(args: &PruneArgs) -> Result<()> {
    let dest = resolve_destination(&args.destination, &process_env)?;
    let Some(policy) = resolve_retention(&args.retention, &process_env)? else {
        return usage(
            "no retention rule given: set --keep-last, --keep-daily, --keep-weekly, --keep-monthly \
             or --max-age (BACKUP_RETENTION_DAYS)",
        );
    };
    let grace = resolve_orphan_grace(&args.retention)?;
    let clock = std::time::Instant::now();
    let storage = storage::open(&dest).await?;
    let swept = debris::sweep(storage.as_ref(), dest.prefix(), grace, args.dry_run).await?;
    let (kept, deleted) =
        retention::apply(storage.as_ref(), dest.prefix(), &policy, args.dry_run).await?;
    tracing::info!(
        kept,
        deleted,
        debris_uploads = swept.uploads,
        debris_objects = swept.objects,
        dry_run = args.dry_run,
        duration_seconds = crate::commands::run::seconds(clock),
        "{}: {kept} kept, {deleted} {}",
        if args.dry_run { "dry run" } else { "pruned" },
        if args.dry_run {
            "would be deleted"
        } else {
            "deleted"
        }
    );
    if swept.failed > 0 {
        anyhow::bail!(
            "{} piece(s) of debris could not be removed (see the errors above)",
            swept.failed
        );
    }
    Ok(())
}

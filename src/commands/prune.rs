//! `leaflock-backup prune`: for one database, under the same lock as `run`: accept the
//! suspects named by `--accept-suspect`, remove the debris of interrupted runs older
//! than `--orphan-grace` (see `debris.rs`), then apply the retention policy
//! (`--dry-run` to see what would go and which rule keeps each kept backup).

use crate::catalog::Kind;
use crate::cli::PruneArgs;
use crate::commands::read_catalog;
use crate::config::{
    process_env, resolve_clock_tolerance, resolve_database, resolve_destination,
    resolve_orphan_grace, resolve_retention, resolve_scope, resolve_trust, ScopeFrom,
};
use crate::error::usage;
use crate::logging::new_run_id;
use crate::retention::Refused;
use crate::{catalog, debris, gate, lock, logging, retention};
use anyhow::{anyhow, bail, Result};
use chrono::Utc;

pub async fn execute(args: &PruneArgs) -> Result<()> {
    let dest = resolve_destination(&args.destination, None, &process_env)?;
    let policy = resolve_retention(&args.retention, &process_env)?;
    if policy.is_none() && args.accept_suspect.is_empty() {
        return usage(
            "no retention rule given: set --keep-last, --keep-daily, --keep-weekly, --keep-monthly \
             or --max-age (BACKUP_RETENTION_DAYS), or --accept-suspect KEY",
        );
    }
    let grace = resolve_orphan_grace(&args.retention)?;
    let started = std::time::Instant::now();
    let database = resolve_database(&args.database, &process_env)?;
    let scope = resolve_scope(
        &args.destination,
        ScopeFrom::Connection(&database.conn.dbname),
        &process_env,
    )?;
    let tolerance = resolve_clock_tolerance(&args.destination)?;
    let trust = resolve_trust(&args.trust, None, None)?;
    let run_id = new_run_id(Utc::now());
    logging::set_run_id(&run_id);

    // The same lock as `run` of this database: prune never overlaps a backup (whose
    // upload it could mistake for debris) or another prune (exit 3).
    let _lock = lock::acquire(
        &database.conn,
        database.connect_timeout,
        &scope,
        &format!("prune {run_id}"),
    )
    .await?;

    let (storage, clock, mut catalog) =
        read_catalog(&dest, Some(scope.clone()), tolerance, &trust).await?;
    if !args.accept_suspect.is_empty() {
        for key in &args.accept_suspect {
            let entry = catalog.resolve(key)?;
            let Kind::Backup {
                suspect: Some(rec), ..
            } = &entry.kind
            else {
                bail!("{key} is not a suspect backup (`leaflock-backup list` marks them SUSPECT)");
            };
            if rec.accepted() {
                tracing::info!(key = %key, "{key} was already accepted");
                continue;
            }
            let mut rec = rec.clone();
            rec.accepted_at = Some(Utc::now());
            if !args.dry_run {
                gate::write(storage.as_ref(), &rec).await?;
            }
            tracing::warn!(
                key = %key,
                findings = ?rec.findings,
                dry_run = args.dry_run,
                "accepted the suspect backup {key} as intended ({}); it counts as a normal backup again",
                rec.findings.join("; ")
            );
        }
        catalog = catalog::scan(
            storage.as_ref(),
            dest.prefix(),
            clock.view(Some(scope.clone()), trust.clone()),
        )
        .await?;
    }
    let Some(policy) = policy else {
        return Ok(());
    };

    let swept = debris::sweep(storage.as_ref(), dest.prefix(), &scope, grace, args.dry_run).await?;
    let applied = retention::apply(
        storage.as_ref(),
        &catalog,
        &clock,
        &policy,
        None,
        args.dry_run,
    )
    .await
    .map_err(|e| match e.downcast_ref::<Refused>() {
        Some(r) => anyhow!("prune of database {scope}: {r}"),
        None => e,
    })?;
    tracing::info!(
        kept = applied.kept,
        deleted = applied.deleted,
        debris_uploads = swept.uploads,
        debris_objects = swept.objects,
        dry_run = args.dry_run,
        duration_seconds = crate::logging::seconds(started),
        "{}: {} kept, {} {}",
        if args.dry_run { "dry run" } else { "pruned" },
        applied.kept,
        applied.deleted,
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

//! `leaflock-backup drill [KEY|latest]`: a restore drill of a backup already stored
//! (the weekly drill of the latest nightly backup, say), without taking a new one.
//! Same drill as `run --restore-drill`; the record is written beside the manifest and
//! `leaflock_restore_drills_total` etc. are pushed. Exit 1 when the drill fails.

use crate::catalog::Kind;
use crate::cli::DrillCommandArgs;
use crate::commands::read_catalog;
use crate::config::{
    process_env, resolve_clock_tolerance, resolve_database, resolve_destination, resolve_drill,
    resolve_keys, resolve_metrics, resolve_scope, resolve_signing, resolve_trust, ScopeFrom,
};
use crate::logging::new_run_id;
use crate::metrics::DrillOutcome;
use crate::signals::Cancel;
use crate::{drill, logging};
use anyhow::{anyhow, bail, Context, Result};
use chrono::Utc;

pub async fn execute(args: &DrillCommandArgs) -> Result<()> {
    let dest = resolve_destination(&args.destination, Some(&args.upload), &process_env)?;
    let database = resolve_database(&args.database, &process_env)?;
    let keys = resolve_keys(&args.keys, &process_env)?;
    let opts = resolve_drill(&args.drill, &database, keys, args.require_encryption)?;
    let metrics = resolve_metrics(&args.metrics)?;
    let textfile = crate::config::resolve_textfile(&args.metrics)?;
    let signer = resolve_signing(&args.signing)?;
    let trust = resolve_trust(&args.trust, Some(&args.allow), signer.as_deref())?;
    let scope = resolve_scope(
        &args.destination,
        ScopeFrom::Connection(&database.conn.dbname),
        &process_env,
    )?;
    let tolerance = resolve_clock_tolerance(&args.destination)?;
    let run_id = new_run_id(Utc::now());
    logging::set_run_id(&run_id);
    let cancel = Cancel::install().context("cannot install signal handlers")?;

    let (storage, _, catalog) = read_catalog(&dest, Some(scope), tolerance, &trust).await?;
    let untrusted = trust.enforced().then(|| catalog.untrusted().len());
    let entry = catalog.resolve(&args.key)?;
    let Kind::Backup { manifest, .. } = &entry.kind else {
        bail!(
            "{} has no valid manifest: only backups of this tool can be drilled",
            entry.key
        );
    };
    trust.admit(&entry.key, &entry.trust(&trust), "drill")?;
    let mut rec = drill::drill(storage.as_ref(), manifest, &opts, &run_id, &cancel).await;
    crate::drill::record(storage.as_ref(), &mut rec, signer.as_deref()).await;
    let outcome = DrillOutcome {
        success: rec.passed,
        finished_at: rec.finished_at,
        duration_seconds: rec.duration_seconds,
        content_verified: rec.content_verified,
        backup_finished_at: manifest.finished_at,
    };
    if let Some(m) = &metrics {
        let label = m.database_label.as_ref().unwrap_or(&manifest.database);
        crate::metrics::push(m, label, None, Some(&outcome), untrusted).await;
    }
    if let Some((path, label)) = &textfile {
        let label = label.as_ref().unwrap_or(&manifest.database);
        crate::textfile::write(path, label, None, Some(&outcome), untrusted);
    }
    if rec.passed {
        Ok(())
    } else {
        Err(anyhow!(
            "restore drill of {} failed: {}",
            entry.key,
            rec.failures.join("; ")
        ))
    }
}

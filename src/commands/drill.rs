//! `leaflock-backup drill [KEY|latest]`: a restore drill of a backup already stored
//! (the weekly drill of the latest nightly backup, say), without taking a new one.
//! Same drill as `run --restore-drill`; the record is written beside the manifest and
//! `leaflock_restore_drills_total` etc. are pushed. Exit 1 when the drill fails.
//! Notifications as for `run`: `--healthchecks-url` gets `/start`, then success or
//! `/fail` with the log's tail; `--notify-url` gets `drill_passed` or `drill_failed`
//! (and `failed` when no drill could start: no backup, an untrusted one).

use crate::catalog::Kind;
use crate::cli::DrillCommandArgs;
use crate::commands::read_catalog;
use crate::config::{
    process_env, resolve_clock_tolerance, resolve_database, resolve_destination, resolve_drill,
    resolve_keys, resolve_metrics, resolve_notify, resolve_scope, resolve_signing, resolve_trust,
    ScopeFrom,
};
use crate::logging::new_run_id;
use crate::metrics::DrillOutcome;
use crate::notify::{Notifier, Ping};
use crate::signals::Cancel;
use crate::{drill, logging};
use anyhow::{anyhow, bail, Context, Result};
use chrono::Utc;
use serde_json::json;

pub async fn execute(args: &DrillCommandArgs) -> Result<()> {
    let dest = resolve_destination(&args.destination, Some(&args.upload), &process_env)?;
    let database = resolve_database(&args.database, &process_env)?;
    let keys = resolve_keys(&args.keys, &process_env)?;
    let opts = resolve_drill(&args.drill, &database, keys, args.require_encryption)?;
    let metrics = resolve_metrics(&args.metrics)?;
    let textfile = crate::config::resolve_textfile(&args.metrics)?;
    let notifier = Notifier::new(&resolve_notify(&args.notify)?);
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
    notifier.ping(Ping::Start).await;
    let dbname = database.conn.dbname.clone();

    let outcome = async {
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
        Ok((entry.key.clone(), rec))
    }
    .await;
    match outcome {
        Ok((key, rec)) if rec.passed => {
            notifier
                .event(
                    "drill_passed",
                    &dbname,
                    json!({"key": key, "tables_checked": rec.tables_checked,
                           "rows_checked": rec.rows_checked,
                           "duration_seconds": rec.duration_seconds}),
                )
                .await;
            notifier.ping(Ping::Success).await;
            Ok(())
        }
        Ok((key, rec)) => {
            let e = anyhow!("restore drill of {key} failed: {}", rec.failures.join("; "));
            notifier
                .event(
                    "drill_failed",
                    &dbname,
                    json!({"key": key, "failures": rec.failures}),
                )
                .await;
            notifier
                .ping(Ping::Fail(format!("{}error: {e:#}\n", logging::tail())))
                .await;
            Err(e)
        }
        Err(e) => {
            notifier
                .event("failed", &dbname, json!({"error": format!("{e:#}")}))
                .await;
            notifier
                .ping(Ping::Fail(format!("{}error: {e:#}\n", logging::tail())))
                .await;
            Err(e)
        }
    }
}

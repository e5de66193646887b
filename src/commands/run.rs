//! `leaflock-backup run`: one run, start to finish.
//!
//! Validate configuration (exit 2 on any bad value) -> take the lock (exit 3 if held)
//! -> the backup stage (`backup.rs`) -> [the restore drill and its record] -> the
//! regression gate and retention (after a verified success only) -> push metrics,
//! whatever happened -> the summary line and the exit status.

use crate::backup::{self, Summary};
use crate::catalog;
use crate::cli::RunArgs;
use crate::clock::Clock;
use crate::config::{self, RunConfig};
use crate::drill;
use crate::error::{LockHeld, Stage};
use crate::gate;
use crate::lock;
use crate::logging::{self, Terminal};
use crate::metrics::{self, BackupOutcome, CatalogFigures, DrillOutcome};
use crate::notify::{Notifier, Ping};
use crate::progress::human_bytes;
use crate::retention;
use crate::signals::Cancel;
use crate::textfile;
use anyhow::{anyhow, Context, Result};
use chrono::Utc;
use serde_json::json;
use std::time::Instant;

pub async fn execute(args: &RunArgs, term: Terminal) -> Result<()> {
    let cfg = config::resolve_run(args, &config::process_env)?;
    let cancel = Cancel::install().context("cannot install signal handlers")?;
    run_once(&cfg, &cancel, term).await
}

/// One whole run with validated configuration: lock, backup, drill, retention, metrics.
pub async fn run_once(cfg: &RunConfig, cancel: &Cancel, term: Terminal) -> Result<()> {
    let started = Utc::now();
    let run_id = logging::new_run_id(started);
    logging::set_run_id(&run_id);
    let clock = Instant::now();
    tracing::info!(
        database = %cfg.database.conn.redacted(),
        database_from = cfg.database.source,
        compression = format!("{}:{}", cfg.compression.name(), cfg.compression.level()),
        compress_threads = cfg.compress_threads,
        schedule = cfg.schedule.as_ref().map(|s| s.expression.as_str()),
        restore_drill = cfg.drill.is_some(),
        encryption = cfg.encryption.as_ref().map(|e| e.info().scheme),
        "starting backup"
    );
    let notifier = Notifier::new(&cfg.notify);
    let dbname = cfg.database.conn.dbname.clone();
    notifier.ping(Ping::Start).await;
    notifier.event("started", &dbname, json!({})).await;

    // One run at a time: a second run exits 3 at once, before touching anything or
    // pushing metrics (the holder's run is the one that counts). The guard lives until
    // the end of the run, drill and push included.
    let (result, _lock) = match lock::acquire(
        &cfg.database.conn,
        cfg.database.connect_timeout,
        &cfg.scope,
        &run_id,
    )
    .await
    {
        Ok(guard) => (
            backup::backup(&cfg.backup_options(), &run_id, started, cancel, term).await,
            Some(guard),
        ),
        Err(e) if e.downcast_ref::<LockHeld>().is_some() => return Err(e),
        Err(e) => (Err(e.context(Stage::Database)), None),
    };
    let duration = clock.elapsed().as_secs_f64();
    let finished = Utc::now();
    if let Ok(summary) = &result {
        log_summary(summary, duration);
    }

    let drill = match (&result, &cfg.drill) {
        (Ok(summary), Some(opts)) => {
            let mut rec = drill::drill(
                summary.storage.as_ref(),
                &summary.manifest,
                opts,
                &run_id,
                cancel,
            )
            .await;
            drill::record(summary.storage.as_ref(), &mut rec, cfg.signer.as_deref()).await;
            Some(rec)
        }
        _ => None,
    };
    let drill_failed = drill.as_ref().is_some_and(|d| !d.passed);

    // The regression gate, then retention: only after a verified success, never on
    // account of a suspect backup.
    let (figures, suspect) = match &result {
        Ok(summary) => settle(cfg, summary, drill_failed, &notifier).await,
        Err(_) => (None, false),
    };

    if cfg.metrics.is_some() || cfg.textfile.is_some() {
        let backup = BackupOutcome {
            success: result.is_ok() && !drill_failed,
            finished_at: finished,
            duration_seconds: duration,
            stored_bytes: result.as_ref().ok().map(|s| s.stats.stored_bytes),
            uncompressed_bytes: result.as_ref().ok().map(|s| s.stats.uncompressed_bytes),
            next_run: cfg.schedule.as_ref().and_then(|s| s.next_after(finished)),
            catalog: figures,
        };
        let made = result.as_ref().ok().map(|s| s.manifest.finished_at);
        let drill = drill.as_ref().map(|d| DrillOutcome {
            success: d.passed,
            finished_at: d.finished_at,
            duration_seconds: d.duration_seconds,
            content_verified: d.content_verified,
            backup_finished_at: made.unwrap_or(d.started_at),
        });
        let untrusted = figures.and_then(|f| f.untrusted);
        let dbname = &cfg.database.conn.dbname;
        if let Some(mcfg) = &cfg.metrics {
            let label = mcfg.database_label.as_ref().unwrap_or(dbname);
            metrics::push(mcfg, label, Some(&backup), drill.as_ref(), untrusted).await;
        }
        if let Some((path, label)) = &cfg.textfile {
            let label = label.as_ref().unwrap_or(dbname);
            textfile::write(path, label, Some(&backup), drill.as_ref(), untrusted);
        }
    }

    let outcome = conclude(result, drill.as_ref(), suspect, clock);
    match &outcome {
        Ok(summary) => {
            notifier
                .event(
                    "succeeded",
                    &dbname,
                    json!({
                        "key": summary.manifest.object_key,
                        "stored_bytes": summary.stats.stored_bytes,
                        "uncompressed_bytes": summary.stats.uncompressed_bytes,
                        "duration_seconds": logging::seconds(clock),
                        "restore_drill": drill.is_some(),
                        "suspect": suspect,
                    }),
                )
                .await;
            notifier.ping(Ping::Success).await;
        }
        Err(e) => {
            if let Some(d) = drill.as_ref().filter(|d| !d.passed) {
                notifier
                    .event(
                        "drill_failed",
                        &dbname,
                        json!({"key": d.object_key, "failures": d.failures}),
                    )
                    .await;
            }
            notifier
                .event(
                    "failed",
                    &dbname,
                    json!({
                        "error": format!("{e:#}"),
                        "duration_seconds": logging::seconds(clock),
                    }),
                )
                .await;
            notifier
                .ping(Ping::Fail(format!("{}error: {e:#}\n", logging::tail())))
                .await;
        }
    }
    outcome.map(|_| ())
}

/// The run's outcome from the backup's and the drill's, with its last log line.
fn conclude(
    result: Result<Summary>,
    drill: Option<&crate::record::DrillRecord>,
    suspect: bool,
    clock: Instant,
) -> Result<Summary> {
    let summary = result?;
    if suspect {
        tracing::warn!(
            "the backup is stored and kept, but suspect: retention waits for an operator"
        );
    }
    match drill {
        Some(d) if !d.passed => Err(anyhow!(
            "drill: restore drill failed (the backup is kept; it does not count as verified): {}",
            d.failures.join("; ")
        )),
        _ => {
            tracing::info!(
                key = %summary.manifest.object_key,
                status = "success",
                restore_drill = drill.is_some(),
                duration_seconds = logging::seconds(clock),
                "run complete: {} stored{} in {:.1} s",
                summary.manifest.object_key,
                if drill.is_some() { " and drilled" } else { "" },
                clock.elapsed().as_secs_f64()
            );
            Ok(summary)
        }
    }
}

/// After a stored backup: read the destination's catalog for this database, hold the
/// new backup if it looks like a disaster (`gate.rs`), and apply retention unless the
/// drill failed or the backup is suspect. Nothing here changes the run's outcome; a
/// problem is logged. Returns the figures for the metrics and whether it is suspect.
async fn settle(
    cfg: &RunConfig,
    summary: &Summary,
    drill_failed: bool,
    notifier: &Notifier,
) -> (Option<CatalogFigures>, bool) {
    let storage = summary.storage.as_ref();
    let prefix = cfg.destination.prefix();
    let clock = Clock::read(storage, cfg.clock_tolerance).await;
    let view = clock.view(Some(cfg.scope.clone()), cfg.trust.clone());
    let catalog = match catalog::scan(storage, prefix, view).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(
                error = format!("{e:#}"),
                "cannot read the destination's catalog; no regression check, no retention this time"
            );
            return (None, false);
        }
    };
    let mut figures = CatalogFigures {
        suspect: catalog
            .backups()
            .filter(|e| e.unaccepted_suspect().is_some())
            .count(),
        future_dated: catalog.backups().filter(|e| e.anomaly.is_some()).count(),
        untrusted: cfg.trust.enforced().then(|| catalog.untrusted().len()),
    };
    let suspect = match &cfg.gate {
        None => None,
        Some(t) => match gate::check(storage, &catalog, &summary.manifest, t).await {
            Ok(s) => s,
            Err(e) => {
                // Unrecorded, a suspect would be forgotten by the next run: hold
                // retention now and say so.
                tracing::error!(
                    error = format!("{e:#}"),
                    "regression gate: cannot write the suspect record; no retention this time"
                );
                return (Some(figures), true);
            }
        },
    };
    if let Some(rec) = &suspect {
        figures.suspect += 1;
        notifier
            .event(
                "suspect",
                &summary.manifest.database,
                json!({
                    "key": rec.object_key,
                    "reference": rec.reference_key,
                    "findings": rec.findings,
                }),
            )
            .await;
        tracing::error!(
            key = %rec.object_key,
            reference = %rec.reference_key,
            findings = ?rec.findings,
            "suspect backup {}: {} (compared with {}); it is kept, retention deletes nothing until an operator \
             accepts it with `leaflock-backup prune --accept-suspect {}`",
            rec.object_key,
            rec.findings.join("; "),
            rec.reference_key,
            rec.object_key
        );
    }
    if let (Some(policy), false, None) = (&cfg.retention, drill_failed, &suspect) {
        let started = Instant::now();
        match retention::apply(
            storage,
            &catalog,
            &clock,
            policy,
            Some(&summary.manifest.object_key),
            false,
        )
        .await
        {
            Ok(a) => {
                tracing::info!(
                    kept = a.kept,
                    deleted = a.deleted,
                    duration_seconds = logging::seconds(started),
                    "retention applied: {} kept, {} deleted",
                    a.kept,
                    a.deleted
                );
                if a.deleted > 0 {
                    notifier
                        .event(
                            "retention_deleted",
                            &summary.manifest.database,
                            json!({"deleted": a.deleted, "kept": a.kept}),
                        )
                        .await;
                }
            }
            Err(e) => tracing::error!(
                error = format!("{e:#}"),
                duration_seconds = logging::seconds(started),
                "retention failed (the new backup is stored; old ones may remain): {e:#}"
            ),
        }
    }
    (Some(figures), suspect.is_some())
}

fn log_summary(summary: &Summary, duration: f64) {
    let s = &summary.stats;
    let ratio = s.stored_bytes as f64 / s.uncompressed_bytes.max(1) as f64;
    let throughput = s.uncompressed_bytes as f64 / duration.max(0.001);
    tracing::info!(
        key = %summary.manifest.object_key,
        manifest_key = %summary.manifest_key,
        destination = %summary.storage.describe(),
        database = %summary.manifest.database,
        uncompressed_bytes = s.uncompressed_bytes,
        stored_bytes = s.stored_bytes,
        bytes = s.stored_bytes,
        ratio = (ratio * 1000.0).round() / 1000.0,
        duration_seconds = (duration * 1000.0).round() / 1000.0,
        throughput_bytes_per_second = throughput.round() as u64,
        sha256 = %s.sha256,
        "backup complete: {} ({} -> {}, ratio {:.3}) in {:.1} s, {}/s",
        summary.manifest.object_key,
        human_bytes(s.uncompressed_bytes),
        human_bytes(s.stored_bytes),
        ratio,
        duration,
        human_bytes(throughput as u64),
    );
}

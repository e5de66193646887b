//! `leaflock-backup run`: one backup, start to finish.
//!
//! Order of work: validate configuration (exit 2 on any bad value) -> check the
//! destination -> connect, read the server version, choose pg_dump (exit 2 if none
//! fits) -> pin a snapshot and count rows -> stream pg_dump through compression into
//! the destination -> check pg_dump's exit status -> complete the object -> write the
//! manifest (the commit marker) -> push metrics, whatever happened.
//!
//! On any failure or signal before the object is complete: pg_dump is stopped, the
//! upload is aborted, no manifest is written, `status="failure"` is pushed, exit 1.
//! Once the object is complete, committing (manifest) runs to the end even if a signal
//! arrives, so a signal never leaves an object without its manifest.

use crate::catalog;
use crate::cli::RunArgs;
use crate::clock::Clock;
use crate::config::{self, RunConfig};
use crate::database;
use crate::debris;
use crate::drill;
use crate::dump;
use crate::error::LockHeld;
use crate::gate;
use crate::lock;
use crate::logging::{self, Terminal};
use crate::manifest::{self, CompressionInfo, Manifest};
use crate::metrics::{BackupOutcome, CatalogFigures, DrillOutcome, Pushgateway};
use crate::pgtool;
use crate::pipeline::{self, StreamStats};
use crate::progress::{human_bytes, Counters, Reporter};
use crate::record::DrillRecord;
use crate::retention;
use crate::signals::Cancel;
use crate::storage::{self, ObjectWriter, Storage};
use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

/// What a successful backup produced.
pub struct Summary {
    pub manifest: Manifest,
    pub manifest_key: String,
    pub storage: Box<dyn Storage>,
    pub stats: StreamStats,
}

pub fn new_run_id(at: DateTime<Utc>) -> String {
    format!(
        "{}-{:06x}",
        at.format("%Y%m%dT%H%M%SZ"),
        rand::random::<u32>() & 0xff_ffff
    )
}

pub async fn execute(args: &RunArgs, term: Terminal) -> Result<()> {
    let cfg = config::resolve_run(args, &config::process_env)?;
    let cancel = Cancel::install().context("cannot install signal handlers")?;
    run_once(&cfg, &cancel, term).await
}

/// One whole run with validated configuration: lock, backup, drill, retention, metrics.
pub async fn run_once(cfg: &RunConfig, cancel: &Cancel, term: Terminal) -> Result<()> {
    let started = Utc::now();
    let run_id = new_run_id(started);
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
            backup(cfg, &run_id, started, cancel, term).await,
            Some(guard),
        ),
        Err(e) if e.downcast_ref::<LockHeld>().is_some() => return Err(e),
        Err(e) => (Err(e.context("database")), None),
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
            record_drill(summary.storage.as_ref(), &mut rec, cfg.signer.as_deref()).await;
            Some(rec)
        }
        _ => None,
    };
    let drill_failed = drill.as_ref().is_some_and(|d| !d.passed);

    // The regression gate, then retention: only after a verified success, never on
    // account of a suspect backup.
    let (figures, suspect) = match &result {
        Ok(summary) => settle(cfg, summary, drill_failed).await,
        Err(_) => (None, false),
    };

    if let Some(mcfg) = &cfg.metrics {
        let label = mcfg
            .database_label
            .clone()
            .unwrap_or_else(|| cfg.database.conn.dbname.clone());
        let backup = BackupOutcome {
            success: result.is_ok() && !drill_failed,
            finished_at: finished,
            duration_seconds: duration,
            stored_bytes: result.as_ref().ok().map(|s| s.stats.stored_bytes),
            uncompressed_bytes: result.as_ref().ok().map(|s| s.stats.uncompressed_bytes),
            next_run: cfg.schedule.as_ref().and_then(|s| s.next_after(finished)),
            catalog: figures,
        };
        let drill = drill.as_ref().map(|d| DrillOutcome {
            success: d.passed,
            finished_at: d.finished_at,
            duration_seconds: d.duration_seconds,
        });
        let untrusted = figures.and_then(|f| f.untrusted);
        push_metrics(mcfg, &label, Some(&backup), drill.as_ref(), untrusted).await;
    }

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
                duration_seconds = seconds(clock),
                "run complete: {} stored{} in {:.1} s",
                summary.manifest.object_key,
                if drill.is_some() { " and drilled" } else { "" },
                clock.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
}

/// Seconds since `clock`, to the millisecond, as end-of-work lines log them.
pub fn seconds(clock: Instant) -> f64 {
    (clock.elapsed().as_secs_f64() * 1000.0).round() / 1000.0
}

/// After a stored backup: read the destination's catalog for this database, hold the
/// new backup if it looks like a disaster (`gate.rs`), and apply retention unless the
/// drill failed or the backup is suspect. Nothing here changes the run's outcome; a
/// problem is logged. Returns the figures for the metrics and whether it is suspect.
async fn settle(
    cfg: &RunConfig,
    summary: &Summary,
    drill_failed: bool,
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
            Ok(a) => tracing::info!(
                kept = a.kept,
                deleted = a.deleted,
                duration_seconds = seconds(started),
                "retention applied: {} kept, {} deleted",
                a.kept,
                a.deleted
            ),
            Err(e) => tracing::error!(
                error = format!("{e:#}"),
                duration_seconds = seconds(started),
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

/// Write the drill record beside the manifest and log the outcome. A drill whose
/// record cannot be written is not on record as verified (`list` and retention cannot
/// see it), so it counts as failed: the run says so instead of claiming a verified
/// backup that nothing shows.
pub async fn record_drill(
    storage: &dyn Storage,
    rec: &mut DrillRecord,
    signer: Option<&crate::signing::Signer25519>,
) {
    let key = manifest::drill_key(&rec.object_key);
    let mut json = serde_json::to_vec_pretty(&*rec).expect("drill record serialises");
    if let Some(signer) = signer {
        json = signer
            .seal(&json, crate::signing::DocKind::DrillRecord)
            .expect("a drill record is a JSON object");
    }
    if let Err(e) = storage.put_small(&key, Bytes::from(json), true).await {
        let why = format!("could not write the drill record {key}: {e:#}");
        tracing::error!(key, error = format!("{e:#}"), "{why}");
        rec.passed = false;
        rec.failures.push(why);
    }
    if rec.passed {
        tracing::info!(
            key = %rec.object_key,
            drill_record = %key,
            duration_seconds = (rec.duration_seconds * 1000.0).round() / 1000.0,
            tables = rec.tables_checked,
            rows = rec.rows_checked,
            checks = rec.checks_run,
            "restore drill passed: {} tables, {} rows, {} checks match the manifest",
            rec.tables_checked,
            rec.rows_checked,
            rec.checks_run
        );
    } else {
        tracing::error!(
            key = %rec.object_key,
            drill_record = %key,
            duration_seconds = (rec.duration_seconds * 1000.0).round() / 1000.0,
            failures = ?rec.failures,
            "restore drill failed: {}",
            rec.failures.join("; ")
        );
    }
}

/// Push this run's outcome; a Pushgateway problem is a warning, never a failure.
pub async fn push_metrics(
    mcfg: &crate::metrics::MetricsConfig,
    label: &str,
    backup: Option<&BackupOutcome>,
    drill: Option<&DrillOutcome>,
    untrusted: Option<usize>,
) {
    let clock = Instant::now();
    let result = match Pushgateway::new(mcfg) {
        Ok(pg) => pg.push(label, backup, drill, untrusted).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(report) => tracing::info!(
            pushgateway = %mcfg.shown(),
            duration_seconds = seconds(clock),
            backup_status = backup.map(|b| if b.success { "success" } else { "failure" }),
            drill_status = drill.map(|d| if d.success { "success" } else { "failure" }),
            success_total = report.state.success_total,
            failure_total = report.state.failure_total,
            cumulative = report.cumulative,
            "metrics pushed"
        ),
        Err(e) => tracing::warn!(
            pushgateway = %mcfg.shown(),
            error = format!("{e:#}"),
            duration_seconds = seconds(clock),
            "could not push metrics to the Pushgateway at {}; the outcome is unaffected",
            mcfg.shown()
        ),
    }
}

/// Run `fut` unless a signal arrives first.
async fn cancellable<T>(cancel: &Cancel, fut: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::select! {
        biased;
        sig = cancel.cancelled() => Err(anyhow!("stopped by {sig}")),
        r = fut => r,
    }
}

async fn backup(
    cfg: &RunConfig,
    run_id: &str,
    started: DateTime<Utc>,
    cancel: &Cancel,
    term: Terminal,
) -> Result<Summary> {
    let conn = &cfg.database.conn;
    let storage = cancellable(cancel, async {
        let s = storage::open(&cfg.destination).await?;
        s.preflight().await?;
        Ok(s)
    })
    .await
    .context("destination")?;
    tracing::info!(destination = %storage.describe(), "destination ready");

    // Debris of earlier runs that were killed (open uploads, objects without a
    // manifest) goes first; a problem here never stops the backup.
    match cancellable(
        cancel,
        debris::sweep(
            storage.as_ref(),
            cfg.destination.prefix(),
            &cfg.scope,
            cfg.orphan_grace,
            false,
        ),
    )
    .await
    {
        Ok(s) if s != debris::Swept::default() => tracing::info!(
            aborted_uploads = s.uploads,
            removed_objects = s.objects,
            younger_than_grace = s.young,
            failed = s.failed,
            "debris of interrupted runs: {} unfinished upload(s) aborted, {} object(s) without manifest removed",
            s.uploads,
            s.objects
        ),
        Ok(_) => {}
        Err(e) if cancel.signal().is_some() => return Err(e),
        Err(e) => tracing::warn!(
            error = format!("{e:#}"),
            "could not look for debris of interrupted runs; going on with the backup"
        ),
    }

    let client = cancellable(
        cancel,
        database::connect(conn, cfg.database.connect_timeout),
    )
    .await
    .context("database")?;
    let version = cancellable(cancel, database::server_version(&client))
        .await
        .context("database")?;
    let tool = pgtool::select("pg_dump", cfg.database.pg_dump.as_deref(), version.major())
        .with_context(|| format!("the server is PostgreSQL {}", version.major()))?;
    tracing::info!(
        server_version = %version.text,
        pg_dump = %tool.path.display(),
        pg_dump_version = %tool.version,
        "connected; dumping with {}",
        tool.path.display()
    );

    let snap = cancellable(cancel, database::pin_snapshot(&client))
        .await
        .context("database")?;
    let total_rows: i64 = snap.tables.iter().map(|t| t.rows).sum();
    tracing::info!(
        snapshot = %snap.id,
        tables = snap.tables.len(),
        rows = total_rows,
        "snapshot pinned and rows counted"
    );

    let extension = match &cfg.encryption {
        Some(_) => format!("{}.age", cfg.compression.extension()),
        None => cfg.compression.extension().to_string(),
    };
    let run_tail = run_id.rsplit('-').next().unwrap_or(run_id);
    let object_key = manifest::object_key(
        cfg.destination.prefix(),
        &cfg.scope,
        started,
        run_tail,
        &extension,
    );
    let manifest_key = manifest::manifest_key(&object_key);
    if cancellable(cancel, storage.exists(&manifest_key))
        .await
        .context("destination")?
    {
        anyhow::bail!("a backup already exists at {manifest_key}; not overwriting it");
    }

    let counters = Arc::new(Counters::default());
    let upload_clock = Instant::now();
    let (dump, stdout) = dump::spawn(&tool, conn, &snap.id).context("dump")?;
    tracing::debug!(pid = dump.pid(), "pg_dump started");
    let writer = match cancellable(cancel, storage.create(&object_key)).await {
        Ok(w) => w,
        Err(e) => {
            dump.stop().await;
            return Err(e.context("upload"));
        }
    };
    let mut writer: Box<dyn ObjectWriter> = Box::new(Staged(writer));

    let reporter = Reporter::start(counters.clone(), term.progress);
    let streamed = cancellable(
        cancel,
        pipeline::stream(
            stdout,
            cfg.compression,
            cfg.compress_threads,
            cfg.encryption.as_ref(),
            writer.as_mut(),
            counters.clone(),
        ),
    )
    .await;
    drop(reporter);

    // pg_dump's verdict decides whether the stream is a backup, so it is checked
    // before the object is completed. A stream that broke on the destination's side
    // says "upload:"; anything else on the way is the dump's.
    let streamed = match streamed {
        Ok(stats) => match cancellable(cancel, dump.wait()).await {
            Ok(()) => Ok(stats),
            Err(e) if cancel.signal().is_some() => Err(e),
            Err(e) => Err(e.context("dump")),
        },
        Err(e) if cancel.signal().is_some() || is_upload_error(&e) => {
            dump.stop().await;
            Err(e)
        }
        Err(e) => {
            // The stream broke on pg_dump's side (no output, not an archive, a read
            // error): pg_dump's own exit status and stderr say why, when it has one.
            match tokio::time::timeout(std::time::Duration::from_secs(5), dump.wait()).await {
                Ok(Err(d)) => Err(d.context("dump")),
                _ => Err(e.context("dump")),
            }
        }
    };
    let stats = match streamed {
        Ok(s) => s,
        Err(e) => {
            abort(writer, &object_key).await;
            return Err(e);
        }
    };

    tracing::debug!(
        runner_cpu_seconds = cpu_seconds(libc::RUSAGE_SELF),
        pg_dump_cpu_seconds = cpu_seconds(libc::RUSAGE_CHILDREN),
        uncompressed_bytes = stats.uncompressed_bytes,
        stored_bytes = stats.stored_bytes,
        "CPU time so far (the runner's threads; pg_dump and the version probes)"
    );

    // Commit: complete the object, then write the manifest.
    let stored = writer.finish().await?;
    if stored != stats.stored_bytes {
        remove_orphan(storage.as_ref(), &object_key).await;
        anyhow::bail!(
            "the destination stored {stored} bytes but {} were written",
            stats.stored_bytes
        );
    }
    tracing::info!(
        key = %object_key,
        destination = %storage.describe(),
        stored_bytes = stored,
        duration_seconds = seconds(upload_clock),
        "upload complete: {object_key} ({}) in {:.1} s; writing the manifest",
        human_bytes(stored),
        upload_clock.elapsed().as_secs_f64()
    );
    drop(client); // ends the snapshot transaction; pg_dump has exited.
    let finished = Utc::now();
    let manifest = Manifest {
        format_version: manifest::FORMAT_VERSION,
        tool: "leaflock-backup".into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        run_id: run_id.into(),
        object_key: object_key.clone(),
        database: conn.dbname.clone(),
        instance: cfg.scope.instance.clone(),
        server_version: version.text.clone(),
        server_version_num: version.num,
        pg_dump_version: tool.version.clone(),
        started_at: started,
        finished_at: finished,
        duration_seconds: (finished - started).num_milliseconds() as f64 / 1000.0,
        compression: CompressionInfo {
            algorithm: cfg.compression.name().into(),
            level: cfg.compression.level(),
        },
        encryption: cfg.encryption.as_ref().map(|e| e.info()),
        uncompressed_bytes: stats.uncompressed_bytes,
        stored_bytes: stats.stored_bytes,
        sha256: stats.sha256.clone(),
        snapshot: snap.id,
        tables: snap.tables,
        extensions: snap.extensions,
        indexes: snap.indexes,
    };
    // Signed when a signing key is configured: the signature covers the whole
    // manifest, the object's sha256 included.
    let manifest_json = match cfg.signer.as_deref() {
        None => manifest.to_json(),
        Some(signer) => match signer.seal(&manifest.to_json(), crate::signing::DocKind::Manifest) {
            Ok(j) => j,
            Err(e) => {
                remove_orphan(storage.as_ref(), &object_key).await;
                return Err(e.context("commit"));
            }
        },
    };
    if let Err(e) = storage
        .put_small(&manifest_key, Bytes::from(manifest_json), false)
        .await
    {
        remove_orphan(storage.as_ref(), &object_key).await;
        return Err(e
            .context("the manifest could not be written, so this is not a backup")
            .context("commit"));
    }
    if let Some(sig) = cancel.signal() {
        tracing::warn!(
            signal = sig,
            "{sig} arrived while the backup was being committed; the backup is complete"
        );
    }
    Ok(Summary {
        manifest,
        manifest_key,
        storage,
        stats,
    })
}

/// User + system CPU seconds of this process or of its waited-for children.
fn cpu_seconds(who: libc::c_int) -> f64 {
    // SAFETY: getrusage fills the struct we own; all-zero is a valid rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    ((tv(ru.ru_utime) + tv(ru.ru_stime)) * 1000.0).round() / 1000.0
}

/// The destination's writer, its errors labelled with the stage (`upload: ...`).
struct Staged(Box<dyn ObjectWriter>);

const UPLOAD: &str = "upload";

fn is_upload_error(e: &anyhow::Error) -> bool {
    e.chain().next().is_some_and(|c| c.to_string() == UPLOAD)
}

#[async_trait::async_trait]
impl ObjectWriter for Staged {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.0.write(data).await.context(UPLOAD)
    }
    async fn finish(self: Box<Self>) -> Result<u64> {
        self.0.finish().await.context(UPLOAD)
    }
    async fn abort(self: Box<Self>) -> Result<()> {
        self.0.abort().await
    }
}

async fn abort(writer: Box<dyn ObjectWriter>, key: &str) {
    match writer.abort().await {
        Ok(()) => tracing::info!(key, "partial upload discarded; nothing was kept"),
        Err(e) => tracing::error!(
            key,
            error = format!("{e:#}"),
            "could not discard the partial upload"
        ),
    }
}

async fn remove_orphan(storage: &dyn Storage, key: &str) {
    if let Err(e) = storage.delete(key).await {
        tracing::error!(
            key,
            error = format!("{e:#}"),
            "could not remove the object left without a manifest"
        );
    }
}

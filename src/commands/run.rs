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

use crate::cli::RunArgs;
use crate::config::{self, RunConfig};
use crate::database;
use crate::dump::{self, DumpProcess};
use crate::logging::{self, Terminal};
use crate::manifest::{self, CompressionInfo, Manifest};
use crate::metrics::{BackupOutcome, Pushgateway};
use crate::pipeline::{self, StreamStats};
use crate::progress::{human_bytes, Counters, Reporter};
use crate::signals::Cancel;
use crate::storage::{self, ObjectWriter, Storage};
use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

/// What a successful run produced.
#[derive(Debug)]
pub struct Summary {
    pub object_key: String,
    pub manifest_key: String,
    pub destination: String,
    pub stats: StreamStats,
    pub database: String,
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
    let started = Utc::now();
    let run_id = new_run_id(started);
    logging::set_run_id(&run_id);
    let cancel = Cancel::install().context("cannot install signal handlers")?;
    let clock = Instant::now();
    tracing::info!(
        database = %cfg.database.conn.redacted(),
        database_from = cfg.database.source,
        compression = format!("{}:{}", cfg.compression.name(), cfg.compression.level()),
        compress_threads = cfg.compress_threads,
        schedule = cfg.schedule.as_ref().map(|s| s.expression.as_str()),
        "starting backup"
    );

    let result = backup(&cfg, &run_id, started, &cancel, term).await;
    let duration = clock.elapsed().as_secs_f64();
    let finished = Utc::now();

    if let Some(mcfg) = &cfg.metrics {
        let label = mcfg
            .database_label
            .clone()
            .unwrap_or_else(|| cfg.database.conn.dbname.clone());
        let outcome = BackupOutcome {
            success: result.is_ok(),
            finished_at: finished,
            duration_seconds: duration,
            stored_bytes: result.as_ref().ok().map(|s| s.stats.stored_bytes),
            uncompressed_bytes: result.as_ref().ok().map(|s| s.stats.uncompressed_bytes),
            next_run: cfg.schedule.as_ref().and_then(|s| s.next_after(finished)),
        };
        push_metrics(mcfg, &label, &outcome).await;
    }

    let summary = result?;
    let s = &summary.stats;
    let ratio = s.stored_bytes as f64 / s.uncompressed_bytes.max(1) as f64;
    let throughput = s.uncompressed_bytes as f64 / duration.max(0.001);
    tracing::info!(
        key = %summary.object_key,
        manifest_key = %summary.manifest_key,
        destination = %summary.destination,
        database = %summary.database,
        uncompressed_bytes = s.uncompressed_bytes,
        stored_bytes = s.stored_bytes,
        bytes = s.stored_bytes,
        ratio = (ratio * 1000.0).round() / 1000.0,
        duration_seconds = (duration * 1000.0).round() / 1000.0,
        throughput_bytes_per_second = throughput.round() as u64,
        sha256 = %s.sha256,
        "backup complete: {} ({} -> {}, ratio {:.3}) in {:.1} s, {}/s",
        summary.object_key,
        human_bytes(s.uncompressed_bytes),
        human_bytes(s.stored_bytes),
        ratio,
        duration,
        human_bytes(throughput as u64),
    );
    Ok(())
}

async fn push_metrics(mcfg: &config::MetricsConfig, label: &str, outcome: &BackupOutcome) {
    let result = match Pushgateway::new(mcfg) {
        Ok(pg) => pg.push_backup(label, outcome).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(report) => tracing::info!(
            pushgateway = %mcfg.url,
            status = if outcome.success { "success" } else { "failure" },
            success_total = report.state.success_total,
            failure_total = report.state.failure_total,
            cumulative = report.cumulative,
            "metrics pushed"
        ),
        Err(e) => tracing::warn!(
            pushgateway = %mcfg.url,
            error = format!("{e:#}"),
            "could not push metrics to the Pushgateway at {}; the backup's outcome is unaffected",
            mcfg.url
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
    .await?;
    tracing::info!(destination = %storage.describe(), "destination ready");

    let client = cancellable(
        cancel,
        database::connect(conn, cfg.database.connect_timeout),
    )
    .await?;
    let version = cancellable(cancel, database::server_version(&client)).await?;
    let tool = dump::select("pg_dump", cfg.database.pg_dump.as_deref(), version.major())?;
    tracing::info!(
        server_version = %version.text,
        pg_dump = %tool.path.display(),
        pg_dump_version = %tool.version,
        "connected; dumping with {}",
        tool.path.display()
    );

    let (snapshot, tables) = cancellable(cancel, database::pin_snapshot(&client)).await?;
    let total_rows: i64 = tables.iter().map(|t| t.rows).sum();
    tracing::info!(
        snapshot = %snapshot,
        tables = tables.len(),
        rows = total_rows,
        "snapshot pinned and rows counted"
    );

    let object_key = manifest::object_key(
        cfg.destination.prefix(),
        started,
        cfg.compression.extension(),
    );
    let manifest_key = manifest::manifest_key(&object_key);
    if cancellable(cancel, storage.exists(&manifest_key)).await? {
        anyhow::bail!("a backup already exists at {manifest_key}; not overwriting it");
    }

    let counters = Arc::new(Counters::default());
    let (dump, stdout) = DumpProcess::spawn(&tool, conn, &snapshot)?;
    tracing::debug!(pid = dump.pid(), "pg_dump started");
    let mut writer = match cancellable(cancel, storage.create(&object_key)).await {
        Ok(w) => w,
        Err(e) => {
            dump.stop().await;
            return Err(e);
        }
    };

    let reporter = Reporter::start(counters.clone(), term.progress);
    let streamed = cancellable(
        cancel,
        pipeline::stream_with_threads(
            stdout,
            cfg.compression,
            cfg.compress_threads,
            writer.as_mut(),
            counters.clone(),
        ),
    )
    .await;
    drop(reporter);

    // pg_dump's verdict decides whether the stream is a backup, so it is checked
    // before the object is completed.
    let streamed = match streamed {
        Ok(stats) => match cancellable(cancel, dump.wait()).await {
            Ok(()) => Ok(stats),
            Err(e) => Err(e),
        },
        Err(e) => {
            dump.stop().await;
            Err(e)
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
        let _ = storage.delete(&object_key).await;
        anyhow::bail!(
            "the destination stored {stored} bytes but {} were written",
            stats.stored_bytes
        );
    }
    drop(client); // ends the snapshot transaction; pg_dump has exited.
    let finished = Utc::now();
    let manifest = Manifest {
        format_version: manifest::FORMAT_VERSION,
        tool: "leaflock-backup".into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        run_id: run_id.into(),
        object_key: object_key.clone(),
        database: conn.dbname.clone(),
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
        encryption: None,
        uncompressed_bytes: stats.uncompressed_bytes,
        stored_bytes: stats.stored_bytes,
        sha256: stats.sha256.clone(),
        snapshot,
        tables,
    };
    if let Err(e) = storage
        .put_small(&manifest_key, Bytes::from(manifest.to_json()))
        .await
    {
        remove_orphan(storage.as_ref(), &object_key).await;
        return Err(e.context("the manifest could not be written, so this is not a backup"));
    }
    if let Some(sig) = cancel.signal() {
        tracing::warn!(
            signal = sig,
            "{sig} arrived while the backup was being committed; the backup is complete"
        );
    }
    Ok(Summary {
        object_key,
        manifest_key,
        destination: storage.describe(),
        stats,
        database: conn.dbname.clone(),
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

//! The backup stage: one database dumped, compressed, (encrypted,) stored and
//! committed, start to finish.
//!
//! Order of work: check the destination -> sweep debris of interrupted runs -> connect,
//! read the server version, choose pg_dump (exit 2 if none fits) -> pin a snapshot and
//! count rows -> stream pg_dump through compression into the destination -> check
//! pg_dump's exit status -> complete the object -> write the manifest (the commit
//! marker).
//!
//! On any failure or signal before the object is complete: pg_dump is stopped, the
//! upload is aborted, no manifest is written. Once the object is complete, committing
//! (manifest) runs to the end even if a signal arrives, so a signal never leaves an
//! object without its manifest. Every error carries the [`Stage`] it happened in.
//! What happens around a backup (the lock, the drill, the gate, retention, metrics)
//! is `commands/run.rs`'s.

use crate::compress::Compression;
use crate::conninfo::ConnInfo;
use crate::crypto::Encryption;
use crate::database;
use crate::debris;
use crate::dump;
use crate::error::Stage;
use crate::logging::{self, Terminal};
use crate::manifest::{self, CompressionInfo, Manifest};
use crate::pgtool;
use crate::pipeline::{self, StreamStats};
use crate::progress::{human_bytes, Counters, Reporter};
use crate::scope::Scope;
use crate::signals::Cancel;
use crate::signing::Signer25519;
use crate::storage::{self, DestinationConfig, ObjectWriter, Storage};
use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one backup needs (resolved and checked by `config`).
pub struct Options<'a> {
    pub conn: &'a ConnInfo,
    pub connect_timeout: Duration,
    /// `--pg-dump`: this binary instead of the one chosen by the server's version.
    pub pg_dump: Option<&'a Path>,
    pub destination: &'a DestinationConfig,
    pub compression: Compression,
    /// Threads compressing: at least 1.
    pub compress_threads: usize,
    pub encryption: Option<&'a Encryption>,
    /// Debris of interrupted runs older than this is removed first.
    pub orphan_grace: Duration,
    /// Whose backup this is: the dumped database (and the instance label).
    pub scope: &'a Scope,
    /// Signs the manifest.
    pub signer: Option<&'a Signer25519>,
}

/// What a successful backup produced.
pub struct Summary {
    pub manifest: Manifest,
    pub manifest_key: String,
    pub storage: Box<dyn Storage>,
    pub stats: StreamStats,
}

/// Run `fut` unless a signal arrives first.
async fn cancellable<T>(cancel: &Cancel, fut: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::select! {
        biased;
        sig = cancel.cancelled() => Err(anyhow!("stopped by {sig}")),
        r = fut => r,
    }
}

pub async fn backup(
    opts: &Options<'_>,
    run_id: &str,
    started: DateTime<Utc>,
    cancel: &Cancel,
    term: Terminal,
) -> Result<Summary> {
    let conn = opts.conn;
    let storage = cancellable(cancel, async {
        let s = storage::open(opts.destination).await?;
        s.preflight().await?;
        Ok(s)
    })
    .await
    .context(Stage::Destination)?;
    tracing::info!(destination = %storage.describe(), "destination ready");

    // Debris of earlier runs that were killed (open uploads, objects without a
    // manifest) goes first; a problem here never stops the backup.
    match cancellable(
        cancel,
        debris::sweep(
            storage.as_ref(),
            opts.destination.prefix(),
            opts.scope,
            opts.orphan_grace,
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

    let client = cancellable(cancel, database::connect(conn, opts.connect_timeout))
        .await
        .context(Stage::Database)?;
    let version = cancellable(cancel, database::server_version(&client))
        .await
        .context(Stage::Database)?;
    let tool = pgtool::select("pg_dump", opts.pg_dump, version.major())
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
        .context(Stage::Database)?;
    let total_rows: i64 = snap.tables.iter().map(|t| t.rows).sum();
    tracing::info!(
        snapshot = %snap.id,
        tables = snap.tables.len(),
        rows = total_rows,
        "snapshot pinned and rows counted"
    );

    let extension = match opts.encryption {
        Some(_) => format!("{}.age", opts.compression.extension()),
        None => opts.compression.extension().to_string(),
    };
    let run_tail = run_id.rsplit('-').next().unwrap_or(run_id);
    let object_key = manifest::object_key(
        opts.destination.prefix(),
        opts.scope,
        started,
        run_tail,
        &extension,
    );
    let manifest_key = manifest::manifest_key(&object_key);
    if cancellable(cancel, storage.exists(&manifest_key))
        .await
        .context(Stage::Destination)?
    {
        anyhow::bail!("a backup already exists at {manifest_key}; not overwriting it");
    }

    let counters = Arc::new(Counters::default());
    let upload_clock = Instant::now();
    let (dump, stdout) = dump::spawn(&tool, conn, &snap.id).context(Stage::Dump)?;
    tracing::debug!(pid = dump.pid(), "pg_dump started");
    let writer = match cancellable(cancel, storage.create(&object_key)).await {
        Ok(w) => w,
        Err(e) => {
            dump.stop().await;
            return Err(e.context(Stage::Upload));
        }
    };
    let mut writer: Box<dyn ObjectWriter> = Box::new(Staged(writer));

    let reporter = Reporter::start(counters.clone(), term.progress);
    let streamed = cancellable(
        cancel,
        pipeline::stream(
            stdout,
            opts.compression,
            opts.compress_threads,
            opts.encryption,
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
            Err(e) => Err(e.context(Stage::Dump)),
        },
        Err(e) if cancel.signal().is_some() || is_upload_error(&e) => {
            dump.stop().await;
            Err(e)
        }
        Err(e) => {
            // The stream broke on pg_dump's side (no output, not an archive, a read
            // error): pg_dump's own exit status and stderr say why, when it has one.
            match tokio::time::timeout(std::time::Duration::from_secs(5), dump.wait()).await {
                Ok(Err(d)) => Err(d.context(Stage::Dump)),
                _ => Err(e.context(Stage::Dump)),
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
        duration_seconds = logging::seconds(upload_clock),
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
        instance: opts.scope.instance.clone(),
        server_version: version.text.clone(),
        server_version_num: version.num,
        pg_dump_version: tool.version.clone(),
        started_at: started,
        finished_at: finished,
        duration_seconds: (finished - started).num_milliseconds() as f64 / 1000.0,
        compression: CompressionInfo {
            algorithm: opts.compression.name().into(),
            level: opts.compression.level(),
        },
        encryption: opts.encryption.map(|e| e.info()),
        uncompressed_bytes: stats.uncompressed_bytes,
        stored_bytes: stats.stored_bytes,
        sha256: stats.sha256.clone(),
        snapshot: snap.id,
        tables: snap.tables,
        extensions: snap.extensions,
        indexes: snap.indexes,
        content: stats.archive.clone().map(manifest::Content::from_archive),
    };
    // Signed when a signing key is configured: the signature covers the whole
    // manifest, the object's sha256 included.
    let manifest_json = match opts.signer {
        None => manifest.to_json(),
        Some(signer) => match signer.seal(&manifest.to_json(), crate::signing::DocKind::Manifest) {
            Ok(j) => j,
            Err(e) => {
                remove_orphan(storage.as_ref(), &object_key).await;
                return Err(e.context(Stage::Commit));
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
            .context(Stage::Commit));
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

/// The destination's writer, its errors marked with [`Stage::Upload`] (shown as
/// `upload: ...`), so a broken stream is told apart from pg_dump's by type.
struct Staged(Box<dyn ObjectWriter>);

fn is_upload_error(e: &anyhow::Error) -> bool {
    Stage::of(e) == Some(Stage::Upload)
}

#[async_trait::async_trait]
impl ObjectWriter for Staged {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.0.write(data).await.context(Stage::Upload)
    }
    async fn finish(self: Box<Self>) -> Result<u64> {
        self.0.finish().await.context(Stage::Upload)
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

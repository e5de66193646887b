//! The byte path of a backup: pg_dump's stdout -> compression -> sha256 and byte
//! counts -> the destination's writer.
//!
//! Three stages joined by bounded channels: an async reader that cuts the stream into
//! 1 MiB chunks (and checks that it starts like a custom-format archive), a blocking
//! thread that drives the compressor (which fans chunks out to its worker threads and
//! hands back compressed bytes in stream order) and hashes what it gets back, and the
//! async writer loop. Chunks travel as `Bytes` (the reader's buffer is the
//! compressor's input; a worker's output buffer is what the writer receives). Every
//! channel is bounded, the compressor keeps at most `2 x threads` chunks in flight, and
//! the writer waits on the destination, so a slow destination slows pg_dump down
//! (through its pipe) instead of growing memory.
//!
//! Beside the compressor, a fourth stage reads the same chunks as pg_dump's custom
//! archive (`archive.rs`, on its own thread, fed the reader's `Bytes` without a copy)
//! and digests every table's COPY rows; its channel is bounded too. An archive it
//! cannot read costs the backup its digests (logged), never the backup itself.
//!
//! At the end, a debug line (`pipeline stages`) says where the time went: CPU spent
//! compressing, time hashing, time the compressing thread waited for pg_dump and for
//! the destination, and how many bytes were LZ-coded, entropy-coded or stored.

use crate::compress;
use crate::compress::Compression;
use crate::crypto::{EncryptStream, Encryption};
use crate::progress::Counters;
use crate::storage::ObjectWriter;
use anyhow::{anyhow, bail, Context, Result};
use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

pub const CHUNK: usize = 1 << 20;
const CHANNEL_DEPTH: usize = 4;

/// The writer's side of the channel closed: the destination failed (its own error says
/// why), so the compressing thread stops without an error of its own. Recognised by
/// type, through the compressor's `io::Error`.
#[derive(Debug)]
struct DestinationGone;

impl std::fmt::Display for DestinationGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the destination stopped accepting data")
    }
}

impl std::error::Error for DestinationGone {}
/// What every pg_dump custom-format archive starts with.
pub const CUSTOM_FORMAT_MAGIC: &[u8] = b"PGDMP";

/// Make glibc's malloc hand large freed buffers (chunks, parts, libzstd's job
/// buffers) straight back to the kernel. By default it raises its mmap threshold after
/// the first such buffer is freed and then keeps freed buffers in per-thread arenas, so
/// a process whose threads pass megabyte buffers to each other grows well past what
/// it holds. Called once at start, before any thread exists.
pub fn return_freed_buffers_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; no memory is touched.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 * 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 * 1024 * 1024);
    }
}

fn compression_error(e: std::io::Error) -> anyhow::Error {
    if e.get_ref()
        .is_some_and(|inner| inner.is::<DestinationGone>())
    {
        anyhow!(DestinationGone)
    } else {
        anyhow!(e).context("compression failed")
    }
}

/// The compressing thread's output end: optional age encryption, then sha256 of the
/// stored bytes, then the channel to the writer.
struct Sink {
    hasher: Sha256,
    out_tx: mpsc::Sender<Bytes>,
    encrypt: Option<EncryptStream>,
    hashing: Duration,
    waiting_out: Duration,
}

impl Sink {
    fn emit(&mut self, buf: Bytes) -> std::io::Result<()> {
        let buf = match &mut self.encrypt {
            None => buf,
            Some(e) => {
                let mut sealed = Vec::with_capacity(buf.len() + 1024);
                e.write(&buf, &mut sealed)?;
                if sealed.is_empty() {
                    return Ok(());
                }
                Bytes::from(sealed)
            }
        };
        self.send(buf)
    }

    fn send(&mut self, buf: Bytes) -> std::io::Result<()> {
        let t = Instant::now();
        self.hasher.update(&buf);
        let t2 = Instant::now();
        self.hashing += t2 - t;
        let sent = self.out_tx.blocking_send(buf);
        self.waiting_out += t2.elapsed();
        sent.map_err(|_| std::io::Error::other(DestinationGone))
    }

    /// End the encryption (its last chunk and tag) after the compressor's trailer.
    fn finish(&mut self) -> std::io::Result<()> {
        if let Some(e) = self.encrypt.take() {
            let mut tail = Vec::new();
            e.finish(&mut tail)?;
            if !tail.is_empty() {
                self.send(Bytes::from(tail))?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct StreamStats {
    pub uncompressed_bytes: u64,
    pub stored_bytes: u64,
    /// Lowercase hex sha256 of the stored bytes.
    pub sha256: String,
    /// The archive's per-table row digests, when it could be read.
    pub archive: Option<crate::archive::Archive>,
}

/// Stream `source` through compression on `threads` threads (and age encryption of
/// the compressed stream when `encryption` is set; the hash is of the encrypted bytes:
/// what is stored) into `writer`. Does not finish or abort the writer: the caller
/// decides, after checking pg_dump's exit status.
pub async fn stream<R>(
    mut source: R,
    compression: Compression,
    threads: usize,
    encryption: Option<&Encryption>,
    writer: &mut dyn ObjectWriter,
    counters: Arc<Counters>,
) -> Result<StreamStats>
where
    R: AsyncRead + Unpin + Send,
{
    let (in_tx, mut in_rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);

    let encrypt = match encryption {
        Some(e) => Some(e.stream().context("starting the encryption")?),
        None => None,
    };
    let compressor = tokio::task::spawn_blocking(move || -> Result<String> {
        let mut c = compress::new(compression, threads).context("starting the compressor")?;
        let mut sink = Sink {
            hasher: Sha256::new(),
            out_tx,
            encrypt,
            hashing: Duration::ZERO,
            waiting_out: Duration::ZERO,
        };
        let mut waiting_in = Duration::ZERO;
        let mut emit = |buf: Bytes| sink.emit(buf);
        loop {
            let t = Instant::now();
            let next = in_rx.blocking_recv();
            waiting_in += t.elapsed();
            let Some(chunk) = next else { break };
            c.write(chunk, &mut emit).map_err(compression_error)?;
        }
        let stats = c.finish(&mut emit).map_err(compression_error)?;
        sink.finish().map_err(compression_error)?;
        let Sink {
            hasher,
            hashing,
            waiting_out,
            ..
        } = sink;
        tracing::debug!(
            compression = compression.name(),
            threads,
            compress_cpu_seconds = stats.worker_cpu.as_secs_f64(),
            sha256_seconds = hashing.as_secs_f64(),
            waiting_for_pg_dump_seconds = waiting_in.as_secs_f64(),
            waiting_for_destination_seconds = waiting_out.as_secs_f64(),
            lz_input_bytes = stats.lz_bytes,
            huffman_input_bytes = stats.huffman_bytes,
            stored_input_bytes = stats.stored_bytes,
            "pipeline stages"
        );
        Ok(hex::encode(hasher.finalize()))
    });

    let (digest_tx, digester) =
        crate::archive::spawn_reader(crate::archive::DigestAlgorithm::CURRENT);
    let counters_r = counters.clone();
    let read = async move {
        let mut first = true;
        let mut digest_tx = Some(digest_tx);
        loop {
            let mut buf = BytesMut::with_capacity(CHUNK);
            while buf.len() < CHUNK {
                let n = source
                    .read_buf(&mut buf)
                    .await
                    .context("reading pg_dump's output")?;
                if n == 0 {
                    break;
                }
            }
            if buf.is_empty() {
                return Ok::<(), anyhow::Error>(());
            }
            if first {
                first = false;
                if !buf.starts_with(CUSTOM_FORMAT_MAGIC) {
                    bail!("pg_dump's output does not start like a custom-format archive");
                }
            }
            counters_r
                .dumped
                .fetch_add(buf.len() as u64, Ordering::Relaxed);
            let last = buf.len() < CHUNK;
            let buf = buf.freeze();
            if let Some(tx) = &digest_tx {
                if tx.send(buf.clone()).await.is_err() {
                    digest_tx = None; // the archive reader failed; its error says why
                }
            }
            if in_tx.send(buf).await.is_err() {
                // The compressor stopped; its own error explains why.
                return Ok(());
            }
            if last {
                return Ok(());
            }
        }
    };

    let counters_w = counters.clone();
    let write = async move {
        let mut stored = 0u64;
        while let Some(b) = out_rx.recv().await {
            stored += b.len() as u64;
            counters_w
                .stored
                .fetch_add(b.len() as u64, Ordering::Relaxed);
            writer.write(b).await?;
        }
        Ok::<u64, anyhow::Error>(stored)
    };

    let (read_res, write_res) = tokio::join!(read, write);
    // The writer loop ends when the compressor drops its sender: on success, or when
    // the compressor failed. Collect the compressor's verdict first.
    let sha = compressor
        .await
        .map_err(|e| anyhow!("compression thread failed: {e}"));
    let stored = write_res?;
    read_res?;
    let sha256 = sha??;
    let digest_clock = Instant::now();
    let (archive, digest_cpu) = match tokio::task::spawn_blocking(move || digester.join()).await {
        Ok(Ok((Ok(a), cpu))) => (Some(a), cpu),
        Ok(Ok((Err(e), cpu))) => {
            tracing::warn!(
                error = format!("{e:#}"),
                "the archive could not be read as it streamed, so this backup has no content digests (its drills check row counts only): {e:#}"
            );
            (None, cpu)
        }
        _ => {
            tracing::warn!("the archive reader stopped; this backup has no content digests");
            (None, 0.0)
        }
    };
    tracing::debug!(
        algorithm = crate::archive::DigestAlgorithm::CURRENT.name(),
        digest_cpu_seconds = digest_cpu,
        waited_seconds = digest_clock.elapsed().as_secs_f64(),
        tables = archive.as_ref().map(|a| a.tables.len()),
        "archive digests: CPU of the thread that read the archive and hashed its rows"
    );
    let uncompressed = counters.dumped();
    if uncompressed == 0 {
        bail!("pg_dump produced no output");
    }
    Ok(StreamStats {
        uncompressed_bytes: uncompressed,
        stored_bytes: stored,
        sha256,
        archive,
    })
}

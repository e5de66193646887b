//! The byte path of a backup: pg_dump's stdout -> compression -> sha256 and byte
//! counts -> the destination's writer.
//!
//! Three stages joined by bounded channels: an async reader that cuts the stream into
//! 1 MiB chunks (and checks that it starts like a custom-format archive), a blocking
//! thread that compresses and hashes, and the async writer loop. Every channel is
//! bounded and the writer waits on the destination, so a slow destination slows
//! pg_dump down (through its pipe) instead of growing memory.

use crate::compress;
use crate::config::Compression;
use crate::progress::Counters;
use crate::storage::ObjectWriter;
use anyhow::{anyhow, bail, Context, Result};
use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

pub const CHUNK: usize = 1 << 20;
const CHANNEL_DEPTH: usize = 4;
/// What every pg_dump custom-format archive starts with.
pub const CUSTOM_FORMAT_MAGIC: &[u8] = b"PGDMP";

#[derive(Debug, Clone)]
pub struct StreamStats {
    pub uncompressed_bytes: u64,
    pub stored_bytes: u64,
    /// Lowercase hex sha256 of the stored bytes.
    pub sha256: String,
}

/// Stream `source` through compression into `writer`. Does not finish or abort the
/// writer: the caller decides, after checking pg_dump's exit status.
pub async fn stream<R>(
    mut source: R,
    compression: Compression,
    writer: &mut dyn ObjectWriter,
    counters: Arc<Counters>,
) -> Result<StreamStats>
where
    R: AsyncRead + Unpin + Send,
{
    let (in_tx, mut in_rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);

    let compressor = tokio::task::spawn_blocking(move || -> Result<String> {
        let mut c = compress::new(compression);
        let mut hasher = Sha256::new();
        let mut emit = |buf: Vec<u8>| -> bool {
            if buf.is_empty() {
                return true;
            }
            hasher.update(&buf);
            out_tx.blocking_send(Bytes::from(buf)).is_ok()
        };
        while let Some(chunk) = in_rx.blocking_recv() {
            let mut out = Vec::with_capacity(chunk.len() / 2);
            c.write(&chunk, &mut out).context("compression failed")?;
            if !emit(out) {
                bail!("the destination stopped accepting data");
            }
        }
        let mut out = Vec::new();
        c.finish(&mut out).context("compression failed")?;
        if !emit(out) {
            bail!("the destination stopped accepting data");
        }
        Ok(hex::encode(hasher.finalize()))
    });

    let counters_r = counters.clone();
    let read = async move {
        let mut first = true;
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
            if in_tx.send(buf.freeze()).await.is_err() {
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
    let uncompressed = counters.dumped();
    if uncompressed == 0 {
        bail!("pg_dump produced no output");
    }
    Ok(StreamStats {
        uncompressed_bytes: uncompressed,
        stored_bytes: stored,
        sha256,
    })
}

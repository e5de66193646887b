//! Reading a stored backup back: the object streams from the destination through
//! sha256 and byte counting, then through decompression, into a sink (pg_restore's
//! stdin, or nothing at all for a pure check).
//!
//! The hashing stage reads the object to its very end even when the consumer stops
//! early, so a corrupted object is always reported as a checksum mismatch, the
//! fundamental fault, rather than as whatever decompression or pg_restore tripped on.

use crate::crypto::Keys;
use crate::manifest::Manifest;
use crate::pgtool::ToolProcess;
use crate::storage::Storage;
use crate::{compress, old_script};
use anyhow::{anyhow, Context, Result};
use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::process::Stdio;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::pipeline::CHUNK;

/// The tool's side stopped reading (its own error says why): the decoding thread
/// ends with this, recognised by type.
#[derive(Debug)]
struct ConsumerStopped;

impl std::fmt::Display for ConsumerStopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the consumer stopped reading")
    }
}

impl std::error::Error for ConsumerStopped {}

/// What reading an object back found.
#[derive(Debug)]
pub struct ReadReport {
    pub stored_bytes: u64,
    pub sha256: String,
    /// Bytes after decompression that reached the sink.
    pub archive_bytes: u64,
    /// Why decompression or the sink stopped early, if it did.
    pub consumer_error: Option<anyhow::Error>,
    /// Whether the decompressed stream began like a custom-format archive.
    pub custom_format: bool,
}

/// How the stored bytes become the archive.
#[derive(Debug, Clone)]
pub enum Decode {
    /// This tool's objects: age decryption when the manifest says so, then the
    /// manifest's compression algorithm.
    Backup {
        compression: String,
        keys: Option<Keys>,
    },
    /// LeafLock's old script: openssl decryption, gzip, database statements removed.
    OldScript { password: String },
}

impl Decode {
    /// How to read the backup `m` describes. With `require_encryption`, an unencrypted
    /// backup is refused.
    pub fn for_manifest(m: &Manifest, keys: &Keys, require_encryption: bool) -> Result<Decode> {
        if m.encryption.is_none() && require_encryption {
            anyhow::bail!(
                "{} is not encrypted, and encryption is required (--require-encryption)",
                m.object_key
            );
        }
        Ok(Decode::Backup {
            compression: m.compression.algorithm.clone(),
            keys: m.encryption.as_ref().map(|_| keys.clone()),
        })
    }

    /// The archive as a reader over the stored bytes `input`.
    fn reader<'a>(&self, input: Box<dyn Read + Send + 'a>) -> Result<Box<dyn Read + Send + 'a>> {
        match self {
            Decode::Backup { compression, keys } => {
                let input = match keys {
                    Some(k) => k.decrypt(input)?,
                    None => input,
                };
                compress::decoder(compression, input)
            }
            Decode::OldScript { password } => old_script::decoder(input, password),
        }
    }
}

/// Hand the beginning of the decoded object `key` to `look` (on a blocking thread),
/// reading only as far as it reads: the table of contents at an archive's head, say.
/// Nothing is verified here (the object is not hashed to its end), so what `look`
/// finds is only as good as the full read-back that must follow it.
pub async fn read_head<T, F>(storage: &dyn Storage, key: &str, decode: Decode, look: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Box<dyn Read + Send>) -> Result<T> + Send + 'static,
{
    let mut object = storage.open_read(key).await?;
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let looking = tokio::task::spawn_blocking(move || {
        look(decode.reader(Box::new(ChannelReader {
            rx,
            current: Bytes::new(),
        }))?)
    });
    let fed = async {
        loop {
            let mut buf = BytesMut::with_capacity(CHUNK);
            if object.read_buf(&mut buf).await? == 0 || tx.send(buf.freeze()).await.is_err() {
                return Ok::<(), std::io::Error>(());
            }
        }
    }
    .await;
    drop(tx);
    let found = looking
        .await
        .map_err(|e| anyhow!("reading the head of {key} failed: {e}"))?;
    match (found, fed) {
        (Ok(v), _) => Ok(v),
        (Err(e), Err(io)) => Err(e.context(format!("reading {key}: {io}"))),
        (Err(e), Ok(())) => Err(e),
    }
}

/// A `Read` over chunks arriving on a channel (used on a blocking thread).
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.current = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Stream `key` through sha256 and `algorithm`'s decoder into `sink`. An error is
/// returned only when the object cannot be read at all; everything else is in the
/// report for the caller to weigh.
///
/// With `expected` (sha256, size), the sink is closed only once the whole object has
/// hashed to exactly that: a consumer that commits on end of input (pg_restore
/// `--single-transaction`) never sees the end of a corrupt archive, and the caller
/// can kill it so that nothing is committed.
pub async fn read_back<W>(
    storage: &dyn Storage,
    key: &str,
    decode: Decode,
    sink: W,
    expected: Option<(&str, u64)>,
) -> Result<(ReadReport, Option<W>)>
where
    W: AsyncWrite + Unpin + Send,
{
    read_back_tapped(storage, key, decode, sink, expected, None).await
}

/// [`read_back`], also handing every decoded chunk to `tap` (the archive reader of
/// `archive.rs`, for `verify`'s digests). A tap that stops receiving is dropped; the
/// sink is fed on regardless.
pub async fn read_back_tapped<W>(
    storage: &dyn Storage,
    key: &str,
    decode: Decode,
    mut sink: W,
    expected: Option<(&str, u64)>,
    mut tap: Option<mpsc::Sender<Bytes>>,
) -> Result<(ReadReport, Option<W>)>
where
    W: AsyncWrite + Unpin + Send,
{
    let mut object = storage.open_read(key).await?;
    let (raw_tx, raw_rx) = mpsc::channel::<Bytes>(4);
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(4);
    let (hashed_tx, hashed_rx) = tokio::sync::oneshot::channel::<(u64, String)>();
    let (decoded_tx, decoded_rx) = tokio::sync::oneshot::channel::<bool>();
    let expected = expected.map(|(s, n)| (s.to_string(), n));

    let decode = tokio::task::spawn_blocking(move || -> Result<()> {
        let r = (|| -> Result<()> {
            let mut dec = decode.reader(Box::new(ChannelReader {
                rx: raw_rx,
                current: Bytes::new(),
            }))?;
            loop {
                let mut buf = vec![0u8; CHUNK];
                let mut filled = 0;
                while filled < CHUNK {
                    let n = dec
                        .read(&mut buf[filled..])
                        .context("decompression failed")?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                if filled == 0 {
                    return Ok(());
                }
                buf.truncate(filled);
                if out_tx.blocking_send(Bytes::from(buf)).is_err() {
                    return Err(anyhow!(ConsumerStopped));
                }
            }
        })();
        let _ = decoded_tx.send(r.is_ok());
        r
    });

    let hash = async move {
        let mut hasher = Sha256::new();
        let mut total = 0u64;
        let mut tx = Some(raw_tx);
        loop {
            let mut buf = BytesMut::with_capacity(CHUNK);
            let n = object
                .read_buf(&mut buf)
                .await
                .with_context(|| format!("reading {key}"))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf);
            total += n as u64;
            if let Some(t) = &tx {
                if t.send(buf.freeze()).await.is_err() {
                    tx = None; // the decoder stopped; keep hashing to the end
                }
            }
        }
        drop(tx);
        let sha = hex::encode(hasher.finalize());
        let _ = hashed_tx.send((total, sha.clone()));
        Ok::<(u64, String), anyhow::Error>((total, sha))
    };

    let write = async move {
        let mut n = 0u64;
        let mut first = true;
        let mut custom = false;
        // The newest chunk waits for the next one: the last is held back until the
        // object is proven (below).
        let mut last: Option<Bytes> = None;
        while let Some(b) = out_rx.recv().await {
            if first {
                custom = b.starts_with(crate::pipeline::CUSTOM_FORMAT_MAGIC);
                first = false;
            }
            n += b.len() as u64;
            if let Some(t) = &tap {
                if t.send(b.clone()).await.is_err() {
                    tap = None;
                }
            }
            if let Some(prev) = last.replace(b) {
                if let Err(e) = sink.write_all(&prev).await {
                    return (
                        n,
                        custom,
                        Some(anyhow!(e).context("writing the archive")),
                        None,
                    );
                }
            }
        }
        drop(tap);
        // The archive's last bytes (and the end of the stream) reach the consumer only
        // after a complete decode and, with `expected`, a matching checksum. pg_restore
        // commits as soon as it has read the end of the last data block it needs,
        // without waiting for the end of input: holding back the last chunk keeps a
        // whole restore from committing a truncated, undecodable or replaced archive.
        // (A restore that needs less than the whole archive is spooled and verified
        // first: `restore.rs`.) The sink is handed back unwritten and unclosed instead;
        // the caller stops the consumer first.
        if decoded_rx.await != Ok(true) {
            let e = anyhow!("the archive did not decode to its end");
            return (n, custom, Some(e), Some(sink));
        }
        if let Some((sha, size)) = &expected {
            match hashed_rx.await {
                Ok((hn, s)) if &s == sha && hn == *size => {}
                _ => {
                    let e = anyhow!("the object does not match its manifest");
                    return (n, custom, Some(e), Some(sink));
                }
            }
        }
        if let Some(b) = last {
            if let Err(e) = sink.write_all(&b).await {
                return (
                    n,
                    custom,
                    Some(anyhow!(e).context("writing the archive")),
                    None,
                );
            }
        }
        let closed = sink.shutdown().await.err();
        (
            n,
            custom,
            closed.map(|e| anyhow!(e).context("closing the archive stream")),
            None,
        )
    };

    let (hashed, written) = tokio::join!(hash, write);
    let decoded = decode
        .await
        .map_err(|e| anyhow!("decompression thread failed: {e}"))
        .and_then(|r| r);
    let (stored_bytes, sha256) = hashed?;
    let (archive_bytes, custom_format, write_err, held) = written;
    let report = ReadReport {
        stored_bytes,
        sha256,
        archive_bytes,
        // The decoder's own failure explains more than the sink's reaction to it;
        // when the sink failed first, the decoder only saw it stop reading.
        consumer_error: match decoded {
            Err(d) if d.downcast_ref::<ConsumerStopped>().is_none() => Some(d),
            _ => write_err,
        },
        custom_format,
    };
    Ok((report, held))
}

/// Finish a read-back into a PostgreSQL tool. When the stream was held open (the
/// archive is corrupt, truncated or undecodable) the tool is stopped before its stdin
/// closes, so it cannot commit; otherwise its exit status decides. `integrity` is the
/// caller's verdict on the object (checksum against the manifest), reported first.
pub async fn settle<W>(
    report: ReadReport,
    held: Option<W>,
    tool: ToolProcess,
    integrity: Result<()>,
) -> Result<()> {
    if integrity.is_err() || held.is_some() {
        tool.stop().await;
        drop(held);
        integrity?;
        return Err(report
            .consumer_error
            .unwrap_or_else(|| anyhow!("the archive stream was not completed")));
    }
    tool.wait().await?;
    match report.consumer_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The stored object against its manifest: size and sha256 (and, when decoding went to
/// the end, the archive's size).
pub fn check_integrity(manifest: &Manifest, report: &ReadReport) -> Result<()> {
    if report.sha256 != manifest.sha256 || report.stored_bytes != manifest.stored_bytes {
        return Err(anyhow!(
            "sha256 mismatch: the manifest records {} ({} bytes) but the stored object hashes to {} \
             ({} bytes); the object is corrupt or was replaced",
            manifest.sha256,
            manifest.stored_bytes,
            report.sha256,
            report.stored_bytes
        ));
    }
    if report.consumer_error.is_none() && report.archive_bytes != manifest.uncompressed_bytes {
        return Err(anyhow!(
            "the object decompresses to {} bytes but the manifest records {}",
            report.archive_bytes,
            manifest.uncompressed_bytes
        ));
    }
    Ok(())
}

/// What a tool fed with a backup was given, once it exited successfully.
#[derive(Debug)]
pub struct Fed {
    pub stored_bytes: u64,
    pub archive_bytes: u64,
    pub sha256: String,
    /// Whether the archive began like a pg_dump custom-format archive.
    pub custom_format: bool,
}

/// Stream the object `key` into the stdin of `cmd`, a PostgreSQL tool (`name` in
/// messages) that acts on end of input: pg_restore into a database or to /dev/null,
/// psql replaying an old script's SQL. Its stdin is closed only after the object
/// decoded to its end and, with its `manifest`, hashed to the manifest's sha256 and
/// size; otherwise the tool is stopped first, so a `--single-transaction` restore
/// commits nothing. The tool's stderr is logged; its stdout is discarded.
pub async fn feed_tool(
    storage: &dyn Storage,
    key: &str,
    manifest: Option<&Manifest>,
    decode: Decode,
    name: &'static str,
    cmd: Command,
) -> Result<Fed> {
    feed_tool_tapped(storage, key, manifest, decode, name, cmd, None).await
}

/// [`feed_tool`], with the decoded archive also handed to `tap` (see
/// [`read_back_tapped`]).
pub async fn feed_tool_tapped(
    storage: &dyn Storage,
    key: &str,
    manifest: Option<&Manifest>,
    decode: Decode,
    name: &'static str,
    mut cmd: Command,
    tap: Option<mpsc::Sender<Bytes>>,
) -> Result<Fed> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {}",
                cmd.as_std().get_program().to_string_lossy()
            )
        })?;
    let stdin = child.stdin.take().expect("piped stdin");
    let proc = ToolProcess::watch(name, child);
    let expected = manifest.map(|m| (m.sha256.as_str(), m.stored_bytes));
    let report = read_back_tapped(storage, key, decode, stdin, expected, tap).await;
    let (report, held) = match report {
        Ok(r) => r,
        Err(e) => {
            proc.stop().await;
            return Err(e);
        }
    };
    let fed = Fed {
        stored_bytes: report.stored_bytes,
        archive_bytes: report.archive_bytes,
        sha256: report.sha256.clone(),
        custom_format: report.custom_format,
    };
    let integrity = match manifest {
        Some(m) => check_integrity(m, &report),
        None => Ok(()),
    };
    settle(report, held, proc, integrity).await?;
    Ok(fed)
}

//! Where backups are kept: one trait, one file per backend (`s3.rs`, `local.rs`).
//!
//! Invariants every backend keeps:
//! - an object appears at its final key only when `ObjectWriter::finish` succeeds
//!   (S3: CompleteMultipartUpload; local: rename of a fsynced temporary file);
//! - `ObjectWriter::abort` leaves nothing behind (no open multipart upload, no
//!   temporary file);
//! - memory held by a writer is bounded by its configuration, never by object size;
//! - `put_small` (used for manifests) is all-or-nothing too;
//! - what a killed process leaves behind (an open multipart upload, a temporary file)
//!   is found by `list_unfinished` and removed by `discard_unfinished` (see
//!   `debris.rs`).

pub mod local;
pub mod s3;

pub use local::LocalConfig;
pub use s3::{Checksum, LockMode, S3Config, Sse};

use anyhow::Result;
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::io::AsyncRead;

#[derive(Debug, Clone)]
pub enum DestinationConfig {
    S3(S3Config),
    Local(LocalConfig),
}

impl DestinationConfig {
    pub fn prefix(&self) -> &str {
        match self {
            DestinationConfig::S3(s) => &s.prefix,
            DestinationConfig::Local(l) => &l.prefix,
        }
    }
}

/// An upload that was started and never completed nor aborted: an open S3 multipart
/// upload, or a local temporary (`.partial-*`) file.
#[derive(Debug, Clone)]
pub struct Unfinished {
    /// The key the object would have had (local: the temporary file's key).
    pub key: String,
    /// S3 upload id; the temporary file's key for a local directory.
    pub id: String,
    /// When it was started (S3) or last written (local).
    pub started: Option<DateTime<Utc>>,
}

/// One stored object, as listed.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub modified: Option<DateTime<Utc>>,
}

#[async_trait]
pub trait Storage: Send + Sync {
    /// Where this is, for logs: `s3://bucket` (with endpoint) or a directory.
    fn describe(&self) -> String;

    /// Check that the destination is reachable and writable before any work.
    async fn preflight(&self) -> Result<()>;

    /// The destination's own clock, when it has one (S3: the `Date` header of a
    /// response), as a second opinion on the local clock.
    async fn server_time(&self) -> Result<Option<DateTime<Utc>>> {
        Ok(None)
    }

    /// Start writing an object at `key`.
    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>>;

    /// Write a small object (a manifest, a drill record) atomically. Without `replace`,
    /// an existing object at `key` is an error and stays untouched.
    async fn put_small(&self, key: &str, data: Bytes, replace: bool) -> Result<()>;

    /// Read a whole object into memory (small objects only: manifests, records). One
    /// larger than [`SMALL_MAX`] is refused without being read whole.
    async fn get_small(&self, key: &str) -> Result<Bytes>;

    /// Open an object for streaming.
    async fn open_read(&self, key: &str) -> Result<Box<dyn AsyncRead + Send + Unpin>>;

    /// Every object under `prefix`, in no particular order.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;

    /// Whether an object exists at `key`.
    async fn exists(&self, key: &str) -> Result<bool>;

    /// Delete one object (used to remove an object whose manifest could not be written).
    async fn delete(&self, key: &str) -> Result<()>;

    /// Uploads under `prefix` that were started and never finished nor aborted.
    async fn list_unfinished(&self, prefix: &str) -> Result<Vec<Unfinished>>;

    /// When an unfinished upload last received data (S3: its newest part), if known.
    async fn last_written(&self, u: &Unfinished) -> Result<Option<DateTime<Utc>>> {
        Ok(u.started)
    }

    /// Abort one unfinished upload (S3) or remove its temporary file (local). One that
    /// is already gone is not an error.
    async fn discard_unfinished(&self, u: &Unfinished) -> Result<()>;

    /// Remove `key` with every version a versioned bucket keeps of it (S3: each version
    /// and delete marker by id), so that a probe leaves nothing; elsewhere, `delete`.
    async fn purge(&self, key: &str) -> Result<()> {
        self.delete(key).await
    }

    /// `check`: write a probe at `key` under the Object Lock this destination applies
    /// (for seconds, not days), read back that the store applied it, and remove it.
    /// Says what was proved.
    async fn probe_lock(&self, key: &str) -> Result<String> {
        let _ = key;
        anyhow::bail!("{} has no Object Lock", self.describe())
    }
}

#[async_trait]
pub trait ObjectWriter: Send {
    /// Append bytes. May wait (backpressure) while earlier data is being stored.
    async fn write(&mut self, data: Bytes) -> Result<()>;

    /// Make the object appear at its final key. Returns the stored byte count.
    async fn finish(self: Box<Self>) -> Result<u64>;

    /// Discard everything written; leave no trace.
    async fn abort(self: Box<Self>) -> Result<()>;
}

/// The largest manifest or record read: far above any real one (kilobytes), far below
/// what would strain a 256 MiB pod.
pub const SMALL_MAX: u64 = 4 << 20;

/// The error for a small object that is not small.
pub fn check_small(key: &str, size: u64) -> Result<()> {
    if size > SMALL_MAX {
        anyhow::bail!(
            "{key} is larger than {} MiB: not a manifest or record this tool wrote; not read",
            SMALL_MAX >> 20
        );
    }
    Ok(())
}

pub async fn open(cfg: &DestinationConfig) -> Result<Box<dyn Storage>> {
    Ok(match cfg {
        DestinationConfig::S3(c) => Box::new(s3::S3Storage::new(c).await?),
        DestinationConfig::Local(c) => Box::new(local::LocalStorage::new(c)),
    })
}

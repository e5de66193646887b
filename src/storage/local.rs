//! A local directory as the destination.
//!
//! Objects are written to a hidden temporary file beside their final name, fsynced,
//! then linked into place (which fails rather than overwrite an existing object) and
//! the directory fsynced. A crash leaves at most a `.partial` file, never a partial
//! object under a final name.
//!
//! Everything this backend creates is private whatever the umask: files 0600 (objects,
//! manifests, records, partials), directories 0700. The write probe is opened with
//! O_CREAT|O_EXCL|O_NOFOLLOW under a random name, so a planted symlink is never
//! followed.

use super::{ObjectInfo, ObjectWriter, Storage, Unfinished};
use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use tokio::io::AsyncRead;
use tokio::io::AsyncWriteExt;

#[derive(Debug, Clone)]
pub struct LocalConfig {
    pub dir: PathBuf,
    /// Empty or ends with `/`.
    pub prefix: String,
}

pub struct LocalStorage {
    dir: PathBuf,
}

impl LocalStorage {
    pub fn new(cfg: &LocalConfig) -> LocalStorage {
        LocalStorage {
            dir: cfg.dir.clone(),
        }
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        if key
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        {
            bail!("invalid object key {key:?}");
        }
        Ok(self.dir.join(key))
    }
}

const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

/// `mkdir -p` with private modes for every directory it creates.
async fn create_dirs(dir: &Path) -> std::io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&dir)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// A new private file; fails if anything (a file, a symlink) is at `path`.
async fn create_private(path: &Path) -> std::io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .await
}

/// Whether `key` names a temporary file of this backend (`.NAME.partial-PID-RANDOM`).
pub fn is_temporary(key: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    name.starts_with('.') && name.contains(".partial-")
}

fn temp_path(final_path: &Path) -> PathBuf {
    let name = final_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    final_path.with_file_name(format!(
        ".{name}.partial-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ))
}

/// Link the finished temporary file to its final name (never replacing an existing
/// file), remove the temporary name and fsync the directory.
async fn commit(tmp: &Path, final_path: &Path) -> Result<()> {
    let result = tokio::fs::hard_link(tmp, final_path).await;
    let _ = tokio::fs::remove_file(tmp).await;
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!(
                "{} already exists; not overwriting it",
                final_path.display()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", final_path.display())),
    }
    if let Some(parent) = final_path.parent() {
        let parent = parent.to_path_buf();
        tokio::task::spawn_blocking(move || std::fs::File::open(&parent)?.sync_all())
            .await?
            .context("cannot fsync the backup directory")?;
    }
    Ok(())
}

#[async_trait]
impl Storage for LocalStorage {
    fn describe(&self) -> String {
        format!("local directory {}", self.dir.display())
    }

    async fn preflight(&self) -> Result<()> {
        create_dirs(&self.dir)
            .await
            .with_context(|| format!("cannot create backup directory {}", self.dir.display()))?;
        let probe = self.dir.join(format!(
            ".leaflock-write-test-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let mut f = create_private(&probe)
            .await
            .with_context(|| format!("backup directory {} is not writable", self.dir.display()))?;
        let w = f.write_all(b"ok").await;
        drop(f);
        let _ = tokio::fs::remove_file(&probe).await;
        w.with_context(|| format!("backup directory {} is not writable", self.dir.display()))
    }

    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        let final_path = self.path(key)?;
        if let Some(parent) = final_path.parent() {
            create_dirs(parent)
                .await
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        if tokio::fs::try_exists(&final_path).await.unwrap_or(false) {
            bail!(
                "{} already exists; not overwriting it",
                final_path.display()
            );
        }
        let tmp = temp_path(&final_path);
        let file = create_private(&tmp)
            .await
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        Ok(Box::new(LocalWriter {
            file: Some(tokio::io::BufWriter::with_capacity(1 << 20, file)),
            tmp,
            final_path,
            written: 0,
        }))
    }

    async fn put_small(&self, key: &str, data: Bytes, replace: bool) -> Result<()> {
        if replace {
            let final_path = self.path(key)?;
            let tmp = temp_path(&final_path);
            let r: Result<()> = async {
                let mut f = create_private(&tmp).await?;
                f.write_all(&data).await?;
                f.sync_all().await?;
                drop(f);
                tokio::fs::rename(&tmp, &final_path).await?;
                Ok(())
            }
            .await;
            if r.is_err() {
                let _ = tokio::fs::remove_file(&tmp).await;
            }
            return r.with_context(|| format!("cannot write {}", final_path.display()));
        }
        let mut w = self.create(key).await?;
        if let Err(e) = w.write(data).await {
            let _ = w.abort().await;
            return Err(e);
        }
        w.finish().await.map(|_| ())
    }

    async fn open_read(&self, key: &str) -> Result<Box<dyn AsyncRead + Send + Unpin>> {
        let p = self.path(key)?;
        let f = tokio::fs::File::open(&p)
            .await
            .with_context(|| format!("cannot open {}", p.display()))?;
        Ok(Box::new(f))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let dir = self.dir.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let start = dir.join(prefix.trim_end_matches('/'));
            if start.is_dir() {
                walk(&dir, &start, &mut out)?;
            }
            Ok(out)
        })
        .await?
    }

    async fn get_small(&self, key: &str) -> Result<Bytes> {
        use tokio::io::AsyncReadExt;
        let p = self.path(key)?;
        let f = tokio::fs::File::open(&p)
            .await
            .with_context(|| format!("cannot read {}", p.display()))?;
        let mut data = Vec::new();
        f.take(super::SMALL_MAX + 1)
            .read_to_end(&mut data)
            .await
            .with_context(|| format!("cannot read {}", p.display()))?;
        super::check_small(key, data.len() as u64)?;
        Ok(data.into())
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        Ok(tokio::fs::try_exists(self.path(key)?).await?)
    }

    async fn list_unfinished(&self, prefix: &str) -> Result<Vec<Unfinished>> {
        Ok(self
            .list(prefix)
            .await?
            .into_iter()
            .filter(|o| is_temporary(&o.key))
            .map(|o| Unfinished {
                id: o.key.clone(),
                key: o.key,
                started: o.modified,
            })
            .collect())
    }

    async fn discard_unfinished(&self, u: &Unfinished) -> Result<()> {
        if !is_temporary(&u.id) {
            bail!("{} is not a temporary file", u.id);
        }
        match tokio::fs::remove_file(self.path(&u.id)?).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", u.id)),
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let p = self.path(key)?;
        tokio::fs::remove_file(&p)
            .await
            .with_context(|| format!("cannot delete {}", p.display()))
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<ObjectInfo>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let meta = entry.metadata()?;
        if meta.is_dir() {
            walk(root, &path, out)?;
        } else if meta.is_file() {
            let key = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            out.push(ObjectInfo {
                key,
                size: meta.len(),
                modified: meta.modified().ok().map(DateTime::<Utc>::from),
            });
        }
    }
    Ok(())
}

struct LocalWriter {
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    tmp: PathBuf,
    final_path: PathBuf,
    written: u64,
}

#[async_trait]
impl ObjectWriter for LocalWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        let f = self.file.as_mut().expect("writer used after finish");
        f.write_all(&data)
            .await
            .with_context(|| format!("cannot write {}", self.tmp.display()))?;
        self.written += data.len() as u64;
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<u64> {
        let mut f = self.file.take().expect("finish called once");
        let r: Result<()> = async {
            f.flush().await?;
            f.get_ref().sync_all().await?;
            Ok(())
        }
        .await;
        drop(f);
        if let Err(e) = r {
            let _ = tokio::fs::remove_file(&self.tmp).await;
            return Err(e.context(format!("cannot write {}", self.tmp.display())));
        }
        commit(&self.tmp, &self.final_path).await?;
        Ok(self.written)
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        drop(self.file.take());
        match tokio::fs::remove_file(&self.tmp).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", self.tmp.display())),
        }
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        // A writer dropped without finish/abort (a cancelled future) removes its file.
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

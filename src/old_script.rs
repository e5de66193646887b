//! Archives of LeafLock's old backup script, so existing buckets stay restorable:
//! `pg_dump --clean --if-exists --create | gzip | openssl enc -aes-256-cbc -salt
//! -pass pass:$BACKUP_ENCRYPTION_KEY`, stored as `leaflock_backup_YYYYmmdd_HHMMSS.sql.gz.enc`.
//!
//! Decryption follows `openssl enc` without `-pbkdf2`: the file starts with `Salted__`
//! and 8 bytes of salt; key and IV come from EVP_BytesToKey (one iteration) over the
//! password and salt, with SHA-256 (OpenSSL 1.1.0 and later) or MD5 (older). The
//! digest is recognised by which one decrypts the first block to a gzip header.
//!
//! The plain SQL is untrusted (a bucket can be written by others). [`replay`] runs it
//! over the tool's own connection, never through psql: statements through the simple
//! query protocol, `COPY … FROM stdin` data through COPY-in, each statement judged by
//! `sqlscript` before it is sent, all of it in one transaction that the caller commits
//! only once the archive decoded to its end. The old script's `DROP/CREATE/ALTER
//! DATABASE` and `\connect` for its own database are left out (the named target stands
//! in for them); anything reaching outside the target stops the restore.

use crate::sqlscript;
use aes::cipher::{BlockDecryptMut, KeyIvInit};
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures::SinkExt;
use sha2::Digest;
use std::io::Read;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_postgres::Client;

type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;

const MAGIC: &[u8] = b"Salted__";
const BLOCK: usize = 16;

/// EVP_BytesToKey with one iteration: 32 bytes of key and 16 of IV.
fn bytes_to_key<D: Digest>(password: &[u8], salt: &[u8]) -> ([u8; 32], [u8; 16]) {
    let mut out = Vec::with_capacity(48);
    let mut prev: Vec<u8> = Vec::new();
    while out.len() < 48 {
        let mut h = D::new();
        h.update(&prev);
        h.update(password);
        h.update(salt);
        prev = h.finalize().to_vec();
        out.extend_from_slice(&prev);
    }
    let mut key = [0u8; 32];
    let mut iv = [0u8; 16];
    key.copy_from_slice(&out[..32]);
    iv.copy_from_slice(&out[32..48]);
    (key, iv)
}

/// A reader that decrypts an `openssl enc -aes-256-cbc -salt` stream.
pub struct Decrypt<R: Read> {
    inner: R,
    cipher: Aes256CbcDec,
    /// Decrypted bytes ready to hand out.
    plain: Vec<u8>,
    pos: usize,
    /// Ciphertext not yet decrypted (the last block is held back for the padding).
    pending: Vec<u8>,
    eof: bool,
}

impl<R: Read> Decrypt<R> {
    pub fn new(mut inner: R, password: &str) -> Result<Decrypt<R>> {
        let mut header = [0u8; 16];
        inner
            .read_exact(&mut header)
            .context("the archive is shorter than an openssl header")?;
        if &header[..8] != MAGIC {
            bail!("not an `openssl enc -salt` archive (no Salted__ header)");
        }
        let salt = &header[8..];
        let mut first = [0u8; BLOCK];
        inner
            .read_exact(&mut first)
            .context("the archive has no encrypted data")?;
        for (key, iv) in [
            bytes_to_key::<sha2::Sha256>(password.as_bytes(), salt),
            bytes_to_key::<md5::Md5>(password.as_bytes(), salt),
        ] {
            let mut probe = Aes256CbcDec::new(&key.into(), &iv.into());
            let mut b = first.into();
            probe.decrypt_block_mut(&mut b);
            if b[0] == 0x1f && b[1] == 0x8b && b[2] == 0x08 {
                return Ok(Decrypt {
                    inner,
                    cipher: Aes256CbcDec::new(&key.into(), &iv.into()),
                    plain: Vec::new(),
                    pos: 0,
                    pending: first.to_vec(),
                    eof: false,
                });
            }
        }
        bail!(
            "the encryption key does not decrypt this archive (tried OpenSSL's SHA-256 and MD5 key \
             derivations); check BACKUP_ENCRYPTION_KEY"
        )
    }

    fn refill(&mut self) -> std::io::Result<()> {
        while !self.eof && self.pending.len() < 64 * 1024 + BLOCK {
            let mut buf = vec![0u8; 64 * 1024];
            let n = self.inner.read(&mut buf)?;
            if n == 0 {
                self.eof = true;
            } else {
                self.pending.extend_from_slice(&buf[..n]);
            }
        }
        let whole = self.pending.len() / BLOCK * BLOCK;
        // Keep the last block back until EOF: it carries the padding.
        let take = if self.eof {
            whole
        } else {
            whole.saturating_sub(BLOCK)
        };
        if self.eof && whole != self.pending.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the encrypted archive is truncated (not a whole number of blocks)",
            ));
        }
        let mut data: Vec<u8> = self.pending.drain(..take).collect();
        for chunk in data.chunks_exact_mut(BLOCK) {
            self.cipher.decrypt_block_mut(chunk.into());
        }
        if self.eof && take > 0 {
            let pad = *data.last().unwrap() as usize;
            if pad == 0
                || pad > BLOCK
                || data[data.len() - pad..].iter().any(|&b| b as usize != pad)
            {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "bad padding at the end of the encrypted archive (truncated or corrupt)",
                ));
            }
            data.truncate(data.len() - pad);
        }
        self.plain = data;
        self.pos = 0;
        Ok(())
    }
}

impl<R: Read> Read for Decrypt<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.plain.len() {
            if self.eof && self.pending.is_empty() {
                return Ok(0);
            }
            self.refill()?;
        }
        let n = buf.len().min(self.plain.len() - self.pos);
        buf[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The decoding chain of an old archive: decrypt, gunzip. What comes out is the
/// plain SQL script, untrusted: [`replay`] reads it.
pub fn decoder<'a>(
    input: Box<dyn Read + Send + 'a>,
    password: &str,
) -> Result<Box<dyn Read + Send + 'a>> {
    let plain = Decrypt::new(input, password)?;
    Ok(Box::new(flate2::read::MultiGzDecoder::new(plain)))
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replayed {
    pub statements: u64,
    pub copies: u64,
    pub copy_bytes: u64,
    /// Statements and backslash lines left out (the archive's own database, psql's
    /// guards, transaction control).
    pub skipped: u64,
    pub lines: u64,
}

/// The longest line accepted outside COPY data.
const MAX_LINE: usize = 64 << 20;

/// Lines of the script, with COPY data streamed in pieces (a COPY line can be as long
/// as the largest value in the table).
struct Lines<R> {
    inner: R,
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
    line_no: u64,
}

impl<R: AsyncRead + Unpin> Lines<R> {
    async fn fill(&mut self) -> std::io::Result<bool> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > (1 << 20) {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let mut chunk = vec![0u8; 256 * 1024];
        let n = self.inner.read(&mut chunk).await?;
        if n == 0 {
            self.eof = true;
            return Ok(false);
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(true)
    }

    /// The next whole line (with its `\n`), or `None` at the end.
    async fn line(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            if let Some(p) = self.buf[self.pos..].iter().position(|&b| b == b'\n') {
                let line = self.buf[self.pos..self.pos + p + 1].to_vec();
                self.pos += p + 1;
                self.line_no += 1;
                return Ok(Some(line));
            }
            if self.buf.len() - self.pos > MAX_LINE {
                bail!(
                    "line {}: a line longer than {} MiB outside COPY data (not something pg_dump writes)",
                    self.line_no + 1,
                    MAX_LINE >> 20
                );
            }
            if self.eof || !self.fill().await? {
                if self.pos == self.buf.len() {
                    return Ok(None);
                }
                let line = self.buf[self.pos..].to_vec();
                self.pos = self.buf.len();
                self.line_no += 1;
                return Ok(Some(line));
            }
        }
    }

    /// The next piece of COPY data: `Some(bytes)` (whole lines, or part of a long one),
    /// `None` once the `\.` line ended the data.
    async fn copy_piece(&mut self, at_line_start: &mut bool) -> Result<Option<Vec<u8>>> {
        loop {
            let avail = &self.buf[self.pos..];
            if *at_line_start {
                let end = [&b"\\.\n"[..], b"\\.\r\n"]
                    .iter()
                    .find(|m| avail.starts_with(m))
                    .map(|m| m.len())
                    .or((self.eof && avail == b"\\.").then_some(2));
                if let Some(n) = end {
                    self.pos += n;
                    self.line_no += 1;
                    return Ok(None);
                }
                let undecided = avail.len() < 4 && b"\\.\r\n".starts_with(avail)
                    || avail.len() < 3 && b"\\.\n".starts_with(avail);
                if undecided && !self.eof {
                    self.fill().await?;
                    continue;
                }
            }
            if avail.is_empty() {
                if self.eof || !self.fill().await? {
                    bail!(
                        "line {}: the script ends inside COPY data (no \\. line)",
                        self.line_no + 1
                    );
                }
                continue;
            }
            // Whole lines up to 1 MiB at a time; a longer line goes in pieces.
            let window = &avail[..avail.len().min(1 << 20)];
            let (take, whole) = match window.iter().rposition(|&b| b == b'\n') {
                Some(p) => (p + 1, true),
                None if avail.len() >= (1 << 20) || self.eof => (window.len(), false),
                None => {
                    self.fill().await?;
                    continue;
                }
            };
            // Stop before a line that might be the end marker, to look at it alone.
            let piece = &window[..take];
            let cut = piece
                .windows(2)
                .position(|w| w == b"\n\\")
                .map(|p| p + 1)
                .unwrap_or(take);
            let out = self.buf[self.pos..self.pos + cut].to_vec();
            self.pos += cut;
            self.line_no += out.iter().filter(|&&b| b == b'\n').count() as u64;
            *at_line_start = out.last() == Some(&b'\n') || (whole && cut == take);
            return Ok(Some(out));
        }
    }
}

fn db_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{}: {}", d.severity(), d.message()),
        None => e.to_string(),
    }
}

/// Replay an old script's SQL over `client`, inside one transaction that this function
/// opens and leaves open: the caller commits once the archive decoded to its end, or
/// drops the connection (the server rolls everything back).
///
/// Statements go through the simple query protocol, `COPY … FROM stdin` data through
/// COPY-in; psql meta-commands do not exist here. Each statement is judged by
/// [`sqlscript::judge`] before it is sent: one that reaches outside the target stops
/// the replay with its line and the reason.
pub async fn replay<R: AsyncRead + Unpin>(client: &Client, input: R) -> Result<Replayed> {
    client
        .batch_execute("BEGIN; SET LOCAL standard_conforming_strings = on")
        .await
        .context("cannot begin the restore transaction")?;
    let mut lines = Lines {
        inner: input,
        buf: Vec::new(),
        pos: 0,
        eof: false,
        line_no: 0,
    };
    let mut split = sqlscript::Splitter::new();
    let mut ctx = sqlscript::Context::default();
    let mut done = Replayed::default();
    let refused = |line: u64, reason: &str| {
        anyhow!(
            "line {line}: refused, {reason}; nothing was restored (one transaction, rolled back)"
        )
    };
    while let Some(raw) = lines.line().await? {
        let n = lines.line_no;
        let text = std::str::from_utf8(&raw)
            .map_err(|_| anyhow!("line {n}: not UTF-8 (the old script's dumps are UTF-8)"))?;
        let items = split
            .line(n, text)
            .map_err(|r| refused(r.line, &r.reason))?;
        for item in items {
            match item {
                sqlscript::Item::Meta { line, text } => match sqlscript::judge_meta(&text, &ctx) {
                    sqlscript::Verdict::Skip(_) => done.skipped += 1,
                    sqlscript::Verdict::Refuse(r) => return Err(refused(line, &r)),
                    _ => unreachable!("a backslash line is skipped or refused"),
                },
                sqlscript::Item::Statement { line, text } => {
                    match sqlscript::judge(&text, &mut ctx) {
                        sqlscript::Verdict::Skip(why) => {
                            tracing::debug!(line, why, statement = %sqlscript::clip(&text), "left out");
                            done.skipped += 1;
                        }
                        sqlscript::Verdict::Refuse(r) => return Err(refused(line, &r)),
                        sqlscript::Verdict::Run => {
                            client.batch_execute(&text).await.map_err(|e| {
                                anyhow!(
                                    "line {line}: the server refused {}: {}; nothing was restored",
                                    sqlscript::clip(&text),
                                    db_error(&e)
                                )
                            })?;
                            done.statements += 1;
                        }
                        sqlscript::Verdict::CopyIn => {
                            if !split.idle() {
                                return Err(refused(
                                    line,
                                    "more SQL on the line of a COPY … FROM stdin",
                                ));
                            }
                            let fail = |e: tokio_postgres::Error| {
                                anyhow!(
                                    "line {line}: {} failed: {}; nothing was restored",
                                    sqlscript::clip(&text),
                                    db_error(&e)
                                )
                            };
                            let sink = client
                                .copy_in::<_, Bytes>(text.as_str())
                                .await
                                .map_err(fail)?;
                            futures::pin_mut!(sink);
                            let mut at_start = true;
                            while let Some(piece) = lines.copy_piece(&mut at_start).await? {
                                done.copy_bytes += piece.len() as u64;
                                sink.send(Bytes::from(piece)).await.map_err(fail)?;
                            }
                            sink.finish().await.map_err(fail)?;
                            done.copies += 1;
                        }
                    }
                }
            }
        }
    }
    split
        .finish(lines.line_no)
        .map_err(|r| refused(r.line, &r.reason))?;
    done.lines = lines.line_no;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    /// Encrypt with the real `openssl enc` CLI (both key derivations) and decrypt here.
    #[test]
    fn decrypts_what_openssl_enc_writes() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        let text: String = (0..20000).map(|i| format!("line {i}\n")).collect();
        gz.write_all(text.as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        for md in ["sha256", "md5"] {
            let mut child = Command::new("openssl")
                .args([
                    "enc",
                    "-aes-256-cbc",
                    "-salt",
                    "-md",
                    md,
                    "-pass",
                    "pass:k3y with space",
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("openssl is installed");
            let mut stdin = child.stdin.take().unwrap();
            let data = gz.clone();
            let w = std::thread::spawn(move || stdin.write_all(&data).unwrap());
            let out = child.wait_with_output().unwrap();
            w.join().unwrap();
            assert!(out.status.success());
            let mut back = String::new();
            decoder(Box::new(&out.stdout[..]), "k3y with space")
                .unwrap()
                .read_to_string(&mut back)
                .unwrap();
            assert_eq!(back, text, "{md}");
            let wrong = decoder(Box::new(&out.stdout[..]), "wrong key")
                .err()
                .unwrap();
            assert!(wrong.to_string().contains("does not decrypt"), "{wrong}");
            let mut truncated = Vec::new();
            let r = decoder(
                Box::new(&out.stdout[..out.stdout.len() - 7]),
                "k3y with space",
            )
            .unwrap()
            .read_to_end(&mut truncated);
            assert!(r.is_err(), "{md}: truncation detected");
        }
    }
}

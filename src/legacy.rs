//! Archives of LeafLock's old backup script, so existing buckets stay restorable:
//! `pg_dump --clean --if-exists --create | gzip | openssl enc -aes-256-cbc -salt
//! -pass pass:$BACKUP_ENCRYPTION_KEY`, stored as `leaflock_backup_YYYYmmdd_HHMMSS.sql.gz.enc`.
//!
//! Decryption follows `openssl enc` without `-pbkdf2`: the file starts with `Salted__`
//! and 8 bytes of salt; key and IV come from EVP_BytesToKey (one iteration) over the
//! password and salt, with SHA-256 (OpenSSL 1.1.0 and later) or MD5 (older). The
//! digest is recognised by which one decrypts the first block to a gzip header.
//!
//! The plain SQL carries `DROP DATABASE`, `CREATE DATABASE`, `ALTER DATABASE` and
//! `\connect`: [`SqlFilter`] removes those statements, so a restore goes only into the
//! database the operator named.

use aes::cipher::{BlockDecryptMut, KeyIvInit};
use anyhow::{bail, Context, Result};
use sha2::Digest;
use std::io::{BufRead, BufReader, Read};

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

/// Removes database-level statements from a plain pg_dump script: `DROP DATABASE`,
/// `CREATE DATABASE`, `ALTER DATABASE`, `COMMENT ON DATABASE` and `\connect`. Lines
/// inside `COPY ... FROM stdin` data are passed through untouched.
pub struct SqlFilter<R: Read> {
    inner: BufReader<R>,
    out: Vec<u8>,
    pos: usize,
    in_copy: bool,
    skipping: bool,
    pub removed: usize,
}

impl<R: Read> SqlFilter<R> {
    pub fn new(inner: R) -> SqlFilter<R> {
        SqlFilter {
            inner: BufReader::with_capacity(1 << 20, inner),
            out: Vec::new(),
            pos: 0,
            in_copy: false,
            skipping: false,
            removed: 0,
        }
    }

    fn keep(&mut self, line: &[u8]) -> bool {
        if self.in_copy {
            if line == b"\\.\n" || line == b"\\." {
                self.in_copy = false;
            }
            return true;
        }
        if self.skipping {
            self.skipping = !line.trim_ascii_end().ends_with(b";");
            return false;
        }
        let starts = |p: &[u8]| line.starts_with(p);
        if starts(b"\\connect ") || starts(b"\\c ") {
            self.removed += 1;
            return false;
        }
        if starts(b"DROP DATABASE ")
            || starts(b"CREATE DATABASE ")
            || starts(b"ALTER DATABASE ")
            || starts(b"COMMENT ON DATABASE ")
        {
            self.removed += 1;
            self.skipping = !line.trim_ascii_end().ends_with(b";");
            return false;
        }
        if starts(b"COPY ") && line.trim_ascii_end().ends_with(b"FROM stdin;") {
            self.in_copy = true;
        }
        true
    }
}

impl<R: Read> Read for SqlFilter<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.out.len() {
            self.out.clear();
            self.pos = 0;
            let mut line = Vec::new();
            while self.out.len() < 256 * 1024 {
                line.clear();
                if self.inner.read_until(b'\n', &mut line)? == 0 {
                    break;
                }
                if self.keep(&line) {
                    self.out.extend_from_slice(&line);
                }
            }
            if self.out.is_empty() {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.out.len() - self.pos);
        buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The whole decoding chain of an old archive: decrypt, gunzip, filter.
pub fn decoder<'a>(
    input: Box<dyn Read + Send + 'a>,
    password: &str,
) -> Result<Box<dyn Read + Send + 'a>> {
    let plain = Decrypt::new(input, password)?;
    Ok(Box::new(SqlFilter::new(flate2::read::MultiGzDecoder::new(
        plain,
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    #[test]
    fn filter_drops_database_statements_but_not_copy_data() {
        let sql = "DROP DATABASE IF EXISTS notes;\nCREATE DATABASE notes WITH TEMPLATE = template0;\n\
                   ALTER DATABASE notes OWNER TO notes;\n\\connect notes\nCREATE TABLE t (x text);\n\
                   COPY public.t (x) FROM stdin;\nDROP DATABASE inside data\n\\connect data\n\\.\nSELECT 1;\n";
        let mut out = String::new();
        let mut f = SqlFilter::new(sql.as_bytes());
        f.read_to_string(&mut out).unwrap();
        assert_eq!(
            out,
            "CREATE TABLE t (x text);\nCOPY public.t (x) FROM stdin;\nDROP DATABASE inside data\n\\connect data\n\\.\nSELECT 1;\n"
        );
        assert_eq!(f.removed, 4);
    }

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

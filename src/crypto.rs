//! Client-side encryption with age: the stream is encrypted before it leaves the host.
//!
//! Two modes: X25519 public-key recipients (the backup host never holds a key that can
//! read backups; restore hosts hold the identity), or a passphrase (age's scrypt
//! recipient) for deployments that already have `BACKUP_ENCRYPTION_KEY`.
//!
//! Fail closed: a recipient that does not parse, or an encryptor that does not pass its
//! self-test, stops the run before anything is uploaded. The manifest lists the
//! recipients' public keys, never a secret.

use crate::manifest::EncryptionInfo;
use age::secrecy::SecretString;
use anyhow::{anyhow, bail, Context, Result};
use std::io::{Read, Write};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

/// How backups are encrypted.
#[derive(Clone)]
pub enum Encryption {
    Recipients(Vec<age::x25519::Recipient>),
    Passphrase(SecretString),
}

impl std::fmt::Debug for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Encryption::Recipients(r) => write!(f, "age recipients ({})", r.len()),
            Encryption::Passphrase(_) => f.write_str("age passphrase (***)"),
        }
    }
}

/// Parse recipients given one by one and in files (one per line, `#` comments).
pub fn parse_recipients(
    listed: &[String],
    files: &[&Path],
) -> Result<Vec<age::x25519::Recipient>, String> {
    let mut all: Vec<(String, String)> = listed
        .iter()
        .map(|r| (r.trim().to_string(), "given".to_string()))
        .collect();
    for f in files {
        let text = std::fs::read_to_string(f)
            .map_err(|e| format!("cannot read recipients file {}: {e}", f.display()))?;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if !line.is_empty() && !line.starts_with('#') {
                all.push((line.to_string(), format!("{}:{}", f.display(), i + 1)));
            }
        }
    }
    let mut out = Vec::new();
    for (r, from) in all.into_iter().filter(|(r, _)| !r.is_empty()) {
        match age::x25519::Recipient::from_str(&r) {
            Ok(rec) => out.push(rec),
            Err(_) => {
                let shown: String = r.chars().take(12).collect();
                return Err(format!(
                    "recipient {shown:?}... ({from}) is not an age X25519 public key (age1...)"
                ));
            }
        }
    }
    Ok(out)
}

/// scrypt's work factor (N = 2^16) for backups encrypted with a passphrase. age's
/// default is calibrated to one second of this machine's CPU, and scrypt's memory is
/// 1 KiB x N: 512 MiB on the machines here (N = 2^19), 1 GiB on a faster node, which a
/// pod limited to 256 MiB cannot hold (it was OOM-killed before its first log line).
/// 2^16 takes 64 MiB and about a tenth of a second, for every encryption and every
/// decryption; the passphrase, LeafLock's BACKUP_ENCRYPTION_KEY, is a generated key, not
/// a word someone remembers. Backups of earlier versions keep the work factor they were
/// written with (age reads it from the header).
pub const PASSPHRASE_WORK_FACTOR: u8 = 16;

impl Encryption {
    /// What the manifest records: the scheme and public recipients, never a secret.
    pub fn info(&self) -> EncryptionInfo {
        match self {
            Encryption::Recipients(r) => EncryptionInfo {
                scheme: "age-x25519".into(),
                recipients: r.iter().map(|r| r.to_string()).collect(),
            },
            Encryption::Passphrase(_) => EncryptionInfo {
                scheme: "age-scrypt".into(),
                recipients: Vec::new(),
            },
        }
    }

    fn encryptor(&self) -> Result<age::Encryptor> {
        match self {
            Encryption::Recipients(r) => {
                age::Encryptor::with_recipients(r.iter().map(|r| r as &dyn age::Recipient))
                    .map_err(|e| anyhow!("cannot set up age encryption: {e}"))
            }
            Encryption::Passphrase(p) => {
                let mut r = age::scrypt::Recipient::new(p.clone());
                r.set_work_factor(PASSPHRASE_WORK_FACTOR);
                age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient))
                    .map_err(|e| anyhow!("cannot set up age encryption: {e}"))
            }
        }
    }

    /// Encrypt a sample and check the result: a well-formed age file for the configured
    /// recipients; with a passphrase, one that decrypts back to the sample.
    pub fn self_test(&self) -> Result<()> {
        let sample = b"leaflock-backup encryption self-test";
        let mut out = Vec::new();
        let mut w = self.encryptor()?.wrap_output(&mut out)?;
        w.write_all(sample)?;
        w.finish()?;
        if out.windows(sample.len()).any(|win| win == sample) {
            bail!("encryption self-test: the plaintext is visible in the output");
        }
        let dec =
            age::Decryptor::new(&out[..]).context("encryption self-test: unreadable age header")?;
        match self {
            Encryption::Passphrase(p) => {
                let id = age::scrypt::Identity::new(p.clone());
                let mut back = Vec::new();
                dec.decrypt(std::iter::once(&id as &dyn age::Identity))
                    .map_err(|e| anyhow!("encryption self-test: {e}"))?
                    .read_to_end(&mut back)?;
                if back != sample {
                    bail!("encryption self-test: decryption gave different bytes");
                }
            }
            Encryption::Recipients(_) => {
                if dec.is_scrypt() {
                    bail!("encryption self-test: passphrase header for public-key recipients");
                }
            }
        }
        Ok(())
    }

    /// `check`: a sample encrypted as backups are, decrypted with `keys` (the drill's
    /// identities or passphrase) back to the same bytes.
    pub fn round_trip(&self, keys: &Keys) -> Result<()> {
        let sample = b"leaflock-backup encryption round trip";
        let mut out = Vec::new();
        let mut w = self.encryptor()?.wrap_output(&mut out)?;
        w.write_all(sample)?;
        w.finish()?;
        let mut back = Vec::new();
        keys.decrypt(Box::new(std::io::Cursor::new(out)))?
            .read_to_end(&mut back)
            .context("decrypting the sample")?;
        if back != sample {
            bail!("the sample decrypted to different bytes");
        }
        Ok(())
    }

    /// A streaming encryptor whose output is collected in memory chunk by chunk.
    pub fn stream(&self) -> Result<EncryptStream> {
        let buf = SharedBuf::default();
        let writer = self.encryptor()?.wrap_output(buf.clone())?;
        Ok(EncryptStream { writer, buf })
    }
}

/// A `Write` into a buffer shared with its owner, drained after each chunk.
#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Encrypts chunk by chunk; each call returns the ciphertext produced so far.
pub struct EncryptStream {
    writer: age::stream::StreamWriter<SharedBuf>,
    buf: SharedBuf,
}

impl EncryptStream {
    pub fn write(&mut self, plain: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        self.writer.write_all(plain)?;
        out.append(&mut self.buf.0.lock().unwrap());
        Ok(())
    }

    pub fn finish(self, out: &mut Vec<u8>) -> std::io::Result<()> {
        let buf = self.buf.clone();
        self.writer.finish()?;
        out.append(&mut buf.0.lock().unwrap());
        Ok(())
    }
}

/// What can decrypt backups: identity files and/or a passphrase.
#[derive(Clone, Default)]
pub struct Keys {
    identity_files: Vec<std::path::PathBuf>,
    passphrase: Option<SecretString>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Keys {{ identity_files: {:?}, passphrase: {} }}",
            self.identity_files,
            if self.passphrase.is_some() {
                "***"
            } else {
                "none"
            }
        )
    }
}

impl Keys {
    pub fn new(identity_files: Vec<std::path::PathBuf>, passphrase: Option<String>) -> Keys {
        Keys {
            identity_files,
            passphrase: passphrase.filter(|p| !p.is_empty()).map(SecretString::from),
        }
    }

    /// The passphrase, for the old script's archives (openssl takes it as bytes).
    pub fn passphrase(&self) -> Option<String> {
        use age::secrecy::ExposeSecret;
        self.passphrase
            .as_ref()
            .map(|p| p.expose_secret().to_string())
    }

    pub fn is_empty(&self) -> bool {
        self.identity_files.is_empty() && self.passphrase.is_none()
    }

    /// Check identity files can be read and parsed (before any work).
    pub fn check(&self) -> Result<(), String> {
        for f in &self.identity_files {
            let file = age::IdentityFile::from_file(f.display().to_string())
                .map_err(|e| format!("cannot read identity file {}: {e}", f.display()))?;
            let ids = file
                .into_identities()
                .map_err(|e| format!("identity file {}: {e}", f.display()))?;
            if ids.is_empty() {
                return Err(format!("identity file {} holds no identity", f.display()));
            }
        }
        Ok(())
    }

    /// A decrypting reader over an age stream.
    pub fn decrypt<'a>(
        &self,
        input: Box<dyn Read + Send + 'a>,
    ) -> Result<Box<dyn Read + Send + 'a>> {
        if self.is_empty() {
            bail!(
                "the backup is encrypted: give --identity / LEAFLOCK_BACKUP_AGE_IDENTITY_FILE \
                 (or the passphrase in BACKUP_ENCRYPTION_KEY)"
            );
        }
        let dec = age::Decryptor::new(std::io::BufReader::new(input))
            .map_err(|e| anyhow!("not a readable age file: {e}"))?;
        let reader = if dec.is_scrypt() {
            let Some(p) = &self.passphrase else {
                bail!("the backup is encrypted with a passphrase: set BACKUP_ENCRYPTION_KEY");
            };
            let id = age::scrypt::Identity::new(p.clone());
            dec.decrypt(std::iter::once(&id as &dyn age::Identity))
        } else {
            let mut ids: Vec<Box<dyn age::Identity + Send + Sync>> = Vec::new();
            for f in &self.identity_files {
                ids.extend(
                    age::IdentityFile::from_file(f.display().to_string())
                        .map_err(|e| anyhow!("cannot read identity file {}: {e}", f.display()))?
                        .into_identities()
                        .map_err(|e| anyhow!("identity file {}: {e}", f.display()))?,
                );
            }
            dec.decrypt(ids.iter().map(|i| i.as_ref() as &dyn age::Identity))
        };
        let reader = reader.map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => anyhow!(
                "none of the given identities can decrypt this backup (wrong identity file or passphrase)"
            ),
            other => anyhow!("cannot decrypt the backup: {other}"),
        })?;
        Ok(Box::new(reader))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encrypt(enc: &Encryption, data: &[u8]) -> Vec<u8> {
        let mut s = enc.stream().unwrap();
        let mut out = Vec::new();
        for c in data.chunks(7777) {
            s.write(c, &mut out).unwrap();
        }
        s.finish(&mut out).unwrap();
        out
    }

    #[test]
    fn recipients_round_trip_and_wrong_identity_is_refused() {
        let id = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let dir = tempfile::tempdir().unwrap();
        let id_file = dir.path().join("id.txt");
        let other_file = dir.path().join("other.txt");
        use age::secrecy::ExposeSecret;
        std::fs::write(&id_file, id.to_string().expose_secret()).unwrap();
        std::fs::write(&other_file, other.to_string().expose_secret()).unwrap();
        let recipients = parse_recipients(&[id.to_public().to_string()], &[]).unwrap();
        let enc = Encryption::Recipients(recipients);
        enc.self_test().unwrap();
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let sealed = encrypt(&enc, &data);
        assert!(!sealed.windows(16).any(|w| w == &data[4000..4016]));
        let mut back = Vec::new();
        Keys::new(vec![id_file], None)
            .decrypt(Box::new(&sealed[..]))
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        let err = Keys::new(vec![other_file], None)
            .decrypt(Box::new(&sealed[..]))
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("none of the given identities"),
            "{err}"
        );
        assert_eq!(enc.info().recipients, vec![id.to_public().to_string()]);
    }

    #[test]
    fn passphrase_round_trip() {
        let enc = Encryption::Passphrase(SecretString::from("correct horse".to_string()));
        enc.self_test().unwrap();
        let sealed = encrypt(&enc, b"hello notes");
        let mut back = Vec::new();
        Keys::new(vec![], Some("correct horse".into()))
            .decrypt(Box::new(&sealed[..]))
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, b"hello notes");
        assert!(Keys::new(vec![], Some("wrong".into()))
            .decrypt(Box::new(&sealed[..]))
            .is_err());
        assert_eq!(enc.info().scheme, "age-scrypt");
        assert!(enc.info().recipients.is_empty());
        // The work factor in the header is ours, not age's calibrated one (2^19 and
        // 512 MiB of memory on the machines here, more than a pod's whole limit).
        let header = String::from_utf8_lossy(&sealed[..sealed.len().min(200)]).to_string();
        let stanza = header
            .lines()
            .find(|l| l.starts_with("-> scrypt "))
            .unwrap_or_else(|| panic!("no scrypt stanza in {header:?}"));
        assert_eq!(
            stanza.rsplit(' ').next(),
            Some(super::PASSPHRASE_WORK_FACTOR.to_string().as_str()),
            "{stanza}"
        );
    }

    #[test]
    fn bad_recipients_are_named() {
        let e = parse_recipients(&["age1notakey".into()], &[]).unwrap_err();
        assert!(e.contains("age1notakey"), "{e}");
        let e = parse_recipients(&[], &[Path::new("/nonexistent/recipients")]).unwrap_err();
        assert!(e.contains("cannot read recipients file"), "{e}");
    }
}

//! Who made a backup: Ed25519 signatures on manifests and drill records, and the trust
//! decision every reading command takes before it uses a backup.
//!
//! Keys. A signing key is a PKCS#8 PEM file (`-----BEGIN PRIVATE KEY-----`, what
//! `leaflock-backup keygen` writes and `openssl genpkey -algorithm ed25519` makes). A
//! public key is one line, `ed25519:<base64 of its 32 bytes>` (or a file holding that
//! line or an SPKI PEM `-----BEGIN PUBLIC KEY-----`). Its fingerprint is the first 16 hex
//! digits of the sha256 of its 32 bytes. The private key never leaves this module: it
//! is not `Debug`, not serialised, never logged.
//!
//! What is signed. A document (manifest or drill record) is a JSON object; its
//! `signature` member holds `{algorithm, key, public_key, value}`. The signed message
//! is `leaflock-backup/v1 <kind>\n` followed by the document without its `signature`
//! member in canonical form: object keys sorted, no whitespace, serde_json's number and
//! string forms. So the object's sha256 and every field, including fields a newer
//! version adds, are covered; nothing can be added unsigned; and the kind prefix keeps
//! a manifest's signature from passing for a drill record's. A verifier parses the raw
//! bytes it read back and recomputes the same canonical form (`float_roundtrip` makes
//! the numbers exact).
//!
//! Trust. [`seal_of`] checks a document against the public key it names (no
//! configuration needed, so `catalog::scan` can do it); [`Seal::trust`] then says
//! whether that key is one the operator trusts (`--trusted-key`). [`TrustPolicy::admit`]
//! is the gate restore, drill and verify pass a backup through.

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::Path;

/// The member of a signed document that carries its signature.
pub const MEMBER: &str = "signature";
const ALGORITHM: &str = "ed25519";
const PUBLIC_PREFIX: &str = "ed25519:";

/// What a signature is for: part of the signed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocKind {
    Manifest,
    DrillRecord,
}

impl DocKind {
    fn label(self) -> &'static str {
        match self {
            DocKind::Manifest => "manifest",
            DocKind::DrillRecord => "drill-record",
        }
    }
}

/// A public key the operator trusts (or one a document names).
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// `ed25519:<base64>`, or an SPKI PEM block.
    pub fn parse(text: &str) -> Result<PublicKey, String> {
        let t = text.trim();
        if let Some(b64) = t.strip_prefix(PUBLIC_PREFIX) {
            let raw = B64
                .decode(b64.trim())
                .map_err(|e| format!("not base64 after {PUBLIC_PREFIX}: {e}"))?;
            let bytes: [u8; 32] = raw
                .as_slice()
                .try_into()
                .map_err(|_| format!("an Ed25519 public key has 32 bytes, not {}", raw.len()))?;
            return VerifyingKey::from_bytes(&bytes)
                .map(PublicKey)
                .map_err(|_| "not a valid Ed25519 public key".to_string());
        }
        if t.starts_with("-----BEGIN PUBLIC KEY-----") {
            return VerifyingKey::from_public_key_pem(t)
                .map(PublicKey)
                .map_err(|e| format!("not an Ed25519 public key in PEM: {e}"));
        }
        Err(format!(
            "expected {PUBLIC_PREFIX}<base64> (as `leaflock-backup keygen` prints it), a PEM public key, \
             or a file holding one"
        ))
    }

    /// A value of `--trusted-key`: the key itself, or a file that holds it.
    pub fn from_arg(arg: &str) -> Result<PublicKey, String> {
        let a = arg.trim();
        if a.starts_with(PUBLIC_PREFIX) || a.starts_with("-----BEGIN") {
            return PublicKey::parse(a);
        }
        let text = std::fs::read_to_string(a).map_err(|e| format!("cannot read {a}: {e}"))?;
        PublicKey::parse(&text).map_err(|e| format!("{a}: {e}"))
    }

    pub fn fingerprint(&self) -> String {
        hex::encode(&Sha256::digest(self.0.as_bytes())[..8])
    }

    /// `ed25519:<base64>`: the one-line form.
    pub fn to_text(&self) -> String {
        format!("{PUBLIC_PREFIX}{}", B64.encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

/// The key `run` and `drill` sign with. Not `Clone`; `Debug` shows only the fingerprint.
pub struct Signer25519 {
    key: SigningKey,
}

impl fmt::Debug for Signer25519 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signer25519({})", self.public().fingerprint())
    }
}

impl Signer25519 {
    /// Read a PKCS#8 PEM (or DER) private key file.
    pub fn load(path: &Path) -> Result<Signer25519, String> {
        let data =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let key = match std::str::from_utf8(&data) {
            Ok(text) if text.contains("-----BEGIN") => SigningKey::from_pkcs8_pem(text.trim()),
            _ => SigningKey::from_pkcs8_der(&data),
        }
        .map_err(|_| {
            format!(
                "{} is not an Ed25519 private key (PKCS#8 PEM, as `leaflock-backup keygen` or \
                 `openssl genpkey -algorithm ed25519` writes it)",
                path.display()
            )
        })?;
        Ok(Signer25519 { key })
    }

    pub fn generate() -> Signer25519 {
        let seed: [u8; 32] = rand::random();
        Signer25519 {
            key: SigningKey::from_bytes(&seed),
        }
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.key.verifying_key())
    }

    /// The private key as PKCS#8 PEM.
    pub fn to_pem(&self) -> Result<String> {
        let pem = self
            .key
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(|e| anyhow!("cannot encode the key: {e}"))?;
        Ok(pem.to_string())
    }

    /// Sign a JSON document: any `signature` member it had is replaced. Returns the
    /// document, pretty-printed, with its new `signature` member.
    pub fn seal(&self, json: &[u8], kind: DocKind) -> Result<Vec<u8>> {
        let mut doc: Value = serde_json::from_slice(json).context("signing: not JSON")?;
        let obj = doc
            .as_object_mut()
            .ok_or_else(|| anyhow!("signing: not a JSON object"))?;
        obj.remove(MEMBER);
        let msg = message(&Value::Object(obj.clone()), kind);
        let sig = self.key.sign(&msg);
        let public = self.public();
        obj.insert(
            MEMBER.into(),
            serde_json::json!({
                "algorithm": ALGORITHM,
                "key": public.fingerprint(),
                "public_key": public.to_text(),
                "value": B64.encode(sig.to_bytes()),
            }),
        );
        let mut out = serde_json::to_vec_pretty(&doc)?;
        out.push(b'\n');
        Ok(out)
    }
}

/// The signed message: a kind prefix, then the document (without `signature`) in
/// canonical form.
fn message(doc: &Value, kind: DocKind) -> Vec<u8> {
    let mut out = format!("leaflock-backup/v1 {}\n", kind.label()).into_bytes();
    canonical(doc, &mut out);
    out
}

/// JSON with sorted object keys and no whitespace.
fn canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, k).expect("strings serialise");
                out.push(b':');
                canonical(&m[k.as_str()], out);
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(x, out);
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar).expect("scalars serialise"),
    }
}

/// What a document's signature says by itself, before asking whether its key is trusted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Seal {
    /// No `signature` member.
    Unsigned,
    /// A valid signature by the key it names.
    Valid {
        key: String,
        #[serde(skip)]
        public: Box<PublicKeyBytes>,
    },
    /// A signature that does not verify, or is malformed.
    Invalid { key: Option<String>, error: String },
}

/// Raw public key bytes, kept beside a valid seal to compare with the trusted keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKeyBytes(pub [u8; 32]);

/// Check a document read back (raw bytes, as stored) against the key it names.
pub fn seal_of(json: &[u8], kind: DocKind) -> Seal {
    let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(json) else {
        return Seal::Invalid {
            key: None,
            error: "not a JSON object".into(),
        };
    };
    let Some(sig) = obj.remove(MEMBER) else {
        return Seal::Unsigned;
    };
    let claimed = sig.get("key").and_then(Value::as_str).map(str::to_string);
    let invalid = |error: &str| Seal::Invalid {
        key: claimed.clone(),
        error: error.to_string(),
    };
    if sig.get("algorithm").and_then(Value::as_str) != Some(ALGORITHM) {
        return invalid("unknown signature algorithm");
    }
    let Some(public) = sig
        .get("public_key")
        .and_then(Value::as_str)
        .and_then(|p| PublicKey::parse(p).ok())
    else {
        return invalid("no valid public_key in the signature");
    };
    if claimed.as_deref() != Some(public.fingerprint().as_str()) {
        return invalid("the signature's key fingerprint does not match its public key");
    }
    let Some(value) = sig
        .get("value")
        .and_then(Value::as_str)
        .and_then(|v| B64.decode(v).ok())
        .and_then(|v| Signature::from_slice(&v).ok())
    else {
        return invalid("the signature value is not 64 bytes of base64");
    };
    let msg = message(&Value::Object(obj), kind);
    match public.0.verify_strict(&msg, &value) {
        Ok(()) => Seal::Valid {
            key: public.fingerprint(),
            public: Box::new(PublicKeyBytes(public.0.to_bytes())),
        },
        Err(_) => invalid("the signature does not match the content"),
    }
}

/// A backup's standing given the operator's trusted keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Validly signed by a trusted key.
    Signed(String),
    /// Validly signed, but no trusted key is configured to check it against.
    Unchecked(String),
    /// Validly signed by a key that is not trusted.
    UntrustedKey(String),
    Unsigned,
    BadSignature(String),
}

impl Trust {
    pub fn is_trusted(&self) -> bool {
        matches!(self, Trust::Signed(_))
    }

    /// One short phrase for `list` and messages.
    pub fn describe(&self) -> String {
        match self {
            Trust::Signed(k) => format!("signed by {k}"),
            Trust::Unchecked(k) => format!("signed by {k} (no --trusted-key to check)"),
            Trust::UntrustedKey(k) => format!("signed by an untrusted key {k}"),
            Trust::Unsigned => "unsigned".into(),
            Trust::BadSignature(why) => format!("BAD SIGNATURE ({why})"),
        }
    }

    /// The column of `list`: short.
    pub fn column(&self) -> String {
        match self {
            Trust::Signed(k) => format!("signed {k}"),
            Trust::Unchecked(k) => format!("unchecked {k}"),
            Trust::UntrustedKey(k) => format!("UNTRUSTED {k}"),
            Trust::Unsigned => "unsigned".into(),
            Trust::BadSignature(_) => "BAD SIGNATURE".into(),
        }
    }

    /// For `list --json`.
    pub fn to_json(&self) -> Value {
        let (status, key) = match self {
            Trust::Signed(k) => ("signed", Some(k)),
            Trust::Unchecked(k) => ("signed_unchecked", Some(k)),
            Trust::UntrustedKey(k) => ("untrusted_key", Some(k)),
            Trust::Unsigned => ("unsigned", None),
            Trust::BadSignature(_) => ("bad_signature", None),
        };
        let mut v = serde_json::json!({ "status": status, "text": self.describe() });
        if let Some(k) = key {
            v["key"] = Value::String(k.clone());
        }
        v
    }
}

impl Seal {
    pub fn trust(&self, keys: &[PublicKey]) -> Trust {
        match self {
            Seal::Unsigned => Trust::Unsigned,
            Seal::Invalid { error, .. } => Trust::BadSignature(error.clone()),
            Seal::Valid { key, public } => {
                if keys.is_empty() {
                    Trust::Unchecked(key.clone())
                } else if keys.iter().any(|k| k.0.as_bytes() == &public.0) {
                    Trust::Signed(key.clone())
                } else {
                    Trust::UntrustedKey(key.clone())
                }
            }
        }
    }
}

/// The operator's trust configuration for one command.
#[derive(Debug, Clone, Default)]
pub struct TrustPolicy {
    /// `--trusted-key`, plus the run's own signing key.
    pub keys: Vec<PublicKey>,
    /// `--allow-unsigned KEY`: the one backup that may be used without a trusted signature.
    pub allow_unsigned: Option<String>,
}

impl TrustPolicy {
    /// Trusted keys are configured: only trusted backups are used (or `latest`).
    pub fn enforced(&self) -> bool {
        !self.keys.is_empty()
    }

    pub fn trust(&self, seal: &Seal) -> Trust {
        seal.trust(&self.keys)
    }

    /// Whether `latest` and retention may count this backup.
    pub fn counts(&self, trust: &Trust) -> bool {
        match trust {
            Trust::Signed(_) => true,
            Trust::Unsigned | Trust::Unchecked(_) => !self.enforced(),
            Trust::UntrustedKey(_) | Trust::BadSignature(_) => false,
        }
    }

    /// The gate before a backup is restored, drilled or verified: `Ok` to go on (with a
    /// warning when it goes on untrusted), an error (exit 1) to refuse.
    pub fn admit(&self, key: &str, trust: &Trust, action: &str) -> Result<()> {
        if trust.is_trusted() {
            tracing::info!(key, signature = %trust.describe(), "{key} is {}", trust.describe());
            return Ok(());
        }
        if self.allow_unsigned.as_deref() == Some(key) {
            tracing::warn!(
                key,
                signature = %trust.describe(),
                "{key} is {}: going on ONLY because --allow-unsigned names it; nothing proves who made it, \
                 and its archive runs as SQL on the target",
                trust.describe()
            );
            return Ok(());
        }
        if !self.enforced() && matches!(trust, Trust::Unsigned | Trust::Unchecked(_)) {
            tracing::warn!(
                key,
                signature = %trust.describe(),
                "no --trusted-key is configured: {key} is not authenticated (anyone who can write to the \
                 destination could have made it)"
            );
            return Ok(());
        }
        bail!(
            "{key} is {}: refusing to {action} it (anyone who can write to the destination could have made it). \
             If you know where it came from, name it with --allow-unsigned {key}",
            trust.describe()
        )
    }
}

/// `leaflock-backup keygen`: write a new private key to `out` (mode 0600, never
/// overwriting) and its public key to `out.pub`; returns the public key.
pub fn keygen(out: &Path) -> Result<PublicKey> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = Signer25519::generate();
    let pem = key.to_pem()?;
    let public = key.public();
    let pub_path = {
        let mut p = out.as_os_str().to_owned();
        p.push(".pub");
        std::path::PathBuf::from(p)
    };
    let create = |path: &Path, mode: u32| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .with_context(|| format!("cannot create {}", path.display()))
    };
    let mut f = create(out, 0o600)?;
    f.write_all(pem.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", out.display()))?;
    let written = create(&pub_path, 0o644).and_then(|mut f| {
        f.write_all(format!("{}\n", public.to_text()).as_bytes())
            .and_then(|()| f.sync_all())
            .with_context(|| format!("cannot write {}", pub_path.display()))
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(out);
        return Err(e);
    }
    Ok(public)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"{"format_version":1,"object_key":"k","sha256":"aa","duration_seconds":0.1,
        "tables":[{"schema":"public","name":"notes","rows":3}],"encryption":null}"#;

    fn edited(json: &[u8], f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Vec<u8> {
        let mut v: Value = serde_json::from_slice(json).unwrap();
        f(v.as_object_mut().unwrap());
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn a_sealed_document_verifies_and_any_change_breaks_it() {
        let k = Signer25519::generate();
        let signed = k.seal(DOC.as_bytes(), DocKind::Manifest).unwrap();
        let fp = k.public().fingerprint();
        let seal = seal_of(&signed, DocKind::Manifest);
        assert!(
            matches!(&seal, Seal::Valid { key, .. } if *key == fp),
            "{seal:?}"
        );
        assert_eq!(seal.trust(&[k.public()]), Trust::Signed(fp.clone()));
        assert_eq!(seal.trust(&[]), Trust::Unchecked(fp.clone()));
        let other = Signer25519::generate();
        assert_eq!(seal.trust(&[other.public()]), Trust::UntrustedKey(fp));

        // Reformatting and reordering keep it valid: it is the content that is signed.
        let compact = edited(&signed, |_| {});
        assert!(matches!(
            seal_of(&compact, DocKind::Manifest),
            Seal::Valid { .. }
        ));
        // A changed sha256, an added field, a removed field: all break it.
        for bad in [
            edited(&signed, |o| {
                o.insert("sha256".into(), "bb".into());
            }),
            edited(&signed, |o| {
                o.insert("added_later".into(), true.into());
            }),
            edited(&signed, |o| {
                o.remove("tables");
            }),
        ] {
            assert!(
                matches!(seal_of(&bad, DocKind::Manifest), Seal::Invalid { .. }),
                "{}",
                String::from_utf8_lossy(&bad)
            );
        }
        // A manifest's signature does not pass for a drill record's.
        assert!(matches!(
            seal_of(&signed, DocKind::DrillRecord),
            Seal::Invalid { .. }
        ));
        // Unsigned and garbage.
        assert_eq!(seal_of(DOC.as_bytes(), DocKind::Manifest), Seal::Unsigned);
        assert!(matches!(
            seal_of(b"[1]", DocKind::Manifest),
            Seal::Invalid { .. }
        ));
    }

    #[test]
    fn numbers_survive_the_round_trip_through_text() {
        // The verifier recomputes the canonical form from the parsed text: every f64
        // must print the same after parsing (serde_json's float_roundtrip).
        let k = Signer25519::generate();
        for _ in 0..300 {
            let x = f64::from_bits(rand::random::<u64>());
            let x = if x.is_finite() {
                x
            } else {
                rand::random::<f64>() * 1e6
            };
            let doc = serde_json::to_vec(
                &serde_json::json!({ "duration_seconds": x, "n": rand::random::<u64>() }),
            )
            .unwrap();
            let signed = k.seal(&doc, DocKind::Manifest).unwrap();
            assert!(
                matches!(seal_of(&signed, DocKind::Manifest), Seal::Valid { .. }),
                "{x:e}"
            );
        }
    }

    #[test]
    fn a_forged_signature_naming_a_trusted_key_is_bad() {
        let trusted = Signer25519::generate();
        let forger = Signer25519::generate();
        let signed = forger.seal(DOC.as_bytes(), DocKind::Manifest).unwrap();
        // The forger claims the trusted key: fingerprint and public key replaced.
        let forged = edited(&signed, |o| {
            let s = o.get_mut(MEMBER).unwrap();
            s["key"] = trusted.public().fingerprint().into();
            s["public_key"] = trusted.public().to_text().into();
        });
        let seal = seal_of(&forged, DocKind::Manifest);
        assert!(matches!(seal, Seal::Invalid { .. }), "{seal:?}");
        assert!(matches!(
            seal.trust(&[trusted.public()]),
            Trust::BadSignature(_)
        ));
    }

    #[test]
    fn keys_round_trip_through_their_text_forms() {
        let k = Signer25519::generate();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        let public = keygen(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let loaded = Signer25519::load(&path).unwrap();
        assert_eq!(loaded.public(), public);
        let pub_file = dir.path().join("signing.key.pub");
        assert_eq!(
            PublicKey::from_arg(pub_file.to_str().unwrap()).unwrap(),
            public
        );
        assert_eq!(PublicKey::parse(&public.to_text()).unwrap(), public);
        assert!(keygen(&path).is_err(), "never overwrites a key");
        let pem = k.to_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(PublicKey::parse("ed25519:AAAA").is_err());
        assert!(PublicKey::from_arg("/nonexistent/key.pub").is_err());
        std::fs::write(dir.path().join("junk"), "not a key").unwrap();
        assert!(Signer25519::load(&dir.path().join("junk")).is_err());
    }

    #[test]
    fn the_gate_refuses_untrusted_backups_unless_named() {
        let k = Signer25519::generate();
        let strict = TrustPolicy {
            keys: vec![k.public()],
            allow_unsigned: None,
        };
        assert!(strict
            .admit("a", &Trust::Signed("x".into()), "drill")
            .is_ok());
        assert!(strict.admit("a", &Trust::Unsigned, "drill").is_err());
        assert!(strict
            .admit("a", &Trust::BadSignature("x".into()), "drill")
            .is_err());
        let named = TrustPolicy {
            allow_unsigned: Some("a".into()),
            ..strict.clone()
        };
        assert!(named.admit("a", &Trust::Unsigned, "drill").is_ok());
        assert!(named.admit("b", &Trust::Unsigned, "drill").is_err());
        let open = TrustPolicy::default();
        assert!(open.admit("a", &Trust::Unsigned, "drill").is_ok());
        assert!(open
            .admit("a", &Trust::BadSignature("x".into()), "drill")
            .is_err());
        assert!(!strict.counts(&Trust::Unsigned));
        assert!(open.counts(&Trust::Unsigned));
        assert!(!open.counts(&Trust::BadSignature("x".into())));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// A document read back is a stranger's: any bytes, any edit of a signed one,
        /// never a panic, and an edit that keeps the JSON never leaves it valid.
        #[test]
        fn seals_of_arbitrary_or_edited_documents_never_panic(
            data in proptest::collection::vec(any::<u8>(), 0..256),
            at in 0usize..400,
            b in any::<u8>(),
        ) {
            let _ = seal_of(&data, DocKind::Manifest);
            let k = Signer25519::generate();
            let signed = k.seal(br#"{"sha256":"aa","rows":[1,2,3],"x":0.5}"#, DocKind::Manifest).unwrap();
            let mut edited = signed.clone();
            let i = at % edited.len();
            edited[i] = b;
            let seal = seal_of(&edited, DocKind::Manifest);
            if edited != signed {
                let same = serde_json::from_slice::<Value>(&edited).ok()
                    == serde_json::from_slice::<Value>(&signed).ok();
                if !same {
                    prop_assert!(!matches!(seal, Seal::Valid { .. }), "{}", String::from_utf8_lossy(&edited));
                }
            }
        }
    }
}

//! The manifest: the commit marker of a backup, written last, beside its object.
//!
//! A backup exists only when its manifest exists. The manifest records what was
//! dumped (server, pg_dump, exact per-table row counts from the dump's snapshot) and
//! what was stored (compression, encryption recipients' fingerprints, byte counts,
//! sha256 of the stored object), so that `verify`, `restore` and the drill can check a
//! backup exactly. It never holds a secret.

pub use crate::archive::{DigestAlgorithm, TableDigest};
use crate::database::TableCount;
use crate::scope::{self, Scope};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const FORMAT_VERSION: u32 = 1;
pub const OBJECT_STEM: &str = "leaflock_backup_";
pub const MANIFEST_SUFFIX: &str = ".manifest.json";
pub const DRILL_SUFFIX: &str = ".drill.json";
pub const SUSPECT_SUFFIX: &str = ".suspect.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub tool: String,
    pub tool_version: String,
    pub run_id: String,
    /// Full key of the backup object, as `list` prints it.
    pub object_key: String,
    pub database: String,
    /// The operator's label for the server (`--instance`), when two servers back up
    /// databases of the same name into one destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub server_version: String,
    pub server_version_num: u32,
    pub pg_dump_version: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_seconds: f64,
    pub compression: CompressionInfo,
    /// `None` when the object is not encrypted.
    pub encryption: Option<EncryptionInfo>,
    /// Bytes pg_dump wrote (the custom-format archive, uncompressed).
    pub uncompressed_bytes: u64,
    /// Bytes of the stored object.
    pub stored_bytes: u64,
    /// Lowercase hex sha256 of the stored object.
    pub sha256: String,
    /// The snapshot pg_dump used (`pg_export_snapshot()`).
    pub snapshot: String,
    /// Exact row count of every table, counted in the dump's snapshot.
    pub tables: Vec<TableCount>,
    /// Extensions installed in the database when it was dumped.
    #[serde(default)]
    pub extensions: Vec<String>,
    /// Indexes (`schema.name`) present when it was dumped.
    #[serde(default)]
    pub indexes: Vec<String>,
    /// Per-table digests of the rows, read from the archive as it streamed; absent in
    /// backups made before digests existed (their drills check row counts only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
}

/// What the archive's rows hash to, table by table (`archive.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Content {
    /// How `digest` is computed: the name of a [`DigestAlgorithm`] (`blake3-sum` for
    /// new backups, `sha256-sum` before it). Kept as read, so that a name this version
    /// does not know is reported, not a manifest that cannot be read.
    pub algorithm: String,
    /// The archive format version pg_dump wrote.
    pub archive_version: String,
    /// The dump's client encoding: COPY text is compared in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    /// Every table whose data the archive holds (leaf partitions on their own).
    pub tables: Vec<TableDigest>,
}

impl Content {
    pub fn from_archive(a: crate::archive::Archive) -> Content {
        Content {
            algorithm: a.algorithm.name().into(),
            archive_version: a.version,
            encoding: a.encoding,
            tables: a.tables,
        }
    }

    /// The algorithm `algorithm` names, if this version knows it (the name is
    /// untrusted: it selects one of the known algorithms or none).
    pub fn digest_algorithm(&self) -> Option<DigestAlgorithm> {
        DigestAlgorithm::from_name(&self.algorithm)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompressionInfo {
    pub algorithm: String,
    pub level: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncryptionInfo {
    pub scheme: String,
    /// Public recipients (or their fingerprints); never a secret.
    pub recipients: Vec<String>,
}

/// The key of a new backup object:
/// `<prefix><scope>/YYYY/MM/DD/leaflock_backup_<ts>_<run>.dump.<ext>` (see `scope.rs`);
/// `run` is the random tail of the run id, so two runs in one second never collide.
pub fn object_key(
    prefix: &str,
    scope: &Scope,
    at: DateTime<Utc>,
    run: &str,
    extension: &str,
) -> String {
    format!(
        "{}{}/{OBJECT_STEM}{}_{run}.dump.{extension}",
        scope::root(prefix, scope),
        at.format("%Y/%m/%d"),
        at.format("%Y%m%dT%H%M%SZ")
    )
}

/// The common stem of an object and its companions: the key without `.dump...`.
pub fn stem(object_key: &str) -> &str {
    match object_key.rfind(".dump.") {
        Some(i) => &object_key[..i],
        None => object_key,
    }
}

/// The manifest key beside an object key: the `.dump...` suffix replaced by
/// `.manifest.json`.
pub fn manifest_key(object_key: &str) -> String {
    format!("{}{MANIFEST_SUFFIX}", stem(object_key))
}

/// The suspect record beside an object key (`.suspect.json`): why the regression gate
/// held this backup, and whether an operator accepted it.
pub fn suspect_key(object_key: &str) -> String {
    format!("{}{SUSPECT_SUFFIX}", stem(object_key))
}

/// The drill record beside an object key (`.drill.json`): the outcome of the latest
/// restore drill of that backup.
pub fn drill_key(object_key: &str) -> String {
    format!("{}{DRILL_SUFFIX}", stem(object_key))
}

impl Manifest {
    /// The database (and instance) this manifest says it is a backup of.
    pub fn scope(&self) -> Scope {
        Scope::new(self.database.clone(), self.instance.clone())
    }

    /// Whether this manifest says it is a backup of `scope`.
    pub fn is_of(&self, scope: &Scope) -> bool {
        self.database == scope.database && self.instance == scope.instance
    }
}

impl Manifest {
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serialises");
        v.push(b'\n');
        v
    }

    pub fn from_json(data: &[u8]) -> Result<Manifest, String> {
        let m: Manifest =
            serde_json::from_slice(data).map_err(|e| format!("not a valid manifest: {e}"))?;
        if m.format_version > FORMAT_VERSION {
            return Err(format!(
                "manifest format {} is newer than this tool understands ({FORMAT_VERSION})",
                m.format_version
            ));
        }
        if m.sha256.len() != 64 || !m.sha256.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
            return Err("manifest sha256 is not 64 lowercase hex digits".into());
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn keys_follow_the_layout() {
        let at = Utc.with_ymd_and_hms(2026, 3, 7, 2, 0, 9).unwrap();
        let k = object_key("backups/", &Scope::new("notes", None), at, "a1b2c3", "gz");
        assert_eq!(
            k,
            "backups/notes/2026/03/07/leaflock_backup_20260307T020009Z_a1b2c3.dump.gz"
        );
        assert_eq!(
            manifest_key(&k),
            "backups/notes/2026/03/07/leaflock_backup_20260307T020009Z_a1b2c3.manifest.json"
        );
        let k = object_key(
            "",
            &Scope::new("notes", Some("prod".into())),
            at,
            "a1b2c3",
            "zst.age",
        );
        assert_eq!(
            k,
            "prod@notes/2026/03/07/leaflock_backup_20260307T020009Z_a1b2c3.dump.zst.age"
        );
        assert_eq!(
            manifest_key("x/leaflock_backup_1.dump.gz.age"),
            "x/leaflock_backup_1.manifest.json"
        );
    }

    #[test]
    fn round_trips_and_rejects_tampering() {
        let at = Utc.with_ymd_and_hms(2026, 3, 7, 2, 0, 9).unwrap();
        let m = Manifest {
            format_version: FORMAT_VERSION,
            tool: "leaflock-backup".into(),
            tool_version: "0.1.0".into(),
            run_id: "r".into(),
            object_key: "k".into(),
            database: "notes".into(),
            instance: None,
            server_version: "15.18".into(),
            server_version_num: 150018,
            pg_dump_version: "pg_dump (PostgreSQL) 15.18".into(),
            started_at: at,
            finished_at: at,
            duration_seconds: 1.5,
            compression: CompressionInfo {
                algorithm: "gzip".into(),
                level: 6,
            },
            encryption: None,
            uncompressed_bytes: 10,
            stored_bytes: 5,
            sha256: "a".repeat(64),
            snapshot: "00000003-00000002-1".into(),
            tables: vec![TableCount {
                schema: "public".into(),
                name: "notes".into(),
                rows: 3,
            }],
            extensions: vec!["pg_trgm".into()],
            indexes: vec!["public.notes_pkey".into()],
            content: Some(Content {
                algorithm: DigestAlgorithm::CURRENT.name().into(),
                archive_version: "1.14.0".into(),
                encoding: Some("UTF8".into()),
                tables: vec![TableDigest {
                    schema: "public".into(),
                    name: "notes".into(),
                    columns: vec!["id".into(), "title_encrypted".into()],
                    rows: 3,
                    bytes: 120,
                    digest: "0".repeat(64),
                }],
            }),
        };
        let json = m.to_json();
        assert_eq!(Manifest::from_json(&json).unwrap(), m);
        assert!(Manifest::from_json(&json[..json.len() / 2]).is_err());
        let bad = String::from_utf8(json)
            .unwrap()
            .replace(&"a".repeat(64), "xyz");
        assert!(Manifest::from_json(bad.as_bytes()).is_err());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    const SAMPLE: &str = r#"{"format_version":1,"tool":"leaflock-backup","tool_version":"0.1.0",
      "run_id":"r","object_key":"k","database":"notes","server_version":"15","server_version_num":150000,
      "pg_dump_version":"pg_dump 15","started_at":"2026-03-07T02:00:09Z","finished_at":"2026-03-07T02:00:10Z",
      "duration_seconds":1.0,"compression":{"algorithm":"gzip","level":6},"encryption":null,
      "uncompressed_bytes":10,"stored_bytes":5,
      "sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
      "snapshot":"s","tables":[{"schema":"public","name":"notes","rows":3}]}"#;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Manifest::from_json(&data);
        }

        #[test]
        fn truncated_or_edited_manifests_never_panic(cut in 0..SAMPLE.len(), at in 0..SAMPLE.len(), b in any::<u8>()) {
            prop_assert!(Manifest::from_json(SAMPLE.as_bytes()).is_ok());
            prop_assert!(Manifest::from_json(SAMPLE.as_bytes()).unwrap().content.is_none(), "a manifest from before digests parses");
            prop_assert!(Manifest::from_json(&SAMPLE.as_bytes()[..cut]).is_err());
            let mut edited = SAMPLE.as_bytes().to_vec();
            edited[at] = b;
            if let Ok(m) = Manifest::from_json(&edited) {
                prop_assert_eq!(m.sha256.len(), 64);
            }
        }
    }
}

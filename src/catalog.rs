//! What is stored under the prefix: backups (an object with its manifest, and the
//! latest drill record if any), archives of LeafLock's old backup script, and
//! everything else (debris: objects without a manifest, manifests without an object,
//! temporary files). `list` shows all of it; nothing is hidden.

use crate::drill::DrillRecord;
use crate::error::usage;
use crate::manifest::{self, Manifest};
use crate::signing::{self, DocKind, Seal, Trust, TrustPolicy};
use crate::storage::{ObjectInfo, Storage};
use anyhow::{bail, Result};
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Serialize;
use std::collections::HashMap;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
// A catalog holds one entry per stored object, built once per scan: size is no concern.
#[allow(clippy::large_enum_variant)]
pub enum Kind {
    /// An object with this tool's manifest.
    Backup {
        manifest: Box<Manifest>,
        drill: Option<DrillRecord>,
        /// The manifest's signature, checked against the key it names (see `signing.rs`).
        seal: Seal,
        /// The drill record's signature.
        drill_seal: Option<Seal>,
    },
    /// `leaflock_backup_YYYYmmdd_HHMMSS.sql.gz.enc` from LeafLock's old script.
    Legacy,
    /// A manifest that does not parse.
    BadManifest { error: String },
    /// A manifest whose object is missing.
    ManifestWithoutObject,
    /// An object without a manifest: an interrupted run, or a stranger.
    NoManifest,
    /// A temporary file of a local-directory run in progress or interrupted.
    Partial,
}

#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub key: String,
    pub time: Option<DateTime<Utc>>,
    pub size: u64,
    #[serde(flatten)]
    pub kind: Kind,
}

impl Entry {
    pub fn manifest(&self) -> Option<&Manifest> {
        match &self.kind {
            Kind::Backup { manifest, .. } => Some(manifest),
            _ => None,
        }
    }
}

fn file_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// `leaflock_backup_20261125T020000Z...` or the old script's `leaflock_backup_20261125_020000...`.
pub fn time_from_name(key: &str) -> Option<DateTime<Utc>> {
    let rest = file_name(key).strip_prefix(manifest::OBJECT_STEM)?;
    if let Some(ts) = rest.get(..16) {
        if let Ok(t) = NaiveDateTime::parse_from_str(ts, "%Y%m%dT%H%M%SZ") {
            return Some(t.and_utc());
        }
    }
    let ts = rest.get(..15)?;
    NaiveDateTime::parse_from_str(ts, "%Y%m%d_%H%M%S")
        .ok()
        .map(|t| t.and_utc())
}

pub fn is_legacy(key: &str) -> bool {
    let n = file_name(key);
    n.starts_with(manifest::OBJECT_STEM) && (n.ends_with(".sql.gz.enc") || n.ends_with(".sql.gz"))
}

/// Everything under `prefix`, newest first.
pub async fn scan(storage: &dyn Storage, prefix: &str) -> Result<Vec<Entry>> {
    let objects = storage.list(prefix).await?;
    let by_key: HashMap<&str, &ObjectInfo> = objects.iter().map(|o| (o.key.as_str(), o)).collect();
    let mut entries = Vec::new();
    let mut claimed: Vec<&str> = Vec::new();
    for o in &objects {
        if !o.key.ends_with(manifest::MANIFEST_SUFFIX) {
            continue;
        }
        claimed.push(&o.key);
        let data = storage.get_small(&o.key).await?;
        let m = match Manifest::from_json(&data) {
            Ok(m) => m,
            Err(e) => {
                entries.push(Entry {
                    key: o.key.clone(),
                    time: time_from_name(&o.key).or(o.modified),
                    size: o.size,
                    kind: Kind::BadManifest { error: e },
                });
                continue;
            }
        };
        let Some(obj) = by_key.get(m.object_key.as_str()) else {
            entries.push(Entry {
                key: o.key.clone(),
                time: Some(m.started_at),
                size: 0,
                kind: Kind::ManifestWithoutObject,
            });
            continue;
        };
        claimed.push(&obj.key);
        let dkey = manifest::drill_key(&m.object_key);
        let (drill, drill_seal) = if by_key.contains_key(dkey.as_str()) {
            claimed.push(by_key[dkey.as_str()].key.as_str());
            match storage.get_small(&dkey).await {
                Ok(d) => match serde_json::from_slice::<DrillRecord>(&d) {
                    Ok(rec) => (Some(rec), Some(signing::seal_of(&d, DocKind::DrillRecord))),
                    Err(_) => (None, None),
                },
                Err(_) => (None, None),
            }
        } else {
            (None, None)
        };
        let seal = signing::seal_of(&data, DocKind::Manifest);
        entries.push(Entry {
            key: obj.key.clone(),
            time: Some(m.started_at),
            size: obj.size,
            kind: Kind::Backup {
                manifest: Box::new(m),
                drill,
                seal,
                drill_seal,
            },
        });
    }
    for o in &objects {
        if claimed.contains(&o.key.as_str()) {
            continue;
        }
        let kind = if file_name(&o.key).starts_with('.') && o.key.contains(".partial-") {
            Kind::Partial
        } else if is_legacy(&o.key) {
            Kind::Legacy
        } else {
            Kind::NoManifest
        };
        entries.push(Entry {
            key: o.key.clone(),
            time: time_from_name(&o.key).or(o.modified),
            size: o.size,
            kind,
        });
    }
    entries.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.key.cmp(&a.key)));
    Ok(entries)
}

/// The entry a command names: `latest` (the newest backup with a manifest) or a key as
/// `list` prints it.
pub fn resolve<'a>(entries: &'a [Entry], key: &str) -> Result<&'a Entry> {
    if key == "latest" {
        return match entries.iter().find(|e| e.manifest().is_some()) {
            Some(e) => Ok(e),
            None => bail!("there is no backup with a manifest under this prefix"),
        };
    }
    match entries.iter().find(|e| e.key == key) {
        Some(e) => Ok(e),
        None => usage(format!(
            "KEY: no object {key:?} under this prefix (give a key as `leaflock-backup list` prints it, or latest)"
        )),
    }
}

// Trust: what `signing.rs` decides, applied to entries. `latest` and retention count
// only the backups the policy counts; the gate for one named backup is
// `TrustPolicy::admit`.

impl Entry {
    /// Who signed this backup's manifest, as far as the policy can tell. Old-script
    /// archives and debris have no signature.
    pub fn trust(&self, policy: &TrustPolicy) -> Trust {
        match &self.kind {
            Kind::Backup { seal, .. } => policy.trust(seal),
            _ => Trust::Unsigned,
        }
    }

    /// Its latest drill passed, and the record says so credibly: it is about this very
    /// object (key and sha256) and, when trusted keys are configured, signed by one.
    pub fn drill_verified(&self, policy: &TrustPolicy) -> bool {
        let Kind::Backup {
            manifest,
            drill: Some(d),
            drill_seal,
            ..
        } = &self.kind
        else {
            return false;
        };
        let about_this = d.object_key == manifest.object_key
            && d.sha256.as_deref().is_none_or(|s| s == manifest.sha256);
        let credible = match drill_seal {
            Some(seal) => policy.counts(&policy.trust(seal)),
            None => !policy.enforced(),
        };
        d.passed && about_this && credible && (!policy.enforced() || d.sha256.is_some())
    }
}

/// Backups with a manifest that the policy does not count (unsigned, badly signed,
/// signed by an untrusted key while trusted keys are configured).
pub fn untrusted<'a>(entries: &'a [Entry], policy: &TrustPolicy) -> Vec<&'a Entry> {
    entries
        .iter()
        .filter(|e| e.manifest().is_some() && !policy.counts(&e.trust(policy)))
        .collect()
}

/// [`resolve`], with `latest` chosen among the backups the policy counts only; the
/// newer ones it passes over are named in a warning.
pub fn resolve_trusted(entries: &[Entry], key: &str, policy: &TrustPolicy) -> Result<Entry> {
    if key != "latest" {
        return resolve(entries, key).cloned();
    }
    let skipped = untrusted(entries, policy);
    let counted: Vec<Entry> = entries
        .iter()
        .filter(|e| !skipped.iter().any(|s| std::ptr::eq(*s, *e)))
        .cloned()
        .collect();
    let chosen = resolve(&counted, key).map_err(|e| {
        if skipped.is_empty() {
            e
        } else {
            e.context(format!(
                "{} backup(s) are not signed by a trusted key and were skipped",
                skipped.len()
            ))
        }
    })?;
    for s in skipped.iter().filter(|s| s.time > chosen.time) {
        tracing::warn!(
            key = %s.key,
            signature = %s.trust(policy).describe(),
            "skipping {} for latest: it is {}",
            s.key,
            s.trust(policy).describe()
        );
    }
    Ok(chosen.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::Signer25519;
    use chrono::TimeZone;

    const MANIFEST: &str = r#"{"format_version":1,"tool":"leaflock-backup","tool_version":"0.1.0",
      "run_id":"r","object_key":"b/leaflock_backup_20261125T020003Z.dump.gz","database":"notes",
      "server_version":"15","server_version_num":150000,"pg_dump_version":"pg_dump 15",
      "started_at":"2026-11-25T02:00:03Z","finished_at":"2026-11-25T02:00:04Z","duration_seconds":1.0,
      "compression":{"algorithm":"gzip","level":6},"encryption":null,"uncompressed_bytes":10,
      "stored_bytes":5,"sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
      "snapshot":"s","tables":[]}"#;

    fn record(sha256: &str) -> String {
        format!(
            r#"{{"format_version":1,"run_id":"d","object_key":"b/leaflock_backup_20261125T020003Z.dump.gz",
              "started_at":"2026-11-25T03:00:00Z","finished_at":"2026-11-25T03:00:01Z","duration_seconds":1.0,
              "passed":true,"failures":[],"server":"s","scratch_database":"x","scratch_database_kept":false,
              "pg_restore_version":"15","tables_checked":0,"rows_checked":0,"checks_run":0,"sha256":"{sha256}"}}"#
        )
    }

    fn entry(manifest: &[u8], drill: Option<&[u8]>) -> Entry {
        let m = Manifest::from_json(manifest).unwrap();
        Entry {
            key: m.object_key.clone(),
            time: Some(m.started_at),
            size: 5,
            kind: Kind::Backup {
                manifest: Box::new(m),
                drill: drill.map(|d| serde_json::from_slice(d).unwrap()),
                seal: signing::seal_of(manifest, DocKind::Manifest),
                drill_seal: drill.map(|d| signing::seal_of(d, DocKind::DrillRecord)),
            },
        }
    }

    #[test]
    fn a_drill_counts_as_verified_only_when_its_record_is_credible() {
        let k = Signer25519::generate();
        let strict = TrustPolicy {
            keys: vec![k.public()],
            allow_unsigned: None,
        };
        let open = TrustPolicy::default();
        let m = k.seal(MANIFEST.as_bytes(), DocKind::Manifest).unwrap();
        let good = record(&"a".repeat(64));
        let signed = k.seal(good.as_bytes(), DocKind::DrillRecord).unwrap();
        let e = entry(&m, Some(&signed));
        assert_eq!(e.trust(&strict), Trust::Signed(k.public().fingerprint()));
        assert!(e.drill_verified(&strict));
        // An unsigned record (written by anyone) does not count once keys are trusted.
        let e = entry(&m, Some(good.as_bytes()));
        assert!(!e.drill_verified(&strict));
        assert!(e.drill_verified(&open));
        // A signed record about another object (another sha256) never counts.
        let other = k
            .seal(record(&"b".repeat(64)).as_bytes(), DocKind::DrillRecord)
            .unwrap();
        assert!(!entry(&m, Some(&other)).drill_verified(&strict));
        assert!(!entry(&m, Some(&other)).drill_verified(&open));
        // A record signed by another key does not count either.
        let stranger = Signer25519::generate()
            .seal(good.as_bytes(), DocKind::DrillRecord)
            .unwrap();
        assert!(!entry(&m, Some(&stranger)).drill_verified(&strict));
        // An unsigned manifest is not counted for latest.
        let unsigned = entry(MANIFEST.as_bytes(), None);
        assert_eq!(untrusted(std::slice::from_ref(&unsigned), &strict).len(), 1);
        assert!(untrusted(std::slice::from_ref(&unsigned), &open).is_empty());
        assert!(resolve_trusted(std::slice::from_ref(&unsigned), "latest", &strict).is_err());
        assert_eq!(
            resolve_trusted(std::slice::from_ref(&unsigned), "latest", &open)
                .unwrap()
                .key,
            unsigned.key
        );
    }

    #[test]
    fn times_from_both_naming_schemes() {
        assert_eq!(
            time_from_name("backups/2026/11/25/leaflock_backup_20261125T020003Z.dump.gz"),
            Some(Utc.with_ymd_and_hms(2026, 11, 25, 2, 0, 3).unwrap())
        );
        assert_eq!(
            time_from_name("backups/2026/11/25/leaflock_backup_20261125_020003.sql.gz.enc"),
            Some(Utc.with_ymd_and_hms(2026, 11, 25, 2, 0, 3).unwrap())
        );
        assert!(is_legacy(
            "backups/2026/11/25/leaflock_backup_20261125_020003.sql.gz.enc"
        ));
        assert!(!is_legacy(
            "backups/x/leaflock_backup_20261125T020003Z.dump.gz"
        ));
        assert_eq!(time_from_name("backups/other.bin"), None);
    }
}

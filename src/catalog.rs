//! What is stored under the prefix: backups (an object with its manifest, its latest
//! drill record and its suspect record, if any), archives of LeafLock's old backup
//! script, and everything else (debris: objects without a manifest, manifests without
//! an object, temporary files). `list` shows all of it; nothing is hidden.
//!
//! Everything here is read back from the destination, so it is a stranger's word: a
//! manifest that cannot be read or parsed is a bad entry (never fatal for the scan), a
//! manifest whose scope disagrees with its key or that names an object not beside it
//! is bad, and one dated in the future (beyond the clock tolerance) is an *anomaly*:
//! listed, never `latest`, never a retention candidate.
//!
//! A catalog answers for one scope (one database, see `scope.rs`): `latest` is the
//! newest backup of that scope that is neither an anomaly nor an unaccepted suspect.
//! Entries whose scope is unknown (the old script's archives, debris of the earlier
//! layout) are shown with every scope and belong to none.

use crate::error::usage;
use crate::manifest::{self, Manifest};
use crate::record::DrillRecord;
use crate::record::SuspectRecord;
use crate::scope::{self, KeyScope, Scope};
use crate::signing::{self, DocKind, Seal, Trust, TrustPolicy};
use crate::storage::{ObjectInfo, Storage};
use anyhow::{bail, Result};
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Serialize;
use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
// A catalog holds one entry per stored object, built once per scan: size is no concern.
#[allow(clippy::large_enum_variant)]
pub enum Kind {
    /// An object with this tool's manifest.
    Backup {
        manifest: Box<Manifest>,
        drill: Option<DrillRecord>,
        /// Held by the regression gate (see `gate.rs`).
        suspect: Option<SuspectRecord>,
        /// The manifest's signature, checked against the key it names (see `signing.rs`).
        seal: Seal,
        /// The drill record's signature.
        drill_seal: Option<Seal>,
    },
    /// `leaflock_backup_YYYYmmdd_HHMMSS.sql.gz.enc` from LeafLock's old script. Its JSON
    /// name stays `legacy`, as `list --json` and `report --json` have always printed it.
    #[serde(rename = "legacy")]
    OldScript,
    /// A manifest that cannot be read, does not parse, or contradicts its place.
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
    /// Whose entry this is, when known (from the manifest, else from the key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Why this entry is not what it claims to be (dated in the future, ...): never
    /// `latest`, never a retention candidate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anomaly: Option<String>,
    /// This is the backup `latest` resolves to for the catalog's scope.
    pub latest: bool,
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

    pub fn scope(&self) -> Option<Scope> {
        self.database
            .as_ref()
            .map(|d| Scope::new(d.clone(), self.instance.clone()))
    }

    /// A backup held by the regression gate that no operator accepted.
    pub fn unaccepted_suspect(&self) -> Option<&SuspectRecord> {
        match &self.kind {
            Kind::Backup {
                suspect: Some(s), ..
            } if !s.accepted() => Some(s),
            _ => None,
        }
    }

    /// A backup of this tool that retention, `latest` and the gate may rely on.
    pub fn is_sound_backup(&self) -> bool {
        self.manifest().is_some() && self.anomaly.is_none()
    }
}

/// How a catalog is read: for which scope, and what "now" is.
#[derive(Debug, Clone)]
pub struct View {
    /// `None`: every database (`list --all-databases`).
    pub scope: Option<Scope>,
    pub now: DateTime<Utc>,
    /// A manifest dated later than `now + tolerance` is an anomaly.
    pub tolerance: chrono::Duration,
    /// Which signatures count (`--trusted-key`): `latest`, retention and the gate
    /// count only what it counts.
    pub trust: TrustPolicy,
}

/// Everything under a prefix, newest first, read for one view.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub entries: Vec<Entry>,
    pub view: View,
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

pub fn is_old_script(key: &str) -> bool {
    let n = file_name(key);
    n.starts_with(manifest::OBJECT_STEM) && (n.ends_with(".sql.gz.enc") || n.ends_with(".sql.gz"))
}

/// A small JSON record beside a backup (drill, suspect), with its bytes as read (for
/// its signature); one that cannot be read or parsed, or that names another backup,
/// is as good as none (and said so in the log).
async fn companion<T: serde::de::DeserializeOwned>(
    storage: &dyn Storage,
    key: &str,
    object_key: &str,
    what: &str,
    present: &HashSet<&str>,
) -> Option<(T, bytes::Bytes)> {
    if !present.contains(key) {
        return None;
    }
    let (raw, parsed) = match storage.get_small(key).await {
        Ok(d) => {
            let v = serde_json::from_slice::<serde_json::Value>(&d).map_err(|e| e.to_string());
            (d, v)
        }
        Err(e) => (Default::default(), Err(format!("{e:#}"))),
    };
    let named_ok =
        |v: &serde_json::Value| v.get("object_key").and_then(|k| k.as_str()) == Some(object_key);
    match parsed {
        Ok(v) if named_ok(&v) => match serde_json::from_value(v) {
            Ok(r) => Some((r, raw)),
            Err(e) => {
                tracing::warn!(key, error = %e, "ignoring the unreadable {what} {key}");
                None
            }
        },
        Ok(_) => {
            tracing::warn!(key, "ignoring the {what} {key}: it names another backup");
            None
        }
        Err(e) => {
            tracing::warn!(key, error = %e, "ignoring the unreadable {what} {key}");
            None
        }
    }
}

/// Everything under `prefix`, newest first, annotated for `view` (see the module doc).
pub async fn scan(storage: &dyn Storage, prefix: &str, view: View) -> Result<Catalog> {
    let objects = storage.list(prefix).await?;
    let by_key: HashMap<&str, &ObjectInfo> = objects.iter().map(|o| (o.key.as_str(), o)).collect();
    let present: HashSet<&str> = by_key.keys().copied().collect();
    let mut entries = Vec::new();
    let mut claimed: HashSet<&str> = HashSet::new();
    let key_scope = |key: &str| match scope::of_key(prefix, key) {
        KeyScope::Scoped(s) => Some(s),
        _ => None,
    };
    let entry = |o: &ObjectInfo, kind: Kind| {
        let s = key_scope(&o.key);
        Entry {
            key: o.key.clone(),
            time: time_from_name(&o.key).or(o.modified),
            size: o.size,
            database: s.as_ref().map(|s| s.database.clone()),
            instance: s.and_then(|s| s.instance),
            anomaly: None,
            latest: false,
            kind,
        }
    };
    for o in &objects {
        if !o.key.ends_with(manifest::MANIFEST_SUFFIX) {
            continue;
        }
        claimed.insert(&o.key);
        let (data, parsed) = match storage.get_small(&o.key).await {
            Ok(data) => {
                let parsed = Manifest::from_json(&data);
                (data, parsed)
            }
            Err(e) => (Default::default(), Err(format!("cannot read it: {e:#}"))),
        };
        let m = match parsed.and_then(|m| check_place(prefix, &o.key, m)) {
            Ok(m) => m,
            Err(error) => {
                tracing::warn!(key = %o.key, error = %error, "bad manifest {}: {error}", o.key);
                entries.push(entry(o, Kind::BadManifest { error }));
                continue;
            }
        };
        let Some(obj) = by_key.get(m.object_key.as_str()) else {
            let mut e = entry(o, Kind::ManifestWithoutObject);
            e.time = Some(m.started_at);
            e.size = 0;
            entries.push(e);
            continue;
        };
        claimed.insert(&obj.key);
        let dkey = manifest::drill_key(&m.object_key);
        let skey = manifest::suspect_key(&m.object_key);
        for k in [&dkey, &skey] {
            if let Some(k) = by_key.get(k.as_str()) {
                claimed.insert(&k.key);
            }
        }
        let (drill, drill_seal) =
            match companion::<DrillRecord>(storage, &dkey, &m.object_key, "drill record", &present)
                .await
            {
                Some((rec, raw)) => (
                    Some(rec),
                    Some(signing::seal_of(&raw, DocKind::DrillRecord)),
                ),
                None => (None, None),
            };
        let suspect = companion(storage, &skey, &m.object_key, "suspect record", &present)
            .await
            .map(|(rec, _)| rec);
        let seal = signing::seal_of(&data, DocKind::Manifest);
        entries.push(Entry {
            key: obj.key.clone(),
            time: Some(m.started_at),
            size: obj.size,
            database: Some(m.database.clone()),
            instance: m.instance.clone(),
            anomaly: None,
            latest: false,
            kind: Kind::Backup {
                manifest: Box::new(m),
                drill,
                suspect,
                seal,
                drill_seal,
            },
        });
    }
    for o in &objects {
        if claimed.contains(o.key.as_str()) {
            continue;
        }
        let kind = if file_name(&o.key).starts_with('.') && o.key.contains(".partial-") {
            Kind::Partial
        } else if is_old_script(&o.key) {
            Kind::OldScript
        } else {
            Kind::NoManifest
        };
        entries.push(entry(o, kind));
    }
    let horizon = view.now + view.tolerance;
    for e in &mut entries {
        if let (Some(t), true) = (e.time, e.manifest().is_some()) {
            if t > horizon {
                let why = format!(
                    "dated {}, in the future (more than {} s after now, {})",
                    t.format("%Y-%m-%dT%H:%M:%SZ"),
                    view.tolerance.num_seconds(),
                    view.now.format("%Y-%m-%dT%H:%M:%SZ")
                );
                tracing::warn!(key = %e.key, anomaly = %why, "anomaly: {} is {why}; it is never latest and never decides retention", e.key);
                e.anomaly = Some(why);
            }
        }
    }
    entries.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.key.cmp(&a.key)));
    let mut catalog = Catalog { entries, view };
    if let Some(i) = catalog.latest_index() {
        catalog.entries[i].latest = true;
    }
    Ok(catalog)
}

/// A manifest must stand where it says it stands: beside its object, under the keys of
/// the database it names.
fn check_place(prefix: &str, manifest_key: &str, m: Manifest) -> Result<Manifest, String> {
    if manifest::manifest_key(&m.object_key) != manifest_key {
        return Err(format!(
            "it names the object {:?}, which is not beside it",
            m.object_key
        ));
    }
    if let KeyScope::Scoped(s) = scope::of_key(prefix, manifest_key) {
        if !m.is_of(&s) {
            return Err(format!(
                "it lies under the keys of database {s} but says it is a backup of {}",
                m.scope()
            ));
        }
    }
    Ok(m)
}

impl Catalog {
    /// The entries of the view's scope, and those that belong to no scope.
    pub fn visible(&self) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .filter(move |e| match (&self.view.scope, e.scope()) {
                (None, _) | (_, None) => true,
                (Some(s), Some(es)) => *s == es,
            })
    }

    /// The backups of the view's scope (all scopes when it has none), sound or not.
    pub fn backups(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(move |e| {
            e.manifest().is_some()
                && match &self.view.scope {
                    None => true,
                    Some(s) => e.scope().as_ref() == Some(s),
                }
        })
    }

    fn latest_index(&self) -> Option<usize> {
        let scope = self.view.scope.as_ref()?;
        self.entries.iter().position(|e| {
            e.is_sound_backup()
                && e.scope().as_ref() == Some(scope)
                && e.unaccepted_suspect().is_none()
                && self.counts(e)
        })
    }

    /// Whether the trust policy counts this entry's signature.
    pub fn counts(&self, e: &Entry) -> bool {
        self.view.trust.counts(&e.trust(&self.view.trust))
    }

    /// Its latest drill passed, credibly (see [`Entry::drill_verified`]).
    pub fn verified(&self, e: &Entry) -> bool {
        e.drill_verified(&self.view.trust)
    }

    /// The backups of the scope that the trust policy does not count (unsigned, badly
    /// signed, signed by an untrusted key while trusted keys are configured).
    pub fn untrusted(&self) -> Vec<&Entry> {
        self.backups().filter(|e| !self.counts(e)).collect()
    }

    /// The entry a command names: `latest` (see the module doc) or a key as `list`
    /// prints it (of any database: a full key is unambiguous).
    pub fn resolve(&self, key: &str) -> Result<&Entry> {
        if key == "latest" {
            let scope = match &self.view.scope {
                Some(s) => s.to_string(),
                None => "any database".into(),
            };
            let skipped = self.untrusted();
            let Some(chosen) = self.entries.iter().find(|e| e.latest) else {
                let untrusted = match skipped.len() {
                    0 => String::new(),
                    n => {
                        format!("; {n} backup(s) are not signed by a trusted key and were skipped")
                    }
                };
                bail!(
                    "there is no backup of database {scope} under this prefix that latest can name \
                     (`leaflock-backup list` shows what is there; anomalies, unaccepted suspects \
                     and untrusted backups are never latest){untrusted}"
                );
            };
            for s in skipped.iter().filter(|s| s.time > chosen.time) {
                let what = s.trust(&self.view.trust).describe();
                tracing::warn!(key = %s.key, signature = %what, "skipping {} for latest: it is {what}", s.key);
            }
            return Ok(chosen);
        }
        match self.entries.iter().find(|e| e.key == key) {
            Some(e) => {
                if let (Some(s), Some(es)) = (&self.view.scope, e.scope()) {
                    if *s != es {
                        tracing::warn!(key, database = %es, "{key} is a backup of database {es}, not of {s}");
                    }
                }
                if let Some(a) = &e.anomaly {
                    tracing::warn!(key, anomaly = %a, "{key} is an anomaly: {a}");
                }
                Ok(e)
            }
            None => usage(format!(
                "KEY: no object {key:?} under this prefix (give a key as `leaflock-backup list` prints it, or latest)"
            )),
        }
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
            database: Some(m.database.clone()),
            instance: None,
            anomaly: None,
            latest: false,
            kind: Kind::Backup {
                manifest: Box::new(m),
                drill: drill.map(|d| serde_json::from_slice(d).unwrap()),
                suspect: None,
                seal: signing::seal_of(manifest, DocKind::Manifest),
                drill_seal: drill.map(|d| signing::seal_of(d, DocKind::DrillRecord)),
            },
        }
    }

    /// A catalog of `entries` for database notes, read with `trust`.
    fn catalog(entries: Vec<Entry>, trust: TrustPolicy) -> Catalog {
        let mut c = Catalog {
            entries,
            view: View {
                scope: Some(Scope::new("notes", None)),
                now: Utc::now(),
                tolerance: chrono::Duration::seconds(300),
                trust,
            },
        };
        if let Some(i) = c.latest_index() {
            c.entries[i].latest = true;
        }
        c
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
        let c = catalog(vec![unsigned.clone()], strict);
        assert_eq!(c.untrusted().len(), 1);
        assert!(c.resolve("latest").is_err());
        let c = catalog(vec![unsigned.clone()], open);
        assert!(c.untrusted().is_empty());
        assert_eq!(c.resolve("latest").unwrap().key, unsigned.key);
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
        assert!(is_old_script(
            "backups/2026/11/25/leaflock_backup_20261125_020003.sql.gz.enc"
        ));
        assert!(!is_old_script(
            "backups/x/leaflock_backup_20261125T020003Z.dump.gz"
        ));
        assert_eq!(time_from_name("backups/other.bin"), None);
    }
}

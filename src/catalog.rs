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

use crate::drill::DrillRecord;
use crate::error::usage;
use crate::gate::SuspectRecord;
use crate::manifest::{self, Manifest};
use crate::scope::{self, KeyScope, Scope};
use crate::storage::{ObjectInfo, Storage};
use anyhow::{bail, Result};
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Serialize;
use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Kind {
    /// An object with this tool's manifest.
    Backup {
        manifest: Box<Manifest>,
        drill: Option<DrillRecord>,
        /// Held by the regression gate (see `gate.rs`).
        suspect: Option<SuspectRecord>,
    },
    /// `leaflock_backup_YYYYmmdd_HHMMSS.sql.gz.enc` from LeafLock's old script.
    Legacy,
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

    /// Its latest restore drill passed.
    pub fn verified(&self) -> bool {
        matches!(&self.kind, Kind::Backup { drill: Some(d), .. } if d.passed)
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

pub fn is_legacy(key: &str) -> bool {
    let n = file_name(key);
    n.starts_with(manifest::OBJECT_STEM) && (n.ends_with(".sql.gz.enc") || n.ends_with(".sql.gz"))
}

/// A small JSON record beside a backup (drill, suspect); one that cannot be read or
/// parsed is as good as none (and said so in the log).
async fn companion<T: serde::de::DeserializeOwned>(
    storage: &dyn Storage,
    key: &str,
    object_key: &str,
    what: &str,
    present: &HashSet<&str>,
) -> Option<T> {
    if !present.contains(key) {
        return None;
    }
    let parsed = match storage.get_small(key).await {
        Ok(d) => serde_json::from_slice::<serde_json::Value>(&d).map_err(|e| e.to_string()),
        Err(e) => Err(format!("{e:#}")),
    };
    let named_ok =
        |v: &serde_json::Value| v.get("object_key").and_then(|k| k.as_str()) == Some(object_key);
    match parsed {
        Ok(v) if named_ok(&v) => match serde_json::from_value(v) {
            Ok(r) => Some(r),
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
        let parsed = match storage.get_small(&o.key).await {
            Ok(data) => Manifest::from_json(&data),
            Err(e) => Err(format!("cannot read it: {e:#}")),
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
        let drill = companion(storage, &dkey, &m.object_key, "drill record", &present).await;
        let suspect = companion(storage, &skey, &m.object_key, "suspect record", &present).await;
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
            },
        });
    }
    for o in &objects {
        if claimed.contains(o.key.as_str()) {
            continue;
        }
        let kind = if file_name(&o.key).starts_with('.') && o.key.contains(".partial-") {
            Kind::Partial
        } else if is_legacy(&o.key) {
            Kind::Legacy
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
        if !s.owns(&m) {
            return Err(format!(
                "it lies under the keys of database {s} but says it is a backup of {}",
                Scope::of_manifest(&m)
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
        })
    }

    /// The entry a command names: `latest` (see the module doc) or a key as `list`
    /// prints it (of any database: a full key is unambiguous).
    pub fn resolve(&self, key: &str) -> Result<&Entry> {
        if key == "latest" {
            let scope = match &self.view.scope {
                Some(s) => s.to_string(),
                None => "any database".into(),
            };
            return match self.entries.iter().find(|e| e.latest) {
                Some(e) => Ok(e),
                None => bail!(
                    "there is no backup of database {scope} under this prefix that latest can name                      (`leaflock-backup list` shows what is there; anomalies and unaccepted suspects                      are never latest)"
                ),
            };
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

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

//! Debris of interrupted runs, and its removal.
//!
//! A run stopped by SIGTERM, an S3 error or a pg_dump failure cleans up after itself.
//! A run that cannot (SIGKILL, OOM kill, node loss, power cut) leaves an open multipart
//! upload (billed, invisible to `list_objects`), a local `.partial-*` file, or, if it
//! died between completing the object and writing its manifest, an object without a
//! manifest. `sweep` finds these under the prefix and removes those older than a grace
//! period (so that a run in progress elsewhere is never touched); it runs at the start
//! of every `run` and in `prune`.
//!
//! Only this tool's own names are ever removed: objects named
//! `leaflock_backup_<YYYYmmddTHHMMSSZ>.dump.*` or `....drill.json` that have no
//! manifest beside them. The old script's `.sql.gz.enc` archives, manifests, objects
//! with a manifest (even an unreadable one) and foreign objects are never touched.

use crate::catalog;
use crate::manifest::{self, DRILL_SUFFIX, MANIFEST_SUFFIX, OBJECT_STEM, SUSPECT_SUFFIX};
use crate::scope::{self, KeyScope, Scope};
use crate::storage::Storage;
use anyhow::Result;
use chrono::{DateTime, NaiveDateTime, Utc};
use std::collections::HashSet;
use std::time::Duration;

/// What a sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    /// Unfinished uploads aborted (or temporary files removed).
    pub uploads: usize,
    /// Objects without a manifest removed.
    pub objects: usize,
    /// Debris younger than the grace period, left alone.
    pub young: usize,
    /// Removals that failed (logged).
    pub failed: usize,
}

/// The manifest key an object of this tool would have, if `key` is one of this tool's
/// companion objects (`.dump.*`, `.drill.json` or `.suspect.json`) with a well-formed
/// timestamp (and, in this layout, the run's six hex digits after it).
pub fn own_manifest_key(key: &str) -> Option<String> {
    let name = key.rsplit('/').next().unwrap_or(key);
    let rest = name.strip_prefix(OBJECT_STEM)?;
    let ts = rest.get(..16)?;
    NaiveDateTime::parse_from_str(ts, "%Y%m%dT%H%M%SZ").ok()?;
    let mut after = &rest[16..];
    if let Some(run) = after.strip_prefix('_') {
        let hex = run.get(..6)?;
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        after = &run[6..];
    }
    let stem = if after.starts_with(".dump.") {
        manifest::stem(key)
    } else if after == DRILL_SUFFIX {
        key.strip_suffix(DRILL_SUFFIX)?
    } else if after == SUSPECT_SUFFIX {
        key.strip_suffix(SUSPECT_SUFFIX)?
    } else {
        return None;
    };
    Some(format!("{stem}{MANIFEST_SUFFIX}"))
}

/// Whether a sweep for `scope` may touch `key`: keys of that scope, and keys of the
/// earlier layout (which carry no scope). Another database's keys never.
fn in_scope(prefix: &str, scope: &Scope, key: &str) -> bool {
    match scope::of_key(prefix, key) {
        KeyScope::Scoped(s) => s == *scope,
        KeyScope::Unscoped => true,
        KeyScope::Foreign => false,
    }
}

fn older_than(t: Option<DateTime<Utc>>, grace: Duration, now: DateTime<Utc>) -> bool {
    match t {
        // Unknown age: only a zero grace period removes it.
        None => grace.is_zero(),
        Some(t) => (now - t).to_std().unwrap_or(Duration::ZERO) >= grace,
    }
}

/// Remove (or with `dry_run`, only report) the debris of `scope` under `prefix` older
/// than `grace`. An unfinished upload's age is taken from its newest part, so an upload
/// still receiving parts is never aborted however long ago it started. Each removal is
/// logged; a removal that fails is logged and counted, and the sweep goes on.
pub async fn sweep(
    storage: &dyn Storage,
    prefix: &str,
    scope: &Scope,
    grace: Duration,
    dry_run: bool,
) -> Result<Swept> {
    let now = Utc::now();
    let mut out = Swept::default();
    let grace_text = format!("{}s", grace.as_secs());

    for u in storage.list_unfinished(prefix).await? {
        if !in_scope(prefix, scope, &u.key) {
            continue;
        }
        // Young by its start, or still receiving parts (its newest part is young), or
        // of unknown activity (left for a later sweep rather than guessed at).
        let why_left = if !older_than(u.started, grace, now) {
            Some(format!("younger than the grace period ({grace_text})"))
        } else {
            match storage.last_written(&u).await {
                Ok(Some(t)) if !older_than(Some(t), grace, now) => Some(format!(
                    "still receiving parts (last part {t}, within the grace period of {grace_text})"
                )),
                Ok(_) => None,
                Err(e) => Some(format!(
                    "of unknown activity (cannot list its parts: {e:#})"
                )),
            }
        };
        if let Some(why) = why_left {
            out.young += 1;
            tracing::info!(
                key = %u.key,
                started = ?u.started,
                "leaving an unfinished upload {why}: {}",
                u.key
            );
            continue;
        }
        if dry_run {
            tracing::info!(key = %u.key, upload_id = %u.id, dry_run = true,
                "would abort the unfinished upload of {} (started {:?})", u.key, u.started);
            out.uploads += 1;
            continue;
        }
        match storage.discard_unfinished(&u).await {
            Ok(()) => {
                out.uploads += 1;
                tracing::warn!(
                    key = %u.key,
                    upload_id = %u.id,
                    started = ?u.started,
                    "aborted an unfinished upload left by an interrupted run: {} (started {:?})",
                    u.key,
                    u.started
                );
            }
            Err(e) => {
                out.failed += 1;
                tracing::error!(key = %u.key, error = format!("{e:#}"), "could not abort an unfinished upload");
            }
        }
    }

    let objects = storage.list(prefix).await?;
    let present: HashSet<&str> = objects.iter().map(|o| o.key.as_str()).collect();
    for o in &objects {
        let Some(mkey) = own_manifest_key(&o.key) else {
            continue;
        };
        if !in_scope(prefix, scope, &o.key) {
            continue;
        }
        if present.contains(mkey.as_str()) || catalog::is_old_script(&o.key) {
            continue;
        }
        // The later of the name's time and the store's time: a run that started long
        // ago may have completed its object a moment ago.
        let age_from = match (catalog::time_from_name(&o.key), o.modified) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if !older_than(age_from, grace, now) {
            out.young += 1;
            continue;
        }
        if dry_run {
            tracing::info!(key = %o.key, dry_run = true,
                "would remove {} (no manifest: left by an interrupted run)", o.key);
            out.objects += 1;
            continue;
        }
        match storage.delete(&o.key).await {
            Ok(()) => {
                out.objects += 1;
                tracing::warn!(
                    key = %o.key,
                    bytes = o.size,
                    "removed {}: it has no manifest (left by an interrupted run), so it was never a backup",
                    o.key
                );
            }
            Err(e) => {
                out.failed += 1;
                tracing::error!(key = %o.key, error = format!("{e:#}"), "could not remove an object without a manifest");
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_tools_names_are_debris() {
        assert_eq!(
            own_manifest_key("b/2026/01/02/leaflock_backup_20260102T030405Z.dump.gz").as_deref(),
            Some("b/2026/01/02/leaflock_backup_20260102T030405Z.manifest.json")
        );
        assert_eq!(
            own_manifest_key("leaflock_backup_20260102T030405Z.drill.json").as_deref(),
            Some("leaflock_backup_20260102T030405Z.manifest.json")
        );
        assert_eq!(
            own_manifest_key(
                "b/notes/2026/01/02/leaflock_backup_20260102T030405Z_0a1b2c.dump.zst.age"
            )
            .as_deref(),
            Some("b/notes/2026/01/02/leaflock_backup_20260102T030405Z_0a1b2c.manifest.json")
        );
        assert_eq!(
            own_manifest_key(
                "b/notes/2026/01/02/leaflock_backup_20260102T030405Z_0a1b2c.suspect.json"
            )
            .as_deref(),
            Some("b/notes/2026/01/02/leaflock_backup_20260102T030405Z_0a1b2c.manifest.json")
        );
        for never in [
            "b/leaflock_backup_20260102_030405.sql.gz.enc",
            "b/leaflock_backup_20260102T030405Z.manifest.json",
            "b/leaflock_backup_notatime.dump.gz",
            "b/other.dump.gz",
            "b/leaflock_backup_20260102T030405Z.txt",
            "b/.leaflock_backup_20260102T030405Z.dump.gz.partial-1-2",
            "b/leaflock_backup_20260102T030405Z_xyz123.dump.gz",
            "b/leaflock_backup_20260102T030405Z_0a1b.dump.gz",
        ] {
            assert_eq!(own_manifest_key(never), None, "{never}");
        }
    }

    #[test]
    fn grace_is_measured_from_the_newest_time() {
        let now = Utc::now();
        let hour = Duration::from_secs(3600);
        assert!(older_than(
            Some(now - chrono::Duration::hours(2)),
            hour,
            now
        ));
        assert!(!older_than(Some(now), hour, now));
        assert!(older_than(Some(now), Duration::ZERO, now));
        assert!(!older_than(None, hour, now));
    }
}

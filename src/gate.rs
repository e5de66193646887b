//! The regression gate: a new backup that looks like a disaster is held, not trusted.
//!
//! Before retention runs, the new backup's manifest is compared with a reference: the
//! newest backup of the same database whose restore drill passed (or, when no drill
//! ever passed, the newest backup that is neither suspect nor an anomaly). A table
//! that vanished, a table whose rows fell by more than a threshold, or a stored size
//! that collapsed makes the new backup *suspect*: a record `….suspect.json` is written
//! beside it, the run deletes nothing, and the metric
//! `leaflock_backup_suspect` says so until an operator accepts it
//! (`prune --accept-suspect KEY`), which rewrites the record as accepted.
//!
//! The backup itself is kept either way: it may be the truth (data deleted on purpose)
//! or the first sign of a loss, and only a person can tell.

use crate::catalog::{Catalog, Entry};
use crate::manifest::{self, Manifest};
use crate::record::SuspectRecord;
use crate::storage::Storage;
use bytes::Bytes;
use chrono::Utc;
use std::collections::HashMap;

/// Thresholds of the gate (`--suspect-*`); `None` turns a check off. A table that
/// vanished is always a finding while the gate is on (`--regression-gate off` turns
/// the whole gate off).
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// A table whose rows fell by more than this fraction (0..1) is a finding...
    pub row_drop: Option<f64>,
    /// ... when it had at least this many rows.
    pub min_rows: i64,
    /// A stored size that fell by more than this fraction (0..1).
    pub size_drop: Option<f64>,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            row_drop: Some(0.5),
            min_rows: 300,
            size_drop: Some(0.5),
        }
    }
}

fn pct(x: f64) -> String {
    format!("{:.0} %", x * 100.0)
}

/// What looks like a disaster in `new` compared with `reference`; empty when nothing does.
pub fn compare(new: &Manifest, reference: &Manifest, t: &Thresholds) -> Vec<String> {
    let mut findings = Vec::new();
    let now: HashMap<(&str, &str), i64> = new
        .tables
        .iter()
        .map(|c| ((c.schema.as_str(), c.name.as_str()), c.rows))
        .collect();
    for old in &reference.tables {
        let name = format!("{}.{}", old.schema, old.name);
        match (
            now.get(&(old.schema.as_str(), old.name.as_str())),
            t.row_drop,
        ) {
            (None, _) => findings.push(format!(
                "table {name} disappeared (it had {} rows in {})",
                old.rows, reference.object_key
            )),
            (Some(&rows), Some(drop)) if old.rows >= t.min_rows => {
                let fell = 1.0 - rows as f64 / old.rows as f64;
                if fell > drop {
                    findings.push(format!(
                        "table {name} fell from {} to {rows} rows (-{}, threshold {})",
                        old.rows,
                        pct(fell),
                        pct(drop)
                    ));
                }
            }
            _ => {}
        }
    }
    if let Some(drop) = t.size_drop {
        if reference.stored_bytes > 0 {
            let fell = 1.0 - new.stored_bytes as f64 / reference.stored_bytes as f64;
            if fell > drop {
                findings.push(format!(
                    "stored size fell from {} to {} bytes (-{}, threshold {})",
                    reference.stored_bytes,
                    new.stored_bytes,
                    pct(fell),
                    pct(drop)
                ));
            }
        }
    }
    findings
}

/// The backup a new one is compared with: the newest backup of the catalog's scope
/// whose drill passed, else the newest one; never `new_key` itself, an anomaly, a
/// suspect nobody accepted, or a backup the trust policy does not count.
pub fn reference<'a>(catalog: &'a Catalog, new_key: &str) -> Option<&'a Entry> {
    let eligible = || {
        catalog.backups().filter(move |e| {
            e.key != new_key
                && e.is_sound_backup()
                && e.unaccepted_suspect().is_none()
                && catalog.counts(e)
        })
    };
    eligible()
        .find(|e| catalog.verified(e))
        .or_else(|| eligible().next())
}

/// Compare `new` with its reference; when it looks like a disaster, write its suspect
/// record and return it. `Ok(None)`: nothing suspicious (or nothing to compare with).
pub async fn check(
    storage: &dyn Storage,
    catalog: &Catalog,
    new: &Manifest,
    t: &Thresholds,
) -> anyhow::Result<Option<SuspectRecord>> {
    let Some(reference) = reference(catalog, &new.object_key) else {
        tracing::info!("regression gate: no earlier backup of this database to compare with");
        return Ok(None);
    };
    let old = reference.manifest().expect("a backup has a manifest");
    let findings = compare(new, old, t);
    if findings.is_empty() {
        tracing::debug!(reference = %reference.key, "regression gate: nothing suspicious");
        return Ok(None);
    }
    let rec = SuspectRecord {
        format_version: 1,
        object_key: new.object_key.clone(),
        reference_key: reference.key.clone(),
        marked_at: Utc::now(),
        findings,
        accepted_at: None,
    };
    write(storage, &rec).await?;
    Ok(Some(rec))
}

/// Store (or replace) a suspect record beside its backup.
pub async fn write(storage: &dyn Storage, rec: &SuspectRecord) -> anyhow::Result<()> {
    let key = manifest::suspect_key(&rec.object_key);
    let mut json = serde_json::to_vec_pretty(rec).expect("suspect record serialises");
    json.push(b'\n');
    storage.put_small(&key, Bytes::from(json), true).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::database::TableCount;

    fn manifest(tables: &[(&str, i64)], stored: u64) -> Manifest {
        let json = serde_json::json!({
            "format_version": 1, "tool": "leaflock-backup", "tool_version": "0", "run_id": "r",
            "object_key": "k", "database": "notes", "server_version": "15",
            "server_version_num": 150000, "pg_dump_version": "15",
            "started_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:00:00Z",
            "duration_seconds": 1.0, "compression": {"algorithm": "gzip", "level": 6},
            "encryption": null, "uncompressed_bytes": stored * 2, "stored_bytes": stored,
            "sha256": "a".repeat(64), "snapshot": "s", "tables": []
        });
        let mut m: Manifest = serde_json::from_value(json).unwrap();
        m.tables = tables
            .iter()
            .map(|(n, r)| TableCount {
                schema: "public".into(),
                name: n.to_string(),
                rows: *r,
            })
            .collect();
        m
    }

    #[test]
    fn a_vanished_table_a_collapse_and_a_shrunken_archive_are_findings() {
        let old = manifest(&[("notes", 1000), ("users", 400), ("tags", 10)], 10_000);
        let t = Thresholds::default();
        assert!(compare(&old, &old, &t).is_empty());
        // Growth and small changes are fine; tiny tables may empty.
        let ok = manifest(&[("notes", 1200), ("users", 201), ("tags", 0)], 9_000);
        assert!(
            compare(&ok, &old, &t).is_empty(),
            "{:?}",
            compare(&ok, &old, &t)
        );
        let bad = manifest(&[("notes", 10), ("tags", 10)], 2_000);
        let f = compare(&bad, &old, &t);
        assert_eq!(f.len(), 3, "{f:?}");
        assert!(
            f[0].contains("public.notes fell from 1000 to 10 rows (-99 %"),
            "{f:?}"
        );
        assert!(f[1].contains("public.users disappeared"), "{f:?}");
        assert!(
            f[2].contains("stored size fell from 10000 to 2000"),
            "{f:?}"
        );
        let off = Thresholds {
            row_drop: None,
            size_drop: None,
            ..t
        };
        let f = compare(&bad, &old, &off);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].contains("public.users disappeared"), "{f:?}");
    }
}

//! The report's data: one database's backup history as the bucket holds it — sizes,
//! durations, rows per table, drill outcomes, what needs attention, and what the next
//! prune would keep and delete. Built from `catalog::scan` and `retention::plan`, pure
//! (no I/O), serialised as is by `report --json` and drawn by `html.rs`.
//!
//! Everything here came from the bucket and is a stranger's text until `html.rs`
//! escapes it. What makes an entry stand out is decided in one place, [`highlights`].

pub mod html;

use crate::catalog::{Catalog, Entry, Kind};
use crate::clock::Clock;
use crate::manifest::Manifest;
use crate::record::DrillRecord;
use crate::retention::{self, Policy, Refused};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub format_version: u32,
    pub generated_at: DateTime<Utc>,
    pub tool_version: String,
    /// Where the backups are (`describe()` of the destination) and the prefix read.
    pub destination: String,
    pub prefix: String,
    pub database: String,
    /// Other databases with backups under the same prefix (not in this report).
    pub other_databases: Vec<String>,
    /// This database's backups, oldest first.
    pub backups: Vec<Backup>,
    /// Rows per table over time, the tables that matter most first.
    pub tables: Vec<TableHistory>,
    pub drills: DrillCounts,
    /// What under the prefix is not a sound backup of this database: anomalies
    /// (dated in the future, ...), debris, bad manifests, old archives.
    pub anomalies: Vec<Anomaly>,
    /// `None` when no retention rule was given.
    pub retention: Option<RetentionPlan>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Backup {
    pub key: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_seconds: f64,
    pub stored_bytes: u64,
    pub uncompressed_bytes: u64,
    /// `gzip:6`, `zstd:3`.
    pub compression: String,
    /// The encryption scheme, `None` when not encrypted.
    pub encryption: Option<String>,
    pub server_version: String,
    pub tables: usize,
    pub rows: i64,
    pub drill: DrillOutcome,
    /// What the drill found wrong (empty unless it failed).
    pub drill_failures: Vec<String>,
    pub highlights: Vec<Highlight>,
}

/// How far a backup's latest drill proved it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DrillOutcome {
    /// Every table's content digest matched. No drill record carries content digests
    /// yet; a record that does will be counted here.
    #[allow(dead_code)]
    ContentVerified,
    /// Restored, and row counts, extensions, indexes and checks matched; no content
    /// digests on record.
    CountsOnly,
    Failed,
    Never,
}

impl DrillOutcome {
    pub fn of(drill: Option<&DrillRecord>) -> DrillOutcome {
        match drill {
            None => DrillOutcome::Never,
            Some(d) if !d.passed => DrillOutcome::Failed,
            // Drill records carry no content digests yet: a passed drill proved the
            // counts, not the rows themselves.
            Some(_) => DrillOutcome::CountsOnly,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            DrillOutcome::ContentVerified => "content verified",
            DrillOutcome::CountsOnly => "counts only",
            DrillOutcome::Failed => "failed",
            DrillOutcome::Never => "never drilled",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DrillCounts {
    pub content_verified: usize,
    pub counts_only: usize,
    pub failed: usize,
    pub never: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Something is wrong: a failed drill, a manifest that cannot be read.
    Bad,
    /// Worth a look: debris, an object without its manifest.
    Warn,
    /// For the record: an old script's archive.
    Info,
}

/// One reason an entry stands out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Highlight {
    /// A stable name (`drill_failed`, `bad_manifest`, ...).
    pub label: &'static str,
    pub severity: Severity,
    /// A stranger's text, from the bucket: escape before display.
    pub detail: String,
}

impl Highlight {
    fn new(label: &'static str, severity: Severity, detail: impl Into<String>) -> Highlight {
        Highlight {
            label,
            severity,
            detail: detail.into(),
        }
    }
}

/// What makes a catalog entry stand out, worst first. Every flag the catalog knows
/// about an entry is turned into labels here, and only here.
pub fn highlights(entry: &Entry) -> Vec<Highlight> {
    let mut out = Vec::new();
    if let Some(why) = &entry.anomaly {
        out.push(Highlight::new(
            "anomaly",
            Severity::Bad,
            format!("{why}: never latest, never a retention candidate"),
        ));
    }
    match &entry.kind {
        Kind::Backup { drill, suspect, .. } => {
            match suspect {
                Some(s) if s.accepted() => out.push(Highlight::new(
                    "suspect_accepted",
                    Severity::Info,
                    format!(
                        "held by the regression gate, accepted by an operator: {}",
                        s.findings.join("; ")
                    ),
                )),
                Some(s) => out.push(Highlight::new(
                    "suspect",
                    Severity::Bad,
                    format!(
                        "suspect (compared with {}): {}; retention waits until an operator accepts it \
                         (prune --accept-suspect)",
                        s.reference_key,
                        s.findings.join("; ")
                    ),
                )),
                None => {}
            }
            if let Some(d) = drill.as_ref().filter(|d| !d.passed) {
                out.push(Highlight::new(
                    "drill_failed",
                    Severity::Bad,
                    format!(
                        "restore drill failed{}: {}",
                        d.finished_at.format(" on %Y-%m-%d %H:%M UTC"),
                        d.failures.join("; ")
                    ),
                ));
            }
        }
        Kind::BadManifest { error } => out.push(Highlight::new(
            "bad_manifest",
            Severity::Bad,
            format!("the manifest cannot be read: {error}"),
        )),
        Kind::ManifestWithoutObject => out.push(Highlight::new(
            "manifest_without_object",
            Severity::Bad,
            "a manifest whose backup object is missing",
        )),
        Kind::NoManifest => out.push(Highlight::new(
            "no_manifest",
            Severity::Warn,
            "an object without a manifest: not a backup (an interrupted run, or a stranger's)",
        )),
        Kind::Partial => out.push(Highlight::new(
            "partial",
            Severity::Warn,
            "a temporary file of a run in progress or interrupted",
        )),
        Kind::OldScript => out.push(Highlight::new(
            "old_script_archive",
            Severity::Info,
            "an archive of LeafLock's old backup script (no manifest, never pruned)",
        )),
    }
    out.sort_by_key(|h| h.severity);
    out
}

#[derive(Debug, Clone, Serialize)]
pub struct TableHistory {
    /// `schema.name`.
    pub name: String,
    /// One point per backup that has the table, oldest first.
    pub points: Vec<TablePoint>,
    /// Rows in the newest backup; `None` if the table is not in it.
    pub latest: Option<i64>,
    /// `vanished`, `shrank`, `stopped_growing`: why it is near the top.
    pub flags: Vec<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TablePoint {
    pub key: String,
    pub time: DateTime<Utc>,
    pub rows: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Anomaly {
    pub key: String,
    pub time: Option<DateTime<Utc>>,
    pub size: u64,
    pub highlights: Vec<Highlight>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RetentionPlan {
    /// The rules, as flags (`--keep-last 3, --max-age 30`).
    pub policy: String,
    /// Why the next prune would delete nothing at all (clocks disagree, the newest
    /// backup is an unaccepted suspect, ...); `None` when it would apply the plan.
    pub refused: Option<String>,
    pub keep: usize,
    pub delete: usize,
    /// Newest first, as `prune --dry-run` prints them.
    pub decisions: Vec<RetentionDecision>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RetentionDecision {
    pub key: String,
    pub time: DateTime<Utc>,
    pub keep: bool,
    /// Why it is kept; empty when it goes.
    pub reasons: Vec<String>,
}

/// What the report needs besides the catalog.
pub struct Context<'a> {
    pub destination: String,
    pub prefix: String,
    pub policy: Option<&'a Policy>,
}

/// The report of the catalog's scope (one database), at the clock's time.
pub fn build(catalog: &Catalog, clock: &Clock, cx: &Context) -> Report {
    let database = catalog
        .view
        .scope
        .as_ref()
        .map(|s| s.to_string())
        .unwrap_or_default();
    let mut own: Vec<(&Entry, &Manifest, Option<&DrillRecord>)> = catalog
        .backups()
        .filter(|e| e.anomaly.is_none())
        .filter_map(|e| match &e.kind {
            Kind::Backup {
                manifest, drill, ..
            } => Some((e, manifest.as_ref(), drill.as_ref())),
            _ => None,
        })
        .collect();
    own.sort_by(|a, b| {
        a.1.started_at
            .cmp(&b.1.started_at)
            .then_with(|| a.0.key.cmp(&b.0.key))
    });

    let mut drills = DrillCounts::default();
    let backups: Vec<Backup> = own
        .iter()
        .map(|(e, m, d)| {
            let outcome = DrillOutcome::of(*d);
            match outcome {
                DrillOutcome::ContentVerified => drills.content_verified += 1,
                DrillOutcome::CountsOnly => drills.counts_only += 1,
                DrillOutcome::Failed => drills.failed += 1,
                DrillOutcome::Never => drills.never += 1,
            }
            Backup {
                key: e.key.clone(),
                started_at: m.started_at,
                finished_at: m.finished_at,
                duration_seconds: m.duration_seconds,
                stored_bytes: m.stored_bytes,
                uncompressed_bytes: m.uncompressed_bytes,
                compression: format!("{}:{}", m.compression.algorithm, m.compression.level),
                encryption: m.encryption.as_ref().map(|x| x.scheme.clone()),
                server_version: m.server_version.clone(),
                tables: m.tables.len(),
                rows: m.tables.iter().map(|t| t.rows).sum(),
                drill: outcome,
                drill_failures: match d {
                    Some(d) if !d.passed => d.failures.clone(),
                    _ => Vec::new(),
                },
                highlights: highlights(e),
            }
        })
        .collect();

    let anomalies = catalog
        .visible()
        .filter(|e| !matches!(e.kind, Kind::Backup { .. }) || e.anomaly.is_some())
        .map(|e| Anomaly {
            key: e.key.clone(),
            time: e.time,
            size: e.size,
            highlights: highlights(e),
        })
        .collect();

    let retention = cx.policy.map(|policy| {
        let (decisions, refused) = match retention::decide(catalog, clock, policy, None) {
            Ok(d) => (d, None),
            Err(e) => match e.downcast_ref::<Refused>() {
                Some(r) => (Vec::new(), Some(r.0.clone())),
                None => (Vec::new(), Some(format!("{e:#}"))),
            },
        };
        let decisions: Vec<RetentionDecision> = decisions
            .into_iter()
            .map(|d| RetentionDecision {
                keep: d.keep(),
                key: d.key,
                time: d.time,
                reasons: d.reasons,
            })
            .collect();
        RetentionPlan {
            policy: describe_policy(policy),
            refused,
            keep: decisions.iter().filter(|d| d.keep).count(),
            delete: decisions.iter().filter(|d| !d.keep).count(),
            decisions,
        }
    });

    Report {
        format_version: FORMAT_VERSION,
        generated_at: clock.now(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        destination: cx.destination.clone(),
        prefix: cx.prefix.clone(),
        other_databases: catalog
            .entries
            .iter()
            .filter_map(Entry::scope)
            .map(|s| s.to_string())
            .filter(|d| *d != database)
            .collect::<BTreeSet<String>>()
            .into_iter()
            .collect(),
        database,
        tables: table_histories(&own.iter().map(|(_, m, _)| *m).collect::<Vec<_>>()),
        backups,
        drills,
        anomalies,
        retention,
    }
}

fn describe_policy(p: &Policy) -> String {
    let rules: Vec<String> = [
        ("--keep-last", p.keep_last),
        ("--keep-daily", p.keep_daily),
        ("--keep-weekly", p.keep_weekly),
        ("--keep-monthly", p.keep_monthly),
        ("--max-age", p.max_age_days),
    ]
    .into_iter()
    .filter_map(|(flag, n)| n.map(|n| format!("{flag} {n}")))
    .collect();
    rules.join(", ")
}

/// Rows per table over `manifests` (oldest first). Tables that vanished, shrank or
/// stopped growing come first, then the biggest.
pub fn table_histories(manifests: &[&Manifest]) -> Vec<TableHistory> {
    let mut by_table: BTreeMap<String, Vec<TablePoint>> = BTreeMap::new();
    for m in manifests {
        for t in &m.tables {
            by_table
                .entry(format!("{}.{}", t.schema, t.name))
                .or_default()
                .push(TablePoint {
                    key: m.object_key.clone(),
                    time: m.started_at,
                    rows: t.rows,
                });
        }
    }
    let newest = manifests.last().map(|m| m.object_key.as_str());
    let mut out: Vec<TableHistory> = by_table
        .into_iter()
        .map(|(name, points)| {
            let latest = points
                .last()
                .filter(|p| Some(p.key.as_str()) == newest)
                .map(|p| p.rows);
            let mut flags = Vec::new();
            if latest.is_none() {
                flags.push("vanished");
            }
            let peak = points.iter().map(|p| p.rows).max().unwrap_or(0);
            if latest.is_some_and(|l| l < peak) {
                flags.push("shrank");
            }
            if stopped_growing(&points) {
                flags.push("stopped_growing");
            }
            TableHistory {
                name,
                points,
                latest,
                flags,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        a.flags
            .is_empty()
            .cmp(&b.flags.is_empty())
            .then_with(|| b.latest.unwrap_or(-1).cmp(&a.latest.unwrap_or(-1)))
            .then_with(|| a.name.cmp(&b.name))
    });
    out
}

/// It grew before, and its last three backups hold the same count.
fn stopped_growing(points: &[TablePoint]) -> bool {
    let n = points.len();
    if n < 4 {
        return false;
    }
    let tail = &points[n - 3..];
    let flat = tail.iter().all(|p| p.rows == tail[0].rows);
    let grew = points[..n - 2].windows(2).any(|w| w[1].rows > w[0].rows);
    flat && grew
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::database::TableCount;
    use crate::manifest::{CompressionInfo, FORMAT_VERSION as MANIFEST_FORMAT};
    use chrono::{Duration, TimeZone};

    fn manifest(day: u32, tables: &[(&str, i64)]) -> Manifest {
        let at = Utc.with_ymd_and_hms(2026, 11, day, 2, 0, 0).unwrap();
        let key = format!("backups/leaflock_backup_202611{day:02}T020000Z.dump.gz");
        Manifest {
            format_version: MANIFEST_FORMAT,
            tool: "leaflock-backup".into(),
            tool_version: "0.1.0".into(),
            run_id: format!("r{day}"),
            object_key: key,
            database: "notes".into(),
            instance: None,
            server_version: "15.18".into(),
            server_version_num: 150018,
            pg_dump_version: "pg_dump (PostgreSQL) 15.18".into(),
            started_at: at,
            finished_at: at + Duration::seconds(40),
            duration_seconds: 40.0,
            compression: CompressionInfo {
                algorithm: "gzip".into(),
                level: 6,
            },
            encryption: None,
            uncompressed_bytes: 2000 + day as u64,
            stored_bytes: 1000 + day as u64,
            sha256: "a".repeat(64),
            snapshot: "s".into(),
            tables: tables
                .iter()
                .map(|(n, r)| TableCount {
                    schema: "public".into(),
                    name: n.to_string(),
                    rows: *r,
                })
                .collect(),
            extensions: vec![],
            indexes: vec![],
            content: None,
        }
    }

    fn backup(m: Manifest, drill: Option<bool>) -> Entry {
        let drill = drill.map(|passed| DrillRecord {
            format_version: 1,
            run_id: "d".into(),
            object_key: m.object_key.clone(),
            started_at: m.finished_at,
            finished_at: m.finished_at,
            duration_seconds: 3.0,
            passed,
            failures: if passed {
                vec![]
            } else {
                vec!["public.notes: 3 rows, the manifest says 4".into()]
            },
            server: "s".into(),
            scratch_database: "x".into(),
            scratch_database_kept: false,
            pg_restore_version: "15".into(),
            tables_checked: 2,
            rows_checked: 7,
            checks_run: 0,
            sha256: None,
            digests_checked: 0,
            content_verified: false,
            amcheck: None,
        });
        Entry {
            key: m.object_key.clone(),
            time: Some(m.started_at),
            size: m.stored_bytes,
            database: Some("notes".into()),
            instance: None,
            anomaly: None,
            latest: false,
            kind: Kind::Backup {
                seal: crate::signing::seal_of(&m.to_json(), crate::signing::DocKind::Manifest),
                manifest: Box::new(m),
                drill,
                suspect: None,
                drill_seal: None,
            },
        }
    }

    /// The catalog of database notes holding `entries`, and a clock reading `now`.
    fn catalog(entries: Vec<Entry>, now: DateTime<Utc>) -> (Catalog, Clock) {
        let tolerance = Duration::minutes(5);
        let view = crate::catalog::View {
            scope: Some(crate::scope::Scope::new("notes", None)),
            now,
            tolerance,
            trust: Default::default(),
        };
        let clock = Clock {
            local: now,
            server: None,
            tolerance,
        };
        (Catalog { entries, view }, clock)
    }

    #[test]
    fn tables_that_vanished_shrank_or_stopped_growing_come_first() {
        let days = [
            manifest(1, &[("notes", 10), ("users", 5), ("tags", 1), ("gone", 9)]),
            manifest(2, &[("notes", 20), ("users", 6), ("tags", 2), ("gone", 9)]),
            manifest(3, &[("notes", 30), ("users", 6), ("tags", 3)]),
            manifest(4, &[("notes", 40), ("users", 6), ("tags", 2)]),
            manifest(5, &[("notes", 50), ("users", 6), ("tags", 4)]),
        ];
        let refs: Vec<&Manifest> = days.iter().collect();
        let t = table_histories(&refs);
        let order: Vec<(&str, Vec<&str>)> = t
            .iter()
            .map(|t| (t.name.as_str(), t.flags.clone()))
            .collect();
        assert_eq!(
            order,
            vec![
                ("public.users", vec!["stopped_growing"]),
                ("public.gone", vec!["vanished"]),
                ("public.notes", vec![]),
                ("public.tags", vec![]),
            ]
        );
        assert_eq!(t[2].points.len(), 5);
        assert_eq!(t[1].points.len(), 2);
        assert_eq!(t[1].latest, None);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// Whatever a stranger puts in a manifest (any date a manifest can carry, any
        /// duration or size, any table name), the report is built and drawn.
        #[test]
        fn any_manifest_values_render(
            rows in proptest::collection::vec(
                (
                    0u32..3_000_000,
                    -1e12f64..1e12,
                    proptest::num::u64::ANY,
                    -5i64..i64::MAX / 2,
                    ".{0,12}",
                ),
                1..6,
            ),
        ) {
            let entries: Vec<Entry> = rows.iter().enumerate().map(|(i, (secs, dur, size, n, table))| {
                let mut m = manifest(1 + (i as u32 % 28), &[(table.as_str(), *n)]);
                // Years 0001 to 9999, as RFC 3339 dates in a manifest can be.
                let at = *secs as i64 * 105_000 - 62_000_000_000;
                m.started_at = Utc.timestamp_opt(at, 0).unwrap();
                m.duration_seconds = *dur;
                m.stored_bytes = *size;
                m.uncompressed_bytes = size / 3;
                m.object_key = format!("k{i}");
                backup(m, if i % 2 == 0 { Some(i % 4 == 0) } else { None })
            }).collect();
            let policy = Policy { keep_daily: Some(2), ..Default::default() };
            let cx = Context {
                destination: "d".into(),
                prefix: "p/".into(),
                policy: Some(&policy),
            };
            let (c, clock) = catalog(entries, Utc::now());
            let r = build(&c, &clock, &cx);
            proptest::prop_assert_eq!(r.backups.len(), rows.len());
            let page = html::render(&r);
            proptest::prop_assert!(page.contains("</html>"));
        }
    }

    #[test]
    fn highlights_drill_outcomes_and_retention_come_from_the_catalog() {
        let entries = vec![
            backup(manifest(3, &[("notes", 3)]), Some(false)),
            backup(manifest(2, &[("notes", 2)]), Some(true)),
            backup(manifest(1, &[("notes", 1)]), None),
            Entry {
                key: "backups/leaflock_backup_20261102T030000Z.manifest.json".into(),
                time: None,
                size: 9,
                database: None,
                instance: None,
                anomaly: None,
                latest: false,
                kind: Kind::BadManifest {
                    error: "not a valid manifest: <b>".into(),
                },
            },
        ];
        let policy = Policy {
            keep_last: Some(1),
            ..Default::default()
        };
        let cx = Context {
            destination: "s3://b".into(),
            prefix: "backups/".into(),
            policy: Some(&policy),
        };
        let (c, clock) = catalog(entries, Utc.with_ymd_and_hms(2026, 11, 4, 0, 0, 0).unwrap());
        let r = build(&c, &clock, &cx);
        let outcomes: Vec<DrillOutcome> = r.backups.iter().map(|b| b.drill).collect();
        assert_eq!(
            outcomes,
            vec![
                DrillOutcome::Never,
                DrillOutcome::CountsOnly,
                DrillOutcome::Failed
            ]
        );
        assert_eq!(
            r.drills,
            DrillCounts {
                content_verified: 0,
                counts_only: 1,
                failed: 1,
                never: 1
            }
        );
        assert_eq!(r.backups[2].highlights[0].label, "drill_failed");
        assert!(r.backups[2].highlights[0].detail.contains("3 rows"));
        assert_eq!(r.anomalies.len(), 1);
        assert_eq!(r.anomalies[0].highlights[0].label, "bad_manifest");
        let plan = r.retention.unwrap();
        assert_eq!(plan.policy, "--keep-last 1");
        // The newest is kept (last 1), and so is the newest that passed its drill; the
        // oldest goes.
        assert_eq!((plan.keep, plan.delete), (2, 1));
        assert!(!plan.decisions[2].keep);
        assert_eq!(r.tables[0].points.len(), 3);
    }
}

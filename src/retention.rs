//! Retention: which backups to keep (grandfather-father-son and a maximum age), and
//! deleting the rest — only after a successful run, or by `prune`.
//!
//! Safety rules, in order:
//! - retention acts on one database's backups (`scope.rs`); another database's
//!   backups are never candidates;
//! - only backups with this tool's manifest are candidates; old archives, debris,
//!   foreign objects and anomalies (manifests dated in the future) are never touched
//!   by a policy, and never count towards one;
//! - nothing is deleted while the local clock and the destination's disagree, while
//!   the newest backup is a suspect no operator accepted (`gate.rs`), or when the plan
//!   would keep nothing;
//! - the backup a run has just made is never deleted by that run;
//! - the newest backup whose restore drill passed is never deleted, nor is the newest
//!   backup of all (a failed drill never counts as verified, but such a backup may
//!   still be the best copy there is);
//! - a backup goes by deleting its manifest first (it stops being a backup at once),
//!   then its object and drill record; a half-done deletion leaves debris, never a
//!   manifest that promises a missing object.
//!
//! `max_age` is a hard limit (LeafLock promises that data of a deleted account leaves
//! the backups within 30 days): nothing older is kept by a GFS rule, only by the two
//! safety rules above, and then with a warning.

use crate::catalog::{self, Catalog};
use crate::clock::Clock;
use crate::manifest;
use crate::storage::Storage;
use chrono::{DateTime, Datelike, Duration, Utc};
use std::collections::{BTreeMap, HashSet};

/// LeafLock's GDPR promise: backup cleanup within 30 days of an account deletion.
pub const GDPR_DAYS: u32 = 30;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub keep_last: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub max_age_days: Option<u32>,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }

    fn has_gfs(&self) -> bool {
        self.keep_last.is_some()
            || self.keep_daily.is_some()
            || self.keep_weekly.is_some()
            || self.keep_monthly.is_some()
    }

    /// How far back this policy can keep backups, in days, if that can exceed the
    /// GDPR limit; `None` when it stays within it.
    pub fn longest_days(&self) -> Option<u32> {
        let gfs = [
            self.keep_weekly.map(|w| w * 7),
            self.keep_monthly.map(|m| m * 31),
            self.keep_daily,
        ]
        .into_iter()
        .flatten()
        .max();
        let longest = match (self.max_age_days, gfs) {
            (Some(a), _) => Some(a),
            (None, g) => g,
        };
        longest.filter(|d| *d > GDPR_DAYS)
    }
}

/// A backup as retention sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub key: String,
    pub time: DateTime<Utc>,
    /// Its latest restore drill passed.
    pub verified: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub key: String,
    pub time: DateTime<Utc>,
    /// Why it is kept; empty means it goes.
    pub reasons: Vec<String>,
}

impl Decision {
    pub fn keep(&self) -> bool {
        !self.reasons.is_empty()
    }
}

/// Decide, newest first, what to keep and why.
pub fn plan(candidates: &[Candidate], policy: &Policy, now: DateTime<Utc>) -> Vec<Decision> {
    let mut sorted: Vec<&Candidate> = candidates.iter().collect();
    sorted.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.key.cmp(&a.key)));
    let mut reasons: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let mut add = |i: usize, r: String| reasons.entry(i).or_default().push(r);

    let too_old = |c: &Candidate| {
        policy
            .max_age_days
            .is_some_and(|d| now - c.time > Duration::days(d as i64))
    };

    if let Some(n) = policy.keep_last {
        for (i, _) in sorted.iter().enumerate().take(n as usize) {
            add(i, format!("last {n}"));
        }
    }
    let mut bucket = |n: Option<u32>, label: &str, key: &dyn Fn(&DateTime<Utc>) -> String| {
        let Some(n) = n else { return };
        let mut seen: HashSet<String> = HashSet::new();
        for (i, c) in sorted.iter().enumerate() {
            if seen.len() == n as usize {
                break;
            }
            let k = key(&c.time);
            if seen.insert(k.clone()) {
                add(i, format!("{label} {k}"));
            }
        }
    };
    bucket(policy.keep_daily, "daily", &|t| {
        t.format("%Y-%m-%d").to_string()
    });
    bucket(policy.keep_weekly, "weekly", &|t| {
        let w = t.iso_week();
        format!("{}-W{:02}", w.year(), w.week())
    });
    bucket(policy.keep_monthly, "monthly", &|t| {
        t.format("%Y-%m").to_string()
    });

    if let (Some(days), false) = (policy.max_age_days, policy.has_gfs()) {
        for (i, c) in sorted.iter().enumerate() {
            if !too_old(c) {
                add(i, format!("younger than {days} days"));
            }
        }
    }
    // The hard age limit removes what the GFS rules kept ...
    for (i, c) in sorted.iter().enumerate() {
        if too_old(c) {
            reasons.remove(&i);
        }
    }
    // ... but never the two safety keeps.
    if !sorted.is_empty() {
        reasons.entry(0).or_default().push("newest backup".into());
    }
    if let Some(i) = sorted.iter().position(|c| c.verified) {
        reasons
            .entry(i)
            .or_default()
            .push("newest backup whose restore drill passed".into());
    }

    sorted
        .iter()
        .enumerate()
        .map(|(i, c)| Decision {
            key: c.key.clone(),
            time: c.time,
            reasons: reasons.remove(&i).unwrap_or_default(),
        })
        .collect()
}

/// Why retention deleted nothing this time (a refusal, not an error of the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "retention deleted nothing: {}", self.0)
    }
}

impl std::error::Error for Refused {}

/// What `apply` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub kept: usize,
    pub deleted: usize,
}

/// What retention would keep and delete over the backups of the catalog's scope, and
/// why, without touching anything (`apply` and `report` both decide here). Refuses
/// (with [`Refused`]) when the two clocks disagree, when the newest backup is a suspect
/// nobody accepted, or when the plan would keep nothing. `own` (the backup a run has
/// just made) and suspects awaiting an operator are always kept; anomalies are never
/// candidates.
pub fn decide(
    catalog: &Catalog,
    clock: &Clock,
    policy: &Policy,
    own: Option<&str>,
) -> anyhow::Result<Vec<Decision>> {
    if catalog.view.scope.is_none() {
        anyhow::bail!("retention acts on one database at a time");
    }
    if !clock.agrees() {
        let skew = clock.skew().map(|s| s.num_seconds()).unwrap_or(0);
        return Err(Refused(format!(
            "the local clock and the destination's disagree by {skew} s (more than the {} s of \
             --clock-tolerance); fix the clock first",
            clock.tolerance.num_seconds()
        ))
        .into());
    }
    // Sound backups the trust policy counts; the others are judged apart
    // (`untrusted_decisions`).
    let sound: Vec<&catalog::Entry> = catalog
        .backups()
        .filter(|e| e.is_sound_backup() && catalog.counts(e))
        .collect();
    if let Some(newest) = sound.first() {
        if let Some(s) = newest.unaccepted_suspect() {
            return Err(Refused(format!(
                "the newest backup {} is suspect ({}); check it, then accept it with \
                 `leaflock-backup prune --accept-suspect {}` if the change is intended",
                newest.key,
                s.findings.join("; "),
                newest.key
            ))
            .into());
        }
    }
    let candidates: Vec<Candidate> = sound
        .iter()
        .filter_map(|e| {
            Some(Candidate {
                key: e.key.clone(),
                time: e.manifest()?.started_at,
                verified: catalog.verified(e),
            })
        })
        .collect();
    let mut decisions = plan(&candidates, policy, clock.now());
    decisions.extend(untrusted_decisions(
        catalog,
        &candidates,
        policy,
        clock.now(),
    ));
    for d in &mut decisions {
        if Some(d.key.as_str()) == own {
            d.reasons.push("made by this run".into());
        }
        let suspect = sound
            .iter()
            .any(|e| e.key == d.key && e.unaccepted_suspect().is_some());
        if suspect {
            d.reasons.push("suspect, awaiting an operator".into());
        }
    }
    if !decisions.is_empty() && !decisions.iter().any(Decision::keep) {
        return Err(Refused("the policy would delete every backup of this database".into()).into());
    }
    Ok(decisions)
}

/// Plan over the backups of the catalog's scope and, unless `dry_run`, delete what
/// the plan does not keep. Refuses (with [`Refused`], deleting nothing) when the two
/// clocks disagree, when the newest backup is a suspect nobody accepted, or when the
/// plan would keep nothing. `own` (the backup a run has just made) and suspects
/// awaiting an operator are always kept; anomalies are never candidates.
pub async fn apply(
    storage: &dyn Storage,
    catalog: &Catalog,
    clock: &Clock,
    policy: &Policy,
    own: Option<&str>,
    dry_run: bool,
) -> anyhow::Result<Applied> {
    for e in catalog.backups().filter(|e| e.anomaly.is_some()) {
        tracing::warn!(key = %e.key, anomaly = ?e.anomaly, "not a retention candidate: {} ({})",
            e.key, e.anomaly.as_deref().unwrap_or_default());
    }
    let decisions = decide(catalog, clock, policy, own)?;
    let mut out = Applied::default();
    for d in &decisions {
        if d.keep() {
            out.kept += 1;
            let old = clock.now() - d.time > Duration::days(GDPR_DAYS as i64);
            tracing::info!(key = %d.key, reasons = %d.reasons.join("; "), "keep {} ({})", d.key, d.reasons.join(", "));
            if old {
                tracing::warn!(key = %d.key, "{} is older than {GDPR_DAYS} days and kept ({})", d.key, d.reasons.join(", "));
            }
            continue;
        }
        if dry_run {
            tracing::info!(key = %d.key, dry_run = true, "would delete {} (no rule keeps it)", d.key);
            out.deleted += 1;
            continue;
        }
        // Manifest first: from that moment it is no longer a backup.
        let m = manifest::manifest_key(&d.key);
        storage
            .delete(&m)
            .await
            .map_err(|e| e.context(format!("cannot delete {m}")))?;
        for k in [
            d.key.clone(),
            manifest::drill_key(&d.key),
            manifest::suspect_key(&d.key),
        ] {
            if let Err(e) = storage.delete(&k).await {
                if storage.exists(&k).await.unwrap_or(true) {
                    tracing::warn!(key = %k, error = format!("{e:#}"), "could not delete; it is left as debris");
                }
            }
        }
        tracing::info!(key = %d.key, "deleted {} (no rule keeps it)", d.key);
        out.deleted += 1;
    }
    Ok(out)
}

/// Backups the trust policy does not count (see `signing.rs`): they never fill a keep
/// rule nor count as the newest or the verified backup, so a planted or unsigned
/// backup cannot push a validly signed one out. They are kept, with a warning, until
/// the hard age limit (`--max-age`, read from the object's own name, not from the
/// unsigned manifest) — and even then only when nothing they would delete (object,
/// manifest, drill record: the same stem) belongs to a counted backup.
fn untrusted_decisions(
    catalog: &Catalog,
    counted: &[Candidate],
    policy: &Policy,
    now: DateTime<Utc>,
) -> Vec<Decision> {
    let trust = &catalog.view.trust;
    catalog
        .untrusted()
        .into_iter()
        // Anomalies are never deleted by a policy.
        .filter(|e| e.anomaly.is_none())
        .map(|e| {
            let named_time = catalog::time_from_name(&e.key);
            let shares_stem = counted
                .iter()
                .any(|c| manifest::stem(&c.key) == manifest::stem(&e.key));
            let expired = match (policy.max_age_days, named_time) {
                (Some(days), Some(t)) => now - t > Duration::days(days as i64),
                _ => false,
            };
            let what = e.trust(trust).describe();
            tracing::warn!(
                key = %e.key,
                signature = %what,
                "{} is {what}: retention does not count it (it cannot keep or push out a signed backup)",
                e.key
            );
            let reasons = if expired && !shares_stem {
                Vec::new()
            } else if shares_stem {
                vec![format!("{what}, beside a trusted backup of the same name")]
            } else {
                vec![format!("{what}: never counted, kept until --max-age")]
            };
            Decision {
                key: e.key.clone(),
                time: named_time.or(e.time).unwrap_or(now),
                reasons,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap()
    }

    /// Backups at 02:00 and 14:00 every day from `from` for `days` days.
    fn twice_daily(from: DateTime<Utc>, days: i64) -> Vec<Candidate> {
        (0..days)
            .flat_map(|d| {
                [2, 14].map(|h| {
                    let t = from + Duration::days(d) + Duration::hours(h);
                    Candidate {
                        key: format!("b/{}", t.format("%Y%m%dT%H")),
                        time: t,
                        verified: false,
                    }
                })
            })
            .collect()
    }

    fn kept(d: &[Decision]) -> Vec<String> {
        d.iter()
            .filter(|d| d.keep())
            .map(|d| d.key.clone())
            .collect()
    }

    #[test]
    fn gfs_across_a_year_boundary() {
        // 2025-10-01 .. 2026-01-19, twice a day; now is 2026-01-20.
        let c = twice_daily(at(2025, 10, 1, 0), 111);
        let now = at(2026, 1, 20, 0);
        let p = Policy {
            keep_last: Some(2),
            keep_daily: Some(3),
            keep_weekly: Some(3),
            keep_monthly: Some(4),
            max_age_days: None,
        };
        let d = plan(&c, &p, now);
        assert_eq!(
            kept(&d),
            vec![
                "b/20260119T14", // last, daily 01-19, weekly 2026-W04, monthly 2026-01, newest
                "b/20260119T02", // last
                "b/20260118T14", // daily 01-18, weekly 2026-W03 (Sunday)
                "b/20260117T14", // daily 01-17
                "b/20260111T14", // weekly 2026-W02 (Sunday)
                "b/20251231T14", // monthly 2025-12 (year boundary)
                "b/20251130T14", // monthly 2025-11
                "b/20251031T14", // monthly 2025-10
            ]
        );
        let first = &d[0];
        assert!(
            first.reasons.iter().any(|r| r == "monthly 2026-01"),
            "{first:?}"
        );
        assert!(
            first.reasons.iter().any(|r| r == "weekly 2026-W04"),
            "{first:?}"
        );
    }

    #[test]
    fn max_age_is_a_hard_limit_except_for_the_safety_keeps() {
        let mut c = twice_daily(at(2026, 1, 1, 0), 60);
        // Only an old backup passed its drill.
        c[10].verified = true;
        let now = at(2026, 3, 2, 0);
        let p = Policy {
            keep_monthly: Some(6),
            max_age_days: Some(30),
            ..Default::default()
        };
        let d = plan(&c, &p, now);
        let keep = kept(&d);
        // Monthly 2026-03, -02 and -01 are within 30 days (Jan 31 14:00 is 29 d 10 h
        // before now); monthly would reach back six months, but the age limit stops it.
        // The old verified one survives by the safety rule alone.
        assert_eq!(
            keep,
            vec![
                "b/20260301T14",
                "b/20260228T14",
                "b/20260131T14",
                "b/20260106T02"
            ]
        );
        let verified = d.iter().find(|x| x.key == "b/20260106T02").unwrap();
        assert_eq!(
            verified.reasons,
            vec!["newest backup whose restore drill passed"]
        );
        // With a shorter limit, January's monthly goes too.
        let p = Policy {
            max_age_days: Some(29),
            ..p
        };
        assert!(!plan(&c, &p, now)
            .iter()
            .any(|x| x.key == "b/20260131T14" && x.keep()));
    }

    #[test]
    fn max_age_alone_keeps_the_young_and_an_empty_policy_keeps_only_the_newest() {
        let c = twice_daily(at(2026, 1, 1, 0), 10);
        let now = at(2026, 1, 11, 0);
        let d = plan(
            &c,
            &Policy {
                max_age_days: Some(3),
                ..Default::default()
            },
            now,
        );
        assert_eq!(kept(&d).len(), 6, "{:?}", kept(&d));
        let d = plan(&c, &Policy::default(), now);
        assert_eq!(kept(&d), vec!["b/20260110T14"]);
    }

    #[test]
    fn long_retention_is_noticed() {
        assert_eq!(
            Policy {
                keep_monthly: Some(3),
                ..Default::default()
            }
            .longest_days(),
            Some(93)
        );
        assert_eq!(
            Policy {
                keep_daily: Some(7),
                ..Default::default()
            }
            .longest_days(),
            None
        );
        assert_eq!(
            Policy {
                keep_monthly: Some(3),
                max_age_days: Some(30),
                ..Default::default()
            }
            .longest_days(),
            None
        );
    }
}

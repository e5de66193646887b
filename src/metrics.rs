//! Metrics pushed to a Prometheus Pushgateway, made to mean what their names say for
//! short-lived runs.
//!
//! A Pushgateway caches the last push of a group; it does not add. So before pushing,
//! the runner reads the group's current values back (`GET /api/v1/metrics`), adds this
//! run to the counters and histograms, carries over the gauges this run does not
//! change (a failed run keeps the last success's timestamp and size), and replaces the
//! group with `PUT`. If the read-back fails it pushes this run alone (a counter reset,
//! which `rate()` and `increase()` handle) and says so. The grouping key is
//! `job` + `database`, never a host or pod name. A Pushgateway problem is reported as
//! a warning by the caller and never changes the outcome of a backup.

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use chrono::{DateTime, Utc};
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::Encoder;
use serde_json::Value;
use std::time::{Duration, Instant};

use crate::secrets::redact_url;

#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub url: String,
    pub job: String,
    /// `database` grouping label; `None` means the database name.
    pub database_label: Option<String>,
    pub timeout: Duration,
}

impl MetricsConfig {
    /// The URL for messages: credentials masked.
    pub fn shown(&self) -> String {
        redact_url(&self.url).trim_end_matches('/').to_string()
    }
}

/// Upstream's buckets (1..600) plus 900, 1800, 3600, 7200, so that "p95 > 600" and
/// "slower than an hour" can be computed.
pub const DURATION_BUCKETS: [f64; 11] = [
    1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
];

pub const BACKUPS_TOTAL: &str = "leaflock_backups_total";
pub const BACKUP_DURATION: &str = "leaflock_backup_duration_seconds";
pub const BACKUP_SIZE: &str = "leaflock_backup_size_bytes";
pub const BACKUP_UNCOMPRESSED_SIZE: &str = "leaflock_backup_uncompressed_size_bytes";
pub const LAST_SUCCESS: &str = "leaflock_backup_last_success_timestamp_seconds";
pub const LAST_RUN: &str = "leaflock_backup_last_run_timestamp_seconds";
pub const LAST_DURATION: &str = "leaflock_backup_last_duration_seconds";
pub const NEXT_RUN: &str = "leaflock_backup_next_run_timestamp_seconds";
pub const SUSPECT_BACKUPS: &str = "leaflock_backup_suspect_backups";
pub const FUTURE_DATED_BACKUPS: &str = "leaflock_backup_future_dated_backups";
pub const DRILLS_TOTAL: &str = "leaflock_restore_drills_total";
pub const DRILL_DURATION: &str = "leaflock_restore_drill_duration_seconds";
pub const DRILL_LAST_SUCCESS: &str = "leaflock_restore_drill_last_success_timestamp_seconds";
pub const UNTRUSTED_BACKUPS: &str = "leaflock_backup_untrusted_backups";
pub const DRILL_CONTENT_VERIFIED: &str = "leaflock_restore_drill_content_verified";
pub const LAST_CONTENT_VERIFIED: &str = "leaflock_backup_last_content_verified_timestamp_seconds";

/// A cumulative histogram over [`DURATION_BUCKETS`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hist {
    /// Cumulative count per bound of `DURATION_BUCKETS`.
    pub buckets: [u64; DURATION_BUCKETS.len()],
    pub count: u64,
    pub sum: f64,
}

impl Hist {
    pub fn observe(&mut self, v: f64) {
        for (i, b) in DURATION_BUCKETS.iter().enumerate() {
            if v <= *b {
                self.buckets[i] += 1;
            }
        }
        self.count += 1;
        self.sum += v;
    }
}

/// Everything this tool keeps in its Pushgateway group.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupState {
    pub success_total: f64,
    pub failure_total: f64,
    pub duration: Hist,
    pub last_success: Option<f64>,
    pub last_run: Option<f64>,
    pub last_duration: Option<f64>,
    pub size_bytes: Option<f64>,
    pub uncompressed_size_bytes: Option<f64>,
    pub next_run: Option<f64>,
    pub suspect_backups: Option<f64>,
    pub future_dated_backups: Option<f64>,
    pub drills_success: f64,
    pub drills_failure: f64,
    pub drill_duration: Hist,
    pub drill_last_success: Option<f64>,
    /// 1 when the last drill passed with every content digest matched, else 0.
    pub drill_content_verified: Option<f64>,
    /// When the newest backup a drill proved content verified was made.
    pub last_content_verified: Option<f64>,
    /// Backups under the prefix not signed by a trusted key, at the last run that
    /// checked (only pushed when trusted keys are configured).
    pub untrusted_backups: Option<f64>,
}

/// What one backup run contributes.
#[derive(Debug, Clone)]
pub struct BackupOutcome {
    pub success: bool,
    pub finished_at: DateTime<Utc>,
    pub duration_seconds: f64,
    pub stored_bytes: Option<u64>,
    pub uncompressed_bytes: Option<u64>,
    pub next_run: Option<DateTime<Utc>>,
    /// What the run saw at the destination, when it could look.
    pub catalog: Option<CatalogFigures>,
}

/// Backups of this database that need a person: held by the regression gate and not
/// accepted, or dated in the future.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CatalogFigures {
    pub suspect: usize,
    pub future_dated: usize,
    /// Backups the trust policy does not count, when trusted keys are configured.
    pub untrusted: Option<usize>,
}

/// What one restore drill contributes.
#[derive(Debug, Clone)]
pub struct DrillOutcome {
    pub success: bool,
    pub finished_at: DateTime<Utc>,
    pub duration_seconds: f64,
    /// Every content digest matched (see `DrillRecord::content_verified`).
    pub content_verified: bool,
    /// When the drilled backup was made (its manifest's `finished_at`).
    pub backup_finished_at: DateTime<Utc>,
}

fn ts(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

impl GroupState {
    pub fn add_backup(&mut self, o: &BackupOutcome) {
        if o.success {
            self.success_total += 1.0;
            self.last_success = Some(ts(o.finished_at));
            if let Some(b) = o.stored_bytes {
                self.size_bytes = Some(b as f64);
            }
            if let Some(b) = o.uncompressed_bytes {
                self.uncompressed_size_bytes = Some(b as f64);
            }
        } else {
            self.failure_total += 1.0;
        }
        self.duration.observe(o.duration_seconds);
        self.last_run = Some(ts(o.finished_at));
        self.last_duration = Some(o.duration_seconds);
        if o.next_run.is_some() {
            self.next_run = o.next_run.map(ts);
        }
        if let Some(c) = o.catalog {
            self.suspect_backups = Some(c.suspect as f64);
            self.future_dated_backups = Some(c.future_dated as f64);
        }
    }

    pub fn add_drill(&mut self, o: &DrillOutcome) {
        if o.success {
            self.drills_success += 1.0;
            self.drill_last_success = Some(ts(o.finished_at));
        } else {
            self.drills_failure += 1.0;
        }
        self.drill_duration.observe(o.duration_seconds);
        let verified = o.success && o.content_verified;
        self.drill_content_verified = Some(if verified { 1.0 } else { 0.0 });
        if verified {
            // A drill of an older backup never moves the newest one back.
            let t = ts(o.backup_finished_at);
            self.last_content_verified = Some(self.last_content_verified.map_or(t, |x| x.max(t)));
        }
    }

    /// Read the group out of `GET /api/v1/metrics`. `None` when the group is absent.
    pub fn from_api(body: &Value, job: &str, database: &str) -> Result<Option<GroupState>> {
        let groups = body
            .get("data")
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow!("unexpected answer from /api/v1/metrics: no data array"))?;
        let group = groups.iter().find(|g| {
            let l = &g["labels"];
            l["job"].as_str() == Some(job)
                && l["database"].as_str() == Some(database)
                && l.as_object().is_some_and(|o| {
                    o.iter()
                        .all(|(k, v)| k == "job" || k == "database" || v.as_str() == Some(""))
                })
        });
        let Some(g) = group else { return Ok(None) };
        let mut s = GroupState {
            success_total: labelled_value(g, BACKUPS_TOTAL, "status", "success").unwrap_or(0.0),
            failure_total: labelled_value(g, BACKUPS_TOTAL, "status", "failure").unwrap_or(0.0),
            drills_success: labelled_value(g, DRILLS_TOTAL, "status", "success").unwrap_or(0.0),
            drills_failure: labelled_value(g, DRILLS_TOTAL, "status", "failure").unwrap_or(0.0),
            last_success: plain_value(g, LAST_SUCCESS),
            last_run: plain_value(g, LAST_RUN),
            last_duration: plain_value(g, LAST_DURATION),
            size_bytes: plain_value(g, BACKUP_SIZE),
            uncompressed_size_bytes: plain_value(g, BACKUP_UNCOMPRESSED_SIZE),
            next_run: plain_value(g, NEXT_RUN),
            suspect_backups: plain_value(g, SUSPECT_BACKUPS),
            future_dated_backups: plain_value(g, FUTURE_DATED_BACKUPS),
            drill_last_success: plain_value(g, DRILL_LAST_SUCCESS),
            drill_content_verified: plain_value(g, DRILL_CONTENT_VERIFIED),
            last_content_verified: plain_value(g, LAST_CONTENT_VERIFIED),
            untrusted_backups: plain_value(g, UNTRUSTED_BACKUPS),
            ..Default::default()
        };
        s.duration = hist_value(g, BACKUP_DURATION).unwrap_or_default();
        s.drill_duration = hist_value(g, DRILL_DURATION).unwrap_or_default();
        Ok(Some(s))
    }

    /// The group as metric families, ready for the text encoder.
    /// The grouping labels (job, database) are not in here: they travel in the URL.
    pub fn families(&self) -> Vec<MetricFamily> {
        let mut out = vec![
            family(
                BACKUPS_TOTAL,
                "Backup runs by outcome, cumulative across runs.",
                MetricType::COUNTER,
                vec![
                    counter(&[("status", "success")], self.success_total),
                    counter(&[("status", "failure")], self.failure_total),
                ],
            ),
            family(
                BACKUP_DURATION,
                "Duration of backup runs (success and failure), cumulative across runs.",
                MetricType::HISTOGRAM,
                vec![histogram(&self.duration)],
            ),
        ];
        let gauges: [(&str, &str, Option<f64>); 12] = [
            (
                BACKUP_SIZE,
                "Stored bytes of the last successful backup.",
                self.size_bytes,
            ),
            (
                BACKUP_UNCOMPRESSED_SIZE,
                "Uncompressed (pg_dump) bytes of the last successful backup.",
                self.uncompressed_size_bytes,
            ),
            (
                LAST_SUCCESS,
                "Unix time the last successful backup finished.",
                self.last_success,
            ),
            (
                LAST_RUN,
                "Unix time the last backup run finished, whatever its outcome.",
                self.last_run,
            ),
            (
                LAST_DURATION,
                "Duration of the last backup run in seconds.",
                self.last_duration,
            ),
            (
                NEXT_RUN,
                "Unix time of the next scheduled run, from the configured schedule.",
                self.next_run,
            ),
            (
                DRILL_LAST_SUCCESS,
                "Unix time the last successful restore drill finished.",
                self.drill_last_success,
            ),
            (
                DRILL_CONTENT_VERIFIED,
                "1 when the last restore drill passed with every table's content digest matched (content verified), 0 when it failed or proved row counts only.",
                self.drill_content_verified,
            ),
            (
                LAST_CONTENT_VERIFIED,
                "Unix time the newest backup a restore drill proved content verified was made.",
                self.last_content_verified,
            ),
            (
                SUSPECT_BACKUPS,
                "Backups held by the regression gate (a table vanished or collapsed, the size fell) that no operator accepted.",
                self.suspect_backups,
            ),
            (
                FUTURE_DATED_BACKUPS,
                "Backups whose manifest is dated in the future beyond the clock tolerance (never latest, never decide retention).",
                self.future_dated_backups,
            ),
            (
                UNTRUSTED_BACKUPS,
                "Backups under the prefix that are unsigned, badly signed or signed by an untrusted key, \
                 skipped by latest and retention (last run that checked).",
                self.untrusted_backups,
            ),
        ];
        for (name, help, v) in gauges {
            if let Some(v) = v {
                out.push(family(name, help, MetricType::GAUGE, vec![gauge(v)]));
            }
        }
        if self.drills_success + self.drills_failure > 0.0 {
            out.push(family(
                DRILLS_TOTAL,
                "Restore drills by outcome, cumulative across runs.",
                MetricType::COUNTER,
                vec![
                    counter(&[("status", "success")], self.drills_success),
                    counter(&[("status", "failure")], self.drills_failure),
                ],
            ));
            out.push(family(
                DRILL_DURATION,
                "Duration of restore drills, cumulative across runs.",
                MetricType::HISTOGRAM,
                vec![histogram(&self.drill_duration)],
            ));
        }
        out
    }

    pub fn to_text(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.families(), &mut buf)
            .expect("text encoding to memory");
        buf
    }
}

fn metric_entries<'a>(g: &'a Value, name: &str) -> impl Iterator<Item = &'a Value> {
    g.get(name)
        .and_then(|f| f.get("metrics"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

fn labelled_value(g: &Value, name: &str, label: &str, value: &str) -> Option<f64> {
    metric_entries(g, name)
        .find(|m| m["labels"][label].as_str() == Some(value))
        .and_then(|m| num(&m["value"]))
}

fn plain_value(g: &Value, name: &str) -> Option<f64> {
    metric_entries(g, name)
        .next()
        .and_then(|m| num(&m["value"]))
}

/// A histogram read back; `None` when absent or when its buckets are not ours (then
/// the histogram restarts, which Prometheus treats as a counter reset).
fn hist_value(g: &Value, name: &str) -> Option<Hist> {
    let m = metric_entries(g, name).next()?;
    let buckets = m.get("buckets")?.as_object()?;
    let mut h = Hist {
        count: num(&m["count"])? as u64,
        sum: num(&m["sum"])?,
        ..Default::default()
    };
    for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
        let v = buckets
            .iter()
            .find(|(k, _)| k.parse::<f64>().is_ok_and(|b| (b - bound).abs() < 1e-9))?;
        h.buckets[i] = num(v.1)? as u64;
    }
    Some(h)
}

fn family(name: &str, help: &str, t: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(t);
    f.set_metric(metrics);
    f
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name(k.to_string());
            l.set_value(v.to_string());
            l
        })
        .collect()
}

fn counter(l: &[(&str, &str)], v: f64) -> Metric {
    let mut c = Counter::default();
    c.set_value(v);
    let mut m = Metric::from_label(labels(l));
    m.set_counter(c);
    m
}

fn gauge(v: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(v);
    Metric::from_gauge(g)
}

fn histogram(h: &Hist) -> Metric {
    let mut p = Histogram::default();
    p.set_sample_count(h.count);
    p.set_sample_sum(h.sum);
    p.set_bucket(
        DURATION_BUCKETS
            .iter()
            .zip(h.buckets.iter())
            .map(|(b, c)| {
                let mut bk = Bucket::default();
                bk.set_upper_bound(*b);
                bk.set_cumulative_count(*c);
                bk
            })
            .collect(),
    );
    let mut m = Metric::default();
    m.set_histogram(p);
    m
}

/// How a push went, for the run's log.
#[derive(Debug)]
pub struct PushReport {
    /// `false` when the read-back failed and this run was pushed alone.
    pub cumulative: bool,
    pub state: GroupState,
}

pub struct Pushgateway {
    cfg: MetricsConfig,
    http: reqwest::Client,
}

impl Pushgateway {
    pub fn new(cfg: &MetricsConfig) -> Result<Pushgateway> {
        let http = crate::httptls::reqwest_builder()?
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .user_agent(concat!("leaflock-backup/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("HTTP client")?;
        Ok(Pushgateway {
            cfg: cfg.clone(),
            http,
        })
    }

    fn group_path(&self, database: &str) -> String {
        let b64 = |s: &str| {
            if s.is_empty() {
                "=".to_string()
            } else {
                base64::engine::general_purpose::URL_SAFE.encode(s)
            }
        };
        format!(
            "{}/metrics/job@base64/{}/database@base64/{}",
            self.cfg.url,
            b64(&self.cfg.job),
            b64(database)
        )
    }

    /// The group's current values; `Ok(None)` when the group does not exist yet.
    pub async fn read(&self, database: &str) -> Result<Option<GroupState>> {
        let resp = self
            .http
            .get(format!("{}/api/v1/metrics", self.cfg.url))
            .send()
            .await
            .map_err(|e| e.without_url())
            .with_context(|| format!("cannot reach the Pushgateway at {}", self.cfg.shown()))?;
        let status = resp.status();
        if !status.is_success() {
            bail!(
                "the Pushgateway at {} answered {status} to a read",
                self.cfg.shown()
            );
        }
        let body: Value = resp.json().await.with_context(|| {
            format!(
                "unreadable answer from the Pushgateway at {}",
                self.cfg.shown()
            )
        })?;
        GroupState::from_api(&body, &self.cfg.job, database)
    }

    /// Replace the group with `state`.
    pub async fn put(&self, database: &str, state: &GroupState) -> Result<()> {
        let body = state.to_text();
        let resp = self
            .http
            .put(self.group_path(database))
            .header("Content-Type", prometheus::TEXT_FORMAT)
            .body(body)
            .send()
            .await
            .map_err(|e| e.without_url())
            .with_context(|| format!("cannot reach the Pushgateway at {}", self.cfg.shown()))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            bail!(
                "the Pushgateway at {} refused the push ({status}): {}",
                self.cfg.shown(),
                text.trim()
            );
        }
        Ok(())
    }

    /// `check`: the group can be read back, and a push for this job is accepted: a
    /// probe group of its own (this group's labels plus `probe="check"`, so the run's
    /// figures are never touched) is pushed, then deleted.
    pub async fn probe(&self, database: &str, run_id: &str) -> Result<()> {
        self.read(database).await?;
        let url = format!("{}/probe/check", self.group_path(database));
        let body = format!(
            "# TYPE leaflock_backup_check_probe gauge\nleaflock_backup_check_probe{{run_id=\"{run_id}\"}} 1\n"
        );
        let reach = || format!("cannot reach the Pushgateway at {}", self.cfg.shown());
        let resp = self
            .http
            .put(&url)
            .header("Content-Type", prometheus::TEXT_FORMAT)
            .body(body)
            .send()
            .await
            .map_err(|e| e.without_url())
            .with_context(reach)?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            bail!(
                "the Pushgateway at {} refused a push for job {} ({status}): {}",
                self.cfg.shown(),
                self.cfg.job,
                text.trim()
            );
        }
        let resp = self
            .http
            .delete(&url)
            .send()
            .await
            .map_err(|e| e.without_url())
            .with_context(reach)?;
        if !resp.status().is_success() {
            bail!(
                "the Pushgateway at {} accepted the probe push but refused to delete it ({}): \
                 delete the group with probe=\"check\" by hand",
                self.cfg.shown(),
                resp.status()
            );
        }
        Ok(())
    }

    /// Read back, add this run's backup and/or drill (and the count of untrusted
    /// backups, when checked), push. `database` is the grouping label value.
    pub async fn push(
        &self,
        database: &str,
        backup: Option<&BackupOutcome>,
        drill: Option<&DrillOutcome>,
        untrusted: Option<usize>,
    ) -> Result<PushReport> {
        let (mut state, cumulative) = match self.read(database).await {
            Ok(s) => (s.unwrap_or_default(), true),
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    pushgateway = %self.cfg.shown(),
                    "cannot read current metric values back from the Pushgateway; pushing this run alone (counters restart)"
                );
                (GroupState::default(), false)
            }
        };
        if let Some(b) = backup {
            state.add_backup(b);
        }
        if let Some(d) = drill {
            state.add_drill(d);
        }
        if let Some(n) = untrusted {
            state.untrusted_backups = Some(n as f64);
        }
        self.put(database, &state).await?;
        Ok(PushReport { cumulative, state })
    }
}

/// Push this run's outcome; a Pushgateway problem is a warning, never a failure.
pub async fn push(
    mcfg: &crate::metrics::MetricsConfig,
    label: &str,
    backup: Option<&BackupOutcome>,
    drill: Option<&DrillOutcome>,
    untrusted: Option<usize>,
) {
    let clock = Instant::now();
    let result = match Pushgateway::new(mcfg) {
        Ok(pg) => pg.push(label, backup, drill, untrusted).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(report) => tracing::info!(
            pushgateway = %mcfg.shown(),
            duration_seconds = crate::logging::seconds(clock),
            backup_status = backup.map(|b| if b.success { "success" } else { "failure" }),
            drill_status = drill.map(|d| if d.success { "success" } else { "failure" }),
            success_total = report.state.success_total,
            failure_total = report.state.failure_total,
            cumulative = report.cumulative,
            "metrics pushed"
        ),
        Err(e) => tracing::warn!(
            pushgateway = %mcfg.shown(),
            error = format!("{e:#}"),
            duration_seconds = crate::logging::seconds(clock),
            "could not push metrics to the Pushgateway at {}; the outcome is unaffected",
            mcfg.shown()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(success: bool, secs: f64) -> BackupOutcome {
        BackupOutcome {
            success,
            finished_at: Utc::now(),
            duration_seconds: secs,
            stored_bytes: success.then_some(100),
            uncompressed_bytes: success.then_some(200),
            next_run: None,
            catalog: None,
        }
    }

    #[test]
    fn runs_accumulate_and_failures_keep_the_last_success() {
        let mut s = GroupState::default();
        s.add_backup(&outcome(true, 3.0));
        s.add_backup(&outcome(true, 700.0));
        let size_before = s.size_bytes;
        let success_before = s.last_success;
        s.add_backup(&outcome(false, 2.0));
        assert_eq!((s.success_total, s.failure_total), (2.0, 1.0));
        assert_eq!(s.duration.count, 3);
        assert_eq!(s.duration.buckets[1], 2, "<=5s: 3.0 and 2.0");
        assert_eq!(s.duration.buckets[6], 2, "<=600s");
        assert_eq!(s.duration.buckets[7], 3, "<=900s");
        assert_eq!(s.size_bytes, size_before);
        assert_eq!(s.last_success, success_before);
        let text = String::from_utf8(s.to_text()).unwrap();
        assert!(
            text.contains("leaflock_backups_total{status=\"failure\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("leaflock_backup_duration_seconds_bucket{le=\"900\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("leaflock_backup_duration_seconds_count 3"),
            "{text}"
        );
        assert!(
            !text.contains("leaflock_restore_drills_total"),
            "no drill yet: {text}"
        );
        s.add_drill(&DrillOutcome {
            success: false,
            finished_at: Utc::now(),
            duration_seconds: 40.0,
            content_verified: false,
            backup_finished_at: Utc::now(),
        });
        let text = String::from_utf8(s.to_text()).unwrap();
        assert!(
            text.contains("leaflock_restore_drills_total{status=\"failure\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("leaflock_restore_drills_total{status=\"success\"} 0"),
            "{text}"
        );
        assert!(
            !text.contains("leaflock_restore_drill_last_success"),
            "{text}"
        );
        assert!(
            text.contains("leaflock_restore_drill_content_verified 0"),
            "{text}"
        );
        assert!(
            !text.contains("leaflock_backup_last_content_verified"),
            "{text}"
        );
        let made = Utc::now() - chrono::Duration::hours(30);
        let verified = |backup_finished_at| DrillOutcome {
            success: true,
            finished_at: Utc::now(),
            duration_seconds: 40.0,
            content_verified: true,
            backup_finished_at,
        };
        s.add_drill(&verified(made));
        s.add_drill(&verified(made - chrono::Duration::days(7)));
        assert_eq!(s.drill_content_verified, Some(1.0));
        assert_eq!(
            s.last_content_verified,
            Some(ts(made)),
            "an older backup's drill does not move it back"
        );
        let text = String::from_utf8(s.to_text()).unwrap();
        assert!(
            text.contains("leaflock_restore_drill_content_verified 1"),
            "{text}"
        );
        assert!(
            text.contains("leaflock_backup_last_content_verified_timestamp_seconds "),
            "{text}"
        );
    }

    #[test]
    fn reads_the_pushgateway_json_shape() {
        let body: Value = serde_json::json!({"status":"success","data":[
            {"labels":{"job":"other","database":"notes"}},
            {"labels":{"job":"leaflock-backup","database":"notes","instance":""},
             "leaflock_backups_total":{"type":"COUNTER","metrics":[
                {"labels":{"status":"success"},"value":"3"},
                {"labels":{"status":"failure"},"value":"1"}]},
             "leaflock_backup_duration_seconds":{"type":"HISTOGRAM","metrics":[
                {"labels":{},"buckets":{"1":"0","5":"2","10":"3","30":"4","60":"4","300":"4","600":"4",
                  "900":"4","1800":"4","3600":"4","7200":"4"},"count":"4","sum":"31.5"}]},
             "leaflock_backup_size_bytes":{"type":"GAUGE","metrics":[{"labels":{},"value":"12345"}]}}
        ]});
        let s = GroupState::from_api(&body, "leaflock-backup", "notes")
            .unwrap()
            .unwrap();
        assert_eq!(s.success_total, 3.0);
        assert_eq!(s.failure_total, 1.0);
        assert_eq!(s.duration.count, 4);
        assert_eq!(s.duration.buckets[2], 3);
        assert_eq!(s.size_bytes, Some(12345.0));
        assert!(GroupState::from_api(&body, "leaflock-backup", "other")
            .unwrap()
            .is_none());
    }
}

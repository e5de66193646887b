//! The report as one self-contained HTML page: inline CSS and inline SVG charts, no
//! script at all, nothing fetched (a Content-Security-Policy of `default-src 'none'`
//! says so to the browser too). Hovering a point shows its values (SVG `<title>`).
//!
//! Every value from the bucket (keys, table names, error texts) goes through maud's
//! escaping; the only unescaped text is this file's own CSS.

use super::{Backup, DrillOutcome, Highlight, Report, Severity, TableHistory};
use crate::progress::human_bytes;
use chrono::{DateTime, Duration, DurationRound, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};

/// Nothing may be loaded: no script, no font, no image, no connection.
pub const CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'";

const CSS: &str = r#"
:root { --fg:#0f172a; --muted:#64748b; --line:#e2e8f0; --bad:#dc2626; --warn:#d97706; --ok:#16a34a; }
* { box-sizing: border-box; }
body { font: 14px/1.45 "DejaVu Sans", system-ui, sans-serif; color: var(--fg); margin: 0; background: #f8fafc; }
main { max-width: 1040px; margin: 0 auto; padding: 24px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 28px 0 8px; }
.sub { color: var(--muted); margin: 0 0 16px; }
.cards { display: grid; grid-template-columns: repeat(5, 1fr); gap: 10px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; }
.card .v { font-size: 20px; font-weight: bold; }
.card .k { color: var(--muted); font-size: 12px; }
section.box { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; }
svg.chart { display: block; width: 100%; height: auto; }
svg text { font-size: 11px; fill: var(--muted); }
.grid line { stroke: var(--line); }
.axis { stroke: #94a3b8; }
svg polyline { fill: none !important; stroke-width: 2; }
.stored { stroke: #2563eb; fill: #2563eb; }
.uncompressed { stroke: #94a3b8; fill: #94a3b8; }
.duration { stroke: #0d9488; fill: #0d9488; }
.rows { stroke: #7c3aed; fill: #7c3aed; }
circle.pt { stroke-width: 0; }
circle.flag { stroke: var(--bad); stroke-width: 3; }
.drill-content_verified { fill: var(--ok); }
.drill-counts_only { fill: #84cc16; }
.drill-failed { fill: var(--bad); }
.drill-never { fill: #fff; stroke: #94a3b8 !important; stroke-width: 1.5 !important; }
.legend { color: var(--muted); font-size: 12px; margin: 4px 0 0; }
.legend span { margin-right: 14px; white-space: nowrap; }
.sw { display: inline-block; width: 10px; height: 10px; border-radius: 5px; margin-right: 4px; vertical-align: -1px; }
.multiples { display: grid; grid-template-columns: repeat(3, 1fr); gap: 10px; }
.multiples h3 { font-size: 13px; margin: 0; overflow-wrap: anywhere; }
.multiples .n { color: var(--muted); font-size: 12px; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-size: 12px; color: var(--muted); font-weight: normal; }
td.num { text-align: right; white-space: nowrap; }
td { overflow-wrap: anywhere; }
#attention, #anomalies, #retention { table-layout: fixed; }
#attention th:nth-child(1), #anomalies th:nth-child(1) { width: 120px; }
#attention th:nth-child(2), #anomalies th:nth-child(2), #retention th:nth-child(1) { width: 130px; }
#attention th:nth-child(3) { width: 38%; }
#retention th:nth-child(2) { width: 80px; }
td.key { font-family: "DejaVu Sans Mono", monospace; font-size: 12px; overflow-wrap: anywhere; }
.badge { display: inline-block; border-radius: 4px; padding: 0 6px; font-size: 12px; margin: 1px 4px 1px 0; white-space: nowrap; }
.badge.bad { background: #fee2e2; color: #991b1b; }
.badge.warn { background: #fef3c7; color: #92400e; }
.badge.info { background: #e0f2fe; color: #075985; }
.badge.keep { background: #dcfce7; color: #166534; }
.badge.delete { background: #fee2e2; color: #991b1b; }
.none { color: var(--muted); }
footer { color: var(--muted); font-size: 12px; margin-top: 28px; }
"#;

/// The whole page.
pub fn render(r: &Report) -> String {
    let attention: Vec<(&str, Option<DateTime<Utc>>, &Highlight)> = r
        .backups
        .iter()
        .rev()
        .flat_map(|b| {
            b.highlights
                .iter()
                .map(move |h| (b.key.as_str(), Some(b.started_at), h))
        })
        .chain(r.anomalies.iter().flat_map(|a| {
            a.highlights
                .iter()
                .filter(|h| h.severity != Severity::Info)
                .map(move |h| (a.key.as_str(), a.time, h))
        }))
        .collect();
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="Content-Security-Policy" content=(CSP);
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Backups of " (r.database) }
                style { (PreEscaped(CSS)) }
            }
            body {
                main {
                    h1 { "Backups of " (r.database) }
                    p.sub {
                        (r.destination) " · prefix " (r.prefix) " · "
                        (r.backups.len()) " backups · generated " (when(r.generated_at))
                        " by leaflock-backup " (r.tool_version)
                        @if !r.other_databases.is_empty() {
                            " · other databases under this prefix: " (r.other_databases.join(", "))
                        }
                    }
                    (cards(r, attention.len()))
                    h2 { "Needs attention" }
                    @if attention.is_empty() {
                        p.none { "Nothing: every drilled backup passed, no debris, no unreadable manifest." }
                    } @else {
                        table id="attention" {
                            tr { th { "what" } th { "time (UTC)" } th { "key" } th { "detail" } }
                            @for (key, time, h) in &attention {
                                tr {
                                    td { (badge(h)) }
                                    td { (time.map(when).unwrap_or_else(|| "-".into())) }
                                    td.key { (key) }
                                    td { (h.detail) }
                                }
                            }
                        }
                    }
                    h2 { "Size" }
                    section.box {
                        (line_chart("size", &[
                            Series::new("stored", "stored", r.backups.iter().map(|b| (b, b.stored_bytes as f64)), Unit::Bytes),
                            Series::new("uncompressed", "uncompressed (pg_dump)", r.backups.iter().map(|b| (b, b.uncompressed_bytes as f64)), Unit::Bytes),
                        ], Unit::Bytes, 960.0, 240.0))
                        p.legend {
                            span { span.sw style="background:#2563eb" {} "stored" }
                            span { span.sw style="background:#94a3b8" {} "uncompressed (pg_dump's archive)" }
                            span { span.sw style="background:#fff;border:3px solid #dc2626" {} "needs attention" }
                        }
                    }
                    h2 { "Duration" }
                    section.box {
                        (line_chart("duration", &[
                            Series::new("duration", "duration", r.backups.iter().map(|b| (b, b.duration_seconds)), Unit::Seconds),
                        ], Unit::Seconds, 960.0, 200.0))
                    }
                    h2 { "Restore drills" }
                    section.box {
                        (drill_strip(&r.backups))
                        p.legend {
                            span { span.sw.drill-content_verified style="background:#16a34a" {} "content verified: " (r.drills.content_verified) }
                            span { span.sw style="background:#84cc16" {} "counts only: " (r.drills.counts_only) }
                            span { span.sw style="background:#dc2626" {} "failed: " (r.drills.failed) }
                            span { span.sw style="background:#fff;border:1px solid #94a3b8" {} "never drilled: " (r.drills.never) }
                        }
                    }
                    h2 { "Rows per table" }
                    @if r.tables.is_empty() {
                        p.none { "No table counts on record." }
                    } @else {
                        div.multiples {
                            @for t in &r.tables {
                                section.box { (table_chart(t, &r.backups)) }
                            }
                        }
                    }
                    h2 { "Retention: what the next prune would do" }
                    (retention(r))
                    h2 { "Backups" }
                    (backups_table(&r.backups))
                    @if !r.anomalies.is_empty() {
                        h2 { "Not backups, under this prefix" }
                        table id="anomalies" {
                            tr { th { "what" } th { "time (UTC)" } th { "size" } th { "key" } th { "detail" } }
                            @for a in &r.anomalies {
                                tr {
                                    td { @for h in &a.highlights { (badge(h)) } }
                                    td { (a.time.map(when).unwrap_or_else(|| "-".into())) }
                                    td.num { (human_bytes(a.size)) }
                                    td.key { (a.key) }
                                    td { @for h in &a.highlights { (h.detail) " " } }
                                }
                            }
                        }
                    }
                    footer {
                        "Made from the manifests and drill records under the prefix; nothing here was read from the database. "
                        "The same data as JSON: leaflock-backup report --json."
                    }
                }
            }
        }
    };
    page.into_string()
}

fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M").to_string()
}

fn badge(h: &Highlight) -> Markup {
    let class = match h.severity {
        Severity::Bad => "bad",
        Severity::Warn => "warn",
        Severity::Info => "info",
    };
    html! { span.badge.(class) { (h.label.replace('_', " ")) } }
}

fn cards(r: &Report, attention: usize) -> Markup {
    let newest = r.backups.last();
    let first = r.backups.first();
    let age = newest.map(|b| {
        let h = (r.generated_at - b.started_at).num_minutes() as f64 / 60.0;
        if h < 48.0 {
            format!("{h:.1} h ago")
        } else {
            format!("{:.1} days ago", h / 24.0)
        }
    });
    let growth = match (first, newest) {
        (Some(f), Some(n)) if r.backups.len() > 1 && f.stored_bytes > 0 => Some(format!(
            "{:+.0}% since {}",
            (n.stored_bytes as f64 / f.stored_bytes as f64 - 1.0) * 100.0,
            f.started_at.format("%b %d")
        )),
        _ => None,
    };
    html! {
        div.cards {
            div.card { div.v { (r.backups.len()) } div.k { "backups on record" } }
            div.card {
                div.v { (age.unwrap_or_else(|| "none".into())) }
                div.k { "newest backup" @if let Some(n) = newest { " (" (when(n.started_at)) ")" } }
            }
            div.card {
                div.v { (newest.map(|n| human_bytes(n.stored_bytes)).unwrap_or_else(|| "-".into())) }
                div.k { "stored, newest" @if let Some(g) = growth { " · " (g) } }
            }
            div.card {
                div.v { (newest.map(|n| format!("{:.1} s", n.duration_seconds)).unwrap_or_else(|| "-".into())) }
                div.k { "duration, newest" }
            }
            div.card {
                div.v { (attention) }
                div.k { "need attention (" (r.drills.failed) " failed drills)" }
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Unit {
    Bytes,
    Seconds,
    Rows,
}

impl Unit {
    fn show(self, v: f64) -> String {
        match self {
            Unit::Bytes => human_bytes(v.max(0.0) as u64),
            Unit::Seconds if v < 10.0 => format!("{v:.1} s"),
            Unit::Seconds => format!("{v:.0} s"),
            Unit::Rows => format!("{}", v.round() as i64),
        }
    }
}

struct Point<'a> {
    time: DateTime<Utc>,
    value: f64,
    key: &'a str,
    flagged: bool,
}

struct Series<'a> {
    class: &'static str,
    label: &'static str,
    unit: Unit,
    points: Vec<Point<'a>>,
}

impl<'a> Series<'a> {
    fn new(
        class: &'static str,
        label: &'static str,
        values: impl Iterator<Item = (&'a Backup, f64)>,
        unit: Unit,
    ) -> Series<'a> {
        Series {
            class,
            label,
            unit,
            points: values
                .map(|(b, value)| Point {
                    time: b.started_at,
                    value,
                    key: &b.key,
                    flagged: b.highlights.iter().any(|h| h.severity == Severity::Bad),
                })
                .collect(),
        }
    }
}

/// A step of 1, 2 or 5 x 10^k (or a power of 1024 for bytes) so that `max` spans about
/// four steps.
fn nice_step(max: f64, unit: Unit) -> f64 {
    let raw = (max / 4.0).max(f64::MIN_POSITIVE);
    let (base, mults): (f64, &[f64]) = match unit {
        Unit::Bytes => (
            1024.0,
            &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
        ),
        _ => (10.0, &[1.0, 2.0, 5.0]),
    };
    let mut scale = 1.0;
    while scale * base <= raw {
        scale *= base;
    }
    while scale > raw && scale > 1.0 {
        scale /= base;
    }
    for m in mults {
        if scale * m >= raw {
            return scale * m;
        }
    }
    scale * base
}

/// Maps times and values into a plot area.
struct Frame {
    width: f64,
    height: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    t0: DateTime<Utc>,
    t1: DateTime<Utc>,
    ymax: f64,
}

impl Frame {
    fn new(
        width: f64,
        height: f64,
        left: f64,
        times: impl Iterator<Item = DateTime<Utc>> + Clone,
        ymax: f64,
    ) -> Frame {
        let mut t0 = times.clone().min().unwrap_or_else(Utc::now);
        let mut t1 = times.max().unwrap_or(t0);
        if t1 - t0 < Duration::hours(2) {
            t0 -= Duration::hours(12);
            t1 += Duration::hours(12);
        }
        Frame {
            width,
            height,
            left,
            right: width - 16.0,
            top: 12.0,
            bottom: height - 26.0,
            t0,
            t1,
            ymax,
        }
    }
    fn x(&self, t: DateTime<Utc>) -> f64 {
        let span = (self.t1 - self.t0).num_seconds().max(1) as f64;
        let pad = 10.0;
        self.left
            + pad
            + (t - self.t0).num_seconds() as f64 / span * (self.right - self.left - 2.0 * pad)
    }
    fn y(&self, v: f64) -> f64 {
        self.bottom - v / self.ymax * (self.bottom - self.top)
    }
    fn view_box(&self) -> String {
        format!("0 0 {} {}", self.width, self.height)
    }
    /// Midnight ticks (UTC) when the span is short, about six evenly spaced otherwise.
    fn time_ticks(&self) -> Vec<DateTime<Utc>> {
        let days = (self.t1 - self.t0).num_days();
        let step = Duration::days((days / 7).max(1));
        let mut t = self.t0.duration_trunc(Duration::days(1)).unwrap_or(self.t0);
        let mut out = Vec::new();
        while t <= self.t1 && out.len() < 32 {
            if t >= self.t0 {
                out.push(t);
            }
            t += step;
        }
        out
    }
}

fn axes(f: &Frame, unit: Unit, step: f64, time_labels: bool) -> Markup {
    let mut ticks = Vec::new();
    let mut v = 0.0;
    while v <= f.ymax + step * 0.01 {
        ticks.push(v);
        v += step;
    }
    html! {
        g.grid {
            @for v in &ticks {
                line x1=(f.left) x2=(f.right) y1=(f.y(*v)) y2=(f.y(*v)) {}
                text x=(f.left - 6.0) y=(f.y(*v) + 4.0) text-anchor="end" { (unit.show(*v)) }
            }
        }
        line.axis x1=(f.left) x2=(f.right) y1=(f.bottom) y2=(f.bottom) {}
        @if time_labels {
            @for t in f.time_ticks() {
                text x=(f.x(t)) y=(f.height - 8.0) text-anchor="middle" { (t.format("%b %d")) }
            }
        }
    }
}

fn points_attr(f: &Frame, pts: &[Point]) -> String {
    pts.iter()
        .map(|p| format!("{:.1},{:.1}", f.x(p.time), f.y(p.value)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn line_chart(name: &str, series: &[Series], unit: Unit, width: f64, height: f64) -> Markup {
    let max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.value))
        .fold(0.0, f64::max);
    let step = nice_step(if max > 0.0 { max * 1.05 } else { 1.0 }, unit);
    let ymax = (max * 1.05 / step).ceil().max(1.0) * step;
    let f = Frame::new(
        width,
        height,
        72.0,
        series.iter().flat_map(|s| s.points.iter().map(|p| p.time)),
        ymax,
    );
    let total: usize = series.iter().map(|s| s.points.len()).sum();
    html! {
        svg.chart data-chart=(name) data-points=(total) viewBox=(f.view_box()) role="img" {
            (axes(&f, unit, step, true))
            @for s in series {
                polyline.(s.class) points=(points_attr(&f, &s.points)) {}
                @for p in &s.points {
                    circle.pt.(s.class).flag[p.flagged] data-key=(p.key) cx=(format!("{:.1}", f.x(p.time))) cy=(format!("{:.1}", f.y(p.value))) r="4" {
                        title { (when(p.time)) " UTC · " (s.label) " " (s.unit.show(p.value)) " · " (p.key) }
                    }
                }
            }
        }
    }
}

fn drill_strip(backups: &[Backup]) -> Markup {
    let f = Frame::new(960.0, 64.0, 72.0, backups.iter().map(|b| b.started_at), 1.0);
    html! {
        svg.chart data-chart="drills" data-points=(backups.len()) viewBox=(f.view_box()) role="img" {
            line.axis x1=(f.left) x2=(f.right) y1="24" y2="24" {}
            text x=(f.left - 6.0) y="28" text-anchor="end" { "drill" }
            @for t in f.time_ticks() {
                text x=(f.x(t)) y=(f.height - 8.0) text-anchor="middle" { (t.format("%b %d")) }
            }
            @for b in backups {
                @let outcome = serde_json::to_value(b.drill).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
                circle.pt.(format!("drill-{outcome}")).flag[b.drill == DrillOutcome::Failed] data-key=(b.key) cx=(format!("{:.1}", f.x(b.started_at))) cy="24" r="7" {
                    title {
                        (when(b.started_at)) " UTC · " (b.drill.label()) " · " (b.key)
                        @for line in &b.drill_failures { " · " (line) }
                    }
                }
            }
        }
    }
}

fn table_chart(t: &TableHistory, backups: &[Backup]) -> Markup {
    let max = t.points.iter().map(|p| p.rows).max().unwrap_or(0).max(1) as f64;
    let step = nice_step(max * 1.05, Unit::Rows).max(1.0);
    let ymax = (max * 1.05 / step).ceil().max(1.0) * step;
    // Every table shares the report's time axis, so the charts line up.
    let f = Frame::new(
        300.0,
        110.0,
        48.0,
        backups.iter().map(|b| b.started_at),
        ymax,
    );
    let pts: Vec<Point> = t
        .points
        .iter()
        .map(|p| Point {
            time: p.time,
            value: p.rows as f64,
            key: &p.key,
            flagged: false,
        })
        .collect();
    html! {
        h3 { (t.name) }
        div.n {
            @match t.latest { Some(n) => { (n) " rows" }, None => { "not in the newest backup" } }
            " "
            @for flag in &t.flags { span.badge.warn { (flag.replace('_', " ")) } }
        }
        svg.chart data-chart="rows" data-table=(t.name) data-points=(pts.len()) viewBox=(f.view_box()) role="img" {
            (axes(&f, Unit::Rows, if (ymax / 2.0).fract() == 0.0 { ymax / 2.0 } else { ymax }, false))
            polyline.rows points=(points_attr(&f, &pts)) {}
            @for p in &pts {
                circle.pt.rows data-key=(p.key) cx=(format!("{:.1}", f.x(p.time))) cy=(format!("{:.1}", f.y(p.value))) r="3" {
                    title { (when(p.time)) " UTC · " (t.name) ": " (p.value as i64) " rows" }
                }
            }
        }
    }
}

fn retention(r: &Report) -> Markup {
    match &r.retention {
        None => html! {
            p.none {
                "No retention rule given. Pass the rules prune uses (--keep-last, --keep-daily, --keep-weekly, "
                "--keep-monthly, --max-age or BACKUP_RETENTION_DAYS) to see what the next prune would keep and delete."
            }
        },
        Some(plan) if plan.refused.is_some() => html! {
            p {
                span.badge.bad { "prune would delete nothing" } " "
                (plan.refused.as_deref().unwrap_or_default())
            }
        },
        Some(plan) => html! {
            p {
                "With " code { (plan.policy) } ": " b { (plan.keep) " kept" } ", " b { (plan.delete) " deleted" }
                ". Prune also removes debris of interrupted runs older than --orphan-grace (see below)."
            }
            table id="retention" {
                tr { th { "time (UTC)" } th { "decision" } th { "why" } th { "key" } }
                @for d in &plan.decisions {
                    tr {
                        td { (when(d.time)) }
                        td { @if d.keep { span.badge.keep { "keep" } } @else { span.badge.delete { "delete" } } }
                        td { @if d.reasons.is_empty() { "no rule keeps it" } @else { (d.reasons.join(", ")) } }
                        td.key { (d.key) }
                    }
                }
            }
        },
    }
}

fn backups_table(backups: &[Backup]) -> Markup {
    html! {
        @if backups.is_empty() {
            p.none { "No backup of this database under the prefix." }
        } @else {
            table id="backups" {
                tr {
                    th { "time (UTC)" } th { "stored" } th { "uncompressed" } th { "duration" }
                    th { "rows" } th { "drill" } th { "compression" } th { "key" }
                }
                @for b in backups.iter().rev() {
                    tr {
                        td { (when(b.started_at)) }
                        td.num { (human_bytes(b.stored_bytes)) }
                        td.num { (human_bytes(b.uncompressed_bytes)) }
                        td.num { (format!("{:.1} s", b.duration_seconds)) }
                        td.num { (b.rows) }
                        td {
                            @if b.drill == DrillOutcome::Failed { span.badge.bad { "failed" } }
                            @else { (b.drill.label()) }
                        }
                        td { (b.compression) @if let Some(e) = &b.encryption { " + " (e) } }
                        td.key { (b.key) }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(100.0, Unit::Rows), 50.0);
        assert_eq!(nice_step(7.0, Unit::Seconds), 2.0);
        assert_eq!(
            nice_step(4.0 * 1024.0 * 1024.0, Unit::Bytes),
            1024.0 * 1024.0
        );
        assert_eq!(
            nice_step(3.0 * 1024.0 * 1024.0, Unit::Bytes),
            1024.0 * 1024.0
        );
        assert!(nice_step(0.001, Unit::Seconds) > 0.0);
    }
}

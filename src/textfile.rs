//! Metrics for node_exporter's textfile collector (`--metrics-textfile PATH`), for a
//! host that node_exporter scrapes but that runs no Pushgateway: the same metric
//! families as the push, cumulative across runs (the previous file is read back and
//! added to), written atomically (a temporary file beside it, fsynced, renamed over
//! it), so node_exporter never reads half a file.
//!
//! Every series carries `database="<label>"`; `job` is the scrape's (node_exporter's),
//! so the alert rules, which match `on (job, database)`, work on these series
//! unchanged. One file per database: series of another database found in the file are
//! left out, with a warning.
//!
//! The read side is a small parser of the text exposition format for exactly what
//! [`GroupState::families`] writes (tested against the prometheus crate's encoder).

use crate::metrics::{
    BackupOutcome, DrillOutcome, GroupState, Hist, BACKUPS_TOTAL, BACKUP_DURATION, BACKUP_SIZE,
    BACKUP_UNCOMPRESSED_SIZE, DRILLS_TOTAL, DRILL_CONTENT_VERIFIED, DRILL_DURATION,
    DRILL_LAST_SUCCESS, DURATION_BUCKETS, FUTURE_DATED_BACKUPS, LAST_CONTENT_VERIFIED,
    LAST_DURATION, LAST_RUN, LAST_SUCCESS, NEXT_RUN, SUSPECT_BACKUPS, UNTRUSTED_BACKUPS,
};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// Files larger than this are not metrics of this tool.
const MAX_BYTES: u64 = 1 << 20;

/// One sample line: name, labels, value.
#[derive(Debug, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// `name{a="x",b="y"} value [timestamp]`; comments and blank lines give `None`.
fn parse_line(line: &str) -> Result<Option<Sample>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        bail!("not a metric name: {line:?}");
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let mut end = None;
        loop {
            // label name
            while chars
                .peek()
                .is_some_and(|(_, c)| *c == ',' || c.is_whitespace())
            {
                chars.next();
            }
            match chars.peek() {
                Some((i, '}')) => {
                    end = Some(*i);
                    break;
                }
                None => break,
                _ => {}
            }
            let mut key = String::new();
            while let Some((_, c)) = chars.peek().copied() {
                if c == '=' {
                    break;
                }
                key.push(c);
                chars.next();
            }
            if chars.next().map(|x| x.1) != Some('=') || chars.next().map(|x| x.1) != Some('"') {
                bail!("bad label in {line:?}");
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => bail!("unterminated label value in {line:?}"),
                    },
                    Some((_, '"')) => break,
                    Some((_, c)) => value.push(c),
                    None => bail!("unterminated label value in {line:?}"),
                }
            }
            labels.insert(key.trim().to_string(), value);
        }
        let Some(end) = end else {
            bail!("unterminated labels in {line:?}");
        };
        rest = &body[end + 1..];
    }
    let value = rest
        .split_whitespace()
        .next()
        .with_context(|| format!("no value in {line:?}"))?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse::<f64>()
            .with_context(|| format!("bad value in {line:?}"))?,
    };
    Ok(Some(Sample {
        name: name.to_string(),
        labels,
        value,
    }))
}

/// The state of `database` in a file this module wrote (and how many samples of other
/// databases it held).
fn read_state(text: &str, database: &str) -> Result<(GroupState, usize)> {
    let mut s = GroupState::default();
    let mut foreign = 0;
    let le_index = |le: &str| {
        DURATION_BUCKETS
            .iter()
            .position(|b| le.parse::<f64>().ok() == Some(*b))
    };
    for (n, line) in text.lines().enumerate() {
        let Some(x) = parse_line(line).with_context(|| format!("line {}", n + 1))? else {
            continue;
        };
        if x.labels.get("database").map(String::as_str) != Some(database) {
            foreign += 1;
            continue;
        }
        let status = x.labels.get("status").map(String::as_str);
        let hist = |name: &str| -> Option<&'static str> {
            [BACKUP_DURATION, DRILL_DURATION]
                .into_iter()
                .find(|h| name.strip_prefix(h).is_some_and(|t| t.starts_with('_')))
        };
        match (x.name.as_str(), status) {
            (n, Some("success")) if n == BACKUPS_TOTAL => s.success_total = x.value,
            (n, Some("failure")) if n == BACKUPS_TOTAL => s.failure_total = x.value,
            (n, Some("success")) if n == DRILLS_TOTAL => s.drills_success = x.value,
            (n, Some("failure")) if n == DRILLS_TOTAL => s.drills_failure = x.value,
            (n, _) if n == LAST_SUCCESS => s.last_success = Some(x.value),
            (n, _) if n == LAST_RUN => s.last_run = Some(x.value),
            (n, _) if n == LAST_DURATION => s.last_duration = Some(x.value),
            (n, _) if n == BACKUP_SIZE => s.size_bytes = Some(x.value),
            (n, _) if n == BACKUP_UNCOMPRESSED_SIZE => s.uncompressed_size_bytes = Some(x.value),
            (n, _) if n == NEXT_RUN => s.next_run = Some(x.value),
            (n, _) if n == SUSPECT_BACKUPS => s.suspect_backups = Some(x.value),
            (n, _) if n == FUTURE_DATED_BACKUPS => s.future_dated_backups = Some(x.value),
            (n, _) if n == DRILL_LAST_SUCCESS => s.drill_last_success = Some(x.value),
            (n, _) if n == DRILL_CONTENT_VERIFIED => s.drill_content_verified = Some(x.value),
            (n, _) if n == LAST_CONTENT_VERIFIED => s.last_content_verified = Some(x.value),
            (n, _) if n == UNTRUSTED_BACKUPS => s.untrusted_backups = Some(x.value),
            (n, _) => {
                let Some(h) = hist(n) else { continue };
                let target: &mut Hist = if h == BACKUP_DURATION {
                    &mut s.duration
                } else {
                    &mut s.drill_duration
                };
                match &n[h.len()..] {
                    "_count" => target.count = x.value as u64,
                    "_sum" => target.sum = x.value,
                    "_bucket" => {
                        if let Some(i) = x.labels.get("le").and_then(|le| le_index(le)) {
                            target.buckets[i] = x.value as u64;
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    Ok((s, foreign))
}

/// `state` as the text format, every series labelled `database="<database>"`.
fn render(state: &GroupState, database: &str) -> Vec<u8> {
    let mut families = state.families();
    for f in &mut families {
        for m in f.mut_metric().iter_mut() {
            let mut l = prometheus::proto::LabelPair::default();
            l.set_name("database".into());
            l.set_value(database.into());
            let mut labels = m.take_label();
            labels.insert(0, l);
            m.set_label(labels);
        }
    }
    let mut buf = Vec::new();
    prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &families, &mut buf)
        .expect("text encoding to memory");
    buf
}

/// Add this run to the file at `path` (created when missing) and replace it atomically.
pub fn update(
    path: &Path,
    database: &str,
    backup: Option<&BackupOutcome>,
    drill: Option<&DrillOutcome>,
    untrusted: Option<usize>,
) -> Result<GroupState> {
    let mut state = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => GroupState::default(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        Ok(m) if m.len() > MAX_BYTES => {
            bail!(
                "{} is {} bytes: not a file of this tool's metrics",
                path.display(),
                m.len()
            )
        }
        Ok(_) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let (state, foreign) = read_state(&text, database)
                .with_context(|| format!("{} is not a metrics text file", path.display()))?;
            if foreign > 0 {
                tracing::warn!(
                    path = %path.display(),
                    samples = foreign,
                    "{} held {foreign} samples of another database; they are left out (one file per database)",
                    path.display()
                );
            }
            state
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
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    tmp.write_all(&render(&state, database))?;
    tmp.as_file().sync_all()?;
    // node_exporter (another user) reads it: the metrics hold no secret.
    use std::os::unix::fs::PermissionsExt;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(state)
}

/// [`update`], logged; a problem is a warning, never a failure of the run.
pub fn write(
    path: &Path,
    database: &str,
    backup: Option<&BackupOutcome>,
    drill: Option<&DrillOutcome>,
    untrusted: Option<usize>,
) {
    match update(path, database, backup, drill, untrusted) {
        Ok(s) => tracing::info!(
            path = %path.display(),
            success_total = s.success_total,
            failure_total = s.failure_total,
            "metrics written for node_exporter's textfile collector"
        ),
        Err(e) => tracing::warn!(
            path = %path.display(),
            error = format!("{e:#}"),
            "could not write the metrics text file {}; the outcome is unaffected",
            path.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn outcome(success: bool, secs: f64) -> BackupOutcome {
        BackupOutcome {
            success,
            finished_at: Utc.with_ymd_and_hms(2026, 12, 3, 2, 0, 0).unwrap(),
            duration_seconds: secs,
            stored_bytes: success.then_some(1000),
            uncompressed_bytes: success.then_some(3000),
            next_run: None,
            catalog: None,
        }
    }

    #[test]
    fn what_the_encoder_writes_reads_back_the_same() {
        let mut s = GroupState::default();
        s.add_backup(&outcome(true, 12.5));
        s.add_backup(&outcome(false, 700.0));
        s.add_drill(&DrillOutcome {
            success: true,
            finished_at: Utc.with_ymd_and_hms(2026, 12, 3, 3, 0, 0).unwrap(),
            duration_seconds: 40.0,
            content_verified: true,
            backup_finished_at: Utc.with_ymd_and_hms(2026, 12, 3, 2, 0, 0).unwrap(),
        });
        s.untrusted_backups = Some(2.0);
        let text = String::from_utf8(render(&s, "notes \"main\"")).unwrap();
        let (back, foreign) = read_state(&text, "notes \"main\"").unwrap();
        assert_eq!(back, s, "{text}");
        assert_eq!(foreign, 0);
        let (other, foreign) = read_state(&text, "archive").unwrap();
        assert_eq!(other, GroupState::default());
        assert!(foreign > 10);
    }

    #[test]
    fn lines_of_the_format() {
        let x = parse_line(r#"a_b{x="1",y="q\"uo\\te"} 3.5 1700000000"#)
            .unwrap()
            .unwrap();
        assert_eq!(x.name, "a_b");
        assert_eq!(x.labels["y"], r#"q"uo\te"#);
        assert_eq!(x.value, 3.5);
        assert_eq!(parse_line("m +Inf").unwrap().unwrap().value, f64::INFINITY);
        assert!(parse_line("# HELP m x").unwrap().is_none());
        for bad in ["{x=\"1\"} 1", "m{x=1} 1", "m{x=\"1\" 1", "m", "m abc"] {
            assert!(parse_line(bad).is_err(), "{bad}");
        }
    }
}

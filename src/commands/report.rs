//! `leaflock-backup report`: one database's backup history as a self-contained HTML
//! page (`--out FILE`, or stdout), or as JSON (`--json`): size, duration and rows per
//! table over time, drill outcomes, what needs attention, and what the next prune
//! would keep and delete. Reads the bucket only; writes nothing there.

use crate::cli::ReportArgs;
use crate::commands::read_catalog;
use crate::config::{
    process_env, resolve_clock_tolerance, resolve_destination, resolve_retention, resolve_scope,
    resolve_trust, ScopeFrom,
};
use crate::error::usage;
use crate::report::{self, html, Context as ReportContext};
use anyhow::{bail, Context, Result};
use std::io::Write;

pub async fn execute(args: &ReportArgs) -> Result<()> {
    let dest = resolve_destination(&args.destination, None, &process_env)?;
    let scope = resolve_scope(&args.destination, ScopeFrom::Environment, &process_env)?;
    let trust = resolve_trust(&args.trust, None, None)?;
    let tolerance = resolve_clock_tolerance(&args.destination)?;
    let policy = resolve_retention(&args.retention, &process_env)?;
    if let Some(out) = &args.out {
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => std::path::Path::new("."),
        };
        if out.as_os_str().is_empty() || out.is_dir() || !parent.is_dir() {
            return usage(format!(
                "--out / LEAFLOCK_BACKUP_REPORT_OUT: {} is not a file in an existing directory",
                out.display()
            ));
        }
    }

    let started = std::time::Instant::now();
    let (storage, clock, catalog) =
        read_catalog(&dest, Some(scope.clone()), tolerance, &trust).await?;
    if catalog.backups().next().is_none() {
        bail!(
            "no backup with a manifest of database {scope} under {} (prefix {}); \
             `leaflock-backup list --all-databases` shows what is there",
            storage.describe(),
            dest.prefix()
        );
    }
    let database = scope.to_string();
    let data = report::build(
        &catalog,
        &clock,
        &ReportContext {
            destination: storage.describe(),
            prefix: dest.prefix().to_string(),
            policy: policy.as_ref(),
        },
    );
    let text = if args.json {
        let mut v = serde_json::to_string_pretty(&data)?;
        v.push('\n');
        v
    } else {
        html::render(&data)
    };
    match &args.out {
        Some(path) => write_file(path, text.as_bytes())
            .with_context(|| format!("cannot write the report to {}", path.display()))?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
    }
    tracing::info!(
        database = %database,
        backups = data.backups.len(),
        anomalies = data.anomalies.len(),
        out = args.out.as_ref().map(|p| p.display().to_string()),
        format = if args.json { "json" } else { "html" },
        duration_seconds = crate::logging::seconds(started),
        "report written: {} backups of {database}, {} other objects under the prefix",
        data.backups.len(),
        data.anomalies.len()
    );
    Ok(())
}

/// Write through a temporary file beside `path`, renamed into place: a reader never
/// sees half a report, and a failure leaves the old one.
fn write_file(path: &std::path::Path, data: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".leaflock-report-")
        .tempfile_in(dir)?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)?;
    Ok(())
}

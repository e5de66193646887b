//! `leaflock-backup list`: everything under the prefix for one database (`--database`,
//! or every database with `--all-databases`), newest first — backups with their drill
//! outcome, suspects and anomalies, the old script's archives, and debris, never
//! hidden. The backup `latest` names is marked.

use crate::catalog::{Entry, Kind};
use crate::cli::ListArgs;
use crate::commands::read_catalog;
use crate::config::{
    process_env, resolve_clock_tolerance, resolve_destination, resolve_scope, resolve_trust,
    ScopeFrom,
};
use crate::progress::human_bytes;
use crate::signing::TrustPolicy;
use anyhow::Result;

pub async fn execute(args: &ListArgs) -> Result<()> {
    let dest = resolve_destination(&args.destination, None, &process_env)?;
    let scope = resolve_scope(&args.destination, ScopeFrom::Environment, &process_env)?;
    let tolerance = resolve_clock_tolerance(&args.destination)?;
    let trust = resolve_trust(&args.trust, None, None)?;
    let view = (!args.all_databases).then(|| scope.clone());
    let (storage, _, catalog) = read_catalog(&dest, view, tolerance, &trust).await?;
    let entries: Vec<&Entry> = catalog.visible().collect();
    if args.json {
        // Each entry as scanned, plus `trust`: its signature judged by --trusted-key.
        let mut out = Vec::with_capacity(entries.len());
        for e in &entries {
            let mut v = serde_json::to_value(e)?;
            if let Some(obj) = v.as_object_mut() {
                obj.insert("trust".into(), e.trust(&trust).to_json());
            }
            out.push(v);
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if entries.is_empty() {
        match args.all_databases {
            true => println!("no objects under {}", storage.describe()),
            false => println!(
                "no objects of database {scope} under {} (--all-databases lists every database)",
                storage.describe()
            ),
        }
        return Ok(());
    }
    println!(
        "{:<20}  {:<12}  {:>10}  {:<8}  {:<10}  {:<13}  {:<25}  KEY",
        "TIME (UTC)", "DATABASE", "SIZE", "COMPRESS", "ENCRYPTION", "STATUS", "SIGNATURE"
    );
    for e in &entries {
        println!("{}", row(e, &trust));
    }
    Ok(())
}

/// What the STATUS column says: the drill outcome, or what is wrong.
fn status(e: &Entry, trust: &TrustPolicy) -> String {
    let mut s = match &e.kind {
        Kind::Backup { drill, suspect, .. } => {
            let mut s = match drill {
                None => "never drilled".to_string(),
                Some(d) if d.passed && e.drill_verified(trust) => match d.content_verified {
                    true => "content verified".to_string(),
                    false => "counts only".to_string(),
                },
                Some(d) if d.passed => "drill NOT COUNTED".to_string(),
                Some(_) => "DRILL FAILED".to_string(),
            };
            match suspect {
                Some(r) if r.accepted() => s.push_str(", suspect (accepted)"),
                Some(_) => s.push_str(", SUSPECT"),
                None => {}
            }
            s
        }
        Kind::OldScript => "old script".into(),
        Kind::BadManifest { error } => format!("BAD MANIFEST ({error})"),
        Kind::ManifestWithoutObject => "NO OBJECT".into(),
        Kind::NoManifest => "NO MANIFEST".into(),
        Kind::Partial => "PARTIAL".into(),
    };
    if e.anomaly.is_some() {
        s.push_str(", FUTURE-DATED");
    }
    if e.latest {
        s.push_str(", latest");
    }
    s
}

fn row(e: &Entry, trust: &TrustPolicy) -> String {
    let time = e
        .time
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into());
    let db = match e.scope() {
        Some(s) => s.to_string(),
        None if matches!(e.kind, Kind::OldScript) => "?".into(),
        None => "-".into(),
    };
    let (comp, enc) = match &e.kind {
        Kind::Backup { manifest, .. } => (
            format!(
                "{}:{}",
                manifest.compression.algorithm, manifest.compression.level
            ),
            manifest
                .encryption
                .as_ref()
                .map(|x| x.scheme.clone())
                .unwrap_or_else(|| "none".into()),
        ),
        Kind::OldScript => ("gzip".into(), "openssl".into()),
        _ => ("-".into(), "-".into()),
    };
    let signature = match &e.kind {
        Kind::Backup { .. } | Kind::OldScript => e.trust(trust).column(),
        _ => "-".into(),
    };
    format!(
        "{time:<20}  {db:<12}  {:>10}  {comp:<8}  {enc:<10}  {:<13}  {signature:<25}  {}",
        human_bytes(e.size),
        status(e, trust),
        e.key
    )
}

//! `leaflock-backup list`: everything under the prefix, newest first — backups with
//! their drill outcome, the old script's archives, and debris, never hidden.

use crate::catalog::{self, Entry, Kind};
use crate::cli::ListArgs;
use crate::config::{process_env, resolve_destination, resolve_trust};
use crate::progress::human_bytes;
use crate::signing::TrustPolicy;
use crate::storage;
use anyhow::Result;

pub async fn execute(args: &ListArgs) -> Result<()> {
    let dest = resolve_destination(&args.destination, &process_env)?;
    let trust = resolve_trust(&args.trust, None, None)?;
    let storage = storage::open(&dest).await?;
    let entries = catalog::scan(storage.as_ref(), dest.prefix()).await?;
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
        println!("no objects under {}", storage.describe());
        return Ok(());
    }
    println!(
        "{:<20}  {:<12}  {:>10}  {:<8}  {:<10}  {:<13}  {:<25}  KEY",
        "TIME (UTC)", "DATABASE", "SIZE", "COMPRESS", "ENCRYPTION", "DRILL", "SIGNATURE"
    );
    for e in &entries {
        println!("{}", row(e, &trust));
    }
    Ok(())
}

fn row(e: &Entry, trust: &TrustPolicy) -> String {
    let time = e
        .time
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into());
    let (db, comp, enc, drill) = match &e.kind {
        Kind::Backup {
            manifest, drill, ..
        } => (
            manifest.database.clone(),
            format!(
                "{}:{}",
                manifest.compression.algorithm, manifest.compression.level
            ),
            manifest
                .encryption
                .as_ref()
                .map(|x| x.scheme.clone())
                .unwrap_or_else(|| "none".into()),
            match drill {
                None => "never".to_string(),
                Some(d) if d.passed && e.drill_verified(trust) => "passed".to_string(),
                Some(d) if d.passed => "NOT COUNTED".to_string(),
                Some(_) => "FAILED".to_string(),
            },
        ),
        Kind::Legacy => (
            "?".into(),
            "gzip".into(),
            "openssl".into(),
            "old script".into(),
        ),
        Kind::BadManifest { .. } => ("-".into(), "-".into(), "-".into(), "BAD MANIFEST".into()),
        Kind::ManifestWithoutObject => ("-".into(), "-".into(), "-".into(), "NO OBJECT".into()),
        Kind::NoManifest => ("-".into(), "-".into(), "-".into(), "NO MANIFEST".into()),
        Kind::Partial => ("-".into(), "-".into(), "-".into(), "PARTIAL".into()),
    };
    let signature = match &e.kind {
        Kind::Backup { .. } | Kind::Legacy => e.trust(trust).column(),
        _ => "-".into(),
    };
    format!(
        "{time:<20}  {db:<12}  {:>10}  {comp:<8}  {enc:<10}  {drill:<13}  {signature:<25}  {}",
        human_bytes(e.size),
        e.key
    )
}

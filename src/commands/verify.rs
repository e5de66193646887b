//! `leaflock-backup verify [KEY|latest]`: stream a stored backup and prove it intact
//! without touching any database — its sha256 and size against the manifest, its
//! decompression to the end, and pg_restore reading every block of the archive
//! (`pg_restore --file=/dev/null`), and, when the manifest has content digests, every
//! table's rows: the archive is read as it streams (`archive.rs`) and each table's
//! digest, row and byte counts recomputed (with the algorithm the manifest names) and
//! compared with the manifest's. Exit 0 if intact, 1 if not, with the reason.

use crate::catalog::Kind;
use crate::cli::VerifyArgs;
use crate::commands::read_catalog;
use crate::config::{
    check_tool_path, process_env, resolve_clock_tolerance, resolve_destination, resolve_keys,
    resolve_scope, resolve_trust, ScopeFrom,
};
use crate::pgtool;
use crate::readback;
use anyhow::{anyhow, bail, Context, Result};

pub async fn execute(args: &VerifyArgs) -> Result<()> {
    let dest = resolve_destination(&args.destination, None, &process_env)?;
    let explicit = check_tool_path(
        args.pg_restore.as_deref(),
        "--pg-restore / LEAFLOCK_BACKUP_PG_RESTORE",
    )?;
    let keys = resolve_keys(&args.keys, &process_env)?;
    let started = std::time::Instant::now();
    let scope = resolve_scope(&args.destination, ScopeFrom::Environment, &process_env)?;
    let tolerance = resolve_clock_tolerance(&args.destination)?;
    let trust = resolve_trust(&args.trust, Some(&args.allow), None)?;
    let (storage, _, catalog) = read_catalog(&dest, Some(scope), tolerance, &trust).await?;
    let entry = catalog.resolve(&args.key)?;
    let manifest = match &entry.kind {
        Kind::Backup { manifest, .. } => manifest,
        Kind::OldScript => bail!(
            "{} is an archive of LeafLock's old backup script: it has no manifest, so there is no checksum to verify",
            entry.key
        ),
        _ => bail!("{} has no valid manifest: it is not a backup", entry.key),
    };
    trust.admit(&entry.key, &entry.trust(&trust), "verify")?;
    let decode = readback::Decode::for_manifest(manifest, &keys, args.require_encryption)?;
    let tool = pgtool::pg_restore_for(&manifest.pg_dump_version, explicit.as_deref())?;
    tracing::info!(key = %entry.key, pg_restore = %tool.path.display(), "verifying");

    let mut cmd = pgtool::command(&tool.path);
    cmd.arg("--file=/dev/null");
    // The rows are hashed with the algorithm the manifest names, when it is one this
    // version knows; an unknown one is reported once the stored object was checked.
    let algorithm = manifest.content.as_ref().and_then(|c| c.digest_algorithm());
    let (tap, reader) = match algorithm {
        Some(algorithm) => {
            let (tx, handle) = crate::archive::spawn_reader(algorithm);
            (Some(tx), Some(handle))
        }
        None => (None, None),
    };
    let fed = readback::feed_tool_tapped(
        storage.as_ref(),
        &manifest.object_key,
        Some(manifest),
        decode,
        "pg_restore",
        cmd,
        tap,
    )
    .await
    .with_context(|| format!("{} is NOT intact", entry.key))?;
    let proof = match (&manifest.content, reader) {
        (Some(content), Some(reader)) => {
            let (read, _cpu) = tokio::task::spawn_blocking(move || reader.join())
                .await
                .map_err(|e| anyhow!("the archive reader failed: {e}"))?
                .map_err(|_| anyhow!("the archive reader panicked"))?;
            let archive = read.with_context(|| {
                format!(
                    "{} is NOT intact: its archive cannot be read to recompute the content digests",
                    entry.key
                )
            })?;
            let differences = compare_content(content, &archive);
            if !differences.is_empty() {
                for d in &differences {
                    tracing::error!(key = %entry.key, "{d}");
                }
                bail!(
                    "{} is NOT intact: its rows do not match the manifest's content digests: {}",
                    entry.key,
                    differences.join("; ")
                );
            }
            format!("content verified ({} tables)", content.tables.len())
        }
        (Some(content), None) => bail!(
            "{} is NOT intact: {}",
            entry.key,
            unknown_algorithm(&content.algorithm)
        ),
        (None, _) => "counts only (no content digests in the manifest)".to_string(),
    };
    if !fed.custom_format {
        return Err(anyhow!(
            "{} is NOT intact: it does not decompress to a pg_dump custom-format archive",
            entry.key
        ));
    }
    tracing::info!(
        key = %entry.key,
        stored_bytes = fed.stored_bytes,
        uncompressed_bytes = fed.archive_bytes,
        sha256 = %fed.sha256,
        duration_seconds = crate::logging::seconds(started),
        proof = %proof,
        "intact: sha256 and size match the manifest, the archive decompresses and pg_restore reads all of it; {proof}"
    );
    println!(
        "OK {} sha256={} bytes={} {}; {proof}",
        entry.key,
        fed.sha256,
        fed.stored_bytes,
        entry.trust(&trust).describe()
    );
    Ok(())
}

/// Every difference between the manifest's digests and the archive's, one line each
/// naming the table.
fn compare_content(
    content: &crate::manifest::Content,
    archive: &crate::archive::Archive,
) -> Vec<String> {
    let mut out = Vec::new();
    if content.algorithm != archive.algorithm.name() {
        out.push(format!(
            "the manifest's content digests use {:?}, the archive was read with {:?}",
            content.algorithm,
            archive.algorithm.name()
        ));
        return out;
    }
    for t in &content.tables {
        match archive
            .tables
            .iter()
            .find(|a| a.schema == t.schema && a.name == t.name)
        {
            None => out.push(format!(
                "table {}: in the manifest but not in the archive",
                t.label()
            )),
            Some(a) => {
                if a.columns != t.columns {
                    out.push(format!(
                        "table {}: the archive's columns differ from the manifest's",
                        t.label()
                    ));
                }
                if let Some(d) = t.differences(a) {
                    out.push(format!(
                        "table {}: content differs from the manifest ({d})",
                        t.label()
                    ));
                }
            }
        }
    }
    for a in &archive.tables {
        if !content
            .tables
            .iter()
            .any(|t| t.schema == a.schema && t.name == a.name)
        {
            out.push(format!(
                "table {}: in the archive but not in the manifest",
                a.label()
            ));
        }
    }
    out
}

fn unknown_algorithm(name: &str) -> String {
    format!("its manifest's content digests use {name:?}, which this version cannot recompute")
}

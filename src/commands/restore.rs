//! `leaflock-backup restore [KEY|latest] --target-database-url URL`: put a backup back.
//!
//! Safety rules: the target must exist and be empty unless `--clean`; on a terminal
//! the operator confirms unless `--yes`; the restore goes only into the named
//! database. Which backup, whether it may be trusted, and the prompt are here; the
//! restoring itself is the restore stage's (`restore.rs`).

use crate::catalog::Kind;
use crate::cli::RestoreArgs;
use crate::commands::read_catalog;
use crate::config::{
    process_env, resolve_clock_tolerance, resolve_destination, resolve_keys,
    resolve_restore_target, resolve_scope, resolve_trust, RestoreTarget, ScopeFrom,
};
use crate::conninfo::ConnInfo;
use crate::error::{usage, UsageError};
use crate::manifest::Manifest;
use crate::pgtool;
use crate::readback;
use crate::restore::{self, Section};
use crate::signals::Cancel;
use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufRead, IsTerminal, Write};
use std::time::Instant;

pub async fn execute(args: &RestoreArgs) -> Result<()> {
    if args.list {
        return list(args).await;
    }
    let dest = resolve_destination(&args.destination, None, &process_env)?;
    let RestoreTarget {
        target,
        jobs,
        pg_restore: explicit,
        connect_timeout: timeout,
        section,
        tables: wanted,
    } = resolve_restore_target(args)?;
    let partial = !wanted.is_empty() || section != Section::All;
    let trust = resolve_trust(&args.trust, Some(&args.allow), None)?;
    let cancel = Cancel::install().context("cannot install signal handlers")?;

    let scope = resolve_scope(&args.destination, ScopeFrom::Environment, &process_env)?;
    let tolerance = resolve_clock_tolerance(&args.destination)?;
    let (storage, _, catalog) = read_catalog(&dest, Some(scope), tolerance, &trust).await?;
    let entry = catalog.resolve(&args.key)?;
    let keys = resolve_keys(&args.keys, &process_env)?;
    let manifest = match &entry.kind {
        Kind::Backup { manifest, .. } => Some(manifest.as_ref()),
        Kind::OldScript => None,
        _ => bail!("{} has no valid manifest: it is not a backup", entry.key),
    };
    trust.admit(&entry.key, &entry.trust(&trust), "restore")?;
    if partial && manifest.is_none() {
        return usage(format!(
            "{} is an SQL archive of LeafLock's old backup script: --table, --schema-only and \
             --data-only need a custom-format archive; restore it whole into a scratch database \
             and copy back what was lost",
            entry.key
        ));
    }
    let old_script_key = match manifest {
        Some(_) => None,
        None => match keys.passphrase() {
            Some(k) => Some(k),
            None => {
                return usage(format!(
                    "{} is an archive of LeafLock's old backup script: give its password with \
                     --encryption-key / LEAFLOCK_BACKUP_ENCRYPTION_KEY or BACKUP_ENCRYPTION_KEY",
                    entry.key
                ))
            }
        },
    };

    let tables = restore::tables_in_target(&target, timeout).await?;
    // A table restore checks the tables it restores itself (`plan_tables`); rows alone
    // go into tables that exist.
    if tables > 0 && !args.clean && wanted.is_empty() && section != Section::DataOnly {
        return usage(format!(
            "the target database {} already has {tables} tables; pass --clean to replace what the \
             backup contains, or restore into an empty database",
            target.redacted()
        ));
    }
    let mut opts = restore::Options {
        target: &target,
        clean: args.clean,
        no_owner: args.no_owner,
        jobs,
        section,
        use_list: None,
    };
    let plan = match manifest {
        Some(m) if !wanted.is_empty() => {
            let decode = readback::Decode::for_manifest(m, &keys, args.require_encryption)?;
            let storage = storage.as_ref();
            let plan = restore::plan_tables(storage, m, decode, &wanted, &opts, timeout).await?;
            tracing::info!(
                tables = %plan.tables.join(", "),
                entries = plan.entries,
                added = %plan.added.join(", "),
                "restoring these tables with what belongs to them (and what they need that the \
                 target lacks); no other table is touched"
            );
            if !plan.left_out.is_empty() {
                tracing::warn!(
                    constraints = %plan.left_out.join(", "),
                    "foreign keys of other tables that point at the restored tables are in the \
                     backup but left out (a table restore never alters another table): add them \
                     back by hand if the target's tables lack them"
                );
            }
            Some(plan)
        }
        _ => None,
    };
    if !args.yes && std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        let what = match &plan {
            Some(p) => format!("tables {}", p.tables.join(", ")),
            None => "the whole backup".into(),
        };
        confirm(&entry.key, manifest, &target, tables, args.clean, &what)?;
    }
    let list = match &plan {
        Some(p) => Some(write_use_list(&p.use_list)?),
        None => None,
    };
    opts.use_list = list
        .as_ref()
        .zip(plan.as_ref())
        .map(|(f, p)| (f.path(), &p.toc));
    let clock = Instant::now();
    let Some(manifest) = manifest else {
        let password = old_script_key.expect("set for old-script archives");
        tokio::select! {
            biased;
            sig = cancel.cancelled() => return Err(anyhow!("stopped by {sig}; the single-transaction restore was rolled back")),
            r = restore::old_archive(storage.as_ref(), &entry.key, password, &target, timeout) => r?,
        }
        tracing::info!(
            key = %entry.key,
            target = %target.redacted(),
            duration_seconds = clock.elapsed().as_secs_f64(),
            "restore of the old script's archive complete"
        );
        return Ok(());
    };

    let tool = pgtool::pg_restore_for(&manifest.pg_dump_version, explicit.as_deref())?;
    tracing::info!(
        key = %entry.key,
        target = %target.redacted(),
        clean = args.clean,
        jobs,
        pg_restore = %tool.path.display(),
        "restoring"
    );
    let whole = restore::whole_tables(&opts, plan.as_ref(), manifest, timeout).await?;
    let decode = readback::Decode::for_manifest(manifest, &keys, args.require_encryption)?;
    let job = restore::backup(storage.as_ref(), manifest, decode, &tool, &opts);
    tokio::select! {
        biased;
        sig = cancel.cancelled() => return Err(anyhow!("stopped by {sig}; the single-transaction restore was rolled back (with --jobs, what was restored stays)")),
        r = job => r?,
    }
    match restore::compare_content(&target, timeout, manifest, whole.as_ref()).await? {
        Some(0) => {}
        Some(checked) => tracing::info!(
            tables = checked,
            "restored content verified: every restored table's rows match the backup's content \
             digests"
        ),
        None => tracing::info!(
            "this backup was made before content digests: the restored rows were not compared"
        ),
    }
    tracing::info!(
        key = %entry.key,
        target = %target.redacted(),
        duration_seconds = clock.elapsed().as_secs_f64(),
        "restore complete"
    );
    Ok(())
}

/// `restore --list`: the backup's tables as its manifest records them (read only; the
/// object is not read), with the content digest of each table whose data it holds.
async fn list(args: &RestoreArgs) -> Result<()> {
    let dest = resolve_destination(&args.destination, None, &process_env)?;
    let trust = resolve_trust(&args.trust, Some(&args.allow), None)?;
    let scope = resolve_scope(&args.destination, ScopeFrom::Environment, &process_env)?;
    let tolerance = resolve_clock_tolerance(&args.destination)?;
    let (_, _, catalog) = read_catalog(&dest, Some(scope), tolerance, &trust).await?;
    let entry = catalog.resolve(&args.key)?;
    let Kind::Backup { manifest, .. } = &entry.kind else {
        bail!(
            "{} has no manifest: there is no table list to show",
            entry.key
        );
    };
    println!("{} ({})", entry.key, entry.trust(&trust).describe());
    println!("{:<40}  {:>12}  {:>14}  DIGEST", "TABLE", "ROWS", "BYTES");
    let digests = manifest
        .content
        .as_ref()
        .map(|c| &c.tables[..])
        .unwrap_or(&[]);
    let mut shown = std::collections::BTreeSet::new();
    for t in &manifest.tables {
        let d = digests
            .iter()
            .find(|d| d.schema == t.schema && d.name == t.name);
        shown.insert((t.schema.as_str(), t.name.as_str()));
        println!(
            "{:<40}  {:>12}  {:>14}  {}",
            format!("{}.{}", t.schema, t.name),
            t.rows,
            d.map(|d| d.bytes.to_string()).unwrap_or_else(|| "-".into()),
            d.map(|d| d.digest.as_str()).unwrap_or("- (counts only)")
        );
    }
    // Tables with data but not counted on their own (leaf partitions).
    for d in digests {
        if !shown.contains(&(d.schema.as_str(), d.name.as_str())) {
            println!(
                "{:<40}  {:>12}  {:>14}  {}",
                d.label(),
                d.rows,
                d.bytes,
                d.digest
            );
        }
    }
    Ok(())
}

/// The use-list pg_restore reads, in a private temporary file.
fn write_use_list(text: &str) -> Result<tempfile::NamedTempFile> {
    let mut f = tempfile::Builder::new()
        .prefix("leaflock-restore-")
        .suffix(".list")
        .tempfile()
        .context("cannot create pg_restore's list file in TMPDIR")?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.flush())
        .context("cannot write pg_restore's list file in TMPDIR")?;
    Ok(f)
}

fn confirm(
    key: &str,
    m: Option<&Manifest>,
    target: &ConnInfo,
    tables: i64,
    clean: bool,
    part: &str,
) -> Result<()> {
    let what = match m {
        Some(m) => format!(
            "database {}, taken {}",
            m.database,
            m.started_at.format("%Y-%m-%d %H:%M:%S UTC")
        ),
        None => "an archive of the old backup script".to_string(),
    };
    eprint!(
        "Restore {part} of {key} ({what}) into {}{}? [y/N] ",
        target.redacted(),
        if clean {
            format!(", replacing objects among its {tables} tables")
        } else {
            String::new()
        }
    );
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES") {
        Ok(())
    } else {
        Err(UsageError("restore cancelled at the prompt".into()).into())
    }
}

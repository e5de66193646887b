//! `leaflock-backup restore [KEY|latest] --target-database-url URL`: put a backup back.
//!
//! Safety rules: the target must exist and be empty unless `--clean`; on a terminal
//! the operator confirms unless `--yes`; the restore goes only into the named
//! database. With one job the archive streams into `pg_restore --single-transaction`
//! and the stream is closed only after the object's sha256 matched its manifest, so a
//! corrupt object is never committed. With `--jobs N` (parallel restore needs a
//! seekable file) the archive is first spooled to a temporary file and verified, then
//! restored.

use crate::catalog::Kind;
use crate::cli::RestoreArgs;
use crate::commands::read_catalog;
use crate::config::{
    check_tool_path, process_env, resolve_clock_tolerance, resolve_destination, resolve_keys,
    resolve_scope, resolve_trust, ScopeFrom,
};
use crate::conninfo::ConnInfo;
use crate::database;
use crate::error::{usage, UsageError};
use crate::legacy;
use crate::manifest::Manifest;
use crate::pgtool::{self, PgTool, ToolProcess};
use crate::readback;
use crate::signals::Cancel;
use crate::storage::Storage;
use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufRead, IsTerminal, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::Command;

pub async fn execute(args: &RestoreArgs) -> Result<()> {
    let dest = resolve_destination(&args.destination, &process_env)?;
    let Some(url) = args
        .target_database_url
        .as_deref()
        .filter(|u| !u.is_empty())
    else {
        return usage("--target-database-url / LEAFLOCK_BACKUP_TARGET_DATABASE_URL is required");
    };
    let target = ConnInfo::parse_url(url).map_err(|e| {
        UsageError(format!(
            "--target-database-url / LEAFLOCK_BACKUP_TARGET_DATABASE_URL: {e}"
        ))
    })?;
    if !(1..=64).contains(&args.jobs) {
        return usage(format!(
            "--jobs / LEAFLOCK_BACKUP_RESTORE_JOBS: expected 1..64, got {}",
            args.jobs
        ));
    }
    let explicit = check_tool_path(
        args.pg_restore.as_deref(),
        "--pg-restore / LEAFLOCK_BACKUP_PG_RESTORE",
    )?;
    let trust = resolve_trust(&args.trust, Some(&args.allow), None)?;
    let cancel = Cancel::install().context("cannot install signal handlers")?;
    crate::config::check_seconds(
        args.connect_timeout,
        "--connect-timeout / LEAFLOCK_BACKUP_CONNECT_TIMEOUT",
    )?;
    let timeout = Duration::from_secs(args.connect_timeout);

    let scope = resolve_scope(&args.destination, ScopeFrom::Environment, &process_env)?;
    let tolerance = resolve_clock_tolerance(&args.destination)?;
    let (storage, _, catalog) = read_catalog(&dest, Some(scope), tolerance, &trust).await?;
    let entry = catalog.resolve(&args.key)?;
    let keys = resolve_keys(&args.keys, &process_env)?;
    let manifest = match &entry.kind {
        Kind::Backup { manifest, .. } => Some(manifest.as_ref()),
        Kind::Legacy => None,
        _ => bail!("{} has no valid manifest: it is not a backup", entry.key),
    };
    trust.admit(&entry.key, &entry.trust(&trust), "restore")?;
    let legacy_key = match manifest {
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

    let client = database::connect(&target, timeout).await?;
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                AND n.nspname NOT LIKE 'pg\\_toast%'",
            &[],
        )
        .await
        .context("cannot inspect the target database")?
        .get(0);
    crate::drill::warn_if_superuser(&client, "restore", false).await;
    drop(client);
    if tables > 0 && !args.clean {
        return usage(format!(
            "the target database {} already has {tables} tables; pass --clean to replace what the \
             backup contains, or restore into an empty database",
            target.redacted()
        ));
    }
    if !args.yes && std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        confirm(&entry.key, manifest, &target, tables, args.clean)?;
    }
    let clock = Instant::now();
    let Some(manifest) = manifest else {
        let password = legacy_key.expect("set for legacy archives");
        tokio::select! {
            biased;
            sig = cancel.cancelled() => return Err(anyhow!("stopped by {sig}; the single-transaction restore was rolled back")),
            r = legacy_restore(storage.as_ref(), &entry.key, password, &target, timeout) => r?,
        }
        tracing::info!(
            key = %entry.key,
            target = %target.redacted(),
            duration_seconds = clock.elapsed().as_secs_f64(),
            "restore of the old script's archive complete"
        );
        return Ok(());
    };

    let major = pgtool::parse_major(&manifest.pg_dump_version).unwrap_or(0);
    let tool = pgtool::select("pg_restore", explicit.as_deref(), major)
        .with_context(|| format!("the archive was written by pg_dump {major}"))?;
    tracing::info!(
        key = %entry.key,
        target = %target.redacted(),
        clean = args.clean,
        jobs = args.jobs,
        pg_restore = %tool.path.display(),
        "restoring"
    );
    let decode = readback::Decode::for_manifest(manifest, &keys, args.require_encryption)?;
    let job = async {
        if args.jobs == 1 {
            stream_restore(storage.as_ref(), manifest, decode, &tool, &target, args).await
        } else {
            spooled_restore(storage.as_ref(), manifest, decode, &tool, &target, args).await
        }
    };
    tokio::select! {
        biased;
        sig = cancel.cancelled() => return Err(anyhow!("stopped by {sig}; the single-transaction restore was rolled back (with --jobs, what was restored stays)")),
        r = job => r?,
    }
    tracing::info!(
        key = %entry.key,
        target = %target.redacted(),
        duration_seconds = clock.elapsed().as_secs_f64(),
        "restore complete"
    );
    Ok(())
}

fn confirm(
    key: &str,
    m: Option<&Manifest>,
    target: &ConnInfo,
    tables: i64,
    clean: bool,
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
        "Restore {key} ({what}) into {}{}? [y/N] ",
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

fn pg_restore_cmd(tool: &PgTool, target: &ConnInfo, args: &RestoreArgs) -> Command {
    let mut cmd = pgtool::command(&tool.path);
    cmd.arg("--exit-on-error")
        .arg(format!("--dbname={}", target.url_without_password()))
        .envs(target.libpq_env())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if args.clean {
        cmd.args(["--clean", "--if-exists"]);
    }
    if args.no_owner {
        cmd.args(["--no-owner", "--no-privileges"]);
    }
    cmd
}

async fn stream_restore(
    storage: &dyn Storage,
    manifest: &Manifest,
    decode: readback::Decode,
    tool: &PgTool,
    target: &ConnInfo,
    args: &RestoreArgs,
) -> Result<()> {
    let mut cmd = pg_restore_cmd(tool, target, args);
    cmd.arg("--single-transaction");
    readback::feed_tool(
        storage,
        &manifest.object_key,
        Some(manifest),
        decode,
        "pg_restore",
        cmd,
    )
    .await
    .context("nothing was restored (pg_restore ran in a single transaction)")?;
    Ok(())
}

async fn spooled_restore(
    storage: &dyn Storage,
    manifest: &Manifest,
    decode: readback::Decode,
    tool: &PgTool,
    target: &ConnInfo,
    args: &RestoreArgs,
) -> Result<()> {
    let spool = tempfile::Builder::new()
        .prefix("leaflock-restore-")
        .suffix(".pgdump")
        .tempfile()
        .context("cannot create a spool file in TMPDIR")?;
    tracing::info!(
        spool = %spool.path().display(),
        bytes = manifest.uncompressed_bytes,
        "parallel restore needs a seekable archive: spooling the decompressed archive to a temporary file"
    );
    let file = tokio::fs::File::create(spool.path()).await?;
    let (report, _held) = readback::read_back(
        storage,
        &manifest.object_key,
        decode,
        file,
        Some((&manifest.sha256, manifest.stored_bytes)),
    )
    .await?;
    readback::check_integrity(manifest, &report)?;
    if let Some(e) = report.consumer_error {
        return Err(e.context("cannot spool the archive"));
    }
    let mut cmd = pg_restore_cmd(tool, target, args);
    cmd.arg(format!("--jobs={}", args.jobs))
        .arg(spool.path())
        .stdin(Stdio::null());
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", tool.path.display()))?;
    ToolProcess::watch("pg_restore", child)
        .wait()
        .await
        .context("pg_restore failed; the target may hold a partial restore (parallel restore is not one transaction)")
}

/// An archive of the old script: decrypt, gunzip, and replay its SQL over this tool's
/// own connection (`legacy::replay`), in one transaction committed only once the
/// archive decoded to its end. No shell-capable client is ever started.
async fn legacy_restore(
    storage: &dyn Storage,
    key: &str,
    password: String,
    target: &ConnInfo,
    timeout: Duration,
) -> Result<()> {
    let client = database::connect(target, timeout).await?;
    warn_if_privileged(&client, target).await;
    tracing::info!(
        key,
        "old script's archive: decrypting (openssl aes-256-cbc), decompressing and replaying its \
         SQL over this tool's own connection in one transaction; its DROP/CREATE DATABASE and \
         \\connect for its own database are left out, anything reaching outside the target stops it"
    );
    let (writer, reader) = tokio::io::duplex(1 << 20);
    let decode = readback::Decode::Legacy { password };
    let read = readback::read_back(storage, key, decode, writer, None);
    let replay = legacy::replay(&client, reader);
    tokio::pin!(read);
    tokio::pin!(replay);
    let mut replayed = None;
    let read = loop {
        tokio::select! {
            r = &mut read => break r,
            r = &mut replay, if replayed.is_none() => replayed = Some(r),
        }
    };
    // Every early return drops the connection inside its open transaction: the server
    // rolls back everything the script did.
    let (report, held) = read?;
    if let Some(Err(e)) = replayed {
        return Err(e);
    }
    if held.is_some() {
        return Err(report
            .consumer_error
            .unwrap_or_else(|| anyhow!("the archive stream was not completed"))
            .context("nothing was restored (one transaction, rolled back)"));
    }
    if let Some(e) = report.consumer_error {
        return Err(e.context("nothing was restored (one transaction, rolled back)"));
    }
    let done = match replayed {
        Some(r) => r?,
        None => replay.await?,
    };
    client
        .batch_execute("COMMIT")
        .await
        .context("the restore could not be committed; nothing was restored")?;
    tracing::info!(
        statements = done.statements,
        copies = done.copies,
        copy_bytes = done.copy_bytes,
        left_out = done.skipped,
        lines = done.lines,
        stored_bytes = report.stored_bytes,
        "old script's archive replayed and committed"
    );
    Ok(())
}

/// A role that may run programs or touch files on the server turns a mistake in the
/// checks into a hole: say so, and how to avoid it.
async fn warn_if_privileged(client: &tokio_postgres::Client, target: &ConnInfo) {
    let row = client
        .query_one(
            "SELECT rolsuper,
                    pg_has_role(current_user, 'pg_execute_server_program', 'USAGE')
                 OR pg_has_role(current_user, 'pg_read_server_files', 'USAGE')
                 OR pg_has_role(current_user, 'pg_write_server_files', 'USAGE')
               FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await;
    if let Ok(row) = row {
        let (superuser, files): (bool, bool) = (row.get(0), row.get(1));
        if superuser || files {
            tracing::warn!(
                role = %target.user,
                superuser,
                "restoring an old script's archive as a role that may run programs or read and write \
                 files on the database server: every statement is checked before it runs, but a role \
                 that owns the target database and nothing more is the safer choice (docs/security.md)"
            );
        }
    }
}

//! The restore stage: a backup put back into a database.
//!
//! With one job the archive streams into `pg_restore --single-transaction` and the
//! stream is closed only after the object's sha256 matched its manifest, so a corrupt
//! object is never committed. With more jobs (parallel restore needs a seekable file)
//! the archive is first spooled to a temporary file and verified, then restored. An
//! archive of the old script is replayed over this tool's own connection in one
//! transaction (`old_script::replay`), never through psql. The command
//! (`commands/restore.rs`) chooses the backup, checks the target and asks the operator;
//! this module only restores.

use crate::conninfo::ConnInfo;
use crate::database;
use crate::manifest::Manifest;
use crate::old_script;
use crate::pgtool::{self, PgTool, ToolProcess};
use crate::readback;
use crate::storage::Storage;
use anyhow::{anyhow, Context, Result};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

/// How to restore (resolved and checked by the command).
pub struct Options<'a> {
    pub target: &'a ConnInfo,
    /// `--clean`: drop what the backup contains before recreating it.
    pub clean: bool,
    /// `--no-owner`: no ownership or privileges from the backup.
    pub no_owner: bool,
    /// Parallel pg_restore jobs (1: one streamed transaction).
    pub jobs: i64,
}

/// Tables in the target database (0: empty), with a warning when the target role is a
/// superuser.
pub async fn tables_in_target(target: &ConnInfo, timeout: Duration) -> Result<i64> {
    let client = database::connect(target, timeout).await?;
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
    Ok(tables)
}

/// Restore the backup `manifest` describes with `tool` (pg_restore).
pub async fn backup(
    storage: &dyn Storage,
    manifest: &Manifest,
    decode: readback::Decode,
    tool: &PgTool,
    opts: &Options<'_>,
) -> Result<()> {
    if opts.jobs == 1 {
        stream_restore(storage, manifest, decode, tool, opts).await
    } else {
        spooled_restore(storage, manifest, decode, tool, opts).await
    }
}

fn pg_restore_cmd(tool: &PgTool, opts: &Options<'_>) -> Command {
    let mut cmd = pgtool::command(&tool.path);
    cmd.arg("--exit-on-error")
        .arg(format!("--dbname={}", opts.target.url_without_password()))
        .envs(opts.target.libpq_env())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if opts.clean {
        cmd.args(["--clean", "--if-exists"]);
    }
    if opts.no_owner {
        cmd.args(["--no-owner", "--no-privileges"]);
    }
    cmd
}

async fn stream_restore(
    storage: &dyn Storage,
    manifest: &Manifest,
    decode: readback::Decode,
    tool: &PgTool,
    opts: &Options<'_>,
) -> Result<()> {
    let mut cmd = pg_restore_cmd(tool, opts);
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
    opts: &Options<'_>,
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
    let mut cmd = pg_restore_cmd(tool, opts);
    cmd.arg(format!("--jobs={}", opts.jobs))
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
/// own connection (`old_script::replay`), in one transaction committed only once the
/// archive decoded to its end. No shell-capable client is ever started.
pub async fn old_archive(
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
    let decode = readback::Decode::OldScript { password };
    let read = readback::read_back(storage, key, decode, writer, None);
    let replay = old_script::replay(&client, reader);
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

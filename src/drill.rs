//! Restore drills: prove a stored backup restores.
//!
//! The drill reads the stored object back from the destination (not the local
//! stream), checks its sha256 against the manifest while it streams, restores it with
//! pg_restore into a scratch database `leaflock_drill_<run id>`, and checks the result
//! against the manifest: every table with exactly the recorded row count, the
//! extensions and indexes, the operator's own SQL checks, and — when the manifest has
//! content digests — every table's rows: `COPY table (columns) TO STDOUT` from the
//! scratch database, with the column list of the archive's COPY statement and the
//! session settings pg_dump's COPY text was written with (`dump::COPY_SETTINGS`, the
//! dump's client encoding), hashed as the backup hashed the archive's rows (with the
//! algorithm the manifest names: `blake3-sum`, or `sha256-sum` for older backups). Only a
//! drill whose digests all matched is "content verified"; one of a backup without
//! digests is "counts only". Then amcheck's index and heap checks (`amcheck.rs`),
//! when the server has it. The scratch database is
//! dropped afterwards — after a failure or a signal too — unless asked to keep it.
//!
//! The outcome is a [`DrillRecord`], written beside the manifest (`.drill.json`) by the
//! caller. A failed drill never deletes the backup: it may still be the best copy.

use crate::conninfo::ConnInfo;
use crate::crypto::Keys;
use crate::database::{self, quote_ident};
use crate::manifest;
use crate::manifest::Manifest;
use crate::pgtool;
use crate::readback;
use crate::record::DrillRecord;
use crate::signals::Cancel;
use crate::storage::Storage;
use anyhow::Result;
use bytes::Bytes;
use chrono::Utc;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// Where to create the scratch database (the URL's database is only used to connect).
    pub server: ConnInfo,
    pub checks: Vec<String>,
    pub keep: bool,
    pub pg_restore: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// Decrypts encrypted backups.
    pub keys: Keys,
    pub require_encryption: bool,
    /// The scratch database goes to the source server (no `--drill-database-url`).
    pub on_source_server: bool,
}

/// `leaflock_drill_<run id>`, lowercased to a plain identifier.
pub fn scratch_name(run_id: &str) -> String {
    let id: String = run_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("leaflock_drill_{id}")
}

/// Run a drill of the backup described by `manifest`. Never returns an error: every
/// failure is a line in the record.
pub async fn drill(
    storage: &dyn Storage,
    manifest: &Manifest,
    opts: &DrillOptions,
    run_id: &str,
    cancel: &Cancel,
) -> DrillRecord {
    let started_at = Utc::now();
    let clock = Instant::now();
    let scratch = scratch_name(run_id);
    let mut rec = DrillRecord {
        format_version: 1,
        run_id: run_id.to_string(),
        object_key: manifest.object_key.clone(),
        started_at,
        finished_at: started_at,
        duration_seconds: 0.0,
        passed: false,
        failures: Vec::new(),
        server: opts.server.with_dbname(&scratch).redacted(),
        scratch_database: scratch.clone(),
        scratch_database_kept: false,
        pg_restore_version: String::new(),
        tables_checked: 0,
        rows_checked: 0,
        checks_run: 0,
        sha256: Some(manifest.sha256.clone()),
        digests_checked: 0,
        content_verified: false,
        amcheck: None,
    };
    tracing::info!(
        key = %manifest.object_key,
        scratch_database = %scratch,
        server = %opts.server.redacted(),
        "restore drill: restoring the stored backup into a scratch database"
    );

    let admin = match database::connect(&opts.server, opts.connect_timeout).await {
        Ok(c) => c,
        Err(e) => return finish(rec, clock, vec![format!("{e:#}")]),
    };
    warn_if_superuser(&admin, "restore drill", opts.on_source_server).await;
    if let Err(e) = admin
        .batch_execute(&format!(
            "CREATE DATABASE {} TEMPLATE template0",
            quote_ident(&scratch)
        ))
        .await
    {
        let msg = format!(
            "cannot create the scratch database {scratch}: {}",
            db_error(&e)
        );
        return finish(rec, clock, vec![msg]);
    }

    let failures = tokio::select! {
        biased;
        sig = cancel.cancelled() => vec![format!("stopped by {sig}")],
        f = restore_and_check(storage, manifest, opts, &scratch, &mut rec) => f,
    };

    if opts.keep {
        rec.scratch_database_kept = true;
        tracing::warn!(scratch_database = %scratch, "keeping the scratch database as asked (--keep-drill-database)");
    } else {
        let drop_sql = format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(&scratch)
        );
        match admin.batch_execute(&drop_sql).await {
            Ok(()) => tracing::info!(scratch_database = %scratch, "scratch database dropped"),
            Err(e) => {
                tracing::error!(scratch_database = %scratch, error = %db_error(&e), "could not drop the scratch database");
                rec.scratch_database_kept = true;
            }
        }
    }
    finish(rec, clock, failures)
}

/// Least privilege: pg_restore runs the archive's SQL with the privileges of the role
/// it connects as. A superuser can be made to create roles, read any database or file,
/// and run shell commands (`COPY ... TO PROGRAM`) by a hostile archive; a dedicated
/// role with CREATEDB only (owner of the scratch databases, nothing else) cannot.
pub async fn warn_if_superuser(client: &tokio_postgres::Client, what: &str, source: bool) {
    let row = client
        .query_one(
            "SELECT current_user::text, rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await;
    let Ok(row) = row else { return };
    let (user, superuser): (String, bool) = (row.get(0), row.get(1));
    if !superuser {
        return;
    }
    if source {
        tracing::warn!(
            role = %user,
            "the {what} runs as superuser {user} on the source server: an archive planted in the \
             destination would run with every privilege on production (create roles, read every \
             database, run shell commands with COPY ... PROGRAM). Use a dedicated non-superuser drill \
             role with CREATEDB on a separate server (--drill-database-url), and --trusted-key"
        );
    } else {
        tracing::warn!(
            role = %user,
            "the {what} runs as superuser {user}: a hostile archive would run with every privilege on \
             that server; a non-superuser role (CREATEDB, or owner of the target database) is enough"
        );
    }
}

fn finish(mut rec: DrillRecord, clock: Instant, failures: Vec<String>) -> DrillRecord {
    rec.finished_at = Utc::now();
    rec.duration_seconds = clock.elapsed().as_secs_f64();
    rec.passed = failures.is_empty();
    rec.failures = failures;
    rec
}

fn db_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => d.message().to_string(),
        None => e.to_string(),
    }
}

async fn restore_and_check(
    storage: &dyn Storage,
    manifest: &Manifest,
    opts: &DrillOptions,
    scratch: &str,
    rec: &mut DrillRecord,
) -> Vec<String> {
    let target = opts.server.with_dbname(scratch);
    if let Err(e) = restore(storage, manifest, opts, &target, rec).await {
        return vec![format!("{e:#}")];
    }
    match check(manifest, &opts.checks, &target, opts.connect_timeout, rec).await {
        Ok(f) => f,
        Err(e) => vec![format!("{e:#}")],
    }
}

/// Stream the stored object into `pg_restore` on `target`, verifying its checksum.
async fn restore(
    storage: &dyn Storage,
    manifest: &Manifest,
    opts: &DrillOptions,
    target: &ConnInfo,
    rec: &mut DrillRecord,
) -> Result<()> {
    let decode = readback::Decode::for_manifest(manifest, &opts.keys, opts.require_encryption)?;
    let tool = pgtool::pg_restore_for(&manifest.pg_dump_version, opts.pg_restore.as_deref())?;
    rec.pg_restore_version = tool.version.clone();
    let mut cmd = pgtool::command(&tool.path);
    cmd.args(["--no-owner", "--no-privileges", "--exit-on-error"])
        .arg(format!("--dbname={}", target.url_without_password()))
        .envs(target.libpq_env());
    readback::feed_tool(
        storage,
        &manifest.object_key,
        Some(manifest),
        decode,
        "pg_restore",
        cmd,
    )
    .await?;
    Ok(())
}

/// Compare the restored database with the manifest; returns the failures.
async fn check(
    manifest: &Manifest,
    checks: &[String],
    target: &ConnInfo,
    timeout: Duration,
    rec: &mut DrillRecord,
) -> Result<Vec<String>> {
    let client = database::connect(target, timeout).await?;
    let mut failures = Vec::new();
    for t in &manifest.tables {
        let sql = format!("SELECT count(*) FROM {}", t.qualified());
        match client.query_one(&sql, &[]).await {
            Ok(row) => {
                let restored: i64 = row.get(0);
                rec.tables_checked += 1;
                rec.rows_checked += restored;
                if restored != t.rows {
                    failures.push(format!(
                        "table {}.{}: expected {} rows, restored {} ({:+})",
                        t.schema,
                        t.name,
                        t.rows,
                        restored,
                        restored - t.rows
                    ));
                }
            }
            Err(e) => failures.push(format!(
                "table {}.{} is missing from the restored database ({})",
                t.schema,
                t.name,
                db_error(&e)
            )),
        }
    }
    if let Some(content) = &manifest.content {
        let (checked, differ) = compare_content(&client, content, |_| true).await?;
        rec.digests_checked += checked;
        rec.content_verified = differ.is_empty();
        failures.extend(differ);
    }
    let (extensions, indexes) = database::schema_objects(&client).await?;
    for e in &manifest.extensions {
        if !extensions.contains(e) {
            failures.push(format!(
                "extension {e} is missing from the restored database"
            ));
        }
    }
    for i in &manifest.indexes {
        if !indexes.contains(i) {
            failures.push(format!("index {i} is missing from the restored database"));
        }
    }
    let amcheck = crate::amcheck::check(&client).await;
    match amcheck.status.as_str() {
        "unavailable" => tracing::warn!(
            note = amcheck.note.as_deref().unwrap_or(""),
            "restore drill: indexes and heaps not checked: {}",
            amcheck.note.as_deref().unwrap_or("amcheck unavailable")
        ),
        _ => tracing::info!(
            status = %amcheck.status,
            indexes = amcheck.indexes_checked,
            heaps = amcheck.heaps_checked,
            "restore drill: amcheck {} ({} B-tree indexes, {} heaps)",
            amcheck.status,
            amcheck.indexes_checked,
            amcheck.heaps_checked
        ),
    }
    failures.extend(amcheck.problems.iter().map(|p| format!("amcheck: {p}")));
    rec.amcheck = Some(amcheck);
    for sql in checks {
        rec.checks_run += 1;
        match client.query_opt(sql.as_str(), &[]).await {
            Ok(Some(row)) => match row.try_get::<_, Option<bool>>(0) {
                Ok(Some(true)) => {}
                Ok(v) => failures.push(format!(
                    "check {sql:?} returned {} instead of true",
                    v.map(|b| b.to_string()).unwrap_or_else(|| "NULL".into())
                )),
                Err(_) => failures.push(format!("check {sql:?} must return one boolean column")),
            },
            Ok(None) => failures.push(format!("check {sql:?} returned no row")),
            Err(e) => failures.push(format!("check {sql:?} failed: {}", db_error(&e))),
        }
    }
    Ok(failures)
}
/// Recompute the content digest of every table of `content` that `pick` keeps, from
/// the restored database `client` is connected to, and compare it with the manifest's.
/// Returns how many were compared and one line per difference, naming the table and
/// what differs (also when a digest cannot be recomputed at all).
pub async fn compare_content(
    client: &tokio_postgres::Client,
    content: &manifest::Content,
    pick: impl Fn(&manifest::TableDigest) -> bool,
) -> Result<(usize, Vec<String>)> {
    let mut failures = Vec::new();
    let mut checked = 0;
    let Some(algorithm) = content.digest_algorithm() else {
        failures.push(format!(
            "the manifest's content digests use {:?}, which this version cannot recompute",
            content.algorithm
        ));
        return Ok((checked, failures));
    };
    for (name, value) in crate::dump::COPY_SETTINGS {
        client
            .execute(
                "SELECT pg_catalog.set_config($1, $2, false)",
                &[name, value],
            )
            .await
            .map_err(|e| {
                anyhow::anyhow!("cannot set {name} for the digest check: {}", db_error(&e))
            })?;
    }
    if let Some(enc) = &content.encoding {
        if let Err(e) = client
            .execute(
                "SELECT pg_catalog.set_config('client_encoding', $1, false)",
                &[enc],
            )
            .await
        {
            failures.push(format!(
                "cannot compare content in the dump's encoding {enc:?}: {}",
                db_error(&e)
            ));
            return Ok((checked, failures));
        }
    }
    for t in content.tables.iter().filter(|t| pick(t)) {
        match table_digest(client, t, algorithm).await {
            Ok(found) => {
                checked += 1;
                if let Some(diff) = t.differences(&found) {
                    failures.push(format!(
                        "table {}: content differs from the backup's digest ({diff})",
                        t.label()
                    ));
                }
            }
            Err(e) => failures.push(format!(
                "table {}: cannot recompute its content digest ({e:#})",
                t.label()
            )),
        }
    }
    Ok((checked, failures))
}

/// `COPY schema.table (columns) TO STDOUT`, hashed row by row with `algorithm` as it
/// streams.
async fn table_digest(
    client: &tokio_postgres::Client,
    t: &manifest::TableDigest,
    algorithm: manifest::DigestAlgorithm,
) -> Result<manifest::TableDigest> {
    use futures::StreamExt;
    let columns = if t.columns.is_empty() {
        String::new()
    } else {
        let cols: Vec<String> = t.columns.iter().map(|c| quote_ident(c)).collect();
        format!(" ({})", cols.join(", "))
    };
    let sql = format!(
        "COPY {}.{}{columns} TO STDOUT",
        quote_ident(&t.schema),
        quote_ident(&t.name)
    );
    let stream = client
        .copy_out(sql.as_str())
        .await
        .map_err(|e| anyhow::anyhow!("{}", db_error(&e)))?;
    let mut stream = std::pin::pin!(stream);
    let mut rows = crate::archive::Rows::new(algorithm);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| anyhow::anyhow!("{}", db_error(&e)))?;
        rows.feed(&chunk);
    }
    let set = rows.finish();
    Ok(manifest::TableDigest {
        rows: set.rows,
        bytes: set.bytes,
        digest: set.hex(),
        ..t.clone()
    })
}

/// Write the drill record beside the manifest and log the outcome. A drill whose
/// record cannot be written is not on record as verified (`list` and retention cannot
/// see it), so it counts as failed: the run says so instead of claiming a verified
/// backup that nothing shows.
pub async fn record(
    storage: &dyn Storage,
    rec: &mut DrillRecord,
    signer: Option<&crate::signing::Signer25519>,
) {
    let key = manifest::drill_key(&rec.object_key);
    let mut json = serde_json::to_vec_pretty(&*rec).expect("drill record serialises");
    if let Some(signer) = signer {
        json = signer
            .seal(&json, crate::signing::DocKind::DrillRecord)
            .expect("a drill record is a JSON object");
    }
    if let Err(e) = storage.put_small(&key, Bytes::from(json), true).await {
        let why = format!("could not write the drill record {key}: {e:#}");
        tracing::error!(key, error = format!("{e:#}"), "{why}");
        rec.passed = false;
        rec.failures.push(why);
    }
    if rec.passed {
        tracing::info!(
            key = %rec.object_key,
            drill_record = %key,
            duration_seconds = (rec.duration_seconds * 1000.0).round() / 1000.0,
            tables = rec.tables_checked,
            rows = rec.rows_checked,
            checks = rec.checks_run,
            digests = rec.digests_checked,
            proof = rec.proof(),
            "restore drill passed ({}): {} tables, {} rows, {} content digests, {} checks match the manifest",
            rec.proof(),
            rec.tables_checked,
            rec.rows_checked,
            rec.digests_checked,
            rec.checks_run
        );
    } else {
        tracing::error!(
            key = %rec.object_key,
            drill_record = %key,
            duration_seconds = (rec.duration_seconds * 1000.0).round() / 1000.0,
            failures = ?rec.failures,
            "restore drill failed: {}",
            rec.failures.join("; ")
        );
    }
}

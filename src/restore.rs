//! The restore stage: a backup put back into a database.
//!
//! With one job the archive streams into `pg_restore --single-transaction`; its last
//! bytes (and the end of the stream) are held back until the object's sha256 matched
//! its manifest (`readback`), so a corrupt or replaced object is never committed:
//! pg_restore cannot finish the last data block without them. With more jobs (parallel
//! restore needs a seekable file), or when pg_restore needs only part of the archive
//! (and would commit without reading the rest), the archive is first spooled to a
//! temporary file and verified, then restored. An archive of the old script is
//! replayed over this tool's own connection in one transaction
//! (`old_script::replay`), never through psql. The command (`commands/restore.rs`)
//! chooses the backup, checks the target and asks the operator; this module only
//! restores.
//!
//! A restore aimed at what was lost (`--table`, `--schema-only`, `--data-only`) reads
//! the archive's table of contents first (`plan_tables`) and hands pg_restore a use-list
//! of exactly the entries it needs: the named tables with everything that belongs to
//! them, and what they depend on only where the target lacks it. Another table of the
//! target is never dropped, altered or written.

use crate::archive::{self, TocEntry};
use crate::conninfo::ConnInfo;
use crate::database::{self, quote_ident};
use crate::error::UsageError;
use crate::manifest::Manifest;
use crate::old_script;
use crate::pgtool::{self, PgTool, ToolProcess};
use crate::readback;
use crate::storage::Storage;
use anyhow::{anyhow, Context, Result};
use std::collections::BTreeSet;
use std::path::Path;
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
    /// Which sections of the archive.
    pub section: Section,
    /// `pg_restore --use-list` file: only these entries (a table restore's plan), with
    /// the table of contents it was planned from (read from the object's head before it
    /// was verified, so checked against the verified archive before pg_restore runs).
    pub use_list: Option<(&'a Path, &'a archive::Toc)>,
}

/// Which sections of the archive a restore puts back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    All,
    /// Definitions only: tables, indexes, constraints, ... without rows.
    SchemaOnly,
    /// Rows only, into tables the target already has.
    DataOnly,
}

/// Tables as (schema, name).
pub type TableSet = BTreeSet<(String, String)>;

/// What a restore of some tables puts back.
#[derive(Debug)]
pub struct TablePlan {
    /// `pg_restore --use-list` text.
    pub use_list: String,
    /// The table of contents it was planned from.
    pub toc: archive::Toc,
    /// The tables named, as `schema.name`.
    pub tables: Vec<String>,
    /// What they need that the target lacked, restored with them.
    pub added: Vec<String>,
    /// Other tables' foreign keys to these tables, which the backup holds and a table
    /// restore leaves out (it never alters another table).
    pub left_out: Vec<String>,
    /// Entries of the archive selected.
    pub entries: usize,
    /// The tables whose definition (and rows) the plan restores, named or added.
    pub relations: TableSet,
}

/// Those of `tables` that exist in the target and hold no row: rows restored into them
/// are exactly the backup's, so their content can be compared with its digests.
async fn empty_tables(target: &ConnInfo, timeout: Duration, tables: &TableSet) -> Result<TableSet> {
    let client = database::connect(target, timeout).await?;
    let mut out = TableSet::new();
    for (schema, name) in tables {
        let sql = format!(
            "SELECT NOT EXISTS (SELECT 1 FROM {}.{})",
            quote_ident(schema),
            quote_ident(name)
        );
        if let Ok(row) = client.query_one(&sql, &[]).await {
            if row.get::<_, bool>(0) {
                out.insert((schema.clone(), name.clone()));
            }
        }
    }
    Ok(out)
}

/// The tables whose rows a restore with `opts` (and the table `plan`) puts back whole,
/// so that what it committed can be compared with the backup's content digests: every
/// table (`None`) for a whole restore, the plan's tables, none for `--schema-only`, and
/// with `--data-only` those that hold no row before it.
pub async fn whole_tables(
    opts: &Options<'_>,
    plan: Option<&TablePlan>,
    manifest: &Manifest,
    timeout: Duration,
) -> Result<Option<TableSet>> {
    Ok(match (opts.section, plan) {
        (Section::SchemaOnly, _) => Some(TableSet::new()),
        (Section::All, Some(p)) => Some(p.relations.clone()),
        (Section::All, None) => None,
        (Section::DataOnly, p) => {
            let candidates = match p {
                Some(p) => p.relations.clone(),
                None => manifest
                    .tables
                    .iter()
                    .map(|t| (t.schema.clone(), t.name.clone()))
                    .collect(),
            };
            Some(empty_tables(opts.target, timeout, &candidates).await?)
        }
    })
}

/// After a committed restore: the rows of the tables in `only` (every table: `None`)
/// against the backup's content digests. Returns how many tables matched, `None` for a
/// backup without digests; a difference is an error naming the table and what differs.
pub async fn compare_content(
    target: &ConnInfo,
    timeout: Duration,
    manifest: &Manifest,
    only: Option<&TableSet>,
) -> Result<Option<usize>> {
    let Some(content) = &manifest.content else {
        return Ok(None);
    };
    if only.is_some_and(|o| o.is_empty()) {
        return Ok(Some(0));
    }
    let client = database::connect(target, timeout).await?;
    let (checked, differ) = crate::drill::compare_content(&client, content, |t| {
        only.is_none_or(|o| o.contains(&(t.schema.clone(), t.name.clone())))
    })
    .await?;
    if !differ.is_empty() {
        return Err(anyhow!(
            "the restore was committed, but what {} now holds differs from the backup's content \
             digests: {}",
            target.redacted(),
            differ.join("; ")
        ));
    }
    Ok(Some(checked))
}

/// The archive entries that restore the tables `specs` (`schema.name` or `name`) with
/// what belongs to them into `opts.target`, checked against what the target holds:
/// a table it has already is replaced only with `--clean`, and only when no other
/// table references it; with `--data-only` every table must exist. What the tables
/// depend on (schemas, extensions, types, functions, sequences, the tables their
/// foreign keys point at) is added only where the target lacks it, and left alone
/// where it has it. Refusals are `UsageError`s (exit 2): nothing was done.
pub async fn plan_tables(
    storage: &dyn Storage,
    manifest: &Manifest,
    decode: readback::Decode,
    specs: &[String],
    opts: &Options<'_>,
    timeout: Duration,
) -> Result<TablePlan> {
    let toc = readback::read_head(storage, &manifest.object_key, decode, |r| {
        archive::read_toc(std::io::BufReader::new(r))
    })
    .await
    .context("cannot read the archive's table of contents")?;
    let mut ids = Vec::new();
    for spec in specs {
        let t = toc
            .find_table(spec)
            .map_err(|e| UsageError(format!("--table / LEAFLOCK_BACKUP_RESTORE_TABLE: {e}")))?;
        if !ids.contains(&t.id) {
            ids.push(t.id);
        }
    }
    let tables: Vec<&TocEntry> = toc.entries.iter().filter(|e| ids.contains(&e.id)).collect();
    let mut chosen = toc.with_parts(&ids);
    let client = database::connect(opts.target, timeout).await?;
    let target = opts.target.redacted();

    let mut present = Vec::new();
    for &t in &tables {
        if exists(&client, t).await? == Some(true) {
            present.push(t);
        } else if opts.section == Section::DataOnly {
            return Err(UsageError(format!(
                "--data-only: the target database {target} has no table {}: restore its definition \
                 too (leave out --data-only)",
                t.label()
            ))
            .into());
        }
    }
    if opts.section != Section::DataOnly && !present.is_empty() {
        let names = present
            .iter()
            .map(|t| t.label())
            .collect::<Vec<_>>()
            .join(", ");
        if !opts.clean {
            return Err(UsageError(format!(
                "the target database {target} already has {}: pass --clean to replace {} (no other \
                 table is touched), or restore into a scratch database and copy rows back",
                names,
                if present.len() == 1 { "it" } else { "them" }
            ))
            .into());
        }
        let holders = referencing(&client, &present).await?;
        if !holders.is_empty() {
            return Err(UsageError(format!(
                "--clean would drop {} while {} in the target database {target} reference{} it; \
                 a table restore never alters another table: name {} with --table too, or restore \
                 into a scratch database and copy rows back",
                names,
                holders.join(", "),
                if holders.len() == 1 { "s" } else { "" },
                if holders.len() == 1 { "it" } else { "them" }
            ))
            .into());
        }
    }

    // What the tables need and the target lacks comes with them; a relation (a table
    // a foreign key points at) with its own parts, whose needs are then looked at too.
    let mut added = Vec::new();
    if opts.section != Section::DataOnly {
        let mut looked = BTreeSet::new();
        loop {
            let mut grew = false;
            for e in toc.prerequisites(&chosen) {
                if !looked.insert(e.id) || exists(&client, e).await? != Some(false) {
                    continue;
                }
                added.push(format!("{} {}", e.desc.to_lowercase(), e.label()));
                if e.desc == "SEQUENCE" || archive::RELATIONS.contains(&e.desc.as_str()) {
                    chosen.extend(toc.with_parts(&[e.id]));
                } else {
                    chosen.insert(e.id);
                }
                grew = true;
            }
            if !grew {
                break;
            }
        }
    }
    let left_out = toc
        .entries
        .iter()
        .filter(|e| e.desc == "FK CONSTRAINT" && !chosen.contains(&e.id))
        .filter(|_| opts.section != Section::DataOnly)
        .filter(|e| e.deps.iter().any(|d| ids.contains(d)))
        .map(|e| e.label())
        .collect();
    let relations = toc
        .entries
        .iter()
        .filter(|e| e.desc == "TABLE" && chosen.contains(&e.id))
        .map(|e| (e.namespace.clone(), e.tag.clone()))
        .collect();
    let tables = tables.iter().map(|t| t.label()).collect();
    Ok(TablePlan {
        use_list: toc.use_list(&chosen),
        toc,
        relations,
        left_out,
        tables,
        added,
        entries: chosen.len(),
    })
}

/// Whether the target has the object of `e`; `None` for kinds this does not look up
/// (pg_restore reports those if they are missing, and nothing is committed).
async fn exists(client: &tokio_postgres::Client, e: &TocEntry) -> Result<Option<bool>> {
    let qualified = format!("{}.{}", quote_ident(&e.namespace), quote_ident(&e.tag));
    let (sql, args): (&str, Vec<String>) = match e.desc.as_str() {
        "SCHEMA" => (
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)",
            vec![e.tag.clone()],
        ),
        "EXTENSION" => (
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = $1)",
            vec![e.tag.clone()],
        ),
        "COLLATION" => (
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_collation c JOIN pg_catalog.pg_namespace n
                ON n.oid = c.collnamespace WHERE n.nspname = $1 AND c.collname = $2)",
            vec![e.namespace.clone(), e.tag.clone()],
        ),
        "TYPE" | "DOMAIN" => (
            "SELECT pg_catalog.to_regtype($1) IS NOT NULL",
            vec![qualified],
        ),
        "FUNCTION" | "PROCEDURE" | "AGGREGATE" => {
            // The tag is `name(argument types)`.
            let Some((name, args)) = e.tag.split_once('(') else {
                return Ok(None);
            };
            (
                "SELECT pg_catalog.to_regprocedure($1) IS NOT NULL",
                vec![format!(
                    "{}.{}({args}",
                    quote_ident(&e.namespace),
                    quote_ident(name)
                )],
            )
        }
        d if d == "SEQUENCE" || archive::RELATIONS.contains(&d) => (
            "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
            vec![qualified],
        ),
        _ => return Ok(None),
    };
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = args
        .iter()
        .map(|a| a as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    let row = client
        .query_one(sql, &params)
        .await
        .with_context(|| format!("cannot look up {} {} in the target", e.desc, e.label()))?;
    Ok(Some(row.get(0)))
}

/// Foreign keys of other tables of the target that reference one of `tables`, as
/// `table (constraint)`.
async fn referencing(client: &tokio_postgres::Client, tables: &[&TocEntry]) -> Result<Vec<String>> {
    let quoted: Vec<String> = tables
        .iter()
        .map(|t| format!("{}.{}", quote_ident(&t.namespace), quote_ident(&t.tag)))
        .collect();
    let rows = client
        .query(
            "SELECT format('%s (%s)', c.conrelid::regclass, c.conname)
               FROM pg_catalog.pg_constraint c
              WHERE c.contype = 'f'
                AND c.confrelid = ANY (SELECT pg_catalog.to_regclass(t) FROM unnest($1::text[]) t)
                AND c.conrelid <> ALL (SELECT pg_catalog.to_regclass(t) FROM unnest($1::text[]) t)
              ORDER BY 1",
            &[&quoted],
        )
        .await
        .context("cannot look up the foreign keys of the target")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
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
    if opts.jobs == 1 && !opts.partial() {
        stream_restore(storage, manifest, decode, tool, opts).await
    } else {
        spooled_restore(storage, manifest, decode, tool, opts).await
    }
}

impl Options<'_> {
    /// Whether pg_restore may stop reading before the end of the archive: then it
    /// would commit before the object's end was verified, so the archive is spooled
    /// and verified first.
    fn partial(&self) -> bool {
        self.use_list.is_some() || self.section == Section::SchemaOnly
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
    match opts.section {
        Section::All => {}
        Section::SchemaOnly => {
            cmd.arg("--schema-only");
        }
        Section::DataOnly => {
            cmd.arg("--data-only");
        }
    }
    if let Some((list, _)) = opts.use_list {
        cmd.arg(format!("--use-list={}", list.display()));
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
        "{}: spooling the decompressed archive to a temporary file, verified before pg_restore reads it",
        if opts.jobs > 1 {
            "parallel restore needs a seekable archive"
        } else {
            "pg_restore stops reading once it has the part asked for (and would commit before the \
             rest of the object was verified)"
        }
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
    if let Some((_, planned)) = opts.use_list {
        let file = std::fs::File::open(spool.path()).context("cannot read the spool file")?;
        let toc = archive::read_toc(std::io::BufReader::new(file))?;
        if &toc != planned {
            return Err(anyhow!(
                "the archive's table of contents differs from the one the restore was planned \
                 from (the object changed while it was read); nothing was restored"
            ));
        }
    }
    let mut cmd = pg_restore_cmd(tool, opts);
    if opts.jobs > 1 {
        cmd.arg(format!("--jobs={}", opts.jobs));
    } else {
        cmd.arg("--single-transaction");
    }
    cmd.arg(spool.path()).stdin(Stdio::null());
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", tool.path.display()))?;
    let done = ToolProcess::watch("pg_restore", child).wait().await;
    if opts.jobs > 1 {
        done.context("pg_restore failed; the target may hold a partial restore (parallel restore is not one transaction)")
    } else {
        done.context("nothing was restored (pg_restore ran in a single transaction)")
    }
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

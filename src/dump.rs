//! pg_dump as the source of the backup stream: a custom-format, uncompressed archive
//! of the pinned snapshot on stdout. The password reaches the child only through its
//! environment (`PGPASSWORD`); its command line carries a URL without it.

use crate::conninfo::ConnInfo;
use crate::pgtool::{PgTool, ToolProcess};
use anyhow::{Context, Result};
use std::process::Stdio;
use tokio::process::ChildStdout;

/// Start `pg_dump --format=custom --compress=0 --snapshot=SNAPSHOT`.
pub fn spawn(tool: &PgTool, conn: &ConnInfo, snapshot: &str) -> Result<(ToolProcess, ChildStdout)> {
    let mut cmd = crate::pgtool::command(&tool.path);
    cmd.arg("--format=custom")
        .arg("--compress=0")
        .arg("--no-password")
        .arg(format!("--snapshot={snapshot}"))
        .arg(format!("--dbname={}", conn.url_without_password()))
        .envs(conn.libpq_env())
        // pg_dump turns statement_timeout off itself, but only after its first queries:
        // a tiny timeout set for the role or database would still cancel those.
        .env("PGOPTIONS", pg_options())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", tool.path.display()))?;
    let stdout = child.stdout.take().expect("piped stdout");
    Ok((ToolProcess::watch("pg_dump", child), stdout))
}

/// The settings that decide how values are written as COPY text in pg_dump's session:
/// the first three pg_dump sets itself (`setup_connection`), the last two this tool
/// sets for it (`PGOPTIONS`), so that the text does not depend on the server's or the
/// role's defaults. A drill recomputing the content digests uses the same, with the
/// dump's client encoding.
pub const COPY_SETTINGS: &[(&str, &str)] = &[
    ("DateStyle", "ISO"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("TimeZone", "UTC"),
    ("bytea_output", "hex"),
];

/// `PGOPTIONS` for pg_dump: whatever the environment had, then timeouts off and the
/// settings of [`COPY_SETTINGS`] pg_dump does not set itself.
fn pg_options() -> String {
    let ours = "-c statement_timeout=0 -c idle_in_transaction_session_timeout=0 \
                -c TimeZone=UTC -c bytea_output=hex";
    match std::env::var("PGOPTIONS") {
        Ok(v) if !v.trim().is_empty() => format!("{v} {ours}"),
        _ => ours.to_string(),
    }
}

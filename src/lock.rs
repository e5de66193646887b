//! One run at a time per database: a session-level PostgreSQL advisory lock, held on
//! its own connection for the whole run (backup, drill, retention).
//!
//! The lock lives where the data lives, so it works across hosts, pods and timers
//! without shared files, and it is released by the server when the holder's
//! connection ends — even after SIGKILL. The holder's connection carries
//! `application_name = "leaflock-backup <run id>"` (the run id starts with the run's
//! start time), which a second run
//! reads from `pg_stat_activity` to name it in its exit-3 message.

use crate::conninfo::ConnInfo;
use crate::database;
use crate::error::LockHeld;
use crate::scope::Scope;
use anyhow::{Context, Result};
use std::time::Duration;
use tokio_postgres::Client;

/// The two int4 halves of the advisory lock key: a constant namespace for this tool
/// and a hash of the scope (the database name, `instance@database` with a label).
fn key(dbname: &str) -> (i32, i32) {
    // FNV-1a, stable across versions and platforms.
    let mut h: u32 = 0x811c_9dc5;
    for b in dbname.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    (0x4c4c_4b42, h as i32) // "LLKB"
}

/// Held until dropped (the connection closes and the server releases the lock).
pub struct RunLock {
    _client: Client,
}

/// Take the lock for the backups of `scope` (a database, with its instance label) on
/// `conn`'s server, or fail with [`LockHeld`] (exit 3) naming the holder. `run` and
/// `prune` of one scope take the same lock.
pub async fn acquire(
    conn: &ConnInfo,
    timeout: Duration,
    scope: &Scope,
    run_id: &str,
) -> Result<RunLock> {
    // The run id begins with the run's start time; PostgreSQL keeps 63 bytes of it.
    let label = format!("leaflock-backup {run_id}");
    let client = database::connect_as(conn, timeout, &label).await?;
    // The lock lives as long as this idle session: an idle_session_timeout (PostgreSQL
    // 14+) set for the role must not end it mid-run. Older servers lack the setting.
    let _ = client.batch_execute("SET idle_session_timeout = 0").await;
    let (k1, k2) = key(&scope.to_string());
    let got: bool = client
        .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&k1, &k2])
        .await
        .context("cannot take the run lock")?
        .get(0);
    if got {
        tracing::debug!(k1, k2, "run lock taken");
        return Ok(RunLock { _client: client });
    }
    let holder = client
        .query_opt(
            "SELECT a.application_name, a.backend_start::text, coalesce(a.client_addr::text, 'local')
               FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE l.locktype = 'advisory' AND l.classid = $1::int4::oid
                AND l.objid = $2::int4::oid AND l.objsubid = 2 AND l.granted",
            &[&k1, &k2],
        )
        .await
        .ok()
        .flatten()
        .map(|r| {
            format!(
                "{} (connected {} from {})",
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(2)
            )
        })
        .unwrap_or_else(|| "another session".into());
    Err(LockHeld(format!(
        "another run holds the lock for database {scope}: {holder}; not starting"
    ))
    .into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_differ_by_database_and_are_stable() {
        assert_eq!(super::key("notes"), super::key("notes"));
        assert_ne!(super::key("notes").1, super::key("leaflock").1);
    }
}

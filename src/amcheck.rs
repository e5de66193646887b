//! Index and heap checks of a restored database with PostgreSQL's `amcheck` (contrib):
//! `bt_index_check(index, heapallindexed => true)` on every valid B-tree index and,
//! from PostgreSQL 14, `verify_heapam(table, check_toast => true)` on every table and
//! materialized view outside the system schemas. The drill runs them on its scratch
//! database after the restore; an extension the server lacks (or the drill role may
//! not create) is reported in the outcome, never a failure of its own.

use crate::database::quote_ident;
use crate::record::AmcheckOutcome;
use tokio_postgres::Client;

/// Problems listed per relation at most (a corrupt heap can report every tuple).
const MAX_PER_RELATION: i64 = 5;

const USER_RELATIONS: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema')
    AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
    AND c.relpersistence <> 't'";

fn db_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => d.message().to_string(),
        None => e.to_string(),
    }
}

/// Run the checks on `client`'s database. Never fails: what could not be checked is
/// in the outcome (`status = "unavailable"`), what is corrupt in `problems`.
pub async fn check(client: &Client) -> AmcheckOutcome {
    let mut out = AmcheckOutcome {
        status: "unavailable".into(),
        version: None,
        indexes_checked: 0,
        heaps_checked: 0,
        problems: Vec::new(),
        note: None,
    };
    let schema = match install(client).await {
        Ok(s) => s,
        Err(why) => {
            out.note = Some(why);
            return out;
        }
    };
    out.version = client
        .query_opt(
            "SELECT extversion::text FROM pg_extension WHERE extname = 'amcheck'",
            &[],
        )
        .await
        .ok()
        .flatten()
        .map(|r| r.get(0));
    let schema = quote_ident(&schema);

    let indexes = client
        .query(
            &format!(
                "SELECT c.oid, n.nspname::text, c.relname::text
                   FROM pg_index i
                   JOIN pg_class c ON c.oid = i.indexrelid
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                   JOIN pg_am am ON am.oid = c.relam
                  WHERE am.amname = 'btree' AND i.indisvalid AND i.indisready
                    AND {USER_RELATIONS}
                  ORDER BY 2, 3"
            ),
            &[],
        )
        .await;
    match indexes {
        Ok(rows) => {
            for r in rows {
                let (oid, ns, name): (u32, String, String) = (r.get(0), r.get(1), r.get(2));
                let sql = format!("SELECT {schema}.bt_index_check($1::oid::regclass, true)");
                match client.execute(&sql, &[&oid]).await {
                    Ok(_) => out.indexes_checked += 1,
                    Err(e) => out
                        .problems
                        .push(format!("index {ns}.{name}: {}", db_error(&e))),
                }
            }
        }
        Err(e) => out
            .problems
            .push(format!("cannot list the B-tree indexes: {}", db_error(&e))),
    }

    let heap_check = client
        .query_one(
            "SELECT current_setting('server_version_num')::int >= 140000
                AND EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'verify_heapam')",
            &[],
        )
        .await
        .map(|r| r.get::<_, bool>(0))
        .unwrap_or(false);
    if !heap_check {
        out.note = Some("heaps not checked: verify_heapam needs PostgreSQL 14 or newer".into());
    } else {
        let tables = client
            .query(
                &format!(
                    "SELECT c.oid, n.nspname::text, c.relname::text
                       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                      WHERE c.relkind IN ('r', 'm') AND {USER_RELATIONS}
                      ORDER BY 2, 3"
                ),
                &[],
            )
            .await;
        match tables {
            Ok(rows) => {
                for r in rows {
                    let (oid, ns, name): (u32, String, String) = (r.get(0), r.get(1), r.get(2));
                    let sql = format!(
                        "SELECT blkno, offnum, msg FROM {schema}.verify_heapam($1::oid::regclass, check_toast => true) LIMIT {MAX_PER_RELATION}"
                    );
                    match client.query(&sql, &[&oid]).await {
                        Ok(found) => {
                            out.heaps_checked += 1;
                            for f in found {
                                let (blk, off, msg): (i64, Option<i32>, String) =
                                    (f.get(0), f.get(1), f.get(2));
                                out.problems.push(format!(
                                    "table {ns}.{name}: block {blk}{}: {msg}",
                                    off.map(|o| format!(" offset {o}")).unwrap_or_default()
                                ));
                            }
                        }
                        Err(e) => out
                            .problems
                            .push(format!("table {ns}.{name}: {}", db_error(&e))),
                    }
                }
            }
            Err(e) => out
                .problems
                .push(format!("cannot list the tables: {}", db_error(&e))),
        }
    }
    out.status = if out.problems.is_empty() {
        "passed".into()
    } else {
        "failed".into()
    };
    out
}

/// The schema amcheck's functions live in, creating the extension when the server has
/// it and the database does not; `Err` says why it cannot be used.
async fn install(client: &Client) -> Result<String, String> {
    let find = "SELECT n.nspname::text FROM pg_extension e
                  JOIN pg_namespace n ON n.oid = e.extnamespace
                 WHERE e.extname = 'amcheck'";
    if let Ok(Some(r)) = client.query_opt(find, &[]).await {
        return Ok(r.get(0));
    }
    let available = client
        .query_opt(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'amcheck'",
            &[],
        )
        .await
        .map_err(|e| format!("cannot list the server's extensions: {}", db_error(&e)))?;
    if available.is_none() {
        return Err(
            "the server has no amcheck extension (PostgreSQL's contrib); \
                    indexes and heaps were not checked"
                .into(),
        );
    }
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS amcheck")
        .await
        .map_err(|e| {
            format!(
                "amcheck could not be installed in the scratch database ({}); \
                 indexes and heaps were not checked",
                db_error(&e)
            )
        })?;
    match client.query_opt(find, &[]).await {
        Ok(Some(r)) => Ok(r.get(0)),
        _ => Err("amcheck was created but cannot be found".into()),
    }
}

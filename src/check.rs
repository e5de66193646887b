//! `check`: everything a run needs, proved without taking a backup.
//!
//! Each probe gives one [`Finding`]: passed, failed (with the fix), or skipped (not
//! configured, or not tried because what it depends on failed). Nothing here changes
//! what a run would see: probe objects are removed (a DELETE and an abort are first
//! tried on names that do not exist, so a destination without those permissions gets
//! no probe at all), the Pushgateway probe uses a group of its own and deletes it, the
//! healthchecks-style target gets `<url>/log` (which changes no check's state), the
//! lock is taken and released at once. What a probe cannot undo it does not try.

use crate::clock::Clock;
use crate::conninfo::ConnInfo;
use crate::crypto::{Encryption, Keys};
use crate::database::{self, USER_RELATION};
use crate::drill::DrillOptions;
use crate::error::LockHeld;
use crate::lock;
use crate::metrics::{MetricsConfig, Pushgateway};
use crate::notify::{Notifier, NotifyConfig};
use crate::pgtool::{self, PgTool};
use crate::scope::{self, Scope};
use crate::storage::{self, DestinationConfig, Storage, Unfinished};
use bytes::Bytes;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What `check` examines (resolved by `config`, like a run's settings).
pub struct Plan<'a> {
    pub conn: &'a ConnInfo,
    pub connect_timeout: Duration,
    pub pg_dump: Option<&'a Path>,
    pub destination: &'a DestinationConfig,
    pub scope: &'a Scope,
    pub clock_tolerance: Duration,
    pub drill: Option<&'a DrillOptions>,
    pub metrics: Option<&'a MetricsConfig>,
    pub textfile: Option<&'a Path>,
    pub notify: &'a NotifyConfig,
    pub encryption: Option<&'a Encryption>,
    /// The keys a drill decrypts with (also given without a drill: then only the
    /// round trip is checked).
    pub keys: Option<&'a Keys>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed,
    /// Not configured, or not tried because an earlier probe failed.
    Skipped,
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub what: &'static str,
    pub outcome: Outcome,
    pub detail: String,
    /// How to fix a failure.
    pub fix: Option<String>,
}

fn pass(what: &'static str, detail: impl Into<String>) -> Finding {
    Finding {
        what,
        outcome: Outcome::Passed,
        detail: detail.into(),
        fix: None,
    }
}

fn fail(what: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding {
        what,
        outcome: Outcome::Failed,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

fn skip(what: &'static str, detail: impl Into<String>) -> Finding {
    Finding {
        what,
        outcome: Outcome::Skipped,
        detail: detail.into(),
        fix: None,
    }
}

/// No probe waits longer than this for one answer.
const STEP: Duration = Duration::from_secs(30);

async fn bounded<T>(fut: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    match tokio::time::timeout(STEP, fut).await {
        Ok(r) => r,
        Err(_) => Err(anyhow::anyhow!("no answer within {} s", STEP.as_secs())),
    }
}

/// Every probe, in the order a run needs them.
pub async fn check(plan: &Plan<'_>, run_id: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    database(plan, run_id, &mut out).await;
    destination(plan, run_id, &mut out).await;
    out.extend(encryption(plan));
    out.extend(pushgateway(plan, run_id).await);
    out.extend(textfile(plan.textfile));
    out.extend(notifications(plan.notify).await);
    out
}

const DB_FIX: &str = "check --database-url / LEAFLOCK_BACKUP_DATABASE_URL (or DATABASE_URL, \
                      POSTGRESQL_*): host, port, user, password (a *_FILE variable for it), sslmode";

async fn database(plan: &Plan<'_>, run_id: &str, out: &mut Vec<Finding>) {
    let client = match database::connect(plan.conn, plan.connect_timeout).await {
        Ok(c) => c,
        Err(e) => {
            out.push(fail(
                "database",
                format!("cannot connect to {}: {e:#}", plan.conn.redacted()),
                DB_FIX,
            ));
            for what in ["pg_dump", "privileges", "run lock"] {
                out.push(skip(what, "not tried: no database connection"));
            }
            if plan.drill.is_some() {
                out.push(skip("restore drill", "not tried: no database connection"));
            }
            return;
        }
    };
    let version = match database::server_version(&client).await {
        Ok(v) => v,
        Err(e) => {
            out.push(fail(
                "database",
                format!("connected, but cannot read the server version: {e:#}"),
                DB_FIX,
            ));
            return;
        }
    };
    let user: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or_else(|_| "?".into());
    out.push(pass(
        "database",
        format!(
            "{} as {user}: PostgreSQL {}",
            plan.conn.redacted(),
            version.text
        ),
    ));

    let tool = match pgtool::select("pg_dump", plan.pg_dump, version.major()) {
        Ok(t) => {
            out.push(pass(
                "pg_dump",
                format!("{} ({})", t.path.display(), t.version),
            ));
            Some(t)
        }
        Err(e) => {
            out.push(fail(
                "pg_dump",
                format!("{e:#}"),
                format!(
                    "install pg_dump {} or newer (Debian: postgresql-client-{}), or point \
                     --pg-dump / LEAFLOCK_BACKUP_PG_DUMP at it",
                    version.major(),
                    version.major()
                ),
            ));
            None
        }
    };

    out.push(privileges(&client, &user).await);

    out.push(
        match lock::acquire(plan.conn, plan.connect_timeout, plan.scope, run_id).await {
            Ok(guard) => {
                drop(guard);
                pass("run lock", format!("free for database {}", plan.scope))
            }
            Err(e) if e.downcast_ref::<LockHeld>().is_some() => fail(
                "run lock",
                format!("{e:#}"),
                "a run is in progress (or a stuck one holds its session): check again once it \
                 ends, or end that session (pg_terminate_backend)",
            ),
            Err(e) => fail("run lock", format!("cannot take it: {e:#}"), DB_FIX),
        },
    );

    if let Some(d) = plan.drill {
        out.push(drill(d, tool.as_ref()).await);
    }
}

/// The role can read everything pg_dump reads: every schema, table, sequence.
async fn privileges(client: &tokio_postgres::Client, user: &str) -> Finding {
    let rows = client
        .query(
            &format!(
                "SELECT format('%I.%I', n.nspname, c.relname),
                    CASE WHEN NOT has_schema_privilege(n.oid, 'USAGE') THEN 'schema'
                         WHEN c.relkind = 'S' THEN 'sequence' ELSE 'table' END
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p', 'S', 'm', 'v')
                AND {USER_RELATION}
                AND NOT (has_schema_privilege(n.oid, 'USAGE')
                         AND CASE WHEN c.relkind = 'S'
                                  THEN has_sequence_privilege(c.oid, 'SELECT')
                                  ELSE has_table_privilege(c.oid, 'SELECT') END)
              ORDER BY 1"
            ),
            &[],
        )
        .await;
    let count: i64 = client
        .query_one(
            &format!(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p', 'S', 'm', 'v') AND {USER_RELATION}"
            ),
            &[],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or(0);
    match rows {
        Err(e) => fail(
            "privileges",
            format!("cannot read the catalog: {e}"),
            "the role needs to read pg_catalog (every role can, unless it was revoked)",
        ),
        Ok(rows) if rows.is_empty() => pass(
            "privileges",
            format!("{user} can read all {count} tables, views and sequences"),
        ),
        Ok(rows) => {
            let names: Vec<String> = rows
                .iter()
                .map(|r| format!("{} ({})", r.get::<_, String>(0), r.get::<_, String>(1)))
                .collect();
            let shown = if names.len() > 8 {
                format!("{} and {} more", names[..8].join(", "), names.len() - 8)
            } else {
                names.join(", ")
            };
            fail(
                "privileges",
                format!("{user} cannot read {}: {shown}", names.len()),
                format!(
                    "GRANT USAGE ON SCHEMA <schema> TO {user}; GRANT SELECT ON ALL TABLES IN \
                     SCHEMA <schema> TO {user}; GRANT SELECT ON ALL SEQUENCES IN SCHEMA \
                     <schema> TO {user} (PostgreSQL 14+: GRANT pg_read_all_data TO {user})"
                ),
            )
        }
    }
}

/// The drill can create its scratch database, and a pg_restore reads what pg_dump writes.
async fn drill(opts: &DrillOptions, pg_dump: Option<&PgTool>) -> Finding {
    let restore = match pg_dump {
        Some(t) => match pgtool::pg_restore_for(&t.version, opts.pg_restore.as_deref()) {
            Ok(r) => Some(r),
            Err(e) => {
                return fail(
                    "restore drill",
                    format!("{e:#}"),
                    "install the pg_restore of pg_dump's version or newer, or point \
                     --pg-restore / LEAFLOCK_BACKUP_PG_RESTORE at it",
                )
            }
        },
        None => None,
    };
    let client = match database::connect(&opts.server, opts.connect_timeout).await {
        Ok(c) => c,
        Err(e) => {
            return fail(
                "restore drill",
                format!("cannot connect to {}: {e:#}", opts.server.redacted()),
                "check --drill-database-url / LEAFLOCK_BACKUP_DRILL_DATABASE_URL",
            )
        }
    };
    let row = client
        .query_one(
            "SELECT current_user::text, rolsuper, rolcreatedb FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await;
    let tool = restore.map_or(String::new(), |r| {
        format!(", pg_restore {} ({})", r.path.display(), r.version)
    });
    match row {
        Ok(r) if r.get::<_, bool>(1) => pass(
            "restore drill",
            format!(
                "{} as {} (a superuser: a dedicated role with CREATEDB only is safer){tool}",
                opts.server.redacted(),
                r.get::<_, String>(0)
            ),
        ),
        Ok(r) if r.get::<_, bool>(2) => pass(
            "restore drill",
            format!(
                "{} as {} may create the scratch database{tool}",
                opts.server.redacted(),
                r.get::<_, String>(0)
            ),
        ),
        Ok(r) => {
            let user: String = r.get(0);
            fail(
                "restore drill",
                format!(
                    "{user} at {} may not create databases: the scratch database cannot be made",
                    opts.server.redacted()
                ),
                format!(
                    "ALTER ROLE {user} CREATEDB, or give --drill-database-url a role that has it"
                ),
            )
        }
        Err(e) => fail(
            "restore drill",
            format!("cannot read the role's attributes: {e}"),
            "check --drill-database-url / LEAFLOCK_BACKUP_DRILL_DATABASE_URL",
        ),
    }
}

/// `<scope root>leaflock_check_<run>.<name>`: beside the backups, under the
/// permissions they have, named so that nothing else takes it for a backup.
fn probe_key(plan: &Plan<'_>, run_id: &str, name: &str) -> String {
    let tail = run_id.rsplit('-').next().unwrap_or(run_id);
    format!(
        "{}leaflock_check_{tail}.{name}",
        scope::root(plan.destination.prefix(), plan.scope)
    )
}

const S3_FIX: &str = "check --s3-bucket, --s3-endpoint, --s3-region and the access key \
                      (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or their *_FILE), and that the \
                      bucket policy allows s3:ListBucket, s3:GetObject, s3:PutObject, \
                      s3:DeleteObject, s3:AbortMultipartUpload and s3:ListMultipartUploadParts";

fn dest_fix(dest: &DestinationConfig) -> &'static str {
    match dest {
        DestinationConfig::S3(_) => S3_FIX,
        DestinationConfig::Local(_) => {
            "check --local-dir / LEAFLOCK_BACKUP_LOCAL_DIR: it must exist and be writable by \
             this user"
        }
    }
}

async fn destination(plan: &Plan<'_>, run_id: &str, out: &mut Vec<Finding>) {
    let dest = plan.destination;
    let fix = dest_fix(dest);
    // The plain probes never carry Object Lock: a locked probe could not be removed.
    // Its own probe (`Storage::probe_lock`) uses a retention of seconds.
    let plain = match dest {
        DestinationConfig::S3(c) => {
            let mut c = c.clone();
            c.object_lock = None;
            DestinationConfig::S3(c)
        }
        other => other.clone(),
    };
    let opened = bounded(async {
        let s = storage::open(&plain).await?;
        s.preflight().await?;
        Ok(s)
    })
    .await;
    let storage = match opened {
        Ok(s) => s,
        Err(e) => {
            out.push(fail("destination", format!("{e:#}"), fix));
            out.push(skip("clock", "not tried: the destination is not reachable"));
            return;
        }
    };
    out.push(pass("destination", storage.describe()));
    out.push(clock(storage.as_ref(), plan.clock_tolerance).await);
    out.push(permissions(storage.as_ref(), plan, run_id, fix).await);
    if let DestinationConfig::S3(c) = dest {
        if c.object_lock.is_some() {
            let key = probe_key(plan, run_id, "lock");
            out.push(match bounded(storage::open(dest)).await {
                Ok(full) => match full.probe_lock(&key).await {
                    Ok(what) => pass("object lock", what),
                    Err(e) => fail(
                        "object lock",
                        format!("{e:#}"),
                        "create the bucket with Object Lock enabled (it cannot be turned on \
                         later on most stores), use a store that applies it, or drop \
                         --object-lock-days",
                    ),
                },
                Err(e) => fail("object lock", format!("{e:#}"), fix),
            });
        }
    }
}

async fn clock(storage: &dyn Storage, tolerance: Duration) -> Finding {
    let c = Clock::read(storage, tolerance).await;
    match c.skew() {
        None => skip(
            "clock",
            "the destination has no clock to compare with (a local directory)",
        ),
        Some(skew) if c.agrees() => pass(
            "clock",
            format!(
                "the local clock and the destination's agree ({} s apart, tolerance {} s)",
                skew.num_seconds(),
                c.tolerance.num_seconds()
            ),
        ),
        Some(skew) => fail(
            "clock",
            format!(
                "the local clock is {} s {} the destination's (tolerance {} s): retention \
                 would delete nothing and new backups would look like they come from the {}",
                skew.num_seconds().abs(),
                if skew.num_seconds() < 0 {
                    "ahead of"
                } else {
                    "behind"
                },
                c.tolerance.num_seconds(),
                if skew.num_seconds() < 0 {
                    "future"
                } else {
                    "past"
                }
            ),
            "set the host's clock (NTP: timedatectl set-ntp true, chrony); or, if the store's \
             clock is the wrong one, raise --clock-tolerance while it is fixed",
        ),
    }
}

/// Delete and abort first, on names that do not exist (no side effect, and no probe
/// object left where deleting is denied), then write, read, list, multipart, delete.
async fn permissions(storage: &dyn Storage, plan: &Plan<'_>, run_id: &str, fix: &str) -> Finding {
    let what = "permissions";
    let small = probe_key(plan, run_id, "probe");
    let large = probe_key(plan, run_id, "multipart");
    let absent = probe_key(plan, run_id, "absent");
    let prefix = scope::root(plan.destination.prefix(), plan.scope);

    if let Err(e) = bounded(storage.purge(&absent)).await {
        return fail(
            what,
            format!("delete: {e:#}; no probe object was written"),
            fix,
        );
    }
    let ghost = Unfinished {
        key: absent.clone(),
        id: "leaflock-check-no-such-upload".into(),
        started: None,
    };
    if let Err(e) = bounded(storage.discard_unfinished(&ghost)).await {
        return fail(
            what,
            format!("abort of unfinished uploads: {e:#}; no probe object was written"),
            fix,
        );
    }

    let body = Bytes::from(format!("leaflock-backup check {run_id}\n"));
    let written = async {
        storage.put_small(&small, body.clone(), false).await?;
        let back = storage.get_small(&small).await?;
        anyhow::ensure!(back == body, "read back {} bytes that differ", back.len());
        Ok(())
    };
    let result = bounded(written)
        .await
        .map_err(|e| format!("write/read: {e:#}"));
    let result = match result {
        Ok(()) => bounded(multipart(storage, &large, &body, &prefix))
            .await
            .map_err(|e| format!("multipart: {e:#}")),
        Err(e) => Err(e),
    };
    let listed = match &result {
        Ok(()) => bounded(storage.list(&prefix))
            .await
            .map_err(|e| format!("list: {e:#}"))
            .and_then(|l| {
                if l.iter().any(|o| o.key == small) {
                    Ok(())
                } else {
                    Err(format!("list: the probe object {small} is not listed"))
                }
            }),
        Err(_) => Ok(()),
    };
    // Removal is tried whatever happened before.
    let mut left = Vec::new();
    for key in [&small, &large] {
        let gone = async {
            storage.purge(key).await?;
            anyhow::ensure!(!storage.exists(key).await?, "still there after DELETE");
            Ok(())
        };
        if let Err(e) = bounded(gone).await {
            if bounded(storage.exists(key)).await.unwrap_or(true) {
                left.push(format!("{key} ({e:#})"));
            }
        }
    }
    let problem = [result.err(), listed.err()]
        .into_iter()
        .flatten()
        .chain((!left.is_empty()).then(|| format!("cannot remove {}", left.join(", "))))
        .collect::<Vec<_>>();
    if problem.is_empty() {
        pass(
            what,
            "write (the checksum and SSE asked for read back), read, list, multipart upload \
             and abort, delete: all allowed (probe objects removed)",
        )
    } else {
        fail(what, problem.join("; "), fix)
    }
}

/// A multipart upload completed (as a backup is) and one aborted (as a failed one is),
/// and the aborted one is not left open.
async fn multipart(
    storage: &dyn Storage,
    key: &str,
    body: &Bytes,
    prefix: &str,
) -> anyhow::Result<()> {
    let mut w = storage.create(key).await?;
    w.write(body.clone()).await?;
    w.finish().await?;
    let mut r = storage.open_read(key).await?;
    let mut back = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut r, &mut back).await?;
    anyhow::ensure!(
        back == body[..],
        "the completed upload reads back differently"
    );

    let aborted = format!("{key}.aborted");
    let mut w = storage.create(&aborted).await?;
    w.write(body.clone()).await?;
    w.abort().await?;
    let open = storage.list_unfinished(prefix).await?;
    anyhow::ensure!(
        !open.iter().any(|u| u.key == aborted),
        "an aborted upload is still open"
    );
    Ok(())
}

fn encryption(plan: &Plan<'_>) -> Option<Finding> {
    let enc = plan.encryption?;
    let info = enc.info();
    let what = "encryption";
    if let Err(e) = enc.self_test() {
        return Some(fail(
            what,
            format!("{e:#}"),
            "check --encrypt-to / --recipients-file",
        ));
    }
    let who = if info.recipients.is_empty() {
        "a passphrase".to_string()
    } else {
        format!("{} recipient(s)", info.recipients.len())
    };
    Some(match plan.keys.filter(|k| !k.is_empty()) {
        None => pass(
            what,
            format!(
                "{} to {who}; no identity given, so the round trip is not tried",
                info.scheme
            ),
        ),
        Some(keys) => match enc.round_trip(keys) {
            Ok(()) => pass(
                what,
                format!(
                    "{} to {who}; the given identity decrypts what is written",
                    info.scheme
                ),
            ),
            Err(e) => fail(
                what,
                format!("{e:#}"),
                "the drill's --identity must hold the private key of one of --encrypt-to's \
                 recipients (age-keygen -y IDENTITY prints its recipient)",
            ),
        },
    })
}

async fn pushgateway(plan: &Plan<'_>, run_id: &str) -> Option<Finding> {
    let cfg = plan.metrics?;
    let label = cfg
        .database_label
        .clone()
        .unwrap_or_else(|| plan.conn.dbname.clone());
    let fix = "check --pushgateway-url / LEAFLOCK_BACKUP_PUSHGATEWAY_URL (and its credentials), \
               and that the Pushgateway runs";
    let gw = match Pushgateway::new(cfg) {
        Ok(g) => g,
        Err(e) => return Some(fail("pushgateway", format!("{e:#}"), fix)),
    };
    Some(match bounded(gw.probe(&label, run_id)).await {
        Ok(()) => pass(
            "pushgateway",
            format!(
                "{}: read back, and accepts a push for job {} (probe group removed)",
                cfg.shown(),
                cfg.job
            ),
        ),
        Err(e) => fail("pushgateway", format!("{e:#}"), fix),
    })
}

fn textfile(path: Option<&Path>) -> Option<Finding> {
    let path = path?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let probe = dir.join(format!(".leaflock-check-{}", std::process::id()));
    Some(
        match std::fs::write(&probe, b"").and_then(|_| std::fs::remove_file(&probe)) {
            Ok(()) => pass(
                "metrics textfile",
                format!("{} can be written", dir.display()),
            ),
            Err(e) => fail(
                "metrics textfile",
                format!("cannot write in {}: {e}", dir.display()),
                "check --metrics-textfile: its directory (node_exporter's \
                 --collector.textfile.directory) must exist and be writable by this user",
            ),
        },
    )
}

async fn notifications(cfg: &NotifyConfig) -> Vec<Finding> {
    let notifier = Notifier::new(cfg);
    let mut out = Vec::new();
    for (target, result) in notifier.probe().await {
        out.push(match result {
            Ok(()) => pass("notification", format!("{target}: accepted")),
            Err(why) => fail(
                "notification",
                format!("{target}: {why}"),
                "check --notify-url / --healthchecks-url and that the receiver runs",
            ),
        });
    }
    out
}

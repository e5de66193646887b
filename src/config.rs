//! Validated configuration: flags and `LEAFLOCK_BACKUP_*` variables (parsed by clap in
//! `cli.rs`) resolved against the names LeafLock deployments already use, checked
//! before any work is done.
//!
//! Every error here is a [`UsageError`] (exit 2) whose one line names the flag or
//! variable and what was expected. Resolution takes the environment as a function so
//! it can be tested without touching the process environment.

use crate::cli::{
    AllowUnsignedArgs, DatabaseArgs, DestinationArgs, DrillArgs, DumpArgs, EncryptArgs, GateArgs,
    KeyArgs, MetricsArgs, RetentionArgs, RunArgs, ScheduleArgs, SigningArgs, TrustArgs, UploadArgs,
};
use crate::compress::Compression;
use crate::conninfo::{ConnInfo, SslMode};
use crate::crypto::{parse_recipients, Encryption, Keys};
use crate::drill::DrillOptions;
use crate::error::{usage, UsageError};
use crate::gate::Thresholds;
use crate::metrics::MetricsConfig;
use crate::restore::Section;
use crate::retention::{Policy, GDPR_DAYS};
use crate::schedule::Schedule;
use crate::scope::Scope;
use crate::secrets::redact_url;
use crate::signing::{PublicKey, Signer25519, TrustPolicy};
use crate::storage::{Checksum, DestinationConfig, LocalConfig, LockMode, S3Config, Sse};
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Reads an environment variable (empty values count as unset).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, for production use.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

pub const DEFAULT_PREFIX: &str = "backups/";
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// Part size and parts in flight of a command that writes no backup (`--part-size`'s
/// and `--parts-in-flight`'s defaults).
const DEFAULT_PART_SIZE: usize = 16 * 1024 * 1024;
const DEFAULT_PARTS_IN_FLIGHT: usize = 4;
pub const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;
pub const MAX_COMPRESS_THREADS: usize = 256;

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub database: DatabaseConfig,
    pub destination: DestinationConfig,
    pub compression: Compression,
    /// Threads compressing (gzip workers, or libzstd's workers): at least 1.
    pub compress_threads: usize,
    pub metrics: Option<MetricsConfig>,
    /// `--notify-url`, `--healthchecks-url`.
    pub notify: crate::notify::NotifyConfig,
    /// `--metrics-textfile` and the `database` label for it.
    pub textfile: Option<(PathBuf, Option<String>)>,
    pub schedule: Option<Schedule>,
    /// Set when `--restore-drill` asks for a drill after the backup.
    pub drill: Option<DrillOptions>,
    /// Applied after a fully successful run.
    pub retention: Option<Policy>,
    pub encryption: Option<Encryption>,
    /// Debris of interrupted runs older than this is removed at the start of a run.
    pub orphan_grace: Duration,
    /// Whose backups these are: the dumped database (and the instance label).
    pub scope: Scope,
    pub clock_tolerance: Duration,
    /// `None` when the regression gate is off.
    pub gate: Option<Thresholds>,
    /// Signs the manifest and the drill record (`--signing-key-file`).
    pub signer: Option<std::sync::Arc<Signer25519>>,
    /// What retention counts: `--trusted-key` plus the signer's own public key.
    pub trust: TrustPolicy,
}

impl RunConfig {
    /// What the backup stage needs of this run's settings.
    pub fn backup_options(&self) -> crate::backup::Options<'_> {
        crate::backup::Options {
            conn: &self.database.conn,
            connect_timeout: self.database.connect_timeout,
            pg_dump: self.database.pg_dump.as_deref(),
            destination: &self.destination,
            compression: self.compression,
            compress_threads: self.compress_threads,
            encryption: self.encryption.as_ref(),
            orphan_grace: self.orphan_grace,
            scope: &self.scope,
            signer: self.signer.as_deref(),
        }
    }
}

impl RunConfig {
    /// What `check` examines of this run's settings; `keys` decrypt (the drill's keys,
    /// resolved also when no drill is configured).
    pub fn check_plan<'a>(&'a self, keys: &'a crate::crypto::Keys) -> crate::check::Plan<'a> {
        crate::check::Plan {
            conn: &self.database.conn,
            connect_timeout: self.database.connect_timeout,
            pg_dump: self.database.pg_dump.as_deref(),
            destination: &self.destination,
            scope: &self.scope,
            clock_tolerance: self.clock_tolerance,
            drill: self.drill.as_ref(),
            metrics: self.metrics.as_ref(),
            textfile: self.textfile.as_ref().map(|(p, _)| p.as_path()),
            notify: &self.notify,
            encryption: self.encryption.as_ref(),
            keys: Some(self.drill.as_ref().map_or(keys, |d| &d.keys)),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub conn: ConnInfo,
    /// Which setting the connection came from, for messages.
    pub source: &'static str,
    pub pg_dump: Option<PathBuf>,
    pub connect_timeout: Duration,
}

fn first(env: EnvLookup, names: &[&str]) -> Option<(String, String)> {
    names
        .iter()
        .find_map(|n| env(n).map(|v| (n.to_string(), v)))
}

/// Resolve the database connection: flag / LEAFLOCK_BACKUP_DATABASE_URL, DATABASE_URL,
/// then the discrete variables LeafLock's backend and old script read.
pub fn resolve_database(args: &DatabaseArgs, env: EnvLookup) -> Result<DatabaseConfig> {
    let (conn, source) = if let Some(url) = args.database_url.as_deref().filter(|u| !u.is_empty()) {
        match ConnInfo::parse_url(url) {
            Ok(c) => (c, "--database-url / LEAFLOCK_BACKUP_DATABASE_URL"),
            Err(e) => {
                return usage(format!(
                    "--database-url / LEAFLOCK_BACKUP_DATABASE_URL: {e}"
                ))
            }
        }
    } else if let Some(url) = env("DATABASE_URL") {
        match ConnInfo::parse_url(&url) {
            Ok(c) => (c, "DATABASE_URL"),
            Err(e) => return usage(format!("DATABASE_URL: {e}")),
        }
    } else if let Some((host_var, host)) =
        first(env, &["POSTGRESQL_HOST", "PGHOST", "POSTGRES_HOST"])
    {
        let port = match first(env, &["POSTGRESQL_PORT", "PGPORT", "POSTGRES_PORT"]) {
            None => 5432,
            Some((name, v)) => match v.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => {
                    return usage(format!(
                        "{name}: expected a port number 1..65535, got {v:?}"
                    ))
                }
            },
        };
        let user = first(env, &["POSTGRESQL_USER", "PGUSER", "POSTGRES_USER"])
            .map(|x| x.1)
            .unwrap_or_else(|| "postgres".into());
        let password = first(
            env,
            &["POSTGRESQL_PASSWORD", "PGPASSWORD", "POSTGRES_PASSWORD"],
        )
        .map(|x| x.1);
        let dbname = first(env, &["POSTGRESQL_DATABASE", "PGDATABASE", "POSTGRES_DB"])
            .map(|x| x.1)
            .unwrap_or_else(|| "notes".into());
        let sslmode = match first(env, &["POSTGRESQL_SSLMODE", "PGSSLMODE"]) {
            // Connect as the program whose variables these are: LeafLock's backend
            // (POSTGRESQL_HOST / PGHOST) requires TLS; the old script's pg_dump
            // (POSTGRES_HOST) used libpq's default, prefer.
            None if host_var == "POSTGRES_HOST" => SslMode::Prefer,
            None => SslMode::Require,
            Some((name, v)) => match SslMode::parse(&v) {
                Some(m) => m,
                None => return usage(format!(
                    "{name}: expected disable, allow, prefer, require, verify-ca or verify-full, got {v:?}"
                )),
            },
        };
        (
            ConnInfo::new(host, port, user, password, dbname, sslmode),
            "POSTGRESQL_* / PG* / POSTGRES_* variables",
        )
    } else {
        return usage(
            "no database configured: set --database-url / LEAFLOCK_BACKUP_DATABASE_URL, DATABASE_URL, \
             or PGHOST (POSTGRESQL_HOST, POSTGRES_HOST) with its companions",
        );
    };
    // A URL without a password takes it from the environment, as libpq would.
    let mut conn = conn;
    conn.fill_password(
        first(
            env,
            &["POSTGRESQL_PASSWORD", "PGPASSWORD", "POSTGRES_PASSWORD"],
        )
        .map(|x| x.1),
    );
    check_tool_path(
        args.pg_dump.as_deref(),
        "--pg-dump / LEAFLOCK_BACKUP_PG_DUMP",
    )?;
    check_seconds(
        args.connect_timeout,
        "--connect-timeout / LEAFLOCK_BACKUP_CONNECT_TIMEOUT",
    )?;
    Ok(DatabaseConfig {
        conn,
        source,
        pg_dump: args.pg_dump.clone(),
        connect_timeout: Duration::from_secs(args.connect_timeout),
    })
}

/// Whether `url` is plain `http://` to a host other than this one.
fn plain_http_off_host(url: &str) -> bool {
    let Ok(u) = url::Url::parse(url) else {
        return false;
    };
    if u.scheme() != "http" {
        return false;
    }
    match u.host() {
        Some(url::Host::Domain(d)) => d != "localhost",
        Some(url::Host::Ipv4(ip)) => !ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => !ip.is_loopback(),
        None => true,
    }
}

/// A local destination that cannot work is found now, before connecting: a path whose
/// nearest existing part is not a directory.
fn check_local_dir(dir: &Path) -> Result<()> {
    let mut p = Some(dir);
    while let Some(at) = p {
        match std::fs::metadata(at) {
            Ok(m) if m.is_dir() => return Ok(()),
            Ok(_) => {
                return usage(format!(
                    "--local-dir / LEAFLOCK_BACKUP_LOCAL_DIR: {} is not a directory",
                    at.display()
                ))
            }
            Err(_) => p = at.parent().filter(|x| !x.as_os_str().is_empty()),
        }
    }
    Ok(())
}

/// S3-only settings given with a local destination: the protections (SSE, SSE-C,
/// Object Lock) cannot be given by a directory and are refused; the rest is said to do
/// nothing.
fn check_s3_only_flags(args: &DestinationArgs, upload: Option<&UploadArgs>) -> Result<()> {
    let set = |o: &Option<String>| o.as_deref().is_some_and(|v| !v.is_empty());
    let none = None;
    let (sse, kms, class, lock) = match upload {
        Some(u) => (
            &u.sse,
            &u.sse_kms_key_id,
            &u.s3_storage_class,
            u.object_lock_days,
        ),
        None => (&none, &none, &none, None),
    };
    for (given, flag) in [
        (set(sse), "--sse / LEAFLOCK_BACKUP_SSE"),
        (
            set(&args.sse_c_key),
            "--sse-c-key / LEAFLOCK_BACKUP_SSE_C_KEY",
        ),
        (
            lock.is_some(),
            "--object-lock-days / LEAFLOCK_BACKUP_OBJECT_LOCK_DAYS",
        ),
    ] {
        if given {
            return usage(format!(
                "{flag}: a protection of S3 objects, and the destination is a local directory \
                 (no --s3-bucket); give a bucket or remove it"
            ));
        }
    }
    for (given, flag) in [
        (set(&args.s3_endpoint), "--s3-endpoint"),
        (set(&args.s3_access_key), "--s3-access-key"),
        (set(&args.s3_secret_key), "--s3-secret-key"),
        (set(&args.s3_checksum), "--s3-checksum"),
        (set(class), "--s3-storage-class"),
        (set(kms), "--sse-kms-key-id"),
    ] {
        if given {
            tracing::warn!(
                flag,
                "{flag} does nothing: the destination is a local directory (no --s3-bucket)"
            );
        }
    }
    Ok(())
}

/// A private key file that its group or others can read draws a warning.
pub fn warn_if_readable_by_others(path: &Path, flag: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                flag,
                file = %path.display(),
                mode = format!("{mode:04o}"),
                "{} can be read by its group or others (mode {mode:04o}): it holds a private key; chmod 600 it",
                path.display()
            );
        }
    }
}

/// The longest timeout accepted, in seconds (an hour: anything longer is a typo).
pub const MAX_TIMEOUT_SECONDS: u64 = 3600;
/// The largest count a retention rule accepts (a century of daily backups).
pub const MAX_KEEP: u32 = 36_500;

/// A timeout in seconds: 1 to [`MAX_TIMEOUT_SECONDS`].
pub fn check_seconds(v: u64, flag: &str) -> Result<(), crate::error::UsageError> {
    if v == 0 || v > MAX_TIMEOUT_SECONDS {
        return Err(crate::error::UsageError(format!(
            "{flag}: expected seconds from 1 to {MAX_TIMEOUT_SECONDS}, got {v}"
        )));
    }
    Ok(())
}

/// Parse a byte size: a plain number of bytes or a number with K/KB/KiB/M/MB/MiB/G/GB/GiB
/// (all binary).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Parse a duration: seconds, or a number with s, m, h or d (`0`, `90s`, `30m`, `1h`, `2d`).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    n.checked_mul(mult).map(Duration::from_secs)
}

/// `--orphan-grace` / LEAFLOCK_BACKUP_ORPHAN_GRACE.
pub fn resolve_orphan_grace(args: &RetentionArgs) -> Result<Duration> {
    match parse_duration(&args.orphan_grace) {
        Some(d) => Ok(d),
        None => usage(format!(
            "--orphan-grace / LEAFLOCK_BACKUP_ORPHAN_GRACE: expected a duration such as 0, 90s, 30m, 1h or 2d, got {:?}",
            args.orphan_grace
        )),
    }
}

/// Normalise a key prefix: no leading `/`, no `..` or empty segments, ends with `/`
/// unless empty.
pub fn normalize_prefix(p: &str, what: &str) -> Result<String> {
    let trimmed = p.trim_start_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    let body = trimmed.trim_end_matches('/');
    for seg in body.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return usage(format!(
                "{what}: {p:?} has an empty, '.' or '..' path segment"
            ));
        }
        if seg.chars().any(|c| c.is_control() || c == '\\') {
            return usage(format!(
                "{what}: {p:?} contains a control character or backslash"
            ));
        }
    }
    Ok(format!("{body}/"))
}

/// S3's bucket naming rules (the general-purpose bucket ones).
pub fn check_bucket_name(b: &str) -> Result<(), String> {
    if !(3..=63).contains(&b.len()) {
        return Err(format!("{b:?} must be 3 to 63 characters long"));
    }
    if !b
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    {
        return Err(format!(
            "{b:?} may contain only lowercase letters, digits, '-' and '.'"
        ));
    }
    let first = b.chars().next().unwrap();
    let last = b.chars().last().unwrap();
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return Err(format!("{b:?} must begin and end with a letter or digit"));
    }
    if b.contains("..") {
        return Err(format!("{b:?} must not contain '..'"));
    }
    Ok(())
}

fn check_http_url(v: &str, what: &str) -> Result<()> {
    match url::Url::parse(v) {
        Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host_str().is_some() => {
            Ok(())
        }
        _ if v.contains('@') => usage(format!(
            "{what}: expected an http:// or https:// URL (the value is not shown: it may hold a password)"
        )),
        _ => usage(format!(
            "{what}: expected an http:// or https:// URL, got {v:?}"
        )),
    }
}

/// The target of `restore` and how to reach it.
#[derive(Debug, Clone)]
pub struct RestoreTarget {
    pub target: ConnInfo,
    /// Parallel pg_restore jobs, 1..64.
    pub jobs: i64,
    pub pg_restore: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// `--schema-only` / `--data-only`.
    pub section: Section,
    /// `--table`: only these tables (empty: the whole backup).
    pub tables: Vec<String>,
}

pub fn resolve_restore_target(args: &crate::cli::RestoreArgs) -> Result<RestoreTarget> {
    const TARGET: &str = "--target-database-url / LEAFLOCK_BACKUP_TARGET_DATABASE_URL";
    let Some(url) = args
        .target_database_url
        .as_deref()
        .filter(|u| !u.is_empty())
    else {
        return usage(format!("{TARGET} is required"));
    };
    let target = ConnInfo::parse_url(url).map_err(|e| UsageError(format!("{TARGET}: {e}")))?;
    if !(1..=64).contains(&args.jobs) {
        return usage(format!(
            "--jobs / LEAFLOCK_BACKUP_RESTORE_JOBS: expected 1..64, got {}",
            args.jobs
        ));
    }
    let pg_restore = check_tool_path(
        args.pg_restore.as_deref(),
        "--pg-restore / LEAFLOCK_BACKUP_PG_RESTORE",
    )?;
    check_seconds(
        args.connect_timeout,
        "--connect-timeout / LEAFLOCK_BACKUP_CONNECT_TIMEOUT",
    )?;
    const SCHEMA_ONLY: &str = "--schema-only / LEAFLOCK_BACKUP_RESTORE_SCHEMA_ONLY";
    const DATA_ONLY: &str = "--data-only / LEAFLOCK_BACKUP_RESTORE_DATA_ONLY";
    let section = match (args.schema_only, args.data_only) {
        (true, true) => return usage(format!("{SCHEMA_ONLY} and {DATA_ONLY}: choose one")),
        (true, false) => Section::SchemaOnly,
        (false, true) if args.clean => {
            return usage(format!(
                "{DATA_ONLY} loads rows into the tables the target has, --clean / \
                 LEAFLOCK_BACKUP_RESTORE_CLEAN drops and recreates them: choose one"
            ))
        }
        (false, true) => Section::DataOnly,
        (false, false) => Section::All,
    };
    let mut tables = Vec::new();
    for t in &args.tables {
        let t = t.trim();
        if t.is_empty() || t.starts_with('.') || t.ends_with('.') {
            return usage(format!(
                "--table / LEAFLOCK_BACKUP_RESTORE_TABLE: {t:?} is not a table name (schema.name or name)"
            ));
        }
        tables.push(t.to_string());
    }
    Ok(RestoreTarget {
        target,
        jobs: args.jobs,
        pg_restore,
        connect_timeout: Duration::from_secs(args.connect_timeout),
        section,
        tables,
    })
}

/// Where backups are and how to reach them. `upload` is given by the commands that
/// write objects (part size, storage class, SSE-S3/KMS, Object Lock); without it the
/// destination is read with the defaults and writes nothing of those.
pub fn resolve_destination(
    args: &DestinationArgs,
    upload: Option<&UploadArgs>,
    env: EnvLookup,
) -> Result<DestinationConfig> {
    let bucket_arg = args
        .s3_bucket
        .clone()
        .filter(|b| !b.is_empty())
        .map(|b| (b, "--s3-bucket / LEAFLOCK_BACKUP_S3_BUCKET"))
        .or_else(|| env("BACKUP_S3_BUCKET").map(|b| (b, "BACKUP_S3_BUCKET")));
    let prefix_flag = args.prefix.as_deref();
    const PREFIX: &str = "--prefix / LEAFLOCK_BACKUP_S3_PREFIX";

    let Some((bucket_raw, bucket_src)) = bucket_arg else {
        let prefix = normalize_prefix(prefix_flag.unwrap_or(DEFAULT_PREFIX), PREFIX)?;
        if args.local_dir.as_os_str().is_empty() {
            return usage("--local-dir / LEAFLOCK_BACKUP_LOCAL_DIR: expected a directory path");
        }
        check_local_dir(&args.local_dir)?;
        check_s3_only_flags(args, upload)?;
        return Ok(DestinationConfig::Local(LocalConfig {
            dir: args.local_dir.clone(),
            prefix,
        }));
    };

    let (bucket, url_prefix) = match bucket_raw.strip_prefix("s3://") {
        Some(rest) => match rest.split_once('/') {
            Some((b, p)) => (b.to_string(), Some(p.to_string()).filter(|p| !p.is_empty())),
            None => (rest.to_string(), None),
        },
        None => (bucket_raw.clone(), None),
    };
    if let Err(e) = check_bucket_name(&bucket) {
        return usage(format!("{bucket_src}: bucket name {e}"));
    }
    let prefix = match (url_prefix, prefix_flag) {
        (Some(u), Some(f)) if normalize_prefix(&u, bucket_src)? != normalize_prefix(f, PREFIX)? => {
            return usage(format!(
                "{bucket_src} gives prefix {u:?} but {PREFIX} gives {f:?}: give it once"
            ))
        }
        (Some(u), _) => normalize_prefix(&u, bucket_src)?,
        (None, Some(f)) => normalize_prefix(f, PREFIX)?,
        (None, None) => DEFAULT_PREFIX.to_string(),
    };

    let endpoint = args
        .s3_endpoint
        .clone()
        .filter(|e| !e.is_empty())
        .map(|e| (e, "--s3-endpoint / LEAFLOCK_BACKUP_S3_ENDPOINT"))
        .or_else(|| env("BACKUP_S3_ENDPOINT").map(|e| (e, "BACKUP_S3_ENDPOINT")));
    if let Some((e, src)) = &endpoint {
        check_http_url(e, src)?;
    }
    let region = args
        .s3_region
        .clone()
        .filter(|r| !r.is_empty())
        .or_else(|| {
            first(
                env,
                &["BACKUP_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"],
            )
            .map(|x| x.1)
        })
        .unwrap_or_else(|| "us-east-1".into());
    if region.is_empty()
        || !region
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return usage(format!(
            "--s3-region / LEAFLOCK_BACKUP_S3_REGION: {region:?} is not a region name"
        ));
    }
    let access = args
        .s3_access_key
        .clone()
        .filter(|k| !k.is_empty())
        .or_else(|| env("BACKUP_S3_ACCESS_KEY"));
    let secret = args
        .s3_secret_key
        .clone()
        .filter(|k| !k.is_empty())
        .or_else(|| env("BACKUP_S3_SECRET_KEY"));
    let credentials = match (access, secret) {
        (Some(a), Some(s)) => Some((a, s)),
        (None, None) => None,
        (Some(_), None) => {
            return usage(
                "--s3-secret-key / LEAFLOCK_BACKUP_S3_SECRET_KEY (or BACKUP_S3_SECRET_KEY) is required with an access key",
            )
        }
        (None, Some(_)) => {
            return usage(
                "--s3-access-key / LEAFLOCK_BACKUP_S3_ACCESS_KEY (or BACKUP_S3_ACCESS_KEY) is required with a secret key",
            )
        }
    };
    let (part_size, parts_in_flight) = match upload {
        None => (DEFAULT_PART_SIZE, DEFAULT_PARTS_IN_FLIGHT),
        Some(u) => {
            let part_size = match parse_size(&u.part_size) {
                Some(n) if (MIN_PART_SIZE..=MAX_PART_SIZE).contains(&n) => n as usize,
                _ => {
                    return usage(format!(
                        "--part-size / LEAFLOCK_BACKUP_PART_SIZE: expected a size from 5MiB to 5GiB (e.g. 16MiB), got {:?}",
                        u.part_size
                    ))
                }
            };
            if !(1..=64).contains(&u.parts_in_flight) {
                return usage(format!(
                    "--parts-in-flight / LEAFLOCK_BACKUP_PARTS_IN_FLIGHT: expected 1..64, got {}",
                    u.parts_in_flight
                ));
            }
            (part_size, u.parts_in_flight as usize)
        }
    };
    if !(1..=20).contains(&args.s3_max_attempts) {
        return usage(format!(
            "--s3-max-attempts / LEAFLOCK_BACKUP_S3_MAX_ATTEMPTS: expected 1..20, got {}",
            args.s3_max_attempts
        ));
    }
    let storage_class = match upload
        .and_then(|u| u.s3_storage_class.as_deref())
        .filter(|s| !s.is_empty())
    {
        None => None,
        Some(c) => {
            let known = aws_sdk_s3::types::StorageClass::values();
            if !known.contains(&c) {
                return usage(format!(
                    "--s3-storage-class / LEAFLOCK_BACKUP_S3_STORAGE_CLASS: {c:?} is not one of {}",
                    known.join(", ")
                ));
            }
            Some(c.to_string())
        }
    };
    let checksum = match args.s3_checksum.as_deref().filter(|c| !c.is_empty()) {
        None => Checksum::DEFAULT,
        Some(c) => match Checksum::parse(c.trim()) {
            Some(c) => c,
            None => {
                return usage(format!(
                    "--s3-checksum / LEAFLOCK_BACKUP_S3_CHECKSUM: expected one of {}, got {c:?}",
                    Checksum::NAMES.join(", ")
                ))
            }
        },
    };
    let sse = resolve_sse(args, upload)?;
    if let (Some(Sse::Customer { .. }), Some((e, src))) = (&sse, &endpoint) {
        if plain_http_off_host(e) {
            return usage(format!(
                "--sse-c-key / LEAFLOCK_BACKUP_SSE_C_KEY: the key would travel in clear text to \
                 {src} ({}); use an https:// endpoint (plain http is accepted on loopback only)",
                redact_url(e)
            ));
        }
    }
    let object_lock = match upload.and_then(|u| u.object_lock_days.map(|d| (u, d))) {
        None => None,
        Some((_, 0)) => return usage("--object-lock-days / LEAFLOCK_BACKUP_OBJECT_LOCK_DAYS: expected at least 1"),
        Some((u, d)) => Some((
            match u.object_lock_mode.to_ascii_lowercase().as_str() {
                "governance" => LockMode::Governance,
                "compliance" => LockMode::Compliance,
                other => {
                    return usage(format!(
                        "--object-lock-mode / LEAFLOCK_BACKUP_OBJECT_LOCK_MODE: expected governance or compliance, got {other:?}"
                    ))
                }
            },
            d,
        )),
    };
    Ok(DestinationConfig::S3(S3Config {
        sse,
        object_lock,
        bucket,
        prefix,
        force_path_style: args.s3_force_path_style.unwrap_or(endpoint.is_some()),
        endpoint: endpoint.map(|e| e.0),
        region,
        credentials,
        storage_class,
        part_size,
        parts_in_flight,
        allow_unapplied_protection: upload.is_some_and(|u| u.allow_unapplied_protection),
        max_attempts: args.s3_max_attempts as u32,
        checksum,
    }))
}

fn resolve_sse(args: &DestinationArgs, upload: Option<&UploadArgs>) -> Result<Option<Sse>> {
    use base64::Engine;
    let c_key = args.sse_c_key.as_deref().filter(|k| !k.is_empty());
    let mode = upload
        .and_then(|u| u.sse.as_deref())
        .filter(|k| !k.is_empty());
    let kms_key = upload.and_then(|u| u.sse_kms_key_id.clone());
    if kms_key.is_some() && mode != Some("aws:kms") {
        return usage("--sse-kms-key-id / LEAFLOCK_BACKUP_SSE_KMS_KEY_ID needs --sse aws:kms");
    }
    match (mode, c_key) {
        (Some(_), Some(_)) => usage("--sse and --sse-c-key exclude each other: choose one"),
        (Some("AES256"), None) => Ok(Some(Sse::S3)),
        (Some("aws:kms"), None) => Ok(Some(Sse::Kms(kms_key))),
        (Some(other), None) => usage(format!(
            "--sse / LEAFLOCK_BACKUP_SSE: expected AES256 or aws:kms, got {other:?}"
        )),
        (None, Some(k)) => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(k.trim())
                .ok()
                .filter(|r| r.len() == 32);
            let Some(raw) = raw else {
                return usage(
                    "--sse-c-key / LEAFLOCK_BACKUP_SSE_C_KEY: expected 32 bytes (a 256-bit key) in base64, \
                     e.g. from `openssl rand -base64 32`",
                );
            };
            use md5::Digest;
            let md5 = md5::Md5::digest(&raw);
            Ok(Some(Sse::Customer {
                key: base64::engine::general_purpose::STANDARD.encode(&raw),
                key_md5: base64::engine::general_purpose::STANDARD.encode(md5),
            }))
        }
        (None, None) => Ok(None),
    }
}

pub fn resolve_compression(args: &DumpArgs) -> Result<Compression> {
    Compression::parse(&args.compression)
        .or_else(|e| usage(format!("--compression / LEAFLOCK_BACKUP_COMPRESSION: {e}")))
}

/// `--compress-threads` / LEAFLOCK_BACKUP_COMPRESS_THREADS; default: every core.
pub fn resolve_compress_threads(args: &DumpArgs) -> Result<usize> {
    match args.compress_threads {
        None => Ok(crate::compress::default_threads()),
        Some(n) if (1..=MAX_COMPRESS_THREADS as i64).contains(&n) => Ok(n as usize),
        Some(n) => usage(format!(
            "--compress-threads / LEAFLOCK_BACKUP_COMPRESS_THREADS: expected 1..{MAX_COMPRESS_THREADS}, got {n}"
        )),
    }
}

/// `--notify-url`, `--healthchecks-url`: http(s) URLs.
pub fn resolve_notify(args: &crate::cli::NotifyArgs) -> Result<crate::notify::NotifyConfig> {
    let mut urls = Vec::new();
    for u in args
        .notify_url
        .iter()
        .map(|u| u.trim())
        .filter(|u| !u.is_empty())
    {
        check_http_url(u, "--notify-url / LEAFLOCK_BACKUP_NOTIFY_URL")?;
        urls.push(u.to_string());
    }
    let healthchecks = match args.healthchecks_url.as_deref().map(str::trim) {
        Some(u) if !u.is_empty() => {
            check_http_url(u, "--healthchecks-url / LEAFLOCK_BACKUP_HEALTHCHECKS_URL")?;
            Some(u.to_string())
        }
        _ => None,
    };
    check_seconds(
        args.notify_timeout,
        "--notify-timeout / LEAFLOCK_BACKUP_NOTIFY_TIMEOUT",
    )?;
    Ok(crate::notify::NotifyConfig {
        urls,
        healthchecks,
        timeout: Duration::from_secs(args.notify_timeout.max(1)),
    })
}

/// `--metrics-textfile`: a file name in an existing directory, and its `database` label.
pub fn resolve_textfile(args: &MetricsArgs) -> Result<Option<(PathBuf, Option<String>)>> {
    let Some(p) = args
        .metrics_textfile
        .as_ref()
        .filter(|p| !p.as_os_str().is_empty())
    else {
        return Ok(None);
    };
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if p.is_dir() || p.file_name().is_none() || !dir.is_dir() {
        return usage(format!(
            "--metrics-textfile / LEAFLOCK_BACKUP_METRICS_TEXTFILE: {} is not a file in an existing directory",
            p.display()
        ));
    }
    Ok(Some((
        p.clone(),
        args.metrics_database.clone().filter(|d| !d.is_empty()),
    )))
}

pub fn resolve_metrics(args: &MetricsArgs) -> Result<Option<MetricsConfig>> {
    let Some(url) = args.pushgateway_url.as_deref().filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    check_http_url(url, "--pushgateway-url / LEAFLOCK_BACKUP_PUSHGATEWAY_URL")?;
    if args.pushgateway_job.is_empty() {
        return usage("--pushgateway-job / LEAFLOCK_BACKUP_PUSHGATEWAY_JOB: must not be empty");
    }
    check_seconds(
        args.pushgateway_timeout,
        "--pushgateway-timeout / LEAFLOCK_BACKUP_PUSHGATEWAY_TIMEOUT",
    )?;
    Ok(Some(MetricsConfig {
        url: url.trim_end_matches('/').to_string(),
        job: args.pushgateway_job.clone(),
        database_label: args.metrics_database.clone().filter(|d| !d.is_empty()),
        timeout: Duration::from_secs(args.pushgateway_timeout),
    }))
}

/// `--schedule` / LEAFLOCK_BACKUP_SCHEDULE, else BACKUP_SCHEDULE, read in `--timezone`.
pub fn resolve_schedule(args: &ScheduleArgs, env: EnvLookup) -> Result<Option<Schedule>> {
    let (expr, src) = match args.schedule.clone().filter(|s| !s.trim().is_empty()) {
        Some(e) => (e, "--schedule / LEAFLOCK_BACKUP_SCHEDULE"),
        None => match env("BACKUP_SCHEDULE") {
            Some(e) => (e, "BACKUP_SCHEDULE"),
            None => {
                if args.timezone.parse::<chrono_tz::Tz>().is_err() {
                    return usage(format!(
                        "--timezone / LEAFLOCK_BACKUP_TIMEZONE: {:?} is not an IANA time zone name",
                        args.timezone
                    ));
                }
                return Ok(None);
            }
        },
    };
    match Schedule::parse(&expr, &args.timezone) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.starts_with("time zone") => {
            usage(format!("--timezone / LEAFLOCK_BACKUP_TIMEZONE: {e}"))
        }
        Err(e) => usage(format!("{src}: {e}")),
    }
}

/// The retention policy, or `None` when no rule is set (nothing is ever deleted then).
pub fn resolve_retention(args: &RetentionArgs, env: EnvLookup) -> Result<Option<Policy>> {
    let max_age = match args.max_age {
        Some(d) => Some((d, "--max-age / LEAFLOCK_BACKUP_MAX_AGE_DAYS")),
        None => match env("BACKUP_RETENTION_DAYS") {
            None => None,
            Some(v) => match v.parse::<u32>() {
                Ok(d) => Some((d, "BACKUP_RETENTION_DAYS")),
                Err(_) => {
                    return usage(format!(
                        "BACKUP_RETENTION_DAYS: expected a number of days, got {v:?}"
                    ))
                }
            },
        },
    };
    if let Some((0, src)) = max_age {
        return usage(format!("{src}: expected at least 1 day"));
    }
    if let Some((d, src)) = max_age {
        if d > GDPR_DAYS && !args.allow_long_retention {
            return usage(format!(
                "{src}: {d} days is above {GDPR_DAYS}, LeafLock's promise that deleted accounts leave \
                 the backups within 30 days; pass --allow-long-retention to mean it"
            ));
        }
    }
    for (v, flag) in [
        (args.keep_last, "--keep-last / LEAFLOCK_BACKUP_KEEP_LAST"),
        (args.keep_daily, "--keep-daily / LEAFLOCK_BACKUP_KEEP_DAILY"),
        (
            args.keep_weekly,
            "--keep-weekly / LEAFLOCK_BACKUP_KEEP_WEEKLY",
        ),
        (
            args.keep_monthly,
            "--keep-monthly / LEAFLOCK_BACKUP_KEEP_MONTHLY",
        ),
    ] {
        if v == Some(0) {
            return usage(format!(
                "{flag}: expected at least 1 (leave it unset to not use the rule)"
            ));
        }
        if v.is_some_and(|n| n > MAX_KEEP) {
            return usage(format!("{flag}: expected at most {MAX_KEEP}"));
        }
    }
    let policy = Policy {
        keep_last: args.keep_last,
        keep_daily: args.keep_daily,
        keep_weekly: args.keep_weekly,
        keep_monthly: args.keep_monthly,
        max_age_days: max_age.map(|m| m.0),
    };
    if policy.is_empty() {
        return Ok(None);
    }
    if let Some(days) = policy.longest_days() {
        tracing::warn!(
            days,
            "the retention policy can keep backups up to about {days} days, beyond the {GDPR_DAYS} days LeafLock \
             promises for deleted accounts; add --max-age {GDPR_DAYS} to enforce it"
        );
    }
    Ok(Some(policy))
}

/// Keys that can read backups: identity files and the passphrase
/// (`--encryption-key`, else BACKUP_ENCRYPTION_KEY). Identity files are checked now.
pub fn resolve_keys(args: &KeyArgs, env: EnvLookup) -> Result<Keys> {
    let passphrase = args
        .encryption_key
        .clone()
        .filter(|k| !k.is_empty())
        .or_else(|| env("BACKUP_ENCRYPTION_KEY"));
    for f in &args.identity {
        warn_if_readable_by_others(f, "--identity / LEAFLOCK_BACKUP_AGE_IDENTITY_FILE");
    }
    let keys = Keys::new(args.identity.clone(), passphrase);
    keys.check().or_else(|e| {
        usage(format!(
            "--identity / LEAFLOCK_BACKUP_AGE_IDENTITY_FILE: {e}"
        ))
    })?;
    Ok(keys)
}

/// How `run` encrypts: recipients if any are given, else the passphrase if one is set,
/// else not at all (an error with `--require-encryption`). Fails closed: a bad
/// recipient or a failed self-test is a usage error, before any work.
pub fn resolve_encryption(
    args: &EncryptArgs,
    keys: &KeyArgs,
    env: EnvLookup,
) -> Result<Option<Encryption>> {
    let files: Vec<&std::path::Path> = args.recipients_file.iter().map(|p| p.as_path()).collect();
    let recipients = parse_recipients(&args.encrypt_to, &files).or_else(|e| {
        usage(format!(
            "--encrypt-to / LEAFLOCK_BACKUP_AGE_RECIPIENTS (or --recipients-file): {e}"
        ))
    })?;
    let passphrase = keys
        .encryption_key
        .clone()
        .filter(|k| !k.is_empty())
        .or_else(|| env("BACKUP_ENCRYPTION_KEY"));
    let enc = if !recipients.is_empty() {
        Some(Encryption::Recipients(recipients))
    } else {
        passphrase.map(|p| Encryption::Passphrase(age::secrecy::SecretString::from(p)))
    };
    match &enc {
        None if args.require_encryption => usage(
            "--require-encryption / LEAFLOCK_BACKUP_REQUIRE_ENCRYPTION: no recipient (--encrypt-to, \
             --recipients-file) and no passphrase (BACKUP_ENCRYPTION_KEY) is configured",
        ),
        Some(e) => {
            e.self_test()
                .or_else(|err| usage(format!("encryption self-test failed, nothing will be uploaded: {err:#}")))?;
            Ok(enc)
        }
        None => Ok(None),
    }
}

/// Drill settings; the scratch database goes to `--drill-database-url`, else to the
/// source server.
pub fn resolve_drill(
    args: &DrillArgs,
    source: &DatabaseConfig,
    keys: Keys,
    require_encryption: bool,
) -> Result<DrillOptions> {
    let server = match args.drill_database_url.as_deref().filter(|u| !u.is_empty()) {
        Some(u) => ConnInfo::parse_url(u).or_else(|e| {
            usage(format!(
                "--drill-database-url / LEAFLOCK_BACKUP_DRILL_DATABASE_URL: {e}"
            ))
        })?,
        None => source.conn.clone(),
    };
    let on_source_server = args
        .drill_database_url
        .as_deref()
        .is_none_or(|u| u.is_empty());
    let pg_restore = check_tool_path(
        args.pg_restore.as_deref(),
        "--pg-restore / LEAFLOCK_BACKUP_PG_RESTORE",
    )?;
    let checks: Vec<String> = args
        .drill_check
        .iter()
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .collect();
    Ok(DrillOptions {
        server,
        checks,
        keep: args.keep_drill_database,
        pg_restore,
        connect_timeout: source.connect_timeout,
        keys,
        require_encryption,
        on_source_server,
    })
}

/// An explicitly configured tool path must be a file.
pub fn check_tool_path(p: Option<&std::path::Path>, what: &str) -> Result<Option<PathBuf>> {
    match p {
        Some(p) if !p.is_file() => usage(format!("{what}: {} is not a file", p.display())),
        other => Ok(other.map(|p| p.to_path_buf())),
    }
}

/// Where a command's database name comes from when `--database` is not given.
#[derive(Debug, Clone, Copy)]
pub enum ScopeFrom<'a> {
    /// `run`: the database it dumps; `--database`, if given, must name it.
    Dumped(&'a str),
    /// A command with connection settings (`prune`, `drill`): their database.
    Connection(&'a str),
    /// A command without them: the connection variables, else `notes`.
    Environment,
}

/// The scope a command acts on: `--database`, else the database `from` says, and
/// `--instance`.
pub fn resolve_scope(args: &DestinationArgs, from: ScopeFrom, env: EnvLookup) -> Result<Scope> {
    let dumped = match from {
        ScopeFrom::Dumped(d) => Some(d),
        _ => None,
    };
    const DB: &str = "--database / LEAFLOCK_BACKUP_DATABASE";
    const INSTANCE: &str = "--instance / LEAFLOCK_BACKUP_INSTANCE";
    let given = args.database_name.as_deref().filter(|d| !d.is_empty());
    let database = match (given, dumped) {
        (Some(g), Some(d)) if g != d => {
            return usage(format!(
                "{DB}: {g:?} is not the database this run dumps ({d:?}); leave it unset or name the same database"
            ))
        }
        (Some(g), _) => g.to_string(),
        (None, Some(d)) => d.to_string(),
        (None, None) => match from {
            ScopeFrom::Connection(d) => d.to_string(),
            _ => connection_database_name(env),
        },
    };
    if database.len() > 63 {
        return usage(format!(
            "{DB}: a PostgreSQL database name has at most 63 bytes, got {}",
            database.len()
        ));
    }
    let instance = args.instance.clone().filter(|i| !i.is_empty());
    if let Some(i) = &instance {
        if i.len() > 63 || i.chars().any(char::is_control) {
            return usage(format!(
                "{INSTANCE}: expected a label of at most 63 printable characters, got {i:?}"
            ));
        }
    }
    Ok(Scope::new(database, instance))
}

/// The database the connection settings name, without connecting (for commands that
/// read backups but take no database URL).
fn connection_database_name(env: EnvLookup) -> String {
    ["LEAFLOCK_BACKUP_DATABASE_URL", "DATABASE_URL"]
        .iter()
        .find_map(|n| env(n))
        .and_then(|u| ConnInfo::parse_url(&u).ok())
        .map(|c| c.dbname)
        .or_else(|| first(env, &["POSTGRESQL_DATABASE", "PGDATABASE", "POSTGRES_DB"]).map(|x| x.1))
        .unwrap_or_else(|| "notes".into())
}

/// `--clock-tolerance` / LEAFLOCK_BACKUP_CLOCK_TOLERANCE.
pub fn resolve_clock_tolerance(args: &DestinationArgs) -> Result<Duration> {
    match parse_duration(&args.clock_tolerance) {
        Some(d) if d <= Duration::from_secs(86_400) => Ok(d),
        _ => usage(format!(
            "--clock-tolerance / LEAFLOCK_BACKUP_CLOCK_TOLERANCE: expected a duration from 0 to 1d such as 90s or 5m, got {:?}",
            args.clock_tolerance
        )),
    }
}

/// The regression gate's thresholds (`None`: the gate is off).
pub fn resolve_gate(args: &GateArgs) -> Result<Option<Thresholds>> {
    match args.regression_gate.as_str() {
        "on" | "true" | "1" => {}
        "off" | "false" | "0" => return Ok(None),
        other => {
            return usage(format!(
                "--regression-gate / LEAFLOCK_BACKUP_REGRESSION_GATE: expected on or off, got {other:?}"
            ))
        }
    }
    let percent = |v: &str, what: &str| -> Result<Option<f64>> {
        if v == "off" {
            return Ok(None);
        }
        match v.trim_end_matches('%').trim().parse::<f64>() {
            Ok(p) if p > 0.0 && p < 100.0 => Ok(Some(p / 100.0)),
            _ => usage(format!(
                "{what}: expected a percentage between 0 and 100 (exclusive) or off, got {v:?}"
            )),
        }
    };
    Ok(Some(Thresholds {
        row_drop: percent(
            &args.suspect_row_drop,
            "--suspect-row-drop / LEAFLOCK_BACKUP_SUSPECT_ROW_DROP",
        )?,
        min_rows: args.suspect_min_rows as i64,
        size_drop: percent(
            &args.suspect_size_drop,
            "--suspect-size-drop / LEAFLOCK_BACKUP_SUSPECT_SIZE_DROP",
        )?,
    }))
}

pub fn resolve_run(args: &RunArgs, env: EnvLookup) -> Result<RunConfig> {
    let database = resolve_database(&args.database, env)?;
    let signer = resolve_signing(&args.signing)?;
    let keys = resolve_keys(&args.keys, env)?;
    let encryption = resolve_encryption(&args.encrypt, &args.keys, env)?;
    let drill = if args.restore_drill {
        Some(resolve_drill(
            &args.drill,
            &database,
            keys,
            args.encrypt.require_encryption,
        )?)
    } else {
        None
    };
    let scope = resolve_scope(
        &args.destination,
        ScopeFrom::Dumped(&database.conn.dbname),
        env,
    )?;
    Ok(RunConfig {
        scope,
        clock_tolerance: resolve_clock_tolerance(&args.destination)?,
        gate: resolve_gate(&args.gate)?,
        drill,
        encryption,
        retention: resolve_retention(&args.retention, env)?,
        orphan_grace: resolve_orphan_grace(&args.retention)?,
        database,
        destination: resolve_destination(&args.destination, Some(&args.upload), env)?,
        compression: resolve_compression(&args.dump)?,
        compress_threads: resolve_compress_threads(&args.dump)?,
        metrics: resolve_metrics(&args.metrics)?,
        textfile: resolve_textfile(&args.metrics)?,
        notify: resolve_notify(&args.notify)?,
        schedule: resolve_schedule(&args.schedule, env)?,
        trust: resolve_trust(&args.trust, None, signer.as_deref())?,
        signer,
    })
}

/// `--signing-key-file`: read and parsed now, so a missing or unreadable key fails
/// before any work (exit 2).
pub fn resolve_signing(args: &SigningArgs) -> Result<Option<std::sync::Arc<Signer25519>>> {
    let Some(path) = args.signing_key_file.as_deref() else {
        return Ok(None);
    };
    match Signer25519::load(path) {
        Ok(k) => Ok(Some(std::sync::Arc::new(k))),
        Err(e) => usage(format!(
            "--signing-key-file / LEAFLOCK_BACKUP_SIGNING_KEY_FILE: {e}"
        )),
    }
}

/// `--trusted-key` (plus `own`, the public half of this command's signing key) and
/// `--allow-unsigned`.
pub fn resolve_trust(
    args: &TrustArgs,
    allow: Option<&AllowUnsignedArgs>,
    own: Option<&Signer25519>,
) -> Result<TrustPolicy> {
    let mut keys = Vec::new();
    for k in args.trusted_key.iter().filter(|k| !k.trim().is_empty()) {
        match PublicKey::from_arg(k) {
            Ok(p) => keys.push(p),
            Err(e) => return usage(format!("--trusted-key / LEAFLOCK_BACKUP_TRUSTED_KEYS: {e}")),
        }
    }
    if let Some(own) = own {
        if !keys.contains(&own.public()) {
            keys.push(own.public());
        }
    }
    let allow_unsigned = allow
        .and_then(|a| a.allow_unsigned.clone())
        .filter(|k| !k.is_empty());
    if allow_unsigned.as_deref() == Some("latest") {
        return usage(
            "--allow-unsigned / LEAFLOCK_BACKUP_ALLOW_UNSIGNED: name the backup's full key as `list` prints it; \
             `latest` is never taken on trust",
        );
    }
    Ok(TrustPolicy {
        keys,
        allow_unsigned,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use crate::error::UsageError;
    use clap::Parser;
    use std::collections::HashMap;

    fn run_args(argv: &[&str]) -> RunArgs {
        let mut full = vec!["leaflock-backup", "run"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full).unwrap().command {
            Command::Run(a) => *a,
            other => panic!("not a run: {other:?}"),
        }
    }

    fn resolve(argv: &[&str], env: &[(&str, &str)]) -> Result<RunConfig> {
        let map: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |k: &str| map.get(k).cloned();
        resolve_run(&run_args(argv), &lookup)
    }

    fn usage_msg(r: Result<RunConfig>) -> String {
        let e = r.unwrap_err();
        assert!(
            e.downcast_ref::<UsageError>().is_some(),
            "not a usage error: {e}"
        );
        e.to_string()
    }

    #[test]
    fn the_backends_variables_require_tls_unless_told_otherwise() {
        let dest = ("BACKUP_S3_BUCKET", "backups");
        for host in ["POSTGRESQL_HOST", "PGHOST"] {
            let c = resolve(&[], &[(host, "pg"), dest]).unwrap();
            assert_eq!(c.database.conn.sslmode, SslMode::Require, "{host}");
        }
        let c = resolve(
            &[],
            &[("PGHOST", "pg"), ("POSTGRESQL_SSLMODE", "disable"), dest],
        )
        .unwrap();
        assert_eq!(c.database.conn.sslmode, SslMode::Disable);
        let c = resolve(
            &[],
            &[("POSTGRES_HOST", "pg"), ("PGSSLMODE", "verify-full"), dest],
        )
        .unwrap();
        assert_eq!(c.database.conn.sslmode, SslMode::VerifyFull);
    }

    #[test]
    fn old_variable_names_are_honoured() {
        let c = resolve(
            &[],
            &[
                ("POSTGRES_HOST", "pg"),
                ("POSTGRES_PASSWORD", "pw"),
                ("POSTGRES_DB", "leaflock"),
                ("BACKUP_S3_BUCKET", "s3://my-bucket/nightly"),
                ("BACKUP_S3_ENDPOINT", "http://minio:9000"),
                ("BACKUP_S3_ACCESS_KEY", "ak"),
                ("BACKUP_S3_SECRET_KEY", "sk"),
                ("BACKUP_S3_REGION", "eu-west-1"),
            ],
        )
        .unwrap();
        assert_eq!(c.database.conn.host, "pg");
        assert_eq!(c.database.conn.dbname, "leaflock");
        assert_eq!(c.database.conn.password(), Some("pw"));
        assert_eq!(
            c.database.conn.sslmode,
            SslMode::Prefer,
            "as the old script"
        );
        let DestinationConfig::S3(s3) = c.destination else {
            panic!("expected S3")
        };
        assert_eq!(s3.bucket, "my-bucket");
        assert_eq!(s3.prefix, "nightly/");
        assert_eq!(s3.region, "eu-west-1");
        assert!(s3.force_path_style, "custom endpoint implies path style");
        assert_eq!(s3.credentials, Some(("ak".into(), "sk".into())));
    }

    #[test]
    fn the_checksum_setting_defaults_to_sha256_and_takes_every_name() {
        let env = [
            ("BACKUP_S3_BUCKET", "bucket"),
            ("DATABASE_URL", "postgresql://notes@db/notes"),
        ];
        let s3 = |argv: &[&str]| match resolve(argv, &env).unwrap().destination {
            DestinationConfig::S3(s3) => s3.checksum,
            other => panic!("expected S3: {other:?}"),
        };
        assert_eq!(s3(&[]), Checksum::DEFAULT);
        assert_eq!(Checksum::DEFAULT.name(), "sha256");
        for name in Checksum::NAMES {
            assert_eq!(s3(&["--s3-checksum", name]).name(), *name);
        }
        assert_eq!(s3(&["--s3-checksum", "CRC32C"]).name(), "crc32c");
    }

    #[test]
    fn a_url_without_password_takes_pgpassword() {
        let c = resolve(
            &[],
            &[
                ("DATABASE_URL", "postgresql://notes@db/notes"),
                ("PGPASSWORD", "from-env"),
            ],
        )
        .unwrap();
        assert_eq!(c.database.conn.password(), Some("from-env"));
        let c = resolve(
            &["--database-url", "postgresql://notes:in-url@db/notes"],
            &[("PGPASSWORD", "from-env")],
        )
        .unwrap();
        assert_eq!(c.database.conn.password(), Some("in-url"));
    }

    #[test]
    fn flags_win_over_old_names_and_local_is_the_default() {
        let c = resolve(
            &["--database-url", "postgresql://u@h/db"],
            &[("DATABASE_URL", "postgresql://x@y/z")],
        )
        .unwrap();
        assert_eq!(c.database.conn.host, "h");
        let DestinationConfig::Local(l) = c.destination else {
            panic!("expected local")
        };
        assert_eq!(l.prefix, DEFAULT_PREFIX);
        assert_eq!(c.compression, Compression::Gzip { level: 6 });
        assert_eq!(c.compress_threads, crate::compress::default_threads());
        let z = resolve(
            &[
                "--database-url",
                "postgresql://u@h/db",
                "--compression",
                "zstd",
                "--compress-threads",
                "3",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(z.compression, Compression::Zstd { level: 3 });
        assert_eq!(
            (z.compression.name(), z.compression.extension()),
            ("zstd", "zst")
        );
        assert_eq!(z.compress_threads, 3);
    }

    #[test]
    fn bad_values_name_their_flag() {
        let db = ["--database-url", "postgresql://u@h/db"];
        let cases: Vec<(Vec<&str>, &str)> = vec![
            (vec!["--database-url", "http://h/db"], "--database-url"),
            (
                [&db[..], &["--compression", "brotli"]].concat(),
                "--compression",
            ),
            (
                [&db[..], &["--compression", "gzip:12"]].concat(),
                "--compression",
            ),
            (
                [&db[..], &["--compression", "zstd:0"]].concat(),
                "--compression",
            ),
            (
                [&db[..], &["--compress-threads", "0"]].concat(),
                "--compress-threads",
            ),
            (
                [&db[..], &["--compress-threads", "-2"]].concat(),
                "--compress-threads",
            ),
            (
                [&db[..], &["--s3-bucket", "Bad_Bucket"]].concat(),
                "--s3-bucket",
            ),
            (
                [
                    &db[..],
                    &["--s3-bucket", "ok-bucket", "--part-size", "1MiB"],
                ]
                .concat(),
                "--part-size",
            ),
            (
                [
                    &db[..],
                    &["--s3-bucket", "ok-bucket", "--parts-in-flight", "-3"],
                ]
                .concat(),
                "--parts-in-flight",
            ),
            (
                [
                    &db[..],
                    &["--s3-bucket", "ok-bucket", "--s3-checksum", "md5"],
                ]
                .concat(),
                "--s3-checksum",
            ),
            (
                [&db[..], &["--s3-bucket", "ok-bucket", "--prefix", "a/../b"]].concat(),
                "--prefix",
            ),
            (
                [
                    &db[..],
                    &["--s3-bucket", "ok-bucket", "--s3-endpoint", "minio:9000"],
                ]
                .concat(),
                "--s3-endpoint",
            ),
            (
                [
                    &db[..],
                    &["--s3-bucket", "ok-bucket", "--s3-access-key", "ak"],
                ]
                .concat(),
                "--s3-secret-key",
            ),
            (
                [&db[..], &["--pushgateway-url", "pushgateway:9091"]].concat(),
                "--pushgateway-url",
            ),
            (
                [&db[..], &["--schedule", "0 2 * * 9"]].concat(),
                "--schedule",
            ),
            (
                [&db[..], &["--timezone", "Moon/Base"]].concat(),
                "--timezone",
            ),
            (
                [&db[..], &["--max-age", "90"]].concat(),
                "--allow-long-retention",
            ),
            ([&db[..], &["--keep-daily", "0"]].concat(), "--keep-daily"),
            (vec![], "no database configured"),
        ];
        for (argv, needle) in cases {
            let msg = usage_msg(resolve(&argv, &[]));
            assert!(msg.contains(needle), "{argv:?}: {msg}");
        }
        let msg = usage_msg(resolve(&[], &[("PGHOST", "h"), ("PGPORT", "abc")]));
        assert!(msg.contains("PGPORT"), "{msg}");
    }

    #[test]
    fn sizes_and_prefixes() {
        assert_eq!(parse_size("16MiB"), Some(16 << 20));
        assert_eq!(parse_size("5242880"), Some(5 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_size("12 parsecs"), None);
        assert_eq!(normalize_prefix("/backups", "x").unwrap(), "backups/");
        assert_eq!(normalize_prefix("", "x").unwrap(), "");
        assert!(normalize_prefix("a//b", "x").is_err());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn scalar_parsers_never_panic(s in any::<String>()) {
            let _ = parse_size(&s);
            let _ = parse_duration(&s);
            let _ = normalize_prefix(&s, "x");
            let _ = check_bucket_name(&s);
            let _ = Compression::parse(&s);
        }

        #[test]
        fn accepted_prefixes_are_clean(s in "[a-z./]{0,12}") {
            if let Ok(p) = normalize_prefix(&s, "x") {
                prop_assert!(p.is_empty() || p.ends_with('/'));
                prop_assert!(!p.starts_with('/'));
                prop_assert!(!p.split('/').any(|seg| seg == ".." || seg == "."));
            }
        }

        #[test]
        fn any_flag_values_resolve_or_fail_with_a_usage_error(
            values in proptest::collection::vec(any::<String>(), 12),
        ) {
            let flags = [
                "--database-url", "--s3-bucket", "--prefix", "--s3-endpoint", "--s3-region",
                "--part-size", "--compression", "--pushgateway-url", "--schedule", "--timezone",
                "--orphan-grace", "--sse-c-key",
            ];
            let mut argv = vec!["leaflock-backup".to_string(), "run".to_string()];
            for (f, v) in flags.iter().zip(&values) {
                argv.push(format!("{f}={v}"));
            }
            if let Ok(cli) = Cli::try_parse_from(&argv) {
                let Command::Run(args) = cli.command else { unreachable!() };
                if let Err(e) = resolve_run(&args, &|_| None) {
                    prop_assert!(e.downcast_ref::<crate::error::UsageError>().is_some(), "{e}");
                    prop_assert!(!e.to_string().contains('\n'), "one line: {e}");
                }
            }
        }
    }
}

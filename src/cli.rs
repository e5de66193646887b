//! Command-line flags and their environment variables.
//!
//! Every setting is a flag with a `LEAFLOCK_BACKUP_*` variable (clap reads it). The
//! names LeafLock deployments already use (`DATABASE_URL`, `PG*`, `POSTGRES_*`,
//! `POSTGRESQL_*`, `BACKUP_S3_*`) are fallbacks resolved in `config.rs`; the help text
//! names them. This module only describes the surface: validation lives in `config.rs`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "leaflock-backup",
    version,
    about = "Backups for LeafLock's PostgreSQL database: dump, compress, store on S3 or a local directory, prove, measure.",
    long_about = "Backups for LeafLock's PostgreSQL database.\n\n\
        `run` streams pg_dump (custom format) through compression and sha256 into S3 (multipart upload, no \
        temporary file) or a local directory, writes a manifest last (a backup exists only when its manifest \
        exists), and pushes cumulative metrics to a Prometheus Pushgateway.\n\n\
        Exit status: 0 success; 1 the backup failed; 2 bad configuration or usage (nothing was done); \
        3 another run holds the lock.",
    after_help = "Every flag can also be set through the environment variable shown next to it."
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Take one backup now: dump, compress, store, write the manifest, push metrics.
    Run(Box<RunArgs>),
    /// Prove everything a run needs without taking a backup: configuration, database
    /// (version, pg_dump, privileges, lock, drill role), destination (write, read, list,
    /// multipart, abort, delete, the protections asked for, its clock), encryption,
    /// Pushgateway, notification targets. One line per check with the fix for each
    /// failure; exit 0 all passed, 1 one failed, 2 bad configuration. Takes every flag of
    /// `run`; probe objects are removed. Run it after every configuration change.
    Check(Box<RunArgs>),
    /// List the backups at the destination, newest first (debris and old archives too).
    List(ListArgs),
    /// Check a stored backup without touching any database: sha256, decompression, and
    /// that pg_restore reads the whole archive.
    Verify(VerifyArgs),
    /// Restore a backup into a database.
    Restore(Box<RestoreArgs>),
    /// Restore a stored backup into a scratch database and check it against its manifest.
    Drill(Box<DrillCommandArgs>),
    /// Stay running and take a backup at every slot of --schedule / --cron (for hosts and
    /// compose files without cron). Takes every flag of `run`; runs never overlap; SIGTERM
    /// between runs exits 0, during a run aborts it cleanly.
    Schedule(Box<RunArgs>),
    /// Apply the retention policy: delete the backups it does not keep.
    Prune(PruneArgs),
    /// Print the next times a cron schedule fires (checks an expression the way `run
    /// --schedule` and the deployment files use it).
    NextRun(NextRunArgs),
    /// Make an Ed25519 signing key pair: the private key (mode 0600) for
    /// --signing-key-file, the public key (printed, and in FILE.pub) for --trusted-key.
    Keygen(KeygenArgs),
    /// One database's backup history as a self-contained HTML page (or JSON): size,
    /// duration and rows per table over time, drill outcomes, what needs attention, and
    /// what the next prune would keep and delete. Reads the bucket only.
    Report(Box<ReportArgs>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Text with a progress line when stderr is a terminal, JSON lines otherwise.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto, env = "LEAFLOCK_BACKUP_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Log level or filter (error, warn, info, debug, trace, off, or a tracing filter such
    /// as `info,leaflock_backup=debug`). HTTP, TLS and AWS SDK crates stay at info unless
    /// named: their debug lines can carry request headers.
    #[arg(
        long,
        global = true,
        default_value = "info",
        env = "LEAFLOCK_BACKUP_LOG_LEVEL"
    )]
    pub log_level: String,

    /// Never draw a progress line, even on a terminal.
    #[arg(long, global = true, env = "LEAFLOCK_BACKUP_NO_PROGRESS")]
    pub no_progress: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub destination: DestinationArgs,

    #[command(flatten)]
    pub upload: UploadArgs,

    #[command(flatten)]
    pub notify: NotifyArgs,

    #[command(flatten)]
    pub dump: DumpArgs,

    #[command(flatten)]
    pub metrics: MetricsArgs,

    #[command(flatten)]
    pub schedule: ScheduleArgs,

    /// After storing the backup, read it back from the destination, restore it into a
    /// scratch database and check it against the manifest (see "Restore drill").
    #[arg(
        help_heading = "Run",
        long,
        env = "LEAFLOCK_BACKUP_RESTORE_DRILL",
        help_heading = "Restore drill"
    )]
    pub restore_drill: bool,

    #[command(flatten)]
    pub drill: DrillArgs,

    #[command(flatten)]
    pub retention: RetentionArgs,

    #[command(flatten)]
    pub gate: GateArgs,

    #[command(flatten)]
    pub encrypt: EncryptArgs,

    #[command(flatten)]
    pub keys: KeyArgs,

    #[command(flatten)]
    pub signing: SigningArgs,

    #[command(flatten)]
    pub trust: TrustArgs,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Retention")]
pub struct RetentionArgs {
    /// Keep the N newest backups.
    #[arg(long, env = "LEAFLOCK_BACKUP_KEEP_LAST", value_name = "N")]
    pub keep_last: Option<u32>,

    /// Keep the newest backup of each of the last N days that have backups.
    #[arg(long, env = "LEAFLOCK_BACKUP_KEEP_DAILY", value_name = "N")]
    pub keep_daily: Option<u32>,

    /// Keep the newest backup of each of the last N ISO weeks that have backups.
    #[arg(long, env = "LEAFLOCK_BACKUP_KEEP_WEEKLY", value_name = "N")]
    pub keep_weekly: Option<u32>,

    /// Keep the newest backup of each of the last N months that have backups.
    #[arg(long, env = "LEAFLOCK_BACKUP_KEEP_MONTHLY", value_name = "N")]
    pub keep_monthly: Option<u32>,

    /// Delete backups older than DAYS whatever the keep rules say (a hard limit; at most 30,
    /// LeafLock's GDPR promise, unless --allow-long-retention). Fallback: BACKUP_RETENTION_DAYS.
    #[arg(long, env = "LEAFLOCK_BACKUP_MAX_AGE_DAYS", value_name = "DAYS")]
    pub max_age: Option<u32>,

    /// Allow --max-age above 30 days (breaks LeafLock's promise that deleted accounts leave the
    /// backups within 30 days).
    #[arg(long, env = "LEAFLOCK_BACKUP_ALLOW_LONG_RETENTION")]
    pub allow_long_retention: bool,

    /// Debris of interrupted runs (open multipart uploads, `.partial-*` files, this tool's
    /// objects without a manifest) older than this is removed at the start of every run and
    /// by prune (e.g. 90s, 30m, 1h, 2d; 0 removes all of it: only when no other run can be
    /// writing under the same prefix).
    #[arg(
        long,
        env = "LEAFLOCK_BACKUP_ORPHAN_GRACE",
        default_value = "1h",
        value_name = "DURATION"
    )]
    pub orphan_grace: String,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Regression gate")]
pub struct GateArgs {
    /// Compare every new backup with the newest verified one before retention runs; a backup
    /// in which a table vanished, a table's rows collapsed or the size collapsed is kept,
    /// marked suspect, and retention deletes nothing until an operator accepts it (the help
    /// of prune says how). on or off.
    #[arg(
        long,
        env = "LEAFLOCK_BACKUP_REGRESSION_GATE",
        default_value = "on",
        value_name = "on|off"
    )]
    pub regression_gate: String,

    /// A table whose row count fell by more than PERCENT is suspect (off: no row check).
    #[arg(
        long,
        env = "LEAFLOCK_BACKUP_SUSPECT_ROW_DROP",
        default_value = "50",
        value_name = "PERCENT|off"
    )]
    pub suspect_row_drop: String,

    /// ... when it had at least N rows (small tables may empty without alarm).
    #[arg(
        long,
        env = "LEAFLOCK_BACKUP_SUSPECT_MIN_ROWS",
        default_value_t = 300,
        value_name = "N"
    )]
    pub suspect_min_rows: u32,

    /// A stored size that fell by more than PERCENT is suspect (off: no size check).
    #[arg(
        long,
        env = "LEAFLOCK_BACKUP_SUSPECT_SIZE_DROP",
        default_value = "50",
        value_name = "PERCENT|off"
    )]
    pub suspect_size_drop: String,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub destination: DestinationArgs,

    #[command(flatten)]
    pub retention: RetentionArgs,

    /// The server whose run lock prune takes (the same lock as `run` of this database, so
    /// prune never overlaps a backup or another prune; exit 3 when held).
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Accept a suspect backup (held by the regression gate) as intended, e.g. after
    /// deleting data on purpose: it counts as a normal backup again and retention resumes.
    /// Repeatable. Without a retention rule, prune only accepts.
    #[arg(
        help_heading = "Prune",
        long,
        env = "LEAFLOCK_BACKUP_ACCEPT_SUSPECT",
        value_name = "KEY",
        value_delimiter = ','
    )]
    pub accept_suspect: Vec<String>,

    #[command(flatten)]
    pub trust: TrustArgs,

    /// Print what would be deleted and why each kept backup stays; delete nothing.
    #[arg(help_heading = "Prune", long, env = "LEAFLOCK_BACKUP_DRY_RUN")]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Restore drill")]
pub struct DrillArgs {
    /// Server on which the drill creates (and drops) its scratch database
    /// `leaflock_drill_<run id>`; the URL's database is only used to connect. A separate
    /// server is the safer choice in production. Default: the source server.
    #[arg(
        long,
        env = "LEAFLOCK_BACKUP_DRILL_DATABASE_URL",
        hide_env_values = true,
        hide_env_values = true,
        value_name = "URL"
    )]
    pub drill_database_url: Option<String>,

    /// SQL run on the restored database that must return true (repeatable; in the
    /// variable, one check per line).
    #[arg(
        long,
        env = "LEAFLOCK_BACKUP_DRILL_CHECK",
        value_delimiter = '\n',
        value_name = "SQL"
    )]
    pub drill_check: Vec<String>,

    /// Keep the scratch database after the drill (for inspection).
    #[arg(long, env = "LEAFLOCK_BACKUP_KEEP_DRILL_DATABASE")]
    pub keep_drill_database: bool,

    /// pg_restore to use. Default: among those in PATH and /usr/lib/postgresql/*/bin, the
    /// lowest major version that can read the archive.
    #[arg(long, env = "LEAFLOCK_BACKUP_PG_RESTORE", value_name = "PATH")]
    pub pg_restore: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub destination: DestinationArgs,

    /// Print JSON (one array) instead of a table.
    #[arg(help_heading = "List", long, env = "LEAFLOCK_BACKUP_LIST_JSON")]
    pub json: bool,

    /// List the backups of every database under the prefix, not only --database's.
    #[arg(
        help_heading = "List",
        long,
        env = "LEAFLOCK_BACKUP_LIST_ALL_DATABASES"
    )]
    pub all_databases: bool,

    #[command(flatten)]
    pub trust: TrustArgs,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub destination: DestinationArgs,

    /// Write the report to FILE (replaced whole, private to its owner) instead of stdout.
    #[arg(
        help_heading = "Report",
        long,
        env = "LEAFLOCK_BACKUP_REPORT_OUT",
        value_name = "FILE"
    )]
    pub out: Option<PathBuf>,

    /// The report's data as JSON instead of HTML.
    #[arg(help_heading = "Report", long, env = "LEAFLOCK_BACKUP_REPORT_JSON")]
    pub json: bool,

    // The retention rules prune runs with: the report shows what the next prune would
    // keep, delete, and why. Without a rule, no plan is shown.
    #[command(flatten)]
    pub retention: RetentionArgs,

    #[command(flatten)]
    pub trust: TrustArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The object key as `list` prints it, or `latest`.
    #[arg(default_value = "latest", value_name = "KEY|latest")]
    pub key: String,

    #[command(flatten)]
    pub destination: DestinationArgs,

    #[command(flatten)]
    pub keys: KeyArgs,

    #[command(flatten)]
    pub trust: TrustArgs,

    #[command(flatten)]
    pub allow: AllowUnsignedArgs,

    /// Refuse a backup that is not encrypted.
    #[arg(
        help_heading = "Verify",
        long,
        env = "LEAFLOCK_BACKUP_REQUIRE_ENCRYPTION"
    )]
    pub require_encryption: bool,

    /// pg_restore to use. Default: found by the archive's version.
    #[arg(
        help_heading = "Verify",
        long,
        env = "LEAFLOCK_BACKUP_PG_RESTORE",
        value_name = "PATH"
    )]
    pub pg_restore: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The object key as `list` prints it, or `latest`.
    #[arg(default_value = "latest", value_name = "KEY|latest")]
    pub key: String,

    #[command(flatten)]
    pub destination: DestinationArgs,

    #[command(flatten)]
    pub keys: KeyArgs,

    #[command(flatten)]
    pub trust: TrustArgs,

    #[command(flatten)]
    pub allow: AllowUnsignedArgs,

    /// Refuse a backup that is not encrypted.
    #[arg(
        help_heading = "Restore",
        long,
        env = "LEAFLOCK_BACKUP_REQUIRE_ENCRYPTION"
    )]
    pub require_encryption: bool,

    /// The database to restore into (it must exist). The restore never goes into another
    /// database, whatever the archive says.
    #[arg(
        help_heading = "Restore",
        long,
        env = "LEAFLOCK_BACKUP_TARGET_DATABASE_URL",
        hide_env_values = true,
        hide_env_values = true,
        value_name = "URL"
    )]
    pub target_database_url: Option<String>,

    /// Restore into a database that already has tables, dropping the archive's objects
    /// before recreating them.
    #[arg(help_heading = "Restore", long, env = "LEAFLOCK_BACKUP_RESTORE_CLEAN")]
    pub clean: bool,

    /// Do not restore ownership: objects are owned by the restoring user (use when the
    /// target server lacks the archive's roles).
    #[arg(
        help_heading = "Restore",
        long,
        env = "LEAFLOCK_BACKUP_RESTORE_NO_OWNER"
    )]
    pub no_owner: bool,

    /// Print the backup's tables with their row counts and content digests (from its
    /// manifest) and restore nothing; no target database is needed.
    #[arg(help_heading = "Restore", long, env = "LEAFLOCK_BACKUP_RESTORE_LIST")]
    pub list: bool,

    /// Restore only this table (`schema.name`, or `name` when one schema has it;
    /// repeatable; in the variable, comma-separated): its definition and rows with its
    /// indexes, constraints, triggers, defaults, policies, comments and grants, plus what
    /// it needs that the target lacks (schemas, extensions, types, functions, sequences,
    /// the tables its foreign keys point at). No other table of the target is touched:
    /// one the target already has is replaced only with --clean, and not while another
    /// table references it. The archive is first spooled (decompressed) to TMPDIR and
    /// verified.
    #[arg(
        help_heading = "Restore",
        long = "table",
        env = "LEAFLOCK_BACKUP_RESTORE_TABLE",
        value_name = "TABLE",
        value_delimiter = ','
    )]
    pub tables: Vec<String>,

    /// Restore definitions only (tables, indexes, constraints, ...), no rows. The
    /// archive is first spooled (decompressed) to TMPDIR and verified.
    #[arg(
        help_heading = "Restore",
        long,
        env = "LEAFLOCK_BACKUP_RESTORE_SCHEMA_ONLY"
    )]
    pub schema_only: bool,

    /// Restore rows only, into tables the target already has (with --table: those
    /// tables' rows). Not with --clean.
    #[arg(
        help_heading = "Restore",
        long,
        env = "LEAFLOCK_BACKUP_RESTORE_DATA_ONLY"
    )]
    pub data_only: bool,

    /// Do not ask for confirmation on a terminal.
    #[arg(
        help_heading = "Restore",
        long,
        short = 'y',
        env = "LEAFLOCK_BACKUP_RESTORE_YES"
    )]
    pub yes: bool,

    /// Parallel pg_restore jobs. Above 1 the archive is first spooled (decompressed) to a
    /// temporary file in TMPDIR, because parallel restore needs a seekable file.
    #[arg(
        help_heading = "Restore",
        long,
        env = "LEAFLOCK_BACKUP_RESTORE_JOBS",
        default_value_t = 1,
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub jobs: i64,

    /// pg_restore to use. Default: found by the archive's version.
    #[arg(
        help_heading = "Restore",
        long,
        env = "LEAFLOCK_BACKUP_PG_RESTORE",
        value_name = "PATH"
    )]
    pub pg_restore: Option<PathBuf>,

    /// Seconds to wait for the database connection.
    #[arg(
        help_heading = "Restore",
        long,
        env = "LEAFLOCK_BACKUP_CONNECT_TIMEOUT",
        default_value_t = 30,
        value_name = "SECONDS"
    )]
    pub connect_timeout: u64,
}

#[derive(Debug, Args)]
pub struct DrillCommandArgs {
    /// The object key as `list` prints it, or `latest`.
    #[arg(default_value = "latest", value_name = "KEY|latest")]
    pub key: String,

    #[command(flatten)]
    pub destination: DestinationArgs,

    /// The drill record is an object too: written with the same protections as backups.
    #[command(flatten)]
    pub upload: UploadArgs,

    #[command(flatten)]
    pub keys: KeyArgs,

    #[command(flatten)]
    pub trust: TrustArgs,

    #[command(flatten)]
    pub allow: AllowUnsignedArgs,

    /// Refuse a backup that is not encrypted.
    #[arg(
        help_heading = "Drill",
        long,
        env = "LEAFLOCK_BACKUP_REQUIRE_ENCRYPTION"
    )]
    pub require_encryption: bool,

    /// Default drill server when --drill-database-url is not given (same fallbacks as `run`).
    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub drill: DrillArgs,

    #[command(flatten)]
    pub signing: SigningArgs,

    #[command(flatten)]
    pub notify: NotifyArgs,

    #[command(flatten)]
    pub metrics: MetricsArgs,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Schedule")]
pub struct ScheduleArgs {
    /// The schedule this runner is started on (crontab's 5 fields, or 6/7 fields with seconds
    /// and year, or @daily...). With it, `leaflock_backup_next_run_timestamp_seconds` is pushed
    /// so that a run that never starts is noticed right after its slot. Fallback: BACKUP_SCHEDULE.
    #[arg(
        long,
        visible_alias = "cron",
        env = "LEAFLOCK_BACKUP_SCHEDULE",
        value_name = "CRON"
    )]
    pub schedule: Option<String>,

    /// Time zone the schedule is read in (IANA name).
    #[arg(
        long,
        env = "LEAFLOCK_BACKUP_TIMEZONE",
        default_value = "UTC",
        value_name = "TZ"
    )]
    pub timezone: String,
}

#[derive(Debug, Args)]
pub struct NextRunArgs {
    #[command(flatten)]
    pub schedule: ScheduleArgs,

    /// How many upcoming slots to print.
    #[arg(
        help_heading = "Next run",
        long,
        env = "LEAFLOCK_BACKUP_NEXT_RUN_COUNT",
        default_value_t = 5,
        value_name = "N"
    )]
    pub count: usize,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Database")]
pub struct DatabaseArgs {
    /// PostgreSQL connection URL (postgresql://user:password@host:port/dbname?sslmode=...).
    /// Fallbacks, in order: DATABASE_URL; else one is built from POSTGRESQL_HOST|PGHOST|POSTGRES_HOST,
    /// POSTGRESQL_PORT|PGPORT|POSTGRES_PORT (5432), POSTGRESQL_USER|PGUSER|POSTGRES_USER (postgres),
    /// POSTGRESQL_PASSWORD|PGPASSWORD|POSTGRES_PASSWORD, POSTGRESQL_DATABASE|PGDATABASE|POSTGRES_DB (notes),
    /// POSTGRESQL_SSLMODE|PGSSLMODE (require, as LeafLock's backend; prefer with POSTGRES_HOST,
    /// as the old script). The password is never passed on a command line nor logged.
    #[arg(
        long,
        env = "LEAFLOCK_BACKUP_DATABASE_URL",
        hide_env_values = true,
        hide_env_values = true,
        value_name = "URL"
    )]
    pub database_url: Option<String>,

    /// pg_dump to use. Default: among those in PATH and /usr/lib/postgresql/*/bin, the
    /// lowest major version that is the server's or newer (so the server's own pg_restore
    /// can read the archive).
    #[arg(long, env = "LEAFLOCK_BACKUP_PG_DUMP", value_name = "PATH")]
    pub pg_dump: Option<PathBuf>,

    /// Seconds to wait for the database connection.
    #[arg(
        long,
        env = "LEAFLOCK_BACKUP_CONNECT_TIMEOUT",
        default_value_t = 30,
        value_name = "SECONDS"
    )]
    pub connect_timeout: u64,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Destination")]
pub struct DestinationArgs {
    /// S3 bucket, or s3://bucket/prefix. Fallback: BACKUP_S3_BUCKET. Without a bucket, backups
    /// go to --local-dir.
    #[arg(long, env = "LEAFLOCK_BACKUP_S3_BUCKET", value_name = "BUCKET")]
    pub s3_bucket: Option<String>,

    /// Key prefix under which backups are stored (LeafLock's old script used backups/).
    #[arg(long, env = "LEAFLOCK_BACKUP_S3_PREFIX", value_name = "PREFIX")]
    pub prefix: Option<String>,

    /// The database whose backups this command acts on (list, latest, verify, drill, restore,
    /// prune): each database's keys live apart under the prefix. Default: the database of the
    /// connection settings (the database URL, LEAFLOCK_BACKUP_DATABASE_URL, DATABASE_URL,
    /// POSTGRESQL_DATABASE|PGDATABASE|POSTGRES_DB), else notes. `run` acts on the database it dumps.
    #[arg(
        long = "database",
        env = "LEAFLOCK_BACKUP_DATABASE",
        value_name = "NAME",
        help_heading = "Scope"
    )]
    pub database_name: Option<String>,

    /// A label for the server, when two servers back up databases of the same name into one
    /// destination (e.g. prod-eu): it becomes part of every key and manifest, and the scope of
    /// every command. Default: none.
    #[arg(
        long,
        env = "LEAFLOCK_BACKUP_INSTANCE",
        value_name = "LABEL",
        help_heading = "Scope"
    )]
    pub instance: Option<String>,

    /// How far in the future a manifest may be dated before it is an anomaly (never latest, never
    /// a reason to delete), and how far the local clock and the S3 server's (its Date header) may
    /// disagree before retention deletes nothing (e.g. 90s, 5m).
    #[arg(
        long,
        env = "LEAFLOCK_BACKUP_CLOCK_TOLERANCE",
        default_value = "5m",
        value_name = "DURATION",
        help_heading = "Scope"
    )]
    pub clock_tolerance: String,

    /// Directory for backups when no S3 bucket is configured.
    #[arg(
        long,
        env = "LEAFLOCK_BACKUP_LOCAL_DIR",
        value_name = "DIR",
        default_value = "leaflock-backups"
    )]
    pub local_dir: PathBuf,

    /// S3 endpoint URL for S3-compatible servers (MinIO, SeaweedFS, Garage, ...). Fallback:
    /// BACKUP_S3_ENDPOINT. Default: AWS.
    #[arg(long, env = "LEAFLOCK_BACKUP_S3_ENDPOINT", value_name = "URL")]
    pub s3_endpoint: Option<String>,

    /// S3 region. Fallbacks: BACKUP_S3_REGION, AWS_REGION, AWS_DEFAULT_REGION; default us-east-1.
    #[arg(long, env = "LEAFLOCK_BACKUP_S3_REGION", value_name = "REGION")]
    pub s3_region: Option<String>,

    /// S3 access key id. Fallback: BACKUP_S3_ACCESS_KEY; else the usual AWS credential chain
    /// (AWS_ACCESS_KEY_ID, profile, web identity, instance metadata).
    #[arg(
        long,
        env = "LEAFLOCK_BACKUP_S3_ACCESS_KEY",
        hide_env_values = true,
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub s3_access_key: Option<String>,

    /// S3 secret access key. Fallback: BACKUP_S3_SECRET_KEY.
    #[arg(
        long,
        env = "LEAFLOCK_BACKUP_S3_SECRET_KEY",
        hide_env_values = true,
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub s3_secret_key: Option<String>,

    /// Path-style addressing (http://endpoint/bucket/key). Default: on when --s3-endpoint is set
    /// (MinIO, SeaweedFS and Garage need it), off for AWS.
    #[arg(long, env = "LEAFLOCK_BACKUP_S3_FORCE_PATH_STYLE", value_name = "BOOL",
          num_args = 0..=1, default_missing_value = "true")]
    pub s3_force_path_style: Option<bool>,

    /// SSE-C: a customer-provided 256-bit key, base64. S3 stores only its MD5; every read
    /// (verify, restore, drill, list) needs the same key.
    #[arg(
        long,
        env = "LEAFLOCK_BACKUP_SSE_C_KEY",
        hide_env_values = true,
        value_name = "BASE64"
    )]
    pub sse_c_key: Option<String>,

    /// Checksum sent with every upload request (parts, manifests, records):
    /// sha256|sha1|crc32|crc32c|crc64nvme (that algorithm, read back after the upload: a
    /// store that did not keep it fails the run), auto (the AWS SDK's own choice, not read
    /// back) or when-required (none where an operation does not require one: for stores
    /// that refuse the SDK's flexible checksums, such as Backblaze B2 or Google Cloud
    /// Storage). Default: sha256.
    #[arg(long, env = "LEAFLOCK_BACKUP_S3_CHECKSUM", value_name = "ALGORITHM")]
    pub s3_checksum: Option<String>,

    /// Attempts per S3 request before giving up (transient errors are retried with
    /// exponential backoff and jitter).
    #[arg(
        long,
        env = "LEAFLOCK_BACKUP_S3_MAX_ATTEMPTS",
        default_value_t = 6,
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub s3_max_attempts: i64,
}

/// Notifications without Prometheus.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Notifications")]
pub struct NotifyArgs {
    /// POST one JSON object per event of a run (started, succeeded, failed, drill_failed,
    /// suspect, retention_deleted; of `drill`: drill_passed, drill_failed, failed; of
    /// `check`: one check event) to URL, with the summary line's figures and no secret.
    /// Repeatable; in the variable, separate URLs with commas.
    #[arg(
        long,
        env = "LEAFLOCK_BACKUP_NOTIFY_URL",
        value_name = "URL",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub notify_url: Vec<String>,

    /// A healthchecks.io-style check: URL/start when a run starts, URL when it
    /// succeeds, URL/fail (with the tail of the log as the body) when it fails; the
    /// service alerts when the pings stop.
    #[arg(
        long,
        env = "LEAFLOCK_BACKUP_HEALTHCHECKS_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub healthchecks_url: Option<String>,

    /// Seconds allowed for each notification request (three attempts at most).
    #[arg(
        long,
        env = "LEAFLOCK_BACKUP_NOTIFY_TIMEOUT",
        default_value_t = 10,
        value_name = "SECONDS"
    )]
    pub notify_timeout: u64,
}

/// How objects are written: only the commands that store backups (`run`, `schedule`)
/// and drill records (`drill`) take these; the read commands do not offer them.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Writing objects")]
pub struct UploadArgs {
    /// Storage class of the backup object (STANDARD, STANDARD_IA, GLACIER_IR, ...). Default: the
    /// bucket's.
    #[arg(long, env = "LEAFLOCK_BACKUP_S3_STORAGE_CLASS", value_name = "CLASS")]
    pub s3_storage_class: Option<String>,

    /// Multipart part size (5MiB..5GiB; suffixes KiB, MiB, GiB). Memory use is about
    /// part size x (parts in flight + 1).
    #[arg(
        long,
        env = "LEAFLOCK_BACKUP_PART_SIZE",
        default_value = "16MiB",
        value_name = "SIZE"
    )]
    pub part_size: String,

    /// Multipart parts uploaded concurrently (1..64).
    #[arg(
        long,
        env = "LEAFLOCK_BACKUP_PARTS_IN_FLIGHT",
        default_value_t = 4,
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub parts_in_flight: i64,

    /// Server-side encryption of stored objects: AES256 (SSE-S3) or aws:kms (SSE-KMS).
    #[arg(long, env = "LEAFLOCK_BACKUP_SSE", value_name = "AES256|aws:kms")]
    pub sse: Option<String>,

    /// KMS key for --sse aws:kms (default: the bucket's AWS-managed key).
    #[arg(long, env = "LEAFLOCK_BACKUP_SSE_KMS_KEY_ID", value_name = "KEY_ID")]
    pub sse_kms_key_id: Option<String>,

    /// Object Lock: retain each backup object and manifest for DAYS (the bucket must have
    /// Object Lock enabled). Keep it at or below the retention --max-age.
    #[arg(long, env = "LEAFLOCK_BACKUP_OBJECT_LOCK_DAYS", value_name = "DAYS")]
    pub object_lock_days: Option<u32>,

    /// Keep an object whose requested protection (SSE-S3, SSE-KMS and its key, SSE-C,
    /// Object Lock) the store did not apply, with a warning. Without it such a run fails
    /// and the object is removed: every protection is read back after the upload.
    #[arg(long, env = "LEAFLOCK_BACKUP_ALLOW_UNAPPLIED_PROTECTION")]
    pub allow_unapplied_protection: bool,

    /// Object Lock mode: governance (privileged users may lift it) or compliance (nobody can).
    #[arg(
        long,
        env = "LEAFLOCK_BACKUP_OBJECT_LOCK_MODE",
        default_value = "governance",
        value_name = "MODE"
    )]
    pub object_lock_mode: String,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Dump and compression")]
pub struct DumpArgs {
    /// Compression: gzip[:LEVEL] (LEVEL 1..9, default 6; objects end in .dump.gz) or
    /// zstd[:LEVEL] (LEVEL 1..19, default 3; objects end in .dump.zst). gzip is one standard
    /// gzip stream made on all cores; parts where LZ77 matching does not pay (hex ciphertext)
    /// are only entropy-coded.
    #[arg(
        long,
        env = "LEAFLOCK_BACKUP_COMPRESSION",
        default_value = "gzip:6",
        value_name = "ALGO[:LEVEL]"
    )]
    pub compression: String,

    /// Threads that compress (1..256). Default: the number of available cores. Memory for
    /// gzip grows by about 2 MiB per thread.
    #[arg(
        long,
        env = "LEAFLOCK_BACKUP_COMPRESS_THREADS",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub compress_threads: Option<i64>,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Encryption")]
pub struct EncryptArgs {
    /// Encrypt the backup with age to this X25519 public key (age1...); repeatable, in the
    /// variable comma-separated. The backup host then holds no key that can read backups.
    #[arg(
        long,
        env = "LEAFLOCK_BACKUP_AGE_RECIPIENTS",
        value_delimiter = ',',
        value_name = "RECIPIENT"
    )]
    pub encrypt_to: Vec<String>,

    /// A file of age recipients, one per line (# comments allowed).
    #[arg(long, env = "LEAFLOCK_BACKUP_AGE_RECIPIENTS_FILE", value_name = "FILE")]
    pub recipients_file: Option<PathBuf>,

    /// Refuse to run (or, for reading commands, to read a backup) without encryption.
    #[arg(long, env = "LEAFLOCK_BACKUP_REQUIRE_ENCRYPTION")]
    pub require_encryption: bool,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Encryption keys")]
pub struct KeyArgs {
    /// age identity file that can decrypt backups (repeatable). Needed by restore, verify and
    /// the drill for backups encrypted to recipients.
    #[arg(long, env = "LEAFLOCK_BACKUP_AGE_IDENTITY_FILE", value_name = "FILE")]
    pub identity: Vec<PathBuf>,

    /// Passphrase: encrypts backups (age scrypt) when no recipient is given, decrypts
    /// passphrase backups, and opens the old script's `.sql.gz.enc` archives.
    /// Fallback: BACKUP_ENCRYPTION_KEY.
    #[arg(
        long,
        env = "LEAFLOCK_BACKUP_ENCRYPTION_KEY",
        hide_env_values = true,
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub encryption_key: Option<String>,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Metrics")]
pub struct MetricsArgs {
    /// Prometheus Pushgateway URL. Metrics are read back, added to and pushed after every run,
    /// success or failure; a Pushgateway outage never fails a backup.
    #[arg(
        long,
        env = "LEAFLOCK_BACKUP_PUSHGATEWAY_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub pushgateway_url: Option<String>,

    /// `job` label of the pushed group.
    #[arg(
        long,
        env = "LEAFLOCK_BACKUP_PUSHGATEWAY_JOB",
        default_value = "leaflock-backup",
        value_name = "JOB"
    )]
    pub pushgateway_job: String,

    /// `database` label of the pushed group. Default: the database name.
    #[arg(long, env = "LEAFLOCK_BACKUP_METRICS_DATABASE", value_name = "NAME")]
    pub metrics_database: Option<String>,

    /// Also write the metrics, cumulative across runs, to this file for node_exporter's
    /// textfile collector (e.g. /var/lib/node_exporter/textfile/leaflock_notes.prom; one
    /// file per database), replaced atomically after every run. Works with or without a
    /// Pushgateway.
    #[arg(long, env = "LEAFLOCK_BACKUP_METRICS_TEXTFILE", value_name = "PATH")]
    pub metrics_textfile: Option<PathBuf>,

    /// Seconds allowed for each Pushgateway request.
    #[arg(
        long,
        env = "LEAFLOCK_BACKUP_PUSHGATEWAY_TIMEOUT",
        default_value_t = 10,
        value_name = "SECONDS"
    )]
    pub pushgateway_timeout: u64,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Signing")]
pub struct SigningArgs {
    /// Ed25519 private key (PKCS#8 PEM, from `leaflock-backup keygen` or `openssl genpkey
    /// -algorithm ed25519`) that signs every manifest and drill record this run writes. Give it
    /// as a file (a mounted Secret, a systemd credential); it never appears in a manifest, a log
    /// or a child's environment. Unreadable or not a key: exit 2 before any work.
    #[arg(long, env = "LEAFLOCK_BACKUP_SIGNING_KEY_FILE", value_name = "FILE")]
    pub signing_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Signing")]
pub struct TrustArgs {
    /// Public key whose signatures are trusted: `ed25519:<base64>` as keygen prints it, or a file
    /// holding it (repeatable; in the variable comma-separated). Keep a retired key listed as long
    /// as its backups are kept. With at least one, only backups signed by a trusted key are
    /// restored, drilled, verified, counted as `latest` and by retention; `run` also trusts its own
    /// --signing-key-file.
    #[arg(
        long,
        env = "LEAFLOCK_BACKUP_TRUSTED_KEYS",
        value_delimiter = ',',
        value_name = "KEY|FILE"
    )]
    pub trusted_key: Vec<String>,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Signing")]
pub struct AllowUnsignedArgs {
    /// Use this one backup although it is unsigned, badly signed or signed by an untrusted key
    /// (an old unsigned backup, an archive of LeafLock's old script). Takes the backup's full key
    /// as `list` prints it, never `latest`: the override is for one use, with a warning. Do not
    /// set its variable in a deployment file.
    #[arg(long, env = "LEAFLOCK_BACKUP_ALLOW_UNSIGNED", value_name = "KEY")]
    pub allow_unsigned: Option<String>,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the private key (created with mode 0600, never overwritten); the public key
    /// goes to FILE.pub and to standard output.
    #[arg(long, env = "LEAFLOCK_BACKUP_KEYGEN_OUT", value_name = "FILE")]
    pub out: PathBuf,
}

//! Shared harness for the integration tests: the real servers started by
//! `scripts/testbed.sh`, a LeafLock-shaped database per test, the real binary, and
//! small readers for what the servers hold afterwards.
//!
//! Tests never talk to mocks. Isolation between tests that run in parallel: each test
//! makes its own database (unique name), its own key prefix in the one test bucket,
//! and its own Pushgateway group (a unique `database` label).

#![allow(dead_code)]

pub mod machine;
pub mod proxy;
pub mod receiver;

use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_leaflock-backup")
}

/// The test bed's settings (`$LEAFLOCK_TESTBED_DIR/env`, written by `testbed.sh start`).
/// A `LEAFLOCK_TEST_S3_*` variable in the tests' own environment overrides the file's:
/// that is how `scripts/s3-compat.sh` points the S3 tests at another store.
pub struct Testbed {
    vars: HashMap<String, String>,
}

pub fn testbed() -> &'static Testbed {
    static TB: OnceLock<Testbed> = OnceLock::new();
    TB.get_or_init(|| {
        let dir = std::env::var("LEAFLOCK_TESTBED_DIR")
            .unwrap_or_else(|_| "/tmp/leaflock-testbed".to_string());
        let path = Path::new(&dir).join("env");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "the test bed is not running ({}: {e}); start it with `scripts/testbed.sh start` \
                 or run the whole suite with `scripts/test.sh`",
                path.display()
            )
        });
        let mut vars: HashMap<String, String> = text
            .lines()
            .filter_map(|l| {
                let l = l.trim().strip_prefix("export ").unwrap_or(l.trim());
                let (k, v) = l.split_once('=')?;
                Some((
                    k.to_string(),
                    v.trim_matches('"').trim_matches('\'').to_string(),
                ))
            })
            .collect();
        vars.extend(std::env::vars().filter(|(k, _)| k.starts_with("LEAFLOCK_TEST_S3_")));
        Testbed { vars }
    })
}

impl Testbed {
    pub fn var(&self, name: &str) -> String {
        self.vars
            .get(name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} missing from the test bed's env file"))
    }
    /// A variable that older env files may not have.
    pub fn var_opt(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }
    pub fn pg_password(&self) -> String {
        self.var("LEAFLOCK_TEST_PG_PASSWORD")
    }
    pub fn s3_endpoint(&self) -> String {
        self.var("LEAFLOCK_TEST_S3_ENDPOINT")
    }
    pub fn bucket(&self) -> String {
        self.var("LEAFLOCK_TEST_S3_BUCKET")
    }
    pub fn pushgateway(&self) -> String {
        self.var("LEAFLOCK_TEST_PUSHGATEWAY_URL")
    }
}

/// Whether the S3 store under test lacks `feature` (`object-lock`, `sse-s3`, `sse-c`,
/// `conditional-writes`, ...), as `LEAFLOCK_TEST_S3_LACKS` (comma-separated) says: only
/// `scripts/s3-compat.sh` sets it, for a store it knows to lack the feature. A test that
/// needs the feature then prints why it is skipped and returns; the test bed's store
/// lacks nothing.
pub fn store_lacks(feature: &str) -> bool {
    let lacks = testbed()
        .var_opt("LEAFLOCK_TEST_S3_LACKS")
        .unwrap_or_default();
    let lacking = lacks.split(',').any(|f| f.trim() == feature);
    if lacking {
        println!("SKIPPED: the store under test lacks {feature} (LEAFLOCK_TEST_S3_LACKS={lacks})");
    }
    lacking
}

/// A PostgreSQL server of the test bed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pg {
    V15,
    V18,
}

impl Pg {
    fn key(self) -> &'static str {
        match self {
            Pg::V15 => "PG15",
            Pg::V18 => "PG18",
        }
    }
    /// URL of the server's `postgres` database.
    pub fn admin_url(self) -> String {
        testbed().var(&format!("LEAFLOCK_TEST_{}_URL", self.key()))
    }
    pub fn url(self, db: &str) -> String {
        let admin = self.admin_url();
        let base = admin.rsplit_once('/').expect("URL has a path").0;
        format!("{base}/{db}")
    }
    pub fn bin_dir(self) -> PathBuf {
        PathBuf::from(testbed().var(&format!("LEAFLOCK_TEST_{}_BIN", self.key())))
    }
    pub fn tool(self, name: &str) -> PathBuf {
        self.bin_dir().join(name)
    }
    /// A PATH on which this server's client tools come first.
    pub fn path_env(self) -> String {
        format!(
            "{}:{}",
            self.bin_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }
}

/// A name unique to this test process and call: databases, prefixes, metric groups.
pub fn unique(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{name}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `inner` run by `faketime -f OFFSET` (e.g. `+10m`): the same program, arguments and
/// environment on a host whose clock is off by that much.
pub fn faketime(offset: &str, inner: &Command) -> Command {
    let mut cmd = Command::new("faketime");
    cmd.args(["-f", offset])
        .arg(inner.get_program())
        .args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd
}

/// Run psql against `url` with `sql`; panics with psql's stderr on failure.
pub fn psql(pg: Pg, url: &str, sql: &str) -> String {
    let out = Command::new(pg.tool("psql"))
        .args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-q",
            "-d",
            url,
            "-c",
            sql,
        ])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Create a LeafLock-shaped database of about `size_mb` MiB with the project's
/// generator. Returns its URL.
pub fn leaflock_db(pg: Pg, name: &str, size_mb: u32) -> String {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/generate-db.sh"))
        .args(["--url", &pg.admin_url(), "--database", name])
        .args(["--size-mb", &size_mb.to_string()])
        .arg("--psql")
        .arg(pg.tool("psql"))
        .stdin(Stdio::null())
        .output()
        .expect("generate-db.sh runs");
    assert!(
        out.status.success(),
        "generate-db.sh failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    pg.url(name)
}

/// Drop the database `name` now; panics if the server refuses.
pub fn drop_db(pg: Pg, name: &str) {
    psql(pg, &pg.admin_url(), &drop_sql(name));
}

fn drop_sql(name: &str) -> String {
    format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")
}

/// A database of the test bed that is dropped when the guard goes out of scope, also
/// when the test fails first. The guard exists before the database does, so a
/// database left half-made by a failing generator is dropped too.
pub struct TestDb {
    pub pg: Pg,
    pub name: String,
    /// URL of the database.
    pub url: String,
    psql: PathBuf,
    admin_url: String,
}

impl TestDb {
    /// A guard for the database `name`, which something else creates (a restore, a
    /// script, SQL run by the test): whatever bears that name at the end is dropped.
    pub fn named(pg: Pg, name: &str) -> TestDb {
        TestDb {
            pg,
            name: name.to_string(),
            url: pg.url(name),
            psql: pg.tool("psql"),
            admin_url: pg.admin_url(),
        }
    }

    /// A LeafLock-shaped database of about `size_mb` MiB (see [`leaflock_db`]).
    pub fn leaflock(pg: Pg, name: &str, size_mb: u32) -> TestDb {
        let db = TestDb::named(pg, name);
        leaflock_db(pg, name, size_mb);
        db
    }

    /// An empty database (`CREATE DATABASE`).
    pub fn empty(pg: Pg, name: &str) -> TestDb {
        let db = TestDb::named(pg, name);
        psql(pg, &db.admin_url, &format!("CREATE DATABASE \"{name}\""));
        db
    }

    /// Drop the database at this point of the test, where the test means it to go;
    /// panics if the server refuses (unlike the drop at the end, which ignores errors).
    pub fn drop_now(self) {
        drop_db(self.pg, &self.name);
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Never panics: the test may already be unwinding.
        let _ = Command::new(&self.psql)
            .args([
                "-X",
                "-q",
                "-d",
                &self.admin_url,
                "-c",
                &drop_sql(&self.name),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Exact row count of every user table, as `schema.table -> rows`.
pub fn table_counts(pg: Pg, url: &str) -> BTreeMap<String, i64> {
    let tables = psql(
        pg,
        url,
        "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r','p') AND NOT c.relispartition \
           AND n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg_toast%' \
         ORDER BY 1",
    );
    tables
        .lines()
        .map(|t| {
            let (s, n) = t.split_once('.').unwrap();
            let rows: i64 = psql(pg, url, &format!("SELECT count(*) FROM \"{s}\".\"{n}\""))
                .parse()
                .unwrap();
            (t.to_string(), rows)
        })
        .collect()
}

/// The binary, with an environment cleared of every setting it reads, JSON logs.
pub fn runner() -> Command {
    let mut cmd = Command::new(bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("LEAFLOCK_BACKUP_")
            || k.starts_with("PG")
            || k.starts_with("POSTGRES")
            || k.starts_with("BACKUP_")
            || k.starts_with("AWS_")
            || k == "DATABASE_URL"
        {
            cmd.env_remove(k);
        }
    }
    cmd.env("LEAFLOCK_BACKUP_LOG_FORMAT", "json")
        .stdin(Stdio::null());
    cmd
}

/// The database whose backups a test keeps under each prefix: set by [`s3_run`], read by
/// [`s3_cmd`], so that the read commands act on that database (`--database`), as an
/// operator's would with the same settings.
fn prefix_databases() -> &'static std::sync::Mutex<HashMap<String, String>> {
    static M: OnceLock<std::sync::Mutex<HashMap<String, String>>> = OnceLock::new();
    M.get_or_init(Default::default)
}

/// Make [`s3_cmd`] act on `db` under `prefix` (when a test backs up several
/// databases under one prefix).
pub fn use_database(prefix: &str, db: &str) {
    prefix_databases()
        .lock()
        .unwrap()
        .insert(prefix.to_string(), db.to_string());
}

/// The database a PostgreSQL URL names.
pub fn url_dbname(url: &str) -> String {
    let path = url.rsplit('/').next().unwrap_or_default();
    path.split('?').next().unwrap_or_default().to_string()
}

/// A `run` against the test bed's S3 under `prefix`, with metrics grouped under
/// `metrics_db`.
pub fn s3_run(db_url: &str, prefix: &str, metrics_db: &str) -> Command {
    prefix_databases()
        .lock()
        .unwrap()
        .insert(prefix.to_string(), url_dbname(db_url));
    let mut cmd = runner();
    cmd.arg("run")
        .env("LEAFLOCK_BACKUP_DATABASE_URL", db_url)
        .env("LEAFLOCK_BACKUP_PUSHGATEWAY_URL", testbed().pushgateway())
        .env("LEAFLOCK_BACKUP_METRICS_DATABASE", metrics_db);
    s3_env(&mut cmd, prefix);
    cmd
}

/// Another subcommand (`list`, `verify`, `restore`, `drill`) against the test bucket,
/// acting on the database last backed up under `prefix` by [`s3_run`] (if any).
pub fn s3_cmd(sub: &str, prefix: &str) -> Command {
    let mut cmd = runner();
    cmd.arg(sub);
    s3_env(&mut cmd, prefix);
    if let Some(db) = prefix_databases().lock().unwrap().get(prefix) {
        cmd.env("LEAFLOCK_BACKUP_DATABASE", db);
    }
    cmd
}

/// What a finished run printed, with its log parsed.
pub struct RunResult {
    pub code: i32,
    pub stderr: String,
    pub stdout: String,
    pub lines: Vec<serde_json::Value>,
}

impl RunResult {
    pub fn from_output(out: Output) -> RunResult {
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let lines = stderr
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        RunResult {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).to_string(),
            stderr,
            lines,
        }
    }

    /// The first log line whose `msg` contains `needle`.
    pub fn line(&self, needle: &str) -> Option<&serde_json::Value> {
        self.lines
            .iter()
            .find(|l| l["msg"].as_str().is_some_and(|m| m.contains(needle)))
    }

    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "exit status; log:\n{}", self.stderr);
        self
    }
}

pub fn run(mut cmd: Command) -> RunResult {
    RunResult::from_output(cmd.output().expect("the binary runs"))
}

/// A runtime for the async helpers (S3, HTTP) in synchronous tests.
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

pub fn s3() -> aws_sdk_s3::Client {
    let tb = testbed();
    let creds = aws_sdk_s3::config::Credentials::new(
        tb.var("LEAFLOCK_TEST_S3_ACCESS_KEY"),
        tb.var("LEAFLOCK_TEST_S3_SECRET_KEY"),
        None,
        None,
        "test",
    );
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new(
            tb.var("LEAFLOCK_TEST_S3_REGION"),
        ))
        .endpoint_url(tb.s3_endpoint())
        .credentials_provider(creds)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Every object key under `prefix` in the test bucket.
pub fn s3_keys(prefix: &str) -> Vec<String> {
    rt().block_on(async {
        let out = s3()
            .list_objects_v2()
            .bucket(testbed().bucket())
            .prefix(prefix)
            .send()
            .await
            .expect("list objects");
        out.contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect()
    })
}

/// The keys under `prefix/` that end with `suffix`, in order.
pub fn keys_ending(prefix: &str, suffix: &str) -> Vec<String> {
    let mut k: Vec<String> = s3_keys(&format!("{prefix}/"))
        .into_iter()
        .filter(|k| k.ends_with(suffix))
        .collect();
    k.sort();
    k
}

/// The one key under `prefix/` that ends with `suffix`; panics unless there is exactly one.
pub fn one_key(prefix: &str, suffix: &str) -> String {
    let k = keys_ending(prefix, suffix);
    assert_eq!(k.len(), 1, "one {suffix} under {prefix}: {k:?}");
    k[0].clone()
}

/// The only two keys under `prefix/`: the manifest and the object ending in
/// `object_suffix`, with the manifest parsed and the object read.
pub fn manifest_and_object(prefix: &str, object_suffix: &str) -> (String, Value, String, Vec<u8>) {
    let keys = s3_keys(&format!("{prefix}/"));
    assert_eq!(keys.len(), 2, "one object and one manifest: {keys:?}");
    let mkey = keys
        .iter()
        .find(|k| k.ends_with(".manifest.json"))
        .expect("a manifest")
        .clone();
    let okey = keys
        .iter()
        .find(|k| k.ends_with(object_suffix))
        .unwrap_or_else(|| panic!("an object ending in {object_suffix}: {keys:?}"))
        .clone();
    let manifest: Value = serde_json::from_slice(&s3_get(&mkey)).expect("manifest is JSON");
    let object = s3_get(&okey);
    (mkey, manifest, okey, object)
}

/// The state after a failed run: nothing at all under `prefix/` (no object, no
/// manifest) and no open multipart upload.
pub fn assert_nothing_left(prefix: &str) {
    assert_eq!(
        s3_keys(&format!("{prefix}/")),
        Vec::<String>::new(),
        "no object, no manifest under {prefix}"
    );
    assert_eq!(
        s3_open_uploads(&format!("{prefix}/")),
        Vec::<String>::new(),
        "no open multipart upload under {prefix}"
    );
}

pub fn s3_get(key: &str) -> Vec<u8> {
    rt().block_on(async {
        s3().get_object()
            .bucket(testbed().bucket())
            .key(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("get {key}: {e:?}"))
            .body
            .collect()
            .await
            .unwrap()
            .to_vec()
    })
}

/// The object at `key`, parsed as JSON.
pub fn s3_json(key: &str) -> Value {
    serde_json::from_slice(&s3_get(key)).unwrap()
}

pub fn s3_put(key: &str, data: Vec<u8>) {
    rt().block_on(async {
        s3().put_object()
            .bucket(testbed().bucket())
            .key(key)
            .body(data.into())
            .send()
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
    })
}

/// The environment that points a command at the test bucket under `prefix`.
pub fn s3_env(cmd: &mut Command, prefix: &str) {
    let tb = testbed();
    cmd.env(
        "LEAFLOCK_BACKUP_S3_BUCKET",
        format!("s3://{}/{prefix}", tb.bucket()),
    )
    .env("LEAFLOCK_BACKUP_S3_ENDPOINT", tb.s3_endpoint())
    .env(
        "LEAFLOCK_BACKUP_S3_ACCESS_KEY",
        tb.var("LEAFLOCK_TEST_S3_ACCESS_KEY"),
    )
    .env(
        "LEAFLOCK_BACKUP_S3_SECRET_KEY",
        tb.var("LEAFLOCK_TEST_S3_SECRET_KEY"),
    )
    .env(
        "LEAFLOCK_BACKUP_S3_REGION",
        tb.var("LEAFLOCK_TEST_S3_REGION"),
    );
}

/// Databases on `pg` whose name starts with `prefix`.
pub fn databases_like(pg: Pg, prefix: &str) -> Vec<String> {
    psql(
        pg,
        &pg.admin_url(),
        &format!("SELECT datname FROM pg_database WHERE starts_with(datname, '{prefix}')"),
    )
    .lines()
    .map(str::to_string)
    .collect()
}

/// Multipart uploads still open under `prefix`.
pub fn s3_open_uploads(prefix: &str) -> Vec<String> {
    rt().block_on(async {
        let out = s3()
            .list_multipart_uploads()
            .bucket(testbed().bucket())
            .prefix(prefix)
            .send()
            .await
            .expect("list multipart uploads");
        out.uploads()
            .iter()
            .map(|u| format!("{} {}", u.key().unwrap_or(""), u.upload_id().unwrap_or("")))
            .collect()
    })
}

/// The values of the test's Pushgateway group, as `metric{labels} -> value` from the
/// Pushgateway's own `/metrics` page (what Prometheus would scrape).
pub fn pushed_metrics(database: &str) -> BTreeMap<String, f64> {
    let url = format!("{}/metrics", testbed().pushgateway());
    let body = rt()
        .block_on(async { reqwest::get(&url).await?.text().await })
        .expect("Pushgateway answers");
    let needle = format!("database=\"{database}\"");
    body.lines()
        .filter(|l| l.starts_with("leaflock_") && l.contains(&needle))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let labels: Vec<&str> = series
                .split_once('{')
                .map(|(_, rest)| rest.trim_end_matches('}').split(',').collect())
                .unwrap_or_default();
            let name = series.split('{').next().unwrap();
            let kept: Vec<&str> = labels
                .into_iter()
                .filter(|l| l.starts_with("status=") || l.starts_with("le="))
                .collect();
            let key = if kept.is_empty() {
                name.to_string()
            } else {
                format!("{name}{{{}}}", kept.join(","))
            };
            Some((key, value.parse().ok()?))
        })
        .collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

pub fn gunzip(data: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data)
        .read_to_end(&mut out)
        .expect("valid gzip");
    out
}

/// Restore a custom-format archive into a new database `name` with `pg_restore`.
pub fn pg_restore_into(pg: Pg, archive: &[u8], name: &str) -> TestDb {
    let db = TestDb::empty(pg, name);
    let url = db.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dump.pgdump");
    std::fs::write(&file, archive).unwrap();
    let out = Command::new(pg.tool("pg_restore"))
        .args(["--no-owner", "--exit-on-error", "-d", &url])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    db
}

/// Wait until `f` returns `Some`, polling every 50 ms, or panic after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Direct children of `pid` (all threads), from /proc.
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    out
}

/// `pid` and every process below it.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        out.extend(children(out[i]));
        i += 1;
    }
    out
}

pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// The dumping pg_dump child of the runner `pid`, once it exists.
pub fn pg_dump_child(pid: u32) -> Option<u32> {
    children(pid).into_iter().find(|c| {
        let cl = cmdline(*c);
        // Not the short-lived `pg_dump --version` probes.
        cl.contains("pg_dump") && cl.contains("--snapshot")
    })
}

pub fn kill(pid: u32, sig: i32) {
    // SAFETY: sending a signal to a pid; no memory is shared.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// A TCP port nothing listens on.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The test bed's bucket with Object Lock enabled (created on first use).
pub fn object_lock_bucket() -> &'static str {
    let bucket = "leaflock-test-lock";
    rt().block_on(async {
        let r = s3()
            .create_bucket()
            .bucket(bucket)
            .object_lock_enabled_for_bucket(true)
            .send()
            .await;
        if let Err(e) = r {
            let code = aws_sdk_s3::error::ProvideErrorMetadata::code(&e)
                .unwrap_or("")
                .to_string();
            assert!(
                code.starts_with("BucketAlready"),
                "create the lock bucket: {e:?}"
            );
        }
    });
    bucket
}

//! Fault injection against the real servers: whatever breaks, a run either completes a
//! backup that verifies, or exits 1 leaving nothing that could be mistaken for one (no
//! manifest, no object at a final key, no open multipart upload, no `.partial` file) and
//! pushes `status="failure"`. Faults are injected at the network (the `faultproxy`
//! binary in front of S3, PostgreSQL or the Pushgateway), by signals, by a dedicated
//! PostgreSQL restarted mid-dump, and by full or read-only file systems.

mod common;

use common::proxy;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SUCCESS: &str = "leaflock_backups_total{status=\"success\"}";
const FAILURE: &str = "leaflock_backups_total{status=\"failure\"}";

fn s3_upstream() -> String {
    proxy::host_port(&testbed().s3_endpoint())
}

/// Keys under `prefix/` split into (manifests, other objects).
fn stored(prefix: &str) -> (Vec<String>, Vec<String>) {
    s3_keys(&format!("{prefix}/"))
        .into_iter()
        .partition(|k| k.ends_with(".manifest.json"))
}

/// Either one verified backup (object + manifest, `verify` exits 0) or nothing.
fn assert_backup_or_nothing(prefix: &str) -> bool {
    assert_eq!(
        s3_open_uploads(&format!("{prefix}/")),
        Vec::<String>::new(),
        "no open multipart upload under {prefix}"
    );
    let (manifests, mut objects) = stored(prefix);
    objects.retain(|k| !k.ends_with(".drill.json"));
    if manifests.is_empty() {
        assert_eq!(objects, Vec::<String>::new(), "an object without manifest");
        return false;
    }
    assert_eq!(manifests.len(), 1, "{manifests:?}");
    assert_eq!(objects.len(), 1, "{objects:?}");
    let v = run(s3_cmd("verify", prefix));
    v.expect_code(0);
    true
}

fn pushed(group: &str) -> (f64, f64) {
    let m = pushed_metrics(group);
    (
        m.get(SUCCESS).copied().unwrap_or(0.0),
        m.get(FAILURE).copied().unwrap_or(0.0),
    )
}

/// The error line the run ended with.
fn final_error(r: &RunResult) -> String {
    r.lines
        .iter()
        .rev()
        .find(|l| l["level"] == "error" && l["exit_code"].is_number())
        .and_then(|l| l["msg"].as_str())
        .unwrap_or_else(|| panic!("no final error line: {}", r.stderr))
        .to_string()
}

/// A run to S3 through `proxy`, with a few attempts per request and small parts.
fn run_via(db_url: &str, prefix: &str, group: &str, proxy: &proxy::Proxy) -> Command {
    let mut cmd = s3_run(db_url, prefix, group);
    cmd.env("LEAFLOCK_BACKUP_S3_ENDPOINT", proxy.url())
        .env("LEAFLOCK_BACKUP_PART_SIZE", "5MiB")
        .env("LEAFLOCK_BACKUP_S3_MAX_ATTEMPTS", "4");
    cmd
}

// ---------------------------------------------------------------------------------
// S3
// ---------------------------------------------------------------------------------

#[test]
fn transient_s3_faults_are_retried_with_backoff_and_the_backup_verifies() {
    let name = unique("s3transient");
    let db = TestDb::leaflock(Pg::V15, &name, 12);
    let url = db.url.clone();
    let prefix = unique("s3transient");
    // Every kind of request meets a transient fault first: starting the upload (500),
    // each part (a reset mid-body, then 503 SlowDown twice), completing (500), the
    // manifest (503).
    let proxy = proxy::start(
        &s3_upstream(),
        &[
            "--fault",
            "status=500,first=1,method=POST,match=?uploads",
            "--fault",
            "reset,first=1,method=PUT,match=partNumber=",
            "--fault",
            "status=503,first=2,method=PUT,match=partNumber=",
            "--fault",
            "status=500,first=1,method=POST,match=uploadId=",
            "--fault",
            "status=503,first=1,method=PUT,match=.manifest.json",
        ],
    );
    let started = Instant::now();
    let r = run(run_via(&url, &prefix, &name, &proxy));
    let took = started.elapsed();
    r.expect_code(0);
    let log = proxy.log();
    assert_eq!(log.matches("-> 500 InternalError").count(), 2, "{log}");
    assert_eq!(log.matches("-> 503 SlowDown").count(), 3, "{log}");
    assert_eq!(log.matches("-> reset").count(), 1, "{log}");
    assert!(assert_backup_or_nothing(&prefix), "a backup was made");
    assert_eq!(pushed(&name), (1.0, 0.0));

    // Backoff: the three attempts at part 1 that failed, and the one that passed, are
    // spaced by growing random waits (standard retry mode: full jitter over 200 ms x 2^n).
    let part1: Vec<u64> = proxy
        .events("partNumber=1&")
        .into_iter()
        .map(|(ms, _)| ms)
        .collect();
    assert!(part1.len() >= 4, "{log}");
    let gaps: Vec<u64> = part1.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("retry gaps of part 1 (ms): {gaps:?}; run took {took:?}");
    assert!(
        gaps.iter().sum::<u64>() < 20_000,
        "retries are quick: {gaps:?}"
    );
}

#[test]
fn a_drill_record_that_cannot_be_written_fails_the_run_and_keeps_the_backup() {
    let name = unique("drillrecord");
    let db = TestDb::leaflock(Pg::V15, &name, 6);
    let url = db.url.clone();
    let prefix = unique("drillrecord");
    // The backup and its drill go through; every write of the drill record fails.
    let proxy = proxy::start(
        &s3_upstream(),
        &["--fault", "status=500,method=PUT,match=.drill.json"],
    );
    let mut cmd = run_via(&url, &prefix, &name, &proxy);
    cmd.env("LEAFLOCK_BACKUP_S3_MAX_ATTEMPTS", "2")
        .arg("--restore-drill");
    let r = run(cmd);
    // A drill that passed but is on record nowhere is not a verified backup: exit 1,
    // and both the backup and the drill are pushed as failures.
    r.expect_code(1);
    let msg = final_error(&r);
    assert!(msg.contains("drill: "), "{msg}");
    assert!(msg.contains("could not write the drill record"), "{msg}");
    assert!(proxy.log().matches("-> 500 InternalError").count() >= 2);
    // The backup itself is whole and kept; no drill record claims anything.
    assert!(assert_backup_or_nothing(&prefix));
    let (_, objects) = stored(&prefix);
    assert!(
        !objects.iter().any(|k| k.ends_with(".drill.json")),
        "{objects:?}"
    );
    let m = pushed_metrics(&name);
    assert_eq!(m.get(FAILURE), Some(&1.0), "{m:?}");
    assert_eq!(
        m.get("leaflock_restore_drills_total{status=\"failure\"}"),
        Some(&1.0),
        "{m:?}"
    );
}

#[test]
fn persistent_s3_faults_exit_1_leave_nothing_and_push_failure() {
    let name = unique("s3persist");
    let db = TestDb::leaflock(Pg::V15, &name, 8);
    let url = db.url.clone();
    // (fault, what the final error must say)
    let cases: [(&str, &str); 5] = [
        ("status=500,method=PUT,match=partNumber=", "InternalError"),
        ("status=503,method=PUT,match=partNumber=", "SlowDown"),
        ("status=403,method=PUT,match=partNumber=", "AccessDenied"),
        ("reset,method=PUT,match=partNumber=", "upload of part 1"),
        ("status=500,method=POST,match=uploadId=", "cannot complete"),
    ];
    for (i, (fault, says)) in cases.iter().enumerate() {
        let prefix = unique("s3persist");
        let group = unique("s3persist_group");
        let proxy = proxy::start(&s3_upstream(), &["--fault", fault]);
        let mut cmd = run_via(&url, &prefix, &group, &proxy);
        cmd.env("LEAFLOCK_BACKUP_S3_MAX_ATTEMPTS", "3");
        let started = Instant::now();
        let r = run(cmd);
        r.expect_code(1);
        let msg = final_error(&r);
        assert!(msg.contains("upload: "), "case {i}: names the stage: {msg}");
        assert!(msg.contains(says), "case {i}: {msg}");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "case {i} gave up in time"
        );
        assert_nothing_left(&prefix);
        assert_eq!(pushed(&group), (0.0, 1.0), "case {i}");
        // 403 is not retried; the others were, three attempts each.
        let injected = proxy.log().lines().filter(|l| !l.ends_with("pass")).count();
        if fault.contains("403") {
            assert_eq!(injected, 1, "{}", proxy.log());
        } else {
            assert!(injected >= 3, "{}", proxy.log());
        }
    }
}

#[test]
fn s3_that_stops_accepting_connections_leaves_an_upload_the_next_run_aborts() {
    let name = unique("s3refuse");
    let db = TestDb::leaflock(Pg::V15, &name, 8);
    let url = db.url.clone();
    let prefix = unique("s3refuse");
    // The upload starts, then S3 becomes unreachable: not even the abort gets through.
    let proxy = proxy::start(
        &s3_upstream(),
        &["--fault", "refuse,method=PUT,match=partNumber="],
    );
    let mut cmd = run_via(&url, &prefix, &name, &proxy);
    cmd.env("LEAFLOCK_BACKUP_S3_MAX_ATTEMPTS", "2");
    let r = run(cmd);
    r.expect_code(1);
    let msg = final_error(&r);
    assert!(msg.contains("upload: "), "{msg}");
    assert!(
        r.stderr.contains("could not discard the partial upload")
            || r.stderr.contains("abort after a failed upload also failed"),
        "{}",
        r.stderr
    );
    assert_eq!(stored(&prefix), (vec![], vec![]), "no object, no manifest");
    let open = s3_open_uploads(&format!("{prefix}/"));
    assert_eq!(open.len(), 1, "the abort could not reach S3: {open:?}");
    assert_eq!(pushed(&name), (0.0, 1.0));

    // A grace period protects it from the next run ...
    std::thread::sleep(Duration::from_millis(1100));
    run(s3_run(&url, &prefix, &name)).expect_code(0);
    assert_eq!(s3_open_uploads(&format!("{prefix}/")).len(), 1);
    // ... until it is older than the grace period.
    std::thread::sleep(Duration::from_millis(1100));
    let mut next = s3_run(&url, &prefix, &name);
    next.env("LEAFLOCK_BACKUP_ORPHAN_GRACE", "1s");
    let r = run(next);
    r.expect_code(0);
    assert!(
        r.line("aborted an unfinished upload").is_some(),
        "{}",
        r.stderr
    );
    assert_eq!(s3_open_uploads(&format!("{prefix}/")), Vec::<String>::new());
    assert_eq!(pushed(&name), (2.0, 1.0));
}

// ---------------------------------------------------------------------------------
// The runner killed
// ---------------------------------------------------------------------------------

/// Delays (ms after start) at which the runner is signalled: fixed points from the
/// first connection to the last part, then three drawn at random from a seed that is
/// printed (`LEAFLOCK_TEST_SEED=N` replays them).
const KILL_POINTS_MS: [u64; 5] = [250, 700, 1300, 2200, 3500];

fn kill_points() -> Vec<u64> {
    use rand::{Rng, SeedableRng};
    let seed = std::env::var("LEAFLOCK_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut points = KILL_POINTS_MS.to_vec();
    points.extend((0..3).map(|_| rng.random_range(100..4000)));
    eprintln!("kill points {points:?} ms (LEAFLOCK_TEST_SEED={seed} replays them)");
    points
}

fn slow_spawn(url: &str, prefix: &str, group: &str, proxy: &proxy::Proxy) -> std::process::Child {
    let mut cmd = run_via(url, prefix, group, proxy);
    cmd.env("LEAFLOCK_BACKUP_PARTS_IN_FLIGHT", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn().expect("the binary starts")
}

#[test]
fn sigterm_at_any_point_leaves_a_verified_backup_or_nothing() {
    let name = unique("sigterm_pts");
    let db = TestDb::leaflock(Pg::V15, &name, 20);
    let url = db.url.clone();
    let proxy = proxy::throttle(&s3_upstream(), 3_000_000);
    for at in kill_points() {
        let prefix = unique("sigterm_pts");
        let group = unique("sigterm_pts_group");
        let child = slow_spawn(&url, &prefix, &group, &proxy);
        std::thread::sleep(Duration::from_millis(at));
        kill(child.id(), libc::SIGTERM);
        let r = RunResult::from_output(child.wait_with_output().unwrap());
        let made = assert_backup_or_nothing(&prefix);
        match r.code {
            0 => assert!(made, "SIGTERM at {at} ms: exit 0 without a backup"),
            1 => {
                assert!(!made, "SIGTERM at {at} ms: exit 1 but a backup exists");
                assert!(r.stderr.contains("SIGTERM"), "{}", r.stderr);
                assert_eq!(pushed(&group), (0.0, 1.0), "SIGTERM at {at} ms");
            }
            c => panic!("SIGTERM at {at} ms: exit {c}: {}", r.stderr),
        }
    }
}

#[test]
fn after_sigkill_the_next_run_and_prune_remove_the_orphans() {
    let name = unique("sigkill_pts");
    let db = TestDb::leaflock(Pg::V15, &name, 20);
    let url = db.url.clone();
    let proxy = proxy::throttle(&s3_upstream(), 3_000_000);
    let prefix = unique("sigkill_pts");
    let mut orphans = 0;
    for at in kill_points() {
        let mut child = slow_spawn(&url, &prefix, &name, &proxy);
        std::thread::sleep(Duration::from_millis(at));
        kill(child.id(), libc::SIGKILL);
        let _ = child.wait();
        orphans += s3_open_uploads(&format!("{prefix}/")).len();
        std::thread::sleep(Duration::from_millis(1100)); // a new key each time
    }
    assert!(
        orphans >= 1,
        "SIGKILL mid-upload leaves an open upload (no handler runs)"
    );
    // Debris that is not ours stays: an old-script archive, a foreign object.
    let legacy = format!("{prefix}/2026/01/01/leaflock_backup_20260101_020000.sql.gz.enc");
    let foreign = format!("{prefix}/notes.txt");
    s3_put(&legacy, b"Salted__old".to_vec());
    s3_put(&foreign, b"not ours".to_vec());
    // And an object of ours without manifest, as if killed between complete and manifest.
    let debris = format!("{prefix}/2026/01/02/leaflock_backup_20260102T020000Z.dump.gz");
    s3_put(&debris, b"half".to_vec());

    // prune --dry-run removes nothing; prune with grace 0 removes the debris.
    let mut dry = s3_cmd("prune", &prefix);
    dry.args(["--keep-last", "10", "--dry-run", "--orphan-grace", "0"])
        .args(["--database-url", &url]);
    run(dry).expect_code(0);
    assert!(!s3_open_uploads(&format!("{prefix}/")).is_empty());
    let mut prune = s3_cmd("prune", &prefix);
    prune
        .args(["--keep-last", "10", "--orphan-grace", "0"])
        .args(["--database-url", &url]);
    let r = run(prune);
    r.expect_code(0);
    assert!(
        r.line("aborted an unfinished upload").is_some(),
        "{}",
        r.stderr
    );
    assert!(r.line("it has no manifest").is_some(), "{}", r.stderr);
    assert_eq!(s3_open_uploads(&format!("{prefix}/")), Vec::<String>::new());
    let keys = s3_keys(&format!("{prefix}/"));
    assert!(!keys.contains(&debris), "{keys:?}");
    assert!(
        keys.contains(&legacy) && keys.contains(&foreign),
        "{keys:?}"
    );
    // Every remaining object of ours has its manifest.
    for k in keys.iter().filter(|k| k.contains(".dump.")) {
        let m = format!("{}.manifest.json", k.split(".dump.").next().unwrap());
        assert!(keys.contains(&m), "{k} without manifest: {keys:?}");
    }

    // One more kill, then a plain run with grace 0 cleans up before its own upload.
    let mut child = slow_spawn(&url, &prefix, &name, &proxy);
    wait_for(Duration::from_secs(20), "an upload to start", || {
        (!s3_open_uploads(&format!("{prefix}/")).is_empty()).then_some(())
    });
    kill(child.id(), libc::SIGKILL);
    let _ = child.wait();
    std::thread::sleep(Duration::from_millis(1100));
    let mut next = s3_run(&url, &prefix, &name);
    next.env("LEAFLOCK_BACKUP_ORPHAN_GRACE", "0");
    let r = run(next);
    r.expect_code(0);
    assert!(
        r.line("aborted an unfinished upload").is_some(),
        "{}",
        r.stderr
    );
    assert_eq!(s3_open_uploads(&format!("{prefix}/")), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------

/// A throwaway PostgreSQL 15 of this test alone (own port and data directory), so it
/// can be restarted or filled without touching the shared test bed.
struct OwnPg {
    dir: tempfile::TempDir,
    port: u16,
}

fn as_postgres(cmd: &[&str]) -> Command {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut c = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]);
        c.args(cmd);
        c
    } else {
        let mut c = Command::new(cmd[0]);
        c.args(&cmd[1..]);
        c
    };
    c.current_dir("/");
    c
}

fn chown_postgres(p: &Path) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let ok = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(p)
            .status()
            .unwrap()
            .success();
        assert!(ok, "chown {}", p.display());
    }
}

impl OwnPg {
    fn start() -> OwnPg {
        let dir = tempfile::Builder::new()
            .prefix("leaflock-ownpg")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        chown_postgres(dir.path());
        let data = dir.path().join("data");
        let bin = Pg::V15.bin_dir();
        let out = as_postgres(&[
            bin.join("initdb").to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
        ])
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pg = OwnPg {
            port: closed_port(),
            dir,
        };
        pg.ctl("start");
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn ctl(&self, what: &str) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.data().display()
        );
        let out = as_postgres(&[
            Pg::V15.bin_dir().join("pg_ctl").to_str().unwrap(),
            "-D",
            self.data().to_str().unwrap(),
            "-o",
            &opts,
            "-m",
            "fast",
            "-w",
            "-l",
            self.dir.path().join("log").to_str().unwrap(),
            what,
        ])
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn url(&self, db: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for OwnPg {
    fn drop(&mut self) {
        let _ = as_postgres(&[
            Pg::V15.bin_dir().join("pg_ctl").to_str().unwrap(),
            "-D",
            self.data().to_str().unwrap(),
            "-m",
            "immediate",
            "stop",
        ])
        .output();
    }
}

fn own_psql(url: &str, sql: &str) -> String {
    psql(Pg::V15, url, sql)
}

fn generate(url: &str, name: &str, size_mb: u32) {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/generate-db.sh"))
        .args(["--url", url, "--database", name])
        .args(["--size-mb", &size_mb.to_string()])
        .arg("--psql")
        .arg(Pg::V15.tool("psql"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "generate-db.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn postgres_restarted_mid_dump_fails_the_dump_cleanly() {
    let pg = OwnPg::start();
    generate(&pg.url("postgres"), "notes", 40);
    let prefix = unique("pgrestart");
    let group = unique("pgrestart_group");
    let proxy = proxy::throttle(&s3_upstream(), 1_000_000);
    let mut cmd = run_via(&pg.url("notes"), &prefix, &group, &proxy);
    cmd.env("LEAFLOCK_BACKUP_PARTS_IN_FLIGHT", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    wait_for(Duration::from_secs(30), "pg_dump to start", || {
        pg_dump_child(child.id())
    });
    std::thread::sleep(Duration::from_millis(1500));
    pg.ctl("restart");
    let r = RunResult::from_output(child.wait_with_output().unwrap());
    r.expect_code(1);
    let msg = final_error(&r);
    assert!(msg.contains("dump: pg_dump exited"), "{msg}");
    assert_nothing_left(&prefix);
    assert_eq!(pushed(&group), (0.0, 1.0));
    // The server is back and the next run works.
    let mut next = runner();
    let dir = tempfile::tempdir().unwrap();
    next.args(["run", "--database-url", &pg.url("notes")])
        .arg("--local-dir")
        .arg(dir.path());
    run(next).expect_code(0);
}

#[test]
fn postgres_connection_cut_mid_dump_fails_the_dump_cleanly() {
    let name = unique("pgcut");
    let db = TestDb::leaflock(Pg::V15, &name, 40);
    let url = db.url.clone();
    let pg_addr = url.split('@').nth(1).unwrap().split('/').next().unwrap();
    let mut pgproxy = proxy::start(pg_addr, &["--tcp"]);
    let via = url.replace(pg_addr, &pgproxy.addr());
    let prefix = unique("pgcut");
    let s3proxy = proxy::throttle(&s3_upstream(), 1_000_000);
    let mut cmd = run_via(&via, &prefix, &name, &s3proxy);
    cmd.env("LEAFLOCK_BACKUP_PARTS_IN_FLIGHT", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    wait_for(Duration::from_secs(30), "pg_dump to start", || {
        pg_dump_child(child.id())
    });
    std::thread::sleep(Duration::from_millis(1500));
    pgproxy.kill();
    let r = RunResult::from_output(child.wait_with_output().unwrap());
    r.expect_code(1);
    let msg = final_error(&r);
    assert!(msg.contains("dump: pg_dump exited"), "{msg}");
    assert!(!r.stderr.contains(&testbed().pg_password()));
    assert_nothing_left(&prefix);
    assert_eq!(pushed(&name), (0.0, 1.0));
}

#[test]
fn a_tiny_statement_timeout_on_the_database_does_not_break_backups() {
    // LeafLock may set statement_timeout for its role or database; pg_dump and
    // pg_restore opt out for their sessions, and so do the runner's row counts.
    let name = unique("stmt_timeout");
    let db = TestDb::leaflock(Pg::V15, &name, 2);
    let url = db.url.clone();
    psql(
        Pg::V15,
        &Pg::V15.admin_url(),
        &format!(
            "ALTER DATABASE \"{name}\" SET statement_timeout = '1ms'; \
             ALTER DATABASE \"{name}\" SET idle_in_transaction_session_timeout = '50ms'"
        ),
    );
    // The setting does bite ordinary sessions.
    let out = Command::new(Pg::V15.tool("psql"))
        .args(["-X", "-At", "-d", &url, "-c"])
        .arg("SELECT count(*) FROM generate_series(1, 3000000)")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("statement timeout"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let prefix = unique("stmt_timeout");
    let mut cmd = s3_run(&url, &prefix, &name);
    cmd.arg("--restore-drill");
    let r = run(cmd);
    r.expect_code(0);
    assert!(assert_backup_or_nothing(&prefix));
}

/// A tmpfs of `size` mounted on a new directory, or `None` where mounting is not
/// allowed (not root, no CAP_SYS_ADMIN); unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str, extra: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let opts = if extra.is_empty() {
            format!("size={size},mode=0755")
        } else {
            format!("size={size},mode=0755,{extra}")
        };
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &opts, "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
            return None;
        }
        Some(Tmpfs { dir })
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn drill_database_disk_full_fails_the_drill_keeps_the_backup_and_drops_the_scratch() {
    let Some(fs) = Tmpfs::mount("12m", "") else {
        return;
    };
    let pg = OwnPg::start();
    let ts = fs.path().join("ts");
    std::fs::create_dir(&ts).unwrap();
    chown_postgres(&ts);
    own_psql(
        &pg.url("postgres"),
        &format!("CREATE TABLESPACE small LOCATION '{}'", ts.display()),
    );
    // New databases (the drill's scratch one, from template0) land on the small disk.
    own_psql(
        &pg.url("postgres"),
        "ALTER DATABASE template0 SET TABLESPACE small",
    );
    let name = unique("diskfull");
    let db = TestDb::leaflock(Pg::V15, &name, 20);
    let url = db.url.clone();
    let prefix = unique("diskfull");
    let mut cmd = s3_run(&url, &prefix, &name);
    cmd.args([
        "--restore-drill",
        "--drill-database-url",
        &pg.url("postgres"),
    ]);
    let r = run(cmd);
    r.expect_code(1);
    let msg = final_error(&r);
    assert!(msg.contains("drill: "), "{msg}");
    assert!(
        r.stderr.contains("No space left on device") || r.stderr.contains("could not extend file"),
        "{}",
        r.stderr
    );
    // The backup is kept and intact; the scratch database is gone.
    assert!(assert_backup_or_nothing(&prefix));
    let left = own_psql(
        &pg.url("postgres"),
        "SELECT count(*) FROM pg_database WHERE datname LIKE 'leaflock_drill_%'",
    );
    assert_eq!(left, "0");
    let m = pushed_metrics(&name);
    assert_eq!(m.get(FAILURE), Some(&1.0), "{m:?}");
}

// ---------------------------------------------------------------------------------
// Local directory
// ---------------------------------------------------------------------------------

fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

#[test]
fn local_disk_full_leaves_no_file_at_all() {
    let Some(fs) = Tmpfs::mount("256k", "") else {
        return;
    };
    let name = unique("localfull");
    let db = TestDb::leaflock(Pg::V15, &name, 12);
    let url = db.url.clone();
    let mut cmd = runner();
    cmd.args(["run", "--database-url", &url])
        .arg("--local-dir")
        .arg(fs.path())
        .args(["--compression", "gzip:1"])
        .env("LEAFLOCK_BACKUP_PUSHGATEWAY_URL", testbed().pushgateway())
        .env("LEAFLOCK_BACKUP_METRICS_DATABASE", &name);
    let r = run(cmd);
    r.expect_code(1);
    let msg = final_error(&r);
    assert!(msg.contains("upload: "), "{msg}");
    assert!(msg.contains("No space left on device"), "{msg}");
    assert_eq!(files(fs.path()), Vec::<String>::new(), "nothing left");
    assert_eq!(pushed(&name), (0.0, 1.0));
}

#[test]
fn read_only_local_directory_fails_before_dumping() {
    let Some(fs) = Tmpfs::mount("1m", "ro") else {
        return;
    };
    let name = unique("localro");
    let db = TestDb::leaflock(Pg::V15, &name, 1);
    let url = db.url.clone();
    let mut cmd = runner();
    cmd.args(["run", "--database-url", &url])
        .arg("--local-dir")
        .arg(fs.path());
    let r = run(cmd);
    r.expect_code(1);
    let msg = final_error(&r);
    assert!(msg.contains("destination: "), "{msg}");
    assert!(msg.contains("Read-only file system"), "{msg}");
    assert!(r.line("pg_dump").is_none(), "no dump started: {}", r.stderr);
    assert_eq!(files(fs.path()), Vec::<String>::new());
}

#[test]
fn local_partial_files_of_killed_runs_are_removed_after_the_grace_period() {
    let name = unique("localkill");
    let db = TestDb::leaflock(Pg::V15, &name, 1);
    let url = db.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let day = dir.path().join("backups/2026/01/01");
    std::fs::create_dir_all(&day).unwrap();
    let partial = day.join(".leaflock_backup_20260101T010101Z.dump.gz.partial-1-00000001");
    std::fs::write(&partial, b"half").unwrap();
    let noman = day.join("leaflock_backup_20260101T010101Z.dump.gz");
    std::fs::write(&noman, b"whole but no manifest").unwrap();
    let legacy = day.join("leaflock_backup_20260101_010101.sql.gz.enc");
    std::fs::write(&legacy, b"Salted__").unwrap();

    let local_run = |grace: &str| {
        let mut cmd = runner();
        cmd.args(["run", "--database-url", &url, "--orphan-grace", grace])
            .arg("--local-dir")
            .arg(dir.path());
        run(cmd)
    };
    local_run("1h").expect_code(0);
    assert!(partial.exists() && noman.exists(), "young debris stays");
    std::thread::sleep(Duration::from_millis(1100));
    let r = local_run("1s");
    r.expect_code(0);
    assert!(!partial.exists() && !noman.exists(), "{}", r.stderr);
    assert!(legacy.exists(), "old-script archives are never debris");
    assert!(!files(dir.path()).iter().any(|f| f.contains(".partial")));
}

// ---------------------------------------------------------------------------------
// Pushgateway
// ---------------------------------------------------------------------------------

fn local_run_with_pgw(url: &str, dir: &Path, pgw: &str, group: &str) -> RunResult {
    let mut cmd = runner();
    cmd.args(["run", "--database-url", url])
        .arg("--local-dir")
        .arg(dir)
        .env("LEAFLOCK_BACKUP_PUSHGATEWAY_URL", pgw)
        .env("LEAFLOCK_BACKUP_PUSHGATEWAY_TIMEOUT", "1")
        .env("LEAFLOCK_BACKUP_METRICS_DATABASE", group);
    run(cmd)
}

fn manifests_in(dir: &Path) -> usize {
    files(dir)
        .iter()
        .filter(|f| f.ends_with(".manifest.json"))
        .count()
}

#[test]
fn pushgateway_slow_or_refusing_keeps_the_backup_and_counters_continue() {
    let name = unique("pgwfaults");
    let db = TestDb::leaflock(Pg::V15, &name, 1);
    let url = db.url.clone();
    let group = unique("pgwfaults_group");
    let dir = tempfile::tempdir().unwrap();
    let pgw = testbed().pushgateway();
    local_run_with_pgw(&url, dir.path(), &pgw, &group).expect_code(0);
    assert_eq!(pushed(&group), (1.0, 0.0));

    // Slow beyond its timeout (every connection held 3 s, the timeout is 1 s).
    let slow = proxy::start(&proxy::host_port(&pgw), &["--tcp", "--latency-ms", "3000"]);
    std::thread::sleep(Duration::from_millis(1100));
    let started = Instant::now();
    let r = local_run_with_pgw(&url, dir.path(), &slow.url(), &group);
    r.expect_code(0);
    assert!(started.elapsed() < Duration::from_secs(20));
    let warn = r
        .lines
        .iter()
        .find(|l| l["level"] == "warn" && l["msg"].as_str().unwrap().contains("could not push"))
        .unwrap_or_else(|| panic!("a warning naming the Pushgateway: {}", r.stderr));
    assert!(
        warn["msg"].as_str().unwrap().contains(&slow.url()),
        "{warn}"
    );
    assert_eq!(manifests_in(dir.path()), 2, "the backup is kept");

    // 400, as the Pushgateway answers a push whose metric types conflict with what
    // someone else pushed.
    let refusing = proxy::start(
        &proxy::host_port(&pgw),
        &["--fault", "status=400,method=PUT"],
    );
    std::thread::sleep(Duration::from_millis(1100));
    let r = local_run_with_pgw(&url, dir.path(), &refusing.url(), &group);
    r.expect_code(0);
    let warn = r
        .lines
        .iter()
        .find(|l| l["level"] == "warn" && l["msg"].as_str().unwrap().contains("could not push"))
        .unwrap_or_else(|| panic!("a warning naming the Pushgateway: {}", r.stderr));
    assert!(r.stderr.contains("400"), "{warn}");
    assert_eq!(manifests_in(dir.path()), 3, "the backup is kept");

    // The next run continues the counters from what the Pushgateway holds (the two
    // runs whose push failed are missing from them; nothing restarts at zero).
    std::thread::sleep(Duration::from_millis(1100));
    local_run_with_pgw(&url, dir.path(), &pgw, &group).expect_code(0);
    let (ok, failed) = pushed(&group);
    assert_eq!((ok, failed), (2.0, 0.0), "continued from 1");
}

#[test]
fn pushgateway_down_during_a_failed_backup_exits_1() {
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let dir = tempfile::tempdir().unwrap();
    let bad_db = format!("postgresql://u:pw@127.0.0.1:{}/notes", closed_port());
    let r = local_run_with_pgw(&bad_db, dir.path(), &dead, &unique("pgwdown_fail"));
    r.expect_code(1);
    assert!(final_error(&r).contains("database: "), "{}", r.stderr);
    assert!(r.stderr.contains(&dead), "{}", r.stderr);
}

// ---------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------

#[test]
fn two_runs_started_together_one_completes_one_exits_3() {
    let name = unique("together");
    let db = TestDb::leaflock(Pg::V15, &name, 4);
    let url = db.url.clone();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let children: Vec<_> = dirs
        .iter()
        .map(|d| {
            let mut cmd = runner();
            cmd.args(["run", "--database-url", &url])
                .arg("--local-dir")
                .arg(d.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            cmd.spawn().unwrap()
        })
        .collect();
    let results: Vec<RunResult> = children
        .into_iter()
        .map(|c| RunResult::from_output(c.wait_with_output().unwrap()))
        .collect();
    let mut codes: Vec<i32> = results.iter().map(|r| r.code).collect();
    codes.sort();
    assert_eq!(
        codes,
        vec![0, 3],
        "{:?}",
        results.iter().map(|r| &r.stderr).collect::<Vec<_>>()
    );
    for (r, d) in results.iter().zip(&dirs) {
        let n = manifests_in(d.path());
        assert_eq!(n, usize::from(r.code == 0), "{}", r.stderr);
        assert!(!files(d.path()).iter().any(|f| f.contains(".partial")));
    }
}

// ---------------------------------------------------------------------------------
// A short soak: the same checks as scripts/soak.sh, five runs.
// ---------------------------------------------------------------------------------

#[test]
fn short_soak_through_random_transient_faults() {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/soak.sh"))
        .args(["--runs", "5", "--size-mb", "2"])
        .env("LEAFLOCK_BACKUP_BIN", bin())
        .env("LEAFLOCK_FAULTPROXY_BIN", proxy::bin())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "soak failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["runs"], 5);
    assert_eq!(summary["open_uploads"], 0);
    assert_eq!(summary["debris"], 0);
}

// ---------------------------------------------------------------------------------
// A store that ignores a protection
// ---------------------------------------------------------------------------------

/// A store that answers 200 to a PUT asking for SSE or Object Lock but applies neither
/// (Garage does: its HEAD carries no encryption or retention header), emulated by
/// stripping those headers from the HEAD answers: the run fails (exit 1) naming what
/// was not applied, and leaves no object; with `--allow-unapplied-protection` it is
/// stored with a warning. The real store's HEAD, unstripped, passes the same check.
#[test]
fn a_protection_the_store_does_not_apply_fails_the_run_and_leaves_nothing() {
    let name = unique("unapplied");
    let db = TestDb::leaflock(Pg::V15, &name, 2);
    for (strip, flags, what) in [
        (
            "x-amz-server-side-encryption",
            vec!["--sse", "AES256"],
            "the store did not apply SSE-S3",
        ),
        (
            "x-amz-object-lock",
            vec!["--object-lock-days", "1"],
            "the store did not apply Object Lock",
        ),
    ] {
        let fault = format!("strip={strip},method=HEAD");
        let proxy = proxy::start(&s3_upstream(), &["--fault", &fault]);
        let prefix = unique("unapplied");
        let mut cmd = run_via(&db.url, &prefix, &name, &proxy);
        cmd.args(&flags);
        if strip == "x-amz-object-lock" {
            cmd.env(
                "LEAFLOCK_BACKUP_S3_BUCKET",
                format!("s3://{}/{prefix}", object_lock_bucket()),
            );
        }
        let r = run(cmd);
        r.expect_code(1);
        assert!(r.stderr.contains(what), "{what}:\n{}", r.stderr);
        let bucket_prefix = if strip == "x-amz-object-lock" {
            None
        } else {
            Some(prefix.clone())
        };
        if let Some(p) = bucket_prefix {
            assert_nothing_left(&p);
        }

        // Allowed: stored, with the warning.
        let prefix2 = unique("unapplied_ok");
        let mut cmd = run_via(&db.url, &prefix2, &name, &proxy);
        cmd.args(&flags).arg("--allow-unapplied-protection");
        if strip == "x-amz-object-lock" {
            cmd.env(
                "LEAFLOCK_BACKUP_S3_BUCKET",
                format!("s3://{}/{prefix2}", object_lock_bucket()),
            );
        }
        let r = run(cmd);
        r.expect_code(0);
        assert!(r.stderr.contains(what), "{}", r.stderr);
        assert!(
            r.stderr.contains("--allow-unapplied-protection says"),
            "{}",
            r.stderr
        );
    }

    // Through the store itself, the same request is applied and read back: success.
    let prefix = unique("applied");
    let mut cmd = s3_run(&db.url, &prefix, &name);
    cmd.args(["--sse", "AES256"]);
    run(cmd).expect_code(0);
}

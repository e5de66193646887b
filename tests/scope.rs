//! Nothing can silently erase a backup: per-database keys and scope, manifests dated
//! in the future, the regression gate, and prune under the run lock, against real
//! PostgreSQL, a real S3 server (SeaweedFS), real files and a real Pushgateway.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.path().is_dir() {
                walk(root, &e.path(), out);
            } else {
                out.push(
                    e.path()
                        .strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn objects(dir: &Path) -> Vec<String> {
    files(dir)
        .into_iter()
        .filter(|f| f.contains(".dump."))
        .collect()
}

/// `run` of `url` into `dir`, metrics grouped under `group`.
fn local_run(url: &str, dir: &Path, group: &str) -> Command {
    let mut cmd = runner();
    cmd.args(["run", "--database-url", url])
        .arg("--local-dir")
        .arg(dir)
        .env("LEAFLOCK_BACKUP_PUSHGATEWAY_URL", testbed().pushgateway())
        .env("LEAFLOCK_BACKUP_METRICS_DATABASE", group);
    cmd
}

/// A read command (`list`, `verify`, ...) on database `db`'s backups in `dir`.
fn local_cmd(sub: &str, dir: &Path, db: &str) -> Command {
    let mut cmd = runner();
    cmd.arg(sub)
        .arg("--local-dir")
        .arg(dir)
        .args(["--database", db]);
    cmd
}

/// `prune` of `db`'s backups in `dir`, under the run lock on the PG15 server.
fn local_prune(dir: &Path, db: &str) -> Command {
    let mut cmd = local_cmd("prune", dir, db);
    cmd.args(["--database-url", &Pg::V15.admin_url()]);
    cmd
}

fn list_json(mut cmd: Command) -> Vec<Value> {
    cmd.arg("--json");
    let r = run(cmd);
    r.expect_code(0);
    serde_json::from_str::<Value>(&r.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
        .as_array()
        .unwrap()
        .clone()
}

fn the_key(r: &RunResult) -> String {
    r.line("backup complete").expect("a backup was made")["key"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Copy the backup at `key` in `dir` to a new key dated `ts` (`20310101T020000Z`) in
/// the same database's keys, its manifest re-dated to match; returns the new key.
fn redated(dir: &Path, key: &str, ts: &str) -> String {
    let manifest_path = |k: &str| dir.join(k.replace(".dump.gz", ".manifest.json"));
    let mut m: Value = serde_json::from_slice(&std::fs::read(manifest_path(key)).unwrap()).unwrap();
    let scope = key.split('/').nth(1).unwrap();
    let new_key = format!(
        "backups/{scope}/{}/{}/{}/leaflock_backup_{ts}_f0f0f0.dump.gz",
        &ts[0..4],
        &ts[4..6],
        &ts[6..8]
    );
    let iso = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &ts[0..4],
        &ts[4..6],
        &ts[6..8],
        &ts[9..11],
        &ts[11..13],
        &ts[13..15]
    );
    m["started_at"] = iso.clone().into();
    m["finished_at"] = iso.into();
    m["object_key"] = new_key.clone().into();
    let target = dir.join(&new_key);
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::copy(dir.join(key), &target).unwrap();
    std::fs::write(manifest_path(&new_key), serde_json::to_vec(&m).unwrap()).unwrap();
    new_key
}

#[test]
fn a_future_dated_manifest_is_an_anomaly_never_latest_never_a_reason_to_delete() {
    let name = unique("future");
    let db = TestDb::leaflock(Pg::V15, &name, 1);
    let url = db.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let group = unique("future_group");

    let first = the_key(run(local_run(&url, d, &group)).expect_code(0));
    assert!(
        first.starts_with(&format!("backups/{name}/")),
        "the key carries the database: {first}"
    );
    // A host whose clock ran years ahead once took a backup.
    let future = redated(d, &first, "20310101T020000Z");
    std::thread::sleep(Duration::from_millis(1100));

    let mut second = local_run(&url, d, &group);
    second.args(["--keep-last", "1"]);
    let r = run(second);
    r.expect_code(0);
    let own = the_key(&r);
    let left = objects(d);
    assert!(
        left.contains(&own),
        "the run's own backup is kept: {left:?}"
    );
    assert!(
        left.contains(&future),
        "the anomaly is never deleted by a policy: {left:?}"
    );
    assert!(
        !left.contains(&first),
        "keep-last 1 counts real backups only, so the older real one goes: {left:?}"
    );
    let warn = r
        .line("anomaly")
        .unwrap_or_else(|| panic!("a warning names the anomaly: {}", r.stderr));
    assert_eq!(warn["key"], Value::from(future.clone()));
    assert_eq!(
        pushed_metrics(&group).get("leaflock_backup_future_dated_backups"),
        Some(&1.0)
    );

    // latest is the real newest, in every command that takes it.
    let v = run(local_cmd("verify", d, &name));
    v.expect_code(0);
    assert!(v.stdout.contains(&own), "{}", v.stdout);
    let entries = list_json(local_cmd("list", d, &name));
    let latest: Vec<&str> = entries
        .iter()
        .filter(|e| e["latest"] == true)
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(latest, vec![own.as_str()]);
    let anomaly = entries
        .iter()
        .find(|e| e["key"] == future.as_str())
        .unwrap();
    assert!(
        anomaly["anomaly"]
            .as_str()
            .unwrap()
            .contains("in the future"),
        "{anomaly}"
    );
    let table = run(local_cmd("list", d, &name));
    assert!(table.stdout.contains("FUTURE-DATED"), "{}", table.stdout);

    // prune, with last-N and with GFS rules, deletes nothing real either.
    for policy in [
        &["--keep-last", "1"][..],
        &["--keep-daily", "1", "--keep-monthly", "1"],
    ] {
        let mut p = local_prune(d, &name);
        p.args(policy);
        run(p).expect_code(0);
        let left = objects(d);
        assert!(
            left.contains(&own) && left.contains(&future),
            "{policy:?}: {left:?}"
        );
    }
}

/// Two databases in one destination, backed up in the same second: keys apart,
/// retention and `latest` per database.
fn two_databases_in(dest: &dyn Fn(&mut Command), keys: &dyn Fn() -> Vec<String>) {
    let a = unique("share_a");
    let b = unique("share_b");
    let a_db = TestDb::leaflock(Pg::V15, &a, 1);
    let url_a = a_db.url.clone();
    let b_db = TestDb::leaflock(Pg::V15, &b, 1);
    let url_b = b_db.url.clone();
    let spawn = |url: &str, extra: &[&str]| {
        let mut cmd = runner();
        cmd.args(["run", "--database-url", url])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        dest(&mut cmd);
        cmd.spawn().unwrap()
    };
    let (ra, rb) = (spawn(&url_a, &[]), spawn(&url_b, &[]));
    let ra = RunResult::from_output(ra.wait_with_output().unwrap());
    let rb = RunResult::from_output(rb.wait_with_output().unwrap());
    ra.expect_code(0);
    rb.expect_code(0);
    let (ka, kb) = (the_key(&ra), the_key(&rb));
    assert_ne!(ka, kb);
    assert!(
        ka.contains(&format!("/{a}/")) && kb.contains(&format!("/{b}/")),
        "{ka} {kb}"
    );

    // Two more runs of A with keep-last 1: B's backup stays.
    std::thread::sleep(Duration::from_millis(1100));
    let ka2 = the_key(&RunResult::from_output(
        spawn(&url_a, &["--keep-last", "1"])
            .wait_with_output()
            .unwrap(),
    ));
    let all = keys();
    assert!(all.contains(&kb), "B's backup untouched: {all:?}");
    assert!(all.contains(&ka2), "{all:?}");
    assert!(!all.contains(&ka), "A's older backup pruned: {all:?}");

    // latest and list per database.
    for (db, want, not) in [(&a, &ka2, &kb), (&b, &kb, &ka2)] {
        let mut v = runner();
        v.args(["verify", "--database", db]);
        dest(&mut v);
        let v = run(v);
        v.expect_code(0);
        assert!(v.stdout.contains(want.as_str()), "{db}: {}", v.stdout);
        let mut l = runner();
        l.args(["list", "--database", db]);
        dest(&mut l);
        let l = run(l);
        assert!(
            l.stdout.contains(want.as_str()) && !l.stdout.contains(not.as_str()),
            "{}",
            l.stdout
        );
    }
    let mut all_dbs = runner();
    all_dbs.args(["list", "--all-databases", "--database", &a]);
    dest(&mut all_dbs);
    let l = run(all_dbs);
    assert!(
        l.stdout.contains(&ka2) && l.stdout.contains(&kb),
        "{}",
        l.stdout
    );
}

#[test]
fn two_databases_share_a_bucket_and_a_directory_without_touching_each_other() {
    let prefix = unique("shared");
    two_databases_in(&|c: &mut Command| s3_env(c, &prefix), &|| {
        s3_keys(&format!("{prefix}/"))
    });
    let dir = tempfile::tempdir().unwrap();
    let root: PathBuf = dir.path().to_path_buf();
    let r2 = root.clone();
    two_databases_in(
        &move |c: &mut Command| {
            c.arg("--local-dir").arg(&r2);
        },
        &|| objects(&root),
    );
}

#[test]
fn a_table_emptied_between_two_runs_makes_a_suspect_that_holds_retention_until_accepted() {
    let name = unique("suspect");
    let db = TestDb::leaflock(Pg::V15, &name, 1);
    let url = db.url.clone();
    psql(
        Pg::V15,
        &url,
        "CREATE TABLE ledger AS SELECT g AS id, md5(g::text) AS line FROM generate_series(1, 1000) g",
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let group = unique("suspect_group");
    let first = the_key(run(local_run(&url, d, &group)).expect_code(0));

    psql(Pg::V15, &url, "DELETE FROM ledger WHERE id > 10");
    std::thread::sleep(Duration::from_millis(1100));
    let mut second = local_run(&url, d, &group);
    second.args(["--keep-last", "1"]);
    let r = run(second);
    r.expect_code(0);
    let suspect = the_key(&r);
    let line = r
        .line("suspect backup")
        .unwrap_or_else(|| panic!("one line says why: {}", r.stderr));
    let msg = line["msg"].as_str().unwrap();
    assert!(
        msg.contains("public.ledger fell from 1000 to 10 rows"),
        "{msg}"
    );
    assert!(msg.contains(&first), "names the reference: {msg}");
    assert!(
        objects(d).contains(&first),
        "nothing is deleted on a suspect's account"
    );
    assert_eq!(
        pushed_metrics(&group).get("leaflock_backup_suspect_backups"),
        Some(&1.0)
    );
    let table = run(local_cmd("list", d, &name));
    assert!(table.stdout.contains("SUSPECT"), "{}", table.stdout);
    // latest is the last good backup until an operator accepts the suspect.
    let v = run(local_cmd("verify", d, &name));
    assert!(v.stdout.contains(&first), "{}", v.stdout);

    // prune refuses while the newest backup is an unaccepted suspect.
    let mut refused = local_prune(d, &name);
    refused.args(["--keep-last", "1"]);
    let p = run(refused);
    p.expect_code(1);
    assert!(p.stderr.contains("is suspect"), "{}", p.stderr);
    assert!(objects(d).contains(&first));

    // The operator deleted those rows on purpose: accept, and retention resumes.
    let mut accept = local_prune(d, &name);
    accept.args(["--accept-suspect", &suspect, "--keep-last", "1"]);
    run(accept).expect_code(0);
    let left = objects(d);
    assert_eq!(left, vec![suspect.clone()], "{left:?}");
    let entries = list_json(local_cmd("list", d, &name));
    let e = entries
        .iter()
        .find(|e| e["key"] == suspect.as_str())
        .unwrap();
    assert!(e["suspect"]["accepted_at"].is_string(), "{e}");
    assert_eq!(e["latest"], true, "{e}");

    // The next run compares with the accepted backup: nothing suspect any more.
    std::thread::sleep(Duration::from_millis(1100));
    let r = run(local_run(&url, d, &group));
    r.expect_code(0);
    assert!(r.line("suspect backup").is_none(), "{}", r.stderr);
    assert_eq!(
        pushed_metrics(&group).get("leaflock_backup_suspect_backups"),
        Some(&0.0)
    );
}

#[test]
fn prune_takes_the_run_lock_and_a_concurrent_sweep_leaves_a_live_upload_alone() {
    // A long backup of database x on PG15 ...
    let name = unique("live");
    let db15 = TestDb::leaflock(Pg::V15, &name, 20);
    let url15 = db15.url.clone();
    let db18 = TestDb::leaflock(Pg::V18, &name, 1);
    let url18 = db18.url.clone();
    let prefix = unique("live");
    let proxy = proxy::throttle(&proxy::host_port(&testbed().s3_endpoint()), 1_000_000);
    let mut slow = s3_run(&url15, &prefix, &unique("live_group"));
    slow.env("LEAFLOCK_BACKUP_S3_ENDPOINT", proxy.url())
        .env("LEAFLOCK_BACKUP_PART_SIZE", "5MiB")
        .env("LEAFLOCK_BACKUP_PARTS_IN_FLIGHT", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = slow.spawn().unwrap();
    wait_for(Duration::from_secs(30), "the upload starts", || {
        (!s3_open_uploads(&format!("{prefix}/")).is_empty()).then_some(())
    });

    // ... a prune of x on the same server waits for nothing and exits 3 ...
    let mut prune = s3_cmd("prune", &prefix);
    prune.args([
        "--keep-last",
        "1",
        "--orphan-grace",
        "0",
        "--database-url",
        &url15,
    ]);
    let p = run(prune);
    p.expect_code(3);
    assert!(p.stderr.contains("holds the lock"), "{}", p.stderr);

    // ... and a run of a database of the same name on another server (same scope, not
    // the same lock) sweeps debris older than 8 s while the upload is 10 s old but got
    // its last part moments ago: the live upload is left alone.
    std::thread::sleep(Duration::from_secs(10));
    let mut other = s3_run(&url18, &prefix, &unique("live_group18"));
    other
        .env("LEAFLOCK_BACKUP_ORPHAN_GRACE", "8s")
        .env("PATH", Pg::V18.path_env());
    let o = run(other);
    o.expect_code(0);
    assert!(
        o.line("aborted an unfinished upload").is_none(),
        "{}",
        o.stderr
    );
    let slow = RunResult::from_output(child.wait_with_output().unwrap());
    slow.expect_code(0);
    drop(proxy);
}

#[test]
fn prune_during_another_prune_exits_3() {
    let name = unique("prune_lock");
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("prune_lock");
    // A slow store makes the first prune last: every request waits 1.5 s.
    let proxy = proxy::start(
        &proxy::host_port(&testbed().s3_endpoint()),
        &["--latency-ms", "1500"],
    );
    let mut first = s3_cmd("prune", &prefix);
    first
        .args(["--keep-last", "1", "--database", &name])
        .args(["--database-url", &Pg::V15.admin_url()])
        .env("LEAFLOCK_BACKUP_S3_ENDPOINT", proxy.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = first.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let mut second = local_prune(dir.path(), &name);
    second.args(["--keep-last", "1"]);
    let r = run(second);
    r.expect_code(3);
    assert!(r.stderr.contains("holds the lock"), "{}", r.stderr);
    RunResult::from_output(child.wait_with_output().unwrap()).expect_code(0);
}

#[test]
fn retention_deletes_nothing_while_the_local_clock_disagrees_with_the_stores() {
    let name = unique("skew");
    let db = TestDb::leaflock(Pg::V15, &name, 1);
    let url = db.url.clone();
    let prefix = unique("skew");
    let group = unique("skew_group");
    let first = the_key(run(s3_run(&url, &prefix, &group)).expect_code(0));
    std::thread::sleep(Duration::from_millis(1100));
    // The same run on a host whose clock is 10 minutes ahead (SigV4 still accepts it).
    let skewed = |sub: Command| faketime("+10m", &sub);
    let mut second = s3_run(&url, &prefix, &group);
    second.args(["--keep-last", "1", "--clock-tolerance", "1m"]);
    let r = run(skewed(second));
    r.expect_code(0);
    assert!(
        r.line("disagree").is_some(),
        "the skew is said: {}",
        r.stderr
    );
    let refused = r
        .line("retention failed")
        .unwrap_or_else(|| panic!("retention refuses: {}", r.stderr));
    assert!(
        refused["error"].as_str().unwrap().contains("clock"),
        "{refused}"
    );
    let keys = s3_keys(&format!("{prefix}/"));
    assert!(keys.contains(&first), "nothing deleted: {keys:?}");
    // prune on that host refuses too (exit 1); on a correct clock it proceeds.
    let mut prune = s3_cmd("prune", &prefix);
    prune.args([
        "--keep-last",
        "1",
        "--clock-tolerance",
        "1m",
        "--database-url",
        &url,
    ]);
    let p = run(skewed(prune));
    p.expect_code(1);
    assert!(p.stderr.contains("disagree"), "{}", p.stderr);
    // On a correct clock, the skewed host's backup is 10 minutes in the future: an
    // anomaly, so keep-last 1 keeps the older real one (and never deletes the anomaly);
    // with a tolerance above the skew, the newer one counts and the older one goes.
    let second = the_key(&r);
    let mut prune = s3_cmd("prune", &prefix);
    prune.args(["--keep-last", "1", "--database-url", &url]);
    let p = run(prune);
    p.expect_code(0);
    let keys = s3_keys(&format!("{prefix}/"));
    assert!(keys.contains(&first) && keys.contains(&second), "{keys:?}");
    assert!(p.line("anomaly").is_some(), "{}", p.stderr);
    let mut prune = s3_cmd("prune", &prefix);
    prune.args([
        "--keep-last",
        "1",
        "--clock-tolerance",
        "15m",
        "--database-url",
        &url,
    ]);
    run(prune).expect_code(0);
    let keys = s3_keys(&format!("{prefix}/"));
    assert!(!keys.contains(&first) && keys.contains(&second), "{keys:?}");
}

#[test]
fn a_manifest_that_cannot_be_read_is_listed_as_bad_and_never_deleted() {
    use base64::Engine;
    let name = unique("unreadable");
    let db = TestDb::leaflock(Pg::V15, &name, 1);
    let url = db.url.clone();
    let prefix = unique("unreadable");
    let group = unique("unreadable_group");
    let ssec = || base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
    // A backup written with an SSE-C key that was later rotated: its manifest cannot
    // be read with the new key (the store answers 400/403).
    let (old_key, new_key) = (ssec(), ssec());
    let mut first = s3_run(&url, &prefix, &group);
    first.env("LEAFLOCK_BACKUP_SSE_C_KEY", &old_key);
    let first = the_key(run(first).expect_code(0));
    std::thread::sleep(Duration::from_millis(1100));
    let mut second = s3_run(&url, &prefix, &group);
    second
        .env("LEAFLOCK_BACKUP_SSE_C_KEY", &new_key)
        .args(["--keep-last", "1"]);
    let r = run(second);
    r.expect_code(0);
    assert!(r.line("bad manifest").is_some(), "{}", r.stderr);
    let mut list = s3_cmd("list", &prefix);
    list.env("LEAFLOCK_BACKUP_SSE_C_KEY", &new_key);
    let l = run(list);
    l.expect_code(0);
    assert!(l.stdout.contains("BAD MANIFEST"), "{}", l.stdout);
    let mut prune = s3_cmd("prune", &prefix);
    prune.env("LEAFLOCK_BACKUP_SSE_C_KEY", &new_key).args([
        "--keep-last",
        "1",
        "--database-url",
        &url,
    ]);
    run(prune).expect_code(0);
    let keys = s3_keys(&format!("{prefix}/"));
    assert!(keys.contains(&first), "never deleted: {keys:?}");
    assert!(
        keys.contains(&first.replace(".dump.gz", ".manifest.json")),
        "{keys:?}"
    );
}

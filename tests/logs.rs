//! The JSON log lines as LeafLock's log panels read them: every line that ends a unit
//! of work (the upload, the backup, the drill, retention, the metrics push, the whole
//! run, a restore, a verification, a prune, a failed command) carries `latency` beside
//! `component` and `request_id`, and it is the same figure as `duration_seconds`.

mod common;

use common::*;
use serde_json::Value;

/// Every line of `r` whose `msg` starts with `prefix`; at least one.
fn ends<'a>(r: &'a RunResult, prefix: &str) -> Vec<&'a Value> {
    let found: Vec<&Value> = r
        .lines
        .iter()
        .filter(|l| l["msg"].as_str().is_some_and(|m| m.starts_with(prefix)))
        .collect();
    assert!(
        !found.is_empty(),
        "no line starting with {prefix:?}; log:\n{}",
        r.stderr
    );
    found
}

/// The end-of-work contract on one line.
fn assert_end_of_work(line: &Value) {
    assert_eq!(line["component"], "backup", "{line}");
    assert!(
        line["request_id"].as_str().is_some_and(|id| !id.is_empty()),
        "no request_id: {line}"
    );
    let latency = line["latency"]
        .as_f64()
        .unwrap_or_else(|| panic!("no numeric latency: {line}"));
    assert!(latency >= 0.0, "{line}");
    assert_eq!(
        line["latency"], line["duration_seconds"],
        "latency is not duration_seconds: {line}"
    );
}

/// Every line of a log is JSON, and every line with a duration carries it as latency.
fn assert_every_duration_is_a_latency(r: &RunResult) {
    assert_eq!(
        r.lines.len(),
        r.stderr.lines().count(),
        "a log line is not JSON:\n{}",
        r.stderr
    );
    for l in &r.lines {
        assert_eq!(l["component"], "backup", "{l}");
        if l.get("duration_seconds").is_some() {
            assert_end_of_work(l);
        }
    }
}

#[test]
fn every_end_of_work_line_carries_latency_over_a_whole_run() {
    let name = unique("logs");
    let db = TestDb::leaflock(Pg::V15, &name, 1);
    let url = db.url.clone();
    let prefix = unique("logs");

    // A whole run: backup, drill, retention, metrics.
    let mut cmd = s3_run(&url, &prefix, &name);
    cmd.args(["--restore-drill", "--keep-last", "3"]);
    let r = run(cmd);
    r.expect_code(0);
    assert_every_duration_is_a_latency(&r);
    for end in [
        "upload complete",
        "backup complete",
        "restore drill passed",
        "retention applied",
        "metrics pushed",
        "run complete",
    ] {
        for l in ends(&r, end) {
            assert_end_of_work(l);
        }
    }
    // One request id for the whole run, and the run's latency covers its parts.
    let ids: std::collections::BTreeSet<&str> = r
        .lines
        .iter()
        .filter_map(|l| l["request_id"].as_str())
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let latency = |msg: &str| ends(&r, msg)[0]["latency"].as_f64().unwrap();
    assert!(latency("run complete") >= latency("backup complete"));
    assert!(latency("run complete") >= latency("restore drill passed"));
    assert!(latency("backup complete") >= latency("upload complete"));

    // The commands that read a stored backup end the same way.
    let mut verify = s3_cmd("verify", &prefix);
    verify.arg("latest");
    let v = run(verify);
    v.expect_code(0);
    assert_every_duration_is_a_latency(&v);
    assert_end_of_work(ends(&v, "intact")[0]);

    let target = TestDb::empty(Pg::V15, &unique("logs_target"));
    let mut restore = s3_cmd("restore", &prefix);
    restore
        .arg("latest")
        .args(["--target-database-url", &target.url, "--yes"]);
    let rs = run(restore);
    rs.expect_code(0);
    assert_every_duration_is_a_latency(&rs);
    assert_end_of_work(ends(&rs, "restore complete")[0]);

    let mut prune = s3_cmd("prune", &prefix);
    prune.args(["--keep-last", "3", "--dry-run", "--database-url", &url]);
    let p = run(prune);
    p.expect_code(0);
    assert_every_duration_is_a_latency(&p);
    assert_end_of_work(ends(&p, "dry run")[0]);

    // A failed run ends with a line that says how long it took, too.
    let mut bad = s3_run(&url, &prefix, &name);
    bad.env("LEAFLOCK_BACKUP_S3_SECRET_KEY", "wrong-secret")
        .env("LEAFLOCK_BACKUP_S3_MAX_ATTEMPTS", "1");
    let f = run(bad);
    f.expect_code(1);
    assert_every_duration_is_a_latency(&f);
    let last = f.lines.last().expect("a last line");
    assert_eq!(last["level"], "error", "{last}");
    assert!(
        last["msg"].as_str().unwrap().starts_with("backup failed"),
        "{last}"
    );
    assert_end_of_work(last);
}

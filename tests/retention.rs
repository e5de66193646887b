//! Retention against real files: backups with chosen dates (real objects and manifests
//! of a real run, re-dated), foreign objects beside them, `prune --dry-run`, `prune`.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One real backup in a fresh directory: (manifest JSON, object bytes).
fn real_backup() -> (Value, Vec<u8>) {
    let name = unique("retention");
    let db = TestDb::leaflock(Pg::V15, &name, 1);
    let url = db.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = runner();
    cmd.args(["run", "--database-url", &url])
        .arg("--local-dir")
        .arg(dir.path());
    run(cmd).expect_code(0);
    let mut files = Vec::new();
    collect(dir.path(), &mut files);
    let m = files
        .iter()
        .find(|p| p.to_string_lossy().ends_with(".manifest.json"))
        .unwrap();
    let o = files
        .iter()
        .find(|p| p.to_string_lossy().ends_with(".dump.gz"))
        .unwrap();
    (
        serde_json::from_slice(&std::fs::read(m).unwrap()).unwrap(),
        std::fs::read(o).unwrap(),
    )
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            collect(&e.path(), out);
        } else {
            out.push(e.path());
        }
    }
}

/// Write a copy of the real backup dated `ts` ("20260131T020000Z") under `root`;
/// returns its object key.
fn dated(root: &Path, manifest: &Value, object: &[u8], ts: &str, drill: Option<bool>) -> String {
    let day = format!("{}/{}/{}", &ts[0..4], &ts[4..6], &ts[6..8]);
    let stem = format!("backups/{day}/leaflock_backup_{ts}");
    let key = format!("{stem}.dump.gz");
    std::fs::create_dir_all(root.join("backups").join(&day)).unwrap();
    std::fs::write(root.join(&key), object).unwrap();
    let mut m = manifest.clone();
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
    m["object_key"] = key.clone().into();
    std::fs::write(
        root.join(format!("{stem}.manifest.json")),
        serde_json::to_vec(&m).unwrap(),
    )
    .unwrap();
    if let Some(passed) = drill {
        let rec = serde_json::json!({
            "format_version": 1, "run_id": "r", "object_key": key,
            "started_at": m["started_at"], "finished_at": m["started_at"], "duration_seconds": 1.0,
            "passed": passed, "failures": [], "server": "s", "scratch_database": "d",
            "scratch_database_kept": false, "pg_restore_version": "v", "tables_checked": 1,
            "rows_checked": 1, "checks_run": 0
        });
        std::fs::write(
            root.join(format!("{stem}.drill.json")),
            serde_json::to_vec(&rec).unwrap(),
        )
        .unwrap();
    }
    key
}

/// `prune` of database `db`'s backups under `root`, holding the run lock on the PG15 server.
fn prune_cmd(root: &Path, db: &str) -> std::process::Command {
    let mut cmd = runner();
    cmd.arg("prune").arg("--local-dir").arg(root).args([
        "--database",
        db,
        "--database-url",
        &Pg::V15.admin_url(),
    ]);
    cmd
}

fn listing(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    collect(root, &mut files);
    let mut keys: Vec<String> = files
        .iter()
        .map(|p| p.strip_prefix(root).unwrap().to_string_lossy().into_owned())
        .collect();
    keys.sort();
    keys
}

#[test]
fn gfs_keeps_exactly_the_expected_set_across_month_and_year_boundaries() {
    let (manifest, object) = real_backup();
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let k = |ts: &str, drill: Option<bool>| dated(r, &manifest, &object, ts, drill);
    let dec30 = k("20251230T020000Z", Some(false)); // a failed drill never protects
    let dec31 = k("20251231T020000Z", None);
    let jan01 = k("20260101T020000Z", Some(true)); // the newest verified backup
    let jan02 = k("20260102T020000Z", None);
    let jan15 = k("20260115T020000Z", None);
    let jan31 = k("20260131T020000Z", None);
    let feb01a = k("20260201T020000Z", None);
    let feb01b = k("20260201T140000Z", None);
    // Foreign objects under the prefix: never candidates.
    std::fs::create_dir_all(r.join("backups/2020/01/01")).unwrap();
    std::fs::write(
        r.join("backups/2020/01/01/leaflock_backup_20200101_000000.sql.gz.enc"),
        b"old",
    )
    .unwrap();
    std::fs::write(r.join("backups/readme.txt"), b"hello").unwrap();
    let before = listing(r);

    let db = manifest["database"].as_str().unwrap().to_string();
    let prune = |dry: bool| {
        let mut cmd = prune_cmd(r, &db);
        cmd.args(["--keep-monthly", "3", "--keep-daily", "2"]);
        if dry {
            cmd.arg("--dry-run");
        }
        run(cmd)
    };

    let dry = prune(true);
    dry.expect_code(0);
    assert_eq!(listing(r), before, "a dry run deletes nothing");
    let would: Vec<&str> = dry
        .lines
        .iter()
        .filter(|l| l["msg"].as_str().unwrap().starts_with("would delete"))
        .map(|l| l["key"].as_str().unwrap())
        .collect();
    let mut expected_gone = vec![
        dec30.as_str(),
        jan02.as_str(),
        jan15.as_str(),
        feb01a.as_str(),
    ];
    expected_gone.sort();
    let mut would_sorted = would.clone();
    would_sorted.sort();
    assert_eq!(would_sorted, expected_gone);
    let reasons = |key: &str| -> Vec<String> {
        dry.lines
            .iter()
            .find(|l| l["key"] == key && l["msg"].as_str().unwrap().starts_with("keep"))
            .unwrap_or_else(|| panic!("{key} kept: {}", dry.stderr))["reasons"]
            .as_str()
            .unwrap()
            .split("; ")
            .map(str::to_string)
            .collect()
    };
    assert!(reasons(&feb01b).contains(&"monthly 2026-02".to_string()));
    assert!(reasons(&jan31).contains(&"daily 2026-01-31".to_string()));
    assert!(reasons(&dec31).contains(&"monthly 2025-12".to_string()));
    assert_eq!(
        reasons(&jan01),
        vec!["newest backup whose restore drill passed".to_string()]
    );
    assert!(
        dry.stderr.contains("beyond the 30 days"),
        "warns about GDPR: {}",
        dry.stderr
    );

    prune(false).expect_code(0);
    let after = listing(r);
    for gone in &expected_gone {
        let stem = gone.trim_end_matches(".dump.gz");
        assert!(
            !after.iter().any(|f| f.starts_with(stem)),
            "{gone} and its companions deleted: {after:?}"
        );
    }
    for kept in [&feb01b, &jan31, &jan01, &dec31] {
        assert!(after.contains(kept), "{kept} kept: {after:?}");
        assert!(after.contains(&kept.replace(".dump.gz", ".manifest.json")));
    }
    assert!(after.contains(&"backups/readme.txt".to_string()));
    assert!(after
        .contains(&"backups/2020/01/01/leaflock_backup_20200101_000000.sql.gz.enc".to_string()));
}

#[test]
fn retention_limits_are_validated_and_a_policy_is_required() {
    let dir = tempfile::tempdir().unwrap();
    let none = prune_cmd(dir.path(), "notes");
    let r = run(none);
    r.expect_code(2);
    assert!(r.stderr.contains("no retention rule"), "{}", r.stderr);

    let mut long = prune_cmd(dir.path(), "notes");
    long.env("BACKUP_RETENTION_DAYS", "45");
    let r = run(long);
    r.expect_code(2);
    assert!(r.stderr.contains("BACKUP_RETENTION_DAYS"), "{}", r.stderr);

    let mut allowed = prune_cmd(dir.path(), "notes");
    allowed.args(["--max-age", "45", "--allow-long-retention"]);
    run(allowed).expect_code(0);
}

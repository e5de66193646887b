//! `leaflock-backup schedule`: the long-lived mode for hosts without cron.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[test]
fn schedule_mode_runs_at_each_slot_and_stops_on_sigterm_between_runs() {
    let name = unique("schedule");
    let db = TestDb::leaflock(Pg::V15, &name, 1);
    let url = db.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = runner();
    cmd.args([
        "schedule",
        "--cron",
        "*/3 * * * * *",
        "--database-url",
        &url,
    ])
    .arg("--local-dir")
    .arg(dir.path())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while log
        .iter()
        .filter(|l: &&String| l.contains("backup complete"))
        .count()
        < 2
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => log.push(l),
            Err(_) => panic!("two runs within a minute; log so far:\n{}", log.join("\n")),
        }
    }
    // Wait until it announces the next slot: it is between runs then (a run of a tiny
    // database takes well under the 3 s interval).
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let l = rx.recv_timeout(left).expect("the next slot is announced");
        let announced = l.contains("next backup at");
        log.push(l);
        if announced {
            break;
        }
    }
    let sent = Instant::now();
    kill(child.id(), libc::SIGTERM);
    let status = child.wait().unwrap();
    reader.join().unwrap();
    log.extend(rx.try_iter());
    assert!(sent.elapsed() < Duration::from_secs(10));
    let all = log.join("\n");
    assert_eq!(status.code(), Some(0), "{all}");
    assert!(all.contains("next backup at"), "{all}");
    assert!(all.contains("SIGTERM"), "{all}");
    let mut manifests = Vec::new();
    fn walk(d: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            if e.path().is_dir() {
                walk(&e.path(), out)
            } else {
                out.push(e.path().display().to_string())
            }
        }
    }
    walk(dir.path(), &mut manifests);
    let n = manifests
        .iter()
        .filter(|p| p.ends_with(".manifest.json"))
        .count();
    assert!(n >= 2, "at least the two runs seen: {manifests:?}");
    // Each run had its own run id.
    let ids: std::collections::HashSet<String> = log
        .iter()
        .filter(|l| l.contains("backup complete"))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["run_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
}

#[test]
fn an_invalid_schedule_exits_2_naming_the_field() {
    let mut cmd = runner();
    cmd.args(["schedule", "--cron", "0 2 * 13 *"])
        .args(["--database-url", "postgresql://u@127.0.0.1:1/db"]);
    let r = run(cmd);
    r.expect_code(2);
    assert!(r.stderr.contains("month field"), "{}", r.stderr);
    let mut missing = runner();
    missing.args([
        "schedule",
        "--database-url",
        "postgresql://u@127.0.0.1:1/db",
    ]);
    let r = run(missing);
    r.expect_code(2);
    assert!(r.stderr.contains("--schedule"), "{}", r.stderr);
    // BACKUP_SCHEDULE, the old job's variable, is honoured.
    let mut legacy = runner();
    legacy
        .args(["next-run", "--count", "1"])
        .env("BACKUP_SCHEDULE", "0 2 * * *");
    let r = run(legacy);
    r.expect_code(0);
    assert!(r.stdout.contains("T02:00:00Z"), "{}", r.stdout);
}

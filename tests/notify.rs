//! Alerts without Prometheus: a notification receiver of the test's own (a small HTTP
//! server on loopback) sees exactly the events of a success, a failure and a failed
//! drill, and the healthchecks-style pings in order; a receiver that is down or never
//! answers changes nothing about the backup.

mod common;

use common::receiver::Receiver;
use common::*;
use std::time::{Duration, Instant};

fn names(events: &[serde_json::Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect()
}

fn notified_run(db_url: &str, dir: &std::path::Path, rx: &Receiver) -> std::process::Command {
    let mut cmd = runner();
    cmd.args(["run", "--database-url", db_url])
        .arg("--local-dir")
        .arg(dir)
        .args(["--notify-url", &rx.url("/hook")])
        .args(["--healthchecks-url", &rx.url("/ping/3f1c")])
        .env_remove("LEAFLOCK_BACKUP_PUSHGATEWAY_URL");
    cmd
}

#[test]
fn success_failure_and_a_failed_drill_send_exactly_their_events_and_pings() {
    let db = TestDb::leaflock(Pg::V15, &unique("notify"), 1);
    let dir = tempfile::tempdir().unwrap();

    // A success.
    let rx = Receiver::start(true);
    run(notified_run(&db.url, dir.path(), &rx)).expect_code(0);
    let ev = rx.events();
    assert_eq!(names(&ev), ["started", "succeeded"], "{ev:?}");
    let done = &ev[1];
    assert_eq!(done["database"], db.name.as_str());
    assert!(done["stored_bytes"].as_u64().unwrap() > 0, "{done}");
    assert!(
        done["key"].as_str().unwrap().ends_with(".dump.gz"),
        "{done}"
    );
    assert_eq!(done["run_id"], ev[0]["run_id"]);
    let pings: Vec<String> = rx.pings().into_iter().map(|p| p.path).collect();
    assert_eq!(pings, ["/ping/3f1c/start", "/ping/3f1c"]);

    // A failure: the database refuses the connection.
    let rx = Receiver::start(true);
    let dead = format!(
        "postgresql://postgres:MARKERpw@127.0.0.1:{}/nothing?sslmode=disable",
        closed_port()
    );
    run(notified_run(&dead, dir.path(), &rx)).expect_code(1);
    let ev = rx.events();
    assert_eq!(names(&ev), ["started", "failed"], "{ev:?}");
    assert!(
        ev[1]["error"].as_str().unwrap().contains("database"),
        "{}",
        ev[1]
    );
    let pings = rx.pings();
    assert_eq!(
        pings.iter().map(|p| p.path.as_str()).collect::<Vec<_>>(),
        ["/ping/3f1c/start", "/ping/3f1c/fail"]
    );
    assert!(
        pings[1].body.contains("error: "),
        "the log's tail: {}",
        pings[1].body
    );
    for g in rx.got.lock().unwrap().iter() {
        assert!(
            !g.body.contains("MARKERpw"),
            "a secret in a notification: {}",
            g.body
        );
    }

    // A failed drill: the backup is kept, the run fails.
    let rx = Receiver::start(true);
    let mut cmd = notified_run(&db.url, dir.path(), &rx);
    cmd.args(["--restore-drill", "--drill-check", "SELECT false"]);
    run(cmd).expect_code(1);
    let ev = rx.events();
    assert_eq!(names(&ev), ["started", "drill_failed", "failed"], "{ev:?}");
    assert!(
        ev[1]["failures"].as_array().is_some_and(|f| !f.is_empty()),
        "{}",
        ev[1]
    );

    // The standalone `drill` command (a weekly drill with a check of its own): passed,
    // then failed, each with its event and pings.
    let drill = |rx: &Receiver, check: &str| {
        let mut cmd = runner();
        cmd.args(["drill", "latest", "--database-url", &db.url])
            .arg("--local-dir")
            .arg(dir.path())
            .args(["--drill-check", check])
            .args(["--notify-url", &rx.url("/hook")])
            .args(["--healthchecks-url", &rx.url("/ping/77aa")])
            .env_remove("LEAFLOCK_BACKUP_PUSHGATEWAY_URL");
        cmd
    };
    let rx = Receiver::start(true);
    run(drill(&rx, "SELECT true")).expect_code(0);
    let ev = rx.events();
    assert_eq!(names(&ev), ["drill_passed"], "{ev:?}");
    assert!(ev[0]["tables_checked"].as_u64().unwrap() > 0, "{}", ev[0]);
    let pings: Vec<String> = rx.pings().into_iter().map(|p| p.path).collect();
    assert_eq!(pings, ["/ping/77aa/start", "/ping/77aa"]);
    let rx = Receiver::start(true);
    run(drill(&rx, "SELECT false")).expect_code(1);
    let ev = rx.events();
    assert_eq!(names(&ev), ["drill_failed"], "{ev:?}");
    let pings = rx.pings();
    assert_eq!(
        pings.iter().map(|p| p.path.as_str()).collect::<Vec<_>>(),
        ["/ping/77aa/start", "/ping/77aa/fail"]
    );
    assert!(pings[1].body.contains("restore drill"), "{}", pings[1].body);
}

#[test]
fn a_receiver_that_is_down_or_never_answers_changes_nothing() {
    let db = TestDb::leaflock(Pg::V15, &unique("notify_down"), 1);
    let dir = tempfile::tempdir().unwrap();
    let down = format!("http://127.0.0.1:{}/hook", closed_port());
    let mut cmd = runner();
    cmd.args(["run", "--database-url", &db.url])
        .arg("--local-dir")
        .arg(dir.path())
        .args(["--notify-url", &down, "--healthchecks-url", &down])
        .env_remove("LEAFLOCK_BACKUP_PUSHGATEWAY_URL");
    let r = run(cmd);
    r.expect_code(0);
    assert!(
        r.stderr.contains("could not send the started notification"),
        "{}",
        r.stderr
    );

    // Accepts, never answers: every request ends at its timeout, three attempts each.
    let slow = Receiver::start(false);
    let mut cmd = runner();
    cmd.args(["run", "--database-url", &db.url])
        .arg("--local-dir")
        .arg(dir.path())
        .args(["--notify-url", &slow.url("/hook"), "--notify-timeout", "1"])
        .env_remove("LEAFLOCK_BACKUP_PUSHGATEWAY_URL");
    let t = Instant::now();
    let r = run(cmd);
    r.expect_code(0);
    // Two events (started, succeeded) x (3 attempts of 1 s + 1.5 s of backoff) = 9 s.
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(slow.events().len(), 6, "three attempts of each event");
}

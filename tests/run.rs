//! `leaflock-backup run` against the real test bed: PostgreSQL 15 and 18, SeaweedFS
//! S3, a Pushgateway. Every failure path ends with the same checks: exit status, no
//! manifest, no object, no open multipart upload, and what reached the Pushgateway.

mod common;

use common::proxy;
use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

const SUCCESS: &str = "leaflock_backups_total{status=\"success\"}";
const FAILURE: &str = "leaflock_backups_total{status=\"failure\"}";

fn manifest_counts(m: &Value) -> BTreeMap<String, i64> {
    m["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                format!(
                    "{}.{}",
                    t["schema"].as_str().unwrap(),
                    t["name"].as_str().unwrap()
                ),
                t["rows"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// The whole promise of `run`: a backup that restores to exactly what was counted.
fn backup_restores_exactly(pg: Pg) {
    let name = unique("roundtrip");
    let db = TestDb::leaflock(pg, &name, 3);
    let url = db.url.clone();
    let prefix = unique("roundtrip");
    let mut cmd = s3_run(&url, &prefix, &name);
    cmd.env("PATH", pg.path_env());
    let r = run(cmd);
    r.expect_code(0);

    let (mkey, m, okey, object) = manifest_and_object(&prefix, ".dump.gz");
    assert!(okey.starts_with(&format!("{prefix}/")), "{okey}");
    assert_eq!(m["object_key"], okey.as_str());
    assert_eq!(m["sha256"], sha256_hex(&object).as_str());
    assert_eq!(m["stored_bytes"].as_u64(), Some(object.len() as u64));
    assert_eq!(m["database"], name.as_str());
    assert_eq!(m["compression"]["algorithm"], "gzip");
    let server_major = m["server_version_num"].as_u64().unwrap() / 10000;
    assert_eq!(server_major, if pg == Pg::V15 { 15 } else { 18 });
    assert!(
        m["pg_dump_version"]
            .as_str()
            .unwrap()
            .contains(&format!(" {server_major}.")),
        "pg_dump of the server's major version: {}",
        m["pg_dump_version"]
    );

    let archive = gunzip(&object);
    assert_eq!(m["uncompressed_bytes"].as_u64(), Some(archive.len() as u64));
    assert!(archive.starts_with(b"PGDMP"));

    let source = table_counts(pg, &url);
    assert!(source.len() >= 20, "all LeafLock tables: {source:?}");
    assert!(
        source.values().all(|n| *n > 0),
        "every table has rows: {source:?}"
    );
    assert_eq!(
        manifest_counts(&m),
        source,
        "manifest counts = source counts"
    );

    let restored = pg_restore_into(pg, &archive, &unique("restored"));
    assert_eq!(
        table_counts(pg, &restored.url),
        source,
        "restored counts = source counts"
    );

    // The log: JSON lines with the contract's fields, and a summary.
    for l in &r.lines {
        assert_eq!(l["component"], "backup", "{l}");
        assert_eq!(l["run_id"], m["run_id"], "{l}");
        assert!(l["level"].is_string() && l["msg"].is_string(), "{l}");
    }
    let summary = r.line("backup complete").expect("a summary line");
    assert_eq!(summary["key"], okey.as_str());
    assert_eq!(summary["manifest_key"], mkey.as_str());
    assert_eq!(summary["stored_bytes"].as_u64(), Some(object.len() as u64));
    assert!(summary["duration_seconds"].as_f64().unwrap() > 0.0);
    assert!(summary["ratio"].as_f64().unwrap() > 0.0);
    assert!(
        !r.stderr.contains(&testbed().pg_password()),
        "password in the log"
    );
}

#[test]
fn pg15_backup_to_s3_restores_with_identical_row_counts() {
    backup_restores_exactly(Pg::V15);
}

#[test]
fn pg18_backup_to_s3_restores_with_identical_row_counts() {
    backup_restores_exactly(Pg::V18);
}

#[test]
fn local_directory_backup_is_complete_and_leaves_no_temporary_file() {
    let name = unique("local");
    let db = TestDb::leaflock(Pg::V15, &name, 1);
    let url = db.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = runner();
    cmd.args(["run", "--database-url", &url])
        .arg("--local-dir")
        .arg(dir.path())
        .args(["--compression", "gzip:1"]);
    run(cmd).expect_code(0);

    let files: Vec<_> = walk(dir.path());
    assert_eq!(files.len(), 2, "object and manifest only: {files:?}");
    let manifest_path = files
        .iter()
        .find(|p| p.ends_with(".manifest.json"))
        .unwrap();
    let object_path = files.iter().find(|p| p.ends_with(".dump.gz")).unwrap();
    assert!(
        object_path.contains("/backups/"),
        "default prefix: {object_path}"
    );
    let m: Value = serde_json::from_slice(&std::fs::read(manifest_path).unwrap()).unwrap();
    let object = std::fs::read(object_path).unwrap();
    assert_eq!(m["sha256"], sha256_hex(&object).as_str());
    assert_eq!(m["compression"]["level"], 1);
    assert!(gunzip(&object).starts_with(b"PGDMP"));
    assert_eq!(manifest_counts(&m), table_counts(Pg::V15, &url));
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

#[test]
fn metrics_accumulate_across_runs_three_successes_one_failure() {
    let name = unique("metrics");
    let db = TestDb::leaflock(Pg::V15, &name, 1);
    let url = db.url.clone();
    let prefix = unique("metrics");
    let group = unique("metrics_group");
    for _ in 0..3 {
        // Keys have one-second resolution: never start two runs in the same second.
        std::thread::sleep(Duration::from_millis(1100));
        run(s3_run(&url, &prefix, &group)).expect_code(0);
    }
    let after_success = pushed_metrics(&group);
    let mut cmd = s3_run(&url, &prefix, &group);
    cmd.env(
        "LEAFLOCK_BACKUP_S3_BUCKET",
        "s3://no-such-bucket-leaflock/x",
    );
    let r = run(cmd);
    r.expect_code(1);
    assert!(r.stderr.contains("no-such-bucket-leaflock"), "{}", r.stderr);
    assert!(r.stderr.contains(&testbed().s3_endpoint()), "{}", r.stderr);

    let m = pushed_metrics(&group);
    assert_eq!(m.get(SUCCESS), Some(&3.0), "{m:?}");
    assert_eq!(m.get(FAILURE), Some(&1.0), "{m:?}");
    assert_eq!(
        m.get("leaflock_backup_duration_seconds_count"),
        Some(&4.0),
        "{m:?}"
    );
    assert_eq!(
        m.get("leaflock_backup_duration_seconds_bucket{le=\"+Inf\"}"),
        Some(&4.0)
    );
    assert!(m.contains_key("leaflock_backup_duration_seconds_bucket{le=\"7200\"}"));
    // The failure kept the last success's gauges and moved the last-run ones.
    for kept in [
        "leaflock_backup_size_bytes",
        "leaflock_backup_uncompressed_size_bytes",
        "leaflock_backup_last_success_timestamp_seconds",
    ] {
        assert_eq!(m.get(kept), after_success.get(kept), "{kept}");
        assert!(m[kept] > 0.0, "{kept}");
    }
    assert!(
        m["leaflock_backup_last_run_timestamp_seconds"]
            > m["leaflock_backup_last_success_timestamp_seconds"]
    );
    let sizes: Vec<u64> = keys_ending(&prefix, ".dump.gz")
        .iter()
        .map(|k| s3_get(k).len() as u64)
        .collect();
    assert_eq!(sizes.len(), 3);
    assert!(sizes.contains(&(m["leaflock_backup_size_bytes"] as u64)));
}

/// Start a run whose uploads crawl through a throttling proxy, so that it can be
/// interrupted while pg_dump is still streaming.
fn slow_run(url: &str, prefix: &str, group: &str, proxy: &proxy::Proxy) -> std::process::Child {
    let mut cmd = s3_run(url, prefix, group);
    cmd.env("LEAFLOCK_BACKUP_S3_ENDPOINT", proxy.url())
        .env("LEAFLOCK_BACKUP_PART_SIZE", "5MiB")
        .env("LEAFLOCK_BACKUP_PARTS_IN_FLIGHT", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn().expect("the binary starts")
}

/// After a failed run: nothing left under `prefix`, and the failure pushed for `group`.
fn assert_failed_cleanly(prefix: &str, group: &str) {
    assert_nothing_left(prefix);
    let m = pushed_metrics(group);
    assert_eq!(m.get(FAILURE), Some(&1.0), "failure pushed: {m:?}");
    assert_eq!(m.get(SUCCESS), Some(&0.0), "{m:?}");
}

#[test]
fn pg_dump_killed_mid_stream_leaves_nothing_and_pushes_failure() {
    let name = unique("killdump");
    let db = TestDb::leaflock(Pg::V15, &name, 80);
    let url = db.url.clone();
    let prefix = unique("killdump");
    let proxy = proxy::throttle(&proxy::host_port(&testbed().s3_endpoint()), 1_000_000);
    let child = slow_run(&url, &prefix, &name, &proxy);
    let dump = wait_for(Duration::from_secs(20), "pg_dump to start", || {
        pg_dump_child(child.id())
    });
    std::thread::sleep(Duration::from_millis(1500));
    if !std::path::Path::new(&format!("/proc/{dump}")).exists() {
        let r = RunResult::from_output(child.wait_with_output().unwrap());
        panic!(
            "pg_dump should still be streaming; the run said:\n{}",
            r.stderr
        );
    }
    kill(dump, libc::SIGKILL);
    let r = RunResult::from_output(child.wait_with_output().unwrap());
    r.expect_code(1);
    assert!(
        r.stderr.contains("pg_dump was killed by signal 9"),
        "{}",
        r.stderr
    );
    assert_failed_cleanly(&prefix, &name);
}

#[test]
fn sigterm_mid_upload_stops_pg_dump_aborts_and_exits_1_quickly() {
    let name = unique("sigterm");
    let db = TestDb::leaflock(Pg::V15, &name, 80);
    let url = db.url.clone();
    let prefix = unique("sigterm");
    let proxy = proxy::throttle(&proxy::host_port(&testbed().s3_endpoint()), 1_000_000);
    let child = slow_run(&url, &prefix, &name, &proxy);
    let pid = child.id();
    let dump = wait_for(Duration::from_secs(20), "pg_dump to start", || {
        pg_dump_child(pid)
    });

    // While it streams: the password is on the command line of neither the runner nor
    // any process it started.
    std::thread::sleep(Duration::from_millis(1500));
    let password = testbed().pg_password();
    let ours = descendants(pid);
    assert!(ours.contains(&dump), "{ours:?}");
    for p in &ours {
        let cl = cmdline(*p);
        assert!(!cl.is_empty(), "process {p} still running");
        assert!(
            !cl.contains(&password),
            "password on the command line of {p}: {cl}"
        );
    }

    let sent = Instant::now();
    kill(pid, libc::SIGTERM);
    let r = RunResult::from_output(child.wait_with_output().unwrap());
    let took = sent.elapsed();
    r.expect_code(1);
    assert!(
        took < Duration::from_secs(15),
        "stopped within seconds, took {took:?}"
    );
    assert!(r.stderr.contains("SIGTERM"), "{}", r.stderr);
    assert!(!r.stderr.contains(&password), "password in the log");
    assert!(
        !std::path::Path::new(&format!("/proc/{dump}")).exists(),
        "pg_dump was stopped"
    );
    assert_failed_cleanly(&prefix, &name);
}

#[test]
fn pushgateway_down_keeps_the_backup_and_warns() {
    let name = unique("pgwdown");
    let db = TestDb::leaflock(Pg::V15, &name, 1);
    let url = db.url.clone();
    let prefix = unique("pgwdown");
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let mut cmd = s3_run(&url, &prefix, &name);
    cmd.env("LEAFLOCK_BACKUP_PUSHGATEWAY_URL", &dead)
        .env("LEAFLOCK_BACKUP_PUSHGATEWAY_TIMEOUT", "2");
    let r = run(cmd);
    r.expect_code(0);
    let warn = r
        .lines
        .iter()
        .find(|l| l["level"] == "warn" && l["msg"].as_str().unwrap().contains(&dead))
        .unwrap_or_else(|| panic!("a warning naming the Pushgateway: {}", r.stderr));
    assert!(warn["msg"].as_str().unwrap().contains("Pushgateway"));
    let (_, m, _, object) = manifest_and_object(&prefix, ".dump.gz");
    assert_eq!(m["sha256"], sha256_hex(&object).as_str());
}

type BadInput<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);

#[test]
fn bad_configuration_exits_2_before_any_connection_naming_the_input() {
    // Every case points at a port where nothing listens: had the run gone past
    // validation, it would fail with 1, not 2.
    let unreachable = format!("postgresql://u:pw@127.0.0.1:{}/notes", closed_port());
    // (flags, environment, what the one error line must name)
    let cases: Vec<BadInput> = vec![
        (vec!["--compression", "brotli"], vec![], "--compression"),
        (vec!["--compression", "gzip:0"], vec![], "--compression"),
        (vec!["--s3-bucket", "Not_A_Bucket"], vec![], "--s3-bucket"),
        (vec![], vec![("BACKUP_S3_BUCKET", "x")], "BACKUP_S3_BUCKET"),
        (
            vec!["--s3-bucket", "ok-bucket", "--part-size", "1KiB"],
            vec![],
            "--part-size",
        ),
        (
            vec!["--s3-bucket", "ok-bucket", "--parts-in-flight", "0"],
            vec![],
            "--parts-in-flight",
        ),
        (
            vec!["--s3-bucket", "ok-bucket", "--prefix", "a/../../etc"],
            vec![],
            "--prefix",
        ),
        (
            vec![
                "--s3-bucket",
                "ok-bucket",
                "--s3-endpoint",
                "localhost:9000",
            ],
            vec![],
            "--s3-endpoint",
        ),
        (
            vec!["--pushgateway-url", "pushgateway:9091"],
            vec![],
            "--pushgateway-url",
        ),
        (
            vec![],
            vec![("LEAFLOCK_BACKUP_DATABASE_URL", "mysql://u:pw@h/db")],
            "--database-url",
        ),
        (
            vec!["--pg-dump", "/nonexistent/pg_dump"],
            vec![],
            "--pg-dump",
        ),
        (
            vec![],
            vec![("LEAFLOCK_BACKUP_DATABASE_URL", "postgresql://u@h:99999/db")],
            "--database-url",
        ),
        (
            vec![],
            vec![(
                "LEAFLOCK_BACKUP_DATABASE_URL",
                "postgresql://u@h/db?sslmode=sometimes",
            )],
            "--database-url",
        ),
        (vec!["--connect-timeout", "0"], vec![], "--connect-timeout"),
        (vec!["--s3-bucket", "a..b"], vec![], "--s3-bucket"),
        (vec!["--s3-bucket=-leading"], vec![], "--s3-bucket"),
        (vec!["--s3-bucket", "s3://x"], vec![], "--s3-bucket"),
        (
            vec!["--s3-bucket", "s3://ok-bucket/a/../b"],
            vec![],
            "--s3-bucket",
        ),
        (
            vec!["--s3-bucket", "ok-bucket", "--prefix", "a//b"],
            vec![],
            "--prefix",
        ),
        (vec!["--prefix", ".."], vec![], "--prefix"),
        (
            vec!["--s3-bucket", "ok-bucket", "--s3-region", "us east"],
            vec![],
            "--s3-region",
        ),
        (
            vec!["--s3-bucket", "ok-bucket", "--s3-secret-key", "sk"],
            vec![],
            "--s3-access-key",
        ),
        (
            vec!["--s3-bucket", "ok-bucket", "--s3-storage-class", "CHEAP"],
            vec![],
            "--s3-storage-class",
        ),
        (
            vec!["--s3-bucket", "ok-bucket", "--part-size=-5MiB"],
            vec![],
            "--part-size",
        ),
        (
            vec!["--s3-bucket", "ok-bucket", "--part-size", "6GiB"],
            vec![],
            "--part-size",
        ),
        (
            vec!["--s3-bucket", "ok-bucket", "--parts-in-flight", "65"],
            vec![],
            "--parts-in-flight",
        ),
        (
            vec!["--s3-bucket", "ok-bucket", "--sse", "AES128"],
            vec![],
            "--sse",
        ),
        (
            vec!["--s3-bucket", "ok-bucket", "--sse-kms-key-id", "k"],
            vec![],
            "--sse-kms-key-id",
        ),
        (
            vec!["--s3-bucket", "ok-bucket", "--sse-c-key", "not-base64"],
            vec![],
            "--sse-c-key",
        ),
        (
            vec!["--s3-bucket", "ok-bucket", "--object-lock-days", "0"],
            vec![],
            "--object-lock-days",
        ),
        (
            vec![
                "--s3-bucket",
                "ok-bucket",
                "--object-lock-days",
                "3",
                "--object-lock-mode",
                "forever",
            ],
            vec![],
            "--object-lock-mode",
        ),
        (
            vec!["--s3-bucket", "ok-bucket", "--s3-max-attempts=-1"],
            vec![],
            "--s3-max-attempts",
        ),
        (vec!["--compression", "zstd:99"], vec![], "--compression"),
        (vec!["--compression", ""], vec![], "--compression"),
        (
            vec![
                "--pushgateway-url",
                "http://pgw:9091",
                "--pushgateway-job",
                "",
            ],
            vec![],
            "--pushgateway-job",
        ),
        (
            vec![
                "--pushgateway-url",
                "http://pgw:9091",
                "--pushgateway-timeout",
                "0",
            ],
            vec![],
            "--pushgateway-timeout",
        ),
        (vec!["--schedule", "61 * * * *"], vec![], "--schedule"),
        (
            vec![],
            vec![("BACKUP_SCHEDULE", "every day")],
            "BACKUP_SCHEDULE",
        ),
        (vec!["--timezone", "Moon/Base"], vec![], "--timezone"),
        (
            vec!["--restore-drill", "--drill-database-url", "mysql://h/db"],
            vec![],
            "--drill-database-url",
        ),
        (
            vec!["--restore-drill", "--pg-restore", "/nonexistent/pg_restore"],
            vec![],
            "--pg-restore",
        ),
        (vec!["--keep-last", "0"], vec![], "--keep-last"),
        (vec!["--keep-weekly", "0"], vec![], "--keep-weekly"),
        (vec!["--keep-monthly", "0"], vec![], "--keep-monthly"),
        (vec!["--max-age", "0"], vec![], "--max-age"),
        (
            vec![],
            vec![("BACKUP_RETENTION_DAYS", "soon")],
            "BACKUP_RETENTION_DAYS",
        ),
        (vec!["--orphan-grace", "1y"], vec![], "--orphan-grace"),
        (vec!["--orphan-grace=-1h"], vec![], "--orphan-grace"),
        (
            vec![],
            vec![
                ("LEAFLOCK_BACKUP_DATABASE_URL", ""),
                ("PGHOST", "h"),
                ("PGPORT", "0"),
            ],
            "PGPORT",
        ),
        (
            vec![],
            vec![
                ("LEAFLOCK_BACKUP_DATABASE_URL", ""),
                ("PGHOST", "h"),
                ("PGSSLMODE", "always"),
            ],
            "PGSSLMODE",
        ),
        (
            vec![],
            vec![
                ("LEAFLOCK_BACKUP_DATABASE_URL", ""),
                ("DATABASE_URL", "postgres//x"),
            ],
            "DATABASE_URL",
        ),
    ];
    for (args, env, needle) in cases {
        let mut cmd = runner();
        cmd.arg("run");
        if !env
            .iter()
            .any(|(k, _)| *k == "LEAFLOCK_BACKUP_DATABASE_URL")
        {
            cmd.env("LEAFLOCK_BACKUP_DATABASE_URL", &unreachable);
        }
        cmd.args(&args).envs(env.iter().copied());
        let r = run(cmd);
        assert_eq!(r.code, 2, "{args:?} {env:?}: {}", r.stderr);
        let errors: Vec<&Value> = r.lines.iter().filter(|l| l["level"] == "error").collect();
        assert_eq!(errors.len(), 1, "one error line for {args:?}: {}", r.stderr);
        let msg = errors[0]["msg"].as_str().unwrap();
        assert!(msg.contains(needle), "{args:?}: {msg}");
        assert!(!r.stderr.contains(":pw@"), "password echoed: {}", r.stderr);
    }
    // No database at all; an unknown flag (clap's own usage error).
    let mut nothing = runner();
    nothing.arg("run");
    run(nothing).expect_code(2);
    let mut unknown = runner();
    unknown.args(["run", "--no-such-flag"]);
    run(unknown).expect_code(2);
    // Values clap itself refuses (types, booleans, enums): exit 2 naming the flag.
    for (flag, value) in [
        ("--connect-timeout", "-1"),
        ("--connect-timeout", "soon"),
        ("--parts-in-flight", "many"),
        ("--s3-max-attempts", "x"),
        ("--s3-force-path-style", "maybe"),
        ("--pushgateway-timeout", "-5"),
        ("--keep-last", "-1"),
        ("--keep-daily", "x"),
        ("--max-age", "-30"),
        ("--object-lock-days", "-1"),
        ("--log-format", "xml"),
        ("--local-dir", ""),
        ("--log-level", "info,=bad[x"),
    ] {
        let mut cmd = runner();
        cmd.args(["run", &format!("{flag}={value}")])
            .env("LEAFLOCK_BACKUP_DATABASE_URL", &unreachable);
        let r = run(cmd);
        r.expect_code(2);
        assert!(r.stderr.contains(flag), "{flag}={value}: {}", r.stderr);
    }
}

#[test]
fn pg_dump_older_than_the_server_exits_2_saying_which_version_is_needed() {
    let db = TestDb::empty(Pg::V18, &unique("oldpgdump"));
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = runner();
    cmd.args(["run", "--database-url", &db.url])
        .arg("--local-dir")
        .arg(dir.path())
        .env("PATH", "/usr/bin:/bin");
    let r = run(cmd);
    r.expect_code(2);
    assert!(
        r.stderr.contains("pg_dump 18 or newer is needed"),
        "{}",
        r.stderr
    );
    assert!(walk(dir.path()).is_empty(), "nothing written");
}

#[test]
fn help_documents_every_flag_with_its_variable() {
    for sub in [
        "run", "schedule", "drill", "list", "verify", "restore", "prune", "next-run",
    ] {
        let out = std::process::Command::new(bin())
            .args([sub, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout).to_string();
        // Each option's block runs from its `--flag` line to the next option.
        let mut blocks: Vec<(String, String)> = Vec::new();
        for line in help.lines() {
            let t = line.trim_start();
            if t.starts_with("--") || (t.starts_with('-') && t.contains(", --")) {
                let flag = t
                    .split("--")
                    .nth(1)
                    .unwrap()
                    .split([' ', '=', '[', '<'])
                    .next()
                    .unwrap()
                    .to_string();
                blocks.push((flag, format!("{line}\n")));
            } else if let Some(b) = blocks.last_mut() {
                b.1.push_str(line);
                b.1.push('\n');
            }
        }
        let flags: Vec<&str> = blocks.iter().map(|b| b.0.as_str()).collect();
        assert!(flags.len() >= 3, "{sub}: {flags:?}");
        for (flag, text) in &blocks {
            if flag == "help" || flag == "version" {
                continue;
            }
            assert!(
                text.contains("[env: LEAFLOCK_BACKUP_"),
                "{sub} --{flag} documents its variable:\n{text}"
            );
        }
    }
    let out = std::process::Command::new(bin())
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for legacy in [
        "DATABASE_URL",
        "PGHOST",
        "POSTGRES_PASSWORD",
        "BACKUP_S3_BUCKET",
        "BACKUP_S3_SECRET_KEY",
    ] {
        assert!(help.contains(legacy), "{legacy} documented");
    }
}

#[test]
fn a_second_run_on_the_same_database_exits_3_naming_the_holder() {
    let name = unique("lock");
    let db = TestDb::leaflock(Pg::V15, &name, 80);
    let url = db.url.clone();
    let prefix = unique("lock");
    let proxy = proxy::throttle(&proxy::host_port(&testbed().s3_endpoint()), 1_000_000);
    let first = slow_run(&url, &prefix, &name, &proxy);
    let first_pid = first.id();
    wait_for(Duration::from_secs(20), "the first run to dump", || {
        pg_dump_child(first_pid)
    });

    let second_prefix = unique("lock_second");
    let started = Instant::now();
    let r = run(s3_run(&url, &second_prefix, &name));
    r.expect_code(3);
    assert!(started.elapsed() < Duration::from_secs(10), "at once");
    let msg = r.line("another run").expect("an error line")["msg"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("leaflock-backup 20"),
        "names the holder's run id: {msg}"
    );
    assert_eq!(s3_keys(&format!("{second_prefix}/")), Vec::<String>::new());

    kill(first_pid, libc::SIGTERM);
    let first = RunResult::from_output(first.wait_with_output().unwrap());
    first.expect_code(1);
    let holder_id = first.lines[0]["run_id"].as_str().unwrap();
    assert!(msg.contains(holder_id), "{msg} names {holder_id}");
    // The lock went with the first run: a third run gets it.
    let mut third = runner();
    let dir = tempfile::tempdir().unwrap();
    third
        .args(["run", "--database-url", &url])
        .arg("--local-dir")
        .arg(dir.path());
    run(third).expect_code(0);
}

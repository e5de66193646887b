//! The way back: `run --restore-drill`, `drill`, `verify`, `restore` and `list`
//! against the real test bed. Damage is made for real — bytes flipped in the stored
//! object, a manifest edited, an object truncated — and every drill must leave no
//! scratch database behind.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::Command;

const DRILLS_OK: &str = "leaflock_restore_drills_total{status=\"success\"}";
const DRILLS_FAILED: &str = "leaflock_restore_drills_total{status=\"failure\"}";

/// The scratch database of the run that printed `r` no longer exists.
fn assert_no_scratch_left(pg: Pg, r: &RunResult) {
    let run_id = r.lines[0]["run_id"].as_str().expect("run_id").to_string();
    let scratch: String = format!("leaflock_drill_{}", run_id.to_lowercase().replace('-', "_"));
    assert!(
        databases_like(pg, &scratch).is_empty(),
        "scratch database {scratch} left behind"
    );
}

fn drill_passes(pg: Pg) {
    let name = unique("drillok");
    let db = TestDb::leaflock(pg, &name, 3);
    let url = db.url.clone();
    let prefix = unique("drillok");
    let mut cmd = s3_run(&url, &prefix, &name);
    cmd.env("PATH", pg.path_env())
        .arg("--restore-drill")
        .args(["--drill-check", "SELECT count(*) > 0 FROM notes"])
        .args(["--drill-check", "SELECT EXISTS (SELECT 1 FROM _migrations)"]);
    let r = run(cmd);
    r.expect_code(0);
    assert!(r.line("restore drill passed").is_some(), "{}", r.stderr);
    assert_no_scratch_left(pg, &r);

    let rec = s3_json(&one_key(&prefix, ".drill.json"));
    let m = s3_json(&one_key(&prefix, ".manifest.json"));
    assert_eq!(rec["passed"], true, "{rec}");
    assert_eq!(rec["object_key"], m["object_key"]);
    assert_eq!(rec["checks_run"], 2);
    assert_eq!(
        rec["tables_checked"].as_u64().unwrap() as usize,
        m["tables"].as_array().unwrap().len()
    );
    let total: i64 = m["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["rows"].as_i64().unwrap())
        .sum();
    assert_eq!(rec["rows_checked"].as_i64(), Some(total));
    assert!(
        m["extensions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "pg_trgm"),
        "{m}"
    );
    assert!(!m["indexes"].as_array().unwrap().is_empty());

    let metrics = pushed_metrics(&name);
    assert_eq!(metrics.get(DRILLS_OK), Some(&1.0), "{metrics:?}");
    assert_eq!(metrics.get(DRILLS_FAILED), Some(&0.0));
    assert_eq!(
        metrics.get("leaflock_restore_drill_duration_seconds_count"),
        Some(&1.0)
    );
    assert!(metrics["leaflock_restore_drill_last_success_timestamp_seconds"] > 0.0);
    assert_eq!(
        metrics.get("leaflock_backups_total{status=\"success\"}"),
        Some(&1.0)
    );
}

#[test]
fn drill_passes_on_pg15() {
    drill_passes(Pg::V15);
}

#[test]
fn drill_passes_on_pg18() {
    drill_passes(Pg::V18);
}

#[test]
fn failing_drill_check_fails_the_run_but_keeps_the_backup() {
    let name = unique("drillcheck");
    let db = TestDb::leaflock(Pg::V15, &name, 1);
    let url = db.url.clone();
    let prefix = unique("drillcheck");
    let mut cmd = s3_run(&url, &prefix, &name);
    cmd.args([
        "--restore-drill",
        "--drill-check",
        "SELECT count(*) = 0 FROM users",
    ]);
    let r = run(cmd);
    r.expect_code(1);
    assert!(
        r.stderr.contains("SELECT count(*) = 0 FROM users"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("returned false"), "{}", r.stderr);
    assert_no_scratch_left(Pg::V15, &r);
    // Kept, and marked drill-failed.
    one_key(&prefix, ".dump.gz");
    one_key(&prefix, ".manifest.json");
    let rec = s3_json(&one_key(&prefix, ".drill.json"));
    assert_eq!(rec["passed"], false);
    let m = pushed_metrics(&name);
    assert_eq!(
        m.get("leaflock_backups_total{status=\"failure\"}"),
        Some(&1.0),
        "{m:?}"
    );
    assert_eq!(
        m.get("leaflock_backups_total{status=\"success\"}"),
        Some(&0.0)
    );
    assert_eq!(m.get(DRILLS_FAILED), Some(&1.0));
    assert!(!m.contains_key("leaflock_restore_drill_last_success_timestamp_seconds"));
    // list says so.
    let mut list = s3_cmd("list", &prefix);
    list.arg("--json");
    let l = run(list);
    l.expect_code(0);
    let entries: Value = serde_json::from_str(&l.stdout).unwrap();
    assert_eq!(entries[0]["kind"], "backup");
    assert_eq!(entries[0]["drill"]["passed"], false);
}

/// A backup under `prefix` of a fresh database, which it returns.
fn stored_backup(prefix: &str) -> TestDb {
    let name = unique("stored");
    let db = TestDb::leaflock(Pg::V15, &name, 2);
    run(s3_run(&db.url, prefix, &name)).expect_code(0);
    db
}

fn drill_cmd(prefix: &str, metrics_group: &str) -> Command {
    let mut cmd = s3_cmd("drill", prefix);
    cmd.env("LEAFLOCK_BACKUP_DATABASE_URL", Pg::V15.admin_url())
        .env("LEAFLOCK_BACKUP_PUSHGATEWAY_URL", testbed().pushgateway())
        .env("LEAFLOCK_BACKUP_METRICS_DATABASE", metrics_group);
    cmd
}

#[test]
fn drill_catches_a_flipped_byte_by_sha256() {
    let prefix = unique("flip");
    let _db = stored_backup(&prefix);
    let key = one_key(&prefix, ".dump.gz");
    let mut data = s3_get(&key);
    let mid = data.len() / 2;
    data[mid] ^= 0x01;
    s3_put(&key, data);

    let group = unique("flip_group");
    let r = run(drill_cmd(&prefix, &group));
    r.expect_code(1);
    assert!(r.stderr.contains("sha256 mismatch"), "{}", r.stderr);
    assert_no_scratch_left(Pg::V15, &r);
    let rec = s3_json(&one_key(&prefix, ".drill.json"));
    assert_eq!(rec["passed"], false);
    assert!(rec["failures"][0]
        .as_str()
        .unwrap()
        .contains("sha256 mismatch"));
    let m = pushed_metrics(&group);
    assert_eq!(m.get(DRILLS_FAILED), Some(&1.0), "{m:?}");
    assert_eq!(m.get(DRILLS_OK), Some(&0.0));

    // verify says the same, without a database.
    let v = run(s3_cmd("verify", &prefix));
    v.expect_code(1);
    assert!(v.stderr.contains("sha256 mismatch"), "{}", v.stderr);
}

#[test]
fn drill_catches_a_wrong_row_count_and_names_the_table() {
    let prefix = unique("rows");
    let _db = stored_backup(&prefix);
    let mkey = one_key(&prefix, ".manifest.json");
    let mut m = s3_json(&mkey);
    let notes = m["tables"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|t| t["name"] == "notes")
        .unwrap();
    let real = notes["rows"].as_i64().unwrap();
    notes["rows"] = (real + 5).into();
    s3_put(&mkey, serde_json::to_vec(&m).unwrap());

    let r = run(drill_cmd(&prefix, &unique("rows_group")));
    r.expect_code(1);
    let expected = format!(
        "table public.notes: expected {} rows, restored {real}",
        real + 5
    );
    assert!(r.stderr.contains(&expected), "{expected}\n{}", r.stderr);
    assert_no_scratch_left(Pg::V15, &r);
}

#[test]
fn verify_passes_intact_and_detects_truncation() {
    let prefix = unique("verify");
    let _db = stored_backup(&prefix);
    let ok = run(s3_cmd("verify", &prefix));
    ok.expect_code(0);
    assert!(ok.stdout.starts_with("OK "), "{}", ok.stdout);

    let key = one_key(&prefix, ".dump.gz");
    let data = s3_get(&key);
    s3_put(&key, data[..data.len() - 1000].to_vec());
    let mut cmd = s3_cmd("verify", &prefix);
    cmd.arg(&key);
    let bad = run(cmd);
    bad.expect_code(1);
    assert!(bad.stderr.contains("NOT intact"), "{}", bad.stderr);
    assert!(bad.stderr.contains("sha256 mismatch"), "{}", bad.stderr);

    let mut unknown = s3_cmd("verify", &prefix);
    unknown.arg(format!("{prefix}/no/such/key.dump.gz"));
    run(unknown).expect_code(2);
}

#[test]
fn restore_refuses_a_non_empty_target_without_clean_and_replaces_with_it() {
    let prefix = unique("restore");
    let db = stored_backup(&prefix);
    let url = db.url.clone();
    let source = table_counts(Pg::V15, &url);

    // An empty target: restored exactly.
    let fresh = TestDb::empty(Pg::V15, &unique("restore_fresh"));
    let mut cmd = s3_cmd("restore", &prefix);
    cmd.args(["latest", "--target-database-url", &fresh.url]);
    run(cmd).expect_code(0);
    assert_eq!(table_counts(Pg::V15, &fresh.url), source);

    // The source itself changed after the backup: refused without --clean ...
    psql(
        Pg::V15,
        &url,
        "DELETE FROM note_tags; DELETE FROM audit_log",
    );
    let mut refuse = s3_cmd("restore", &prefix);
    refuse.args(["--target-database-url", &url]);
    let r = run(refuse);
    r.expect_code(2);
    assert!(r.stderr.contains("--clean"), "{}", r.stderr);
    assert_eq!(
        table_counts(Pg::V15, &url)["public.audit_log"],
        0,
        "untouched"
    );

    // ... and put back with it, in parallel (spooled) this time.
    let mut clean = s3_cmd("restore", &prefix);
    clean.args([
        "--target-database-url",
        &url,
        "--clean",
        "--yes",
        "--jobs",
        "2",
    ]);
    let c = run(clean);
    c.expect_code(0);
    assert!(c.stderr.contains("spooling"), "{}", c.stderr);
    assert_eq!(table_counts(Pg::V15, &url), source);
}

/// `restore latest` of the backups under `prefix` into `url`, with `extra` arguments.
fn restore_into(prefix: &str, url: &str, extra: &[&str]) -> RunResult {
    let mut cmd = s3_cmd("restore", prefix);
    cmd.args(["--target-database-url", url]).args(extra);
    run(cmd)
}

/// Every user table's rows as `count:fingerprint`, the fingerprint independent of the
/// rows' order (md5 over the sorted md5s of their text).
fn fingerprints(pg: Pg, url: &str) -> BTreeMap<String, String> {
    table_counts(pg, url)
        .into_keys()
        .map(|t| {
            let (s, n) = t.split_once('.').unwrap();
            let f = psql(
                pg,
                url,
                &format!(
                    "SELECT count(*) || ':' || coalesce(md5(string_agg(md5(r::text), '' \
                     ORDER BY md5(r::text))), '') FROM \"{s}\".\"{n}\" r"
                ),
            );
            (t, f)
        })
        .collect()
}

fn without(mut m: BTreeMap<String, String>, table: &str) -> BTreeMap<String, String> {
    m.remove(table);
    m
}

/// The definitions that hang off `table`: indexes, constraints and triggers, by name.
fn parts_of(pg: Pg, url: &str, table: &str) -> String {
    psql(
        pg,
        url,
        &format!(
            "SELECT string_agg(n, ',' ORDER BY n) FROM ( \
               SELECT indexname AS n FROM pg_indexes WHERE tablename = '{table}' \
               UNION ALL SELECT conname FROM pg_constraint WHERE conrelid = 'public.{table}'::regclass \
               UNION ALL SELECT tgname FROM pg_trigger WHERE tgrelid = 'public.{table}'::regclass \
                 AND NOT tgisinternal) p"
        ),
    )
}

#[test]
fn restore_of_one_table_brings_back_its_rows_and_touches_no_other_table() {
    let prefix = unique("table");
    let db = stored_backup(&prefix);
    let source = fingerprints(Pg::V15, &db.url);
    let source_parts = parts_of(Pg::V15, &db.url, "notes");
    assert!(source["public.notes"] != "0:", "the source has notes");

    // A copy of the database that lost its notes table and went on living.
    let target = TestDb::empty(Pg::V15, &unique("table_target"));
    restore_into(&prefix, &target.url, &[]).expect_code(0);
    psql(
        Pg::V15,
        &target.url,
        "DROP TABLE notes CASCADE; DELETE FROM tags; \
         CREATE TABLE local_only (x int); INSERT INTO local_only VALUES (42)",
    );
    let before = fingerprints(Pg::V15, &target.url);
    assert!(!before.contains_key("public.notes"));

    let r = restore_into(&prefix, &target.url, &["--table", "notes"]);
    r.expect_code(0);
    let verified = r
        .line("restored content verified")
        .expect("the restored rows are compared with the backup's digests");
    assert_eq!(verified["tables"], 1, "{verified}");
    let after = fingerprints(Pg::V15, &target.url);
    assert_eq!(
        after["public.notes"], source["public.notes"],
        "exactly the notes rows"
    );
    assert_eq!(
        without(after, "public.notes"),
        before,
        "no other table touched"
    );
    assert_eq!(parts_of(Pg::V15, &target.url, "notes"), source_parts);
    // The other tables' keys that pointed at notes are named, not restored.
    let warned = r
        .line("left out")
        .expect("the left-out foreign keys are named");
    assert!(
        warned["constraints"]
            .as_str()
            .unwrap()
            .contains("note_versions_note_id_fkey"),
        "{warned}"
    );

    // Now the target has notes: not replaced without --clean ...
    let r = restore_into(&prefix, &target.url, &["--table", "public.notes"]);
    r.expect_code(2);
    assert!(
        r.stderr.contains("public.notes") && r.stderr.contains("--clean"),
        "{}",
        r.stderr
    );
    // ... nor with it while another table references it.
    psql(
        Pg::V15,
        &target.url,
        "ALTER TABLE note_versions ADD CONSTRAINT back_to_notes FOREIGN KEY (note_id) REFERENCES notes (id)",
    );
    let r = restore_into(&prefix, &target.url, &["--table", "notes", "--clean"]);
    r.expect_code(2);
    assert!(
        r.stderr.contains("note_versions (back_to_notes)"),
        "{}",
        r.stderr
    );
    // Without that reference, --clean replaces notes alone.
    psql(Pg::V15, &target.url, "ALTER TABLE note_versions DROP CONSTRAINT back_to_notes; DELETE FROM notes WHERE ctid IN (SELECT ctid FROM notes LIMIT 3)");
    let before = without(fingerprints(Pg::V15, &target.url), "public.notes");
    restore_into(&prefix, &target.url, &["--table", "notes", "--clean"]).expect_code(0);
    let after = fingerprints(Pg::V15, &target.url);
    assert_eq!(after["public.notes"], source["public.notes"]);
    assert_eq!(without(after, "public.notes"), before);

    // A table the backup does not have.
    let r = restore_into(&prefix, &target.url, &["--table", "no_such_table"]);
    r.expect_code(2);
    assert!(
        r.stderr.contains("--table") && r.stderr.contains("no_such_table"),
        "{}",
        r.stderr
    );

    // Into an empty database, notes comes with what it needs: the tables its foreign
    // keys point at (and theirs), each exactly as backed up; nothing else.
    let empty = TestDb::empty(Pg::V15, &unique("table_empty"));
    let r = restore_into(&prefix, &empty.url, &["--table", "notes"]);
    r.expect_code(0);
    assert_eq!(r.line("restored content verified").unwrap()["tables"], 4);
    let got = fingerprints(Pg::V15, &empty.url);
    assert_eq!(
        got.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "public.folders",
            "public.notes",
            "public.users",
            "public.workspaces"
        ],
        "{}",
        r.stderr
    );
    for (t, f) in &got {
        assert_eq!(f, &source[t], "{t}");
    }
}

/// A partitioned table comes with its partitions (where its rows are), and a lost
/// partition is restored and attached again.
fn partitioned(pg: Pg) {
    let restore_into = |prefix: &str, url: &str, extra: &[&str]| {
        let mut cmd = s3_cmd("restore", prefix);
        cmd.env("PATH", pg.path_env())
            .args(["--target-database-url", url])
            .args(extra);
        run(cmd)
    };
    let prefix = unique("partitioned");
    let name = unique("partitioned");
    let db = TestDb::empty(pg, &name);
    psql(
        pg,
        &db.url,
        "CREATE TABLE events (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at); \
         CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01'); \
         CREATE TABLE events_2027 PARTITION OF events FOR VALUES FROM ('2027-01-01') TO ('2028-01-01'); \
         CREATE INDEX ON events (at); \
         INSERT INTO events SELECT g, '2026-01-01'::date + g FROM generate_series(1, 600) g; \
         CREATE TABLE other (x int); INSERT INTO other VALUES (1)",
    );
    // zstd on one server, gzip on the other: the head of either is read for the plan.
    let (compression, suffix) = if pg == Pg::V18 {
        ("zstd", ".dump.zst")
    } else {
        ("gzip", ".dump.gz")
    };
    let mut backup = s3_run(&db.url, &prefix, &name);
    backup
        .env("PATH", pg.path_env())
        .args(["--compression", compression]);
    run(backup).expect_code(0);
    one_key(&prefix, suffix);
    let source = fingerprints(pg, &db.url);

    let target = TestDb::empty(pg, &unique("partitioned_target"));
    let r = restore_into(&prefix, &target.url, &["--table", "events"]);
    r.expect_code(0);
    assert_eq!(r.line("restored content verified").unwrap()["tables"], 2);
    let got = fingerprints(pg, &target.url);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        ["public.events"],
        "{}",
        r.stderr
    );
    assert_eq!(got["public.events"], source["public.events"]);

    // One partition dropped from a copy: restored and attached again.
    let copy = TestDb::empty(pg, &unique("partitioned_copy"));
    restore_into(&prefix, &copy.url, &[]).expect_code(0);
    psql(pg, &copy.url, "DROP TABLE events_2026");
    let r = restore_into(&prefix, &copy.url, &["--table", "events_2026"]);
    r.expect_code(0);
    assert_eq!(fingerprints(pg, &copy.url), source, "{}", r.stderr);
}

#[test]
fn restore_of_a_partitioned_table_brings_its_partitions_pg15() {
    partitioned(Pg::V15);
}

#[test]
fn restore_of_a_partitioned_table_brings_its_partitions_pg18() {
    partitioned(Pg::V18);
}

/// The README's runbook: tables into a scratch database (what they reference comes
/// along), and two tables that reference each other replaced together in the live one.
#[test]
fn the_runbooks_table_restores_work() {
    let prefix = unique("runbook");
    let db = stored_backup(&prefix);
    let source = fingerprints(Pg::V15, &db.url);

    let scratch = TestDb::empty(Pg::V15, &unique("runbook_scratch"));
    let mut cmd = s3_cmd("restore", &prefix);
    cmd.arg(one_key(&prefix, ".dump.gz")).args([
        "--target-database-url",
        &scratch.url,
        "--table",
        "notes",
        "--table",
        "note_versions",
        "--table",
        "note_tags",
    ]);
    cmd.arg("--yes");
    let r = run(cmd);
    r.expect_code(0);
    let got = fingerprints(Pg::V15, &scratch.url);
    for t in [
        "notes",
        "note_versions",
        "note_tags",
        "tags",
        "users",
        "workspaces",
        "folders",
    ] {
        let t = format!("public.{t}");
        assert_eq!(got.get(&t), source.get(&t), "{t}: {}", r.stderr);
    }
    assert!(
        !got.contains_key("public.audit_log"),
        "nothing it does not need"
    );

    psql(
        Pg::V15,
        &db.url,
        "DELETE FROM note_tags WHERE ctid IN (SELECT ctid FROM note_tags LIMIT 5); \
         UPDATE tags SET color = '#000000'",
    );
    let before = fingerprints(Pg::V15, &db.url);
    restore_into(
        &prefix,
        &db.url,
        &["--table", "tags", "--table", "note_tags", "--clean"],
    )
    .expect_code(0);
    let after = fingerprints(Pg::V15, &db.url);
    for t in ["public.tags", "public.note_tags"] {
        assert_eq!(after[t], source[t], "{t}");
    }
    assert_eq!(
        without(without(after, "public.tags"), "public.note_tags"),
        without(without(before, "public.tags"), "public.note_tags")
    );
}

/// What a restore committed is compared with the backup's content digests: a
/// difference (here a manifest whose digest of notes was changed) is exit 1 naming the
/// table, after saying the restore was committed.
#[test]
fn a_restore_whose_rows_differ_from_the_digests_says_so() {
    let prefix = unique("restore_digest");
    let _db = stored_backup(&prefix);
    let mkey = one_key(&prefix, ".manifest.json");
    let mut m = s3_json(&mkey);
    let notes = m["content"]["tables"]
        .as_array_mut()
        .expect("content digests")
        .iter_mut()
        .find(|t| t["name"] == "notes")
        .unwrap();
    notes["digest"] = "0".repeat(64).into();
    s3_put(&mkey, serde_json::to_vec_pretty(&m).unwrap());

    let target = TestDb::empty(Pg::V15, &unique("restore_digest_target"));
    let r = restore_into(&prefix, &target.url, &[]);
    r.expect_code(1);
    assert!(r.stderr.contains("committed"), "{}", r.stderr);
    assert!(
        r.stderr.contains("table public.notes: content differs"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("table public.users:"), "{}", r.stderr);
}

#[test]
fn schema_only_restores_definitions_and_data_only_one_tables_rows() {
    let prefix = unique("sections");
    let db = stored_backup(&prefix);
    let source = fingerprints(Pg::V15, &db.url);
    let target = TestDb::empty(Pg::V15, &unique("sections_target"));

    restore_into(&prefix, &target.url, &["--schema-only"]).expect_code(0);
    let counts = table_counts(Pg::V15, &target.url);
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        source.keys().collect::<Vec<_>>(),
        "every table defined"
    );
    assert!(counts.values().all(|&n| n == 0), "no rows: {counts:?}");
    assert_eq!(
        parts_of(Pg::V15, &target.url, "notes"),
        parts_of(Pg::V15, &db.url, "notes")
    );

    // Rows of one table into the tables that exist, through the spooled path.
    let r = restore_into(
        &prefix,
        &target.url,
        &["--data-only", "--table", "users", "--jobs", "2"],
    );
    r.expect_code(0);
    assert_eq!(r.line("restored content verified").unwrap()["tables"], 1);
    let after = fingerprints(Pg::V15, &target.url);
    assert_eq!(after["public.users"], source["public.users"]);
    assert!(
        without(after, "public.users").values().all(|f| f == "0:"),
        "only users has rows"
    );

    let r = restore_into(&prefix, &target.url, &["--data-only", "--clean"]);
    r.expect_code(2);
    assert!(
        r.stderr.contains("--data-only") && r.stderr.contains("--clean"),
        "{}",
        r.stderr
    );
}

#[test]
fn list_shows_backups_and_debris_newest_first() {
    let prefix = unique("list");
    let db = stored_backup(&prefix);
    let name = db.name.clone();
    let debris = format!("{prefix}/2020/01/01/leaflock_backup_20200101T000000Z.dump.gz");
    s3_put(&debris, b"half an upload".to_vec());
    let stranger = format!("{prefix}/notes.txt");
    s3_put(&stranger, b"hello".to_vec());

    let mut cmd = s3_cmd("list", &prefix);
    cmd.arg("--json");
    let r = run(cmd);
    r.expect_code(0);
    let entries: Vec<Value> = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(entries.len(), 3, "{entries:?}");
    let kinds: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e["key"].as_str().unwrap(), e["kind"].as_str().unwrap()))
        .collect();
    assert!(
        kinds.contains(&(debris.as_str(), "no_manifest")),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&(stranger.as_str(), "no_manifest")),
        "{kinds:?}"
    );
    let backup = entries.iter().position(|e| e["kind"] == "backup").unwrap();
    assert_eq!(entries[backup]["manifest"]["database"], name.as_str());
    let old = entries
        .iter()
        .position(|e| e["key"] == debris.as_str())
        .unwrap();
    assert!(
        backup < old,
        "newest first (the debris is named 2020): {kinds:?}"
    );
    // The stranger has no time in its name: it sorts by its modification time (now).
    let times: Vec<chrono::DateTime<chrono::Utc>> = entries
        .iter()
        .map(|e| e["time"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");

    let table = run(s3_cmd("list", &prefix));
    table.expect_code(0);
    assert!(table.stdout.contains("NO MANIFEST"), "{}", table.stdout);
    assert!(table.stdout.contains(&name), "{}", table.stdout);
}

/// An archive made exactly the way LeafLock's old script made them.
fn old_script_archive(pg: Pg, db_url: &str, password: &str) -> Vec<u8> {
    let script = format!(
        "set -o pipefail; '{}' --clean --if-exists --create --dbname='{db_url}' | gzip | \
         openssl enc -aes-256-cbc -salt -pass 'pass:{password}'",
        pg.tool("pg_dump").display()
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn old_script_archives_are_listed_and_restored_into_the_named_database_only() {
    let name = unique("legacy");
    let db = TestDb::leaflock(Pg::V15, &name, 2);
    let url = db.url.clone();
    let source = table_counts(Pg::V15, &url);
    let password = "old-backup-key";
    let prefix = unique("legacy");
    let key = format!("{prefix}/2025/06/01/leaflock_backup_20250601_020000.sql.gz.enc");
    let archive = old_script_archive(Pg::V15, &url, password);
    s3_put(&key, archive.clone());

    let mut list = s3_cmd("list", &prefix);
    list.arg("--json");
    let l = run(list);
    l.expect_code(0);
    let entries: Vec<Value> = serde_json::from_str(&l.stdout).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["kind"], "legacy");
    assert_eq!(entries[0]["time"], "2025-06-01T02:00:00Z");

    let target = TestDb::empty(Pg::V15, &unique("legacy_target"));
    let target_url = target.url.clone();

    // Without the key: a usage error naming where the key goes.
    let mut nokey = s3_cmd("restore", &prefix);
    nokey.args([key.as_str(), "--target-database-url", &target_url]);
    let r = run(nokey);
    r.expect_code(2);
    assert!(r.stderr.contains("BACKUP_ENCRYPTION_KEY"), "{}", r.stderr);

    // A wrong key: refused, nothing restored.
    let mut wrong = s3_cmd("restore", &prefix);
    wrong
        .args([key.as_str(), "--target-database-url", &target_url])
        .env("BACKUP_ENCRYPTION_KEY", "not-the-key");
    let r = run(wrong);
    r.expect_code(1);
    assert!(r.stderr.contains("does not decrypt"), "{}", r.stderr);
    assert_eq!(table_counts(Pg::V15, &target_url).len(), 0);

    // Tables or sections of an SQL archive: refused, naming the flags.
    let mut part = s3_cmd("restore", &prefix);
    part.args([key.as_str(), "--target-database-url", &target_url])
        .args(["--table", "notes"])
        .env("BACKUP_ENCRYPTION_KEY", password);
    let r = run(part);
    r.expect_code(2);
    assert!(
        r.stderr.contains("--table, --schema-only and --data-only"),
        "{}",
        r.stderr
    );
    assert_eq!(table_counts(Pg::V15, &target_url).len(), 0);

    // A truncated archive: nothing committed.
    let short_key = format!("{prefix}/2025/06/02/leaflock_backup_20250602_020000.sql.gz.enc");
    s3_put(&short_key, archive[..archive.len() * 2 / 3].to_vec());
    let mut short = s3_cmd("restore", &prefix);
    short
        .args([short_key.as_str(), "--target-database-url", &target_url])
        .env("BACKUP_ENCRYPTION_KEY", password);
    run(short).expect_code(1);
    assert_eq!(
        table_counts(Pg::V15, &target_url).len(),
        0,
        "a truncated archive restores nothing"
    );

    // The real thing: into the named database, and the source (whose name the archive's
    // CREATE DATABASE and \connect carry) is untouched.
    let mut ok = s3_cmd("restore", &prefix);
    ok.args([key.as_str(), "--target-database-url", &target_url])
        .env("BACKUP_ENCRYPTION_KEY", password);
    run(ok).expect_code(0);
    assert_eq!(table_counts(Pg::V15, &target_url), source);
    assert_eq!(table_counts(Pg::V15, &url), source);
}

/// An object replaced by another valid archive (intact compression, another sha256),
/// read back slowly. pg_restore does not wait for the end of its input: it commits once
/// it has read what it needs, which for `--schema-only` or `--table` can be long before
/// the end of the object (and its sha256) is reached. Nothing may be committed, whole
/// or in part.
#[test]
fn restore_of_a_replaced_object_commits_nothing() {
    let prefix = unique("replaced");
    let name = unique("replaced");
    let db = TestDb::leaflock(Pg::V15, &name, 2);
    // Rows enough for an archive of several MiB, which takes seconds through the proxy.
    psql(
        Pg::V15,
        &db.url,
        "CREATE TABLE filler AS SELECT g, md5(g::text) AS h FROM generate_series(1, 150000) g",
    );
    run(s3_run(&db.url, &prefix, &name)).expect_code(0);
    let key = one_key(&prefix, ".dump.gz");
    psql(Pg::V15, &db.url, "DELETE FROM audit_log");
    let other = unique("replaced_other");
    run(s3_run(&db.url, &other, &name)).expect_code(0);
    s3_put(&key, s3_get(&one_key(&other, ".dump.gz")));
    let slow = proxy::throttle_down(&proxy::host_port(&testbed().s3_endpoint()), 1_500_000);

    for part in [&[][..], &["--schema-only"][..], &["--table", "users"][..]] {
        let target = TestDb::empty(Pg::V15, &unique("replaced_target"));
        let mut cmd = s3_cmd("restore", &prefix);
        cmd.env("LEAFLOCK_BACKUP_S3_ENDPOINT", slow.url())
            .args(["latest", "--target-database-url", &target.url])
            .args(part);
        let r = run(cmd);
        r.expect_code(1);
        assert!(
            r.stderr.contains("sha256 mismatch")
                || r.stderr.contains("does not match its manifest"),
            "{part:?}: {}",
            r.stderr
        );
        assert_eq!(
            table_counts(Pg::V15, &target.url).len(),
            0,
            "{part:?}: nothing committed"
        );
    }
}

#[test]
fn restore_of_a_corrupt_object_commits_nothing() {
    let prefix = unique("corrupt");
    let _db = stored_backup(&prefix);
    let key = one_key(&prefix, ".dump.gz");
    let mut data = s3_get(&key);
    let at = data.len() - 100; // late in the stream: pg_restore has already run most of it
    data[at] ^= 0x40;
    s3_put(&key, data);
    let target = TestDb::empty(Pg::V15, &unique("corrupt_target"));
    let r = restore_into(&prefix, &target.url, &[]);
    r.expect_code(1);
    assert!(r.stderr.contains("sha256 mismatch"), "{}", r.stderr);
    assert_eq!(table_counts(Pg::V15, &target.url).len(), 0, "rolled back");
}

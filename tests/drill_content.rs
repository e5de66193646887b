//! Content digests against the real test bed: the backup reads pg_dump's archive as it
//! streams and records per table a multiset digest of its rows; the drill recomputes
//! it from the restored database, `verify` from the stored object. A value changed
//! inside a stored backup (its manifest's sha256 and size rewritten to match) must
//! fail both, naming the table; rows in another physical order must still match; a
//! backup without digests is drilled as before and labelled "counts only"; a manifest
//! of the earlier algorithm (`sha256-sum`) is still recomputed and checked, and one
//! naming an algorithm this version does not know fails.

mod common;

use common::*;
use serde_json::Value;
use std::io::Write;
use std::process::Command;

/// The `blake3-sum` digests of the tables of `tests/fixtures/awkward.sql`
/// (schema, name, digest), as an independent implementation computed them (Python,
/// the `blake3` package of PyPI, over the COPY rows pg_dump writes); `src/archive.rs`
/// checks the same figures on its fixtures.
const AWKWARD_BLAKE3: [(&str, &str, &str); 4] = [
    (
        "Other Schema",
        "Mixed Case",
        "8694d49773444c368cdf66d1778b0f91dded10b61a503a2064fc09edf3df331d",
    ),
    (
        "public",
        "awkward",
        "0d1d1e0c6e5defc4bd398690fe80d9576eaa9bd8fcf8b5983d5f3ac87a5194ae",
    ),
    (
        "public",
        "empty_table",
        "0000000000000000000000000000000000000000000000000000000000000000",
    ),
    (
        "public",
        "no_columns",
        "5e269373ebf3434d40809bd46db9929337964b935b82256f99352795c83e64c4",
    ),
];

/// The same tables' `sha256-sum` digests (what backups made before `blake3-sum`
/// recorded), computed by Python's hashlib.
const AWKWARD_SHA256: [(&str, &str, &str); 4] = [
    (
        "Other Schema",
        "Mixed Case",
        "2b41d62e4d5bf58f3862c80ad967a1801bd431b485fa78c3c3aae9c3bbcd4d64",
    ),
    (
        "public",
        "awkward",
        "67f8300829e760a8b2916f3dd59fe0db86fe7378bfcce481eeaaca5fca31399d",
    ),
    (
        "public",
        "empty_table",
        "0000000000000000000000000000000000000000000000000000000000000000",
    ),
    (
        "public",
        "no_columns",
        "c761888531f8382935f7e99132df72484f5c83c8c9372699492b3236f0a570aa",
    ),
];

/// The digest of `public.awkward` new backups record.
const AWKWARD_DIGEST: &str = AWKWARD_BLAKE3[1].2;

/// A LeafLock-shaped database with the awkward tables of the fixture added.
fn awkward_db(pg: Pg, name: &str) -> TestDb {
    let db = TestDb::leaflock(pg, name, 1);
    let sql = std::fs::read_to_string(repo_root().join("tests/fixtures/awkward.sql")).unwrap();
    psql(pg, &db.url, &sql);
    db
}

fn assert_no_scratch_left(pg: Pg, r: &RunResult) {
    let run_id = r.lines[0]["run_id"].as_str().expect("run_id").to_string();
    let scratch = format!("leaflock_drill_{}", run_id.to_lowercase().replace('-', "_"));
    assert!(
        databases_like(pg, &scratch).is_empty(),
        "scratch database {scratch} left behind"
    );
}

fn drill_cmd(pg: Pg, prefix: &str) -> Command {
    let mut cmd = s3_cmd("drill", prefix);
    cmd.env("LEAFLOCK_BACKUP_DATABASE_URL", pg.admin_url())
        .env("PATH", pg.path_env())
        .env("LEAFLOCK_BACKUP_PUSHGATEWAY_URL", testbed().pushgateway())
        .env("LEAFLOCK_BACKUP_METRICS_DATABASE", unique("content_group"));
    cmd
}

fn verify_cmd(pg: Pg, prefix: &str) -> Command {
    let mut cmd = s3_cmd("verify", prefix);
    cmd.env("PATH", pg.path_env());
    cmd
}

/// Seconds since the epoch of an RFC 3339 time.
fn chrono_seconds(t: &str) -> f64 {
    let t = chrono::DateTime::parse_from_rfc3339(t).unwrap();
    t.timestamp_millis() as f64 / 1000.0
}

fn content_table<'a>(m: &'a Value, schema: &str, name: &str) -> &'a Value {
    m["content"]["tables"]
        .as_array()
        .expect("the manifest has content digests")
        .iter()
        .find(|t| t["schema"] == schema && t["name"] == name)
        .unwrap_or_else(|| panic!("no digest for {schema}.{name}: {m}"))
}

/// A backup with `extra` arguments and a drill in the same run; returns the manifest,
/// the drill record and the run's output.
fn backup_and_drill(
    pg: Pg,
    db: &TestDb,
    prefix: &str,
    extra: &[&str],
) -> (Value, Value, RunResult) {
    let mut cmd = s3_run(&db.url, prefix, &db.name);
    cmd.env("PATH", pg.path_env())
        .arg("--restore-drill")
        .args(extra);
    let r = run(cmd);
    r.expect_code(0);
    assert_no_scratch_left(pg, &r);
    let m = s3_json(&one_key(prefix, ".manifest.json"));
    let rec = s3_json(&one_key(prefix, ".drill.json"));
    (m, rec, r)
}

fn assert_content_verified(m: &Value, rec: &Value, r: &RunResult) {
    let tables = m["content"]["tables"].as_array().unwrap();
    assert_eq!(m["content"]["algorithm"], "blake3-sum");
    assert_eq!(rec["passed"], true, "{rec}");
    assert_eq!(rec["content_verified"], true, "{rec}");
    assert_eq!(
        rec["digests_checked"].as_u64().unwrap() as usize,
        tables.len()
    );
    assert!(
        r.line("restore drill passed (content verified)").is_some(),
        "{}",
        r.stderr
    );
    let awkward = content_table(m, "public", "awkward");
    assert_eq!(awkward["rows"], 6);
    assert_eq!(awkward["digest"], AWKWARD_DIGEST);
    let cols: Vec<&str> = awkward["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(
        !cols.contains(&"twice"),
        "the generated column is not dumped: {cols:?}"
    );
    assert_eq!(cols.len(), 10);
    let empty = content_table(m, "public", "empty_table");
    assert_eq!(empty["rows"], 0);
    assert_eq!(content_table(m, "Other Schema", "Mixed Case")["rows"], 3);
    assert_eq!(content_table(m, "public", "no_columns")["rows"], 2);
    // amcheck (contrib) is on both servers of the test bed, and the drill role may
    // create it: every B-tree index and heap of the restored tables was checked.
    let am = &rec["amcheck"];
    assert_eq!(am["status"], "passed", "{rec}");
    assert!(am["indexes_checked"].as_u64().unwrap() >= 10, "{am}");
    assert!(
        am["heaps_checked"].as_u64().unwrap() as usize >= m["tables"].as_array().unwrap().len(),
        "{am}"
    );
    // Every table with rows counted has a digest with the same count.
    for t in m["tables"].as_array().unwrap() {
        let d = content_table(
            m,
            t["schema"].as_str().unwrap(),
            t["name"].as_str().unwrap(),
        );
        assert_eq!(d["rows"].as_i64(), t["rows"].as_i64(), "{t}");
    }
}

#[test]
fn pg15_gzip_and_pg18_zstd_backups_are_content_verified() {
    for (pg, compression) in [(Pg::V15, "gzip"), (Pg::V18, "zstd")] {
        let name = unique("content");
        let db = awkward_db(pg, &name);
        let prefix = unique("content");
        let (m, rec, r) = backup_and_drill(pg, &db, &prefix, &["--compression", compression]);
        assert_eq!(m["compression"]["algorithm"], compression);
        let version = m["content"]["archive_version"].as_str().unwrap();
        match pg {
            Pg::V15 => assert_eq!(version, "1.14.0"),
            Pg::V18 => assert_eq!(version, "1.16.0"),
        }
        assert_eq!(m["content"]["encoding"], "UTF8");
        assert_content_verified(&m, &rec, &r);
        let pushed = pushed_metrics(&name);
        assert_eq!(
            pushed.get("leaflock_restore_drill_content_verified"),
            Some(&1.0),
            "{pushed:?}"
        );
        let made = chrono_seconds(m["finished_at"].as_str().unwrap());
        let newest = pushed["leaflock_backup_last_content_verified_timestamp_seconds"];
        assert!(
            (newest - made).abs() < 0.01,
            "{newest} vs the backup's {made}"
        );

        let list = run(s3_cmd("list", &prefix));
        list.expect_code(0);
        assert!(list.stdout.contains("content verified"), "{}", list.stdout);

        // restore --list: the tables from the manifest, no target database needed.
        let mut tables = s3_cmd("restore", &prefix);
        tables.arg("--list");
        let tables = run(tables);
        tables.expect_code(0);
        let line = tables
            .stdout
            .lines()
            .find(|l| l.starts_with("public.awkward "))
            .unwrap_or_else(|| panic!("{}", tables.stdout));
        assert!(line.contains(AWKWARD_DIGEST), "{line}");
        assert!(line.split_whitespace().nth(1) == Some("6"), "{line}");

        let v = run(verify_cmd(pg, &prefix));
        v.expect_code(0);
        assert!(v.stdout.contains("content verified"), "{}", v.stdout);
    }
}

#[test]
fn an_age_encrypted_backup_is_content_verified() {
    let pg = Pg::V18;
    let name = unique("content_age");
    let db = awkward_db(pg, &name);
    let prefix = unique("content_age");
    let dir = tempfile::tempdir().unwrap();
    let id = age::x25519::Identity::generate();
    let id_path = dir.path().join("id.txt");
    {
        use age::secrecy::ExposeSecret;
        std::fs::write(&id_path, format!("{}\n", id.to_string().expose_secret())).unwrap();
    }
    let public = id.to_public().to_string();
    let id_arg = id_path.to_str().unwrap();
    let (m, rec, r) = backup_and_drill(
        pg,
        &db,
        &prefix,
        &["--encrypt-to", &public, "--identity", id_arg],
    );
    assert!(m["encryption"].is_object());
    assert_content_verified(&m, &rec, &r);
    let mut v = verify_cmd(pg, &prefix);
    v.args(["--identity", id_arg]);
    let v = run(v);
    v.expect_code(0);
    assert!(v.stdout.contains("content verified"), "{}", v.stdout);
}

/// Change one hex digit of one bytea value inside the stored (gzip) archive, and
/// rewrite the manifest's sha256 and size to match: the bytes are then "intact", the
/// row counts right, and only the digests can tell.
#[test]
fn a_changed_bytea_digit_fails_the_drill_and_verify_naming_the_table() {
    let pg = Pg::V15;
    let name = unique("content_flip");
    let db = awkward_db(pg, &name);
    let prefix = unique("content_flip");
    let (_, rec, _) = backup_and_drill(pg, &db, &prefix, &[]);
    assert_eq!(rec["content_verified"], true, "the control passes: {rec}");

    let key = one_key(&prefix, ".dump.gz");
    let mut archive = gunzip(&s3_get(&key));
    let needle = b"\\\\xdeadbeef";
    let at = archive
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the bytea value is in the archive");
    archive[at + needle.len() - 1] = b'e';
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&archive).unwrap();
    let stored = gz.finish().unwrap();
    let mkey = one_key(&prefix, ".manifest.json");
    let mut m = s3_json(&mkey);
    m["sha256"] = sha256_hex(&stored).into();
    m["stored_bytes"] = stored.len().into();
    assert_eq!(
        m["uncompressed_bytes"].as_u64().unwrap() as usize,
        archive.len()
    );
    s3_put(&key, stored);
    s3_put(&mkey, serde_json::to_vec_pretty(&m).unwrap());

    let r = run(drill_cmd(pg, &prefix));
    r.expect_code(1);
    assert!(!r.stderr.contains("sha256 mismatch"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("table public.awkward: content differs from the backup's digest (digest "),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("table public.notes: content differs"),
        "only the changed table is named: {}",
        r.stderr
    );
    assert_no_scratch_left(pg, &r);
    let rec = s3_json(&one_key(&prefix, ".drill.json"));
    assert_eq!(rec["passed"], false);
    assert_eq!(rec["content_verified"], false);
    let failures = rec["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{rec}");
    assert!(
        failures[0].as_str().unwrap().contains("public.awkward"),
        "{rec}"
    );
    let list = run(s3_cmd("list", &prefix));
    assert!(list.stdout.contains("DRILL FAILED"), "{}", list.stdout);

    let v = run(verify_cmd(pg, &prefix));
    v.expect_code(1);
    assert!(v.stderr.contains("NOT intact"), "{}", v.stderr);
    assert!(
        v.stderr
            .contains("table public.awkward: content differs from the manifest (digest "),
        "{}",
        v.stderr
    );
}

/// The same rows stored in another physical order (inserted in reverse, then moved
/// by updates) give the same digest, and that backup's drill is content verified.
#[test]
fn rows_in_another_physical_order_match() {
    let pg = Pg::V15;
    let name = unique("content_order");
    let db = awkward_db(pg, &name);
    psql(
        pg,
        &db.url,
        "CREATE TEMP TABLE t AS SELECT * FROM public.awkward;
         ALTER TABLE t DROP COLUMN twice;
         TRUNCATE public.awkward;
         INSERT INTO public.awkward (id, txt, bin, doc, at, f8, f4, num, span, day)
           SELECT * FROM t ORDER BY id DESC;
         UPDATE public.awkward SET txt = txt WHERE id IN (6, 3);
         UPDATE public.awkward SET id = id WHERE id = 4;",
    );
    let order = psql(
        pg,
        &db.url,
        "SELECT string_agg(id::text, ',') FROM public.awkward",
    );
    assert_ne!(order.trim(), "1,2,3,4,5,6", "the heap order really differs");
    let prefix = unique("content_order");
    let (m, rec, r) = backup_and_drill(pg, &db, &prefix, &[]);
    assert_content_verified(&m, &rec, &r);
}

/// A manifest from before digests (no `content`): drilled on row counts as before,
/// labelled "counts only" by the drill, `list` and `verify`.
#[test]
fn a_backup_without_digests_is_counts_only() {
    let pg = Pg::V15;
    let name = unique("content_old");
    let db = awkward_db(pg, &name);
    let prefix = unique("content_old");
    let mut cmd = s3_run(&db.url, &prefix, &name);
    cmd.env("PATH", pg.path_env());
    run(cmd).expect_code(0);
    let mkey = one_key(&prefix, ".manifest.json");
    let mut m = s3_json(&mkey);
    m.as_object_mut()
        .unwrap()
        .remove("content")
        .expect("content digests");
    s3_put(&mkey, serde_json::to_vec_pretty(&m).unwrap());

    let group = unique("counts_only_group");
    let mut drill = drill_cmd(pg, &prefix);
    drill.env("LEAFLOCK_BACKUP_METRICS_DATABASE", &group);
    let r = run(drill);
    r.expect_code(0);
    let pushed = pushed_metrics(&group);
    assert_eq!(
        pushed.get("leaflock_restore_drill_content_verified"),
        Some(&0.0),
        "{pushed:?}"
    );
    assert!(!pushed.contains_key("leaflock_backup_last_content_verified_timestamp_seconds"));
    assert!(
        r.line("restore drill passed (counts only)").is_some(),
        "{}",
        r.stderr
    );
    assert_no_scratch_left(pg, &r);
    let rec = s3_json(&one_key(&prefix, ".drill.json"));
    assert_eq!(rec["content_verified"], false);
    assert_eq!(rec["digests_checked"], 0);
    let list = run(s3_cmd("list", &prefix));
    assert!(list.stdout.contains("counts only"), "{}", list.stdout);
    let mut tables = s3_cmd("restore", &prefix);
    tables.arg("--list");
    let tables = run(tables);
    tables.expect_code(0);
    assert!(
        tables
            .stdout
            .lines()
            .any(|l| l.starts_with("public.awkward ") && l.contains("- (counts only)")),
        "{}",
        tables.stdout
    );
    let v = run(verify_cmd(pg, &prefix));
    v.expect_code(0);
    assert!(v.stdout.contains("counts only"), "{}", v.stdout);
}

/// A manifest written before `blake3-sum` records `sha256-sum` digests: the drill and
/// `verify` recompute those with SHA-256 and check them as before (content verified);
/// a changed digest still fails, naming the table; an algorithm this version does not
/// know is a failure, never a pass. The database holds only the fixture's tables, so
/// every digest the old manifest needs is known from an independent implementation.
#[test]
fn an_old_sha256_sum_manifest_is_still_content_verified() {
    let pg = Pg::V15;
    let name = unique("content_sha256");
    let db = TestDb::empty(pg, &name);
    let sql = std::fs::read_to_string(repo_root().join("tests/fixtures/awkward.sql")).unwrap();
    psql(pg, &db.url, &sql);
    let prefix = unique("content_sha256");
    let mut cmd = s3_run(&db.url, &prefix, &name);
    cmd.env("PATH", pg.path_env());
    run(cmd).expect_code(0);
    let mkey = one_key(&prefix, ".manifest.json");
    let new = s3_json(&mkey);
    assert_eq!(new["content"]["algorithm"], "blake3-sum");
    assert_eq!(new["content"]["tables"].as_array().unwrap().len(), 4);
    for (schema, table, digest) in AWKWARD_BLAKE3 {
        assert_eq!(
            content_table(&new, schema, table)["digest"],
            digest,
            "{schema}.{table}"
        );
    }

    // The manifest as the version before blake3-sum wrote it.
    let with = |algorithm: &str, digests: &[(&str, &str, &str)]| {
        let mut m = new.clone();
        m["content"]["algorithm"] = algorithm.into();
        for t in m["content"]["tables"].as_array_mut().unwrap() {
            let (_, _, d) = digests
                .iter()
                .find(|(s, n, _)| t["schema"] == *s && t["name"] == *n)
                .unwrap_or_else(|| panic!("an unexpected table {t}"));
            t["digest"] = (*d).into();
        }
        s3_put(&mkey, serde_json::to_vec_pretty(&m).unwrap());
    };
    with("sha256-sum", &AWKWARD_SHA256);
    let r = run(drill_cmd(pg, &prefix));
    r.expect_code(0);
    assert!(
        r.line("restore drill passed (content verified)").is_some(),
        "{}",
        r.stderr
    );
    assert_no_scratch_left(pg, &r);
    let rec = s3_json(&one_key(&prefix, ".drill.json"));
    assert_eq!(rec["content_verified"], true, "{rec}");
    assert_eq!(rec["digests_checked"], 4, "{rec}");
    let v = run(verify_cmd(pg, &prefix));
    v.expect_code(0);
    assert!(
        v.stdout.contains("content verified (4 tables)"),
        "{}",
        v.stdout
    );

    // One sha256-sum digest changed: still recomputed and compared, so it fails.
    let mut changed = AWKWARD_SHA256;
    changed[0].2 = "2b41d62e4d5bf58f3862c80ad967a1801bd431b485fa78c3c3aae9c3bbcd4d65";
    with("sha256-sum", &changed);
    let r = run(drill_cmd(pg, &prefix));
    r.expect_code(1);
    assert!(
        r.stderr.contains(
            "table Other Schema.Mixed Case: content differs from the backup's digest (digest "
        ),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("table public.awkward"), "{}", r.stderr);
    let v = run(verify_cmd(pg, &prefix));
    v.expect_code(1);
    assert!(
        v.stderr
            .contains("table Other Schema.Mixed Case: content differs from the manifest (digest "),
        "{}",
        v.stderr
    );

    // The blake3-sum digests under the sha256-sum name: the name chooses the hash.
    with("sha256-sum", &AWKWARD_BLAKE3);
    let r = run(drill_cmd(pg, &prefix));
    r.expect_code(1);
    assert!(
        r.stderr.contains("table public.awkward: content differs"),
        "{}",
        r.stderr
    );

    // A name this version does not know: a failure that says so, in both.
    with("sha512-sum", &AWKWARD_SHA256);
    let r = run(drill_cmd(pg, &prefix));
    r.expect_code(1);
    assert!(
        r.line(
            "restore drill failed: the manifest's content digests use \"sha512-sum\", which this version cannot recompute"
        )
        .is_some(),
        "{}",
        r.stderr
    );
    assert_no_scratch_left(pg, &r);
    let rec = s3_json(&one_key(&prefix, ".drill.json"));
    assert_eq!(rec["passed"], false, "{rec}");
    assert_eq!(rec["content_verified"], false, "{rec}");
    let v = run(verify_cmd(pg, &prefix));
    v.expect_code(1);
    assert!(
        v.line(
            "is NOT intact: its manifest's content digests use \"sha512-sum\", which this version cannot recompute"
        )
        .is_some(),
        "{}",
        v.stderr
    );
}

/// A drill role that may not create amcheck (it is not a trusted extension): the
/// drill says so in its record and still passes, content verified.
#[test]
fn without_amcheck_the_drill_reports_it_and_still_passes() {
    let pg = Pg::V15;
    let name = unique("content_noam");
    let db = awkward_db(pg, &name);
    let prefix = unique("content_noam");
    let mut cmd = s3_run(&db.url, &prefix, &name);
    cmd.env("PATH", pg.path_env());
    run(cmd).expect_code(0);

    let role = unique("drill_role");
    let pw = testbed().pg_password();
    psql(
        pg,
        &pg.admin_url(),
        &format!("CREATE ROLE {role} LOGIN CREATEDB PASSWORD '{pw}'"),
    );
    struct DropRole(Pg, String);
    impl Drop for DropRole {
        fn drop(&mut self) {
            let _ = std::panic::catch_unwind(|| {
                psql(
                    self.0,
                    &self.0.admin_url(),
                    &format!("DROP ROLE IF EXISTS {}", self.1),
                )
            });
        }
    }
    let _guard = DropRole(pg, role.clone());
    let admin = pg.admin_url();
    let (scheme_user, rest) = admin.split_once('@').unwrap();
    let scheme = scheme_user.split("//").next().unwrap();
    let url = format!("{scheme}//{role}:{pw}@{rest}");

    let mut drill = drill_cmd(pg, &prefix);
    drill.env("LEAFLOCK_BACKUP_DATABASE_URL", &url);
    let r = run(drill);
    r.expect_code(0);
    assert!(
        r.line("indexes and heaps not checked").is_some(),
        "{}",
        r.stderr
    );
    assert_no_scratch_left(pg, &r);
    let rec = s3_json(&one_key(&prefix, ".drill.json"));
    assert_eq!(rec["passed"], true, "{rec}");
    assert_eq!(rec["content_verified"], true, "{rec}");
    assert_eq!(rec["amcheck"]["status"], "unavailable", "{rec}");
    assert!(
        rec["amcheck"]["note"]
            .as_str()
            .unwrap()
            .contains("amcheck could not be installed"),
        "{rec}"
    );
}

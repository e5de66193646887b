//! S3 against a real store (the test bed's, or the one `scripts/s3-compat.sh` names
//! through `LEAFLOCK_TEST_S3_*`): request checksums under every `--s3-checksum`
//! setting, equal part sizes, a quiet read path, conditional writes that never
//! overwrite a key, SSE-S3, SSE-C, Object Lock retention, and errors that name a
//! refused feature with the store's answer. A test that needs a feature the store
//! lacks (only as `LEAFLOCK_TEST_S3_LACKS` says) prints why it is skipped.

mod common;

use base64::Engine;
use common::*;
use std::time::Duration;

fn head(bucket: &str, key: &str) -> aws_sdk_s3::operation::head_object::HeadObjectOutput {
    head_part(bucket, key, None)
}

/// HEAD with checksums asked for, of the whole object or of one of its parts.
fn head_part(
    bucket: &str,
    key: &str,
    part: Option<i32>,
) -> aws_sdk_s3::operation::head_object::HeadObjectOutput {
    rt().block_on(async {
        s3().head_object()
            .bucket(bucket)
            .key(key)
            .set_part_number(part)
            .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
            .send()
            .await
            .unwrap_or_else(|e| panic!("head {key} part {part:?}: {e:?}"))
    })
}

/// The part sizes of a completed multipart object, read back by HEAD ?partNumber=N.
fn part_sizes(key: &str) -> Vec<i64> {
    let first = head_part(&testbed().bucket(), key, Some(1));
    let count = first
        .parts_count()
        .expect("a multipart object has a part count");
    let mut sizes = vec![first.content_length().unwrap()];
    for n in 2..=count {
        let h = head_part(&testbed().bucket(), key, Some(n));
        sizes.push(h.content_length().unwrap());
    }
    sizes
}

/// The checksum of `algorithm` (as `--s3-checksum` names it) in a HEAD answer.
fn checksum_of<'a>(
    h: &'a aws_sdk_s3::operation::head_object::HeadObjectOutput,
    algorithm: &str,
) -> Option<&'a str> {
    match algorithm {
        "crc32" => h.checksum_crc32(),
        "crc32c" => h.checksum_crc32_c(),
        "crc64nvme" => h.checksum_crc64_nvme(),
        "sha1" => h.checksum_sha1(),
        "sha256" => h.checksum_sha256(),
        other => panic!("not an algorithm: {other}"),
    }
}

const SETTINGS: &[&str] = &[
    "sha256",
    "sha1",
    "crc32",
    "crc32c",
    "crc64nvme",
    "auto",
    "when-required",
];

/// Every `--s3-checksum` setting (or those `LEAFLOCK_TEST_S3_CHECKSUMS` names, as
/// `scripts/s3-compat.sh` runs them one by one) stores a multipart backup that
/// `verify` reads back; a named algorithm is the one the store keeps, read back by
/// HEAD (the run itself checked it, and would have failed without it).
#[test]
fn every_checksum_setting_stores_a_multipart_backup_that_verifies() {
    let settings: Vec<String> = match testbed().var_opt("LEAFLOCK_TEST_S3_CHECKSUMS") {
        Some(list) => list.split(',').map(|s| s.trim().to_string()).collect(),
        None => SETTINGS.iter().map(|s| s.to_string()).collect(),
    };
    let name = unique("checksums");
    let db = TestDb::leaflock(Pg::V15, &name, 24);
    for setting in &settings {
        let prefix = unique("checksums");
        let mut cmd = s3_run(&db.url, &prefix, &name);
        cmd.args(["--part-size", "5MiB", "--s3-checksum", setting]);
        let r = run(cmd);
        r.expect_code(0);
        let object = one_key(&prefix, ".dump.gz");
        assert!(
            part_sizes(&object).len() >= 2,
            "{setting}: a multipart object"
        );
        if !["auto", "when-required"].contains(&setting.as_str()) {
            let h = head(&testbed().bucket(), &object);
            assert!(
                checksum_of(&h, setting).is_some_and(|c| !c.is_empty()),
                "{setting}: the store keeps the object's {setting} checksum: {h:?}"
            );
            let manifest = one_key(&prefix, ".manifest.json");
            let h = head(&testbed().bucket(), &manifest);
            assert!(
                checksum_of(&h, setting).is_some(),
                "{setting}: and the manifest's"
            );
        }
        run(s3_cmd("verify", &prefix)).expect_code(0);
    }
}

/// A store that refuses the SDK's flexible checksums (Backblaze B2 answers 400
/// InvalidArgument "Unsupported header 'x-amz-checksum-crc32'", older Cloudflare R2 501
/// NotImplemented), emulated by refusing every request with a checksum header: the
/// default fails, naming the setting and the store's answer; `when-required` sends none,
/// and the backup stores, lists and verifies.
#[test]
fn a_store_that_refuses_flexible_checksums_works_with_when_required() {
    let name = unique("nochecksums");
    let db = TestDb::leaflock(Pg::V15, &name, 12);
    let proxy = proxy::start(
        &proxy::host_port(&testbed().s3_endpoint()),
        &["--fault", "status=400,code=InvalidArgument,header=checksum"],
    );
    let via = |cmd: &mut std::process::Command| {
        cmd.env("LEAFLOCK_BACKUP_S3_ENDPOINT", proxy.url())
            .env("LEAFLOCK_BACKUP_S3_MAX_ATTEMPTS", "2");
    };
    let prefix = unique("nochecksums");
    let mut cmd = s3_run(&db.url, &prefix, &name);
    via(&mut cmd);
    cmd.args(["--part-size", "5MiB"]);
    let r = run(cmd);
    r.expect_code(1);
    for needle in ["HTTP 400", "InvalidArgument", "--s3-checksum sha256"] {
        assert!(r.stderr.contains(needle), "{needle}:\n{}", r.stderr);
    }
    assert_nothing_left(&prefix);

    let refused_before = proxy.log().matches("-> 400").count();
    let mut cmd = s3_run(&db.url, &prefix, &name);
    via(&mut cmd);
    cmd.args(["--part-size", "5MiB", "--s3-checksum", "when-required"]);
    run(cmd).expect_code(0);
    for sub in ["list", "verify"] {
        let mut cmd = s3_cmd(sub, &prefix);
        via(&mut cmd);
        cmd.env("LEAFLOCK_BACKUP_S3_CHECKSUM", "when-required");
        run(cmd).expect_code(0);
    }
    assert_eq!(
        proxy.log().matches("-> 400").count(),
        refused_before,
        "no request carried a checksum:\n{}",
        proxy.log()
    );
}

/// Cloudflare R2 refuses a multipart upload whose parts (but the last) differ in size:
/// read back by part, every part but the last is exactly the part size, the last no
/// larger, and together they are the object.
#[test]
fn every_part_but_the_last_is_exactly_the_part_size() {
    let name = unique("partsizes");
    let db = TestDb::leaflock(Pg::V15, &name, 24);
    let prefix = unique("partsizes");
    let mut cmd = s3_run(&db.url, &prefix, &name);
    // An odd size (not a power of two) and pieces from the compressor that never
    // line up with it.
    cmd.args(["--part-size", "5300KiB"]);
    run(cmd).expect_code(0);
    let object = one_key(&prefix, ".dump.gz");
    let sizes = part_sizes(&object);
    assert!(sizes.len() >= 2, "{sizes:?}");
    let (last, rest) = sizes.split_last().unwrap();
    assert!(rest.iter().all(|s| *s == 5300 * 1024), "{sizes:?}");
    assert!(*last > 0 && *last <= 5300 * 1024, "{sizes:?}");
    let total = head(&testbed().bucket(), &object).content_length().unwrap();
    assert_eq!(sizes.iter().sum::<i64>(), total);
}

/// Reading a multipart object (verify, the drill) logs nothing about checksums: the
/// SDK's "part-level checksum which can't be validated" warning read like a fault. The
/// read side checks the sha256 itself.
#[test]
fn reading_a_multipart_object_logs_no_checksum_warning() {
    let name = unique("quietread");
    let db = TestDb::leaflock(Pg::V15, &name, 24);
    let prefix = unique("quietread");
    let mut cmd = s3_run(&db.url, &prefix, &name);
    cmd.args(["--part-size", "5MiB", "--restore-drill"]);
    let r = run(cmd);
    r.expect_code(0);
    assert!(part_sizes(&one_key(&prefix, ".dump.gz")).len() >= 2);
    let v = run(s3_cmd("verify", &prefix));
    v.expect_code(0);
    for (what, log) in [("run with a drill", &r.stderr), ("verify", &v.stderr)] {
        assert!(
            !log.contains("part-level checksum") && !log.contains("can't be validated"),
            "{what}:\n{log}"
        );
    }
}

/// A store that refuses a requested feature (Garage and SSE-C), emulated where the
/// test bed's store would accept it: the error names the feature and the store's
/// answer. A refused HEAD has no body, so only its status: it used to read "error".
#[test]
fn a_refused_feature_is_named_with_the_stores_answer() {
    let name = unique("refused");
    let db = TestDb::leaflock(Pg::V15, &name, 1);
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
    for (fault, needles) in [
        (
            "status=501,code=NotImplemented,method=POST,match=uploads",
            &[
                "HTTP 501",
                "NotImplemented",
                "injected by faultproxy",
                "SSE-C (--sse-c-key)",
            ][..],
        ),
        (
            "status=400,code=InvalidRequest,method=HEAD,match=.dump.gz",
            &["HTTP 400", "SSE-C (--sse-c-key)"][..],
        ),
    ] {
        let proxy = proxy::start(
            &proxy::host_port(&testbed().s3_endpoint()),
            &["--fault", fault],
        );
        let prefix = unique("refused");
        let mut cmd = s3_run(&db.url, &prefix, &name);
        cmd.env("LEAFLOCK_BACKUP_S3_ENDPOINT", proxy.url())
            .env("LEAFLOCK_BACKUP_S3_MAX_ATTEMPTS", "1")
            .env("LEAFLOCK_BACKUP_SSE_C_KEY", &key);
        let r = run(cmd);
        r.expect_code(1);
        for needle in needles {
            assert!(
                r.stderr.contains(needle),
                "{fault}: {needle}:\n{}",
                r.stderr
            );
        }
        assert_nothing_left(&prefix);
    }
}

#[test]
fn objects_are_server_side_encrypted() {
    if store_lacks("sse-s3") {
        return;
    }
    let name = unique("s3prot");
    let db = TestDb::leaflock(Pg::V15, &name, 12);
    let url = db.url.clone();
    let prefix = unique("s3prot");
    let mut cmd = s3_run(&url, &prefix, &name);
    cmd.args(["--sse", "AES256", "--part-size", "5MiB"]);
    run(cmd).expect_code(0);
    let h = head(&testbed().bucket(), &one_key(&prefix, ".dump.gz"));
    assert_eq!(
        h.server_side_encryption(),
        Some(&aws_sdk_s3::types::ServerSideEncryption::Aes256)
    );
}

#[test]
fn objects_at_the_keys_of_the_same_second_are_never_overwritten() {
    if store_lacks("conditional-writes") {
        // Say what the store does with a second PutObject with If-None-Match: *.
        let key = format!("{}/probe", unique("ifnonematch"));
        s3_put(&key, b"first".to_vec());
        let second = rt().block_on(async {
            s3().put_object()
                .bucket(testbed().bucket())
                .key(&key)
                .if_none_match("*")
                .body(b"second".to_vec().into())
                .send()
                .await
        });
        println!(
            "NOTE: a second PutObject with If-None-Match: * {}",
            match second {
                Ok(_) => "succeeded and overwrote the key",
                Err(_) => "was refused",
            }
        );
        return;
    }
    let name = unique("nooverwrite");
    let db = TestDb::leaflock(Pg::V15, &name, 1);
    let url = db.url.clone();
    let prefix = unique("nooverwrite");
    // Occupy the keys of the next seconds, in the earlier layout and in this database's
    // keys (other runs of the same second): the run takes a key of its own and touches
    // none of them.
    let now = chrono::Utc::now();
    let mut occupied = Vec::new();
    for s in 0..20 {
        let t = now + chrono::Duration::seconds(s);
        for key in [
            format!(
                "{prefix}/{}/leaflock_backup_{}.dump.gz",
                t.format("%Y/%m/%d"),
                t.format("%Y%m%dT%H%M%SZ")
            ),
            format!(
                "{prefix}/{name}/{}/leaflock_backup_{}_000000.dump.gz",
                t.format("%Y/%m/%d"),
                t.format("%Y%m%dT%H%M%SZ")
            ),
        ] {
            s3_put(&key, b"somebody else's object".to_vec());
            occupied.push(key);
        }
    }
    let r = run(s3_run(&url, &prefix, &name));
    r.expect_code(0);
    let key = r.line("backup complete").unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!occupied.contains(&key), "{key}");
    for k in &occupied {
        assert_eq!(s3_get(k), b"somebody else's object", "{k} untouched");
    }
    assert_eq!(s3_open_uploads(&format!("{prefix}/")), Vec::<String>::new());
}

#[test]
fn sse_c_objects_need_the_key_to_be_read() {
    if store_lacks("sse-c") {
        return;
    }
    let name = unique("ssec");
    let db = TestDb::leaflock(Pg::V15, &name, 1);
    let url = db.url.clone();
    let prefix = unique("ssec");
    let key: [u8; 32] = rand::random();
    let key = base64::engine::general_purpose::STANDARD.encode(key);
    let mut cmd = s3_run(&url, &prefix, &name);
    cmd.env("LEAFLOCK_BACKUP_SSE_C_KEY", &key);
    run(cmd).expect_code(0);

    let object = one_key(&prefix, ".dump.gz");
    let plain = rt().block_on(async {
        s3().get_object()
            .bucket(testbed().bucket())
            .key(&object)
            .send()
            .await
    });
    assert!(plain.is_err(), "readable without the key");

    let mut with_key = s3_cmd("verify", &prefix);
    with_key.env("LEAFLOCK_BACKUP_SSE_C_KEY", &key);
    run(with_key).expect_code(0);
    // The manifest is encrypted too: without the key it cannot be read, which `list`
    // reports for that entry instead of failing.
    let without = run(s3_cmd("list", &prefix));
    without.expect_code(0);
    assert!(
        without.stdout.contains("BAD MANIFEST (cannot read it"),
        "{}",
        without.stdout
    );

    let mut bad = s3_cmd("verify", &prefix);
    bad.env("LEAFLOCK_BACKUP_SSE_C_KEY", "c2hvcnQ=");
    let r = run(bad);
    r.expect_code(2);
    assert!(r.stderr.contains("--sse-c-key"), "{}", r.stderr);
}

#[test]
fn object_lock_retains_backups_for_the_configured_days() {
    if store_lacks("object-lock") {
        return;
    }
    let bucket = object_lock_bucket();
    let name = unique("objlock");
    let db = TestDb::leaflock(Pg::V15, &name, 1);
    let url = db.url.clone();
    let prefix = unique("objlock");
    let mut cmd = s3_run(&url, &prefix, &name);
    cmd.env(
        "LEAFLOCK_BACKUP_S3_BUCKET",
        format!("s3://{bucket}/{prefix}"),
    )
    .args([
        "--object-lock-days",
        "2",
        "--object-lock-mode",
        "governance",
    ]);
    run(cmd).expect_code(0);
    let keys = rt().block_on(async {
        s3().list_objects_v2()
            .bucket(bucket)
            .prefix(format!("{prefix}/"))
            .send()
            .await
            .unwrap()
            .contents()
            .iter()
            .map(|o| o.key().unwrap().to_string())
            .collect::<Vec<_>>()
    });
    assert_eq!(keys.len(), 2, "{keys:?}");
    for k in keys {
        let h = head(bucket, &k);
        assert_eq!(
            h.object_lock_mode(),
            Some(&aws_sdk_s3::types::ObjectLockMode::Governance),
            "{k}"
        );
        let until = h
            .object_lock_retain_until_date()
            .expect("retain-until")
            .secs();
        let expected = (chrono::Utc::now() + chrono::Duration::days(2)).timestamp();
        assert!(
            (until - expected).abs() < Duration::from_secs(600).as_secs() as i64,
            "{k}: {until} vs {expected}"
        );
    }
}

/// The runner's whole round on the store: a run with a drill, `list`, `verify`, a
/// `drill` of `latest`, a second run, and `prune` down to one backup (one DeleteObject
/// per key: the runner never sends DeleteObjects, so no store's Content-MD5 rule for
/// batch deletes applies).
#[test]
fn run_list_verify_drill_and_prune_work() {
    let name = unique("round");
    let db = TestDb::leaflock(Pg::V15, &name, 2);
    let prefix = unique("round");
    for _ in 0..2 {
        let mut cmd = s3_run(&db.url, &prefix, &name);
        cmd.arg("--restore-drill");
        run(cmd).expect_code(0);
        std::thread::sleep(Duration::from_millis(1100));
    }
    let list = run(s3_cmd("list", &prefix));
    list.expect_code(0);
    assert_eq!(
        keys_ending(&prefix, ".manifest.json").len(),
        2,
        "{}",
        list.stdout
    );
    run(s3_cmd("verify", &prefix)).expect_code(0);
    let mut drill = s3_cmd("drill", &prefix);
    drill.env("LEAFLOCK_BACKUP_DATABASE_URL", Pg::V15.admin_url());
    run(drill).expect_code(0);
    // Through a proxy that refuses DeleteObjects as MinIO does without Content-MD5:
    // prune never sends one.
    let proxy = proxy::start(
        &proxy::host_port(&testbed().s3_endpoint()),
        &["--fault", "status=400,code=MissingContentMD5,match=?delete"],
    );
    let mut prune = s3_cmd("prune", &prefix);
    prune
        .args(["--keep-last", "1", "--database-url", &db.url])
        .env("LEAFLOCK_BACKUP_S3_ENDPOINT", proxy.url());
    run(prune).expect_code(0);
    assert!(proxy.log().contains("DELETE "), "{}", proxy.log());
    assert!(!proxy.log().contains("?delete"), "{}", proxy.log());
    assert_eq!(keys_ending(&prefix, ".manifest.json").len(), 1);
    assert_eq!(keys_ending(&prefix, ".dump.gz").len(), 1);
    run(s3_cmd("verify", &prefix)).expect_code(0);
}

/// On a store that ignores SSE-S3, SSE-C or Object Lock (Garage ignores SSE-S3 and
/// Object Lock: the request succeeds, nothing is applied; moto applies neither SSE-C nor
/// Object Lock given to a multipart upload), asking for it fails the run and leaves no
/// object, whether the store refuses the request or ignores it (then the read-back
/// catches it). Runs only where `LEAFLOCK_TEST_S3_LACKS` says the store lacks them;
/// elsewhere the same check is proven by `tests/faults.rs` with the headers stripped.
#[test]
fn a_protection_the_store_ignores_fails_the_run_and_leaves_no_object() {
    let name = unique("ignored");
    let db = TestDb::leaflock(Pg::V15, &name, 2);
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
    let mut tried = 0;
    for (feature, flags, env, applied, asked) in [
        (
            "sse-s3",
            &["--sse", "AES256"][..],
            None,
            "the store did not apply SSE-S3",
            "SSE-S3 (--sse AES256)",
        ),
        (
            "sse-c",
            &[][..],
            Some(("LEAFLOCK_BACKUP_SSE_C_KEY", key.as_str())),
            "the store did not apply SSE-C",
            "SSE-C (--sse-c-key)",
        ),
        (
            "object-lock",
            &["--object-lock-days", "1"][..],
            None,
            "the store did not apply Object Lock",
            "Object Lock (--object-lock-days 1)",
        ),
    ] {
        let lacks = testbed()
            .var_opt("LEAFLOCK_TEST_S3_LACKS")
            .unwrap_or_default()
            .split(',')
            .any(|f| f.trim() == feature);
        if !lacks {
            continue;
        }
        tried += 1;
        let prefix = unique("ignored");
        let mut cmd = s3_run(&db.url, &prefix, &name);
        cmd.args(flags);
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let r = run(cmd);
        r.expect_code(1);
        assert!(
            r.stderr.contains(applied) || r.stderr.contains(asked),
            "{feature}: {applied} or a refusal naming {asked}:\n{}",
            r.stderr
        );
        assert!(!r.stderr.contains("backup complete"), "{}", r.stderr);
        assert_nothing_left(&prefix);
        let how = if r.stderr.contains(applied) {
            "accepted, not applied (read back)"
        } else {
            "refused"
        };
        println!("NOTE: {feature} {how}, the run failed, no object left");
    }
    if tried == 0 {
        println!("SKIPPED: the store under test applies SSE-S3, SSE-C and Object Lock");
    }
}

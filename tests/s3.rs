//! S3 protections against the real S3 server of the test bed: SHA-256 checksums on
//! every part, conditional writes that never overwrite a key, SSE-S3, SSE-C, and
//! Object Lock retention.

mod common;

use base64::Engine;
use common::*;
use std::time::Duration;

fn head(bucket: &str, key: &str) -> aws_sdk_s3::operation::head_object::HeadObjectOutput {
    rt().block_on(async {
        s3().head_object()
            .bucket(bucket)
            .key(key)
            .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
            .send()
            .await
            .unwrap_or_else(|e| panic!("head {key}: {e:?}"))
    })
}

#[test]
fn parts_carry_sha256_checksums_and_objects_are_server_side_encrypted() {
    let name = unique("s3prot");
    let db = TestDb::leaflock(Pg::V15, &name, 60);
    let url = db.url.clone();
    let prefix = unique("s3prot");
    let mut cmd = s3_run(&url, &prefix, &name);
    cmd.args(["--sse", "AES256", "--part-size", "5MiB"]);
    run(cmd).expect_code(0);
    let h = head(&testbed().bucket(), &one_key(&prefix, ".dump.gz"));
    let checksum = h
        .checksum_sha256()
        .expect("a SHA-256 checksum was sent with the parts");
    let parts: u32 = checksum.rsplit('-').next().unwrap().parse().unwrap();
    assert!(
        parts >= 2,
        "a multipart object of several parts: {checksum}"
    );
    assert_eq!(
        h.server_side_encryption(),
        Some(&aws_sdk_s3::types::ServerSideEncryption::Aes256)
    );
}

#[test]
fn objects_at_the_keys_of_the_same_second_are_never_overwritten() {
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

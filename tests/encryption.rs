//! Client-side encryption with age against the real test bed: public-key recipients
//! (the backup host holds no key that can read backups), the passphrase mode, the
//! drill, verify and restore with the right, a wrong and no identity, and failing closed.

mod common;

use age::secrecy::ExposeSecret;
use common::*;
use serde_json::Value;

fn identity_file(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, String) {
    let id = age::x25519::Identity::generate();
    let path = dir.join(name);
    std::fs::write(&path, format!("{}\n", id.to_string().expose_secret())).unwrap();
    (path, id.to_public().to_string())
}

fn keys(prefix: &str) -> (String, String) {
    let keys = s3_keys(&format!("{prefix}/"));
    let m = keys
        .iter()
        .find(|k| k.ends_with(".manifest.json"))
        .unwrap()
        .clone();
    let o = keys.iter().find(|k| k.contains(".dump.")).unwrap().clone();
    (m, o)
}

#[test]
fn recipients_encrypt_and_only_the_identity_reads_it_back() {
    let name = unique("age");
    let db = TestDb::leaflock(Pg::V15, &name, 2);
    let url = db.url.clone();
    let prefix = unique("age");
    let dir = tempfile::tempdir().unwrap();
    let (id_path, public) = identity_file(dir.path(), "id.txt");
    let (other_path, _) = identity_file(dir.path(), "other.txt");

    let mut cmd = s3_run(&url, &prefix, &name);
    cmd.args([
        "--encrypt-to",
        &public,
        "--restore-drill",
        "--require-encryption",
    ])
    .arg("--identity")
    .arg(&id_path);
    let r = run(cmd);
    r.expect_code(0);
    assert!(r.line("restore drill passed").is_some(), "{}", r.stderr);

    let (mkey, okey) = keys(&prefix);
    assert!(okey.ends_with(".dump.gz.age"), "{okey}");
    let manifest_text = String::from_utf8(s3_get(&mkey)).unwrap();
    let m: Value = serde_json::from_str(&manifest_text).unwrap();
    assert_eq!(m["encryption"]["scheme"], "age-x25519");
    assert_eq!(m["encryption"]["recipients"][0], public.as_str());
    assert!(
        !manifest_text.contains("AGE-SECRET-KEY"),
        "no secret in the manifest"
    );
    let object = s3_get(&okey);
    assert!(object.starts_with(b"age-encryption.org/v1"), "an age file");
    for marker in [&b"PGDMP"[..], b"\x1f\x8b\x08", b"note_versions", b"pg_trgm"] {
        assert!(
            !object.windows(marker.len()).any(|w| w == marker),
            "plaintext marker {:?} in the ciphertext",
            String::from_utf8_lossy(marker)
        );
    }

    // verify: the right identity, a wrong one, none.
    let mut ok = s3_cmd("verify", &prefix);
    ok.arg("--identity").arg(&id_path);
    run(ok).expect_code(0);
    let mut wrong = s3_cmd("verify", &prefix);
    wrong.arg("--identity").arg(&other_path);
    let w = run(wrong);
    w.expect_code(1);
    assert!(
        w.stderr.contains("none of the given identities"),
        "{}",
        w.stderr
    );
    let none = run(s3_cmd("verify", &prefix));
    none.expect_code(1);
    assert!(none.stderr.contains("--identity"), "{}", none.stderr);

    // restore with the identity.
    let target = TestDb::empty(Pg::V15, &unique("age_target"));
    let mut restore = s3_cmd("restore", &prefix);
    restore
        .args(["--target-database-url", &target.url])
        .env("LEAFLOCK_BACKUP_AGE_IDENTITY_FILE", &id_path);
    run(restore).expect_code(0);
    assert_eq!(
        table_counts(Pg::V15, &target.url),
        table_counts(Pg::V15, &url)
    );

    // One table of it: the table of contents is read through the decryption too.
    let one = TestDb::empty(Pg::V15, &unique("age_table"));
    let mut restore = s3_cmd("restore", &prefix);
    restore
        .args(["--target-database-url", &one.url, "--table", "roles"])
        .env("LEAFLOCK_BACKUP_AGE_IDENTITY_FILE", &id_path);
    let r = run(restore);
    r.expect_code(0);
    assert_eq!(r.line("restored content verified").unwrap()["tables"], 1);
    let counts = table_counts(Pg::V15, &one.url);
    assert_eq!(counts.keys().collect::<Vec<_>>(), ["public.roles"]);
    assert_eq!(
        counts["public.roles"],
        table_counts(Pg::V15, &url)["public.roles"]
    );
}

#[test]
fn the_old_jobs_passphrase_encrypts_with_age_scrypt() {
    let name = unique("agepass");
    let db = TestDb::leaflock(Pg::V15, &name, 1);
    let url = db.url.clone();
    let prefix = unique("agepass");
    let mut cmd = s3_run(&url, &prefix, &name);
    cmd.env("BACKUP_ENCRYPTION_KEY", "the-old-jobs-secret");
    run(cmd).expect_code(0);
    let (mkey, _) = keys(&prefix);
    let m: Value = serde_json::from_slice(&s3_get(&mkey)).unwrap();
    assert_eq!(m["encryption"]["scheme"], "age-scrypt");
    assert!(!String::from_utf8(s3_get(&mkey))
        .unwrap()
        .contains("the-old-jobs-secret"));

    let mut ok = s3_cmd("verify", &prefix);
    ok.env("BACKUP_ENCRYPTION_KEY", "the-old-jobs-secret");
    run(ok).expect_code(0);
    let mut bad = s3_cmd("verify", &prefix);
    bad.env("BACKUP_ENCRYPTION_KEY", "not-it");
    run(bad).expect_code(1);
}

#[test]
fn encryption_fails_closed() {
    let name = unique("ageclosed");
    let db = TestDb::leaflock(Pg::V15, &name, 1);
    let url = db.url.clone();
    let prefix = unique("ageclosed");
    let dir = tempfile::tempdir().unwrap();

    // A recipient that does not parse: nothing is uploaded, exit 2.
    let mut bad = s3_run(&url, &prefix, &name);
    bad.args(["--encrypt-to", "age1thisisnotarecipient"]);
    let r = run(bad);
    r.expect_code(2);
    assert!(r.stderr.contains("--encrypt-to"), "{}", r.stderr);
    // Encryption required but none configured.
    let mut unconfigured = s3_run(&url, &prefix, &name);
    unconfigured.arg("--require-encryption");
    let r = run(unconfigured);
    r.expect_code(2);
    assert!(r.stderr.contains("--require-encryption"), "{}", r.stderr);
    // An identity file that cannot be read.
    let mut unreadable = s3_cmd("verify", &prefix);
    unreadable
        .arg("--identity")
        .arg(dir.path().join("missing.txt"));
    let r = run(unreadable);
    r.expect_code(2);
    assert!(r.stderr.contains("--identity"), "{}", r.stderr);
    assert!(
        s3_keys(&format!("{prefix}/")).is_empty(),
        "nothing uploaded"
    );

    // An unencrypted backup is refused where encryption is required.
    run(s3_run(&url, &prefix, &name)).expect_code(0);
    let mut required = s3_cmd("verify", &prefix);
    required.arg("--require-encryption");
    let r = run(required);
    r.expect_code(1);
    assert!(r.stderr.contains("not encrypted"), "{}", r.stderr);
}

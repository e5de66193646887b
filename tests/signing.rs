//! Backups that prove who made them, against the real test bed: signed manifests and
//! drill records, a backup planted by someone with write access to the bucket (made
//! by this very tool, so it looks right in every other way), a manifest altered after
//! signing, key rotation, retention that an unsigned backup cannot steer, and a
//! least-privilege drill role that a hostile archive cannot escape.
//!
//! The planted archives are hostile for real: restoring them runs SQL (through a
//! CHECK constraint evaluated while COPY loads the rows) that creates a role, runs a
//! shell command or writes into another database. Each test also shows that the same
//! archive does that when it is let through, so a refusal is what stops it.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn manifest_of(object_key: &str) -> String {
    format!(
        "{}.manifest.json",
        &object_key[..object_key.find(".dump.").unwrap()]
    )
}

/// A new key pair in `dir`: (private key file, public key line).
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let out = dir.join(name);
    let mut cmd = runner();
    cmd.args(["keygen", "--out"]).arg(&out);
    let r = run(cmd);
    r.expect_code(0);
    (out, r.stdout.trim().to_string())
}

fn role_exists(pg: Pg, role: &str) -> bool {
    psql(
        pg,
        &pg.admin_url(),
        &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{role}'"),
    ) == "1"
}

/// A small database whose archive, when restored, runs `hostile_sql` (plpgsql
/// statements) once per row loaded: a CHECK constraint calls a function whose body was
/// replaced after the row went in, so the source itself never ran it.
fn hostile_db(pg: Pg, name: &str, hostile_sql: &str) -> TestDb {
    let db = TestDb::empty(pg, name);
    let url = db.url.clone();
    psql(
        pg,
        &url,
        "CREATE FUNCTION public.vet(x int) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN RETURN true; END $$;
         CREATE TABLE public.planted (x int CHECK (public.vet(x)));
         INSERT INTO public.planted VALUES (1);",
    );
    psql(
        pg,
        &url,
        &format!(
            "CREATE OR REPLACE FUNCTION public.vet(x int) RETURNS boolean LANGUAGE plpgsql AS $body$ \
             BEGIN {hostile_sql} RETURN true; END $body$;"
        ),
    );
    db
}

/// Two runs in the same second would want the same key.
fn next_second() {
    std::thread::sleep(Duration::from_millis(1100));
}

fn with_trust(mut cmd: Command, keys: &[&str]) -> Command {
    cmd.env("LEAFLOCK_BACKUP_TRUSTED_KEYS", keys.join(","));
    cmd
}

#[test]
fn keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path(), "signing.key");
    assert!(public.starts_with("ed25519:"), "{public}");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let pem = std::fs::read_to_string(&key).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("signing.key.pub"))
            .unwrap()
            .trim(),
        public
    );
    let mut again = runner();
    again.args(["keygen", "--out"]).arg(&key);
    run(again).expect_code(2);
    assert_eq!(std::fs::read_to_string(&key).unwrap(), pem, "untouched");

    // openssl's keys work too: the format is PKCS#8.
    let ossl = dir.path().join("openssl.key");
    let made = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&ossl)
        .status();
    if made.is_ok_and(|s| s.success()) {
        let local = dir.path().join("out");
        let mut cmd = runner();
        cmd.args(["run", "--local-dir"])
            .arg(&local)
            .arg("--signing-key-file")
            .arg(&ossl)
            .args(["--database-url", "postgresql://x@127.0.0.1:1/x"])
            .args(["--connect-timeout", "1"]);
        // The key is accepted (the run then fails on the database, exit 1, not 2).
        let r = run(cmd);
        assert_eq!(r.code, 1, "{}", r.stderr);
    }
}

#[test]
fn a_bad_signing_or_trusted_key_fails_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("backups");
    let name = unique("badkey");
    let db = TestDb::leaflock(Pg::V18, &name, 1);
    let url = db.url.clone();
    let junk = dir.path().join("junk.key");
    std::fs::write(
        &junk,
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    for (flag, value) in [
        ("--signing-key-file", dir.path().join("missing.key")),
        ("--signing-key-file", junk.clone()),
        ("--trusted-key", PathBuf::from("ed25519:AAAA")),
        ("--trusted-key", dir.path().join("missing.pub")),
    ] {
        let mut cmd = runner();
        cmd.args(["run", "--database-url", &url])
            .arg("--local-dir")
            .arg(&local)
            .arg(flag)
            .arg(&value)
            .env("PATH", Pg::V18.path_env());
        let r = run(cmd);
        r.expect_code(2);
        let var = if flag == "--signing-key-file" {
            "LEAFLOCK_BACKUP_SIGNING_KEY_FILE"
        } else {
            "LEAFLOCK_BACKUP_TRUSTED_KEYS"
        };
        assert!(r.stderr.contains(var), "{flag}: {}", r.stderr);
        assert!(!local.exists(), "{flag}: nothing written");
    }
    // `--allow-unsigned latest` is refused: the override names one backup.
    let mut cmd = s3_cmd("verify", &unique("allowlatest"));
    cmd.args(["--allow-unsigned", "latest"]);
    run(cmd).expect_code(2);
}

#[test]
fn a_planted_or_altered_backup_is_never_restored_and_signed_ones_round_trip() {
    let pg = Pg::V15;
    let dir = tempfile::tempdir().unwrap();
    let (key_a, pub_a) = keygen(dir.path(), "a.key");
    let prefix = unique("signed");
    let group = unique("signed_group");

    // 1. The operator's signed backup, drilled in the same run.
    let name = unique("signedsrc");
    let db = TestDb::leaflock(pg, &name, 2);
    let url = db.url.clone();
    let mut cmd = s3_run(&url, &prefix, &group);
    cmd.env("PATH", pg.path_env())
        .arg("--restore-drill")
        .arg("--signing-key-file")
        .arg(&key_a);
    let r = run(cmd);
    r.expect_code(0);
    let signed_key = keys_ending(&prefix, ".dump.gz").pop().unwrap();
    let m = s3_json(&manifest_of(&signed_key));
    let fp_a = m["signature"]["key"].as_str().unwrap().to_string();
    assert_eq!(m["signature"]["algorithm"], "ed25519");
    assert_eq!(m["signature"]["public_key"], pub_a.as_str());
    let rec = s3_json(&format!(
        "{}.drill.json",
        &signed_key[..signed_key.find(".dump.").unwrap()]
    ));
    assert_eq!(rec["signature"]["key"], fp_a.as_str(), "{rec}");
    assert_eq!(rec["sha256"], m["sha256"]);
    // No private key material anywhere it could leak.
    let pem = std::fs::read_to_string(&key_a).unwrap();
    let secret_line = pem.lines().nth(1).unwrap();
    for text in [r.stderr.as_str(), &m.to_string(), &rec.to_string()] {
        assert!(!text.contains(secret_line), "the private key leaked");
    }

    // 2. An attacker with write access plants a newer backup, made by this very tool
    //    without the key: valid manifest, valid sha256, hostile archive.
    next_second();
    let evil_role = unique("evil_role");
    let evil = unique("plantedsrc");
    let evil_db = hostile_db(pg, &evil, &format!("EXECUTE 'CREATE ROLE {evil_role}';"));
    let evil_url = evil_db.url.clone();
    let mut cmd = s3_run(&evil_url, &prefix, &unique("attacker"));
    cmd.env("PATH", pg.path_env());
    run(cmd).expect_code(0);
    use_database(&prefix, &name);
    // ... and moves it among the victim's keys, its manifest saying it is the victim's.
    let made = keys_ending(&prefix, ".dump.gz")
        .into_iter()
        .find(|k| *k != signed_key)
        .unwrap();
    let planted_key = made.replacen(
        &format!("{prefix}/{evil}/"),
        &format!("{prefix}/{name}/"),
        1,
    );
    s3_put(&planted_key, s3_get(&made));
    let mut planted = s3_json(&manifest_of(&made));
    planted["object_key"] = planted_key.clone().into();
    planted["database"] = name.clone().into();
    s3_put(
        &manifest_of(&planted_key),
        serde_json::to_vec_pretty(&planted).unwrap(),
    );

    // 3. And a copy of the signed backup whose manifest was altered after signing
    //    (one more row promised), dated newest of all.
    next_second();
    let now = chrono::Utc::now();
    let forged_key = format!(
        "{prefix}/{}/leaflock_backup_{}.dump.gz",
        now.format("%Y/%m/%d"),
        now.format("%Y%m%dT%H%M%SZ")
    );
    s3_put(&forged_key, s3_get(&signed_key));
    let mut forged = m.clone();
    forged["object_key"] = forged_key.clone().into();
    forged["started_at"] = now.to_rfc3339().into();
    forged["tables"][0]["rows"] = (forged["tables"][0]["rows"].as_i64().unwrap() + 1).into();
    s3_put(
        &manifest_of(&forged_key),
        serde_json::to_vec_pretty(&forged).unwrap(),
    );

    // list: who signed what.
    let trusted = [pub_a.as_str()];
    let l = run(with_trust(s3_cmd("list", &prefix), &trusted));
    l.expect_code(0);
    let line = |k: &str| {
        l.stdout
            .lines()
            .find(|x| x.ends_with(k))
            .unwrap()
            .to_string()
    };
    assert!(
        line(&signed_key).contains(&format!("signed {fp_a}")),
        "{}",
        l.stdout
    );
    assert!(line(&planted_key).contains("unsigned"), "{}", l.stdout);
    assert!(line(&forged_key).contains("BAD SIGNATURE"), "{}", l.stdout);
    let mut lj = with_trust(s3_cmd("list", &prefix), &trusted);
    lj.arg("--json");
    let lj = run(lj);
    let entries: Vec<Value> = serde_json::from_str(&lj.stdout).unwrap();
    let status = |k: &str| {
        entries
            .iter()
            .find(|e| e["key"] == k)
            .map(|e| e["trust"]["status"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(status(&signed_key), "signed");
    assert_eq!(status(&planted_key), "unsigned");
    assert_eq!(status(&forged_key), "bad_signature");

    // drill latest, verify latest, restore latest: the signed backup, nothing else.
    let mut drill = with_trust(s3_cmd("drill", &prefix), &trusted);
    drill
        .env("LEAFLOCK_BACKUP_DATABASE_URL", pg.admin_url())
        .env("LEAFLOCK_BACKUP_PUSHGATEWAY_URL", testbed().pushgateway())
        .env("LEAFLOCK_BACKUP_METRICS_DATABASE", &group)
        .env("LEAFLOCK_BACKUP_SIGNING_KEY_FILE", &key_a)
        .env("PATH", pg.path_env());
    let d = run(drill);
    d.expect_code(0);
    let drilled = d.line("restore drill passed").expect("drill passed");
    assert_eq!(drilled["key"], signed_key.as_str(), "{}", d.stderr);
    assert!(
        d.line(&format!("skipping {planted_key}")).is_some(),
        "{}",
        d.stderr
    );
    assert!(
        d.line(&format!("skipping {forged_key}")).is_some(),
        "{}",
        d.stderr
    );
    assert!(
        !role_exists(pg, &evil_role),
        "no SQL of the planted archive ran"
    );
    let pushed = pushed_metrics(&group);
    assert_eq!(
        pushed.get("leaflock_backup_untrusted_backups"),
        Some(&2.0),
        "{pushed:?}"
    );

    let v = run(with_trust(s3_cmd("verify", &prefix), &trusted));
    v.expect_code(0);
    assert!(
        v.stdout.starts_with(&format!("OK {signed_key} ")),
        "{}",
        v.stdout
    );
    assert!(
        v.stdout.contains(&format!("signed by {fp_a}")),
        "{}",
        v.stdout
    );

    let target = unique("signedtarget");
    let _target_db = TestDb::empty(pg, &target);
    let mut restore = with_trust(s3_cmd("restore", &prefix), &trusted);
    restore
        .args(["--target-database-url", &pg.url(&target), "--yes"])
        .env("PATH", pg.path_env());
    run(restore).expect_code(0);
    assert_eq!(table_counts(pg, &pg.url(&target)), table_counts(pg, &url));
    assert!(!role_exists(pg, &evil_role));

    // Named explicitly, the untrusted ones are refused (exit 1), and nothing runs.
    for k in [&planted_key, &forged_key] {
        for sub in ["drill", "verify", "restore"] {
            let mut cmd = with_trust(s3_cmd(sub, &prefix), &trusted);
            cmd.arg(k.as_str())
                .env("LEAFLOCK_BACKUP_DATABASE_URL", pg.admin_url())
                .env("PATH", pg.path_env());
            if sub == "restore" {
                cmd.args([
                    "--target-database-url",
                    &pg.url(&target),
                    "--yes",
                    "--clean",
                ]);
            }
            let r = run(cmd);
            r.expect_code(1);
            assert!(r.stderr.contains("refusing to"), "{sub} {k}: {}", r.stderr);
            assert!(r.stderr.contains("--allow-unsigned"), "{}", r.stderr);
        }
    }
    assert!(!role_exists(pg, &evil_role));

    // Altered after signing fails even without any trusted key configured.
    let mut cmd = s3_cmd("verify", &prefix);
    cmd.arg(&forged_key);
    let r = run(cmd);
    r.expect_code(1);
    assert!(r.stderr.contains("BAD SIGNATURE"), "{}", r.stderr);

    // The override names one backup, warns, and then the archive does what it was made
    // to do: the refusal above is what stopped it.
    let mut cmd = with_trust(s3_cmd("drill", &prefix), &trusted);
    cmd.arg(&planted_key)
        .args(["--allow-unsigned", &planted_key])
        .env("LEAFLOCK_BACKUP_DATABASE_URL", pg.admin_url())
        .env("PATH", pg.path_env());
    let r = run(cmd);
    r.expect_code(0);
    assert!(
        r.line("going on ONLY because --allow-unsigned names it")
            .is_some(),
        "{}",
        r.stderr
    );
    assert!(
        role_exists(pg, &evil_role),
        "the planted archive is hostile"
    );
    psql(pg, &pg.admin_url(), &format!("DROP ROLE {evil_role}"));

    // Rotation: a new key B signs from now on; A's backups still verify while A stays
    // trusted, and only then.
    next_second();
    let (key_b, pub_b) = keygen(dir.path(), "b.key");
    let mut cmd = s3_run(&url, &prefix, &group);
    cmd.env("PATH", pg.path_env())
        .arg("--signing-key-file")
        .arg(&key_b);
    run(cmd).expect_code(0);
    let both = [pub_a.as_str(), pub_b.as_str()];
    let mut cmd = with_trust(s3_cmd("verify", &prefix), &both);
    cmd.arg(&signed_key);
    run(cmd).expect_code(0);
    let v = run(with_trust(s3_cmd("verify", &prefix), &both));
    v.expect_code(0);
    assert!(
        !v.stdout.contains(&signed_key),
        "latest is B's: {}",
        v.stdout
    );
    let mut cmd = with_trust(s3_cmd("verify", &prefix), &[pub_b.as_str()]);
    cmd.arg(&signed_key);
    let r = run(cmd);
    r.expect_code(1);
    assert!(r.stderr.contains("untrusted key"), "{}", r.stderr);
    // A public key can also be given as a file.
    let mut cmd = with_trust(
        s3_cmd("verify", &prefix),
        &[dir.path().join("a.key.pub").to_str().unwrap()],
    );
    cmd.arg(&signed_key);
    run(cmd).expect_code(0);
}

#[test]
fn retention_never_deletes_a_signed_backup_on_the_word_of_unsigned_ones() {
    let pg = Pg::V18;
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("backups");
    let (key, public) = keygen(dir.path(), "k.key");
    let name = unique("retsigned");
    let db = TestDb::leaflock(pg, &name, 1);
    let url = db.url.clone();
    let backup = |signed: bool| {
        let mut cmd = runner();
        cmd.args(["run", "--database-url", &url])
            .arg("--local-dir")
            .arg(&local)
            .env("PATH", pg.path_env());
        if signed {
            cmd.arg("--signing-key-file").arg(&key);
        }
        run(cmd).expect_code(0);
        next_second();
    };
    backup(true);
    backup(false);
    backup(false);
    let objects = || -> Vec<String> {
        let mut v: Vec<String> = walk_names(&local)
            .into_iter()
            .filter(|n| n.contains(".dump."))
            .collect();
        v.sort();
        v
    };
    let before = objects();
    assert_eq!(before.len(), 3);

    let prune = |trusted: bool| {
        let mut cmd = runner();
        cmd.args(["prune", "--keep-last", "1", "--database-url", &url])
            .arg("--local-dir")
            .arg(&local);
        if trusted {
            cmd.args(["--trusted-key", &public]);
        }
        run(cmd)
    };
    let r = prune(true);
    r.expect_code(0);
    assert_eq!(objects(), before, "nothing deleted: {}", r.stderr);
    assert!(
        r.line("retention does not count it").is_some(),
        "{}",
        r.stderr
    );
    // Without trusted keys the newest (unsigned) backup would be the one kept: the
    // signed one would go. That is what --trusted-key prevents.
    let mut cmd = runner();
    cmd.args([
        "prune",
        "--keep-last",
        "1",
        "--dry-run",
        "--database-url",
        &url,
    ])
    .arg("--local-dir")
    .arg(&local);
    let r = run(cmd);
    r.expect_code(0);
    let signed_name = before[0].rsplit('/').next().unwrap();
    assert!(
        r.lines
            .iter()
            .filter_map(|l| l["msg"].as_str())
            .any(|m| m.starts_with("would delete") && m.contains(signed_name)),
        "the signed backup would go: {}",
        r.stderr
    );
}

/// File names (relative paths) under `dir`.
fn walk_names(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out
}

#[test]
fn a_non_superuser_drill_role_cannot_escape_its_scratch_database() {
    let pg = Pg::V15;
    let dir = tempfile::tempdir().unwrap();
    let role = unique("drill_role");
    let password = format!("pw-{}", unique("x"));
    psql(
        pg,
        &pg.admin_url(),
        &format!("CREATE ROLE {role} LOGIN CREATEDB PASSWORD '{password}'"),
    );
    let admin = pg.admin_url();
    let hostport = admin
        .split('@')
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let drill_url = format!("postgresql://{role}:{password}@{hostport}/postgres");
    let (host, port) = hostport.split_once(':').unwrap();

    // A database the drill must not reach.
    let victim = unique("victim");
    let _victim_db = TestDb::empty(pg, &victim);
    psql(pg, &pg.url(&victim), "CREATE TABLE pwned (x int)");

    let new_role = unique("escaped_role");
    let marker = std::env::temp_dir().join(unique("leaflock_copy_program"));
    let pg_password = testbed().pg_password();
    type Happened<'a> = Box<dyn Fn() -> bool + 'a>;
    let attacks: Vec<(&str, String, Happened)> = vec![
        (
            "create a role",
            format!("EXECUTE 'CREATE ROLE {new_role}';"),
            Box::new(|| role_exists(pg, &new_role)),
        ),
        (
            "run a shell command",
            format!(
                "EXECUTE 'COPY (SELECT 1) TO PROGRAM ''touch {}''';",
                marker.display()
            ),
            Box::new(|| marker.exists()),
        ),
        (
            "write into another database",
            format!(
                "EXECUTE 'CREATE EXTENSION IF NOT EXISTS dblink SCHEMA public'; \
                 PERFORM public.dblink_exec('host={host} port={port} user=postgres password={pg_password} \
                 dbname={victim}', 'INSERT INTO pwned VALUES (1)');"
            ),
            Box::new(|| psql(pg, &pg.url(&victim), "SELECT count(*) FROM pwned") != "0"),
        ),
    ];
    let mut made = Vec::new();
    for (what, sql, happened) in &attacks {
        let src = unique("hostile");
        let src_db = hostile_db(pg, &src, sql);
        let src_url = src_db.url.clone();
        made.push(src_db);
        let local = dir.path().join(&src);
        let mut cmd = runner();
        cmd.args(["run", "--database-url", &src_url])
            .arg("--local-dir")
            .arg(&local)
            .env("PATH", pg.path_env());
        run(cmd).expect_code(0);

        let drill = |url: &str| {
            let mut cmd = runner();
            cmd.args(["drill", "--database-url", &admin, "--database", &src])
                .args(["--drill-database-url", url])
                .arg("--local-dir")
                .arg(&local)
                .env("PATH", pg.path_env());
            run(cmd)
        };
        let r = drill(&drill_url);
        r.expect_code(1);
        assert!(!happened(), "{what}: the drill role could");
        // Refused by PostgreSQL at the hostile statement, not stopped by anything earlier.
        assert!(
            r.stderr.contains("permission denied") || r.stderr.contains("must be superuser"),
            "{what}: {}",
            r.stderr
        );
        assert!(
            r.line("runs as superuser").is_none(),
            "no superuser warning for the drill role: {}",
            r.stderr
        );
        // The same archive restored as a superuser does it: the role is what stopped it.
        let r = drill(&admin);
        assert!(happened(), "{what}: the archive is hostile: {}", r.stderr);
        assert!(r.line("runs as superuser").is_some(), "{}", r.stderr);
        assert!(
            databases_like(pg, "leaflock_drill_")
                .iter()
                .all(|d| !d.contains(
                    // The drill's own run id (it names the scratch database): the
                    // last line's; earlier lines may carry the command's request id.
                    &r.lines.last().unwrap()["run_id"]
                        .as_str()
                        .unwrap()
                        .to_lowercase()
                        .replace('-', "_")
                )),
            "scratch database dropped"
        );
    }
    psql(pg, &admin, &format!("DROP ROLE IF EXISTS {new_role}"));
    let _ = std::fs::remove_file(&marker);
    // Scratch databases the drill role created are gone, so the role can go too.
    psql(pg, &admin, &format!("DROP ROLE {role}"));
}

#[test]
fn an_old_script_archive_is_restored_with_trusted_keys_only_when_named() {
    let pg = Pg::V15;
    let dir = tempfile::tempdir().unwrap();
    let (_, public) = keygen(dir.path(), "k.key");
    let name = unique("legacysigned");
    let db = TestDb::leaflock(pg, &name, 1);
    let url = db.url.clone();
    let password = "old-backup-key";
    let prefix = unique("legacysigned");
    let key = format!("{prefix}/2025/06/01/leaflock_backup_20250601_020000.sql.gz.enc");
    let script = format!(
        "set -o pipefail; '{}' --clean --if-exists --create --dbname='{url}' | gzip | \
         openssl enc -aes-256-cbc -salt -pass 'pass:{password}'",
        pg.tool("pg_dump").display()
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    assert!(out.status.success());
    s3_put(&key, out.stdout);

    let l = run(with_trust(s3_cmd("list", &prefix), &[&public]));
    assert!(
        l.stdout
            .lines()
            .any(|x| x.ends_with(&key) && x.contains("unsigned")),
        "{}",
        l.stdout
    );
    let target = unique("legacysigned_target");
    let _target_db = TestDb::empty(pg, &target);
    let restore = |allow: bool| {
        let mut cmd = with_trust(s3_cmd("restore", &prefix), &[&public]);
        cmd.args([
            key.as_str(),
            "--target-database-url",
            &pg.url(&target),
            "--yes",
        ])
        .env("BACKUP_ENCRYPTION_KEY", password)
        .env("PATH", pg.path_env());
        if allow {
            cmd.args(["--allow-unsigned", &key]);
        }
        run(cmd)
    };
    let r = restore(false);
    r.expect_code(1);
    assert!(r.stderr.contains("refusing to restore"), "{}", r.stderr);
    assert!(table_counts(pg, &pg.url(&target)).is_empty());
    let r = restore(true);
    r.expect_code(0);
    assert!(
        r.line("--allow-unsigned names it").is_some(),
        "{}",
        r.stderr
    );
    assert_eq!(table_counts(pg, &pg.url(&target)), table_counts(pg, &url));
}

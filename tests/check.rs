//! `leaflock-backup check` against the real servers: a good setup passes every line and
//! leaves nothing behind (no object, no open upload, no object version, no Pushgateway
//! group, no scratch database); each broken setup (wrong password, a table the role
//! cannot read and a drill role without CREATEDB, a store that denies DELETE, a wrong S3
//! key, a clock 10 minutes off, a Pushgateway that is down, a recipient the drill's
//! identity cannot decrypt, a malformed one, a protection the store does not apply)
//! fails the right line with its fix and exits 1 (2 for bad configuration), leaving
//! nothing. The store that denies DELETE and the one that ignores Object Lock are the
//! fault proxy's (the test bed's store does neither).

mod common;

use age::secrecy::ExposeSecret;
use common::proxy;
use common::receiver::Receiver;
use common::*;
use std::process::Command;

fn check_cmd(db_url: &str, prefix: &str) -> Command {
    let mut cmd = runner();
    cmd.arg("check")
        .env("LEAFLOCK_BACKUP_DATABASE_URL", db_url)
        .env("LEAFLOCK_BACKUP_PUSHGATEWAY_URL", testbed().pushgateway())
        .env("LEAFLOCK_BACKUP_METRICS_DATABASE", unique("check_group"));
    s3_env(&mut cmd, prefix);
    cmd
}

/// The line `check` printed for `what`: its mark and text (with the fix line, if any).
fn line(r: &RunResult, what: &str) -> (char, String) {
    let lines: Vec<&str> = r.stdout.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        let mut chars = l.chars();
        let mark = chars.next().unwrap_or(' ');
        let rest = chars.as_str().trim_start();
        if rest.starts_with(what)
            && rest[what.len()..].starts_with(char::is_whitespace)
            && "✓✗-".contains(mark)
        {
            let mut text = rest.to_string();
            if let Some(next) = lines
                .get(i + 1)
                .filter(|n| n.trim_start().starts_with("fix:"))
            {
                text.push('\n');
                text.push_str(next.trim());
            }
            return (mark, text);
        }
    }
    panic!("no line for {what:?} in:\n{}\nlog:\n{}", r.stdout, r.stderr);
}

fn failed_lines(r: &RunResult) -> Vec<String> {
    r.stdout
        .lines()
        .filter(|l| l.starts_with('✗'))
        .map(str::to_string)
        .collect()
}

fn pushgateway_groups_with_probe() -> usize {
    let body = rt().block_on(async {
        reqwest::get(format!("{}/api/v1/metrics", testbed().pushgateway()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    body.matches("\"probe\":\"check\"").count()
}

#[test]
fn a_good_setup_passes_every_check_and_leaves_nothing() {
    let name = unique("check_good");
    let db = TestDb::leaflock(Pg::V15, &name, 1);
    let prefix = unique("check_good");
    let dir = tempfile::tempdir().unwrap();
    let id = age::x25519::Identity::generate();
    let id_path = dir.path().join("id.txt");
    std::fs::write(&id_path, format!("{}\n", id.to_string().expose_secret())).unwrap();
    let rx = Receiver::start(true);
    let hook = rx.url("");
    let mut cmd = check_cmd(&db.url, &prefix);
    cmd.args(["--restore-drill", "--encrypt-to"])
        .arg(id.to_public().to_string())
        .arg("--identity")
        .arg(&id_path)
        .args(["--notify-url", &format!("{hook}/events")])
        .args(["--healthchecks-url", &format!("{hook}/ping/abc")])
        .arg("--metrics-textfile")
        .arg(dir.path().join("leaflock.prom"));
    let r = run(cmd);
    r.expect_code(0);
    assert_eq!(failed_lines(&r), Vec::<String>::new(), "{}", r.stdout);
    for what in [
        "configuration",
        "database",
        "pg_dump",
        "privileges",
        "run lock",
        "restore drill",
        "destination",
        "clock",
        "permissions",
        "encryption",
        "pushgateway",
        "metrics textfile",
        "notification",
    ] {
        assert_eq!(line(&r, what).0, '✓', "{what}: {}", r.stdout);
    }
    assert!(
        line(&r, "encryption").1.contains("decrypts"),
        "{}",
        r.stdout
    );
    assert!(
        line(&r, "privileges").1.contains("can read all"),
        "{}",
        r.stdout
    );
    assert!(r.line("check passed").is_some(), "{}", r.stderr);

    // Nothing left: no object, no open upload, no probe group, no scratch database,
    // no textfile (check writes none).
    assert_nothing_left(&prefix);
    assert_eq!(pushgateway_groups_with_probe(), 0);
    assert_eq!(
        databases_like(Pg::V15, "leaflock_drill_"),
        Vec::<String>::new()
    );
    assert!(!dir.path().join("leaflock.prom").exists());
    // The receiver got one check event and a /log message (which changes no check's
    // state), never a start, success or fail ping.
    let seen = rx.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.iter()
            .any(|s| s.starts_with("POST /events ") && s.contains("\"event\":\"check\"")),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|s| s.starts_with("POST /ping/abc/log ")),
        "{seen:?}"
    );
}

#[test]
fn a_wrong_password_fails_the_database_line() {
    let name = unique("check_pw");
    let db = TestDb::leaflock(Pg::V15, &name, 1);
    let prefix = unique("check_pw");
    let bad = db
        .url
        .replacen(&testbed().pg_password(), "not-the-password", 1);
    assert_ne!(bad, db.url);
    let r = run(check_cmd(&bad, &prefix));
    r.expect_code(1);
    let (mark, text) = line(&r, "database");
    assert_eq!(mark, '✗', "{}", r.stdout);
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(text.contains("fix: check --database-url"), "{text}");
    assert!(
        !text.contains("not-the-password"),
        "the password is shown: {text}"
    );
    assert_eq!(line(&r, "pg_dump").0, '-');
    assert_eq!(line(&r, "privileges").0, '-');
    // The destination is still checked, and left empty.
    assert_eq!(line(&r, "permissions").0, '✓', "{}", r.stdout);
    assert_nothing_left(&prefix);
}

/// A role that cannot read one table, and may not create the drill's scratch database.
#[test]
fn a_table_the_role_cannot_read_and_a_drill_role_without_createdb_fail_their_lines() {
    let name = unique("check_priv");
    let db = TestDb::leaflock(Pg::V15, &name, 1);
    let role = unique("check_ro");
    let password = "check-ro-password";
    psql(
        Pg::V15,
        &Pg::V15.admin_url(),
        &format!("CREATE ROLE {role} LOGIN NOCREATEDB PASSWORD '{password}'"),
    );
    psql(
        Pg::V15,
        &db.url,
        &format!(
            "GRANT USAGE ON SCHEMA public TO {role};
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};
             GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {role};
             REVOKE SELECT ON public.notes FROM {role};"
        ),
    );
    let admin = Pg::V15.admin_url();
    let as_role = |url: &str| {
        let (scheme_user, rest) = url.split_once('@').unwrap();
        let scheme = scheme_user.split("//").next().unwrap();
        format!("{scheme}//{role}:{password}@{rest}")
    };
    let prefix = unique("check_priv");
    let mut cmd = check_cmd(&as_role(&db.url), &prefix);
    cmd.args(["--restore-drill", "--drill-database-url"])
        .arg(as_role(&admin));
    let r = run(cmd);
    r.expect_code(1);
    let (mark, text) = line(&r, "privileges");
    assert_eq!(mark, '✗', "{}", r.stdout);
    assert!(text.contains("public.notes (table)"), "{text}");
    assert!(
        !text.contains("public.users"),
        "only the table it cannot read: {text}"
    );
    assert!(
        text.contains(&format!(
            "GRANT SELECT ON ALL TABLES IN SCHEMA <schema> TO {role}"
        )),
        "{text}"
    );
    let (mark, text) = line(&r, "restore drill");
    assert_eq!(mark, '✗', "{}", r.stdout);
    assert!(text.contains("may not create databases"), "{text}");
    assert!(
        text.contains(&format!("ALTER ROLE {role} CREATEDB")),
        "{text}"
    );
    assert_eq!(line(&r, "database").0, '✓');
    assert_nothing_left(&prefix);

    // With the grant, the same role passes.
    psql(
        Pg::V15,
        &db.url,
        &format!("GRANT SELECT ON public.notes TO {role}"),
    );
    let r = run(check_cmd(&as_role(&db.url), &prefix));
    assert_eq!(line(&r, "privileges").0, '✓', "{}", r.stdout);
    r.expect_code(0);

    db.drop_now();
    psql(Pg::V15, &admin, &format!("DROP ROLE {role}"));
}

/// DELETE and abort are tried first on names that do not exist: a store that denies
/// DELETE gets no probe object at all.
#[test]
fn a_store_that_denies_delete_fails_permissions_and_gets_no_probe_object() {
    let name = unique("check_nodel");
    let db = TestDb::leaflock(Pg::V15, &name, 1);
    let prefix = unique("check_nodel");
    let upstream = proxy::host_port(&testbed().s3_endpoint());
    let p = proxy::start(
        &upstream,
        &["--fault", "status=403,code=AccessDenied,method=DELETE"],
    );
    let mut cmd = check_cmd(&db.url, &prefix);
    cmd.env("LEAFLOCK_BACKUP_S3_ENDPOINT", p.url());
    let r = run(cmd);
    r.expect_code(1);
    let (mark, text) = line(&r, "permissions");
    assert_eq!(mark, '✗', "{}", r.stdout);
    assert!(
        text.contains("delete:") && text.contains("AccessDenied"),
        "{text}"
    );
    assert!(
        text.contains("s3:DeleteObject"),
        "the fix names the permission: {text}"
    );
    assert_eq!(
        p.events("PUT").len(),
        0,
        "no probe was written: {}",
        p.log()
    );
    assert_nothing_left(&prefix);
}

#[test]
fn a_wrong_s3_key_fails_the_destination_line() {
    let name = unique("check_s3key");
    let db = TestDb::leaflock(Pg::V15, &name, 1);
    let prefix = unique("check_s3key");
    let mut cmd = check_cmd(&db.url, &prefix);
    cmd.env(
        "LEAFLOCK_BACKUP_S3_SECRET_KEY",
        "wrong-secret-key-0123456789",
    );
    let r = run(cmd);
    r.expect_code(1);
    let (mark, text) = line(&r, "destination");
    assert_eq!(mark, '✗', "{}", r.stdout);
    assert!(
        text.contains("access denied") || text.contains("403"),
        "{text}"
    );
    assert!(text.contains("fix: check --s3-bucket"), "{text}");
    assert_eq!(line(&r, "clock").0, '-');
    assert!(!r.stdout.contains("wrong-secret-key"), "{}", r.stdout);
    assert_nothing_left(&prefix);
}

#[test]
fn a_clock_ten_minutes_off_fails_the_clock_line() {
    let name = unique("check_clock");
    let db = TestDb::leaflock(Pg::V15, &name, 1);
    let prefix = unique("check_clock");
    let r = run(faketime("+10m", &check_cmd(&db.url, &prefix)));
    r.expect_code(1);
    let (mark, text) = line(&r, "clock");
    assert_eq!(mark, '✗', "{}", r.stdout);
    assert!(text.contains("ahead of the destination's"), "{text}");
    assert!(text.contains("fix: set the host's clock"), "{text}");
    assert_eq!(failed_lines(&r).len(), 1, "only the clock: {}", r.stdout);
    assert_nothing_left(&prefix);
}

#[test]
fn a_pushgateway_that_is_down_and_a_dead_notification_target_fail_their_lines() {
    let name = unique("check_pgw");
    let db = TestDb::leaflock(Pg::V15, &name, 1);
    let prefix = unique("check_pgw");
    let mut cmd = check_cmd(&db.url, &prefix);
    cmd.env(
        "LEAFLOCK_BACKUP_PUSHGATEWAY_URL",
        format!("http://127.0.0.1:{}", closed_port()),
    )
    .args([
        "--notify-url",
        &format!("http://127.0.0.1:{}/hook", closed_port()),
        "--notify-timeout",
        "1",
    ]);
    let r = run(cmd);
    r.expect_code(1);
    let (mark, text) = line(&r, "pushgateway");
    assert_eq!(mark, '✗', "{}", r.stdout);
    assert!(text.contains("cannot reach the Pushgateway"), "{text}");
    assert!(text.contains("fix: check --pushgateway-url"), "{text}");
    let (mark, text) = line(&r, "notification");
    assert_eq!(mark, '✗', "{}", r.stdout);
    assert!(text.contains("cannot connect"), "{text}");
    assert_eq!(failed_lines(&r).len(), 2, "{}", r.stdout);
    assert_nothing_left(&prefix);
}

/// A recipient the drill's identity cannot decrypt is a failed line (exit 1); a
/// malformed one is bad configuration (exit 2, the flag named), before any probe.
#[test]
fn a_recipient_the_identity_cannot_decrypt_and_a_malformed_one_are_caught() {
    let name = unique("check_age");
    let db = TestDb::leaflock(Pg::V15, &name, 1);
    let prefix = unique("check_age");
    let dir = tempfile::tempdir().unwrap();
    let id = age::x25519::Identity::generate();
    let id_path = dir.path().join("id.txt");
    std::fs::write(&id_path, format!("{}\n", id.to_string().expose_secret())).unwrap();
    let someone_else = age::x25519::Identity::generate().to_public().to_string();

    let mut cmd = check_cmd(&db.url, &prefix);
    cmd.args(["--encrypt-to", &someone_else, "--identity"])
        .arg(&id_path);
    let r = run(cmd);
    r.expect_code(1);
    let (mark, text) = line(&r, "encryption");
    assert_eq!(mark, '✗', "{}", r.stdout);
    assert!(
        text.contains("none of the given identities can decrypt"),
        "{text}"
    );
    assert!(text.contains("age-keygen -y"), "{text}");

    let mut cmd = check_cmd(&db.url, &prefix);
    cmd.args(["--encrypt-to", "age1notarecipient"]);
    let r = run(cmd);
    r.expect_code(2);
    let (mark, text) = line(&r, "configuration");
    assert_eq!(mark, '✗', "{}", r.stdout);
    assert!(text.contains("--encrypt-to"), "{text}");
    assert_eq!(r.stdout.lines().count(), 2, "nothing probed: {}", r.stdout);
    assert_nothing_left(&prefix);
}

/// Object Lock on the test bed's store: applied, and the probe (retained for seconds)
/// removed with its version. Behind a store that ignores it (the proxy strips the
/// retention headers from HEAD answers, as Garage's are): the line fails.
#[test]
fn object_lock_is_probed_and_the_probe_removed_and_an_ignored_lock_fails() {
    let name = unique("check_lock");
    let db = TestDb::leaflock(Pg::V15, &name, 1);
    let prefix = unique("check_lock");
    let bucket = object_lock_bucket();
    let mut cmd = check_cmd(&db.url, &prefix);
    cmd.env(
        "LEAFLOCK_BACKUP_S3_BUCKET",
        format!("s3://{bucket}/{prefix}"),
    )
    .args(["--object-lock-days", "1", "--sse", "AES256"]);
    let r = run(cmd);
    r.expect_code(0);
    let (mark, text) = line(&r, "object lock");
    assert_eq!(mark, '✓', "{}", r.stdout);
    assert!(text.contains("GOVERNANCE retention applied"), "{text}");
    // Not even a version or a delete marker is left.
    let left = rt().block_on(async {
        let v = s3()
            .list_object_versions()
            .bucket(bucket)
            .prefix(format!("{prefix}/"))
            .send()
            .await
            .unwrap();
        v.versions().len() + v.delete_markers().len()
    });
    assert_eq!(left, 0, "versions or delete markers left under {prefix}");

    let upstream = proxy::host_port(&testbed().s3_endpoint());
    let p = proxy::start(
        &upstream,
        &["--fault", "strip=x-amz-object-lock,method=HEAD"],
    );
    let prefix2 = unique("check_lock_ignored");
    let mut cmd = check_cmd(&db.url, &prefix2);
    cmd.env(
        "LEAFLOCK_BACKUP_S3_BUCKET",
        format!("s3://{bucket}/{prefix2}"),
    )
    .env("LEAFLOCK_BACKUP_S3_ENDPOINT", p.url())
    .args(["--object-lock-days", "1"]);
    let r = run(cmd);
    r.expect_code(1);
    let (mark, text) = line(&r, "object lock");
    assert_eq!(mark, '✗', "{}", r.stdout);
    assert!(text.contains("did not apply Object Lock"), "{text}");
    assert_eq!(line(&r, "permissions").0, '✓', "{}", r.stdout);
}

/// SSE the store does not apply: the write probe fails naming it, and is removed.
#[test]
fn an_ignored_sse_fails_the_permissions_line_and_leaves_nothing() {
    let name = unique("check_sse");
    let db = TestDb::leaflock(Pg::V15, &name, 1);
    let prefix = unique("check_sse");
    let upstream = proxy::host_port(&testbed().s3_endpoint());
    let p = proxy::start(
        &upstream,
        &["--fault", "strip=x-amz-server-side-encryption,method=HEAD"],
    );
    let mut cmd = check_cmd(&db.url, &prefix);
    cmd.env("LEAFLOCK_BACKUP_S3_ENDPOINT", p.url())
        .args(["--sse", "AES256"]);
    let r = run(cmd);
    r.expect_code(1);
    let (mark, text) = line(&r, "permissions");
    assert_eq!(mark, '✗', "{}", r.stdout);
    assert!(text.contains("the store did not apply SSE-S3"), "{text}");
    assert_nothing_left(&prefix);
}

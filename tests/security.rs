//! Untrusted input stays contained: hostile old-script archives, child environments,
//! secrets in what the tool prints, file modes, TLS, and the edges of input. Every
//! test here runs the real binary against the real servers of the test bed.

mod common;

use common::*;

/// A host without a CA store (no `ca-certificates`): a Pushgateway over plain
/// `http://` still receives the run's metrics.
#[test]
fn pushgateway_over_http_works_without_a_system_ca_store() {
    let name = unique("noca");
    let db = TestDb::leaflock(Pg::V15, &name, 1);
    let url = db.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let mut cmd = runner();
    cmd.args(["run", "--database-url", &url])
        .arg("--local-dir")
        .arg(dir.path())
        .env("LEAFLOCK_BACKUP_PUSHGATEWAY_URL", testbed().pushgateway())
        .env("LEAFLOCK_BACKUP_METRICS_DATABASE", &name)
        // Where rustls-native-certs looks when these are set: nothing there.
        .env("SSL_CERT_FILE", empty.path().join("none.pem"))
        .env("SSL_CERT_DIR", empty.path());
    let r = run(cmd);
    r.expect_code(0);
    assert!(
        !r.stderr.contains("CA certificates"),
        "no complaint about a CA store: {}",
        r.stderr
    );
    let m = pushed_metrics(&name);
    assert_eq!(
        m.get("leaflock_backups_total{status=\"success\"}"),
        Some(&1.0),
        "pushed over http without any CA store: {m:?}\n{}",
        r.stderr
    );
}

/// The same host, with S3 over plain `http://`: the S3 client starts without a CA store
/// (the SDK's own client asserted in debug builds: "TrustStore configured to enable
/// native roots but no valid root certificates parsed!") and the backup is stored,
/// listed and verified.
#[test]
fn s3_over_http_works_without_a_system_ca_store() {
    let name = unique("noca_s3");
    let db = TestDb::leaflock(Pg::V15, &name, 1);
    let url = db.url.clone();
    let prefix = format!("{}/", unique("noca"));
    let empty = tempfile::tempdir().unwrap();
    let no_ca = |cmd: &mut std::process::Command| {
        cmd.env("SSL_CERT_FILE", empty.path().join("none.pem"))
            .env("SSL_CERT_DIR", empty.path())
            .env("LEAFLOCK_BACKUP_LOG_LEVEL", "debug");
    };
    let mut cmd = s3_cmd("run", &prefix);
    cmd.args(["--database-url", &url]);
    no_ca(&mut cmd);
    let r = run(cmd);
    r.expect_code(0);
    assert!(
        r.lines
            .iter()
            .any(|l| l["msg"] == "S3 client trust store" && l["roots"] == "bundled"),
        "the S3 client fell back to the bundled roots: {}",
        r.stderr
    );
    for sub in ["list", "verify"] {
        let mut cmd = s3_cmd(sub, &prefix);
        cmd.env("LEAFLOCK_BACKUP_DATABASE", &name);
        if sub == "verify" {
            cmd.arg("latest");
        }
        no_ca(&mut cmd);
        let r = run(cmd);
        r.expect_code(0);
        assert!(
            !r.stderr.contains("panicked") && !r.stderr.contains("root CA"),
            "{sub}: {}",
            r.stderr
        );
    }
}

/// An old-script archive of `sql`, made as the old script made them: gzip, then
/// `openssl enc -aes-256-cbc -salt -pass pass:…`.
fn old_archive(sql: &str, password: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dump.sql");
    std::fs::write(&path, sql).unwrap();
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; gzip -c '{}' | openssl enc -aes-256-cbc -salt -pass 'pass:{password}'",
            path.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The head of a `pg_dump --clean --if-exists --create` script of database `src`.
/// With `restrict`, pg_dump's `\restrict` guard lines (since August 2025), which psql
/// obeys; a crafted archive simply leaves them out.
fn dump_head(src: &str, restrict: bool) -> String {
    let head = format!(
        "--\n-- PostgreSQL database dump\n--\n\n\\restrict abcDEF123\n\n\
         SET statement_timeout = 0;\nSET lock_timeout = 0;\nSET client_encoding = 'UTF8';\n\
         SET standard_conforming_strings = on;\n\
         SELECT pg_catalog.set_config('search_path', '', false);\n\
         SET check_function_bodies = false;\nSET client_min_messages = warning;\n\n\
         DROP DATABASE IF EXISTS {src};\n\
         CREATE DATABASE {src} WITH TEMPLATE = template0 ENCODING = 'UTF8' LOCALE_PROVIDER = libc LOCALE = 'C';\n\n\
         ALTER DATABASE {src} OWNER TO postgres;\n\n\\connect {src}\n\n\
         \\restrict abcDEF123\n\
         SET statement_timeout = 0;\nSET standard_conforming_strings = on;\n\
         SELECT pg_catalog.set_config('search_path', '', false);\n\n\
         CREATE TABLE public.t (x text, y bytea);\n\n\
         COPY public.t (x, y) FROM stdin;\n\
         plain\t\\\\x6869\nwith \\\\. inside;\t\\\\x\n\\\\connect not a command\t\\N\n\\.\n\n"
    );
    if restrict {
        head
    } else {
        head.replace("\\restrict abcDEF123\n", "")
    }
}

const DUMP_TAIL: &str = "\nCREATE TABLE public.tail (x integer);\n\n\\unrestrict abcDEF123\n\n\
                         --\n-- PostgreSQL database dump complete\n--\n\n";

/// The hostile archives of the review, one per class: each must stop the restore with
/// exit 1 before it runs, naming the line; nothing committed in the target, nothing
/// changed outside it (another database, roles, server settings), no file written by a
/// shell or by the server.
#[test]
fn hostile_old_archives_are_refused_and_change_nothing() {
    let pg = Pg::V15;
    let password = "old-key";
    let id = unique("hostile");
    let src = format!("{id}_src");
    let victim = format!("{id}_victim");
    let target = format!("{id}_target");
    let role = format!("{id}_evil");
    let marker = std::env::temp_dir().join(format!("{id}-marker"));
    let m = marker.display().to_string();
    let _dbs = [&victim, &target].map(|db| TestDb::empty(pg, db));
    psql(
        pg,
        &pg.url(&victim),
        "CREATE TABLE precious (x int); INSERT INTO precious VALUES (1), (2), (3)",
    );
    let settings_before = psql(
        pg,
        &pg.admin_url(),
        "SELECT count(*) FROM pg_file_settings WHERE sourcefile LIKE '%auto.conf'",
    );
    let prefix = unique("hostile");
    let target_url = pg.url(&target);

    // (name, hostile SQL placed between the head and the tail)
    let cases: Vec<(&str, String)> = vec![
        ("psql shell escape", format!("\\! touch {m}\n")),
        ("shell escape after a statement", format!("SELECT 1; \\! touch {m}\n")),
        ("shell escape with leading space", format!("   \\! touch {m}\n")),
        ("copy to program", format!("COPY (SELECT 1) TO PROGRAM 'touch {m}';\n")),
        ("copy from program", format!("COPY public.t (x) FROM PROGRAM 'touch {m}';\n")),
        ("copy to a server file", format!("COPY public.t TO '{m}';\n")),
        ("connect to another database", format!("\\connect {victim}\nDROP TABLE public.precious;\n")),
        ("connect with a leading space", format!(" \\connect {victim}\nDROP TABLE public.precious;\n")),
        ("short connect", format!("\\c {victim}\nDROP TABLE public.precious;\n")),
        (
            "copy line inside a dollar quote",
            format!(
                "CREATE FUNCTION public.f() RETURNS text LANGUAGE sql AS $$\nCOPY public.t (x) FROM stdin;\nSELECT 'x'\n$$;\n\
                 \\connect {victim}\nDROP TABLE public.precious;\n"
            ),
        ),
        ("drop another database", format!("DROP DATABASE {victim};\n")),
        ("alter another database", format!("ALTER DATABASE {victim} SET work_mem = '1MB';\n")),
        ("create a role", format!("CREATE ROLE {role} SUPERUSER LOGIN;\n")),
        ("grant a server role", "GRANT pg_execute_server_program TO PUBLIC;\n".to_string()),
        ("alter system", "ALTER SYSTEM SET work_mem = '777kB';\n".to_string()),
        ("read a server file", "SELECT pg_read_file('/etc/hostname');\n".to_string()),
        ("import a server file", "SELECT lo_import('/etc/hostname');\n".to_string()),
        (
            "program inside a function that a CHECK runs during COPY",
            format!(
                "CREATE FUNCTION public.f() RETURNS boolean LANGUAGE plpgsql AS $fn$\nBEGIN\n  \
                 COPY (SELECT 1) TO PROGRAM 'touch {m}';\n  RETURN true;\nEND\n$fn$;\n\
                 CREATE TABLE public.c (x integer CHECK (public.f()));\nCOPY public.c (x) FROM stdin;\n1\n\\.\n"
            ),
        ),
        (
            "program in dynamic SQL",
            format!(
                "CREATE FUNCTION public.f() RETURNS boolean LANGUAGE plpgsql AS $$\nBEGIN\n  \
                 EXECUTE 'COPY (SELECT 1) TO PROGRAM ''touch {m}''';\n  RETURN true;\nEND\n$$;\n"
            ),
        ),
        (
            "program in dynamic SQL built by concatenation, run by a CHECK during COPY",
            format!(
                "CREATE FUNCTION public.f() RETURNS boolean LANGUAGE plpgsql AS $$\nBEGIN\n  \
                 EXECUTE 'COPY (SELECT 1) TO PRO' || 'GRAM ''touch {m}''';\n  RETURN true;\nEND\n$$;\n\
                 CREATE TABLE public.c (x integer CHECK (public.f()));\nCOPY public.c (x) FROM stdin;\n1\n\\.\n"
            ),
        ),
        ("output to a file", format!("\\o {m}\nSELECT 1;\n")),
        ("client-side copy", format!("\\copy public.t to '{m}'\n")),
        ("include a file", "\\i /etc/hostname\n".to_string()),
        ("setenv", "\\setenv PAGER 'touch /tmp/x'\n".to_string()),
        (
            "escape-string quoting trick",
            format!("SELECT E'\\\\';\n\\! touch {m}\n';\n"),
        ),
        (
            "standard-string quoting trick",
            format!("SELECT 'a\\';\n\\! touch {m}\n--';\n"),
        ),
        (
            "standard_conforming_strings off",
            format!("SET standard_conforming_strings = off;\nSELECT 'a\\';\n\\! touch {m}\n--';\n"),
        ),
        (
            "a COMMIT in the script",
            format!("COMMIT;\nCREATE TABLE public.after_commit (x int);\nCREATE ROLE {role};\n"),
        ),
        ("anonymous code block", "DO $$BEGIN PERFORM 1; END$$;\n".to_string()),
        ("untrusted extension", "CREATE EXTENSION IF NOT EXISTS adminpack;\n".to_string()),
        ("session role", "SET SESSION AUTHORIZATION postgres;\n".to_string()),
    ];
    let only = std::env::var("LEAFLOCK_TEST_HOSTILE_ONLY").ok();
    let mut failures = Vec::new();
    for (i, (name, hostile)) in cases.iter().enumerate() {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|o| name.contains(o)))
        {
            continue;
        }
        let sql = format!("{}{hostile}{DUMP_TAIL}", dump_head(&src, false));
        let key = format!("{prefix}/2025/06/01/leaflock_backup_20250601_02{i:04}.sql.gz.enc");
        s3_put(&key, old_archive(&sql, password));
        let mut cmd = s3_cmd("restore", &prefix);
        cmd.args([key.as_str(), "--target-database-url", &target_url])
            .env("BACKUP_ENCRYPTION_KEY", password);
        let r = run(cmd);
        let mut wrong = Vec::new();
        if r.code != 1 {
            wrong.push(format!("exit {} (want 1)", r.code));
        }
        if !r.stderr.contains("line ") {
            wrong.push("the error names no line".to_string());
        }
        if !table_counts(pg, &target_url).is_empty() {
            wrong.push("the target holds tables".to_string());
        }
        if marker.exists() {
            wrong.push("a file was written".to_string());
            let _ = std::fs::remove_file(&marker);
        }
        if psql(pg, &pg.url(&victim), "SELECT count(*) FROM precious") != "3" {
            wrong.push("the other database changed".to_string());
        }
        if psql(
            pg,
            &pg.admin_url(),
            &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{role}'"),
        ) != "0"
        {
            wrong.push("a role was created".to_string());
            psql(pg, &pg.admin_url(), &format!("DROP ROLE \"{role}\""));
        }
        if psql(
            pg,
            &pg.admin_url(),
            "SELECT count(*) FROM pg_file_settings WHERE sourcefile LIKE '%auto.conf'",
        ) != settings_before
        {
            wrong.push("a server setting changed".to_string());
        }
        if psql(
            pg,
            &pg.admin_url(),
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{src}'"),
        ) != "0"
        {
            wrong.push("the archive's own database was created".to_string());
        }
        if !wrong.is_empty() {
            failures.push(format!("{name}: {}\n{}", wrong.join(", "), r.stderr));
        }
    }

    // The control: the same head and tail without anything hostile restore exactly.
    if only.is_none() {
        let sql = format!("{}{DUMP_TAIL}", dump_head(&src, true));
        let key = format!("{prefix}/2025/06/02/leaflock_backup_20250602_020000.sql.gz.enc");
        s3_put(&key, old_archive(&sql, password));
        let mut cmd = s3_cmd("restore", &prefix);
        cmd.args([key.as_str(), "--target-database-url", &target_url])
            .env("BACKUP_ENCRYPTION_KEY", password);
        run(cmd).expect_code(0);
        assert_eq!(
            psql(
                pg,
                &target_url,
                "SELECT string_agg(x || '|' || coalesce(encode(y, 'escape'), 'NULL'), ',' ORDER BY x) FROM public.t"
            ),
            "\\connect not a command|NULL,plain|hi,with \\. inside;|"
        );
        assert_eq!(table_counts(pg, &target_url).len(), 2);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Wrappers that record the environment each PostgreSQL tool starts with.
fn env_recording_tools(pg: Pg, dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    for tool in ["pg_dump", "pg_restore"] {
        let path = dir.join(tool);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\nenv > \"{}/{tool}.$$.env\"\nexec '{}' \"$@\"\n",
                dir.display(),
                pg.tool(tool).display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// pg_dump and pg_restore see none of this tool's secrets: not the encryption key, not
/// the S3 keys, not the Pushgateway's password, not another application's keys.
#[test]
fn children_get_a_cleared_environment_without_secrets() {
    let pg = Pg::V15;
    let name = unique("childenv");
    let db = TestDb::leaflock(pg, &name, 1);
    let url = db.url.clone();
    let prefix = unique("childenv");
    let tools = tempfile::tempdir().unwrap();
    env_recording_tools(pg, tools.path());
    let push =
        testbed()
            .pushgateway()
            .replacen("http://", "http://pgwuser:MARKER-pgw-password@", 1);
    let mut cmd = s3_run(&url, &prefix, &name);
    cmd.arg("--restore-drill")
        .arg("--pg-dump")
        .arg(tools.path().join("pg_dump"))
        .arg("--pg-restore")
        .arg(tools.path().join("pg_restore"))
        .env("LEAFLOCK_BACKUP_PUSHGATEWAY_URL", &push)
        .env("BACKUP_ENCRYPTION_KEY", "MARKER-encryption-key")
        .env("AWS_SECRET_ACCESS_KEY", "MARKER-aws-secret")
        .env("AWS_SESSION_TOKEN", "MARKER-aws-token")
        .env("SERVER_ENCRYPTION_KEY", "MARKER-server-key")
        .env("JWT_SECRET", "MARKER-jwt")
        .env("PGSSLROOTCERT", "/nonexistent/kept-for-libpq");
    let r = run(cmd);
    r.expect_code(0);
    let secrets = [
        "MARKER-",
        testbed().var("LEAFLOCK_TEST_S3_SECRET_KEY").as_str(),
        testbed().var("LEAFLOCK_TEST_S3_ACCESS_KEY").as_str(),
    ]
    .map(String::from);
    let mut seen = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(tools.path()).unwrap().flatten() {
        let file = e.file_name().to_string_lossy().to_string();
        if !file.ends_with(".env") {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap();
        for s in &secrets {
            assert!(
                !text.contains(s.as_str()),
                "{file} holds a secret ({s}):\n{text}"
            );
        }
        for k in [
            "LEAFLOCK_BACKUP_",
            "BACKUP_",
            "AWS_",
            "SERVER_ENCRYPTION_KEY",
            "JWT_SECRET",
        ] {
            assert!(
                !text.lines().any(|l| l.starts_with(k)),
                "{file} holds {k}*:\n{text}"
            );
        }
        assert!(
            text.contains("PGSSLROOTCERT=/nonexistent/kept-for-libpq"),
            "{text}"
        );
        assert!(text.lines().any(|l| l.starts_with("PATH=")), "{text}");
        *seen
            .entry(file.split('.').next().unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert!(
        seen.contains_key("pg_dump") && seen.contains_key("pg_restore"),
        "{seen:?}"
    );
}

/// Under umask 022 a local backup is still private: files 0600, directories 0700; a
/// symlink planted where the old write probe's name was predictable is left alone and
/// its target is not written.
#[test]
fn local_backups_are_private_and_the_probe_follows_no_symlink() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let pg = Pg::V15;
    let name = unique("modes");
    let db = TestDb::leaflock(pg, &name, 1);
    let url = db.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "untouched").unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    // The old probe was `.leaflock-write-test-PID`: plant links for the next pids.
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .map(|s| s.trim().parse().unwrap_or(1))
        .unwrap_or(1);
    for pid in last..last + 3000 {
        std::os::unix::fs::symlink(&victim, store.join(format!(".leaflock-write-test-{pid}")))
            .unwrap();
    }
    let mut cmd = runner();
    cmd.args(["run", "--database-url", &url])
        .arg("--local-dir")
        .arg(&store)
        .arg("--restore-drill");
    // SAFETY: umask(2) in the child before exec; no allocation, no locks.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        });
    }
    run(cmd).expect_code(0);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
    let mut files = 0;
    let mut stack = vec![store.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            let mode = meta.permissions().mode() & 0o777;
            let p = e.path().display().to_string();
            if meta.file_type().is_symlink() {
                assert!(p.contains(".leaflock-write-test-"), "{p}");
            } else if meta.is_dir() {
                assert_eq!(mode, 0o700, "{p}");
                stack.push(e.path());
            } else {
                assert_eq!(mode, 0o600, "{p}");
                files += 1;
            }
        }
    }
    assert!(files >= 3, "object, manifest and drill record: {files}");
}

/// Every numeric flag at the edge of its type: a usage error (exit 2) or a plain
/// refusal, never a panic.
#[test]
fn numeric_flags_at_their_limits_never_panic() {
    let unreachable = format!("postgresql://u@127.0.0.1:{}/db", closed_port());
    let dir = tempfile::tempdir().unwrap();
    let huge = [
        "18446744073709551615",
        "4294967295",
        "4294967296",
        "99999999999999999999",
    ];
    let cases: Vec<(&str, &[&str])> = vec![
        ("run", &["--connect-timeout"]),
        ("run", &["--pushgateway-timeout"]),
        ("run", &["--keep-last"]),
        ("run", &["--keep-daily"]),
        ("run", &["--keep-weekly"]),
        ("run", &["--keep-monthly"]),
        ("run", &["--max-age"]),
        ("run", &["--object-lock-days"]),
        ("run", &["--parts-in-flight"]),
        ("run", &["--s3-max-attempts"]),
        ("run", &["--compress-threads"]),
        ("run", &["--orphan-grace"]),
        ("restore", &["--connect-timeout"]),
        ("restore", &["--jobs"]),
        ("next-run", &["--count"]),
    ];
    let mut bad = Vec::new();
    for (sub, flags) in cases {
        for v in huge {
            let mut cmd = runner();
            cmd.arg(sub)
                .arg(format!("{}={v}", flags[0]))
                .env("LEAFLOCK_BACKUP_DATABASE_URL", &unreachable)
                .env("LEAFLOCK_BACKUP_TARGET_DATABASE_URL", &unreachable)
                .env("LEAFLOCK_BACKUP_LOCAL_DIR", dir.path())
                .env("LEAFLOCK_BACKUP_SCHEDULE", "0 2 * * *");
            if flags[0].starts_with("--object-lock")
                || flags[0].starts_with("--parts")
                || flags[0].starts_with("--s3")
            {
                cmd.env_remove("LEAFLOCK_BACKUP_LOCAL_DIR")
                    .env("LEAFLOCK_BACKUP_S3_BUCKET", "b");
            }
            let r = run(cmd);
            if r.code != 2 && r.code != 1 || r.stderr.contains("panicked") {
                bad.push(format!(
                    "{sub} {}={v}: exit {}: {}",
                    flags[0], r.code, r.stderr
                ));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// A log filter without a real level (`warning`) is refused before any work.
#[test]
fn a_log_filter_without_a_level_is_refused() {
    for bad in ["warning", "verbose", "info,noisy", "aws_sdk_s3=loud"] {
        let mut cmd = runner();
        cmd.args(["next-run", "--schedule", "0 2 * * *"])
            .env("LEAFLOCK_BACKUP_LOG_LEVEL", bad);
        let r = run(cmd);
        r.expect_code(2);
        assert!(
            r.stderr.contains("LEAFLOCK_BACKUP_LOG_LEVEL"),
            "{bad}: {}",
            r.stderr
        );
    }
    for good in ["warn", "info,leaflock_backup=debug", "off", "TRACE"] {
        let mut cmd = runner();
        cmd.args(["next-run", "--schedule", "0 2 * * *"])
            .env("LEAFLOCK_BACKUP_LOG_LEVEL", good);
        run(cmd).expect_code(0);
    }
}

/// Planted marker secrets never appear in anything the tool prints: `--help` with the
/// variables set, a run at `--log-level trace` pushing to a Pushgateway URL with a
/// password, a run whose Pushgateway is down, an error echoing a bad URL.
#[test]
fn no_secret_in_help_logs_errors_or_trace_output() {
    let pg = Pg::V15;
    let name = unique("redact");
    let name_db = TestDb::leaflock(pg, &name, 1);
    let url = name_db.url.clone();
    let prefix = unique("redact");
    let pw = "MARKERpgwPASS";
    let push = testbed()
        .pushgateway()
        .replacen("http://", &format!("http://pgwuser:{pw}@"), 1);
    let secret_env = [
        ("LEAFLOCK_BACKUP_ENCRYPTION_KEY", "MARKERencKEY"),
        ("LEAFLOCK_BACKUP_PUSHGATEWAY_URL", push.as_str()),
    ];
    let mut printed = String::new();
    for sub in [
        "run", "restore", "drill", "list", "verify", "prune", "schedule",
    ] {
        let mut cmd = runner();
        cmd.args([sub, "--help"])
            .env("LEAFLOCK_BACKUP_S3_SECRET_KEY", "MARKERs3SECRET")
            .env("LEAFLOCK_BACKUP_SSE_C_KEY", "MARKERsseC")
            .env(
                "LEAFLOCK_BACKUP_DATABASE_URL",
                "postgresql://u:MARKERdbPW@h/db",
            )
            .env(
                "LEAFLOCK_BACKUP_TARGET_DATABASE_URL",
                "postgresql://u:MARKERdbPW@h/db",
            )
            .envs(secret_env);
        let r = run(cmd);
        printed += &r.stdout;
        printed += &r.stderr;
    }
    let mut ok = s3_run(&url, &prefix, &name);
    ok.args(["--log-level", "trace"]).envs(secret_env);
    let r = run(ok);
    r.expect_code(0);
    assert!(
        r.line("metrics pushed").is_some(),
        "pushed with the password"
    );
    printed += &r.stderr;
    // SSE-C at trace level: the key travels in a header of every request (base64, as
    // given), which the SDK's signing and HTTP crates would print.
    let sse_c = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(b"MARKERsseCkey-MARKERsseCkey-0123")
    };
    let mut encrypted = s3_run(&url, &format!("{prefix}-ssec"), &name);
    encrypted
        .args(["--log-level", "trace"])
        .env("LEAFLOCK_BACKUP_SSE_C_KEY", &sse_c);
    let r = run(encrypted);
    r.expect_code(0);
    assert!(
        r.stderr.lines().count() > 20,
        "a trace run prints its trace:\n{}",
        r.stderr
    );
    printed += &r.stderr;
    // The SDK's crates named at trace (so not kept quiet): their lines do carry the
    // key's header, and the log writer masks it.
    let mut named = s3_run(&url, &format!("{prefix}-ssec"), &name);
    named
        .args([
            "--log-level",
            "info,aws_smithy_runtime=trace,aws_smithy_runtime_api=trace,aws_sigv4=trace",
        ])
        .env("LEAFLOCK_BACKUP_SSE_C_KEY", &sse_c);
    let r = run(named);
    r.expect_code(0);
    assert!(
        r.stderr
            .contains("x-amz-server-side-encryption-customer-key\\\", \\\"***"),
        "the SDK's request line, its SSE-C key masked:\n{}",
        r.stderr
    );
    printed += &r.stderr;
    let dead = format!("http://pgwuser:{pw}@127.0.0.1:{}", closed_port());
    let mut down = s3_run(&url, &prefix, &name);
    down.env("LEAFLOCK_BACKUP_PUSHGATEWAY_URL", &dead)
        .env("LEAFLOCK_BACKUP_PUSHGATEWAY_TIMEOUT", "2");
    let r = run(down);
    r.expect_code(0);
    assert!(r.stderr.contains("could not push"), "{}", r.stderr);
    printed += &r.stderr;
    let mut bad = runner();
    bad.args(["run", "--database-url", &url]).env(
        "LEAFLOCK_BACKUP_PUSHGATEWAY_URL",
        format!("ftp://u:{pw}@pgw"),
    );
    let r = run(bad);
    r.expect_code(2);
    printed += &r.stderr;
    for marker in [
        "MARKER",
        sse_c.as_str(),
        testbed().var("LEAFLOCK_TEST_S3_SECRET_KEY").as_str(),
    ] {
        if let Some(at) = printed.find(marker) {
            panic!(
                "{marker} printed: …{}…",
                &printed[at.saturating_sub(300)..(at + 100).min(printed.len())]
            );
        }
    }
}

/// Secrets from files (`*_FILE`, a mounted Secret or a systemd credential), and a
/// warning for a secret given on the command line.
#[test]
fn secrets_come_from_files_and_a_secret_flag_is_warned_about() {
    let pg = Pg::V15;
    let name = unique("secretfile");
    let db = TestDb::leaflock(pg, &name, 1);
    let url = db.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let url_file = dir.path().join("url");
    std::fs::write(&url_file, format!("{url}\n")).unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "from-a-file\n").unwrap();
    let mut cmd = runner();
    cmd.arg("run")
        .arg("--local-dir")
        .arg(&store)
        .env("LEAFLOCK_BACKUP_DATABASE_URL_FILE", &url_file)
        .env("BACKUP_ENCRYPTION_KEY_FILE", &key_file);
    let r = run(cmd);
    r.expect_code(0);
    assert!(!r.stderr.contains("command line"), "{}", r.stderr);
    // The backup is encrypted with the file's passphrase: verify needs exactly it.
    let mut verify = runner();
    verify
        .args(["verify", "latest", "--database", &name, "--local-dir"])
        .arg(&store)
        .env("BACKUP_ENCRYPTION_KEY", "from-a-file");
    run(verify).expect_code(0);
    let mut wrong = runner();
    wrong
        .args(["verify", "latest", "--database", &name, "--local-dir"])
        .arg(&store)
        .env("BACKUP_ENCRYPTION_KEY", "from-a-file\n-not");
    run(wrong).expect_code(1);

    let mut flag = runner();
    flag.args(["run", "--encryption-key", "on-argv", "--local-dir"])
        .arg(&store)
        .env("LEAFLOCK_BACKUP_DATABASE_URL", &url);
    let r = run(flag);
    r.expect_code(0);
    let warn = r.line("--encryption-key was given on the command line");
    assert!(warn.is_some_and(|w| w["level"] == "warn"), "{}", r.stderr);

    let mut missing = runner();
    missing
        .args(["run", "--local-dir"])
        .arg(&store)
        .env("LEAFLOCK_BACKUP_DATABASE_URL", &url)
        .env("BACKUP_ENCRYPTION_KEY_FILE", dir.path().join("absent"));
    let r = run(missing);
    r.expect_code(2);
    assert!(
        r.stderr.contains("BACKUP_ENCRYPTION_KEY_FILE"),
        "{}",
        r.stderr
    );
}

/// Destinations that cannot work, and settings that do nothing for the chosen one,
/// are found before connecting (the database URL points at a closed port).
#[test]
fn destinations_that_cannot_work_are_refused_before_connecting() {
    let unreachable = format!("postgresql://u@127.0.0.1:{}/db", closed_port());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--local-dir".into(), file.display().to_string()],
            "is not a directory",
        ),
        (
            vec![
                "--local-dir".into(),
                file.join("below").display().to_string(),
            ],
            "is not a directory",
        ),
        (
            vec![
                "--local-dir".into(),
                dir.path().display().to_string(),
                "--sse-c-key".into(),
                key.into(),
            ],
            "--sse-c-key",
        ),
        (
            vec![
                "--local-dir".into(),
                dir.path().display().to_string(),
                "--object-lock-days=7".into(),
            ],
            "--object-lock-days",
        ),
        (
            vec![
                "--s3-bucket".into(),
                "some-bucket".into(),
                "--s3-endpoint".into(),
                "http://s3.example.net:8333".into(),
                "--sse-c-key".into(),
                key.into(),
            ],
            "clear text",
        ),
    ];
    for (args, needle) in cases {
        let mut cmd = runner();
        cmd.arg("run")
            .args(&args)
            .env("LEAFLOCK_BACKUP_DATABASE_URL", &unreachable);
        let r = run(cmd);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(needle), "{args:?}: {}", r.stderr);
        assert!(
            !r.stderr.contains("cannot connect"),
            "{args:?}: {}",
            r.stderr
        );
    }
}

/// An age identity (a private key) that others can read draws a warning.
#[test]
fn a_readable_identity_file_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let pg = Pg::V15;
    let name = unique("idmode");
    let db = TestDb::leaflock(pg, &name, 1);
    let url = db.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut cmd = runner();
    cmd.args(["run", "--database-url", &url])
        .arg("--local-dir")
        .arg(&store);
    run(cmd).expect_code(0);
    let id = dir.path().join("id.txt");
    let key = age::x25519::Identity::generate();
    use age::secrecy::ExposeSecret;
    std::fs::write(&id, format!("{}\n", key.to_string().expose_secret())).unwrap();
    for (mode, warned) in [(0o644, true), (0o600, false)] {
        std::fs::set_permissions(&id, std::fs::Permissions::from_mode(mode)).unwrap();
        let mut verify = runner();
        verify
            .args(["verify", "latest", "--database", &name, "--local-dir"])
            .arg(&store)
            .arg("--identity")
            .arg(&id);
        let r = run(verify);
        r.expect_code(0);
        assert_eq!(
            r.line("can be read by its group or others").is_some(),
            warned,
            "{mode:o}: {}",
            r.stderr
        );
    }
}

/// A throwaway PostgreSQL 15 with TLS on, its certificate self-signed (for
/// `localhost` and 127.0.0.1), stopped on drop.
struct TlsPg {
    dir: tempfile::TempDir,
    port: u16,
}

fn as_postgres(args: &[&str]) -> std::process::Command {
    // SAFETY: geteuid has no preconditions.
    let mut c = if unsafe { libc::geteuid() } == 0 {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).args(args);
        c
    } else {
        let mut c = std::process::Command::new(args[0]);
        c.args(&args[1..]);
        c
    };
    c.current_dir("/");
    c
}

fn self_signed(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let crt = dir.join(format!("{name}.crt"));
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .arg("-keyout")
        .arg(dir.join(format!("{name}.key")))
        .arg("-out")
        .arg(&crt)
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    crt
}

impl TlsPg {
    fn start() -> TlsPg {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("leaflock-tlspg")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let crt = self_signed(dir.path(), "server");
        let key = dir.path().join("server.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            for p in [dir.path(), crt.as_path(), key.as_path()] {
                assert!(std::process::Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(p)
                    .status()
                    .unwrap()
                    .success());
            }
        }
        let data = dir.path().join("data");
        let bin = Pg::V15.bin_dir();
        let out = as_postgres(&[
            bin.join("initdb").to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
        ])
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = closed_port();
        let opts = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            data.display(),
            crt.display(),
            key.display()
        );
        let out = as_postgres(&[
            bin.join("pg_ctl").to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-o",
            &opts,
            "-w",
            "-l",
            dir.path().join("log").to_str().unwrap(),
            "start",
        ])
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TlsPg { dir, port }
    }

    fn url(&self, host: &str, query: &str) -> String {
        format!(
            "postgresql://postgres@{host}:{}/postgres?{query}",
            self.port
        )
    }
}

impl Drop for TlsPg {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = as_postgres(&[
            Pg::V15.bin_dir().join("pg_ctl").to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-m",
            "immediate",
            "stop",
        ])
        .output();
    }
}

/// TLS as libpq means it: `verify-full` accepts a self-signed server certificate given
/// as its own root (and refuses another root, or a name it was not made for);
/// `require` works and says that it did not verify the server.
#[test]
fn tls_verify_full_accepts_a_self_signed_root_and_require_warns() {
    let pg = TlsPg::start();
    let crt = pg.dir.path().join("server.crt");
    let other = self_signed(pg.dir.path(), "other");
    let cases = [
        (
            "localhost",
            format!("sslmode=verify-full&sslrootcert={}", crt.display()),
            0,
            "",
        ),
        (
            "127.0.0.1",
            format!("sslmode=verify-ca&sslrootcert={}", crt.display()),
            0,
            "",
        ),
        (
            "localhost",
            format!("sslmode=verify-full&sslrootcert={}", other.display()),
            1,
            "cannot connect",
        ),
        (
            "localhost",
            "sslmode=require".to_string(),
            0,
            "does not verify the server",
        ),
    ];
    for (host, query, code, needle) in cases {
        let store = tempfile::tempdir().unwrap();
        let mut cmd = runner();
        cmd.args(["run", "--database-url", &pg.url(host, &query)])
            .arg("--local-dir")
            .arg(store.path())
            .env("PATH", Pg::V15.path_env());
        let r = run(cmd);
        assert_eq!(r.code, code, "{host} {query}: {}", r.stderr);
        assert!(r.stderr.contains(needle), "{host} {query}: {}", r.stderr);
        if needle.is_empty() {
            assert!(!r.stderr.contains("does not verify"), "{}", r.stderr);
        }
    }
}

/// A manifest of 1 GiB under the prefix is refused by size, never read whole (the
/// process stays far below it). Whether the listing then reports it as one bad entry
/// is the catalog's part; here only the cap is held to.
#[test]
fn a_huge_manifest_is_not_read_into_memory() {
    let dir = tempfile::tempdir().unwrap();
    let day = dir.path().join("backups/2025/06/01");
    std::fs::create_dir_all(&day).unwrap();
    let f =
        std::fs::File::create(day.join("leaflock_backup_20250601_020000.dump.gz.manifest.json"))
            .unwrap();
    f.set_len(1 << 30).unwrap(); // sparse: costs no disk
    std::fs::write(day.join("leaflock_backup_20250601_020000.dump.gz"), b"x").unwrap();
    let mut cmd = runner();
    cmd.args(["list", "--local-dir"]).arg(dir.path());
    let r = run(cmd);
    assert!(
        r.stderr.contains("larger than 4 MiB"),
        "exit {}: {}",
        r.code,
        r.stderr
    );
    // Reported as bad, never fatal for the listing.
    r.expect_code(0);
    assert!(r.stdout.contains("BAD MANIFEST"), "{}", r.stdout);
    // SAFETY: getrusage fills the struct it is given.
    let kib = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut u);
        u.ru_maxrss
    };
    assert!(kib < 512 * 1024, "a child grew to {kib} KiB");
}

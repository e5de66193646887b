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
    let url = leaflock_db(Pg::V15, &name, 1);
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
    drop_db(Pg::V15, &name);
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
fn dump_head(src: &str) -> String {
    format!(
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
    )
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
    for db in [&victim, &target] {
        psql(pg, &pg.admin_url(), &format!("CREATE DATABASE \"{db}\""));
    }
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
        let sql = format!("{}{hostile}{DUMP_TAIL}", dump_head(&src));
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
        let sql = format!("{}{DUMP_TAIL}", dump_head(&src));
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
    for db in [&victim, &target] {
        drop_db(pg, db);
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
    let url = leaflock_db(pg, &name, 1);
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
    drop_db(pg, &name);
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
    let url = leaflock_db(pg, &name, 1);
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
    drop_db(pg, &name);
}

//! Compression end to end, against the real test bed: what the runner stores must be
//! readable by the ordinary tools (`gunzip`, `zstd`) and restore with `pg_restore` to
//! exactly the rows that were counted.

mod common;

use common::*;
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Stdio};

/// The object (ending in `.dump.<ext>`) and the manifest stored under `prefix`.
fn stored(prefix: &str, ext: &str) -> (Value, String, Vec<u8>) {
    let (_, manifest, okey, object) = manifest_and_object(prefix, &format!(".dump.{ext}"));
    assert_eq!(manifest["object_key"], okey.as_str());
    assert_eq!(manifest["sha256"], sha256_hex(&object).as_str());
    assert_eq!(manifest["stored_bytes"].as_u64(), Some(object.len() as u64));
    (manifest, okey, object)
}

/// Pipe `input` through a system command (`gunzip -c`, `zstd -d -c`) and return its
/// output; panics with its stderr if it fails.
fn filter(program: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{program} must be installed (scripts/testbed.sh install): {e}")
        });
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn restores_exactly(pg: Pg, source_url: &str, archive: &[u8], manifest: &Value) {
    assert!(archive.starts_with(b"PGDMP"));
    assert_eq!(
        manifest["uncompressed_bytes"].as_u64(),
        Some(archive.len() as u64)
    );
    let source = table_counts(pg, source_url);
    assert!(source.len() >= 20, "all LeafLock tables: {source:?}");
    let restored = pg_restore_into(pg, archive, &unique("restored"));
    assert_eq!(
        table_counts(pg, &restored.url),
        source,
        "restored counts = source counts"
    );
}

#[test]
fn parallel_gzip_backup_reads_with_system_gunzip_and_restores_exactly() {
    let pg = Pg::V15;
    let name = unique("pgzip");
    // Several MiB of dump: many chunks, so several threads and chunk edges are used.
    let db = TestDb::leaflock(pg, &name, 12);
    let url = db.url.clone();
    let prefix = unique("pgzip");
    let mut cmd = s3_run(&url, &prefix, &name);
    cmd.env("PATH", pg.path_env())
        .args(["--compress-threads", "3"]);
    let r = run(cmd);
    r.expect_code(0);
    let start = r.line("starting backup").expect("a start line");
    assert_eq!(start["compress_threads"], 3, "{start}");

    let (m, _, object) = stored(&prefix, "gz");
    assert_eq!(m["compression"]["algorithm"], "gzip");
    assert_eq!(m["compression"]["level"], 6);
    let archive = filter("gunzip", &["-c"], &object);
    // One gzip member, not a concatenation: gzip -l would misreport several members,
    // and a single-member decoder (flate2's GzDecoder) reads it whole.
    let mut single = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&object[..]), &mut single)
        .expect("a single gzip member");
    assert_eq!(single, archive);
    assert!(
        object.len() < archive.len() * 7 / 10,
        "hex ciphertext compresses: {} of {}",
        object.len(),
        archive.len()
    );
    restores_exactly(pg, &url, &archive, &m);
}

#[test]
fn zstd_backup_is_stored_as_dump_zst_and_restores_exactly() {
    let pg = Pg::V18;
    let name = unique("zstd");
    let db = TestDb::leaflock(pg, &name, 6);
    let url = db.url.clone();
    let prefix = unique("zstd");
    let mut cmd = s3_run(&url, &prefix, &name);
    cmd.env("PATH", pg.path_env())
        .env("LEAFLOCK_BACKUP_COMPRESSION", "zstd:5")
        .env("LEAFLOCK_BACKUP_COMPRESS_THREADS", "2");
    run(cmd).expect_code(0);

    let (m, okey, object) = stored(&prefix, "zst");
    assert!(okey.ends_with(".dump.zst"), "{okey}");
    assert_eq!(m["compression"]["algorithm"], "zstd");
    assert_eq!(m["compression"]["level"], 5);
    assert_eq!(&object[..4], &[0x28, 0xb5, 0x2f, 0xfd], "a zstd frame");
    let archive = filter("zstd", &["-d", "-c", "-q"], &object);
    restores_exactly(pg, &url, &archive, &m);
}

#[test]
fn bad_compression_settings_exit_2_and_store_nothing() {
    let unreachable = format!("postgresql://u:pw@127.0.0.1:{}/notes", closed_port());
    for (args, needle) in [
        (vec!["--compress-threads", "0"], "--compress-threads"),
        (vec!["--compress-threads", "-1"], "--compress-threads"),
        (vec!["--compression", "zstd:42"], "--compression"),
    ] {
        let prefix = unique("badcomp");
        let mut cmd = s3_run(&unreachable, &prefix, &prefix);
        cmd.args(&args);
        let r = run(cmd);
        r.expect_code(2);
        assert!(r.stderr.contains(needle), "{args:?}: {}", r.stderr);
        assert!(s3_keys(&format!("{prefix}/")).is_empty());
    }
    // The variable is validated the same way.
    let mut cmd = s3_run(&unreachable, "badcomp-env", "badcomp-env");
    cmd.env("LEAFLOCK_BACKUP_COMPRESS_THREADS", "0");
    let r = run(cmd);
    r.expect_code(2);
    assert!(
        r.stderr.contains("LEAFLOCK_BACKUP_COMPRESS_THREADS"),
        "{}",
        r.stderr
    );
}

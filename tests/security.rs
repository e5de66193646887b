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

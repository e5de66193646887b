//! The shipped systemd units under a real systemd: a minimal Debian root booted with
//! systemd as PID 1 (`systemd-nspawn`, sharing the host's network, so the test bed's
//! servers are reachable on loopback), the Debian package installed with
//! `apt-get install ./leaflock-backup_*.deb`, the environment file edited for the test
//! servers' addresses only, the sandbox exactly as shipped.
//!
//! Proven, in one boot: a run started by the timer stores a backup `verify` accepts and
//! logs JSON lines with `component="backup"` to the journal; the dynamic user cannot
//! read the environment file and the state directory is 0700; `systemd-analyze
//! security` of the installed units stays at or below 2.0; `systemctl stop` mid-run
//! ends with exit 1, the upload aborted and the failure pushed, within
//! `TimeoutStopSec`; the shipped `OnFailure=` drop-in fires; the drill timer runs
//! `drill latest` and pushes its outcome.
//!
//! Skips (saying why) when not root or when `scripts/testbed.sh install` has not
//! installed systemd-nspawn, cargo-deb and the prepared root.

mod common;

use common::machine::{skip_reason, Machine, RootCopy};
use common::*;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

fn build_deb() -> String {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/build-deb.sh"))
        .args(["--profile", "dev", "--no-build", "--fast"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build-deb.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A UTC calendar spec `secs` seconds ahead of the machine's clock.
fn moment_ahead(m: &Machine, secs: u32) -> String {
    m.ok(&format!(
        "date -u -d '+{secs} sec' '+%Y-%m-%d %H:%M:%S UTC'"
    ))
    .trim()
    .to_string()
}

/// A drop-in that moves a timer's OnCalendar= to `when`, no random delay.
fn timer_dropin(m: &Machine, timer: &str, when: &str) {
    m.root.write(
        &format!("etc/systemd/system/{timer}.d/test-moment.conf"),
        &format!("[Timer]\nOnCalendar=\nOnCalendar={when}\nRandomizedDelaySec=0\nAccuracySec=1s\n"),
    );
}

/// Wait until `unit` has run once more than `before` times (InvocationID changes and
/// the unit is inactive or failed again); its Result and exit status.
fn wait_finished(m: &Machine, unit: &str, before: &str, timeout: Duration) -> (String, String) {
    let start = Instant::now();
    loop {
        let id = m.prop(unit, "InvocationID");
        let state = m.prop(unit, "ActiveState");
        if id != before && (state == "inactive" || state == "failed") {
            return (m.prop(unit, "Result"), m.prop(unit, "ExecMainStatus"));
        }
        assert!(
            start.elapsed() < timeout,
            "{unit} did not finish within {timeout:?} (state {state}):\n{}",
            m.sh(&format!("journalctl -u {unit} --no-pager | tail -n 30"))
                .1
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// JSON lines of `unit`'s journal for its invocation `id`.
fn journal_json(m: &Machine, unit: &str, id: &str) -> Vec<serde_json::Value> {
    m.ok(&format!(
        "journalctl --no-pager -o cat _SYSTEMD_UNIT={unit} _SYSTEMD_INVOCATION_ID={id}"
    ))
    .lines()
    .filter_map(|l| serde_json::from_str(l).ok())
    .collect()
}

fn security_exposure(m: &Machine, unit: &str) -> f64 {
    let (_, out, err) = m.sh(&format!("systemd-analyze security --no-pager {unit}"));
    let line = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall exposure for {unit}:\n{out}{err}"));
    line.rsplit_once(": ")
        .and_then(|(_, r)| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read {line:?}"))
}

#[test]
fn shipped_units_and_package_under_a_real_systemd() {
    if let Some(why) = skip_reason(&["systemd-nspawn", "nsenter"]) {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let t0 = Instant::now();
    let deb = build_deb();
    let built = t0.elapsed();

    // The source: a LeafLock-shaped database on PostgreSQL 18 (the root gets the
    // PostgreSQL 18 client, as postgresql-client-18 would install it).
    let db = unique("sysd");
    let source = TestDb::leaflock(Pg::V18, &db, 64);
    let db_url = source.url.clone();
    let prefix = format!("{}/", unique("systemd"));
    let group = unique("systemd_metrics");

    let root = RootCopy::new("systemd");
    root.install_pg18_client();
    std::fs::copy(&deb, root.at("root/leaflock-backup.deb")).unwrap();
    let t1 = Instant::now();
    let m = Machine::boot(root);
    let booted = t1.elapsed();

    // ---- The package: installed, units present but not enabled, a 0600 conffile.
    m.ok("cp /root/leaflock-backup.deb /root/leaflock-backup_0.1.0_amd64.deb");
    let (code, out, err) = m.sh(
        "cd /root && DEBIAN_FRONTEND=noninteractive apt-get install -y -q ./leaflock-backup_0.1.0_amd64.deb",
    );
    assert_eq!(
        code, 0,
        "apt-get install ./leaflock-backup_*.deb:\n{out}{err}"
    );
    m.ok("test -x /usr/bin/leaflock-backup && /usr/bin/leaflock-backup --version");
    for f in [
        "/usr/share/man/man1/leaflock-backup.1.gz",
        "/usr/share/man/man1/leaflock-backup-run.1.gz",
        "/usr/share/bash-completion/completions/leaflock-backup",
        "/usr/share/zsh/vendor-completions/_leaflock-backup",
        "/usr/share/fish/vendor_completions.d/leaflock-backup.fish",
        "/usr/share/doc/leaflock-backup/examples/leaflock-backup-onfailure.conf.example",
        "/usr/share/doc/leaflock-backup/examples/leaflock-backup-credentials.conf.example",
    ] {
        m.ok(&format!("test -s {f}"));
    }
    assert!(m
        .ok("zcat /usr/share/man/man1/leaflock-backup-run.1.gz")
        .contains("LEAFLOCK_BACKUP_PART_SIZE"));
    assert_eq!(
        m.ok("stat -c '%a %U' /etc/leaflock-backup/leaflock-backup.env")
            .trim(),
        "600 root"
    );
    assert!(m
        .ok("dpkg-query -W -f='${Conffiles}' leaflock-backup")
        .contains("/etc/leaflock-backup/leaflock-backup.env"));
    for unit in [
        "leaflock-backup.service",
        "leaflock-backup.timer",
        "leaflock-backup-drill.service",
        "leaflock-backup-drill.timer",
    ] {
        let (_, state, _) = m.sh(&format!("systemctl is-enabled {unit}"));
        assert!(
            matches!(state.trim(), "disabled" | "static"),
            "{unit} is {state:?} after install: installed, not enabled"
        );
    }

    // ---- The one file an operator edits: the test servers' addresses, appended.
    // The password and the S3 keys are not in it: they are credentials, by the
    // shipped drop-in example (below).
    let tb = testbed();
    let mut url = url::Url::parse(&db_url).unwrap();
    let password = url
        .password()
        .expect("the test database URL has a password")
        .to_string();
    url.set_password(None).unwrap();
    let settings = [
        (
            "LEAFLOCK_BACKUP_DATABASE_URL",
            format!("{url}?sslmode=disable"),
        ),
        (
            "LEAFLOCK_BACKUP_S3_BUCKET",
            format!("s3://{}/{prefix}", tb.bucket()),
        ),
        ("LEAFLOCK_BACKUP_S3_ENDPOINT", tb.s3_endpoint()),
        (
            "LEAFLOCK_BACKUP_S3_REGION",
            tb.var("LEAFLOCK_TEST_S3_REGION"),
        ),
        ("LEAFLOCK_BACKUP_PUSHGATEWAY_URL", tb.pushgateway()),
        ("LEAFLOCK_BACKUP_METRICS_DATABASE", group.clone()),
        (
            "LEAFLOCK_BACKUP_DRILL_DATABASE_URL",
            format!("{}?sslmode=disable", Pg::V18.admin_url()),
        ),
    ];
    let mut env_text =
        std::fs::read_to_string(m.root.at("etc/leaflock-backup/leaflock-backup.env")).unwrap();
    assert_eq!(
        env_text,
        std::fs::read_to_string(repo_root().join("systemd/leaflock-backup.env")).unwrap(),
        "the package installs the shipped environment file"
    );
    env_text.push_str("\n# Test servers.\n");
    for (k, v) in &settings {
        env_text.push_str(&format!("{k}={v}\n"));
    }
    m.root
        .write("etc/leaflock-backup/leaflock-backup.env", &env_text);
    m.ok("chmod 600 /etc/leaflock-backup/leaflock-backup.env");
    // The install step the unit's comment and the README give: the signing key, which
    // the unit loads as a credential.
    m.ok("leaflock-backup keygen --out /etc/leaflock-backup/signing.key");
    // The other secrets as credentials, by the steps of the shipped drop-in example.
    for (name, value) in [
        ("database-password", password.clone()),
        ("s3-access-key", tb.var("LEAFLOCK_TEST_S3_ACCESS_KEY")),
        ("s3-secret-key", tb.var("LEAFLOCK_TEST_S3_SECRET_KEY")),
    ] {
        m.root.write(
            &format!("etc/leaflock-backup/{name}"),
            &format!("{value}\n"),
        );
        m.ok(&format!("chmod 600 /etc/leaflock-backup/{name}"));
    }
    let credentials = m
        .ok("cat /usr/share/doc/leaflock-backup/examples/leaflock-backup-credentials.conf.example");
    for unit in [
        "leaflock-backup.service",
        "leaflock-backup-drill.service",
        "leaflock-backup-check.service",
    ] {
        m.root.write(
            &format!("etc/systemd/system/{unit}.d/credentials.conf"),
            &credentials,
        );
    }
    let database_line = env_text
        .lines()
        .find(|l| l.starts_with("LEAFLOCK_BACKUP_DATABASE_URL="))
        .unwrap();
    assert!(
        !env_text.contains(&tb.var("LEAFLOCK_TEST_S3_SECRET_KEY"))
            && !database_line.contains(&password),
        "the S3 key and the database password are not in the environment file"
    );

    // ---- A run started by the timer, moved to a moment ahead.
    let when = moment_ahead(&m, 8);
    timer_dropin(&m, "leaflock-backup.timer", &when);
    m.ok("systemctl daemon-reload && systemctl enable --now leaflock-backup.timer");
    let (result, status) =
        wait_finished(&m, "leaflock-backup.service", "", Duration::from_secs(180));
    let run_id = m.prop("leaflock-backup.service", "InvocationID");
    let journal = journal_json(&m, "leaflock-backup.service", &run_id);
    assert_eq!(
        (result.as_str(), status.as_str()),
        ("success", "0"),
        "the timer's run failed:\n{}",
        m.sh("journalctl -u leaflock-backup.service --no-pager | tail -n 40")
            .1
    );
    assert!(
        m.prop("leaflock-backup.timer", "LastTriggerUSec") != "n/a",
        "the run was not started by the timer"
    );
    assert!(
        journal.iter().any(|l| l["component"] == "backup"),
        "no JSON line with component=\"backup\" in the journal: {journal:?}"
    );
    let stored = journal
        .iter()
        .find_map(|l| {
            l["key"]
                .as_str()
                .filter(|k| k.ends_with(".dump.gz"))
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no stored key in the journal: {journal:?}"));
    let mut verify = s3_cmd("verify", &prefix);
    verify.arg(&stored).env("PATH", Pg::V18.path_env());
    run(verify).expect_code(0);
    let pushed = pushed_metrics(&group);
    assert_eq!(
        pushed.get("leaflock_backups_total{status=\"success\"}"),
        Some(&1.0),
        "the timer's run pushed no success (a host without a CA store?): {pushed:?}\n{}",
        m.sh("journalctl -u leaflock-backup.service --no-pager | grep -i push")
            .1
    );

    // ---- The sandbox: the dynamic user cannot read the secrets; the state is private.
    let state = m.ok("stat -c '%a %u' /var/lib/private/leaflock-backup");
    let (mode, uid) = state.trim().split_once(' ').unwrap();
    assert_eq!(mode, "700", "state directory mode");
    assert_ne!(uid, "0", "the state directory belongs to the dynamic user");
    let (code, _, err) = m.sh(&format!(
        "setpriv --reuid={uid} --regid={uid} --clear-groups cat /etc/leaflock-backup/leaflock-backup.env"
    ));
    assert_ne!(code, 0, "the dynamic user read the environment file");
    assert!(err.contains("Permission denied"), "{err}");
    for unit in ["leaflock-backup.service", "leaflock-backup-drill.service"] {
        let score = security_exposure(&m, unit);
        eprintln!("systemd-analyze security {unit} (installed): {score}");
        assert!(score <= 2.0, "{unit}: exposure {score} > 2.0");
    }

    // ---- `check` with the backup unit's settings, started by hand as its comment says:
    // every line passes (the credentials seen through the same drop-in), nothing is
    // left in the bucket.
    let (code, _, err) = m.sh("systemctl start leaflock-backup-check.service");
    let check_log = m
        .sh("journalctl -u leaflock-backup-check.service -o cat --no-pager")
        .1;
    assert_eq!(code, 0, "the check unit failed: {err}\n{check_log}");
    for what in [
        "✓ database",
        "✓ privileges",
        "✓ permissions",
        "✓ pushgateway",
    ] {
        assert!(check_log.contains(what), "no {what:?} line:\n{check_log}");
    }
    assert!(!check_log.contains('✗'), "{check_log}");
    assert!(
        s3_keys(&prefix)
            .iter()
            .all(|k| !k.contains("leaflock_check_")),
        "a probe object was left"
    );

    // ---- The shipped OnFailure= example, for the next (failing) run.
    let example =
        m.ok("cat /usr/share/doc/leaflock-backup/examples/leaflock-backup-onfailure.conf.example");
    m.root.write(
        "etc/systemd/system/leaflock-backup.service.d/onfailure.conf",
        &example,
    );
    m.root.write(
        "etc/systemd/system/leaflock-backup-failed@.service",
        "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo \"%i\" >> /run/leaflock-failed'\n",
    );

    // ---- `systemctl stop` mid-run: S3 through a throttling proxy so the upload lasts.
    let proxy = proxy::throttle(&proxy::host_port(&tb.s3_endpoint()), 400_000);
    // Small parts, one in flight: the dump is still streaming when the stop comes (with
    // the shipped 16 MiB x 4 the whole object is buffered and the stop lands in the
    // commit, which the runner lets finish).
    let slow = env_text.replace(
        &format!("LEAFLOCK_BACKUP_S3_ENDPOINT={}", tb.s3_endpoint()),
        &format!("LEAFLOCK_BACKUP_S3_ENDPOINT={}", proxy.url()),
    ) + "LEAFLOCK_BACKUP_PART_SIZE=5MiB\nLEAFLOCK_BACKUP_PARTS_IN_FLIGHT=1\n";
    m.root
        .write("etc/leaflock-backup/leaflock-backup.env", &slow);
    m.ok("systemctl daemon-reload");
    let before = m.prop("leaflock-backup.service", "InvocationID");
    m.ok("systemctl start --no-block leaflock-backup.service");
    wait_for(Duration::from_secs(60), "an open multipart upload", || {
        (!s3_open_uploads(&prefix).is_empty()).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let stop_timeout: u64 = m
        .prop("leaflock-backup.service", "TimeoutStopUSec")
        .trim_end_matches("min")
        .parse::<u64>()
        .map(|min| min * 60)
        .unwrap_or(60);
    let t_stop = Instant::now();
    m.ok("systemctl stop leaflock-backup.service");
    let stop_took = t_stop.elapsed();
    let (result, status) = wait_finished(
        &m,
        "leaflock-backup.service",
        &before,
        Duration::from_secs(10),
    );
    assert_eq!(
        (result.as_str(), status.as_str()),
        ("exit-code", "1"),
        "a stopped run exits 1:\n{}",
        m.sh("journalctl -u leaflock-backup.service --no-pager | tail -n 25")
            .1
    );
    assert!(
        stop_took < Duration::from_secs(stop_timeout),
        "systemctl stop took {stop_took:?} (TimeoutStopSec {stop_timeout} s)"
    );
    assert!(
        s3_open_uploads(&prefix).is_empty(),
        "the stopped run left a multipart upload: {:?}",
        s3_open_uploads(&prefix)
    );
    let manifests = s3_keys(&prefix)
        .into_iter()
        .filter(|k| k.ends_with(".manifest.json"))
        .count();
    assert_eq!(manifests, 1, "only the timer's backup has a manifest");
    let pushed = pushed_metrics(&group);
    assert_eq!(
        pushed.get("leaflock_backups_total{status=\"failure\"}"),
        Some(&1.0),
        "the stopped run pushed its failure: {pushed:?}"
    );
    let fired = wait_for(Duration::from_secs(20), "the OnFailure= unit", || {
        let (code, out, _) = m.sh("cat /run/leaflock-failed");
        (code == 0).then_some(out)
    });
    assert_eq!(fired.trim(), "leaflock-backup.service");
    drop(proxy);
    m.root
        .write("etc/leaflock-backup/leaflock-backup.env", &env_text);

    // ---- The weekly drill, started by its timer moved to a moment ahead.
    let when = moment_ahead(&m, 6);
    timer_dropin(&m, "leaflock-backup-drill.timer", &when);
    m.ok("systemctl daemon-reload && systemctl enable --now leaflock-backup-drill.timer");
    let (result, status) = wait_finished(
        &m,
        "leaflock-backup-drill.service",
        "",
        Duration::from_secs(180),
    );
    assert_eq!(
        (result.as_str(), status.as_str()),
        ("success", "0"),
        "the drill timer's run failed:\n{}",
        m.sh("journalctl -u leaflock-backup-drill.service --no-pager | tail -n 40")
            .1
    );
    let pushed: BTreeMap<String, f64> = pushed_metrics(&group);
    assert_eq!(
        pushed.get("leaflock_restore_drills_total{status=\"success\"}"),
        Some(&1.0),
        "the drill pushed its outcome: {pushed:?}"
    );

    drop(m);
    source.drop_now();
    eprintln!(
        "systemd test: deb built in {:.1} s, booted in {:.1} s, whole test {:.1} s, stop took {:.1} s",
        built.as_secs_f64(),
        booted.as_secs_f64(),
        t0.elapsed().as_secs_f64(),
        stop_took.as_secs_f64()
    );
}

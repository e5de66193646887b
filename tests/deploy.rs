//! The files operators copy, checked with the tools that will read them: the systemd
//! units (`systemd-analyze verify`, `security`, `calendar`), the Kubernetes manifests
//! (`kubernetes-validate`, `kubectl kustomize`), the alert rules (`promtool`), the
//! Grafana dashboard and the alert rules against a real Prometheus scraping the real
//! Pushgateway after real runs, and the Dockerfile (by structure: no Docker engine).
//!
//! Every tool is installed by `scripts/testbed.sh install` except kubectl, which is
//! optional: without it the rendering test says so and skips.

mod common;

use common::*;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn path(rel: &str) -> PathBuf {
    repo_root().join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn yaml(rel: &str) -> Yaml {
    serde_yaml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn yaml_docs(text: &str) -> Vec<Yaml> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).expect("a YAML document"))
        .filter(|v: &Yaml| !v.is_null())
        .collect()
}

/// `v` at a path of mapping keys and sequence indexes ("spec.jobTemplate.spec");
/// a key with dots in it goes in brackets ("labels.[app.kubernetes.io/name]").
fn at<'a>(v: &'a Yaml, dotted: &str) -> &'a Yaml {
    let mut parts = Vec::new();
    let mut rest = dotted;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('[') {
            let (key, after) = r.split_once(']').expect("closing ]");
            parts.push(key);
            rest = after.strip_prefix('.').unwrap_or(after);
        } else {
            let (key, after) = rest.split_once('.').unwrap_or((rest, ""));
            parts.push(key);
            rest = after;
        }
    }
    let mut cur = v;
    for part in parts {
        cur = match part.parse::<usize>() {
            Ok(i) => &cur[i],
            Err(_) => &cur[part],
        };
    }
    cur
}

fn s<'a>(v: &'a Yaml, dotted: &str) -> &'a str {
    at(v, dotted)
        .as_str()
        .unwrap_or_else(|| panic!("{dotted} is not a string: {:?}", at(v, dotted)))
}

fn i(v: &Yaml, dotted: &str) -> i64 {
    at(v, dotted)
        .as_i64()
        .unwrap_or_else(|| panic!("{dotted} is not an integer: {:?}", at(v, dotted)))
}

fn b(v: &Yaml, dotted: &str) -> bool {
    at(v, dotted)
        .as_bool()
        .unwrap_or_else(|| panic!("{dotted} is not a boolean: {:?}", at(v, dotted)))
}

fn output(cmd: &mut Command) -> (i32, String, String) {
    let out: Output = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A tool of the test bed: its env file's variable, else the install location.
fn testbed_tool(var: &str, fallback: &str) -> PathBuf {
    let p = testbed()
        .var_opt(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| fallback.into());
    let p = if p.is_relative() {
        Path::new(
            &testbed()
                .var_opt("LEAFLOCK_TESTBED_DIR")
                .unwrap_or_else(|| "/tmp/leaflock-testbed".into()),
        )
        .join(p)
    } else {
        p
    };
    assert!(
        p.exists(),
        "{} not found: run `scripts/testbed.sh install`",
        p.display()
    );
    p
}

fn promtool() -> PathBuf {
    testbed_tool("LEAFLOCK_TEST_PROMTOOL", "/usr/bin/promtool")
}

fn kubernetes_validate() -> PathBuf {
    testbed_tool(
        "LEAFLOCK_TEST_KUBERNETES_VALIDATE",
        "venv/bin/kubernetes-validate",
    )
}

/// `key=value` settings of a unit file's section (repeated keys: every value).
fn unit_settings(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        let (k, v) = line.split_once('=').expect("key=value");
        out.entry(k.to_string()).or_default().push(v.to_string());
    }
    out
}

fn one<'a>(settings: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    let v = settings
        .get(key)
        .unwrap_or_else(|| panic!("{key}= is missing"));
    assert_eq!(v.len(), 1, "{key}= set more than once: {v:?}");
    &v[0]
}

/// `Environment="NAME=value"` / `Environment=NAME=value` of a unit.
fn unit_env(settings: &BTreeMap<String, Vec<String>>, name: &str) -> Option<String> {
    settings.get("Environment")?.iter().find_map(|e| {
        let e = e.trim_matches('"');
        e.strip_prefix(&format!("{name}=")).map(str::to_string)
    })
}

/// The units in a temporary directory, ExecStart pointing at the built binary.
fn units_in_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let service = read("systemd/leaflock-backup.service");
    assert!(service.contains("ExecStart=/usr/bin/leaflock-backup run"));
    std::fs::write(
        dir.path().join("leaflock-backup.service"),
        service.replace("/usr/bin/leaflock-backup", bin()),
    )
    .unwrap();
    let drill = read("systemd/leaflock-backup-drill.service");
    assert!(drill.contains("ExecStart=/usr/bin/leaflock-backup drill latest"));
    std::fs::write(
        dir.path().join("leaflock-backup-drill.service"),
        drill.replace("/usr/bin/leaflock-backup", bin()),
    )
    .unwrap();
    let check = read("systemd/leaflock-backup-check.service");
    assert!(check.contains("ExecStart=/usr/bin/leaflock-backup check"));
    std::fs::write(
        dir.path().join("leaflock-backup-check.service"),
        check.replace("/usr/bin/leaflock-backup", bin()),
    )
    .unwrap();
    for timer in ["leaflock-backup.timer", "leaflock-backup-drill.timer"] {
        std::fs::copy(path(&format!("systemd/{timer}")), dir.path().join(timer)).unwrap();
    }
    dir
}

fn systemd_verify(dir: &Path) -> (i32, String, String) {
    output(
        Command::new("systemd-analyze")
            .args([
                "verify",
                "leaflock-backup.service",
                "leaflock-backup.timer",
                "leaflock-backup-drill.service",
                "leaflock-backup-drill.timer",
                "leaflock-backup-check.service",
            ])
            .current_dir(dir)
            // Relative names are looked up in the working directory only.
            .env("SYSTEMD_LOG_COLOR", "0"),
    )
}

/// Upcoming slots printed by `leaflock-backup next-run`, as "YYYY-MM-DDTHH:MM:SS" (UTC).
fn next_run_slots(schedule: &str, tz: &str, count: usize) -> Vec<String> {
    let (code, out, err) = output(runner().args([
        "next-run",
        "--schedule",
        schedule,
        "--timezone",
        tz,
        "--count",
        &count.to_string(),
    ]));
    assert_eq!(code, 0, "next-run refused {schedule:?} ({tz}): {err}");
    let slots: Vec<String> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|t| t.trim_end_matches('Z').to_string())
        .collect();
    assert_eq!(slots.len(), count, "{out}");
    slots
}

// ---------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------

#[test]
fn systemd_units_verify_without_a_single_warning() {
    let dir = units_in_tempdir();
    let (code, out, err) = systemd_verify(dir.path());
    assert_eq!(code, 0, "systemd-analyze verify failed:\n{out}{err}");
    assert!(
        err.trim().is_empty(),
        "systemd-analyze verify printed (a bad key only warns):\n{err}"
    );

    // The check can fail: a misspelt key in the same unit is reported on stderr.
    let bad = dir.path().join("leaflock-backup.service");
    let text = std::fs::read_to_string(&bad).unwrap();
    std::fs::write(&bad, text.replace("NoNewPrivileges=", "NoNewPrivilege=")).unwrap();
    let (_, _, err) = systemd_verify(dir.path());
    assert!(
        err.contains("NoNewPrivilege"),
        "a bad key must be reported: {err:?}"
    );
}

#[test]
fn systemd_service_is_hardened_to_an_exposure_of_2_or_less() {
    let dir = units_in_tempdir();
    let (code, out, err) = output(
        Command::new("systemd-analyze")
            .args([
                "security",
                "--offline=true",
                "--threshold=20",
                "--no-pager",
                "leaflock-backup.service",
            ])
            .current_dir(dir.path()),
    );
    let line = out
        .lines()
        .find(|l| l.contains("Overall exposure level for leaflock-backup.service"))
        .unwrap_or_else(|| panic!("no overall exposure line:\n{out}{err}"));
    let score: f64 = line
        .rsplit_once(": ")
        .and_then(|(_, r)| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in {line:?}"));
    eprintln!("systemd-analyze security: exposure {score}");
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{out}");
    assert_eq!(code, 0, "--threshold=20 refused it:\n{out}{err}");

    // The settings the runner's contract relies on.
    let unit = unit_settings(&read("systemd/leaflock-backup.service"));
    for (k, v) in [
        ("Type", "oneshot"),
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("StateDirectory", "leaflock-backup"),
        ("KillSignal", "SIGTERM"),
        ("KillMode", "mixed"),
        (
            "EnvironmentFile",
            "/etc/leaflock-backup/leaflock-backup.env",
        ),
    ] {
        assert_eq!(one(&unit, k), v, "{k}=");
    }
    for k in [
        "RestrictAddressFamilies",
        "SystemCallFilter",
        "TimeoutStartSec",
    ] {
        assert!(unit.contains_key(k), "{k}= is missing");
    }
    let stop: u64 = one(&unit, "TimeoutStopSec").parse().unwrap();
    assert!(
        stop >= 30,
        "TimeoutStopSec={stop}: too short for a clean abort"
    );
    assert_eq!(
        unit_env(&unit, "LEAFLOCK_BACKUP_LOCAL_DIR").as_deref(),
        Some("%S/leaflock-backup"),
        "local backups go to the StateDirectory"
    );
    // The signing key is a credential (a file in the service's private credentials
    // directory), never a variable's value.
    assert_eq!(
        one(&unit, "LoadCredential"),
        "signing-key:/etc/leaflock-backup/signing.key"
    );
    assert_eq!(
        unit_env(&unit, "LEAFLOCK_BACKUP_SIGNING_KEY_FILE").as_deref(),
        Some("%d/signing-key")
    );
}

#[test]
fn systemd_timer_fires_when_the_pushed_schedule_says() {
    let timer = unit_settings(&read("systemd/leaflock-backup.timer"));
    let service = unit_settings(&read("systemd/leaflock-backup.service"));
    assert_eq!(one(&timer, "Persistent"), "true");
    assert!(timer.contains_key("RandomizedDelaySec"));
    let calendar = one(&timer, "OnCalendar").to_string();
    let schedule = unit_env(&service, "LEAFLOCK_BACKUP_SCHEDULE").expect("a schedule");
    let tz = unit_env(&service, "LEAFLOCK_BACKUP_TIMEZONE").expect("a time zone");

    // next-run first: if a slot passes in between, systemd's list starts later.
    let ours = next_run_slots(&schedule, &tz, 4);
    let (code, out, err) = output(
        Command::new("systemd-analyze")
            .args(["calendar", "--iterations=3", &calendar])
            .env("TZ", "UTC"),
    );
    assert_eq!(code, 0, "systemd-analyze calendar {calendar:?}: {err}");
    let theirs: Vec<String> = out
        .lines()
        .filter(|l| l.contains("Next elapse:") || l.contains("Iter. #"))
        .map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            let d = t
                .iter()
                .position(|w| w.len() == 10 && w.as_bytes()[4] == b'-')
                .unwrap_or_else(|| panic!("no date in {l:?}"));
            format!("{}T{}", t[d], t[d + 1])
        })
        .collect();
    assert_eq!(theirs.len(), 3, "{out}");
    for t in &theirs {
        assert!(
            ours.contains(t),
            "OnCalendar={calendar} fires at {t}, which `{schedule}` ({tz}) does not: {ours:?}"
        );
    }

    // The same slot as the CronJob.
    let cj = yaml("k8s/base/cronjob.yaml");
    assert_eq!(s(&cj, "spec.schedule"), schedule);
}

/// Every variable the binary reads, from its own sources: `env = "..."` in cli.rs and
/// the fallback names config.rs looks up.
fn variables_the_binary_reads() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let cli = read("src/cli.rs");
    for part in cli.split("env = \"").skip(1) {
        out.insert(part.split('"').next().unwrap().to_string());
    }
    let config = read("src/config.rs");
    let code = config.split("#[cfg(test)]").next().unwrap();
    for part in code.split('"').skip(1).step_by(2) {
        let looks_like_env = part.len() > 3
            && (part.contains('_') || part.starts_with("PG"))
            && part
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            && part.chars().next().unwrap().is_ascii_uppercase();
        if looks_like_env {
            out.insert(part.to_string());
        }
    }
    // Commands that read a variable directly.
    for entry in std::fs::read_dir(repo_root().join("src/commands"))
        .unwrap()
        .flatten()
    {
        let text = std::fs::read_to_string(entry.path()).unwrap();
        for part in text.split("process_env(\"").skip(1) {
            out.insert(part.split('"').next().unwrap().to_string());
        }
    }
    out
}

/// The `NAME_FILE` forms of the secret variables (src/secrets.rs): read by the binary,
/// never required to be listed.
fn file_variables() -> BTreeSet<String> {
    let text = read("src/secrets.rs");
    let list = text
        .split("pub const SECRET_VARIABLES: &[&str] = &[")
        .nth(1)
        .expect("SECRET_VARIABLES in src/secrets.rs")
        .split("];")
        .next()
        .unwrap();
    let out: BTreeSet<String> = list
        .split('"')
        .skip(1)
        .step_by(2)
        .map(|v| format!("{v}_FILE"))
        .collect();
    assert!(out.contains("POSTGRESQL_PASSWORD_FILE"), "{out:?}");
    out
}

/// Variables the environment file may list ahead of the binary reading them.
const PENDING_VARIABLES: &[&str] = &[];

#[test]
fn systemd_environment_file_lists_every_variable() {
    let text = read("systemd/leaflock-backup.env");
    let mut listed = BTreeSet::new();
    for line in text.lines() {
        let body = line.strip_prefix('#').unwrap_or(line);
        let Some((name, value)) = body.split_once('=') else {
            continue;
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            continue;
        }
        assert!(
            !value.contains(" #") && !value.contains("\t#"),
            "systemd would keep this comment in the value: {line:?}"
        );
        listed.insert(name.to_string());
    }
    let reads = variables_the_binary_reads();
    for must in [
        "LEAFLOCK_BACKUP_DATABASE_URL",
        "DATABASE_URL",
        "PGPASSWORD",
        "BACKUP_S3_BUCKET",
        "BACKUP_SCHEDULE",
    ] {
        assert!(reads.contains(must), "{must} not found in the sources");
    }
    let missing: Vec<_> = reads.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "not in systemd/leaflock-backup.env: {missing:?}"
    );
    let unknown: Vec<_> = listed
        .iter()
        .filter(|n| {
            !reads.contains(*n)
                && !file_variables().contains(*n)
                && !PENDING_VARIABLES.contains(&n.as_str())
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "listed but never read by the binary: {unknown:?}"
    );
}

// ---------------------------------------------------------------------------
// Kubernetes
// ---------------------------------------------------------------------------

/// Every manifest under k8s/ except kustomizations, patches (`*-patch.yaml`: partial
/// objects, validated in the rendered output) and the PrometheusRule (a CRD the
/// validator has no schema for; checked by structure below).
fn k8s_manifests() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml")
                && p.file_name().unwrap() != "kustomization.yaml"
                && p.file_name().unwrap() != "prometheusrule.yaml"
                && !p.to_string_lossy().ends_with("-patch.yaml")
            {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&path("k8s"), &mut out);
    out.sort();
    out
}

fn kubernetes_validate_files(files: &[PathBuf]) {
    let (code, out, err) = output(
        Command::new(kubernetes_validate())
            .args(["--strict", "-k", "1.31.0"])
            .args(files),
    );
    let all = format!("{out}{err}");
    let bad: Vec<&str> = all
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("INFO"))
        .collect();
    assert!(
        code == 0 && bad.is_empty(),
        "kubernetes-validate (exit {code}):\n{all}"
    );
    let passed = all.lines().filter(|l| l.contains(" passed ")).count();
    assert!(passed >= files.len(), "not every file was checked:\n{all}");
}

#[test]
fn k8s_manifests_validate_strictly_against_kubernetes_1_31() {
    let files = k8s_manifests();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.strip_prefix(repo_root()).unwrap().display().to_string())
        .collect();
    for must in [
        "k8s/base/cronjob.yaml",
        "k8s/base/serviceaccount.yaml",
        "k8s/base/configmap.yaml",
        "k8s/base/networkpolicy.yaml",
        "k8s/base/postgresql-networkpolicy.yaml",
        "k8s/secret.example.yaml",
        "k8s/overlays/restore-drill/cronjob-restore-drill.yaml",
    ] {
        assert!(
            names.iter().any(|n| n == must),
            "{must} not found: {names:?}"
        );
    }
    kubernetes_validate_files(&files);

    // Every file a kustomization lists exists (kubectl may be absent).
    for k in [
        "k8s",
        "k8s/base",
        "k8s/overlays/restore-drill",
        "k8s/monitoring",
    ] {
        let kz = yaml(&format!("{k}/kustomization.yaml"));
        for r in at(&kz, "resources").as_sequence().unwrap() {
            let p = path(k).join(r.as_str().unwrap());
            assert!(p.exists(), "{k}/kustomization.yaml lists {}", p.display());
        }
    }
}

#[test]
fn kustomize_renders_the_base_the_drill_overlay_and_the_rules() {
    if Command::new("kubectl")
        .args(["version", "--client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        eprintln!("SKIPPED: kubectl is not installed; `kubectl kustomize` cannot be checked here");
        return;
    }
    let render = |dir: &str| -> Vec<Yaml> {
        let (code, out, err) = output(Command::new("kubectl").arg("kustomize").arg(path(dir)));
        assert_eq!(code, 0, "kubectl kustomize {dir}: {err}");
        yaml_docs(&out)
    };
    let kinds = |docs: &[Yaml]| -> Vec<String> {
        let mut v: Vec<String> = docs
            .iter()
            .map(|d| format!("{}/{}", s(d, "kind"), s(d, "metadata.name")))
            .collect();
        v.sort();
        v
    };
    let base = render("k8s");
    assert_eq!(
        kinds(&base),
        [
            "ConfigMap/leaflock-backup",
            "CronJob/leaflock-backup",
            "NetworkPolicy/leaflock-backup",
            "NetworkPolicy/leaflock-postgresql-allow-backup",
            "ServiceAccount/leaflock-backup",
        ]
    );
    let drill = render("k8s/overlays/restore-drill");
    assert!(kinds(&drill).contains(&"CronJob/leaflock-backup-restore-drill".to_string()));
    assert_eq!(drill.len(), base.len() + 1);
    for d in base.iter().chain(&drill) {
        assert_eq!(s(d, "metadata.namespace"), "leaflock", "{d:?}");
        assert_eq!(
            s(d, "metadata.labels.[app.kubernetes.io/part-of]"),
            "leaflock"
        );
    }
    for d in drill.iter().filter(|d| s(d, "kind") == "CronJob") {
        let image = s(d, "spec.jobTemplate.spec.template.spec.containers.0.image");
        assert!(image.contains(':'), "image with a tag: {image}");
    }
    let rules = render("k8s/monitoring");
    assert_eq!(kinds(&rules), ["PrometheusRule/leaflock-backup"]);
    assert_eq!(s(&rules[0], "metadata.namespace"), "monitoring");

    // What kubectl renders validates too.
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (name, docs) in [("base.yaml", &base), ("drill.yaml", &drill)] {
        let text: Vec<String> = docs
            .iter()
            .map(|d| serde_yaml::to_string(d).unwrap())
            .collect();
        let f = dir.path().join(name);
        std::fs::write(&f, text.join("---\n")).unwrap();
        files.push(f);
    }
    kubernetes_validate_files(&files);
}

#[test]
fn many_databases_overlay_adds_a_database_with_its_own_schedule_secret_and_group() {
    if Command::new("kubectl")
        .args(["version", "--client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        eprintln!("SKIPPED: kubectl is not installed; `kubectl kustomize` cannot be checked here");
        return;
    }
    let (code, out, err) = output(
        Command::new("kubectl")
            .arg("kustomize")
            .arg(path("k8s/overlays/many-databases")),
    );
    assert_eq!(
        code, 0,
        "kubectl kustomize k8s/overlays/many-databases: {err}"
    );
    let docs = yaml_docs(&out);
    let jobs: Vec<&Yaml> = docs.iter().filter(|d| s(d, "kind") == "CronJob").collect();
    assert_eq!(jobs.len(), 2, "two CronJobs: {jobs:?}");
    let configmaps: BTreeMap<&str, &Yaml> = docs
        .iter()
        .filter(|d| s(d, "kind") == "ConfigMap")
        .map(|d| (s(d, "metadata.name"), d))
        .collect();
    // Per CronJob: (schedule, database, metrics group, Secrets referenced).
    let mut seen = Vec::new();
    for cj in &jobs {
        let name = s(cj, "metadata.name");
        let pod = at(cj, "spec.jobTemplate.spec.template.spec");
        let c = at(pod, "containers.0");
        let env = container_env(cj);
        let value = |k: &str| {
            env.get(k)
                .and_then(|v| v["value"].as_str())
                .map(str::to_string)
        };
        let cm = configmaps[s(c, "envFrom.0.configMapRef.name")];
        let database = value("POSTGRESQL_DATABASE")
            .unwrap_or_else(|| s(cm, "data.POSTGRESQL_DATABASE").to_string());
        let group = value("LEAFLOCK_BACKUP_METRICS_DATABASE").unwrap_or_else(|| database.clone());
        let schedule = s(cj, "spec.schedule").to_string();
        assert_eq!(
            value("LEAFLOCK_BACKUP_SCHEDULE").as_deref(),
            Some(schedule.as_str()),
            "{name}: the pushed schedule is the CronJob's"
        );
        let volumes = at(pod, "volumes").as_sequence().unwrap();
        let secrets: BTreeSet<String> = env
            .values()
            .filter_map(|v| v["valueFrom"]["secretKeyRef"]["name"].as_str())
            .chain(
                volumes
                    .iter()
                    .filter_map(|v| v["secret"]["secretName"].as_str()),
            )
            .map(str::to_string)
            .collect();
        assert_eq!(secrets.len(), 1, "{name}: one Secret: {secrets:?}");
        assert_eq!(
            s(pod, "serviceAccountName"),
            format!(
                "leaflock-backup{}",
                name.strip_prefix("leaflock-backup").unwrap()
            )
        );
        seen.push((schedule, database, group, secrets));
    }
    let (a, b) = (&seen[0], &seen[1]);
    assert_ne!(a.0, b.0, "own schedule");
    assert_ne!(a.1, b.1, "own database");
    assert_ne!(a.2, b.2, "own Pushgateway grouping label");
    assert_ne!(a.3, b.3, "own Secret");

    // The rendered overlay validates too.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("many-databases.yaml");
    std::fs::write(&f, &out).unwrap();
    kubernetes_validate_files(&[f]);
}

fn cronjobs() -> Vec<(String, Yaml)> {
    [
        "k8s/base/cronjob.yaml",
        "k8s/overlays/restore-drill/cronjob-restore-drill.yaml",
    ]
    .iter()
    .map(|f| (f.to_string(), yaml(f)))
    .collect()
}

/// The Secret volume and item key behind `path`, a file in one of `c`'s read-only
/// mounts of `pod`'s volumes.
fn mounted_secret_item(pod: &Yaml, c: &Yaml, path: &str) -> Option<(Yaml, String)> {
    let mount = at(c, "volumeMounts")
        .as_sequence()?
        .iter()
        .find(|m| path.starts_with(&format!("{}/", s(m, "mountPath"))))?;
    assert!(b(mount, "readOnly"), "{path}: mounted read-only");
    let rel = &path[s(mount, "mountPath").len() + 1..];
    let vol = at(pod, "volumes")
        .as_sequence()?
        .iter()
        .find(|v| s(v, "name") == s(mount, "name"))?;
    let item = at(vol, "secret.items")
        .as_sequence()?
        .iter()
        .find(|it| s(it, "path") == rel)?;
    Some((vol.clone(), s(item, "key").to_string()))
}

fn container_env(cj: &Yaml) -> BTreeMap<String, Yaml> {
    at(cj, "spec.jobTemplate.spec.template.spec.containers.0.env")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| (s(e, "name").to_string(), e.clone()))
        .collect()
}

#[test]
fn cronjob_schedules_parse_and_equal_the_schedule_pushed() {
    for (file, cj) in cronjobs() {
        let schedule = s(&cj, "spec.schedule");
        let tz = s(&cj, "spec.timeZone");
        next_run_slots(schedule, tz, 3);
        let env = container_env(&cj);
        if file.contains("restore-drill") {
            // The drill shares the backup's metrics group: it must not move the
            // daily job's next-run gauge to a weekly slot.
            assert!(
                !env.contains_key("LEAFLOCK_BACKUP_SCHEDULE"),
                "{file} must not push a schedule"
            );
        } else {
            let pushed = s(&env["LEAFLOCK_BACKUP_SCHEDULE"], "value");
            assert_eq!(pushed, schedule, "{file}: LEAFLOCK_BACKUP_SCHEDULE");
            assert_eq!(s(&env["LEAFLOCK_BACKUP_TIMEZONE"], "value"), tz);
        }
    }
    // Nothing else may set a schedule for both CronJobs.
    let cm = yaml("k8s/base/configmap.yaml");
    for k in ["LEAFLOCK_BACKUP_SCHEDULE", "BACKUP_SCHEDULE"] {
        assert!(at(&cm, "data").get(k).is_none(), "{k} in the ConfigMap");
    }
    // The binary says no to a bad one (the check can fail).
    let (code, _, err) = output(runner().args(["next-run", "--schedule", "0 2 * 13 *"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("month"), "{err}");
}

#[test]
fn cronjob_pods_are_locked_down_and_bounded() {
    let secret = yaml("k8s/secret.example.yaml");
    let secret_name = s(&secret, "metadata.name");
    assert_eq!(secret_name, "leaflock-backup-secret");
    let secret_keys: BTreeSet<String> = at(&secret, "stringData")
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    for k in [
        "s3-bucket",
        "s3-access-key",
        "s3-secret-key",
        "encryption-key",
        "database-password",
    ] {
        assert!(
            secret_keys.contains(k),
            "Secret key {k} (LeafLock's Helm chart)"
        );
    }
    let sa = yaml("k8s/base/serviceaccount.yaml");
    assert!(!b(&sa, "automountServiceAccountToken"));
    let reads = variables_the_binary_reads();
    let reads: BTreeSet<String> = reads.iter().cloned().chain(file_variables()).collect();

    for (file, cj) in cronjobs() {
        assert_eq!(s(&cj, "spec.concurrencyPolicy"), "Forbid", "{file}");
        assert!(i(&cj, "spec.startingDeadlineSeconds") > 0, "{file}");
        assert!(i(&cj, "spec.successfulJobsHistoryLimit") >= 1, "{file}");
        assert!(i(&cj, "spec.failedJobsHistoryLimit") >= 1, "{file}");
        let job = at(&cj, "spec.jobTemplate.spec");
        assert!(i(job, "backoffLimit") <= 1, "{file}");
        assert!(i(job, "activeDeadlineSeconds") > 0, "{file}");
        let pod = at(job, "template.spec");
        assert_eq!(s(pod, "serviceAccountName"), s(&sa, "metadata.name"));
        assert!(!b(pod, "automountServiceAccountToken"), "{file}");
        assert_eq!(s(pod, "restartPolicy"), "Never");
        assert!(
            i(pod, "terminationGracePeriodSeconds") >= 30,
            "{file}: room for a clean abort"
        );
        assert_eq!(
            s(pod, "securityContext.seccompProfile.type"),
            "RuntimeDefault"
        );
        assert_eq!(i(pod, "securityContext.runAsUser"), 1000);
        assert_eq!(i(pod, "securityContext.runAsGroup"), 1000);
        let c = at(pod, "containers.0");
        assert_eq!(s(c, "image"), "leaflock-backup", "{file}: set by kustomize");
        let sc = at(c, "securityContext");
        assert!(b(sc, "runAsNonRoot"));
        assert!(b(sc, "readOnlyRootFilesystem"));
        assert!(!b(sc, "allowPrivilegeEscalation"));
        assert_eq!(s(sc, "capabilities.drop.0"), "ALL");
        assert_eq!(s(c, "resources.requests.memory"), "128Mi", "{file}");
        assert_eq!(s(c, "resources.limits.memory"), "256Mi", "{file}");
        let tmp = at(c, "volumeMounts")
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| s(m, "mountPath") == "/tmp")
            .expect("/tmp mounted");
        let vol = at(pod, "volumes")
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| s(v, "name") == s(tmp, "name"))
            .expect("the /tmp volume");
        assert!(
            at(vol, "emptyDir").is_mapping(),
            "{file}: /tmp is an emptyDir"
        );
        assert_eq!(s(c, "envFrom.0.configMapRef.name"), "leaflock-backup");

        let env = container_env(&cj);
        // The bucket's name is the one value taken from the Secret as a variable (and
        // the optional old encryption key: a volume cannot mount a key only if present).
        let e = env
            .get("LEAFLOCK_BACKUP_S3_BUCKET")
            .unwrap_or_else(|| panic!("{file}: LEAFLOCK_BACKUP_S3_BUCKET"));
        assert_eq!(s(e, "valueFrom.secretKeyRef.name"), secret_name);
        assert_eq!(s(e, "valueFrom.secretKeyRef.key"), "s3-bucket", "{file}");
        for (name, e) in &env {
            if let Some(k) = at(e, "valueFrom.secretKeyRef.key").as_str() {
                assert!(secret_keys.contains(k), "{file}: key {k} not in the Secret");
                assert!(
                    ["s3-bucket", "encryption-key"].contains(&k),
                    "{file}: {name} takes the secret {k} as a variable; mount it as a file"
                );
            }
        }
        // Every other secret: a file mounted read-only from the Secret, named by the
        // variable's NAME_FILE form, never a variable itself.
        let mut secrets = vec![
            ("LEAFLOCK_BACKUP_SIGNING_KEY", "signing-key"),
            ("POSTGRESQL_PASSWORD", "database-password"),
            ("LEAFLOCK_BACKUP_S3_ACCESS_KEY", "s3-access-key"),
            ("LEAFLOCK_BACKUP_S3_SECRET_KEY", "s3-secret-key"),
        ];
        if file.contains("restore-drill") {
            secrets.push(("LEAFLOCK_BACKUP_DRILL_DATABASE_URL", "drill-database-url"));
        }
        for (var, key) in secrets {
            assert!(!env.contains_key(var), "{file}: {var} as a variable");
            let file_var = format!("{var}_FILE");
            let path = s(
                env.get(&file_var)
                    .unwrap_or_else(|| panic!("{file}: {file_var}")),
                "value",
            )
            .to_string();
            let (vol, item) = mounted_secret_item(pod, c, &path)
                .unwrap_or_else(|| panic!("{file}: {path} is not a mounted Secret item"));
            assert_eq!(s(&vol, "secret.secretName"), secret_name, "{file}");
            assert_eq!(item, key, "{file}: {file_var}");
            assert!(secret_keys.contains(key), "{key} in the Secret");
            // 0440 in YAML 1.1, as Kubernetes reads it: octal.
            let mode = match at(&vol, "secret.defaultMode") {
                Yaml::String(m) => i64::from_str_radix(m, 8).unwrap(),
                m => m.as_i64().unwrap(),
            };
            assert_eq!(mode & 0o007, 0, "{file}: secret files unreadable by others");
        }
        for name in env.keys() {
            assert!(
                reads.contains(name.as_str()),
                "{file}: {name} is not read by the binary"
            );
        }
        let args: Vec<&str> = at(c, "args")
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        if file.contains("restore-drill") {
            assert_eq!(args, ["run", "--restore-drill"]);
            assert!(env.contains_key("LEAFLOCK_BACKUP_DRILL_DATABASE_URL_FILE"));
        } else {
            assert_eq!(args, ["run"]);
        }
    }

    // The variables the ConfigMap sets are ones the binary reads.
    let cm = yaml("k8s/base/configmap.yaml");

    // The memory limit holds what the ConfigMap's settings need (measured: about
    // 50 MiB + 4 MiB per compressing thread + the S3 writer's parts), with the threads
    // set explicitly: by default they follow the node's cores, which a pod without a
    // CPU limit does not bound.
    let mib = |k: &str| -> i64 {
        let v = s(&cm, &format!("data.{k}"));
        v.trim_end_matches("MiB")
            .parse()
            .unwrap_or_else(|_| panic!("{k}={v} in MiB"))
    };
    let count = |k: &str| -> i64 {
        let v = s(&cm, &format!("data.{k}"));
        v.parse().unwrap_or_else(|_| panic!("{k}={v}"))
    };
    let threads = count("LEAFLOCK_BACKUP_COMPRESS_THREADS");
    // With the Secret's encryption-key, `run` encrypts with it as an age passphrase:
    // scrypt at the runner's fixed work factor holds 1 KiB x 2^16 = 64 MiB meanwhile.
    let scrypt = 64;
    let need = 50
        + 4 * threads
        + mib("LEAFLOCK_BACKUP_PART_SIZE") * (count("LEAFLOCK_BACKUP_PARTS_IN_FLIGHT") + 1)
        + scrypt;
    assert!(
        (1..=8).contains(&threads) && need <= 256,
        "{need} MiB needed with {threads} threads, the limit is 256Mi"
    );
    for k in at(&cm, "data").as_mapping().unwrap().keys() {
        let k = k.as_str().unwrap();
        assert!(
            reads.contains(k),
            "ConfigMap sets {k}, which the binary ignores"
        );
    }
}

#[test]
fn network_policies_open_exactly_what_a_backup_needs() {
    let np = yaml("k8s/base/networkpolicy.yaml");
    assert_eq!(
        s(&np, "spec.podSelector.matchLabels.[app.kubernetes.io/name]"),
        "leaflock-backup"
    );
    let egress = at(&np, "spec.egress").as_sequence().unwrap();
    let ports: BTreeSet<(String, i64)> = egress
        .iter()
        .flat_map(|r| at(r, "ports").as_sequence().unwrap().clone())
        .map(|p| (s(&p, "protocol").to_string(), i(&p, "port")))
        .collect();
    let want: BTreeSet<(String, i64)> = [
        ("TCP", 5432),
        ("UDP", 53),
        ("TCP", 53),
        ("TCP", 443),
        ("TCP", 9091),
    ]
    .iter()
    .map(|(p, n)| (p.to_string(), *n))
    .collect();
    assert_eq!(ports, want);
    let pushgateway = egress
        .iter()
        .find(|r| i(r, "ports.0.port") == 9091)
        .unwrap();
    assert_eq!(
        s(
            pushgateway,
            "to.0.namespaceSelector.matchLabels.[kubernetes.io/metadata.name]"
        ),
        "monitoring"
    );
    assert_eq!(
        at(&np, "spec.ingress").as_sequence().map(Vec::len),
        Some(0),
        "nothing connects to a backup pod"
    );

    let pg = yaml("k8s/base/postgresql-networkpolicy.yaml");
    assert_eq!(s(&pg, "spec.policyTypes.0"), "Ingress");
    assert_eq!(
        s(
            &pg,
            "spec.ingress.0.from.0.podSelector.matchLabels.[app.kubernetes.io/name]"
        ),
        "leaflock-backup"
    );
    assert_eq!(i(&pg, "spec.ingress.0.ports.0.port"), 5432);
}

// ---------------------------------------------------------------------------
// Alert rules
// ---------------------------------------------------------------------------

fn alert_names(rules: &Yaml) -> Vec<String> {
    at(rules, "groups")
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| at(g, "rules").as_sequence().unwrap().clone())
        .filter_map(|r| r.get("alert").and_then(Yaml::as_str).map(str::to_string))
        .collect()
}

fn promtool_ok(args: &[&str], dir: &Path) -> String {
    let (code, out, err) = output(Command::new(promtool()).args(args).current_dir(dir));
    assert_eq!(code, 0, "promtool {args:?}:\n{out}{err}");
    format!("{out}{err}")
}

#[test]
fn alert_rules_pass_promtool_firing_and_silent_for_every_alert() {
    let dir = path("monitoring");
    let out = promtool_ok(&["check", "rules", "alerts.yml"], &dir);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = promtool_ok(&["test", "rules", "alerts.test.yml"], &dir);
    assert!(out.contains("SUCCESS"), "{out}");

    // Each alert is shown firing at least once and silent at least once.
    let alerts = alert_names(&yaml("monitoring/alerts.yml"));
    assert_eq!(alerts.len(), 14, "{alerts:?}");
    let tests = yaml("monitoring/alerts.test.yml");
    let mut firing = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for t in at(&tests, "tests").as_sequence().unwrap() {
        for a in at(t, "alert_rule_test").as_sequence().unwrap() {
            let name = s(a, "alertname").to_string();
            if at(a, "exp_alerts").as_sequence().unwrap().is_empty() {
                silent.insert(name);
            } else {
                firing.insert(name);
            }
        }
    }
    for a in &alerts {
        assert!(firing.contains(a), "{a} is never shown firing");
        assert!(silent.contains(a), "{a} is never shown silent");
    }
}

#[test]
fn upstream_rules_stay_silent_where_this_projects_fire() {
    let dir = path("tests/promtool");
    let out = promtool_ok(&["test", "rules", "upstream-rules.test.yml"], &dir);
    assert!(out.contains("SUCCESS"), "{out}");
    let upstream = read("tests/promtool/upstream-rules.yml");
    for expr in [
        r#"max_over_time(leaflock_backups_total{status="success"}[24h]) == 0"#,
        "histogram_quantile(0.95, rate(leaflock_backup_duration_seconds_bucket[24h])) > 600",
    ] {
        assert!(upstream.contains(expr), "upstream's rule verbatim: {expr}");
    }
    let tests = yaml("tests/promtool/upstream-rules.test.yml");
    let mut silent = BTreeSet::new();
    for t in at(&tests, "tests").as_sequence().unwrap() {
        for a in at(t, "alert_rule_test").as_sequence().unwrap() {
            let name = s(a, "alertname");
            if name.starts_with("Upstream") {
                assert!(
                    at(a, "exp_alerts").as_sequence().unwrap().is_empty(),
                    "{name} is expected silent"
                );
                silent.insert(name.to_string());
            }
        }
    }
    assert_eq!(silent.len(), 2, "{silent:?}");
}

#[test]
fn prometheusrule_carries_exactly_the_alert_rules() {
    let rule = yaml("k8s/monitoring/prometheusrule.yaml");
    assert_eq!(s(&rule, "apiVersion"), "monitoring.coreos.com/v1");
    assert_eq!(s(&rule, "kind"), "PrometheusRule");
    assert_eq!(s(&rule, "metadata.name"), "leaflock-backup");
    assert_eq!(s(&rule, "metadata.namespace"), "monitoring");
    assert!(at(&rule, "metadata.labels").is_mapping());
    let spec = at(&rule, "spec").as_mapping().unwrap();
    assert_eq!(spec.len(), 1, "spec holds groups only");
    for g in at(&rule, "spec.groups").as_sequence().unwrap() {
        assert!(!s(g, "name").is_empty());
        for r in at(g, "rules").as_sequence().unwrap() {
            assert!(!s(r, "alert").is_empty());
            assert!(!s(r, "expr").trim().is_empty());
            assert!(matches!(s(r, "labels.severity"), "critical" | "warning"));
            assert!(!s(r, "annotations.summary").is_empty());
        }
    }
    assert_eq!(
        at(&rule, "spec"),
        &yaml("monitoring/alerts.yml"),
        "k8s/monitoring/prometheusrule.yaml differs from monitoring/alerts.yml: run scripts/gen-prometheusrule.sh"
    );
    let (code, out, err) = output(
        Command::new("bash")
            .arg(path("scripts/gen-prometheusrule.sh"))
            .arg("--stdout"),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        read("k8s/monitoring/prometheusrule.yaml"),
        "run scripts/gen-prometheusrule.sh"
    );
}

// ---------------------------------------------------------------------------
// Grafana dashboard
// ---------------------------------------------------------------------------

fn dashboard() -> Json {
    serde_json::from_str(&read("monitoring/grafana-dashboard.json")).expect("dashboard JSON")
}

/// The panels that read Prometheus (every one but the log panel).
fn is_log_panel(p: &Json) -> bool {
    p["type"] == "logs"
}

/// (panel title, expression) of every Prometheus target.
fn dashboard_exprs(d: &Json) -> Vec<(String, String)> {
    d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| !is_log_panel(p))
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap().to_string();
            p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |t| (title.clone(), t["expr"].as_str().unwrap().to_string()))
        })
        .collect()
}

#[test]
fn dashboard_is_well_formed_and_uses_only_pushed_metrics() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_i64().unwrap() >= 36);
    assert!(!d["title"].as_str().unwrap().is_empty());
    assert!(!d["uid"].as_str().unwrap().is_empty());
    let vars = d["templating"]["list"].as_array().unwrap();
    let ds = vars
        .iter()
        .find(|v| v["type"] == "datasource" && v["query"] == "prometheus")
        .expect("a Prometheus data source variable");
    let ds_ref = format!("${{{}}}", ds["name"].as_str().unwrap());
    let var_names: BTreeSet<&str> = vars.iter().map(|v| v["name"].as_str().unwrap()).collect();
    let panels = d["panels"].as_array().unwrap();
    assert!(panels.len() >= 6);
    let mut ids = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap();
        assert!(
            ids.insert(p["id"].as_i64().unwrap()),
            "duplicate id: {title}"
        );
        assert!(p["type"].is_string() && p["gridPos"]["w"].as_i64().unwrap() > 0);
        if is_log_panel(p) {
            continue; // checked below, with its own data source
        }
        assert_eq!(
            p["datasource"]["uid"].as_str(),
            Some(ds_ref.as_str()),
            "{title}"
        );
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no targets");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(refs.insert(t["refId"].as_str().unwrap()), "{title}");
            assert_eq!(t["datasource"]["uid"].as_str(), Some(ds_ref.as_str()));
            let expr = t["expr"].as_str().unwrap();
            for v in expr.split('$').skip(1) {
                let name: String = v
                    .trim_start_matches('{')
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    var_names.contains(name.as_str()),
                    "{title}: ${name} undefined"
                );
            }
        }
    }
    // Panels on Grafana's 24-column grid, none over another.
    let cells = |p: &Json| {
        let g = &p["gridPos"];
        let n = |k: &str| g[k].as_i64().unwrap();
        (n("x"), n("y"), n("w"), n("h"))
    };
    for (i, a) in panels.iter().enumerate() {
        let (x, y, w, h) = cells(a);
        assert!(x >= 0 && y >= 0 && h > 0 && x + w <= 24, "{}", a["title"]);
        for b in &panels[i + 1..] {
            let (x2, y2, w2, h2) = cells(b);
            let apart = x + w <= x2 || x2 + w2 <= x || y + h <= y2 || y2 + h2 <= y;
            assert!(apart, "{} overlaps {}", a["title"], b["title"]);
        }
    }
    // What the dashboard shows: last success, outcomes, duration, size, drills.
    let exprs: String = dashboard_exprs(&d).into_iter().map(|(_, e)| e).collect();
    for m in [
        "leaflock_backup_last_success_timestamp_seconds",
        "leaflock_backups_total",
        "leaflock_backup_duration_seconds_bucket",
        "leaflock_backup_size_bytes",
        "leaflock_restore_drill_last_success_timestamp_seconds",
        "leaflock_restore_drills_total",
    ] {
        assert!(exprs.contains(m), "no panel shows {m}");
    }
    // Every metric name it uses is one the runner pushes (src/metrics.rs), or the
    // Pushgateway's push_time_seconds, or Prometheus' ALERTS.
    let metrics_rs = read("src/metrics.rs");
    for word in exprs.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if let Some(base) = word.strip_prefix("leaflock_") {
            let full = format!("leaflock_{base}");
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| full.strip_suffix(s))
                .unwrap_or(&full);
            assert!(
                metrics_rs.contains(&format!("\"{family}\"")),
                "{full} is not pushed by the runner"
            );
        }
    }
}

/// The log panel, by the same panel schema as the others (Grafana and Loki are not
/// part of the test bed: the JSON is checked here, and the query by its structure): a
/// `logs` panel on a Loki data source variable of its own, reading the stream selector
/// from a variable, keeping the runner's lines (`component="backup"`) that end a unit
/// of work (they carry `latency`) or are warnings and errors.
#[test]
fn dashboard_log_panel_shows_the_summary_and_error_lines_of_component_backup() {
    let d = dashboard();
    let vars = d["templating"]["list"].as_array().unwrap();
    let var = |name: &str| vars.iter().find(|v| v["name"] == name);
    let logs: Vec<&Json> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| is_log_panel(p))
        .collect();
    assert_eq!(logs.len(), 1, "one log panel");
    let p = logs[0];
    let title = p["title"].as_str().unwrap();
    assert!(!title.is_empty() && !p["description"].as_str().unwrap().is_empty());

    // Its data source: a variable of type datasource for Loki.
    let ds_uid = p["datasource"]["uid"].as_str().unwrap();
    assert_eq!(p["datasource"]["type"], "loki", "{title}");
    let ds_name = ds_uid
        .strip_prefix("${")
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or_else(|| panic!("{title}: data source {ds_uid} is not a variable"));
    let ds = var(ds_name).unwrap_or_else(|| panic!("${ds_name} undefined"));
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "loki");

    let targets = p["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 1);
    let t = &targets[0];
    assert_eq!(t["refId"], "A");
    assert_eq!(t["datasource"]["uid"].as_str(), Some(ds_uid));
    assert_eq!(t["datasource"]["type"], "loki");
    assert_eq!(t["queryType"], "range");
    let expr = t["expr"].as_str().unwrap();

    // Every $variable it uses is defined; the stream selector's default is a LogQL
    // selector of label matchers.
    for v in expr.split('$').skip(1) {
        let name: String = v
            .trim_start_matches('{')
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        assert!(var(&name).is_some(), "{title}: ${name} undefined");
    }
    let selector_var = var("log_selector").expect("a log_selector variable");
    assert_eq!(selector_var["type"], "textbox");
    let selector = selector_var["query"].as_str().unwrap();
    assert_eq!(selector_var["current"]["value"].as_str(), Some(selector));
    let inner = selector
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or_else(|| panic!("not a stream selector: {selector}"));
    for matcher in inner.split(", ") {
        let (label, value) = ["=~", "!~", "!=", "="]
            .iter()
            .find_map(|op| matcher.split_once(op))
            .unwrap_or_else(|| panic!("not a label matcher: {matcher}"));
        assert!(
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{matcher}"
        );
        assert!(value.len() >= 2 && value.starts_with('"') && value.ends_with('"'));
    }

    // The pipeline: selector | json | the filter | a line format; quotes, braces and
    // parentheses balanced.
    let stages: Vec<&str> = expr.split(" | ").collect();
    assert_eq!(stages[0], "$log_selector", "{expr}");
    assert_eq!(stages[1], "json", "{expr}");
    let filter = stages[2];
    assert!(filter.starts_with("component=\"backup\""), "{filter}");
    assert!(filter.contains("latency!=\"\""), "summary lines: {filter}");
    assert!(
        filter.contains("level=~\"error|warn\""),
        "errors and warnings: {filter}"
    );
    assert!(stages[3].starts_with("line_format \""), "{expr}");
    assert_eq!(expr.matches('"').count() % 2, 0, "{expr}");
    for (open, close) in [('(', ')'), ('{', '}')] {
        assert_eq!(
            expr.matches(open).count(),
            expr.matches(close).count(),
            "{expr}"
        );
    }
    // The line format names only fields the runner writes.
    let logging = read("src/logging.rs");
    for field in stages[3].split("{{").skip(1) {
        let name = field
            .trim_start_matches("if ")
            .trim_start_matches('.')
            .split(|c: char| !c.is_alphanumeric() && c != '_')
            .next()
            .unwrap();
        if name.is_empty() || name == "end" {
            continue;
        }
        assert!(
            logging.contains(&format!("\"{name}\"")),
            "{name} is not a field of the runner's JSON lines"
        );
    }
    // A logs panel's options as Grafana's panel schema names them.
    let o = &p["options"];
    for key in [
        "showTime",
        "wrapLogMessage",
        "enableLogDetails",
        "sortOrder",
        "dedupStrategy",
    ] {
        assert!(!o[key].is_null(), "{title}: options.{key}");
    }
    assert_eq!(o["sortOrder"], "Descending");
}

// ---------------------------------------------------------------------------
// Prometheus end to end
// ---------------------------------------------------------------------------

struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        kill(self.child.id(), libc::SIGTERM);
        let _ = self.child.wait();
    }
}

/// A real Prometheus on a free loopback port, scraping the test bed's Pushgateway
/// every second with `honor_labels: true`, evaluating monitoring/alerts.yml.
fn start_prometheus() -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let pushgateway = testbed().pushgateway();
    let target = pushgateway
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - {}\n\
         scrape_configs:\n  - job_name: pushgateway\n    honor_labels: true\n    \
         static_configs:\n      - targets: ['{target}']\n",
        path("monitoring/alerts.yml").display()
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let port = closed_port();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let child = Command::new(testbed_tool(
        "LEAFLOCK_TEST_PROMETHEUS",
        "/usr/bin/prometheus",
    ))
    .arg(format!(
        "--config.file={}",
        dir.path().join("prometheus.yml").display()
    ))
    .arg(format!(
        "--storage.tsdb.path={}",
        dir.path().join("data").display()
    ))
    .arg(format!("--web.listen-address=127.0.0.1:{port}"))
    .stdin(Stdio::null())
    .stdout(log.try_clone().unwrap())
    .stderr(log)
    .spawn()
    .expect("prometheus starts");
    let p = Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    let ready = format!("{}/-/ready", p.url);
    wait_for(Duration::from_secs(30), "Prometheus to be ready", || {
        rt().block_on(async {
            reqwest::get(&ready)
                .await
                .ok()?
                .status()
                .is_success()
                .then_some(())
        })
    });
    p
}

impl Prometheus {
    /// GET an API path with query parameters: (HTTP status, JSON body).
    fn api(&self, api: &str, params: &[(&str, &str)]) -> (u16, Json) {
        let mut url = url::Url::parse(&format!("{}{api}", self.url)).unwrap();
        url.query_pairs_mut().extend_pairs(params);
        rt().block_on(async {
            let resp = reqwest::get(url.as_str())
                .await
                .expect("Prometheus answers");
            let status = resp.status().as_u16();
            (status, resp.json().await.expect("JSON"))
        })
    }

    fn query(&self, expr: &str) -> (u16, Json) {
        self.api("/api/v1/query", &[("query", expr)])
    }

    /// The single value of an instant query, once it has one.
    fn value(&self, expr: &str) -> Option<f64> {
        let (status, body) = self.query(expr);
        assert_eq!(status, 200, "{expr}: {body}");
        let result = body["data"]["result"].as_array()?;
        if result.len() != 1 {
            return None;
        }
        result[0]["value"][1].as_str()?.parse().ok()
    }

    fn wait_value(&self, expr: &str, want: f64) {
        let mut last = None;
        let found = (0..200).any(|_| {
            last = self.value(expr);
            if last == Some(want) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
            false
        });
        assert!(found, "{expr}: expected {want}, last {last:?}");
    }
}

#[test]
fn prometheus_scrapes_real_runs_and_alerts_and_dashboard_work_on_them() {
    let name = unique("promdeploy");
    let db = TestDb::leaflock(Pg::V15, &name, 1);
    let url = db.url.clone();
    let schedule = s(&yaml("k8s/base/cronjob.yaml"), "spec.schedule").to_string();
    // A prefix per run: keys have one-second resolution, and two runs in the same
    // second would collide (the second refuses to overwrite).
    let backup = || {
        let mut cmd = s3_run(&url, &unique("promdeploy"), &name);
        cmd.env("PATH", Pg::V15.path_env())
            .env("LEAFLOCK_BACKUP_SCHEDULE", &schedule);
        cmd
    };
    run(backup()).expect_code(0);
    run(backup()).expect_code(0);

    let prom = start_prometheus();
    let sel = format!("job=\"leaflock-backup\",database=\"{name}\"");
    prom.wait_value(
        &format!("leaflock_backups_total{{{sel},status=\"success\"}}"),
        2.0,
    );
    prom.wait_value(
        &format!("leaflock_backups_total{{{sel},status=\"failure\"}}"),
        0.0,
    );
    prom.wait_value(
        &format!("leaflock_backup_duration_seconds_count{{{sel}}}"),
        2.0,
    );
    prom.wait_value(
        &format!("leaflock_backup_duration_seconds_bucket{{{sel},le=\"+Inf\"}}"),
        2.0,
    );
    prom.wait_value(
        &format!("leaflock_backup_duration_seconds_bucket{{{sel},le=\"7200\"}}"),
        2.0,
    );
    prom.wait_value(
        &format!(
            "leaflock_backup_next_run_timestamp_seconds{{{sel}}} > bool time() \
             and leaflock_backup_next_run_timestamp_seconds{{{sel}}} < bool time() + 86400 + 60"
        ),
        1.0,
    );

    // The shipped rules load and evaluate.
    let rules_ok = wait_for(
        Duration::from_secs(30),
        "the alert rules to evaluate",
        || {
            let (_, body) = prom.api("/api/v1/rules", &[]);
            let rules: Vec<Json> = body["data"]["groups"]
                .as_array()?
                .iter()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            (rules.len() == 14 && rules.iter().all(|r| r["health"] == "ok")).then_some(rules)
        },
    );
    assert_eq!(rules_ok.len(), 14);
    // Healthy runs: no alert for this database.
    prom.wait_value(
        &format!("count(ALERTS{{database=\"{name}\"}}) or vector(0)"),
        0.0,
    );

    // Every dashboard expression parses and evaluates; the backup panels have data.
    let d = dashboard();
    for (title, expr) in dashboard_exprs(&d) {
        let q = expr
            .replace("$database", &name)
            .replace("$job", "leaflock-backup");
        let (status, body) = prom.query(&q);
        assert_eq!(status, 200, "{title}: {q}: {body}");
        assert_eq!(body["status"], "success", "{title}: {body}");
        let needs_data = !q.contains("restore_drill") && !q.contains("ALERTS");
        if needs_data {
            // Range functions need a second scrape.
            wait_for(Duration::from_secs(15), &format!("data for {q}"), || {
                let (_, body) = prom.query(&q);
                (body["data"]["result"].as_array().map_or(0, Vec::len) > 0).then_some(())
            });
        }
    }
    // The same check refuses a broken expression (400 bad_data).
    let (status, body) = prom.query("sum(leaflock_backups_total{");
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errorType"], "bad_data");

    // A failing run: pushed, and the alert fires in this Prometheus.
    let mut bad = backup();
    bad.env("LEAFLOCK_BACKUP_S3_SECRET_KEY", "wrong-secret")
        .env("LEAFLOCK_BACKUP_S3_MAX_ATTEMPTS", "1");
    run(bad).expect_code(1);
    prom.wait_value(
        &format!("leaflock_backups_total{{{sel},status=\"failure\"}}"),
        1.0,
    );
    prom.wait_value(
        &format!("leaflock_backup_duration_seconds_count{{{sel}}}"),
        3.0,
    );
    prom.wait_value(
        &format!(
            "ALERTS{{alertname=\"LeafLockBackupLastRunFailed\",alertstate=\"firing\",database=\"{name}\"}}"
        ),
        1.0,
    );
    drop(prom);
}

// ---------------------------------------------------------------------------
// Image
// ---------------------------------------------------------------------------

#[test]
fn dockerfile_builds_this_binary_and_runs_it_as_non_root_without_a_shell() {
    let text = read("Dockerfile");
    // Instructions, with continuation lines joined.
    let joined = text.replace("\\\n", " ");
    let lines: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let stages: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("FROM "))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(stages.len(), 2, "builder and runtime stages");
    let builder = &lines[stages[0]..stages[1]];
    let runtime = &lines[stages[1]..];
    assert!(
        builder[0].contains("rust:")
            && builder[0].contains("bookworm")
            && builder[0].ends_with(" AS builder")
    );
    assert!(
        runtime[0].starts_with("FROM debian:bookworm"),
        "{}",
        runtime[0]
    );

    // The builder's output path is what the runtime copies.
    let package = read("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("name = "))
        .unwrap()
        .trim_matches('"')
        .to_string();
    let build = builder
        .iter()
        .find(|l| l.starts_with("RUN ") && l.contains("cargo build --release"))
        .expect("a release build");
    let built = format!("target/release/{package}");
    let (_, after) = build
        .split_once(&built)
        .unwrap_or_else(|| panic!("{build} installs {built}"));
    let out_path = after.split_whitespace().next().unwrap();
    let copy = runtime
        .iter()
        .find(|l| l.starts_with("COPY --from=builder "))
        .expect("COPY --from=builder");
    let parts: Vec<&str> = copy.split_whitespace().collect();
    assert_eq!(parts[2], out_path, "copies what the builder installed");
    let installed = parts[3];
    let entry = runtime
        .iter()
        .find(|l| l.starts_with("ENTRYPOINT "))
        .expect("ENTRYPOINT");
    let entry: Vec<String> =
        serde_json::from_str(entry.trim_start_matches("ENTRYPOINT ")).expect("exec form");
    assert_eq!(
        entry,
        [installed],
        "ENTRYPOINT is the binary itself, no shell"
    );

    // Build context: what the builder copies exists and is not ignored.
    let ignore = read(".dockerignore");
    for l in builder.iter().filter(|l| l.starts_with("COPY ")) {
        let words: Vec<&str> = l.split_whitespace().collect();
        for src in &words[1..words.len() - 1] {
            assert!(path(src).exists(), "{src} is not in the repository");
            assert!(
                ignore.contains(&format!("!{src}")),
                "{src} is excluded by .dockerignore"
            );
        }
    }

    // Non-root, numeric (Kubernetes' runAsNonRoot can only check a number).
    let user = runtime
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER");
    let (uid, gid) = user.split_once(':').unwrap_or((user, user));
    assert_eq!((uid, gid), ("1000", "1000"));

    // pg_dump/pg_restore 18 from the PGDG repository, first on PATH.
    assert!(joined.contains("ARG PG_MAJOR=18"));
    assert!(joined.contains("postgresql-client-${PG_MAJOR}"));
    assert!(joined.contains("bookworm-pgdg main"));
    assert!(joined.contains("ENV PATH=/usr/lib/postgresql/${PG_MAJOR}/bin:"));
    assert!(!joined.contains("SHELL "));
}

// ---------------------------------------------------------------------------
// README and docs/deployment.md (the README links to the compose service there)
// ---------------------------------------------------------------------------

#[test]
fn readme_compose_service_is_valid_and_uses_the_image_as_shipped() {
    let readme = read("README.md");
    assert!(
        readme.contains("docs/deployment.md#docker-compose"),
        "the README links to the compose service"
    );
    let deployment = read("docs/deployment.md");
    let section = deployment
        .split("\n## docker-compose\n")
        .nth(1)
        .expect("a docker-compose section");
    let block = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("a yaml block");
    let doc: Yaml = serde_yaml::from_str(block).expect("the compose snippet is YAML");
    let svc = at(&doc, "services.backup");
    assert!(svc.is_mapping(), "a `backup` service");
    assert_eq!(s(svc, "user"), "1000:1000");
    let env = at(svc, "environment").as_mapping().expect("environment");
    let reads = variables_the_binary_reads();
    for k in env.keys() {
        let k = k.as_str().unwrap();
        assert!(
            reads.contains(k),
            "compose sets {k}, which the binary ignores"
        );
    }
    // It runs the schedule mode, and that mode accepts the snippet's schedule.
    assert_eq!(
        at(svc, "command").as_sequence().expect("a command list")[0],
        Yaml::from("schedule")
    );
    let schedule = s(at(svc, "environment"), "LEAFLOCK_BACKUP_SCHEDULE");
    let out = std::process::Command::new(bin())
        .args(["next-run", "--schedule", schedule])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{schedule}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        deployment.contains("exposure"),
        "docs/deployment.md gives the exposure score"
    );
}

// ---------------------------------------------------------------------------
// node_exporter's textfile collector
// ---------------------------------------------------------------------------

/// Three runs with `--metrics-textfile` (no Pushgateway): the file holds counters of 3
/// and a histogram count of 3, is replaced atomically (no temporary file left, a new
/// inode each time), passes `promtool check metrics`, and the alert rules fire on its
/// series unchanged once they carry the scrape's labels (job="node", instance).
#[test]
fn textfile_metrics_accumulate_atomically_and_the_alerts_work_on_them() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let db = TestDb::leaflock(Pg::V15, &unique("textfile"), 1);
    let dir = tempfile::tempdir().unwrap();
    let backups = tempfile::tempdir().unwrap();
    let file = dir.path().join("leaflock_notes.prom");
    let mut inodes = BTreeSet::new();
    for _ in 0..3 {
        let mut cmd = runner();
        cmd.args([
            "run",
            "--database-url",
            &db.url,
            "--metrics-database",
            "notes",
        ])
        .arg("--local-dir")
        .arg(backups.path())
        .arg("--metrics-textfile")
        .arg(&file)
        .env_remove("LEAFLOCK_BACKUP_PUSHGATEWAY_URL");
        let r = run(cmd);
        r.expect_code(0);
        assert!(
            r.line("metrics written for node_exporter's textfile collector")
                .is_some(),
            "{}",
            r.stderr
        );
        inodes.insert(std::fs::metadata(&file).unwrap().ino());
    }
    assert_eq!(
        inodes.len(),
        3,
        "replaced by a rename each run, never rewritten in place"
    );
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(names, ["leaflock_notes.prom"], "no temporary file left");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "node_exporter can read it");
    let text = std::fs::read_to_string(&file).unwrap();
    for want in [
        r#"leaflock_backups_total{database="notes",status="success"} 3"#,
        r#"leaflock_backups_total{database="notes",status="failure"} 0"#,
        r#"leaflock_backup_duration_seconds_count{database="notes"} 3"#,
    ] {
        assert!(text.lines().any(|l| l == want), "{want} in:\n{text}");
    }
    let (code, out, err) = output(
        Command::new(promtool())
            .args(["check", "metrics"])
            .stdin(std::fs::File::open(&file).unwrap()),
    );
    assert_eq!(code, 0, "promtool check metrics:\n{out}{err}");

    // The file's series as node_exporter serves them (the scrape adds job and
    // instance), times moved so the last run finished at 1 h: the missing-success alert
    // fires 26 h after it, with the file's database label, and nothing says failed.
    let mut last_run = 0.0;
    let mut samples = Vec::new();
    for l in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = l.rsplit_once(' ').unwrap();
        let value: f64 = value.parse().unwrap();
        if series.starts_with("leaflock_backup_last_run_timestamp_seconds") {
            last_run = value;
        }
        samples.push((series.to_string(), value));
    }
    assert!(last_run > 0.0, "{text}");
    let mut series_yaml = String::new();
    for (series, value) in &samples {
        let value = if series.contains("_timestamp_seconds") {
            value - last_run + 3600.0
        } else {
            *value
        };
        let with_scrape = series.replacen('{', r#"{job="node",instance="host:9100","#, 1);
        series_yaml.push_str(&format!(
            "      - series: '{with_scrape}'\n        values: '{value}x40'\n"
        ));
    }
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::copy(path("monitoring/alerts.yml"), rules.join("alerts.yml")).unwrap();
    std::fs::write(
        rules.join("textfile.test.yml"),
        format!(
            "rule_files:\n  - alerts.yml\nevaluation_interval: 5m\ntests:\n  - interval: 1h\n    input_series:\n{series_yaml}    alert_rule_test:\n\
             \x20     - eval_time: 26h\n        alertname: LeafLockBackupNoRecentSuccess\n        exp_alerts: []\n\
             \x20     - eval_time: 28h\n        alertname: LeafLockBackupNoRecentSuccess\n        exp_alerts:\n\
             \x20         - exp_labels: {{severity: critical, job: node, instance: 'host:9100', database: notes}}\n\
             \x20           exp_annotations: {{summary: 'No successful LeafLock backup of notes for more than 26 h', description: 'The last successful backup finished more than 26 hours ago.'}}\n\
             \x20     - eval_time: 28h\n        alertname: LeafLockBackupFailed\n        exp_alerts: []\n"
        ),
    )
    .unwrap();
    promtool_ok(&["test", "rules", "textfile.test.yml"], &rules);
}

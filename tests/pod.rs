//! The pod's contract, enforced: the CronJobs rendered by `kubectl kustomize` (the base
//! and the restore-drill overlay) are run the way the kubelet would run them, on the
//! image's layout (a Debian bookworm root, the binary at /usr/local/bin, the
//! PostgreSQL 18 client at /usr/lib/postgresql/18/bin first on PATH, the CA
//! certificates, as the Dockerfile builds it):
//! the container's args, the ConfigMap through envFrom, the Secret's keys (test
//! values), as UID/GID 1000 with the root filesystem read-only, only /tmp writable (a
//! tmpfs of the emptyDir's sizeLimit), and a memory cgroup limited to the manifest's
//! `limits.memory`. Only the servers' addresses are changed; threads, part size, parts
//! in flight and compression are the shipped ones.
//!
//! The database is 256 MiB by default (LEAFLOCK_TEST_POD_DB_MB; 1024 for the 1 GiB
//! run): enough for the S3 writer to hold all its parts in flight, so the run reaches
//! the memory the settings allow; memory is bounded by the settings, not by the
//! database's size. LEAFLOCK_TEST_POD_MEMORY_MIB replaces the limit, to measure. The
//! peaks printed come from the cgroup and from each process's resident set, sampled.
//! Skips (saying why) when not root, without kubectl, or without the prepared root of
//! `scripts/testbed.sh install`.
//!
//! What it found: with the example Secret's `encryption-key`, `run` encrypts with it as
//! an age passphrase, and age's scrypt, calibrated to one second of CPU, took 512 MiB
//! here: the pod was OOM-killed before its first log line. The work factor is now fixed
//! (`crypto::PASSPHRASE_WORK_FACTOR`, 64 MiB).

mod common;

use common::machine::{sh_output, skip_reason, RootCopy};
use common::*;
use serde_yaml::Value as Yaml;
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Instant;

fn render(dir: &str) -> Vec<Yaml> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(repo_root().join(dir))
        .output()
        .unwrap();
    assert!(out.status.success(), "kubectl kustomize {dir}");
    serde_yaml::Deserializer::from_str(&String::from_utf8_lossy(&out.stdout))
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Yaml| !v.is_null())
        .collect()
}

fn quantity(q: &str) -> u64 {
    let (n, mult) = if let Some(n) = q.strip_suffix("Mi") {
        (n, 1 << 20)
    } else if let Some(n) = q.strip_suffix("Gi") {
        (n, 1 << 30)
    } else {
        panic!("unexpected quantity {q:?}")
    };
    n.parse::<u64>().unwrap() * mult
}

/// What the kubelet would give the container of `cj`.
struct Pod {
    args: Vec<String>,
    env: BTreeMap<String, String>,
    /// Files of the Secret volumes: (absolute path, content, mode); group `gid` (fsGroup).
    files: Vec<(String, String, u32)>,
    memory_limit: u64,
    tmp_size: u64,
    uid: i64,
    gid: i64,
    read_only_root: bool,
}

fn pod_of(cj: &Yaml, docs: &[Yaml], secret: &BTreeMap<String, String>) -> Pod {
    let spec = &cj["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    let mut env = BTreeMap::new();
    for from in c["envFrom"].as_sequence().unwrap() {
        let name = from["configMapRef"]["name"].as_str().unwrap();
        let cm = docs
            .iter()
            .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("ConfigMap {name} not rendered"));
        for (k, v) in cm["data"].as_mapping().unwrap() {
            env.insert(
                k.as_str().unwrap().to_string(),
                v.as_str().unwrap().to_string(),
            );
        }
    }
    for e in c["env"].as_sequence().unwrap() {
        let name = e["name"].as_str().unwrap().to_string();
        if let Some(v) = e["value"].as_str() {
            env.insert(name, v.to_string());
        } else {
            let key = e["valueFrom"]["secretKeyRef"]["key"].as_str().unwrap();
            let v = secret
                .get(key)
                .unwrap_or_else(|| panic!("Secret key {key} is not in secret.example.yaml"));
            env.insert(name, v.clone());
        }
    }
    let volumes = spec["volumes"].as_sequence().unwrap();
    let mut files = Vec::new();
    for m in c["volumeMounts"].as_sequence().unwrap() {
        let vol = volumes.iter().find(|v| v["name"] == m["name"]).unwrap();
        let Some(items) = vol["secret"]["items"].as_sequence() else {
            continue;
        };
        let mode = vol["secret"]["defaultMode"].as_u64().unwrap_or(0o644) as u32;
        for item in items {
            let key = item["key"].as_str().unwrap();
            let v = secret
                .get(key)
                .unwrap_or_else(|| panic!("Secret key {key} is not in secret.example.yaml"));
            files.push((
                format!(
                    "{}/{}",
                    m["mountPath"].as_str().unwrap(),
                    item["path"].as_str().unwrap()
                ),
                v.clone(),
                mode,
            ));
        }
    }
    let vol = volumes.iter().find(|v| v["name"] == "tmp").unwrap();
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/tmp");
    Pod {
        args: c["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect(),
        env,
        files,
        memory_limit: quantity(c["resources"]["limits"]["memory"].as_str().unwrap()),
        tmp_size: quantity(vol["emptyDir"]["sizeLimit"].as_str().unwrap()),
        uid: c["securityContext"]["runAsUser"].as_i64().unwrap(),
        gid: c["securityContext"]["runAsGroup"].as_i64().unwrap(),
        read_only_root: c["securityContext"]["readOnlyRootFilesystem"]
            .as_bool()
            .unwrap(),
    }
}

/// The image's layout in a private copy of the prepared root.
fn image_root() -> RootCopy {
    let root = RootCopy::new("pod");
    root.install_pg18_client();
    std::fs::create_dir_all(root.at("usr/local/bin")).unwrap();
    std::fs::copy(bin(), root.at("usr/local/bin/leaflock-backup")).unwrap();
    // The image installs ca-certificates (the Dockerfile keeps them).
    std::fs::create_dir_all(root.at("etc/ssl/certs")).unwrap();
    std::fs::copy(
        "/etc/ssl/certs/ca-certificates.crt",
        root.at("etc/ssl/certs/ca-certificates.crt"),
    )
    .expect("the host's CA bundle (ca-certificates)");
    root
}

struct Outcome {
    code: i32,
    log: String,
    peak: u64,
    cache: u64,
    oom_kills: u64,
}

/// Run `pod` in `root` under a memory cgroup of `memory_limit` bytes.
fn run_pod(root: &RootCopy, pod: &Pod, memory_limit: u64) -> Outcome {
    let cg = std::path::PathBuf::from("/sys/fs/cgroup/memory").join(unique("leaflock-pod"));
    std::fs::create_dir(&cg).expect("a memory cgroup (cgroup v1 memory controller)");
    std::fs::write(cg.join("memory.limit_in_bytes"), memory_limit.to_string()).unwrap();
    // The Secret volumes' files, owned by root and the pod's group, as the kubelet
    // writes them.
    for (path, content, mode) in &pod.files {
        use std::os::unix::fs::PermissionsExt;
        // /var/run is a symbolic link to /run in the image (Debian): resolve it inside
        // the root, never through the host's /run.
        let path = match path.strip_prefix("/var/run/") {
            Some(rest) => format!("/run/{rest}"),
            None => path.clone(),
        };
        let p = root.at(&path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
        std::os::unix::fs::chown(&p, Some(0), Some(pod.gid as u32)).unwrap();
    }
    let r = root.path.display();
    // In a private mount namespace: the root read-only, /tmp a tmpfs of the emptyDir's
    // size, /proc and /dev; then chroot as UID:GID with no new privileges.
    let script = format!(
        "set -e; echo $$ > {cg}/cgroup.procs; \
         mount --bind {r} {r}; mount -t proc proc {r}/proc; \
         mount --rbind /dev {r}/dev; \
         mount -t tmpfs -o size={tmp},mode=1777 tmpfs {r}/tmp; \
         {ro} \
         exec setpriv --no-new-privs chroot --userspec={uid}:{gid} --groups={gid} {r} \
         /usr/local/bin/leaflock-backup {args}",
        cg = cg.display(),
        tmp = pod.tmp_size,
        ro = if pod.read_only_root {
            format!("mount -o remount,bind,ro {r};")
        } else {
            String::new()
        },
        uid = pod.uid,
        gid = pod.gid,
        args = pod.args.join(" "),
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--pid", "--fork"])
        .args(["sh", "-c", &script])
        .env_clear()
        // The image's environment (Dockerfile ENV), then the pod's.
        .env(
            "PATH",
            "/usr/lib/postgresql/18/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", "/")
        .env("LEAFLOCK_BACKUP_LOG_FORMAT", "json")
        .envs(&pod.env)
        .stdin(Stdio::null());
    // memory.stat sampled while the pod runs: the peak of the processes' own memory
    // (rss) and of what else was charged (page cache, tmpfs), which the cgroup's single
    // peak figure lumps together.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (cg, done) = (cg.clone(), done.clone());
        std::thread::spawn(move || {
            let mut peak = std::collections::BTreeMap::<String, u64>::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(stat) = std::fs::read_to_string(cg.join("memory.stat")) {
                    for l in stat.lines() {
                        if let Some((k, v)) = l.split_once(' ') {
                            if [
                                "total_rss",
                                "total_cache",
                                "total_shmem",
                                "total_mapped_file",
                            ]
                            .contains(&k)
                            {
                                let v: u64 = v.parse().unwrap_or(0);
                                let e = peak.entry(k.to_string()).or_default();
                                *e = (*e).max(v);
                            }
                        }
                    }
                }
                // And each process's own resident set, by command name.
                if let Ok(procs) = std::fs::read_to_string(cg.join("cgroup.procs")) {
                    for pid in procs.lines() {
                        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
                            .unwrap_or_default();
                        let field = |name: &str| {
                            status
                                .lines()
                                .find_map(|l| l.strip_prefix(name))
                                .map(|v| v.trim().to_string())
                        };
                        if let (Some(comm), Some(rss)) = (field("Name:"), field("VmRSS:")) {
                            let kb: u64 = rss.trim_end_matches(" kB").trim().parse().unwrap_or(0);
                            let e = peak.entry(format!("rss of {comm}")).or_default();
                            *e = (*e).max(kb << 10);
                        }
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            peak
        })
    };
    let (code, out, err) = sh_output(cmd.output().unwrap());
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let sampled = sampler.join().unwrap();
    eprintln!(
        "pod memory peaks (MiB): {}",
        sampled
            .iter()
            .map(|(k, v)| format!("{k} {:.0}", *v as f64 / (1 << 20) as f64))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let peak: u64 = std::fs::read_to_string(cg.join("memory.max_usage_in_bytes"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let oom_kills = std::fs::read_to_string(cg.join("memory.oom_control"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("oom_kill ")
                .map(|n| n.trim().parse().unwrap())
        })
        .unwrap_or(0);
    // Page cache charged to the cgroup and still held after the exit (the binary's
    // and pg_dump's files): what of the peak was not the processes' own memory.
    let cache: u64 = std::fs::read_to_string(cg.join("memory.stat"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("total_cache ")
                .map(|n| n.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let _ = std::fs::remove_dir(&cg);
    Outcome {
        code,
        log: format!("{out}{err}"),
        peak,
        cache,
        oom_kills,
    }
}

#[test]
fn cronjobs_run_as_the_kubelet_would_within_their_limits() {
    if let Some(why) = skip_reason(&["kubectl", "unshare", "setpriv"]) {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let size_mb: u32 = std::env::var("LEAFLOCK_TEST_POD_DB_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let secret_doc: Yaml = serde_yaml::from_str(
        &std::fs::read_to_string(repo_root().join("k8s/secret.example.yaml")).unwrap(),
    )
    .unwrap();
    let tb = testbed();
    let db = unique("pod");
    let t_db = Instant::now();
    let source = TestDb::leaflock(Pg::V18, &db, size_mb);
    let generated = t_db.elapsed();
    let prefix = format!("{}/", unique("pod"));
    let group = unique("pod_metrics");
    // The Secret's keys, with the test servers' values.
    let mut secret = BTreeMap::new();
    for (k, _) in secret_doc["stringData"].as_mapping().unwrap() {
        let k = k.as_str().unwrap().to_string();
        let v = match k.as_str() {
            "s3-bucket" => tb.bucket(),
            "s3-access-key" => tb.var("LEAFLOCK_TEST_S3_ACCESS_KEY"),
            "s3-secret-key" => tb.var("LEAFLOCK_TEST_S3_SECRET_KEY"),
            "database-password" => tb.pg_password(),
            "drill-database-url" => format!("{}?sslmode=disable", Pg::V18.admin_url()),
            "signing-key" => {
                let dir = tempfile::tempdir().unwrap();
                let key = dir.path().join("signing.key");
                let status = Command::new(bin())
                    .arg("keygen")
                    .arg("--out")
                    .arg(&key)
                    .status()
                    .unwrap();
                assert!(status.success(), "keygen");
                std::fs::read_to_string(&key).unwrap()
            }
            _ => "CHANGE-ME".to_string(),
        };
        secret.insert(k, v);
    }
    let pg = url::Url::parse(&Pg::V18.admin_url()).unwrap();
    let root = image_root();
    // The third pod is `check`, as docs/deployment.md starts it: the backup CronJob's
    // Job with its args replaced (`kubectl create job --from=cronjob/...`, patched).
    for (dir, job, args) in [
        ("k8s", "leaflock-backup", None),
        (
            "k8s/overlays/restore-drill",
            "leaflock-backup-restore-drill",
            None,
        ),
        ("k8s", "leaflock-backup", Some("check")),
    ] {
        let docs = render(dir);
        let cj = docs
            .iter()
            .find(|d| d["kind"] == "CronJob" && d["metadata"]["name"] == job)
            .unwrap_or_else(|| panic!("{dir}: no CronJob {job}"));
        let mut pod = pod_of(cj, &docs, &secret);
        if let Some(a) = args {
            assert_eq!(
                pod.args,
                ["run"],
                "the CronJob's args, which the check replaces"
            );
            pod.args = vec![a.to_string()];
        }
        // Only the addresses change.
        for (k, v) in [
            ("POSTGRESQL_HOST", pg.host_str().unwrap().to_string()),
            ("POSTGRESQL_PORT", pg.port().unwrap().to_string()),
            ("POSTGRESQL_USER", pg.username().to_string()),
            ("POSTGRESQL_DATABASE", db.clone()),
            ("POSTGRESQL_SSLMODE", "disable".to_string()),
            ("LEAFLOCK_BACKUP_S3_ENDPOINT", tb.s3_endpoint()),
            (
                "LEAFLOCK_BACKUP_S3_REGION",
                tb.var("LEAFLOCK_TEST_S3_REGION"),
            ),
            ("LEAFLOCK_BACKUP_S3_PREFIX", prefix.clone()),
            ("LEAFLOCK_BACKUP_PUSHGATEWAY_URL", tb.pushgateway()),
            ("LEAFLOCK_BACKUP_METRICS_DATABASE", group.clone()),
        ] {
            pod.env.insert(k.to_string(), v);
        }
        let t = Instant::now();
        let limit = std::env::var("LEAFLOCK_TEST_POD_MEMORY_MIB")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(|m| m << 20)
            .unwrap_or(pod.memory_limit);
        let out = run_pod(&root, &pod, limit);
        eprintln!(
            "pod {job} ({size_mb} MiB database): exit {}, {:.1} s, peak memory {:.0} MiB of {} MiB (page cache at the end {:.0} MiB), /tmp {} MiB",
            out.code,
            t.elapsed().as_secs_f64(),
            out.peak as f64 / (1 << 20) as f64,
            limit >> 20,
            out.cache as f64 / (1 << 20) as f64,
            pod.tmp_size >> 20
        );
        assert_eq!(
            (out.code, out.oom_kills),
            (0, 0),
            "{job} under its pod's limits (exit, OOM kills):\n{}",
            out.log
        );
        assert!(out.peak <= pod.memory_limit);
        if args == Some("check") {
            for what in [
                "✓ database",
                "✓ privileges",
                "✓ permissions",
                "✓ pushgateway",
            ] {
                assert!(out.log.contains(what), "no {what:?} line:\n{}", out.log);
            }
            assert!(!out.log.contains('✗'), "{}", out.log);
        }
    }
    let manifests = s3_keys(&prefix)
        .into_iter()
        .filter(|k| k.ends_with(".manifest.json"))
        .count();
    assert_eq!(manifests, 2, "a backup from each CronJob");
    assert!(
        s3_keys(&prefix)
            .iter()
            .all(|k| !k.contains("leaflock_check_")),
        "the check left a probe object"
    );
    let pushed = pushed_metrics(&group);
    assert_eq!(
        pushed.get("leaflock_restore_drills_total{status=\"success\"}"),
        Some(&1.0),
        "{pushed:?}"
    );

    // The limit is real: the same pod under a quarter of its limit is OOM-killed.
    let docs = render("k8s");
    let cj = docs.iter().find(|d| d["kind"] == "CronJob").unwrap();
    let mut pod = pod_of(cj, &docs, &secret);
    pod.env.insert("POSTGRESQL_HOST".into(), "127.0.0.1".into());
    pod.env
        .insert("POSTGRESQL_PORT".into(), pg.port().unwrap().to_string());
    pod.env.insert("POSTGRESQL_USER".into(), "postgres".into());
    pod.env.insert("POSTGRESQL_DATABASE".into(), db.clone());
    pod.env
        .insert("POSTGRESQL_SSLMODE".into(), "disable".into());
    pod.env
        .insert("LEAFLOCK_BACKUP_S3_ENDPOINT".into(), tb.s3_endpoint());
    pod.env
        .insert("LEAFLOCK_BACKUP_S3_PREFIX".into(), prefix.clone());
    pod.env
        .insert("LEAFLOCK_BACKUP_METRICS_DATABASE".into(), group.clone());
    pod.env.remove("LEAFLOCK_BACKUP_PUSHGATEWAY_URL");
    let out = run_pod(&root, &pod, pod.memory_limit / 8);
    assert!(
        out.code != 0 && out.oom_kills > 0,
        "under {} MiB the run must be OOM-killed (exit {}, {} OOM kills):\n{}",
        (pod.memory_limit / 8) >> 20,
        out.code,
        out.oom_kills,
        out.log
    );
    drop(root);
    source.drop_now();
    eprintln!(
        "pod test: {size_mb} MiB database generated in {:.1} s",
        generated.as_secs_f64()
    );
}

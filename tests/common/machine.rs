//! A minimal Debian root (`scripts/systemd-root.sh`, prepared by `scripts/testbed.sh
//! install`), copied per test: booted with systemd as PID 1 under `systemd-nspawn`
//! (tests/systemd.rs), or used as the image's root filesystem (tests/pod.rs).
//! `skip_reason` says why a machine cannot run these tests.

use super::*;
use std::process::{Child, Output};

pub fn testbed_dir() -> PathBuf {
    PathBuf::from(
        testbed()
            .var_opt("LEAFLOCK_TESTBED_DIR")
            .unwrap_or_else(|| "/tmp/leaflock-testbed".into()),
    )
}

pub fn prepared_root() -> PathBuf {
    testbed_dir().join("systemd-root")
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Why these tests cannot run here (None: they can). Everything they need is
/// installed by `scripts/testbed.sh install`, which needs root.
pub fn skip_reason(tools: &[&str]) -> Option<String> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return Some("not root (namespaces, cgroups and systemd-nspawn need root)".into());
    }
    for t in tools {
        if !on_path(t) {
            return Some(format!("{t} not found: run `scripts/testbed.sh install`"));
        }
    }
    if !prepared_root().join(".leaflock-stamp").is_file() {
        return Some(format!(
            "{} is not prepared: run `scripts/testbed.sh install`",
            prepared_root().display()
        ));
    }
    None
}

pub fn sh_output(out: Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A private copy of the prepared root, removed on drop (after unmounting anything
/// left below it).
pub struct RootCopy {
    pub path: PathBuf,
}

impl RootCopy {
    pub fn new(name: &str) -> RootCopy {
        let dir = testbed_dir().join("machines");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(unique(name));
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/systemd-root.sh"))
            .arg("copy")
            .arg(&path)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let (code, _, err) = sh_output(out);
        assert_eq!(code, 0, "copying the root failed: {err}");
        RootCopy { path }
    }

    /// `rel` inside the root.
    pub fn at(&self, rel: &str) -> PathBuf {
        self.path.join(rel.trim_start_matches('/'))
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.at(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
    }

    /// The test bed's PostgreSQL 18 client and server tools at
    /// /usr/lib/postgresql/18, where Debian's postgresql-client-18 puts them.
    pub fn install_pg18_client(&self) {
        let dest = self.at("usr/lib/postgresql/18");
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let src = Pg::V18.bin_dir().parent().unwrap().to_path_buf();
        let st = Command::new("cp")
            .arg("-a")
            .arg(&src)
            .arg(&dest)
            .status()
            .unwrap();
        assert!(st.success(), "copying {} failed", src.display());
    }
}

impl Drop for RootCopy {
    fn drop(&mut self) {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let prefix = format!("{}/", self.path.display());
        let mut under: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .filter(|m| format!("{m}/").starts_with(&prefix))
            .collect();
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in under {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
        let _ = Command::new("rm")
            .args(["-rf", "--one-file-system"])
            .arg(&self.path)
            .status();
    }
}

/// A root booted with systemd as PID 1 in `systemd-nspawn`; commands run inside it
/// through `nsenter` into PID 1's namespaces. Dropping it powers the machine off.
pub struct Machine {
    nspawn: Child,
    pub init: u32,
    pub root: RootCopy,
    log: PathBuf,
}

impl Machine {
    pub fn boot(root: RootCopy) -> Machine {
        // D-Bus cannot start in this container (no inotify, no fd limit) and nothing
        // here needs it: systemctl talks to PID 1 over its private socket, dynamic
        // users resolve through nss-systemd.
        for unit in ["dbus.service", "dbus.socket", "systemd-logind.service"] {
            let link = root.at(&format!("etc/systemd/system/{unit}"));
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink("/dev/null", &link).unwrap();
        }
        let log = root.path.with_extension("console.log");
        let name = root
            .path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace('_', "-");
        let nspawn = Command::new("systemd-nspawn")
            .args(["-q", "--register=no", "--keep-unit", "--console=pipe", "-b"])
            .arg(format!("--machine={}", &name[..name.len().min(60)]))
            .arg("-D")
            .arg(&root.path)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
            .spawn()
            .expect("systemd-nspawn starts");
        let nspawn_pid = nspawn.id();
        let init = wait_for(Duration::from_secs(30), "the container's PID 1", || {
            // The forked systemd-nspawn child execs systemd: wait for the exec.
            children(nspawn_pid).into_iter().find(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .map(|c| c.trim() == "systemd")
                    .unwrap_or(false)
            })
        });
        let mut m = Machine {
            nspawn,
            init,
            root,
            log,
        };
        let start = Instant::now();
        loop {
            let (_, out, _) = m.sh("systemctl is-system-running");
            let state = out.trim().to_string();
            if state == "running" || state == "degraded" {
                break;
            }
            if start.elapsed() > Duration::from_secs(90) || m.nspawn.try_wait().unwrap().is_some() {
                panic!(
                    "the container did not boot (state {state:?}):\n{}",
                    std::fs::read_to_string(&m.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        m
    }

    /// `sh -c script` inside the machine (as root), with a plain environment.
    pub fn sh(&self, script: &str) -> (i32, String, String) {
        let out = Command::new("nsenter")
            .arg("-t")
            .arg(self.init.to_string())
            .args(["-a", "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"])
            .args(["LANG=C.UTF-8", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0"])
            .args(["sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .expect("nsenter runs");
        sh_output(out)
    }

    /// `sh -c script` that must succeed; its stdout.
    pub fn ok(&self, script: &str) -> String {
        let (code, out, err) = self.sh(script);
        assert_eq!(code, 0, "in the machine: {script}\nexit {code}\n{out}{err}");
        out
    }

    /// `systemctl show UNIT -p KEY --value`.
    pub fn prop(&self, unit: &str, key: &str) -> String {
        self.ok(&format!("systemctl show {unit} -p {key} --value"))
            .trim()
            .to_string()
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // SIGTERM asks systemd-nspawn for an orderly poweroff of the container.
        kill(self.nspawn.id(), libc::SIGTERM);
        let start = Instant::now();
        while self.nspawn.try_wait().ok().flatten().is_none() {
            if start.elapsed() > Duration::from_secs(20) {
                let _ = self.nspawn.kill();
                let _ = self.nspawn.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::fs::remove_file(&self.log);
        let _ = std::fs::remove_file(self.log.with_extension("err"));
    }
}

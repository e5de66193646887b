//! PostgreSQL client tools (pg_dump, pg_restore): choosing a binary by version, and
//! running one as a child process whose stderr is logged and kept for error messages.
//!
//! Rules: a tool must be of the needed major version or newer (pg_dump older than the
//! server aborts with "server version mismatch"; pg_restore older than the archive
//! cannot read it). Among suitable candidates the lowest major wins, so archives stay
//! readable by the server's own tools. Children run in their own process group, so a
//! terminal's Ctrl-C reaches only the runner, which then stops them deliberately.
//!
//! Children get a cleared environment ([`command`]): PATH, HOME, locale, time zone,
//! TMPDIR and libpq's own `PG*` settings, never this tool's secrets (the encryption
//! key, S3 and SSE-C keys, the Pushgateway's credentials). The password is added by
//! the caller (`ConnInfo::libpq_env`), and only for the database the tool talks to.

use crate::error::UsageError;
use anyhow::{anyhow, Context, Result};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tokio::task::JoinHandle;

/// Whether a variable of this tool's environment may reach a PostgreSQL client tool.
/// `PGPASSWORD` is not passed through: the caller hands over the password of the
/// connection the tool makes, and only that.
pub fn passes_to_child(name: &str) -> bool {
    matches!(
        name,
        "PATH" | "HOME" | "USER" | "LOGNAME" | "TMPDIR" | "TZ" | "LANG" | "LANGUAGE"
    ) || name.starts_with("LC_")
        || (name.starts_with("PG") && name != "PGPASSWORD")
}

/// The environment a PostgreSQL client tool starts with (see the module comment).
pub fn child_env() -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    std::env::vars_os()
        .filter(|(k, _)| k.to_str().is_some_and(passes_to_child))
        .collect()
}

/// A command for a PostgreSQL client tool, with a cleared environment.
pub fn command(path: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(path);
    cmd.env_clear().envs(child_env());
    cmd
}

/// A pg_dump binary and the version it reports.
#[derive(Debug, Clone)]
pub struct PgTool {
    pub path: PathBuf,
    pub version: String,
    pub major: u32,
}

/// Run `TOOL --version` and parse "pg_dump (PostgreSQL) 15.18 (Debian ...)".
pub fn probe(path: &Path) -> Option<PgTool> {
    let out = std::process::Command::new(path)
        .env_clear()
        .envs(child_env())
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let major = parse_major(&text)?;
    Some(PgTool {
        path: path.to_path_buf(),
        version: text,
        major,
    })
}

/// The major version in a `--version` line: "pg_dump (PostgreSQL) 18.1" -> 18;
/// "pg_dump (PostgreSQL) 9.6.24" -> 9.
pub fn parse_major(text: &str) -> Option<u32> {
    let after = text.split(')').nth(1).unwrap_or(text);
    let num = after
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
    num.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Candidate paths for a PostgreSQL client tool: PATH, then /usr/lib/postgresql/*/bin
/// (newest first).
pub fn candidates(tool: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(tool);
            if p.is_file() && !out.contains(&p) {
                out.push(p);
            }
        }
    }
    let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let p = e.path().join("bin").join(tool);
            p.is_file().then_some((v, p))
        })
        .collect();
    versioned.sort_by_key(|v| std::cmp::Reverse(v.0));
    for (_, p) in versioned {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// The pg_restore that reads an archive written by `pg_dump_version` (as its manifest
/// records it): `explicit` if given, else the lowest installed major that can. The one
/// choice verify, restore and drills make.
pub fn pg_restore_for(pg_dump_version: &str, explicit: Option<&Path>) -> Result<PgTool> {
    let major = parse_major(pg_dump_version).unwrap_or(0);
    select("pg_restore", explicit, major)
        .with_context(|| format!("the archive was written by pg_dump {major}"))
}

/// Pick the tool for `server_major` (the server's major for pg_dump, the archive's for
/// pg_restore). An explicit path must qualify itself;
/// otherwise the lowest qualifying major among the candidates wins. Failure is a
/// usage error (exit 2) that says which version is needed and what was found.
pub fn select(tool: &str, explicit: Option<&Path>, server_major: u32) -> Result<PgTool> {
    let flag = format!(
        "--{} / LEAFLOCK_BACKUP_{}",
        tool.replace('_', "-"),
        tool.to_ascii_uppercase()
    );
    if let Some(p) = explicit {
        let t = probe(p).ok_or_else(|| {
            UsageError(format!(
                "{flag}: {} does not run or does not report a version",
                p.display()
            ))
        })?;
        if t.major < server_major {
            return Err(UsageError(format!(
                "{flag}: {} is version {} but {server_major} or newer is needed",
                p.display(),
                t.major
            ))
            .into());
        }
        return Ok(t);
    }
    let found: Vec<PgTool> = candidates(tool).iter().filter_map(|p| probe(p)).collect();
    let best = found
        .iter()
        .filter(|t| t.major >= server_major)
        .min_by_key(|t| t.major);
    match best {
        Some(t) => Ok(t.clone()),
        None => {
            let seen = if found.is_empty() {
                "none found".to_string()
            } else {
                found
                    .iter()
                    .map(|t| format!("{} ({})", t.path.display(), t.major))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            Err(UsageError(format!(
                "{tool} {server_major} or newer is needed (looked in PATH and \
                 /usr/lib/postgresql/*/bin: {seen}); install it or pass {flag}"
            ))
            .into())
        }
    }
}

/// A running PostgreSQL client tool.
pub struct ToolProcess {
    name: &'static str,
    child: Child,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    stderr_task: Option<JoinHandle<()>>,
}

const STDERR_TAIL_LINES: usize = 20;

impl ToolProcess {
    /// Watch a spawned child: log its stderr lines and keep the last ones.
    pub fn watch(name: &'static str, mut child: Child) -> ToolProcess {
        let stderr = child.stderr.take().expect("stderr piped");
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let tail2 = tail.clone();
        let stderr_task = tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::warn!(stage = name, "{name}: {line}");
                let mut t = tail2.lock().unwrap();
                if t.len() == STDERR_TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
        ToolProcess {
            name,
            child,
            stderr_tail: tail,
            stderr_task: Some(stderr_task),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Wait for the tool to exit; non-zero exit or death by signal is an error carrying
    /// its last stderr lines.
    pub async fn wait(mut self) -> Result<()> {
        let status = self
            .child
            .wait()
            .await
            .with_context(|| format!("waiting for {}", self.name))?;
        if let Some(t) = self.stderr_task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        if status.success() {
            return Ok(());
        }
        let how = match status.code() {
            Some(c) => format!("exited with status {c}"),
            None => {
                use std::os::unix::process::ExitStatusExt;
                format!("was killed by signal {}", status.signal().unwrap_or(0))
            }
        };
        let tail: Vec<String> = self.stderr_tail.lock().unwrap().iter().cloned().collect();
        if tail.is_empty() {
            Err(anyhow!("{} {how}", self.name))
        } else {
            Err(anyhow!("{} {how}: {}", self.name, tail.join(" | ")))
        }
    }

    /// Stop the tool: SIGTERM, then SIGKILL after a grace period.
    pub async fn stop(mut self) {
        if let Some(t) = self.stderr_task.take() {
            t.abort();
        }
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        if tokio::time::timeout(Duration::from_secs(3), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_major, passes_to_child};

    #[test]
    fn secrets_never_pass_to_children() {
        for k in [
            "BACKUP_ENCRYPTION_KEY",
            "LEAFLOCK_BACKUP_ENCRYPTION_KEY",
            "LEAFLOCK_BACKUP_S3_SECRET_KEY",
            "LEAFLOCK_BACKUP_SSE_C_KEY",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "BACKUP_S3_SECRET_KEY",
            "LEAFLOCK_BACKUP_PUSHGATEWAY_URL",
            "LEAFLOCK_BACKUP_DATABASE_URL",
            "DATABASE_URL",
            "PGPASSWORD",
            "POSTGRES_PASSWORD",
            "SERVER_ENCRYPTION_KEY",
            "JWT_SECRET",
        ] {
            assert!(!passes_to_child(k), "{k}");
        }
        for k in [
            "PATH",
            "LANG",
            "LC_ALL",
            "PGSSLROOTCERT",
            "PGPASSFILE",
            "HOME",
        ] {
            assert!(passes_to_child(k), "{k}");
        }
    }

    #[test]
    fn parses_versions() {
        assert_eq!(
            parse_major("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(parse_major("pg_dump (PostgreSQL) 18.1"), Some(18));
        assert_eq!(parse_major("pg_restore (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(parse_major("pg_dump (PostgreSQL) 19devel"), Some(19));
        assert_eq!(parse_major("garbage"), None);
    }
}

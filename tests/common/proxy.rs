//! The fault proxy (`src/bin/faultproxy.rs`, the same tool `scripts/soak.sh` uses)
//! started as a child process: a loopback proxy in front of a real server that slows
//! uploads down, answers S3 requests with errors, resets connections mid-body, stops
//! accepting connections, or (with `--tcp`) forwards PostgreSQL or Pushgateway traffic
//! until it is killed. Real servers see real requests; nothing in the code under test
//! is replaced.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Proxy {
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// One line per request (HTTP) or connection (TCP): `MS CONN what`.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Lines of the log that contain `needle`, as (milliseconds since start, line).
    pub fn events(&self, needle: &str) -> Vec<(u64, String)> {
        self.log()
            .lines()
            .filter(|l| l.contains(needle))
            .filter_map(|l| Some((l.split(' ').next()?.parse().ok()?, l.to_string())))
            .collect()
    }

    /// Kill the proxy now: every connection through it is cut.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_faultproxy")
}

/// Start the fault proxy to `upstream` (host:port) with extra arguments (`--fault`,
/// `--tcp`, `--throttle`, `--throttle-down`, `--latency-ms`, `--seed`).
pub fn start(upstream: &str, args: &[&str]) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("proxy.log");
    let mut child = Command::new(bin())
        .args(["--upstream", upstream])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("faultproxy starts");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let port = first
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "faultproxy did not start: {first:?} {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
    std::thread::sleep(Duration::from_millis(20));
    Proxy {
        port,
        child: Some(child),
        log,
        _dir: dir,
    }
}

/// A proxy to `upstream` (host:port) that lets at most `bytes_per_sec` through from
/// client to server: it makes an upload last long enough to interrupt it.
pub fn throttle(upstream: &str, bytes_per_sec: u64) -> Proxy {
    start(upstream, &["--throttle", &bytes_per_sec.to_string()])
}

/// A proxy to `upstream` (host:port) that lets at most `bytes_per_sec` through from
/// server to client: a download slow enough that its consumer runs ahead of it.
pub fn throttle_down(upstream: &str, bytes_per_sec: u64) -> Proxy {
    start(upstream, &["--throttle-down", &bytes_per_sec.to_string()])
}

/// host:port of an http URL.
pub fn host_port(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

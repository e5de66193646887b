//! A loopback TCP proxy that slows the client-to-server direction down to a set
//! rate: it makes an upload last long enough to interrupt it at a chosen moment
//! (signals, killing pg_dump) without touching the code under test. It forwards bytes
//! unchanged, so the real S3 server sees real requests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct Proxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Start a proxy to `upstream` (host:port) that lets at most `bytes_per_sec` through
/// from client to server.
pub fn throttle(upstream: &str, bytes_per_sec: u64) -> Proxy {
    let upstream = upstream.to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let listener = super::rt()
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    super::rt().spawn(async move {
        loop {
            let Ok(Ok((client, _))) =
                tokio::time::timeout(Duration::from_millis(200), listener.accept()).await
            else {
                if stop2.load(Ordering::Relaxed) {
                    return;
                }
                continue;
            };
            let upstream = upstream.clone();
            let stop3 = stop2.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if stop3.load(Ordering::Relaxed) || sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        let secs = n as f64 / bytes_per_sec as f64;
                        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                    }
                    let _ = sw.shutdown().await;
                };
                let down = async {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    let _ = cw.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    Proxy { port, stop }
}

/// host:port of an http URL.
pub fn host_port(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

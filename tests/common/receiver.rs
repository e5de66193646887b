//! A notification receiver of the tests' own: a small HTTP server on loopback that
//! records every request (method, path, body) and answers 200, or never answers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Got {
    pub method: String,
    pub path: String,
    pub body: String,
}

/// An HTTP server that records every request and answers 200 (or never answers).
pub struct Receiver {
    port: u16,
    pub got: Arc<Mutex<Vec<Got>>>,
}

impl Receiver {
    /// A receiver that answers 200 to every request (`answer`), or never answers.
    pub fn start(answer: bool) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let g = g.clone();
                std::thread::spawn(move || {
                    let mut r = BufReader::new(stream.try_clone().unwrap());
                    let mut line = String::new();
                    if r.read_line(&mut line).is_err() {
                        return;
                    }
                    let mut words = line.split_whitespace();
                    let method = words.next().unwrap_or("").to_string();
                    let path = words.next().unwrap_or("").to_string();
                    let mut len = 0usize;
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; len];
                    let _ = r.read_exact(&mut body);
                    g.lock().unwrap().push(Got {
                        method,
                        path,
                        body: String::from_utf8_lossy(&body).into_owned(),
                    });
                    if answer {
                        let mut s = stream;
                        let _ = s.write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nOK",
                        );
                    } else {
                        std::thread::sleep(Duration::from_secs(60));
                    }
                });
            }
        });
        Receiver { port, got }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The JSON bodies posted to `/hook`.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|g| g.path == "/hook")
            .map(|g| serde_json::from_str(&g.body).unwrap())
            .collect()
    }

    /// The requests to `/ping...`.
    pub fn pings(&self) -> Vec<Got> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|g| g.path.starts_with("/ping"))
            .cloned()
            .collect()
    }

    /// Every request so far, as `METHOD path body`.
    pub fn requests(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|g| format!("{} {} {}", g.method, g.path, g.body))
            .collect()
    }
}

//! `faultproxy`: a loopback TCP proxy that injects network faults, for the fault tests
//! (`tests/faults.rs`) and the soak (`scripts/soak.sh`). Not part of the shipped image.
//!
//! In front of an S3 server (the default, HTTP mode) it reads each request's head and
//! body length, so it can answer a request itself: an S3-style XML error (500
//! InternalError, 503 SlowDown, 403 AccessDenied, ...), a connection reset in the middle
//! of the request body, or no connection at all once told to stop accepting. Requests
//! it lets through go to the real server unchanged, except for `Connection: close`, so
//! that every request arrives on its own connection and is judged on its own (the
//! header is not signed by SigV4). With `--tcp` it forwards bytes blindly (PostgreSQL,
//! the Pushgateway), optionally slowed down (`--throttle` uploads, `--throttle-down`
//! downloads).
//!
//! Faults (`--fault`, repeatable; the first rule that selects a request applies):
//!
//! ```text
//! status=503[,code=SlowDown]   answer with this status and an S3 error body
//! reset[,bytes=N]              read N body bytes (default: half) then reset (RST)
//! refuse                       stop accepting connections from then on
//! delay=MS                     hold the request MS milliseconds, then forward it
//! strip=PREFIX                 forward it, and drop the response headers whose names
//!                              start with PREFIX (a store that ignores a protection:
//!                              strip=x-amz-server-side-encryption, strip=x-amz-object-lock)
//! ...,match=TEXT               only requests whose "METHOD /path?query" contains TEXT
//! ...,header=TEXT              only requests with a header line ("name: value")
//!                              containing TEXT, case-insensitive (a store that refuses
//!                              the SDK's flexible checksums:
//!                              status=400,code=InvalidArgument,header=checksum)
//! ...,method=PUT               only requests with this method
//! ...,first=N                  only the first N selected requests
//! ...,after=N                  only selected requests after the first N
//! ...,rate=F                   a fraction F of selected requests (seeded, --seed)
//! ```
//!
//! The port is printed on stdout (`listening 127.0.0.1:PORT`) once it accepts; one
//! line per request goes to stderr: milliseconds since start, connection number,
//! method and path, what was done.

use clap::Parser;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Parser)]
#[command(
    name = "faultproxy",
    about = "A loopback proxy that injects network faults"
)]
struct Args {
    /// Where to forward (host:port).
    #[arg(long)]
    upstream: String,
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Forward bytes blindly instead of reading HTTP requests.
    #[arg(long)]
    tcp: bool,
    /// Limit the client-to-server direction to this many bytes per second per connection.
    #[arg(long)]
    throttle: Option<u64>,
    /// Limit the server-to-client direction to this many bytes per second per
    /// connection (a slow download).
    #[arg(long)]
    throttle_down: Option<u64>,
    /// Hold every request (HTTP) or every connection (TCP) this long before forwarding.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// A fault rule (see the module documentation).
    #[arg(long = "fault")]
    faults: Vec<String>,
    /// Seed of the random choices of `rate=` rules.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Debug, Clone, PartialEq)]
enum Action {
    Status(u16, String),
    Reset(Option<u64>),
    Refuse,
    Delay(u64),
    Strip(String),
}

#[derive(Debug)]
struct Rule {
    action: Action,
    matches: Option<String>,
    header: Option<String>,
    method: Option<String>,
    first: Option<u64>,
    after: Option<u64>,
    rate: Option<f64>,
    seen: AtomicU64,
}

fn default_code(status: u16) -> &'static str {
    match status {
        503 => "SlowDown",
        403 => "AccessDenied",
        404 => "NoSuchKey",
        400 => "BadRequest",
        429 => "TooManyRequests",
        _ => "InternalError",
    }
}

fn parse_rule(spec: &str) -> Result<Rule, String> {
    let mut action = None;
    let mut code = None;
    let mut bytes = None;
    let mut rule = Rule {
        action: Action::Refuse,
        matches: None,
        header: None,
        method: None,
        first: None,
        after: None,
        rate: None,
        seen: AtomicU64::new(0),
    };
    for part in spec.split(',') {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{k}: not a number: {v:?}"))
        };
        match k {
            "status" => action = Some(Action::Status(num(v)? as u16, String::new())),
            "reset" => action = Some(Action::Reset(None)),
            "refuse" => action = Some(Action::Refuse),
            "delay" => action = Some(Action::Delay(num(v)?)),
            "strip" => action = Some(Action::Strip(v.to_ascii_lowercase())),
            "code" => code = Some(v.to_string()),
            "bytes" => bytes = Some(num(v)?),
            "match" => rule.matches = Some(v.to_string()),
            "header" => rule.header = Some(v.to_ascii_lowercase()),
            "method" => rule.method = Some(v.to_ascii_uppercase()),
            "first" => rule.first = Some(num(v)?),
            "after" => rule.after = Some(num(v)?),
            "rate" => {
                rule.rate = Some(
                    v.parse::<f64>()
                        .ok()
                        .filter(|r| (0.0..=1.0).contains(r))
                        .ok_or(format!("rate: expected 0..1, got {v:?}"))?,
                )
            }
            other => return Err(format!("unknown fault setting {other:?} in {spec:?}")),
        }
    }
    rule.action = match action.ok_or(format!(
        "{spec:?}: no action (status, reset, refuse, delay, strip)"
    ))? {
        Action::Status(s, _) => {
            Action::Status(s, code.unwrap_or_else(|| default_code(s).to_string()))
        }
        Action::Reset(_) => Action::Reset(bytes),
        a => a,
    };
    Ok(rule)
}

struct State {
    rules: Vec<Rule>,
    rng: Mutex<rand::rngs::StdRng>,
    refusing: AtomicBool,
    start: Instant,
    conns: AtomicU64,
    args: Args,
}

impl State {
    /// The action for a request, if a rule selects it.
    fn decide(&self, line: &str, headers: &str) -> Option<Action> {
        for r in &self.rules {
            if r.matches.as_deref().is_some_and(|m| !line.contains(m))
                || r.header
                    .as_deref()
                    .is_some_and(|h| !headers.lines().any(|l| l.contains(h)))
                || r.method
                    .as_deref()
                    .is_some_and(|m| !line.starts_with(&format!("{m} ")))
            {
                continue;
            }
            let n = r.seen.fetch_add(1, Ordering::SeqCst);
            if r.first.is_some_and(|f| n >= f) || r.after.is_some_and(|a| n < a) {
                continue;
            }
            if let Some(rate) = r.rate {
                if !self.rng.lock().unwrap().random_bool(rate) {
                    continue;
                }
            }
            return Some(r.action.clone());
        }
        None
    }

    fn log(&self, conn: u64, what: &str) {
        eprintln!("{} {conn} {what}", self.start.elapsed().as_millis());
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let rules = match args.faults.iter().map(|s| parse_rule(s)).collect() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("faultproxy: {e}");
            std::process::exit(2);
        }
    };
    let listener = match TcpListener::bind(&args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("faultproxy: cannot listen on {}: {e}", args.listen);
            std::process::exit(2);
        }
    };
    println!("listening {}", listener.local_addr().unwrap());
    let state = Arc::new(State {
        rules,
        rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(args.seed)),
        refusing: AtomicBool::new(false),
        start: Instant::now(),
        conns: AtomicU64::new(0),
        args,
    });
    let mut listener = Some(listener);
    loop {
        if state.refusing.load(Ordering::SeqCst) {
            // Stop accepting: close the listening socket, so connects are refused.
            if listener.take().is_some() {
                state.log(0, "listener closed: refusing connections");
            }
            tokio::time::sleep(Duration::from_secs(3600)).await;
            continue;
        }
        let l = listener.as_ref().unwrap();
        let accepted = tokio::time::timeout(Duration::from_millis(100), l.accept()).await;
        let Ok(Ok((client, _))) = accepted else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let n = state.conns.fetch_add(1, Ordering::SeqCst) + 1;
        let st = state.clone();
        tokio::spawn(async move {
            if st.args.tcp {
                tcp_conn(st, n, client).await
            } else {
                http_conn(st, n, client).await
            }
        });
    }
}

async fn tcp_conn(st: Arc<State>, n: u64, client: TcpStream) {
    if st.args.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(st.args.latency_ms)).await;
    }
    let Ok(server) = TcpStream::connect(&st.args.upstream).await else {
        st.log(n, "upstream unreachable");
        return;
    };
    st.log(n, "connected");
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = tokio::spawn(copy_throttled(cr, sw, st.args.throttle, Vec::new()));
    let down = tokio::spawn(copy_throttled(sr, cw, st.args.throttle_down, Vec::new()));
    let _ = tokio::join!(up, down);
}

/// Copy `r` to `w` (after writing `already`), at most `rate` bytes/s; shut `w` down at
/// the end.
async fn copy_throttled<R, W>(mut r: R, mut w: W, rate: Option<u64>, already: Vec<u8>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if !already.is_empty() && w.write_all(&already).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if w.write_all(&buf[..n]).await.is_err() {
            break;
        }
        if let Some(rate) = rate {
            tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate.max(1) as f64)).await;
        }
    }
    let _ = w.shutdown().await;
}

/// A request head: its bytes, the request line, Content-Length, and whatever body bytes
/// were read with it.
struct Head {
    raw: Vec<u8>,
    line: String,
    /// The header lines, lowercased, one per line.
    headers: String,
    content_length: u64,
    rest: Vec<u8>,
}

async fn read_head(client: &mut TcpStream) -> Option<Head> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let n = client.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let rest = buf.split_off(end);
    let text = String::from_utf8_lossy(&buf).to_string();
    let mut lines = text.split("\r\n");
    let line = lines.next()?.to_string();
    let mut content_length = 0;
    let mut raw = format!("{line}\r\n").into_bytes();
    let mut headers = String::new();
    for h in lines.filter(|l| !l.is_empty()) {
        headers.push_str(&h.to_ascii_lowercase());
        headers.push('\n');
        let (name, value) = h.split_once(':').unwrap_or((h, ""));
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value.trim().parse().unwrap_or(0);
        }
        if name.eq_ignore_ascii_case("connection") {
            continue;
        }
        raw.extend_from_slice(h.as_bytes());
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"Connection: close\r\n\r\n");
    Some(Head {
        raw,
        line,
        headers,
        content_length,
        rest,
    })
}

/// Read and drop `n` body bytes (of which `have` were already read).
async fn drain(client: &mut TcpStream, n: u64, have: usize) -> bool {
    let mut left = n.saturating_sub(have as u64);
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        let want = (left as usize).min(buf.len());
        match client.read(&mut buf[..want]).await {
            Ok(0) | Err(_) => return false,
            Ok(k) => left -= k as u64,
        }
    }
    true
}

fn error_body(status: u16, code: &str, line: &str) -> Vec<u8> {
    let resource = line.split(' ').nth(1).unwrap_or("/");
    let resource = resource.split('?').next().unwrap_or("/");
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>injected by faultproxy</Message><Resource>{resource}</Resource>\
         <RequestId>faultproxy</RequestId></Error>"
    );
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
         x-amz-request-id: faultproxy\r\nConnection: close\r\n\r\n{xml}",
        xml.len()
    )
    .into_bytes()
}

async fn http_conn(st: Arc<State>, n: u64, mut client: TcpStream) {
    let Some(head) = read_head(&mut client).await else {
        return;
    };
    let line = head
        .line
        .rsplit_once(' ')
        .map(|(l, _)| l.to_string())
        .unwrap_or(head.line.clone());
    if st.args.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(st.args.latency_ms)).await;
    }
    let mut strip = None;
    match st.decide(&line, &head.headers) {
        Some(Action::Status(status, code)) => {
            drain(&mut client, head.content_length, head.rest.len()).await;
            st.log(n, &format!("{line} -> {status} {code}"));
            let _ = client
                .write_all(&error_body(status, &code, &head.line))
                .await;
            let _ = client.shutdown().await;
            return;
        }
        Some(Action::Reset(bytes)) => {
            let upto = bytes.unwrap_or(head.content_length / 2);
            drain(&mut client, upto, head.rest.len()).await;
            st.log(n, &format!("{line} -> reset after {upto} body bytes"));
            let _ = client.set_zero_linger();
            drop(client);
            return;
        }
        Some(Action::Refuse) => {
            st.refusing.store(true, Ordering::SeqCst);
            st.log(
                n,
                &format!("{line} -> reset; refusing connections from now on"),
            );
            let _ = client.set_zero_linger();
            drop(client);
            return;
        }
        Some(Action::Delay(ms)) => {
            st.log(n, &format!("{line} -> delayed {ms} ms"));
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        Some(Action::Strip(prefix)) => {
            st.log(n, &format!("{line} -> response headers {prefix}* stripped"));
            strip = Some(prefix);
        }
        None => st.log(n, &format!("{line} -> pass")),
    }
    let Ok(server) = TcpStream::connect(&st.args.upstream).await else {
        st.log(n, "upstream unreachable");
        return;
    };
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, mut sw) = server.into_split();
    if sw.write_all(&head.raw).await.is_err() {
        return;
    }
    let up = tokio::spawn(copy_throttled(cr, sw, st.args.throttle, head.rest));
    let (mut sr, mut cw) = (sr, cw);
    let mut rest = Vec::new();
    if let Some(prefix) = strip {
        // Read the response head, drop the headers, pass the rest on unchanged.
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            match sr.read(&mut chunk).await {
                Ok(0) | Err(_) => break None,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break Some(i + 4);
            }
        };
        let Some(end) = end else { return };
        let head_text = String::from_utf8_lossy(&buf[..end]).into_owned();
        let kept: String = head_text
            .split_inclusive("\r\n")
            .filter(|l| !l.to_ascii_lowercase().starts_with(&prefix))
            .collect();
        if cw.write_all(kept.as_bytes()).await.is_err() {
            return;
        }
        rest = buf[end..].to_vec();
    }
    // The server closes after its answer (Connection: close); then so do we.
    copy_throttled(sr, cw, st.args.throttle_down, rest).await;
    up.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_select() {
        let r = parse_rule("status=503,first=2,match=partNumber=").unwrap();
        assert_eq!(r.action, Action::Status(503, "SlowDown".into()));
        assert_eq!(
            parse_rule("reset,bytes=10").unwrap().action,
            Action::Reset(Some(10))
        );
        assert!(parse_rule("first=2").is_err());
        assert!(parse_rule("status=500,bogus=1").is_err());
        assert!(parse_rule("status=500,rate=2").is_err());
    }
}

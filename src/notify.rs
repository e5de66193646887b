//! Alerts without Prometheus: `--notify-url` (repeatable) receives one JSON POST per
//! event of a run (started, succeeded, failed, drill_failed, suspect,
//! retention_deleted), with the figures of the summary line and never a secret; a
//! healthchecks.io-style `--healthchecks-url` gets `<url>/start`, `<url>` on success and
//! `<url>/fail` with the tail of the log as its body, so a dead man's switch fires when
//! runs stop or fail.
//!
//! Bounded: each request has `--notify-timeout`, at most three attempts (0.5 s and 1 s
//! apart); all targets are sent to at once. A notification that cannot be delivered is
//! a warning: it never changes the backup's outcome or exit status.

use chrono::Utc;
use serde_json::{json, Value};
use std::time::Duration;

/// Where notifications go (resolved by `config`); empty: none.
#[derive(Debug, Clone, Default)]
pub struct NotifyConfig {
    pub urls: Vec<String>,
    pub healthchecks: Option<String>,
    pub timeout: Duration,
}

/// The healthchecks-style signal of a run.
pub enum Ping {
    Start,
    Success,
    /// With the tail of the log.
    Fail(String),
}

pub struct Notifier {
    cfg: NotifyConfig,
    client: Option<reqwest::Client>,
}

const ATTEMPTS: u32 = 3;

/// A target for messages: its scheme and host only (a ping URL's path is its secret).
fn shown(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!("{}://{}", u.scheme(), u.host_str().unwrap_or("?")),
        Err(_) => "(not a URL)".into(),
    }
}

impl Notifier {
    pub fn new(cfg: &NotifyConfig) -> Notifier {
        let client = if cfg.urls.is_empty() && cfg.healthchecks.is_none() {
            None
        } else {
            match crate::httptls::reqwest_builder().and_then(|b| {
                b.timeout(cfg.timeout)
                    .connect_timeout(cfg.timeout)
                    .build()
                    .map_err(Into::into)
            }) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "notifications are off: {e:#}");
                    None
                }
            }
        };
        Notifier {
            cfg: cfg.clone(),
            client,
        }
    }

    /// POST `body` to `url`, retried; `Err` says why the last attempt failed.
    async fn post(
        client: &reqwest::Client,
        url: &str,
        body: Vec<u8>,
        json: bool,
    ) -> Result<(), String> {
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500 << (attempt - 1))).await;
            }
            let mut req = client.post(url).body(body.clone());
            if json {
                req = req.header("content-type", "application/json");
            }
            match req.send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => last = format!("HTTP {}", r.status().as_u16()),
                Err(e) => {
                    last = if e.is_timeout() {
                        "timed out".into()
                    } else {
                        "cannot connect".into()
                    }
                }
            }
        }
        Err(last)
    }

    /// One event to every `--notify-url`.
    pub async fn event(&self, event: &str, database: &str, fields: Value) {
        let Some(client) = &self.client else { return };
        if self.cfg.urls.is_empty() {
            return;
        }
        let mut body = json!({
            "event": event,
            "database": database,
            "run_id": crate::logging::run_id(),
            "time": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "tool": "leaflock-backup",
        });
        if let (Some(b), Value::Object(f)) = (body.as_object_mut(), fields) {
            b.extend(f);
        }
        let bytes = serde_json::to_vec(&body).expect("JSON");
        let sends = self.cfg.urls.iter().map(|u| {
            let bytes = bytes.clone();
            async move { (u, Self::post(client, u, bytes, true).await) }
        });
        for (u, r) in futures::future::join_all(sends).await {
            match r {
                Ok(()) => tracing::debug!(target_host = %shown(u), event, "notification sent"),
                Err(why) => tracing::warn!(
                    target_host = %shown(u),
                    event,
                    "could not send the {event} notification to {} ({why}); the outcome is unaffected",
                    shown(u)
                ),
            }
        }
    }

    /// `check`: one `check` event to every `--notify-url`, and the healthchecks-style
    /// target's `<url>/log` (which records a message and changes no check's state).
    /// Each target (scheme and host) with how it went.
    pub async fn probe(&self) -> Vec<(String, Result<(), String>)> {
        let Some(client) = &self.client else {
            return Vec::new();
        };
        let body = serde_json::to_vec(&json!({
            "event": "check",
            "run_id": crate::logging::run_id(),
            "time": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "tool": "leaflock-backup",
        }))
        .expect("JSON");
        let mut sends: Vec<(String, String, Vec<u8>, bool)> = self
            .cfg
            .urls
            .iter()
            .map(|u| {
                (
                    format!("--notify-url {}", shown(u)),
                    u.clone(),
                    body.clone(),
                    true,
                )
            })
            .collect();
        if let Some(base) = &self.cfg.healthchecks {
            sends.push((
                format!("--healthchecks-url {}", shown(base)),
                format!("{}/log", base.trim_end_matches('/')),
                b"leaflock-backup check: this target is reachable".to_vec(),
                false,
            ));
        }
        let sent = sends.into_iter().map(|(name, url, body, json)| async move {
            (name, Self::post(client, &url, body, json).await)
        });
        futures::future::join_all(sent).await
    }

    /// The healthchecks-style ping.
    pub async fn ping(&self, ping: Ping) {
        let (Some(client), Some(base)) = (&self.client, &self.cfg.healthchecks) else {
            return;
        };
        let base = base.trim_end_matches('/');
        let (url, body) = match ping {
            Ping::Start => (format!("{base}/start"), Vec::new()),
            Ping::Success => (base.to_string(), Vec::new()),
            Ping::Fail(tail) => (format!("{base}/fail"), tail.into_bytes()),
        };
        if let Err(why) = Self::post(client, &url, body, false).await {
            tracing::warn!(
                target_host = %shown(base),
                "could not ping {} ({why}); the outcome is unaffected",
                shown(base)
            );
        }
    }
}

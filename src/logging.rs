//! Logs: one JSON object per line when stderr is not a terminal (CronJob, systemd),
//! readable text otherwise, with a live progress line drawn by `progress.rs`.
//!
//! Every JSON line carries `ts`, `level`, `msg`, `component` ("backup", as LeafLock's
//! logs do), `run_id` and `request_id` (the same id, LeafLock's field name), then the
//! event's own fields (`bytes`, `duration_seconds`, ...). A line that ends a unit of
//! work (upload, backup, drill, retention, metrics push, run, restore, verify, prune,
//! a failed command) has `duration_seconds`, and every line that has it also carries
//! `latency`, the same figure under the field name LeafLock's log panels read.
//! Secrets never reach a log call: URLs are logged through `ConnInfo::redacted`.

use crate::cli::{LogArgs, LogFormat};
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

static RUN_ID: Mutex<Option<String>> = Mutex::new(None);
static PROGRESS_BAR: Mutex<Option<indicatif::ProgressBar>> = Mutex::new(None);

/// The last lines written (masked), for a failure notification's body.
static TAIL: Mutex<std::collections::VecDeque<String>> =
    Mutex::new(std::collections::VecDeque::new());
const TAIL_LINES: usize = 40;

/// Set at the start of each run (once per process, or once per slot in `schedule`).
pub fn set_run_id(id: &str) {
    *RUN_ID.lock().unwrap() = Some(id.to_string());
    TAIL.lock().unwrap().clear();
}

/// The current run id, if one is set.
pub fn run_id() -> Option<String> {
    RUN_ID.lock().unwrap().clone()
}

/// The last lines this run wrote (secrets masked, as printed), oldest first.
pub fn tail() -> String {
    TAIL.lock().unwrap().iter().map(String::as_str).collect()
}

/// Whether a progress line is drawn.
#[derive(Debug, Clone, Copy)]
pub struct Terminal {
    pub progress: bool,
}

/// Start logging as `args` say; a log level that is not one is a usage error (exit 2).
pub fn init(args: &LogArgs) -> Result<Terminal, crate::error::UsageError> {
    let tty = std::io::stderr().is_terminal();
    let text = match args.log_format {
        LogFormat::Auto => tty,
        LogFormat::Json => false,
        LogFormat::Text => true,
    };
    let filter = filter(&args.log_level).map_err(|_| {
        crate::error::UsageError(format!(
            "--log-level / LEAFLOCK_BACKUP_LOG_LEVEL: {:?} is not a level or filter \
             (error, warn, info, debug, trace, or a tracing filter)",
            args.log_level
        ))
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(StderrWriter);
    if text {
        builder.with_target(false).compact().init();
    } else {
        builder.event_format(JsonLines).init();
    }
    Ok(Terminal {
        progress: text && tty && !args.no_progress,
    })
}

const LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace", "off"];

/// Crates whose debug and trace lines can carry request headers (SigV4 canonical
/// requests with the SSE-C key, Authorization headers): kept at info unless the
/// operator names them.
const QUIET_CRATES: &[&str] = &[
    "aws_sigv4",
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "aws_smithy_http_client",
    "aws_sdk_s3",
    "aws_config",
    "hyper",
    "hyper_util",
    "h2",
    "rustls",
    "reqwest",
    "tokio_postgres",
];

/// The log filter: every directive must end in a real level (`warning` is not one: a
/// bare word would be read as a target name and silence everything).
pub fn filter(spec: &str) -> Result<EnvFilter, String> {
    let spec = spec.trim().to_ascii_lowercase();
    let mut parts = Vec::new();
    for d in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = d.rsplit_once('=').map(|x| x.1).unwrap_or(d);
        if !LEVELS.contains(&level) {
            return Err(format!("{d:?} does not end in a level"));
        }
        parts.push(d.to_string());
    }
    if parts.is_empty() {
        return Err("no level".into());
    }
    for c in QUIET_CRATES {
        if !spec.contains(c) {
            parts.push(format!("{c}=info"));
        }
    }
    EnvFilter::try_new(parts.join(",")).map_err(|e| e.to_string())
}

static REDACTIONS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// The secret values to mask (`***`) in every line written, whatever crate wrote it:
/// the last guard behind each message's own redaction, for a line (a dependency's
/// trace, an echoed error) that carries a secret anyway. Set once, before logging.
pub fn redact(values: Vec<String>) {
    let _ = REDACTIONS.set(values);
}

/// `line` with every registered secret masked.
fn masked(line: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let secrets = match REDACTIONS.get() {
        Some(s) if !s.is_empty() => s,
        _ => return line.into(),
    };
    let mut text = String::from_utf8_lossy(line);
    for s in secrets {
        if text.contains(s.as_str()) {
            text = text.replace(s.as_str(), "***").into();
        }
    }
    match text {
        std::borrow::Cow::Borrowed(_) => line.into(),
        std::borrow::Cow::Owned(t) => t.into_bytes().into(),
    }
}

/// Register (or clear) the progress bar that log lines must not tear.
pub fn set_progress_bar(bar: Option<indicatif::ProgressBar>) {
    *PROGRESS_BAR.lock().unwrap() = bar;
}

/// Writes to stderr, hiding the progress line while a log line is printed.
#[derive(Clone, Copy)]
struct StderrWriter;

impl<'a> MakeWriter<'a> for StderrWriter {
    type Writer = LineWriter;
    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(Vec::with_capacity(256))
    }
}

struct LineWriter(Vec<u8>);

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let emit = |buf: &[u8]| {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(buf);
            let _ = err.flush();
        };
        let line = masked(&self.0);
        {
            let mut tail = TAIL.lock().unwrap();
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(String::from_utf8_lossy(&line).into_owned());
        }
        let bar = PROGRESS_BAR.lock().unwrap().clone();
        match bar {
            Some(bar) => bar.suspend(|| emit(&line)),
            None => emit(&line),
        }
    }
}

/// The JSON line format.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut fields = serde_json::Map::new();
        event.record(&mut JsonVisitor(&mut fields));
        let mut line = serde_json::Map::new();
        line.insert(
            "ts".into(),
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                .into(),
        );
        line.insert(
            "level".into(),
            event
                .metadata()
                .level()
                .as_str()
                .to_ascii_lowercase()
                .into(),
        );
        line.insert("msg".into(), fields.remove("message").unwrap_or_default());
        line.insert(
            "component".into(),
            fields
                .remove("component")
                .unwrap_or_else(|| "backup".into()),
        );
        if let Some(id) = RUN_ID.lock().unwrap().clone() {
            line.insert("run_id".into(), id.clone().into());
            line.insert("request_id".into(), id.clone().into());
        }
        if let Some(d) = fields.get("duration_seconds").cloned() {
            fields.entry("latency").or_insert(d);
        }
        line.extend(fields);
        let text = serde_json::to_string(&line).map_err(|_| std::fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

struct JsonVisitor<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl Visit for JsonVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let v = serde_json::Number::from_f64(value)
            .map(serde_json::Value::Number)
            .unwrap_or_else(|| value.to_string().into());
        self.0.insert(field.name().into(), v);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().into(), format!("{value:#}").into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

/// A new run id: the start time and six random hex digits (`20261203T020000Z-1a2b3c`).
pub fn new_run_id(at: chrono::DateTime<chrono::Utc>) -> String {
    format!(
        "{}-{:06x}",
        at.format("%Y%m%dT%H%M%SZ"),
        rand::random::<u32>() & 0xff_ffff
    )
}

/// Seconds since `clock`, to the millisecond, as end-of-work lines log them.
pub fn seconds(clock: std::time::Instant) -> f64 {
    (clock.elapsed().as_secs_f64() * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    #[test]
    fn registered_secrets_are_masked_in_any_line() {
        super::redact(vec!["s3cr3t-longer".into(), "s3cr3t".into()]);
        let line =
            br#"{"msg":"request","headers":"[(\"x-key\", \"s3cr3t-longer\")]","pw":"s3cr3t"}"#;
        let out = String::from_utf8(super::masked(line).into_owned()).unwrap();
        assert!(!out.contains("s3cr3t"), "{out}");
        assert_eq!(out.matches("***").count(), 2, "{out}");
        let plain = b"nothing secret here";
        assert!(matches!(
            super::masked(plain),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}

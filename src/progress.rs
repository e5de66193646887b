//! Byte counters shared by the pipeline stages, and their display: a live progress
//! line on a terminal, a periodic `progress` log line elsewhere.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes read from pg_dump.
    pub dumped: AtomicU64,
    /// Bytes handed to the destination (after compression).
    pub stored: AtomicU64,
}

impl Counters {
    pub fn dumped(&self) -> u64 {
        self.dumped.load(Ordering::Relaxed)
    }
    pub fn stored(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }
}

/// Human-readable byte count (binary units).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Shows progress until dropped.
pub struct Reporter {
    task: JoinHandle<()>,
    bar: Option<indicatif::ProgressBar>,
}

impl Reporter {
    pub fn start(counters: Arc<Counters>, bar: bool) -> Reporter {
        let started = Instant::now();
        let line = move |c: &Counters| {
            let secs = started.elapsed().as_secs_f64().max(0.001);
            format!(
                "dumped {}, stored {}, {}/s",
                human_bytes(c.dumped()),
                human_bytes(c.stored()),
                human_bytes((c.dumped() as f64 / secs) as u64)
            )
        };
        if bar {
            let pb = indicatif::ProgressBar::new_spinner();
            pb.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                    .expect("static template"),
            );
            pb.enable_steady_tick(Duration::from_millis(120));
            crate::logging::set_progress_bar(Some(pb.clone()));
            let pb2 = pb.clone();
            let task = tokio::spawn(async move {
                loop {
                    pb2.set_message(line(&counters));
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            });
            Reporter {
                task,
                bar: Some(pb),
            }
        } else {
            let task = tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(30));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    tracing::info!(
                        bytes_dumped = counters.dumped(),
                        bytes_stored = counters.stored(),
                        elapsed_seconds = started.elapsed().as_secs_f64(),
                        "progress: {}",
                        line(&counters)
                    );
                }
            });
            Reporter { task, bar: None }
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(pb) = self.bar.take() {
            crate::logging::set_progress_bar(None);
            pb.finish_and_clear();
        }
    }
}

//! SIGTERM and SIGINT become a cancellation that the run observes at its await points
//! (Kubernetes stops pods with SIGTERM; an operator presses Ctrl-C). The run then
//! stops pg_dump, aborts the upload, pushes a failure and exits 1.

use std::sync::{Arc, OnceLock};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct Cancel {
    token: CancellationToken,
    which: Arc<OnceLock<&'static str>>,
}

impl Cancel {
    /// Start listening for SIGTERM and SIGINT.
    pub fn install() -> std::io::Result<Cancel> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let cancel = Cancel {
            token: CancellationToken::new(),
            which: Arc::new(OnceLock::new()),
        };
        let c = cancel.clone();
        tokio::spawn(async move {
            loop {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                if c.which.set(name).is_ok() {
                    tracing::warn!(
                        signal = name,
                        "received {name}: stopping the run and cleaning up"
                    );
                    c.token.cancel();
                } else {
                    tracing::warn!(signal = name, "received {name} again: already stopping");
                }
            }
        });
        Ok(cancel)
    }

    /// Resolves with the signal's name once one arrived.
    pub async fn cancelled(&self) -> &'static str {
        self.token.cancelled().await;
        self.which.get().copied().unwrap_or("a signal")
    }

    pub fn signal(&self) -> Option<&'static str> {
        self.which.get().copied()
    }
}

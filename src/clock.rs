//! Which time it is, asked of two clocks: the local one and the destination's (the S3
//! server's `Date` header). Neither is trusted alone.
//!
//! - A manifest dated later than "now" plus the tolerance is an anomaly (`catalog.rs`);
//!   "now" is the later of the two clocks, so a local clock running behind does not
//!   turn every real backup into an anomaly.
//! - Retention deletes nothing while the two disagree by more than the tolerance
//!   (`retention.rs`): a wrong clock must never decide what is old.

use crate::catalog::View;
use crate::scope::Scope;
use crate::storage::Storage;
use chrono::{DateTime, Duration, Utc};

#[derive(Debug, Clone)]
pub struct Clock {
    pub local: DateTime<Utc>,
    /// The destination's time, when it has a clock and answered.
    pub server: Option<DateTime<Utc>>,
    pub tolerance: Duration,
}

impl Clock {
    /// Read both clocks; a destination that cannot say its time is logged, not fatal.
    pub async fn read(storage: &dyn Storage, tolerance: std::time::Duration) -> Clock {
        let server = match storage.server_time().await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "could not read the destination's clock"
                );
                None
            }
        };
        let clock = Clock {
            local: Utc::now(),
            server,
            tolerance: Duration::from_std(tolerance).unwrap_or(Duration::MAX),
        };
        if let Some(skew) = clock.skew().filter(|_| !clock.agrees()) {
            tracing::warn!(
                skew_seconds = skew.num_seconds(),
                local = %clock.local,
                server = ?clock.server,
                "the local clock and the destination's disagree by {} s (tolerance {} s): retention deletes nothing until they agree",
                skew.num_seconds(),
                clock.tolerance.num_seconds()
            );
        }
        clock
    }

    /// The destination's time minus the local time.
    pub fn skew(&self) -> Option<Duration> {
        self.server.map(|s| s - self.local)
    }

    /// Whether the clocks agree within the tolerance (true when there is only one).
    pub fn agrees(&self) -> bool {
        self.skew().is_none_or(|s| s.abs() <= self.tolerance)
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.server.map_or(self.local, |s| s.max(self.local))
    }

    /// A catalog view for `scope` (`None`: every database) at this time.
    pub fn view(&self, scope: Option<Scope>) -> View {
        View {
            scope,
            now: self.now(),
            tolerance: self.tolerance,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_and_now() {
        let local = Utc::now();
        let mut c = Clock {
            local,
            server: None,
            tolerance: Duration::seconds(300),
        };
        assert!(c.agrees());
        assert_eq!(c.now(), local);
        c.server = Some(local + Duration::seconds(299));
        assert!(c.agrees());
        c.server = Some(local - Duration::seconds(600));
        assert!(!c.agrees());
        assert_eq!(c.now(), local);
        c.server = Some(local + Duration::days(1));
        assert!(!c.agrees());
        assert_eq!(c.now(), local + Duration::days(1));
    }
}

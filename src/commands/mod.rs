//! One file per subcommand.

pub mod check;
pub mod drill;
pub mod keygen;
pub mod list;
pub mod next_run;
pub mod prune;
pub mod report;
pub mod restore;
pub mod run;
pub mod schedule;
pub mod verify;

use crate::catalog::{self, Catalog};
use crate::clock::Clock;
use crate::scope::Scope;
use crate::signing::TrustPolicy;
use crate::storage::DestinationConfig;
use crate::storage::{self, Storage};
use std::time::Duration;

/// Open the destination and read its catalog for `scope` (`None`: every database),
/// with both clocks asked what time it is and signatures judged by `trust`.
pub async fn read_catalog(
    dest: &DestinationConfig,
    scope: Option<Scope>,
    tolerance: Duration,
    trust: &TrustPolicy,
) -> anyhow::Result<(Box<dyn Storage>, Clock, Catalog)> {
    let storage = storage::open(dest).await?;
    let clock = Clock::read(storage.as_ref(), tolerance).await;
    let catalog = catalog::scan(
        storage.as_ref(),
        dest.prefix(),
        clock.view(scope, trust.clone()),
    )
    .await?;
    Ok((storage, clock, catalog))
}

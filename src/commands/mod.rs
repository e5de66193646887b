//! One file per subcommand.

pub mod drill;
pub mod list;
pub mod next_run;
pub mod prune;
pub mod report;
pub mod restore;
pub mod run;
pub mod schedule;
pub mod verify;

//! One file per subcommand.

pub mod drill;
pub mod keygen;
pub mod list;
pub mod next_run;
pub mod prune;
pub mod restore;
pub mod run;
pub mod schedule;
pub mod verify;

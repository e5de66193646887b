//! One file per subcommand.

pub mod next_run;
pub mod run;

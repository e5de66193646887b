//! The exit-status contract and the error types that carry it.
//!
//! 0 success; 1 the backup (or drill) failed; 2 bad configuration or usage, detected
//! before any work; 3 another run holds the lock. Everything is an `anyhow::Error`;
//! the two non-failure kinds are recognised by downcasting in `main.rs`.

use std::fmt;

/// Bad configuration or usage, found before any work was done: exit 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Another run holds the lock: exit 3.
#[derive(Debug)]
pub struct LockHeld(pub String);

impl fmt::Display for LockHeld {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LockHeld {}

/// The stage of a backup an error happened in, attached as anyhow context (shown as
/// its name: `upload: connection reset`) and found by downcasting, never by comparing
/// message text, so rewording a message cannot change how an error is classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Opening or checking the destination.
    Destination,
    /// Connecting, the server version, the snapshot, the lock.
    Database,
    /// pg_dump: starting it, its output, its exit status.
    Dump,
    /// Writing the object to the destination.
    Upload,
    /// Completing the object and writing its manifest.
    Commit,
}

impl Stage {
    /// The outermost stage `err` carries, if any.
    pub fn of(err: &anyhow::Error) -> Option<Stage> {
        err.downcast_ref::<Stage>().copied()
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Destination => "destination",
            Stage::Database => "database",
            Stage::Dump => "dump",
            Stage::Upload => "upload",
            Stage::Commit => "commit",
        })
    }
}

/// Shorthand for returning a usage error from a validation function.
pub fn usage<T>(msg: impl Into<String>) -> anyhow::Result<T> {
    Err(UsageError(msg.into()).into())
}

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILURE: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_LOCKED: i32 = 3;

/// Map an error to the exit status of the contract.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    if err.downcast_ref::<UsageError>().is_some() {
        EXIT_USAGE
    } else if err.downcast_ref::<LockHeld>().is_some() {
        EXIT_LOCKED
    } else {
        EXIT_FAILURE
    }
}

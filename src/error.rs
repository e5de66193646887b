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

//! The small documents stored beside a backup, other than its manifest: the drill
//! record (`<key>.drill.json`, what a restore drill proved) and the suspect mark
//! (`<key>.suspect.json`, what the regression gate found). Formats only: the drill
//! (`drill.rs`) and the gate (`gate.rs`) write them, the catalog reads them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What one restore drill of one backup proved (signed like a manifest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillRecord {
    pub format_version: u32,
    pub run_id: String,
    pub object_key: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_seconds: f64,
    pub passed: bool,
    /// What failed, one line each (empty when passed).
    pub failures: Vec<String>,
    /// The drill server (password redacted) and the scratch database's name.
    pub server: String,
    pub scratch_database: String,
    pub scratch_database_kept: bool,
    pub pg_restore_version: String,
    pub tables_checked: usize,
    pub rows_checked: i64,
    pub checks_run: usize,
    /// sha256 of the object drilled (from its manifest): binds the record to that
    /// backup, so a signed record cannot vouch for another object at the same key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Tables whose content digest was recomputed from the restored database.
    #[serde(default)]
    pub digests_checked: usize,
    /// Whether the backup's manifest had content digests and every one matched the
    /// restored rows ("content verified"); false for a backup without digests,
    /// whose drill proves row counts only ("counts only").
    #[serde(default)]
    pub content_verified: bool,
    /// What amcheck found in the restored database (absent in older records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amcheck: Option<AmcheckOutcome>,
}

/// The outcome of the index and heap checks (`amcheck.rs`) of a drill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AmcheckOutcome {
    /// `passed`, `failed` (see `problems`) or `unavailable` (see `note`).
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub indexes_checked: usize,
    pub heaps_checked: usize,
    /// One line per problem, naming the index or table.
    #[serde(default)]
    pub problems: Vec<String>,
    /// Why something was not checked (no amcheck on the server, no privilege, an old
    /// server without heap checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl DrillRecord {
    /// What the drill proved, in a few words: `content verified`, `counts only`, or
    /// `failed`.
    pub fn proof(&self) -> &'static str {
        match (self.passed, self.content_verified) {
            (true, true) => "content verified",
            (true, false) => "counts only",
            (false, _) => "failed",
        }
    }
}

/// Stored beside a suspect backup (`….suspect.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuspectRecord {
    pub format_version: u32,
    /// The suspect backup's object key.
    pub object_key: String,
    /// The backup it was compared with.
    pub reference_key: String,
    pub marked_at: DateTime<Utc>,
    /// One line per finding, naming the table and the figures.
    pub findings: Vec<String>,
    /// Set by `prune --accept-suspect`: an operator says the change is intended.
    #[serde(default)]
    pub accepted_at: Option<DateTime<Utc>>,
}

impl SuspectRecord {
    pub fn accepted(&self) -> bool {
        self.accepted_at.is_some()
    }
}

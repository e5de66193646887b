//! `leaflock-backup check`: the run's configuration resolved as `run` resolves it, every
//! probe of `check.rs`, one line per check on stdout (✓ passed, ✗ failed with its fix,
//! a dash when skipped) and one log line each. Exit 0 when nothing failed, 1 when something did,
//! 2 when the configuration itself is wrong (its line says which flag).

use crate::check::{self, Finding, Outcome};
use crate::cli::RunArgs;
use crate::config::{self, process_env};
use anyhow::{bail, Result};
use std::io::Write;

pub async fn execute(args: &RunArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let resolved = config::resolve_run(args, &process_env)
        .and_then(|cfg| Ok((config::resolve_keys(&args.keys, &process_env)?, cfg)));
    let (keys, cfg) = match resolved {
        Ok(r) => r,
        Err(e) => {
            print(&[Finding {
                what: "configuration",
                outcome: Outcome::Failed,
                detail: format!("{e:#}"),
                fix: Some("see `leaflock-backup check --help` for the flag named".into()),
            }]);
            return Err(e);
        }
    };
    let mut findings = vec![Finding {
        what: "configuration",
        outcome: Outcome::Passed,
        detail: format!(
            "database {}, {}:{}{}{}",
            cfg.scope,
            cfg.compression.name(),
            cfg.compression.level(),
            if cfg.drill.is_some() {
                ", restore drill"
            } else {
                ""
            },
            if cfg.retention.is_some() {
                ", retention"
            } else {
                ""
            }
        ),
        fix: None,
    }];
    let run_id =
        crate::logging::run_id().unwrap_or_else(|| crate::logging::new_run_id(chrono::Utc::now()));
    findings.extend(check::check(&cfg.check_plan(&keys), &run_id).await);
    for f in &findings {
        let outcome = match f.outcome {
            Outcome::Passed => "passed",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
        };
        match f.outcome {
            Outcome::Failed => tracing::warn!(
                check = f.what,
                outcome,
                fix = f.fix.as_deref(),
                "{}: {}",
                f.what,
                f.detail
            ),
            _ => tracing::info!(check = f.what, outcome, "{}: {}", f.what, f.detail),
        }
    }
    print(&findings);
    let failed = findings
        .iter()
        .filter(|f| f.outcome == Outcome::Failed)
        .count();
    let duration = started.elapsed().as_secs_f64();
    if failed > 0 {
        bail!("{failed} of {} checks failed", findings.len());
    }
    tracing::info!(
        checks = findings.len(),
        duration_seconds = duration,
        "check passed: everything a run needs is in place"
    );
    Ok(())
}

/// The table on stdout: mark, name, what was found; the fix under a failure.
fn print(findings: &[Finding]) {
    let mut out = std::io::stdout().lock();
    for f in findings {
        let mark = match f.outcome {
            Outcome::Passed => "✓",
            Outcome::Failed => "✗",
            Outcome::Skipped => "-",
        };
        let _ = writeln!(out, "{mark} {:<16} {}", f.what, f.detail);
        if let Some(fix) = &f.fix {
            let _ = writeln!(out, "  {:<16} fix: {fix}", "");
        }
    }
    let _ = out.flush();
}

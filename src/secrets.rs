//! Where secrets come from, besides flags and variables: `NAME_FILE` for every secret
//! variable (a mounted Kubernetes Secret, a systemd credential), read before the flags
//! are parsed; and a warning when a secret was given on the command line, where `ps`
//! shows it to every user of the host.

use crate::error::UsageError;

/// A URL for a message: any `user:password@` masked.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("***");
            let _ = u.set_password(None);
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "(not a URL)".to_string(),
    }
}

/// Every variable that carries a secret; each also has a `NAME_FILE` form.
pub const SECRET_VARIABLES: &[&str] = &[
    "LEAFLOCK_BACKUP_DATABASE_URL",
    "LEAFLOCK_BACKUP_TARGET_DATABASE_URL",
    "LEAFLOCK_BACKUP_DRILL_DATABASE_URL",
    "LEAFLOCK_BACKUP_S3_ACCESS_KEY",
    "LEAFLOCK_BACKUP_S3_SECRET_KEY",
    "LEAFLOCK_BACKUP_SSE_C_KEY",
    "LEAFLOCK_BACKUP_ENCRYPTION_KEY",
    "LEAFLOCK_BACKUP_PUSHGATEWAY_URL",
    "LEAFLOCK_BACKUP_NOTIFY_URL",
    "LEAFLOCK_BACKUP_HEALTHCHECKS_URL",
    "BACKUP_ENCRYPTION_KEY",
    "BACKUP_S3_ACCESS_KEY",
    "BACKUP_S3_SECRET_KEY",
    "DATABASE_URL",
    "POSTGRESQL_PASSWORD",
    "PGPASSWORD",
    "POSTGRES_PASSWORD",
];

/// Flags whose value is a secret (URLs only when they hold a password).
const SECRET_FLAGS: &[&str] = &[
    "--s3-secret-key",
    "--sse-c-key",
    "--encryption-key",
    "--s3-access-key",
];
const URL_FLAGS: &[&str] = &[
    "--database-url",
    "--target-database-url",
    "--drill-database-url",
    "--pushgateway-url",
];

/// Read `NAME_FILE` into `NAME` for every secret variable that is not set itself (the
/// file's content, without its trailing newline). An unreadable or empty file, or both
/// forms at once, is a usage error (exit 2), found before any work.
pub fn load_files() -> Result<(), UsageError> {
    for name in SECRET_VARIABLES {
        let file_var = format!("{name}_FILE");
        let Some(path) = std::env::var_os(&file_var).filter(|p| !p.is_empty()) else {
            continue;
        };
        if std::env::var_os(name).is_some_and(|v| !v.is_empty()) {
            return Err(UsageError(format!(
                "{name} and {file_var} are both set: give one"
            )));
        }
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let value = text.trim_end_matches(['\n', '\r']);
                if value.is_empty() {
                    return Err(UsageError(format!(
                        "{file_var}: {} is empty",
                        path.to_string_lossy()
                    )));
                }
                // Before any thread exists: nothing else reads the environment yet.
                std::env::set_var(name, value);
            }
            Err(e) => {
                return Err(UsageError(format!(
                    "{file_var}: cannot read {}: {e}",
                    path.to_string_lossy()
                )));
            }
        }
    }
    Ok(())
}

/// The secret and URL flags on `argv`, with their values (`--flag value` or
/// `--flag=value`).
fn flag_values(argv: &[String]) -> Vec<(&'static str, Option<&str>)> {
    let mut out = Vec::new();
    for (i, a) in argv.iter().enumerate() {
        let (flag, value) = match a.split_once('=') {
            Some((f, v)) => (f, Some(v)),
            None => (a.as_str(), argv.get(i + 1).map(String::as_str)),
        };
        if let Some(f) = SECRET_FLAGS.iter().chain(URL_FLAGS).find(|f| **f == flag) {
            out.push((*f, value));
        }
    }
    out
}

/// The secret flags on this process's command line (URL flags only when the URL holds
/// a password).
pub fn flags_on_argv(argv: &[String]) -> Vec<&'static str> {
    flag_values(argv)
        .into_iter()
        .filter(|(f, value)| {
            SECRET_FLAGS.contains(f)
                || value
                    .and_then(|v| url::Url::parse(v).ok())
                    .is_some_and(|u| u.password().is_some())
        })
        .map(|(f, _)| f)
        .collect()
}

/// What of one secret value must never be printed: a URL's password (as written and
/// decoded), nothing of a URL without one, any other value whole. Values shorter than
/// four characters are left out: masking them would mangle ordinary words.
fn secret_parts(value: &str) -> Vec<String> {
    let parts = match url::Url::parse(value) {
        Ok(u) if u.has_host() => match u.password() {
            Some(p) => {
                let decoded = percent_encoding::percent_decode_str(p)
                    .decode_utf8_lossy()
                    .into_owned();
                vec![p.to_string(), decoded]
            }
            None => Vec::new(),
        },
        _ => vec![value.to_string()],
    };
    parts
        .into_iter()
        .filter(|p| p.chars().count() >= 4)
        .collect()
}

/// Every secret value this process was given (variables, their files, flags): the log
/// writer masks each wherever it would be printed, whichever crate's line carries it.
pub fn values() -> Vec<String> {
    let argv: Vec<String> = std::env::args().collect();
    let mut out: Vec<String> = SECRET_VARIABLES
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .chain(
            flag_values(&argv)
                .into_iter()
                .filter_map(|(_, v)| v.map(str::to_string)),
        )
        .flat_map(|v| secret_parts(&v))
        .collect();
    // Longest first, so a secret that contains another is masked whole.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

/// One warning line per secret flag given on the command line.
pub fn warn_about_argv() {
    let argv: Vec<String> = std::env::args().collect();
    for flag in flags_on_argv(&argv) {
        tracing::warn!(
            flag,
            "{flag} was given on the command line, where `ps` shows it to every user of this host; \
             use its variable or its *_FILE form instead"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{flags_on_argv, secret_parts};

    #[test]
    fn secret_parts_of_urls_and_values() {
        assert_eq!(
            secret_parts("postgresql://u:p%40ss-word@h/db"),
            vec!["p%40ss-word".to_string(), "p@ss-word".to_string()]
        );
        assert!(secret_parts("http://pgw:9091").is_empty());
        assert!(secret_parts("postgresql://u@h/db").is_empty());
        assert_eq!(
            secret_parts("c2VjcmV0a2V5"),
            vec!["c2VjcmV0a2V5".to_string()]
        );
        assert!(secret_parts("abc").is_empty(), "too short to mask");
    }

    #[test]
    fn finds_secret_flags_in_both_forms() {
        let argv: Vec<String> = [
            "leaflock-backup",
            "run",
            "--encryption-key=x",
            "--s3-secret-key",
            "y",
            "--database-url",
            "postgresql://u:pw@h/db",
            "--pushgateway-url",
            "http://pgw:9091",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            flags_on_argv(&argv),
            vec!["--encryption-key", "--s3-secret-key", "--database-url"]
        );
    }
}

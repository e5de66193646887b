//! Cron schedules: parsing what operators write (5-field crontab as in Kubernetes
//! CronJobs and `BACKUP_SCHEDULE`, the 6/7-field forms with seconds and years of the
//! `cron` crate, and `@daily`-style names) and computing the next slot in a time zone.
//!
//! Crontab numbers Sunday 0 (or 7); the `cron` crate numbers it 1. A 5-field
//! expression's day-of-week numbers are translated so `0 2 * * 0` means Sunday 02:00
//! exactly as cron and Kubernetes read it. An invalid expression is reported naming
//! the field that is wrong.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use std::str::FromStr;

#[derive(Debug, Clone)]
pub struct Schedule {
    /// What the operator wrote.
    pub expression: String,
    pub timezone: Tz,
    inner: cron::Schedule,
}

const FIELDS_6: [&str; 7] = [
    "seconds",
    "minutes",
    "hours",
    "day of month",
    "month",
    "day of week",
    "year",
];

impl Schedule {
    /// Parse `expr` for time zone `tz` (an IANA name such as `Europe/Berlin`; `UTC`).
    pub fn parse(expr: &str, tz: &str) -> Result<Schedule, String> {
        let timezone = Tz::from_str(tz).map_err(|_| {
            format!("time zone {tz:?} is not an IANA name such as UTC or Europe/Berlin")
        })?;
        let expr_t = expr.trim();
        let fields: Vec<&str> = expr_t.split_whitespace().collect();
        let normalized = if expr_t.starts_with('@') {
            expr_t.to_string()
        } else {
            match fields.len() {
                5 => format!(
                    "0 {} {} {} {} {}",
                    fields[0],
                    fields[1],
                    fields[2],
                    fields[3],
                    crontab_dow(fields[4])?
                ),
                6 | 7 => fields.join(" "),
                n => {
                    return Err(format!(
                        "{expr:?} has {n} fields; expected 5 (minute hour day-of-month month day-of-week), \
                         6 (with seconds first) or 7 (with a year last)"
                    ))
                }
            }
        };
        let inner =
            cron::Schedule::from_str(&normalized).map_err(|e| match bad_field(&normalized) {
                Some(i) => {
                    let offset = if fields.len() == 5 { 1 } else { 0 };
                    let shown = fields.get(i.wrapping_sub(offset)).copied().unwrap_or("");
                    format!("{expr:?}: the {} field {shown:?} is not valid", FIELDS_6[i])
                }
                None => format!("{expr:?} is not a valid cron expression ({e})"),
            })?;
        if inner.upcoming(Utc).next().is_none() {
            return Err(format!("{expr:?} never fires"));
        }
        Ok(Schedule {
            expression: expr.to_string(),
            timezone,
            inner,
        })
    }

    /// The first slot strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.inner
            .after(&after.with_timezone(&self.timezone))
            .next()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The next `n` slots after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        self.inner
            .after(&after.with_timezone(&self.timezone))
            .take(n)
            .map(|t| t.with_timezone(&Utc))
            .collect()
    }
}

/// Index of the first field of a 6/7-field expression that does not parse on its own.
fn bad_field(normalized: &str) -> Option<usize> {
    let fields: Vec<&str> = normalized.split_whitespace().collect();
    (0..fields.len()).find(|&i| {
        let probe: Vec<&str> = (0..fields.len())
            .map(|j| {
                if j == i {
                    fields[j]
                } else if j == 0 {
                    "0"
                } else {
                    "*"
                }
            })
            .collect();
        cron::Schedule::from_str(&probe.join(" ")).is_err()
    })
}

/// Translate crontab day-of-week numbers (Sunday = 0 or 7) to the `cron` crate's
/// (Sunday = 1). Names (MON, Sun, ...), `*` and `?` pass unchanged; step values after
/// `/` are counts, not days, and are kept.
fn crontab_dow(field: &str) -> Result<String, String> {
    let shift = |s: &str| -> Result<String, String> {
        if s.chars().all(|c| c.is_ascii_digit()) && !s.is_empty() {
            let n: u32 = s.parse().map_err(|_| format!("day of week {s:?}"))?;
            if n > 7 {
                return Err(format!(
                    "the day of week field {field:?} is not valid: {n} is not a day (0-7, Sunday is 0 or 7)"
                ));
            }
            Ok(((n % 7) + 1).to_string())
        } else {
            Ok(s.to_string())
        }
    };
    let mut items = Vec::new();
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (item, None),
        };
        let range = match range.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (shift(a)?, shift(b)?);
                // 5-7 in crontab (Fri-Sun) would become 6-1: spell it as a list.
                match (a.parse::<u32>(), b.parse::<u32>()) {
                    (Ok(x), Ok(y)) if x > y => format!("{x}-7,1-{y}"),
                    _ => format!("{a}-{b}"),
                }
            }
            None => shift(range)?,
        };
        items.push(match step {
            Some(s) => format!("{range}/{s}"),
            None => range,
        });
    }
    Ok(items.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Timelike, Weekday};

    fn at(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, min, 0).unwrap()
    }

    #[test]
    fn crontab_five_fields_mean_what_cron_means() {
        let s = Schedule::parse("0 2 * * *", "UTC").unwrap();
        assert_eq!(
            s.next_after(at(2026, 11, 25, 13, 0)),
            Some(at(2026, 11, 26, 2, 0))
        );
        // Sunday is 0 in crontab.
        let sun = Schedule::parse("30 3 * * 0", "UTC").unwrap();
        let n = sun.next_after(at(2026, 11, 25, 0, 0)).unwrap();
        assert_eq!(n.weekday(), Weekday::Sun);
        assert_eq!((n.hour(), n.minute()), (3, 30));
        let weekdays = Schedule::parse("0 1 * * 1-5", "UTC").unwrap();
        for t in weekdays.upcoming(at(2026, 11, 25, 0, 0), 10) {
            assert!(!matches!(t.weekday(), Weekday::Sat | Weekday::Sun), "{t}");
        }
        let weekend = Schedule::parse("0 1 * * 6-7", "UTC").unwrap();
        for t in weekend.upcoming(at(2026, 11, 25, 0, 0), 4) {
            assert!(matches!(t.weekday(), Weekday::Sat | Weekday::Sun), "{t}");
        }
    }

    #[test]
    fn seconds_forms_names_and_time_zones() {
        let s = Schedule::parse("*/5 * * * * *", "UTC").unwrap();
        assert_eq!(s.upcoming(at(2026, 1, 1, 0, 0), 2).len(), 2);
        let d = Schedule::parse("@daily", "UTC").unwrap();
        assert_eq!(
            d.next_after(at(2026, 1, 1, 5, 0)),
            Some(at(2026, 1, 2, 0, 0))
        );
        // 02:00 in Berlin is 01:00 UTC in winter.
        let b = Schedule::parse("0 2 * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            b.next_after(at(2026, 1, 1, 5, 0)),
            Some(at(2026, 1, 2, 1, 0))
        );
    }

    #[test]
    fn errors_name_the_field() {
        let e = Schedule::parse("0 25 * * *", "UTC").unwrap_err();
        assert!(e.contains("hours"), "{e}");
        let e = Schedule::parse("0 2 * 13 *", "UTC").unwrap_err();
        assert!(e.contains("month"), "{e}");
        let e = Schedule::parse("0 2 * * 9", "UTC").unwrap_err();
        assert!(e.contains("day of week"), "{e}");
        let e = Schedule::parse("0 2 * *", "UTC").unwrap_err();
        assert!(e.contains("4 fields"), "{e}");
        let e = Schedule::parse("0 2 * * *", "Mars/Olympus").unwrap_err();
        assert!(e.contains("time zone"), "{e}");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn parse_never_panics(expr in any::<String>(), tz in "[A-Za-z/_+-]{0,20}") {
            if let Ok(s) = Schedule::parse(&expr, &tz) {
                let _ = s.next_after(chrono::Utc::now());
            }
        }

        #[test]
        fn cron_shaped_input_never_panics(
            fields in proptest::collection::vec("[0-9*/,?LW#A-Za-z-]{1,6}", 0..8),
        ) {
            if let Ok(s) = Schedule::parse(&fields.join(" "), "UTC") {
                let _ = s.upcoming(chrono::Utc::now(), 3);
            }
        }
    }
}

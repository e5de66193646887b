//! Whose backups a key belongs to: one database (its name, and an optional
//! operator-set instance label for two servers whose databases share a name).
//!
//! Every command acts on one scope. Keys of this layout carry the scope as one path
//! segment right under the prefix:
//!
//! ```text
//! <prefix><scope>/<YYYY>/<MM>/<DD>/leaflock_backup_<YYYYmmddTHHMMSSZ>_<run>.dump.gz
//! scope = <database>            or  <instance>@<database>
//! ```
//!
//! Both names are percent-encoded (every byte outside `A-Z a-z 0-9 . _ -`), so `@`
//! and `/` never occur inside a name and the segment reads back unambiguously. The
//! `<run>` part (six hex digits of the run id) keeps two runs of one database in the
//! same second apart.
//!
//! Keys of the earlier layout (`<prefix><YYYY>/<MM>/<DD>/leaflock_backup_<ts>...`)
//! carry no scope: their manifest's `database` (and `instance`) decides, and an entry
//! with no manifest (debris, the old script's archives) belongs to no scope.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    pub database: String,
    pub instance: Option<String>,
}

/// Where a key stands in the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyScope {
    /// `<prefix><scope>/YYYY/MM/DD/<name>`: this layout, with the scope it names.
    Scoped(Scope),
    /// `<prefix>YYYY/MM/DD/<name>`: the earlier layout (and the old script's).
    Unscoped,
    /// Anything else under the prefix.
    Foreign,
}

fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode(seg: &str) -> Option<String> {
    let bytes = seg.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = seg.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok().filter(|s| !s.is_empty())
}

fn is_digits(s: &str, n: usize) -> bool {
    s.len() == n && s.bytes().all(|b| b.is_ascii_digit())
}

impl Scope {
    pub fn new(database: impl Into<String>, instance: Option<String>) -> Scope {
        Scope {
            database: database.into(),
            instance: instance.filter(|i| !i.is_empty()),
        }
    }

    /// The path segment naming this scope in a key.
    pub fn segment(&self) -> String {
        match &self.instance {
            Some(i) => format!("{}@{}", encode(i), encode(&self.database)),
            None => encode(&self.database),
        }
    }

    fn from_segment(seg: &str) -> Option<Scope> {
        match seg.split_once('@') {
            Some((i, d)) => Some(Scope::new(decode(d)?, Some(decode(i)?))),
            None => Some(Scope::new(decode(seg)?, None)),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.instance {
            Some(i) => write!(f, "{}@{}", i, self.database),
            None => write!(f, "{}", self.database),
        }
    }
}

/// Read the scope a key names (see the module doc).
pub fn of_key(prefix: &str, key: &str) -> KeyScope {
    let Some(rest) = key.strip_prefix(prefix) else {
        return KeyScope::Foreign;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let dated = |p: &[&str]| is_digits(p[0], 4) && is_digits(p[1], 2) && is_digits(p[2], 2);
    match parts.len() {
        4 if dated(&parts[..3]) => KeyScope::Unscoped,
        5 if dated(&parts[1..4]) => match Scope::from_segment(parts[0]) {
            Some(s) => KeyScope::Scoped(s),
            None => KeyScope::Foreign,
        },
        _ => KeyScope::Foreign,
    }
}

/// The directory of one scope's keys: `<prefix><scope>/`.
pub fn root(prefix: &str, scope: &Scope) -> String {
    format!("{prefix}{}/", scope.segment())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_round_trip_and_never_collide() {
        let cases = [
            Scope::new("notes", None),
            Scope::new("notes", Some("prod".into())),
            Scope::new("a@b", None),
            Scope::new("b", Some("a".into())),
            Scope::new("we/ird db %", Some("eu west@1".into())),
            Scope::new("Ünïcode", None),
            Scope::new("2026", None),
        ];
        let mut seen = std::collections::HashSet::new();
        for s in &cases {
            let key = format!(
                "backups/{}/2026/01/02/leaflock_backup_x.dump.gz",
                s.segment()
            );
            assert_eq!(of_key("backups/", &key), KeyScope::Scoped(s.clone()), "{s}");
            assert!(seen.insert(s.segment()), "{s} collides");
        }
        assert_ne!(
            Scope::new("a@b", None).segment(),
            Scope::new("b", Some("a".into())).segment()
        );
    }

    #[test]
    fn earlier_layouts_and_strangers() {
        assert_eq!(
            of_key(
                "backups/",
                "backups/2026/01/02/leaflock_backup_20260102T030405Z.dump.gz"
            ),
            KeyScope::Unscoped
        );
        assert_eq!(
            of_key(
                "backups/",
                "backups/2026/01/02/leaflock_backup_20260102_030405.sql.gz.enc"
            ),
            KeyScope::Unscoped
        );
        for k in [
            "backups/x.txt",
            "backups/notes/x.txt",
            "backups/no%tes/2026/01/02/x",
            "backups/a/b/2026/01/02/x",
            "other/2026/01/02/x",
        ] {
            assert_eq!(of_key("backups/", k), KeyScope::Foreign, "{k}");
        }
        // A database named like a year is still a scope (five segments, not four).
        assert_eq!(
            of_key("", "2026/2026/01/02/x"),
            KeyScope::Scoped(Scope::new("2026", None))
        );
    }
}

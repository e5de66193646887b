//! PostgreSQL connection settings: parsing a `postgresql://` URL, redacting it for logs,
//! and handing it to libpq tools (pg_dump, pg_restore) without a password on their
//! command line.
//!
//! Invariant: the password leaves this module only through [`ConnInfo::libpq_env`]
//! (as `PGPASSWORD` in a child's environment) and [`ConnInfo::password`] (for the
//! in-process connection). Every string form of a `ConnInfo` omits or masks it.

use std::fmt;
use url::Url;

/// libpq's sslmode values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// One PostgreSQL server and database to connect to.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// Host name, IP address, or a Unix socket directory (starts with `/`).
    pub host: String,
    pub port: u16,
    pub user: String,
    password: Option<String>,
    pub dbname: String,
    pub sslmode: SslMode,
    /// Other libpq parameters from the URL's query (sslrootcert, options, ...), passed
    /// through unchanged to pg_dump and pg_restore.
    pub params: Vec<(String, String)>,
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl ConnInfo {
    pub fn new(
        host: String,
        port: u16,
        user: String,
        password: Option<String>,
        dbname: String,
        sslmode: SslMode,
    ) -> ConnInfo {
        ConnInfo {
            host,
            port,
            user,
            password: password.filter(|p| !p.is_empty()),
            dbname,
            sslmode,
            params: Vec::new(),
        }
    }

    /// Parse `postgresql://[user[:password]@][host][:port][/dbname][?param=value&...]`.
    /// The error message never contains the URL (it may hold a password).
    pub fn parse_url(s: &str) -> Result<ConnInfo, String> {
        let url = Url::parse(s.trim()).map_err(|e| format!("not a valid URL ({e})"))?;
        if url.scheme() != "postgresql" && url.scheme() != "postgres" {
            return Err(format!(
                "scheme must be postgresql:// or postgres://, not {}://",
                url.scheme()
            ));
        }
        let decode = |v: &str| -> Result<String, String> {
            percent_decode(v).ok_or_else(|| "bad percent-encoding".to_string())
        };
        let mut host = match url.host_str() {
            Some(h) if h.starts_with('[') && h.ends_with(']') => h[1..h.len() - 1].to_string(),
            Some(h) => decode(h)?,
            None => String::new(),
        };
        if host.contains(',') {
            return Err("several hosts in one URL are not supported".into());
        }
        let mut port = url.port().unwrap_or(5432);
        let mut user = decode(url.username())?;
        let mut password = match url.password() {
            Some(p) => Some(decode(p)?),
            None => None,
        };
        let mut dbname = decode(url.path().trim_start_matches('/'))?;
        let mut sslmode = SslMode::Prefer;
        let mut params = Vec::new();
        for (k, v) in url.query_pairs() {
            let (k, v) = (k.into_owned(), v.into_owned());
            match k.as_str() {
                "host" => host = v,
                "port" => port = v.parse().map_err(|_| format!("port {v:?} is not a number"))?,
                "user" => user = v,
                "password" => password = Some(v),
                "dbname" => dbname = v,
                "sslmode" => {
                    sslmode = SslMode::parse(&v).ok_or_else(|| {
                        format!("sslmode {v:?} is not one of disable, allow, prefer, require, verify-ca, verify-full")
                    })?
                }
                _ => params.push((k, v)),
            }
        }
        if host.is_empty() {
            return Err("no host (give host in the URL or ?host=/socket/dir)".into());
        }
        if user.is_empty() {
            user = "postgres".into();
        }
        if dbname.is_empty() {
            return Err("no database name (postgresql://host/DBNAME)".into());
        }
        if port == 0 {
            return Err("port 0 is not valid".into());
        }
        let mut info = ConnInfo::new(host, port, user, password, dbname, sslmode);
        info.params = params;
        Ok(info)
    }

    /// Use `password` when the URL carried none (libpq's PGPASSWORD convention).
    pub fn fill_password(&mut self, password: Option<String>) {
        if self.password.is_none() {
            self.password = password.filter(|p| !p.is_empty());
        }
    }

    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    pub fn is_unix_socket(&self) -> bool {
        self.host.starts_with('/')
    }

    /// The same server and credentials, another database.
    pub fn with_dbname(&self, dbname: &str) -> ConnInfo {
        ConnInfo {
            dbname: dbname.to_string(),
            ..self.clone()
        }
    }

    fn render(&self, password: Option<&str>) -> String {
        let mut s = String::from("postgresql://");
        s.push_str(&pct(&self.user));
        if let Some(p) = password {
            s.push(':');
            s.push_str(p);
        }
        s.push('@');
        let mut query: Vec<(String, String)> = Vec::new();
        if self.is_unix_socket() {
            query.push(("host".into(), self.host.clone()));
        } else if self.host.contains(':') {
            s.push_str(&format!("[{}]", self.host));
        } else {
            s.push_str(&self.host);
        }
        s.push_str(&format!(":{}/{}", self.port, pct(&self.dbname)));
        query.push(("sslmode".into(), self.sslmode.as_str().into()));
        query.extend(self.params.iter().cloned());
        let q = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(query)
            .finish();
        s.push('?');
        s.push_str(&q);
        s
    }

    /// The URL with the password masked, for logs and messages.
    pub fn redacted(&self) -> String {
        self.render(self.password.as_ref().map(|_| "***"))
    }

    /// The URL without any password: safe on a command line (`pg_dump --dbname=...`).
    pub fn url_without_password(&self) -> String {
        self.render(None)
    }

    /// Environment for a libpq child process: the password goes here, never on argv.
    pub fn libpq_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("PGAPPNAME", "leaflock-backup".to_string())];
        if let Some(p) = &self.password {
            env.push(("PGPASSWORD", p.clone()));
        }
        env
    }
}

fn pct(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_url_and_never_prints_the_password() {
        let c = ConnInfo::parse_url(
            "postgresql://notes:s3cr%40t@db.example:6543/notes?sslmode=require&sslrootcert=/ca.pem",
        )
        .unwrap();
        assert_eq!(c.host, "db.example");
        assert_eq!(c.port, 6543);
        assert_eq!(c.user, "notes");
        assert_eq!(c.password(), Some("s3cr@t"));
        assert_eq!(c.dbname, "notes");
        assert_eq!(c.sslmode, SslMode::Require);
        assert_eq!(
            c.params,
            vec![("sslrootcert".to_string(), "/ca.pem".to_string())]
        );
        for s in [
            c.redacted(),
            c.url_without_password(),
            format!("{c:?}"),
            format!("{c}"),
        ] {
            assert!(!s.contains("s3cr"), "{s}");
        }
        assert!(c.redacted().contains(":***@"));
        assert_eq!(
            c.url_without_password(),
            "postgresql://notes@db.example:6543/notes?sslmode=require&sslrootcert=%2Fca.pem"
        );
    }

    #[test]
    fn unix_socket_and_defaults() {
        let c = ConnInfo::parse_url("postgres:///leaflock?host=/run/postgresql").unwrap();
        assert!(c.is_unix_socket());
        assert_eq!(c.port, 5432);
        assert_eq!(c.user, "postgres");
        assert_eq!(c.sslmode, SslMode::Prefer);
        assert!(c
            .url_without_password()
            .contains("host=%2Frun%2Fpostgresql"));
    }

    #[test]
    fn rejects_bad_urls_without_echoing_them() {
        for bad in [
            "mysql://u:pw@h/db",
            "postgresql://u:pw@h:99999/db",
            "postgresql://u:pw@h/db?sslmode=maybe",
            "postgresql://u:pw@h",
            "not a url",
        ] {
            let e = ConnInfo::parse_url(bad).unwrap_err();
            assert!(!e.contains("pw"), "{e}");
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

        #[test]
        fn parse_url_never_panics(s in any::<String>()) {
            let _ = ConnInfo::parse_url(&s);
        }

        #[test]
        fn url_shaped_input_never_panics_and_never_leaks_the_password(
            user in "[a-zA-Z0-9%@:._-]{0,12}",
            pw in "[a-zA-Z0-9%@:/?#._-]{1,12}",
            host in "[a-zA-Z0-9.:\\[\\]%-]{0,16}",
            rest in "[a-zA-Z0-9/?=&%._-]{0,24}",
        ) {
            let url = format!("postgresql://{user}:{pw}@{host}{rest}");
            if let Ok(c) = ConnInfo::parse_url(&url) {
                if let Some(p) = c.password().filter(|p| p.len() >= 4) {
                    prop_assert!(!c.redacted().contains(p), "{}", c.redacted());
                    let needle = format!(":{p}@");
                    prop_assert!(!c.url_without_password().contains(&needle));
                }
            }
        }
    }
}

//! The source database: connecting (TLS as libpq's sslmode says), reading the server
//! version, and pinning a snapshot whose exact per-table row counts go into the
//! manifest.
//!
//! Invariant: the connection that exported the snapshot stays open, inside its
//! REPEATABLE READ transaction, until pg_dump has exited, so `pg_dump --snapshot`
//! sees exactly the rows that were counted.

use crate::conninfo::{ConnInfo, SslMode};
use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::Client;

/// Rows of one table, counted in the dump's snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableCount {
    pub schema: String,
    pub name: String,
    pub rows: i64,
}

impl TableCount {
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The server's version, as `SHOW server_version` and `server_version_num` say.
#[derive(Debug, Clone)]
pub struct ServerVersion {
    pub text: String,
    pub num: u32,
}

impl ServerVersion {
    pub fn major(&self) -> u32 {
        self.num / 10000
    }
}

/// Open a connection. Errors name the (redacted) server, never the password.
pub async fn connect(conn: &ConnInfo, timeout: Duration) -> Result<Client> {
    connect_as(conn, timeout, "leaflock-backup").await
}

/// [`connect`] with an `application_name` of the caller's choosing (the lock uses it
/// to tell a second run who holds it).
pub async fn connect_as(conn: &ConnInfo, timeout: Duration, app: &str) -> Result<Client> {
    let mut cfg = tokio_postgres::Config::new();
    if conn.is_unix_socket() {
        cfg.host_path(&conn.host);
    } else {
        cfg.host(&conn.host);
    }
    cfg.port(conn.port)
        .user(&conn.user)
        .dbname(&conn.dbname)
        .application_name(app)
        // Like pg_dump's and pg_restore's own sessions: a statement or idle-in-transaction
        // timeout set for the role or database (sensible for the application) must not
        // cancel row counts, kill the snapshot pg_dump imports, or fail a drill.
        .options("-c statement_timeout=0 -c idle_in_transaction_session_timeout=0")
        .connect_timeout(timeout)
        .ssl_mode(match conn.sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Allow | SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
    if let Some(p) = conn.password() {
        cfg.password(p);
    }
    let tls = tls_connector(conn)?;
    let fut = cfg.connect(tls);
    let (client, connection) = tokio::time::timeout(timeout + Duration::from_secs(1), fut)
        .await
        .map_err(|_| anyhow!("timed out after {timeout:?}"))
        .and_then(|r| r.map_err(anyhow::Error::from))
        .with_context(|| format!("cannot connect to PostgreSQL at {}", conn.redacted()))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "database connection closed");
        }
    });
    Ok(client)
}

pub async fn server_version(client: &Client) -> Result<ServerVersion> {
    let text: String = client.query_one("SHOW server_version", &[]).await?.get(0);
    let num: String = client
        .query_one("SHOW server_version_num", &[])
        .await?
        .get(0);
    Ok(ServerVersion {
        text,
        num: num
            .parse()
            .with_context(|| format!("unexpected server_version_num {num:?}"))?,
    })
}

/// What the dump's snapshot holds, as the manifest records it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub id: String,
    pub tables: Vec<TableCount>,
    pub extensions: Vec<String>,
    pub indexes: Vec<String>,
}

/// The relations that are the database's own (for `pg_class c JOIN pg_namespace n`):
/// not in a system, TOAST or temporary schema, not a member of an extension. What is
/// counted and dumped, and what `check` proves the role can read.
pub const USER_RELATION: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema')
                AND n.nspname NOT LIKE 'pg\\_toast%'
                AND n.nspname NOT LIKE 'pg\\_temp\\_%'
                AND NOT EXISTS (SELECT 1 FROM pg_depend d
                                 WHERE d.classid = 'pg_class'::regclass
                                   AND d.objid = c.oid AND d.deptype = 'e')";

/// Begin a REPEATABLE READ transaction on `client`, export its snapshot, and count the
/// rows of every table pg_dump will dump, in that snapshot. The transaction stays open
/// until the client is dropped.
pub async fn pin_snapshot(client: &Client) -> Result<Snapshot> {
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .context("cannot begin the snapshot transaction")?;
    let snapshot: String = client
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .context("pg_export_snapshot() failed")?
        .get(0);
    let rows = client
        .query(
            &format!(
                "SELECT n.nspname::text, c.relname::text
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p')
                AND NOT c.relispartition
                AND {USER_RELATION}
              ORDER BY 1, 2"
            ),
            &[],
        )
        .await
        .context("cannot list tables")?;
    let mut counts = Vec::with_capacity(rows.len());
    for r in rows {
        let mut t = TableCount {
            schema: r.get(0),
            name: r.get(1),
            rows: 0,
        };
        t.rows = client
            .query_one(&format!("SELECT count(*) FROM {}", t.qualified()), &[])
            .await
            .with_context(|| format!("cannot count rows of {}", t.qualified()))?
            .get(0);
        counts.push(t);
    }
    let (extensions, indexes) = schema_objects(client).await?;
    Ok(Snapshot {
        id: snapshot,
        tables: counts,
        extensions,
        indexes,
    })
}

/// Extensions (by name) and indexes (`schema.name`) of user schemas, sorted.
pub async fn schema_objects(client: &Client) -> Result<(Vec<String>, Vec<String>)> {
    let extensions = client
        .query(
            "SELECT extname::text FROM pg_extension WHERE extname <> 'plpgsql' ORDER BY 1",
            &[],
        )
        .await
        .context("cannot list extensions")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let indexes = client
        .query(
            "SELECT schemaname::text || '.' || indexname::text FROM pg_indexes
              WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
                AND schemaname NOT LIKE 'pg\\_toast%' ORDER BY 1",
            &[],
        )
        .await
        .context("cannot list indexes")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok((extensions, indexes))
}

fn tls_connector(conn: &ConnInfo) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS setup")?;
    let config = match conn.sslmode {
        SslMode::VerifyCa | SslMode::VerifyFull => {
            // libpq's roots: sslrootcert, or ~/.postgresql/root.crt; `system` is the
            // system's store.
            let mut roots = rustls::RootCertStore::empty();
            let mut own_roots = Vec::new();
            let param = conn
                .params
                .iter()
                .find(|(k, _)| k == "sslrootcert")
                .map(|(_, v)| v.clone())
                .or_else(|| {
                    std::env::var("PGSSLROOTCERT")
                        .ok()
                        .filter(|v| !v.is_empty())
                });
            match param.as_deref() {
                Some("system") => {
                    let (store, _) = crate::httptls::roots();
                    roots = store;
                }
                other => {
                    let path = match other {
                        Some(p) => std::path::PathBuf::from(p),
                        None => std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default())
                            .join(".postgresql/root.crt"),
                    };
                    let pem = std::fs::read(&path).with_context(|| {
                        format!(
                            "sslmode={}: cannot read the root certificate {} (give sslrootcert=FILE \
                             in the URL, or sslrootcert=system)",
                            conn.sslmode.as_str(),
                            path.display()
                        )
                    })?;
                    for cert in rustls_pki_types_certs(&pem)? {
                        own_roots.push(cert.clone());
                        // A self-signed server certificate is its own root for libpq; webpki
                        // may refuse it as a trust anchor only later, as an end entity.
                        let _ = roots.add(cert);
                    }
                    if own_roots.is_empty() {
                        anyhow::bail!("no certificate in {}", path.display());
                    }
                }
            }
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .context("TLS verifier")?;
            let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> =
                Arc::new(LibpqVerifier {
                    inner: verifier,
                    own_roots,
                    check_name: conn.sslmode == SslMode::VerifyFull,
                });
            builder
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth()
        }
        // libpq's require/prefer encrypt without verifying the server's certificate.
        _ => {
            if conn.sslmode == SslMode::Require {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    tracing::warn!(
                        server = %conn.redacted(),
                        "sslmode=require encrypts but does not verify the server's certificate: a \
                         man in the middle would receive the password; use sslmode=verify-full with \
                         sslrootcert=FILE (the server's CA, or its self-signed certificate)"
                    );
                });
            }
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
                .with_no_client_auth()
        }
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

fn rustls_pki_types_certs(pem: &[u8]) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("cannot parse PEM certificates: {e:?}"))
}

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// sslmode=require semantics: encrypted, server identity not checked.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// sslmode=verify-ca and verify-full as libpq means them: the chain must verify to a
/// root of sslrootcert (a self-signed server certificate listed there is its own root),
/// and with verify-full the host name must match.
#[derive(Debug)]
struct LibpqVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    own_roots: Vec<CertificateDer<'static>>,
    check_name: bool,
}

/// One DER element at the start of `d`: (tag, contents, rest).
fn der(d: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, d) = d.split_first()?;
    let (&len, mut d) = d.split_first()?;
    let len = if len < 0x80 {
        len as usize
    } else {
        let n = (len & 0x7f) as usize;
        if n == 0 || n > 4 || d.len() < n {
            return None;
        }
        let v = d[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        d = &d[n..];
        v
    };
    (d.len() >= len).then(|| (tag, &d[..len], &d[len..]))
}

/// An X.509 time (UTCTime or GeneralizedTime) as Unix seconds.
fn der_time(tag: u8, v: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(v).ok()?.trim_end_matches('Z');
    let full = match tag {
        0x17 => {
            let yy: u32 = s.get(..2)?.parse().ok()?;
            format!("{}{s}", if yy >= 50 { "19" } else { "20" })
        }
        0x18 => s.to_string(),
        _ => return None,
    };
    let t = chrono::NaiveDateTime::parse_from_str(&full, "%Y%m%d%H%M%S").ok()?;
    u64::try_from(t.and_utc().timestamp()).ok()
}

/// notBefore and notAfter of a certificate, as Unix seconds.
fn x509_validity(cert: &[u8]) -> Option<(u64, u64)> {
    let (_, c, _) = der(cert)?;
    let (_, tbs, _) = der(c)?;
    let mut rest = tbs;
    let (tag, _, r) = der(rest)?;
    if tag == 0xa0 {
        rest = r; // version
    }
    let (_, _, r) = der(rest)?; // serial
    let (_, _, r) = der(r)?; // signature algorithm
    let (_, _, r) = der(r)?; // issuer
    let (_, validity, _) = der(r)?;
    let (t1, v1, r) = der(validity)?;
    let (t2, v2, _) = der(r)?;
    Some((der_time(t1, v1)?, der_time(t2, v2)?))
}

impl ServerCertVerifier for LibpqVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name_error = |e: &rustls::Error| {
            matches!(
                e,
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName
                        | rustls::CertificateError::NotValidForNameContext { .. },
                )
            )
        };
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Ok(v) => Ok(v),
            Err(e) if name_error(&e) && !self.check_name => Ok(ServerCertVerified::assertion()),
            Err(e)
                if self
                    .own_roots
                    .iter()
                    .any(|r| r.as_ref() == end_entity.as_ref()) =>
            {
                // The server's own self-signed certificate, listed as a root: trusted as
                // itself. Its validity period and (verify-full) name still count.
                let cert = webpki::EndEntityCert::try_from(end_entity).map_err(|_| e.clone())?;
                let parsed = x509_validity(end_entity);
                if let Some((not_before, not_after)) = parsed {
                    let t = now.as_secs();
                    if t < not_before || t > not_after {
                        return Err(rustls::Error::InvalidCertificate(
                            rustls::CertificateError::Expired,
                        ));
                    }
                }
                if self.check_name {
                    cert.verify_is_valid_for_subject_name(server_name)
                        .map_err(|_| {
                            rustls::Error::InvalidCertificate(
                                rustls::CertificateError::NotValidForName,
                            )
                        })?;
                }
                Ok(ServerCertVerified::assertion())
            }
            Err(e) => Err(e),
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

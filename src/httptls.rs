//! TLS trust for this tool's HTTP clients (the Pushgateway, S3 and the AWS credential
//! providers): the system's CA store when it has one, the bundled Mozilla roots
//! (`webpki-root-certs`) when it has none.
//!
//! A minimal host (a Debian without `ca-certificates`, a distroless image) has no CA
//! store at all. A plain `http://` URL must work there, and an `https://` one must still
//! be verified, against the bundled roots, never against nothing. The AWS SDK's own
//! default client would load the system store by itself and, finding it empty, assert
//! (debug builds) or verify against nothing (release builds), so the S3 client is given
//! one built here.

use anyhow::{Context, Result};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;

/// Root certificates that parse as trust anchors: the system's, or the bundled ones
/// when the system has none. Returns them and where they came from, for a debug line.
fn root_certificates() -> (Vec<CertificateDer<'static>>, &'static str) {
    let usable = |certs: Vec<CertificateDer<'static>>| -> Vec<CertificateDer<'static>> {
        certs
            .into_iter()
            .filter(|c| rustls::RootCertStore::empty().add(c.clone()).is_ok())
            .collect()
    };
    let native = usable(rustls_native_certs::load_native_certs().certs);
    if !native.is_empty() {
        return (native, "system");
    }
    (
        usable(webpki_root_certs::TLS_SERVER_ROOT_CERTS.to_vec()),
        "bundled",
    )
}

/// Root certificates as a rustls store: the system's, or the bundled ones when the
/// system has none. Returns the store and where it came from, for a debug line.
pub fn roots() -> (rustls::RootCertStore, &'static str) {
    let (certs, source) = root_certificates();
    let mut store = rustls::RootCertStore::empty();
    store.add_parsable_certificates(certs);
    (store, source)
}

/// One certificate in PEM, as the AWS SDK's trust store takes them.
fn pem(cert: &CertificateDer<'_>) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The HTTP client of the S3 client and the AWS credential providers: rustls with
/// aws-lc, verifying servers against [`roots`]' certificates only (the SDK's own
/// lookup of the system store is switched off).
pub fn aws_http_client() -> Result<aws_smithy_runtime_api::client::http::SharedHttpClient> {
    use aws_smithy_http_client::tls;
    let (certs, source) = root_certificates();
    tracing::debug!(roots = source, count = certs.len(), "S3 client trust store");
    let mut store = tls::TrustStore::empty().with_native_roots(false);
    for cert in &certs {
        store.add_pem_certificate(pem(cert));
    }
    let context = tls::TlsContext::builder()
        .with_trust_store(store)
        .build()
        .context("TLS setup of the S3 client")?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .tls_context(context)
        .build_https())
}

/// A reqwest client builder whose TLS verifies servers against [`roots`].
pub fn reqwest_builder() -> Result<reqwest::ClientBuilder> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let (store, source) = roots();
    tracing::debug!(
        roots = source,
        count = store.len(),
        "HTTP client trust store"
    );
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS setup")?
        .with_root_certificates(store)
        .with_no_client_auth();
    Ok(reqwest::Client::builder().tls_backend_preconfigured(config))
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn always_some_roots() {
        let (store, _) = super::roots();
        assert!(!store.is_empty());
    }

    #[test]
    fn the_bundled_roots_survive_the_pem_round_trip() {
        let bundled = webpki_root_certs::TLS_SERVER_ROOT_CERTS;
        assert!(bundled.len() > 100, "{}", bundled.len());
        for cert in bundled {
            let text = super::pem(cert);
            let back = rustls::pki_types::CertificateDer::from_pem_slice(text.as_bytes())
                .expect("PEM parses");
            assert_eq!(back.as_ref(), cert.as_ref());
        }
    }
}

//! TLS trust for this tool's HTTP clients (the Pushgateway): the system's CA store when
//! it has one, the bundled Mozilla roots (`webpki-roots`) when it has none.
//!
//! A minimal host (a Debian without `ca-certificates`, a distroless image) has no CA
//! store at all. A plain `http://` URL must work there, and an `https://` one must still
//! be verified, against the bundled roots, never against nothing.

use anyhow::{Context, Result};
use std::sync::Arc;

/// Root certificates: the system's, or the bundled ones when the system has none.
/// Returns the store and where it came from, for a debug line.
pub fn roots() -> (rustls::RootCertStore, &'static str) {
    let mut store = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = store.add_parsable_certificates(native.certs);
    if added > 0 {
        return (store, "system");
    }
    store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    (store, "bundled")
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
    #[test]
    fn always_some_roots() {
        let (store, _) = super::roots();
        assert!(!store.is_empty());
    }
}

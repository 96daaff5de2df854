//! gRPC over TLS: the server's side ([`server`]: a certificate that reloads
//! without a restart, optional client certificates) and the clients' side
//! ([`client`]: `billing call`, `admin` and `health` reach an `https://`
//! address).
//!
//! Plaintext stays the default: without `BILLING_TLS_CERT` and
//! `BILLING_TLS_KEY` the server accepts TCP connections exactly as before,
//! and a client address without `https://` connects without TLS.

pub mod client;
pub mod server;

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, anyhow};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use client::ClientTlsArgs;
pub use server::{ServerTls, TlsArgs};

/// Installs ring as the process's crypto provider, once (later calls do
/// nothing). Clients that build their TLS configuration without naming a
/// provider need one installed: reqwest's (the OTLP exporter over https, the
/// JWKS fetch) panics without. `main` and telemetry call it first.
pub fn install_crypto_provider() {
    if CryptoProvider::get_default().is_none() {
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The process's crypto provider if one was installed, else ring: the one
/// provider in the build (rustls deprecates ring's for want of post-quantum
/// key exchange; it is still the one this build has).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default().cloned().unwrap_or_else(|| {
        #[allow(deprecated)]
        Arc::new(rustls::crypto::ring::default_provider())
    })
}

/// Every certificate in PEM `bytes` (read from `path`), at least one.
pub(crate) fn parse_certs(
    path: &Path,
    bytes: &[u8],
) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{}: no PEM certificate in the file", path.display());
    }
    Ok(certs)
}

/// The private key in PEM `bytes` (read from `path`): PKCS#8, PKCS#1 or
/// SEC1. Errors never quote the file: it is key material.
pub(crate) fn parse_key(path: &Path, bytes: &[u8]) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| {
        let why = match e {
            rustls_pki_types::pem::Error::NoItemsFound => "no PEM private key in the file",
            _ => "not a well-formed PEM private key",
        };
        anyhow!("{}: {why}", path.display())
    })
}

/// Reads `path`, saying which file could not be read.
pub(crate) fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))
}

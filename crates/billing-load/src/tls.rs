//! TLS to the service: an `https://` address means TLS, verified against
//! `--ca` (or the system's roots), with a client certificate (`--cert`,
//! `--key`) for a server that requires one. The same flags and variables as
//! `billing call` (whose helper, in billing-server, this copies: the load
//! generator does not depend on the server).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

#[derive(Clone, Debug, Default, clap::Args)]
pub struct ClientTlsArgs {
    /// For an https:// address: a PEM file of the CA certificate(s) to trust
    /// (default: the system's roots).
    #[arg(long = "ca", env = "BILLING_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// For an https:// address: a PEM client certificate, for a server that
    /// requires one (mutual TLS). Needs --key.
    #[arg(long = "cert", env = "BILLING_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --cert.
    #[arg(long = "key", env = "BILLING_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// For an https:// address: the name the server's certificate must carry
    /// (default: the address's host).
    #[arg(long, env = "BILLING_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
}

/// The endpoint of `addr` (`host:port`, `http://…` or `https://…`): over TLS
/// as `tls` says for `https://`, plaintext otherwise.
pub fn endpoint(addr: &str, tls: &ClientTlsArgs) -> anyhow::Result<Endpoint> {
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let endpoint =
        Endpoint::from_shared(uri.clone()).with_context(|| format!("bad address {addr}"))?;
    if !uri.starts_with("https://") {
        return Ok(endpoint);
    }
    let mut config = ClientTlsConfig::new();
    config = match &tls.tls_ca {
        Some(path) => config.ca_certificate(Certificate::from_pem(read(path)?)),
        None => config.with_native_roots(),
    };
    match (&tls.tls_cert, &tls.tls_key) {
        (Some(cert), Some(key)) => {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        (None, None) => {}
        _ => anyhow::bail!("a client certificate needs both --cert and --key"),
    }
    if let Some(name) = &tls.tls_server_name {
        config = config.domain_name(name.clone());
    }
    endpoint
        .tls_config(config)
        .with_context(|| format!("the TLS settings for {addr} (--ca, --cert, --key)"))
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

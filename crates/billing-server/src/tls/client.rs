//! How `billing call`, `billing admin` and `billing health` reach the
//! server: an `https://` address means TLS, verified against `--ca` (or the
//! system's roots), with a client certificate (`--cert`, `--key`) for a
//! server that requires one. Any other address is plaintext, and these
//! settings are not used.

use std::path::PathBuf;

use anyhow::Context as _;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// TLS settings of a client of the gRPC API.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ClientTlsArgs {
    /// For an https:// address: a PEM file of the CA certificate(s) to trust
    /// (default: the system's roots).
    #[arg(long = "ca", env = "BILLING_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// For an https:// address: a PEM client certificate, for a server that
    /// requires one (mutual TLS). Needs --key.
    #[arg(
        long = "cert",
        env = "BILLING_TLS_CERT",
        requires = "tls_key",
        global = true
    )]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --cert.
    #[arg(
        long = "key",
        env = "BILLING_TLS_KEY",
        requires = "tls_cert",
        global = true
    )]
    pub tls_key: Option<PathBuf>,
    /// For an https:// address: the name the server's certificate must carry
    /// (default: the address's host).
    #[arg(long, env = "BILLING_TLS_SERVER_NAME", global = true)]
    pub tls_server_name: Option<String>,
}

/// The endpoint of `addr` (`host:port`, `http://host:port` or
/// `https://host:port`): over TLS as `tls` says for `https://`, plaintext
/// otherwise.
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
    endpoint
        .tls_config(tls.config()?)
        .with_context(|| format!("the TLS settings for {addr} (--ca, --cert, --key)"))
}

impl ClientTlsArgs {
    /// The TLS configuration of an `https://` connection.
    pub fn config(&self) -> anyhow::Result<ClientTlsConfig> {
        let mut config = ClientTlsConfig::new();
        config = match &self.tls_ca {
            Some(path) => config.ca_certificate(Certificate::from_pem(read(path, "CA")?)),
            None => config.with_native_roots(),
        };
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                config = config.identity(Identity::from_pem(
                    read(cert, "client certificate")?,
                    read(key, "client key")?,
                ));
            }
            (None, None) => {}
            _ => anyhow::bail!("a client certificate needs both --cert and --key"),
        }
        if let Some(name) = &self.tls_server_name {
            config = config.domain_name(name.clone());
        }
        Ok(config)
    }
}

fn read(path: &std::path::Path, what: &str) -> anyhow::Result<Vec<u8>> {
    super::read(path, &format!("TLS {what}"))
}

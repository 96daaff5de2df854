//! Connections to PostgreSQL, encrypted and verified the way libpq (psql)
//! does it, from the same connection string: the URL a DBA hands over works
//! unchanged.
//!
//! [`Connector::new`] reads a libpq connection string, either a URL
//! (`postgres://user:pw@host:port/db?sslmode=verify-full&sslrootcert=ca.pem`)
//! or key=value pairs (`host=db user=billing sslmode=require`), and builds,
//! once, a [`tokio_postgres::Config`] and the rustls connector every
//! connection of the service uses: the pool, the command writers, `LISTEN`,
//! health probes, feed leases, the tests' helpers.
//!
//! tokio-postgres knows only `sslmode=disable|prefer|require` and nothing of
//! certificates, so the TLS parameters below are taken out of the string
//! before tokio-postgres reads the rest, and verification is done here:
//!
//! | parameter | meaning |
//! |---|---|
//! | `sslmode` | `disable`: plaintext only. `allow`, `prefer` (the default): TLS when the server offers it, plaintext otherwise, the certificate not verified. `require`: TLS or no connection; the certificate is not verified, unless a root certificate file is there (`sslrootcert`, or `~/.postgresql/root.crt`): then as `verify-ca`. `verify-ca`: TLS, the chain must lead to a root of `sslrootcert`; any host name. `verify-full`: as `verify-ca`, and the certificate must name the host connected to (DNS name or IP address). |
//! | `sslrootcert` | A PEM file of trusted roots; `system` for the operating system's roots (then `sslmode` defaults to `verify-full`, and a weaker one is an error). Default: `~/.postgresql/root.crt` when it exists. `verify-ca`/`verify-full` without any root certificate is an error. |
//! | `sslcert`, `sslkey` | A client certificate (PEM, with its chain) and its key (PEM: PKCS#8, PKCS#1 or SEC1; not group/world readable). Default: `~/.postgresql/postgresql.crt` and `.key`, when the certificate exists. |
//! | `sslsni` | `1` (default): send the host name (SNI) when it is not an IP address; `0`: never. |
//! | `ssl_min_protocol_version`, `ssl_max_protocol_version` | `TLSv1.2` (the default minimum) or `TLSv1.3`; older versions are never spoken (rustls). |
//! | `sslcompression` | Accepted and ignored, as by libpq since PostgreSQL 14. |
//! | `gssencmode` | `disable`/`prefer`/`allow`: accepted (no GSSAPI here, as a libpq built without it); `require`: an error. |
//! | `sslpassword`, `sslcrl`, `sslcrldir`, `sslcertmode=require` | Not supported: an error rather than a silent weakening. |
//!
//! Everything else (`host`, `hostaddr`, `port`, `user`, `password`,
//! `dbname`, `connect_timeout`, `application_name`, `options`,
//! `sslnegotiation`, `channel_binding`, `target_session_attrs`, keepalives,
//! several hosts...) goes to tokio-postgres as it was written.
//!
//! As libpq, TLS is never used on a Unix socket: when every host is a
//! socket directory, the connection is plaintext whatever `sslmode` says.
//!
//! Differences from libpq, all on the safe side or unreachable here: under
//! `prefer`/`allow` the certificate is never verified (libpq verifies it
//! when a root file exists and then falls back to plaintext if it does not
//! verify; neither protects against an active attacker, who can refuse TLS
//! outright), and a failed TLS handshake is not retried in plaintext. The
//! `PGSSLMODE`-style environment variables are not read: the connection
//! string says everything.
//!
//! Secrets: no error of this module contains the password or the connection
//! string; [`redact`] gives a connection string fit for a log line.

//!
//! The module's parts: [`params`] reads the connection string (libpq's
//! parameters, URL or key=value, and [`redact`]); `tls` holds the rustls
//! side (the roots, the client certificate, a verifier per mode); this file
//! is the [`Connector`] both make.

mod params;
mod tls;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use tokio_postgres::config::Host;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

pub use params::{RootCert, SslMode, TlsParams, TlsVersion, parse, redact};

use crate::StoreError;
use tls::{client_config, load_client_cert, load_roots};

/// How a server certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateCheck {
    /// No TLS at all (`disable`, or only Unix sockets).
    Plaintext,
    /// Encrypted, the certificate not checked.
    None,
    /// The chain must lead to a trusted root; any host name.
    Chain,
    /// The chain, and the host name.
    Full,
}

/// The stream of a connection made by a [`Connector`]: plaintext or rustls.
pub type TlsStream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;
/// A connection's driver, to be spawned (or polled, for notifications).
pub type PgConnection = tokio_postgres::Connection<Socket, TlsStream>;

/// A PostgreSQL configuration and the TLS connector for it, built once from
/// a connection string. Cheap to clone (the rustls configuration is shared).
#[derive(Clone)]
pub struct Connector {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    mode: SslMode,
    verification: CertificateCheck,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("target", &self.target())
            .field("sslmode", &self.mode)
            .field("verification", &self.verification)
            .finish()
    }
}

impl Connector {
    /// Reads `conn_str` (see the module's documentation) and the files it
    /// names (root, client certificate and key), and builds the connector.
    /// Fails on a parameter libpq would refuse, a missing root certificate
    /// under `verify-ca`/`verify-full`, or an unreadable file; never with
    /// the password or the string in the message.
    pub fn new(conn_str: &str) -> Result<Self, StoreError> {
        let (config, params) = parse(conn_str)?;
        Self::from_parts(config, &params)
    }

    /// As [`Connector::new`], from an already split string.
    pub fn from_parts(
        mut config: tokio_postgres::Config,
        params: &TlsParams,
    ) -> Result<Self, StoreError> {
        let hosts = config.get_hosts();
        let only_sockets =
            !hosts.is_empty() && hosts.iter().all(|host| matches!(host, Host::Unix(_)));
        let mut mode = params.mode;
        let (verification, roots) = if mode == SslMode::Disable || only_sockets {
            (CertificateCheck::Plaintext, None)
        } else {
            let roots = load_roots(mode, params.root_cert.as_ref())?;
            let verification = match (mode, &roots) {
                (SslMode::Allow | SslMode::Prefer, _) => CertificateCheck::None,
                (SslMode::Require, None) => CertificateCheck::None,
                // libpq: "if a root CA file exists, the behavior of
                // sslmode=require will be the same as that of verify-ca".
                (SslMode::Require, Some(_)) => {
                    mode = SslMode::VerifyCa;
                    CertificateCheck::Chain
                }
                (SslMode::VerifyCa, _) => CertificateCheck::Chain,
                _ => CertificateCheck::Full,
            };
            (verification, roots)
        };
        config.ssl_mode(if verification == CertificateCheck::Plaintext {
            tokio_postgres::config::SslMode::Disable
        } else {
            mode.negotiation()
        });
        let client_auth = if verification == CertificateCheck::Plaintext || params.no_client_cert {
            None
        } else {
            load_client_cert(params.cert.as_deref(), params.key.as_deref())?
        };
        let tls = MakeRustlsConnect::new(client_config(
            params,
            verification,
            roots.map(|(roots, source)| (Arc::new(roots), source)),
            client_auth,
        )?);
        Ok(Self {
            config,
            tls,
            mode,
            verification,
        })
    }

    /// What tokio-postgres connects with (its `sslmode` is only whether TLS
    /// is tried and required).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The TLS connector, for deadpool or `Config::connect`.
    pub fn tls(&self) -> &MakeRustlsConnect {
        &self.tls
    }

    /// The `sslmode` in effect (`require` with a root certificate reads as
    /// `verify-ca`, which it is).
    pub fn ssl_mode(&self) -> SslMode {
        self.mode
    }

    /// How the server's certificate is checked.
    pub fn verification(&self) -> CertificateCheck {
        self.verification
    }

    /// `user@host:port/dbname`, for log lines: no password.
    pub fn target(&self) -> String {
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .map(|host| match host {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        let ports: Vec<String> = self.config.get_ports().iter().map(u16::to_string).collect();
        format!(
            "{}@{}:{}/{}",
            self.config.get_user().unwrap_or(""),
            hosts.join(","),
            ports.join(","),
            self.config.get_dbname().unwrap_or("")
        )
    }

    /// Opens a connection; the caller drives (spawns) the connection half.
    pub async fn connect(&self) -> Result<(Client, PgConnection), tokio_postgres::Error> {
        self.config.connect(self.tls.clone()).await
    }
}

/// `error` and its causes, `: `-separated: tokio-postgres's own message is
/// only the kind ("error performing TLS handshake"), the reason is in its
/// sources. None of them holds the password or the connection string
/// (tokio-postgres names options, never their values).
pub fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

fn config_error(message: String) -> StoreError {
    StoreError::Config(message)
}

fn file_error(what: &str, path: &Path, error: &dyn fmt::Display) -> StoreError {
    config_error(format!("{what} file \"{}\": {error}", path.display()))
}

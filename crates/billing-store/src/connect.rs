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

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_postgres::config::Host;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::StoreError;

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, StoreError> {
        Ok(match value {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(config_error(format!(
                    "invalid sslmode \"{other}\": expected disable, allow, prefer, require, \
                     verify-ca or verify-full"
                )));
            }
        })
    }

    /// libpq's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// tokio-postgres's mode: whether TLS is tried, and whether plaintext
    /// is acceptable. CertificateCheck is this module's.
    fn negotiation(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Pg;
        match self {
            Self::Disable => Pg::Disable,
            Self::Allow | Self::Prefer => Pg::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => Pg::Require,
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where trusted roots come from (`sslrootcert`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file.
    File(PathBuf),
    /// The operating system's roots (`sslrootcert=system`).
    System,
}

/// A TLS protocol version, as `ssl_min_protocol_version` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    V1_0,
    V1_1,
    V1_2,
    V1_3,
}

impl TlsVersion {
    fn parse(key: &str, value: &str) -> Result<Self, StoreError> {
        Ok(match value {
            "TLSv1" => Self::V1_0,
            "TLSv1.1" => Self::V1_1,
            "TLSv1.2" => Self::V1_2,
            "TLSv1.3" => Self::V1_3,
            other => {
                return Err(config_error(format!(
                    "invalid {key} \"{other}\": expected TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3"
                )));
            }
        })
    }
}

/// The TLS parameters of a connection string, as written (defaults not yet
/// applied, files not yet read): what [`parse`] takes out of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsParams {
    /// `sslmode`; libpq's default when absent (`prefer`, or `verify-full`
    /// with `sslrootcert=system`).
    pub mode: SslMode,
    pub root_cert: Option<RootCert>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// `sslsni`.
    pub sni: bool,
    pub min_version: TlsVersion,
    pub max_version: Option<TlsVersion>,
    /// `sslcertmode=disable`: never send a client certificate.
    pub no_client_cert: bool,
}

/// Splits a libpq connection string (URL or key=value) into what
/// tokio-postgres reads and the TLS parameters this module handles.
pub fn parse(conn_str: &str) -> Result<(tokio_postgres::Config, TlsParams), StoreError> {
    let mut taken = Taken::default();
    let rest = if is_url(conn_str) {
        let (base, query) = match conn_str.split_once('?') {
            Some((base, query)) => (base, Some(query)),
            None => (conn_str, None),
        };
        let mut kept = Vec::new();
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            let taken_here = match pair.split_once('=') {
                Some((key, value)) => {
                    taken.take(&percent_decode(key)?, || percent_decode(value))?
                }
                None => false,
            };
            if !taken_here && !pair.is_empty() {
                kept.push(pair);
            }
        }
        if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        }
    } else {
        let mut kept = Vec::new();
        for (key, value) in key_values(conn_str)? {
            if !taken.take(&key, || Ok(value.clone()))? {
                kept.push(format!("{key}='{}'", quote(&value)));
            }
        }
        kept.join(" ")
    };
    let config: tokio_postgres::Config = rest
        .parse()
        // tokio-postgres's messages name options, never their values.
        .map_err(|e: tokio_postgres::Error| config_error(describe(&e)))?;
    Ok((config, taken.finish()?))
}

/// Accumulates the parameters taken out of a connection string (the last
/// of a repeated one wins, as in libpq).
#[derive(Default)]
struct Taken {
    mode: Option<String>,
    root_cert: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    sni: Option<String>,
    min_version: Option<String>,
    max_version: Option<String>,
    cert_mode: Option<String>,
}

impl Taken {
    /// Takes `key` when it is one of this module's; `value` is only asked
    /// for then (and so only decoded then).
    fn take(
        &mut self,
        key: &str,
        value: impl FnOnce() -> Result<String, StoreError>,
    ) -> Result<bool, StoreError> {
        let slot = match key {
            "sslmode" => &mut self.mode,
            "sslrootcert" => &mut self.root_cert,
            "sslcert" => &mut self.cert,
            "sslkey" => &mut self.key,
            "sslsni" => &mut self.sni,
            "ssl_min_protocol_version" => &mut self.min_version,
            "ssl_max_protocol_version" => &mut self.max_version,
            "sslcertmode" => &mut self.cert_mode,
            "sslcompression" => return Ok(true),
            "gssencmode" => {
                return match value()?.as_str() {
                    "disable" | "prefer" | "allow" => Ok(true),
                    "require" => Err(config_error(
                        "gssencmode=require is not supported (no GSSAPI encryption here)".into(),
                    )),
                    other => Err(config_error(format!("invalid gssencmode \"{other}\""))),
                };
            }
            "sslpassword" | "sslcrl" | "sslcrldir" => {
                if value()?.is_empty() {
                    return Ok(true);
                }
                return Err(config_error(format!(
                    "{key} is not supported: {}",
                    match key {
                        "sslpassword" => "give sslkey an unencrypted key file",
                        _ => "certificate revocation lists are not checked",
                    }
                )));
            }
            _ => return Ok(false),
        };
        *slot = Some(value()?);
        Ok(true)
    }

    fn finish(self) -> Result<TlsParams, StoreError> {
        let path = |value: Option<String>| value.filter(|v| !v.is_empty()).map(PathBuf::from);
        let root_cert = self
            .root_cert
            .filter(|v| !v.is_empty())
            .map(|v| match v.as_str() {
                "system" => RootCert::System,
                _ => RootCert::File(PathBuf::from(v)),
            });
        let mode = match self.mode.as_deref() {
            Some(mode) => SslMode::parse(mode)?,
            None if root_cert == Some(RootCert::System) => SslMode::VerifyFull,
            None => SslMode::Prefer,
        };
        if root_cert == Some(RootCert::System) && mode != SslMode::VerifyFull {
            return Err(config_error(format!(
                "weak sslmode \"{mode}\" may not be used with sslrootcert=system (use \"verify-full\")"
            )));
        }
        let sni = match self.sni.as_deref() {
            None | Some("1") => true,
            Some("0") => false,
            Some(other) => {
                return Err(config_error(format!(
                    "invalid sslsni \"{other}\": expected 0 or 1"
                )));
            }
        };
        let min_version = match self.min_version.as_deref() {
            None | Some("") => TlsVersion::V1_2,
            Some(v) => TlsVersion::parse("ssl_min_protocol_version", v)?,
        };
        let max_version = match self.max_version.as_deref() {
            None | Some("") => None,
            Some(v) => Some(TlsVersion::parse("ssl_max_protocol_version", v)?),
        };
        if max_version.is_some_and(|max| max < TlsVersion::V1_2) {
            return Err(config_error(
                "ssl_max_protocol_version below TLSv1.2 is not supported".into(),
            ));
        }
        if max_version.is_some_and(|max| max < min_version) {
            return Err(config_error(
                "invalid SSL protocol version range: ssl_max_protocol_version is below \
                 ssl_min_protocol_version"
                    .into(),
            ));
        }
        let no_client_cert = match self.cert_mode.as_deref() {
            None | Some("allow") => false,
            Some("disable") => true,
            Some("require") => {
                return Err(config_error("sslcertmode=require is not supported".into()));
            }
            Some(other) => {
                return Err(config_error(format!("invalid sslcertmode \"{other}\"")));
            }
        };
        Ok(TlsParams {
            mode,
            root_cert,
            cert: path(self.cert),
            key: path(self.key),
            sni,
            min_version,
            max_version,
            no_client_cert,
        })
    }
}

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

/// The roots `mode` verifies against, and where they came from (for
/// messages): `sslrootcert`, else `~/.postgresql/root.crt` when it exists.
fn load_roots(
    mode: SslMode,
    root_cert: Option<&RootCert>,
) -> Result<Option<(RootCertStore, String)>, StoreError> {
    let verifies = matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull);
    // Under allow/prefer nothing is verified (see the module's
    // documentation): no file is read.
    if matches!(mode, SslMode::Allow | SslMode::Prefer) {
        return Ok(None);
    }
    let path = match root_cert {
        Some(RootCert::System) => {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(config_error(
                    "sslrootcert=system: the system has no trusted root certificates".into(),
                ));
            }
            return Ok(Some((roots, "the system's trusted roots".into())));
        }
        Some(RootCert::File(path)) => path.clone(),
        None => match home_file("root.crt") {
            Some(path) => path,
            None if verifies => {
                return Err(config_error(format!(
                    "could not get home directory to locate root certificate file; either \
                     provide the file (sslrootcert), use the system's trusted roots with \
                     sslrootcert=system, or change sslmode to disable server certificate \
                     verification (sslmode={mode})"
                )));
            }
            None => return Ok(None),
        },
    };
    if !path.exists() {
        if verifies {
            return Err(config_error(format!(
                "root certificate file \"{}\" does not exist; either provide the file, use the \
                 system's trusted roots with sslrootcert=system, or change sslmode to disable \
                 server certificate verification (sslmode={mode})",
                path.display()
            )));
        }
        // libpq: under require, a missing root file means no verification.
        if root_cert.is_some() {
            tracing::warn!(
                sslrootcert = %path.display(),
                "the root certificate file does not exist: sslmode=require encrypts without \
                 verifying the server"
            );
        }
        return Ok(None);
    }
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error("root certificate", &path, &e))?;
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| file_error("root certificate", &path, &e))?;
    }
    if roots.is_empty() {
        return Err(config_error(format!(
            "root certificate file \"{}\" holds no certificate",
            path.display()
        )));
    }
    Ok(Some((roots, format!("\"{}\"", path.display()))))
}

/// The client certificate chain and key, as libpq finds them: `sslcert` (or
/// `~/.postgresql/postgresql.crt`) when the file exists, and then its key,
/// which must exist.
type ClientAuth = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn load_client_cert(
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Option<ClientAuth>, StoreError> {
    let cert_path = match cert {
        Some(path) => path.to_owned(),
        None => match home_file("postgresql.crt") {
            Some(path) => path,
            None => return Ok(None),
        },
    };
    if !cert_path.exists() {
        return Ok(None);
    }
    let key_path = match key {
        Some(path) => path.to_owned(),
        None => home_file("postgresql.key").unwrap_or_default(),
    };
    if !key_path.is_file() {
        return Err(config_error(format!(
            "certificate present, but not private key file \"{}\"",
            key_path.display()
        )));
    }
    check_key_permissions(&key_path)?;
    let chain = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error("client certificate", &cert_path, &e))?;
    if chain.is_empty() {
        return Err(config_error(format!(
            "client certificate file \"{}\" holds no certificate",
            cert_path.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| file_error("private key", &key_path, &e))?;
    Ok(Some((chain, key)))
}

/// libpq's rule: the key is readable by its owner only, or (owned by root)
/// also by its group.
#[cfg(unix)]
fn check_key_permissions(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| file_error("private key", path, &e))?;
    let mode = meta.mode();
    let ok = if meta.uid() == 0 {
        mode & 0o037 == 0
    } else {
        mode & 0o077 == 0
    };
    if ok {
        Ok(())
    } else {
        Err(config_error(format!(
            "private key file \"{}\" has group or world access; file must have permissions \
             u=rw (0600) or less if owned by the current user, or permissions u=rw,g=r (0640) \
             or less if owned by root",
            path.display()
        )))
    }
}

#[cfg(not(unix))]
fn check_key_permissions(_path: &Path) -> Result<(), StoreError> {
    Ok(())
}

fn client_config(
    params: &TlsParams,
    verification: CertificateCheck,
    roots: Option<(Arc<RootCertStore>, String)>,
    client_auth: Option<ClientAuth>,
) -> Result<ClientConfig, StoreError> {
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::V1_2, &rustls::version::TLS12),
        (TlsVersion::V1_3, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(version, _)| {
        *version >= params.min_version && params.max_version.is_none_or(|max| *version <= max)
    })
    .map(|(_, version)| version)
    .collect();
    let (roots, source) = match roots {
        Some((roots, source)) => (Some(roots), source),
        None => (None, String::new()),
    };
    // The process's crypto provider: ring, the only one in the build.
    let builder = ClientConfig::builder_with_protocol_versions(&versions);
    let verifier = Arc::new(Verifier {
        roots: match verification {
            CertificateCheck::Chain | CertificateCheck::Full => roots,
            CertificateCheck::None | CertificateCheck::Plaintext => None,
        },
        check_name: verification == CertificateCheck::Full,
        algorithms: builder.crypto_provider().signature_verification_algorithms,
        source,
    });
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client_auth {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| config_error(format!("client certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    config.enable_sni = params.sni;
    // As libpq (PostgreSQL 17): required by sslnegotiation=direct, harmless
    // otherwise.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

/// The server certificate check of every mode: none (`roots` absent), the
/// chain only (verify-ca), or the chain and the name (verify-full). Handshake
/// signatures are always checked: the server holds the certificate's key.
#[derive(Debug)]
struct Verifier {
    roots: Option<Arc<RootCertStore>>,
    check_name: bool,
    algorithms: WebPkiSupportedAlgorithms,
    /// Where the roots came from, for messages.
    source: String,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(roots) = &self.roots else {
            return Ok(ServerCertVerified::assertion());
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.algorithms.all,
        )
        .map_err(|e| match e {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                rustls::Error::Other(rustls::OtherError(Arc::new(std::io::Error::other(
                    format!(
                        "the server's certificate is not trusted: it is not signed by a root \
                         of {}",
                        self.source
                    ),
                ))))
            }
            other => other,
        })?;
        if self.check_name {
            verify_server_name(&cert, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `~/.postgresql/<name>`, where libpq looks by default.
fn home_file(name: &str) -> Option<PathBuf> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(Path::new(&home).join(".postgresql").join(name))
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

fn is_url(conn_str: &str) -> bool {
    conn_str.starts_with("postgres://") || conn_str.starts_with("postgresql://")
}

fn percent_decode(s: &str) -> Result<String, StoreError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| config_error("invalid percent-encoding in a parameter".into()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| config_error("a parameter is not UTF-8 once percent-decoded".into()))
}

/// The pairs of a key=value connection string, values unquoted (libpq's
/// syntax: `key = value`, `key='quoted \' value'`, backslash escapes).
fn key_values(s: &str) -> Result<Vec<(String, String)>, StoreError> {
    let mut pairs = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(config_error(format!(
                "invalid connection string: missing \"=\" after \"{key}\""
            )));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    None => {
                        return Err(config_error(format!(
                            "invalid connection string: unterminated quoted value of \"{key}\""
                        )));
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

/// `value` escaped for a single-quoted key=value value.
fn quote(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\'', "\\'")
}

/// `conn_str` with its password replaced by `***`, for messages and logs.
/// A string that does not parse becomes `<connection string>`.
pub fn redact(conn_str: &str) -> String {
    if is_url(conn_str) {
        let (base, query) = match conn_str.split_once('?') {
            Some((base, query)) => (base, Some(query)),
            None => (conn_str, None),
        };
        let scheme_end = base.find("://").map_or(0, |i| i + 3);
        let authority_end = base[scheme_end..]
            .find('/')
            .map_or(base.len(), |i| scheme_end + i);
        let authority = &base[scheme_end..authority_end];
        let mut out = base[..scheme_end].to_owned();
        match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => {
                match userinfo.split_once(':') {
                    Some((user, _)) => out.push_str(&format!("{user}:***")),
                    None => out.push_str(userinfo),
                }
                out.push('@');
                out.push_str(hosts);
            }
            None => out.push_str(authority),
        }
        out.push_str(&base[authority_end..]);
        if let Some(query) = query {
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key == "password" || key == "sslpassword" => {
                        format!("{key}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            out.push('?');
            out.push_str(&pairs.join("&"));
        }
        out
    } else {
        match key_values(conn_str) {
            Ok(pairs) => pairs
                .into_iter()
                .map(|(key, value)| {
                    if key == "password" || key == "sslpassword" {
                        format!("{key}=***")
                    } else {
                        format!("{key}='{}'", quote(&value))
                    }
                })
                .collect::<Vec<_>>()
                .join(" "),
            Err(_) => "<connection string>".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_unquote_and_escape() {
        assert_eq!(
            key_values(r"host = db  password='a b\'c' user=x\ y").unwrap(),
            vec![
                ("host".to_owned(), "db".to_owned()),
                ("password".to_owned(), "a b'c".to_owned()),
                ("user".to_owned(), "x y".to_owned()),
            ]
        );
        assert!(key_values("host").is_err());
        assert!(key_values("password='open").is_err());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("%2Fetc%2Fca.pem").unwrap(), "/etc/ca.pem");
        assert!(percent_decode("%zz").is_err());
    }
}

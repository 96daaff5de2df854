//! The rustls side of a connection: the roots a mode verifies against, the
//! client certificate, and the verifier of each mode (none, the chain only,
//! the chain and the host name).

use std::path::Path;
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

use super::params::{RootCert, SslMode, TlsParams, TlsVersion, home_file};
use super::{CertificateCheck, config_error, file_error};
use crate::StoreError;

/// The roots `mode` verifies against, and where they came from (for
/// messages): `sslrootcert`, else `~/.postgresql/root.crt` when it exists.
pub(super) fn load_roots(
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

pub(super) fn load_client_cert(
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

pub(super) fn client_config(
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

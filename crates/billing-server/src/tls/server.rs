//! The gRPC listener over TLS.
//!
//! - Only TLS 1.3 and 1.2, ALPN `h2`, on rustls (ring).
//! - The certificate reloads: a background task reads the files at their
//!   paths every `BILLING_TLS_RELOAD_INTERVAL_MS` (1 s) and swaps in a new key
//!   pair when their contents changed, both parse and the key matches the
//!   certificate. Watching the path rather than the inode covers both ways
//!   certificates are rotated: Kubernetes renames a symlink (`..data`) over
//!   a mounted secret, cert-manager and others rewrite the files in place.
//!   New connections get the new certificate, open ones carry on; a bad pair
//!   (half written, mismatched) is refused with one warning and the previous
//!   one keeps serving.
//! - With `BILLING_TLS_CLIENT_CA`, a client certificate signed by that CA is
//!   mandatory (mutual TLS); the CA file reloads the same way.
//! - The handshake never holds up the accept loop: each runs in a task of
//!   its own, with a deadline, and only finished TLS streams reach tonic.
//!   Failed handshakes (scanners, plaintext clients, refused client
//!   certificates) are logged at debug and counted in
//!   `billing_tls_handshake_failures_total`.

use std::convert::Infallible;
use std::hash::{Hash as _, Hasher as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use futures::Stream;
use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::{parse_certs, parse_key, provider, read};

/// How long a client has to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in flight at once; connections beyond are closed at once.
const MAX_PENDING_HANDSHAKES: usize = 4_096;

/// TLS for the gRPC listener (the API, health and reflection alike).
/// Without a certificate and key the listener is plaintext.
#[derive(Clone, Debug, clap::Args)]
pub struct TlsArgs {
    /// A PEM certificate chain (the server's certificate first): gRPC is
    /// served over TLS only. Needs --tls-key. Reloaded when the file changes.
    #[arg(long, env = "BILLING_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "BILLING_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): every client must present a certificate signed
    /// by one of them (mutual TLS). Needs --tls-cert. Reloaded when it changes.
    #[arg(long, env = "BILLING_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// How often the certificate, key and client CA files are checked for a
    /// change.
    #[arg(long, env = "BILLING_TLS_RELOAD_INTERVAL_MS", default_value_t = 1_000)]
    pub tls_reload_interval_ms: u64,
}

impl Default for TlsArgs {
    fn default() -> Self {
        Self {
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_reload_interval_ms: 1_000,
        }
    }
}

/// The files TLS is served from.
#[derive(Clone, Debug)]
struct Paths {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

/// The listener's TLS: the current certificate and configuration, and what
/// reloads them.
#[derive(Debug)]
pub struct ServerTls {
    shared: Arc<Shared>,
    /// What the files held when last read (a hash of their contents, or of
    /// the error reading them), so that each change is acted on, and warned
    /// about, once.
    seen: Seen,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    pair: u64,
    client_ca: u64,
}

#[derive(Debug)]
struct Shared {
    paths: Paths,
    interval: Duration,
    resolver: Arc<Resolver>,
    /// Swapped whole when the client CA changes; the certificate changes
    /// under it, in `resolver`.
    config: RwLock<Arc<ServerConfig>>,
}

impl Shared {
    fn config(&self) -> Arc<ServerConfig> {
        self.config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Hands every handshake the current certificate and key.
#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl Resolver {
    fn swap(&self, key: CertifiedKey) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

impl ServerTls {
    /// The TLS `args` describe, or `None` (plaintext) without a certificate.
    /// An error when a file is missing or does not parse, or the key is not
    /// the certificate's: the server does not start.
    pub fn load(args: &TlsArgs) -> anyhow::Result<Option<Self>> {
        let (cert, key) = match (&args.tls_cert, &args.tls_key) {
            (None, None) => {
                if args.tls_client_ca.is_some() {
                    anyhow::bail!(
                        "BILLING_TLS_CLIENT_CA needs TLS: set BILLING_TLS_CERT and BILLING_TLS_KEY too"
                    );
                }
                return Ok(None);
            }
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
            _ => anyhow::bail!("TLS needs both BILLING_TLS_CERT and BILLING_TLS_KEY, or neither"),
        };
        let paths = Paths {
            cert,
            key,
            client_ca: args.tls_client_ca.clone(),
        };
        let cert_pem = read(&paths.cert, "TLS certificate")?;
        let key_pem = read(&paths.key, "TLS key")?;
        let certified = certified_key(&paths, &cert_pem, &key_pem)?;
        let (verifier, client_ca) = match &paths.client_ca {
            Some(path) => {
                let pem = read(path, "TLS client CA")?;
                (Some(client_verifier(path, &pem)?), fingerprint(&[&pem]))
            }
            None => (None, 0),
        };
        let resolver = Arc::new(Resolver {
            current: RwLock::new(Arc::new(certified)),
        });
        let config = server_config(resolver.clone(), verifier)?;
        Ok(Some(Self {
            shared: Arc::new(Shared {
                paths,
                interval: Duration::from_millis(args.tls_reload_interval_ms.max(10)),
                resolver,
                config: RwLock::new(config),
            }),
            seen: Seen {
                pair: fingerprint(&[&cert_pem, &key_pem]),
                client_ca,
            },
        }))
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.shared.paths.client_ca.is_some()
    }

    /// The TLS connections of `listener`, handshaken, for tonic's
    /// `serve_with_incoming_shutdown`. Starts accepting, and reloading the
    /// files; both stop when the stream is dropped (tonic drops it on
    /// shutdown), closing the listener.
    pub fn incoming(
        self,
        listener: TcpListener,
    ) -> impl Stream<Item = Result<TlsStream<TcpStream>, Infallible>> + Send + 'static {
        describe_metrics();
        let (tx, mut rx) = mpsc::channel(128);
        tokio::spawn(reload(self.shared.clone(), self.seen, tx.clone()));
        tokio::spawn(accept(listener, self.shared, tx));
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|stream| stream.map(Ok)))
    }
}

/// Accepts TCP connections until the stream of handshaken ones is dropped,
/// each handshake in a task of its own.
async fn accept(
    listener: TcpListener,
    shared: Arc<Shared>,
    tx: mpsc::Sender<TlsStream<TcpStream>>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = tx.closed() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors, or a connection reset before it was
                // accepted: try again shortly rather than spin.
                tracing::debug!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // See `incoming` in lib.rs: Nagle off, as on the plaintext path.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, %error, "setting TCP_NODELAY failed");
        }
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "too many TLS handshakes in flight: closed the connection");
            handshake_failed("overloaded");
            continue;
        };
        let acceptor = TlsAcceptor::from(shared.config());
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(stream) = handshake(acceptor, tcp, peer).await {
                // Fails only when the server is shutting down.
                let _ = tx.send(stream).await;
            }
        });
    }
}

/// The handshake with `peer`, within [`HANDSHAKE_TIMEOUT`]; `None`, logged at
/// debug and counted, when it fails.
async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "TLS handshake failed");
            handshake_failed("error");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            handshake_failed("timeout");
            None
        }
    }
}

fn handshake_failed(reason: &'static str) {
    metrics::counter!("billing_tls_handshake_failures_total", "reason" => reason).increment(1);
}

fn describe_metrics() {
    metrics::describe_counter!(
        "billing_tls_handshake_failures_total",
        "TLS handshakes on the gRPC port that failed (error), timed out (timeout) or were refused for too many in flight (overloaded)."
    );
    metrics::describe_counter!(
        "billing_tls_reloads_total",
        "Changes to the TLS certificate or client CA files: applied (ok) or refused, the previous ones kept (rejected)."
    );
}

/// Checks the files every `shared.interval` and applies each change that
/// parses, until `tx` (the accept loop's channel) closes.
async fn reload(shared: Arc<Shared>, mut seen: Seen, tx: mpsc::Sender<TlsStream<TcpStream>>) {
    let mut tick = tokio::time::interval(shared.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = tx.closed() => return,
        }
        reload_pair(&shared, &mut seen.pair).await;
        if let Some(path) = &shared.paths.client_ca {
            reload_client_ca(&shared, path, &mut seen.client_ca).await;
        }
    }
}

/// Swaps in the certificate and key when their files changed and make a
/// good pair; warns (once per change) and keeps the old pair otherwise.
async fn reload_pair(shared: &Shared, seen: &mut u64) {
    let paths = &shared.paths;
    let files = (paths.cert.clone(), paths.key.clone());
    let read = read_off_thread(move || {
        let cert = read(&files.0, "TLS certificate")?;
        let key = read(&files.1, "TLS key")?;
        Ok((cert, key))
    })
    .await;
    let now = match &read {
        Ok((cert, key)) => fingerprint(&[cert, key]),
        Err(error) => fingerprint(&[format!("{error:#}").as_bytes()]),
    };
    if now == *seen {
        return;
    }
    *seen = now;
    match read.and_then(|(cert, key)| certified_key(paths, &cert, &key)) {
        Ok(certified) => {
            shared.resolver.swap(certified);
            reloaded("ok");
            tracing::info!(
                cert = %paths.cert.display(),
                "reloaded the TLS certificate: new connections use it"
            );
        }
        Err(error) => {
            reloaded("rejected");
            tracing::warn!(
                cert = %paths.cert.display(),
                key = %paths.key.display(),
                error = format!("{error:#}"),
                "the TLS certificate files changed but are not a usable pair: still serving the previous certificate"
            );
        }
    }
}

/// Rebuilds the configuration when the client CA file changed and parses;
/// warns (once per change) and keeps the old CA otherwise.
async fn reload_client_ca(shared: &Shared, path: &Path, seen: &mut u64) {
    let file = path.to_owned();
    let read = read_off_thread(move || read(&file, "TLS client CA")).await;
    let now = match &read {
        Ok(pem) => fingerprint(&[pem]),
        Err(error) => fingerprint(&[format!("{error:#}").as_bytes()]),
    };
    if now == *seen {
        return;
    }
    *seen = now;
    let config = read
        .and_then(|pem| client_verifier(path, &pem))
        .and_then(|verifier| server_config(shared.resolver.clone(), Some(verifier)));
    match config {
        Ok(config) => {
            *shared
                .config
                .write()
                .unwrap_or_else(PoisonError::into_inner) = config;
            reloaded("ok");
            tracing::info!(
                client_ca = %path.display(),
                "reloaded the TLS client CA: new connections are verified against it"
            );
        }
        Err(error) => {
            reloaded("rejected");
            tracing::warn!(
                client_ca = %path.display(),
                error = format!("{error:#}"),
                "the TLS client CA file changed but is not usable: still verifying against the previous one"
            );
        }
    }
}

/// Runs `read` (file reads) where blocking does not hold up async tasks.
async fn read_off_thread<T: Send + 'static>(
    read: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(read)
        .await
        .context("reading the TLS files")?
}

fn reloaded(result: &'static str) {
    metrics::counter!("billing_tls_reloads_total", "result" => result).increment(1);
}

/// A hash of file contents, to notice a change (nothing secret is kept or
/// logged; a collision would only delay a reload to the next change).
fn fingerprint(parts: &[&[u8]]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for part in parts {
        part.hash(&mut hasher);
    }
    hasher.finish()
}

/// The certificate chain and key, checked to belong together.
fn certified_key(paths: &Paths, cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<CertifiedKey> {
    let chain = parse_certs(&paths.cert, cert_pem)?;
    let key = parse_key(&paths.key, key_pem)?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        anyhow::anyhow!(
            "the key {} does not go with the certificate {}: {e}",
            paths.key.display(),
            paths.cert.display()
        )
    })
}

/// A verifier requiring a client certificate signed by a CA in `pem`.
fn client_verifier(path: &Path, pem: &[u8]) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(path, pem)? {
        roots
            .add(cert)
            .with_context(|| format!("{}: not a usable CA certificate", path.display()))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .with_context(|| format!("the client CA {}", path.display()))
}

/// TLS 1.3 and 1.2, ALPN h2, the certificate from `resolver`.
fn server_config(
    resolver: Arc<Resolver>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> anyhow::Result<Arc<ServerConfig>> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("the TLS protocol versions")?;
    let builder = match verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        tls: TlsArgs,
    }

    #[test]
    fn plaintext_unless_a_certificate_and_key_are_given_together() {
        let cli = Cli::try_parse_from(["billing"]).unwrap();
        assert!(ServerTls::load(&cli.tls).unwrap().is_none());
        assert_eq!(cli.tls.tls_reload_interval_ms, 1_000);
        assert_eq!(
            TlsArgs::default().tls_reload_interval_ms,
            cli.tls.tls_reload_interval_ms
        );
        for args in [
            &["billing", "--tls-cert", "c.pem"][..],
            &["billing", "--tls-key", "k.pem"],
            &["billing", "--tls-client-ca", "ca.pem"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
        let cli =
            Cli::try_parse_from(["billing", "--tls-cert", "c.pem", "--tls-key", "k.pem"]).unwrap();
        let error = ServerTls::load(&cli.tls).unwrap_err();
        assert!(format!("{error:#}").contains("c.pem"), "{error:#}");
    }
}

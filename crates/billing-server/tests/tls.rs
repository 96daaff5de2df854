//! gRPC over TLS, against the real server on a port: a client trusting the
//! CA calls the API and health; a plaintext client, or one trusting another
//! CA, does not get through; with a client CA only a client certificate it
//! signed does; the certificate files replaced under the running server
//! (a Kubernetes secret's symlink swap, a file renamed over the path) are
//! what new connections see within seconds, while a bad replacement leaves
//! the old certificate serving; and `billing call` / `billing health` reach
//! an `https://` address with `--ca`. Certificates are made here with rcgen.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use billing_proto::v1 as pb;
use billing_proto::v1::billing_service_client::BillingServiceClient;
use billing_server::tls::{ClientTlsArgs, TlsArgs};
use billing_server::{Application, ServeConfig};
use billing_testkit::TestDb;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How often the test servers look at their certificate files.
const RELOAD_MS: u64 = 100;
/// How long a replaced certificate may take to be served.
const RELOAD_DEADLINE: Duration = Duration::from_secs(5);

/// A certificate authority.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    name: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self {
            issuer,
            name: name.to_owned(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A server certificate for localhost and 127.0.0.1, with `serial`.
    fn server(&self, serial: u64) -> Leaf {
        self.leaf(
            &["localhost", "127.0.0.1"],
            serial,
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate.
    fn client(&self, name: &str) -> Leaf {
        self.leaf(&[name], 7, ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(&self, names: &[&str], serial: u64, usage: ExtendedKeyUsagePurpose) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{} by {}", names[0], self.name));
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

/// A certificate and its key.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

/// A directory of the test's own for certificate files.
fn scratch() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Replaces `path` at once: written beside it, then renamed over it.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// The server's certificate files laid out as Kubernetes mounts a secret:
/// `tls.crt -> ..data/tls.crt`, `..data -> ..<version>`; a new version is
/// a new directory and one rename of the `..data` symlink.
struct Secret {
    dir: PathBuf,
    versions: usize,
}

impl Secret {
    fn new(leaf: &Leaf) -> Self {
        let mut secret = Self {
            dir: scratch(),
            versions: 0,
        };
        secret.publish(leaf);
        std::os::unix::fs::symlink("..data/tls.crt", secret.cert()).unwrap();
        std::os::unix::fs::symlink("..data/tls.key", secret.key()).unwrap();
        secret
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("tls.key")
    }

    /// A new version of the secret, switched to atomically as the kubelet does.
    fn publish(&mut self, leaf: &Leaf) {
        self.versions += 1;
        let version = format!("..v{}", self.versions);
        let dir = self.dir.join(&version);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("tls.crt"), &leaf.cert_pem).unwrap();
        std::fs::write(dir.join("tls.key"), &leaf.key_pem).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

/// A running server over TLS; stopped when dropped.
struct TlsServer {
    addr: std::net::SocketAddr,
    _db: TestDb,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn tls_args(cert: &Path, key: &Path, client_ca: Option<&Path>) -> TlsArgs {
    TlsArgs {
        tls_cert: Some(cert.to_owned()),
        tls_key: Some(key.to_owned()),
        tls_client_ca: client_ca.map(Path::to_owned),
        tls_reload_interval_ms: RELOAD_MS,
    }
}

async fn config(tls: TlsArgs) -> (ServeConfig, TestDb) {
    let db = TestDb::new().await;
    let mut config = ServeConfig::for_database(&db.url, support::JWT_SECRET);
    config.tls = tls;
    (config, db)
}

async fn serve(tls: TlsArgs) -> TlsServer {
    let (config, db) = config(tls).await;
    let app = Application::build(config).await.expect("build");
    let addr = app.local_addr().expect("gRPC is bound");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    TlsServer {
        addr,
        _db: db,
        stop: Some(stop),
    }
}

/// Client settings trusting `ca` (a PEM file), with a client certificate.
fn trusting(ca: &Path, identity: Option<(&Path, &Path)>) -> ClientTlsArgs {
    ClientTlsArgs {
        tls_ca: Some(ca.to_owned()),
        tls_cert: identity.map(|(cert, _)| cert.to_owned()),
        tls_key: identity.map(|(_, key)| key.to_owned()),
        tls_server_name: None,
    }
}

/// A channel to `addr` as the shipped clients make it.
async fn connect(addr: &str, tls: &ClientTlsArgs) -> Result<Channel, String> {
    billing_server::tls::client::endpoint(addr, tls)
        .map_err(|e| format!("{e:#}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

/// Creates an account as a super admin: an authenticated RPC end to end.
async fn create(channel: Channel) -> Result<pb::BillingAccount, tonic::Status> {
    BillingServiceClient::new(channel)
        .create_billing_account(support::admin_request(pb::CreateBillingAccountRequest {
            customer_id: uuid::Uuid::new_v4().to_string(),
            ..Default::default()
        }))
        .await
        .map(tonic::Response::into_inner)
}

/// Whether a fresh connection with `tls` gets an RPC through.
async fn gets_through(addr: &str, tls: &ClientTlsArgs) -> Result<(), String> {
    let channel = connect(addr, tls).await?;
    create(channel)
        .await
        .map(drop)
        .map_err(|s| format!("{s:?}"))
}

/// The certificate a fresh TLS connection is served, trusting every `cas`.
async fn served_cert(addr: std::net::SocketAddr, cas: &[&Ca]) -> Option<CertificateDer<'static>> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots.add(ca.der()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .ok()?;
    let (_, session) = tls.get_ref();
    assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]), "ALPN h2");
    session.peer_certificates().map(|chain| chain[0].clone())
}

/// Waits until fresh connections are served `expected`.
async fn until_served(addr: std::net::SocketAddr, cas: &[&Ca], expected: &CertificateDer<'_>) {
    let deadline = Instant::now() + RELOAD_DEADLINE;
    loop {
        if served_cert(addr, cas).await.as_ref() == Some(expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the replaced certificate was not served within {RELOAD_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_client_trusting_the_ca_calls_the_api_and_health_over_tls() {
    let ca = Ca::new("billing test CA");
    let leaf = ca.server(1);
    let dir = scratch();
    let cert = write(&dir, "server.crt", &leaf.cert_pem);
    let key = write(&dir, "server.key", &leaf.key_pem);
    let ca_file = write(&dir, "ca.crt", &ca.pem());
    let server = serve(tls_args(&cert, &key, None)).await;
    let port = server.addr.port();

    // A connection that never says anything holds up nobody: handshakes
    // happen off the accept loop.
    let _idle = tokio::net::TcpStream::connect(server.addr).await.unwrap();

    for addr in [
        format!("https://localhost:{port}"),
        format!("https://127.0.0.1:{port}"),
    ] {
        let channel = connect(&addr, &trusting(&ca_file, None))
            .await
            .unwrap_or_else(|e| panic!("{addr}: {e}"));
        let account = create(channel.clone()).await.expect("an RPC over TLS");
        assert!(!account.id.is_empty());
        let health = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health over TLS")
            .into_inner();
        assert_eq!(health.status(), ServingStatus::Serving);
    }
    assert_eq!(
        served_cert(server.addr, &[&ca]).await.as_ref(),
        Some(&leaf.der)
    );
}

#[tokio::test]
async fn plaintext_and_untrusting_clients_do_not_get_through() {
    let ca = Ca::new("billing test CA");
    let other = Ca::new("someone else's CA");
    let leaf = ca.server(1);
    let dir = scratch();
    let cert = write(&dir, "server.crt", &leaf.cert_pem);
    let key = write(&dir, "server.key", &leaf.key_pem);
    let other_file = write(&dir, "other.crt", &other.pem());
    let ca_file = write(&dir, "ca.crt", &ca.pem());
    let server = serve(tls_args(&cert, &key, None)).await;
    let port = server.addr.port();

    // Plaintext HTTP/2, as every client spoke before TLS.
    let plaintext = ClientTlsArgs::default();
    for addr in [server.addr.to_string(), format!("http://localhost:{port}")] {
        let result = gets_through(&addr, &plaintext).await;
        assert!(result.is_err(), "plaintext {addr} got through");
    }
    // TLS, but trusting another CA.
    let result = gets_through(
        &format!("https://localhost:{port}"),
        &trusting(&other_file, None),
    )
    .await;
    assert!(result.is_err(), "a client trusting another CA got through");
    // TLS with the right CA but the wrong name.
    let mut wrong_name = trusting(&ca_file, None);
    wrong_name.tls_server_name = Some("billing.example.com".to_owned());
    let result = gets_through(&format!("https://localhost:{port}"), &wrong_name).await;
    assert!(result.is_err(), "a certificate for another name passed");
    // And still the right client does.
    gets_through(
        &format!("https://localhost:{port}"),
        &trusting(&ca_file, None),
    )
    .await
    .expect("after the refusals");
}

#[tokio::test]
async fn with_a_client_ca_only_its_client_certificates_get_through() {
    let ca = Ca::new("billing test CA");
    let client_ca = Ca::new("call control client CA");
    let other = Ca::new("someone else's CA");
    let leaf = ca.server(1);
    let good = client_ca.client("call-control");
    let stranger = other.client("call-control");
    let dir = scratch();
    let cert = write(&dir, "server.crt", &leaf.cert_pem);
    let key = write(&dir, "server.key", &leaf.key_pem);
    let client_ca_file = write(&dir, "client-ca.crt", &client_ca.pem());
    let ca_file = write(&dir, "ca.crt", &ca.pem());
    let good_cert = write(&dir, "good.crt", &good.cert_pem);
    let good_key = write(&dir, "good.key", &good.key_pem);
    let stranger_cert = write(&dir, "stranger.crt", &stranger.cert_pem);
    let stranger_key = write(&dir, "stranger.key", &stranger.key_pem);
    let server = serve(tls_args(&cert, &key, Some(&client_ca_file))).await;
    let addr = format!("https://localhost:{}", server.addr.port());

    let result = gets_through(&addr, &trusting(&ca_file, None)).await;
    assert!(
        result.is_err(),
        "a client without a certificate got through"
    );
    let result = gets_through(
        &addr,
        &trusting(&ca_file, Some((&stranger_cert, &stranger_key))),
    )
    .await;
    assert!(
        result.is_err(),
        "a client certificate from another CA got through"
    );
    gets_through(&addr, &trusting(&ca_file, Some((&good_cert, &good_key))))
        .await
        .expect("a client certificate signed by the client CA");

    // The client CA reloads too: replaced by the other CA, its clients get in
    // and the first one's no longer do.
    replace(&client_ca_file, &other.pem());
    let deadline = Instant::now() + RELOAD_DEADLINE;
    while gets_through(
        &addr,
        &trusting(&ca_file, Some((&stranger_cert, &stranger_key))),
    )
    .await
    .is_err()
    {
        assert!(Instant::now() < deadline, "the new client CA was not used");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let result = gets_through(&addr, &trusting(&ca_file, Some((&good_cert, &good_key)))).await;
    assert!(
        result.is_err(),
        "the replaced client CA still let in its clients"
    );
}

#[tokio::test]
async fn a_replaced_certificate_is_served_to_new_connections_without_a_restart() {
    let first_ca = Ca::new("first CA");
    let second_ca = Ca::new("second CA");
    let first = first_ca.server(1);
    let second = second_ca.server(2);
    let third = first_ca.server(3);
    let mut secret = Secret::new(&first);
    let dir = scratch();
    let first_ca_file = write(&dir, "first.crt", &first_ca.pem());
    let second_ca_file = write(&dir, "second.crt", &second_ca.pem());
    let server = serve(tls_args(&secret.cert(), &secret.key(), None)).await;
    let addr = format!("https://localhost:{}", server.addr.port());

    let before = connect(&addr, &trusting(&first_ca_file, None))
        .await
        .expect("connect with the first certificate");
    create(before.clone()).await.expect("an RPC");
    assert_eq!(
        served_cert(server.addr, &[&first_ca, &second_ca])
            .await
            .as_ref(),
        Some(&first.der)
    );

    // Kubernetes: a new secret version, the `..data` symlink swapped.
    secret.publish(&second);
    until_served(server.addr, &[&first_ca, &second_ca], &second.der).await;
    gets_through(&addr, &trusting(&second_ca_file, None))
        .await
        .expect("the new CA validates the new certificate");
    let result = gets_through(&addr, &trusting(&first_ca_file, None)).await;
    assert!(
        result.is_err(),
        "the old CA validated the new certificate: it was not replaced"
    );
    // The connection opened before carries on.
    create(before.clone())
        .await
        .expect("an RPC on a connection from before the swap");

    // A file renamed over each path (cert-manager, an operator's `mv`).
    replace(&secret.cert(), &third.cert_pem);
    replace(&secret.key(), &third.key_pem);
    until_served(server.addr, &[&first_ca, &second_ca], &third.der).await;
    gets_through(&addr, &trusting(&first_ca_file, None))
        .await
        .expect("the third certificate");
    create(before)
        .await
        .expect("an RPC on a connection from before both swaps");
}

#[tokio::test]
async fn a_bad_replacement_leaves_the_old_certificate_serving() {
    let ca = Ca::new("billing test CA");
    let first = ca.server(1);
    let unrelated = ca.server(2);
    let next = ca.server(3);
    let dir = scratch();
    let cert = write(&dir, "server.crt", &first.cert_pem);
    let key = write(&dir, "server.key", &first.key_pem);
    let ca_file = write(&dir, "ca.crt", &ca.pem());
    let server = serve(tls_args(&cert, &key, None)).await;
    let addr = format!("https://localhost:{}", server.addr.port());
    let settle = Duration::from_millis(RELOAD_MS * 8);

    // A new certificate whose key is not there yet: the key does not match.
    replace(&cert, &next.cert_pem);
    tokio::time::sleep(settle).await;
    assert_eq!(
        served_cert(server.addr, &[&ca]).await.as_ref(),
        Some(&first.der),
        "a certificate without its key was served"
    );
    gets_through(&addr, &trusting(&ca_file, None))
        .await
        .expect("still serving the old pair");

    // Another certificate's key.
    replace(&key, &unrelated.key_pem);
    tokio::time::sleep(settle).await;
    assert_eq!(
        served_cert(server.addr, &[&ca]).await.as_ref(),
        Some(&first.der)
    );

    // Garbage in place of the certificate, and an empty key file.
    replace(&cert, "-----BEGIN CERTIFICATE-----\nnot base64 at all\n");
    replace(&key, "");
    tokio::time::sleep(settle).await;
    assert_eq!(
        served_cert(server.addr, &[&ca]).await.as_ref(),
        Some(&first.der)
    );
    gets_through(&addr, &trusting(&ca_file, None))
        .await
        .expect("still serving the old pair");

    // Once the pair is whole it is taken.
    replace(&cert, &next.cert_pem);
    replace(&key, &next.key_pem);
    until_served(server.addr, &[&ca], &next.der).await;
}

#[tokio::test]
async fn start_up_fails_clearly_on_missing_or_bad_files() {
    let ca = Ca::new("billing test CA");
    let leaf = ca.server(1);
    let other = ca.server(2);
    let dir = scratch();
    let cert = write(&dir, "server.crt", &leaf.cert_pem);
    let key = write(&dir, "server.key", &leaf.key_pem);
    let wrong_key = write(&dir, "other.key", &other.key_pem);
    let missing = dir.join("missing.crt");

    let cases = [
        (tls_args(&missing, &key, None), "missing.crt"),
        (tls_args(&key, &key, None), "server.key"),
        (tls_args(&cert, &wrong_key, None), "does not go with"),
        (tls_args(&cert, &key, Some(&missing)), "missing.crt"),
    ];
    for (tls, expected) in cases {
        let (config, _db) = config(tls).await;
        let error = match Application::build(config).await {
            Ok(_) => panic!("started with bad TLS files (expected {expected:?})"),
            Err(error) => format!("{error:#}"),
        };
        assert!(error.contains(expected), "{error}");
        assert!(!error.contains("PRIVATE KEY"), "key material in {error}");
    }
    let (mut config, _db) = config(TlsArgs::default()).await;
    config.tls.tls_cert = Some(cert);
    let error = Application::build(config)
        .await
        .expect_err("a cert without a key");
    assert!(
        format!("{error:#}").contains("BILLING_TLS_KEY"),
        "{error:#}"
    );
}

#[tokio::test]
async fn billing_call_and_health_reach_an_https_address_with_ca() {
    let ca = Ca::new("billing test CA");
    let leaf = ca.server(1);
    let dir = scratch();
    let cert = write(&dir, "server.crt", &leaf.cert_pem);
    let key = write(&dir, "server.key", &leaf.key_pem);
    let ca_file = write(&dir, "ca.crt", &ca.pem());
    let server = serve(tls_args(&cert, &key, None)).await;
    let port = server.addr.port();
    let tls = trusting(&ca_file, None);
    let token = support::token("admin-alice", "project_super_admin", None);

    billing_server::healthcheck::run(
        &format!("https://localhost:{port}"),
        &tls,
        "",
        Duration::from_secs(5),
    )
    .await
    .expect("billing health --addr https://… --ca");
    billing_server::call::run(
        &format!("https://127.0.0.1:{port}"),
        &tls,
        Some(&token),
        "CreateBillingAccount",
        &format!(r#"{{"customer_id": "{}"}}"#, uuid::Uuid::new_v4()),
    )
    .await
    .expect("billing call --addr https://… --ca");

    // Without --ca the system's roots are trusted, and they do not know the
    // test CA; without https:// the client speaks plaintext.
    let error = billing_server::healthcheck::run(
        &format!("https://localhost:{port}"),
        &ClientTlsArgs::default(),
        "",
        Duration::from_secs(5),
    )
    .await;
    assert!(error.is_err(), "the system roots trusted the test CA");
    let error = billing_server::healthcheck::run(
        &format!("localhost:{port}"),
        &tls,
        "",
        Duration::from_secs(5),
    )
    .await;
    assert!(error.is_err(), "plaintext health got an answer from TLS");
}

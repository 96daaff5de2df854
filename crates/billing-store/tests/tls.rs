//! PostgreSQL over TLS (issue 24): the store against real servers that
//! accept TLS only (`scripts/pg.sh` with `BILLING_PG_SSL_DIR`), with
//! certificates made here: a CA, a server certificate for `localhost` and
//! 127.0.0.1 signed by it, an unrelated CA, and a server certificate for
//! another host name.
//!
//! Needs no `BILLING_TEST_DATABASE_URL`: the servers are this test's own,
//! started under `.dev/` and wiped afterwards (also after a failure).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use billing_domain::RateTable;
use billing_store::connect::{self, CertificateCheck, RootCert, TlsVersion};
use billing_store::{Connector, SslMode, Store};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use support::{add, meta, new_account};
use uuid::Uuid;

/// In every URL: it must never show up in an error.
const PASSWORD: &str = "s3cret-pw";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// A scratch directory under the checkout's `.dev/`, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = repo_root()
            .join(".dev")
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A certificate and its key, as PEM files.
struct Pem {
    cert: PathBuf,
    key: PathBuf,
}

fn write_pem(dir: &Path, stem: &str, cert: &str, key: &KeyPair) -> Pem {
    std::fs::create_dir_all(dir).unwrap();
    let pem = Pem {
        cert: dir.join(format!("{stem}.crt")),
        key: dir.join(format!("{stem}.key")),
    };
    std::fs::write(&pem.cert, cert).unwrap();
    std::fs::write(&pem.key, key.serialize_pem()).unwrap();
    set_mode(&pem.key, 0o600);
    pem
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A leaf for `names`, signed by `issuer`, written as `<dir>/<stem>.crt|key`.
fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
    dir: &Path,
    stem: &str,
) -> Pem {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().copied().unwrap_or("client"),
    );
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    write_pem(dir, stem, &cert.pem(), &key)
}

/// The certificates of every test here.
struct Pki {
    /// The CA that signed both servers' certificates.
    ca: PathBuf,
    /// A CA that signed nothing here.
    other_ca: PathBuf,
    /// `server.crt`/`server.key` for `localhost` and 127.0.0.1.
    server_dir: PathBuf,
    /// `server.crt`/`server.key` for `db.example.com` only.
    other_host_dir: PathBuf,
    /// A client certificate signed by the CA.
    client: Pem,
}

fn pki(dir: &Path) -> Pki {
    let ca_issuer = ca("billing test CA");
    let other = ca("unrelated CA");
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca_issuer.pem()).unwrap();
    let other_ca = dir.join("other-ca.pem");
    std::fs::write(&other_ca, other.pem()).unwrap();
    let server_dir = dir.join("server");
    leaf(
        &ca_issuer,
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
        &server_dir,
        "server",
    );
    let other_host_dir = dir.join("other-host");
    leaf(
        &ca_issuer,
        &["db.example.com"],
        ExtendedKeyUsagePurpose::ServerAuth,
        &other_host_dir,
        "server",
    );
    let client = leaf(
        &ca_issuer,
        &["billing"],
        ExtendedKeyUsagePurpose::ClientAuth,
        &dir.join("client"),
        "client",
    );
    Pki {
        ca: ca_path,
        other_ca,
        server_dir,
        other_host_dir,
        client,
    }
}

/// A PostgreSQL server with TLS on and only `hostssl` lines in pg_hba.conf,
/// wiped when dropped.
struct Server {
    datadir: PathBuf,
    port: u16,
}

impl Server {
    fn start(datadir: PathBuf, first_port: u16, ssl_dir: &Path) -> Self {
        let root = repo_root();
        let port = Command::new(root.join("scripts/free-port.sh"))
            .arg(first_port.to_string())
            .output()
            .unwrap();
        assert!(port.status.success(), "free-port.sh failed");
        let port: u16 = String::from_utf8(port.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // From here on the guard wipes whatever a failed start left.
        let server = Self { datadir, port };
        let started = Command::new(root.join("scripts/pg.sh"))
            .args(["start".as_ref(), server.datadir.as_os_str()])
            .arg(port.to_string())
            .arg("--ephemeral")
            .env("BILLING_PG_SSL_DIR", ssl_dir)
            .output()
            .unwrap();
        assert!(
            started.status.success(),
            "pg.sh start failed: {}",
            String::from_utf8_lossy(&started.stderr)
        );
        server
    }

    /// A URL to this server's `postgres` database as `host`, with `params`.
    fn url(&self, host: &str, params: &str) -> String {
        let url = format!(
            "postgres://postgres:{PASSWORD}@{host}:{}/postgres",
            self.port
        );
        if params.is_empty() {
            url
        } else {
            format!("{url}?{params}")
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("scripts/pg.sh"))
            .args(["wipe".as_ref(), self.datadir.as_os_str()])
            .status();
    }
}

/// Whether the connection `url` makes is encrypted, as the server sees it.
async fn encrypted(url: &str) -> bool {
    let (client, connection) = Connector::new(url).unwrap().connect().await.unwrap();
    tokio::spawn(connection);
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// The error a store over `url` meets on its first use (migrating, as the
/// service's first, on a connection of the pool).
async fn refusal(url: &str) -> String {
    let store = Store::connect(url, 1, RateTable::default()).unwrap();
    // With its causes, as the service's logs (anyhow) show it.
    let error = connect::describe(&store.migrate().await.unwrap_err());
    assert!(
        !error.contains(PASSWORD),
        "an error shows the password: {error}"
    );
    // A connection of its own (writers, LISTEN, probes) fails the same way.
    let direct = Connector::new(url).unwrap().connect().await.err().unwrap();
    assert!(!connect::describe(&direct).contains(PASSWORD));
    eprintln!("refused, as expected: {error}");
    error
}

#[tokio::test]
async fn every_sslmode_against_servers_that_accept_tls_only() {
    let scratch = Scratch::new("tls-test");
    let pki = pki(&scratch.0);
    let ca = pki.ca.display().to_string();
    let other_ca = pki.other_ca.display().to_string();
    let server = Server::start(scratch.0.join("pg-a"), 56620, &pki.server_dir);
    let other_host = Server::start(scratch.0.join("pg-b"), server.port + 1, &pki.other_host_dir);

    // 1. verify-full against the right CA: the whole store works, encrypted.
    let url = server.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let store = Store::connect(&url, 2, RateTable::default()).unwrap();
    store.migrate().await.unwrap();
    let id = Uuid::new_v4();
    store
        .commands()
        .create_account(id, &meta(), &new_account(billing_domain::PlanType::Free))
        .await
        .unwrap()
        .unwrap();
    store
        .commands()
        .execute(id, &meta(), &add(5_000))
        .await
        .unwrap()
        .unwrap();
    let account = store.accounts().account(id).await.unwrap().unwrap();
    assert_eq!(account.balance_credit.0, 5_000);
    assert!(encrypted(&url).await, "the session is not encrypted");
    // The other connections of their own: probe, feed lease.
    let mut probe = store.database_probe();
    probe
        .check(std::time::Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        store
            .feed()
            .acquire_lease("tls-test")
            .await
            .unwrap()
            .is_some()
    );
    // The IP address is in the certificate too.
    let by_ip = server.url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    assert!(encrypted(&by_ip).await);

    // 2. A CA that did not sign the server's certificate: refused, saying so.
    let error = refusal(&server.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={other_ca}"),
    ))
    .await;
    assert!(error.contains("not trusted"), "{error}");
    // libpq: require with a root certificate file is verify-ca.
    let error = refusal(&server.url(
        "localhost",
        &format!("sslmode=require&sslrootcert={other_ca}"),
    ))
    .await;
    assert!(error.contains("not trusted"), "{error}");
    let error = refusal(&server.url(
        "localhost",
        &format!("sslmode=verify-ca&sslrootcert={other_ca}"),
    ))
    .await;
    assert!(error.contains("not trusted"), "{error}");

    // 3. A certificate for another host: verify-full refuses it, verify-ca
    // (chain only) takes it.
    let error = refusal(&other_host.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await;
    assert!(
        error.contains("not valid for name") && error.contains("localhost"),
        "{error}"
    );
    let verify_ca = other_host.url("localhost", &format!("sslmode=verify-ca&sslrootcert={ca}"));
    Store::connect(&verify_ca, 1, RateTable::default())
        .unwrap()
        .migrate()
        .await
        .unwrap();
    assert!(encrypted(&verify_ca).await);

    // 4. Plaintext: the server has no line for it.
    let error = refusal(&server.url("localhost", "sslmode=disable")).await;
    assert!(
        error.contains("pg_hba.conf") && error.contains("no encryption"),
        "{error}"
    );

    // 5. require without a root certificate encrypts without verifying (the
    // unrelated host name's server too); prefer encrypts when offered.
    if home_root_cert_absent() {
        for url in [
            server.url("localhost", "sslmode=require"),
            other_host.url("127.0.0.1", "sslmode=require"),
        ] {
            Store::connect(&url, 1, RateTable::default())
                .unwrap()
                .migrate()
                .await
                .unwrap();
            assert!(encrypted(&url).await);
        }
    }
    for url in [
        server.url("localhost", "sslmode=prefer"),
        server.url("localhost", "sslmode=allow"),
        server.url("localhost", ""),
    ] {
        assert!(encrypted(&url).await, "{url} is not encrypted");
    }

    // A client certificate is loaded and sent (the server does not ask for
    // one here; it must not get in the way).
    let with_client = server.url(
        "localhost",
        &format!(
            "sslmode=verify-full&sslrootcert={ca}&sslcert={}&sslkey={}",
            pki.client.cert.display(),
            pki.client.key.display()
        ),
    );
    assert!(encrypted(&with_client).await);
    drop(store);
    drop(other_host);
    drop(server);
}

fn home_root_cert_absent() -> bool {
    std::env::var_os("HOME")
        .is_none_or(|home| !Path::new(&home).join(".postgresql/root.crt").exists())
}

// 6. Reading connection strings: no server needed.

#[test]
fn sslmodes_parse_as_libpq_reads_them_and_leave_tokio_postgres_the_rest() {
    let base = "postgres://u:pw@db.internal:6432/billing";
    for (mode, expected) in [
        ("disable", SslMode::Disable),
        ("allow", SslMode::Allow),
        ("prefer", SslMode::Prefer),
        ("require", SslMode::Require),
        ("verify-ca", SslMode::VerifyCa),
        ("verify-full", SslMode::VerifyFull),
    ] {
        let (config, params) = connect::parse(&format!(
            "{base}?application_name=x&sslmode={mode}&connect_timeout=3"
        ))
        .unwrap();
        assert_eq!(params.mode, expected);
        assert_eq!(config.get_application_name(), Some("x"));
        assert_eq!(
            config.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(3))
        );
        assert_eq!(config.get_password(), Some(&b"pw"[..]));
        assert_eq!(config.get_dbname(), Some("billing"));
    }
    // Absent: prefer, as libpq.
    let (config, params) = connect::parse(base).unwrap();
    assert_eq!(params.mode, SslMode::Prefer);
    assert_eq!(params.root_cert, None);
    assert_eq!(params.min_version, TlsVersion::V1_2);
    assert!(params.sni);
    assert_eq!(config.get_ports(), &[6432]);

    // Every parameter tokio-postgres does not know is taken out (it would
    // refuse them), percent-decoded.
    let (_, params) = connect::parse(&format!(
        "{base}?sslmode=verify-ca&sslrootcert=%2Fetc%2Fca%20dir%2Froot.pem&sslcert=/c.pem\
         &sslkey=/c.key&sslsni=0&ssl_min_protocol_version=TLSv1.3&sslcompression=0\
         &gssencmode=disable&sslcertmode=allow"
    ))
    .unwrap();
    assert_eq!(
        params.root_cert,
        Some(RootCert::File("/etc/ca dir/root.pem".into()))
    );
    assert_eq!(params.cert, Some("/c.pem".into()));
    assert_eq!(params.key, Some("/c.key".into()));
    assert!(!params.sni);
    assert_eq!(params.min_version, TlsVersion::V1_3);

    // sslrootcert=system: verify-full by default, and nothing weaker.
    let (_, params) = connect::parse(&format!("{base}?sslrootcert=system")).unwrap();
    assert_eq!(params.mode, SslMode::VerifyFull);
    assert_eq!(params.root_cert, Some(RootCert::System));
    for weak in ["require", "verify-ca", "prefer", "disable"] {
        let error = connect::parse(&format!("{base}?sslrootcert=system&sslmode={weak}"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("weak sslmode"), "{error}");
    }

    // An unknown mode: a clear error, without the password or the URL.
    let error = connect::parse(&format!("{base}?sslmode=verify"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("invalid sslmode \"verify\""), "{error}");
    assert!(
        !error.contains("pw@") && !error.contains("db.internal"),
        "{error}"
    );
    for unsupported in ["sslpassword=x", "sslcrl=/crl.pem", "gssencmode=require"] {
        assert!(connect::parse(&format!("{base}?{unsupported}")).is_err());
    }
    // Parameters nobody knows still fail in tokio-postgres, by name only.
    let error = connect::parse(&format!("{base}?nonsense=1"))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("nonsense") && !error.contains("pw"),
        "{error}"
    );
}

#[test]
fn key_value_strings_parse_too() {
    let (config, params) = connect::parse(
        "host=127.0.0.1 port=5433 user=billing password='a b\\'c' dbname=billing \
         sslmode = verify-full sslrootcert='/etc/my ca.pem'",
    )
    .unwrap();
    assert_eq!(params.mode, SslMode::VerifyFull);
    assert_eq!(
        params.root_cert,
        Some(RootCert::File("/etc/my ca.pem".into()))
    );
    assert_eq!(config.get_password(), Some(&b"a b'c"[..]));
    assert_eq!(config.get_user(), Some("billing"));
    assert_eq!(config.get_ports(), &[5433]);
    let error = connect::parse("host=h password=pw sslmode=bogus")
        .unwrap_err()
        .to_string();
    assert!(error.contains("invalid sslmode"), "{error}");
}

#[test]
fn connectors_check_what_they_can_before_connecting() {
    // Plaintext and Unix sockets need no certificates at all.
    let plain = Connector::new("postgres://u:pw@h/db?sslmode=disable").unwrap();
    assert_eq!(plain.verification(), CertificateCheck::Plaintext);
    assert_eq!(
        plain.config().get_ssl_mode(),
        tokio_postgres::config::SslMode::Disable
    );
    let socket = Connector::new("host=/run/postgresql user=u sslmode=verify-full").unwrap();
    assert_eq!(socket.verification(), CertificateCheck::Plaintext);
    // verify-* maps to tokio-postgres's require; prefer stays prefer.
    let prefer = Connector::new("postgres://u@h/db").unwrap();
    assert_eq!(prefer.verification(), CertificateCheck::None);
    assert_eq!(
        prefer.config().get_ssl_mode(),
        tokio_postgres::config::SslMode::Prefer
    );
    // A root certificate named but missing: an error under verify-*,
    // naming the file, never the password.
    let error = Connector::new("postgres://u:pw@h/db?sslmode=verify-full&sslrootcert=/nope.pem")
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("root certificate file \"/nope.pem\" does not exist"),
        "{error}"
    );
    assert!(!error.contains(":pw@"));
    if home_root_cert_absent() {
        let error = Connector::new("postgres://u:pw@h/db?sslmode=verify-ca")
            .unwrap_err()
            .to_string();
        assert!(error.contains("root.crt"), "{error}");
        assert!(!error.contains(":pw@"));
    }

    // Client keys must not be readable by others, as libpq requires.
    let scratch = Scratch::new("tls-keys");
    let pki = pki(&scratch.0);
    let url = format!(
        "postgres://u@localhost/db?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        pki.ca.display(),
        pki.client.cert.display(),
        pki.client.key.display()
    );
    let connector = Connector::new(&url).unwrap();
    assert_eq!(connector.verification(), CertificateCheck::Full);
    assert_eq!(
        connector.config().get_ssl_mode(),
        tokio_postgres::config::SslMode::Require
    );
    let require = Connector::new(&format!(
        "postgres://u@localhost/db?sslmode=require&sslrootcert={}",
        pki.ca.display()
    ))
    .unwrap();
    assert_eq!(require.ssl_mode(), SslMode::VerifyCa);
    assert_eq!(require.verification(), CertificateCheck::Chain);
    set_mode(&pki.client.key, 0o644);
    let error = Connector::new(&url).unwrap_err().to_string();
    assert!(error.contains("group or world access"), "{error}");
}

#[test]
fn redaction_hides_passwords_only() {
    assert_eq!(
        connect::redact("postgres://u:pw@h:1/db?sslmode=require&password=x"),
        "postgres://u:***@h:1/db?sslmode=require&password=***"
    );
    assert_eq!(connect::redact("postgres://u@h/db"), "postgres://u@h/db");
    assert_eq!(
        connect::redact("host=h password='p w' user=u"),
        "host='h' password=*** user='u'"
    );
    let connector = Connector::new("postgres://u:pw@h:5/db").unwrap();
    assert_eq!(connector.target(), "u@h:5/db");
    assert!(!format!("{connector:?}").contains("pw"));
}

//! The publisher against brokers that ask for TLS, and for SASL SCRAM over
//! TLS, as managed Kafka does: every change is delivered through them, and
//! wrong credentials show as the publisher's health going NOT_SERVING while
//! its events wait, never as lost events.
//!
//! Each test starts brokers of its own (nisshi, from `BILLING_TEST_NISSHI`,
//! with `--cert`/`--key` and `--authentication`), with certificates made in
//! the test.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use billing_publisher::KafkaConnection;
use billing_publisher::connection::{SaslCredentials, SaslMechanism, SecurityProtocol};
use billing_server::config::KafkaSecurityArgs;
use billing_server::{Application, Role, ServeConfig};
use billing_testkit::pki::{Ca, TempDir};
use futures::StreamExt as _;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use support::broker::OwnBroker;
use tokio::sync::oneshot;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const USER: &str = "billing-publisher";
const PASSWORD: &str = "correct horse battery staple";

/// A broker listening only for TLS, with a certificate for 127.0.0.1 signed
/// by `ca`, keeping its state in `storage`.
fn tls_broker(ca: &Ca, dir: &Path, storage: &str, extra: &[&str]) -> OwnBroker {
    let (cert, key) = ca.server(&["127.0.0.1", "localhost"]).write(dir, "broker");
    let mut args = vec![
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    OwnBroker::start_with(support::free_addr().port(), storage, &args)
}

/// A database of its own for a broker's topics and users (they must
/// outlive a restart of the broker); dropped with the returned guard.
async fn broker_storage() -> (String, billing_testkit::TestDb) {
    let db = billing_testkit::TestDb::new().await;
    (db.url.clone(), db)
}

/// A SCRAM broker over TLS: the user is made on a broker without
/// authentication on the same storage, which then restarts asking for it
/// (nisshi keeps users in its storage; with authentication on, making one
/// would itself need one).
fn scram_broker(ca: &Ca, dir: &Path, storage: &str) -> OwnBroker {
    let open = OwnBroker::start_on(support::free_addr().port(), storage);
    let nisshi = std::env::var("BILLING_TEST_NISSHI").unwrap();
    let made = Command::new(nisshi)
        .args(["user", "create", "--mechanism", "scram512", "--broker"])
        .arg(format!("tcp://{}", open.address()))
        .args([USER, PASSWORD])
        .output()
        .expect("run nisshi user create");
    assert!(
        made.status.success(),
        "nisshi user create: {}{}",
        String::from_utf8_lossy(&made.stdout),
        String::from_utf8_lossy(&made.stderr)
    );
    drop(open);
    tls_broker(ca, dir, storage, &["--authentication"])
}

fn sasl(password: &str) -> SaslCredentials {
    SaslCredentials {
        mechanism: SaslMechanism::ScramSha512,
        username: USER.to_owned(),
        password: password.to_owned(),
    }
}

/// A running server with the publisher role; stopped when dropped.
struct Running {
    addr: std::net::SocketAddr,
    stop: oneshot::Sender<()>,
    run: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Stops the server and waits until every role has (the publisher's
    /// lease is free for the next one).
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(20), self.run)
            .await
            .expect("the server stops within 20 s")
            .unwrap()
            .unwrap();
    }
}

async fn run(db_url: &str, kafka: KafkaSecurityArgs, topic: &str) -> Running {
    let mut config = ServeConfig::for_database(db_url, support::JWT_SECRET);
    config.roles.push(Role::Publisher);
    config.kafka.security = kafka;
    config.kafka.kafka_topic = topic.to_owned();
    config.kafka.kafka_alerts_topic = format!("{topic}.alerts");
    config.kafka.kafka_digests_topic = format!("{topic}.digests");
    let app = Application::build(config).await.expect("build");
    let addr = app.local_addr().expect("gRPC is served");
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    Running { addr, stop, run }
}

/// The settings a user would give, as variables: the same path as theirs.
fn args(connection: &KafkaConnection, password_file: Option<&Path>) -> KafkaSecurityArgs {
    let mut args = KafkaSecurityArgs::plaintext(Some(connection.brokers.clone()));
    args.kafka_security_protocol = connection.security_protocol.as_str().to_owned();
    args.kafka_ssl_ca_location = connection.ssl_ca_location.clone();
    if let Some(sasl) = &connection.sasl {
        args.kafka_sasl_mechanism = sasl.mechanism.as_str().to_owned();
        args.kafka_sasl_username = Some(sasl.username.clone());
        match password_file {
            Some(path) => args.kafka_sasl_password_file = Some(path.to_owned()),
            None => args.kafka_sasl_password = Some(sasl.password.parse().unwrap()),
        }
    }
    args
}

/// Every account's versions on `topic`, read through `connection`, once
/// `expected` (account -> last version) has arrived or `within` ends.
async fn consume(
    connection: &KafkaConnection,
    topic: &str,
    expected: &BTreeMap<String, i64>,
    within: Duration,
) -> BTreeMap<String, Vec<i64>> {
    let consumer: StreamConsumer = connection
        .client_config()
        .set("group.id", format!("test-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("topic.metadata.refresh.interval.ms", "250")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut got: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut stream = consumer.stream();
    let done = |got: &BTreeMap<String, Vec<i64>>| {
        expected
            .iter()
            .all(|(account, n)| got.get(account).and_then(|v| v.last()) == Some(n))
    };
    while !done(&got) {
        let Ok(Some(message)) = tokio::time::timeout_at(deadline, stream.next()).await else {
            break;
        };
        let Ok(message) = message else { continue };
        let payload: serde_json::Value =
            serde_json::from_slice(message.payload().unwrap_or_default()).unwrap();
        let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
        let version = payload["data"]["version"].as_i64().unwrap();
        let seen = got.entry(key).or_default();
        if seen.last().is_none_or(|last| version > *last) {
            seen.push(version);
        }
    }
    got
}

/// Two accounts with a few changes each; their last versions.
async fn traffic(addr: std::net::SocketAddr) -> BTreeMap<String, i64> {
    use billing_proto::v1 as pb;
    let mut client = support::admin(addr).await;
    let mut expected = BTreeMap::new();
    for n in 0..2 {
        let account = client
            .create_billing_account(pb::CreateBillingAccountRequest {
                customer_id: uuid::Uuid::new_v4().to_string(),
                name: format!("Secure {n}"),
                idempotency_key: format!("create-{}", uuid::Uuid::new_v4()),
                ..Default::default()
            })
            .await
            .expect("create")
            .into_inner();
        let mut version = account.version;
        for k in 0..3 {
            version = client
                .add_balance(pb::AddBalanceRequest {
                    account_id: account.id.clone(),
                    amount_credit: 1_000_000,
                    idempotency_key: format!("top-up-{n}-{k}-{}", uuid::Uuid::new_v4()),
                    ..Default::default()
                })
                .await
                .expect("add balance")
                .into_inner()
                .account
                .expect("the account after")
                .version;
        }
        expected.insert(account.id, version);
    }
    expected
}

async fn publisher_health(addr: std::net::SocketAddr) -> Option<ServingStatus> {
    let channel = support::channel(addr).await;
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "publisher".to_owned(),
        })
        .await
        .ok()
        .map(|reply| reply.into_inner().status())
}

async fn wait_for_health(addr: std::net::SocketAddr, expected: ServingStatus, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let now = publisher_health(addr).await;
        if now == Some(expected) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the publisher is {now:?} after {within:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_every_version(got: &BTreeMap<String, Vec<i64>>, expected: &BTreeMap<String, i64>) {
    for (account, last) in expected {
        assert_eq!(
            got.get(account).cloned().unwrap_or_default(),
            (1..=*last).collect::<Vec<_>>(),
            "account {account}: every version, in order"
        );
    }
}

#[tokio::test]
async fn the_publisher_delivers_through_a_tls_listener_and_a_plaintext_client_gets_nothing() {
    let dir = TempDir::new("kafka-tls");
    let ca = Ca::new("billing test Kafka CA");
    let ca_path = ca.write(dir.path(), "ca.pem");
    let broker = tls_broker(&ca, dir.path(), "memory://nisshi/", &[]);
    let connection = KafkaConnection {
        security_protocol: SecurityProtocol::Ssl,
        ssl_ca_location: Some(ca_path.to_str().unwrap().to_owned()),
        ..KafkaConnection::plaintext(&broker.address())
    };
    let db = billing_testkit::TestDb::new().await;
    let topic = format!("test.tls.{}", uuid::Uuid::new_v4().simple());
    let server = run(&db.url, args(&connection, None), &topic).await;
    wait_for_health(server.addr, ServingStatus::Serving, Duration::from_secs(20)).await;

    let expected = traffic(server.addr).await;
    let got = consume(&connection, &topic, &expected, Duration::from_secs(30)).await;
    assert_every_version(&got, &expected);

    // The listener speaks only TLS: a plaintext client reads nothing.
    let plain = KafkaConnection::plaintext(&broker.address());
    let nothing = consume(&plain, &topic, &expected, Duration::from_secs(3)).await;
    assert!(nothing.is_empty(), "{nothing:?}");

    // And a publisher trusting another CA is not serving.
    let other = Ca::new("another CA");
    let other_path = other.write(dir.path(), "other-ca.pem");
    let distrusting = KafkaConnection {
        ssl_ca_location: Some(other_path.to_str().unwrap().to_owned()),
        ..connection.clone()
    };
    let db2 = billing_testkit::TestDb::new().await;
    let wary = run(&db2.url, args(&distrusting, None), &topic).await;
    wait_for_health(
        wary.addr,
        ServingStatus::NotServing,
        Duration::from_secs(20),
    )
    .await;
}

#[tokio::test]
async fn sasl_scram_over_tls_delivers_and_wrong_credentials_hold_events_back_until_fixed() {
    let dir = TempDir::new("kafka-scram");
    let ca = Ca::new("billing test Kafka CA");
    let ca_path = ca.write(dir.path(), "ca.pem");
    let (storage, _storage_db) = broker_storage().await;
    let broker = scram_broker(&ca, dir.path(), &storage);
    let good = KafkaConnection {
        security_protocol: SecurityProtocol::SaslSsl,
        ssl_ca_location: Some(ca_path.to_str().unwrap().to_owned()),
        sasl: Some(sasl(PASSWORD)),
        ..KafkaConnection::plaintext(&broker.address())
    };
    let wrong = KafkaConnection {
        sasl: Some(sasl("not the password")),
        ..good.clone()
    };
    let db = billing_testkit::TestDb::new().await;
    let topic = format!("test.scram.{}", uuid::Uuid::new_v4().simple());

    // Wrong credentials: the publisher is NOT_SERVING and publishes nothing,
    // while the API goes on taking changes.
    let expected = {
        let server = run(&db.url, args(&wrong, None), &topic).await;
        wait_for_health(
            server.addr,
            ServingStatus::NotServing,
            Duration::from_secs(20),
        )
        .await;
        let expected = traffic(server.addr).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let lag = billing_store::Store::connect(&db.url, 1, Default::default())
            .unwrap()
            .feed()
            .feed_lag(billing_publisher::CHECKPOINT)
            .await
            .unwrap();
        assert!(
            lag.events >= 8,
            "the events wait for the publisher: lag {lag:?}"
        );
        server.stop().await;
        expected
    };
    // Unauthenticated, a consumer reads nothing either.
    let none = consume(&wrong, &topic, &expected, Duration::from_secs(3)).await;
    assert!(none.is_empty(), "{none:?}");

    // Fixed (the password now from a file, as Kubernetes mounts it): every
    // change that waited is delivered, in order.
    let password_file = dir.path().join("sasl-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let server = run(&db.url, args(&good, Some(&password_file)), &topic).await;
    wait_for_health(server.addr, ServingStatus::Serving, Duration::from_secs(20)).await;
    let got = consume(&good, &topic, &expected, Duration::from_secs(30)).await;
    assert_every_version(&got, &expected);
}

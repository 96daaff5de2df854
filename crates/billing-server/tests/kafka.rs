//! The Kafka publisher against a real Kafka-protocol broker: every change on
//! the topic, in order per account, never lost, whatever fails.
//!
//! `make test` starts a broker and sets `BILLING_TEST_KAFKA_BROKERS`; tests
//! that stop a broker start their own from `BILLING_TEST_NISSHI`.

mod support;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use billing_proto::v1 as pb;
use futures::StreamExt;
use pb::ServiceType as S;
use rdkafka::ClientConfig;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers as _;
use serde_json::Value;
use support::broker::OwnBroker;
use support::{TestApp, commit_ms, reserve};

fn brokers() -> String {
    std::env::var("BILLING_TEST_KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!("BILLING_TEST_KAFKA_BROKERS is not set: run the tests with `make test`, which starts a broker")
    })
}

/// Topic names of one test, so tests can share a broker.
fn topics() -> (String, String) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    (
        format!("test.account_updated.{id}"),
        format!("test.balance_alerts.{id}"),
    )
}

/// The server with the publisher role on `brokers` and `topics`.
async fn app_publishing(brokers: &str, (topic, alerts): &(String, String)) -> TestApp {
    let db = billing_testkit::TestDb::new().await;
    let (brokers, topic, alerts) = (brokers.to_owned(), topic.clone(), alerts.clone());
    TestApp::spawn_with(db, move |config| {
        config.roles.push(billing_server::Role::Publisher);
        config.kafka.security.kafka_brokers = Some(brokers);
        config.kafka.kafka_topic = topic;
        config.kafka.kafka_alerts_topic = alerts;
    })
    .await
}

/// A consumed message: key, payload, headers.
type Consumed = (String, Value, BTreeMap<String, String>);

/// Reads `topic` from the beginning until `done` says so, or `within` ends.
async fn consume(
    brokers: &str,
    topic: &str,
    within: Duration,
    done: impl Fn(&[Consumed]) -> bool,
) -> Vec<Consumed> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        // The publisher creates the topic with its first batch, perhaps after
        // this subscribes: look again often (librdkafka's default is every
        // 5 minutes), so the topic is found as soon as it exists.
        .set("topic.metadata.refresh.interval.ms", "250")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut stream = consumer.stream();
    while !done(&seen) {
        let Ok(Some(message)) = tokio::time::timeout_at(deadline, stream.next()).await else {
            break;
        };
        let message = match message {
            Ok(message) => message,
            // The publisher creates the topic with its first batch; until
            // then the broker answers that it does not know it.
            Err(rdkafka::error::KafkaError::MessageConsumption(
                rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
            )) => continue,
            Err(e) => panic!("consuming {topic}: {e}"),
        };
        let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
        let payload: Value = serde_json::from_slice(message.payload().unwrap_or_default()).unwrap();
        let mut headers = BTreeMap::new();
        if let Some(h) = message.headers() {
            for header in h.iter() {
                let value = header
                    .value
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                headers.insert(header.key.to_owned(), value);
            }
        }
        seen.push((key, payload, headers));
    }
    drop(stream);
    seen
}

/// Versions per account after deduplication, in the order first seen.
fn versions_by_account(messages: &[Consumed]) -> BTreeMap<String, Vec<i64>> {
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (key, payload, _) in messages {
        let version = payload["data"]["version"].as_i64().unwrap();
        let seen = out.entry(key.clone()).or_default();
        if seen.last().is_none_or(|last| version > *last) {
            seen.push(version);
        }
    }
    out
}

/// Every account's versions 1..=n have arrived, for the expected n.
fn complete(expected: &BTreeMap<String, i64>) -> impl Fn(&[Consumed]) -> bool + '_ {
    move |seen| {
        let got = versions_by_account(seen);
        expected
            .iter()
            .all(|(account, n)| got.get(account).and_then(|v| v.last()) == Some(n))
    }
}

async fn current_versions(app: &TestApp, accounts: &[String]) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for id in accounts {
        out.insert(id.clone(), app.get(id).await.version);
    }
    out
}

fn assert_in_order(messages: &[Consumed], expected: &BTreeMap<String, i64>) {
    let got = versions_by_account(messages);
    for (account, n) in expected {
        assert_eq!(
            got.get(account),
            Some(&(1..=*n).collect::<Vec<_>>()),
            "account {account}"
        );
    }
}

/// Mixed call-control and admin traffic on one account.
async fn traffic(app: &TestApp, account_id: &str, round: usize) {
    let mut client = app.client.clone();
    let rid = format!("{account_id}-call-{round}");
    client
        .reserve(reserve(&rid, account_id, S::CallPstnOutgoing, 2))
        .await
        .unwrap();
    client.commit(commit_ms(&rid, 61_000)).await.unwrap();
    client
        .debit(pb::DebitRequest {
            account_id: account_id.to_owned(),
            service_type: S::Sms.into(),
            quantity: 2,
            idempotency_key: format!("{rid}-sms"),
            ..Default::default()
        })
        .await
        .unwrap();
    let dropped = format!("{rid}-dropped");
    client
        .reserve(reserve(&dropped, account_id, S::CallVn, 3))
        .await
        .unwrap();
    client
        .release(pb::ReleaseRequest {
            reservation_id: dropped,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn every_change_appears_once_per_version_in_order_per_account() {
    let brokers = brokers();
    let topics = topics();
    let app = app_publishing(&brokers, &topics).await;
    let mut accounts = Vec::new();
    for _ in 0..3 {
        accounts.push(app.account(10_000_000).await.id);
    }
    for round in 0..3 {
        for id in &accounts {
            traffic(&app, id, round).await;
        }
    }
    let mut client = app.client.clone();
    client
        .update_billing_account(pb::UpdateBillingAccountRequest {
            id: accounts[0].clone(),
            low_balance_threshold: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    let expected = current_versions(&app, &accounts).await;
    let messages = consume(
        &brokers,
        &topics.0,
        Duration::from_secs(30),
        complete(&expected),
    )
    .await;
    assert_in_order(&messages, &expected);

    let (key, payload, headers) = &messages[0];
    assert_eq!(payload["event_type"], "account_updated");
    assert_eq!(&payload["data"]["id"], key);
    assert!(payload["data"]["balance_credit"].is_i64());
    assert_eq!(
        headers.get("event_type").map(String::as_str),
        Some("account_updated")
    );
    assert_eq!(
        headers.get("event_id"),
        payload["event_id"].as_str().map(str::to_owned).as_ref()
    );
    assert!(
        headers
            .get("traceparent")
            .is_some_and(|t| t.starts_with("00-") && t.len() == 55)
    );
    let commit = messages
        .iter()
        .find(|(_, p, _)| p["cause"]["event"] == "committed")
        .unwrap();
    assert_eq!(commit.1["cause"]["reference_type"], "call");
    assert_eq!(commit.1["cause"]["actor"]["principal"], "admin-alice");
}

#[tokio::test]
async fn a_low_balance_crossing_alerts_once_and_recovery_once() {
    let brokers = brokers();
    let topics = topics();
    let app = app_publishing(&brokers, &topics).await;
    let account = app.account(25_000_000).await.id;
    let mut client = app.client.clone();
    client
        .update_billing_account(pb::UpdateBillingAccountRequest {
            id: account.clone(),
            low_balance_threshold: Some(20_000_000),
            ..Default::default()
        })
        .await
        .unwrap();
    let sms = |n: usize, quantity: i64| pb::DebitRequest {
        account_id: account.clone(),
        service_type: S::Sms.into(),
        quantity,
        idempotency_key: format!("sms-{n}"),
        ..Default::default()
    };
    // 25M -> 20M (not below) -> 19M (crosses: balance_low) -> 18M (still low).
    client.debit(sms(1, 500)).await.unwrap();
    client.debit(sms(2, 100)).await.unwrap();
    client.debit(sms(3, 100)).await.unwrap();
    // 18M -> 19M (still low) -> 21M (crosses back: balance_recovered) -> 22M.
    for credit in [1_000_000, 2_000_000, 1_000_000] {
        app.add(&account, credit, 0).await;
    }
    let expected = current_versions(&app, std::slice::from_ref(&account)).await;
    // Every change is on the main topic before the alerts are read in full.
    consume(
        &brokers,
        &topics.0,
        Duration::from_secs(30),
        complete(&expected),
    )
    .await;
    let alerts = consume(&brokers, &topics.1, Duration::from_secs(5), |seen| {
        seen.len() > 2
    })
    .await;
    let kinds: Vec<&str> = alerts
        .iter()
        .map(|(_, p, _)| p["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["balance_low", "balance_recovered"]);
    assert_eq!(alerts[0].1["data"]["available_credit"], 19_000_000);
    assert_eq!(alerts[1].1["data"]["available_credit"], 21_000_000);
}

#[tokio::test]
async fn a_stopped_broker_loses_nothing_and_the_rpcs_keep_working() {
    let broker = OwnBroker::start();
    let topics = topics();
    let app = app_publishing(&broker.address(), &topics).await;
    let accounts = [
        app.account(50_000_000).await.id,
        app.account(50_000_000).await.id,
    ];
    traffic(&app, &accounts[0], 0).await;
    // Stop the broker (SIGSTOP: it neither answers nor closes connections),
    // keep charging, then resume it.
    broker.signal("-STOP");
    for round in 1..4 {
        for id in &accounts {
            traffic(&app, id, round).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.signal("-CONT");
    for id in &accounts {
        traffic(&app, id, 9).await;
    }
    let expected = current_versions(&app, &accounts).await;
    let messages = consume(
        &broker.address(),
        &topics.0,
        Duration::from_secs(60),
        complete(&expected),
    )
    .await;
    assert_in_order(&messages, &expected);
}

#[tokio::test]
async fn a_restarted_broker_is_published_to_again_within_seconds_of_its_return() {
    // The broker keeps its topics in a database of its own, as `make run`'s
    // does, so they survive its restart.
    let storage = billing_testkit::TestDb::new().await;
    let port = support::free_addr().port();
    let mut broker = OwnBroker::start_on(port, &storage.url);
    let topics = topics();
    let app = app_publishing(&broker.address(), &topics).await;
    let id = app.account(50_000_000).await.id;
    traffic(&app, &id, 0).await;
    let published = |app: &TestApp| {
        let store = app.store.clone();
        async move {
            store
                .feed()
                .feed_lag(billing_publisher::CHECKPOINT)
                .await
                .unwrap()
                .events
                == 0
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !published(&app).await {
        assert!(
            Instant::now() < deadline,
            "nothing published before the outage"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The broker dies; changes go on; it comes back after a few seconds.
    broker.kill();
    for round in 1..3 {
        traffic(&app, &id, round).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!published(&app).await, "published with no broker?");
    let _restarted = OwnBroker::start_on(port, &storage.url);
    let back = Instant::now();
    while !published(&app).await {
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "nothing published after the broker came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resumed = back.elapsed();
    println!(
        "the publisher resumed {} ms after the broker returned",
        resumed.as_millis()
    );
    // The goal is 2 s; the bound leaves room for a loaded CI machine.
    assert!(
        resumed < Duration::from_secs(4),
        "resumed after {resumed:?}"
    );
    let expected = current_versions(&app, std::slice::from_ref(&id)).await;
    let messages = consume(
        &broker_address(port),
        &topics.0,
        Duration::from_secs(60),
        complete(&expected),
    )
    .await;
    assert_in_order(&messages, &expected);
    drop(broker);
}

fn broker_address(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// Runs `billing serve --roles publisher` as its own process.
/// A publisher process, killed when dropped so a failing test leaves none
/// running.
struct Publisher(Child);

impl Drop for Publisher {
    fn drop(&mut self) {
        kill(self);
    }
}

fn publisher_process(
    db_url: &str,
    brokers: &str,
    (topic, alerts): &(String, String),
    name: &str,
) -> Publisher {
    let child = Command::new(env!("CARGO_BIN_EXE_billing"))
        .args(["serve", "--roles", "publisher"])
        .env(
            "BILLING_DATABASE_URL",
            format!("{db_url}?application_name={name}"),
        )
        .env("BILLING_KAFKA_BROKERS", brokers)
        .env("BILLING_KAFKA_TOPIC", topic)
        .env("BILLING_KAFKA_ALERTS_TOPIC", alerts)
        .env("BILLING_DB_POOL_SIZE", "2")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start a publisher");
    Publisher(child)
}

fn kill(publisher: &mut Publisher) {
    let _ = publisher.0.kill();
    let _ = publisher.0.wait();
}

#[tokio::test]
async fn a_publisher_killed_between_producing_and_storing_its_cursor_leaves_duplicates_never_gaps()
{
    let brokers = brokers();
    let topics = topics();
    let app = TestApp::spawn().await;
    let accounts = [
        app.account(50_000_000).await.id,
        app.account(50_000_000).await.id,
    ];
    let mut killed = 0;
    for round in 0..6 {
        let mut publisher = publisher_process(&app.db.url, &brokers, &topics, "publisher");
        for id in &accounts {
            traffic(&app, id, round).await;
        }
        tokio::time::sleep(Duration::from_millis(150 + 100 * round as u64)).await;
        kill(&mut publisher);
        killed += 1;
    }
    let mut publisher = publisher_process(&app.db.url, &brokers, &topics, "publisher");
    let expected = current_versions(&app, &accounts).await;
    let messages = consume(
        &brokers,
        &topics.0,
        Duration::from_secs(60),
        complete(&expected),
    )
    .await;
    kill(&mut publisher);
    assert_eq!(killed, 6);
    assert_in_order(&messages, &expected);
}

/// How many slices' leases each publisher holds, by its connection's
/// application name (a slice's lease is an exclusive advisory lock on one
/// bigint key; a process's membership is on two keys, and the release
/// before's lease key is held shared).
async fn slices_held(app: &TestApp) -> BTreeMap<String, i64> {
    let client = app.db.client().await;
    client
        .query(
            "SELECT a.application_name, count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
             WHERE l.locktype = 'advisory' AND l.granted AND l.mode = 'ExclusiveLock'
               AND l.objsubid = 1 AND a.datname = current_database()
               AND a.application_name LIKE 'publisher-%'
             GROUP BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Waits until `wanted` holds of the slices held (or fails after 20 s).
async fn wait_slices(app: &TestApp, what: &str, wanted: impl Fn(&BTreeMap<String, i64>) -> bool) {
    let mut held = BTreeMap::new();
    for _ in 0..200 {
        held = slices_held(app).await;
        if wanted(&held) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: {held:?}");
}

#[tokio::test]
async fn of_two_publishers_each_publishes_half_the_slices_and_the_other_takes_them_over_when_it_dies()
 {
    let brokers = brokers();
    let topics = topics();
    let app = TestApp::spawn().await;
    let account = app.account(50_000_000).await.id;
    let mut a = publisher_process(&app.db.url, &brokers, &topics, "publisher-a");
    let mut b = publisher_process(&app.db.url, &brokers, &topics, "publisher-b");
    traffic(&app, &account, 0).await;
    let half = i64::from(billing_store::SLICES / 2);
    wait_slices(&app, "each publisher holds half the slices", |held| {
        held.get("publisher-a") == Some(&half) && held.get("publisher-b") == Some(&half)
    })
    .await;
    kill(&mut a);
    traffic(&app, &account, 1).await;
    let expected = current_versions(&app, std::slice::from_ref(&account)).await;
    let messages = consume(
        &brokers,
        &topics.0,
        Duration::from_secs(60),
        complete(&expected),
    )
    .await;
    assert_in_order(&messages, &expected);
    let every = i64::from(billing_store::SLICES);
    wait_slices(&app, "the survivor took over every slice", |held| {
        held.len() == 1 && held.get("publisher-b") == Some(&every)
    })
    .await;
    kill(&mut b);
}

#[tokio::test]
async fn a_slow_open_write_transaction_does_not_let_the_publisher_skip_its_events() {
    let brokers = brokers();
    let topics = topics();
    let app = app_publishing(&brokers, &topics).await;
    let slow_account = app.account(1_000).await.id;
    let fast_account = app.account(1_000).await.id;
    let slow_id: uuid::Uuid = slow_account.parse().unwrap();
    let version = app.get(&slow_account).await.version;
    let mut slow = app.db.client().await;
    let tx = slow.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO events (event_id, account_id, version, event_type, schema_version, occurred_at,
                             actor_principal, actor_role, payload, balance_credit, balance_token,
                             reserved_credit, reserved_token, available_credit, available_token)
         VALUES ($1, $2, $3, 'account_updated', 1, now(), 'slow', 'test', '{\"type\":\"account_updated\"}',
                 1000, 100, 0, 0, 1000, 100)",
        &[&uuid::Uuid::new_v4(), &slow_id, &(version + 1)],
    )
    .await
    .unwrap();
    for n in 0..3 {
        app.add(&fast_account, 1 + n, 0).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    tx.commit().await.unwrap();
    let mut expected = current_versions(&app, std::slice::from_ref(&fast_account)).await;
    expected.insert(slow_account.clone(), version + 1);
    let messages = consume(
        &brokers,
        &topics.0,
        Duration::from_secs(30),
        complete(&expected),
    )
    .await;
    assert_in_order(&messages, &expected);
}

#[tokio::test]
async fn every_recorded_chain_digest_is_published_to_its_topic() {
    let brokers = brokers();
    let topics = topics();
    let digests_topic = format!("test.chain_digests.{}", uuid::Uuid::new_v4().simple());
    let db = billing_testkit::TestDb::new().await;
    let app = {
        let (brokers, (topic, alerts), digests) =
            (brokers.clone(), topics.clone(), digests_topic.clone());
        TestApp::spawn_with(db, move |config| {
            config.roles.push(billing_server::Role::Publisher);
            config.kafka.security.kafka_brokers = Some(brokers);
            config.kafka.kafka_topic = topic;
            config.kafka.kafka_alerts_topic = alerts;
            config.kafka.kafka_digests_topic = digests;
        })
        .await
    };
    let account = app.account(1_000_000).await;
    let first = app.store.maintenance().record_chain_digest().await.unwrap();
    app.add(&account.id, 5, 0).await;
    let second = app.store.maintenance().record_chain_digest().await.unwrap();
    assert_ne!(first.digest, second.digest);

    let hex = |d: &billing_store::ChainDigest| billing_store::chain::to_hex(&d.digest);
    let wanted = [hex(&first), hex(&second)];
    let seen = consume(&brokers, &digests_topic, Duration::from_secs(30), |seen| {
        wanted
            .iter()
            .all(|w| seen.iter().any(|(_, p, _)| p["digest"] == w.as_str()))
    })
    .await;
    for (digest, recorded) in wanted.iter().zip([&first, &second]) {
        let (key, payload, _) = seen
            .iter()
            .find(|(_, p, _)| p["digest"] == digest.as_str())
            .unwrap_or_else(|| panic!("digest {digest} not published: {seen:?}"));
        assert_eq!(key, "chain_digest");
        assert_eq!(payload["type"], "chain_digest");
        assert_eq!(payload["accounts"], recorded.accounts);
        assert_eq!(payload["events"], recorded.events);
    }
}

//! Partitioned readers: projectors and publishers as real `billing`
//! processes sharing the feed's slices, two or three at a time, one killed
//! and one added while commands keep coming. Every event is projected and
//! published, in order per account, nothing lost (checked against the
//! events table), and the slices spread over the live processes.
//!
//! The publisher's tests need the broker `make test` starts
//! (`BILLING_TEST_KAFKA_BROKERS`).

mod support;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use billing_proto::v1 as pb;
use billing_testkit::TestDb;
use futures::StreamExt as _;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use support::TestApp;

/// Accounts written to while readers come and go.
const ACCOUNTS: usize = 12;
/// Top-ups per account.
const TOP_UPS: usize = 60;

/// A reader process, killed when dropped so a failing test leaves none.
struct Reader(Child);

impl Reader {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a reader runs: its role and the settings it needs.
#[derive(Clone)]
enum Role {
    Projector,
    Publisher { brokers: String, topic: String },
}

impl Role {
    /// The prefix of the readers' connections' application names.
    fn prefix(&self) -> &'static str {
        match self {
            Self::Projector => "projector-",
            Self::Publisher { .. } => "publisher-",
        }
    }
}

/// Starts `billing serve --roles <role>` as its own process, its connections
/// named `name`.
fn start(db: &TestDb, role: &Role, name: &str) -> Reader {
    let mut command = Command::new(env!("CARGO_BIN_EXE_billing"));
    command
        .env(
            "BILLING_DATABASE_URL",
            format!("{}?application_name={name}", db.url),
        )
        .env("BILLING_DB_POOL_SIZE", "2")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    match role {
        Role::Projector => {
            command.args(["serve", "--roles", "projector"]);
        }
        Role::Publisher { brokers, topic } => {
            command
                .args(["serve", "--roles", "publisher"])
                .env("BILLING_KAFKA_BROKERS", brokers)
                .env("BILLING_KAFKA_TOPIC", topic)
                .env("BILLING_KAFKA_ALERTS_TOPIC", format!("{topic}.alerts"));
        }
    }
    Reader(command.spawn().expect("start a reader"))
}

/// How many slices each reader process holds, by its application name (a
/// slice's lease is an exclusive session advisory lock on a bigint key;
/// membership locks are on two keys, and the release before's key is held
/// in shared mode).
async fn slices_held(db: &TestDb, prefix: &str) -> BTreeMap<String, i64> {
    db.client()
        .await
        .query(
            "SELECT a.application_name, count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
             WHERE l.locktype = 'advisory' AND l.granted AND l.mode = 'ExclusiveLock'
               AND l.objsubid = 1 AND a.datname = current_database()
               AND starts_with(a.application_name, $1)
             GROUP BY 1",
            &[&prefix],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// Waits until the slices are spread over exactly the processes `names`:
/// all of them held, each process holding some and none more than its share.
async fn wait_spread(db: &TestDb, prefix: &str, names: &[String]) {
    let slices = i64::from(billing_store::SLICES);
    let share = (slices + names.len() as i64 - 1) / names.len() as i64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let held = slices_held(db, prefix).await;
        let spread = held.len() == names.len()
            && names
                .iter()
                .all(|name| held.get(name).is_some_and(|&n| (1..=share).contains(&n)))
            && held.values().sum::<i64>() == slices;
        if spread {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slices did not spread over {names:?}: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Top-ups on every account, in the background.
fn traffic(app: &TestApp, accounts: &[String]) -> Vec<tokio::task::JoinHandle<()>> {
    accounts
        .iter()
        .map(|id| {
            let (mut client, id) = (app.client.clone(), id.clone());
            tokio::spawn(async move {
                for n in 0..TOP_UPS {
                    client
                        .add_balance(pb::AddBalanceRequest {
                            account_id: id.clone(),
                            amount_credit: 1_000 + n as i64,
                            idempotency_key: format!("{id}-{n}"),
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect()
}

/// `processes` readers of `role`, traffic, one killed and one added while
/// it runs, until the feed is caught up (every slice's lag 0). Returns the
/// app (whose database holds the events) and the accounts.
async fn readers_come_and_go(
    app: &TestApp,
    role: &Role,
    checkpoint: &str,
    processes: usize,
) -> Vec<String> {
    let prefix = role.prefix();
    let mut accounts = Vec::new();
    for _ in 0..ACCOUNTS {
        accounts.push(app.account(0).await.id);
    }
    let mut names: Vec<String> = (0..processes).map(|n| format!("{prefix}{n}")).collect();
    let mut readers: Vec<Reader> = names
        .iter()
        .map(|name| start(&app.db, role, name))
        .collect();
    wait_spread(&app.db, prefix, &names).await;

    let writers = traffic(app, &accounts);
    tokio::time::sleep(Duration::from_millis(400)).await;
    // One killed mid-stream (SIGKILL: its leases end with its connections)...
    readers[0].kill();
    names.remove(0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ... and one added.
    let added = format!("{prefix}{processes}");
    readers.push(start(&app.db, role, &added));
    names.push(added);
    wait_spread(&app.db, prefix, &names).await;
    for writer in writers {
        writer.await.unwrap();
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let lag = app.store.feed().feed_lag(checkpoint).await.unwrap();
        if lag.events == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the readers did not catch up: {lag:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Still spread over the live processes after catching up.
    wait_spread(&app.db, prefix, &names).await;
    drop(readers);
    accounts
}

/// Every account's last version, from the events table.
async fn versions(db: &TestDb) -> BTreeMap<String, i64> {
    db.client()
        .await
        .query(
            "SELECT account_id::text, max(version) FROM events GROUP BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

async fn projectors(processes: usize) {
    let db = TestDb::new().await;
    let app =
        TestApp::spawn_with(db, |config| config.roles = vec![billing_server::Role::Api]).await;
    let accounts = readers_come_and_go(
        &app,
        &Role::Projector,
        billing_store::READ_MODELS,
        processes,
    )
    .await;

    // Every account projected to its last event, and as the fold of its
    // events.
    let client = app.db.client().await;
    let behind: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT account_id, max(version) AS version FROM events GROUP BY 1) e
             FULL JOIN rm_accounts r USING (account_id)
             WHERE r.version IS DISTINCT FROM e.version",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(behind, 0, "every account at its last event");
    for id in &accounts {
        let id: uuid::Uuid = id.parse().unwrap();
        let (projected, _) = billing_testkit::rows::read_model_account(&client, id)
            .await
            .unwrap();
        let events = app.store.feed().account_events(id).await.unwrap();
        let folded =
            billing_domain::Account::fold(id, events.iter().map(|e| (&e.event, e.occurred_at)))
                .unwrap()
                .unwrap();
        assert_eq!(projected, folded);
    }
    // The ledger is what one projector folding every event in one go makes:
    // each entry once, none missing.
    let ledger = |client: tokio_postgres::Client| async move {
        client
            .query(
                "SELECT id::text, account_id::text, version, amount_credit, balance_credit_after
                 FROM ledger_entries ORDER BY id",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| {
                (
                    row.get::<_, String>(0),
                    row.get::<_, String>(1),
                    row.get::<_, i64>(2),
                    row.get::<_, i64>(3),
                    row.get::<_, i64>(4),
                )
            })
            .collect::<Vec<_>>()
    };
    let projected = ledger(app.db.client().await).await;
    assert_eq!(
        projected.len(),
        ACCOUNTS * (TOP_UPS + 1),
        "a token grant and every top-up, each once"
    );
    app.store
        .read_models()
        .rebuild_read_models_with(1_000, |_| {})
        .await
        .unwrap();
    assert_eq!(ledger(app.db.client().await).await, projected);
}

#[tokio::test]
async fn two_projectors_one_killed_and_one_added_project_every_event_once_in_order() {
    projectors(2).await;
}

#[tokio::test]
async fn three_projectors_one_killed_and_one_added_project_every_event_once_in_order() {
    projectors(3).await;
}

/// Every message on `topic` until each account has reached its version.
async fn consume(
    brokers: &str,
    topic: &str,
    expected: &BTreeMap<String, i64>,
) -> Vec<(String, i64)> {
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("topic.metadata.refresh.interval.ms", "250")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut seen: Vec<(String, i64)> = Vec::new();
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut stream = consumer.stream();
    while expected.iter().any(|(id, v)| last.get(id) != Some(v)) {
        let Ok(Some(message)) = tokio::time::timeout_at(deadline, stream.next()).await else {
            panic!("not every version arrived: {last:?}");
        };
        let Ok(message) = message else { continue };
        let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
        let payload: serde_json::Value =
            serde_json::from_slice(message.payload().unwrap_or_default()).unwrap();
        let version = payload["data"]["version"].as_i64().unwrap();
        let at = last.entry(key.clone()).or_default();
        *at = (*at).max(version);
        seen.push((key, version));
    }
    seen
}

async fn publishers(processes: usize) {
    let brokers = std::env::var("BILLING_TEST_KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!("BILLING_TEST_KAFKA_BROKERS is not set: run the tests with `make test`")
    });
    let topic = format!("test.account_updated.{}", uuid::Uuid::new_v4().simple());
    let app = TestApp::spawn().await;
    let role = Role::Publisher {
        brokers: brokers.clone(),
        topic: topic.clone(),
    };
    readers_come_and_go(&app, &role, billing_publisher::CHECKPOINT, processes).await;
    let expected = versions(&app.db).await;
    let seen = consume(&brokers, &topic, &expected).await;
    // Per account: every version, and each first seen in order (a
    // duplicate, at least once, repeats what came before).
    let mut first: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (key, version) in &seen {
        let versions = first.entry(key).or_default();
        if !versions.contains(version) {
            versions.push(*version);
        }
    }
    assert_eq!(first.len(), expected.len(), "every account published");
    for (account, last) in &expected {
        assert_eq!(
            first.get(account.as_str()),
            Some(&(1..=*last).collect::<Vec<_>>()),
            "account {account}: every version, in order"
        );
    }
}

#[tokio::test]
async fn two_publishers_one_killed_and_one_added_publish_every_event_in_order() {
    publishers(2).await;
}

#[tokio::test]
async fn three_publishers_one_killed_and_one_added_publish_every_event_in_order() {
    publishers(3).await;
}

/// One account's events fill one slice; the other seven never get one.
/// Their readers still move their checkpoints up to the feed's head (each
/// short page held all of its slice's events up to the head it read first),
/// so no read, lag query or restart scans back over the events they passed:
/// before, an idle slice read the whole feed from its last event on every
/// read, and PostgreSQL spent most of `make bench`'s hot rows on it.
#[tokio::test]
async fn slices_no_event_falls_in_move_their_checkpoints_to_the_head() {
    let db = TestDb::new().await;
    let app =
        TestApp::spawn_with(db, |config| config.roles = vec![billing_server::Role::Api]).await;
    let mut reader = start(&app.db, &Role::Projector, "projector-0");
    wait_spread(&app.db, "projector-", &["projector-0".to_owned()]).await;
    let id = app.account(0).await.id;
    for writer in traffic(&app, &[id]) {
        writer.await.unwrap();
    }
    let client = app.db.client().await;
    let head: i64 = client
        .query_one("SELECT max(position) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    // Stored at most every 5 s once moved (`STORE_SKIP_EVERY`).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let behind: Vec<String> = client
            .query(
                "SELECT name FROM feed_checkpoints
                 WHERE name LIKE 'read_models/%' AND position < $1 ORDER BY name",
                &[&head],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        if behind.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "slice checkpoints still behind the head: {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    reader.kill();
}

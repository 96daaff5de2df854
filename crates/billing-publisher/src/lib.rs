//! The Kafka publisher role: follows the event feed and produces one
//! `account_updated` message per event (keyed by account id, so in order per
//! account) and the balance alerts events raise. At least once: the cursor
//! moves only after the broker has acknowledged every message up to it, and
//! consumers deduplicate by (account_id, version).
//!
//! - [`message`]: the messages, a pure function of the events.
//! - [`tail`]: a deduplicating consumer (`billing tail`).
//! - [`probe`]: whether the brokers answer (the role's health).
//! - [`connection`]: the brokers and the security settings (TLS, SASL)
//!   every client of ours shares.
//! - [`run`]: the role. One publisher per checkpoint is active at a time (a
//!   lease); stand-bys take over when it dies.

#![forbid(unsafe_code)]

pub mod connection;
pub mod digests;
pub mod message;
pub mod probe;
pub mod tail;

use std::time::Duration;

use billing_store::{FeedWakeup, Lease, Store, StoredEvent};
pub use connection::KafkaConnection;
use futures::future::try_join_all;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::watch;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The feed checkpoint the publisher keeps.
pub const CHECKPOINT: &str = "kafka";

/// Where and how to publish.
#[derive(Clone, Debug)]
pub struct PublisherConfig {
    /// The brokers, and how to reach them (TLS, SASL).
    pub connection: KafkaConnection,
    /// `account_updated` for every change.
    pub topic: String,
    /// `balance_low`, `balance_recovered`, `credit_limit_exceeded`.
    pub alerts_topic: String,
    /// The digests of every hash-chain head the sweeper records.
    pub digests_topic: String,
    /// Partitions of topics this publisher creates.
    pub partitions: i32,
    /// Replicas of topics this publisher creates.
    pub replication_factor: i32,
    /// Events per batch.
    pub batch: i64,
    /// How long librdkafka keeps retrying a message before failing it.
    pub message_timeout_ms: u32,
}

impl PublisherConfig {
    pub fn new(connection: KafkaConnection) -> Self {
        Self {
            connection,
            topic: "billing.account_updated.v1".to_owned(),
            alerts_topic: "billing.balance_alerts.v1".to_owned(),
            digests_topic: "billing.chain_digests.v1".to_owned(),
            partitions: 3,
            replication_factor: 1,
            batch: 2_000,
            message_timeout_ms: 120_000,
        }
    }
}

/// librdkafka's first and longest wait before reconnecting to a broker.
const RECONNECT_BACKOFF_MS: &str = "100";
const RECONNECT_BACKOFF_MAX_MS: &str = "1000";

/// How long to wait before trying again after a failure.
const BACKOFF: Duration = Duration::from_millis(500);
/// How long to wait after a notification, and at least between the starts of
/// two reads while events keep coming, so a burst shares one batch. Each
/// batch costs a feed read and a transaction whatever its size: at 5 ms the
/// read side woke for every second or third command batch and spent more CPU
/// per change than it does at 25, which adds at most 25 ms of lag.
const COALESCE: Duration = Duration::from_millis(25);
/// How often to look for events without a notification.
const POLL: Duration = Duration::from_millis(500);

/// Creates the topics when missing.
pub async fn ensure_topics(config: &PublisherConfig) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = config
        .connection
        .client_config()
        .create()
        .map_err(connection::redacted)?;
    let topics = [&config.topic, &config.alerts_topic, &config.digests_topic].map(|name| {
        NewTopic::new(
            name,
            config.partitions,
            TopicReplication::Fixed(config.replication_factor),
        )
    });
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(15)));
    for result in admin.create_topics(&topics, &options).await? {
        match result {
            Ok(topic) => tracing::info!(topic, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                tracing::warn!(topic, %code, "cannot create topic");
                return Err(KafkaError::AdminOp(code));
            }
        }
    }
    Ok(())
}

fn producer(config: &PublisherConfig) -> Result<FutureProducer, KafkaError> {
    config
        .connection
        .client_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", config.message_timeout_ms.to_string())
        .set("linger.ms", "5")
        // linger.ms already batches; Nagle would only hold a batch back
        // behind the broker's acknowledgement of the one before.
        .set("socket.nagle.disable", "true")
        // After a broker outage, reconnect within a second of its return
        // (librdkafka's default backoff grows to 10 s).
        .set("reconnect.backoff.ms", RECONNECT_BACKOFF_MS)
        .set("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX_MS)
        .create()
        .map_err(connection::redacted)
}

/// Runs the publisher until `shutdown` turns true.
pub async fn run(store: Store, config: PublisherConfig, mut shutdown: watch::Receiver<bool>) {
    let wakeup = FeedWakeup::start(&store, "publisher");
    while !*shutdown.borrow() {
        let lease = match store.acquire_lease(CHECKPOINT).await {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                // Another publisher is active: stand by.
                if wait(&mut shutdown, Duration::from_secs(1)).await {
                    break;
                }
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, "publisher: cannot take the lease");
                if wait(&mut shutdown, BACKOFF).await {
                    break;
                }
                continue;
            }
        };
        // Only the active publisher talks to the broker's admin API. A
        // broker that cannot be reached (or refuses our credentials) keeps
        // the request waiting: a shutdown must not wait with it, holding the
        // lease a stand-by could take.
        let ensured = tokio::select! {
            ensured = ensure_topics(&config) => ensured,
            _ = shutdown.changed() => break,
        };
        if let Err(error) = ensured {
            tracing::warn!(%error, "publisher: topics not ready; retrying");
            drop(lease);
            if wait(&mut shutdown, BACKOFF * 4).await {
                break;
            }
            continue;
        }
        tracing::info!("publisher: active");
        metrics::gauge!("billing_publisher_active").set(1.0);
        publish_while_leased(&store, &config, &lease, &wakeup, &mut shutdown).await;
        // A publisher standing by reads nothing: it need not be woken.
        wakeup.quiet();
        metrics::gauge!("billing_publisher_active").set(0.0);
        tracing::info!("publisher: lease ended");
    }
    tracing::info!("publisher stopped");
}

/// Sleeps `duration` or until shutdown; true when shutting down.
async fn wait(shutdown: &mut watch::Receiver<bool>, duration: Duration) -> bool {
    tokio::select! {
        _ = shutdown.changed() => true,
        () = tokio::time::sleep(duration) => *shutdown.borrow(),
    }
}

async fn publish_while_leased(
    store: &Store,
    config: &PublisherConfig,
    lease: &Lease,
    wakeup: &FeedWakeup,
    shutdown: &mut watch::Receiver<bool>,
) {
    let mut producer: Option<FutureProducer> = None;
    // Whether the next batch is published again after a failed delivery.
    let mut retrying = false;
    while lease.is_held() && !*shutdown.borrow() {
        let started = tokio::time::Instant::now();
        let cursor = match lease.cursor().await {
            Ok(cursor) => cursor,
            Err(error) => {
                tracing::warn!(%error, "publisher: lost the checkpoint");
                return;
            }
        };
        let batch = match store.read_feed_with_previous(cursor, config.batch).await {
            Ok(batch) => batch,
            Err(error) => {
                tracing::warn!(%error, "publisher: cannot read the feed");
                wait(shutdown, BACKOFF).await;
                continue;
            }
        };
        let Some(last) = batch.last().map(|(e, _)| e.cursor) else {
            tokio::select! {
                _ = shutdown.changed() => {}
                _ = wakeup.wait(POLL) => {
                    // Let a burst of commits land, so they share one batch.
                    tokio::time::sleep(COALESCE).await;
                }
            }
            continue;
        };
        let active = match producer.take() {
            Some(p) => p,
            None => match self::producer(config) {
                Ok(p) => p,
                Err(error) => {
                    tracing::warn!(%error, "publisher: cannot create a producer");
                    wait(shutdown, BACKOFF).await;
                    continue;
                }
            },
        };
        if retrying {
            metrics::counter!("billing_publisher_retries_total").increment(1);
        }
        match publish(&active, config, &batch)
            .instrument(produce_span(&batch))
            .await
        {
            Ok(messages) => {
                // Every message up to `last` is acknowledged: only now move.
                if let Err(error) = lease.advance(last).await {
                    tracing::warn!(%error, "publisher: cannot store the cursor");
                    return;
                }
                tracing::debug!(events = batch.len(), messages, ?last, "published");
                metrics::counter!("billing_publisher_events_total").increment(batch.len() as u64);
                metrics::counter!("billing_publisher_messages_total").increment(messages as u64);
                retrying = false;
                producer = Some(active);
                if (batch.len() as i64) < config.batch {
                    // More are likely on their way: look again once the
                    // wait since this batch began has passed (at once if
                    // publishing took longer), without being woken for
                    // each commit meanwhile.
                    wakeup.quiet();
                    let rest = COALESCE.saturating_sub(started.elapsed());
                    wait(shutdown, rest).await;
                }
            }
            Err(error) => {
                // Recreate the producer and republish from the cursor:
                // duplicates, never gaps.
                tracing::warn!(%error, ?cursor, "publisher: delivery failed; republishing from the cursor");
                metrics::counter!("billing_publisher_delivery_errors_total").increment(1);
                retrying = true;
                drop(active);
                wait(shutdown, BACKOFF).await;
            }
        }
    }
}

/// The span of producing one batch, linked to the spans of the requests that
/// caused its events (when they were traced).
fn produce_span(batch: &[(StoredEvent, Option<i64>)]) -> tracing::Span {
    let span = tracing::info_span!(
        "publisher.produce",
        otel.kind = "producer",
        messaging.system = "kafka",
        events = batch.len(),
    );
    if !span.is_disabled() {
        for cause in billing_store::causes(batch.iter().map(|(event, _)| event)) {
            span.add_link(cause);
        }
    }
    span
}

/// Produces the batch's messages in feed order and waits for every
/// acknowledgement. Returns how many messages were acknowledged.
async fn publish(
    producer: &FutureProducer,
    config: &PublisherConfig,
    batch: &[(StoredEvent, Option<i64>)],
) -> Result<usize, KafkaError> {
    let mut deliveries = Vec::with_capacity(batch.len());
    for (event, available_before) in batch {
        let mut messages = vec![(&config.topic, message::account_updated(event))];
        for alert in message::alerts(event, *available_before) {
            messages.push((&config.alerts_topic, message::alert(event, alert)));
        }
        for (topic, m) in messages {
            let mut headers = OwnedHeaders::new();
            for (key, value) in &m.headers {
                headers = headers.insert(Header {
                    key,
                    value: Some(value.as_str()),
                });
            }
            let record = FutureRecord::to(topic)
                .key(&m.key)
                .payload(&m.payload)
                .headers(headers);
            let delivery = producer.send_result(record).map_err(|(error, _)| error)?;
            deliveries.push(delivery);
        }
    }
    let count = deliveries.len();
    let results = try_join_all(deliveries)
        .await
        .map_err(|_| KafkaError::Canceled)?;
    for result in results {
        result.map_err(|(error, _)| error)?;
    }
    Ok(count)
}

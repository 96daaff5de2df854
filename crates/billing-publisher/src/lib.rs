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
//! - [`run`]: the role, a partitioned reader of the store's feed module
//!   (`Sliced`): each process publishes its share of the accounts' slices,
//!   each slice under its own lease (`kafka/3`) with a producer of its own;
//!   processes joining or leaving move slices between them. Messages stay
//!   keyed by account id, so an account's partition does not depend on
//!   which process publishes it.
//! - [`digests`]: the chain-head digests, sent by the publisher of slice 0.

#![forbid(unsafe_code)]

pub mod connection;
pub mod digests;
pub mod message;
pub mod probe;
pub mod tail;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use billing_store::{Cursor, FeedBatch, FeedHandler, FeedRead, Pace, Slice, Sliced, Store};
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

/// Runs the publisher until `shutdown` turns true: a partitioned reader of
/// checkpoint [`CHECKPOINT`], a handler per slice this process holds (each
/// under its slice's lease); the handler of slice 0 also sends the chain
/// digests ([`digests`]).
pub async fn run(store: Store, config: PublisherConfig, shutdown: watch::Receiver<bool>) {
    let pace = Pace {
        batch: config.batch,
        ..Pace::ORDERED
    };
    let active = Arc::new(AtomicUsize::new(0));
    // One per process, made now: the digests recorded since the process
    // started are sent whenever it comes to hold slice 0.
    let digests = Arc::new(tokio::sync::Mutex::new(digests::Digests::new()));
    Sliced::new(&store, "publisher", CHECKPOINT)
        .with_pace(pace)
        .run(
            |slice| Publisher {
                store: store.clone(),
                config: config.clone(),
                slice,
                active: active.clone(),
                producer: None,
                retrying: false,
                digests: digests.clone(),
            },
            shutdown,
        )
        .await;
}

/// The publisher's handler of one slice of the feed.
struct Publisher {
    store: Store,
    config: PublisherConfig,
    slice: Slice,
    /// This process's slices active (`billing_publisher_active` while any).
    active: Arc<AtomicUsize>,
    /// Made when first needed, and again after a failure.
    producer: Option<FutureProducer>,
    /// Whether the next batch is published again after a failed delivery.
    retrying: bool,
    /// This process's digests sent (shared by its slices' handlers; the
    /// one of slice 0 sends them).
    digests: Arc<tokio::sync::Mutex<digests::Digests>>,
}

impl FeedHandler for Publisher {
    type Error = KafkaError;
    /// Alerts compare each event's available credit with its predecessor's.
    const READ: FeedRead = FeedRead::EventsWithPrevious;
    const TICK: Option<Duration> = Some(digests::CHECK_EVERY);

    /// Only the active publisher talks to the broker's admin API.
    async fn activate(&mut self, _at: Cursor) -> Result<(), KafkaError> {
        ensure_topics(&self.config).await?;
        tracing::info!(
            slice = self.slice.index,
            "publisher: active on slice {}",
            self.slice.index
        );
        self.active.fetch_add(1, Ordering::SeqCst);
        metrics::gauge!("billing_publisher_active").set(1.0);
        Ok(())
    }

    async fn handle(&mut self, batch: &FeedBatch) -> Result<(), KafkaError> {
        let producer = match self.producer.take() {
            Some(producer) => producer,
            None => self::producer(&self.config)?,
        };
        if self.retrying {
            metrics::counter!("billing_publisher_retries_total").increment(1);
        }
        match publish(&producer, &self.config, batch)
            .instrument(produce_span(batch))
            .await
        {
            Ok(messages) => {
                // Every message of the batch is acknowledged: the follower
                // moves the checkpoint past it now.
                tracing::debug!(events = batch.len, messages, last = ?batch.last, "published");
                metrics::counter!("billing_publisher_events_total").increment(batch.len as u64);
                metrics::counter!("billing_publisher_messages_total").increment(messages as u64);
                self.retrying = false;
                self.producer = Some(producer);
                Ok(())
            }
            Err(error) => {
                // The producer is made again, and the follower republishes
                // from the checkpoint: duplicates, never gaps.
                metrics::counter!("billing_publisher_delivery_errors_total").increment(1);
                self.retrying = true;
                Err(error)
            }
        }
    }

    fn deactivate(&mut self) {
        if self.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            metrics::gauge!("billing_publisher_active").set(0.0);
        }
        tracing::info!(
            slice = self.slice.index,
            "publisher: lease of slice {} ended",
            self.slice.index
        );
    }

    async fn tick(&mut self) {
        // One process sends the digests: the one publishing slice 0.
        if self.slice.index != 0 {
            return;
        }
        let Self {
            store,
            config,
            producer,
            digests,
            ..
        } = self;
        digests
            .lock()
            .await
            .publish_new(store, config, producer)
            .await;
    }
}

/// The span of producing one batch, linked to the spans of the requests that
/// caused its events (when they were traced).
fn produce_span(batch: &FeedBatch) -> tracing::Span {
    let span = tracing::info_span!(
        "publisher.produce",
        otel.kind = "producer",
        messaging.system = "kafka",
        events = batch.len,
    );
    if !span.is_disabled() {
        for cause in billing_store::causes(&batch.events) {
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
    batch: &FeedBatch,
) -> Result<usize, KafkaError> {
    let mut deliveries = Vec::with_capacity(batch.len);
    for (event, available_before) in batch.with_previous() {
        let mut messages = vec![(&config.topic, message::account_updated(event))];
        for alert in message::alerts(event, available_before) {
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

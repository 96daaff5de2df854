//! Publishes the digests of every hash-chain head that the sweeper records
//! (`chain_digests`) to a topic of their own, so that auditors hold them
//! outside the database: the newest one recorded before the process
//! started, then every one recorded since, within seconds. The digests are
//! not events of the feed: the active publisher (the feed's handler with
//! the `kafka` checkpoint's lease) sends them on its follower's tick, with
//! its producer, so one process sends them. At least once: a restart or a
//! publisher taking over may send one again, and consumers deduplicate by
//! `recorded_at`.

use std::time::Duration;

use billing_store::Store;
use billing_store::chain::to_hex;
use chrono::{DateTime, Utc};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::PublisherConfig;

/// How often new digests are looked for (they are recorded hourly by
/// default, so this is only how late one can be).
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(5);

/// The digests sent so far.
#[derive(Debug)]
pub(crate) struct Digests {
    /// When this process started: every digest recorded since is sent.
    started: DateTime<Utc>,
    /// The last digest sent (or the instant before the first one to send).
    published: Option<DateTime<Utc>>,
}

impl Digests {
    pub(crate) fn new() -> Self {
        Self {
            started: Utc::now(),
            published: None,
        }
    }

    /// Sends the digests recorded since the last one sent, with `producer`
    /// (made when missing; dropped after a failure, to be made again).
    pub(crate) async fn publish_new(
        &mut self,
        store: &Store,
        config: &PublisherConfig,
        producer: &mut Option<FutureProducer>,
    ) {
        if let Err(error) = self.try_publish_new(store, config, producer).await {
            tracing::debug!(%error, "publisher: chain digests not published yet; retrying");
            *producer = None;
        }
    }

    async fn try_publish_new(
        &mut self,
        store: &Store,
        config: &PublisherConfig,
        producer: &mut Option<FutureProducer>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if self.published.is_none() {
            // The first time: the newest digest when the process started
            // (sent now), and every one recorded since (sent below).
            let newest = store.maintenance().chain_digests_after(None).await?;
            let mut published = self.started - chrono::Duration::microseconds(1);
            for digest in newest.iter().filter(|d| d.at < self.started) {
                send(config, producer, digest).await?;
                published = published.max(digest.at);
            }
            self.published = Some(published);
        }
        publish_new(store, config, producer, &mut self.published).await
    }
}

/// Sends every digest recorded after `published`, moving it on.
async fn publish_new(
    store: &Store,
    config: &PublisherConfig,
    producer: &mut Option<FutureProducer>,
    published: &mut Option<DateTime<Utc>>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let digests = store.maintenance().chain_digests_after(*published).await?;
    for digest in digests {
        send(config, producer, &digest).await?;
        *published = Some(digest.at);
    }
    Ok(())
}

/// Sends one digest and waits for its acknowledgement.
async fn send(
    config: &PublisherConfig,
    producer: &mut Option<FutureProducer>,
    digest: &billing_store::ChainDigest,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let active = match producer {
        Some(p) => p,
        None => producer.insert(crate::producer(config)?),
    };
    let payload = serde_json::json!({
        "type": "chain_digest",
        "recorded_at": digest.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "accounts": digest.accounts,
        "events": digest.events,
        "digest": to_hex(&digest.digest),
    })
    .to_string();
    active
        .send(
            FutureRecord::to(&config.digests_topic)
                .key("chain_digest")
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(error, _)| error)?;
    tracing::info!(
        digest = %to_hex(&digest.digest),
        topic = %config.digests_topic,
        "published the chain heads digest"
    );
    Ok(())
}

//! Publishes the digests of every hash-chain head that the sweeper records
//! (`chain_digests`) to a topic of their own, so that auditors hold them
//! outside the database: the newest one when the publisher starts, then each
//! new one within seconds. At least once: a restart or a second publisher
//! may send one again, and consumers deduplicate by `recorded_at`.

use std::time::Duration;

use billing_store::Store;
use billing_store::chain::to_hex;
use chrono::{DateTime, Utc};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::watch;

use crate::PublisherConfig;

/// How often new digests are looked for (they are recorded hourly by
/// default, so this is only how late one can be).
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Publishes digests until `shutdown` turns true.
pub async fn run(store: Store, config: PublisherConfig, mut shutdown: watch::Receiver<bool>) {
    let mut published: Option<DateTime<Utc>> = None;
    let mut producer: Option<FutureProducer> = None;
    while !*shutdown.borrow() {
        match publish_new(&store, &config, &mut producer, &mut published).await {
            // Nothing recorded yet: every digest from now on is new.
            Ok(()) if published.is_none() => published = Some(DateTime::UNIX_EPOCH),
            Ok(()) => {}
            Err(error) => {
                tracing::debug!(%error, "publisher: chain digests not published yet; retrying");
                producer = None;
            }
        }
        tokio::select! {
            _ = shutdown.changed() => {}
            () = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}

async fn publish_new(
    store: &Store,
    config: &PublisherConfig,
    producer: &mut Option<FutureProducer>,
    published: &mut Option<DateTime<Utc>>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let digests = store.chain_digests_after(*published).await?;
    for digest in digests {
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
        *published = Some(digest.at);
    }
    Ok(())
}

//! Whether the Kafka brokers answer: the publisher role's health. A
//! publisher that cannot reach a broker publishes nothing, so it is not
//! healthy even while its database is.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;

/// Asks the brokers for the cluster's metadata, on a client of its own.
#[derive(Clone)]
pub struct BrokerProbe {
    client: Arc<BaseConsumer>,
}

impl std::fmt::Debug for BrokerProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerProbe").finish_non_exhaustive()
    }
}

impl BrokerProbe {
    /// A probe of the brokers, with the publisher's own security settings
    /// (so wrong credentials make it fail, as they make the publisher).
    /// Connects lazily.
    pub fn new(connection: &crate::KafkaConnection) -> Result<Self, KafkaError> {
        let client: BaseConsumer = connection
            .client_config()
            // Notice a broker's return within a second (see the producer).
            .set("reconnect.backoff.ms", crate::RECONNECT_BACKOFF_MS)
            .set("reconnect.backoff.max.ms", crate::RECONNECT_BACKOFF_MAX_MS)
            .create()
            .map_err(crate::connection::redacted)?;
        Ok(Self {
            client: Arc::new(client),
        })
    }

    /// Whether a broker answers a metadata request within `timeout`.
    pub async fn check(&self, timeout: Duration) -> Result<(), KafkaError> {
        let client = self.client.clone();
        // librdkafka's calls block: keep them off the async workers.
        tokio::task::spawn_blocking(move || client.fetch_metadata(None, timeout).map(|_| ()))
            .await
            .map_err(|_| KafkaError::Canceled)?
    }
}

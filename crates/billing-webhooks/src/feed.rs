//! The dispatcher's reader of the feed: a handler of the one feed module
//! (`billing_store::Follower`), from checkpoint `webhooks` under its lease
//! (one active recorder; replicas stand by), turning each batch of changes
//! into delivery rows and waking this process's sender.

use std::sync::Arc;

use billing_store::{FeedBatch, FeedHandler, FeedRead, Follower, Store, StoreError};
use tokio::sync::{Notify, watch};

use crate::recorder;

/// The feed checkpoint the dispatcher keeps.
pub const CHECKPOINT: &str = "webhooks";

/// Makes the deliveries of each batch; the follower moves the checkpoint
/// once they are stored.
struct Recording {
    store: Store,
    /// The sender of this process, told of new deliveries.
    wake: Arc<Notify>,
}

impl FeedHandler for Recording {
    type Error = StoreError;
    /// Every column (the account view names the customer) and each event's
    /// predecessor's available credit (for alerts), like the publisher.
    const READ: FeedRead = FeedRead::EventsWithPrevious;

    async fn handle(&mut self, batch: &FeedBatch) -> Result<(), StoreError> {
        let events: Vec<_> = batch.with_previous().collect();
        let made = recorder::record(&self.store, &events).await?;
        metrics::counter!("billing_dispatcher_events_total").increment(batch.len as u64);
        if made > 0 {
            self.wake.notify_one();
        }
        Ok(())
    }
}

/// Follows the feed into deliveries until `shutdown` turns true.
pub async fn run(store: Store, wake: Arc<Notify>, shutdown: watch::Receiver<bool>) {
    Follower::checkpoint(&store, "dispatcher", CHECKPOINT)
        .run(Recording { store, wake }, shutdown)
        .await;
}

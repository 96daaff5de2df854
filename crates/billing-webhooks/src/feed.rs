//! The dispatcher's reader of the feed: a handler of the one feed module
//! (`billing_store::Sliced`, checkpoint `webhooks`): each process claims
//! its share of the accounts' slices and records each slice it holds under
//! that slice's lease (`webhooks/3`), in order per account, turning each
//! batch of changes into delivery rows and waking this process's sender.

use std::sync::Arc;

use billing_store::{FeedBatch, FeedHandler, FeedRead, Sliced, Store, StoreError};
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
    Sliced::new(&store, "dispatcher", CHECKPOINT)
        .run(
            |_| Recording {
                store: store.clone(),
                wake: wake.clone(),
            },
            shutdown,
        )
        .await;
}

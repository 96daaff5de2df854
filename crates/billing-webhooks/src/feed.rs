//! Following the feed into deliveries (checkpoint `webhooks`), one replica
//! at a time.
//!
//! Interim: this follows the feed with the store's primitives (lease,
//! wake-ups, the never-skip read) until the read side's one feed module
//! lands, and then becomes a handler of it.

use std::sync::Arc;
use std::time::Duration;

use billing_store::{FeedWakeup, Store};
use tokio::sync::{Notify, watch};

use crate::recorder;

/// The feed checkpoint the dispatcher keeps.
pub const CHECKPOINT: &str = "webhooks";
const BATCH: i64 = 2_000;
const POLL: Duration = Duration::from_millis(500);
const COALESCE: Duration = Duration::from_millis(25);
const BACKOFF: Duration = Duration::from_millis(500);

pub async fn run(store: Store, wake: Arc<Notify>, mut shutdown: watch::Receiver<bool>) {
    let wakeup = FeedWakeup::start(&store, "dispatcher");
    while !*shutdown.borrow() {
        let lease = match store.acquire_lease(CHECKPOINT).await {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                wakeup.quiet();
                sleep(&mut shutdown, Duration::from_secs(1)).await;
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, "dispatcher: cannot take the lease");
                sleep(&mut shutdown, BACKOFF).await;
                continue;
            }
        };
        while lease.is_held() && !*shutdown.borrow() {
            let step = async {
                let cursor = lease.cursor().await?;
                let batch = store.read_feed_with_previous(cursor, BATCH).await?;
                let Some(last) = batch.last().map(|(e, _)| e.cursor) else {
                    return Ok(0);
                };
                if recorder::record(&store, &batch).await? > 0 {
                    wake.notify_one();
                }
                lease.advance(last).await?;
                Ok::<_, billing_store::StoreError>(batch.len())
            };
            match step.await {
                Ok(0) => {
                    tokio::select! {
                        _ = shutdown.changed() => {}
                        _ = wakeup.wait(POLL) => tokio::time::sleep(COALESCE).await,
                    }
                }
                Ok(n) => {
                    metrics::counter!("billing_dispatcher_events_total").increment(n as u64);
                    if n < BATCH as usize {
                        wakeup.quiet();
                        sleep(&mut shutdown, COALESCE).await;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "dispatcher: following the feed failed; retrying");
                    sleep(&mut shutdown, BACKOFF).await;
                }
            }
        }
    }
}

async fn sleep(shutdown: &mut watch::Receiver<bool>, duration: Duration) {
    tokio::select! {
        _ = shutdown.changed() => {}
        () = tokio::time::sleep(duration) => {}
    }
}

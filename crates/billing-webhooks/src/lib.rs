//! The webhook dispatcher role: every balance change of a customer's
//! accounts delivered to the customer's own endpoints, signed by the
//! Standard Webhooks specification, retried on its schedule, never lost.
//!
//! Two halves, both durable in PostgreSQL:
//! - [`recorder`]: follows the event feed from its checkpoint (`webhooks`)
//!   and turns each change into delivery rows, one per matching webhook
//!   (`account_updated` and the alerts the change raises). One replica at a
//!   time (a lease), like the other feed readers.
//! - [`dispatch`]: claims due deliveries and sends them, in order per
//!   webhook and account; every replica sends, claims keeping any two from
//!   sending one delivery at the same time.
//!
//! The pure parts: [`payload`] (the body), [`signing`] (the signature
//! headers), [`schedule`] (when to try again), [`address`] (which addresses
//! may be sent to); [`sender`] is the HTTP client that enforces them.

#![forbid(unsafe_code)]

pub mod address;
pub mod dispatch;
mod feed;
pub mod payload;
pub mod recorder;
pub mod schedule;
pub mod sender;
pub mod signing;

use std::sync::Arc;
use std::time::Duration;

use billing_store::Store;
use tokio::sync::{Notify, watch};

pub use dispatch::DispatchConfig;
pub use feed::CHECKPOINT;
pub use schedule::RetrySchedule;
pub use sender::{SendPolicy, Sender};

/// The dispatcher's settings.
#[derive(Clone, Debug)]
pub struct DispatcherConfig {
    pub policy: SendPolicy,
    pub dispatch: DispatchConfig,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        let timeout = Duration::from_secs(10);
        Self {
            policy: SendPolicy {
                allow_http: false,
                allow_private: false,
                timeout,
            },
            dispatch: DispatchConfig {
                schedule: RetrySchedule::default(),
                disable_after: Duration::from_secs(5 * 86_400),
                max_in_flight: 512,
                per_webhook: 32,
                poll: Duration::from_millis(250),
                timeout,
            },
        }
    }
}

/// Runs the dispatcher (both halves) until `shutdown` turns true.
pub async fn run(
    store: Store,
    config: DispatcherConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let sender = Sender::new(config.policy.clone())?;
    let wake = Arc::new(Notify::new());
    let recording = tokio::spawn(feed::run(store.clone(), wake.clone(), shutdown.clone()));
    dispatch::run(store, sender, config.dispatch, wake, shutdown).await;
    let _ = recording.await;
    Ok(())
}

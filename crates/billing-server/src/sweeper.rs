//! The sweeper role: records what time alone has made due (expired holds,
//! monthly token resets) as events. Reads never wait for it: an expired hold
//! stops counting at once; the sweeper only writes the fact down.

use std::time::Duration;

use billing_domain::Command;
use billing_store::{Actor, RequestMeta, Store};
use tokio::sync::watch;

/// Accounts handled per pass.
const BATCH: i64 = 500;

/// Sweeps every `interval` until `shutdown` turns true.
pub async fn run(store: Store, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    let meta = RequestMeta {
        actor: Actor::system(),
        idempotency: None,
        trace_id: None,
        span_id: None,
    };
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            () = tokio::time::sleep(interval) => {}
        }
        let due = match store.accounts_due_for_housekeeping(BATCH).await {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, "sweeper: cannot list due accounts");
                continue;
            }
        };
        // All at once, so that they share the writers' batches.
        let sweeps = due.into_iter().map(|account_id| {
            let (store, meta) = (&store, &meta);
            async move {
                let outcome = match store.execute(account_id, meta, &Command::Housekeep).await {
                    Ok(Ok(_)) => {
                        tracing::debug!(%account_id, "sweeper: housekeeping recorded");
                        "recorded"
                    }
                    Ok(Err(rejection)) => {
                        tracing::warn!(%account_id, %rejection, "sweeper: refused");
                        "refused"
                    }
                    Err(error) => {
                        tracing::warn!(%account_id, %error, "sweeper: store failure");
                        "failed"
                    }
                };
                metrics::counter!("billing_sweeper_accounts_total", "outcome" => outcome)
                    .increment(1);
            }
        });
        futures::future::join_all(sweeps).await;
    }
    tracing::info!("sweeper stopped");
}

//! The sweeper role: records what time alone has made due (expired holds,
//! monthly token resets) as events. Reads never wait for it: an expired hold
//! stops counting at once; the sweeper only writes the fact down. It also
//! runs retention ([`retain`]): idempotency records and resolved
//! reservations older than their windows are removed in small batches.

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
        let due = match store
            .maintenance()
            .accounts_due_for_housekeeping(BATCH)
            .await
        {
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
                let outcome = match store
                    .commands()
                    .execute(account_id, meta, &Command::Housekeep)
                    .await
                {
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

/// How long idempotency records and resolved reservations are kept; `None`
/// keeps them forever.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub idempotency: Option<Duration>,
    pub reservations: Option<Duration>,
}

/// How often retention looks for rows past their window when it has caught
/// up.
const RETENTION_INTERVAL: Duration = Duration::from_secs(10);

/// The pause between two full batches while retention catches up, so that
/// it takes a modest share of the database.
const RETENTION_PAUSE: Duration = Duration::from_millis(20);

/// Removes what retention lets go, one batch of each kind at a time (each a
/// short statement of its own: `billing_store::RETENTION_BATCH` rows at
/// most), until `shutdown` turns true.
pub async fn retain(store: Store, retention: Retention, mut shutdown: watch::Receiver<bool>) {
    if retention.idempotency.is_none() && retention.reservations.is_none() {
        return;
    }
    let mut wait = RETENTION_INTERVAL;
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            () = tokio::time::sleep(wait) => {}
        }
        wait = match store
            .maintenance()
            .remove_expired(retention.idempotency, retention.reservations, 1)
            .await
        {
            Ok(removed) => {
                for (kind, n) in [
                    ("idempotency_keys", removed.idempotency_keys),
                    ("reservations", removed.reservations),
                ] {
                    if n > 0 {
                        metrics::counter!("billing_retention_removed_total", "kind" => kind)
                            .increment(n);
                    }
                }
                let full = billing_store::RETENTION_BATCH as u64;
                if removed.idempotency_keys >= full || removed.reservations >= full {
                    RETENTION_PAUSE
                } else {
                    tracing::debug!(?removed, "retention: caught up");
                    RETENTION_INTERVAL
                }
            }
            Err(error) => {
                tracing::warn!(%error, "retention: cannot remove expired rows");
                RETENTION_INTERVAL
            }
        };
    }
}

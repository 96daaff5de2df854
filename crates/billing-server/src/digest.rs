//! With the sweeper role: every so often, a digest of every account's
//! hash-chain head is recorded (`chain_digests`, append-only) and logged, so
//! that an auditor can pin history at that instant and `billing verify` can
//! be checked against it later.

use std::time::Duration;

use billing_store::Store;
use billing_store::chain::to_hex;
use tokio::sync::watch;

/// Records a digest every `interval` until `shutdown` turns true.
pub async fn run(store: Store, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            () = tokio::time::sleep(interval) => {}
        }
        match store.maintenance().record_chain_digest().await {
            Ok(d) => tracing::info!(
                digest = %to_hex(&d.digest),
                accounts = d.accounts,
                events = d.events,
                at = %d.at.to_rfc3339(),
                "chain heads digest recorded"
            ),
            Err(error) => tracing::warn!(%error, "cannot record the chain heads digest"),
        }
    }
}

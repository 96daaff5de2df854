//! Checking the hash chains (`billing verify`) and digesting their heads (the
//! sweeper records a digest periodically). The chain itself is `chain.rs`.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tokio_postgres::IsolationLevel;
use uuid::Uuid;

use crate::chain::{self, BrokenLink, ChainHash, Content, Walk};
use crate::{Store, StoreError};

/// Events read per round trip while verifying.
const PAGE: i64 = 2_000;

/// Every event after ($1, $2) in (account, version) order, as stored, and
/// on each account's last event the head its state keeps.
const EVENTS: &str = "
SELECT e.account_id, e.version, e.event_id, e.event_type, e.schema_version, e.occurred_at,
       e.actor_principal, e.actor_role, e.idempotency_key, e.trace_id, e.payload::text,
       e.balance_credit, e.balance_token, e.reserved_credit, e.reserved_token,
       e.available_credit, e.available_token, e.account_after::text, e.hash,
       NOT EXISTS (SELECT 1 FROM events n WHERE n.account_id = e.account_id AND n.version > e.version)
           AS last,
       (SELECT a.state->>'chain_head' FROM accounts a WHERE a.account_id = e.account_id) AS kept_head,
       e.span_id
FROM events e
WHERE (e.account_id, e.version) > ($1, $2) AND ($3::uuid IS NULL OR e.account_id = $3)
ORDER BY e.account_id, e.version
LIMIT $4";

/// What `verify_chains` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verification {
    pub accounts: u64,
    pub events: u64,
    /// Events written before the chain existed (no hash to check).
    pub unchained: u64,
    /// The first link that does not hold, in (account, version) order.
    pub broken: Option<BrokenLink>,
}

/// A digest of every account's chain head at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainDigest {
    pub at: DateTime<Utc>,
    pub accounts: u64,
    /// Events under the heads (the sum of the accounts' versions).
    pub events: u64,
    pub digest: ChainHash,
}

/// Admin and verification: the hash chains checked and their heads
/// digested, the sweeper's housekeeping and retention
/// ([`Store::maintenance`]).
#[derive(Clone, Copy, Debug)]
pub struct Maintenance<'a> {
    pub(crate) store: &'a Store,
}

impl Maintenance<'_> {
    /// Recomputes every account's chain (or one account's) from the stored
    /// events, in one consistent snapshot, stopping at the first broken link.
    /// `progress` hears the events checked so far after every page.
    pub async fn verify_chains(
        self,
        only: Option<Uuid>,
        mut progress: impl FnMut(u64) + Send,
    ) -> Result<Verification, StoreError> {
        let mut client = self.store.pool.get().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let mut report = Verification::default();
        let mut after = (Uuid::nil(), 0_i64);
        let mut walk: Option<Walk> = None;
        loop {
            let rows = tx
                .query(EVENTS, &[&after.0, &after.1, &only, &PAGE])
                .await?;
            let Some(last_row) = rows.last() else {
                break;
            };
            after = (last_row.get(0), last_row.get(1));
            for row in &rows {
                let account_id: Uuid = row.get(0);
                if walk.as_ref().is_none_or(|w| w.account_id != account_id) {
                    walk = Some(Walk::new(account_id));
                    report.accounts += 1;
                }
                let walk = walk.as_mut().expect("set above");
                let occurred_at: DateTime<Utc> = row.get(5);
                let payload: &str = row.get(10);
                let account_after: Option<&str> = row.get(17);
                let content = Content {
                    event_id: row.get(2),
                    account_id,
                    version: row.get(1),
                    event_type: row.get(3),
                    schema_version: row.get(4),
                    occurred_at_micros: occurred_at.timestamp_micros(),
                    principal: row.get(6),
                    role: row.get(7),
                    idempotency_key: row.get(8),
                    trace_id: row.get(9),
                    span_id: row.get(21),
                    payload: payload.as_bytes(),
                    balances: [
                        row.get(11),
                        row.get(12),
                        row.get(13),
                        row.get(14),
                        row.get(15),
                        row.get(16),
                    ],
                    account_after: account_after.map(str::as_bytes),
                };
                let stored: Option<&[u8]> = row.get(18);
                report.events += 1;
                let checked = walk.next(&content, stored).and_then(|()| {
                    if row.get::<_, bool>(19) {
                        walk.finish(row.get::<_, Option<&str>>(20))
                    } else {
                        Ok(())
                    }
                });
                if let Err(broken) = checked {
                    report.unchained += walk.unchained;
                    report.broken = Some(broken);
                    return Ok(report);
                }
                if row.get::<_, bool>(19) {
                    report.unchained += walk.unchained;
                }
            }
            progress(report.events);
        }
        Ok(report)
    }

    /// The digest of every account's chain head as they stand now.
    pub async fn chain_digest(self) -> Result<ChainDigest, StoreError> {
        let client = self.store.pool.get().await?;
        digest(&**client).await
    }

    /// Computes the digest of every chain head and records it in
    /// `chain_digests` (append-only): a point an auditor can pin history to.
    pub async fn record_chain_digest(self) -> Result<ChainDigest, StoreError> {
        let mut client = self.store.pool.get().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .start()
            .await?;
        let digest = digest(&*tx).await?;
        tx.execute(
            "INSERT INTO chain_digests (recorded_at, accounts, events, digest) VALUES ($1, $2, $3, $4)",
            &[
                &digest.at,
                &(digest.accounts as i64),
                &(digest.events as i64),
                &digest.digest.as_slice(),
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(digest)
    }

    /// Recorded digests after `after`, oldest first (at most 100); with no
    /// `after`, the newest one.
    pub async fn chain_digests_after(
        self,
        after: Option<DateTime<Utc>>,
    ) -> Result<Vec<ChainDigest>, StoreError> {
        let client = self.store.pool.get().await?;
        let rows = match after {
            None => {
                client
                    .query(
                        "SELECT recorded_at, accounts, events, digest FROM chain_digests
                         ORDER BY recorded_at DESC LIMIT 1",
                        &[],
                    )
                    .await?
            }
            Some(after) => {
                client
                    .query(
                        "SELECT recorded_at, accounts, events, digest FROM chain_digests
                         WHERE recorded_at > $1 ORDER BY recorded_at LIMIT 100",
                        &[&after],
                    )
                    .await?
            }
        };
        rows.iter()
            .map(|row| {
                let digest: &[u8] = row.get(3);
                Ok(ChainDigest {
                    at: row.get(0),
                    accounts: row.get::<_, i64>(1).max(0) as u64,
                    events: row.get::<_, i64>(2).max(0) as u64,
                    digest: digest.try_into().map_err(|_| {
                        StoreError::Corrupt("a chain digest is not 32 bytes".into())
                    })?,
                })
            })
            .collect()
    }
}

/// SHA-256 over every account's (id, version, head) in id order.
async fn digest(client: &impl tokio_postgres::GenericClient) -> Result<ChainDigest, StoreError> {
    let rows = client
        .query(
            "SELECT account_id, version, state->>'chain_head', now() FROM accounts ORDER BY account_id",
            &[],
        )
        .await?;
    let mut h = Sha256::new();
    h.update(b"billing.chain-digest.v1");
    let mut events: u64 = 0;
    for row in &rows {
        let id: Uuid = row.get(0);
        let version: i64 = row.get(1);
        let head = row
            .get::<_, Option<&str>>(2)
            .and_then(chain::from_hex)
            .unwrap_or(chain::GENESIS);
        h.update(id.as_bytes());
        h.update(version.to_be_bytes());
        h.update(head);
        events += version.max(0) as u64;
    }
    let at = match rows.first() {
        Some(row) => row.get(3),
        None => client.query_one("SELECT now()", &[]).await?.get(0),
    };
    Ok(ChainDigest {
        at,
        accounts: rows.len() as u64,
        events,
        digest: h.finalize().into(),
    })
}

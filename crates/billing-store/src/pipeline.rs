//! A batch's conversation with PostgreSQL: a writer's own connection and its
//! prepared statements, statements as pipeline steps (sent in order, in one
//! round trip), and the batch's set-based writes pipelined with `COMMIT`.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::TryStreamExt;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};
use uuid::Uuid;

use crate::batch::Writes;
use crate::document::{Document, documents};
use crate::outcome::{SlimOutcome, StoredCommit};
use crate::{StoreError, sql};

/// Why an attempt failed, and whether its COMMIT had been sent (then its
/// outcome is unknown and it must not be retried blindly).
pub(crate) struct Failed {
    pub(crate) error: StoreError,
    pub(crate) commit_sent: bool,
}

impl<E: Into<StoreError>> From<E> for Failed {
    fn from(error: E) -> Self {
        Self {
            error: error.into(),
            commit_sent: false,
        }
    }
}

/// What the fast path sends ahead of its writes: the accounts' locks, and
/// the version and chain head (`None` before the first hashed event) of each
/// account as it was decided from.
pub(crate) struct Fence<'a> {
    pub(crate) lock_keys: &'a [i64],
    pub(crate) ids: &'a [Uuid],
    pub(crate) versions: &'a [i64],
    pub(crate) heads: &'a [Option<Vec<u8>>],
}

pub(crate) type Step<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send + 'a>>;
pub(crate) type Param<'a> = &'a (dyn ToSql + Sync);

/// A statement as a pipeline step: it is sent when first polled, so steps
/// polled in order (`join_all`) reach the server in order.
pub(crate) fn query<'a>(
    client: &'a Client,
    statement: &'a Statement,
    params: Vec<Param<'a>>,
) -> Step<'a> {
    Box::pin(async move {
        client
            .query_raw(statement, params)
            .await?
            .try_collect()
            .await
    })
}

/// The batch's writes, one call of `billing_write_batch`, and its commit.
/// Every write either does exactly what it says or fails (counts are
/// asserted in SQL), and a failure aborts the transaction.
///
/// With a `fence` (the fast path), the locks and the fence go first in the
/// same call, which is a transaction of its own. Without one (the long way)
/// the call runs in the transaction that took the locks and read the rows,
/// and its COMMIT goes in the same pipeline.
pub(crate) async fn write(
    connection: &Connection,
    writes: &Writes,
    fence: Option<&Fence<'_>>,
) -> Result<(), Failed> {
    let client = &connection.client;
    let s = &connection.statements;

    let created: Vec<_> = writes
        .accounts
        .iter()
        .filter(|r| r.expected_version.is_none())
        .collect();
    let created_ids: Vec<Uuid> = created.iter().map(|r| r.account.id).collect();
    let created_customers: Vec<Uuid> = created.iter().map(|r| r.account.customer_id).collect();
    let created_versions: Vec<i64> = created.iter().map(|r| r.account.version).collect();
    let created_states = documents(created.iter().map(|r| &r.account))?;
    let created_due: Vec<_> = created.iter().map(|r| r.account.next_due()).collect();
    let created_at: Vec<_> = created.iter().map(|r| r.updated_at).collect();

    let updated: Vec<_> = writes
        .accounts
        .iter()
        .filter_map(|r| r.expected_version.map(|v| (r, v)))
        .collect();
    let updated_ids: Vec<Uuid> = updated.iter().map(|(r, _)| r.account.id).collect();
    let updated_states = documents(updated.iter().map(|(r, _)| &r.account))?;
    let updated_versions: Vec<i64> = updated.iter().map(|(r, _)| r.account.version).collect();
    let updated_due: Vec<_> = updated.iter().map(|(r, _)| r.account.next_due()).collect();
    let updated_at: Vec<_> = updated.iter().map(|(r, _)| r.updated_at).collect();
    let expected: Vec<i64> = updated.iter().map(|(_, v)| *v).collect();

    let e = &writes.events;
    let event_ids: Vec<Uuid> = e.iter().map(|r| r.event_id).collect();
    let event_accounts: Vec<Uuid> = e.iter().map(|r| r.account_id).collect();
    let event_versions: Vec<i64> = e.iter().map(|r| r.version).collect();
    let event_types: Vec<&str> = e.iter().map(|r| r.event.event_type()).collect();
    let event_times: Vec<_> = e.iter().map(|r| r.occurred_at).collect();
    let principals: Vec<&str> = e.iter().map(|r| r.principal.as_str()).collect();
    let roles: Vec<&str> = e.iter().map(|r| r.role.as_str()).collect();
    let event_keys: Vec<Option<&str>> = e.iter().map(|r| r.idempotency_key.as_deref()).collect();
    let traces: Vec<Option<&str>> = e.iter().map(|r| r.trace_id.as_deref()).collect();
    let spans: Vec<Option<&str>> = e.iter().map(|r| r.span_id.as_deref()).collect();
    let payloads: Vec<&Document> = e.iter().map(|r| &r.payload).collect();
    let column = |f: fn(&billing_domain::Balances) -> i64| -> Vec<i64> {
        e.iter().map(|r| f(&r.balances)).collect()
    };
    let balance_credit = column(|b| b.balance_credit.get());
    let balance_token = column(|b| b.balance_token.get());
    let reserved_credit = column(|b| b.reserved_credit.get());
    let reserved_token = column(|b| b.reserved_token.get());
    let available_credit = column(|b| b.available_credit.get());
    let available_token = column(|b| b.available_token.get());
    let accounts_after: Vec<&Document> = e.iter().map(|r| &r.account_after).collect();
    let event_hashes: Vec<&[u8]> = e.iter().map(|r| r.hash.as_slice()).collect();

    let reservation_columns = |new: bool| -> Result<ReservationColumns<'_>, StoreError> {
        let rows: Vec<_> = writes
            .reservations
            .iter()
            .filter(|r| r.new == new)
            .collect();
        Ok(ReservationColumns {
            ids: rows
                .iter()
                .map(|r| r.hold.reservation_id.as_str())
                .collect(),
            accounts: rows.iter().map(|r| r.account_id).collect(),
            statuses: rows.iter().map(|r| r.status.as_str()).collect(),
            holds: rows
                .iter()
                .map(|r| (r.new || r.hold_changed).then(|| Document::of(&r.hold)))
                .map(Option::transpose)
                .collect::<Result<_, _>>()?,
            expires_at: rows.iter().map(|r| r.hold.expires_at).collect(),
            commits: rows
                .iter()
                .map(|r| {
                    r.commit_outcome
                        .as_ref()
                        .map(|c| Document::of(&StoredCommit::of(c)))
                        .transpose()
                })
                .collect::<Result<_, _>>()?,
            resolved: rows.iter().map(|r| r.resolved_version).collect(),
            updated_at: rows.iter().map(|r| r.updated_at).collect(),
        })
    };
    let new_reservations = reservation_columns(true)?;
    let changed_reservations = reservation_columns(false)?;

    let k = &writes.keys;
    let keys: Vec<&str> = k.iter().map(|r| r.key.as_str()).collect();
    let operations: Vec<&str> = k.iter().map(|r| r.operation).collect();
    let hashes: Vec<&[u8]> = k.iter().map(|r| r.request_hash.as_slice()).collect();
    let key_accounts: Vec<Uuid> = k.iter().map(|r| r.account_id).collect();
    let outcomes: Vec<Document> = k
        .iter()
        .map(
            |r| match r.slim.then(|| SlimOutcome::of(&r.outcome)).flatten() {
                Some(slim) => Document::of(&slim),
                None => Document::of(&r.outcome),
            },
        )
        .collect::<Result<_, _>>()?;
    let key_times: Vec<_> = k.iter().map(|r| r.created_at).collect();

    let no_keys: &[i64] = &[];
    let lock_keys = fence.map_or(no_keys, |f| f.lock_keys);
    let split = SplitFence::of(fence, &updated_ids, &expected);
    let mut params: Vec<Param<'_>> = vec![
        &lock_keys,
        &split.ids,
        &split.versions,
        &split.heads,
        &created_ids,
        &created_customers,
        &created_versions,
        &created_states,
        &created_due,
        &created_at,
        &updated_ids,
        &updated_states,
        &updated_versions,
        &updated_due,
        &updated_at,
        &expected,
        &split.updated_heads,
        &billing_domain::EVENT_SCHEMA_VERSION,
        &event_ids,
        &event_accounts,
        &event_versions,
        &event_types,
        &event_times,
        &principals,
        &roles,
        &event_keys,
        &traces,
        &payloads,
        &balance_credit,
        &balance_token,
        &reserved_credit,
        &reserved_token,
        &available_credit,
        &available_token,
        &accounts_after,
        &event_hashes,
        &spans,
    ];
    params.extend(new_reservations.params());
    params.extend(changed_reservations.params());
    params.extend::<[Param<'_>; 6]>([
        &keys,
        &operations,
        &hashes,
        &key_accounts,
        &outcomes,
        &key_times,
    ]);
    let writes = query(client, &s.write_batch, params);
    let result = match fence {
        // The fast path: the call alone is the transaction (an implicit
        // one, committed as PostgreSQL answers it).
        Some(_) => writes.await.map(drop),
        // The long way: its transaction holds the locks already; the
        // COMMIT goes in the same pipeline.
        None => {
            // `join!` polls, and so sends, the two in order.
            let (written, committed) = futures::join!(writes, client.batch_execute("COMMIT"));
            if let Err(error) = written {
                // The call failed, so the transaction aborted and its COMMIT
                // rolled back. A lost connection says nothing of the COMMIT,
                // sent in the same pipeline: it may have run.
                let error: StoreError = error.into();
                let commit_sent = matches!(error, StoreError::Unavailable(_));
                return Err(Failed { error, commit_sent });
            }
            committed.map(drop)
        }
    };
    // On the fast path the call is its own COMMIT: a failure may have
    // come after it only if the connection was lost.
    result.map_err(|error| {
        let error: StoreError = error.into();
        let commit_sent = fence.is_none() || matches!(error, StoreError::Unavailable(_));
        Failed { error, commit_sent }
    })
}

/// The fast path's fence as the call takes it: an account the batch updates
/// is fenced by its UPDATE (the version it was decided from, which is the
/// update's expected version, and the chain head in `updated_heads`); the
/// fence proper keeps the accounts decided from but not written.
struct SplitFence<'a> {
    ids: Vec<Uuid>,
    versions: Vec<i64>,
    heads: Vec<Option<&'a [u8]>>,
    /// One per updated account: its head where the fence named one.
    updated_heads: Vec<Option<&'a [u8]>>,
}

impl<'a> SplitFence<'a> {
    fn of(fence: Option<&Fence<'a>>, updated_ids: &[Uuid], expected: &[i64]) -> Self {
        let mut split = Self {
            ids: Vec::new(),
            versions: Vec::new(),
            heads: Vec::new(),
            updated_heads: vec![None; updated_ids.len()],
        };
        let Some(fence) = fence else {
            return split;
        };
        let mut updated: Vec<(Uuid, usize)> = updated_ids.iter().copied().zip(0..).collect();
        updated.sort_unstable();
        for ((id, version), head) in fence.ids.iter().zip(fence.versions).zip(fence.heads) {
            let head = head.as_deref();
            let at = updated
                .binary_search_by(|(u, _)| u.cmp(id))
                .ok()
                .map(|found| updated[found].1);
            // The update checks the version it expects: where that is the
            // version decided from, the update is this account's fence.
            match at {
                Some(i) if expected[i] == *version => split.updated_heads[i] = head,
                _ => {
                    split.ids.push(*id);
                    split.versions.push(*version);
                    split.heads.push(head);
                }
            }
        }
        split
    }
}

struct ReservationColumns<'a> {
    ids: Vec<&'a str>,
    accounts: Vec<Uuid>,
    statuses: Vec<&'static str>,
    /// `None` where the stored hold stands.
    holds: Vec<Option<Document>>,
    expires_at: Vec<chrono::DateTime<chrono::Utc>>,
    commits: Vec<Option<Document>>,
    resolved: Vec<Option<i64>>,
    updated_at: Vec<chrono::DateTime<chrono::Utc>>,
}

impl ReservationColumns<'_> {
    fn params(&self) -> Vec<Param<'_>> {
        vec![
            &self.ids,
            &self.accounts,
            &self.statuses,
            &self.holds,
            &self.expires_at,
            &self.commits,
            &self.resolved,
            &self.updated_at,
        ]
    }
}

/// A writer's own connection and its prepared statements.
pub(crate) struct Connection {
    pub(crate) client: Client,
    pub(crate) statements: Statements,
}

pub(crate) struct Statements {
    pub(crate) lock: Statement,
    pub(crate) load_accounts: Statement,
    pub(crate) load_keys: Statement,
    pub(crate) load_reservations: Statement,
    pub(crate) write_batch: Statement,
}

impl Connection {
    pub(crate) async fn open(connector: &crate::Connector) -> Result<Self, StoreError> {
        let connect = connector.connect();
        let (client, connection) = tokio::time::timeout(Duration::from_secs(5), connect)
            .await
            .map_err(|_| {
                StoreError::Unavailable("connecting to the database timed out".into())
            })??;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "command writer connection closed");
            }
        });
        // Every statement of the command path finds rows by key. Prepared
        // statements soon run on a generic plan, made while a table was
        // small and before any ANALYZE: a sequential scan then stays the
        // plan as the table grows (seen: 1.5 ms lookups of one reservation).
        // Key lookups are the only right plan here, so say so. And plan each
        // statement once: left to choose, PostgreSQL kept planning the
        // batch's array statements afresh on every execution (a custom plan
        // for each set of arrays), which cost more than running them at small
        // batch sizes (PostgreSQL CPU per change 187 -> 139 us at hot-16).
        client
            .batch_execute(
                "SET enable_seqscan = off; SET enable_hashjoin = off; SET enable_mergejoin = off; \
                 SET plan_cache_mode = force_generic_plan",
            )
            .await?;
        // Once per connection: one round trip each is no matter.
        let statements = Statements {
            lock: client.prepare(sql::LOCK).await?,
            load_accounts: client.prepare(sql::LOAD_ACCOUNTS).await?,
            load_keys: client.prepare(sql::LOAD_KEYS).await?,
            load_reservations: client.prepare(sql::LOAD_RESERVATIONS).await?,
            write_batch: client.prepare(sql::WRITE_BATCH).await?,
        };
        Ok(Self { client, statements })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn without_a_fence_nothing_is_fenced() {
        let split = SplitFence::of(None, &[id(1), id(2)], &[3, 4]);
        assert!(split.ids.is_empty() && split.versions.is_empty() && split.heads.is_empty());
        assert_eq!(split.updated_heads, vec![None, None]);
    }

    #[test]
    fn an_updated_account_is_fenced_by_its_update_and_the_rest_by_the_fence_proper() {
        let (a, b, c, d) = (id(1), id(2), id(3), id(4));
        let heads = [Some(vec![0xaa]), Some(vec![0xbb]), None, Some(vec![0xdd])];
        let fence = Fence {
            lock_keys: &[],
            ids: &[a, b, c, d],
            versions: &[10, 20, 30, 40],
            heads: &heads,
        };
        // Updated out of the fence's order: d as decided from, a as decided
        // from, and b at a version other than the one decided from (so its
        // update cannot stand for the fence). c is decided from only.
        let updated = [d, b, a];
        let expected = [40, 21, 10];
        let split = SplitFence::of(Some(&fence), &updated, &expected);

        assert_eq!(split.ids, vec![b, c]);
        assert_eq!(split.versions, vec![20, 30]);
        assert_eq!(split.heads, vec![Some(&[0xbb][..]), None]);
        assert_eq!(
            split.updated_heads,
            vec![Some(&[0xdd][..]), None, Some(&[0xaa][..])]
        );
    }

    #[test]
    fn an_updated_account_without_a_head_yet_is_still_fenced_by_its_update() {
        let a = id(7);
        let heads = [None];
        let fence = Fence {
            lock_keys: &[],
            ids: &[a],
            versions: &[0],
            heads: &heads,
        };
        let split = SplitFence::of(Some(&fence), &[a], &[0]);
        assert!(split.ids.is_empty());
        assert_eq!(split.updated_heads, vec![None]);
    }
}

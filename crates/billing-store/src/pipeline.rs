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
use crate::sql::WriteBatch;
use crate::{StoreError, sql};

mod fence;

pub(crate) use fence::Fence;
use fence::SplitFence;

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
    let updated: Vec<_> = writes
        .accounts
        .iter()
        .filter_map(|r| r.expected_version.map(|v| (r, v)))
        .collect();
    let updated_ids: Vec<Uuid> = updated.iter().map(|(r, _)| r.account.id).collect();
    let updated_expected: Vec<i64> = updated.iter().map(|(_, v)| *v).collect();
    let fence_split = SplitFence::of(fence, &updated_ids, &updated_expected);

    let e = &writes.events;
    let column = |f: fn(&billing_domain::Balances) -> i64| -> Vec<i64> {
        e.iter().map(|r| f(&r.balances)).collect()
    };
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
    let new_res = reservation_columns(true)?;
    let res = reservation_columns(false)?;
    let k = &writes.keys;

    // Every argument by the name of the function's parameter it is passed
    // to (`sql::WriteBatch`): the statement binds them by name.
    let arguments = WriteBatch {
        lock_keys: fence.map_or(&[], |f| f.lock_keys),
        fence_ids: fence_split.ids,
        fence_versions: fence_split.versions,
        fence_heads: fence_split.heads,

        created_ids: created.iter().map(|r| r.account.id).collect(),
        created_customers: created.iter().map(|r| r.account.customer_id).collect(),
        created_versions: created.iter().map(|r| r.account.version).collect(),
        created_states: documents(created.iter().map(|r| &r.account))?,
        created_due: created.iter().map(|r| r.account.next_due()).collect(),
        created_at_: created.iter().map(|r| r.updated_at).collect(),

        updated_states: documents(updated.iter().map(|(r, _)| &r.account))?,
        updated_versions: updated.iter().map(|(r, _)| r.account.version).collect(),
        updated_due: updated.iter().map(|(r, _)| r.account.next_due()).collect(),
        updated_at_: updated.iter().map(|(r, _)| r.updated_at).collect(),
        updated_ids,
        updated_expected,
        updated_heads: fence_split.updated_heads,

        event_schema: billing_domain::EVENT_SCHEMA_VERSION,
        event_ids: e.iter().map(|r| r.event_id).collect(),
        event_accounts: e.iter().map(|r| r.account_id).collect(),
        event_versions: e.iter().map(|r| r.version).collect(),
        event_types: e.iter().map(|r| r.event.event_type()).collect(),
        event_times: e.iter().map(|r| r.occurred_at).collect(),
        event_principals: e.iter().map(|r| r.principal.as_str()).collect(),
        event_roles: e.iter().map(|r| r.role.as_str()).collect(),
        event_keys: e.iter().map(|r| r.idempotency_key.as_deref()).collect(),
        event_traces: e.iter().map(|r| r.trace_id.as_deref()).collect(),
        event_payloads: e.iter().map(|r| &r.payload).collect(),
        event_bc: column(|b| b.balance_credit.get()),
        event_bt: column(|b| b.balance_token.get()),
        event_rc: column(|b| b.reserved_credit.get()),
        event_rt: column(|b| b.reserved_token.get()),
        event_ac: column(|b| b.available_credit.get()),
        event_avt: column(|b| b.available_token.get()),
        event_views: e.iter().map(|r| r.account_after.as_ref()).collect(),
        event_hashes: e.iter().map(|r| r.hash.as_slice()).collect(),
        event_spans: e.iter().map(|r| r.span_id.as_deref()).collect(),

        new_res_ids: new_res.ids,
        new_res_accounts: new_res.accounts,
        new_res_statuses: new_res.statuses,
        new_res_holds: new_res.holds,
        new_res_expiry: new_res.expires_at,
        new_res_commits: new_res.commits,
        new_res_resolved: new_res.resolved,
        new_res_at: new_res.updated_at,

        res_ids: res.ids,
        res_accounts: res.accounts,
        res_statuses: res.statuses,
        res_holds: res.holds,
        res_expiry: res.expires_at,
        res_commits: res.commits,
        res_resolved: res.resolved,
        res_at: res.updated_at,

        key_names: k.iter().map(|r| r.key.as_str()).collect(),
        key_operations: k.iter().map(|r| r.operation).collect(),
        key_hashes: k.iter().map(|r| r.request_hash.as_slice()).collect(),
        key_accounts: k.iter().map(|r| r.account_id).collect(),
        key_outcomes: k
            .iter()
            .map(
                |r| match r.slim.then(|| SlimOutcome::of(&r.outcome)).flatten() {
                    Some(slim) => Document::of(&slim),
                    None => Document::of(&r.outcome),
                },
            )
            .collect::<Result<_, _>>()?,
        key_at: k.iter().map(|r| r.created_at).collect(),
    };
    let params = arguments.params();
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

/// One set of reservation rows (new, or changed) as columns.
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
            write_batch: client.prepare(&sql::write_batch()).await?,
        };
        Ok(Self { client, statements })
    }
}

//! A batch's conversation with PostgreSQL: a writer's own connection and its
//! prepared statements, statements as pipeline steps (sent in order, in one
//! round trip), and the batch's set-based writes pipelined with `COMMIT`.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::TryStreamExt;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row, Statement};
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

/// The batch's writes and its COMMIT, pipelined. Every write either does
/// exactly what it says or fails (counts are asserted in SQL), and a failed
/// statement aborts the transaction, so the pipelined COMMIT then rolls back.
///
/// With a `fence` (the fast path), BEGIN, the locks and the fence go first,
/// in the same pipeline.
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

    let mut steps: Vec<Step<'_>> = Vec::new();
    if let Some(fence) = fence {
        steps.push(Box::pin(async {
            client.batch_execute("BEGIN").await?;
            Ok(Vec::new())
        }));
        if !fence.lock_keys.is_empty() {
            steps.push(query(client, &s.lock, vec![&fence.lock_keys]));
            steps.push(query(
                client,
                &s.fence,
                vec![&fence.ids, &fence.versions, &fence.heads],
            ));
        }
    }
    if !created.is_empty() {
        steps.push(query(
            client,
            &s.insert_accounts,
            vec![
                &created_ids,
                &created_customers,
                &created_versions,
                &created_states,
                &created_due,
                &created_at,
            ],
        ));
    }
    if !updated.is_empty() {
        steps.push(query(
            client,
            &s.update_accounts,
            vec![
                &updated_ids,
                &updated_states,
                &updated_versions,
                &updated_due,
                &updated_at,
                &expected,
            ],
        ));
    }
    if !e.is_empty() {
        steps.push(query(
            client,
            &s.insert_events,
            vec![
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
            ],
        ));
    }
    for (columns, statement) in [
        (&new_reservations, &s.insert_reservations),
        (&changed_reservations, &s.update_reservations),
    ] {
        if !columns.ids.is_empty() {
            steps.push(query(client, statement, columns.params()));
        }
    }
    if !k.is_empty() {
        steps.push(query(
            client,
            &s.insert_keys,
            vec![
                &keys,
                &operations,
                &hashes,
                &key_accounts,
                &outcomes,
                &key_times,
            ],
        ));
    }
    let writes_sent = steps.len();
    steps.push(Box::pin(async {
        client.batch_execute("COMMIT").await?;
        Ok(Vec::new())
    }));
    let mut results = futures::future::join_all(steps).await;
    let commit = results.pop().unwrap_or_else(|| Ok(Vec::new()));
    debug_assert_eq!(results.len(), writes_sent);
    // A failed write aborted the transaction: the COMMIT rolled it back.
    if let Some(error) = results.into_iter().find_map(Result::err) {
        let error: StoreError = error.into();
        // A statement that failed aborted the transaction, and its COMMIT
        // rolled back. A lost connection says nothing of the COMMIT, sent in
        // the same pipeline: it may have run, so the batch is not retried.
        let commit_sent = matches!(error, StoreError::Unavailable(_));
        return Err(Failed { error, commit_sent });
    }
    commit.map_err(|error| Failed {
        error: error.into(),
        commit_sent: true,
    })?;
    Ok(())
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
    pub(crate) fence: Statement,
    pub(crate) load_accounts: Statement,
    pub(crate) load_keys: Statement,
    pub(crate) load_reservations: Statement,
    pub(crate) insert_accounts: Statement,
    pub(crate) update_accounts: Statement,
    pub(crate) insert_events: Statement,
    pub(crate) insert_reservations: Statement,
    pub(crate) update_reservations: Statement,
    pub(crate) insert_keys: Statement,
}

impl Connection {
    pub(crate) async fn open(config: &tokio_postgres::Config) -> Result<Self, StoreError> {
        let connect = config.connect(NoTls);
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
            fence: client.prepare(sql::FENCE).await?,
            load_accounts: client.prepare(sql::LOAD_ACCOUNTS).await?,
            load_keys: client.prepare(sql::LOAD_KEYS).await?,
            load_reservations: client.prepare(sql::LOAD_RESERVATIONS).await?,
            insert_accounts: client.prepare(sql::INSERT_ACCOUNTS).await?,
            update_accounts: client.prepare(sql::UPDATE_ACCOUNTS).await?,
            insert_events: client.prepare(sql::INSERT_EVENTS).await?,
            insert_reservations: client.prepare(sql::INSERT_RESERVATIONS).await?,
            update_reservations: client.prepare(sql::UPDATE_RESERVATIONS).await?,
            insert_keys: client.prepare(sql::INSERT_KEYS).await?,
        };
        Ok(Self { client, statements })
    }
}

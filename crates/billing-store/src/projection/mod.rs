//! The projection of the event feed into the read models (`rm_accounts`,
//! `ledger_entries`), and the queries that read them.
//!
//! The projector is a handler of the feed (one active process, by the
//! checkpoint's lease); a batch of events is folded by a pure function
//! ([`fold`]: the touched accounts' projected state and the events in, the
//! rows to write out), and its writes ([`write`]) commit with the
//! checkpoint's move in one transaction on the lease's connection. An event
//! at or below an account's projected version was applied already and is
//! skipped; one beyond the next version is a gap and stops the batch there
//! rather than being applied out of order.
//!
//! - `mod.rs`: batches, rebuild, and the queries of the read models.
//! - `fold.rs`: the fold, pure, with its property tests.
//! - `write.rs`: a batch's reads and writes around the fold.

mod fold;
mod write;

use std::sync::Arc;

use billing_domain::{Account, AccountView, Balances, Micros, ReferenceType};
use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use uuid::Uuid;

use crate::feed::{Cursor, FeedBatch, FeedRead, MOVE_CHECKPOINT, StoredEvent, feed_rows};
use crate::{Store, StoreError};

/// Locks every checkpoint row of the read models, the single one (the
/// release before's) and each slice's, in name order: `billing rebuild`
/// holds them all while it runs.
const LOCK_EVERY_CHECKPOINT: &str = "SELECT name FROM feed_checkpoints
     WHERE name = $1 OR starts_with(name, $1 || '/') ORDER BY name FOR UPDATE";
/// Moves every checkpoint row of the read models (as
/// [`LOCK_EVERY_CHECKPOINT`] names them) to `$2`, `$3`.
const MOVE_EVERY_CHECKPOINT: &str =
    "UPDATE feed_checkpoints SET xid = $2::text::xid8, position = $3
     WHERE name = $1 OR starts_with(name, $1 || '/')";
/// Locks a projection batch's checkpoint row and reads it (the cursor's
/// columns first, as [`Cursor::from_row`] reads them): a batch and `billing
/// rebuild` exclude each other by it. The batch does not wait for a
/// rebuild (a shutdown would wait with it): it fails at once, and the
/// follower tries again after a back-off.
const LOCK_CHECKPOINT_NOWAIT: &str = "SELECT position, xid::text AS xid_text FROM feed_checkpoints WHERE name = $1 FOR UPDATE NOWAIT";
/// The SQLSTATE of a `NOWAIT` lock held by another transaction.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// The checkpoint the read-model projector keeps.
pub const READ_MODELS: &str = "read_models";

/// What one batch did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Events folded into the read models.
    pub applied: usize,
    /// Events already applied (at or below the account's projected version).
    pub skipped: usize,
    /// The checkpoint after the batch.
    pub cursor: Cursor,
    /// An event that came before its predecessor: the batch stopped there.
    pub gap: Option<Gap>,
}

/// How far a rebuild of the read models has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RebuildProgress {
    /// Events projected so far.
    pub done: u64,
    /// Events there were when the rebuild started (at least `done`).
    pub total: u64,
}

/// An account's next event was not the one the feed offered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gap {
    pub account_id: Uuid,
    pub expected: i64,
    pub found: i64,
}

/// A ledger entry as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerEntry {
    pub id: Uuid,
    pub account_id: Uuid,
    pub version: i64,
    pub transaction_type: String,
    pub reference_type: String,
    pub reference_id: String,
    pub service_type: Option<String>,
    pub billable_units: Option<i64>,
    pub rate_token_per_unit: Option<i64>,
    pub rate_credit_per_unit: Option<i64>,
    pub amount_token: i64,
    /// Paid credit moved.
    pub amount_credit: i64,
    pub amount_promotional: i64,
    pub balance_token_after: i64,
    pub balance_credit_after: i64,
    /// Promotional credit after, as recorded (see [`Account::promotional_recorded`]).
    pub balance_promotional_after: i64,
    pub actor_principal: String,
    pub actor_role: String,
    pub tm_create: DateTime<Utc>,
}

/// Which ledger entries to read, newest first.
#[derive(Clone, Debug, Default)]
pub struct LedgerQuery {
    pub account_id: Uuid,
    pub limit: i64,
    pub offset: i64,
    /// Keyset cursor: only entries with a version below this.
    pub before_version: Option<i64>,
    pub reference_type: Option<ReferenceType>,
    /// Inclusive.
    pub start_time: Option<DateTime<Utc>>,
    /// Exclusive.
    pub end_time: Option<DateTime<Utc>>,
}

/// The read models: the projector's batches, their rebuild, and the
/// queries of accounts for listing and of the ledger ([`Store::read_models`]).
#[derive(Clone, Copy, Debug)]
pub struct ReadModels<'a> {
    pub(crate) store: &'a Store,
}

impl ReadModels<'_> {
    /// Projects `batch` (read [`FeedRead::EventsWithoutView`] by a
    /// [`Follower`] from checkpoint [`READ_MODELS`]) and moves the checkpoint
    /// past it, in one transaction on the lease's connection: the writes and
    /// the checkpoint commit together, and only while the lease holds.
    ///
    /// The transaction first locks the checkpoint row and checks that it is
    /// where the batch began: `billing rebuild` holds that row while it
    /// runs, so a batch meanwhile fails at once
    /// ([`StoreError::CheckpointBusy`], tried again after a back-off), and
    /// the first one after it finds the checkpoint moved
    /// ([`StoreError::CheckpointMoved`]) rather than writing over the
    /// rebuilt tables; the follower reads again from the rebuild's
    /// checkpoint.
    ///
    /// [`Follower`]: crate::Follower
    pub async fn project(self, batch: &FeedBatch) -> Result<BatchReport, StoreError> {
        let lease = batch.lease.as_ref().ok_or_else(|| {
            StoreError::Config("a projection batch is read under the checkpoint's lease".into())
        })?;
        let name = lease.name();
        let mut client = lease.client().await;
        // Writes need not wait for their fsync: the lease's connection has
        // `synchronous_commit` off (the read models are a replayable
        // function of the events; a batch lost in a crash is projected
        // again, its writes and checkpoint still commit or vanish together).
        let tx = client.transaction().await?;
        // Sent together: the state is read once the checkpoint's lock is
        // granted (each statement takes its snapshot when it runs).
        let (checkpoint, state) = futures::try_join!(
            async {
                let row = tx
                    .query_one(LOCK_CHECKPOINT_NOWAIT, &[&name])
                    .await
                    .map_err(|error| match StoreError::from(error) {
                        locked if locked.sqlstate() == Some(LOCK_NOT_AVAILABLE) => {
                            StoreError::CheckpointBusy(name.to_owned())
                        }
                        other => other,
                    })?;
                Cursor::from_row(&row)
            },
            write::read_state(&tx, &batch.events),
        )?;
        if checkpoint != batch.after {
            return Err(StoreError::CheckpointMoved {
                name: name.to_owned(),
                expected: batch.after,
                found: checkpoint,
            });
        }
        let writes = fold::fold(batch.after, state, &batch.events)?;
        let cursor = writes.report.cursor;
        futures::try_join!(write::write(&tx, &writes.accounts, &writes.ledger), async {
            if cursor != batch.after {
                tx.execute(
                    MOVE_CHECKPOINT,
                    &[&name, &cursor.xid_param(), &cursor.position],
                )
                .await?;
            }
            Ok(())
        },)?;
        tx.commit().await?;
        if let Some(gap) = &writes.report.gap {
            tracing::error!(account_id = %gap.account_id, expected = gap.expected, found = gap.found,
                "projection: an event came before its predecessor; stopping here");
        }
        batch.checkpointed_at(cursor);
        Ok(writes.report)
    }

    /// Projects up to `limit` events after checkpoint `name`, once, holding
    /// its lease for that batch (for tests and tools; the projector role is
    /// a [`Sliced`](crate::Sliced) reader). For a partitioned reader, a
    /// batch of up to `limit` of each slice whose lease is free, reported
    /// together. `None` while other processes hold every lease.
    pub async fn project_batch(
        self,
        name: &str,
        limit: i64,
    ) -> Result<Option<BatchReport>, StoreError> {
        let slices = self.store.feed().slices(name).await?;
        if slices.is_empty() {
            return self
                .project_leased(self.store.feed().acquire_lease(name).await?, limit)
                .await;
        }
        let mut total: Option<BatchReport> = None;
        for slice in slices {
            let lease = self.store.feed().acquire_slice_lease(name, slice).await?;
            let Some(report) = self.project_leased(lease, limit).await? else {
                continue;
            };
            let total = total.get_or_insert_with(BatchReport::default);
            total.applied += report.applied;
            total.skipped += report.skipped;
            total.cursor = total.cursor.max(report.cursor);
            if total.gap.is_none() {
                total.gap = report.gap;
            }
        }
        Ok(total)
    }

    /// [`Self::project_batch`] of one checkpoint, under its `lease`.
    async fn project_leased(
        self,
        lease: Option<crate::Lease>,
        limit: i64,
    ) -> Result<Option<BatchReport>, StoreError> {
        let Some(lease) = lease else {
            return Ok(None);
        };
        let after = lease.cursor().await?;
        let mut batch = self
            .store
            .feed()
            .read_batch(
                after,
                limit,
                FeedRead::EventsWithoutView,
                lease.slice(),
                |_| true,
            )
            .await?;
        batch.lease = Some(Arc::new(lease));
        self.project(&batch).await.map(Some)
    }

    /// Deletes the read models and projects every event again, `batch`
    /// events at a time, in one transaction, calling `progress` after every
    /// batch: readers see the old tables until it commits. It holds the
    /// checkpoint's row throughout: the live projector's batches fail
    /// meanwhile and are tried again, until one finds the checkpoint moved
    /// and carries on from there.
    pub async fn rebuild_read_models_with(
        self,
        batch: i64,
        mut progress: impl FnMut(RebuildProgress) + Send,
    ) -> Result<BatchReport, StoreError> {
        let mut client = self.store.pool.get().await?;
        let tx = client.transaction().await?;
        tx.query(LOCK_EVERY_CHECKPOINT, &[&READ_MODELS]).await?;
        // An estimate (events may commit while the rebuild runs): it only
        // tells the operator how far along the rebuild is.
        let total_events: i64 = tx
            .query_one("SELECT count(*) FROM events", &[])
            .await?
            .get(0);
        tx.batch_execute("DELETE FROM ledger_entries; DELETE FROM rm_accounts;")
            .await?;
        let mut total = BatchReport::default();
        loop {
            let rows =
                feed_rows(&*tx, total.cursor, batch, FeedRead::EventsWithoutView, None).await?;
            let events = rows
                .iter()
                .map(StoredEvent::from_row)
                .collect::<Result<Vec<_>, _>>()?;
            if events.is_empty() {
                break;
            }
            let report = write::apply(&*tx, total.cursor, &events).await?;
            total.applied += report.applied;
            total.skipped += report.skipped;
            total.cursor = report.cursor;
            if report.gap.is_some() {
                return Err(StoreError::Corrupt(format!(
                    "gap while rebuilding: {:?}",
                    report.gap
                )));
            }
            let done = total.applied + total.skipped;
            progress(RebuildProgress {
                done: done as u64,
                total: (total_events.max(0) as u64).max(done as u64),
            });
        }
        // Every slice's checkpoint (and the single one) at the rebuild's end:
        // each slice's events up to it are projected.
        tx.execute(
            MOVE_EVERY_CHECKPOINT,
            &[
                &READ_MODELS,
                &total.cursor.xid_param(),
                &total.cursor.position,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(total)
    }

    /// The version the read models have reached for one account (0 if none).
    pub async fn projected_version(self, account_id: Uuid) -> Result<i64, StoreError> {
        let client = self.store.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT version FROM rm_accounts WHERE account_id = $1",
                &[&account_id],
            )
            .await?;
        Ok(row.map_or(0, |r| r.get(0)))
    }

    /// Accounts from the read model by id, after `after`, optionally of one
    /// customer.
    pub async fn list_accounts(
        self,
        customer_id: Option<Uuid>,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<AccountView>, StoreError> {
        let client = self.store.pool.get().await?;
        let rows = client
            .query(
                "SELECT state, balance_credit, balance_token, reserved_credit, reserved_token,
                        available_credit, available_token, balance_promotional
                 FROM rm_accounts
                 WHERE ($1::uuid IS NULL OR customer_id = $1) AND ($2::uuid IS NULL OR account_id > $2)
                 ORDER BY account_id LIMIT $3",
                &[&customer_id, &after, &limit],
            )
            .await?;
        rows.iter().map(rm_view).collect()
    }

    /// A page of one account's ledger, newest first.
    pub async fn ledger(self, q: &LedgerQuery) -> Result<Vec<LedgerEntry>, StoreError> {
        let client = self.store.pool.get().await?;
        let reference_type = q.reference_type.map(|r| r.as_str());
        let rows = client
            .query(
                "SELECT id, account_id, version, transaction_type, reference_type, reference_id, service_type,
                        billable_units, rate_token_per_unit, rate_credit_per_unit, amount_token, amount_credit,
                        balance_token_after, balance_credit_after, actor_principal, actor_role, tm_create,
                        amount_promotional, balance_promotional_after
                 FROM ledger_entries
                 WHERE account_id = $1
                   AND ($2::bigint IS NULL OR version < $2)
                   AND ($3::text IS NULL OR reference_type = $3)
                   AND ($4::timestamptz IS NULL OR tm_create >= $4)
                   AND ($5::timestamptz IS NULL OR tm_create < $5)
                 ORDER BY version DESC
                 LIMIT $6 OFFSET $7",
                &[
                    &q.account_id,
                    &q.before_version,
                    &reference_type,
                    &q.start_time,
                    &q.end_time,
                    &q.limit,
                    &q.offset,
                ],
            )
            .await?;
        Ok(rows.iter().map(ledger_entry).collect())
    }
}

fn balances(row: &Row, first: usize) -> Balances {
    use billing_domain::Tokens;
    Balances {
        balance_credit: Micros(row.get(first)),
        balance_token: Tokens(row.get(first + 1)),
        reserved_credit: Micros(row.get(first + 2)),
        reserved_token: Tokens(row.get(first + 3)),
        available_credit: Micros(row.get(first + 4)),
        available_token: Tokens(row.get(first + 5)),
    }
}

/// An account of the read model, with the balances of its last event.
fn rm_view(row: &Row) -> Result<AccountView, StoreError> {
    let account: Account = serde_json::from_value(row.get(0))?;
    let b = balances(row, 1);
    let mut view = account
        .view(account.tm_update)
        .map_err(|_| StoreError::Corrupt(format!("account {} overflows", account.id)))?;
    view.balance_credit = b.balance_credit;
    view.balance_token = b.balance_token;
    view.reserved_credit = b.reserved_credit;
    view.reserved_token = b.reserved_token;
    view.available_credit = b.available_credit;
    view.available_token = b.available_token;
    view.balance_promotional = Micros(row.get(7));
    view.over_limit = b.available_credit.is_negative();
    Ok(view)
}

fn ledger_entry(row: &Row) -> LedgerEntry {
    LedgerEntry {
        id: row.get(0),
        account_id: row.get(1),
        version: row.get(2),
        transaction_type: row.get(3),
        reference_type: row.get(4),
        reference_id: row.get(5),
        service_type: row.get(6),
        billable_units: row.get(7),
        rate_token_per_unit: row.get(8),
        rate_credit_per_unit: row.get(9),
        amount_token: row.get(10),
        amount_credit: row.get(11),
        balance_token_after: row.get(12),
        balance_credit_after: row.get(13),
        actor_principal: row.get(14),
        actor_role: row.get(15),
        tm_create: row.get(16),
        amount_promotional: row.get(17),
        balance_promotional_after: row.get(18),
    }
}

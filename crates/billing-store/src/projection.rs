//! The projection of the event feed into the read models (`rm_accounts`,
//! `ledger_entries`), and the queries that read them.
//!
//! A batch runs as one transaction with its checkpoint: it locks the
//! checkpoint row (`SKIP LOCKED`, so a second replica waits its turn instead
//! of double-applying), reads the feed after it, folds each event into the
//! account with the domain's own `evolve`, writes the read models and moves
//! the checkpoint. An event at or below an account's projected version was
//! applied already and is skipped; one beyond the next version is a gap and
//! stops the batch there rather than being applied out of order.

use std::collections::BTreeMap;

use crate::feed::FeedColumns;
use billing_domain::{Account, AccountView, Balances, Event, Micros, ReferenceType, ledger_line};
use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use tokio_postgres::Row;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::feed::{Cursor, StoredEvent};
use crate::{Store, StoreError};

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

/// How far a feed reader is behind.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lag {
    /// Committed events after the checkpoint.
    pub events: i64,
    /// Age of the oldest of them, in seconds (0 when caught up).
    pub seconds: f64,
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

/// An account row of the read model being written by a batch.
struct Projected {
    account: Account,
    balances: Balances,
    /// Promotional credit that counted when the last event happened.
    promotional: i64,
}

impl Store {
    /// Projects up to `limit` events after checkpoint `name`. `None` when
    /// another replica holds the checkpoint right now.
    pub async fn project_batch(
        &self,
        name: &str,
        limit: i64,
    ) -> Result<Option<BatchReport>, StoreError> {
        self.project_batch_traced(name, limit, |_| tracing::Span::none())
            .await
    }

    /// [`Store::project_batch`], with `span_for` making the span of a batch
    /// that has events to fold, from those events (the projector links it to
    /// the requests that caused them). The span covers folding them in and
    /// the commit; an empty batch makes none.
    pub async fn project_batch_traced(
        &self,
        name: &str,
        limit: i64,
        span_for: impl FnOnce(&[StoredEvent]) -> tracing::Span,
    ) -> Result<Option<BatchReport>, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // The read models are a replayable function of the events: a batch
        // lost in a crash is projected again, so it need not wait for its
        // fsync. (Its writes and checkpoint still commit or vanish together.)
        tx.batch_execute("SET LOCAL synchronous_commit = off")
            .await?;
        let Some(row) = tx
            .query_opt(
                "SELECT xid::text, position FROM feed_checkpoints WHERE name = $1 FOR UPDATE SKIP LOCKED",
                &[&name],
            )
            .await?
        else {
            return Ok(None);
        };
        let start = cursor_from(&row)?;
        let events = read_feed_in(&tx, start, limit).await?;
        let span = if events.is_empty() {
            tracing::Span::none()
        } else {
            span_for(&events)
        };
        async {
            let report = apply(&tx, start, &events).await?;
            if report.cursor != start {
                tx.execute(
                    "UPDATE feed_checkpoints SET xid = $2::text::xid8, position = $3 WHERE name = $1",
                    &[
                        &name,
                        &report.cursor.xid.to_string(),
                        &report.cursor.position,
                    ],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(Some(report))
        }
        .instrument(span)
        .await
    }

    /// Deletes the read models and projects every event again, in one
    /// transaction: readers see the old tables until it commits, and the
    /// live projector waits (its checkpoint is locked) and then carries on.
    pub async fn rebuild_read_models(&self, batch: i64) -> Result<BatchReport, StoreError> {
        self.rebuild_read_models_with(batch, |_| {}).await
    }

    /// [`Self::rebuild_read_models`], calling `progress` after every batch.
    pub async fn rebuild_read_models_with(
        &self,
        batch: i64,
        mut progress: impl FnMut(RebuildProgress) + Send,
    ) -> Result<BatchReport, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT 1 FROM feed_checkpoints WHERE name = $1 FOR UPDATE",
            &[&READ_MODELS],
        )
        .await?;
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
            let events = read_feed_in(&tx, total.cursor, batch).await?;
            if events.is_empty() {
                break;
            }
            let report = apply(&tx, total.cursor, &events).await?;
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
        tx.execute(
            "UPDATE feed_checkpoints SET xid = $2::text::xid8, position = $3 WHERE name = $1",
            &[
                &READ_MODELS,
                &total.cursor.xid.to_string(),
                &total.cursor.position,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(total)
    }

    /// How far checkpoint `name` is behind the feed.
    pub async fn feed_lag(&self, name: &str) -> Result<Lag, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // The events after a checkpoint are a range of the feed index; without
        // statistics the planner guesses a third of the table and reads all of
        // it (3.6 ms a call at 100,000 events, while measuring a benchmark).
        // Nor is a short range worth parallel workers: each is a process
        // started for the call, which showed up as the ExecuteGather wait.
        tx.batch_execute(
            "SET LOCAL enable_seqscan = off; SET LOCAL max_parallel_workers_per_gather = 0",
        )
        .await?;
        let row = tx
            .query_one(
                "SELECT count(*), extract(epoch FROM (now() - min(e.occurred_at)))::float8
                 FROM events e
                 WHERE (e.xid, e.position) >
                       (SELECT c.xid, c.position FROM feed_checkpoints c WHERE c.name = $1)",
                &[&name],
            )
            .await?;
        tx.commit().await?;
        Ok(Lag {
            events: row.get(0),
            seconds: row.get::<_, Option<f64>>(1).unwrap_or(0.0).max(0.0),
        })
    }

    /// The read model's folded account (without holds) and the balances of
    /// its last projected event.
    pub async fn read_model_account(
        &self,
        account_id: Uuid,
    ) -> Result<Option<(Account, Balances)>, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT state, balance_credit, balance_token, reserved_credit, reserved_token,
                        available_credit, available_token
                 FROM rm_accounts WHERE account_id = $1",
                &[&account_id],
            )
            .await?;
        row.map(|r| Ok((serde_json::from_value(r.get(0))?, balances(&r, 1))))
            .transpose()
    }

    /// The version the read models have reached for one account (0 if none).
    pub async fn projected_version(&self, account_id: Uuid) -> Result<i64, StoreError> {
        let client = self.pool.get().await?;
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
        &self,
        customer_id: Option<Uuid>,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<AccountView>, StoreError> {
        let client = self.pool.get().await?;
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
    pub async fn ledger(&self, q: &LedgerQuery) -> Result<Vec<LedgerEntry>, StoreError> {
        let client = self.pool.get().await?;
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

fn cursor_from(row: &Row) -> Result<Cursor, StoreError> {
    let xid: &str = row.get(0);
    Ok(Cursor {
        xid: xid
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("xid `{xid}`")))?,
        position: row.get(1),
    })
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

async fn read_feed_in(
    tx: &Transaction<'_>,
    after: Cursor,
    limit: i64,
) -> Result<Vec<StoredEvent>, StoreError> {
    let rows = crate::feed::feed_rows(&**tx, after, limit, FeedColumns::WithoutView).await?;
    rows.iter().map(StoredEvent::from_row).collect()
}

/// Folds `events` into the read models within `tx`.
async fn apply(
    tx: &Transaction<'_>,
    start: Cursor,
    events: &[StoredEvent],
) -> Result<BatchReport, StoreError> {
    let mut report = BatchReport {
        cursor: start,
        ..BatchReport::default()
    };
    if events.is_empty() {
        return Ok(report);
    }
    let ids: Vec<Uuid> = events.iter().map(|e| e.account_id).collect();
    let mut accounts: BTreeMap<Uuid, Projected> = BTreeMap::new();
    let mut versions: BTreeMap<Uuid, i64> = BTreeMap::new();
    for row in tx
        .query(
            "SELECT account_id, version, state FROM rm_accounts WHERE account_id = ANY($1)",
            &[&ids],
        )
        .await?
    {
        let account: Account = serde_json::from_value(row.get(2))?;
        versions.insert(row.get(0), row.get(1));
        accounts.insert(
            row.get(0),
            Projected {
                account,
                balances: Balances::default(),
                promotional: 0,
            },
        );
    }
    let mut touched = std::collections::BTreeSet::new();
    let mut ledger = Vec::new();
    for e in events {
        let current = versions.get(&e.account_id).copied().unwrap_or(0);
        if e.version <= current {
            report.skipped += 1;
            report.cursor = e.cursor;
            continue;
        }
        if e.version != current + 1 {
            tracing::error!(account_id = %e.account_id, expected = current + 1, found = e.version,
                "projection: an event came before its predecessor; stopping here");
            report.gap = Some(Gap {
                account_id: e.account_id,
                expected: current + 1,
                found: e.version,
            });
            break;
        }
        let account = match (&e.event, accounts.remove(&e.account_id)) {
            (Event::AccountCreated(created), None) => {
                Account::created(e.account_id, created, e.occurred_at)
            }
            (event, Some(mut projected)) => {
                projected
                    .account
                    .apply(event, e.occurred_at)
                    .map_err(|_| StoreError::Corrupt(format!("event {} overflows", e.event_id)))?;
                projected.account
            }
            (_, None) => {
                return Err(StoreError::Corrupt(format!(
                    "account {} starts with {}",
                    e.account_id, e.event_type
                )));
            }
        };
        if account.version != e.version {
            return Err(StoreError::Corrupt(format!(
                "account {} folded to version {} at event version {}",
                e.account_id, account.version, e.version
            )));
        }
        let overflow = || StoreError::Corrupt(format!("account {} overflows", e.account_id));
        if let Some(line) = ledger_line(&e.event) {
            let promotional_after = account.promotional_recorded().map_err(|_| overflow())?;
            ledger.push((e, line, promotional_after.get()));
        }
        let promotional = account.promotional(e.occurred_at).map_err(|_| overflow())?;
        versions.insert(e.account_id, e.version);
        accounts.insert(
            e.account_id,
            Projected {
                account,
                balances: e.balances,
                promotional: promotional.get(),
            },
        );
        touched.insert(e.account_id);
        report.applied += 1;
        report.cursor = e.cursor;
    }
    write_accounts(tx, touched.iter().filter_map(|id| accounts.get(id))).await?;
    write_ledger(tx, &ledger).await?;
    Ok(report)
}

async fn write_accounts<'a>(
    tx: &Transaction<'_>,
    accounts: impl Iterator<Item = &'a Projected>,
) -> Result<(), StoreError> {
    let mut ids = Vec::new();
    let mut customers = Vec::new();
    let mut versions = Vec::new();
    let mut states = Vec::new();
    let mut columns: [Vec<i64>; 6] = Default::default();
    let mut created = Vec::new();
    let mut updated = Vec::new();
    let mut promotional = Vec::new();
    for p in accounts {
        promotional.push(p.promotional);
        let a = &p.account;
        ids.push(a.id);
        customers.push(a.customer_id);
        versions.push(a.version);
        states.push(crate::document::Document::of(a)?);
        let b = &p.balances;
        for (column, value) in columns.iter_mut().zip([
            b.balance_credit.get(),
            b.balance_token.get(),
            b.reserved_credit.get(),
            b.reserved_token.get(),
            b.available_credit.get(),
            b.available_token.get(),
        ]) {
            column.push(value);
        }
        created.push(a.tm_create);
        updated.push(a.tm_update);
    }
    if ids.is_empty() {
        return Ok(());
    }
    let [bc, bt, rc, rt, ac, at] = &columns;
    tx.execute(
        "INSERT INTO rm_accounts (account_id, customer_id, version, state, balance_credit, balance_token,
                                  reserved_credit, reserved_token, available_credit, available_token,
                                  tm_create, tm_update, balance_promotional)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::bigint[], $4::json[], $5::bigint[], $6::bigint[],
                              $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[],
                              $11::timestamptz[], $12::timestamptz[], $13::bigint[])
         ON CONFLICT (account_id) DO UPDATE SET
             version = EXCLUDED.version, state = EXCLUDED.state,
             balance_credit = EXCLUDED.balance_credit, balance_token = EXCLUDED.balance_token,
             reserved_credit = EXCLUDED.reserved_credit, reserved_token = EXCLUDED.reserved_token,
             available_credit = EXCLUDED.available_credit, available_token = EXCLUDED.available_token,
             tm_update = EXCLUDED.tm_update, balance_promotional = EXCLUDED.balance_promotional",
        &[
            &ids,
            &customers,
            &versions,
            &states,
            bc,
            bt,
            rc,
            rt,
            ac,
            at,
            &created,
            &updated,
            &promotional,
        ],
    )
    .await?;
    Ok(())
}

async fn write_ledger(
    tx: &Transaction<'_>,
    lines: &[(&StoredEvent, billing_domain::LedgerLine, i64)],
) -> Result<(), StoreError> {
    if lines.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = lines.iter().map(|(e, _, _)| e.event_id).collect();
    let accounts: Vec<Uuid> = lines.iter().map(|(e, _, _)| e.account_id).collect();
    let versions: Vec<i64> = lines.iter().map(|(e, _, _)| e.version).collect();
    let kinds: Vec<&str> = lines
        .iter()
        .map(|(_, l, _)| l.transaction_type.as_str())
        .collect();
    let references: Vec<&str> = lines
        .iter()
        .map(|(_, l, _)| l.reference_type.as_str())
        .collect();
    let reference_ids: Vec<&str> = lines
        .iter()
        .map(|(_, l, _)| l.reference_id.as_str())
        .collect();
    let services: Vec<Option<&str>> = lines
        .iter()
        .map(|(_, l, _)| l.service_type.map(|s| s.as_str()))
        .collect();
    let units: Vec<Option<i64>> = lines.iter().map(|(_, l, _)| l.billable_units).collect();
    let rate_tokens: Vec<Option<i64>> = lines
        .iter()
        .map(|(_, l, _)| l.rate.map(|r| r.tokens_per_unit.get()))
        .collect();
    let rate_credit: Vec<Option<i64>> = lines
        .iter()
        .map(|(_, l, _)| l.rate.map(|r| r.credit_per_unit.get()))
        .collect();
    let amount_token: Vec<i64> = lines.iter().map(|(_, l, _)| l.amount_token.get()).collect();
    let amount_credit: Vec<i64> = lines
        .iter()
        .map(|(_, l, _)| l.amount_credit.get())
        .collect();
    let amount_promotional: Vec<i64> = lines
        .iter()
        .map(|(_, l, _)| l.amount_promotional.get())
        .collect();
    let promotional_after: Vec<i64> = lines.iter().map(|(_, _, after)| *after).collect();
    let token_after: Vec<i64> = lines
        .iter()
        .map(|(e, _, _)| e.balances.balance_token.get())
        .collect();
    let credit_after: Vec<i64> = lines
        .iter()
        .map(|(e, _, _)| e.balances.balance_credit.get())
        .collect();
    let principals: Vec<&str> = lines
        .iter()
        .map(|(e, _, _)| e.actor.principal.as_str())
        .collect();
    let roles: Vec<&str> = lines
        .iter()
        .map(|(e, _, _)| e.actor.role.as_str())
        .collect();
    let times: Vec<DateTime<Utc>> = lines.iter().map(|(e, _, _)| e.occurred_at).collect();
    tx.execute(
        "INSERT INTO ledger_entries (id, account_id, version, transaction_type, reference_type, reference_id,
                                     service_type, billable_units, rate_token_per_unit, rate_credit_per_unit,
                                     amount_token, amount_credit, balance_token_after, balance_credit_after,
                                     actor_principal, actor_role, tm_create, amount_promotional,
                                     balance_promotional_after)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::bigint[], $4::text[], $5::text[], $6::text[],
                              $7::text[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[],
                              $13::bigint[], $14::bigint[], $15::text[], $16::text[], $17::timestamptz[],
                              $18::bigint[], $19::bigint[])
         ON CONFLICT (id) DO NOTHING",
        &[
            &ids,
            &accounts,
            &versions,
            &kinds,
            &references,
            &reference_ids,
            &services,
            &units,
            &rate_tokens,
            &rate_credit,
            &amount_token,
            &amount_credit,
            &token_after,
            &credit_after,
            &principals,
            &roles,
            &times,
            &amount_promotional,
            &promotional_after,
        ],
    )
    .await?;
    Ok(())
}

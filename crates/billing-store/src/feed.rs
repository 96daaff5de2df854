//! The global event feed, followed with the `(xid, position)` cursor.
//!
//! `position` comes from a sequence handed out in concurrent transactions, so
//! a later position can commit before an earlier one. Readers therefore order
//! by the writing transaction's id first and read only below the snapshot's
//! xmin: every transaction below it has finished, so nothing can later appear
//! behind the cursor.

use std::collections::HashMap;

use billing_domain::{AccountView, Balances, Event, Micros, Tokens};
use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use tokio_postgres::types::Json;
use uuid::Uuid;

use crate::{Actor, Store, StoreError};

/// A reader's place in the feed: the last event it has handled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    /// The writing transaction's id (`xid8`).
    pub xid: u64,
    pub position: i64,
}

impl Cursor {
    /// Before the first event.
    pub const START: Self = Self {
        xid: 0,
        position: 0,
    };
}

/// An event as stored, with its envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    pub cursor: Cursor,
    pub event_id: Uuid,
    pub account_id: Uuid,
    pub version: i64,
    pub event_type: String,
    pub schema_version: i32,
    pub occurred_at: DateTime<Utc>,
    pub actor: Actor,
    pub idempotency_key: Option<String>,
    pub trace_id: Option<String>,
    /// The span of the request that caused the event, when it was traced.
    pub span_id: Option<String>,
    pub event: Event,
    pub balances: Balances,
    /// The account view after the event (`None` for events written before
    /// migration 0003).
    pub account_after: Option<AccountView>,
}

/// The most links a span of work on many events carries (the OpenTelemetry
/// SDK's default limit too).
pub const MAX_CAUSES: usize = 128;

/// The distinct spans of the requests that caused `events` (a request's
/// events come together), at most [`MAX_CAUSES`]: what a span of work on
/// them links to.
pub fn causes<'a>(
    events: impl IntoIterator<Item = &'a StoredEvent>,
) -> Vec<opentelemetry::trace::SpanContext> {
    let mut causes: Vec<opentelemetry::trace::SpanContext> = Vec::new();
    for cause in events.into_iter().filter_map(StoredEvent::cause) {
        if causes.len() == MAX_CAUSES {
            break;
        }
        if causes.last() != Some(&cause) {
            causes.push(cause);
        }
    }
    causes
}

/// The event columns readers select. The xid goes out as text under another
/// name: an output column named `xid` would make `ORDER BY xid` sort by the
/// text ("1000" before "933"), and a reader would skip events.
pub(crate) const COLUMNS: &str = "position, xid::text AS xid_text, event_id, account_id, version, event_type, schema_version,
     occurred_at, actor_principal, actor_role, idempotency_key, trace_id, payload,
     balance_credit, balance_token, reserved_credit, reserved_token, available_credit, available_token,
     account_after, span_id";

/// [`COLUMNS`] without the account view, for the projector: it folds the
/// events itself and never reads the view, which is most of a row's bytes
/// and of its parsing.
const COLUMNS_WITHOUT_VIEW: &str = "position, xid::text AS xid_text, event_id, account_id, version, event_type, schema_version,
     occurred_at, actor_principal, actor_role, idempotency_key, trace_id, payload,
     balance_credit, balance_token, reserved_credit, reserved_token, available_credit, available_token,
     NULL::json AS account_after, span_id";

/// What a feed reader reads of each event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FeedColumns {
    /// Every column.
    All,
    /// Every column but the account view (the projector).
    WithoutView,
}

impl StoredEvent {
    pub(crate) fn from_row(row: &Row) -> Result<Self, StoreError> {
        let xid: &str = row.get(1);
        Ok(Self {
            cursor: Cursor {
                xid: xid
                    .parse()
                    .map_err(|_| StoreError::Corrupt(format!("xid `{xid}`")))?,
                position: row.get(0),
            },
            event_id: row.get(2),
            account_id: row.get(3),
            version: row.get(4),
            event_type: row.get(5),
            schema_version: row.get(6),
            occurred_at: row.get(7),
            actor: Actor {
                principal: row.get(8),
                role: row.get(9),
            },
            idempotency_key: row.get(10),
            trace_id: row.get(11),
            // Parsed straight into the types: no `Value` tree in between.
            event: row.try_get::<_, Json<Event>>(12)?.0,
            balances: Balances {
                balance_credit: Micros(row.get(13)),
                balance_token: Tokens(row.get(14)),
                reserved_credit: Micros(row.get(15)),
                reserved_token: Tokens(row.get(16)),
                available_credit: Micros(row.get(17)),
                available_token: Tokens(row.get(18)),
            },
            account_after: row
                .try_get::<_, Option<Json<AccountView>>>(19)?
                .map(|Json(view)| view),
            span_id: row.get(20),
        })
    }

    /// The span of the request that caused this event, for a link from the
    /// work the event causes (projecting it, publishing it). `None` when the
    /// request was not traced.
    pub fn cause(&self) -> Option<opentelemetry::trace::SpanContext> {
        use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
        let span_id = SpanId::from_hex(self.span_id.as_deref()?).ok()?;
        let trace_id = TraceId::from_hex(self.trace_id.as_deref()?).ok()?;
        let context = SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::SAMPLED,
            true,
            TraceState::NONE,
        );
        context.is_valid().then_some(context)
    }
}

/// The feed query, the one definition every reader uses: events after
/// `after` in `(xid, position)` order, only from transactions below the
/// snapshot's xmin (all finished), so nothing can later appear behind the
/// cursor.
pub(crate) async fn feed_rows(
    client: &impl tokio_postgres::GenericClient,
    after: Cursor,
    limit: i64,
    columns: FeedColumns,
) -> Result<Vec<Row>, StoreError> {
    let columns = match columns {
        FeedColumns::All => COLUMNS,
        FeedColumns::WithoutView => COLUMNS_WITHOUT_VIEW,
    };
    let sql = format!(
        "SELECT {columns} FROM events
         WHERE (xid, position) > ($1::text::xid8, $2)
           AND xid < pg_snapshot_xmin(pg_current_snapshot())
         ORDER BY xid, position
         LIMIT $3"
    );
    Ok(client
        .query(&sql, &[&after.xid.to_string(), &after.position, &limit])
        .await?)
}

impl Store {
    /// Up to `limit` events after `after`, in feed order, from transactions
    /// that have all finished. Never skips an event: one in a transaction
    /// still open is returned after it commits, never passed over.
    pub async fn read_feed(
        &self,
        after: Cursor,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let client = self.pool.get().await?;
        let rows = feed_rows(&**client, after, limit, FeedColumns::All).await?;
        rows.iter().map(StoredEvent::from_row).collect()
    }

    /// Every event of one account, oldest first.
    pub async fn account_events(&self, account_id: Uuid) -> Result<Vec<StoredEvent>, StoreError> {
        let client = self.pool.get().await?;
        let sql = format!("SELECT {COLUMNS} FROM events WHERE account_id = $1 ORDER BY version");
        let rows = client.query(&sql, &[&account_id]).await?;
        rows.iter().map(StoredEvent::from_row).collect()
    }
}

impl Store {
    /// Like [`Store::read_feed`], with each event's predecessor's available
    /// credit (`None` for an account's first event), for crossing alerts.
    ///
    /// Per account the feed is in version order, so most predecessors are
    /// earlier in the same batch; only each account's first event in it
    /// needs its predecessor read, and those are read in one statement
    /// (a lookup per event cost the publisher's feed read twice the
    /// projector's).
    pub async fn read_feed_with_previous(
        &self,
        after: Cursor,
        limit: i64,
    ) -> Result<Vec<(StoredEvent, Option<i64>)>, StoreError> {
        let client = self.pool.get().await?;
        let rows = feed_rows(&**client, after, limit, FeedColumns::All).await?;
        let events = rows
            .iter()
            .map(StoredEvent::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let (mut previous, wanted) = previous_in_batch(
            events
                .iter()
                .map(|e| (e.account_id, e.version, e.balances.available_credit.get())),
        );
        if !wanted.is_empty() {
            let (accounts, versions): (Vec<Uuid>, Vec<i64>) = wanted
                .iter()
                .map(|&i| (events[i].account_id, events[i].version - 1))
                .unzip();
            let found = client
                .query(
                    "SELECT e.account_id, e.version, e.available_credit
                     FROM unnest($1::uuid[], $2::bigint[]) AS w (account_id, version)
                     JOIN events e USING (account_id, version)",
                    &[&accounts, &versions],
                )
                .await?;
            let found: HashMap<(Uuid, i64), i64> = found
                .iter()
                .map(|row| ((row.get(0), row.get(1)), row.get(2)))
                .collect();
            for i in wanted {
                let key = (events[i].account_id, events[i].version - 1);
                previous[i] = found.get(&key).copied();
            }
        }
        Ok(events.into_iter().zip(previous).collect())
    }

    /// Takes the exclusive lease on checkpoint `name`, or `None` while
    /// another process holds it. The lease is a session advisory lock on a
    /// connection of its own: it ends when that connection does (a crashed
    /// holder's lease ends with it), and the checkpoint only moves through it.
    pub async fn acquire_lease(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        let (client, connection) = self.connector.connect().await?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let held: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&lease_key(name)])
            .await?
            .get(0);
        if !held {
            driver.abort();
            return Ok(None);
        }
        // Checkpoint moves need not wait for their fsync: one lost in a crash
        // only means republishing from the one before (duplicates, never gaps).
        client.batch_execute("SET synchronous_commit = off").await?;
        Ok(Some(Lease {
            client,
            name: name.to_owned(),
            driver,
        }))
    }
}

/// The advisory lock key of a lease (FNV-1a of its name).
fn lease_key(name: &str) -> i64 {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// An exclusive hold on a feed checkpoint (see [`Store::acquire_lease`]).
#[derive(Debug)]
pub struct Lease {
    /// The connection that holds the advisory lock.
    client: tokio_postgres::Client,
    name: String,
    /// Drives `client`'s connection; aborted with the lease.
    driver: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// Whether the lease's connection (and so the lock) is still there.
    pub fn is_held(&self) -> bool {
        !self.client.is_closed()
    }

    /// The checkpoint: the last event handled.
    pub async fn cursor(&self) -> Result<Cursor, StoreError> {
        let row = self
            .client
            .query_one(
                "SELECT xid::text, position FROM feed_checkpoints WHERE name = $1",
                &[&self.name],
            )
            .await?;
        let xid: &str = row.get(0);
        Ok(Cursor {
            xid: xid
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("xid `{xid}`")))?,
            position: row.get(1),
        })
    }

    /// Moves the checkpoint to `to`. Fails once the lease is lost.
    pub async fn advance(&self, to: Cursor) -> Result<(), StoreError> {
        self.client
            .execute(
                "UPDATE feed_checkpoints SET xid = $2::text::xid8, position = $3 WHERE name = $1",
                &[&self.name, &to.xid.to_string(), &to.position],
            )
            .await?;
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Each event's predecessor's available credit where the predecessor is
/// earlier in the batch, and the indices of the events (past version 1)
/// whose predecessor is not. Events are given as (account, version,
/// available credit), in feed order.
fn previous_in_batch(
    events: impl ExactSizeIterator<Item = (Uuid, i64, i64)>,
) -> (Vec<Option<i64>>, Vec<usize>) {
    let mut last: HashMap<Uuid, (i64, i64)> = HashMap::new();
    let mut previous = Vec::with_capacity(events.len());
    let mut wanted = Vec::new();
    for (i, (account, version, credit)) in events.enumerate() {
        match last.insert(account, (version, credit)) {
            Some((before, credit)) if before + 1 == version => previous.push(Some(credit)),
            _ => {
                if version > 1 {
                    wanted.push(i);
                }
                previous.push(None);
            }
        }
    }
    (previous, wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_accounts_first_event_in_a_batch_needs_its_predecessor_read() {
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        let batch = [
            (a, 4, 100), // a's predecessor (3) is before the batch
            (b, 1, 7),   // b's first event: no predecessor at all
            (a, 5, 90),
            (b, 2, 6),
            (a, 7, 80), // not a's next version: read, never guessed
        ];
        let (previous, wanted) = previous_in_batch(batch.into_iter());
        assert_eq!(previous, [None, None, Some(100), Some(7), None]);
        assert_eq!(wanted, [0, 4]);
    }
}

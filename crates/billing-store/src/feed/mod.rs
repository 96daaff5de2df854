//! The global event feed, followed with the `(xid, position)` cursor: the
//! one module that reads it.
//!
//! `position` comes from a sequence handed out in concurrent transactions, so
//! a later position can commit before an earlier one. Readers therefore order
//! by the writing transaction's id first and read only below the snapshot's
//! xmin: every transaction below it has finished, so nothing can later appear
//! behind the cursor.
//!
//! - this file: the cursor (and the one parse of a stored xid), the stored
//!   event, the one feed query ([`feed_rows`], [`COLUMNS`]) and the feed's
//!   head, and what a reader reads of each event ([`FeedRead`]); and
//!   [`Feed`], the handle (`store.feed()`) with the feed's direct reads
//!   (its leases, lag and wake-ups are in [`lease`] and [`wakeup`], its
//!   page of views in `watch.rs`).
//! - [`follow`]: [`Follower`], the one loop that follows the feed for a
//!   [`FeedHandler`] (waking, coalescing, polling, back-off, stand-by,
//!   shutdown), and [`FeedBatch`], what a handler is given.
//! - [`lease`]: a checkpoint and the [`Lease`] that makes its reader the only
//!   active one (a session advisory lock), and the lag behind a checkpoint.
//! - [`previous`]: each event's predecessor's available credit (alerts).
//! - [`slices`]: partitioned readers: the accounts' slices ([`Slice`]),
//!   and [`Sliced`], which claims a process's share of them and runs a
//!   follower for each.
//! - [`wakeup`]: `LISTEN` while a reader waits ([`FeedWakeup`]).

mod follow;
mod lease;
mod previous;
mod slices;
mod wakeup;

pub use follow::{FeedBatch, FeedHandler, Follower, Pace, Start};
pub(crate) use lease::MOVE_CHECKPOINT;
pub use lease::{Lag, Lease};
pub(crate) use slices::slice_sql;
pub use slices::{SLICES, Slice, Sliced, slice_of};
pub use wakeup::FeedWakeup;

use billing_domain::{AccountView, Balances, Event, Micros, Tokens};
use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use tokio_postgres::types::Json;
use uuid::Uuid;

use crate::watch::VersionedView;
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

/// The event columns readers select. The cursor's two columns come first,
/// as in every feed and checkpoint query ([`Cursor::from_row`] reads them).
/// The xid goes out as text under another name: an output column named
/// `xid` would make `ORDER BY xid` sort by the text ("1000" before "933"),
/// and a reader would skip events.
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

/// The cursor, the account and version, and the view after the event: all
/// the watch hub reads.
const VIEW_COLUMNS: &str = "position, xid::text AS xid_text, account_id, version, account_after";

/// What a reader reads of each event: declared by its handler
/// ([`FeedHandler::READ`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedRead {
    /// Every column ([`FeedBatch::events`]).
    Events,
    /// Every column but the account view, most of a row's bytes and of its
    /// parsing ([`FeedBatch::events`], each `account_after` `None`): the
    /// projector, which folds the events itself.
    EventsWithoutView,
    /// Every column, and each event's predecessor's available credit
    /// ([`FeedBatch::events`] and [`FeedBatch::previous`]): readers that
    /// raise alerts (the publisher, the webhook dispatcher).
    EventsWithPrevious,
    /// Only the account view after each event, decoded only for the accounts
    /// the handler wants ([`FeedHandler::wants`], [`FeedBatch::views`]): the
    /// watch hub.
    Views,
}

impl FeedRead {
    fn columns(self) -> &'static str {
        match self {
            Self::Events | Self::EventsWithPrevious => COLUMNS,
            Self::EventsWithoutView => COLUMNS_WITHOUT_VIEW,
            Self::Views => VIEW_COLUMNS,
        }
    }
}

impl Cursor {
    /// The one parse of a stored place in the feed: a row whose first two
    /// columns are `position` and the `xid8` as text (`xid::text AS
    /// xid_text`), as every feed and checkpoint query selects them.
    pub(crate) fn from_row(row: &Row) -> Result<Self, StoreError> {
        let xid: &str = row.get(1);
        Ok(Self {
            xid: xid
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("xid `{xid}`")))?,
            position: row.get(0),
        })
    }

    /// The xid as a statement's parameter, written `$n::text::xid8` (an
    /// `xid8` has no binary mapping to a Rust integer).
    pub(crate) fn xid_param(&self) -> String {
        self.xid.to_string()
    }
}

impl StoredEvent {
    pub(crate) fn from_row(row: &Row) -> Result<Self, StoreError> {
        Ok(Self {
            cursor: Cursor::from_row(row)?,
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
        span_context(self.trace_id.as_deref(), self.span_id.as_deref())
    }
}

/// The span a request's stored trace and span ids name, for a link from
/// the work it causes later; `None` when it was not traced (or the ids do
/// not parse).
pub fn span_context(
    trace_id: Option<&str>,
    span_id: Option<&str>,
) -> Option<opentelemetry::trace::SpanContext> {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    let span_id = SpanId::from_hex(span_id?).ok()?;
    let trace_id = TraceId::from_hex(trace_id?).ok()?;
    let context = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::SAMPLED,
        true,
        TraceState::NONE,
    );
    context.is_valid().then_some(context)
}

/// The feed query, the one definition every reader uses: events after
/// `after` in `(xid, position)` order, only from transactions below the
/// snapshot's xmin (all finished), so nothing can later appear behind the
/// cursor. It orders by the `xid8` column itself, never by its text. With
/// a slice, only that slice's accounts' events (the feed's order restricted
/// to them: per account, still version order).
pub(crate) async fn feed_rows(
    client: &impl tokio_postgres::GenericClient,
    after: Cursor,
    limit: i64,
    read: FeedRead,
    slice: Option<Slice>,
) -> Result<Vec<Row>, StoreError> {
    let columns = read.columns();
    let Some(slice) = slice else {
        let sql = format!(
            "SELECT {columns} FROM events
             WHERE (xid, position) > ($1::text::xid8, $2)
               AND xid < pg_snapshot_xmin(pg_current_snapshot())
             ORDER BY xid, position
             LIMIT $3"
        );
        return Ok(client
            .query(&sql, &[&after.xid_param(), &after.position, &limit])
            .await?);
    };
    let in_slice = slice_sql("$4");
    let sql = format!(
        "SELECT {columns} FROM events
         WHERE (xid, position) > ($1::text::xid8, $2)
           AND xid < pg_snapshot_xmin(pg_current_snapshot())
           AND {in_slice} = $5
         ORDER BY xid, position
         LIMIT $3"
    );
    Ok(client
        .query(
            &sql,
            &[
                &after.xid_param(),
                &after.position,
                &limit,
                &i64::from(slice.count),
                &i64::from(slice.index),
            ],
        )
        .await?)
}

/// The feed's head: the last event of the transactions that have all
/// finished (below the snapshot's xmin), or [`Cursor::START`]. A reader that
/// starts here sees every event committed later, and no event behind it can
/// still appear.
async fn head(client: &impl tokio_postgres::GenericClient) -> Result<Cursor, StoreError> {
    let row = client
        .query_opt(
            "SELECT position, xid::text AS xid_text FROM events
             WHERE xid < pg_snapshot_xmin(pg_current_snapshot())
             ORDER BY xid DESC, position DESC
             LIMIT 1",
            &[],
        )
        .await?;
    row.map_or(Ok(Cursor::START), |row| Cursor::from_row(&row))
}

/// The feed read directly, its checkpoints' leases and lag, and wake-ups
/// ([`Store::feed`]). Readers that follow it go through [`Follower`] or
/// [`Sliced`].
#[derive(Clone, Copy, Debug)]
pub struct Feed<'a> {
    pub(crate) store: &'a Store,
}

impl Feed<'_> {
    /// Up to `limit` events after `after`, in feed order, from transactions
    /// that have all finished. Never skips an event: one in a transaction
    /// still open is returned after it commits, never passed over.
    pub async fn read_feed(
        self,
        after: Cursor,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        Ok(self
            .read_batch(after, limit, FeedRead::Events, None, |_| true)
            .await?
            .events)
    }

    /// Like [`Feed::read_feed`], with each event's predecessor's available
    /// credit (`None` for an account's first event), for crossing alerts.
    pub async fn read_feed_with_previous(
        self,
        after: Cursor,
        limit: i64,
    ) -> Result<Vec<(StoredEvent, Option<i64>)>, StoreError> {
        let batch = self
            .read_batch(after, limit, FeedRead::EventsWithPrevious, None, |_| true)
            .await?;
        Ok(batch.events.into_iter().zip(batch.previous).collect())
    }

    /// The feed's head: the last event of the transactions that have all
    /// finished, or [`Cursor::START`]. A reader that starts here sees every
    /// event committed later, and no event behind it can still appear.
    pub async fn feed_head(self) -> Result<Cursor, StoreError> {
        let client = self.store.pool.get().await?;
        head(&**client).await
    }

    /// Up to `limit` events after `after`, read as `read` says; for
    /// [`FeedRead::Views`], views only of the accounts `wants` names (the
    /// others' are never decoded).
    pub(crate) async fn read_batch(
        self,
        after: Cursor,
        limit: i64,
        read: FeedRead,
        slice: Option<Slice>,
        wants: impl Fn(Uuid) -> bool,
    ) -> Result<FeedBatch, StoreError> {
        let (rows, _) = self.feed_page(after, limit, read, slice).await?;
        let mut batch = decode(&rows, after, read, wants)?;
        self.complete(&mut batch, read).await?;
        Ok(batch)
    }

    /// The rows of [`Feed::read_batch`]'s first step, and for a slice's
    /// page that came back short, the feed's head: every event of the slice
    /// up to it is in the page, so the reader may move there.
    pub(crate) async fn feed_page(
        self,
        after: Cursor,
        limit: i64,
        read: FeedRead,
        slice: Option<Slice>,
    ) -> Result<(Vec<Row>, Option<Cursor>), StoreError> {
        let mut client = self.store.pool.get().await?;
        if slice.is_none() {
            return Ok((feed_rows(&**client, after, limit, read, None).await?, None));
        }
        // The planner takes the slice's condition for a rare one (an
        // expression's equality: 0.5% of the rows, not 1 in 8), costs the
        // page far above what it is, and plans it with parallel workers and
        // JIT compilation: each a fixed cost per read that made a slice
        // reader five times slower at 1,000,000 events. The feed index's
        // range, filtered, is the plan either way.
        let tx = client.transaction().await?;
        tx.batch_execute("SET LOCAL jit = off; SET LOCAL max_parallel_workers_per_gather = 0")
            .await?;
        // The feed's head first: when the slice's page then comes back short,
        // it held every event of the slice up to that head (all of them in
        // transactions finished before the page's own snapshot), so the
        // reader may move past the head even if none of them was its own.
        // Without that, a slice that no event falls in (one hot account
        // fills a single slice) would scan the whole feed from where it last
        // had an event, on every read.
        let head = head(&*tx).await?;
        let rows = feed_rows(&*tx, after, limit, read, slice).await?;
        tx.commit().await?;
        let skip_to = ((rows.len() as i64) < limit && head > after).then_some(head);
        Ok((rows, skip_to))
    }

    /// [`Feed::read_batch`]'s last step, after [`decode`]: what reading
    /// the rows found missing (each event's predecessor's credit, the views
    /// of events stored without one).
    pub(crate) async fn complete(
        self,
        batch: &mut FeedBatch,
        read: FeedRead,
    ) -> Result<(), StoreError> {
        if read == FeedRead::EventsWithPrevious && !batch.events.is_empty() {
            let client = self.store.pool.get().await?;
            batch.previous = previous::available_before(&**client, &batch.events).await?;
        }
        // An event that keeps no view (`views.rs`) gets the one folded from
        // the view before it.
        if matches!(read, FeedRead::Events | FeedRead::EventsWithPrevious) {
            self.store.fold_views(&mut batch.events).await?;
        }
        let missing = std::mem::take(&mut batch.missing_views);
        if missing.is_empty() {
            return Ok(());
        }
        let wanted: Vec<(Uuid, i64)> = missing.iter().map(|m| (m.1, m.2)).collect();
        let mut folded = self.store.views_at(&wanted).await?;
        for (at, account_id, version) in missing.into_iter().rev() {
            let view = folded.remove(&(account_id, version)).ok_or_else(|| {
                StoreError::Corrupt(format!("account {account_id} has no version {version}"))
            })?;
            batch.views.insert(
                at,
                VersionedView {
                    account_id,
                    version,
                    view,
                },
            );
        }
        Ok(())
    }

    /// Every event of one account, oldest first, each with the view after
    /// it.
    pub async fn account_events(self, account_id: Uuid) -> Result<Vec<StoredEvent>, StoreError> {
        let client = self.store.pool.get().await?;
        let sql = format!("SELECT {COLUMNS} FROM events WHERE account_id = $1 ORDER BY version");
        let rows = client.query(&sql, &[&account_id]).await?;
        drop(client);
        let mut events = rows
            .iter()
            .map(StoredEvent::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        self.store.fold_views(&mut events).await?;
        Ok(events)
    }
}

/// [`Feed::read_batch`]'s middle step: the rows decoded as `read` says,
/// with no await, so that `wants` (the handler's) is never held across one.
pub(crate) fn decode(
    rows: &[Row],
    after: Cursor,
    read: FeedRead,
    wants: impl Fn(Uuid) -> bool,
) -> Result<FeedBatch, StoreError> {
    let mut batch = FeedBatch::empty(after);
    batch.len = rows.len();
    if read != FeedRead::Views {
        batch.events = rows
            .iter()
            .map(StoredEvent::from_row)
            .collect::<Result<_, _>>()?;
        batch.last = batch.events.last().map_or(after, |e| e.cursor);
        return Ok(batch);
    }
    for row in rows {
        batch.last = Cursor::from_row(row)?;
        let account_id: Uuid = row.get(2);
        if !wants(account_id) {
            continue;
        }
        let version: i64 = row.get(3);
        match row.try_get::<_, Option<Json<AccountView>>>(4)? {
            Some(Json(view)) => batch.views.push(VersionedView {
                account_id,
                version,
                view,
            }),
            None => batch
                .missing_views
                .push((batch.views.len(), account_id, version)),
        }
    }
    Ok(batch)
}

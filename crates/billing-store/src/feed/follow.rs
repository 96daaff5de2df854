//! The one loop that follows the feed: [`Follower`] takes its place (a
//! checkpoint under its lease, or the feed's head), then reads batches in
//! feed order and hands each to a [`FeedHandler`], moving the checkpoint
//! only after the handler has succeeded (at least once: a handler is
//! idempotent on a batch given again). It owns waking (`LISTEN`, see
//! [`FeedWakeup`]), coalescing a burst of commits into one batch, polling,
//! the back-off after a failure, standing by while another process holds
//! the lease (and taking over when that process dies), and stopping.
//!
//! Every reader of the feed runs here: the projector, the publisher and the
//! webhook dispatcher (each from its checkpoint, one active process each),
//! and the watch hub (from the head, in memory, in every API process).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

use crate::feed::{Cursor, FeedRead, FeedWakeup, Lease, Slice, StoredEvent, decode};
use crate::watch::VersionedView;
use crate::{Store, StoreError};

/// How long to wait before trying again after a failure (taking the place,
/// reading the feed, a handler's batch).
const BACKOFF: Duration = Duration::from_millis(500);
/// How often a reader standing by tries for the lease.
const STAND_BY: Duration = Duration::from_secs(1);

/// What a reader of the feed does with it.
///
/// The follower gives [`Self::handle`] every event after the checkpoint, in
/// feed order (per account, version order), in batches, and moves the
/// checkpoint past a batch only once `handle` has returned `Ok`. After an
/// error it waits and gives the batch again from the checkpoint: `handle`
/// must be idempotent on events it has seen (the projector skips versions
/// it has applied; the publisher's consumers deduplicate).
pub trait FeedHandler: Send {
    /// A failed batch, activation or tick, logged by the follower.
    type Error: std::fmt::Display + Send;

    /// What the follower reads of each event for this handler.
    const READ: FeedRead;

    /// How often [`Self::tick`] runs while this reader is active (`None`:
    /// never).
    const TICK: Option<Duration> = None;

    /// With [`FeedRead::Views`]: whether the view after an event of
    /// `account_id` is wanted (the others are never decoded).
    fn wants(&self, _account_id: Uuid) -> bool {
        true
    }

    /// This reader has become the active one, at `at` (its lease taken and
    /// its checkpoint read, or the feed's head found), before the first
    /// batch. An error gives the place up (and the lease, to a stand-by)
    /// and tries again after a back-off.
    fn activate(&mut self, _at: Cursor) -> impl Future<Output = Result<(), Self::Error>> + Send {
        async { Ok(()) }
    }

    /// Handles a batch of events, in feed order.
    fn handle(&mut self, batch: &FeedBatch)
    -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// This reader is no longer active (its lease lost, or stopping).
    fn deactivate(&mut self) {}

    /// Work on the side, every [`Self::TICK`] while active, between batches
    /// (catching up or idle): the projector's lag log, the publisher's
    /// chain digests.
    fn tick(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// A batch of the feed, as its handler declared it reads it
/// ([`FeedHandler::READ`]).
#[derive(Debug)]
pub struct FeedBatch {
    /// Where the batch starts: the checkpoint before its first event.
    pub after: Cursor,
    /// The batch's last event (wanted or not): where the next one starts.
    pub last: Cursor,
    /// Events read, whatever was kept of them.
    pub len: usize,
    /// The events in feed order (every read but [`FeedRead::Views`]).
    pub events: Vec<StoredEvent>,
    /// With [`FeedRead::EventsWithPrevious`]: the available credit before
    /// each of `events` (`None` before an account's first event).
    pub previous: Vec<Option<i64>>,
    /// With [`FeedRead::Views`]: the wanted accounts' views, in feed order.
    pub views: Vec<VersionedView>,
    /// Views to fold from the account's events (stored without one), with
    /// where they go in `views`.
    pub(crate) missing_views: Vec<(usize, Uuid, i64)>,
    /// The lease the batch was read under, for a handler that commits its
    /// writes with the checkpoint (the projector).
    pub(crate) lease: Option<Arc<Lease>>,
    /// A slice's page that came back short: the feed's head when it was
    /// read, up to which the page held every event of the slice.
    pub(crate) skip_to: Option<Cursor>,
    /// Where such a handler left the checkpoint.
    checkpointed: Mutex<Option<Cursor>>,
}

impl FeedBatch {
    pub(crate) fn empty(after: Cursor) -> Self {
        Self {
            after,
            last: after,
            len: 0,
            events: Vec::new(),
            previous: Vec::new(),
            views: Vec::new(),
            missing_views: Vec::new(),
            lease: None,
            skip_to: None,
            checkpointed: Mutex::new(None),
        }
    }

    /// Whether no event was read.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// With [`FeedRead::EventsWithPrevious`]: each event with the available
    /// credit before it.
    pub fn with_previous(&self) -> impl Iterator<Item = (&StoredEvent, Option<i64>)> {
        self.events.iter().zip(self.previous.iter().copied())
    }

    /// A handler committed its writes with the checkpoint at `at`: the
    /// follower carries on from there instead of moving it.
    pub(crate) fn checkpointed_at(&self, at: Cursor) {
        *self
            .checkpointed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(at);
    }

    fn checkpointed(&self) -> Option<Cursor> {
        *self
            .checkpointed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How a reader paces itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pace {
    /// Events per batch. A full batch is followed by the next at once.
    pub batch: i64,
    /// How long to wait after a notification, and at least between the
    /// starts of two reads while events keep coming, so a burst shares one
    /// batch (zero: read at once, and wait for the next notification after
    /// any batch that was not full).
    pub coalesce: Duration,
    /// How often to look for events without a notification.
    pub poll: Duration,
    /// After a notification whose events did not show up: how soon, and how
    /// many times, to look again before waiting for the next one.
    pub recheck: Option<(Duration, u32)>,
}

impl Pace {
    /// Ordered readers that keep a checkpoint (the projector, the publisher,
    /// the webhook dispatcher): throughput first.
    pub const ORDERED: Self = Self {
        // Large enough that at the command path's peak (several thousand
        // events a second) a batch's fixed costs (feed read, checkpoint,
        // commit) stay small.
        batch: 2_000,
        // Each batch costs a feed read and a transaction whatever its size:
        // at 5 ms the read side woke for every second or third command batch
        // and spent more CPU per change than it does at 25, which adds at
        // most 25 ms of lag.
        coalesce: Duration::from_millis(25),
        poll: Duration::from_millis(500),
        recheck: None,
    };

    /// Live views (the watch hub): latency first. A notification's events
    /// that did not show up at once wait on a transaction that began before
    /// them (the projector's batch, usually a few tens of milliseconds)
    /// holding the snapshot's xmin below them: looking again every 5 ms,
    /// rather than at the next poll, delivers them at most 5 ms after it
    /// ends.
    pub const LIVE: Self = Self {
        batch: 2_000,
        coalesce: Duration::ZERO,
        poll: Duration::from_millis(250),
        recheck: Some((Duration::from_millis(5), 40)),
    };
}

/// Where a reader starts, and whether it is the only active one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// From checkpoint `name` (a row of `feed_checkpoints`), holding its
    /// lease: one process is the active reader, the others stand by and
    /// take over when it dies.
    Checkpoint(String),
    /// From the feed's head as it is when the reader starts, its place kept
    /// in memory: every process its own reader (the watch hub).
    Head,
}

/// A reader of the feed: where it starts, how it paces itself. [`run`]
/// follows the feed with a handler.
///
/// [`run`]: Follower::run
#[derive(Clone, Debug)]
pub struct Follower {
    pub(super) store: Store,
    /// Named in logs (`"{reader}: ..."`) and the wake-ups' connection.
    pub(super) reader: &'static str,
    start: Start,
    pace: Pace,
}

impl Follower {
    /// A reader from checkpoint `checkpoint`, exclusive (its lease), paced
    /// [`Pace::ORDERED`].
    pub fn checkpoint(store: &Store, reader: &'static str, checkpoint: &str) -> Self {
        Self {
            store: store.clone(),
            reader,
            start: Start::Checkpoint(checkpoint.to_owned()),
            pace: Pace::ORDERED,
        }
    }

    /// A reader from the feed's head, in memory, paced [`Pace::LIVE`].
    pub fn head(store: &Store, reader: &'static str) -> Self {
        Self {
            store: store.clone(),
            reader,
            start: Start::Head,
            pace: Pace::LIVE,
        }
    }

    /// The same reader, paced `pace`.
    pub fn with_pace(mut self, pace: Pace) -> Self {
        self.pace = pace;
        self
    }

    /// Follows the feed with `handler` until `shutdown` turns true (or its
    /// sender is gone), and gives the handler back.
    pub async fn run<H: FeedHandler>(
        self,
        mut handler: H,
        mut shutdown: watch::Receiver<bool>,
    ) -> H {
        let reader = self.reader;
        let wakeup = self.store.feed().wakeup(reader);
        while !stopping(&shutdown) {
            let Some((lease, at)) = self.take_place(&mut shutdown).await else {
                break;
            };
            // Activating may wait on something outside (a broker that does
            // not answer): a shutdown must not wait with it, holding the
            // lease a stand-by could take.
            let activated = tokio::select! {
                activated = handler.activate(at) => activated,
                _ = shutdown.changed() => break,
            };
            if let Err(error) = activated {
                tracing::warn!(reader, %error, "{reader}: cannot become active; retrying");
                drop(lease);
                if pause(&mut shutdown, BACKOFF * 4).await {
                    break;
                }
                continue;
            }
            self.follow(&mut handler, lease, at, &wakeup, &mut shutdown)
                .await;
            // A reader standing by reads nothing: it need not be woken.
            wakeup.quiet();
            handler.deactivate();
        }
        tracing::info!(reader, "{reader} stopped");
        handler
    }

    /// Follows the feed with `handler` from the checkpoint of `lease`, taken
    /// already (a slice's, by [`Sliced`](crate::Sliced)), until the lease
    /// is lost or `shutdown` turns true; never stands by. The lease ends
    /// when this returns.
    pub async fn run_leased<H: FeedHandler>(
        self,
        mut handler: H,
        lease: Lease,
        mut shutdown: watch::Receiver<bool>,
    ) -> H {
        let reader = self.reader;
        let at = match lease.cursor().await {
            Ok(at) => at,
            Err(error) => {
                tracing::warn!(reader, %error, "{reader}: cannot read the checkpoint of {}", lease.name());
                return handler;
            }
        };
        let activated = tokio::select! {
            activated = handler.activate(at) => activated,
            _ = shutdown.changed() => return handler,
        };
        if let Err(error) = activated {
            tracing::warn!(reader, %error, "{reader}: cannot become active on {}", lease.name());
            drop(lease);
            // Not at once again: the slice is free for another process (or
            // this one) to claim after the back-off.
            pause(&mut shutdown, BACKOFF * 4).await;
            return handler;
        }
        let wakeup = self.store.feed().wakeup(reader);
        self.follow(
            &mut handler,
            Some(Arc::new(lease)),
            at,
            &wakeup,
            &mut shutdown,
        )
        .await;
        handler.deactivate();
        handler
    }

    /// Takes the reader's place: its lease and checkpoint (standing by while
    /// another process holds the lease), or the feed's head. `None` when
    /// stopping.
    async fn take_place(
        &self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<(Option<Arc<Lease>>, Cursor)> {
        let reader = self.reader;
        loop {
            if stopping(shutdown) {
                return None;
            }
            let taken = match &self.start {
                Start::Head => self
                    .store
                    .feed()
                    .feed_head()
                    .await
                    .map(|at| Some((None, at))),
                Start::Checkpoint(name) => match self.store.feed().acquire_lease(name).await {
                    Ok(Some(lease)) => lease
                        .cursor()
                        .await
                        .map(|at| Some((Some(Arc::new(lease)), at))),
                    Ok(None) => Ok(None),
                    Err(error) => Err(error),
                },
            };
            let wait = match taken {
                Ok(Some(place)) => return Some(place),
                // Another process is the active reader: stand by.
                Ok(None) => STAND_BY,
                Err(error) => {
                    tracing::warn!(reader, %error, "{reader}: cannot take its place in the feed; retrying");
                    BACKOFF
                }
            };
            if pause(shutdown, wait).await {
                return None;
            }
        }
    }

    /// Reads and handles batches from `cursor` while the lease holds (if
    /// any) and until stopping.
    async fn follow<H: FeedHandler>(
        &self,
        handler: &mut H,
        lease: Option<Arc<Lease>>,
        mut cursor: Cursor,
        wakeup: &FeedWakeup,
        shutdown: &mut watch::Receiver<bool>,
    ) {
        let reader = self.reader;
        let pace = self.pace;
        let mut next_tick = Instant::now();
        // Counts down while a notification's events have not shown up yet
        // (see `Pace::recheck`).
        let mut rechecks_left = 0;
        let mut woken = false;
        // Where the checkpoint is stored (the cursor may be ahead of it,
        // moved past other slices' events alone), and when it last was.
        let mut stored = cursor;
        let mut skip_stored = Instant::now();
        loop {
            if stopping(shutdown) {
                return;
            }
            if lease.as_ref().is_some_and(|lease| !lease.is_held()) {
                tracing::warn!(reader, "{reader}: lost the lease");
                return;
            }
            if let Some(every) = H::TICK
                && Instant::now() >= next_tick
            {
                handler.tick().await;
                next_tick = Instant::now() + every;
            }
            let started = Instant::now();
            let slice = lease.as_ref().and_then(|lease| lease.slice());
            let batch = match self.read(cursor, slice, &mut *handler).await {
                Ok(mut batch) => {
                    batch.lease.clone_from(&lease);
                    batch
                }
                Err(error) => {
                    tracing::warn!(reader, %error, "{reader}: cannot read the feed");
                    if pause(shutdown, BACKOFF).await {
                        return;
                    }
                    continue;
                }
            };
            if !batch.is_empty() {
                // The checkpoint a handler may commit with its writes (the
                // projector) must be where the batch starts: store a move
                // past other slices' events first.
                if batch.after != stored
                    && let Some(lease) = &lease
                {
                    if let Err(error) = lease.advance(batch.after).await {
                        tracing::warn!(reader, %error, "{reader}: cannot store the checkpoint");
                        return;
                    }
                    stored = batch.after;
                    skip_stored = Instant::now();
                }
                if let Err(error) = handler.handle(&batch).await {
                    tracing::warn!(reader, %error, ?cursor, "{reader}: a batch failed; retrying from the checkpoint");
                    if pause(shutdown, BACKOFF).await {
                        return;
                    }
                    if let Some(lease) = &lease {
                        match lease.cursor().await {
                            Ok(at) => {
                                cursor = at;
                                stored = at;
                            }
                            Err(error) => {
                                tracing::warn!(reader, %error, "{reader}: lost the checkpoint");
                                return;
                            }
                        }
                    }
                    continue;
                }
                cursor = match (batch.checkpointed(), &lease) {
                    (Some(at), _) => at,
                    (None, Some(lease)) => {
                        if let Err(error) = lease.advance(batch.last).await {
                            tracing::warn!(reader, %error, "{reader}: cannot store the checkpoint");
                            return;
                        }
                        batch.last
                    }
                    (None, None) => batch.last,
                };
                stored = cursor;
            }
            if let Some(head) = batch.skip_to
                && head > cursor
            {
                // A slice's short page held every event of the slice up to
                // the feed's head: go there, and store it now and then, so
                // that neither the next read nor a restart scans back over
                // other slices' events.
                cursor = head;
            }
            if cursor != stored
                && let Some(lease) = &lease
                && skip_stored.elapsed() >= STORE_SKIP_EVERY
            {
                if let Err(error) = lease.advance(cursor).await {
                    tracing::warn!(reader, %error, "{reader}: cannot store the checkpoint");
                    return;
                }
                stored = cursor;
                skip_stored = Instant::now();
            }
            let read = batch.len;
            drop(batch);
            if read as i64 >= pace.batch {
                continue;
            }
            if read > 0 && !pace.coalesce.is_zero() {
                // More are likely on their way: look again once the wait
                // since this batch began has passed (at once if handling it
                // took longer), without being woken for each commit
                // meanwhile.
                wakeup.quiet();
                tokio::select! {
                    _ = shutdown.changed() => {}
                    () = tokio::time::sleep_until(started + pace.coalesce) => {}
                }
                continue;
            }
            rechecks_left = match (read, woken, pace.recheck) {
                (0, true, Some(_)) if rechecks_left > 0 => rechecks_left - 1,
                (0, true, Some((_, times))) => times,
                _ => 0,
            };
            let wait = match pace.recheck {
                Some((every, _)) if rechecks_left > 0 => every,
                _ => pace.poll,
            };
            woken = tokio::select! {
                _ = shutdown.changed() => continue,
                woken = wakeup.wait(wait) => woken,
                () = tokio::time::sleep_until(next_tick), if H::TICK.is_some() => false,
            } || rechecks_left > 0;
            if woken && !pace.coalesce.is_zero() {
                // Let a burst of commits land, so they share one batch.
                if pause(shutdown, pace.coalesce).await {
                    return;
                }
            }
        }
    }

    /// The next batch after `cursor`, as `handler` reads it.
    async fn read<H: FeedHandler>(
        &self,
        cursor: Cursor,
        slice: Option<Slice>,
        handler: &mut H,
    ) -> Result<FeedBatch, StoreError> {
        let (rows, skip_to) = self
            .store
            .feed()
            .feed_page(cursor, self.pace.batch, H::READ, slice)
            .await?;
        let mut batch = decode(&rows, cursor, H::READ, |id| handler.wants(id))?;
        batch.skip_to = skip_to;
        drop(rows);
        self.store.feed().complete(&mut batch, H::READ).await?;
        Ok(batch)
    }
}

/// How often a slice's reader stores a checkpoint it moved past other
/// slices' events alone (moving it costs a write; not moving it, a scan back
/// over them after a restart).
const STORE_SKIP_EVERY: Duration = Duration::from_secs(5);

/// Whether the reader should stop: told so, or nobody is left to tell it.
pub(super) fn stopping(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow() || shutdown.has_changed().is_err()
}

/// Sleeps `duration` or until told to stop; true when stopping.
async fn pause(shutdown: &mut watch::Receiver<bool>, duration: Duration) -> bool {
    tokio::select! {
        _ = shutdown.changed() => {}
        () = tokio::time::sleep(duration) => {}
    }
    stopping(shutdown)
}

//! `WatchAccount`: live account views, fed from the event log.
//!
//! One follower per process reads the global feed (the store's feed
//! follower, from the head, woken by PostgreSQL NOTIFY, polling as a
//! fallback) and hands the view after each event of a watched account to
//! that account's watchers, through one bounded
//! broadcast channel per account: no watcher polls, and an event is decoded
//! once however many watch it. A watcher that falls behind (its channel
//! overflowed) or finds a version missing catches up from the events table,
//! so every watcher sees every version once, in order.
//!
//! Why no version is lost when a watcher joins: it subscribes before it
//! reads where the account stands, and the follower has its place in the
//! feed before anyone reads. An event the follower read before the
//! subscription was committed before that read, so the read sees it; any
//! other event reaches the channel. Versions already sent are skipped.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use billing_proto::v1 as pb;
use billing_store::{Cursor, FeedBatch, FeedHandler, FeedRead, Follower, Store, VersionedView};
use futures::Stream;
use tokio::sync::{broadcast, watch};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::BillingApi;
use crate::convert;
use crate::request::{ensure_access, principal, record_account};
use crate::status::{self, invalid, rejected, store_failed};
use crate::validate;

/// Views buffered per watched account. A watcher more than this many
/// versions behind reads the rest from the events table instead: memory
/// stays bounded whatever a slow client does.
pub const CHANNEL_CAPACITY: usize = 64;
/// Versions a lagging watcher reads from the table at a time.
const CATCH_UP_PAGE: i64 = 256;
/// How long a new watcher waits for the follower to find its place.
const READY_WAIT: Duration = Duration::from_secs(5);

/// One account view as sent to watchers, shared by all of them.
type Update = Arc<pb::BillingAccount>;

/// The response stream of `WatchAccount`.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::BillingAccount, Status>> + Send>>;

/// The process's watchers and the follower that feeds them.
#[derive(Debug)]
pub struct Hub {
    store: Store,
    /// What the follower shares with the watchers.
    shared: Arc<Shared>,
    /// Starts the follower on the first watcher, so a process nobody
    /// watches reads nothing.
    started: Once,
    /// Dropped with the hub: the follower stops then.
    stop: watch::Sender<bool>,
}

/// The channels, and whether the follower has its place in the feed.
#[derive(Debug)]
struct Shared {
    /// A channel per watched account; dropped with its last watcher.
    channels: Mutex<HashMap<Uuid, broadcast::Sender<Update>>>,
    /// True once the follower has its starting place in the feed.
    ready: watch::Sender<bool>,
}

impl Hub {
    pub fn new(store: Store) -> Arc<Self> {
        Arc::new(Self {
            store,
            shared: Arc::new(Shared {
                channels: Mutex::default(),
                ready: watch::channel(false).0,
            }),
            started: Once::new(),
            stop: watch::channel(false).0,
        })
    }

    fn channels(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, broadcast::Sender<Update>>> {
        self.shared.channels()
    }

    /// Accounts watched right now.
    pub fn watched_accounts(&self) -> usize {
        self.channels().len()
    }

    /// Subscribes to `account_id`'s views, starting the follower if needed,
    /// and waits until the follower has its place in the feed.
    async fn subscribe(self: &Arc<Self>, account_id: Uuid) -> Result<Subscription, Status> {
        let receiver = self
            .channels()
            .entry(account_id)
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe();
        let subscription = Subscription {
            hub: self.clone(),
            account_id,
            receiver: Some(receiver),
        };
        self.started.call_once(|| {
            let follower = Follower::head(&self.store, "watch");
            let feeder = Feeder {
                shared: self.shared.clone(),
            };
            tokio::spawn(follower.run(feeder, self.stop.subscribe()));
        });
        let mut ready = self.shared.ready.subscribe();
        match tokio::time::timeout(READY_WAIT, ready.wait_for(|ready| *ready)).await {
            Ok(Ok(_)) => Ok(subscription),
            _ => Err(Status::unavailable(
                "the billing database is unavailable; retry",
            )),
        }
    }
}

impl Shared {
    fn channels(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, broadcast::Sender<Update>>> {
        // Nothing panics while holding the lock with a map half-changed.
        self.channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn is_watched(&self, account_id: Uuid) -> bool {
        self.channels().contains_key(&account_id)
    }

    fn publish(&self, update: &VersionedView) {
        let sender = self.channels().get(&update.account_id).cloned();
        if let Some(sender) = sender {
            // No receiver left is fine: the last watcher just went away.
            let _ = sender.send(Arc::new(convert::account(&update.view)));
        }
    }
}

/// The follower's handler: a follower of the feed from its head (the feed
/// module's [`Follower::head`], paced [`billing_store::Pace::LIVE`]: woken
/// by NOTIFY, and looking again every few milliseconds for a
/// notification's events that did not show up at once) that publishes
/// every watched account's views, until the hub is gone.
struct Feeder {
    shared: Arc<Shared>,
}

impl FeedHandler for Feeder {
    type Error = std::convert::Infallible;
    const READ: FeedRead = FeedRead::Views;

    fn wants(&self, account_id: Uuid) -> bool {
        self.shared.is_watched(account_id)
    }

    async fn activate(&mut self, _at: Cursor) -> Result<(), Self::Error> {
        self.shared.ready.send_replace(true);
        Ok(())
    }

    async fn handle(&mut self, batch: &FeedBatch) -> Result<(), Self::Error> {
        for update in &batch.views {
            self.shared.publish(update);
        }
        Ok(())
    }
}

/// A watcher's place on its account's channel; leaving drops the channel
/// when it was the last one.
#[derive(Debug)]
struct Subscription {
    hub: Arc<Hub>,
    account_id: Uuid,
    /// Always `Some` until dropped.
    receiver: Option<broadcast::Receiver<Update>>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        drop(self.receiver.take());
        let mut channels = self.hub.channels();
        if channels
            .get(&self.account_id)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            channels.remove(&self.account_id);
        }
    }
}

/// Resolves once `stop` says the server is stopping (never without one).
async fn stopped(stop: &mut Option<watch::Receiver<bool>>) {
    match stop {
        Some(stop) => {
            let _ = stop.wait_for(|stopped| *stopped).await;
        }
        None => std::future::pending().await,
    }
}

/// One watcher's stream: versions after `last`, in order.
struct Watcher {
    subscription: Subscription,
    store: Store,
    /// The last version sent, or queued in `pending`.
    last: i64,
    /// The highest version known to exist: past `last`, the table has
    /// versions the channel did not deliver.
    known: i64,
    /// Views read from the table, to send before anything else.
    pending: VecDeque<pb::BillingAccount>,
    /// Becomes true when the server shuts down.
    stop: Option<watch::Receiver<bool>>,
    /// When the caller's token expires: the stream ends then, so a revoked
    /// or short-lived credential does not watch forever.
    token_expires: tokio::time::Instant,
    /// The stream has sent its final status.
    ended: bool,
}

/// The instant `valid_for` from now (a token's `exp` may lie past what an
/// `Instant` holds: a century is as good as forever).
fn expiry(valid_for: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(valid_for)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

/// What a waiting watcher woke to.
enum Woke {
    Received(Result<Update, broadcast::error::RecvError>),
    Stopping,
    TokenExpired,
}

impl Watcher {
    /// The next view, or the status that ends the stream.
    async fn next(mut self) -> Option<(Result<pb::BillingAccount, Status>, Self)> {
        if self.ended {
            return None;
        }
        loop {
            if let Some(view) = self.pending.pop_front() {
                return Some((Ok(view), self));
            }
            if self.last < self.known {
                if let Err(status) = self.catch_up().await {
                    return Some(self.end(status));
                }
                continue;
            }
            let account_id = self.subscription.account_id;
            let receiver = self.subscription.receiver.as_mut()?;
            let stop = &mut self.stop;
            let woke = tokio::select! {
                () = stopped(stop) => Woke::Stopping,
                () = tokio::time::sleep_until(self.token_expires) => Woke::TokenExpired,
                received = receiver.recv() => Woke::Received(received),
            };
            let last = self.last;
            let received = match woke {
                Woke::Received(received) => received,
                Woke::Stopping => {
                    return Some(self.end(status::watch_interrupted(
                        "the server is shutting down",
                        last,
                    )));
                }
                Woke::TokenExpired => {
                    return Some(self.end(status::watch_token_expired(last)));
                }
            };
            match received {
                Ok(update) if update.version <= self.last => {}
                Ok(update) if update.version == self.last + 1 => {
                    self.last = update.version;
                    self.known = self.known.max(self.last);
                    return Some((Ok((*update).clone()), self));
                }
                // A version went by that this watcher missed: read the ones
                // before it (and it) from the table.
                Ok(update) => self.known = self.known.max(update.version),
                // The channel overflowed: the next receive shows how far.
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    tracing::debug!(%account_id, skipped, "watch: a slow watcher catches up from the log");
                }
                Err(broadcast::error::RecvError::Closed) => {
                    let last = self.last;
                    return Some(self.end(status::watch_interrupted("the feed stopped", last)));
                }
            }
        }
    }

    /// Queues the versions after `last` from the events table.
    async fn catch_up(&mut self) -> Result<(), Status> {
        let account_id = self.subscription.account_id;
        let views = match self
            .store
            .accounts()
            .account_views(account_id, self.last, CATCH_UP_PAGE)
            .await
        {
            Ok(views) => views,
            Err(error) => {
                tracing::warn!(%error, %account_id, "watch: cannot read the log; ending the stream");
                return Err(status::watch_interrupted(
                    "the billing database is unavailable",
                    self.last,
                ));
            }
        };
        if views.is_empty() {
            // The account's version as read includes housekeeping that time
            // has made due (an expired hold) before the sweeper records it:
            // that version comes through the feed once recorded.
            self.known = self.last;
        }
        for view in views {
            self.last = view.version;
            self.pending.push_back(convert::account(&view.view));
        }
        self.known = self.known.max(self.last);
        Ok(())
    }

    fn end(mut self, status: Status) -> (Result<pb::BillingAccount, Status>, Self) {
        self.ended = true;
        (Err(status), self)
    }
}

pub async fn watch_account(
    api: &BillingApi,
    request: Request<pb::WatchAccountRequest>,
) -> Result<Response<WatchStream>, Status> {
    let r = request.get_ref();
    let id = validate::uuid("account_id", &r.account_id)?;
    record_account(id);
    if r.after_version.is_some_and(|v| v < 0) {
        return Err(invalid("after_version", "must not be negative"));
    }
    let principal = principal(&request)?;
    // Subscribe first, then read where the account stands: see the module
    // comment for why nothing falls between the two.
    let subscription = api.watchers.subscribe(id).await?;
    let account = api
        .store
        .accounts()
        .account(id)
        .await
        .map_err(|e| store_failed(&e))?;
    ensure_access(
        &principal,
        "WatchAccount",
        id,
        account.as_ref().map(|a| a.customer_id),
    )?;
    let account = account.ok_or_else(|| rejected(&billing_domain::Rejection::AccountNotFound))?;
    let (last, pending) = match r.after_version {
        // The account now (what time has made due already applied), then
        // every version after it.
        None => {
            let view = account
                .view(api.store.now().max(account.tm_update))
                .map_err(|_| rejected(&billing_domain::Rejection::Overflow))?;
            (view.version, VecDeque::from([convert::account(&view)]))
        }
        Some(after) if after > account.version => {
            return Err(status::version_ahead_of_watch(account.version, after));
        }
        Some(after) => (after, VecDeque::new()),
    };
    let watcher = Watcher {
        subscription,
        store: api.store.clone(),
        last,
        known: account.version,
        pending,
        stop: api.stop.clone(),
        token_expires: expiry(principal.valid_for()),
        ended: false,
    };
    let stream: WatchStream = Box::pin(futures::stream::unfold(watcher, Watcher::next));
    Ok(Response::new(stream))
}

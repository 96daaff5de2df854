//! Waking feed readers when events are appended (PostgreSQL `NOTIFY`), and
//! keeping quiet while they are busy.
//!
//! Every command batch's commit notifies. A reader that is catching up
//! reads again on its own a moment later, so notifications in the meantime
//! only cost: each one wakes the listening backend and then the reader's
//! process (17 µs of PostgreSQL CPU per change for one listener at hot-16,
//! measured with `scripts/pg-cpu.sh`). So a reader with events in hand says
//! [`FeedWakeup::quiet`] and its listener stops listening (`UNLISTEN`); once
//! caught up it waits in [`FeedWakeup::wait`], which listens again. Taking
//! up the `LISTEN` wakes the reader once more, so that events committed
//! while nobody listened are read at once, not at the next poll.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use tokio::sync::{Notify, watch};
use tokio_postgres::AsyncMessage;

use crate::feed::Feed;
use crate::{Connector, StoreError};

/// The channel the `events_notify` trigger notifies.
const LISTEN: &str = "LISTEN billing_events";
const UNLISTEN: &str = "UNLISTEN billing_events";

/// How long to wait before connecting again after the listening connection
/// failed (readers poll meanwhile).
const RECONNECT: Duration = Duration::from_secs(1);

/// One reader's wake-ups: a listening connection of its own, which listens
/// only while the reader waits. The connection closes when this is dropped.
pub struct FeedWakeup {
    /// Whether the reader wants notifications now.
    wanted: watch::Sender<bool>,
    wakeup: Arc<Notify>,
    listener: tokio::task::JoinHandle<()>,
}

impl Feed<'_> {
    /// Wake-ups for `reader` (named in the logs). Their connection listens
    /// from the first [`FeedWakeup::wait`] on.
    pub fn wakeup(self, reader: &'static str) -> FeedWakeup {
        let (wanted, wanted_rx) = watch::channel(false);
        let wakeup = Arc::new(Notify::new());
        let listener = tokio::spawn(listen(
            self.store.connector.clone(),
            reader,
            wakeup.clone(),
            wanted_rx,
        ));
        FeedWakeup {
            wanted,
            wakeup,
            listener,
        }
    }
}

impl FeedWakeup {
    /// The reader has events in hand and will look again on its own (or has
    /// stopped reading for now, as a publisher standing by): no
    /// notifications until it next waits.
    pub fn quiet(&self) {
        self.wanted
            .send_if_modified(|wanted| std::mem::replace(wanted, false));
    }

    /// Waits until events may have been appended: a notification, the
    /// `LISTEN` being taken up again after [`Self::quiet`], or `poll` passing
    /// (a lost notification only delays a reader). True when woken, false
    /// when `poll` passed.
    pub async fn wait(&self, poll: Duration) -> bool {
        self.wanted
            .send_if_modified(|wanted| !std::mem::replace(wanted, true));
        tokio::select! {
            () = self.wakeup.notified() => true,
            () = tokio::time::sleep(poll) => false,
        }
    }
}

impl std::fmt::Debug for FeedWakeup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedWakeup")
            .field("wanted", &*self.wanted.borrow())
            .finish_non_exhaustive()
    }
}

impl Drop for FeedWakeup {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// Keeps a listening connection open, reconnecting after failures, until
/// the [`FeedWakeup`] is gone.
async fn listen(
    connector: Connector,
    reader: &'static str,
    wakeup: Arc<Notify>,
    mut wanted: watch::Receiver<bool>,
) {
    loop {
        match follow_notifications(&connector, &wakeup, &mut wanted).await {
            Ok(()) => return,
            Err(error) => {
                tracing::debug!(%error, reader, "LISTEN connection lost; reconnecting");
            }
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

/// Listens on a connection of its own while `wanted` says so, waking
/// `wakeup` on every notification and whenever it starts listening. Returns
/// `Ok` once the sender of `wanted` is gone, an error when the connection
/// fails.
async fn follow_notifications(
    connector: &Connector,
    wakeup: &Arc<Notify>,
    wanted: &mut watch::Receiver<bool>,
) -> Result<(), StoreError> {
    let (client, mut connection) = connector.connect().await?;
    let notified = wakeup.clone();
    // Drives the connection (statements make progress only while it is
    // polled) and passes notifications on.
    let mut driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            if let AsyncMessage::Notification(_) = message? {
                notified.notify_one();
            }
        }
        Ok::<_, tokio_postgres::Error>(())
    });
    let result = async {
        let mut listening = false;
        loop {
            let want = *wanted.borrow_and_update();
            if want != listening {
                client
                    .batch_execute(if want { LISTEN } else { UNLISTEN })
                    .await?;
                listening = want;
                if want {
                    // Events committed while nobody listened: look now.
                    wakeup.notify_one();
                }
            }
            tokio::select! {
                changed = wanted.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                ended = &mut driver => {
                    ended.map_err(|e| StoreError::Unavailable(e.to_string()))??;
                    return Err(StoreError::Unavailable(
                        "the LISTEN connection closed".into(),
                    ));
                }
            }
        }
    }
    .await;
    driver.abort();
    result
}

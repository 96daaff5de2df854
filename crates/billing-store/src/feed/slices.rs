//! Partitioned readers: the accounts split into [`SLICES`] slices by a
//! stable hash of the account id (Message DB's consumer groups, Axon's
//! segments), each with a checkpoint of its own (`read_models/3`) and so a
//! lease of its own. [`Sliced`] runs a reader's share of the slices in one
//! process: it counts the processes running the same reader (a membership
//! lock each, see [`Members`]), claims free slices up to its share
//! (`ceil(SLICES / processes)`), runs one [`Follower`] per slice it holds,
//! and gives slices up when it holds more than its share (a process joined),
//! on shutdown, or when a slice's lease lapses. A slice's events are read
//! by one process at a time, in feed order (the feed's order restricted to
//! the slice), so per-account order holds; a slice moves between processes
//! only through its checkpoint (at least once, never a gap).
//!
//! The slice count is fixed ([`SLICES`]): the migration that made the slice
//! rows (0015) made that many, and every process of a release uses the same
//! constant. Changing it is a migration of its own (README, "Scaling each
//! role"): every reader stopped, the new rows made at the oldest of the old
//! ones.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::feed::lease::lease_key;
use crate::feed::{FeedHandler, Follower};
use crate::{Store, StoreError};

/// How many slices each partitioned reader's accounts are split into.
pub const SLICES: u32 = 8;

/// How often a process counts its reader's processes and rebalances.
const BALANCE: Duration = Duration::from_millis(500);

/// One slice of the accounts: those whose [`slice_of`] is `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slice {
    pub index: u32,
    pub count: u32,
}

impl Slice {
    /// Slice `index` of [`SLICES`].
    pub fn new(index: u32) -> Self {
        Self {
            index,
            count: SLICES,
        }
    }

    /// Whether `account_id` is in this slice.
    pub fn contains(&self, account_id: Uuid) -> bool {
        slice_of(account_id, self.count) == self.index
    }

    /// The name of this slice's checkpoint of reader `name`
    /// (`read_models/3`).
    pub fn checkpoint(&self, name: &str) -> String {
        format!("{name}/{}", self.index)
    }
}

/// The slice of `account_id` among `count`: the uuid's last 32 bits as an
/// unsigned number, modulo `count`. Random (v4) and time-ordered (v7) ids
/// are random there. [`SLICE_SQL`] is the same function in SQL.
pub fn slice_of(account_id: Uuid, count: u32) -> u32 {
    let bytes = account_id.as_bytes();
    u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) % count
}

/// [`slice_of`] in SQL, of the column `account_id`, with the count as a
/// parameter (`{count}` replaced by its placeholder): the last eight hex
/// digits of the uuid's text, read as an unsigned 32-bit number.
pub(crate) fn slice_sql(count_param: &str) -> String {
    format!("(('x' || right(account_id::text, 8))::bit(32)::bigint % {count_param})")
}

/// Runs a partitioned reader's share of the slices in this process (see
/// the module's comment).
#[derive(Clone, Debug)]
pub struct Sliced {
    follower: Follower,
    /// The reader's checkpoint name; its slices are `{name}/{index}`.
    name: String,
}

impl Sliced {
    /// Reader `reader` (named in logs and metrics) of the slices of
    /// checkpoint `name`, each paced like `follower`.
    pub fn new(store: &Store, reader: &'static str, name: &str) -> Self {
        Self {
            follower: Follower::checkpoint(store, reader, name),
            name: name.to_owned(),
        }
    }

    /// The same reader, each slice's follower paced `pace`.
    pub fn with_pace(mut self, pace: crate::Pace) -> Self {
        self.follower = self.follower.with_pace(pace);
        self
    }

    /// Claims, follows and gives up slices until `shutdown` turns true, with
    /// a handler made by `handler` for each slice claimed.
    pub async fn run<H, F>(self, mut handler: F, mut shutdown: watch::Receiver<bool>)
    where
        H: FeedHandler + 'static,
        F: FnMut(Slice) -> H,
    {
        let store = self.follower.store.clone();
        let reader = self.follower.reader;
        let mut held: BTreeMap<u32, Running> = BTreeMap::new();
        let mut members: Option<Members> = None;
        let mut reported: Option<Vec<u32>> = None;
        loop {
            if super::follow::stopping(&shutdown) {
                break;
            }
            // Slices whose follower ended (its lease lapsed): free again.
            held.retain(|_, running| !running.task.is_finished());
            if members.as_ref().is_some_and(|m| !m.is_held()) {
                tracing::warn!(
                    reader,
                    "{reader}: lost its membership; giving up its slices"
                );
                members = None;
            }
            if members.is_none() {
                stop_all(&mut held).await;
                match Members::join(&store, &self.name).await {
                    Ok(Some(joined)) => members = Some(joined),
                    Ok(None) => {
                        // A process of the release before holds the single
                        // checkpoint: stand by until it is gone.
                        report(
                            reader,
                            &held,
                            &mut reported,
                            Some("standing by: a reader of the unsliced checkpoint is active"),
                        );
                    }
                    Err(error) => {
                        tracing::warn!(reader, %error, "{reader}: cannot join its readers; retrying");
                    }
                }
            }
            if let Some(joined) = &members {
                match joined.count().await {
                    Ok(processes) => {
                        let share = SLICES.div_ceil(processes.max(1)) as usize;
                        // More than its share: a process joined; the highest
                        // slices go first.
                        while held.len() > share {
                            let Some((index, running)) = held.pop_last() else {
                                break;
                            };
                            tracing::info!(
                                reader,
                                slice = index,
                                processes,
                                share,
                                "{reader}: giving up slice {index}"
                            );
                            running.stop().await;
                        }
                        if held.len() < share {
                            // Start at a place of this process's own, so
                            // processes starting together try different
                            // slices first.
                            let offset = joined.offset();
                            for step in 0..SLICES {
                                if held.len() >= share {
                                    break;
                                }
                                let index = (offset + step) % SLICES;
                                if held.contains_key(&index) {
                                    continue;
                                }
                                let slice = Slice::new(index);
                                match store.feed().acquire_slice_lease(&self.name, slice).await {
                                    Ok(Some(lease)) => {
                                        let (stop, stopped) = watch::channel(false);
                                        let follower = self.follower.clone();
                                        let handler = handler(slice);
                                        let task = tokio::spawn(async move {
                                            follower.run_leased(handler, lease, stopped).await;
                                        });
                                        held.insert(index, Running { stop, task });
                                    }
                                    Ok(None) => {}
                                    Err(error) => {
                                        tracing::warn!(reader, slice = index, %error, "{reader}: cannot claim slice {index}");
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(reader, %error, "{reader}: cannot count its readers");
                    }
                }
                report(reader, &held, &mut reported, None);
            }
            tokio::select! {
                _ = shutdown.changed() => {}
                () = tokio::time::sleep(BALANCE) => {}
            }
        }
        stop_all(&mut held).await;
        report(reader, &held, &mut reported, Some("stopped"));
        drop(members);
    }
}

/// A slice's follower running in a task of its own.
struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    /// Tells the follower to stop (after the batch in hand) and waits for it:
    /// its lease ends with it.
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn stop_all(held: &mut BTreeMap<u32, Running>) {
    let running = std::mem::take(held);
    futures::future::join_all(running.into_values().map(Running::stop)).await;
}

/// Sets the slices-held gauge and logs the slices held when they change.
fn report(
    reader: &'static str,
    held: &BTreeMap<u32, Running>,
    reported: &mut Option<Vec<u32>>,
    why: Option<&str>,
) {
    let now: Vec<u32> = held.keys().copied().collect();
    if reported.as_ref() == Some(&now) {
        return;
    }
    metrics::gauge!("billing_feed_slices_held", "reader" => reader).set(now.len() as f64);
    let slices = now.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    tracing::info!(
        reader,
        slices = %slices,
        held = now.len(),
        of = SLICES,
        "{reader}: holds slices [{slices}]{}",
        why.map(|why| format!(" ({why})")).unwrap_or_default()
    );
    *reported = Some(now);
}

/// This process's membership among the processes running one partitioned
/// reader: a session advisory lock `(class, backend pid)` on a connection of
/// its own, counted in `pg_locks`, ending with the connection (a crashed
/// process stops counting at once). The same connection holds the single
/// checkpoint's lease key in shared mode: the release before takes that
/// key exclusively, so while any process of this release runs, one of the
/// release before stands by, and this release waits for one that is active.
pub(crate) struct Members {
    client: tokio_postgres::Client,
    class: i32,
    pid: i32,
    driver: JoinHandle<()>,
}

impl std::fmt::Debug for Members {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Members")
            .field("class", &self.class)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl Members {
    /// Joins the processes running reader `name`, or `None` while a reader
    /// of the single checkpoint (the release before) is active.
    async fn join(store: &Store, name: &str) -> Result<Option<Self>, StoreError> {
        let (client, connection) = store.connector.connect().await?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let unsliced: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock_shared($1)",
                &[&lease_key(name)],
            )
            .await?
            .get(0);
        if !unsliced {
            driver.abort();
            return Ok(None);
        }
        let class = member_class(name);
        let pid: i32 = client
            .query_one(
                "SELECT pg_backend_pid() FROM (SELECT pg_advisory_lock($1, pg_backend_pid())) AS locked",
                &[&class],
            )
            .await?
            .get(0);
        Ok(Some(Self {
            client,
            class,
            pid,
            driver,
        }))
    }

    fn is_held(&self) -> bool {
        !self.driver.is_finished()
    }

    /// Where this process starts looking for free slices.
    fn offset(&self) -> u32 {
        self.pid.unsigned_abs() % SLICES
    }

    /// How many processes run this reader, this one included.
    async fn count(&self) -> Result<u32, StoreError> {
        let count: i64 = self
            .client
            .query_one(
                "SELECT count(*) FROM pg_locks
                 WHERE locktype = 'advisory' AND objsubid = 2 AND granted
                   AND classid = $1::int::oid
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[&self.class],
            )
            .await?
            .get(0);
        Ok(u32::try_from(count).unwrap_or(1).max(1))
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// The first key of a reader's membership locks (the second is the
/// process's backend pid): non-negative, so that `pg_locks` shows it as
/// written.
fn member_class(name: &str) -> i32 {
    let key = lease_key(&format!("{name}/members"));
    (key as i32) & i32::MAX
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slice_is_the_last_32_bits_modulo_the_count() {
        let id: Uuid = "a0000000-0000-0000-0000-0000ffffff07".parse().unwrap();
        assert_eq!(slice_of(id, 8), 7);
        assert_eq!(slice_of(id, 1), 0);
        let id: Uuid = "a0000000-0000-0000-0000-00000000000a".parse().unwrap();
        assert_eq!(slice_of(id, 8), 2);
        assert!(Slice::new(2).contains(id));
        assert_eq!(Slice::new(2).checkpoint("kafka"), "kafka/2");
    }
}

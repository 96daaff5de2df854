//! A feed checkpoint (`feed_checkpoints`: a reader's place, the last event it
//! has handled) and the lease that makes one reader the only active one.
//!
//! The lease is a session advisory lock on a connection of its own: it ends
//! when that connection does (a crashed holder's lease ends with it, and a
//! stand-by takes it), and the checkpoint moves only through that
//! connection, so a reader that lost its lease can no longer move it. A
//! handler that writes through the lease's connection (the projector) commits
//! its writes and the checkpoint together.

use tokio::sync::Mutex;

use crate::StoreError;
use crate::feed::{Cursor, Feed, Slice, slice_sql};

/// How far a feed reader is behind.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lag {
    /// Committed events after the checkpoint.
    pub events: i64,
    /// Age of the oldest of them, in seconds (0 when caught up).
    pub seconds: f64,
}

impl Feed<'_> {
    /// Takes the exclusive lease on checkpoint `name`, or `None` while
    /// another process holds it (see the module's comment).
    pub async fn acquire_lease(self, name: &str) -> Result<Option<Lease>, StoreError> {
        self.lease(name.to_owned(), None).await
    }

    /// Takes the exclusive lease on slice `slice` of checkpoint `name` (its
    /// row `{name}/{index}`), or `None` while another process holds it.
    pub(crate) async fn acquire_slice_lease(
        self,
        name: &str,
        slice: Slice,
    ) -> Result<Option<Lease>, StoreError> {
        self.lease(slice.checkpoint(name), Some(slice)).await
    }

    async fn lease(self, name: String, slice: Option<Slice>) -> Result<Option<Lease>, StoreError> {
        let (client, connection) = self.store.connector.connect().await?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let held: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&lease_key(&name)])
            .await?
            .get(0);
        if !held {
            driver.abort();
            return Ok(None);
        }
        // Checkpoint moves (and what commits with them) need not wait for
        // their fsync: one lost in a crash only means handling the events
        // after the one before again (at least once: duplicates, never gaps).
        client.batch_execute("SET synchronous_commit = off").await?;
        Ok(Some(Lease {
            client: Mutex::new(client),
            name,
            slice,
            driver,
        }))
    }

    /// How far checkpoint `name` is behind the feed: for a partitioned
    /// reader (one with slice rows `{name}/{index}`), every slice's events
    /// after its checkpoint, counted together (the oldest's age).
    pub async fn feed_lag(self, name: &str) -> Result<Lag, StoreError> {
        let slices = self.feed_lag_slices(name).await?;
        if slices.is_empty() {
            return self.checkpoint_lag(name).await;
        }
        Ok(slices.iter().fold(
            Lag {
                events: 0,
                seconds: 0.0,
            },
            |total, (_, lag)| Lag {
                events: total.events + lag.events,
                seconds: total.seconds.max(lag.seconds),
            },
        ))
    }

    /// Each slice's lag of partitioned reader `name` (none for a reader of
    /// one checkpoint): one scan of the feed from the oldest slice's
    /// checkpoint, each event counted against its own slice's (eight
    /// queries would each read that range).
    pub async fn feed_lag_slices(self, name: &str) -> Result<Vec<(Slice, Lag)>, StoreError> {
        let slices = self.slices(name).await?;
        let Some(first) = slices.first() else {
            return Ok(Vec::new());
        };
        let mut client = self.store.pool.get().await?;
        let tx = client.transaction().await?;
        // As in `checkpoint_lag`: the range is the feed index's.
        tx.batch_execute(
            "SET LOCAL enable_seqscan = off; SET LOCAL max_parallel_workers_per_gather = 0; SET LOCAL jit = off",
        )
        .await?;
        let sql = format!(
            "WITH c AS (
                 SELECT split_part(name, '/', 2)::bigint AS slice, xid, position
                 FROM feed_checkpoints WHERE starts_with(name, $1 || '/')
             )
             SELECT c.slice, count(*), extract(epoch FROM (now() - min(e.occurred_at)))::float8
             FROM events e JOIN c ON c.slice = {}
             WHERE (e.xid, e.position) > (SELECT xid, position FROM c ORDER BY xid, position LIMIT 1)
               AND (e.xid, e.position) > (c.xid, c.position)
             GROUP BY c.slice",
            slice_sql("$2")
        );
        let rows = tx.query(&sql, &[&name, &i64::from(first.count)]).await?;
        tx.commit().await?;
        let mut lags: Vec<(Slice, Lag)> = slices
            .iter()
            .map(|&slice| {
                (
                    slice,
                    Lag {
                        events: 0,
                        seconds: 0.0,
                    },
                )
            })
            .collect();
        for row in rows {
            let index = u32::try_from(row.get::<_, i64>(0)).unwrap_or(u32::MAX);
            if let Some((_, lag)) = lags.iter_mut().find(|(slice, _)| slice.index == index) {
                *lag = Lag {
                    events: row.get(1),
                    seconds: row.get::<_, Option<f64>>(2).unwrap_or(0.0).max(0.0),
                };
            }
        }
        Ok(lags)
    }

    /// The slices of partitioned reader `name`, from its checkpoint rows
    /// `{name}/{index}` (none for a reader of one checkpoint).
    pub(crate) async fn slices(self, name: &str) -> Result<Vec<Slice>, StoreError> {
        let client = self.store.pool.get().await?;
        let rows = client
            .query(
                "SELECT split_part(name, '/', 2)::int FROM feed_checkpoints
                 WHERE starts_with(name, $1 || '/') ORDER BY 1",
                &[&name],
            )
            .await?;
        let count = u32::try_from(rows.len()).unwrap_or(u32::MAX);
        Ok(rows
            .iter()
            .map(|row| Slice {
                index: u32::try_from(row.get::<_, i32>(0)).unwrap_or(0),
                count,
            })
            .collect())
    }

    /// How far one checkpoint row is behind the feed.
    async fn checkpoint_lag(self, name: &str) -> Result<Lag, StoreError> {
        let mut client = self.store.pool.get().await?;
        let tx = client.transaction().await?;
        // The events after a checkpoint are a range of the feed index; without
        // statistics the planner guesses a third of the table and reads all of
        // it (3.6 ms a call at 100,000 events, while measuring a benchmark).
        // Nor is a short range worth parallel workers: each is a process
        // started for the call, which showed up as the ExecuteGather wait.
        tx.batch_execute(
            "SET LOCAL enable_seqscan = off; SET LOCAL max_parallel_workers_per_gather = 0; SET LOCAL jit = off",
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
}

/// The advisory lock key of a lease (FNV-1a of its name).
pub(crate) fn lease_key(name: &str) -> i64 {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// The statement that reads a checkpoint (the cursor's columns first, as
/// [`Cursor::from_row`] reads them).
const READ_CHECKPOINT: &str =
    "SELECT position, xid::text AS xid_text FROM feed_checkpoints WHERE name = $1";
/// The statement that moves a checkpoint: `$1` the name, `$2` the xid (see
/// [`Cursor::xid_param`]), `$3` the position.
pub(crate) const MOVE_CHECKPOINT: &str =
    "UPDATE feed_checkpoints SET xid = $2::text::xid8, position = $3 WHERE name = $1";

/// An exclusive hold on a feed checkpoint (see [`Feed::acquire_lease`]).
#[derive(Debug)]
pub struct Lease {
    /// The connection that holds the advisory lock. Behind a lock so that a
    /// handler can run a transaction on it (with `&self`).
    client: Mutex<tokio_postgres::Client>,
    name: String,
    /// The slice of a partitioned reader's checkpoint.
    slice: Option<Slice>,
    /// Drives `client`'s connection (ends when it does); aborted with the
    /// lease.
    driver: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// Whether the lease's connection (and so the lock) is still there.
    pub fn is_held(&self) -> bool {
        !self.driver.is_finished()
    }

    /// The checkpoint's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The slice this lease's checkpoint follows (`None`: the whole feed).
    pub fn slice(&self) -> Option<Slice> {
        self.slice
    }

    /// The checkpoint: the last event handled.
    pub async fn cursor(&self) -> Result<Cursor, StoreError> {
        let row = self
            .client
            .lock()
            .await
            .query_one(READ_CHECKPOINT, &[&self.name])
            .await?;
        Cursor::from_row(&row)
    }

    /// Moves the checkpoint to `to`. Fails once the lease is lost.
    pub async fn advance(&self, to: Cursor) -> Result<(), StoreError> {
        self.client
            .lock()
            .await
            .execute(
                MOVE_CHECKPOINT,
                &[&self.name, &to.xid_param(), &to.position],
            )
            .await?;
        Ok(())
    }

    /// The lease's connection, for a transaction that moves the checkpoint
    /// with the writes it commits.
    pub(crate) async fn client(&self) -> tokio::sync::MutexGuard<'_, tokio_postgres::Client> {
        self.client.lock().await
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

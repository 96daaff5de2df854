//! Retention: idempotency records and resolved reservations older than
//! their windows are removed by the sweeper, a small batch at a time.
//!
//! A record answers a retry for as long as it is kept: a retry inside the
//! window replays the first answer, exactly as before. Each batch is one
//! short statement of its own (autocommit) that deletes at most
//! [`RETENTION_BATCH`] rows found through an index in age order
//! (`migrations/0014_retention.sql`), locking them `SKIP LOCKED`: it never
//! waits for the command path, takes no account lock, and holds its row
//! locks only for the statement. The rows it removes are ones the command
//! path no longer writes: idempotency records are never updated, and a
//! reservation row is updated only while its hold is live (`active`), which
//! retention never touches. A command that inserts a key or a reservation id
//! whose old row a batch is deleting at that moment waits for that
//! statement (milliseconds), never for more.
//!
//! What a retry after the window gets (README, "Retention"): the request is
//! new to the service. The same idempotency key applies the request again;
//! a `Commit`, `Extend` or `Release` of a reservation whose row is gone is
//! `RESERVATION_NOT_FOUND` (nothing changes); a `Reserve` with its id makes
//! a new hold, which charges nothing unless committed.

use chrono::{DateTime, Utc};

use crate::{Maintenance, StoreError};

/// The most rows one retention statement removes.
pub const RETENTION_BATCH: i64 = 1_000;

/// What one retention pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub idempotency_keys: u64,
    pub reservations: u64,
}

impl Maintenance<'_> {
    /// Removes up to `limit` idempotency records created before `before`,
    /// oldest first, in one statement. How many it removed.
    async fn remove_idempotency_records(
        self,
        before: DateTime<Utc>,
        limit: i64,
    ) -> Result<u64, StoreError> {
        let client = self.store.pool.get().await?;
        Ok(client
            .execute(
                "DELETE FROM idempotency_keys WHERE ctid = ANY (ARRAY(
                     SELECT ctid FROM idempotency_keys
                     WHERE created_at < $1
                     ORDER BY created_at
                     LIMIT $2
                     FOR UPDATE SKIP LOCKED))",
                &[&before, &limit],
            )
            .await?)
    }

    /// Removes up to `limit` reservations resolved (committed, released or
    /// expired) before `before`, oldest first, in one statement. Live holds
    /// are never removed, whatever their age. How many it removed.
    async fn remove_resolved_reservations(
        self,
        before: DateTime<Utc>,
        limit: i64,
    ) -> Result<u64, StoreError> {
        let client = self.store.pool.get().await?;
        Ok(client
            .execute(
                "DELETE FROM reservations WHERE ctid = ANY (ARRAY(
                     SELECT ctid FROM reservations
                     WHERE status <> 'active' AND updated_at < $1
                     ORDER BY updated_at
                     LIMIT $2
                     FOR UPDATE SKIP LOCKED))
                   AND status <> 'active'",
                &[&before, &limit],
            )
            .await?)
    }

    /// One pass of retention at the store's clock: up to `batches` batches
    /// of each kind, stopping early once a batch comes back short. A window
    /// of `None` keeps that kind forever.
    pub async fn remove_expired(
        self,
        idempotency: Option<std::time::Duration>,
        reservations: Option<std::time::Duration>,
        batches: usize,
    ) -> Result<Removed, StoreError> {
        let now = self.store.now();
        let cutoff = |window: std::time::Duration| {
            chrono::Duration::from_std(window)
                .ok()
                .and_then(|w| now.checked_sub_signed(w))
        };
        let mut removed = Removed::default();
        if let Some(before) = idempotency.and_then(cutoff) {
            for _ in 0..batches {
                let n = self
                    .remove_idempotency_records(before, RETENTION_BATCH)
                    .await?;
                removed.idempotency_keys += n;
                if n < RETENTION_BATCH as u64 {
                    break;
                }
            }
        }
        if let Some(before) = reservations.and_then(cutoff) {
            for _ in 0..batches {
                let n = self
                    .remove_resolved_reservations(before, RETENTION_BATCH)
                    .await?;
                removed.reservations += n;
                if n < RETENTION_BATCH as u64 {
                    break;
                }
            }
        }
        Ok(removed)
    }
}

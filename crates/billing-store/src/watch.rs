//! The reads behind live account views (`WatchAccount`): a light page of the
//! feed carrying the account view after each event (read only for the
//! accounts someone watches; the feed module's one query, see
//! [`FeedRead::Views`]: [`Feed::read_views`]), and one account's views after
//! a version, to catch a watcher up from the log
//! ([`Accounts::account_views`]).

use billing_domain::AccountView;
use tokio_postgres::types::Json;
use uuid::Uuid;

use crate::feed::{Cursor, FeedRead};
use crate::{Accounts, Feed, StoreError};

/// An account's view after one of its events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionedView {
    pub account_id: Uuid,
    pub version: i64,
    pub view: AccountView,
}

/// A page of the feed, reduced to the views of the accounts asked for.
#[derive(Clone, Debug, Default)]
pub struct ViewPage {
    /// The wanted accounts' views, in feed order (per account, version order).
    pub views: Vec<VersionedView>,
    /// The last event read, wanted or not: where the next page starts.
    pub last: Option<Cursor>,
    /// Events read, wanted or not.
    pub events: usize,
}

impl Feed<'_> {
    /// Up to `limit` events after `after`, in feed order and by the feed's
    /// rule (the one feed query: only finished transactions, so nothing is
    /// skipped), keeping the view after each event only for accounts
    /// `wanted` names: the views of the others are never decoded. An event
    /// without a stored view (written before migration 0003) gets one folded
    /// from its account's events.
    pub async fn read_views(
        self,
        after: Cursor,
        limit: i64,
        wanted: impl Fn(Uuid) -> bool,
    ) -> Result<ViewPage, StoreError> {
        let batch = self
            .read_batch(after, limit, FeedRead::Views, None, wanted)
            .await?;
        Ok(ViewPage {
            last: (batch.len > 0).then_some(batch.last),
            events: batch.len,
            views: batch.views,
        })
    }
}

impl Accounts<'_> {
    /// Account `account_id`'s views after each of its events past
    /// `after_version`, oldest first, at most `limit` of them.
    pub async fn account_views(
        self,
        account_id: Uuid,
        after_version: i64,
        limit: i64,
    ) -> Result<Vec<VersionedView>, StoreError> {
        let rows = {
            let client = self.store.pool.get().await?;
            client
                .query(
                    "SELECT version, account_after FROM events
                     WHERE account_id = $1 AND version > $2
                     ORDER BY version
                     LIMIT $3",
                    &[&account_id, &after_version, &limit],
                )
                .await?
        };
        // Events that keep no view (`views.rs`) get theirs folded, all in
        // one read.
        let missing: Vec<(Uuid, i64)> = rows
            .iter()
            .filter(|row| row.get::<_, Option<Json<AccountView>>>(1).is_none())
            .map(|row| (account_id, row.get(0)))
            .collect();
        let mut folded = self.store.views_at(&missing).await?;
        let mut views = Vec::with_capacity(rows.len());
        for row in &rows {
            let version: i64 = row.get(0);
            let view = match row.try_get::<_, Option<Json<AccountView>>>(1)? {
                Some(Json(view)) => view,
                None => folded.remove(&(account_id, version)).ok_or_else(|| {
                    StoreError::Corrupt(format!("account {account_id} has no version {version}"))
                })?,
            };
            views.push(VersionedView {
                account_id,
                version,
                view,
            });
        }
        Ok(views)
    }
}

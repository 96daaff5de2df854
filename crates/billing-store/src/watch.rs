//! The reads behind live account views (`WatchAccount`): a light page of the
//! feed carrying the account view after each event (read only for the
//! accounts someone watches; the feed module's one query, see
//! [`FeedRead::Views`]: [`Feed::read_views`]), and one account's views after
//! a version, to catch a watcher up from the log
//! ([`Accounts::account_views`]).

use billing_domain::{Account, AccountView, Event};
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

    /// The view after `version` of an account, folded from its events (for
    /// events that do not carry one).
    pub(crate) async fn folded_view(
        self,
        account_id: Uuid,
        version: i64,
    ) -> Result<AccountView, StoreError> {
        let events = self.account_events(account_id).await?;
        let upto: Vec<(&Event, chrono::DateTime<chrono::Utc>)> = events
            .iter()
            .take_while(|e| e.version <= version)
            .map(|e| (&e.event, e.occurred_at))
            .collect();
        let at = upto
            .last()
            .map(|(_, at)| *at)
            .ok_or_else(|| StoreError::Corrupt(format!("account {account_id} has no events")))?;
        Account::fold(account_id, upto)
            .map_err(|e| StoreError::Corrupt(format!("account {account_id} does not fold: {e}")))?
            .ok_or_else(|| StoreError::Corrupt(format!("account {account_id} was never created")))?
            .view(at)
            .map_err(|e| StoreError::Corrupt(format!("account {account_id}: {e}")))
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
        let mut views = Vec::with_capacity(rows.len());
        for row in &rows {
            let version: i64 = row.get(0);
            let view = match row.try_get::<_, Option<Json<AccountView>>>(1)? {
                Some(Json(view)) => view,
                None => self.store.feed().folded_view(account_id, version).await?,
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

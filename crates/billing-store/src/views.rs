//! Account views kept as snapshots, and every other view folded from one.
//!
//! Every event records the balances after it, but the whole account view
//! after it (limits, postpaid, status, promotional grants: most of an event
//! row's bytes) is kept only on an account's first event and then on every
//! `view_every`-th version ([`keeps_view`]; `BILLING_VIEW_SNAPSHOT_EVERY`,
//! 32 by default, 1 keeps it on every event as releases before this one
//! did). The view after any other event is the one before it folded with
//! the event (`AccountView::after`, the domain's evolve; the domain's
//! property tests hold it equal to the view the command recorded), so it
//! is never more than `view_every - 1` events from a kept one.
//!
//! - [`views_in`]: views of ranges of versions of accounts, in one query:
//!   from the last kept view at or below each range (or the account's
//!   creation, for events written before views were kept at all) through
//!   the range's end.
//! - [`ViewCache`]: the last view a reader of the feed saw of each account,
//!   so that a reader following the feed folds each event onto the view
//!   before it without reading anything more (bounded: see its comment).

use std::collections::HashMap;
use std::sync::Mutex;

use billing_domain::{Account, AccountView, Balances, Event, Micros, Tokens};
use chrono::{DateTime, Utc};
use tokio_postgres::types::Json;
use uuid::Uuid;

use crate::StoreError;

/// Every how many versions an event keeps the account view after it,
/// unless told otherwise: at most 31 events to fold for any view, and
/// about 25 bytes per event for the kept ones (a view is about 750).
pub const DEFAULT_VIEW_EVERY: i64 = 32;

/// The most a view is folded over: `BILLING_VIEW_SNAPSHOT_EVERY` is at
/// most this.
pub const MAX_VIEW_EVERY: i64 = 1024;

/// Whether the event at `version` keeps the account view after it: the
/// account's first event, and then every `every`-th.
pub(crate) fn keeps_view(version: i64, every: i64) -> bool {
    every <= 1 || version % every == 1
}

/// Views of versions `lo..=hi` of each account, by account and version:
/// each range from the last kept view at or below `lo` (or the account's
/// first event) through `hi`, all ranges in one query.
const VIEWS_IN: &str = "
SELECT w.i, e.version, e.occurred_at, e.account_after,
       CASE WHEN e.account_after IS NULL THEN e.payload END,
       e.balance_credit, e.balance_token, e.reserved_credit, e.reserved_token,
       e.available_credit, e.available_token
FROM unnest($1::uuid[], $2::bigint[], $3::bigint[]) WITH ORDINALITY AS w(account_id, lo, hi, i)
LEFT JOIN LATERAL (
    SELECT s.version FROM events s
    WHERE s.account_id = w.account_id AND s.version <= w.lo AND s.account_after IS NOT NULL
    ORDER BY s.version DESC
    LIMIT 1
) kept ON true
JOIN events e ON e.account_id = w.account_id
             AND e.version >= coalesce(kept.version, 1) AND e.version <= w.hi
ORDER BY w.i, e.version";

/// One range of versions of one account: `(account_id, lo, hi)`.
pub(crate) type Range = (Uuid, i64, i64);

/// The views of every version in `ranges`, by `(account_id, version)`.
/// A version that does not exist is absent.
pub(crate) async fn views_in(
    client: &impl tokio_postgres::GenericClient,
    ranges: &[Range],
) -> Result<HashMap<(Uuid, i64), AccountView>, StoreError> {
    let mut views = HashMap::new();
    if ranges.is_empty() {
        return Ok(views);
    }
    let ids: Vec<Uuid> = ranges.iter().map(|r| r.0).collect();
    let los: Vec<i64> = ranges.iter().map(|r| r.1).collect();
    let his: Vec<i64> = ranges.iter().map(|r| r.2).collect();
    let rows = client.query(VIEWS_IN, &[&ids, &los, &his]).await?;
    let mut current: Option<AccountView> = None;
    let mut range = 0;
    for row in &rows {
        let i: i64 = row.get(0);
        let (account_id, lo, _) = usize::try_from(i - 1)
            .ok()
            .and_then(|i| ranges.get(i))
            .copied()
            .ok_or_else(|| StoreError::Corrupt(format!("range {i}")))?;
        if i != range {
            range = i;
            current = None;
        }
        let version: i64 = row.get(1);
        let at: DateTime<Utc> = row.get(2);
        let balances = Balances {
            balance_credit: Micros(row.get(5)),
            balance_token: Tokens(row.get(6)),
            reserved_credit: Micros(row.get(7)),
            reserved_token: Tokens(row.get(8)),
            available_credit: Micros(row.get(9)),
            available_token: Tokens(row.get(10)),
        };
        let view = match row.try_get::<_, Option<Json<AccountView>>>(3)? {
            Some(Json(view)) => view,
            None => {
                let Json(event): Json<Event> = row.try_get(4)?;
                fold(current.take(), account_id, version, &event, at, balances)?
            }
        };
        if version >= lo {
            views.insert((account_id, version), view.clone());
        }
        current = Some(view);
    }
    Ok(views)
}

/// The view after event `version` of an account (`event`, at `at`, with
/// `balances` recorded): `previous` (the view after the version before)
/// folded with it, or the view an account's creation starts.
fn fold(
    previous: Option<AccountView>,
    account_id: Uuid,
    version: i64,
    event: &Event,
    at: DateTime<Utc>,
    balances: Balances,
) -> Result<AccountView, StoreError> {
    let corrupt =
        |what: &str| StoreError::Corrupt(format!("account {account_id} version {version}: {what}"));
    match (previous, event) {
        (Some(view), _) if view.version + 1 == version => view.after(event, at, balances),
        (_, Event::AccountCreated(created)) => {
            Account::created(account_id, created, at).view_recorded(at, balances)
        }
        _ => return Err(corrupt("no view to fold from")),
    }
    .map_err(|_| corrupt("overflows"))
}

/// The last view a reader of the feed saw of each account, shared by a
/// process's readers: following the feed, each event's view is the one
/// before it folded with the event, with nothing more read. Bounded: at
/// `capacity` accounts it starts again empty, and a reader that misses
/// reads the view back with [`views_in`] (about `view_every / 2` events).
#[derive(Debug)]
pub(crate) struct ViewCache {
    views: Mutex<HashMap<Uuid, AccountView>>,
    capacity: usize,
}

impl ViewCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            views: Mutex::default(),
            capacity,
        }
    }

    /// The view after `version` of the account, if it is the one kept.
    pub(crate) fn get(&self, account_id: Uuid, version: i64) -> Option<AccountView> {
        let views = self.views.lock().unwrap_or_else(|e| e.into_inner());
        views
            .get(&account_id)
            .filter(|v| v.version == version)
            .cloned()
    }

    /// Keeps `views`, each where it is newer than the one kept.
    pub(crate) fn put<'a>(&self, views: impl IntoIterator<Item = &'a AccountView>) {
        if self.capacity == 0 {
            return;
        }
        let mut kept = self.views.lock().unwrap_or_else(|e| e.into_inner());
        for view in views {
            match kept.get_mut(&view.id) {
                Some(old) if old.version >= view.version => {}
                Some(old) => *old = view.clone(),
                None => {
                    if kept.len() >= self.capacity {
                        kept.clear();
                    }
                    kept.insert(view.id, view.clone());
                }
            }
        }
    }
}

impl crate::Store {
    /// Gives every event of `events` (in feed order: per account, version
    /// order) that keeps no view the view after it: folded onto the view
    /// before it (an earlier event's in the batch, the cache's, or read back
    /// with [`views_in`] for all accounts that need one at once).
    pub(crate) async fn fold_views(
        &self,
        events: &mut [crate::StoredEvent],
    ) -> Result<(), StoreError> {
        if events.iter().all(|e| e.account_after.is_some()) {
            return Ok(());
        }
        // Which accounts need the view before their first such event from
        // the database.
        let mut known: HashMap<Uuid, i64> = HashMap::new();
        let mut before: HashMap<Uuid, AccountView> = HashMap::new();
        let mut ranges: Vec<Range> = Vec::new();
        for e in events.iter() {
            let follows = known.get(&e.account_id) == Some(&(e.version - 1));
            if e.account_after.is_none() && !follows && e.version > 1 {
                match self.view_cache.get(e.account_id, e.version - 1) {
                    Some(view) => {
                        before.insert(e.account_id, view);
                    }
                    None => ranges.push((e.account_id, e.version - 1, e.version - 1)),
                }
            }
            known.insert(e.account_id, e.version);
        }
        if !ranges.is_empty() {
            let client = self.pool.get().await?;
            for ((account_id, _), view) in views_in(&**client, &ranges).await? {
                before.insert(account_id, view);
            }
        }
        for e in events.iter_mut() {
            let view = match e.account_after.take() {
                Some(view) => view,
                None => fold(
                    before.remove(&e.account_id),
                    e.account_id,
                    e.version,
                    &e.event,
                    e.occurred_at,
                    e.balances,
                )?,
            };
            before.insert(e.account_id, view.clone());
            e.account_after = Some(view);
        }
        self.view_cache.put(before.values());
        Ok(())
    }

    /// The views after each `(account_id, version)` of `wanted` (the cache's
    /// where it has them), by that pair.
    pub(crate) async fn views_at(
        &self,
        wanted: &[(Uuid, i64)],
    ) -> Result<HashMap<(Uuid, i64), AccountView>, StoreError> {
        let mut views = HashMap::new();
        let mut ranges: HashMap<Uuid, (i64, i64)> = HashMap::new();
        for &(account_id, version) in wanted {
            match self.view_cache.get(account_id, version) {
                Some(view) => {
                    views.insert((account_id, version), view);
                }
                None => {
                    let range = ranges.entry(account_id).or_insert((version, version));
                    range.0 = range.0.min(version);
                    range.1 = range.1.max(version);
                }
            }
        }
        if !ranges.is_empty() {
            let ranges: Vec<Range> = ranges
                .into_iter()
                .map(|(a, (lo, hi))| (a, lo, hi))
                .collect();
            let client = self.pool.get().await?;
            views.extend(views_in(&**client, &ranges).await?);
        }
        Ok(views)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_event_and_every_nth_keep_the_view() {
        let kept: Vec<i64> = (1..=100).filter(|v| keeps_view(*v, 32)).collect();
        assert_eq!(kept, [1, 33, 65, 97]);
        assert!((1..=100).all(|v| keeps_view(v, 1)));
        assert!((1..=100).all(|v| keeps_view(v, 0)));
    }
}

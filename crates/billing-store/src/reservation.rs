//! A reservation row read back. A commit's outcome is kept without the
//! account view (the event it names stores that view already); a repeated
//! commit joins it back in (`outcome.rs`).

use std::collections::HashMap;

use billing_domain::{AccountView, Hold, ResolvedReservation};
use tokio_postgres::Row;
use tokio_postgres::types::Json;
use uuid::Uuid;

use crate::StoreError;
use crate::outcome::StoredCommitRow;

/// A row of `sql::LOAD_RESERVATIONS`: the reservation's id, and what a
/// batch needs of it.
/// `folded`: the views of events that keep none, by account and version
/// ([`folded_views`]).
pub(crate) fn reservation_from_row(
    row: &Row,
    folded: &HashMap<(Uuid, i64), AccountView>,
) -> Result<(String, ResolvedReservation), StoreError> {
    let id: String = row.try_get(0)?;
    let status: &str = row.try_get(2)?;
    let Json(hold): Json<Hold> = row.try_get(1)?;
    let commit: Option<Json<StoredCommitRow>> = row.try_get(3)?;
    let commit = match commit {
        None => None,
        Some(Json(StoredCommitRow::Whole(outcome))) => Some(*outcome),
        Some(Json(StoredCommitRow::Slim(stored))) => {
            let account = joined_view(row, 5, folded)?;
            Some(stored.with(crate::outcome::joined(account, &id)?))
        }
    };
    Ok((
        id,
        ResolvedReservation {
            hold,
            status: status
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("reservation status `{status}`")))?,
            commit,
            account_version: row.try_get(4)?,
        },
    ))
}

/// The account view a row of `sql::LOAD_KEYS` or `sql::LOAD_RESERVATIONS`
/// joined in at column `at`, or the folded one for the account and version
/// in the two columns after it.
pub(crate) fn joined_view(
    row: &Row,
    at: usize,
    folded: &HashMap<(Uuid, i64), AccountView>,
) -> Result<Option<AccountView>, StoreError> {
    if let Some(Json(view)) = row.try_get::<_, Option<Json<AccountView>>>(at)? {
        return Ok(Some(view));
    }
    Ok(named(row, at)?.and_then(|key| folded.get(&key).cloned()))
}

/// The account and version a row names in the two columns after `at`.
fn named(row: &Row, at: usize) -> Result<Option<(Uuid, i64)>, StoreError> {
    let account_id: Option<Uuid> = row.try_get(at + 1)?;
    let version: Option<i64> = row.try_get(at + 2)?;
    Ok(account_id.zip(version))
}

/// The views that rows of `sql::LOAD_KEYS` or `sql::LOAD_RESERVATIONS`
/// name (account and version in the columns after `at`) where the event
/// keeps none (`views.rs`): folded, on the batch's own connection.
pub(crate) async fn folded_views(
    client: &impl tokio_postgres::GenericClient,
    rows: &[Row],
    at: usize,
) -> Result<HashMap<(Uuid, i64), AccountView>, StoreError> {
    let mut ranges = Vec::new();
    for row in rows {
        if row
            .try_get::<_, Option<Json<serde::de::IgnoredAny>>>(at)?
            .is_some()
        {
            continue;
        }
        if let Some((account_id, version)) = named(row, at)? {
            ranges.push((account_id, version, version));
        }
    }
    crate::views::views_in(client, &ranges).await
}

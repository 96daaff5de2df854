//! A reservation row read back. A commit's outcome is kept without the
//! account view (the event it names stores that view already); a repeated
//! commit joins it back in (`outcome.rs`).

use billing_domain::{AccountView, Hold, ResolvedReservation};
use tokio_postgres::Row;
use tokio_postgres::types::Json;

use crate::StoreError;
use crate::outcome::StoredCommitRow;

/// A row of `sql::LOAD_RESERVATIONS`: the reservation's id, and what a
/// batch needs of it.
pub(crate) fn reservation_from_row(row: &Row) -> Result<(String, ResolvedReservation), StoreError> {
    let id: String = row.try_get(0)?;
    let status: &str = row.try_get(2)?;
    let Json(hold): Json<Hold> = row.try_get(1)?;
    let commit: Option<Json<StoredCommitRow>> = row.try_get(3)?;
    let commit = match commit {
        None => None,
        Some(Json(StoredCommitRow::Whole(outcome))) => Some(*outcome),
        Some(Json(StoredCommitRow::Slim(stored))) => {
            let account: Option<Json<AccountView>> = row.try_get(5)?;
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

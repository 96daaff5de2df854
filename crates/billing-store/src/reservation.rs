//! A reservation row as stored and read back. A commit's outcome is kept
//! without the account view (the event it names stores that view already);
//! a repeated commit joins it back in.

use billing_domain::{AccountView, CommitOutcome, Hold, Micros, ResolvedReservation, Tokens};
use serde::{Deserialize, Serialize};
use tokio_postgres::Row;
use tokio_postgres::types::Json;

use crate::StoreError;

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
            let Some(Json(account)) = account else {
                return Err(StoreError::Corrupt(format!(
                    "reservation `{id}`: no account view at version {}",
                    stored.account_version
                )));
            };
            Some(stored.with(account))
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

/// A commit's outcome as the reservation row keeps it: without the account
/// view, which the event at `account_version` already stores (a repeated
/// commit reads it back from there).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StoredCommit {
    reservation_id: String,
    billable_units: i64,
    charged_token: Tokens,
    charged_credit: Micros,
    released_token: Tokens,
    released_credit: Micros,
    account_version: i64,
}

impl StoredCommit {
    pub(crate) fn of(c: &CommitOutcome) -> Self {
        Self {
            reservation_id: c.reservation_id.clone(),
            billable_units: c.billable_units,
            charged_token: c.charged_token,
            charged_credit: c.charged_credit,
            released_token: c.released_token,
            released_credit: c.released_credit,
            account_version: c.account.version,
        }
    }

    fn with(self, account: AccountView) -> CommitOutcome {
        CommitOutcome {
            reservation_id: self.reservation_id,
            billable_units: self.billable_units,
            charged_token: self.charged_token,
            charged_credit: self.charged_credit,
            released_token: self.released_token,
            released_credit: self.released_credit,
            account,
        }
    }
}

/// A stored commit outcome: whole (rows written before the view moved to
/// the event) or without the view.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StoredCommitRow {
    Whole(Box<CommitOutcome>),
    Slim(StoredCommit),
}

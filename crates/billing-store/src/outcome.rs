//! Outcomes as stored: replies kept for replay (idempotency records, a
//! commit's outcome on its reservation row), without the account view. A
//! replay reads the view back from the event at the view's version
//! (`sql.rs` joins it in; folded where that event keeps none: `views.rs`),
//! so it gets the first reply byte for byte. Rows written in the whole form
//! still read.

use billing_domain::{AccountView, ChargeOutcome, CommitOutcome, Micros, Outcome, Rate, Tokens};
use serde::{Deserialize, Serialize};
use tokio_postgres::types::Json;

use crate::StoreError;

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

    pub(crate) fn with(self, account: AccountView) -> CommitOutcome {
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
pub(crate) enum StoredCommitRow {
    Whole(Box<CommitOutcome>),
    Slim(StoredCommit),
}

/// An outcome as an idempotency record keeps it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum SlimOutcome {
    Account {
        account_version: i64,
    },
    Charge {
        billable_units: i64,
        charged_token: Tokens,
        charged_credit: Micros,
        rate: Rate,
        account_version: i64,
    },
    Commit(StoredCommit),
}

impl SlimOutcome {
    /// `outcome` without its account view; `None` for an outcome that has
    /// none (a reservation), which is stored whole.
    pub(crate) fn of(outcome: &Outcome) -> Option<Self> {
        Some(match outcome {
            Outcome::Account(view) => Self::Account {
                account_version: view.version,
            },
            Outcome::Charge(c) => Self::Charge {
                billable_units: c.billable_units,
                charged_token: c.charged_token,
                charged_credit: c.charged_credit,
                rate: c.rate,
                account_version: c.account.version,
            },
            Outcome::Commit(c) => Self::Commit(StoredCommit::of(c)),
            Outcome::Reservation(_) => return None,
        })
    }

    fn with(self, account: AccountView) -> Outcome {
        match self {
            Self::Account { .. } => Outcome::Account(account),
            Self::Charge {
                billable_units,
                charged_token,
                charged_credit,
                rate,
                ..
            } => Outcome::Charge(ChargeOutcome {
                billable_units,
                charged_token,
                charged_credit,
                rate,
                account,
            }),
            Self::Commit(c) => Outcome::Commit(c.with(account)),
        }
    }
}

/// A stored idempotency outcome: whole, or without the account view.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum StoredOutcomeRow {
    Whole(Box<Outcome>),
    Slim(SlimOutcome),
}

/// The outcome of an idempotency record read back, with the account view of
/// the event it names (`account`, joined in by the query).
pub(crate) fn outcome_from(
    Json(stored): Json<StoredOutcomeRow>,
    account: Option<AccountView>,
    key: &str,
) -> Result<Outcome, StoreError> {
    Ok(match stored {
        StoredOutcomeRow::Whole(outcome) => *outcome,
        StoredOutcomeRow::Slim(slim) => slim.with(joined(account, key)?),
    })
}

/// The joined account view a slim outcome needs.
pub(crate) fn joined(account: Option<AccountView>, what: &str) -> Result<AccountView, StoreError> {
    account.ok_or_else(|| {
        StoreError::Corrupt(format!(
            "`{what}`: no account view at the version its stored outcome names"
        ))
    })
}

//! The transaction ledger's view of events: which events move money, and by
//! how much. A pure function of one event, so a ledger built from the events
//! always sums to the balances.

use serde::{Deserialize, Serialize};

use crate::catalog::{ReferenceType, ServiceType};
use crate::event::Event;
use crate::money::{Micros, Tokens};
use crate::rates::Rate;

/// What kind of money movement a ledger entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransactionType {
    Usage,
    TopUp,
    Adjustment,
    Refund,
    TokenGrant,
    TokenExpiry,
}

impl TransactionType {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Usage => "usage",
            Self::TopUp => "top_up",
            Self::Adjustment => "adjustment",
            Self::Refund => "refund",
            Self::TokenGrant => "token_grant",
            Self::TokenExpiry => "token_expiry",
        }
    }
}

/// One money movement. Amounts are signed: credit added is positive, usage
/// negative.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerLine {
    pub transaction_type: TransactionType,
    pub reference_type: ReferenceType,
    pub reference_id: String,
    pub service_type: Option<ServiceType>,
    pub billable_units: Option<i64>,
    pub rate: Option<Rate>,
    pub amount_token: Tokens,
    pub amount_credit: Micros,
}

/// The ledger entry an event makes, if it moves money. Holds are not money
/// movements; their commit is (even a commit of zero units, as a usage record).
pub fn ledger_line(event: &Event) -> Option<LedgerLine> {
    let line = |transaction_type, reference_type, reference_id: &str, token: i64, credit: i64| {
        LedgerLine {
            transaction_type,
            reference_type,
            reference_id: reference_id.to_owned(),
            service_type: None,
            billable_units: None,
            rate: None,
            amount_token: Tokens(token),
            amount_credit: Micros(credit),
        }
    };
    match event {
        Event::BalanceAdded(e) => {
            let kind = match e.reference_type {
                ReferenceType::Payment => TransactionType::TopUp,
                ReferenceType::Refund => TransactionType::Refund,
                _ => TransactionType::Adjustment,
            };
            Some(line(
                kind,
                e.reference_type,
                &e.reference_id,
                e.amount_token.get(),
                e.amount_credit.get(),
            ))
        }
        Event::BalanceSubtracted(e) => {
            let kind = match e.reference_type {
                ReferenceType::Refund => TransactionType::Refund,
                _ => TransactionType::Adjustment,
            };
            Some(line(
                kind,
                e.reference_type,
                &e.reference_id,
                -e.amount_token.get(),
                -e.amount_credit.get(),
            ))
        }
        Event::Debited(e) => Some(LedgerLine {
            service_type: Some(e.service_type),
            billable_units: Some(e.billable_units),
            rate: Some(e.rate),
            ..line(
                TransactionType::Usage,
                e.reference_type,
                &e.reference_id,
                -e.charged_token.get(),
                -e.charged_credit.get(),
            )
        }),
        Event::Committed(e) => Some(LedgerLine {
            service_type: Some(e.service_type),
            billable_units: Some(e.billable_units),
            rate: Some(e.rate),
            // A call's reference is its call id, the reservation id.
            ..line(
                TransactionType::Usage,
                e.reference_type,
                &e.reservation_id,
                -e.charged_token.get(),
                -e.charged_credit.get(),
            )
        }),
        Event::TokensGranted(e) => Some(line(
            TransactionType::TokenGrant,
            e.reference_type,
            "",
            e.amount.get(),
            0,
        )),
        Event::TokensExpired(e) => Some(line(
            TransactionType::TokenExpiry,
            ReferenceType::MonthlyAllowance,
            "",
            -e.amount.get(),
            0,
        )),
        Event::AccountCreated(_)
        | Event::Reserved(_)
        | Event::ReservationExtended(_)
        | Event::Released(_)
        | Event::ReservationExpired(_)
        | Event::PlanChanged(_)
        | Event::AccountUpdated(_)
        | Event::CreditLimitExceeded(_) => None,
    }
}

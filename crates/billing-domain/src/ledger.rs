//! The transaction ledger's view of events: which events move money, and by
//! how much, in which bucket. A pure function of one event, so a ledger built
//! from the events always sums to the balances: `amount_credit` to the paid
//! balance, `amount_promotional` to the promotional one, `amount_token` to
//! the tokens.

use serde::{Deserialize, Serialize};

use crate::account::PromotionSpend;
use crate::catalog::{Bucket, ReferenceType, ServiceType};
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
    PromotionalGrant,
    PromotionalExpiry,
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
            Self::PromotionalGrant => "promotional_grant",
            Self::PromotionalExpiry => "promotional_expiry",
        }
    }
}

/// One money movement. Amounts are signed: credit added is positive, usage
/// negative. `amount_credit` is paid credit; a usage charged partly from
/// promotional credit moves both.
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
    pub amount_promotional: Micros,
}

/// Splits a movement of `credit` (signed) into (paid, promotional) by its
/// bucket.
fn by_bucket(bucket: Bucket, credit: i64) -> (i64, i64) {
    match bucket {
        Bucket::Paid => (credit, 0),
        Bucket::Promotional => (0, credit),
    }
}

/// Splits a usage charge of `credit` into (paid, promotional), both
/// negative. Stored events were checked when decided, so the sums fit.
fn charge_split(credit: Micros, promotional: &[PromotionSpend]) -> (i64, i64) {
    let promo: i64 = promotional.iter().map(|s| s.amount.get()).sum();
    (promo - credit.get(), -promo)
}

/// The ledger entry an event makes, if it moves money. Holds are not money
/// movements; their commit is (even a commit of zero units, as a usage record).
pub fn ledger_line(event: &Event) -> Option<LedgerLine> {
    let line = |transaction_type,
                reference_type,
                reference_id: &str,
                token: i64,
                (credit, promotional): (i64, i64)| LedgerLine {
        transaction_type,
        reference_type,
        reference_id: reference_id.to_owned(),
        service_type: None,
        billable_units: None,
        rate: None,
        amount_token: Tokens(token),
        amount_credit: Micros(credit),
        amount_promotional: Micros(promotional),
    };
    match event {
        Event::BalanceAdded(e) => {
            let kind = match (e.bucket, e.reference_type) {
                (Bucket::Promotional, _) => TransactionType::PromotionalGrant,
                (_, ReferenceType::Payment) => TransactionType::TopUp,
                (_, ReferenceType::Refund) => TransactionType::Refund,
                _ => TransactionType::Adjustment,
            };
            Some(line(
                kind,
                e.reference_type,
                &e.reference_id,
                e.amount_token.get(),
                by_bucket(e.bucket, e.amount_credit.get()),
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
                by_bucket(e.bucket, -e.amount_credit.get()),
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
                charge_split(e.charged_credit, &e.promotional),
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
                charge_split(e.charged_credit, &e.promotional),
            )
        }),
        Event::TokensGranted(e) => Some(line(
            TransactionType::TokenGrant,
            e.reference_type,
            "",
            e.amount.get(),
            (0, 0),
        )),
        Event::TokensExpired(e) => Some(line(
            TransactionType::TokenExpiry,
            ReferenceType::MonthlyAllowance,
            "",
            -e.amount.get(),
            (0, 0),
        )),
        // Its reference is the grant: the version of the entry that made it.
        Event::PromotionExpired(e) => Some(line(
            TransactionType::PromotionalExpiry,
            ReferenceType::Promotion,
            &e.grant.to_string(),
            0,
            (0, -e.amount.get()),
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

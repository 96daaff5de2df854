//! What callers ask for (commands), what they get back (outcomes), and why a
//! command can be refused (rejections).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::account::{AccountView, Hold, ReservationView};
use crate::catalog::{
    AccountStatus, Bucket, CreditLimitType, Currency, PlanStatus, PlanType, ReferenceType,
    ReservationStatus, ServiceType,
};
use crate::money::{Micros, Overflow, Tokens};
use crate::rates::{Rate, RateTable, Usage};

/// The longest reservation id (a caller's call id) accepted.
pub const MAX_RESERVATION_ID_LEN: usize = 128;
/// The hold lifetime used when a reserve does not name one.
pub const DEFAULT_TTL_SECONDS: i64 = 900;
/// The longest hold lifetime accepted.
pub const MAX_TTL_SECONDS: i64 = 86_400;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateAccount {
    pub customer_id: Uuid,
    pub name: String,
    pub detail: String,
    pub plan_type: PlanType,
    pub currency: Currency,
    pub credit_limit: Micros,
    pub credit_limit_type: CreditLimitType,
    pub is_postpaid: bool,
    pub low_balance_threshold: Micros,
    pub payment_type: String,
    pub payment_method: String,
}

/// A command on an existing account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    AddBalance(BalanceChange),
    SubtractBalance(BalanceChange),
    Debit(Debit),
    Reserve(Reserve),
    Extend(Extend),
    Commit(Commit),
    Release {
        reservation_id: String,
    },
    Update(AccountPatch),
    /// Records what time alone has made due: expired holds and the monthly
    /// token reset. Every other command does this first, too.
    Housekeep,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalanceChange {
    pub amount_credit: Micros,
    pub amount_token: Tokens,
    pub reference_type: ReferenceType,
    pub reference_id: String,
    pub note: String,
    pub bucket: Bucket,
    /// When promotional credit added expires; `None` for never.
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Debit {
    pub service_type: ServiceType,
    pub usage: Usage,
    pub reference_type: ReferenceType,
    pub reference_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reserve {
    pub reservation_id: String,
    pub service_type: ServiceType,
    pub requested_units: i64,
    pub allow_partial: bool,
    /// Zero means [`DEFAULT_TTL_SECONDS`].
    pub ttl_seconds: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extend {
    pub reservation_id: String,
    pub additional_units: i64,
    pub allow_partial: bool,
}

/// The usage is read against the reservation's service type, which only the
/// account knows, so both raw fields come in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    pub reservation_id: String,
    pub used_duration_ms: i64,
    pub used_quantity: i64,
}

/// The fields to change; `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountPatch {
    pub name: Option<String>,
    pub detail: Option<String>,
    pub plan_type: Option<PlanType>,
    pub plan_status: Option<PlanStatus>,
    pub status: Option<AccountStatus>,
    pub credit_limit: Option<Micros>,
    pub credit_limit_type: Option<CreditLimitType>,
    pub is_postpaid: Option<bool>,
    pub low_balance_threshold: Option<Micros>,
    pub payment_type: Option<String>,
    pub payment_method: Option<String>,
}

impl Command {
    /// The reservation a command acts on, if any.
    pub fn reservation_id(&self) -> Option<&str> {
        match self {
            Self::Reserve(c) => Some(&c.reservation_id),
            Self::Extend(c) => Some(&c.reservation_id),
            Self::Commit(c) => Some(&c.reservation_id),
            Self::Release { reservation_id } => Some(reservation_id),
            _ => None,
        }
    }
}

/// A reservation that is no longer live, as the store remembers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedReservation {
    pub hold: Hold,
    pub status: ReservationStatus,
    /// The first commit's result, replayed to a repeated commit.
    pub commit: Option<CommitOutcome>,
    /// The account version the resolution was recorded at.
    pub account_version: i64,
}

/// What a command needs besides the account: the clock, the rates, and the
/// targeted reservation when it is already resolved.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    pub now: DateTime<Utc>,
    pub rates: &'a RateTable,
    pub resolved: Option<&'a ResolvedReservation>,
}

/// The result a reply is built from. Stored with idempotency records, so a
/// retry gets exactly the first reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    Account(AccountView),
    Charge(ChargeOutcome),
    Reservation(ReservationView),
    Commit(CommitOutcome),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeOutcome {
    pub billable_units: i64,
    pub charged_token: Tokens,
    pub charged_credit: Micros,
    pub rate: Rate,
    pub account: AccountView,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitOutcome {
    pub reservation_id: String,
    pub billable_units: i64,
    pub charged_token: Tokens,
    pub charged_credit: Micros,
    pub released_token: Tokens,
    pub released_credit: Micros,
    pub account: AccountView,
}

/// Why a command was refused. A refused command changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("an amount is out of range")]
    Overflow,
    #[error("billing account not found")]
    AccountNotFound,
    #[error("reservation not found")]
    ReservationNotFound,
    #[error("insufficient balance: {required} micros needed, {available} available")]
    InsufficientBalance { required: Micros, available: Micros },
    #[error("insufficient tokens: {required} needed, {available} available")]
    InsufficientTokens { required: Tokens, available: Tokens },
    #[error("the billing account is frozen")]
    AccountFrozen,
    #[error("the reservation is already {status}")]
    ReservationResolved { status: ReservationStatus },
    #[error("the reservation id is already used with different parameters")]
    ReservationIdReused,
    #[error("the idempotency key is already used with a different request")]
    IdempotencyKeyReused,
    #[error("the account holds {held}, not {requested}")]
    CurrencyMismatch { held: Currency, requested: String },
    #[error(
        "insufficient promotional credit: {required} micros to remove, {available} not expired"
    )]
    InsufficientPromotional { required: Micros, available: Micros },
    #[error("the account already holds {limit} promotional grants")]
    TooManyPromotions { limit: usize },
}

impl From<Overflow> for Rejection {
    fn from(_: Overflow) -> Self {
        Self::Overflow
    }
}

impl Rejection {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    /// A stable, machine-readable reason (the gRPC ErrorInfo reason).
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::InvalidArgument { .. } => "INVALID_ARGUMENT",
            Self::Overflow => "AMOUNT_OUT_OF_RANGE",
            Self::AccountNotFound => "ACCOUNT_NOT_FOUND",
            Self::ReservationNotFound => "RESERVATION_NOT_FOUND",
            Self::InsufficientBalance { .. } => "INSUFFICIENT_BALANCE",
            Self::InsufficientTokens { .. } => "INSUFFICIENT_TOKENS",
            Self::AccountFrozen => "ACCOUNT_FROZEN",
            Self::ReservationResolved { .. } => "RESERVATION_RESOLVED",
            Self::ReservationIdReused => "RESERVATION_ID_REUSED",
            Self::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            Self::CurrencyMismatch { .. } => "CURRENCY_MISMATCH",
            Self::InsufficientPromotional { .. } => "INSUFFICIENT_PROMOTIONAL_BALANCE",
            Self::TooManyPromotions { .. } => "TOO_MANY_PROMOTIONS",
        }
    }
}

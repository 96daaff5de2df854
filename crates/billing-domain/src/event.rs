//! Balance events (the source of truth) and `evolve`, which folds one event
//! into an account.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::account::{Account, Balances, Hold, Promotion, PromotionSpend};
use crate::catalog::{
    AccountStatus, Bucket, CreditLimitType, Currency, PlanStatus, PlanType, ReferenceType,
    ServiceType,
};
use crate::money::{Micros, Overflow, Tokens};
use crate::rates::Rate;

/// The schema version of the event payloads below. Bump it when a payload
/// changes shape, and keep reading the old shape.
pub const EVENT_SCHEMA_VERSION: i32 = 1;

/// Something that happened to an account, named in the past tense.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    AccountCreated(AccountCreated),
    BalanceAdded(BalanceMoved),
    BalanceSubtracted(BalanceMoved),
    Debited(Debited),
    Reserved(Reserved),
    ReservationExtended(ReservationExtended),
    Committed(Committed),
    Released(HoldDropped),
    ReservationExpired(HoldDropped),
    TokensGranted(TokensGranted),
    TokensExpired(TokensExpired),
    PromotionExpired(PromotionExpired),
    PlanChanged(PlanChanged),
    AccountUpdated(AccountUpdated),
    CreditLimitExceeded(CreditLimitExceeded),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountCreated {
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

/// Credit and/or tokens added or subtracted by an admin. Promotional credit
/// moves alone (no tokens): added as one grant (named by this event's
/// version), or subtracted from the grants `promotions` lists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceMoved {
    pub amount_credit: Micros,
    pub amount_token: Tokens,
    pub reference_type: ReferenceType,
    pub reference_id: String,
    pub note: String,
    #[serde(default, skip_serializing_if = "Bucket::is_paid")]
    pub bucket: Bucket,
    /// When a promotional grant expires; `None` for never.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::timestamp::serialize_opt"
    )]
    pub expires_at: Option<DateTime<Utc>>,
    /// The grants a promotional subtraction takes from (summing to
    /// `amount_credit`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub promotions: Vec<PromotionSpend>,
}

/// One-shot usage charged without a reservation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Debited {
    pub service_type: ServiceType,
    pub reference_type: ReferenceType,
    pub reference_id: String,
    pub billable_units: i64,
    pub rate: Rate,
    pub charged_token: Tokens,
    /// Paid and promotional credit together.
    pub charged_credit: Micros,
    /// The part of `charged_credit` taken from promotional grants; the rest
    /// is paid credit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub promotional: Vec<PromotionSpend>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reserved {
    pub reservation_id: String,
    pub service_type: ServiceType,
    pub rate: Rate,
    pub requested_units: i64,
    pub allow_partial: bool,
    pub ttl_seconds: i64,
    pub granted_units: i64,
    pub reserved_token: Tokens,
    pub reserved_credit: Micros,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    pub expires_at: DateTime<Utc>,
}

/// Units added to a live hold; the amounts are the additions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationExtended {
    pub reservation_id: String,
    pub requested_units: i64,
    pub granted_units: i64,
    pub reserved_token: Tokens,
    pub reserved_credit: Micros,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    pub expires_at: DateTime<Utc>,
}

/// A hold resolved by charging its real usage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub reservation_id: String,
    pub service_type: ServiceType,
    pub reference_type: ReferenceType,
    pub rate: Rate,
    pub billable_units: i64,
    pub charged_token: Tokens,
    /// Paid and promotional credit together.
    pub charged_credit: Micros,
    pub released_token: Tokens,
    pub released_credit: Micros,
    /// The part of `charged_credit` taken from promotional grants; the rest
    /// is paid credit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub promotional: Vec<PromotionSpend>,
}

/// A hold dropped without a charge (released, or expired).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldDropped {
    pub reservation_id: String,
    pub released_token: Tokens,
    pub released_credit: Micros,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokensGranted {
    pub amount: Tokens,
    pub reference_type: ReferenceType,
    /// When the next monthly reset is due after this grant.
    #[serde(serialize_with = "crate::timestamp::serialize_opt")]
    pub next_topup: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokensExpired {
    pub amount: Tokens,
}

/// What was left of a promotional grant when it expired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromotionExpired {
    pub grant: i64,
    pub amount: Micros,
    /// The grant's expiry time (the event may be recorded later; reads
    /// leave the grant out from this time on).
    #[serde(serialize_with = "crate::timestamp::serialize")]
    pub expired_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanChanged {
    pub from: PlanType,
    pub to: PlanType,
    #[serde(serialize_with = "crate::timestamp::serialize_opt")]
    pub next_topup: Option<DateTime<Utc>>,
}

/// The fields that changed; `None` means unchanged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountUpdated {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_status: Option<PlanStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<AccountStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credit_limit: Option<Micros>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credit_limit_type: Option<CreditLimitType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_postpaid: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_balance_threshold: Option<Micros>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_method: Option<String>,
}

/// Usage took the available credit from zero or above to below zero.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditLimitExceeded {
    pub available_credit: Micros,
    pub credit_limit: Micros,
    pub credit_limit_type: CreditLimitType,
}

impl Event {
    /// The stored event type name, e.g. `balance_added`.
    pub const fn event_type(&self) -> &'static str {
        match self {
            Self::AccountCreated(_) => "account_created",
            Self::BalanceAdded(_) => "balance_added",
            Self::BalanceSubtracted(_) => "balance_subtracted",
            Self::Debited(_) => "debited",
            Self::Reserved(_) => "reserved",
            Self::ReservationExtended(_) => "reservation_extended",
            Self::Committed(_) => "committed",
            Self::Released(_) => "released",
            Self::ReservationExpired(_) => "reservation_expired",
            Self::TokensGranted(_) => "tokens_granted",
            Self::TokensExpired(_) => "tokens_expired",
            Self::PromotionExpired(_) => "promotion_expired",
            Self::PlanChanged(_) => "plan_changed",
            Self::AccountUpdated(_) => "account_updated",
            Self::CreditLimitExceeded(_) => "credit_limit_exceeded",
        }
    }

    /// The reservation an event concerns, if any.
    pub fn reservation_id(&self) -> Option<&str> {
        match self {
            Self::Reserved(e) => Some(&e.reservation_id),
            Self::ReservationExtended(e) => Some(&e.reservation_id),
            Self::Committed(e) => Some(&e.reservation_id),
            Self::Released(e) | Self::ReservationExpired(e) => Some(&e.reservation_id),
            _ => None,
        }
    }
}

/// An event as decided, with its version and the account after it: the
/// balances every event carries, and the whole account view, so a consumer of
/// the outbox can act without calling back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    pub version: i64,
    pub event: Event,
    pub balances: Balances,
    pub account: crate::account::AccountView,
}

impl Account {
    /// The account an `AccountCreated` event starts, at version 1.
    pub fn created(id: Uuid, e: &AccountCreated, at: DateTime<Utc>) -> Self {
        Self {
            id,
            customer_id: e.customer_id,
            name: e.name.clone(),
            detail: e.detail.clone(),
            plan_type: e.plan_type,
            plan_status: PlanStatus::Active,
            status: AccountStatus::Active,
            currency: e.currency.clone(),
            balance_credit: Micros::ZERO,
            balance_token: Tokens::ZERO,
            credit_limit: e.credit_limit,
            credit_limit_type: e.credit_limit_type,
            is_postpaid: e.is_postpaid,
            low_balance_threshold: e.low_balance_threshold,
            payment_type: e.payment_type.clone(),
            payment_method: e.payment_method.clone(),
            tm_last_topup: None,
            tm_next_topup: None,
            tm_create: at,
            tm_update: at,
            tm_delete: None,
            version: 1,
            holds: Default::default(),
            chain_head: None,
            promotions: Vec::new(),
        }
    }

    /// Folds one event (that happened at `at`) into the account: `evolve`.
    /// `AccountCreated` starts an account (see [`Account::created`]) and is
    /// ignored here.
    pub fn apply(&mut self, event: &Event, at: DateTime<Utc>) -> Result<(), Overflow> {
        match event {
            Event::AccountCreated(_) | Event::CreditLimitExceeded(_) => {}
            Event::BalanceAdded(e) => {
                match e.bucket {
                    Bucket::Paid => {
                        self.balance_credit = self.balance_credit.checked_add(e.amount_credit)?;
                    }
                    Bucket::Promotional => self.grant_promotion(Promotion {
                        grant: self.version.checked_add(1).ok_or(Overflow)?,
                        remaining: e.amount_credit,
                        expires_at: e.expires_at,
                    }),
                }
                self.balance_token = self.balance_token.checked_add(e.amount_token)?;
            }
            Event::BalanceSubtracted(e) => {
                match e.bucket {
                    Bucket::Paid => {
                        self.balance_credit = self.balance_credit.checked_sub(e.amount_credit)?;
                    }
                    Bucket::Promotional => self.take_promotions(&e.promotions)?,
                }
                self.balance_token = self.balance_token.checked_sub(e.amount_token)?;
            }
            Event::Debited(e) => {
                self.charge(e.charged_credit, &e.promotional)?;
                self.balance_token = self.balance_token.checked_sub(e.charged_token)?;
            }
            Event::Reserved(e) => {
                let hold = Hold {
                    reservation_id: e.reservation_id.clone(),
                    account_id: self.id,
                    service_type: e.service_type,
                    rate: e.rate,
                    requested_units: e.requested_units,
                    allow_partial: e.allow_partial,
                    ttl_seconds: e.ttl_seconds,
                    granted_units: e.granted_units,
                    reserved_token: e.reserved_token,
                    reserved_credit: e.reserved_credit,
                    created_at: at,
                    expires_at: e.expires_at,
                };
                self.holds.insert(e.reservation_id.clone(), hold);
            }
            Event::ReservationExtended(e) => {
                if let Some(hold) = self.holds.get_mut(&e.reservation_id) {
                    hold.granted_units = hold
                        .granted_units
                        .checked_add(e.granted_units)
                        .ok_or(Overflow)?;
                    hold.reserved_token = hold.reserved_token.checked_add(e.reserved_token)?;
                    hold.reserved_credit = hold.reserved_credit.checked_add(e.reserved_credit)?;
                    hold.expires_at = e.expires_at;
                }
            }
            Event::Committed(e) => {
                self.holds.remove(&e.reservation_id);
                self.charge(e.charged_credit, &e.promotional)?;
                self.balance_token = self.balance_token.checked_sub(e.charged_token)?;
            }
            Event::Released(e) | Event::ReservationExpired(e) => {
                self.holds.remove(&e.reservation_id);
            }
            Event::TokensGranted(e) => {
                self.balance_token = self.balance_token.checked_add(e.amount)?;
                self.tm_last_topup = Some(at);
                self.tm_next_topup = e.next_topup;
            }
            Event::TokensExpired(e) => {
                self.balance_token = self.balance_token.checked_sub(e.amount)?;
            }
            Event::PromotionExpired(e) => self.take_promotions(&[PromotionSpend {
                grant: e.grant,
                amount: e.amount,
            }])?,
            Event::PlanChanged(e) => {
                self.plan_type = e.to;
                self.tm_next_topup = e.next_topup;
            }
            Event::AccountUpdated(e) => self.apply_update(e),
        }
        self.version += 1;
        self.tm_update = at;
        Ok(())
    }

    /// Takes `credit` of usage: `promotional` from its grants, the rest from
    /// paid credit.
    fn charge(&mut self, credit: Micros, promotional: &[PromotionSpend]) -> Result<(), Overflow> {
        let from_promotions = Micros::checked_sum(promotional.iter().map(|s| s.amount))?;
        self.take_promotions(promotional)?;
        self.balance_credit = self
            .balance_credit
            .checked_sub(credit.checked_sub(from_promotions)?)?;
        Ok(())
    }

    fn apply_update(&mut self, e: &AccountUpdated) {
        fn set<T: Clone>(field: &mut T, value: &Option<T>) {
            if let Some(v) = value {
                *field = v.clone();
            }
        }
        set(&mut self.name, &e.name);
        set(&mut self.detail, &e.detail);
        set(&mut self.plan_status, &e.plan_status);
        set(&mut self.status, &e.status);
        set(&mut self.credit_limit, &e.credit_limit);
        set(&mut self.credit_limit_type, &e.credit_limit_type);
        set(&mut self.is_postpaid, &e.is_postpaid);
        set(&mut self.low_balance_threshold, &e.low_balance_threshold);
        set(&mut self.payment_type, &e.payment_type);
        set(&mut self.payment_method, &e.payment_method);
    }

    /// Folds a whole stream, oldest first, into a fresh account. Returns
    /// `None` for an empty stream, or one that does not begin with creation.
    pub fn fold<'a>(
        id: Uuid,
        events: impl IntoIterator<Item = (&'a Event, DateTime<Utc>)>,
    ) -> Result<Option<Self>, Overflow> {
        let mut events = events.into_iter();
        let Some((Event::AccountCreated(created), at)) = events.next() else {
            return Ok(None);
        };
        let mut account = Self::created(id, created, at);
        for (event, at) in events {
            account.apply(event, at)?;
        }
        Ok(Some(account))
    }
}

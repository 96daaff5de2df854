//! The account aggregate (the fold of its events) and the views replies are
//! built from.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::catalog::{
    AccountStatus, CreditLimitType, Currency, PlanStatus, PlanType, ReservationStatus, ServiceType,
};
use crate::money::{Micros, Overflow, Tokens};
use crate::rates::{Rate, TokenMetering};

/// A billing account as its events leave it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub name: String,
    pub detail: String,
    pub plan_type: PlanType,
    pub plan_status: PlanStatus,
    pub status: AccountStatus,
    pub currency: Currency,
    pub balance_credit: Micros,
    pub balance_token: Tokens,
    /// Counts toward the available credit only while `is_postpaid`.
    pub credit_limit: Micros,
    pub credit_limit_type: CreditLimitType,
    pub is_postpaid: bool,
    pub low_balance_threshold: Micros,
    pub payment_type: String,
    pub payment_method: String,
    /// When the plan's tokens were last granted.
    #[serde(serialize_with = "crate::timestamp::serialize_opt")]
    pub tm_last_topup: Option<DateTime<Utc>>,
    /// When the next monthly token reset is due; `None` for unmetered plans.
    #[serde(serialize_with = "crate::timestamp::serialize_opt")]
    pub tm_next_topup: Option<DateTime<Utc>>,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    pub tm_create: DateTime<Utc>,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    pub tm_update: DateTime<Utc>,
    #[serde(serialize_with = "crate::timestamp::serialize_opt")]
    pub tm_delete: Option<DateTime<Utc>>,
    /// The version of the last event folded in (1 after creation).
    pub version: i64,
    /// Live holds by reservation id. Resolved reservations leave this map.
    /// The store keeps holds in a table of their own, so they are not part of
    /// the serialized account.
    #[serde(skip)]
    pub holds: BTreeMap<String, Hold>,
    /// The hash of the account's last event in the store's hash chain
    /// (`billing_store::chain`), kept with the state so the next append can
    /// link to it. The domain never reads it; `None` before the first
    /// hashed event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_head: Option<String>,
    /// Promotional credit still held, one entry per grant, in spending
    /// order: earliest expiry first, then oldest grant first, grants that
    /// never expire last. A grant leaves once spent, removed or expired.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub promotions: Vec<Promotion>,
}

/// The most promotional grants an account holds at once; each is part of
/// its state, so they are bounded like holds are by their lifetime.
pub const MAX_PROMOTIONS: usize = 100;

/// What remains of one grant of promotional credit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    /// The version of the event that granted it: its name in later events.
    pub grant: i64,
    pub remaining: Micros,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::timestamp::serialize_opt"
    )]
    pub expires_at: Option<DateTime<Utc>>,
}

impl Promotion {
    /// A grant stops counting at `expires_at`, whether or not its expiry has
    /// been recorded yet.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_none_or(|t| now < t)
    }

    /// The key grants are spent in: earliest expiry first, then oldest.
    fn spending_order(&self) -> (bool, Option<DateTime<Utc>>, i64) {
        (self.expires_at.is_none(), self.expires_at, self.grant)
    }
}

/// Promotional credit taken from one grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromotionSpend {
    pub grant: i64,
    pub amount: Micros,
}

/// Funds held for one reservation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub reservation_id: String,
    pub account_id: Uuid,
    pub service_type: ServiceType,
    /// The rate locked in when the reservation was made; its commit uses it.
    pub rate: Rate,
    /// The request as first made, to recognise a retry of the same reserve.
    pub requested_units: i64,
    pub allow_partial: bool,
    pub ttl_seconds: i64,
    pub granted_units: i64,
    pub reserved_token: Tokens,
    pub reserved_credit: Micros,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    pub expires_at: DateTime<Utc>,
}

impl Hold {
    /// A hold stops counting at `expires_at`, whether or not its expiry has
    /// been recorded yet.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        now < self.expires_at
    }

    pub fn view(&self, status: ReservationStatus, account_version: i64) -> ReservationView {
        ReservationView {
            reservation_id: self.reservation_id.clone(),
            account_id: self.account_id,
            service_type: self.service_type,
            status,
            requested_units: self.requested_units,
            granted_units: self.granted_units,
            reserved_token: self.reserved_token,
            reserved_credit: self.reserved_credit,
            expires_at: self.expires_at,
            account_version,
        }
    }
}

/// Balances as they stand after an event; every event carries them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balances {
    pub balance_credit: Micros,
    pub balance_token: Tokens,
    pub reserved_credit: Micros,
    pub reserved_token: Tokens,
    pub available_credit: Micros,
    pub available_token: Tokens,
}

impl Account {
    /// Promotional credit that counts at `now`: grants not yet expired.
    pub fn promotional(&self, now: DateTime<Utc>) -> Result<Micros, Overflow> {
        Micros::checked_sum(
            self.promotions
                .iter()
                .filter(|p| p.is_live(now))
                .map(|p| p.remaining),
        )
    }

    /// Promotional credit as its recorded events leave it (expired grants
    /// count until their expiry is recorded): what the ledger sums to.
    pub fn promotional_recorded(&self) -> Result<Micros, Overflow> {
        Micros::checked_sum(self.promotions.iter().map(|p| p.remaining))
    }

    /// The grants `amount` of promotional credit comes from, in spending
    /// order, taking at most what live grants hold. The rest of `amount`
    /// (if any) is paid credit.
    pub fn promotion_spends(&self, amount: Micros, now: DateTime<Utc>) -> Vec<PromotionSpend> {
        let mut left = amount.at_least_zero();
        let mut spends = Vec::new();
        for p in self.promotions.iter().filter(|p| p.is_live(now)) {
            if left.is_zero() {
                break;
            }
            let take = p.remaining.min(left);
            if take.is_positive() {
                spends.push(PromotionSpend {
                    grant: p.grant,
                    amount: take,
                });
                // `take <= left`, so this never underflows.
                left = Micros(left.get() - take.get());
            }
        }
        spends
    }

    /// Adds a grant of promotional credit in its place in spending order.
    pub(crate) fn grant_promotion(&mut self, promotion: Promotion) {
        let key = promotion.spending_order();
        let at = self
            .promotions
            .partition_point(|p| p.spending_order() <= key);
        self.promotions.insert(at, promotion);
    }

    /// Takes `spends` from their grants; a grant spent to nothing leaves.
    pub(crate) fn take_promotions(&mut self, spends: &[PromotionSpend]) -> Result<(), Overflow> {
        for spend in spends {
            if let Some(p) = self.promotions.iter_mut().find(|p| p.grant == spend.grant) {
                p.remaining = p.remaining.checked_sub(spend.amount)?;
            }
        }
        self.promotions.retain(|p| p.remaining.is_positive());
        Ok(())
    }

    /// When time alone next changes this account (apart from its holds,
    /// which the sweeper finds by their own expiry): the monthly token
    /// reset or the first promotional grant's expiry, whichever is first.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        let expiry = self.promotions.iter().filter_map(|p| p.expires_at).min();
        match (self.tm_next_topup, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn metering(&self) -> TokenMetering {
        match self.plan_type.monthly_tokens() {
            Some(_) => TokenMetering::Metered,
            None => TokenMetering::Unmetered,
        }
    }

    /// Tokens and credit held by holds still live at `now`.
    pub fn reserved(&self, now: DateTime<Utc>) -> Result<(Tokens, Micros), Overflow> {
        let live = || self.holds.values().filter(|h| h.is_live(now));
        Ok((
            Tokens::checked_sum(live().map(|h| h.reserved_token))?,
            Micros::checked_sum(live().map(|h| h.reserved_credit))?,
        ))
    }

    /// `balance + promotional - reserved + credit_limit` (the limit only
    /// when postpaid, the promotional credit only while live), and
    /// `balance - reserved` for tokens.
    pub fn balances(&self, now: DateTime<Utc>) -> Result<Balances, Overflow> {
        let (reserved_token, reserved_credit) = self.reserved(now)?;
        let promotional = self.promotional(now)?;
        let limit = if self.is_postpaid {
            self.credit_limit
        } else {
            Micros::ZERO
        };
        Ok(Balances {
            balance_credit: self.balance_credit,
            balance_token: self.balance_token,
            reserved_credit,
            reserved_token,
            available_credit: self
                .balance_credit
                .checked_add(promotional)?
                .checked_sub(reserved_credit)?
                .checked_add(limit)?,
            available_token: self.balance_token.checked_sub(reserved_token)?,
        })
    }

    /// Checks that every amount derived from this state stays representable
    /// whichever of its holds and promotional grants are live: the sums of
    /// all holds and grants, and the available balances with none or all of
    /// them counting (and after a monthly reset). Time alone (a hold expiring, the reset) moves an
    /// account only within these bounds, so a state that passes can be read
    /// at any later time, and every time-driven event on it is accepted.
    pub fn check_representable(&self) -> Result<(), Overflow> {
        let all = || self.holds.values();
        let reserved_credit = Micros::checked_sum(all().map(|h| h.reserved_credit))?;
        let reserved_token = Tokens::checked_sum(all().map(|h| h.reserved_token))?;
        let limit = if self.is_postpaid {
            self.credit_limit
        } else {
            Micros::ZERO
        };
        let promotional = self.promotional_recorded()?;
        let paid = self.balance_credit.checked_add(limit)?;
        paid.checked_sub(reserved_credit)?;
        paid.checked_add(promotional)?
            .checked_sub(reserved_credit)?;
        self.balance_token.checked_sub(reserved_token)?;
        if let Some(allowance) = self.plan_type.monthly_tokens() {
            allowance.checked_sub(reserved_token)?;
        }
        Ok(())
    }

    /// The account as replies show it at `now`.
    pub fn view(&self, now: DateTime<Utc>) -> Result<AccountView, Overflow> {
        let b = self.balances(now)?;
        Ok(AccountView {
            id: self.id,
            customer_id: self.customer_id,
            name: self.name.clone(),
            detail: self.detail.clone(),
            plan_type: self.plan_type,
            plan_status: self.plan_status,
            status: self.status,
            currency: self.currency.clone(),
            balance_credit: b.balance_credit,
            balance_token: b.balance_token,
            balance_promotional: self.promotional(now)?,
            promotional_grants: self
                .promotions
                .iter()
                .filter(|p| p.is_live(now))
                .cloned()
                .collect(),
            reserved_credit: b.reserved_credit,
            reserved_token: b.reserved_token,
            available_credit: b.available_credit,
            available_token: b.available_token,
            credit_limit: self.credit_limit,
            credit_limit_type: self.credit_limit_type,
            is_postpaid: self.is_postpaid,
            low_balance_threshold: self.low_balance_threshold,
            payment_type: self.payment_type.clone(),
            payment_method: self.payment_method.clone(),
            tm_last_topup: self.tm_last_topup,
            tm_next_topup: self.tm_next_topup,
            tm_create: self.tm_create,
            tm_update: self.tm_update,
            tm_delete: self.tm_delete,
            version: self.version,
            over_limit: b.available_credit.is_negative(),
        })
    }
}

/// An account as a reply shows it: the state plus derived balances.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub name: String,
    pub detail: String,
    pub plan_type: PlanType,
    pub plan_status: PlanStatus,
    pub status: AccountStatus,
    pub currency: Currency,
    pub balance_credit: Micros,
    pub balance_token: Tokens,
    /// Promotional credit that counts now (not in `balance_credit`).
    #[serde(default)]
    pub balance_promotional: Micros,
    /// The live grants making it up, in spending order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub promotional_grants: Vec<Promotion>,
    pub reserved_credit: Micros,
    pub reserved_token: Tokens,
    pub available_credit: Micros,
    pub available_token: Tokens,
    pub credit_limit: Micros,
    pub credit_limit_type: CreditLimitType,
    pub is_postpaid: bool,
    pub low_balance_threshold: Micros,
    pub payment_type: String,
    pub payment_method: String,
    #[serde(serialize_with = "crate::timestamp::serialize_opt")]
    pub tm_last_topup: Option<DateTime<Utc>>,
    #[serde(serialize_with = "crate::timestamp::serialize_opt")]
    pub tm_next_topup: Option<DateTime<Utc>>,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    pub tm_create: DateTime<Utc>,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    pub tm_update: DateTime<Utc>,
    #[serde(serialize_with = "crate::timestamp::serialize_opt")]
    pub tm_delete: Option<DateTime<Utc>>,
    pub version: i64,
    pub over_limit: bool,
}

/// A reservation as a reply shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationView {
    pub reservation_id: String,
    pub account_id: Uuid,
    pub service_type: ServiceType,
    pub status: ReservationStatus,
    pub requested_units: i64,
    pub granted_units: i64,
    pub reserved_token: Tokens,
    pub reserved_credit: Micros,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    pub expires_at: DateTime<Utc>,
    pub account_version: i64,
}

/// Midnight UTC on the first day of the month after `t`'s month.
pub fn next_month_start(t: DateTime<Utc>) -> DateTime<Utc> {
    let (year, month) = if t.month() == 12 {
        (t.year() + 1, 1)
    } else {
        (t.year(), t.month() + 1)
    };
    Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0)
        .single()
        .unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_month_start_rolls_over_the_year() {
        let t = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 59).unwrap();
        assert_eq!(
            next_month_start(t),
            Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap()
        );
        let t = Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap();
        assert_eq!(
            next_month_start(t),
            Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap()
        );
    }
}

//! `decide`: a pure function of (account, command, context) to the events it
//! causes and the reply's outcome, or a rejection.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use crate::account::{Account, Hold, MAX_PROMOTIONS, PromotionSpend, next_month_start};
use crate::catalog::{AccountStatus, Bucket, ReferenceType, ReservationStatus};
use crate::command::{
    AccountPatch, BalanceChange, ChargeOutcome, Command, Commit, CommitOutcome, Context,
    CreateAccount, DEFAULT_TTL_SECONDS, Debit, Extend, MAX_RESERVATION_ID_LEN, MAX_TTL_SECONDS,
    Outcome, Rejection, Reserve,
};
use crate::event::{
    AccountCreated, AccountUpdated, BalanceMoved, Committed, CreditLimitExceeded, Debited, Event,
    HoldDropped, PlanChanged, PromotionExpired, Recorded, ReservationExtended, Reserved,
    TokensExpired, TokensGranted,
};
use crate::money::{Micros, Tokens};
use crate::rates::{Price, Rate, Usage};

/// A decided command: the events to append (in order, versions assigned), the
/// account after them, and what to reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Executed {
    pub events: Vec<Recorded>,
    pub account: Account,
    pub outcome: Outcome,
}

/// Decides the creation of account `id`: the account starts with its plan's
/// token allowance.
pub fn create(id: Uuid, cmd: &CreateAccount, now: DateTime<Utc>) -> Result<Executed, Rejection> {
    non_negative("credit_limit", cmd.credit_limit)?;
    non_negative("low_balance_threshold", cmd.low_balance_threshold)?;
    let created = AccountCreated {
        customer_id: cmd.customer_id,
        name: cmd.name.clone(),
        detail: cmd.detail.clone(),
        plan_type: cmd.plan_type,
        currency: cmd.currency.clone(),
        credit_limit: cmd.credit_limit,
        credit_limit_type: cmd.credit_limit_type,
        is_postpaid: cmd.is_postpaid,
        low_balance_threshold: cmd.low_balance_threshold,
        payment_type: cmd.payment_type.clone(),
        payment_method: cmd.payment_method.clone(),
    };
    let account = Account::created(id, &created, now);
    account.check_representable()?;
    let mut draft = Draft {
        events: vec![Recorded {
            version: account.version,
            event: Event::AccountCreated(created),
            balances: account.balances(now)?,
            account: account.view(now)?,
        }],
        account,
        now,
        expired_now: BTreeMap::new(),
    };
    if let Some(allowance) = cmd.plan_type.monthly_tokens() {
        draft.push(Event::TokensGranted(TokensGranted {
            amount: allowance,
            reference_type: ReferenceType::MonthlyAllowance,
            next_topup: Some(next_month_start(now)),
        }))?;
    }
    draft.finish_with_account()
}

/// Decides `command` against `account`. Housekeeping that time has made due
/// (expired holds, the monthly token reset) is decided first, so that every
/// decision sees the account as it stands at `ctx.now`.
pub fn execute(
    account: &Account,
    command: &Command,
    ctx: &Context<'_>,
) -> Result<Executed, Rejection> {
    let mut draft = Draft {
        account: account.clone(),
        events: Vec::new(),
        now: ctx.now,
        expired_now: BTreeMap::new(),
    };
    draft.housekeep()?;
    let outcome = match command {
        Command::AddBalance(c) => draft.add_balance(c)?,
        Command::SubtractBalance(c) => draft.subtract_balance(c)?,
        Command::Debit(c) => draft.debit(c, ctx)?,
        Command::Reserve(c) => draft.reserve(c, ctx)?,
        Command::Extend(c) => draft.extend(c, ctx)?,
        Command::Commit(c) => draft.commit(c, ctx)?,
        Command::Release { reservation_id } => draft.release(reservation_id, ctx)?,
        Command::Update(patch) => draft.update(patch)?,
        Command::Housekeep => Outcome::Account(draft.account.view(draft.now)?),
    };
    // A command that would leave an amount unrepresentable (now, or once
    // time has moved its holds) is refused: every reachable state stays
    // readable and repairable. Time-driven events never trip this, since
    // they keep an account within the bounds it checks.
    draft.account.check_representable()?;
    Ok(Executed {
        events: draft.events,
        account: draft.account,
        outcome,
    })
}

/// The account as it stands at `now`, with due housekeeping applied but not
/// recorded: what a strongly consistent read shows.
pub fn as_of(account: &Account, now: DateTime<Utc>) -> Result<Account, Rejection> {
    let mut draft = Draft {
        account: account.clone(),
        events: Vec::new(),
        now,
        expired_now: BTreeMap::new(),
    };
    draft.housekeep()?;
    Ok(draft.account)
}

/// The events decided so far and the account they leave.
struct Draft {
    account: Account,
    events: Vec<Recorded>,
    now: DateTime<Utc>,
    /// Holds this decision found expired, to tell "expired" from "unknown".
    expired_now: BTreeMap<String, Hold>,
}

impl Draft {
    fn push(&mut self, event: Event) -> Result<(), Rejection> {
        self.account.apply(&event, self.now)?;
        self.events.push(Recorded {
            version: self.account.version,
            event,
            balances: self.account.balances(self.now)?,
            account: self.account.view(self.now)?,
        });
        Ok(())
    }

    fn finish_with_account(self) -> Result<Executed, Rejection> {
        let outcome = Outcome::Account(self.account.view(self.now)?);
        Ok(Executed {
            events: self.events,
            account: self.account,
            outcome,
        })
    }

    fn available_credit(&self) -> Result<Micros, Rejection> {
        Ok(self.account.balances(self.now)?.available_credit)
    }

    fn available_tokens(&self) -> Result<Tokens, Rejection> {
        Ok(self
            .account
            .balances(self.now)?
            .available_token
            .at_least_zero())
    }

    fn housekeep(&mut self) -> Result<(), Rejection> {
        let expired: Vec<Hold> = self
            .account
            .holds
            .values()
            .filter(|h| !h.is_live(self.now))
            .cloned()
            .collect();
        for hold in expired {
            self.push(Event::ReservationExpired(HoldDropped {
                reservation_id: hold.reservation_id.clone(),
                released_token: hold.reserved_token,
                released_credit: hold.reserved_credit,
            }))?;
            self.expired_now.insert(hold.reservation_id.clone(), hold);
        }
        // Grants are kept in expiry order, so these are recorded in it.
        let expired: Vec<PromotionExpired> = self
            .account
            .promotions
            .iter()
            .filter_map(|p| {
                let at = p.expires_at.filter(|_| !p.is_live(self.now))?;
                Some(PromotionExpired {
                    grant: p.grant,
                    amount: p.remaining,
                    expired_at: at,
                })
            })
            .collect();
        for expiry in expired {
            self.push(Event::PromotionExpired(expiry))?;
        }
        let allowance = self.account.plan_type.monthly_tokens();
        if let (Some(allowance), Some(due)) = (allowance, self.account.tm_next_topup)
            && self.now >= due
        {
            let old = self.account.balance_token;
            if old.is_positive() {
                self.push(Event::TokensExpired(TokensExpired { amount: old }))?;
            }
            self.push(Event::TokensGranted(TokensGranted {
                amount: allowance,
                reference_type: ReferenceType::MonthlyAllowance,
                next_topup: Some(next_month_start(self.now)),
            }))?;
        }
        Ok(())
    }

    fn ensure_active(&self) -> Result<(), Rejection> {
        match self.account.status {
            AccountStatus::Active => Ok(()),
            AccountStatus::Frozen => Err(Rejection::AccountFrozen),
        }
    }

    /// Whether spending `credit` keeps within the limit: soft limits let
    /// everything through; hard ones keep the available credit at or above
    /// zero (a charge of zero credit always fits).
    fn fits(&self, credit: Micros, available: Micros) -> Result<bool, Rejection> {
        Ok(
            self.account.credit_limit_type == crate::catalog::CreditLimitType::Soft
                || credit.is_zero()
                || !available.checked_sub(credit)?.is_negative(),
        )
    }

    /// The price of `requested` units, or with `allow_partial` of the largest
    /// affordable whole number of them (at least one).
    fn affordable(
        &self,
        rate: Rate,
        requested: i64,
        allow_partial: bool,
    ) -> Result<Price, Rejection> {
        let metering = self.account.metering();
        let tokens = self.available_tokens()?;
        let credit = self.available_credit()?;
        let full = rate.price(requested, tokens, metering)?;
        if self.fits(full.credit, credit)? {
            return Ok(full);
        }
        if allow_partial {
            let units = rate.max_affordable_units(requested, tokens, credit, metering);
            if units >= 1 {
                return Ok(rate.price(units, tokens, metering)?);
            }
        }
        let required = if allow_partial {
            rate.price(1, tokens, metering)?.credit
        } else {
            full.credit
        };
        Err(Rejection::InsufficientBalance {
            required,
            available: credit,
        })
    }

    /// Records that usage took the available credit below zero.
    fn note_limit_crossing(&mut self, available_before: Micros) -> Result<(), Rejection> {
        let after = self.available_credit()?;
        if !available_before.is_negative() && after.is_negative() {
            self.push(Event::CreditLimitExceeded(CreditLimitExceeded {
                available_credit: after,
                credit_limit: self.account.credit_limit,
                credit_limit_type: self.account.credit_limit_type,
            }))?;
        }
        Ok(())
    }

    /// The live hold `id`, or why there is none.
    fn live_hold(&self, id: &str, ctx: &Context<'_>) -> Result<Hold, Rejection> {
        if let Some(hold) = self.account.holds.get(id) {
            return Ok(hold.clone());
        }
        if self.expired_now.contains_key(id) {
            return Err(Rejection::ReservationResolved {
                status: ReservationStatus::Expired,
            });
        }
        match ctx.resolved {
            Some(r) if r.hold.reservation_id == id && r.hold.account_id == self.account.id => {
                Err(Rejection::ReservationResolved { status: r.status })
            }
            _ => Err(Rejection::ReservationNotFound),
        }
    }

    fn add_balance(&mut self, c: &BalanceChange) -> Result<Outcome, Rejection> {
        validate_amounts(c)?;
        match c.bucket {
            Bucket::Paid if c.expires_at.is_some() => {
                return Err(Rejection::invalid(
                    "expires_at",
                    "only promotional credit expires",
                ));
            }
            Bucket::Paid => {}
            Bucket::Promotional => {
                validate_promotional(c)?;
                if c.expires_at.is_some_and(|t| t <= self.now) {
                    return Err(Rejection::invalid("expires_at", "must be in the future"));
                }
                if self.account.promotions.len() >= MAX_PROMOTIONS {
                    return Err(Rejection::TooManyPromotions {
                        limit: MAX_PROMOTIONS,
                    });
                }
            }
        }
        self.push(Event::BalanceAdded(moved(c, Vec::new())))?;
        Ok(Outcome::Account(self.account.view(self.now)?))
    }

    fn subtract_balance(&mut self, c: &BalanceChange) -> Result<Outcome, Rejection> {
        validate_amounts(c)?;
        if c.expires_at.is_some() {
            return Err(Rejection::invalid(
                "expires_at",
                "only credit being added expires",
            ));
        }
        match c.bucket {
            Bucket::Paid => self.subtract_paid(c),
            Bucket::Promotional => self.subtract_promotional(c),
        }
    }

    /// Paid credit leaves; promotional credit never does. With a hard limit
    /// it leaves only paid credit that no live hold will need, counting the
    /// promotional credit (which commits spend first) toward the holds.
    fn subtract_paid(&mut self, c: &BalanceChange) -> Result<Outcome, Rejection> {
        let tokens = self.available_tokens()?;
        if c.amount_token > tokens {
            return Err(Rejection::InsufficientTokens {
                required: c.amount_token,
                available: tokens,
            });
        }
        let before = self.available_credit()?;
        let paid = self.available_paid_credit()?;
        if !self.fits(c.amount_credit, paid)? {
            return Err(Rejection::InsufficientBalance {
                required: c.amount_credit,
                available: paid,
            });
        }
        self.push(Event::BalanceSubtracted(moved(c, Vec::new())))?;
        self.note_limit_crossing(before)?;
        Ok(Outcome::Account(self.account.view(self.now)?))
    }

    /// An admin removes promotional credit, from the grants in spending
    /// order; with a hard limit, not what live holds need.
    fn subtract_promotional(&mut self, c: &BalanceChange) -> Result<Outcome, Rejection> {
        validate_promotional(c)?;
        let promotional = self.account.promotional(self.now)?;
        if c.amount_credit > promotional {
            return Err(Rejection::InsufficientPromotional {
                required: c.amount_credit,
                available: promotional,
            });
        }
        let before = self.available_credit()?;
        if !self.fits(c.amount_credit, before)? {
            return Err(Rejection::InsufficientBalance {
                required: c.amount_credit,
                available: before,
            });
        }
        let spends = self.account.promotion_spends(c.amount_credit, self.now);
        self.push(Event::BalanceSubtracted(moved(c, spends)))?;
        self.note_limit_crossing(before)?;
        Ok(Outcome::Account(self.account.view(self.now)?))
    }

    /// The available credit without promotional credit, except what covers
    /// live holds: `balance + limit - max(0, reserved - promotional)`.
    fn available_paid_credit(&self) -> Result<Micros, Rejection> {
        let b = self.account.balances(self.now)?;
        let promotional = self.account.promotional(self.now)?;
        let held_from_paid = b.reserved_credit.checked_sub(promotional)?.at_least_zero();
        Ok(b.available_credit
            .checked_sub(promotional)?
            .checked_add(b.reserved_credit)?
            .checked_sub(held_from_paid)?)
    }

    /// The grants a usage charge of `credit` spends first.
    fn promotional_part(&self, credit: Micros) -> Vec<PromotionSpend> {
        self.account.promotion_spends(credit, self.now)
    }

    fn debit(&mut self, c: &Debit, ctx: &Context<'_>) -> Result<Outcome, Rejection> {
        let rate = ctx.rates.get(c.service_type);
        let units = c.usage.billable_units();
        self.ensure_active()?;
        let before = self.available_credit()?;
        let price = rate.price(units, self.available_tokens()?, self.account.metering())?;
        if !self.fits(price.credit, before)? {
            return Err(Rejection::InsufficientBalance {
                required: price.credit,
                available: before,
            });
        }
        if units > 0 {
            self.push(Event::Debited(Debited {
                service_type: c.service_type,
                reference_type: c.reference_type,
                reference_id: c.reference_id.clone(),
                billable_units: units,
                rate,
                charged_token: price.tokens,
                charged_credit: price.credit,
                promotional: self.promotional_part(price.credit),
            }))?;
            self.note_limit_crossing(before)?;
        }
        Ok(Outcome::Charge(ChargeOutcome {
            billable_units: units,
            charged_token: price.tokens,
            charged_credit: price.credit,
            rate,
            account: self.account.view(self.now)?,
        }))
    }

    fn reserve(&mut self, c: &Reserve, ctx: &Context<'_>) -> Result<Outcome, Rejection> {
        validate_reservation_id(&c.reservation_id)?;
        positive_units("requested_units", c.requested_units)?;
        let ttl_seconds = match c.ttl_seconds {
            0 => DEFAULT_TTL_SECONDS,
            t if (1..=MAX_TTL_SECONDS).contains(&t) => t,
            _ => {
                return Err(Rejection::invalid(
                    "ttl_seconds",
                    format!(
                        "must be between 1 and {MAX_TTL_SECONDS} (0 means {DEFAULT_TTL_SECONDS})"
                    ),
                ));
            }
        };
        let same_request = |h: &Hold| {
            h.service_type == c.service_type
                && h.requested_units == c.requested_units
                && h.allow_partial == c.allow_partial
                && h.ttl_seconds == ttl_seconds
        };
        // A retry of a reserve already made answers with the reservation as
        // it stands; the same id for anything else is a conflict.
        let version = self.account.version;
        let existing = self
            .account
            .holds
            .get(&c.reservation_id)
            .map(|h| (h, ReservationStatus::Active))
            .or_else(|| {
                self.expired_now
                    .get(&c.reservation_id)
                    .map(|h| (h, ReservationStatus::Expired))
            })
            .or_else(|| ctx.resolved.map(|r| (&r.hold, r.status)));
        if let Some((hold, status)) = existing {
            return if hold.account_id == self.account.id && same_request(hold) {
                Ok(Outcome::Reservation(hold.view(status, version)))
            } else {
                Err(Rejection::ReservationIdReused)
            };
        }
        self.ensure_active()?;
        let rate = ctx.rates.get(c.service_type);
        let price = self.affordable(rate, c.requested_units, c.allow_partial)?;
        let before = self.available_credit()?;
        self.push(Event::Reserved(Reserved {
            reservation_id: c.reservation_id.clone(),
            service_type: c.service_type,
            rate,
            requested_units: c.requested_units,
            allow_partial: c.allow_partial,
            ttl_seconds,
            granted_units: price.units,
            reserved_token: price.tokens,
            reserved_credit: price.credit,
            expires_at: self.now + Duration::seconds(ttl_seconds),
        }))?;
        self.note_limit_crossing(before)?;
        self.live_reservation(&c.reservation_id)
    }

    fn live_reservation(&self, id: &str) -> Result<Outcome, Rejection> {
        let hold = self
            .account
            .holds
            .get(id)
            .ok_or(Rejection::ReservationNotFound)?;
        Ok(Outcome::Reservation(
            hold.view(ReservationStatus::Active, self.account.version),
        ))
    }

    fn extend(&mut self, c: &Extend, ctx: &Context<'_>) -> Result<Outcome, Rejection> {
        positive_units("additional_units", c.additional_units)?;
        let hold = self.live_hold(&c.reservation_id, ctx)?;
        self.ensure_active()?;
        let price = self.affordable(hold.rate, c.additional_units, c.allow_partial)?;
        let before = self.available_credit()?;
        let refreshed = self.now + Duration::seconds(hold.ttl_seconds);
        self.push(Event::ReservationExtended(ReservationExtended {
            reservation_id: hold.reservation_id.clone(),
            requested_units: c.additional_units,
            granted_units: price.units,
            reserved_token: price.tokens,
            reserved_credit: price.credit,
            expires_at: hold.expires_at.max(refreshed),
        }))?;
        self.note_limit_crossing(before)?;
        self.live_reservation(&c.reservation_id)
    }

    fn commit(&mut self, c: &Commit, ctx: &Context<'_>) -> Result<Outcome, Rejection> {
        let hold = match self.live_hold(&c.reservation_id, ctx) {
            Ok(hold) => hold,
            Err(rejection) => {
                // A reservation resolves at most once: a repeated commit gets
                // the first result and charges nothing more.
                if let Some(first) = ctx.resolved.and_then(|r| r.commit.as_ref())
                    && first.reservation_id == c.reservation_id
                    && !self.expired_now.contains_key(&c.reservation_id)
                {
                    return Ok(Outcome::Commit(first.clone()));
                }
                return Err(rejection);
            }
        };
        let usage = Usage::for_service(
            hold.service_type,
            c.used_duration_ms,
            c.used_quantity,
            "used_duration_ms",
            "used_quantity",
        )
        .map_err(|e| Rejection::invalid("usage", e.to_string()))?;
        let units = usage.billable_units();
        // The hold's own tokens are available to its commit.
        let tokens = self
            .account
            .balances(self.now)?
            .available_token
            .checked_add(hold.reserved_token)?
            .at_least_zero();
        let price = hold.rate.price(units, tokens, self.account.metering())?;
        let before = self.available_credit()?.checked_add(hold.reserved_credit)?;
        let committed = Committed {
            reservation_id: hold.reservation_id.clone(),
            service_type: hold.service_type,
            reference_type: hold.service_type.reference_type(),
            rate: hold.rate,
            billable_units: units,
            charged_token: price.tokens,
            charged_credit: price.credit,
            released_token: hold
                .reserved_token
                .checked_sub(price.tokens)?
                .at_least_zero(),
            released_credit: hold
                .reserved_credit
                .checked_sub(price.credit)?
                .at_least_zero(),
            promotional: self.promotional_part(price.credit),
        };
        self.push(Event::Committed(committed.clone()))?;
        self.note_limit_crossing(before)?;
        Ok(Outcome::Commit(CommitOutcome {
            reservation_id: committed.reservation_id,
            billable_units: units,
            charged_token: committed.charged_token,
            charged_credit: committed.charged_credit,
            released_token: committed.released_token,
            released_credit: committed.released_credit,
            account: self.account.view(self.now)?,
        }))
    }

    fn release(&mut self, id: &str, ctx: &Context<'_>) -> Result<Outcome, Rejection> {
        let hold = match self.live_hold(id, ctx) {
            Ok(hold) => hold,
            Err(rejection) => {
                // Releasing again is a retry: it answers as the first did.
                return match ctx.resolved {
                    Some(r)
                        if r.status == ReservationStatus::Released
                            && r.hold.reservation_id == id
                            && r.hold.account_id == self.account.id =>
                    {
                        Ok(Outcome::Reservation(
                            r.hold.view(r.status, r.account_version),
                        ))
                    }
                    _ => Err(rejection),
                };
            }
        };
        self.push(Event::Released(HoldDropped {
            reservation_id: hold.reservation_id.clone(),
            released_token: hold.reserved_token,
            released_credit: hold.reserved_credit,
        }))?;
        Ok(Outcome::Reservation(
            hold.view(ReservationStatus::Released, self.account.version),
        ))
    }

    fn update(&mut self, patch: &AccountPatch) -> Result<Outcome, Rejection> {
        if let Some(limit) = patch.credit_limit {
            non_negative("credit_limit", limit)?;
        }
        if let Some(threshold) = patch.low_balance_threshold {
            non_negative("low_balance_threshold", threshold)?;
        }
        let a = &self.account;
        fn changed<T: PartialEq + Clone>(new: &Option<T>, old: &T) -> Option<T> {
            new.as_ref().filter(|v| *v != old).cloned()
        }
        let update = AccountUpdated {
            name: changed(&patch.name, &a.name),
            detail: changed(&patch.detail, &a.detail),
            plan_status: changed(&patch.plan_status, &a.plan_status),
            status: changed(&patch.status, &a.status),
            credit_limit: changed(&patch.credit_limit, &a.credit_limit),
            credit_limit_type: changed(&patch.credit_limit_type, &a.credit_limit_type),
            is_postpaid: changed(&patch.is_postpaid, &a.is_postpaid),
            low_balance_threshold: changed(&patch.low_balance_threshold, &a.low_balance_threshold),
            payment_type: changed(&patch.payment_type, &a.payment_type),
            payment_method: changed(&patch.payment_method, &a.payment_method),
        };
        if let Some(to) = changed(&patch.plan_type, &a.plan_type) {
            self.change_plan(to)?;
        }
        if update != AccountUpdated::default() {
            self.push(Event::AccountUpdated(update))?;
        }
        Ok(Outcome::Account(self.account.view(self.now)?))
    }

    /// A new plan's allowance applies from the next monthly reset; moving
    /// onto a metered plan from an unmetered one grants it at once.
    fn change_plan(&mut self, to: crate::catalog::PlanType) -> Result<(), Rejection> {
        let from = self.account.plan_type;
        let was_metered = from.monthly_tokens().is_some();
        let next_topup = to.monthly_tokens().map(|_| {
            self.account
                .tm_next_topup
                .unwrap_or_else(|| next_month_start(self.now))
        });
        self.push(Event::PlanChanged(PlanChanged {
            from,
            to,
            next_topup,
        }))?;
        if let (false, Some(allowance)) = (was_metered, to.monthly_tokens()) {
            self.push(Event::TokensGranted(TokensGranted {
                amount: allowance,
                reference_type: ReferenceType::MonthlyAllowance,
                next_topup,
            }))?;
        }
        Ok(())
    }
}

fn moved(c: &BalanceChange, promotions: Vec<PromotionSpend>) -> BalanceMoved {
    BalanceMoved {
        amount_credit: c.amount_credit,
        amount_token: c.amount_token,
        reference_type: c.reference_type,
        reference_id: c.reference_id.clone(),
        note: c.note.clone(),
        bucket: c.bucket,
        expires_at: c.expires_at,
        promotions,
    }
}

/// Promotional credit is credit only: no tokens, and some credit.
fn validate_promotional(c: &BalanceChange) -> Result<(), Rejection> {
    if !c.amount_token.is_zero() {
        return Err(Rejection::invalid(
            "amount_token",
            "must be 0 for promotional credit (tokens have no promotional bucket)",
        ));
    }
    if !c.amount_credit.is_positive() {
        return Err(Rejection::invalid(
            "amount_credit",
            "must be positive for promotional credit",
        ));
    }
    Ok(())
}

fn validate_amounts(c: &BalanceChange) -> Result<(), Rejection> {
    non_negative("amount_credit", c.amount_credit)?;
    if c.amount_token.is_negative() {
        return Err(Rejection::invalid("amount_token", "must not be negative"));
    }
    if c.amount_credit.is_zero() && c.amount_token.is_zero() {
        return Err(Rejection::invalid(
            "amount_credit",
            "amount_credit or amount_token must be positive",
        ));
    }
    Ok(())
}

fn non_negative(field: &'static str, amount: Micros) -> Result<(), Rejection> {
    if amount.is_negative() {
        return Err(Rejection::invalid(field, "must not be negative"));
    }
    Ok(())
}

fn positive_units(field: &'static str, units: i64) -> Result<(), Rejection> {
    if units <= 0 {
        return Err(Rejection::invalid(field, "must be positive"));
    }
    Ok(())
}

/// A reservation id is the caller's call id: 1 to 128 characters.
pub fn validate_reservation_id(id: &str) -> Result<(), Rejection> {
    if id.is_empty() || id.chars().count() > MAX_RESERVATION_ID_LEN {
        return Err(Rejection::invalid(
            "reservation_id",
            format!("must be 1 to {MAX_RESERVATION_ID_LEN} characters"),
        ));
    }
    Ok(())
}

/// What usage would cost, and, against an account, whether it can pay now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quote {
    pub rate: Rate,
    pub price: Price,
    /// `None` without an account.
    pub affordable: Option<bool>,
    /// `None` without an account; `i64::MAX` when nothing limits it.
    pub max_affordable_units: Option<i64>,
}

/// Prices `usage` of `service`: without an account, the worst case (every
/// unit on credit); with one, the real token/credit split for its balance at
/// `now`, by the same rule a reserve applies.
pub fn quote(
    rates: &crate::rates::RateTable,
    service: crate::catalog::ServiceType,
    usage: Usage,
    account: Option<&Account>,
    now: DateTime<Utc>,
) -> Result<Quote, Rejection> {
    let rate = rates.get(service);
    let units = usage.billable_units();
    let Some(account) = account else {
        let worst = rate.price(units, Tokens::ZERO, crate::rates::TokenMetering::Metered)?;
        return Ok(Quote {
            rate,
            price: worst,
            affordable: None,
            max_affordable_units: None,
        });
    };
    let draft = Draft {
        account: as_of(account, now)?,
        events: Vec::new(),
        now,
        expired_now: BTreeMap::new(),
    };
    let metering = draft.account.metering();
    let tokens = draft.available_tokens()?;
    let credit = draft.available_credit()?;
    let price = rate.price(units, tokens, metering)?;
    let frozen = draft.account.status == AccountStatus::Frozen;
    let soft = draft.account.credit_limit_type == crate::catalog::CreditLimitType::Soft;
    let max = if frozen {
        0
    } else if soft {
        i64::MAX
    } else {
        rate.max_affordable_units(i64::MAX, tokens, credit, metering)
    };
    Ok(Quote {
        rate,
        price,
        affordable: Some(!frozen && draft.fits(price.credit, credit)?),
        max_affordable_units: Some(max),
    })
}

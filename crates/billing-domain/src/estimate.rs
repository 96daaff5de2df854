//! Prices before the fact: a basket of usage against an account's tokens
//! (`estimate`), and a month's usage against every metered plan
//! (`compare_plans`). Both use the rate table and the token-first rule that
//! charges use, so an estimate is what billing would charge, not a formula
//! of its own.

use crate::account::AccountView;
use crate::catalog::{AccountStatus, CreditLimitType, PlanType, ServiceType};
use crate::money::{Micros, Overflow, Tokens};
use crate::rates::{ChargeMode, Rate, RateTable, TokenMetering, Usage};

/// `count` items of one service, each measured by `usage`. Every item is
/// rounded to whole units on its own, as its charge would be: 50 calls of
/// 2 min 15 s are 150 minutes, not 113.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsageLine {
    pub service: ServiceType,
    pub count: i64,
    /// One item's usage.
    pub usage: Usage,
}

/// The tokens a basket may draw on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wallet {
    /// Available tokens (what holds have not taken).
    pub tokens: Tokens,
    pub metering: TokenMetering,
}

impl Wallet {
    /// No tokens: every unit on credit (an estimate without an account,
    /// like `Rate` without one).
    pub const EMPTY: Self = Self {
        tokens: Tokens::ZERO,
        metering: TokenMetering::Metered,
    };

    /// What `view`'s account can draw on now.
    pub fn of(view: &AccountView) -> Self {
        Self {
            tokens: view.available_token.at_least_zero(),
            metering: match view.plan_type.monthly_tokens() {
                Some(_) => TokenMetering::Metered,
                None => TokenMetering::Unmetered,
            },
        }
    }
}

/// One line's price.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineEstimate {
    /// `count` times one item's units.
    pub billable_units: i64,
    pub tokens: Tokens,
    pub credit: Micros,
    /// The rate the line was priced at.
    pub rate: Rate,
}

/// A basket's price, line by line and in total.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Estimate {
    /// In the order of the lines given.
    pub lines: Vec<LineEstimate>,
    pub total_tokens: Tokens,
    pub total_credit: Micros,
}

/// Prices `lines` in the order given, item by item, as charges arriving in
/// that order would be: token-first items take whole units from the tokens
/// left while they cover a unit, the rest goes on credit.
pub fn estimate(
    rates: &RateTable,
    lines: &[UsageLine],
    wallet: Wallet,
) -> Result<Estimate, Overflow> {
    let mut tokens = wallet.tokens.at_least_zero();
    let lines = lines
        .iter()
        .map(|line| price_line(rates.get(line.service), line, &mut tokens, wallet.metering))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Estimate {
        total_tokens: Tokens::checked_sum(lines.iter().map(|l| l.tokens))?,
        total_credit: Micros::checked_sum(lines.iter().map(|l| l.credit))?,
        lines,
    })
}

/// Whether the account of `view` can pay `credit` now, by the rule a debit
/// of it would meet: it is not frozen, and a hard limit leaves room for it
/// (a soft limit lets anything through).
pub fn can_pay(view: &AccountView, credit: Micros) -> Result<bool, Overflow> {
    Ok(view.status != AccountStatus::Frozen
        && (view.credit_limit_type == CreditLimitType::Soft
            || credit.is_zero()
            || !view.available_credit.checked_sub(credit)?.is_negative()))
}

/// One line priced against `tokens`, which it draws down. Equal to pricing
/// its items one by one with [`Rate::price`], in closed form: the items a
/// token balance covers whole, then at most one item partly, then none.
fn price_line(
    rate: Rate,
    line: &UsageLine,
    tokens: &mut Tokens,
    metering: TokenMetering,
) -> Result<LineEstimate, Overflow> {
    let per_item = line.usage.billable_units();
    let units = line.count.checked_mul(per_item).ok_or(Overflow)?;
    let priced = |covered: i64| -> Result<LineEstimate, Overflow> {
        Ok(LineEstimate {
            billable_units: units,
            tokens: rate.tokens_per_unit.times(covered)?,
            credit: rate.credit_per_unit.times(units - covered)?,
            rate,
        })
    };
    match (rate.mode, metering) {
        (ChargeMode::Free, _) | (ChargeMode::TokenFirst, TokenMetering::Unmetered) => {
            Ok(LineEstimate {
                billable_units: units,
                tokens: Tokens::ZERO,
                credit: Micros::ZERO,
                rate,
            })
        }
        (ChargeMode::CreditOnly, _) => priced(0),
        (ChargeMode::TokenFirst, TokenMetering::Metered) => {
            let covered = token_covered_units(
                line.count,
                per_item,
                rate.tokens_per_unit.get(),
                tokens.get(),
            );
            let estimate = priced(covered)?;
            *tokens = tokens.checked_sub(estimate.tokens)?;
            Ok(estimate)
        }
    }
}

/// How many of `count` items of `per_item` units each `tokens` pay for, at
/// `per_unit` tokens a unit, the items arriving one after another.
fn token_covered_units(count: i64, per_item: i64, per_unit: i64, tokens: i64) -> i64 {
    if count <= 0 || per_item <= 0 || per_unit <= 0 || tokens < per_unit {
        return 0;
    }
    // An item whose tokens do not fit in an i64 is never covered whole.
    let whole = per_item
        .checked_mul(per_unit)
        .map_or(0, |item_tokens| (tokens / item_tokens).min(count));
    let left = tokens - whole * per_item * per_unit;
    let partly = if whole < count {
        // Fewer tokens than a whole item: the next item takes what they
        // cover, and the items after it find too few for a unit.
        (left / per_unit).min(per_item)
    } else {
        0
    };
    whole * per_item + partly
}

/// One metered plan against a month's usage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanEstimate {
    pub plan: PlanType,
    pub monthly_tokens: Tokens,
    /// Tokens that would cover all of the token-first usage.
    pub tokens_needed: Tokens,
    /// Credit for token-first usage, when every token goes where it saves
    /// the most credit.
    pub overflow_best: Micros,
    /// The same when every token goes where it saves the least.
    pub overflow_worst: Micros,
}

/// A month's usage against every metered plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanComparison {
    /// Smallest allowance first.
    pub plans: Vec<PlanEstimate>,
    /// The least worst-case overflow; on a tie, the smaller allowance.
    pub cheapest: PlanType,
    /// Credit for credit-only usage: the same on every plan.
    pub credit_only: Micros,
}

/// Compares the metered plans for a month of `usage`. Tokens go to
/// whichever usage arrives first, so the overflow is a range: the best case
/// prices the lines in the order that spends every token where it saves the
/// most credit per token, the worst case in the reverse order. Both are
/// real arrival orders priced by the token-first rule with whole units, so
/// each is an amount billing would charge. (The unlimited plan meters no
/// tokens: it has no overflow, and its price is not billing's to compare.)
pub fn compare_plans(rates: &RateTable, usage: &[UsageLine]) -> Result<PlanComparison, Overflow> {
    let token_first: Vec<UsageLine> = usage
        .iter()
        .filter(|l| rates.get(l.service).mode == ChargeMode::TokenFirst)
        .copied()
        .collect();
    let others: Vec<UsageLine> = usage
        .iter()
        .filter(|l| rates.get(l.service).mode != ChargeMode::TokenFirst)
        .copied()
        .collect();
    let credit_only = estimate(rates, &others, Wallet::EMPTY)?.total_credit;
    // Tokens enough for everything: the tokens every unit would take.
    let unbounded = Wallet {
        tokens: Tokens(i64::MAX),
        metering: TokenMetering::Metered,
    };
    let tokens_needed = estimate(rates, &token_first, unbounded)?.total_tokens;

    let mut plans = Vec::new();
    for plan in PlanType::ALL {
        let Some(allowance) = plan.monthly_tokens() else {
            continue;
        };
        let (best, worst) = overflow_range(rates, &token_first, allowance)?;
        plans.push(PlanEstimate {
            plan: *plan,
            monthly_tokens: allowance,
            tokens_needed,
            overflow_best: best,
            overflow_worst: worst,
        });
    }
    plans.sort_by_key(|p| p.monthly_tokens);
    let cheapest = plans
        .iter()
        .min_by_key(|p| (p.overflow_worst, p.monthly_tokens))
        .map_or(PlanType::Free, |p| p.plan);
    Ok(PlanComparison {
        plans,
        cheapest,
        credit_only,
    })
}

/// The credit `usage` leaves after `allowance` tokens, best case and worst
/// case (see [`compare_plans`]). Lines that are not token-first add the
/// same to both.
pub fn overflow_range(
    rates: &RateTable,
    usage: &[UsageLine],
    allowance: Tokens,
) -> Result<(Micros, Micros), Overflow> {
    let wallet = Wallet {
        tokens: allowance,
        metering: TokenMetering::Metered,
    };
    let best = estimate(rates, &ordered(rates, usage, Saving::MostFirst), wallet)?;
    let worst = estimate(rates, &ordered(rates, usage, Saving::LeastFirst), wallet)?;
    Ok((best.total_credit, worst.total_credit))
}

/// Which lines take tokens first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Saving {
    MostFirst,
    LeastFirst,
}

/// `lines` in the order `saving` asks for, by the credit one token saves
/// (credit per unit over tokens per unit, compared exactly). Among equals,
/// the best case takes the service with fewer tokens a unit first (it
/// strands fewer tokens), the worst case the one with more.
fn ordered(rates: &RateTable, lines: &[UsageLine], saving: Saving) -> Vec<UsageLine> {
    let mut sorted = lines.to_vec();
    // Credit one token saves, as a fraction with a positive denominator
    // (the table refuses a token-first rate without tokens per unit). Lines
    // that take no tokens save nothing; where they go changes nothing.
    let saving_of = |line: &UsageLine| {
        let rate = rates.get(line.service);
        match rate.mode {
            ChargeMode::TokenFirst if rate.tokens_per_unit.is_positive() => (
                i128::from(rate.credit_per_unit.get()),
                i128::from(rate.tokens_per_unit.get()),
            ),
            _ => (0, 1),
        }
    };
    sorted.sort_by(|a, b| {
        let ((ca, ta), (cb, tb)) = (saving_of(a), saving_of(b));
        let by_saving = (ca * tb).cmp(&(cb * ta));
        match saving {
            Saving::MostFirst => by_saving.reverse().then(ta.cmp(&tb)),
            Saving::LeastFirst => by_saving.then(tb.cmp(&ta)),
        }
    });
    sorted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(service: ServiceType, count: i64, usage: Usage) -> UsageLine {
        UsageLine {
            service,
            count,
            usage,
        }
    }

    fn minutes(m: i64) -> Usage {
        Usage::DurationMs(m * 60_000)
    }

    #[test]
    fn the_seed_campaign_costs_one_plus_two_dollars() {
        let basket = [
            line(ServiceType::CallPstnOutgoing, 50, minutes(2)),
            line(ServiceType::Sms, 200, Usage::Quantity(1)),
        ];
        let e = estimate(&RateTable::default(), &basket, Wallet::EMPTY).unwrap();
        assert_eq!(e.lines[0].billable_units, 100);
        assert_eq!(e.lines[0].credit, Micros(1_000_000));
        assert_eq!(e.lines[1].credit, Micros(2_000_000));
        assert_eq!(e.total_credit, Micros(3_000_000));
        assert_eq!(e.total_tokens, Tokens::ZERO);
    }

    #[test]
    fn each_item_is_rounded_on_its_own() {
        let basket = [line(
            ServiceType::CallPstnOutgoing,
            50,
            Usage::DurationMs(135_000),
        )];
        let e = estimate(&RateTable::default(), &basket, Wallet::EMPTY).unwrap();
        assert_eq!(e.lines[0].billable_units, 150);
        assert_eq!(e.total_credit, Micros(1_500_000));
    }

    #[test]
    fn tokens_cover_whole_items_then_part_of_one() {
        // 4 TTS calls of 3 minutes with 20 tokens: two calls whole (18
        // tokens), the third finds 2 tokens, less than a unit.
        let basket = [line(ServiceType::Tts, 4, minutes(3))];
        let wallet = Wallet {
            tokens: Tokens(20),
            metering: TokenMetering::Metered,
        };
        let e = estimate(&RateTable::default(), &basket, wallet).unwrap();
        assert_eq!(e.total_tokens, Tokens(18));
        assert_eq!(e.total_credit, Micros(6 * 30_000));
        // 5 VN calls of 5 minutes with 12 tokens: two whole, 2 minutes of
        // the third.
        let basket = [line(ServiceType::CallVn, 5, minutes(5))];
        let wallet = Wallet {
            tokens: Tokens(12),
            ..wallet
        };
        let e = estimate(&RateTable::default(), &basket, wallet).unwrap();
        assert_eq!(e.total_tokens, Tokens(12));
        assert_eq!(e.total_credit, Micros(13 * 1_000));
    }

    #[test]
    fn an_unmetered_plan_covers_token_first_lines_only() {
        let basket = [
            line(ServiceType::Tts, 10, minutes(3)),
            line(ServiceType::Sms, 1, Usage::Quantity(3)),
        ];
        let wallet = Wallet {
            tokens: Tokens::ZERO,
            metering: TokenMetering::Unmetered,
        };
        let e = estimate(&RateTable::default(), &basket, wallet).unwrap();
        assert_eq!(
            (e.total_tokens, e.total_credit),
            (Tokens(0), Micros(30_000))
        );
    }

    #[test]
    fn an_amount_past_i64_is_an_overflow_not_a_wrapped_number() {
        let basket = [line(
            ServiceType::Number,
            1_000_000_000,
            Usage::Quantity(1_000_000_000),
        )];
        assert_eq!(
            estimate(&RateTable::default(), &basket, Wallet::EMPTY),
            Err(Overflow)
        );
    }

    /// The tutorial's month: 500 VN minutes and 100 TTS minutes.
    fn tutorial_month() -> [UsageLine; 2] {
        [
            line(ServiceType::CallVn, 500, minutes(1)),
            line(ServiceType::Tts, 100, minutes(1)),
        ]
    }

    /// The tutorial's `recommend_plan`, which splits the overflow tokens in
    /// proportion to each service's share, in integers as its `int()` does.
    fn proportional_overflow(allowance: i64, vn_minutes: i64, tts_minutes: i64) -> i64 {
        let (vn_tokens, tts_tokens) = (vn_minutes, tts_minutes * 3);
        let total = vn_tokens + tts_tokens;
        if total <= allowance {
            return 0;
        }
        let overflow = total - allowance;
        let vn = overflow * vn_tokens / total;
        let tts = overflow * tts_tokens / total / 3;
        vn * 1_000 + tts * 30_000
    }

    #[test]
    fn the_tutorial_month_on_the_free_plan_against_its_proportional_formula() {
        let c = compare_plans(&RateTable::default(), &tutorial_month()).unwrap();
        let free = c.plans[0];
        assert_eq!(free.plan, PlanType::Free);
        assert_eq!(free.monthly_tokens, Tokens(100));
        assert_eq!(free.tokens_needed, Tokens(800));
        // Best: 33 TTS minutes (99 tokens) and 1 VN minute from tokens.
        assert_eq!(free.overflow_best, Micros(2_509_000));
        // Worst: all 100 tokens on VN minutes, worth a tenth as much each.
        assert_eq!(free.overflow_worst, Micros(3_400_000));
        // The tutorial's proportional split is neither: no arrival order
        // charges it.
        assert_eq!(proportional_overflow(100, 500, 100), 3_047_000);
        assert!(free.overflow_best.get() < 3_047_000 && 3_047_000 < free.overflow_worst.get());
    }

    #[test]
    fn the_cheapest_plan_is_the_least_worst_case_and_the_smaller_on_a_tie() {
        let c = compare_plans(&RateTable::default(), &tutorial_month()).unwrap();
        let names: Vec<_> = c.plans.iter().map(|p| p.plan).collect();
        assert_eq!(
            names,
            [PlanType::Free, PlanType::Basic, PlanType::Professional]
        );
        // 800 tokens fit in basic already: no overflow there or above.
        assert_eq!(c.plans[1].overflow_worst, Micros::ZERO);
        assert_eq!(c.plans[2].overflow_worst, Micros::ZERO);
        assert_eq!(c.cheapest, PlanType::Basic);

        let nothing = compare_plans(&RateTable::default(), &[]).unwrap();
        assert_eq!(nothing.cheapest, PlanType::Free);
    }

    #[test]
    fn credit_only_usage_is_apart_from_the_overflow() {
        let mut usage = tutorial_month().to_vec();
        usage.push(line(ServiceType::Sms, 200, Usage::Quantity(1)));
        let c = compare_plans(&RateTable::default(), &usage).unwrap();
        assert_eq!(c.credit_only, Micros(2_000_000));
        assert_eq!(c.plans[0].overflow_best, Micros(2_509_000));
    }
}

//! Property tests of estimates against the rule they stand for: a basket's
//! estimate equals charging its items one by one, and a plan's overflow
//! range is the cheapest and dearest of every order the month's items could
//! arrive in.

use billing_domain::estimate::{UsageLine, Wallet, estimate, overflow_range};
use billing_domain::*;
use proptest::prelude::*;

fn usage_for(service: ServiceType, measure: i64) -> Usage {
    if service.unit() == Unit::Minute {
        // Whole and broken minutes, and under a second.
        Usage::DurationMs(measure * 25_000)
    } else {
        Usage::Quantity(measure)
    }
}

fn line(services: Vec<ServiceType>) -> impl Strategy<Value = UsageLine> {
    (prop::sample::select(services), 0..5i64, 0..9i64).prop_map(|(service, count, measure)| {
        UsageLine {
            service,
            count,
            usage: usage_for(service, measure),
        }
    })
}

/// The items of `lines`, one per charge, in order.
fn items(lines: &[UsageLine]) -> Vec<(ServiceType, i64)> {
    lines
        .iter()
        .flat_map(|l| (0..l.count).map(move |_| (l.service, l.usage.billable_units())))
        .collect()
}

/// Charges `items` one after another with `Rate::price`, as billing would:
/// the tokens and credit they take.
fn charge_one_by_one(
    rates: &RateTable,
    items: &[(ServiceType, i64)],
    mut tokens: Tokens,
    metering: TokenMetering,
) -> (Tokens, Micros) {
    let (mut spent, mut credit) = (Tokens::ZERO, Micros::ZERO);
    for (service, units) in items {
        let price = rates.get(*service).price(*units, tokens, metering).unwrap();
        tokens = tokens.checked_sub(price.tokens).unwrap();
        spent = spent.checked_add(price.tokens).unwrap();
        credit = credit.checked_add(price.credit).unwrap();
    }
    (spent, credit)
}

/// Every order of `items` (duplicates included: the lists are short).
fn orders(items: &[(ServiceType, i64)]) -> Vec<Vec<(ServiceType, i64)>> {
    if items.is_empty() {
        return vec![Vec::new()];
    }
    let mut all = Vec::new();
    for i in 0..items.len() {
        let mut rest = items.to_vec();
        let first = rest.remove(i);
        for mut order in orders(&rest) {
            order.insert(0, first);
            all.push(order);
        }
    }
    all
}

proptest! {
    #[test]
    fn an_estimate_is_its_items_charged_one_by_one(
        lines in prop::collection::vec(line(ServiceType::ALL.to_vec()), 0..5),
        tokens in 0..60i64,
        unmetered in any::<bool>(),
    ) {
        let rates = RateTable::default();
        let metering = if unmetered { TokenMetering::Unmetered } else { TokenMetering::Metered };
        let wallet = Wallet { tokens: Tokens(tokens), metering };
        let e = estimate(&rates, &lines, wallet).unwrap();
        let expected = charge_one_by_one(&rates, &items(&lines), Tokens(tokens), metering);
        prop_assert_eq!((e.total_tokens, e.total_credit), expected);
        prop_assert!(e.total_tokens.get() <= tokens);
        for (l, got) in lines.iter().zip(&e.lines) {
            prop_assert_eq!(got.billable_units, l.count * l.usage.billable_units());
        }
    }

    #[test]
    fn the_overflow_range_is_the_cheapest_and_dearest_arrival_order(
        lines in prop::collection::vec(
            line(vec![ServiceType::CallVn, ServiceType::Tts, ServiceType::Recording, ServiceType::Sms]),
            0..4,
        ).prop_filter("at most 6 items", |lines| lines.iter().map(|l| l.count).sum::<i64>() <= 6),
        allowance in 0..40i64,
    ) {
        let rates = RateTable::default();
        let (best, worst) = overflow_range(&rates, &lines, Tokens(allowance)).unwrap();
        let credits: Vec<Micros> = orders(&items(&lines))
            .iter()
            .map(|order| charge_one_by_one(&rates, order, Tokens(allowance), TokenMetering::Metered).1)
            .collect();
        prop_assert_eq!(Some(best), credits.iter().copied().min());
        prop_assert_eq!(Some(worst), credits.iter().copied().max());
    }
}

//! Every state that any sequence of accepted commands reaches, extreme
//! amounts and limits included, can be read at any later time, accepts the
//! events time brings (expiry, the monthly reset), and can be brought back to
//! a normal state by an admin.

use billing_domain::*;
use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use uuid::Uuid;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 20, 0, 0, 0).unwrap()
}

/// Amounts from the ordinary to the largest an int64 holds.
fn amount() -> impl Strategy<Value = i64> {
    prop_oneof![
        2 => 0..1_000_000i64,
        1 => Just(i64::MAX),
        1 => Just(i64::MAX / 2),
        1 => Just(1i64 << 62),
        1 => Just(i64::MAX / 3),
        1 => 0..i64::MAX,
    ]
}

/// A new free-plan account with a hard credit limit of `limit` micros.
fn new_account(limit: i64, postpaid: bool) -> Account {
    let cmd = CreateAccount {
        customer_id: Uuid::nil(),
        name: String::new(),
        detail: String::new(),
        plan_type: PlanType::Free,
        currency: Currency::usd(),
        credit_limit: Micros(limit),
        credit_limit_type: CreditLimitType::Hard,
        is_postpaid: postpaid,
        low_balance_threshold: Micros::ZERO,
        payment_type: String::new(),
        payment_method: String::new(),
    };
    create(Uuid::from_u128(1), &cmd, t0()).unwrap().account
}

fn reservation_id() -> impl Strategy<Value = String> {
    (0..2u8).prop_map(|n| format!("call-{n}"))
}

fn change(a: i64, t: i64) -> BalanceChange {
    BalanceChange {
        amount_credit: Micros(a),
        amount_token: Tokens(t),
        reference_type: ReferenceType::ManualAdjustment,
        reference_id: String::new(),
        note: String::new(),
        bucket: Default::default(),
        expires_at: None,
    }
}

fn command() -> impl Strategy<Value = Command> {
    let service = prop::sample::select(ServiceType::ALL.to_vec());
    prop_oneof![
        (amount(), amount()).prop_map(|(a, t)| Command::AddBalance(change(a, t))),
        (amount(), amount()).prop_map(|(a, t)| Command::SubtractBalance(change(a, t))),
        (
            amount(),
            any::<bool>(),
            any::<bool>(),
            prop::sample::select(PlanType::ALL.to_vec())
        )
            .prop_map(
                |(limit, postpaid, soft, plan)| Command::Update(AccountPatch {
                    credit_limit: Some(Micros(limit)),
                    is_postpaid: Some(postpaid),
                    credit_limit_type: Some(if soft {
                        CreditLimitType::Soft
                    } else {
                        CreditLimitType::Hard
                    }),
                    plan_type: Some(plan),
                    ..Default::default()
                })
            ),
        (
            reservation_id(),
            service.clone(),
            amount(),
            any::<bool>(),
            1..600i64
        )
            .prop_map(|(id, s, units, partial, ttl)| Command::Reserve(Reserve {
                reservation_id: id,
                service_type: s,
                requested_units: units.max(1),
                allow_partial: partial,
                ttl_seconds: ttl,
            })),
        (reservation_id(), amount(), any::<bool>()).prop_map(|(id, units, partial)| {
            Command::Extend(Extend {
                reservation_id: id,
                additional_units: units.max(1),
                allow_partial: partial,
            })
        }),
        (reservation_id(), amount(), amount()).prop_map(|(id, ms, q)| Command::Commit(Commit {
            reservation_id: id,
            used_duration_ms: ms,
            used_quantity: q,
        })),
        (service, amount()).prop_map(|(s, n)| {
            let usage = if s.unit() == Unit::Minute {
                Usage::DurationMs(n)
            } else {
                Usage::Quantity(n)
            };
            Command::Debit(Debit {
                service_type: s,
                usage,
                reference_type: s.reference_type(),
                reference_id: String::new(),
            })
        }),
        reservation_id().prop_map(|id| Command::Release { reservation_id: id }),
        Just(Command::Housekeep),
    ]
}

/// Reads and time-driven housekeeping at `now` and well after it (every
/// hold expired, a monthly reset due) all succeed.
fn assert_readable(account: &Account, now: DateTime<Utc>, rates: &RateTable) {
    for later in [Duration::zero(), Duration::hours(2), Duration::days(45)] {
        let at = now + later;
        let read = as_of(account, at).unwrap_or_else(|r| panic!("unreadable at {at}: {r}"));
        read.view(at)
            .unwrap_or_else(|_| panic!("no view at {at}: {read:?}"));
        let swept = execute(
            account,
            &Command::Housekeep,
            &Context {
                now: at,
                rates,
                resolved: None,
            },
        );
        assert!(swept.is_ok(), "housekeeping refused at {at}: {swept:?}");
    }
}

/// Runs `cmd` as an admin would, and requires it to be accepted.
fn admin(account: &mut Account, cmd: Command, now: DateTime<Utc>, rates: &RateTable) {
    let ctx = Context {
        now,
        rates,
        resolved: None,
    };
    match execute(account, &cmd, &ctx) {
        Ok(done) => *account = done.account,
        Err(rejection) => panic!("repair step {cmd:?} refused: {rejection} on {account:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_reachable_state_is_readable_and_repairable(
        postpaid in any::<bool>(),
        limit in amount(),
        steps in prop::collection::vec((command(), 0..1_200_000i64), 1..60),
    ) {
        let rates = RateTable::default();
        let mut account = new_account(limit, postpaid);
        let mut now = t0();
        for (command, advance_ms) in steps {
            now += Duration::milliseconds(advance_ms);
            let ctx = Context { now, rates: &rates, resolved: None };
            if let Ok(done) = execute(&account, &command, &ctx) {
                account = done.account;
            }
            assert_readable(&account, now, &rates);
        }

        // The admin's repair: drop every hold, unfreeze, a prepaid hard limit
        // of zero, and the paid balance back to zero.
        admin(&mut account, Command::Housekeep, now, &rates);
        let holds: Vec<String> = account.holds.keys().cloned().collect();
        for id in holds {
            if account.holds.contains_key(&id) {
                admin(&mut account, Command::Release { reservation_id: id }, now, &rates);
            }
        }
        admin(&mut account, Command::Update(AccountPatch {
            status: Some(AccountStatus::Active),
            credit_limit: Some(Micros::ZERO),
            is_postpaid: Some(false),
            credit_limit_type: Some(CreditLimitType::Hard),
            ..Default::default()
        }), now, &rates);
        while account.balance_credit.is_negative() {
            let owed = account.balance_credit.get().checked_neg().unwrap_or(i64::MAX);
            admin(&mut account, Command::AddBalance(change(owed, 0)), now, &rates);
        }
        let credit = account.balance_credit.get();
        if credit > 0 {
            admin(&mut account, Command::SubtractBalance(change(credit, 0)), now, &rates);
        }
        prop_assert_eq!(account.balance_credit, Micros::ZERO);
        let view = account.view(now).unwrap();
        prop_assert_eq!(view.available_credit, Micros::ZERO);
        prop_assert!(account.holds.is_empty());
    }
}

/// The sequence the issue found: a postpaid limit near the int64 maximum
/// ("unlimited"), a large hold, then credit that fits only while the hold
/// counts. Its expiry would take the available credit past the maximum.
#[test]
fn credit_that_fits_only_while_a_hold_counts_is_refused() {
    let rates = RateTable::default();
    let mut account = new_account(i64::MAX / 2, true);
    let now = t0();
    admin(
        &mut account,
        Command::Reserve(Reserve {
            reservation_id: "big".into(),
            service_type: ServiceType::CallPstnOutgoing,
            requested_units: i64::MAX / 2 / 10_000,
            allow_partial: true,
            ttl_seconds: 60,
        }),
        now,
        &rates,
    );
    let ctx = Context {
        now,
        rates: &rates,
        resolved: None,
    };
    let topped_up = execute(
        &account,
        &Command::AddBalance(change(i64::MAX / 2 + 2, 0)),
        &ctx,
    );
    assert_eq!(topped_up.map(|_| ()), Err(Rejection::Overflow));
    assert_readable(&account, now, &rates);
}

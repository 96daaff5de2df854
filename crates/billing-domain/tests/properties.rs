//! Property tests: random command sequences conserve money in both credit
//! buckets, never make tokens or promotional credit negative, never let a
//! reservation or debit cross a hard limit, spend promotional credit first
//! (earliest expiry first) and never take it with paid credit, and the state
//! always equals a fresh fold of the events.

use billing_domain::*;
use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use uuid::Uuid;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 20, 0, 0, 0).unwrap()
}

fn service() -> impl Strategy<Value = ServiceType> {
    prop::sample::select(ServiceType::ALL.to_vec())
}

fn reservation_id() -> impl Strategy<Value = String> {
    (0..6u8).prop_map(|n| format!("call-{n}"))
}

fn command() -> impl Strategy<Value = Command> {
    let change = (0..200_000i64, 0..50i64).prop_map(|(c, t)| BalanceChange {
        amount_credit: Micros(c),
        amount_token: Tokens(t),
        reference_type: ReferenceType::ManualAdjustment,
        reference_id: String::new(),
        note: String::new(),
        bucket: Default::default(),
        expires_at: None,
    });
    // Promotional credit, expiring within the sequence's span or never.
    let promotional = (
        1..150_000i64,
        prop::option::of(1..6_000_000i64),
        any::<bool>(),
    )
        .prop_map(|(c, expires_in_ms, add)| {
            let change = BalanceChange {
                amount_credit: Micros(c),
                amount_token: Tokens::ZERO,
                reference_type: ReferenceType::Promotion,
                reference_id: String::new(),
                note: String::new(),
                bucket: Bucket::Promotional,
                expires_at: None,
            };
            if add {
                Command::AddBalance(BalanceChange {
                    // From the sequence's start: some are already past when
                    // they come, and are refused.
                    expires_at: expires_in_ms.map(|ms| t0() + Duration::milliseconds(ms)),
                    ..change
                })
            } else {
                Command::SubtractBalance(change)
            }
        });
    prop_oneof![
        change.clone().prop_map(Command::AddBalance),
        change.prop_map(Command::SubtractBalance),
        promotional,
        (service(), 0..600_000i64, 0..20i64).prop_map(|(s, ms, q)| {
            let usage = if s.unit() == Unit::Minute {
                Usage::DurationMs(ms)
            } else {
                Usage::Quantity(q)
            };
            Command::Debit(Debit {
                service_type: s,
                usage,
                reference_type: s.reference_type(),
                reference_id: String::new(),
            })
        }),
        (
            reservation_id(),
            service(),
            1..30i64,
            any::<bool>(),
            0..3_600i64
        )
            .prop_map(|(id, s, units, partial, ttl)| Command::Reserve(Reserve {
                reservation_id: id,
                service_type: s,
                requested_units: units,
                allow_partial: partial,
                ttl_seconds: ttl,
            })),
        (reservation_id(), 1..10i64, any::<bool>()).prop_map(|(id, units, partial)| {
            Command::Extend(Extend {
                reservation_id: id,
                additional_units: units,
                allow_partial: partial,
            })
        }),
        (reservation_id(), 0..1_800_000i64, 0..20i64).prop_map(|(id, ms, q)| {
            Command::Commit(Commit {
                reservation_id: id,
                used_duration_ms: ms,
                used_quantity: q,
            })
        }),
        reservation_id().prop_map(|id| Command::Release { reservation_id: id }),
        Just(Command::Housekeep),
        prop::sample::select(PlanType::ALL.to_vec()).prop_map(|p| Command::Update(AccountPatch {
            plan_type: Some(p),
            ..Default::default()
        })),
    ]
}

fn account_kind() -> impl Strategy<Value = (PlanType, CreditLimitType, bool, i64)> {
    (
        prop::sample::select(PlanType::ALL.to_vec()),
        prop::sample::select(vec![CreditLimitType::Hard, CreditLimitType::Soft]),
        any::<bool>(),
        0..100_000i64,
    )
}

/// Paid credit, promotional credit and token deltas of one event, as the
/// ledger records them.
fn deltas(event: &Event) -> (i64, i64, i64) {
    ledger_line(event).map_or((0, 0, 0), |l| {
        (
            l.amount_credit.get(),
            l.amount_promotional.get(),
            l.amount_token.get(),
        )
    })
}

/// The promotional credit a usage event spent, and what it charged in all.
fn usage_spend(event: &Event) -> Option<(&[PromotionSpend], Micros)> {
    match event {
        Event::Debited(e) => Some((&e.promotional, e.charged_credit)),
        Event::Committed(e) => Some((&e.promotional, e.charged_credit)),
        _ => None,
    }
}

fn is_spend(command: &Command) -> bool {
    matches!(
        command,
        Command::Reserve(_) | Command::Extend(_) | Command::Debit(_) | Command::SubtractBalance(_)
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_sequences_keep_the_money_invariants(
        (plan, limit_type, postpaid, limit) in account_kind(),
        steps in prop::collection::vec((command(), 0..400_000i64), 1..60),
    ) {
        let rates = RateTable::default();
        let create_cmd = CreateAccount {
            customer_id: Uuid::nil(),
            name: String::new(),
            detail: String::new(),
            plan_type: plan,
            currency: Currency::usd(),
            credit_limit: Micros(limit),
            credit_limit_type: limit_type,
            is_postpaid: postpaid,
            low_balance_threshold: Micros::ZERO,
            payment_type: String::new(),
            payment_method: String::new(),
        };
        let created = create(Uuid::from_u128(1), &create_cmd, t0()).unwrap();
        let mut log: Vec<(Event, DateTime<Utc>)> =
            created.events.iter().map(|r| (r.event.clone(), t0())).collect();
        let mut account = created.account;
        let mut now = t0();
        // The view after each event, folded from the one before it (how
        // the store gives the views it does not keep): always the view the
        // command recorded.
        let mut view = created.events[0].account.clone();
        for recorded in &created.events[1..] {
            view = view.after(&recorded.event, t0(), recorded.balances).unwrap();
            prop_assert_eq!(&view, &recorded.account, "the folded view differs from the recorded one");
        }

        for (command, advance_ms) in steps {
            now += Duration::milliseconds(advance_ms);
            let available_before = account.view(now).unwrap().available_credit;
            let Ok(done) = execute(&account, &command, &Context { now, rates: &rates, resolved: None }) else {
                continue;
            };
            // Replays the events one by one, to check each against the
            // account just before it.
            let mut before = account.clone();
            for (i, recorded) in done.events.iter().enumerate() {
                prop_assert_eq!(recorded.version, account.version + 1 + i as i64);
                prop_assert!(!recorded.balances.balance_token.is_negative(), "tokens went negative");
                if let Some((spends, charged)) = usage_spend(&recorded.event) {
                    // Usage spends promotional credit first: all of it that
                    // is live, up to the charge, from the grants in spending
                    // order (earliest expiry first).
                    let live: Vec<&Promotion> =
                        before.promotions.iter().filter(|p| p.is_live(now)).collect();
                    let spent = Micros::checked_sum(spends.iter().map(|s| s.amount)).unwrap();
                    let available = before.promotional(now).unwrap();
                    prop_assert_eq!(spent, charged.min(available));
                    for (spend, grant) in spends.iter().zip(&live) {
                        prop_assert_eq!(spend.grant, grant.grant, "not in spending order");
                    }
                    for (spend, grant) in spends.iter().zip(&live).rev().skip(1) {
                        prop_assert_eq!(spend.amount, grant.remaining, "an earlier grant left unspent");
                    }
                }
                if let (Event::BalanceSubtracted(e), Command::SubtractBalance(c)) = (&recorded.event, &command)
                    && c.bucket == Bucket::Paid
                {
                    prop_assert!(e.promotions.is_empty(), "a paid subtraction took promotional credit");
                    prop_assert_eq!(deltas(&recorded.event).1, 0);
                }
                before.apply(&recorded.event, now).unwrap();
                view = view.after(&recorded.event, now, recorded.balances).unwrap();
                prop_assert_eq!(&view, &recorded.account, "the folded view differs from the recorded one");
                prop_assert!(
                    before.promotions.iter().all(|p| p.remaining.is_positive()),
                    "a promotional grant went to zero or below and stayed"
                );
                prop_assert!(
                    before.promotions.windows(2).all(|w| {
                        (w[0].expires_at.is_none(), w[0].expires_at, w[0].grant)
                            <= (w[1].expires_at.is_none(), w[1].expires_at, w[1].grant)
                    }),
                    "grants out of spending order"
                );
            }
            // Expired promotional credit never counts: once housekept, no
            // grant past its expiry remains.
            prop_assert!(done.account.promotions.iter().all(|p| p.is_live(now)));
            log.extend(done.events.iter().map(|r| (r.event.clone(), now)));
            let after = done.account.view(now).unwrap();

            // A hard limit is never crossed by a reservation, debit or
            // subtraction: the available credit stays at or above zero, or
            // did not move when it already was below (a zero-credit charge).
            if limit_type == CreditLimitType::Hard && is_spend(&command) {
                prop_assert!(
                    !after.available_credit.is_negative()
                        || after.available_credit >= available_before,
                    "hard limit crossed: {} -> {} by {:?}", available_before, after.available_credit, command
                );
            }
            account = done.account;
        }

        // Money is conserved: each balance is the sum of the ledger's
        // movements in its bucket.
        let (credit, promotional, tokens) = log.iter().fold((0i64, 0i64, 0i64), |(c, p, t), (e, _)| {
            let (dc, dp, dt) = deltas(e);
            (c + dc, p + dp, t + dt)
        });
        prop_assert_eq!(account.balance_credit, Micros(credit));
        prop_assert_eq!(account.promotional_recorded().unwrap(), Micros(promotional));
        prop_assert_eq!(account.balance_token, Tokens(tokens));

        // The state is a fold of its events.
        let folded = Account::fold(account.id, log.iter().map(|(e, at)| (e, *at))).unwrap().unwrap();
        prop_assert_eq!(folded, account);
    }
}

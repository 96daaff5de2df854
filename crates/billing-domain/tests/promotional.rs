//! Promotional credit, rule by rule: given an account / when a command /
//! then events or a rejection.

use billing_domain::*;
use chrono::{DateTime, Duration, TimeZone, Utc};
use uuid::Uuid;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 10, 12, 0, 0).unwrap()
}

fn hours(h: i64) -> DateTime<Utc> {
    t0() + Duration::hours(h)
}

/// A prepaid, hard-limit, unmetered account with `paid` micros of paid
/// credit (so tokens never pay for anything here).
fn given(paid: i64) -> Account {
    let cmd = CreateAccount {
        customer_id: Uuid::nil(),
        name: "Primary Account".into(),
        detail: String::new(),
        plan_type: PlanType::Unlimited,
        currency: Currency::usd(),
        credit_limit: Micros::ZERO,
        credit_limit_type: CreditLimitType::Hard,
        is_postpaid: false,
        low_balance_threshold: Micros::ZERO,
        payment_type: String::new(),
        payment_method: String::new(),
    };
    let account = create(Uuid::from_u128(7), &cmd, t0()).unwrap().account;
    if paid == 0 {
        return account;
    }
    then(when(&account, change(true, Bucket::Paid, paid, None)))
}

/// `account` after granting promotional credit.
fn promoted(account: Account, credit: i64, expires_at: Option<DateTime<Utc>>) -> Account {
    then(when(
        &account,
        change(true, Bucket::Promotional, credit, expires_at),
    ))
}

fn change(add: bool, bucket: Bucket, credit: i64, expires_at: Option<DateTime<Utc>>) -> Command {
    let c = BalanceChange {
        amount_credit: Micros(credit),
        amount_token: Tokens::ZERO,
        reference_type: ReferenceType::Promotion,
        reference_id: String::new(),
        note: String::new(),
        bucket,
        expires_at,
    };
    if add {
        Command::AddBalance(c)
    } else {
        Command::SubtractBalance(c)
    }
}

/// A debit of `sms` messages (10,000 micros each by the default rates).
fn sms(count: i64) -> Command {
    Command::Debit(Debit {
        service_type: ServiceType::Sms,
        usage: Usage::Quantity(count),
        reference_type: ReferenceType::Sms,
        reference_id: String::new(),
    })
}

const SMS: i64 = 10_000;

/// A hold for `minutes` of an outgoing PSTN call (10,000 micros a minute).
fn pstn_call(minutes: i64) -> Command {
    Command::Reserve(Reserve {
        reservation_id: "call-1".into(),
        service_type: ServiceType::CallPstnOutgoing,
        requested_units: minutes,
        allow_partial: false,
        ttl_seconds: 0,
    })
}

fn when(account: &Account, command: Command) -> Result<Executed, Rejection> {
    when_at(account, command, t0())
}

fn when_at(account: &Account, command: Command, now: DateTime<Utc>) -> Result<Executed, Rejection> {
    let rates = RateTable::default();
    execute(
        account,
        &command,
        &Context {
            now,
            rates: &rates,
            resolved: None,
        },
    )
}

fn then(executed: Result<Executed, Rejection>) -> Account {
    executed.expect("accepted").account
}

fn view(account: &Account, now: DateTime<Utc>) -> AccountView {
    account.view(now).unwrap()
}

/// The promotional grants' (grant version, remaining) in spending order.
fn grants(account: &Account) -> Vec<(i64, i64)> {
    account
        .promotions
        .iter()
        .map(|p| (p.grant, p.remaining.get()))
        .collect()
}

fn ledger(executed: &Executed) -> Vec<LedgerLine> {
    executed
        .events
        .iter()
        .filter_map(|r| ledger_line(&r.event))
        .collect()
}

#[test]
fn promotional_credit_counts_as_available_but_not_as_the_paid_balance() {
    let account = promoted(given(1_000_000), 500_000, Some(hours(24)));
    let v = view(&account, t0());
    assert_eq!(v.balance_credit, Micros(1_000_000));
    assert_eq!(v.balance_promotional, Micros(500_000));
    assert_eq!(v.available_credit, Micros(1_500_000));
}

#[test]
fn a_grant_is_credit_only_expires_in_the_future_and_paid_credit_never_expires() {
    let account = given(0);
    let with_tokens = Command::AddBalance(BalanceChange {
        amount_token: Tokens(5),
        ..match change(true, Bucket::Promotional, 1, None) {
            Command::AddBalance(c) => c,
            _ => unreachable!(),
        }
    });
    for (command, field) in [
        (with_tokens, "amount_token"),
        (
            change(true, Bucket::Promotional, 1_000, Some(t0())),
            "expires_at",
        ),
        (
            change(true, Bucket::Paid, 1_000, Some(hours(1))),
            "expires_at",
        ),
    ] {
        match when(&account, command) {
            Err(Rejection::InvalidArgument { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected INVALID_ARGUMENT on {field}, got {other:?}"),
        }
    }
}

#[test]
fn usage_spends_promotional_credit_first_earliest_expiry_first() {
    let account = given(1_000_000);
    let account = promoted(account, 3 * SMS, None); // version 3: never expires
    let account = promoted(account, 2 * SMS, Some(hours(48))); // version 4
    let account = promoted(account, SMS, Some(hours(24))); // version 5
    assert_eq!(
        grants(&account),
        vec![(5, SMS), (4, 2 * SMS), (3, 3 * SMS)],
        "spending order: earliest expiry first, never-expiring last"
    );

    let done = when(&account, sms(4)).unwrap();
    let Event::Debited(debited) = &done.events[0].event else {
        panic!("expected a debit, got {:?}", done.events[0].event);
    };
    assert_eq!(debited.charged_credit, Micros(4 * SMS));
    assert_eq!(
        debited.promotional,
        vec![
            PromotionSpend {
                grant: 5,
                amount: Micros(SMS)
            },
            PromotionSpend {
                grant: 4,
                amount: Micros(2 * SMS)
            },
            PromotionSpend {
                grant: 3,
                amount: Micros(SMS)
            },
        ]
    );
    assert_eq!(
        done.account.balance_credit,
        Micros(1_000_000),
        "paid credit untouched"
    );
    assert_eq!(grants(&done.account), vec![(3, 2 * SMS)]);

    // Past the promotional credit, the rest is paid.
    let done = when(&done.account, sms(5)).unwrap();
    assert_eq!(done.account.balance_credit, Micros(1_000_000 - 3 * SMS));
    assert!(done.account.promotions.is_empty());
    let line = &ledger(&done)[0];
    assert_eq!(line.amount_promotional, Micros(-2 * SMS));
    assert_eq!(line.amount_credit, Micros(-3 * SMS));
}

#[test]
fn a_reservation_counts_promotional_credit_and_its_commit_spends_it_first() {
    let account = promoted(given(0), 60_000, None);
    // 10,000 micros a minute for a PSTN call: 6 minutes fit in 60,000.
    let reserve = pstn_call(6);
    let held = when(&account, reserve).unwrap();
    assert_eq!(view(&held.account, t0()).available_credit, Micros::ZERO);
    let commit = Command::Commit(Commit {
        reservation_id: "call-1".into(),
        used_duration_ms: 4 * 60_000,
        used_quantity: 0,
    });
    let done = when(&held.account, commit).unwrap();
    let v = view(&done.account, t0());
    assert_eq!(v.balance_promotional, Micros(60_000 - 4 * 10_000));
    assert_eq!(v.balance_credit, Micros::ZERO);
    let line = &ledger(&done)[0];
    assert_eq!(line.amount_promotional, Micros(-4 * 10_000));
    assert_eq!(line.amount_credit, Micros::ZERO);
}

#[test]
fn subtracting_paid_credit_never_takes_promotional_credit() {
    let account = promoted(given(100_000), 500_000, None);
    match when(&account, change(false, Bucket::Paid, 200_000, None)) {
        Err(Rejection::InsufficientBalance {
            required,
            available,
        }) => {
            assert_eq!(required, Micros(200_000));
            assert_eq!(available, Micros(100_000), "only the paid credit");
        }
        other => panic!("expected INSUFFICIENT_BALANCE, got {other:?}"),
    }
    let done = when(&account, change(false, Bucket::Paid, 100_000, None)).unwrap();
    assert_eq!(done.account.balance_credit, Micros::ZERO);
    assert_eq!(grants(&done.account), vec![(3, 500_000)]);
    assert_eq!(ledger(&done)[0].amount_promotional, Micros::ZERO);
}

#[test]
fn paid_credit_that_holds_will_need_stays_but_promotional_credit_covers_holds_first() {
    // 100,000 paid, 30,000 promotional, 60,000 held: the commit would
    // spend the 30,000 promotional and 30,000 paid, so 70,000 paid may go.
    let account = promoted(given(100_000), 30_000, None);
    let reserve = pstn_call(6);
    let held = then(when(&account, reserve));
    assert!(when(&held, change(false, Bucket::Paid, 70_001, None)).is_err());
    let done = when(&held, change(false, Bucket::Paid, 70_000, None)).unwrap();
    assert_eq!(view(&done.account, t0()).available_credit, Micros::ZERO);
}

#[test]
fn an_admin_removes_promotional_credit_explicitly_from_the_grants_in_spending_order() {
    let account = promoted(given(1_000), 5_000, None); // version 3
    let account = promoted(account, 2_000, Some(hours(1))); // version 4
    let done = when(&account, change(false, Bucket::Promotional, 3_000, None)).unwrap();
    assert_eq!(grants(&done.account), vec![(3, 4_000)]);
    assert_eq!(done.account.balance_credit, Micros(1_000), "paid untouched");
    let line = &ledger(&done)[0];
    assert_eq!(line.amount_promotional, Micros(-3_000));
    assert_eq!(line.amount_credit, Micros::ZERO);

    match when(
        &done.account,
        change(false, Bucket::Promotional, 4_001, None),
    ) {
        Err(Rejection::InsufficientPromotional {
            required,
            available,
        }) => {
            assert_eq!((required, available), (Micros(4_001), Micros(4_000)));
        }
        other => panic!("expected INSUFFICIENT_PROMOTIONAL_BALANCE, got {other:?}"),
    }
}

#[test]
fn expired_promotional_credit_stops_counting_at_its_expiry_and_an_event_records_it() {
    let account = promoted(given(1_000), 5_000, Some(hours(2)));
    assert_eq!(account.next_due(), Some(hours(2)), "the sweeper's due time");
    let just_before = hours(2) - Duration::microseconds(1);
    assert_eq!(
        view(&account, just_before).balance_promotional,
        Micros(5_000)
    );
    // Exact at read time, before anything is recorded.
    let v = view(&account, hours(2));
    assert_eq!(v.balance_promotional, Micros::ZERO);
    assert_eq!(v.available_credit, Micros(1_000));
    assert_eq!(
        view(&as_of(&account, hours(2)).unwrap(), hours(2)).available_credit,
        Micros(1_000)
    );

    // Recorded by housekeeping (the sweeper's command, and every command's
    // first step), with the grant's own expiry time.
    let done = when_at(&account, Command::Housekeep, hours(3)).unwrap();
    assert_eq!(
        done.events
            .iter()
            .map(|r| r.event.clone())
            .collect::<Vec<_>>(),
        vec![Event::PromotionExpired(event::PromotionExpired {
            grant: 3,
            amount: Micros(5_000),
            expired_at: hours(2),
        })]
    );
    assert!(done.account.promotions.is_empty());
    assert_eq!(done.account.next_due(), None);
    let line = &ledger(&done)[0];
    assert_eq!(line.transaction_type, TransactionType::PromotionalExpiry);
    assert_eq!(line.amount_promotional, Micros(-5_000));
    assert_eq!(line.reference_id, "3", "names the grant");
}

#[test]
fn a_charge_after_an_expiry_finds_only_paid_credit() {
    let account = promoted(given(SMS), SMS, Some(hours(1)));
    let done = when_at(&account, sms(2), hours(1)).unwrap_err();
    assert_eq!(
        done,
        Rejection::InsufficientBalance {
            required: Micros(2 * SMS),
            available: Micros(SMS)
        }
    );
    let done = when_at(&account, sms(1), hours(1)).unwrap();
    assert_eq!(
        done.events
            .iter()
            .map(|r| r.event.event_type())
            .collect::<Vec<_>>(),
        vec!["promotion_expired", "debited"]
    );
    assert_eq!(done.account.balance_credit, Micros::ZERO);
}

#[test]
fn an_account_holds_a_bounded_number_of_grants() {
    let mut account = given(0);
    for _ in 0..MAX_PROMOTIONS {
        account = promoted(account, 1, None);
    }
    assert_eq!(
        when(&account, change(true, Bucket::Promotional, 1, None)).unwrap_err(),
        Rejection::TooManyPromotions {
            limit: MAX_PROMOTIONS
        }
    );
    // Spending one frees a place.
    let account = then(when(&account, change(false, Bucket::Promotional, 1, None)));
    promoted(account, 1, None);
}

#[test]
fn the_state_with_grants_is_a_fold_of_its_events() {
    let account = given(0);
    let mut log = Vec::new();
    let mut state = account.clone();
    for command in [
        change(true, Bucket::Paid, 50_000, None),
        change(true, Bucket::Promotional, 20_000, Some(hours(1))),
        change(true, Bucket::Promotional, 20_000, None),
        sms(1),
        change(false, Bucket::Promotional, 5_000, None),
    ] {
        let done = when(&state, command).unwrap();
        log.extend(done.events.into_iter().map(|r| r.event));
        state = done.account;
    }
    let done = when_at(&state, Command::Housekeep, hours(2)).unwrap();
    log.extend(done.events.into_iter().map(|r| r.event));
    state = done.account;
    let mut replayed = given(0);
    for event in &log {
        replayed.apply(event, t0()).unwrap();
    }
    assert_eq!(grants(&replayed), grants(&state));
    assert_eq!(replayed.balance_credit, state.balance_credit);
    // Grant 3 (10,000 left after the message, 5,000 after the removal)
    // expired; grant 4 was never touched.
    assert_eq!(grants(&state), vec![(4, 20_000)]);
    assert!(
        log.iter()
            .any(|e| matches!(e, Event::PromotionExpired(x) if x.amount == Micros(5_000)))
    );
}

//! Given an account / when a command / then events or a rejection, for every
//! rule of the billing domain.

use billing_domain::*;
use chrono::{DateTime, Duration, TimeZone, Utc};
use uuid::Uuid;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 10, 12, 0, 0).unwrap()
}

/// An account on `plan` created at `t0`, topped up with `credit` micros.
fn given(plan: PlanType, credit: i64) -> Account {
    given_with(plan, credit, |_| {})
}

fn given_with(plan: PlanType, credit: i64, tweak: impl FnOnce(&mut CreateAccount)) -> Account {
    let mut cmd = CreateAccount {
        customer_id: Uuid::nil(),
        name: "Primary Account".into(),
        detail: String::new(),
        plan_type: plan,
        currency: Currency::usd(),
        credit_limit: Micros::ZERO,
        credit_limit_type: CreditLimitType::Hard,
        is_postpaid: false,
        low_balance_threshold: Micros::ZERO,
        payment_type: String::new(),
        payment_method: String::new(),
    };
    tweak(&mut cmd);
    let mut account = create(Uuid::from_u128(7), &cmd, t0()).unwrap().account;
    if credit > 0 {
        account = when(&account, add(credit, 0)).unwrap().account;
    }
    account
}

fn add(credit: i64, token: i64) -> Command {
    Command::AddBalance(BalanceChange {
        amount_credit: Micros(credit),
        amount_token: Tokens(token),
        reference_type: ReferenceType::Payment,
        reference_id: String::new(),
        note: String::new(),
        bucket: Default::default(),
        expires_at: None,
    })
}

fn subtract(credit: i64, token: i64) -> Command {
    Command::SubtractBalance(BalanceChange {
        amount_credit: Micros(credit),
        amount_token: Tokens(token),
        reference_type: ReferenceType::ManualAdjustment,
        reference_id: String::new(),
        note: String::new(),
        bucket: Default::default(),
        expires_at: None,
    })
}

fn reserve(id: &str, service: ServiceType, units: i64, allow_partial: bool) -> Command {
    Command::Reserve(Reserve {
        reservation_id: id.into(),
        service_type: service,
        requested_units: units,
        allow_partial,
        ttl_seconds: 0,
    })
}

fn commit_ms(id: &str, ms: i64) -> Command {
    Command::Commit(Commit {
        reservation_id: id.into(),
        used_duration_ms: ms,
        used_quantity: 0,
    })
}

fn debit(service: ServiceType, usage: Usage) -> Command {
    Command::Debit(Debit {
        service_type: service,
        usage,
        reference_type: service.reference_type(),
        reference_id: String::new(),
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

fn types(executed: &Executed) -> Vec<&'static str> {
    executed
        .events
        .iter()
        .map(|r| r.event.event_type())
        .collect()
}

fn commit_outcome(executed: &Executed) -> &CommitOutcome {
    match &executed.outcome {
        Outcome::Commit(c) => c,
        other => panic!("expected a commit outcome, got {other:?}"),
    }
}

fn reservation(executed: &Executed) -> &ReservationView {
    match &executed.outcome {
        Outcome::Reservation(r) => r,
        other => panic!("expected a reservation, got {other:?}"),
    }
}

#[test]
fn a_new_account_starts_with_its_plans_allowance_and_a_zero_hard_limit() {
    let cmd_account = given(PlanType::Free, 0);
    assert_eq!(cmd_account.balance_token, Tokens(100));
    assert_eq!(
        cmd_account.version, 2,
        "account_created then tokens_granted"
    );
    assert_eq!(cmd_account.credit_limit_type, CreditLimitType::Hard);
    assert_eq!(
        cmd_account.tm_next_topup,
        Some(Utc.with_ymd_and_hms(2026, 4, 1, 0, 0, 0).unwrap())
    );
    let unlimited = given(PlanType::Unlimited, 0);
    assert_eq!((unlimited.balance_token, unlimited.version), (Tokens(0), 1));
    assert_eq!(unlimited.tm_next_topup, None);
}

#[test]
fn five_minute_vn_call_with_tokens_costs_five_tokens() {
    let account = given(PlanType::Free, 1_000_000);
    let held = when(&account, reserve("call-1", ServiceType::CallVn, 5, false)).unwrap();
    let r = reservation(&held);
    assert_eq!(
        (r.reserved_token, r.reserved_credit),
        (Tokens(5), Micros(0))
    );
    let done = when(&held.account, commit_ms("call-1", 300_000)).unwrap();
    let c = commit_outcome(&done);
    assert_eq!(
        (c.billable_units, c.charged_token, c.charged_credit),
        (5, Tokens(5), Micros(0))
    );
    assert_eq!(done.account.balance_token, Tokens(95));
    assert_eq!(done.account.balance_credit, Micros(1_000_000));
}

#[test]
fn five_minute_vn_call_without_tokens_costs_5000_micros() {
    let account = when(&given(PlanType::Free, 1_000_000), subtract(0, 100))
        .unwrap()
        .account;
    let held = when(&account, reserve("call-1", ServiceType::CallVn, 5, false)).unwrap();
    let done = when(&held.account, commit_ms("call-1", 300_000)).unwrap();
    let c = commit_outcome(&done);
    assert_eq!(
        (c.charged_token, c.charged_credit),
        (Tokens(0), Micros(5_000))
    );
}

#[test]
fn token_overflow_pays_whole_units_from_tokens_then_credit() {
    let account = when(&given(PlanType::Free, 1_000_000), subtract(0, 97))
        .unwrap()
        .account;
    assert_eq!(account.balance_token, Tokens(3));
    let held = when(&account, reserve("call-1", ServiceType::CallVn, 5, false)).unwrap();
    let r = reservation(&held);
    assert_eq!(
        (r.reserved_token, r.reserved_credit),
        (Tokens(3), Micros(2_000))
    );
    let done = when(&held.account, commit_ms("call-1", 300_000)).unwrap();
    let c = commit_outcome(&done);
    assert_eq!(
        (c.charged_token, c.charged_credit),
        (Tokens(3), Micros(2_000))
    );
    assert_eq!(done.account.balance_token, Tokens(0));

    // Two tokens left on TTS (3 per minute): every unit on credit.
    let two = when(&account, subtract(0, 1)).unwrap().account;
    let tts = when(&two, debit(ServiceType::Tts, Usage::DurationMs(60_000))).unwrap();
    assert_eq!(tts.account.balance_token, Tokens(2));
    assert_eq!(tts.account.balance_credit, Micros(1_000_000 - 30_000));
}

#[test]
fn pstn_two_minutes_thirty_is_three_minutes_and_ten_sms_cost_100000() {
    let account = given(PlanType::Free, 1_000_000);
    let held = when(
        &account,
        reserve("pstn", ServiceType::CallPstnOutgoing, 5, false),
    )
    .unwrap();
    let done = when(&held.account, commit_ms("pstn", 150_000)).unwrap();
    let c = commit_outcome(&done);
    assert_eq!((c.billable_units, c.charged_credit), (3, Micros(30_000)));
    assert_eq!(c.released_credit, Micros(20_000));

    let sms = when(&account, debit(ServiceType::Sms, Usage::Quantity(10))).unwrap();
    assert_eq!(types(&sms), ["debited"]);
    assert_eq!(sms.account.balance_credit, Micros(900_000));
}

#[test]
fn a_reserve_is_all_or_nothing_unless_partial_is_allowed() {
    let account = given(PlanType::Free, 25_000);
    let refused = when(
        &account,
        reserve("c", ServiceType::CallPstnOutgoing, 3, false),
    );
    assert_eq!(
        refused,
        Err(Rejection::InsufficientBalance {
            required: Micros(30_000),
            available: Micros(25_000)
        })
    );
    let partial = when(
        &account,
        reserve("c", ServiceType::CallPstnOutgoing, 3, true),
    )
    .unwrap();
    let r = reservation(&partial);
    assert_eq!(
        (r.granted_units, r.reserved_credit, r.requested_units),
        (2, Micros(20_000), 3)
    );
    let broke = given(PlanType::Free, 5_000);
    assert!(matches!(
        when(&broke, reserve("c", ServiceType::CallPstnOutgoing, 3, true)),
        Err(Rejection::InsufficientBalance { .. })
    ));
}

#[test]
fn a_prepaid_account_can_spend_exactly_what_it_holds() {
    let account = given(PlanType::Free, 30_000);
    let held = when(
        &account,
        reserve("a", ServiceType::CallPstnOutgoing, 3, false),
    )
    .unwrap();
    assert_eq!(held.account.view(t0()).unwrap().available_credit, Micros(0));
    assert!(matches!(
        when(&held.account, debit(ServiceType::Sms, Usage::Quantity(1))),
        Err(Rejection::InsufficientBalance { .. })
    ));
}

#[test]
fn a_postpaid_hard_limit_extends_the_available_credit() {
    let account = given_with(PlanType::Free, 0, |c| {
        c.is_postpaid = true;
        c.credit_limit = Micros(20_000);
    });
    assert_eq!(account.view(t0()).unwrap().available_credit, Micros(20_000));
    assert!(when(&account, debit(ServiceType::Sms, Usage::Quantity(2))).is_ok());
    assert!(when(&account, debit(ServiceType::Sms, Usage::Quantity(3))).is_err());
    // The limit counts only for postpaid accounts.
    let prepaid = given_with(PlanType::Free, 0, |c| c.credit_limit = Micros(20_000));
    assert!(when(&prepaid, debit(ServiceType::Sms, Usage::Quantity(1))).is_err());
}

#[test]
fn a_soft_limit_lets_usage_through_and_records_the_crossing_once() {
    let account = given_with(PlanType::Free, 10_000, |c| {
        c.credit_limit_type = CreditLimitType::Soft
    });
    let over = when(&account, debit(ServiceType::Sms, Usage::Quantity(3))).unwrap();
    assert_eq!(types(&over), ["debited", "credit_limit_exceeded"]);
    assert!(over.account.view(t0()).unwrap().over_limit);
    let again = when(&over.account, debit(ServiceType::Sms, Usage::Quantity(1))).unwrap();
    assert_eq!(types(&again), ["debited"], "only the crossing is an event");
}

#[test]
fn a_frozen_account_takes_no_new_spending_but_finishes_calls_and_takes_payments() {
    let account = given(PlanType::Free, 100_000);
    let held = when(
        &account,
        reserve("live", ServiceType::CallPstnOutgoing, 2, false),
    )
    .unwrap();
    let freeze = Command::Update(AccountPatch {
        status: Some(AccountStatus::Frozen),
        ..Default::default()
    });
    let frozen = when(&held.account, freeze).unwrap().account;
    assert_eq!(
        when(
            &frozen,
            reserve("new", ServiceType::CallPstnOutgoing, 1, false)
        ),
        Err(Rejection::AccountFrozen)
    );
    assert_eq!(
        when(&frozen, debit(ServiceType::Sms, Usage::Quantity(1))),
        Err(Rejection::AccountFrozen)
    );
    assert!(when(&frozen, commit_ms("live", 60_000)).is_ok());
    assert!(when(&frozen, add(1, 0)).is_ok());
}

#[test]
fn usage_beyond_the_hold_is_charged_in_full_even_past_the_limit() {
    let account = given(PlanType::Free, 20_000);
    let held = when(
        &account,
        reserve("long", ServiceType::CallPstnOutgoing, 1, false),
    )
    .unwrap();
    let done = when(&held.account, commit_ms("long", 5 * 60_000)).unwrap();
    let c = commit_outcome(&done);
    assert_eq!(
        (c.charged_credit, c.released_credit),
        (Micros(50_000), Micros(0))
    );
    assert_eq!(done.account.balance_credit, Micros(-30_000));
    assert_eq!(types(&done), ["committed", "credit_limit_exceeded"]);
}

#[test]
fn a_reservation_resolves_at_most_once() {
    let account = given(PlanType::Free, 100_000);
    let held = when(
        &account,
        reserve("c1", ServiceType::CallPstnOutgoing, 2, false),
    )
    .unwrap();
    let first = when(&held.account, commit_ms("c1", 60_000)).unwrap();
    let hold = held.account.holds["c1"].clone();
    let resolved = ResolvedReservation {
        hold: hold.clone(),
        status: ReservationStatus::Committed,
        commit: Some(commit_outcome(&first).clone()),
        account_version: first.account.version,
    };
    let rates = RateTable::default();
    let ctx = Context {
        now: t0(),
        rates: &rates,
        resolved: Some(&resolved),
    };
    let again = execute(&first.account, &commit_ms("c1", 120_000), &ctx).unwrap();
    assert!(again.events.is_empty(), "a repeated commit charges nothing");
    assert_eq!(again.outcome, first.outcome, "and returns the first result");
    assert_eq!(
        execute(
            &first.account,
            &Command::Release {
                reservation_id: "c1".into()
            },
            &ctx
        ),
        Err(Rejection::ReservationResolved {
            status: ReservationStatus::Committed
        })
    );
    let extend = Command::Extend(Extend {
        reservation_id: "c1".into(),
        additional_units: 1,
        allow_partial: false,
    });
    assert_eq!(
        execute(&first.account, &extend, &ctx),
        Err(Rejection::ReservationResolved {
            status: ReservationStatus::Committed
        })
    );

    // Released: releasing again answers the same; committing is refused.
    let released = when(
        &held.account,
        Command::Release {
            reservation_id: "c1".into(),
        },
    )
    .unwrap();
    assert_eq!(types(&released), ["released"]);
    assert_eq!(
        released.account.view(t0()).unwrap().available_credit,
        Micros(100_000)
    );
    let released_record = ResolvedReservation {
        status: ReservationStatus::Released,
        commit: None,
        ..resolved.clone()
    };
    let ctx = Context {
        resolved: Some(&released_record),
        ..ctx
    };
    assert!(
        execute(
            &released.account,
            &Command::Release {
                reservation_id: "c1".into()
            },
            &ctx
        )
        .is_ok()
    );
    assert_eq!(
        execute(&released.account, &commit_ms("c1", 1_000), &ctx),
        Err(Rejection::ReservationResolved {
            status: ReservationStatus::Released
        })
    );
}

#[test]
fn expired_holds_stop_counting_at_once_and_are_recorded_by_the_next_command() {
    let account = given(PlanType::Free, 30_000);
    let mut cmd = reserve("c1", ServiceType::CallPstnOutgoing, 3, false);
    if let Command::Reserve(r) = &mut cmd {
        r.ttl_seconds = 60;
    }
    let held = when(&account, cmd).unwrap().account;
    let later = t0() + Duration::seconds(60);
    assert_eq!(held.view(later).unwrap().available_credit, Micros(30_000));
    assert_eq!(held.view(later).unwrap().reserved_credit, Micros(0));
    let swept = when_at(&held, Command::Housekeep, later).unwrap();
    assert_eq!(types(&swept), ["reservation_expired"]);
    assert_eq!(
        when_at(&held, commit_ms("c1", 60_000), later),
        Err(Rejection::ReservationResolved {
            status: ReservationStatus::Expired
        })
    );
    // The expired hold no longer blocks new spending, even before the sweep.
    assert!(when_at(&held, debit(ServiceType::Sms, Usage::Quantity(3)), later).is_ok());
}

#[test]
fn extend_adds_units_and_pushes_the_expiry_out() {
    let account = given(PlanType::Free, 50_000);
    let held = when(
        &account,
        reserve("c1", ServiceType::CallPstnOutgoing, 2, false),
    )
    .unwrap();
    let later = t0() + Duration::seconds(600);
    let extend = |units, partial| {
        Command::Extend(Extend {
            reservation_id: "c1".into(),
            additional_units: units,
            allow_partial: partial,
        })
    };
    let extended = when_at(&held.account, extend(2, false), later).unwrap();
    let r = reservation(&extended);
    assert_eq!((r.granted_units, r.reserved_credit), (4, Micros(40_000)));
    assert_eq!(r.expires_at, later + Duration::seconds(DEFAULT_TTL_SECONDS));
    assert!(when_at(&extended.account, extend(2, false), later).is_err());
    let partial = when_at(&extended.account, extend(2, true), later).unwrap();
    assert_eq!(reservation(&partial).granted_units, 5);
}

#[test]
fn reserving_again_with_the_same_id_returns_the_reservation_or_conflicts() {
    let account = given(PlanType::Free, 100_000);
    let held = when(
        &account,
        reserve("c1", ServiceType::CallPstnOutgoing, 2, false),
    )
    .unwrap();
    let again = when(
        &held.account,
        reserve("c1", ServiceType::CallPstnOutgoing, 2, false),
    )
    .unwrap();
    assert!(again.events.is_empty());
    assert_eq!(reservation(&again), reservation(&held));
    assert_eq!(
        when(
            &held.account,
            reserve("c1", ServiceType::CallPstnOutgoing, 3, false)
        ),
        Err(Rejection::ReservationIdReused)
    );
}

#[test]
fn tokens_reset_monthly_to_the_allowance_as_true_deltas() {
    let account = given(PlanType::Free, 0);
    let used = when(
        &account,
        debit(ServiceType::CallVn, Usage::DurationMs(30 * 60_000)),
    )
    .unwrap()
    .account;
    assert_eq!(used.balance_token, Tokens(70));
    let april = Utc.with_ymd_and_hms(2026, 4, 1, 0, 0, 0).unwrap();
    assert_eq!(
        when_at(&used, Command::Housekeep, april - Duration::seconds(1))
            .unwrap()
            .events
            .len(),
        0
    );
    let reset = when_at(&used, Command::Housekeep, april).unwrap();
    assert_eq!(types(&reset), ["tokens_expired", "tokens_granted"]);
    assert_eq!(reset.account.balance_token, Tokens(100));
    assert_eq!(
        reset.account.tm_next_topup,
        Some(Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 0).unwrap())
    );
    // Any command does the due reset first.
    let sms = when_at(&used, debit(ServiceType::Sms, Usage::Quantity(0)), april).unwrap();
    assert_eq!(sms.account.balance_token, Tokens(100));
}

#[test]
fn tokens_never_go_negative() {
    let account = given(PlanType::Free, 0);
    assert_eq!(
        when(&account, subtract(0, 101)),
        Err(Rejection::InsufficientTokens {
            required: Tokens(101),
            available: Tokens(100)
        })
    );
    let held = when(&account, reserve("vn", ServiceType::CallVn, 60, false))
        .unwrap()
        .account;
    assert_eq!(
        when(&held, subtract(0, 41)),
        Err(Rejection::InsufficientTokens {
            required: Tokens(41),
            available: Tokens(40)
        })
    );
}

#[test]
fn unlimited_plans_do_not_meter_tokens() {
    let account = given(PlanType::Unlimited, 0);
    let vn = when(
        &account,
        debit(ServiceType::CallVn, Usage::DurationMs(600_000)),
    )
    .unwrap();
    assert_eq!(
        (vn.account.balance_credit, vn.account.balance_token),
        (Micros(0), Tokens(0))
    );
    assert!(when(&account, debit(ServiceType::Sms, Usage::Quantity(1))).is_err());
}

#[test]
fn arithmetic_overflow_is_a_rejection_not_a_wrapped_number() {
    let account = given(PlanType::Free, 0);
    let rich = when(&account, add(i64::MAX, 0)).unwrap().account;
    assert_eq!(when(&rich, add(1, 0)), Err(Rejection::Overflow));
    assert_eq!(
        when(&rich, debit(ServiceType::Number, Usage::Quantity(i64::MAX))),
        Err(Rejection::Overflow)
    );
}

#[test]
fn malformed_commands_are_invalid_arguments() {
    let account = given(PlanType::Free, 100_000);
    let invalid =
        |r: Result<Executed, Rejection>| matches!(r, Err(Rejection::InvalidArgument { .. }));
    assert!(invalid(when(
        &account,
        reserve("c", ServiceType::Sms, 0, false)
    )));
    assert!(invalid(when(
        &account,
        reserve("", ServiceType::Sms, 1, false)
    )));
    assert!(invalid(when(
        &account,
        reserve(&"x".repeat(129), ServiceType::Sms, 1, false)
    )));
    let mut long_ttl = reserve("c", ServiceType::Sms, 1, false);
    if let Command::Reserve(r) = &mut long_ttl {
        r.ttl_seconds = MAX_TTL_SECONDS + 1;
    }
    assert!(invalid(when(&account, long_ttl)));
    assert!(invalid(when(&account, add(0, 0))));
    assert!(invalid(when(&account, add(-1, 5))));
    let held = when(&account, reserve("c", ServiceType::Sms, 1, false))
        .unwrap()
        .account;
    let wrong_measure = commit_ms("c", 1_000);
    assert!(invalid(when(&held, wrong_measure)));
}

#[test]
fn a_plan_change_applies_its_allowance_from_the_next_reset() {
    let account = given(PlanType::Free, 0);
    let upgrade = Command::Update(AccountPatch {
        plan_type: Some(PlanType::Basic),
        ..Default::default()
    });
    let basic = when(&account, upgrade).unwrap();
    assert_eq!(types(&basic), ["plan_changed"]);
    assert_eq!(basic.account.balance_token, Tokens(100));
    let april = Utc.with_ymd_and_hms(2026, 4, 1, 0, 0, 0).unwrap();
    assert_eq!(
        as_of(&basic.account, april).unwrap().balance_token,
        Tokens(1_000)
    );
    let nothing = Command::Update(AccountPatch {
        name: Some("Primary Account".into()),
        ..Default::default()
    });
    assert!(
        when(&account, nothing).unwrap().events.is_empty(),
        "unchanged fields are no event"
    );
}

#[test]
fn every_event_carries_the_balances_after_it_and_folds_back_to_the_state() {
    let account = given(PlanType::Free, 100_000);
    let held = when(&account, reserve("c1", ServiceType::CallVn, 120, false)).unwrap();
    let last = held.events.last().unwrap();
    assert_eq!(last.balances.reserved_token, Tokens(100));
    assert_eq!(last.balances.reserved_credit, Micros(20_000));
    assert_eq!(last.balances.available_credit, Micros(80_000));
    assert_eq!(last.version, held.account.version);
}

#[test]
fn a_quote_without_an_account_is_the_worst_case_and_with_one_the_real_split() {
    let rates = RateTable::default();
    let worst = quote(
        &rates,
        ServiceType::CallVn,
        Usage::DurationMs(300_000),
        None,
        t0(),
    )
    .unwrap();
    assert_eq!(
        (worst.price.units, worst.price.tokens, worst.price.credit),
        (5, Tokens(0), Micros(5_000))
    );
    assert_eq!((worst.affordable, worst.max_affordable_units), (None, None));
    let account = when(&given(PlanType::Free, 2_500), subtract(0, 97))
        .unwrap()
        .account;
    let real = quote(
        &rates,
        ServiceType::CallVn,
        Usage::DurationMs(300_000),
        Some(&account),
        t0(),
    )
    .unwrap();
    assert_eq!(
        (real.price.tokens, real.price.credit),
        (Tokens(3), Micros(2_000))
    );
    assert_eq!(
        (real.affordable, real.max_affordable_units),
        (Some(true), Some(5))
    );
    let too_long = quote(
        &rates,
        ServiceType::CallVn,
        Usage::DurationMs(600_000),
        Some(&account),
        t0(),
    )
    .unwrap();
    assert_eq!(too_long.affordable, Some(false));
}

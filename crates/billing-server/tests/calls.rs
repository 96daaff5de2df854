//! End to end over real gRPC: the life of calls and messages, as call control
//! drives it.

mod support;

use billing_proto::v1 as pb;
use pb::ServiceType as S;
use support::{TestApp, assert_status, commit_ms, reserve};
use tonic::Code;

#[tokio::test]
async fn five_minute_vn_call_is_paid_with_tokens_while_they_last() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let account = app.account(1_000_000).await;
    assert_eq!(
        account.balance_token, 100,
        "a free plan starts with 100 tokens"
    );

    let held = client
        .reserve(reserve("vn-1", &account.id, S::CallVn, 5))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            held.granted_units,
            held.reserved_token,
            held.reserved_credit
        ),
        (5, 5, 0)
    );
    assert_eq!(held.status(), pb::ReservationStatus::Active);
    let done = client
        .commit(commit_ms("vn-1", 300_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (done.billable_units, done.charged_token, done.charged_credit),
        (5, 5, 0)
    );
    let after = done.account.unwrap();
    assert_eq!((after.balance_token, after.balance_credit), (95, 1_000_000));
}

#[tokio::test]
async fn five_minute_vn_call_without_tokens_costs_5000_micros_and_overflow_splits() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let account = app.account(1_000_000).await;
    client
        .subtract_balance(pb::SubtractBalanceRequest {
            account_id: account.id.clone(),
            amount_token: 97,
            idempotency_key: "spend-tokens".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // Token overflow: 3 tokens + 2 x 1,000 micros.
    client
        .reserve(reserve("vn-overflow", &account.id, S::CallVn, 5))
        .await
        .unwrap();
    let done = client
        .commit(commit_ms("vn-overflow", 300_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((done.charged_token, done.charged_credit), (3, 2_000));
    // No tokens left: 5 x 1,000 micros.
    client
        .reserve(reserve("vn-credit", &account.id, S::CallVn, 5))
        .await
        .unwrap();
    let done = client
        .commit(commit_ms("vn-credit", 300_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((done.charged_token, done.charged_credit), (0, 5_000));
    assert_eq!(
        done.account.unwrap().balance_credit,
        1_000_000 - 2_000 - 5_000
    );
}

#[tokio::test]
async fn pstn_call_of_two_minutes_thirty_is_three_minutes_and_sms_are_per_target() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let account = app.account(1_000_000).await;
    client
        .reserve(reserve("pstn-1", &account.id, S::CallPstnOutgoing, 5))
        .await
        .unwrap();
    let done = client
        .commit(commit_ms("pstn-1", 150_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            done.billable_units,
            done.charged_credit,
            done.released_credit
        ),
        (3, 30_000, 20_000)
    );

    let sms = client
        .debit(pb::DebitRequest {
            account_id: account.id.clone(),
            service_type: S::Sms.into(),
            quantity: 10,
            idempotency_key: "sms-batch-1".into(),
            reference_id: "campaign-7".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((sms.billable_units, sms.charged_credit), (10, 100_000));
    assert_eq!(
        sms.account.unwrap().balance_credit,
        1_000_000 - 30_000 - 100_000
    );
}

#[tokio::test]
async fn rate_prices_the_worst_case_without_an_account_and_the_real_split_with_one() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let worst = client
        .rate(pb::RateRequest {
            service_type: S::CallVn.into(),
            duration_ms: 300_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            worst.billable_units,
            worst.token_amount,
            worst.credit_amount
        ),
        (5, 0, 5_000)
    );
    assert_eq!((worst.affordable, worst.max_affordable_units), (None, None));

    let account = app.account(2_500).await;
    let real = client
        .rate(pb::RateRequest {
            service_type: S::CallPstnOutgoing.into(),
            duration_ms: 150_000,
            account_id: account.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            real.credit_amount,
            real.affordable,
            real.max_affordable_units
        ),
        (30_000, Some(false), Some(0))
    );
    let vn = client
        .rate(pb::RateRequest {
            service_type: S::CallVn.into(),
            duration_ms: 300_000,
            account_id: account.id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (vn.token_amount, vn.credit_amount, vn.affordable),
        (5, 0, Some(true))
    );
    assert_eq!(
        vn.max_affordable_units,
        Some(102),
        "100 token minutes + 2 credit minutes"
    );
}

#[tokio::test]
async fn a_partial_reserve_grants_what_the_account_can_afford_and_says_so() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let account = app.account(25_000).await;
    let err = client
        .reserve(reserve("p-1", &account.id, S::CallPstnOutgoing, 3))
        .await
        .unwrap_err();
    assert_status(&err, Code::FailedPrecondition, "INSUFFICIENT_BALANCE");
    let mut partial = reserve("p-1", &account.id, S::CallPstnOutgoing, 3);
    partial.allow_partial = true;
    let held = client.reserve(partial).await.unwrap().into_inner();
    assert_eq!(
        (held.granted_units, held.requested_units, held.partial),
        (2, 3, true)
    );
    assert_eq!(held.reserved_credit, 20_000);
    assert_eq!(app.get(&account.id).await.available_credit, 5_000);
}

#[tokio::test]
async fn a_repeated_commit_returns_the_first_result_and_charges_once() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let account = app.account(100_000).await;
    client
        .reserve(reserve("twice", &account.id, S::CallPstnOutgoing, 3))
        .await
        .unwrap();
    let first = client
        .commit(commit_ms("twice", 61_000))
        .await
        .unwrap()
        .into_inner();
    let again = client
        .commit(commit_ms("twice", 170_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first);
    assert_eq!(app.get(&account.id).await.balance_credit, 100_000 - 20_000);
    let err = client
        .release(pb::ReleaseRequest {
            reservation_id: "twice".into(),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::FailedPrecondition, "RESERVATION_RESOLVED");
}

#[tokio::test]
async fn release_drops_the_hold_and_a_released_reservation_cannot_be_committed() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let account = app.account(50_000).await;
    client
        .reserve(reserve("rel", &account.id, S::CallPstnOutgoing, 3))
        .await
        .unwrap();
    assert_eq!(app.get(&account.id).await.reserved_credit, 30_000);
    let released = client
        .release(pb::ReleaseRequest {
            reservation_id: "rel".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(released.status(), pb::ReservationStatus::Released);
    let account_now = app.get(&account.id).await;
    assert_eq!(
        (account_now.reserved_credit, account_now.available_credit),
        (0, 50_000)
    );
    let again = client
        .release(pb::ReleaseRequest {
            reservation_id: "rel".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        again, released,
        "releasing again answers as the first release did"
    );
    let err = client.commit(commit_ms("rel", 60_000)).await.unwrap_err();
    assert_status(&err, Code::FailedPrecondition, "RESERVATION_RESOLVED");
}

#[tokio::test]
async fn an_expired_hold_stops_counting_at_once_and_the_sweeper_records_it() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let account = app.account(30_000).await;
    let mut short = reserve("short", &account.id, S::CallPstnOutgoing, 3);
    short.ttl_seconds = 1;
    client.reserve(short).await.unwrap();
    assert_eq!(app.get(&account.id).await.available_credit, 0);
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let after = app.get(&account.id).await;
    assert_eq!((after.reserved_credit, after.available_credit), (0, 30_000));
    let err = client.commit(commit_ms("short", 60_000)).await.unwrap_err();
    assert_status(&err, Code::FailedPrecondition, "RESERVATION_RESOLVED");

    // The sweeper writes the expiry down as an event.
    let account_id = account.id.parse().unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let events = app.store.feed().account_events(account_id).await.unwrap();
        if events.iter().any(|e| e.event_type == "reservation_expired") {
            let expired = events
                .iter()
                .find(|e| e.event_type == "reservation_expired")
                .unwrap();
            assert_eq!(expired.actor.role, "system");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sweeper did not record the expiry"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn extend_adds_units_to_a_live_reservation() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let account = app.account(45_000).await;
    let held = client
        .reserve(reserve("long", &account.id, S::CallPstnOutgoing, 2))
        .await
        .unwrap()
        .into_inner();
    let extend = |units, partial, key: &str| pb::ExtendRequest {
        reservation_id: "long".into(),
        additional_units: units,
        allow_partial: partial,
        idempotency_key: key.into(),
    };
    let more = client
        .extend(extend(2, false, "extend-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((more.granted_units, more.reserved_credit), (4, 40_000));
    assert!(more.expires_at.unwrap().seconds >= held.expires_at.unwrap().seconds);
    let err = client
        .extend(extend(1, false, "extend-2"))
        .await
        .unwrap_err();
    assert_status(&err, Code::FailedPrecondition, "INSUFFICIENT_BALANCE");
    let done = client
        .commit(commit_ms("long", 4 * 60_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.charged_credit, 40_000);
}

#[tokio::test]
async fn reserving_again_with_the_same_call_id_returns_the_existing_reservation() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let account = app.account(100_000).await;
    let first = client
        .reserve(reserve("same", &account.id, S::CallPstnOutgoing, 2))
        .await
        .unwrap()
        .into_inner();
    let again = client
        .reserve(reserve("same", &account.id, S::CallPstnOutgoing, 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first);
    assert_eq!(
        app.get(&account.id).await.reserved_credit,
        20_000,
        "held once"
    );
    let err = client
        .reserve(reserve("same", &account.id, S::CallPstnOutgoing, 3))
        .await
        .unwrap_err();
    assert_status(&err, Code::AlreadyExists, "RESERVATION_ID_REUSED");
    let other = app.account(100_000).await;
    let err = client
        .reserve(reserve("same", &other.id, S::CallPstnOutgoing, 2))
        .await
        .unwrap_err();
    assert_status(&err, Code::AlreadyExists, "RESERVATION_ID_REUSED");
}

#[tokio::test]
async fn a_frozen_account_refuses_new_spending_and_still_reads() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let account = app.account(100_000).await;
    app.freeze(&account.id).await;
    let err = client
        .reserve(reserve("f", &account.id, S::CallPstnOutgoing, 1))
        .await
        .unwrap_err();
    assert_status(&err, Code::FailedPrecondition, "ACCOUNT_FROZEN");
    assert_eq!(
        app.get(&account.id).await.status(),
        pb::AccountStatus::Frozen
    );
}

#[tokio::test]
async fn sixty_four_concurrent_reserves_never_cross_a_hard_limit() {
    let app = TestApp::spawn().await;
    let account = app.account(315_000).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(app.new_client().await);
    }
    let calls = (0..64).map(|n| {
        let mut client = clients[n % clients.len()].clone();
        let request = reserve(&format!("burst-{n}"), &account.id, S::CallPstnOutgoing, 2);
        tokio::spawn(async move { client.reserve(request).await })
    });
    let results = futures::future::join_all(calls).await;
    let mut granted = 0;
    for result in results {
        match result.unwrap() {
            Ok(_) => granted += 1,
            Err(status) => assert_status(&status, Code::FailedPrecondition, "INSUFFICIENT_BALANCE"),
        }
    }
    assert_eq!(
        granted, 15,
        "315,000 micros hold fifteen 2-minute PSTN calls"
    );
    let after = app.get(&account.id).await;
    assert_eq!(
        (after.reserved_credit, after.available_credit),
        (300_000, 15_000)
    );
}

#[tokio::test]
async fn twenty_concurrent_retries_of_one_debit_charge_once() {
    let app = TestApp::spawn().await;
    let account = app.account(12_000_000).await;
    let request = pb::DebitRequest {
        account_id: account.id.clone(),
        service_type: S::Number.into(),
        quantity: 1,
        idempotency_key: "buy-number-+15551234".into(),
        ..Default::default()
    };
    let retries = (0..20).map(|_| {
        let mut client = app.client.clone();
        let request = request.clone();
        tokio::spawn(async move { client.debit(request).await.map(|r| r.into_inner()) })
    });
    let replies: Vec<pb::DebitResponse> = futures::future::join_all(retries)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    assert!(
        replies.windows(2).all(|w| w[0] == w[1]),
        "every retry gets the first reply"
    );
    assert_eq!(replies[0].charged_credit, 5_000_000);
    assert_eq!(
        app.get(&account.id).await.balance_credit,
        7_000_000,
        "charged once"
    );
    let events = app
        .store
        .feed()
        .account_events(account.id.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(
        events.iter().filter(|e| e.event_type == "debited").count(),
        1
    );
}

#[tokio::test]
async fn two_replicas_on_one_database_never_cross_a_hard_limit_together() {
    let app = TestApp::spawn().await;
    let mut config = billing_server::ServeConfig::for_database(&app.db.url, support::JWT_SECRET);
    config.roles = vec![billing_server::Role::Api];
    let replica = billing_server::Application::build(config).await.unwrap();
    let replica_addr = replica.local_addr().unwrap();
    tokio::spawn(replica.run(std::future::pending()));
    let second = support::admin(replica_addr).await;

    let account = app.account(105_000).await;
    let calls = (0..40).map(|n| {
        let mut client = if n % 2 == 0 {
            app.client.clone()
        } else {
            second.clone()
        };
        let request = reserve(&format!("replica-{n}"), &account.id, S::CallPstnOutgoing, 1);
        tokio::spawn(async move { client.reserve(request).await.is_ok() })
    });
    let granted = futures::future::join_all(calls)
        .await
        .into_iter()
        .filter(|r| *r.as_ref().unwrap())
        .count();
    assert_eq!(granted, 10);
    assert_eq!(app.get(&account.id).await.available_credit, 5_000);
}

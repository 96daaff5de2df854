//! Bad input gets a clear gRPC status and changes nothing; retries with an
//! idempotency key apply once; a database outage is UNAVAILABLE.

mod support;

use billing_proto::v1 as pb;
use pb::ServiceType as S;
use support::{TestApp, assert_status, commit_ms, reserve};
use tonic::{Code, Status};

fn check<T: std::fmt::Debug>(
    case: &str,
    result: Result<tonic::Response<T>, Status>,
    code: Code,
    reason: &str,
) {
    match result {
        Ok(reply) => panic!("{case}: expected {code:?}, got {reply:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "{case}: {status:?}");
            assert_status(&status, code, reason);
        }
    }
}

async fn event_count(app: &TestApp) -> i64 {
    app.db
        .client()
        .await
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn every_bad_input_gets_its_status_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let mut c = app.client.clone();
    let account = app.account(100_000).await;
    let id = account.id.clone();
    let unknown = uuid::Uuid::new_v4().to_string();
    c.reserve(reserve("live", &id, S::CallPstnOutgoing, 1))
        .await
        .unwrap();
    c.add_balance(pb::AddBalanceRequest {
        account_id: id.clone(),
        amount_credit: 1,
        idempotency_key: "used".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let before_events = event_count(&app).await;
    let before = app.get(&id).await;

    let create = |f: fn(&mut pb::CreateBillingAccountRequest)| {
        let mut r = pb::CreateBillingAccountRequest {
            customer_id: uuid::Uuid::new_v4().to_string(),
            ..Default::default()
        };
        f(&mut r);
        r
    };
    const INVALID: Code = Code::InvalidArgument;
    const PRECONDITION: Code = Code::FailedPrecondition;
    check(
        "create: malformed customer id",
        c.create_billing_account(create(|r| r.customer_id = "nope".into()))
            .await,
        INVALID,
        "INVALID_ARGUMENT",
    );
    check(
        "create: lowercase currency",
        c.create_billing_account(create(|r| r.currency = "usd".into()))
            .await,
        INVALID,
        "INVALID_ARGUMENT",
    );
    check(
        "create: negative credit limit",
        c.create_billing_account(create(|r| r.credit_limit = -1))
            .await,
        INVALID,
        "INVALID_ARGUMENT",
    );
    check(
        "create: unknown plan",
        c.create_billing_account(create(|r| r.plan_type = 99)).await,
        INVALID,
        "INVALID_ARGUMENT",
    );
    check(
        "get: missing id",
        c.get_billing_account(pb::GetBillingAccountRequest { id: String::new() })
            .await,
        INVALID,
        "INVALID_ARGUMENT",
    );
    check(
        "get: unknown id",
        c.get_billing_account(pb::GetBillingAccountRequest {
            id: unknown.clone(),
        })
        .await,
        Code::NotFound,
        "ACCOUNT_NOT_FOUND",
    );

    let add = |credit: i64, token: i64, key: &str| pb::AddBalanceRequest {
        account_id: id.clone(),
        amount_credit: credit,
        amount_token: token,
        idempotency_key: key.into(),
        ..Default::default()
    };
    check(
        "add: zero amounts",
        c.add_balance(add(0, 0, "k-a")).await,
        INVALID,
        "INVALID_ARGUMENT",
    );
    check(
        "add: negative credit",
        c.add_balance(add(-5, 0, "k-b")).await,
        INVALID,
        "INVALID_ARGUMENT",
    );
    check(
        "add: no idempotency key",
        c.add_balance(add(5, 0, "")).await,
        INVALID,
        "INVALID_ARGUMENT",
    );
    check(
        "add: overflow",
        c.add_balance(add(i64::MAX, 0, "k-c")).await,
        INVALID,
        "AMOUNT_OUT_OF_RANGE",
    );
    check(
        "add: key reused for another request",
        c.add_balance(add(2, 0, "used")).await,
        Code::AlreadyExists,
        "IDEMPOTENCY_KEY_REUSED",
    );
    check(
        "add: unknown account",
        c.add_balance(pb::AddBalanceRequest {
            account_id: unknown.clone(),
            ..add(5, 0, "k-d")
        })
        .await,
        Code::NotFound,
        "ACCOUNT_NOT_FOUND",
    );
    let subtract = |credit: i64, token: i64| pb::SubtractBalanceRequest {
        account_id: id.clone(),
        amount_credit: credit,
        amount_token: token,
        idempotency_key: format!("sub-{credit}-{token}"),
        ..Default::default()
    };
    check(
        "subtract: more credit than available",
        c.subtract_balance(subtract(100_000, 0)).await,
        PRECONDITION,
        "INSUFFICIENT_BALANCE",
    );
    check(
        "subtract: more tokens than held",
        c.subtract_balance(subtract(0, 101)).await,
        PRECONDITION,
        "INSUFFICIENT_TOKENS",
    );

    let rate = |service: S, ms: i64, q: i64| pb::RateRequest {
        service_type: service.into(),
        duration_ms: ms,
        quantity: q,
        ..Default::default()
    };
    check(
        "rate: unspecified service",
        c.rate(rate(S::Unspecified, 60_000, 0)).await,
        INVALID,
        "INVALID_ARGUMENT",
    );
    check(
        "rate: sms priced by duration",
        c.rate(rate(S::Sms, 60_000, 1)).await,
        INVALID,
        "INVALID_ARGUMENT",
    );
    check(
        "rate: negative duration",
        c.rate(rate(S::CallVn, -1, 0)).await,
        INVALID,
        "INVALID_ARGUMENT",
    );

    let mut r = reserve("x", &id, S::CallPstnOutgoing, 0);
    check(
        "reserve: zero units",
        c.reserve(r.clone()).await,
        INVALID,
        "INVALID_ARGUMENT",
    );
    r.requested_units = 1;
    r.reservation_id = "x".repeat(129);
    check(
        "reserve: call id too long",
        c.reserve(r.clone()).await,
        INVALID,
        "INVALID_ARGUMENT",
    );
    r.reservation_id = String::new();
    check(
        "reserve: empty call id",
        c.reserve(r.clone()).await,
        INVALID,
        "INVALID_ARGUMENT",
    );
    r.reservation_id = "x".into();
    r.ttl_seconds = 86_401;
    check(
        "reserve: ttl too long",
        c.reserve(r.clone()).await,
        INVALID,
        "INVALID_ARGUMENT",
    );
    r.ttl_seconds = -1;
    check(
        "reserve: negative ttl",
        c.reserve(r.clone()).await,
        INVALID,
        "INVALID_ARGUMENT",
    );
    check(
        "reserve: unknown account",
        c.reserve(reserve("y", &unknown, S::CallPstnOutgoing, 1))
            .await,
        Code::NotFound,
        "ACCOUNT_NOT_FOUND",
    );
    check(
        "reserve: malformed account",
        c.reserve(reserve("y", "123", S::CallPstnOutgoing, 1)).await,
        INVALID,
        "INVALID_ARGUMENT",
    );
    check(
        "reserve: unaffordable",
        c.reserve(reserve("y", &id, S::Number, 1)).await,
        PRECONDITION,
        "INSUFFICIENT_BALANCE",
    );

    let extend = |rid: &str, units| pb::ExtendRequest {
        reservation_id: rid.into(),
        additional_units: units,
        allow_partial: false,
        idempotency_key: format!("extend-{rid}-{units}"),
    };
    check(
        "extend: unknown reservation",
        c.extend(extend("nope", 1)).await,
        Code::NotFound,
        "RESERVATION_NOT_FOUND",
    );
    check(
        "extend: zero units",
        c.extend(extend("live", 0)).await,
        INVALID,
        "INVALID_ARGUMENT",
    );
    check(
        "commit: unknown reservation",
        c.commit(commit_ms("nope", 1_000)).await,
        Code::NotFound,
        "RESERVATION_NOT_FOUND",
    );
    check(
        "commit: negative usage",
        c.commit(commit_ms("live", -1)).await,
        INVALID,
        "INVALID_ARGUMENT",
    );
    check(
        "commit: a call measured in quantity",
        c.commit(pb::CommitRequest {
            reservation_id: "live".into(),
            used_duration_ms: 0,
            used_quantity: 3,
        })
        .await,
        INVALID,
        "INVALID_ARGUMENT",
    );
    check(
        "release: unknown reservation",
        c.release(pb::ReleaseRequest {
            reservation_id: "nope".into(),
        })
        .await,
        Code::NotFound,
        "RESERVATION_NOT_FOUND",
    );

    let debit = |service: S, q: i64, key: &str| pb::DebitRequest {
        account_id: id.clone(),
        service_type: service.into(),
        quantity: q,
        idempotency_key: key.into(),
        ..Default::default()
    };
    check(
        "debit: unknown service",
        c.debit(pb::DebitRequest {
            service_type: 42,
            ..debit(S::Sms, 1, "d-a")
        })
        .await,
        INVALID,
        "INVALID_ARGUMENT",
    );
    check(
        "debit: negative quantity",
        c.debit(debit(S::Sms, -1, "d-b")).await,
        INVALID,
        "INVALID_ARGUMENT",
    );
    check(
        "debit: no idempotency key",
        c.debit(debit(S::Sms, 1, "")).await,
        INVALID,
        "INVALID_ARGUMENT",
    );
    check(
        "debit: unaffordable",
        c.debit(debit(S::Number, 1, "d-c")).await,
        PRECONDITION,
        "INSUFFICIENT_BALANCE",
    );
    check(
        "debit: overflow",
        c.debit(debit(S::Number, i64::MAX, "d-d")).await,
        INVALID,
        "AMOUNT_OUT_OF_RANGE",
    );

    assert_eq!(
        event_count(&app).await,
        before_events,
        "no bad request appended an event"
    );
    let after = app.get(&id).await;
    assert_eq!(after, before, "no bad request changed the account");
}

#[tokio::test]
async fn a_retried_add_balance_returns_the_first_response_and_applies_once() {
    let app = TestApp::spawn().await;
    let mut c = app.client.clone();
    let account = app.account(0).await;
    let request = pb::AddBalanceRequest {
        account_id: account.id.clone(),
        amount_credit: 20_000_000,
        reference_type: pb::ReferenceType::Payment.into(),
        reference_id: "stripe-pi-1".into(),
        idempotency_key: "payment-1".into(),
        ..Default::default()
    };
    let first = c.add_balance(request.clone()).await.unwrap().into_inner();
    app.add(&account.id, 1, 0).await;
    let again = c.add_balance(request).await.unwrap().into_inner();
    assert_eq!(
        again, first,
        "the first response, even though the account moved on"
    );
    assert_eq!(app.get(&account.id).await.balance_credit, 20_000_001);
}

#[tokio::test]
async fn a_retried_create_returns_the_same_account() {
    let app = TestApp::spawn().await;
    let mut c = app.client.clone();
    let request = pb::CreateBillingAccountRequest {
        customer_id: uuid::Uuid::new_v4().to_string(),
        name: "Primary Account".into(),
        plan_type: pb::PlanType::Basic.into(),
        idempotency_key: "signup-42".into(),
        ..Default::default()
    };
    let first = c
        .create_billing_account(request.clone())
        .await
        .unwrap()
        .into_inner();
    let again = c
        .create_billing_account(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.id, first.id);
    assert_eq!((first.balance_token, first.version), (1_000, 2));
}

#[tokio::test]
async fn a_database_outage_is_unavailable() {
    // Nothing listens on this port: the pool cannot connect.
    let dead = "postgres://postgres@127.0.0.1:1/billing";
    let db = billing_testkit::TestDb::new().await;
    let app = TestApp::spawn_with(db, |config| {
        *config = billing_server::ServeConfig {
            migrate: false,
            ..billing_server::ServeConfig::for_database(dead, support::JWT_SECRET)
        };
    })
    .await;
    let mut c = app.client.clone();
    let err = c
        .get_billing_account(pb::GetBillingAccountRequest {
            id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let err = c
        .reserve(reserve("r", &uuid::Uuid::new_v4().to_string(), S::Sms, 1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
}

#[tokio::test]
async fn health_is_open_and_reports_serving() {
    let app = TestApp::spawn().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "billing.v1.BillingService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    // Health needs no token; the billing service does.
    let mut anonymous = support::connect(app.addr, None).await;
    let err = anonymous
        .get_billing_account(pb::GetBillingAccountRequest {
            id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

//! Bad input gets a clear gRPC status and changes nothing; retries with an
//! idempotency key apply once; a database outage is UNAVAILABLE.

mod support;

use billing_proto::v1 as pb;
use pb::ServiceType as S;
use support::{TestApp, assert_status, commit_ms, reserve};
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

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
    let before_events = app.event_count().await;
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
        "create: three capitals that are no ISO 4217 currency",
        c.create_billing_account(create(|r| r.currency = "ABC".into()))
            .await,
        INVALID,
        "INVALID_ARGUMENT",
    );
    check(
        "create: a withdrawn currency",
        c.create_billing_account(create(|r| r.currency = "HRK".into()))
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
        "add: past the largest amount",
        c.add_balance(add(1_000_000_000_000_001, 0, "k-e")).await,
        INVALID,
        "AMOUNT_OUT_OF_RANGE",
    );
    check(
        "add: tokens past the largest amount",
        c.add_balance(add(0, 1_000_000_000_000_001, "k-f")).await,
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
        "extend: no idempotency key",
        c.extend(pb::ExtendRequest {
            idempotency_key: String::new(),
            ..extend("live", 1)
        })
        .await,
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
        app.event_count().await,
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
    // Serving once the first probe of the database has answered.
    let mut status = None;
    for _ in 0..50 {
        let reply = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "billing.v1.BillingService".into(),
            })
            .await
            .expect("registered from the start")
            .into_inner();
        status = Some(reply.status());
        if status == Some(tonic_health::pb::health_check_response::ServingStatus::Serving) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        status,
        Some(tonic_health::pb::health_check_response::ServingStatus::Serving)
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

/// The field an INVALID_ARGUMENT status names.
fn field(status: &Status) -> String {
    let details = status.get_error_details();
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo on {status:?}"));
    info.metadata.get("field").cloned().unwrap_or_default()
}

/// Asserts INVALID_ARGUMENT naming `expected`.
fn invalid_field<T: std::fmt::Debug>(
    case: &str,
    result: Result<tonic::Response<T>, Status>,
    expected: &str,
) {
    match result {
        Ok(reply) => panic!("{case}: expected INVALID_ARGUMENT, got {reply:?}"),
        Err(status) => {
            assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
            assert_eq!(field(&status), expected, "{case}: {status:?}");
        }
    }
}

#[tokio::test]
async fn text_postgresql_cannot_store_or_past_its_bound_is_refused_naming_the_field() {
    let app = TestApp::spawn().await;
    let mut c = app.client.clone();
    let account = app.account(100_000).await;
    let id = account.id.clone();
    c.reserve(reserve("live", &id, S::CallPstnOutgoing, 1))
        .await
        .unwrap();
    let before_events = app.event_count().await;
    let before = app.get(&id).await;

    // For each kind of text: a NUL, another control character, and one
    // byte (or character) past the kind's bound.
    let key_values = ["k\0".to_owned(), "k\u{1b}".to_owned(), "k".repeat(256)];
    let line_values = ["n\0".to_owned(), "a\nb".to_owned(), "n".repeat(256)];
    let prose_values = ["d\0".to_owned(), "d\u{7}".to_owned(), "d".repeat(2_049)];
    let call_id_values = ["r\0".to_owned(), "r\u{85}".to_owned(), "é".repeat(129)];
    let customer = uuid::Uuid::new_v4().to_string();
    for (n, v) in key_values.iter().enumerate() {
        let create = pb::CreateBillingAccountRequest {
            customer_id: customer.clone(),
            idempotency_key: v.clone(),
            ..Default::default()
        };
        invalid_field(
            "create: key",
            c.create_billing_account(create).await,
            "idempotency_key",
        );
        let add = pb::AddBalanceRequest {
            account_id: id.clone(),
            amount_credit: 1,
            idempotency_key: v.clone(),
            ..Default::default()
        };
        invalid_field(
            "add: key",
            c.add_balance(add.clone()).await,
            "idempotency_key",
        );
        let add = pb::AddBalanceRequest {
            reference_id: v.clone(),
            idempotency_key: format!("add-ref-{n}"),
            ..add
        };
        invalid_field(
            "add: reference id",
            c.add_balance(add).await,
            "reference_id",
        );
        let sub = pb::SubtractBalanceRequest {
            account_id: id.clone(),
            amount_credit: 1,
            reference_id: v.clone(),
            idempotency_key: format!("sub-ref-{n}"),
            ..Default::default()
        };
        invalid_field(
            "subtract: reference id",
            c.subtract_balance(sub).await,
            "reference_id",
        );
        let debit = pb::DebitRequest {
            account_id: id.clone(),
            service_type: S::Sms.into(),
            quantity: 1,
            reference_id: v.clone(),
            idempotency_key: format!("debit-ref-{n}"),
            ..Default::default()
        };
        invalid_field(
            "debit: reference id",
            c.debit(debit.clone()).await,
            "reference_id",
        );
        let debit = pb::DebitRequest {
            reference_id: String::new(),
            idempotency_key: v.clone(),
            ..debit
        };
        invalid_field("debit: key", c.debit(debit).await, "idempotency_key");
        let extend = pb::ExtendRequest {
            reservation_id: "live".into(),
            additional_units: 1,
            allow_partial: false,
            idempotency_key: v.clone(),
        };
        invalid_field("extend: key", c.extend(extend).await, "idempotency_key");
        let update = pb::UpdateBillingAccountRequest {
            id: id.clone(),
            name: Some("renamed".into()),
            idempotency_key: v.clone(),
            ..Default::default()
        };
        invalid_field(
            "update: key",
            c.update_billing_account(update).await,
            "idempotency_key",
        );
    }
    for v in &line_values {
        for field_name in ["name", "payment_type", "payment_method"] {
            let mut create = pb::CreateBillingAccountRequest {
                customer_id: customer.clone(),
                ..Default::default()
            };
            let mut update = pb::UpdateBillingAccountRequest {
                id: id.clone(),
                ..Default::default()
            };
            match field_name {
                "name" => (create.name, update.name) = (v.clone(), Some(v.clone())),
                "payment_type" => {
                    (create.payment_type, update.payment_type) = (v.clone(), Some(v.clone()));
                }
                _ => (create.payment_method, update.payment_method) = (v.clone(), Some(v.clone())),
            }
            invalid_field(
                "create: line",
                c.create_billing_account(create).await,
                field_name,
            );
            invalid_field(
                "update: line",
                c.update_billing_account(update).await,
                field_name,
            );
        }
    }
    for (n, v) in prose_values.iter().enumerate() {
        let create = pb::CreateBillingAccountRequest {
            customer_id: customer.clone(),
            detail: v.clone(),
            ..Default::default()
        };
        invalid_field(
            "create: detail",
            c.create_billing_account(create).await,
            "detail",
        );
        let update = pb::UpdateBillingAccountRequest {
            id: id.clone(),
            detail: Some(v.clone()),
            ..Default::default()
        };
        invalid_field(
            "update: detail",
            c.update_billing_account(update).await,
            "detail",
        );
        let add = pb::AddBalanceRequest {
            account_id: id.clone(),
            amount_credit: 1,
            note: v.clone(),
            idempotency_key: format!("add-note-{n}"),
            ..Default::default()
        };
        invalid_field("add: note", c.add_balance(add).await, "note");
        let sub = pb::SubtractBalanceRequest {
            account_id: id.clone(),
            amount_credit: 1,
            note: v.clone(),
            idempotency_key: format!("sub-note-{n}"),
            ..Default::default()
        };
        invalid_field("subtract: note", c.subtract_balance(sub).await, "note");
    }
    for (n, v) in call_id_values.iter().enumerate() {
        invalid_field(
            "reserve: call id",
            c.reserve(reserve(v, &id, S::CallPstnOutgoing, 1)).await,
            "reservation_id",
        );
        let extend = pb::ExtendRequest {
            reservation_id: v.clone(),
            additional_units: 1,
            allow_partial: false,
            idempotency_key: format!("extend-{n}"),
        };
        invalid_field("extend: call id", c.extend(extend).await, "reservation_id");
        invalid_field(
            "commit: call id",
            c.commit(commit_ms(v, 1_000)).await,
            "reservation_id",
        );
        let release = pb::ReleaseRequest {
            reservation_id: v.clone(),
        };
        invalid_field(
            "release: call id",
            c.release(release).await,
            "reservation_id",
        );
    }
    // Identifiers and codes: a NUL makes them malformed, not a database error.
    let balance = pb::GetBalanceRequest {
        account_id: id.clone(),
        currency: "US\0".into(),
        as_of: None,
    };
    invalid_field(
        "balance: currency",
        c.get_balance(balance).await,
        "currency",
    );
    let create = pb::CreateBillingAccountRequest {
        customer_id: format!("{customer}\0"),
        ..Default::default()
    };
    invalid_field(
        "create: customer",
        c.create_billing_account(create).await,
        "customer_id",
    );
    let listing = pb::ListTransactionsRequest {
        account_id: id.clone(),
        page_token: "v1.\0".into(),
        ..Default::default()
    };
    invalid_field(
        "ledger: page token",
        c.list_transactions(listing).await,
        "page_token",
    );

    assert_eq!(
        app.event_count().await,
        before_events,
        "nothing was appended"
    );
    assert_eq!(app.get(&id).await, before, "the account is unchanged");
}

#[tokio::test]
async fn timestamps_outside_the_supported_range_are_invalid_argument() {
    let app = TestApp::spawn().await;
    let mut c = app.client.clone();
    let account = app.account(1_000).await;
    let at = |seconds, nanos| Some(prost_types::Timestamp { seconds, nanos });
    // 5000 BC is within chrono's range and before PostgreSQL's; the rest
    // are past one end or the other, or not a valid instant.
    let bad = [
        at(-219_923_510_400, 0),
        at(-62_135_596_801, 0),
        at(253_402_300_800, 0),
        at(i64::MAX, 0),
        at(i64::MIN, 0),
        at(0, -1),
        at(0, 1_000_000_000),
    ];
    for t in bad {
        let balance = pb::GetBalanceRequest {
            account_id: account.id.clone(),
            currency: String::new(),
            as_of: t,
        };
        invalid_field(
            &format!("as_of {t:?}"),
            c.get_balance(balance).await,
            "as_of",
        );
        let from = pb::ListTransactionsRequest {
            account_id: account.id.clone(),
            start_time: t,
            ..Default::default()
        };
        invalid_field(
            &format!("start {t:?}"),
            c.list_transactions(from).await,
            "start_time",
        );
        let until = pb::ListTransactionsRequest {
            account_id: account.id.clone(),
            end_time: t,
            ..Default::default()
        };
        invalid_field(
            &format!("end {t:?}"),
            c.list_transactions(until).await,
            "end_time",
        );
    }
    // The ends themselves are fine.
    let first = pb::GetBalanceRequest {
        account_id: account.id.clone(),
        currency: String::new(),
        as_of: at(253_402_300_799, 999_999_999),
    };
    c.get_balance(first).await.unwrap();
    let ledger = pb::ListTransactionsRequest {
        account_id: account.id.clone(),
        start_time: at(-62_135_596_800, 0),
        end_time: at(253_402_300_799, 0),
        ..Default::default()
    };
    c.list_transactions(ledger).await.unwrap();
}

#[tokio::test]
async fn errors_never_echo_more_than_a_short_prefix_of_the_input() {
    let app = TestApp::spawn().await;
    let mut c = app.client.clone();
    let account = app.account(1_000).await;
    let long = "Q".repeat(10_000);
    let balance = pb::GetBalanceRequest {
        account_id: account.id.clone(),
        currency: long.clone(),
        as_of: None,
    };
    let err = c.get_balance(balance).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(!err.message().contains("QQQQ"), "{}", err.message());
    assert!(
        err.details().len() < 512,
        "{} bytes of details",
        err.details().len()
    );
    // A real currency that the account does not hold is a mismatch.
    let balance = pb::GetBalanceRequest {
        account_id: account.id.clone(),
        currency: "EUR".into(),
        as_of: None,
    };
    let err = c.get_balance(balance).await.unwrap_err();
    assert_status(&err, Code::InvalidArgument, "CURRENCY_MISMATCH");

    // A role refused an RPC whose name is 10 KB long.
    let mut grpc = tonic::client::Grpc::new(support::channel(app.addr).await);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(Vec::new());
    let token = support::token("svc", "service", None);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let err = grpc
        .unary(request, support::rpc_path(&long), support::RawCodec)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.details().len() < 512,
        "{} bytes of details",
        err.details().len()
    );
}

#[tokio::test]
async fn a_retried_extend_returns_the_first_answer_and_extends_once() {
    let app = TestApp::spawn().await;
    let mut c = app.client.clone();
    let account = app.account(100_000).await;
    c.reserve(reserve("call-1", &account.id, S::CallPstnOutgoing, 2))
        .await
        .unwrap();
    let request = pb::ExtendRequest {
        reservation_id: "call-1".into(),
        additional_units: 3,
        allow_partial: false,
        idempotency_key: "extend-call-1-a".into(),
    };
    let first = c.extend(request.clone()).await.unwrap().into_inner();
    assert_eq!(first.granted_units, 5);
    // The server "died" before replying: the client sends it again.
    let again = c.extend(request.clone()).await.unwrap().into_inner();
    assert_eq!(again, first, "the first answer");
    let after = app.get(&account.id).await;
    assert_eq!(
        after.reserved_credit, 50_000,
        "five minutes held, not eight"
    );
    assert_eq!(
        after.version, first.account_version,
        "nothing recorded again"
    );
    let err = c
        .extend(pb::ExtendRequest {
            additional_units: 1,
            ..request
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED");
}

#[tokio::test]
async fn a_min_version_the_account_has_not_reached_is_answered_at_once() {
    let app = TestApp::spawn().await;
    let mut c = app.client.clone();
    let account = app.account(1_000).await;
    let started = std::time::Instant::now();
    let err = c
        .list_transactions(pb::ListTransactionsRequest {
            account_id: account.id.clone(),
            min_version: account.version + 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::OutOfRange, "VERSION_AHEAD_OF_ACCOUNT");
    assert!(
        started.elapsed() < std::time::Duration::from_millis(500),
        "no waiting: {:?}",
        started.elapsed()
    );
    // The version it has is waited for and read.
    let page = c
        .list_transactions(pb::ListTransactionsRequest {
            account_id: account.id.clone(),
            min_version: account.version,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.transactions[0].version, account.version);
    let err = c
        .list_transactions(pb::ListTransactionsRequest {
            account_id: uuid::Uuid::new_v4().to_string(),
            min_version: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::NotFound, "ACCOUNT_NOT_FOUND");
}

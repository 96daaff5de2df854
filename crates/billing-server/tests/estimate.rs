//! Cost estimates and plan comparison over real gRPC: the seed's worked
//! examples, an account's real tokens and credit, who may ask, and bad
//! input.

mod support;

use billing_proto::v1 as pb;
use pb::ServiceType as S;
use support::{TestApp, assert_status};
use tonic::Code;
use tonic_types::StatusExt;
use uuid::Uuid;

fn calls(service: S, count: i64, duration_ms: i64) -> pb::UsageLine {
    pb::UsageLine {
        service_type: service.into(),
        count,
        duration_ms,
        quantity: 0,
    }
}

fn messages(service: S, count: i64, quantity: i64) -> pb::UsageLine {
    pb::UsageLine {
        service_type: service.into(),
        count,
        duration_ms: 0,
        quantity,
    }
}

fn basket(account_id: &str, lines: Vec<pb::UsageLine>) -> pb::EstimateCostRequest {
    pb::EstimateCostRequest {
        account_id: account_id.to_owned(),
        lines,
    }
}

/// The ErrorInfo `field` of a status.
fn field_of(status: &tonic::Status) -> String {
    status
        .get_error_details()
        .error_info()
        .and_then(|info| info.metadata.get("field").cloned())
        .unwrap_or_default()
}

#[tokio::test]
async fn the_seed_campaign_is_one_dollar_of_calls_and_two_of_sms() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    // 50 PSTN calls of 2 minutes and 200 SMS, as the tutorial estimates.
    let reply = client
        .estimate_cost(basket(
            "",
            vec![
                calls(S::CallPstnOutgoing, 50, 120_000),
                messages(S::Sms, 200, 1),
            ],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.lines.len(), 2);
    assert_eq!(reply.lines[0].billable_units, 100);
    assert_eq!(reply.lines[0].credit_amount, 1_000_000);
    assert_eq!(reply.lines[0].rate_credit_per_unit, 10_000);
    assert_eq!(reply.lines[1].billable_units, 200);
    assert_eq!(reply.lines[1].credit_amount, 2_000_000);
    assert_eq!(reply.total_credit, 3_000_000);
    assert_eq!(reply.total_token, 0);
    assert_eq!(reply.affordable, None);
    assert_eq!(reply.account_version, None);
}

#[tokio::test]
async fn every_item_is_rounded_on_its_own() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let reply = client
        .estimate_cost(basket("", vec![calls(S::CallPstnOutgoing, 50, 135_000)]))
        .await
        .unwrap()
        .into_inner();
    // 50 calls of 2 min 15 s: 3 minutes each, not 112.5 minutes rounded once.
    assert_eq!(reply.lines[0].billable_units, 150);
    assert_eq!(reply.total_credit, 1_500_000);
}

#[tokio::test]
async fn with_an_account_the_estimate_uses_its_available_tokens_and_credit() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    // A free-plan account: 100 tokens, and $0.10 of credit.
    let account = app.account(100_000).await;
    // A live hold on 5 VN minutes takes 5 of the tokens.
    client
        .reserve(support::reserve("call-1", &account.id, S::CallVn, 5))
        .await
        .unwrap();
    let lines = vec![
        // 30 VN calls of 3 minutes: 90 of the 95 available tokens.
        calls(S::CallVn, 30, 180_000),
        // 2 TTS calls of 3 minutes (9 tokens each): the first finds 5
        // tokens, one minute's worth; the second finds 2, not enough.
        calls(S::Tts, 2, 180_000),
    ];
    let reply = client
        .estimate_cost(basket(&account.id, lines.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.lines[0].token_amount, 90);
    assert_eq!(reply.lines[0].credit_amount, 0);
    assert_eq!(reply.lines[1].token_amount, 3);
    assert_eq!(reply.lines[1].credit_amount, 5 * 30_000);
    assert_eq!((reply.total_token, reply.total_credit), (93, 150_000));
    assert_eq!(reply.affordable, Some(false), "$0.15 with $0.10 available");
    let version = reply.account_version.unwrap();

    // Exactly enough credit is affordable under a hard limit.
    app.add(&account.id, 50_000, 0).await;
    let reply = client
        .estimate_cost(basket(&account.id, lines))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.total_credit, 150_000);
    assert_eq!(reply.affordable, Some(true));
    assert_eq!(reply.account_version, Some(version + 1));
    // Estimating changes nothing.
    assert_eq!(app.get(&account.id).await.version, version + 1);
}

#[tokio::test]
async fn a_frozen_account_cannot_afford_anything_that_costs_credit() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let account = app.account(10_000_000).await;
    app.freeze(&account.id).await;
    let reply = client
        .estimate_cost(basket(&account.id, vec![messages(S::Sms, 1, 1)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.affordable, Some(false));
}

/// The tutorial's `recommend_plan`: overflow tokens split in proportion to
/// each service's share of the tokens needed, truncated as its `int()` does.
fn tutorial_proportional_overflow(allowance: i64, vn_minutes: i64, tts_minutes: i64) -> i64 {
    let (vn_tokens, tts_tokens) = (vn_minutes, tts_minutes * 3);
    let total = vn_tokens + tts_tokens;
    if total <= allowance {
        return 0;
    }
    let overflow = total - allowance;
    (overflow * vn_tokens / total) * 1_000 + (overflow * tts_tokens / total / 3) * 30_000
}

#[tokio::test]
async fn the_tutorial_month_on_each_plan_best_worst_and_the_proportional_formula() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    // 500 VN minutes and 100 TTS minutes a month.
    let reply = client
        .compare_plans(pb::ComparePlansRequest {
            monthly_usage: vec![calls(S::CallVn, 500, 60_000), calls(S::Tts, 100, 60_000)],
        })
        .await
        .unwrap()
        .into_inner();
    let plans: Vec<_> = reply.plans.iter().map(|p| p.plan_type()).collect();
    assert_eq!(
        plans,
        [
            pb::PlanType::Free,
            pb::PlanType::Basic,
            pb::PlanType::Professional
        ]
    );
    let free = &reply.plans[0];
    assert_eq!((free.monthly_tokens, free.tokens_needed), (100, 800));
    // Best: 33 TTS minutes and 1 VN minute from tokens.
    assert_eq!(free.overflow_credit_best, 2_509_000);
    // Worst: the 100 tokens on VN minutes.
    assert_eq!(free.overflow_credit_worst, 3_400_000);
    // The tutorial's proportional split says 3,047,000: inside the range,
    // but no order of arrival charges it.
    let proportional = tutorial_proportional_overflow(100, 500, 100);
    assert_eq!(proportional, 3_047_000);
    assert!(free.overflow_credit_best < proportional && proportional < free.overflow_credit_worst);
    // 800 tokens fit in the basic plan.
    assert_eq!(reply.plans[1].overflow_credit_worst, 0);
    assert_eq!(reply.cheapest_plan(), pb::PlanType::Basic);
    assert_eq!(reply.credit_only_amount, 0);
}

#[tokio::test]
async fn who_may_estimate_against_which_account() {
    let app = TestApp::spawn().await;
    let customer = Uuid::new_v4();
    let own = app
        .account_with(
            1_000_000,
            pb::CreateBillingAccountRequest {
                customer_id: customer.to_string(),
                ..Default::default()
            },
        )
        .await;
    let other = app.account(1_000_000).await;
    let line = || vec![messages(S::Sms, 3, 1)];

    let mut customer_admin = app.client_as("customer_admin", Some(customer)).await;
    let reply = customer_admin
        .estimate_cost(basket(&own.id, line()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.affordable, Some(true));
    let refused = customer_admin
        .estimate_cost(basket(&other.id, line()))
        .await
        .unwrap_err();
    assert_status(&refused, Code::PermissionDenied, "PERMISSION_DENIED");
    // An account that does not exist looks the same to a customer admin.
    let missing = customer_admin
        .estimate_cost(basket(&Uuid::new_v4().to_string(), line()))
        .await
        .unwrap_err();
    assert_status(&missing, Code::PermissionDenied, "PERMISSION_DENIED");
    // Comparing plans names no account.
    customer_admin
        .compare_plans(pb::ComparePlansRequest {
            monthly_usage: vec![calls(S::CallVn, 1, 60_000)],
        })
        .await
        .unwrap();

    let mut service = app.client_as("service", None).await;
    service
        .estimate_cost(basket(&other.id, line()))
        .await
        .unwrap();
    let mut admin = app.client.clone();
    let missing = admin
        .estimate_cost(basket(&Uuid::new_v4().to_string(), line()))
        .await
        .unwrap_err();
    assert_status(&missing, Code::NotFound, "ACCOUNT_NOT_FOUND");
}

#[tokio::test]
async fn bad_usage_lines_are_invalid_arguments_naming_the_field() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let before = app.event_count().await;
    let cases: Vec<(pb::UsageLine, &str, &str)> = vec![
        (calls(S::CallVn, -1, 60_000), "count", "INVALID_ARGUMENT"),
        (
            calls(S::CallVn, 1, -60_000),
            "duration_ms",
            "INVALID_ARGUMENT",
        ),
        (
            messages(S::Sms, 1_000_000_001, 1),
            "count",
            "AMOUNT_OUT_OF_RANGE",
        ),
        (
            messages(S::Sms, 1, 1_000_000_001),
            "quantity",
            "AMOUNT_OUT_OF_RANGE",
        ),
        (
            calls(S::CallVn, 1, 1_000_000_000_001),
            "duration_ms",
            "AMOUNT_OUT_OF_RANGE",
        ),
        (
            pb::UsageLine {
                service_type: 99,
                count: 1,
                ..Default::default()
            },
            "service_type",
            "INVALID_ARGUMENT",
        ),
        (
            pb::UsageLine {
                service_type: 0,
                count: 1,
                quantity: 1,
                ..Default::default()
            },
            "service_type",
            "INVALID_ARGUMENT",
        ),
        // A duration on a per-message service.
        (
            pb::UsageLine {
                service_type: S::Sms.into(),
                count: 1,
                duration_ms: 60_000,
                quantity: 1,
            },
            "",
            "INVALID_ARGUMENT",
        ),
        // Each bound is fine, the total is past any balance: 10^9 numbers
        // of 10^9 each at $5.
        (
            messages(S::Number, 1_000_000_000, 1_000_000_000),
            "",
            "AMOUNT_OUT_OF_RANGE",
        ),
    ];
    for (line, field, reason) in cases {
        let shown = format!("{line:?}");
        let status = client
            .estimate_cost(basket("", vec![calls(S::Sms, 0, 0), line]))
            .await
            .expect_err(&shown);
        assert_status(&status, Code::InvalidArgument, reason);
        if !field.is_empty() {
            assert_eq!(field_of(&status), format!("lines.{field}"), "{shown}");
        }
        let status = client
            .compare_plans(pb::ComparePlansRequest {
                monthly_usage: vec![line],
            })
            .await
            .expect_err(&shown);
        assert_status(&status, Code::InvalidArgument, reason);
        if !field.is_empty() {
            assert_eq!(
                field_of(&status),
                format!("monthly_usage.{field}"),
                "{shown}"
            );
        }
    }
    // Too many lines.
    let many = vec![messages(S::Sms, 1, 1); 101];
    let status = client
        .estimate_cost(basket("", many.clone()))
        .await
        .unwrap_err();
    assert_status(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(field_of(&status), "lines");
    let status = client
        .compare_plans(pb::ComparePlansRequest {
            monthly_usage: many,
        })
        .await
        .unwrap_err();
    assert_eq!(field_of(&status), "monthly_usage");
    // A hundred is fine.
    client
        .estimate_cost(basket("", vec![messages(S::Sms, 1, 1); 100]))
        .await
        .unwrap();
    let status = client
        .estimate_cost(basket("not-a-uuid", vec![]))
        .await
        .unwrap_err();
    assert_eq!(field_of(&status), "account_id");
    assert_eq!(app.event_count().await, before, "estimates change nothing");
}

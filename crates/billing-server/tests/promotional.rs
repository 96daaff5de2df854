//! Promotional credit end to end over real gRPC: granted with an expiry,
//! spent before paid credit, never refunded with paid credit, removed only
//! explicitly, expired at its time (and recorded by the sweeper), and the
//! ledger summing to both buckets.

mod support;

use std::time::Duration;

use billing_proto::v1 as pb;
use support::{TestApp, assert_status};
use tonic::Code;

const SMS: i64 = 10_000;

/// `ms` milliseconds from now (before now when negative).
fn in_ms(ms: i64) -> prost_types::Timestamp {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let at = i64::try_from(now.as_millis()).unwrap() + ms;
    prost_types::Timestamp {
        seconds: at.div_euclid(1_000),
        nanos: i32::try_from(at.rem_euclid(1_000) * 1_000_000).unwrap(),
    }
}

fn promote(
    account_id: &str,
    credit: i64,
    expires_at: Option<prost_types::Timestamp>,
) -> pb::AddBalanceRequest {
    pb::AddBalanceRequest {
        account_id: account_id.to_owned(),
        amount_credit: credit,
        reference_type: pb::ReferenceType::Promotion.into(),
        reference_id: "signup-2026".into(),
        idempotency_key: uuid::Uuid::new_v4().to_string(),
        bucket: pb::BalanceBucket::Promotional.into(),
        expires_at,
        ..Default::default()
    }
}

fn subtract(
    account_id: &str,
    credit: i64,
    bucket: pb::BalanceBucket,
) -> pb::SubtractBalanceRequest {
    pb::SubtractBalanceRequest {
        account_id: account_id.to_owned(),
        amount_credit: credit,
        reference_type: pb::ReferenceType::Refund.into(),
        idempotency_key: uuid::Uuid::new_v4().to_string(),
        bucket: bucket.into(),
        ..Default::default()
    }
}

fn sms(account_id: &str, count: i64) -> pb::DebitRequest {
    pb::DebitRequest {
        account_id: account_id.to_owned(),
        service_type: pb::ServiceType::Sms.into(),
        quantity: count,
        idempotency_key: uuid::Uuid::new_v4().to_string(),
        ..Default::default()
    }
}

async fn balance(app: &TestApp, account_id: &str) -> pb::Balance {
    app.client
        .clone()
        .get_balance(pb::GetBalanceRequest {
            account_id: account_id.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// The whole ledger once the projector has reached `version`, oldest first.
async fn ledger(app: &TestApp, account_id: &str, version: i64) -> Vec<pb::Transaction> {
    let mut page = app
        .client
        .clone()
        .list_transactions(pb::ListTransactionsRequest {
            account_id: account_id.to_owned(),
            limit: 100,
            min_version: version,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    page.transactions.reverse();
    page.transactions
}

/// Each balance is the sum of the ledger's movements in its bucket, and the
/// last entry's balances-after agree.
fn assert_ledger_sums(entries: &[pb::Transaction], paid: i64, promotional: i64) {
    let sum_paid: i64 = entries.iter().map(|t| t.amount_credit).sum();
    let sum_promotional: i64 = entries.iter().map(|t| t.amount_promotional).sum();
    assert_eq!(
        (sum_paid, sum_promotional),
        (paid, promotional),
        "{entries:#?}"
    );
    let last = entries.last().unwrap();
    assert_eq!(
        (last.balance_credit_after, last.balance_promotional_after),
        (paid, promotional)
    );
}

#[tokio::test]
async fn promotional_credit_is_spent_first_and_never_refunded_as_paid_credit() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let account = app.account(100_000).await;
    let id = account.id.as_str();

    let granted = client
        .add_balance(promote(id, 5 * SMS, Some(in_ms(3_600_000))))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!(granted.balance_credit, 100_000, "paid credit only");
    assert_eq!(granted.balance_promotional, 5 * SMS);
    assert_eq!(granted.available_credit, 150_000);
    assert_eq!(granted.promotional_grants.len(), 1);
    let grant = &granted.promotional_grants[0];
    assert_eq!(
        (grant.grant_version, grant.remaining),
        (granted.version, 5 * SMS)
    );
    assert!(grant.expires_at.is_some());
    let b = balance(&app, id).await;
    assert_eq!(
        (b.balance, b.promotional_balance, b.available_balance),
        (100_000, 5 * SMS, 150_000)
    );

    // A refund of paid credit finds only the paid credit.
    let events = app.event_count().await;
    let err = client
        .subtract_balance(subtract(id, 100_001, pb::BalanceBucket::Paid))
        .await
        .unwrap_err();
    assert_status(&err, Code::FailedPrecondition, "INSUFFICIENT_BALANCE");
    assert_eq!(app.event_count().await, events, "a refusal writes nothing");

    // Six messages: five on promotional credit, one on paid.
    let charged = client.debit(sms(id, 6)).await.unwrap().into_inner();
    assert_eq!(charged.charged_credit, 6 * SMS);
    let after = charged.account.unwrap();
    assert_eq!(
        (after.balance_credit, after.balance_promotional),
        (100_000 - SMS, 0)
    );

    let entries = ledger(&app, id, after.version).await;
    let kinds: Vec<_> = entries.iter().map(|t| t.transaction_type()).collect();
    assert!(
        kinds.contains(&pb::TransactionType::PromotionalGrant),
        "{kinds:?}"
    );
    let usage = entries.last().unwrap();
    assert_eq!(usage.transaction_type(), pb::TransactionType::Usage);
    assert_eq!(
        (usage.amount_credit, usage.amount_promotional),
        (-SMS, -5 * SMS),
        "one entry, both buckets"
    );
    assert_ledger_sums(&entries, 100_000 - SMS, 0);
}

#[tokio::test]
async fn an_admin_removes_promotional_credit_explicitly() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let account = app.account(1_000).await;
    let id = account.id.as_str();
    client.add_balance(promote(id, 7_000, None)).await.unwrap();

    let events = app.event_count().await;
    let err = client
        .subtract_balance(subtract(id, 7_001, pb::BalanceBucket::Promotional))
        .await
        .unwrap_err();
    assert_status(
        &err,
        Code::FailedPrecondition,
        "INSUFFICIENT_PROMOTIONAL_BALANCE",
    );
    assert_eq!(app.event_count().await, events);

    let after = client
        .subtract_balance(subtract(id, 3_000, pb::BalanceBucket::Promotional))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!(
        (after.balance_credit, after.balance_promotional),
        (1_000, 4_000)
    );
    let entries = ledger(&app, id, after.version).await;
    let removal = entries.last().unwrap();
    assert_eq!(removal.transaction_type(), pb::TransactionType::Refund);
    assert_eq!(
        (removal.amount_credit, removal.amount_promotional),
        (0, -3_000)
    );
    assert_ledger_sums(&entries, 1_000, 4_000);
}

#[tokio::test]
async fn expired_promotional_credit_stops_counting_at_its_time_and_the_sweeper_records_it() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let account = app.account(2_000).await;
    let id = account.id.as_str();
    let granted = client
        .add_balance(promote(id, 8_000, Some(in_ms(1_500))))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!(granted.available_credit, 10_000);

    tokio::time::sleep(Duration::from_millis(1_600)).await;
    // Exact at read time, whether or not the sweeper has run.
    let now = app.get(id).await;
    assert_eq!((now.balance_promotional, now.available_credit), (0, 2_000));
    assert!(now.promotional_grants.is_empty());
    assert_eq!(balance(&app, id).await.promotional_balance, 0);

    let account_id = id.parse().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let expired = loop {
        let events = app.store.feed().account_events(account_id).await.unwrap();
        if let Some(e) = events.iter().find(|e| e.event_type == "promotion_expired") {
            break e.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sweeper did not record the expiry"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(expired.actor.role, "system");

    let entries = ledger(&app, id, expired.version).await;
    let expiry = entries.last().unwrap();
    assert_eq!(
        expiry.transaction_type(),
        pb::TransactionType::PromotionalExpiry
    );
    assert_eq!(expiry.amount_promotional, -8_000);
    assert_ledger_sums(&entries, 2_000, 0);
}

#[tokio::test]
async fn bad_promotional_requests_are_refused_and_change_nothing() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let account = app.account(1_000).await;
    let id = account.id.as_str();
    let events = app.event_count().await;

    let with_tokens = pb::AddBalanceRequest {
        amount_token: 5,
        ..promote(id, 1_000, None)
    };
    let past = promote(id, 1_000, Some(in_ms(-1_000)));
    let paid_expiring = pb::AddBalanceRequest {
        bucket: pb::BalanceBucket::Paid.into(),
        ..promote(id, 1_000, Some(in_ms(60_000)))
    };
    let unknown_bucket = pb::AddBalanceRequest {
        bucket: 7,
        ..promote(id, 1_000, None)
    };
    let bad_nanos = promote(
        id,
        1_000,
        Some(prost_types::Timestamp {
            seconds: 4_000_000_000,
            nanos: -1,
        }),
    );
    for (request, field) in [
        (with_tokens, "amount_token"),
        (past, "expires_at"),
        (paid_expiring, "expires_at"),
        (unknown_bucket, "bucket"),
        (bad_nanos, "expires_at"),
    ] {
        let err = client.add_balance(request).await.unwrap_err();
        assert_status(&err, Code::InvalidArgument, "INVALID_ARGUMENT");
        assert!(err.message().contains(field), "{field}: {err:?}");
    }
    let err = client
        .subtract_balance(pb::SubtractBalanceRequest {
            bucket: -3,
            ..subtract(id, 1, pb::BalanceBucket::Paid)
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(app.event_count().await, events, "nothing written");

    // The bucket is part of the request an idempotency key stands for.
    let first = promote(id, 1_000, None);
    client.add_balance(first.clone()).await.unwrap();
    let err = client
        .add_balance(pb::AddBalanceRequest {
            bucket: pb::BalanceBucket::Paid.into(),
            ..first
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED");
}

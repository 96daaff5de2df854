//! The webhook dispatcher's queue (`deliveries.rs`) against PostgreSQL:
//! only a webhook and account's head is due, the next is given its time when
//! the head is resolved, and a waiting delivery stranded by a race with its
//! head's resolution is found.

mod support;

use std::time::Duration;

use billing_domain::*;
use billing_store::{AttemptOutcome, AttemptRecord, NewDelivery, Store};
use billing_testkit::TestDb;
use chrono::Utc;
use support::{meta, new_account};
use uuid::Uuid;

const HOLD: Duration = Duration::from_secs(30);
const NEVER: Duration = Duration::from_secs(86_400);

/// A store, a webhook of a new account's customer, and the account.
async fn setup() -> (TestDb, Store, Uuid, Uuid) {
    let db = TestDb::new().await;
    let store = Store::connect(&db.url, 4, RateTable::default()).unwrap();
    let create = new_account(PlanType::Free);
    let customer = create.customer_id;
    let account_id = Uuid::new_v4();
    store
        .commands()
        .create_account(account_id, &meta(), &create)
        .await
        .unwrap()
        .unwrap();
    let webhook = Uuid::now_v7();
    db.client()
        .await
        .execute(
            "INSERT INTO webhooks (id, customer_id, name, uri, method, event_types, secret,
                                   created_at, updated_at)
             VALUES ($1, $2, 't', 'https://example.com/', 'POST', '{account_updated}',
                     'whsec_c2VjcmV0', now(), now())",
            &[&webhook, &customer],
        )
        .await
        .unwrap();
    (db, store, webhook, account_id)
}

fn delivery(webhook: Uuid, account: Uuid, version: i64) -> NewDelivery {
    let id = Uuid::now_v7();
    NewDelivery {
        id,
        webhook_id: webhook,
        message_id: format!("msg_{}", id.simple()),
        event_type: "account_updated".into(),
        account_id: account,
        account_version: version,
    }
}

/// (version, due?) of the webhook's pending deliveries, in order.
async fn queue(db: &TestDb, webhook: Uuid) -> Vec<(i64, bool)> {
    db.client()
        .await
        .query(
            "SELECT account_version, next_attempt_at IS NOT NULL FROM webhook_deliveries
             WHERE webhook_id = $1 AND status = 'pending' ORDER BY seq",
            &[&webhook],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn only_the_head_is_due_and_its_resolution_makes_the_next_due() {
    let (db, store, webhook, account) = setup().await;
    let batch: Vec<NewDelivery> = (1..=3).map(|v| delivery(webhook, account, v)).collect();
    assert_eq!(
        store.deliveries().insert_deliveries(&batch).await.unwrap(),
        3
    );
    assert_eq!(
        queue(&db, webhook).await,
        [(1, true), (2, false), (3, false)]
    );
    // Made again (the feed read again after a crash): nothing new.
    assert_eq!(
        store.deliveries().insert_deliveries(&batch).await.unwrap(),
        0
    );
    // A later batch waits behind the queue too.
    store
        .deliveries()
        .insert_deliveries(&[delivery(webhook, account, 4)])
        .await
        .unwrap();
    assert_eq!(
        queue(&db, webhook).await,
        [(1, true), (2, false), (3, false), (4, false)]
    );

    let claimed = store
        .deliveries()
        .claim_deliveries(10, 32, &[], HOLD)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "the head only");
    assert_eq!(claimed[0].account_version, 1);
    // A retry keeps the order: the next stays waiting.
    let retry = AttemptRecord {
        delivery_id: claimed[0].id,
        webhook_id: webhook,
        outcome: AttemptOutcome::Retry { next: Utc::now() },
        status_code: Some(500),
        error: "HTTP 500".into(),
    };
    store
        .deliveries()
        .record_attempts(&[retry], NEVER)
        .await
        .unwrap();
    assert_eq!(queue(&db, webhook).await[..2], [(1, true), (2, false)]);

    let claimed = store
        .deliveries()
        .claim_deliveries(10, 32, &[], HOLD)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let delivered = AttemptRecord {
        delivery_id: claimed[0].id,
        webhook_id: webhook,
        outcome: AttemptOutcome::Delivered { at: Utc::now() },
        status_code: Some(200),
        error: String::new(),
    };
    store
        .deliveries()
        .record_attempts(&[delivered], NEVER)
        .await
        .unwrap();
    assert_eq!(
        queue(&db, webhook).await,
        [(2, true), (3, false), (4, false)]
    );
}

#[tokio::test]
async fn a_stranded_waiting_delivery_is_found_and_one_behind_a_head_is_left() {
    let (db, store, webhook, account) = setup().await;
    // A waiting delivery with nothing before it: what a delivery made while
    // its head was being resolved looks like.
    let client = db.client().await;
    client
        .execute(
            "INSERT INTO webhook_deliveries (id, webhook_id, message_id, event_type, account_id,
                 account_version, status, next_attempt_at, created_at)
             VALUES ($1, $2, 'msg_a', 'account_updated', $3, 1, 'pending', NULL, now()),
                    ($4, $2, 'msg_b', 'account_updated', $3, 2, 'pending', NULL, now())",
            &[&Uuid::now_v7(), &webhook, &account, &Uuid::now_v7()],
        )
        .await
        .unwrap();
    assert!(
        store
            .deliveries()
            .claim_deliveries(10, 32, &[], HOLD)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.deliveries().promote_stranded(None).await.unwrap(), 1);
    assert_eq!(queue(&db, webhook).await, [(1, true), (2, false)]);
    assert_eq!(
        store
            .deliveries()
            .promote_stranded(Some(Duration::from_secs(60)))
            .await
            .unwrap(),
        0,
        "the second waits behind the first"
    );
}

//! The event store against a real PostgreSQL: a fresh database per test.

mod support;

use std::sync::Arc;

use billing_domain::*;
use billing_store::{Actor, Cursor, Idempotency, RequestMeta, Store, StoreError};
use billing_testkit::TestDb;
use support::{add, insert_raw_event, new_account, rows};
use uuid::Uuid;

async fn store(db: &TestDb) -> Store {
    Store::connect(&db.url, 16, RateTable::default()).unwrap()
}

fn meta(key: Option<&str>, operation: &'static str, hash: &[u8]) -> RequestMeta {
    RequestMeta {
        actor: Actor {
            principal: "tester".into(),
            role: "project_super_admin".into(),
        },
        idempotency: key.map(|k| Idempotency {
            key: k.into(),
            operation,
            request_hash: hash.to_vec(),
        }),
        trace_id: Some("trace-1".into()),
        span_id: None,
    }
}

async fn created(store: &Store, plan: PlanType, credit: i64) -> Uuid {
    let id = Uuid::new_v4();
    store
        .commands()
        .create_account(id, &meta(None, "create", b""), &new_account(plan))
        .await
        .unwrap()
        .unwrap();
    if credit > 0 {
        store
            .commands()
            .execute(id, &meta(None, "add", b""), &add(credit))
            .await
            .unwrap()
            .unwrap();
    }
    id
}

#[tokio::test]
async fn appended_events_load_back_in_version_order_and_fold_to_the_state() {
    let db = TestDb::new().await;
    let store = store(&db).await;
    let id = created(&store, PlanType::Free, 50_000).await;
    let debit = Command::Debit(Debit {
        service_type: ServiceType::Sms,
        usage: Usage::Quantity(2),
        reference_type: ReferenceType::Sms,
        reference_id: "msg-1".into(),
    });
    store
        .commands()
        .execute(id, &meta(None, "debit", b""), &debit)
        .await
        .unwrap()
        .unwrap();

    let events = store.feed().account_events(id).await.unwrap();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "account_created",
            "tokens_granted",
            "balance_added",
            "debited"
        ]
    );
    assert_eq!(
        events.iter().map(|e| e.version).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    let last = events.last().unwrap();
    assert_eq!(last.balances.balance_credit, Micros(30_000));
    assert_eq!(
        last.actor,
        Actor {
            principal: "tester".into(),
            role: "project_super_admin".into()
        }
    );
    assert_eq!(last.trace_id.as_deref(), Some("trace-1"));
    assert_eq!(last.schema_version, EVENT_SCHEMA_VERSION);
    let after = last
        .account_after
        .as_ref()
        .expect("the account view after the event");
    assert_eq!(
        (after.version, after.balance_credit, after.name.as_str()),
        (4, Micros(30_000), "Primary Account")
    );

    let state = store.accounts().account(id).await.unwrap().unwrap();
    let folded = Account::fold(id, events.iter().map(|e| (&e.event, e.occurred_at)))
        .unwrap()
        .unwrap();
    // The chain head is the store's, kept beside the state; the fold of the
    // events is everything else.
    assert!(state.chain_head.is_some());
    assert_eq!(
        folded,
        Account {
            chain_head: None,
            ..state
        }
    );
}

#[tokio::test]
async fn concurrent_commands_on_one_account_serialize_into_contiguous_versions() {
    let db = TestDb::new().await;
    let store = store(&db).await;
    let id = created(&store, PlanType::Free, 0).await;
    let tasks = (0..32).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .commands()
                .execute(id, &meta(None, "add", b""), &add(1_000))
                .await
        })
    });
    for task in futures::future::join_all(tasks).await {
        task.unwrap().unwrap().unwrap();
    }
    let events = store.feed().account_events(id).await.unwrap();
    let versions: Vec<i64> = events.iter().map(|e| e.version).collect();
    assert_eq!(versions, (1..=34).collect::<Vec<_>>());
    assert_eq!(
        store
            .accounts()
            .account(id)
            .await
            .unwrap()
            .unwrap()
            .balance_credit,
        Micros(32_000)
    );
}

#[tokio::test]
async fn the_database_refuses_a_second_event_at_the_same_version() {
    let db = TestDb::new().await;
    let store = store(&db).await;
    let id = created(&store, PlanType::Free, 0).await;
    let client = db.client().await;
    let err = insert_raw_event(&client, id, 2, "balance_added", "{}", 0)
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("23505"), "{err}");
    assert!(
        StoreError::from(err).is_retryable(),
        "a version conflict is retried"
    );
}

#[tokio::test]
async fn the_events_table_is_append_only() {
    let db = TestDb::new().await;
    let store = store(&db).await;
    created(&store, PlanType::Free, 10).await;
    let client = db.client().await;
    for sql in [
        "UPDATE events SET balance_credit = 999999",
        "DELETE FROM events",
        "TRUNCATE events",
    ] {
        let err = client.batch_execute(sql).await.unwrap_err();
        assert!(
            err.to_string().contains("append-only") || format!("{err:?}").contains("append-only"),
            "{sql}: {err:?}"
        );
    }
    let count: i64 = client
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 3);
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_outcome_and_refuses_another_request() {
    let db = TestDb::new().await;
    let store = store(&db).await;
    let id = created(&store, PlanType::Free, 0).await;
    let first = store
        .commands()
        .execute(id, &meta(Some("k1"), "add", b"req-a"), &add(5_000))
        .await
        .unwrap()
        .unwrap();
    store
        .commands()
        .execute(id, &meta(None, "add", b""), &add(1))
        .await
        .unwrap()
        .unwrap();
    let again = store
        .commands()
        .execute(id, &meta(Some("k1"), "add", b"req-a"), &add(5_000))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, first, "the first response, not the current state");
    let other = store
        .commands()
        .execute(id, &meta(Some("k1"), "add", b"req-b"), &add(7))
        .await
        .unwrap();
    assert_eq!(other, Err(Rejection::IdempotencyKeyReused));
    let other_rpc = store
        .commands()
        .execute(id, &meta(Some("k1"), "subtract", b"req-a"), &add(5_000))
        .await
        .unwrap();
    assert_eq!(other_rpc, Err(Rejection::IdempotencyKeyReused));
    assert_eq!(
        store
            .accounts()
            .account(id)
            .await
            .unwrap()
            .unwrap()
            .balance_credit,
        Micros(5_001)
    );

    // Concurrent first uses of one key apply once.
    let tasks = (0..16).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .commands()
                .execute(id, &meta(Some("k2"), "add", b"req-c"), &add(100))
                .await
        })
    });
    let outcomes: Vec<_> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|t| t.unwrap().unwrap().unwrap())
        .collect();
    assert!(outcomes.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(
        store
            .accounts()
            .account(id)
            .await
            .unwrap()
            .unwrap()
            .balance_credit,
        Micros(5_101)
    );
}

#[tokio::test]
async fn a_rejected_command_changes_nothing() {
    let db = TestDb::new().await;
    let store = store(&db).await;
    let id = created(&store, PlanType::Free, 1_000).await;
    let before = store.feed().account_events(id).await.unwrap();
    let debit = Command::Debit(Debit {
        service_type: ServiceType::Number,
        usage: Usage::Quantity(1),
        reference_type: ReferenceType::Number,
        reference_id: String::new(),
    });
    let answer = store
        .commands()
        .execute(id, &meta(Some("k"), "debit", b"x"), &debit)
        .await
        .unwrap();
    assert!(matches!(answer, Err(Rejection::InsufficientBalance { .. })));
    assert_eq!(store.feed().account_events(id).await.unwrap(), before);
    let keys = rows(&db, "idempotency_keys").await;
    assert_eq!(
        keys, 0,
        "a refusal is not remembered: the caller may retry after topping up"
    );
}

/// Follows the feed like a reader does, until it has seen `want` events in
/// all or `ms` milliseconds have passed. (The feed may lag: the snapshot's xmin
/// is cluster-wide, so transactions in other tests' databases hold it back.)
async fn follow(
    store: &Store,
    cursor: &mut Cursor,
    seen: &mut Vec<(Uuid, i64)>,
    want: usize,
    ms: u64,
) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(ms);
    while seen.len() < want && tokio::time::Instant::now() < deadline {
        for e in store.feed().read_feed(*cursor, 1_000).await.unwrap() {
            assert!(e.cursor > *cursor, "the cursor only moves forward");
            *cursor = e.cursor;
            seen.push((e.account_id, e.version));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_feed_never_skips_an_event_of_a_slow_open_transaction() {
    let db = TestDb::new().await;
    let store = store(&db).await;
    let a = created(&store, PlanType::Unlimited, 0).await;
    let b = created(&store, PlanType::Unlimited, 0).await;
    let mut cursor = Cursor::START;
    let mut seen = Vec::new();
    follow(&store, &mut cursor, &mut seen, 2, 5_000).await;
    assert_eq!(seen, [(a, 1), (b, 1)]);

    // A slow writer takes its position first and commits last.
    let mut slow = db.client().await;
    let slow_tx = slow.transaction().await.unwrap();
    let payload = r#"{"type":"account_updated"}"#;
    insert_raw_event(&slow_tx, a, 2, "account_updated", payload, 0)
        .await
        .unwrap();
    // A fast writer commits meanwhile: a reader following `position` alone
    // would read it and move past the slow one's lower position for good.
    store
        .commands()
        .execute(b, &meta(None, "add", b""), &add(5))
        .await
        .unwrap()
        .unwrap();
    follow(&store, &mut cursor, &mut seen, 3, 500).await;
    assert_eq!(
        seen.len(),
        2,
        "nothing is read past a transaction still open"
    );

    slow_tx.commit().await.unwrap();
    follow(&store, &mut cursor, &mut seen, 4, 5_000).await;
    let mut later = seen[2..].to_vec();
    later.sort();
    let mut expected = vec![(a, 2), (b, 2)];
    expected.sort();
    assert_eq!(later, expected, "both events, the slow one included");
}

#[tokio::test]
async fn concurrent_reserves_never_cross_a_hard_limit() {
    let db = TestDb::new().await;
    let store = Arc::new(store(&db).await);
    let id = created(&store, PlanType::Free, 95_000).await;
    let tasks = (0..64).map(|n| {
        let store = store.clone();
        tokio::spawn(async move {
            let cmd = Command::Reserve(Reserve {
                reservation_id: format!("call-{n}"),
                service_type: ServiceType::CallPstnOutgoing,
                requested_units: 1,
                allow_partial: false,
                ttl_seconds: 600,
            });
            store
                .commands()
                .execute(id, &meta(None, "reserve", b""), &cmd)
                .await
                .unwrap()
        })
    });
    let granted = futures::future::join_all(tasks)
        .await
        .into_iter()
        .filter(|t| t.as_ref().unwrap().is_ok())
        .count();
    assert_eq!(
        granted, 9,
        "95,000 micros hold exactly nine 10,000-micro minutes"
    );
    let view = store
        .accounts()
        .account(id)
        .await
        .unwrap()
        .unwrap()
        .view(store.now())
        .unwrap();
    assert_eq!(view.available_credit, Micros(5_000));
}

#[tokio::test]
async fn per_account_the_feed_is_in_version_order_under_concurrency() {
    // Many commands queued on one hot account: lock waiters are not granted
    // in the order they asked, which must not reorder the feed. A race, so
    // three rounds (with the old `FOR UPDATE` lock one round in three failed).
    let db = TestDb::new().await;
    let store = Store::connect(&db.url, 32, RateTable::default()).unwrap();
    let mut cursor = Cursor::START;
    for _round in 0..3 {
        let id = created(&store, PlanType::Free, 0).await;
        let tasks = (0..300).map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .commands()
                    .execute(id, &meta(None, "add", b""), &add(1))
                    .await
            })
        });
        for task in futures::future::join_all(tasks).await {
            task.unwrap().unwrap().unwrap();
        }
        let mut versions = Vec::new();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while versions.len() < 302 && tokio::time::Instant::now() < deadline {
            for e in store.feed().read_feed(cursor, 1_000).await.unwrap() {
                cursor = e.cursor;
                versions.push(e.version);
            }
        }
        assert_eq!(
            versions,
            (1..=302).collect::<Vec<_>>(),
            "feed order is version order"
        );
    }
}

#[tokio::test]
async fn the_feed_is_in_xid_order_across_a_digit_boundary() {
    // Readers once sorted by the xid's text ("1000" before "933") and so
    // skipped events when xids gained a digit. Cross a power of ten.
    let db = TestDb::new().await;
    let store = store(&db).await;
    let id = created(&store, PlanType::Unlimited, 0).await;
    let client = db.client().await;
    let current: i64 = client
        .query_one("SELECT pg_current_xact_id()::text::bigint", &[])
        .await
        .unwrap()
        .get(0);
    let mut boundary = 10i64;
    while boundary < current + 40 {
        boundary *= 10;
    }
    client
        .batch_execute(&format!(
            "DO $$ BEGIN
                 WHILE pg_current_xact_id()::text::bigint < {} LOOP COMMIT; END LOOP;
             END $$",
            boundary - 15
        ))
        .await
        .unwrap();
    for _ in 0..30 {
        store
            .commands()
            .execute(id, &meta(None, "add", b""), &add(1))
            .await
            .unwrap()
            .unwrap();
    }
    let xids: Vec<i64> = client
        .query(
            "SELECT xid::text::bigint FROM events WHERE account_id = $1 ORDER BY version",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        xids.first() < Some(&boundary) && xids.last() >= Some(&boundary),
        "the writes straddle {boundary}: {xids:?}"
    );

    let mut cursor = Cursor::START;
    let mut versions = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while versions.len() < 31 && tokio::time::Instant::now() < deadline {
        for e in store.feed().read_feed(cursor, 3).await.unwrap() {
            assert!(e.cursor > cursor);
            cursor = e.cursor;
            versions.push(e.version);
        }
    }
    assert_eq!(versions, (1..=31).collect::<Vec<_>>());
}

#[tokio::test]
async fn the_monthly_token_reset_is_due_on_the_first_and_recorded_once() {
    use chrono::{TimeZone, Utc};
    let db = TestDb::new().await;
    let march = Utc.with_ymd_and_hms(2026, 3, 10, 12, 0, 0).unwrap();
    let clock = std::sync::Arc::new(std::sync::Mutex::new(march));
    let pinned = clock.clone();
    let store = store(&db)
        .await
        .with_clock(std::sync::Arc::new(move || *pinned.lock().unwrap()));
    let id = created(&store, PlanType::Free, 0).await;
    let vn = Command::Debit(Debit {
        service_type: ServiceType::CallVn,
        usage: Usage::DurationMs(30 * 60_000),
        reference_type: ReferenceType::Call,
        reference_id: String::new(),
    });
    store
        .commands()
        .execute(id, &meta(None, "debit", b""), &vn)
        .await
        .unwrap()
        .unwrap();
    assert!(
        store
            .maintenance()
            .accounts_due_for_housekeeping(10)
            .await
            .unwrap()
            .is_empty()
    );

    *clock.lock().unwrap() = Utc.with_ymd_and_hms(2026, 4, 1, 0, 0, 1).unwrap();
    // A read already shows the reset; the sweeper then records it, once.
    assert_eq!(
        store
            .accounts()
            .account(id)
            .await
            .unwrap()
            .unwrap()
            .balance_token,
        Tokens(100)
    );
    assert_eq!(
        store
            .maintenance()
            .accounts_due_for_housekeeping(10)
            .await
            .unwrap(),
        [id]
    );
    for _ in 0..2 {
        store
            .commands()
            .execute(id, &meta(None, "housekeep", b""), &Command::Housekeep)
            .await
            .unwrap()
            .unwrap();
    }
    let types: Vec<String> = store
        .feed()
        .account_events(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_type)
        .collect();
    assert_eq!(
        types,
        [
            "account_created",
            "tokens_granted",
            "debited",
            "tokens_expired",
            "tokens_granted"
        ]
    );
    assert!(
        store
            .maintenance()
            .accounts_due_for_housekeeping(10)
            .await
            .unwrap()
            .is_empty()
    );
    let account = store.accounts().account(id).await.unwrap().unwrap();
    assert_eq!(account.balance_token, Tokens(100));
    assert_eq!(
        account.tm_next_topup,
        Some(Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 0).unwrap())
    );
}

fn reserve(id: &str, units: i64) -> Command {
    Command::Reserve(Reserve {
        reservation_id: id.into(),
        service_type: ServiceType::CallPstnOutgoing,
        requested_units: units,
        allow_partial: false,
        ttl_seconds: 0,
    })
}

fn commit(id: &str, ms: i64) -> Command {
    Command::Commit(Commit {
        reservation_id: id.into(),
        used_duration_ms: ms,
        used_quantity: 0,
    })
}

#[tokio::test]
async fn a_repeated_commit_replays_the_first_outcome_from_a_row_that_keeps_no_account_view() {
    let db = TestDb::new().await;
    let store = store(&db).await;
    let id = created(&store, PlanType::Free, 1_000_000).await;
    let m = meta(None, "call", b"");
    store
        .commands()
        .execute(id, &m, &reserve("r1", 5))
        .await
        .unwrap()
        .unwrap();
    let first = store
        .commands()
        .execute(id, &m, &commit("r1", 61_000))
        .await
        .unwrap()
        .unwrap();
    // Later changes, so that the account no longer looks as it did then.
    store
        .commands()
        .execute(id, &m, &add(7))
        .await
        .unwrap()
        .unwrap();

    let client = db.client().await;
    let stored: String = client
        .query_one(
            "SELECT commit_outcome::text FROM reservations WHERE reservation_id = 'r1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!stored.contains("\"account\""), "{stored}");
    assert!(stored.contains("\"account_version\""), "{stored}");

    // A new store: nothing cached, so the replay reads the row back.
    let fresh = Store::connect(&db.url, 4, RateTable::default()).unwrap();
    let again = fresh
        .commands()
        .execute(id, &m, &commit("r1", 170_000))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, first, "the first outcome, account view included");

    // A row written before the view moved to the event (the whole outcome
    // in the row) replays just the same.
    let Outcome::Commit(whole) = &first else {
        panic!("a commit outcome: {first:?}");
    };
    client
        .execute(
            "UPDATE reservations SET commit_outcome = $1::text::json WHERE reservation_id = 'r1'",
            &[&serde_json::to_string(whole).unwrap()],
        )
        .await
        .unwrap();
    let fresh = Store::connect(&db.url, 4, RateTable::default()).unwrap();
    let again = fresh
        .commands()
        .execute(id, &m, &commit("r1", 1_000))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, first);
}

#[tokio::test]
async fn a_hold_extended_and_committed_in_one_batch_is_stored_as_extended() {
    let db = TestDb::new().await;
    let store = store(&db).await;
    let id = created(&store, PlanType::Free, 1_000_000).await;
    let m = meta(None, "call", b"");
    store
        .commands()
        .execute(id, &m, &reserve("r2", 2))
        .await
        .unwrap()
        .unwrap();
    // Extend and commit sent together, so that they usually share a batch.
    let extend = Command::Extend(Extend {
        reservation_id: "r2".into(),
        additional_units: 3,
        allow_partial: false,
    });
    let commit_r2 = commit("r2", 240_000);
    let (extended, committed) = tokio::join!(
        store.commands().execute(id, &m, &extend),
        store.commands().execute(id, &m, &commit_r2),
    );
    let Outcome::Commit(c) = committed.unwrap().unwrap() else {
        panic!("a commit outcome");
    };
    let units: i64 = db
        .client()
        .await
        .query_one(
            "SELECT (hold->>'granted_units')::bigint FROM reservations WHERE reservation_id = 'r2'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // The extend came first (5 units held when committed), or the commit
    // did and the extend found the reservation resolved (2 held): either
    // way the stored hold is the last one decided.
    let expected = match extended.unwrap() {
        Ok(_) => 5,
        Err(Rejection::ReservationResolved { .. }) => 2,
        Err(other) => panic!("unexpected refusal {other:?}"),
    };
    assert_eq!(units, expected, "{c:?}");
}

#[tokio::test]
async fn an_idempotency_record_keeps_no_account_view_and_replays_the_first_outcome_whole() {
    let db = TestDb::new().await;
    let store = store(&db).await;
    let id = created(&store, PlanType::Free, 1_000_000).await;
    let debit = Command::Debit(Debit {
        service_type: ServiceType::Sms,
        usage: Usage::Quantity(3),
        reference_type: ReferenceType::Sms,
        reference_id: "batch-1".into(),
    });
    let keyed = meta(Some("debit-1"), "debit", b"req-debit");
    let first = store
        .commands()
        .execute(id, &keyed, &debit)
        .await
        .unwrap()
        .unwrap();
    store
        .commands()
        .execute(id, &meta(None, "add", b""), &add(5))
        .await
        .unwrap()
        .unwrap();

    let client = db.client().await;
    let stored: String = client
        .query_one(
            "SELECT outcome::text FROM idempotency_keys WHERE idempotency_key = 'debit-1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!stored.contains("\"account\""), "{stored}");
    assert!(stored.contains("\"account_version\""), "{stored}");

    let again = store
        .commands()
        .execute(id, &keyed, &debit)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, first, "the first reply, account view included");

    // A record in the whole form (written before) replays the same.
    client
        .execute(
            "UPDATE idempotency_keys SET outcome = $1::text::json WHERE idempotency_key = 'debit-1'",
            &[&serde_json::to_string(&first).unwrap()],
        )
        .await
        .unwrap();
    let fresh = Store::connect(&db.url, 4, RateTable::default()).unwrap();
    let again = fresh
        .commands()
        .execute(id, &keyed, &debit)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(
        fresh
            .accounts()
            .account(id)
            .await
            .unwrap()
            .unwrap()
            .balance_credit,
        Micros(1_000_000 - 30_000 + 5),
        "charged once"
    );
}

#[tokio::test]
async fn the_publishers_feed_gives_every_event_its_predecessors_available_credit_at_any_batch_size()
{
    let db = TestDb::new().await;
    let store = store(&db).await;
    let accounts = [
        created(&store, PlanType::Basic, 0).await,
        created(&store, PlanType::Basic, 0).await,
    ];
    for n in 1..=4 {
        for (i, id) in accounts.iter().enumerate() {
            let credit = 1_000 * n + i64::try_from(i).unwrap();
            store
                .commands()
                .execute(*id, &meta(None, "add", b""), &add(credit))
                .await
                .unwrap()
                .unwrap();
        }
    }
    // Each event's predecessor, from the events themselves, once the feed
    // shows them all (its xmin is the whole server's: other tests'
    // transactions hold it back for a moment).
    let stored = rows(&db, "events").await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let all = loop {
        let all = store.feed().read_feed(Cursor::START, 1_000).await.unwrap();
        if all.len() == usize::try_from(stored).unwrap() || tokio::time::Instant::now() > deadline {
            break all;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let before = |account_id: Uuid, version: i64| {
        all.iter()
            .find(|p| p.account_id == account_id && p.version + 1 == version)
            .map(|p| p.balances.available_credit.get())
    };
    assert!(all.len() >= 10, "{} events of {stored}", all.len());

    // A batch of one reads every predecessor; a batch of all reads none.
    for limit in [1, 2, 3, 1_000] {
        let mut cursor = Cursor::START;
        let mut seen = 0;
        loop {
            let batch = store
                .feed()
                .read_feed_with_previous(cursor, limit)
                .await
                .unwrap();
            let Some((last, _)) = batch.last() else { break };
            cursor = last.cursor;
            for (e, previous) in &batch {
                assert_eq!(
                    *previous,
                    before(e.account_id, e.version),
                    "batches of {limit}: version {} of {}",
                    e.version,
                    e.account_id
                );
                seen += 1;
            }
        }
        assert_eq!(seen, all.len(), "batches of {limit}");
    }
}

#[tokio::test]
async fn a_writer_remembering_one_account_runs_commands_on_many_the_long_way() {
    let db = TestDb::new().await;
    let store = store(&db).await.with_writer_cache(1);
    let ids = [
        created(&store, PlanType::Free, 1_000_000).await,
        created(&store, PlanType::Free, 1_000_000).await,
        created(&store, PlanType::Free, 1_000_000).await,
    ];
    // Each command's account is out of the writer's memory: read and locked
    // again every time, the answers as with every account remembered.
    for round in 0..5 {
        for id in ids {
            let outcome = store
                .commands()
                .execute(id, &meta(None, "add", b""), &add(1_000))
                .await
                .unwrap()
                .unwrap();
            let Outcome::Account(view) = outcome else {
                panic!("{outcome:?}")
            };
            assert_eq!(view.balance_credit, Micros(1_000_000 + 1_000 * (round + 1)));
        }
    }
    for id in ids {
        let events = store.feed().account_events(id).await.unwrap();
        assert_eq!(
            events.iter().map(|e| e.version).collect::<Vec<_>>(),
            (1..=events.len() as i64).collect::<Vec<_>>()
        );
    }
}

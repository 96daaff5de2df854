//! The projection into read models, against a real PostgreSQL.

mod support;

use std::collections::BTreeMap;

use billing_domain::*;
use billing_store::{READ_MODELS, Store};
use billing_testkit::TestDb;
use proptest::prelude::*;
use support::{add, insert_raw_event, meta, new_account, rows};
use uuid::Uuid;

async fn account(store: &Store, plan: PlanType) -> Uuid {
    let id = Uuid::new_v4();
    store
        .commands()
        .create_account(id, &meta(), &new_account(plan))
        .await
        .unwrap()
        .unwrap();
    id
}

/// Projects until the feed is drained (waiting out other tests' transactions,
/// which hold the cluster-wide xmin back for a moment).
async fn catch_up(store: &Store) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let report = store
            .read_models()
            .project_batch(READ_MODELS, 200)
            .await
            .unwrap();
        let lag = store.feed().feed_lag(READ_MODELS).await.unwrap();
        if report.is_some_and(|r| r.gap.is_none()) && lag.events == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the projector did not catch up: {lag:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Both read-model tables as text, in a fixed order.
async fn dump(db: &TestDb) -> (Vec<String>, Vec<String>) {
    let client = db.client().await;
    let rows = |sql: &'static str| {
        let client = &client;
        async move {
            client
                .query(sql, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
        }
    };
    (
        rows("SELECT row_to_json(a)::text FROM rm_accounts a ORDER BY account_id").await,
        rows("SELECT row_to_json(l)::text FROM ledger_entries l ORDER BY account_id, version")
            .await,
    )
}

/// For every account: the ledger sums to the balances, and the read model
/// equals a fresh fold of the events and the command side's state.
async fn assert_consistent(store: &Store, db: &TestDb, accounts: &[Uuid]) {
    let client = db.client().await;
    for &id in accounts {
        let events = store.feed().account_events(id).await.unwrap();
        let mut folded = Account::fold(id, events.iter().map(|e| (&e.event, e.occurred_at)))
            .unwrap()
            .unwrap();
        folded.holds.clear();
        let (projected, balances) = billing_testkit::rows::read_model_account(&client, id)
            .await
            .unwrap();
        assert_eq!(projected, folded, "read model == fresh fold");
        let command_side = store.accounts().account(id).await.unwrap().unwrap();
        assert_eq!(projected.balance_credit, command_side.balance_credit);
        assert_eq!(balances.balance_credit, projected.balance_credit);
        let row = client
            .query_one(
                "SELECT coalesce(sum(amount_credit), 0)::bigint, coalesce(sum(amount_token), 0)::bigint, count(*)
                 FROM ledger_entries WHERE account_id = $1",
                &[&id],
            )
            .await
            .unwrap();
        assert_eq!(
            Micros(row.get(0)),
            projected.balance_credit,
            "ledger credit sums to the balance"
        );
        assert_eq!(
            Tokens(row.get(1)),
            projected.balance_token,
            "ledger tokens sum to the balance"
        );
        let movements = events
            .iter()
            .filter(|e| ledger_line(&e.event).is_some())
            .count() as i64;
        assert_eq!(
            row.get::<_, i64>(2),
            movements,
            "one entry per money movement"
        );
    }
}

fn command() -> impl Strategy<Value = (usize, Command)> {
    let service = prop::sample::select(ServiceType::ALL.to_vec());
    let command = prop_oneof![
        (1..500_000i64).prop_map(add),
        (1..50_000i64, 0..30i64).prop_map(|(c, t)| Command::SubtractBalance(BalanceChange {
            amount_credit: Micros(c),
            amount_token: Tokens(t),
            reference_type: ReferenceType::Refund,
            reference_id: "r".into(),
            note: String::new(),
            bucket: Default::default(),
            expires_at: None,
        })),
        (service.clone(), 0..400_000i64, 0..5i64).prop_map(|(s, ms, q)| Command::Debit(Debit {
            service_type: s,
            usage: if s.unit() == Unit::Minute {
                Usage::DurationMs(ms)
            } else {
                Usage::Quantity(q)
            },
            reference_type: s.reference_type(),
            reference_id: "d".into(),
        })),
        (0..4u8, service, 1..10i64).prop_map(|(n, s, units)| Command::Reserve(Reserve {
            reservation_id: format!("c{n}"),
            service_type: s,
            requested_units: units,
            allow_partial: true,
            ttl_seconds: 600,
        })),
        (0..4u8, 0..600_000i64, 0..5i64).prop_map(|(n, ms, q)| Command::Commit(Commit {
            reservation_id: format!("c{n}"),
            used_duration_ms: ms,
            used_quantity: q,
        })),
        (0..4u8).prop_map(|n| Command::Release {
            reservation_id: format!("c{n}")
        }),
    ];
    (0..3usize, command)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn the_ledger_sums_to_the_balance_and_the_read_model_is_a_fold_before_and_after_a_rebuild(
        steps in prop::collection::vec(command(), 1..40),
    ) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let db = TestDb::new().await;
            let store = Store::connect(&db.url, 4, RateTable::default()).unwrap();
            let mut accounts = Vec::new();
            for plan in [PlanType::Free, PlanType::Basic, PlanType::Unlimited] {
                accounts.push(account(&store, plan).await);
            }
            for (i, (n, command)) in steps.into_iter().enumerate() {
                // Reservation ids are global: keep each account's apart.
                let command = match command {
                    Command::Reserve(mut r) => { r.reservation_id = format!("{n}-{}", r.reservation_id); Command::Reserve(r) }
                    Command::Commit(mut c) => { c.reservation_id = format!("{n}-{}", c.reservation_id); Command::Commit(c) }
                    Command::Release { reservation_id } => Command::Release { reservation_id: format!("{n}-{reservation_id}") },
                    other => other,
                };
                let _ = store.commands().execute(accounts[n], &meta(), &command).await.unwrap();
                if i % 7 == 0 {
                    catch_up(&store).await;
                }
            }
            catch_up(&store).await;
            assert_consistent(&store, &db, &accounts).await;
            let live = dump(&db).await;
            store.read_models().rebuild_read_models_with(50, |_| {}).await.unwrap();
            assert_eq!(dump(&db).await, live, "a rebuild produces identical tables");
        });
    }
}

#[tokio::test]
async fn the_projector_never_skips_an_event_of_a_slow_open_transaction() {
    let db = TestDb::new().await;
    let store = Store::connect(&db.url, 4, RateTable::default()).unwrap();
    let slow_account = account(&store, PlanType::Unlimited).await;
    let fast_account = account(&store, PlanType::Unlimited).await;
    catch_up(&store).await;

    // A command that has locked its account and appended, but not committed.
    let mut slow = db.client().await;
    let slow_tx = slow.transaction().await.unwrap();
    slow_tx
        .execute(
            "SELECT 1 FROM accounts WHERE account_id = $1 FOR UPDATE",
            &[&slow_account],
        )
        .await
        .unwrap();
    let payload = r#"{"type":"balance_added","amount_credit":7,"amount_token":0,"reference_type":"payment","reference_id":"","note":""}"#;
    insert_raw_event(&slow_tx, slow_account, 2, "balance_added", payload, 7)
        .await
        .unwrap();
    store
        .commands()
        .execute(fast_account, &meta(), &add(5))
        .await
        .unwrap()
        .unwrap();
    for _ in 0..10 {
        store
            .read_models()
            .project_batch(READ_MODELS, 100)
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        store
            .read_models()
            .projected_version(fast_account)
            .await
            .unwrap(),
        1,
        "nothing past the open transaction"
    );
    slow_tx.commit().await.unwrap();
    catch_up(&store).await;
    assert_eq!(
        store
            .read_models()
            .projected_version(slow_account)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .read_models()
            .projected_version(fast_account)
            .await
            .unwrap(),
        2
    );
}

#[tokio::test]
async fn applying_events_again_changes_nothing() {
    let db = TestDb::new().await;
    let store = Store::connect(&db.url, 4, RateTable::default()).unwrap();
    let id = account(&store, PlanType::Free).await;
    store
        .commands()
        .execute(id, &meta(), &add(1_000))
        .await
        .unwrap()
        .unwrap();
    catch_up(&store).await;
    let before = dump(&db).await;
    // As if a batch were replayed after a crash between apply and checkpoint.
    db.client()
        .await
        .execute("UPDATE feed_checkpoints SET xid = '0', position = 0", &[])
        .await
        .unwrap();
    let report = store
        .read_models()
        .project_batch(READ_MODELS, 100)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((report.applied, report.skipped), (0, 3));
    assert_eq!(dump(&db).await, before);
}

#[tokio::test]
async fn an_event_ahead_of_its_predecessor_stops_the_projector_instead_of_being_skipped() {
    let db = TestDb::new().await;
    let store = Store::connect(&db.url, 4, RateTable::default()).unwrap();
    let id = account(&store, PlanType::Unlimited).await;
    catch_up(&store).await;
    let payload = r#"{"type":"account_updated"}"#;
    insert_raw_event(&db.client().await, id, 3, "account_updated", payload, 0)
        .await
        .unwrap();
    let mut gap = None;
    for _ in 0..100 {
        let report = store
            .read_models()
            .project_batch(READ_MODELS, 100)
            .await
            .unwrap()
            .unwrap();
        if report.gap.is_some() {
            gap = report.gap;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let gap = gap.expect("the gap is reported");
    assert_eq!((gap.account_id, gap.expected, gap.found), (id, 2, 3));
    assert_eq!(store.read_models().projected_version(id).await.unwrap(), 1);
    assert_eq!(
        store.feed().feed_lag(READ_MODELS).await.unwrap().events,
        1,
        "the cursor did not pass it"
    );
}

#[tokio::test]
async fn two_projector_replicas_produce_the_same_tables_as_one() {
    let db = TestDb::new().await;
    let store = Store::connect(&db.url, 8, RateTable::default()).unwrap();
    let accounts: Vec<Uuid> =
        futures::future::join_all((0..4).map(|_| account(&store, PlanType::Free))).await;
    let replicas: Vec<_> = (0..2)
        .map(|_| {
            let replica = Store::connect(&db.url, 2, RateTable::default()).unwrap();
            tokio::spawn(async move {
                let mut applied = 0;
                for _ in 0..400 {
                    if let Some(report) = replica
                        .read_models()
                        .project_batch(READ_MODELS, 7)
                        .await
                        .unwrap()
                    {
                        applied += report.applied;
                    }
                    tokio::task::yield_now().await;
                }
                applied
            })
        })
        .collect();
    let writes = accounts
        .iter()
        .flat_map(|&id| (0..25).map(move |n| (id, n)))
        .map(|(id, n)| {
            let store = store.clone();
            async move {
                store
                    .commands()
                    .execute(id, &meta(), &add(100 + n))
                    .await
                    .unwrap()
                    .unwrap()
            }
        });
    futures::future::join_all(writes).await;
    let mut applied_by_replicas = 0;
    for replica in replicas {
        applied_by_replicas += replica.await.unwrap();
    }
    catch_up(&store).await;
    let total_events = rows(&db, "events").await;
    assert!(
        applied_by_replicas as i64 <= total_events,
        "no event applied twice"
    );
    assert_consistent(&store, &db, &accounts).await;
    let live = dump(&db).await;
    store
        .read_models()
        .rebuild_read_models_with(1_000, |_| {})
        .await
        .unwrap();
    assert_eq!(
        dump(&db).await,
        live,
        "the same tables as one projector makes"
    );
    let per_account: BTreeMap<Uuid, i64> = {
        let mut m = BTreeMap::new();
        for id in &accounts {
            m.insert(
                *id,
                store.read_models().projected_version(*id).await.unwrap(),
            );
        }
        m
    };
    assert!(per_account.values().all(|v| *v == 27));
}

//! An account as it stood at an instant (`Accounts::account_as_of`): the whole
//! view of the last event at or before it, what time had made due by then
//! applied, found by a binary search over versions. Against PostgreSQL,
//! with a pinned clock.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use billing_domain::*;
use billing_store::{Clock, Store};
use billing_testkit::TestDb;
use chrono::{DateTime, Duration, TimeZone, Utc};
use support::{add, meta, new_account};
use uuid::Uuid;

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 10, 12, 0, 0).unwrap()
}

/// A store whose clock stands where the returned handle sets it.
fn pinned(db: &TestDb) -> (Store, Arc<Mutex<DateTime<Utc>>>) {
    let now = Arc::new(Mutex::new(start()));
    let read = now.clone();
    let clock: Clock = Arc::new(move || *read.lock().unwrap());
    let store = Store::connect(&db.url, 8, RateTable::default())
        .unwrap()
        .with_clock(clock);
    (store, now)
}

async fn run(store: &Store, id: Uuid, command: Command) {
    store
        .commands()
        .execute(id, &meta(), &command)
        .await
        .unwrap()
        .unwrap_or_else(|r| panic!("{command:?} refused: {r}"));
}

async fn as_of(store: &Store, id: Uuid, at: DateTime<Utc>) -> Option<AccountView> {
    let current = store.accounts().account(id).await.unwrap().unwrap();
    store.accounts().account_as_of(&current, at).await.unwrap()
}

fn reserve(id: &str, ttl_seconds: i64) -> Command {
    Command::Reserve(Reserve {
        reservation_id: id.into(),
        service_type: ServiceType::CallVn,
        requested_units: 60_000,
        allow_partial: false,
        ttl_seconds,
    })
}

#[tokio::test]
async fn as_of_returns_the_whole_account_between_events_and_nothing_before_it_existed() {
    let db = TestDb::new().await;
    let (store, clock) = pinned(&db);
    let id = Uuid::new_v4();
    store
        .commands()
        .create_account(id, &meta(), &new_account(PlanType::Basic))
        .await
        .unwrap()
        .unwrap();
    let t = start();
    *clock.lock().unwrap() = t + Duration::seconds(10);
    run(&store, id, add(10_000_000)).await;
    *clock.lock().unwrap() = t + Duration::seconds(20);
    run(
        &store,
        id,
        Command::Update(AccountPatch {
            status: Some(AccountStatus::Frozen),
            credit_limit: Some(Micros(50_000_000)),
            is_postpaid: Some(true),
            credit_limit_type: Some(CreditLimitType::Soft),
            low_balance_threshold: Some(Micros(1_000_000)),
            ..AccountPatch::default()
        }),
    )
    .await;
    *clock.lock().unwrap() = t + Duration::seconds(30);

    assert_eq!(as_of(&store, id, t - Duration::microseconds(1)).await, None);

    // Between the payment and the change of settings: the old settings.
    let before = as_of(&store, id, t + Duration::seconds(15)).await.unwrap();
    assert_eq!(before.balance_credit, Micros(10_000_000));
    assert_eq!(before.available_credit, Micros(10_000_000));
    assert_eq!(
        (
            before.status,
            before.credit_limit,
            before.is_postpaid,
            before.credit_limit_type,
            before.low_balance_threshold
        ),
        (
            AccountStatus::Active,
            Micros::ZERO,
            false,
            CreditLimitType::Hard,
            Micros::ZERO
        )
    );
    let created = as_of(&store, id, t).await.unwrap();
    assert_eq!(created.balance_credit, Micros::ZERO);
    assert!(created.version < before.version);

    // At the instant of the change, and after it: the new settings, and an
    // available balance that agrees with them.
    for at in [t + Duration::seconds(20), t + Duration::seconds(25)] {
        let after = as_of(&store, id, at).await.unwrap();
        assert_eq!(after.version, before.version + 1);
        assert_eq!(
            (after.status, after.credit_limit, after.is_postpaid),
            (AccountStatus::Frozen, Micros(50_000_000), true)
        );
        assert_eq!(after.available_credit, Micros(60_000_000));
    }
}

#[tokio::test]
async fn a_hold_expired_before_the_instant_is_not_reserved_whether_or_not_its_expiry_was_recorded_yet()
 {
    let db = TestDb::new().await;
    let (store, clock) = pinned(&db);
    let id = Uuid::new_v4();
    store
        .commands()
        .create_account(id, &meta(), &new_account(PlanType::Free))
        .await
        .unwrap()
        .unwrap();
    let t = start();
    run(&store, id, add(100_000_000)).await;
    *clock.lock().unwrap() = t + Duration::seconds(10);
    run(&store, id, reserve("call-1", 60)).await;
    let held = as_of(&store, id, t + Duration::seconds(30)).await.unwrap();
    assert!(held.reserved_credit.is_positive(), "{held:?}");
    assert_eq!(
        held.available_credit,
        Micros(100_000_000 - held.reserved_credit.get())
    );

    // Past its expiry, nothing recorded since: the live row says so.
    *clock.lock().unwrap() = t + Duration::seconds(200);
    let expired = as_of(&store, id, t + Duration::seconds(90)).await.unwrap();
    assert_eq!(expired.version, held.version, "nothing was recorded");
    assert_eq!(expired.reserved_credit, Micros::ZERO);
    assert_eq!(expired.available_credit, Micros(100_000_000));

    // The next command records the expiry (at 200 s, after the instant):
    // the same answer, from the recorded expiry.
    run(&store, id, add(1)).await;
    assert_eq!(
        as_of(&store, id, t + Duration::seconds(90)).await.unwrap(),
        expired
    );
    assert_eq!(
        as_of(&store, id, t + Duration::seconds(30)).await.unwrap(),
        held,
        "before its expiry, still held"
    );
    let now = as_of(&store, id, t + Duration::seconds(200)).await.unwrap();
    assert_eq!(now.reserved_credit, Micros::ZERO);
    assert_eq!(now.balance_credit, Micros(100_000_001));
}

#[tokio::test]
async fn promotional_credit_stops_counting_at_its_expiry_in_an_as_of_read() {
    let db = TestDb::new().await;
    let (store, clock) = pinned(&db);
    let id = Uuid::new_v4();
    store
        .commands()
        .create_account(id, &meta(), &new_account(PlanType::Free))
        .await
        .unwrap()
        .unwrap();
    let t = start();
    run(
        &store,
        id,
        Command::AddBalance(BalanceChange {
            amount_credit: Micros(5_000_000),
            amount_token: Tokens(0),
            reference_type: ReferenceType::Promotion,
            reference_id: String::new(),
            note: String::new(),
            bucket: Bucket::Promotional,
            expires_at: Some(t + Duration::seconds(100)),
        }),
    )
    .await;
    *clock.lock().unwrap() = t + Duration::seconds(500);
    let live = as_of(&store, id, t + Duration::seconds(50)).await.unwrap();
    assert_eq!(live.balance_promotional, Micros(5_000_000));
    assert_eq!(live.available_credit, Micros(5_000_000));
    let gone = as_of(&store, id, t + Duration::seconds(150)).await.unwrap();
    assert_eq!(gone.balance_promotional, Micros::ZERO);
    assert_eq!(gone.available_credit, Micros::ZERO);
    assert!(gone.promotional_grants.is_empty());
}

/// Not a test of time: prints what `account_as_of` costs at an early
/// instant on an account with many events beside a young one (BENCHMARKS.md,
/// "As-of balances"), and what the walk back from the newest event it
/// replaced cost. `AS_OF_EVENTS` sets the long account's events (200,000 by
/// default):
///
/// `cargo test --release -p billing-store --test as_of -- --ignored --nocapture`
#[tokio::test]
#[ignore = "a measurement: run it by name (BENCHMARKS.md)"]
async fn measure_as_of_on_a_long_history_beside_a_young_account() {
    let events: usize = std::env::var("AS_OF_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    let db = TestDb::new().await;
    let store = Store::connect(&db.url, 16, RateTable::default()).unwrap();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let id = Uuid::new_v4();
        store
            .commands()
            .create_account(id, &meta(), &new_account(PlanType::Free))
            .await
            .unwrap()
            .unwrap();
        ids.push(id);
    }
    let (long, young) = (ids[0], ids[1]);
    let early = store.now();
    run(&store, young, add(1)).await;
    let started = Instant::now();
    // 64 at a time: group commit writes each batch of them as one.
    let mut written = 0;
    while written < events {
        let n = 64.min(events - written);
        futures::future::join_all((0..n).map(|_| run(&store, long, add(1)))).await;
        written += n;
    }
    eprintln!(
        "wrote {events} events in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let client = db.client().await;
    client.batch_execute("VACUUM ANALYZE events").await.unwrap();
    let current = [
        store.accounts().account(long).await.unwrap().unwrap(),
        store.accounts().account(young).await.unwrap().unwrap(),
    ];
    // Each way on its own (the walk back reads the whole history, which
    // would evict the pages the binary search reads).
    for (name, account) in [("long", &current[0]), ("young", &current[1])] {
        let mut times = Vec::new();
        for _ in 0..1_000 {
            let t = Instant::now();
            let view = store
                .accounts()
                .account_as_of(account, early)
                .await
                .unwrap();
            times.push(t.elapsed());
            assert!(view.is_some());
        }
        report(name, account.version, "binary search", times);
    }
    for (name, account) in [("long", &current[0]), ("young", &current[1])] {
        let mut times = Vec::new();
        for _ in 0..50 {
            let t = Instant::now();
            client
                .query_opt(
                    "SELECT version, balance_credit FROM events
                     WHERE account_id = $1 AND occurred_at <= $2
                     ORDER BY version DESC LIMIT 1",
                    &[&account.id, &early],
                )
                .await
                .unwrap();
            times.push(t.elapsed());
        }
        report(name, account.version, "walk back (before)", times);
    }
}

fn report(name: &str, events: i64, way: &str, mut times: Vec<std::time::Duration>) {
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    eprintln!(
        "{name} account ({events} events), {way}: p50 {:.2} ms, p99 {:.2} ms",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3
    );
}

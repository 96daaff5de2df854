//! Retention (`Maintenance::remove_expired`): idempotency records and
//! resolved reservations older than their windows go, younger ones and live
//! holds stay, a retry inside the window still gets the first answer, and
//! the batches neither take account locks nor wait for the command path.
//! Against PostgreSQL, with a pinned clock.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use billing_domain::*;
use billing_store::{Actor, Clock, Idempotency, RequestMeta, Store};
use billing_testkit::TestDb;
use chrono::{DateTime, Duration, TimeZone, Utc};
use support::{add, new_account, rows};
use uuid::Uuid;

const WEEK: StdDuration = StdDuration::from_secs(7 * 86_400);

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 10, 12, 0, 0).unwrap()
}

fn pinned(db: &TestDb) -> (Store, Arc<Mutex<DateTime<Utc>>>) {
    let now = Arc::new(Mutex::new(start()));
    let read = now.clone();
    let clock: Clock = Arc::new(move || *read.lock().unwrap());
    let store = Store::connect(&db.url, 8, RateTable::default())
        .unwrap()
        .with_clock(clock);
    (store, now)
}

fn keyed(key: Option<&str>) -> RequestMeta {
    RequestMeta {
        actor: Actor {
            principal: "tester".into(),
            role: "project_super_admin".into(),
        },
        idempotency: key.map(|k| Idempotency {
            key: k.into(),
            operation: "AddBalance",
            request_hash: b"same request".to_vec(),
        }),
        trace_id: None,
        span_id: None,
    }
}

fn reserve(id: &str) -> Command {
    Command::Reserve(Reserve {
        reservation_id: id.into(),
        service_type: ServiceType::CallVn,
        requested_units: 60_000,
        allow_partial: false,
        ttl_seconds: 600,
    })
}

fn commit(id: &str) -> Command {
    Command::Commit(Commit {
        reservation_id: id.into(),
        used_duration_ms: 30_000,
        used_quantity: 0,
    })
}

async fn account(store: &Store, credit: i64) -> Uuid {
    let id = Uuid::new_v4();
    store
        .commands()
        .create_account(id, &keyed(None), &new_account(PlanType::Free))
        .await
        .unwrap()
        .unwrap();
    store
        .commands()
        .execute(id, &keyed(None), &add(credit))
        .await
        .unwrap()
        .unwrap();
    id
}

async fn keys(db: &TestDb) -> Vec<String> {
    let rows = db
        .client()
        .await
        .query(
            "SELECT idempotency_key FROM idempotency_keys ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

async fn reservations(db: &TestDb) -> Vec<(String, String)> {
    let rows = db
        .client()
        .await
        .query(
            "SELECT reservation_id, status FROM reservations ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// At `start`: a keyed payment ("old") and a committed call ("call-old") on
/// one account, a live hold ("call-live") on another that nothing touches
/// again. Six days later: a keyed payment ("young") and a committed call
/// ("call-young"). Returns the first account, and the young payment's
/// first answer.
async fn history(store: &Store, clock: &Mutex<DateTime<Utc>>) -> (Uuid, Outcome) {
    let id = account(store, 100_000_000).await;
    let idle = account(store, 100_000_000).await;
    let ok = |a: billing_store::Answer| a.unwrap();
    ok(store
        .commands()
        .execute(id, &keyed(Some("old")), &add(1_000))
        .await
        .unwrap());
    ok(store
        .commands()
        .execute(id, &keyed(None), &reserve("call-old"))
        .await
        .unwrap());
    ok(store
        .commands()
        .execute_on_reservation(&keyed(None), &commit("call-old"))
        .await
        .unwrap());
    ok(store
        .commands()
        .execute(idle, &keyed(None), &reserve("call-live"))
        .await
        .unwrap());
    *clock.lock().unwrap() = start() + Duration::days(6);
    let young = ok(store
        .commands()
        .execute(id, &keyed(Some("young")), &add(1_000))
        .await
        .unwrap());
    ok(store
        .commands()
        .execute(id, &keyed(None), &reserve("call-young"))
        .await
        .unwrap());
    ok(store
        .commands()
        .execute_on_reservation(&keyed(None), &commit("call-young"))
        .await
        .unwrap());
    (id, young)
}

#[tokio::test]
async fn records_older_than_the_window_go_and_younger_ones_and_live_holds_stay() {
    let db = TestDb::new().await;
    let (store, clock) = pinned(&db);
    history(&store, &clock).await;

    // Six days in, nothing is a week old yet.
    let removed = store
        .maintenance()
        .remove_expired(Some(WEEK), Some(WEEK), 10)
        .await
        .unwrap();
    assert_eq!(removed, billing_store::Removed::default());
    assert_eq!(keys(&db).await, ["old", "young"]);

    *clock.lock().unwrap() = start() + Duration::days(7) + Duration::seconds(1);
    let removed = store
        .maintenance()
        .remove_expired(Some(WEEK), Some(WEEK), 10)
        .await
        .unwrap();
    assert_eq!((removed.idempotency_keys, removed.reservations), (1, 1));
    assert_eq!(keys(&db).await, ["young"]);
    assert_eq!(
        reservations(&db).await,
        [
            ("call-live".to_owned(), "active".to_owned()),
            ("call-young".to_owned(), "committed".to_owned()),
        ],
        "a live hold stays whatever its age (its expiry is not recorded yet)"
    );

    // A window of `None` keeps everything, whatever its age.
    *clock.lock().unwrap() = start() + Duration::days(400);
    let removed = store
        .maintenance()
        .remove_expired(None, None, 10)
        .await
        .unwrap();
    assert_eq!(removed, billing_store::Removed::default());
    assert_eq!(rows(&db, "idempotency_keys").await, 1);
}

#[tokio::test]
async fn a_retry_inside_the_window_replays_the_first_answer_after_a_sweep_and_one_after_it_is_new()
{
    let db = TestDb::new().await;
    let (store, clock) = pinned(&db);
    let (id, young) = history(&store, &clock).await;
    *clock.lock().unwrap() = start() + Duration::days(7) + Duration::seconds(1);
    let client = db.client().await;
    let reservation = || billing_testkit::rows::reservation(&client, "call-young", store.now());
    let first_commit = reservation().await.unwrap();
    store
        .maintenance()
        .remove_expired(Some(WEEK), Some(WEEK), 10)
        .await
        .unwrap();
    let balance = store
        .accounts()
        .account(id)
        .await
        .unwrap()
        .unwrap()
        .balance_credit;

    // Inside the window: the first answer, applied once.
    let again = store
        .commands()
        .execute(id, &keyed(Some("young")), &add(1_000))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, young, "the first answer, not the account now");
    let commit_again = store
        .commands()
        .execute_on_reservation(&keyed(None), &commit("call-young"))
        .await
        .unwrap()
        .unwrap();
    let Outcome::Commit(commit_again) = commit_again else {
        panic!("{commit_again:?}")
    };
    assert_eq!(commit_again.reservation_id, "call-young");
    assert_eq!(reservation().await.unwrap(), first_commit);
    assert_eq!(
        store
            .accounts()
            .account(id)
            .await
            .unwrap()
            .unwrap()
            .balance_credit,
        balance,
        "nothing applied twice"
    );

    // After the window the service no longer knows the request: a Commit of
    // the removed reservation changes nothing; the old key applies anew (as
    // the README says).
    assert_eq!(
        store
            .commands()
            .execute_on_reservation(&keyed(None), &commit("call-old"))
            .await
            .unwrap(),
        Err(Rejection::ReservationNotFound)
    );
    assert_eq!(
        store
            .accounts()
            .account(id)
            .await
            .unwrap()
            .unwrap()
            .balance_credit,
        balance
    );
    store
        .commands()
        .execute(id, &keyed(Some("old")), &add(1_000))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store
            .accounts()
            .account(id)
            .await
            .unwrap()
            .unwrap()
            .balance_credit,
        Micros(balance.get() + 1_000)
    );
}

#[tokio::test]
async fn retention_batches_take_no_account_lock_and_skip_rows_the_command_path_holds() {
    let db = TestDb::new().await;
    let (store, clock) = pinned(&db);
    history(&store, &clock).await;
    // Twenty more old records, on an account of their own (an account's
    // time never runs backwards).
    *clock.lock().unwrap() = start() + Duration::seconds(1);
    let id = account(&store, 1).await;
    for n in 0..20 {
        store
            .commands()
            .execute(id, &keyed(Some(&format!("old-{n:02}"))), &add(1))
            .await
            .unwrap()
            .unwrap();
    }
    *clock.lock().unwrap() = start() + Duration::days(8);

    // Another session stands where a writer's batch would: the account's
    // lock held, and rows retention wants locked.
    let mut holder = db.client().await;
    let tx = holder.transaction().await.unwrap();
    let (high, low) = id.as_u64_pair();
    let lock_key = i64::from_ne_bytes((high ^ low).to_ne_bytes());
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key])
        .await
        .unwrap();
    tx.execute(
        "SELECT 1 FROM idempotency_keys WHERE idempotency_key = 'old' FOR UPDATE",
        &[],
    )
    .await
    .unwrap();
    tx.execute(
        "SELECT 1 FROM reservations WHERE reservation_id = 'call-old' FOR UPDATE",
        &[],
    )
    .await
    .unwrap();

    let removed = tokio::time::timeout(
        StdDuration::from_secs(10),
        store
            .maintenance()
            .remove_expired(Some(WEEK), Some(WEEK), 10),
    )
    .await
    .expect("retention waited for the command path")
    .unwrap();
    assert_eq!(
        (removed.idempotency_keys, removed.reservations),
        (20, 0),
        "every old row but the two locked ones (the young ones are two days old)"
    );
    assert_eq!(keys(&db).await, ["old", "young"]);
    // Nothing but the holder's session has an advisory lock: retention's
    // statements took none.
    let others: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid <> $1",
            &[&holder_pid(&tx).await],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(others, 0);
    tx.commit().await.unwrap();

    // The command path is not held up by retention either, and the next
    // pass takes what was locked.
    store
        .commands()
        .execute(id, &keyed(None), &add(1))
        .await
        .unwrap()
        .unwrap();
    let removed = store
        .maintenance()
        .remove_expired(Some(WEEK), Some(WEEK), 10)
        .await
        .unwrap();
    assert_eq!((removed.idempotency_keys, removed.reservations), (1, 1));
}

async fn holder_pid(tx: &tokio_postgres::Transaction<'_>) -> i32 {
    tx.query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

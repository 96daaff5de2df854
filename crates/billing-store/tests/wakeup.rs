//! Feed readers' wake-ups (`FeedWakeup`), against a real PostgreSQL.

mod support;

use std::time::Duration;

use billing_domain::{PlanType, RateTable};
use billing_store::{FeedWakeup, Store};
use billing_testkit::TestDb;
use support::{meta, new_account};
use uuid::Uuid;

/// A poll interval no test waits out: a wait that returns `true` before it
/// was woken by PostgreSQL or by taking up its `LISTEN`.
const NEVER: Duration = Duration::from_secs(600);
/// How long a wake-up may take on a busy machine.
const SOON: Duration = Duration::from_secs(10);

async fn append_an_event(store: &Store) {
    store
        .commands()
        .create_account(Uuid::new_v4(), &meta(), &new_account(PlanType::Free))
        .await
        .unwrap()
        .unwrap();
}

/// A store on a fresh database, and wake-ups for a reader of it.
async fn reader() -> (TestDb, Store, FeedWakeup) {
    let db = TestDb::new().await;
    let store = Store::connect(&db.url, 4, RateTable::default()).unwrap();
    let wakeup = store.feed().wakeup("test");
    (db, store, wakeup)
}

/// Waits as a caught-up reader does; true when woken before `SOON` (never
/// by the poll, which is `NEVER`).
async fn woken(wakeup: &FeedWakeup) -> bool {
    tokio::time::timeout(SOON, wakeup.wait(NEVER))
        .await
        .unwrap_or(false)
}

/// The last statement of this database's listening connection.
async fn listener_statement(db: &TestDb) -> Option<String> {
    let client = db.client().await;
    client
        .query_opt(
            "SELECT query FROM pg_stat_activity
             WHERE datname = current_database() AND query LIKE '%LISTEN billing_events'",
            &[],
        )
        .await
        .unwrap()
        .map(|row| row.get(0))
}

async fn until_listener_ran(db: &TestDb, statement: &str) {
    let deadline = tokio::time::Instant::now() + SOON;
    while listener_statement(db).await.as_deref() != Some(statement) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the listener never ran `{statement}`: {:?}",
            listener_statement(db).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_waiting_reader_is_woken_by_each_commit() {
    let (_db, store, wakeup) = reader().await;
    // Taking up the LISTEN wakes the reader once, to look.
    assert!(woken(&wakeup).await);
    for _ in 0..3 {
        append_an_event(&store).await;
        assert!(woken(&wakeup).await, "a commit wakes a waiting reader");
    }
}

#[tokio::test]
async fn a_busy_reader_stops_listening_and_looks_again_at_once_when_it_waits() {
    let (db, store, wakeup) = reader().await;
    assert!(woken(&wakeup).await);
    until_listener_ran(&db, "LISTEN billing_events").await;

    // Busy: no notification reaches the reader's connection (PostgreSQL
    // signals listening backends only).
    wakeup.quiet();
    until_listener_ran(&db, "UNLISTEN billing_events").await;
    append_an_event(&store).await;

    // Caught up: it listens again and looks at once, so the event committed
    // while nobody listened is not left for the next poll.
    assert!(
        woken(&wakeup).await,
        "taking up the LISTEN again wakes the reader"
    );
    until_listener_ran(&db, "LISTEN billing_events").await;
    append_an_event(&store).await;
    assert!(woken(&wakeup).await);
}

#[tokio::test]
async fn the_listening_connection_closes_with_its_reader() {
    let (db, _store, wakeup) = reader().await;
    assert!(woken(&wakeup).await);
    until_listener_ran(&db, "LISTEN billing_events").await;
    drop(wakeup);
    let deadline = tokio::time::Instant::now() + SOON;
    while listener_statement(&db).await.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the listening connection outlived its reader"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

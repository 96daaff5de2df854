//! The feed follower (`Follower`, `FeedHandler`), against a real
//! PostgreSQL: every event handed over once and in order with the checkpoint
//! moved after it, a failed batch given again from the checkpoint, one
//! active reader per checkpoint (a stand-by takes over), and `billing
//! rebuild` beside a live projector.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use billing_domain::{PlanType, RateTable};
use billing_store::{
    Cursor, FeedBatch, FeedHandler, FeedRead, Follower, READ_MODELS, Store, StoreError,
};
use billing_testkit::TestDb;
use support::{add, meta, new_account};
use tokio::sync::watch;
use uuid::Uuid;

/// How long a follower may take to catch up on a busy machine.
const SOON: Duration = Duration::from_secs(20);

/// What a handler saw: (account, version) per event, in the order handed.
type Seen = Arc<Mutex<Vec<(Uuid, i64)>>>;

/// Records every event; fails the batches `fail` names (by their number,
/// counting every call).
struct Recorder {
    seen: Seen,
    calls: usize,
    fail: Vec<usize>,
}

impl Recorder {
    fn new() -> (Self, Seen) {
        let seen = Seen::default();
        (
            Self {
                seen: seen.clone(),
                calls: 0,
                fail: Vec::new(),
            },
            seen,
        )
    }
}

impl FeedHandler for Recorder {
    type Error = String;
    const READ: FeedRead = FeedRead::EventsWithPrevious;

    async fn handle(&mut self, batch: &FeedBatch) -> Result<(), String> {
        self.calls += 1;
        assert_eq!(batch.previous.len(), batch.events.len());
        if self.fail.contains(&self.calls) {
            return Err(format!("batch {} fails", self.calls));
        }
        let mut seen = self.seen.lock().unwrap();
        seen.extend(batch.events.iter().map(|e| (e.account_id, e.version)));
        Ok(())
    }
}

/// A store on a fresh database with checkpoint `name` at the start.
async fn store_with_checkpoint(name: &str) -> (TestDb, Store) {
    let db = TestDb::new().await;
    db.client()
        .await
        .execute(
            "INSERT INTO feed_checkpoints (name, xid, position) VALUES ($1, '0', 0)",
            &[&name],
        )
        .await
        .unwrap();
    let store = Store::connect(&db.url, 4, RateTable::default()).unwrap();
    (db, store)
}

/// Accounts with a few top-ups each.
async fn write(store: &Store, accounts: usize, top_ups: i64) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for _ in 0..accounts {
        let id = Uuid::new_v4();
        store
            .commands()
            .create_account(id, &meta(), &new_account(PlanType::Unlimited))
            .await
            .unwrap()
            .unwrap();
        ids.push(id);
    }
    let writes = ids
        .iter()
        .flat_map(|&id| (0..top_ups).map(move |n| (id, n)));
    futures::future::join_all(writes.map(|(id, n)| {
        let store = store.clone();
        async move {
            store
                .commands()
                .execute(id, &meta(), &add(1 + n))
                .await
                .unwrap()
        }
    }))
    .await;
    ids
}

/// Every event in feed order, as (account, version).
async fn feed(store: &Store) -> Vec<(Uuid, i64)> {
    let mut all = Vec::new();
    let mut cursor = Cursor::START;
    loop {
        let events = store.feed().read_feed(cursor, 1_000).await.unwrap();
        let Some(last) = events.last() else {
            return all;
        };
        cursor = last.cursor;
        all.extend(events.iter().map(|e| (e.account_id, e.version)));
    }
}

/// Waits until `done` holds of what was seen.
async fn until(seen: &Seen, what: &str, done: impl Fn(&[(Uuid, i64)]) -> bool) {
    let deadline = tokio::time::Instant::now() + SOON;
    while !done(&seen.lock().unwrap()) {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_follower_hands_every_event_once_in_feed_order_and_moves_its_checkpoint() {
    let (_db, store) = store_with_checkpoint("test").await;
    write(&store, 3, 4).await;
    let (recorder, seen) = Recorder::new();
    let (stop, shutdown) = watch::channel(false);
    let follower =
        tokio::spawn(Follower::checkpoint(&store, "test", "test").run(recorder, shutdown));
    // Events while it follows wake it.
    write(&store, 2, 3).await;
    let expected = feed(&store).await;
    until(&seen, "every event handed over", |seen| {
        seen.len() >= expected.len()
    })
    .await;
    assert_eq!(*seen.lock().unwrap(), expected, "once each, in feed order");
    // The checkpoint moves once the handler has returned: soon after the
    // last batch was seen, not necessarily before.
    let deadline = tokio::time::Instant::now() + SOON;
    while store.feed().feed_lag("test").await.unwrap().events != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the checkpoint moved past every event"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    tokio::time::timeout(SOON, follower)
        .await
        .expect("stops when told")
        .unwrap();
}

#[tokio::test]
async fn a_failed_batch_is_handed_over_again_from_the_checkpoint() {
    let (_db, store) = store_with_checkpoint("test").await;
    write(&store, 2, 3).await;
    let expected = feed(&store).await;
    let (mut recorder, seen) = Recorder::new();
    recorder.fail = vec![1, 2];
    let (stop, shutdown) = watch::channel(false);
    let follower =
        tokio::spawn(Follower::checkpoint(&store, "test", "test").run(recorder, shutdown));
    until(&seen, "every event handed over", |seen| {
        seen.len() >= expected.len()
    })
    .await;
    assert_eq!(*seen.lock().unwrap(), expected, "nothing skipped");
    stop.send(true).unwrap();
    let recorder = follower.await.unwrap();
    assert!(recorder.calls >= 3, "two failures, then the batch again");
}

#[tokio::test]
async fn one_follower_per_checkpoint_is_active_and_a_stand_by_takes_over_when_it_stops() {
    let (_db, store) = store_with_checkpoint("test").await;
    write(&store, 2, 2).await;
    let (first, first_seen) = Recorder::new();
    let (stop_first, shutdown) = watch::channel(false);
    let first = tokio::spawn(Follower::checkpoint(&store, "test", "test").run(first, shutdown));
    let before = feed(&store).await;
    until(&first_seen, "the first follower catches up", |seen| {
        seen.len() >= before.len()
    })
    .await;
    let (second, second_seen) = Recorder::new();
    let (stop_second, shutdown) = watch::channel(false);
    let second = tokio::spawn(Follower::checkpoint(&store, "test", "test").run(second, shutdown));
    write(&store, 1, 2).await;
    let during = feed(&store).await;
    until(&first_seen, "the active follower reads on", |seen| {
        seen.len() >= during.len()
    })
    .await;
    assert!(
        second_seen.lock().unwrap().is_empty(),
        "the stand-by reads nothing"
    );
    stop_first.send(true).unwrap();
    first.await.unwrap();
    write(&store, 1, 2).await;
    let after = feed(&store).await;
    let handed_over = after[during.len()..].to_vec();
    until(&second_seen, "the stand-by takes over", |seen| {
        seen.ends_with(&handed_over)
    })
    .await;
    assert_eq!(
        *second_seen.lock().unwrap(),
        handed_over,
        "from the checkpoint the first left"
    );
    stop_second.send(true).unwrap();
    second.await.unwrap();
}

/// The projector's handler, without the role's metrics and spans.
struct Projector(Store);

impl FeedHandler for Projector {
    type Error = StoreError;
    const READ: FeedRead = FeedRead::EventsWithoutView;

    async fn handle(&mut self, batch: &FeedBatch) -> Result<(), StoreError> {
        self.0.read_models().project(batch).await.map(|_| ())
    }
}

/// Both read-model tables as text, in a fixed order.
async fn dump(db: &TestDb) -> Vec<String> {
    let client = db.client().await;
    let mut rows = Vec::new();
    for sql in [
        "SELECT row_to_json(a)::text FROM rm_accounts a ORDER BY account_id",
        "SELECT row_to_json(l)::text FROM ledger_entries l ORDER BY account_id, version",
    ] {
        rows.extend(
            client
                .query(sql, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<_, String>(0)),
        );
    }
    rows
}

#[tokio::test]
async fn a_rebuild_beside_a_live_projector_leaves_the_tables_a_rebuild_makes() {
    let db = TestDb::new().await;
    let store = Store::connect(&db.url, 8, RateTable::default()).unwrap();
    let (stop, shutdown) = watch::channel(false);
    let projector = tokio::spawn(
        Follower::checkpoint(&store, "projector", READ_MODELS)
            .run(Projector(store.clone()), shutdown),
    );
    let writing = {
        let store = store.clone();
        tokio::spawn(async move { write(&store, 4, 30).await })
    };
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        store
            .read_models()
            .rebuild_read_models_with(25, |_| {})
            .await
            .unwrap();
    }
    writing.await.unwrap();
    let deadline = tokio::time::Instant::now() + SOON;
    while store.feed().feed_lag(READ_MODELS).await.unwrap().events > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the projector catches up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let live = dump(&db).await;
    assert!(live.len() >= 4 + 4 * 30, "every account and top-up");
    stop.send(true).unwrap();
    projector.await.unwrap();
    store
        .read_models()
        .rebuild_read_models_with(1_000, |_| {})
        .await
        .unwrap();
    assert_eq!(dump(&db).await, live, "what a rebuild alone makes");
}

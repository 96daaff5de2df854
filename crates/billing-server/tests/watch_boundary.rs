//! `WatchAccount` where the transaction ids gain a digit (issue 27): the
//! watch follower once sorted its page by the xid's text ("10000" before
//! "9999"), so a full page of events past a power of ten passed over an
//! account's versions just below it, and a watcher waited for them until the
//! account changed again.
//!
//! The test holds a transaction open so the follower sees nothing until
//! everything is written: the watched account's new versions just below a
//! power of ten, then more than a page of other accounts' events past it.
//! Transaction ids are the server's, so it burns them to get there (a
//! procedure committing in a loop: about 2.2 s a million on a test server);
//! when the power of ten is too far to burn to cheaply it says so and checks
//! nothing (`BILLING_TEST_MAX_XID_BURN` raises the limit).
//!
//! Ignored by default: every test that crosses a power of ten leaves the
//! next one ten times as far for those after it on the same server, and
//! billing-store's tests (which run later in `make test`) cross two. The
//! store's `watch_boundary` test checks the same reads page by page; run
//! this one with
//! `cargo test -p billing-server --test watch_boundary -- --ignored`.

mod support;

use std::time::{Duration, Instant};

use billing_proto::v1 as pb;
use futures::StreamExt;
use support::TestApp;
use tokio_postgres::Client;
use uuid::Uuid;

/// The follower's page (`FEED_PAGE` in billing-api's watch): the events
/// written past the power of ten must fill one.
const FEED_PAGE: i64 = 2_000;
/// The most transaction ids the test burns to reach a power of ten.
const MAX_BURN: i64 = 2_000_000;
/// How far below the power of ten the watched account's versions start.
const BELOW: i64 = 30;
/// The watched account's versions written below the power of ten.
const VERSIONS: i64 = 5;
/// How long the watcher may take to see them once they are visible.
const PATIENCE: Duration = Duration::from_secs(10);

fn max_burn() -> i64 {
    std::env::var("BILLING_TEST_MAX_XID_BURN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MAX_BURN)
}

/// The next transaction id the server hands out (asking assigns none).
async fn next_xid(client: &Client) -> i64 {
    client
        .query_one(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Burns transaction ids, each in a transaction of its own, until the next
/// one is `target` or past it.
async fn burn_to(client: &Client, target: i64) {
    client
        .batch_execute("SET synchronous_commit = off")
        .await
        .unwrap();
    // A statement of its own, so the procedure may commit.
    client
        .batch_execute(&format!("CALL burn_xids_to({target})"))
        .await
        .unwrap();
}

/// The transaction ids of `account_id`'s versions past `after`.
async fn xids(client: &Client, account_id: Uuid, after: i64) -> Vec<i64> {
    client
        .query(
            "SELECT xid::text::bigint FROM events WHERE account_id = $1 AND version > $2
             ORDER BY version",
            &[&account_id, &after],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[tokio::test]
#[ignore = "burns transaction ids, making later digit-boundary tests on the server ten times slower"]
async fn a_watcher_sees_versions_just_below_a_power_of_ten_behind_a_full_page_past_it() {
    let app = TestApp::spawn().await;
    let account = app.account(0).await;
    let account_id: Uuid = account.id.parse().unwrap();
    let mut stream = app
        .new_client()
        .await
        .watch_account(pb::WatchAccountRequest {
            account_id: account.id.clone(),
            after_version: Some(account.version),
        })
        .await
        .unwrap()
        .into_inner();
    // The follower has its place in the feed (the stream is open). From now
    // on it sees nothing new until the blocker commits.
    let blocker = app.db.client().await;
    blocker.batch_execute("BEGIN").await.unwrap();
    blocker
        .query_one("SELECT pg_current_xact_id()", &[])
        .await
        .unwrap();
    let burner = app.db.client().await;
    burner
        .batch_execute(
            "CREATE PROCEDURE burn_xids_to(target bigint) LANGUAGE plpgsql AS $$
             BEGIN
                 WHILE pg_current_xact_id()::text::bigint < target LOOP
                     COMMIT;
                 END LOOP;
             END $$",
        )
        .await
        .unwrap();

    // The watched account's versions, just below a power of ten (again at
    // the next one should the server's other work take the ids meant for
    // them).
    let mut last = account.version;
    let mut boundary = 10;
    for attempt in 1..=3 {
        let next = next_xid(&burner).await;
        while boundary - BELOW < next + 10 {
            boundary *= 10;
        }
        let burn = boundary - BELOW - next;
        if burn > max_burn() {
            eprintln!(
                "SKIPPED: the next power of ten in the transaction ids ({boundary}) is {burn} \
                 ids away, more than {} to burn; run on a fresh server (`make test`) or raise \
                 BILLING_TEST_MAX_XID_BURN",
                max_burn()
            );
            return;
        }
        let started = Instant::now();
        burn_to(&burner, boundary - BELOW).await;
        eprintln!(
            "burnt {burn} transaction ids to {boundary} - {BELOW} in {:?}",
            started.elapsed()
        );
        let before = last;
        for _ in 0..VERSIONS {
            last = app.add(&account.id, 1_000, 0).await.version;
        }
        let written = xids(&burner, account_id, before).await;
        if written.iter().all(|xid| *xid < boundary) {
            break;
        }
        assert!(
            attempt < 3,
            "the versions keep missing {boundary}: {written:?}"
        );
    }

    // More than a page of other accounts' events past the power of ten.
    burn_to(&burner, boundary).await;
    let started = Instant::now();
    let mut past = 0;
    while past < FEED_PAGE + 100 {
        futures::stream::iter(0..200)
            .map(|_| app.account(0))
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
        past = burner
            .query_one(
                "SELECT count(*) FROM events WHERE xid >= $1::text::xid8",
                &[&boundary.to_string()],
            )
            .await
            .unwrap()
            .get(0);
    }
    eprintln!("{past} events past {boundary} in {:?}", started.elapsed());
    let xids = xids(&burner, account_id, account.version).await;
    assert!(
        xids.iter().filter(|xid| **xid < boundary).count() >= VERSIONS as usize,
        "versions below {boundary}: {xids:?}"
    );
    blocker.batch_execute("COMMIT").await.unwrap();

    // Every version, in order, without another change to the account.
    let mut seen = Vec::new();
    while seen.last().is_none_or(|v| *v < last) {
        let view = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no view of versions {}..={last} (xids {xids:?}, across {boundary}) after \
                     {seen:?} within {PATIENCE:?}",
                    account.version + 1
                )
            })
            .expect("a view, not an error")
            .expect("the stream stays open");
        seen.push(view.version);
    }
    assert_eq!(seen, (account.version + 1..=last).collect::<Vec<_>>());
}

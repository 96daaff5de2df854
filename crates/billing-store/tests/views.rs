//! Account views kept on every n-th event and folded for the others
//! (`views.rs`), against a real PostgreSQL: every way a view is read back
//! (an account's events, the feed cold and warm, the watch history, an
//! as-of read, a replayed command) gives the view its command answered.

mod support;

use std::collections::BTreeMap;

use billing_domain::*;
use billing_store::{Cursor, Idempotency, RequestMeta, Store};
use billing_testkit::TestDb;
use support::{add, meta, new_account};
use uuid::Uuid;

const EVERY: i64 = 8;

fn keyed(key: &str) -> RequestMeta {
    RequestMeta {
        idempotency: Some(Idempotency {
            key: key.into(),
            operation: "Debit",
            request_hash: key.as_bytes().to_vec(),
        }),
        ..meta()
    }
}

fn view_of(outcome: &Outcome) -> Option<&AccountView> {
    match outcome {
        Outcome::Account(view) => Some(view),
        Outcome::Charge(c) => Some(&c.account),
        Outcome::Commit(c) => Some(&c.account),
        Outcome::Reservation(_) => None,
    }
}

fn sms() -> Command {
    Command::Debit(Debit {
        service_type: ServiceType::Sms,
        usage: Usage::Quantity(1),
        reference_type: ReferenceType::Sms,
        reference_id: String::new(),
    })
}

fn reserve(id: &str) -> Command {
    Command::Reserve(Reserve {
        reservation_id: id.into(),
        service_type: ServiceType::CallPstnOutgoing,
        requested_units: 3,
        allow_partial: true,
        ttl_seconds: 0,
    })
}

fn promotional(credit: i64) -> Command {
    let Command::AddBalance(mut change) = add(credit) else {
        unreachable!()
    };
    change.bucket = Bucket::Promotional;
    Command::AddBalance(change)
}

/// An account taken through every kind of change, with the view each
/// answer carried, by version.
async fn history(store: &Store) -> (Uuid, BTreeMap<i64, AccountView>, Vec<(String, Outcome)>) {
    let id = Uuid::new_v4();
    let mut answered = BTreeMap::new();
    let mut keyed_answers = Vec::new();
    let mut record = |outcome: &Outcome| {
        if let Some(view) = view_of(outcome) {
            answered.insert(view.version, view.clone());
        }
    };
    record(
        &store
            .commands()
            .create_account(id, &meta(), &new_account(PlanType::Basic))
            .await
            .unwrap()
            .unwrap(),
    );
    for i in 0..40 {
        let r = format!("r-{id}-{i}");
        let steps: Vec<(RequestMeta, Command)> = match i % 6 {
            0 => vec![(meta(), add(1_000_000))],
            1 => vec![
                (meta(), reserve(&r)),
                (
                    meta(),
                    Command::Commit(Commit {
                        reservation_id: r.clone(),
                        used_duration_ms: 61_000,
                        used_quantity: 0,
                    }),
                ),
            ],
            2 => {
                let key = format!("k-{id}-{i}");
                vec![(keyed(&key), sms())]
            }
            3 => vec![(meta(), promotional(30_000))],
            4 => vec![
                (meta(), reserve(&r)),
                (meta(), Command::Release { reservation_id: r }),
            ],
            _ => vec![(
                meta(),
                Command::Update(AccountPatch {
                    name: Some(format!("name {i}")),
                    is_postpaid: Some(i % 4 == 1),
                    credit_limit: Some(Micros(i * 1000)),
                    ..AccountPatch::default()
                }),
            )],
        };
        for (meta, command) in steps {
            let outcome = store
                .commands()
                .execute(id, &meta, &command)
                .await
                .unwrap()
                .unwrap();
            record(&outcome);
            if let Some(i) = &meta.idempotency {
                keyed_answers.push((i.key.clone(), outcome));
            }
        }
    }
    (id, answered, keyed_answers)
}

#[tokio::test]
async fn every_view_read_back_is_the_one_its_command_answered() {
    let db = TestDb::new().await;
    let store = Store::connect(&db.url, 8, RateTable::default())
        .unwrap()
        .with_view_snapshots(EVERY);
    let (id, answered, keyed_answers) = history(&store).await;
    let last = *answered.keys().last().unwrap();
    assert!(last > 5 * EVERY, "a history long enough to fold over");

    // Only the first event and every EVERY-th keep a view.
    let client = db.client().await;
    let kept: Vec<i64> = client
        .query(
            "SELECT version FROM events WHERE account_id = $1 AND account_after IS NOT NULL
             ORDER BY version",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected: Vec<i64> = (1..=last).filter(|v| v % EVERY == 1).collect();
    assert_eq!(kept, expected);

    let check = |what: &str, views: Vec<(i64, AccountView)>| {
        assert_eq!(views.len() as i64, last, "{what}: a view per event");
        for (version, view) in views {
            assert_eq!(view.version, version, "{what}");
            if let Some(want) = answered.get(&version) {
                assert_eq!(&view, want, "{what}: version {version}");
            }
        }
    };
    let events = store.feed().account_events(id).await.unwrap();
    let by_events: Vec<(i64, AccountView)> = events
        .iter()
        .map(|e| (e.version, e.account_after.clone().unwrap()))
        .collect();
    check("account_events", by_events.clone());

    // The feed, by a process that never saw the account (nothing cached)
    // and in small pages (each page's first event folded from the database),
    // then again with its cache warm.
    let cold = Store::connect(&db.url, 4, RateTable::default()).unwrap();
    for store in [&cold, &cold] {
        let mut after = Cursor::START;
        let mut by_feed = Vec::new();
        loop {
            let page = store.feed().read_feed(after, 5).await.unwrap();
            let Some(end) = page.last() else { break };
            after = end.cursor;
            by_feed.extend(
                page.into_iter()
                    .map(|e| (e.version, e.account_after.unwrap())),
            );
        }
        check("the feed", by_feed);
    }
    let uncached = Store::connect(&db.url, 4, RateTable::default())
        .unwrap()
        .with_view_cache(0);
    let page = uncached
        .feed()
        .read_feed(Cursor::START, 1000)
        .await
        .unwrap();
    check(
        "the feed uncached",
        page.into_iter()
            .map(|e| (e.version, e.account_after.unwrap()))
            .collect(),
    );

    // The watch history, from every starting version.
    for from in [0, 3, EVERY, EVERY + 1, 2 * EVERY + 5] {
        let views = cold.accounts().account_views(id, from, 1000).await.unwrap();
        assert_eq!(views.first().map(|v| v.version), Some(from + 1));
        let expected: Vec<(i64, AccountView)> = by_events
            .iter()
            .filter(|(v, _)| *v > from)
            .cloned()
            .collect();
        let views: Vec<(i64, AccountView)> =
            views.into_iter().map(|v| (v.version, v.view)).collect();
        assert_eq!(views, expected, "watch history from {from}");
    }

    // As of each event's instant (where it is the last of its instant): its
    // view, with what time made due by then (nothing, here).
    let current = cold.accounts().account(id).await.unwrap().unwrap();
    for (i, e) in events.iter().enumerate() {
        if events
            .get(i + 1)
            .is_some_and(|n| n.occurred_at == e.occurred_at)
        {
            continue;
        }
        let as_of = cold
            .accounts()
            .account_as_of(&current, e.occurred_at)
            .await
            .unwrap()
            .unwrap();
        let view = e.account_after.as_ref().unwrap();
        assert_eq!(
            (
                as_of.version,
                as_of.balance_credit,
                as_of.available_credit,
                &as_of.name
            ),
            (
                view.version,
                view.balance_credit,
                view.available_credit,
                &view.name
            ),
            "as of version {}",
            e.version
        );
        assert_eq!(as_of.is_postpaid, view.is_postpaid);
        assert_eq!(as_of.credit_limit, view.credit_limit);
        assert_eq!(as_of.balance_promotional, view.balance_promotional);
    }

    // A replayed keyed command answers what it first answered, view and
    // all, whether or not its event kept the view.
    assert!(
        keyed_answers
            .iter()
            .any(|(_, o)| view_of(o).is_some_and(|v| v.version % EVERY != 1)),
        "a keyed answer whose event keeps no view"
    );
    for (key, first) in &keyed_answers {
        let again = cold
            .commands()
            .execute(id, &keyed(key), &sms())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&again, first, "replay of {key}");
    }
}

#[tokio::test]
async fn a_store_keeping_every_view_and_one_folding_them_read_each_others_events() {
    let db = TestDb::new().await;
    // The release before (a view on every event), then this one.
    let every = Store::connect(&db.url, 4, RateTable::default())
        .unwrap()
        .with_view_snapshots(1);
    let (id, answered, _) = history(&every).await;
    let folding = Store::connect(&db.url, 4, RateTable::default())
        .unwrap()
        .with_view_snapshots(EVERY);
    let mut answered = answered;
    for _ in 0..(2 * EVERY) {
        let outcome = folding
            .commands()
            .execute(id, &meta(), &sms())
            .await
            .unwrap()
            .unwrap();
        let view = view_of(&outcome).unwrap().clone();
        answered.insert(view.version, view);
    }
    let events = Store::connect(&db.url, 4, RateTable::default())
        .unwrap()
        .feed()
        .account_events(id)
        .await
        .unwrap();
    assert_eq!(events.len(), *answered.keys().last().unwrap() as usize);
    for e in &events {
        if let Some(want) = answered.get(&e.version) {
            assert_eq!(
                e.account_after.as_ref(),
                Some(want),
                "version {}",
                e.version
            );
        }
    }
    let verification = folding
        .maintenance()
        .verify_chains(None, |_| {})
        .await
        .unwrap();
    assert!(verification.broken.is_none(), "{verification:?}");
}

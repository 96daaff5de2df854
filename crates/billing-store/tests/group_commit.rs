//! Group commit against a real PostgreSQL: many commands share one
//! transaction, and none of them can tell, whatever the batch holds.

mod support;

use std::collections::BTreeSet;

use billing_domain::*;
use billing_store::{Actor, Answer, Cursor, Idempotency, RequestMeta, Store, StoreError};
use billing_testkit::TestDb;
use support::{add, new_account};
use uuid::Uuid;

fn meta(key: Option<&str>, hash: &[u8]) -> RequestMeta {
    RequestMeta {
        actor: Actor {
            principal: "tester".into(),
            role: "service".into(),
        },
        idempotency: key.map(|k| Idempotency {
            key: k.into(),
            operation: "op",
            request_hash: hash.to_vec(),
        }),
        trace_id: None,
        span_id: None,
    }
}

fn sms(reference_id: &str) -> Command {
    Command::Debit(Debit {
        service_type: ServiceType::Sms,
        usage: Usage::Quantity(1),
        reference_type: ReferenceType::Sms,
        reference_id: reference_id.into(),
    })
}

/// One writer, so that every command on the store queues in one place.
fn one_writer(db: &TestDb) -> Store {
    Store::connect(&db.url, 8, RateTable::default())
        .unwrap()
        .with_writers(1)
}

async fn account_with(store: &Store, credit: i64) -> Uuid {
    let id = Uuid::new_v4();
    store
        .commands()
        .create_account(id, &meta(None, b""), &new_account(PlanType::Free))
        .await
        .unwrap()
        .unwrap();
    if credit > 0 {
        store
            .commands()
            .execute(id, &meta(None, b""), &add(credit))
            .await
            .unwrap()
            .unwrap();
    }
    id
}

/// Runs `commands` on `id` all at once, each answer in the input's order.
async fn all_at_once(
    store: &Store,
    id: Uuid,
    commands: Vec<(RequestMeta, Command)>,
) -> Vec<Result<Answer, StoreError>> {
    let tasks = commands.into_iter().map(|(meta, cmd)| {
        let store = store.clone();
        tokio::spawn(async move { store.commands().execute(id, &meta, &cmd).await })
    });
    futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|t| t.unwrap())
        .collect()
}

/// (event type, transaction id) of each of the account's events, in order.
async fn events_with_xid(db: &TestDb, id: Uuid) -> Vec<(String, String)> {
    db.client()
        .await
        .query(
            "SELECT event_type, xid::text FROM events WHERE account_id = $1 ORDER BY version",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Asserts that some transaction carried several of the `kind` events:
/// the commands really were batched, so the test tested batches.
fn assert_batched(events: &[(String, String)], kind: &str) {
    let of_kind: Vec<_> = events.iter().filter(|(t, _)| t == kind).collect();
    let xids: BTreeSet<_> = of_kind.iter().map(|(_, x)| x).collect();
    assert!(
        xids.len() < of_kind.len(),
        "{} `{kind}` events in {} transactions: nothing was batched",
        of_kind.len(),
        xids.len()
    );
}

#[tokio::test]
async fn a_batch_mixing_accepted_and_rejected_commands_applies_exactly_the_accepted_ones() {
    let db = TestDb::new().await;
    let store = one_writer(&db);
    // Ten SMS worth of credit, forty asked for at once.
    let id = account_with(&store, 100_000).await;
    let commands = (0..40)
        .map(|n| (meta(None, b""), sms(&format!("msg-{n}"))))
        .collect();
    let answers = all_at_once(&store, id, commands).await;
    let accepted = answers.iter().filter(|a| matches!(a, Ok(Ok(_)))).count();
    let refused = answers
        .iter()
        .filter(|a| matches!(a, Ok(Err(Rejection::InsufficientBalance { .. }))))
        .count();
    assert_eq!((accepted, refused), (10, 30));

    let events = events_with_xid(&db, id).await;
    assert_batched(&events, "debited");
    assert_eq!(events.iter().filter(|(t, _)| t == "debited").count(), 10);
    let account = store.accounts().account(id).await.unwrap().unwrap();
    assert_eq!(account.balance_credit, Micros::ZERO);
    assert_eq!(account.version as usize, events.len());
    let stored = store.feed().account_events(id).await.unwrap();
    assert_eq!(
        stored.iter().map(|e| e.version).collect::<Vec<_>>(),
        (1..=events.len() as i64).collect::<Vec<_>>(),
        "contiguous versions: a refusal took none"
    );
}

#[tokio::test]
async fn a_key_used_twice_in_one_batch_is_applied_once_and_the_second_gets_the_first_answer() {
    let db = TestDb::new().await;
    let store = one_writer(&db);
    let id = account_with(&store, 0).await;
    // A plain change first, so that the keyed ones queue behind its batch.
    let mut commands = vec![(meta(None, b""), add(1))];
    commands.extend((0..20).map(|_| (meta(Some("pay-1"), b"same"), add(500))));
    commands.extend((0..5).map(|_| (meta(Some("pay-1"), b"other"), add(7))));
    commands.extend((0..20).map(|n| (meta(Some(&format!("pay-{}", n + 2)), b"x"), add(1))));
    let answers = all_at_once(&store, id, commands).await;

    let first: Vec<_> = answers[1..21]
        .iter()
        .map(|a| a.as_ref().unwrap().as_ref().unwrap())
        .collect();
    assert!(
        first.windows(2).all(|w| w[0] == w[1]),
        "every use of the key gets the first answer"
    );
    let reused = answers[21..26]
        .iter()
        .filter(|a| matches!(a, Ok(Err(Rejection::IdempotencyKeyReused))))
        .count();
    // A different request under the key is refused, unless it came first.
    assert!(reused >= 4, "{reused} of 5 refused");
    let events = events_with_xid(&db, id).await;
    assert_batched(&events, "balance_added");
    let account = store.accounts().account(id).await.unwrap().unwrap();
    let sevens = 5 - reused as i64;
    let expected = if sevens == 1 {
        1 + 7 + 20
    } else {
        1 + 500 + 20
    };
    assert_eq!(account.balance_credit, Micros(expected));
}

#[tokio::test]
async fn a_database_error_in_the_middle_of_a_batch_fails_that_command_alone() {
    let db = TestDb::new().await;
    let store = one_writer(&db);
    let id = account_with(&store, 10_000_000).await;
    // A trigger in this test's database fails the insert of one event, as a
    // constraint or a full disk would, inside the batch's transaction.
    db.client()
        .await
        .batch_execute(
            "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.payload::text LIKE '%\"poison\"%' THEN
                     RAISE EXCEPTION 'a poisoned event';
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER poison BEFORE INSERT ON events
                 FOR EACH ROW EXECUTE FUNCTION poison();",
        )
        .await
        .unwrap();
    let commands = (0..30)
        .map(|n| {
            let reference = if n == 15 {
                "poison".to_owned()
            } else {
                format!("msg-{n}")
            };
            (meta(Some(&format!("k-{n}")), b""), sms(&reference))
        })
        .collect();
    let answers = all_at_once(&store, id, commands).await;
    for (n, answer) in answers.iter().enumerate() {
        if n == 15 {
            assert!(
                matches!(answer, Err(StoreError::Database(_))),
                "the bad command fails: {answer:?}"
            );
        } else {
            assert!(matches!(answer, Ok(Ok(_))), "command {n}: {answer:?}");
        }
    }
    let events = events_with_xid(&db, id).await;
    assert_eq!(events.iter().filter(|(t, _)| t == "debited").count(), 29);
    let account = store.accounts().account(id).await.unwrap().unwrap();
    assert_eq!(account.balance_credit, Micros(10_000_000 - 29 * 10_000));
    let keys: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM idempotency_keys WHERE idempotency_key LIKE 'k-%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(keys, 29, "nothing of the failed command was kept");
}

#[tokio::test]
async fn two_replicas_hammering_one_account_lose_no_update_and_never_cross_the_limit() {
    let db = TestDb::new().await;
    // Two stores are two replicas: each has its own writers and its own
    // cached copy of the account, which the other keeps making stale.
    let a = Store::connect(&db.url, 8, RateTable::default()).unwrap();
    let b = Store::connect(&db.url, 8, RateTable::default()).unwrap();
    let id = account_with(&a, 0).await;
    let mut expected_balance = 0;
    for round in 0..4 {
        // Each round: a top-up on each replica, then both race to spend more
        // than there is. 25 SMS fit in 250,000 micros; 60 are asked for.
        for store in [&a, &b] {
            store
                .commands()
                .execute(id, &meta(None, b""), &add(125_000))
                .await
                .unwrap()
                .unwrap();
        }
        expected_balance += 250_000;
        let spend = |store: &Store, side: &str| {
            let commands: Vec<_> = (0..30)
                .map(|n| (meta(None, b""), sms(&format!("{side}-{round}-{n}"))))
                .collect();
            let store = store.clone();
            async move { all_at_once(&store, id, commands).await }
        };
        let (from_a, from_b) = tokio::join!(spend(&a, "a"), spend(&b, "b"));
        let accepted = from_a
            .iter()
            .chain(&from_b)
            .filter(|r| matches!(r, Ok(Ok(_))))
            .count();
        assert!(
            from_a.iter().chain(&from_b).all(|r| matches!(
                r,
                Ok(Ok(_)) | Ok(Err(Rejection::InsufficientBalance { .. }))
            )),
            "only successes and refusals"
        );
        assert_eq!(accepted, 25, "round {round}: exactly what fits, never more");
        expected_balance -= 25 * 10_000;
        for store in [&a, &b] {
            let account = store.accounts().account(id).await.unwrap().unwrap();
            assert_eq!(account.balance_credit, Micros(expected_balance));
        }
    }
    // No lost update: every accepted change is an event, in contiguous
    // versions, and the stored state is their fold.
    let events = a.feed().account_events(id).await.unwrap();
    let versions: Vec<i64> = events.iter().map(|e| e.version).collect();
    assert_eq!(versions, (1..=versions.len() as i64).collect::<Vec<_>>());
    let debits = events.iter().filter(|e| e.event_type == "debited").count();
    assert_eq!(debits, 4 * 25);
    // Per account, the feed is in version order across both replicas.
    let mut cursor = Cursor::START;
    let mut fed = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while fed.len() < versions.len() && tokio::time::Instant::now() < deadline {
        for e in a.feed().read_feed(cursor, 1_000).await.unwrap() {
            cursor = e.cursor;
            if e.account_id == id {
                fed.push(e.version);
            }
        }
    }
    assert_eq!(fed, versions, "feed order is version order");
}

#[tokio::test]
async fn a_replica_never_acts_on_its_stale_copy_of_an_account_not_even_to_refuse() {
    let db = TestDb::new().await;
    let a = one_writer(&db);
    let b = one_writer(&db);
    // Made through `a`, so `a` keeps a copy: no credit at all.
    let id = account_with(&a, 0).await;
    b.commands()
        .execute(id, &meta(None, b""), &add(10_000))
        .await
        .unwrap()
        .unwrap();
    // On its stale copy `a` would refuse this for want of credit.
    let answer = a
        .commands()
        .execute(id, &meta(None, b""), &sms("m-1"))
        .await
        .unwrap();
    assert!(answer.is_ok(), "decided on the stored account: {answer:?}");
    // And the other way: `b` spends what `a`'s copy still shows.
    b.commands()
        .execute(id, &meta(None, b""), &add(10_000))
        .await
        .unwrap()
        .unwrap();
    let spend = Command::SubtractBalance(BalanceChange {
        amount_credit: Micros(10_000),
        amount_token: Tokens(0),
        reference_type: ReferenceType::ManualAdjustment,
        reference_id: String::new(),
        note: String::new(),
        bucket: Default::default(),
        expires_at: None,
    });
    a.commands()
        .execute(id, &meta(None, b""), &add(1))
        .await
        .unwrap()
        .unwrap();
    b.commands()
        .execute(id, &meta(None, b""), &spend)
        .await
        .unwrap()
        .unwrap();
    // `a`'s copy shows 10,001 micros; the account holds 1.
    let answer = a
        .commands()
        .execute(id, &meta(None, b""), &sms("m-2"))
        .await
        .unwrap();
    assert!(
        matches!(answer, Err(Rejection::InsufficientBalance { .. })),
        "{answer:?}"
    );
    let account = a.accounts().account(id).await.unwrap().unwrap();
    assert_eq!(account.balance_credit, Micros(1));
}

#[tokio::test]
async fn what_the_fast_path_takes_for_new_is_checked_by_the_database() {
    // On an account the writer has cached, a batch is decided without
    // reading reservations or keys. A reservation id reserved again after its
    // commit, or a key used again, must still get the first answer.
    let db = TestDb::new().await;
    let store = one_writer(&db);
    let id = account_with(&store, 100_000).await;
    let reserve = Command::Reserve(Reserve {
        reservation_id: "r-1".into(),
        service_type: ServiceType::CallPstnOutgoing,
        requested_units: 2,
        allow_partial: false,
        ttl_seconds: 600,
    });
    let commit = Command::Commit(Commit {
        reservation_id: "r-1".into(),
        used_duration_ms: 30_000,
        used_quantity: 0,
    });
    store
        .commands()
        .execute(id, &meta(None, b""), &reserve)
        .await
        .unwrap()
        .unwrap();
    store
        .commands()
        .execute(id, &meta(None, b""), &commit)
        .await
        .unwrap()
        .unwrap();
    let again = store
        .commands()
        .execute(id, &meta(None, b""), &reserve)
        .await
        .unwrap();
    let Ok(Outcome::Reservation(view)) = again else {
        panic!("{again:?}");
    };
    assert_eq!(view.status, ReservationStatus::Committed, "not held again");
    let first = store
        .commands()
        .execute(id, &meta(Some("k-1"), b"h"), &sms("m"))
        .await
        .unwrap()
        .unwrap();
    let retried = store
        .commands()
        .execute(id, &meta(Some("k-1"), b"h"), &sms("m"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(retried, first);
    let account = store.accounts().account(id).await.unwrap().unwrap();
    assert!(account.holds.is_empty());
    assert_eq!(account.balance_credit, Micros(100_000 - 10_000 - 10_000));
}

#[tokio::test]
async fn a_batch_sent_behind_one_that_fails_never_commits_what_that_one_would_have_left() {
    // A fast batch is sent while the one before it waits for its COMMIT,
    // decided on the account as that one leaves it. Here the one before is
    // decided on a stale copy and fails; the one behind it is decided on a
    // copy at the very version another replica has stored since (one event
    // each), but not on its state. Fenced by version alone it would commit,
    // overwriting the other replica's top-up.
    let db = TestDb::new().await;
    let a = one_writer(&db);
    let b = one_writer(&db);
    let id = account_with(&a, 0).await;
    let (high, low) = id.as_u64_pair();
    let lock_key = i64::from_ne_bytes((high ^ low).to_ne_bytes());
    let blocker = db.client().await;
    let settle = || tokio::time::sleep(std::time::Duration::from_millis(100));
    let mut expected = 0;
    for round in 0..3 {
        b.commands()
            .execute(id, &meta(None, b""), &add(10_000))
            .await
            .unwrap()
            .unwrap();
        // `a` still holds the copy it last committed: stale by one event.
        // Holding the account's lock keeps `a`'s first batch waiting in
        // PostgreSQL while the second is sent behind it.
        blocker
            .execute("SELECT pg_advisory_lock($1)", &[&lock_key])
            .await
            .unwrap();
        let first = {
            let a = a.clone();
            tokio::spawn(async move { a.commands().execute(id, &meta(None, b""), &add(1)).await })
        };
        settle().await;
        let second = {
            let a = a.clone();
            tokio::spawn(async move { a.commands().execute(id, &meta(None, b""), &add(5)).await })
        };
        settle().await;
        blocker
            .execute("SELECT pg_advisory_unlock($1)", &[&lock_key])
            .await
            .unwrap();
        let first = first.await.unwrap().unwrap().unwrap();
        let second = second.await.unwrap().unwrap().unwrap();
        expected += 10_000 + 1 + 5;
        let (Outcome::Account(first), Outcome::Account(second)) = (first, second) else {
            panic!("top-ups answer with the account");
        };
        // Applied in the order they came, each answer showing what it left.
        assert_eq!(
            (first.balance_credit.get(), second.balance_credit.get()),
            (expected - 5, expected),
            "round {round}"
        );
        let account = b.accounts().account(id).await.unwrap().unwrap();
        assert_eq!(account.balance_credit, Micros(expected), "round {round}");
    }
    let events = a.feed().account_events(id).await.unwrap();
    let versions: Vec<i64> = events.iter().map(|e| e.version).collect();
    assert_eq!(versions, (1..=versions.len() as i64).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_refusal_sent_behind_a_batch_that_fails_is_never_decided_on_what_that_one_would_have_left()
 {
    // As above, but every command of the batch behind is refused, so it
    // writes nothing on the account: only the fence proper (the accounts
    // decided from but not written) stands between it and a refusal decided
    // on a stale copy. The copy's version is the one another replica has
    // stored since; its chain head is not.
    let db = TestDb::new().await;
    let a = one_writer(&db);
    let b = one_writer(&db);
    let id = account_with(&a, 0).await;
    let (high, low) = id.as_u64_pair();
    let lock_key = i64::from_ne_bytes((high ^ low).to_ne_bytes());
    let blocker = db.client().await;
    let settle = || tokio::time::sleep(std::time::Duration::from_millis(100));
    let mut expected = 0;
    for round in 0..3 {
        b.commands()
            .execute(id, &meta(None, b""), &add(10_000))
            .await
            .unwrap()
            .unwrap();
        // `a`'s copy holds `expected`: too little for a message, where the
        // account holds enough for one.
        blocker
            .execute("SELECT pg_advisory_lock($1)", &[&lock_key])
            .await
            .unwrap();
        let first = {
            let a = a.clone();
            tokio::spawn(async move { a.commands().execute(id, &meta(None, b""), &add(1)).await })
        };
        settle().await;
        let second = {
            let a = a.clone();
            let sms = sms(&format!("m-{round}"));
            tokio::spawn(async move { a.commands().execute(id, &meta(None, b""), &sms).await })
        };
        settle().await;
        blocker
            .execute("SELECT pg_advisory_unlock($1)", &[&lock_key])
            .await
            .unwrap();
        first.await.unwrap().unwrap().unwrap();
        let second = second.await.unwrap().unwrap();
        assert!(
            second.is_ok(),
            "round {round}: decided on the stored account, not the copy: {second:?}"
        );
        // b's top-up and a's add(1), less one message at 10,000 micros.
        expected += 10_000 + 1 - 10_000;
        let account = b.accounts().account(id).await.unwrap().unwrap();
        assert_eq!(account.balance_credit, Micros(expected), "round {round}");
    }
}

//! The hash chain over real writes: `billing verify` passes clean history
//! (written by two replicas at once, through the writer's cache and through
//! reloads) and names the event that was edited or deleted behind the
//! append-only triggers' back.

mod support;

use billing_proto::v1 as pb;
use billing_server::ServeConfig;
use support::{TestApp, reserve};

/// Runs `billing verify ARGS` against `app`'s database.
async fn verify(app: &TestApp, args: &[&str]) -> (bool, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_billing"));
    command
        .arg("verify")
        .args(args)
        .env("BILLING_DATABASE_URL", &app.db.url)
        .env("BILLING_LOG_FORMAT", "text");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("run billing verify");
    let stdout = String::from_utf8(output.stdout).unwrap();
    (output.status.success(), stdout)
}

/// An account with history: a top-up, a call from two replicas' writers,
/// and SMS debits.
async fn history(app: &TestApp) -> String {
    let mut config = ServeConfig::for_database(&app.db.url, support::JWT_SECRET);
    config.roles = vec![billing_server::Role::Api];
    config.migrate = false;
    let replica = billing_server::Application::build(config).await.unwrap();
    let replica_addr = replica.local_addr().unwrap();
    tokio::spawn(replica.run(std::future::pending()));
    let second = support::admin(replica_addr).await;

    let account = app.account(10_000_000).await;
    let writes = (0..30).map(|n| {
        let mut client = if n % 2 == 0 {
            app.client.clone()
        } else {
            second.clone()
        };
        let id = account.id.clone();
        tokio::spawn(async move {
            client
                .debit(pb::DebitRequest {
                    account_id: id,
                    service_type: pb::ServiceType::Sms.into(),
                    quantity: 1,
                    idempotency_key: format!("sms-{n}"),
                    ..Default::default()
                })
                .await
                .expect("debit");
        })
    });
    for write in futures::future::join_all(writes).await {
        write.unwrap();
    }
    let mut client = app.client.clone();
    client
        .reserve(reserve("call-1", &account.id, pb::ServiceType::CallVn, 2))
        .await
        .unwrap();
    client
        .commit(support::commit_ms("call-1", 61_000))
        .await
        .unwrap();
    account.id
}

async fn tamper(app: &TestApp, sql: &str) {
    let db = app.db.client().await;
    // What a superuser can do: switch the append-only triggers off.
    db.batch_execute(&format!(
        "BEGIN; ALTER TABLE events DISABLE TRIGGER events_append_only; {sql};
         ALTER TABLE events ENABLE TRIGGER events_append_only; COMMIT;"
    ))
    .await
    .unwrap();
}

#[tokio::test]
async fn clean_history_written_by_two_replicas_verifies() {
    let app = TestApp::spawn().await;
    let account = history(&app).await;
    let count = app.event_count().await;
    assert!(count >= 34, "{count}");

    let (ok, out) = verify(&app, &[]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "verified {count} events of 1 accounts: every link holds"
        )),
        "{out}"
    );
    assert!(out.contains("chain heads digest "), "{out}");

    let (ok, out) = verify(&app, &["--account", &account]).await;
    assert!(ok, "{out}");
}

#[tokio::test]
async fn an_edited_amount_is_named_with_its_account_and_version() {
    let app = TestApp::spawn().await;
    let account = history(&app).await;
    tamper(
        &app,
        &format!(
            "UPDATE events SET balance_credit = balance_credit + 1000000
             WHERE account_id = '{account}' AND version = 5"
        ),
    )
    .await;
    let (ok, out) = verify(&app, &[]).await;
    assert!(!ok, "{out}");
    assert!(
        out.starts_with(&format!("BROKEN LINK: account {account} version 5: ")),
        "{out}"
    );
    assert!(out.contains("was edited"), "{out}");
}

#[tokio::test]
async fn an_edited_payload_and_a_deleted_event_are_named() {
    let app = TestApp::spawn().await;
    let account = history(&app).await;
    // A payload rewritten in place: event 3's stored hash no longer matches
    // (and a forger who recomputed it would break event 4's link instead:
    // the unit tests in billing-store's chain.rs show that case).
    tamper(
        &app,
        &format!(
            "UPDATE events SET payload = '{{}}'::json
             WHERE account_id = '{account}' AND version = 3"
        ),
    )
    .await;
    let (ok, out) = verify(&app, &["--account", &account]).await;
    assert!(!ok);
    assert!(out.contains("version 3: "), "{out}");

    let app = TestApp::spawn().await;
    let account = history(&app).await;
    tamper(
        &app,
        &format!("DELETE FROM events WHERE account_id = '{account}' AND version = 7"),
    )
    .await;
    let (ok, out) = verify(&app, &[]).await;
    assert!(!ok);
    assert!(
        out.contains("version 7: version 7 is missing: an event was deleted"),
        "{out}"
    );
}

#[tokio::test]
async fn a_rewritten_tail_still_fails_against_the_kept_head_and_the_digest_moves() {
    let app = TestApp::spawn().await;
    let account = history(&app).await;
    let before = app.store.maintenance().record_chain_digest().await.unwrap();
    assert_eq!(before, {
        let again = app.store.maintenance().chain_digest().await.unwrap();
        billing_store::ChainDigest {
            at: before.at,
            ..again
        }
    });

    // Dropping the last event (and so the tail) leaves the account's kept
    // head pointing at a hash no event has.
    tamper(
        &app,
        &format!(
            "DELETE FROM events WHERE account_id = '{account}'
             AND version = (SELECT max(version) FROM events WHERE account_id = '{account}')"
        ),
    )
    .await;
    let (ok, out) = verify(&app, &[]).await;
    assert!(!ok);
    assert!(
        out.contains("chain head is not the hash of its last event"),
        "{out}"
    );

    // Any new event moves the digest of the heads.
    let other = app.account(0).await;
    assert!(!other.id.is_empty());
    let after = app.store.maintenance().chain_digest().await.unwrap();
    assert_ne!(after.digest, before.digest);
}

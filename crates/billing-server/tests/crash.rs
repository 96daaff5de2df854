//! The real `billing` binary, killed with SIGKILL under load: no acknowledged
//! change is lost, and retrying every request afterwards applies each once.

mod support;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use billing_proto::v1 as pb;
use billing_testkit::TestDb;

/// A child process that is killed when dropped, so a failing test leaves no
/// server behind.
struct Running(Child);

impl Running {
    /// SIGKILL, and wait for it to be gone.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `billing serve` and waits until it answers.
async fn start(db: &TestDb, addr: &str) -> (Running, support::Client) {
    let mut child = Running(
        Command::new(env!("CARGO_BIN_EXE_billing"))
            .args(["serve", "--migrate"])
            .env("BILLING_DATABASE_URL", &db.url)
            .env("BILLING_GRPC_ADDR", addr)
            .env("BILLING_JWT_SECRET", support::JWT_SECRET)
            .env("BILLING_DB_POOL_SIZE", "8")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start billing"),
    );
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return (child, support::admin(addr).await);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill();
    panic!("billing did not start on {addr}");
}

fn add(account_id: &str, key: &str) -> pb::AddBalanceRequest {
    pb::AddBalanceRequest {
        account_id: account_id.to_owned(),
        amount_credit: 1_000,
        idempotency_key: key.to_owned(),
        ..Default::default()
    }
}

#[tokio::test]
async fn no_acknowledged_change_is_lost_when_the_server_is_killed() {
    let db = TestDb::new().await;
    let addr = support::free_addr().to_string();
    let (mut server, mut client) = start(&db, &addr).await;
    let account = client
        .create_billing_account(pb::CreateBillingAccountRequest {
            customer_id: uuid::Uuid::new_v4().to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let attempted = Arc::new(Mutex::new(BTreeSet::new()));
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (mut client, id) = (client.clone(), account.id.clone());
            let (attempted, acknowledged) = (attempted.clone(), acknowledged.clone());
            tokio::spawn(async move {
                for i in 0..10_000 {
                    let key = format!("w{w}-{i}");
                    attempted.lock().unwrap().insert(key.clone());
                    match client.add_balance(add(&id, &key)).await {
                        Ok(_) => {
                            acknowledged.lock().unwrap().insert(key);
                        }
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.kill();
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let attempted = attempted.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 10,
        "the load ran before the kill ({} acks)",
        acknowledged.len()
    );

    let (mut server, mut client) = start(&db, &addr).await;
    let store = billing_store::Store::connect(&db.url, 2, Default::default()).unwrap();
    let account_id = account.id.parse().unwrap();
    let recorded: BTreeSet<String> = store
        .feed()
        .account_events(account_id)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| e.idempotency_key)
        .collect();
    let lost: Vec<_> = acknowledged.difference(&recorded).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");

    // Retrying everything that was attempted applies each request once.
    for key in &attempted {
        client.add_balance(add(&account.id, key)).await.unwrap();
    }
    let after = client
        .get_billing_account(pb::GetBillingAccountRequest {
            id: account.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.balance_credit, 1_000 * attempted.len() as i64);
    let events = store.feed().account_events(account_id).await.unwrap();
    let added = events
        .iter()
        .filter(|e| e.event_type == "balance_added")
        .count();
    assert_eq!(added, attempted.len(), "one event per distinct request");
    server.kill();
}

/// Starts `billing serve` with only the projector role.
fn start_projector(db: &TestDb) -> Running {
    Running(
        Command::new(env!("CARGO_BIN_EXE_billing"))
            .args(["serve", "--roles", "projector"])
            .env("BILLING_DATABASE_URL", &db.url)
            .env("BILLING_DB_POOL_SIZE", "2")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start the projector"),
    )
}

#[tokio::test]
async fn a_killed_projector_resumes_without_applying_anything_twice() {
    let db = TestDb::new().await;
    let app =
        support::TestApp::spawn_with(db, |config| config.roles = vec![billing_server::Role::Api])
            .await;
    let mut accounts = Vec::new();
    for _ in 0..4 {
        accounts.push(app.account(0).await.id);
    }
    let writers: Vec<_> = accounts
        .iter()
        .map(|id| {
            let (app_client, id) = (app.client.clone(), id.clone());
            tokio::spawn(async move {
                let mut client = app_client;
                for n in 0..150 {
                    client
                        .add_balance(add(&id, &format!("{id}-{n}")))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    // Kill the projector twice while the backlog grows, mid-batch or not.
    for pause in [150, 250] {
        let mut projector = start_projector(&app.db);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        projector.kill();
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let mut projector = start_projector(&app.db);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while app
        .store
        .feed()
        .feed_lag(billing_store::READ_MODELS)
        .await
        .unwrap()
        .events
        > 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the projector did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    projector.kill();

    let client = app.db.client().await;
    for id in &accounts {
        let id: uuid::Uuid = id.parse().unwrap();
        let row = client
            .query_one(
                "SELECT count(*), coalesce(sum(amount_credit), 0)::bigint FROM ledger_entries WHERE account_id = $1",
                &[&id],
            )
            .await
            .unwrap();
        assert_eq!(
            row.get::<_, i64>(0),
            151,
            "token grant + 150 top-ups, each once"
        );
        assert_eq!(row.get::<_, i64>(1), 150 * 1_000);
        let (projected, _) = billing_testkit::rows::read_model_account(&client, id)
            .await
            .unwrap();
        let events = app.store.feed().account_events(id).await.unwrap();
        let folded =
            billing_domain::Account::fold(id, events.iter().map(|e| (&e.event, e.occurred_at)))
                .unwrap()
                .unwrap();
        assert_eq!(projected, folded);
    }
}

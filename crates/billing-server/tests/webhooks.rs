//! The dispatcher end to end: the real server with the dispatcher role, a
//! real PostgreSQL, and a real HTTP endpoint (`support::receiver`) that
//! checks every signature with its own code.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use billing_proto::v1 as pb;
use billing_server::{Role, ServeConfig};
use billing_testkit::TestDb;
use support::TestApp;
use support::receiver::{Receiver, Reply};
use uuid::Uuid;

/// A few seconds for what takes milliseconds.
const PATIENCE: Duration = Duration::from_secs(20);

/// The dispatcher for a local endpoint, with retries compressed.
fn dispatcher(config: &mut ServeConfig) {
    config.roles.push(Role::Dispatcher);
    config.webhooks.webhook_allow_http = true;
    config.webhooks.webhook_allow_private = true;
    config.webhooks.webhook_retry_schedule = "0s,200ms,200ms,200ms".parse().unwrap();
}

/// Registers a webhook of `customer` for `types` at `uri` through the API
/// (as its customer admin would); returns its id and secret.
async fn register(app: &TestApp, customer: Uuid, uri: &str, types: &[&str]) -> (Uuid, String) {
    let webhook = app
        .client
        .clone()
        .create_webhook(pb::CreateWebhookRequest {
            customer_id: customer.to_string(),
            name: "test".into(),
            uri: uri.to_owned(),
            method: "POST".into(),
            event_types: types.iter().map(|t| (*t).to_owned()).collect(),
            ..Default::default()
        })
        .await
        .expect("CreateWebhook")
        .into_inner();
    (webhook.id.parse().unwrap(), webhook.secret)
}

async fn account_of(app: &TestApp, customer: Uuid, credit: i64) -> pb::BillingAccount {
    app.account_with(
        credit,
        pb::CreateBillingAccountRequest {
            customer_id: customer.to_string(),
            name: "Primary Account".into(),
            ..Default::default()
        },
    )
    .await
}

/// The deliveries of a webhook: (status, attempts, last_error).
async fn deliveries(db: &TestDb, webhook: Uuid) -> Vec<(String, i32, String)> {
    db.client()
        .await
        .query(
            "SELECT status, attempts, last_error FROM webhook_deliveries
             WHERE webhook_id = $1 ORDER BY seq",
            &[&webhook],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn versions(received: &[support::receiver::Received]) -> Vec<i64> {
    received
        .iter()
        .map(|r| r.json()["data"]["version"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn every_change_reaches_the_endpoint_signed_and_in_version_order() {
    let app = TestApp::spawn_with(TestDb::new().await, dispatcher).await;
    let receiver = Receiver::start().await;
    let customer = Uuid::new_v4();
    let (_, secret) = register(&app, customer, &receiver.url("/hook"), &["account_updated"]).await;
    let account = account_of(&app, customer, 15_500_000).await;
    for _ in 0..8 {
        app.add(&account.id, 1_000_000, 0).await;
    }
    let last = app.get(&account.id).await;
    let received = receiver
        .wait_for(PATIENCE, |r| r.len() as i64 >= last.version)
        .await;
    assert_eq!(versions(&received), (1..=last.version).collect::<Vec<_>>());
    for request in &received {
        assert!(request.signed_by(&secret), "a bad signature: {request:?}");
        assert_eq!(request.method, "POST");
        let body = request.json();
        assert_eq!(body["event_type"], "account_updated");
        assert!(body["timestamp"].is_string());
        assert_eq!(body["data"]["id"], account.id.as_str());
        assert_eq!(body["data"]["customer_id"], customer.to_string());
        assert_eq!(body["data"]["plan_type"], "free");
        assert!(body["data"]["balance_token"].is_i64());
    }
    let newest = received.last().unwrap().json();
    assert_eq!(newest["data"]["balance_credit"], last.balance_credit);
    // One message id per change.
    let mut ids: Vec<&str> = received.iter().map(|r| r.webhook_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), received.len());
    // Another customer's changes go nowhere near it.
    account_of(&app, Uuid::new_v4(), 1_000).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), received.len());
}

#[tokio::test]
async fn a_failed_attempt_is_retried_with_the_same_message_id() {
    let app = TestApp::spawn_with(TestDb::new().await, dispatcher).await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(500), Reply::status(502)]);
    let customer = Uuid::new_v4();
    let (webhook, secret) =
        register(&app, customer, &receiver.url("/hook"), &["account_updated"]).await;
    account_of(&app, customer, 0).await;
    let received = receiver.wait_for(PATIENCE, |r| r.len() >= 3).await;
    assert!(
        received[..3]
            .iter()
            .all(|r| r.webhook_id == received[0].webhook_id),
        "{:#?}",
        received
            .iter()
            .map(|r| (&r.webhook_id, &r.body))
            .collect::<Vec<_>>()
    );
    assert!(received.iter().all(|r| r.signed_by(&secret)));
    let gap = received[1].at - received[0].at;
    assert!(gap >= Duration::from_millis(150), "retried after {gap:?}");
    wait_until(|| async {
        deliveries(&app.db, webhook).await.first()
            == Some(&("delivered".to_owned(), 3, String::new()))
    })
    .await;
}

#[tokio::test]
async fn gone_disables_the_webhook_at_once() {
    let app = TestApp::spawn_with(TestDb::new().await, dispatcher).await;
    let receiver = Receiver::start().await;
    receiver.otherwise(Reply::status(410));
    let customer = Uuid::new_v4();
    let (webhook, _) = register(&app, customer, &receiver.url("/hook"), &["account_updated"]).await;
    let account = account_of(&app, customer, 0).await;
    receiver.wait_for(PATIENCE, |r| !r.is_empty()).await;
    wait_until(|| async {
        let row = app
            .db
            .client()
            .await
            .query_one(
                "SELECT enabled, disabled_reason FROM webhooks WHERE id = $1",
                &[&webhook],
            )
            .await
            .unwrap();
        !row.get::<_, bool>(0) && row.get::<_, String>(1).contains("410")
    })
    .await;
    app.add(&account.id, 1_000, 0).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.received().len(), 1, "nothing more is sent to it");
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let app = TestApp::spawn_with(TestDb::new().await, dispatcher).await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(503).header("retry-after", "2")]);
    let customer = Uuid::new_v4();
    register(&app, customer, &receiver.url("/hook"), &["account_updated"]).await;
    account_of(&app, customer, 0).await;
    let received = receiver.wait_for(PATIENCE, |r| r.len() >= 2).await;
    let gap = received[1].at - received[0].at;
    assert!(
        gap >= Duration::from_millis(1_900),
        "the retry came {gap:?} after a Retry-After of 2 s (the schedule says 200 ms)"
    );
}

#[tokio::test]
async fn a_private_address_is_refused_unless_allowed() {
    let app = TestApp::spawn_with(TestDb::new().await, |config| {
        dispatcher(config);
        config.webhooks.webhook_allow_private = false;
    })
    .await;
    let receiver = Receiver::start().await;
    let customer = Uuid::new_v4();
    // By address, and by a name that resolves to loopback.
    let (by_address, _) =
        register(&app, customer, &receiver.url("/hook"), &["account_updated"]).await;
    let by_name_uri = format!("http://localhost:{}/hook", receiver.addr.port());
    let (by_name, _) = register(&app, customer, &by_name_uri, &["account_updated"]).await;
    account_of(&app, customer, 0).await;
    for webhook in [by_address, by_name] {
        wait_until(|| async {
            deliveries(&app.db, webhook)
                .await
                .first()
                .is_some_and(|(_, attempts, error)| *attempts >= 1 && error.contains("refused"))
        })
        .await;
    }
    assert!(receiver.received().is_empty(), "nothing reached loopback");
}

#[tokio::test]
async fn during_a_rotation_both_secrets_sign() {
    let app = TestApp::spawn_with(TestDb::new().await, dispatcher).await;
    let receiver = Receiver::start().await;
    let customer = Uuid::new_v4();
    let (webhook, old) =
        register(&app, customer, &receiver.url("/hook"), &["account_updated"]).await;
    let new = app
        .client
        .clone()
        .rotate_webhook_secret(pb::RotateWebhookSecretRequest {
            id: webhook.to_string(),
            overlap_seconds: Some(3_600),
        })
        .await
        .expect("RotateWebhookSecret")
        .into_inner()
        .secret;
    assert_ne!(new, old);
    account_of(&app, customer, 0).await;
    let received = receiver.wait_for(PATIENCE, |r| !r.is_empty()).await;
    assert_eq!(received[0].signature.split(' ').count(), 2);
    assert!(received[0].signed_by(&new));
    assert!(received[0].signed_by(&old));
}

#[tokio::test]
async fn two_dispatchers_share_the_work_and_never_send_one_delivery_at_once() {
    let app = TestApp::spawn_with(TestDb::new().await, dispatcher).await;
    let mut config = ServeConfig::for_database(&app.db.url, support::JWT_SECRET);
    dispatcher(&mut config);
    config.roles = vec![Role::Dispatcher];
    let second = billing_server::Application::build(config).await.unwrap();
    let (stop_second, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(second.run(async move {
        let _ = stopped.await;
    }));
    let receiver = Receiver::start().await;
    receiver.otherwise(Reply::status(200).after(Duration::from_millis(30)));
    let customer = Uuid::new_v4();
    register(&app, customer, &receiver.url("/hook"), &["account_updated"]).await;
    // Six accounts of six changes each (created, tokens granted, four
    // top-ups).
    let mut accounts = Vec::new();
    for _ in 0..6 {
        accounts.push(account_of(&app, customer, 0).await);
    }
    for account in &accounts {
        for _ in 0..4 {
            app.add(&account.id, 1_000, 0).await;
        }
    }
    let received = receiver
        .wait_for(PATIENCE, |r| {
            let mut ids: Vec<&str> = r.iter().map(|x| x.webhook_id.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            ids.len() == 36
        })
        .await;
    assert!(receiver.overlaps().is_empty(), "{:?}", receiver.overlaps());
    // Per account, in version order.
    for account in &accounts {
        let seen: Vec<i64> = received
            .iter()
            .filter(|r| r.json()["data"]["id"] == account.id.as_str())
            .map(|r| r.json()["data"]["version"].as_i64().unwrap())
            .collect();
        assert_eq!(seen, [1, 2, 3, 4, 5, 6], "account {}", account.id);
    }
    drop(stop_second);
}

#[tokio::test]
async fn a_slow_endpoint_never_holds_up_another() {
    let app = TestApp::spawn_with(TestDb::new().await, |config| {
        dispatcher(config);
        config.webhooks.webhook_per_endpoint = 4;
    })
    .await;
    let slow = Receiver::start().await;
    slow.otherwise(Reply::status(200).after(Duration::from_secs(3)));
    let fast = Receiver::start().await;
    let slow_customer = Uuid::new_v4();
    let fast_customer = Uuid::new_v4();
    register(
        &app,
        slow_customer,
        &slow.url("/hook"),
        &["account_updated"],
    )
    .await;
    register(
        &app,
        fast_customer,
        &fast.url("/hook"),
        &["account_updated"],
    )
    .await;
    // The slow customer's changes first: twelve accounts' worth of heads
    // due before any of the fast one's.
    for _ in 0..12 {
        account_of(&app, slow_customer, 0).await;
    }
    let mut fast_accounts = 0;
    for _ in 0..6 {
        account_of(&app, fast_customer, 0).await;
        fast_accounts += 1;
    }
    let started = std::time::Instant::now();
    fast.wait_for(PATIENCE, |r| r.len() >= fast_accounts * 2)
        .await;
    assert!(
        started.elapsed() < Duration::from_millis(2_500),
        "the fast endpoint waited {:?} behind the slow one",
        started.elapsed()
    );
    assert!(
        slow.received().len() <= 4,
        "at most 4 attempts in flight to one endpoint, saw {}",
        slow.received().len()
    );
}

#[tokio::test]
async fn after_the_last_attempt_a_delivery_fails_and_can_be_sent_again() {
    let app = TestApp::spawn_with(TestDb::new().await, |config| {
        dispatcher(config);
        config.webhooks.webhook_retry_schedule = "0s,100ms".parse().unwrap();
    })
    .await;
    let receiver = Receiver::start().await;
    // Two 500s, each with a long body: only its start is kept.
    let long = "x".repeat(10_000);
    receiver.script([
        Reply::status(500).body(long.clone()),
        Reply::status(500).body(long),
    ]);
    let customer = Uuid::new_v4();
    let (webhook, _) = register(&app, customer, &receiver.url("/hook"), &["account_updated"]).await;
    account_of(&app, customer, 0).await;
    wait_until(|| async {
        deliveries(&app.db, webhook)
            .await
            .first()
            .is_some_and(|(status, attempts, _)| status == "failed" && *attempts == 2)
    })
    .await;
    let first = deliveries(&app.db, webhook).await.remove(0);
    assert!(first.2.starts_with("HTTP 500: xxx"), "{:?}", first.2);
    assert!(first.2.len() <= 256, "kept {} bytes", first.2.len());
    // The failed one is listed, and sent again on request.
    let failed = app
        .client
        .clone()
        .list_webhook_deliveries(pb::ListWebhookDeliveriesRequest {
            webhook_id: webhook.to_string(),
            status: pb::WebhookDeliveryStatus::Failed.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert_eq!(failed.len(), 1);
    app.client
        .clone()
        .retry_webhook_delivery(pb::RetryWebhookDeliveryRequest {
            delivery_id: failed[0].id.clone(),
        })
        .await
        .unwrap();
    // Version 2 went once version 1 had failed for good; then version 1
    // again, with its message id.
    let first_id = receiver.received()[0].webhook_id.clone();
    receiver
        .wait_for(PATIENCE, |r| {
            r.iter().filter(|x| x.webhook_id == first_id).count() == 3
        })
        .await;
    wait_until(|| async {
        deliveries(&app.db, webhook)
            .await
            .first()
            .is_some_and(|(status, _, _)| status == "delivered")
    })
    .await;
}

#[tokio::test]
async fn a_webhook_failing_for_the_whole_window_is_disabled_with_its_reason() {
    let app = TestApp::spawn_with(TestDb::new().await, |config| {
        dispatcher(config);
        config.webhooks.webhook_retry_schedule =
            "0s,300ms,300ms,300ms,300ms,300ms,300ms,300ms,300ms"
                .parse()
                .unwrap();
        config.webhooks.webhook_disable_after_s = 1;
    })
    .await;
    let receiver = Receiver::start().await;
    receiver.otherwise(Reply::status(500));
    let customer = Uuid::new_v4();
    let (webhook, _) = register(&app, customer, &receiver.url("/hook"), &["account_updated"]).await;
    account_of(&app, customer, 0).await;
    wait_until(|| async {
        let got = app
            .client
            .clone()
            .get_webhook(pb::GetWebhookRequest {
                id: webhook.to_string(),
            })
            .await
            .unwrap()
            .into_inner();
        got.status == i32::from(pb::WebhookStatus::Disabled)
            && got.disabled_reason.contains("every attempt failed")
    })
    .await;
    let attempts = receiver.received().len();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        receiver.received().len(),
        attempts,
        "nothing more is sent to it"
    );
    assert!(
        deliveries(&app.db, webhook)
            .await
            .iter()
            .all(|(status, _, _)| status == "failed"),
        "its pending deliveries fail with it"
    );
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let app = TestApp::spawn_with(TestDb::new().await, |config| {
        dispatcher(config);
        config.webhooks.webhook_retry_schedule = "0s".parse().unwrap();
    })
    .await;
    let receiver = Receiver::start().await;
    let elsewhere = Receiver::start().await;
    receiver.otherwise(Reply::status(307).header("location", &elsewhere.url("/stolen")));
    let customer = Uuid::new_v4();
    let (webhook, _) = register(&app, customer, &receiver.url("/hook"), &["account_updated"]).await;
    account_of(&app, customer, 0).await;
    wait_until(|| async {
        deliveries(&app.db, webhook)
            .await
            .first()
            .is_some_and(|(status, _, error)| status == "failed" && error.starts_with("HTTP 307"))
    })
    .await;
    assert!(elsewhere.received().is_empty(), "the redirect was followed");
}

/// A child process, killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_dispatcher(db: &TestDb) -> Running {
    Running(
        Command::new(env!("CARGO_BIN_EXE_billing"))
            .args(["serve", "--migrate", "--roles", "dispatcher"])
            .env("BILLING_DATABASE_URL", &db.url)
            .env("BILLING_JWT_SECRET", support::JWT_SECRET)
            .env("BILLING_WEBHOOK_ALLOW_HTTP", "true")
            .env("BILLING_WEBHOOK_ALLOW_PRIVATE", "true")
            .env("BILLING_WEBHOOK_TIMEOUT_MS", "2000")
            .env("BILLING_WEBHOOK_RETRY_SCHEDULE", "0s,200ms,200ms")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start billing"),
    )
}

#[tokio::test]
async fn a_dispatcher_killed_mid_send_sends_again_on_restart() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    // The first request hangs past the kill.
    receiver.script([Reply::status(200).after(Duration::from_secs(30))]);
    let customer = Uuid::new_v4();
    let (webhook, secret) =
        register(&app, customer, &receiver.url("/hook"), &["account_updated"]).await;
    let account = account_of(&app, customer, 0).await;
    let mut dispatcher = start_dispatcher(&app.db);
    receiver.wait_for(PATIENCE, |r| !r.is_empty()).await;
    let _ = dispatcher.0.kill();
    let _ = dispatcher.0.wait();
    // Changes made while it is down.
    for _ in 0..3 {
        app.add(&account.id, 1_000, 0).await;
    }
    let _restarted = start_dispatcher(&app.db);
    // Versions 1 (created) and 2 (monthly tokens), then three top-ups:
    // version 1 was in flight at the kill and goes again.
    let received = receiver.wait_for(PATIENCE, |r| r.len() >= 6).await;
    assert_eq!(versions(&received), [1, 1, 2, 3, 4, 5]);
    assert_eq!(
        received[0].webhook_id, received[1].webhook_id,
        "the interrupted delivery went again with its id"
    );
    assert!(received.iter().all(|r| r.signed_by(&secret)));
    wait_until(|| async {
        deliveries(&app.db, webhook)
            .await
            .iter()
            .all(|(status, _, _)| status == "delivered")
    })
    .await;
}

/// Waits until `check` holds, or panics after [`PATIENCE`].
async fn wait_until<F, Fut>(check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

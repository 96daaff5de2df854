//! `WatchAccount` over real gRPC against real PostgreSQL: every version in
//! order, through a server restart and a slow watcher, and only for those
//! who may read the account. An ignored test measures how many watchers one
//! process serves and the delay from commit to delivery.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use billing_proto::v1 as pb;
use billing_server::{Application, ServeConfig};
use billing_testkit::TestDb;
use pb::ServiceType as S;
use support::{Client, JWT_SECRET, TestApp, assert_status};
use tokio::sync::oneshot;
use tonic::Code;
use tonic::codec::Streaming;
use tonic_types::StatusExt;
use uuid::Uuid;

/// How long a test waits for one view before it fails.
const PATIENCE: Duration = Duration::from_secs(10);

/// A server process's roles, on the test's database, stopped on request.
struct Server {
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    running: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Server {
    async fn start(db: &TestDb) -> Self {
        let config = ServeConfig::for_database(&db.url, JWT_SECRET);
        let app = Application::build(config).await.expect("build");
        let addr = app.local_addr().expect("bound");
        let (stop, stopped) = oneshot::channel::<()>();
        let running = tokio::spawn(app.run(async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            running,
        }
    }

    /// A graceful stop, which must not wait on open watch streams.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(PATIENCE, &mut self.running)
            .await
            .expect("the server stops although watchers are connected")
            .expect("the server task")
            .expect("the server ran cleanly");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn watch(account_id: &str, after_version: Option<i64>) -> pb::WatchAccountRequest {
    pb::WatchAccountRequest {
        account_id: account_id.to_owned(),
        after_version,
    }
}

async fn add(client: &mut Client, account_id: &str, credit: i64) -> i64 {
    client
        .add_balance(pb::AddBalanceRequest {
            account_id: account_id.to_owned(),
            amount_credit: credit,
            idempotency_key: Uuid::new_v4().to_string(),
            ..Default::default()
        })
        .await
        .expect("add balance")
        .into_inner()
        .account
        .expect("account")
        .version
}

/// Views from `stream` until one reaches `version`.
async fn until(
    stream: &mut Streaming<pb::BillingAccount>,
    version: i64,
) -> Vec<pb::BillingAccount> {
    let mut views = Vec::new();
    while views
        .last()
        .is_none_or(|v: &pb::BillingAccount| v.version < version)
    {
        let view = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no view after {:?} within {PATIENCE:?}",
                    views.last().map(|v: &pb::BillingAccount| v.version)
                )
            })
            .expect("a view, not an error")
            .expect("the stream stays open");
        views.push(view);
    }
    views
}

fn versions(views: &[pb::BillingAccount]) -> Vec<i64> {
    views.iter().map(|v| v.version).collect()
}

/// Asserts that `views` are versions `first..=last`, each once, in order,
/// naming the first one out of place.
fn assert_every_version(views: &[pb::BillingAccount], first: i64, last: i64) {
    for (expected, view) in (first..).zip(views) {
        assert_eq!(view.version, expected, "after version {}", expected - 1);
    }
    assert_eq!(
        views.len() as i64,
        last - first + 1,
        "versions {first} to {last}"
    );
}

#[tokio::test]
async fn a_watcher_sees_versions_one_to_n_in_order_through_a_server_restart() {
    let db = TestDb::new().await;
    // Changes go through a server of their own, so they go on while the
    // watched one restarts.
    let writer = Server::start(&db).await;
    let mut changes = support::admin(writer.addr).await;
    let account = changes
        .create_billing_account(pb::CreateBillingAccountRequest {
            customer_id: Uuid::new_v4().to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Creation is more than one event (the plan's tokens are granted).
    let created = account.version;

    let watched = Server::start(&db).await;
    let mut stream = support::admin(watched.addr)
        .await
        .watch_account(watch(&account.id, Some(0)))
        .await
        .unwrap()
        .into_inner();
    let mut seen = until(&mut stream, created).await;
    for _ in 0..20 {
        add(&mut changes, &account.id, 1_000).await;
    }
    seen.extend(until(&mut stream, created + 20).await);

    // The watched server stops: the stream ends with the version to resume
    // after.
    watched.stop().await;
    let ended = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("the stream ends")
        .expect_err("an UNAVAILABLE status");
    assert_status(&ended, Code::Unavailable, "WATCH_INTERRUPTED");
    let details = ended.get_error_details();
    let resume = details.error_info().unwrap().metadata["last_version"].clone();
    assert_eq!(resume, (created + 20).to_string());

    // Changes while nobody watches.
    for _ in 0..20 {
        add(&mut changes, &account.id, 1_000).await;
    }
    let restarted = Server::start(&db).await;
    let mut stream = support::admin(restarted.addr)
        .await
        .watch_account(watch(&account.id, Some(resume.parse().unwrap())))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..20 {
        add(&mut changes, &account.id, 1_000).await;
    }
    seen.extend(until(&mut stream, created + 60).await);

    assert_every_version(&seen, 1, created + 60);
    for view in &seen {
        assert_eq!(view.id, account.id);
        let added = (view.version - created).max(0);
        assert_eq!(view.balance_credit, added * 1_000, "{view:?}");
    }
    restarted.stop().await;
    writer.stop().await;
}

#[tokio::test]
async fn a_watcher_gets_the_account_now_then_every_change_under_concurrent_writes() {
    let app = TestApp::spawn().await;
    let account = app.account(1_000_000_000).await;
    let mut stream = app
        .client
        .clone()
        .watch_account(watch(&account.id, None))
        .await
        .unwrap()
        .into_inner();
    let now = until(&mut stream, account.version).await;
    assert_eq!(versions(&now), [account.version]);
    assert_eq!(now[0].balance_credit, 1_000_000_000);

    let mut writers = tokio::task::JoinSet::new();
    for task in 0..16 {
        let mut client = app.client.clone();
        let id = account.id.clone();
        writers.spawn(async move {
            for n in 0..25 {
                client
                    .debit(pb::DebitRequest {
                        account_id: id.clone(),
                        service_type: S::Sms.into(),
                        quantity: 1,
                        idempotency_key: format!("sms-{task}-{n}"),
                        ..Default::default()
                    })
                    .await
                    .expect("debit");
            }
        });
    }
    writers.join_all().await;
    let last = account.version + 400;
    let seen = until(&mut stream, last).await;
    assert_every_version(&seen, account.version + 1, last);
    assert_eq!(
        seen.last().unwrap().balance_credit,
        1_000_000_000 - 400 * 10_000
    );
}

#[tokio::test]
async fn a_watcher_too_slow_for_its_buffer_catches_up_from_the_log() {
    let app = TestApp::spawn().await;
    let account = app.account(1).await;
    // A client that takes at most 64 KiB before it reads (HTTP/2's own
    // default; hyper's clients allow megabytes).
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let bearer: tonic::metadata::MetadataValue<_> = format!(
        "Bearer {}",
        support::token("slow-reader", "project_super_admin", None)
    )
    .parse()
    .unwrap();
    let mut slow = pb::billing_service_client::BillingServiceClient::with_interceptor(
        channel,
        move |mut request: tonic::Request<()>| {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
            Ok(request)
        },
    );
    let mut stream = slow
        .watch_account(watch(&account.id, Some(account.version)))
        .await
        .unwrap()
        .into_inner();
    // Far more changes than the account's channel and the stream's
    // flow-control window hold, while the watcher reads nothing.
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let mut client = app.client.clone();
        let id = account.id.clone();
        writers.spawn(async move {
            for _ in 0..100 {
                add(&mut client, &id, 1).await;
            }
        });
    }
    writers.join_all().await;
    let last = account.version + 1_600;
    let seen = until(&mut stream, last).await;
    assert_every_version(&seen, account.version + 1, last);
    assert_eq!(seen.last().unwrap().balance_credit, 1 + 1_600);
}

#[tokio::test]
async fn a_customer_admin_watches_only_its_own_accounts() {
    let app = TestApp::spawn().await;
    let customer = Uuid::new_v4();
    let own = app
        .account_with(
            5_000,
            pb::CreateBillingAccountRequest {
                customer_id: customer.to_string(),
                ..Default::default()
            },
        )
        .await;
    let other = app.account(5_000).await;
    let before = app.event_count().await;

    let mut customer_admin = app.client_as("customer_admin", Some(customer)).await;
    let mut stream = customer_admin
        .watch_account(watch(&own.id, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        versions(&until(&mut stream, own.version).await),
        [own.version]
    );
    for id in [other.id.clone(), Uuid::new_v4().to_string()] {
        let refused = customer_admin
            .watch_account(watch(&id, None))
            .await
            .unwrap_err();
        assert_status(&refused, Code::PermissionDenied, "PERMISSION_DENIED");
        let refused = customer_admin
            .watch_account(watch(&id, Some(0)))
            .await
            .unwrap_err();
        assert_status(&refused, Code::PermissionDenied, "PERMISSION_DENIED");
    }
    // Call control may watch any account.
    let mut service = app.client_as("service", None).await;
    let mut stream = service
        .watch_account(watch(&other.id, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        versions(&until(&mut stream, other.version).await),
        [other.version]
    );
    assert_eq!(app.event_count().await, before, "watching changes nothing");
}

#[tokio::test]
async fn a_watch_ends_when_its_token_expires() {
    let app = TestApp::spawn().await;
    let customer = Uuid::new_v4();
    let account = app
        .account_with(
            5_000,
            pb::CreateBillingAccountRequest {
                customer_id: customer.to_string(),
                ..Default::default()
            },
        )
        .await;
    // A token that expired 27 s ago: still accepted for the 30 s of clock
    // skew every call is allowed, so the watch ends in about 3 s.
    let claims = billing_api::auth::Claims {
        sub: "dashboard".to_owned(),
        role: Some("customer_admin".to_owned()),
        customer_id: Some(customer.to_string()),
        exp: jsonwebtoken::get_current_timestamp() - 27,
        nbf: None,
        iss: None,
        aud: None,
    };
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    let mut client = support::connect(app.addr, Some(&token)).await;
    let mut stream = client
        .watch_account(watch(&account.id, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        versions(&until(&mut stream, account.version).await),
        [account.version]
    );
    let ended = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("the stream ends with the token")
        .expect_err("an UNAUTHENTICATED status");
    assert_status(&ended, Code::Unauthenticated, "TOKEN_EXPIRED");
}

#[tokio::test]
async fn bad_watch_requests_get_clear_statuses() {
    let app = TestApp::spawn().await;
    let account = app.account(5_000).await;
    let mut client = app.client.clone();
    let ahead = client
        .watch_account(watch(&account.id, Some(account.version + 1)))
        .await
        .unwrap_err();
    assert_status(&ahead, Code::OutOfRange, "VERSION_AHEAD_OF_ACCOUNT");
    let negative = client
        .watch_account(watch(&account.id, Some(-1)))
        .await
        .unwrap_err();
    assert_status(&negative, Code::InvalidArgument, "INVALID_ARGUMENT");
    let malformed = client
        .watch_account(watch("not-a-uuid", None))
        .await
        .unwrap_err();
    assert_status(&malformed, Code::InvalidArgument, "INVALID_ARGUMENT");
    let missing = client
        .watch_account(watch(&Uuid::new_v4().to_string(), None))
        .await
        .unwrap_err();
    assert_status(&missing, Code::NotFound, "ACCOUNT_NOT_FOUND");
    // Caught up exactly: nothing until the next change.
    let mut stream = client
        .watch_account(watch(&account.id, Some(account.version)))
        .await
        .unwrap()
        .into_inner();
    let next = add(&mut client, &account.id, 1).await;
    assert_eq!(versions(&until(&mut stream, next).await), [next]);
}

/// The resident memory of this process, in KiB (Linux).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

/// How many watchers one process serves, and the delay from a change's
/// commit (its reply) to its delivery to every watcher of the account.
/// `WATCH_BENCH_WATCHERS` (default 5,000) watchers over
/// `WATCH_BENCH_ACCOUNTS` (1,000) accounts, `WATCH_BENCH_CHANGES` (5,000)
/// changes from `WATCH_BENCH_WRITERS` (32) concurrent writers. Server and clients share this process (and
/// its 2 cores), so the figures are an upper bound on the delay.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn measure_watchers_and_delivery_delay() {
    let watchers = env_or("WATCH_BENCH_WATCHERS", 5_000);
    let accounts = env_or("WATCH_BENCH_ACCOUNTS", 1_000).max(1);
    let changes = env_or("WATCH_BENCH_CHANGES", 5_000);
    let writer_count = env_or("WATCH_BENCH_WRITERS", 32).max(1);
    let app = TestApp::spawn_with(TestDb::new().await, |c| c.database.pool_size = 32).await;
    let mut ids = Vec::new();
    for _ in 0..accounts {
        ids.push(app.account(1_000_000_000).await.id);
    }
    // Each change's reply time, by (account, version).
    let acked: Arc<Mutex<HashMap<(String, i64), Instant>>> = Arc::default();
    // Each delivery's time.
    let delivered: Arc<Mutex<Vec<(String, i64, Instant)>>> = Arc::default();

    let rss_before = rss_kib();
    // A connection carries at most a couple of hundred concurrent streams
    // (HTTP/2 settings): 100 watchers a connection. Watchers connect 256 at
    // a time, as clients retrying with backoff would: each start reads the
    // account once, and all at once would queue on the connection pool.
    let opening = Arc::new(tokio::sync::Semaphore::new(256));
    let mut connections = Vec::new();
    for _ in 0..watchers.div_ceil(100) {
        connections.push(app.new_client().await);
    }
    let opened = Instant::now();
    let mut streams = tokio::task::JoinSet::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(watchers.max(1));
    for w in 0..watchers {
        let mut client = connections[w / 100].clone();
        let id = ids[w % accounts].clone();
        let delivered = delivered.clone();
        let ready = ready_tx.clone();
        let opening = opening.clone();
        streams.spawn(async move {
            let permit = opening.acquire_owned().await.unwrap();
            let mut stream = match client.watch_account(watch(&id, None)).await {
                Ok(stream) => stream.into_inner(),
                Err(status) => {
                    eprintln!("a watcher could not start: {status:?}");
                    return;
                }
            };
            drop(permit);
            let mut first = true;
            while let Ok(Some(view)) = stream.message().await {
                if first {
                    first = false;
                    let _ = ready.send(()).await;
                    continue;
                }
                delivered
                    .lock()
                    .unwrap()
                    .push((view.id, view.version, Instant::now()));
            }
        });
    }
    drop(ready_tx);
    for started in 0..watchers {
        assert!(
            ready_rx.recv().await.is_some(),
            "only {started} of {watchers} watchers started"
        );
    }
    let open_time = opened.elapsed();
    let rss_open = rss_kib();

    let started = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for task in 0..writer_count {
        let mut client = connections[task % connections.len()].clone();
        let ids = ids.clone();
        let acked = acked.clone();
        writers.spawn(async move {
            let mut n = task;
            while n < changes {
                let id = &ids[n % ids.len()];
                let version = add(&mut client, id, 1).await;
                acked
                    .lock()
                    .unwrap()
                    .insert((id.clone(), version), Instant::now());
                n += writer_count;
            }
        });
    }
    writers.join_all().await;
    let write_time = started.elapsed();
    // Watcher w watches account w % accounts; change n goes to n % accounts.
    let share = |total: usize, a: usize| total / accounts + usize::from(a < total % accounts);
    let expected: usize = (0..accounts)
        .map(|a| share(watchers, a) * share(changes, a))
        .sum();
    let deadline = Instant::now() + Duration::from_secs(60);
    while delivered.lock().unwrap().len() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drain_time = started.elapsed();
    let acked = acked.lock().unwrap().clone();
    let delivered = delivered.lock().unwrap().clone();
    let mut delays: Vec<Duration> = delivered
        .iter()
        .filter_map(|(id, version, at)| {
            acked
                .get(&(id.clone(), *version))
                .map(|ack| at.saturating_duration_since(*ack))
        })
        .collect();
    delays.sort();
    println!(
        "watchers {watchers} on {accounts} accounts over {} connections: all open in {open_time:?}; \
         RSS {rss_before} KiB before, {rss_open} KiB with them open (server and clients)",
        connections.len()
    );
    println!(
        "{changes} changes written in {write_time:?}; {} of {expected} deliveries in {drain_time:?}",
        delivered.len()
    );
    println!(
        "reply to delivery: p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
        percentile(&delays, 0.50),
        percentile(&delays, 0.90),
        percentile(&delays, 0.99),
        delays.last().copied().unwrap_or_default()
    );
    assert_eq!(delivered.len(), expected, "every watcher got every change");
    streams.abort_all();
}

//! The real server's Prometheus endpoint, scraped over HTTP after real calls:
//! RPC counters and latency histograms by method and status code, the
//! store's command and batch metrics, and the projector's and publisher's
//! lag gauges moving as they fall behind and catch up.
//!
//! One recorder serves the whole process, so counters are compared before
//! and after each test's own calls.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use billing_proto::v1 as pb;
use pb::ServiceType as S;
use support::{TestApp, free_addr, reserve};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// One scrape: the status line, the content type and the body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.lines().next().unwrap_or_default().to_owned();
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_owned();
    (status, content_type, body.to_owned())
}

/// The samples of a scrape: (name, labels) -> value.
type Samples = BTreeMap<(String, BTreeMap<String, String>), f64>;

async fn scrape(addr: std::net::SocketAddr) -> Samples {
    let (status, _, body) = get(addr, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    parse(&body)
}

/// Prometheus's text format, as far as these metrics use it.
fn parse(text: &str) -> Samples {
    let mut samples = Samples::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("a sample line");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("a value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once('=').expect("label=value");
                (k.to_owned(), v.trim_matches('"').to_owned())
            })
            .collect();
        samples.insert((name.to_owned(), labels), value);
    }
    samples
}

fn sample(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    samples
        .get(&(name.to_owned(), labels))
        .copied()
        .unwrap_or(0.0)
}

/// The sum of a metric's samples whose labels include `labels`.
fn total(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|((n, l), _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test]
async fn rpc_counts_and_latency_are_labelled_by_method_and_status_code() {
    let metrics = free_addr();
    let db = billing_testkit::TestDb::new().await;
    // The API alone: no lag gauges from this app (another test watches them).
    let app = TestApp::spawn_with(db, |config| {
        config.metrics_addr = Some(metrics);
        config.roles = vec![billing_server::Role::Api];
    })
    .await;
    let before = scrape(metrics).await;

    let account = app.account(1_000_000).await;
    let mut client = app.client.clone();
    client
        .reserve(reserve(
            "call-metrics-1",
            &account.id,
            S::CallPstnOutgoing,
            2,
        ))
        .await
        .expect("reserve");
    let missing = client
        .get_billing_account(pb::GetBillingAccountRequest {
            id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let refused = client
        .debit(pb::DebitRequest {
            account_id: account.id.clone(),
            service_type: S::Sms.into(),
            quantity: 1_000,
            idempotency_key: "sms-too-many".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    let mut anonymous = support::connect(app.addr, None).await;
    let unauthenticated = anonymous
        .reserve(reserve(
            "call-metrics-2",
            &account.id,
            S::CallPstnOutgoing,
            1,
        ))
        .await
        .unwrap_err();
    assert_eq!(unauthenticated.code(), tonic::Code::Unauthenticated);

    let after = scrape(metrics).await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };
    let calls = "billing_rpc_requests_total";
    assert_eq!(moved(calls, &[("method", "Reserve"), ("code", "OK")]), 1.0);
    assert_eq!(
        moved(calls, &[("method", "Reserve"), ("code", "UNAUTHENTICATED")]),
        1.0
    );
    assert_eq!(
        moved(
            calls,
            &[("method", "GetBillingAccount"), ("code", "NOT_FOUND")]
        ),
        1.0
    );
    assert_eq!(
        moved(
            calls,
            &[("method", "Debit"), ("code", "FAILED_PRECONDITION")]
        ),
        1.0
    );
    // The other test creates accounts too, in the same process.
    assert!(moved(calls, &[("method", "CreateBillingAccount"), ("code", "OK")]) >= 1.0);
    // A histogram per method and code: every call in the +Inf bucket, a
    // positive sum, and the fast buckets no fuller than the slow ones.
    let latency = [("method", "Reserve"), ("code", "OK")];
    assert_eq!(moved("billing_rpc_duration_seconds_count", &latency), 1.0);
    assert!(moved("billing_rpc_duration_seconds_sum", &latency) > 0.0);
    let bucket = |le: &str| {
        sample(
            &after,
            "billing_rpc_duration_seconds_bucket",
            &[("method", "Reserve"), ("code", "OK"), ("le", le)],
        )
    };
    assert!(bucket("+Inf") >= 1.0);
    assert!(bucket("0.001") <= bucket("10"));

    // The store's side of the same calls.
    assert_eq!(
        moved(
            "billing_commands_total",
            &[("command", "reserve"), ("outcome", "applied")]
        ),
        1.0
    );
    let rejections = |s: &Samples| {
        total(
            s,
            "billing_command_rejections_total",
            &[("command", "debit")],
        )
    };
    assert_eq!(rejections(&after) - rejections(&before), 1.0);
    assert!(moved("billing_events_total", &[("type", "reserved")]) >= 1.0);
    assert!(
        total(&after, "billing_store_transaction_seconds_count", &[])
            > total(&before, "billing_store_transaction_seconds_count", &[])
    );
    assert!(total(&after, "billing_store_batch_size_count", &[]) >= 4.0);
    assert_eq!(
        sample(&after, "billing_db_pool_max_connections", &[]),
        16.0,
        "the test configuration's pool"
    );
    assert_eq!(
        sample(
            &after,
            "billing_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );

    // The endpoint itself.
    let (status, content_type, body) = get(metrics, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(body.contains("# TYPE billing_rpc_duration_seconds histogram"));
    assert!(body.contains("# TYPE billing_rpc_requests_total counter"));
    let (status, _, _) = get(metrics, "/").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

#[tokio::test]
async fn the_lag_gauges_rise_while_the_readers_are_held_back_and_fall_when_they_catch_up() {
    let brokers = std::env::var("BILLING_TEST_KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!("BILLING_TEST_KAFKA_BROKERS is not set: run the tests with `make test`")
    });
    let id = uuid::Uuid::new_v4().simple().to_string();
    let metrics = free_addr();
    let db = billing_testkit::TestDb::new().await;
    // Hold both readers back from the start: the projector's checkpoint rows
    // locked, every slice's (its batches fail and are tried again, as during
    // a rebuild), the publisher's single lease taken as the release before
    // would (its slices stand by).
    let holder = db.client().await;
    holder
        .batch_execute(
            "BEGIN; SELECT 1 FROM feed_checkpoints
             WHERE name = 'read_models' OR starts_with(name, 'read_models/') FOR UPDATE",
        )
        .await
        .unwrap();
    let store =
        billing_store::Store::connect(&db.url, 2, billing_domain::RateTable::default()).unwrap();
    let lease = store
        .feed()
        .acquire_lease(billing_publisher::CHECKPOINT)
        .await
        .unwrap()
        .expect("the lease, before any publisher runs");
    let app = TestApp::spawn_with(db, |config| {
        config.metrics_addr = Some(metrics);
        config.roles.push(billing_server::Role::Publisher);
        config.kafka.security.kafka_brokers = Some(brokers);
        config.kafka.kafka_topic = format!("test.account_updated.{id}");
        config.kafka.kafka_alerts_topic = format!("test.balance_alerts.{id}");
    })
    .await;
    let account = app.account(1_000_000).await;
    for _ in 0..3 {
        app.add(&account.id, 1_000, 0).await;
    }
    // Creating, funding and three top-ups: at least five events behind.
    let behind = |samples: &Samples| {
        sample(samples, "billing_projector_lag_events", &[]) >= 5.0
            && sample(samples, "billing_publisher_lag_events", &[]) >= 5.0
            && sample(samples, "billing_projector_lag_seconds", &[]) > 0.0
            && sample(samples, "billing_publisher_lag_seconds", &[]) > 0.0
    };
    wait_for(metrics, "the lag to show the events", behind).await;

    holder.batch_execute("COMMIT").await.unwrap();
    drop(lease);
    let caught_up = |samples: &Samples| {
        sample(samples, "billing_projector_lag_events", &[]) == 0.0
            && sample(samples, "billing_publisher_lag_events", &[]) == 0.0
    };
    let samples = wait_for(metrics, "both readers to catch up", caught_up).await;
    assert_eq!(sample(&samples, "billing_projector_lag_seconds", &[]), 0.0);
    assert_eq!(sample(&samples, "billing_publisher_lag_seconds", &[]), 0.0);
    assert!(total(&samples, "billing_projector_events_total", &[]) >= 3.0);
    assert!(total(&samples, "billing_publisher_events_total", &[]) >= 3.0);
}

/// Scrapes until `done` holds (or fails after 30 s), and returns that scrape.
async fn wait_for(
    metrics: std::net::SocketAddr,
    what: &str,
    done: impl Fn(&Samples) -> bool,
) -> Samples {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let samples = scrape(metrics).await;
        if done(&samples) {
            return samples;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited 30 s for {what}; last scrape: {samples:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

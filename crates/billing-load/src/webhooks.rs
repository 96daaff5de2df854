//! `billing-load webhooks`: how fast one dispatcher delivers, and whether a
//! slow endpoint holds the others back.
//!
//! With the service's API running (without the dispatcher role), this
//! starts local endpoints (a fast one answering at once, a slow one
//! answering after `--slow-ms`), registers webhooks for a few customers
//! through the API, and makes a backlog of changes on their accounts. Then
//! it starts one dispatcher (`--billing BIN serve --roles dispatcher`) and
//! times the fast endpoint's deliveries from the first to the last, while
//! the slow customers' deliveries crawl beside them. Prints one JSON line.

use std::collections::HashSet;
use std::convert::Infallible;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use billing_proto::v1 as pb;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

#[derive(Debug, clap::Args)]
pub struct WebhookArgs {
    /// The API's address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// The HS256 secret the API verifies tokens with.
    #[arg(long, env = "BILLING_JWT_SECRET")]
    jwt_secret: String,
    #[command(flatten)]
    tls: billing_server::tls::ClientTlsArgs,
    /// The `billing` binary that runs the dispatcher.
    #[arg(long)]
    billing: std::path::PathBuf,
    /// The database the dispatcher uses (the API's).
    #[arg(long, env = "BILLING_DATABASE_URL")]
    database_url: String,
    /// Customers with a webhook to the fast endpoint.
    #[arg(long, default_value_t = 8)]
    customers: usize,
    /// Accounts per customer.
    #[arg(long, default_value_t = 100)]
    accounts: usize,
    /// Changes per account (beyond its creation).
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// Customers with a webhook to the slow endpoint (0: none).
    #[arg(long, default_value_t = 0)]
    slow_customers: usize,
    /// Accounts per slow customer: enough heads to keep the slow endpoint
    /// busy throughout, few enough that recording them costs little.
    #[arg(long, default_value_t = 10)]
    slow_accounts: usize,
    /// How long the slow endpoint takes to answer.
    #[arg(long, default_value_t = 2_000)]
    slow_ms: u64,
    /// Requests in flight while making the backlog.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

/// An endpoint that counts what it receives (by message id: a retry is
/// not counted twice) and answers after `delay`.
#[derive(Clone)]
struct Endpoint {
    seen: Arc<Mutex<Seen>>,
}

/// What an endpoint has received: the message ids, and when the first
/// request and the last new one came.
#[derive(Default)]
struct Seen {
    ids: HashSet<String>,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Endpoint {
    async fn start(delay: Duration) -> anyhow::Result<(Self, String)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let endpoint = Self {
            seen: Arc::default(),
        };
        let shared = endpoint.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let endpoint = shared.clone();
                tokio::spawn(async move {
                    let service =
                        service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                            let endpoint = endpoint.clone();
                            async move {
                                let id = request
                                    .headers()
                                    .get("webhook-id")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_owned();
                                let _ = request.into_body().collect().await;
                                tokio::time::sleep(delay).await;
                                {
                                    let mut seen = endpoint.seen.lock().unwrap();
                                    let now = Instant::now();
                                    seen.first.get_or_insert(now);
                                    if seen.ids.insert(id) {
                                        seen.last = Some(now);
                                    }
                                }
                                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok((endpoint, url))
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().ids.len()
    }

    /// From the first request to the last new one.
    fn span(&self) -> Duration {
        let seen = self.seen.lock().unwrap();
        match (seen.first, seen.last) {
            (Some(first), Some(last)) => last - first,
            _ => Duration::ZERO,
        }
    }
}

use crate::run::Client;

async fn setup(
    client: &Client,
    url: &str,
    customers: usize,
    accounts_each: usize,
) -> anyhow::Result<Vec<String>> {
    let mut accounts = Vec::new();
    for _ in 0..customers {
        let customer = uuid::Uuid::new_v4().to_string();
        client
            .clone()
            .create_webhook(pb::CreateWebhookRequest {
                customer_id: customer.clone(),
                name: "bench".into(),
                uri: url.to_owned(),
                method: "POST".into(),
                event_types: vec!["account_updated".into()],
                ..Default::default()
            })
            .await
            .context("CreateWebhook")?;
        for _ in 0..accounts_each {
            let account = client
                .clone()
                .create_billing_account(pb::CreateBillingAccountRequest {
                    customer_id: customer.clone(),
                    name: "bench".into(),
                    ..Default::default()
                })
                .await
                .context("CreateBillingAccount")?
                .into_inner();
            accounts.push(account.id);
        }
    }
    Ok(accounts)
}

async fn changes(
    client: &Client,
    accounts: &[String],
    per_account: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    let work = accounts
        .iter()
        .flat_map(|a| std::iter::repeat_n(a.clone(), per_account));
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(work)
        .map(|account_id| {
            let mut client = client.clone();
            async move {
                client
                    .add_balance(pb::AddBalanceRequest {
                        account_id,
                        amount_credit: 1_000,
                        idempotency_key: uuid::Uuid::new_v4().to_string(),
                        ..Default::default()
                    })
                    .await
                    .context("AddBalance")?;
                Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    results.into_iter().collect()
}

pub async fn run(args: WebhookArgs) -> anyhow::Result<()> {
    let (fast, fast_url) = Endpoint::start(Duration::ZERO).await?;
    let (slow, slow_url) = Endpoint::start(Duration::from_millis(args.slow_ms)).await?;
    let client = crate::run::client(
        &args.addr,
        &args.tls,
        &args.jwt_secret,
        "project_super_admin",
    )
    .await?;
    let fast_accounts = setup(&client, &fast_url, args.customers, args.accounts).await?;
    let slow_accounts = setup(&client, &slow_url, args.slow_customers, args.slow_accounts).await?;
    let all: Vec<String> = fast_accounts
        .iter()
        .chain(&slow_accounts)
        .cloned()
        .collect();
    changes(&client, &all, args.changes, args.concurrency).await?;
    // Each account: its creation, its monthly tokens, and the changes.
    let expected = fast_accounts.len() * (args.changes + 2);
    let mut dispatcher = tokio::process::Command::new(&args.billing)
        .args(["serve", "--roles", "dispatcher"])
        .env("BILLING_DATABASE_URL", &args.database_url)
        .env("BILLING_WEBHOOK_ALLOW_HTTP", "true")
        .env("BILLING_WEBHOOK_ALLOW_PRIVATE", "true")
        .env_remove("BILLING_GRPC_ADDR")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting the dispatcher")?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(300);
    while fast.count() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = dispatcher.kill().await;
    let delivered = fast.count();
    let span = fast.span().as_secs_f64();
    let report = serde_json::json!({
        "fast_deliveries": delivered,
        "expected": expected,
        "seconds": span,
        "per_second": if span > 0.0 { delivered as f64 / span } else { 0.0 },
        "slow_customers": args.slow_customers,
        "slow_ms": args.slow_ms,
        "slow_deliveries_meanwhile": slow.count(),
        "from_start_seconds": started.elapsed().as_secs_f64(),
    });
    println!("{report}");
    anyhow::ensure!(
        delivered == expected,
        "only {delivered} of {expected} delivered"
    );
    Ok(())
}

//! The load: workers that behave like call control.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use billing_proto::v1 as pb;
use billing_proto::v1::billing_service_client::BillingServiceClient;
use serde::Serialize;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::measure::{self, LagReport, Latency, Process, ProcessCpu, Second, Tally};

#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// The service's gRPC address (`https://host:port` for TLS).
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: String,
    /// TLS for an https:// address.
    #[command(flatten)]
    tls: billing_server::tls::ClientTlsArgs,
    /// The service's HS256 secret, to mint an admin token (set-up) and a
    /// service token (the load).
    #[arg(long, env = "BILLING_JWT_SECRET")]
    jwt_secret: String,
    /// Concurrent workers, each with one call or message in flight.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// gRPC connections the workers share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2)]
    warmup_s: u64,
    /// Accounts the load is spread over, uniformly (1: one hot account).
    #[arg(long, default_value_t = 100)]
    accounts: usize,
    /// Percent of operations that are SMS debits (the rest are calls).
    #[arg(long, default_value_t = 20)]
    sms_percent: u32,
    /// Percent of calls that are VN (token-first); the rest are PSTN.
    #[arg(long, default_value_t = 30)]
    vn_percent: u32,
    /// What to drive: the billing RPCs, or the gRPC health check alone (no
    /// database work: the ceiling gRPC allows on this machine).
    #[arg(long, value_enum, default_value_t = Target::Service)]
    target: Target,
    /// A process to report the CPU of, as NAME=PID (repeatable): the API,
    /// the read side, the broker.
    #[arg(long = "process")]
    processes: Vec<Process>,
    /// The billing database, to sample the projector's and the publisher's
    /// lag while measuring.
    #[arg(long, env = "BILLING_DATABASE_URL")]
    database_url: Option<String>,
    /// A name for this run in the report.
    #[arg(long, default_value = "run")]
    label: String,
    /// Where to write the JSON.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    Service,
    Health,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::Health => "health",
        }
    }
}

pub(crate) type Client = BillingServiceClient<InterceptedService<Channel, Bearer>>;

#[derive(Clone, Debug)]
pub(crate) struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

async fn channel(addr: &str, tls: &billing_server::tls::ClientTlsArgs) -> anyhow::Result<Channel> {
    billing_server::tls::client::endpoint(addr, tls)?
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))
}

pub(crate) async fn client(
    addr: &str,
    tls: &billing_server::tls::ClientTlsArgs,
    secret: &str,
    role: &str,
) -> anyhow::Result<Client> {
    let token = billing_api::auth::mint_hs256(
        secret.as_bytes(),
        "billing-load",
        role,
        None,
        3_600,
        None,
        None,
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    Ok(BillingServiceClient::with_interceptor(
        channel(addr, tls).await?,
        Bearer(format!("Bearer {token}").parse()?),
    ))
}

/// A small, fast, seeded PRNG (xorshift64*): the load needs no cryptography.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One run's measurements, as written to JSON.
#[derive(Debug, Serialize)]
pub struct RunReport {
    pub kind: &'static str,
    pub label: String,
    pub distribution: &'static str,
    pub accounts: usize,
    pub concurrency: usize,
    pub duration_s: f64,
    pub calls: u64,
    pub calls_per_s: f64,
    /// Successful state changes (health checks, for the health target).
    pub changes: u64,
    pub changes_per_s: f64,
    pub rpcs: BTreeMap<String, Latency>,
    pub errors: BTreeMap<String, u64>,
    /// CPU seconds the generator used while measuring, and as a share of
    /// one core: it must not be the bottleneck.
    pub loadgen_cpu_s: f64,
    pub loadgen_cpu_pct_of_core: f64,
    /// CPU of each named process (API, read side, broker).
    pub processes: BTreeMap<String, ProcessCpu>,
    pub postgres_cpu_s: f64,
    pub postgres_cpu_us_per_change: f64,
    /// The projector's and the publisher's lag while measuring.
    pub lag: BTreeMap<&'static str, LagReport>,
    /// Each second of the window: RPCs started, and how many took 10 ms or
    /// more.
    pub seconds: Vec<Second>,
}

/// Creates the load's accounts, many at a time, each with ample credit.
async fn setup(args: &RunArgs) -> anyhow::Result<Vec<String>> {
    use futures::StreamExt;
    let admin = client(
        &args.addr,
        &args.tls,
        &args.jwt_secret,
        "project_super_admin",
    )
    .await?;
    let accounts = futures::stream::iter(0..args.accounts.max(1))
        .map(|n| {
            let mut admin = admin.clone();
            async move {
                let account = admin
                    .create_billing_account(pb::CreateBillingAccountRequest {
                        customer_id: uuid::Uuid::new_v4().to_string(),
                        name: format!("load-{n}"),
                        plan_type: pb::PlanType::Basic.into(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                admin
                    .add_balance(pb::AddBalanceRequest {
                        account_id: account.id.clone(),
                        amount_credit: 1_000_000_000_000_000,
                        idempotency_key: uuid::Uuid::new_v4().to_string(),
                        ..Default::default()
                    })
                    .await?;
                anyhow::Ok(account.id)
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    accounts.into_iter().collect()
}

/// A call-control worker: SMS debits, and calls reserved then committed.
async fn worker(
    mut client: Client,
    accounts: std::sync::Arc<Vec<String>>,
    args: RunArgs,
    seed: u64,
    measure_from: Instant,
    end: Instant,
) -> Tally {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut tally = Tally::since(measure_from);
    while Instant::now() < end {
        let account = accounts[rng.below(accounts.len() as u64) as usize].clone();
        let measuring = Instant::now() >= measure_from;
        if rng.below(100) < u64::from(args.sms_percent) {
            let started = Instant::now();
            let result = client
                .debit(pb::DebitRequest {
                    account_id: account,
                    service_type: pb::ServiceType::Sms.into(),
                    quantity: 1,
                    idempotency_key: uuid::Uuid::new_v4().to_string(),
                    ..Default::default()
                })
                .await
                .map(drop);
            if measuring && tally.record("Debit", started, &result) {
                tally.changes += 1;
            }
            continue;
        }
        let service = if rng.below(100) < u64::from(args.vn_percent) {
            pb::ServiceType::CallVn
        } else {
            pb::ServiceType::CallPstnOutgoing
        };
        let reservation_id = uuid::Uuid::new_v4().to_string();
        let started = Instant::now();
        let reserved = client
            .reserve(pb::ReserveRequest {
                reservation_id: reservation_id.clone(),
                account_id: account,
                service_type: service.into(),
                requested_units: 5,
                allow_partial: true,
                ttl_seconds: 900,
            })
            .await
            .map(drop);
        let reserved_ok = reserved.is_ok();
        if measuring && tally.record("Reserve", started, &reserved) {
            tally.changes += 1;
        }
        if !reserved_ok {
            continue;
        }
        let duration_ms = 1_000 + i64::try_from(rng.below(299_000)).unwrap_or(0);
        let started = Instant::now();
        let committed = client
            .commit(pb::CommitRequest {
                reservation_id,
                used_duration_ms: duration_ms,
                used_quantity: 0,
            })
            .await
            .map(drop);
        if measuring && tally.record("Commit", started, &committed) {
            tally.changes += 1;
            tally.calls += 1;
        }
    }
    tally
}

/// A worker that only asks the gRPC health check: the same load generator
/// and transport with no database work behind it.
async fn health_worker(
    mut client: HealthClient<Channel>,
    measure_from: Instant,
    end: Instant,
) -> Tally {
    let mut tally = Tally::since(measure_from);
    while Instant::now() < end {
        let measuring = Instant::now() >= measure_from;
        let started = Instant::now();
        let result = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(drop);
        if measuring && tally.record("Check", started, &result) {
            tally.changes += 1;
        }
    }
    tally
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let accounts = match args.target {
        Target::Service => std::sync::Arc::new(setup(&args).await?),
        Target::Health => std::sync::Arc::default(),
    };
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(channel(&args.addr, &args.tls).await?);
    }
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(args.warmup_s);
    let end = measure_from + Duration::from_secs(args.duration_s);
    let mut workers = Vec::new();
    for n in 0..args.concurrency.max(1) {
        let channel = channels[n % channels.len()].clone();
        workers.push(match args.target {
            Target::Service => {
                let token = billing_api::auth::mint_hs256(
                    args.jwt_secret.as_bytes(),
                    "billing-load",
                    "service",
                    None,
                    3_600,
                    None,
                    None,
                )
                .map_err(|e| anyhow::anyhow!(e))?;
                let client = BillingServiceClient::with_interceptor(
                    channel,
                    Bearer(format!("Bearer {token}").parse()?),
                );
                tokio::spawn(worker(
                    client,
                    accounts.clone(),
                    args.clone(),
                    n as u64 + 1,
                    measure_from,
                    end,
                ))
            }
            Target::Health => {
                tokio::spawn(health_worker(HealthClient::new(channel), measure_from, end))
            }
        });
    }
    // CPU and lag are sampled over the measured window only.
    tokio::time::sleep_until(measure_from.into()).await;
    let lag = args
        .database_url
        .clone()
        .filter(|_| args.target == Target::Service)
        .map(|url| tokio::spawn(measure::sample_lag(url, end)));
    let self_before = measure::cpu_seconds("self").unwrap_or(0.0);
    let processes_before = measure::cpu_snapshot(&args.processes);
    let postgres_before = measure::postgres_cpu_seconds();
    let mut tally = Tally::since(measure_from);
    for worker in workers {
        tally.merge(worker.await?);
    }
    let measured = end.duration_since(measure_from).as_secs_f64();
    let changes = tally.changes.max(1) as f64;
    let loadgen_cpu = measure::cpu_seconds("self").unwrap_or(0.0) - self_before;
    let processes = measure::cpu_since(&args.processes, &processes_before, changes);
    let postgres_cpu = measure::postgres_cpu_seconds() - postgres_before;
    let lag = match lag {
        Some(task) => task.await??,
        None => BTreeMap::new(),
    };
    let report = RunReport {
        kind: args.target.name(),
        label: args.label.clone(),
        distribution: if args.accounts <= 1 { "hot" } else { "uniform" },
        accounts: args.accounts,
        concurrency: args.concurrency,
        duration_s: measured,
        calls: tally.calls,
        calls_per_s: tally.calls as f64 / measured,
        changes: tally.changes,
        changes_per_s: tally.changes as f64 / measured,
        rpcs: tally.latency_report(),
        errors: tally.errors,
        loadgen_cpu_s: loadgen_cpu,
        loadgen_cpu_pct_of_core: 100.0 * loadgen_cpu / measured,
        processes,
        postgres_cpu_s: postgres_cpu,
        postgres_cpu_us_per_change: postgres_cpu * 1e6 / changes,
        lag,
        seconds: tally.seconds,
    };
    let json = serde_json::to_string_pretty(&report)?;
    match &args.out {
        Some(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(path, &json)?;
        }
        None => println!("{json}"),
    }
    eprintln!(
        "{}: {} workers, {} accounts: {:.0} {}/s, errors {:?}",
        report.label,
        report.concurrency,
        report.accounts,
        report.changes_per_s,
        if args.target == Target::Health {
            "checks"
        } else {
            "changes"
        },
        report.errors
    );
    Ok(())
}

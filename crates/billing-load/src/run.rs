//! The load: workers that behave like call control.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use billing_proto::v1 as pb;
use billing_proto::v1::billing_service_client::BillingServiceClient;
use hdrhistogram::Histogram;
use serde::Serialize;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// The service's gRPC address.
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: String,
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
    /// The server's process id, to report its CPU use.
    #[arg(long)]
    server_pid: Option<u32>,
    /// A name for this run in the report.
    #[arg(long, default_value = "run")]
    label: String,
    /// Where to write the JSON.
    #[arg(long)]
    out: Option<PathBuf>,
}

type Client = BillingServiceClient<InterceptedService<Channel, Bearer>>;

#[derive(Clone, Debug)]
struct Bearer(MetadataValue<Ascii>);

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

async fn client(addr: &str, secret: &str, role: &str) -> anyhow::Result<Client> {
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
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    Ok(BillingServiceClient::with_interceptor(
        channel,
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

/// What one worker measured.
#[derive(Default)]
struct Tally {
    latencies: BTreeMap<&'static str, Histogram<u64>>,
    errors: BTreeMap<String, u64>,
    calls: u64,
    changes: u64,
}

impl Tally {
    fn record(
        &mut self,
        rpc: &'static str,
        started: Instant,
        result: &Result<(), tonic::Status>,
    ) -> bool {
        let micros = u64::try_from(started.elapsed().as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let histogram = self.latencies.entry(rpc).or_insert_with(|| {
            Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
        });
        let _ = histogram.record(micros.min(120_000_000));
        match result {
            Ok(()) => true,
            Err(status) => {
                *self
                    .errors
                    .entry(format!("{rpc}:{:?}", status.code()))
                    .or_default() += 1;
                false
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        for (rpc, h) in other.latencies {
            match self.latencies.get_mut(rpc) {
                Some(mine) => {
                    let _ = mine.add(&h);
                }
                None => {
                    self.latencies.insert(rpc, h);
                }
            }
        }
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        self.calls += other.calls;
        self.changes += other.changes;
    }
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
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
    pub changes: u64,
    pub changes_per_s: f64,
    pub rpcs: BTreeMap<String, Latency>,
    pub errors: BTreeMap<String, u64>,
    /// CPU seconds the generator used while measuring, and as a share of
    /// one core: it must not be the bottleneck.
    pub loadgen_cpu_s: f64,
    pub loadgen_cpu_pct_of_core: f64,
    pub server_cpu_s: Option<f64>,
    pub server_cpu_us_per_change: Option<f64>,
    pub postgres_cpu_s: f64,
    pub postgres_cpu_us_per_change: f64,
}

/// CPU seconds (user + system) of a process, from /proc.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU seconds of every PostgreSQL process on the machine.
fn postgres_cpu_seconds() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "postgres")
        })
        .filter_map(|pid| cpu_seconds(&pid))
        .sum()
}

async fn setup(args: &RunArgs) -> anyhow::Result<Vec<String>> {
    let mut admin = client(&args.addr, &args.jwt_secret, "project_super_admin").await?;
    let mut accounts = Vec::with_capacity(args.accounts);
    for n in 0..args.accounts.max(1) {
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
        accounts.push(account.id);
    }
    Ok(accounts)
}

async fn worker(
    mut client: Client,
    accounts: std::sync::Arc<Vec<String>>,
    args: RunArgs,
    seed: u64,
    measure_from: Instant,
    end: Instant,
) -> Tally {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut tally = Tally::default();
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

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let accounts = std::sync::Arc::new(setup(&args).await?);
    let mut clients = Vec::new();
    for _ in 0..args.connections.max(1) {
        clients.push(client(&args.addr, &args.jwt_secret, "service").await?);
    }
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(args.warmup_s);
    let end = measure_from + Duration::from_secs(args.duration_s);
    let workers: Vec<_> = (0..args.concurrency.max(1))
        .map(|n| {
            let client = clients[n % clients.len()].clone();
            tokio::spawn(worker(
                client,
                accounts.clone(),
                args.clone(),
                n as u64 + 1,
                measure_from,
                end,
            ))
        })
        .collect();
    // CPU is sampled over the measured window only.
    tokio::time::sleep_until(measure_from.into()).await;
    let self_before = cpu_seconds("self").unwrap_or(0.0);
    let server_before = args
        .server_pid
        .and_then(|pid| cpu_seconds(&pid.to_string()));
    let postgres_before = postgres_cpu_seconds();
    let mut tally = Tally::default();
    for worker in workers {
        tally.merge(worker.await?);
    }
    let measured = end.duration_since(measure_from).as_secs_f64();
    let loadgen_cpu = cpu_seconds("self").unwrap_or(0.0) - self_before;
    let server_cpu = server_before.and_then(|before| {
        args.server_pid
            .and_then(|pid| cpu_seconds(&pid.to_string()))
            .map(|after| after - before)
    });
    let postgres_cpu = postgres_cpu_seconds() - postgres_before;
    let changes = tally.changes.max(1) as f64;
    let report = RunReport {
        kind: "service",
        label: args.label.clone(),
        distribution: if args.accounts <= 1 { "hot" } else { "uniform" },
        accounts: args.accounts,
        concurrency: args.concurrency,
        duration_s: measured,
        calls: tally.calls,
        calls_per_s: tally.calls as f64 / measured,
        changes: tally.changes,
        changes_per_s: tally.changes as f64 / measured,
        rpcs: tally
            .latencies
            .iter()
            .map(|(rpc, h)| {
                (
                    (*rpc).to_owned(),
                    Latency {
                        count: h.len(),
                        p50_us: h.value_at_quantile(0.50),
                        p95_us: h.value_at_quantile(0.95),
                        p99_us: h.value_at_quantile(0.99),
                        p999_us: h.value_at_quantile(0.999),
                        max_us: h.max(),
                    },
                )
            })
            .collect(),
        errors: tally.errors,
        loadgen_cpu_s: loadgen_cpu,
        loadgen_cpu_pct_of_core: 100.0 * loadgen_cpu / measured,
        server_cpu_s: server_cpu,
        server_cpu_us_per_change: server_cpu.map(|cpu| cpu * 1e6 / changes),
        postgres_cpu_s: postgres_cpu,
        postgres_cpu_us_per_change: postgres_cpu * 1e6 / changes,
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
        "{}: {} workers, {} accounts: {:.0} changes/s, {:.0} calls/s, errors {:?}",
        report.label,
        report.concurrency,
        report.accounts,
        report.changes_per_s,
        report.calls_per_s,
        report.errors
    );
    Ok(())
}

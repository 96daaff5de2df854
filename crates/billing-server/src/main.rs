//! `billing`: the billing service binary. See `billing --help`.

use billing_server::config::DatabaseArgs;
use billing_server::telemetry::{self, LogFormat};
use billing_server::{Application, ServeConfig, shutdown_signal};
use clap::{Parser, Subcommand};

/// mimalloc rather than glibc's malloc: every request, batch and event
/// allocates and frees many small buffers across tokio's worker threads,
/// which mimalloc's per-thread free lists serve with fewer instructions (see
/// BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "billing",
    version,
    about = "Billing and real-time charging service"
)]
struct Cli {
    /// Log output format.
    #[arg(
        long,
        env = "BILLING_LOG_FORMAT",
        value_enum,
        default_value = "auto",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the service's roles (API, sweeper and projector by default).
    Serve(Box<ServeConfig>),
    /// Apply pending database migrations, then exit.
    Migrate(DatabaseArgs),
    /// Rebuild the read models (accounts, ledger) from the events, while the
    /// service keeps running.
    Rebuild(DatabaseArgs),
    /// Recompute every account's hash chain (or one account's) from the
    /// stored events; name the first broken link and exit 1 if there is one.
    Verify {
        /// Only this account's chain.
        #[arg(long)]
        account: Option<uuid::Uuid>,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Print how far the projector is behind the events.
    Lag(DatabaseArgs),
    /// Mint an HS256 bearer token (with BILLING_JWT_SECRET, or a key of
    /// BILLING_JWT_SECRETS with --kid) for trying the API.
    Token {
        /// project_super_admin, service or customer_admin.
        #[arg(long)]
        role: String,
        /// Required for customer_admin: the customer whose accounts it reads.
        #[arg(long)]
        customer_id: Option<uuid::Uuid>,
        /// The token's subject (the principal recorded on changes).
        #[arg(long, default_value = "dev")]
        subject: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 43_200)]
        ttl_seconds: u64,
        /// Sign with this key of BILLING_JWT_SECRETS and name it in the
        /// token's header (`kid`), instead of BILLING_JWT_SECRET.
        #[arg(long)]
        kid: Option<String>,
        #[command(flatten)]
        jwt: billing_server::config::JwtArgs,
    },
    /// Print every balance change on the Kafka topic once, in order
    /// (deduplicated by account and version), until interrupted.
    Tail {
        /// The brokers and how to reach them (TLS, SASL), as for the
        /// publisher; BILLING_KAFKA_BROKERS defaults to 127.0.0.1:9092 here.
        #[command(flatten)]
        kafka: billing_server::config::KafkaSecurityArgs,
        #[arg(
            long,
            env = "BILLING_KAFKA_TOPIC",
            default_value = "billing.account_updated.v1"
        )]
        topic: String,
    },
    /// Print the default rate table as TOML (a starting point for BILLING_RATE_TABLE).
    Rates,
    /// An operator's commands: find accounts, read balances and ledgers, top
    /// up, adjust, freeze (over the gRPC API, with BILLING_TOKEN).
    Admin(billing_server::admin::AdminArgs),
    /// Call one RPC with a JSON request and print the JSON reply.
    Call {
        /// The RPC, e.g. CreateBillingAccount.
        method: String,
        /// The request as JSON (proto3 JSON mapping; field names as in the .proto or camelCase).
        #[arg(default_value = "{}")]
        json: String,
        /// The service's address.
        #[arg(long, env = "BILLING_GRPC_ADDR", default_value = "127.0.0.1:50051")]
        addr: String,
        /// A bearer token to send.
        #[arg(long, env = "BILLING_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// TLS for an https:// address.
        #[command(flatten)]
        tls: billing_server::tls::ClientTlsArgs,
    },
    /// Exit 0 if a running process reports SERVING on gRPC health, else 1
    /// (for container health checks).
    Health {
        /// The process's gRPC address.
        #[arg(long, env = "BILLING_GRPC_ADDR", default_value = "127.0.0.1:50051")]
        addr: String,
        /// The service to ask about: "" (the process), or a role: api,
        /// sweeper, projector, publisher.
        #[arg(long, default_value = "")]
        service: String,
        /// How long to wait for an answer.
        #[arg(long, default_value_t = 3)]
        timeout_seconds: u64,
        /// TLS for an https:// address.
        #[command(flatten)]
        tls: billing_server::tls::ClientTlsArgs,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    billing_server::tls::install_crypto_provider();
    let cli = Cli::parse();
    // Only `serve` exports traces.
    let traces = match &cli.command {
        Cmd::Serve(config) => Some(&config.traces),
        _ => None,
    };
    let telemetry = telemetry::init(cli.log_format, traces)?;
    match cli.command {
        Cmd::Serve(config) => {
            let result = match Application::build(*config).await {
                Ok(app) => app.run(shutdown_signal()).await,
                Err(error) => Err(error),
            };
            telemetry.shutdown().await;
            result
        }
        Cmd::Health {
            addr,
            service,
            timeout_seconds,
            tls,
        } => {
            let timeout = std::time::Duration::from_secs(timeout_seconds);
            billing_server::healthcheck::run(&addr, &tls, &service, timeout).await
        }
        Cmd::Migrate(db) => {
            let store = connect(&db)?;
            let applied = store.migrate().await?;
            tracing::info!(applied, "migrations are up to date");
            Ok(())
        }
        Cmd::Call {
            method,
            json,
            addr,
            token,
            tls,
        } => billing_server::call::run(&addr, &tls, token.as_deref(), &method, &json).await,
        Cmd::Admin(args) => billing_server::admin::run(args).await,
        Cmd::Rebuild(db) => billing_server::rebuild::run(&connect(&db)?).await,
        Cmd::Verify { account, db } => {
            if !billing_server::verify::run(&connect(&db)?, account).await? {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Lag(db) => {
            // The read models' lag at the top (as before), and every
            // feed reader's beside it.
            let store = connect(&db)?;
            let lag = store.feed().feed_lag(billing_store::READ_MODELS).await?;
            let mut readers = serde_json::Map::new();
            for checkpoint in [
                billing_store::READ_MODELS,
                billing_publisher::CHECKPOINT,
                billing_webhooks::CHECKPOINT,
            ] {
                // Every slice counts; each slice's lag beside the total.
                let lag = store.feed().feed_lag(checkpoint).await?;
                let slices: serde_json::Map<_, _> = store
                    .feed().feed_lag_slices(checkpoint)
                    .await?
                    .into_iter()
                    .map(|(slice, lag)| {
                        (
                            slice.index.to_string(),
                            serde_json::json!({"lag_events": lag.events, "lag_seconds": lag.seconds}),
                        )
                    })
                    .collect();
                readers.insert(
                    checkpoint.to_owned(),
                    serde_json::json!({
                        "lag_events": lag.events,
                        "lag_seconds": lag.seconds,
                        "slices": slices,
                    }),
                );
            }
            println!(
                "{}",
                serde_json::json!({
                    "lag_events": lag.events,
                    "lag_seconds": lag.seconds,
                    "readers": readers,
                })
            );
            Ok(())
        }
        Cmd::Token {
            role,
            customer_id,
            subject,
            ttl_seconds,
            kid,
            jwt,
        } => {
            let role = billing_api::auth::Role::parse(&role).ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown role {role}: project_super_admin, service or customer_admin"
                )
            })?;
            if role == billing_api::auth::Role::CustomerAdmin && customer_id.is_none() {
                anyhow::bail!("a customer_admin token needs --customer-id");
            }
            let secret = match &kid {
                Some(kid) => jwt
                    .named_secrets()?
                    .into_iter()
                    .find(|(name, _)| name == kid)
                    .map(|(_, secret)| secret)
                    .ok_or_else(|| anyhow::anyhow!("BILLING_JWT_SECRETS has no key {kid}"))?,
                None => jwt
                    .jwt_secret
                    .as_ref()
                    .map(|secret| secret.expose().to_owned())
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "set BILLING_JWT_SECRET (or its _FILE) to mint a token, or name a key of BILLING_JWT_SECRETS with --kid"
                        )
                    })?,
            };
            let token = billing_api::auth::mint_hs256_with_kid(
                secret.as_bytes(),
                kid.as_deref(),
                &subject,
                role.as_str(),
                customer_id,
                ttl_seconds,
                jwt.jwt_issuer.as_deref(),
                jwt.jwt_audience.as_deref(),
            )
            .map_err(|e| anyhow::anyhow!(e))?;
            println!("{token}");
            Ok(())
        }
        Cmd::Tail { mut kafka, topic } => {
            kafka
                .kafka_brokers
                .get_or_insert_with(|| "127.0.0.1:9092".to_owned());
            let connection = kafka.connection()?.expect("brokers are set just above");
            tokio::select! {
                result = billing_publisher::tail::run(&connection, &topic) => Ok(result?),
                () = shutdown_signal() => Ok(()),
            }
        }
        Cmd::Rates => {
            print!("{}", billing_domain::RateTable::default().to_toml());
            Ok(())
        }
    }
}

fn connect(db: &DatabaseArgs) -> anyhow::Result<billing_store::Store> {
    Ok(billing_store::Store::connect(
        db.url()?.expose(),
        2,
        billing_domain::RateTable::default(),
    )?)
}

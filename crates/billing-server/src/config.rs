//! Configuration, read once at start-up from flags and `BILLING_*`
//! environment variables.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use billing_api::auth::{Authenticator, VerifyingKey};
use billing_domain::RateTable;

/// A secret (a database URL with a password, a JWT secret): it never prints.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A process role. One binary runs any of them, or all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// The gRPC API.
    Api,
    /// Records expired holds and monthly token resets as events.
    Sweeper,
    /// Keeps the read models (accounts, ledger) current from the events.
    Projector,
    /// Publishes every balance change to Kafka (needs BILLING_KAFKA_BROKERS).
    Publisher,
}

/// Where balance changes are published.
#[derive(Clone, Debug, clap::Args)]
pub struct KafkaArgs {
    /// Bootstrap servers (`host:port,...`); required by the publisher role.
    #[arg(long, env = "BILLING_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// The topic of `account_updated` messages.
    #[arg(
        long,
        env = "BILLING_KAFKA_TOPIC",
        default_value = "billing.account_updated.v1"
    )]
    pub kafka_topic: String,
    /// The topic of balance alerts.
    #[arg(
        long,
        env = "BILLING_KAFKA_ALERTS_TOPIC",
        default_value = "billing.balance_alerts.v1"
    )]
    pub kafka_alerts_topic: String,
    /// Where the digests of every hash-chain head are published.
    #[arg(
        long,
        env = "BILLING_KAFKA_DIGESTS_TOPIC",
        default_value = "billing.chain_digests.v1"
    )]
    pub kafka_digests_topic: String,
    /// Partitions of the topics when the publisher creates them.
    #[arg(long, env = "BILLING_KAFKA_PARTITIONS", default_value_t = 3)]
    pub kafka_partitions: i32,
    /// Replicas of the topics when the publisher creates them.
    #[arg(long, env = "BILLING_KAFKA_REPLICATION", default_value_t = 1)]
    pub kafka_replication: i32,
}

impl KafkaArgs {
    /// The publisher's settings; an error without brokers.
    pub fn publisher(&self) -> anyhow::Result<billing_publisher::PublisherConfig> {
        let brokers = self
            .kafka_brokers
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("the publisher role needs BILLING_KAFKA_BROKERS"))?;
        Ok(billing_publisher::PublisherConfig {
            topic: self.kafka_topic.clone(),
            alerts_topic: self.kafka_alerts_topic.clone(),
            digests_topic: self.kafka_digests_topic.clone(),
            partitions: self.kafka_partitions,
            replication_factor: self.kafka_replication,
            ..billing_publisher::PublisherConfig::new(brokers)
        })
    }
}

#[derive(Clone, Debug, clap::Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL, e.g. postgres://user@127.0.0.1:5432/billing.
    #[arg(long, env = "BILLING_DATABASE_URL", hide_env_values = true)]
    pub database_url: Secret,
    /// Connections in the pool.
    #[arg(long, env = "BILLING_DB_POOL_SIZE", default_value_t = 32)]
    pub pool_size: usize,
    /// Group-commit writers for commands, each with a connection of its own
    /// besides the pool. An account's commands always go to the same one.
    #[arg(long, env = "BILLING_COMMAND_WRITERS", default_value_t = billing_store::DEFAULT_WRITERS)]
    pub command_writers: usize,
}

/// The algorithm of a public verification key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PublicKeyAlgorithm {
    Rs256,
    Es256,
}

/// How bearer tokens are verified: a shared secret (HS256) or a public key
/// (RS256 or ES256). Exactly one algorithm is accepted.
#[derive(Clone, Debug, clap::Args)]
pub struct JwtArgs {
    /// Shared secret for HS256 tokens (at least 16 bytes).
    #[arg(long, env = "BILLING_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,
    /// A PEM public key file, for RS256 or ES256 tokens instead of a secret.
    #[arg(long, env = "BILLING_JWT_PUBLIC_KEY", conflicts_with = "jwt_secret")]
    pub jwt_public_key: Option<PathBuf>,
    /// The public key's algorithm.
    #[arg(
        long,
        env = "BILLING_JWT_ALGORITHM",
        value_enum,
        default_value = "rs256"
    )]
    pub jwt_algorithm: PublicKeyAlgorithm,
    /// When set, tokens must carry this `iss`.
    #[arg(long, env = "BILLING_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// When set, tokens must carry this `aud`.
    #[arg(long, env = "BILLING_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
}

impl JwtArgs {
    /// The verifier these settings describe.
    pub fn authenticator(&self) -> anyhow::Result<Authenticator> {
        let key = match (&self.jwt_secret, &self.jwt_public_key) {
            (Some(secret), None) => VerifyingKey::Hs256(secret.expose().as_bytes().to_vec()),
            (None, Some(path)) => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("reading the JWT public key {}", path.display()))?;
                match self.jwt_algorithm {
                    PublicKeyAlgorithm::Rs256 => VerifyingKey::Rs256(pem),
                    PublicKeyAlgorithm::Es256 => VerifyingKey::Es256(pem),
                }
            }
            _ => anyhow::bail!(
                "every RPC is authenticated: set BILLING_JWT_SECRET (HS256) or BILLING_JWT_PUBLIC_KEY (RS256/ES256)"
            ),
        };
        Authenticator::new(
            &key,
            self.jwt_issuer.as_deref(),
            self.jwt_audience.as_deref(),
        )
        .map_err(|e| anyhow::anyhow!("JWT settings: {e}"))
    }
}

#[derive(Clone, Debug, clap::Args)]
pub struct ServeConfig {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub jwt: JwtArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Where the gRPC API, health and reflection listen (default
    /// 127.0.0.1:50051). A process without the api role serves only health
    /// and reflection, and only when this is set.
    #[arg(long, env = "BILLING_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// Where Prometheus metrics are served over HTTP, at /metrics, e.g.
    /// 0.0.0.0:9464. Unset: no metrics endpoint.
    #[arg(long, env = "BILLING_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// How often gRPC health is checked: the database, and the brokers for
    /// the publisher role.
    #[arg(long, env = "BILLING_HEALTH_INTERVAL_MS", default_value_t = 1_000)]
    pub health_interval_ms: u64,
    #[command(flatten)]
    pub traces: crate::telemetry::TraceArgs,
    /// gRPC over TLS (BILLING_TLS_*); plaintext when unset.
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
    /// The roles this process runs.
    #[arg(
        long,
        env = "BILLING_ROLES",
        value_delimiter = ',',
        default_value = "api,sweeper,projector"
    )]
    pub roles: Vec<Role>,
    /// A TOML rate table replacing the default one (see `billing rates`).
    #[arg(long, env = "BILLING_RATE_TABLE")]
    pub rate_table: Option<PathBuf>,
    /// How often the sweeper looks for expired holds and due token resets.
    #[arg(long, env = "BILLING_SWEEP_INTERVAL_MS", default_value_t = 1_000)]
    pub sweep_interval_ms: u64,
    /// How often the sweeper records and logs a digest of every account's
    /// hash-chain head (0: never).
    #[arg(long, env = "BILLING_CHAIN_DIGEST_INTERVAL_S", default_value_t = 3_600)]
    pub chain_digest_interval_s: u64,
    /// Apply pending migrations before serving.
    #[arg(long, env = "BILLING_MIGRATE", default_value_t = false)]
    pub migrate: bool,
}

impl ServeConfig {
    /// A configuration for `database_url` with every default and tokens
    /// signed with `jwt_secret`: what tests use.
    pub fn for_database(database_url: &str, jwt_secret: &str) -> Self {
        Self {
            database: DatabaseArgs {
                database_url: Secret(database_url.to_owned()),
                pool_size: 16,
                command_writers: billing_store::DEFAULT_WRITERS,
            },
            jwt: JwtArgs {
                jwt_secret: Some(Secret(jwt_secret.to_owned())),
                jwt_public_key: None,
                jwt_algorithm: PublicKeyAlgorithm::Rs256,
                jwt_issuer: None,
                jwt_audience: None,
            },
            kafka: KafkaArgs {
                kafka_brokers: None,
                kafka_topic: "billing.account_updated.v1".to_owned(),
                kafka_alerts_topic: "billing.balance_alerts.v1".to_owned(),
                kafka_digests_topic: "billing.chain_digests.v1".to_owned(),
                kafka_partitions: 3,
                kafka_replication: 1,
            },
            grpc_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            metrics_addr: None,
            health_interval_ms: 200,
            traces: crate::telemetry::TraceArgs::default(),
            tls: crate::tls::TlsArgs::default(),
            roles: vec![Role::Api, Role::Sweeper, Role::Projector],
            rate_table: None,
            sweep_interval_ms: 200,
            chain_digest_interval_s: 3_600,
            migrate: true,
        }
    }

    /// Where this process serves gRPC: the configured address, or with the
    /// api role the default one. `None`: no gRPC server (a role-only process
    /// without an address).
    pub fn grpc_listen_addr(&self) -> Option<SocketAddr> {
        self.grpc_addr.or_else(|| {
            self.roles
                .contains(&Role::Api)
                .then_some(SocketAddr::from(([127, 0, 0, 1], 50051)))
        })
    }

    pub fn health_interval(&self) -> Duration {
        Duration::from_millis(self.health_interval_ms.max(10))
    }

    pub fn sweep_interval(&self) -> Duration {
        Duration::from_millis(self.sweep_interval_ms.max(10))
    }

    /// The configured rate table, or the default one.
    pub fn rates(&self) -> anyhow::Result<RateTable> {
        let Some(path) = &self.rate_table else {
            return Ok(RateTable::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the rate table {}", path.display()))?;
        RateTable::from_toml(&text).with_context(|| format!("in the rate table {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeConfig,
    }

    #[test]
    fn by_default_one_process_runs_every_role() {
        let cli = Cli::try_parse_from(["billing", "--database-url", "postgres://x@localhost/db"])
            .unwrap();
        assert_eq!(cli.serve.roles, [Role::Api, Role::Sweeper, Role::Projector]);
        assert_eq!(
            cli.serve
                .grpc_listen_addr()
                .map(|a| a.to_string())
                .as_deref(),
            Some("127.0.0.1:50051")
        );
        assert_eq!(
            cli.serve.metrics_addr, None,
            "metrics are off unless asked for"
        );
        assert_eq!(
            cli.serve.traces.otlp_endpoint, None,
            "no traces leave unless asked"
        );
        assert_eq!(
            ServeConfig::for_database("x", "0123456789abcdef").roles,
            cli.serve.roles,
            "tests run what users run"
        );
    }

    #[test]
    fn roles_can_be_split_across_processes() {
        let cli = Cli::try_parse_from(["billing", "--database-url", "u", "--roles", "projector"])
            .unwrap();
        assert_eq!(cli.serve.roles, [Role::Projector]);
        assert_eq!(
            cli.serve.grpc_listen_addr(),
            None,
            "a role-only process serves health only where told"
        );
        assert!(
            Cli::try_parse_from(["billing", "--database-url", "u", "--roles", "nope"]).is_err()
        );
    }

    #[test]
    fn the_database_url_never_prints() {
        let url: Secret = "postgres://user:secret@host/db".parse().unwrap();
        assert!(!format!("{url:?}").contains("secret"));
    }
}

//! Configuration, read once at start-up from flags and `BILLING_*`
//! environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use billing_api::auth::{Authenticator, JwksConfig, VerifyingKey};
use billing_domain::RateTable;

pub use crate::secret::Secret;

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
    /// Delivers balance changes to customers' webhooks.
    Dispatcher,
}

/// The webhook dispatcher's settings (`BILLING_WEBHOOK_*`).
#[derive(Clone, Debug, clap::Args)]
pub struct WebhookArgs {
    /// Send to plain `http://` endpoints too (local development; `https`
    /// only otherwise).
    #[arg(long, env = "BILLING_WEBHOOK_ALLOW_HTTP", default_value_t = false)]
    pub webhook_allow_http: bool,
    /// Send to loopback, private, link-local, multicast and cloud-metadata
    /// addresses too (local development; refused otherwise).
    #[arg(long, env = "BILLING_WEBHOOK_ALLOW_PRIVATE", default_value_t = false)]
    pub webhook_allow_private: bool,
    /// How long an attempt may take, connecting included.
    #[arg(long, env = "BILLING_WEBHOOK_TIMEOUT_MS", default_value_t = 10_000)]
    pub webhook_timeout_ms: u64,
    /// The delay before each attempt, the first's from the change (units
    /// ms, s, m, h): the Standard Webhooks schedule by default.
    #[arg(
        long,
        env = "BILLING_WEBHOOK_RETRY_SCHEDULE",
        default_value = billing_webhooks::schedule::DEFAULT_SCHEDULE,
        value_parser = clap::value_parser!(billing_webhooks::RetrySchedule)
    )]
    pub webhook_retry_schedule: billing_webhooks::RetrySchedule,
    /// A webhook whose every attempt has failed for this long is disabled.
    #[arg(long, env = "BILLING_WEBHOOK_DISABLE_AFTER_S", default_value_t = 5 * 86_400)]
    pub webhook_disable_after_s: u64,
    /// Attempts in flight in one dispatcher.
    #[arg(long, env = "BILLING_WEBHOOK_MAX_IN_FLIGHT", default_value_t = 512)]
    pub webhook_max_in_flight: usize,
    /// Attempts in flight to one webhook, so that one slow endpoint takes
    /// no more.
    #[arg(long, env = "BILLING_WEBHOOK_PER_ENDPOINT", default_value_t = 32)]
    pub webhook_per_endpoint: usize,
}

impl Default for WebhookArgs {
    fn default() -> Self {
        Self {
            webhook_allow_http: false,
            webhook_allow_private: false,
            webhook_timeout_ms: 10_000,
            webhook_retry_schedule: billing_webhooks::RetrySchedule::default(),
            webhook_disable_after_s: 5 * 86_400,
            webhook_max_in_flight: 512,
            webhook_per_endpoint: 32,
        }
    }
}

impl WebhookArgs {
    pub fn dispatcher(&self) -> billing_webhooks::DispatcherConfig {
        let defaults = billing_webhooks::DispatcherConfig::default();
        let timeout = Duration::from_millis(self.webhook_timeout_ms.max(1));
        billing_webhooks::DispatcherConfig {
            policy: billing_webhooks::SendPolicy {
                allow_http: self.webhook_allow_http,
                allow_private: self.webhook_allow_private,
                timeout,
            },
            dispatch: billing_webhooks::DispatchConfig {
                schedule: self.webhook_retry_schedule.clone(),
                disable_after: Duration::from_secs(self.webhook_disable_after_s),
                max_in_flight: self.webhook_max_in_flight.max(1),
                per_webhook: self.webhook_per_endpoint.max(1),
                timeout,
                ..defaults.dispatch
            },
        }
    }
}

/// How the Kafka clients (the publisher, `billing tail`) reach the brokers:
/// where they are, and TLS and SASL when the cluster asks for them.
#[derive(Clone, Debug, clap::Args)]
pub struct KafkaSecurityArgs {
    /// Bootstrap servers (`host:port,...`); required by the publisher role.
    #[arg(long, visible_alias = "brokers", env = "BILLING_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// plaintext (the default), ssl, sasl_plaintext or sasl_ssl (managed
    /// Kafka: Confluent Cloud, MSK, Aiven, Redpanda Cloud).
    #[arg(
        long,
        env = "BILLING_KAFKA_SECURITY_PROTOCOL",
        default_value = "plaintext"
    )]
    pub kafka_security_protocol: String,
    /// PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, with a sasl_* protocol.
    #[arg(
        long,
        env = "BILLING_KAFKA_SASL_MECHANISM",
        default_value = "SCRAM-SHA-512"
    )]
    pub kafka_sasl_mechanism: String,
    /// The SASL user name, with a sasl_* protocol.
    #[arg(long, env = "BILLING_KAFKA_SASL_USERNAME")]
    pub kafka_sasl_username: Option<String>,
    /// The SASL password (or BILLING_KAFKA_SASL_PASSWORD_FILE).
    #[arg(long, env = "BILLING_KAFKA_SASL_PASSWORD", hide_env_values = true)]
    pub kafka_sasl_password: Option<Secret>,
    /// A file holding the SASL password (a trailing newline is ignored).
    #[arg(
        long,
        env = "BILLING_KAFKA_SASL_PASSWORD_FILE",
        conflicts_with = "kafka_sasl_password"
    )]
    pub kafka_sasl_password_file: Option<PathBuf>,
    /// A PEM file of the CAs that sign the brokers' certificates (default:
    /// the system's trust store), with ssl or sasl_ssl.
    #[arg(long, env = "BILLING_KAFKA_SSL_CA_LOCATION")]
    pub kafka_ssl_ca_location: Option<String>,
    /// Any other librdkafka properties, `key=value,...` (a comma inside a
    /// value as `\,`), applied last. Their values never print.
    #[arg(long, env = "BILLING_KAFKA_CONFIG", hide_env_values = true)]
    pub kafka_config: Option<Secret>,
}

impl KafkaSecurityArgs {
    /// The connection these settings describe; `None` without brokers, an
    /// error when the settings cannot work together.
    pub fn connection(&self) -> anyhow::Result<Option<billing_publisher::KafkaConnection>> {
        use billing_publisher::connection::{SaslCredentials, parse_properties};
        let Some(brokers) = self.kafka_brokers.as_deref() else {
            return Ok(None);
        };
        let security_protocol = self.kafka_security_protocol.parse()?;
        let password = Secret::resolve(
            self.kafka_sasl_password.as_ref(),
            self.kafka_sasl_password_file.as_deref(),
        )?;
        let sasl = match (&self.kafka_sasl_username, password) {
            (Some(username), Some(password)) => Some(SaslCredentials {
                mechanism: self.kafka_sasl_mechanism.parse()?,
                username: username.clone(),
                password: password.expose().to_owned(),
            }),
            (None, None) => None,
            (Some(_), None) => anyhow::bail!(
                "BILLING_KAFKA_SASL_USERNAME is set without BILLING_KAFKA_SASL_PASSWORD (or its _FILE)"
            ),
            (None, Some(_)) => {
                anyhow::bail!("a SASL password is set without BILLING_KAFKA_SASL_USERNAME")
            }
        };
        let extra = match &self.kafka_config {
            Some(text) => parse_properties(text.expose())?,
            None => Vec::new(),
        };
        let connection = billing_publisher::KafkaConnection {
            brokers: brokers.to_owned(),
            security_protocol,
            sasl,
            ssl_ca_location: self.kafka_ssl_ca_location.clone(),
            extra,
        };
        connection.validate()?;
        Ok(Some(connection))
    }

    /// Plaintext to `brokers` (or none): what tests start from.
    pub fn plaintext(brokers: Option<String>) -> Self {
        Self {
            kafka_brokers: brokers,
            kafka_security_protocol: "plaintext".to_owned(),
            kafka_sasl_mechanism: "SCRAM-SHA-512".to_owned(),
            kafka_sasl_username: None,
            kafka_sasl_password: None,
            kafka_sasl_password_file: None,
            kafka_ssl_ca_location: None,
            kafka_config: None,
        }
    }
}

/// Where balance changes are published.
#[derive(Clone, Debug, clap::Args)]
pub struct KafkaArgs {
    #[command(flatten)]
    pub security: KafkaSecurityArgs,
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
        let connection = self
            .security
            .connection()?
            .ok_or_else(|| anyhow::anyhow!("the publisher role needs BILLING_KAFKA_BROKERS"))?;
        Ok(billing_publisher::PublisherConfig {
            topic: self.kafka_topic.clone(),
            alerts_topic: self.kafka_alerts_topic.clone(),
            digests_topic: self.kafka_digests_topic.clone(),
            partitions: self.kafka_partitions,
            replication_factor: self.kafka_replication,
            ..billing_publisher::PublisherConfig::new(connection)
        })
    }
}

#[derive(Clone, Debug, clap::Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL, as libpq reads it, e.g.
    /// postgres://user:password@db.example:5432/billing?sslmode=verify-full&sslrootcert=/etc/billing/db-ca.pem
    #[arg(
        long,
        env = "BILLING_DATABASE_URL",
        hide_env_values = true,
        required_unless_present = "database_url_file"
    )]
    pub database_url: Option<Secret>,
    /// A file holding the PostgreSQL URL (a trailing newline is ignored).
    #[arg(
        long,
        env = "BILLING_DATABASE_URL_FILE",
        conflicts_with = "database_url"
    )]
    pub database_url_file: Option<PathBuf>,
    /// Connections in the pool.
    #[arg(long, env = "BILLING_DB_POOL_SIZE", default_value_t = 32)]
    pub pool_size: usize,
    /// Group-commit writers for commands, each with a connection of its own
    /// besides the pool. An account's commands always go to the same one.
    #[arg(long, env = "BILLING_COMMAND_WRITERS", default_value_t = billing_store::DEFAULT_WRITERS)]
    pub command_writers: usize,
    /// Every how many versions an account's event keeps the whole account
    /// view after it (its first event always does); the others' views are
    /// folded from the last kept one when read. 1 keeps it on every event,
    /// as releases before this setting did: set it to 1 while processes of
    /// such a release still run (README, "Storage per event").
    #[arg(
        long,
        env = "BILLING_VIEW_SNAPSHOT_EVERY",
        default_value_t = billing_store::DEFAULT_VIEW_EVERY,
        value_parser = clap::value_parser!(i64).range(1..=billing_store::MAX_VIEW_EVERY)
    )]
    pub view_snapshot_every: i64,
    /// Accounts whose last view the feed's readers (publisher, webhook
    /// dispatcher) remember, about 1 KB each: a reader folds each event
    /// onto it instead of reading the last kept view back.
    #[arg(long, env = "BILLING_VIEW_CACHE_ACCOUNTS", default_value_t = billing_store::DEFAULT_VIEW_CACHE)]
    pub view_cache_accounts: usize,
    /// Accounts each group-commit writer keeps in memory (about 2 KB each):
    /// a command on one of them skips reading and locking it. Beyond it
    /// the least recently used goes, and its next command takes the long
    /// way.
    #[arg(
        long,
        env = "BILLING_WRITER_CACHE_ACCOUNTS",
        default_value_t = billing_store::DEFAULT_WRITER_CACHE,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    pub writer_cache_accounts: usize,
}

impl DatabaseArgs {
    /// The URL, given directly or read from its file.
    pub fn url(&self) -> anyhow::Result<Secret> {
        Secret::resolve(
            self.database_url.as_ref(),
            self.database_url_file.as_deref(),
        )?
        .ok_or_else(|| anyhow::anyhow!("set BILLING_DATABASE_URL or BILLING_DATABASE_URL_FILE"))
    }
}

/// The algorithm of a public verification key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PublicKeyAlgorithm {
    Rs256,
    Es256,
}

/// How bearer tokens are verified. Every key pins its one algorithm:
/// - a shared secret (HS256), or a public key (RS256, ES256): the key of
///   tokens that name no key id (`kid`) — with only this key, the way it
///   always was;
/// - keys by id, for rotation by hand: PEM public keys and HS256 secrets;
/// - an identity provider's JWKS, fetched at start and refreshed.
///
/// A token naming a `kid` is verified with that key only.
#[derive(Clone, Debug, clap::Args)]
pub struct JwtArgs {
    /// BILLING_JWT_SECRET, or the contents of BILLING_JWT_SECRET_FILE.
    #[command(flatten)]
    pub jwt_secret: Option<JwtSecret>,
    /// A PEM public key file, for RS256 or ES256 tokens instead of a secret.
    #[arg(
        long,
        env = "BILLING_JWT_PUBLIC_KEY",
        conflicts_with_all = ["jwt_secret", "jwt_secret_file"]
    )]
    pub jwt_public_key: Option<PathBuf>,
    /// The public key's algorithm.
    #[arg(
        long,
        env = "BILLING_JWT_ALGORITHM",
        value_enum,
        default_value = "rs256"
    )]
    pub jwt_algorithm: PublicKeyAlgorithm,
    /// Public keys by key id, `kid=path.pem,kid2=path2.pem`: a token whose
    /// header names `kid` is verified with that key only. The algorithm is
    /// the key's: RSA is RS256, EC P-256 ES256, Ed25519 EdDSA.
    #[arg(long, env = "BILLING_JWT_PUBLIC_KEYS", value_delimiter = ',')]
    pub jwt_public_keys: Vec<String>,
    /// HS256 secrets by key id, `kid=secret,kid2=secret2` (each at least 16
    /// bytes, without commas).
    #[arg(long, env = "BILLING_JWT_SECRETS", hide_env_values = true)]
    pub jwt_secrets: Option<Secret>,
    /// The URL of an identity provider's JWKS document (its jwks_uri):
    /// https, or http to a loopback address.
    #[arg(long, env = "BILLING_JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,
    /// Allow an http JWKS URL to a host that is not loopback (an identity
    /// provider inside the cluster).
    #[arg(long, env = "BILLING_JWT_JWKS_ALLOW_HTTP", default_value_t = false)]
    pub jwt_jwks_allow_http: bool,
    /// A PEM file of CA certificates trusted for the JWKS URL besides the
    /// system's.
    #[arg(long, env = "BILLING_JWT_JWKS_CA")]
    pub jwt_jwks_ca: Option<PathBuf>,
    /// How often the JWKS is fetched again, in seconds.
    #[arg(long, env = "BILLING_JWT_JWKS_REFRESH_S", default_value_t = 300)]
    pub jwt_jwks_refresh_s: u64,
    /// A token naming an unknown key id fetches the JWKS at most once per
    /// this many seconds (and after a failed refresh, it is retried as
    /// often).
    #[arg(long, env = "BILLING_JWT_JWKS_MIN_REFRESH_S", default_value_t = 30)]
    pub jwt_jwks_min_refresh_s: u64,
    /// When set, tokens must carry this `iss`.
    #[arg(long, env = "BILLING_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// When set, tokens must carry this `aud`.
    #[arg(long, env = "BILLING_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
}

impl JwtArgs {
    /// The HS256 secrets by key id (`BILLING_JWT_SECRETS`, `kid=secret,...`).
    /// An error never shows an entry: it holds a secret.
    pub fn named_secrets(&self) -> anyhow::Result<Vec<(String, String)>> {
        let Some(secrets) = &self.jwt_secrets else {
            return Ok(Vec::new());
        };
        let entries = secrets.expose().split(',').filter(|e| !e.trim().is_empty());
        entries
            .enumerate()
            .map(|(n, entry)| {
                let (kid, secret) = entry.split_once('=').ok_or_else(|| {
                    anyhow::anyhow!("BILLING_JWT_SECRETS: entry {} is not kid=secret", n + 1)
                })?;
                Ok((kid.trim().to_owned(), secret.to_owned()))
            })
            .collect()
    }

    /// Only an HS256 secret, as tests use.
    pub fn secret(secret: &str) -> Self {
        Self {
            jwt_secret: Some(JwtSecret(Secret::new(secret))),
            jwt_public_key: None,
            jwt_algorithm: PublicKeyAlgorithm::Rs256,
            jwt_public_keys: Vec::new(),
            jwt_secrets: None,
            jwt_jwks_url: None,
            jwt_jwks_allow_http: false,
            jwt_jwks_ca: None,
            jwt_jwks_refresh_s: 300,
            jwt_jwks_min_refresh_s: 30,
            jwt_issuer: None,
            jwt_audience: None,
        }
    }

    /// The verifier these settings describe. With a JWKS it fetches the
    /// first keys: start-up fails when there is no key at all after 15 s
    /// of trying (no configured key, and the identity provider unreachable).
    pub async fn authenticator(&self) -> anyhow::Result<Authenticator> {
        let mut builder =
            Authenticator::builder(self.jwt_issuer.as_deref(), self.jwt_audience.as_deref());
        if let Some(secret) = &self.jwt_secret {
            builder = builder.key(VerifyingKey::Hs256(secret.expose().as_bytes().to_vec()));
        }
        if let Some(path) = &self.jwt_public_key {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading the JWT public key {}", path.display()))?;
            builder = builder.key(match self.jwt_algorithm {
                PublicKeyAlgorithm::Rs256 => VerifyingKey::Rs256(pem),
                PublicKeyAlgorithm::Es256 => VerifyingKey::Es256(pem),
            });
        }
        for entry in self.jwt_public_keys.iter().filter(|e| !e.trim().is_empty()) {
            let (kid, path) = entry.split_once('=').ok_or_else(|| {
                anyhow::anyhow!("BILLING_JWT_PUBLIC_KEYS: {entry:?} is not kid=path")
            })?;
            let pem = std::fs::read(path.trim())
                .with_context(|| format!("reading the JWT public key {kid} ({path})"))?;
            let key = VerifyingKey::from_pem(&pem)
                .map_err(|e| anyhow::anyhow!("the JWT public key {kid} ({path}): {e}"))?;
            builder = builder.named_key(kid.trim(), key);
        }
        for (kid, secret) in self.named_secrets()? {
            builder = builder.named_key(&kid, VerifyingKey::Hs256(secret.into_bytes()));
        }
        if let Some(url) = &self.jwt_jwks_url {
            let ca_pem =
                match &self.jwt_jwks_ca {
                    Some(path) => Some(std::fs::read(path).with_context(|| {
                        format!("reading BILLING_JWT_JWKS_CA {}", path.display())
                    })?),
                    None => None,
                };
            builder = builder.jwks(JwksConfig {
                allow_http: self.jwt_jwks_allow_http,
                ca_pem,
                refresh: Duration::from_secs(self.jwt_jwks_refresh_s.max(1)),
                min_refresh: Duration::from_secs(self.jwt_jwks_min_refresh_s.max(1)),
                ..JwksConfig::new(url)
            });
        }
        if builder.is_empty() {
            anyhow::bail!(
                "every RPC is authenticated: set BILLING_JWT_SECRET (or BILLING_JWT_SECRET_FILE) for HS256, \
                 BILLING_JWT_PUBLIC_KEY (RS256/ES256), BILLING_JWT_PUBLIC_KEYS or BILLING_JWT_SECRETS \
                 (keys by kid), or BILLING_JWT_JWKS_URL (an identity provider)"
            );
        }
        builder
            .start()
            .await
            .map_err(|e| anyhow::anyhow!("JWT settings: {e}"))
    }
}

/// The HS256 secret of tokens without a key id: BILLING_JWT_SECRET, or the
/// contents of BILLING_JWT_SECRET_FILE (one trailing newline ignored). The
/// file is read when the flags are parsed, so everything that reads
/// `jwt_secret` (`billing token` too) sees it. It never prints.
#[derive(Clone, Debug)]
pub struct JwtSecret(Secret);

impl JwtSecret {
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

/// The group of the two ways to give the secret.
const JWT_SECRET_SOURCE: &str = "jwt_secret_source";

impl clap::FromArgMatches for JwtSecret {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let file = matches.get_one::<PathBuf>("jwt_secret_file");
        Secret::resolve(
            matches.get_one::<Secret>("jwt_secret"),
            file.map(PathBuf::as_path),
        )
        .map_err(|e| clap::Error::raw(clap::error::ErrorKind::Io, format!("{e:#}\n")))?
        .map(Self)
        .ok_or_else(|| {
            clap::Error::raw(
                clap::error::ErrorKind::MissingRequiredArgument,
                "set BILLING_JWT_SECRET or BILLING_JWT_SECRET_FILE\n",
            )
        })
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        if matches.contains_id(JWT_SECRET_SOURCE) {
            *self = Self::from_arg_matches(matches)?;
        }
        Ok(())
    }
}

impl clap::Args for JwtSecret {
    fn group_id() -> Option<clap::Id> {
        Some(clap::Id::from(JWT_SECRET_SOURCE))
    }

    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.arg(
            clap::Arg::new("jwt_secret")
                .long("jwt-secret")
                .value_name("JWT_SECRET")
                .env("BILLING_JWT_SECRET")
                .hide_env_values(true)
                .value_parser(clap::value_parser!(Secret))
                .help("Shared secret for HS256 tokens (at least 16 bytes)"),
        )
        .arg(
            clap::Arg::new("jwt_secret_file")
                .long("jwt-secret-file")
                .value_name("JWT_SECRET_FILE")
                .env("BILLING_JWT_SECRET_FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .conflicts_with("jwt_secret")
                .help("A file holding the HS256 secret (one trailing newline is ignored)"),
        )
        .group(
            clap::ArgGroup::new(JWT_SECRET_SOURCE)
                .multiple(true)
                .args(["jwt_secret", "jwt_secret_file"]),
        )
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
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
    #[command(flatten)]
    pub webhooks: WebhookArgs,
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
    /// How long an idempotency record is kept (the retry window of every
    /// keyed request): the sweeper removes older ones. 0: forever; else at
    /// least an hour.
    #[arg(
        long,
        env = "BILLING_IDEMPOTENCY_RETENTION_S",
        default_value_t = 604_800,
        value_parser = retention_window
    )]
    pub idempotency_retention_s: u64,
    /// How long a resolved (committed, released or expired) reservation is
    /// kept after its resolution: a repeated Commit or Release inside it gets
    /// the first answer. 0: forever; else at least an hour.
    #[arg(
        long,
        env = "BILLING_RESERVATION_RETENTION_S",
        default_value_t = 604_800,
        value_parser = retention_window
    )]
    pub reservation_retention_s: u64,
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
                database_url: Some(Secret::new(database_url)),
                database_url_file: None,
                pool_size: 16,
                command_writers: billing_store::DEFAULT_WRITERS,
                view_snapshot_every: billing_store::DEFAULT_VIEW_EVERY,
                view_cache_accounts: billing_store::DEFAULT_VIEW_CACHE,
                writer_cache_accounts: billing_store::DEFAULT_WRITER_CACHE,
            },
            jwt: JwtArgs::secret(jwt_secret),
            kafka: KafkaArgs {
                security: KafkaSecurityArgs::plaintext(None),
                kafka_topic: "billing.account_updated.v1".to_owned(),
                kafka_alerts_topic: "billing.balance_alerts.v1".to_owned(),
                kafka_digests_topic: "billing.chain_digests.v1".to_owned(),
                kafka_partitions: 3,
                kafka_replication: 1,
            },
            webhooks: WebhookArgs::default(),
            grpc_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            metrics_addr: None,
            health_interval_ms: 200,
            traces: crate::telemetry::TraceArgs::default(),
            tls: crate::tls::TlsArgs::default(),
            roles: vec![Role::Api, Role::Sweeper, Role::Projector],
            rate_table: None,
            sweep_interval_ms: 200,
            chain_digest_interval_s: 3_600,
            idempotency_retention_s: 604_800,
            reservation_retention_s: 604_800,
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

    /// The retention windows (idempotency records, resolved reservations);
    /// `None` keeps them forever.
    pub fn retention(&self) -> crate::sweeper::Retention {
        let window = |s: u64| (s > 0).then(|| Duration::from_secs(s));
        crate::sweeper::Retention {
            idempotency: window(self.idempotency_retention_s),
            reservations: window(self.reservation_retention_s),
        }
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

/// The shortest retention window: shorter ones would forget requests that
/// ordinary retries repeat.
pub const MIN_RETENTION_S: u64 = 3_600;

/// A retention window in seconds: 0 (forever) or at least an hour.
fn retention_window(text: &str) -> Result<u64, String> {
    let seconds: u64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number of seconds"))?;
    if seconds != 0 && seconds < MIN_RETENTION_S {
        return Err(format!(
            "{seconds} s is shorter than the shortest window, {MIN_RETENTION_S} s (0 keeps forever)"
        ));
    }
    Ok(seconds)
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
    fn billing_tail_still_takes_brokers_as_it_always_did() {
        #[derive(Debug, Parser)]
        struct Tail {
            #[command(flatten)]
            kafka: KafkaSecurityArgs,
        }
        let tail = Tail::try_parse_from(["tail", "--brokers", "b:9092"]).unwrap();
        assert_eq!(tail.kafka.kafka_brokers.as_deref(), Some("b:9092"));
        let connection = tail.kafka.connection().unwrap().unwrap();
        assert_eq!(
            connection.security_protocol,
            billing_publisher::connection::SecurityProtocol::Plaintext,
            "plaintext unless told"
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
    fn retention_keeps_a_week_by_default_forever_at_zero_and_never_less_than_an_hour() {
        let cli = Cli::try_parse_from(["billing", "--database-url", "u"]).unwrap();
        let week = Some(Duration::from_secs(7 * 86_400));
        assert_eq!(cli.serve.retention().idempotency, week);
        assert_eq!(cli.serve.retention().reservations, week);
        let forever = Cli::try_parse_from([
            "billing",
            "--database-url",
            "u",
            "--idempotency-retention-s",
            "0",
            "--reservation-retention-s",
            "3600",
        ])
        .unwrap();
        assert_eq!(forever.serve.retention().idempotency, None);
        assert_eq!(
            forever.serve.retention().reservations,
            Some(Duration::from_secs(3_600))
        );
        for short in ["1", "3599"] {
            assert!(
                Cli::try_parse_from([
                    "billing",
                    "--database-url",
                    "u",
                    "--idempotency-retention-s",
                    short
                ])
                .is_err()
            );
        }
        assert_eq!(
            ServeConfig::for_database("x", "0123456789abcdef").retention(),
            cli.serve.retention(),
            "tests run what users run"
        );
    }
}

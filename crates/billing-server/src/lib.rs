//! The billing service process: configuration, telemetry, and the roles one
//! binary runs (the gRPC API, the sweeper, the projector, the publisher). `main.rs` only parses the
//! command line and calls in here, so tests run the real server.
//!
//! - [`Application`]: binds the listener (port 0 in tests) and runs roles
//!   until a shutdown future resolves.
//! - [`config`]: flags and `BILLING_*` environment variables.
//! - [`telemetry`]: logs, and traces over OTLP.
//! - [`metrics`]: Prometheus metrics at `/metrics` on a port of their own.
//! - [`health`]: gRPC health per role, from the database and the brokers;
//!   [`healthcheck`] is `billing health`, its client.
//! - [`sweeper`]: the sweeper role.
//! - [`projector`]: the projector role (read models); the publisher role
//!   lives in `billing-publisher`.
//! - [`call`]: `billing call`, a JSON client for trying the API.
//! - [`admin`]: `billing admin`, an operator's commands over the API.
//! - [`tls`]: gRPC over TLS, the server's reloading certificate and the
//!   clients' `https://` addresses.
//! - [`rebuild`]: `billing rebuild`, with progress.
//! - [`verify`]: `billing verify`, the hash chains checked; [`digest`]: the
//!   sweeper's periodic digest of their heads.

#![forbid(unsafe_code)]

pub mod admin;
pub mod call;
pub mod config;
pub mod digest;
pub mod health;
pub mod healthcheck;
pub mod metrics;
pub mod projector;
pub mod rebuild;
pub mod secret;
pub mod sweeper;
pub mod telemetry;
pub mod tls;
pub mod verify;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use billing_api::BillingApi;
use billing_api::auth::{AuthLayer, Authenticator};
use billing_api::telemetry::TelemetryLayer;
use billing_store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tower::Layer as _;

pub use config::{Role, ServeConfig};

/// A configured, bound service, ready to run.
#[derive(Debug)]
pub struct Application {
    /// The gRPC socket (the API with its role, health and reflection in any
    /// case), bound in `build`, so its port is known before `run`.
    grpc: Option<TcpListener>,
    /// TLS on the gRPC socket, when configured; plaintext otherwise.
    tls: Option<tls::ServerTls>,
    /// The API's token verifier, when this process runs the API.
    authenticator: Option<Authenticator>,
    /// The metrics port and the recorder it renders, when metrics are on.
    metrics: Option<(TcpListener, metrics_exporter_prometheus::PrometheusHandle)>,
    /// The publisher's settings, when this process runs it.
    publisher: Option<billing_publisher::PublisherConfig>,
    store: Store,
    config: ServeConfig,
}

impl Application {
    /// Connects the store, migrates when configured, and binds the gRPC and
    /// metrics ports.
    pub async fn build(config: ServeConfig) -> anyhow::Result<Self> {
        // Unreadable certificates fail the start, before anything else.
        let tls = tls::ServerTls::load(&config.tls).context("the gRPC TLS settings")?;
        let metrics = match config.metrics_addr {
            Some(addr) => Some((metrics::bind(addr).await?, metrics::install()?)),
            None => None,
        };
        let store = Store::connect(
            config.database.url()?.expose(),
            config.database.pool_size,
            config.rates()?,
        )?
        .with_writers(config.database.command_writers)
        .with_view_snapshots(config.database.view_snapshot_every)
        .with_view_cache(config.database.view_cache_accounts)
        .with_writer_cache(config.database.writer_cache_accounts);
        if config.migrate {
            let applied = store.migrate().await.context("applying migrations")?;
            tracing::info!(applied, "migrations are up to date");
        }
        let publisher = if config.roles.contains(&Role::Publisher) {
            Some(config.kafka.publisher()?)
        } else {
            None
        };
        let authenticator = if config.roles.contains(&Role::Api) {
            Some(config.jwt.authenticator().await?)
        } else {
            None
        };
        let grpc = match config.grpc_listen_addr() {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding {addr}"))?,
            ),
            None => None,
        };
        Ok(Self {
            grpc,
            tls,
            authenticator,
            metrics,
            publisher,
            store,
            config,
        })
    }

    /// Where gRPC is served (the API, health), when this process serves it.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Where `/metrics` is served, when metrics are on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Runs the configured roles until `shutdown` resolves, then stops them
    /// gracefully (in-flight RPCs finish).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        if let Some((listener, handle)) = self.metrics {
            let scrape = metrics::Scrape::new(handle, self.store.clone(), &self.config.roles);
            tasks.spawn(metrics::serve(listener, Arc::new(scrape), stop_rx.clone()));
        }
        if self.config.roles.contains(&Role::Sweeper) {
            tracing::info!(
                every_ms = self.config.sweep_interval().as_millis() as u64,
                "started the sweeper: expires holds and tokens when due"
            );
            tasks.spawn(sweeper::run(
                self.store.clone(),
                self.config.sweep_interval(),
                stop_rx.clone(),
            ));
            let retention = self.config.retention();
            tracing::info!(
                idempotency_s = retention.idempotency.map(|w| w.as_secs()),
                reservations_s = retention.reservations.map(|w| w.as_secs()),
                "started retention: removes idempotency records and resolved reservations past their windows"
            );
            tasks.spawn(sweeper::retain(
                self.store.clone(),
                retention,
                stop_rx.clone(),
            ));
            let every = self.config.chain_digest_interval_s;
            if every > 0 {
                tasks.spawn(digest::run(
                    self.store.clone(),
                    std::time::Duration::from_secs(every),
                    stop_rx.clone(),
                ));
            }
        }
        if self.config.roles.contains(&Role::Projector) {
            tracing::info!("started the projector: keeps balances and the ledger current");
            tasks.spawn(projector::run(self.store.clone(), stop_rx.clone()));
        }
        if self.config.roles.contains(&Role::Dispatcher) {
            let webhooks = &self.config.webhooks;
            tracing::info!(
                allow_http = webhooks.webhook_allow_http,
                allow_private = webhooks.webhook_allow_private,
                "started the dispatcher: delivers balance changes to customers' webhooks"
            );
            if webhooks.webhook_allow_http || webhooks.webhook_allow_private {
                tracing::warn!(
                    "webhooks may go to plain http and private addresses: for local development only"
                );
            }
            let store = self.store.clone();
            let config = webhooks.dispatcher();
            let stop = stop_rx.clone();
            tasks.spawn(async move {
                if let Err(error) = billing_webhooks::run(store, config, stop).await {
                    tracing::error!(%error, "the dispatcher cannot start");
                }
            });
        }
        let brokers = self.publisher.as_ref().map(|p| p.connection.clone());
        if let Some(publisher) = self.publisher {
            tracing::info!(
                brokers = %publisher.connection.brokers,
                security = publisher.connection.security_protocol.as_str(),
                topic = %publisher.topic,
                "started the publisher: sends every balance change to Kafka"
            );
            tasks.spawn(billing_publisher::run(
                self.store.clone(),
                publisher,
                stop_rx.clone(),
            ));
        }
        let serve = match self.grpc {
            Some(listener) => {
                let monitor = health::Monitor {
                    store: self.store.clone(),
                    roles: self.config.roles.clone(),
                    brokers,
                    interval: self.config.health_interval(),
                };
                Some(serve_grpc(
                    listener,
                    self.tls,
                    self.authenticator,
                    monitor,
                    self.store.clone(),
                    stop_rx.clone(),
                ))
            }
            None => None,
        };
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down");
            let _ = stop_tx.send(true);
        });
        let result = match serve {
            Some(serve) => serve.await,
            None => {
                let mut stop = stop_rx.clone();
                let _ = stop.wait_for(|stopped| *stopped).await;
                Ok(())
            }
        };
        while tasks.join_next().await.is_some() {}
        result
    }
}

/// Serves gRPC health (kept current by `monitor`) and reflection, and with
/// an authenticator (the api role) the billing service behind its telemetry
/// and auth layers.
async fn serve_grpc(
    listener: TcpListener,
    tls: Option<tls::ServerTls>,
    authenticator: Option<Authenticator>,
    monitor: health::Monitor,
    store: Store,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    // The first check before the first call is answered.
    let _monitor = monitor.start(reporter, stop.clone()).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(billing_proto::v1::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let addr = listener.local_addr()?;
    let api = authenticator.map(|authenticator| {
        // Every call is traced and measured, refused ones too; health and
        // reflection stay open, every billing RPC is authenticated.
        TelemetryLayer.layer(
            AuthLayer::new(authenticator).layer(
                BillingApi::new(store)
                    .with_shutdown(stop.clone())
                    .into_server(),
            ),
        )
    });
    let over = match &tls {
        None => "plaintext",
        Some(tls) if tls.mutual() => "TLS with client certificates",
        Some(_) => "TLS",
    };
    match &api {
        Some(_) => tracing::info!(%addr, over, "started the API: gRPC on {addr}"),
        None => tracing::info!(%addr, over, "gRPC health on {addr}"),
    }
    let router = billing_api::edge::transport()
        .add_service(health_service)
        .add_service(reflection)
        .add_optional_service(api);
    let shutdown = async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    match tls {
        None => {
            router
                .serve_with_incoming_shutdown(incoming(listener), shutdown)
                .await
        }
        // Handshakes happen off the accept loop; tonic gets finished streams.
        Some(tls) => {
            router
                .serve_with_incoming_shutdown(tls.incoming(listener), shutdown)
                .await
        }
    }
    .context("serving gRPC")
}

/// The listener's connections with Nagle's algorithm off. Served from our
/// own listener, tonic applies none of its socket settings: left on, Nagle
/// held a small response back until the previous one on the connection was
/// acknowledged, and with many calls sharing an HTTP/2 connection that added
/// up to a delayed ACK's 40 ms to a call.
fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt as _;
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

/// Resolves on Ctrl-C or SIGTERM: the one place signals are handled.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

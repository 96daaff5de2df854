//! The billing service process: configuration, telemetry, and the roles one
//! binary runs (the gRPC API, the sweeper, the projector, the publisher). `main.rs` only parses the
//! command line and calls in here, so tests run the real server.
//!
//! - [`Application`]: binds the listener (port 0 in tests) and runs roles
//!   until a shutdown future resolves.
//! - [`config`]: flags and `BILLING_*` environment variables.
//! - [`telemetry`]: log output.
//! - [`sweeper`]: the sweeper role.
//! - [`projector`]: the projector role (read models); the publisher role
//!   lives in `billing-publisher`.
//! - [`call`]: `billing call`, a JSON client for trying the API.

#![forbid(unsafe_code)]

pub mod call;
pub mod config;
pub mod projector;
pub mod sweeper;
pub mod telemetry;

use std::net::SocketAddr;

use anyhow::Context as _;
use billing_api::auth::{AuthLayer, Authenticator};
use billing_api::{BillingApi, BillingServiceServer};
use billing_store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tower::Layer as _;

pub use config::{Role, ServeConfig};

/// A configured, bound service, ready to run.
#[derive(Debug)]
pub struct Application {
    /// The API's socket (bound in `build`, so its port is known before
    /// `run`) and its token verifier.
    listener: Option<(TcpListener, Authenticator)>,
    /// The publisher's settings, when this process runs it.
    publisher: Option<billing_publisher::PublisherConfig>,
    store: Store,
    config: ServeConfig,
}

impl Application {
    /// Connects the store, migrates when configured, and binds the API.
    pub async fn build(config: ServeConfig) -> anyhow::Result<Self> {
        let store = Store::connect(
            config.database.database_url.expose(),
            config.database.pool_size,
            config.rates()?,
        )?
        .with_writers(config.database.command_writers);
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
            Some(config.jwt.authenticator()?)
        } else {
            None
        };
        let listener = if config.roles.contains(&Role::Api) {
            let listener = TcpListener::bind(config.grpc_addr)
                .await
                .with_context(|| format!("binding {}", config.grpc_addr))?;
            Some(listener)
        } else {
            None
        };
        Ok(Self {
            publisher,
            listener: listener.zip(authenticator),
            store,
            config,
        })
    }

    /// Where the API listens, when this process runs it.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener
            .as_ref()
            .and_then(|(l, _)| l.local_addr().ok())
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
        if self.config.roles.contains(&Role::Sweeper) {
            tasks.spawn(sweeper::run(
                self.store.clone(),
                self.config.sweep_interval(),
                stop_rx.clone(),
            ));
        }
        if self.config.roles.contains(&Role::Projector) {
            tasks.spawn(projector::run(self.store.clone(), stop_rx.clone()));
        }
        if let Some(publisher) = self.publisher {
            tasks.spawn(billing_publisher::run(
                self.store.clone(),
                publisher,
                stop_rx.clone(),
            ));
        }
        let serve = match self.listener {
            Some((listener, authenticator)) => Some(serve_api(
                listener,
                authenticator,
                self.store.clone(),
                stop_rx.clone(),
            )),
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

async fn serve_api(
    listener: TcpListener,
    authenticator: Authenticator,
    store: Store,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<BillingServiceServer<BillingApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(billing_proto::v1::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "gRPC API listening");
    billing_api::edge::transport()
        .add_service(health_service)
        .add_service(reflection)
        // Health and reflection stay open; every billing RPC is authenticated.
        .add_service(AuthLayer::new(authenticator).layer(BillingApi::new(store).into_server()))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        })
        .await
        .context("serving gRPC")
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

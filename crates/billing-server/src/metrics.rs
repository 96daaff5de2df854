//! Prometheus metrics: the process's recorder, which every crate's
//! `metrics::` calls reach, and `/metrics` in Prometheus's text format on an
//! HTTP port of its own (`BILLING_METRICS_ADDR`).
//!
//! Counters and histograms are updated where things happen (the RPC layer,
//! the store's writers, the publisher, the projector). Gauges of state (the
//! pool, how far the projector and publisher are behind) are read when
//! Prometheus scrapes, so they are never older than the scrape.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use billing_store::Store;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Role;

/// Latency buckets in seconds: from a fast commit (a millisecond or two) to
/// a call that waited on a pool or a retry.
const SECONDS: &[f64] = &[
    0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Commands per batch, up to the writer's most (512).
const BATCH_SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
/// How long a scrape waits for a lag query before reporting without it.
const LAG_TIMEOUT: Duration = Duration::from_secs(2);

/// Installs the process's recorder, once; later calls return the same
/// handle (tests run several servers in one process).
pub fn install() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS)?
        .set_buckets_for_metric(
            Matcher::Full("billing_store_batch_size".to_owned()),
            BATCH_SIZES,
        )?
        .build_recorder();
    let handle = recorder.handle();
    let handle = HANDLE.get_or_init(|| {
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("metrics: another recorder is installed; /metrics stays empty");
        }
        describe();
        metrics::gauge!("billing_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        handle
    });
    Ok(handle.clone())
}

/// Every metric's help text and unit: the list the README documents.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!("billing_build_info", "The running version (always 1).");
    describe_counter!(
        "billing_rpc_requests_total",
        "gRPC calls of the billing service, by method and status code."
    );
    describe_histogram!(
        "billing_rpc_duration_seconds",
        Unit::Seconds,
        "gRPC call latency, by method and status code."
    );
    describe_counter!(
        "billing_commands_total",
        "Commands decided by the store, by command and outcome (applied, rejected, failed)."
    );
    describe_counter!(
        "billing_command_rejections_total",
        "Rejected commands, by command and reason (the ErrorInfo reason)."
    );
    describe_counter!(
        "billing_events_total",
        "Events committed, by type (reservation_expired counts expired holds)."
    );
    describe_histogram!(
        "billing_store_transaction_seconds",
        Unit::Seconds,
        "Each attempt at a command batch's transaction, by path (fast, long) and result."
    );
    describe_histogram!(
        "billing_store_batch_size",
        "Commands per group-commit batch."
    );
    describe_gauge!(
        "billing_db_pool_max_connections",
        "The most connections the pool opens (command writers have their own)."
    );
    describe_gauge!("billing_db_pool_connections", "Pool connections open.");
    describe_gauge!(
        "billing_db_pool_idle_connections",
        "Pool connections open and not in use."
    );
    describe_gauge!(
        "billing_db_pool_waiters",
        "Callers waiting for a pool connection."
    );
    describe_gauge!(
        "billing_projector_lag_events",
        "Committed events the read models have not folded in yet."
    );
    describe_gauge!(
        "billing_projector_lag_seconds",
        Unit::Seconds,
        "Age of the oldest event the read models have not folded in (0 when caught up)."
    );
    describe_counter!(
        "billing_projector_events_total",
        "Events folded into the read models."
    );
    describe_gauge!(
        "billing_publisher_lag_events",
        "Committed events not yet acknowledged by Kafka."
    );
    describe_gauge!(
        "billing_publisher_lag_seconds",
        Unit::Seconds,
        "Age of the oldest event not yet acknowledged by Kafka (0 when caught up)."
    );
    describe_gauge!(
        "billing_publisher_active",
        "1 while this publisher holds at least one slice's lease and publishes, 0 on stand-by."
    );
    describe_gauge!(
        "billing_feed_slices_held",
        "Slices of the feed this process holds, by partitioned reader (projector, publisher, dispatcher)."
    );
    describe_counter!(
        "billing_publisher_events_total",
        "Events whose messages Kafka acknowledged."
    );
    describe_counter!(
        "billing_publisher_messages_total",
        "Messages (account_updated and alerts) Kafka acknowledged."
    );
    describe_counter!(
        "billing_publisher_delivery_errors_total",
        "Batches whose delivery failed (the producer is recreated)."
    );
    describe_counter!(
        "billing_publisher_retries_total",
        "Batches published again from the checkpoint after a failed delivery."
    );
    describe_gauge!(
        "billing_dispatcher_lag_events",
        "Events the webhook dispatcher has not turned into deliveries yet."
    );
    describe_gauge!(
        "billing_dispatcher_lag_seconds",
        "Age of the oldest event the webhook dispatcher has not turned into deliveries yet."
    );
    describe_counter!(
        "billing_dispatcher_events_total",
        "Events this process's dispatcher read from the feed."
    );
    describe_counter!(
        "billing_webhook_attempts_total",
        "Webhook delivery attempts, by outcome (delivered, retry, failed, gone)."
    );
    describe_histogram!(
        "billing_webhook_attempt_seconds",
        metrics::Unit::Seconds,
        "How long a webhook delivery attempt took, answer read."
    );
    describe_gauge!(
        "billing_webhook_deliveries_pending",
        "Webhook deliveries not yet delivered or failed for good (all dispatchers)."
    );
    describe_gauge!(
        "billing_webhook_oldest_pending_seconds",
        "How long the oldest due webhook delivery has waited."
    );
    describe_counter!(
        "billing_webhooks_disabled_total",
        "Webhooks this process disabled (410 Gone, or failing past the window)."
    );
    describe_counter!(
        "billing_sweeper_accounts_total",
        "Accounts the sweeper housekept, by outcome (recorded, refused, failed)."
    );
    describe_counter!(
        "billing_retention_removed_total",
        "Rows retention removed past their window, by kind (idempotency_keys, reservations)."
    );
    describe_gauge!(
        "billing_health_serving",
        "1 while a role (or \"\", the process) reports SERVING on gRPC health."
    );
}

/// What a scrape reads besides the recorded metrics.
#[derive(Debug)]
pub struct Scrape {
    handle: PrometheusHandle,
    store: Store,
    /// (checkpoint, events gauge, seconds gauge) of the feed readers this
    /// process runs.
    lags: Vec<(&'static str, &'static str, &'static str)>,
}

impl Scrape {
    pub fn new(handle: PrometheusHandle, store: Store, roles: &[Role]) -> Self {
        let mut lags = Vec::new();
        if roles.contains(&Role::Projector) {
            lags.push((
                billing_store::READ_MODELS,
                "billing_projector_lag_events",
                "billing_projector_lag_seconds",
            ));
        }
        if roles.contains(&Role::Publisher) {
            lags.push((
                billing_publisher::CHECKPOINT,
                "billing_publisher_lag_events",
                "billing_publisher_lag_seconds",
            ));
        }
        if roles.contains(&Role::Dispatcher) {
            lags.push((
                billing_webhooks::CHECKPOINT,
                "billing_dispatcher_lag_events",
                "billing_dispatcher_lag_seconds",
            ));
        }
        Self {
            handle,
            store,
            lags,
        }
    }

    /// The metrics now, in Prometheus's text format.
    async fn render(&self) -> String {
        let pool = self.store.pool_status();
        metrics::gauge!("billing_db_pool_max_connections").set(pool.max_size as f64);
        metrics::gauge!("billing_db_pool_connections").set(pool.size as f64);
        metrics::gauge!("billing_db_pool_idle_connections").set(pool.available as f64);
        metrics::gauge!("billing_db_pool_waiters").set(pool.waiting as f64);
        let lags = self
            .lags
            .iter()
            .map(|&(checkpoint, events, seconds)| async move {
                match tokio::time::timeout(LAG_TIMEOUT, self.store.feed().feed_lag(checkpoint))
                    .await
                {
                    Ok(Ok(lag)) => {
                        metrics::gauge!(events).set(lag.events as f64);
                        metrics::gauge!(seconds).set(lag.seconds);
                    }
                    // The gauges keep their last value; health says why.
                    Ok(Err(error)) => tracing::debug!(%error, checkpoint, "metrics: no lag"),
                    Err(_) => tracing::debug!(checkpoint, "metrics: the lag query timed out"),
                }
            });
        futures::future::join_all(lags).await;
        // Histograms keep samples until upkeep folds them in.
        self.handle.run_upkeep();
        self.handle.render()
    }
}

/// Binds the metrics port (in `build`, so its address is known at once).
pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics port {addr}"))
}

/// Serves `/metrics` on `listener` until `stop` turns true.
pub async fn serve(listener: TcpListener, scrape: Arc<Scrape>, mut stop: watch::Receiver<bool>) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(url = %format!("http://{addr}/metrics"), "metrics served");
    }
    // Upkeep between scrapes too, so histogram samples do not pile up when
    // nobody scrapes.
    let upkeep = {
        let handle = scrape.handle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        })
    };
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::debug!(%error, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let scrape = scrape.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let scrape = scrape.clone();
                async move { Ok::<_, Infallible>(respond(&scrape, &request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                tracing::debug!(%error, "metrics: connection ended");
            }
        });
    }
    upkeep.abort();
}

async fn respond(scrape: &Scrape, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if let Ok(value) = content_type.parse() {
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, value);
        }
        response
    };
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            scrape.render().await,
        ),
        (_, "/metrics") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".to_owned(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "metrics are at /metrics\n".to_owned(),
        ),
    }
}

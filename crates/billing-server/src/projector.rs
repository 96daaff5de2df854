//! The projector role: follows the event feed into the read models. Wakes on
//! NOTIFY when caught up (and polls as a fallback), reads again after a
//! short wait while events keep coming; several replicas may run (the checkpoint
//! lock lets one batch through at a time). Logs its lag periodically.

use std::time::Duration;

use billing_store::{FeedWakeup, READ_MODELS, Store, StoredEvent};
use tokio::sync::watch;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Events per batch (one transaction).
// Large enough that at the command path's peak (several thousand events a
// second) a batch's fixed costs (feed read, checkpoint, commit) stay small.
const BATCH: i64 = 2_000;
/// How long to wait after a notification, and at least between the starts of
/// two reads while events keep coming, so a burst shares one batch. Each
/// batch costs a feed read and a transaction whatever its size: at 5 ms the
/// read side woke for every second or third command batch and spent more CPU
/// per change than it does at 25, which adds at most 25 ms of lag.
const COALESCE: Duration = Duration::from_millis(25);
/// How often to look for events without a notification.
const POLL: Duration = Duration::from_millis(500);
/// How often to log the lag.
const LAG_REPORT: Duration = Duration::from_secs(10);

pub async fn run(store: Store, mut shutdown: watch::Receiver<bool>) {
    let wakeup = FeedWakeup::start(&store, "projector");
    let mut lag_report = tokio::time::interval(LAG_REPORT);
    loop {
        let started = tokio::time::Instant::now();
        let found = match store
            .project_batch_traced(READ_MODELS, BATCH, apply_span)
            .await
        {
            Ok(Some(report)) => {
                if report.applied > 0 {
                    metrics::counter!("billing_projector_events_total")
                        .increment(report.applied as u64);
                    tracing::debug!(
                        applied = report.applied,
                        skipped = report.skipped,
                        "projected"
                    );
                }
                if let Some(gap) = &report.gap {
                    tracing::error!(?gap, "projector: waiting for an event's predecessor");
                }
                let read = report.applied + report.skipped;
                if report.gap.is_none() && read as i64 == BATCH {
                    continue;
                }
                report.gap.is_none() && read > 0
            }
            // Another replica is projecting this batch.
            Ok(None) => false,
            Err(error) => {
                tracing::warn!(%error, "projector: batch failed; will retry");
                false
            }
        };
        if found {
            // More are likely on their way: look again once the wait since
            // this batch began has passed (at once if folding it took
            // longer), without being woken for each commit meanwhile.
            wakeup.quiet();
        }
        tokio::select! {
            _ = shutdown.changed() => break,
            () = tokio::time::sleep_until(started + COALESCE), if found => {}
            _ = wakeup.wait(POLL), if !found => {
                // Let a burst of commits land, so they share one batch.
                tokio::time::sleep(COALESCE).await;
            }
            _ = lag_report.tick() => report_lag(&store).await,
        }
    }
    tracing::info!("projector stopped");
}

/// The span of folding a batch in, linked to the spans of the requests that
/// caused its events (when they were traced).
fn apply_span(events: &[StoredEvent]) -> tracing::Span {
    let span = tracing::info_span!(
        "projector.apply",
        otel.kind = "consumer",
        events = events.len()
    );
    if !span.is_disabled() {
        for cause in billing_store::causes(events) {
            span.add_link(cause);
        }
    }
    span
}

async fn report_lag(store: &Store) {
    match store.feed_lag(READ_MODELS).await {
        Ok(lag) => tracing::info!(
            lag_events = lag.events,
            lag_seconds = lag.seconds,
            "projector lag"
        ),
        Err(error) => tracing::warn!(%error, "projector: cannot measure lag"),
    }
}

//! The projector role: follows the event feed into the read models, as a
//! partitioned reader of the store's feed module (`Sliced`, checkpoint
//! `read_models`): each process claims its share of the accounts' slices
//! and runs a handler per slice it holds, under that slice's lease
//! (`read_models/3`); processes joining or leaving move slices between
//! them. Each batch's writes commit with its slice's checkpoint. Logs each
//! the lag (every slice's) periodically.

use std::time::Duration;

use billing_store::{
    Cursor, FeedBatch, FeedHandler, FeedRead, Gap, READ_MODELS, Slice, Sliced, Store, StoreError,
    StoredEvent,
};
use tokio::sync::watch;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// How often to log the lag.
const LAG_REPORT: Duration = Duration::from_secs(10);

pub async fn run(store: Store, shutdown: watch::Receiver<bool>) {
    Sliced::new(&store, "projector", READ_MODELS)
        .run(
            |slice| Projector {
                store: store.clone(),
                slice,
            },
            shutdown,
        )
        .await;
}

/// The projector's handler of one slice of the feed.
struct Projector {
    store: Store,
    slice: Slice,
}

/// Why a batch was not projected (the follower tries again from the
/// checkpoint).
#[derive(Debug, thiserror::Error)]
enum ProjectorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("waiting for an event's predecessor: {0:?}")]
    Gap(Gap),
}

impl FeedHandler for Projector {
    type Error = ProjectorError;
    /// The fold never reads the account view each event carries.
    const READ: FeedRead = FeedRead::EventsWithoutView;
    const TICK: Option<Duration> = Some(LAG_REPORT);

    async fn activate(&mut self, at: Cursor) -> Result<(), Self::Error> {
        tracing::info!(
            ?at,
            slice = self.slice.index,
            "projector: active on slice {}",
            self.slice.index
        );
        Ok(())
    }

    async fn handle(&mut self, batch: &FeedBatch) -> Result<(), Self::Error> {
        let report = self
            .store
            .read_models()
            .project(batch)
            .instrument(apply_span(&batch.events))
            .await?;
        if report.applied > 0 {
            metrics::counter!("billing_projector_events_total").increment(report.applied as u64);
            tracing::debug!(
                applied = report.applied,
                skipped = report.skipped,
                "projected"
            );
        }
        match report.gap {
            Some(gap) => {
                tracing::error!(?gap, "projector: waiting for an event's predecessor");
                Err(ProjectorError::Gap(gap))
            }
            None => Ok(()),
        }
    }

    fn deactivate(&mut self) {
        tracing::info!(
            slice = self.slice.index,
            "projector: lease of slice {} ended",
            self.slice.index
        );
    }

    async fn tick(&mut self) {
        // One line for every slice, from the process holding slice 0: a
        // count of the backlog is a scan of it.
        if self.slice.index == 0 {
            report_lag(&self.store).await;
        }
    }
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
    match store.feed().feed_lag(READ_MODELS).await {
        Ok(lag) => tracing::info!(
            lag_events = lag.events,
            lag_seconds = lag.seconds,
            "projector lag"
        ),
        Err(error) => tracing::warn!(%error, "projector: cannot measure lag"),
    }
}

//! Sending: claim due deliveries, attempt each in a task of its own, record
//! how they went in batches. Every dispatcher replica runs this; claims
//! keep them from sending one delivery twice at the same time.
//!
//! One endpoint never holds up another: each webhook has at most
//! [`DispatchConfig::per_webhook`] attempts in flight, and a webhook at that
//! cap is left out of claims, so a slow or dead endpoint takes its own
//! slots and no one else's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use billing_store::{AttemptOutcome, AttemptRecord, ClaimedDelivery, Store};
use chrono::Utc;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tokio::sync::{Notify, watch};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use uuid::Uuid;

use crate::payload;
use crate::schedule::{RetrySchedule, retry_after};
use crate::sender::{Answer, Sender};
use crate::signing::{SigningKey, signature_header};

/// How sending is paced.
#[derive(Clone, Debug)]
pub struct DispatchConfig {
    pub schedule: RetrySchedule,
    /// A webhook failing every attempt this long is disabled.
    pub disable_after: Duration,
    /// Attempts in flight in this process.
    pub max_in_flight: usize,
    /// Attempts in flight to one webhook.
    pub per_webhook: usize,
    /// How often to look for due deliveries without being told of new ones.
    pub poll: Duration,
    /// The attempt's timeout (the claim is held a while longer).
    pub timeout: Duration,
}

/// Deliveries claimed at a time.
const CLAIM_BATCH: usize = 256;
/// How long to wait after a database error.
const BACKOFF: Duration = Duration::from_millis(500);
/// How often the backlog gauges are refreshed.
const BACKLOG_EVERY: Duration = Duration::from_secs(10);
/// How often deliveries stranded by a race with their head's resolution
/// are looked for, and how far back (see `Deliveries::promote_stranded`).
const STRANDED_EVERY: Duration = Duration::from_secs(1);
const STRANDED_WINDOW: Duration = Duration::from_secs(60);

/// Sends due deliveries until `shutdown`; `wake` is notified when new ones
/// are made in this process.
pub async fn run(
    store: Store,
    sender: Sender,
    config: DispatchConfig,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut in_flight = FuturesUnordered::new();
    let mut per_webhook: HashMap<Uuid, usize> = HashMap::new();
    let mut done: Vec<AttemptRecord> = Vec::new();
    let mut backlog = tokio::time::interval(BACKLOG_EVERY);
    let mut stranded = tokio::time::interval(STRANDED_EVERY);
    // The first look goes all the way back: a dispatcher that stopped
    // right after such a race left its stranded deliveries to the next.
    let mut stranded_window = None;
    // The attempt's timeout, and time to record it, before another
    // dispatcher may take the delivery over.
    let hold = config.timeout * 2 + Duration::from_secs(2);
    let mut claim_now = true;
    loop {
        if *shutdown.borrow() {
            break;
        }
        if claim_now && in_flight.len() < config.max_in_flight {
            let room = (config.max_in_flight - in_flight.len()).min(CLAIM_BATCH);
            let busy: Vec<(Uuid, i64)> =
                per_webhook.iter().map(|(id, n)| (*id, *n as i64)).collect();
            match store
                .deliveries()
                .claim_deliveries(room as i64, config.per_webhook as i64, &busy, hold)
                .await
            {
                Ok(claimed) => {
                    // A full claim may have left more due: claim again as
                    // soon as there is room. (A claim cut short by the
                    // per-webhook caps looks again when an attempt ends.)
                    claim_now = claimed.len() == room;
                    for delivery in claimed {
                        *per_webhook.entry(delivery.webhook_id).or_default() += 1;
                        in_flight.push(tokio::spawn(attempt(
                            sender.clone(),
                            config.schedule.clone(),
                            delivery,
                        )));
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "dispatcher: cannot claim deliveries");
                    claim_now = false;
                    tokio::select! {
                        _ = shutdown.changed() => {}
                        () = tokio::time::sleep(BACKOFF) => claim_now = true,
                    }
                    continue;
                }
            }
        }
        tokio::select! {
            Some(finished) = in_flight.next(), if !in_flight.is_empty() => {
                if let Ok(record) = finished {
                    done.push(record);
                }
                // Record every attempt that has finished meanwhile together.
                while let Some(Some(finished)) = futures::FutureExt::now_or_never(in_flight.next()) {
                    if let Ok(record) = finished {
                        done.push(record);
                    }
                }
                for record in &done {
                    if let Some(slots) = per_webhook.get_mut(&record.webhook_id) {
                        *slots -= 1;
                        if *slots == 0 {
                            per_webhook.remove(&record.webhook_id);
                        }
                    }
                }
                record(&store, &config, &mut done, &mut shutdown).await;
                claim_now = true;
            }
            () = wake.notified() => claim_now = true,
            () = tokio::time::sleep(config.poll) => claim_now = true,
            _ = backlog.tick() => report_backlog(&store).await,
            _ = stranded.tick() => {
                match store.deliveries().promote_stranded(stranded_window).await {
                    Ok(promoted) => {
                        stranded_window = Some(STRANDED_WINDOW);
                        if promoted > 0 {
                            tracing::debug!(promoted, "dispatcher: promoted stranded deliveries");
                            claim_now = true;
                        }
                    }
                    Err(error) => {
                        tracing::debug!(%error, "dispatcher: cannot look for stranded deliveries");
                    }
                }
            }
            _ = shutdown.changed() => {}
        }
    }
    // Let the attempts under way finish (each is bounded by its timeout)
    // and record them: a delivery is never left claimed by a process gone.
    while let Some(finished) = in_flight.next().await {
        if let Ok(record) = finished {
            done.push(record);
        }
    }
    let (_, mut never) = watch::channel(false);
    record(&store, &config, &mut done, &mut never).await;
    tracing::info!("dispatcher stopped");
}

/// Records finished attempts, retrying on database errors (an attempt not
/// recorded is sent again once its claim lapses: at least once).
async fn record(
    store: &Store,
    config: &DispatchConfig,
    done: &mut Vec<AttemptRecord>,
    shutdown: &mut watch::Receiver<bool>,
) {
    if done.is_empty() {
        return;
    }
    for _ in 0..10 {
        match store
            .deliveries()
            .record_attempts(done, config.disable_after)
            .await
        {
            Ok(disabled) => {
                for (webhook, reason) in disabled {
                    tracing::warn!(%webhook, reason, "webhook disabled");
                    metrics::counter!("billing_webhooks_disabled_total").increment(1);
                }
                done.clear();
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "dispatcher: cannot record attempts; retrying");
                tokio::select! {
                    _ = shutdown.changed() => {}
                    () = tokio::time::sleep(BACKOFF) => {}
                }
            }
        }
    }
    tracing::error!(
        attempts = done.len(),
        "dispatcher: attempts not recorded; they are sent again when their claims lapse"
    );
    done.clear();
}

async fn report_backlog(store: &Store) {
    match store.deliveries().delivery_backlog().await {
        Ok(backlog) => {
            metrics::gauge!("billing_webhook_deliveries_pending").set(backlog.pending as f64);
            metrics::gauge!("billing_webhook_oldest_pending_seconds")
                .set(backlog.oldest_due_seconds);
        }
        Err(error) => tracing::debug!(%error, "dispatcher: cannot measure the backlog"),
    }
}

/// One attempt at a delivery, in a span linked to the request that caused
/// the change.
async fn attempt(
    sender: Sender,
    schedule: RetrySchedule,
    delivery: ClaimedDelivery,
) -> AttemptRecord {
    let span = tracing::info_span!(
        "webhook.attempt",
        otel.kind = "client",
        webhook.id = %delivery.webhook_id,
        webhook.delivery_id = %delivery.id,
        webhook.attempt = delivery.attempts + 1,
        http.response.status_code = tracing::field::Empty,
    );
    if let Some(cause) =
        billing_store::span_context(delivery.trace_id.as_deref(), delivery.span_id.as_deref())
    {
        span.add_link(cause);
    }
    async move {
        let started = std::time::Instant::now();
        let body = payload::body(&delivery);
        let keys: Vec<SigningKey> = delivery
            .secrets
            .iter()
            .filter_map(|s| SigningKey::from_secret(s).ok())
            .collect();
        let timestamp = Utc::now().timestamp();
        let signature = signature_header(&keys, &delivery.message_id, timestamp, body.as_bytes());
        let headers = [
            ("webhook-id", delivery.message_id.clone()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", signature),
        ];
        let answer = sender
            .send(&delivery.method, &delivery.uri, &headers, body)
            .await;
        metrics::histogram!("billing_webhook_attempt_seconds")
            .record(started.elapsed().as_secs_f64());
        let record = judge(&delivery, &schedule, answer, Utc::now());
        if let Some(code) = record.status_code {
            tracing::Span::current().record("http.response.status_code", code);
        }
        let outcome = match record.outcome {
            AttemptOutcome::Delivered { .. } => "delivered",
            AttemptOutcome::Retry { .. } => "retry",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Gone => "gone",
        };
        metrics::counter!("billing_webhook_attempts_total", "outcome" => outcome).increment(1);
        tracing::debug!(delivery = %delivery.id, outcome, error = record.error, "webhook attempt");
        record
    }
    .instrument(span)
    .await
}

/// What an answer means for the delivery.
fn judge(
    delivery: &ClaimedDelivery,
    schedule: &RetrySchedule,
    answer: Answer,
    now: chrono::DateTime<Utc>,
) -> AttemptRecord {
    let attempts = usize::try_from(delivery.attempts).unwrap_or(0) + 1;
    let (status_code, error, wait) = match answer {
        Answer::Status { code, .. } if (200..300).contains(&code) => {
            return AttemptRecord {
                delivery_id: delivery.id,
                webhook_id: delivery.webhook_id,
                outcome: AttemptOutcome::Delivered { at: now },
                status_code: Some(i32::from(code)),
                error: String::new(),
            };
        }
        Answer::Status {
            code: 410, body, ..
        } => {
            return AttemptRecord {
                delivery_id: delivery.id,
                webhook_id: delivery.webhook_id,
                outcome: AttemptOutcome::Gone,
                status_code: Some(410),
                error: short(&format!("HTTP 410: {body}")),
            };
        }
        Answer::Status {
            code,
            retry_after: header,
            body,
        } => {
            let wait = match code {
                429 | 503 => header.and_then(|h| retry_after(&h, now)),
                _ => None,
            };
            (Some(i32::from(code)), format!("HTTP {code}: {body}"), wait)
        }
        Answer::Error(error) => (None, error, None),
    };
    let outcome = match schedule.next_attempt(attempts, now, wait) {
        Some(next) => AttemptOutcome::Retry { next },
        None => AttemptOutcome::Failed,
    };
    AttemptRecord {
        delivery_id: delivery.id,
        webhook_id: delivery.webhook_id,
        outcome,
        status_code,
        error: short(&error),
    }
}

/// At most [`crate::sender::KEEP_LIMIT`] bytes, cut at a character.
fn short(text: &str) -> String {
    let mut end = text.len().min(crate::sender::KEEP_LIMIT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

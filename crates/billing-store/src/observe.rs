//! The command path's spans and metrics, kept out of the writer's logic.
//!
//! Commands from many requests share one batch, so a batch cannot sit in
//! one request's trace alone. Each command gets a `store.command` span in
//! its caller's trace (from queueing to its answer); the batch's span is a
//! child of its first command's span and links to every other one, and the
//! batch's round trips (`store.read`, `store.write`) are its children.
//!
//! Every span here is at DEBUG: without a subscriber that wants them (the
//! OpenTelemetry layer, or `RUST_LOG=debug`) they are disabled at their call
//! site and cost nothing. Metrics are tallied per batch, never per command,
//! and go through the `metrics` facade: without an installed recorder they
//! are no-ops.

use std::time::Instant;

use billing_domain::Command;
use tracing::Span;
use tracing::field::Empty;

use crate::StoreError;
use crate::batch::{Answer, EventRow, Work};
use crate::writer::Job;

/// The span of one command, in the caller's trace.
pub(crate) fn command_span(work: &Work) -> Span {
    tracing::debug_span!(
        "store.command",
        command = command_name(work),
        batch_size = Empty
    )
}

/// The span of a batch: parented by its first command's span and linked to
/// the others, each of which learns the batch's size.
pub(crate) fn batch_span(jobs: &[Job]) -> Span {
    let Some(first) = jobs.first() else {
        return Span::none();
    };
    let span = tracing::debug_span!(
        parent: &first.span,
        "store.batch",
        batch_size = jobs.len(),
    );
    if !span.is_disabled() {
        for job in jobs {
            job.span.record("batch_size", jobs.len());
            if job.span.id() != first.span.id() {
                span.follows_from(&job.span);
            }
        }
    }
    span
}

/// The span of a batch's reading round trip (the long way): `BEGIN`, the
/// locks, and the loads, pipelined.
pub(crate) fn read_span(statements: usize) -> Span {
    tracing::debug_span!(
        "store.read",
        db.system = "postgresql",
        db.operation.name = "BEGIN; lock; load",
        statements,
    )
}

/// The span of a batch's writing round trip: the set-based writes and
/// `COMMIT` (on the fast path behind `BEGIN`, the locks and the fence).
pub(crate) fn write_span(fast: bool, events: usize) -> Span {
    tracing::debug_span!(
        "store.write",
        db.system = "postgresql",
        db.operation.name = if fast {
            "BEGIN; lock; fence; write; COMMIT"
        } else {
            "write; COMMIT"
        },
        events,
    )
}

/// Times one attempt at a batch's transaction.
pub(crate) struct Attempt {
    started: Instant,
    path: &'static str,
}

impl Attempt {
    /// An attempt the long way, unless it says otherwise.
    pub(crate) fn start() -> Self {
        Self {
            started: Instant::now(),
            path: "long",
        }
    }

    pub(crate) fn took_fast_path(&mut self) {
        self.path = "fast";
    }

    /// Records how long the attempt took, and how it ended.
    pub(crate) fn finish(&self, result: Result<(), &StoreError>) {
        let result = match result {
            Ok(()) => "committed",
            Err(error) if error.is_retryable() => "lost_race",
            Err(StoreError::Unavailable(_)) => "unavailable",
            Err(_) => "error",
        };
        metrics::histogram!(
            "billing_store_transaction_seconds",
            "path" => self.path,
            "result" => result
        )
        .record(self.started.elapsed().as_secs_f64());
    }
}

/// Counts a finished batch: its size, and each command's outcome (and a
/// rejection's reason). Tallied first, so each series is touched once per
/// batch.
pub(crate) fn record_batch(jobs: &[Job], answers: &[Result<Answer, StoreError>]) {
    metrics::histogram!("billing_store_batch_size").record(jobs.len() as f64);
    let mut tally: Vec<(&'static str, &'static str, Option<&'static str>, u64)> = Vec::new();
    for (job, answer) in jobs.iter().zip(answers) {
        let command = command_name(&job.work);
        let (outcome, reason) = match answer {
            Ok(Ok(_)) => ("applied", None),
            Ok(Err(rejection)) => ("rejected", Some(rejection.reason())),
            Err(_) => ("failed", None),
        };
        match tally
            .iter_mut()
            .find(|(c, o, r, _)| *c == command && *o == outcome && *r == reason)
        {
            Some(entry) => entry.3 += 1,
            None => tally.push((command, outcome, reason, 1)),
        }
    }
    for (command, outcome, reason, count) in tally {
        metrics::counter!("billing_commands_total", "command" => command, "outcome" => outcome)
            .increment(count);
        if let Some(reason) = reason {
            metrics::counter!(
                "billing_command_rejections_total",
                "command" => command,
                "reason" => reason
            )
            .increment(count);
        }
    }
}

/// Counts a committed batch's events by type (`reservation_expired` counts
/// the holds time ran out on, whether the sweeper or a later command on the
/// account wrote it down).
pub(crate) fn record_events(events: &[EventRow]) {
    let mut tally: Vec<(&'static str, u64)> = Vec::new();
    for event in events {
        let kind = event.event.event_type();
        match tally.iter_mut().find(|(k, _)| *k == kind) {
            Some(entry) => entry.1 += 1,
            None => tally.push((kind, 1)),
        }
    }
    for (kind, count) in tally {
        metrics::counter!("billing_events_total", "type" => kind).increment(count);
    }
}

/// A command's name for spans and metrics: one of a fixed few.
pub(crate) fn command_name(work: &Work) -> &'static str {
    match work {
        Work::Create { .. } => "create_account",
        Work::Execute { cmd, .. } => match cmd {
            Command::AddBalance(_) => "add_balance",
            Command::SubtractBalance(_) => "subtract_balance",
            Command::Debit(_) => "debit",
            Command::Reserve(_) => "reserve",
            Command::Extend(_) => "extend",
            Command::Commit(_) => "commit",
            Command::Release { .. } => "release",
            Command::Update(_) => "update_account",
            Command::Housekeep => "housekeep",
        },
    }
}

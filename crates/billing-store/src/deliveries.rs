//! The webhook dispatcher's queries: the webhooks a batch of changes may
//! go to, the durable delivery rows made from the feed, claiming due
//! deliveries for sending, and recording how each attempt went.
//!
//! Order per webhook and account: a delivery is claimed only when no
//! earlier one (`seq`) of the same webhook and account is still pending, so
//! a change is never sent before an earlier one to the same endpoint has
//! been delivered or has failed for good. Only the first pending delivery
//! of a webhook and account (its head) has a `next_attempt_at`; the ones
//! waiting behind it have none, and the head's resolution gives the next
//! one its time (`promote`). So claims read heads only, however long the
//! queues behind them (a backlog of 35,000 deliveries claimed through the
//! waiting ones ran at half the rate). A delivery made while its head is
//! being resolved may miss that promotion; [`Deliveries::promote_stranded`]
//! finds such recent ones.
//!
//! Claims lock rows (`FOR UPDATE SKIP LOCKED`) and hold them with
//! `locked_until`, so two dispatchers never send one delivery at the same
//! time, and a dispatcher that dies lets go when the hold lapses.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{Store, StoreError};

/// Gives the next pending delivery of the webhook and account of each
/// delivery in `$1` (those not pending any more) its time, when it is
/// waiting.
const PROMOTE: &str = "UPDATE webhook_deliveries f SET next_attempt_at = now()
     FROM (SELECT DISTINCT webhook_id, account_id FROM webhook_deliveries
           WHERE id = ANY($1) AND status <> 'pending') AS p
     WHERE f.id = (SELECT n.id FROM webhook_deliveries n
                   WHERE n.webhook_id = p.webhook_id AND n.account_id = p.account_id
                     AND n.status = 'pending'
                   ORDER BY n.seq LIMIT 1)
       AND f.next_attempt_at IS NULL";

/// An enabled webhook, as the dispatcher matches changes against it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookTarget {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub event_types: Vec<String>,
    /// Empty: every account of the customer.
    pub account_ids: Vec<Uuid>,
}

/// A delivery to make (one webhook, one change or alert).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDelivery {
    pub id: Uuid,
    pub webhook_id: Uuid,
    /// The `webhook-id` header: the same on every attempt and replay.
    pub message_id: String,
    pub event_type: String,
    pub account_id: Uuid,
    pub account_version: i64,
}

/// A delivery claimed for an attempt, with what sending it takes.
#[derive(Clone, Debug)]
pub struct ClaimedDelivery {
    pub id: Uuid,
    pub webhook_id: Uuid,
    pub message_id: String,
    pub event_type: String,
    pub account_id: Uuid,
    pub account_version: i64,
    /// Attempts made before this one.
    pub attempts: i32,
    pub uri: String,
    pub method: String,
    /// The current secret, and the previous one while a rotation's overlap
    /// lasts.
    pub secrets: Vec<String>,
    /// The change: when it happened and the account view after it (as the
    /// event keeps it, or folded: `views.rs`; `None` only if its account's
    /// events cannot be folded, with the balances instead).
    pub occurred_at: DateTime<Utc>,
    pub account_after: Option<String>,
    pub balances: [i64; 6],
    /// The request that caused the change, for the attempt's span link.
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
}

/// How an attempt went, to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptRecord {
    pub delivery_id: Uuid,
    pub webhook_id: Uuid,
    pub outcome: AttemptOutcome,
    /// The HTTP status, when there was an answer.
    pub status_code: Option<i32>,
    /// A short description of a failure (empty on success).
    pub error: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    Delivered {
        at: DateTime<Utc>,
    },
    /// Failed; tried again at `next`.
    Retry {
        next: DateTime<Utc>,
    },
    /// Failed for good (the schedule is spent).
    Failed,
    /// The endpoint answered `410 Gone`: the webhook is disabled at once.
    Gone,
}

/// Pending deliveries and how long the oldest due one has waited.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Backlog {
    pub pending: i64,
    pub oldest_due_seconds: f64,
}

/// The webhook dispatcher's queue: the webhooks changes go to, deliveries
/// made, claimed and recorded ([`Store::deliveries`]).
#[derive(Clone, Copy, Debug)]
pub struct Deliveries<'a> {
    pub(crate) store: &'a Store,
}

impl Deliveries<'_> {
    /// The enabled webhooks of `customers`.
    pub async fn webhooks_of_customers(
        self,
        customers: &[Uuid],
    ) -> Result<Vec<WebhookTarget>, StoreError> {
        if customers.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.store.pool.get().await?;
        let rows = client
            .query(
                "SELECT id, customer_id, event_types, account_ids FROM webhooks
                 WHERE customer_id = ANY($1) AND enabled",
                &[&customers],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| WebhookTarget {
                id: row.get(0),
                customer_id: row.get(1),
                event_types: row.get(2),
                account_ids: row.get(3),
            })
            .collect())
    }

    /// Stores deliveries, in the given order (which is their order per
    /// webhook and account). One already made (the feed read again after a
    /// crash) is kept as it is. Returns how many were new.
    pub async fn insert_deliveries(self, new: &[NewDelivery]) -> Result<u64, StoreError> {
        if new.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Uuid> = new.iter().map(|d| d.id).collect();
        let webhooks: Vec<Uuid> = new.iter().map(|d| d.webhook_id).collect();
        let messages: Vec<&str> = new.iter().map(|d| d.message_id.as_str()).collect();
        let types: Vec<&str> = new.iter().map(|d| d.event_type.as_str()).collect();
        let accounts: Vec<Uuid> = new.iter().map(|d| d.account_id).collect();
        let versions: Vec<i64> = new.iter().map(|d| d.account_version).collect();
        let client = self.store.pool.get().await?;
        let inserted = client
            .execute(
                // Due now when it is its webhook and account's head (no
                // delivery before it pending, in the table or earlier in this
                // batch); waiting otherwise: see the module's note on order.
                "INSERT INTO webhook_deliveries
                     (id, webhook_id, message_id, event_type, account_id, account_version,
                      status, next_attempt_at, created_at)
                 SELECT n.id, n.webhook_id, n.message_id, n.event_type, n.account_id, n.version,
                        'pending',
                        CASE WHEN n.nth = 1 AND NOT EXISTS (
                                 SELECT 1 FROM webhook_deliveries d
                                 WHERE d.webhook_id = n.webhook_id AND d.account_id = n.account_id
                                   AND d.status = 'pending')
                             THEN now() END,
                        now()
                 FROM (SELECT u.*, row_number() OVER (PARTITION BY u.webhook_id, u.account_id
                                                      ORDER BY u.ord) AS nth
                       FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::uuid[],
                                   $6::bigint[])
                            WITH ORDINALITY AS u (id, webhook_id, message_id, event_type, account_id,
                                                  version, ord)) AS n
                 WHERE EXISTS (SELECT 1 FROM webhooks w WHERE w.id = n.webhook_id)
                 ORDER BY n.ord
                 ON CONFLICT (webhook_id, account_id, account_version, event_type, replay) DO NOTHING",
                &[&ids, &webhooks, &messages, &types, &accounts, &versions],
            )
            .await?;
        Ok(inserted)
    }

    /// Claims up to `limit` due deliveries of enabled webhooks, each the
    /// first pending one of its webhook and account, at most `per_webhook`
    /// of one webhook less what `busy` says it already has in flight
    /// (webhook, attempts), and holds them for `hold` (longer than an
    /// attempt can take).
    pub async fn claim_deliveries(
        self,
        limit: i64,
        per_webhook: i64,
        busy: &[(Uuid, i64)],
        hold: Duration,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let hold_ms = i64::try_from(hold.as_millis()).unwrap_or(i64::MAX);
        let (busy_ids, busy_counts): (Vec<Uuid>, Vec<i64>) = busy.iter().copied().unzip();
        let full: Vec<Uuid> = busy
            .iter()
            .filter(|(_, n)| *n >= per_webhook)
            .map(|(id, _)| *id)
            .collect();
        let client = self.store.pool.get().await?;
        let rows = client
            .query(
                // `due` locks the candidates; `picked` keeps each webhook's
                // share of them (the rest are let go when the statement
                // ends, unclaimed).
                "WITH due AS (
                     SELECT d.id, d.webhook_id, d.next_attempt_at FROM webhook_deliveries d
                     JOIN webhooks w ON w.id = d.webhook_id AND w.enabled
                     WHERE d.status = 'pending'
                       AND d.next_attempt_at <= now()
                       AND (d.locked_until IS NULL OR d.locked_until < now())
                       AND d.webhook_id <> ALL($3::uuid[])
                       AND NOT EXISTS (
                           SELECT 1 FROM webhook_deliveries e
                           WHERE e.webhook_id = d.webhook_id AND e.account_id = d.account_id
                             AND e.status = 'pending' AND e.seq < d.seq)
                     ORDER BY d.next_attempt_at
                     LIMIT $1
                     FOR UPDATE OF d SKIP LOCKED
                 ), picked AS (
                     SELECT ranked.id FROM (
                         SELECT due.id, due.webhook_id,
                                row_number() OVER (PARTITION BY due.webhook_id
                                                   ORDER BY due.next_attempt_at) AS n
                         FROM due
                     ) AS ranked
                     LEFT JOIN unnest($4::uuid[], $5::bigint[]) AS b (webhook_id, in_flight)
                          USING (webhook_id)
                     WHERE ranked.n <= $2 - COALESCE(b.in_flight, 0)
                 )
                 UPDATE webhook_deliveries d
                 SET locked_until = now() + $6 * interval '1 millisecond'
                 FROM picked, webhooks w, events e
                 WHERE d.id = picked.id AND w.id = d.webhook_id
                   AND e.account_id = d.account_id AND e.version = d.account_version
                 RETURNING d.id, d.webhook_id, d.message_id, d.event_type, d.account_id,
                           d.account_version, d.attempts, w.uri, w.method, w.secret,
                           CASE WHEN w.previous_secret_until > now() THEN w.previous_secret END,
                           e.occurred_at, e.account_after::text,
                           e.balance_credit, e.balance_token, e.reserved_credit, e.reserved_token,
                           e.available_credit, e.available_token, e.trace_id, e.span_id",
                &[
                    &limit,
                    &per_webhook,
                    &full,
                    &busy_ids,
                    &busy_counts,
                    &(hold_ms as f64),
                ],
            )
            .await?;
        drop(client);
        let mut claimed: Vec<ClaimedDelivery> = rows
            .iter()
            .map(|row| {
                let mut secrets = vec![row.get::<_, String>(9)];
                secrets.extend(row.get::<_, Option<String>>(10));
                ClaimedDelivery {
                    id: row.get(0),
                    webhook_id: row.get(1),
                    message_id: row.get(2),
                    event_type: row.get(3),
                    account_id: row.get(4),
                    account_version: row.get(5),
                    attempts: row.get(6),
                    uri: row.get(7),
                    method: row.get(8),
                    secrets,
                    occurred_at: row.get(11),
                    account_after: row.get(12),
                    balances: [
                        row.get(13),
                        row.get(14),
                        row.get(15),
                        row.get(16),
                        row.get(17),
                        row.get(18),
                    ],
                    trace_id: row.get(19),
                    span_id: row.get(20),
                }
            })
            .collect();
        // A change whose event keeps no view (`views.rs`) sends the folded
        // one: the same document the event would have kept.
        let missing: Vec<(Uuid, i64)> = claimed
            .iter()
            .filter(|d| d.account_after.is_none())
            .map(|d| (d.account_id, d.account_version))
            .collect();
        if !missing.is_empty() {
            let folded = self.store.views_at(&missing).await?;
            for d in &mut claimed {
                if d.account_after.is_none()
                    && let Some(view) = folded.get(&(d.account_id, d.account_version))
                {
                    d.account_after = Some(serde_json::to_string(view)?);
                }
            }
        }
        Ok(claimed)
    }

    /// Records attempts (one transaction): each delivery's status, and for
    /// the webhooks: a success clears `failing_since`; a failure sets it,
    /// and disables the webhook once it is older than `disable_after`; a
    /// `410 Gone` disables it at once. A disabled webhook's pending
    /// deliveries fail, naming why. Returns the webhooks disabled, with the
    /// reason.
    pub async fn record_attempts(
        self,
        records: &[AttemptRecord],
        disable_after: Duration,
    ) -> Result<Vec<(Uuid, String)>, StoreError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids = Vec::with_capacity(records.len());
        let mut statuses = Vec::with_capacity(records.len());
        let mut codes = Vec::with_capacity(records.len());
        let mut errors = Vec::with_capacity(records.len());
        let mut next = Vec::with_capacity(records.len());
        let mut delivered = Vec::with_capacity(records.len());
        let mut succeeded = Vec::new();
        let mut failed = Vec::new();
        let mut gone = Vec::new();
        for record in records {
            ids.push(record.delivery_id);
            codes.push(record.status_code);
            errors.push(record.error.as_str());
            let (status, at, done) = match &record.outcome {
                AttemptOutcome::Delivered { at } => ("delivered", None, Some(*at)),
                AttemptOutcome::Retry { next } => ("pending", Some(*next), None),
                AttemptOutcome::Failed | AttemptOutcome::Gone => ("failed", None, None),
            };
            statuses.push(status);
            next.push(at);
            delivered.push(done);
            match record.outcome {
                AttemptOutcome::Delivered { .. } => succeeded.push(record.webhook_id),
                AttemptOutcome::Gone => gone.push(record.webhook_id),
                _ => failed.push(record.webhook_id),
            }
        }
        // Any success in the batch clears a webhook's failing streak.
        failed.retain(|id| !succeeded.contains(id));
        let disable_after_s = disable_after.as_secs_f64();
        let mut client = self.store.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "UPDATE webhook_deliveries d
             SET status = r.status, attempts = d.attempts + 1, last_status_code = r.code,
                 last_error = r.error, next_attempt_at = r.next, delivered_at = r.delivered,
                 locked_until = NULL
             FROM unnest($1::uuid[], $2::text[], $3::int[], $4::text[], $5::timestamptz[],
                         $6::timestamptz[]) AS r (id, status, code, error, next, delivered)
             WHERE d.id = r.id",
            &[&ids, &statuses, &codes, &errors, &next, &delivered],
        )
        .await?;
        // The next delivery of each webhook and account whose head was
        // resolved (delivered, or failed for good) is due now.
        tx.execute(PROMOTE, &[&ids]).await?;
        tx.execute(
            "UPDATE webhooks SET failing_since = NULL
             WHERE id = ANY($1) AND failing_since IS NOT NULL",
            &[&succeeded],
        )
        .await?;
        let mut disabled: Vec<(Uuid, String)> = Vec::new();
        for row in tx
            .query(
                "UPDATE webhooks SET failing_since = COALESCE(failing_since, now())
                 WHERE id = ANY($1)
                 RETURNING id, enabled AND failing_since <= now() - $2 * interval '1 second'",
                &[&failed, &disable_after_s],
            )
            .await?
        {
            if row.get::<_, bool>(1) {
                let days = disable_after.as_secs_f64() / 86_400.0;
                disabled.push((
                    row.get(0),
                    format!("every attempt failed for {days:.1} days"),
                ));
            }
        }
        for id in gone {
            if !disabled.iter().any(|(d, _)| *d == id) {
                disabled.push((id, "the endpoint answered 410 Gone".to_owned()));
            }
        }
        if !disabled.is_empty() {
            let (ids, reasons): (Vec<Uuid>, Vec<&str>) =
                disabled.iter().map(|(id, r)| (*id, r.as_str())).unzip();
            tx.execute(
                "UPDATE webhooks w SET enabled = false, disabled_reason = r.reason,
                     updated_at = now()
                 FROM unnest($1::uuid[], $2::text[]) AS r (id, reason)
                 WHERE w.id = r.id AND w.enabled",
                &[&ids, &reasons],
            )
            .await?;
            tx.execute(
                "UPDATE webhook_deliveries d
                 SET status = 'failed', next_attempt_at = NULL, locked_until = NULL,
                     last_error = 'webhook disabled: ' || r.reason
                 FROM unnest($1::uuid[], $2::text[]) AS r (id, reason)
                 WHERE d.webhook_id = r.id AND d.status = 'pending'",
                &[&ids, &reasons],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(disabled)
    }

    /// Gives a time to waiting deliveries made in the last `window` (all,
    /// without one) that have no delivery before them pending: those made
    /// while their head was being resolved, which that resolution's
    /// promotion could not see yet. Returns how many.
    pub async fn promote_stranded(self, window: Option<Duration>) -> Result<u64, StoreError> {
        let window_s = window.map(|w| w.as_secs_f64());
        let client = self.store.pool.get().await?;
        Ok(client
            .execute(
                "UPDATE webhook_deliveries d SET next_attempt_at = now()
                 WHERE d.status = 'pending' AND d.next_attempt_at IS NULL
                   AND ($1::float8 IS NULL OR d.created_at > now() - $1 * interval '1 second')
                   AND NOT EXISTS (
                       SELECT 1 FROM webhook_deliveries e
                       WHERE e.webhook_id = d.webhook_id AND e.account_id = d.account_id
                         AND e.status = 'pending' AND e.seq < d.seq)",
                &[&window_s],
            )
            .await?)
    }

    /// Pending deliveries, and how long the oldest due one has waited.
    pub async fn delivery_backlog(self) -> Result<Backlog, StoreError> {
        let client = self.store.pool.get().await?;
        let row = client
            .query_one(
                "SELECT count(*),
                        COALESCE(EXTRACT(EPOCH FROM now() - min(next_attempt_at)
                                 FILTER (WHERE next_attempt_at <= now())), 0)::float8
                 FROM webhook_deliveries WHERE status = 'pending'",
                &[],
            )
            .await?;
        Ok(Backlog {
            pending: row.get(0),
            oldest_due_seconds: row.get(1),
        })
    }
}

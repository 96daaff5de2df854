//! Customer webhooks (`webhooks`) and their deliveries
//! (`webhook_deliveries`, `migrations/0013_webhooks.sql`): registration,
//! settings, secrets and their rotation, the delivery list, a failed
//! delivery sent again, and a replay. Plain rows changed in place: none of
//! it is an event or moves money.
//!
//! The dispatcher's own queries (matching, claiming, recording attempts)
//! are in `deliveries.rs`; the rows written here keep its rules: a delivery
//! queued again (a retry, a replay's copy) is not due before the pending
//! one of the same webhook and account it waits behind.

use std::fmt;

use base64::Engine as _;
use chrono::{DateTime, Duration, Utc};
use ring::rand::{SecureRandom as _, SystemRandom};
use tokio_postgres::Row;
use uuid::Uuid;

use crate::{Store, StoreError};

/// The most webhooks one customer may have.
pub const MAX_WEBHOOKS_PER_CUSTOMER: i64 = 20;
/// The event types a webhook may receive: every change of an account, and
/// the alerts changes raise.
pub const WEBHOOK_EVENT_TYPES: [&str; 4] = [
    "account_updated",
    "balance_low",
    "balance_recovered",
    "credit_limit_exceeded",
];
/// The most deliveries one `ReplayWebhook` call queues.
pub const MAX_REPLAY: i64 = 100_000;
/// A secret's prefix (Standard Webhooks): `whsec_` + base64 of the key.
pub const SECRET_PREFIX: &str = "whsec_";
/// Random bytes in a new secret's key.
pub const SECRET_BYTES: usize = 32;

/// A registered webhook, secrets included (a reply shows them only where
/// the API says so). `Debug` leaves the secrets out.
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub name: String,
    pub uri: String,
    /// `POST` or `PUT`.
    pub method: String,
    /// Sorted, no duplicates; each one of [`WEBHOOK_EVENT_TYPES`].
    pub event_types: Vec<String>,
    /// Sorted, no duplicates; empty for every account of the customer.
    pub account_ids: Vec<Uuid>,
    pub enabled: bool,
    /// Empty while enabled.
    pub disabled_reason: String,
    /// `whsec_` + base64.
    pub secret: String,
    /// The secret before the last rotation, signing beside `secret` until
    /// `previous_secret_until`.
    pub previous_secret: Option<String>,
    pub previous_secret_until: Option<DateTime<Utc>>,
    /// Since when every attempt has failed (the dispatcher's).
    pub failing_since: Option<DateTime<Utc>>,
    /// The key that made `CreateWebhook` idempotent, if any.
    pub idempotency_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("id", &self.id)
            .field("customer_id", &self.customer_id)
            .field("name", &self.name)
            .field("uri", &self.uri)
            .field("method", &self.method)
            .field("event_types", &self.event_types)
            .field("account_ids", &self.account_ids)
            .field("enabled", &self.enabled)
            .field("disabled_reason", &self.disabled_reason)
            .field("previous_secret_until", &self.previous_secret_until)
            .field("failing_since", &self.failing_since)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// Until when the previous secret signs, if it still does at `now`.
    pub fn previous_secret_expires_at(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.previous_secret
            .as_ref()
            .and(self.previous_secret_until)
            .filter(|until| now < *until)
    }
}

/// A new secret: `whsec_` + standard base64 of 32 bytes from the operating
/// system's CSPRNG.
pub fn new_secret() -> Result<String, StoreError> {
    let mut key = [0u8; SECRET_BYTES];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| StoreError::Config("the system's random number generator failed".into()))?;
    Ok(format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    ))
}

/// What `CreateWebhook` registers (already validated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewWebhook {
    pub customer_id: Uuid,
    pub name: String,
    pub uri: String,
    pub method: String,
    /// Sorted, no duplicates.
    pub event_types: Vec<String>,
    /// Sorted, no duplicates; accounts of `customer_id`.
    pub account_ids: Vec<Uuid>,
    pub idempotency_key: Option<String>,
}

/// An `UpdateWebhook`: `None` leaves a setting as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WebhookPatch {
    pub name: Option<String>,
    pub uri: Option<String>,
    pub method: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub account_ids: Option<Vec<Uuid>>,
    /// `Some(true)` enables it (clearing the reason and `failing_since`);
    /// `Some(false)` disables it with `disabled_reason`.
    pub enabled: Option<bool>,
    pub disabled_reason: String,
}

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Delivered, Self::Failed]
            .into_iter()
            .find(|status| status.as_str() == s)
    }
}

impl fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One delivery row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookDelivery {
    pub id: Uuid,
    pub webhook_id: Uuid,
    pub message_id: String,
    pub event_type: String,
    pub account_id: Uuid,
    pub account_version: i64,
    pub seq: i64,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub last_status_code: Option<i32>,
    pub last_error: String,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub replay: i32,
}

/// What a `ReplayWebhook` queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replay {
    /// Deliveries queued again.
    pub replayed: i64,
    /// Where the next call starts when there were more than the cap:
    /// the `created_at` of the first delivery left out.
    pub next_since: Option<DateTime<Utc>>,
}

/// A webhook request the store refuses (as distinct from a failure).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookRefusal {
    #[error("the customer already has {limit} webhooks, the most it may have")]
    TooManyWebhooks { limit: i64 },
    #[error("the idempotency key was used for another webhook request")]
    IdempotencyKeyReused,
    #[error("no such webhook")]
    WebhookNotFound,
    #[error("no such webhook delivery")]
    DeliveryNotFound,
    #[error("the webhook is disabled; enable it first")]
    WebhookDisabled,
    #[error("the delivery is {status}: only a failed delivery is sent again")]
    DeliveryNotFailed { status: DeliveryStatus },
}

impl WebhookRefusal {
    /// The ErrorInfo reason.
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::TooManyWebhooks { .. } => "TOO_MANY_WEBHOOKS",
            Self::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            Self::WebhookNotFound => "WEBHOOK_NOT_FOUND",
            Self::DeliveryNotFound => "WEBHOOK_DELIVERY_NOT_FOUND",
            Self::WebhookDisabled => "WEBHOOK_DISABLED",
            Self::DeliveryNotFailed { .. } => "DELIVERY_NOT_FAILED",
        }
    }
}

/// A webhook request's failure: refused, or the store failed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Refused(#[from] WebhookRefusal),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<tokio_postgres::Error> for WebhookError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Store(e.into())
    }
}

impl From<deadpool_postgres::PoolError> for WebhookError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Self::Store(e.into())
    }
}

const WEBHOOK_COLUMNS: &str = "id, customer_id, name, uri, method, event_types, account_ids, \
     enabled, disabled_reason, secret, previous_secret, previous_secret_until, failing_since, \
     idempotency_key, created_at, updated_at";

const DELIVERY_COLUMNS: &str = "id, webhook_id, message_id, event_type, account_id, \
     account_version, seq, status, attempts, last_status_code, last_error, next_attempt_at, \
     delivered_at, created_at, replay";

fn webhook_row(row: &Row) -> Webhook {
    Webhook {
        id: row.get("id"),
        customer_id: row.get("customer_id"),
        name: row.get("name"),
        uri: row.get("uri"),
        method: row.get("method"),
        event_types: row.get("event_types"),
        account_ids: row.get("account_ids"),
        enabled: row.get("enabled"),
        disabled_reason: row.get("disabled_reason"),
        secret: row.get("secret"),
        previous_secret: row.get("previous_secret"),
        previous_secret_until: row.get("previous_secret_until"),
        failing_since: row.get("failing_since"),
        idempotency_key: row.get("idempotency_key"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    }
}

fn delivery_row(row: &Row) -> Result<WebhookDelivery, StoreError> {
    let status: &str = row.get("status");
    Ok(WebhookDelivery {
        id: row.get("id"),
        webhook_id: row.get("webhook_id"),
        message_id: row.get("message_id"),
        event_type: row.get("event_type"),
        account_id: row.get("account_id"),
        account_version: row.get("account_version"),
        seq: row.get("seq"),
        status: DeliveryStatus::parse(status)
            .ok_or_else(|| StoreError::Corrupt(format!("delivery status `{status}`")))?,
        attempts: row.get("attempts"),
        last_status_code: row.get("last_status_code"),
        last_error: row.get("last_error"),
        next_attempt_at: row.get("next_attempt_at"),
        delivered_at: row.get("delivered_at"),
        created_at: row.get("created_at"),
        replay: row.get("replay"),
    })
}

/// Customers' webhooks and their deliveries, as the webhook API reads and
/// changes them ([`Store::webhooks`]).
#[derive(Clone, Copy, Debug)]
pub struct Webhooks<'a> {
    pub(crate) store: &'a Store,
}

impl Webhooks<'_> {
    /// Registers a webhook with a new secret, or, for a key already used by
    /// the customer, returns the webhook it made (the same key with other
    /// settings than it now has is refused). At most
    /// [`MAX_WEBHOOKS_PER_CUSTOMER`] per customer: the customer's webhooks
    /// are counted under a transaction-scoped advisory lock on the
    /// customer, so two concurrent creations cannot both take the last
    /// place.
    pub async fn create_webhook(self, new: &NewWebhook) -> Result<Webhook, WebhookError> {
        let secret = new_secret()?;
        let now = self.store.now();
        let mut client = self.store.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('webhooks of ' || $1::uuid::text, 0))",
            &[&new.customer_id],
        )
        .await?;
        if let Some(key) = &new.idempotency_key {
            let first = tx
                .query_opt(
                    &format!(
                        "SELECT {WEBHOOK_COLUMNS} FROM webhooks
                         WHERE customer_id = $1 AND idempotency_key = $2"
                    ),
                    &[&new.customer_id, key],
                )
                .await?;
            if let Some(row) = first {
                let first = webhook_row(&row);
                let same = first.name == new.name
                    && first.uri == new.uri
                    && first.method == new.method
                    && first.event_types == new.event_types
                    && first.account_ids == new.account_ids;
                if !same {
                    return Err(WebhookRefusal::IdempotencyKeyReused.into());
                }
                return Ok(first);
            }
        }
        let count: i64 = tx
            .query_one(
                "SELECT count(*) FROM webhooks WHERE customer_id = $1",
                &[&new.customer_id],
            )
            .await?
            .get(0);
        if count >= MAX_WEBHOOKS_PER_CUSTOMER {
            return Err(WebhookRefusal::TooManyWebhooks {
                limit: MAX_WEBHOOKS_PER_CUSTOMER,
            }
            .into());
        }
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO webhooks (id, customer_id, name, uri, method, event_types,
                         account_ids, secret, idempotency_key, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)
                     RETURNING {WEBHOOK_COLUMNS}"
                ),
                &[
                    &Uuid::now_v7(),
                    &new.customer_id,
                    &new.name,
                    &new.uri,
                    &new.method,
                    &new.event_types,
                    &new.account_ids,
                    &secret,
                    &new.idempotency_key,
                    &now,
                ],
            )
            .await?;
        tx.commit().await?;
        Ok(webhook_row(&row))
    }

    /// One webhook, secrets included.
    pub async fn webhook(self, id: Uuid) -> Result<Option<Webhook>, StoreError> {
        let client = self.store.pool.get().await?;
        let row = client
            .query_opt(
                &format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1"),
                &[&id],
            )
            .await?;
        Ok(row.as_ref().map(webhook_row))
    }

    /// A page of webhooks (one customer's, or every customer's), oldest
    /// first, after `after`.
    pub async fn list_webhooks(
        self,
        customer_id: Option<Uuid>,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<Webhook>, StoreError> {
        let client = self.store.pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {WEBHOOK_COLUMNS} FROM webhooks
                     WHERE ($1::uuid IS NULL OR customer_id = $1)
                       AND ($2::uuid IS NULL OR id > $2)
                     ORDER BY id LIMIT $3"
                ),
                &[&customer_id, &after, &limit],
            )
            .await?;
        Ok(rows.iter().map(webhook_row).collect())
    }

    /// Which of `account_ids` exist, with their customers.
    pub async fn account_customers(
        self,
        account_ids: &[Uuid],
    ) -> Result<Vec<(Uuid, Uuid)>, StoreError> {
        let client = self.store.pool.get().await?;
        let rows = client
            .query(
                "SELECT account_id, customer_id FROM accounts WHERE account_id = ANY($1)",
                &[&account_ids],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Changes a webhook's settings (`None`: no such webhook). Enabling
    /// clears `disabled_reason` and `failing_since`.
    pub async fn update_webhook(
        self,
        id: Uuid,
        patch: &WebhookPatch,
    ) -> Result<Option<Webhook>, StoreError> {
        let client = self.store.pool.get().await?;
        let row = client
            .query_opt(
                &format!(
                    "UPDATE webhooks SET
                         name = coalesce($2, name),
                         uri = coalesce($3, uri),
                         method = coalesce($4, method),
                         event_types = coalesce($5, event_types),
                         account_ids = coalesce($6, account_ids),
                         enabled = coalesce($7, enabled),
                         disabled_reason = CASE $7 WHEN true THEN ''
                                                   WHEN false THEN $8
                                                   ELSE disabled_reason END,
                         failing_since = CASE WHEN $7 THEN NULL ELSE failing_since END,
                         updated_at = $9
                     WHERE id = $1
                     RETURNING {WEBHOOK_COLUMNS}"
                ),
                &[
                    &id,
                    &patch.name,
                    &patch.uri,
                    &patch.method,
                    &patch.event_types,
                    &patch.account_ids,
                    &patch.enabled,
                    &patch.disabled_reason,
                    &self.store.now(),
                ],
            )
            .await?;
        Ok(row.as_ref().map(webhook_row))
    }

    /// Removes a webhook and its deliveries. `false`: no such webhook.
    pub async fn delete_webhook(self, id: Uuid) -> Result<bool, StoreError> {
        let client = self.store.pool.get().await?;
        Ok(client
            .execute("DELETE FROM webhooks WHERE id = $1", &[&id])
            .await?
            == 1)
    }

    /// A new secret for a webhook; the current one signs beside it for
    /// `overlap` (none when zero). `None`: no such webhook.
    pub async fn rotate_webhook_secret(
        self,
        id: Uuid,
        overlap: Duration,
    ) -> Result<Option<Webhook>, StoreError> {
        let secret = new_secret()?;
        let now = self.store.now();
        let until = (overlap > Duration::zero()).then(|| now + overlap);
        let client = self.store.pool.get().await?;
        let row = client
            .query_opt(
                &format!(
                    "UPDATE webhooks SET
                         previous_secret = CASE WHEN $3::timestamptz IS NULL THEN NULL ELSE secret END,
                         previous_secret_until = $3,
                         secret = $2,
                         updated_at = $4
                     WHERE id = $1
                     RETURNING {WEBHOOK_COLUMNS}"
                ),
                &[&id, &secret, &until, &now],
            )
            .await?;
        Ok(row.as_ref().map(webhook_row))
    }

    /// A page of a webhook's deliveries, newest first (by id, a UUID v7),
    /// before `before`, optionally in one status.
    pub async fn webhook_deliveries(
        self,
        webhook_id: Uuid,
        status: Option<DeliveryStatus>,
        before: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        let client = self.store.pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries
                     WHERE webhook_id = $1
                       AND ($2::text IS NULL OR status = $2)
                       AND ($3::uuid IS NULL OR id < $3)
                     ORDER BY id DESC LIMIT $4"
                ),
                &[
                    &webhook_id,
                    &status.map(DeliveryStatus::as_str),
                    &before,
                    &limit,
                ],
            )
            .await?;
        rows.iter().map(delivery_row).collect()
    }

    /// One delivery, with the customer its webhook belongs to.
    pub async fn webhook_delivery(
        self,
        id: Uuid,
    ) -> Result<Option<(WebhookDelivery, Uuid)>, StoreError> {
        let client = self.store.pool.get().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT {DELIVERY_COLUMNS}, (SELECT customer_id FROM webhooks w
                                                 WHERE w.id = d.webhook_id) AS customer_id
                     FROM webhook_deliveries d WHERE id = $1"
                ),
                &[&id],
            )
            .await?;
        row.map(|row| Ok((delivery_row(&row)?, row.get("customer_id"))))
            .transpose()
    }

    /// Sends a failed delivery again: pending, due now (or when a pending
    /// one it waits behind is), its attempts from zero (the retry schedule
    /// starts over). Refused for a delivery that
    /// is not failed, and for a disabled webhook's.
    pub async fn retry_webhook_delivery(self, id: Uuid) -> Result<WebhookDelivery, WebhookError> {
        let now = self.store.now();
        let mut client = self.store.pool.get().await?;
        let tx = client.transaction().await?;
        let found = tx
            .query_opt(
                "SELECT d.status, w.enabled FROM webhook_deliveries d
                 JOIN webhooks w ON w.id = d.webhook_id
                 WHERE d.id = $1 FOR UPDATE OF d",
                &[&id],
            )
            .await?
            .ok_or(WebhookRefusal::DeliveryNotFound)?;
        let status: &str = found.get(0);
        let status = DeliveryStatus::parse(status)
            .ok_or_else(|| StoreError::Corrupt(format!("delivery status `{status}`")))?;
        if !found.get::<_, bool>(1) {
            return Err(WebhookRefusal::WebhookDisabled.into());
        }
        if status != DeliveryStatus::Failed {
            return Err(WebhookRefusal::DeliveryNotFailed { status }.into());
        }
        let row = tx
            .query_one(
                &format!(
                    "UPDATE webhook_deliveries d
                     SET status = 'pending', attempts = 0, locked_until = NULL, delivered_at = NULL,
                         -- Due now unless it waits behind another of its
                         -- webhook and account (deliveries.rs: order).
                         next_attempt_at = CASE WHEN NOT EXISTS (
                             SELECT 1 FROM webhook_deliveries e
                             WHERE e.webhook_id = d.webhook_id AND e.account_id = d.account_id
                               AND e.status = 'pending' AND e.seq < d.seq) THEN $2::timestamptz END
                     WHERE id = $1
                     RETURNING {DELIVERY_COLUMNS}"
                ),
                &[&id, &now],
            )
            .await?;
        tx.commit().await?;
        Ok(delivery_row(&row)?)
    }

    /// Queues again every change and alert queued for a webhook since
    /// `since` (by when its first delivery was queued): one new pending
    /// delivery per (account, version, event type), due now (or when the
    /// pending one it waits behind is), with the first delivery's message
    /// id and the next replay number, inserted in the order the changes
    /// were first queued (so after everything already queued, in order per
    /// account). At most `cap`; the rest is left for a call from
    /// [`Replay::next_since`].
    ///
    /// Replays of one webhook take turns: each locks the webhook's row
    /// (`FOR NO KEY UPDATE`, which the deliveries' foreign key checks do
    /// not wait for) before reading the replay numbers, so two at once
    /// number their copies one after the other instead of both taking the
    /// same next number (a unique violation, which was INTERNAL).
    pub async fn replay_webhook(
        self,
        webhook_id: Uuid,
        since: DateTime<Utc>,
        cap: i64,
    ) -> Result<Replay, WebhookError> {
        let mut client = self.store.pool.get().await?;
        let tx = client.transaction().await?;
        let enabled: bool = tx
            .query_opt(
                "SELECT enabled FROM webhooks WHERE id = $1 FOR NO KEY UPDATE",
                &[&webhook_id],
            )
            .await?
            .ok_or(WebhookRefusal::WebhookNotFound)?
            .get(0);
        if !enabled {
            return Err(WebhookRefusal::WebhookDisabled.into());
        }
        // After the turn: copies are queued after the previous replay's.
        let now = self.store.now();
        // The changes queued since `since` (their first deliveries, in the
        // order they were queued, with their message ids), each with the
        // next replay number: the first `cap`, and one more to know where
        // the next call starts. A replay's own copies are not changes: a
        // change replayed before is found by its first delivery's time.
        let rows = tx
            .query(
                "SELECT o.account_id, o.account_version, o.event_type, o.message_id,
                        o.created_at AS first_at,
                        (SELECT max(r.replay) + 1 FROM webhook_deliveries r
                         WHERE r.webhook_id = o.webhook_id AND r.account_id = o.account_id
                           AND r.account_version = o.account_version
                           AND r.event_type = o.event_type) AS next_replay
                 FROM webhook_deliveries o
                 WHERE o.webhook_id = $1 AND o.replay = 0 AND o.created_at >= $2
                 ORDER BY o.created_at, o.seq
                 LIMIT $3",
                &[&webhook_id, &since, &cap.saturating_add(1)],
            )
            .await?;
        let take = usize::try_from(cap).unwrap_or(0).min(rows.len());
        let next_since: Option<DateTime<Utc>> = rows.get(take).map(|r| r.get("first_at"));
        let rows = &rows[..take];
        // Ids made here, in order (v7), and `seq` taken in the same order
        // (the insert reads the arrays by position).
        let ids: Vec<Uuid> = rows.iter().map(|_| Uuid::now_v7()).collect();
        let accounts: Vec<Uuid> = rows.iter().map(|r| r.get("account_id")).collect();
        let versions: Vec<i64> = rows.iter().map(|r| r.get("account_version")).collect();
        let event_types: Vec<String> = rows.iter().map(|r| r.get("event_type")).collect();
        let message_ids: Vec<String> = rows.iter().map(|r| r.get("message_id")).collect();
        let replays: Vec<i32> = rows.iter().map(|r| r.get("next_replay")).collect();
        let replayed = tx
            .execute(
                "INSERT INTO webhook_deliveries (id, webhook_id, message_id, event_type,
                     account_id, account_version, status, next_attempt_at, created_at, replay)
                 SELECT c.id, $1, c.message_id, c.event_type, c.account_id, c.account_version,
                        'pending',
                        -- Due now only as its account's head: the first copy
                        -- with nothing pending before it (deliveries.rs: order).
                        CASE WHEN c.nth = 1 AND NOT EXISTS (
                                 SELECT 1 FROM webhook_deliveries d
                                 WHERE d.webhook_id = $1 AND d.account_id = c.account_id
                                   AND d.status = 'pending')
                             THEN $2::timestamptz END,
                        $2, c.replay
                 FROM (SELECT u.*, row_number() OVER (PARTITION BY u.account_id ORDER BY u.n) AS nth
                       FROM unnest($3::uuid[], $4::text[], $5::text[], $6::uuid[], $7::bigint[],
                                   $8::int[])
                            WITH ORDINALITY
                            AS u (id, message_id, event_type, account_id, account_version, replay, n)
                      ) AS c
                 ORDER BY c.n",
                &[
                    &webhook_id,
                    &now,
                    &ids,
                    &message_ids,
                    &event_types,
                    &accounts,
                    &versions,
                    &replays,
                ],
            )
            .await?;
        tx.commit().await?;
        Ok(Replay {
            replayed: i64::try_from(replayed).unwrap_or(i64::MAX),
            next_since,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A secret's HMAC key: the base64 after `whsec_`, decoded.
    fn secret_key(secret: &str) -> Option<Vec<u8>> {
        base64::engine::general_purpose::STANDARD
            .decode(secret.strip_prefix(SECRET_PREFIX)?)
            .ok()
    }

    #[test]
    fn a_new_secret_is_whsec_and_32_random_bytes() {
        let a = new_secret().unwrap();
        let b = new_secret().unwrap();
        assert!(a.starts_with("whsec_"), "{a}");
        assert_eq!(secret_key(&a).unwrap().len(), SECRET_BYTES);
        assert_ne!(a, b);
        assert!(secret_key("whsec_not base64!").is_none());
        assert!(secret_key("nope").is_none());
    }
}

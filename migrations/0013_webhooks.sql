-- Customer webhooks: endpoints customers register, and the durable
-- deliveries the dispatcher role makes from the event feed and sends.
--
-- Nothing here is an event: a webhook's settings are configuration, not
-- money, and a delivery's attempts are the dispatcher's bookkeeping. Both
-- are plain rows, changed in place.

CREATE TABLE webhooks (
    id                       uuid        PRIMARY KEY,
    customer_id              uuid        NOT NULL,
    name                     text        NOT NULL,
    uri                      text        NOT NULL,
    method                   text        NOT NULL CHECK (method IN ('POST', 'PUT')),
    -- account_updated, balance_low, balance_recovered, credit_limit_exceeded.
    event_types              text[]      NOT NULL,
    -- Only these accounts of the customer; empty for all of them.
    account_ids              uuid[]      NOT NULL DEFAULT '{}',
    enabled                  boolean     NOT NULL DEFAULT true,
    disabled_reason          text        NOT NULL DEFAULT '',
    -- `whsec_` + base64 of the key's bytes. The previous secret keeps
    -- signing beside it until previous_secret_until (a rotation's overlap).
    secret                   text        NOT NULL,
    previous_secret          text,
    previous_secret_until    timestamptz,
    -- Since when every attempt to this endpoint has failed (NULL once one
    -- succeeds): past the configured window the webhook is disabled.
    failing_since            timestamptz,
    -- Who made it and the key that made CreateWebhook idempotent.
    idempotency_key          text,
    created_at               timestamptz NOT NULL,
    updated_at               timestamptz NOT NULL,
    CONSTRAINT webhooks_idempotency_key UNIQUE (customer_id, idempotency_key)
);

CREATE INDEX webhooks_customer_idx ON webhooks (customer_id, id);

-- One row per (webhook, change or alert) to send. The message id (the
-- `webhook-id` header) is the same on every attempt and on a replay, so a
-- receiver deduplicates by it.
CREATE TABLE webhook_deliveries (
    id                uuid        PRIMARY KEY,
    webhook_id        uuid        NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    message_id        text        NOT NULL,
    event_type        text        NOT NULL,
    account_id        uuid        NOT NULL,
    account_version   bigint      NOT NULL,
    -- Deliveries of one webhook and account are sent in this order (a
    -- replay's copies after everything before them).
    seq               bigserial   NOT NULL,
    -- pending, delivered, failed.
    status            text        NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts          integer     NOT NULL DEFAULT 0,
    last_status_code  integer,
    last_error        text        NOT NULL DEFAULT '',
    next_attempt_at   timestamptz,
    delivered_at      timestamptz,
    -- A dispatcher sending it holds it until then (NULL when nobody does).
    locked_until      timestamptz,
    created_at        timestamptz NOT NULL,
    -- 0 for the delivery the feed made; a replay's copy counts up.
    replay            integer     NOT NULL DEFAULT 0,
    CONSTRAINT webhook_deliveries_once
        UNIQUE (webhook_id, account_id, account_version, event_type, replay)
);

-- What a dispatcher looks for: pending deliveries, by when they are due.
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
-- Order per webhook and account: is an earlier one still pending?
CREATE INDEX webhook_deliveries_order_idx ON webhook_deliveries (webhook_id, account_id, seq)
    WHERE status = 'pending';
-- ListWebhookDeliveries: a webhook's deliveries, newest first.
CREATE INDEX webhook_deliveries_webhook_idx ON webhook_deliveries (webhook_id, id);

-- The dispatcher's place in the feed: the head as this migration runs (no
-- webhook exists before it, so nothing behind the head is for one).
INSERT INTO feed_checkpoints (name, xid, position)
SELECT 'webhooks', COALESCE(head.xid, '0'), COALESCE(head.position, 0)
FROM (SELECT 1) AS one
LEFT JOIN LATERAL (
    SELECT xid, position FROM events
    WHERE xid < pg_snapshot_xmin(pg_current_snapshot())
    ORDER BY xid DESC, position DESC
    LIMIT 1
) AS head ON true;

-- The event store: balance events are the source of truth. The events table
-- is append-only and doubles as the outbox that the projector and publisher
-- follow with the (xid, position) cursor.

CREATE TABLE events (
    -- Global insertion order. A bigserial handed out in concurrent
    -- transactions commits out of order, so readers never follow it alone.
    position         bigserial   PRIMARY KEY,
    -- The writing transaction; readers only read below the snapshot's xmin.
    xid              xid8        NOT NULL DEFAULT pg_current_xact_id(),
    event_id         uuid        NOT NULL UNIQUE,
    account_id       uuid        NOT NULL,
    version          bigint      NOT NULL CHECK (version > 0),
    event_type       text        NOT NULL,
    schema_version   integer     NOT NULL,
    occurred_at      timestamptz NOT NULL,
    actor_principal  text        NOT NULL,
    actor_role       text        NOT NULL,
    idempotency_key  text,
    trace_id         text,
    payload          jsonb       NOT NULL,
    -- Balances after the event, so a consumer can act without calling back.
    balance_credit   bigint      NOT NULL,
    balance_token    bigint      NOT NULL,
    reserved_credit  bigint      NOT NULL,
    reserved_token   bigint      NOT NULL,
    available_credit bigint      NOT NULL,
    available_token  bigint      NOT NULL,
    CONSTRAINT events_account_version_key UNIQUE (account_id, version)
);

CREATE INDEX events_feed_idx ON events (xid, position);

CREATE FUNCTION events_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the events table is append-only (% refused)', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_refuse_change();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();

-- Wakes feed readers; they poll as well, so a lost notification only delays.
CREATE FUNCTION events_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('billing_events', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_notify
    AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_notify();

-- The command side's state: the fold of each account's events, written in
-- the same transaction as the events. Rebuildable from the events.
CREATE TABLE accounts (
    account_id  uuid        PRIMARY KEY,
    customer_id uuid        NOT NULL,
    version     bigint      NOT NULL,
    state       jsonb       NOT NULL,
    -- When the monthly token reset is due, for the sweeper.
    next_topup  timestamptz,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);

CREATE INDEX accounts_customer_idx ON accounts (customer_id);
CREATE INDEX accounts_next_topup_idx ON accounts (next_topup) WHERE next_topup IS NOT NULL;

-- Reservations by the caller's id: live holds, and resolved ones so that a
-- repeated commit returns its first result.
CREATE TABLE reservations (
    reservation_id   text        PRIMARY KEY,
    account_id       uuid        NOT NULL REFERENCES accounts (account_id),
    status           text        NOT NULL
        CHECK (status IN ('active', 'committed', 'released', 'expired')),
    hold             jsonb       NOT NULL,
    expires_at       timestamptz NOT NULL,
    commit_outcome   jsonb,
    -- The account version the resolution was recorded at.
    resolved_version bigint,
    updated_at       timestamptz NOT NULL
);

CREATE INDEX reservations_live_idx ON reservations (account_id) WHERE status = 'active';
CREATE INDEX reservations_expiry_idx ON reservations (expires_at) WHERE status = 'active';

-- Idempotency records, written in the same transaction as the events they
-- describe: the same key and request replays the outcome; the same key with
-- another request is refused.
CREATE TABLE idempotency_keys (
    idempotency_key text        PRIMARY KEY,
    operation       text        NOT NULL,
    request_hash    bytea       NOT NULL,
    account_id      uuid,
    outcome         jsonb       NOT NULL,
    created_at      timestamptz NOT NULL
);

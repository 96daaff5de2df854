-- Read models, kept by the projection worker from the event feed and
-- rebuildable from the events at any time. Nothing but the projector writes
-- them, and every column is a function of the events (no now(), no random).

-- Where each feed reader has got to: the last event it has handled.
CREATE TABLE feed_checkpoints (
    name       text   PRIMARY KEY,
    xid        xid8   NOT NULL,
    position   bigint NOT NULL
);

INSERT INTO feed_checkpoints (name, xid, position) VALUES ('read_models', '0', 0);

-- Accounts as of their last projected event.
CREATE TABLE rm_accounts (
    account_id       uuid        PRIMARY KEY,
    customer_id      uuid        NOT NULL,
    version          bigint      NOT NULL,
    -- The folded account (without holds), as the domain's evolve leaves it.
    state            jsonb       NOT NULL,
    balance_credit   bigint      NOT NULL,
    balance_token    bigint      NOT NULL,
    reserved_credit  bigint      NOT NULL,
    reserved_token   bigint      NOT NULL,
    available_credit bigint      NOT NULL,
    available_token  bigint      NOT NULL,
    tm_create        timestamptz NOT NULL,
    tm_update        timestamptz NOT NULL
);

CREATE INDEX rm_accounts_customer_idx ON rm_accounts (customer_id, account_id);

-- One row per money movement. Its id is the event's id.
CREATE TABLE ledger_entries (
    id                   uuid        PRIMARY KEY,
    account_id           uuid        NOT NULL,
    version              bigint      NOT NULL,
    transaction_type     text        NOT NULL,
    reference_type       text        NOT NULL,
    reference_id         text        NOT NULL,
    service_type         text,
    billable_units       bigint,
    rate_token_per_unit  bigint,
    rate_credit_per_unit bigint,
    amount_token         bigint      NOT NULL,
    amount_credit        bigint      NOT NULL,
    balance_token_after  bigint      NOT NULL,
    balance_credit_after bigint      NOT NULL,
    actor_principal      text        NOT NULL,
    actor_role           text        NOT NULL,
    tm_create            timestamptz NOT NULL,
    CONSTRAINT ledger_entries_account_version_key UNIQUE (account_id, version)
);

CREATE INDEX ledger_entries_account_time_idx ON ledger_entries (account_id, tm_create);

-- A hash chain per account (crates/billing-store/src/chain.rs): each event's
-- hash covers its stored content and the previous event's hash, so an edit
-- of history made behind the append-only triggers' back shows. Events
-- written before this migration have none; their accounts' chains start at
-- the next event.
ALTER TABLE events ADD COLUMN hash bytea CHECK (octet_length(hash) = 32);

-- Digests of every account's chain head, recorded periodically: a point in
-- time an auditor can pin history to. Append-only, like the events.
CREATE TABLE chain_digests (
    recorded_at timestamptz PRIMARY KEY,
    accounts    bigint      NOT NULL,
    events      bigint      NOT NULL,
    digest      bytea       NOT NULL CHECK (octet_length(digest) = 32)
);

CREATE TRIGGER chain_digests_append_only
    BEFORE UPDATE OR DELETE ON chain_digests
    FOR EACH ROW EXECUTE FUNCTION events_refuse_change();

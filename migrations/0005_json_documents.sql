-- The documents the service stores (event payloads, the account view after
-- each event, states, holds, outcomes) are written and read whole, never
-- queried inside by SQL. `json` keeps their text as written: no binary
-- conversion when a batch inserts them, and none when the projector and the
-- publisher read every event back (jsonb's output conversion was a large
-- part of PostgreSQL's CPU per change).
ALTER TABLE events
    ALTER COLUMN payload TYPE json USING payload::json,
    ALTER COLUMN account_after TYPE json USING account_after::json;
ALTER TABLE accounts ALTER COLUMN state TYPE json USING state::json;
ALTER TABLE reservations
    ALTER COLUMN hold TYPE json USING hold::json,
    ALTER COLUMN commit_outcome TYPE json USING commit_outcome::json;
ALTER TABLE idempotency_keys ALTER COLUMN outcome TYPE json USING outcome::json;
ALTER TABLE rm_accounts ALTER COLUMN state TYPE json USING state::json;

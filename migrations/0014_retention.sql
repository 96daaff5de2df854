-- billing: no transaction
--
-- Retention (crates/billing-store/src/retention.rs): the sweeper removes
-- idempotency records and resolved reservations once they are older than
-- their windows, a small batch at a time, oldest first. These indexes find
-- them without reading the rest. Both tables are populated in a running
-- deployment and written by every command, so the indexes are built
-- CONCURRENTLY (no lock that stops the command path's writes): this
-- migration runs outside a transaction, one statement at a time
-- (`migrate.rs`), and every statement may run again after an interruption
-- (an index an interrupted build left invalid is dropped first).

-- Records by age. Written once and never updated; retention keeps the
-- table (and this index) at the window's worth of rows.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idempotency_keys_created_idx
    ON idempotency_keys (created_at);

-- Resolved reservations by the time they were resolved (a reservation row
-- is updated for the last time when it is committed, released or expired).
-- Live holds are not in it: the command path's own reads and updates never
-- touch its entries.
CREATE INDEX CONCURRENTLY IF NOT EXISTS reservations_resolved_idx
    ON reservations (updated_at) WHERE status <> 'active';

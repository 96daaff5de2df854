-- Storage per event (issue 25): the unique index on events.event_id goes.
-- Nothing looks an event up by its id (readers follow the feed's
-- (xid, position) index, an account's events come by (account_id, version),
-- which stays unique and is what stops an event being appended twice), and
-- every id is a UUIDv7 the writer makes for the event it appends, so the
-- index only cost about 30 bytes of disk and an index insert per event.
--
-- Dropping it takes the table's lock for a moment and rewrites nothing; the
-- lock_timeout makes a migration stuck behind a long transaction fail (and
-- be retried on the next start) instead of holding up the command path.
SET LOCAL lock_timeout = '5s';
ALTER TABLE events DROP CONSTRAINT IF EXISTS events_event_id_key;

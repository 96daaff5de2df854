-- Each event also carries the whole account view after it, so the outbox
-- (the Kafka publisher) needs no state of its own to say what an account
-- looks like after a change. Null on events written before this migration.
ALTER TABLE events ADD COLUMN account_after jsonb;

-- The Kafka publisher's place in the feed.
INSERT INTO feed_checkpoints (name, xid, position) VALUES ('kafka', '0', 0);

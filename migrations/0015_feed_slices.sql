-- Partitioned readers (crates/billing-store/src/feed/slices.rs): the
-- projector, the publisher and the webhook dispatcher's recorder split the
-- accounts into 8 slices (`billing_store::SLICES`) by a stable hash of the
-- account id, and keep one checkpoint per slice, `{name}/{index}`, each with
-- a lease of its own.
--
-- Every slice starts at the single checkpoint as it is now: each slice's
-- events up to it are handled, and those after it are handled again at
-- most (the projector skips versions it has applied; the publisher and the
-- recorder are at least once). The single rows stay for the release before,
-- which keeps reading them during a rolling deploy; a process of this
-- release takes their lease keys in shared mode, so the two releases are
-- never active at once (README, "Scaling each role").
--
-- The number of slices is fixed here: changing it needs every reader
-- stopped and a migration that makes the new rows at the oldest of the old
-- ones (README).
INSERT INTO feed_checkpoints (name, xid, position)
SELECT c.name || '/' || slice, c.xid, c.position
FROM feed_checkpoints c
CROSS JOIN generate_series(0, 7) AS slice
WHERE c.name IN ('read_models', 'kafka', 'webhooks')
ON CONFLICT (name) DO NOTHING;

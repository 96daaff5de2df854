//! The command path's statements, prepared once per writer connection. Each
//! takes whole columns as arrays, so one statement serves a whole batch.

/// The batch's account locks, in the order given (sorted, so two writers
/// never wait on each other in a cycle). Advisory locks assign no
/// transaction id: the batch's xid comes at its first write, after the
/// previous holder committed, so per account the feed's order is version
/// order.
pub(crate) const LOCK: &str = "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k";

/// Each account's stored version; its state and live holds only where the
/// writer's cached copy ($2, -1 for none) is not at that version. A missing
/// account comes back with a null version.
pub(crate) const LOAD_ACCOUNTS: &str = "
SELECT w.account_id, a.version,
       CASE WHEN a.version IS DISTINCT FROM w.cached THEN a.state END,
       CASE WHEN a.version IS DISTINCT FROM w.cached THEN
           (SELECT coalesce(json_agg(r.hold), '[]'::json) FROM reservations r
            WHERE r.account_id = a.account_id AND r.status = 'active')
       END
FROM unnest($1::uuid[], $2::bigint[]) AS w(account_id, cached)
LEFT JOIN accounts a ON a.account_id = w.account_id";

/// With the account view of the event a stored outcome names (outcomes are
/// stored without it where that event has it: `outcome.rs`).
pub(crate) const LOAD_KEYS: &str = "
SELECT k.idempotency_key, k.operation, k.request_hash, k.outcome, e.account_after
FROM idempotency_keys k
LEFT JOIN events e
       ON e.account_id = k.account_id
      AND e.version = (k.outcome->>'account_version')::bigint
WHERE k.idempotency_key = ANY($1::text[])";

/// With a commit's outcome, the account view of the event it names (the
/// outcome is stored without it).
pub(crate) const LOAD_RESERVATIONS: &str = "
SELECT r.reservation_id, r.hold, r.status, r.commit_outcome, coalesce(r.resolved_version, 0),
       e.account_after
FROM reservations r
LEFT JOIN events e
       ON e.account_id = r.account_id
      AND e.version = (r.commit_outcome->>'account_version')::bigint
WHERE r.reservation_id = ANY($1::text[])";

/// A batch's writes, in one call (`migrations/0011_write_batch_fenced_updates.sql`):
/// the fast path's locks and fence, then the accounts (each update fenced by
/// the version and chain head it was decided from), events, reservations and
/// idempotency records, each as whole columns.
pub(crate) const WRITE_BATCH: &str = "
SELECT billing_write_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                           $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30,
                           $31, $32, $33, $34, $35, $36, $37, $38, $39, $40, $41, $42, $43, $44,
                           $45, $46, $47, $48, $49, $50, $51, $52, $53, $54, $55, $56, $57, $58,
                           $59)";

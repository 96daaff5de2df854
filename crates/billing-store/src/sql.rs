//! The command path's statements, prepared once per writer connection. Each
//! takes whole columns as arrays, so one statement serves a whole batch.

/// The batch's account locks, in the order given (sorted, so two writers
/// never wait on each other in a cycle). Advisory locks assign no
/// transaction id: the batch's xid comes at its first write, after the
/// previous holder committed, so per account the feed's order is version
/// order.
pub(crate) const LOCK: &str = "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k";

/// The fast path's check that every account is still as its copy was
/// decided from (sent right after the locks): at that version, with that
/// event at its head. A version alone names a state only once committed; a
/// copy decided from a batch still in flight is named by its head, which
/// covers the events it wrote. Otherwise a serialization failure aborts the
/// batch, which then runs the long way.
pub(crate) const FENCE: &str = "
SELECT billing_expect_rows('fenced accounts', cardinality($1::uuid[]), count(*))
FROM unnest($1::uuid[], $2::bigint[], $3::bytea[]) AS w(id, version, head)
JOIN accounts a ON a.account_id = w.id AND a.version = w.version
WHERE w.head IS NULL
   OR EXISTS (SELECT 1 FROM events e
              WHERE e.account_id = w.id AND e.version = w.version AND e.hash = w.head)";

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

pub(crate) const INSERT_ACCOUNTS: &str = "
INSERT INTO accounts (account_id, customer_id, version, state, next_due, created_at, updated_at)
SELECT a.id, a.customer, a.version, a.state, a.next_due, a.at, a.at
FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::json[], $5::timestamptz[], $6::timestamptz[])
     AS a(id, customer, version, state, next_due, at)";

/// Fenced by the version each account was decided from; a row that moved
/// fails the statement (and so the batch) with a serialization failure.
pub(crate) const UPDATE_ACCOUNTS: &str = "
WITH changed AS (
    UPDATE accounts a
    SET state = w.state, version = w.version, next_due = w.next_due, updated_at = w.at
    FROM unnest($1::uuid[], $2::json[], $3::bigint[], $4::timestamptz[], $5::timestamptz[], $6::bigint[])
         AS w(id, state, version, next_due, at, expected)
    WHERE a.account_id = w.id AND a.version = w.expected
    RETURNING 1
)
SELECT billing_expect_rows('accounts', cardinality($1::uuid[]), count(*)) FROM changed";

/// In batch order, so per account in version order. The unique
/// (account_id, version) key refuses a second writer of a version.
pub(crate) const INSERT_EVENTS: &str = "
INSERT INTO events (event_id, account_id, version, event_type, schema_version, occurred_at,
                    actor_principal, actor_role, idempotency_key, trace_id, payload,
                    balance_credit, balance_token, reserved_credit, reserved_token,
                    available_credit, available_token, account_after, hash, span_id)
SELECT e.id, e.account_id, e.version, e.kind, $1, e.occurred, e.principal, e.role, e.key, e.trace,
       e.payload, e.bc, e.bt, e.rc, e.rt, e.ac, e.avt, e.account_after, e.hash, e.span
FROM unnest($2::uuid[], $3::uuid[], $4::bigint[], $5::text[], $6::timestamptz[], $7::text[],
            $8::text[], $9::text[], $10::text[], $11::json[], $12::bigint[], $13::bigint[],
            $14::bigint[], $15::bigint[], $16::bigint[], $17::bigint[], $18::json[], $19::bytea[],
            $20::text[])
     WITH ORDINALITY
     AS e(id, account_id, version, kind, occurred, principal, role, key, trace, payload,
          bc, bt, rc, rt, ac, avt, account_after, hash, span, n)
ORDER BY e.n";

/// New reservations: an id already taken (by any account) is a unique
/// violation, never an overwrite.
pub(crate) const INSERT_RESERVATIONS: &str = "
INSERT INTO reservations (reservation_id, account_id, status, hold, expires_at,
                          commit_outcome, resolved_version, updated_at)
SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::json[], $5::timestamptz[],
                     $6::json[], $7::bigint[], $8::timestamptz[])";

pub(crate) const UPDATE_RESERVATIONS: &str = "
WITH changed AS (
    UPDATE reservations r
    SET status = w.status, hold = coalesce(w.hold, r.hold), expires_at = w.expires_at,
        commit_outcome = w.commit_outcome, resolved_version = w.resolved_version,
        updated_at = w.at
    FROM unnest($1::text[], $2::uuid[], $3::text[], $4::json[], $5::timestamptz[],
                $6::json[], $7::bigint[], $8::timestamptz[])
         AS w(id, account_id, status, hold, expires_at, commit_outcome, resolved_version, at)
    WHERE r.reservation_id = w.id AND r.account_id = w.account_id
    RETURNING 1
)
SELECT billing_expect_rows('reservations', cardinality($1::text[]), count(*)) FROM changed";

/// A concurrent first use of a key (on another writer or replica) is a
/// unique violation: the batch is retried and then replays that first answer.
pub(crate) const INSERT_KEYS: &str = "
INSERT INTO idempotency_keys (idempotency_key, operation, request_hash, account_id, outcome, created_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::uuid[], $5::json[], $6::timestamptz[])";

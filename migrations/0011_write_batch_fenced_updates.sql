-- billing_write_batch, with each updated account fenced by its update.
--
-- In 0010's version the fast path's fence was a statement of its own over
-- every account of the batch, and each row count was checked by a call of
-- billing_expect_rows: statements that PostgreSQL starts and ends like any
-- other (executor start-up was a tenth of the writer backend's CPU, under
-- callgrind). Here an account the batch updates is fenced by its UPDATE,
-- whose WHERE asks for the version and the chain head it was decided from;
-- the fence proper is left with the accounts decided from but not written
-- (every command on them rejected), an empty array on most batches. Row
-- counts are compared in plpgsql, and billing_expect_rows is called only to
-- raise.
--
-- 0010's function (58 arguments) stays for pods of the release before
-- during a rolling deploy; this one takes 59 (updated_heads).
CREATE FUNCTION billing_write_batch(
    lock_keys bigint[],
    fence_ids uuid[], fence_versions bigint[], fence_heads bytea[],
    created_ids uuid[], created_customers uuid[], created_versions bigint[],
    created_states json[], created_due timestamptz[], created_at_ timestamptz[],
    updated_ids uuid[], updated_states json[], updated_versions bigint[],
    updated_due timestamptz[], updated_at_ timestamptz[], updated_expected bigint[],
    updated_heads bytea[],
    event_schema integer,
    event_ids uuid[], event_accounts uuid[], event_versions bigint[], event_types text[],
    event_times timestamptz[], event_principals text[], event_roles text[], event_keys text[],
    event_traces text[], event_payloads json[], event_bc bigint[], event_bt bigint[],
    event_rc bigint[], event_rt bigint[], event_ac bigint[], event_avt bigint[],
    event_views json[], event_hashes bytea[], event_spans text[],
    new_res_ids text[], new_res_accounts uuid[], new_res_statuses text[], new_res_holds json[],
    new_res_expiry timestamptz[], new_res_commits json[], new_res_resolved bigint[],
    new_res_at timestamptz[],
    res_ids text[], res_accounts uuid[], res_statuses text[], res_holds json[],
    res_expiry timestamptz[], res_commits json[], res_resolved bigint[], res_at timestamptz[],
    key_names text[], key_operations text[], key_hashes bytea[], key_accounts uuid[],
    key_outcomes json[], key_at timestamptz[]
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    written bigint;
BEGIN
    -- The batch's account locks, in the order given (sorted, so two
    -- writers never wait on each other in a cycle). Advisory locks assign
    -- no transaction id: the batch's xid comes at its first write, after
    -- the previous holder committed, so per account the feed's order is
    -- version order.
    IF cardinality(lock_keys) > 0 THEN
        PERFORM pg_advisory_xact_lock(k) FROM unnest(lock_keys) AS k;
    END IF;

    -- The fast path's check that an account decided from but not written
    -- is still as its copy was: at that version, with that event at its
    -- head. A version alone names a state only once committed; a copy
    -- decided from a batch still in flight is named by its head, which
    -- covers the events it wrote.
    IF cardinality(fence_ids) > 0 THEN
        SELECT count(*) INTO written
        FROM unnest(fence_ids, fence_versions, fence_heads) AS w(id, version, head)
        JOIN accounts a ON a.account_id = w.id AND a.version = w.version
        WHERE w.head IS NULL
           OR EXISTS (SELECT 1 FROM events e
                      WHERE e.account_id = w.id AND e.version = w.version AND e.hash = w.head);
        IF written <> cardinality(fence_ids) THEN
            PERFORM billing_expect_rows('fenced accounts', cardinality(fence_ids), written);
        END IF;
    END IF;

    IF cardinality(created_ids) > 0 THEN
        INSERT INTO accounts (account_id, customer_id, version, state, next_due, created_at, updated_at)
        SELECT a.id, a.customer, a.version, a.state, a.next_due, a.at, a.at
        FROM unnest(created_ids, created_customers, created_versions, created_states, created_due,
                    created_at_) AS a(id, customer, version, state, next_due, at);
    END IF;

    -- Fenced by the version each account was decided from and, on the fast
    -- path, by its chain head as above.
    IF cardinality(updated_ids) > 0 THEN
        UPDATE accounts a
        SET state = w.state, version = w.version, next_due = w.next_due, updated_at = w.at
        FROM unnest(updated_ids, updated_states, updated_versions, updated_due, updated_at_,
                    updated_expected, updated_heads)
             AS w(id, state, version, next_due, at, expected, head)
        WHERE a.account_id = w.id AND a.version = w.expected
          AND (w.head IS NULL
               OR EXISTS (SELECT 1 FROM events e
                          WHERE e.account_id = w.id AND e.version = w.expected
                            AND e.hash = w.head));
        GET DIAGNOSTICS written = ROW_COUNT;
        IF written <> cardinality(updated_ids) THEN
            PERFORM billing_expect_rows('accounts', cardinality(updated_ids), written);
        END IF;
    END IF;

    -- In batch order, so per account in version order. The unique
    -- (account_id, version) key refuses a second writer of a version.
    IF cardinality(event_ids) > 0 THEN
        INSERT INTO events (event_id, account_id, version, event_type, schema_version, occurred_at,
                            actor_principal, actor_role, idempotency_key, trace_id, payload,
                            balance_credit, balance_token, reserved_credit, reserved_token,
                            available_credit, available_token, account_after, hash, span_id)
        SELECT e.id, e.account_id, e.version, e.kind, event_schema, e.occurred, e.principal,
               e.role, e.key, e.trace, e.payload, e.bc, e.bt, e.rc, e.rt, e.ac, e.avt,
               e.account_after, e.hash, e.span
        FROM unnest(event_ids, event_accounts, event_versions, event_types, event_times,
                    event_principals, event_roles, event_keys, event_traces, event_payloads,
                    event_bc, event_bt, event_rc, event_rt, event_ac, event_avt, event_views,
                    event_hashes, event_spans)
             WITH ORDINALITY
             AS e(id, account_id, version, kind, occurred, principal, role, key, trace, payload,
                  bc, bt, rc, rt, ac, avt, account_after, hash, span, n)
        ORDER BY e.n;
    END IF;

    -- New reservations: an id already taken (by any account) is a unique
    -- violation, never an overwrite.
    IF cardinality(new_res_ids) > 0 THEN
        INSERT INTO reservations (reservation_id, account_id, status, hold, expires_at,
                                  commit_outcome, resolved_version, updated_at)
        SELECT * FROM unnest(new_res_ids, new_res_accounts, new_res_statuses, new_res_holds,
                             new_res_expiry, new_res_commits, new_res_resolved, new_res_at);
    END IF;

    IF cardinality(res_ids) > 0 THEN
        UPDATE reservations r
        SET status = w.status, hold = coalesce(w.hold, r.hold), expires_at = w.expires_at,
            commit_outcome = w.commit_outcome, resolved_version = w.resolved_version,
            updated_at = w.at
        FROM unnest(res_ids, res_accounts, res_statuses, res_holds, res_expiry, res_commits,
                    res_resolved, res_at)
             AS w(id, account_id, status, hold, expires_at, commit_outcome, resolved_version, at)
        WHERE r.reservation_id = w.id AND r.account_id = w.account_id;
        GET DIAGNOSTICS written = ROW_COUNT;
        IF written <> cardinality(res_ids) THEN
            PERFORM billing_expect_rows('reservations', cardinality(res_ids), written);
        END IF;
    END IF;

    -- A concurrent first use of a key (on another writer or replica) is a
    -- unique violation: the batch is retried and then replays that first
    -- answer.
    IF cardinality(key_names) > 0 THEN
        INSERT INTO idempotency_keys (idempotency_key, operation, request_hash, account_id,
                                      outcome, created_at)
        SELECT * FROM unnest(key_names, key_operations, key_hashes, key_accounts, key_outcomes,
                             key_at);
    END IF;
END;
$$;

-- Drops 0010's billing_write_batch (58 arguments, without updated_heads).
--
-- 0011 kept it for pods of the release before 0011 during a rolling deploy.
-- The release before this one calls 0011's function (59 arguments), and so
-- does this one (by name: sql.rs, WriteBatch), so once this release runs no
-- binary calls 0010's. A rolling deploy stays safe: pods of the release
-- before keep calling 0011's function, untouched here, while the new ones
-- start. Only a binary from before 0011 would fail, and it is two releases
-- old.
DROP FUNCTION billing_write_batch(
    bigint[],
    uuid[], bigint[], bytea[],
    uuid[], uuid[], bigint[],
    json[], timestamptz[], timestamptz[],
    uuid[], json[], bigint[],
    timestamptz[], timestamptz[], bigint[],
    integer,
    uuid[], uuid[], bigint[], text[],
    timestamptz[], text[], text[], text[],
    text[], json[], bigint[], bigint[],
    bigint[], bigint[], bigint[], bigint[],
    json[], bytea[], text[],
    text[], uuid[], text[], json[],
    timestamptz[], json[], bigint[],
    timestamptz[],
    text[], uuid[], text[], json[],
    timestamptz[], json[], bigint[], timestamptz[],
    text[], text[], bytea[], uuid[],
    json[], timestamptz[]
);

-- The SQL half of the fast path's fence is in 0011's function (the fence
-- proper over fence_ids, fence_versions, fence_heads; the accounts' UPDATE
-- over updated_expected and updated_heads). What goes in those arrays is
-- decided in one place, crates/billing-store/src/pipeline/fence.rs.
COMMENT ON FUNCTION billing_write_batch(
    bigint[],
    uuid[], bigint[], bytea[],
    uuid[], uuid[], bigint[],
    json[], timestamptz[], timestamptz[],
    uuid[], json[], bigint[],
    timestamptz[], timestamptz[], bigint[],
    bytea[],
    integer,
    uuid[], uuid[], bigint[], text[],
    timestamptz[], text[], text[], text[],
    text[], json[], bigint[], bigint[],
    bigint[], bigint[], bigint[], bigint[],
    json[], bytea[], text[],
    text[], uuid[], text[], json[],
    timestamptz[], json[], bigint[],
    timestamptz[],
    text[], uuid[], text[], json[],
    timestamptz[], json[], bigint[], timestamptz[],
    text[], text[], bytea[], uuid[],
    json[], timestamptz[]
) IS 'A command batch''s writes (migration 0011), called with every argument by name '
     '(crates/billing-store/src/sql.rs, WriteBatch). What its fence checks (fence_ids, '
     'fence_versions, fence_heads; updated_expected, updated_heads) is decided in '
     'crates/billing-store/src/pipeline/fence.rs.';

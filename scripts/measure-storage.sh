#!/usr/bin/env bash
# Disk per event: a fresh PostgreSQL, BIN's `billing` serving the API with
# the projector and the sweeper, one row of billing-load against it, then,
# once the read models caught up, the bytes on disk of every table (heap,
# TOAST and indexes) divided by the events stored, and the average size of
# each column of the events table.
#
#   scripts/measure-storage.sh                     # 100 accounts, concurrency 16, 30 s
#   BIN=/tmp/old A=1000 C=64 D=60 scripts/measure-storage.sh
#
# Idempotency records and resolved reservations are counted as they stand
# right after the load (inside their retention windows); the "kept" line
# leaves them out: what stays once the sweeper's windows have passed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bin=${BIN:-${CARGO_TARGET_DIR:-$root/target}/release}
dir="$root/.dev/pg-storage"
out=$(mktemp -d)
svc=""
cleanup() {
  [ -n "$svc" ] && kill -INT "$svc" 2>/dev/null && wait "$svc" 2>/dev/null
  "$root/scripts/pg.sh" stop "$dir" >/dev/null 2>&1 || true
  "$root/scripts/pg.sh" wipe "$dir" >/dev/null 2>&1 || true
  rm -rf "$out"
}
trap cleanup EXIT
pg_port=$("$root/scripts/free-port.sh" 55620)
admin=$("$root/scripts/pg.sh" start "$dir" "$pg_port" --fresh)
psql "$admin" -qc "CREATE DATABASE billing"
db="postgres://postgres@127.0.0.1:$pg_port/billing"
BILLING_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export BILLING_JWT_SECRET
grpc_port=$("$root/scripts/free-port.sh" 50720)
BILLING_DATABASE_URL=$db RUST_LOG=warn "$bin/billing" migrate > /dev/null
BILLING_DATABASE_URL=$db RUST_LOG=warn "$bin/billing" serve --roles api,projector,sweeper \
  --grpc-addr "127.0.0.1:$grpc_port" > "$out/svc.log" 2>&1 &
svc=$!
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$grpc_port") 2>/dev/null && break
  sleep 0.1
done
env -u BILLING_DATABASE_URL "$bin/billing-load" run --addr "127.0.0.1:$grpc_port" --concurrency "${C:-16}" \
  --accounts "${A:-100}" --duration-s "${D:-30}" --warmup-s 0 --label storage --out "$out/run.json" | tail -n 1
# The read models catch up.
for _ in $(seq 1 600); do
  behind=$(psql "$db" -qAtc "SELECT count(*) FROM events e
                             WHERE NOT EXISTS (SELECT 1 FROM rm_accounts r
                                               WHERE r.account_id = e.account_id AND r.version >= e.version)")
  [ "$behind" = 0 ] && break
  sleep 0.5
done
psql "$db" -qc "VACUUM ANALYZE" > /dev/null
events=$(psql "$db" -qAtc "SELECT count(*) FROM events")
echo "events: $events"
echo "bytes per event, by table (heap + TOAST + indexes):"
psql "$db" -qAt -F '  ' -c "
  SELECT lpad(round(pg_total_relation_size(c.oid)::numeric / $events)::text, 6), c.relname,
         '(' || round(pg_relation_size(c.oid)::numeric / $events) || ' heap, '
             || round(pg_indexes_size(c.oid)::numeric / $events) || ' indexes)'
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname = 'public' AND c.relkind = 'r' AND pg_total_relation_size(c.oid) > 16384
  ORDER BY pg_total_relation_size(c.oid) DESC"
psql "$db" -qAt -c "
  SELECT 'all: ' || round(sum(pg_total_relation_size(c.oid))::numeric / $events)
      || ', kept (without idempotency records and resolved reservations): '
      || round(sum(pg_total_relation_size(c.oid)) FILTER (WHERE c.relname NOT IN ('idempotency_keys', 'reservations'))::numeric / $events)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname = 'public' AND c.relkind = 'r'"
echo "events: average stored bytes per column"
psql "$db" -qAt -F '  ' -c "
  SELECT lpad(round(avg(pg_column_size(e.*)))::text, 6), '(whole row)' FROM events e
  UNION ALL
  SELECT lpad(round(avg(pg_column_size(payload)))::text, 6), 'payload' FROM events
  UNION ALL
  SELECT lpad(round(avg(coalesce(pg_column_size(account_after), 0)))::text, 6), 'account_after' FROM events"
echo "ledger_entries: average row $(psql "$db" -qAtc "SELECT round(avg(pg_column_size(l.*))) FROM ledger_entries l") bytes"
if [ -n "${SAMPLES:-}" ]; then
  psql "$db" -qAt -c "SELECT DISTINCT ON (event_type) event_type, pg_column_size(e.*), payload, account_after,
                             idempotency_key, trace_id, span_id
                      FROM events e ORDER BY event_type, position DESC"
  psql "$db" -qAt -c "SELECT pg_column_size(r.*), r.* FROM reservations r LIMIT 2"
  psql "$db" -qAt -c "SELECT pg_column_size(k.*), k.* FROM idempotency_keys k LIMIT 2"
  psql "$db" -qAt -c "\d events"
fi

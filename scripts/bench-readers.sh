#!/usr/bin/env bash
# make bench-readers: how fast partitioned readers catch up from a backlog,
# with 1, 2 and 4 processes per role (BENCHMARKS.md, "Read side").
#
# A fresh PostgreSQL; one real account given BENCH_READERS_TEMPLATE events
# through the API; then its events copied in SQL under new account ids
# (fresh event ids), a chunk of accounts per transaction, until the events
# table holds BENCH_READERS_EVENTS events (default 1,000,000). For each
# role and each count in BENCH_READERS_PROCESSES (default "1 2 4"): the
# role's read side reset to the start of the feed, that many `billing serve
# --roles <role>` processes started together, and the time until every
# slice's checkpoint has reached its slice's last event. One JSON line per
# run, kept in target/bench-readers/.
#
# BENCH_READERS_ROLES: "projector" (default), or "projector publisher" with
# BENCH_READERS_BROKERS set to a broker (scripts/kafka.sh start ...).
# BENCH_BIN: a directory holding release binaries (skips the build).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
dev="$root/.dev"
target=${CARGO_TARGET_DIR:-$root/target}
out="$target/bench-readers"
mkdir -p "$dev" "$out"
rm -f "$out"/*.json "$out"/*.log

events=${BENCH_READERS_EVENTS:-1000000}
template=${BENCH_READERS_TEMPLATE:-50}
processes=${BENCH_READERS_PROCESSES:-"1 2 4"}
roles=${BENCH_READERS_ROLES:-projector}

pids=()
api=""
stop_readers() {
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  pids=()
}
cleanup() {
  stop_readers
  [ -n "$api" ] && kill "$api" 2>/dev/null && wait "$api" 2>/dev/null || true
  "$root/scripts/pg.sh" stop "$dev/pg-bench-readers" || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -n "${BENCH_BIN:-}" ]; then
  bin=$BENCH_BIN
else
  echo "building (release)..."
  cargo build --release --bin billing
  bin="$target/release"
fi

pg_port=$("$root/scripts/free-port.sh" 55652)
admin=$("$root/scripts/pg.sh" start "$dev/pg-bench-readers" "$pg_port" --fresh)
export BILLING_DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/billing"
psql "$admin" -q -c "DROP DATABASE IF EXISTS billing WITH (FORCE)" -c "CREATE DATABASE billing" >/dev/null
RUST_LOG=warn "$bin/billing" migrate > "$out/migrate.log" 2>&1
db() { psql "$BILLING_DATABASE_URL" -qAtX -v ON_ERROR_STOP=1 "$@"; }

# The template account, through the API: created, then top-ups.
export BILLING_JWT_SECRET
BILLING_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
port=$("$root/scripts/free-port.sh" 50271)
export BILLING_GRPC_ADDR="127.0.0.1:$port"
RUST_LOG=warn "$bin/billing" serve --roles api > "$out/api.log" 2>&1 &
api=$!
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
export BILLING_TOKEN
BILLING_TOKEN=$("$bin/billing" token --role project_super_admin)
account=$("$bin/billing" call CreateBillingAccount \
  '{"customer_id": "5e4a0680-804e-11ec-8477-2fea5968d85b", "plan_type": "PLAN_TYPE_FREE"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
while [ "$(db -c "SELECT count(*) FROM events")" -lt "$template" ]; do
  "$bin/billing" call AddBalance \
    "{\"account_id\": \"$account\", \"amount_credit\": 1000, \"idempotency_key\": \"$(cat /proc/sys/kernel/random/uuid)\"}" >/dev/null
done
kill "$api"; wait "$api" 2>/dev/null || true; api=""
db -c "CREATE TABLE bench_template AS SELECT * FROM events WHERE account_id = '$account'"
per_event=$(db -c "SELECT count(*) FROM bench_template")

# The backlog: the template's events under new accounts, 2,000 events per
# transaction (about a command batch's worth at peak).
accounts_per_chunk=$(( (2000 + per_event - 1) / per_event ))
echo "seeding $events events ($per_event per account, $accounts_per_chunk accounts per transaction)..."
seed_start=$(date +%s)
while [ "$(db -c "SELECT count(*) FROM events")" -lt "$events" ]; do
  {
    for _ in $(seq 1 50); do
      echo "INSERT INTO events (event_id, account_id, version, event_type, schema_version, occurred_at,
          actor_principal, actor_role, idempotency_key, trace_id, payload, balance_credit, balance_token,
          reserved_credit, reserved_token, available_credit, available_token, account_after, span_id, hash)
        SELECT gen_random_uuid(), a.id, t.version, t.event_type, t.schema_version, t.occurred_at,
          t.actor_principal, t.actor_role, NULL, t.trace_id, t.payload, t.balance_credit, t.balance_token,
          t.reserved_credit, t.reserved_token, t.available_credit, t.available_token, t.account_after, t.span_id, t.hash
        FROM (SELECT gen_random_uuid() AS id FROM generate_series(1, $accounts_per_chunk)) a
        CROSS JOIN bench_template t ORDER BY a.id, t.version;"
    done
  } | db >/dev/null
done
total=$(db -c "SELECT count(*) FROM events")
echo "seeded $total events in $(( $(date +%s) - seed_start )) s"
db -c "VACUUM ANALYZE events"
# Each slice's last event: a run is over when every slice's checkpoint is
# there.
db -c "CREATE TABLE bench_slice_heads AS
  SELECT DISTINCT ON (slice) slice, xid, position FROM (
    SELECT (('x' || right(account_id::text, 8))::bit(32)::bigint % 8) AS slice, xid, position FROM events
  ) e ORDER BY slice, xid DESC, position DESC"

reset() {
  local checkpoint=$1
  if [ "$checkpoint" = read_models ]; then
    db -c "TRUNCATE rm_accounts, ledger_entries"
  fi
  db -c "UPDATE feed_checkpoints SET xid = '0', position = 0
         WHERE name = '$checkpoint' OR starts_with(name, '$checkpoint/')"
  db -c "CHECKPOINT"
}

behind() {
  local checkpoint=$1
  db -c "SELECT count(*) FROM bench_slice_heads h JOIN feed_checkpoints c
           ON c.name = '$checkpoint/' || h.slice
         WHERE (c.xid, c.position) < (h.xid, h.position)"
}

# CPU seconds (user + system) of this PostgreSQL's processes so far (the
# postmaster's children: backends, walwriter, checkpointer...). A backend
# that has exited no longer counts; the readers' connections live through
# a run.
postmaster=$(head -1 "$(db -c "SHOW data_directory")/postmaster.pid")
pg_cpu() {
  local ticks=0 pid
  for pid in $postmaster $(pgrep -P "$postmaster" || true); do
    [ -r "/proc/$pid/stat" ] || continue
    ticks=$(( ticks + $(awk '{print $14 + $15}' "/proc/$pid/stat") ))
  done
  echo "$ticks"
}

for role in $roles; do
  case $role in
    projector) checkpoint=read_models; env=() ;;
    publisher)
      [ -n "${BENCH_READERS_BROKERS:-}" ] || { echo "bench-readers: the publisher needs BENCH_READERS_BROKERS" >&2; exit 1; }
      checkpoint=kafka
      topic="bench.account_updated.$(date +%s)"
      env=(BILLING_KAFKA_BROKERS="$BENCH_READERS_BROKERS" BILLING_KAFKA_TOPIC="$topic" BILLING_KAFKA_ALERTS_TOPIC="$topic.alerts")
      ;;
    *) echo "bench-readers: unknown role $role" >&2; exit 1 ;;
  esac
  for n in $processes; do
    reset "$checkpoint"
    [ "$role" = publisher ] && env[1]="BILLING_KAFKA_TOPIC=bench.account_updated.$n.$(date +%s%N)"
    cpu_before=$(pg_cpu)
    start=$(date +%s.%N)
    for i in $(seq 1 "$n"); do
      env "${env[@]}" RUST_LOG=info BILLING_DB_POOL_SIZE=4 \
        "$bin/billing" serve --roles "$role" > "$out/$role-$n-$i.log" 2>&1 &
      pids+=($!)
    done
    while [ "$(behind "$checkpoint")" -gt 0 ]; do
      sleep 0.2
    done
    end=$(date +%s.%N)
    cpu_after=$(pg_cpu)
    stop_readers
    python3 - "$role" "$n" "$total" "$start" "$end" "$cpu_before" "$cpu_after" "$(getconf CLK_TCK)" <<'EOF' | tee "$out/$role-$n.json"
import json, sys
role, n, total, start, end, before, after, hz = sys.argv[1:]
seconds = float(end) - float(start)
print(json.dumps({
    "role": role, "processes": int(n), "events": int(total),
    "seconds": round(seconds, 1), "events_per_second": round(int(total) / seconds),
    "postgres_cpu_seconds": round((int(after) - int(before)) / int(hz), 1),
}))
EOF
  done
done

#!/usr/bin/env bash
# make bench: the service under call-control load next to the plainest SQL
# charge (pgbench), on the same PostgreSQL at the same concurrency, over a
# sweep of concurrency and account distribution. Prints one table and writes
# JSON under target/bench/.
#
# The API (with the sweeper), the read side (projector and publisher) and the
# broker run as separate processes, so that the CPU of each is reported. At
# each concurrency the same load generator also drives the gRPC health check
# alone: the ceiling gRPC allows on this machine, with no database work.
#
# BENCH_SECONDS (10), BENCH_WARMUP (2), BENCH_CONCURRENCY ("1 4 16 64 256"),
# BENCH_ACCOUNTS (100, for the uniform distribution), BENCH_MANY_ACCOUNTS
# (10000, one extra uniform row at BENCH_MANY_CONCURRENCY, 64) tune it.
# BENCH_BIN runs the `billing` and `billing-load` in that directory instead
# of building them (to run an earlier build side by side).
set -euo pipefail
# The optimized broker (built once, 14 minutes on 2 cores): its CPU per
# change is one of the columns.
export BILLING_NISSHI_PROFILE=release

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
dev="$root/.dev"
target=${CARGO_TARGET_DIR:-$root/target}
out="$target/bench"
seconds=${BENCH_SECONDS:-10}
warmup=${BENCH_WARMUP:-2}
sweep=${BENCH_CONCURRENCY:-1 4 16 64 256}
uniform_accounts=${BENCH_ACCOUNTS:-100}
many_accounts=${BENCH_MANY_ACCOUNTS:-10000}
many_concurrency=${BENCH_MANY_CONCURRENCY:-64}
mkdir -p "$dev" "$out"
rm -f "$out"/*.json

api_pid=""
readside_pid=""
cleanup() {
  local pid
  for pid in $api_pid $readside_pid; do
    kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  done
  "$root/scripts/kafka.sh" stop "$dev/kafka-bench" || true
  "$root/scripts/pg.sh" stop "$dev/pg-bench" || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  "$root/scripts/free-port.sh" "$1"
}

if [ -n "${BENCH_BIN:-}" ]; then
  bin=$BENCH_BIN
else
  echo "building (release)..."
  cargo build --release --bin billing --bin billing-load
  bin="$target/release"
fi

# One PostgreSQL for both, durable (fsync on), with pg_stat_statements.
pg_port=$(free_port 55532)
admin=$("$root/scripts/pg.sh" start "$dev/pg-bench" "$pg_port" --fresh)
psql "$admin" -qc "CREATE DATABASE billing" -c "CREATE DATABASE baseline"
psql "postgres://postgres@127.0.0.1:$pg_port/billing" -qc "CREATE EXTENSION pg_stat_statements"
db="postgres://postgres@127.0.0.1:$pg_port/billing"
baseline_db="postgres://postgres@127.0.0.1:$pg_port/baseline"
pgbench=$(ls -d /usr/lib/postgresql/*/bin/pgbench | sort -V | tail -n 1)

kafka_port=$(free_port 19192)
brokers=$("$root/scripts/kafka.sh" start "$dev/kafka-bench" "$kafka_port")

# The service: every role make run runs, as two processes (the API with the
# sweeper, and the read side), next to the broker's own.
export BILLING_JWT_SECRET
BILLING_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
grpc_port=$(free_port 50151)
BILLING_DATABASE_URL="$db" RUST_LOG=warn "$bin/billing" migrate > "$out/migrate.log" 2>&1
BILLING_DATABASE_URL="$db" RUST_LOG=warn \
  "$bin/billing" serve --roles api,sweeper --grpc-addr "127.0.0.1:$grpc_port" > "$out/api.log" 2>&1 &
api_pid=$!
BILLING_DATABASE_URL="$db" BILLING_KAFKA_BROKERS="$brokers" RUST_LOG=warn \
  "$bin/billing" serve --roles projector,publisher > "$out/readside.log" 2>&1 &
readside_pid=$!
broker_pid=$(cat "$dev/kafka-bench/pid")
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$grpc_port") 2>/dev/null && break
  sleep 0.1
done
processes=(--process "api=$api_pid" --process "readside=$readside_pid" --process "broker=$broker_pid")

# The baseline: one statement, one transaction per charge, that decrements
# the balance only if it covers the amount and records the ledger row.
psql "$baseline_db" -q <<SQL
CREATE TABLE balances (account_id int PRIMARY KEY, balance bigint NOT NULL);
CREATE TABLE ledger (id bigserial PRIMARY KEY, account_id int NOT NULL, amount bigint NOT NULL,
                     balance_after bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
INSERT INTO balances SELECT g, 1000000000000000
  FROM generate_series(1, greatest($uniform_accounts, $many_accounts)) g;
SQL
cat > "$out/charge.sql" <<'SQL'
\set aid random(1, :accounts)
\set amount random(1000, 60000)
WITH charged AS (
  UPDATE balances SET balance = balance - :amount
  WHERE account_id = :aid AND balance >= :amount
  RETURNING account_id, balance
)
INSERT INTO ledger (account_id, amount, balance_after) SELECT account_id, -:amount, balance FROM charged;
SQL

# Every run starts just after a checkpoint, and none starts within it
# (pg.sh --fresh sets max_wal_size and checkpoint_timeout past a sweep's
# WAL and length): a checkpoint landing inside one run and not another, with
# its writes and the full-page images that follow it, would make the two
# incomparable.
checkpoint() {
  psql "$admin" -qc "CHECKPOINT"
}

# One row: the baseline, then the service, at the same concurrency on the
# same accounts distribution.
row() {
  local accounts=$1 c=$2 dist=uniform jobs tps
  [ "$accounts" = 1 ] && dist=hot
  jobs=$(( c < 2 ? c : 2 ))
  checkpoint
  tps=$("$pgbench" -n -c "$c" -j "$jobs" -T "$seconds" -D "accounts=$accounts" -f "$out/charge.sql" "$baseline_db" 2>/dev/null \
    | awk '/^tps = / {print $3; exit}')
  printf '{"kind":"baseline","distribution":"%s","accounts":%s,"concurrency":%s,"tps":%s}\n' \
    "$dist" "$accounts" "$c" "${tps:-0}" > "$out/baseline-$accounts-$c.json"
  echo "baseline $accounts accounts c=$c: $tps charges/s"
  checkpoint
  "$bin/billing-load" run --addr "127.0.0.1:$grpc_port" --concurrency "$c" --accounts "$accounts" \
    --duration-s "$seconds" --warmup-s "$warmup" "${processes[@]}" --database-url "$db" \
    --label "service-$accounts-$c" --out "$out/service-$accounts-$c.json"
}

for c in $sweep; do
  "$bin/billing-load" run --target health --addr "127.0.0.1:$grpc_port" --concurrency "$c" \
    --duration-s "$seconds" --warmup-s "$warmup" "${processes[@]}" \
    --label "health-$c" --out "$out/health-$c.json"
done
for accounts in "$uniform_accounts" 1; do
  for c in $sweep; do
    row "$accounts" "$c"
  done
done
[ "$many_accounts" -gt 0 ] && row "$many_accounts" "$many_concurrency"

psql "$db" -qAtc "SELECT calls, round(total_exec_time::numeric), round(mean_exec_time::numeric, 3),
                         left(regexp_replace(query, '\\s+', ' ', 'g'), 100)
                  FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'billing')
                  ORDER BY total_exec_time DESC LIMIT 15" > "$out/top-statements.txt" || true
psql "$db" -qAtc "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = 'billing'" > "$out/transactions.txt" || true
psql "$db" -qAtc "SELECT wal_records, wal_bytes, wal_write, wal_sync FROM pg_stat_wal" > "$out/wal.txt" || true
psql "$db" -qAtc "SELECT count(*) FROM events" > "$out/events.txt" || true
# Checkpoints that started on their own (by WAL volume or time), not at
# bench.sh's CHECKPOINT: none unless a sweep outgrew the settings.
grep -E "checkpoint starting: .*(wal|time)" "$dev/pg-bench/server.log" > "$out/checkpoints.txt" || true

echo
echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), PostgreSQL $(psql "$admin" -qAtc 'SHOW server_version')"
"$bin/billing-load" report "$out"
echo "Checkpoints started within the sweep other than bench.sh's own: $(wc -l < "$out/checkpoints.txt")"
echo "JSON in target/bench/ (summary.json, one file per run); top statements in target/bench/top-statements.txt"

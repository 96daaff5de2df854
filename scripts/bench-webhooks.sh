#!/usr/bin/env bash
# make bench-webhooks: how fast one webhook dispatcher delivers to a fast
# local endpoint, and whether an endpoint that answers after 2 s slows the
# others. `billing-load webhooks` registers webhooks through the API, makes a
# backlog of changes (BENCH_WEBHOOK_CUSTOMERS x BENCH_WEBHOOK_ACCOUNTS
# accounts, BENCH_WEBHOOK_CHANGES changes each), then starts one dispatcher
# process and times the fast endpoint's deliveries, first to last: alone,
# and beside BENCH_WEBHOOK_SLOW customers whose endpoint answers
# after 2 s, BENCH_WEBHOOK_ROUNDS times in alternating order, each run on a
# fresh database. One JSON line per run; kept in target/bench-webhooks/.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
dev="$root/.dev"
target=${CARGO_TARGET_DIR:-$root/target}
out="$target/bench-webhooks"
mkdir -p "$dev" "$out"
rm -f "$out"/*.json

api=""
cleanup() {
  [ -n "$api" ] && kill "$api" 2>/dev/null && wait "$api" 2>/dev/null || true
  "$root/scripts/pg.sh" stop "$dev/pg-bench-webhooks" || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -n "${BENCH_BIN:-}" ]; then
  bin=$BENCH_BIN
else
  echo "building (release)..."
  cargo build --release --bin billing --bin billing-load
  bin="$target/release"
fi

pg_port=$("$root/scripts/free-port.sh" 55642)
admin=$("$root/scripts/pg.sh" start "$dev/pg-bench-webhooks" "$pg_port" --fresh)
export BILLING_DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/billing"
export BILLING_JWT_SECRET
BILLING_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')

# Each run on a database of its own, made anew: the second run must not
# meet the first one's rows.
fresh_service() {
  [ -n "$api" ] && kill "$api" 2>/dev/null && wait "$api" 2>/dev/null || true
  api=""
  psql "$admin" -q -c "DROP DATABASE IF EXISTS billing WITH (FORCE)" -c "CREATE DATABASE billing" >/dev/null
  RUST_LOG=warn "$bin/billing" migrate > "$out/migrate.log" 2>&1
  port=$("$root/scripts/free-port.sh" 50261)
  RUST_LOG=warn "$bin/billing" serve --roles api --grpc-addr "127.0.0.1:$port" > "$out/api.log" 2>&1 &
  api=$!
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return
    sleep 0.1
  done
  echo "bench-webhooks: the API did not listen" >&2
  exit 1
}

customers=${BENCH_WEBHOOK_CUSTOMERS:-8}
accounts=${BENCH_WEBHOOK_ACCOUNTS:-200}
changes=${BENCH_WEBHOOK_CHANGES:-20}
slow=${BENCH_WEBHOOK_SLOW:-4}
rounds=${BENCH_WEBHOOK_ROUNDS:-2}
for round in $(seq 1 "$rounds"); do
  # Alternate which goes first, so that a slow stretch of a shared machine
  # falls on both.
  order="alone beside-slow"
  [ $((round % 2)) -eq 0 ] && order="beside-slow alone"
  for run in $order; do
    fresh_service
    slow_customers=0
    [ "$run" = beside-slow ] && slow_customers=$slow
    "$bin/billing-load" webhooks --addr "http://127.0.0.1:$port" --billing "$bin/billing" \
      --customers "$customers" --accounts "$accounts" --changes "$changes" \
      --slow-customers "$slow_customers" --slow-ms 2000 | tee "$out/$run-$round.json"
  done
done

#!/usr/bin/env bash
# make bench-webhooks: how fast one webhook dispatcher delivers to a fast
# local endpoint, and whether an endpoint that answers after 2 s slows the
# others. `billing-load webhooks` registers webhooks through the API, makes a
# backlog of changes (BENCH_WEBHOOK_CUSTOMERS x BENCH_WEBHOOK_ACCOUNTS
# accounts, BENCH_WEBHOOK_CHANGES changes each), then starts one dispatcher
# process and times the fast endpoint's deliveries, first to last. Twice:
# alone, then beside BENCH_WEBHOOK_SLOW customers whose endpoint answers
# after 2 s. One JSON line per run; kept in target/bench-webhooks/.
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
psql "$admin" -qc "CREATE DATABASE billing" >/dev/null
export BILLING_DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/billing"
RUST_LOG=warn "$bin/billing" migrate > "$out/migrate.log" 2>&1

export BILLING_JWT_SECRET
BILLING_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
port=$("$root/scripts/free-port.sh" 50261)
RUST_LOG=warn "$bin/billing" serve --roles api --grpc-addr "127.0.0.1:$port" > "$out/api.log" 2>&1 &
api=$!
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done

customers=${BENCH_WEBHOOK_CUSTOMERS:-8}
accounts=${BENCH_WEBHOOK_ACCOUNTS:-100}
changes=${BENCH_WEBHOOK_CHANGES:-20}
slow=${BENCH_WEBHOOK_SLOW:-4}
for run in alone beside-slow; do
  slow_customers=0
  [ "$run" = beside-slow ] && slow_customers=$slow
  psql "$admin" -d billing -qc "CHECKPOINT"
  "$bin/billing-load" webhooks --addr "http://127.0.0.1:$port" --billing "$bin/billing" \
    --customers "$customers" --accounts "$accounts" --changes "$changes" \
    --slow-customers "$slow_customers" --slow-ms 2000 | tee "$out/$run.json"
done

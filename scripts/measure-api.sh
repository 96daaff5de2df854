#!/usr/bin/env bash
# The command path alone, for comparing two builds of it: a fresh durable
# PostgreSQL, the API role of BIN's `billing` (target/release by default),
# and one row of billing-load against it. Prints changes/s, the API's and
# PostgreSQL's CPU per change, WAL bytes per event, and PostgreSQL's time per
# event by statement. Run two builds alternately, a few times each: CPU
# figures on a shared machine move by tens of percent, WAL bytes do not.
#
#   scripts/measure-api.sh                  # hot account, concurrency 16, 15 s
#   BIN=/tmp/old C=16 A=100 D=15 scripts/measure-api.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bin=${BIN:-${CARGO_TARGET_DIR:-$root/target}/release}
dir="$root/.dev/pg-measure"
out=$(mktemp -d)
api=""
cleanup() {
  [ -n "$api" ] && kill -INT "$api" 2>/dev/null && wait "$api" 2>/dev/null
  "$root/scripts/pg.sh" stop "$dir" >/dev/null 2>&1 || true
  "$root/scripts/pg.sh" wipe "$dir" >/dev/null 2>&1 || true
  rm -rf "$out"
}
trap cleanup EXIT
pg_port=$("$root/scripts/free-port.sh" 55610)
admin=$("$root/scripts/pg.sh" start "$dir" "$pg_port" --fresh)
psql "$admin" -qc "CREATE DATABASE billing"
db="postgres://postgres@127.0.0.1:$pg_port/billing"
psql "$db" -qc "CREATE EXTENSION pg_stat_statements"
BILLING_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export BILLING_JWT_SECRET
grpc_port=$("$root/scripts/free-port.sh" 50710)
BILLING_DATABASE_URL=$db RUST_LOG=warn "$bin/billing" migrate > /dev/null
BILLING_DATABASE_URL=$db RUST_LOG=warn "$bin/billing" serve --roles api --grpc-addr "127.0.0.1:$grpc_port" > "$out/api.log" 2>&1 &
api=$!
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$grpc_port") 2>/dev/null && break
  sleep 0.1
done
psql "$db" -qAtc "SELECT pg_stat_statements_reset(), pg_stat_reset_shared('wal')" > /dev/null
# Without a database URL the load generator samples no read-side lag (there
# is no read side here).
env -u BILLING_DATABASE_URL "$bin/billing-load" run --addr "127.0.0.1:$grpc_port" --concurrency "${C:-16}" --accounts "${A:-1}" \
  --duration-s "${D:-15}" --warmup-s 0 --process "api=$api" --label measure --out "$out/run.json" | tail -n 1
events=$(psql "$db" -qAtc "SELECT count(*) FROM events")
python3 - "$out/run.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print("CPU per change: api %.0f us, PostgreSQL %.0f us; load generator %.0f%% of a core"
      % (d["processes"]["api"]["us_per_change"], d["postgres_cpu_us_per_change"],
         d["loadgen_cpu_pct_of_core"]))
r = d["rpcs"]["Reserve"]
print("Reserve p50/p99/p99.9: %.1f / %.1f / %.1f ms"
      % (r["p50_us"] / 1000, r["p99_us"] / 1000, r["p999_us"] / 1000))
PY
psql "$db" -qAtc "SELECT 'WAL bytes per event: ' || round(wal_bytes::numeric / $events) FROM pg_stat_wal"
psql "$db" -qAtc "SELECT 'events per batch: ' || round($events::numeric / greatest(sum(calls), 1), 1)
                  FROM pg_stat_statements WHERE query LIKE 'INSERT INTO events%'"
echo "PostgreSQL time per event (us), by statement:"
psql "$db" -qAt -F '  ' -c "SELECT round(1000 * total_exec_time::numeric / $events, 1),
                                 left(regexp_replace(query, '\\s+', ' ', 'g'), 70)
                          FROM pg_stat_statements
                          WHERE query NOT LIKE '%pg_stat%'
                          ORDER BY total_exec_time DESC LIMIT 8"

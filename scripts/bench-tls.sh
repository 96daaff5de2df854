#!/usr/bin/env bash
# make bench-tls: what TLS costs. The same load as `make bench` (billing-load:
# Reserve then Commit, 20% SMS Debits) against the service twice over, side
# by side on one durable PostgreSQL:
#
#   plain  gRPC in clear, PostgreSQL with sslmode=disable (today's default)
#   tls    gRPC over TLS 1.3 (BILLING_TLS_CERT/KEY) and PostgreSQL with
#          sslmode=verify-full against the test's own CA
#
# Each mode runs the API with the sweeper in one process and the projector in
# another (the read side's PostgreSQL connections are encrypted too; the
# broker is left out: Kafka's TLS is librdkafka's and not on the charge path).
# The modes alternate (plain first, then last), BENCH_TLS_ROUNDS (2) times over each row
# of BENCH_TLS_ROWS ("100:64 1:64": accounts:concurrency), so that a slow
# stretch of a shared machine falls on both. BENCH_TLS_MODES adds `grpc` (TLS
# on gRPC only) and `pg` (on PostgreSQL only), to tell the two costs apart.
# Prints one line per run and the ratio to plain per row; JSON in
# target/bench-tls/.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
dev="$root/.dev"
target=${CARGO_TARGET_DIR:-$root/target}
out="$target/bench-tls"
seconds=${BENCH_SECONDS:-10}
warmup=${BENCH_WARMUP:-2}
rows=${BENCH_TLS_ROWS:-100:64 1:64}
rounds=${BENCH_TLS_ROUNDS:-2}
modes=${BENCH_TLS_MODES:-plain tls}
mkdir -p "$dev" "$out"
rm -f "$out"/*.json

pids=()
stop_service() {
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  done
  pids=()
}
cleanup() {
  stop_service
  "$root/scripts/pg.sh" stop "$dev/pg-bench-tls" || true
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

# A CA and a certificate for localhost and 127.0.0.1, for both servers.
pki="$out/pki"
rm -rf "$pki" && mkdir -p "$pki"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=billing bench CA" -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=localhost" -keyout "$pki/server.key" -out "$pki/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > "$pki/ext"
openssl x509 -req -in "$pki/server.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
  -days 2 -extfile "$pki/ext" -out "$pki/server.crt" 2>/dev/null

# One durable PostgreSQL (as make bench's), with TLS turned on beside
# plaintext: the server's copies of the certificate belong to its user.
pg_port=$("$root/scripts/free-port.sh" 55632)
admin=$("$root/scripts/pg.sh" start "$dev/pg-bench-tls" "$pg_port" --fresh)
data=$(readlink -f "$dev/pg-bench-tls")
install -m 600 "$pki/server.key" "$data/bench-server.key"
install -m 644 "$pki/server.crt" "$data/bench-server.crt"
[ "$(id -u)" -eq 0 ] && chown postgres:postgres "$data/bench-server.key" "$data/bench-server.crt"
psql "$admin" -q -c "ALTER SYSTEM SET ssl_cert_file = 'bench-server.crt'" \
  -c "ALTER SYSTEM SET ssl_key_file = 'bench-server.key'" -c "ALTER SYSTEM SET ssl = on" \
  -c "SELECT pg_reload_conf()" -c "CREATE DATABASE billing" >/dev/null
plain_db="postgres://postgres@127.0.0.1:$pg_port/billing?sslmode=disable"
tls_db="postgres://postgres@localhost:$pg_port/billing?sslmode=verify-full&sslrootcert=$pki/ca.crt"
BILLING_DATABASE_URL="$plain_db" RUST_LOG=warn "$bin/billing" migrate > "$out/migrate.log" 2>&1

export BILLING_JWT_SECRET
BILLING_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')

# Starts the service in `mode`; sets addr, db and the --process flags.
start_service() {
  local mode=$1 port
  port=$("$root/scripts/free-port.sh" 50251)
  local tls_env=()
  db=$plain_db
  addr="127.0.0.1:$port"
  if [ "$mode" = tls ] || [ "$mode" = grpc ]; then
    addr="https://localhost:$port"
    tls_env=(BILLING_TLS_CERT="$pki/server.crt" BILLING_TLS_KEY="$pki/server.key")
  fi
  if [ "$mode" = tls ] || [ "$mode" = pg ]; then
    db=$tls_db
  fi
  env "${tls_env[@]}" BILLING_DATABASE_URL="$db" RUST_LOG=warn \
    "$bin/billing" serve --roles api,sweeper --grpc-addr "127.0.0.1:$port" > "$out/api-$mode.log" 2>&1 &
  pids+=($!)
  local api=$!
  BILLING_DATABASE_URL="$db" RUST_LOG=warn \
    "$bin/billing" serve --roles projector > "$out/readside-$mode.log" 2>&1 &
  pids+=($!)
  processes=(--process "api=$api" --process "readside=$!")
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return
    sleep 0.1
  done
  echo "bench-tls: the $mode service did not listen" >&2
  cat "$out/api-$mode.log" >&2
  exit 1
}

# A first run on an empty database is far faster than any after it (the
# tables and indexes still fit in a few pages): one unmeasured run per row
# first, so that no mode is measured on it.
for row in $rows; do
  accounts=${row%%:*} c=${row##*:}
  start_service plain
  "$bin/billing-load" run --addr "$addr" --concurrency "$c" --accounts "$accounts" \
    --duration-s "$seconds" --warmup-s 0 --label "prime" --out "$out/prime.out" > /dev/null
  stop_service
done

reversed=$(echo "$modes" | tr ' ' '\n' | tac | tr '\n' ' ')
for round in $(seq 1 "$rounds"); do
  # Every other round in the other order: the database grows run by run,
  # and no mode should always run on the larger one.
  order=$modes
  [ $((round % 2)) -eq 0 ] && order=$reversed
  for row in $rows; do
    accounts=${row%%:*} c=${row##*:}
    for mode in $order; do
      start_service "$mode"
      psql "$admin" -qc "CHECKPOINT"
      "$bin/billing-load" run --addr "$addr" --ca "$pki/ca.crt" --concurrency "$c" --accounts "$accounts" \
        --duration-s "$seconds" --warmup-s "$warmup" "${processes[@]}" --database-url "$db" \
        --label "$mode-$accounts-$c-$round" --out "$out/$mode-$accounts-$c-$round.json" | tail -n 1
      stop_service
    done
  done
done

echo
echo "Machine: $(nproc) cores; PostgreSQL $(psql "$admin" -qAtc 'SHOW server_version'); $seconds s a run after $warmup s of warm-up"
python3 - "$out" <<'PY'
import glob, json, os, sys
from collections import defaultdict
runs = defaultdict(lambda: defaultdict(list))
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    d = json.load(open(path))
    mode, accounts, c, _ = d["label"].split("-")
    dist = "hot" if accounts == "1" else f"uniform-{accounts}"
    runs[(dist, int(c))][mode].append(d)
print(f"{'row':<16}{'mode':<7}{'changes/s (each run)':<26}{'mean':>8}{'Reserve p99 ms':>16}{'api us/change':>15}{'PG us/change':>14}")
summary = []
for (dist, c), modes in sorted(runs.items()):
    means = {}
    for mode in ("plain", "grpc", "pg", "tls"):
        ds = modes.get(mode, [])
        if not ds:
            continue
        rates = [d["changes_per_s"] for d in ds]
        means[mode] = sum(rates) / len(rates)
        p99 = max(d["rpcs"]["Reserve"]["p99_us"] for d in ds) / 1000
        api = sum(d["processes"]["api"]["us_per_change"] for d in ds) / len(ds)
        pg = sum(d["postgres_cpu_us_per_change"] for d in ds) / len(ds)
        each = " ".join(f"{r:.0f}" for r in rates)
        print(f"{dist + '-' + str(c):<16}{mode:<7}{each:<26}{means[mode]:>8.0f}{p99:>16.1f}{api:>15.0f}{pg:>14.0f}")
    for mode in ("grpc", "pg", "tls"):
        if "plain" in means and mode in means:
            ratio = means[mode] / means["plain"]
            print(f"{'':<16}{mode}/plain {ratio:.3f}")
            summary.append({"row": f"{dist}-{c}", "mode": mode, "plain": means["plain"], mode: means[mode], "ratio": ratio})
json.dump(summary, open(os.path.join(sys.argv[1], "summary.json"), "w"), indent=2)
PY

#!/usr/bin/env bash
# The two commands behind `make run` and `make test`.
#
#   scripts/dev.sh run    PostgreSQL (unless BILLING_DATABASE_URL is set),
#                         migrations, and every service role; Ctrl-C stops all.
#   scripts/dev.sh test   a throwaway PostgreSQL, then the whole test suite.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
dev="$root/.dev"
mkdir -p "$dev"

# The first free TCP port on loopback from $1 upwards.
free_port() {
  "$root/scripts/free-port.sh" "$1"
}

started_pg=()
throwaway_pg=()
started_kafka=()
broker_build=
cleanup() {
  local dir
  if [ -n "$broker_build" ]; then
    pkill -TERM -P "$broker_build" 2>/dev/null || true
    kill "$broker_build" 2>/dev/null || true
  fi
  for dir in "${started_kafka[@]}"; do
    "$root/scripts/kafka.sh" stop "$dir" || true
  done
  for dir in "${started_pg[@]}"; do
    "$root/scripts/pg.sh" stop "$dir" || true
  done
  for dir in "${throwaway_pg[@]}"; do
    "$root/scripts/pg.sh" wipe "$dir" || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The broker's first build (about 14 minutes on 2 cores) runs beside the
# workspace's (about 3): each fills the other's single-threaded stretches
# (a big crate compiling alone, a link). Later runs find both built.
build_broker_in_background() {
  [ -x "$("$root/scripts/kafka.sh" path)" ] && return
  echo "building the Kafka-protocol broker (nisshi) once, beside the workspace; log: .dev/nisshi-build.log"
  "$root/scripts/kafka.sh" bin >"$dev/nisshi-build.log" 2>&1 &
  broker_build=$!
}

wait_for_broker_build() {
  [ -n "$broker_build" ] || return 0
  local pid=$broker_build
  broker_build=
  if ! wait "$pid"; then
    tail -n 30 "$dev/nisshi-build.log" >&2
    echo "dev.sh: building the broker failed (whole log: .dev/nisshi-build.log)" >&2
    return 1
  fi
}

cmd_run() {
  local kafka_storage="memory://nisshi/"
  [ -n "${BILLING_KAFKA_BROKERS:-}" ] || build_broker_in_background
  if [ -z "${BILLING_DATABASE_URL:-}" ]; then
    local port=${BILLING_DEV_PG_PORT:-55433} admin
    if ! admin=$("$root/scripts/pg.sh" start "$dev/pg" "$port" 2>"$dev/pg-start.log"); then
      port=$(free_port 55434)
      admin=$("$root/scripts/pg.sh" start "$dev/pg" "$port")
    fi
    started_pg+=("$dev/pg")
    local db
    for db in billing nisshi; do
      psql "$admin" -qAtc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 \
        || psql "$admin" -qc "CREATE DATABASE $db"
    done
    export BILLING_DATABASE_URL="postgres://postgres@127.0.0.1:$port/billing"
    # The broker keeps its topics in a database of its own, so they survive restarts.
    kafka_storage="postgres://postgres@127.0.0.1:$port/nisshi"
    echo "PostgreSQL (data in .dev/pg) at 127.0.0.1:$port, database billing"
  fi
  # Every RPC needs a bearer token: without configured keys, a development
  # secret is made once and kept (owner-only) in .dev/jwt-secret.
  if [ -z "${BILLING_JWT_SECRET:-}${BILLING_JWT_SECRET_FILE:-}${BILLING_JWT_PUBLIC_KEY:-}${BILLING_JWT_PUBLIC_KEYS:-}${BILLING_JWT_SECRETS:-}${BILLING_JWT_JWKS_URL:-}" ]; then
    if [ ! -s "$dev/jwt-secret" ]; then
      (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dev/jwt-secret")
    fi
    BILLING_JWT_SECRET=$(cat "$dev/jwt-secret")
    export BILLING_JWT_SECRET
  fi
  cargo build --bin billing
  local bin="${CARGO_TARGET_DIR:-$root/target}/debug/billing"
  if [ -z "${BILLING_KAFKA_BROKERS:-}" ]; then
    wait_for_broker_build
    local kafka_port
    kafka_port=$(free_port 9092)
    BILLING_KAFKA_BROKERS=$("$root/scripts/kafka.sh" start "$dev/kafka" "$kafka_port" "$kafka_storage")
    export BILLING_KAFKA_BROKERS
    started_kafka+=("$dev/kafka")
    echo "Kafka-protocol broker (nisshi) at $BILLING_KAFKA_BROKERS, storage ${kafka_storage%%://*}"
  fi
  export BILLING_ROLES=${BILLING_ROLES:-api,sweeper,projector,publisher,dispatcher}
  # Local development: webhooks may go to http://localhost and the like.
  export BILLING_WEBHOOK_ALLOW_HTTP=${BILLING_WEBHOOK_ALLOW_HTTP:-true}
  export BILLING_WEBHOOK_ALLOW_PRIVATE=${BILLING_WEBHOOK_ALLOW_PRIVATE:-true}
  "$bin" migrate
  local addr=${BILLING_GRPC_ADDR:-127.0.0.1:50051}
  export BILLING_GRPC_ADDR="$addr"
  export BILLING_METRICS_ADDR=${BILLING_METRICS_ADDR:-127.0.0.1:$(free_port 9464)}
  local customer=5e4a0680-804e-11ec-8477-2fea5968d85b
  cat <<TXT

billing: gRPC API on $addr (health and reflection need no token)
Prometheus metrics: http://$BILLING_METRICS_ADDR/metrics
TXT
  if [ -n "${BILLING_TLS_CERT:-}" ]; then
    cat <<TXT
gRPC is served over TLS (BILLING_TLS_CERT): give every call below
  --addr https://localhost:${addr##*:} --ca <the CA that signed the certificate>
TXT
  fi
  if [ -n "${BILLING_JWT_SECRET:-}" ]; then
    cat <<TXT
Tokens, valid for 12 hours ($bin token mints more):
  project_super_admin:  export BILLING_TOKEN=$("$bin" token --role project_super_admin --subject dev-admin)
  service:              export BILLING_TOKEN=$("$bin" token --role service --subject dev-call-control)
  customer_admin of $customer:
                        export BILLING_TOKEN=$("$bin" token --role customer_admin --customer-id "$customer" --subject dev-customer)
Paste one export line into another terminal, then for example:
  $bin call CreateBillingAccount '{"customer_id": "$customer", "name": "Primary Account"}'
  $bin call Rate '{"service_type": "SERVICE_TYPE_CALL_PSTN_OUTGOING", "duration_ms": 150000}'
TXT
  fi
  cat <<TXT
Watch every balance change on Kafka: $bin tail --brokers $BILLING_KAFKA_BROKERS
Webhooks (the dispatcher role): for local development they may go to plain
http and to private addresses such as localhost (BILLING_WEBHOOK_ALLOW_HTTP=$BILLING_WEBHOOK_ALLOW_HTTP,
BILLING_WEBHOOK_ALLOW_PRIVATE=$BILLING_WEBHOOK_ALLOW_PRIVATE); in production they are https to public addresses only.
The README walks through a whole call. Ctrl-C stops everything.

TXT
  # The server runs as a child so that a signal to this script reaches it
  # too; then the EXIT trap stops the PostgreSQL started above.
  "$bin" serve &
  local server=$!
  trap 'kill -TERM "$server" 2>/dev/null || true' INT TERM
  wait "$server" || true
  wait "$server" 2>/dev/null || true
}

# A checkout the postgres user cannot enter (under /root, or made with
# `mktemp -d`) must still start its PostgreSQL: as root, try the start path
# from a copy of the scripts in such a directory.
check_root_only_checkout() {
  [ "$(id -u)" -eq 0 ] || return 0
  local dir port data
  dir=$(mktemp -d)
  mkdir -p "$dir/billing"
  cp -r "$root/scripts" "$dir/billing/"
  port=$(free_port 56432)
  "$dir/billing/scripts/pg.sh" start "$dir/billing/.dev/pg-check" "$port" --ephemeral >/dev/null
  psql "postgres://postgres@127.0.0.1:$port/postgres" -qAtc "SELECT 1" >/dev/null
  # ... and leaves nothing behind when its throwaway cluster is wiped.
  data=$(readlink "$dir/billing/.dev/pg-check" || true)
  "$dir/billing/scripts/pg.sh" wipe "$dir/billing/.dev/pg-check"
  if [ -n "$data" ] && [ -e "$data" ]; then
    echo "dev.sh: pg.sh wipe left $data behind" >&2
    return 1
  fi
  rm -rf "$dir"
  echo "a root-only checkout starts its PostgreSQL, and its throwaway data is wiped"
}

cmd_test() {
  check_root_only_checkout
  build_broker_in_background
  # Dockerfile, docker-compose.yml and the Helm chart, checked without Docker
  # or a cluster.
  "$root/scripts/check-deploy.sh"
  local port admin
  port=$(free_port 55432)
  admin=$("$root/scripts/pg.sh" start "$dev/pg-test" "$port" --ephemeral)
  throwaway_pg+=("$dev/pg-test")
  echo "test PostgreSQL at 127.0.0.1:$port (throwaway, in .dev/pg-test)"
  export BILLING_TEST_DATABASE_URL="$admin"
  # Build every test while the broker builds (when it must).
  cargo test --workspace --no-run
  wait_for_broker_build
  # A broker for the Kafka tests; some tests start brokers of their own.
  BILLING_TEST_NISSHI=$("$root/scripts/kafka.sh" bin)
  export BILLING_TEST_NISSHI
  local kafka_port
  kafka_port=$(free_port 19092)
  BILLING_TEST_KAFKA_BROKERS=$("$root/scripts/kafka.sh" start "$dev/kafka-test" "$kafka_port")
  export BILLING_TEST_KAFKA_BROKERS
  started_kafka+=("$dev/kafka-test")
  echo "test broker at $BILLING_TEST_KAFKA_BROKERS"
  cargo test --workspace --no-fail-fast
}

case "${1:-}" in
  run) cmd_run ;;
  test) cmd_test ;;
  *) echo "usage: scripts/dev.sh run|test" >&2; exit 2 ;;
esac

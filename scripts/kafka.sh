#!/usr/bin/env bash
# A Kafka-protocol broker for development and tests: nisshi, built once from
# crates.io into a cache outside the source tree and reused.
#
#   scripts/kafka.sh bin                            build if needed; print the binary's path
#   scripts/kafka.sh path                           print where the binary is (or will be)
#   scripts/kafka.sh start DATADIR PORT [STORAGE]   start it; print the bootstrap address
#   scripts/kafka.sh stop DATADIR                   stop it
#
# STORAGE is nisshi's --storage-engine URL (default: memory, nothing kept).
set -euo pipefail

version=0.8.1
cache=${BILLING_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/billing}
# Only the storage engines we use: in memory (dynostore) and PostgreSQL.
features=dynostore,postgres
# Tests and `make run` use an unoptimized build: 6 minutes on 2 cores against
# 14 for an optimized one, and fast enough for a development broker.
# `make bench` asks for the optimized one (BILLING_NISSHI_PROFILE=release),
# so the broker's CPU per change is what it would be in production.
profile=${BILLING_NISSHI_PROFILE:-debug}
case "$profile" in
  debug) install_flags=(--debug); suffix=-debug ;;
  release) install_flags=(); suffix= ;;
  *) echo "kafka.sh: BILLING_NISSHI_PROFILE is debug or release, not $profile" >&2; exit 1 ;;
esac
root="$cache/nisshi-$version-${features//,/-}$suffix"
bin="$root/bin/nisshi"

die() { echo "kafka.sh: $*" >&2; exit 1; }

ensure_bin() {
  [ -x "$bin" ] && return
  echo "kafka.sh: building nisshi $version ($features, $profile) into $root (once)..." >&2
  # nisshi's rama dependency declares a newer rust-version than it needs.
  cargo install "nisshi@$version" --locked --ignore-rust-version "${install_flags[@]}" \
    --no-default-features --features "$features" --root "$root" >&2 \
    || die "cannot build nisshi"
}

cmd=${1:-}
case "$cmd" in
  path)
    echo "$bin"
    ;;
  bin)
    ensure_bin
    echo "$bin"
    ;;
  start)
    dir=${2:?datadir}; port=${3:?port}; storage=${4:-memory://nisshi/}
    ensure_bin
    mkdir -p "$dir"
    if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
      echo "127.0.0.1:$port"
      exit 0
    fi
    nohup "$bin" broker \
      --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://127.0.0.1:$port" \
      --group-initial-rebalance-delay 0s \
      --storage-engine "$storage" > "$dir/broker.log" 2>&1 &
    echo $! > "$dir/pid"
    for _ in $(seq 1 100); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "127.0.0.1:$port"
        exit 0
      fi
      kill -0 "$(cat "$dir/pid")" 2>/dev/null || { tail -n 20 "$dir/broker.log" >&2; die "nisshi exited"; }
      sleep 0.1
    done
    die "nisshi did not listen on $port"
    ;;
  stop)
    dir=${2:?datadir}
    [ -f "$dir/pid" ] || exit 0
    kill "$(cat "$dir/pid")" 2>/dev/null || true
    rm -f "$dir/pid"
    ;;
  *) die "usage: kafka.sh bin | path | start DATADIR PORT [STORAGE] | stop DATADIR" ;;
esac

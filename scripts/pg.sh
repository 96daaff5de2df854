#!/usr/bin/env bash
# A private PostgreSQL server for development and tests, from the system's
# server binaries (Debian's `postgresql` package, installed when missing).
#
#   scripts/pg.sh start DATADIR PORT [--ephemeral]   start (initdb when new); prints the URL
#   scripts/pg.sh stop DATADIR                       stop it
#   scripts/pg.sh wipe DATADIR                       stop it and remove its data
#
# --ephemeral wipes DATADIR first and turns durability off (fsync): for tests.
# --fresh wipes DATADIR first and keeps durability on, with pg_stat_statements
# loaded: for benchmarks.
# PostgreSQL refuses to run as root, so as root the server runs as `postgres`.
#
# BILLING_PG_SSL_DIR=DIR (start only): DIR holds server.crt and server.key;
# they are copied into the data directory, the server gets `ssl = on`, and
# pg_hba.conf accepts TCP connections over TLS only (hostssl lines, no host
# lines), so a plaintext client is refused. For the TLS tests.
set -euo pipefail

die() { echo "pg.sh: $*" >&2; exit 1; }

bindir() {
  local dir
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$dir/initdb" ] && { echo "$dir"; return; }
  done
  return 1
}

ensure_binaries() {
  bindir >/dev/null && return
  echo "pg.sh: installing PostgreSQL server binaries from Debian's packages..." >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >&2
  bindir >/dev/null || die "no initdb after installing postgresql"
}

# Runs a server binary as the user that owns the cluster.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

cmd=${1:-}; datadir=${2:-}
[ -n "$cmd" ] && [ -n "$datadir" ] || die "usage: pg.sh start|stop|wipe DATADIR [PORT] [--ephemeral]"
# DATADIR itself, which may be a link to where the data lives (below).
given=$(realpath -m -s "$datadir")
datadir=$(realpath -m "$datadir")

# As root the server runs as `postgres`, which must be able to reach its data
# directory. A checkout under /root, or in a `mktemp -d` directory, is closed
# to it: then the data lives under /var/lib/billing-dev instead, in a
# directory named after the checkout's path (the same one on every start and
# stop), and DATADIR becomes a link to it.
if [ "$(id -u)" -eq 0 ] && [ ! -L "$datadir" ]; then
  parent=$(dirname "$datadir")
  mkdir -p "$parent"
  if ! runuser -u postgres -- test -x "$parent" 2>/dev/null; then
    key=$(printf '%s' "$datadir" | sha256sum | cut -c1-16)
    home="/var/lib/billing-dev/$key-$(basename "$datadir")"
    mkdir -p /var/lib/billing-dev
    chmod 755 /var/lib/billing-dev
    # What an earlier, failed start left there (never a cluster: postgres
    # could not reach it).
    if [ -d "$datadir" ] && [ ! -f "$datadir/PG_VERSION" ]; then rm -rf "$datadir"; fi
    ln -sfn "$home" "$datadir"
  fi
fi
if [ -L "$datadir" ]; then
  datadir=$(readlink "$datadir")
fi

case "$cmd" in
  start)
    port=${3:?port}; ephemeral=${4:-}
    ensure_binaries
    bin=$(bindir)
    if { [ "$ephemeral" = "--ephemeral" ] || [ "$ephemeral" = "--fresh" ]; } && [ -d "$datadir" ]; then
      as_owner "$bin/pg_ctl" -D "$datadir" -m immediate stop >/dev/null 2>&1 || true
      rm -rf "$datadir"
    fi
    if [ ! -f "$datadir/PG_VERSION" ]; then
      mkdir -p "$datadir"
      [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$datadir"
      chmod 700 "$datadir"
      as_owner "$bin/initdb" -D "$datadir" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null \
        || as_owner "$bin/initdb" -D "$datadir" -U postgres --auth=trust -E UTF8 --no-locale >/dev/null
      {
        echo "listen_addresses = '127.0.0.1'"
        echo "unix_socket_directories = '$datadir'"
        echo "max_connections = 400"
        echo "shared_buffers = 256MB"
        if [ "$ephemeral" = "--ephemeral" ]; then
          echo "fsync = off"
          echo "synchronous_commit = off"
          echo "full_page_writes = off"
        fi
        if [ "$ephemeral" = "--fresh" ]; then
          echo "shared_preload_libraries = 'pg_stat_statements'"
          echo "pg_stat_statements.track = all"
          # Checkpoints only when asked for (bench.sh asks before every
          # run), never in the middle of a measured window.
          echo "max_wal_size = 16GB"
          echo "checkpoint_timeout = 1h"
        fi
      } >> "$datadir/postgresql.conf"
    fi
    if [ -n "${BILLING_PG_SSL_DIR:-}" ]; then
      for f in server.crt server.key; do
        [ -f "$BILLING_PG_SSL_DIR/$f" ] || die "BILLING_PG_SSL_DIR: no $f in $BILLING_PG_SSL_DIR"
        cp "$BILLING_PG_SSL_DIR/$f" "$datadir/$f"
        [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$datadir/$f"
        chmod 600 "$datadir/$f"
      done
      {
        echo "ssl = on"
        echo "ssl_cert_file = 'server.crt'"
        echo "ssl_key_file = 'server.key'"
      } > "$datadir/ssl.conf"
      grep -qx "include_if_exists = 'ssl.conf'" "$datadir/postgresql.conf" \
        || echo "include_if_exists = 'ssl.conf'" >> "$datadir/postgresql.conf"
      {
        echo "# pg.sh (BILLING_PG_SSL_DIR): TCP over TLS only."
        echo "local all all trust"
        echo "hostssl all all 127.0.0.1/32 trust"
        echo "hostssl all all ::1/128 trust"
      } > "$datadir/pg_hba.conf"
      [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$datadir/ssl.conf" "$datadir/pg_hba.conf"
    fi
    if ! as_owner "$bin/pg_ctl" -D "$datadir" status >/dev/null 2>&1; then
      as_owner "$bin/pg_ctl" -D "$datadir" -o "-p $port" -l "$datadir/server.log" -w -t 60 start >/dev/null \
        || { tail -n 20 "$datadir/server.log" >&2; die "PostgreSQL did not start"; }
    fi
    echo "postgres://postgres@127.0.0.1:$port/postgres"
    ;;
  stop)
    bin=$(bindir) || exit 0
    [ -f "$datadir/PG_VERSION" ] || exit 0
    as_owner "$bin/pg_ctl" -D "$datadir" -m fast -w stop >/dev/null 2>&1 || true
    ;;
  wipe)
    # A throwaway cluster (make test's): stopped, then its data removed
    # wherever it lives, so that none is left under /var/lib/billing-dev
    # once the checkout is gone.
    if [ -f "$datadir/PG_VERSION" ] && bin=$(bindir); then
      as_owner "$bin/pg_ctl" -D "$datadir" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$datadir"
    if [ -L "$given" ]; then rm -f "$given"; fi
    ;;
  *) die "unknown command $cmd" ;;
esac

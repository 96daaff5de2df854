#!/usr/bin/env bash
# Checks the deployment files without Docker or a Kubernetes cluster:
# Dockerfile, docker-compose.yml (with deploy/) and the Helm chart in
# helm/billing. `make test` runs it; scripts/check_deploy.py says what each
# check holds.
#
#   scripts/check-deploy.sh [--bin PATH]
#
# It builds `billing` (debug) unless --bin or BILLING_BIN names one: the
# variables the files may set are the ones the binary's --help declares.
#
# The tools live in a virtualenv under the cache directory (made once, from
# PyPI, pinned below, then reused; nothing is written into the checkout):
#   check-jsonschema  its vendored copy of the Compose Specification's schema
#                     (the compose-spec project's compose_spec.json)
#   kubernetes-validate  the Kubernetes API's JSON schemas, one set per version
#   helm-python-sdk   Helm's own Go SDK (v4) built as a C library, for
#                     rendering and linting the chart (no `helm` binary can be
#                     installed here)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${BILLING_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/billing}

requirements="check-jsonschema==0.39.0
kubernetes-validate==1.37.0
helm-python-sdk==0.2.2
jsonschema==4.26.0
PyYAML==6.0.3"

die() { echo "check-deploy.sh: $*" >&2; exit 1; }

bin=${BILLING_BIN:-}
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=${2:?--bin PATH}; shift 2 ;;
    *) die "usage: check-deploy.sh [--bin PATH]" ;;
  esac
done

# The virtualenv, named after its requirements so that a change makes a new one.
venv="$cache/deploy-check-$(printf '%s' "$requirements" | sha256sum | cut -c1-12)"
ensure_venv() {
  [ -f "$venv/.complete" ] && return
  mkdir -p "$cache"
  # One maker at a time; another waits, then finds it made.
  exec 9>"$venv.lock"
  flock 9
  if [ ! -f "$venv/.complete" ]; then
    echo "check-deploy.sh: installing the checking tools into $venv (once)..." >&2
    rm -rf "$venv"
    if ! python3 -m venv "$venv" >&2; then
      # Debian's python3 keeps venv (ensurepip) in a package of its own.
      local sudo=""
      [ "$(id -u)" -eq 0 ] || sudo=sudo
      $sudo apt-get update -qq >&2
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >&2
      rm -rf "$venv"
      python3 -m venv "$venv" >&2 || die "cannot make a virtualenv with python3"
    fi
    printf '%s\n' "$requirements" > "$venv/requirements.txt"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
      --only-binary=:all: -r "$venv/requirements.txt" >&2 \
      || die "cannot install the checking tools from PyPI"
    # The Helm library comes as three identical 85 MB files (a wheel holds
    # no symbolic links): keep one, hard-linked under the other names.
    local lib
    for lib in "$venv"/lib/python3*/site-packages/helm_python/lib/libhelm_c.so.*; do
      if cmp -s "$lib" "${lib%%.so.*}.so"; then ln -f "${lib%%.so.*}.so" "$lib"; fi
    done
    touch "$venv/.complete"
  fi
  exec 9>&-
}

ensure_bin() {
  [ -n "$bin" ] && return
  echo "check-deploy.sh: building billing..." >&2
  (cd "$root" && cargo build --quiet --bin billing) || die "cannot build billing"
  local target=${CARGO_TARGET_DIR:-target}
  case "$target" in /*) ;; *) target="$root/$target" ;; esac
  bin="$target/debug/billing"
}

ensure_venv
ensure_bin
[ -x "$bin" ] || die "no executable at $bin"
exec "$venv/bin/python" -u "$root/scripts/check_deploy.py" --root "$root" --bin "$bin"

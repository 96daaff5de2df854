#!/usr/bin/env bash
# Makes the certificates docker-compose.tls.yml mounts: a development CA, the
# API's server certificate and a client certificate, all public to whoever
# has this checkout. For trying TLS and mutual TLS on one machine, never for
# production (there, cert-manager or your own PKI: see helm/billing).
#
#   deploy/tls/generate.sh          # the CA once, then new server/client certificates
#
#   deploy/tls/ca.crt, ca.key       the CA (its key stays here, never mounted)
#   deploy/tls/api/                 mounted at /etc/billing/grpc-tls in the api
#     tls.crt, tls.key              containers: the server certificate (for
#     ca.crt                        api, localhost, 127.0.0.1), the CA
#   deploy/tls/client/              for `billing call`/`health`/`admin` from the
#     tls.crt, tls.key              host, when mutual TLS is on
#
# Running it again keeps the CA and issues new server and client
# certificates: the running api containers pick the new one up within a
# second (BILLING_TLS_RELOAD_INTERVAL_MS), without a restart.
#
# The keys are left readable by everyone (0644): Compose bind-mounts them
# as they are, and the containers run as uid 65532.
set -euo pipefail

dir=$(cd "$(dirname "$0")" && pwd)
days=${DAYS:-30}
command -v openssl >/dev/null || { echo "generate.sh: needs openssl" >&2; exit 1; }
mkdir -p "$dir/api" "$dir/client"
# Written beside the results, so that each lands by a rename.
work=$(mktemp -d "$dir/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

if [ ! -f "$dir/ca.key" ] || [ ! -f "$dir/ca.crt" ]; then
  newkey "$dir/ca.key"
  openssl req -x509 -new -key "$dir/ca.key" -sha256 -days 3650 \
    -subj "/CN=billing compose development CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$dir/ca.crt"
  echo "generate.sh: made the CA: $dir/ca.crt" >&2
fi

# issue NAME SUBJECT EXTENSIONS OUT_DIR
issue() {
  newkey "$work/$1.key"
  openssl req -new -key "$work/$1.key" -subj "$2" -out "$work/$1.csr"
  printf '%s\n' "$3" > "$work/$1.ext"
  openssl x509 -req -in "$work/$1.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
    -CAcreateserial -CAserial "$work/ca.srl" -sha256 -days "$days" \
    -extfile "$work/$1.ext" -out "$work/$1.crt" 2>/dev/null
  # Key first, then the certificate, each replaced in one rename: the
  # server reloads only a pair whose key matches, so it never takes a
  # half-written one.
  chmod 0644 "$work/$1.key" "$work/$1.crt"
  mv -f "$work/$1.key" "$4/tls.key"
  mv -f "$work/$1.crt" "$4/tls.crt"
}

# The server's certificate also allows client authentication: with mutual TLS
# on, `billing health` in the container presents it (BILLING_TLS_CERT/KEY).
issue api "/CN=api" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=DNS:api,DNS:localhost,IP:127.0.0.1" "$dir/api"
cp "$dir/ca.crt" "$dir/api/ca.crt"
issue client "/CN=billing compose client" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth" "$dir/client"
chmod 0644 "$dir/api/ca.crt"
echo "generate.sh: issued $dir/api/tls.crt (api, localhost, 127.0.0.1) and $dir/client/tls.crt, valid $days days" >&2

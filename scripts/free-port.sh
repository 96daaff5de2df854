#!/usr/bin/env bash
# Prints the first TCP port on 127.0.0.1 from $1 upwards that a server can
# bind: nothing listens on it, and no connection uses it as its own local
# port (ports from 32768 up are also handed to outgoing connections, and a
# server cannot bind one that a connection holds).
#
#   scripts/free-port.sh 55432
set -euo pipefail

from=${1:?usage: free-port.sh FIRST_PORT}

bindable() {
  if command -v python3 >/dev/null; then
    python3 -c 'import socket, sys; socket.socket().bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
  else
    # Without python, at least nothing must listen there.
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}

for port in $(seq "$from" $(( from + 200 ))); do
  if bindable "$port"; then
    echo "$port"
    exit 0
  fi
done
echo "free-port.sh: no free port from $from" >&2
exit 1

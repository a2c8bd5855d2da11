#!/bin/sh
# Exports where this host's app answers: the address the running app wrote at its start, once a
# GET there works (a balancer must not be sent to an app that is not up).
set -eu
addr_file="$TROOPS_STATE_DIR/haproxy-pool/app.addr"
if [ ! -s "$addr_file" ]; then
    echo "app: $addr_file is missing: is the app running? (see haproxy-pool-app.service)" >&2
    exit 1
fi
addr=$(cat "$addr_file")
python3 - "$addr" <<'PY'
import sys, urllib.request
with urllib.request.urlopen(f"http://{sys.argv[1]}/", timeout=5) as reply:
    print("app:", reply.read().decode().strip())
PY
printf '%s\n' "$addr" > "$TROOPS_EXPORTS/addr"
echo "app: exported addr=$addr"

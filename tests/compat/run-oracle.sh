#!/bin/bash
# Runs the http-oddities corpus against real Chromium and checks expected.toml.
#
# Prerequisites (nothing else is installed by hand):
#   apt-get update && apt-get install -y chromium      # Debian's chromium -> /usr/bin/chromium
#   (cd tests/compat && npm ci)                        # playwright-core, pinned in package-lock.json
# It also uses what the machine image already has: root (for `ip netns`),
# iproute2, node, and /usr/bin/python3 (3.11+: tomllib) with python3-brotli.
#
# Usage:  tests/compat/run-oracle.sh [--payload clean|eicar] [--cases id,id,...] [--out FILE]
#
# Chromium only advertises br/zstd to https and localhost, and HTTP/0.9 depends
# on the port, so the cases must come from a real non-loopback address: the
# script creates two network namespaces joined by a veth pair (server
# 10.77.0.1, browser 10.77.0.2; private addresses that exist only inside those
# namespaces), runs server.py in one and oracle.mjs in the other, then
# check.py.  Everything it creates is removed on exit, also on failure.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CORPUS="$(cd "$HERE/../data/http-oddities" && pwd)"
PAYLOAD=clean
CASES=""
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --payload) PAYLOAD="$2"; shift 2 ;;
    --cases) CASES="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

[ "$(id -u)" = 0 ] || { echo "run-oracle.sh: needs root (ip netns)" >&2; exit 2; }
[ -x /usr/bin/chromium ] || { echo "run-oracle.sh: /usr/bin/chromium missing: apt-get install chromium" >&2; exit 2; }
[ -d "$HERE/node_modules/playwright-core" ] || { echo "run-oracle.sh: run 'npm ci' in $HERE first" >&2; exit 2; }

if [ -z "$OUT" ]; then
  mkdir -p "$HERE/out"
  OUT="$HERE/out/oracle-$PAYLOAD-$(date +%Y%m%d-%H%M%S).jsonl"
fi
if [ "$PAYLOAD" = eicar ] && [ "$OUT" != "-" ]; then
  # Results of an eicar run hold the test file (base64): keep them off disk.
  OUT="-"
fi

TAG="ohx$$"
NS_SRV="$TAG-srv"
NS_BRW="$TAG-brw"
VETH_SRV="${TAG}s"
VETH_BRW="${TAG}b"
SRV_ADDR=10.77.0.1
BRW_ADDR=10.77.0.2
SERVER_PID=""

cleanup() {
  set +e
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; fi
  ip netns pids "$NS_SRV" 2>/dev/null | xargs -r kill 2>/dev/null
  ip netns pids "$NS_BRW" 2>/dev/null | xargs -r kill 2>/dev/null
  ip link del "$VETH_SRV" 2>/dev/null
  ip netns del "$NS_SRV" 2>/dev/null
  ip netns del "$NS_BRW" 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip netns add "$NS_SRV"
ip netns add "$NS_BRW"
ip link add "$VETH_SRV" type veth peer name "$VETH_BRW"
ip link set "$VETH_SRV" netns "$NS_SRV"
ip link set "$VETH_BRW" netns "$NS_BRW"
ip -n "$NS_SRV" addr add "$SRV_ADDR/24" dev "$VETH_SRV"
ip -n "$NS_BRW" addr add "$BRW_ADDR/24" dev "$VETH_BRW"
for ns in "$NS_SRV" "$NS_BRW"; do ip -n "$ns" link set lo up; done
ip -n "$NS_SRV" link set "$VETH_SRV" up
ip -n "$NS_BRW" link set "$VETH_BRW" up

ip netns exec "$NS_SRV" /usr/bin/python3 "$HERE/server.py" --bind "$SRV_ADDR" --dir "$CORPUS" \
  > "${TMPDIR:-/tmp}/$TAG-server.log" 2>&1 &
SERVER_PID=$!

# Wait until both ports answer from the browser's namespace.
ip netns exec "$NS_BRW" /usr/bin/python3 - "$SRV_ADDR" <<'EOF'
import socket, sys, time
deadline = time.time() + 15
for port in (80, 8081):
    while True:
        try:
            socket.create_connection((sys.argv[1], port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline:
                sys.exit(f"server not reachable on port {port}")
            time.sleep(0.2)
EOF

ORACLE_ARGS=(--server "$SRV_ADDR" --payload "$PAYLOAD")
[ -n "$CASES" ] && ORACLE_ARGS+=(--cases "$CASES")
echo "run-oracle.sh: $(/usr/bin/chromium --version 2>/dev/null | head -1)" >&2

status=0
if [ "$OUT" = "-" ]; then
  ip netns exec "$NS_BRW" node "$HERE/oracle.mjs" "${ORACLE_ARGS[@]}" \
    | /usr/bin/python3 "$HERE/check.py" - --dir "$CORPUS" --payload "$PAYLOAD" || status=$?
else
  ip netns exec "$NS_BRW" node "$HERE/oracle.mjs" "${ORACLE_ARGS[@]}" > "$OUT"
  echo "run-oracle.sh: oracle results in $OUT" >&2
  /usr/bin/python3 "$HERE/check.py" "$OUT" --dir "$CORPUS" --payload "$PAYLOAD" || status=$?
fi
exit "$status"

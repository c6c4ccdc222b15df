#!/usr/bin/env bash
# One lever at a time: the heartbeat scenario (cluster mode, one replica) against several gateway
# builds and the Node baseline, in one run on the same redis-server and database, so each
# before/after pair differs by one change only. Build the binaries first (e.g. one per commit,
# `git worktree add` + `cargo build --release`, copied aside), then:
#
#   bash loadtest/levers.sh before=/tmp/gw-a after-pool=/tmp/gw-b after-typed=/tmp/gw-c
#
# Sizes: LEVER_DEVICES (5000), LEVER_HB_MS (1000), LEVER_HOLD_S (30); BASELINE=0 skips the
# Node peer. Prints one line per build: ack p50/p99, heartbeats per second, CPU per 1,000
# heartbeats, RSS per connection, and any dropped heartbeats or connections.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
PROFILE=${PROFILE:-release}
SOURCES=${SOURCES:-8}
BASELINE=${BASELINE:-1}
devices=${LEVER_DEVICES:-5000}
hb_ms=${LEVER_HB_MS:-1000}
hold=${LEVER_HOLD_S:-30}
[ $# -gt 0 ] || { sed -n 2,12p "$0" >&2; exit 2; }

# shellcheck source=loadtest/lib.sh
source "$root/loadtest/lib.sh"
[ "$BASELINE" = 0 ] || install_baseline
start_cluster_services levers
"$bin/vizora-gateway" seed --prefix load --orgs 100 --devices "$devices" >&2
args=(--devices "$devices" --orgs 100 --ramp-per-s 1000 --heartbeat-ms "$hb_ms" --hold-s "$hold")

summary() {
  local label=$1 out=$2
  printf '%-14s %s | %s | %s | %s | %s\n' "$label" \
    "$(echo "$out" | grab 'ack p50 [0-9.]+ ms, p99 [0-9.]+ ms')" \
    "$(echo "$out" | grab '\([0-9]+/s over the hold\)')" \
    "$(echo "$out" | grab '[0-9.]+ s per 1,000')" \
    "$(echo "$out" | grab '[0-9.]+ KiB per connection')" \
    "$(echo "$out" | grep -oE '[0-9]+ (errors|timeouts|server disconnects)[^;,]*' | tr '\n' ' ')"
}

results=()
for spec in "$@"; do
  label=${spec%%=*} exe=${spec#*=}
  log "heartbeat on $label ($exe): $devices devices every $hb_ms ms for $hold s"
  port=$(free_port)
  env PORT="$port" HOST=127.0.0.1 REPLICA_ID="$label" STORAGE_DIR="$work/storage-$label" \
    MESSAGE_RATE_PER_SOCKET=100 MESSAGE_BURST_PER_SOCKET=100 \
    "$exe" serve >"$work/$label.log" 2>&1 &
  gw_pid=$!
  pids+=("$gw_pid")
  wait_ready "$port" "$gw_pid" "$work/$label.log"
  sleep 1
  out=$(swarm --addr "127.0.0.1:$port" "${args[@]}" --gateway-pid "$gw_pid" | tee -a /dev/stderr)
  stop_gateway "$gw_pid"
  results+=("$(summary "$label" "$out")")
done
if [ "$BASELINE" != 0 ]; then
  log "heartbeat on the Node baseline"
  port=$(free_port)
  start_baseline levers-node "$port"
  sleep 1
  out=$(swarm --addr "127.0.0.1:$port" "${args[@]}" --gateway-pid "$bl_pid" | tee -a /dev/stderr)
  stop_gateway "$bl_pid"
  results+=("$(summary node "$out")")
fi
log "levers: $devices devices, one heartbeat per $hb_ms ms, $hold s hold"
printf '%s\n' "${results[@]}"

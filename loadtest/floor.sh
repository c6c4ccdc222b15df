#!/usr/bin/env bash
# Memory per idle connection, three servers in one run (issue 18, BENCHMARKS.md "What remains
# inside the engine"): the gateway in its embedded mode, `examples/engine_floor.rs` (socketioxide
# with the gateway's engine settings and nothing of the gateway) and the Node baseline (no
# Redis, as the embedded gateway). The same swarm command against each, one after the other:
#
#   bash loadtest/floor.sh                 # FLOOR_DEVICES=10000, release build
#
# The gateway's own share per socket is gateway − engine_floor; what socketioxide, engineioxide,
# hyper and tokio keep is the floor itself.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
PROFILE=${PROFILE:-release}
SOURCES=${SOURCES:-8}
devices=${FLOOR_DEVICES:-10000}

# shellcheck source=loadtest/lib.sh
source "$root/loadtest/lib.sh"
if [ "$PROFILE" = release ]; then
  cargo build -q --release -p vizora-gateway --example engine_floor
else
  cargo build -q -p vizora-gateway --example engine_floor
fi
install_baseline
args=(--devices "$devices" --orgs 100 --ramp-per-s 2000 --heartbeat-ms 0 --hold-s 10)
rss() { echo "$1" | grab '[0-9.]+ KiB per connection'; }

db="sqlite://$work/floor.sqlite?mode=rwc"
DATABASE_URL=$db "$bin/vizora-gateway" seed --prefix load --orgs 100 --devices "$devices" >&2

port=$(free_port)
start_gateway floor-gw "$port" DATABASE_URL="$db"
gw_out=$(swarm --addr "127.0.0.1:$port" "${args[@]}" --gateway-pid "$gw_pid" | tee -a /dev/stderr)
stop_gateway "$gw_pid"

port=$(free_port)
PORT=$port "$bin/examples/engine_floor" >"$work/engine.log" 2>&1 &
fl_pid=$!
pids+=("$fl_pid")
wait_ready "$port" "$fl_pid" "$work/engine.log"
fl_out=$(swarm --addr "127.0.0.1:$port" "${args[@]}" --gateway-pid "$fl_pid" | tee -a /dev/stderr)
stop_gateway "$fl_pid"

port=$(free_port)
start_baseline floor-node "$port"
bl_out=$(swarm --addr "127.0.0.1:$port" "${args[@]}" --gateway-pid "$bl_pid" | tee -a /dev/stderr)
stop_gateway "$bl_pid"

printf '\n%s idle sockets each (swarm %s)\n' "$devices" "${args[*]}"
printf '%-12s %s\n' gateway "$(rss "$gw_out")" engine_floor "$(rss "$fl_out")" node "$(rss "$bl_out")"
for out in "$gw_out" "$fl_out" "$bl_out"; do
  echo "$out" | grep -oE '[0-9]+ (errors|timeouts|server disconnects)[^;,]*' | grep -v '^0 ' || true
done

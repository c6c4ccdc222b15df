#!/usr/bin/env bash
# Heartbeats against one Redis primary and against a three-primary Redis Cluster, on the same
# machine, in one run (issue 19): the same gateway binary, the same swarm, one replica. On one
# machine this shows the cluster's overhead (routing, one pipeline per shard, the sharded
# sweep), not its capacity: the three primaries share the cores the single one had alone.
#
#   bash loadtest/cluster.sh             # CLUSTER_DEVICES=5000, one heartbeat per second, 30 s
#
# Prints one line per setup: ack p50/p99, heartbeats per second, gateway CPU per 1,000
# heartbeats, Redis CPU per 1,000 heartbeats (all its processes), the stores' connection
# discards (from the gateway's log), and any errors.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
PROFILE=${PROFILE:-release}
SOURCES=${SOURCES:-8}
devices=${CLUSTER_DEVICES:-5000}
hb_ms=${CLUSTER_HB_MS:-1000}
hold=${CLUSTER_HOLD_S:-30}

# shellcheck source=loadtest/lib.sh
source "$root/loadtest/lib.sh"
start_cluster_services cluster
single_url=$REDIS_URL
"$bin/vizora-gateway" seed --prefix load --orgs 100 --devices "$devices" >&2
args=(--devices "$devices" --orgs 100 --ramp-per-s 1000 --heartbeat-ms "$hb_ms" --hold-s "$hold")

# Three primaries, no replicas (the failover tests cover replicas; this measures the data path).
cports=()
# Each node's cluster bus gets its own free port (left to itself it takes port + 10000, which
# does not exist for a port above 55535).
for i in 1 2 3; do
  p=$(free_port)
  mkdir -p "$work/node$i"
  redis-server --port "$p" --cluster-port "$(free_port)" --bind 127.0.0.1 --cluster-enabled yes \
    --cluster-config-file "$work/node$i/nodes.conf" --cluster-node-timeout 2000 \
    --save "" --appendonly no --dir "$work/node$i" >"$work/node$i.log" 2>&1 &
  pids+=($!)
  cports+=("$p")
done
for i in 1 2 3; do
  p=${cports[$((i - 1))]}
  for _ in $(seq 1 100); do redis-cli -p "$p" PING >/dev/null 2>&1 && break; sleep 0.1; done
  redis-cli -p "$p" PING >/dev/null 2>&1 || { echo "cluster node $i did not start:" >&2; cat "$work/node$i.log" >&2; exit 1; }
done
redis-cli --cluster create "${cports[@]/#/127.0.0.1:}" --cluster-yes >&2
for _ in $(seq 1 100); do
  redis-cli -p "${cports[0]}" CLUSTER INFO | grep -q cluster_state:ok && break
  sleep 0.1
done
seeds=$(printf '127.0.0.1:%s,' "${cports[@]}"); seeds=${seeds%,}

# CPU seconds of processes (user + system), from /proc.
cpu_of() {
  local total=0 t
  for pid in "$@"; do
    t=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    total=$((total + t))
  done
  echo "$total"
}
redis_pids() { pgrep -f "redis-server 127.0.0.1:($1)" | tr '\n' ' '; }

results=()
run() {
  local label=$1 pattern=$2; shift 2
  log "heartbeat on $label: $devices devices every $hb_ms ms for $hold s"
  port=$(free_port)
  env PORT="$port" HOST=127.0.0.1 REPLICA_ID="$label" STORAGE_DIR="$work/storage-$label" \
    MESSAGE_RATE_PER_SOCKET=100 MESSAGE_BURST_PER_SOCKET=100 "$@" \
    "$bin/vizora-gateway" serve >"$work/$label.log" 2>&1 &
  gw_pid=$!
  pids+=("$gw_pid")
  wait_ready "$port" "$gw_pid" "$work/$label.log"
  sleep 1
  # shellcheck disable=SC2046
  local rpids=($(redis_pids "$pattern")) before after hz
  before=$(cpu_of "${rpids[@]}")
  out=$(swarm --addr "127.0.0.1:$port" "${args[@]}" --gateway-pid "$gw_pid" | tee -a /dev/stderr)
  after=$(cpu_of "${rpids[@]}")
  stop_gateway "$gw_pid"
  hz=$(getconf CLK_TCK)
  local acks redis_cpu discards
  # Each replacement of the stores' cluster connection holds the calls behind it (see pool.rs).
  discards=$(grep -c "Redis Cluster connection discarded" "$work/$label.log" || true)
  acks=$(echo "$out" | grep -oE '[0-9]+ heartbeat acks' | head -n1 | grep -oE '[0-9]+')
  redis_cpu=$(python3 -c "print(f'{($after - $before) / $hz / max(1, ${acks:-0}) * 1000:.3f}')")
  results+=("$(printf '%-14s %s | %s | %s | redis %s s per 1,000 | %s connection discards | %s' "$label" \
    "$(echo "$out" | grab 'ack p50 [0-9.]+ ms, p99 [0-9.]+ ms')" \
    "$(echo "$out" | grab '\([0-9]+/s over the hold\)')" \
    "$(echo "$out" | grab '[0-9.]+ s per 1,000')" \
    "$redis_cpu" "${discards:-0}" \
    "$(echo "$out" | grep -oE '[0-9]+ (errors|timeouts|server disconnects)[^;,]*' | tr '\n' ' ')")")
}

rport=${single_url##*:}; rport=${rport%/}
run one-primary "$rport" REDIS_URL="$single_url"
run cluster-3 "$(IFS='|'; echo "${cports[*]}")" REDIS_URL= REDIS_CLUSTER_NODES="$seeds"

log "Redis Cluster overhead: $devices devices, one heartbeat per $hb_ms ms, $hold s hold, one gateway replica"
printf '%s\n' "${results[@]}"

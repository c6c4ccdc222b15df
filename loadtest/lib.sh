# Shared by bench.sh and scaleup.sh (sourced, after `root` and `PROFILE` are set): builds the
# gateway and the swarm, a work directory removed on exit with every process started, fresh
# secrets, limits raised out of the way, and start_gateway / stop_gateway / swarm / grab, plus
# install_baseline / start_baseline for the Node peer (stop it with stop_gateway).
# shellcheck shell=bash
log() { printf '\n==> %s\n' "$*" >&2; }
: "${root:?lib.sh is sourced after root is set}"
if [ "$PROFILE" = release ]; then
  cargo build -q --release -p vizora-gateway -p vizora-swarm
else
  cargo build -q -p vizora-gateway -p vizora-swarm
fi
bin=$root/target/$PROFILE
ulimit -n "$(ulimit -Hn)" || true

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${pgdb:-}" ] && psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $pgdb" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
secret() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
DEVICE_JWT_SECRET=$(secret) JWT_SECRET=$(secret) INTERNAL_API_SECRET=$(secret)
export DEVICE_JWT_SECRET JWT_SECRET INTERNAL_API_SECRET
export RUST_LOG=warn CONNECT_RATE_GLOBAL=100000 CONNECT_BURST_GLOBAL=100000 \
  CONNECT_RATE_PER_IP=100000 CONNECT_BURST_PER_IP=100000 MAX_CONNECTIONS=1000000 \
  MAX_TCP_CONNECTIONS=1000000 MAX_TCP_CONNECTIONS_PER_IP=1000000

# start_gateway NAME PORT [VAR=VALUE…] → pid in $gw_pid
start_gateway() {
  local name=$1 port=$2; shift 2
  env PORT="$port" HOST=127.0.0.1 REPLICA_ID="$name" STORAGE_DIR="$work/storage-$name" "$@" \
    "$bin/vizora-gateway" serve >"$work/$name.log" 2>&1 &
  gw_pid=$!
  pids+=("$gw_pid")
  wait_ready "$port" "$gw_pid" "$work/$name.log"
}
# wait_ready PORT PID LOG: until /api/health/ready answers (30 s), or the process died (its log
# is printed).
wait_ready() {
  for _ in $(seq 1 300); do
    curl -fsS "http://127.0.0.1:$1/api/health/ready" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || { cat "$3" >&2; return 1; }
    sleep 0.1
  done
  return 1
}
stop_gateway() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

swarm() { "$bin/vizora-swarm" --sources "$SOURCES" "$@"; }

# The benchmark's peer (loadtest/baseline, issue 18): a minimal socket.io 4 server that runs the
# gateway's heartbeat script for the same swarm. install_baseline: `npm ci` from its lock file.
install_baseline() {
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "node and npm are needed for the baseline (BASELINE=0 skips it)" >&2
    return 1
  fi
  (cd "$root/loadtest/baseline" && npm ci --no-audit --no-fund --loglevel=error) >&2
}
# start_baseline NAME PORT [VAR=VALUE…] → pid in $bl_pid: one node process, started, logged and
# waited for like start_gateway (the same environment: secrets, REDIS_URL when exported).
start_baseline() {
  local name=$1 port=$2; shift 2
  env PORT="$port" HOST=127.0.0.1 "$@" node "$root/loadtest/baseline/server.mjs" \
    >"$work/$name.log" 2>&1 &
  bl_pid=$!
  pids+=("$bl_pid")
  wait_ready "$port" "$bl_pid" "$work/$name.log"
}
grab() { grep -oE "$1" | head -n1; }


# start_cluster_services NAME: a redis-server on a free port and a fresh, migrated PostgreSQL
# database vizora_NAME_PID (dropped on exit); exports REDIS_URL and DATABASE_URL.
start_cluster_services() {
  rport=$(free_port)
  redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
    --dir "$work" >"$work/redis.log" 2>&1 &
  pids+=($!)
  export REDIS_URL=redis://127.0.0.1:$rport/
  pgdb=vizora_${1}_$$
  psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $pgdb" >/dev/null
  export DATABASE_URL=postgres://postgres@127.0.0.1:5432/$pgdb
  DB_MIGRATE=true "$bin/vizora-gateway" migrate >&2
}

#!/usr/bin/env bash
# The benchmark: runs the full scenarios on this machine and writes BENCHMARKS.md (the machine,
# the exact commands, the figures). Everything runs on loopback; the swarm and the gateway share
# the machine's cores, so the figures are a floor. Sizes are parameters:
#
#   bash loadtest/bench.sh                         # release build, default sizes
#   IDLE_DEVICES=20000 HB_DEVICES=10000 bash loadtest/bench.sh
#   QUICK=1 bash loadtest/bench.sh                 # small sizes, debug build: checks the script
#                                                  # (writes target/BENCHMARKS.quick.md)
#
# Scenarios:
#   idle      one replica, embedded mode: IDLE_DEVICES idle sockets; RSS per connection, connect rate
#   heartbeat one replica, cluster mode (redis-server, PostgreSQL): HB_DEVICES heartbeating every
#             HB_MS for HOLD_S; ack p50/p99, CPU per 1,000 heartbeats, database rows written
#   fanout    three replicas, cluster mode: FANOUT_DEVICES spread over them, org broadcasts pushed
#             through the internal API of every replica; delivery p50/p99
#   failover  two replicas, cluster mode: FAILOVER_DEVICES spread over both, one replica SIGKILLed
#             during the hold; its devices reconnect to the other (socket.io-client's backoff) and
#             the time until each is connected again is reported
#   churn     one replica, cluster mode: CHURN_CYCLES × CHURN_DEVICES connect, heartbeat, all close;
#             RSS after each cycle (leak or plateau)
#   scale-up  loadtest/scaleup.sh: SCALE_DEVICES on two replicas, a third joins; time to balance
#             and transports closed per screen moved (its own section of the file)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
# A QUICK run checks the script; its small figures must not replace the committed ones.
if [ -n "${QUICK:-}" ]; then
  out=${OUT:-$root/target/BENCHMARKS.quick.md}
  mkdir -p "$(dirname "$out")"
else
  out=${OUT:-$root/BENCHMARKS.md}
fi

if [ -n "${QUICK:-}" ]; then
  : "${IDLE_DEVICES:=300}" "${HB_DEVICES:=200}" "${HB_MS:=1000}" "${HOLD_S:=5}" "${FANOUT_DEVICES:=150}"
  : "${CHURN_CYCLES:=3}" "${CHURN_DEVICES:=100}" "${FAILOVER_DEVICES:=100}" "${PROFILE:=debug}"
fi
# 18,000: under the 20,000 open files a process commonly gets (the gateway and the swarm each
# hold one per socket, plus their own files).
IDLE_DEVICES=${IDLE_DEVICES:-18000}
HB_DEVICES=${HB_DEVICES:-10000}
HB_MS=${HB_MS:-5000}
HOLD_S=${HOLD_S:-30}
FANOUT_DEVICES=${FANOUT_DEVICES:-10000}
CHURN_CYCLES=${CHURN_CYCLES:-14}
CHURN_DEVICES=${CHURN_DEVICES:-2000}
FAILOVER_DEVICES=${FAILOVER_DEVICES:-4000}
PROFILE=${PROFILE:-release}
SOURCES=${SOURCES:-8}

# shellcheck source=loadtest/lib.sh
source "$root/loadtest/lib.sh"

# ---- idle: embedded mode --------------------------------------------------------------------
log "idle: $IDLE_DEVICES sockets on one embedded replica"
db_idle="sqlite://$work/idle.sqlite?mode=rwc"
DATABASE_URL=$db_idle "$bin/vizora-gateway" seed --prefix load --orgs 100 --devices "$IDLE_DEVICES" >&2
port=$(free_port)
start_gateway idle "$port" DATABASE_URL="$db_idle"
idle_cmd="vizora-swarm --addr 127.0.0.1:$port --devices $IDLE_DEVICES --orgs 100 --ramp-per-s 2000 --heartbeat-ms 0 --hold-s 10 --gateway-pid PID"
idle_out=$(swarm --addr "127.0.0.1:$port" --devices "$IDLE_DEVICES" --orgs 100 --ramp-per-s 2000 \
  --heartbeat-ms 0 --hold-s 10 --gateway-pid "$gw_pid" | tee -a /dev/stderr)
stop_gateway "$gw_pid"

# ---- cluster services ------------------------------------------------------------------------
start_cluster_services bench
max=$(( HB_DEVICES > FANOUT_DEVICES ? HB_DEVICES : FANOUT_DEVICES ))
max=$(( max > CHURN_DEVICES ? max : CHURN_DEVICES ))
max=$(( max > FAILOVER_DEVICES ? max : FAILOVER_DEVICES ))
"$bin/vizora-gateway" seed --prefix load --orgs 100 --devices "$max" >&2
# Row versions written since a transaction id: exact, unlike pg_stat counters (backends report
# those up to 10 s late).
xid_now() { psql -qtA -h 127.0.0.1 -U postgres -d "$pgdb" -c "SELECT txid_current() % 4294967296"; }
rows_since() {
  psql -qtA -h 127.0.0.1 -U postgres -d "$pgdb" -c "SELECT
    (SELECT count(*) FROM devices WHERE xmin::text::bigint >= $1) +
    (SELECT count(*) FROM realtime_presence WHERE xmin::text::bigint >= $1)"
}

# ---- heartbeat: one replica in cluster mode --------------------------------------------------
log "heartbeat: $HB_DEVICES devices every $HB_MS ms for $HOLD_S s (cluster mode)"
port=$(free_port)
start_gateway hb "$port" MESSAGE_RATE_PER_SOCKET=100 MESSAGE_BURST_PER_SOCKET=100
sleep 1
hb_cmd="vizora-swarm --addr 127.0.0.1:$port --devices $HB_DEVICES --orgs 100 --ramp-per-s 1000 --heartbeat-ms $HB_MS --hold-s $HOLD_S --gateway-pid PID"
# Database rows written during the steady phase only (the swarm marks its start and end).
(
  until [ -e "$work/mark.hold" ]; do sleep 0.2; done; sleep 2; xid_now >"$work/xid0"
  until [ -e "$work/mark.end" ]; do sleep 0.2; done; rows_since "$(cat "$work/xid0")" >"$work/rows"
) &
sampler=$!
hb_out=$(swarm --addr "127.0.0.1:$port" --devices "$HB_DEVICES" --orgs 100 --ramp-per-s 1000 \
  --heartbeat-ms "$HB_MS" --hold-s "$HOLD_S" --gateway-pid "$gw_pid" --mark "$work/mark" | tee -a /dev/stderr)
wait "$sampler"
rows=$(cat "$work/rows")
stop_gateway "$gw_pid"

# ---- fan-out: three replicas -----------------------------------------------------------------
log "fanout: $FANOUT_DEVICES devices over three replicas, org broadcasts through every replica"
ports=(); gws=()
for r in 1 2 3; do
  p=$(free_port); start_gateway "fan$r" "$p"; ports+=("$p"); gws+=("$gw_pid")
done
addrs="127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}"
fan_hold=$(( HOLD_S + FANOUT_DEVICES / 1000 + 5 ))
fan_cmd="vizora-swarm --addr $addrs --devices $FANOUT_DEVICES --orgs 100 --ramp-per-s 1000 --heartbeat-ms 15000 --hold-s $fan_hold  # + 2 org broadcasts/s through the replicas in turn"
(
  sleep $(( FANOUT_DEVICES / 1000 + 3 ))
  end=$(( $(date +%s) + HOLD_S ))
  n=0
  while [ "$(date +%s)" -lt "$end" ]; do
    p=${ports[$(( n % 3 ))]}
    curl -fsS -o /dev/null -X POST "http://127.0.0.1:$p/api/push/broadcast" \
      -H "x-internal-api-key: $INTERNAL_API_SECRET" -H 'content-type: application/json' \
      -d "{\"organizationId\":\"load-org-$(( n % 100 ))\",\"event\":\"loadtest:ping\",\"data\":{\"sentAt\":$(date +%s%3N)}}" || true
    n=$(( n + 1 ))
    sleep 0.5
  done
) &
pusher=$!
fan_out=$(swarm --addr "$addrs" --devices "$FANOUT_DEVICES" --orgs 100 --ramp-per-s 1000 \
  --heartbeat-ms 15000 --hold-s "$fan_hold" | tee -a /dev/stderr)
wait "$pusher" || true
for g in "${gws[@]}"; do stop_gateway "$g"; done

# ---- failover: a replica SIGKILLed under load ------------------------------------------------
log "failover: $FAILOVER_DEVICES devices over two replicas, one killed during the hold"
pa=$(free_port); start_gateway fo1 "$pa"; fo1=$gw_pid
pb=$(free_port); start_gateway fo2 "$pb"; fo2=$gw_pid
rm -f "$work/mark.hold" "$work/mark.end"
fo_cmd="vizora-swarm --addr 127.0.0.1:$pa,127.0.0.1:$pb --devices $FAILOVER_DEVICES --orgs 100 --ramp-per-s 1000 --heartbeat-ms 15000 --hold-s 25 --reconnect  # + kill -9 of the first replica 3 s into the hold"
( until [ -e "$work/mark.hold" ]; do sleep 0.2; done; sleep 3; kill -9 "$fo1" ) &
killer=$!
fo_out=$(swarm --addr "127.0.0.1:$pa,127.0.0.1:$pb" --devices "$FAILOVER_DEVICES" --orgs 100 \
  --ramp-per-s 1000 --heartbeat-ms 15000 --hold-s 25 --reconnect --mark "$work/mark" | tee -a /dev/stderr)
wait "$killer" || true
stop_gateway "$fo2"

# ---- churn soak ------------------------------------------------------------------------------
log "churn: $CHURN_CYCLES cycles of $CHURN_DEVICES devices (cluster mode)"
port=$(free_port)
start_gateway churn "$port"
churn_cmd="vizora-swarm --addr 127.0.0.1:$port --devices $CHURN_DEVICES --orgs 100 --ramp-per-s 1000 --heartbeat-ms 1000 --hold-s 5 --cycles $CHURN_CYCLES --gateway-pid PID"
churn_out=$(swarm --addr "127.0.0.1:$port" --devices "$CHURN_DEVICES" --orgs 100 --ramp-per-s 1000 \
  --heartbeat-ms 1000 --hold-s 5 --cycles "$CHURN_CYCLES" --gateway-pid "$gw_pid" | tee -a /dev/stderr)
stop_gateway "$gw_pid"

# ---- report ----------------------------------------------------------------------------------
hb_acks=$(echo "$hb_out" | grab '[0-9]+ heartbeats acknowledged during the hold' | grab '^[0-9]+')
per_k=$(python3 -c "print(f'{$rows * 1000 / max(1, ${hb_acks:-0}):.2f}')")
# The hand-kept sections (the reading of the figures against the goals, the before/after log of
# performance changes) survive a rerun.
changes=$( [ -f "$out" ] && sed -n '/^## \(Reading\|Performance changes\)/,$p' "$out" || true)
cat >"$out" <<MD
# Benchmarks

Written by \`loadtest/bench.sh\` on $(date -u +%Y-%m-%d) at commit \`$(git rev-parse --short HEAD)\`
($PROFILE build). Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)),
$(free -g | awk '/Mem:/{print $2}') GiB, $(uname -sr). The gateway, Redis, PostgreSQL and the load
generator (\`loadtest/swarm\`) all share these cores, so every figure is a floor.

| figure | result | scenario |
|---|---|---|
| idle connections held by one replica | $(echo "$idle_out" | grab 'connected [0-9]+/[0-9]+') | idle |
| resident memory per idle connection | $(echo "$idle_out" | grab '[0-9.]+ KiB per connection') | idle (embedded) |
| connect rate | $(echo "$idle_out" | grab '\([0-9]+/s\)') | idle ramp |
| heartbeat ack p50 / p99 at $HB_DEVICES devices | $(echo "$hb_out" | grab 'ack p50 [0-9.]+ ms, p99 [0-9.]+ ms') | heartbeat, every $HB_MS ms |
| heartbeats per second | $(echo "$hb_out" | grab '\([0-9]+/s over the hold\)') | heartbeat |
| CPU per 1,000 heartbeats | $(echo "$hb_out" | grab '[0-9.]+ s per 1,000') | heartbeat (gateway process only) |
| database rows written per 1,000 heartbeats | $per_k ($rows rows in \`devices\`/\`realtime_presence\` during the steady phase for ${hb_acks:-0} heartbeats; the per-interval \`lastHeartbeat\` flush is all there is) | heartbeat |
| org broadcast fan-out p50 / p99, three replicas | $(echo "$fan_out" | grab 'fan-out p50 [0-9.]+ ms, p99 [0-9.]+ ms') | fanout, $FANOUT_DEVICES devices |
| killed replica: its devices back online elsewhere | $(echo "$fo_out" | grab '[0-9]+ sockets lost their replica, [0-9]+ back online elsewhere; recovery p50 [0-9.]+ s, p99 [0-9.]+ s, max [0-9.]+ s') | failover, $FAILOVER_DEVICES devices, socket.io-client's reconnect backoff included |
| RSS after each churn cycle | $(echo "$churn_out" | grep -oE 'RSS after all sockets closed: [0-9]+' | grep -oE '[0-9]+$' | paste -sd' ') KiB | churn |

Commands (PID = the gateway's process id; the script starts everything itself):

\`\`\`sh
$idle_cmd
$hb_cmd
$fan_cmd
$fo_cmd
$churn_cmd
\`\`\`

Raw output:

\`\`\`text
$idle_out
$hb_out
$fan_out
$fo_out
$churn_out
\`\`\`
MD
[ -n "$changes" ] && printf '\n%s\n' "$changes" >>"$out"
log "wrote $out"

# The scale-up scenario writes its own section of the same file (it needs three replicas and a
# late join; see loadtest/scaleup.sh).
OUT="$out" PROFILE="$PROFILE" bash "$root/loadtest/scaleup.sh"

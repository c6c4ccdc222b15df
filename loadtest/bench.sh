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
#
# The peer (issue 18): the idle and heartbeat scenarios also run, with the same swarm command,
# against loadtest/baseline (one Node process: socket.io 4, @socket.io/redis-adapter in cluster
# mode, the gateway's own device_heartbeat.lua per heartbeat), and the tables give the ratio
# gateway/baseline beside each of those figures. BASELINE=0 skips it. A 20,000-screen heartbeat
# run at one beat per 4 s for both: HB_DEVICES=20000 HB_MS=4000 bash loadtest/bench.sh
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
BASELINE=${BASELINE:-1}

# shellcheck source=loadtest/lib.sh
source "$root/loadtest/lib.sh"
if [ "$BASELINE" != 0 ]; then
  log "baseline: npm ci in loadtest/baseline"
  install_baseline
fi

# ---- idle: embedded mode --------------------------------------------------------------------
log "idle: $IDLE_DEVICES sockets on one embedded replica"
db_idle="sqlite://$work/idle.sqlite?mode=rwc"
DATABASE_URL=$db_idle "$bin/vizora-gateway" seed --prefix load --orgs 100 --devices "$IDLE_DEVICES" >&2
port=$(free_port)
start_gateway idle "$port" DATABASE_URL="$db_idle"
idle_args=(--devices "$IDLE_DEVICES" --orgs 100 --ramp-per-s 2000 --heartbeat-ms 0 --hold-s 10)
idle_cmd="vizora-swarm --addr 127.0.0.1:$port ${idle_args[*]} --gateway-pid PID"
idle_out=$(swarm --addr "127.0.0.1:$port" "${idle_args[@]}" --gateway-pid "$gw_pid" | tee -a /dev/stderr)
stop_gateway "$gw_pid"

# The same sockets on the Node baseline: one process, no Redis (the in-process adapter, as the
# gateway's embedded mode), the same swarm command.
idle_bl_out=""
if [ "$BASELINE" != 0 ]; then
  log "idle (baseline): $IDLE_DEVICES sockets on one Node process"
  port=$(free_port)
  if start_baseline idle-node "$port"; then
    idle_bl_out=$(swarm --addr "127.0.0.1:$port" "${idle_args[@]}" --gateway-pid "$bl_pid" | tee -a /dev/stderr)
    stop_gateway "$bl_pid"
  else
    idle_bl_out="the baseline did not start"
  fi
fi

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
hb_args=(--devices "$HB_DEVICES" --orgs 100 --ramp-per-s 1000 --heartbeat-ms "$HB_MS" --hold-s "$HOLD_S")
hb_cmd="vizora-swarm --addr 127.0.0.1:$port ${hb_args[*]} --gateway-pid PID"
# Database rows written during the steady phase only (the swarm marks its start and end).
(
  until [ -e "$work/mark.hold" ]; do sleep 0.2; done; sleep 2; xid_now >"$work/xid0"
  until [ -e "$work/mark.end" ]; do sleep 0.2; done; rows_since "$(cat "$work/xid0")" >"$work/rows"
) &
sampler=$!
hb_out=$(swarm --addr "127.0.0.1:$port" "${hb_args[@]}" --gateway-pid "$gw_pid" --mark "$work/mark" | tee -a /dev/stderr)
wait "$sampler"
rows=$(cat "$work/rows")
stop_gateway "$gw_pid"

# The same fleet on the Node baseline, against the same redis-server (the Redis adapter, and the
# gateway's device_heartbeat.lua once per heartbeat).
hb_bl_out=""
if [ "$BASELINE" != 0 ]; then
  log "heartbeat (baseline): $HB_DEVICES devices every $HB_MS ms for $HOLD_S s on one Node process"
  port=$(free_port)
  if start_baseline hb-node "$port"; then
    sleep 1
    hb_bl_out=$(swarm --addr "127.0.0.1:$port" "${hb_args[@]}" --gateway-pid "$bl_pid" | tee -a /dev/stderr)
    stop_gateway "$bl_pid"
  else
    hb_bl_out="the baseline did not start"
  fi
fi

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

# val TEXT REGEX: group 1 of REGEX's first match in TEXT (sed -E), empty when none.
val() { printf '%s\n' "$1" | sed -nE "s#.*$2.*#\1#p" | head -n1; }
# ratio GATEWAY BASELINE: "0.42×", "n/a" when a figure is missing or the baseline's is zero.
ratio() {
  python3 -c 'import sys
try:
    g, b = float(sys.argv[1]), float(sys.argv[2])
    print(f"{g / b:.2f}×" if b else "n/a")
except ValueError:
    print("n/a")' "${1:-}" "${2:-}"
}
# dropped WHO OUTPUT DEVICES [HB_MS HOLD_S]: what the swarm saw WHO drop, "n/a: WHO …" (empty
# when nothing): connections not made or given up, heartbeats unanswered within the interval or
# refused (the swarm's "errors"), server disconnects, and, with heartbeats, acks short of the
# heartbeats due over the hold (a socket lost during the hold stops beating without an error).
dropped() {
  python3 - "$@" <<'PY'
import re, sys
who, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
hb_ms, hold = (int(sys.argv[4]), int(sys.argv[5])) if len(sys.argv) > 5 else (0, 0)
def first(rx):
    m = re.search(rx, out)
    return int(m.group(1)) if m else None
why = []
c = first(r"connected (\d+)/\d+")
if c is None:
    why.append("no figures (the run failed)")
else:
    g = first(r"(\d+) gave up") or 0
    if c < n:
        why.append(f"connected {c}/{n}")
    elif g:
        why.append(f"dropped {g} connections")
    e = first(r"(\d+) errors;") or 0
    if e:
        why.append(f"dropped {e} heartbeats")
    d = first(r"(\d+) server disconnects") or 0
    if d:
        why.append(f"{d} server disconnects")
    if hb_ms:
        a = first(r"(\d+) heartbeats acknowledged during the hold") or 0
        due = c * hold * 1000 / hb_ms
        if a < 0.98 * due:
            why.append(f"answered {a} of ~{due:.0f} heartbeats due in the hold")
if why:
    print(f"n/a: {who} " + ", ".join(why))
PY
}
# verdict GW_OUT BL_OUT DEVICES [HB_MS HOLD_S]: the drops of either side, "; "-joined.
verdict() {
  local g b
  g=$(dropped gateway "$1" "${@:3}")
  b=$(dropped baseline "$2" "${@:3}")
  printf '%s\n%s\n' "$g" "$b" | sed '/^$/d' | paste -sd';' | sed 's/;/; /g'
}
# row FIGURE GATEWAY BASELINE RATIO SCENARIO: a table row (without the baseline columns when
# BASELINE=0).
row() {
  if [ "$BASELINE" != 0 ]; then
    printf '| %s | %s | %s | %s | %s |\n' "$@"
  else
    printf '| %s | %s | %s |\n' "$1" "$2" "$5"
  fi
}
# A ratio cell: the drops when there were any (a side that dropped work has no comparable figure),
# else the ratio.
cell() { if [ -n "$3" ]; then printf '%s' "$3"; else ratio "$1" "$2"; fi; }

idle_bad=""; hb_bad=""; no_bl="—"
if [ "$BASELINE" != 0 ]; then
  idle_bad=$(verdict "$idle_out" "$idle_bl_out" "$IDLE_DEVICES")
  hb_bad=$(verdict "$hb_out" "$hb_bl_out" "$HB_DEVICES" "$HB_MS" "$HOLD_S")
fi
rss=': ([0-9.]+) KiB per connection'
rate='\(([0-9]+)/s\)'
p50='ack p50 ([0-9.]+) ms'
p99='ms, p99 ([0-9.]+) ms'
hbps='\(([0-9]+)/s over the hold\)'
cpu=': ([0-9.]+) s per 1,000'
conn='connected ([0-9]+)/'
ack_ratio=$( [ -n "$hb_bad" ] && echo "$hb_bad" || echo "p50 $(ratio "$(val "$hb_out" "$p50")" "$(val "$hb_bl_out" "$p50")"), p99 $(ratio "$(val "$hb_out" "$p99")" "$(val "$hb_bl_out" "$p99")")")
table=$(
  if [ "$BASELINE" != 0 ]; then
    echo '| figure | gateway | baseline (Node) | gateway / baseline | scenario |'
    echo '|---|---|---|---|---|'
  else
    echo '| figure | result | scenario |'
    echo '|---|---|---|'
  fi
  row "idle connections held by one replica" \
    "$(echo "$idle_out" | grab 'connected [0-9]+/[0-9]+')" "$(echo "$idle_bl_out" | grab 'connected [0-9]+/[0-9]+')" \
    "$(cell "$(val "$idle_out" "$conn")" "$(val "$idle_bl_out" "$conn")" "$idle_bad")" "idle"
  row "resident memory per idle connection" \
    "$(echo "$idle_out" | grab '[0-9.]+ KiB per connection')" "$(echo "$idle_bl_out" | grab '[0-9.]+ KiB per connection')" \
    "$(cell "$(val "$idle_out" "$rss")" "$(val "$idle_bl_out" "$rss")" "$idle_bad")" "idle (embedded)"
  row "connect rate" \
    "$(echo "$idle_out" | grab '\([0-9]+/s\)')" "$(echo "$idle_bl_out" | grab '\([0-9]+/s\)')" \
    "$(cell "$(val "$idle_out" "$rate")" "$(val "$idle_bl_out" "$rate")" "$idle_bad")" "idle ramp (the swarm paces 2000/s)"
  row "heartbeat ack p50 / p99 at $HB_DEVICES devices" \
    "$(echo "$hb_out" | grab 'ack p50 [0-9.]+ ms, p99 [0-9.]+ ms')" "$(echo "$hb_bl_out" | grab 'ack p50 [0-9.]+ ms, p99 [0-9.]+ ms')" \
    "$ack_ratio" "heartbeat, every $HB_MS ms"
  row "heartbeats per second" \
    "$(echo "$hb_out" | grab '\([0-9]+/s over the hold\)')" "$(echo "$hb_bl_out" | grab '\([0-9]+/s over the hold\)')" \
    "$(cell "$(val "$hb_out" "$hbps")" "$(val "$hb_bl_out" "$hbps")" "$hb_bad")" "heartbeat"
  row "CPU per 1,000 heartbeats" \
    "$(echo "$hb_out" | grab '[0-9.]+ s per 1,000')" "$(echo "$hb_bl_out" | grab '[0-9.]+ s per 1,000')" \
    "$(cell "$(val "$hb_out" "$cpu")" "$(val "$hb_bl_out" "$cpu")" "$hb_bad")" "heartbeat (the server process only; Redis not counted)"
  row "database rows written per 1,000 heartbeats" \
    "$per_k ($rows rows in \`devices\`/\`realtime_presence\` during the steady phase for ${hb_acks:-0} heartbeats; the per-interval \`lastHeartbeat\` flush is all there is)" \
    "— (no database)" "$no_bl" "heartbeat"
  row "org broadcast fan-out p50 / p99, three replicas" \
    "$(echo "$fan_out" | grab 'fan-out p50 [0-9.]+ ms, p99 [0-9.]+ ms')" "$no_bl" "$no_bl" "fanout, $FANOUT_DEVICES devices"
  row "killed replica: its devices back online elsewhere" \
    "$(echo "$fo_out" | grab '[0-9]+ sockets lost their replica, [0-9]+ back online elsewhere; recovery p50 [0-9.]+ s, p99 [0-9.]+ s, max [0-9.]+ s')" \
    "$no_bl" "$no_bl" "failover, $FAILOVER_DEVICES devices, socket.io-client's reconnect backoff included"
  row "RSS after each churn cycle" \
    "$(echo "$churn_out" | grep -oE 'RSS after all sockets closed: [0-9]+' | grep -oE '[0-9]+$' | paste -sd' ' || true) KiB" \
    "$no_bl" "$no_bl" "churn"
)
baseline_note=""
baseline_cmds=""
baseline_raw=""
if [ "$BASELINE" != 0 ]; then
  baseline_note="
The baseline (\`loadtest/baseline\`, issue 18) is one Node $(node --version) process: socket.io 4
(in-process adapter for idle, \`@socket.io/redis-adapter\` on the same redis-server for heartbeat),
the device JWT checked as the gateway checks it, the rooms \`device:{id}\` and \`org:{orgId}\`, and
per heartbeat one run of the gateway's own \`device_heartbeat.lua\` with the same keys and
arguments, acked with the same envelope. It has no database, no lease protocol and no connect-time
\`config\`/playlist (see \`loadtest/README.md\`), so its connect path does less than the gateway's.
Same swarm command, same sizes, one after the other on this machine. **gateway / baseline** below
1 means the gateway needs less (memory, CPU, latency); above 1, it does more (connections,
heartbeats per second). A side that dropped connections or heartbeats gets no ratio: the cell
says what it dropped.
"
  baseline_cmds="
# the same idle and heartbeat commands against the baseline (PID = node's):
node loadtest/baseline/server.mjs  # PORT, DEVICE_JWT_SECRET; REDIS_URL for heartbeat only"
  baseline_raw="
Baseline raw output (the swarm calls the process it measures \"gateway\"):

\`\`\`text
$idle_bl_out
$hb_bl_out
\`\`\`
"
fi
# The hand-kept sections (the reading of the figures against the goals, the before/after log of
# performance changes) survive a rerun.
changes=$( [ -f "$out" ] && sed -n '/^## \(Reading\|Performance changes\)/,$p' "$out" || true)
cat >"$out" <<MD
# Benchmarks

Written by \`loadtest/bench.sh\` on $(date -u +%Y-%m-%d) at commit \`$(git rev-parse --short HEAD)\`
($PROFILE build). Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)),
$(free -g | awk '/Mem:/{print $2}') GiB, $(uname -sr). The gateway, Redis, PostgreSQL and the load
generator (\`loadtest/swarm\`) all share these cores, so every figure is a floor.
$baseline_note
$table

Commands (PID = the gateway's process id; the script starts everything itself):

\`\`\`sh
$idle_cmd
$hb_cmd
$fan_cmd
$fo_cmd
$churn_cmd$baseline_cmds
\`\`\`

Raw output:

\`\`\`text
$idle_out
$hb_out
$fan_out
$fo_out
$churn_out
\`\`\`
$baseline_raw
MD
[ -n "$changes" ] && printf '\n%s\n' "$changes" >>"$out"
log "wrote $out"

# The scale-up scenario writes its own section of the same file (it needs three replicas and a
# late join; see loadtest/scaleup.sh).
OUT="$out" PROFILE="$PROFILE" bash "$root/loadtest/scaleup.sh"

#!/usr/bin/env bash
# The scale-up scenario (issue 17): SCALE_DEVICES screens connect to two replicas in cluster mode
# (shipped rebalancing defaults), then a third replica starts and joins the "balancer": screens
# that lose their connection or are refused go on round-robin over all three (`vizora-swarm
# --reconnect --join-addr`). Reported: the time from the join until every replica holds its
# share ±20 % with nobody shedding, the split then, and the transports closed by rebalancing per
# screen that moved. Writes (or replaces) the "## Scale-up" section of BENCHMARKS.md.
#
#   bash loadtest/scaleup.sh                     # release build, 10,000 screens
#   QUICK=1 bash loadtest/scaleup.sh             # 600 screens, debug build, target/BENCHMARKS.quick.md
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
if [ -n "${QUICK:-}" ]; then
  : "${SCALE_DEVICES:=600}" "${PROFILE:=debug}" "${OUT:=$root/target/BENCHMARKS.quick.md}"
  mkdir -p "$root/target"; touch "$OUT"
fi
SCALE_DEVICES=${SCALE_DEVICES:-10000}
PROFILE=${PROFILE:-release}
SOURCES=${SOURCES:-8}
out=${OUT:-$root/BENCHMARKS.md}
# shellcheck source=loadtest/lib.sh
source "$root/loadtest/lib.sh"

start_cluster_services scaleup
"$bin/vizora-gateway" seed --prefix load --orgs 100 --devices "$SCALE_DEVICES" >&2

log "scale-up: $SCALE_DEVICES screens on two replicas, a third joins"
pa=$(free_port); start_gateway su1 "$pa"
pb=$(free_port); start_gateway su2 "$pb"
pc=$(free_port)
hold=$(( 150 + SCALE_DEVICES / 1000 ))
cmd="vizora-swarm --addr 127.0.0.1:$pa,127.0.0.1:$pb --join-addr 127.0.0.1:$pc --devices $SCALE_DEVICES --orgs 100 --ramp-per-s 1000 --heartbeat-ms 15000 --hold-s $hold --reconnect  # + the third replica started on the join address when the hold begins"
rm -f "$work/mark.hold" "$work/mark.end"
swarm --addr "127.0.0.1:$pa,127.0.0.1:$pb" --join-addr "127.0.0.1:$pc" --devices "$SCALE_DEVICES" \
  --orgs 100 --ramp-per-s 1000 --heartbeat-ms 15000 --hold-s "$hold" --reconnect \
  --mark "$work/mark" >"$work/swarm.out" 2>&1 &
swarm_pid=$!
pids+=("$swarm_pid")
until [ -e "$work/mark.hold" ]; do sleep 0.2; done

# devices PORT → this replica's device sockets; closed PORT → its rebalancing closes so far.
# Never fails (a scrape that fails reads 0): `set -e` must not end the run on a missed sample.
metric() {
  { curl -fsS "http://127.0.0.1:$1/metrics" 2>/dev/null || true; } |
    { grep -E "^$2" || true; } | awk '{s+=$NF} END {print s+0}'
}
devices() { metric "$1" 'vizora_gateway_sockets\{.*principal="device"'; }
closed() { metric "$1" 'vizora_gateway_rebalance_closed_total'; }
shedding() { metric "$1" 'vizora_gateway_rebalancing[{ ]'; }
before="$(devices "$pa") / $(devices "$pb")"
start_gateway su3 "$pc"
joined=$(date +%s.%N)
share=$(( SCALE_DEVICES / 3 ))
lo=$(( share * 80 / 100 )); hi=$(( share * 120 / 100 ))
balanced=""; split=""
within() { [ "$1" -ge "$lo" ] && [ "$1" -le "$hi" ]; }
# The scenario ends when the cluster is balanced with nobody shedding, or after the hold.
while kill -0 "$swarm_pid" 2>/dev/null; do
  a=$(devices "$pa"); b=$(devices "$pb"); c=$(devices "$pc")
  busy=$(( $(shedding "$pa") + $(shedding "$pb") + $(shedding "$pc") ))
  if [ "$busy" -eq 0 ] && within "$a" && within "$b" && within "$c"; then
    balanced=$(python3 -c "print(f'{$(date +%s.%N) - $joined:.1f}')")
    split="$a / $b / $c"
    closes=$(( $(closed "$pa") + $(closed "$pb") + $(closed "$pc") ))
    moved=$c
    break
  fi
  sleep 1
done
# Stability: what moves in the next 20 s.
if [ -n "$balanced" ]; then
  sleep 20
  later=$(( $(closed "$pa") + $(closed "$pb") + $(closed "$pc") ))
  after="$(devices "$pa") / $(devices "$pb") / $(devices "$pc")"
fi
kill "$swarm_pid" 2>/dev/null || true
wait "$swarm_pid" 2>/dev/null || true
swarm_out=$(cat "$work/swarm.out")

if [ -n "$balanced" ]; then
  per=$(python3 -c "print(f'{$closes / max(1, $moved):.2f}')")
  result="| time from the join to every replica within ±20 % of its share, nobody shedding | $balanced s |
| split before the join (two replicas) | $before |
| split when balanced | $split |
| transports closed by rebalancing per screen that moved to the new replica | $per ($closes closes, $moved screens on the new replica) |
| closed in the next 20 s, and the split then | $(( later - closes )); $after |"
else
  result="| time from the join to balance | not balanced within the $hold s hold |
| split before the join | $before |"
fi
section="## Scale-up (rebalancing, issue 17)

Written by \`loadtest/scaleup.sh\` on $(date -u +%Y-%m-%d) at commit \`$(git rev-parse --short HEAD)\`
($PROFILE build, shipped defaults: \`REBALANCE_TOLERANCE\` 0.10, \`REBALANCE_MAX_PER_S\` 20). $SCALE_DEVICES
screens on two replicas in cluster mode; when the hold begins a third replica starts, and every
screen whose transport is closed (or whose handshake is refused) reconnects round-robin over the
three, with socket.io-client's backoff, as behind a round-robin balancer.

| figure | result |
|---|---|
$result

\`\`\`sh
$cmd
\`\`\`

\`\`\`text
$swarm_out
\`\`\`
"
python3 - "$out" "$section" <<'PY'
import re, sys
path, section = sys.argv[1], sys.argv[2]
try:
    text = open(path).read()
except FileNotFoundError:
    text = ""
pat = re.compile(r"^## Scale-up \(rebalancing.*?(?=^## |\Z)", re.S | re.M)
text = pat.sub(lambda _: section.rstrip() + "\n\n", text) if pat.search(text) else text.rstrip() + "\n\n" + section
open(path, "w").write(text)
PY
log "wrote the scale-up section of $out"

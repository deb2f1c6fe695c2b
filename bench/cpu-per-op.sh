#!/usr/bin/env bash
# cpu-per-op.sh: CPU time per 1,000 operations, per process, for one or more
# kvlab binaries, so that two builds can be compared on a noisy machine.
#
# Throughput on a shared 2-core VM swings by 10-30% between identical runs;
# CPU time per operation moves much less, and it says which process got more
# expensive: the `kvlab up` process (gateway, coordinator and registry in one)
# or the nodes. For each binary it starts a cluster the way compare.sh does
# (1 leader + 3 followers, W=2, R=2, no delays, --fsync always), preloads the
# keys, runs `kvlab bench` for DURATION seconds, and reads each process's
# user + system time from /proc/<pid>/stat before and after.
#
# Usage: bench/cpu-per-op.sh BIN [BIN...]   e.g. an older build against target/release/kvlab
# Knobs: READS=100 (percent of reads) CLIENTS=64 DURATION=10 PORT=24000 PERF=0
#        PERF=1 also records `perf record -g` of the up process into perf-<n>.data.

set -euo pipefail
READS=${READS:-100}
CLIENTS=${CLIENTS:-64}
DURATION=${DURATION:-10}
PORT=${PORT:-24000}
PERF=${PERF:-0}
TICKS=$(getconf CLK_TCK)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# The cluster of the current run, stopped after it and on any exit.
CLUSTER="" WORK=""
stop_cluster() {
  if [ -n "$CLUSTER" ]; then
    kill -TERM -- "-$CLUSTER" 2>/dev/null || true
    while kill -0 "$CLUSTER" 2>/dev/null; do sleep 0.1; done
  fi
  [ -n "$WORK" ] && rm -rf "$WORK"
  CLUSTER="" WORK=""
}
trap stop_cluster EXIT

measure() {
  local bin=$1 n=$2 p=$PORT work up nodes u0 u1 n0 n1 rate
  work=$(mktemp -d -t kvlab-cpu.XXXXXX)
  setsid "$bin" up --no-delay --followers 3 -W 2 -R 2 --fsync always \
    --data-dir "$work/data" --fresh --gateway-port "$p" --coordinator-port $((p + 100)) \
    --registry-port $((p + 200)) --node-base-port $((p + 101)) >"$work/up.log" 2>&1 &
  up=$!
  CLUSTER=$up WORK=$work
  until curl -fsS --max-time 1 "http://127.0.0.1:$p/cluster-status" 2>/dev/null |
    jq -e '.quorum.can_write and .quorum.can_read' >/dev/null; do sleep 0.2; done
  "$bin" bench --url "http://127.0.0.1:$p" --duration 2 --keys 1000 -c "$CLIENTS" \
    --reads "$READS" --preload --json >/dev/null
  nodes=$(pgrep -P "$up" | tr '\n' ' ')
  u0=$(cpu_ticks "$up"); n0=0
  for pid in $nodes; do n0=$((n0 + $(cpu_ticks "$pid"))); done
  local recorder=""
  if [ "$PERF" = 1 ]; then
    perf record -F 999 -g -p "$up" -o "perf-$n.data" -- sleep "$DURATION" >/dev/null 2>&1 &
    recorder=$!
  fi
  "$bin" bench --url "http://127.0.0.1:$p" --duration "$DURATION" --keys 1000 -c "$CLIENTS" \
    --reads "$READS" --json >"$work/bench.json"
  [ -z "$recorder" ] || wait "$recorder"
  u1=$(cpu_ticks "$up"); n1=0
  for pid in $nodes; do n1=$((n1 + $(cpu_ticks "$pid"))); done
  rate=$(jq '.all.ops_per_sec' "$work/bench.json")
  stop_cluster
  awk -v bin="$bin" -v rate="$rate" -v d="$DURATION" -v t="$TICKS" \
    -v up=$((u1 - u0)) -v nodes=$((n1 - n0)) 'BEGIN {
      ops = rate * d
      printf "%s: %.0f op/s; CPU ms per 1,000 ops: up %.1f, nodes %.1f\n",
        bin, rate, up / t * 1e6 / ops, nodes / t * 1e6 / ops }'
}

n=0
for bin in "$@"; do
  n=$((n + 1))
  measure "$bin" "$n"
done

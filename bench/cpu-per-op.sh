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
# user + system time from /proc/<pid>/stat before and after. Each figure
# is followed, in brackets, by its user-mode part: the rest is the kernel's
# (system calls, the network stack, fsyncs), which a change to kvlab's own
# code moves less.
#
# SYSTEM=skeleton measures the skeleton instead (`kvlab bench-skeleton`,
# src/bench/skeleton.rs: the same shape with no logic, on a binary wire, as
# compare.sh starts it): its gateway stands where `up` does, its replicas
# where the nodes do. Each line also gives the generator's own CPU per op.
#
# Usage: bench/cpu-per-op.sh BIN [BIN...]   e.g. an older build against target/release/kvlab
# Knobs: READS=100 (percent of reads) CLIENTS=64 DURATION=10 PORT=24000 PERF=0
#        SYSTEM=kvlab|skeleton
#        PERF=1 also records `perf record -g` of the up process into perf-<n>.data.

set -euo pipefail
READS=${READS:-100}
CLIENTS=${CLIENTS:-64}
DURATION=${DURATION:-10}
PORT=${PORT:-24000}
PERF=${PERF:-0}
SYSTEM=${SYSTEM:-kvlab}
case $SYSTEM in
  kvlab | skeleton) ;;
  *) echo "cpu-per-op.sh: SYSTEM is kvlab or skeleton, not '$SYSTEM'" >&2; exit 2 ;;
esac
TICKS=$(getconf CLK_TCK)
# shellcheck source=bench/lib/clusters.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/clusters.sh"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
user_ticks() { awk '{print $14}' "/proc/$1/stat"; }

# The cluster of the current run, stopped after it and on any exit.
CLUSTER="" WORK=""
stop_cluster() {
  if [ -n "$CLUSTER" ]; then
    kill -TERM -- "-$CLUSTER" 2>/dev/null || true
    # The whole group: its processes hold the ports the next run binds.
    while kill -0 -- "-$CLUSTER" 2>/dev/null; do sleep 0.1; done
  fi
  [ -n "$WORK" ] && rm -rf "$WORK"
  CLUSTER="" WORK=""
}
trap stop_cluster EXIT

# Waits until URL answers 2xx (and JQ, if given, holds of its JSON: the
# skeleton's /health answers plain "ok"), for at most a minute, and fails at
# once if the cluster's first process is gone.
ready() {
  local url=$1 jq=$2 body
  body=$(curl -fsS --max-time 1 "$url" 2>/dev/null) || return 1
  [ -z "$jq" ] || jq -e "$jq" <<<"$body" >/dev/null 2>&1
}
wait_ready() {
  local url=$1 jq=${2:-} deadline=$((SECONDS + 60))
  until ready "$url" "$jq"; do
    kill -0 "$CLUSTER" 2>/dev/null || { echo "cpu-per-op.sh: the $SYSTEM exited; see $WORK/up.log" >&2; exit 1; }
    ((SECONDS < deadline)) || { echo "cpu-per-op.sh: $url not ready after 60 s" >&2; exit 1; }
    sleep 0.2
  done
}

# compare.sh's kvlab cluster; ready once it has its quorums.
start_kvlab() {
  start_kvlab_session "$1" "$2" "$3" "$3/up.log"
  wait_ready "http://127.0.0.1:$2/cluster-status" '.quorum.can_write and .quorum.can_read'
}

# compare.sh's skeleton; ready once its gateway answers.
start_skeleton() {
  start_skeleton_session "$1" "$2" "$3" "$3/up.log"
  wait_ready "http://127.0.0.1:$2/health"
}

measure() {
  local bin=$1 n=$2 p=$PORT work up nodes u0 u1 n0 n1 uu0 uu1 nu0 nu1 rate target=kvlab
  work=$(mktemp -d -t kvlab-cpu.XXXXXX)
  WORK=$work
  if [ "$SYSTEM" = skeleton ]; then
    start_skeleton "$bin" "$p" "$work"
    target=bare
  else
    start_kvlab "$bin" "$p" "$work"
  fi
  up=$CLUSTER
  "$bin" bench --url "http://127.0.0.1:$p" --target "$target" --duration 2 --keys 1000 \
    -c "$CLIENTS" --reads "$READS" --preload --json >/dev/null
  nodes=$(pgrep -P "$up" | tr '\n' ' ')
  u0=$(cpu_ticks "$up"); n0=0; uu0=$(user_ticks "$up"); nu0=0
  for pid in $nodes; do
    n0=$((n0 + $(cpu_ticks "$pid"))); nu0=$((nu0 + $(user_ticks "$pid")))
  done
  local recorder=""
  if [ "$PERF" = 1 ]; then
    perf record -F 999 -g -p "$up" -o "perf-$n.data" -- sleep "$DURATION" >/dev/null 2>&1 &
    recorder=$!
  fi
  "$bin" bench --url "http://127.0.0.1:$p" --target "$target" --duration "$DURATION" \
    --keys 1000 -c "$CLIENTS" --reads "$READS" --json >"$work/bench.json"
  [ -z "$recorder" ] || wait "$recorder"
  u1=$(cpu_ticks "$up"); n1=0; uu1=$(user_ticks "$up"); nu1=0
  for pid in $nodes; do
    n1=$((n1 + $(cpu_ticks "$pid"))); nu1=$((nu1 + $(user_ticks "$pid")))
  done
  rate=$(jq '.all.ops_per_sec' "$work/bench.json")
  local generator
  generator=$(jq '.generator_cpu.cores' "$work/bench.json")
  stop_cluster
  awk -v bin="$bin" -v rate="$rate" -v d="$DURATION" -v t="$TICKS" -v sys="$SYSTEM" \
    -v up=$((u1 - u0)) -v nodes=$((n1 - n0)) -v upu=$((uu1 - uu0)) -v nodesu=$((nu1 - nu0)) \
    -v gen="$generator" 'BEGIN {
      ops = rate * d
      front = sys == "skeleton" ? "gateway" : "up"
      back = sys == "skeleton" ? "replicas" : "nodes"
      per = t * ops / 1e6 # ticks per (ms per 1,000 ops)
      printf "%s (%s): %.0f op/s; CPU ms per 1,000 ops (of it in user mode): %s %.1f (%.1f), %s %.1f (%.1f), generator %.1f\n",
        bin, sys, rate, front, up / per, upu / per, back, nodes / per, nodesu / per, gen * 1e6 / rate }'
}

n=0
for bin in "$@"; do
  n=$((n + 1))
  measure "$bin" "$n"
done

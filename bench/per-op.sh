#!/usr/bin/env bash
# per-op.sh: what one write and one read cost each process, at 1, 8 and 64
# clients: CPU time, system calls, context switches and heap allocations per
# operation, as a Markdown table (ARCHITECTURE.md, "Where the time goes").
#
# Throughput on a shared 2-core machine swings between identical runs; these
# figures move much less, because each is counted, not timed: a process's CPU
# time from /proc/<pid>/stat (as bench/cpu-per-op.sh reads it), its system
# calls and context switches from the kernel's tracepoints (`perf stat -p`,
# software events: no hardware counters needed), its allocations from the
# binary's own allocator (KVLAB_COUNT_ALLOCATIONS=1 and the
# `kvlab_process_allocations_total` metric, src/metrics/alloc.rs). Each run
# sends a fixed number of operations (`kvlab bench --ops`), and every count
# is divided by it.
#
# The cluster is compare.sh's: 1 leader + 3 followers, W=2, R=2, no delays,
# --fsync always. Processes measured: `up` (gateway, coordinator and registry
# in one process), the leader, and follower-2, the one follower that is in
# both the sync set (lowest ports) and the read set (highest ports).
#
# Two passes, each on a fresh cluster: the first reads only CPU time (nothing
# attached, nothing counted); the second attaches `perf stat` and counts
# allocations, which cost a little CPU themselves. Before each measured run,
# one second of the same load warms the processes up (connections open,
# blocking-pool threads started: `perf stat -p` sees only threads that exist
# when it attaches).
#
# Background work (heartbeats, the coordinator's liveness check, the
# leader's follower list every 2 s) is counted with the operations; the
# "idle" rows give its rate per second, to judge how much of a row it is.
#
# Last, the floor: the "bare" rows are `kvlab bench-server` (the ceiling of
# compare.sh) answering the same requests, measured the same way: what one
# request costs kvlab's HTTP stack (hyper, axum, JSON) with no work behind it.
#
# Usage: bench/per-op.sh [BIN]     (default: target/release/kvlab; run as root for perf)
# Knobs: CLIENTS="1 8 64"  OPS_1=2000 OPS_8=8000 OPS_64=20000  PORT=24000
#        KEEP=dir (keep the raw counts)

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib/clusters.sh
source "$REPO/bench/lib/clusters.sh"
BIN=${1:-$REPO/target/release/kvlab}
CLIENTS=${CLIENTS:-"1 8 64"}
PORT=${PORT:-24000}
TICKS=$(getconf CLK_TCK)
WORK=$(mktemp -d -t kvlab-perop.XXXXXX)
RAW=${KEEP:-$WORK}
mkdir -p "$RAW"
: >"$RAW/counts.tsv" # op clients process metric value (totals over the run)

command -v perf >/dev/null || { echo "per-op.sh: needs perf (Debian: linux-perf)" >&2; exit 1; }

ops_for() { local v="OPS_$1"; echo "${!v:-$((($1 == 1) ? 2000 : ($1 <= 8) ? 8000 : 20000))}"; }

# The cluster of the current pass, stopped after it and on any exit.
CLUSTER="" PERFS=()
stop_cluster() {
  ((${#PERFS[@]})) && { kill -INT "${PERFS[@]}" 2>/dev/null || true; PERFS=(); }
  if [ -n "$CLUSTER" ]; then
    kill -TERM -- "-$CLUSTER" 2>/dev/null || true
    while kill -0 "$CLUSTER" 2>/dev/null; do sleep 0.1; done
  fi
  CLUSTER=""
}
trap 'stop_cluster; [ -n "${KEEP:-}" ] || rm -rf "$WORK"' EXIT

# start_cluster ENV...: a fresh cluster; sets UP, LEADER, FOLLOWER and their ports.
start_cluster() {
  local p=$PORT kv
  rm -rf "$WORK/data"
  # The ENV assignments reach `up` and its nodes: exported, for this call only.
  for kv in "$@"; do local -x "$kv"; done
  start_kvlab_session "$BIN" "$p" "$WORK" "$WORK/up.log"
  UP=$CLUSTER
  until curl -fsS --max-time 1 "http://127.0.0.1:$p/cluster-status" 2>/dev/null |
    jq -e '.quorum.can_write and .quorum.can_read' >/dev/null; do
    kill -0 "$UP" 2>/dev/null || { cat "$WORK/up.log" >&2; exit 1; }
    sleep 0.2
  done
  LEADER=$(node_pid leader) FOLLOWER=$(node_pid follower-2)
  LEADER_PORT=$(node_port "$LEADER") FOLLOWER_PORT=$(node_port "$FOLLOWER")
  "$BIN" bench --url "http://127.0.0.1:$p" --ops 1000 --keys 1000 -c 8 --reads 0 \
    --preload --json >/dev/null
}

# The pid of the node process started with `--id ID`, a child of `up`.
node_pid() { ps -o pid=,args= --ppid "$UP" | awk -v id="$1" '$0 ~ "--id " id "( |$)" { print $1 }'; }
node_port() { tr '\0' '\n' <"/proc/$1/cmdline" | awk 'p { print; exit } $0 == "--port" { p = 1 }'; }

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# Empty if the process does not count (an older binary).
allocations() {
  { curl -fsS "http://127.0.0.1:$1/metrics" 2>/dev/null || true; } |
    awk '$1 == "kvlab_process_allocations_total" { print $2 }'
}

PROCS=(up leader follower)
TARGET=kvlab
pid_of() { case $1 in up) echo "$UP" ;; leader) echo "$LEADER" ;; follower) echo "$FOLLOWER" ;; bare) echo "$BARE" ;; esac; }
port_of() { case $1 in up | bare) echo "$PORT" ;; leader) echo "$LEADER_PORT" ;; follower) echo "$FOLLOWER_PORT" ;; esac; }

# The floor: `kvlab bench-server` (src/bench/bare.rs), the same requests
# answered at once by kvlab's HTTP stack, measured the same way.
start_bare() {
  env "$@" setsid "$BIN" bench-server --port "$PORT" >"$WORK/bare.log" 2>&1 &
  BARE=$!
  CLUSTER=$BARE
  until curl -fsS --max-time 1 "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; do sleep 0.1; done
}
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RAW/counts.tsv"; }

EVENTS=task-clock,context-switches,raw_syscalls:sys_enter
for s in sendto sendmsg writev write recvfrom recvmsg readv read epoll_wait epoll_pwait \
  futex fdatasync fsync pwrite64 pwritev; do
  EVENTS+=",syscalls:sys_enter_$s"
done

# run PASS OP CLIENTS: warm up, then one measured run of a fixed op count.
run() {
  local pass=$1 op=$2 c=$3 n reads u p proc
  n=$(ops_for "$c")
  reads=$(case $op in *read) echo 100 ;; *) echo 0 ;; esac)
  local url="http://127.0.0.1:$PORT"
  if [ "$op" = idle ]; then n=0; fi
  [ "$op" = idle ] || "$BIN" bench --url "$url" --target "$TARGET" --duration 1 --keys 1000 \
    -c "$c" --reads "$reads" --json >/dev/null
  declare -A before
  for proc in "${PROCS[@]}"; do
    p=$(pid_of "$proc")
    if [ "$pass" = cpu ]; then
      before[$proc]=$(cpu_ticks "$p")
    else
      before[$proc]=$(allocations "$(port_of "$proc")")
      perf stat -x, -e "$EVENTS" -p "$p" -o "$WORK/perf-$proc" 2>/dev/null &
      PERFS+=($!)
    fi
  done
  sleep 0.3 # perf attached
  if [ "$op" = idle ]; then
    sleep 5
    [ "$pass" = count ] || record "$op" "$c" all seconds 5
  else
    "$BIN" bench --url "$url" --target "$TARGET" --ops "$n" --keys 1000 -c "$c" \
      --reads "$reads" --json >"$WORK/bench.json"
    if [ "$pass" = cpu ]; then # the same op count in both passes: recorded once
      record "$op" "$c" all ops "$n"
      record "$op" "$c" all ops_per_sec "$(jq '.all.ops_per_sec' "$WORK/bench.json")"
    fi
    [ "$(jq '.all.errors' "$WORK/bench.json")" = 0 ] || echo "   (errors in $op, $c clients)" >&2
  fi
  if [ "$pass" = count ]; then
    kill -INT "${PERFS[@]}"
    wait "${PERFS[@]}" 2>/dev/null || true
    PERFS=()
  fi
  for proc in "${PROCS[@]}"; do
    p=$(pid_of "$proc")
    if [ "$pass" = cpu ]; then
      record "$op" "$c" "$proc" cpu_us $((($(cpu_ticks "$p") - ${before[$proc]}) * 1000000 / TICKS))
    else
      local after
      after=$(allocations "$(port_of "$proc")")
      if [ -n "$after" ] && [ -n "${before[$proc]}" ]; then
        record "$op" "$c" "$proc" allocs $((after - ${before[$proc]}))
      fi
      # perf's CSV: value,unit,event,...
      awk -F, -v op="$op" -v c="$c" -v proc="$proc" '
        NF > 3 && $1 ~ /^[0-9.]+$/ { sub(/^syscalls:sys_enter_/, "", $3); printf "%s\t%s\t%s\t%s\t%s\n", op, c, proc, $3, $1 }' \
        "$WORK/perf-$proc" >>"$RAW/counts.tsv"
    fi
  done
}

for pass in cpu count; do
  echo "== pass: $pass" >&2
  if [ "$pass" = cpu ]; then start_cluster; else start_cluster KVLAB_COUNT_ALLOCATIONS=1; fi
  for op in write read; do
    for c in $CLIENTS; do
      echo "   $op, $c clients" >&2
      run "$pass" "$op" "$c"
    done
  done
  run "$pass" idle 0
  stop_cluster
  if [ "$pass" = cpu ]; then start_bare; else start_bare KVLAB_COUNT_ALLOCATIONS=1; fi
  PROCS=(bare) TARGET=bare
  for op in write read; do
    for c in $CLIENTS; do
      echo "   bare server: $op, $c clients" >&2
      run "$pass" "bare $op" "$c"
    done
  done
  PROCS=(up leader follower) TARGET=kvlab
  stop_cluster
done

# The table: every count divided by the run's operations (idle: per second).
awk -F'\t' '
  { v[$1, $2, $3, $4] += $5; if (!(($1, $2) in seen)) { seen[$1, $2] = 1; order[++n] = $1 SUBSEP $2 } }
  function per(op, c, proc, m,   d) {
    d = (op == "idle") ? v[op, c, "all", "seconds"] : v[op, c, "all", "ops"]
    return d ? v[op, c, proc, m] / d : 0
  }
  function sum(op, c, proc, list,   k, i, s) { k = split(list, a, " "); s = 0; for (i = 1; i <= k; i++) s += per(op, c, proc, a[i]); return s }
  BEGIN {
    print "| op | clients | op/s | process | CPU µs | syscalls | send | write | recv | epoll | futex | fsync | ctx switches | allocations |"
    print "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  }
  END {
    for (i = 1; i <= n; i++) {
      split(order[i], k, SUBSEP); op = k[1]; c = k[2]
      nprocs = split(op ~ /^bare/ ? "bare" : "up leader follower", procs, " ")
      for (j = 1; j <= nprocs; j++) {
        proc = procs[j]
        rate = (op == "idle") ? "-" : sprintf("%d", v[op, c, "all", "ops_per_sec"])
        printf "| %s | %s | %s | %s | %.0f | %.1f | %.2f | %.2f | %.2f | %.2f | %.2f | %.3f | %.2f | %s |\n",
          op, (op == "idle") ? "-" : c, rate, proc, per(op, c, proc, "cpu_us"),
          per(op, c, proc, "raw_syscalls:sys_enter"),
          sum(op, c, proc, "sendto sendmsg writev"),
          per(op, c, proc, "write"),
          sum(op, c, proc, "recvfrom recvmsg readv read"),
          sum(op, c, proc, "epoll_wait epoll_pwait"),
          per(op, c, proc, "futex"),
          sum(op, c, proc, "fdatasync fsync"),
          per(op, c, proc, "context-switches"),
          ((op, c, proc, "allocs") in v) ? sprintf("%.0f", per(op, c, proc, "allocs")) : "-"
      }
    }
    print ""
    print "(per operation; the idle rows: per second. send = writev/sendto/sendmsg on sockets; write = write(2): a socket,"
    print " or an eventfd that wakes a sleeping runtime thread; recv = read/readv/recvfrom/recvmsg,"
    print " epoll = epoll_wait/epoll_pwait; CPU from /proc/<pid>/stat, pass 1; the rest from pass 2)"
  }' "$RAW/counts.tsv"

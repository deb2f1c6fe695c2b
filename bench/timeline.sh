#!/usr/bin/env bash
# timeline.sh: where one lone write spends its time, thread by thread, from
# the kernel's own clock. For ARCHITECTURE.md, "Round eight".
#
# It starts compare.sh's cluster (1 leader + 3 followers, W=2, R=2, no
# delays, --fsync always), or the skeleton with SYSTEM=skeleton, drives it
# with one client writing, and records for half a second the system calls
# every thread enters and leaves (`perf record -a` on the syscalls
# tracepoints: sendto, recvfrom, epoll_wait, futex, write, pwrite64,
# fdatasync). Each of the generator's requests starts one write's window;
# within it, the first time each thread makes each call is a milestone.
# It prints the median of each milestone over every write, in µs after the
# generator sent, labelled by process (gen, up or gateway, L for the
# leader, F1..F3 for the followers by port) and thread (rt: the runtime's
# main thread, w: another runtime worker, wal: the WAL writer thread, blk:
# a blocking-pool thread).
#
# Reading it: a gap between one process's `sendto` and the next one's
# `exit_epoll_wait` is the wake-up; a gap between a runtime's
# `enter_futex` (waking its WAL thread) and that thread's `enter_pwrite64`
# is a thread waiting for a core. Only the first occurrence of each call
# is shown, so of the leader's four sends only the first.
#
# SEQUENCE=1 also prints one write whole: every call of every thread, in
# order, for the write whose time is the median ("Round ten").
#
# Usage: bench/timeline.sh BIN      as root (perf); about 20 seconds
# Knobs: SYSTEM=kvlab|skeleton PORT=25000 KEEP=dir (keep the raw trace) SEQUENCE=1

set -euo pipefail
BIN=$(realpath "${1:?usage: bench/timeline.sh BIN}")
SYSTEM=${SYSTEM:-kvlab}
PORT=${PORT:-25000}
command -v perf >/dev/null || { echo "timeline.sh: needs perf (Debian's linux-perf)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "timeline.sh: needs python3" >&2; exit 1; }
# shellcheck source=bench/lib/clusters.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/clusters.sh"

WORK=$(mktemp -d -t kvlab-timeline.XXXXXX)
CLUSTER=""
cleanup() {
  if [ -n "$CLUSTER" ]; then
    kill -TERM -- "-$CLUSTER" 2>/dev/null || true
    while kill -0 -- "-$CLUSTER" 2>/dev/null; do sleep 0.1; done
  fi
  if [ -n "${KEEP:-}" ]; then
    mkdir -p "$KEEP" && cp "$WORK"/*.txt "$KEEP"/ 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

p=$PORT
if [ "$SYSTEM" = skeleton ]; then
  start_skeleton_session "$BIN" "$p" "$WORK" "$WORK/cluster.log"
  target=bare ready=/health
else
  start_kvlab_session "$BIN" "$p" "$WORK" "$WORK/cluster.log"
  target=kvlab ready=/cluster-status
fi
deadline=$((SECONDS + 60))
until body=$(curl -fsS --max-time 1 "http://127.0.0.1:$p$ready" 2>/dev/null) &&
  { [ "$SYSTEM" = skeleton ] || jq -e '.quorum.can_write and .quorum.can_read' <<<"$body" >/dev/null 2>&1; }; do
  kill -0 "$CLUSTER" 2>/dev/null || { echo "timeline.sh: the $SYSTEM exited; its log:" >&2; cat "$WORK/cluster.log" >&2; exit 1; }
  ((SECONDS < deadline)) || { echo "timeline.sh: not ready after 60 s" >&2; exit 1; }
  sleep 0.2
done

"$BIN" bench --url "http://127.0.0.1:$p" --target "$target" -c 1 --reads 0 --duration 6 \
  --json >"$WORK/report.json" 2>/dev/null &
GEN=$!
sleep 2
# Every thread, the generator's included: pid, tid, thread name, command line.
ps -eLo pid,tid,comm,args | awk 'NR > 1' >"$WORK/threads-all.txt"
pgrep -s "$CLUSTER" | sort >"$WORK/pids.txt"
events=""
for call in sendto recvfrom epoll_wait futex; do
  events+="syscalls:sys_enter_$call,syscalls:sys_exit_$call,"
done
events+="syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_pwrite64,"
events+="syscalls:sys_enter_fdatasync,syscalls:sys_exit_fdatasync"
perf record -q -a -e "$events" -o "$WORK/perf.data" -- sleep 0.5 2>/dev/null
wait "$GEN"
perf script -i "$WORK/perf.data" -F tid,time,event 2>/dev/null >"$WORK/trace.txt"
jq -r '"one client, \(.all.ops_per_sec | floor) writes/s, p50 \(.all.latency_us.p50) µs (whole run)"' "$WORK/report.json"

python3 - "$SYSTEM" "$p" "$GEN" "$WORK" "${SEQUENCE:-0}" <<'PY'
import re, statistics, sys

system, port, gen_pid, work = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
sequence = sys.argv[5] == "1"
cluster = set(open(f"{work}/pids.txt").read().split())
roles = {}  # tid -> label
for line in open(f"{work}/threads-all.txt"):
    f = line.split(None, 3)
    if len(f) < 4:
        continue
    pid, tid, comm, args = f
    if pid == gen_pid:
        roles[tid] = "gen"
        continue
    if pid not in cluster:
        continue
    m = re.search(r"--port (\d+)", args)
    if system == "skeleton":
        proc = {port: "gateway", port + 1: "L"}.get(int(m.group(1)) if m else -1)
        if proc is None and m:
            proc = f"F{int(m.group(1)) - port - 1}"
    elif " up " in f" {args} ":
        proc = "up"
    elif m:
        n = int(m.group(1)) - (port + 101)
        proc = "L" if n == 0 else f"F{n}"
    else:
        continue
    kind = "rt" if tid == pid else {"tokio-rt-worker": "w", "kvlab-wal": "wal"}.get(comm, "blk")
    roles[tid] = f"{proc}.{kind}"

events = []
for line in open(f"{work}/trace.txt"):
    m = re.match(r"\s*(\d+)\s+([\d.]+):\s+syscalls:sys_(\S+?):?\s*$", line)
    if m and m.group(1) in roles:
        events.append((float(m.group(2)), roles[m.group(1)], m.group(3)))
starts = [i for i, e in enumerate(events) if e[1] == "gen" and e[2] == "enter_writev"]
if len(starts) < 10:
    sys.exit("timeline.sh: too few writes traced (is perf allowed to trace syscalls?)")
seen = {}
for a, b in zip(starts, starts[1:]):
    t0, first = events[a][0], {}
    for t, who, call in events[a:b + 1]:
        first.setdefault(f"{who} {call}", (t - t0) * 1e6)
    for k, v in first.items():
        seen.setdefault(k, []).append(v)
writes = len(starts) - 1
rows = sorted((statistics.median(v), k) for k, v in seen.items() if len(v) >= 0.8 * writes)
print(f"median over {writes} writes, µs after the generator's request (first call of each kind per thread):")
for at, k in rows:
    if "futex" in k and not k.endswith("enter_futex"):
        continue  # a futex's return says little; its entry is the wake-up
    print(f"  {at:8.1f}  {k}")

if sequence:
    # The write whose time (from the generator's send to its reading the
    # answer) is the median: every call of every thread, in order, which
    # the medians above cannot show (which follower went first, whose
    # flush finished when).
    timed = []
    for a, b in zip(starts, starts[1:]):
        ends = [t for t, who, call in events[a:b] if who == "gen" and call == "exit_recvfrom"]
        if ends:
            timed.append(((ends[0] - events[a][0]) * 1e6, a, b))
    if not timed:
        sys.exit("timeline.sh: no write's answer was traced")
    timed.sort()
    took, a, b = timed[len(timed) // 2]
    print(f"\nthe median write ({took:.0f} µs), call by call:")
    for t, who, call in events[a:b]:
        if call != "exit_futex":
            print(f"  {(t - events[a][0]) * 1e6:8.1f}  {who} {call}")
PY

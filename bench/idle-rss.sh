#!/usr/bin/env bash
# idle-rss.sh: resident memory of a whole idle `kvlab up` cluster, per
# process and in all, for one or more kvlab binaries (or allocator settings).
#
# Memory, unlike throughput, does not depend on the machine's load, so one
# run says it. Besides the summed RSS (compare.sh's figure) it prints the
# anonymous part (heaps, allocator arenas, stacks: what an allocator setting
# can change) and the summed PSS (each shared page counted once in all). The cluster is compare.sh's (1 leader + 3 followers, W=2,
# R=2, no delays, --fsync always); its RSS is read, as compare.sh reads it,
# once the cluster has a quorum ("at start"), then again SETTLE seconds
# later, and once more SETTLE seconds after a short burst of load
# (LOAD_OPS writes and reads at 64 clients): an allocator that keeps what a
# burst made it take shows there.
#
# Usage: bench/idle-rss.sh [BIN...]   (default: target/release/kvlab)
# Knobs: SETTLE=5 LOAD_OPS=20000 PORT=24000; any MIMALLOC_* variable in the
#        environment reaches every process of the cluster (nodes inherit it).

set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib/clusters.sh
source "$REPO/bench/lib/clusters.sh"
SETTLE=${SETTLE:-5}
LOAD_OPS=${LOAD_OPS:-20000}
PORT=${PORT:-24000}
(($#)) || set -- "$REPO/target/release/kvlab"

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

# RSS in MiB of every live process of the session (as compare.sh sums it),
# split into the `up` process and the nodes; and the anonymous part (the
# heap, the allocator's arenas, stacks: what an allocator setting changes;
# the rest is the binary's pages).
# PSS shares each page among the processes that map it: the binary's code,
# mapped by all five, counts once in all instead of once in each.
rss() {
  local pid
  for pid in $(ps -o pid= --sid "$CLUSTER"); do
    [ -r "/proc/$pid/smaps_rollup" ] || continue
    awk -v pid="$pid" '/^Rss:/ { rss = $2 } /^Pss:/ { pss = $2 } /^Anonymous:/ { anon = $2 }
      END { print pid, rss, anon, pss }' "/proc/$pid/smaps_rollup"
  done | while read -r pid kib anon pss; do
    role=node; tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q ' up ' && role=up
    echo "$role $kib $anon $pss"
  done | awk '
    { kib += $2; anon += $3; pss += $4; per[$1] += $2; n[$1]++ }
    END { printf "RSS %.1f MiB (up %.1f, %d nodes %.1f; anonymous %.1f), PSS %.1f MiB",
      kib / 1024, per["up"] / 1024, n["node"], per["node"] / 1024, anon / 1024, pss / 1024 }'
}

for bin in "$@"; do
  WORK=$(mktemp -d -t kvlab-rss.XXXXXX)
  p=$PORT
  start_kvlab_session "$bin" "$p" "$WORK" "$WORK/up.log"
  until curl -fsS --max-time 1 "http://127.0.0.1:$p/cluster-status" 2>/dev/null |
    jq -e '.quorum.can_write and .quorum.can_read' >/dev/null; do sleep 0.2; done
  at_start=$(rss)
  sleep "$SETTLE"
  settled=$(rss)
  "$bin" bench --url "http://127.0.0.1:$p" --ops "$LOAD_OPS" -c 64 --reads 50 --preload \
    --json >/dev/null
  sleep "$SETTLE"
  after_load=$(rss)
  settings=$(env | grep '^MIMALLOC_' | sort | tr '\n' ' ' || true)
  echo "$bin${settings:+ (${settings% })}:"
  echo "  at start:          $at_start"
  echo "  ${SETTLE} s later:         $settled"
  echo "  ${SETTLE} s after a burst: $after_load"
  stop_cluster
done

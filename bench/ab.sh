#!/usr/bin/env bash
# ab.sh: an A/B of two kvlab builds on compare.sh's kvlab workloads (64-client
# writes, 64-client reads, 1-client writes), in alternating runs: A, B, A, B,
# ... so that a slow moment of this shared machine falls on both sides rather
# than on one. Each run is a whole `bench/compare.sh` with ONLY=kvlab: a fresh
# cluster, its own data directory, the same workloads and generator flags.
#
# It prints every run, then each side's median and B's median over A's.
# Timings on a 2-core VM swing by tens of percent between identical runs: read
# the spread of the runs before the medians.
#
# Usage: bench/ab.sh A_BIN B_BIN     (e.g. an older build's target/release/kvlab, then this one)
# Knobs, from the environment: ROUNDS=3 (runs per side), OUT_DIR=dir (keep
# every report), A_UP_FLAGS / B_UP_FLAGS (extra `kvlab up` flags of one side:
# one build against itself with a switch, e.g. bench/ab.sh BIN BIN with
# A_UP_FLAGS="--internal-wire http"), and compare.sh's own (DURATION, WARMUP,
# KEYS, VALUE_SIZE, KVLAB_UP_FLAGS for both sides, KVLAB_PORT_BASE).

set -euo pipefail

[[ $# -eq 2 ]] || { echo "usage: bench/ab.sh A_BIN B_BIN" >&2; exit 2; }
A=$(realpath "$1")
B=$(realpath "$2")
for bin in "$A" "$B"; do
  [[ -x $bin ]] || { echo "ab.sh: $bin is not an executable" >&2; exit 2; }
done
ROUNDS=${ROUNDS:-3}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${OUT_DIR:-$(mktemp -d -t kvlab-ab.XXXXXX)}
mkdir -p "$OUT"
command -v jq >/dev/null || { echo "ab.sh: needs jq (apt install jq)" >&2; exit 2; }

A_UP_FLAGS=${A_UP_FLAGS:-${KVLAB_UP_FLAGS:-}}
B_UP_FLAGS=${B_UP_FLAGS:-${KVLAB_UP_FLAGS:-}}

# One compare.sh run of one side; its reports go to $OUT/<side>-<round>/.
run() {
  local side=$1 bin=$2 round=$3 flags=$4
  echo "== round $round, $side: $bin $flags" >&2
  OUT_DIR="$OUT/$side-$round" ONLY=kvlab KVLAB_BIN="$bin" CEILING=0 SKELETON=0 REPEATS=1 \
    KVLAB_UP_FLAGS="$flags" "$HERE/compare.sh" >"$OUT/$side-$round.txt" 2>&1 ||
    { echo "ab.sh: run $side-$round failed; see $OUT/$side-$round.txt" >&2; exit 1; }
}

for round in $(seq "$ROUNDS"); do
  run A "$A" "$round" "$A_UP_FLAGS"
  run B "$B" "$round" "$B_UP_FLAGS"
done

# figure SIDE ROUND INDEX JQ: one figure of one run's report.
figure() { jq -r "$4" "$OUT/$1-$2/kvlab-$3.json"; }

printf '\n%-6s %-5s %14s %14s %16s\n' side round "writes/s (64)" "reads/s (64)" "1-client p50 ms"
for round in $(seq "$ROUNDS"); do
  for side in A B; do
    printf '%-6s %-5s %14s %14s %16s\n' "$side" "$round" \
      "$(figure $side "$round" 0 '.all.ops_per_sec | floor')" \
      "$(figure $side "$round" 1 '.all.ops_per_sec | floor')" \
      "$(figure $side "$round" 2 '.all.latency_us.p50 / 1000')"
  done
done

# median SIDE INDEX JQ: the median of one figure over a side's runs.
median() {
  for round in $(seq "$ROUNDS"); do figure "$1" "$round" "$2" "$3"; done |
    sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

printf '\nmedians over %s runs each\n' "$ROUNDS"
printf '%-22s %12s %12s %8s\n' figure A B "B / A"
for spec in "writes/s, 64 clients|0|.all.ops_per_sec" \
  "reads/s, 64 clients|1|.all.ops_per_sec" \
  "1-client write p50 ms|2|.all.latency_us.p50 / 1000"; do
  IFS='|' read -r label index path <<<"$spec"
  a=$(median A "$index" "$path")
  b=$(median B "$index" "$path")
  printf '%-22s %12.4g %12.4g %8s\n' "$label" "$a" "$b" "$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", b / a }')"
done
echo "(reports: $OUT; A = $A $A_UP_FLAGS, B = $B $B_UP_FLAGS)"

#!/usr/bin/env bash
# Power cuts under a linearizability check: `kvlab check --nemesis
# power-loss` (a simulated power cut that tears the node's next log write,
# leader included; see docs/guarantees.md "Power loss, tested") for several
# seeds, W + R > N, and a tally of the verdicts and the torn writes recovered.
#
#   bench/power-loss.sh [seconds per run] [runs]     (defaults: 60 s, 3 runs)
#
# The CI tests run this fault for 12 s (tests/durability.rs); this is the
# longer soak.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${1:-60}
RUNS=${2:-3}
BASE=${KVLAB_POWER_BENCH_PORT:-36300}
cargo build --release --quiet
KVLAB=$PWD/target/release/kvlab
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

valid=0
for seed in $(seq 1 "$RUNS"); do
    out="$WORK/seed-$seed"
    if "$KVLAB" check --followers 3 -W 2 -R 2 --no-delay --nemesis power-loss \
        --time-limit "$SECS" --seed "$seed" --base-port $((BASE + 20 * seed)) --out "$out" \
        >"$WORK/check-$seed.txt" 2>&1; then
        valid=$((valid + 1))
        verdict=VALID
    else
        verdict="NOT VALID (exit $?)"
    fi
    cuts=$(grep -o '"kind": *"power-loss"' "$out/results.json" | wc -l)
    # (Each run has its own ports, so its own node logs.)
    torn=$(cat "$out"/nodes/*.log | grep "dropped it" | grep -c "torn by a power cut" || true)
    ops=$(grep -o 'operations  [0-9]*' "$WORK/check-$seed.txt" | head -1)
    echo "seed $seed: $verdict · $ops · $cuts power cuts · $torn torn writes recovered"
done
echo "$valid of $RUNS runs valid"

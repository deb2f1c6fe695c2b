#!/usr/bin/env bash
# check-matrix.sh: `kvlab check` over the fault matrix of issue 11 (not CI: it
# takes hours). For each cluster shape (N=3 W=2 R=2, N=5 W=3 R=3) and each
# nemesis alone and `all`, it runs SEEDS seeds of TIME_LIMIT seconds each,
# one run at a time, and prints a table of verdicts (exit 0 valid, 1
# violation, 2 unknown). The artifacts of runs that were not valid are kept
# in OUT_DIR/<shape>/<nemesis>/seed-<n>.
#
# Usage: bench/check-matrix.sh    (from anywhere inside a clone)
# Knobs, from the environment:
#   SEEDS="1 2 3 4 5"  TIME_LIMIT=60  CLIENTS=5  KEYS=3
#   SHAPES="3:2:2 5:3:3"   (N:W:R)
#   NEMESES="kill crash pause heartbeats partition slow-disk leader all"
#   DELAYS="--no-delay"    (or "" for the lab's delays)
#   BASE_PORT=32000  OUT_DIR=target/check-matrix  KVLAB=target/release/kvlab

set -euo pipefail
cd "$(dirname "$0")/.."

SEEDS=${SEEDS:-"1 2 3 4 5"}
TIME_LIMIT=${TIME_LIMIT:-60}
CLIENTS=${CLIENTS:-5}
KEYS=${KEYS:-3}
SHAPES=${SHAPES:-"3:2:2 5:3:3"}
NEMESES=${NEMESES:-"kill crash pause heartbeats partition slow-disk leader all"}
DELAYS=${DELAYS---no-delay}
BASE_PORT=${BASE_PORT:-32000}
OUT_DIR=${OUT_DIR:-target/check-matrix}
KVLAB=${KVLAB:-target/release/kvlab}

if [ ! -x "$KVLAB" ] || [ "${BUILD:-1}" = 1 ]; then
  cargo build --release --bin kvlab
fi
mkdir -p "$OUT_DIR"
table="$OUT_DIR/table.md"
{
  echo "| N/W/R | nemesis | $(for s in $SEEDS; do printf 'seed %s | ' "$s"; done)"
  echo "|---|---|$(for _ in $SEEDS; do printf -- '---|'; done)"
} > "$table"

for shape in $SHAPES; do
  IFS=: read -r n w r <<< "$shape"
  for nemesis in $NEMESES; do
    row="| $n/$w/$r | $nemesis |"
    for seed in $SEEDS; do
      dir="$OUT_DIR/$n-$w-$r/$nemesis/seed-$seed"
      set +e
      # shellcheck disable=SC2086 # DELAYS is a list of flags
      mkdir -p "$(dirname "$dir")"
      "$KVLAB" check --followers "$n" -W "$w" -R "$r" $DELAYS --nemesis "$nemesis" \
        --time-limit "$TIME_LIMIT" --clients "$CLIENTS" --keys "$KEYS" --seed "$seed" \
        --base-port "$BASE_PORT" --out "$dir" > "$dir.txt" 2>&1
      code=$?
      set -e
      case $code in
        0) verdict="valid"; rm -rf "$dir" ;;
        1) verdict="**VIOLATION**" ;;
        2) verdict="unknown" ;;
        *) verdict="error ($code)" ;;
      esac
      echo "$n/$w/$r $nemesis seed $seed: $verdict"
      row="$row $verdict |"
    done
    echo "$row" >> "$table"
  done
done
echo
cat "$table"

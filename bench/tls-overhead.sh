#!/usr/bin/env bash
# tls-overhead.sh: what TLS between the components costs a write. Starts the
# same cluster twice, on loopback (plain HTTP everywhere) and with --tls on
# (every hop TLS: client -> gateway, coordinator -> leader -> followers,
# heartbeats), sends WRITES sequential writes through the gateway on one
# keep-alive connection (curl), and prints the mean time per write of each.
# Not CI: a measurement, for the report of issue 24.
#
# Usage: bench/tls-overhead.sh    (from anywhere inside a clone)
# Knobs, from the environment:
#   WRITES=500  BASE_PORT=15000  KVLAB=target/debug/kvlab  FLAGS="--no-delay --in-memory"

set -euo pipefail
cd "$(dirname "$0")/.."

WRITES=${WRITES:-500}
BASE_PORT=${BASE_PORT:-15000}
KVLAB=${KVLAB:-target/debug/kvlab}
FLAGS=${FLAGS:-"--no-delay --in-memory"}

scratch=$(mktemp -d)
pid=""
cleanup() {
    if [[ -n "$pid" ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$scratch"
}
trap cleanup EXIT

# run MODE: starts the cluster with --tls MODE, times the writes, stops it.
run() {
    local mode=$1 base=$2 scheme=http curl_tls=()
    [[ "$mode" == on ]] && scheme=https && curl_tls=(--cacert "$scratch/kvlab-$base/tls/ca.pem")
    # shellcheck disable=SC2086
    TMPDIR=$scratch "$KVLAB" up --tls "$mode" $FLAGS --quiet \
        --coordinator-port "$base" --registry-port $((base + 1)) \
        --node-base-port $((base + 2)) --gateway-port $((base + 39)) >/dev/null 2>&1 &
    pid=$!
    local gw="$scheme://127.0.0.1:$((base + 39))"
    for _ in $(seq 100); do
        if curl -sf "${curl_tls[@]}" -X POST -H 'content-type: application/json' \
            -d '{"key":"ready","value":"1"}' "$gw/write" >/dev/null 2>&1; then break; fi
        sleep 0.2
    done
    # One curl, one connection: `--next` starts each request's own options.
    local args=()
    for i in $(seq "$WRITES"); do
        [[ $i -gt 1 ]] && args+=(--next)
        args+=(-sf "${curl_tls[@]}" -o /dev/null -X POST -H 'content-type: application/json'
            -d "{\"key\":\"k$((i % 50))\",\"value\":\"v$i\"}" "$gw/write")
    done
    local start end
    start=$(date +%s%N)
    curl "${args[@]}"
    end=$(date +%s%N)
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
    echo "--tls $mode: $WRITES writes in $(((end - start) / 1000000)) ms," \
        "$(((end - start) / WRITES / 1000)) us per write"
}

run off "$BASE_PORT"
run on $((BASE_PORT + 40))

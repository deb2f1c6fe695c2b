#!/usr/bin/env bash
# Write throughput of each --fsync policy (and of --in-memory), measured with
# `kvlab bench` on a cluster of 1 leader + 3 followers, W=2, R=2, no delays.
#
#   bench/fsync.sh [seconds] [clients]      (defaults: 10 s, 64 clients)
#
# Each policy gets a fresh cluster on its own data directory; the table gives
# writes/s and latency through the coordinator (the gateway adds its own hop,
# the same for every policy).
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${1:-10}
CLIENTS=${2:-64}
BASE=${KVLAB_FSYNC_BENCH_PORT:-36100}
cargo build --release --quiet
KVLAB=target/release/kvlab
WORK=$(mktemp -d)
UP_PID=

stop_cluster() {
    if [[ -n "$UP_PID" ]]; then
        kill "$UP_PID" 2>/dev/null || true
        wait "$UP_PID" 2>/dev/null || true
        UP_PID=
    fi
}
trap 'stop_cluster; rm -rf "$WORK"' EXIT

wait_writable() {
    for _ in $(seq 1 200); do
        if curl -sf "http://127.0.0.1:$BASE/status" | grep -q '"can_write":true'; then
            return 0
        fi
        sleep 0.1
    done
    echo "the cluster did not become writable" >&2
    return 1
}

printf '| %-16s | %10s | %8s | %8s |\n' "storage" "writes/s" "p50 ms" "p99 ms"
printf '|%s|%s|%s|%s|\n' "------------------" "------------" "----------" "----------"
for policy in always interval never in-memory; do
    if [[ $policy == in-memory ]]; then
        storage=(--in-memory)
    else
        storage=(--fsync "$policy" --data-dir "$WORK/$policy")
    fi
    "$KVLAB" up --quiet --no-delay --followers 3 -W 2 -R 2 "${storage[@]}" \
        --coordinator-port "$BASE" --registry-port $((BASE + 1)) \
        --node-base-port $((BASE + 2)) --gateway-port $((BASE + 20)) \
        --log-dir "$WORK/logs-$policy" >/dev/null 2>&1 &
    UP_PID=$!
    wait_writable
    report=$("$KVLAB" bench --url "http://127.0.0.1:$BASE" -c "$CLIENTS" -d "$SECS" \
        --reads 0 --json 2>/dev/null)
    python3 - "$policy" "$report" <<'EOF'
import json, sys
policy, r = sys.argv[1], json.loads(sys.argv[2])
w = r["write"]
lat = w["latency_us"] or {}
ms = lambda k: lat.get(k, 0) / 1000
print(f"| {policy:<16} | {w['ops_per_sec']:>10.0f} | {ms('p50'):>8.2f} | {ms('p99'):>8.2f} |")
EOF
    stop_cluster
done

#!/usr/bin/env bash
# code-layout.sh: writes layout/hot-code.txt, the list of functions a kvlab
# cluster's processes execute, which build.rs hands to the linker so that the
# release binary holds them together, at the start of its code.
#
# Why: the kernel maps a program's code in 64 KiB windows (fault-around), so a
# process that runs 1 MiB of functions scattered over the 13 MB of code holds
# some 8 MiB of it resident, and a cluster is five such processes. With the
# functions they run packed together, each holds little more than what it
# runs. See ARCHITECTURE.md, "Round four: idle memory, where the code lives".
#
# How: the cluster of bench/compare.sh (1 leader + 3 followers, W=2, R=2,
# --fsync always) runs under valgrind's callgrind, every process of it
# (--trace-children), through its start, writes and reads at 1 and 8 clients,
# a few idle seconds and a clean stop; callgrind's list of the functions each
# process ran is then sorted into groups (those of `up` alone, those every
# process runs, those of the nodes), most shared first, and written with the
# names the linker knows them by (mangled).
#
# Run it again after a change that moves the start-up or request paths, or a
# new toolchain or dependency (their symbols' names carry a hash): names that
# no longer exist are skipped by the linker, so a stale list only costs
# memory, never correctness. `bench/idle-rss.sh` shows what it buys.
#
# Usage: bench/code-layout.sh [BIN]   (default: target/release/kvlab; needs
#        valgrind and python3). Knobs: PORT=26000 IDLE=5 OUT=layout/hot-code.txt

set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$(realpath "${1:-$REPO/target/release/kvlab}")
PORT=${PORT:-26000}
IDLE=${IDLE:-5}
OUT=${OUT:-$REPO/layout/hot-code.txt}
command -v valgrind >/dev/null || { echo "code-layout.sh: needs valgrind (apt install valgrind)" >&2; exit 2; }
[[ -x $BIN ]] || { echo "code-layout.sh: $BIN is not an executable" >&2; exit 2; }

WORK=$(mktemp -d -t kvlab-layout.XXXXXX)
SID=""
cleanup() {
  if [[ -n $SID ]] && kill -0 "$SID" 2>/dev/null; then
    kill -KILL -- "-$SID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

log() { printf '[code-layout] %s\n' "$*" >&2; }

# Waits (up to a minute: callgrind runs code some 50 times slower) for a line
# of the cluster's console.
wait_for_line() {
  local pattern=$1
  for _ in $(seq 600); do
    grep -q "$pattern" "$WORK/up.log" && return 0
    kill -0 "$SID" 2>/dev/null || { tail -20 "$WORK/up.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "code-layout.sh: no '$pattern' from the cluster in a minute" >&2
  tail -20 "$WORK/up.log" >&2
  exit 1
}

log "running the cluster under callgrind (slow: about a minute)"
mkdir -p "$WORK/profiles"
setsid valgrind --tool=callgrind --trace-children=yes --demangle=no \
  --callgrind-out-file="$WORK/profiles/%p.out" \
  "$BIN" up --no-delay --followers 3 -W 2 -R 2 --fsync always \
  --data-dir "$WORK/data" --fresh \
  --gateway-port "$PORT" --coordinator-port $((PORT + 100)) --registry-port $((PORT + 200)) \
  --node-base-port $((PORT + 101)) >"$WORK/up.log" 2>&1 &
SID=$!
wait_for_line "cluster ready"

# The request paths: writes and reads, alone and batched, then idle time for
# the heartbeats and the registry's checks.
url="http://127.0.0.1:$PORT"
for clients in 1 8; do
  for reads in 0 100; do
    "$BIN" bench --url "$url" --target kvlab --duration 3 --clients "$clients" \
      --reads "$reads" --keys 100 >"$WORK/bench-$clients-$reads.txt" 2>&1 ||
      { cat "$WORK/bench-$clients-$reads.txt" >&2; exit 1; }
  done
done
sleep "$IDLE"
log "stopping the cluster"
kill -INT "$SID"
wait "$SID" 2>/dev/null || true
SID=""

mkdir -p "$(dirname "$OUT")"
python3 - "$BIN" "$OUT" "$WORK"/profiles/*.out <<'PY'
import re
import sys

binary, out, profiles = sys.argv[1], sys.argv[2], sys.argv[3:]

cost = {}  # instructions each function ran, summed over every process


def executed(path):
    """The mangled names of the functions of `binary` that a callgrind
    profile shows running, and which process it was (up, leader, follower).
    Adds each function's own instructions (not its callees') to `cost`."""
    functions, ran, objects, current, kind = {}, set(), {}, None, None
    own = {}  # function id -> its own instructions in this profile
    fn, after_calls = None, False
    for line in open(path, errors="replace"):
        # Cost lines: "<line> <instructions>". The one after a calls= line is
        # the callee's cost, counted in the callee's own lines instead.
        if line[:1].isdigit() or line[:1] in "+-*":
            if after_calls:
                after_calls = False
            elif fn is not None:
                parts = line.split()
                if len(parts) >= 2 and parts[1].isdigit():
                    own[fn] = own.get(fn, 0) + int(parts[1])
            continue
        if line.startswith("calls="):
            after_calls = True
            continue
        if line.startswith("cmd:"):
            words = line.split()
            if " up " in line:
                kind = "up"
            elif "--id" in words:
                ident = words[words.index("--id") + 1]
                kind = "leader" if ident == "leader" else "follower"
            continue
        m = re.match(r"^(c?ob)=\((\d+)\)(?: (.*))?", line)
        if m:
            if m.group(3):
                objects[m.group(2)] = m.group(3).strip()
            if m.group(1) == "ob":
                current = objects.get(m.group(2))
            continue
        # A name is given once, where its id first appears (in a fn= or a
        # cfn= line), and only the id after that.
        m = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?", line)
        if m:
            if m.group(3):
                # callgrind adds "'2" to a function's name for a recursion level.
                functions[m.group(2)] = m.group(3).split("'")[0].strip()
            if m.group(1) == "fn":
                fn = m.group(2) if current == binary else None
                if fn is not None:
                    ran.add(fn)
    for i, n in own.items():
        cost[functions[i]] = cost.get(functions[i], 0) + n
    # Only symbols: not callgrind's own names for code it cannot name, such
    # as "(below main)" or a bare address.
    return kind, {functions[i] for i in ran if is_symbol(functions[i])}


def is_symbol(name):
    return name and not name.startswith(("(", "0x")) and not any(c.isspace() for c in name)

by_kind = {"up": set(), "leader": set(), "follower": set()}
for path in profiles:
    kind, names = executed(path)
    if kind:
        by_kind[kind] |= names
up, leader, follower = by_kind["up"], by_kind["leader"], by_kind["follower"]
if not (up and leader and follower):
    sys.exit("code-layout.sh: a profile of up, the leader or a follower is missing")
nodes = leader | follower

# Most shared first: up alone, up with one kind of node, every process, the
# nodes, then each kind of node alone. Each process's functions then lie in
# one run of the file, and the nodes' runs overlap. Within a group the
# busiest come first, so that the request paths share cache lines and TLB
# entries instead of sitting among code that ran once, at start.
groups = [
    ("run by up alone", up - nodes),
    ("run by up and one kind of node", (up & nodes) - (leader & follower)),
    ("run by every process", up & leader & follower),
    ("run by both kinds of node, not up", (leader & follower) - up),
    ("run by followers alone", follower - leader - up),
    ("run by the leader alone", leader - follower - up),
]
with open(out, "w") as f:
    f.write("# Functions a kvlab cluster runs, in the order the linker places them\n")
    f.write("# (build.rs, --symbol-ordering-file). Made by bench/code-layout.sh: do\n")
    f.write("# not edit by hand; run it again when the code's hot paths move.\n")
    for title, names in groups:
        f.write(f"\n# {title}: {len(names)}\n")
        for name in sorted(names, key=lambda n: (-cost.get(n, 0), n)):
            f.write(name + "\n")
total = len(up | nodes)
print(f"{out}: {total} functions (up {len(up)}, leader {len(leader)}, follower {len(follower)})")
PY

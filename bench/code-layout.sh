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
#        valgrind and python3). Knobs: PORT=26000 IDLE=5 RUNS=3 OUT=layout/hot-code.txt
#        The static build has a list of its own (its symbol names differ, and
#        it holds the C library): OUT=layout/hot-code-static.txt
#        bench/code-layout.sh target/x86_64-unknown-linux-gnu/release/kvlab

set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$(realpath "${1:-$REPO/target/release/kvlab}")
PORT=${PORT:-26000}
IDLE=${IDLE:-5}
RUNS=${RUNS:-3}
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

# One run of the cluster under callgrind, its profiles in $WORK/profiles/$1.
profile_run() {
  log "run $1 of $RUNS: the cluster under callgrind (slow: about 20 s)"
  mkdir -p "$WORK/profiles/$1"
  setsid valgrind --tool=callgrind --trace-children=yes --demangle=no \
    --callgrind-out-file="$WORK/profiles/$1/%p.out" \
    "$BIN" up --no-delay --followers 3 -W 2 -R 2 --fsync always \
    --data-dir "$WORK/data" --log-dir "$WORK/logs" --fresh \
    --gateway-port "$PORT" --coordinator-port $((PORT + 100)) --registry-port $((PORT + 200)) \
    --node-base-port $((PORT + 101)) >"$WORK/up.log" 2>&1 &
  SID=$!
  wait_for_line "cluster ready"

  # The request paths: writes and reads, alone and batched, then idle time
  # for the heartbeats and the registry's checks.
  local url="http://127.0.0.1:$PORT" clients reads
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
}

# Which functions run depends a little on timing (a task that finishes
# before or after it is polled again, a connection reused or not), so the
# list is the union of a few runs: a function one run missed would cost
# every process a 64 KiB window of its own.
for run in $(seq "$RUNS"); do
  profile_run "$run"
done

mkdir -p "$(dirname "$OUT")"
python3 - "$BIN" "$OUT" "$WORK"/profiles/*/*.out <<'PY'
import re
import subprocess
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
    names = {functions[i] for i in ran}
    if "(below main)" in names:
        names |= set(BELOW_MAIN)
    if "__spawni" in names:
        names |= set(SPAWN_CHILD)
    return kind, {n for n in names if is_symbol(n)}


def is_symbol(name):
    return name and not name.startswith(("(", "0x")) and not any(c.isspace() for c in name)


# What callgrind calls "(below main)": the C library's start-up code, which
# every process runs once (names differ between glibc versions; a name the
# binary lacks is skipped by the linker).
BELOW_MAIN = ["_start", "__libc_start_main", "__libc_start_main_impl", "__libc_start_call_main"]

# What the child of `up` runs between its creation and its exec. The child
# of posix_spawn shares its parent's memory until the exec (a vfork), so
# the pages it touches stay mapped in `up`; callgrind, which runs such a
# child as a separate copy, does not show them in up's profile.
SPAWN_CHILD = ["__spawni_child", "__execve", "__sigprocmask", "__pthread_sigmask", "__dup2",
               "__setpgid", "__close_range", "__chdir", "__fchdir"]

# CPU-specific variants. Some functions come in versions for each
# instruction set (glibc's memmove, strlen, ...; crc32fast's checksum), and
# the one chosen at run time depends on the CPU. Valgrind's CPU has no
# AVX-512, so the profile shows the AVX2 version while a real machine may run
# the AVX-512 or EVEX one: every variant of a listed function is listed with
# it. A variant is recognised by its demangled name with the instruction-set
# words taken out.
ISA = re.compile(r"_(sse2|ssse3|sse4_1|sse4_2|avx|avx2|avx512\w*?|evex\w*?|rtm|erms|unaligned|no_vzeroupper)(?=_|$)")


def family(demangled):
    return ISA.sub("", re.sub(r"::h[0-9a-f]{16}$", "", demangled))


def variants_in_binary():
    """family -> the binary's mangled names of that family, for every
    symbol whose name carries an instruction-set word."""
    mangled = subprocess.run(["nm", "-p", binary], capture_output=True, text=True).stdout.splitlines()
    plain = subprocess.run(["nm", "-p", "-C", binary], capture_output=True, text=True).stdout.splitlines()
    found = {}
    for m, d in zip(mangled, plain):
        m, d = m.split(maxsplit=2), d.split(maxsplit=2)
        if len(m) < 3 or len(d) < 3 or m[1] not in "tTwW":
            continue
        if ISA.search(d[2]):
            found.setdefault(family(d[2]), []).append((m[2], d[2]))
    return found

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
# The demangled name of each listed function, to find its CPU variants.
demangled = dict(zip(
    sorted(up | nodes),
    subprocess.run(["c++filt"], input="\n".join(sorted(up | nodes)), capture_output=True, text=True).stdout.splitlines(),
))
families = variants_in_binary()


def variants(name):
    """The CPU variants of a listed function. A glibc resolver (`strcmp_ifunc`,
    which picks `__strcmp_evex` or another at start) counts as its family:
    the profile can show the resolver and none of the versions it chose from."""
    found = families.get(family(demangled.get(name, name)), [])
    if name.endswith("_ifunc"):
        found = found + families.get("__" + name[: -len("_ifunc")], [])
    return [m for m, _ in found]
written = set()
with open(out, "w") as f:
    f.write("# Functions a kvlab cluster runs, in the order the linker places them\n")
    f.write("# (build.rs, --symbol-ordering-file). Made by bench/code-layout.sh: do\n")
    f.write("# not edit by hand; run it again when the code's hot paths move.\n")
    for title, names in groups:
        f.write(f"\n# {title}: {len(names)}\n")
        for name in sorted(names, key=lambda n: (-cost.get(n, 0), n)):
            for each in [name] + variants(name):
                if each not in written:
                    written.add(each)
                    f.write(each + "\n")
total = len(up | nodes)
print(f"{out}: {total} functions (up {len(up)}, leader {len(leader)}, follower {len(follower)})")
PY

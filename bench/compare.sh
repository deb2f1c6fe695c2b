#!/usr/bin/env bash
# compare.sh: kvlab against a 3-member etcd, same machine, same workloads, one run.
#
# In order, it:
#   1. installs etcd (Debian's etcd-server and etcd-client), curl and jq if missing;
#   2. builds kvlab in release mode, statically linked on x86_64 Linux (the
#      kind of binary the container image ships; see STATIC_RUSTFLAGS below);
#   3. starts a 3-member etcd on loopback with its default durability (the WAL is
#      fsynced before a write is acknowledged), measures it through its HTTP/JSON
#      gateway (puts, and linearizable ranges), and stops it;
#   4. starts a kvlab cluster (1 leader + 3 followers, W=2, R=2, no teaching
#      delays, durable with --fsync always), measures it through its gateway,
#      and stops it;
#   5. starts `kvlab bench-server`, a bare HTTP server that answers kvlab's
#      requests at once with a small JSON body (same HTTP stack and server
#      threads as the gateway's process, see src/bench/bare.rs), measures it
#      with the same generator and connection count (64 clients, half reads
#      and half writes), and stops it: the ceiling;
#   6. starts the skeleton (`kvlab bench-skeleton`, src/bench/skeleton.rs):
#      the lab's gateway, leader and 3 followers as 5 processes doing only
#      what the lab's contract makes any implementation do (a read asks R=2
#      followers; a write is fsynced by the leader and its sync set, the
#      W=2 followers with the lowest ports, as the contract has it), over
#      a binary wire, with no other logic; measures it with kvlab's
#      workloads and stops it: the ceiling of the lab's shape;
#   7. prints one table with kvlab/etcd ratios, both clusters' idle memory
#      (summed RSS, and summed PSS: each shared page counted once), one line with kvlab's
#      64-client reads and writes as a percentage of the bare server's rate,
#      and one with the floor of a lone write on this machine: three bare
#      round trips (the bare server at 1 client) plus the 3rd of 4
#      concurrent fsyncs in the cluster's directory (`kvlab bench-disk`).
# Both systems are driven by the same generator (`kvlab bench`, with
# `--target etcd` for etcd), so only the server differs. They run one after the
# other, never together, so neither takes the other's cores. Each system under
# test runs in a session of its own, apart from the generator's: Linux groups
# CPU time by session (sched_autogroup), so a system that shared the
# generator's session would be scheduled differently from one that does not.
# Every process the script starts is stopped when it exits, however it exits
# (trap on EXIT).
#
# One round of all of it takes about two and a half minutes, and a single
# round is noisy on a small machine: etcd's figures, and the skeleton's
# reads, move by 10-20% from one minute to the next. REPEATS=N measures
# every system N times, alternating (etcd, kvlab, bare, skeleton, then
# again), prints each round's ratios, and takes each figure's median over
# the rounds for the table and the goals.
#
# Usage: bench/compare.sh          (from anywhere inside a clone; needs root for apt)
# Knobs, from the environment:
#   DURATION=10 WARMUP=2 KEYS=1000 VALUE_SIZE=100   the workload
#   REPEATS=1                                        rounds of every measurement;
#                                                    figures are their medians
#   ONLY=both|etcd|kvlab                             measure one side only
#   CEILING=0                                        skip the bare server and the
#                                                    skeleton (bench/ab.sh)
#   SKELETON=0                                       skip the skeleton only
#   KVLAB_UP_FLAGS="--fsync always"                  extra flags for `kvlab up`
#   OUT_DIR=dir                                      keep every run's JSON report there
#   BUILD=0                                          measure the binary as it is, unbuilt
#   STATIC=0                                         measure the default, dynamically linked
#                                                    build (target/release/kvlab)
#   KVLAB_BIN=path                                   measure this binary (implies BUILD=0),
#                                                    e.g. an older build for an A/B
#   ETCD_PORT_BASE=23000  KVLAB_PORT_BASE=24000      where the two clusters listen
#   BARE_PORT=24900                                  where the bare server listens
#   SKELETON_PORT=24950                              the skeleton's gateway (its
#                                                    replicas: the next 4 ports)

set -euo pipefail
set +m # no job control: a background `setsid` then keeps its pid (see start_kvlab)

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
KEYS=${KEYS:-1000}
VALUE_SIZE=${VALUE_SIZE:-100}
ONLY=${ONLY:-both}
CEILING=${CEILING:-1}
SKELETON=${SKELETON:-1}
KVLAB_UP_FLAGS=${KVLAB_UP_FLAGS:-}
ETCD_PORT_BASE=${ETCD_PORT_BASE:-23000}
KVLAB_PORT_BASE=${KVLAB_PORT_BASE:-24000}
BARE_PORT=${BARE_PORT:-24900}
SKELETON_PORT=${SKELETON_PORT:-24950}
REPEATS=${REPEATS:-1}
[[ $REPEATS =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: REPEATS must be a whole number >= 1, not '$REPEATS'" >&2; exit 2; }
# The current round's suffix in report names: none for the first round
# (etcd-0.json), .r2, .r3, ... for the next ones (etcd-0.r2.json).
SFX=""

# The three workloads of the comparison: a label, then `kvlab bench` flags.
WORKLOADS=(
  "writes, 64 clients|-c 64 --reads 0"
  "reads, 64 clients|-c 64 --reads 100 --preload"
  "writes, 1 client|-c 1 --reads 0"
)
# The ceiling's workload: the bare server, with the 64-client connection count.
BARE_WORKLOAD="-c 64 --reads 50"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib/clusters.sh
source "$REPO/bench/lib/clusters.sh"
WORK=$(mktemp -d -t kvlab-compare.XXXXXX)
RESULTS=${OUT_DIR:-$WORK/results}
mkdir -p "$RESULTS"
# The static build: glibc linked in, not position-independent (no
# relocations to apply at start). On x86_64 Linux it is what compare.sh
# measures, because an idle process of it holds less memory: the C library's
# code is laid out with kvlab's own (build.rs, layout/hot-code-static.txt)
# instead of being mapped whole from libc.so into each of the five processes.
STATIC_TARGET=x86_64-unknown-linux-gnu
STATIC_RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static"
STATIC=${STATIC:-1}
[[ $(uname -s)-$(uname -m) == Linux-x86_64 ]] || STATIC=0
if [[ -n ${KVLAB_BIN:-} ]]; then
  KVLAB=$KVLAB_BIN
elif [[ $STATIC == 1 ]]; then
  KVLAB=$REPO/target/$STATIC_TARGET/release/kvlab
else
  KVLAB=$REPO/target/release/kvlab
fi

# Each system under test runs in a session of its own, known by its id:
ETCD_SID=""     # the 3 etcd members
KVLAB_SID=""    # `kvlab up` and every process it starts
BARE_SID=""     # the bare HTTP server
SKELETON_SID="" # the skeleton's five processes

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'compare.sh: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------
# Cleanup: runs on every exit, including errors and Ctrl-C.
# ---------------------------------------------------------------------------

# Every live process of a session, whatever process group each is in.
# (Zombies are left out: they are already dead, waiting to be reaped.)
session_pids() {
  ps -o pid=,stat= --sid "$1" 2>/dev/null | awk '$2 !~ /^Z/ { print $1 }'
}

# Stops a whole session: politely first, so kvlab's nodes can deregister
# and flush and etcd can close its WAL; then, after 5 s, for good.
stop_session() {
  local sid=$1 pids
  [[ -n $sid ]] || return 0
  pids=$(session_pids "$sid" || true)
  # shellcheck disable=SC2086 # a list of pids
  [[ -z $pids ]] || kill -TERM $pids 2>/dev/null || true
  for _ in $(seq 50); do
    [[ -n $(session_pids "$sid") ]] || break
    sleep 0.1
  done
  pids=$(session_pids "$sid" || true)
  # shellcheck disable=SC2086 # a list of pids
  [[ -z $pids ]] || kill -KILL $pids 2>/dev/null || true
  wait "$sid" 2>/dev/null || true
}

stop_etcd() { stop_session "$ETCD_SID"; ETCD_SID=""; }
stop_kvlab() { stop_session "$KVLAB_SID"; KVLAB_SID=""; }
stop_bare() { stop_session "$BARE_SID"; BARE_SID=""; }
stop_skeleton() { stop_session "$SKELETON_SID"; SKELETON_SID=""; }

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  stop_bare
  stop_skeleton
  stop_kvlab
  stop_etcd
  if ((status != 0)); then
    log "failed; last lines of each log:"
    for f in "$WORK"/*.log "$WORK"/*/*.log; do
      [[ -e $f ]] && { echo "--- $f" >&2; tail -n 5 "$f" >&2; }
    done
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------

install_tools() {
  local missing=()
  command -v etcd >/dev/null || missing+=(etcd-server)
  command -v etcdctl >/dev/null || missing+=(etcd-client)
  command -v curl >/dev/null || missing+=(curl)
  command -v jq >/dev/null || missing+=(jq)
  ((${#missing[@]})) || return 0
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

build_kvlab() {
  if { [ "${BUILD:-1}" = 0 ] || [ -n "${KVLAB_BIN:-}" ]; } && [ -x "$KVLAB" ]; then
    log "using the existing $KVLAB (BUILD=0)"
    return
  fi
  if [[ $STATIC == 1 ]]; then
    log "building kvlab (release, static: $STATIC_RUSTFLAGS)"
    (cd "$REPO" && RUSTFLAGS=$STATIC_RUSTFLAGS cargo build --release --quiet --target "$STATIC_TARGET" --bin kvlab)
  else
    log "building kvlab (release)"
    (cd "$REPO" && cargo build --release --quiet)
  fi
}

# Poll a URL until it answers 2xx, failing early if the process behind it died.
wait_for() {
  local url=$1 what=$2 pid=$3 deadline=$((SECONDS + 60))
  until curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || die "$what exited before it was ready"
    ((SECONDS < deadline)) || die "$what not ready after 60 s"
    sleep 0.2
  done
}

# Resident memory, in MiB, of the given processes.
rss_mib() {
  ps -o rss= "$@" | awk '{ kib += $1 } END { printf "%.1f", kib / 1024 }'
}

# Their proportional set size, in MiB: a page shared by several of them (a
# binary's code: kvlab's five processes run one binary, etcd's three
# another) counts once in all, not once in each as in the summed RSS.
pss_mib() {
  local pid
  for pid in $(ps -o pid= "$@"); do
    awk '/^Pss:/ { print $2 }' "/proc/$pid/smaps_rollup" 2>/dev/null || true
  done | awk '{ kib += $1 } END { printf "%.1f", kib / 1024 }'
}

# ---------------------------------------------------------------------------
# etcd
# ---------------------------------------------------------------------------

etcd_client_port() { echo $((ETCD_PORT_BASE + 10 * $1 + 1)); }
etcd_peer_port() { echo $((ETCD_PORT_BASE + 10 * $1 + 2)); }

# The three members, in one session of their own, each in a fresh data
# directory (one per round).
start_etcd() {
  local cluster="" i
  for i in 1 2 3; do
    cluster+="${cluster:+,}e$i=http://127.0.0.1:$(etcd_peer_port "$i")"
  done
  mkdir -p "$WORK/etcd$SFX"
  # shellcheck disable=SC2016 # expanded by the inner shell
  setsid bash -c '
    work=$1 base=$2 cluster=$3
    for i in 1 2 3; do
      client=http://127.0.0.1:$((base + 10 * i + 1)) peer=http://127.0.0.1:$((base + 10 * i + 2))
      etcd --name "e$i" --data-dir "$work/data-e$i" \
        --listen-client-urls "$client" --advertise-client-urls "$client" \
        --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
        --initial-cluster "$cluster" --initial-cluster-state new \
        --initial-cluster-token kvlab-compare \
        >"$work/etcd-e$i.log" 2>&1 &
    done
    wait' _ "$WORK/etcd$SFX" "$ETCD_PORT_BASE" "$cluster" &
  ETCD_SID=$!
  for i in 1 2 3; do
    wait_for "http://127.0.0.1:$(etcd_client_port "$i")/health" "etcd member e$i" "$ETCD_SID"
  done
}

# The etcd processes, comma-separated (the session's shell left out).
etcd_pids() { pgrep -s "$ETCD_SID" -x etcd | paste -sd, -; }

# The leader's client URL: a put sent to a follower costs an extra hop to the
# leader, so etcd is measured at its best, talking to the leader directly.
etcd_leader_url() {
  local endpoints="" i
  for i in 1 2 3; do
    endpoints+="${endpoints:+,}http://127.0.0.1:$(etcd_client_port "$i")"
  done
  # Simple format: endpoint, id, version, db size, is leader, ...
  ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint status |
    awk -F', ' '$5 == "true" { print $1 }'
}

# ---------------------------------------------------------------------------
# kvlab
# ---------------------------------------------------------------------------

kvlab_has_up() { "$KVLAB" up --help >/dev/null 2>&1; }

start_kvlab() {
  local p=$KVLAB_PORT_BASE
  # In a session of its own (bench/lib/clusters.sh), so the cluster's
  # processes can all be stopped together.
  # shellcheck disable=SC2086 # KVLAB_UP_FLAGS is a list of flags
  start_kvlab_session "$KVLAB" "$p" "$WORK/kvlab" "$WORK/kvlab.log" $KVLAB_UP_FLAGS
  KVLAB_SID=$CLUSTER
  wait_for "http://127.0.0.1:$p/health" "kvlab up" "$KVLAB_SID"
  # /health on the gateway says the gateway is up; writes need the quorum too.
  local deadline=$((SECONDS + 60))
  until curl -fsS --max-time 1 "http://127.0.0.1:$p/cluster-status" 2>/dev/null |
    jq -e '.quorum.can_write and .quorum.can_read' >/dev/null; do
    ((SECONDS < deadline)) || die "kvlab cluster has no quorum after 60 s"
    sleep 0.2
  done
}

kvlab_url() { echo "http://127.0.0.1:$KVLAB_PORT_BASE"; }

# ---------------------------------------------------------------------------
# The ceiling: a bare HTTP server
# ---------------------------------------------------------------------------

kvlab_has_bare() { "$KVLAB" bench-server --help >/dev/null 2>&1; }

# Starts the bare server, measures it once, stops it: results/bare.json
# (bare.r2.json in round 2, ...), and the same for bare-1 and disk.
measure_bare() {
  setsid "$KVLAB" bench-server --port "$BARE_PORT" >"$WORK/bare.log" 2>&1 &
  BARE_SID=$!
  wait_for "http://127.0.0.1:$BARE_PORT/health" "the bare server" "$BARE_SID"
  log "bare HTTP server: 64 clients, half reads"
  # shellcheck disable=SC2086 # a list of flags
  "$KVLAB" bench --url "http://127.0.0.1:$BARE_PORT" --target bare --duration "$DURATION" \
    --warmup "$WARMUP" --keys "$KEYS" --value-size "$VALUE_SIZE" $BARE_WORKLOAD --json \
    >"$RESULTS/bare$SFX.json"
  # One client: the round trip of one request through the HTTP stack with
  # no work behind it. A lone kvlab write makes three of them in a row
  # (client -> gateway, coordinator -> leader, leader -> follower).
  log "bare HTTP server: 1 client, writes"
  "$KVLAB" bench --url "http://127.0.0.1:$BARE_PORT" --target bare --duration "$DURATION" \
    --warmup "$WARMUP" --keys "$KEYS" --value-size "$VALUE_SIZE" -c 1 --reads 0 --json \
    >"$RESULTS/bare-1$SFX.json"
  stop_bare
  # The disk's share: four fsyncs at once (the leader and 3 followers), in
  # the directory the cluster wrote to; a write waits for the leader's and
  # the 2 sync followers', the 3rd to finish.
  if "$KVLAB" bench-disk --help >/dev/null 2>&1; then
    log "the disk: 4 concurrent fsyncs"
    "$KVLAB" bench-disk --dir "$WORK" --files 4 --rounds 1000 --json >"$RESULTS/disk$SFX.json"
  fi
}

# ---------------------------------------------------------------------------
# The ceiling of the lab's shape: the skeleton
# ---------------------------------------------------------------------------

kvlab_has_skeleton() { "$KVLAB" bench-skeleton --help >/dev/null 2>&1; }

# Starts the skeleton in kvlab's shape (a leader, 3 followers, W=2, the read
# set the 2 followers with the highest ports; see bench/lib/clusters.sh) in
# a session of its own, measures kvlab's workloads on it
# (results/skeleton-N.json), stops it.
measure_skeleton() {
  start_skeleton_session "$KVLAB" "$SKELETON_PORT" "$WORK/skeleton$SFX" "$WORK/skeleton.log"
  SKELETON_SID=$CLUSTER
  wait_for "http://127.0.0.1:$SKELETON_PORT/health" "the skeleton's gateway" "$SKELETON_SID"
  measure skeleton bare "http://127.0.0.1:$SKELETON_PORT"
  stop_skeleton
}

# The skeleton's rates and the lone write's p50, against etcd's.
print_skeleton() {
  [[ -s $RESULTS/skeleton-0.json ]] || return 0
  awk -v sw="$(field skeleton 0 '.all.ops_per_sec')" -v ew="$(field etcd 0 '.all.ops_per_sec')" \
    -v sr="$(field skeleton 1 '.all.ops_per_sec')" -v er="$(field etcd 1 '.all.ops_per_sec')" \
    -v sp="$(field skeleton 2 '.all.latency_us.p50 / 1000')" -v ep="$(field etcd 2 '.all.latency_us.p50 / 1000')" '
    function times(a, b) { return (a == "-" || b == "-" || b == 0) ? "" : sprintf(" (%.2fx etcd)", a / b) }
    BEGIN {
      printf "skeleton (the lab'"'"'s shape, no logic, binary internal wire): writes %d/s%s, reads %d/s%s, lone write p50 %.3f ms%s\n",
        sw, times(sw, ew), sr, times(sr, er), sp, times(sp, ep)
    }'
}

# kvlab's 64-client reads and writes as a share of the bare server's rate.
print_ceiling() {
  local bare
  bare=$(median bare '.all.ops_per_sec | floor')
  [[ $bare != - ]] || return 0
  awk -v n="$bare" -v r="$(field kvlab 1 '.all.ops_per_sec')" -v w="$(field kvlab 0 '.all.ops_per_sec')" '
    function pct(x) { return (x == "-" || n == 0) ? "-" : sprintf("%.0f", 100 * x / n) }
    BEGIN { printf "bare HTTP server: %d req/s; kvlab reads %s%% and writes %s%% of it\n", n, pct(r), pct(w) }'
  print_floor
}

# The floor of a lone write on this machine: three bare round trips in a
# row plus the 3rd of 4 concurrent fsyncs (the leader's and the sync
# followers' overlap, so only the slowest of them counts), against kvlab's
# and 0.6 times etcd's 1-client p50 (the issue's goal).
# floor_parts prints its two parts in ms, "ROUND_TRIP FSYNC", or nothing if
# either was not measured; floor_ms the floor itself, or "-".
floor_parts() {
  local hop disk
  hop=$(median bare-1 '.all.latency_us.p50 / 1000')
  disk=$(median disk '.[2].p50_ms')
  [[ $hop != - && $disk != - ]] || return 0
  echo "$hop $disk"
}

floor_ms() {
  local rtt fs
  read -r rtt fs <<<"$(floor_parts)"
  [[ -n $fs ]] || { echo "-"; return; }
  awk -v rtt="$rtt" -v fs="$fs" 'BEGIN { print 3 * rtt + fs }'
}

print_floor() {
  local rtt fs
  read -r rtt fs <<<"$(floor_parts)"
  [[ -n $fs ]] || return 0
  awk -v rtt="$rtt" -v fs="$fs" \
    -v k="$(field kvlab 2 '.all.latency_us.p50 / 1000')" \
    -v e="$(field etcd 2 '.all.latency_us.p50 / 1000')" '
    BEGIN {
      floor = 3 * rtt + fs
      printf "lone write floor: 3 bare round trips (3 x %.3f ms) + 3rd of 4 concurrent fsyncs (%.3f ms) = %.3f ms; ", rtt, fs, floor
      printf "kvlab p50 %s ms", (k == "-" ? "-" : sprintf("%.3f", k))
      if (e != "-") printf ", 0.6 x etcd = %.3f ms", 0.6 * e
      printf "\n"
    }'
}

# Issue 26's four goals, each met or missed in this run (on the medians,
# with REPEATS > 1). Where the machine
# bounds a goal, the line says how. The skeleton does no more than any
# implementation of the lab must, so a goal the skeleton misses too is out
# of this machine's reach: "the machine gives no more". A kvlab read is at
# least one bare request (the gateway's) plus its share of the R followers'
# answers, so 8x etcd's reads above the bare server's rate cannot be
# reached either; a lone write cannot beat its floor.
print_goals() {
  [[ $ONLY == both ]] || return 0
  local bare="-" floor
  bare=$(median bare '.all.ops_per_sec')
  floor=$(floor_ms)
  awk -v kw="$(field kvlab 0 '.all.ops_per_sec')" -v ew="$(field etcd 0 '.all.ops_per_sec')" \
    -v kr="$(field kvlab 1 '.all.ops_per_sec')" -v er="$(field etcd 1 '.all.ops_per_sec')" \
    -v kp="$(field kvlab 2 '.all.latency_us.p50')" -v ep="$(field etcd 2 '.all.latency_us.p50')" \
    -v sw="$(field skeleton 0 '.all.ops_per_sec')" -v sr="$(field skeleton 1 '.all.ops_per_sec')" \
    -v sp="$(field skeleton 2 '.all.latency_us.p50')" \
    -v rss="${KVLAB_RSS:--}" -v bare="$bare" -v floor="$floor" -v reps="$REPEATS" '
    function known(x) { return x != "-" && x != "" }
    function verdict(ok) { return ok ? "met" : "missed" }
    # What the skeleton says about a missed goal: its own ratio to the etcd
    # figure e, and whether it misses the goal (want, x etcd) as well.
    function skeleton(x, e, want, higher) {
      if (!known(x)) return ""
      if (higher ? x >= want * e : x <= want * e)
        return sprintf("; the skeleton reaches %.2fx", x / e)
      return sprintf("; the skeleton too, at %.2fx: the machine gives no more", x / e)
    }
    BEGIN {
      print (reps > 1 ? "goals (issue 26), the medians of " reps " rounds:" : "goals (issue 26), this run:")
      if (known(kw) && known(ew) && ew > 0) {
        printf "  writes, 64 clients: %.2fx etcd (goal >= 5x): %s", kw / ew, verdict(kw >= 5 * ew)
        if (kw < 5 * ew) printf "%s", skeleton(sw, ew, 5, 1)
        printf "\n"
      }
      if (known(kr) && known(er) && er > 0) {
        printf "  reads, 64 clients:  %.2fx etcd (goal >= 8x): %s", kr / er, verdict(kr >= 8 * er)
        if (kr < 8 * er) printf "%s", skeleton(sr, er, 8, 1)
        if (known(bare) && bare > 0)
          printf "; 8x etcd is %d req/s, %.0f%% of the bare server (a read: one bare request plus R followers)", 8 * er, 800 * er / bare
        printf "\n"
      }
      if (known(kp) && known(ep) && ep > 0) {
        printf "  lone write p50:     %.2fx etcd (goal <= 0.6x): %s", kp / ep, verdict(kp <= 0.6 * ep)
        if (kp > 0.6 * ep) printf "%s", skeleton(sp, ep, 0.6, 0)
        if (known(floor)) printf "; the floor alone is %.2fx", 1000 * floor / ep
        printf "\n"
      }
      if (known(rss))
        printf "  idle RSS:           %.1f MiB (goal < 30 MiB): %s\n", rss, verdict(rss < 30)
    }'
}

# ---------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------

# measure SYSTEM TARGET URL: every workload, one JSON report each.
measure() {
  local system=$1 target=$2 url=$3 i label flags
  for i in "${!WORKLOADS[@]}"; do
    label=${WORKLOADS[i]%%|*}
    flags=${WORKLOADS[i]#*|}
    log "$system: $label"
    # shellcheck disable=SC2086 # flags is a list of flags
    "$KVLAB" bench --url "$url" --target "$target" --duration "$DURATION" \
      --warmup "$WARMUP" --keys "$KEYS" --value-size "$VALUE_SIZE" $flags --json \
      >"$RESULTS/$system-$i$SFX.json"
    jq -r '"   \(.all.ops_per_sec | floor) ops/s, p50 \(.all.latency_us.p50 // 0) µs, \(.all.errors) errors, generator \(.generator_cpu.cores * 100 | floor)% of a core"' \
      "$RESULTS/$system-$i$SFX.json" >&2
  done
}

# median NAME JQ-PATH: the median over the rounds of one figure of the
# reports NAME.json, NAME.r2.json, ..., or "-" if none holds it.
median() {
  local f
  for f in "$RESULTS/$1.json" "$RESULTS/$1".r*.json; do
    [[ -s $f ]] || continue # also the unmatched pattern of a single round
    jq -r "$2 // empty" "$f"
  done | sort -g | awk '{ v[NR] = $1 }
    END {
      if (NR == 0) print "-"
      else if (NR % 2) print v[(NR + 1) / 2]
      else print (v[NR / 2] + v[NR / 2 + 1]) / 2
    }'
}

# field SYSTEM INDEX JQ-PATH: one figure of a workload's reports (its
# median over the rounds), or "-" if not measured.
field() { median "$1-$2" "$3"; }

ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }'
}

print_table() {
  printf '\n%-20s %11s %11s %7s   %10s %10s %7s   %9s %9s\n' \
    workload "kvlab op/s" "etcd op/s" ratio "kvlab p50" "etcd p50" ratio "kvlab p99" "etcd p99"
  local i label ko eo kp ep k99 e99
  for i in "${!WORKLOADS[@]}"; do
    label=${WORKLOADS[i]%%|*}
    ko=$(field kvlab "$i" '.all.ops_per_sec | floor')
    eo=$(field etcd "$i" '.all.ops_per_sec | floor')
    kp=$(field kvlab "$i" '.all.latency_us.p50 / 1000')
    ep=$(field etcd "$i" '.all.latency_us.p50 / 1000')
    k99=$(field kvlab "$i" '.all.latency_us.p99 / 1000')
    e99=$(field etcd "$i" '.all.latency_us.p99 / 1000')
    printf '%-20s %11s %11s %7s   %10s %10s %7s   %9s %9s\n' \
      "$label" "$ko" "$eo" "$(ratio "$ko" "$eo")" "$kp" "$ep" "$(ratio "$kp" "$ep")" "$k99" "$e99"
  done
  printf '(latencies in ms; ratio = kvlab / etcd: above 1 is better for op/s, below 1 for p50)\n'
  printf 'errors (kvlab, etcd) per workload:'
  for i in "${!WORKLOADS[@]}"; do
    printf ' %s/%s' "$(field kvlab "$i" .all.errors)" "$(field etcd "$i" .all.errors)"
  done
  ((REPEATS == 1)) || printf '\n(every figure is the median of %s rounds)' "$REPEATS"
  printf '\nidle RSS: kvlab cluster %s MiB, etcd cluster %s MiB\n' "${KVLAB_RSS:--}" "${ETCD_RSS:--}"
  printf 'idle PSS: kvlab cluster %s MiB, etcd cluster %s MiB\n' "${KVLAB_PSS:--}" "${ETCD_PSS:--}"
}

# ---------------------------------------------------------------------------

# memory SYSTEM SID [PIDS]: the idle cluster's summed RSS and PSS, as a
# report of this round (SYSTEM-memory.json), so that they get medians too.
memory() {
  local which=(--sid "$2")
  [[ -z ${3:-} ]] || which=(-p "$3")
  printf '{"rss": %s, "pss": %s}\n' "$(rss_mib "${which[@]}")" "$(pss_mib "${which[@]}")" \
    >"$RESULTS/$1-memory$SFX.json"
}

# One round: every system measured once, one after the other.
round() {
  if [[ $ONLY != kvlab ]]; then
    log "starting a 3-member etcd"
    start_etcd
    memory etcd "$ETCD_SID" "$(etcd_pids)"
    local leader
    leader=$(etcd_leader_url)
    [[ -n $leader ]] || die "no etcd leader found"
    log "etcd leader at $leader"
    measure etcd etcd "$leader"
    stop_etcd
  fi

  if [[ $ONLY != etcd ]]; then
    if kvlab_has_up; then
      log "starting a kvlab cluster"
      start_kvlab
      memory kvlab "$KVLAB_SID"
      measure kvlab kvlab "$(kvlab_url)"
      stop_kvlab
      if [[ $CEILING == 0 ]]; then
        log "CEILING=0: no bare server, no ceiling line"
      elif kvlab_has_bare; then
        measure_bare
      else
        log "this kvlab has no 'bench-server' subcommand: no ceiling line"
      fi
      if [[ $CEILING == 0 || $SKELETON == 0 ]]; then
        log "no skeleton (CEILING=0 or SKELETON=0)"
      elif kvlab_has_skeleton; then
        log "starting the skeleton (the lab's shape, no logic)"
        measure_skeleton
      else
        log "this kvlab has no 'bench-skeleton' subcommand: no skeleton line"
      fi
    else
      log "this kvlab has no 'up' subcommand yet: skipping the kvlab half"
    fi
  fi
}

# With REPEATS > 1: each round's ratios to etcd, to show the spread that
# the medians smooth.
print_rounds() {
  ((REPEATS > 1)) || return 0
  local n sfx
  printf '\nrounds (each against the etcd of the same round):\n'
  for n in $(seq "$REPEATS"); do
    sfx=$([[ $n == 1 ]] || echo ".r$n")
    awk -v n="$n" \
      -v kw="$(one "kvlab-0$sfx" '.all.ops_per_sec')" -v ew="$(one "etcd-0$sfx" '.all.ops_per_sec')" \
      -v kr="$(one "kvlab-1$sfx" '.all.ops_per_sec')" -v er="$(one "etcd-1$sfx" '.all.ops_per_sec')" \
      -v kp="$(one "kvlab-2$sfx" '.all.latency_us.p50')" -v ep="$(one "etcd-2$sfx" '.all.latency_us.p50')" \
      -v sw="$(one "skeleton-0$sfx" '.all.ops_per_sec')" -v sr="$(one "skeleton-1$sfx" '.all.ops_per_sec')" \
      -v sp="$(one "skeleton-2$sfx" '.all.latency_us.p50')" '
      function r(a, b) { return (a == "-" || b == "-" || b == 0) ? "-" : sprintf("%.2fx", a / b) }
      BEGIN {
        printf "  round %d: kvlab writes %s, reads %s, lone write %s; skeleton writes %s, reads %s, lone write %s\n",
          n, r(kw, ew), r(kr, er), r(kp, ep), r(sw, ew), r(sr, er), r(sp, ep)
      }'
  done
}

# one NAME JQ-PATH: one figure of one report, or "-".
one() {
  local f=$RESULTS/$1.json
  [[ -s $f ]] && jq -r "$2 // \"-\"" "$f" || echo "-"
}

main() {
  install_tools
  build_kvlab
  log "scratch dir $WORK, reports in $RESULTS; kvlab is $KVLAB"
  # An OUT_DIR's reports of an earlier run must not speak for this one.
  rm -f "$RESULTS"/*.json

  local n
  for n in $(seq "$REPEATS"); do
    SFX=$([[ $n == 1 ]] || echo ".r$n")
    ((REPEATS == 1)) || log "round $n of $REPEATS"
    round
  done
  KVLAB_RSS=$(median kvlab-memory .rss)
  KVLAB_PSS=$(median kvlab-memory .pss)
  ETCD_RSS=$(median etcd-memory .rss)
  ETCD_PSS=$(median etcd-memory .pss)

  print_table
  print_skeleton
  print_ceiling
  print_goals
  print_rounds
}

main "$@"

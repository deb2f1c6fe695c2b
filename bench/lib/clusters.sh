# bench/lib/clusters.sh: starts the two clusters the bench scripts measure,
# each in a session of its own so that one `kill -- -$CLUSTER` stops every
# process of it. Sourced, not run: compare.sh, cpu-per-op.sh, per-op.sh,
# idle-rss.sh and timeline.sh use it.
#
# Both take BIN PORT DIR LOG, set CLUSTER to the session's pid and return
# at once; the caller waits for readiness (kvlab: /cluster-status says it
# can write and read; the skeleton: /health answers).

# compare.sh's kvlab cluster: 1 leader + 3 followers, W=2, R=2, no teaching
# delays, durable as etcd is (--fsync always: every node fsyncs its log
# before a write is acknowledged), in a fresh data directory; the gateway
# on PORT, the nodes from PORT + 101. The node logs go to DIR/logs, not to
# `up`'s default /tmp/kvlab-PORT, so that removing DIR leaves nothing
# behind. Flags after LOG go to `kvlab up` too.
start_kvlab_session() {
  local bin=$1 p=$2 dir=$3 log=$4
  shift 4
  setsid "$bin" up --no-delay --followers 3 -W 2 -R 2 --fsync always \
    --data-dir "$dir/data" --log-dir "$dir/logs" --fresh --gateway-port "$p" --coordinator-port $((p + 100)) \
    --registry-port $((p + 200)) --node-base-port $((p + 101)) "$@" >"$log" 2>&1 &
  CLUSTER=$!
}

# compare.sh's skeleton (src/bench/skeleton.rs): follower replicas on
# PORT + 2..4 (the first two its sync set), the leader on PORT + 1 (W=2),
# and the gateway on PORT, reading from the two highest ports. The gateway
# replaces the session's shell and so becomes the replicas' parent, as
# `up` is the nodes'.
start_skeleton_session() {
  local bin=$1 p=$2 dir=$3 log=$4
  # shellcheck disable=SC2016 # expanded by the inner shell
  setsid bash -c '
    b=$1 p=$2 w=$3
    for f in $((p + 2)) $((p + 3)) $((p + 4)); do
      "$b" bench-skeleton --role replica --port "$f" --dir "$w/$f" &
    done
    "$b" bench-skeleton --role replica --port $((p + 1)) --dir "$w/leader" \
      --replicate-to $((p + 2)),$((p + 3)),$((p + 4)) --quorum 2 &
    exec "$b" bench-skeleton --role gateway --port "$p" --write-to $((p + 1)) \
      --read-from $((p + 3)),$((p + 4))' _ "$bin" "$p" "$dir" >"$log" 2>&1 &
  CLUSTER=$!
}

//! Fault hooks for `kvlab check`'s nemesis: network partitions and a slow disk.
//!
//! - `POST /admin/partition {"peers": [...], "seconds": S}`: for S seconds
//!   this node drops all traffic to and from the named peers (`coordinator`,
//!   `leader`, `registry`, `follower-<n>`). Dropped traffic *hangs*, as
//!   lost packets do: an incoming request from a cut-off peer is held
//!   until the partition ends (its sender times out first, as a rule) and
//!   is then refused unprocessed; an outgoing request to one is held, then
//!   fails. Cutting the registry off stops heartbeats (the node's only
//!   traffic to it). `seconds: 0` (or an empty list) heals at once.
//! - `POST /admin/slow-disk {"ms": D, "seconds": S}`: every fsync of the
//!   node's log takes D ms longer for S seconds (see
//!   [`crate::storage::wal::slow_down_fsyncs`]).
//!
//! - `POST /admin/power-cut {"tear": bool}` (only on a node started with the
//!   hidden `--simulate-power-loss`): a simulated power cut (see
//!   [`crate::storage::power`]). The node dies losing every log write no
//!   fsync covered; with `tear`, at its next group write, which is torn (a
//!   hole, then the rest), or after 1 s without a tear if nothing is written.
//!
//! - `--test-break` (hidden, tests only): a node broken on purpose, see
//!   [`Broken`].
//!
//! Partitions and slow disks expire on their own, so a checker that dies
//! cannot leave a node broken. The state is process-wide: one node process is one node, one
//! network interface, one disk.
//!
//! Who sent an incoming request? Nodes say so in `X-Kvlab-From` (their
//! node id), and the path tells the role: only the leader replicates
//! (`/replicate...`), and everything else a node serves without the header
//! comes from the coordinator. A partition from `leader` therefore means
//! "from whoever leads now", and from `follower-2` means from that node,
//! whatever its role after a failover. `/admin/`
//! routes are the nemesis's own control channel and are never dropped
//! (otherwise a partition could not be healed early).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::NodeState;
use crate::api::{PartitionRequest, SlowDiskRequest, HEADER_FROM};
use crate::http::{ApiError, ApiJson};

/// How often a held request looks whether the partition has healed.
const POLL: Duration = Duration::from_millis(20);

struct Partition {
    peers: BTreeSet<String>,
    until: Instant,
}

static PARTITION: Mutex<Option<Partition>> = Mutex::new(None);

/// Is traffic with `peer` being dropped right now?
pub fn cut_off(peer: &str) -> bool {
    match &*PARTITION.lock().unwrap() {
        Some(p) => Instant::now() < p.until && p.peers.contains(peer),
        None => false,
    }
}

/// Holds the caller while traffic with `peer` is dropped, then says whether
/// the traffic was dropped (the request must then fail, unprocessed).
async fn hold_while_cut_off(peer: &str) -> bool {
    let mut held = false;
    while cut_off(peer) {
        held = true;
        tokio::time::sleep(POLL).await;
    }
    held
}

/// For outgoing requests: call before sending to `peer`.
pub async fn outbound(peer: &str) -> Result<(), String> {
    if hold_while_cut_off(peer).await {
        return Err(format!("dropped: this node was partitioned from {peer}"));
    }
    Ok(())
}

/// The names a request's sender goes by (see the module's notes): the node
/// id it gives in `X-Kvlab-From`, and its role, told by the path. A
/// replication request comes from whoever leads now, so a partition from
/// `leader` cuts this node off from the current leader even after a
/// failover has made a former follower lead.
fn sender(req: &Request) -> Vec<String> {
    let named = req
        .headers()
        .get(HEADER_FROM)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let role = if req.uri().path().starts_with("/replicate") {
        Some("leader")
    } else if named.is_none() {
        Some("coordinator")
    } else {
        None
    };
    named.into_iter().chain(role.map(str::to_string)).collect()
}

/// Middleware: holds, then drops, requests from cut-off peers.
pub async fn drop_partitioned(req: Request, next: Next) -> Response {
    if req.uri().path().starts_with("/admin/") {
        return next.run(req).await;
    }
    for from in sender(&req) {
        if hold_while_cut_off(&from).await {
            return ApiError::unavailable(format!(
                "dropped: this node was partitioned from {from}"
            ))
            .into_response();
        }
    }
    next.run(req).await
}

/// `POST /admin/partition`.
pub async fn partition(
    State(node): State<Arc<NodeState>>,
    ApiJson(req): ApiJson<PartitionRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let length = req.validate().map_err(ApiError::bad_request)?;
    req.check_both_ways().map_err(ApiError::bad_request)?;
    let until = Instant::now() + length;
    let peers: BTreeSet<String> = req.peers.iter().cloned().collect();
    if peers.contains("registry") && !length.is_zero() {
        // Heartbeats are the node's traffic to the registry.
        let mut paused = node.heartbeats_paused_until.lock().unwrap();
        *paused = Some(paused.map_or(until, |p| p.max(until)));
    }
    if length.is_zero() || peers.is_empty() {
        *PARTITION.lock().unwrap() = None;
        tracing::warn!("partition healed (fault injection)");
        return Ok(Json(json!({"status": "healed"})));
    }
    tracing::warn!(
        ?peers,
        seconds = req.seconds,
        "partitioned (fault injection)"
    );
    *PARTITION.lock().unwrap() = Some(Partition { peers, until });
    Ok(Json(
        json!({"status": "partitioned", "peers": req.peers, "seconds": req.seconds}),
    ))
}

/// `POST /admin/power-cut` (see the module doc).
pub async fn power_cut(
    State(node): State<Arc<NodeState>>,
    ApiJson(req): ApiJson<crate::api::PowerCutRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(d) = node.durability.as_ref() else {
        return Err(ApiError::conflict(json!({
            "error": "this node keeps no log on disk (in memory): a power cut is a crash"})));
    };
    if !crate::storage::power::simulating() {
        return Err(ApiError::conflict(json!({
            "error": "this node does not simulate power loss",
            "hint": "start the cluster with the hidden test flag --simulate-power-loss"})));
    }
    tracing::warn!(tear = req.tear, "power cut (fault injection)");
    d.wal.power_cut(req.tear);
    if req.tear {
        // Nothing written within a second: the cut happens anyway.
        let node = node.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Some(d) = &node.durability {
                d.wal.power_cut(false);
            }
        });
    }
    Ok(Json(json!({"status": "power cut", "tear": req.tear})))
}

/// `POST /admin/slow-disk`.
pub async fn slow_disk(
    ApiJson(req): ApiJson<SlowDiskRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let length = req.validate().map_err(ApiError::bad_request)?;
    crate::storage::wal::slow_down_fsyncs(Duration::from_millis(req.ms), length);
    tracing::warn!(
        ms = req.ms,
        seconds = req.seconds,
        "slow disk (fault injection)"
    );
    Ok(Json(
        json!({"status": "slow", "ms": req.ms, "seconds": req.seconds}),
    ))
}

// ---------------------------------------------------------------------------
// A node broken on purpose (tests only)
// ---------------------------------------------------------------------------

/// Bugs a node can be given on purpose with the hidden `--test-break`
/// (or `$KVLAB_TEST_BREAK`), so that the tests of `kvlab check` have a
/// cluster that really loses acknowledged writes. Never used otherwise: a
/// node without the flag takes none of these paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// `forget-on-restart`: a node restarted on its data directory comes
    /// back empty (it ignores its disk) and acknowledges the leader's
    /// catch-up without storing it: it is never caught up, though it says
    /// it is, and stores only what is written afterwards. The catch-up is
    /// the batches up to the first that is not full (the leader sends a
    /// backlog in full batches, then the rest).
    ForgetOnRestart,
    /// `drop-appends`: acknowledges every replicated entry, but silently
    /// stores only those at odd seqs.
    DropAppends,
}

/// The broken behaviour in force (and whether the node was restarted),
/// and whether a `ForgetOnRestart` node has forgotten its catch-up.
static BROKEN: OnceLock<(Broken, bool)> = OnceLock::new();
static FORGOT_CATCH_UP: AtomicBool = AtomicBool::new(false);

/// Reads `KIND[@NODE-ID]`; a spec for another node id leaves this one
/// intact (every node of a cluster inherits the variable).
pub fn break_on_purpose(spec: &str, args: &super::Args) -> anyhow::Result<()> {
    let (kind, only) = match spec.split_once('@') {
        Some((kind, node)) => (kind, Some(node)),
        None => (spec, None),
    };
    let broken = match kind.trim() {
        "forget-on-restart" => Broken::ForgetOnRestart,
        "drop-appends" => Broken::DropAppends,
        other => anyhow::bail!(
            "--test-break: unknown kind `{other}` (forget-on-restart or drop-appends)"
        ),
    };
    if only.is_some_and(|node| node.trim() != args.id) {
        return Ok(());
    }
    // Restarted: its data directory already holds something.
    let restarted = args
        .data_dir
        .as_ref()
        .and_then(|d| std::fs::read_dir(d).ok())
        .is_some_and(|mut entries| entries.next().is_some());
    tracing::warn!(
        ?broken,
        restarted,
        "this node is broken on purpose (--test-break)"
    );
    let _ = BROKEN.set((broken, restarted));
    Ok(())
}

/// Does this node ignore its disk (a `forget-on-restart` node restarted)?
pub fn forgets_its_disk() -> bool {
    matches!(BROKEN.get(), Some((Broken::ForgetOnRestart, true)))
}

/// Is this append batch part of the catch-up a `forget-on-restart` node
/// forgets? The batches up to the first that is not `full` (see
/// [`Broken::ForgetOnRestart`]).
pub fn forgets_this_batch(full: bool) -> bool {
    if !forgets_its_disk() || FORGOT_CATCH_UP.load(Ordering::Acquire) {
        return false;
    }
    if !full {
        FORGOT_CATCH_UP.store(true, Ordering::Release);
    }
    true
}

/// Does a `drop-appends` node drop the entry at `seq`?
pub fn drops_entry(seq: u64) -> bool {
    matches!(BROKEN.get(), Some((Broken::DropAppends, _))) && seq.is_multiple_of(2)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[test]
    fn a_test_break_is_refused_unless_known_and_meant_for_this_node() {
        let args = super::super::Args::parse_from(["node", "--id", "follower-1", "--port", "1"]);
        let e = super::break_on_purpose("explode", &args).unwrap_err();
        assert!(e.to_string().contains("unknown kind `explode`"), "{e}");
        // Meant for another node: this one stays intact.
        super::break_on_purpose("drop-appends@follower-9", &args).unwrap();
        assert!(!super::drops_entry(2));
        assert!(!super::forgets_its_disk());
    }
}

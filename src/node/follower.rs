//! The follower's side of replication: the handshake (`GET /replicate`),
//! appending entries (`POST /replicate`), installing a snapshot
//! (`POST /replicate/snapshot`) and cutting a diverged log
//! (`POST /replicate/truncate`).
//!
//! Invariants:
//! - a follower applies and persists one replication request at a time
//!   (`replicate_lock`), so the seq it reports is on its disk;
//! - it applies only the entry that continues its log, and refuses (409
//!   `diverged at seq S`) an entry at a seq it holds with another term: the
//!   leader then asks where the logs part and cuts the follower there;
//! - it keeps the replication log and the term history as a leader does, so
//!   that it can be promoted and stream from them at once;
//! - only a request from the incarnation-addressed process counts (fencing),
//!   and only from a leader whose term is not older than ours
//!   ([`super::leadership`]), checked again once the request holds the lock:
//!   after a newer term was seen, no older append is applied;
//! - once a request of the leader of term T has succeeded (an append, even
//!   an empty one, a truncation or a snapshot), our log is a prefix of that
//!   leader's: it handshook first and cut what we held beyond what it
//!   shares. We record T as our *reconciled term*, and reads carry it, so
//!   that the coordinator never counts entries a new leader is about to cut;
//! - the work of a request runs in its own task: a leader that crashes
//!   mid-request drops its connection, and that must not cancel an append
//!   between applying it and publishing the seq it reached;
//! - a snapshot arrives in chunks, in order (chunk 0 starts one, each next
//!   one continues it); it is installed only once its last chunk is in, so
//!   a leader that stops half-way leaves the state untouched. The chunks
//!   received so far live under `replicate_lock`, and any other replication
//!   request drops them: at most one snapshot is ever pending.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::Json;
use serde_json::json;

use super::log::ReplicationLog;
use super::store::{self, Store};
use super::term::TermHistory;
use super::{durable, leadership, uncancellable, NodeState, Shared};
use crate::api::*;
use crate::http::{ApiError, ApiJson};
use crate::storage::{AppendTicket, Snapshot, MAX_SEQ};

fn check_addressed_to_me(node: &NodeState, to_incarnation: u64) -> Result<(), ApiError> {
    if to_incarnation != node.incarnation {
        return Err(ApiError::conflict(format!(
            "fenced: this is incarnation {} of {}, the leader addressed incarnation {}",
            node.incarnation, node.id, to_incarnation
        )));
    }
    Ok(())
}

/// A leader of the same term never takes entries: there is one per term.
fn check_not_leader(node: &NodeState) -> Result<(), ApiError> {
    if node.is_leader() {
        return Err(ApiError::conflict(json!({
            "error": "not a follower",
            "detail": format!("{} is the leader of term {}", node.id, node.term()),
            "term": node.term(),
        })));
    }
    Ok(())
}

/// What a follower tells the leader it holds: only what its log has
/// completed, since the leader counts this as the follower's ack; with its
/// terms, so the leader can tell whether the logs part.
fn append_answer(node: &NodeState) -> AppendResponse {
    let acked_seq = node.persisted_seq();
    let core = node.core.lock().unwrap();
    AppendResponse {
        node_id: node.id.clone(),
        incarnation: node.incarnation,
        acked_seq,
        term: core.terms.term,
        last_term: core.terms.history.term_at(acked_seq).unwrap_or(0),
        history: core.terms.history.0.clone(),
        role: core.terms.role,
    }
}

/// `GET /replicate`: where our log stands, once no replication request is
/// half done.
pub async fn replicate_state(State(node): Shared) -> Json<AppendResponse> {
    let _settled = node.replicate_lock.lock().await;
    Json(append_answer(&node))
}

/// The checks every replication request passes, before and again after it
/// takes the lock.
fn check_request(node: &NodeState, to_incarnation: u64, term: u64) -> Result<(), ApiError> {
    check_addressed_to_me(node, to_incarnation)?;
    leadership::check_term(node, term)?;
    check_not_leader(node)
}

/// Refuses a seq no log can hold (see [`MAX_SEQ`]). Applied in memory it
/// would overflow the log's next position; on disk the append would fail
/// and stop the node. Found by fuzzing the replication endpoints.
fn check_seq(seq: u64) -> Result<(), ApiError> {
    if seq > MAX_SEQ {
        return Err(ApiError::bad_request(json!({
            "error": "seq out of range", "seq": seq, "max_seq": MAX_SEQ,
        })));
    }
    Ok(())
}

pub async fn replicate_append(
    State(node): Shared,
    ApiJson(req): ApiJson<AppendRequest>,
) -> Result<Json<AppendResponse>, ApiError> {
    check_request(&node, req.to_incarnation, req.term)?;
    req.entries.iter().try_for_each(|e| check_seq(e.seq))?;
    uncancellable(append(node, req)).await
}

async fn append(
    node: Arc<NodeState>,
    req: AppendRequest,
) -> Result<Json<AppendResponse>, ApiError> {
    let mut receiving = node.replicate_lock.lock().await;
    check_request(&node, req.to_incarnation, req.term)?;
    // A snapshot half received was abandoned: the leader streams entries.
    *receiving = None;
    let empty = req.entries.is_empty();
    let (applied_seq, fresh) = apply_batch(&node, req.entries)?;
    node.stats
        .replications_received
        .fetch_add(fresh.count, Ordering::Relaxed);
    if let Some(ticket) = fresh.ticket {
        durable::wait_persisted(&node, ticket).await?;
    }
    if fresh.new_term {
        leadership::persist(&node).await;
    }
    // An empty append (the leader's reconciliation after a handshake)
    // persisted nothing: publishing the applied seq would vouch for entries
    // this request never saw, such as a deposed leader's own last write
    // still on its way to disk.
    if !empty {
        node.publish_persisted(applied_seq);
        durable::snapshot_if_due(&node, applied_seq);
    }
    node.mark_reconciled(req.term);
    Ok(Json(append_answer(&node)))
}

/// The entries of a batch that were new to this follower.
struct Fresh {
    count: u64,
    /// Their append to the durable log, if the node has one.
    ticket: Option<AppendTicket>,
    /// Whether they started a term the history did not have.
    new_term: bool,
}

/// Entries a follower keeps in its log count as appended long ago: if it is
/// promoted, the lab's delays must not hold them back a second time.
fn long_ago() -> Instant {
    let now = Instant::now();
    now.checked_sub(Duration::from_secs(3600)).unwrap_or(now)
}

/// Applies the entries that continue our state, in order, and submits them
/// to the durable log under the same lock. Returns the applied seq.
fn apply_batch(node: &NodeState, entries: Vec<Entry>) -> Result<(u64, Fresh), ApiError> {
    let mut core = node.core.lock().unwrap();
    let mut new = Vec::new();
    let last_term = core.terms.history.last_term();
    let appended_at = long_ago();
    // The test hook `--test-break` (a deliberately broken node) may ack
    // entries it does not store; never set outside tests.
    let full = entries.len() >= super::replication::MAX_BATCH;
    let forget_batch = !entries.is_empty() && super::faults::forgets_this_batch(full);
    for entry in entries {
        // One allocation shared by the log, the disk writer and the store's
        // check: the value is not copied again.
        let entry = Arc::new(entry);
        let applied = if forget_batch || super::faults::drops_entry(entry.seq) {
            core.store.skip(&entry)
        } else {
            core.store.apply(&entry)
        };
        match applied {
            store::Applied::Applied => {
                core.terms.history.record(entry.seq, entry.term);
                core.log.push(entry.clone(), appended_at);
                new.push(entry);
            }
            store::Applied::Duplicate => {
                let ours = core.terms.history.term_at(entry.seq);
                if ours.is_some_and(|t| t != entry.term) {
                    // Nothing of this batch was applied before the
                    // divergence point that is not ours already.
                    drop(core);
                    return Err(diverged(node, &entry, ours));
                }
            }
            // The leader will resend from our acked seq.
            store::Applied::Gap => break,
        }
    }
    let count = new.len() as u64;
    let ticket = match &node.durability {
        Some(d) if !new.is_empty() => Some(d.wal.submit(new)),
        _ => None,
    };
    let new_term = core.terms.history.last_term() != last_term;
    Ok((
        core.store.applied_seq(),
        Fresh {
            count,
            ticket,
            new_term,
        },
    ))
}

fn diverged(node: &NodeState, entry: &Entry, ours: Option<u64>) -> ApiError {
    tracing::warn!(
        seq = entry.seq,
        theirs = entry.term,
        ours = ?ours,
        "refused an entry that differs from ours at the same seq"
    );
    ApiError::conflict(json!({
        "error": format!("diverged at seq {}", entry.seq),
        "seq": entry.seq, "entry_term": entry.term, "our_term": ours,
        "node_id": node.id,
    }))
}

pub async fn replicate_snapshot(
    State(node): Shared,
    ApiJson(req): ApiJson<InstallSnapshot>,
) -> Result<Json<AppendResponse>, ApiError> {
    check_request(&node, req.to_incarnation, req.term)?;
    check_seq(req.seq)?;
    uncancellable(install(node, req)).await
}

/// What the replication lock holds: the snapshot being received, if any.
pub type Receiving = Option<PendingSnapshot>;

/// The chunks of a snapshot received so far.
#[derive(Debug)]
pub struct PendingSnapshot {
    term: u64,
    seq: u64,
    next_chunk: u64,
    data: BTreeMap<String, Versioned>,
}

/// Adds a chunk to the snapshot being received. Returns the whole state
/// once the last chunk is in, `None` while more are to come.
fn receive_chunk(
    receiving: &mut Receiving,
    req: &mut InstallSnapshot,
) -> Result<Option<BTreeMap<String, Versioned>>, ApiError> {
    if req.chunk == 0 {
        *receiving = Some(PendingSnapshot {
            term: req.term,
            seq: req.seq,
            next_chunk: 0,
            data: BTreeMap::new(),
        });
    }
    let continues =
        |p: &PendingSnapshot| p.term == req.term && p.seq == req.seq && p.next_chunk == req.chunk;
    let Some(pending) = receiving.as_mut().filter(|p| continues(p)) else {
        let expected = receiving.take().map(|p| (p.term, p.seq, p.next_chunk));
        return Err(ApiError::conflict(json!({
            "error": "snapshot chunk out of order",
            "reason": "a snapshot's chunks must arrive in order, from chunk 0; \
                       start again from chunk 0",
            "got": {"term": req.term, "seq": req.seq, "chunk": req.chunk},
            "expected": expected.map(|(term, seq, chunk)|
                json!({"term": term, "seq": seq, "chunk": chunk})),
        })));
    };
    pending.data.append(&mut req.data);
    pending.next_chunk += 1;
    if !req.last {
        return Ok(None);
    }
    Ok(receiving.take().map(|p| p.data))
}

async fn install(
    node: Arc<NodeState>,
    mut req: InstallSnapshot,
) -> Result<Json<AppendResponse>, ApiError> {
    let mut receiving = node.replicate_lock.lock().await;
    check_request(&node, req.to_incarnation, req.term)?;
    // A snapshot never takes a node back in time (see `Store`).
    if req.seq <= node.core.lock().unwrap().store.applied_seq() {
        *receiving = None;
        node.mark_reconciled(req.term);
        return Ok(Json(append_answer(&node)));
    }
    let chunks = req.chunk + 1;
    req.data = match receive_chunk(&mut receiving, &mut req)? {
        Some(data) => data,
        // More chunks to come: the state is untouched until the last.
        None => return Ok(Json(append_answer(&node))),
    };
    let keys = req.data.len();
    let mut history = TermHistory(req.history);
    history.truncate_after(req.seq);
    if history.0.is_empty() {
        history.0.push((req.term, req.seq));
    }
    // Disk first: once the snapshot is durable the old log is obsolete.
    if let Some(d) = &node.durability {
        let snapshot = Snapshot {
            seq: req.seq,
            term: history.term_at(req.seq).unwrap_or(req.term),
            data: req.data.clone(),
        };
        if let Err(e) = d.wal.install_snapshot(snapshot).await {
            return Err(durable::storage_failed(&node, e));
        }
    }
    {
        let mut core = node.core.lock().unwrap();
        core.store.install_snapshot(req.seq, req.data);
        core.log = ReplicationLog::starting_after(req.seq, node.log_retain);
        core.terms.history = history;
    }
    leadership::persist(&node).await;
    node.publish_persisted(req.seq);
    tracing::info!(
        seq = req.seq,
        keys,
        chunks,
        "installed a snapshot from the leader"
    );
    node.mark_reconciled(req.term);
    Ok(Json(append_answer(&node)))
}

/// `POST /replicate/truncate`: the leader found that our log parts from its
/// own after `after_seq`. Everything after it goes, on disk and in memory;
/// the leader then sends its own entries from there. The leader never asks
/// for an acknowledged entry to go: the coordinator promoted it because it
/// holds them all, so they are in the common prefix.
pub async fn replicate_truncate(
    State(node): Shared,
    ApiJson(req): ApiJson<TruncateRequest>,
) -> Result<Json<AppendResponse>, ApiError> {
    check_request(&node, req.to_incarnation, req.term)?;
    uncancellable(truncate(node, req)).await
}

async fn truncate(
    node: Arc<NodeState>,
    req: TruncateRequest,
) -> Result<Json<AppendResponse>, ApiError> {
    let mut receiving = node.replicate_lock.lock().await;
    check_request(&node, req.to_incarnation, req.term)?;
    *receiving = None;
    let before = node.core.lock().unwrap().store.applied_seq();
    if req.after_seq >= before {
        node.mark_reconciled(req.term);
        return Ok(Json(append_answer(&node)));
    }
    let now = match &node.durability {
        Some(d) => {
            let recovered = d
                .wal
                .truncate_after(req.after_seq)
                .await
                .map_err(|e| durable::storage_failed(&node, e))?;
            let seq = recovered.state.seq;
            let mut core = node.core.lock().unwrap();
            core.store = Store::recovered(seq, recovered.state.data);
            core.log = ReplicationLog::recovered(recovered.tail, seq, node.log_retain);
            core.terms.history.truncate_after(seq);
            seq
        }
        // In memory there is no older state to go back to: start empty and
        // let the leader send everything (or a snapshot).
        None => {
            let mut core = node.core.lock().unwrap();
            core.store = Store::default();
            core.log = ReplicationLog::new(node.log_retain);
            core.terms.history = TermHistory::default();
            0
        }
    };
    leadership::persist(&node).await;
    node.reset_persisted(now);
    tracing::warn!(
        from = before,
        to = now,
        asked = req.after_seq,
        "log diverged from the leader's: truncated"
    );
    node.mark_reconciled(req.term);
    Ok(Json(append_answer(&node)))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use clap::Parser;
    use serde_json::{json, Value};
    use tower::ServiceExt;

    use crate::node::{self, term::TermFile, NodeState};

    async fn post(path: &str, body: Value) -> StatusCode {
        let args = node::Args::parse_from(["node", "--id", "follower-1", "--port", "1"]);
        let router = node::router(NodeState::new(&args, None, TermFile::default()));
        // Replication routes are internal: the request carries the secret
        // (whichever this test process installed first).
        crate::auth::install(crate::auth::Secret::random().unwrap());
        let secret = crate::auth::installed().unwrap().expose();
        let req = Request::post(path)
            .header("content-type", "application/json")
            .header(crate::auth::HEADER_SECRET, secret)
            .body(Body::from(body.to_string()))
            .unwrap();
        router.oneshot(req).await.unwrap().status()
    }

    /// Found by the `node_api` fuzz target: a snapshot at `u64::MAX`
    /// overflowed the replication log's next seq (a panic in debug builds).
    #[tokio::test]
    async fn seqs_beyond_the_last_a_log_holds_are_refused() {
        let max = u64::MAX;
        let snapshot = json!({"term": 1, "to_incarnation": 1, "seq": max, "data": {}});
        assert_eq!(
            post("/replicate/snapshot", snapshot).await,
            StatusCode::BAD_REQUEST
        );
        let entry = json!({"seq": max, "term": 1, "key": "k", "value": "v", "version": 1});
        let append = json!({"term": 1, "to_incarnation": 1, "entries": [entry]});
        assert_eq!(post("/replicate", append).await, StatusCode::BAD_REQUEST);
        let fine = json!({"term": 1, "to_incarnation": 1, "seq": 7, "data": {}});
        assert_eq!(post("/replicate/snapshot", fine).await, StatusCode::OK);
    }
}

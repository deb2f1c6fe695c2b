//! The leader's write path: `POST /data` (one write) and `POST /batch/write`
//! (several writes the coordinator gathered while earlier ones were in flight).
//!
//! Both go through [`write_batch`]: a single write is a batch of one. A batch
//! is appended under one lock, submitted to the durable log as one record
//! group (one fsync under `--fsync always`), published to the replication
//! streams at once (while that fsync runs), and acknowledged per write.
//!
//! Invariants:
//! - **A write runs to its end** ([`uncancellable`]): once appended, its
//!   seq is published to the streams and, after the WAL, as persisted, even
//!   if the coordinator hangs up or times out meanwhile;
//! - **Entries reach the log, the state and the disk in seq order**: seqs are
//!   given, applied and submitted to the WAL under the same lock.
//! - **A write is acknowledged only once it is on the leader's disk and on
//!   each sync follower's.** The entries are streamed as soon as they are
//!   appended ([`NodeState::publish_appended`]), so the followers' fsyncs
//!   overlap the leader's; the answer waits for the leader's WAL ticket and
//!   for the acks. A leader that crashes in between may come back holding
//!   less than its followers: elections then make the most advanced node
//!   lead, and the old leader's log is reconciled like any other (see
//!   `coordinator::failover` and `replication`'s handshake).
//! - **Only the leader of the current term appends**: the role is checked
//!   under the lock that appends, and every entry carries that term.
//! - **A write's answer says which sync followers acknowledged it**. Acks are
//!   cumulative (a follower acks "everything up to seq N"), so one wait for
//!   the batch's last seq covers every write in it, and every write of a
//!   batch gets the same `acked_by` and `missing` ([`Written`]). If that wait fails, every
//!   write of the batch reports the follower missing, even one the follower
//!   may in fact have: under-reporting an ack only turns a success into an
//!   "outcome unknown" 503, never the other way round.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{check_batch_len, durable, store, uncancellable, NodeState, Shared};
use crate::api::*;
use crate::http::{validate_key_value, ApiError, ApiJson};
use crate::storage::AppendTicket;

/// Default wait for sync acks when the coordinator does not say.
const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(3);

/// At most this many writes in one `POST /batch/write`.
pub const MAX_WRITE_BATCH: usize = 1024;

/// `POST /data`: one write.
pub async fn leader_write(
    State(node): Shared,
    ApiJson(req): ApiJson<LeaderWriteRequest>,
) -> Result<Json<LeaderWriteResponse>, ApiError> {
    let writes = vec![KeyValue {
        key: req.key,
        value: req.value,
    }];
    let work = async move { write_batch(&node, writes, &req.sync, req.ack_timeout_ms).await };
    let written = uncancellable(work).await?;
    let entry = &written.entries[0];
    Ok(Json(LeaderWriteResponse {
        key: entry.key.clone(),
        value: entry.value.clone(),
        version: entry.version,
        seq: entry.seq,
        acked_by: written.acked_by,
        missing: written.missing,
    }))
}

/// `POST /batch/write`: several writes, one answer each, in order.
pub async fn leader_write_batch(
    State(node): Shared,
    ApiJson(req): ApiJson<LeaderBatchRequest>,
) -> Result<Response, ApiError> {
    check_batch_len("write", req.writes.len(), MAX_WRITE_BATCH)?;
    let work = async move { write_batch(&node, req.writes, &req.sync, req.ack_timeout_ms).await };
    let written = uncancellable(work).await?;
    // Encoded here, from the log's entries: see `api::LeaderBatchAnswer`.
    let results = written
        .entries
        .iter()
        .map(|entry| LeaderWriteAnswer {
            key: &entry.key,
            value: &entry.value,
            version: entry.version,
            seq: entry.seq,
            acked_by: &written.acked_by,
            missing: &written.missing,
        })
        .collect();
    Ok(Json(LeaderBatchAnswer { results }).into_response())
}

/// A batch that was appended, persisted and replicated (or timed out
/// waiting for some acks): its entries, and which sync followers
/// acknowledged all of them. Acks are cumulative, so one wait for the
/// batch's last seq answers for every write in it.
struct Written {
    entries: Vec<Arc<Entry>>,
    acked_by: Vec<String>,
    /// The sync followers that did not ack in time, with the reason.
    missing: Vec<MissingAck>,
}

/// Checks, appends, persists and replicates `writes`; answers once each sync
/// follower has acknowledged them or the ack timeout has passed.
async fn write_batch(
    node: &Arc<NodeState>,
    writes: Vec<KeyValue>,
    sync: &[PeerRef],
    ack_timeout_ms: Option<u64>,
) -> Result<Written, ApiError> {
    if !node.is_leader() {
        return Err(not_leader(node));
    }
    // All or nothing: a bad write refuses the batch before any is appended.
    for w in &writes {
        validate_key_value(&w.key, Some(&w.value))?;
    }
    node.stats
        .total_writes
        .fetch_add(writes.len() as u64, std::sync::atomic::Ordering::Relaxed);
    let (entries, ticket) = append(node, writes)?;
    let last = entries.last().expect("a batch is never empty").seq;
    // Before the streams see the entries: they go out on the sync link to
    // every follower this batch waits for, whatever happens to the sets.
    for p in sync {
        if let Some(peer) = node.peer(&p.node_id) {
            peer.write_waits_for(last);
        }
    }
    // Streamed now, while our own fsync runs: the followers' disk writes
    // overlap ours instead of following it, so a write costs one fsync of
    // latency, not two. The answer still waits for both.
    node.publish_appended(last);
    if let Some(ticket) = ticket {
        durable::wait_persisted(node, ticket).await?;
    }
    node.publish_persisted(last);
    durable::snapshot_if_due(node, last);

    let timeout = ack_timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_ACK_TIMEOUT);
    let deadline = tokio::time::Instant::now() + timeout;
    let waits = sync.iter().map(|p| wait_ack(node, p, last, deadline));
    let acks = futures::future::join_all(waits).await;
    let mut written = Written {
        entries,
        acked_by: vec![],
        missing: vec![],
    };
    for (peer, ack) in sync.iter().zip(acks) {
        match ack {
            Ok(()) => written.acked_by.push(peer.node_id.clone()),
            Err(reason) => written.missing.push(MissingAck {
                node_id: peer.node_id.clone(),
                reason,
            }),
        }
    }
    Ok(written)
}

/// Puts writes into the log and the state, atomically, and submits them to
/// the durable log (if any) under the same lock, so the disk gets the entries
/// in seq order. The caller awaits the ticket, then publishes the entries to
/// the streams.
fn append(
    node: &NodeState,
    writes: Vec<KeyValue>,
) -> Result<(Vec<Arc<Entry>>, Option<AppendTicket>), ApiError> {
    let mut core = node.core.lock().unwrap();
    // Checked under the lock that appends: a leader that stepped down a
    // moment ago appends nothing in its old term.
    if core.terms.role != Role::Leader {
        return Err(not_leader(node));
    }
    let term = core.terms.term;
    let now = Instant::now();
    let mut entries = Vec::with_capacity(writes.len());
    for KeyValue { key, value } in writes {
        let entry = Arc::new(Entry {
            seq: core.log.appended_seq() + 1,
            term,
            version: core.store.next_version(&key),
            key,
            value,
        });
        let applied = core.store.apply(&entry);
        // The entry was numbered from the log under this lock, so the store
        // must take it: otherwise log order and state would disagree.
        assert_eq!(
            applied,
            store::Applied::Applied,
            "the leader's store and log must agree"
        );
        core.log.push(entry.clone(), now);
        entries.push(entry);
    }
    let ticket = node
        .durability
        .as_ref()
        .map(|d| d.wal.submit(entries.clone()));
    Ok((entries, ticket))
}

fn not_leader(node: &NodeState) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        format!("{} is a follower: writes go to the leader", node.id),
    )
}

/// Waits until `peer` acknowledges `seq`; gives up at the deadline or as soon
/// as an attempt to reach it fails.
async fn wait_ack(
    node: &NodeState,
    peer: &PeerRef,
    seq: u64,
    deadline: tokio::time::Instant,
) -> Result<(), String> {
    let Some(stream) = node.peer(&peer.node_id) else {
        return Err("not a replication peer of the leader".into());
    };
    if stream.config.incarnation != peer.incarnation {
        return Err(format!(
            "the leader streams to incarnation {}, not {}",
            stream.config.incarnation, peer.incarnation
        ));
    }
    let mut rx = stream.subscribe();
    let failures_before = rx.borrow().failures;
    let waited = tokio::time::timeout_at(
        deadline,
        rx.wait_for(|p| p.acked_seq >= seq || p.failures > failures_before),
    )
    .await;
    match waited {
        Ok(Ok(p)) if p.acked_seq >= seq => Ok(()),
        Ok(Ok(p)) => Err(p
            .last_error
            .clone()
            .unwrap_or_else(|| "replication failed".into())),
        Ok(Err(_)) => Err("replication stream stopped".into()),
        Err(_) => Err("no ack before the write's deadline".into()),
    }
}

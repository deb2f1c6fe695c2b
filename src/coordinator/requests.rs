//! The client-facing write path, with the lab's quorum rule (reads are in
//! [`super::reads`]).
//!
//! Write: check there is a leader and at least W alive followers, pick the
//! sync set (W alive followers, lowest ports), hand the write to the leader
//! with that set, and succeed only if every one of them acknowledged. A
//! success moves the commit point that reads rely on (see
//! [`super::reads::CommitPoint`]) before the client hears of it.
//!
//! Writes go through a batcher (see [`super::batch`]): concurrent writes
//! leave for the leader together. Each is still checked, narrated (see
//! [`super::narration`]) and answered on its own.
//!
//! A write that fails its quorum (503 "Write quorum not met") is *not* undone:
//! it is in the leader's log, so it reaches every follower eventually. The
//! client learns the outcome is unknown, exactly as with a timeout in any
//! replicated store; ARCHITECTURE.md explains the choice.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::Json;

use super::batch::{Batcher, Limits};
use super::cluster::{Cluster, Slot};
use super::{Coordinator, Shared};
use crate::api::*;
use crate::events::EventKind;
use crate::http::{validate_key_value, ApiError, ApiJson};

/// `POST /write`.
pub async fn write(
    State(c): Shared,
    ApiJson(req): ApiJson<WriteRequest>,
) -> Result<Json<WriteResponse>, ApiError> {
    c.serve_write(req).await.map(Json)
}

impl Coordinator {
    /// A client's write, as `POST /write` serves it: checked, timed,
    /// counted. `kvlab up`'s gateway calls this directly (no HTTP in
    /// between), so whatever a write through the port gets, it gets too.
    pub async fn serve_write(
        self: &Arc<Self>,
        req: WriteRequest,
    ) -> Result<WriteResponse, ApiError> {
        validate_key_value(&req.key, Some(&req.value))?;
        let narrate = self.events.narrate_request();
        let started = Instant::now();
        let result = self.write(req, narrate).await;
        self.metrics.write_seconds.observe(started.elapsed());
        let counter = match &result {
            Ok(_) => &self.metrics.writes_ok,
            Err(_) => &self.metrics.writes_failed,
        };
        counter.inc();
        self.events.count_write(result.is_ok());
        result
    }
}

/// Who a write goes to, decided from one consistent view of the table.
pub(super) struct WritePlan {
    pub(super) leader: Slot,
    pub(super) sync: Vec<Slot>,
    pub(super) asynchronous: Vec<Slot>,
    /// The term of that leader: an answer from another term does not count.
    pub(super) term: u64,
}

impl Coordinator {
    fn plan_write(&self) -> Result<WritePlan, ApiError> {
        let cluster = self.snapshot();
        self.check_writable(&cluster)?;
        let sets = cluster.sets(self.config.w, self.config.r);
        let pick = |idx: &[usize]| idx.iter().map(|&i| cluster.followers[i].clone()).collect();
        Ok(WritePlan {
            sync: pick(&sets.sync),
            asynchronous: pick(&sets.asynchronous),
            leader: cluster.leader.clone(),
            term: cluster.term,
        })
    }

    /// Whether the table allows a write at all: a leader alive and at least
    /// W followers; else the 503 that says why. Checked on its own for each
    /// write as it arrives, without building a plan (that copies slots: the
    /// plan is made once per batch, as the batch leaves).
    fn check_writable(&self, cluster: &Cluster) -> Result<(), ApiError> {
        let w = self.config.w;
        let alive = cluster.alive_followers();
        if !cluster.leader.is_alive() {
            return Err(ApiError::unavailable(WriteQuorumNotAvailable::new(
                alive,
                w,
                self.failover.leader_down_cause(&cluster.leader),
            )));
        }
        if alive < w {
            return Err(ApiError::unavailable(WriteQuorumNotAvailable::new(
                alive,
                w,
                format!(
                    "only {alive} of the followers {} alive; W={w} must acknowledge each write",
                    if alive == 1 { "is" } else { "are" }
                ),
            )));
        }
        Ok(())
    }

    pub async fn write(
        self: &Arc<Self>,
        req: WriteRequest,
        narrate: bool,
    ) -> Result<WriteResponse, ApiError> {
        let started = Instant::now();
        self.wait_for_election().await;
        // Refuse at once (and say why) when there is nothing to write to; the
        // batch re-plans when it leaves, in case membership changed meanwhile.
        if let Err(e) = self.check_writable(&self.snapshot()) {
            if narrate {
                self.narrate_write_refused(&req.key, &e);
            }
            return Err(e);
        }
        // Moved, not copied: it comes back with the leader's answer.
        let write = KeyValue {
            key: req.key,
            value: req.value,
        };
        let Written {
            plan,
            write,
            receipt: answer,
        } = match self.write_batcher().call(write).await {
            Some(outcome) => outcome?,
            None => return Err(ApiError::unavailable("the coordinator is shutting down")),
        };
        let ms = started.elapsed().as_millis();
        let w = self.config.w;
        self.metrics
            .quorum_acks
            .inc_by(answer.acked_by.len() as u64);
        if narrate {
            self.narrate_write(&write.key, &plan, &answer, ms);
        }
        if answer.acked_by.len() >= w && !self.record_ack(plan.term, answer.seq) {
            return Err(ApiError::unavailable(WriteQuorumNotMet {
                error: WRITE_QUORUM_NOT_MET.into(),
                sync_acks: answer.acked_by.len(),
                required: w,
                version: answer.version,
                missing: None,
                cause: Some(format!(
                    "the leader of term {} answered after a failover began: \
                    its acks no longer count",
                    plan.term
                )),
                note:
                    "the write may or may not survive the failover; its outcome is unknown to you"
                        .into(),
            }));
        }
        if answer.acked_by.len() < w {
            return Err(ApiError::unavailable(WriteQuorumNotMet {
                error: WRITE_QUORUM_NOT_MET.into(),
                sync_acks: answer.acked_by.len(),
                required: w,
                version: answer.version,
                missing: Some(answer.missing),
                cause: None,
                note: "the write is in the leader's log and will still reach the followers; \
                    its outcome is unknown to you"
                    .into(),
            }));
        }
        // Committed: W followers hold it. Reads rely on this point, so it
        // moves before the client can learn of the write.
        self.commit.advance(answer.seq);
        let url_of = |id: &String| {
            plan.sync
                .iter()
                .find(|s| &s.node_id == id)
                .map(|s| s.url.clone())
        };
        Ok(WriteResponse {
            status: "success".into(),
            key: write.key,
            value: write.value,
            version: answer.version,
            sync_acks: answer.acked_by.len(),
            quorum: w,
            sync_replicated_to: answer.acked_by.iter().filter_map(url_of).collect(),
            seq: answer.seq,
        })
    }

    /// The write batcher, started on first use.
    fn write_batcher(self: &Arc<Self>) -> &Batcher<KeyValue, WriteOutcome> {
        self.writes.get_or_init(|| {
            // Weak: the batcher lives in the coordinator and must not keep it alive.
            let me = Arc::downgrade(self);
            Batcher::spawn(self.write_limits(), weigh_write, move |writes| {
                let me = me.clone();
                async move {
                    match me.upgrade() {
                        Some(c) => c.send_write_batch(writes).await,
                        None => {
                            let stopped = ApiError::unavailable("the coordinator stopped");
                            std::iter::repeat_n(stopped, writes.len())
                                .map(Err)
                                .collect()
                        }
                    }
                }
            })
        })
    }

    /// One batch in flight, unless the teaching delays are on: then each
    /// write sits out its sync delay on purpose, and a write must not also
    /// wait for the previous batch's delay (students time the writes).
    fn write_limits(&self) -> Limits {
        if self.config.launch.sync_delay > 0.0 {
            Limits {
                max_in_flight: WRITE_BATCHES_WITH_DELAYS,
                ..WRITE_BATCHES
            }
        } else {
            WRITE_BATCHES
        }
    }

    /// Sends one batch of writes to the leader, planned (leader and sync set)
    /// as it leaves; every write of the batch gets the same plan.
    async fn send_write_batch(&self, writes: Vec<KeyValue>) -> Vec<WriteOutcome> {
        let n = writes.len();
        let all = |e: ApiError| std::iter::repeat_n(e, n).map(Err).collect();
        let plan = match self.plan_write() {
            Ok(plan) => Arc::new(plan),
            Err(e) => return all(e),
        };
        let body = LeaderBatchRequest {
            writes,
            sync: plan.sync.iter().map(Slot::peer_ref).collect(),
            ack_timeout_ms: Some(self.config.ack_timeout.as_millis() as u64),
        };
        match self.send_to_leader(&plan.leader, plan.term, &body).await {
            // Each write's own key and value go back with its answer.
            Ok(answer) if answer.results.len() == n => body
                .writes
                .into_iter()
                .zip(answer.results)
                .map(|(write, receipt)| {
                    Ok(Written {
                        plan: plan.clone(),
                        write,
                        receipt,
                    })
                })
                .collect(),
            Ok(answer) => all(ApiError::unavailable(format!(
                "Leader unreachable: it answered {} writes of a batch of {n}",
                answer.results.len()
            ))),
            Err(e) => all(e),
        }
    }

    async fn send_to_leader(
        &self,
        leader: &Slot,
        term: u64,
        body: &LeaderBatchRequest,
    ) -> Result<LeaderBatchReceipt, ApiError> {
        let unreachable = |why: String| {
            self.events.bad(
                EventKind::LeaderUnreachable,
                Some(&leader.node_id),
                format!("⛔ leader unreachable: {why}"),
            );
            ApiError::unavailable(format!("Leader unreachable: {why}"))
        };
        let answer = self
            .wire
            .call_json(
                &leader.url,
                reqwest::Method::POST,
                "/batch/write",
                &[(HEADER_TERM, term.to_string())],
                body,
                Some(self.config.ack_timeout + std::time::Duration::from_secs(2)),
            )
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        // A deposed leader's answer never counts (see `failover`).
        let answered_in = answer.header_u64(HEADER_TERM);
        if answered_in != Some(term) {
            return Err(unreachable(format!(
                "{} answered in term {answered_in:?}, not the current term {term}",
                leader.node_id
            )));
        }
        let status = answer.status;
        if !status.is_success() {
            // The leader's own refusals (bad input) pass through as they are.
            return Err(ApiError::new(status, answer.detail()));
        }
        answer
            .json()
            .map_err(|e| unreachable(format!("unreadable answer: {e}")))
    }
}

/// How writes to the leader are batched: one batch at a time. Each batch
/// costs an fsync on the leader and on every follower, and an fsync is dear
/// (on this project's 2-core VM, most of a write's CPU is fsyncs and
/// wake-ups). One batch in flight makes batches as big as possible: with 64
/// clients, 1 in flight gave 15.8k writes/s, 2 gave 13.8k and 4 gave 12.8k;
/// measured again at the close of issue 26 (`bench/ab.sh`), 2 gave 14% less.
const WRITE_BATCHES: Limits = Limits {
    max_in_flight: 1,
    max_items: 512,
    max_bytes: crate::api::BATCH_PAYLOAD_BYTES,
};

/// Batches in flight when the lab's sync delay holds each one for a while.
const WRITE_BATCHES_WITH_DELAYS: usize = 1024;

fn weigh_write(w: &KeyValue) -> usize {
    w.key.len() + w.value.len()
}

/// What the leader said about one write of a batch, with the plan (leader,
/// sync set) the batch was sent under.
pub(super) type WriteOutcome = Result<Written, ApiError>;

/// One write the leader answered.
pub(super) struct Written {
    pub(super) plan: Arc<WritePlan>,
    /// The write as the client sent it: its answer names these.
    pub(super) write: KeyValue,
    pub(super) receipt: LeaderWriteReceipt,
}

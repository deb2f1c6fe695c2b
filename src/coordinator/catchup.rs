//! Catch-up: a follower back in the cluster gets the log it missed. The
//! leader sends it (its stream starts with a handshake); the coordinator
//! waits on the leader's `/replication/wait` and narrates. `POST /catchup` is
//! the registry's call when a follower registers; a (re)spawned follower is
//! reported on by [`Coordinator::report_catchup`].
//!
//! Invariants:
//! - the leader is never caught up: it is the source;
//! - a slot still starting belongs to its starter, which marks it alive and
//!   catches it up;
//! - a stale incarnation, or a process that has exited, is refused: a late
//!   heartbeat must not bring a slot back.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use serde_json::json;

use super::cluster::Slot;
use super::{Coordinator, Shared};
use crate::api::*;
use crate::events::EventKind;
use crate::http::{describe_reqwest_error, error_detail, ApiError, ApiJson};

/// How long `/catchup` waits for a follower to hold the whole log.
const CATCHUP_TIMEOUT: Duration = Duration::from_secs(30);

impl Coordinator {
    /// After a (re)spawn, narrates when the follower holds the whole log.
    pub(super) fn report_catchup(self: &Arc<Self>, slot: Slot) {
        let c = self.clone();
        tokio::spawn(async move {
            match c.wait_caught_up(&slot).await {
                Ok(p) => {
                    c.metrics.catchups.inc();
                    c.events.good(
                        EventKind::CaughtUp,
                        Some(&slot.node_id),
                        format!(
                            "📦 {} caught up from the leader ({}): holds the log up to seq {}",
                            slot.node_id,
                            c.snapshot().leader.node_id,
                            p.acked_seq
                        ),
                    )
                }
                Err(e) => c.events.warn(
                    EventKind::CatchupSlow,
                    Some(&slot.node_id),
                    format!("⏳ {} not caught up yet: {e}", slot.node_id),
                ),
            }
        });
    }

    async fn wait_caught_up(&self, slot: &Slot) -> Result<FollowerProgress, String> {
        let leader = self.snapshot().leader.clone();
        if !leader.is_alive() {
            return Err("the leader is down".into());
        }
        let resp = self
            .http
            .post(format!("{}/replication/wait", leader.url))
            .header(HEADER_TERM, self.snapshot().term)
            .timeout(CATCHUP_TIMEOUT + Duration::from_secs(1))
            .json(&WaitRequest {
                node_id: slot.node_id.clone(),
                seq: None,
                timeout_ms: Some(CATCHUP_TIMEOUT.as_millis() as u64),
            })
            .send()
            .await
            .map_err(|e| format!("leader unreachable: {}", describe_reqwest_error(&e)))?;
        if !resp.status().is_success() {
            return Err(error_detail(resp).await.to_string());
        }
        resp.json().await.map_err(|e| e.to_string())
    }
}

// ---------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------

/// `POST /catchup`: the registry's call when a follower registers.
pub async fn catchup(
    State(c): Shared,
    ApiJson(req): ApiJson<CatchupRequest>,
) -> Result<Json<CatchupResponse>, ApiError> {
    let Some(slot) = c.snapshot().slot(&req.node_id).cloned() else {
        return Err(ApiError::not_found(format!(
            "Node '{}' not found",
            req.node_id
        )));
    };
    if slot.role == Role::Leader {
        return Err(ApiError::bad_request(
            "the leader is never caught up: it is the source",
        ));
    }
    if req.incarnation.is_some_and(|i| i != slot.incarnation) {
        return Err(ApiError::conflict(
            json!({"error": "stale incarnation", "node_id": req.node_id,
            "current": slot.incarnation, "given": req.incarnation}),
        ));
    }
    if slot.status == NodeStatus::Starting {
        // Its starter marks it alive once it answers its health check, and
        // catches it up then. Marking it alive here could be too early: its
        // first heartbeat can beat the runtime's answer to the start, while
        // the slot still has no address (a container's is set once it
        // runs), and the leader would stream to the wrong one.
        return Err(ApiError::conflict(json!({
            "error": "being started", "node_id": req.node_id,
            "hint": "its starter marks it alive and catches it up"})));
    }
    if !c.snapshot().leader.is_alive() {
        return Err(ApiError::unavailable(
            "No leader available to catch up from",
        ));
    }
    if c.has_exited(&slot) {
        // A stopped node's last heartbeat can reach the registry after it
        // deregistered: that must not bring the slot back.
        return Err(ApiError::conflict(
            json!({"error": "its process has exited",
            "node_id": slot.node_id, "hint": "POST /spawn to start it again"}),
        ));
    }
    if slot.status != NodeStatus::Alive {
        c.transition(
            &slot.node_id,
            Some(slot.incarnation),
            NodeStatus::Alive,
            "registered",
        )
        .await;
    }
    match c.wait_caught_up(&slot).await {
        Ok(p) => {
            c.events.good(
                EventKind::CaughtUp,
                Some(&slot.node_id),
                format!(
                    "📦 catch-up of {}: holds the log up to seq {}",
                    slot.node_id, p.acked_seq
                ),
            );
            Ok(Json(CatchupResponse {
                status: "caught_up".into(),
                node_id: slot.node_id,
                applied_seq: p.acked_seq,
            }))
        }
        Err(e) => Err(ApiError::internal(
            json!({"error": "catch-up failed", "node_id": slot.node_id, "reason": e}),
        )),
    }
}

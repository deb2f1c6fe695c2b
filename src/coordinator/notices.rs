//! The registry's notices: `POST /node-died` and `POST /node-revived`.
//!
//! A notice is only a hint: [`super::liveness`] checks it against the
//! registry's current view and decides, and ignores one from an older view
//! than the last applied.
//!
//! Invariants:
//! - a notice about an unknown node is refused (404);
//! - a revival of a process that was replaced (a stale incarnation) is
//!   refused (409).

use axum::extract::State;
use axum::Json;
use serde_json::json;

use super::Shared;
use crate::api::*;
use crate::http::{ApiError, ApiJson};

/// `POST /node-died`: the registry stopped hearing from a node. A hint,
/// checked against the registry's current view (see [`super::liveness`]).
pub async fn node_died(
    State(c): Shared,
    ApiJson(req): ApiJson<NodeDiedRequest>,
) -> Result<Json<NoticeAnswer>, ApiError> {
    if c.snapshot().slot(&req.node_id).is_none() {
        return Err(ApiError::not_found(format!(
            "Node '{}' not found",
            req.node_id
        )));
    }
    let outcome = c
        .notice_death(
            &req.node_id,
            req.incarnation,
            req.registry_epoch,
            req.view_version,
        )
        .await;
    Ok(Json(NoticeAnswer {
        status: "acknowledged".into(),
        applied: outcome.applied,
        reason: outcome.reason,
    }))
}

/// `POST /node-revived`: a node declared dead is heartbeating again.
pub async fn node_revived(
    State(c): Shared,
    ApiJson(req): ApiJson<NodeRevivedRequest>,
) -> Result<Json<NoticeAnswer>, ApiError> {
    let Some(slot) = c.snapshot().slot(&req.node_id).cloned() else {
        return Err(ApiError::not_found(format!(
            "Node '{}' not found",
            req.node_id
        )));
    };
    if req.incarnation.is_some_and(|i| i != slot.incarnation) {
        return Err(ApiError::conflict(
            json!({"error": "stale incarnation: this process was replaced",
            "node_id": req.node_id, "current": slot.incarnation}),
        ));
    }
    let outcome = c
        .notice_revival(&req.node_id, req.registry_epoch, req.view_version)
        .await;
    Ok(Json(NoticeAnswer {
        status: "acknowledged".into(),
        applied: outcome.applied,
        reason: outcome.reason,
    }))
}

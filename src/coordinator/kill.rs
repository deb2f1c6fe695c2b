//! Stopping nodes: `POST /kill/{node_id}`, graceful (the node deregisters and
//! exits) or a crash (SIGKILL: the registry notices only when heartbeats
//! stop), and stopping every node when the coordinator ends.
//!
//! Invariants:
//! - a crash is answered once the process is really gone, so that a `/spawn`
//!   right after finds the slot's process dead;
//! - a crashed node stays alive in the table until the registry misses its
//!   heartbeats (or at once without a registry), but the answer's
//!   `can_write` already counts it out;
//! - a node that is dead and has no process left is not killed again (409).

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::cluster::{Cluster, Slot};
use super::launcher;
use super::{Coordinator, Shared};
use crate::api::*;
use crate::events::EventKind;
use crate::http::ApiError;
use crate::process::exists as process_exists;

impl Coordinator {
    /// Stops every node the coordinator started (see [`super::runtime`]).
    pub async fn stop_all(&self) {
        self.stop_nodes().await;
    }

    /// Stops every node process: politely (SIGTERM), then firmly (SIGKILL).
    pub(super) async fn stop_processes(&self) {
        let pids: Vec<u32> = {
            let c = self.cluster.lock().unwrap();
            std::iter::once(&c.leader)
                .chain(c.followers.iter())
                .filter_map(|s| s.pid)
                .collect()
        };
        for &pid in &pids {
            launcher::signal(pid, libc::SIGTERM);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while tokio::time::Instant::now() < deadline && pids.iter().any(|&p| process_exists(p)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stubborn: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|&p| process_exists(p))
            .collect();
        if !stubborn.is_empty() {
            self.events.warn(
                EventKind::StopForced,
                None,
                format!("🔨 nodes {stubborn:?} ignored SIGTERM for 2 s: SIGKILL"),
            );
        }
        for &pid in &pids {
            launcher::signal(pid, libc::SIGKILL);
        }
        self.events.info(
            EventKind::ClusterStopped,
            None,
            "🛑 cluster stopped: all nodes ended",
        );
    }
}

// ---------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub struct KillQuery {
    #[serde(default)]
    mode: KillMode,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum KillMode {
    /// The node deregisters and exits.
    #[default]
    Graceful,
    /// SIGKILL: the registry notices only when heartbeats stop.
    Crash,
}

/// `POST /kill/{node_id}[?mode=crash]`.
pub async fn kill(
    State(c): Shared,
    Path(node_id): Path<String>,
    query: Result<Query<KillQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<KillResponse>, ApiError> {
    let Query(q) = query.map_err(|e| {
        ApiError::bad_request(json!({"error": "invalid query",
        "reason": e.body_text(), "hint": "mode is graceful (default) or crash"}))
    })?;
    let node_id = c.snapshot().resolve(&node_id, false);
    let Some(slot) = c.snapshot().slot(&node_id).cloned() else {
        return Err(ApiError::not_found(format!("Node '{node_id}' not found")));
    };
    if slot.status == NodeStatus::Dead && c.nothing_runs(&slot) {
        return Err(ApiError::conflict(
            json!({"error": "node is already dead", "node_id": node_id}),
        ));
    }
    let status = match q.mode {
        KillMode::Graceful => {
            c.events.warn(
                EventKind::Kill,
                Some(&node_id),
                format!("🛑 stopping {node_id} (graceful: it deregisters)"),
            );
            graceful_stop(&c, &slot).await;
            c.transition(
                &node_id,
                Some(slot.incarnation),
                NodeStatus::Dead,
                "stopped by /kill",
            )
            .await;
            "stopped"
        }
        KillMode::Crash => {
            // Answer once it is really gone, so that a /spawn right after
            // finds the slot's process dead.
            if !c.crash_node(&slot).await {
                return Err(ApiError::conflict(json!({
                    "error": "this coordinator cannot crash a node it did not start (--runtime external)",
                    "node_id": node_id,
                    "hint": "stop it gracefully (no ?mode=crash), or kill it with the tool that runs it"})));
            }
            c.events.warn(EventKind::Crash, Some(&node_id), format!(
                "💥 {node_id} CRASHED (SIGKILL): nobody tells the registry; it will notice when heartbeats stop (5 s)"));
            if c.config.launch.registry.is_none() {
                c.transition(
                    &node_id,
                    Some(slot.incarnation),
                    NodeStatus::Dead,
                    "killed, no registry to notice",
                )
                .await;
            }
            "crashed"
        }
    };
    // The table after the kill: a crashed node stays `alive` in it until the
    // registry misses its heartbeats, but it takes no write from now on.
    let mut after = Cluster::clone(&c.snapshot());
    if let Some(s) = after.slot_mut(&node_id) {
        s.status = NodeStatus::Dead;
    }
    let can_write = after.can_write(c.config.w);
    Ok(Json(KillResponse {
        status: status.into(),
        node_id,
        can_write,
    }))
}

async fn graceful_stop(c: &Coordinator, slot: &Slot) {
    let asked = c
        .http
        .post(format!("{}/admin/shutdown", slot.url))
        .timeout(Duration::from_secs(1))
        .send()
        .await;
    c.finish_stop(slot, asked.is_ok()).await;
}

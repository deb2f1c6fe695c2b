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

use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::cluster::{Cluster, Slot};
use super::launcher;
use super::{Coordinator, Shared};
use crate::api::*;
use crate::events::EventKind;
use crate::http::{ApiError, ApiPath};
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
    /// A simulated power cut of the node (hidden test switch
    /// `--simulate-power-loss`): its next log write is torn and it dies
    /// losing every unsynced write (see `storage::power`).
    Power,
}

/// `POST /kill/{node_id}[?mode=crash]`.
pub async fn kill(
    State(c): Shared,
    ApiPath(node_id): ApiPath<String>,
    query: Result<Query<KillQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<KillResponse>, ApiError> {
    let Query(q) = query.map_err(|e| {
        ApiError::bad_request(json!({"error": "invalid query",
        "reason": e.body_text(), "hint": "mode is graceful (default), crash or power"}))
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
        KillMode::Power => {
            power_cut(&c, &slot).await?;
            c.events.warn(
                EventKind::Crash,
                Some(&node_id),
                format!(
                "🔌 {node_id} lost POWER (simulated): its unsynced log writes are gone and its \
                 last one torn; the registry will notice when heartbeats stop (5 s)"),
            );
            if c.config.launch.registry.is_none() {
                c.transition(
                    &node_id,
                    Some(slot.incarnation),
                    NodeStatus::Dead,
                    "power cut, no registry to notice",
                )
                .await;
            }
            "power cut"
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

/// Asks the node to cut its own power (it dies at its next log write, at
/// most a second later), then makes sure the process is gone, as a crash.
async fn power_cut(c: &Coordinator, slot: &Slot) -> Result<(), ApiError> {
    let asked = c
        .http
        .post(format!("{}/admin/power-cut", slot.url))
        .timeout(Duration::from_secs(1))
        .json(&PowerCutRequest { tear: true })
        .send()
        .await
        .map_err(|e| {
            ApiError::unavailable(format!(
                "{} did not take the power cut: {}",
                slot.node_id,
                crate::http::describe_reqwest_error(&e)
            ))
        })?;
    if !asked.status().is_success() {
        let detail = crate::http::error_detail(asked).await;
        return Err(ApiError::conflict(json!({
            "error": "the node cannot simulate a power cut",
            "node_id": slot.node_id, "detail": detail})));
    }
    if let Some(pid) = slot.pid {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while tokio::time::Instant::now() < deadline && process_exists(pid) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Gone by now as a rule; the bookkeeping of a crash either way.
    c.crash_node(slot).await;
    Ok(())
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

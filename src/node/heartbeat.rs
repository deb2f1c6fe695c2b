//! Heartbeats: how the registry learns a node is alive.
//!
//! Every interval the node posts its identity to the registry. If the registry
//! answers 409, a newer incarnation of this node id has registered since: this
//! process was replaced (for example after a network blip outlasted the
//! timeout), so it must stop serving. It exits at once; that is the last line
//! of fencing, after the leader and the coordinator ignoring it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use super::NodeState;
use crate::api::{DeregisterRequest, Heartbeat};
use crate::http::{describe_reqwest_error, error_detail};

pub async fn run(node: Arc<NodeState>, registry: String, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_failing = false;
    loop {
        ticker.tick().await;
        if paused(&node) {
            continue;
        }
        match beat(&node, &registry).await {
            Ok(()) => {
                if was_failing {
                    tracing::info!("registry reachable again");
                }
                was_failing = false;
            }
            Err(Beat::Fenced(detail)) => {
                tracing::error!(%detail, "replaced by a newer incarnation: exiting");
                // Exit right away: serving one more request would be wrong.
                std::process::exit(3);
            }
            Err(Beat::Failed(e)) => {
                if !was_failing {
                    tracing::warn!(error = %e, "heartbeat failed; will keep trying");
                }
                was_failing = true;
            }
        }
    }
}

/// How long a promotion waits for its heartbeat (see [`announce`]).
const ANNOUNCE_TIMEOUT: Duration = Duration::from_millis(500);

/// Tells the registry the node's role at once, without waiting for the next
/// tick: a promotion is answered after this, so the registry's view shows the
/// new leader as `leader` from the moment the coordinator knows it leads.
/// Best effort and bounded: a registry that is away (or heartbeats paused by
/// fault injection) only means the next regular heartbeat carries the role.
pub async fn announce(node: &NodeState) {
    let Some(registry) = &node.registry else {
        return;
    };
    if paused(node) {
        return;
    }
    match tokio::time::timeout(ANNOUNCE_TIMEOUT, beat(node, registry)).await {
        Ok(Err(Beat::Fenced(detail))) => {
            tracing::error!(%detail, "replaced by a newer incarnation: exiting");
            std::process::exit(3);
        }
        Ok(Err(Beat::Failed(e))) => tracing::debug!(error = %e, "could not announce the new role"),
        Ok(Ok(())) | Err(_) => {}
    }
}

fn paused(node: &NodeState) -> bool {
    let mut until = node.heartbeats_paused_until.lock().unwrap();
    match *until {
        Some(t) if Instant::now() < t => true,
        Some(_) => {
            *until = None;
            tracing::warn!("heartbeats resumed");
            false
        }
        None => false,
    }
}

enum Beat {
    Fenced(String),
    Failed(String),
}

async fn beat(node: &NodeState, registry: &str) -> Result<(), Beat> {
    let body = Heartbeat {
        node_id: node.id.clone(),
        port: node.port,
        url: node.url.clone(),
        role: node.role(),
        incarnation: Some(node.incarnation),
    };
    let resp = node
        .http
        .post(format!("{registry}/heartbeat"))
        .timeout(Duration::from_secs(2))
        .json(&body)
        .send()
        .await
        .map_err(|e| Beat::Failed(describe_reqwest_error(&e)))?;
    match resp.status() {
        s if s.is_success() => Ok(()),
        StatusCode::CONFLICT => Err(Beat::Fenced(error_detail(resp).await.to_string())),
        // A 401 says why (most often: the registry has another cluster secret).
        s => Err(Beat::Failed(format!(
            "registry answered {s}: {}",
            error_detail(resp).await
        ))),
    }
}

/// Tells the registry this node is leaving on purpose (a graceful stop).
pub async fn deregister(node: &NodeState) {
    let Some(registry) = &node.registry else {
        return;
    };
    let body = DeregisterRequest {
        node_id: node.id.clone(),
        incarnation: Some(node.incarnation),
    };
    let sent = node
        .http
        .post(format!("{registry}/deregister"))
        .timeout(Duration::from_secs(2))
        .json(&body)
        .send()
        .await;
    if let Err(e) = sent {
        tracing::warn!(error = %describe_reqwest_error(&e), "could not deregister");
    }
}

//! Nodes started by someone else (`--runtime external`): `POST /join`.
//!
//! Compose, systemd or Kubernetes start `kvlab node --join URL`; the node
//! asks to be taken in, and from then on the coordinator supervises it as if
//! it had launched it: liveness by heartbeats, catch-up, failover. What it
//! cannot do is start or crash it: a dead node comes back when its own
//! supervisor restarts it, and the restart joins again.
//!
//! Rules:
//! - the first N + 1 distinct ids fill the cluster (the first one takes the
//!   leader's slot: at start an election picks the real leader anyway); a
//!   further new id is refused (409), so N never changes behind the quorum
//!   rule's back;
//! - a known id joining again is a restart of its slot: a new incarnation,
//!   which fences the old process everywhere (registry, leader, coordinator);
//! - a joined node counts only once its `/health` answers as that
//!   incarnation, as a launched one does.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use serde_json::json;

use super::cluster::Slot;
use super::failover;
use super::runtime::RuntimeKind;
use super::spawn::validate_node_id;
use super::{Coordinator, Shared};
use crate::api::{JoinRequest, JoinResponse, NodeStatus, Role};
use crate::events::EventKind;
use crate::http::{ApiError, ApiJson};

/// `POST /join`.
pub async fn join(
    State(c): Shared,
    ApiJson(req): ApiJson<JoinRequest>,
) -> Result<Json<JoinResponse>, ApiError> {
    if c.runtime.kind() != RuntimeKind::External {
        return Err(ApiError::conflict(json!({
            "error": "this coordinator starts its own nodes",
            "runtime": format!("{:?}", c.runtime.kind()).to_lowercase(),
            "hint": "run the coordinator (or kvlab up) with --runtime external to let nodes join"})));
    }
    validate_node_id(&req.node_id)?;
    let port = port_of(&req.url, crate::tls::tls_at(c.config.addr.ip()))?;
    let (slot, rejoin) = c.admit(&req.node_id, &req.url, port)?;
    // Saved before the node learns its incarnation: never handed out twice.
    c.save_map(0)
        .await
        .map_err(|e| ApiError::internal(format!("{e:#}")))?;
    if rejoin {
        c.events.info(
            EventKind::SlotReused,
            Some(&slot.node_id),
            format!(
                "♻️  {} joined again from {} (restarted by its supervisor): incarnation {}",
                slot.node_id, slot.url, slot.incarnation
            ),
        );
    }
    c.clone().watch_joined(slot.clone());
    let launch = &c.config.launch;
    Ok(Json(JoinResponse {
        node_id: slot.node_id,
        incarnation: slot.incarnation,
        registry: launch.registry.clone(),
        sync_delay: launch.sync_delay,
        async_delay: launch.async_delay,
        heartbeat_interval: launch.heartbeat_interval,
        log_retain: launch.log_retain,
    }))
}

/// The port of a node's URL: it orders the followers (the quorum sets).
/// `tls`: this cluster speaks TLS off loopback, so a node there must be
/// reached over https (a plain URL would carry the secret in clear text).
fn port_of(url: &str, tls: bool) -> Result<u16, ApiError> {
    let bad = |reason: &str| {
        ApiError::bad_request(json!({"error": "invalid url", "url": url, "reason": reason,
            "hint": "the URL others reach the node at, such as http://follower-1:7002"}))
    };
    let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if !["http", "https"].contains(&parsed.scheme()) || parsed.host().is_none() {
        return Err(bad("use http://HOST:PORT or https://HOST:PORT"));
    }
    let loopback = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        _ => false,
    };
    if tls && parsed.scheme() == "http" && !loopback {
        return Err(bad(
            "this cluster speaks TLS off loopback: advertise an https:// URL (and give the \
             node --tls-ca, --tls-cert and --tls-key)",
        ));
    }
    parsed.port_or_known_default().ok_or_else(|| bad("no port"))
}

impl Coordinator {
    /// Gives a joining node its slot and a new incarnation. Returns the slot
    /// and whether the id had one already (a restart).
    fn admit(&self, node_id: &str, url: &str, port: u16) -> Result<(Slot, bool), ApiError> {
        self.update(|c| {
            let incarnation = c.new_incarnation();
            let placeholder = c.leader.incarnation == 0;
            let rejoin = c.slot(node_id).is_some() && !placeholder;
            let full = !placeholder && c.followers.len() >= self.config.followers;
            if !rejoin && full {
                return Err(ApiError::conflict(json!({
                    "error": "the cluster is full",
                    "node_id": node_id,
                    "reason": format!(
                        "it has its leader and {} followers (--followers); a new id would \
                         change N behind the quorum rule's back", self.config.followers),
                    "hint": "join with the id of a slot to replace its node"})));
            }
            let slot = Slot {
                node_id: node_id.to_string(),
                role: Role::Follower,
                port,
                url: url.to_string(),
                status: NodeStatus::Starting,
                incarnation,
                pid: None,
            };
            if placeholder {
                // The first node takes the leader's slot (see the module doc).
                c.leader = Slot {
                    role: Role::Leader,
                    ..slot
                };
                return Ok((c.leader.clone(), false));
            }
            match c.slot_mut(node_id) {
                Some(existing) => {
                    *existing = Slot {
                        role: existing.role,
                        ..slot
                    };
                    c.followers.sort_by_key(|s| s.port);
                }
                None => c.add_follower(slot),
            }
            Ok((c.slot(node_id).cloned().expect("just set"), rejoin))
        })
    }

    /// Once the joined node answers as its incarnation, it is alive; after
    /// the start, a follower is caught up and a leader's restart elects.
    fn watch_joined(self: Arc<Self>, slot: Slot) {
        tokio::spawn(async move {
            // Nobody here sees an external process end: the watch never fires.
            let (_never, exited) = tokio::sync::watch::channel(None);
            let healthy = self.wait_healthy(&slot.url, slot.incarnation, exited).await;
            if let Err(reason) = healthy {
                self.mark(&slot.node_id, slot.incarnation, NodeStatus::Dead);
                self.events.bad(
                    EventKind::SpawnFailed,
                    Some(&slot.node_id),
                    format!("❌ {} joined but {reason}", slot.node_id),
                );
                return;
            }
            let why = format!("joined from {}", slot.url);
            self.transition(
                &slot.node_id,
                Some(slot.incarnation),
                NodeStatus::Alive,
                &why,
            )
            .await;
            if !self.ready.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            if self.snapshot().is_leader(&slot.node_id) {
                self.elect(failover::Reason::LeaderRestart).await;
            } else {
                self.report_catchup(slot);
            }
        });
    }

    /// `--runtime external`: waits until the leader's slot and N followers
    /// have joined and answer, saying how to start them.
    pub(super) async fn wait_for_joins(&self) {
        let cfg = &self.config;
        self.events.info(
            EventKind::ClusterStarting,
            None,
            format!(
                "⏳ waiting for {} nodes to join: start each with `kvlab node --join http://<this \
                 host>:{} --id <id> --port <port> --advertise http://<its host>:<port>`",
                cfg.followers + 1,
                cfg.addr.port()
            ),
        );
        loop {
            let c = self.snapshot();
            let alive = c.leader.is_alive() && c.alive_followers() >= cfg.followers;
            if alive {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_url_must_name_an_http_host() {
        assert_eq!(port_of("http://follower-1:7002", false).unwrap(), 7002);
        assert_eq!(port_of("http://10.0.0.5", false).unwrap(), 80);
        for bad in ["follower-1:7002", "ftp://x:1", "", "http://"] {
            assert!(port_of(bad, false).is_err(), "{bad}");
        }
        // Where the cluster speaks TLS, a node off loopback must too.
        assert_eq!(port_of("https://follower-1:7002", true).unwrap(), 7002);
        assert_eq!(port_of("http://127.0.0.1:7002", true).unwrap(), 7002);
        let e = port_of("http://follower-1:7002", true).unwrap_err();
        assert!(
            e.detail.to_string().contains("advertise an https://"),
            "{e:?}"
        );
    }
}

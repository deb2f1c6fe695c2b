//! `POST /spawn`: a new follower in a new slot, or a new process in a dead
//! slot (a respawn, the leader's included).
//!
//! Invariants:
//! - a slot is respawned only once it is dead or its process has exited, and
//!   its previous process is fenced first (crashed, and waited for), so a slot
//!   is served by at most one process and its port is free again;
//! - a respawn keeps the slot's port; a new slot gets one a node can listen on;
//! - a new slot that would make W + R <= N is refused unless asked (`grow`);
//! - no new slot past `MAX_SPAWNED_FOLLOWERS` followers (or the N the
//!   cluster started with), `grow` or not;
//! - a slot that never served is dropped when its start fails;
//! - the leader is respawned only on its data directory (not `--in-memory`),
//!   and an election follows; with `--runtime external` nothing is spawned.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::Json;
use serde_json::json;

use super::cluster::Cluster;
use super::failover;
use super::launcher;
use super::{Coordinator, Shared};
use crate::api::*;
use crate::events::EventKind;
use crate::http::ApiError;

impl Coordinator {
    /// Starts a node per `/spawn`'s rules; see [`spawn`].
    async fn spawn_node(self: &Arc<Self>, req: SpawnRequest) -> Result<SpawnResponse, ApiError> {
        if self.runtime.kind() == super::runtime::RuntimeKind::External {
            return Err(ApiError::conflict(json!({
                "error": "this coordinator does not start nodes (--runtime external)",
                "hint": "nodes join with `kvlab node --join`; restart a dead one with the \
                         tool that runs it (docker-compose, systemd, Kubernetes)"})));
        }
        let (node_id, port, reused) = self.choose_slot(&req)?;
        if let Some(old) = self.snapshot().slot(&node_id).cloned() {
            // Fence the previous process of this slot, if it still runs, and
            // wait for it to be gone so that its port is free again.
            self.crash_node(&old).await;
        }
        let role = if self.snapshot().is_leader(&node_id) {
            self.events.info(
                EventKind::LeaderRestart,
                Some(&node_id),
                format!(
                    "♻️  restarting the LEADER ({node_id}) on its data directory: it recovers \
                     its log, then an election makes the most advanced node the leader"
                ),
            );
            Role::Leader
        } else {
            if reused {
                let why = match self.snapshot().slot(&node_id) {
                    Some(s) if s.status != NodeStatus::Dead => {
                        ": its process has exited, though its heartbeat timeout has not run out yet"
                    }
                    _ => "",
                };
                self.events.info(
                    EventKind::SlotReused,
                    Some(&node_id),
                    format!(
                        "♻️  reusing the slot of {node_id} (port {port}) for a new process{why}"
                    ),
                );
            }
            Role::Follower
        };
        match self.start_slot(node_id.clone(), role, port).await {
            Ok(slot) => {
                if role == Role::Follower {
                    self.report_catchup(slot.clone());
                } else {
                    self.elect(failover::Reason::LeaderRestart).await;
                }
                Ok(SpawnResponse {
                    status: "spawned".into(),
                    node_id,
                    url: slot.url,
                    incarnation: slot.incarnation,
                })
            }
            Err(e) => {
                if !reused {
                    // A slot that never served is dropped, so that later
                    // spawns do not take it for a dead follower to reuse.
                    self.update(|c| c.followers.retain(|s| s.node_id != node_id));
                }
                self.events
                    .bad(EventKind::SpawnFailed, Some(&node_id), format!("❌ {e:#}"));
                Err(ApiError::internal(json!({
                    "error": "spawn failed", "node_id": node_id, "reason": format!("{e:#}"),
                    "slot_kept": reused})))
            }
        }
    }

    /// Which slot a `/spawn` starts: (id, port, whether an old slot is reused).
    fn choose_slot(&self, req: &SpawnRequest) -> Result<(String, u16, bool), ApiError> {
        let c = self.cluster.lock().unwrap();
        if let Some(id) = &req.node_id {
            let id = &c.resolve(id, true);
            validate_node_id(id)?;
            if c.is_leader(id) && self.config.launch.storage.is_none() {
                return Err(ApiError::conflict(
                    "the leader cannot be respawned in an --in-memory cluster: a new, empty leader would lose the log; run the cluster with a data directory (the default) to restart the leader on it",
                ));
            }
            return match c.slot(id) {
                Some(s) if s.status != NodeStatus::Dead && !self.has_exited(s) => {
                    Err(ApiError::conflict(json!({
                    "error": "node is not dead", "node_id": id, "status": s.status.as_str(),
                    "hint": "kill it first, or POST /spawn without a node_id for a new follower"})))
                }
                Some(s) => {
                    if req.port.is_some_and(|p| p != s.port) {
                        return Err(ApiError::bad_request(format!(
                            "{id} listens on port {}; a respawn keeps the slot's port",
                            s.port
                        )));
                    }
                    Ok((id.clone(), s.port, true))
                }
                None if req.existing_only => Err(ApiError::not_found(json!({
                    "error": "no such slot", "node_id": id,
                    "reason": "existing_only: only a slot this coordinator already has is restarted"}))),
                None => {
                    self.check_growth(&c, id, req.grow)?;
                    Ok((id.clone(), self.port_for_new_slot(&c, req.port)?, false))
                }
            };
        }
        // A dead slot first; else one whose process is known to have exited
        // although the registry has not noticed its silence yet (a crash a
        // moment ago). Reusing it keeps N as it is.
        let reusable = c
            .followers
            .iter()
            .find(|s| s.status == NodeStatus::Dead)
            .or_else(|| c.followers.iter().find(|s| self.has_exited(s)));
        if let Some(slot) = reusable {
            return Ok((slot.node_id.clone(), slot.port, true));
        }
        let id = format!("follower-{}", c.next_follower_number());
        self.check_growth(&c, &id, req.grow)?;
        let port = self.port_for_new_slot(&c, req.port)?;
        Ok((id, port, false))
    }

    /// Refuses a new slot that would make W + R <= N, unless asked (`grow`).
    /// With W + R > N every read set meets every sync set; one more follower
    /// can end that silently, and reads would then miss acknowledged writes.
    fn check_growth(&self, c: &Cluster, id: &str, grow: bool) -> Result<(), ApiError> {
        let (w, r, n) = (self.config.w, self.config.r, c.followers.len() + 1);
        let most = MAX_SPAWNED_FOLLOWERS.max(self.config.followers);
        if n > most {
            return Err(ApiError::conflict(json!({
                "error": "the cluster is at its largest",
                "node_id": id,
                "reason": format!(
                    "{id} would be follower number {n}; /spawn grows a cluster to at most \
                     {most} followers (each is a process and a port on this machine)"
                ),
                "hint": "respawn a dead follower instead (POST /spawn {\"node_id\": ...}), \
                         or start the cluster with more --followers"
            })));
        }
        if grow || w + r > n {
            return Ok(());
        }
        Err(ApiError::conflict(json!({
            "error": "spawn would break the quorum rule",
            "node_id": id,
            "reason": format!(
                "adding {id} makes N={n} with W={w} and R={r}: W + R = {} is not greater \
                 than N, so a read's {r} followers could all miss a write's {w} sync \
                 followers, and reads could return stale data",
                w + r
            ),
            "hint": "respawn a dead follower instead (POST /spawn {\"node_id\": ...}), \
                     or send {\"grow\": true} to grow N anyway"
        })))
    }

    /// The port of a new slot: the one asked for if a node can listen on
    /// it, else the next free one.
    fn port_for_new_slot(&self, c: &Cluster, asked: Option<u16>) -> Result<u16, ApiError> {
        let port = match asked {
            None => return free_port_after(c, &self.config),
            Some(0) => {
                return Err(ApiError::bad_request(json!({"error": "invalid port",
                    "reason": "port 0 would let the system pick one; name a port, or leave \"port\" out"})))
            }
            Some(p) => p,
        };
        launcher::check_port(&self.config.launch.host, port).map_err(|e| {
            ApiError::conflict(json!({
                "error": "port unusable",
                "port": port,
                "reason": format!("{e}: nothing was started and no slot was added"),
                "hint": "pick another port, or leave \"port\" out to get a free one"
            }))
        })?;
        Ok(port)
    }
}

/// A node id may be any short name of letters, digits, `-` and `_`.
pub(super) fn validate_node_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            json!({"error": "invalid node_id", "node_id": id,
            "reason": "use 1 to 64 letters, digits, '-' or '_'"}),
        ))
    }
}

/// The first port above every node's that nothing is listening on.
fn free_port_after(c: &Cluster, cfg: &super::Config) -> Result<u16, ApiError> {
    let highest = c
        .followers
        .iter()
        .map(|s| s.port)
        .chain([c.leader.port])
        .max()
        .unwrap_or(cfg.node_base_port);
    (highest.saturating_add(1)..=u16::MAX)
        .take(100)
        .find(|&p| launcher::port_is_free(&cfg.launch.host, p))
        .ok_or_else(|| ApiError::unavailable("no free port found for a new follower"))
}

// ---------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------

/// `POST /spawn`, body optional: `{"node_id"?, "port"?}`.
pub async fn spawn(
    State(c): Shared,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SpawnResponse>, ApiError> {
    let body = body.map_err(crate::http::body_rejection)?;
    let req: SpawnRequest = if body.iter().all(u8::is_ascii_whitespace) {
        SpawnRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(json!({"error": "invalid JSON body", "reason": e.to_string()}))
        })?
    };
    c.spawn_node(req).await.map(Json)
}

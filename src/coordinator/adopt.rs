//! Adoption: a coordinator started again on the same data directory takes
//! charge of the nodes that kept running while no coordinator was up,
//! instead of starting them again.
//!
//! For each slot of the map the previous coordinator saved (see [`super::state`]):
//! 1. `GET /health` (short timeout): a node that answers as the recorded
//!    incarnation is that very process;
//! 2. `POST /admin/adopt {epoch, incarnation, coordinator_pid}`: the node
//!    obeys the new epoch from now on and watches this process instead of
//!    the dead one (see `node::supervision`);
//! 3. a node that answers `leader` at the highest term any node reports
//!    keeps leading: no election, the term unchanged, and it is told its
//!    followers again. Otherwise the start runs an election, in a term above
//!    every node's.
//!
//! Slots that do not answer are started as usual, with new incarnations.
//!
//! Invariants: the term never goes down (the table takes the highest of the
//! map's and the nodes'); a cluster of another shape (N, W, R) is not adopted:
//! the start is refused, naming both shapes ([`ShapeMismatch`]).

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;

use super::cluster::{Cluster, Slot};
use super::Coordinator;
use crate::api::*;
use crate::control::{ClusterMap, SlotRecord};
use crate::events::EventKind;

/// How long a node has to answer the probe and the adoption.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How often an adopted process (not our child) is checked for its end.
const EXIT_POLL: Duration = Duration::from_millis(200);

/// What adoption found.
#[derive(Debug, Default)]
pub(super) struct Adopted {
    /// The slots whose running process was adopted.
    pub ids: Vec<String>,
    /// The adopted leader kept leading: no election is needed.
    pub leader_kept: bool,
}

/// Running nodes of another shape: they are not adopted.
#[derive(Debug, thiserror::Error)]
#[error(
    "{running} node(s) of this cluster still run (pids {pids:?}) with N={} W={} R={}, but this \
     coordinator was started with N={} W={} R={}: it will not adopt a cluster of another \
     shape. Start it with the same --followers, -W and -R, or with --fresh (which stops those \
     nodes and deletes the data)",
    found.0, found.1, found.2, asked.0, asked.1, asked.2
)]
pub(super) struct ShapeMismatch {
    running: usize,
    pids: Vec<u32>,
    found: (usize, usize, usize),
    asked: (usize, usize, usize),
}

impl Coordinator {
    /// Adopts the nodes of the previous coordinator that still run (see the
    /// module doc). The table then holds every slot of the map.
    pub(super) async fn adopt_running(self: &Arc<Self>) -> anyhow::Result<Adopted> {
        let Some(map) = self.control.found().filter(|m| !m.slots.is_empty()) else {
            return Ok(Adopted::default());
        };
        let probes = join_all(map.slots.iter().map(|s| self.probe_recorded(s))).await;
        let running: Vec<&SlotRecord> = map
            .slots
            .iter()
            .zip(&probes)
            .filter(|(_, p)| p.is_some())
            .map(|(s, _)| s)
            .collect();
        if running.is_empty() {
            return Ok(Adopted::default());
        }
        self.check_shape(&map, &running)?;
        self.take_table(&map);
        let asked = join_all(running.iter().map(|s| self.ask_adopt(s))).await;
        let mut adopted: Vec<(&SlotRecord, AdoptResponse)> = vec![];
        for (slot, answer) in running.into_iter().zip(asked) {
            match answer {
                Ok(a) => adopted.push((slot, a)),
                Err(why) => self.events.warn(
                    EventKind::NodeAdopted,
                    Some(&slot.node_id),
                    format!(
                        "⚠️  {} could not be adopted ({why}): it is started again",
                        slot.node_id
                    ),
                ),
            }
        }
        let leader_kept = self.keep_leader(&map, &adopted);
        // The leader first, so the followers are pushed to it as they come up.
        adopted.sort_by_key(|(s, _)| !self.snapshot().is_leader(&s.node_id));
        for (slot, answer) in &adopted {
            self.narrate_adopted(slot, answer);
            self.transition(
                &slot.node_id,
                Some(slot.incarnation),
                NodeStatus::Alive,
                "adopted",
            )
            .await;
            self.watch_adopted(slot);
        }
        self.save_map(0).await?;
        Ok(Adopted {
            ids: adopted.iter().map(|(s, _)| s.node_id.clone()).collect(),
            leader_kept,
        })
    }

    /// Step 1: is the recorded process still there, as that incarnation?
    async fn probe_recorded(&self, slot: &SlotRecord) -> Option<NodeHealth> {
        let resp = self
            .http
            .get(format!("{}/health", slot.url))
            .timeout(PROBE_TIMEOUT)
            .send()
            .await
            .ok()?;
        let health: NodeHealth = resp.json().await.ok()?;
        (health.node_id == slot.node_id && health.incarnation == slot.incarnation).then_some(health)
    }

    fn check_shape(&self, map: &ClusterMap, running: &[&SlotRecord]) -> anyhow::Result<()> {
        let cfg = &self.config;
        let (found, asked) = ((map.followers, map.w, map.r), (cfg.followers, cfg.w, cfg.r));
        let base = map
            .slots
            .iter()
            .find(|s| s.node_id == LEADER_ID)
            .map(|s| s.port);
        if base.is_some_and(|p| p != cfg.node_base_port) {
            let why = format!(
                "{} node(s) of this cluster still run on ports from {}, but this coordinator \
                 was started with --node-base-port {}: start it with the same ports to adopt \
                 them, or with --fresh (which stops them and deletes the data)",
                running.len(),
                base.unwrap_or_default(),
                cfg.node_base_port
            );
            self.events
                .bad(EventKind::StartRefused, None, format!("⛔ {why}"));
            anyhow::bail!(why);
        }
        if found == asked {
            return Ok(());
        }
        let refused = ShapeMismatch {
            running: running.len(),
            pids: running.iter().filter_map(|s| s.pid).collect(),
            found,
            asked,
        };
        self.events
            .bad(EventKind::StartRefused, None, format!("⛔ {refused}"));
        Err(refused.into())
    }

    /// The table becomes the map's: every slot, its role, incarnation and
    /// pid (still starting), the term and who led.
    fn take_table(&self, map: &ClusterMap) {
        let slot = |r: &SlotRecord| Slot {
            node_id: r.node_id.clone(),
            role: r.role,
            port: r.port,
            url: r.url.clone(),
            status: NodeStatus::Starting,
            incarnation: r.incarnation,
            pid: r.pid,
        };
        let leader_id = map.leader.clone().unwrap_or_else(|| LEADER_ID.to_string());
        let Some(leader) = map.slots.iter().find(|s| s.node_id == leader_id) else {
            return;
        };
        self.update(|c| {
            let mut table = Cluster::new(Slot {
                role: Role::Leader,
                ..slot(leader)
            });
            for r in map.slots.iter().filter(|s| s.node_id != leader_id) {
                table.add_follower(Slot {
                    role: Role::Follower,
                    ..slot(r)
                });
            }
            table.reserve_below(c.next_incarnation());
            table.term = c.term;
            *c = table;
        });
    }

    /// Step 2 for one node.
    async fn ask_adopt(&self, slot: &SlotRecord) -> Result<AdoptResponse, String> {
        let body = AdoptRequest {
            epoch: self.control.epoch,
            incarnation: slot.incarnation,
            coordinator_pid: (self.runtime.kind() == super::RuntimeKind::Process)
                .then(std::process::id),
            coordinator_url: self.control.me.url.clone(),
        };
        let resp = self
            .http
            .post(format!("{}/admin/adopt", slot.url))
            .timeout(PROBE_TIMEOUT)
            .json(&body)
            .send()
            .await
            .map_err(|e| crate::http::describe_reqwest_error(&e))?;
        if !resp.status().is_success() {
            let status = resp.status();
            return Err(format!(
                "{status}: {}",
                crate::http::error_detail(resp).await
            ));
        }
        resp.json().await.map_err(|e| e.to_string())
    }

    /// Step 3: a node leading at the highest term keeps leading. Returns
    /// whether one does; either way the table's term is the highest known.
    fn keep_leader(&self, map: &ClusterMap, adopted: &[(&SlotRecord, AdoptResponse)]) -> bool {
        let highest = adopted.iter().map(|(_, a)| a.term).max().unwrap_or(0);
        self.learn_term(highest.max(map.term));
        let leader = adopted
            .iter()
            .find(|(_, a)| a.role == Role::Leader && a.term == highest && highest >= map.term);
        let Some((slot, answer)) = leader else {
            return false;
        };
        self.update(|c| {
            c.promote(&slot.node_id);
            c.term = answer.term;
        });
        self.failover.confirm(slot.incarnation);
        self.events.good(
            EventKind::LeaderPromoted,
            Some(&slot.node_id),
            format!(
                "👑 {} still leads term {}: no election, the term stays, and it is told its \
                 followers again",
                slot.node_id, answer.term
            ),
        );
        true
    }

    fn narrate_adopted(&self, slot: &SlotRecord, answer: &AdoptResponse) {
        self.events.good(
            EventKind::NodeAdopted,
            Some(&slot.node_id),
            format!(
                "🤝 adopted {} (pid {}, incarnation {}, {} at term {}): it kept running while no \
                 coordinator was up; from now on it obeys epoch {} only",
                slot.node_id,
                answer.pid,
                answer.incarnation,
                answer.role.as_str(),
                answer.term,
                self.control.epoch
            ),
        );
    }

    /// The exit watch of a process this coordinator did not start: it is
    /// not our child, so its end is seen by polling for it.
    fn watch_adopted(self: &Arc<Self>, slot: &SlotRecord) {
        let Some(pid) = slot.pid else { return };
        let (tx, exited) = tokio::sync::watch::channel(None);
        tokio::spawn(async move {
            while crate::process::exists(pid) {
                tokio::time::sleep(EXIT_POLL).await;
            }
            let _ = tx.send(Some("ended".to_string()));
        });
        let spec = super::launcher::NodeSpec {
            node_id: slot.node_id.clone(),
            role: slot.role,
            port: slot.port,
            incarnation: slot.incarnation,
        };
        self.watch_exit(&spec, Some(pid), exited);
    }
}

//! Starting a slot's process: a new incarnation in the table, the launch
//! through the runtime, the health check, the watch on its exit, and the
//! repair of a follower whose data on disk is damaged (its log or term file).
//!
//! Invariants:
//! - every start takes a new incarnation, so the slot's previous process
//!   stops counting;
//! - a process always starts as a follower, and leads only once an election
//!   promotes it; the slot keeps its role;
//! - a slot is alive only once its `/health` answers as that incarnation
//!   (within [`START_TIMEOUT`]); a start that fails leaves the slot dead;
//! - a corrupt log is moved aside, never deleted, and rebuilt only for a
//!   follower of a cluster on disk, or at the cluster's start once a healthy
//!   node leads (see `startup`): a running leader slot is not.

use std::sync::Arc;
use std::time::Duration;

use super::cluster::Slot;
use super::launcher::{self, NodeSpec};
use super::Coordinator;
use crate::api::*;
use crate::events::EventKind;

/// A node exited at start because its data on disk is damaged: a corrupt
/// log, or a term file it cannot trust (it refused to serve).
#[derive(Debug, thiserror::Error)]
#[error(
    "{node_id} refused to serve: its data on disk is damaged ({reason}); see {}",
    log_file.display()
)]
pub(super) struct CorruptLogRefused {
    pub node_id: String,
    /// What recovery found: the segment and the offset of the damage, or
    /// why the term file cannot be trusted.
    pub reason: String,
    log_file: std::path::PathBuf,
}

/// What a node that refused to serve found, from the last lines of its log:
/// the damaged segment and offset, or why its term file cannot be trusted.
fn repair_reason(tail: &str) -> String {
    tail.lines()
        .rev()
        .find_map(|l| {
            let log = l.split_once("corrupt log segment");
            let log = log.map(|(_, rest)| format!("corrupt log segment{rest}"));
            log.or_else(|| l.split_once(NEEDS_REPAIR).map(|(_, why)| why.to_string()))
        })
        .unwrap_or_else(|| "a damaged record".to_string())
}

/// How long a started node has to answer its health check.
const START_TIMEOUT: Duration = Duration::from_secs(15);

impl Coordinator {
    /// Launches a fresh process for a slot (new or reused) and waits until it
    /// is healthy; then it is alive and, for a follower, in the leader's peers.
    /// A follower that refuses to serve because its log is corrupt is
    /// repaired: its directory is set aside and it starts again empty, to be
    /// rebuilt from the leader by a full catch-up. (A running leader slot is
    /// not: rebuilding it would need a failover first. At the cluster's start
    /// every node is repaired after the first election, see `startup`.)
    pub(super) async fn start_slot(
        self: &Arc<Self>,
        node_id: String,
        role: Role,
        port: u16,
    ) -> anyhow::Result<Slot> {
        match self.start_slot_once(node_id.clone(), role, port).await {
            Err(e) if e.is::<CorruptLogRefused>() && self.rebuildable(&node_id) => {
                self.set_aside_corrupt(&node_id, &e)?;
                self.start_slot_once(node_id, role, port).await
            }
            started => started,
        }
    }

    /// A follower slot of a cluster on disk: it can start empty and be
    /// rebuilt from the leader.
    fn rebuildable(&self, node_id: &str) -> bool {
        let c = self.cluster.lock().unwrap();
        self.config.launch.storage.is_some()
            && !c.is_leader(node_id)
            && c.slot(node_id).is_some_and(|s| s.role == Role::Follower)
    }

    /// A node refused to serve its damaged log at the cluster's start: it
    /// stays out of the election (its process has exited) until a healthy
    /// node leads; then [`Coordinator::set_aside_corrupt`] rebuilds it.
    pub(super) fn hold_for_repair(&self, refused: &CorruptLogRefused) {
        let id = &refused.node_id;
        self.repairs.lock().unwrap().insert(
            id.clone(),
            RepairView {
                node_id: id.clone(),
                state: "waiting".into(),
                found: refused.reason.clone(),
                moved_to: None,
            },
        );
        self.events.warn(
            EventKind::RepairNeeded,
            Some(id),
            format!(
                "🩺 {id} needs REPAIR: its data on disk is damaged ({}). It does not \
                 campaign or serve; the cluster elects the most \
                 advanced healthy node, and {id} is then rebuilt from it",
                refused.reason
            ),
        );
    }

    /// Moves a corrupt node's directory to `<dir>.corrupt-<unix time>`
    /// (kept for inspection), and says so in words a student can act on.
    pub(super) fn set_aside_corrupt(
        &self,
        node_id: &str,
        refused: &anyhow::Error,
    ) -> anyhow::Result<()> {
        let storage = self.config.launch.storage.as_ref().expect("rebuildable");
        let dir = storage.dir_of(node_id);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let aside = (0..)
            .map(|n| match n {
                0 => dir.with_file_name(format!("{node_id}.corrupt-{now}")),
                n => dir.with_file_name(format!("{node_id}.corrupt-{now}-{n}")),
            })
            .find(|p| !p.exists())
            .expect("some name is free");
        std::fs::rename(&dir, &aside).map_err(|e| {
            anyhow::anyhow!(
                "{refused:#}\n  and its data directory {} could not be moved aside: {e}",
                dir.display()
            )
        })?;
        let found = refused
            .downcast_ref::<CorruptLogRefused>()
            .map_or_else(|| "a damaged record".to_string(), |r| r.reason.clone());
        let why = format!(" ({found})");
        self.repairs.lock().unwrap().insert(
            node_id.to_string(),
            RepairView {
                node_id: node_id.to_string(),
                state: "rebuilt".into(),
                found,
                moved_to: Some(aside.display().to_string()),
            },
        );
        self.events.warn(
            EventKind::CorruptLogSetAside,
            Some(node_id),
            format!(
                "🩹 {node_id} refused to serve: its data on disk is damaged{why}. Its data \
                 directory was moved to {} (kept for you to inspect), and {node_id} starts \
                 again empty: the leader will send it everything (a full catch-up)",
                aside.display()
            ),
        );
        Ok(())
    }

    pub(super) async fn start_slot_once(
        self: &Arc<Self>,
        node_id: String,
        role: Role,
        port: u16,
    ) -> anyhow::Result<Slot> {
        let spec = {
            let mut table = self.cluster.lock().unwrap();
            let c = Arc::make_mut(&mut table);
            // A slot that already had a process is a respawn. (A leader
            // change is counted when the election promotes someone.)
            if c.slot(&node_id).is_some_and(|s| s.incarnation > 0) {
                self.metrics.respawns.inc();
            }
            let incarnation = c.new_incarnation();
            let url = self.config.node_url(port);
            // A slot keeps its role; the process always starts as a
            // follower, and leads only once an election promotes it.
            let role = c.slot(&node_id).map_or(role, |s| s.role);
            let slot = Slot {
                node_id: node_id.clone(),
                role,
                port,
                url,
                status: NodeStatus::Starting,
                incarnation,
                pid: None,
            };
            match c.slot_mut(&node_id) {
                Some(existing) => *existing = slot,
                None => c.add_follower(slot),
            }
            NodeSpec {
                node_id: node_id.clone(),
                role: Role::Follower,
                port,
                incarnation,
            }
        };
        // The incarnation is saved before its process exists: no later
        // coordinator hands it out again.
        if let Err(e) = self.save_map(0).await {
            self.mark(&node_id, spec.incarnation, NodeStatus::Dead);
            return Err(anyhow::anyhow!("cannot start {node_id}: {e:#}"));
        }
        let launched = match self.launch_node(&spec).await {
            Ok(l) => l,
            Err(e) => {
                self.mark(&node_id, spec.incarnation, NodeStatus::Dead);
                return Err(anyhow::anyhow!("cannot start {node_id}: {e:#}"));
            }
        };
        let slot_now = self.update(|c| {
            let s = c.slot_mut(&node_id).expect("slot exists");
            s.pid = launched.pid;
            s.url = launched.url.clone();
            s.clone()
        });
        // Its pid too: what a restarted coordinator adopts (or `--fresh` kills).
        if let Err(e) = self.save_map(0).await {
            self.events.warn(
                EventKind::ControlState,
                Some(&node_id),
                format!("⚠️  {e:#}"),
            );
        }
        self.watch_exit(&spec, launched.pid, launched.exited.clone());
        let healthy = self
            .wait_healthy(&launched.url, spec.incarnation, launched.exited.clone())
            .await;
        if let Err(reason) = healthy {
            self.crash_node(&slot_now).await;
            self.mark(&node_id, spec.incarnation, NodeStatus::Dead);
            let tail = launcher::log_tail(&launched.log_file, 5);
            if reason.contains(launcher::EXITED_CORRUPT_LOG) {
                let reason = repair_reason(&tail);
                return Err(CorruptLogRefused {
                    node_id,
                    reason,
                    log_file: launched.log_file,
                }
                .into());
            }
            anyhow::bail!(
                "{node_id} did not start: {reason}\n  last lines of {}:\n{tail}",
                launched.log_file.display()
            );
        }
        self.transition(
            &node_id,
            Some(spec.incarnation),
            NodeStatus::Alive,
            "started",
        )
        .await;
        let slot = self.snapshot().slot(&node_id).cloned();
        Ok(slot.expect("slot exists"))
    }

    /// Polls the node's `/health` until it answers as the right incarnation.
    pub(super) async fn wait_healthy(
        &self,
        node_url: &str,
        incarnation: u64,
        mut exited: tokio::sync::watch::Receiver<Option<String>>,
    ) -> Result<(), String> {
        let url = format!("{node_url}/health");
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Some(reason) = exited.borrow_and_update().clone() {
                return Err(format!("the process {reason}"));
            }
            if let Ok(resp) = self
                .http
                .get(&url)
                .timeout(Duration::from_millis(500))
                .send()
                .await
            {
                if let Ok(h) = resp.json::<NodeHealth>().await {
                    if h.incarnation == incarnation {
                        return Ok(());
                    }
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("no answer from {url} within {START_TIMEOUT:?}"));
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(25)) => {},
                _ = exited.changed() => {},
            }
        }
    }

    /// Narrates a process ending. Liveness is decided by heartbeats (that is
    /// what the lab shows), so this only reports.
    pub(super) fn watch_exit(
        self: &Arc<Self>,
        spec: &NodeSpec,
        pid: Option<u32>,
        mut exited: tokio::sync::watch::Receiver<Option<String>>,
    ) {
        let c = self.clone();
        let (id, inc) = (spec.node_id.clone(), spec.incarnation);
        tokio::spawn(async move {
            if exited.wait_for(|e| e.is_some()).await.is_ok() {
                let reason = exited.borrow().clone().unwrap_or_default();
                c.events.warn(
                    EventKind::ProcessExit,
                    Some(&id),
                    format!(
                        "⚰️  process of {id} ({}incarnation {inc}) {reason}",
                        pid.map(|p| format!("pid {p}, ")).unwrap_or_default()
                    ),
                );
            }
        });
    }
}

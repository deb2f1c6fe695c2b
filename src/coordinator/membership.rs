//! Membership: starting, killing, respawning and catching up nodes, and
//! keeping the leader's idea of its followers in step with the table.
//!
//! Every change goes through [`Coordinator::transition`], which holds the
//! membership lock, updates the table, tells the leader the new follower set,
//! and narrates what changed (including quorum gained or lost).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::cluster::{Cluster, Slot};
use super::failover;
use super::launcher::{self, NodeSpec};
use super::{Coordinator, Shared};
use crate::api::*;
use crate::events::EventKind;
use crate::http::{describe_reqwest_error, error_detail, ApiError, ApiJson};
use crate::process::exists as process_exists;

/// A node exited at start because its log is corrupt (it refused to serve).
#[derive(Debug, thiserror::Error)]
#[error(
    "{node_id} refused to serve: its log on disk is corrupt ({reason}); see {}",
    log_file.display()
)]
struct CorruptLogRefused {
    node_id: String,
    /// What recovery found: the segment and the offset of the damage.
    reason: String,
    log_file: std::path::PathBuf,
}

/// How long a started node has to answer its health check.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `/catchup` waits for a follower to hold the whole log.
const CATCHUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Background duties: the per-second event summary, re-telling the leader
/// its followers every 2 s (so a push that failed is repaired), and the
/// liveness reconciliation (see [`super::liveness`]). One task: aborting it
/// stops them all.
pub fn start_background(c: Arc<Coordinator>) -> tokio::task::JoinHandle<()> {
    let reconciler = super::liveness::run(c.clone());
    let duties = async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut n: u64 = 0;
        loop {
            tick.tick().await;
            c.events.summarise();
            n += 1;
            if n.is_multiple_of(2) {
                let _guard = c.membership.lock().await;
                c.push_peers(&c.snapshot()).await;
            }
        }
    };
    tokio::spawn(async move {
        tokio::join!(duties, reconciler);
    })
}

impl Coordinator {
    /// Starts the leader and the N followers, and waits until all answer.
    pub async fn start_cluster(self: &Arc<Self>) -> anyhow::Result<()> {
        let cfg = &self.config;
        let (sd, ad) = (cfg.launch.sync_delay, cfg.launch.async_delay);
        self.events.info(
            EventKind::ClusterStarting,
            None,
            format!(
                "🚀 cluster starting: leader + {} followers, W={} R={}, registry {}, \
                 delays sync {sd} s / async {ad} s, node logs in {}",
                cfg.followers,
                cfg.w,
                cfg.r,
                cfg.launch.registry.as_deref().unwrap_or("none"),
                cfg.launch.log_dir.display()
            ),
        );
        let kind = self.runtime.kind();
        let external = kind == super::runtime::RuntimeKind::External;
        if kind == super::runtime::RuntimeKind::Process {
            // Containers keep their data in volumes, external nodes where
            // their own flags say.
            self.prepare_data_dir()?;
        }
        self.prepare_runtime().await?;
        if external {
            self.wait_for_joins().await;
        } else {
            let mut starts =
                vec![self.start_slot(LEADER_ID.to_string(), Role::Leader, cfg.node_base_port)];
            for i in 1..=cfg.followers {
                let port = cfg.node_base_port + i as u16;
                starts.push(self.start_slot(format!("follower-{i}"), Role::Follower, port));
            }
            for result in futures::future::join_all(starts).await {
                result?;
            }
        }
        // Every leader start is an election: the most advanced node leads
        // (on a fresh cluster, every log is empty and `leader` keeps it).
        let mut elected = false;
        for _ in 0..3 {
            elected = self.elect(failover::Reason::Start).await;
            if elected {
                break;
            }
        }
        if !elected {
            anyhow::bail!("no node could be made the leader (see the events above)");
        }
        let c = self.snapshot();
        self.ready.store(true, std::sync::atomic::Ordering::Relaxed);
        self.events.good(
            EventKind::ClusterReady,
            None,
            format!(
                "✅ cluster ready: {} alive followers, can write: {}, can read: {}",
                c.alive_followers(),
                c.can_write(cfg.w),
                c.can_read(cfg.r)
            ),
        );
        let roles: Vec<String> = std::iter::once(&c.leader)
            .chain(c.followers.iter())
            .map(|slot| format!("{} [{}]", slot.node_id, self.role_tag(&c, slot)))
            .collect();
        self.events.info(
            EventKind::Roles,
            None,
            format!("🧭 roles: {}", roles.join(", ")),
        );
        Ok(())
    }

    /// `LEADER`, or a follower's sets in capitals (`SYNC+READ`), `-` for
    /// none (a dead follower).
    fn role_tag(&self, cluster: &Cluster, slot: &Slot) -> String {
        if slot.role == Role::Leader {
            return "LEADER".into();
        }
        let sets = cluster.sets(self.config.w, self.config.r);
        let tag = cluster
            .view(slot, &sets)
            .sets
            .iter()
            .map(|s| s.to_uppercase())
            .collect::<Vec<_>>()
            .join("+");
        if tag.is_empty() {
            "-".into()
        } else {
            tag
        }
    }

    /// Says where the nodes keep their data, wiping it first with `--fresh`.
    fn prepare_data_dir(&self) -> anyhow::Result<()> {
        let Some(storage) = &self.config.launch.storage else {
            self.events.info(
                EventKind::Storage,
                None,
                "💾 in-memory cluster: a node that stops loses its data (--in-memory)",
            );
            return Ok(());
        };
        let dir = &storage.base_dir;
        if storage.fresh && dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| {
                anyhow::anyhow!(
                    "cannot wipe the data directory {} (--fresh): {e}",
                    dir.display()
                )
            })?;
        }
        let recovering = dir.exists();
        self.events.info(
            EventKind::Storage,
            None,
            format!(
                "💾 nodes persist to {}/<node-id> with --fsync {}{}",
                dir.display(),
                storage.fsync.name(),
                if recovering {
                    " (existing data: nodes recover it; --fresh starts empty)"
                } else {
                    ""
                }
            ),
        );
        Ok(())
    }

    /// Launches a fresh process for a slot (new or reused) and waits until it
    /// is healthy; then it is alive and, for a follower, in the leader's peers.
    /// A follower that refuses to serve because its log is corrupt is
    /// repaired: its directory is set aside and it starts again empty, to be
    /// rebuilt from the leader by a full catch-up. (A corrupt leader is not:
    /// rebuilding it would need a failover first.)
    async fn start_slot(
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

    /// Moves a corrupt follower's directory to `<dir>.corrupt-<unix time>`
    /// (kept for inspection), and says so in words a student can act on.
    fn set_aside_corrupt(&self, node_id: &str, refused: &anyhow::Error) -> anyhow::Result<()> {
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
        let why = refused
            .downcast_ref::<CorruptLogRefused>()
            .map_or_else(String::new, |r| format!(" ({})", r.reason));
        self.events.warn(
            EventKind::CorruptLogSetAside,
            Some(node_id),
            format!(
                "🩹 {node_id} refused to serve: its log on disk is corrupt{why}. Its data \
                 directory was moved to {} (kept for you to inspect), and {node_id} starts \
                 again empty: the leader will send it everything (a full catch-up)",
                aside.display()
            ),
        );
        Ok(())
    }

    async fn start_slot_once(
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
        self.watch_exit(&spec, launched.pid, launched.exited.clone());
        let healthy = self
            .wait_healthy(&launched.url, spec.incarnation, launched.exited.clone())
            .await;
        if let Err(reason) = healthy {
            self.crash_node(&slot_now).await;
            self.mark(&node_id, spec.incarnation, NodeStatus::Dead);
            let tail = launcher::log_tail(&launched.log_file, 5);
            if reason.contains(launcher::EXITED_CORRUPT_LOG) {
                let reason = tail
                    .lines()
                    .rev()
                    .find_map(|l| l.split_once("corrupt log segment"))
                    .map_or_else(
                        || "a damaged record".to_string(),
                        |(_, rest)| format!("corrupt log segment{rest}"),
                    );
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

    pub(super) fn mark(&self, node_id: &str, incarnation: u64, status: NodeStatus) {
        let mut table = self.cluster.lock().unwrap();
        let c = Arc::make_mut(&mut table);
        if let Some(s) = c.slot_mut(node_id) {
            if s.incarnation == incarnation {
                s.status = status;
            }
        }
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
    fn watch_exit(
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

    /// Changes a node's status (if `incarnation` still serves the slot), tells
    /// the leader, and narrates the change. Returns false if nothing changed.
    pub async fn transition(
        &self,
        node_id: &str,
        incarnation: Option<u64>,
        status: NodeStatus,
        why: &str,
    ) -> bool {
        let _guard = self.membership.lock().await;
        let before = self.snapshot();
        let Some(slot) = before.slot(node_id) else {
            return false;
        };
        if incarnation.is_some_and(|i| i != slot.incarnation) || slot.status == status {
            return false;
        }
        let mut after = Cluster::clone(&before);
        after.slot_mut(node_id).expect("slot exists").status = status;
        // Tell the leader first, so a write never waits on a follower the
        // leader does not stream to yet.
        let is_leader = after.is_leader(node_id);
        if status == NodeStatus::Alive || !is_leader {
            self.push_peers(&after).await;
        }
        // Only the status changes: the table may have changed during the
        // push (a node joining, say, which does not take the membership
        // lock), and writing back the whole copy would undo that.
        let incarnation = slot.incarnation;
        self.update(|c| {
            if let Some(s) = c.slot_mut(node_id).filter(|s| s.incarnation == incarnation) {
                s.status = status;
            }
        });
        self.narrate_transition(&before, &after, node_id, status, why);
        if is_leader && status == NodeStatus::Dead {
            self.failover.wake.notify_one();
        }
        true
    }

    fn narrate_transition(
        &self,
        before: &Cluster,
        after: &Cluster,
        node_id: &str,
        status: NodeStatus,
        why: &str,
    ) {
        let (w, r) = (self.config.w, self.config.r);
        let slot = after.slot(node_id).expect("slot exists");
        // While the cluster starts, the sets change with every node that
        // comes up, so a tag would be wrong; `start` prints the real ones
        // once everyone is up.
        let tag = if self.ready.load(std::sync::atomic::Ordering::Relaxed) {
            format!(" [{}]", self.role_tag(after, slot))
        } else {
            String::new()
        };
        match status {
            NodeStatus::Alive => self.events.good(
                EventKind::NodeUp,
                Some(node_id),
                format!(
                    "🟢 {node_id} is up on :{}{tag} (incarnation {}, {why})",
                    slot.port, slot.incarnation
                ),
            ),
            NodeStatus::Dead => self.events.bad(
                EventKind::NodeDead,
                Some(node_id),
                format!("🔴 {node_id} is DOWN ({why})"),
            ),
            NodeStatus::Starting => {}
        }
        if after.is_leader(node_id) && status == NodeStatus::Dead {
            self.events.bad(
                EventKind::LeaderDead,
                Some(node_id),
                format!(
                    "👑 the LEADER ({node_id}, term {}) is down: writes wait for a failover \
                     to a follower; reads still work",
                    after.term
                ),
            );
        }
        if !self.ready.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let (could_w, can_w) = (before.can_write(w), after.can_write(w));
        let (could_r, can_r) = (before.can_read(r), after.can_read(r));
        let alive = after.alive_followers();
        if could_w && !can_w {
            self.events.bad(
                EventKind::WriteQuorumLost,
                None,
                format!(
                    "⛔ WRITE QUORUM LOST: leader {}, {alive} alive followers, W={w}",
                    if after.leader.is_alive() {
                        "alive"
                    } else {
                        "down"
                    }
                ),
            );
        } else if !could_w && can_w {
            self.events.good(
                EventKind::WriteQuorumBack,
                None,
                format!("✅ write quorum available again: {alive} alive followers, W={w}"),
            );
        }
        if could_r && !can_r {
            self.events.bad(
                EventKind::ReadQuorumLost,
                None,
                format!("⛔ READ QUORUM LOST: {alive} alive followers, R={r}"),
            );
        } else if !could_r && can_r {
            self.events.good(
                EventKind::ReadQuorumBack,
                None,
                format!("✅ read quorum available again: {alive} alive followers, R={r}"),
            );
        }
    }

    /// Tells the leader which followers to stream to, and which are sync.
    /// Call with the membership lock held.
    pub(super) async fn push_peers(&self, cluster: &Cluster) {
        if cluster.leader.status == NodeStatus::Dead {
            return;
        }
        let sets = cluster.sets(self.config.w, self.config.r);
        // With fewer than W alive followers there is no sync set, but the
        // lowest-port ones still get the sync delay: they are the sync set
        // as soon as enough come back.
        let alive: Vec<usize> = (0..cluster.followers.len())
            .filter(|&i| cluster.followers[i].is_alive())
            .collect();
        let peers = alive
            .iter()
            .enumerate()
            .map(|(rank, &i)| {
                let s = &cluster.followers[i];
                PeerConfig {
                    node_id: s.node_id.clone(),
                    url: s.url.clone(),
                    incarnation: s.incarnation,
                    sync: sets.sync.contains(&i) || (sets.sync.is_empty() && rank < self.config.w),
                }
            })
            .collect::<Vec<PeerConfig>>();
        if let Some(hosts) = self.config.launch.netns.clone() {
            // `--lab-delays netem`: the delays go on the links before the
            // leader streams on them.
            let links: Vec<(u16, bool)> = alive
                .iter()
                .zip(&peers)
                .map(|(&i, p)| (cluster.followers[i].port, p.sync))
                .collect();
            let leader = cluster.leader.port;
            let _ = tokio::task::spawn_blocking(move || hosts.set_lab_delays(leader, &links)).await;
        }
        let url = format!("{}/replication/peers", cluster.leader.url);
        let sent = self
            .http
            .put(&url)
            .header(HEADER_TERM, cluster.term)
            .timeout(Duration::from_secs(2))
            .json(&PeerSet { peers })
            .send()
            .await;
        if let Err(e) = sent {
            tracing::debug!(error = %describe_reqwest_error(&e), "could not tell the leader its followers");
        }
    }

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
pub async fn spawn(State(c): Shared, body: Bytes) -> Result<Json<SpawnResponse>, ApiError> {
    let req: SpawnRequest = if body.iter().all(u8::is_ascii_whitespace) {
        SpawnRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(json!({"error": "invalid JSON body", "reason": e.to_string()}))
        })?
    };
    c.spawn_node(req).await.map(Json)
}

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

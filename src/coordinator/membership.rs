//! Membership: changing a node's status in the table, and keeping the
//! leader's idea of its followers in step with the table.
//!
//! Every change goes through [`Coordinator::transition`], which holds the
//! membership lock, updates the table, tells the leader the new follower set,
//! and narrates what changed (including quorum gained or lost).
//!
//! The jobs that cause the changes have files of their own: starting the
//! cluster ([`super::startup`]), starting a slot's process ([`super::slots`]),
//! `/spawn` ([`super::spawn`]), `/kill` and the final stop ([`super::kill`]),
//! catch-up ([`super::catchup`]), and the registry's notices of deaths and
//! revivals ([`super::notices`]).
//!
//! Invariants:
//! - the leader is told the new follower set before the table counts a
//!   follower alive, so a write never waits on a follower the leader does not
//!   stream to yet;
//! - a transition changes only the status of the incarnation it was asked
//!   about: a newer process of the slot is left alone;
//! - the follower set is pushed again every 2 s, so a push that failed is
//!   repaired.

use std::sync::Arc;
use std::time::Duration;

use super::cluster::{Cluster, Slot};
use super::Coordinator;
use crate::api::*;
use crate::events::EventKind;
use crate::http::describe_reqwest_error;

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

    pub(super) fn mark(&self, node_id: &str, incarnation: u64, status: NodeStatus) {
        let mut table = self.cluster.lock().unwrap();
        let c = Arc::make_mut(&mut table);
        if let Some(s) = c.slot_mut(node_id) {
            if s.incarnation == incarnation {
                s.status = status;
            }
        }
    }

    /// `LEADER`, or a follower's sets in capitals (`SYNC+READ`), `-` for
    /// none (a dead follower).
    pub(super) fn role_tag(&self, cluster: &Cluster, slot: &Slot) -> String {
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
}

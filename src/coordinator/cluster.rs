//! The coordinator's table of nodes, and the quorum sets derived from it.
//!
//! The sets are the heart of the lab's lesson, so they are computed by one
//! pure function, [`QuorumSets::of`], straight from docs/api.md ("Quorums"):
//! - the **sync set**: the W alive followers with the lowest ports;
//! - the **async set**: the other alive followers;
//! - the **read set**: the R alive followers with the highest ports.
//!
//! W + R > N makes the sync and read sets overlap on every follower count the
//! cluster can have while writes succeed, so no read is stale.

use crate::api::{NodeStatus, NodeView, PeerRef, Role};

/// One process slot: a node id, its port, and the process now serving it.
#[derive(Debug, Clone)]
pub struct Slot {
    pub node_id: String,
    pub role: Role,
    pub port: u16,
    pub url: String,
    pub status: NodeStatus,
    /// Which process serves the slot; every (re)spawn gets a new one.
    pub incarnation: u64,
    pub pid: Option<u32>,
}

impl Slot {
    pub fn peer_ref(&self) -> PeerRef {
        PeerRef {
            node_id: self.node_id.clone(),
            incarnation: self.incarnation,
        }
    }

    pub fn is_alive(&self) -> bool {
        self.status == NodeStatus::Alive
    }
}

/// The sets of one moment, as indexes into the follower list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QuorumSets {
    pub sync: Vec<usize>,
    pub asynchronous: Vec<usize>,
    pub read: Vec<usize>,
}

impl QuorumSets {
    /// `followers` must be sorted by port. Sets are empty when there are not
    /// enough alive followers for them (W or R).
    pub fn of(followers: &[Slot], w: usize, r: usize) -> QuorumSets {
        let alive: Vec<usize> = (0..followers.len())
            .filter(|&i| followers[i].is_alive())
            .collect();
        let sync: Vec<usize> = if alive.len() >= w {
            alive[..w].to_vec()
        } else {
            vec![]
        };
        let asynchronous = alive
            .iter()
            .copied()
            .filter(|i| !sync.contains(i))
            .collect();
        let read = if alive.len() >= r {
            alive[alive.len() - r..].to_vec()
        } else {
            vec![]
        };
        QuorumSets {
            sync,
            asynchronous,
            read,
        }
    }
}

/// All slots: the leader and the followers, sorted by port.
///
/// Which slot leads changes on failover ([`Cluster::promote`]); node ids do
/// not: a promoted `follower-2` keeps its id, and the node `leader` may be a
/// follower. The id `leader` in the API is an alias ([`Cluster::resolve`]).
#[derive(Debug, Clone)]
pub struct Cluster {
    pub leader: Slot,
    pub followers: Vec<Slot>,
    next_incarnation: u64,
    /// The current leadership term (0 before the first promotion).
    pub term: u64,
}

impl Cluster {
    pub fn new(leader: Slot) -> Self {
        Cluster {
            leader,
            followers: vec![],
            next_incarnation: 1,
            term: 0,
        }
    }

    /// The node id an API caller means: `node:<id>` names the node `<id>`
    /// exactly; `leader` names the current leader, unless `prefer_dead` and
    /// the current leader is alive while the node *called* `leader` is a
    /// dead follower (a respawn of the old leader).
    pub fn resolve(&self, id: &str, prefer_dead: bool) -> String {
        if let Some(exact) = id.strip_prefix(crate::api::NODE_ID_PREFIX) {
            return exact.to_string();
        }
        if id != crate::api::LEADER_ID {
            return id.to_string();
        }
        let named = self.followers.iter().find(|s| s.node_id == id);
        match named {
            Some(s) if prefer_dead && self.leader.is_alive() && !s.is_alive() => id.to_string(),
            _ => self.leader.node_id.clone(),
        }
    }

    /// Makes the follower `node_id` the leader: the old leader's slot
    /// becomes a follower slot (ids and ports stay), kept sorted by port.
    /// Does nothing if `node_id` leads already or is unknown.
    pub fn promote(&mut self, node_id: &str) {
        let Some(i) = self.followers.iter().position(|s| s.node_id == node_id) else {
            return;
        };
        let mut new_leader = self.followers.remove(i);
        new_leader.role = Role::Leader;
        let mut old = std::mem::replace(&mut self.leader, new_leader);
        old.role = Role::Follower;
        self.add_follower(old);
    }

    /// A number no process of this coordinator has had.
    pub fn new_incarnation(&mut self) -> u64 {
        let n = self.next_incarnation;
        self.next_incarnation += 1;
        n
    }

    /// The incarnation the next process gets (for the control state).
    pub fn next_incarnation(&self) -> u64 {
        self.next_incarnation
    }

    /// Never hands out a number below `n` (what a previous coordinator of
    /// this cluster may have used).
    pub fn reserve_below(&mut self, n: u64) {
        self.next_incarnation = self.next_incarnation.max(n);
    }

    /// The slot of this exact node id (no alias; see [`Cluster::resolve`]).
    pub fn slot(&self, node_id: &str) -> Option<&Slot> {
        if node_id == self.leader.node_id {
            return Some(&self.leader);
        }
        self.followers.iter().find(|s| s.node_id == node_id)
    }

    pub fn slot_mut(&mut self, node_id: &str) -> Option<&mut Slot> {
        if node_id == self.leader.node_id {
            return Some(&mut self.leader);
        }
        self.followers.iter_mut().find(|s| s.node_id == node_id)
    }

    pub fn is_leader(&self, node_id: &str) -> bool {
        self.leader.node_id == node_id
    }

    pub fn add_follower(&mut self, slot: Slot) {
        self.followers.push(slot);
        self.followers.sort_by_key(|s| s.port);
    }

    pub fn alive_followers(&self) -> usize {
        self.followers.iter().filter(|s| s.is_alive()).count()
    }

    pub fn can_write(&self, w: usize) -> bool {
        self.leader.is_alive() && self.alive_followers() >= w
    }

    pub fn can_read(&self, r: usize) -> bool {
        self.alive_followers() >= r
    }

    pub fn sets(&self, w: usize, r: usize) -> QuorumSets {
        QuorumSets::of(&self.followers, w, r)
    }

    /// The follower slots that the next plain `/spawn` would reuse, lowest port first.
    pub fn first_dead_follower(&self) -> Option<&Slot> {
        self.followers.iter().find(|s| s.status == NodeStatus::Dead)
    }

    /// The next unused `follower-<n>` number.
    pub fn next_follower_number(&self) -> usize {
        self.followers
            .iter()
            .filter_map(|s| s.node_id.strip_prefix("follower-")?.parse::<usize>().ok())
            .max()
            .unwrap_or(0)
            + 1
    }

    /// The `/status` view of a slot, with the sets it belongs to.
    pub fn view(&self, slot: &Slot, sets: &QuorumSets) -> NodeView {
        let mut tags = vec![];
        if let Some(i) = self
            .followers
            .iter()
            .position(|s| s.node_id == slot.node_id)
        {
            if sets.sync.contains(&i) {
                tags.push("sync".to_string());
            }
            if sets.asynchronous.contains(&i) {
                tags.push("async".to_string());
            }
            if sets.read.contains(&i) {
                tags.push("read".to_string());
            }
        }
        NodeView {
            node_id: slot.node_id.clone(),
            url: slot.url.clone(),
            status: slot.status,
            port: slot.port,
            incarnation: slot.incarnation,
            pid: slot.pid,
            sets: tags,
            role: Some(slot.role),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follower(i: usize, alive: bool) -> Slot {
        Slot {
            node_id: format!("follower-{i}"),
            role: Role::Follower,
            port: 7001 + i as u16,
            url: String::new(),
            status: if alive {
                NodeStatus::Alive
            } else {
                NodeStatus::Dead
            },
            incarnation: i as u64,
            pid: None,
        }
    }

    #[test]
    fn sets_follow_ports() {
        let f: Vec<Slot> = (1..=3).map(|i| follower(i, true)).collect();
        let sets = QuorumSets::of(&f, 2, 2);
        assert_eq!(sets.sync, vec![0, 1]);
        assert_eq!(sets.asynchronous, vec![2]);
        assert_eq!(sets.read, vec![1, 2]);
    }

    #[test]
    fn overlap_iff_w_plus_r_exceeds_n() {
        for n in 1..=6 {
            let f: Vec<Slot> = (1..=n).map(|i| follower(i, true)).collect();
            for w in 1..=n {
                for r in 1..=n {
                    let sets = QuorumSets::of(&f, w, r);
                    let overlap = sets.sync.iter().any(|i| sets.read.contains(i));
                    assert_eq!(overlap, w + r > n, "n={n} w={w} r={r}");
                }
            }
        }
    }

    #[test]
    fn dead_followers_are_skipped() {
        let f = vec![follower(1, false), follower(2, true), follower(3, true)];
        let sets = QuorumSets::of(&f, 2, 1);
        assert_eq!(sets.sync, vec![1, 2]);
        assert!(sets.asynchronous.is_empty());
        assert_eq!(sets.read, vec![2]);
        let sets = QuorumSets::of(&f, 3, 3);
        assert!(sets.sync.is_empty() && sets.read.is_empty());
        assert_eq!(sets.asynchronous, vec![1, 2]);
    }

    #[test]
    fn next_follower_number_skips_used() {
        let mut c = Cluster::new(follower(0, true));
        assert_eq!(c.next_follower_number(), 1);
        c.add_follower(follower(1, true));
        c.add_follower(follower(4, false));
        assert_eq!(c.next_follower_number(), 5);
        assert_eq!(c.first_dead_follower().unwrap().node_id, "follower-4");
    }

    #[test]
    fn promotion_swaps_slots_and_keeps_ids() {
        let mut leader = follower(0, false);
        leader.node_id = "leader".into();
        leader.role = Role::Leader;
        let mut c = Cluster::new(leader);
        for i in 1..=3 {
            c.add_follower(follower(i, true));
        }
        assert_eq!(c.resolve("leader", false), "leader");
        c.promote("follower-2");
        assert_eq!(c.leader.node_id, "follower-2");
        assert_eq!(c.leader.role, Role::Leader);
        let ids: Vec<&str> = c.followers.iter().map(|s| s.node_id.as_str()).collect();
        assert_eq!(ids, ["leader", "follower-1", "follower-3"]);
        assert_eq!(c.followers[0].role, Role::Follower);
        // `leader` names the current leader; a respawn may mean the dead
        // node called `leader`.
        assert_eq!(c.resolve("leader", false), "follower-2");
        assert_eq!(c.resolve("leader", true), "leader");
        assert_eq!(c.resolve("follower-1", true), "follower-1");
        assert_eq!(
            c.resolve("node:leader", false),
            "leader",
            "by id: the follower"
        );
        assert_eq!(c.resolve("node:follower-2", false), "follower-2");
        c.promote("nobody");
        assert_eq!(c.leader.node_id, "follower-2");
    }
}

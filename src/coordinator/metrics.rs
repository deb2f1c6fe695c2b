//! The coordinator's metrics: the client-facing write and read paths, the
//! quorum arithmetic, and the supervisor's respawns and catch-ups.
//!
//! The quorum gauges are what the CloudCart incidents turn on: INC-3 is
//! `kvlab_quorum_overlap` at or below 0 (W + R <= N, a read can miss the
//! latest write), INC-4 is `kvlab_alive_followers` below `kvlab_write_quorum`
//! (writes refused), INC-5 is `kvlab_nodes` (each node costs money).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::cluster::Cluster;
use crate::metrics::{Histogram, ResultLabel, LATENCY_BUCKETS};

pub struct CoordinatorMetrics {
    pub registry: Registry,
    pub writes_ok: Counter,
    pub writes_failed: Counter,
    pub reads_ok: Counter,
    pub reads_not_found: Counter,
    pub reads_failed: Counter,
    pub write_seconds: Histogram,
    pub read_seconds: Histogram,
    /// Sync acknowledgements counted by successful and failed writes.
    pub quorum_acks: Counter,
    pub respawns: Counter,
    pub catchups: Counter,
    pub leader_changes: Counter,
    nodes: Gauge,
    followers: Gauge,
    alive_followers: Gauge,
    write_quorum: Gauge,
    read_quorum: Gauge,
    overlap: Gauge,
    leader_alive: Gauge,
}

impl CoordinatorMetrics {
    pub fn new(w: usize, r: usize) -> Self {
        let mut registry = crate::metrics::registry("coordinator");
        let writes = Family::<ResultLabel, Counter>::default();
        let reads = Family::<ResultLabel, Counter>::default();
        let by = |f: &Family<ResultLabel, Counter>, result| {
            f.get_or_create(&ResultLabel { result }).clone()
        };
        let m = CoordinatorMetrics {
            writes_ok: by(&writes, "ok"),
            writes_failed: by(&writes, "failed"),
            reads_ok: by(&reads, "ok"),
            reads_not_found: by(&reads, "not_found"),
            reads_failed: by(&reads, "failed"),
            write_seconds: Histogram::new(LATENCY_BUCKETS),
            read_seconds: Histogram::new(LATENCY_BUCKETS),
            quorum_acks: Counter::default(),
            respawns: Counter::default(),
            catchups: Counter::default(),
            leader_changes: Counter::default(),
            nodes: Gauge::default(),
            followers: Gauge::default(),
            alive_followers: Gauge::default(),
            write_quorum: Gauge::default(),
            read_quorum: Gauge::default(),
            overlap: Gauge::default(),
            leader_alive: Gauge::default(),
            registry: Registry::default(),
        };
        m.write_quorum.set(w as i64);
        m.read_quorum.set(r as i64);
        let reg = &mut registry;
        reg.register(
            "writes",
            "Client writes, by result (ok: W sync acks)",
            writes,
        );
        reg.register("reads", "Client reads, by result", reads);
        reg.register(
            "write_duration_seconds",
            "Client write latency at the coordinator",
            m.write_seconds.clone(),
        );
        reg.register(
            "read_duration_seconds",
            "Client read latency at the coordinator",
            m.read_seconds.clone(),
        );
        reg.register(
            "quorum_acks",
            "Sync follower acknowledgements received by writes",
            m.quorum_acks.clone(),
        );
        reg.register(
            "respawns",
            "Node processes started again in an existing slot",
            m.respawns.clone(),
        );
        reg.register(
            "catchups",
            "Followers that caught up with the leader after a (re)spawn",
            m.catchups.clone(),
        );
        reg.register(
            "leader_changes",
            "Leader changes: promotions after the first (failovers and restarts of the leader)",
            m.leader_changes.clone(),
        );
        reg.register(
            "nodes",
            "Node slots (leader + followers): the cluster's cost (INC-5)",
            m.nodes.clone(),
        );
        reg.register("followers", "Follower slots, N", m.followers.clone());
        reg.register(
            "alive_followers",
            "Followers alive now; writes need at least W (INC-4)",
            m.alive_followers.clone(),
        );
        reg.register(
            "write_quorum",
            "W: sync followers that must ack a write",
            m.write_quorum.clone(),
        );
        reg.register(
            "read_quorum",
            "R: followers asked by a read",
            m.read_quorum.clone(),
        );
        reg.register(
            "quorum_overlap",
            "W + R - N: at or below 0, a read can miss the latest write (INC-3)",
            m.overlap.clone(),
        );
        reg.register(
            "leader_alive",
            "1 while the leader is alive",
            m.leader_alive.clone(),
        );
        CoordinatorMetrics { registry, ..m }
    }

    /// Sets the state gauges from the table, just before a scrape.
    pub fn refresh(&self, c: &Cluster) {
        let n = c.followers.len() as i64;
        self.nodes.set(n + 1);
        self.followers.set(n);
        self.alive_followers.set(c.alive_followers() as i64);
        self.overlap
            .set(self.write_quorum.get() + self.read_quorum.get() - n);
        self.leader_alive.set(i64::from(c.leader.is_alive()));
    }
}

//! The registry's metrics: heartbeats, each node's heartbeat age, deaths,
//! replacements asked for, and fenced incarnations. INC-2 (a spawn delay
//! shorter than a network blip: the follower is replaced while it is only
//! silent) shows as `kvlab_heartbeat_age_seconds` crossing the timeout, then
//! `kvlab_registry_respawn_requests_total` and
//! `kvlab_registry_fenced_incarnations_total` going up: the old process came
//! back and was refused.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::metrics::{FloatGauge, NodeLabel};

pub struct RegistryMetrics {
    pub registry: Registry,
    pub heartbeats: Counter,
    /// Heartbeats refused because a newer incarnation of that node exists.
    pub fenced: Counter,
    pub declared_dead: Counter,
    pub respawn_requests: Counter,
    heartbeat_age: Family<NodeLabel, FloatGauge>,
    alive: Family<NodeLabel, Gauge>,
    timeout: FloatGauge,
}

impl RegistryMetrics {
    pub fn new(timeout_secs: f64) -> Self {
        let mut registry = crate::metrics::registry("registry");
        let m = RegistryMetrics {
            registry: Registry::default(),
            heartbeats: Counter::default(),
            fenced: Counter::default(),
            declared_dead: Counter::default(),
            respawn_requests: Counter::default(),
            heartbeat_age: Family::default(),
            alive: Family::default(),
            timeout: FloatGauge::default(),
        };
        m.timeout.set(timeout_secs);
        let reg = &mut registry;
        reg.register(
            "registry_heartbeats",
            "Heartbeats accepted",
            m.heartbeats.clone(),
        );
        reg.register(
            "registry_fenced_incarnations",
            "Heartbeats refused (409) from a replaced incarnation",
            m.fenced.clone(),
        );
        reg.register(
            "registry_declared_dead",
            "Nodes declared dead after a silence longer than the timeout",
            m.declared_dead.clone(),
        );
        reg.register(
            "registry_respawn_requests",
            "Replacements asked of the coordinator (auto-spawn)",
            m.respawn_requests.clone(),
        );
        reg.register(
            "heartbeat_age_seconds",
            "Time since each node's last heartbeat (INC-2)",
            m.heartbeat_age.clone(),
        );
        reg.register(
            "registry_node_alive",
            "1 if the registry counts the node alive",
            m.alive.clone(),
        );
        reg.register(
            "registry_timeout_seconds",
            "Silence after which a node is declared dead",
            m.timeout.clone(),
        );
        RegistryMetrics { registry, ..m }
    }

    /// Sets the per-node gauges just before a scrape: `nodes` is
    /// (node id, seconds since its last heartbeat, alive).
    pub fn refresh(&self, nodes: impl Iterator<Item = (String, f64, bool)>) {
        self.heartbeat_age.clear();
        self.alive.clear();
        for (node_id, age, alive) in nodes {
            let label = NodeLabel { node_id };
            self.heartbeat_age.get_or_create(&label).set(age);
            self.alive.get_or_create(&label).set(i64::from(alive));
        }
    }
}

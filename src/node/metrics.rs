//! A node's metrics, built at each scrape from the node's own counters and
//! state: the request paths keep counting in the atomics they already had
//! (`node::Stats`, the WAL's), and nothing is added to them here.
//!
//! On the leader, the per-follower series (`kvlab_follower_lag_entries`,
//! `kvlab_follower_lag_seconds`, `kvlab_follower_acked_seq`) show how far
//! each replication link is behind: the 5 s async link is seen lagging.

use std::sync::atomic::Ordering;

use axum::response::Response;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};

use super::NodeState;
use crate::metrics::{FloatGauge, NodeLabel};

/// The `/metrics` answer of a node.
pub fn render(node: &NodeState) -> Response {
    let mut reg = crate::metrics::registry("node");
    let s = &node.stats;
    let counter = |a: &std::sync::atomic::AtomicU64| ConstCounter::new(a.load(Ordering::Relaxed));
    reg.register(
        "node_writes",
        "Writes this node applied as leader",
        counter(&s.total_writes),
    );
    reg.register(
        "node_reads",
        "Reads this node served",
        counter(&s.total_reads),
    );
    reg.register(
        "replication_sent_entries",
        "Entries this leader sent to followers",
        counter(&s.replications_sent),
    );
    reg.register(
        "replication_received_entries",
        "Entries this follower received",
        counter(&s.replications_received),
    );
    reg.register(
        "snapshots_sent",
        "Catch-ups by snapshot: followers the log no longer covered",
        counter(&s.snapshots_sent),
    );
    let applied = node.core.lock().unwrap().store.applied_seq();
    reg.register(
        "applied_seq",
        "Highest log seq applied to this node's state",
        ConstGauge::new(applied as i64),
    );
    reg.register(
        "incarnation",
        "The process's incarnation (a new one per (re)spawn)",
        ConstGauge::new(node.incarnation as i64),
    );
    reg.register(
        "term",
        "The leadership term this node knows",
        ConstGauge::new(node.term() as i64),
    );
    if let Some(d) = &node.durability {
        let wal = d.wal.stats();
        reg.register(
            "durable_seq",
            "Highest log seq on this node's disk",
            ConstGauge::new(d.wal.durable_seq() as i64),
        );
        reg.register(
            "wal_written_bytes",
            "Bytes of log records written to the WAL",
            ConstCounter::new(wal.bytes),
        );
        reg.register(
            "wal_fsyncs",
            "Policy fsyncs of the WAL",
            ConstCounter::new(wal.fsyncs),
        );
        reg.register(
            "wal_fsync_duration_seconds",
            "How long each WAL fsync took",
            d.wal.fsync_histogram(),
        );
    }
    let links = node.links();
    if !links.is_empty() {
        let lag = Family::<NodeLabel, Gauge>::default();
        let lag_s = Family::<NodeLabel, FloatGauge>::default();
        let acked = Family::<NodeLabel, Gauge>::default();
        for l in &links {
            let label = NodeLabel {
                node_id: l.node_id.clone(),
            };
            lag.get_or_create(&label).set(l.lag_entries as i64);
            lag_s.get_or_create(&label).set(l.lag_seconds);
            acked.get_or_create(&label).set(l.acked_seq as i64);
        }
        reg.register(
            "follower_lag_entries",
            "Entries a follower lacks, as the leader sees it",
            lag,
        );
        reg.register(
            "follower_lag_seconds",
            "Age of the oldest entry a follower lacks",
            lag_s,
        );
        reg.register(
            "follower_acked_seq",
            "Highest seq a follower acknowledged",
            acked,
        );
    }
    crate::metrics::render(&reg)
}

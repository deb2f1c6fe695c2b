//! Prometheus metrics: every component serves `GET /metrics` in the
//! Prometheus text format (version 0.0.4), through `prometheus-client`.
//!
//! Naming follows Prometheus' rules: the `kvlab_` prefix (added by each
//! component's [`Registry`]), base units (`_seconds`, `_bytes`), `_total` on
//! counters (added by the encoder), and bounded labels only: a node id or a
//! result, never a key.
//!
//! Invariants:
//! - the request paths only touch atomics: counters are resolved to their
//!   labels once, at start, and [`Histogram`] is a fixed array of atomic
//!   buckets (the crate's own histogram takes a mutex on every observation);
//! - gauges that describe state (heartbeat age, lag, alive followers) are
//!   computed when `/metrics` is scraped, from the component's own state, so
//!   they cost nothing between scrapes.
//!
//! This is the core every component shares. Each component renders its own
//! metrics, from its own state, in its own `metrics.rs`, which says what it
//! measures: `coordinator::metrics`, `node::metrics`, `registry::metrics`,
//! `gateway::metrics`. [`alloc`] counts the process's heap allocations when
//! asked (`bench/per-op.sh`), and every registry then shows the count.

pub mod alloc;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// Request latency buckets, in seconds: 100 µs to 10 s. The lab's delays
/// (0.5 s sync, 5 s async) each land in their own bucket.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0,
];

/// WAL fsync buckets, in seconds, starting at 50 µs: an fsync here takes
/// about 150 µs, and a 1 ms floor (etcd's) would put them all in one bucket.
pub const FSYNC_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00015, 0.0002, 0.0003, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5,
    1.0,
];

/// A gauge holding a float (seconds, ratios).
pub type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// A histogram with fixed buckets and only atomics on the observe path.
/// Clones share the same counts.
#[derive(Debug, Clone)]
pub struct Histogram {
    inner: Arc<HistogramInner>,
}

#[derive(Debug)]
struct HistogramInner {
    bounds: &'static [f64],
    /// One count per bound, plus the +Inf bucket (not cumulative).
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    /// The sum, in nanoseconds (an integer so it can be an atomic add).
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        let buckets = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Histogram {
            inner: Arc::new(HistogramInner {
                bounds,
                buckets,
                count: AtomicU64::new(0),
                sum_nanos: AtomicU64::new(0),
            }),
        }
    }

    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self.inner.bounds.partition_point(|&b| b < secs);
        let h = &self.inner;
        h.buckets[i].fetch_add(1, Ordering::Relaxed);
        h.count.fetch_add(1, Ordering::Relaxed);
        h.sum_nanos
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.inner.count.load(Ordering::Relaxed)
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let h = &self.inner;
        let buckets: Vec<(f64, u64)> = h
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(h.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        // The count is the buckets' total, so a scrape racing an observe
        // still shows a consistent histogram.
        let count = buckets.iter().map(|b| b.1).sum();
        let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Labels for a per-node series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    pub node_id: String,
}

/// Labels for a series split by outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// A component's registry: every name gets the `kvlab_` prefix, and
/// `kvlab_build_info` says which version and component answers.
pub fn registry(component: &'static str) -> Registry {
    let mut registry = Registry::with_prefix("kvlab");
    registry.register(
        "build",
        "Which kvlab build and component serves these metrics",
        Info::new(vec![
            ("version", env!("CARGO_PKG_VERSION")),
            ("component", component),
        ]),
    );
    if alloc::allocations().is_some() {
        registry.register(
            "process_allocations",
            "Heap allocations by this process since it started (only with KVLAB_COUNT_ALLOCATIONS=1)",
            alloc::AllocationsMetric,
        );
    }
    registry
}

/// The `/metrics` answer: the registry in the Prometheus text format.
pub fn render(registry: &Registry) -> Response {
    let mut body = String::with_capacity(4096);
    match prometheus_client::encoding::prometheus_text::encode(&mut body, registry) {
        Ok(()) => (
            [(
                CONTENT_TYPE,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )],
            body,
        )
            .into_response(),
        Err(_) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "could not encode the metrics",
        )
            .into_response(),
    }
}

/// The `host:port` of each service, for [`scrape_config`].
pub struct ScrapeTargets {
    pub gateway: String,
    pub coordinator: String,
    pub registry: String,
    /// `Some` when some of them speak TLS (see `tls`).
    pub tls: Option<ScrapeTls>,
}

/// Which listeners speak TLS, and the cluster CA Prometheus must trust.
pub struct ScrapeTls {
    pub ca_file: String,
    pub gateway: bool,
    pub coordinator: bool,
    pub registry: bool,
    pub nodes: bool,
}

/// A Prometheus config that scrapes a running cluster every 2 s: the three
/// services by address, and the nodes through the coordinator's HTTP service
/// discovery (`/metrics/targets`), since nodes come and go on their own ports.
pub fn scrape_config(t: &ScrapeTargets) -> String {
    let tls = |on: fn(&ScrapeTls) -> bool, indent: &str| match &t.tls {
        Some(s) if on(s) => format!("{indent}tls_config:\n{indent}  ca_file: {}\n", s.ca_file),
        _ => String::new(),
    };
    let scheme = |on: fn(&ScrapeTls) -> bool| {
        if t.tls.as_ref().is_some_and(on) {
            "https"
        } else {
            "http"
        }
    };
    let service = |job: &str, target: &str, on: fn(&ScrapeTls) -> bool| {
        format!(
            "  - job_name: {job}\n    scheme: {}\n{}    static_configs:\n      - targets: ['{target}']\n",
            scheme(on),
            tls(on, "    ")
        )
    };
    [
        "# Written by `kvlab up --prometheus-config`.\n".to_string(),
        "global:\n  scrape_interval: 2s\n  evaluation_interval: 2s\n".into(),
        "scrape_configs:\n".into(),
        service("kvlab-gateway", &t.gateway, |s| s.gateway),
        service("kvlab-coordinator", &t.coordinator, |s| s.coordinator),
        service("kvlab-registry", &t.registry, |s| s.registry),
        format!(
            "  - job_name: kvlab-nodes\n    scheme: {}\n{}    http_sd_configs:\n      - url: {}://{}/metrics/targets\n        refresh_interval: 2s\n{}",
            scheme(|s| s.nodes),
            tls(|s| s.nodes, "    "),
            scheme(|s| s.coordinator),
            t.coordinator,
            tls(|s| s.coordinator, "        "),
        ),
    ]
    .concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_and_sum() {
        let h = Histogram::new(FSYNC_BUCKETS);
        h.observe(Duration::from_micros(40));
        h.observe(Duration::from_micros(150));
        h.observe(Duration::from_secs(3));
        let mut r = registry("test");
        r.register("wal_fsync_duration_seconds", "fsyncs", h.clone());
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &r).unwrap();
        assert!(
            text.contains("kvlab_wal_fsync_duration_seconds_bucket{le=\"5e-05\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kvlab_wal_fsync_duration_seconds_bucket{le=\"0.00015\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("kvlab_wal_fsync_duration_seconds_bucket{le=\"+Inf\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("kvlab_wal_fsync_duration_seconds_count 3"),
            "{text}"
        );
        assert!(text.contains("kvlab_build_info{"), "{text}");
        assert_eq!(h.count(), 3);
    }
}

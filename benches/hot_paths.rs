//! Benchmarks of the replication hot paths.
//!
//! - `store/apply`: a follower applying one entry.
//! - `log/push_and_read`: the leader logging an entry, then a stream reading
//!   a batch from the log.
//! - `wire/encode_batch/<n>`: encoding a batch of n entries as the JSON body
//!   of `POST /replicate` (what every replication round trip pays), and
//!   decoding it on the follower's side.
//! - `ratelimit/check/<strategy>`: the gateway limiter's decision for one
//!   request, over 1,000 client addresses.
//! - `metrics/per_read`: what the metrics cost one client read in the `up`
//!   process: the gateway's count by status code, the coordinator's read
//!   counter and latency histogram (`one_thread`), and the same from two
//!   threads at once, as tokio's two workers run them (`two_threads`, per
//!   read: the atomics' cache lines bounce between the cores).
//!
//! Run: `cargo bench --bench hot_paths -- --quick`

use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kvlab::api::{AppendRequest, Entry};
use kvlab::node::log::{Next, ReplicationLog};
use kvlab::node::store::Store;

fn entry(seq: u64) -> Entry {
    Entry {
        seq,
        term: 1,
        key: format!("user:{:08}", seq % 10_000),
        value: "v".repeat(100),
        version: seq / 10_000 + 1,
    }
}

fn store_apply(c: &mut Criterion) {
    let entries: Vec<Entry> = (1..=100_000).map(entry).collect();
    c.bench_function("store/apply", |b| {
        b.iter_custom(|iters| {
            let mut store = Store::default();
            let start = Instant::now();
            for i in 0..iters as usize {
                let e = &entries[i % entries.len()];
                // Re-number so every apply is the next entry.
                let e = Arc::new(Entry {
                    seq: i as u64 + 1,
                    ..e.clone()
                });
                store.apply(&e);
            }
            start.elapsed()
        })
    });
}

fn log_push_and_read(c: &mut Criterion) {
    c.bench_function("log/push_and_read", |b| {
        let mut log = ReplicationLog::new(100_000);
        let mut seq = 0;
        let now = Instant::now();
        b.iter(|| {
            seq += 1;
            log.push(Arc::new(entry(seq)), now);
            match log.read_from(seq.saturating_sub(63).max(1), 64) {
                Next::Entries(v) => v.len(),
                _ => 0,
            }
        })
    });
}

fn wire_batch(c: &mut Criterion) {
    let mut group = c.benchmark_group("wire");
    for n in [1usize, 64, 1024] {
        let body: AppendRequest = AppendRequest {
            term: 1,
            to_incarnation: 1,
            entries: (1..=n as u64).map(entry).collect(),
        };
        let bytes = serde_json::to_vec(&body).unwrap();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("encode_batch", n), &body, |b, body| {
            b.iter(|| serde_json::to_vec(body).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("decode_batch", n), &bytes, |b, bytes| {
            b.iter(|| serde_json::from_slice::<AppendRequest>(bytes).unwrap())
        });
    }
    group.finish();
}

fn ratelimit_check(c: &mut Criterion) {
    use kvlab::ratelimit::{Limits, RateLimiter, Strategy};
    use std::net::{IpAddr, Ipv4Addr};
    let mut group = c.benchmark_group("ratelimit");
    for strategy in [
        Strategy::FixedWindow,
        Strategy::SlidingWindow,
        Strategy::TokenBucket,
    ] {
        let limiter =
            RateLimiter::new(strategy, Limits::new(1_000_000, 60.0).unwrap(), 100_000).unwrap();
        let mut i: u32 = 0;
        group.bench_function(BenchmarkId::new("check", strategy.as_str()), |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                limiter.check(IpAddr::V4(Ipv4Addr::from(0x7f00_0000 + i % 1000)))
            })
        });
    }
    group.finish();
}

fn metrics_per_read(c: &mut Criterion) {
    use kvlab::gateway::metrics::ByCode;
    use kvlab::metrics::{Histogram, LATENCY_BUCKETS};
    use prometheus_client::metrics::counter::Counter;
    use std::time::Duration;
    let codes = ByCode::default();
    let reads_ok = Counter::<u64>::default();
    let read_seconds = Histogram::new(LATENCY_BUCKETS);
    let one_read = || {
        codes.count(axum::http::StatusCode::OK);
        reads_ok.inc();
        read_seconds.observe(Duration::from_micros(2500));
    };
    let mut group = c.benchmark_group("metrics");
    group.bench_function("per_read/one_thread", |b| b.iter(one_read));
    group.bench_function("per_read/two_threads", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| (0..iters / 2).for_each(|_| one_read()));
                }
            });
            // Two threads did `iters` reads together: the cost of one read
            // is the wall time spread over them, times the two cores used.
            started.elapsed() * 2
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    store_apply,
    log_push_and_read,
    wire_batch,
    ratelimit_check,
    metrics_per_read
);
criterion_main!(benches);

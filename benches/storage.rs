//! Benchmarks of the storage engine.
//!
//! - `recovery/1m_keys`: open a directory holding a snapshot of 1,000,000
//!   keys plus a log tail of 10,000 entries (the bar: under 2 s).
//! - `append/<policy>/<appenders>`: throughput of single-entry appends from
//!   concurrent tasks, per fsync policy. With one appender, `always` pays one
//!   fsync per append; with many, group commit shares them.
//!
//! Run: `cargo bench --bench storage -- --quick`

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kvlab::api::{Entry, Versioned};
use kvlab::storage::{snapshot, FsyncPolicy, Snapshot, StorageConfig, Wal};

const KEYS: u64 = 1_000_000;
const TAIL: u64 = 10_000;

fn key(i: u64) -> String {
    format!("user:{i:010}")
}

fn value(i: u64) -> String {
    format!("value-{i:026}")
}

fn entry(seq: u64) -> Entry {
    Entry {
        seq,
        term: 1,
        key: key(seq % KEYS),
        value: value(seq),
        version: 2,
    }
}

/// A data directory as a node that holds 1M keys would leave it: a snapshot
/// at seq 1M, then a tail of log entries after it.
fn build_recovery_dir(dir: &Path, rt: &tokio::runtime::Runtime) {
    let data: BTreeMap<String, Versioned> = (0..KEYS)
        .map(|i| {
            let v = Versioned {
                value: value(i),
                version: 1,
            };
            (key(i), v)
        })
        .collect();
    let snap = Snapshot {
        seq: KEYS,
        term: 1,
        data,
    };
    snapshot::write(dir, &snap).unwrap();
    let mut config = StorageConfig::new(dir);
    config.fsync = FsyncPolicy::Never;
    rt.block_on(async {
        let (wal, _) = Wal::open(config).await.unwrap();
        for start in (KEYS + 1..=KEYS + TAIL).step_by(100) {
            wal.append((start..start + 100).map(entry).collect())
                .await
                .unwrap();
        }
        wal.close().await;
    });
}

fn recovery(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    build_recovery_dir(dir.path(), &rt);

    let mut group = c.benchmark_group("recovery");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("1m_keys", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let (wal, recovered) = Wal::open_blocking(StorageConfig::new(dir.path())).unwrap();
                total += start.elapsed();
                assert_eq!(recovered.state.data.len() as u64, KEYS);
                assert_eq!(recovered.state.seq, KEYS + TAIL);
                // Freeing a million strings is not part of recovery.
                drop((wal, recovered));
            }
            total
        })
    });
    group.finish();
}

/// Appends `count` single-entry batches from `appenders` concurrent tasks,
/// as the node does: seq taken and batch submitted under one lock.
async fn append_concurrently(wal: &Arc<Wal>, next: &Arc<AtomicU64>, appenders: u64, count: u64) {
    let per_task = count.div_ceil(appenders);
    let lock = Arc::new(std::sync::Mutex::new(()));
    let tasks: Vec<_> = (0..appenders)
        .map(|_| {
            let (wal, next, lock) = (wal.clone(), next.clone(), lock.clone());
            tokio::spawn(async move {
                for _ in 0..per_task {
                    let ticket = {
                        let _g = lock.lock().unwrap();
                        let seq = next.fetch_add(1, Ordering::Relaxed);
                        wal.submit(vec![std::sync::Arc::new(entry(seq))])
                    };
                    ticket.await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

fn append(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("append");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    let policies = [
        FsyncPolicy::Always,
        FsyncPolicy::Interval(FsyncPolicy::DEFAULT_INTERVAL),
        FsyncPolicy::Never,
    ];
    for policy in policies {
        for appenders in [1u64, 64] {
            let dir = tempfile::tempdir().unwrap();
            let mut config = StorageConfig::new(dir.path());
            config.fsync = policy;
            let wal = Arc::new(rt.block_on(Wal::open(config)).unwrap().0);
            let next = Arc::new(AtomicU64::new(1));
            let batch = 256;
            group.throughput(Throughput::Elements(batch));
            let id = BenchmarkId::new(policy.to_string(), appenders);
            group.bench_function(id, |b| {
                b.iter(|| rt.block_on(append_concurrently(&wal, &next, appenders, batch)))
            });
            let stats = wal.stats();
            eprintln!(
                "  {policy} x{appenders}: {} appends, {} fsyncs ({:.1} appends/fsync)",
                stats.appends,
                stats.fsyncs,
                stats.appends as f64 / stats.fsyncs.max(1) as f64
            );
        }
    }
    group.finish();
}

criterion_group!(benches, recovery, append);
criterion_main!(benches);

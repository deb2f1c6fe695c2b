//! The linearizability checker on a 10,000-operation history.
//!
//! The history is what a healthy cluster produces: 10 clients, 5 keys, each
//! operation taking effect at a random point between its call and return,
//! about a third of them writes, 2% of writes with an unknown outcome (half
//! of those never happened). Then the same on one key: ten clients on one
//! register overlap all the time, the hard case for the search. Target:
//! well under 1 s for each (on 2 cores: 11 ms and 30 ms).
//!
//! Run: `cargo bench --bench checker -- --quick`

use std::collections::HashMap;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use kvlab::check::history::{Input, Op, Outcome};
use kvlab::check::verdict::{check_keys, Verdict};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

fn history(n: usize, clients: usize, keys: usize, seed: u64) -> Vec<Op> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut free_at = vec![0u64; clients];
    // (the moment it takes effect, the op)
    let mut ops: Vec<(u64, Op)> = (0..n)
        .map(|id| {
            let client = rng.random_range(0..clients);
            let call = free_at[client] + rng.random_range(0..200_000);
            let end = call + rng.random_range(100_000..2_000_000);
            free_at[client] = end;
            let key = format!("k{}", rng.random_range(0..keys));
            let input = if rng.random_range(0..3) == 0 {
                Input::Write {
                    key,
                    value: format!("c{client}-{id}"),
                }
            } else {
                Input::Read { key }
            };
            let point = rng.random_range(call..=end);
            (
                point,
                Op {
                    id,
                    client_id: client,
                    input,
                    call,
                    output: Outcome::NotFound,
                    ret: Some(end),
                    end,
                    start: false,
                },
            )
        })
        .collect();
    ops.sort_by_key(|(point, _)| *point);
    let mut state: HashMap<String, (String, u64)> = HashMap::new();
    for (_, op) in ops.iter_mut() {
        match &op.input {
            Input::Write { key, value } => {
                let unknown = rng.random_range(0..50) == 0;
                if unknown {
                    op.ret = None;
                    op.output = Outcome::Unknown {
                        reason: "timeout".into(),
                    };
                    if rng.random_range(0..2) == 0 {
                        continue;
                    }
                }
                let version = state.get(key).map_or(0, |s| s.1) + 1;
                state.insert(key.clone(), (value.clone(), version));
                if !unknown {
                    op.output = Outcome::Written { version };
                }
            }
            Input::Read { key } => {
                op.output = match state.get(key) {
                    Some((value, version)) => Outcome::Found {
                        value: value.clone(),
                        version: *version,
                        served_by: "follower-1".into(),
                    },
                    None => Outcome::NotFound,
                };
            }
        }
    }
    let mut ops: Vec<Op> = ops.into_iter().map(|(_, op)| op).collect();
    ops.sort_by_key(|op| op.id);
    ops
}

fn checker(c: &mut Criterion) {
    let ops = history(10_000, 10, 5, 7);
    let results = check_keys(&ops, Duration::from_secs(60));
    assert!(results.iter().all(|r| r.verdict == Verdict::Valid));
    let mut group = c.benchmark_group("checker");
    group.sample_size(10);
    group.bench_function("10k_ops_10_clients_5_keys", |b| {
        b.iter(|| check_keys(&ops, Duration::from_secs(60)))
    });
    let one_key = history(10_000, 10, 1, 8);
    let results = check_keys(&one_key, Duration::from_secs(60));
    assert!(results.iter().all(|r| r.verdict == Verdict::Valid));
    group.bench_function("10k_ops_10_clients_1_key", |b| {
        b.iter(|| check_keys(&one_key, Duration::from_secs(60)))
    });
    group.finish();
}

criterion_group!(benches, checker);
criterion_main!(benches);

//! How long a node holding 1,000,000 keys takes to come back after a crash:
//! from `kvlab node --data-dir ...` starting to its `/health` answering.
//!
//! It builds the directory a crashed node would leave in the worst case of
//! the default snapshot policy (a snapshot of 1M keys plus a full
//! `--snapshot-every` tail of 100,000 log entries not yet covered by the
//! next one), then starts the real binary on it a few times.
//!
//!     cargo build --release && cargo run --release --example node_recovery
//!
//! Optional arguments: the key count, then the path of the `kvlab` binary.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kvlab::api::{Entry, Versioned};
use kvlab::storage::{snapshot, FsyncPolicy, Snapshot, StorageConfig, Wal};

const TAIL: u64 = 100_000;
const RUNS: usize = 3;

fn key(i: u64) -> String {
    format!("user:{i:010}")
}

fn value(i: u64) -> String {
    format!("value-{i:026}")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let keys: u64 = args.next().map_or(Ok(1_000_000), |s| s.parse())?;
    let binary = args.next().unwrap_or_else(|| "target/release/kvlab".into());
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("leader");
    std::fs::create_dir_all(&dir)?;
    let built = Instant::now();
    build(&dir, keys).await?;
    println!(
        "built {keys} keys + {TAIL} log entries in {:.1} s ({} MiB on disk)",
        built.elapsed().as_secs_f64(),
        dir_size(&dir) >> 20
    );
    let http = reqwest::Client::new();
    for run in 1..=RUNS {
        let port = 47_000 + run as u16;
        let started = Instant::now();
        let mut child = Command::new(&binary)
            .args(["node", "--id", "leader", "--role", "leader"])
            .args(["--port", &port.to_string()])
            .arg("--data-dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let url = format!("http://127.0.0.1:{port}");
        while !http
            .get(format!("{url}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            anyhow::ensure!(child.try_wait()?.is_none(), "the node exited");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let elapsed = started.elapsed();
        let stats: serde_json::Value = http
            .get(format!("{url}/stats"))
            .send()
            .await?
            .json()
            .await?;
        println!(
            "run {run}: node serving after {:.0} ms, holding {} keys at seq {}",
            elapsed.as_secs_f64() * 1000.0,
            stats["data_count"],
            stats["applied_seq"]
        );
        child.kill()?;
        child.wait()?;
    }
    Ok(())
}

/// A snapshot at seq `keys` holding every key, then `TAIL` overwrites.
async fn build(dir: &Path, keys: u64) -> anyhow::Result<()> {
    let data: BTreeMap<String, Versioned> = (0..keys)
        .map(|i| {
            let v = Versioned {
                value: value(i),
                version: 1,
            };
            (key(i), v)
        })
        .collect();
    snapshot::write(
        dir,
        &Snapshot {
            seq: keys,
            term: 1,
            data,
        },
    )?;
    let mut config = StorageConfig::new(dir);
    config.fsync = FsyncPolicy::Never;
    let (wal, _) = Wal::open(config).await?;
    for start in (keys + 1..=keys + TAIL).step_by(1000) {
        let batch = (start..start + 1000)
            .map(|seq| Entry {
                seq,
                term: 1,
                key: key(seq % keys),
                value: value(seq),
                version: 2,
            })
            .collect();
        wal.append(batch).await?;
    }
    wal.close().await;
    Ok(())
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

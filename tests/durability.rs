//! Durability: no acknowledged write is lost when a node crashes, and a
//! node recovers (or refuses to serve) from what its directory holds.
//!
//! The crash tests run concurrent writers against a real cluster with
//! `--fsync always`, SIGKILL the leader (or a follower) at a random moment,
//! restart it on its directory, and check every write that was acknowledged.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    free_port_block, http, kvlab, kvlab_in, millis, scratch, secs, test_seed, wait, Cluster, Lcg,
    FAST_2_2_2, FAST_3_2_2, FAST_IN_MEMORY,
};
use serde_json::{json, Value};

const ROUNDS: usize = 20;
const WRITERS: usize = 4;

/// A write the cluster acknowledged (200).
#[derive(Debug, Clone)]
struct Acked {
    key: String,
    value: String,
    seq: u64,
    sync_replicated_to: Vec<String>,
}

/// Writers that keep writing unique keys until stopped, recording each ack.
struct Load {
    acked: Arc<Mutex<Vec<Acked>>>,
    stop: Arc<AtomicBool>,
    /// Writers hold off while set, so a check is not chasing new writes.
    paused: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(coordinator: &str) -> Load {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(false));
        let threads = (0..WRITERS)
            .map(|t| {
                let (acked, stop, paused) = (acked.clone(), stop.clone(), paused.clone());
                let url = format!("{coordinator}/write");
                std::thread::spawn(move || write_until_stopped(t, &url, &acked, &stop, &paused))
            })
            .collect();
        Load {
            acked,
            stop,
            paused,
            threads,
        }
    }

    /// Runs `check` with the writers held off.
    fn paused<T>(&self, check: impl FnOnce() -> T) -> T {
        self.paused.store(true, Ordering::Relaxed);
        let result = check();
        self.paused.store(false, Ordering::Relaxed);
        result
    }

    fn acked(&self) -> Vec<Acked> {
        self.acked.lock().unwrap().clone()
    }

    /// Waits until `more` writes beyond `since` were acknowledged.
    fn wait_acked(&self, since: usize, more: usize) {
        wait(format_args!("{more} more acknowledged writes"), secs(30))
            .every(millis(2))
            .until(|| {
                let acked = self.acked.lock().unwrap().len();
                if acked >= since + more {
                    Ok(())
                } else {
                    Err(format!("writes stopped succeeding at {acked}"))
                }
            });
    }

    fn stop(self) -> Vec<Acked> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        Arc::try_unwrap(self.acked).unwrap().into_inner().unwrap()
    }
}

fn write_until_stopped(
    t: usize,
    url: &str,
    acked: &Mutex<Vec<Acked>>,
    stop: &AtomicBool,
    paused: &AtomicBool,
) {
    let http = http().timeout(secs(10)).build();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        if paused.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        n += 1;
        let (key, value) = (format!("w{t}-{n}"), format!("value {t}/{n}"));
        let Ok(resp) = http
            .post(url)
            .json(&json!({"key": key, "value": value}))
            .send()
        else {
            continue;
        };
        if resp.status() != 200 {
            // Refused while a node is down: not acknowledged, not checked.
            continue;
        }
        let body: Value = resp.json().unwrap();
        let urls = body["sync_replicated_to"].as_array().unwrap();
        acked.lock().unwrap().push(Acked {
            key,
            value,
            seq: body["seq"].as_u64().unwrap(),
            sync_replicated_to: urls.iter().map(|u| u.as_str().unwrap().into()).collect(),
        });
    }
}

/// Counts of acknowledged writes checked and lost.
#[derive(Default, Debug)]
struct Tally {
    checks: usize,
    lost: Vec<String>,
}

impl Tally {
    /// Checks that `node_url` serves every write in `acked`.
    fn check_node_holds(&mut self, c: &Cluster, node_url: &str, acked: &[Acked]) {
        for a in acked {
            self.checks += 1;
            let resp = c
                .http
                .get(format!("{node_url}/data/{}", a.key))
                .send()
                .unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().unwrap_or(Value::Null);
            if status != 200 || body["value"] != a.value.as_str() {
                self.lost
                    .push(format!("{} (seq {}): {status} {body}", a.key, a.seq));
            }
        }
    }
}

fn seed() -> u64 {
    test_seed("kill moments", std::process::id() as u64 ^ 0x9e37_79b9)
}

fn crash_cluster() -> Cluster {
    Cluster::start(&format!("{FAST_2_2_2} --fsync always"))
}

/// SIGKILLs `node_id` and restarts it on its directory through `/spawn`.
fn crash_and_restart(c: &Cluster, node_id: &str) {
    let (code, body) = c.post(&format!("/kill/{node_id}?mode=crash"), json!({}));
    assert_eq!(code, 200, "kill {node_id}: {body}");
    let (code, body) = c.post("/spawn", json!({"node_id": node_id}));
    assert_eq!(code, 200, "restart {node_id}: {body}");
}

#[test]
fn leader_crash_loses_no_acknowledged_write() {
    let c = crash_cluster();
    let leader = c.node_url(0);
    let load = Load::start(&c.coordinator);
    let mut rng = Lcg(seed());
    let mut tally = Tally::default();
    for _ in 0..ROUNDS {
        // A random moment: after a random number of further acks.
        let before = load.acked().len();
        load.wait_acked(before, 5 + rng.below(60) as usize);
        crash_and_restart(&c, "leader");
        // Every write acknowledged so far (so every one before the kill)
        // must be in the recovered leader's state.
        load.paused(|| tally.check_node_holds(&c, &leader, &load.acked()));
    }
    let acked = load.stop();
    eprintln!(
        "leader crashes: {ROUNDS} rounds, {} acknowledged writes, {} checks, {} lost",
        acked.len(),
        tally.checks,
        tally.lost.len()
    );
    assert!(tally.lost.is_empty(), "lost writes: {:?}", tally.lost);
    // Reads through the coordinator see them too.
    for a in acked.iter().step_by(17) {
        let (code, r) = c.read(&a.key);
        assert_eq!((code, r["value"].as_str()), (200, Some(a.value.as_str())));
    }
}

#[test]
fn follower_crash_loses_no_acknowledged_write() {
    let c = crash_cluster();
    let follower = c.node_url(1);
    let load = Load::start(&c.coordinator);
    let mut rng = Lcg(seed() + 1);
    let mut tally = Tally::default();
    for _ in 0..ROUNDS {
        let before = load.acked().len();
        load.wait_acked(before, 5 + rng.below(60) as usize);
        let (code, body) = c.post("/kill/follower-1?mode=crash", json!({}));
        assert_eq!(code, 200, "{body}");
        // Everything follower-1 acknowledged before dying must be on its
        // disk: what it recovers, before any catch-up, must cover it.
        let must_hold = load
            .acked()
            .iter()
            .filter(|a| a.sync_replicated_to.contains(&follower))
            .map(|a| a.seq)
            .max()
            .unwrap_or(0);
        let (code, body) = c.post("/spawn", json!({"node_id": "follower-1"}));
        assert_eq!(code, 200, "{body}");
        let stats = c.get_json(&format!("{follower}/stats"));
        let recovered = stats["storage"]["recovered_seq"].as_u64().unwrap();
        tally.checks += 1;
        if recovered < must_hold {
            tally.lost.push(format!(
                "follower-1 recovered seq {recovered} but had acknowledged {must_hold}"
            ));
        }
        // After catch-up it serves every acknowledged write.
        let (code, body) = c.wait_caught_up("follower-1");
        assert_eq!(code, 200, "catch-up: {body}");
        load.paused(|| tally.check_node_holds(&c, &follower, &load.acked()));
    }
    let acked = load.stop();
    eprintln!(
        "follower crashes: {ROUNDS} rounds, {} acknowledged writes, {} checks, {} lost",
        acked.len(),
        tally.checks,
        tally.lost.len()
    );
    assert!(tally.lost.is_empty(), "lost writes: {:?}", tally.lost);
}

/// The leader streams a batch while its own fsync runs, and acknowledges it
/// only once that fsync is done. With the leader's disk made slow (3 s
/// per fsync), both sync followers hold the write on their disks while the
/// leader's fsync still runs, and the client's answer comes only after it.
#[test]
fn followers_persist_a_write_during_the_leaders_fsync_and_the_ack_waits_for_it() {
    const SLOW: Duration = Duration::from_secs(3);
    let c = Cluster::start(&format!("{FAST_3_2_2} --fsync always"));
    assert_eq!(c.write("warm", "up").0, 200);
    let leader = c.node_url(0);
    let stats = |url: &str| c.get_json(&format!("{url}/stats"));
    let before = stats(&leader)["applied_seq"].as_u64().unwrap();
    let (code, body) = c.post(
        "/admin/slow-disk/leader",
        json!({"ms": SLOW.as_millis() as u64, "seconds": 30}),
    );
    assert_eq!(code, 200, "{body}");

    let url = format!("{}/write", c.coordinator);
    let writer = std::thread::spawn(move || {
        let started = Instant::now();
        let resp = common::internal_http()
            .post(url)
            .json(&json!({"key": "overlap", "value": "v"}))
            .send()
            .unwrap();
        (resp.status().as_u16(), started.elapsed())
    });
    // Once the leader has appended it (its state has it at once), both sync
    // followers must get it onto their disks without waiting for the
    // leader's: within half of the 3 s that fsync takes (generous: a disk
    // loaded by parallel tests can take hundreds of milliseconds).
    let target = wait("the leader to append the write", SLOW)
        .every(millis(10))
        .until(|| {
            let applied = stats(&leader)["applied_seq"].as_u64().unwrap();
            if applied > before {
                Ok(applied)
            } else {
                Err(format!(
                    "the leader never appended the write: seq {applied}"
                ))
            }
        });
    // One deadline for both followers.
    let deadline = Instant::now() + SLOW / 2;
    for follower in [c.node_url(1), c.node_url(2)] {
        let left = deadline.saturating_duration_since(Instant::now());
        wait(format_args!("{follower} to persist seq {target}"), left)
            .every(millis(10))
            .until(|| {
                let s = stats(&follower);
                if s["storage"]["durable_seq"].as_u64() >= Some(target) {
                    Ok(())
                } else {
                    Err(format!(
                        "{follower} did not persist seq {target} while the leader's fsync ran: {s}"
                    ))
                }
            });
    }
    let leader_durable = stats(&leader)["storage"]["durable_seq"].as_u64().unwrap();
    assert!(
        !writer.is_finished() && leader_durable < target,
        "the write was answered (or the leader's disk had it, seq {leader_durable}) \
         before the followers' copies were checked"
    );
    let (code, took) = writer.join().unwrap();
    assert_eq!(code, 200);
    assert!(
        took >= SLOW,
        "acknowledged after {took:?}, before the leader's fsync"
    );
}

/// A write whose caller hangs up while the leader's fsync runs still runs
/// to its end: once the fsync is done, the leader counts it as persisted
/// (its links show it), without waiting for some later write to move on.
#[test]
fn a_write_abandoned_during_the_leaders_fsync_still_completes() {
    let c = Cluster::start("--no-delay --followers 2 --fsync always");
    assert_eq!(c.write("warm", "up").0, 200);
    let leader = c.node_url(0);
    let leader_seq = || -> u64 {
        let links = c.get_json(&format!("{leader}/replication/links"));
        links[0]["leader_seq"].as_u64().unwrap()
    };
    let before = leader_seq();
    let (code, body) = c.post(
        "/admin/slow-disk/leader",
        json!({"ms": 1000, "seconds": 30}),
    );
    assert_eq!(code, 200, "{body}");
    // Straight to the leader, with a client that gives up long before the
    // 1 s fsync ends.
    let gave_up = common::internal_http()
        .post(format!("{leader}/data"))
        .json(&json!({"key": "abandoned", "value": "v", "sync": []}))
        .timeout(Duration::from_millis(200))
        .send();
    assert!(gave_up.is_err(), "answered within 200 ms: {gave_up:?}");
    wait("the abandoned write to count as persisted", secs(10))
        .every(millis(20))
        .until(|| {
            let seq = leader_seq();
            if seq > before {
                Ok(())
            } else {
                Err(format!(
                    "the abandoned write never counted as persisted (leader seq {seq})"
                ))
            }
        });
}

#[test]
fn restarted_cluster_recovers_its_data_and_fresh_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let flags = "--no-delay -R 2";
    {
        let c = Cluster::start_on(dir.path(), flags);
        for i in 0..30 {
            assert_eq!(c.write(&format!("k{i}"), &format!("v{i}")).0, 200);
        }
        assert_eq!(c.write("k0", "again").0, 200);
    } // SIGTERM: the whole cluster stops.
    {
        let c = Cluster::start_on(dir.path(), flags);
        let (code, r) = c.read("k0");
        assert_eq!(code, 200, "{r}");
        assert_eq!(
            (r["value"].as_str(), r["version"].as_u64()),
            (Some("again"), Some(2))
        );
        let (_, r) = c.read("k29");
        assert_eq!(r["value"], "v29");
        // The history continues: the next version of k0 is 3.
        let (_, w) = c.write("k0", "third");
        assert_eq!(w["version"], 3);
    }
    let c = Cluster::start_on(dir.path(), &format!("{flags} --fresh"));
    assert_eq!(c.read("k0").0, 404);
}

#[test]
fn in_memory_cluster_cannot_restart_its_leader() {
    let c = Cluster::start(FAST_IN_MEMORY);
    assert_eq!(c.write("k", "v").0, 200);
    let (code, _) = c.post("/kill/leader?mode=crash", json!({}));
    assert_eq!(code, 200);
    let (code, body) = c.post("/spawn", json!({"node_id": "leader"}));
    assert_eq!(code, 409, "{body}");
    assert!(body.to_string().contains("in-memory"), "{body}");
    let stats = c.get_json(&format!("{}/stats", c.node_url(1)));
    assert!(stats.get("storage").is_none(), "{stats}");
}

// ---------------------------------------------------------------------------
// One node on its own directory: torn tails, corruption, snapshots
// ---------------------------------------------------------------------------

/// A standalone leader (no registry, no followers) on a data directory.
struct Node {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Node {
    fn start(dir: &Path, port: u16, extra: &[&str]) -> Result<Node, String> {
        let log = std::env::temp_dir().join(format!("kvlab-test-node-{port}.log"));
        let child = kvlab()
            .args(["node", "--id", "leader", "--role", "leader"])
            .args(["--port", &port.to_string()])
            .arg("--data-dir")
            .arg(dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut node = Node {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        node.wait_healthy()?;
        Ok(node)
    }

    /// Waits for `/health`, or for the process to exit (then returns its
    /// log as the error).
    fn wait_healthy(&mut self) -> Result<(), String> {
        let http = http().build();
        wait("the node to start", secs(20))
            .every(millis(20))
            .until(|| {
                if let Some(status) = self.child.try_wait().unwrap() {
                    let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                    return Ok(Err(format!("exited with {status}: {log}")));
                }
                if http
                    .get(format!("{}/health", self.url))
                    .send()
                    .is_ok_and(|r| r.status() == 200)
                {
                    return Ok(Ok(()));
                }
                Err("node did not start")
            })
    }

    fn write(&self, key: &str, value: &str) {
        let resp = http()
            .build()
            .post(format!("{}/data", self.url))
            .json(&json!({"key": key, "value": value}))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
    }

    fn get(&self, path: &str) -> (u16, Value) {
        let resp = http()
            .build()
            .get(format!("{}{path}", self.url))
            .send()
            .unwrap();
        let code = resp.status().as_u16();
        (code, resp.json().unwrap_or(Value::Null))
    }

    fn crash(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The test made it; the test removes it.
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The single log segment of a directory written by a short test.
fn only_segment(dir: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    assert_eq!(segs.len(), 1, "{segs:?}");
    segs.pop().unwrap()
}

/// Where the records of a segment end: after its last non-zero byte, where
/// the preallocated zero tail starts. (Exact here: every record ends with a
/// non-empty value.)
fn records_end(seg: &Path) -> u64 {
    let bytes = std::fs::read(seg).unwrap();
    bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1) as u64
}

fn node_with_writes(dir: &Path, n: usize) -> u16 {
    let port = free_port_block();
    let node = Node::start(dir, port, &[]).unwrap();
    for i in 0..n {
        node.write(&format!("k{i}"), &format!("v{i}"));
    }
    node.crash();
    port
}

#[test]
fn torn_tail_is_cut_off_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("leader");
    let port = node_with_writes(&dir, 20);
    // A crash in the middle of writing a record: a length prefix promising
    // 200 bytes, and only a few of them, written where the next record goes
    // (over the segment's preallocated zeros).
    use std::os::unix::fs::FileExt;
    let seg = only_segment(&dir);
    let end = records_end(&seg);
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.write_all_at(&[200, 0, 0, 0, 1, 2, 3, 4, 5], end).unwrap();
    drop(f);
    let node = Node::start(&dir, port, &[]).unwrap();
    let (code, v) = node.get("/data/k19");
    assert_eq!((code, v["value"].as_str()), (200, Some("v19")));
    let (_, stats) = node.get("/stats");
    assert_eq!(stats["storage"]["recovered_seq"], 20);
    let recovery = stats["storage"]["recovery"].as_str().unwrap();
    assert!(recovery.contains("TORN TAIL"), "{recovery}");
    assert!(
        node.log_text().contains("torn write"),
        "{}",
        node.log_text()
    );
    // The log goes on after the cut.
    node.write("k20", "v20");
    node.crash();
    let node = Node::start(&dir, port, &[]).unwrap();
    assert_eq!(node.get("/data/k20").0, 200);
}

#[test]
fn corruption_in_the_middle_makes_the_node_refuse_to_serve() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("leader");
    let port = node_with_writes(&dir, 40);
    let seg = only_segment(&dir);
    let mut bytes = std::fs::read(&seg).unwrap();
    // The middle of the records, not of the file: most of the file is the
    // preallocated zero tail.
    let middle = records_end(&seg) as usize / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&seg, bytes).unwrap();
    let err = match Node::start(&dir, port, &[]) {
        Ok(_) => panic!("a node with a corrupt log must not serve"),
        Err(e) => e,
    };
    assert!(err.contains("refusing to serve"), "{err}");
    assert!(err.contains("corrupt"), "{err}");
    // A distinctive exit code, so a supervisor can tell and repair it.
    assert!(err.starts_with("exited with exit status: 65"), "{err}");
}

#[test]
fn missing_or_empty_directory_starts_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("not/yet/there");
    let node = Node::start(&missing, free_port_block(), &[]).unwrap();
    let (_, stats) = node.get("/stats");
    assert_eq!(stats["storage"]["recovered_seq"], 0);
    assert_eq!(stats["data_count"], 0);
    drop(node);
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let node = Node::start(&empty, free_port_block(), &[]).unwrap();
    assert_eq!(node.get("/data/k0").0, 404);
}

#[test]
fn snapshots_bound_the_log_and_recovery_uses_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("leader");
    let port = free_port_block();
    let node = Node::start(&dir, port, &["--snapshot-every", "50"]).unwrap();
    for i in 0..230 {
        node.write(&format!("k{}", i % 40), &format!("v{i}"));
    }
    // Snapshots are taken in the background: wait for the one at >= 200.
    wait("a snapshot at seq >= 200", secs(10))
        .every(millis(20))
        .until(|| {
            let seq = node.get("/stats").1["storage"]["snapshot_seq"].as_u64();
            if seq >= Some(200) {
                Ok(())
            } else {
                Err(format!("no snapshot taken: {seq:?}"))
            }
        });
    node.crash();
    let snaps = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "snap")
        })
        .count();
    assert_eq!(snaps, 1, "older snapshots are deleted");
    let node = Node::start(&dir, port, &["--snapshot-every", "50"]).unwrap();
    let (_, stats) = node.get("/stats");
    assert_eq!(stats["storage"]["recovered_seq"], 230);
    assert_eq!(stats["data_count"], 40);
    let recovery = stats["storage"]["recovery"].as_str().unwrap();
    assert!(!recovery.contains("snapshot at 0"), "{recovery}");
    let (_, v) = node.get("/data/k29");
    assert_eq!(v["value"], "v229");
}

/// A follower whose log is corrupt in the middle no longer stops `kvlab up`:
/// it refuses to serve (exit code 65), the coordinator moves its directory
/// aside (`follower-1.corrupt-<unix time>`, kept), starts it empty, and the
/// leader rebuilds it by a full catch-up. The event log says so.
#[test]
fn a_corrupt_follower_is_set_aside_and_rebuilt_from_the_leader() {
    let data = tempfile::tempdir().unwrap();
    let flags = "--no-delay --followers 2 -W 2 -R 1";
    {
        let c = Cluster::start_on(data.path(), flags);
        for i in 0..40 {
            assert_eq!(c.write(&format!("k{i}"), &format!("v{i}")).0, 200);
        }
    } // stopped cleanly
    let follower = data.path().join("follower-1");
    let seg = only_segment(&follower);
    let mut bytes = std::fs::read(&seg).unwrap();
    let middle = records_end(&seg) as usize / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&seg, &bytes).unwrap();

    let c = Cluster::start_on(data.path(), flags);
    let event = c.wait_for_event(
        "corrupt_log_set_aside",
        Some("follower-1"),
        Duration::from_secs(5),
    );
    let message = event["message"].as_str().unwrap_or_default();
    assert!(message.contains("corrupt"), "{event}");
    assert!(message.contains("full catch-up"), "{event}");
    let aside: Vec<PathBuf> = std::fs::read_dir(data.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("follower-1.corrupt-"))
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(message.contains(&*aside[0].to_string_lossy()), "{event}");
    // Kept as it was, for inspection.
    assert_eq!(std::fs::read(only_segment(&aside[0])).unwrap(), bytes);
    assert_eq!(c.wait_caught_up("follower-1").0, 200);
    let held = c.node_data(&c.node_url(1));
    for i in 0..40 {
        assert_eq!(held[format!("k{i}")]["value"], format!("v{i}"), "k{i}");
    }
    assert_eq!(c.write("after", "repair").0, 200);
}

// ---------------------------------------------------------------------------
// Power loss: torn writes, damaged logs repaired from the cluster (issue 23)
// ---------------------------------------------------------------------------

const REPAIR_FLAGS: &str = "--no-delay --followers 2 -W 2 -R 1";

/// Where each entry record of a segment starts (durable markers, 16-byte
/// payloads, skipped), up to the zero tail.
fn entry_offsets(seg: &Path) -> Vec<usize> {
    let bytes = std::fs::read(seg).unwrap();
    let mut offsets = Vec::new();
    let mut at = 24usize;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        if len != kvlab::storage::codec::MARKER_LEN {
            offsets.push(at);
        }
        at += 8 + len;
    }
    offsets
}

/// The reproduction of issue 23: 128 zero bytes just before the last record.
fn zeros_before_last_record(seg: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(seg).unwrap();
    let last = *entry_offsets(seg).last().unwrap();
    bytes[last - 128..last].fill(0);
    bytes
}

/// A flipped byte in the middle of the records.
fn flip_in_the_middle(seg: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(seg).unwrap();
    let middle = records_end(seg) as usize / 2;
    bytes[middle] ^= 0x5a;
    bytes
}

/// Where `node_id`'s directory under `data` was set aside.
fn set_aside(data: &Path, node_id: &str) -> Vec<PathBuf> {
    std::fs::read_dir(data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                n.to_string_lossy()
                    .starts_with(&format!("{node_id}.corrupt-"))
            })
        })
        .collect()
}

/// 40 writes on a cluster stopped cleanly, `damage` done to the only
/// segment of `node_id`, and `kvlab up` again on the same directory: the
/// cluster serves writes within 10 s, every acknowledged key is readable,
/// and `node_id`'s directory was set aside and the node rebuilt.
fn damaged_node_is_repaired(node_id: &str, index: u16, damage: fn(&Path) -> Vec<u8>) {
    let data = tempfile::tempdir().unwrap();
    {
        let c = Cluster::start_on(data.path(), REPAIR_FLAGS);
        for i in 0..40 {
            assert_eq!(c.write(&format!("k{i}"), &format!("v{i}")).0, 200);
        }
    } // stopped cleanly: every log is sealed
    let seg = only_segment(&data.path().join(node_id));
    let bytes = damage(&seg);
    std::fs::write(&seg, &bytes).unwrap();

    let started = Instant::now();
    let c = Cluster::start_on(data.path(), REPAIR_FLAGS);
    let first = c.eventually("a write after the restart", secs(10), || {
        match c.write("after", "repair") {
            (200, _) => Ok(started.elapsed()),
            other => Err(format!("{other:?}")),
        }
    });
    eprintln!("{node_id} repaired: first write served {first:?} after kvlab up");
    assert!(first < secs(10), "first write after {first:?}");
    let needed = c.wait_for_event("repair_needed", Some(node_id), secs(5));
    assert!(
        needed["message"]
            .as_str()
            .unwrap()
            .contains("corrupt log segment"),
        "{needed}"
    );
    let event = c.wait_for_event("corrupt_log_set_aside", Some(node_id), secs(5));
    let message = event["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("offset"),
        "names what was damaged: {event}"
    );
    let aside = set_aside(data.path(), node_id);
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(message.contains(&*aside[0].to_string_lossy()), "{event}");
    assert_eq!(std::fs::read(only_segment(&aside[0])).unwrap(), bytes);
    let repairs = &c.status()["repairs"];
    assert_eq!(repairs[0]["node_id"], node_id, "{repairs}");
    assert_eq!(repairs[0]["state"], "rebuilt", "{repairs}");
    every_write_held_after_repair(&c, node_id, index);
}

/// Every acknowledged write (`k0..k39`, then `after`) reads back through the
/// cluster, and the rebuilt node `node_id` (the `index`-th) holds them all.
fn every_write_held_after_repair(c: &Cluster, node_id: &str, index: u16) {
    for i in 0..40 {
        let (code, v) = c.read(&format!("k{i}"));
        assert_eq!((code, v["value"].as_str()), (200, Some(&*format!("v{i}"))));
    }
    assert_eq!(c.wait_caught_up(node_id).0, 200);
    let held = c.node_data(&c.node_url(index));
    for i in 0..40 {
        assert_eq!(held[format!("k{i}")]["value"], format!("v{i}"), "k{i}");
    }
    assert_eq!(held["after"]["value"], "repair");
}

/// 40 writes on a cluster stopped cleanly, then `node_id`'s term file
/// overwritten with `garbage` (or deleted, with `None`): the node no longer
/// knows the highest term it saw, so it must not start at term 0 (it could
/// follow a deposed leader in an old term). It takes the corrupt log's
/// repair path: the cluster serves, every acknowledged key is readable, the
/// node's directory is set aside and rebuilt, and the events say why.
fn bad_term_file_is_repaired(node_id: &str, index: u16, garbage: Option<&[u8]>, found: &str) {
    let data = tempfile::tempdir().unwrap();
    {
        let c = Cluster::start_on(data.path(), REPAIR_FLAGS);
        for i in 0..40 {
            assert_eq!(c.write(&format!("k{i}"), &format!("v{i}")).0, 200);
        }
    } // stopped cleanly
    let term_file = data.path().join(node_id).join("term.json");
    match garbage {
        Some(bytes) => std::fs::write(&term_file, bytes).unwrap(),
        None => std::fs::remove_file(&term_file).unwrap(),
    }

    let c = Cluster::start_on(data.path(), REPAIR_FLAGS);
    c.eventually("a write after the restart", secs(10), || {
        match c.write("after", "repair") {
            (200, _) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let needed = c.wait_for_event("repair_needed", Some(node_id), secs(5));
    let needed = needed["message"].as_str().unwrap_or_default().to_string();
    assert!(needed.contains(found), "{needed}");
    assert!(needed.contains("term.json"), "{needed}");
    let event = c.wait_for_event("corrupt_log_set_aside", Some(node_id), secs(5));
    let message = event["message"].as_str().unwrap_or_default();
    assert!(message.contains(found), "names what was repaired: {event}");
    assert!(message.contains("highest term"), "and why: {event}");
    let aside = set_aside(data.path(), node_id);
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(message.contains(&*aside[0].to_string_lossy()), "{event}");
    // Kept as it was, for inspection.
    let kept = std::fs::read(aside[0].join("term.json")).ok();
    assert_eq!(kept.as_deref(), garbage);
    let repairs = &c.status()["repairs"];
    assert_eq!(repairs[0]["node_id"], node_id, "{repairs}");
    assert_eq!(repairs[0]["state"], "rebuilt", "{repairs}");
    assert!(
        repairs[0]["found"].as_str().unwrap().contains(found),
        "{repairs}"
    );
    every_write_held_after_repair(&c, node_id, index);
}

/// The follow-up of issue 23: a garbage term file on the leader no longer
/// stops the cluster (it used to exit with code 1, and `kvlab up` with it).
#[test]
fn a_leader_with_a_garbage_term_file_is_repaired_from_the_cluster() {
    bad_term_file_is_repaired("leader", 0, Some(b"garbage"), "unreadable term file");
}

/// A term file lost beside a non-empty log: a node of a cluster always saves
/// its term before its first entry, so the file was lost, not never written.
#[test]
fn a_follower_whose_term_file_is_lost_is_repaired_from_the_cluster() {
    bad_term_file_is_repaired("follower-1", 1, None, "missing term file");
}

/// Issue 23's reproduction: the stopped leader's log damaged just before
/// its last record. The leader no longer stops the cluster: it waits for
/// repair, a follower is elected, and the leader is rebuilt from it.
#[test]
fn a_leader_damaged_before_its_last_record_is_repaired_from_the_cluster() {
    damaged_node_is_repaired("leader", 0, zeros_before_last_record);
}

#[test]
fn a_leader_damaged_in_the_middle_is_repaired_from_the_cluster() {
    damaged_node_is_repaired("leader", 0, flip_in_the_middle);
}

#[test]
fn a_follower_damaged_before_its_last_record_is_repaired_from_the_cluster() {
    damaged_node_is_repaired("follower-2", 2, zeros_before_last_record);
}

/// Every node's log damaged before its last acknowledged write: no healthy
/// node holds the acknowledged writes, so `kvlab up` refuses to start, and
/// says what it found on each node.
#[test]
fn a_cluster_whose_every_log_is_damaged_refuses_to_start() {
    let data = tempfile::tempdir().unwrap();
    {
        let c = Cluster::start_on(data.path(), REPAIR_FLAGS);
        for i in 0..20 {
            assert_eq!(c.write(&format!("k{i}"), &format!("v{i}")).0, 200);
        }
    }
    for id in ["leader", "follower-1", "follower-2"] {
        let seg = only_segment(&data.path().join(id));
        let bytes = zeros_before_last_record(&seg);
        std::fs::write(&seg, bytes).unwrap();
    }
    let stderr = up_refused(data.path(), REPAIR_FLAGS);
    assert!(stderr.contains("every node's log"), "{stderr}");
    for id in ["leader", "follower-1", "follower-2"] {
        assert!(
            stderr.contains(&format!("DAMAGED: {id} refused to serve")),
            "{id}: {stderr}"
        );
    }
    assert!(stderr.contains("What you can do"), "{stderr}");
    assert_nothing_set_aside(data.path());
}

/// Runs `kvlab up` on `data`, expects it to refuse to start, and returns
/// what it printed.
fn up_refused(data: &Path, flags: &str) -> String {
    let base = free_port_block();
    let logs = tempfile::tempdir().unwrap();
    let out = kvlab()
        .arg("up")
        .arg("--data-dir")
        .arg(data)
        .args(common::up_ports(base))
        .arg("--log-dir")
        .arg(logs.path())
        .arg("--quiet")
        .args(flags.split_whitespace())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("refusing to start"), "{stderr}");
    stderr
}

/// Nothing was moved aside or rebuilt: the evidence stays.
fn assert_nothing_set_aside(data: &Path) {
    let names: Vec<String> = std::fs::read_dir(data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains(".corrupt-")), "{names:?}");
}

/// With W=1 a write was acknowledged once on the leader and one follower:
/// if both logs are damaged, the healthy follower may lack it. The start is
/// refused (naming the healthy node too), unless `--unclean-failover`
/// accepts the risk: then the damaged nodes are rebuilt from the healthy one.
#[test]
fn more_than_w_damaged_logs_refuse_to_start_unless_unclean() {
    let flags = "--no-delay --followers 2 -W 1 -R 1";
    let data = tempfile::tempdir().unwrap();
    {
        let c = Cluster::start_on(data.path(), flags);
        for i in 0..20 {
            assert_eq!(c.write(&format!("k{i}"), &format!("v{i}")).0, 200);
        }
    }
    for id in ["leader", "follower-1"] {
        let seg = only_segment(&data.path().join(id));
        let bytes = flip_in_the_middle(&seg);
        std::fs::write(&seg, bytes).unwrap();
    }
    let stderr = up_refused(data.path(), flags);
    assert!(stderr.contains("W=1"), "{stderr}");
    assert!(stderr.contains("DAMAGED: leader refused"), "{stderr}");
    assert!(stderr.contains("DAMAGED: follower-1 refused"), "{stderr}");
    assert!(stderr.contains("healthy: follower-2"), "{stderr}");
    assert!(stderr.contains("--unclean-failover"), "{stderr}");
    assert_nothing_set_aside(data.path());

    let c = Cluster::start_on(data.path(), &format!("{flags} --unclean-failover"));
    c.wait_for_event("corrupt_log_set_aside", Some("leader"), secs(5));
    c.wait_for_event("corrupt_log_set_aside", Some("follower-1"), secs(5));
    assert_eq!(c.status()["leader"]["node_id"], "follower-2");
    assert_eq!(c.write("after", "unclean").0, 200);
}

const POWER_FLAGS: &str = "--no-delay --followers 2 -W 1 -R 2 --fsync always --simulate-power-loss";

/// Issue 23's incident, as it happened: a power cut tears the leader's last
/// group-commit write (unacknowledged: a hole, then valid records) and the
/// whole cluster loses power. At the next `kvlab up` the leader's recovery
/// drops the torn write (never fsynced, so never acknowledged), a follower
/// holding more is elected, and every acknowledged write is there.
#[test]
fn a_write_torn_by_a_power_cut_on_the_leader_is_dropped_and_the_cluster_recovers() {
    let data = tempfile::tempdir().unwrap();
    let c = Cluster::start_on(data.path(), POWER_FLAGS);
    let load = Load::start(&c.coordinator);
    load.wait_acked(0, 50);
    // The leader dies at its next group write, tearing it.
    let (code, body) = c.post("/kill/leader?mode=power", json!({}));
    assert_eq!(code, 200, "{body}");
    let acked = load.stop();
    c.power_cut();

    let c = Cluster::start_on(data.path(), POWER_FLAGS);
    let stats = c.get_json(&format!("{}/stats", c.node_url(0)));
    let recovery = stats["storage"]["recovery"].as_str().unwrap_or_default();
    assert!(recovery.contains("TORN TAIL"), "{recovery}");
    assert!(recovery.contains("power cut"), "{recovery}");
    assert_eq!(c.write("after", "the cut").0, 200);
    let mut tally = Tally::default();
    let leader = c.status()["leader"]["url"].as_str().unwrap().to_string();
    tally.check_node_holds(&c, &leader, &acked);
    assert!(tally.lost.is_empty(), "lost: {:?}", tally.lost);
    // The old leader leads again (no follower got further) or catches up
    // like any follower.
    if c.status()["leader"]["node_id"] != "leader" {
        assert_eq!(c.wait_caught_up("leader").0, 200);
    }
}

/// Five power cuts of the whole cluster under load, `--fsync always`: no
/// acknowledged write is lost. Each cut also tears the leader's last write.
#[test]
fn five_power_cuts_of_the_whole_cluster_lose_no_acknowledged_write() {
    let data = tempfile::tempdir().unwrap();
    let mut rng = Lcg(seed());
    let mut acked: Vec<Acked> = vec![];
    let mut tally = Tally::default();
    for _ in 0..5 {
        let c = Cluster::start_on(data.path(), POWER_FLAGS);
        let leader = c.status()["leader"]["url"].as_str().unwrap().to_string();
        tally.check_node_holds(&c, &leader, &acked);
        let load = Load::start(&c.coordinator);
        load.wait_acked(0, 20 + rng.below(200) as usize);
        let leader_id = c.status()["leader"]["node_id"]
            .as_str()
            .unwrap()
            .to_string();
        let (code, body) = c.post(&format!("/kill/{leader_id}?mode=power"), json!({}));
        assert_eq!(code, 200, "{body}");
        acked.extend(load.stop());
        c.power_cut();
    }
    let c = Cluster::start_on(data.path(), POWER_FLAGS);
    let leader = c.status()["leader"]["url"].as_str().unwrap().to_string();
    tally.check_node_holds(&c, &leader, &acked);
    eprintln!(
        "power cuts: 5, {} acknowledged writes, {} checks, {} lost",
        acked.len(),
        tally.checks,
        tally.lost.len()
    );
    assert!(tally.lost.is_empty(), "lost: {:?}", tally.lost);
}

/// `kvlab check --nemesis power-loss`: power cuts of the leader and of
/// followers (each tearing the node's next write) under a linearizability
/// check with W + R > N. Every cut was injected and the history is valid.
#[test]
fn check_with_power_loss_faults_is_valid() {
    let out_dir = tempfile::tempdir().unwrap();
    let base = free_port_block().to_string();
    let scratch = scratch();
    let out = kvlab_in(&scratch)
        .arg("check")
        .args(["--followers", "2", "-W", "2", "-R", "1", "--no-delay"])
        .args([
            "--nemesis",
            "power-loss",
            "--time-limit",
            "12",
            "--seed",
            "7",
        ])
        .args(["--base-port", &base, "--format", "json", "--out"])
        .arg(out_dir.path())
        .output()
        .unwrap();
    let all = format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{all}");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["verdict"], "valid", "{all}");
    let faults = r["faults"].as_array().unwrap();
    assert!(!faults.is_empty(), "no fault ran: {all}");
    for f in faults {
        assert_eq!(f["kind"], "power-loss", "{f}");
        assert!(f.get("error").is_none(), "{f}");
    }
}

/// A power cut asked of a cluster that does not simulate power loss is
/// refused with a clear error, and nothing happens to the node.
#[test]
fn a_power_cut_without_the_simulation_is_refused() {
    let c = Cluster::start(REPAIR_FLAGS);
    let (code, body) = c.post("/kill/follower-1?mode=power", json!({}));
    assert_eq!(code, 409, "{body}");
    assert!(body.to_string().contains("--simulate-power-loss"), "{body}");
    assert_eq!(c.write("still", "alive").0, 200);
    let (code, body) = c.post("/kill/follower-1?mode=blackout", json!({}));
    assert_eq!(code, 400, "{body}");
    assert!(body.to_string().contains("power"), "{body}");
}

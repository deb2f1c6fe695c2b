//! The lab's demos and the cluster's guarantees, against real clusters.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{
    always, http, millis, process_alive, secs, wait, Cluster, DEMO_3_2_2, FAST_1_1_1, FAST_2_1_1,
    FAST_2_2_2,
};
use serde_json::{json, Value};

/// Demos 1 and 2: start, write, read, status.
#[test]
fn demo_write_read_status() {
    let c = Cluster::start(DEMO_3_2_2);
    let (code, w) = c.write("name", "distributed-systems");
    assert_eq!(code, 200, "{w}");
    assert_eq!(w["status"], "success");
    assert_eq!(w["version"], 1);
    assert_eq!(w["sync_acks"], 2);
    assert_eq!(w["quorum"], 2);
    assert_eq!(
        w["sync_replicated_to"],
        json!([c.node_url(1), c.node_url(2)])
    );
    let (code, r) = c.read("name");
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["value"], "distributed-systems");
    assert_eq!(r["version"], 1);
    assert_eq!(r["quorum_responses"], 2);
    assert_eq!(
        r["served_by"], "follower-2",
        "the sync member of the read set wins"
    );
    let (_, w2) = c.write("name", "again");
    assert_eq!(w2["version"], 2);
    let s = c.status();
    assert_eq!(s["leader"]["status"], "alive");
    assert_eq!(
        s["quorum"],
        json!({"W": 2, "R": 2, "total_alive": 4, "alive_followers": 3, "can_write": true, "can_read": true})
    );
    let (code, info) = c.get("/");
    assert_eq!(code, 200);
    assert_eq!(info["follower_count"], 3);
    assert_eq!(info["leader"], "leader", "the node id, as in the original");
    assert_eq!(info["leader_url"], c.node_url(0));
    let leader_stats = c.get_json(&format!("{}/stats", c.node_url(0)));
    let urls: Vec<String> = (1..=3).map(|i| c.node_url(i)).collect();
    assert_eq!(
        leader_stats["followers"],
        json!(urls),
        "URL strings, as in the original"
    );
    assert_eq!(
        leader_stats["follower_progress"][0]["node_id"],
        "follower-1"
    );
    let (code, missing) = c.read("nope");
    assert_eq!(code, 404);
    assert_eq!(missing["detail"], "Key 'nope' not found in quorum");
}

/// Demo 3: node failure. W=2 of 3 survives one loss, not two.
#[test]
fn demo_node_failure() {
    let c = Cluster::start(&format!("{DEMO_3_2_2} --sync-delay 0.1 --async-delay 1"));
    let (code, k) = c.post("/kill/follower-1", json!({}));
    assert_eq!(code, 200, "{k}");
    assert_eq!(
        k,
        json!({"status": "stopped", "node_id": "follower-1", "can_write": true})
    );
    assert_eq!(c.follower("follower-1")["status"], "dead");
    let (code, w) = c.write("k", "v");
    assert_eq!(code, 200, "{w}");
    let (code, k) = c.post("/kill/follower-2", json!({}));
    assert_eq!(code, 200);
    assert_eq!(k["can_write"], false);
    let (code, w) = c.write("k", "v2");
    assert_eq!(code, 503);
    assert_eq!(w["detail"]["error"], "Write quorum not available");
    assert_eq!(w["detail"]["alive_followers"], 1);
    assert_eq!(w["detail"]["required"], 2);
    c.wait_for_event("write_quorum_lost", None, Duration::from_secs(5));
}

/// Demo 4: catch-up. Writes made while a follower is down reach it on respawn.
#[test]
fn demo_catchup_on_spawn() {
    let c = Cluster::start("--followers 3 -W 1 -R 3 --no-delay");
    c.post("/kill/follower-1", json!({}));
    for i in 0..20 {
        assert_eq!(c.write(&format!("k{i}"), "while-down").0, 200);
    }
    let (code, s) = c.post("/spawn", json!({}));
    assert_eq!(code, 200, "{s}");
    assert_eq!(s["node_id"], "follower-1", "the dead slot is reused");
    assert_eq!(s["url"], c.node_url(1));
    let (code, cu) = c.post("/catchup", json!({"node_id": "follower-1"}));
    assert_eq!(code, 200, "{cu}");
    assert_eq!(cu["status"], "caught_up");
    let data = c.node_data(&c.node_url(1));
    assert_eq!(data.as_object().unwrap().len(), 20);
    // R=3 asks all three; follower-1 answers as well.
    let (_, r) = c.read("k7");
    assert_eq!(r["quorum_responses"], 3);
    assert_eq!(r["value"], "while-down");
}

/// `/spawn` with no dead slot makes a genuinely new follower.
#[test]
fn spawn_without_dead_slot_adds_a_follower() {
    let c = Cluster::start(FAST_2_1_1);
    c.write("a", "1");
    // W + R <= N already, so growing N needs saying so (`grow`).
    let (code, s) = c.post("/spawn", json!({"grow": true}));
    assert_eq!(code, 200, "{s}");
    assert_eq!(s["node_id"], "follower-3");
    assert_eq!(s["url"], c.node_url(3));
    assert_eq!(c.status()["followers"].as_array().unwrap().len(), 3);
    let (code, conflict) = c.post("/spawn", json!({"node_id": "follower-1"}));
    assert_eq!(code, 409, "a live follower is not respawned: {conflict}");
    c.post("/catchup", json!({"node_id": "follower-3"}));
    assert_eq!(c.node_data(&c.node_url(3))["a"]["value"], "1");
}

/// W + R > N: 200 sequential write-then-read pairs, lab delays, no stale read.
#[test]
fn overlapping_quorums_never_read_stale() {
    let c = Cluster::start(DEMO_3_2_2);
    let mut stale = 0;
    for i in 0..200 {
        let key = format!("key-{}", i % 7);
        let (code, w) = c.write(&key, &format!("value-{i}"));
        assert_eq!(code, 200, "{w}");
        let (code, r) = c.read(&key);
        assert_eq!(code, 200, "{r}");
        if r["version"].as_u64() < w["version"].as_u64() {
            stale += 1;
        }
    }
    assert_eq!(stale, 0);
}

/// W + R <= N (N=5, W=4, R=1): a read right after a write misses it.
#[test]
fn disjoint_quorums_read_stale() {
    let c = Cluster::start("--followers 5 -W 4 -R 1");
    let mut stale = 0;
    for i in 0..3 {
        let (code, w) = c.write("cart", &format!("items-{i}"));
        assert_eq!(code, 200, "{w}");
        let (code, r) = c.read("cart");
        let fresh = code == 200 && r["version"] == w["version"];
        if !fresh {
            stale += 1;
        }
    }
    assert_eq!(stale, 3, "every read right after a write is stale");
    // Async replication finishes after its 5 s delay.
    c.wait_for_event("async_done", Some("follower-5"), Duration::from_secs(15));
    let r = wait("async replication to complete", secs(15))
        .every(millis(100))
        .events(&c)
        .until(|| {
            let (_, r) = c.read("cart");
            if r["value"] == "items-2" {
                Ok(r)
            } else {
                Err(r)
            }
        });
    assert_eq!(r["served_by"], "follower-5");
}

/// Runs `writers` threads writing distinct keys until stopped; returns the
/// acknowledged writes (key -> value).
struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<HashMap<String, String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Writers {
    fn start(c: &Cluster, writers: usize) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(HashMap::new()));
        let threads = (0..writers)
            .map(|t| {
                let (stop, acked) = (stop.clone(), acked.clone());
                let url = format!("{}/write", c.coordinator);
                std::thread::spawn(move || {
                    let http = http().build();
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let (key, value) = (format!("w{t}-{i}"), format!("v{i}"));
                        let resp = http
                            .post(&url)
                            .json(&json!({"key": key, "value": value}))
                            .send();
                        if resp.is_ok_and(|r| r.status() == 200) {
                            acked.lock().unwrap().insert(key, value);
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        Writers {
            stop,
            acked,
            threads,
        }
    }

    fn wait_for(&self, count: usize) {
        wait(format_args!("{count} acknowledged writes"), secs(30))
            .every(millis(10))
            .until(|| {
                let acked = self.acked.lock().unwrap().len();
                if acked >= count {
                    Ok(())
                } else {
                    Err(format!("writers made no progress: {acked} acknowledged"))
                }
            });
    }

    fn finish(self) -> HashMap<String, String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        Arc::try_unwrap(self.acked).unwrap().into_inner().unwrap()
    }
}

fn assert_holds_all(c: &Cluster, node_url: &str, acked: &HashMap<String, String>) {
    let data = c.node_data(node_url);
    let missing: Vec<_> = acked
        .iter()
        .filter(|(k, v)| data[k.as_str()]["value"] != v.as_str())
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acked writes missing on {node_url}",
        missing.len(),
        acked.len()
    );
}

/// Loss case 1: a follower added while writes flow misses none of them.
#[test]
fn catchup_new_follower_under_concurrent_writes() {
    let c = Cluster::start(FAST_2_1_1);
    let writers = Writers::start(&c, 4);
    writers.wait_for(200);
    let (code, s) = c.post("/spawn", json!({"grow": true}));
    assert_eq!(code, 200, "{s}");
    writers.wait_for(600);
    let acked = writers.finish();
    c.post("/catchup", json!({"node_id": "follower-3"}));
    assert_holds_all(&c, &c.node_url(3), &acked);
}

/// Loss case 2: a follower SIGKILLed and respawned comes back complete.
#[test]
fn catchup_after_crash_and_respawn_under_concurrent_writes() {
    let c = Cluster::start("--followers 3 -W 1 -R 1 --no-delay");
    let writers = Writers::start(&c, 4);
    writers.wait_for(100);
    let (code, k) = c.post("/kill/follower-2?mode=crash", json!({}));
    assert_eq!(code, 200, "{k}");
    assert_eq!(k["status"], "crashed");
    // The registry notices the silence (5 s timeout) and tells the coordinator.
    c.wait_for_event("node_dead", Some("follower-2"), Duration::from_secs(15));
    writers.wait_for(400);
    let (code, s) = c.post("/spawn", json!({}));
    assert_eq!(code, 200, "{s}");
    assert_eq!(s["node_id"], "follower-2");
    writers.wait_for(800);
    let acked = writers.finish();
    c.post("/catchup", json!({"node_id": "follower-2"}));
    for i in 1..=3 {
        assert_holds_all(&c, &c.node_url(i), &acked);
    }
}

/// Loss case 3: a follower too far behind gets a snapshot, and the stream
/// continues after it: nothing written around the snapshot is lost.
#[test]
fn catchup_by_snapshot_keeps_concurrent_writes() {
    let c = Cluster::start(&format!("{FAST_2_1_1} --log-retain 50"));
    let writers = Writers::start(&c, 4);
    writers.wait_for(50);
    c.post("/kill/follower-2", json!({}));
    writers.wait_for(500);
    c.post("/spawn", json!({}));
    writers.wait_for(900);
    let acked = writers.finish();
    c.post("/catchup", json!({"node_id": "follower-2"}));
    assert_holds_all(&c, &c.node_url(2), &acked);
    assert_holds_all(&c, &c.node_url(1), &acked);
}

/// The leader's death is named as the cause; reads go on.
#[test]
fn leader_death_fails_over_and_reads_keep_working() {
    let c = Cluster::start(FAST_2_1_1);
    c.write("x", "1");
    let (code, _) = c.post("/kill/leader", json!({}));
    assert_eq!(code, 200);
    // Reads never stop; writes come back once a follower is promoted
    // (tests/failover.rs covers failover itself).
    let (code, r) = c.read("x");
    assert_eq!((code, r["value"].as_str()), (200, Some("1")));
    c.wait_for_event("leader_dead", None, Duration::from_secs(5));
    c.wait_for_event(
        "leader_promoted",
        Some("follower-1"),
        Duration::from_secs(5),
    );
    let (code, w) = c.write("x", "2");
    assert_eq!(code, 200, "{w}");
    assert_eq!(c.status()["leader"]["node_id"], "follower-1");
    assert_eq!(c.read("x").1["value"], "2");
}

/// A network blip longer than the timeout, with a short spawn delay: the
/// slot is respawned, and the old process is fenced: one process per id.
#[test]
fn blip_replaced_node_is_fenced() {
    let c = Cluster::start(&format!("{FAST_2_1_1} --auto-spawn --spawn-delay 1"));
    let old = c.follower("follower-1");
    let old_pid = old["pid"].as_u64().unwrap() as u32;
    let since = c.last_event_id();
    c.pause_heartbeats(1, 8.0);
    c.wait_for_event_after(
        since,
        "node_dead",
        Some("follower-1"),
        Duration::from_secs(15),
    );
    c.wait_for_event_after(
        since,
        "slot_reused",
        Some("follower-1"),
        Duration::from_secs(15),
    );
    let s = c.wait_status("the replacement", Duration::from_secs(15), |s| {
        s["followers"][0]["status"] == "alive"
            && s["followers"][0]["incarnation"] != old["incarnation"]
    });
    let f1: Vec<_> = s["followers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["node_id"] == "follower-1")
        .collect();
    assert_eq!(f1.len(), 1);
    wait("the replaced process to stop", secs(5))
        .every(millis(20))
        .until(|| {
            if process_alive(old_pid) {
                Err("the replaced process still runs")
            } else {
                Ok(())
            }
        });
    assert_eq!(c.write("after", "blip").0, 200);
}

/// No orphans: SIGKILL of `kvlab up`'s process group (a machine that
/// crashed, or a test's end) takes every node with it: they share it.
#[test]
fn no_orphans_after_sigkill() {
    let mut c = Cluster::start(FAST_2_1_1);
    let pids = c.pids();
    assert_eq!(pids.len(), 3);
    c.kill_group();
    wait("the node processes to die with kvlab up", secs(5))
        .every(millis(20))
        .until(|| {
            let alive: Vec<_> = pids.iter().filter(|&&p| process_alive(p)).collect();
            if alive.is_empty() {
                Ok(())
            } else {
                Err(format!("node processes outlived kvlab up: {alive:?}"))
            }
        });
}

/// No orphans after a graceful stop either.
#[test]
fn no_orphans_after_sigterm() {
    let c = Cluster::start(FAST_1_1_1);
    let pids = c.pids();
    drop(c);
    assert!(pids.iter().all(|&p| !process_alive(p)));
}

fn as_text(v: &Value) -> String {
    v.to_string()
}

/// Bad input gets a clear error and never changes data.
#[test]
fn bad_input_is_refused_clearly() {
    let c = Cluster::start(FAST_1_1_1);
    c.write("keep", "me");
    let raw = |body: &str| {
        let r = c
            .http
            .post(format!("{}/write", c.coordinator))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().unwrap())
    };
    let (code, e) = raw("{not json");
    assert_eq!(code, 400, "{e}");
    assert_eq!(e["detail"]["error"], "malformed JSON body");
    let (code, e) = raw(r#"{"key": "keep"}"#);
    assert_eq!(code, 422);
    assert!(
        as_text(&e).contains("value"),
        "names the missing field: {e}"
    );
    let (code, e) = raw(r#"{"key": "keep", "value": 5}"#);
    assert_eq!(code, 422, "{e}");
    let (code, e) = c.write("", "x");
    assert_eq!(code, 400, "{e}");
    let (code, e) = c.write(&"k".repeat(5000), "x");
    assert_eq!(code, 413, "{e}");
    let (code, e) = c.write("big", &"v".repeat(1024 * 1024 + 1));
    assert_eq!(code, 413, "{e}");
    // Over the body limit: the server answers 413 and closes the connection
    // without reading the rest, so use a client whose pool is not reused.
    let once = http().build();
    let resp = once
        .post(format!("{}/write", c.coordinator))
        .json(&json!({"key": "huge", "value": "v".repeat(3 * 1024 * 1024)}))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 413);
    for path in ["/kill/follower-9", "/kill/nobody"] {
        let (code, e) = c.post(path, json!({}));
        assert_eq!(code, 404, "{path}: {e}");
    }
    assert_eq!(c.post("/kill/follower-1?mode=explode", json!({})).0, 400);
    assert_eq!(c.post("/catchup", json!({"node_id": "ghost"})).0, 404);
    assert_eq!(c.post("/node-died", json!({"node_id": "ghost"})).0, 404);
    assert_eq!(c.post("/node-died", json!({})).0, 422);
    assert_eq!(c.post("/spawn", json!({"node_id": "bad id!"})).0, 400);
    assert_eq!(c.post("/spawn", json!({"node_id": "leader"})).0, 409);
    // Keys with a `.` or `..` segment could be written but never read back
    // (clients resolve them in the URL): refused at write time, with why.
    for key in [".", "..", "a/../b", "./x", "x/."] {
        let (code, e) = c.write(key, "v");
        assert_eq!(code, 400, "{key}: {e}");
        assert_eq!(e["detail"]["error"], "invalid key", "{key}: {e}");
        assert!(as_text(&e).contains("read back"), "{key}: {e}");
    }
    // Keys with slashes, dots inside a segment and unicode round-trip.
    for key in [
        "a/b/c",
        "ключ",
        "emoji 🎉",
        "sp ace",
        "%2F",
        "a.b",
        "...",
        ".hidden",
    ] {
        let (code, w) = c.write(key, "v");
        assert_eq!(code, 200, "{key}: {w}");
        let (code, r) = c.read(key);
        assert_eq!(code, 200, "{key}: {r}");
        assert_eq!(r["key"], key);
    }
    let (_, r) = c.read("keep");
    assert_eq!(r["value"], "me");
    assert_eq!(r["version"], 1);
    assert_eq!(c.status()["quorum"]["can_write"], true);
}

/// The nodes' batch endpoints (the coordinator's internal protocol) refuse
/// bad batches whole, with a clear error, and change nothing.
#[test]
fn batch_endpoints_refuse_bad_batches() {
    let c = Cluster::start(FAST_1_1_1);
    c.write("keep", "me");
    let (leader, follower) = (c.node_url(0), c.node_url(1));
    let post = |url: String, body: &str| {
        let r = c
            .http
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().unwrap())
    };
    let write = format!("{leader}/batch/write");
    let read = format!("{follower}/batch/read");
    let (code, e) = post(write.clone(), "{not json");
    assert_eq!(code, 400, "{e}");
    let (code, e) = post(write.clone(), r#"{"writes": []}"#);
    assert_eq!(code, 422, "{e}");
    assert!(as_text(&e).contains("1 to"), "{e}");
    // One bad write refuses the whole batch: the good one is not applied.
    let (code, e) = post(
        write.clone(),
        r#"{"writes": [{"key": "keep", "value": "lost"}, {"key": "", "value": "x"}]}"#,
    );
    assert_eq!(code, 400, "{e}");
    let (code, e) = post(
        format!("{follower}/batch/write"),
        r#"{"writes": [{"key": "a", "value": "b"}]}"#,
    );
    assert_eq!(code, 403, "followers take no writes: {e}");
    let (code, e) = post(read.clone(), r#"{"keys": []}"#);
    assert_eq!(code, 422, "{e}");
    let too_many = json!({"keys": vec!["k"; 5000]}).to_string();
    let (code, e) = post(read.clone(), &too_many);
    assert_eq!(code, 422, "{e}");
    let (code, e) = post(read.clone(), r#"{"keys": ["keep", ""]}"#);
    assert_eq!(code, 400, "{e}");
    let (code, r) = post(read, r#"{"keys": ["keep", "nope"]}"#);
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["values"][0]["value"], "me");
    assert_eq!(r["values"][1], Value::Null);
    let (_, r) = c.read("keep");
    assert_eq!(
        (r["value"].as_str(), r["version"].as_u64()),
        (Some("me"), Some(1))
    );
}

/// Values near the 1 MiB limit, written at once, share batches far above the
/// 2 MiB body limit of client requests; they still replicate whole.
#[test]
fn big_values_written_together_replicate() {
    let c = Cluster::start(FAST_2_2_2);
    let value = |i: usize| format!("{i}").repeat(1024 * 1024);
    std::thread::scope(|s| {
        for i in 0..6 {
            let c = &c;
            s.spawn(move || {
                let (code, w) = c.write(&format!("big-{i}"), &value(i));
                assert_eq!(
                    code,
                    200,
                    "big-{i}: {}",
                    &as_text(&w)[..200.min(as_text(&w).len())]
                );
            });
        }
    });
    for i in 0..6 {
        let (code, r) = c.read(&format!("big-{i}"));
        assert_eq!(code, 200);
        assert!(r["value"] == value(i).as_str(), "big-{i} came back changed");
    }
}

/// Impossible settings are refused at start, with the reason.
#[test]
fn impossible_configs_are_refused() {
    for (flags, needle) in [
        (
            vec!["--followers", "3", "-W", "4"],
            "write quorum W=4 is larger than the number of followers N=3",
        ),
        (vec!["--followers", "3", "-R", "5"], "read quorum R=5"),
        (vec!["--followers", "0"], "at least 1"),
        (vec!["--followers", "2", "-W", "0"], "W) must be at least 1"),
        (vec!["--sync-delay=-1"], "delays must be"),
    ] {
        let out = common::kvlab().arg("up").args(&flags).output().unwrap();
        assert!(!out.status.success(), "{flags:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{flags:?}: {err}");
    }
}

/// A taken port is reported, not hung on.
#[test]
fn taken_port_is_reported() {
    let base = common::free_port_block();
    let _hold = std::net::TcpListener::bind(("127.0.0.1", base)).unwrap();
    let scratch = common::scratch();
    let out = common::kvlab_in(&scratch)
        .args([
            "up",
            "--coordinator-port",
            &base.to_string(),
            "--registry-port",
            &(base + 1).to_string(),
            "--node-base-port",
            &(base + 2).to_string(),
            "--quiet",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "port {base} (--coordinator-port) is already in use"
        )),
        "{err}"
    );
}

/// A blip shorter than timeout + spawn delay: the node is declared dead, comes
/// back, and is not replaced when the spawn delay runs out.
#[test]
fn node_back_in_time_is_not_replaced() {
    let c = Cluster::start(&format!("{FAST_2_1_1} --auto-spawn --spawn-delay 5"));
    let before = c.follower("follower-1");
    let since = c.last_event_id();
    c.pause_heartbeats(1, 6.0);
    c.wait_for_event_after(
        since,
        "node_dead",
        Some("follower-1"),
        Duration::from_secs(15),
    );
    c.wait_for_event_after(
        since,
        "node_up",
        Some("follower-1"),
        Duration::from_secs(15),
    );
    // The spawn delay runs out 5 s after the death; give it time to (not) act.
    always(
        "follower-1 not being replaced",
        secs(6),
        millis(200),
        || {
            let f1 = c.follower("follower-1");
            assert_eq!(
                f1["incarnation"], before["incarnation"],
                "the node was replaced"
            );
            true
        },
    );
    let events = c.get(&format!("/events?since={since}")).1;
    assert!(!events
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "slot_reused"));
}

// ---------------------------------------------------------------------------
// The framed wire (`http::wire`)
// ---------------------------------------------------------------------------

/// Calls a node answered on the framed wire, from its `/stats`.
fn wire_calls(c: &Cluster, node: u16) -> u64 {
    let stats: Value = c
        .http
        .get(format!("{}/stats", c.node_url(node)))
        .send()
        .unwrap()
        .json()
        .unwrap();
    stats["wire_calls_served"].as_u64().unwrap()
}

/// kvlab's coordinator and leader speak frames to kvlab's nodes, which
/// offer them; `--internal-wire http` makes every call a plain HTTP/JSON
/// request again. The answers are the same either way.
#[test]
fn writes_and_reads_travel_the_framed_wire_unless_told_otherwise() {
    for (wire, framed) in [("frames", true), ("http", false)] {
        let c = Cluster::start(&format!("{FAST_2_2_2} --internal-wire {wire}"));
        for i in 0..10 {
            let (code, w) = c.write(&format!("k{i}"), "v");
            assert_eq!(code, 200, "--internal-wire {wire}: {w}");
            let (code, w) = c.write(&format!("k{i}"), &format!("v{i}"));
            assert_eq!((code, &w["version"]), (200, &json!(2)), "{w}");
            let (code, r) = c.read(&format!("k{i}"));
            assert_eq!(code, 200, "{r}");
            assert_eq!(
                (&r["value"], &r["version"]),
                (&json!(format!("v{i}")), &json!(2))
            );
        }
        let (leader, follower) = (wire_calls(&c, 0), wire_calls(&c, 1));
        if framed {
            // 20 writes in at least 20 batches to the leader; the
            // follower: the handshake, the entries, 10 reads.
            assert!(leader >= 20, "the leader answered {leader} calls framed");
            assert!(
                follower >= 11,
                "follower-1 answered {follower} calls framed"
            );
        } else {
            assert_eq!((leader, follower), (0, 0), "--internal-wire http");
        }
    }
}

/// Reads an HTTP answer's head from a raw connection: its status code.
fn raw_status(conn: &mut std::net::TcpStream) -> u16 {
    use std::io::Read;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(conn.read(&mut byte).unwrap(), 1, "the head ends early");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    head[9..12].parse().unwrap()
}

/// Sends one frame's bytes and reads the answer frame; `None` if the
/// server closed the connection instead.
fn raw_call(
    conn: &mut std::net::TcpStream,
    frame: &[u8],
) -> Option<kvlab::http::wire::AnswerFrame> {
    use std::io::{Read, Write};
    conn.write_all(frame).unwrap();
    let mut len = [0u8; 4];
    conn.read_exact(&mut len).ok()?;
    let mut content = vec![0u8; u32::from_be_bytes(len) as usize];
    conn.read_exact(&mut content).ok()?;
    Some(kvlab::http::wire::decode_answer(content.into()).unwrap())
}

/// Bad input on the wire: a stranger cannot switch (no secret: 401), a
/// frame that breaks the format gets 400 and the connection goes on, a
/// frame over the limit ends the connection. Nothing of it reaches the data.
#[test]
fn the_framed_wire_refuses_strangers_and_broken_frames() {
    use kvlab::http::wire::encode_request;
    use std::io::Write;
    let c = Cluster::start(FAST_1_1_1);
    let addr = format!("127.0.0.1:{}", c.base + 2);
    let switch = |secret: Option<&str>| {
        let mut conn = std::net::TcpStream::connect(&addr).unwrap();
        conn.set_read_timeout(Some(secs(10))).unwrap();
        let secret = secret.map_or(String::new(), |s| format!("x-kvlab-secret: {s}\r\n"));
        write!(
            conn,
            "GET /wire HTTP/1.1\r\nhost: x\r\nupgrade: kvlab-frames/1\r\nconnection: upgrade\r\n{secret}\r\n"
        )
        .unwrap();
        let status = raw_status(&mut conn);
        (status, conn)
    };
    assert_eq!(switch(None).0, 401, "no secret, no wire");
    assert_eq!(switch(Some("not-the-secret")).0, 401);

    let (status, mut conn) = switch(Some(common::cluster_secret()));
    assert_eq!(status, 101);
    let get =
        |path: &str| encode_request(&reqwest::Method::GET, path, std::iter::empty(), b"").unwrap();
    let health = raw_call(&mut conn, &get("/health")).expect("an answer");
    assert_eq!(health.status, 200);
    // An unknown method code, then a path that is no path: 400 each, named.
    let mut bad = get("/health");
    bad[4] = 9;
    let refused = raw_call(&mut conn, &bad).expect("an answer");
    assert_eq!(refused.status, 400);
    assert!(String::from_utf8_lossy(&refused.body).contains("unknown method code 9"));
    let refused = raw_call(&mut conn, &get("no-slash")).expect("an answer");
    assert_eq!(refused.status, 400, "{:?}", refused.body);
    // A write with a body the leader's own checks refuse, as over HTTP.
    let headers = [(
        reqwest::header::CONTENT_TYPE,
        reqwest::header::HeaderValue::from_static("application/json"),
    )];
    let write = encode_request(
        &reqwest::Method::POST,
        "/batch/write",
        headers.iter().map(|(n, v)| (n, v)),
        b"{\"writes\": 7}",
    )
    .unwrap();
    let refused = raw_call(&mut conn, &write).expect("an answer");
    assert_eq!(refused.status, 422, "{:?}", refused.body);
    assert!(String::from_utf8_lossy(&refused.body).contains("expected fields"));
    // Still the same connection, still answering.
    assert_eq!(raw_call(&mut conn, &get("/health")).unwrap().status, 200);
    // A length over the limit: the connection ends before anything is read.
    let too_long = ((kvlab::api::WIRE_MAX_FRAME + 1) as u32).to_be_bytes();
    assert!(raw_call(&mut conn, &too_long).is_none());
    // Nothing reached the data, and the cluster goes on.
    let (code, w) = c.write("after", "ok");
    assert_eq!((code, &w["version"]), (200, &json!(1)), "{w}");
    let (code, r) = c.read("after");
    assert_eq!((code, &r["value"]), (200, &json!("ok")), "{r}");
}

//! A control plane that corrects itself: membership that survives lost,
//! reordered or forged notices, a dead registry, a prompt stop, and spawns
//! that neither leave broken slots nor silently break W + R > N.

mod common;

use std::net::TcpListener;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{always, eventually, http, millis, secs, wait, Cluster, FAST_2_2_2, FAST_3_2_2};
use serde_json::{json, Value};

fn all_alive(s: &Value) -> bool {
    s["leader"]["status"] == "alive"
        && s["followers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["status"] == "alive")
}

/// Case 1: a forged `/node-died` about a node that heartbeats is not applied.
#[test]
fn forged_node_died_is_checked_and_ignored() {
    let c = Cluster::start("--no-delay");
    for id in ["follower-1", "leader"] {
        let (code, answer) = c.post("/node-died", json!({"node_id": id}));
        assert_eq!(code, 200, "{answer}");
        assert_eq!(answer["status"], "acknowledged");
        assert_eq!(answer["applied"], false, "{answer}");
        assert!(
            answer["reason"].as_str().unwrap().contains("heartbeating"),
            "{answer}"
        );
    }
    let (code, answer) = c.post(
        "/node-died",
        json!({"node_id": "follower-2", "incarnation": 999}),
    );
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["applied"], false, "{answer}");
    // It stays alive across several reconciliations, and writes work.
    always("every node alive", millis(2500), millis(100), || {
        let s = c.status();
        assert!(all_alive(&s), "a heartbeating node was marked dead: {s}");
        true
    });
    assert_eq!(c.write("k", "v").0, 200);
    c.wait_for_event("notice_ignored", Some("follower-1"), Duration::from_secs(1));
}

/// Case 1: the whole control plane (`up`) paused past the failure timeout,
/// then resumed: every node is alive again and stays so.
#[test]
fn paused_control_plane_comes_back_with_every_node_alive() {
    // Many nodes: each is a chance for a notice to be overtaken.
    let c = Cluster::start("--followers 5 -W 3 -R 3 --no-delay");
    let pid = c.child.id() as i32;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    // The fault itself: longer than the 5 s failure timeout.
    std::thread::sleep(Duration::from_secs(7));
    unsafe { libc::kill(pid, libc::SIGCONT) };
    c.wait_status("every node alive", Duration::from_secs(6), all_alive);
    // Within a heartbeat period any late notice has been reconciled away.
    always("every node alive", secs(3), millis(100), || {
        let s = c.status();
        assert!(all_alive(&s), "{s}");
        true
    });
    assert_eq!(c.write("after-pause", "v").0, 200);
}

/// A component process, SIGKILLed when dropped.
struct Component(Child);

impl Drop for Component {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A coordinator this test started itself, seen over HTTP.
struct Remote {
    url: String,
    http: reqwest::blocking::Client,
}

impl Remote {
    fn new(url: &str) -> Remote {
        let http = http().timeout(secs(10)).build();
        Remote {
            url: url.to_string(),
            http,
        }
    }

    fn get_json(&self, url: &str) -> Value {
        self.http
            .get(url)
            .send()
            .and_then(|r| r.json())
            .unwrap_or(Value::Null)
    }

    fn get(&self, path: &str) -> (u16, Value) {
        let resp = self.http.get(format!("{}{path}", self.url)).send().unwrap();
        (resp.status().as_u16(), resp.json().unwrap_or(Value::Null))
    }

    fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .unwrap();
        (resp.status().as_u16(), resp.json().unwrap_or(Value::Null))
    }

    fn status(&self) -> Value {
        self.get_json(&format!("{}/status", self.url))
    }

    fn wait_status(&self, what: &str, timeout: Duration, check: impl Fn(&Value) -> bool) {
        eventually(what, timeout, || {
            let s = self.status();
            if check(&s) {
                Ok(())
            } else {
                Err(s)
            }
        });
    }
}

fn start_registry(port: u16, coordinator: &str) -> Component {
    start_registry_with(port, coordinator, &[])
}

fn start_registry_with(port: u16, coordinator: &str, flags: &[&str]) -> Component {
    Component(
        common::kvlab()
            .args(["registry", "--port", &port.to_string()])
            .args(["--coordinator", coordinator])
            .args(flags)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// A coordinator started alone against the registry at `base + 1`, with
/// FAST_3_2_2 in memory.
fn start_coordinator(base: u16, log_dir: &std::path::Path) -> Component {
    Component(
        common::kvlab()
            .args(["coordinator", "--port", &base.to_string()])
            .args(["--registry", &format!("http://127.0.0.1:{}", base + 1)])
            .args(["--node-base-port", &(base + 2).to_string()])
            .args(FAST_3_2_2.split_whitespace())
            .args(["--in-memory", "--quiet"])
            .arg("--log-dir")
            .arg(log_dir)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Issue 24: a registry restarted while a follower was dead never heard of
/// it (its table held only the nodes that heartbeat to it), so with
/// `--auto-spawn` the cluster ran one follower short for good. Now the
/// coordinator names its dead slots the registry lacks (`POST /missing`):
/// the new registry records follower-1 dead and has it respawned within
/// its spawn delay (plus the coordinator's one-second pull).
#[test]
fn a_restarted_registry_respawns_a_follower_that_died_while_it_was_away() {
    let base = common::free_port_block();
    let coordinator_url = format!("http://127.0.0.1:{base}");
    let registry_url = format!("http://127.0.0.1:{}", base + 1);
    let auto_spawn = ["--auto-spawn", "--spawn-delay", "2"];
    let registry = start_registry_with(base + 1, &coordinator_url, &auto_spawn);
    let log_dir = tempfile::tempdir().unwrap();
    let _coordinator = start_coordinator(base, log_dir.path());
    let c = Remote::new(&coordinator_url);
    c.wait_status("a ready cluster", Duration::from_secs(30), |s| {
        all_alive(s) && s["liveness"] == "registry"
    });
    let before = c.status()["followers"][0]["incarnation"].clone();

    drop(registry);
    c.wait_status("direct probing", Duration::from_secs(3), |s| {
        s["liveness"] == "direct-probe"
    });
    let (code, k) = c.post("/kill/follower-1?mode=crash", json!({}));
    assert_eq!(code, 200, "{k}");
    c.wait_status("follower-1 dead", Duration::from_secs(9), |s| {
        s["followers"][0]["status"] == "dead"
    });

    let _registry = start_registry_with(base + 1, &coordinator_url, &auto_spawn);
    let restarted = Instant::now();
    c.wait_status("follower-1 respawned", Duration::from_secs(10), |s| {
        s["followers"][0]["status"] == "alive" && s["followers"][0]["incarnation"] != before
    });
    let took = restarted.elapsed();
    eprintln!("follower-1 respawned {took:?} after the registry's restart");
    // The spawn delay (2 s), counted from the registry's start (the node
    // has been silent at least that long), then the start of a process.
    assert!(took < Duration::from_secs(4), "{took:?}");
    let nodes = c.get_json(&format!("{registry_url}/nodes"));
    let f1 = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node_id"] == "follower-1")
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(f1["status"], "alive", "{nodes}");
    assert_eq!(c.post("/write", json!({"key": "k", "value": "v"})).0, 200);
}

/// Case 2: with the registry gone, the coordinator probes the nodes itself
/// and still notices a crash; a restarted registry rebuilds its view.
#[test]
fn dead_registry_direct_probes_then_a_new_registry_rebuilds() {
    let base = common::free_port_block();
    let coordinator_url = format!("http://127.0.0.1:{base}");
    let registry_url = format!("http://127.0.0.1:{}", base + 1);
    let registry = start_registry(base + 1, &coordinator_url);
    let log_dir = tempfile::tempdir().unwrap();
    let _coordinator = Component(
        common::kvlab()
            .args(["coordinator", "--port", &base.to_string()])
            .args(["--registry", &registry_url])
            .args(["--node-base-port", &(base + 2).to_string()])
            .args(FAST_3_2_2.split_whitespace())
            .args(["--in-memory", "--quiet"])
            .arg("--log-dir")
            .arg(log_dir.path())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let c = Remote::new(&coordinator_url);
    c.wait_status("a ready cluster", Duration::from_secs(30), |s| {
        all_alive(s) && s["liveness"] == "registry"
    });

    drop(registry);
    c.wait_status("direct probing", Duration::from_secs(3), |s| {
        s["liveness"] == "direct-probe"
    });
    let (code, k) = c.post("/kill/follower-1?mode=crash", json!({}));
    assert_eq!(code, 200, "{k}");
    let crashed = Instant::now();
    c.wait_status("follower-1 dead", Duration::from_secs(9), |s| {
        s["followers"][0]["status"] == "dead"
    });
    let took = crashed.elapsed();
    assert!(
        took >= Duration::from_secs(4),
        "declared dead too early: {took:?}"
    );
    assert_eq!(c.post("/write", json!({"key": "k", "value": "v"})).0, 200);
    let (_, events) = c.get("/events?since=0&limit=100000");
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "liveness_direct_probe"),
        "{events}"
    );

    // A new registry learns the living nodes from their heartbeats.
    let _registry = start_registry(base + 1, &coordinator_url);
    c.wait_status("liveness from the registry", Duration::from_secs(5), |s| {
        s["liveness"] == "registry"
    });
    wait("the registry view to be rebuilt", secs(5))
        .every(millis(100))
        .until(|| {
            let nodes = c.get_json(&format!("{registry_url}/nodes"));
            let alive: Vec<&str> = nodes["nodes"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter(|n| n["status"] == "alive")
                        .map(|n| n["node_id"].as_str().unwrap())
                        .collect()
                })
                .unwrap_or_default();
            if alive == ["follower-2", "follower-3", "leader"] {
                Ok(())
            } else {
                Err(format!("registry view not rebuilt: {nodes}"))
            }
        });
    let s = c.status();
    assert_eq!(s["followers"][0]["status"], "dead", "{s}");
    assert_eq!(s["quorum"]["can_write"], true, "{s}");
}

/// Case 6: SIGTERM stops the whole cluster promptly, even with entries
/// pending on the 5 s async link.
#[test]
fn sigterm_stops_every_process_promptly() {
    let mut c = Cluster::start("--followers 3");
    for i in 0..3 {
        assert_eq!(c.write(&format!("k{i}"), "v").0, 200);
    }
    let pids = c.pids();
    assert_eq!(pids.len(), 4);
    let asked = Instant::now();
    unsafe { libc::kill(c.child.id() as i32, libc::SIGTERM) };
    let child = &mut c.child;
    wait(
        "every process to stop after SIGTERM",
        millis(1500).saturating_sub(asked.elapsed()),
    )
    .every(millis(20))
    .until(|| {
        let up_gone = child.try_wait().unwrap().is_some();
        if up_gone && !pids.iter().any(|&p| common::process_alive(p)) {
            Ok(())
        } else {
            Err(format!(
                "still running 1.5 s after SIGTERM (up gone: {up_gone}); the SIGKILL \
                     fallback comes at 2 s"
            ))
        }
    });
}

/// Case 7: a spawn on a port in use says so, adds nothing, and the next
/// spawn works.
#[test]
fn failed_spawn_leaves_no_broken_slot() {
    let c = Cluster::start(FAST_2_2_2);
    let taken = c.base + 30;
    let _holder = TcpListener::bind(("127.0.0.1", taken)).unwrap();
    let (code, answer) = c.post("/spawn", json!({"port": taken}));
    assert_eq!(code, 409, "{answer}");
    assert!(answer.to_string().contains(&taken.to_string()), "{answer}");
    assert!(
        answer["detail"]["reason"]
            .as_str()
            .unwrap()
            .contains("already in use"),
        "{answer}"
    );
    let (code, zero) = c.post("/spawn", json!({"port": 0}));
    assert_eq!(code, 400, "{zero}");
    assert_eq!(c.status()["followers"].as_array().unwrap().len(), 2);
    let (code, s) = c.post("/spawn", json!({}));
    assert_eq!(code, 200, "{s}");
    assert_eq!(s["node_id"], "follower-3");
    assert_ne!(s["url"], format!("http://127.0.0.1:{taken}"));
    c.wait_status("follower-3 alive", Duration::from_secs(5), all_alive);
}

/// Case 9: a spawn right after a crash reuses the crashed slot, and a spawn
/// that would make W + R <= N is refused unless asked for.
#[test]
fn spawn_after_crash_reuses_the_slot_and_growth_keeps_the_overlap() {
    let c = Cluster::start(FAST_3_2_2);
    let (code, k) = c.post("/kill/follower-2?mode=crash", json!({}));
    assert_eq!(code, 200, "{k}");
    let (code, s) = c.post("/spawn", json!({}));
    assert_eq!(code, 200, "{s}");
    assert_eq!(s["node_id"], "follower-2", "the crashed slot is reused");
    assert_eq!(c.status()["followers"].as_array().unwrap().len(), 3);
    c.wait_status("all alive", Duration::from_secs(5), all_alive);

    let (code, bad) = c.post("/spawn", json!({"grow": "yes"}));
    assert_eq!(code, 400, "{bad}");
    let (code, refused) = c.post("/spawn", json!({}));
    assert_eq!(code, 409, "{refused}");
    let reason = refused["detail"]["reason"].as_str().unwrap();
    for part in ["N=4", "W=2", "R=2"] {
        assert!(reason.contains(part), "{reason}");
    }
    assert_eq!(c.status()["followers"].as_array().unwrap().len(), 3);
    let (code, s) = c.post("/spawn", json!({"grow": true}));
    assert_eq!(code, 200, "{s}");
    assert_eq!(s["node_id"], "follower-4");
}

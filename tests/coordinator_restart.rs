//! The embedded control plane: a coordinator that dies does not take the
//! cluster with it. Components run as separate processes (`kvlab registry`,
//! `kvlab coordinator --data-dir D`, `kvlab gateway`); the coordinator is
//! SIGKILLed under a write load and started again with the same flags: it
//! adopts the running nodes (same pids, same incarnations), the term does
//! not go down, writes resume within 2 s of its start, and every
//! acknowledged write is readable.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{eventually, http, millis, secs, StopOnDrop, FAST_3_2_2};
use serde_json::{json, Value};

/// A process group a test started: SIGKILLed whole when dropped, so no
/// node outlives the test (nodes share their coordinator's group).
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// One cluster of separate components on a port block.
struct Separate {
    /// Every coordinator started (the first holds the adopted nodes' group).
    /// First: dropped (killed) before the directories go.
    coordinators: Vec<Group>,
    base: u16,
    scratch: tempfile::TempDir,
    data: tempfile::TempDir,
    coordinator: String,
    gateway: String,
    http: reqwest::blocking::Client,
    _registry: StopOnDrop,
    _gateway: StopOnDrop,
}

impl Separate {
    fn start(extra: &[&str]) -> Separate {
        let base = common::free_port_block();
        let scratch = common::scratch();
        let data = tempfile::Builder::new()
            .prefix("kvlab-data-")
            .tempdir()
            .unwrap();
        let coordinator = format!("http://127.0.0.1:{base}");
        let gateway_port = base + common::GATEWAY_OFFSET;
        let registry_proc = StopOnDrop(
            common::kvlab_in(&scratch)
                .args(["registry", "--port", &(base + 1).to_string()])
                .args(["--coordinator", &coordinator])
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let gateway_proc = StopOnDrop(
            common::kvlab_in(&scratch)
                .args(["gateway", "--port", &gateway_port.to_string()])
                .args(["--coordinator", &coordinator])
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let mut s = Separate {
            base,
            scratch,
            data,
            coordinator,
            gateway: format!("http://127.0.0.1:{gateway_port}"),
            http: common::internal_http(),
            _registry: registry_proc,
            _gateway: gateway_proc,
            coordinators: vec![],
        };
        s.start_coordinator(extra);
        s.wait_ready();
        s
    }

    /// `kvlab coordinator` with the same flags every time, in its own group.
    fn start_coordinator(&mut self, extra: &[&str]) -> Instant {
        use std::os::unix::process::CommandExt;
        let mut cmd = common::kvlab_in(&self.scratch);
        cmd.args(["coordinator", "--port", &self.base.to_string()])
            .args(["--registry", &format!("http://127.0.0.1:{}", self.base + 1)])
            .args(["--node-base-port", &(self.base + 2).to_string(), "--quiet"])
            .arg("--data-dir")
            .arg(self.data.path())
            .args(FAST_3_2_2.split_whitespace())
            .args(extra)
            .process_group(0);
        let started = Instant::now();
        self.coordinators.push(Group(cmd.spawn().unwrap()));
        started
    }

    fn wait_ready(&self) -> Value {
        eventually("the cluster to be ready", secs(30), || {
            let s = self.status();
            if s["quorum"]["can_write"] == true
                && s["quorum"]["alive_followers"] == 3
                && s["leader"]["status"] == "alive"
            {
                Ok(s)
            } else {
                Err(s)
            }
        })
    }

    fn status(&self) -> Value {
        self.http
            .get(format!("{}/status", self.coordinator))
            .timeout(Duration::from_secs(2))
            .send()
            .ok()
            .and_then(|r| r.json().ok())
            .unwrap_or(Value::Null)
    }

    /// From the coordinator's first event (its state opened) to "cluster
    /// ready": how long adopting the running nodes took.
    fn adoption_ms(&self) -> i64 {
        let events: Value = self
            .http
            .get(format!("{}/events?since=0&limit=100000", self.coordinator))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let at = |kind: &str| {
            events
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["kind"] == kind)
                .and_then(|e| e["unix_ms"].as_i64())
                .unwrap_or_else(|| panic!("no {kind} event: {events}"))
        };
        assert!(
            events
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["kind"] == "node_adopted"),
            "{events}"
        );
        at("cluster_ready") - at("control_state")
    }

    /// SIGKILL of the coordinator alone (not its nodes), waited for: its
    /// port is free once it is reaped.
    fn kill_coordinator(&mut self) {
        let child = &mut self.coordinators.last_mut().unwrap().0;
        sigkill(child.id());
        child.wait().unwrap();
    }

    /// (pid, incarnation) of every node, by id.
    fn processes(status: &Value) -> BTreeMap<String, (u64, u64)> {
        std::iter::once(&status["leader"])
            .chain(status["followers"].as_array().unwrap())
            .map(|n| {
                let id = n["node_id"].as_str().unwrap().to_string();
                (
                    id,
                    (
                        n["pid"].as_u64().unwrap(),
                        n["incarnation"].as_u64().unwrap(),
                    ),
                )
            })
            .collect()
    }

    fn write(&self, client: &reqwest::blocking::Client, key: &str, value: &str) -> bool {
        client
            .post(format!("{}/write", self.gateway))
            .json(&json!({"key": key, "value": value}))
            .timeout(Duration::from_secs(5))
            .send()
            .is_ok_and(|r| r.status() == 200)
    }

    fn read(&self, key: &str) -> Value {
        self.http
            .get(format!(
                "{}/read/{}",
                self.gateway,
                kvlab::api::key_segment(key)
            ))
            .send()
            .unwrap()
            .json()
            .unwrap()
    }
}

/// A few writer threads, each on its own keys; what was acknowledged.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeMap<String, String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(cluster: &Separate, writers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(BTreeMap::new()));
        let threads = (0..writers)
            .map(|w| {
                let (stop, acked) = (stop.clone(), acked.clone());
                let gateway = cluster.gateway.clone();
                std::thread::spawn(move || {
                    let client = http().build();
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let (key, value) = (format!("w{w}-k{}", i % 50), format!("v{i}"));
                        let ok = client
                            .post(format!("{gateway}/write"))
                            .json(&json!({"key": key, "value": value}))
                            .timeout(Duration::from_secs(5))
                            .send()
                            .is_ok_and(|r| r.status() == 200);
                        if ok {
                            acked.lock().unwrap().insert(key, value);
                        } else {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        Load {
            stop,
            acked,
            threads,
        }
    }

    fn finish(self) -> BTreeMap<String, String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        self.acked.lock().unwrap().clone()
    }
}

fn sigkill(pid: u32) {
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

#[test]
fn a_coordinator_killed_under_load_and_started_again_adopts_its_nodes() {
    let mut cluster = Separate::start(&[]);
    let before = cluster.status();
    let processes = Separate::processes(&before);
    let term = before["term"].as_u64().unwrap();
    let epoch = before["control_plane"]["epoch"].as_u64().unwrap();
    assert_eq!(before["control_plane"]["mode"], "embedded", "{before}");
    assert_eq!(before["control_plane"]["this"], "active", "{before}");

    let load = Load::start(&cluster, 4);
    eventually("some writes to be acknowledged", secs(10), || {
        load.acked.lock().unwrap().len() >= 20
    });
    cluster.kill_coordinator();
    // The nodes run on without it.
    common::always(
        "every node running without its coordinator",
        millis(300),
        millis(20),
        || match processes
            .iter()
            .find(|(_, (pid, _))| !common::process_alive(*pid as u32))
        {
            Some((id, _)) => Err(format!("{id} died with the coordinator")),
            None => Ok(()),
        },
    );
    let started = cluster.start_coordinator(&[]);
    let probe = http().build();
    let resumed = eventually("a write after the restart", secs(20), || {
        cluster
            .write(&probe, "resume-probe", "x")
            .then(|| started.elapsed())
    });
    // The load itself goes on being acknowledged.
    let so_far = load.acked.lock().unwrap().len();
    eventually("the load to be acknowledged again", secs(10), || {
        load.acked.lock().unwrap().len() >= so_far + 20
    });
    let acked = load.finish();
    println!(
        "first acknowledged write {:.0} ms after the restarted coordinator's start ({} writes acked in all)",
        resumed.as_secs_f64() * 1000.0,
        acked.len()
    );
    let after = cluster.wait_ready();
    println!("adoption took {} ms", cluster.adoption_ms());
    assert!(
        resumed < Duration::from_secs(2),
        "writes resumed only {resumed:?} after the start\n{after}"
    );
    assert_eq!(
        Separate::processes(&after),
        processes,
        "no node may be restarted\n{after}"
    );
    assert!(after["term"].as_u64().unwrap() >= term, "{after}");
    assert!(
        after["control_plane"]["epoch"].as_u64().unwrap() > epoch,
        "{after}"
    );
    for (key, value) in &acked {
        let read = cluster.read(key);
        assert_eq!(read["value"], json!(value), "{key}: {read}");
    }
}

#[test]
fn a_node_that_died_meanwhile_gets_a_new_incarnation() {
    let mut cluster = Separate::start(&[]);
    let before = cluster.status();
    let processes = Separate::processes(&before);
    let highest = processes.values().map(|(_, i)| *i).max().unwrap();
    cluster.kill_coordinator();
    let (dead_pid, _) = processes["follower-2"];
    sigkill(dead_pid as u32);
    cluster.start_coordinator(&[]);
    let after = cluster.wait_ready();
    let now = Separate::processes(&after);
    assert!(
        now["follower-2"].1 > highest,
        "follower-2 must get an incarnation never used before\n{after}"
    );
    for id in ["leader", "follower-1", "follower-3"] {
        assert_eq!(now[id], processes[id], "{id} was adopted\n{after}");
    }
}

#[test]
fn a_node_nobody_adopts_stops_after_the_orphan_timeout() {
    let mut cluster = Separate::start(&["--orphan-timeout", "2"]);
    let pids: Vec<u64> = Separate::processes(&cluster.status())
        .values()
        .map(|(p, _)| *p)
        .collect();
    cluster.kill_coordinator();
    let gone = Instant::now();
    eventually("every orphaned node to stop", secs(15), || {
        pids.iter().all(|&p| !common::process_alive(p as u32))
    });
    // The watch looks once a second: the timeout, plus a second or two.
    assert!(
        gone.elapsed() >= Duration::from_secs(2),
        "{:?}",
        gone.elapsed()
    );
    cluster.coordinators.clear();
}

#[test]
fn a_node_refuses_a_stale_epoch_and_bad_adoptions() {
    let cluster = Separate::start(&[]);
    let status = cluster.status();
    let epoch = status["control_plane"]["epoch"].as_u64().unwrap();
    let node = status["followers"][0]["url"].as_str().unwrap().to_string();
    let incarnation = status["followers"][0]["incarnation"].as_u64().unwrap();
    let client = &cluster.http;

    // A request of an older coordinator is refused, naming both epochs.
    let resp = client
        .get(format!("{node}/replicate"))
        .header(kvlab::api::HEADER_COORDINATOR_EPOCH, epoch - 1)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 409);
    let body: Value = resp.json().unwrap();
    assert_eq!(
        body["detail"]["error"],
        kvlab::api::STALE_COORDINATOR,
        "{body}"
    );
    assert_eq!(body["detail"]["coordinator_epoch"], epoch, "{body}");
    assert_eq!(body["detail"]["given"], epoch - 1, "{body}");
    // Not a number: a clear 400.
    let resp = client
        .get(format!("{node}/health"))
        .header(kvlab::api::HEADER_COORDINATOR_EPOCH, "soon")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 400);

    // Adoption of another process of the slot: 409, naming both.
    let adopt = |body: Value| {
        let r = client
            .post(format!("{node}/admin/adopt"))
            .json(&body)
            .send()
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<Value>().unwrap_or(Value::Null),
        )
    };
    let (code, body) = adopt(json!({"epoch": epoch, "incarnation": incarnation + 100}));
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["detail"]["error"], "wrong incarnation", "{body}");
    assert_eq!(body["detail"]["incarnation"], incarnation, "{body}");
    // Malformed bodies: clear 4xx, never a panic.
    let r = client
        .post(format!("{node}/admin/adopt"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400, "{:?}", r.text());
    let (code, body) = adopt(json!({"epoch": "one"}));
    assert_eq!(code, 422, "{body}");
    // Without the secret, the admin route is refused.
    let r = http()
        .build()
        .post(format!("{node}/admin/adopt"))
        .json(&json!({"epoch": epoch, "incarnation": incarnation}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    // An adoption at the current epoch by the right incarnation works.
    let (code, body) = adopt(json!({"epoch": epoch, "incarnation": incarnation}));
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["coordinator_epoch"], epoch, "{body}");
}

/// `kvlab up` SIGKILLed alone (not its nodes) and started again on the same
/// data directory adopts the nodes: its registry and gateway come back with
/// it, and no node is restarted.
#[test]
fn kvlab_up_killed_and_started_again_adopts_its_nodes() {
    let mut c = common::Cluster::start(FAST_3_2_2);
    assert_eq!(c.write("before", "crash").0, 200);
    let before = c.status();
    let processes = Separate::processes(&before);
    c.child.kill().unwrap();
    c.child.wait().unwrap();
    let started = Instant::now();
    let c = c.restart_same(FAST_3_2_2);
    let ready = started.elapsed();
    let after = c.wait_status("every node adopted", secs(10), |s| {
        s["quorum"]["alive_followers"] == 3 && s["leader"]["status"] == "alive"
    });
    println!(
        "kvlab up ready again {:.0} ms after its start",
        ready.as_secs_f64() * 1000.0
    );
    assert_eq!(Separate::processes(&after), processes, "{after}");
    assert!(after["term"].as_u64() >= before["term"].as_u64(), "{after}");
    assert_eq!(c.read("before").1["value"], "crash");
    assert_eq!(c.write("after", "restart").0, 200);
}

/// The same, as a person runs it: no secret given, so `up` makes the
/// cluster's own and keeps it beside the coordinator's state. The `up`
/// started again reads it back: with a new one, the nodes would refuse its
/// adoption (401) and their ports would stay taken.
#[test]
fn kvlab_up_without_a_given_secret_keeps_its_own_and_adopts_its_nodes() {
    let no_secret = |cmd: &mut std::process::Command| {
        cmd.env_remove(kvlab::auth::ENV_SECRET);
    };
    let mut c = common::Cluster::start_with(FAST_3_2_2, no_secret);
    assert_eq!(c.write("before", "crash").0, 200);
    let processes = Separate::processes(&c.status());
    c.child.kill().unwrap();
    c.child.wait().unwrap();
    let c = c.restart_same_with(FAST_3_2_2, no_secret);
    let after = c.wait_status("every node adopted", secs(10), |s| {
        s["quorum"]["alive_followers"] == 3 && s["leader"]["status"] == "alive"
    });
    assert_eq!(Separate::processes(&after), processes, "{after}");
    assert_eq!(c.read("before").1["value"], "crash");
    assert_eq!(c.write("after", "restart").0, 200);
}

/// A coordinator started with another shape does not adopt the running
/// nodes: it refuses to start, naming both shapes, and the nodes run on.
#[test]
fn a_coordinator_of_another_shape_refuses_to_adopt() {
    let mut cluster = Separate::start(&[]);
    let processes = Separate::processes(&cluster.status());
    cluster.kill_coordinator();
    let out = common::kvlab_in(&cluster.scratch)
        .args(["coordinator", "--port", &cluster.base.to_string()])
        .args([
            "--registry",
            &format!("http://127.0.0.1:{}", cluster.base + 1),
        ])
        .args(["--node-base-port", &(cluster.base + 2).to_string()])
        .arg("--data-dir")
        .arg(cluster.data.path())
        .args(["--no-delay", "--followers", "3", "-W", "1", "-R", "1"])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("N=3 W=2 R=2") && text.contains("N=3 W=1 R=1") && text.contains("--fresh"),
        "{text}"
    );
    for (id, (pid, _)) in &processes {
        assert!(common::process_alive(*pid as u32), "{id} was stopped");
    }
    // The same flags adopt them.
    cluster.start_coordinator(&[]);
    let after = cluster.wait_ready();
    assert_eq!(Separate::processes(&after), processes, "{after}");
}

/// `--fresh` over a running cluster: the nodes the dead coordinator left are
/// stopped before their data is wiped, and the cluster starts empty.
#[test]
fn fresh_stops_the_leftover_nodes_first() {
    let mut cluster = Separate::start(&[]);
    let probe = http().build();
    assert!(cluster.write(&probe, "old", "data"));
    let old = Separate::processes(&cluster.status());
    cluster.kill_coordinator();
    cluster.start_coordinator(&["--fresh"]);
    let after = cluster.wait_ready();
    for (id, (pid, _)) in &old {
        assert!(
            !common::process_alive(*pid as u32),
            "{id} (pid {pid}) still runs"
        );
    }
    let highest = old.values().map(|(_, i)| *i).max().unwrap();
    for (id, (_, inc)) in Separate::processes(&after) {
        assert!(inc > highest, "{id} reused an incarnation\n{after}");
    }
    let read = cluster.read("old");
    assert!(read["value"].is_null(), "the data was wiped: {read}");
}

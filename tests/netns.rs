//! Network-namespace hosts (`kvlab up --hosts netns`): the seed demos on
//! nodes with their own addresses, a real partition (dropped packets) of
//! the leader from a sync follower, and `kvlab check --nemesis partition`.
//!
//! These need root (namespaces, veths, a bridge, iptables). Without it each
//! test says so and passes, unless `KVLAB_REQUIRE_NETNS=1` (CI sets it),
//! which makes a missing privilege a failure. Every test removes its
//! namespaces, veths and bridge when it ends, even when it fails
//! ([`NetnsGuard`]), and checks that none are left.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{
    free_port_block, http, kvlab, kvlab_in, millis, scratch, wait, Cluster, FAST_3_2_2,
    FAST_IN_MEMORY,
};
use serde_json::{json, Value};

/// True when the test can run; otherwise prints why (or fails under
/// `KVLAB_REQUIRE_NETNS=1`).
fn netns_available(test: &str) -> bool {
    if kvlab::hosts::netns::is_root() {
        return true;
    }
    let reason = "needs root to create network namespaces, veths and a bridge";
    if std::env::var("KVLAB_REQUIRE_NETNS").is_ok_and(|v| v == "1") {
        panic!("{test}: {reason}, and KVLAB_REQUIRE_NETNS=1 requires it");
    }
    eprintln!("skipped {test}: {reason} (run as root; CI sets KVLAB_REQUIRE_NETNS=1)");
    false
}

/// Removes whatever a cluster on coordinator port `port` made, when the
/// test ends (a failing assertion included). Declare it before the
/// cluster, so the cluster (and its nodes) are gone first.
/// Also holds the cluster's temporary directory (its TLS files), if any,
/// until the test ends.
struct NetnsGuard(u16, Option<tempfile::TempDir>);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        kvlab::hosts::netns::remove_leftovers(self.0);
    }
}

/// Names of namespaces and links of the run on `port` still present.
fn leftovers(port: u16) -> Vec<String> {
    let tag = format!("kvl{port}");
    let mut found = Vec::new();
    for args in [&["netns", "list"][..], &["-o", "link", "show"][..]] {
        let out = Command::new("ip").args(args).output().unwrap();
        found.extend(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter(|w| w.trim_end_matches(':').starts_with(&tag))
                .map(str::to_string),
        );
    }
    found
}

/// Starts a netns cluster on a fresh port block.
/// The nodes listen off loopback, so they speak TLS: the cluster makes its
/// CA in a scratch directory, and the handle's client trusts it.
fn start(flags: &str) -> (NetnsGuard, Cluster) {
    let tmp = scratch();
    let cluster = Cluster::start_in(&tmp, &format!("--hosts netns {flags}"));
    (NetnsGuard(cluster.base, Some(tmp)), cluster)
}

fn url_of(status: &Value, id: &str) -> String {
    std::iter::once(&status["leader"])
        .chain(status["followers"].as_array().unwrap())
        .find(|n| n["node_id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {status}"))["url"]
        .as_str()
        .unwrap()
        .to_string()
}

trait DataWait {
    fn wait_for_data(&self, node_url: &str, key: &str, timeout: Duration);
}

impl DataWait for Cluster {
    /// Waits until the node at `node_url` holds `key`.
    fn wait_for_data(&self, node_url: &str, key: &str, timeout: Duration) {
        wait(format_args!("{node_url} to get {key}"), timeout)
            .every(millis(10))
            .events(self)
            .until(|| {
                let resp = self.http.get(format!("{node_url}/data/{key}")).send();
                resp.is_ok_and(|r| r.status().is_success())
            });
    }
}

/// Waits until the leader has sent `id` its whole log (the harness's
/// helper assumes nodes on loopback).
fn wait_caught_up(c: &Cluster, id: &str) {
    let leader = url_of(&c.status(), "leader");
    let resp = c
        .http
        .post(format!("{leader}/replication/wait"))
        .json(&json!({"node_id": id, "timeout_ms": 20_000}))
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    assert_eq!(
        status,
        200,
        "{id} not caught up: {}",
        resp.text().unwrap_or_default()
    );
}

#[test]
fn the_seed_demos_pass_on_netns_hosts() {
    if !netns_available("the_seed_demos_pass_on_netns_hosts") {
        return;
    }
    let base;
    {
        let (_guard, c) = start(FAST_3_2_2);
        base = c.base;
        let status = c.status();
        // Each node on its own address, not loopback.
        let leader_url = url_of(&status, "leader");
        // Off loopback: TLS, and plain HTTP to a node is refused.
        assert!(leader_url.starts_with("https://10."), "{leader_url}");
        let plain = leader_url.replacen("https://", "http://", 1);
        let refused = http()
            .secret()
            .build()
            .get(format!("{plain}/replication/peers"))
            .send()
            .unwrap();
        assert_eq!(refused.status(), 400);
        assert_ne!(leader_url, url_of(&status, "follower-1"));

        // Demo 2: write and read through the gateway.
        let (code, w) = c.write("name", "distributed-systems");
        assert_eq!(code, 200, "{w}");
        let (code, r) = c.read("name");
        assert_eq!(
            (code, r["value"].as_str()),
            (200, Some("distributed-systems"))
        );

        // Demo 3: a follower is stopped; W=2 of 3 still writes.
        let (code, k) = c.post("/kill/follower-1", json!({}));
        assert_eq!(code, 200, "{k}");
        for i in 0..5 {
            let (code, w) = c.write(&format!("k{i}"), &format!("v{i}"));
            assert_eq!(code, 200, "{w}");
        }

        // Demo 4: respawn into the same namespace; it catches up.
        let (code, s) = c.post("/spawn", json!({"node_id": "follower-1"}));
        assert_eq!(code, 200, "{s}");
        c.wait_status("follower-1 alive", Duration::from_secs(20), |s| {
            s["followers"][0]["status"] == "alive"
        });
        let status = c.status();
        assert_eq!(
            url_of(&status, "follower-1"),
            url_of(&c.status(), "follower-1")
        );
        wait_caught_up(&c, "follower-1");
        let data = c.get_json(&format!("{}/data", url_of(&status, "follower-1")));
        assert_eq!(data["data"]["k4"]["value"], "v4", "{data}");
    }
    assert_eq!(
        leftovers(base),
        Vec::<String>::new(),
        "`kvlab up` left namespaces or links behind"
    );
}

#[test]
fn a_leader_cut_off_from_a_sync_follower_fails_writes_with_503_then_converges() {
    if !netns_available(
        "a_leader_cut_off_from_a_sync_follower_fails_writes_with_503_then_converges",
    ) {
        return;
    }
    let (_guard, c) = start("--no-delay --followers 2 -W 2 -R 1");
    assert_eq!(c.write("before", "1").0, 200);

    // Real packets dropped both ways between the leader and follower-1.
    let (code, p) = c.post(
        "/admin/partition/leader",
        json!({"peers": ["follower-1"], "seconds": 60}),
    );
    assert_eq!(code, 200, "{p}");
    let (code, w) = c.write("during", "2");
    assert_eq!(code, 503, "{w}");
    let missing = &w["detail"]["missing"];
    assert!(
        missing
            .as_array()
            .is_some_and(|m| m.iter().any(|x| x["node_id"] == "follower-1")),
        "the 503 must name the unreachable follower: {w}"
    );
    // A partition is not a crash: every node is still alive.
    let status = c.status();
    assert_eq!(status["quorum"]["total_alive"], 3, "{status}");

    // One way only: follower-1 drops what the leader sends it.
    let (code, p) = c.post(
        "/admin/partition/follower-1",
        json!({"peers": ["leader"], "seconds": 60, "direction": "in"}),
    );
    assert_eq!(code, 200, "{p}");
    let (code, w) = c.write("one-way", "2");
    assert_eq!(code, 503, "{w}");
    assert!(w.to_string().contains("follower-1"), "{w}");
    let (code, h) = c.post(
        "/admin/partition/follower-1",
        json!({"peers": [], "seconds": 0}),
    );
    assert_eq!(code, 200, "{h}");

    // The leader cut off from the coordinator only: it still heartbeats
    // (so it is not declared dead) but takes no writes.
    let (code, p) = c.post(
        "/admin/partition/leader",
        json!({"peers": ["coordinator"], "seconds": 60}),
    );
    assert_eq!(code, 200, "{p}");
    let (code, w) = c.write("unreachable", "x");
    assert_eq!(code, 503, "{w}");
    assert!(w.to_string().contains("Leader unreachable"), "{w}");
    assert_eq!(c.status()["leader"]["status"], "alive");
    let (code, h) = c.post(
        "/admin/partition/leader",
        json!({"peers": [], "seconds": 0}),
    );
    assert_eq!(code, 200, "{h}");

    // Healed: writes work again and every node converges.
    let (code, h) = c.post(
        "/admin/partition/leader",
        json!({"peers": [], "seconds": 0}),
    );
    assert_eq!(code, 200, "{h}");
    let (code, w) = c.write("after", "3");
    assert_eq!(code, 200, "{w}");
    wait_caught_up(&c, "follower-1");
    let status = c.status();
    for id in ["leader", "follower-1", "follower-2"] {
        let data = c.get_json(&format!("{}/data", url_of(&status, id)));
        for key in ["before", "during", "one-way", "after"] {
            assert!(data["data"][key].is_object(), "{id} lacks {key}: {data}");
        }
    }
}

#[test]
fn one_way_partitions_and_slow_links_need_netns_hosts() {
    // Process hosts refuse them with a reason (no root needed).
    let c = Cluster::start(FAST_IN_MEMORY);
    let (code, e) = c.post(
        "/admin/partition/follower-1",
        json!({"peers": ["leader"], "seconds": 5, "direction": "in"}),
    );
    assert_eq!(code, 400, "{e}");
    assert!(e.to_string().contains("need netns hosts"), "{e}");
    let (code, e) = c.post(
        "/admin/link/follower-1",
        json!({"peer": "leader", "delay_ms": 100, "seconds": 5}),
    );
    assert_eq!(code, 409, "{e}");
    assert!(e.to_string().contains("--hosts netns"), "{e}");
    // And `--lab-delays netem` needs netns hosts.
    let s = scratch();
    let out = kvlab_in(&s)
        .args(["up", "--lab-delays", "netem"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--lab-delays netem needs --hosts netns"),
        "{err}"
    );
    // Netns hosts place processes kvlab starts: not containers, not nodes
    // someone else started.
    for runtime in ["docker", "external"] {
        let out = kvlab_in(&s)
            .args(["up", "--hosts", "netns", "--runtime", runtime])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cannot be combined with --runtime"), "{err}");
    }
}

#[test]
fn netns_hosts_refuse_to_start_without_root() {
    if !kvlab::hosts::netns::is_root() {
        // We are the unprivileged user: the refusal is what we get.
        let out = kvlab().args(["up", "--hosts", "netns"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--hosts netns needs root"), "{err}");
        return;
    }
    // As root, run it as nobody.
    let port = free_port_block().to_string();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_kvlab"))
        .args(["up", "--hosts", "netns", "--coordinator-port", &port])
        .output();
    let Ok(out) = out else {
        eprintln!("skipped: no setpriv to drop root");
        return;
    };
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--hosts netns needs root"), "{err}");
}

#[test]
fn check_with_partitions_on_netns_hosts_is_linearizable_when_w_plus_r_exceeds_n() {
    if !netns_available(
        "check_with_partitions_on_netns_hosts_is_linearizable_when_w_plus_r_exceeds_n",
    ) {
        return;
    }
    let base = free_port_block();
    let _guard = NetnsGuard(base, None);
    let dir = tempfile::tempdir().unwrap();
    let s = scratch();
    let out = kvlab_in(&s)
        .arg("check")
        .args(["--hosts", "netns", "--nemesis", "partition"])
        .args(FAST_3_2_2.split_whitespace())
        .args(["--time-limit", "12", "--seed", "7", "--clients", "4"])
        .args(["--base-port", &base.to_string()])
        .arg("--out")
        .arg(dir.path())
        .output()
        .expect("run kvlab check");
    let text = format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    let faults: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("faults.json")).unwrap())
            .unwrap();
    let list = faults.as_array().cloned().unwrap_or_default();
    assert!(
        list.iter()
            .any(|f| f["kind"] == "partition" && f["error"].is_null()),
        "no partition was injected: {faults}"
    );
    drop(_guard);
    assert_eq!(leftovers(base), Vec::<String>::new());
}

#[test]
fn netem_lab_delays_and_slow_links_are_real_latency() {
    if !netns_available("netem_lab_delays_and_slow_links_are_real_latency") {
        return;
    }
    let (guard, c) = start(
        "--followers 2 -W 1 -R 1 --in-memory --lab-delays netem --sync-delay 0.3 --async-delay 1.5",
    );
    let status = c.status();
    let leader = url_of(&status, "leader");
    // The leader holds nothing back: the links carry the delays.
    let links = c.get_json(&format!("{leader}/replication/links"));
    assert!(
        links.as_array().unwrap().iter().all(|l| l["delay_ms"] == 0),
        "{links}"
    );
    // The first write opens the connections; time the second.
    assert_eq!(c.write("warm", "1").0, 200);
    let asynchronous = url_of(&status, "follower-2");
    c.wait_for_data(&asynchronous, "warm", Duration::from_secs(20));
    let started = std::time::Instant::now();
    let (code, w) = c.write("k", "v");
    let took = started.elapsed();
    assert_eq!(code, 200, "{w}");
    assert!(took >= Duration::from_millis(300), "write took {took:?}");
    // The async follower gets it one async delay after the append.
    c.wait_for_data(&asynchronous, "k", Duration::from_secs(10));
    let seen = started.elapsed();
    assert!(seen >= Duration::from_millis(1500), "seen after {seen:?}");

    // A slow link: 200 ms each way between follower-1 and the coordinator
    // (the host side): a new connection and one request cross it twice.
    let follower = url_of(&status, "follower-1");
    let (code, l) = c.post(
        "/admin/link/follower-1",
        json!({"peer": "coordinator", "delay_ms": 200, "seconds": 30}),
    );
    assert_eq!(code, 200, "{l}");
    // A new client (no pooled connection), trusting the cluster's CA: the
    // nodes speak TLS, whose handshake crosses the link once more.
    let ca = c.tls_dir(guard.1.as_ref().unwrap()).join("ca.pem");
    let fresh = http().cluster_ca(&ca).build();
    let started = std::time::Instant::now();
    assert!(fresh
        .get(format!("{follower}/health"))
        .send()
        .unwrap()
        .status()
        .is_success());
    let slow = started.elapsed();
    assert!(slow >= Duration::from_millis(750), "{slow:?}");
    let (code, h) = c.post(
        "/admin/link/follower-1",
        json!({"peer": "coordinator", "seconds": 0}),
    );
    assert_eq!(code, 200, "{h}");
    let started = std::time::Instant::now();
    assert!(fresh
        .get(format!("{follower}/health"))
        .send()
        .unwrap()
        .status()
        .is_success());
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_killed_up_leaves_nothing_for_long() {
    if !netns_available("a_killed_up_leaves_nothing_for_long") {
        return;
    }
    let tmp = scratch();
    let first = Cluster::start_in(&tmp, &format!("{FAST_IN_MEMORY} --hosts netns"));
    let killed = first.base;
    let _guard = NetnsGuard(killed, Some(tmp));
    assert!(!leftovers(killed).is_empty());
    // SIGKILL of the group: `up` cannot clean up, its nodes die with it.
    let mut first = first;
    first.kill_group();
    drop(first);
    assert!(!leftovers(killed).is_empty(), "nothing to clean up?");
    // The next start (on other ports) removes what the dead run left.
    let (_g, _second) = start(FAST_IN_MEMORY);
    assert_eq!(leftovers(killed), Vec::<String>::new());
}

//! Nodes started by someone else: `kvlab up --runtime external` starts no
//! node, and `kvlab node --join URL` processes (started here by the test, as
//! Compose or systemd would) join it and are supervised: quorum, catch-up
//! after a restart, fencing, refusals of what the coordinator cannot do.

mod common;

use std::process::{Child, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

/// A `kvlab node --join` process this test started (and kills on drop).
struct Joined {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Joined {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn join(base: u16, id: &str, offset: u16, data: Option<tempfile::TempDir>) -> Joined {
    let dir = data.unwrap_or_else(|| tempfile::tempdir().unwrap());
    let child = kvlab()
        .args(["node", "--join", &format!("http://127.0.0.1:{base}")])
        .args(["--id", id, "--port", &(base + 2 + offset).to_string()])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kvlab node --join");
    Joined { child, _dir: dir }
}

/// Waits for a process to end by itself; its exit status.
fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    wait("the process to exit", timeout)
        .every(millis(20))
        .until(|| child.try_wait().unwrap())
}

#[test]
fn nodes_started_by_someone_else_join_and_are_supervised() {
    let base = free_port_block();
    // The nodes start first, as a supervisor may start everything at once:
    // they wait for the coordinator.
    let _leader = join(base, "leader", 0, None);
    let mut f1 = join(base, "follower-1", 1, None);
    let _f2 = join(base, "follower-2", 2, None);
    let cluster = Cluster::start_at(base, "--runtime external --followers 2 -W 2 --no-delay");
    let status = cluster.status();
    assert_eq!(status["quorum"]["alive_followers"], 2, "{status}");
    assert!(
        status["followers"][0]["pid"].is_null(),
        "nobody here launched it"
    );

    // Demo 2: a write and a read through the gateway.
    let (code, body) = cluster.write("name", "distributed-systems");
    assert_eq!(code, 200, "{body}");
    let (code, body) = cluster.read("name");
    assert_eq!(
        (code, body["value"].as_str()),
        (200, Some("distributed-systems"))
    );

    // What needs a launcher is refused with the reason.
    let (code, body) = cluster.post("/spawn", json!({}));
    assert_eq!(code, 409, "{body}");
    assert!(
        body["detail"].to_string().contains("--runtime external"),
        "{body}"
    );
    let (code, body) = cluster.post("/kill/follower-1?mode=crash", json!({}));
    assert_eq!(code, 409, "{body}");
    // A new id would grow N behind the quorum rule's back: refused, and the
    // node says why and exits.
    let mut extra = join(base, "follower-9", 9, None);
    assert!(!wait_exit(&mut extra.child, Duration::from_secs(10)).success());

    // A graceful kill: the node exits, the coordinator marks it dead.
    let (code, body) = cluster.post("/kill/follower-1", json!({}));
    assert_eq!(code, 200, "{body}");
    assert!(wait_exit(&mut f1.child, Duration::from_secs(10)).success());
    let (code, _) = cluster.write("while-away", "v");
    assert_eq!(code, 503, "W=2 with one follower down");
    let old = cluster.follower("follower-1")["incarnation"]
        .as_u64()
        .unwrap();

    // Its supervisor restarts it on its own data: it joins again as a new
    // incarnation and catches up.
    let dir = std::mem::replace(&mut f1._dir, tempfile::tempdir().unwrap());
    let _f1 = join(base, "follower-1", 1, Some(dir));
    cluster.wait_status("follower-1 back", Duration::from_secs(20), |s| {
        s["quorum"]["alive_followers"] == 2
    });
    assert!(
        cluster.follower("follower-1")["incarnation"]
            .as_u64()
            .unwrap()
            > old
    );
    let (code, body) = cluster.write("after", "back");
    assert_eq!(code, 200, "{body}");
    let (code, body) = cluster.wait_caught_up("follower-1");
    assert_eq!(code, 200, "{body}");
    let data = cluster.node_data(&cluster.node_url(1));
    assert_eq!(data["name"]["value"], "distributed-systems", "{data}");
    assert_eq!(data["after"]["value"], "back", "{data}");
}

#[test]
fn a_join_is_refused_by_a_coordinator_that_launches_its_own_nodes() {
    let cluster = Cluster::start("--in-memory --followers 1 -W 1");
    let (code, body) = cluster.post(
        "/join",
        json!({"node_id": "x", "url": "http://127.0.0.1:1"}),
    );
    assert_eq!(code, 409, "{body}");
    assert!(
        body["detail"].to_string().contains("--runtime external"),
        "{body}"
    );
}

#[test]
fn a_join_with_a_bad_url_or_id_is_a_clear_400() {
    let base = free_port_block();
    let _nodes: Vec<Joined> = (0..2)
        .map(|i| join(base, if i == 0 { "leader" } else { "follower-1" }, i, None))
        .collect();
    let cluster = Cluster::start_at(base, "--runtime external --followers 1 -W 1");
    // Joining makes a member: without the cluster secret, no.
    let resp = http()
        .build()
        .post(format!("{}/join", cluster.coordinator))
        .json(&json!({"node_id": "intruder", "url": "http://127.0.0.1:1"}))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 401);
    for (body, what) in [
        (json!({"node_id": "n", "url": "not a url"}), "invalid url"),
        (
            json!({"node_id": "n", "url": "ftp://host:1"}),
            "invalid url",
        ),
        (
            json!({"node_id": "bad id!", "url": "http://h:1"}),
            "invalid node_id",
        ),
    ] {
        let (code, answer) = cluster.post("/join", body);
        assert_eq!(code, 400, "{answer}");
        assert!(answer.to_string().contains(what), "{answer}");
    }
}

#[test]
fn a_node_joining_on_every_address_must_say_where_it_is_reached() {
    let out = kvlab()
        .args(["node", "--join", "http://127.0.0.1:1", "--id", "n"])
        .args(["--port", "1", "--host", "0.0.0.0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--advertise"), "{err}");
}

/// Section 4: on a fresh `docker-compose up` whichever node joins first
/// takes the leader's slot until the start election; on equal (empty) logs
/// that election picks the node named `leader`, as people expect.
#[test]
fn the_node_named_leader_leads_even_when_another_joins_first() {
    let base = free_port_block();
    let _f2 = join(base, "follower-2", 2, None);
    let starting = std::thread::spawn(move || {
        Cluster::start_at(base, "--runtime external --followers 2 -W 2 --no-delay")
    });
    // follower-2 holds the leader's slot before the others start.
    let http = bare_http();
    eventually("follower-2 to take the leader's slot", secs(30), || {
        let holder = http
            .get(format!("http://127.0.0.1:{base}/status"))
            .send()
            .and_then(|r| r.json::<serde_json::Value>())
            .ok()
            .and_then(|s| s["leader"]["node_id"].as_str().map(String::from));
        match holder.as_deref() {
            Some("follower-2") => Ok(()),
            _ => Err(format!("the leader's slot is held by {holder:?}")),
        }
    });
    let _leader = join(base, "leader", 0, None);
    let _f1 = join(base, "follower-1", 1, None);
    let cluster = starting.join().expect("the cluster started");
    let status = cluster.wait_status("the start election", Duration::from_secs(20), |s| {
        s["term"].as_u64() >= Some(1) && s["quorum"]["alive_followers"] == 2
    });
    assert_eq!(status["leader"]["node_id"], "leader", "{status}");
    let (code, body) = cluster.write("name", "v");
    assert_eq!(code, 200, "{body}");
}

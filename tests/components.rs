//! The course's way: registry and coordinator started as separate processes.

mod common;

use std::process::Stdio;

use common::{eventually, http, secs, StopOnDrop, FAST_3_2_2};
use serde_json::{json, Value};

fn wait_ok(http: &reqwest::blocking::Client, url: &str) {
    eventually(format_args!("{url} to answer"), secs(30), || {
        http.get(url).send().is_ok_and(|r| r.status() == 200)
    });
}

#[test]
fn demos_against_separate_components() {
    let base = common::free_port_block();
    // The coordinator's default data and log directories land in here, and
    // go with it (declared first, so the processes stop before it goes).
    let scratch = common::scratch();
    let (coord, reg) = (base, base + 1);
    let coordinator = format!("http://127.0.0.1:{coord}");
    let registry = format!("http://127.0.0.1:{reg}");
    let _registry = StopOnDrop(
        common::kvlab_in(&scratch)
            .args([
                "registry",
                "--port",
                &reg.to_string(),
                "--coordinator",
                &coordinator,
            ])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let _coordinator = StopOnDrop(
        common::kvlab_in(&scratch)
            .args([
                "coordinator",
                "--port",
                &coord.to_string(),
                "--registry",
                &registry,
            ])
            .args(["--node-base-port", &(base + 2).to_string(), "--quiet"])
            .args(FAST_3_2_2.split_whitespace())
            .spawn()
            .unwrap(),
    );
    let http = http().build();
    wait_ok(&http, &format!("{registry}/"));
    wait_ok(&http, &format!("{coordinator}/"));
    // Ready when the registry has heard from all four nodes and the
    // coordinator sees them all alive.
    eventually("the nodes to register", secs(30), || {
        let alive: Value = http
            .get(format!("{registry}/alive"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let status: Value = http
            .get(format!("{coordinator}/status"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if alive["nodes"].as_array().unwrap().len() == 4
            && status["quorum"]["alive_followers"] == 3
            && status["leader"]["status"] == "alive"
        {
            Ok(())
        } else {
            Err(format!("nodes never registered: {alive} {status}"))
        }
    });
    let post = |path: &str, body: Value| -> (u16, Value) {
        let r = http
            .post(format!("{coordinator}{path}"))
            .json(&body)
            .send()
            .unwrap();
        (r.status().as_u16(), r.json().unwrap_or(Value::Null))
    };
    // Demo 2.
    let (code, w) = post(
        "/write",
        json!({"key": "name", "value": "distributed-systems"}),
    );
    assert_eq!(code, 200, "{w}");
    let r: Value = http
        .get(format!("{coordinator}/read/name"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(r["value"], "distributed-systems");
    // Demo 3.
    assert_eq!(post("/kill/follower-1", json!({})).1["can_write"], true);
    assert_eq!(post("/write", json!({"key": "k", "value": "1"})).0, 200);
    assert_eq!(post("/kill/follower-2", json!({})).1["can_write"], false);
    let (code, w) = post("/write", json!({"key": "k", "value": "2"}));
    assert_eq!(code, 503);
    assert_eq!(w["detail"]["error"], "Write quorum not available");
    // Demo 4.
    let (code, s) = post("/spawn", json!({}));
    assert_eq!(code, 200, "{s}");
    assert_eq!(s["node_id"], "follower-1");
    assert_eq!(post("/catchup", json!({"node_id": "follower-1"})).0, 200);
    let data: Value = http
        .get(format!("{}/data", s["url"].as_str().unwrap()))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(data["data"]["k"]["value"], "1", "written while it was down");
    let nodes: Value = http
        .get(format!("{registry}/nodes"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["last_seen_seconds_ago"].is_number()));
}

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

/// A stand-in coordinator on an ephemeral port that records the path of
/// every POST it gets; as a standby it answers each with the standby's 503.
fn recording_coordinator(
    rt: &tokio::runtime::Runtime,
    standby: bool,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        record.lock().unwrap().push(uri.path().to_string());
        async move {
            if standby {
                let body = json!({"detail": kvlab::api::NOT_ACTIVE_COORDINATOR});
                (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
            } else {
                axum::Json(json!({"status": "ok"})).into_response()
            }
        }
    });
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

/// A registry given a standby, a dead coordinator and the active one tells
/// the active one (a follower's first heartbeat asks it for `/catchup`), and
/// asks it first the next time. A bad list is refused, naming the flag.
#[test]
fn a_registry_tells_the_coordinator_that_accepts() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (standby, asked_standby) = recording_coordinator(&rt, true);
    let (active, asked_active) = recording_coordinator(&rt, false);
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let port = common::free_port_block();
    let registry = format!("http://127.0.0.1:{port}");
    let scratch = common::scratch();
    let _registry = StopOnDrop(
        common::kvlab_in(&scratch)
            .args(["registry", "--port", &port.to_string()])
            .args(["--coordinator", &format!("{standby},{dead}")])
            .args(["--coordinator", &active])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let http = common::internal_http();
    wait_ok(&http, &format!("{registry}/"));
    let heartbeat = |id: &str| {
        let body = json!({"node_id": id, "port": 1, "url": "http://127.0.0.1:1",
            "role": "follower", "incarnation": 1});
        let resp = http
            .post(format!("{registry}/heartbeat"))
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
    };
    heartbeat("follower-1");
    eventually(
        "the active coordinator to hear of follower-1",
        secs(10),
        || {
            let asked = asked_active.lock().unwrap().clone();
            if asked == ["/catchup"] {
                Ok(())
            } else {
                Err(format!("asked {asked:?}"))
            }
        },
    );
    assert_eq!(
        *asked_standby.lock().unwrap(),
        ["/catchup"],
        "the standby first"
    );
    heartbeat("follower-2");
    eventually(
        "the active coordinator to hear of follower-2",
        secs(10),
        || {
            let asked = asked_active.lock().unwrap().len();
            if asked == 2 {
                Ok(())
            } else {
                Err(format!("asked {asked} times"))
            }
        },
    );
    assert_eq!(
        asked_standby.lock().unwrap().len(),
        1,
        "the one that accepted is asked first"
    );
    let out = common::kvlab_in(&scratch)
        .args(["registry", "--port", "1", "--coordinator", "http://a:1,b:2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--coordinator") && err.contains("'b:2'"),
        "{err}"
    );
}

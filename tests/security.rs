//! Who may speak to whom (issue 12): kvlab's internal traffic needs the
//! cluster secret, the lab's routes stay open on loopback, and off loopback
//! the coordinator's admin routes need a token. Each test plays the attacker
//! on the same machine with a client that has nothing ([`common::bare_http`]).

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{eventually, secs, Cluster, StopOnDrop, FAST_3_2_2, FAST_IN_MEMORY};
use serde_json::{json, Value};

fn send(req: reqwest::blocking::RequestBuilder) -> (u16, Value) {
    let resp = req.send().unwrap();
    (resp.status().as_u16(), resp.json().unwrap_or(Value::Null))
}

fn assert_unauthorized((code, body): (u16, Value), what: &str) {
    assert_eq!(code, 401, "{what}: {body}");
    assert_eq!(body["detail"]["error"], "unauthorized", "{what}: {body}");
    assert!(body["detail"]["reason"].is_string(), "{what}: {body}");
}

fn node<'a>(status: &'a Value, id: &str) -> &'a Value {
    std::iter::once(&status["leader"])
        .chain(status["followers"].as_array().unwrap())
        .find(|n| n["node_id"] == id)
        .unwrap_or_else(|| panic!("no {id} in {status}"))
}

/// Waits until the registry has accepted a heartbeat of `id` sent after
/// `since`: proof that the real node still heartbeats and is not refused.
fn wait_fresh_heartbeat(c: &Cluster, id: &str, since: Instant) {
    c.eventually(
        format_args!("a heartbeat of {id} accepted"),
        secs(10),
        || {
            let nodes = c.get_json(&format!("{}/nodes", c.registry));
            let fresh = nodes["nodes"].as_array().unwrap().iter().any(|n| {
                n["node_id"] == id
                    && n["status"] == "alive"
                    && n["last_seen_seconds_ago"].as_f64().unwrap() < since.elapsed().as_secs_f64()
            });
            if fresh {
                Ok(())
            } else {
                Err(format!(
                    "no heartbeat of {id} accepted since the forgery: {nodes}"
                ))
            }
        },
    );
}

/// Reproduced on the old main: a heartbeat with a high incarnation made the
/// registry fence the real node, which then exited, and refused its respawn.
#[test]
fn a_forged_heartbeat_is_refused_and_the_node_keeps_running() {
    let c = Cluster::start(&format!(
        "{FAST_IN_MEMORY} --followers 2 --failure-timeout 1.5"
    ));
    let before = c.status();
    let bare = common::bare_http();
    let forged_at = Instant::now();
    for id in ["follower-1", "leader"] {
        let n = node(&before, id);
        let forged = json!({"node_id": id, "port": n["port"], "url": n["url"],
            "role": if id == "leader" { "leader" } else { "follower" }, "incarnation": 999});
        let url = format!("{}/heartbeat", c.registry);
        assert_unauthorized(send(bare.post(&url).json(&forged)), "no secret");
        let wrong = bare
            .post(&url)
            .header(kvlab::auth::HEADER_SECRET, "0123456789abcdef0123")
            .json(&forged);
        assert_unauthorized(send(wrong), "a wrong secret");
    }
    for id in ["follower-1", "leader"] {
        wait_fresh_heartbeat(&c, id, forged_at);
    }
    let after = c.status();
    for id in ["follower-1", "leader"] {
        let (was, is) = (node(&before, id), node(&after, id));
        assert_eq!(is["status"], "alive", "{after}");
        assert_eq!(
            (&is["pid"], &is["incarnation"]),
            (&was["pid"], &was["incarnation"])
        );
        assert!(common::process_alive(is["pid"].as_u64().unwrap() as u32));
    }
    assert_eq!(c.write("k", "v").0, 200);
}

/// Reproduced on the old main: with --auto-spawn, fake node names became
/// real processes, and the cluster outgrew its quorums.
#[test]
fn forged_node_names_with_auto_spawn_start_nothing() {
    // W + R = 6 allows growing to N = 5: on the old main, ghosts would start.
    let c = Cluster::start(&format!("{FAST_IN_MEMORY} --followers 3 -W 3 -R 3 --auto-spawn --spawn-delay 0.3 --failure-timeout 1.5"));
    let bare = common::bare_http();
    for i in 1..=5 {
        let id = format!("ghost-{i}");
        let beat = json!({"node_id": id, "port": 1, "url": "http://127.0.0.1:1",
            "role": "follower", "incarnation": 1});
        assert_unauthorized(
            send(bare.post(format!("{}/heartbeat", c.registry)).json(&beat)),
            "a ghost's heartbeat",
        );
        assert_unauthorized(
            send(
                bare.post(format!("{}/deregister", c.registry))
                    .json(&json!({"node_id": id})),
            ),
            "a ghost's deregistration",
        );
    }
    // Even a name the registry did hear (here from a holder of the secret)
    // is only ever restarted, never created: the registry asks for an
    // existing slot.
    let beat = json!({"node_id": "ghost-9", "port": 1, "url": "http://127.0.0.1:1",
        "role": "follower", "incarnation": 1});
    let (code, _) = send(c.http.post(format!("{}/heartbeat", c.registry)).json(&beat));
    assert_eq!(code, 200);
    let (code, _) = send(
        c.http
            .post(format!("{}/deregister", c.registry))
            .json(&json!({"node_id": "ghost-9"})),
    );
    assert_eq!(code, 200);
    let (code, body) = c.post(
        "/spawn",
        json!({"node_id": "ghost-8", "existing_only": true}),
    );
    assert_eq!(code, 404, "{body}");
    // A real follower stopped after the ghosts is replaced after them: once
    // it is back, any ghost's respawn has been asked for already.
    let since = c.last_event_id();
    assert_eq!(c.post("/kill/follower-1", json!({})).0, 200);
    c.wait_for_event_after(
        since,
        "slot_reused",
        Some("follower-1"),
        Duration::from_secs(20),
    );
    let s = c.wait_status("follower-1 back", Duration::from_secs(20), |s| {
        node(s, "follower-1")["status"] == "alive"
    });
    let ids: Vec<&str> = s["followers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["follower-1", "follower-2", "follower-3"], "{s}");
    let (_, events) = c.get("/events?since=0&limit=100000");
    assert!(
        !events.to_string().contains("ghost"),
        "a ghost reached the coordinator: {events}"
    );
}

/// Every route of kvlab's own protocol answers 401 to a request without
/// the secret (or with a wrong one), and such requests change nothing.
#[test]
fn every_internal_route_needs_the_secret() {
    let c = Cluster::start(&format!("{FAST_IN_MEMORY} --followers 2"));
    let bare = common::bare_http();
    let (leader, follower) = (c.node_url(0), c.node_url(1));
    let mut routes: Vec<(&str, String)> = vec![
        ("POST", format!("{}/heartbeat", c.registry)),
        ("POST", format!("{}/deregister", c.registry)),
        ("POST", format!("{}/node-died", c.coordinator)),
        ("POST", format!("{}/node-revived", c.coordinator)),
    ];
    for url in [&leader, &follower] {
        for (method, path) in [
            ("GET", "/replicate"),
            ("POST", "/replicate"),
            ("POST", "/replicate/snapshot"),
            ("POST", "/replicate/truncate"),
            ("POST", "/batch/write"),
            ("POST", "/batch/read"),
            ("GET", "/replication/peers"),
            ("PUT", "/replication/peers"),
            ("POST", "/replication/wait"),
            ("GET", "/replication/links"),
            ("POST", "/admin/promote"),
            ("POST", "/admin/pause-heartbeats"),
            ("POST", "/admin/shutdown"),
            ("POST", "/admin/partition"),
            ("POST", "/admin/slow-disk"),
        ] {
            routes.push((method, format!("{url}{path}")));
        }
    }
    for (method, url) in &routes {
        let method: reqwest::Method = method.parse().unwrap();
        let req = || bare.request(method.clone(), url).json(&json!({}));
        assert_unauthorized(send(req()), &format!("{method} {url} without the secret"));
        let wrong = req().header(kvlab::auth::HEADER_SECRET, "not-the-cluster-secret");
        assert_unauthorized(send(wrong), &format!("{method} {url} with a wrong secret"));
    }
    // A term in a header counts only with the secret: anyone else's would
    // make the leader step down.
    let (code, _) = send(
        bare.get(format!("{leader}/health"))
            .header("x-kvlab-term", "999"),
    );
    assert_eq!(code, 200);
    assert_eq!(c.write("k", "v").0, 200);
    let s = c.status();
    assert_eq!(s["term"], 1, "{s}");
    assert!(
        std::iter::once(&s["leader"])
            .chain(s["followers"].as_array().unwrap())
            .all(|n| n["status"] == "alive"),
        "{s}"
    );
    // The same routes with the secret are served (one of them, harmless).
    let (code, body) = send(c.http.get(format!("{leader}/replication/links")));
    assert_eq!(code, 200, "{body}");
}

/// The lab's routes, as docs/api.md gives them and the course's scripts
/// call them, need nothing on loopback.
#[test]
fn lab_routes_on_loopback_need_nothing() {
    let c = Cluster::start(FAST_3_2_2);
    let bare = common::bare_http();
    let ok = |req: reqwest::blocking::RequestBuilder, what: &str| {
        let (code, body) = send(req);
        assert_eq!(code, 200, "{what}: {body}");
        body
    };
    let (gw, co, leader, f1) = (&c.gateway, &c.coordinator, c.node_url(0), c.node_url(1));
    let kv = json!({"key": "name", "value": "distributed-systems"});
    ok(bare.post(format!("{gw}/write")).json(&kv), "gateway write");
    ok(bare.get(format!("{gw}/read/name")), "gateway read");
    for path in ["/cluster-status", "/stats", "/health", "/"] {
        ok(bare.get(format!("{gw}{path}")), path);
    }
    ok(
        bare.post(format!("{co}/write")).json(&kv),
        "coordinator write",
    );
    for path in [
        "/status",
        "/read/name",
        "/",
        "/events?since=0",
        "/ui",
        "/metrics",
    ] {
        ok(bare.get(format!("{co}{path}")), path);
    }
    for url in [&leader, &f1] {
        for path in ["/data/name", "/data", "/stats", "/health", "/", "/snapshot"] {
            ok(bare.get(format!("{url}{path}")), path);
        }
    }
    for path in ["/nodes", "/alive", "/"] {
        ok(bare.get(format!("{}{path}", c.registry)), path);
    }
    // The demos' admin actions.
    ok(bare.post(format!("{co}/kill/follower-1")), "kill");
    let spawned = ok(bare.post(format!("{co}/spawn")), "spawn");
    assert_eq!(spawned["node_id"], "follower-1");
    ok(
        bare.post(format!("{co}/catchup"))
            .json(&json!({"node_id": "follower-1"})),
        "catchup",
    );
    ok(
        bare.post(format!("{co}/admin/slow-disk/follower-2"))
            .json(&json!({"ms": 1, "seconds": 0})),
        "slow-disk",
    );
}

/// `kvlab up` on every address (the test still only talks to loopback):
/// the admin routes need the printed token, the lab's others do not, the
/// gateway forwards no admin action, and the secret is new and unknown.
#[test]
fn off_loopback_admin_needs_the_printed_token() {
    let base = common::free_port_block();
    let scratch = common::scratch();
    let mut child = common::kvlab_in(&scratch)
        .env_remove(kvlab::auth::ENV_SECRET)
        .args(["up", "--host", "0.0.0.0", "--in-memory", "--no-delay"])
        .args(["--followers", "2"])
        .args(["--coordinator-port", &base.to_string()])
        .args(["--registry-port", &(base + 1).to_string()])
        .args(["--node-base-port", &(base + 2).to_string()])
        .args([
            "--gateway-port",
            &(base + common::GATEWAY_OFFSET).to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _up = StopOnDrop(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let notice = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("kvlab up printed no admin token");
        if line.contains("need the admin token") {
            break line;
        }
    };
    let token = notice.rsplit(' ').next().unwrap().to_string();
    assert_eq!(token.len(), 64, "{notice}");
    // Off loopback every listener speaks TLS, with the CA `up` made.
    let ca = scratch
        .path()
        .join(format!("kvlab-{base}"))
        .join("tls")
        .join("ca.pem");
    let co = format!("https://127.0.0.1:{base}");
    let gw = format!("https://127.0.0.1:{}", base + common::GATEWAY_OFFSET);
    let bare = common::http().ca(&ca).build();
    eventually("the cluster to become ready", secs(30), || {
        bare.get(format!("{co}/status"))
            .send()
            .ok()
            .and_then(|r| r.json::<Value>().ok())
            .is_some_and(|s| s["quorum"]["can_write"] == true)
    });
    let kill = || bare.post(format!("{co}/kill/follower-1"));
    assert_unauthorized(send(kill()), "kill without the token");
    assert_unauthorized(
        send(kill().bearer_auth("0123456789abcdef0123456789abcdef")),
        "kill with a wrong token",
    );
    assert_unauthorized(send(bare.post(format!("{co}/spawn"))), "spawn without");
    assert_unauthorized(
        send(
            bare.post(format!("{co}/admin/partition/follower-2"))
                .json(&json!({"peers": ["leader"], "seconds": 1})),
        ),
        "admin without",
    );
    // The secret is this cluster's own: the test's does not open anything.
    assert_unauthorized(
        send(
            common::http()
                .secret()
                .ca(&ca)
                .build()
                .post(format!("https://127.0.0.1:{}/admin/shutdown", base + 2)),
        ),
        "a node hook with another cluster's secret",
    );
    let (code, body) = send(kill().bearer_auth(&token));
    assert_eq!(code, 200, "{body}");
    let (code, body) = send(bare.post(format!("{co}/spawn")).bearer_auth(&token));
    assert_eq!(
        (code, body["node_id"].as_str()),
        (200, Some("follower-1")),
        "{body}"
    );
    // The rest stays open, and the gateway has no admin route to forward.
    let (code, _) = send(bare.get(format!("{co}/status")));
    assert_eq!(code, 200);
    let kv = json!({"key": "k", "value": "v"});
    let (code, body) = send(bare.post(format!("{gw}/write")).json(&kv));
    assert_eq!(code, 200, "{body}");
    for path in [
        "/kill/follower-2",
        "/spawn",
        "/admin/partition/follower-2",
        "/catchup",
    ] {
        let (code, _) = send(bare.post(format!("{gw}{path}")).bearer_auth(&token));
        assert_eq!(code, 404, "the gateway answered {path}");
    }
}

/// Components started by hand, without a secret given, share the user's
/// secret file, which is created private.
#[test]
fn components_started_by_hand_share_the_users_secret_file() {
    use std::os::unix::fs::PermissionsExt;
    let base = common::free_port_block();
    let scratch = common::scratch();
    let (coordinator, registry) = (
        format!("http://127.0.0.1:{base}"),
        format!("http://127.0.0.1:{}", base + 1),
    );
    let by_hand = || {
        let mut cmd = common::kvlab_in(&scratch);
        cmd.env_remove(kvlab::auth::ENV_SECRET)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    };
    let _registry = StopOnDrop(
        by_hand()
            .args(["registry", "--port", &(base + 1).to_string()])
            .args(["--coordinator", &coordinator])
            .spawn()
            .unwrap(),
    );
    let _coordinator = StopOnDrop(
        by_hand()
            .args(["coordinator", "--port", &base.to_string()])
            .args(["--registry", &registry])
            .args(["--node-base-port", &(base + 2).to_string()])
            .args(["--followers", "2", "--in-memory", "--no-delay", "--quiet"])
            .spawn()
            .unwrap(),
    );
    let bare = common::bare_http();
    eventually("heartbeats to get through (3 alive)", secs(30), || {
        let alive = bare
            .get(format!("{registry}/alive"))
            .send()
            .ok()
            .and_then(|r| r.json::<Value>().ok())
            .and_then(|v| v["nodes"].as_array().map(Vec::len));
        if alive == Some(3) {
            Ok(())
        } else {
            Err(format!("heartbeats never got through: {alive:?} alive"))
        }
    });
    let uid = unsafe { libc::geteuid() };
    let file = scratch
        .path()
        .join(format!("kvlab-{uid}"))
        .join("cluster-secret");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let secret = std::fs::read_to_string(&file).unwrap();
    let links = format!("http://127.0.0.1:{}/replication/links", base + 2);
    let (code, _) = send(
        bare.get(&links)
            .header(kvlab::auth::HEADER_SECRET, secret.trim()),
    );
    assert_eq!(code, 200);
    assert_unauthorized(send(bare.get(&links)), "links without the secret");
}

/// A bad secret or token file is refused at start, saying what is wrong.
#[test]
fn bad_secrets_and_token_files_are_refused_with_the_reason() {
    let scratch = common::scratch();
    let short = scratch.path().join("short");
    std::fs::write(&short, "abc\n").unwrap();
    let missing = scratch.path().join("missing");
    let cases: Vec<(Vec<&std::ffi::OsStr>, Option<&str>, &str)> = vec![
        (
            vec![
                "up".as_ref(),
                "--cluster-secret-file".as_ref(),
                short.as_os_str(),
            ],
            None,
            "at least 16",
        ),
        (
            vec![
                "registry".as_ref(),
                "--cluster-secret-file".as_ref(),
                missing.as_os_str(),
            ],
            None,
            "cannot read",
        ),
        (
            vec![
                "node".as_ref(),
                "--id".as_ref(),
                "leader".as_ref(),
                "--port".as_ref(),
                "1".as_ref(),
            ],
            Some("has space 0123456789"),
            "printable ASCII",
        ),
        (
            vec![
                "coordinator".as_ref(),
                "--admin-token-file".as_ref(),
                missing.as_os_str(),
            ],
            None,
            "admin token: cannot read",
        ),
    ];
    for (args, env, expected) in cases {
        let mut cmd = common::kvlab_in(&scratch);
        if let Some(value) = env {
            cmd.env(kvlab::auth::ENV_SECRET, value);
        }
        let out = cmd.args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

/// `--admin-token-file` turns the token on even on loopback.
#[test]
fn an_admin_token_file_is_required_on_loopback_too() {
    let scratch = common::scratch();
    let file = scratch.path().join("token");
    std::fs::write(&file, "a-token-of-the-instructor-42\n").unwrap();
    let c = Cluster::start_plus(
        &format!("{FAST_IN_MEMORY} --followers 2"),
        &["--admin-token-file", file.to_str().unwrap()],
    );
    let bare = common::bare_http();
    let kill = || bare.post(format!("{}/kill/follower-2", c.coordinator));
    assert_unauthorized(send(kill()), "kill without the token");
    let (code, body) = send(kill().bearer_auth("a-token-of-the-instructor-42"));
    assert_eq!(code, 200, "{body}");
}

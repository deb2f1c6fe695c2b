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
        .args(common::up_ports(base))
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

// ---------------------------------------------------------------------------
// What a web page in the user's browser can do (issue 24)
// ---------------------------------------------------------------------------

/// A page of any site can send the user's browser's "simple" requests to
/// 127.0.0.1 (no preflight: a body-less POST, a `text/plain` or form body),
/// and a name it controls can be made to point at 127.0.0.1 (DNS
/// rebinding). On the old main a page stopped `follower-3` and started
/// `evil-1`. Now the guard refuses a foreign `Origin` and an unexpected
/// `Host` (403) and any body that is not JSON (415), on the coordinator's
/// admin routes and on every state-changing route (the gateway's too); what
/// curl, the scripts, kvlab itself and the live view send still passes.
#[test]
fn web_pages_cannot_press_the_admin_buttons() {
    let c = Cluster::start(&format!("{FAST_IN_MEMORY} --followers 2 -W 1 -R 1"));
    let bare = common::bare_http();
    let (co, gw, port) = (&c.coordinator, &c.gateway, c.base);
    let refused = |req: reqwest::blocking::RequestBuilder, code: u16, error: &str, what: &str| {
        let (got, body) = send(req);
        assert_eq!(got, code, "{what}: {body}");
        assert_eq!(body["detail"]["error"], error, "{what}: {body}");
        assert!(body["detail"]["reason"].is_string(), "{what}: {body}");
    };
    let other_origin = format!("http://127.0.0.1:{}", c.base + common::GATEWAY_OFFSET);
    for origin in ["http://evil.example", "null", &other_origin] {
        let kill = bare
            .post(format!("{co}/kill/follower-1"))
            .header("origin", origin);
        refused(kill, 403, "cross-origin request refused", origin);
        let spawn = bare
            .post(format!("{co}/spawn"))
            .header("origin", origin)
            .json(&json!({"grow": true}));
        refused(spawn, 403, "cross-origin request refused", origin);
        let pause = bare
            .post(format!("{co}/ui/pause/follower-1"))
            .header("origin", origin);
        refused(pause, 403, "cross-origin request refused", origin);
    }
    for host in [
        format!("rebind.example:{port}"),
        "localhost.evil.example".into(),
    ] {
        let kill = bare
            .post(format!("{co}/kill/follower-1"))
            .header("host", &host);
        refused(kill, 403, "unexpected Host", &host);
    }
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let spawn = bare
            .post(format!("{co}/spawn"))
            .header("content-type", content_type)
            .body(r#"{"node_id": "evil-1", "grow": true}"#);
        refused(
            spawn,
            415,
            "expected Content-Type: application/json",
            content_type,
        );
    }
    let s = c.status();
    assert_eq!(s["followers"].as_array().unwrap().len(), 2, "{s}");
    assert_eq!(c.follower("follower-1")["status"], "alive", "{s}");

    // What the lab sends passes the guard: respawning a follower that is
    // alive is refused after it (409), so nothing changes.
    let probe = json!({"node_id": "follower-1"});
    let passes = [
        (
            "curl with JSON",
            bare.post(format!("{co}/spawn")).json(&probe),
        ),
        (
            "the live view (its own origin)",
            bare.post(format!("{co}/spawn"))
                .header("origin", format!("http://127.0.0.1:{port}"))
                .json(&probe),
        ),
        (
            "named as localhost",
            bare.post(format!("{co}/spawn"))
                .header("host", format!("localhost:{port}"))
                .json(&probe),
        ),
        (
            "a script's JSON with no Content-Type (the original lab took it)",
            bare.post(format!("{co}/spawn")).body(probe.to_string()),
        ),
        (
            "kvlab's own, by any name (it has the secret)",
            c.http
                .post(format!("{co}/spawn"))
                .header("host", "coordinator:7000")
                .json(&probe),
        ),
    ];
    for (what, req) in passes {
        let (code, body) = send(req);
        assert_eq!(code, 409, "{what}: {body}");
    }
    // The README's body-less curl still kills.
    let (code, body) = send(bare.post(format!("{co}/kill/follower-2")));
    assert_eq!(code, 200, "{body}");

    // Nor does a page write through the gateway.
    let kv = json!({"key": "k", "value": "from a page"});
    refused(
        bare.post(format!("{gw}/write"))
            .header("origin", "http://evil.example")
            .json(&kv),
        403,
        "cross-origin request refused",
        "gateway write",
    );
    refused(
        bare.post(format!("{gw}/write"))
            .header("host", "rebind.example")
            .json(&kv),
        403,
        "unexpected Host",
        "gateway write",
    );
    refused(
        bare.post(format!("{gw}/write"))
            .header("content-type", "text/plain")
            .body(kv.to_string()),
        415,
        "expected Content-Type: application/json",
        "gateway write",
    );
    assert_eq!(send(bare.post(format!("{gw}/write")).json(&kv)).0, 200);
    // Reads stay open, whoever asks; the view is never framed by a page.
    let (code, _) = send(
        bare.get(format!("{co}/status"))
            .header("origin", "http://evil.example"),
    );
    assert_eq!(code, 200);
    let ui = bare.get(format!("{co}/ui")).send().unwrap();
    assert_eq!(ui.headers()["x-frame-options"], "DENY");
}

/// `/spawn` grew a cluster without bound (`{"grow": true}`): every call a
/// process. Now it adds followers up to `api::MAX_SPAWNED_FOLLOWERS`, then
/// refuses with 409; respawning a dead slot is never refused for it.
#[test]
fn spawn_grows_a_cluster_only_so_far() {
    let c = Cluster::start(&format!("{FAST_IN_MEMORY} --followers 1 -W 1 -R 1"));
    let most = kvlab::api::MAX_SPAWNED_FOLLOWERS;
    for n in 2..=most {
        let (code, body) = c.post("/spawn", json!({"grow": true}));
        assert_eq!(code, 200, "follower {n}: {body}");
    }
    let (code, body) = c.post("/spawn", json!({"grow": true}));
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["detail"]["error"], "the cluster is at its largest");
    assert!(
        body["detail"]["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("at most {most} followers")),
        "{body}"
    );
    assert_eq!(c.status()["followers"].as_array().unwrap().len(), most);
    let (code, body) = c.post("/kill/follower-2?mode=crash", json!({}));
    assert_eq!(code, 200, "{body}");
    let (code, body) = c.post("/spawn", json!({"node_id": "follower-2"}));
    assert_eq!(code, 200, "a respawn at the bound: {body}");
}

/// The same in a real browser: a page of another origin (the gateway's
/// port) sends the requests that stopped a follower and started `evil-1`
/// on the old main; nothing happens. A link to the live view with
/// `#click=kill-follower-1` only offers to press the button: a script's
/// click does nothing, a person's click presses it.
#[test]
fn in_chromium_a_foreign_page_and_a_link_press_nothing_by_themselves() {
    let c = Cluster::start(&format!("{FAST_IN_MEMORY} --followers 2 -W 1 -R 1"));
    let Some(browser) = common::browser::Browser::start(c.base + 30) else {
        return;
    };
    let co = &c.coordinator;
    let attack = format!(
        r#"Promise.all([
            fetch("{co}/kill/follower-1", {{method: "POST", mode: "no-cors"}}),
            fetch("{co}/kill/follower-2?mode=crash", {{method: "POST", mode: "no-cors"}}),
            fetch("{co}/spawn", {{method: "POST", mode: "no-cors",
                headers: {{"content-type": "text/plain"}}, body: '{{"node_id": "evil-1", "grow": true}}'}}),
            fetch("{co}/spawn", {{method: "POST", mode: "no-cors"}}),
        ]).then(() => true, () => true)"#
    );
    browser.drive(json!([
        {"goto": format!("{}/health", c.gateway)},
        {"wait": "document.readyState === 'complete'", "timeout": 20},
        {"eval": attack},
        {"goto": format!("{co}/ui#click=kill-follower-1")},
        {"wait": "!!document.querySelector('#node-follower-1[data-state=alive]')", "timeout": 20},
        {"wait": "!!document.getElementById('script-run')", "timeout": 20},
        // A script's click (what a page could do) is not a person's.
        {"eval": "document.getElementById('script-run').click()"},
    ]));
    common::always(
        "every follower alive, no new one",
        secs(2),
        common::millis(100),
        || {
            let s = c.status();
            let followers = s["followers"].as_array().unwrap();
            if followers.len() == 2 && followers.iter().all(|f| f["status"] == "alive") {
                Ok(())
            } else {
                Err(s.to_string())
            }
        },
    );
    browser.drive(json!([
        {"click": "#script-run"},
        {"wait": "document.body.dataset.scriptDone === '1'", "timeout": 10},
        {"wait": "!!document.querySelector('#node-follower-1[data-state=dead]')", "timeout": 20},
    ]));
    assert_eq!(c.follower("follower-1")["status"], "dead");
}

/// Keys reached the operator's terminal raw: a newline forged whole event
/// lines on the `kvlab up` console ("👑 follower-3 is the LEADER now"), an
/// escape sequence cleared the screen. Now keys and values are shown
/// escaped: after writes and reads of such keys, neither the console nor
/// `up`'s log nor any node's log file holds a raw control character (but
/// line ends), and no line starts where a key wanted one to.
#[test]
fn keys_and_values_reach_no_console_or_log_file_raw() {
    let dir = tempfile::Builder::new()
        .prefix("kvlab-console-")
        .tempdir()
        .unwrap();
    let (console, stderr) = (dir.path().join("console.txt"), dir.path().join("up.log"));
    let base = common::free_port_block();
    let up = common::kvlab()
        .arg("up")
        .args(FAST_IN_MEMORY.split_whitespace())
        // W + R > N: each read right after its write must find it (with
        // R=1 the read could ask the other follower first and get a 404).
        .args(["--followers", "2", "-W", "1", "-R", "2"])
        .args(common::up_ports(base))
        .arg("--log-dir")
        .arg(dir.path().join("logs"))
        .env("RUST_LOG", "kvlab=debug,info")
        .stdout(std::fs::File::create(&console).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let up = StopOnDrop(up);
    let read = |path: &std::path::Path| std::fs::read_to_string(path).unwrap_or_default();
    common::wait("the cluster ready on the console", secs(30))
        .every(common::millis(50))
        .until(|| read(&console).contains("🧭 roles"));
    let gateway = format!("http://127.0.0.1:{}", base + common::GATEWAY_OFFSET);
    let bare = common::bare_http();
    let keys = [
        "x\r\n👑 follower-3 is the LEADER now",
        "\u{1b}[2J\u{1b}]0;pwned\u{7}",
        "tab\there\0nul\u{7f}\u{85}\u{202e}",
    ];
    for key in keys {
        let kv = json!({"key": key, "value": format!("{key}\n\u{1b}[31mred")});
        assert_eq!(send(bare.post(format!("{gateway}/write")).json(&kv)).0, 200);
        let url = format!("{gateway}/read/{}", kvlab::api::key_segment(key));
        assert_eq!(send(bare.get(url)).0, 200);
    }
    let missing = format!(
        "{gateway}/read/{}",
        kvlab::api::key_segment("gone\n\u{1b}[2J")
    );
    assert_eq!(send(bare.get(missing)).0, 404);
    common::wait("every request narrated", secs(10))
        .every(common::millis(50))
        .until(|| read(&console).matches("🔎 READ").count() >= 4);
    drop(up); // stopped: every line is written
    let text = read(&console);
    assert!(
        text.contains(r"WRITE x\r\n👑 follower-3 is the LEADER now"),
        "the key, escaped: {text}"
    );
    let mut files = vec![console.clone(), stderr.clone()];
    for log in std::fs::read_dir(dir.path().join("logs")).unwrap() {
        files.push(log.unwrap().path());
    }
    for path in files {
        let text = read(&path);
        let raw: Vec<char> = text
            .chars()
            .filter(|&c| (c.is_control() && c != '\n') || c == '\u{202e}')
            .collect();
        assert!(raw.is_empty(), "raw {raw:?} in {}:\n{text}", path.display());
        assert!(
            !text.lines().any(|l| l.starts_with("👑")),
            "a forged line in {}:\n{text}",
            path.display()
        );
    }
}

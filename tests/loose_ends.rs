//! Loose ends a new user meets (issue 22, section 4), each on a real
//! cluster or a real process: the registry's view of the leader right after
//! start, the gateway's `/stats` in the original's shape, naming a node by
//! its id after a failover, port errors that name the flags, the registry's
//! first line, a console free of raw log lines, and the small ones (grammar,
//! negative numbers, a crash's `can_write`).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Cluster, StopOnDrop, FAST_3_2_2};
use serde_json::{json, Value};

/// Runs `kvlab` to its end (bounded: a run that hangs fails the test).
fn run_to_end(mut cmd: Command) -> (Option<i32>, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = common::wait("kvlab to end", common::secs(30))
        .every(common::millis(20))
        .try_until(|| child.try_wait().unwrap());
    let Some(status) = status else {
        let _ = child.kill();
        panic!("kvlab did not end within 30 s");
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    (status.code(), out)
}

#[test]
fn the_registry_shows_the_leader_as_leader_as_soon_as_the_cluster_is_ready() {
    // `Cluster::start` returns when the `cluster_ready` event is in the log.
    let c = Cluster::start("--no-delay");
    let view: Value = c
        .http
        .get(format!("{}/nodes", c.registry))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let leader = c.status()["leader"]["node_id"].clone();
    let nodes = view["nodes"].as_array().unwrap();
    let me = nodes.iter().find(|n| n["node_id"] == leader).unwrap();
    assert_eq!(me["role"], "leader", "registry view: {view:#}");
    for n in nodes.iter().filter(|n| n["node_id"] != leader) {
        assert_eq!(n["role"], "follower", "registry view: {view:#}");
    }
}

#[test]
fn gateway_stats_have_the_originals_shape() {
    let c = Cluster::start("--no-delay --rate-limit --rate-limit-max 100 --rate-limit-window 60");
    let http = common::bare_http();
    let write = http
        .post(format!("{}/write", c.gateway))
        .json(&json!({"key": "k", "value": "v"}))
        .send()
        .unwrap();
    assert_eq!(write.status(), 200);
    let read = http.get(format!("{}/read/k", c.gateway)).send().unwrap();
    assert_eq!(read.status(), 200);
    let status = http
        .get(format!("{}/cluster-status", c.gateway))
        .send()
        .unwrap();
    assert_eq!(status.status(), 200);
    let text = http
        .get(format!("{}/stats", c.gateway))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(text.contains("\"window_seconds\":60,"), "{text}");
    let stats: Value = serde_json::from_str(&text).unwrap();
    let gateway = &stats["gateway"];
    assert_eq!(gateway["forwarded_requests"], 2, "/write and /read: {text}");
    assert_eq!(gateway["forwarded_status_requests"], 1, "{text}");
    let limiter = &stats["rate_limiter"];
    let clients = limiter["clients"]
        .as_object()
        .expect("clients is an object");
    let me = &clients["127.0.0.1"];
    let requests = me["requests"].as_u64().unwrap();
    assert!(requests >= 3, "{text}");
    assert_eq!(requests + me["remaining"].as_u64().unwrap(), 100, "{text}");
    assert!(me["reset_seconds"].as_u64().unwrap() <= 60, "{text}");
    assert_eq!(limiter["tracked_clients"], 1, "{text}");
}

#[test]
fn node_prefix_names_the_demoted_leader_after_a_failover() {
    let c = Cluster::start(&format!("{FAST_3_2_2} --failure-timeout 1"));
    let since = c.last_event_id();
    let (code, _) = c.post("/kill/leader?mode=crash", json!({}));
    assert_eq!(code, 200);
    c.wait_for_event_after(since, "leader_promoted", None, Duration::from_secs(15));
    // The node called `leader` comes back, as a follower.
    let (code, body) = c.post("/spawn", json!({"node_id": "leader"}));
    assert_eq!(code, 200, "{body}");
    let s = c.wait_status("leader back as a follower", Duration::from_secs(20), |s| {
        s["followers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["node_id"] == "leader" && f["status"] == "alive")
    });
    let new_leader = s["leader"]["node_id"].as_str().unwrap().to_string();
    assert_ne!(new_leader, "leader");

    // By id: the follower whose id is `leader`.
    let slow = json!({"ms": 1, "seconds": 30});
    let (code, body) = c.post("/admin/slow-disk/node:leader", slow);
    assert_eq!(
        (code, body["node_id"].as_str()),
        (200, Some("leader")),
        "{body}"
    );
    let heal = json!({"ms": 0, "seconds": 0});
    let (code, body) = c.post("/admin/slow-disk/node:leader", heal.clone());
    assert_eq!(
        (code, body["node_id"].as_str()),
        (200, Some("leader")),
        "{body}"
    );
    // Plain `leader`: whoever leads now, as in the original.
    let (code, body) = c.post("/admin/slow-disk/leader", heal);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["node_id"].as_str(),
        Some(new_leader.as_str()),
        "{body}"
    );

    let (code, body) = c.post("/kill/node:leader", json!({}));
    assert_eq!(
        (code, body["node_id"].as_str()),
        (200, Some("leader")),
        "{body}"
    );
    let s = c.status();
    assert_eq!(s["leader"]["node_id"], new_leader.as_str(), "{s:#}");
    assert_eq!(
        s["leader"]["status"], "alive",
        "the leader was not touched: {s:#}"
    );
    let (code, body) = c.post("/kill/node:nobody", json!({}));
    assert_eq!(code, 404, "{body}");
}

#[test]
fn colliding_port_flags_are_named_before_anything_starts() {
    let scratch = common::scratch();
    let base = common::free_port_block();
    let ports = |registry: u16, gateway: u16| {
        let mut cmd = common::kvlab_in(&scratch);
        cmd.args(["up", "--quiet", "--followers", "2"])
            .args(["--coordinator-port", &base.to_string()])
            .args(["--registry-port", &registry.to_string()])
            .args(["--gateway-port", &gateway.to_string()])
            .args(["--node-base-port", &(base + 2).to_string()]);
        cmd
    };
    let (code, out) = run_to_end(ports(base + 1, base + 1));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("--registry-port and --gateway-port are both"),
        "{out}"
    );
    assert!(!out.contains("another"), "{out}");

    let (code, out) = run_to_end(ports(base + 3, base + 39));
    assert_eq!(code, Some(1), "{out}");
    let inside = format!(
        "--registry-port {} is inside the nodes' ports {}-{}",
        base + 3,
        base + 2,
        base + 4
    );
    assert!(out.contains(&inside), "{out}");
    assert!(!out.contains("another"), "{out}");

    // A port someone else holds: the real flag is named.
    let _held = std::net::TcpListener::bind(("127.0.0.1", base + 39)).unwrap();
    let (code, out) = run_to_end(ports(base + 1, base + 39));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "port {} (--gateway-port) is already in use",
            base + 39
        )),
        "{out}"
    );
    assert!(out.contains("pick another with --gateway-port"), "{out}");
    assert!(!out.contains("the --port flags"), "{out}");
}

#[test]
fn the_registry_says_where_it_listens_at_start() {
    let port = common::free_port_block();
    let mut child = StopOnDrop(
        common::kvlab()
            .args(["registry", "--port", &port.to_string()])
            .args(["--coordinator", "http://127.0.0.1:1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut first = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(
        first.starts_with(&format!("kvlab registry: listening on 127.0.0.1:{port}")),
        "{first}"
    );
    assert!(first.contains("5 s"), "the timeout: {first}");
    assert!(
        first.contains("http://127.0.0.1:1"),
        "the coordinator: {first}"
    );
}

#[test]
fn the_console_of_up_has_no_raw_log_lines_over_a_node_death() {
    let base = common::free_port_block();
    let scratch = common::scratch();
    let out_path = scratch.path().join("console.txt");
    let out = std::fs::File::create(&out_path).unwrap();
    let log_dir = tempfile::Builder::new()
        .prefix("kvlab-test-logs-")
        .tempdir()
        .unwrap();
    let mut cmd = common::kvlab_in(&scratch);
    cmd.env_remove("RUST_LOG")
        .args(["up", "--no-delay", "--failure-timeout", "1"])
        .args(common::up_ports(base))
        .arg("--log-dir")
        .arg(log_dir.path())
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out));
    let c = Cluster {
        child: cmd.spawn().unwrap(),
        coordinator: format!("http://127.0.0.1:{base}"),
        registry: format!("http://127.0.0.1:{}", base + 1),
        gateway: format!("http://127.0.0.1:{}", base + common::GATEWAY_OFFSET),
        base,
        http: common::internal_http(),
        data_dir: None,
        log_dir,
    };
    c.wait_for_event("cluster_ready", None, Duration::from_secs(30));
    let (code, _) = c.post("/kill/follower-1?mode=crash", json!({}));
    assert_eq!(code, 200);
    c.wait_for_event("node_dead", Some("follower-1"), Duration::from_secs(15));
    // A write while it is dead, so the coordinator and registry have
    // something to warn about.
    c.write("k", "v");
    drop(c);
    let console = std::fs::read_to_string(&out_path).unwrap();
    assert!(console.contains("follower-1"), "the events: {console}");
    for level in [" TRACE ", " DEBUG ", " INFO ", " WARN ", " ERROR "] {
        let raw: Vec<&str> = console
            .lines()
            .filter(|l| l.contains(level) && l.contains(" kvlab::"))
            .collect();
        assert!(raw.is_empty(), "raw log lines in the console: {raw:#?}");
    }
}

#[test]
fn one_alive_follower_is_written_in_the_singular() {
    let c = Cluster::start("--no-delay --followers 2 -W 2");
    let (code, _) = c.post("/kill/follower-1", json!({}));
    assert_eq!(code, 200);
    let (code, body) = c.write("k", "v");
    assert_eq!(code, 503, "{body}");
    let text = body.to_string();
    assert!(text.contains("only 1 of the followers is alive"), "{text}");
}

#[test]
fn a_negative_delay_gets_kvlabs_message_with_or_without_the_equals_sign() {
    let scratch = common::scratch();
    for args in [&["--sync-delay", "-1"][..], &["--sync-delay=-1"][..]] {
        let mut cmd = common::kvlab_in(&scratch);
        cmd.args(["up", "--quiet"]).args(args);
        let (code, out) = run_to_end(cmd);
        assert_eq!(code, Some(1), "{args:?}: {out}");
        assert!(!out.contains("unexpected argument"), "{args:?}: {out}");
        assert!(out.contains("-1"), "{args:?}: {out}");
        assert!(out.contains("delay"), "{args:?}: {out}");
    }
    let mut cmd = common::kvlab_in(&scratch);
    cmd.args(["registry", "--timeout", "-2"]);
    let (code, out) = run_to_end(cmd);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("--timeout must be between 0 and 3600 seconds, got -2"),
        "{out}"
    );
}

#[test]
fn crashing_a_sync_follower_answers_that_writes_cannot_succeed() {
    let c = Cluster::start("--no-delay --followers 2 -W 2");
    let (code, body) = c.post("/kill/follower-1?mode=crash", json!({}));
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "crashed", "{body}");
    assert_eq!(body["can_write"], false, "{body}");
}

/// A `kvlab node` process parses its arguments with a parser of that
/// subcommand alone (`NodeCli` in main.rs: it keeps the other subcommands'
/// code out of every node's memory). What a person sees must still be what
/// the full parser says about `kvlab node`.
#[test]
fn a_node_parses_its_arguments_as_the_full_parser_would() {
    let run = |args: &[&str]| {
        let out = common::kvlab().args(args).output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let (code, own, _) = run(&["node", "--help"]);
    assert_eq!(code, Some(0));
    let (_, full, _) = run(&["help", "node"]);
    assert_eq!(
        own, full,
        "`kvlab node --help` differs from `kvlab help node`"
    );

    let (code, _, err) = run(&["node", "--bogus"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("unexpected argument '--bogus'"), "{err}");
    assert!(err.contains("Usage: kvlab node"), "{err}");
    let (code, _, err) = run(&["node"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--id <ID>"), "{err}");
}

/// `kvlab bench-skeleton`, started as `bench/compare.sh` starts it: three
/// followers, a leader that waits for two of them, a gateway that reads
/// from two. Every request of a `kvlab bench` run through it is answered,
/// and the set-ups it cannot serve are refused with the flag to fix.
#[test]
fn the_skeleton_answers_a_benchmark_and_refuses_impossible_setups() {
    let scratch = common::scratch();
    let base = common::free_port_block();
    let (gateway, leader) = (base, base + 1);
    let followers = [base + 2, base + 3, base + 4];
    let skeleton = |args: &[String]| {
        let mut cmd = common::kvlab_in(&scratch);
        cmd.arg("bench-skeleton").args(args);
        // Each process's stderr in a file of its own, for a failing test to show.
        let log = scratch.path().join(format!("skeleton-{}.log", args[3]));
        let log = std::fs::File::create(log).unwrap();
        cmd.stdout(Stdio::null()).stderr(log);
        StopOnDrop(cmd.spawn().unwrap())
    };
    let dir = |port: u16| scratch.path().join(port.to_string()).display().to_string();
    let mut processes = vec![];
    for f in followers {
        processes.push(skeleton(&[
            "--role".into(),
            "replica".into(),
            "--port".into(),
            f.to_string(),
            "--dir".into(),
            dir(f),
        ]));
    }
    let list = |ports: &[u16]| {
        ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    processes.push(skeleton(&[
        "--role".into(),
        "replica".into(),
        "--port".into(),
        leader.to_string(),
        "--dir".into(),
        dir(leader),
        "--replicate-to".into(),
        list(&followers),
        "--quorum".into(),
        "2".into(),
    ]));
    processes.push(skeleton(&[
        "--role".into(),
        "gateway".into(),
        "--port".into(),
        gateway.to_string(),
        "--write-to".into(),
        leader.to_string(),
        "--read-from".into(),
        list(&followers[1..]),
    ]));
    let url = format!("http://127.0.0.1:{gateway}");
    let http = reqwest::blocking::Client::new();
    let ready = common::wait("the skeleton's gateway", common::secs(20))
        .every(common::millis(50))
        .try_until(|| http.get(format!("{url}/health")).send().is_ok());
    if ready.is_none() {
        let logs: Vec<String> = (base..base + 5)
            .map(|p| scratch.path().join(format!("skeleton-{p}.log")))
            .map(|f| std::fs::read_to_string(f).unwrap_or_default())
            .collect();
        panic!("the skeleton never answered; its stderr: {logs:?}");
    }

    let out = common::kvlab_in(&scratch)
        .args(["bench", "--url", &url, "--target", "bare", "--ops", "400"])
        .args([
            "--clients",
            "8",
            "--reads",
            "50",
            "--keys",
            "100",
            "--preload",
            "--json",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["all"]["requests"], 400, "{report}");
    assert_eq!(report["all"]["errors"], 0, "{report}");
    assert_eq!(report["all"]["outcomes"]["ok"], 400, "{report}");

    let refused = |args: &[&str], says: &str| {
        let mut cmd = common::kvlab_in(&scratch);
        cmd.arg("bench-skeleton").args(args);
        let (code, out) = run_to_end(cmd);
        assert_eq!(code, Some(1), "{args:?}: {out}");
        assert!(out.contains(says), "{args:?} should say {says:?}: {out}");
    };
    let port = (base + 5).to_string();
    refused(&["--role", "replica", "--port", &port], "needs --dir");
    let nowhere = scratch.path().join("refused").display().to_string();
    let quorum = ["--role", "replica", "--port", &port, "--dir", &nowhere];
    refused(
        &[&quorum[..], &["--replicate-to", "1", "--quorum", "2"]].concat(),
        "--quorum 2",
    );
    refused(&["--role", "gateway", "--port", &port], "nowhere to send");
}

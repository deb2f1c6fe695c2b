//! The live view and the metrics, end to end: a real cluster, a real
//! headless Chromium driving `/ui` over the DevTools protocol
//! (`tests/ui/cdp.py`), and a real Prometheus scraping every component.
//!
//! Chromium and Prometheus are Debian packages that `.ci/run` installs; where
//! one is missing (a developer's machine), its test says so and passes
//! without running, rather than failing on the environment.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{millis, secs, wait, Cluster, FAST_IN_MEMORY};
use serde_json::{json, Value};

/// A child process killed (and reaped) when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn installed(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// True in the page when its buttons carry SVG icons, and no
/// button, answer or event line shows an emoji.
const NO_EMOJI_ICONS: &str = r#"(() => {
  const emoji = /\p{Emoji_Presentation}|\uFE0F/u;
  const shown = [...document.querySelectorAll('button, #result, #events li')];
  return shown.length > 0
    && shown.every((e) => !emoji.test(e.textContent))
    && ['spawn-btn', 'kill-leader-btn', 'write-btn', 'read-btn']
         .every((id) => !!document.querySelector('#' + id + ' svg.icon'))
    && document.querySelectorAll('#events li .dot').length > 0;
})()"#;

#[test]
fn live_view_kills_a_follower_and_writes_in_headless_chromium() {
    let cluster = Cluster::start("--in-memory");
    let scratch = common::scratch();
    let Some(browser) = common::browser::Browser::start(cluster.base + 30) else {
        return;
    };
    let shot = scratch.path().join("live-view.png");
    let el = |id: &str| format!("document.getElementById('{id}')");
    browser.drive(
        json!([
            {"goto": format!("{}/ui", cluster.coordinator)},
            {"wait": "!!document.querySelector('#node-follower-1[data-state=alive]')", "timeout": 20},
            {"wait": "!!document.querySelector('#node-follower-2[data-state=alive]')", "timeout": 20},
            // Who is in charge: this coordinator, at its epoch.
            {"wait": "document.querySelector('#control-plane .coordinators .active').textContent.includes('coordinator-')", "timeout": 10},
            {"wait": "document.getElementById('epoch').textContent === '1'", "timeout": 5},
            {"eval": format!("{}.value = 'cart:42'", el("key"))},
            {"eval": format!("{}.click()", el("write-btn"))},
            {"wait": format!("{}.dataset.version === '1'", el("result")), "timeout": 20},
            {"eval": format!("{}.click()", el("kill-follower-1"))},
            {"wait": "!!document.querySelector('#node-follower-1[data-state=dead]')", "timeout": 20},
            {"eval": format!("{}.click()", el("read-btn"))},
            {"wait": format!("!!{}", el("served-by")), "timeout": 20},
            {"wait": "!!document.querySelector('#result svg.icon-read')", "timeout": 5},
            // Partition the other follower from the leader (Fault settings'
            // default), long enough to outlast the screenshot: its card, the
            // event log and the timeline's lane show it.
            {"eval": format!("{}.value = '60'", el("fault-seconds"))},
            {"eval": format!("{}.click()", el("partition-follower-2"))},
            {"wait": "!!document.querySelector('#node-follower-2[data-faults~=partition][data-state=alive] .tag.fault-partition')", "timeout": 20},
            {"wait": "document.querySelector('#node-follower-2 .tag.fault-partition').textContent.startsWith('partitioned')", "timeout": 5},
            {"wait": "!!document.querySelector('#events li[data-kind=partitioned]')", "timeout": 20},
            {"wait": "!!document.querySelector('#timeline rect.fault-partition')", "timeout": 20},
            {"wait": "!!document.querySelector('#timeline rect.fault-dead')", "timeout": 20},
            {"wait": format!("!!{}", el("heal-partition-follower-2")), "timeout": 5},
            // The icons are the page's own drawings, not emoji (which show
            // as empty boxes without an emoji font): the buttons, the
            // answer and each event line.
            {"wait": NO_EMOJI_ICONS, "timeout": 5},
            {"screenshot": shot.display().to_string()},
        ]),
    );
    // The page's "dead" is the coordinator's, and so is its "partitioned".
    assert_eq!(cluster.follower("follower-1")["status"], "dead");
    let (_, ui) = cluster.get("/ui/state");
    assert_eq!(ui["faults"]["follower-2"][0]["kind"], "partition", "{ui}");
    assert_eq!(
        ui["faults"]["follower-2"][0]["detail"],
        "cut off from leader"
    );
    let png = std::fs::read(&shot).expect("the screenshot was saved");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    if let Some(keep) = std::env::var_os("KVLAB_SCREENSHOT") {
        std::fs::copy(&shot, keep).expect("copy the screenshot");
    }
}

/// The coordinator's fault hooks by node id: a partition and a slow disk
/// reach the node, show in `/ui/state`, are narrated, and heal; bad
/// requests are refused with the reason, never forwarded.
#[test]
fn partition_and_slow_disk_go_through_the_coordinator_by_node_id() {
    // W=1: follower-1 is the sync follower, follower-2 the async one.
    let c = Cluster::start(&format!("{FAST_IN_MEMORY} -W 1 -R 1"));
    let seq = |i: u16| c.get_json(&format!("{}/stats", c.node_url(i)))["applied_seq"].as_u64();
    let wait_seq = |i: u16, want: u64| {
        c.eventually(
            format_args!("node {i} to reach seq {want}"),
            secs(15),
            || match seq(i) {
                Some(s) if s == want => Ok(()),
                other => Err(format!("node {i} never reached seq {want}: {other:?}")),
            },
        );
    };
    assert_eq!(c.write("before", "v").0, 200);
    wait_seq(2, 1);
    let (code, body) = c.post(
        "/admin/partition/follower-2",
        json!({"peers": ["leader"], "seconds": 60}),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        (body["status"].as_str(), body["fault"].as_str()),
        (Some("injected"), Some("partition"))
    );
    c.wait_for_event("partitioned", Some("follower-2"), Duration::from_secs(5));
    // follower-1 acks; follower-2 hears nothing from the leader.
    assert_eq!(c.write("during", "v").0, 200);
    assert_eq!(seq(1), Some(2));
    assert_eq!(seq(2), Some(1), "follower-2 is cut off from the leader");
    let (_, ui) = c.get("/ui/state");
    assert_eq!(ui["faults"]["follower-2"][0]["kind"], "partition", "{ui}");

    // Healing: seconds 0. The entry flows again.
    let (code, body) = c.post(
        "/admin/partition/follower-2",
        json!({"peers": [], "seconds": 0}),
    );
    assert_eq!((code, body["status"].as_str()), (200, Some("healed")));
    c.wait_for_event(
        "partition_healed",
        Some("follower-2"),
        Duration::from_secs(5),
    );
    wait_seq(2, 2);
    assert!(c.get("/ui/state").1["faults"].get("follower-2").is_none());

    // A slow disk, on the current leader by its alias; it expires by itself.
    let (code, body) = c.post("/admin/slow-disk/leader", json!({"ms": 20, "seconds": 1}));
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["node_id"], "leader");
    c.wait_for_event("slow_disk", Some("leader"), Duration::from_secs(5));
    c.wait_for_event("slow_disk_healed", Some("leader"), Duration::from_secs(5));

    // Refused, with the reason: nothing reaches a node.
    for (path, body, code, says) in [
        (
            "/admin/partition/nobody",
            json!({"peers": ["leader"], "seconds": 5}),
            404,
            "not found",
        ),
        (
            "/admin/partition/follower-1",
            json!({"peers": ["leadr"], "seconds": 5}),
            400,
            "unknown peers: leadr",
        ),
        (
            "/admin/partition/follower-1",
            json!({"peers": ["leader"], "seconds": -1}),
            400,
            "seconds must be",
        ),
        (
            "/admin/partition/follower-1",
            json!({"seconds": 5}),
            422,
            "expected fields",
        ),
        (
            "/admin/slow-disk/follower-1",
            json!({"ms": 999_999, "seconds": 5}),
            400,
            "ms must be at most",
        ),
        (
            "/admin/slow-disk/follower-1",
            json!({"ms": "slow", "seconds": 5}),
            422,
            "expected fields",
        ),
    ] {
        let (got, answer) = c.post(path, body.clone());
        assert_eq!(got, code, "{path} {body}: {answer}");
        assert!(answer.to_string().contains(says), "{path} {body}: {answer}");
    }
    let resp = c
        .http
        .post(format!("{}/admin/slow-disk/follower-1", c.coordinator))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(c.post("/kill/follower-2", json!({})).0, 200);
    let (code, answer) = c.post(
        "/admin/slow-disk/follower-2",
        json!({"ms": 5, "seconds": 5}),
    );
    assert_eq!(
        code, 409,
        "a dead node has no process to slow down: {answer}"
    );
}

/// Every component's `/metrics` passes `promtool check metrics`, and a real
/// Prometheus, configured by `up --prometheus-config`, scrapes every target
/// and counts the writes made.
#[test]
fn prometheus_scrapes_every_component_with_the_generated_config() {
    let scratch = common::scratch();
    let config = scratch.path().join("prometheus.yml");
    let config_arg = config.display().to_string();
    let cluster = Cluster::start_plus(FAST_IN_MEMORY, &["--prometheus-config", &config_arg]);
    prometheus_scrapes(&cluster, &scratch, &config_arg);
}

/// The same off loopback, where every listener speaks TLS: the generated
/// config scrapes over https, trusting the cluster CA.
#[test]
fn prometheus_scrapes_a_cluster_that_speaks_tls() {
    let scratch = common::scratch();
    let config_arg = scratch.path().join("prometheus.yml").display().to_string();
    let flags = format!("{FAST_IN_MEMORY} --prometheus-config {config_arg}");
    let cluster = Cluster::start_tls(&scratch, &flags);
    let config = std::fs::read_to_string(&config_arg).unwrap();
    assert_eq!(config.matches("scheme: https").count(), 4, "{config}");
    assert!(config.contains("url: https://"), "{config}");
    prometheus_scrapes(&cluster, &scratch, &config_arg);
}

fn prometheus_scrapes(cluster: &Cluster, scratch: &tempfile::TempDir, config_arg: &str) {
    const WRITES: usize = 7;
    for i in 0..WRITES {
        assert_eq!(cluster.write(&format!("k{i}"), "v").0, 200);
    }
    let endpoints = [
        cluster.gateway.clone(),
        cluster.coordinator.clone(),
        cluster.registry.clone(),
        cluster.node_url(0),
        cluster.node_url(1),
        cluster.node_url(2),
    ];
    for url in &endpoints {
        let resp = cluster.http.get(format!("{url}/metrics")).send().unwrap();
        assert_eq!(resp.status(), 200, "{url}/metrics");
        let text = resp.text().unwrap();
        assert!(text.contains("kvlab_build_info{"), "{url}: {text}");
        if installed("promtool") {
            let mut check = Command::new("promtool")
                .args(["check", "metrics"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            check
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = check.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics {url}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let coordinator_metrics = cluster
        .http
        .get(format!("{}/metrics", cluster.coordinator))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        coordinator_metrics.contains(&format!("kvlab_writes_total{{result=\"ok\"}} {WRITES}")),
        "{coordinator_metrics}"
    );

    if !installed("prometheus") {
        eprintln!("SKIPPED the Prometheus half: prometheus is not installed (.ci/run installs it)");
        return;
    }
    if installed("promtool") {
        let out = Command::new("promtool")
            .args(["check", "config", config_arg])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool check config:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let port = cluster.base + 31;
    let _prometheus = Reaped(
        Command::new("prometheus")
            .arg(format!("--config.file={config_arg}"))
            .arg(format!(
                "--storage.tsdb.path={}",
                scratch.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let api = format!("http://127.0.0.1:{port}/api/v1");
    // One deadline for both waits.
    let deadline = Instant::now() + Duration::from_secs(40);
    // Every target up: the three services and the three nodes.
    wait("every Prometheus target up", secs(40))
        .every(millis(200))
        .until(|| {
            let up = cluster
                .http
                .get(format!("{api}/targets"))
                .send()
                .ok()
                .and_then(|r| r.json::<Value>().ok())
                .map(|v| {
                    let active = v["data"]["activeTargets"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    (
                        active.len(),
                        active.iter().filter(|t| t["health"] == "up").count(),
                    )
                });
            if up == Some((6, 6)) {
                Ok(())
            } else {
                Err(format!("targets not all up: {up:?}"))
            }
        });
    let left = deadline.saturating_duration_since(Instant::now());
    wait("the write counter in Prometheus", left)
        .every(millis(200))
        .until(|| {
            let value = cluster
                .http
                .get(format!("{api}/query"))
                .query(&[("query", "sum(kvlab_writes_total{result=\"ok\"})")])
                .send()
                .ok()
                .and_then(|r| r.json::<Value>().ok())
                .and_then(|v| {
                    v["data"]["result"][0]["value"][1]
                        .as_str()
                        .map(str::to_string)
                });
            if value.as_deref() == Some(&WRITES.to_string()) {
                Ok(())
            } else {
                Err(format!("the write counter in Prometheus: {value:?}"))
            }
        });
}

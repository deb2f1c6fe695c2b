//! Containers: `kvlab up --runtime docker` (nodes as containers, started
//! through the Docker Engine API) and `compose.yaml` (the whole cluster as
//! containers, nodes joining). They need the Docker daemon and the kvlab
//! image (`docker/build-image.sh`, which CI runs first): without them each
//! test prints why and passes, unless KVLAB_REQUIRE_DOCKER=1 (CI), where a
//! missing daemon or image fails. Everything a test makes is named with its
//! own prefix and removed, and each test checks that nothing is left.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn image() -> String {
    std::env::var("KVLAB_DOCKER_IMAGE").unwrap_or_else(|_| "kvlab".into())
}

/// True if the Docker tests can run here; otherwise prints why (and fails
/// when KVLAB_REQUIRE_DOCKER=1).
fn docker_ready(test: &str, needs_compose: bool) -> bool {
    let ok = |cmd: &mut Command| {
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let reason = if !ok(Command::new("docker").args(["info"])) {
        Some("the Docker daemon is not reachable (`docker info` failed)".to_string())
    } else if !ok(Command::new("docker").args(["image", "inspect", &image()])) {
        Some(format!(
            "the image {} is missing: build it with docker/build-image.sh",
            image()
        ))
    } else if needs_compose && !ok(Command::new("docker-compose").arg("version")) {
        Some("docker-compose is not installed".to_string())
    } else {
        None
    };
    let Some(reason) = reason else { return true };
    if std::env::var("KVLAB_REQUIRE_DOCKER").is_ok_and(|v| v == "1") {
        panic!("KVLAB_REQUIRE_DOCKER=1, but {reason}");
    }
    eprintln!("skipping {test}: {reason}");
    false
}

/// `docker` output lines (names of containers, networks, volumes).
fn docker_lines(args: &[&str]) -> Vec<String> {
    let out = Command::new("docker").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

fn containers_of(prefix: &str) -> Vec<String> {
    let filter = format!("label=kvlab.prefix={prefix}");
    docker_lines(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"])
}

fn networks_of(prefix: &str) -> Vec<String> {
    let filter = format!("label=kvlab.prefix={prefix}");
    docker_lines(&[
        "network",
        "ls",
        "--filter",
        &filter,
        "--format",
        "{{.Name}}",
    ])
}

fn container_running(name: &str) -> bool {
    docker_lines(&["inspect", "-f", "{{.State.Running}}", name]) == ["true"]
}

/// Removes a test's volumes (data, kept by a stop on purpose) at the end.
struct Volumes(String);

impl Drop for Volumes {
    fn drop(&mut self) {
        let filter = format!("label=kvlab.prefix={}", self.0);
        for v in docker_lines(&["volume", "ls", "-q", "--filter", &filter]) {
            let _ = Command::new("docker")
                .args(["volume", "rm", "-f", &v])
                .stdout(Stdio::null())
                .status();
        }
    }
}

/// The containers listen off loopback, so the nodes speak TLS: the cluster
/// makes its CA in `tmp`, and the handle's client trusts it.
fn docker_cluster(tmp: &tempfile::TempDir, prefix: &str, extra: &str) -> Cluster {
    let image = image();
    let mut args = vec![
        "--runtime",
        "docker",
        "--docker-image",
        &image,
        "--docker-prefix",
        prefix,
        "--failure-timeout",
        "2",
        "--sync-delay",
        "0.1",
        "--async-delay",
        "0.5",
    ];
    args.extend(extra.split_whitespace());
    Cluster::start_in(tmp, &args.join(" "))
}

fn node<'a>(status: &'a Value, id: &str) -> &'a Value {
    std::iter::once(&status["leader"])
        .chain(status["followers"].as_array().unwrap())
        .find(|n| n["node_id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {status}"))
}

#[test]
fn a_docker_cluster_passes_the_seed_demos() {
    if !docker_ready("a_docker_cluster_passes_the_seed_demos", false) {
        return;
    }
    let prefix = format!("kvlab-t{}-demos", std::process::id());
    let _volumes = Volumes(prefix.clone());
    {
        let tmp = scratch();
        let cluster = docker_cluster(&tmp, &prefix, DEMO_3_2_2);
        // Demo 1: every node is a container of the image, on its network.
        let mut names = containers_of(&prefix);
        names.sort();
        let expected: Vec<String> = ["follower-1", "follower-2", "follower-3", "leader"]
            .iter()
            .map(|n| format!("{prefix}-{n}"))
            .collect();
        assert_eq!(names, expected);
        assert_eq!(networks_of(&prefix), [format!("{prefix}-net")]);
        let status = cluster.status();
        assert!(
            status["leader"]["url"]
                .as_str()
                .unwrap()
                .starts_with("https://10.89."),
            "{status}"
        );
        // Plain HTTP to a node is refused.
        let plain = status["leader"]["url"]
            .as_str()
            .unwrap()
            .replacen("https", "http", 1);
        let refused = internal_http()
            .get(format!("{plain}/replication/peers"))
            .send()
            .unwrap();
        assert_eq!(refused.status(), 400);

        // Demo 2: write and read through the gateway.
        let (code, body) = cluster.write("name", "distributed-systems");
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["sync_acks"], 2, "{body}");
        let (code, body) = cluster.read("name");
        assert_eq!(
            (code, body["value"].as_str()),
            (200, Some("distributed-systems"))
        );

        // Demo 3: a crash is `docker kill`; writes go on with W=2 of 3.
        let (code, body) = cluster.post("/kill/follower-1?mode=crash", json!({}));
        assert_eq!(
            (code, body["status"].as_str()),
            (200, Some("crashed")),
            "{body}"
        );
        assert!(!container_running(&format!("{prefix}-follower-1")));
        cluster.wait_status("follower-1 dead", Duration::from_secs(15), |s| {
            node(s, "follower-1")["status"] == "dead"
        });
        let (code, body) = cluster.write("while-one-is-down", "v1");
        assert_eq!(code, 200, "{body}");
        // A graceful kill is a stop; with two down, W=2 cannot be met.
        let (code, body) = cluster.post("/kill/follower-2", json!({}));
        assert_eq!(
            (code, body["status"].as_str()),
            (200, Some("stopped")),
            "{body}"
        );
        assert!(!container_running(&format!("{prefix}-follower-2")));
        let (code, body) = cluster.write("refused", "x");
        assert_eq!(code, 503, "{body}");
        assert!(
            body.to_string().contains("Write quorum not available"),
            "{body}"
        );

        // Demo 4: respawned containers come back on their own volumes and
        // catch up.
        for id in ["follower-1", "follower-2"] {
            let (code, body) = cluster.post("/spawn", json!({"node_id": id}));
            assert_eq!(code, 200, "{body}");
            assert!(container_running(&format!("{prefix}-{id}")));
        }
        cluster.wait_status("all back", Duration::from_secs(20), |s| {
            s["quorum"]["alive_followers"] == 3
        });
        let (code, body) = cluster.write("after", "back");
        assert_eq!(code, 200, "{body}");
        let status = cluster.status();
        let leader_url = status["leader"]["url"].as_str().unwrap().to_string();
        for id in ["follower-1", "follower-2"] {
            let resp = cluster
                .http
                .post(format!("{leader_url}/replication/wait"))
                .json(&json!({"node_id": id, "timeout_ms": 20_000}))
                .send()
                .unwrap();
            assert_eq!(resp.status(), 200, "{id} caught up");
            let data = cluster.node_data(node(&status, id)["url"].as_str().unwrap());
            assert_eq!(data["name"]["value"], "distributed-systems", "{id}: {data}");
            assert_eq!(data["while-one-is-down"]["value"], "v1", "{id}: {data}");
            assert_eq!(data["after"]["value"], "back", "{id}: {data}");
        }

        // A partition is a network disconnect: the node still runs but is
        // silent, so it is declared dead; reconnected, it is back.
        let (code, body) = cluster.post("/admin/network/follower-3", json!({"connected": false}));
        assert_eq!(code, 200, "{body}");
        cluster.wait_status("follower-3 cut off", Duration::from_secs(15), |s| {
            node(s, "follower-3")["status"] == "dead"
        });
        assert!(container_running(&format!("{prefix}-follower-3")));
        let (code, body) = cluster.post("/admin/network/follower-3", json!({"connected": true}));
        assert_eq!(code, 200, "{body}");
        cluster.wait_status("follower-3 reconnected", Duration::from_secs(15), |s| {
            node(s, "follower-3")["status"] == "alive"
        });
        let (code, body) = cluster.post("/admin/network/nobody", json!({"connected": true}));
        assert_eq!(code, 404, "{body}");
    }
    // The stop removed every container and the network; the volumes stay.
    assert_eq!(containers_of(&prefix), Vec::<String>::new());
    assert_eq!(networks_of(&prefix), Vec::<String>::new());
}

#[test]
fn a_later_start_removes_what_a_killed_run_left() {
    if !docker_ready("a_later_start_removes_what_a_killed_run_left", false) {
        return;
    }
    let prefix = format!("kvlab-t{}-leftovers", std::process::id());
    let _volumes = Volumes(prefix.clone());
    let tmp = scratch();
    let mut first = docker_cluster(&tmp, &prefix, "--followers 1 -W 1 --fresh");
    let (code, body) = first.write("kept", "on-the-volume");
    assert_eq!(code, 200, "{body}");
    // SIGKILL: `kvlab up` cannot clean up; its containers live on.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert_eq!(containers_of(&prefix).len(), 2);
    {
        let tmp = scratch();
        let second = docker_cluster(&tmp, &prefix, "--followers 1 -W 1");
        let (_, events) = second.get("/events?since=0&limit=1000");
        assert!(
            events.to_string().contains("removed what an earlier run"),
            "{events}"
        );
        // The same volumes: the data written by the first run is there.
        let (code, body) = second.read("kept");
        assert_eq!(
            (code, body["value"].as_str()),
            (200, Some("on-the-volume")),
            "{body}"
        );
    }
    assert_eq!(containers_of(&prefix), Vec::<String>::new());
    assert_eq!(networks_of(&prefix), Vec::<String>::new());
}

#[test]
fn a_missing_image_is_a_clear_error() {
    if !docker_ready("a_missing_image_is_a_clear_error", false) {
        return;
    }
    let base = free_port_block();
    let prefix = format!("kvlab-t{}-noimage", std::process::id());
    // Its TLS files (the nodes would be off loopback) land in the scratch.
    let tmp = scratch();
    let out = kvlab_in(&tmp)
        .args([
            "up",
            "--runtime",
            "docker",
            "--docker-image",
            "kvlab-no-such-image",
        ])
        .args(["--docker-prefix", &prefix, "--quiet"])
        .args(common::up_ports(base))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kvlab-no-such-image is missing"), "{err}");
    assert!(err.contains("docker build"), "{err}");
}

/// `docker-compose -p <project>` in the repository, with the test's ports.
struct Compose {
    project: String,
    /// `compose.yaml` or `compose-ha.yaml`.
    file: &'static str,
    base: u16,
    /// Holds the admin token file compose.yaml mounts (`KVLAB_ADMIN_TOKEN_FILE`)
    /// and the folder its `certs` service makes the TLS files in (`KVLAB_TLS_DIR`).
    dir: tempfile::TempDir,
}

const COMPOSE_ADMIN_TOKEN: &str = "compose-test-admin-token-0123456789";

impl Compose {
    fn run(&self, args: &[&str]) -> std::process::Output {
        let file = format!("{}/{}", env!("CARGO_MANIFEST_DIR"), self.file);
        Command::new("docker-compose")
            .args(["-p", &self.project, "-f", &file])
            .args(args)
            .env("KVLAB_IMAGE", image())
            .env(
                "KVLAB_CLUSTER_SECRET",
                "compose-test-secret-0123456789abcdef",
            )
            .env(
                "KVLAB_ADMIN_TOKEN_FILE",
                self.dir.path().join("admin-token"),
            )
            .env("KVLAB_TLS_DIR", self.dir.path().join("tls"))
            .env("KVLAB_COORDINATOR_PORT", self.base.to_string())
            .env(
                "KVLAB_GATEWAY_PORT",
                (self.base + GATEWAY_OFFSET).to_string(),
            )
            // compose-ha.yaml's: the coordinators and the second gateway.
            .env("KVLAB_ETCD_IMAGE", ETCD_IMAGE)
            .env("KVLAB_C1_PORT", self.base.to_string())
            .env("KVLAB_C2_PORT", (self.base + 10).to_string())
            .env("KVLAB_C3_PORT", (self.base + 20).to_string())
            .env(
                "KVLAB_GATEWAY2_PORT",
                (self.base + GATEWAY_OFFSET - 1).to_string(),
            )
            .output()
            .unwrap()
    }

    fn containers(&self) -> Vec<String> {
        let filter = format!("label=com.docker.compose.project={}", self.project);
        docker_lines(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"])
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let _ = self.run(&["down", "-v", "--timeout", "2"]);
    }
}

#[test]
fn compose_runs_a_working_cluster_and_down_removes_it() {
    if !docker_ready("compose_runs_a_working_cluster_and_down_removes_it", true) {
        return;
    }
    let compose = Compose {
        project: format!("kvlabt{}", std::process::id()),
        file: "compose.yaml",
        base: free_port_block(),
        dir: scratch(),
    };
    std::fs::write(compose.dir.path().join("admin-token"), COMPOSE_ADMIN_TOKEN).unwrap();
    let up = compose.run(&["up", "-d"]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    // The cluster, three nodes, and the one-shot `certs` (exited).
    assert_eq!(compose.containers().len(), 5);
    // Every listener speaks TLS: clients trust the CA `certs` made (and
    // check the names it gave, localhost and 127.0.0.1, as curl would).
    let ca = compose.dir.path().join("tls").join("ca.pem");
    let gateway = format!("https://127.0.0.1:{}", compose.base + GATEWAY_OFFSET);
    let http = http().timeout(secs(10)).ca(&ca).build();
    // The nodes join once the coordinator is up; the gateway answers 503
    // until the cluster is ready.
    let written = wait("the compose cluster to take a write", secs(60))
        .every(millis(200))
        .try_until(|| {
            let resp = http
                .post(format!("{gateway}/write"))
                .json(&json!({"key": "name", "value": "composed"}))
                .send();
            match resp {
                Ok(r) if r.status() == 200 => Some(r.json::<Value>().unwrap()),
                _ => None,
            }
        })
        .unwrap_or_else(|| {
            let coordinator = format!("https://127.0.0.1:{}", compose.base);
            let get = |path: &str| {
                http.get(format!("{coordinator}{path}"))
                    .send()
                    .and_then(|r| r.text())
                    .unwrap_or_default()
            };
            let logs = compose.run(&["logs", "--no-color"]);
            panic!(
                "the compose cluster never took a write:\nstatus {}\nevents {}\n{}",
                get("/status"),
                get("/events?since=0&limit=200"),
                String::from_utf8_lossy(&logs.stdout)
            );
        });
    assert_eq!(written["sync_acks"], 2, "{written}");
    let read: Value = http
        .get(format!("{gateway}/read/name"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(read["value"], "composed", "{read}");

    // At the start the node named `leader` leads, whichever joined first.
    let coordinator = format!("https://127.0.0.1:{}", compose.base);
    // Plain HTTP is refused, on the gateway and the coordinator alike.
    for url in [&gateway, &coordinator] {
        let plain = url.replacen("https://", "http://", 1);
        let refused = common::http()
            .build()
            .get(format!("{plain}/status"))
            .send()
            .unwrap();
        assert_eq!(refused.status(), 400, "{plain}");
    }
    let status: Value = http
        .get(format!("{coordinator}/status"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(status["leader"]["node_id"], "leader", "{status}");
    // compose.yaml's own example: /kill needs the admin token, which the
    // file mounted from KVLAB_ADMIN_TOKEN_FILE holds.
    let kill = |token: Option<&str>| {
        let mut req = http.post(format!("{coordinator}/kill/follower-1"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().unwrap().status().as_u16()
    };
    assert_eq!(kill(None), 401);
    assert_eq!(kill(Some(COMPOSE_ADMIN_TOKEN)), 200);

    let down = compose.run(&["down", "-v", "--timeout", "2"]);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert_eq!(compose.containers(), Vec::<String>::new());
    let volumes = docker_lines(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("label=com.docker.compose.project={}", compose.project),
    ]);
    assert_eq!(volumes, Vec::<String>::new());
}

/// The etcd image compose-ha.yaml runs, built by the test from this
/// machine's etcd (docker/build-etcd-image.sh).
const ETCD_IMAGE: &str = "kvlab-etcd-test";

#[test]
fn compose_ha_keeps_writing_when_the_active_coordinator_is_killed() {
    let test = "compose_ha_keeps_writing_when_the_active_coordinator_is_killed";
    if !docker_ready(test, true) || !common::etcd::available(test) {
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/docker/build-etcd-image.sh");
    let built = Command::new(script).arg(ETCD_IMAGE).output().unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let compose = Compose {
        project: format!("kvlabha{}", std::process::id()),
        file: "compose-ha.yaml",
        base: free_port_block(),
        dir: scratch(),
    };
    std::fs::write(compose.dir.path().join("admin-token"), COMPOSE_ADMIN_TOKEN).unwrap();
    let up = compose.run(&["up", "-d"]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let ca = compose.dir.path().join("tls").join("ca.pem");
    let http = http().timeout(secs(5)).ca(&ca).build();
    let gateways = [
        format!("https://127.0.0.1:{}", compose.base + GATEWAY_OFFSET),
        format!("https://127.0.0.1:{}", compose.base + GATEWAY_OFFSET - 1),
    ];
    let coordinators: Vec<String> = (0..3)
        .map(|i| format!("https://127.0.0.1:{}", compose.base + 10 * i))
        .collect();
    let write = |value: &str| {
        gateways.iter().any(|g| {
            http.post(format!("{g}/write"))
                .json(&json!({"key": "ha", "value": value}))
                .send()
                .is_ok_and(|r| r.status() == 200)
        })
    };
    let active = || {
        coordinators.iter().find_map(|c| {
            let s: Value = http.get(format!("{c}/status")).send().ok()?.json().ok()?;
            (s["control_plane"]["this"] == "active").then_some(s)
        })
    };
    let logs = || String::from_utf8_lossy(&compose.run(&["logs", "--no-color"]).stdout).to_string();
    if wait("the compose-ha cluster to take a write", secs(90))
        .every(millis(200))
        .try_until(|| write("before"))
        .is_none()
    {
        panic!("compose-ha never took a write:\n{}", logs());
    }
    let before = active().expect("an active coordinator");
    let id = before["control_plane"]["active"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let killed = Command::new("docker")
        .args(["kill", &format!("{}_{id}_1", compose.project)])
        .output()
        .unwrap();
    assert!(
        killed.status.success(),
        "{}",
        String::from_utf8_lossy(&killed.stderr)
    );
    if wait("a write after the active coordinator was killed", secs(30))
        .every(millis(100))
        .try_until(|| write("after"))
        .is_none()
    {
        panic!("no write after killing {id}:\n{}", logs());
    }
    let after = active().expect("a new active coordinator");
    let (e0, e1) = (
        &before["control_plane"]["epoch"],
        &after["control_plane"]["epoch"],
    );
    assert!(e1.as_u64() > e0.as_u64(), "{e0} -> {e1}");
    assert_ne!(after["control_plane"]["active"]["id"], id.as_str());
    // The nodes were adopted, not started again.
    assert_eq!(
        after["leader"]["incarnation"], before["leader"]["incarnation"],
        "{after}"
    );
    let read: Value = http
        .get(format!("{}/read/ha", gateways[1]))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(read["value"], "after", "{read}");
    let down = compose.run(&["down", "-v", "--timeout", "2"]);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert_eq!(compose.containers(), Vec::<String>::new());
}

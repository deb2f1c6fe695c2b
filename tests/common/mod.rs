//! Test harness: real `kvlab up` clusters on loopback.
//!
//! Each cluster gets its own block of ports (checked free, and spread by
//! process id and a counter so parallel tests do not collide), all below
//! Linux's ephemeral range: a port in that range can be handed to some
//! outgoing connection as its source port (a readiness probe connecting to
//! a server that does not listen yet can even connect to itself), and the
//! server then cannot bind it. A cluster is waited on
//! through its HTTP endpoints and event log (never fixed sleeps), and is
//! stopped when the handle drops; its nodes die with it (parent-death signal).
//! Clusters are durable (the default) with a fresh data directory each,
//! deleted with the handle, unless the test asks for `--in-memory`.

#![allow(dead_code)]

pub mod browser;
pub mod tty;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Ports used by one cluster: coordinator, registry, then nodes from base+2;
/// the gateway takes the block's last port, which no node reaches.
const BLOCK: u16 = 40;
pub const GATEWAY_OFFSET: u16 = BLOCK - 1;
static NEXT_BLOCK: AtomicU16 = AtomicU16::new(0);

/// Where test port blocks start: above the well-known and most registered
/// service ports.
const FIRST_PORT: u16 = 10_000;

/// The first port of the kernel's ephemeral range (Linux's default 32768
/// when it cannot be read).
pub fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A block of ports nobody is listening on, below the ephemeral range.
pub fn free_port_block() -> u16 {
    let blocks = (ephemeral_start().saturating_sub(FIRST_PORT) / BLOCK).max(1);
    let spread = (std::process::id() % 200) as u16;
    loop {
        let n = NEXT_BLOCK.fetch_add(1, Ordering::SeqCst);
        let base = FIRST_PORT + ((spread * 7 + n) % blocks) * BLOCK;
        if (base..base + BLOCK).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
}

/// A private temporary directory for the kvlab processes a test starts
/// itself: with [`kvlab_in`], their default directories
/// (`$TMPDIR/kvlab-<port>`, `kvlab-assess-<port>`) land inside it, and it is
/// deleted when the test drops it.
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("kvlab-scratch-")
        .tempdir()
        .unwrap()
}

/// `kvlab` with its temporary directory inside `scratch`.
pub fn kvlab_in(scratch: &tempfile::TempDir) -> Command {
    let mut cmd = kvlab();
    cmd.env("TMPDIR", scratch.path());
    cmd
}

pub struct Cluster {
    pub child: Child,
    pub coordinator: String,
    pub registry: String,
    pub gateway: String,
    pub base: u16,
    /// Carries the cluster secret (see [`internal_http`]).
    pub http: reqwest::blocking::Client,
    /// The nodes' data (`<dir>/<node-id>`); `None` for `--in-memory`.
    pub data_dir: Option<tempfile::TempDir>,
    /// The nodes' log files, deleted with the handle.
    pub log_dir: tempfile::TempDir,
}

/// `kvlab` with this test process's cluster secret in its environment, so
/// that the clusters and components a test starts, and the test's own
/// [`Cluster::http`], share one (see `kvlab::auth`). A test that wants a
/// process to find its secret elsewhere removes the variable.
pub fn kvlab() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvlab"));
    cmd.env(kvlab::auth::ENV_SECRET, cluster_secret());
    cmd
}

/// The cluster secret of every kvlab process this test process starts.
pub fn cluster_secret() -> &'static str {
    static SECRET: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SECRET.get_or_init(|| kvlab::auth::Secret::random().unwrap().expose().to_string())
}

/// A client that carries the cluster secret, as kvlab's own processes do.
pub fn internal_http() -> reqwest::blocking::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        kvlab::auth::HEADER_SECRET,
        reqwest::header::HeaderValue::from_static(cluster_secret()),
    );
    reqwest::blocking::Client::builder()
        .no_proxy()
        .default_headers(headers)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A client with nothing: what anyone on the machine could send.
pub fn bare_http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

impl Cluster {
    /// Starts `kvlab up` with extra flags and waits until it can write.
    pub fn start(extra: &[&str]) -> Cluster {
        let data_dir = (!extra.contains(&"--in-memory")).then(|| {
            tempfile::Builder::new()
                .prefix("kvlab-data-")
                .tempdir()
                .unwrap()
        });
        let dir = data_dir.as_ref().map(|d| d.path().to_path_buf());
        let mut cluster = Cluster::launch(dir.as_deref(), extra);
        cluster.data_dir = data_dir;
        cluster
    }

    /// Starts `kvlab up` on a data directory the caller owns (to restart a
    /// cluster on the same data).
    pub fn start_on(data_dir: &std::path::Path, extra: &[&str]) -> Cluster {
        Cluster::launch(Some(data_dir), extra)
    }

    /// Starts `kvlab up` as [`Cluster::start`] does, letting the caller
    /// adjust the command first (its environment, its limits).
    pub fn start_with(extra: &[&str], prepare: impl FnOnce(&mut Command)) -> Cluster {
        Cluster::start_at_with(free_port_block(), extra, prepare)
    }

    /// Starts `kvlab up` on the port block `base` (from [`free_port_block`]),
    /// for tests that start something on the block's ports first.
    pub fn start_at(base: u16, extra: &[&str]) -> Cluster {
        Cluster::start_at_with(base, extra, |_| {})
    }

    fn start_at_with(base: u16, extra: &[&str], prepare: impl FnOnce(&mut Command)) -> Cluster {
        let data_dir = tempfile::Builder::new()
            .prefix("kvlab-data-")
            .tempdir()
            .unwrap();
        let mut cluster = Cluster::launch_at(base, Some(data_dir.path()), extra, prepare);
        cluster.data_dir = Some(data_dir);
        cluster
    }

    fn launch(data_dir: Option<&std::path::Path>, extra: &[&str]) -> Cluster {
        Cluster::launch_at(free_port_block(), data_dir, extra, |_| {})
    }

    fn launch_at(
        base: u16,
        data_dir: Option<&std::path::Path>,
        extra: &[&str],
        prepare: impl FnOnce(&mut Command),
    ) -> Cluster {
        let log_dir = tempfile::Builder::new()
            .prefix("kvlab-test-logs-")
            .tempdir()
            .unwrap();
        let mut cmd = kvlab();
        cmd.arg("up");
        if let Some(dir) = data_dir {
            cmd.arg("--data-dir").arg(dir);
        }
        cmd.args(["--coordinator-port", &base.to_string()])
            .args(["--registry-port", &(base + 1).to_string()])
            .args(["--node-base-port", &(base + 2).to_string()])
            .args(["--gateway-port", &(base + GATEWAY_OFFSET).to_string()])
            .arg("--log-dir")
            .arg(log_dir.path())
            .arg("--quiet")
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        prepare(&mut cmd);
        let child = cmd.spawn().expect("start kvlab up");
        let cluster = Cluster {
            child,
            coordinator: format!("http://127.0.0.1:{base}"),
            registry: format!("http://127.0.0.1:{}", base + 1),
            gateway: format!("http://127.0.0.1:{}", base + GATEWAY_OFFSET),
            base,
            // With the secret: tests drive the nodes' hooks directly.
            http: internal_http(),
            data_dir: None,
            log_dir,
        };
        cluster.wait_for_event("cluster_ready", None, Duration::from_secs(30));
        cluster
    }

    pub fn node_url(&self, index: u16) -> String {
        format!("http://127.0.0.1:{}", self.base + 2 + index)
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.coordinator))
            .send()
            .unwrap();
        (resp.status().as_u16(), resp.json().unwrap_or(Value::Null))
    }

    pub fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.coordinator))
            .json(&body)
            .send()
            .unwrap();
        (resp.status().as_u16(), resp.json().unwrap_or(Value::Null))
    }

    pub fn write(&self, key: &str, value: &str) -> (u16, Value) {
        self.post("/write", json!({"key": key, "value": value}))
    }

    pub fn read(&self, key: &str) -> (u16, Value) {
        let mut url = reqwest::Url::parse(&self.coordinator).unwrap();
        url.path_segments_mut().unwrap().push("read").push(key);
        let resp = self.http.get(url).send().unwrap();
        (resp.status().as_u16(), resp.json().unwrap_or(Value::Null))
    }

    pub fn status(&self) -> Value {
        self.get("/status").1
    }

    pub fn follower(&self, id: &str) -> Value {
        self.status()["followers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["node_id"] == id)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// Waits until the coordinator's event log has an event of this kind
    /// (about this node, if given). Returns it.
    pub fn wait_for_event(&self, kind: &str, node: Option<&str>, timeout: Duration) -> Value {
        self.wait_for_event_after(0, kind, node, timeout)
    }

    pub fn last_event_id(&self) -> u64 {
        let (_, events) = self.get("/events?since=0&limit=100000");
        events
            .as_array()
            .and_then(|a| a.last())
            .map_or(0, |e| e["id"].as_u64().unwrap())
    }

    pub fn wait_for_event_after(
        &self,
        since: u64,
        kind: &str,
        node: Option<&str>,
        timeout: Duration,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        let mut seen = vec![];
        loop {
            if let Ok(resp) = self
                .http
                .get(format!(
                    "{}/events?since={since}&limit=100000",
                    self.coordinator
                ))
                .send()
            {
                if let Ok(Value::Array(events)) = resp.json::<Value>() {
                    let found = events
                        .iter()
                        .find(|e| e["kind"] == kind && node.is_none_or(|n| e["node_id"] == n));
                    if let Some(e) = found {
                        return e.clone();
                    }
                    seen = events;
                }
            }
            if Instant::now() >= deadline {
                // Say what did happen: the events are the cluster's story.
                let story: Vec<String> = seen
                    .iter()
                    .map(|e| e["message"].as_str().unwrap_or_default().to_string())
                    .collect();
                panic!(
                    "no '{kind}' event for {node:?} within {timeout:?}; events:\n{}",
                    story.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls until `check` holds on the status.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status();
            if check(&s) {
                return s;
            }
            if Instant::now() > deadline {
                let (_, events) = self.get("/events?since=0&limit=100000");
                panic!("timed out waiting for {what}: {s}\nevents: {events:#}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A node's whole data, read directly from it.
    pub fn node_data(&self, url: &str) -> Value {
        self.http
            .get(format!("{url}/data"))
            .send()
            .unwrap()
            .json::<Value>()
            .unwrap()["data"]
            .clone()
    }

    /// `GET` any URL (a node's, say) as JSON.
    pub fn get_json(&self, url: &str) -> Value {
        self.http.get(url).send().unwrap().json().unwrap()
    }

    /// Asks the leader to wait until `node_id` holds its whole log.
    /// Waits (up to 20 s) until the current leader knows `node_id` holds its
    /// whole log. Asks whoever leads now: after an election (or when nodes
    /// joined in any order) that need not be the node called `leader`.
    pub fn wait_caught_up(&self, node_id: &str) -> (u16, Value) {
        let status = self.status();
        let leader = status["leader"]["url"]
            .as_str()
            .map_or_else(|| self.node_url(0), str::to_string);
        let resp = self
            .http
            .post(format!("{leader}/replication/wait"))
            .json(&kvlab::api::WaitRequest {
                node_id: node_id.into(),
                seq: None,
                timeout_ms: Some(20_000),
            })
            .send()
            .unwrap();
        (resp.status().as_u16(), resp.json().unwrap_or(Value::Null))
    }

    /// Fault injection: the node at `index` stops heartbeating for a while.
    pub fn pause_heartbeats(&self, index: u16, seconds: f64) {
        let resp = self
            .http
            .post(format!("{}/admin/pause-heartbeats", self.node_url(index)))
            .json(&serde_json::json!({ "seconds": seconds }))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
    }

    pub fn pids(&self) -> Vec<u32> {
        let s = self.status();
        std::iter::once(&s["leader"])
            .chain(s["followers"].as_array().unwrap().iter())
            .filter_map(|n| n["pid"].as_u64().map(|p| p as u32))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SIGTERM lets `up` stop its nodes; SIGKILL after a grace period
        // still takes them down through the parent-death signal. The grace
        // is long because containers (`--runtime docker`) are not children:
        // only `up` removes them, and `docker stop` of several at once on a
        // loaded machine can take more than 5 s. A quick stop returns early.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn process_alive(pid: u32) -> bool {
    // A zombie still "exists"; look at /proc state instead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.split_whitespace().nth(2).is_none_or(|s| s != "Z"),
        Err(_) => false,
    }
}

/// A process a test started by hand, stopped when the guard drops: SIGTERM
/// (so it cleans up as a user's Ctrl-C would), then SIGKILL after 5 s.
pub struct StopOnDrop(pub Child);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

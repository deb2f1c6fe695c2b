//! Test harness: real `kvlab up` clusters on loopback.
//!
//! Each cluster gets its own block of ports (checked free, and spread by
//! process id and a counter so parallel tests do not collide), all below
//! Linux's ephemeral range: a port in that range can be handed to some
//! outgoing connection as its source port (a readiness probe connecting to
//! a server that does not listen yet can even connect to itself), and the
//! server then cannot bind it. A cluster is waited on
//! through its HTTP endpoints and event log (never fixed sleeps), and is
//! stopped when the handle drops (SIGTERM, then SIGKILL of its process
//! group, which its nodes share: nothing outlives the test).
//! Clusters are durable (the default) with a fresh data directory each,
//! deleted with the handle, unless the test asks for `--in-memory`.
//!
//! What every suite shares, instead of writing its own:
//! - waiting: [`eventually`], [`wait`] (`.every(..)`, `.events(&cluster)`,
//!   `.until(..)` / `.try_until(..)`), [`always`], [`Cluster::eventually`];
//!   a timeout names what was awaited and what was last seen;
//! - HTTP: [`http`] (`.secret()`, `.timeout(..)`, `.from(ip)`, `.ca(..)`,
//!   `.build()` or `.build_async()`);
//! - clusters: [`Cluster::start`] with one flag string, the flag sets
//!   [`FAST_3_2_2`] and the others, [`Cluster::start_plus`] /
//!   [`Cluster::start_args`] for an argument that holds spaces,
//!   [`Cluster::start_tls`] for one off loopback that speaks TLS;
//! - randomised tests: [`test_seed`] (`KVLAB_TEST_SEED` replays a run) and
//!   [`Lcg`].

#![allow(dead_code)]

pub mod browser;
pub mod etcd;
pub mod tty;
pub mod wait;

#[allow(unused_imports)]
pub use wait::{always, eventually, millis, secs, wait, Seen};

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use serde_json::{json, Value};

/// Ports used by one cluster: coordinator, registry, then nodes from base+2;
/// the gateway takes the block's last port, which no node reaches.
const BLOCK: u16 = 40;
pub const GATEWAY_OFFSET: u16 = BLOCK - 1;

/// `kvlab up`'s port flags for the block at `base`: the coordinator on
/// `base`, the registry on `base + 1`, the nodes from `base + 2`, the
/// gateway on the block's last port.
pub fn up_ports(base: u16) -> [String; 8] {
    [
        "--coordinator-port".into(),
        base.to_string(),
        "--registry-port".into(),
        (base + 1).to_string(),
        "--node-base-port".into(),
        (base + 2).to_string(),
        "--gateway-port".into(),
        (base + GATEWAY_OFFSET).to_string(),
    ]
}
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

/// The one way the suites make an HTTP client: `http().build()` is what
/// anyone on the machine could send; `.secret()` adds the cluster secret
/// (as kvlab's own processes send it), `.timeout(..)` replaces the 30 s
/// default, `.from(ip)` picks the source address (any 127.x.y.z).
/// Never through a proxy.
pub fn http() -> HttpBuilder {
    HttpBuilder {
        secret: false,
        timeout: Duration::from_secs(30),
        local: None,
        ca: None,
        any_name: false,
    }
}

#[must_use]
pub struct HttpBuilder {
    secret: bool,
    timeout: Duration,
    local: Option<std::net::IpAddr>,
    ca: Option<reqwest::Certificate>,
    any_name: bool,
}

impl HttpBuilder {
    /// Sends the cluster secret with every request.
    pub fn secret(mut self) -> Self {
        self.secret = true;
        self
    }

    /// Gives up on a request after this long (30 s by default).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends from this local address (to be several clients to a limiter).
    pub fn from(mut self, ip: std::net::IpAddr) -> Self {
        self.local = Some(ip);
        self
    }

    /// Trusts this CA certificate (PEM) for https, as curl's `--cacert`
    /// (names checked as curl checks them).
    pub fn ca(mut self, pem_file: &std::path::Path) -> Self {
        let pem = std::fs::read(pem_file).unwrap();
        self.ca = Some(reqwest::Certificate::from_pem(&pem).unwrap());
        self
    }

    /// Trusts this CA as kvlab's own clients do: any certificate it signed,
    /// whatever names it holds (containers get their addresses after the
    /// certificate is made).
    pub fn cluster_ca(mut self, pem_file: &std::path::Path) -> Self {
        self.any_name = true;
        self.ca(pem_file)
    }

    fn headers(&self) -> reqwest::header::HeaderMap {
        let mut headers = reqwest::header::HeaderMap::new();
        if self.secret {
            headers.insert(
                kvlab::auth::HEADER_SECRET,
                reqwest::header::HeaderValue::from_static(cluster_secret()),
            );
        }
        headers
    }

    pub fn build(self) -> reqwest::blocking::Client {
        let mut builder = reqwest::blocking::Client::builder();
        if let Some(ca) = self.ca.clone() {
            builder = builder.add_root_certificate(ca);
        }
        builder
            .danger_accept_invalid_hostnames(self.any_name)
            .no_proxy()
            .default_headers(self.headers())
            .timeout(self.timeout)
            .local_address(self.local)
            .build()
            .unwrap()
    }

    /// The same, for async tests.
    pub fn build_async(self) -> reqwest::Client {
        let mut builder = reqwest::Client::builder();
        if let Some(ca) = self.ca.clone() {
            builder = builder.add_root_certificate(ca);
        }
        builder
            .danger_accept_invalid_hostnames(self.any_name)
            .no_proxy()
            .default_headers(self.headers())
            .timeout(self.timeout)
            .local_address(self.local)
            .build()
            .unwrap()
    }
}

/// A client that carries the cluster secret, as kvlab's own processes do.
pub fn internal_http() -> reqwest::blocking::Client {
    http().secret().build()
}

/// A client with nothing: what anyone on the machine could send.
pub fn bare_http() -> reqwest::blocking::Client {
    http().build()
}

// The cluster shapes the suites start most, as flags for [`Cluster::start`]
// (add more with `format!("{FAST_3_2_2} --failure-timeout 1")`). "Fast" is
// `--no-delay`: no simulated replication delay. `N_W_R`: N followers, write
// quorum W, read quorum R.
pub const FAST_1_1_1: &str = "--no-delay --followers 1 -W 1 -R 1";
pub const FAST_2_1_1: &str = "--no-delay --followers 2 -W 1 -R 1";
pub const FAST_2_2_2: &str = "--no-delay --followers 2 -W 2 -R 2";
pub const FAST_3_2_2: &str = "--no-delay --followers 3 -W 2 -R 2";
/// The README demos' cluster, with its default replication delays.
pub const DEMO_3_2_2: &str = "--followers 3 -W 2 -R 2";
/// One in-memory cluster of the default shape, without delays.
pub const FAST_IN_MEMORY: &str = "--in-memory --no-delay";

/// The seed for a randomised test: `KVLAB_TEST_SEED` when set (to replay a
/// failure), else `fallback` (varied per run by the caller). Printed either
/// way, so a failing run says how to replay it.
pub fn test_seed(what: &str, fallback: u64) -> u64 {
    let seed = match std::env::var("KVLAB_TEST_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("KVLAB_TEST_SEED={s:?} is not a number")),
        Err(_) => fallback,
    };
    eprintln!("{what} seeded with {seed} (replay with KVLAB_TEST_SEED={seed})");
    seed
}

/// A small deterministic generator for "random" moments, reproducible from
/// the seed [`test_seed`] printed.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Flags as `kvlab up` gets them: the string split on whitespace.
fn split(flags: &str) -> Vec<&str> {
    flags.split_whitespace().collect()
}

impl Cluster {
    /// Starts `kvlab up` with extra flags, one string split on whitespace
    /// (`Cluster::start(FAST_3_2_2)`), and waits until it can write.
    pub fn start(flags: &str) -> Cluster {
        Cluster::start_args(&split(flags))
    }

    /// As [`Cluster::start`], the flags one by one (for an argument that
    /// holds spaces, such as a path or a command line).
    pub fn start_args(extra: &[&str]) -> Cluster {
        Cluster::start_plus("", extra)
    }

    /// As [`Cluster::start`], with more arguments taken as they are
    /// (`Cluster::start_plus(FAST_2_1_1, &["--node-cmd", &cmd])`).
    pub fn start_plus(flags: &str, more: &[&str]) -> Cluster {
        let mut extra = split(flags);
        extra.extend_from_slice(more);
        let extra = &extra[..];
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
    pub fn start_on(data_dir: &std::path::Path, flags: &str) -> Cluster {
        Cluster::launch(Some(data_dir), &split(flags))
    }

    /// Starts `kvlab up` as [`Cluster::start`] does, letting the caller
    /// adjust the command first (its environment, its limits).
    pub fn start_with(flags: &str, prepare: impl FnOnce(&mut Command)) -> Cluster {
        Cluster::start_at_with(free_port_block(), &split(flags), prepare)
    }

    /// Starts `kvlab up` on the port block `base` (from [`free_port_block`]),
    /// for tests that start something on the block's ports first.
    pub fn start_at(base: u16, flags: &str) -> Cluster {
        Cluster::start_at_with(base, &split(flags), |_| {})
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

    /// Starts `kvlab up --host 0.0.0.0` (and `flags`), which speaks TLS on
    /// every listener: its temporary directory is `scratch`, where `up`
    /// makes the cluster CA ([`Cluster::tls_dir`]). The handle's URLs are
    /// https on 127.0.0.1 and its client trusts that CA (and carries the
    /// secret).
    pub fn start_tls(scratch: &tempfile::TempDir, flags: &str) -> Cluster {
        let base = free_port_block();
        let mut extra = split(flags);
        extra.extend(["--host", "0.0.0.0"]);
        let data_dir = (!extra.contains(&"--in-memory")).then(|| {
            tempfile::Builder::new()
                .prefix("kvlab-data-")
                .tempdir()
                .unwrap()
        });
        let dir = scratch.path().to_path_buf();
        let mut cluster = Cluster::launch_tls(
            base,
            data_dir.as_ref().map(|d| d.path()),
            &extra,
            Some(&dir),
            |cmd| {
                cmd.env("TMPDIR", &dir);
            },
        );
        cluster.data_dir = data_dir;
        cluster
    }

    /// As [`Cluster::start_with`], with `kvlab up`'s temporary directory in
    /// `scratch`: where it makes its cluster CA when some listener is off
    /// loopback (nodes on `--hosts netns`, say). The handle's client then
    /// trusts that CA; its own URLs stay those of loopback.
    pub fn start_in(scratch: &tempfile::TempDir, flags: &str) -> Cluster {
        let extra = split(flags);
        let data_dir = (!extra.contains(&"--in-memory")).then(|| {
            tempfile::Builder::new()
                .prefix("kvlab-data-")
                .tempdir()
                .unwrap()
        });
        let tmp = scratch.path().to_path_buf();
        let data = data_dir.as_ref().map(|d| d.path());
        let mut cluster = Cluster::launch_at(free_port_block(), data, &extra, |cmd| {
            cmd.env("TMPDIR", &tmp);
        });
        cluster.data_dir = data_dir;
        let ca = cluster.tls_dir(scratch).join("ca.pem");
        if ca.exists() {
            cluster.http = http().secret().cluster_ca(&ca).build();
        }
        cluster
    }

    /// Where `kvlab up` made the TLS files of a cluster started with
    /// [`Cluster::start_tls`] in `scratch`.
    pub fn tls_dir(&self, scratch: &tempfile::TempDir) -> std::path::PathBuf {
        scratch
            .path()
            .join(format!("kvlab-{}", self.base))
            .join("tls")
    }

    fn launch_at(
        base: u16,
        data_dir: Option<&std::path::Path>,
        extra: &[&str],
        prepare: impl FnOnce(&mut Command),
    ) -> Cluster {
        Cluster::launch_tls(base, data_dir, extra, None, prepare)
    }

    /// `tls`: the temporary directory of a cluster that makes its CA there.
    fn launch_at_logs(
        base: u16,
        data_dir: Option<&std::path::Path>,
        extra: &[&str],
        log_dir: tempfile::TempDir,
    ) -> Cluster {
        Cluster::launch_full(base, data_dir, extra, None, |_| {}, log_dir)
    }

    fn launch_tls(
        base: u16,
        data_dir: Option<&std::path::Path>,
        extra: &[&str],
        tls: Option<&std::path::Path>,
        prepare: impl FnOnce(&mut Command),
    ) -> Cluster {
        let log_dir = tempfile::Builder::new()
            .prefix("kvlab-test-logs-")
            .tempdir()
            .unwrap();
        Cluster::launch_full(base, data_dir, extra, tls, prepare, log_dir)
    }

    fn launch_full(
        base: u16,
        data_dir: Option<&std::path::Path>,
        extra: &[&str],
        tls: Option<&std::path::Path>,
        prepare: impl FnOnce(&mut Command),
        log_dir: tempfile::TempDir,
    ) -> Cluster {
        let mut cmd = kvlab();
        cmd.arg("up");
        if let Some(dir) = data_dir {
            cmd.arg("--data-dir").arg(dir);
        }
        cmd.args(up_ports(base))
            .arg("--log-dir")
            .arg(log_dir.path())
            .arg("--quiet")
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        in_own_group(&mut cmd);
        prepare(&mut cmd);
        let mut child = cmd.spawn().expect("start kvlab up");
        // With the secret: tests drive the nodes' hooks directly.
        let (scheme, http) = match tls {
            None => ("http", internal_http()),
            Some(tmp) => {
                let ca = tmp.join(format!("kvlab-{base}")).join("tls").join("ca.pem");
                wait(format!("kvlab up to make {}", ca.display()), secs(30)).until(|| {
                    assert!(child.try_wait().unwrap().is_none(), "kvlab up exited");
                    ca.exists()
                });
                ("https", http().secret().ca(&ca).build())
            }
        };
        let cluster = Cluster {
            child,
            coordinator: format!("{scheme}://127.0.0.1:{base}"),
            registry: format!("{scheme}://127.0.0.1:{}", base + 1),
            gateway: format!("{scheme}://127.0.0.1:{}", base + GATEWAY_OFFSET),
            base,
            http,
            data_dir: None,
            log_dir,
        };
        cluster.wait_for_event("cluster_ready", None, Duration::from_secs(30));
        cluster
    }

    pub fn node_url(&self, index: u16) -> String {
        let scheme = if self.coordinator.starts_with("https") {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.base + 2 + index)
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
        let url = format!("{}/read/{}", self.coordinator, kvlab::api::key_segment(key));
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
        let mut seen = vec![];
        wait(format_args!("a '{kind}' event for {node:?}"), timeout)
            .events(self)
            .until(|| {
                if let Some(Value::Array(events)) = self.events_since(since) {
                    let found = events
                        .iter()
                        .find(|e| e["kind"] == kind && node.is_none_or(|n| e["node_id"] == n));
                    if let Some(e) = found {
                        return Ok(e.clone());
                    }
                    seen = events;
                }
                Err(format!("{} events since {since}", seen.len()))
            })
    }

    /// The event log from `since` on, `None` when the coordinator does not
    /// answer.
    fn events_since(&self, since: u64) -> Option<Value> {
        self.http
            .get(format!(
                "{}/events?since={since}&limit=100000",
                self.coordinator
            ))
            .send()
            .ok()?
            .json()
            .ok()
    }

    /// The cluster's story for a failure message: its last events, one per
    /// line (empty when the coordinator does not answer).
    pub fn story(&self) -> String {
        let Some(Value::Array(events)) = self.events_since(0) else {
            return "\n(no events: the coordinator did not answer)".into();
        };
        let recent = &events[events.len().saturating_sub(100)..];
        let lines: Vec<String> = recent
            .iter()
            .map(|e| {
                format!(
                    "  #{} {} {}: {}",
                    e["id"],
                    e["kind"].as_str().unwrap_or_default(),
                    e["node_id"].as_str().unwrap_or("-"),
                    e["message"].as_str().unwrap_or_default()
                )
            })
            .collect();
        format!("\nthe cluster's recent events:\n{}", lines.join("\n"))
    }

    /// Polls `probe` until it succeeds (see [`eventually`]); on timeout the
    /// failure also shows this cluster's recent events.
    pub fn eventually<P: wait::Probe>(
        &self,
        what: impl std::fmt::Display,
        timeout: Duration,
        probe: impl FnMut() -> P,
    ) -> P::Out {
        wait(what, timeout).events(self).until(probe)
    }

    /// Polls until `check` holds on the status.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        self.eventually(what, timeout, || {
            let s = self.status();
            if check(&s) {
                Ok(s)
            } else {
                Err(s)
            }
        })
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

    /// Cuts the power of the whole cluster: SIGKILLs every node and `kvlab
    /// up` at once, and waits until all are gone. With the hidden
    /// `--simulate-power-loss`, the nodes lose what they had not fsynced, as
    /// after a real power cut (see `storage::power`).
    pub fn power_cut(self) {
        let pids = self.pids();
        // The whole group: `up` and its nodes at once. Not reaped here:
        // `Drop` does (so its pid cannot be reused before its SIGTERM).
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        wait("every node to be gone", secs(10))
            .every(millis(10))
            .until(|| match pids.iter().find(|&&p| process_alive(p)) {
                Some(p) => Err(format!("pid {p} still runs")),
                None => Ok(()),
            });
    }

    /// SIGKILL of `kvlab up` and every node (its process group): a machine
    /// that crashed. Waits until `up` is gone.
    pub fn kill_group(&mut self) {
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }

    /// `kvlab up` again on the same ports and data directory (the handle's
    /// data and log directories move to the new one).
    pub fn restart_same(self, flags: &str) -> Cluster {
        self.restart_same_with(flags, |_| {})
    }

    /// [`Cluster::restart_same`], letting the caller adjust the command
    /// first (as [`Cluster::start_with`]).
    pub fn restart_same_with(mut self, flags: &str, prepare: impl FnOnce(&mut Command)) -> Cluster {
        let data = self.data_dir.take();
        let dir = data.as_ref().map(|d| d.path().to_path_buf());
        let log_dir = std::mem::replace(
            &mut self.log_dir,
            tempfile::Builder::new()
                .prefix("kvlab-test-logs-")
                .tempdir()
                .unwrap(),
        );
        let base = self.base;
        drop(self);
        let mut next =
            Cluster::launch_full(base, dir.as_deref(), &split(flags), None, prepare, log_dir);
        next.data_dir = data;
        next
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
        let child = &mut self.child;
        let stopped = wait("kvlab up to stop", secs(20))
            .every(millis(20))
            .try_until(|| matches!(child.try_wait(), Ok(Some(_))));
        if stopped.is_some() {
            return;
        }
        // SIGKILL of the whole group: `up` and its nodes, which share it.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Starts `kvlab up` in a process group of its own, which its nodes share,
/// so one SIGKILL of the group leaves nothing. (No parent-death signal: the
/// kernel sends it when the *thread* that spawned the child ends, and tests
/// start clusters from helper threads.)
pub fn in_own_group(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
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
        let child = &mut self.0;
        let stopped = wait("the process to stop", secs(5))
            .every(millis(20))
            .try_until(|| matches!(child.try_wait(), Ok(Some(_))));
        if stopped.is_some() {
            return;
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

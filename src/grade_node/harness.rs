//! The stage of the conformance tests: one student's node, alone, with
//! the grader in every other part.
//!
//! The grader starts the node exactly as `kvlab up --node-cmd` would (the
//! same launcher, the same `KVLAB_*` environment, the same cluster secret),
//! plays a registry that records every heartbeat, and plays the leader and
//! the coordinator by sending the node the requests they would send. So a
//! test can send one precise exchange and say exactly what came back.
//!
//! Invariant: a node started here is SIGKILLed when the [`Stage`] is
//! dropped (and dies with the grader through the parent-death signal).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::api::{Role, HEADER_TERM};
use crate::coordinator::launcher::{self, LaunchSettings, NodeCommands, NodeSpec, NodeStorage};
use crate::storage::FsyncPolicy;

/// The node under test is always this slot.
pub const NODE_ID: &str = "follower-1";
/// How long a node may take to answer `/health` after its start.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request to the node may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Heartbeats every half second: the heartbeat test waits a few periods.
pub const HEARTBEAT_INTERVAL: f64 = 0.5;

/// A test's failure: what a student needs to fix it.
#[derive(Debug)]
pub struct Failure(pub String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure(e.to_string())
    }
}

pub type Outcome = Result<String, Failure>;

/// One heartbeat (or deregistration) the fake registry received.
#[derive(Debug, Clone)]
pub struct Heard {
    pub path: &'static str,
    pub body: Value,
    pub had_secret: bool,
    pub at: Instant,
}

/// The registry the node heartbeats to: it answers like kvlab's and keeps
/// what it heard.
#[derive(Clone, Default)]
pub struct FakeRegistry {
    heard: Arc<Mutex<Vec<Heard>>>,
}

impl FakeRegistry {
    async fn serve(&self, port: u16) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let app = Router::new()
            .route("/heartbeat", post(heartbeat))
            .route("/deregister", post(deregister))
            .with_state(self.clone());
        Ok(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }))
    }

    pub fn heard(&self) -> Vec<Heard> {
        self.heard.lock().unwrap().clone()
    }

    fn record(&self, path: &'static str, headers: &HeaderMap, body: Value) -> bool {
        let had_secret = crate::auth::carries_secret(headers);
        self.heard.lock().unwrap().push(Heard {
            path,
            body,
            had_secret,
            at: Instant::now(),
        });
        had_secret
    }
}

async fn heartbeat(
    State(reg): State<FakeRegistry>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if !reg.record("/heartbeat", &headers, body) {
        return unauthorized();
    }
    (StatusCode::OK, Json(json!({"status": "ok", "nodes": []})))
}

async fn deregister(
    State(reg): State<FakeRegistry>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if !reg.record("/deregister", &headers, body) {
        return unauthorized();
    }
    (StatusCode::OK, Json(json!({"status": "deregistered"})))
}

fn unauthorized() -> (StatusCode, Json<Value>) {
    let detail = json!({"error": "unauthorized", "reason": "no cluster secret"});
    (StatusCode::UNAUTHORIZED, Json(json!({ "detail": detail })))
}

/// An answer, kept whole for the failure messages.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// `200 {"acked_seq":3,...}`, shortened for a message.
    pub fn show(&self) -> String {
        let mut text = self.body.to_string();
        if text.len() > 400 {
            let cut = (0..=400)
                .rev()
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(0);
            text.truncate(cut);
            text.push_str("...");
        }
        format!("{} {text}", self.status)
    }

    /// A u64 field of the body, or a failure naming it.
    pub fn u64_field(&self, request: &str, name: &str) -> Result<u64, Failure> {
        self.body[name].as_u64().ok_or_else(|| {
            Failure(format!(
                "sent {request}\ngot {}\nthe answer has no number `{name}`: the protocol's \
                 answer to this request carries it",
                self.show()
            ))
        })
    }
}

/// The running node and everything around it.
pub struct Stage {
    pub settings: LaunchSettings,
    pub port: u16,
    pub registry: FakeRegistry,
    registry_task: tokio::task::JoinHandle<()>,
    /// Sends the cluster secret (like every kvlab process).
    pub http: reqwest::Client,
    /// Sends no secret: what an outsider would send.
    pub outsider: reqwest::Client,
    pub incarnation: u64,
    running: Option<(u32, watch::Receiver<Option<String>>)>,
    pub log_file: PathBuf,
}

impl Stage {
    /// A stage in `dir` (logs and data) on `ports`: the registry on
    /// `registry_port`, the node on `node_port`. `durable`: the node gets
    /// a data directory.
    pub async fn new(
        command: &str,
        dir: &Path,
        registry_port: u16,
        node_port: u16,
        durable: bool,
    ) -> anyhow::Result<Stage> {
        let registry = FakeRegistry::default();
        let registry_task = registry.serve(registry_port).await?;
        let storage = durable.then(|| NodeStorage {
            base_dir: dir.join("data"),
            fresh: true,
            fsync: FsyncPolicy::Always,
            fsync_interval_ms: 5,
            snapshot_every: 0,
            simulate_power_loss: false,
        });
        let settings = LaunchSettings {
            binary: PathBuf::from("kvlab"),
            log_dir: dir.join("logs"),
            host: "127.0.0.1".into(),
            tls: Default::default(),
            registry: Some(format!("http://127.0.0.1:{registry_port}")),
            sync_delay: 0.0,
            async_delay: 0.0,
            heartbeat_interval: HEARTBEAT_INTERVAL,
            log_retain: 100_000,
            storage,
            netns: None,
            orphan_timeout: crate::node::DEFAULT_ORPHAN_TIMEOUT,
            die_with_coordinator: true,
            internal_wire: Default::default(),
            commands: NodeCommands {
                follower: Some(command.to_string()),
                leader: None,
            },
        };
        let log_file = settings.log_dir.join(format!("{NODE_ID}.log"));
        Ok(Stage {
            settings,
            port: node_port,
            registry,
            registry_task,
            http: crate::http::client(),
            outsider: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .build()?,
            incarnation: 0,
            running: None,
            log_file,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Starts the node (a new incarnation) and waits for `GET /health`.
    pub async fn start(&mut self) -> Result<(), Failure> {
        self.incarnation += 1;
        launcher::wait_port_free("127.0.0.1", self.port)
            .await
            .map_err(|e| Failure(format!("cannot start your node: {e}")))?;
        let spec = NodeSpec {
            node_id: NODE_ID.into(),
            role: Role::Follower,
            port: self.port,
            incarnation: self.incarnation,
        };
        let launched = launcher::launch(&self.settings, &spec)
            .map_err(|e| Failure(format!("cannot start your node: {e}")))?;
        let mut exited = launched.exited.clone();
        self.running = Some((launched.pid, launched.exited));
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(how) = exited.borrow_and_update().clone() {
                return Err(Failure(format!(
                    "your node {how} before it answered GET /health; the end of its log \
                     ({}):\n{}",
                    self.log_file.display(),
                    self.log_tail()
                )));
            }
            let probe = self
                .http
                .get(self.url("/health"))
                .timeout(Duration::from_secs(1));
            if let Ok(r) = probe.send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(Failure(format!(
            "your node did not answer GET /health on port {} within {}s of its start; the end \
             of its log ({}):\n{}",
            self.port,
            START_TIMEOUT.as_secs(),
            self.log_file.display(),
            self.log_tail()
        )))
    }

    /// SIGKILL, as a power cut of the process: no goodbye, no flush.
    pub async fn crash(&mut self) {
        if let Some((pid, mut exited)) = self.running.take() {
            launcher::signal(pid, libc::SIGKILL);
            launcher::wait_exit(&mut exited, Duration::from_secs(5)).await;
        }
    }

    /// Waits up to `timeout` for the node's process to end by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<String> {
        let (_, exited) = self.running.as_mut()?;
        launcher::wait_exit(exited, timeout).await;
        let how = exited.borrow().clone();
        if how.is_some() {
            self.running = None;
        }
        how
    }

    pub fn log_tail(&self) -> String {
        launcher::log_tail(&self.log_file, 12)
    }

    /// Sends a request as the grader (with the secret), with the term
    /// header when `term` is given.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        term: Option<u64>,
        body: Option<&Value>,
    ) -> Result<Answer, Failure> {
        let mut req = self
            .http
            .request(method.clone(), self.url(path))
            .timeout(REQUEST_TIMEOUT);
        if let Some(t) = term {
            req = req.header(HEADER_TERM, t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            Failure(format!(
                "sent {method} {path}: no answer ({}); the end of your node's log:\n{}",
                crate::http::describe_reqwest_error(&e),
                self.log_tail()
            ))
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Answer { status, body })
    }
}

impl Stage {
    /// Stops the node and the registry, and waits until the registry's
    /// port is free again for the next test.
    pub async fn close(mut self) {
        self.crash().await;
        self.registry_task.abort();
        let _ = (&mut self.registry_task).await;
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        if let Some((pid, _)) = self.running.take() {
            launcher::signal(pid, libc::SIGKILL);
        }
        self.registry_task.abort();
    }
}

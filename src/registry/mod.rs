//! The registry: who is alive, by heartbeat.
//!
//! Nodes post a heartbeat every 2 s. A node silent for longer than the timeout
//! (5 s) is declared dead and the coordinator is told (`/node-died`). A
//! follower seen for the first time (per incarnation) is caught up: the
//! registry asks the coordinator's `/catchup`, retrying while it is
//! unreachable. With `--auto-spawn`, a dead or deregistered node is
//! replaced after `--spawn-delay` seconds (a dead leader too: by then a
//! follower leads and its slot is a follower slot), but only if it is *still* dead
//! then: a node whose heartbeats came back in time is left alone.
//!
//! Fencing: the registry remembers the newest incarnation of each node id. A
//! heartbeat from an older one is answered 409, and that process exits.
//!
//! The view is versioned: every change (registered, declared dead, revived,
//! deregistered) bumps `view_version`, under the same lock as the change, and
//! every notice to the coordinator carries the version it comes from. The
//! coordinator also pulls the whole view (`GET /nodes`) every second, so a
//! notice lost or delivered out of order is repaired by the next pull
//! (`coordinator::liveness`). A restarted registry starts empty, with a new
//! `registry_epoch`, and rebuilds its view from the heartbeats, which nodes
//! keep sending while it is away. Who *should* exist comes from the
//! coordinator's slot table: once a second the coordinator names the slots
//! it has dead that this table lacks (`POST /missing`: a node that died
//! while the registry was away), and they are recorded dead and, with
//! `--auto-spawn`, replaced after the spawn delay like any other death.
//!
//! The table is bounded: at most [`MAX_NODES`] records. A new id past the
//! bound takes the place of the longest-dead record, or is refused (503)
//! when every record is alive. The coordinator's every-second pull also
//! names the ids that are not its members, and they are forgotten
//! (`POST /forget`): a removed slot or a made-up name does not stay forever.
//!
//! A registry that was itself paused (a SIGSTOP, a swapped-out laptop) does
//! not blame the nodes for the silence it did not listen to: the length of
//! its own pause is not counted against anyone.

pub mod metrics;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use serde::Serialize;
use serde_json::json;

use crate::api::*;
use crate::http::{describe_reqwest_error, ApiError, ApiJson};

#[derive(Debug, Clone, Parser)]
pub struct Args {
    /// Port to listen on (nodes heartbeat here).
    #[arg(long, default_value_t = ports::REGISTRY)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// The coordinator to tell when a node dies or needs catching up;
    /// several (comma-separated or the flag repeated): whichever accepts,
    /// a standby's 503 meaning "try the next".
    #[arg(long, default_value = "http://127.0.0.1:7000")]
    pub coordinator: Vec<String>,
    /// Replace dead followers automatically.
    #[arg(long)]
    pub auto_spawn: bool,
    /// Seconds to wait before replacing a dead follower.
    #[arg(long, allow_negative_numbers = true, default_value_t = 5.0)]
    pub spawn_delay: f64,
    /// Seconds of silence after which a node is declared dead.
    #[arg(long, allow_negative_numbers = true, default_value_t = 5.0)]
    pub timeout: f64,
    #[command(flatten)]
    pub secret: crate::auth::SecretArgs,
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The coordinators, and the last one that accepted a notice.
    pub coordinators: Arc<crate::http::Endpoints>,
    pub auto_spawn: bool,
    pub spawn_delay: Duration,
    pub timeout: Duration,
}

impl Config {
    pub fn from_args(args: &Args) -> anyhow::Result<Config> {
        for (name, v) in [
            ("--spawn-delay", args.spawn_delay),
            ("--timeout", args.timeout),
        ] {
            if !v.is_finite() || !(0.0..=3600.0).contains(&v) {
                anyhow::bail!("{name} must be between 0 and 3600 seconds, got {v}");
            }
        }
        let coordinators = crate::http::Endpoints::parse("--coordinator", &args.coordinator)?;
        Ok(Config {
            coordinators: Arc::new(coordinators),
            auto_spawn: args.auto_spawn,
            spawn_delay: Duration::from_secs_f64(args.spawn_delay),
            timeout: Duration::from_secs_f64(args.timeout),
        })
    }
}

/// Most records the registry keeps: far more than a lab cluster has nodes.
pub const MAX_NODES: usize = 256;

#[derive(Debug, Clone)]
struct Record {
    url: String,
    role: Role,
    incarnation: u64,
    last_seen: Instant,
    alive: bool,
}

pub struct Registry {
    config: Config,
    nodes: Mutex<HashMap<String, Record>>,
    /// Bumped under the `nodes` lock by every change of the view.
    version: AtomicU64,
    /// This process's start, in ms since the Unix epoch.
    epoch: u64,
    started: Instant,
    http: reqwest::Client,
    metrics: metrics::RegistryMetrics,
}

impl Registry {
    pub fn new(config: Config) -> Arc<Registry> {
        let epoch = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Arc::new(Registry {
            metrics: metrics::RegistryMetrics::new(config.timeout.as_secs_f64()),
            config,
            nodes: Mutex::new(HashMap::new()),
            version: AtomicU64::new(0),
            epoch,
            started: Instant::now(),
            http: crate::http::client(),
        })
    }

    /// Records a change of the view; call with the `nodes` lock held.
    fn bump(&self) -> u64 {
        self.version.fetch_add(1, Ordering::SeqCst) + 1
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    crate::auth::load_and_install(&args.secret, crate::auth::Fallback::UserFile)?;
    crate::tls::install(&args.tls, &[("the registry", args.host)])?;
    let config = Config::from_args(&args)?;
    let addr = SocketAddr::new(args.host, args.port);
    let listener = crate::http::bind(addr).await?;
    // The first of the course's terminals: say at once that it runs.
    println!("kvlab registry: {}", describe(&config, addr));
    serve(
        Registry::new(config),
        listener,
        crate::http::shutdown_signal(),
    )
    .await
}

/// One line saying where the registry listens and how it judges nodes.
pub fn describe(config: &Config, addr: SocketAddr) -> String {
    let spawn = if config.auto_spawn {
        format!(
            "replaces a dead node after {} s (--auto-spawn)",
            config.spawn_delay.as_secs_f64()
        )
    } else {
        "does not replace dead nodes (no --auto-spawn)".to_string()
    };
    format!(
        "listening on {addr}; a node silent for {} s is declared dead; \
         tells the coordinator at {}; {spawn}",
        config.timeout.as_secs_f64(),
        config.coordinators.urls().join(", ")
    )
}

pub async fn serve(
    registry: Arc<Registry>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let checker = tokio::spawn(check_loop(registry.clone()));
    let result = crate::http::serve(listener, router(registry), shutdown).await;
    checker.abort();
    result
}

pub fn router(registry: Arc<Registry>) -> Router {
    let router = Router::new()
        .route("/", get(info))
        .route("/heartbeat", post(heartbeat))
        .route("/deregister", post(deregister))
        .route("/forget", post(forget))
        .route("/missing", post(missing))
        .route("/nodes", get(nodes))
        .route("/alive", get(alive))
        .route("/metrics", get(metrics))
        .with_state(registry);
    crate::auth::guard(router, crate::auth::registry_access, None)
}

type Shared = State<Arc<Registry>>;

/// What a heartbeat means for the node's record.
enum Seen {
    /// First heartbeat of this incarnation.
    New,
    /// It was declared dead, and is back.
    Revived,
    Again,
}

async fn heartbeat(
    State(reg): Shared,
    ApiJson(hb): ApiJson<Heartbeat>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    if hb.node_id.is_empty() || hb.url.is_empty() {
        return Err(ApiError::bad_request("node_id and url must not be empty"));
    }
    let incarnation = hb.incarnation.unwrap_or(0);
    reg.metrics.heartbeats.inc();
    let (seen, version) = {
        let mut nodes = reg.nodes.lock().unwrap();
        let previous = nodes.get(&hb.node_id).cloned();
        if let Some(p) = &previous {
            if incarnation < p.incarnation {
                reg.metrics.fenced.inc();
                return Err(ApiError::conflict(format!(
                    "{} incarnation {incarnation} was replaced by incarnation {}: stop serving",
                    hb.node_id, p.incarnation
                )));
            }
        }
        if previous.is_none() && !make_room(&mut nodes) {
            return Err(ApiError::unavailable(json!({
                "error": "registry full",
                "reason": format!(
                    "the registry keeps at most {MAX_NODES} nodes and all of them are alive"
                ),
            })));
        }
        let seen = match &previous {
            Some(p) if p.incarnation == incarnation && p.alive => Seen::Again,
            Some(p) if p.incarnation == incarnation => Seen::Revived,
            _ => Seen::New,
        };
        let version = match seen {
            Seen::Again => reg.version.load(Ordering::SeqCst),
            Seen::New | Seen::Revived => reg.bump(),
        };
        nodes.insert(
            hb.node_id.clone(),
            Record {
                url: hb.url.clone(),
                role: hb.role,
                incarnation,
                last_seen: Instant::now(),
                alive: true,
            },
        );
        (seen, version)
    };
    match seen {
        Seen::New => {
            tracing::info!(node = %hb.node_id, incarnation, "registered");
            if hb.role == Role::Follower {
                tokio::spawn(ask_catchup(reg.clone(), hb.clone()));
            }
        }
        Seen::Revived => {
            tracing::info!(node = %hb.node_id, "heartbeats resumed");
            let body = NodeRevivedRequest {
                node_id: hb.node_id.clone(),
                url: hb.url.clone(),
                incarnation: hb.incarnation,
                view_version: Some(version),
                registry_epoch: Some(reg.epoch),
            };
            tokio::spawn(tell_coordinator(reg.clone(), "node-revived", body));
        }
        Seen::Again => {}
    }
    Ok(Json(HeartbeatResponse {
        status: "ok".into(),
        nodes: alive_list(&reg),
    }))
}

async fn deregister(
    State(reg): Shared,
    ApiJson(req): ApiJson<DeregisterRequest>,
) -> Result<Json<StatusOnly>, ApiError> {
    let removed = {
        let mut nodes = reg.nodes.lock().unwrap();
        match nodes.get(&req.node_id) {
            None => {
                return Err(ApiError::not_found(format!(
                    "Node '{}' not registered",
                    req.node_id
                )))
            }
            Some(r) if req.incarnation.is_some_and(|i| i < r.incarnation) => None,
            Some(_) => {
                reg.bump();
                nodes.remove(&req.node_id)
            }
        }
    };
    if let Some(record) = removed {
        tracing::info!(node = %req.node_id, "deregistered");
        // Any node, the leader too: after a failover its slot is a
        // follower slot, and N stays N.
        schedule_respawn(reg.clone(), req.node_id.clone(), record.incarnation);
    }
    Ok(Json(StatusOnly {
        status: "ok".into(),
    }))
}

/// Room for one more record: true if there is, or if the longest-dead
/// record was dropped to make it.
fn make_room(nodes: &mut HashMap<String, Record>) -> bool {
    if nodes.len() < MAX_NODES {
        return true;
    }
    let oldest_dead = nodes
        .iter()
        .filter(|(_, r)| !r.alive)
        .min_by_key(|(_, r)| r.last_seen)
        .map(|(id, _)| id.clone());
    match oldest_dead {
        Some(id) => {
            tracing::info!(node = %id, "table full: forgot the longest-dead node");
            nodes.remove(&id);
            true
        }
        None => false,
    }
}

/// `POST /forget`: the coordinator names ids that are not its members.
async fn forget(State(reg): Shared, ApiJson(req): ApiJson<ForgetRequest>) -> Json<ForgetResponse> {
    let forgotten: Vec<String> = {
        let mut nodes = reg.nodes.lock().unwrap();
        let forgotten: Vec<String> = req
            .node_ids
            .into_iter()
            .filter(|id| nodes.remove(id).is_some())
            .collect();
        if !forgotten.is_empty() {
            reg.bump();
        }
        forgotten
    };
    for id in &forgotten {
        tracing::info!(node = %id, "forgotten: not a member of the coordinator's cluster");
    }
    Json(ForgetResponse { forgotten })
}

/// `POST /missing`: the coordinator's dead slots this table has no record
/// of. Each is recorded dead (a later heartbeat of a newer incarnation
/// replaces it as usual) and, with auto-spawn, replaced after the delay.
async fn missing(
    State(reg): Shared,
    ApiJson(req): ApiJson<MissingRequest>,
) -> Json<MissingResponse> {
    let recorded: Vec<(String, u64)> = {
        let mut nodes = reg.nodes.lock().unwrap();
        let mut recorded = Vec::new();
        for n in req.nodes {
            if nodes.contains_key(&n.node_id) || !make_room(&mut nodes) {
                continue;
            }
            nodes.insert(
                n.node_id.clone(),
                Record {
                    url: n.url,
                    role: n.role,
                    incarnation: n.incarnation,
                    last_seen: Instant::now(),
                    alive: false,
                },
            );
            recorded.push((n.node_id, n.incarnation));
        }
        if !recorded.is_empty() {
            reg.bump();
        }
        recorded
    };
    // Such a node has been silent at least since this registry started, so
    // its spawn delay runs from then, not from now: a registry restarted
    // while a node was dead replaces it within the delay of its start, as
    // one that had watched the node die would have.
    let delay = reg.config.spawn_delay.saturating_sub(reg.started.elapsed());
    for (node_id, incarnation) in &recorded {
        tracing::warn!(node = %node_id, "dead in the coordinator's table and never heard here: recorded dead");
        schedule_respawn_after(reg.clone(), node_id.clone(), *incarnation, delay);
    }
    Json(MissingResponse {
        recorded: recorded.into_iter().map(|(id, _)| id).collect(),
    })
}

fn alive_list(reg: &Registry) -> Vec<NodeRef> {
    let nodes = reg.nodes.lock().unwrap();
    let mut list: Vec<NodeRef> = nodes
        .iter()
        .filter(|(_, r)| r.alive)
        .map(|(id, r)| NodeRef {
            node_id: id.clone(),
            url: r.url.clone(),
            role: r.role,
        })
        .collect();
    list.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    list
}

/// `GET /metrics`: the Prometheus text format.
async fn metrics(State(reg): Shared) -> axum::response::Response {
    {
        let nodes = reg.nodes.lock().unwrap();
        reg.metrics.refresh(
            nodes
                .iter()
                .map(|(id, r)| (id.clone(), r.last_seen.elapsed().as_secs_f64(), r.alive)),
        );
    }
    crate::metrics::render(&reg.metrics.registry)
}

async fn nodes(State(reg): Shared) -> Json<RegistryNodes> {
    let nodes = reg.nodes.lock().unwrap();
    let view_version = reg.version.load(Ordering::SeqCst);
    let mut list: Vec<RegistryNode> = nodes
        .iter()
        .map(|(id, r)| RegistryNode {
            node_id: id.clone(),
            url: r.url.clone(),
            role: r.role,
            status: if r.alive { "alive" } else { "dead" }.into(),
            last_seen_seconds_ago: (r.last_seen.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            incarnation: Some(r.incarnation),
        })
        .collect();
    list.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    Json(RegistryNodes {
        nodes: list,
        view_version,
        registry_epoch: reg.epoch,
        uptime_seconds: reg.started.elapsed().as_secs_f64(),
        timeout_seconds: reg.config.timeout.as_secs_f64(),
    })
}

async fn alive(State(reg): Shared) -> Json<AliveNodes> {
    Json(AliveNodes {
        nodes: alive_list(&reg),
    })
}

async fn info(State(reg): Shared) -> Json<RegistryInfo> {
    let nodes = reg.nodes.lock().unwrap();
    let alive = nodes.values().filter(|r| r.alive).count();
    Json(RegistryInfo {
        service: "registry".into(),
        total_nodes: nodes.len(),
        alive_nodes: alive,
        dead_nodes: nodes.len() - alive,
    })
}

/// How often silent nodes are looked for.
const CHECK_PERIOD: Duration = Duration::from_millis(250);

/// Declares silent nodes dead, four times a second.
async fn check_loop(reg: Arc<Registry>) {
    let mut tick = tokio::time::interval(CHECK_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_check = Instant::now();
    loop {
        tick.tick().await;
        let paused = last_check.elapsed().saturating_sub(CHECK_PERIOD);
        last_check = Instant::now();
        let newly_dead: Vec<(String, Record, u64)> = {
            let mut nodes = reg.nodes.lock().unwrap();
            if paused > Duration::from_secs(1) {
                forgive_pause(&mut nodes, paused);
            }
            nodes
                .iter_mut()
                .filter(|(_, r)| r.alive && r.last_seen.elapsed() > reg.config.timeout)
                .map(|(id, r)| {
                    r.alive = false;
                    (id.clone(), r.clone(), reg.bump())
                })
                .collect()
        };
        for (node_id, record, version) in newly_dead {
            tracing::warn!(node = %node_id, "no heartbeat: declared dead");
            reg.metrics.declared_dead.inc();
            let body = NodeDiedRequest {
                node_id: node_id.clone(),
                incarnation: Some(record.incarnation),
                view_version: Some(version),
                registry_epoch: Some(reg.epoch),
            };
            tokio::spawn(tell_coordinator(reg.clone(), "node-died", body));
            schedule_respawn(reg.clone(), node_id, record.incarnation);
        }
    }
}

/// The registry itself did not run for `paused` (it was stopped or starved):
/// heartbeats sent meanwhile may be waiting in its socket. That silence is
/// the registry's, not the nodes', so it is not counted against them.
fn forgive_pause(nodes: &mut HashMap<String, Record>, paused: Duration) {
    tracing::warn!(
        paused_ms = paused.as_millis() as u64,
        "the registry itself was paused: that silence is not counted against the nodes"
    );
    let now = Instant::now();
    for r in nodes.values_mut().filter(|r| r.alive) {
        r.last_seen = (r.last_seen + paused).min(now);
    }
}

/// With auto-spawn: after the delay, replace the follower if it is still gone.
fn schedule_respawn(reg: Arc<Registry>, node_id: String, incarnation: u64) {
    let delay = reg.config.spawn_delay;
    schedule_respawn_after(reg, node_id, incarnation, delay);
}

/// [`schedule_respawn`], with the part of the delay still to wait.
fn schedule_respawn_after(reg: Arc<Registry>, node_id: String, incarnation: u64, delay: Duration) {
    if !reg.config.auto_spawn {
        return;
    }
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let still_gone = match reg.nodes.lock().unwrap().get(&node_id) {
            None => true,
            Some(r) => !r.alive && r.incarnation == incarnation,
        };
        if !still_gone {
            tracing::warn!(node = %node_id, "came back before the spawn delay ran out: not replaced");
            return;
        }
        tracing::warn!(node = %node_id, "still dead after the spawn delay: asking for a replacement");
        reg.metrics.respawn_requests.inc();
        // Only a slot the coordinator already has: a name the registry
        // heard of must never become a new process.
        let restart = SpawnRequest {
            existing_only: true,
            ..SpawnRequest::of(node_id)
        };
        tell_coordinator(reg, "spawn", restart).await;
    });
}

/// Asks the coordinator to catch a new follower up, retrying while it is unreachable.
async fn ask_catchup(reg: Arc<Registry>, hb: Heartbeat) {
    let body = CatchupRequest {
        node_id: hb.node_id,
        url: Some(hb.url),
        incarnation: hb.incarnation,
    };
    tell_coordinator(reg, "catchup", body).await;
}

/// POSTs to the coordinator, retrying (for a while) only when it cannot be
/// reached. With several coordinators, the last one that accepted is tried
/// first, then the others in order: one that cannot be reached, or a
/// standby's 503 `api::NOT_ACTIVE_COORDINATOR`, means the next.
async fn tell_coordinator(reg: Arc<Registry>, path: &str, body: impl Serialize) {
    let coordinators = &reg.config.coordinators;
    for attempt in 0..30u32 {
        for (i, base) in coordinators.from_current() {
            let url = format!("{base}/{path}");
            match tell_one(&reg, &url, &body).await {
                Told::Done => {
                    coordinators.set_current(i);
                    return;
                }
                Told::NotActive => {
                    tracing::debug!(%url, "a standby coordinator: trying the next");
                }
                Told::Unreachable(why) => {
                    if attempt == 0 {
                        tracing::warn!(%url, error = %why, "coordinator unreachable; trying again");
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What one coordinator made of a notice.
enum Told {
    /// It answered (whatever it answered: its answer is the cluster's).
    Done,
    /// A standby: the notice belongs to the active one.
    NotActive,
    /// No answer: why.
    Unreachable(String),
}

async fn tell_one(reg: &Registry, url: &str, body: &impl Serialize) -> Told {
    let sent = reg
        .http
        .post(url)
        .json(body)
        .timeout(Duration::from_secs(35))
        .send()
        .await;
    let resp = match sent {
        Ok(resp) => resp,
        Err(e) => return Told::Unreachable(describe_reqwest_error(&e)),
    };
    let status = resp.status();
    if status.is_success() {
        return Told::Done;
    }
    let detail = crate::http::error_detail(resp).await;
    if crate::http::not_active_coordinator(status, &detail) {
        return Told::NotActive;
    }
    if status == reqwest::StatusCode::UNAUTHORIZED {
        // Not the coordinator's cluster secret: nothing will get through.
        tracing::warn!(%url, %detail, "coordinator refused our cluster secret");
    } else {
        tracing::debug!(%url, %status, "coordinator refused");
    }
    Told::Done
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(silent: Duration, alive: bool) -> Record {
        Record {
            url: String::new(),
            role: Role::Follower,
            incarnation: 1,
            last_seen: Instant::now() - silent,
            alive,
        }
    }

    #[test]
    fn a_pause_of_the_registry_is_not_counted_against_nodes() {
        let mut nodes = HashMap::from([
            ("a".to_string(), record(Duration::from_secs(7), true)),
            ("b".to_string(), record(Duration::from_secs(9), false)),
        ]);
        forgive_pause(&mut nodes, Duration::from_secs(6));
        let a = nodes["a"].last_seen.elapsed();
        assert!(a < Duration::from_millis(1500), "{a:?}");
        let b = nodes["b"].last_seen.elapsed();
        assert!(b >= Duration::from_secs(9), "the dead stay dead: {b:?}");
        // Never moved into the future.
        forgive_pause(&mut nodes, Duration::from_secs(60));
        assert!(nodes["a"].last_seen <= Instant::now());
    }
}

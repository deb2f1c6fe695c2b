//! Fault hooks by node id: the coordinator's way (and so the live view's) to
//! pause a node's heartbeats, cut it off from some peers, or slow its disk.
//!
//! The hooks themselves are the nodes' (`/admin/pause-heartbeats`,
//! `/admin/partition`, `/admin/slow-disk`; see [`crate::node::faults`]). The
//! coordinator knows where each node runs, so it forwards the request, keeps
//! a mirror of what is in effect (the view shows it on the node's card), and
//! narrates the fault's start and end in the event log.
//!
//! Invariants:
//! - the node is the authority: its hook expires the fault, and the mirror
//!   here expires at the same moment; it is only for showing;
//! - a fault belongs to one process: it is mirrored with the incarnation it
//!   was sent to, and a new process of that node starts without it (the
//!   hooks are process state), so the mirror stops counting it;
//! - a request is checked here as the node would check it, so a bad body is
//!   refused (400/422) before anything is sent.
//!
//! On netns hosts (`kvlab up --hosts netns`) partitions are not forwarded:
//! the coordinator drops the packets itself, in the node's namespace (see
//! [`crate::hosts::netns`]), and can do it one way only; `POST
//! /admin/link/{node_id}` adds latency, jitter or loss to one link
//! (netem's model, see [`crate::hosts::netns`]). Peers are resolved when the fault starts: `leader` is the
//! node that leads then, and stays cut off after a failover, as a real
//! network would. Such faults belong to the host, not the process: they
//! outlive a restart of the node until they expire or are healed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};

use super::cluster::Slot;
use super::Coordinator;
use crate::api::{check_seconds, Direction, Netem, NodeStatus, PartitionRequest, SlowDiskRequest};
use crate::events::EventKind;
use crate::hosts::netns::{self, NetnsHosts, Peer};
use crate::http::{describe_reqwest_error, error_detail, ApiError, ApiJson, ApiPath};

/// How long a node has to answer a hook.
const HOOK_TIMEOUT: Duration = Duration::from_secs(2);
/// The peers a node can be cut off from, besides the node ids.
const SERVICES: [&str; 3] = ["leader", "coordinator", "registry"];

/// One fault request, as the coordinator forwards it.
#[derive(Debug, Clone)]
pub enum Fault {
    PauseHeartbeats {
        seconds: f64,
    },
    Partition(PartitionRequest),
    SlowDisk(SlowDiskRequest),
    /// Netns hosts only: latency, jitter or loss on one link.
    Link(LinkRequest),
}

/// `POST /admin/link/{node_id}` body: the link between the node and `peer`
/// gets netem's treatment for `seconds` (zeros heal it).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct LinkRequest {
    /// `coordinator`, `registry`, `leader` or a node id.
    pub peer: String,
    #[serde(flatten)]
    pub netem: Netem,
    pub seconds: f64,
    /// `both` (default), `in` (what the peer sends the node) or `out`.
    #[serde(default)]
    pub direction: Direction,
}

impl Fault {
    /// The node's route: `/admin/<hook>`.
    fn hook(&self) -> &'static str {
        match self {
            Fault::PauseHeartbeats { .. } => "pause-heartbeats",
            Fault::Partition(_) => "partition",
            Fault::SlowDisk(_) => "slow-disk",
            Fault::Link(_) => "link",
        }
    }

    /// The name the view knows it by (one fault of each kind per node).
    fn kind(&self) -> &'static str {
        match self {
            Fault::PauseHeartbeats { .. } => "pause",
            Fault::Partition(_) => "partition",
            Fault::SlowDisk(_) => "slow-disk",
            Fault::Link(_) => "slow-link",
        }
    }

    fn seconds(&self) -> f64 {
        match self {
            Fault::PauseHeartbeats { seconds } => *seconds,
            Fault::Partition(p) => p.seconds,
            Fault::SlowDisk(s) => s.seconds,
            Fault::Link(l) => l.seconds,
        }
    }

    fn heals(&self) -> bool {
        match self {
            Fault::PauseHeartbeats { seconds } => *seconds == 0.0,
            Fault::Partition(p) => p.heals(),
            Fault::SlowDisk(s) => s.heals(),
            Fault::Link(l) => l.seconds == 0.0 || l.netem == Netem::default(),
        }
    }

    fn body(&self) -> Value {
        match self {
            Fault::PauseHeartbeats { seconds } => json!({"seconds": seconds}),
            Fault::Partition(p) => json!(p),
            Fault::SlowDisk(s) => json!(s),
            Fault::Link(l) => json!(l),
        }
    }

    /// What is in effect, in a few words (shown on the node's card).
    fn detail(&self) -> String {
        match self {
            Fault::PauseHeartbeats { .. } => "no heartbeats".into(),
            Fault::Partition(p) => format!(
                "cut off from {}{}",
                p.peers.join(", "),
                one_way(p.direction)
            ),
            Fault::SlowDisk(s) => format!("+{} ms per fsync", s.ms),
            Fault::Link(l) => format!(
                "link to {}: {}{}",
                l.peer,
                describe(&l.netem),
                one_way(l.direction)
            ),
        }
    }

    /// Refuses what the node would refuse, and peers nobody is called.
    fn validate(&self, known_nodes: &[String]) -> Result<(), ApiError> {
        match self {
            Fault::PauseHeartbeats { seconds } => check_seconds(*seconds)
                .map(drop)
                .map_err(ApiError::bad_request),
            Fault::SlowDisk(s) => s.validate().map(drop).map_err(ApiError::bad_request),
            Fault::Link(l) => {
                check_seconds(l.seconds).map_err(ApiError::bad_request)?;
                l.netem.validate().map_err(ApiError::bad_request)?;
                check_peers(std::slice::from_ref(&l.peer), known_nodes)
            }
            Fault::Partition(p) => {
                p.validate().map_err(ApiError::bad_request)?;
                check_peers(&p.peers, known_nodes)
            }
        }
    }

    /// The event log's lines for the start and the end of this fault.
    fn narrate_start(&self, c: &Coordinator, node_id: &str) {
        let s = self.seconds();
        match self {
            Fault::PauseHeartbeats { .. } => c.events.warn(
                EventKind::HeartbeatsPaused,
                Some(node_id),
                format!(
                    "⏸️ {node_id}: heartbeats paused for {s} s (the registry's timeout is 5 s)"
                ),
            ),
            Fault::Partition(p) => c.events.warn(
                EventKind::Partitioned,
                Some(node_id),
                format!(
                    "✂️ {node_id} is cut off from {} for {s} s: traffic between them hangs, \
                     then fails",
                    p.peers.join(", ")
                ),
            ),
            Fault::Link(l) => c.events.warn(
                EventKind::SlowLink,
                Some(node_id),
                format!(
                    "🐌 {node_id}'s link to {} for {s} s: {}{} (real packets, delayed or dropped)",
                    l.peer,
                    describe(&l.netem),
                    one_way(l.direction)
                ),
            ),
            Fault::SlowDisk(d) => c.events.warn(
                EventKind::SlowDisk,
                Some(node_id),
                format!(
                    "🐢 {node_id}'s disk is slow for {s} s: every fsync takes {} ms longer, \
                     and so does each write that waits for its ack",
                    d.ms
                ),
            ),
        }
    }
}

/// Refuses peer names nobody has.
fn check_peers(peers: &[String], known_nodes: &[String]) -> Result<(), ApiError> {
    let unknown: Vec<&String> = peers
        .iter()
        .filter(|peer| !SERVICES.contains(&peer.as_str()) && !known_nodes.contains(peer))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(ApiError::bad_request(json!({
        "error": format!("unknown peers: {}", join(&unknown)),
        "peers_known": SERVICES.iter().map(|s| s.to_string())
            .chain(known_nodes.iter().cloned()).collect::<Vec<_>>(),
    })))
}

/// ` (in only)` / ` (out only)` for one-way faults.
fn one_way(d: Direction) -> &'static str {
    match d {
        Direction::Both => "",
        Direction::In => " (incoming only)",
        Direction::Out => " (outgoing only)",
    }
}

/// `+100 ms ±20 ms, 5% loss`.
fn describe(n: &Netem) -> String {
    let mut parts = Vec::new();
    if n.delay_ms > 0.0 || n.jitter_ms > 0.0 {
        parts.push(format!("+{} ms ±{} ms", n.delay_ms, n.jitter_ms));
    }
    if n.loss_percent > 0.0 {
        parts.push(format!("{}% loss", n.loss_percent));
    }
    parts.join(", ")
}

/// The end of a fault, narrated: it expired or was healed by request.
fn narrate_end(c: &Coordinator, kind: &str, node_id: &str, how: &str) {
    match kind {
        "pause" => c.events.info(
            EventKind::HeartbeatsResumed,
            Some(node_id),
            format!("▶️ {node_id}: heartbeats resume ({how})"),
        ),
        "partition" => c.events.info(
            EventKind::PartitionHealed,
            Some(node_id),
            format!("🩹 {node_id}: partition healed ({how}), its traffic flows again"),
        ),
        "slow-link" => c.events.info(
            EventKind::SlowLinkHealed,
            Some(node_id),
            format!("🩹 {node_id}: its link is back to normal ({how})"),
        ),
        _ => c.events.info(
            EventKind::SlowDiskHealed,
            Some(node_id),
            format!("🩹 {node_id}: its disk is back to normal speed ({how})"),
        ),
    }
}

fn join(items: &[&String]) -> String {
    items
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A fault in effect, as mirrored here.
struct Active {
    id: u64,
    node_id: String,
    incarnation: u64,
    kind: &'static str,
    detail: String,
    until: Instant,
}

/// A fault in effect, for `/ui/state`.
#[derive(Debug, Clone, Serialize)]
pub struct FaultView {
    /// `pause`, `partition` or `slow-disk`.
    pub kind: &'static str,
    pub detail: String,
    pub seconds_left: f64,
}

/// The mirror of the faults in effect.
#[derive(Default)]
pub struct Faults {
    active: Mutex<Vec<Active>>,
    next_id: AtomicU64,
}

impl Faults {
    /// node id → its faults in effect, leaving out those of a past process.
    pub fn view(&self, current: impl Fn(&str) -> Option<u64>) -> HashMap<String, Vec<FaultView>> {
        let now = Instant::now();
        let mut by_node: HashMap<String, Vec<FaultView>> = HashMap::new();
        for a in self.active.lock().unwrap().iter() {
            if a.until > now && current(&a.node_id) == Some(a.incarnation) {
                by_node
                    .entry(a.node_id.clone())
                    .or_default()
                    .push(FaultView {
                        kind: a.kind,
                        detail: a.detail.clone(),
                        seconds_left: (a.until - now).as_secs_f64(),
                    });
            }
        }
        by_node
    }

    /// Records `fault` on `slot`, replacing one of its kind; returns its id.
    fn record(&self, slot: &Slot, fault: &Fault) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut active = self.active.lock().unwrap();
        active.retain(|a| !(a.node_id == slot.node_id && a.kind == fault.kind()));
        active.push(Active {
            id,
            node_id: slot.node_id.clone(),
            incarnation: slot.incarnation,
            kind: fault.kind(),
            detail: fault.detail(),
            until: Instant::now() + Duration::from_secs_f64(fault.seconds()),
        });
        id
    }

    /// Forgets the node's fault of `kind`; says whether it was in effect
    /// in the process `incarnation`.
    fn forget(&self, node_id: &str, kind: &str, incarnation: u64) -> bool {
        let mut active = self.active.lock().unwrap();
        let before = active.len();
        active
            .retain(|a| !(a.node_id == node_id && a.kind == kind && a.incarnation == incarnation));
        active.len() < before
    }

    /// Forgets fault `id` once it has expired; returns it if it was there.
    fn expire(&self, id: u64) -> Option<Active> {
        let mut active = self.active.lock().unwrap();
        let i = active.iter().position(|a| a.id == id)?;
        Some(active.remove(i))
    }
}

impl Coordinator {
    /// Sends `fault` to the node `node_id` (`leader` names the current
    /// leader), mirrors and narrates it. Errors: 404 for an unknown node,
    /// 409 for a dead one, 400 for a bad request, 502 when the node fails.
    pub async fn inject_fault(
        self: &Arc<Self>,
        node_id: &str,
        fault: Fault,
    ) -> Result<Json<Value>, ApiError> {
        let cluster = self.snapshot();
        let node_id = cluster.resolve(node_id, false);
        let known: Vec<String> = std::iter::once(&cluster.leader)
            .chain(&cluster.followers)
            .map(|s| s.node_id.clone())
            .collect();
        let Some(slot) = cluster.slot(&node_id).cloned() else {
            return Err(ApiError::not_found(format!(
                "Node '{node_id}' not found (nodes: {})",
                known.join(", ")
            )));
        };
        fault.validate(&known)?;
        // A heal is always tried: a node cut off from the registry is
        // declared dead while its process still runs (and a netns host's
        // network outlives its process).
        if slot.status == NodeStatus::Dead && !fault.heals() {
            return Err(ApiError::conflict(json!({
                "error": format!("{node_id} is dead: there is no process to inject a fault into"),
                "node_id": node_id,
            })));
        }
        match (&self.config.launch.netns, &fault) {
            (Some(hosts), Fault::Partition(_) | Fault::Link(_)) => {
                self.netns_fault(hosts.clone(), &slot, &fault).await?
            }
            (None, Fault::Link(_)) => {
                return Err(ApiError::conflict(
                    "link faults (latency, jitter, loss) need netns hosts: start the cluster with \
                     kvlab up --hosts netns",
                ))
            }
            (None, Fault::Partition(p)) => {
                p.check_both_ways().map_err(ApiError::bad_request)?;
                self.send_fault(&slot, &fault).await?
            }
            _ => self.send_fault(&slot, &fault).await?,
        }
        if fault.heals() {
            if self.faults.forget(&node_id, fault.kind(), slot.incarnation) {
                narrate_end(self, fault.kind(), &node_id, "healed on request");
            }
        } else {
            let id = self.faults.record(&slot, &fault);
            fault.narrate_start(self, &node_id);
            self.narrate_expiry(id, fault.seconds());
        }
        let mut answer = json!({
            "status": if fault.heals() { "healed" } else { "injected" },
            "node_id": node_id,
            "fault": fault.kind(),
        });
        if let Value::Object(body) = fault.body() {
            answer.as_object_mut().unwrap().extend(body);
        }
        Ok(Json(answer))
    }

    /// `POST <node>/admin/<hook>` with the fault's body.
    async fn send_fault(&self, slot: &Slot, fault: &Fault) -> Result<(), ApiError> {
        let node_id = &slot.node_id;
        let url = format!("{}/admin/{}", slot.url, fault.hook());
        let resp = self
            .http
            .post(&url)
            .json(&fault.body())
            .timeout(HOOK_TIMEOUT)
            .send()
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "{node_id} did not answer {url}: {}",
                        describe_reqwest_error(&e)
                    ),
                )
            })?;
        if resp.status().is_success() {
            return Ok(());
        }
        let status = resp.status();
        Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            json!({
                "error": format!("{node_id} answered HTTP {} to {url}", status.as_u16()),
                "node_detail": error_detail(resp).await,
            }),
        ))
    }

    /// A partition or a slow link on netns hosts: packets dropped or
    /// delayed by the kernel, in the node's namespace.
    async fn netns_fault(
        &self,
        hosts: Arc<NetnsHosts>,
        slot: &Slot,
        fault: &Fault,
    ) -> Result<(), ApiError> {
        let cluster = self.snapshot();
        let peer_of = |name: &str| -> Result<Option<Peer>, netns::NetnsError> {
            let port = match name {
                "coordinator" => return Ok(Some(Peer::Coordinator)),
                "registry" => return Ok(Some(Peer::Registry)),
                "leader" => cluster.leader.port,
                id => match cluster.slot(id) {
                    Some(s) => s.port,
                    None => return Ok(None),
                },
            };
            // Cutting a node off from itself means nothing.
            if port == slot.port {
                return Ok(None);
            }
            Ok(Some(Peer::Node(hosts.slot_of(port)?)))
        };
        let internal =
            |e: netns::NetnsError| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        let me = hosts.slot_of(slot.port).map_err(internal)?;
        let fault = fault.clone();
        let result = match &fault {
            Fault::Partition(p) => {
                let mut peers = Vec::new();
                for name in &p.peers {
                    peers.extend(peer_of(name).map_err(internal)?);
                }
                if p.heals() {
                    peers.clear();
                }
                let (direction, seconds) = (p.direction, p.seconds);
                tokio::task::spawn_blocking(move || hosts.partition(me, &peers, direction, seconds))
                    .await
            }
            Fault::Link(l) => {
                let Some(peer) = peer_of(&l.peer).map_err(internal)? else {
                    return Err(ApiError::bad_request(format!(
                        "{} has no link to itself",
                        slot.node_id
                    )));
                };
                let netem = if fault.heals() {
                    Netem::default()
                } else {
                    l.netem
                };
                let (direction, seconds) = (l.direction, l.seconds);
                tokio::task::spawn_blocking(move || {
                    hosts.shape_link(me, peer, direction, netem, seconds)
                })
                .await
            }
            _ => return Ok(()),
        };
        result
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(internal)
    }

    /// Narrates the fault's end when the node's hook lets it expire (unless
    /// it was replaced, healed, or its process is gone by then).
    fn narrate_expiry(self: &Arc<Self>, id: u64, seconds: f64) {
        // Weak: a long fault must not keep a stopped coordinator alive.
        let weak: Weak<Coordinator> = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
            let Some(c) = weak.upgrade() else { return };
            let Some(a) = c.faults.expire(id) else { return };
            let same_process = c
                .snapshot()
                .slot(&a.node_id)
                .is_some_and(|s| s.incarnation == a.incarnation && s.is_alive());
            if same_process {
                narrate_end(&c, a.kind, &a.node_id, "its time is up");
            }
        });
    }
}

type Shared = State<Arc<Coordinator>>;

/// `POST /admin/partition/{node_id}` with `{"peers": [...], "seconds": S}`.
pub async fn partition(
    State(c): Shared,
    ApiPath(node_id): ApiPath<String>,
    ApiJson(req): ApiJson<PartitionRequest>,
) -> Result<Json<Value>, ApiError> {
    c.inject_fault(&node_id, Fault::Partition(req)).await
}

/// `POST /admin/link/{node_id}` with `{"peer", "delay_ms"?, "jitter_ms"?,
/// "loss_percent"?, "seconds", "direction"?}` (netns hosts only).
pub async fn link(
    State(c): Shared,
    ApiPath(node_id): ApiPath<String>,
    ApiJson(req): ApiJson<LinkRequest>,
) -> Result<Json<Value>, ApiError> {
    c.inject_fault(&node_id, Fault::Link(req)).await
}

/// `POST /admin/slow-disk/{node_id}` with `{"ms": D, "seconds": S}`.
pub async fn slow_disk(
    State(c): Shared,
    ApiPath(node_id): ApiPath<String>,
    ApiJson(req): ApiJson<SlowDiskRequest>,
) -> Result<Json<Value>, ApiError> {
    c.inject_fault(&node_id, Fault::SlowDisk(req)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Role;

    fn slot(node_id: &str, incarnation: u64) -> Slot {
        Slot {
            node_id: node_id.into(),
            role: Role::Follower,
            port: 1,
            url: "http://127.0.0.1:1".into(),
            status: NodeStatus::Alive,
            incarnation,
            pid: None,
        }
    }

    fn partition(peers: &[&str], seconds: f64) -> Fault {
        Fault::Partition(PartitionRequest {
            peers: peers.iter().map(|p| p.to_string()).collect(),
            seconds,
            direction: Direction::Both,
        })
    }

    #[test]
    fn the_mirror_keeps_one_fault_per_kind_and_forgets_past_processes() {
        let faults = Faults::default();
        faults.record(&slot("follower-1", 2), &partition(&["leader"], 30.0));
        faults.record(&slot("follower-1", 2), &partition(&["registry"], 30.0));
        let view = faults.view(|_| Some(2));
        assert_eq!(
            view["follower-1"].len(),
            1,
            "a new partition replaces the old"
        );
        assert_eq!(view["follower-1"][0].detail, "cut off from registry");
        // A new process of follower-1 starts without the fault.
        assert!(faults.view(|_| Some(3)).is_empty());
        assert!(!faults.forget("follower-1", "partition", 3));
        assert!(faults.forget("follower-1", "partition", 2));
        assert!(faults.view(|_| Some(2)).is_empty());
    }

    #[test]
    fn requests_are_checked_before_they_are_sent() {
        let known = vec!["leader".to_string(), "follower-1".to_string()];
        assert!(partition(&["leader", "follower-1", "registry"], 5.0)
            .validate(&known)
            .is_ok());
        let e = partition(&["follower-7"], 5.0)
            .validate(&known)
            .unwrap_err();
        assert!(e.detail.to_string().contains("unknown peers: follower-7"));
        assert!(partition(&["leader"], -1.0).validate(&known).is_err());
        assert!(partition(&[], 5.0).heals());
        let slow = |ms, seconds| Fault::SlowDisk(SlowDiskRequest { ms, seconds });
        assert!(slow(60_001, 5.0).validate(&known).is_err());
        assert!(slow(0, 5.0).heals() && !slow(10, 5.0).heals());
    }
}

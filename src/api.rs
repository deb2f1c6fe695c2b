//! The HTTP contract, as Rust types.
//!
//! Every JSON body that crosses a process boundary is defined here, once, so the
//! server that writes it and the client that reads it cannot drift apart. Field
//! names are the lab's, described in docs/api.md (course scripts depend on
//! them): add fields freely, never rename or drop one.
//!
//! Internal endpoints that are kvlab's own design (replication, fencing, admin
//! hooks) are at the bottom and marked as such.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------
// Shared pieces
// ---------------------------------------------------------------------------

/// Default ports of the lab (docs/api.md, "Ports").
pub mod ports {
    pub const GATEWAY: u16 = 8000;
    pub const COORDINATOR: u16 = 7000;
    /// The leader; follower-i listens on `LEADER + i`.
    pub const LEADER: u16 = 7001;
    pub const REGISTRY: u16 = 9000;
}

/// The id of the one leader node.
pub const LEADER_ID: &str = "leader";
/// Names a node by its id in the coordinator's paths, whatever it plays now:
/// `/kill/node:leader` is the node whose id is `leader`, even after a
/// failover made it a follower (plain `/kill/leader` is the current leader).
pub const NODE_ID_PREFIX: &str = "node:";

// Limits every component holds to (the 413 and 400 answers of docs/api.md).

/// Largest request body a client-shaped route accepts. Larger bodies get 413.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// Limits on what a client may store, checked at every entry point.
pub const MAX_KEY_BYTES: usize = 1024;

/// A key as one segment of a URL path (`/read/{key}`, `/data/{key}`): every
/// byte but RFC 3986's unreserved ones (`A-Z a-z 0-9 - . _ ~`) as `%XX`.
/// Every key travels byte for byte this way, whatever it holds: control
/// characters (which a URL parser would strip, reading `a\nb` as `ab`),
/// `/ ? # %`, spaces, non-ASCII. The one way kvlab's own clients (the
/// gateway, `kvlab client`, `assess`, the live view) put a key in a path;
/// the server decodes it back. (`.` and `..` alone stay dot segments, which
/// is why `http::validate_key_value` refuses such keys at write.)
pub fn key_segment(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

/// Most followers `POST /spawn` grows a cluster to (or the N it started
/// with, if larger): each is a process, a port and a data directory on the
/// coordinator's machine, so no request, a web page's included, can start
/// an unbounded number. Respawning a dead slot never counts against it.
pub const MAX_SPAWNED_FOLLOWERS: usize = 16;

/// The body limit of the batch routes (writes and reads gathered by the
/// coordinator, entries streamed by the leader, snapshot chunks). The senders cap their
/// batches well below it ([`BATCH_PAYLOAD_BYTES`]); client-shaped routes keep
/// the 2 MiB limit of [`MAX_BODY_BYTES`].
pub const BATCH_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Senders of batches stop adding items once this many key and value bytes
/// are in (a batch always takes at least one item, which is at most 2 MiB).
pub const BATCH_PAYLOAD_BYTES: usize = 8 * 1024 * 1024;

// The limits fit together: a largest key and value fit a client's body; a
// client's body fits a batch; a full batch (its payload, plus one item past
// it, plus the JSON around them) fits a batch body.
const _: () = assert!(MAX_KEY_BYTES + MAX_VALUE_BYTES < MAX_BODY_BYTES);
const _: () = assert!(MAX_BODY_BYTES <= BATCH_PAYLOAD_BYTES);
const _: () = assert!(2 * (BATCH_PAYLOAD_BYTES + MAX_BODY_BYTES) <= BATCH_BODY_BYTES);

/// The exit code of a node that refused to serve a corrupt log, or a term
/// file it cannot trust (65, the BSD `EX_DATAERR`: the input data was
/// incorrect). Its supervisor sets its directory aside and rebuilds it.
pub const EXIT_CORRUPT_LOG: i32 = 65;

/// What a node that exits with [`EXIT_CORRUPT_LOG`] because of damage other
/// than its log (its term file) prints before the reason, so that its
/// supervisor can report what it found.
pub const NEEDS_REPAIR: &str = "needs repair: ";

/// The exit code of a node that stopped because its disk is full (73, the
/// BSD `EX_CANTCREAT`: the output could not be written).
pub const EXIT_DISK_FULL: i32 = 73;

/// The exit code of a node that stopped because its storage failed in
/// another way (74, the BSD `EX_IOERR`).
pub const EXIT_STORAGE_FAILED: i32 = 74;

/// Headers every node response carries.
pub const HEADER_NODE_ID: &str = "x-node-id";
pub const HEADER_NODE_ROLE: &str = "x-node-role";
/// kvlab's addition: which incarnation of the node answered (see fencing).
pub const HEADER_NODE_INCARNATION: &str = "x-node-incarnation";
/// kvlab's addition: the sender's term, on every request between nodes and
/// from the coordinator to a node, and the node's term on every answer. A
/// node refuses a request with a lower term (409 `stale term`) and adopts a
/// higher one (a leader steps down). Requests without it (a person's curl)
/// are not checked.
pub const HEADER_TERM: &str = "x-kvlab-term";

/// kvlab's addition: the framed wire, an HTTP/1.1 connection upgraded
/// (`GET /wire`, `Upgrade: kvlab-frames/1`) to carry the same requests and
/// answers as length-prefixed frames, without HTTP's per-request cost.
/// kvlab's own nodes offer it; a node that answers anything but 101 (a
/// student's node: 404) is spoken to in plain HTTP/JSON. See `http::wire`.
pub const WIRE_PATH: &str = "/wire";
/// The `Upgrade` token of the framed wire, with its version.
pub const WIRE_PROTOCOL: &str = "kvlab-frames/1";
/// The largest frame either side accepts: the largest body between
/// components plus room for the path and headers.
pub const WIRE_MAX_FRAME: usize = BATCH_BODY_BYTES + 64 * 1024;

/// `{"detail": ...}`: the error body of every component.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub detail: serde_json::Value,
}

/// The role a node plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Leader,
    Follower,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node's liveness as the coordinator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Process launched, not yet answering its health check.
    Starting,
    Alive,
    Dead,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Starting => "starting",
            NodeStatus::Alive => "alive",
            NodeStatus::Dead => "dead",
        }
    }
}

// ---------------------------------------------------------------------------
// Client-facing write and read (gateway and coordinator)
// ---------------------------------------------------------------------------

/// `POST /write` body, on the gateway, the coordinator and the leader's `/data`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteRequest {
    pub key: String,
    pub value: String,
}

/// 200 answer of the coordinator's `POST /write`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteResponse {
    pub status: String,
    pub key: String,
    pub value: String,
    pub version: u64,
    pub sync_acks: usize,
    pub quorum: usize,
    pub sync_replicated_to: Vec<String>,
    /// kvlab's addition: the position of this write in the replication log.
    #[serde(default)]
    pub seq: u64,
}

/// 200 answer of the coordinator's `GET /read/{key}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadResponse {
    pub key: String,
    pub value: String,
    pub version: u64,
    pub served_by: String,
    /// How many followers answered (always at least R).
    pub quorum_responses: usize,
    /// kvlab's addition: the log position of the write that made `version`
    /// (an upper bound if the serving follower restored it from a snapshot).
    #[serde(default)]
    pub seq: u64,
    /// kvlab's addition: the followers whose answers were counted: the read
    /// set, or substitutes for its unreachable members (see `substitutes`).
    #[serde(default)]
    pub answered_by: Vec<String>,
    /// kvlab's addition: each read set member that failed or was too slow to
    /// answer, and the follower asked instead. Absent when there were none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub substitutes: Vec<ReadSubstitute>,
    /// kvlab's addition: what this read guarantees. `linearizable` when
    /// W + R > N (it returns only committed versions, waiting if needed);
    /// `may_be_stale` when W + R <= N (the lab's stale reads).
    #[serde(default)]
    pub consistency: String,
    /// kvlab's addition: how long the read waited for the version it saw to
    /// be committed (held by W followers). Absent when it did not wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waited_for_commit_ms: Option<u64>,
}

/// A read set member that did not answer in time, and who answered instead.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReadSubstitute {
    pub node_id: String,
    pub reason: String,
    pub asked_instead: String,
}

// ---------------------------------------------------------------------------
// The coordinator's quorum errors: the `detail` of its 503 answers
// ---------------------------------------------------------------------------

/// The `error` of a write refused before the leader saw it (the leader is
/// down, or fewer than W followers are alive): the write did not happen.
pub const WRITE_QUORUM_NOT_AVAILABLE: &str = "Write quorum not available";
/// The `error` of a write the leader logged but fewer than W sync followers
/// acknowledged in time: its outcome is unknown.
pub const WRITE_QUORUM_NOT_MET: &str = "Write quorum not met";
/// The whole `detail` (a string, not an object: the lab's shape) of a read
/// refused because fewer than R followers are alive.
pub const READ_QUORUM_NOT_AVAILABLE: &str = "Read quorum not available";
/// The `error` of a read that got fewer than R answers.
pub const READ_QUORUM_NOT_MET: &str = "Read quorum not met";
/// kvlab's: the `error` of a read whose version is not yet committed
/// (W + R > N only; see `coordinator::reads`).
pub const READ_NOT_CONFIRMED: &str = "Read not confirmed";

/// 503 `Write quorum not available`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteQuorumNotAvailable {
    /// Always [`WRITE_QUORUM_NOT_AVAILABLE`].
    pub error: String,
    pub alive_followers: usize,
    pub required: usize,
    /// kvlab's addition: why, in words.
    #[serde(default)]
    pub cause: String,
}

impl WriteQuorumNotAvailable {
    pub fn new(alive_followers: usize, required: usize, cause: String) -> Self {
        WriteQuorumNotAvailable {
            error: WRITE_QUORUM_NOT_AVAILABLE.into(),
            alive_followers,
            required,
            cause,
        }
    }
}

/// 503 `Write quorum not met`. The write is in the leader's log and may
/// still reach every follower, so the client cannot know its outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteQuorumNotMet {
    /// Always [`WRITE_QUORUM_NOT_MET`].
    pub error: String,
    /// How many sync followers acknowledged (fewer than W, or too late).
    pub sync_acks: usize,
    /// kvlab's additions: W, and the version the write got.
    #[serde(default)]
    pub required: usize,
    #[serde(default)]
    pub version: u64,
    /// The sync followers that did not acknowledge in time, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<Vec<MissingAck>>,
    /// Why the acks did not count, when they came from a deposed term.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// What the client can conclude, in words.
    #[serde(default)]
    pub note: String,
}

/// 503 `Read quorum not met`: fewer than R followers answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadQuorumNotMet {
    /// Always [`READ_QUORUM_NOT_MET`].
    pub error: String,
    pub responses: usize,
    pub required: usize,
    /// kvlab's addition: each follower asked that failed, and why.
    #[serde(default)]
    pub failures: Vec<ReadFailure>,
}

/// A follower a read asked that did not answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadFailure {
    pub node_id: String,
    pub reason: String,
}

/// kvlab's 503 `Read not confirmed`: the read saw `version`, but it was not
/// held by W followers before the deadline, so returning it could let a
/// later read return an older version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadNotConfirmed {
    /// Always [`READ_NOT_CONFIRMED`].
    pub error: String,
    pub version: u64,
    /// The log position of that version, and the commit point it did not reach.
    pub seq: u64,
    pub commit_seq: u64,
    pub cause: String,
}

/// Each error above is the `detail` of an `http::ApiError`, which holds it
/// as JSON. A struct of plain fields always serializes, hence the `expect`.
macro_rules! error_detail {
    ($($body:ty),*) => {$(
        impl From<$body> for serde_json::Value {
            fn from(body: $body) -> Self {
                serde_json::to_value(body).expect("a struct of plain fields serializes")
            }
        }
    )*};
}
error_detail!(
    WriteQuorumNotAvailable,
    WriteQuorumNotMet,
    ReadQuorumNotMet,
    ReadNotConfirmed
);

// ---------------------------------------------------------------------------
// Gateway
// ---------------------------------------------------------------------------

/// The gateway's four counters, in `GET /stats` and `GET /`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GatewayMetrics {
    /// Every request that reached the gateway, refused ones included.
    pub total_requests: u64,
    /// Writes and reads the coordinator answered (whatever the status), as
    /// the original counts them: `/cluster-status` is not among them.
    pub forwarded_requests: u64,
    /// Requests refused with 429.
    pub rate_limited_requests: u64,
    /// Requests that failed because of the cluster: the coordinator was
    /// unreachable or answered with a 5xx.
    pub errors: u64,
    /// kvlab's addition: `/cluster-status` requests the coordinator answered.
    #[serde(default)]
    pub forwarded_status_requests: u64,
}

/// The rate limiter's settings and counters, in the gateway's `GET /stats`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RateLimiterStats {
    /// `fixed_window`, `sliding_window` or `token_bucket`.
    pub strategy: String,
    pub max_requests: u32,
    /// Whole seconds print as an integer (`60`, as the original's do), others
    /// as a fraction (`0.5`).
    #[serde(serialize_with = "whole_or_fraction")]
    pub window_seconds: f64,
    pub allowed_requests: u64,
    pub rejected_requests: u64,
    /// The clients (addresses) the limiter is tracking now, each with its
    /// quota, as the original lists them: an object keyed by address.
    #[serde(default)]
    pub clients: BTreeMap<String, RateLimitedClient>,
    /// kvlab's additions: the client table and its bound.
    #[serde(default)]
    pub tracked_clients: usize,
    #[serde(default)]
    pub max_tracked_clients: usize,
    /// Idle clients forgotten so far.
    #[serde(default)]
    pub evicted_clients: u64,
    /// New clients refused because the table was full of active ones.
    #[serde(default)]
    pub refused_table_full: u64,
}

/// One client in the rate limiter's `clients`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitedClient {
    /// Requests that count against the client's limit now.
    pub requests: u32,
    /// Requests it may still send now.
    pub remaining: u32,
    /// Whole seconds until its full quota is available again.
    pub reset_seconds: u64,
}

/// Writes a number of seconds as an integer when it is whole (`60`), and as
/// a fraction otherwise (`0.5`).
pub fn whole_or_fraction<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(v) {
        s.serialize_u64(*v as u64)
    } else {
        s.serialize_f64(*v)
    }
}

/// `GET /stats` on the gateway.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatewayStats {
    pub gateway: GatewayMetrics,
    /// `null` when rate limiting is off.
    pub rate_limiter: Option<RateLimiterStats>,
    /// Always `null`: the gateway forwards to one coordinator. (The
    /// original's field, kept so scripts that read it find it.)
    #[serde(default)]
    pub load_balancer: Option<serde_json::Value>,
    /// Which coordinator the gateway forwards to now (absent on a gateway
    /// inside `kvlab up`, which has only its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub following: Option<FollowedCoordinator>,
}

/// A gateway given several coordinators (`--coordinator URL1,URL2`): the
/// one it follows, as the last `/status` poll found it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FollowedCoordinator {
    /// The coordinator requests go to now.
    pub url: String,
    /// Its `control_plane.active.id`, when it says (empty otherwise).
    pub id: String,
    /// Its epoch (0: a coordinator without a control plane, or not polled
    /// yet).
    pub epoch: u64,
    /// Every coordinator the gateway knows, in the order given.
    pub coordinators: Vec<String>,
}

/// `GET /` on the gateway.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatewayInfo {
    pub service: String,
    /// The coordinator requests go to now.
    pub coordinator: String,
    pub rate_limiting: bool,
    pub metrics: GatewayMetrics,
    /// With several coordinators: which one it follows, and all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub following: Option<FollowedCoordinator>,
}

/// `GET /health` on the gateway.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceHealth {
    pub status: String,
    pub service: String,
}

/// The 429 body of a request the gateway's rate limiter refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TooManyRequests {
    /// Always `Too Many Requests`.
    pub error: String,
    /// Whole seconds until a retry can succeed (also the `Retry-After` header).
    pub retry_after: u64,
    pub message: String,
}

// ---------------------------------------------------------------------------
// Coordinator
// ---------------------------------------------------------------------------

/// One node in `GET /status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    pub node_id: String,
    pub url: String,
    pub status: NodeStatus,
    /// kvlab's additions.
    #[serde(default)]
    pub port: u16,
    #[serde(default)]
    pub incarnation: u64,
    #[serde(default)]
    pub pid: Option<u32>,
    /// `sync`, `async` or `read` membership of a follower (empty for the leader).
    #[serde(default)]
    pub sets: Vec<String>,
    /// kvlab's addition: `leader` or `follower` (roles change on failover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuorumView {
    #[serde(rename = "W")]
    pub w: usize,
    #[serde(rename = "R")]
    pub r: usize,
    /// Alive nodes, the leader included (the original's count).
    pub total_alive: usize,
    /// Alive followers only: the number W and R are compared with.
    #[serde(default)]
    pub alive_followers: usize,
    pub can_write: bool,
    pub can_read: bool,
}

/// `GET /status` on the coordinator (`/cluster-status` on the gateway).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusResponse {
    pub leader: Option<NodeView>,
    pub followers: Vec<NodeView>,
    pub quorum: QuorumView,
    /// kvlab's addition: where the coordinator's idea of who is alive comes
    /// from now: `registry` (its heartbeats), `direct-probe` (the registry
    /// does not answer; the coordinator asks each node's `/health`) or
    /// `unknown` (no answer from either yet).
    #[serde(default)]
    pub liveness: String,
    /// kvlab's addition: the current leadership term.
    #[serde(default)]
    pub term: u64,
    /// kvlab's addition: the state of leader failover (see [`FailoverView`]).
    #[serde(default)]
    pub failover: FailoverView,
    /// kvlab's addition: nodes whose log on disk was found damaged, and
    /// where their repair stands (see [`RepairView`]). Empty: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repairs: Vec<RepairView>,
    /// kvlab's addition: who is in charge of the cluster (see
    /// [`ControlPlaneView`]).
    #[serde(default)]
    pub control_plane: ControlPlaneView,
}

/// kvlab's addition to `/status`: a node that refused to serve its damaged
/// log and is repaired from the cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RepairView {
    pub node_id: String,
    /// `waiting` (out of the election until a healthy node leads) or
    /// `rebuilt` (its directory moved aside; it started empty and catches up
    /// from the leader).
    pub state: String,
    /// What its recovery found: the segment, the offset, the damage.
    pub found: String,
    /// Where its damaged directory was moved (kept for inspection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_to: Option<String>,
}

/// kvlab's addition to `/status`: where leader failover stands.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FailoverView {
    /// `none` (the leader is alive), `in_progress`, or `refused` (no alive
    /// follower holds every acknowledged write).
    pub state: String,
    /// The highest seq acknowledged to a client so far.
    pub acked_seq: u64,
    /// Whether `--unclean-failover` allows promoting a follower that lacks
    /// acknowledged writes.
    pub unclean_allowed: bool,
    /// When refused: the acknowledged seqs no alive follower holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_risk: Option<SeqRange>,
    /// When refused: why, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

/// An inclusive range of log positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqRange {
    pub from: u64,
    pub to: u64,
}

/// `GET /` on the coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CoordinatorInfo {
    pub service: String,
    /// The alive leader's node id (`"leader"`), as the original gives it.
    pub leader: Option<String>,
    /// The alive leader's URL.
    #[serde(default)]
    pub leader_url: Option<String>,
    pub follower_count: usize,
    pub can_write: bool,
    pub can_read: bool,
}

/// Optional body of `POST /spawn`. Fields left at their defaults are not
/// sent, so `SpawnRequest::of("follower-2")` is `{"node_id": "follower-2"}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SpawnRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// kvlab's addition: allow a new slot although the larger N would make
    /// W + R <= N (the sync and read sets could then miss each other).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub grow: bool,
    /// kvlab's addition: restart the slot `node_id` only if the coordinator
    /// has it; never create one (404 otherwise). The registry's auto-spawn
    /// sends it, so no name it heard of can become a new process.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub existing_only: bool,
}

impl SpawnRequest {
    /// Restart (or start) the slot `node_id`: the registry's auto-spawn.
    pub fn of(node_id: impl Into<String>) -> Self {
        SpawnRequest {
            node_id: Some(node_id.into()),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpawnResponse {
    pub status: String,
    pub node_id: String,
    pub url: String,
    #[serde(default)]
    pub incarnation: u64,
}

/// `POST /join` body: a node started by someone else (Compose, systemd,
/// Kubernetes) asks a coordinator run with `--runtime external` to take it in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub node_id: String,
    /// Where the coordinator and the other nodes reach this node.
    pub url: String,
}

/// `POST /join` answer: what the node must run with. The coordinator owns
/// the cluster's timing, so these win over the node's own flags.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinResponse {
    pub node_id: String,
    /// This process's number among all that have served `node_id`.
    pub incarnation: u64,
    /// The registry to heartbeat to, as the coordinator knows it.
    pub registry: Option<String>,
    pub sync_delay: f64,
    pub async_delay: f64,
    pub heartbeat_interval: f64,
    pub log_retain: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KillResponse {
    pub status: String,
    pub node_id: String,
    pub can_write: bool,
}

/// `POST /catchup` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CatchupRequest {
    pub node_id: String,
    #[serde(default)]
    pub url: Option<String>,
    /// kvlab's addition: which incarnation registered (the registry knows it).
    #[serde(default)]
    pub incarnation: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CatchupResponse {
    pub status: String,
    pub node_id: String,
    /// kvlab's addition: the log position the follower holds now.
    #[serde(default)]
    pub applied_seq: u64,
}

/// `POST /node-died` body (from the registry).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeDiedRequest {
    pub node_id: String,
    #[serde(default)]
    pub incarnation: Option<u64>,
    /// kvlab's addition: the registry view this notice comes from (see
    /// [`RegistryNodes::view_version`]); an older one than the coordinator
    /// applied is ignored.
    #[serde(default)]
    pub view_version: Option<u64>,
    #[serde(default)]
    pub registry_epoch: Option<u64>,
}

/// kvlab's addition, `POST /node-revived` (from the registry): a node that was
/// declared dead is heartbeating again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRevivedRequest {
    pub node_id: String,
    pub url: String,
    #[serde(default)]
    pub incarnation: Option<u64>,
    #[serde(default)]
    pub view_version: Option<u64>,
    #[serde(default)]
    pub registry_epoch: Option<u64>,
}

/// The coordinator's answer to `/node-died` and `/node-revived`. A notice is
/// a hint: the coordinator checks it against the registry's current view
/// (or the node itself) and says whether the table changed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NoticeAnswer {
    /// Always `acknowledged` (the lab's field).
    pub status: String,
    /// kvlab's additions: whether the table now agrees with the notice
    /// (the node is dead, or alive), and why (not).
    pub applied: bool,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusOnly {
    pub status: String,
}

// ---------------------------------------------------------------------------
// Registry
// ---------------------------------------------------------------------------

/// `POST /heartbeat` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node_id: String,
    pub port: u16,
    pub url: String,
    pub role: Role,
    /// kvlab's addition. A heartbeat from an older incarnation than the newest
    /// one the registry has seen is refused with 409: that process was replaced.
    #[serde(default)]
    pub incarnation: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRef {
    pub node_id: String,
    pub url: String,
    pub role: Role,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    pub status: String,
    pub nodes: Vec<NodeRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeregisterRequest {
    pub node_id: String,
    #[serde(default)]
    pub incarnation: Option<u64>,
}

/// One entry of the registry's `GET /nodes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegistryNode {
    pub node_id: String,
    pub url: String,
    pub role: Role,
    /// `alive` or `dead`.
    pub status: String,
    pub last_seen_seconds_ago: f64,
    #[serde(default)]
    pub incarnation: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegistryNodes {
    pub nodes: Vec<RegistryNode>,
    /// kvlab's additions. The view's version: it grows with every change
    /// (a node registered, declared dead, revived or deregistered), so a
    /// reader can tell a newer view from an older one.
    #[serde(default)]
    pub view_version: u64,
    /// Which registry process made the view (its start time in ms since
    /// the Unix epoch): versions of different epochs are not comparable.
    #[serde(default)]
    pub registry_epoch: u64,
    /// How long this registry has run: a node it never heard from in more
    /// than `timeout_seconds` is silent.
    #[serde(default)]
    pub uptime_seconds: f64,
    #[serde(default)]
    pub timeout_seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AliveNodes {
    pub nodes: Vec<NodeRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegistryInfo {
    pub service: String,
    pub total_nodes: usize,
    pub alive_nodes: usize,
    pub dead_nodes: usize,
}

// ---------------------------------------------------------------------------
// Node
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeHealth {
    pub status: String,
    pub node_id: String,
    pub role: Role,
    #[serde(default)]
    pub incarnation: u64,
    /// kvlab's addition: the highest term the node has seen.
    #[serde(default)]
    pub term: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node_id: String,
    pub role: Role,
    pub status: String,
    pub data_count: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStats {
    pub node_id: String,
    pub role: Role,
    /// kvlab's additions: the node's term and its term history,
    /// `[[term, first seq], ...]`.
    #[serde(default)]
    pub term: u64,
    #[serde(default)]
    pub term_history: Vec<(u64, u64)>,
    pub active_requests: u64,
    pub total_writes: u64,
    pub total_reads: u64,
    pub replications_sent: u64,
    pub replications_received: u64,
    pub data_count: usize,
    /// The leader's followers' URLs, as the original lists them; empty on
    /// a follower.
    pub followers: Vec<String>,
    /// The same followers with their replication progress (kvlab's).
    #[serde(default)]
    pub follower_progress: Vec<FollowerProgress>,
    /// kvlab's additions.
    pub applied_seq: u64,
    pub incarnation: u64,
    /// Calls this node answered on the framed wire (see [`WIRE_PATH`]),
    /// rather than as plain HTTP requests.
    #[serde(default)]
    pub wire_calls_served: u64,
    /// Where and how the node persists its log; absent when in-memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageStats>,
}

/// A durable node's storage, in `/stats`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StorageStats {
    pub data_dir: String,
    /// The `--fsync` policy: `always`, `interval:<ms>` or `never`.
    pub fsync: String,
    /// The highest seq known to be fsynced.
    pub durable_seq: u64,
    /// The seq of the newest snapshot (0: none yet).
    pub snapshot_seq: u64,
    pub fsyncs: u64,
    /// The seq the node recovered from its directory when it started.
    pub recovered_seq: u64,
    /// What recovery found, in words (torn tail, snapshot used, ...).
    pub recovery: String,
}

/// `GET /data/{key}` on a node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeValue {
    pub node_id: String,
    pub key: String,
    pub value: String,
    pub version: u64,
}

/// A stored value with its per-key version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned {
    pub value: String,
    pub version: u64,
}

/// `GET /data` on a node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeData {
    pub node_id: String,
    pub data: BTreeMap<String, Versioned>,
    pub count: usize,
}

/// `GET /snapshot` on a node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeSnapshot {
    pub data: BTreeMap<String, String>,
    pub versions: BTreeMap<String, u64>,
    /// kvlab's addition: the log position this snapshot reflects.
    #[serde(default)]
    pub applied_seq: u64,
}

// ---------------------------------------------------------------------------
// kvlab's own internal protocol: replication between leader and followers.
// ---------------------------------------------------------------------------

/// One write in the replication log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Cluster-wide position in the log, starting at 1, without gaps.
    pub seq: u64,
    /// The leadership term that wrote it (see `node::term`).
    pub term: u64,
    pub key: String,
    pub value: String,
    /// The key's version after this write.
    pub version: u64,
}

/// The leader's `POST /data` body: the coordinator's write path.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaderWriteRequest {
    pub key: String,
    pub value: String,
    /// The sync set, chosen by the coordinator: the write is acknowledged once
    /// each of these has acknowledged it.
    #[serde(default)]
    pub sync: Vec<PeerRef>,
    /// How long to wait for the sync acks.
    #[serde(default)]
    pub ack_timeout_ms: Option<u64>,
}

/// A follower named by id and incarnation: an ack from any other incarnation
/// of the same id does not count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRef {
    pub node_id: String,
    pub incarnation: u64,
}

/// The leader's answer to `POST /data`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaderWriteResponse {
    pub key: String,
    pub value: String,
    pub version: u64,
    pub seq: u64,
    /// Which sync followers acknowledged in time.
    pub acked_by: Vec<String>,
    /// Which sync followers did not, with the reason.
    pub missing: Vec<MissingAck>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingAck {
    pub node_id: String,
    pub reason: String,
}

/// The leader's `POST /batch/write` body: client writes gathered by the
/// coordinator while earlier ones were in flight. They share one sync set,
/// one lock, one log append and one fsync, which is where the speed comes
/// from; each still gets its own seq, version and answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaderBatchRequest {
    pub writes: Vec<KeyValue>,
    #[serde(default)]
    pub sync: Vec<PeerRef>,
    #[serde(default)]
    pub ack_timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// The leader's answer to `POST /batch/write`: one answer per write, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaderBatchResponse {
    pub results: Vec<LeaderWriteResponse>,
}

/// [`LeaderBatchResponse`] as the coordinator reads it: see
/// [`LeaderWriteReceipt`].
#[derive(Debug, Deserialize)]
pub struct LeaderBatchReceipt {
    pub results: Vec<LeaderWriteReceipt>,
}

/// One write of a [`LeaderBatchReceipt`]: a [`LeaderWriteResponse`] whose
/// echoed key and value must be there, as the protocol says, but are not
/// copied out: the coordinator answers its client with the key and value it
/// sent, which it still holds, instead of parsing a second copy of each
/// from every answer.
#[derive(Debug, Deserialize)]
pub struct LeaderWriteReceipt {
    #[serde(rename = "key")]
    _key: serde::de::IgnoredAny,
    #[serde(rename = "value")]
    _value: serde::de::IgnoredAny,
    pub version: u64,
    pub seq: u64,
    pub acked_by: Vec<String>,
    pub missing: Vec<MissingAck>,
}

/// [`LeaderBatchResponse`] as a leader writes it: the same JSON, byte for
/// byte, borrowed instead of copied. The keys and values are the log's own
/// entries, and every write of a batch shares one set of acks (one wait
/// covers the whole batch, see `node::writes`), so nothing is cloned per
/// write just to be encoded and dropped.
#[derive(Debug, Serialize)]
pub struct LeaderBatchAnswer<'a> {
    pub results: Vec<LeaderWriteAnswer<'a>>,
}

/// One write of a [`LeaderBatchAnswer`]: a [`LeaderWriteResponse`], borrowed.
#[derive(Debug, Serialize)]
pub struct LeaderWriteAnswer<'a> {
    pub key: &'a str,
    pub value: &'a str,
    pub version: u64,
    pub seq: u64,
    pub acked_by: &'a [String],
    pub missing: &'a [MissingAck],
}

/// A node's `POST /batch/read` body: keys the coordinator gathered for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadBatchRequest {
    pub keys: Vec<String>,
}

/// A node's answer to `POST /batch/read`: one entry per key, in order;
/// `null` where the node does not hold the key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadBatchResponse {
    pub node_id: String,
    pub values: Vec<Option<Versioned>>,
    /// For each key, the seq of the log entry that wrote the value (0 where
    /// the key is absent); an upper bound for keys restored from a snapshot.
    /// The coordinator compares it with the commit point (see
    /// `coordinator::reads`).
    #[serde(default)]
    pub seqs: Vec<u64>,
    /// The term of the leader that last reconciled the follower's log with
    /// its own (0: none yet). Only a follower reconciled in the current term
    /// is known to hold no entry that term's leader will cut, so the
    /// coordinator counts only its answers when reads must be linearizable.
    #[serde(default)]
    pub term: u64,
}

/// The leader's `PUT /replication/peers`: the full set of followers to
/// replicate to, pushed by the coordinator whenever membership changes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerSet {
    pub peers: Vec<PeerConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerConfig {
    pub node_id: String,
    pub url: String,
    pub incarnation: u64,
    /// Sync followers get the sync delay, the others the async delay.
    pub sync: bool,
}

/// Replication progress of one follower, as the leader sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FollowerProgress {
    pub node_id: String,
    pub url: String,
    pub incarnation: u64,
    pub sync: bool,
    /// Highest sequence number the follower holds contiguously.
    pub acked_seq: u64,
    /// The last error talking to it, if the last attempt failed.
    pub error: Option<String>,
    /// The last answer it gave that breaks the node protocol
    /// (docs/node-protocol.md), and how many such answers it gave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub violation: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub violations: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The leader's `POST /replication/wait` body: answer once the follower
/// `node_id` has acknowledged `seq` (by default, everything the leader has
/// persisted so far), or 504 after `timeout_ms` (default 10 s). The answer is
/// the follower's [`FollowerProgress`]. The coordinator uses it to narrate
/// async replication and to wait for a catch-up; tests use it too.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WaitRequest {
    pub node_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// One replication link as the leader sees it (`GET /replication/links`):
/// what the follower acknowledged, and the entries on their way to it, so
/// the live view can draw them travelling.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkView {
    pub node_id: String,
    pub incarnation: u64,
    pub sync: bool,
    /// The delay of this link (sync or async), in milliseconds.
    pub delay_ms: u64,
    pub acked_seq: u64,
    /// The leader's persisted seq: what the follower should reach.
    pub leader_seq: u64,
    /// Entries the follower lacks: `leader_seq - acked_seq`.
    pub lag_entries: u64,
    /// Age of the oldest entry it lacks, in seconds (0 when caught up).
    pub lag_seconds: f64,
    /// The newest entries not yet acknowledged (at most [`LINK_IN_FLIGHT_SHOWN`]).
    pub in_flight: Vec<InFlight>,
    pub error: Option<String>,
}

/// How many unacknowledged entries `/replication/links` lists per link.
pub const LINK_IN_FLIGHT_SHOWN: usize = 40;

/// An entry on its way to a follower: its seq and how long ago it was appended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InFlight {
    pub seq: u64,
    pub age_ms: u64,
}

/// A follower's `POST /replicate` body: a batch of consecutive entries.
/// The follower reads owned entries (`Vec<Entry>`); the leader sends them
/// already encoded (`AppendRequest<&RawValue>`, the JSON array of the
/// entries), so a batch going to three followers is encoded once, from its
/// log, without copying a value (see `node::replication`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppendRequest<Entries = Vec<Entry>> {
    pub term: u64,
    /// The incarnation of the follower the leader means to talk to.
    pub to_incarnation: u64,
    pub entries: Entries,
}

/// The coordinator's `POST /forget` to the registry: node ids that are not
/// members of its cluster (removed, or never its own). The registry drops
/// their records, so its table holds the cluster and little else.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForgetRequest {
    pub node_ids: Vec<String>,
}

/// The registry's answer to `POST /forget`: the ids it held and dropped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForgetResponse {
    pub forgotten: Vec<String>,
}

/// The coordinator's `POST /missing` to the registry: slots of its table
/// that are dead and that the registry has no record of (a registry that
/// restarted while they were down hears no heartbeat of theirs, ever). The
/// registry records them dead and, with `--auto-spawn`, has them replaced
/// after its spawn delay, as if it had seen them die.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MissingRequest {
    pub nodes: Vec<MissingNode>,
}

/// One dead slot, as the coordinator's table has it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MissingNode {
    pub node_id: String,
    pub url: String,
    pub role: Role,
    /// The slot's last incarnation: a heartbeat of an older one is fenced.
    pub incarnation: u64,
}

/// The registry's answer to `POST /missing`: the ids it had no record of
/// and now holds as dead.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MissingResponse {
    pub recorded: Vec<String>,
}

/// A follower's `POST /replicate/snapshot` body: one chunk of the whole
/// state at `seq`, used only when the leader no longer retains the entries
/// the follower lacks. The state is sent in chunks (`chunk` 0, 1, 2...,
/// each under the route's body limit, whatever the store's size); the
/// follower installs it once the `last` one is in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstallSnapshot {
    pub term: u64,
    pub to_incarnation: u64,
    pub seq: u64,
    /// This chunk's keys (the chunks of a snapshot hold distinct keys).
    pub data: BTreeMap<String, Versioned>,
    /// The leader's term history; the follower keeps the part up to `seq`.
    #[serde(default)]
    pub history: Vec<(u64, u64)>,
    /// Which chunk this is, from 0.
    #[serde(default)]
    pub chunk: u64,
    /// Whether it is the last chunk (a snapshot in one body is chunk 0, last).
    #[serde(default = "yes")]
    pub last: bool,
}

fn yes() -> bool {
    true
}

/// A follower's answer to `/replicate` and `/replicate/snapshot`, and `GET /replicate`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppendResponse {
    pub node_id: String,
    pub incarnation: u64,
    /// Highest sequence number held contiguously after this request.
    pub acked_seq: u64,
    /// The node's term, and the term of its entry at `acked_seq` (0: none).
    #[serde(default)]
    pub term: u64,
    #[serde(default)]
    pub last_term: u64,
    /// The node's term history, `[[term, first seq], ...]`: the leader
    /// compares it with its own to find where the logs part.
    #[serde(default)]
    pub history: Vec<(u64, u64)>,
    /// The node's role (a leader of the same term refuses entries).
    #[serde(default = "follower_role")]
    pub role: Role,
}

fn follower_role() -> Role {
    Role::Follower
}

/// A follower's `POST /replicate/truncate` body: the leader found that the
/// follower's log parts from its own after `after_seq`; the follower drops
/// everything after it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TruncateRequest {
    pub term: u64,
    pub to_incarnation: u64,
    pub after_seq: u64,
}

/// A node's `POST /admin/promote` body (from the coordinator): become the
/// leader of `term`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromoteRequest {
    pub term: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromoteResponse {
    pub node_id: String,
    pub term: u64,
    /// The last seq of the log the new leader starts from.
    pub last_seq: u64,
}

// ----- The control plane (kvlab's own design): coordinator epochs, adoption,
// active and standby coordinators.

/// The header on every request a coordinator sends a node: its **epoch**, a
/// number that grows with every coordinator that takes charge (a restart of
/// the embedded coordinator, or a standby winning etcd's lease). A node keeps
/// the highest epoch it has seen on disk and refuses a lower one with 409
/// [`STALE_COORDINATOR`], so a deposed coordinator that wakes up cannot
/// reconfigure anything. Requests without it (a node's own, curl's) are not
/// checked.
pub const HEADER_COORDINATOR_EPOCH: &str = "x-kvlab-coordinator-epoch";

/// The `detail` of a node's 409 to a coordinator whose epoch is older than
/// one the node has already obeyed.
pub const STALE_COORDINATOR: &str = "Stale coordinator epoch";

/// The `detail` of a standby coordinator's 503: it does not serve the
/// cluster; [`HEADER_ACTIVE_COORDINATOR`] names the one that does, when known.
pub const NOT_ACTIVE_COORDINATOR: &str = "Not the active coordinator";

/// On a standby's answers: the URL of the active coordinator, when known.
pub const HEADER_ACTIVE_COORDINATOR: &str = "x-kvlab-active-coordinator";

/// `--orphan-timeout`'s default, in seconds: how long a node whose
/// coordinator is gone waits to be adopted before it stops by itself.
pub const DEFAULT_ORPHAN_TIMEOUT_S: u64 = 60;

/// A node's `POST /admin/adopt` body: a coordinator (a restarted one, or a
/// standby that took over) takes charge of a node that is already running,
/// instead of starting it again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdoptRequest {
    /// The adopting coordinator's epoch (also in
    /// [`HEADER_COORDINATOR_EPOCH`]).
    pub epoch: u64,
    /// The incarnation the coordinator knows this process by; a node with
    /// another one answers 409 (it is not the process the coordinator means).
    pub incarnation: u64,
    /// The process the node now watches instead of its parent: when it is
    /// gone for `--orphan-timeout` and nobody adopted the node, the node
    /// stops (same machine only; `None` for a coordinator elsewhere).
    #[serde(default)]
    pub coordinator_pid: Option<u32>,
    /// For the node's log: who adopted it.
    #[serde(default)]
    pub coordinator_url: String,
}

/// The answer to `POST /admin/adopt`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdoptResponse {
    pub node_id: String,
    pub incarnation: u64,
    pub role: Role,
    /// The node's term: an adopting coordinator never goes below it.
    pub term: u64,
    /// The highest coordinator epoch the node has obeyed (now `epoch`).
    pub coordinator_epoch: u64,
    pub pid: u32,
}

/// One coordinator process, as `/status`'s `control_plane` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CoordinatorRef {
    /// `--coordinator-id` (default: `coordinator-<port>`).
    pub id: String,
    pub url: String,
    #[serde(default)]
    pub pid: Option<u32>,
}

/// kvlab's addition to `/status`: who is in charge of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ControlPlaneView {
    /// `embedded` (one coordinator; its state in its data directory) or
    /// `etcd` (several coordinators share the cluster through etcd).
    pub mode: String,
    /// Where the control state lives: a file path, or the etcd endpoints.
    pub store: String,
    /// The coordinator in charge now, when known.
    pub active: Option<CoordinatorRef>,
    /// The active coordinator's epoch.
    pub epoch: u64,
    /// Coordinators waiting to take over (etcd mode).
    #[serde(default)]
    pub standbys: Vec<CoordinatorRef>,
    /// Seconds of etcd's lease (etcd mode): how long a dead active
    /// coordinator keeps the others waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ttl_s: Option<u64>,
    /// The answering coordinator's own view: `active`, `standby` or
    /// `deposed` (it lost its lease and no longer acts).
    pub this: String,
}

/// `GET /status` on a standby coordinator (etcd mode): it serves no
/// cluster, so only who is in charge, and a note saying where to go.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StandbyStatus {
    pub control_plane: ControlPlaneView,
    pub note: String,
}

/// `GET /health` on a coordinator in etcd mode: up, and in which role
/// (`active`, `standby` or `deposed`; see [`ControlPlaneView::this`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CoordinatorHealth {
    pub status: String,
    pub this: String,
}

/// `POST /admin/pause-heartbeats`: the fault hook for network blips.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PauseHeartbeats {
    pub seconds: f64,
}

#[cfg(test)]
mod tests {
    //! Course scripts read these bodies: their JSON must stay what it was
    //! when they were written by hand.
    use serde_json::{json, Value};

    use super::*;

    #[test]
    fn a_borrowed_batch_answer_is_the_owned_one_byte_for_byte() {
        let acked_by = vec!["follower-1".to_string()];
        let missing = vec![MissingAck {
            node_id: "follower-2".into(),
            reason: "no ack before the write's deadline".into(),
        }];
        let owned = LeaderBatchResponse {
            results: (1..=2)
                .map(|seq| LeaderWriteResponse {
                    key: format!("k{seq}"),
                    value: "v \"quoted\"".into(),
                    version: 3,
                    seq,
                    acked_by: acked_by.clone(),
                    missing: missing.clone(),
                })
                .collect(),
        };
        let keys = ["k1".to_string(), "k2".to_string()];
        let borrowed = LeaderBatchAnswer {
            results: (1..=2)
                .map(|seq| LeaderWriteAnswer {
                    key: &keys[seq as usize - 1],
                    value: "v \"quoted\"",
                    version: 3,
                    seq,
                    acked_by: &acked_by,
                    missing: &missing,
                })
                .collect(),
        };
        assert_eq!(
            serde_json::to_string(&borrowed).unwrap(),
            serde_json::to_string(&owned).unwrap()
        );
    }

    #[test]
    fn a_receipt_needs_the_echo_but_keeps_only_what_the_coordinator_uses() {
        let full = json!({"results": [{"key": "k", "value": "v \\u00e9", "version": 2, "seq": 9,
            "acked_by": ["follower-1"], "missing": []}]});
        let receipt: LeaderBatchReceipt = serde_json::from_value(full.clone()).unwrap();
        let one = &receipt.results[0];
        assert_eq!((one.version, one.seq), (2, 9));
        assert_eq!(one.acked_by, ["follower-1"]);
        // The owned type reads the same answer: the two stay one protocol.
        serde_json::from_value::<LeaderBatchResponse>(full.clone()).unwrap();
        for field in ["key", "value", "version", "acked_by"] {
            let mut partial = full.clone();
            partial["results"][0].as_object_mut().unwrap().remove(field);
            let err = serde_json::from_value::<LeaderBatchReceipt>(partial).unwrap_err();
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn quorum_errors_keep_their_shapes() {
        let v = Value::from(WriteQuorumNotAvailable::new(1, 2, "why".into()));
        assert_eq!(
            v,
            json!({"error": "Write quorum not available", "alive_followers": 1,
                   "required": 2, "cause": "why"})
        );
        let missing = vec![MissingAck {
            node_id: "follower-1".into(),
            reason: "timeout".into(),
        }];
        let v = Value::from(WriteQuorumNotMet {
            error: WRITE_QUORUM_NOT_MET.into(),
            sync_acks: 1,
            required: 2,
            version: 7,
            missing: Some(missing),
            cause: None,
            note: "n".into(),
        });
        assert_eq!(
            v,
            json!({"error": "Write quorum not met", "sync_acks": 1, "required": 2,
                   "version": 7, "note": "n",
                   "missing": [{"node_id": "follower-1", "reason": "timeout"}]})
        );
        let v = Value::from(ReadQuorumNotMet {
            error: READ_QUORUM_NOT_MET.into(),
            responses: 1,
            required: 2,
            failures: vec![ReadFailure {
                node_id: "follower-3".into(),
                reason: "refused".into(),
            }],
        });
        assert_eq!(
            v,
            json!({"error": "Read quorum not met", "responses": 1, "required": 2,
                   "failures": [{"node_id": "follower-3", "reason": "refused"}]})
        );
        let v = Value::from(ReadNotConfirmed {
            error: READ_NOT_CONFIRMED.into(),
            version: 3,
            seq: 9,
            commit_seq: 8,
            cause: "c".into(),
        });
        assert_eq!(
            v,
            json!({"error": "Read not confirmed", "version": 3, "seq": 9,
                   "commit_seq": 8, "cause": "c"})
        );
    }

    #[test]
    fn registry_and_wait_requests_send_only_what_they_set() {
        let spawn = serde_json::to_value(SpawnRequest::of("follower-2")).unwrap();
        assert_eq!(spawn, json!({"node_id": "follower-2"}));
        let grow = SpawnRequest {
            grow: true,
            ..Default::default()
        };
        assert_eq!(serde_json::to_value(grow).unwrap(), json!({"grow": true}));
        let wait = WaitRequest {
            node_id: "follower-1".into(),
            seq: None,
            timeout_ms: Some(20_000),
        };
        assert_eq!(
            serde_json::to_value(wait).unwrap(),
            json!({"node_id": "follower-1", "timeout_ms": 20_000})
        );
        let died = NodeDiedRequest {
            node_id: "follower-1".into(),
            incarnation: Some(4),
            view_version: Some(12),
            registry_epoch: Some(99),
        };
        assert_eq!(
            serde_json::to_value(died).unwrap(),
            json!({"node_id": "follower-1", "incarnation": 4, "view_version": 12,
                   "registry_epoch": 99})
        );
    }
}

// ---------------------------------------------------------------------------
// kvlab's own fault hooks (`kvlab check`'s nemesis, the live view)
// ---------------------------------------------------------------------------

/// The header a node sends on every request to say who it is, so that a
/// peer's fault hooks can tell who sent it.
pub const HEADER_FROM: &str = "x-kvlab-from";

/// The longest fault a hook accepts, in seconds.
pub const MAX_FAULT_SECONDS: f64 = 3600.0;
/// The longest extra fsync delay the slow-disk hook accepts, in ms.
pub const MAX_SLOW_DISK_MS: u64 = 60_000;

/// The current term named in a node's `stale term` refusal (409), if
/// `detail` is one.
pub fn stale_term_in(detail: &serde_json::Value) -> Option<u64> {
    (detail["error"] == "stale term")
        .then(|| detail["term"].as_u64())
        .flatten()
}

/// Which traffic a fault touches, seen from the faulted node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Both ways.
    #[default]
    Both,
    /// Only what the peers send to the node.
    In,
    /// Only what the node sends to the peers.
    Out,
}

impl Direction {
    /// Does it touch what the peers send to the node?
    pub fn inbound(self) -> bool {
        self != Direction::Out
    }
    /// Does it touch what the node sends to the peers?
    pub fn outbound(self) -> bool {
        self != Direction::In
    }
}

/// `POST /admin/partition` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionRequest {
    pub peers: Vec<String>,
    pub seconds: f64,
    /// `both` (the default), `in` or `out`: one-way partitions need netns
    /// hosts (`kvlab up --hosts netns`); a node's own hook drops both ways.
    #[serde(default, skip_serializing_if = "is_both")]
    pub direction: Direction,
}

fn is_both(d: &Direction) -> bool {
    *d == Direction::Both
}

/// `POST /admin/slow-disk` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlowDiskRequest {
    pub ms: u64,
    pub seconds: f64,
}

/// `POST /admin/power-cut` body (a node started with the hidden
/// `--simulate-power-loss`): with `tear`, the node's next log write is torn
/// by the cut; without, the node loses its unsynced writes at once.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PowerCutRequest {
    #[serde(default)]
    pub tear: bool,
}

/// A fault's length, checked as every hook checks it (0 heals at once);
/// the error is the reason of the 400.
pub fn check_seconds(seconds: f64) -> Result<std::time::Duration, String> {
    if !seconds.is_finite() || !(0.0..=MAX_FAULT_SECONDS).contains(&seconds) {
        return Err(format!(
            "seconds must be a number between 0 and {MAX_FAULT_SECONDS}"
        ));
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

impl PartitionRequest {
    /// How long the partition lasts, or why the request is refused.
    pub fn validate(&self) -> Result<std::time::Duration, String> {
        check_seconds(self.seconds)
    }

    /// Refuses a one-way partition: an in-process hook holds a request
    /// whichever way it goes. Real packets can be dropped one way only on
    /// netns hosts (`kvlab up --hosts netns`).
    pub fn check_both_ways(&self) -> Result<(), String> {
        if is_both(&self.direction) {
            return Ok(());
        }
        Err(
            "one-way partitions (direction in or out) need netns hosts (kvlab up --hosts netns); \
             process hosts drop both ways"
                .into(),
        )
    }

    /// Does this request heal rather than cut?
    pub fn heals(&self) -> bool {
        self.seconds == 0.0 || self.peers.is_empty()
    }
}

impl SlowDiskRequest {
    /// How long the slow disk lasts, or why the request is refused.
    pub fn validate(&self) -> Result<std::time::Duration, String> {
        if self.ms > MAX_SLOW_DISK_MS {
            return Err(format!("ms must be at most {MAX_SLOW_DISK_MS}"));
        }
        check_seconds(self.seconds)
    }

    /// Does this request heal rather than slow down?
    pub fn heals(&self) -> bool {
        self.seconds == 0.0 || self.ms == 0
    }
}

/// What netem does to a link's packets (`POST /admin/network/{id}`).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Netem {
    #[serde(default)]
    pub delay_ms: f64,
    #[serde(default)]
    pub jitter_ms: f64,
    #[serde(default)]
    pub loss_percent: f64,
}

impl Netem {
    pub fn is_none(&self) -> bool {
        self.delay_ms == 0.0 && self.jitter_ms == 0.0 && self.loss_percent == 0.0
    }

    /// Refuses what netem would refuse, in the API's words.
    pub fn validate(&self) -> Result<(), String> {
        let ok = |x: f64, max: f64| x.is_finite() && (0.0..=max).contains(&x);
        if !ok(self.delay_ms, 60_000.0) || !ok(self.jitter_ms, 60_000.0) {
            return Err("delay_ms and jitter_ms must be between 0 and 60000".into());
        }
        if !ok(self.loss_percent, 100.0) {
            return Err("loss_percent must be between 0 and 100".into());
        }
        Ok(())
    }
}

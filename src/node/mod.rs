//! A storage node: the leader or one follower, each its own OS process.
//!
//! - The **leader** takes writes from the coordinator (`POST /data`, or
//!   `POST /batch/write` for several; see [`writes`]), gives
//!   each the next log position and the key's next version, and streams the
//!   log to every follower it was told about (see [`replication`]). It answers
//!   a write once each follower of the write's sync set has acknowledged it.
//! - A **follower** applies the leader's entries in log order
//!   (`POST /replicate`) and serves reads (`GET /data/{key}`, or
//!   `POST /batch/read` for several).
//!
//! Both heartbeat to the registry (see [`heartbeat`]) and tag every answer
//! with `X-Node-ID`, `X-Node-Role`, `X-Node-Incarnation` and `X-Kvlab-Term`.
//!
//! The role is not fixed: the coordinator promotes a follower to leader with
//! a new term (`POST /admin/promote`), and a leader that hears of a higher
//! term steps down at once (see [`leadership`] and [`term`]). The follower's
//! side of replication, including the truncation of a diverged log, is in
//! [`follower`].
//!
//! The incarnation is a number the coordinator gives each process it starts.
//! A request meant for another incarnation of this node id is refused with
//! 409: that is how a replaced process is fenced out.

pub mod command_line;
pub mod durable;
pub mod faults;
mod follower;
mod heartbeat;
mod join;
pub mod leadership;
pub mod log;
pub mod metrics;
mod replication;
pub mod store;
pub mod supervision;
pub mod term;
mod writes;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use clap::Parser;
use serde_json::json;
use tokio::sync::watch;

use crate::api::{self, *};
use crate::http::{validate_key_value, ApiError, ApiJson, ApiPath};
use crate::storage::{FsyncPolicy, Recovered};
use durable::Durability;
use log::ReplicationLog;
use replication::Peer;
use store::Store;
use term::{TermFile, TermHistory};

/// `kvlab node`: normally started by the coordinator, not by hand.
#[derive(Debug, Clone, Parser)]
pub struct Args {
    /// This node's id: `leader` or `follower-<n>`.
    #[arg(long)]
    pub id: String,
    /// Port to listen on.
    #[arg(long)]
    pub port: u16,
    /// Whether this node takes writes (`leader`) or receives them (`follower`).
    #[arg(long, value_enum, default_value = "follower")]
    pub role: RoleArg,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// The registry to heartbeat to; none means no heartbeats.
    #[arg(long)]
    pub registry: Option<String>,
    /// Which process this is among all that have served this id.
    #[arg(long, default_value_t = 1)]
    pub incarnation: u64,
    /// Leader only: delay of each entry to a sync follower, in seconds.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.5)]
    pub sync_delay: f64,
    /// Leader only: delay of each entry to an async follower, in seconds.
    #[arg(long, allow_negative_numbers = true, default_value_t = 5.0)]
    pub async_delay: f64,
    /// Leader only: how many log entries to keep for catching followers up.
    #[arg(long, default_value_t = 100_000)]
    pub log_retain: usize,
    /// Seconds between heartbeats.
    #[arg(long, allow_negative_numbers = true, default_value_t = 2.0)]
    pub heartbeat_interval: f64,
    /// Seconds an outgoing connection may take to open. The coordinator
    /// raises it when links carry the lab's delays as real latency
    /// (`--lab-delays netem`): a SYN on a 5 s link takes 5 s.
    #[arg(
        long,
        allow_negative_numbers = true,
        default_value_t = 2.0,
        hide = true
    )]
    pub connect_timeout: f64,
    /// How this node, as leader, speaks to its followers: the framed wire
    /// where they offer it, or plain HTTP/JSON (`http`).
    #[arg(long, value_enum, default_value_t)]
    pub internal_wire: crate::http::wire::Mode,
    /// Persist the log and state here (created if missing). Without it the
    /// node keeps everything in memory and loses it when it stops.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// When the log is fsynced: `always` (group commit; the ack waits for
    /// the fsync), `interval` (every --fsync-interval-ms) or `never`.
    #[arg(long, value_enum, default_value = "always")]
    pub fsync: FsyncPolicy,
    /// The period of `--fsync interval`, in milliseconds.
    #[arg(long, default_value_t = 5)]
    pub fsync_interval_ms: u64,
    /// Snapshot the state (and truncate the log) every this many entries;
    /// 0 never does.
    #[arg(long, default_value_t = crate::storage::StorageConfig::DEFAULT_SNAPSHOT_EVERY)]
    pub snapshot_every: u64,
    /// Test switch: keep the log's unsynced writes in memory, so that a kill
    /// loses them as a power cut would; `POST /admin/power-cut` tears one
    /// (see `storage::power`).
    #[arg(long, hide = true)]
    pub simulate_power_loss: bool,
    /// Join the coordinator at URL (one run with `--runtime external`)
    /// instead of being started by it: for nodes that Compose, systemd or
    /// Kubernetes start. The coordinator gives the incarnation, the delays
    /// and the registry (see [`join`]). Several URLs separated by commas:
    /// the active one of a cluster's coordinators (etcd mode).
    #[arg(long, value_name = "URL[,URL...]")]
    pub join: Option<String>,
    /// The URL the coordinator and the other nodes reach this node at
    /// (default `http://<host>:<port>`, https where it speaks TLS): needed
    /// when `--host` is 0.0.0.0.
    #[arg(long, value_name = "URL")]
    pub advertise: Option<String>,
    #[command(flatten)]
    pub secret: crate::auth::SecretArgs,
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
    /// Test only: break this node on purpose, `KIND` or `KIND@NODE-ID` (see
    /// `faults::Broken`). From the environment, so that every node of a
    /// `kvlab up` started with it inherits it.
    /// The process that supervises this node (the coordinator that started
    /// it): once it has been gone for --orphan-timeout and no coordinator
    /// adopted the node, the node stops (see `supervision`). Such a node
    /// ignores SIGINT: a Ctrl-C in the terminal reaches its coordinator,
    /// which stops its nodes in order.
    #[arg(long, value_name = "PID")]
    pub supervisor_pid: Option<u32>,
    /// Seconds a node whose supervisor is gone keeps running, waiting to be
    /// adopted by a restarted coordinator, before it stops by itself.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_ORPHAN_TIMEOUT)]
    pub orphan_timeout: u64,
    #[arg(
        long,
        hide = true,
        env = "KVLAB_TEST_BREAK",
        value_name = "KIND[@NODE]"
    )]
    pub test_break: Option<String>,
}

/// `--orphan-timeout`'s default, in seconds.
pub const DEFAULT_ORPHAN_TIMEOUT: u64 = api::DEFAULT_ORPHAN_TIMEOUT_S;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    Leader,
    Follower,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Leader => Role::Leader,
            RoleArg::Follower => Role::Follower,
        }
    }
}

/// Counters reported by `/stats`.
#[derive(Debug, Default)]
pub struct Stats {
    pub active_requests: AtomicU64,
    pub total_writes: AtomicU64,
    pub total_reads: AtomicU64,
    pub replications_sent: AtomicU64,
    pub replications_received: AtomicU64,
    /// Snapshots the leader sent to followers its log no longer covers.
    pub snapshots_sent: AtomicU64,
}

/// The data a node holds: its state, its log and its leadership. One lock
/// guards them so that a write's log position, its term and its effect on
/// the state are taken atomically (a leader that steps down appends nothing
/// after); it is never held across an await. Followers keep the log too, so
/// that a promoted follower can stream from it.
pub struct Core {
    pub store: Store,
    pub log: ReplicationLog,
    pub terms: Terms,
}

/// The node's role and terms (see [`term`]).
#[derive(Debug, Clone)]
pub struct Terms {
    pub role: Role,
    /// The highest term this node has seen.
    pub term: u64,
    /// Which term wrote which part of the log.
    pub history: TermHistory,
}

pub struct NodeState {
    pub id: String,
    pub incarnation: u64,
    pub url: String,
    pub port: u16,
    pub core: Mutex<Core>,
    log_retain: usize,
    /// Writers of the term file take turns (see `leadership`).
    term_file_lock: Mutex<()>,
    pub stats: Stats,
    pub http: reqwest::Client,
    /// The same client's calls to followers, framed where they offer it.
    pub wire: crate::http::wire::Client,
    sync_delay: Duration,
    async_delay: Duration,
    /// The persisted seq: the highest seq the node's own log has completed
    /// (every seq, when in-memory). What a follower acks, and what an
    /// election compares. Not to be confused with the log's `appended_seq`
    /// (appended, maybe not yet on disk), which can be ahead of it.
    persisted_seq: watch::Sender<u64>,
    /// The streamable seq: how far the leader's streams may send. It runs
    /// ahead of the persisted seq on a leader only: a leader streams a batch
    /// as soon as it has appended it, so the followers' fsyncs run while
    /// its own does (see `writes`). Everywhere else it equals the persisted
    /// seq.
    streamable_seq: watch::Sender<u64>,
    /// The durable log, unless the node runs in memory.
    pub durability: Option<Durability>,
    /// A follower applies and persists one replication request at a time,
    /// so that when it answers "I hold up to seq S", S is on its disk. The
    /// lock also holds the chunks of a snapshot being received.
    replicate_lock: tokio::sync::Mutex<follower::Receiving>,
    /// The highest term whose leader has checked this follower's log against
    /// its own (a handshake, then an append, a truncation or a snapshot), so
    /// that the log is a prefix of that leader's. 0 until then. Reads carry
    /// it: a follower that came back holding entries the current leader will
    /// cut must not have them counted before it is reconciled (see
    /// `coordinator::reads`).
    reconciled_term: AtomicU64,
    peers: Mutex<HashMap<String, Arc<Peer>>>,
    /// The streams' last encoded run of entries (see
    /// [`replication::SharedEncoding`]).
    encoded: replication::SharedEncoding,
    /// Heartbeats are skipped until then (the network-blip fault hook).
    pub heartbeats_paused_until: Mutex<Option<Instant>>,
    /// Signalled to stop the node.
    pub shutdown: tokio::sync::Notify,
    /// The process's exit code once stopped: 0, or why storage stopped it
    /// (`api::EXIT_DISK_FULL`, `api::EXIT_STORAGE_FAILED`). The first reason wins.
    pub exit_code: AtomicI32,
    pub registry: Option<String>,
    /// The coordinator's epoch, adoption and the orphan rule (see [`supervision`]).
    pub supervision: supervision::Supervision,
}

/// Moves a seq watch up to `seq`, never down: appends complete in order, but
/// the tasks that learn it may run in any order.
fn raise(watch: &watch::Sender<u64>, seq: u64) {
    watch.send_if_modified(|current| {
        let grew = seq > *current;
        if grew {
            *current = seq;
        }
        grew
    });
}

impl NodeState {
    /// A node holding what recovery found (`storage`, with the term file),
    /// or empty when in-memory.
    pub fn new(
        args: &Args,
        storage: Option<(Durability, Recovered)>,
        term_file: TermFile,
    ) -> Arc<NodeState> {
        let (durability, store, log, tail) = match storage {
            None => (
                None,
                Store::default(),
                ReplicationLog::new(args.log_retain),
                vec![],
            ),
            Some((d, recovered)) => {
                let seq = recovered.state.seq;
                let term = recovered.state.term;
                let tail = recovered.tail;
                let store = Store::recovered(seq, recovered.state.data);
                let log = ReplicationLog::recovered(tail.clone(), seq, args.log_retain);
                (Some(d), store, log, vec![(seq, term, tail)])
            }
        };
        let mut terms = Terms {
            role: args.role.into(),
            term: term_file.term,
            history: term_file.history,
        };
        for (seq, term, tail) in tail {
            leadership::recover_history(&mut terms, seq, term, &tail);
        }
        if terms.role == Role::Leader {
            // A leader started by hand (no coordinator to promote it).
            leadership::start_as_leader(&mut terms, store.applied_seq());
        }
        let persisted = store.applied_seq();
        let http = crate::http::client_from(&args.id, secs(args.connect_timeout));
        Arc::new(NodeState {
            id: args.id.clone(),
            incarnation: args.incarnation,
            url: join::own_url(args),
            port: args.port,
            core: Mutex::new(Core { store, log, terms }),
            log_retain: args.log_retain,
            term_file_lock: Mutex::new(()),
            stats: Stats::default(),
            http: http.clone(),
            wire: crate::http::wire::Client::new(http, args.internal_wire),
            sync_delay: secs(args.sync_delay),
            async_delay: secs(args.async_delay),
            persisted_seq: watch::Sender::new(persisted),
            streamable_seq: watch::Sender::new(persisted),
            durability,
            replicate_lock: tokio::sync::Mutex::new(None),
            reconciled_term: AtomicU64::new(0),
            peers: Mutex::new(HashMap::new()),
            encoded: replication::SharedEncoding::default(),
            heartbeats_paused_until: Mutex::new(None),
            shutdown: tokio::sync::Notify::new(),
            exit_code: AtomicI32::new(0),
            registry: args.registry.clone(),
            supervision: supervision::Supervision::new(
                args.data_dir.as_deref(),
                args.supervisor_pid,
                Duration::from_secs(args.orphan_timeout),
            ),
        })
    }

    /// Watches the persisted seq (see the field).
    pub fn persisted_seq_watch(&self) -> watch::Receiver<u64> {
        self.persisted_seq.subscribe()
    }

    /// Watches the streamable seq (see the field): streams wait on it.
    pub fn streamable_seq_watch(&self) -> watch::Receiver<u64> {
        self.streamable_seq.subscribe()
    }

    /// How far the leader's streams may send (see the field).
    pub fn streamable_seq(&self) -> u64 {
        *self.streamable_seq.borrow()
    }

    /// The highest seq the node's log has completed (see the field).
    pub fn persisted_seq(&self) -> u64 {
        *self.persisted_seq.borrow()
    }

    /// The term of the last leader that reconciled our log (see the field).
    pub fn reconciled_term(&self) -> u64 {
        self.reconciled_term.load(Ordering::Acquire)
    }

    /// Records that the leader of `term` has reconciled our log with its
    /// own. Terms only grow here: a late answer to an older leader must not
    /// hide a newer leader's reconciliation.
    fn mark_reconciled(&self, term: u64) {
        self.reconciled_term.fetch_max(term, Ordering::AcqRel);
    }

    /// Records that the log has completed everything up to `seq`. Appends
    /// complete in order, but the tasks that learn it may run in any order.
    fn publish_persisted(&self, seq: u64) {
        raise(&self.persisted_seq, seq);
        raise(&self.streamable_seq, seq);
    }

    /// Records that the leader has appended everything up to `seq`, so its
    /// streams may send it while its own disk write is still running.
    fn publish_appended(&self, seq: u64) {
        raise(&self.streamable_seq, seq);
    }

    pub fn delay_for(&self, sync: bool) -> Duration {
        if sync {
            self.sync_delay
        } else {
            self.async_delay
        }
    }

    fn is_leader(&self) -> bool {
        self.role() == Role::Leader
    }

    /// The role the node plays now.
    pub fn role(&self) -> Role {
        self.core.lock().unwrap().terms.role
    }

    /// The highest term the node has seen.
    pub fn term(&self) -> u64 {
        self.core.lock().unwrap().terms.term
    }

    /// Sets the persisted seq, down as well as up: after a truncation the
    /// log really is shorter.
    fn reset_persisted(&self, seq: u64) {
        self.persisted_seq.send_replace(seq);
        self.streamable_seq.send_replace(seq);
    }

    /// Every follower's replication progress, sorted by id.
    fn progress_of_peers(&self) -> Vec<FollowerProgress> {
        let mut list: Vec<_> = self
            .peers
            .lock()
            .unwrap()
            .values()
            .map(|p| p.view())
            .collect();
        list.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        list
    }

    /// Each replication link: acked seq, lag and the entries in flight.
    pub fn links(&self) -> Vec<api::LinkView> {
        let peers: Vec<Arc<Peer>> = self.peers.lock().unwrap().values().cloned().collect();
        let leader_seq = self.persisted_seq();
        let now = Instant::now();
        let core = self.core.lock().unwrap();
        let mut links: Vec<api::LinkView> = peers
            .iter()
            .map(|p| {
                let progress = p.progress();
                let acked = progress.acked_seq.min(leader_seq);
                let first =
                    acked.max(leader_seq.saturating_sub(api::LINK_IN_FLIGHT_SHOWN as u64)) + 1;
                let age = |seq| {
                    core.log
                        .appended_at(seq)
                        .map(|t| now.saturating_duration_since(t))
                };
                api::LinkView {
                    node_id: p.config.node_id.clone(),
                    incarnation: p.config.incarnation,
                    sync: p.is_sync(),
                    delay_ms: self.delay_for(p.is_sync()).as_millis() as u64,
                    acked_seq: progress.acked_seq,
                    leader_seq,
                    lag_entries: leader_seq - acked,
                    lag_seconds: age(acked + 1).map_or(0.0, |d| d.as_secs_f64()),
                    in_flight: (first..=leader_seq)
                        .filter_map(|seq| {
                            age(seq).map(|d| api::InFlight {
                                seq,
                                age_ms: d.as_millis() as u64,
                            })
                        })
                        .collect(),
                    error: progress.last_error,
                }
            })
            .collect();
        drop(core);
        links.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        links
    }

    fn peer(&self, node_id: &str) -> Option<Arc<Peer>> {
        self.peers.lock().unwrap().get(node_id).cloned()
    }
}

/// Seconds given on the command line, as a duration (negative means zero).
pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// The node's term file, if it can be trusted; else why not. Without it a
/// node does not know the highest term it saw, so it could accept a deposed
/// leader's stream in an old term (and acknowledge writes the new leader
/// never gets): it must be rebuilt from the cluster, not start at term 0.
/// - unreadable (garbage, truncated, an I/O error): never trusted;
/// - missing while the log holds entries, on a node the coordinator started
///   (always as a follower): a node of a cluster saves its term before its
///   first entry (promotion, or adopting the leader's term), so the file was
///   lost. A missing file with an empty log is a fresh node; a leader
///   started by hand (`--role leader`, no cluster) rebuilds its terms from
///   the entries, as it always did.
fn trusted_terms(dir: &std::path::Path, role: RoleArg, log_end: u64) -> Result<TermFile, String> {
    let path = dir.join(term::TERM_FILE);
    match term::load(dir) {
        Err(e) => Err(format!(
            "unreadable term file {e} (this node no longer knows the highest term it saw)"
        )),
        Ok(_) if log_end > 0 && role == RoleArg::Follower && !path.exists() => Err(format!(
            "missing term file {} while its log holds entries up to seq {log_end} (this \
             node no longer knows the highest term it saw)",
            path.display()
        )),
        Ok(file) => Ok(file),
    }
}

/// Runs a node until it is told to stop.
pub async fn run(mut args: Args) -> anyhow::Result<()> {
    // The coordinator hands its secret down in the environment; a node
    // started by hand finds the user's.
    crate::auth::load_and_install(&args.secret, crate::auth::Fallback::UserFile)?;
    let addr = SocketAddr::new(args.host, args.port);
    if args.join.is_some() {
        join::check(&args)?;
    }
    // Before any client is made: they all trust the cluster CA.
    crate::tls::install(&args.tls, &[("this node", args.host)])?;
    if args.simulate_power_loss {
        crate::storage::power::simulate_power_loss();
        tracing::warn!("simulating power loss: unsynced log writes are kept in memory");
    }
    if let Some(spec) = &args.test_break {
        faults::break_on_purpose(spec, &args)?;
    }
    // Recover before listening: a node that answers must hold its data.
    let config = durable::config(&args).filter(|_| !faults::forgets_its_disk());
    let storage = match config {
        Some(config) => match durable::open(config).await {
            Ok(opened) => Some(opened),
            Err(e) if e.is::<durable::CorruptLog>() => {
                // `{:#}` names the damaged segment and offset.
                tracing::error!("{e:#}");
                eprintln!("kvlab: error: {e:#}");
                std::process::exit(durable::EXIT_CORRUPT_LOG);
            }
            Err(e) => return Err(e),
        },
        None => None,
    };
    let term_file = match args
        .data_dir
        .as_ref()
        .filter(|_| !faults::forgets_its_disk())
    {
        Some(dir) => {
            let log_end = storage.as_ref().map_or(0, |(_, r)| r.state.seq);
            match trusted_terms(dir, args.role, log_end) {
                Ok(file) => file,
                Err(why) => {
                    // Like a corrupt log: the coordinator rebuilds the node.
                    let e = format!("refusing to serve, {}{why}", api::NEEDS_REPAIR);
                    tracing::error!("{e}");
                    eprintln!("kvlab: error: {e}");
                    std::process::exit(durable::EXIT_CORRUPT_LOG);
                }
            }
        }
        None => TermFile::default(),
    };
    let listener = crate::http::bind(addr).await?;
    // Listening first: a coordinator that admits us checks our health at once.
    if let Some(coordinator) = args.join.clone() {
        join::join(&mut args, &coordinator).await?;
    }
    let node = NodeState::new(&args, storage, term_file);
    tracing::info!(id = %node.id, role = %node.role(), term = node.term(), incarnation = node.incarnation, %addr, "node listening");
    if let Some(registry) = args.registry.clone() {
        tokio::spawn(heartbeat::run(
            node.clone(),
            registry,
            secs(args.heartbeat_interval),
        ));
    }
    if args.supervisor_pid.is_some() {
        tokio::spawn(supervision::watch_orphan(node.clone()));
    }
    let stop = node.clone();
    let supervised = args.supervisor_pid.is_some();
    let shutdown = async move {
        tokio::select! {
            _ = stop_signal(supervised) => {},
            _ = stop.shutdown.notified() => {},
        }
    };
    let served = serve_until_stopped(listener, node.clone(), shutdown).await;
    let code = node.exit_code.load(Ordering::Acquire);
    if code != 0 {
        // Storage stopped the node: say why in the exit code.
        std::process::exit(code);
    }
    if let Some(d) = &node.durability {
        // A clean stop: seal the log, so that damage found at the next start
        // is known to hit durable data, never taken for a torn write.
        if let Err(e) = d.wal.seal().await {
            tracing::warn!(error = %e, "could not seal the log at shutdown");
        }
    }
    served
}

/// What stops the node from outside: Ctrl-C or SIGTERM; for a supervised
/// node SIGTERM only. It shares its coordinator's process group, so a
/// Ctrl-C in the terminal reaches it too, and its coordinator stops it in
/// order (see `coordinator::launcher`).
async fn stop_signal(supervised: bool) {
    use tokio::signal::unix::{signal, SignalKind};
    if !supervised {
        return crate::http::shutdown_signal().await;
    }
    let (Ok(mut interrupt), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return crate::http::shutdown_signal().await;
    };
    loop {
        tokio::select! {
            _ = interrupt.recv() => {
                tracing::info!("SIGINT ignored: the coordinator stops this node");
            }
            _ = term.recv() => return,
        }
    }
}

/// How long a stopping node lets requests in flight finish. Some requests
/// wait by design (a write for its sync acks, `/replication/wait` for a
/// follower on the 5 s async link); a stop must not wait for them, or the
/// coordinator's SIGKILL fallback ends the node instead.
const STOP_GRACE: Duration = Duration::from_millis(300);

/// Serves until `shutdown`, then gives open requests [`STOP_GRACE`] to end.
/// Dropping the server closes the connections that are still open; their
/// clients see a closed connection, which they already handle as "node gone".
async fn serve_until_stopped(
    listener: tokio::net::TcpListener,
    node: Arc<NodeState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (stopping_tx, mut stopping) = watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stopping_tx.send(true);
    };
    let open = node.clone();
    let server = crate::http::serve(listener, router(node), shutdown);
    let grace_over = async move {
        let _ = stopping.wait_for(|s| *s).await;
        tokio::time::sleep(STOP_GRACE).await;
    };
    tokio::select! {
        served = server => served,
        () = grace_over => {
            tracing::warn!(
                open = open.stats.active_requests.load(Ordering::Relaxed),
                "stopping with requests still open (grace of {STOP_GRACE:?} over)"
            );
            Ok(())
        }
    }
}

pub fn router(node: Arc<NodeState>) -> Router {
    let router = Router::new()
        .route("/", get(info))
        .route("/health", get(health))
        .route("/stats", get(stats))
        .route("/data", get(all_data).post(writes::leader_write))
        .route("/data/{*key}", get(read_key))
        .route(
            "/batch/write",
            post(writes::leader_write_batch).layer(DefaultBodyLimit::max(BATCH_BODY_BYTES)),
        )
        .route(
            "/batch/read",
            post(read_batch).layer(DefaultBodyLimit::max(BATCH_BODY_BYTES)),
        )
        .route("/snapshot", get(snapshot))
        .route(
            "/replicate",
            get(follower::replicate_state)
                .post(follower::replicate_append)
                .layer(DefaultBodyLimit::max(BATCH_BODY_BYTES)),
        )
        // A snapshot is the whole state, as big as the store: it comes in
        // chunks, each under the batch limit, so no body is unbounded.
        .route(
            "/replicate/snapshot",
            post(follower::replicate_snapshot).layer(DefaultBodyLimit::max(BATCH_BODY_BYTES)),
        )
        .route("/replicate/truncate", post(follower::replicate_truncate))
        .route("/admin/promote", post(leadership::promote))
        .route("/admin/adopt", post(supervision::adopt))
        .route("/replication/peers", put(set_peers).get(get_peers))
        .route("/replication/wait", post(wait_for_peer))
        .route("/replication/links", get(get_links))
        .route("/metrics", get(metrics))
        .route(api::WIRE_PATH, get(crate::http::wire::upgrade))
        .route("/admin/pause-heartbeats", post(pause_heartbeats))
        .route("/admin/shutdown", post(admin_shutdown))
        .route("/admin/partition", post(faults::partition))
        .route("/admin/slow-disk", post(faults::slow_disk))
        .route("/admin/power-cut", post(faults::power_cut));
    crate::auth::guard(router, crate::auth::node_access, None)
        .layer(middleware::from_fn(faults::drop_partitioned))
        .layer(middleware::from_fn_with_state(node.clone(), tag_response))
        .with_state(node)
}

/// Checks the sender's term (see [`leadership::check_term`]), adds the
/// identity headers and counts requests in flight. Only a request carrying
/// the cluster secret has its term looked at: a higher term makes a leader
/// step down, and anyone can put a number in a header.
async fn tag_response(State(node): State<Arc<NodeState>>, req: Request, next: Next) -> Response {
    node.stats.active_requests.fetch_add(1, Ordering::Relaxed);
    // The coordinator's epoch first: a replaced coordinator's request
    // must not even raise the node's term.
    let term_checked = if crate::auth::carries_secret(req.headers()) {
        match supervision::check_request_epoch(&node, req.headers()).await {
            Ok(()) => leadership::check_request_term(&node, req.headers()),
            Err(refused) => Err(refused),
        }
    } else {
        Ok(())
    };
    let mut resp = match term_checked {
        Ok(()) => next.run(req).await,
        Err(refused) => refused.into_response(),
    };
    node.stats.active_requests.fetch_sub(1, Ordering::Relaxed);
    let (role, term) = {
        let core = node.core.lock().unwrap();
        (core.terms.role, core.terms.term)
    };
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&node.id) {
        headers.insert(api::HEADER_NODE_ID, v);
    }
    headers.insert(
        api::HEADER_NODE_ROLE,
        HeaderValue::from_static(role.as_str()),
    );
    headers.insert(api::HEADER_TERM, HeaderValue::from(term));
    headers.insert(
        api::HEADER_NODE_INCARNATION,
        HeaderValue::from(node.incarnation),
    );
    resp
}

type Shared = State<Arc<NodeState>>;

async fn health(State(node): Shared) -> Json<NodeHealth> {
    Json(NodeHealth {
        status: "ok".into(),
        node_id: node.id.clone(),
        role: node.role(),
        incarnation: node.incarnation,
        term: node.term(),
    })
}

async fn info(State(node): Shared) -> Json<NodeInfo> {
    let data_count = node.core.lock().unwrap().store.len();
    Json(NodeInfo {
        node_id: node.id.clone(),
        role: node.role(),
        status: "running".into(),
        data_count,
    })
}

async fn stats(State(node): Shared) -> Json<NodeStats> {
    let (data_count, applied_seq, terms) = {
        let core = node.core.lock().unwrap();
        (
            core.store.len(),
            core.store.applied_seq(),
            core.terms.clone(),
        )
    };
    let followers = node.progress_of_peers();
    let s = &node.stats;
    Json(NodeStats {
        node_id: node.id.clone(),
        role: terms.role,
        term: terms.term,
        term_history: terms.history.0,
        active_requests: s.active_requests.load(Ordering::Relaxed),
        total_writes: s.total_writes.load(Ordering::Relaxed),
        total_reads: s.total_reads.load(Ordering::Relaxed),
        replications_sent: s.replications_sent.load(Ordering::Relaxed),
        replications_received: s.replications_received.load(Ordering::Relaxed),
        data_count,
        followers: followers.iter().map(|f| f.url.clone()).collect(),
        follower_progress: followers,
        applied_seq,
        incarnation: node.incarnation,
        wire_calls_served: crate::http::wire::calls_served(),
        storage: node.durability.as_ref().map(|d| d.stats()),
    })
}

async fn read_key(
    State(node): Shared,
    ApiPath(key): ApiPath<String>,
) -> Result<Json<NodeValue>, ApiError> {
    node.stats.total_reads.fetch_add(1, Ordering::Relaxed);
    let found = node.core.lock().unwrap().store.get(&key);
    match found {
        Some(v) => Ok(Json(NodeValue {
            node_id: node.id.clone(),
            key,
            value: v.value,
            version: v.version,
        })),
        None => Err(ApiError::not_found(format!("Key '{key}' not found"))),
    }
}

/// Runs a request's work in its own task, so that it completes even if the
/// caller goes away: a handler future is dropped when its client hangs up
/// or times out, and work that has appended (to the log or the WAL) must
/// still publish the seq it reached. On a node's one-thread runtime the
/// extra task costs no thread hand-off.
async fn uncancellable<T, F>(work: F) -> Result<T, ApiError>
where
    F: std::future::Future<Output = Result<T, ApiError>> + Send + 'static,
    T: Send + 'static,
{
    tokio::spawn(work)
        .await
        .unwrap_or_else(|e| Err(ApiError::internal(format!("request task failed: {e}"))))
}

/// Refuses an empty batch or one over `max` items (422), before any work.
fn check_batch_len(what: &str, len: usize, max: usize) -> Result<(), ApiError> {
    if (1..=max).contains(&len) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        format!("a {what} batch holds 1 to {max} items, got {len}"),
    ))
}

/// At most this many keys in one `POST /batch/read`.
pub const MAX_READ_BATCH: usize = 4096;

/// `POST /batch/read`: many keys, one lock, one answer. The coordinator
/// gathers concurrent client reads meant for this node into one of these, so
/// a busy cluster pays one HTTP exchange per batch instead of one per read.
async fn read_batch(
    State(node): Shared,
    ApiJson(req): ApiJson<ReadBatchRequest>,
) -> Result<Json<ReadBatchResponse>, ApiError> {
    check_batch_len("read", req.keys.len(), MAX_READ_BATCH)?;
    for key in &req.keys {
        validate_key_value(key, None)?;
    }
    node.stats
        .total_reads
        .fetch_add(req.keys.len() as u64, Ordering::Relaxed);
    let (values, seqs) = {
        let core = node.core.lock().unwrap();
        req.keys
            .iter()
            .map(|k| match core.store.get_with_seq(k) {
                Some((v, seq)) => (Some(v), seq),
                None => (None, 0),
            })
            .unzip()
    };
    Ok(Json(ReadBatchResponse {
        node_id: node.id.clone(),
        values,
        seqs,
        term: node.reconciled_term(),
    }))
}

async fn all_data(State(node): Shared) -> Json<NodeData> {
    let data = node.core.lock().unwrap().store.to_map();
    Json(NodeData {
        node_id: node.id.clone(),
        count: data.len(),
        data,
    })
}

async fn snapshot(State(node): Shared) -> Json<NodeSnapshot> {
    let (applied_seq, map) = {
        let core = node.core.lock().unwrap();
        (core.store.applied_seq(), core.store.to_map())
    };
    let mut snap = NodeSnapshot {
        data: Default::default(),
        versions: Default::default(),
        applied_seq,
    };
    for (k, v) in map {
        snap.versions.insert(k.clone(), v.version);
        snap.data.insert(k, v.value);
    }
    Json(snap)
}

// ---------------------------------------------------------------------------
// Replication peers (the leader's side)
// ---------------------------------------------------------------------------

async fn set_peers(
    State(node): Shared,
    ApiJson(set): ApiJson<PeerSet>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !node.is_leader() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "only the leader has peers",
        ));
    }
    let mut peers = node.peers.lock().unwrap();
    let wanted: HashMap<&str, &PeerConfig> =
        set.peers.iter().map(|p| (p.node_id.as_str(), p)).collect();
    // Streams to followers that left, or whose process changed, stop.
    peers.retain(|id, peer| {
        wanted
            .get(id.as_str())
            .is_some_and(|w| w.url == peer.config.url && w.incarnation == peer.config.incarnation)
    });
    for config in &set.peers {
        match peers.get(&config.node_id) {
            Some(peer) => peer.set_sync(config.sync),
            None => {
                let peer = Peer::start(node.clone(), config.clone());
                peers.insert(config.node_id.clone(), peer);
            }
        }
    }
    Ok(Json(json!({"status": "ok", "peers": peers.len()})))
}

/// `GET /replication/links`: the leader's view of each link, for the live view.
async fn get_links(State(node): Shared) -> Json<Vec<api::LinkView>> {
    Json(node.links())
}

/// `GET /metrics`: the Prometheus text format.
async fn metrics(State(node): Shared) -> Response {
    metrics::render(&node)
}

async fn get_peers(State(node): Shared) -> Json<Vec<FollowerProgress>> {
    Json(node.progress_of_peers())
}

/// `POST /replication/wait`: answers once a follower holds a seq (see
/// [`WaitRequest`]).
async fn wait_for_peer(
    State(node): Shared,
    ApiJson(req): ApiJson<WaitRequest>,
) -> Result<Json<FollowerProgress>, ApiError> {
    let Some(peer) = node.peer(&req.node_id) else {
        return Err(ApiError::not_found(format!(
            "{} is not a replication peer of the leader",
            req.node_id
        )));
    };
    let target = req.seq.unwrap_or_else(|| node.persisted_seq());
    let timeout = Duration::from_millis(req.timeout_ms.unwrap_or(10_000));
    let mut rx = peer.subscribe();
    let caught_up = tokio::time::timeout(timeout, rx.wait_for(|p| p.acked_seq >= target))
        .await
        .is_ok_and(|r| r.is_ok());
    if caught_up {
        Ok(Json(peer.view()))
    } else {
        Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            json!({"error": "follower did not catch up in time",
                   "node_id": req.node_id, "target_seq": target,
                   "acked_seq": peer.progress().acked_seq,
                   "last_error": peer.progress().last_error}),
        ))
    }
}

// ---------------------------------------------------------------------------
// Admin hooks (fault injection and graceful stop)
// ---------------------------------------------------------------------------

/// Stops heartbeats for a while, as a network blip would: the registry will
/// declare the node dead after its timeout, though the process is fine.
async fn pause_heartbeats(
    State(node): Shared,
    ApiJson(req): ApiJson<PauseHeartbeats>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !req.seconds.is_finite() || req.seconds < 0.0 || req.seconds > 3600.0 {
        return Err(ApiError::bad_request(
            "seconds must be a number between 0 and 3600",
        ));
    }
    let until = Instant::now() + secs(req.seconds);
    *node.heartbeats_paused_until.lock().unwrap() = Some(until);
    tracing::warn!(seconds = req.seconds, "heartbeats paused (fault injection)");
    Ok(Json(json!({"status": "paused", "seconds": req.seconds})))
}

/// Stops the node cleanly: it deregisters, then exits.
async fn admin_shutdown(State(node): Shared) -> impl IntoResponse {
    tokio::spawn(async move {
        heartbeat::deregister(&node).await;
        node.shutdown.notify_one();
    });
    Json(json!({"status": "stopping"}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_term_file_that_cannot_be_trusted_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        // Fresh: no file, empty log.
        assert!(trusted_terms(dir.path(), RoleArg::Follower, 0).is_ok());
        // Lost beside a log: refused on a cluster's node, not by hand.
        let why = trusted_terms(dir.path(), RoleArg::Follower, 7).unwrap_err();
        assert!(why.contains("missing term file"), "{why}");
        assert!(why.contains("up to seq 7"), "{why}");
        assert!(trusted_terms(dir.path(), RoleArg::Leader, 7).is_ok());
        std::fs::write(dir.path().join(term::TERM_FILE), b"garbage").unwrap();
        for role in [RoleArg::Follower, RoleArg::Leader] {
            let why = trusted_terms(dir.path(), role, 0).unwrap_err();
            assert!(why.contains("unreadable term file"), "{why}");
            assert!(why.contains("expected"), "says why: {why}");
        }
    }
}

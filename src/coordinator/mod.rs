//! The coordinator: the cluster's front door and its process supervisor.
//!
//! It starts the leader and the followers as separate processes (see
//! [`launcher`]), keeps the table of who is alive (see [`cluster`]), tells the
//! leader which followers to replicate to and which are in the sync set, and
//! runs the client-facing write and read paths with the lab's quorum rules
//! (see [`requests`] and [`reads`]). Who is alive follows the registry's current view,
//! pulled every second, or direct probes of the nodes when the registry is
//! gone (see [`liveness`]); it narrates everything on its console (see
//! [`crate::events`]).
//!
//! Invariants:
//! - membership changes are serialized (one at a time), and the leader is told
//!   the new follower set before a newly alive follower can be put in a
//!   write's sync set;
//! - each slot is served by at most one process: before a slot is respawned,
//!   the previous process is killed, and its incarnation stops counting;
//! - what must survive the coordinator (incarnations, terms, slots, its
//!   epoch) is saved before it is relied on, and a coordinator started again
//!   adopts the nodes that kept running (see [`state`] and [`adopt`]); every
//!   request to a node carries this coordinator's epoch.

mod adopt;
mod batch;
mod catchup;
pub mod cluster;
pub mod control;
mod failover;
pub(crate) mod faults;
mod join;
mod kill;
pub mod launcher;
mod liveness;
mod membership;
pub mod metrics;
mod narration;
mod notices;
mod protocol;
mod reads;
mod requests;
pub mod runtime;
mod slots;
mod spawn;
mod startup;
mod state;
pub mod ui;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use serde::Deserialize;

use crate::api::*;
use crate::events::{Event, EventKind, EventLog};
use crate::http::ApiError;
use crate::storage::FsyncPolicy;
use cluster::{Cluster, Slot};
use launcher::{LaunchSettings, NodeStorage};
pub use runtime::{RuntimeArgs, RuntimeKind};

/// Flags of `kvlab coordinator` (and the matching ones of `kvlab up`).
#[derive(Debug, Clone, Parser)]
pub struct Args {
    /// Port to listen on.
    #[arg(long, default_value_t = ports::COORDINATOR)]
    pub port: u16,
    /// Address to listen on (and to start nodes on).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The registry the nodes heartbeat to.
    #[arg(long, default_value = "http://127.0.0.1:9000")]
    pub registry: String,
    /// Where node log files go (default: a kvlab folder in the temp dir).
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// Do not narrate events on the console.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub secret: crate::auth::SecretArgs,
    #[command(flatten)]
    pub admin: crate::auth::AdminArgs,
    /// TLS for the coordinator's listener and its nodes' (which get the
    /// same files and mode on their command line).
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
    /// Where the cluster map lives, and this coordinator's part in an
    /// etcd-replicated control plane (see [`control`]).
    #[command(flatten)]
    pub control: control::ControlArgs,
}

/// The cluster's shape and timing, shared by `coordinator` and `up`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// Number of followers, N.
    #[arg(long, default_value_t = 2)]
    pub followers: usize,
    /// Write quorum W: sync followers that must ack a write.
    #[arg(short = 'W', long = "write-quorum", default_value_t = 2)]
    pub write_quorum: usize,
    /// Read quorum R: followers asked by a read.
    #[arg(short = 'R', long = "read-quorum", default_value_t = 1)]
    pub read_quorum: usize,
    /// Replication delay to each sync follower, in seconds (the lab's time lens).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.5)]
    pub sync_delay: f64,
    /// Replication delay to each async follower, in seconds.
    #[arg(long, allow_negative_numbers = true, default_value_t = 5.0)]
    pub async_delay: f64,
    /// No replication delays: the mode for real use and benchmarks.
    #[arg(long)]
    pub no_delay: bool,
    /// How the coordinator and the leader speak to kvlab's nodes: `frames`
    /// (the framed wire, where a node offers it: kvlab's own do) or `http`
    /// (plain HTTP/JSON on every call, to watch the traffic with tcpdump).
    #[arg(long, value_enum, default_value_t)]
    pub internal_wire: crate::http::wire::Mode,
    /// The leader's port; follower-i listens on this + i.
    #[arg(long, default_value_t = ports::LEADER)]
    pub node_base_port: u16,
    /// Seconds between node heartbeats.
    #[arg(
        long,
        allow_negative_numbers = true,
        default_value_t = 2.0,
        hide = true
    )]
    pub heartbeat_interval: f64,
    /// How many log entries the leader keeps for catching followers up;
    /// a follower further behind gets a snapshot.
    #[arg(long, default_value_t = 100_000)]
    pub log_retain: usize,
    /// When the leader dies and no alive follower holds every acknowledged
    /// write, promote the most advanced one anyway (and name the seqs that
    /// may be lost). Without it such a failover is refused and writes stay
    /// unavailable (Kafka's unclean.leader.election.enable).
    #[arg(long)]
    pub unclean_failover: bool,
    /// Seconds a node keeps running once its coordinator is gone, waiting
    /// for a restarted coordinator to adopt it, before it stops by itself.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_ORPHAN_TIMEOUT_S)]
    pub orphan_timeout: u64,
    /// The nodes die with this coordinator (the parent-death signal), as
    /// before adoption existed: for the clusters `kvlab check` and `kvlab
    /// assess` start, which are never adopted and must not outlive the run.
    #[arg(long, hide = true)]
    pub nodes_die_with_coordinator: bool,
    /// This coordinator's name in `/status`'s `control_plane` (default:
    /// `coordinator-<port>`).
    #[arg(long, value_name = "ID")]
    pub coordinator_id: Option<String>,
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Where and how the nodes persist their data, shared by `coordinator` and `up`.
#[derive(Debug, Clone, clap::Args)]
pub struct StorageArgs {
    /// Each node keeps its log and snapshots in `<DIR>/<node-id>` (default:
    /// `<temp dir>/kvlab-<coordinator port>/data`). A restarted cluster
    /// recovers what is there.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Keep everything in memory, as the original lab did: quick demos, no
    /// disk, and a crashed node loses its data.
    #[arg(long, conflicts_with_all = ["data_dir", "fresh"])]
    pub in_memory: bool,
    /// Delete the data directory first: start the cluster empty.
    #[arg(long)]
    pub fresh: bool,
    /// When nodes fsync their log: `always` (group commit; a write's ack
    /// waits for the fsync on the leader and each sync follower),
    /// `interval` (every --fsync-interval-ms) or `never` (for demos).
    #[arg(long, value_enum, default_value = "always")]
    pub fsync: FsyncPolicy,
    /// The period of `--fsync interval`, in milliseconds.
    #[arg(long, default_value_t = 5, hide = true)]
    pub fsync_interval_ms: u64,
    /// Nodes snapshot their state and truncate their log every this many
    /// entries (0: never).
    #[arg(long, default_value_t = crate::storage::StorageConfig::DEFAULT_SNAPSHOT_EVERY, hide = true)]
    pub snapshot_every: u64,
    /// Test switch: nodes keep their unsynced log writes in memory, so that
    /// killing them is a power cut, and `POST /kill/{id}?mode=power` tears a
    /// write (see `storage::power`).
    #[arg(long, hide = true)]
    pub simulate_power_loss: bool,
}

impl StorageArgs {
    /// What the nodes get, or `None` in memory. `port` is the coordinator's,
    /// which keeps the default directories of parallel clusters apart.
    fn resolve(&self, port: u16) -> Option<NodeStorage> {
        if self.in_memory {
            return None;
        }
        let base_dir = self.data_dir.clone().unwrap_or_else(|| {
            std::env::temp_dir()
                .join(format!("kvlab-{port}"))
                .join("data")
        });
        Some(NodeStorage {
            base_dir,
            fresh: self.fresh,
            fsync: self.fsync,
            fsync_interval_ms: self.fsync_interval_ms,
            snapshot_every: self.snapshot_every,
            simulate_power_loss: self.simulate_power_loss,
        })
    }
}

/// A setting the cluster cannot run with.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("--followers must be at least 1 (the leader is not counted in N)")]
    NoFollowers,
    #[error("--write-quorum (W) must be at least 1")]
    ZeroWriteQuorum,
    #[error("--read-quorum (R) must be at least 1")]
    ZeroReadQuorum,
    #[error("write quorum W={w} is larger than the number of followers N={n}: no write could ever succeed")]
    WriteQuorumTooLarge { w: usize, n: usize },
    #[error("read quorum R={r} is larger than the number of followers N={n}: no read could ever succeed")]
    ReadQuorumTooLarge { r: usize, n: usize },
    #[error("the node ports {first}..={last} do not fit below 65536")]
    PortsOverflow { first: u16, last: usize },
    #[error("delays must be finite numbers of seconds between 0 and 3600, got {0}")]
    BadDelay(f64),
    #[error("admin token: {0}")]
    AdminToken(String),
    #[error("{0}")]
    NodeCommand(String),
}

impl ClusterArgs {
    /// Refuses impossible settings at start, saying why.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let (n, w, r) = (self.followers, self.write_quorum, self.read_quorum);
        if n == 0 {
            return Err(ConfigError::NoFollowers);
        }
        if w == 0 {
            return Err(ConfigError::ZeroWriteQuorum);
        }
        if r == 0 {
            return Err(ConfigError::ZeroReadQuorum);
        }
        if w > n {
            return Err(ConfigError::WriteQuorumTooLarge { w, n });
        }
        if r > n {
            return Err(ConfigError::ReadQuorumTooLarge { r, n });
        }
        // Saturating: N comes from a flag or a student's config, and may be
        // as large as a usize holds (found by fuzzing).
        let last = (self.node_base_port as usize).saturating_add(n);
        if last > u16::MAX as usize {
            return Err(ConfigError::PortsOverflow {
                first: self.node_base_port,
                last,
            });
        }
        for d in [self.sync_delay, self.async_delay] {
            if !d.is_finite() || !(0.0..=3600.0).contains(&d) {
                return Err(ConfigError::BadDelay(d));
            }
        }
        Ok(())
    }

    /// The delays in force: zero with `--no-delay`.
    pub fn delays(&self) -> (f64, f64) {
        if self.no_delay {
            (0.0, 0.0)
        } else {
            (self.sync_delay, self.async_delay)
        }
    }
}

/// Everything the coordinator needs to run, resolved from the flags.
#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    pub followers: usize,
    pub w: usize,
    pub r: usize,
    pub node_base_port: u16,
    pub launch: LaunchSettings,
    pub print_events: bool,
    /// How long a write waits for its sync acks.
    pub ack_timeout: Duration,
    /// How long a read waits for each follower.
    pub read_timeout: Duration,
    /// See `ClusterArgs::unclean_failover`.
    pub unclean_failover: bool,
    /// Who starts the nodes (see [`runtime`]).
    pub runtime: RuntimeArgs,
    /// This coordinator's name in `/status` (`--coordinator-id`).
    pub coordinator_id: String,
    /// Where the others reach it (`--advertise`; default: from the address).
    pub advertise: Option<String>,
    /// Required on `/kill`, `/spawn`, `/catchup` and `/admin/*` when set:
    /// always off loopback (see [`crate::auth::admin_token`]).
    pub admin_token: Option<crate::auth::Secret>,
}

impl Config {
    pub fn from_args(args: &Args) -> Result<Config, ConfigError> {
        args.cluster.validate()?;
        let (sync_delay, async_delay) = args.cluster.delays();
        let log_dir = args.log_dir.clone().unwrap_or_else(|| {
            std::env::temp_dir()
                .join(format!("kvlab-{}", args.port))
                .join("logs")
        });
        Ok(Config {
            addr: SocketAddr::new(args.host, args.port),
            followers: args.cluster.followers,
            w: args.cluster.write_quorum,
            r: args.cluster.read_quorum,
            node_base_port: args.cluster.node_base_port,
            launch: LaunchSettings {
                binary: std::env::current_exe().unwrap_or_else(|_| "kvlab".into()),
                log_dir,
                host: args.host.to_string(),
                registry: Some(args.registry.clone()),
                sync_delay,
                async_delay,
                heartbeat_interval: args.cluster.heartbeat_interval,
                log_retain: args.cluster.log_retain,
                storage: args.cluster.storage.resolve(args.port),
                netns: None,
                tls: args.tls.clone(),
                orphan_timeout: args.cluster.orphan_timeout,
                die_with_coordinator: args.cluster.nodes_die_with_coordinator,
                internal_wire: args.cluster.internal_wire,
                commands: args
                    .cluster
                    .runtime
                    .node_commands()
                    .map_err(ConfigError::NodeCommand)?,
            },
            print_events: !args.quiet,
            ack_timeout: Duration::from_secs_f64(sync_delay + 2.5),
            read_timeout: Duration::from_secs(2),
            unclean_failover: args.cluster.unclean_failover,
            runtime: args.cluster.runtime.clone(),
            coordinator_id: args
                .cluster
                .coordinator_id
                .clone()
                .unwrap_or_else(|| format!("coordinator-{}", args.port)),
            advertise: args.control.advertise.clone(),
            admin_token: crate::auth::admin_token(args.host, &args.admin)
                .map_err(|e| ConfigError::AdminToken(e.to_string()))?,
        })
    }

    /// This coordinator, as `/status` names it: its id, URL and pid.
    pub fn me(&self) -> CoordinatorRef {
        CoordinatorRef {
            id: self.coordinator_id.clone(),
            url: self.advertise.clone().unwrap_or_else(|| {
                crate::tls::url(self.addr.ip(), self.addr.ip(), self.addr.port())
            }),
            pid: Some(std::process::id()),
        }
    }

    /// Where the coordinator keeps its state (see [`state`]): the nodes'
    /// data directory, or the log directory for an in-memory cluster.
    pub fn state_dir(&self) -> &std::path::Path {
        match &self.launch.storage {
            Some(s) => &s.base_dir,
            None => &self.launch.log_dir,
        }
    }

    pub fn node_url(&self, port: u16) -> String {
        if let Some(hosts) = &self.launch.netns {
            return hosts.node_url(port);
        }
        match self.launch.host.parse::<IpAddr>() {
            Ok(ip) => crate::tls::url(ip, ip, port),
            Err(_) => format!("http://{}:{}", self.launch.host, port),
        }
    }
}

pub struct Coordinator {
    pub config: Config,
    /// Copy-on-write: readers take the `Arc` (a read does, on every client
    /// read), writers change it through [`Coordinator::update`], which copies
    /// the table only if some reader still holds the old one. Membership
    /// changes are rare and reads are not, so reads must not copy.
    cluster: Mutex<Arc<Cluster>>,
    /// Serializes membership changes and the pushes to the leader that follow.
    membership: tokio::sync::Mutex<()>,
    pub events: Arc<EventLog>,
    pub(crate) http: reqwest::Client,
    /// The same client's calls to nodes, framed where they offer it.
    pub(crate) wire: crate::http::wire::Client,
    /// Set once the initial start is over; quorum changes are narrated after.
    ready: std::sync::atomic::AtomicBool,
    /// Client writes, gathered into batches for the leader (see [`batch`]).
    writes: std::sync::OnceLock<batch::Batcher<KeyValue, requests::WriteOutcome>>,
    /// Client reads, gathered per follower: node id -> (incarnation, batcher).
    reads: Mutex<HashMap<String, (u64, reads::ReadBatcher)>>,
    /// Leader election and failover (see [`failover`]).
    failover: failover::Failover,
    /// Where liveness comes from, and the last registry view applied.
    liveness: liveness::Liveness,
    /// Served at `/metrics` (see [`metrics`]).
    pub metrics: metrics::CoordinatorMetrics,
    /// What the live view keeps (see [`ui`]).
    pub ui: ui::UiState,
    /// The faults injected through the coordinator, in effect now (see [`faults`]).
    pub(crate) faults: faults::Faults,
    /// Who starts the nodes, and its state (see [`runtime`]).
    runtime: runtime::Runtime,
    /// The highest seq known to be held by W followers (see [`reads`]).
    commit: reads::CommitPoint,
    /// Followers that failed a read a moment ago (see [`reads`]).
    suspects: reads::Suspects,
    /// Nodes found with a damaged log, by id (see [`slots`]): `/status`.
    repairs: Mutex<std::collections::BTreeMap<String, RepairView>>,
    /// The durable state and this coordinator's epoch (see [`state`]).
    control: state::ControlState,
}

impl Coordinator {
    /// A coordinator, not started yet. Reads and saves its durable state
    /// (see [`state`]): that is where its epoch comes from.
    pub fn new(config: Config) -> anyhow::Result<Arc<Coordinator>> {
        let control = state::ControlState::open(
            config.state_dir(),
            config.me(),
            (config.followers, config.w, config.r),
        )?;
        Ok(Coordinator::with_control(config, control))
    }

    /// A coordinator with its durable state already open: the file's
    /// ([`Coordinator::new`]) or, in etcd mode, what winning the election
    /// gave (see [`control`]).
    pub(crate) fn with_control(config: Config, control: state::ControlState) -> Arc<Coordinator> {
        let leader = Slot {
            node_id: LEADER_ID.to_string(),
            role: Role::Leader,
            port: config.node_base_port,
            url: config.node_url(config.node_base_port),
            status: NodeStatus::Starting,
            incarnation: 0,
            pid: None,
        };
        let registry_port = config
            .launch
            .registry
            .as_deref()
            .and_then(|r| url::Url::parse(r).ok()?.port_or_known_default())
            .unwrap_or(ports::REGISTRY);
        let runtime = runtime::Runtime::new(&config.runtime, config.addr.port(), registry_port);
        // Every request to a node carries this coordinator's epoch.
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(HEADER_COORDINATOR_EPOCH, control.epoch.into());
        let mut cluster = Cluster::new(leader);
        if let Some(found) = control.found() {
            // Incarnations and terms of earlier coordinators are never reused.
            cluster.reserve_below(found.next_incarnation);
            cluster.term = found.term;
        }
        let failover = failover::Failover::new(config.unclean_failover);
        failover.learn_promoted(cluster.term);
        let http = crate::http::client_with(headers);
        Arc::new(Coordinator {
            runtime,
            events: Arc::new(EventLog::new(config.print_events)),
            cluster: Mutex::new(Arc::new(cluster)),
            membership: tokio::sync::Mutex::new(()),
            http: http.clone(),
            wire: crate::http::wire::Client::new(http, config.launch.internal_wire),
            ready: std::sync::atomic::AtomicBool::new(false),
            writes: std::sync::OnceLock::new(),
            reads: Mutex::new(HashMap::new()),
            failover,
            liveness: liveness::Liveness::default(),
            metrics: metrics::CoordinatorMetrics::new(config.w, config.r),
            ui: ui::UiState::default(),
            faults: faults::Faults::default(),
            commit: reads::CommitPoint::default(),
            suspects: reads::Suspects::default(),
            repairs: Mutex::default(),
            control,
            config,
        })
    }

    /// The table as it is now, for decisions made without holding the lock.
    /// Cheap (one `Arc` clone): later changes do not show in it.
    fn snapshot(&self) -> Arc<Cluster> {
        self.cluster.lock().unwrap().clone()
    }

    /// Changes the table under its lock.
    fn update<T>(&self, change: impl FnOnce(&mut Cluster) -> T) -> T {
        let mut table = self.cluster.lock().unwrap();
        change(Arc::make_mut(&mut table))
    }

    /// The current leadership term, without copying the whole table.
    fn term(&self) -> u64 {
        self.cluster.lock().unwrap().term
    }

    pub fn status(&self) -> StatusResponse {
        let c = self.cluster.lock().unwrap();
        let sets = c.sets(self.config.w, self.config.r);
        StatusResponse {
            leader: Some(c.view(&c.leader, &sets)),
            followers: c.followers.iter().map(|s| c.view(s, &sets)).collect(),
            quorum: QuorumView {
                w: self.config.w,
                r: self.config.r,
                total_alive: c.alive_followers() + usize::from(c.leader.is_alive()),
                alive_followers: c.alive_followers(),
                can_write: c.can_write(self.config.w),
                can_read: c.can_read(self.config.r),
            },
            term: c.term,
            failover: self.failover.view(c.leader.is_alive()),
            repairs: self.repairs.lock().unwrap().values().cloned().collect(),
            liveness: self.liveness.source().as_str().into(),
            control_plane: self.control.view(),
        }
    }
}

/// Runs a coordinator (and its nodes) until Ctrl-C or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    // Run alone, the coordinator shares the user's secret file with a
    // registry started by hand; its nodes get the secret from it.
    crate::auth::load_and_install(&args.secret, crate::auth::Fallback::UserFile)?;
    // Its nodes listen on the same address, with the same files.
    crate::tls::install(&args.tls, &[("the coordinator", args.host)])?;
    let config = Config::from_args(&args)?;
    if let Some(line) = admin_token_notice(&config) {
        println!("kvlab coordinator: {line}");
    }
    if let crate::control::StoreSpec::Etcd(endpoints) = &args.control.control_store {
        return control::run(&args, config, endpoints.clone()).await;
    }
    let listener = crate::http::bind(config.addr).await?;
    let coordinator = Coordinator::new(config)?;
    serve(coordinator, listener, crate::http::shutdown_signal()).await
}

/// Starts the cluster, serves the API until `shutdown`, then stops every node.
pub async fn serve(
    coordinator: Arc<Coordinator>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // On shutdown, the live view's event streams end first: graceful
    // shutdown waits for open requests, and those never finish by themselves.
    let ui = coordinator.clone();
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stopping_tx.send(true);
        ui.ui.close();
    };
    let server = tokio::spawn(crate::http::serve(
        listener,
        router(coordinator.clone()),
        shutdown,
    ));
    run_cluster(coordinator, server, stopping).await
}

/// The cluster's life once its API is served by `server`: starts it (its
/// background duties too), waits until the server ends (`stopping` turns
/// true first), then stops every node. Also the active coordinator's life
/// in etcd mode, whose server was already serving as a standby (see
/// [`control`]).
pub(crate) async fn run_cluster(
    coordinator: Arc<Coordinator>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let background = membership::start_background(coordinator.clone());
    let failover = failover::start(coordinator.clone());
    let protocol = protocol::start(coordinator.clone());
    // A stop while the cluster is still starting (external nodes that never
    // join, say) ends the start: the nodes started so far are stopped below.
    let started = tokio::select! {
        started = coordinator.start_cluster() => started,
        _ = stopping.wait_for(|s| *s) => Err(anyhow::anyhow!("stopped before the cluster was ready")),
    };
    if let Err(e) = &started {
        coordinator
            .events
            .bad(EventKind::StartFailed, None, format!("❌ {e:#}"));
        server.abort();
    }
    let served = if started.is_ok() {
        server.await.map_err(anyhow::Error::from).and_then(|r| r)
    } else {
        Ok(())
    };
    background.abort();
    failover.abort();
    if let Some(watch) = protocol {
        watch.abort();
    }
    coordinator.stop_all().await;
    started?;
    served
}

pub fn router(coordinator: Arc<Coordinator>) -> Router {
    let router = Router::new()
        .route("/", get(info))
        .route("/status", get(status))
        .route("/write", post(requests::write))
        .route("/read/{*key}", get(reads::read))
        .route("/spawn", post(spawn::spawn))
        .route("/kill/{node_id}", post(kill::kill))
        .route("/join", post(join::join))
        .route("/admin/network/{node_id}", post(runtime::network))
        .route("/catchup", post(catchup::catchup))
        .route("/node-died", post(notices::node_died))
        .route("/node-revived", post(notices::node_revived))
        .route("/admin/partition/{node_id}", post(faults::partition))
        .route("/admin/slow-disk/{node_id}", post(faults::slow_disk))
        .route("/admin/link/{node_id}", post(faults::link))
        .route("/events", get(events))
        .route("/metrics", get(metrics))
        .route("/metrics/targets", get(metrics_targets))
        .merge(ui::router());
    let admin_token = coordinator.config.admin_token.clone();
    crate::auth::guard(router, crate::auth::coordinator_access, admin_token).with_state(coordinator)
}

/// What to print at start when admin routes need a token: the token itself
/// (the person who started the cluster needs it, and only they see this
/// console) and how to send it.
pub fn admin_token_notice(config: &Config) -> Option<String> {
    let token = config.admin_token.as_ref()?;
    Some(format!(
        "listening on {}: /kill, /spawn, /catchup and /admin/* need the admin token \
         (header `Authorization: Bearer <token>`; the live view: /ui#token=<token>): {}",
        config.addr.ip(),
        token.expose()
    ))
}

type Shared = State<Arc<Coordinator>>;

async fn info(State(c): Shared) -> Json<CoordinatorInfo> {
    let cl = c.cluster.lock().unwrap();
    Json(CoordinatorInfo {
        service: "coordinator".into(),
        leader: cl.leader.is_alive().then(|| cl.leader.node_id.clone()),
        leader_url: cl.leader.is_alive().then(|| cl.leader.url.clone()),
        follower_count: cl.followers.len(),
        can_write: cl.can_write(c.config.w),
        can_read: cl.can_read(c.config.r),
    })
}

async fn status(State(c): Shared) -> Json<StatusResponse> {
    Json(c.status())
}

/// `GET /metrics`: the Prometheus text format.
async fn metrics(State(c): Shared) -> axum::response::Response {
    c.metrics.refresh(&c.cluster.lock().unwrap());
    crate::metrics::render(&c.metrics.registry)
}

/// `GET /metrics/targets`: Prometheus HTTP service discovery of the nodes
/// that are alive (a dead one is not a target, so it does not show as down).
async fn metrics_targets(State(c): Shared) -> Json<serde_json::Value> {
    let cl = c.cluster.lock().unwrap();
    let groups: Vec<serde_json::Value> = std::iter::once(&cl.leader)
        .chain(&cl.followers)
        .filter(|s| s.is_alive())
        .map(|s| {
            let target = s
                .url
                .trim_start_matches("http://")
                .trim_start_matches("https://")
                .to_string();
            serde_json::json!({"targets": [target], "labels": {"node_id": s.node_id}})
        })
        .collect();
    Json(serde_json::Value::Array(groups))
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    #[serde(default)]
    since: u64,
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /events?since=ID`: the event log as JSON, for tools and tests.
async fn events(
    State(c): Shared,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<Event>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    Ok(Json(c.events.since(q.since, q.limit.unwrap_or(500))))
}

//! Who runs the nodes: the coordinator's seam between membership (what a
//! start, a crash or a stop *means*) and the thing that does it.
//!
//! - `process` (the default): nodes are child processes ([`launcher`]);
//! - `docker`: nodes are containers ([`crate::hosts::docker`]);
//! - `external`: someone else (Compose, systemd, Kubernetes) starts them and
//!   they join (`kvlab node --join`, see [`super::join`]); the coordinator
//!   supervises them but can neither start nor crash them.
//!
//! Membership calls only the methods here, so each runtime answers the
//! same questions: start this slot, has its process ended, kill it, stop it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::cluster::Slot;
use super::launcher::{self, NodeSpec};
use super::Coordinator;
use crate::events::EventKind;
use crate::hosts::docker::{DockerHosts, DockerSettings};
use crate::process::exists as process_exists;

/// `--runtime`: who starts the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RuntimeKind {
    /// Child processes of the coordinator, on this machine.
    #[default]
    Process,
    /// Containers on a private Docker network (the kvlab image).
    Docker,
    /// Nobody here: nodes are started by someone else and join.
    External,
}

/// The flags of `--runtime`, shared by `coordinator` and `up`.
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeArgs {
    /// Who starts the nodes: `process` (this program), `docker` (containers
    /// of --docker-image) or `external` (they join with `kvlab node --join`).
    #[arg(long, value_enum, default_value = "process")]
    pub runtime: RuntimeKind,
    /// The image of the node containers (`docker build -t kvlab .`).
    #[arg(long, default_value = "kvlab", value_name = "IMAGE")]
    pub docker_image: String,
    /// Containers, network and volumes are named `<PREFIX>-...` (default:
    /// `kvlab-<coordinator port>`); a start removes what a run with the same
    /// prefix left behind.
    #[arg(long, value_name = "PREFIX")]
    pub docker_prefix: Option<String>,
    /// Run every follower as this command instead of `kvlab node`: a node
    /// you wrote (see docs/node-protocol.md). It is run by `sh`; its
    /// settings come in KVLAB_* environment variables, and {id}, {port},
    /// {host}, {data_dir}, {registry} and {incarnation} in CMD are filled
    /// in. Only with `--runtime process`.
    #[arg(long, value_name = "CMD")]
    pub node_cmd: Option<String>,
    /// Run the slot named `leader` as this command (a node that implements
    /// level 4 of the protocol). With it, nodes of --node-cmd may be
    /// promoted at a failover too; without it they never lead.
    #[arg(long, value_name = "CMD")]
    pub node_cmd_leader: Option<String>,
}

impl RuntimeArgs {
    /// The student's commands, checked: not empty, and only where this
    /// machine starts the nodes itself.
    pub fn node_commands(&self) -> Result<launcher::NodeCommands, String> {
        let commands = launcher::NodeCommands {
            follower: self.node_cmd.clone(),
            leader: self.node_cmd_leader.clone(),
        };
        for (flag, cmd) in [
            ("--node-cmd", &commands.follower),
            ("--node-cmd-leader", &commands.leader),
        ] {
            if cmd.as_ref().is_some_and(|c| c.trim().is_empty()) {
                return Err(format!(
                    "{flag} is empty: give the command that starts your node"
                ));
            }
        }
        if commands.any() && self.runtime != RuntimeKind::Process {
            return Err(
                "--node-cmd and --node-cmd-leader need --runtime process: with docker or \
                 external runtimes kvlab does not start the node programs itself"
                    .into(),
            );
        }
        Ok(commands)
    }
}

/// The runtime in use, with its state.
pub enum Runtime {
    Process,
    Docker(Arc<DockerHosts>),
    External,
}

impl Runtime {
    /// `registry_port`: where the registry listens on this machine.
    pub fn new(args: &RuntimeArgs, coordinator_port: u16, registry_port: u16) -> Runtime {
        match args.runtime {
            RuntimeKind::Process => Runtime::Process,
            RuntimeKind::External => Runtime::External,
            RuntimeKind::Docker => Runtime::Docker(Arc::new(DockerHosts::new(DockerSettings {
                image: args.docker_image.clone(),
                prefix: args
                    .docker_prefix
                    .clone()
                    .unwrap_or_else(|| format!("kvlab-{coordinator_port}")),
                registry_port,
            }))),
        }
    }

    pub fn kind(&self) -> RuntimeKind {
        match self {
            Runtime::Process => RuntimeKind::Process,
            Runtime::Docker(_) => RuntimeKind::Docker,
            Runtime::External => RuntimeKind::External,
        }
    }
}

/// A node just started, whatever runs it.
pub struct Started {
    pub pid: Option<u32>,
    pub url: String,
    pub exited: watch::Receiver<Option<String>>,
    pub log_file: PathBuf,
}

/// How long a stop may take before the process is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

impl Coordinator {
    /// Before the first node: the Docker runtime checks the daemon and the
    /// image, removes a previous run's leftovers and makes its network.
    pub(super) async fn prepare_runtime(&self) -> anyhow::Result<()> {
        let Runtime::Docker(hosts) = &self.runtime else {
            return Ok(());
        };
        let fresh = self.config.launch.storage.as_ref().is_some_and(|s| s.fresh);
        let removed = hosts.prepare(fresh).await?;
        let prefix = &hosts.settings().prefix;
        if !removed.is_empty() {
            self.events.warn(
                EventKind::Storage,
                None,
                format!(
                    "🧹 removed what an earlier run ({prefix}) left: {}",
                    removed.join(", ")
                ),
            );
        }
        self.events.info(
            EventKind::Storage,
            None,
            format!(
                "🐳 nodes run as containers {prefix}-<node-id> of the image {} on the network \
                 {prefix}-net; data in the volumes {prefix}-<node-id>",
                hosts.settings().image
            ),
        );
        Ok(())
    }

    /// Starts a process for `spec` (the port checked first, for processes).
    pub(super) async fn launch_node(&self, spec: &NodeSpec) -> anyhow::Result<Started> {
        let settings = &self.config.launch;
        match &self.runtime {
            Runtime::Process => {
                launcher::wait_port_free(&settings.host, spec.port).await?;
                let l = launcher::launch(settings, spec)?;
                Ok(Started {
                    pid: Some(l.pid),
                    url: self.config.node_url(spec.port),
                    exited: l.exited,
                    log_file: l.log_file,
                })
            }
            Runtime::Docker(hosts) => {
                let flags = settings.node_flags();
                let with_registry = settings.registry.is_some();
                let s = hosts
                    .launch(&flags, with_registry, &settings.log_dir, spec)
                    .await?;
                Ok(Started {
                    pid: None,
                    url: s.url,
                    exited: s.exited,
                    log_file: s.log_file,
                })
            }
            Runtime::External => anyhow::bail!(
                "this coordinator does not start nodes (--runtime external): start {} with \
                 `kvlab node --join` (or let its supervisor restart it)",
                spec.node_id
            ),
        }
    }

    /// The slot's process is known to have exited: it counts as dead even
    /// before the registry notices its silence (a crash kill, say). A slot
    /// still starting is its starter's business.
    pub(super) fn has_exited(&self, s: &Slot) -> bool {
        if s.status == crate::api::NodeStatus::Starting {
            return false;
        }
        match &self.runtime {
            Runtime::Process => s.pid.is_some_and(|p| !process_exists(p)),
            Runtime::Docker(hosts) => hosts.has_exited(&s.node_id, s.incarnation),
            Runtime::External => false,
        }
    }

    /// May the slot's process still run? Only a child process is known for
    /// sure (a container or an external node is judged by its heartbeats).
    /// A node stopped by `/kill` may still send one last heartbeat on its
    /// way out; that must not bring it back.
    pub(super) fn may_run(&self, s: &Slot) -> bool {
        match &self.runtime {
            Runtime::Process => s.pid.is_none_or(process_exists),
            Runtime::Docker(_) | Runtime::External => true,
        }
    }

    /// Is no process of this slot running? (For an external node the
    /// coordinator cannot tell, and says so.)
    pub(super) fn nothing_runs(&self, s: &Slot) -> bool {
        match &self.runtime {
            Runtime::Process => s.pid.is_none_or(|p| !process_exists(p)),
            Runtime::Docker(hosts) => !hosts.runs(&s.node_id),
            Runtime::External => true,
        }
    }

    /// A crash: SIGKILL, or `docker kill`; returns once it has ended. False
    /// if this runtime cannot crash a node (an external one).
    pub(super) async fn crash_node(&self, s: &Slot) -> bool {
        match &self.runtime {
            Runtime::Process => {
                if let Some(pid) = s.pid {
                    launcher::signal(pid, libc::SIGKILL);
                    wait_gone(pid).await;
                }
                true
            }
            Runtime::Docker(hosts) => {
                if let Err(e) = hosts.kill(&s.node_id).await {
                    self.events
                        .warn(EventKind::Crash, Some(&s.node_id), format!("⚠️  {e}"));
                }
                true
            }
            Runtime::External => false,
        }
    }

    /// After the node was asked to shut down (`asked`: the request got
    /// through): waits for it to end, then makes sure (SIGKILL, `docker stop`).
    pub(super) async fn finish_stop(&self, s: &Slot, asked: bool) {
        match &self.runtime {
            Runtime::Process => {
                let Some(pid) = s.pid else { return };
                if asked {
                    wait_gone(pid).await;
                }
                launcher::signal(pid, libc::SIGKILL);
            }
            Runtime::Docker(hosts) => {
                if let Err(e) = hosts.stop(&s.node_id).await {
                    self.events
                        .warn(EventKind::Kill, Some(&s.node_id), format!("⚠️  {e}"));
                }
            }
            Runtime::External => {}
        }
    }

    /// Stops every node this coordinator started, and removes what the
    /// runtime made (containers, network). External nodes are left alone.
    pub(super) async fn stop_nodes(&self) {
        match &self.runtime {
            Runtime::Process => self.stop_processes().await,
            Runtime::Docker(hosts) => match hosts.remove_all().await {
                Ok(removed) => self.events.info(
                    EventKind::ClusterStopped,
                    None,
                    format!("🧹 removed {}", removed.join(", ")),
                ),
                Err(e) => self.events.bad(
                    EventKind::StopForced,
                    None,
                    format!("❌ could not remove the containers: {e}"),
                ),
            },
            Runtime::External => {}
        }
    }

    /// A partition as the network sees it: the container is cut off the
    /// network (or put back). Only the Docker runtime can.
    pub(super) async fn set_connected(&self, node_id: &str, connected: bool) -> anyhow::Result<()> {
        match &self.runtime {
            Runtime::Docker(hosts) => Ok(hosts.set_connected(node_id, connected).await?),
            _ => anyhow::bail!(
                "only --runtime docker can disconnect a node from its network; \
                 use /admin/partition/{node_id} for the in-process partition hook"
            ),
        }
    }
}

/// Waits (at most [`STOP_TIMEOUT`]) until the process has exited.
pub(super) async fn wait_gone(pid: u32) {
    let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
    while process_exists(pid) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `POST /admin/network/{node_id}` body.
#[derive(Debug, serde::Deserialize)]
pub struct NetworkRequest {
    /// false cuts the node off its network; true puts it back.
    pub connected: bool,
}

/// `POST /admin/network/{node_id}` `{"connected": false|true}`: a real
/// partition of a container (`docker network disconnect`/`connect`). Unlike
/// the partition hook, it does not expire: heal it with `connected: true`.
pub async fn network(
    axum::extract::State(c): super::Shared,
    crate::http::ApiPath(node_id): crate::http::ApiPath<String>,
    crate::http::ApiJson(req): crate::http::ApiJson<NetworkRequest>,
) -> Result<axum::Json<serde_json::Value>, crate::http::ApiError> {
    use crate::http::ApiError;
    let node_id = c.snapshot().resolve(&node_id, false);
    if c.snapshot().slot(&node_id).is_none() {
        return Err(ApiError::not_found(format!("Node '{node_id}' not found")));
    }
    c.set_connected(&node_id, req.connected)
        .await
        .map_err(|e| {
            ApiError::conflict(serde_json::json!({"error": format!("{e:#}"), "node_id": node_id}))
        })?;
    if req.connected {
        c.events.good(
            EventKind::PartitionHealed,
            Some(&node_id),
            format!("🔗 {node_id} is back on its network (docker network connect)"),
        );
    } else {
        c.events.warn(
            EventKind::Partitioned,
            Some(&node_id),
            format!(
                "✂️  {node_id} is cut off its network (docker network disconnect): nobody \
                 reaches it and it reaches nobody, but it still runs"
            ),
        );
    }
    Ok(axum::Json(
        serde_json::json!({"node_id": node_id, "connected": req.connected}),
    ))
}

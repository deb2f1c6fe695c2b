//! Starting and stopping node processes.
//!
//! The coordinator runs its own binary again as `kvlab node ...`, one OS
//! process per node. Three rules keep that safe:
//! - **Output never blocks a node.** Each node writes to its own log file
//!   (`<log-dir>/<node-id>.log`); nothing depends on anyone reading a pipe.
//! - **Nodes outlive a crashed coordinator, but no orphan lives forever.**
//!   A `kvlab node` child gets `--supervisor-pid <this process>`: when the
//!   coordinator dies, the node keeps serving, a restarted coordinator adopts
//!   it (see `coordinator::adopt`), and a node nobody adopts within
//!   `--orphan-timeout` stops by itself (see `node::supervision`). It stays
//!   in the coordinator's process group, so one SIGKILL of the group (what
//!   tests and `kvlab check` do) ends everything; it ignores SIGINT, so a
//!   Ctrl-C in the terminal leaves the stopping to the coordinator, in order.
//!   A student's node (`--node-cmd`) does not speak the adoption protocol: it
//!   gets its own process group and the parent-death signal
//!   (`PR_SET_PDEATHSIG`), and dies with the coordinator.
//! - **Ports are checked first**, so "port taken" is a clear error, not a
//!   node that silently failed to start.
//!
//! With `kvlab up --hosts netns` ([`crate::hosts::netns`]), `launch` puts the
//! process in its slot's network namespace and has it listen on the slot's
//! address; nothing else here changes.
//!
//! With `--node-cmd` ([`NodeCommands`]), a slot runs a student's program
//! instead of `kvlab node`: the same rules hold (own log file, parent-death
//! signal, port checked first), and the node's settings reach it in
//! environment variables (`KVLAB_NODE_ID`, `KVLAB_PORT`, ..., see
//! `docs/node-protocol.md`) since its command line is the student's.

use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::watch;

use crate::hosts::netns::{NetnsError, NetnsHosts};
use crate::node::command_line::{self, NodeFlags, StorageFlags, Supervisor};
pub use crate::node::command_line::{NodeSpec, Placement};
use crate::process::die_with_parent;

/// What the coordinator passes to every node it starts.
#[derive(Debug, Clone)]
pub struct LaunchSettings {
    pub binary: PathBuf,
    pub log_dir: PathBuf,
    pub host: String,
    pub registry: Option<String>,
    pub sync_delay: f64,
    pub async_delay: f64,
    pub heartbeat_interval: f64,
    pub log_retain: usize,
    /// `None`: the nodes keep everything in memory.
    pub storage: Option<NodeStorage>,
    /// `Some`: each node runs in its own network namespace (`--hosts netns`).
    pub netns: Option<Arc<NetnsHosts>>,
    /// Slots that run a student's node instead of `kvlab node`.
    pub commands: NodeCommands,
    /// The nodes' TLS mode and files (the coordinator's own).
    pub tls: crate::tls::TlsArgs,
    /// Seconds a node whose coordinator is gone waits to be adopted.
    pub orphan_timeout: u64,
    /// Every node gets the parent-death signal (hidden
    /// `--nodes-die-with-coordinator`: the clusters of `check` and `assess`).
    pub die_with_coordinator: bool,
    /// `--internal-wire`: the coordinator's and every leader's.
    pub internal_wire: crate::http::wire::Mode,
}

/// `--node-cmd` and `--node-cmd-leader`: the programs that replace `kvlab
/// node` for the followers' slots and for the leader's slot. A slot keeps its
/// program for life: the slot named `leader` runs the leader's command (or
/// kvlab's node) even after a failover made it a follower.
#[derive(Debug, Clone, Default)]
pub struct NodeCommands {
    pub follower: Option<String>,
    pub leader: Option<String>,
}

impl NodeCommands {
    /// The command template of slot `node_id`, or `None` for kvlab's node.
    pub fn for_slot(&self, node_id: &str) -> Option<&str> {
        if node_id == crate::api::LEADER_ID {
            self.leader.as_deref()
        } else {
            self.follower.as_deref()
        }
    }

    /// May the coordinator promote this slot's node? kvlab's own node can
    /// always lead. A student's node can only when the course said it
    /// implements the leader (level 4), which `--node-cmd-leader` says:
    /// a level 1-3 node would accept the promotion and then drop writes.
    pub fn can_lead(&self, node_id: &str) -> bool {
        self.for_slot(node_id).is_none() || self.leader.is_some()
    }

    /// Does any slot run a student's node?
    pub fn any(&self) -> bool {
        self.follower.is_some() || self.leader.is_some()
    }
}

/// The environment variables a student's node reads its settings from
/// (documented in `docs/node-protocol.md`, "Starting").
pub mod env {
    pub const NODE_ID: &str = "KVLAB_NODE_ID";
    pub const HOST: &str = "KVLAB_HOST";
    pub const PORT: &str = "KVLAB_PORT";
    pub const ROLE: &str = "KVLAB_ROLE";
    pub const INCARNATION: &str = "KVLAB_INCARNATION";
    pub const REGISTRY: &str = "KVLAB_REGISTRY";
    pub const DATA_DIR: &str = "KVLAB_DATA_DIR";
    pub const FSYNC: &str = "KVLAB_FSYNC";
    pub const FSYNC_INTERVAL_MS: &str = "KVLAB_FSYNC_INTERVAL_MS";
    pub const HEARTBEAT_INTERVAL: &str = "KVLAB_HEARTBEAT_INTERVAL";
    pub const SYNC_DELAY: &str = "KVLAB_SYNC_DELAY";
    pub const ASYNC_DELAY: &str = "KVLAB_ASYNC_DELAY";
    pub const LOG_RETAIN: &str = "KVLAB_LOG_RETAIN";
}

/// How the nodes persist their data.
#[derive(Debug, Clone)]
pub struct NodeStorage {
    /// Node `<id>` uses `<base_dir>/<id>`: a slot keeps its directory across
    /// restarts, which is what lets a restarted node recover.
    pub base_dir: PathBuf,
    /// Wipe `base_dir` before the cluster starts.
    pub fresh: bool,
    pub fsync: crate::storage::FsyncPolicy,
    pub fsync_interval_ms: u64,
    pub snapshot_every: u64,
    /// Nodes simulate power loss (a hidden test switch, `storage::power`).
    pub simulate_power_loss: bool,
}

impl NodeStorage {
    pub fn dir_of(&self, node_id: &str) -> PathBuf {
        self.base_dir.join(node_id)
    }
}

impl LaunchSettings {
    /// What every node's command line says (see [`command_line`]).
    pub fn node_flags(&self) -> NodeFlags {
        NodeFlags {
            sync_delay: self.sync_delay,
            async_delay: self.async_delay,
            heartbeat_interval: self.heartbeat_interval,
            log_retain: self.log_retain,
            tls: self.tls.clone(),
            // Set by `launch` for the nodes it starts as processes.
            supervisor: None,
            internal_wire: self.internal_wire,
            storage: self.storage.as_ref().map(|s| StorageFlags {
                fsync: s.fsync,
                fsync_interval_ms: s.fsync_interval_ms,
                snapshot_every: s.snapshot_every,
                simulate_power_loss: s.simulate_power_loss,
            }),
        }
    }
}

/// A started process. `exited` turns `Some(reason)` when it ends.
pub struct Launched {
    pub pid: u32,
    pub exited: watch::Receiver<Option<String>>,
    pub log_file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("port {0} is already in use by another process")]
    PortInUse(u16),
    #[error("cannot listen on port {port}: {source}")]
    PortUnusable { port: u16, source: std::io::Error },
    #[error("cannot open the node's log file {path}: {source}")]
    LogFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot give the node a network namespace: {0}")]
    Netns(#[from] NetnsError),
    #[error("cannot make the node's data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
}

/// Is anybody listening on (or holding) this port?
pub fn port_is_free(host: &str, port: u16) -> bool {
    TcpListener::bind((host, port)).is_ok()
}

/// Can a node listen on this port now? Says why not: taken, or refused
/// (a privileged port, say).
pub fn check_port(host: &str, port: u16) -> Result<(), LaunchError> {
    match TcpListener::bind((host, port)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(LaunchError::PortInUse(port)),
        Err(source) => Err(LaunchError::PortUnusable { port, source }),
    }
}

/// Waits (briefly) for a port to be free: the process that held it may have
/// been killed a moment ago.
pub async fn wait_port_free(host: &str, port: u16) -> Result<(), LaunchError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while !port_is_free(host, port) {
        if tokio::time::Instant::now() > deadline {
            return Err(LaunchError::PortInUse(port));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The `kvlab node ...` arguments (without the binary) for `spec`, for a
/// node process this coordinator supervises.
pub fn node_args(settings: &LaunchSettings, spec: &NodeSpec, at: &Placement) -> Vec<String> {
    let flags = NodeFlags {
        supervisor: Some(Supervisor {
            pid: std::process::id(),
            orphan_timeout: settings.orphan_timeout,
        }),
        ..settings.node_flags()
    };
    command_line::node_args(&flags, spec, at)
}

/// Starts a node process. Check the port with [`wait_port_free`] first.
pub fn launch(settings: &LaunchSettings, spec: &NodeSpec) -> Result<Launched, LaunchError> {
    let log_file = settings.log_dir.join(format!("{}.log", spec.node_id));
    let (stdout, stderr) = open_log(&log_file)?;
    let student = settings.commands.for_slot(&spec.node_id);
    let (program, mut cmd) = match student {
        Some(_) => (PathBuf::from("sh"), Command::new("sh")),
        None => (settings.binary.clone(), Command::new(&settings.binary)),
    };
    let (mut host, mut registry) = (settings.host.clone(), settings.registry.clone());
    // On netns hosts with netem lab delays, the links carry the delays: the
    // node must not add its own, and must wait longer than a link's latency
    // for a connection.
    let mut own = std::borrow::Cow::Borrowed(settings);
    let mut netns_args: Vec<String> = Vec::new();
    if let Some(hosts) = &settings.netns {
        let slot = hosts.slot_of(spec.port)?;
        host = hosts.ensure_host(slot)?.to_string();
        registry = registry.map(|_| hosts.registry_url());
        hosts.enter(&mut cmd, slot)?;
        if hosts.lab_delays_are_netem() {
            let slowest = settings.sync_delay.max(settings.async_delay);
            netns_args = vec![
                "--connect-timeout".into(),
                (2.0 + 2.0 * slowest).to_string(),
            ];
            let own = own.to_mut();
            (own.sync_delay, own.async_delay) = (0.0, 0.0);
        }
    }
    let here = Placement {
        host: &host,
        advertise: None,
        registry: registry.as_deref(),
        data_dir: settings.storage.as_ref().map(|s| s.dir_of(&spec.node_id)),
    };
    match student {
        Some(template) => student_command(&mut cmd, template, &own, spec, &here)?,
        None => {
            cmd.args(node_args(&own, spec, &here)).args(&netns_args);
        }
    }
    cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
    // The cluster secret goes in the environment: a command line is
    // readable by every user of the machine (`ps`), the environment only by
    // the same user.
    if let Some(secret) = crate::auth::installed() {
        cmd.env(crate::auth::ENV_SECRET, secret.expose());
    }
    if student.is_some() {
        // A student's node does not speak the adoption protocol: it dies
        // with its coordinator, in a group of its own.
        cmd.process_group(0);
    }
    if student.is_some() || settings.die_with_coordinator {
        die_with_parent(&mut cmd);
    }
    let mut child = cmd.spawn().map_err(|source| LaunchError::Spawn {
        binary: program,
        source,
    })?;
    let pid = child.id().unwrap_or_default();
    let (tx, exited) = watch::channel(None);
    tokio::spawn(async move {
        let reason = match child.wait().await {
            Ok(status) => describe_exit(status),
            Err(e) => format!("could not wait for it: {e}"),
        };
        let _ = tx.send(Some(reason));
    });
    Ok(Launched {
        pid,
        exited,
        log_file,
    })
}

/// Makes `cmd` (a `sh`) run a student's node: `sh -c 'exec CMD'`, so that
/// the node *is* the process the coordinator signals (kill, crash, pause)
/// and gets the parent-death signal, with the placeholders of the template
/// filled in and the node's settings in its environment.
fn student_command(
    cmd: &mut Command,
    template: &str,
    settings: &LaunchSettings,
    spec: &NodeSpec,
    at: &Placement,
) -> Result<(), LaunchError> {
    let data_dir = at
        .data_dir
        .as_ref()
        .filter(|_| settings.storage.is_some())
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    if !data_dir.is_empty() {
        // kvlab's node makes its own directory; a student's may assume it exists.
        std::fs::create_dir_all(&data_dir).map_err(|source| LaunchError::DataDir {
            path: data_dir.clone().into(),
            source,
        })?;
    }
    let registry = at.registry.unwrap_or_default().to_string();
    let vars: [(&str, &str, String); 13] = [
        (env::NODE_ID, "{id}", spec.node_id.clone()),
        (env::HOST, "{host}", at.host.to_string()),
        (env::PORT, "{port}", spec.port.to_string()),
        (env::ROLE, "{role}", spec.role.as_str().to_string()),
        (
            env::INCARNATION,
            "{incarnation}",
            spec.incarnation.to_string(),
        ),
        (env::REGISTRY, "{registry}", registry),
        (env::DATA_DIR, "{data_dir}", data_dir),
        (
            env::FSYNC,
            "{fsync}",
            settings
                .storage
                .as_ref()
                .map_or("never", |s| s.fsync.name())
                .to_string(),
        ),
        (
            env::FSYNC_INTERVAL_MS,
            "{fsync_interval_ms}",
            settings
                .storage
                .as_ref()
                .map_or(0, |s| s.fsync_interval_ms)
                .to_string(),
        ),
        (
            env::HEARTBEAT_INTERVAL,
            "{heartbeat_interval}",
            settings.heartbeat_interval.to_string(),
        ),
        (
            env::SYNC_DELAY,
            "{sync_delay}",
            settings.sync_delay.to_string(),
        ),
        (
            env::ASYNC_DELAY,
            "{async_delay}",
            settings.async_delay.to_string(),
        ),
        (
            env::LOG_RETAIN,
            "{log_retain}",
            settings.log_retain.to_string(),
        ),
    ];
    let mut line = template.to_string();
    for (name, placeholder, value) in &vars {
        line = line.replace(placeholder, &shell_quote(value));
        cmd.env(name, value);
    }
    // TLS as kvlab's node gets it (see `tls`): the mode, and the files'
    // paths when there are any; a node that listens where TLS is on must
    // serve https with them.
    cmd.env(crate::tls::ENV_MODE, settings.tls.mode.name());
    let files = [
        (crate::tls::ENV_CA, &settings.tls.tls_ca),
        (crate::tls::ENV_CERT, &settings.tls.tls_cert),
        (crate::tls::ENV_KEY, &settings.tls.tls_key),
    ];
    for (name, path) in files {
        if let Some(path) = path {
            cmd.env(name, path);
        }
    }
    // Python buffers a redirected stdout: without this a student's prints
    // reach the node's log file only when the buffer fills or it exits.
    cmd.env("PYTHONUNBUFFERED", "1");
    cmd.arg("-c").arg(format!("exec {line}"));
    Ok(())
}

/// `value` as one word for `sh`: as it is when it holds only safe
/// characters, else in single quotes.
fn shell_quote(value: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c);
    if !value.is_empty() && value.chars().all(safe) {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

fn open_log(path: &Path) -> Result<(Stdio, Stdio), LaunchError> {
    let err = |source| LaunchError::LogFile {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(err)?;
    let copy = file.try_clone().map_err(err)?;
    Ok((Stdio::from(file), Stdio::from(copy)))
}

/// How [`Launched::exited`] says a node refused to serve a corrupt log.
pub const EXITED_CORRUPT_LOG: &str = "exited: its log on disk is corrupt, so it refused to serve";

/// How [`Launched::exited`] says a node stopped because its disk is full.
pub const EXITED_DISK_FULL: &str = "stopped: its disk is full (free space, then /spawn it)";

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => "exited normally".into(),
        (Some(3), _) => "exited: it learned it was replaced (fenced)".into(),
        (Some(crate::api::EXIT_CORRUPT_LOG), _) => EXITED_CORRUPT_LOG.into(),
        (Some(crate::api::EXIT_DISK_FULL), _) => EXITED_DISK_FULL.into(),
        (Some(crate::api::EXIT_STORAGE_FAILED), _) => {
            "stopped: its storage failed (an I/O error; see its log)".into()
        }
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(libc::SIGKILL)) => "killed by SIGKILL".into(),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => "ended".into(),
    }
}

/// Sends a signal to a process we started. Errors (it is already gone) are fine.
pub fn signal(pid: u32, sig: libc::c_int) {
    if pid == 0 {
        return;
    }
    // SAFETY: plain syscall on a pid we launched.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Waits for the process to end, up to `timeout`. True if it ended.
pub async fn wait_exit(exited: &mut watch::Receiver<Option<String>>, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, exited.wait_for(|e| e.is_some()))
        .await
        .is_ok()
}

/// The last lines of a node's log file: why it failed to start.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn exited(code: i32) -> String {
        describe_exit(std::process::ExitStatus::from_raw(code << 8))
    }

    #[test]
    fn a_full_disk_is_not_a_normal_exit() {
        assert_eq!(exited(crate::api::EXIT_DISK_FULL), EXITED_DISK_FULL);
        assert!(EXITED_DISK_FULL.starts_with("stopped: its disk is full"));
        assert!(exited(crate::api::EXIT_STORAGE_FAILED).contains("storage failed"));
        assert_eq!(exited(0), "exited normally");
        assert_eq!(exited(crate::api::EXIT_CORRUPT_LOG), EXITED_CORRUPT_LOG);
        assert_eq!(exited(9), "exited with code 9");
    }
}

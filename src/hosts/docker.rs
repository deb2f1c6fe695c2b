//! Nodes as Docker containers (`kvlab up --runtime docker`), through the
//! Docker Engine API (the `bollard` crate; no `docker` binary is run).
//!
//! The coordinator, registry and gateway stay on this machine; each node is
//! a container of the kvlab image (see the Dockerfile) on one private
//! network, `<prefix>-net`. What the process runtime does maps like this:
//! - **start**: a container `<prefix>-<node-id>`, its output copied to the
//!   node's log file as usual;
//! - **crash** (`/kill?mode=crash`): `docker kill` (SIGKILL); a **graceful**
//!   kill asks the node to shut down, then `docker stop`;
//! - **data directory**: a named volume `<prefix>-<node-id>` mounted at
//!   `/data`, so a restarted node recovers its own data (`--fresh` removes
//!   the volumes first, `--in-memory` uses none);
//! - **partition**: disconnecting the container from the network.
//!
//! Invariants:
//! - each node id keeps one address on the network for the whole run
//!   (restarts and reconnects included), so the URL the coordinator, the
//!   leader and the registry know it by never goes stale;
//! - everything made is labelled `kvlab.prefix=<prefix>`: a stop removes the
//!   containers and the network, and a start first removes what a run with
//!   the same prefix left (a SIGKILLed `kvlab up` cannot clean up). Volumes
//!   are data: they stay, as data directories do.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HostConfig, Ipam, IpamConfig, Mount,
    MountType, NetworkConnectRequest, NetworkCreateRequest, NetworkDisconnectRequest,
    NetworkingConfig, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, KillContainerOptions, ListContainersOptions, ListVolumesOptions,
    LogsOptions, RemoveContainerOptions, RemoveVolumeOptions, StopContainerOptions,
    WaitContainerOptions,
};
use bollard::Docker;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::node::command_line::{node_args, NodeFlags, NodeSpec, Placement};

/// Where the cluster's TLS files are mounted (read-only) in a container.
const TLS_DIR: &str = "/run/kvlab/tls";

/// The node's flags with the cluster's TLS files as the container sees
/// them, and a read-only bind mount of each file into [`TLS_DIR`].
fn tls_mounts(flags: &NodeFlags, mounts: &mut Vec<Mount>) -> NodeFlags {
    let mut flags = flags.clone();
    let tls = &mut flags.tls;
    let files = [
        (&mut tls.tls_ca, crate::tls::CA_FILE),
        (&mut tls.tls_cert, crate::tls::CERT_FILE),
        (&mut tls.tls_key, crate::tls::KEY_FILE),
    ];
    for (path, name) in files {
        if let Some(host_path) = path.take() {
            let inside = Path::new(TLS_DIR).join(name);
            mounts.push(Mount {
                target: Some(inside.display().to_string()),
                source: Some(host_path.display().to_string()),
                typ: Some(MountType::BIND),
                read_only: Some(true),
                ..Default::default()
            });
            *path = Some(inside);
        }
    }
    flags
}

/// The label on everything a run makes.
const LABEL: &str = "kvlab.prefix";
/// Where a node's volume is mounted in its container.
const DATA_DIR: &str = "/data";
/// How long `docker stop` waits before it kills.
const STOP_SECONDS: i32 = 3;

/// `kvlab up --runtime docker`'s settings.
#[derive(Debug, Clone)]
pub struct DockerSettings {
    /// The image with `kvlab` as its entrypoint (`docker build -t kvlab .`).
    pub image: String,
    /// Names of the containers, the network and the volumes start with it.
    pub prefix: String,
    /// The registry's port on this machine: containers reach it through the
    /// network's gateway address.
    pub registry_port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach the Docker daemon ({0}): is it running, and may this user use it?")]
    Unreachable(bollard::errors::Error),
    #[error("the image {0} is missing: build it in the kvlab folder with `docker build -t {0} .` (nothing is pulled)")]
    NoImage(String),
    #[error("no free /24 for the network {0} in 10.89.0.0/16: remove unused Docker networks")]
    NoSubnet(String),
    #[error("{what}: {source}")]
    Api {
        what: String,
        source: bollard::errors::Error,
    },
    #[error("the Docker runtime is not prepared (no network yet)")]
    NotPrepared,
}

/// The network of a run: its name and its addresses.
#[derive(Debug, Clone)]
struct Network {
    name: String,
    /// The first three octets of its /24.
    base: [u8; 3],
}

impl Network {
    fn address(&self, host: u8) -> Ipv4Addr {
        let [a, b, c] = self.base;
        Ipv4Addr::new(a, b, c, host)
    }

    /// This machine, as the containers see it.
    fn gateway(&self) -> Ipv4Addr {
        self.address(1)
    }
}

#[derive(Default)]
struct State {
    network: Option<Network>,
    /// node id -> its address's last octet, for the whole run.
    hosts: HashMap<String, u8>,
    /// node id -> (incarnation, the container's exit) of its latest container.
    exits: HashMap<String, (u64, watch::Receiver<Option<String>>)>,
}

/// A started container, as the coordinator needs it.
pub struct Started {
    pub url: String,
    pub exited: watch::Receiver<Option<String>>,
    pub log_file: PathBuf,
}

pub struct DockerHosts {
    settings: DockerSettings,
    docker: tokio::sync::OnceCell<Docker>,
    state: Mutex<State>,
}

fn api(what: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> DockerError {
    let what = what.into();
    move |source| DockerError::Api { what, source }
}

/// 404 (no such thing) and 304/409 (already in that state) are what a
/// cleanup expects.
fn tolerated(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 304 | 404 | 409,
            ..
        }
    )
}

fn ignore_gone(r: Result<(), bollard::errors::Error>) -> Result<(), bollard::errors::Error> {
    match r {
        Err(e) if tolerated(&e) => Ok(()),
        other => other,
    }
}

fn labels(prefix: &str) -> HashMap<String, String> {
    HashMap::from([(LABEL.to_string(), prefix.to_string())])
}

fn label_filter(prefix: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), vec![format!("{LABEL}={prefix}")])])
}

impl DockerHosts {
    pub fn new(settings: DockerSettings) -> DockerHosts {
        DockerHosts {
            settings,
            docker: tokio::sync::OnceCell::new(),
            state: Mutex::new(State::default()),
        }
    }

    pub fn settings(&self) -> &DockerSettings {
        &self.settings
    }

    async fn docker(&self) -> Result<&Docker, DockerError> {
        self.docker
            .get_or_try_init(|| async {
                let docker =
                    Docker::connect_with_local_defaults().map_err(DockerError::Unreachable)?;
                // The daemon may speak an older API than bollard's default.
                docker
                    .negotiate_version()
                    .await
                    .map_err(DockerError::Unreachable)
            })
            .await
    }

    fn container(&self, node_id: &str) -> String {
        format!("{}-{node_id}", self.settings.prefix)
    }

    fn volume(&self, node_id: &str) -> String {
        format!("{}-{node_id}", self.settings.prefix)
    }

    /// Before the first node: checks the daemon and the image, removes a
    /// previous run's leftovers (and its volumes if `fresh`), creates the
    /// network. Says what it removed.
    pub async fn prepare(&self, fresh: bool) -> Result<Vec<String>, DockerError> {
        let docker = self.docker().await?;
        let image = &self.settings.image;
        if let Err(e) = docker.inspect_image(image).await {
            return Err(match e {
                bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                } => DockerError::NoImage(image.clone()),
                e => api(format!("inspecting the image {image}"))(e),
            });
        }
        let mut removed = self.remove_all().await?;
        if fresh {
            removed.extend(self.remove_volumes().await?);
        }
        let network = self.create_network().await?;
        self.state.lock().unwrap().network = Some(network);
        Ok(removed)
    }

    /// Tries /24s of 10.89.0.0/16 until one overlaps nothing on the machine.
    async fn create_network(&self) -> Result<Network, DockerError> {
        let docker = self.docker().await?;
        let name = format!("{}-net", self.settings.prefix);
        for third in 0..=255u8 {
            let base = [10, 89, third];
            let net = Network {
                name: name.clone(),
                base,
            };
            let request = NetworkCreateRequest {
                name: name.clone(),
                driver: Some("bridge".into()),
                labels: Some(labels(&self.settings.prefix)),
                ipam: Some(Ipam {
                    config: Some(vec![IpamConfig {
                        subnet: Some(format!("10.89.{third}.0/24")),
                        gateway: Some(net.gateway().to_string()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            };
            match docker.create_network(request).await {
                Ok(_) => return Ok(net),
                // "Pool overlaps with other one on this address space".
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 403 | 400 | 500,
                    message,
                }) if message.contains("overlap") => continue,
                Err(e) => return Err(api(format!("creating the network {name}"))(e)),
            }
        }
        Err(DockerError::NoSubnet(name))
    }

    /// Removes every container and the network of this prefix (a stop, or
    /// the leftovers of a run that could not clean up). Names what it removed.
    pub async fn remove_all(&self) -> Result<Vec<String>, DockerError> {
        let docker = self.docker().await?;
        let prefix = &self.settings.prefix;
        let list = docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(label_filter(prefix)),
                ..Default::default()
            }))
            .await
            .map_err(api("listing containers"))?;
        let mut removed = vec![];
        for c in list {
            let Some(id) = c.id else { continue };
            let name = c
                .names
                .and_then(|n| n.first().cloned())
                .unwrap_or_else(|| id.clone());
            // `v`: the anonymous volume an --in-memory node gets from the
            // image's VOLUME goes too (named volumes, the data, stay).
            let force = RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            };
            ignore_gone(docker.remove_container(&id, Some(force)).await)
                .map_err(api(format!("removing the container {name}")))?;
            removed.push(format!("container {}", name.trim_start_matches('/')));
        }
        let network = format!("{prefix}-net");
        match docker.remove_network(&network).await {
            Ok(()) => removed.push(format!("network {network}")),
            Err(e) if tolerated(&e) => {}
            Err(e) => return Err(api(format!("removing the network {network}"))(e)),
        }
        Ok(removed)
    }

    async fn remove_volumes(&self) -> Result<Vec<String>, DockerError> {
        let docker = self.docker().await?;
        let volumes = docker
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(label_filter(&self.settings.prefix)),
            }))
            .await
            .map_err(api("listing volumes"))?;
        let mut removed = vec![];
        for v in volumes.volumes.unwrap_or_default() {
            ignore_gone(
                docker
                    .remove_volume(&v.name, Some(RemoveVolumeOptions { force: true }))
                    .await,
            )
            .map_err(api(format!("removing the volume {}", v.name)))?;
            removed.push(format!("volume {}", v.name));
        }
        Ok(removed)
    }

    /// The network, and this node's address on it (given on first use).
    fn place(&self, node_id: &str) -> Result<(Network, Ipv4Addr), DockerError> {
        let mut st = self.state.lock().unwrap();
        let net = st.network.clone().ok_or(DockerError::NotPrepared)?;
        let next = 10 + st.hosts.len();
        let host = *st
            .hosts
            .entry(node_id.to_string())
            .or_insert(u8::try_from(next).unwrap_or(254));
        Ok((net.clone(), net.address(host)))
    }

    /// Starts `spec` as a container (replacing the slot's previous one):
    /// with the cluster's node `flags`, heartbeating to the registry if
    /// `with_registry`, its output copied to `<log_dir>/<node-id>.log`.
    pub async fn launch(
        &self,
        flags: &NodeFlags,
        with_registry: bool,
        log_dir: &Path,
        spec: &NodeSpec,
    ) -> Result<Started, DockerError> {
        let docker = self.docker().await?;
        let (net, ip) = self.place(&spec.node_id)?;
        let name = self.container(&spec.node_id);
        // The slot's previous container: it is fenced already; make room.
        let force = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        ignore_gone(docker.remove_container(&name, Some(force)).await)
            .map_err(api(format!("removing the old container {name}")))?;
        // Containers listen on 0.0.0.0: off loopback, so https unless --tls off.
        let url = crate::tls::url(ip.into(), ip.into(), spec.port);
        let registry = with_registry.then(|| {
            let gateway = net.gateway().into();
            crate::tls::url(gateway, gateway, self.settings.registry_port)
        });
        let data_dir = flags.storage.as_ref().map(|_| PathBuf::from(DATA_DIR));
        let mut mounts = vec![];
        if flags.storage.is_some() {
            let volume = self.volume(&spec.node_id);
            docker
                .create_volume(VolumeCreateRequest {
                    name: Some(volume.clone()),
                    labels: Some(labels(&self.settings.prefix)),
                    ..Default::default()
                })
                .await
                .map_err(api(format!("creating the volume {volume}")))?;
            mounts.push(Mount {
                target: Some(DATA_DIR.into()),
                source: Some(volume),
                typ: Some(MountType::VOLUME),
                ..Default::default()
            });
        }
        let at = Placement {
            host: "0.0.0.0",
            advertise: Some(&url),
            registry: registry.as_deref(),
            data_dir,
        };
        let flags = tls_mounts(flags, &mut mounts);
        // The image's entrypoint is kvlab: the command is its arguments.
        let cmd = node_args(&flags, spec, &at);
        let endpoint = EndpointSettings {
            ipam_config: Some(EndpointIpamConfig {
                ipv4_address: Some(ip.to_string()),
                ..Default::default()
            }),
            aliases: Some(vec![spec.node_id.clone()]),
            ..Default::default()
        };
        // The cluster secret goes in the environment, as for processes (it
        // shows in `docker inspect`, to those who may use Docker: root's peers).
        let env = crate::auth::installed()
            .map(|secret| vec![format!("{}={}", crate::auth::ENV_SECRET, secret.expose())]);
        let body = ContainerCreateBody {
            image: Some(self.settings.image.clone()),
            cmd: Some(cmd),
            env,
            hostname: Some(spec.node_id.clone()),
            labels: Some(labels(&self.settings.prefix)),
            host_config: Some(HostConfig {
                network_mode: Some(net.name.clone()),
                mounts: Some(mounts),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(net.name.clone(), endpoint)])),
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        docker
            .create_container(Some(options), body)
            .await
            .map_err(api(format!("creating the container {name}")))?;
        docker
            .start_container(&name, None)
            .await
            .map_err(api(format!("starting the container {name}")))?;
        let log_file = log_dir.join(format!("{}.log", spec.node_id));
        tokio::spawn(copy_logs(docker.clone(), name.clone(), log_file.clone()));
        let exited = watch_exit(docker.clone(), name);
        self.state
            .lock()
            .unwrap()
            .exits
            .insert(spec.node_id.clone(), (spec.incarnation, exited.clone()));
        Ok(Started {
            url,
            exited,
            log_file,
        })
    }

    /// Has the container of this incarnation ended? (false if unknown)
    pub fn has_exited(&self, node_id: &str, incarnation: u64) -> bool {
        let st = self.state.lock().unwrap();
        st.exits
            .get(node_id)
            .is_some_and(|(inc, rx)| *inc == incarnation && rx.borrow().is_some())
    }

    /// Does a container of this node still run?
    pub fn runs(&self, node_id: &str) -> bool {
        let st = self.state.lock().unwrap();
        st.exits
            .get(node_id)
            .is_some_and(|(_, rx)| rx.borrow().is_none())
    }

    /// `docker kill`: SIGKILL, and wait (briefly) until it has ended.
    pub async fn kill(&self, node_id: &str) -> Result<(), DockerError> {
        let docker = self.docker().await?;
        let name = self.container(node_id);
        let options = KillContainerOptions {
            signal: "KILL".into(),
        };
        ignore_gone(docker.kill_container(&name, Some(options)).await)
            .map_err(api(format!("killing {name}")))?;
        self.wait_ended(node_id).await;
        Ok(())
    }

    /// `docker stop`: SIGTERM, SIGKILL after a few seconds.
    pub async fn stop(&self, node_id: &str) -> Result<(), DockerError> {
        let docker = self.docker().await?;
        let name = self.container(node_id);
        let options = StopContainerOptions {
            t: Some(STOP_SECONDS),
            ..Default::default()
        };
        ignore_gone(docker.stop_container(&name, Some(options)).await)
            .map_err(api(format!("stopping {name}")))?;
        self.wait_ended(node_id).await;
        Ok(())
    }

    async fn wait_ended(&self, node_id: &str) {
        let rx = self
            .state
            .lock()
            .unwrap()
            .exits
            .get(node_id)
            .map(|(_, rx)| rx.clone());
        if let Some(mut rx) = rx {
            let wait = rx.wait_for(|e| e.is_some());
            let _ = tokio::time::timeout(Duration::from_secs(STOP_SECONDS as u64 + 2), wait).await;
        }
    }

    /// A partition: cuts the node's container off the network (`connected:
    /// false`) or puts it back on its own address.
    pub async fn set_connected(&self, node_id: &str, connected: bool) -> Result<(), DockerError> {
        let docker = self.docker().await?;
        let (net, ip) = self.place(node_id)?;
        let container = self.container(node_id);
        let done = if connected {
            let endpoint = EndpointSettings {
                ipam_config: Some(EndpointIpamConfig {
                    ipv4_address: Some(ip.to_string()),
                    ..Default::default()
                }),
                aliases: Some(vec![node_id.to_string()]),
                ..Default::default()
            };
            let request = NetworkConnectRequest {
                container: container.clone(),
                endpoint_config: Some(endpoint),
            };
            docker.connect_network(&net.name, request).await
        } else {
            let request = NetworkDisconnectRequest {
                container: container.clone(),
                force: Some(true),
            };
            docker.disconnect_network(&net.name, request).await
        };
        // Connecting a connected container (or the reverse) is not an error.
        let done = match done {
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 403 | 500,
                message,
            }) if message.contains("already") || message.contains("is not connected") => Ok(()),
            other => other,
        };
        ignore_gone(done).map_err(api(format!(
            "{} {container}",
            if connected {
                "reconnecting"
            } else {
                "disconnecting"
            }
        )))
    }
}

/// Copies a container's output to the node's log file, as the process
/// runtime's nodes write theirs, until the container ends.
async fn copy_logs(docker: Docker, name: String, path: PathBuf) {
    if let Some(dir) = path.parent() {
        let _ = tokio::fs::create_dir_all(dir).await;
    }
    let Ok(mut file) = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .await
    else {
        return;
    };
    let options = LogsOptions {
        follow: true,
        stdout: true,
        stderr: true,
        ..Default::default()
    };
    let mut logs = docker.logs(&name, Some(options));
    while let Some(Ok(chunk)) = logs.next().await {
        if file.write_all(&chunk.into_bytes()).await.is_err() {
            return;
        }
    }
}

/// A watch that turns `Some(reason)` when the container ends.
fn watch_exit(docker: Docker, name: String) -> watch::Receiver<Option<String>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let options = WaitContainerOptions {
            condition: "not-running".into(),
        };
        let mut wait = docker.wait_container(&name, Some(options));
        let reason = match wait.next().await {
            Some(Ok(r)) => describe_exit(r.status_code),
            // bollard reports a non-zero exit code as an error.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
                describe_exit(code)
            }
            Some(Err(e)) => format!("could not be waited for: {e}"),
            None => "ended".into(),
        };
        let _ = tx.send(Some(format!("(container {name}) {reason}")));
    });
    rx
}

fn describe_exit(code: i64) -> String {
    match code {
        0 => "exited normally".into(),
        3 => "exited: it learned it was replaced (fenced)".into(),
        c if c == i64::from(crate::api::EXIT_DISK_FULL) => "stopped: its disk is full".into(),
        c if c == i64::from(crate::api::EXIT_STORAGE_FAILED) => {
            "stopped: its storage failed (an I/O error; see its log)".into()
        }
        137 => "killed by SIGKILL (docker kill)".into(),
        143 => "stopped by SIGTERM".into(),
        c => format!("exited with code {c}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_keeps_its_address() {
        let hosts = DockerHosts::new(DockerSettings {
            image: "kvlab".into(),
            prefix: "kvlab-t".into(),
            registry_port: 9000,
        });
        assert!(matches!(
            hosts.place("leader"),
            Err(DockerError::NotPrepared)
        ));
        hosts.state.lock().unwrap().network = Some(Network {
            name: "kvlab-t-net".into(),
            base: [10, 89, 3],
        });
        let (net, leader) = hosts.place("leader").unwrap();
        assert_eq!(net.gateway(), Ipv4Addr::new(10, 89, 3, 1));
        assert_eq!(leader, Ipv4Addr::new(10, 89, 3, 10));
        assert_eq!(
            hosts.place("follower-1").unwrap().1,
            Ipv4Addr::new(10, 89, 3, 11)
        );
        assert_eq!(hosts.place("leader").unwrap().1, leader, "stable");
    }

    #[test]
    fn exit_codes_are_explained() {
        assert_eq!(describe_exit(137), "killed by SIGKILL (docker kill)");
        assert_eq!(describe_exit(2), "exited with code 2");
    }
}

//! A cluster under test: `kvlab up` as a child process, its ports, its end.
//!
//! The autograder (`kvlab assess`) and the checker (`kvlab check`) run their
//! own binary again (`current_exe() up ...`) with the flags they need, in a
//! process group of its own, and wait for it over HTTP (never a fixed
//! sleep). Invariants:
//! - **Every port is checked first.** A taken port is named (and what it was
//!   for) before anything starts, so the run fails in milliseconds rather
//!   than hanging on a cluster that half started.
//! - **Nothing outlives the run.** `stop` sends SIGTERM to the
//!   group (so `up` stops its nodes in order), then SIGKILL after a grace
//!   period. If the run itself dies, `up` gets SIGKILL from the kernel
//!   (parent-death signal), and its nodes get theirs the same way (the
//!   hidden `--nodes-die-with-coordinator`: a run's cluster is never
//!   adopted by a later coordinator). SIGKILL goes to the whole group,
//!   which holds `up` and its nodes. The
//!   guard's `Drop` kills the group too, for early returns and panics.
//! - Output goes to a log file, never a pipe nobody reads.
//! - Every run starts from empty nodes (`--fresh` on its own data directory).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use serde::Serialize;

use crate::api::{ports, NodeStatus, StatusResponse};

/// How long a cluster may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `up` has to stop its nodes after SIGTERM (it gives them 2 s).
const STOP_GRACE: Duration = Duration::from_secs(6);
const POLL: Duration = Duration::from_millis(50);

/// The exit code of a run the user interrupted (Ctrl-C), for `assess` and
/// `check` alike.
pub const EXIT_INTERRUPTED: i32 = 130;

/// Where the secret comes from without a flag or `$KVLAB_CLUSTER_SECRET`:
/// a new one for a cluster we start, the user's file for a running one.
pub fn secret_fallback(no_start_cluster: bool) -> crate::auth::Fallback {
    if no_start_cluster {
        crate::auth::Fallback::UserFile
    } else {
        crate::auth::Fallback::Fresh
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("port {port} ({what}) is already in use: stop whatever holds it, or move the whole cluster with --base-port")]
    PortTaken { port: u16, what: String },
    #[error("cannot create {path}: {source}")]
    LogDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start `{binary} up`: {source}")]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("the cluster stopped while starting ({status}); last lines of {log}:\n{tail}")]
    Exited {
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("the cluster was not ready within {0:?} (see {1})")]
    NotReady(Duration, PathBuf),
    #[error("cannot make the cluster's TLS files: {0}")]
    Tls(String),
}

/// Every port of the cluster under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Ports {
    pub coordinator: u16,
    pub registry: u16,
    pub gateway: u16,
    /// The leader's; follower-i listens on `leader + i`.
    pub leader: u16,
}

impl Ports {
    /// The lab's default ports (docs/api.md).
    pub const DEFAULT: Ports = Ports {
        coordinator: ports::COORDINATOR,
        registry: ports::REGISTRY,
        gateway: ports::GATEWAY,
        leader: ports::LEADER,
    };

    /// `--base-port P`: one contiguous block, so that several assessments
    /// (or tests) can run side by side: coordinator P, registry P+1,
    /// gateway P+2, leader P+3, follower-i P+3+i.
    pub fn from_base(base: u16) -> Option<Ports> {
        Some(Ports {
            coordinator: base,
            registry: base.checked_add(1)?,
            gateway: base.checked_add(2)?,
            leader: base.checked_add(3)?,
        })
    }

    /// `--base-port P` for a cluster with a replicated control plane
    /// (`kvlab up --ha`, whose extra processes sit at offsets of these
    /// ports, see `up::ha`): coordinator P (the others P+10, P+20, etcd from
    /// P+30 to P+35), the gateways P+2 and P+1, leader P+3, follower-i
    /// P+3+i (at most 5 of them), registry P+9.
    pub fn from_base_ha(base: u16) -> Option<Ports> {
        base.checked_add(40)?;
        Some(Ports {
            coordinator: base,
            registry: base + 9,
            gateway: base + 2,
            leader: base + 3,
        })
    }

    /// Every port a cluster of `followers` needs, each with what it is for.
    pub fn all(&self, followers: usize) -> Vec<(u16, String)> {
        let mut all = vec![
            (self.coordinator, "the coordinator".to_string()),
            (self.registry, "the registry".to_string()),
            (self.gateway, "the gateway".to_string()),
            (self.leader, "the leader".to_string()),
        ];
        for i in 1..=followers {
            if let Some(p) = self.leader.checked_add(i as u16) {
                all.push((p, format!("follower-{i}")));
            }
        }
        all
    }

    pub fn url(port: u16) -> String {
        format!("http://127.0.0.1:{port}")
    }
}

/// Fails fast, naming the first port that is taken.
pub fn check_ports(ports: &Ports, followers: usize) -> Result<(), ClusterError> {
    for (port, what) in ports.all(followers) {
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            return Err(ClusterError::PortTaken { port, what });
        }
    }
    Ok(())
}

/// A running `kvlab up`. Stop it with [`ClusterProcess::stop`]; dropping it
/// kills it.
pub struct ClusterProcess {
    child: Child,
    pid: u32,
    pub log: PathBuf,
    /// The nodes' data, removed once the cluster has stopped.
    data: PathBuf,
    /// Leave it running when this handle goes away (`--no-stop-cluster`).
    keep: bool,
    stopped: bool,
}

impl ClusterProcess {
    /// Starts `kvlab up` with these flags (`followers` of them among its
    /// flags) and ports, and waits until the leader and every follower are
    /// alive and the gateway listens. Its logs go to
    /// `<temp dir>/kvlab-<purpose>-<coordinator port>`.
    pub async fn start(
        up_flags: &[String],
        followers: usize,
        ports: &Ports,
        purpose: &str,
        keep: bool,
    ) -> Result<ClusterProcess, ClusterError> {
        check_ports(ports, followers)?;
        let dir = std::env::temp_dir().join(format!("kvlab-{purpose}-{}", ports.coordinator));
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|source| ClusterError::LogDir {
                path: dir.clone(),
                source,
            })?;
        let log = dir.join("up.log");
        let out = tokio::fs::File::create(&log)
            .await
            .map_err(|source| ClusterError::LogDir {
                path: log.clone(),
                source,
            })?
            .into_std()
            .await;
        let data = dir.join("data");
        let tls = tool_tls(&dir)?;
        let child = spawn_up(up_flags, ports, &dir, &data, out, keep, &tls)?;
        let pid = child.id().unwrap_or_default();
        let mut cluster = ClusterProcess {
            child,
            pid,
            log,
            data,
            keep,
            stopped: false,
        };
        // With several coordinators (`--ha`) the first may be a standby: the
        // gateway's `/cluster-status` is whoever is in charge.
        let ha = up_flags.iter().any(|f| f == "--ha");
        cluster.wait_ready(ports, followers, ha).await?;
        Ok(cluster)
    }

    /// Where the nodes write their logs.
    pub fn node_log_dir(&self) -> PathBuf {
        self.log.with_file_name("nodes")
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Polls the coordinator until every node is alive, then the gateway.
    async fn wait_ready(
        &mut self,
        ports: &Ports,
        followers: usize,
        ha: bool,
    ) -> Result<(), ClusterError> {
        let http = crate::http::client();
        let status_url = match ha {
            false => format!("{}/status", Ports::url(ports.coordinator)),
            true => format!("{}/cluster-status", Ports::url(ports.gateway)),
        };
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let tail = log_tail(&self.log, 8).await;
                return Err(ClusterError::Exited {
                    status: status.to_string(),
                    log: self.log.clone(),
                    tail,
                });
            }
            if all_alive(&http, &status_url, followers).await
                && listening(ports.gateway).await
                && listening(ports.registry).await
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(ClusterError::NotReady(START_TIMEOUT, self.log.clone()));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGTERM to the group, SIGKILL after the grace period; waits for the end.
    pub async fn stop(mut self) {
        self.stopped = true;
        signal_group(self.pid, libc::SIGTERM);
        if tokio::time::timeout(STOP_GRACE, self.child.wait())
            .await
            .is_err()
        {
            signal_group(self.pid, libc::SIGKILL);
            let _ = self.child.wait().await;
        }
        // The logs stay for a look afterwards; the data is of no more use.
        let _ = tokio::fs::remove_dir_all(&self.data).await;
    }

    /// Lets the cluster run on after this process exits.
    pub fn detach(mut self) -> u32 {
        self.stopped = true;
        self.keep = true;
        self.pid
    }
}

impl Drop for ClusterProcess {
    fn drop(&mut self) {
        if !self.stopped && !self.keep {
            // No time to be polite here: SIGKILL, and the nodes follow by
            // their parent-death signal.
            signal_group(self.pid, libc::SIGKILL);
        }
    }
}

/// The TLS files of the clusters this process starts, made once (in the
/// first cluster's folder) and trusted by this process: like the secret,
/// the tool hands them to its `kvlab up`, so that its own requests to the
/// nodes (the nemesis's hooks) get through where the nodes speak TLS
/// (`--hosts netns`). On loopback `up` listens plain and they go unused.
fn tool_tls(dir: &Path) -> Result<crate::tls::Files, ClusterError> {
    static FILES: std::sync::OnceLock<crate::tls::Files> = std::sync::OnceLock::new();
    if let Some(files) = FILES.get() {
        return Ok(files.clone());
    }
    let names = crate::tls::names_for(std::net::Ipv4Addr::LOCALHOST.into(), &[]);
    let tls_err = |e: crate::tls::TlsError| ClusterError::Tls(e.to_string());
    let files = crate::tls::make(&dir.join("tls"), &names).map_err(tls_err)?;
    let trust = crate::tls::TlsArgs {
        tls_ca: Some(files.ca.clone()),
        ..Default::default()
    };
    crate::tls::install(&trust, &[]).map_err(tls_err)?;
    Ok(FILES.get_or_init(|| files).clone())
}

fn spawn_up(
    up_flags: &[String],
    ports: &Ports,
    dir: &Path,
    data: &Path,
    out: std::fs::File,
    keep: bool,
    tls: &crate::tls::Files,
) -> Result<Child, ClusterError> {
    let binary = std::env::current_exe().unwrap_or_else(|_| "kvlab".into());
    let spawn_err = |source| ClusterError::Spawn {
        binary: binary.clone(),
        source,
    };
    let err = out.try_clone().map_err(spawn_err)?;
    let mut cmd = Command::new(&binary);
    cmd.arg("up")
        .args(up_flags)
        .args(["--coordinator-port", &ports.coordinator.to_string()])
        .args(["--registry-port", &ports.registry.to_string()])
        .args(["--gateway-port", &ports.gateway.to_string()])
        .args(["--node-base-port", &ports.leader.to_string()])
        .arg("--log-dir")
        .arg(dir.join("nodes"))
        // Durable, as `kvlab up` runs by default, but empty at every start:
        // a grade or a verdict must never depend on what an earlier run left.
        .arg("--data-dir")
        .arg(data)
        .arg("--fresh")
        // A run's cluster is never adopted: its nodes die with it.
        .arg("--nodes-die-with-coordinator")
        .arg("--tls-ca")
        .arg(&tls.ca)
        .arg("--tls-cert")
        .arg(&tls.cert)
        .arg("--tls-key")
        .arg(&tls.key)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        // Its own group: a Ctrl-C in the terminal reaches only us, and we
        // stop the cluster in order; and one signal reaches the whole group.
        .process_group(0)
        .kill_on_drop(!keep);
    if !keep {
        crate::process::die_with_parent(&mut cmd);
    }
    // Our secret becomes the cluster's, so that our own requests (the
    // nemesis's node hooks, say) are let in. Never on the command line.
    if let Some(secret) = crate::auth::installed() {
        cmd.env(crate::auth::ENV_SECRET, secret.expose());
    }
    cmd.spawn().map_err(spawn_err)
}

/// Signals a process group we created (its id is the leader's pid).
fn signal_group(pid: u32, sig: libc::c_int) {
    if pid == 0 {
        return;
    }
    // SAFETY: plain syscall on a group we created.
    unsafe {
        libc::kill(-(pid as libc::pid_t), sig);
    }
}

async fn all_alive(http: &reqwest::Client, url: &str, followers: usize) -> bool {
    let Ok(resp) = http.get(url).timeout(Duration::from_secs(1)).send().await else {
        return false;
    };
    let Ok(s) = resp.json::<StatusResponse>().await else {
        return false;
    };
    let leader = s
        .leader
        .as_ref()
        .is_some_and(|l| l.status == NodeStatus::Alive);
    let alive = s
        .followers
        .iter()
        .filter(|f| f.status == NodeStatus::Alive)
        .count();
    leader && alive >= followers
}

/// The last lines of `up`'s log: why it stopped.
async fn log_tail(path: &Path, lines: usize) -> String {
    let text = tokio::fs::read_to_string(path).await.unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A TCP connect, not an HTTP request: the gateway's limiter counts every
/// request, and readiness must not spend the student's budget.
async fn listening(port: u16) -> bool {
    tokio::time::timeout(
        Duration::from_secs(1),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .is_ok_and(|r| r.is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_port_moves_the_whole_cluster() {
        let p = Ports::from_base(20_000).unwrap();
        assert_eq!(
            (p.coordinator, p.registry, p.gateway, p.leader),
            (20_000, 20_001, 20_002, 20_003)
        );
        let all = p.all(2);
        assert_eq!(all.last().unwrap(), &(20_005, "follower-2".to_string()));
        assert!(Ports::from_base(u16::MAX).is_none());
    }
}

//! The nemesis: faults on a seeded schedule, each healed before the next.
//!
//! The schedule is drawn up front from the seed (which fault, when, for how
//! long, on which follower), so `--seed` replays it. Faults go one at a
//! time, through the cluster's own hooks:
//!
//! | fault | inject | heal |
//! |---|---|---|
//! | `kill` | coordinator `POST /kill/{id}` (graceful) | `POST /spawn {"node_id"}` |
//! | `crash` | `POST /kill/{id}?mode=crash` (SIGKILL) | `POST /spawn` on its data directory |
//! | `pause` | SIGSTOP to the node's pid (from `/status`) | SIGCONT |
//! | `heartbeats` | node `POST /admin/pause-heartbeats` | expires (and is cleared) |
//! | `partition` | coordinator `POST /admin/partition/{id}` | `seconds: 0` |
//! | `slow-disk` | node `POST /admin/slow-disk` | `ms: 0` |
//! | `leader` | crash or pause the leader | as above |
//! | `power-loss` | `POST /kill/{id}?mode=power`: a simulated power cut that tears the node's next log write | `POST /spawn` on its data directory |
//! | `coordinator` | SIGKILL, SIGTERM or SIGSTOP (longer than etcd's lease) to the *active* coordinator's pid (from `/status`'s `control_plane`) | SIGCONT; a standby takes over, and `up --ha` restarts the dead one |
//!
//! On a cluster `kvlab check` did not start (`--no-start-cluster`), not
//! every fault can be carried out by these means: the original lab's
//! coordinator takes `?mode=crash` for a graceful stop, and has no node
//! hooks; a remote cluster's pids mean nothing here. `--fault-cmd CMD` then
//! carries out the process faults: it runs `sh -c CMD` with `KVLAB_FAULT`
//! (`crash`, `kill`, `pause`, `resume`, `restart`), `KVLAB_NODE_ID`,
//! `KVLAB_NODE_PORT` and `KVLAB_NODE_URL` in its environment (exit 0: done).
//! Crashes and pauses go through it whenever it is given; a graceful kill
//! goes through the coordinator's `/kill` and through it only if that
//! fails; a crashed or killed node is healed by the lab's `POST /spawn
//! {"node_id", "port"}`, and by `restart` only if that fails. A fault
//! nothing can carry out is said before the run ([`cannot`]) and recorded
//! as not injected; each record says who carried it out ([`By`]).
//!
//! Partitions go through the coordinator, which forwards them to the
//! node's hook on process hosts and drops real packets on netns hosts
//! (`kvlab up --hosts netns`), so the same schedule runs on both.
//!
//! The `coordinator` fault needs several coordinators sharing the cluster
//! (`kvlab up --ha`, which `kvlab check --ha` starts): the nemesis follows the
//! active one ([`Control::coordinator`]) as any client of the control plane
//! must, since the one it talked to a moment ago may be the one it killed.
//!
//! Every fault is healed before the run's final reads ([`heal_everything`]
//! goes over the whole cluster once more, whatever happened).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api::{NodeStatus, StandbyStatus, StatusResponse, LEADER_ID};

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    Kill,
    Crash,
    Pause,
    Heartbeats,
    Partition,
    SlowDisk,
    Leader,
    /// Not part of `all`: the cluster must simulate power loss (`kvlab
    /// check` starts it so when this kind is asked for).
    PowerLoss,
    /// Part of `all` only with `--ha`: the active coordinator is killed,
    /// stopped or paused, and a standby must take over.
    Coordinator,
}

impl FaultKind {
    /// What `all` means: a random mix of every fault, `leader` included
    /// (the cluster fails over to a follower while its leader is down).
    pub const ALL: [FaultKind; 7] = [
        FaultKind::Kill,
        FaultKind::Crash,
        FaultKind::Pause,
        FaultKind::Heartbeats,
        FaultKind::Partition,
        FaultKind::SlowDisk,
        FaultKind::Leader,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Crash => "crash",
            FaultKind::Pause => "pause",
            FaultKind::Heartbeats => "heartbeats",
            FaultKind::Partition => "partition",
            FaultKind::SlowDisk => "slow-disk",
            FaultKind::Leader => "leader",
            FaultKind::PowerLoss => "power-loss",
            FaultKind::Coordinator => "coordinator",
        }
    }

    pub fn parse(word: &str) -> Option<FaultKind> {
        FaultKind::ALL
            .into_iter()
            .chain([FaultKind::PowerLoss, FaultKind::Coordinator])
            .find(|k| k.name() == word)
    }
}

/// `--nemesis LIST`: comma-separated kinds, `all`, or `none`. `ha`: the
/// cluster has several coordinators (`--ha`), so `all` includes
/// `coordinator`.
pub fn parse_list(list: &str, ha: bool) -> Result<Vec<FaultKind>, String> {
    let mut kinds = Vec::new();
    for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        match word {
            "none" => {}
            "all" => {
                kinds.extend(FaultKind::ALL);
                if ha {
                    kinds.push(FaultKind::Coordinator);
                }
            }
            _ => kinds.push(FaultKind::parse(word).ok_or_else(|| {
                format!("unknown nemesis `{word}`: use kill, crash, pause, heartbeats, partition, slow-disk, leader, power-loss, coordinator, all or none")
            })?),
        }
    }
    // Each kind once, so that `leader,all` does not draw leader twice as often.
    let mut seen = Vec::new();
    kinds.retain(|k| {
        let first = !seen.contains(k);
        seen.push(*k);
        first
    });
    Ok(kinds)
}

/// One fault of the schedule.
#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    pub kind: FaultKind,
    /// Seconds after the start of the run.
    pub at: f64,
    pub seconds: f64,
    /// The node: `leader` or `follower-<n>`.
    pub node: String,
    /// Partitions: whom the node is cut off from. Slow disk: `<ms> ms`.
    /// Leader: `crash` or `pause`.
    pub how: Vec<String>,
}

/// Draws the schedule: faults back to back with a pause of 1-3 s between
/// them, from 1 s after the start to `heal_by`.
pub fn schedule(kinds: &[FaultKind], seed: u64, followers: usize, heal_by: f64) -> Vec<Planned> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x006e_656d_6573_6973);
    let mut plan = Vec::new();
    let mut t = 1.0;
    if kinds.is_empty() || followers == 0 {
        return plan;
    }
    loop {
        let kind = kinds[rng.random_range(0..kinds.len())];
        let (low, high) = match kind {
            FaultKind::Heartbeats => (3.0, 8.0),
            FaultKind::Pause => (1.0, 7.0),
            // A pause must outlast etcd's lease (3 s by default) to depose.
            FaultKind::Coordinator => (4.0, 7.0),
            _ => (1.0, 5.0),
        };
        let seconds: f64 = rng.random_range(low..high);
        if t + seconds > heal_by {
            break;
        }
        let follower = format!("follower-{}", rng.random_range(1..=followers));
        let (node, how) = match kind {
            FaultKind::Leader => {
                let how = if rng.random_range(0..2) == 0 {
                    "crash"
                } else {
                    "pause"
                };
                (LEADER_ID.to_string(), vec![how.to_string()])
            }
            FaultKind::Partition => {
                let from: &[&str] = match rng.random_range(0..3) {
                    0 => &["coordinator", "leader", "registry"],
                    1 => &["leader"],
                    _ => &["coordinator"],
                };
                (follower, from.iter().map(|s| s.to_string()).collect())
            }
            FaultKind::SlowDisk => (follower, vec![format!("{} ms", rng.random_range(20..300))]),
            FaultKind::Coordinator => {
                let how = ["kill", "stop", "pause"][rng.random_range(0..3)];
                (COORDINATOR.to_string(), vec![how.to_string()])
            }
            // The leader's power too, one time in three.
            FaultKind::PowerLoss if rng.random_range(0..3) == 0 => (LEADER_ID.to_string(), vec![]),
            _ => (follower, vec![]),
        };
        plan.push(Planned {
            kind,
            at: round(t),
            seconds: round(seconds),
            node,
            how,
        });
        t += seconds + rng.random_range(1.0..3.0);
    }
    plan
}

/// The `node` of a `coordinator` fault: whichever coordinator is active
/// when it starts.
pub const COORDINATOR: &str = "active";

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Who carried a fault out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum By {
    /// The coordinator's own route (`/kill`, `/admin/partition/{id}`).
    Coordinator,
    /// A signal to the node's pid (from `/status`).
    Signal,
    /// The node's `/admin/*` hook.
    NodeHook,
    /// `--fault-cmd`.
    FaultCmd,
    /// Someone, by hand, written in `--faults-log`.
    Hand,
}

impl By {
    pub fn words(self) -> &'static str {
        match self {
            By::Coordinator => "by the coordinator",
            By::Signal => "by a signal",
            By::NodeHook => "by the node's hook",
            By::FaultCmd => "by the fault command",
            By::Hand => "by hand",
        }
    }
}

/// What happened: one line of `faults.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultRecord {
    pub kind: FaultKind,
    pub node: String,
    pub how: Vec<String>,
    /// Seconds since the start of the run: injected, and healed.
    pub start: f64,
    pub end: f64,
    /// Whether the fault was injected (its hook answered yes). A fault
    /// that was not did not happen.
    pub injected: bool,
    /// A hook that failed (the fault may not have happened).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Who carried it out, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<By>,
}

/// The cluster's control endpoints.
#[derive(Clone)]
pub struct Control {
    pub http: reqwest::Client,
    /// The coordinators known: `--coordinator` (one URL or several, comma
    /// separated), and every one a `/status` names. With `--ha` the one in
    /// charge changes during a run, so each call asks for the active one.
    coordinators: Arc<Mutex<Vec<String>>>,
    /// The coordinator that last said it is active: asked first.
    active: Arc<Mutex<String>>,
    /// Coordinator processes this run paused: resumed at the end whatever
    /// happened (see [`heal_everything`]).
    paused: Arc<Mutex<Vec<u32>>>,
    /// `--fault-cmd`: the command that carries out process faults.
    pub fault_cmd: Option<String>,
    /// The coordinator is kvlab's (it honours `?mode=crash` and has the
    /// fault hooks): a cluster check started, or one whose `/status` has
    /// kvlab's additions.
    pub kvlab: bool,
}

/// What a coordinator's `/status` said.
enum Answer {
    /// The cluster's status: this coordinator serves the cluster.
    InCharge(Box<StatusResponse>),
    /// A standby's: only who is in charge.
    Standby(StandbyStatus),
}

/// Why a fault of this kind cannot be carried out on this cluster, if it
/// cannot (said before the run, and recorded as the fault's error).
pub fn cannot(c: &Control, kind: FaultKind) -> Option<String> {
    if c.kvlab {
        return None;
    }
    match kind {
        FaultKind::Crash | FaultKind::Leader if c.fault_cmd.is_none() => Some(format!(
            "{}: this coordinator is not kvlab's and may take `/kill/{{id}}?mode=crash` for a graceful stop \
             (the original lab does); give --fault-cmd to crash nodes for real",
            kind.name()
        )),
        FaultKind::Coordinator => Some(
            "coordinator: needs kvlab's control plane (several coordinators: kvlab up --ha)".into(),
        ),
        FaultKind::Heartbeats | FaultKind::Partition | FaultKind::SlowDisk | FaultKind::PowerLoss => Some(format!(
            "{}: needs kvlab's fault hooks, which this cluster does not have",
            kind.name()
        )),
        _ => None,
    }
}

impl Control {
    /// `coordinators`: one URL, or several separated by commas.
    pub fn new(
        http: reqwest::Client,
        coordinators: &str,
        fault_cmd: Option<String>,
        kvlab: bool,
    ) -> Control {
        let list: Vec<String> = coordinators
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        Control {
            http,
            active: Arc::new(Mutex::new(list.first().cloned().unwrap_or_default())),
            coordinators: Arc::new(Mutex::new(list)),
            paused: Arc::new(Mutex::new(Vec::new())),
            fault_cmd,
            kvlab,
        }
    }

    /// The URL of the coordinator in charge now (see [`Control::status`]).
    pub async fn coordinator(&self) -> String {
        if self.coordinators.lock().unwrap().len() > 1 {
            let _ = self.status().await;
        }
        self.active.lock().unwrap().clone()
    }

    /// `/status` of the coordinator in charge: the last active one first,
    /// then every other one known. A standby answers too (with only its
    /// `control_plane`); its answer names the active one, which is asked
    /// next. A coordinator without `control_plane` (not kvlab's, or before
    /// the control plane existed) is in charge by definition.
    pub async fn status(&self) -> Result<StatusResponse, String> {
        let several = self.coordinators.lock().unwrap().len() > 1;
        // A paused coordinator accepts connections and never answers: with
        // others to ask, do not wait long on one.
        let timeout = Duration::from_millis(if several { 800 } else { 3000 });
        let mut queue = vec![self.active.lock().unwrap().clone()];
        queue.extend(self.coordinators.lock().unwrap().iter().cloned());
        let mut asked: Vec<String> = Vec::new();
        let mut last_error = String::from("no coordinator to ask");
        while let Some(url) = queue.first().cloned() {
            queue.remove(0);
            if asked.contains(&url) {
                continue;
            }
            asked.push(url.clone());
            let (status, cp) = match self.status_of(&url, timeout).await {
                Ok(Answer::InCharge(s)) => {
                    let cp = s.control_plane.clone();
                    (Some(s), cp)
                }
                Ok(Answer::Standby(s)) => (None, s.control_plane),
                Err(e) => {
                    last_error = e;
                    continue;
                }
            };
            self.learn(cp.active.iter().chain(cp.standbys.iter()).map(|c| &c.url));
            match status {
                Some(status) if cp.mode.is_empty() || cp.this == "active" => {
                    *self.active.lock().unwrap() = url;
                    return Ok(*status);
                }
                _ => last_error = format!("{url} is a {} coordinator", cp.this),
            }
            if let Some(active) = &cp.active {
                queue.insert(0, active.url.trim_end_matches('/').to_string());
            }
        }
        Err(last_error)
    }

    /// One coordinator's `/status`: the cluster's (it is in charge, or
    /// says it is), or a standby's, which only names who is in charge.
    async fn status_of(&self, url: &str, timeout: Duration) -> Result<Answer, String> {
        let resp = self
            .http
            .get(format!("{url}/status"))
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| format!("{url}: {}", crate::http::describe_reqwest_error(&e)))?;
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("{url}: {}", crate::http::describe_reqwest_error(&e)))?;
        if let Ok(status) = serde_json::from_slice::<StatusResponse>(&body) {
            return Ok(Answer::InCharge(Box::new(status)));
        }
        serde_json::from_slice::<StandbyStatus>(&body)
            .map(Answer::Standby)
            .map_err(|e| format!("unreadable /status from {url}: {e}"))
    }

    /// Adds coordinators a `/status` named to those asked.
    fn learn<'a>(&self, urls: impl Iterator<Item = &'a String>) {
        let mut known = self.coordinators.lock().unwrap();
        for url in urls {
            let url = url.trim_end_matches('/').to_string();
            if !url.is_empty() && !known.contains(&url) {
                known.push(url);
            }
        }
    }

    async fn post(&self, url: String, body: serde_json::Value) -> Result<(), String> {
        let resp = self
            .http
            .post(&url)
            .timeout(Duration::from_secs(30))
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("{url}: {}", crate::http::describe_reqwest_error(&e)))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            let status = resp.status();
            Err(format!(
                "{url}: HTTP {status}: {}",
                crate::http::error_detail(resp).await
            ))
        }
    }

    async fn node(&self, id: &str) -> Result<(String, Option<u32>), String> {
        let (url, _, pid) = self.address(id).await?;
        Ok((url, pid))
    }

    /// The node's URL, port and pid, from `/status` (the port from the URL
    /// when `/status` does not give one, as the original's does not).
    async fn address(&self, id: &str) -> Result<(String, u16, Option<u32>), String> {
        let status = self.status().await?;
        let node = status
            .leader
            .iter()
            .chain(status.followers.iter())
            .find(|n| n.node_id == id)
            .ok_or_else(|| format!("{id} is not in /status"))?;
        let port = match node.port {
            0 => url::Url::parse(&node.url)
                .ok()
                .and_then(|u| u.port_or_known_default())
                .unwrap_or(0),
            p => p,
        };
        Ok((node.url.clone(), port, node.pid))
    }

    /// Runs `--fault-cmd` for `fault` on node `id` (see the module's notes).
    async fn fault_cmd(&self, fault: &str, id: &str) -> Result<(), String> {
        let cmd = self.fault_cmd.as_deref().ok_or("no --fault-cmd")?;
        let (url, port, _) = self.address(id).await?;
        let run = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .env("KVLAB_FAULT", fault)
            .env("KVLAB_NODE_ID", id)
            .env("KVLAB_NODE_PORT", port.to_string())
            .env("KVLAB_NODE_URL", &url)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .map_err(|_| format!("the fault command ({fault} {id}) took over 30 s"))?
            .map_err(|e| format!("cannot run the fault command: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
        Err(format!(
            "the fault command ({fault} {id}) failed ({}){}",
            out.status,
            last.map(|l| format!(": {}", l.trim())).unwrap_or_default()
        ))
    }

    /// A graceful kill (`crash: false`) or a crash of node `id`.
    async fn stop(&self, id: &str, crash: bool) -> Result<By, String> {
        if crash {
            if self.fault_cmd.is_some() {
                return self.fault_cmd("crash", id).await.map(|_| By::FaultCmd);
            }
            return self.kill(id, "?mode=crash").await.map(|_| By::Coordinator);
        }
        match self.kill(id, "").await {
            Ok(()) => Ok(By::Coordinator),
            Err(e) if self.fault_cmd.is_some() => self
                .fault_cmd("kill", id)
                .await
                .map(|_| By::FaultCmd)
                .map_err(|cmd| format!("{e}; then {cmd}")),
            Err(e) => Err(e),
        }
    }

    /// Brings a killed or crashed node back: the lab's `/spawn`, then the
    /// fault command's `restart` if that failed.
    async fn restart(&self, id: &str) -> Result<(), String> {
        match self.spawn(id).await {
            Ok(()) => Ok(()),
            Err(e) if self.fault_cmd.is_some() => self
                .fault_cmd("restart", id)
                .await
                .map_err(|cmd| format!("{e}; then {cmd}")),
            Err(e) => Err(e),
        }
    }

    /// Pauses (`on`) or resumes node `id`: the fault command when there is
    /// one, a signal to its pid otherwise.
    async fn pause(&self, id: &str, on: bool) -> Result<By, String> {
        if self.fault_cmd.is_some() {
            let fault = if on { "pause" } else { "resume" };
            return self.fault_cmd(fault, id).await.map(|_| By::FaultCmd);
        }
        let sig = if on { libc::SIGSTOP } else { libc::SIGCONT };
        self.signal(id, sig).await.map(|_| By::Signal)
    }

    /// How the coordinator's routes name the node `id`. `leader` there
    /// means whoever leads now (the lab's meaning); once a failover made the
    /// node *called* `leader` a follower, kvlab's `node:leader` names it.
    /// (Only then: a cluster that knows no `node:` never fails over.)
    async fn route_id(&self, id: &str) -> String {
        if id == crate::api::LEADER_ID {
            if let Ok(status) = self.status().await {
                if status.leader.is_some_and(|l| l.node_id != id) {
                    return format!("node:{id}");
                }
            }
        }
        id.to_string()
    }

    async fn kill(&self, id: &str, mode: &str) -> Result<(), String> {
        let id = self.route_id(id).await;
        let coordinator = self.coordinator().await;
        self.post(format!("{coordinator}/kill/{id}{mode}"), json!({}))
            .await
    }

    /// `POST /spawn {"node_id", "port"}`: the port the node had, which the
    /// original needs to revive a node (kvlab keeps a slot's port anyway).
    async fn spawn(&self, id: &str) -> Result<(), String> {
        let port = self.address(id).await.map(|(_, port, _)| port);
        // The node by its id: a node called `leader` that a failover made a
        // follower is still `node:leader`, not whoever leads now.
        let id = self.route_id(id).await;
        let body = match port {
            Ok(port) if port > 0 => json!({"node_id": id, "port": port}),
            _ => json!({"node_id": id}),
        };
        let coordinator = self.coordinator().await;
        self.post(format!("{coordinator}/spawn"), body).await
    }

    async fn signal(&self, id: &str, sig: libc::c_int) -> Result<(), String> {
        let (_, pid) = self.node(id).await?;
        let pid =
            pid.ok_or_else(|| format!("{id} has no pid in /status (not a local cluster?)"))?;
        // SAFETY: a plain syscall on a pid the coordinator reported.
        if unsafe { libc::kill(pid as libc::pid_t, sig) } != 0 {
            return Err(format!(
                "signal to {id} (pid {pid}): {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    /// A partition, through the coordinator (see the module's notes).
    async fn partition(&self, id: &str, body: serde_json::Value) -> Result<(), String> {
        let id = self.route_id(id).await;
        let coordinator = self.coordinator().await;
        self.post(format!("{coordinator}/admin/partition/{id}"), body)
            .await
    }

    /// The `coordinator` fault: `kill` (SIGKILL), `stop` (SIGTERM) or
    /// `pause` (SIGSTOP) of the active coordinator's process.
    async fn hit_coordinator(&self, how: &str) -> Result<By, String> {
        let cp = self.status().await?.control_plane;
        if cp.mode != "etcd" {
            return Err(
                "not carried out: the coordinator is alone (no standby could take over); \
                 start the cluster with kvlab up --ha (kvlab check --ha)"
                    .into(),
            );
        }
        let active = cp.active.ok_or("no coordinator is active")?;
        let pid = active
            .pid
            .ok_or_else(|| format!("the active coordinator {} has no pid in /status", active.id))?;
        let sig = match how {
            "kill" => libc::SIGKILL,
            "stop" => libc::SIGTERM,
            _ => libc::SIGSTOP,
        };
        if sig == libc::SIGSTOP {
            self.paused.lock().unwrap().push(pid);
        }
        // SAFETY: a plain syscall on a pid the control plane reported.
        if unsafe { libc::kill(pid as libc::pid_t, sig) } != 0 {
            return Err(format!(
                "signal to coordinator {} (pid {pid}): {}",
                active.id,
                std::io::Error::last_os_error()
            ));
        }
        Ok(By::Signal)
    }

    /// Heals a `coordinator` fault: resumes what was paused, then waits
    /// (up to 20 s) until a coordinator is in charge again.
    async fn coordinator_back(&self) -> Result<(), String> {
        self.resume_paused();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.status().await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!(
                        "no coordinator in charge 20 s after the fault: {e}"
                    ))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// SIGCONT to every coordinator this run paused.
    fn resume_paused(&self) {
        for pid in self.paused.lock().unwrap().drain(..) {
            // SAFETY: a plain syscall; SIGCONT to a running process is a no-op.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
        }
    }

    async fn admin(&self, id: &str, hook: &str, body: serde_json::Value) -> Result<(), String> {
        let (url, _) = self.node(id).await?;
        self.post(format!("{url}/admin/{hook}"), body).await
    }
}

/// Starts a fault; says who carried it out.
async fn inject(c: &Control, p: &Planned) -> Result<By, String> {
    if let Some(why) = cannot(c, p.kind) {
        return Err(format!("not carried out: {why}"));
    }
    let node = p.node.as_str();
    match p.kind {
        FaultKind::Kill => c.stop(node, false).await,
        FaultKind::Crash => c.stop(node, true).await,
        FaultKind::PowerLoss => c.kill(node, "?mode=power").await.map(|_| By::Coordinator),
        FaultKind::Pause => c.pause(node, true).await,
        FaultKind::Heartbeats => c
            .admin(node, "pause-heartbeats", json!({"seconds": p.seconds}))
            .await
            .map(|_| By::NodeHook),
        FaultKind::Partition => c
            .partition(node, json!({"peers": p.how, "seconds": p.seconds + 1.0}))
            .await
            .map(|_| By::Coordinator),
        FaultKind::SlowDisk => {
            let ms: u64 = p.how[0].trim_end_matches(" ms").parse().unwrap_or(100);
            c.admin(
                node,
                "slow-disk",
                json!({"ms": ms, "seconds": p.seconds + 1.0}),
            )
            .await
            .map(|_| By::NodeHook)
        }
        FaultKind::Leader if p.how[0] == "crash" => c.stop(node, true).await,
        FaultKind::Leader => c.pause(node, true).await,
        FaultKind::Coordinator => c.hit_coordinator(&p.how[0]).await,
    }
}

/// Ends a fault.
async fn heal(c: &Control, p: &Planned) -> Result<(), String> {
    let node = p.node.as_str();
    match p.kind {
        FaultKind::Kill | FaultKind::Crash | FaultKind::PowerLoss => c.restart(node).await,
        FaultKind::Pause => c.pause(node, false).await.map(|_| ()),
        FaultKind::Heartbeats => {
            c.admin(node, "pause-heartbeats", json!({"seconds": 0}))
                .await
        }
        FaultKind::Partition => c.partition(node, json!({"peers": [], "seconds": 0})).await,
        FaultKind::SlowDisk => {
            c.admin(node, "slow-disk", json!({"ms": 0, "seconds": 0}))
                .await
        }
        FaultKind::Leader if p.how[0] == "crash" => c.restart(node).await,
        FaultKind::Leader => c.pause(node, false).await.map(|_| ()),
        FaultKind::Coordinator => c.coordinator_back().await,
    }
}

/// Runs the schedule; returns what happened. Stops early (healing the
/// current fault) when `stop` fires.
pub async fn run(
    control: &Control,
    plan: &[Planned],
    epoch: Instant,
    mut stop: tokio::sync::watch::Receiver<bool>,
    on_fault: impl Fn(&Planned, bool),
) -> Vec<FaultRecord> {
    let now = || epoch.elapsed().as_secs_f64();
    let mut records = Vec::new();
    for p in plan {
        let wait = Duration::from_secs_f64((p.at - now()).max(0.0));
        if tokio::time::timeout(wait, stop.wait_for(|s| *s))
            .await
            .is_ok()
        {
            break;
        }
        let target = aim(control, p).await;
        let p = &target;
        on_fault(p, true);
        let start = now();
        let injected = inject(control, p).await;
        if injected.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs_f64(p.seconds), stop.wait_for(|s| *s))
                .await;
        }
        // A fault that was not carried out has nothing to heal.
        let healed = match injected {
            Ok(_) => heal(control, p).await,
            Err(_) if cannot(control, p.kind).is_some() => Ok(()),
            Err(_) => heal(control, p).await,
        };
        on_fault(p, false);
        records.push(FaultRecord {
            kind: p.kind,
            node: p.node.clone(),
            how: p.how.clone(),
            start: round(start),
            end: round(now()),
            injected: injected.is_ok(),
            by: injected.as_ref().ok().copied(),
            error: injected.err().or(healed.err()),
        });
    }
    records
}

/// A `leader` fault (and a `power-loss` planned on the leader) is planned
/// against "the leader", which after a
/// failover is another node than the one whose id is `leader`: it is aimed
/// at whoever leads when it starts, and healed on that same node (a paused
/// or crashed leader comes back as a follower, under its own id).
async fn aim(c: &Control, p: &Planned) -> Planned {
    let mut aimed = p.clone();
    let at_leader = p.kind == FaultKind::PowerLoss && p.node == LEADER_ID;
    if p.kind == FaultKind::Leader || at_leader {
        if let Ok(status) = c.status().await {
            if let Some(leader) = status.leader {
                aimed.node = leader.node_id;
            }
        }
    }
    aimed
}

/// After the run: resume paused processes, heal every node's hooks, restart
/// the dead, and wait (up to `timeout`) until every node is alive.
pub async fn heal_everything(c: &Control, timeout: Duration) -> Result<(), String> {
    c.resume_paused();
    let status = c.status().await?;
    let nodes: Vec<_> = status
        .leader
        .iter()
        .chain(status.followers.iter())
        .cloned()
        .collect();
    for n in &nodes {
        if let Some(pid) = n.pid {
            // SAFETY: a plain syscall; SIGCONT to a running process is a no-op.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
        }
        if n.status != NodeStatus::Dead {
            let _ = c
                .partition(&n.node_id, json!({"peers": [], "seconds": 0}))
                .await;
            let _ = c
                .post(
                    format!("{}/admin/slow-disk", n.url),
                    json!({"ms": 0, "seconds": 0}),
                )
                .await;
            let _ = c
                .post(
                    format!("{}/admin/pause-heartbeats", n.url),
                    json!({"seconds": 0}),
                )
                .await;
        }
    }
    let deadline = Instant::now() + timeout;
    loop {
        let status = c.status().await?;
        let dead: Vec<String> = status
            .leader
            .iter()
            .chain(status.followers.iter())
            .filter(|n| n.status == NodeStatus::Dead)
            .map(|n| n.node_id.clone())
            .collect();
        let starting = status
            .leader
            .iter()
            .chain(status.followers.iter())
            .any(|n| n.status != NodeStatus::Alive);
        if dead.is_empty() && !starting {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "not every node is alive after healing (dead: {})",
                dead.join(", ")
            ));
        }
        for id in &dead {
            let _ = c.spawn(id).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_bad_names_are_refused() {
        assert_eq!(parse_list("none", false).unwrap(), vec![]);
        let all = parse_list("all", false).unwrap();
        assert_eq!(all.len(), 7);
        assert!(all.contains(&FaultKind::Leader));
        assert!(!all.contains(&FaultKind::Coordinator));
        assert_eq!(parse_list("leader,all,kill", false).unwrap().len(), 7);
        assert_eq!(
            parse_list("kill,slow-disk", false).unwrap(),
            vec![FaultKind::Kill, FaultKind::SlowDisk]
        );
        assert!(parse_list("kil", false)
            .unwrap_err()
            .contains("unknown nemesis `kil`"));
        // With several coordinators, `all` hits them too.
        let ha = parse_list("all", true).unwrap();
        assert_eq!(ha.len(), 8);
        assert!(ha.contains(&FaultKind::Coordinator));
        assert_eq!(
            parse_list("coordinator", false).unwrap(),
            vec![FaultKind::Coordinator]
        );
    }

    #[test]
    fn a_seed_gives_one_schedule_within_the_time() {
        let kinds = FaultKind::ALL;
        let a = schedule(&kinds, 7, 3, 30.0);
        let b = schedule(&kinds, 7, 3, 30.0);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        assert!(!a.is_empty());
        assert!(a.iter().all(|p| p.at >= 1.0 && p.at + p.seconds <= 30.0));
        assert!(a.windows(2).all(|w| w[0].at + w[0].seconds < w[1].at));
        assert_ne!(
            format!("{a:?}"),
            format!("{:?}", schedule(&kinds, 8, 3, 30.0))
        );
    }

    #[test]
    fn coordinator_faults_aim_at_the_active_one_and_pauses_outlast_the_lease() {
        let plan = schedule(&[FaultKind::Coordinator], 3, 3, 120.0);
        assert!(!plan.is_empty());
        for p in &plan {
            assert_eq!(p.node, COORDINATOR);
            assert!(
                ["kill", "stop", "pause"].contains(&p.how[0].as_str()),
                "{p:?}"
            );
            assert!(p.seconds >= 4.0, "{p:?}");
        }
    }

    #[test]
    fn several_coordinators_parse_from_one_flag() {
        let c = Control::new(
            reqwest::Client::new(),
            "http://a:1/, http://b:2,,",
            None,
            true,
        );
        assert_eq!(
            *c.coordinators.lock().unwrap(),
            vec!["http://a:1".to_string(), "http://b:2".to_string()]
        );
        assert_eq!(*c.active.lock().unwrap(), "http://a:1");
    }
}

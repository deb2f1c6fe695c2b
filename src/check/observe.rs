//! Watching the cluster while it runs: `/status` every 250 ms.
//!
//! The samples serve two purposes:
//! - **Explanations.** Which sets (sync, async, read) a follower was in
//!   when it served a stale read, and what was alive.
//! - **One process per node id.** When a node id gets a new incarnation
//!   (a restart), the previous process must be gone: two processes of one
//!   id answering in the same period would let a replaced node serve old
//!   data. At every sample, each older incarnation's pid is looked up in
//!   `/proc`: if it still runs (not stopped by us, not a zombie) while a
//!   newer one is listed, that is an overlap. Only for local clusters
//!   (`/status` gives pids).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::nemesis::Control;
use crate::api::StatusResponse;

/// One node in one sample.
#[derive(Debug, Clone, Serialize)]
pub struct NodeSample {
    pub id: String,
    pub status: String,
    pub incarnation: u64,
    pub sets: Vec<String>,
    /// Its port (from `/status`, or its URL), for the lab's read-set rule
    /// when `/status` gives no sets.
    #[serde(default)]
    pub port: u16,
    /// It led at that moment.
    #[serde(default)]
    pub leader: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the start of the run.
    pub t: f64,
    pub nodes: Vec<NodeSample>,
}

/// Two processes of one node id running at once.
#[derive(Debug, Clone, Serialize)]
pub struct Overlap {
    pub node_id: String,
    pub old_incarnation: u64,
    pub old_pid: u32,
    pub new_incarnation: u64,
    pub t: f64,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Observations {
    pub samples: Vec<Sample>,
    pub overlaps: Vec<Overlap>,
}

impl Observations {
    /// The sample closest before `t` (seconds), if any.
    pub fn at(&self, t: f64) -> Option<&Sample> {
        self.samples
            .iter()
            .rev()
            .find(|s| s.t <= t)
            .or(self.samples.first())
    }
}

/// Samples until `stop` fires.
pub async fn watch(
    control: Control,
    epoch: Instant,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Observations {
    let mut obs = Observations::default();
    // node id -> every (incarnation, pid) seen.
    let mut seen: BTreeMap<String, BTreeMap<u64, u32>> = BTreeMap::new();
    loop {
        if let Ok(status) = control.status().await {
            let t = epoch.elapsed().as_secs_f64();
            record(&mut obs, &mut seen, &status, t);
        }
        let tick = tokio::time::sleep(Duration::from_millis(250));
        tokio::select! {
            _ = tick => {}
            _ = stop.wait_for(|s| *s) => return obs,
        }
    }
}

fn record(
    obs: &mut Observations,
    seen: &mut BTreeMap<String, BTreeMap<u64, u32>>,
    status: &StatusResponse,
    t: f64,
) {
    let mut nodes = Vec::new();
    let leader = status.leader.as_ref().map(|l| l.node_id.as_str());
    for n in status.leader.iter().chain(status.followers.iter()) {
        let port = match n.port {
            0 => url::Url::parse(&n.url)
                .ok()
                .and_then(|u| u.port_or_known_default())
                .unwrap_or(0),
            p => p,
        };
        nodes.push(NodeSample {
            id: n.node_id.clone(),
            status: n.status.as_str().to_string(),
            incarnation: n.incarnation,
            sets: n.sets.clone(),
            port,
            leader: leader == Some(n.node_id.as_str()),
        });
        let incarnations = seen.entry(n.node_id.clone()).or_default();
        if let Some(pid) = n.pid {
            incarnations.insert(n.incarnation, pid);
        }
        for (&old, &pid) in incarnations.iter().filter(|(&i, _)| i < n.incarnation) {
            if running(pid, &n.node_id) {
                obs.overlaps.push(Overlap {
                    node_id: n.node_id.clone(),
                    old_incarnation: old,
                    old_pid: pid,
                    new_incarnation: n.incarnation,
                    t,
                });
            }
        }
    }
    obs.samples.push(Sample { t, nodes });
}

/// Does this pid run (exists, and neither stopped nor a zombie) as a node
/// of this id (a pid may have been reused by another program since)?
fn running(pid: u32, node_id: &str) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let is_that_node = cmdline
        .split(|b| *b == 0)
        .any(|arg| arg == node_id.as_bytes());
    if !is_that_node {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses.
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().next());
    !matches!(state, Some("T" | "t" | "Z" | "X") | None)
}

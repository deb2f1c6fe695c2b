//! The protocol watch: narrates a node that breaks the node protocol.
//!
//! A student's node (`--node-cmd`, see `docs/node-protocol.md`) that answers
//! wrongly must fail loudly: "follower-2 answered POST /replicate with 200
//! but its position went backwards from 41 to 40", not a cluster that
//! silently stops making progress. The leader checks every follower's
//! answers on its replication streams and keeps the last violation of each
//! in `GET /replication/peers`; this task asks it once a second and puts
//! each new violation in the event log, once.
//!
//! It runs only when some slot runs a student's node: kvlab's own nodes
//! keep the protocol, and a default cluster should not pay for the watch.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::Coordinator;
use crate::api::FollowerProgress;
use crate::events::EventKind;

const PERIOD: Duration = Duration::from_secs(1);

/// Starts the watch if any slot runs a student's node.
pub fn start(c: Arc<Coordinator>) -> Option<tokio::task::JoinHandle<()>> {
    if !c.config.launch.commands.any() {
        return None;
    }
    Some(tokio::spawn(async move {
        // (node id, incarnation) -> violations already narrated.
        let mut told: HashMap<(String, u64), u64> = HashMap::new();
        let mut tick = tokio::time::interval(PERIOD);
        loop {
            tick.tick().await;
            for p in c.leaders_view_of_followers().await {
                narrate_new(&c, &mut told, p);
            }
        }
    }))
}

/// One event per new violation; a node that repeats the same one every
/// few milliseconds gets a count, not a flood.
fn narrate_new(c: &Coordinator, told: &mut HashMap<(String, u64), u64>, p: FollowerProgress) {
    let Some(what) = p.violation else { return };
    let seen = told.entry((p.node_id.clone(), p.incarnation)).or_insert(0);
    if p.violations <= *seen {
        return;
    }
    let repeats = p.violations - *seen;
    *seen = p.violations;
    let again = if repeats > 1 {
        format!(" ({repeats} such answers since the last report)")
    } else {
        String::new()
    };
    c.events.bad(
        EventKind::ProtocolViolation,
        Some(&p.node_id),
        format!("🚫 protocol: {} {what}{again}", p.node_id),
    );
}

impl Coordinator {
    /// The leader's `GET /replication/peers`, or nothing if it does not
    /// answer (a dead leader is someone else's story).
    async fn leaders_view_of_followers(&self) -> Vec<FollowerProgress> {
        let leader = self.snapshot().leader.clone();
        if !leader.is_alive() {
            return Vec::new();
        }
        let asked = self
            .http
            .get(format!("{}/replication/peers", leader.url))
            .timeout(PERIOD)
            .send()
            .await;
        match asked {
            Ok(resp) if resp.status().is_success() => resp.json().await.unwrap_or_default(),
            _ => Vec::new(),
        }
    }
}

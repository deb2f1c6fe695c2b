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
use std::time::{Duration, Instant};

use super::Coordinator;
use crate::api::FollowerProgress;
use crate::events::EventKind;

const PERIOD: Duration = Duration::from_secs(1);
/// How often the same violation of one process is told again.
const REPEAT_EVERY: Duration = Duration::from_secs(10);

/// Starts the watch if any slot runs a student's node.
pub fn start(c: Arc<Coordinator>) -> Option<tokio::task::JoinHandle<()>> {
    if !c.config.launch.commands.any() {
        return None;
    }
    Some(tokio::spawn(async move {
        // (node id, incarnation) -> what was told last.
        let mut told = HashMap::new();
        let mut tick = tokio::time::interval(PERIOD);
        loop {
            tick.tick().await;
            for p in c.leaders_view_of_followers().await {
                narrate_new(&c, &mut told, p);
            }
        }
    }))
}

/// What was last told of one process.
struct Told {
    count: u64,
    what: String,
    at: Instant,
}

/// One event per new kind of violation; a node that repeats the same one
/// every few milliseconds is reported again at most every [`REPEAT_EVERY`],
/// with a count, not a line a second.
fn narrate_new(c: &Coordinator, told: &mut HashMap<(String, u64), Told>, p: FollowerProgress) {
    let Some(what) = p.violation else { return };
    let key = (p.node_id.clone(), p.incarnation);
    let (repeats, same) = match told.get(&key) {
        Some(t) if p.violations <= t.count => return,
        Some(t) if t.what == what && t.at.elapsed() < REPEAT_EVERY => return,
        Some(t) => (p.violations - t.count, t.what == what),
        None => (p.violations, false),
    };
    told.insert(
        key,
        Told {
            count: p.violations,
            what: what.clone(),
            at: Instant::now(),
        },
    );
    let again = match (same, repeats) {
        (true, n) => format!(" (again, {n} times since the last report)"),
        (false, n) if n > 1 => format!(" ({n} such answers)"),
        _ => String::new(),
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

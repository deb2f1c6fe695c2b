//! Liveness: keeping the table's alive/dead in line with the world.
//!
//! Membership is *level-based*: what counts is the registry's current view,
//! not the order in which its notices arrive. Every second the coordinator
//! pulls the whole view (`GET /nodes` on the registry) and brings each slot
//! in line with it ([`Coordinator::reconcile`]), so a notice that was lost,
//! delayed or overtaken by a newer one is repaired within one heartbeat
//! period. A notice (`/node-died`, `/node-revived`) is only a hint to
//! reconcile now; one from an older view than the last applied is ignored.
//!
//! Invariants:
//! - a slot is declared dead only on evidence about *its* process (the same
//!   incarnation): the registry's view says it is silent, or, when the
//!   registry does not answer, the node itself has not answered a direct
//!   probe for [`FAILURE_TIMEOUT`]. A node the registry sees heartbeating is
//!   never marked dead, whoever says so;
//! - a slot is revived only if its process still runs and it is heard from
//!   (heartbeats in the registry's view, or an answer to a probe);
//! - slots still starting belong to their starter and are left alone;
//! - one reconciliation runs at a time, and every change goes through
//!   [`Coordinator::transition`] like any other.
//!
//! When the registry does not answer, the coordinator says so (`/status`
//! shows `"liveness": "direct-probe"`, and the event log narrates it) and
//! probes each node's `/health` itself, so a crash is still noticed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::cluster::Slot;
use super::Coordinator;
use crate::api::{
    ForgetRequest, MissingNode, MissingRequest, NodeHealth, NodeStatus, RegistryNode,
    RegistryNodes, Role,
};
use crate::events::EventKind;
use crate::http::describe_reqwest_error;

/// Silence after which a node is dead: the registry's timeout, and the
/// coordinator's own when it probes directly.
pub const FAILURE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the view is pulled (or the nodes probed): at least once per
/// heartbeat period (2 s).
const PERIOD: Duration = Duration::from_secs(1);
/// How long a pull or a probe may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the coordinator's idea of who is alive comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Nothing answered yet.
    Unknown,
    /// The registry's heartbeats (the normal case).
    Registry,
    /// The registry does not answer: the coordinator probes nodes itself.
    DirectProbe,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Unknown => "unknown",
            Source::Registry => "registry",
            Source::DirectProbe => "direct-probe",
        }
    }
}

/// The liveness state the coordinator keeps.
pub struct Liveness {
    state: Mutex<State>,
    /// One reconciliation at a time.
    running: tokio::sync::Mutex<()>,
}

struct State {
    source: Source,
    /// (epoch, version) of the newest registry view applied.
    applied: Option<(u64, u64)>,
    /// While probing directly: when each slot's process (id -> incarnation)
    /// last answered. Cleared when probing starts, so every node gets a
    /// whole timeout from then.
    answered: HashMap<String, (u64, Instant)>,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            state: Mutex::new(State {
                source: Source::Unknown,
                applied: None,
                answered: HashMap::new(),
            }),
            running: tokio::sync::Mutex::new(()),
        }
    }
}

impl Liveness {
    pub fn source(&self) -> Source {
        self.state.lock().unwrap().source
    }

    /// Is a notice from this view older than (or as old as) the last applied?
    fn is_stale(&self, epoch: Option<u64>, version: Option<u64>) -> bool {
        let applied = self.state.lock().unwrap().applied;
        match (applied, epoch, version) {
            (Some((e, v)), Some(epoch), Some(version)) => epoch == e && version < v,
            _ => false,
        }
    }
}

/// What a notice from the registry turned out to mean.
pub struct NoticeOutcome {
    pub applied: bool,
    pub reason: String,
}

/// The background loop: reconcile every [`PERIOD`].
pub async fn run(c: Arc<Coordinator>) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        c.reconcile().await;
    }
}

impl Coordinator {
    /// Brings every slot in line with the registry's current view, or, if
    /// the registry does not answer, with direct probes of the nodes.
    pub(super) async fn reconcile(self: &Arc<Self>) {
        let _one = self.liveness.running.lock().await;
        match self.pull_view().await {
            Ok(view) => {
                self.set_source(Source::Registry, &view);
                self.apply_view(&view).await;
                self.forget_strangers(&view).await;
                self.report_missing(&view).await;
            }
            Err(e) => {
                self.start_probing(&e);
                self.probe_all().await;
            }
        }
    }

    /// `/node-died`: checks the notice against the world, then says what it did.
    pub(super) async fn notice_death(
        self: &Arc<Self>,
        node_id: &str,
        incarnation: Option<u64>,
        epoch: Option<u64>,
        version: Option<u64>,
    ) -> NoticeOutcome {
        if self.liveness.is_stale(epoch, version) {
            return self.ignored(
                node_id,
                "died",
                format!(
                    "the notice comes from registry view {} but a newer view was applied already",
                    version.unwrap_or_default()
                ),
            );
        }
        self.reconcile().await;
        let Some(slot) = self.snapshot().slot(node_id).cloned() else {
            return self.ignored(node_id, "died", "no such node".into());
        };
        if incarnation.is_some_and(|i| i != slot.incarnation) {
            return self.ignored(
                node_id,
                "died",
                format!(
                    "the notice is about incarnation {}, the slot is served by incarnation {}",
                    incarnation.unwrap_or_default(),
                    slot.incarnation
                ),
            );
        }
        if slot.status == NodeStatus::Dead {
            return NoticeOutcome {
                applied: true,
                reason: format!("{node_id} is dead in the current view"),
            };
        }
        if slot.status == NodeStatus::Starting {
            return self.ignored(node_id, "died", format!("{node_id} is being started"));
        }
        if self.liveness.source() == Source::Registry {
            return self.ignored(
                node_id,
                "died",
                format!("the registry's current view shows {node_id} heartbeating"),
            );
        }
        // The registry did not answer: ask the node itself.
        if self.probe(&slot).await {
            return self.ignored(
                node_id,
                "died",
                format!("the registry does not answer and {node_id} answers its health check"),
            );
        }
        let changed = self
            .transition(
                node_id,
                Some(slot.incarnation),
                NodeStatus::Dead,
                "declared dead by a notice; the registry does not answer and neither does the node",
            )
            .await;
        NoticeOutcome {
            applied: changed,
            reason: "the node does not answer its health check".into(),
        }
    }

    /// `/node-revived`: reconciles, then says whether the node is alive.
    pub(super) async fn notice_revival(
        self: &Arc<Self>,
        node_id: &str,
        epoch: Option<u64>,
        version: Option<u64>,
    ) -> NoticeOutcome {
        if self.liveness.is_stale(epoch, version) {
            return self.ignored(
                node_id,
                "revived",
                format!(
                    "the notice comes from registry view {} but a newer view was applied already",
                    version.unwrap_or_default()
                ),
            );
        }
        self.reconcile().await;
        match self.snapshot().slot(node_id) {
            Some(s) if s.is_alive() => NoticeOutcome {
                applied: true,
                reason: format!("{node_id} is alive in the current view"),
            },
            _ => self.ignored(
                node_id,
                "revived",
                format!("the current view does not show {node_id} heartbeating"),
            ),
        }
    }

    fn ignored(&self, node_id: &str, what: &str, reason: String) -> NoticeOutcome {
        self.events.info(
            EventKind::NoticeIgnored,
            Some(node_id),
            format!("🤔 \"{node_id} {what}\" not applied: {reason}"),
        );
        NoticeOutcome {
            applied: false,
            reason,
        }
    }

    async fn pull_view(&self) -> Result<RegistryNodes, String> {
        let Some(registry) = &self.config.launch.registry else {
            return Err("no registry configured".into());
        };
        let resp = self
            .http
            .get(format!("{registry}/nodes"))
            .timeout(ASK_TIMEOUT)
            .send()
            .await
            .map_err(|e| describe_reqwest_error(&e))?;
        if !resp.status().is_success() {
            return Err(format!("the registry answered {}", resp.status()));
        }
        resp.json()
            .await
            .map_err(|e| format!("unreadable view: {e}"))
    }

    fn set_source(&self, source: Source, view: &RegistryNodes) {
        let before = {
            let mut st = self.liveness.state.lock().unwrap();
            st.applied = Some((view.registry_epoch, view.view_version));
            std::mem::replace(&mut st.source, source)
        };
        if before == Source::DirectProbe {
            self.events.good(
                EventKind::LivenessRegistry,
                None,
                format!(
                    "👂 the registry answers again (view {}, {} nodes known): liveness \
                     comes from its heartbeats again",
                    view.view_version,
                    view.nodes.len()
                ),
            );
        }
    }

    fn start_probing(&self, error: &str) {
        let before = {
            let mut st = self.liveness.state.lock().unwrap();
            if st.source != Source::DirectProbe {
                st.answered.clear();
            }
            std::mem::replace(&mut st.source, Source::DirectProbe)
        };
        if before != Source::DirectProbe {
            self.events.bad(
                EventKind::LivenessDirectProbe,
                None,
                format!(
                    "📡 the registry does not answer ({error}): the coordinator now probes \
                     each node's /health itself, and declares dead a node silent for {} s",
                    FAILURE_TIMEOUT.as_secs()
                ),
            );
        }
    }

    /// Asks the registry to drop the records of ids that are not slots of
    /// this cluster (a removed slot, another cluster's node, a made-up
    /// name), so that its table stays the cluster's size. A failure is
    /// harmless: the next pull asks again.
    async fn forget_strangers(&self, view: &RegistryNodes) {
        let strangers: Vec<String> = {
            let c = self.cluster.lock().unwrap();
            view.nodes
                .iter()
                .filter(|n| c.slot(&n.node_id).is_none())
                .map(|n| n.node_id.clone())
                .collect()
        };
        let Some(registry) = &self.config.launch.registry else {
            return;
        };
        if strangers.is_empty() {
            return;
        }
        let _ = self
            .http
            .post(format!("{registry}/forget"))
            .json(&ForgetRequest {
                node_ids: strangers,
            })
            .timeout(ASK_TIMEOUT)
            .send()
            .await;
    }

    /// Tells the registry the slots it has no record of that are dead in
    /// this table (`POST /missing`): a registry that restarted while a node
    /// was down never hears of it otherwise, and with `--auto-spawn` would
    /// leave the cluster a node short for good. The registry's idea of who
    /// should exist is this table. A failure is harmless: the next pull
    /// tells it again.
    async fn report_missing(&self, view: &RegistryNodes) {
        let Some(registry) = &self.config.launch.registry else {
            return;
        };
        let missing: Vec<MissingNode> = self
            .settled_slots()
            .into_iter()
            .filter(|s| s.status == NodeStatus::Dead)
            .filter(|s| view.nodes.iter().all(|n| n.node_id != s.node_id))
            .map(|s| MissingNode {
                node_id: s.node_id,
                url: s.url,
                role: s.role,
                incarnation: s.incarnation,
            })
            .collect();
        if missing.is_empty() {
            return;
        }
        let _ = self
            .http
            .post(format!("{registry}/missing"))
            .json(&MissingRequest { nodes: missing })
            .timeout(ASK_TIMEOUT)
            .send()
            .await;
    }

    /// Applies the registry's view to every settled slot.
    async fn apply_view(self: &Arc<Self>, view: &RegistryNodes) {
        let v = view.view_version;
        for slot in self.settled_slots() {
            let record = view.nodes.iter().find(|n| n.node_id == slot.node_id);
            match record {
                Some(r) if r.incarnation == Some(slot.incarnation) => {
                    self.follow_record(&slot, r, v).await;
                }
                // Another incarnation: the registry has not heard from this
                // process yet. Nothing to conclude.
                Some(_) => {}
                None => self.unknown_to_registry(&slot, view).await,
            }
        }
    }

    async fn follow_record(self: &Arc<Self>, slot: &Slot, record: &RegistryNode, v: u64) {
        let heartbeating = record.status == "alive";
        if heartbeating && slot.status == NodeStatus::Dead && self.may_run(slot) {
            self.revive(slot, &format!("heartbeating again, says registry view {v}"))
                .await;
        } else if !heartbeating && slot.is_alive() {
            let why = format!(
                "no heartbeat for {} s, says registry view {v}",
                FAILURE_TIMEOUT.as_secs()
            );
            self.transition(
                &slot.node_id,
                Some(slot.incarnation),
                NodeStatus::Dead,
                &why,
            )
            .await;
        }
    }

    /// A slot the registry has no record of: a registry restarted since, or
    /// a node that deregistered. Silent past the timeout of a registry that
    /// has run that long, and not answering a probe either: dead.
    async fn unknown_to_registry(&self, slot: &Slot, view: &RegistryNodes) {
        let timeout = view.timeout_seconds.max(FAILURE_TIMEOUT.as_secs_f64());
        if !slot.is_alive() || view.uptime_seconds <= timeout || self.probe(slot).await {
            return;
        }
        let why = format!(
            "the registry has not heard from it in its {:.0} s of running, and it does not \
             answer its health check",
            view.uptime_seconds
        );
        self.transition(
            &slot.node_id,
            Some(slot.incarnation),
            NodeStatus::Dead,
            &why,
        )
        .await;
    }

    /// The registry does not answer: every settled slot is asked `/health`.
    async fn probe_all(self: &Arc<Self>) {
        let slots = self.settled_slots();
        let answers = futures::future::join_all(slots.iter().map(|s| self.probe(s))).await;
        let now = Instant::now();
        for (slot, answered) in slots.iter().zip(answers) {
            let silent_for = {
                let mut st = self.liveness.state.lock().unwrap();
                let seen = st
                    .answered
                    .entry(slot.node_id.clone())
                    .or_insert((slot.incarnation, now));
                if seen.0 != slot.incarnation || answered {
                    *seen = (slot.incarnation, now);
                }
                now - seen.1
            };
            if answered && slot.status == NodeStatus::Dead && self.may_run(slot) {
                self.revive(slot, "answers direct probes (the registry does not answer)")
                    .await;
            } else if slot.is_alive() && silent_for > FAILURE_TIMEOUT {
                let why = format!(
                    "no answer to direct probes for {} s (the registry does not answer)",
                    FAILURE_TIMEOUT.as_secs()
                );
                self.transition(
                    &slot.node_id,
                    Some(slot.incarnation),
                    NodeStatus::Dead,
                    &why,
                )
                .await;
            }
        }
    }

    async fn revive(self: &Arc<Self>, slot: &Slot, why: &str) {
        let changed = self
            .transition(
                &slot.node_id,
                Some(slot.incarnation),
                NodeStatus::Alive,
                why,
            )
            .await;
        if changed && slot.role == Role::Follower {
            self.report_catchup(slot.clone());
        }
    }

    /// Asks a node's `/health`: true if the slot's own process answers.
    async fn probe(&self, slot: &Slot) -> bool {
        let answer = self
            .http
            .get(format!("{}/health", slot.url))
            .timeout(ASK_TIMEOUT)
            .send()
            .await;
        match answer {
            Ok(resp) => resp
                .json::<NodeHealth>()
                .await
                .is_ok_and(|h| h.incarnation == slot.incarnation),
            Err(_) => false,
        }
    }

    /// The slots whose status liveness decides (not those still starting).
    fn settled_slots(&self) -> Vec<Slot> {
        let c = self.snapshot();
        std::iter::once(c.leader.clone())
            .chain(c.followers.iter().cloned())
            .filter(|s| s.status != NodeStatus::Starting)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_older_view_of_the_same_registry_is_stale() {
        let l = Liveness::default();
        assert!(!l.is_stale(Some(1), Some(5)), "nothing applied yet");
        l.state.lock().unwrap().applied = Some((1, 5));
        assert!(l.is_stale(Some(1), Some(4)));
        assert!(
            !l.is_stale(Some(1), Some(5)),
            "the same view: reconcile again"
        );
        assert!(!l.is_stale(Some(1), Some(6)));
        assert!(!l.is_stale(Some(2), Some(1)), "a restarted registry");
        assert!(!l.is_stale(None, None), "a notice without a view");
    }
}

//! Leader election and failover: the coordinator decides who leads.
//!
//! The coordinator is the lab's control plane (as Kafka's controller is), so
//! it picks the leader rather than letting nodes vote. Every leader start is
//! an election: the cluster's first start, a restart of the leader's process,
//! and the death of the leader (a graceful `/kill`, or the registry's
//! timeout after a crash). An election:
//!
//! 1. takes a new term `t`, and asks every alive node where its log stands
//!    (`GET /replicate` carrying `t`). Asking *fences*: a node that hears
//!    `t` refuses the old leader's requests from then on, so the answers
//!    are final — no ack of the old term can arrive after them;
//! 2. picks the node with the highest (last term, seq): its log contains
//!    every other's, since logs are prefixes of one history up to their
//!    last common term (ties: the slot that led, then the lowest port);
//! 3. promotes it only if its seq is at least the highest seq ever
//!    acknowledged to a client — unless `--unclean-failover` allows it, an
//!    election that would lose an acknowledged write is refused, and writes
//!    stay refused with the seqs at risk named (`/status`'s `failover`);
//! 4. `POST /admin/promote {t}`: the node persists "term t starts at seq
//!    s+1" and leads; then the table swaps slots (the old leader's slot is a
//!    follower slot, ids stay) and the new leader is told its followers.
//!
//! The deposed leader, if it still runs (paused, or cut off), is fenced by
//! its term: followers refuse its entries, the coordinator ignores answers
//! of an older term, and when it is heard again the new leader's handshake
//! steps it down and truncates its unacknowledged tail.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;

use super::cluster::Slot;
use super::Coordinator;
use crate::api::stale_term_in;
use crate::api::*;
use crate::events::EventKind;
use crate::http::{describe_reqwest_error, error_detail};

/// How long a node has to say where its log stands.
const QUERY_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long a promotion may take (it fsyncs the term file).
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a refused or failed failover is tried again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Why an election runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The cluster starts.
    Start,
    /// The leader's process was restarted (`/spawn` of the leader).
    LeaderRestart,
    /// The leader is dead.
    LeaderDown,
}

/// Where failover stands, for `/status`.
#[derive(Debug, Clone, Default, PartialEq)]
enum State {
    #[default]
    Idle,
    InProgress,
    Refused {
        at_risk: SeqRange,
        cause: String,
    },
}

/// The coordinator's failover bookkeeping.
pub struct Failover {
    /// The highest seq acknowledged to a client (0 after a restart).
    acked_seq: AtomicU64,
    /// The last term in which a promotion was asked: a term is never used
    /// for two promotions.
    promoted_in: AtomicU64,
    unclean_allowed: bool,
    state: Mutex<State>,
    /// Wakes the failover task at once (the leader was declared dead).
    pub wake: tokio::sync::Notify,
    /// The incarnation of the process last promoted: the leader slot is
    /// ready for writes only once its current process was (a node always
    /// starts as a follower).
    confirmed: tokio::sync::watch::Sender<Option<u64>>,
}

impl Failover {
    pub fn new(unclean_allowed: bool) -> Self {
        Failover {
            acked_seq: AtomicU64::new(0),
            promoted_in: AtomicU64::new(0),
            unclean_allowed,
            state: Mutex::new(State::Idle),
            wake: tokio::sync::Notify::new(),
            confirmed: tokio::sync::watch::Sender::new(None),
        }
    }

    /// Takes over the term of a previous coordinator: never promote in it
    /// or below.
    pub fn learn_promoted(&self, term: u64) {
        self.promoted_in.fetch_max(term, Ordering::AcqRel);
    }

    /// A leader that already leads `incarnation` (adopted at a restart):
    /// writes need not wait for an election.
    pub fn confirm(&self, incarnation: u64) {
        self.confirmed.send_replace(Some(incarnation));
    }

    pub fn acked_seq(&self) -> u64 {
        self.acked_seq.load(Ordering::Acquire)
    }

    pub fn view(&self, leader_alive: bool) -> FailoverView {
        let state = self.state.lock().unwrap().clone();
        let mut view = FailoverView {
            state: "none".into(),
            acked_seq: self.acked_seq(),
            unclean_allowed: self.unclean_allowed,
            at_risk: None,
            cause: None,
        };
        match state {
            State::Refused { at_risk, cause } => {
                view.state = "refused".into();
                view.at_risk = Some(at_risk);
                view.cause = Some(cause);
            }
            State::InProgress => view.state = "in_progress".into(),
            State::Idle if !leader_alive => view.state = "in_progress".into(),
            State::Idle => {}
        }
        view
    }

    /// Why writes are refused while the leader is down, in words.
    pub fn leader_down_cause(&self, leader: &Slot) -> String {
        match &*self.state.lock().unwrap() {
            State::Refused { cause, .. } => cause.clone(),
            _ => format!(
                "the leader ({}, {}) is {}: failover to a follower is in progress",
                leader.node_id,
                leader.url,
                leader.status.as_str()
            ),
        }
    }

    fn set(&self, state: State) {
        *self.state.lock().unwrap() = state;
    }
}

/// One alive node's answer to "where does your log stand?".
struct Candidate {
    slot: Slot,
    seq: u64,
    last_term: u64,
    /// The newest term its history has begun (maybe with no entry yet).
    newest_term: u64,
}

/// The election's order, best first: the highest (last term, seq); on a
/// tie, at the start the slot named `leader` (under `--runtime external`
/// the first node to join holds the leader's slot until this election,
/// whatever its id, and `leader` is the node people expect to lead), then
/// the slot that led, then the lowest port.
fn order_candidates(reason: Reason, old_leader: &str, candidates: &mut [Candidate]) {
    candidates.sort_by_key(|c| {
        (
            std::cmp::Reverse((c.last_term, c.seq)),
            !(reason == Reason::Start && c.slot.node_id == crate::api::LEADER_ID),
            c.slot.node_id != old_leader,
            c.slot.port,
        )
    });
}

/// What asking one node gave.
enum Asked {
    Stands(Candidate),
    /// The node knows a newer term than the one we asked with.
    NewerTerm(u64),
    Unreachable(String),
}

/// How long a write waits for a just-started leader slot to be promoted.
const ELECTION_WAIT: Duration = Duration::from_secs(3);

impl Coordinator {
    /// Waits (a little) while the leader slot's process is alive but not
    /// promoted yet: right after the cluster starts or the leader restarts,
    /// the election takes a few milliseconds, and a write must not reach a
    /// node that is still a follower.
    pub(super) async fn wait_for_election(&self) {
        let incarnation = {
            let c = self.cluster.lock().unwrap();
            if !c.leader.is_alive() {
                return;
            }
            c.leader.incarnation
        };
        if *self.failover.confirmed.borrow() == Some(incarnation) {
            return; // the steady state: no waiting, no allocation
        }
        let mut rx = self.failover.confirmed.subscribe();
        let confirmed = |c: &Option<u64>| *c == Some(incarnation);
        let _ = tokio::time::timeout(ELECTION_WAIT, rx.wait_for(confirmed)).await;
    }

    /// Records a write acknowledged to a client, if it was written in the
    /// current term: an answer from a deposed leader never counts.
    pub(super) fn record_ack(&self, term: u64, seq: u64) -> bool {
        let cluster = self.cluster.lock().unwrap();
        if cluster.term != term {
            return false;
        }
        self.failover.acked_seq.fetch_max(seq, Ordering::AcqRel);
        true
    }

    /// The term of the next election, made the coordinator's term now (so
    /// that answers of the old term stop counting before anyone is asked).
    fn next_term(&self) -> u64 {
        let mut table = self.cluster.lock().unwrap();
        let cluster = Arc::make_mut(&mut table);
        let promoted_in = self.failover.promoted_in.load(Ordering::Acquire);
        if cluster.term <= promoted_in {
            cluster.term = promoted_in + 1;
        }
        cluster.term
    }

    /// The highest term a promotion was asked in.
    pub(super) fn promoted_in(&self) -> u64 {
        self.failover.promoted_in.load(Ordering::Acquire)
    }

    /// Learns a newer term from a node (after a coordinator restart, say).
    pub(super) fn learn_term(&self, term: u64) {
        let mut table = self.cluster.lock().unwrap();
        let cluster = Arc::make_mut(&mut table);
        cluster.term = cluster.term.max(term);
        self.failover.promoted_in.fetch_max(term, Ordering::AcqRel);
    }

    /// Runs an election (see the module doc). Returns whether a leader was
    /// promoted. Takes the membership lock.
    pub async fn elect(self: &Arc<Self>, reason: Reason) -> bool {
        let _guard = self.membership.lock().await;
        if reason == Reason::LeaderDown && self.snapshot().leader.is_alive() {
            return false; // someone else's election got there first
        }
        let before = self.failover.state.lock().unwrap().clone();
        if reason == Reason::LeaderDown && before == State::Idle {
            self.failover.set(State::InProgress);
        }
        // A refused failover is retried every second: narrate it once.
        let retry = matches!(before, State::Refused { .. });
        for _ in 0..3 {
            let term = self.next_term();
            let cluster = self.snapshot();
            let alive: Vec<Slot> = std::iter::once(&cluster.leader)
                .chain(cluster.followers.iter())
                .filter(|s| s.is_alive())
                .cloned()
                .collect();
            let asked = join_all(alive.iter().map(|s| self.ask_position(s, term))).await;
            let mut candidates = vec![];
            let mut unreachable = vec![];
            let mut newer = None;
            for (slot, a) in alive.iter().zip(asked) {
                match a {
                    Asked::Stands(c) => candidates.push(c),
                    Asked::NewerTerm(t) => newer = newer.max(Some(t)),
                    Asked::Unreachable(why) => {
                        unreachable.push(format!("{} ({why})", slot.node_id))
                    }
                }
            }
            // A term some node has already begun (known to the nodes of a
            // restarted cluster, not to a new coordinator) is never reused.
            let begun = candidates.iter().map(|c| c.newest_term).max();
            if let Some(t) = newer.max(begun.filter(|&t| t >= term)) {
                self.learn_term(t);
                continue;
            }
            return self
                .decide(
                    reason,
                    term,
                    &cluster.leader,
                    candidates,
                    &unreachable,
                    retry,
                )
                .await;
        }
        false
    }

    /// Steps 2 to 4 of an election, once the candidates have answered.
    async fn decide(
        &self,
        reason: Reason,
        term: u64,
        old_leader: &Slot,
        mut candidates: Vec<Candidate>,
        unreachable: &[String],
        quiet: bool,
    ) -> bool {
        let acked = self.failover.acked_seq();
        if reason == Reason::LeaderDown && !quiet {
            self.narrate_candidates(term, old_leader, &candidates, unreachable, acked);
        }
        order_candidates(reason, &old_leader.node_id, &mut candidates);
        // A student's node leads only if the course said it can (level 4,
        // `--node-cmd-leader`): a follower-only node would take the promotion
        // and then have no way to serve writes.
        let commands = &self.config.launch.commands;
        let students = candidates.len();
        candidates.retain(|c| commands.can_lead(&c.slot.node_id));
        let students = students - candidates.len();
        let Some(best) = candidates.first() else {
            let not_leaders = if students > 0 {
                format!(
                    " ({students} alive node(s) run --node-cmd, and a node of --node-cmd \
                     leads only when --node-cmd-leader says it implements the leader)"
                )
            } else {
                String::new()
            };
            let cause = format!(
                "failover refused: no alive node that can lead answered{not_leaders}; bring \
                 back a follower (or the old leader) that holds the acknowledged writes (up \
                 to seq {acked}), or run with --unclean-failover to accept losing them"
            );
            self.refuse(acked, 0, cause);
            return false;
        };
        if best.seq < acked {
            let cause = format!(
                "failover refused: the best alive candidate, {}, holds the log up to seq {} \
                 but seqs up to {acked} were acknowledged to clients; promoting it would lose \
                 seqs {}..={acked}. Bring back a follower that holds them (a sync follower, \
                 or the old leader), or run with --unclean-failover to accept the loss",
                best.slot.node_id,
                best.seq,
                best.seq + 1
            );
            if !self.failover.unclean_allowed {
                self.refuse(acked, best.seq, cause);
                return false;
            }
            self.events.bad(
                EventKind::FailoverUnclean,
                Some(&best.slot.node_id),
                format!(
                    "⚠️  UNCLEAN FAILOVER (--unclean-failover): promoting {} at seq {}; \
                     acknowledged seqs {}..={acked} may be LOST",
                    best.slot.node_id,
                    best.seq,
                    best.seq + 1
                ),
            );
        } else if reason == Reason::LeaderDown {
            self.events.info(
                EventKind::FailoverChosen,
                Some(&best.slot.node_id),
                format!(
                    "🎯 {} chosen: the highest (last term, seq) = ({}, {}), and it holds every \
                     acknowledged write (up to seq {acked})",
                    best.slot.node_id, best.last_term, best.seq
                ),
            );
        }
        self.promote(reason, term, old_leader, best).await
    }

    /// Step 4: the promotion itself, the table swap, the peers push.
    async fn promote(&self, reason: Reason, term: u64, old: &Slot, best: &Candidate) -> bool {
        let id = best.slot.node_id.clone();
        self.failover.promoted_in.fetch_max(term, Ordering::AcqRel);
        // The term is saved before any node leads in it: a restarted
        // coordinator never promotes in it again.
        if let Err(e) = self.save_map(term).await {
            self.events.bad(
                EventKind::PromoteFailed,
                Some(&id),
                format!("❌ not promoting {id} to term {term}: {e:#}; will retry"),
            );
            return false;
        }
        if let Err(why) = self.ask_promote(&best.slot, term).await {
            self.events.bad(
                EventKind::PromoteFailed,
                Some(&id),
                format!("❌ promoting {id} to leader of term {term} failed: {why}; will retry"),
            );
            return false;
        }
        // Every promotion but the cluster's first is a leader change: a
        // failover to a follower, or the leader slot's restarted process.
        // Counted before the table changes, so no write sees the new
        // leader ahead of the metric.
        if reason != Reason::Start {
            self.metrics.leader_changes.inc();
        }
        let mut after = super::cluster::Cluster::clone(&self.snapshot());
        after.promote(&id);
        after.term = term;
        // The new leader learns its followers before a write can reach it.
        self.push_peers(&after).await;
        {
            let mut table = self.cluster.lock().unwrap();
            let c = Arc::make_mut(&mut table);
            c.promote(&id);
            c.term = term;
        }
        // Who leads now (the term was saved before the promotion).
        let _ = self.save_map(term).await;
        self.failover.set(State::Idle);
        self.failover
            .confirmed
            .send_replace(Some(best.slot.incarnation));
        let (w, alive) = (self.config.w, after.alive_followers());
        if reason != Reason::Start && after.can_write(w) {
            self.events.good(
                EventKind::WriteQuorumBack,
                None,
                format!("✅ write quorum available again: {alive} alive followers, W={w}"),
            );
        }
        let seq = best.seq;
        match reason {
            Reason::Start => self.events.good(
                EventKind::LeaderPromoted,
                Some(&id),
                format!("👑 {id} leads term {term} (log up to seq {seq})"),
            ),
            _ => {
                self.events.good(
                    EventKind::LeaderPromoted,
                    Some(&id),
                    format!(
                        "👑 {id} is the LEADER now: term {term}, its log ends at seq {seq}; \
                         writes go to it{}",
                        if id != old.node_id {
                            format!(" ({} is a follower slot from now on)", old.node_id)
                        } else {
                            String::new()
                        }
                    ),
                );
                if id != old.node_id {
                    self.events.info(
                        EventKind::OldLeaderFenced,
                        Some(&old.node_id),
                        format!(
                            "🛡️  {} (incarnation {}) is fenced: every node now runs term {term} \
                             and refuses anything it sends from term {} or older; if it comes \
                             back it steps down, cuts its log to what it shares with {id} and \
                             catches up as a follower",
                            old.node_id,
                            old.incarnation,
                            term - 1
                        ),
                    );
                }
            }
        }
        true
    }

    fn refuse(&self, acked: u64, best_seq: u64, cause: String) {
        let at_risk = SeqRange {
            from: best_seq + 1,
            to: acked.max(best_seq + 1),
        };
        let state = State::Refused {
            at_risk,
            cause: cause.clone(),
        };
        let mut current = self.failover.state.lock().unwrap();
        if *current != state {
            *current = state;
            drop(current);
            self.events.bad(
                EventKind::FailoverRefused,
                None,
                format!(
                    "⛔ FAILOVER REFUSED: acknowledged seqs {}..={} are held by no alive \
                     follower. Writes stay refused. {cause}",
                    at_risk.from, at_risk.to
                ),
            );
        }
    }

    fn narrate_candidates(
        &self,
        term: u64,
        old: &Slot,
        candidates: &[Candidate],
        unreachable: &[String],
        acked: u64,
    ) {
        let listed: Vec<String> = candidates
            .iter()
            .map(|c| format!("{} at seq {} (term {})", c.slot.node_id, c.seq, c.last_term))
            .collect();
        let mut message = format!(
            "🗳️  failover for term {term} (leader {} is down): candidates {}; highest seq \
             acknowledged to a client: {acked}",
            old.node_id,
            if listed.is_empty() {
                "none".to_string()
            } else {
                listed.join(", ")
            }
        );
        if !unreachable.is_empty() {
            message.push_str(&format!("; no answer from {}", unreachable.join(", ")));
        }
        self.events
            .info(EventKind::FailoverCandidates, None, message);
    }

    /// Step 1 for one node: where its log stands, asked with the new term.
    async fn ask_position(&self, slot: &Slot, term: u64) -> Asked {
        let sent = self
            .http
            .get(format!("{}/replicate", slot.url))
            .header(HEADER_TERM, term)
            .timeout(QUERY_TIMEOUT)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => return Asked::Unreachable(describe_reqwest_error(&e)),
        };
        if !resp.status().is_success() {
            let status = resp.status();
            let detail = error_detail(resp).await;
            return match stale_term_in(&detail) {
                Some(t) => Asked::NewerTerm(t),
                None => Asked::Unreachable(format!("HTTP {status}: {detail}")),
            };
        }
        match resp.json::<AppendResponse>().await {
            Ok(a) if a.incarnation == slot.incarnation => Asked::Stands(Candidate {
                slot: slot.clone(),
                seq: a.acked_seq,
                last_term: a.last_term,
                newest_term: a.history.last().map_or(0, |&(t, _)| t),
            }),
            Ok(a) => Asked::Unreachable(format!(
                "answered by incarnation {}, expected {}",
                a.incarnation, slot.incarnation
            )),
            Err(e) => Asked::Unreachable(format!("unreadable answer: {e}")),
        }
    }

    async fn ask_promote(&self, slot: &Slot, term: u64) -> Result<(), String> {
        let resp = self
            .http
            .post(format!("{}/admin/promote", slot.url))
            .header(HEADER_TERM, term)
            .timeout(PROMOTE_TIMEOUT)
            .json(&PromoteRequest { term })
            .send()
            .await
            .map_err(|e| describe_reqwest_error(&e))?;
        let incarnation = crate::http::answering_incarnation(&resp);
        if incarnation != Some(slot.incarnation) {
            return Err(format!(
                "answered by incarnation {incarnation:?}, expected {}",
                slot.incarnation
            ));
        }
        if !resp.status().is_success() {
            let status = resp.status();
            return Err(format!("HTTP {status}: {}", error_detail(resp).await));
        }
        Ok(())
    }
}

/// The failover task: wakes when the leader is declared dead (and every
/// second, to retry a refused or failed failover) and runs an election.
pub fn start(c: Arc<Coordinator>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = c.failover.wake.notified() => {},
                _ = tokio::time::sleep(RETRY_EVERY) => {},
            }
            if !c.ready.load(Ordering::Relaxed) {
                continue;
            }
            let leader = c.snapshot().leader.clone();
            if leader.status == NodeStatus::Dead {
                c.elect(Reason::LeaderDown).await;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(node_id: &str, port: u16, last_term: u64, seq: u64) -> Candidate {
        Candidate {
            slot: Slot {
                node_id: node_id.into(),
                role: Role::Follower,
                port,
                url: format!("http://{node_id}:{port}"),
                status: NodeStatus::Alive,
                incarnation: 1,
                pid: None,
            },
            seq,
            last_term,
            newest_term: last_term,
        }
    }

    fn order(reason: Reason, old_leader: &str, mut all: Vec<Candidate>) -> Vec<String> {
        order_candidates(reason, old_leader, &mut all);
        all.into_iter().map(|c| c.slot.node_id).collect()
    }

    /// `docker-compose up`: follower-2 joined first and holds the leader's
    /// slot; every log is empty. The node named `leader` wins the tie.
    #[test]
    fn at_the_start_a_tie_goes_to_the_slot_named_leader() {
        let fresh = || {
            vec![
                candidate("follower-2", 7003, 0, 0),
                candidate("follower-1", 7002, 0, 0),
                candidate("leader", 7001, 0, 0),
            ]
        };
        assert_eq!(
            order(Reason::Start, "follower-2", fresh()),
            ["leader", "follower-2", "follower-1"]
        );
        // A longer log still wins, whatever the names.
        let mut ahead = fresh();
        ahead[1].seq = 3;
        ahead[1].last_term = 1;
        assert_eq!(order(Reason::Start, "follower-2", ahead)[0], "follower-1");
        // After the start, a tie goes to the slot that led, then the port:
        // the name `leader` means nothing more than any other id.
        assert_eq!(
            order(Reason::LeaderRestart, "follower-2", fresh()),
            ["follower-2", "leader", "follower-1"]
        );
        assert_eq!(
            order(Reason::LeaderDown, "follower-9", fresh()),
            ["leader", "follower-1", "follower-2"]
        );
    }
}

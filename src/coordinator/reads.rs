//! The client-facing read path, with the lab's quorum rule and two repairs.
//!
//! A read asks the read set (the R alive followers with the highest ports;
//! never the leader) at once, each through that follower's batcher (see
//! [`super::batch`]), and answers with the highest version among them.
//!
//! 1. **A substitute for an unreachable member.** Until the registry
//!    declares a crashed follower dead (5 s), it is still in the read set.
//!    When a member fails, or has not answered within [`ANSWER_PATIENCE`]
//!    (a crashed process refuses at once, a stopped one just hangs), the read
//!    asks the next alive follower not yet asked, highest ports first. It
//!    still needs R answers, so the quorum rule is unchanged: when
//!    W + R > N, any R followers overlap any W, whichever R they are. A
//!    member that failed is *suspected* for [`SUSPECT_FOR`] and asked last
//!    meanwhile, so a read loop does not pay the wait on every read.
//! 2. **Only committed versions** (when W + R > N). A follower applies an
//!    entry before the write is acknowledged, and a write that failed its
//!    quorum stays in the log (see `super::requests`). Returning such a
//!    version and then, after a membership change, an older one from other
//!    followers would take reads back in time. So a read returns a version
//!    only once it is *committed*: held by W followers, which every later
//!    read set overlaps. If the version it saw is beyond the commit point
//!    the coordinator knows ([`CommitPoint`]), the read waits (at most the
//!    write's ack timeout) until a write or the leader's progress moves the
//!    commit point past it. That makes reads linearizable when W + R > N.
//!
//! 3. **Only reconciled followers** (when W + R > N). After a failover a
//!    follower may hold entries the new leader will cut: a deposed leader's
//!    unacknowledged tail, say, at seqs the new term reuses. Compared by
//!    seq alone, such an entry could pass for committed. So a follower's
//!    answer counts only once the current term's leader has checked its log
//!    against its own (the follower's *reconciled term*, carried by every
//!    read answer; see `node::follower`); any other answer is a failed
//!    member and is replaced. Right after a start or a failover, when no
//!    follower is reconciled yet, a read waits for that (at most
//!    [`RECONCILE_PATIENCE`]) rather than fail. A read that waited across a
//!    change of term fails rather than return what it can no longer vouch for.
//!
//! When W + R <= N none of this guarantee exists (that is the lab's lesson):
//! reads still get substitutes but return what they see, stale or not.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::Json;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::watch;

use super::batch::{Batcher, Limits};
use super::cluster::{Cluster, Slot};
use super::{Coordinator, Shared};
use crate::api::*;
use crate::events::{EventKind, Tone};
use crate::http::{describe_reqwest_error, validate_key_value, ApiError, ApiPath};

/// How long a follower may take to answer before the read asks another one
/// as well. Far above a healthy answer (about a millisecond, tens under a
/// full benchmark), far below the registry's 5 s.
const ANSWER_PATIENCE: Duration = Duration::from_millis(200);
/// How long a follower that failed a read is asked only as a last resort.
const SUSPECT_FOR: Duration = Duration::from_secs(1);
/// A waiting read asks the leader for the commit point this often, in case
/// no write moves it (a write that failed its quorum, say).
const COMMIT_POLL: Duration = Duration::from_millis(50);
/// How long a read waits for the current leader to reconcile followers
/// (after a start or a failover) before it fails, and how often it looks.
const RECONCILE_PATIENCE: Duration = Duration::from_secs(2);
const RECONCILE_POLL: Duration = Duration::from_millis(20);
/// The start of the reason given for a follower not reconciled in this term.
const NOT_RECONCILED: &str = "not yet reconciled";
/// Substitutions are narrated at most once a second per unreachable member.
const NARRATE_SUBSTITUTES_EVERY: Duration = Duration::from_secs(1);

/// `GET /read/{key}`.
pub async fn read(
    State(c): Shared,
    ApiPath(key): ApiPath<String>,
) -> Result<Json<ReadResponse>, ApiError> {
    c.serve_read(key).await.map(Json)
}

impl Coordinator {
    /// A client's read, as `GET /read/{key}` serves it: checked, timed,
    /// counted. `kvlab up`'s gateway calls this directly (see
    /// [`Coordinator::serve_write`]).
    pub async fn serve_read(&self, key: String) -> Result<ReadResponse, ApiError> {
        validate_key_value(&key, None)?;
        let narrate = self.events.narrate_request();
        let started = std::time::Instant::now();
        let result = self.read(key, narrate).await;
        self.metrics.read_seconds.observe(started.elapsed());
        let counter = match &result {
            Ok(_) => &self.metrics.reads_ok,
            Err(e) if e.status == axum::http::StatusCode::NOT_FOUND => {
                &self.metrics.reads_not_found
            }
            Err(_) => &self.metrics.reads_failed,
        };
        counter.inc();
        self.events.count_read(result.is_ok());
        result
    }
}

/// What the coordinator knows is committed: the highest seq held by W
/// followers. It only grows. Successful writes move it (their W sync
/// followers acknowledged them, and acks are cumulative), and so does the
/// leader's view of its followers, asked by reads that wait.
pub struct CommitPoint {
    seq: watch::Sender<u64>,
    /// One question to the leader at a time; waiting reads share the answer.
    asking: tokio::sync::Mutex<()>,
}

impl Default for CommitPoint {
    fn default() -> Self {
        CommitPoint {
            seq: watch::Sender::new(0),
            asking: tokio::sync::Mutex::new(()),
        }
    }
}

impl CommitPoint {
    pub fn get(&self) -> u64 {
        *self.seq.borrow()
    }

    /// Records that every entry up to `seq` is held by W followers.
    pub fn advance(&self, seq: u64) {
        self.seq.send_if_modified(|c| {
            let grew = seq > *c;
            if grew {
                *c = seq;
            }
            grew
        });
    }
}

/// Followers that recently failed a read: node id -> their record.
#[derive(Default)]
pub struct Suspects(std::sync::Mutex<HashMap<String, Suspect>>);

struct Suspect {
    incarnation: u64,
    until: Instant,
    /// Why it failed.
    reason: String,
    /// When a substitution for it was last narrated, and how many were not.
    narrated_at: Option<Instant>,
    unnarrated: u64,
}

impl Suspects {
    /// Orders `alive` (highest ports first) for a read: the processes not
    /// suspected now, then the suspected ones. Also returns the suspected
    /// ones among the first `r` (the read set), with why.
    fn order<'a>(&self, alive: Vec<&'a Slot>, r: usize) -> (Vec<&'a Slot>, Vec<(String, String)>) {
        let mut map = self.0.lock().unwrap();
        if map.is_empty() {
            return (alive, vec![]); // the usual case: nothing to reorder
        }
        let now = Instant::now();
        // Suspicion expires: the next read asks the member again.
        map.retain(|_, s| s.until > now);
        let mut ordered = Vec::with_capacity(alive.len());
        let mut suspected = vec![];
        let mut skipped = vec![];
        for (rank, slot) in alive.into_iter().enumerate() {
            let suspect = map
                .get(&slot.node_id)
                .filter(|s| s.incarnation == slot.incarnation && s.until > now);
            match suspect {
                None => ordered.push(slot),
                Some(s) => {
                    if rank < r {
                        let why = format!("failed a read just before: {}", s.reason);
                        skipped.push((slot.node_id.clone(), why));
                    }
                    suspected.push(slot);
                }
            }
        }
        ordered.extend(suspected);
        (ordered, skipped)
    }

    fn suspect(&self, slot: &Slot, reason: &str) {
        let mut map = self.0.lock().unwrap();
        let s = map.entry(slot.node_id.clone()).or_insert(Suspect {
            incarnation: slot.incarnation,
            until: Instant::now(),
            reason: String::new(),
            narrated_at: None,
            unnarrated: 0,
        });
        s.incarnation = slot.incarnation;
        s.until = Instant::now() + SUSPECT_FOR;
        s.reason = reason.to_string();
    }

    fn clear(&self, slot: &Slot) {
        let mut map = self.0.lock().unwrap();
        if map
            .get(&slot.node_id)
            .is_some_and(|s| s.incarnation == slot.incarnation)
        {
            map.remove(&slot.node_id);
        }
    }

    /// Whether to narrate a substitution for `node_id` now; if so, also how
    /// many went unnarrated since the last line.
    pub(super) fn narrate_now(&self, node_id: &str) -> Option<u64> {
        let mut map = self.0.lock().unwrap();
        let s = map.get_mut(node_id)?;
        let due = s
            .narrated_at
            .is_none_or(|at| at.elapsed() >= NARRATE_SUBSTITUTES_EVERY);
        if due {
            s.narrated_at = Some(Instant::now());
            Some(std::mem::take(&mut s.unnarrated))
        } else {
            s.unnarrated += 1;
            None
        }
    }
}

impl Coordinator {
    pub async fn read(&self, key: String, narrate: bool) -> Result<ReadResponse, ApiError> {
        let cluster = self.snapshot();
        let r = self.config.r;
        let (candidates, skipped) = self.read_candidates(&cluster, r);
        if candidates.len() < r {
            if narrate {
                self.events.emit(
                    EventKind::ReadRefused,
                    Tone::Bad,
                    None,
                    format!(
                        "⛔ READ {key} refused: {} alive followers, R={r}",
                        cluster.alive_followers()
                    ),
                );
            }
            return Err(ApiError::unavailable("Read quorum not available"));
        }
        // N counts every follower slot, dead or alive: a read set is drawn
        // from them, and so was the sync set of every write.
        let linearizable = self.config.w + r > cluster.followers.len();
        // Only answers from followers the current leader has reconciled
        // count (repair 3); a term of 0 means no leader was promoted yet.
        let term = (linearizable && cluster.term > 0).then_some(cluster.term);
        let mut outcome = self.gather(&candidates, skipped, &key, r, term).await;
        // Right after a start or a failover the new leader reconciles each
        // follower within milliseconds: a read that came first waits for
        // that rather than fail (bounded, then it fails as usual).
        let patience_ends = Instant::now() + RECONCILE_PATIENCE;
        while outcome.responses() < r && outcome.waits_for_reconciliation() {
            if Instant::now() >= patience_ends {
                break;
            }
            tokio::time::sleep(RECONCILE_POLL).await;
            outcome = self.gather(&candidates, vec![], &key, r, term).await;
        }
        for sub in &outcome.substitutes {
            self.narrate_substitute(sub);
        }
        let confirmed = if linearizable {
            self.confirm(&outcome)
                .await
                .and_then(|waited| self.check_same_term(term, &outcome).map(|()| waited))
        } else {
            Ok(None)
        };
        if narrate {
            self.narrate_read(&key, &outcome, &confirmed);
        }
        let waited = confirmed?;
        outcome.into_result(key, r, linearizable, waited)
    }

    /// Who a read may ask, in order: the read set (R alive followers, highest
    /// ports), then the other alive followers, highest ports first; followers
    /// that failed a read a moment ago come last. Also returns the read set
    /// members moved back that way, with why.
    fn read_candidates<'a>(
        &self,
        cluster: &'a Cluster,
        r: usize,
    ) -> (Vec<&'a Slot>, Vec<(String, String)>) {
        // Sorted by port, so reversed: highest first, the read set leading.
        let alive = cluster
            .followers
            .iter()
            .rev()
            .filter(|s| s.is_alive())
            .collect();
        self.suspects.order(alive, r)
    }

    /// Asks `candidates` for `key` until R have answered: the first R at
    /// once, and the next one each time an asked follower fails or exceeds
    /// [`ANSWER_PATIENCE`]. Stops early only when no one is left to ask.
    async fn gather(
        &self,
        candidates: &[&Slot],
        skipped: Vec<(String, String)>,
        key: &str,
        r: usize,
        term: Option<u64>,
    ) -> ReadOutcome {
        let ask = |i: usize| {
            let slot = candidates[i];
            async move { (i, self.ask(slot, key, term).await) }
        };
        let mut pending = FuturesUnordered::new();
        let mut asked: Vec<Asked> = Vec::with_capacity(r);
        let mut substitutes = Vec::new();
        // Read set members that are suspected were put last; the followers
        // asked in their place are the last k of the first R candidates (the
        // healthy members come first).
        let first_stand_in = r.saturating_sub(skipped.len());
        let mut skipped = skipped.into_iter();
        let mut answered = 0;
        // One timer for the whole read, moved only when the earliest
        // patience among the hopeful members changes: most reads ask their R
        // members at once and never move it, so they pay for one timer.
        let patience = tokio::time::sleep(ANSWER_PATIENCE);
        tokio::pin!(patience);
        let mut patience_set_for = None;
        loop {
            // Ask more followers while the answers we have plus those we can
            // still hope for (asked, not failed, not overdue) fall short of R.
            while answered + asked.iter().filter(|a| a.hopeful()).count() < r
                && asked.len() < candidates.len()
            {
                let i = asked.len();
                let instead = candidates[i].node_id.clone();
                if let Some(gone) = asked.iter_mut().find(|a| a.needs_substitute()) {
                    gone.substituted = true;
                    substitutes.push(ReadSubstitute {
                        node_id: candidates[gone.index].node_id.clone(),
                        reason: gone.why_substituted(),
                        asked_instead: instead,
                    });
                } else if (first_stand_in..r).contains(&i) {
                    if let Some((node_id, reason)) = skipped.next() {
                        substitutes.push(ReadSubstitute {
                            node_id,
                            reason,
                            asked_instead: instead,
                        });
                    }
                }
                asked.push(Asked::new(i));
                pending.push(ask(i));
            }
            if answered >= r || pending.is_empty() {
                break;
            }
            let patience_ends = asked
                .iter()
                .filter(|a| a.hopeful())
                .map(|a| a.started + ANSWER_PATIENCE)
                .min();
            if patience_ends != patience_set_for {
                if let Some(at) = patience_ends {
                    patience.as_mut().reset(at.into());
                }
                patience_set_for = patience_ends;
            }
            let can_substitute = asked.len() < candidates.len() && patience_ends.is_some();
            tokio::select! {
                Some((i, answer)) = pending.next() => {
                    let slot = candidates[i];
                    if let Answer::Failed(why) = &answer {
                        self.suspects.suspect(slot, why);
                    } else {
                        answered += 1;
                        if asked[i].overdue {
                            self.suspects.clear(slot);
                        }
                    }
                    asked[i].answer = Some(answer);
                }
                _ = &mut patience, if can_substitute => {
                    patience_set_for = None; // an elapsed timer must be re-armed
                    let now = Instant::now();
                    for a in asked.iter_mut().filter(|a| a.hopeful()) {
                        if now >= a.started + ANSWER_PATIENCE {
                            a.overdue = true;
                            self.suspects.suspect(candidates[a.index], &a.why_substituted());
                        }
                    }
                }
            }
        }
        let answers = asked
            .into_iter()
            .map(|a| {
                let answer = a.answer.unwrap_or_else(|| {
                    Answer::Failed(format!(
                        "no answer within {} ms",
                        ANSWER_PATIENCE.as_millis()
                    ))
                });
                (candidates[a.index].node_id.clone(), answer)
            })
            .collect();
        ReadOutcome {
            answers,
            substitutes,
        }
    }

    /// Makes sure the version a read is about to return is committed, waiting
    /// for it if needed. `Ok(Some(ms))` if it waited, `Ok(None)` if it did
    /// not have to.
    async fn confirm(&self, outcome: &ReadOutcome) -> Result<Option<u64>, ApiError> {
        let Some((_, _, version, seq)) = outcome.best() else {
            return Ok(None); // nothing found: no version to vouch for
        };
        if seq <= self.commit.get() {
            return Ok(None);
        }
        // W of the answers hold it (or a later version) already: it is
        // committed, and so is every seq each of them reported, since logs
        // are contiguous.
        let (holders, held) = outcome.holders_of(version);
        if holders >= self.config.w {
            self.commit.advance(held);
            return Ok(None);
        }
        let started = Instant::now();
        let deadline = started + self.config.ack_timeout;
        if self.commit_reaches(seq, deadline).await {
            return Ok(Some(started.elapsed().as_millis() as u64));
        }
        Err(ApiError::unavailable(ReadNotConfirmed {
            error: READ_NOT_CONFIRMED.into(),
            version,
            seq,
            commit_seq: self.commit.get(),
            cause: format!(
                "version {version} (log seq {seq}) is not yet held by W={} followers, \
                and returning it could let a later read return an older version; \
                its write is still in flight or failed its quorum",
                self.config.w
            ),
        }))
    }

    /// Waits until the commit point reaches `seq`, asking the leader when
    /// writes do not move it. False at the deadline.
    async fn commit_reaches(&self, seq: u64, deadline: Instant) -> bool {
        let mut rx = self.commit.seq.subscribe();
        loop {
            let poll = COMMIT_POLL.min(deadline.saturating_duration_since(Instant::now()));
            let reached = tokio::time::timeout(poll, rx.wait_for(|&c| c >= seq))
                .await
                .is_ok_and(|r| r.is_ok());
            if reached {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            self.ask_leader_for_commit().await;
        }
    }

    /// Asks the leader how far its followers hold the log: the W-th highest
    /// acknowledged seq is held by W followers, so it is committed.
    async fn ask_leader_for_commit(&self) {
        let Ok(_one_at_a_time) = self.commit.asking.try_lock() else {
            // Another read is asking; its answer will do.
            let _ = self.commit.asking.lock().await;
            return;
        };
        let leader = self.snapshot().leader.clone();
        if !leader.is_alive() {
            return;
        }
        let answer = self
            .http
            .get(format!("{}/replication/peers", leader.url))
            .timeout(Duration::from_millis(500))
            .send()
            .await;
        let peers = match answer {
            Ok(resp) if resp.status().is_success() => resp.json::<Vec<FollowerProgress>>().await,
            Ok(resp) => {
                tracing::debug!(status = %resp.status(), "leader refused its followers' progress");
                return;
            }
            Err(e) => {
                tracing::debug!(error = %describe_reqwest_error(&e), "leader unreachable for the commit point");
                return;
            }
        };
        if let Ok(peers) = peers {
            if let Some(seq) = held_by(self.config.w, peers.iter().map(|p| p.acked_seq)) {
                self.commit.advance(seq);
            }
        }
    }

    /// Asks one follower for a key, through that process's read batcher.
    /// With `term`, an answer counts only from a follower whose log the
    /// leader of that term has reconciled; any other is a failed member.
    async fn ask(&self, slot: &Slot, key: &str, term: Option<u64>) -> Answer {
        let batcher = self.read_batcher(slot);
        let Some((reconciled, answer)) = batcher.call(key.to_string()).await else {
            return Answer::Failed("the coordinator is shutting down".into());
        };
        match term {
            Some(term) if reconciled != term && !matches!(answer, Answer::Failed(_)) => {
                let last = match reconciled {
                    0 => "no leader has checked its log since it started".to_string(),
                    t => format!("its log was last checked by the leader of term {t}"),
                };
                Answer::Failed(format!(
                    "{NOT_RECONCILED} with the leader of term {term} ({last})"
                ))
            }
            _ => answer,
        }
    }

    /// A read that had to wait may have seen a leadership change meanwhile;
    /// its answers were checked against the term it started in, and the
    /// commit point may have moved with entries of the new term at the same
    /// seqs. Such a read fails rather than return what it cannot vouch for.
    fn check_same_term(&self, term: Option<u64>, outcome: &ReadOutcome) -> Result<(), ApiError> {
        let Some(started_in) = term else {
            return Ok(());
        };
        let now = self.term();
        if now == started_in {
            return Ok(());
        }
        let (version, seq) = outcome.best().map_or((0, 0), |(_, _, v, s)| (v, s));
        Err(ApiError::unavailable(ReadNotConfirmed {
            error: READ_NOT_CONFIRMED.into(),
            version,
            seq,
            commit_seq: self.commit.get(),
            cause: format!(
                "the leadership changed during the read (term {started_in} -> {now}), \
                so its answers can no longer be vouched for; retry it"
            ),
        }))
    }

    /// The read batcher of the process serving `slot`, started on first use.
    /// One per incarnation: a respawned follower gets a new one, and the old
    /// one's task ends once its last batch is answered.
    fn read_batcher(&self, slot: &Slot) -> ReadBatcher {
        let mut readers = self.reads.lock().unwrap();
        if let Some(b) = readers
            .get(&slot.node_id)
            .filter(|b| b.0 == slot.incarnation)
        {
            return b.1.clone();
        }
        let (wire, timeout, target) = (self.wire.clone(), self.config.read_timeout, slot.clone());
        let batcher = Arc::new(Batcher::spawn(
            READ_BATCHES,
            |k: &String| k.len(),
            move |keys| ask_batch(wire.clone(), target.clone(), timeout, keys),
        ));
        readers.insert(slot.node_id.clone(), (slot.incarnation, batcher.clone()));
        batcher
    }
}

/// The highest seq held by at least `w` followers, given each one's
/// acknowledged seq; `None` when fewer than `w` are known.
fn held_by(w: usize, acked: impl Iterator<Item = u64>) -> Option<u64> {
    let mut acked: Vec<u64> = acked.collect();
    if w == 0 || acked.len() < w {
        return None;
    }
    acked.sort_unstable_by(|a, b| b.cmp(a));
    Some(acked[w - 1])
}

/// One follower asked by a read, and how that went.
struct Asked {
    /// Its place in the read's candidate list.
    index: usize,
    started: Instant,
    answer: Option<Answer>,
    /// No answer within [`ANSWER_PATIENCE`]; it may still answer.
    overdue: bool,
    /// Another follower was asked in its place.
    substituted: bool,
}

impl Asked {
    fn new(index: usize) -> Self {
        Asked {
            index,
            started: Instant::now(),
            answer: None,
            overdue: false,
            substituted: false,
        }
    }

    /// Still expected to answer in time.
    fn hopeful(&self) -> bool {
        self.answer.is_none() && !self.overdue
    }

    fn needs_substitute(&self) -> bool {
        let gone = match &self.answer {
            None => self.overdue,
            Some(answer) => matches!(answer, Answer::Failed(_)),
        };
        !self.substituted && gone
    }

    fn why_substituted(&self) -> String {
        match &self.answer {
            Some(Answer::Failed(e)) => e.clone(),
            _ => format!("no answer within {} ms", ANSWER_PATIENCE.as_millis()),
        }
    }
}

/// One `POST /batch/read` to a follower: an answer per key, in order. The
/// answer counts only if it came from the process we meant (fencing).
async fn ask_batch(
    wire: crate::http::wire::Client,
    slot: Slot,
    timeout: Duration,
    keys: Vec<String>,
) -> Vec<(u64, Answer)> {
    let n = keys.len();
    let all = |why: String| vec![(0, Answer::Failed(why)); n];
    let body = ReadBatchRequest { keys };
    let resp = match wire
        .call_json(
            &slot.url,
            reqwest::Method::POST,
            "/batch/read",
            &[],
            &body,
            Some(timeout),
        )
        .await
    {
        Ok(r) => r,
        Err(e) => return all(e.to_string()),
    };
    let incarnation = resp.header_u64(crate::api::HEADER_NODE_INCARNATION);
    if incarnation != Some(slot.incarnation) {
        return all(format!(
            "answered by incarnation {incarnation:?}, expected {} (fenced)",
            slot.incarnation
        ));
    }
    if !resp.status.is_success() {
        return all(format!("HTTP {}", resp.status));
    }
    match resp.json::<ReadBatchResponse>() {
        Ok(answer) if answer.values.len() == n => {
            // A node without per-key seqs (an older binary) gets u64::MAX:
            // its versions are never taken as committed without a check.
            let seqs = answer.seqs.into_iter().chain(std::iter::repeat(u64::MAX));
            let term = answer.term;
            answer
                .values
                .into_iter()
                .zip(seqs)
                .map(|(v, seq)| match v {
                    Some(v) => Answer::Found {
                        value: v.value,
                        version: v.version,
                        seq,
                    },
                    None => Answer::NotFound,
                })
                .map(|a| (term, a))
                .collect()
        }
        Ok(answer) => all(format!("{} answers to {n} keys", answer.values.len())),
        Err(e) => all(format!("unreadable answer: {e}")),
    }
}

/// How reads to one follower are batched. One exchange in flight, as for
/// writes: while it is out, every read that arrives waits for the next
/// one, so at 64 clients each exchange carries about twice the reads it
/// did with two in flight, and a follower answers half as many exchanges
/// for the same reads (0.19 system calls per read instead of 0.29,
/// measured; "Round nine" in ARCHITECTURE.md). A lone read never waits:
/// it finds the exchange idle.
const READ_BATCHES: Limits = Limits {
    max_in_flight: 1,
    max_items: 1024,
    max_bytes: crate::api::BATCH_PAYLOAD_BYTES,
};

/// The read batcher of one follower process. Each answer comes with the
/// follower's reconciled term (see [`ReadBatchResponse::term`]).
pub(super) type ReadBatcher = Arc<Batcher<String, (u64, Answer)>>;

/// One follower's answer to a read.
#[derive(Debug, Clone)]
pub(super) enum Answer {
    Found {
        value: String,
        version: u64,
        /// The seq of the entry that wrote this version.
        seq: u64,
    },
    NotFound,
    Failed(String),
}

/// All answers of a read, and the decision they lead to.
pub(super) struct ReadOutcome {
    /// Every follower asked, in the order asked, with its answer.
    pub(super) answers: Vec<(String, Answer)>,
    substitutes: Vec<ReadSubstitute>,
}

impl ReadOutcome {
    /// The answer with the highest version: (node, value, version, seq).
    /// Among equal versions, the lowest seq: a seq is exact or an upper
    /// bound (see `Store`), so the lowest is the tightest.
    pub(super) fn best(&self) -> Option<(&str, &str, u64, u64)> {
        self.found()
            .max_by_key(|&(_, _, version, seq)| (version, std::cmp::Reverse(seq)))
    }

    fn found(&self) -> impl Iterator<Item = (&str, &str, u64, u64)> {
        self.answers.iter().filter_map(|(id, a)| match a {
            Answer::Found {
                value,
                version,
                seq,
            } => Some((id.as_str(), value.as_str(), *version, *seq)),
            _ => None,
        })
    }

    /// How many answers hold `version` or a later one, and the lowest seq
    /// they reported: each holds its log up to its own seq, so all of them
    /// hold the log up to that one.
    fn holders_of(&self, version: u64) -> (usize, u64) {
        self.found()
            .filter(|&(_, _, v, _)| v >= version)
            .fold((0, u64::MAX), |(n, low), (_, _, _, seq)| {
                (n + 1, low.min(seq))
            })
    }

    /// Whether some follower failed only because the current leader has
    /// not reconciled it yet.
    fn waits_for_reconciliation(&self) -> bool {
        self.answers
            .iter()
            .any(|(_, a)| matches!(a, Answer::Failed(why) if why.starts_with(NOT_RECONCILED)))
    }

    fn responses(&self) -> usize {
        self.answers
            .iter()
            .filter(|(_, a)| !matches!(a, Answer::Failed(_)))
            .count()
    }

    /// What the console says the read came to, and in which tone: the
    /// answer the client gets. Too few answers is a 503 even when one of
    /// them found the key, so it is never narrated as served.
    pub(super) fn verdict(&self, r: usize) -> (String, Tone) {
        let responses = self.responses();
        if responses < r {
            let text = format!("READ QUORUM NOT MET: {responses} of R={r} answered → 503");
            return (text, Tone::Bad);
        }
        let tone = if self.versions_differ() {
            Tone::Warn
        } else {
            Tone::Request
        };
        match self.best() {
            Some((id, _, v, _)) => (format!("v{v} wins, served by {id}"), tone),
            None => ("not found → 404".into(), tone),
        }
    }

    pub(super) fn versions_differ(&self) -> bool {
        let mut versions = self.answers.iter().filter_map(|(_, a)| match a {
            Answer::Found { version, .. } => Some(Some(*version)),
            Answer::NotFound => Some(None),
            Answer::Failed(_) => None,
        });
        let first = versions.next();
        versions.any(|v| Some(v) != first)
    }

    fn into_result(
        self,
        key: String,
        r: usize,
        linearizable: bool,
        waited_for_commit_ms: Option<u64>,
    ) -> Result<ReadResponse, ApiError> {
        let responses = self.responses();
        if responses < r {
            let failures: Vec<_> = self
                .answers
                .iter()
                .filter_map(|(id, a)| match a {
                    Answer::Failed(e) => Some(ReadFailure {
                        node_id: id.clone(),
                        reason: e.clone(),
                    }),
                    _ => None,
                })
                .collect();
            return Err(ApiError::unavailable(ReadQuorumNotMet {
                error: READ_QUORUM_NOT_MET.into(),
                responses,
                required: r,
                failures,
            }));
        }
        let answered_by = self
            .answers
            .iter()
            .filter(|(_, a)| !matches!(a, Answer::Failed(_)))
            .map(|(id, _)| id.clone())
            .collect();
        match self.best() {
            Some((id, value, version, seq)) => Ok(ReadResponse {
                key,
                value: value.to_string(),
                version,
                served_by: id.to_string(),
                quorum_responses: responses,
                seq,
                answered_by,
                substitutes: self.substitutes,
                consistency: if linearizable {
                    "linearizable"
                } else {
                    "may_be_stale"
                }
                .into(),
                waited_for_commit_ms,
            }),
            None => Err(ApiError::not_found(format!(
                "Key '{key}' not found in quorum"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(answers: Vec<Answer>) -> ReadOutcome {
        ReadOutcome {
            answers: answers
                .into_iter()
                .enumerate()
                .map(|(i, a)| (format!("follower-{}", i + 1), a))
                .collect(),
            substitutes: vec![],
        }
    }

    #[test]
    fn a_read_short_of_its_quorum_is_never_narrated_as_served() {
        let found = || Answer::Found {
            value: "v".into(),
            version: 3,
            seq: 3,
        };
        let o = outcome(vec![found(), Answer::Failed("timed out".into())]);
        let (text, tone) = o.verdict(2);
        assert_eq!(text, "READ QUORUM NOT MET: 1 of R=2 answered → 503");
        assert_eq!(tone, Tone::Bad);
        assert!(o.into_result("k".into(), 2, true, None).is_err());
        let o = outcome(vec![found(), Answer::NotFound]);
        assert_eq!(o.verdict(2).0, "v3 wins, served by follower-1");
        assert_eq!(o.verdict(2).1, Tone::Warn);
        let o = outcome(vec![Answer::NotFound]);
        assert_eq!(o.verdict(1).0, "not found → 404");
    }

    #[test]
    fn held_by_takes_the_w_th_highest() {
        assert_eq!(held_by(2, [5, 9, 7].into_iter()), Some(7));
        assert_eq!(held_by(1, [5, 9, 7].into_iter()), Some(9));
        assert_eq!(held_by(3, [5, 9, 7].into_iter()), Some(5));
        assert_eq!(held_by(3, [5, 9].into_iter()), None);
    }

    #[test]
    fn commit_point_only_grows() {
        let c = CommitPoint::default();
        c.advance(5);
        c.advance(3);
        assert_eq!(c.get(), 5);
    }

    fn found(version: u64, seq: u64) -> Answer {
        Answer::Found {
            value: format!("v{version}"),
            version,
            seq,
        }
    }

    #[test]
    fn best_answer_and_its_holders() {
        let o = ReadOutcome {
            answers: vec![
                ("follower-3".into(), found(4, 40)),
                ("follower-2".into(), found(5, 52)),
                ("follower-1".into(), Answer::Failed("refused".into())),
            ],
            substitutes: vec![],
        };
        assert_eq!(o.best(), Some(("follower-2", "v5", 5, 52)));
        assert_eq!(o.holders_of(5), (1, 52));
        assert_eq!(o.holders_of(4), (2, 40));
        assert_eq!(o.responses(), 2);
        assert!(o.versions_differ());
    }
}

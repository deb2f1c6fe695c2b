//! The leader side of replication: one stream per follower.
//!
//! The coordinator tells the leader which followers exist (`PUT
//! /replication/peers`); for each, a [`Peer`] runs a task that ships the log to
//! that follower in order, in batches, and records how far the follower has
//! acknowledged. Writes wait on those records, never on the network directly.
//!
//! Invariants:
//! - a follower is sent entries starting right after the highest seq it holds
//!   contiguously (asked with a handshake, then taken from its acks), so a
//!   (re)started follower gets exactly what it lacks; a snapshot is sent only
//!   when the log no longer retains those entries;
//! - an ack counts only if it comes from the incarnation the coordinator named:
//!   a replaced process (same id, older incarnation) is fenced out;
//! - a follower is credited with at most the entries we sent it, checked at
//!   the handshake, cut it to or snapshotted: what it holds beyond them (a
//!   deposed leader's own last write reaching its disk) is not known to be
//!   ours, whatever seq it reports;
//! - the lab's delay is applied per entry, from its append time, so a 5 s
//!   delay delays every entry by 5 s but never caps throughput (pipelining);
//! - an entry keeps the link it was sent on: once a write has waited for a
//!   follower's ack of an entry, that entry travels on the sync link to that
//!   follower even if the follower is moved to the async set meanwhile (see
//!   [`Peer::due`]);
//! - entries are sent as soon as the leader has appended them (its
//!   streamable seq), while its own fsync runs: a follower may hold an entry
//!   the leader's disk does not yet have. No write is acknowledged before
//!   both have it (see `node::writes`), and a leader that comes back behind
//!   its followers is not elected over them (see `coordinator::failover`);
//! - a stream belongs to one term: every request carries it, a follower of
//!   a newer term refuses it (409 `stale term`), and then this node steps
//!   down and the stream ends (see `node::leadership`);
//! - the handshake compares the follower's term history with ours: where
//!   they part, the follower is told to cut its log (`POST
//!   /replicate/truncate`) before anything is sent, so a deposed leader's
//!   unacknowledged tail is replaced by this term's entries. Either way
//!   the handshake ends with a request the follower must accept (the cut,
//!   or an empty append), which makes it record our term as the one that
//!   reconciled its log (see `node::follower`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::log::Next;
use super::term::{common_prefix, TermHistory};
use super::{leadership, NodeState};
use crate::api::{
    self, AppendRequest, AppendResponse, Entry, FollowerProgress, InstallSnapshot, PeerConfig,
    TruncateRequest, Versioned, BATCH_PAYLOAD_BYTES, HEADER_TERM,
};
use crate::http::wire::Answer;

/// Most entries sent in one batch.
pub(super) const MAX_BATCH: usize = 2048;
/// Pause after a failed attempt, doubling up to the maximum.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_millis(1000);

/// How far one follower has come, as far as the leader knows.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Highest seq the follower acknowledged holding contiguously.
    pub acked_seq: u64,
    /// Failed attempts so far; a waiting write notices a new one and gives up
    /// early instead of waiting for its timeout.
    pub failures: u64,
    pub last_error: Option<String>,
    /// The last way the follower broke the node protocol (an answer no
    /// correct follower gives), and how many times it did: the coordinator
    /// narrates each new one, so a student's node fails loudly, not by a
    /// silent stall.
    pub violation: Option<String>,
    pub violations: u64,
}

/// A follower the leader replicates to.
pub struct Peer {
    pub config: PeerConfig,
    /// The term this stream replicates for.
    term: u64,
    /// Whether it is in the sync set now (decides its delay). Can change
    /// without restarting the stream.
    sync: AtomicBool,
    /// When it last moved from async to sync (`None` while async, or if it
    /// was sync from the start). See [`Peer::due`].
    promoted_at: std::sync::Mutex<Option<Instant>>,
    /// The highest seq a write has waited on this follower for. Those
    /// entries went out on the sync link, so they keep the sync delay after
    /// a demotion. See [`Peer::due`].
    waited_through: AtomicU64,
    /// Wakes the stream when its delay class changes, so entries waiting on
    /// the async delay are re-planned at once.
    wake: tokio::sync::Notify,
    progress: watch::Sender<Progress>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Peer {
    pub fn start(node: Arc<NodeState>, config: PeerConfig) -> Arc<Peer> {
        let peer = Arc::new(Peer {
            term: node.term(),
            sync: AtomicBool::new(config.sync),
            promoted_at: std::sync::Mutex::new(None),
            waited_through: AtomicU64::new(0),
            wake: tokio::sync::Notify::new(),
            config,
            progress: watch::Sender::new(Progress::default()),
            task: std::sync::Mutex::new(None),
        });
        let handle = tokio::spawn(stream(node, peer.clone()));
        *peer.task.lock().unwrap() = Some(handle);
        peer
    }

    pub fn set_sync(&self, sync: bool) {
        // The timestamp first: the stream reads it after seeing the flag.
        let was = self.sync.load(Ordering::Relaxed);
        if was != sync {
            *self.promoted_at.lock().unwrap() = sync.then(Instant::now);
            self.sync.store(sync, Ordering::Relaxed);
            self.wake.notify_one();
        }
    }

    /// Records that a write waits for this follower's ack of every entry up
    /// to `seq`. Call it before the write publishes its entries to the
    /// streams.
    pub fn write_waits_for(&self, seq: u64) {
        let before = self.waited_through.fetch_max(seq, Ordering::Relaxed);
        // A concurrent batch may have published these entries already, and
        // the stream planned them on the slow link: have it plan again.
        if seq > before && !self.is_sync() {
            self.wake.notify_one();
        }
    }

    /// When the entry at `seq`, appended at `appended_at`, reaches this
    /// follower, under the lab's delays, which model link latency:
    /// - sync: `sync_delay` after its append;
    /// - promoted from async to sync after the append: the entry was already
    ///   on the slow link, so it arrives when that copy would, or `sync_delay`
    ///   after the promotion (sent again on the fast link), whichever is
    ///   first. Not earlier: the leader cannot have sent it fast before it
    ///   knew the follower was sync;
    /// - async, but a write waited for it here (the follower was demoted
    ///   while the write was in flight, typically because a lower-port
    ///   follower rejoined): it was sent on the fast link, and a copy already
    ///   sent does not move to the slow one, so `sync_delay` after its append.
    ///   Without this the write, planned with this follower in its sync set,
    ///   would wait out the async delay and fail its quorum;
    /// - async: `async_delay` after its append.
    fn due(&self, node: &NodeState, seq: u64, appended_at: Instant) -> Instant {
        let by_async = appended_at + node.delay_for(false);
        let sync_delay = node.delay_for(true);
        if !self.is_sync() {
            if seq <= self.waited_through.load(Ordering::Relaxed) {
                return appended_at + sync_delay;
            }
            return by_async;
        }
        match *self.promoted_at.lock().unwrap() {
            Some(promoted) if appended_at < promoted => by_async.min(promoted + sync_delay),
            _ => appended_at + sync_delay,
        }
    }

    pub fn is_sync(&self) -> bool {
        self.sync.load(Ordering::Relaxed)
    }

    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    pub fn view(&self) -> FollowerProgress {
        let p = self.progress();
        FollowerProgress {
            node_id: self.config.node_id.clone(),
            url: self.config.url.clone(),
            incarnation: self.config.incarnation,
            sync: self.is_sync(),
            acked_seq: p.acked_seq,
            error: p.last_error,
            violation: p.violation,
            violations: p.violations,
        }
    }

    /// Stops the stream (the follower left the peer set).
    pub fn stop(&self) {
        if let Some(handle) = self.task.lock().unwrap().take() {
            handle.abort();
        }
    }

    fn record_ack(&self, acked_seq: u64) {
        self.progress.send_modify(|p| {
            p.acked_seq = p.acked_seq.max(acked_seq);
            p.last_error = None;
        });
    }

    /// The follower answered in a way the protocol forbids. Logged here,
    /// shown in `/replication/peers`, narrated by the coordinator.
    fn record_violation(&self, what: String) {
        // Once per kind: a broken follower repeats itself many times a second.
        if self.progress.borrow().violation.as_ref() != Some(&what) {
            tracing::warn!(follower = %self.config.node_id, "protocol violation: {what}");
        }
        self.progress.send_modify(|p| {
            p.violations += 1;
            p.violation = Some(what);
        });
    }

    fn record_failure(&self, error: String) {
        self.progress.send_modify(|p| {
            p.failures += 1;
            p.last_error = Some(error);
        });
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last run of entries encoded for a follower, kept for the streams
/// that send the same run next. With the followers caught up, every stream
/// sends each batch the leader appends, the same entries from the same
/// seq: encoded once, not once per follower (a busy leader's largest share
/// of JSON work, "Where the time goes" in ARCHITECTURE.md).
///
/// Invariant: a cached run is reused only for the same term and the same
/// first and last seq. A leader's log is append-only within its term, so
/// those seqs hold the same entries; after a step-down the term differs.
#[derive(Default)]
pub struct SharedEncoding(std::sync::Mutex<Option<EncodedRun>>);

struct EncodedRun {
    term: u64,
    first: u64,
    last: u64,
    json: Arc<serde_json::value::RawValue>,
}

impl SharedEncoding {
    /// The JSON array of `batch`, from the cache or encoded now.
    fn entries(
        &self,
        term: u64,
        batch: &[Arc<Entry>],
    ) -> Result<Arc<serde_json::value::RawValue>, String> {
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            return Ok(Arc::from(
                serde_json::value::to_raw_value(&[0u8; 0]).expect("an empty array encodes"),
            ));
        };
        let mut cached = self.0.lock().unwrap();
        if let Some(run) = cached.as_ref() {
            if (run.term, run.first, run.last) == (term, first.seq, last.seq) {
                return Ok(run.json.clone());
            }
        }
        let refs: Vec<&Entry> = batch.iter().map(|e| &**e).collect();
        let json: Arc<serde_json::value::RawValue> = serde_json::value::to_raw_value(&refs)
            .map_err(|e| format!("cannot encode entries: {e}"))?
            .into();
        *cached = Some(EncodedRun {
            term,
            first: first.seq,
            last: last.seq,
            json: json.clone(),
        });
        Ok(json)
    }
}

/// What the stream does next.
enum Plan {
    Wait,
    Send(Vec<Arc<Entry>>),
    SendSnapshot,
    SleepUntil(Instant),
}

/// The stream task: handshake, then ship entries as they become deliverable.
async fn stream(node: Arc<NodeState>, peer: Arc<Peer>) {
    let mut streamable_rx = node.streamable_seq_watch();
    let mut next: Option<u64> = None;
    let mut backoff = MIN_BACKOFF;
    loop {
        if node.term() != peer.term || !node.is_leader() {
            return; // stepped down: another term's leader streams now
        }
        let from = match next {
            Some(seq) => seq,
            None => match handshake(&node, &peer).await {
                Ok(acked) => {
                    peer.record_ack(acked);
                    acked + 1
                }
                Err(e) => {
                    peer.record_failure(e);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        next = Some(from);
        let result = match plan(&node, &peer, from) {
            Plan::Wait => {
                // Wake when the log grows past what we've seen.
                tokio::select! {
                    _ = streamable_rx.wait_for(|&last| last >= from) => {},
                    _ = peer.wake.notified() => {},
                }
                continue;
            }
            Plan::SleepUntil(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {},
                    _ = peer.wake.notified() => {},
                }
                continue;
            }
            Plan::Send(batch) => {
                if !peer.is_sync() {
                    // The streams wake together when the log grows, in no
                    // set order. Writes wait only for the sync set, so let
                    // its streams send first: on a busy machine each send
                    // also wakes the receiving follower and starts its
                    // fsync, and a write's answer should not wait behind
                    // an async follower's (ARCHITECTURE.md, round eight).
                    tokio::task::yield_now().await;
                }
                send_entries(&node, &peer, batch).await
            }
            Plan::SendSnapshot => send_snapshot(&node, &peer).await,
        };
        match result {
            Ok(acked) => {
                peer.record_ack(acked);
                next = Some(acked + 1);
                backoff = MIN_BACKOFF;
            }
            Err(e) => {
                peer.record_failure(e);
                // Ask again where the follower stands: it may have restarted.
                next = None;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Decides the next step, holding the state lock only briefly.
fn plan(node: &NodeState, peer: &Peer, from: u64) -> Plan {
    let streamable = node.streamable_seq();
    if from > streamable {
        return Plan::Wait;
    }
    let max = MAX_BATCH.min((streamable - from + 1) as usize);
    let core = node.core.lock().unwrap();
    match core.log.read_from(from, max) {
        Next::UpToDate => Plan::Wait,
        Next::Truncated => Plan::SendSnapshot,
        Next::Entries(entries) => {
            let now = Instant::now();
            // `due` grows with the seq, so the ready ones are a prefix.
            let first_ready = peer.due(node, entries[0].entry.seq, entries[0].appended_at);
            if first_ready > now {
                return Plan::SleepUntil(first_ready);
            }
            let mut bytes = 0;
            let batch = entries
                .into_iter()
                .take_while(|e| peer.due(node, e.entry.seq, e.appended_at) <= now)
                // Bounded in bytes too, so big values never exceed the
                // follower's body limit (the first entry always goes).
                .take_while(|e| {
                    let fits = bytes < BATCH_PAYLOAD_BYTES;
                    bytes += e.entry.key.len() + e.entry.value.len();
                    fits
                })
                .map(|e| e.entry)
                .collect();
            Plan::Send(batch)
        }
    }
}

/// Asks the follower where it stands and checks it is the right process.
/// If its log parts from ours, cuts it back to what we share. Returns the
/// seq from which the follower's log is ours.
async fn handshake(node: &NodeState, peer: &Peer) -> Result<u64, String> {
    super::faults::outbound(&peer.config.node_id).await?;
    let answer = node
        .wire
        .call(
            &peer.config.url,
            reqwest::Method::GET,
            "/replicate",
            &[(HEADER_TERM, peer.term.to_string())],
            bytes::Bytes::new(),
            None,
        )
        .await
        .map_err(|e| e.to_string())?;
    let answer = parse_answer(node, peer, ("GET", "replicate"), answer)?;
    check_incarnation(peer, &answer)?;
    let credited = peer.progress().acked_seq;
    if answer.acked_seq < credited {
        // Same process (the incarnation matched), so nothing can excuse it:
        // what it acknowledged was counted towards writes' quorums.
        peer.record_violation(format!(
            "answered GET /replicate with 200 but its position went backwards from {credited} \
             to {}: a follower never forgets an entry it acknowledged",
            answer.acked_seq
        ));
    }
    let shared = {
        let core = node.core.lock().unwrap();
        let theirs = TermHistory(answer.history.clone());
        common_prefix(
            &core.terms.history,
            core.log.appended_seq(),
            &theirs,
            answer.acked_seq,
        )
    };
    if shared >= answer.acked_seq {
        // Nothing to cut. An empty append still tells the follower that its
        // log is a prefix of ours, so it may serve reads in our term. Only
        // what the handshake checked counts as held: the follower may have
        // more by now (a deposed leader's last write reaching its disk), and
        // that is not ours.
        let empty = AppendRequest::<Vec<Entry>> {
            term: peer.term,
            to_incarnation: peer.config.incarnation,
            entries: Vec::new(),
        };
        post(node, peer, "replicate", &empty).await?;
        return Ok(answer.acked_seq);
    }
    tracing::warn!(
        follower = %peer.config.node_id,
        holds = answer.acked_seq,
        shared,
        "follower's log parts from ours: asking it to truncate"
    );
    let body = TruncateRequest {
        term: peer.term,
        to_incarnation: peer.config.incarnation,
        after_seq: shared,
    };
    let acked = post(node, peer, "replicate/truncate", &body).await?;
    Ok(acked.min(shared))
}

async fn send_entries(
    node: &NodeState,
    peer: &Peer,
    batch: Vec<Arc<Entry>>,
) -> Result<u64, String> {
    let count = batch.len() as u64;
    let entries = node.encoded.entries(peer.term, &batch)?;
    let body = AppendRequest {
        term: peer.term,
        to_incarnation: peer.config.incarnation,
        entries: &*entries,
    };
    let last_sent = batch.last().map_or(0, |e| e.seq);
    let first_sent = batch.first().map_or(0, |e| e.seq);
    let acked = post(node, peer, "replicate", &body).await?;
    if acked + 1 < first_sent {
        peer.record_violation(format!(
            "answered POST /replicate with 200 but its position went backwards from {} to \
             {acked}",
            first_sent - 1
        ));
    } else if acked < last_sent {
        peer.record_violation(format!(
            "answered POST /replicate (entries {first_sent}..={last_sent}, in order, none \
             missing) with 200 but acknowledged only seq {acked}: a follower applies every \
             next entry it is sent"
        ));
    }
    node.stats
        .replications_sent
        .fetch_add(count, Ordering::Relaxed);
    // A follower is credited only with entries we sent or checked: what it
    // holds beyond them is not known to be ours.
    Ok(acked.min(last_sent))
}

/// Sends the whole state in chunks of about [`BATCH_PAYLOAD_BYTES`] of keys
/// and values (each far under the follower's body limit, whatever the
/// store's size). The follower installs it once the last chunk is in.
async fn send_snapshot(node: &NodeState, peer: &Peer) -> Result<u64, String> {
    let (seq, data, history) = {
        let core = node.core.lock().unwrap();
        let history = core.terms.history.0.clone();
        (core.store.applied_seq(), core.store.to_map(), history)
    };
    // The state may include writes still on their way to our disk.
    let _ = node
        .persisted_seq_watch()
        .wait_for(|&persisted| persisted >= seq)
        .await;
    let chunks = snapshot_chunks(data, BATCH_PAYLOAD_BYTES);
    tracing::info!(
        follower = %peer.config.node_id,
        seq,
        chunks = chunks.len(),
        "follower lacks entries the log no longer holds: sending a snapshot"
    );
    let last = chunks.len() as u64 - 1;
    let mut acked = 0;
    for (chunk, data) in (0..).zip(chunks) {
        let body = InstallSnapshot {
            term: peer.term,
            to_incarnation: peer.config.incarnation,
            seq,
            data,
            history: history.clone(),
            chunk,
            last: chunk == last,
        };
        acked = post(node, peer, "replicate/snapshot", &body).await?;
        if acked >= seq {
            break; // it holds that state already
        }
    }
    node.stats.snapshots_sent.fetch_add(1, Ordering::Relaxed);
    Ok(acked.min(seq))
}

/// Splits a state into chunks of at least one key, each closed once it
/// holds `max_bytes` of keys and values. An empty state is one empty chunk.
fn snapshot_chunks(
    data: BTreeMap<String, Versioned>,
    max_bytes: usize,
) -> Vec<BTreeMap<String, Versioned>> {
    let mut chunks = vec![BTreeMap::new()];
    let mut bytes = 0;
    for (key, value) in data {
        if bytes >= max_bytes {
            chunks.push(BTreeMap::new());
            bytes = 0;
        }
        bytes += key.len() + value.value.len();
        chunks.last_mut().expect("never empty").insert(key, value);
    }
    chunks
}

/// Sends one replication request and returns the seq the follower now holds,
/// after checking the answer came from the incarnation we meant.
async fn post(
    node: &NodeState,
    peer: &Peer,
    path: &str,
    body: &impl serde::Serialize,
) -> Result<u64, String> {
    super::faults::outbound(&peer.config.node_id).await?;
    let answer = node
        .wire
        .call_json(
            &peer.config.url,
            reqwest::Method::POST,
            &format!("/{path}"),
            &[(HEADER_TERM, peer.term.to_string())],
            body,
            None,
        )
        .await
        .map_err(|e| e.to_string())?;
    let answer = parse_answer(node, peer, ("POST", path), answer)?;
    check_incarnation(peer, &answer)?;
    Ok(answer.acked_seq)
}

/// The follower's answer, or why there is none. A `stale term` refusal
/// means a newer leader exists: this node steps down on the spot.
/// A 200 whose body is not an [`AppendResponse`] breaks the protocol.
fn parse_answer(
    node: &NodeState,
    peer: &Peer,
    (method, path): (&str, &str),
    answer: Answer,
) -> Result<AppendResponse, String> {
    let status = answer.status;
    if !status.is_success() {
        let detail = answer.detail();
        if let Some(term) = api::stale_term_in(&detail) {
            leadership::adopt(node, term);
        }
        return Err(format!("HTTP {status}: {detail}"));
    }
    answer.json::<AppendResponse>().map_err(|e| {
        let what = format!(
            "answered {method} /{path} with {status} but its body is not the protocol's answer \
             (node_id, incarnation, acked_seq, ...): {e}"
        );
        peer.record_violation(what.clone());
        what
    })
}

fn check_incarnation(peer: &Peer, answer: &AppendResponse) -> Result<(), String> {
    if answer.incarnation != peer.config.incarnation {
        return Err(format!(
            "fenced: expected incarnation {} of {}, found {}",
            peer.config.incarnation, peer.config.node_id, answer.incarnation
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(sizes: &[usize]) -> BTreeMap<String, Versioned> {
        (0..)
            .zip(sizes)
            .map(|(i, &n)| {
                let value = "x".repeat(n);
                (format!("k{i:03}"), Versioned { value, version: 1 })
            })
            .collect()
    }

    fn entries(term: u64, seqs: std::ops::RangeInclusive<u64>) -> Vec<Arc<Entry>> {
        seqs.map(|seq| {
            Arc::new(Entry {
                seq,
                term,
                key: format!("k{seq}"),
                value: "v \"é\"".into(),
                version: 1,
            })
        })
        .collect()
    }

    #[test]
    fn a_run_is_encoded_once_for_every_stream_that_sends_it() {
        let shared = SharedEncoding::default();
        let batch = entries(2, 5..=7);
        let first = shared.entries(2, &batch).unwrap();
        let again = shared.entries(2, &batch).unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "the same run is not encoded twice"
        );
        // What a follower reads back is the batch itself.
        let decoded: AppendRequest = serde_json::from_str(
            &serde_json::to_string(&AppendRequest {
                term: 2,
                to_incarnation: 9,
                entries: &*first,
            })
            .unwrap(),
        )
        .unwrap();
        let want: Vec<Entry> = batch.iter().map(|e| (**e).clone()).collect();
        assert_eq!((decoded.term, decoded.to_incarnation), (2, 9));
        assert_eq!(decoded.entries, want);
        // Another run, or the same seqs in another term, is encoded anew.
        let shorter = shared.entries(2, &batch[..2]).unwrap();
        assert!(!Arc::ptr_eq(&first, &shorter));
        let other_term = shared.entries(3, &entries(3, 5..=7)).unwrap();
        assert!(
            other_term.get().contains("\"term\":3"),
            "{}",
            other_term.get()
        );
        assert_eq!(shared.entries(3, &[]).unwrap().get(), "[]");
    }

    #[test]
    fn snapshot_chunks_cover_every_key_once_and_stay_near_the_bound() {
        // Keys are 4 bytes: chunks close at 100 bytes of keys and values.
        let data = state(&[40; 10]);
        let chunks = snapshot_chunks(data.clone(), 100);
        let sizes: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [3, 3, 3, 1]);
        let joined: BTreeMap<_, _> = chunks.into_iter().flatten().collect();
        assert_eq!(joined, data);
        // A value larger than the bound still travels, alone.
        let sizes: Vec<usize> = snapshot_chunks(state(&[500, 10, 500]), 100)
            .iter()
            .map(|c| c.len())
            .collect();
        assert_eq!(sizes, [1, 2]);
        // An empty state is one empty chunk, so the follower still installs it.
        assert_eq!(snapshot_chunks(BTreeMap::new(), 100).len(), 1);
    }
}

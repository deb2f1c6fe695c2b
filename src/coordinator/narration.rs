//! The coordinator's console narration of client requests: the lines of the
//! event log (see [`crate::events`]) that tell a write's and a read's path
//! through the cluster, as the lab's "dashboard" shows them.
//!
//! Keys come from clients: each goes in through `events::printable`, so a
//! key with a newline or an escape sequence is shown escaped and never
//! forges a line or reaches the terminal raw.
//!
//! Only words live here: the write path ([`super::requests`]) and the read
//! path ([`super::reads`]) decide, then call these to tell what they did.
//! Narration never changes an answer, and a request is narrated only when
//! the event log's budget allows (`EventLog::narrate_request`); cluster
//! events (nodes, quorums, failover) are narrated where they happen.

use std::sync::Arc;
use std::time::Instant;

use super::cluster::Slot;
use super::reads::{Answer, ReadOutcome};
use super::requests::WritePlan;
use super::Coordinator;
use crate::api::*;
use crate::events::{printable, EventKind, Tone};
use crate::http::ApiError;

// Writes.
impl Coordinator {
    /// A write refused before it reached the leader, with the cause the
    /// client gets too.
    pub(super) fn narrate_write_refused(&self, key: &str, e: &ApiError) {
        self.events.emit(
            EventKind::WriteRefused,
            Tone::Bad,
            None,
            format!(
                "⛔ WRITE {} refused: {}",
                printable(key),
                e.detail["cause"].as_str().unwrap_or("no quorum")
            ),
        );
    }

    /// A write: where it went (leader, sync set), which sync followers
    /// acknowledged, and the async followers it is on its way to.
    pub(super) fn narrate_write(
        self: &Arc<Self>,
        key: &str,
        plan: &WritePlan,
        answer: &LeaderWriteReceipt,
        ms: u128,
    ) {
        let w = self.config.w;
        let key = printable(key);
        let sync_ids: Vec<&str> = plan.sync.iter().map(|s| s.node_id.as_str()).collect();
        // After a failover the leader is a former follower: name it.
        let leader = match plan.leader.node_id.as_str() {
            LEADER_ID => LEADER_ID.to_string(),
            id => format!("{id} (the leader)"),
        };
        self.events.emit(
            EventKind::Write,
            Tone::Request,
            None,
            format!(
                "✍️  WRITE {key} → {leader}: version {} (log seq {}), sync set [{}]",
                answer.version,
                answer.seq,
                sync_ids.join(", ")
            ),
        );
        let mut acks: Vec<String> = answer.acked_by.iter().map(|id| format!("{id} ✓")).collect();
        acks.extend(
            answer
                .missing
                .iter()
                .map(|m| format!("{} ✗ ({})", m.node_id, m.reason)),
        );
        if answer.acked_by.len() >= w {
            self.events.emit(
                EventKind::QuorumMet,
                Tone::Good,
                None,
                format!(
                    "   ✅ sync acks {}/{w}: {} → quorum met in {ms} ms",
                    answer.acked_by.len(),
                    acks.join(", ")
                ),
            );
        } else {
            self.events.emit(
                EventKind::QuorumFailed,
                Tone::Bad,
                None,
                format!(
                    "   ❌ sync acks {}/{w}: {} → quorum NOT met ({ms} ms)",
                    answer.acked_by.len(),
                    acks.join(", ")
                ),
            );
        }
        if plan.asynchronous.is_empty() {
            return;
        }
        let names: Vec<&str> = plan
            .asynchronous
            .iter()
            .map(|s| s.node_id.as_str())
            .collect();
        self.events.emit(
            EventKind::AsyncQueued,
            Tone::Request,
            None,
            format!(
                "   📨 async replication queued to [{}] ({} s delay)",
                names.join(", "),
                self.config.launch.async_delay
            ),
        );
        for follower in plan.asynchronous.clone() {
            self.narrate_async_completion(follower, answer.seq);
        }
    }

    /// Narrates when an async follower receives a narrated write: asks the
    /// leader to tell when that follower holds the write's seq.
    fn narrate_async_completion(self: &Arc<Self>, follower: Slot, seq: u64) {
        let c = self.clone();
        let started = Instant::now();
        let timeout_ms = (c.config.launch.async_delay * 1000.0) as u64 + 10_000;
        tokio::spawn(async move {
            let leader = c.snapshot().leader.clone();
            let resp = c
                .http
                .post(format!("{}/replication/wait", leader.url))
                .json(&WaitRequest {
                    node_id: follower.node_id.clone(),
                    seq: Some(seq),
                    timeout_ms: Some(timeout_ms),
                })
                .send()
                .await;
            if resp.is_ok_and(|r| r.status().is_success()) {
                c.events.emit(
                    EventKind::AsyncDone,
                    Tone::Request,
                    Some(&follower.node_id),
                    format!(
                    "   📬 async replication of seq {seq} to {} complete ({:.1} s after the write)",
                    follower.node_id, started.elapsed().as_secs_f64()),
                );
            }
        });
    }
}

// Reads.
impl Coordinator {
    /// A read asked another follower in place of an unreachable read set
    /// member: one line per member at most once a second, with how many
    /// reads did the same meanwhile.
    pub(super) fn narrate_substitute(&self, sub: &ReadSubstitute) {
        let Some(unnarrated) = self.suspects.narrate_now(&sub.node_id) else {
            return;
        };
        let more = if unnarrated > 0 {
            format!(" ({unnarrated} more reads did the same since the last line)")
        } else {
            String::new()
        };
        self.events.emit(
            EventKind::ReadSubstitute,
            Tone::Warn,
            Some(&sub.node_id),
            format!(
                "🔀 read set member {} unreachable ({}): asked {} instead, still R answers{more}",
                sub.node_id, sub.reason, sub.asked_instead
            ),
        );
    }

    /// A read: who was asked, what each answered (stale versions marked),
    /// and what the client gets (see `ReadOutcome::verdict`), including a
    /// wait for the commit point or a refusal.
    pub(super) fn narrate_read(
        &self,
        key: &str,
        o: &ReadOutcome,
        confirmed: &Result<Option<u64>, ApiError>,
    ) {
        let key = printable(key);
        let asked: Vec<&str> = o.answers.iter().map(|(id, _)| id.as_str()).collect();
        let best = o.best().map(|(_, _, v, _)| v);
        let parts: Vec<String> = o
            .answers
            .iter()
            .map(|(id, a)| match a {
                Answer::Found { version, .. } if Some(*version) < best => {
                    format!("{id} v{version} (STALE)")
                }
                Answer::Found { version, .. } => format!("{id} v{version}"),
                Answer::NotFound => format!("{id} not found"),
                Answer::Failed(e) => format!("{id} ✗ {e}"),
            })
            .collect();
        let (verdict, tone) = o.verdict(self.config.r);
        let commit = match confirmed {
            Ok(Some(ms)) => format!(" (waited {ms} ms until it was committed)"),
            Ok(None) => String::new(),
            Err(_) => " but it is not committed yet: read refused".into(),
        };
        let conflict = o.versions_differ();
        self.events.emit(
            EventKind::Read,
            if confirmed.is_err() && tone != Tone::Bad {
                Tone::Warn
            } else {
                tone
            },
            None,
            format!(
                "🔎 READ {key} ← asked [{}]: {} → {verdict}{commit}{}",
                asked.join(", "),
                parts.join("; "),
                if conflict { " (versions differed)" } else { "" }
            ),
        );
    }
}

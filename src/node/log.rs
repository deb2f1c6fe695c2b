//! The leader's replication log: the retained tail of every write, in order.
//!
//! Invariants:
//! - sequence numbers are contiguous: the retained entries are exactly
//!   `first_seq ..= appended_seq`;
//! - `appended_seq` is the newest entry *appended* to this log. It can be
//!   ahead of the node's *persisted* seq (`NodeState::persisted_seq`: what
//!   the node's WAL has completed), which is what a node acks and an
//!   election compares; the two names are kept apart on purpose. (A leader
//!   streams up to its *streamable* seq: everything appended, see
//!   `node::writes`.)
//! - at most `retain` entries are kept, so memory is bounded; a follower that
//!   needs an entry older than `first_seq` gets a snapshot instead.
//!
//! Each entry remembers when it was appended, because the lab's replication
//! delays are measured from that moment (a delay is link latency: an entry
//! becomes deliverable `delay` after its append, whatever else is in flight).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::Entry;

#[derive(Debug, Clone)]
pub struct LoggedEntry {
    pub entry: Arc<Entry>,
    pub appended_at: Instant,
}

#[derive(Debug)]
pub struct ReplicationLog {
    entries: VecDeque<LoggedEntry>,
    /// Sequence number of `entries[0]`, or `appended_seq + 1` when empty.
    first_seq: u64,
    /// The seq of the newest entry appended (0: none yet). Not necessarily
    /// on disk: see the module's notes.
    appended_seq: u64,
    retain: usize,
}

/// What a follower needs next, given the first seq it lacks.
#[derive(Debug)]
pub enum Next {
    /// Nothing to send yet.
    UpToDate,
    /// The entries from the requested seq onward.
    Entries(Vec<LoggedEntry>),
    /// The requested entries were dropped from the log: send a snapshot.
    Truncated,
}

impl ReplicationLog {
    pub fn new(retain: usize) -> Self {
        ReplicationLog {
            entries: VecDeque::new(),
            first_seq: 1,
            appended_seq: 0,
            retain: retain.max(1),
        }
    }

    /// Starts an empty log after a given position (a recovered leader).
    pub fn starting_after(appended_seq: u64, retain: usize) -> Self {
        ReplicationLog {
            first_seq: appended_seq + 1,
            appended_seq,
            ..Self::new(retain)
        }
    }

    /// The log of a leader restarted on its data directory: the entries
    /// recovery found after the last snapshot (contiguous, ending at
    /// `appended_seq`). They count as appended long ago, so the lab's delays do
    /// not hold them back a second time.
    pub fn recovered(tail: Vec<Entry>, appended_seq: u64, retain: usize) -> Self {
        let first = tail.first().map_or(appended_seq + 1, |e| e.seq);
        let mut log = Self::starting_after(first - 1, retain);
        let now = Instant::now();
        let long_ago = now.checked_sub(Duration::from_secs(3600)).unwrap_or(now);
        for entry in tail {
            log.push(Arc::new(entry), long_ago);
        }
        assert_eq!(
            log.appended_seq, appended_seq,
            "recovery's tail must end at the recovered seq"
        );
        log
    }

    /// The seq of the newest entry appended, persisted or not.
    pub fn appended_seq(&self) -> u64 {
        self.appended_seq
    }

    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends the next entry. The caller gives it `appended_seq() + 1`.
    pub fn push(&mut self, entry: Arc<Entry>, now: Instant) {
        // On in release builds: a gap or a repeat would make two nodes at the
        // same seq hold different data, and one compare per entry is free.
        assert_eq!(
            entry.seq,
            self.appended_seq + 1,
            "the replication log must stay contiguous"
        );
        self.appended_seq = entry.seq;
        self.entries.push_back(LoggedEntry {
            entry,
            appended_at: now,
        });
        while self.entries.len() > self.retain {
            self.entries.pop_front();
            self.first_seq += 1;
        }
    }

    /// Up to `max` entries starting at `from`.
    pub fn read_from(&self, from: u64, max: usize) -> Next {
        if from > self.appended_seq {
            return Next::UpToDate;
        }
        if from < self.first_seq {
            return Next::Truncated;
        }
        let start = (from - self.first_seq) as usize;
        Next::Entries(self.entries.iter().skip(start).take(max).cloned().collect())
    }

    /// When the entry at `seq` was appended, if it is retained.
    pub fn appended_at(&self, seq: u64) -> Option<Instant> {
        if seq < self.first_seq || seq > self.appended_seq {
            return None;
        }
        self.entries
            .get((seq - self.first_seq) as usize)
            .map(|e| e.appended_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(seq: u64) -> Arc<Entry> {
        Arc::new(Entry {
            seq,
            term: 1,
            key: "k".into(),
            value: "v".into(),
            version: seq,
        })
    }

    #[test]
    fn reads_and_truncates() {
        let mut log = ReplicationLog::new(3);
        let now = Instant::now();
        assert!(matches!(log.read_from(1, 10), Next::UpToDate));
        for seq in 1..=5 {
            log.push(e(seq), now);
        }
        assert_eq!(log.first_seq(), 3);
        assert_eq!(log.appended_seq(), 5);
        assert!(matches!(log.read_from(2, 10), Next::Truncated));
        match log.read_from(4, 10) {
            Next::Entries(v) => {
                assert_eq!(v.iter().map(|l| l.entry.seq).collect::<Vec<_>>(), [4, 5])
            }
            other => panic!("{other:?}"),
        }
        match log.read_from(3, 1) {
            Next::Entries(v) => assert_eq!(v.len(), 1),
            other => panic!("{other:?}"),
        }
        assert!(matches!(log.read_from(6, 10), Next::UpToDate));
    }

    #[test]
    fn recovered_log_continues_where_the_disk_ended() {
        let tail = (8..=10).map(|s| Entry::clone(&e(s))).collect();
        let log = ReplicationLog::recovered(tail, 10, 100);
        assert_eq!((log.first_seq(), log.appended_seq()), (8, 10));
        assert!(matches!(log.read_from(7, 10), Next::Truncated));
        let empty = ReplicationLog::recovered(vec![], 10, 100);
        assert_eq!((empty.first_seq(), empty.appended_seq()), (11, 10));
        assert!(matches!(empty.read_from(5, 10), Next::Truncated));
    }
}

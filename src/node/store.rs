//! The key-value state of one node, and the log position it reflects.
//!
//! Invariant: `applied_seq` is the highest log position whose entry, and every
//! entry before it, has been applied. Entries are applied in order, exactly
//! once; applying is the only way state changes (plus installing a snapshot
//! that is *ahead* of us), so two nodes at the same `applied_seq` hold the same
//! data.
//!
//! Each key also remembers the seq of the entry that wrote its value, so that
//! a read can tell whether what it saw is committed (see
//! `coordinator::reads`). A key restored from a snapshot or a recovery gets
//! the snapshot's seq instead: an upper bound, which is all a read needs.
//!
//! A key written by an entry holds that entry itself (an `Arc` shared with
//! the log and the disk writer), not a copy of its value: applying a write
//! copies nothing, and a key that exists already is not allocated again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::api::{Entry, Versioned};

#[derive(Debug, Default)]
pub struct Store {
    data: HashMap<String, Held>,
    applied_seq: u64,
}

/// A key's value, and the seq of the entry that wrote it (at most).
#[derive(Debug, Clone)]
enum Held {
    /// Written by this entry of the log.
    Written(Arc<Entry>),
    /// Restored from a snapshot or a recovery taken at `seq`.
    Restored { value: Versioned, seq: u64 },
}

impl Held {
    fn version(&self) -> u64 {
        match self {
            Held::Written(entry) => entry.version,
            Held::Restored { value, .. } => value.version,
        }
    }

    fn seq(&self) -> u64 {
        match self {
            Held::Written(entry) => entry.seq,
            Held::Restored { seq, .. } => *seq,
        }
    }

    fn to_versioned(&self) -> Versioned {
        match self {
            Held::Written(entry) => Versioned {
                value: entry.value.clone(),
                version: entry.version,
            },
            Held::Restored { value, .. } => value.clone(),
        }
    }
}

/// Pairs each value of a snapshot with the snapshot's seq.
fn held_at(seq: u64, data: BTreeMap<String, Versioned>) -> HashMap<String, Held> {
    data.into_iter()
        .map(|(k, value)| (k, Held::Restored { value, seq }))
        .collect()
}

/// What happened to an entry offered to [`Store::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// It was the next entry, and is now part of the state.
    Applied,
    /// We already held it (a retransmission).
    Duplicate,
    /// Entries before it are missing; it was not applied.
    Gap,
}

impl Store {
    /// The state recovered from disk: `data` as of log position `seq`.
    pub fn recovered(seq: u64, data: BTreeMap<String, Versioned>) -> Self {
        Store {
            data: held_at(seq, data),
            applied_seq: seq,
        }
    }

    pub fn applied_seq(&self) -> u64 {
        self.applied_seq
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// A copy of the key's value and version.
    pub fn get(&self, key: &str) -> Option<Versioned> {
        self.data.get(key).map(Held::to_versioned)
    }

    /// A copy of the key's value, and the seq that wrote it (see the
    /// module's doc).
    pub fn get_with_seq(&self, key: &str) -> Option<(Versioned, u64)> {
        self.data.get(key).map(|h| (h.to_versioned(), h.seq()))
    }

    /// The version the next write of `key` gets: per-key, starting at 1.
    pub fn next_version(&self, key: &str) -> u64 {
        self.data.get(key).map_or(1, |h| h.version() + 1)
    }

    /// Applies the entry if it is the next one in the log.
    pub fn apply(&mut self, entry: &Arc<Entry>) -> Applied {
        if entry.seq <= self.applied_seq {
            return Applied::Duplicate;
        }
        if entry.seq != self.applied_seq + 1 {
            return Applied::Gap;
        }
        let held = Held::Written(entry.clone());
        // Looked up first: an existing key keeps its `String`, so a write
        // to it allocates nothing here.
        match self.data.get_mut(entry.key.as_str()) {
            Some(slot) => *slot = held,
            None => {
                self.data.insert(entry.key.clone(), held);
            }
        }
        self.applied_seq = entry.seq;
        Applied::Applied
    }

    /// Counts the entry as applied without storing its value: a deliberate
    /// bug, only for the test hook `--test-break` (see
    /// [`super::faults::Broken`]), which builds clusters that lose
    /// acknowledged writes so that `kvlab check` can be tested on them.
    pub fn skip(&mut self, entry: &Entry) -> Applied {
        if entry.seq <= self.applied_seq {
            return Applied::Duplicate;
        }
        if entry.seq != self.applied_seq + 1 {
            return Applied::Gap;
        }
        self.applied_seq = entry.seq;
        Applied::Applied
    }

    /// Replaces the state with a snapshot taken at `seq`, but only if that is
    /// ahead of us: a snapshot never takes a node back in time, so it can never
    /// erase a write the node already holds.
    pub fn install_snapshot(&mut self, seq: u64, data: BTreeMap<String, Versioned>) -> bool {
        if seq <= self.applied_seq {
            return false;
        }
        self.data = held_at(seq, data);
        self.applied_seq = seq;
        true
    }

    /// A copy of the whole state, sorted by key.
    pub fn to_map(&self) -> BTreeMap<String, Versioned> {
        self.data
            .iter()
            .map(|(k, h)| (k.clone(), h.to_versioned()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, key: &str, version: u64) -> Arc<Entry> {
        Arc::new(Entry {
            seq,
            term: 1,
            key: key.into(),
            value: format!("v{seq}"),
            version,
        })
    }

    #[test]
    fn applies_in_order_and_skips_duplicates() {
        let mut s = Store::default();
        assert_eq!(s.apply(&entry(1, "a", 1)), Applied::Applied);
        assert_eq!(s.apply(&entry(1, "a", 1)), Applied::Duplicate);
        assert_eq!(s.apply(&entry(3, "a", 3)), Applied::Gap);
        assert_eq!(s.apply(&entry(2, "a", 2)), Applied::Applied);
        assert_eq!(s.applied_seq(), 2);
        assert_eq!(s.get("a").unwrap().version, 2);
        assert_eq!(s.get_with_seq("a").unwrap().1, 2);
        assert_eq!(s.next_version("a"), 3);
        assert_eq!(s.next_version("b"), 1);
    }

    #[test]
    fn a_key_holds_the_entry_that_wrote_it_not_a_copy() {
        let mut s = Store::default();
        let first = entry(1, "a", 1);
        assert_eq!(s.apply(&first), Applied::Applied);
        assert_eq!(Arc::strong_count(&first), 2, "shared, not copied");
        assert_eq!(s.apply(&entry(2, "a", 2)), Applied::Applied);
        assert_eq!(
            Arc::strong_count(&first),
            1,
            "an overwritten entry is let go"
        );
        let (value, seq) = s.get_with_seq("a").unwrap();
        assert_eq!((value.value.as_str(), value.version, seq), ("v2", 2, 2));
        assert_eq!(s.to_map()["a"].value, "v2");
    }

    #[test]
    fn snapshot_never_goes_back_in_time() {
        let mut s = Store::default();
        s.apply(&entry(1, "a", 1));
        s.apply(&entry(2, "b", 1));
        assert!(!s.install_snapshot(1, BTreeMap::new()));
        assert_eq!(s.len(), 2);
        let mut snap = s.to_map();
        snap.insert(
            "c".into(),
            Versioned {
                value: "x".into(),
                version: 1,
            },
        );
        assert!(s.install_snapshot(5, snap));
        assert_eq!(s.applied_seq(), 5);
        // What a snapshot brings was written at its seq or before.
        assert_eq!(s.get_with_seq("a").unwrap().1, 5);
        assert_eq!(s.len(), 3);
    }
}

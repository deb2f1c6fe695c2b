//! Terms and the term history: how nodes tell one history from another
//! after a failover.
//!
//! A **term** numbers a leadership: the coordinator promotes a node with term
//! `t + 1`, and every entry that leader writes carries that term. The
//! **term history** of a node lists, for each term that wrote entries into
//! its log, the seq of the first of them: `[(1, 1), (2, 41), (4, 97)]` means
//! seqs 1..=40 are of term 1, 41..=96 of term 2 and 97 onward of term 4.
//!
//! Invariants:
//! - the history describes the node's log: terms and start seqs increase,
//!   and an item may start after the last seq only as the very last item
//!   (a leader promoted in that term that has not written yet);
//! - **log matching**: two nodes holding an entry of the same term at the
//!   same seq hold the same entries up to it. A term has one leader (the
//!   coordinator promotes each term once), a leader never rewrites its own
//!   log, and a follower only extends a prefix it shares with its leader.
//!   So [`common_prefix`] can find where two logs part by comparing their
//!   histories alone, without looking at entries.
//!
//! A node persists its term and history in `term.json` in its data
//! directory (written to a temporary file, fsynced, renamed), so a restarted
//! node still knows them. A promotion writes it before the new leader takes
//! a write.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The name of the term file in a node's data directory.
pub const TERM_FILE: &str = "term.json";

/// `(term, first seq of that term)` items, in increasing order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermHistory(pub Vec<(u64, u64)>);

impl TermHistory {
    /// The term of the last item (0 for an empty history).
    pub fn last_term(&self) -> u64 {
        self.0.last().map_or(0, |&(t, _)| t)
    }

    /// The term of the entry at `seq`, if the history covers it.
    pub fn term_at(&self, seq: u64) -> Option<u64> {
        self.0
            .iter()
            .rev()
            .find(|&&(_, start)| start <= seq)
            .map(|&(t, _)| t)
    }

    /// Records that the entry at `seq` has `term`. Entries are recorded in
    /// seq order; an item starting at or after `seq` with another term
    /// describes entries that are being replaced, so it goes.
    pub fn record(&mut self, seq: u64, term: u64) {
        while let Some(&(t, start)) = self.0.last() {
            if start > seq || (start == seq && t != term) {
                self.0.pop();
            } else {
                break;
            }
        }
        if self.last_term() != term {
            self.0.push((term, seq));
        }
    }

    /// Forgets the terms of entries after `seq` (the log was cut there).
    pub fn truncate_after(&mut self, seq: u64) {
        self.0.retain(|&(_, start)| start <= seq);
    }

    /// Starts `term` at `first_seq` (a promotion: nothing is written in it
    /// yet). Terms only grow.
    pub fn begin(&mut self, term: u64, first_seq: u64) {
        // On in release builds: a term that did not grow would let two
        // leaders write in one term. Promotions are rare, so it costs nothing.
        assert!(
            term > self.last_term(),
            "terms only grow: term {term} begun after term {}",
            self.last_term()
        );
        self.truncate_after(first_seq - 1);
        self.0.push((term, first_seq));
    }

    /// `(term, first, last)` for each term holding entries of a log that
    /// ends at `log_end`.
    fn spans(&self, log_end: u64) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.0
            .iter()
            .enumerate()
            .filter_map(move |(i, &(t, start))| {
                let end = self
                    .0
                    .get(i + 1)
                    .map_or(log_end, |&(_, next)| next - 1)
                    .min(log_end);
                (start <= end).then_some((t, start, end))
            })
    }
}

/// The last seq up to which two logs hold the same entries: the highest
/// seq that both hold with the same term (log matching makes that enough).
/// 0 when they share nothing.
pub fn common_prefix(a: &TermHistory, a_last: u64, b: &TermHistory, b_last: u64) -> u64 {
    let mut best = 0;
    for (ta, sa, ea) in a.spans(a_last) {
        for (tb, sb, eb) in b.spans(b_last) {
            if ta == tb && sa.max(sb) <= ea.min(eb) {
                best = best.max(ea.min(eb));
            }
        }
    }
    best
}

/// What a node persists about terms.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermFile {
    /// The highest term the node has seen.
    pub term: u64,
    pub history: TermHistory,
}

fn path_in(dir: &Path) -> PathBuf {
    dir.join(TERM_FILE)
}

/// Reads the term file of `dir`; a missing file is a node that never saw a
/// term (fresh, or from before terms existed). A damaged one is an error:
/// guessing a term could let an old history win. The error names the file.
pub fn load(dir: &Path) -> std::io::Result<TermFile> {
    let path = path_in(dir);
    let named = |kind, e: &dyn std::fmt::Display| {
        std::io::Error::new(kind, format!("{}: {e}", path.display()))
    };
    match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|e| named(std::io::ErrorKind::InvalidData, &e))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TermFile::default()),
        Err(e) => Err(named(e.kind(), &e)),
    }
}

/// Writes the term file of `dir` atomically and durably: a crash leaves the
/// old file or the new one.
pub fn save(dir: &Path, file: &TermFile) -> std::io::Result<()> {
    let path = path_in(dir);
    let tmp = dir.join(format!("{TERM_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(file).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(items: &[(u64, u64)]) -> TermHistory {
        TermHistory(items.to_vec())
    }

    #[test]
    fn record_follows_the_log() {
        let mut x = TermHistory::default();
        for seq in 1..=5 {
            x.record(seq, 1);
        }
        x.record(6, 3);
        x.record(7, 3);
        assert_eq!(x, h(&[(1, 1), (3, 6)]));
        assert_eq!(x.term_at(5), Some(1));
        assert_eq!(x.term_at(7), Some(3));
        assert_eq!(x.term_at(0), None);
        // A promotion marker with no entries is replaced by what follows.
        x.begin(4, 8);
        assert_eq!(x.last_term(), 4);
        x.record(8, 5);
        assert_eq!(x, h(&[(1, 1), (3, 6), (5, 8)]));
        x.truncate_after(7);
        assert_eq!(x, h(&[(1, 1), (3, 6)]));
    }

    #[test]
    fn same_history_shares_everything_it_holds() {
        let a = h(&[(1, 1), (2, 11)]);
        assert_eq!(common_prefix(&a, 20, &a, 15), 15);
        assert_eq!(common_prefix(&a, 20, &a, 25), 20);
        assert_eq!(common_prefix(&a, 0, &a, 15), 0);
    }

    #[test]
    fn deposed_leader_tail_is_cut_where_the_new_term_began() {
        // The old leader wrote 11..=12 in term 1 that nobody else got; the
        // new leader's term 2 starts at 11.
        let old = h(&[(1, 1)]);
        let new = h(&[(1, 1), (2, 11)]);
        assert_eq!(common_prefix(&new, 15, &old, 12), 10);
        // A promoted leader that has not written yet: term 1 ends at 10.
        assert_eq!(common_prefix(&h(&[(1, 1), (2, 11)]), 10, &old, 12), 10);
    }

    #[test]
    fn a_term_the_leader_never_saw_is_cut_entirely() {
        // An unclean leader of term 2 wrote 9..=12; the leader of term 3
        // descends from term 1, which ended at 10 in its log.
        let follower = h(&[(1, 1), (2, 9)]);
        let leader = h(&[(1, 1), (3, 11)]);
        assert_eq!(common_prefix(&leader, 14, &follower, 12), 8);
    }

    #[test]
    fn nothing_in_common() {
        assert_eq!(common_prefix(&h(&[(2, 1)]), 5, &h(&[(1, 1)]), 5), 0);
        assert_eq!(
            common_prefix(&TermHistory::default(), 0, &h(&[(1, 1)]), 5),
            0
        );
    }

    #[test]
    fn term_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), TermFile::default());
        let file = TermFile {
            term: 3,
            history: h(&[(1, 1), (3, 7)]),
        };
        save(dir.path(), &file).unwrap();
        assert_eq!(load(dir.path()).unwrap(), file);
        std::fs::write(dir.path().join(TERM_FILE), b"{").unwrap();
        assert!(load(dir.path()).is_err());
    }
}

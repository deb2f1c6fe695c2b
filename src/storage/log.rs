//! The synchronous core of the write-ahead log: recovery, appends, fsync,
//! segment rotation, compaction and reset.
//!
//! A [`Log`] is owned by exactly one thread (the `Wal` writer), so it needs no
//! locks. Its invariants, true after every method returns `Ok`:
//!
//! - `segments` lists the base seqs of the segment files, ascending, never
//!   empty; the last one is the active segment, open as `active`.
//! - The records of all segments together are contiguous and end at
//!   `last_seq`, except that segments entirely covered by the snapshot may be
//!   left over by a crash (recovery deletes them).
//! - `snapshot_seq <= last_seq`, and the log holds every seq in
//!   `snapshot_seq + 1 ..= last_seq`.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::snapshot::{self, Snapshot};
use super::{segment, sync_dir, Result, StorageError};
use crate::api::{Entry, Versioned};

/// What recovery found, for the node to log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The directory did not exist and was created.
    pub created_dir: bool,
    /// Seq of the snapshot recovery started from (0: none).
    pub snapshot_seq: u64,
    /// Snapshots that failed validation and were skipped, with the reason.
    pub skipped_snapshots: Vec<(PathBuf, String)>,
    /// Log entries applied on top of the snapshot.
    pub entries_replayed: u64,
    /// Set when the log ended in a torn record that was cut off.
    pub torn_tail: Option<TornTailReport>,
    /// Leftovers of interrupted operations that were deleted: temporary
    /// files, and segments already covered by the snapshot.
    pub removed_files: Vec<PathBuf>,
    /// The last seq in the recovered state.
    pub last_seq: u64,
}

/// A torn tail that recovery truncated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTailReport {
    pub segment: PathBuf,
    /// The segment was cut to this length.
    pub offset: u64,
    pub dropped_bytes: u64,
    pub reason: String,
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "recovered to seq {} (snapshot at {}, {} entries replayed)",
            self.last_seq, self.snapshot_seq, self.entries_replayed
        )?;
        if self.created_dir {
            f.write_str(", fresh data directory")?;
        }
        if let Some(t) = &self.torn_tail {
            write!(
                f,
                "; TORN TAIL: dropped {} bytes at offset {} of {} ({})",
                t.dropped_bytes,
                t.offset,
                t.segment.display(),
                t.reason
            )?;
        }
        for (path, reason) in &self.skipped_snapshots {
            write!(f, "; skipped bad snapshot {}: {reason}", path.display())?;
        }
        if !self.removed_files.is_empty() {
            write!(f, "; removed {} leftover files", self.removed_files.len())?;
        }
        Ok(())
    }
}

/// The state rebuilt by recovery.
#[derive(Debug)]
pub struct Recovered {
    /// The state: the snapshot with the log replayed on top. `state.seq` is
    /// the last seq in the log and `state.term` the term of that entry.
    pub state: Snapshot,
    /// The entries after the snapshot, in order, for the node's in-memory
    /// replication log.
    pub tail: Vec<Entry>,
    pub report: RecoveryReport,
}

/// What a compaction removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactReport {
    pub snapshot_seq: u64,
    pub removed_segments: Vec<PathBuf>,
    pub removed_snapshots: Vec<PathBuf>,
}

pub(crate) struct Log {
    dir: PathBuf,
    segment_bytes: u64,
    segments: Vec<u64>,
    active: File,
    active_len: u64,
    last_seq: u64,
    snapshot_seq: u64,
    /// Reused encoding buffer, so steady-state appends do not allocate.
    buf: Vec<u8>,
}

impl Log {
    /// Opens (creating if needed) the log in `dir` and rebuilds the state.
    pub fn recover(dir: &Path, segment_bytes: u64) -> Result<(Log, Recovered)> {
        let mut report = RecoveryReport::default();
        if !dir.exists() {
            fs::create_dir_all(dir).map_err(|e| StorageError::io(dir, e))?;
            report.created_dir = true;
        }
        remove_temp_files(dir, &mut report)?;

        let mut state = load_newest_snapshot(dir, &mut report)?;
        report.snapshot_seq = state.seq;
        let snapshot_seq = state.seq;

        let mut segments = list_segments(dir)?;
        remove_covered_segments(dir, &mut segments, snapshot_seq, &mut report.removed_files)?;

        let mut tail = Vec::new();
        let log_end = replay(dir, &segments, &mut state, &mut tail, &mut report)?;
        report.entries_replayed = tail.len() as u64;
        report.last_seq = state.seq;

        let active_base = match segments.last() {
            // The log may end before the snapshot (e.g. a snapshot installed
            // from the leader): the next append, seq `state.seq + 1`, would not
            // continue the active segment, so start a fresh one.
            Some(&base) if log_end == state.seq => base,
            _ => {
                segment::create(dir, state.seq + 1)?;
                segments.push(state.seq + 1);
                remove_covered_segments(
                    dir,
                    &mut segments,
                    snapshot_seq,
                    &mut report.removed_files,
                )?;
                state.seq + 1
            }
        };
        let path = segment::segment_path(dir, active_base);
        let active = segment::open_for_append(&path)?;
        let active_len = active
            .metadata()
            .map_err(|e| StorageError::io(&path, e))?
            .len();

        let log = Log {
            dir: dir.to_path_buf(),
            segment_bytes,
            segments,
            active,
            active_len,
            last_seq: state.seq,
            snapshot_seq,
            buf: Vec::new(),
        };
        Ok((
            log,
            Recovered {
                state,
                tail,
                report,
            },
        ))
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Writes `entries` to the active segment (not fsynced). They must
    /// continue the log: the first has seq `last_seq + 1`, and so on.
    pub fn append(&mut self, entries: &[Entry]) -> Result<()> {
        for (i, e) in entries.iter().enumerate() {
            let expected = self.last_seq + 1 + i as u64;
            if e.seq != expected {
                return Err(StorageError::OutOfOrder {
                    expected,
                    got: e.seq,
                });
            }
        }
        if entries.is_empty() {
            return Ok(());
        }
        if self.active_len >= self.segment_bytes {
            self.rotate()?;
        }
        self.buf.clear();
        for e in entries {
            super::codec::encode_entry_record(e, &mut self.buf);
        }
        self.active
            .write_all(&self.buf)
            .map_err(|e| StorageError::io(&self.active_path(), e))?;
        self.active_len += self.buf.len() as u64;
        self.last_seq += entries.len() as u64;
        Ok(())
    }

    /// Makes everything written so far durable. `sync_data` is enough: the
    /// file length is data for this purpose, and it skips e.g. mtime updates.
    pub fn sync(&mut self) -> Result<()> {
        self.active
            .sync_data()
            .map_err(|e| StorageError::io(&self.active_path(), e))
    }

    /// Closes the active segment (durably) and starts a new one.
    fn rotate(&mut self) -> Result<()> {
        self.sync()?;
        let base = self.last_seq + 1;
        self.active = segment::create(&self.dir, base)?;
        self.active_len = segment::HEADER_LEN as u64;
        self.segments.push(base);
        Ok(())
    }

    /// Forgets everything the durable snapshot at `snapshot_seq` covers:
    /// whole segments and older snapshots.
    pub fn compact(&mut self, snapshot_seq: u64) -> Result<CompactReport> {
        self.snapshot_seq = self.snapshot_seq.max(snapshot_seq);
        let mut report = CompactReport {
            snapshot_seq: self.snapshot_seq,
            ..Default::default()
        };
        remove_covered_segments(
            &self.dir,
            &mut self.segments,
            self.snapshot_seq,
            &mut report.removed_segments,
        )?;
        report.removed_snapshots = snapshot::remove_older(&self.dir, self.snapshot_seq)?;
        sync_dir(&self.dir)?;
        Ok(report)
    }

    /// Throws the whole log away and continues after the durable snapshot at
    /// `snapshot_seq`, which replaces the state (a follower installing a
    /// snapshot from the leader).
    pub fn reset(&mut self, snapshot_seq: u64) -> Result<CompactReport> {
        // New segment first: a crash before the old ones are gone leaves them
        // covered (their successor starts at snapshot_seq + 1), and recovery
        // deletes covered segments.
        let base = snapshot_seq + 1;
        self.active = segment::create(&self.dir, base)?;
        self.active_len = segment::HEADER_LEN as u64;
        self.segments.retain(|&b| b != base);
        self.segments.push(base);
        self.last_seq = snapshot_seq;
        self.snapshot_seq = snapshot_seq;
        self.compact(snapshot_seq)
    }

    fn active_path(&self) -> PathBuf {
        segment::segment_path(&self.dir, *self.segments.last().expect("never empty"))
    }
}

fn remove_temp_files(dir: &Path, report: &mut RecoveryReport) -> Result<()> {
    for name in super::list_dir(dir)? {
        if name.ends_with(".tmp") {
            let path = dir.join(name);
            fs::remove_file(&path).map_err(|e| StorageError::io(&path, e))?;
            report.removed_files.push(path);
        }
    }
    Ok(())
}

/// The newest snapshot that validates, or an empty state if there is none.
fn load_newest_snapshot(dir: &Path, report: &mut RecoveryReport) -> Result<Snapshot> {
    for seq in snapshot::list(dir)? {
        let path = snapshot::snapshot_path(dir, seq);
        match snapshot::read(&path) {
            Ok(snap) if snap.seq == seq => return Ok(snap),
            Ok(_) => report
                .skipped_snapshots
                .push((path, "seq does not match the file name".into())),
            Err(StorageError::CorruptSnapshot { reason, .. }) => {
                report.skipped_snapshots.push((path, reason))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Snapshot::default())
}

fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut bases: Vec<u64> = super::list_dir(dir)?
        .iter()
        .filter_map(|name| segment::parse_segment_name(name))
        .collect();
    bases.sort_unstable();
    Ok(bases)
}

/// Deletes the leading segments whose every seq is <= `snapshot_seq`. A
/// segment's seqs end where the next segment's begin, so only a segment with
/// a successor can be known to be covered; the active one is always kept.
fn remove_covered_segments(
    dir: &Path,
    segments: &mut Vec<u64>,
    snapshot_seq: u64,
    removed: &mut Vec<PathBuf>,
) -> Result<()> {
    while segments.len() >= 2 && segments[1] <= snapshot_seq + 1 {
        let path = segment::segment_path(dir, segments.remove(0));
        fs::remove_file(&path).map_err(|e| StorageError::io(&path, e))?;
        removed.push(path);
    }
    Ok(())
}

/// Scans all segments in order, applying entries after the snapshot to
/// `state` and collecting them in `tail`. Returns the last seq in the log
/// (`base - 1` of the first segment if the log holds no record at all).
fn replay(
    dir: &Path,
    segments: &[u64],
    state: &mut Snapshot,
    tail: &mut Vec<Entry>,
    report: &mut RecoveryReport,
) -> Result<u64> {
    let Some(&first) = segments.first() else {
        return Ok(state.seq);
    };
    if first == 0 {
        return Err(StorageError::Corrupt {
            segment: segment::segment_path(dir, 0),
            offset: 0,
            reason: "seqs start at 1, a segment cannot start at 0".into(),
        });
    }
    if first > state.seq + 1 {
        return Err(StorageError::Gap {
            expected: state.seq + 1,
            found: first,
        });
    }
    let snapshot_seq = state.seq;
    let mut end = first - 1;
    for (i, &base) in segments.iter().enumerate() {
        if base != end + 1 {
            return Err(StorageError::Gap {
                expected: end + 1,
                found: base,
            });
        }
        let path = segment::segment_path(dir, base);
        let is_last = i + 1 == segments.len();
        let scan = segment::scan(&path, base, is_last, |e| {
            if e.seq > snapshot_seq {
                apply(&mut state.data, &e);
                state.seq = e.seq;
                state.term = e.term;
                tail.push(e);
            }
        })?;
        end = base + scan.records - 1;
        if let Some(torn) = scan.torn {
            segment::truncate(&path, scan.valid_len)?;
            report.torn_tail = Some(TornTailReport {
                segment: path,
                offset: torn.offset,
                dropped_bytes: torn.dropped_bytes,
                reason: torn.reason,
            });
        }
    }
    Ok(end)
}

fn apply(data: &mut BTreeMap<String, Versioned>, e: &Entry) {
    let v = Versioned {
        value: e.value.clone(),
        version: e.version,
    };
    data.insert(e.key.clone(), v);
}

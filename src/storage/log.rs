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
//! - The active segment's records end at `active_len`, where the next append
//!   writes; the file is `active_end >= active_len` bytes long and the bytes
//!   in between are zeros (preallocated space, see `segment`), durably.
//! - Every segment but the active one ends exactly at its last record.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::power::Volatile;
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
    /// Bytes of damaged data dropped, not counting the preallocated zeros
    /// after them (which were cut off too).
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
    /// End of the active segment's records: where the next append writes.
    active_len: u64,
    /// Length of the active segment file: preallocated zeros from
    /// `active_len` up to here.
    active_end: u64,
    last_seq: u64,
    /// The last seq known to be fsynced.
    durable_seq: u64,
    /// The `durable_seq` of the last durable marker written: a new marker
    /// goes out with the next group once an fsync moved past it.
    marked_seq: u64,
    snapshot_seq: u64,
    /// Reused encoding buffer, so steady-state appends do not allocate.
    buf: Vec<u8>,
    /// Writes held back until their fsync when simulating power loss.
    volatile: Volatile,
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
        let (log_end, last_valid_len, last_format) =
            replay(dir, &segments, &mut state, &mut tail, &mut report)?;
        report.entries_replayed = tail.len() as u64;
        report.last_seq = state.seq;

        let (active_base, active_len) = match (segments.last(), last_valid_len) {
            // The active segment keeps its zero tail: the scan checked that
            // everything after its records is zeros, and that space is
            // already durable, so appends simply continue over it (cutting
            // and re-extending it would cost a write and two fsyncs for
            // nothing). After a torn tail `replay` cut the file at the end
            // of the records, and the first append extends it again.
            (Some(&base), Some(valid_len))
                if log_end == state.seq && last_format >= segment::MARKERS_FORMAT =>
            {
                (base, valid_len)
            }
            // A segment of format 1 (no durable markers) is closed, and the
            // log goes on in a new segment of the current format.
            (Some(&base), Some(valid_len)) if log_end == state.seq => {
                let path = segment::segment_path(dir, base);
                segment::truncate(&path, valid_len)?;
                if base == state.seq + 1 {
                    // It holds no record: the new one replaces it.
                    segments.pop();
                }
                segment::create(dir, state.seq + 1)?;
                segments.push(state.seq + 1);
                (state.seq + 1, segment::HEADER_LEN as u64)
            }
            // The log may end before the snapshot (e.g. a snapshot installed
            // from the leader): the next append, seq `state.seq + 1`, would not
            // continue the active segment, so start a fresh one.
            _ => {
                segment::create(dir, state.seq + 1)?;
                segments.push(state.seq + 1);
                remove_covered_segments(
                    dir,
                    &mut segments,
                    snapshot_seq,
                    &mut report.removed_files,
                )?;
                (state.seq + 1, segment::HEADER_LEN as u64)
            }
        };
        let path = segment::segment_path(dir, active_base);
        let active = segment::open_for_write(&path)?;
        let active_end = active
            .metadata()
            .map_err(|e| StorageError::io(&path, e))?
            .len();
        // What recovery read may have come from the page cache (a process
        // crash under `--fsync never`): make it durable before any marker
        // says so.
        active.sync_data().map_err(|e| StorageError::io(&path, e))?;

        let log = Log {
            dir: dir.to_path_buf(),
            segment_bytes,
            segments,
            active,
            active_len,
            active_end,
            last_seq: state.seq,
            durable_seq: state.seq,
            marked_seq: 0,
            snapshot_seq,
            buf: Vec::new(),
            volatile: Volatile::default(),
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
    /// Returns the bytes written.
    pub fn append<E: std::borrow::Borrow<Entry>>(&mut self, entries: &[E]) -> Result<u64> {
        for (i, e) in entries.iter().map(Borrow::borrow).enumerate() {
            // Checked first, so that `expected` (at most the previous
            // entry's seq + 1) cannot overflow.
            if e.seq > super::MAX_SEQ {
                return Err(StorageError::SeqOutOfRange(e.seq));
            }
            let expected = self.last_seq + 1 + i as u64;
            if e.seq != expected {
                return Err(StorageError::OutOfOrder {
                    expected,
                    got: e.seq,
                });
            }
        }
        if entries.is_empty() {
            return Ok(0);
        }
        if self.active_len >= self.segment_bytes {
            self.rotate()?;
        }
        self.buf.clear();
        // The group starts with a durable marker if an fsync completed since
        // the last one: recovery's evidence of what was durable (`segment`).
        if self.durable_seq > self.marked_seq {
            super::codec::encode_marker_record(self.durable_seq, &mut self.buf);
            self.marked_seq = self.durable_seq;
        }
        for e in entries {
            super::codec::encode_entry_record(e.borrow(), &mut self.buf);
        }
        self.write_buf()?;
        self.last_seq += entries.len() as u64;
        Ok(self.buf.len() as u64)
    }

    /// Writes `buf` at the end of the active segment, growing its
    /// preallocated space first if it would not fit.
    fn write_buf(&mut self) -> Result<()> {
        let end = self.active_len + self.buf.len() as u64;
        if end > self.active_end {
            self.preallocate(end)?;
        }
        let path = self.active_path();
        self.volatile
            .write(&self.active, &path, &self.buf, self.active_len)?;
        self.active_len = end;
        Ok(())
    }

    /// Makes everything written so far durable. `sync_data` is enough: it
    /// skips e.g. mtime updates, and the file length, which it would have
    /// to flush too, does not change between preallocations.
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        self.active
            .sync_data()
            .map_err(|e| StorageError::io(&self.active_path(), e))?;
        self.durable_seq = self.last_seq;
        Ok(())
    }

    /// Writes what the power-loss simulation held back (see `power`): before
    /// an fsync, and before anything that reads or cuts the files.
    pub fn flush(&mut self) -> Result<()> {
        let path = self.active_path();
        self.volatile.flush(&self.active, &path)
    }

    /// Whether a simulated power cut now would lose (or tear) a write.
    pub fn has_unsynced_writes(&self) -> bool {
        self.volatile.has_pending()
    }

    /// A simulated power cut (see `power`): the process dies.
    pub fn power_cut(&mut self, tear: bool) -> ! {
        self.volatile.cut(&self.active, tear)
    }

    /// At a clean close, after the last fsync: a final durable marker (made
    /// durable too), so that after a clean stop any damage to the log is
    /// known to hit durable data, never taken for a torn write.
    pub fn seal(&mut self) -> Result<()> {
        if self.durable_seq <= self.marked_seq || self.durable_seq < self.last_seq {
            return Ok(());
        }
        self.buf.clear();
        super::codec::encode_marker_record(self.durable_seq, &mut self.buf);
        self.write_buf()?;
        self.marked_seq = self.durable_seq;
        self.sync()
    }

    /// Extends the active segment with durable zeros so that records up to
    /// `end` fit. This fsync (rare) pays for the new file size, so that the
    /// group commits' fsyncs (frequent) need not.
    fn preallocate(&mut self, end: u64) -> Result<()> {
        let target = preallocation_end(end, self.segment_bytes);
        segment::preallocate(&self.active, &self.active_path(), self.active_end, target)?;
        self.active_end = target;
        Ok(())
    }

    /// Closes the active segment (durably) and starts a new one.
    fn rotate(&mut self) -> Result<()> {
        // Cut the zero tail before the next segment exists: from then on
        // this one is not the last, and only the last may end in zeros. A
        // crash in between leaves it last, and cut, which is fine too.
        self.flush()?;
        segment::close(&self.active, &self.active_path(), self.active_len)?;
        self.durable_seq = self.last_seq;
        let base = self.last_seq + 1;
        self.start_segment(base)?;
        self.segments.push(base);
        Ok(())
    }

    /// Creates the segment `base` and makes it the active one.
    fn start_segment(&mut self, base: u64) -> Result<()> {
        self.active = segment::create(&self.dir, base)?;
        self.active_len = segment::HEADER_LEN as u64;
        self.active_end = self.active_len;
        // The new segment has no marker yet: its first group gets one.
        self.marked_seq = 0;
        Ok(())
    }

    /// Forgets everything the durable snapshot at `snapshot_seq` covers:
    /// whole segments and older snapshots.
    pub fn compact(&mut self, snapshot_seq: u64) -> Result<CompactReport> {
        self.flush()?;
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
        self.flush()?;
        // New segment first: a crash before the old ones are gone leaves them
        // covered (their successor starts at snapshot_seq + 1), and recovery
        // deletes covered segments before scanning anything. That is also why
        // the old active segment need not have its zero tail cut, unlike in
        // `rotate`: it is deleted, never scanned as a non-last segment.
        let base = snapshot_seq + 1;
        self.start_segment(base)?;
        self.segments.retain(|&b| b != base);
        self.segments.push(base);
        self.last_seq = snapshot_seq;
        self.durable_seq = snapshot_seq;
        self.snapshot_seq = snapshot_seq;
        self.compact(snapshot_seq)
    }

    /// Cuts the log after `seq` (a follower whose tail diverged from the
    /// new leader's history) and recovers the state it now holds. If a
    /// snapshot is beyond `seq`, the entries between cannot be rebuilt: the
    /// directory is emptied and the state starts again from nothing (the
    /// leader then sends a snapshot or the whole log).
    pub fn truncate_after(&mut self, seq: u64) -> Result<(Log, Recovered)> {
        self.flush()?;
        cut_after(&self.dir, seq)?;
        Log::recover(&self.dir, self.segment_bytes)
    }

    fn active_path(&self) -> PathBuf {
        segment::segment_path(&self.dir, *self.segments.last().expect("never empty"))
    }
}

/// Removes every seq above `seq` from the files of `dir`. Later segments go
/// first, last one first, and the segment holding `seq` is cut last: a crash
/// in between leaves a shorter but contiguous log, never a hole.
fn cut_after(dir: &Path, seq: u64) -> Result<()> {
    let snapshots = snapshot::list(dir)?;
    let mut segments = list_segments(dir)?;
    if snapshots.iter().any(|&s| s > seq) {
        // Segments first: a snapshot left alone by a crash is still a valid
        // (if diverged) state, which the next handshake cuts again.
        for base in segments.iter().rev() {
            remove(&segment::segment_path(dir, *base))?;
        }
        for s in snapshots {
            remove(&snapshot::snapshot_path(dir, s))?;
        }
        return sync_dir(dir);
    }
    while let Some(&base) = segments.last() {
        if base <= seq {
            break;
        }
        remove(&segment::segment_path(dir, base))?;
        segments.pop();
    }
    if let Some(&base) = segments.last() {
        let path = segment::segment_path(dir, base);
        let len = segment::offset_of(&path, base, seq + 1)?;
        segment::truncate(&path, len)?;
    }
    sync_dir(dir)
}

fn remove(path: &Path) -> Result<()> {
    fs::remove_file(path).map_err(|e| StorageError::io(path, e))
}

/// How far to preallocate the active segment for records up to `end`: to the
/// next multiple of [`segment::PREALLOC_CHUNK`] (so a group larger than a chunk
/// gets as many chunks as it needs), but not past the segment size limit,
/// where the segment is closed and its zero tail cut off again. A group that
/// crosses the limit gets exactly its own size.
fn preallocation_end(end: u64, segment_bytes: u64) -> u64 {
    let chunked = end.div_ceil(segment::PREALLOC_CHUNK) * segment::PREALLOC_CHUNK;
    chunked.min(segment_bytes.max(end))
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
/// (`base - 1` of the first segment if the log holds no record at all),
/// where the records of the last segment end (`None`: there is no segment)
/// and the last segment's format.
fn replay(
    dir: &Path,
    segments: &[u64],
    state: &mut Snapshot,
    tail: &mut Vec<Entry>,
    report: &mut RecoveryReport,
) -> Result<(u64, Option<u64>, u32)> {
    let Some(&first) = segments.first() else {
        return Ok((state.seq, None, 0));
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
    let mut valid_len = None;
    let mut format = 0;
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
        valid_len = Some(scan.valid_len);
        format = scan.format;
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
    Ok((end, valid_len, format))
}

fn apply(data: &mut BTreeMap<String, Versioned>, e: &Entry) {
    let v = Versioned {
        value: e.value.clone(),
        version: e.version,
    };
    data.insert(e.key.clone(), v);
}

#[cfg(test)]
mod tests {
    use super::*;
    use segment::{HEADER_LEN, PREALLOC_CHUNK};
    use std::os::unix::fs::FileExt;

    fn entry(seq: u64, value_len: usize) -> Entry {
        Entry {
            seq,
            term: 1,
            key: format!("k{seq}"),
            value: "x".repeat(value_len),
            version: 1,
        }
    }

    fn entries(seqs: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
        seqs.map(|seq| entry(seq, 10)).collect()
    }

    fn file_len(path: &Path) -> u64 {
        fs::metadata(path).unwrap().len()
    }

    /// Recovers `dir`, checking that it ends cleanly at `last_seq`.
    fn recover_clean(dir: &Path, segment_bytes: u64, last_seq: u64) -> (Log, Recovered) {
        let (log, rec) = Log::recover(dir, segment_bytes).unwrap();
        assert_eq!(rec.report.torn_tail, None);
        assert_eq!(rec.state.seq, last_seq);
        assert_eq!(rec.tail.last().map(|e| e.seq), Some(last_seq));
        (log, rec)
    }

    #[test]
    fn active_segment_is_preallocated_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::recover(dir.path(), u64::MAX).unwrap();
        log.append(&entries(1..=10)).unwrap();
        log.sync().unwrap();
        assert_eq!(file_len(&log.active_path()), PREALLOC_CHUNK);
        assert!(log.active_len < PREALLOC_CHUNK);
        assert_eq!(log.active_end, PREALLOC_CHUNK);
    }

    #[test]
    fn preallocation_stops_at_the_segment_limit() {
        assert_eq!(preallocation_end(100, u64::MAX), PREALLOC_CHUNK);
        assert_eq!(
            preallocation_end(PREALLOC_CHUNK + 1, u64::MAX),
            2 * PREALLOC_CHUNK
        );
        assert_eq!(preallocation_end(100, 4096), 4096);
        // A group that crosses the limit gets exactly its own size.
        assert_eq!(preallocation_end(5000, 4096), 5000);
    }

    #[test]
    fn batch_larger_than_a_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::recover(dir.path(), u64::MAX).unwrap();
        log.append(&entries(1..=2)).unwrap();
        // Three entries of 600 KiB each: one group of ~1.8 MiB.
        let big: Vec<Entry> = (3..=5).map(|seq| entry(seq, 600 * 1024)).collect();
        log.append(&big).unwrap();
        log.append(&entries(6..=6)).unwrap();
        log.sync().unwrap();
        assert_eq!(file_len(&log.active_path()), 2 * PREALLOC_CHUNK);
        drop(log);

        let (_, rec) = recover_clean(dir.path(), u64::MAX, 6);
        assert_eq!(rec.tail[2..5], big[..]);
    }

    #[test]
    fn reopening_after_recovery_continues_over_the_zero_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::recover(dir.path(), u64::MAX).unwrap();
        log.append(&entries(1..=10)).unwrap();
        let written = log.active_len;
        // Dropped without any clean close, as a killed process would.
        drop(log);

        let (mut log, rec) = recover_clean(dir.path(), u64::MAX, 10);
        assert_eq!(rec.tail, entries(1..=10));
        // The zero tail is kept: appends go on where the records end.
        assert_eq!((log.active_len, log.active_end), (written, PREALLOC_CHUNK));
        log.append(&entries(11..=20)).unwrap();
        drop(log);

        let (log, rec) = recover_clean(dir.path(), u64::MAX, 20);
        assert_eq!(rec.tail, entries(1..=20));
        assert_eq!(file_len(&log.active_path()), PREALLOC_CHUNK);
    }

    #[test]
    fn torn_write_into_the_zero_tail_is_cut_and_the_log_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::recover(dir.path(), u64::MAX).unwrap();
        log.append(&entries(1..=5)).unwrap();
        let written = log.active_len;
        // Half a record: a length promising 200 bytes and a few of them.
        let path = log.active_path();
        log.active
            .write_all_at(&[200, 0, 0, 0, 1, 2, 3, 4, 5], written)
            .unwrap();
        drop(log);

        let (mut log, rec) = Log::recover(dir.path(), u64::MAX).unwrap();
        let torn = rec.report.torn_tail.expect("torn tail");
        assert_eq!((torn.offset, torn.dropped_bytes), (written, 9));
        assert_eq!(rec.state.seq, 5);
        // The scan cut the file at the end of the records; the next append
        // extends it again.
        assert_eq!(file_len(&path), written);
        log.append(&entries(6..=6)).unwrap();
        assert_eq!(file_len(&path), PREALLOC_CHUNK);
        drop(log);
        recover_clean(dir.path(), u64::MAX, 6);
    }

    #[test]
    fn rotation_leaves_no_zero_tail_in_closed_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::recover(dir.path(), u64::MAX).unwrap();
        log.append(&entries(1..=10)).unwrap();
        drop(log);
        // Reopened with a smaller segment limit (a config change): the
        // active segment, preallocated to a whole chunk, is already full.
        let segment_bytes = 400;
        let (mut log, _) = recover_clean(dir.path(), segment_bytes, 10);
        for seq in 11..=40 {
            log.append(&entries(seq..=seq)).unwrap();
        }
        drop(log);

        let segments = list_segments(dir.path()).unwrap();
        assert!(segments.len() > 3, "{segments:?}");
        let (last, closed) = segments.split_last().unwrap();
        for &base in closed {
            let path = segment::segment_path(dir.path(), base);
            let bytes = fs::read(&path).unwrap();
            assert_ne!(bytes.last(), Some(&0), "{} ends in zeros", path.display());
            let scan = segment::scan(&path, base, false, |_| {}).unwrap();
            assert_eq!(scan.valid_len, bytes.len() as u64);
        }
        // The last one is preallocated up to the limit.
        let last = segment::segment_path(dir.path(), *last);
        assert_eq!(file_len(&last), segment_bytes);
        let (_, rec) = recover_clean(dir.path(), segment_bytes, 40);
        assert_eq!(rec.tail, entries(1..=40));
    }

    #[test]
    fn reset_and_compact_work_with_a_preallocated_active_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::recover(dir.path(), u64::MAX).unwrap();
        log.append(&entries(1..=10)).unwrap();
        let snap = Snapshot {
            seq: 100,
            ..Default::default()
        };
        snapshot::write(dir.path(), &snap).unwrap();
        log.reset(100).unwrap();
        assert_eq!(list_segments(dir.path()).unwrap(), vec![101]);
        assert_eq!(file_len(&log.active_path()), HEADER_LEN as u64);
        log.append(&entries(101..=105)).unwrap();
        log.compact(100).unwrap();
        drop(log);
        let (_, rec) = recover_clean(dir.path(), u64::MAX, 105);
        assert_eq!(rec.tail, entries(101..=105));
    }
}

//! Log segment files: naming, the file header, creation, preallocation and
//! scanning.
//!
//! The log is a sequence of segment files in the data directory, each named
//! after the seq of the first record it holds (`00000000000000000001.wal`),
//! so sorting the names sorts the log. A segment file is:
//!
//! ```text
//! header (24 bytes): magic "KVLABLOG" | format u32 | base_seq u64 | crc32 u32
//! records:           len u32 | crc32 u32 | payload   (see `codec`): an entry,
//!                    or (format 2) a durable marker
//! zero tail:         0x00 bytes up to the end of the file (last segment only)
//! ```
//!
//! The zero tail is *preallocated* space: the active segment is extended
//! ahead of the write position by really writing zeros, and that extension is
//! fsynced once (see [`preallocate`]). The records that follow are written
//! over the zeros, so the file size does not change at each group commit and
//! its `fdatasync` only has data to flush, not the inode's size. When a
//! segment is closed its zero tail is cut off ([`close`]), which is why only
//! the last segment may have one. A zero-filled record header (`len` 0) is
//! never a valid record (see `codec::parse_record`), so a scan cannot mistake
//! the zeros for data.
//!
//! Invariants a scan checks:
//! - the header is intact and its `base_seq` matches the file name;
//! - record `i` of the segment holds seq `base_seq + i` (no gaps, no repeats);
//! - every record is intact, except that the *last* segment may end in a torn
//!   tail (a crash in the middle of a write). A tail is only "torn" if no
//!   valid record can be found anywhere after the damage; otherwise the damage
//!   is in the middle of the log and is reported as corruption;
//! - in the last segment, zeros from the end of the records to the end of the
//!   file are the preallocated space: a clean end, not a torn tail. Damage
//!   followed by only zeros is still a torn tail (a write torn inside the
//!   preallocated space). A non-last segment has no zero tail: zeros there
//!   are damage like any other.
//!
//! Power loss and durable markers (format 2). A killed process leaves a
//! *prefix* of its last write, but after a power loss the pages of a write
//! that was never fsynced may reach the disk out of order: a hole followed by
//! valid records. To tell that apart from damage to data the node had made
//! durable (and maybe acknowledged), the writer puts a durable marker
//! (`codec::encode_marker_record`) in front of each group it writes once an
//! fsync completed since the last marker, and one at a clean close. Damage at
//! seq `s` with valid records after it is then:
//! - a **torn tail** if no marker at or after the damage says `s` was durable:
//!   everything from the damage on was written after the last fsync, and is
//!   dropped like any torn tail;
//! - **corruption** otherwise: data the node had fsynced is damaged.
//!
//! The last group written before a power cut carries no marker saying it was
//! fsynced (the marker goes out with the next write), so damage there is
//! always taken for a tear, even if that group's fsync did complete. That is
//! safe in a cluster: such a node comes back behind, and the election picks
//! a node that holds the group (see `coordinator::failover`). Segments of
//! format 1 (written before markers existed) keep the old, strict rule: any
//! valid record after damage makes it corruption.
//!
//! A new segment is written to a temporary name, fsynced and renamed, so a
//! segment file never exists without its complete header.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::codec::{self, Frame, Reader, Record};
use super::{sync_dir, StorageError};
use crate::api::Entry;

pub const SEGMENT_EXT: &str = "wal";
const MAGIC: &[u8; 8] = b"KVLABLOG";
/// The format new segments are written in: 2 has durable markers.
const FORMAT: u32 = 2;
/// The first format with durable markers; older segments are still read.
pub const MARKERS_FORMAT: u32 = 2;
pub const HEADER_LEN: usize = 24;

/// How far ahead of the write position the active segment is preallocated.
///
/// Each extension costs one zero-filled write and one fsync that must also
/// flush the new file size; every group commit until the next extension then
/// pays for data only (about half the latency of an `fdatasync` on a growing
/// file, measured on our VMs). 1 MiB is thousands of typical records per
/// extension while keeping the unused space per node small.
pub const PREALLOC_CHUNK: u64 = 1024 * 1024;

/// The path of the segment whose first record is `base_seq`.
pub fn segment_path(dir: &Path, base_seq: u64) -> PathBuf {
    dir.join(format!("{base_seq:020}.{SEGMENT_EXT}"))
}

/// The base seq encoded in a segment file name, if it is one.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(&format!(".{SEGMENT_EXT}"))?;
    if stem.len() != 20 {
        return None;
    }
    stem.parse().ok()
}

fn encode_header(base_seq: u64) -> Vec<u8> {
    encode_header_of(FORMAT, base_seq)
}

fn encode_header_of(format: u32, base_seq: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(MAGIC);
    codec::put_u32(&mut out, format);
    codec::put_u64(&mut out, base_seq);
    let crc = crc32fast::hash(&out);
    codec::put_u32(&mut out, crc);
    out
}

/// Checks the header and returns the segment's format.
fn check_header(buf: &[u8], expected_base: u64) -> Result<u32, &'static str> {
    if buf.len() < HEADER_LEN {
        return Err("file shorter than the segment header");
    }
    let (body, crc) = buf[..HEADER_LEN].split_at(HEADER_LEN - 4);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().unwrap()) {
        return Err("segment header checksum mismatch");
    }
    let mut r = Reader::new(body);
    let (magic, format, base) = (r.bytes(8), r.u32(), r.u64());
    if magic != Ok(&MAGIC[..]) {
        return Err("not a kvlab log segment (bad magic)");
    }
    let format = match format {
        Ok(f @ 1..=FORMAT) => f,
        _ => return Err("unsupported segment format version"),
    };
    if base != Ok(expected_base) {
        return Err("header base seq does not match the file name");
    }
    Ok(format)
}

/// Creates a new, empty segment starting at `base_seq` and opens it for
/// writing. The header is durable and the directory entry is too by the
/// time this returns. The file ends right after the header: space for records
/// is added by [`preallocate`].
pub fn create(dir: &Path, base_seq: u64) -> Result<File, StorageError> {
    let path = segment_path(dir, base_seq);
    let tmp = path.with_extension("wal.tmp");
    let io = |source| StorageError::io(&tmp, source);
    let mut file = File::create(&tmp).map_err(io)?;
    file.write_all(&encode_header(base_seq)).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, &path).map_err(|e| StorageError::io(&path, e))?;
    sync_dir(dir)?;
    // The open handle follows the file through the rename.
    Ok(file)
}

/// Opens an existing segment for writing. Not in append mode: records are
/// written at the log's own write position, which is before the end of the
/// file when there is a zero tail.
pub fn open_for_write(path: &Path) -> Result<File, StorageError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| StorageError::io(path, e))
}

/// Writes `buf` at `offset` of the segment (not fsynced).
pub fn write_at(file: &File, path: &Path, buf: &[u8], offset: u64) -> Result<(), StorageError> {
    file.write_all_at(buf, offset)
        .map_err(|e| StorageError::io(path, e))
}

/// Extends the segment from `from` (its current length) to `to` with zeros,
/// durably.
///
/// The zeros are really written, not `fallocate`d: an allocated but
/// unwritten extent is still converted to "written" by the `fdatasync` after
/// the first write into it, which is exactly the metadata flush that
/// preallocating is meant to take off the commit path.
///
/// The zeros come from the heap, not from a `static`: a static would sit in
/// the binary's read-only data, and reading it would keep those pages (and
/// the kernel's 64 KiB window around them) resident in every node for good.
pub fn preallocate(file: &File, path: &Path, from: u64, to: u64) -> Result<(), StorageError> {
    const CHUNK: u64 = 64 * 1024;
    let zeros = vec![0u8; CHUNK.min(to.saturating_sub(from)) as usize];
    let mut at = from;
    while at < to {
        let n = (to - at).min(CHUNK);
        write_at(file, path, &zeros[..n as usize], at)?;
        at += n;
    }
    file.sync_data().map_err(|e| StorageError::io(path, e))
}

/// Closes a segment that is no longer the last one: cuts its zero tail off
/// at `len`, the end of its records, and makes the segment durable.
pub fn close(file: &File, path: &Path, len: u64) -> Result<(), StorageError> {
    let io = |e| StorageError::io(path, e);
    file.set_len(len).map_err(io)?;
    file.sync_all().map_err(io)
}

/// What a scan found at the end of a segment that had a torn tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// Offset of the first byte that was not part of a valid record.
    pub offset: u64,
    /// How many bytes of damaged data were dropped: from `offset` to the
    /// start of the zero tail (or the end of the file if there is none). The
    /// preallocated zeros after them are cut off too, but are not counted.
    pub dropped_bytes: u64,
    pub reason: String,
}

/// The outcome of scanning one segment.
#[derive(Debug)]
pub struct Scan {
    /// Number of valid records.
    pub records: u64,
    /// Length of the valid prefix of the file (header plus valid records):
    /// where the next record goes.
    pub valid_len: u64,
    /// Set when the segment ended in a torn tail (only possible if `is_last`).
    pub torn: Option<TornTail>,
    /// The segment's format (1: no durable markers).
    pub format: u32,
}

/// Reads the segment at `path`, hands each entry to `on_entry` in order and
/// checks the invariants of the module doc. `is_last` allows a torn tail and
/// a zero tail.
pub fn scan(
    path: &Path,
    base_seq: u64,
    is_last: bool,
    mut on_entry: impl FnMut(Entry),
) -> Result<Scan, StorageError> {
    let buf = fs::read(path).map_err(|e| StorageError::io(path, e))?;
    let corrupt = |offset: usize, reason: String| StorageError::Corrupt {
        segment: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    let format = check_header(&buf, base_seq).map_err(|r| corrupt(0, r.into()))?;
    // Records stop at the zero tail. In a non-last segment there is none:
    // zeros there are parsed, and rejected, like any other bytes.
    let data_end = if is_last {
        zero_tail_start(&buf)
    } else {
        buf.len()
    };

    let mut offset = HEADER_LEN;
    let mut records = 0u64;
    // A record may itself end in zero bytes (an empty value ends with a zero
    // length, a marker with the high bytes of its seq), so the last one can
    // end past `data_end`: hence `<`, not `!=`.
    while offset < data_end {
        let reason = match codec::parse_record(&buf, offset) {
            Frame::Valid { payload, next } => {
                let record = codec::decode_record(payload)
                    .map_err(|e| corrupt(offset, format!("undecodable entry: {e}")))?;
                let Record::Entry(entry) = record else {
                    offset = next; // a durable marker: no seq of its own
                    continue;
                };
                // Every earlier record held `base_seq + i <= MAX_SEQ`, so
                // this cannot overflow.
                let expected = base_seq + records;
                if entry.seq > super::MAX_SEQ {
                    return Err(corrupt(offset, format!("seq {} out of range", entry.seq)));
                }
                if entry.seq != expected {
                    return Err(corrupt(
                        offset,
                        format!("expected seq {expected}, found {}", entry.seq),
                    ));
                }
                on_entry(entry);
                records += 1;
                offset = next;
                continue;
            }
            Frame::Truncated => "record extends past the end of the file",
            Frame::Invalid(reason) => reason,
        };
        // Damage at `offset`. It is a torn tail only at the end of the last
        // segment, with nothing valid behind it that was durable.
        if !is_last {
            return Err(corrupt(offset, format!("{reason} in a non-last segment")));
        }
        let mut reason = reason.to_string();
        if let Some(after) = survey_after(&buf, offset + 1, data_end) {
            let damaged = base_seq + records;
            if format < MARKERS_FORMAT {
                return Err(corrupt(
                    offset,
                    format!(
                        "{reason}, but a valid record follows at offset {}",
                        after.first
                    ),
                ));
            }
            if after.durable >= damaged {
                return Err(corrupt(
                    offset,
                    format!(
                        "{reason}, but a valid record follows at offset {} and a durable \
                         marker after the damage says seq {} was fsynced: data the node had \
                         made durable (seq {damaged} on) is damaged",
                        after.first, after.durable
                    ),
                ));
            }
            reason = format!(
                "{reason}, with valid records after it (from offset {}) but no durable \
                 marker saying seq {damaged} was ever fsynced: a write torn by a power cut",
                after.first
            );
        }
        let torn = TornTail {
            offset: offset as u64,
            dropped_bytes: (data_end - offset) as u64,
            reason,
        };
        return Ok(Scan {
            records,
            valid_len: offset as u64,
            torn: Some(torn),
            format,
        });
    }
    Ok(Scan {
        records,
        valid_len: offset as u64,
        torn: None,
        format,
    })
}

/// What lies after damage in the last segment.
struct After {
    /// The offset of the first valid record after the damage.
    first: usize,
    /// The highest seq a durable marker after the damage says was fsynced
    /// (0: none).
    durable: u64,
}

/// Looks for valid records in `from..end` (after damage) and for the
/// highest durable marker among them. Valid records are followed from one
/// to the next; after any further damage the byte-by-byte search resumes.
fn survey_after(buf: &[u8], from: usize, end: usize) -> Option<After> {
    let first = find_valid_record(buf, from, end)?;
    let mut durable = 0;
    let mut at = first;
    while at < end {
        if let Frame::Valid { payload, next } = codec::parse_record(buf, at) {
            match codec::decode_record(payload) {
                Ok(Record::Durable(d)) => durable = durable.max(d),
                Ok(Record::Entry(_)) => {}
                Err(_) => match find_valid_record(buf, at + 1, end) {
                    Some(p) => {
                        at = p;
                        continue;
                    }
                    None => break,
                },
            }
            at = next;
            continue;
        }
        match find_valid_record(buf, at + 1, end) {
            Some(p) => at = p,
            None => break,
        }
    }
    Some(After { first, durable })
}

/// Where the trailing run of zero bytes of `buf` starts (`buf.len()` if it
/// does not end in a zero). Found once, from the end, so that neither the
/// scan nor the search after damage walks the preallocated space.
fn zero_tail_start(buf: &[u8]) -> usize {
    let start = buf.iter().rposition(|&b| b != 0).map_or(0, |last| last + 1);
    start.max(HEADER_LEN)
}

/// Looks for any intact, decodable record starting in `from..end`.
///
/// This is a byte-by-byte search because after damage the length fields can
/// no longer be trusted: a flipped bit in one length must not hide the valid
/// records behind it and get them truncated as if they were a torn tail.
/// It stops at `end`, the start of the zero tail: a record starting there
/// would have length 0, which is never valid.
fn find_valid_record(buf: &[u8], from: usize, end: usize) -> Option<usize> {
    (from..end).find(|&p| match codec::parse_record(buf, p) {
        Frame::Valid { payload, .. } => codec::decode_record(payload).is_ok(),
        _ => false,
    })
}

/// The offset in the segment at `path` (first record `base_seq`) where the
/// record of `seq` starts, or where it would start if `seq` is one past the
/// segment's last record: the length to cut the segment to so that it ends
/// right before `seq`. Used to truncate a log after a divergence.
pub fn offset_of(path: &Path, base_seq: u64, seq: u64) -> Result<u64, StorageError> {
    let buf = fs::read(path).map_err(|e| StorageError::io(path, e))?;
    let corrupt = |offset: usize, reason: String| StorageError::Corrupt {
        segment: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    check_header(&buf, base_seq).map_err(|r| corrupt(0, r.into()))?;
    let mut offset = HEADER_LEN;
    let mut entries = base_seq;
    // Durable markers are skipped: they hold no seq. A marker right after
    // the last entry kept is cut with what follows (it belongs to the next
    // group).
    while entries < seq {
        match codec::parse_record(&buf, offset) {
            Frame::Valid { payload, next } => {
                if matches!(codec::decode_record(payload), Ok(Record::Entry(_))) {
                    entries += 1;
                }
                offset = next;
            }
            _ => {
                return Err(corrupt(
                    offset,
                    format!("no record before seq {seq} to cut after"),
                ))
            }
        }
    }
    Ok(offset as u64)
}

/// Cuts the file at `path` to `len` bytes and makes the cut durable.
pub fn truncate(path: &Path, len: u64) -> Result<(), StorageError> {
    let io = |e| StorageError::io(path, e);
    let file = OpenOptions::new().write(true).open(path).map_err(io)?;
    file.set_len(len).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, value: &str) -> Entry {
        Entry {
            seq,
            term: 1,
            key: format!("k{seq}"),
            value: value.into(),
            version: 1,
        }
    }

    /// The bytes of a segment at base 1 holding records `1..=n`, and the
    /// offset where each record starts.
    fn records(n: u64) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = encode_header(1);
        let mut starts = Vec::new();
        for seq in 1..=n {
            starts.push(bytes.len());
            codec::encode_entry_record(&entry(seq, &format!("v{seq}")), &mut bytes);
        }
        (bytes, starts)
    }

    /// Writes `bytes` as segment 1 of `dir` and scans it.
    fn scan_bytes(
        dir: &Path,
        bytes: &[u8],
        is_last: bool,
    ) -> Result<(Scan, Vec<u64>), StorageError> {
        let path = segment_path(dir, 1);
        fs::write(&path, bytes).unwrap();
        let mut seqs = Vec::new();
        let scan = scan(&path, 1, is_last, |e| seqs.push(e.seq))?;
        Ok((scan, seqs))
    }

    #[test]
    fn zero_tail_is_a_clean_end() {
        let dir = tempfile::tempdir().unwrap();
        let (mut bytes, _) = records(5);
        let data_end = bytes.len();
        bytes.resize(data_end + PREALLOC_CHUNK as usize, 0);
        let (scan, seqs) = scan_bytes(dir.path(), &bytes, true).unwrap();
        assert_eq!(scan.torn, None);
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
        assert_eq!(scan.valid_len, data_end as u64);
    }

    #[test]
    fn a_record_may_end_in_zero_bytes_before_the_zero_tail() {
        // An empty value ends the record with its zero length: the zero run
        // found from the end starts inside that record.
        let dir = tempfile::tempdir().unwrap();
        let (mut bytes, _) = records(2);
        codec::encode_entry_record(&entry(3, ""), &mut bytes);
        let data_end = bytes.len();
        bytes.resize(data_end + 1000, 0);
        let (scan, seqs) = scan_bytes(dir.path(), &bytes, true).unwrap();
        assert_eq!((scan.torn, seqs.len()), (None, 3));
        assert_eq!(scan.valid_len, data_end as u64);
    }

    #[test]
    fn zero_tail_in_a_non_last_segment_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let (mut bytes, _) = records(5);
        let data_end = bytes.len();
        bytes.resize(data_end + 100, 0);
        let err = scan_bytes(dir.path(), &bytes, false).unwrap_err();
        assert!(
            matches!(err, StorageError::Corrupt { offset, .. } if offset == data_end as u64),
            "{err}"
        );
    }

    #[test]
    fn torn_record_followed_by_zeros_is_a_torn_tail() {
        // A crash while writing the last record into preallocated space: all
        // but its last byte made it, that one is still zero.
        let dir = tempfile::tempdir().unwrap();
        let (mut bytes, starts) = records(5);
        let last = starts[4];
        let written = bytes.len() - 1;
        bytes.truncate(written);
        bytes.resize(written + 4096, 0);
        let (scan, seqs) = scan_bytes(dir.path(), &bytes, true).unwrap();
        let torn = scan.torn.expect("torn tail");
        assert_eq!(torn.offset, last as u64);
        assert_eq!(torn.reason, "checksum mismatch");
        // Only the damaged bytes count as dropped, not the zeros after them.
        assert_eq!(torn.dropped_bytes, (written - last) as u64);
        assert_eq!(seqs, vec![1, 2, 3, 4]);
        assert_eq!(scan.valid_len, last as u64);
    }

    #[test]
    fn damage_before_a_valid_record_past_a_zero_run_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let (mut bytes, starts) = records(3);
        bytes[starts[2] + 12] ^= 0x5a;
        bytes.resize(bytes.len() + 5000, 0);
        codec::encode_entry_record(&entry(4, "v4"), &mut bytes);
        // A marker written after seq 3 was fsynced: seq 3 was durable.
        codec::encode_marker_record(4, &mut bytes);
        bytes.resize(bytes.len() + 5000, 0);
        let err = scan_bytes(dir.path(), &bytes, true).unwrap_err();
        match err {
            StorageError::Corrupt { offset, reason, .. } => {
                assert_eq!(offset, starts[2] as u64);
                assert!(reason.contains("valid record follows"), "{reason}");
                assert!(reason.contains("durable"), "{reason}");
            }
            other => panic!("expected Corrupt, got {other}"),
        }
    }

    /// A power cut's torn write: its first bytes never reached the disk, the
    /// records after them did, and no marker says any of it was fsynced.
    #[test]
    fn a_hole_before_records_never_fsynced_is_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (mut bytes, starts) = records(2);
        // The group of seqs 3 and 4, after a marker for seqs 1..=2.
        let group = bytes.len();
        codec::encode_marker_record(2, &mut bytes);
        codec::encode_entry_record(&entry(3, "v3"), &mut bytes);
        codec::encode_entry_record(&entry(4, "v4"), &mut bytes);
        let written = bytes.len();
        bytes[group..group + 16].fill(0);
        bytes.resize(written + 4096, 0);
        let (scan, seqs) = scan_bytes(dir.path(), &bytes, true).unwrap();
        assert_eq!(seqs, vec![1, 2]);
        let torn = scan.torn.expect("torn tail");
        assert_eq!(torn.offset, group as u64);
        assert!(torn.reason.contains("power cut"), "{}", torn.reason);
        assert_eq!(torn.dropped_bytes, (written - group) as u64);
        assert_eq!(scan.valid_len, group as u64);
        let _ = starts;
    }

    /// Segments written before durable markers existed keep the strict rule.
    #[test]
    fn in_a_format_1_segment_a_valid_record_after_damage_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let (records_v2, starts) = records(3);
        let mut bytes = encode_header_of(1, 1);
        bytes.extend_from_slice(&records_v2[HEADER_LEN..]);
        bytes[starts[1]..starts[1] + 16].fill(0);
        bytes.resize(bytes.len() + 100, 0);
        let err = scan_bytes(dir.path(), &bytes, true).unwrap_err();
        assert!(err.to_string().contains("valid record follows"), "{err}");
    }

    #[test]
    fn cutting_after_a_seq_skips_markers() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = encode_header(1);
        codec::encode_entry_record(&entry(1, "a"), &mut bytes);
        let after_one = bytes.len() as u64;
        codec::encode_marker_record(1, &mut bytes);
        codec::encode_entry_record(&entry(2, "b"), &mut bytes);
        let after_two = bytes.len() as u64;
        let path = segment_path(dir.path(), 1);
        fs::write(&path, &bytes).unwrap();
        assert_eq!(offset_of(&path, 1, 1).unwrap(), HEADER_LEN as u64);
        assert_eq!(offset_of(&path, 1, 2).unwrap(), after_one);
        assert_eq!(offset_of(&path, 1, 3).unwrap(), after_two);
    }

    /// Found by fuzzing: a segment starting at `u64::MAX` with two records
    /// made the scan overflow computing the second record's seq.
    #[test]
    fn a_seq_past_the_last_storage_holds_is_corruption_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = encode_header(u64::MAX);
        codec::encode_entry_record(&entry(u64::MAX, "a"), &mut bytes);
        codec::encode_entry_record(&entry(0, "b"), &mut bytes);
        let path = segment_path(dir.path(), u64::MAX);
        fs::write(&path, &bytes).unwrap();
        let err = scan(&path, u64::MAX, true, |_| {}).unwrap_err();
        match err {
            StorageError::Corrupt { offset, reason, .. } => {
                assert_eq!(offset, HEADER_LEN as u64);
                assert!(reason.contains("out of range"), "{reason}");
            }
            other => panic!("expected Corrupt, got {other}"),
        }
    }

    #[test]
    fn zero_tail_start_is_found_from_the_end() {
        let mut buf = vec![1u8; HEADER_LEN];
        assert_eq!(zero_tail_start(&buf), HEADER_LEN);
        buf.extend([0, 0, 7, 0, 0, 0]);
        assert_eq!(zero_tail_start(&buf), HEADER_LEN + 3);
        // Never inside the header, even for a file of zeros.
        assert_eq!(zero_tail_start(&[0u8; 100]), HEADER_LEN);
    }

    #[test]
    fn preallocate_writes_zeros_up_to_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let file = create(dir.path(), 1).unwrap();
        let path = segment_path(dir.path(), 1);
        let end = HEADER_LEN as u64 + 100_000;
        preallocate(&file, &path, HEADER_LEN as u64, end).unwrap();
        let bytes = fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, end);
        assert!(bytes[HEADER_LEN..].iter().all(|&b| b == 0));
        close(&file, &path, HEADER_LEN as u64).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), HEADER_LEN as u64);
    }
}

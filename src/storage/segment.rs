//! Log segment files: naming, the file header, creation and scanning.
//!
//! The log is a sequence of segment files in the data directory, each named
//! after the seq of the first record it holds (`00000000000000000001.wal`),
//! so sorting the names sorts the log. A segment file is:
//!
//! ```text
//! header (24 bytes): magic "KVLABLOG" | format u32 | base_seq u64 | crc32 u32
//! records:           len u32 | crc32 u32 | payload   (see `codec`)
//! ```
//!
//! Invariants a scan checks:
//! - the header is intact and its `base_seq` matches the file name;
//! - record `i` of the segment holds seq `base_seq + i` (no gaps, no repeats);
//! - every record is intact, except that the *last* segment may end in a torn
//!   tail (a crash in the middle of a write). A tail is only "torn" if no
//!   valid record can be found anywhere after the damage; otherwise the damage
//!   is in the middle of the log and is reported as corruption.
//!
//! Known limit: the torn-tail rule assumes a crash leaves a *prefix* of the
//! last write, which holds for a killed process. After a power loss, the
//! pages of a write that was never fsynced may reach the disk out of order,
//! leaving a hole followed by valid records; that is reported as corruption
//! (refusing to serve) even though only unacknowledged writes were hit.
//! Telling the two apart would need fsync-boundary markers in the log.
//!
//! A new segment is written to a temporary name, fsynced and renamed, so a
//! segment file never exists without its complete header.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::codec::{self, Frame, Reader};
use super::{sync_dir, StorageError};
use crate::api::Entry;

pub const SEGMENT_EXT: &str = "wal";
const MAGIC: &[u8; 8] = b"KVLABLOG";
const FORMAT: u32 = 1;
pub const HEADER_LEN: usize = 24;

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
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(MAGIC);
    codec::put_u32(&mut out, FORMAT);
    codec::put_u64(&mut out, base_seq);
    let crc = crc32fast::hash(&out);
    codec::put_u32(&mut out, crc);
    out
}

fn check_header(buf: &[u8], expected_base: u64) -> Result<(), &'static str> {
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
    if format != Ok(FORMAT) {
        return Err("unsupported segment format version");
    }
    if base != Ok(expected_base) {
        return Err("header base seq does not match the file name");
    }
    Ok(())
}

/// Creates a new, empty segment starting at `base_seq` and opens it for
/// appending. The header is durable and the directory entry is too by the
/// time this returns.
pub fn create(dir: &Path, base_seq: u64) -> Result<File, StorageError> {
    let path = segment_path(dir, base_seq);
    let tmp = path.with_extension("wal.tmp");
    let io = |source| StorageError::io(&tmp, source);
    let mut file = File::create(&tmp).map_err(io)?;
    file.write_all(&encode_header(base_seq)).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    fs::rename(&tmp, &path).map_err(|e| StorageError::io(&path, e))?;
    sync_dir(dir)?;
    open_for_append(&path)
}

pub fn open_for_append(path: &Path) -> Result<File, StorageError> {
    OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| StorageError::io(path, e))
}

/// What a scan found at the end of a segment that had a torn tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// Offset of the first byte that was not part of a valid record.
    pub offset: u64,
    /// How many bytes from `offset` to the end of the file.
    pub dropped_bytes: u64,
    pub reason: String,
}

/// The outcome of scanning one segment.
#[derive(Debug)]
pub struct Scan {
    /// Number of valid records.
    pub records: u64,
    /// Length of the valid prefix of the file (header plus valid records).
    pub valid_len: u64,
    /// Set when the segment ended in a torn tail (only possible if `is_last`).
    pub torn: Option<TornTail>,
}

/// Reads the segment at `path`, hands each entry to `on_entry` in order and
/// checks the invariants of the module doc. `is_last` allows a torn tail.
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
    check_header(&buf, base_seq).map_err(|r| corrupt(0, r.into()))?;

    let mut offset = HEADER_LEN;
    let mut records = 0u64;
    while offset < buf.len() {
        let reason = match codec::parse_record(&buf, offset) {
            Frame::Valid { payload, next } => {
                let entry = codec::decode_entry(payload)
                    .map_err(|e| corrupt(offset, format!("undecodable entry: {e}")))?;
                let expected = base_seq + records;
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
        // segment, with nothing valid behind it.
        if !is_last {
            return Err(corrupt(offset, format!("{reason} in a non-last segment")));
        }
        if let Some(found) = find_valid_record(&buf, offset + 1) {
            return Err(corrupt(
                offset,
                format!("{reason}, but a valid record follows at offset {found}"),
            ));
        }
        let torn = TornTail {
            offset: offset as u64,
            dropped_bytes: (buf.len() - offset) as u64,
            reason: reason.to_string(),
        };
        return Ok(Scan {
            records,
            valid_len: offset as u64,
            torn: Some(torn),
        });
    }
    Ok(Scan {
        records,
        valid_len: offset as u64,
        torn: None,
    })
}

/// Looks for any intact, decodable record starting at or after `from`.
///
/// This is a byte-by-byte search because after damage the length fields can
/// no longer be trusted: a flipped bit in one length must not hide the valid
/// records behind it and get them truncated as if they were a torn tail.
fn find_valid_record(buf: &[u8], from: usize) -> Option<usize> {
    (from..buf.len()).find(|&p| match codec::parse_record(buf, p) {
        Frame::Valid { payload, .. } => codec::decode_entry(payload).is_ok(),
        _ => false,
    })
}

/// Cuts the file at `path` to `len` bytes and makes the cut durable.
pub fn truncate(path: &Path, len: u64) -> Result<(), StorageError> {
    let io = |e| StorageError::io(path, e);
    let file = OpenOptions::new().write(true).open(path).map_err(io)?;
    file.set_len(len).map_err(io)?;
    file.sync_all().map_err(io)
}

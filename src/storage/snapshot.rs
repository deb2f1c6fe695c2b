//! Snapshot files: the whole state of a node at one log position.
//!
//! A snapshot lets the log be truncated: everything up to its `seq` is in it.
//! It is named after that seq (`00000000000000001000.snap`) and laid out as:
//!
//! ```text
//! magic "KVLABSNP" | format u32 | seq u64 | term u64 | count u64
//! count x (key str | value str | version u64)      -- str = len u32 | UTF-8
//! crc32 u32                                        -- over every byte before it
//! ```
//!
//! Invariant: a file with the `.snap` name is complete. It is written under a
//! temporary name, fsynced, renamed into place and the directory is fsynced,
//! so a crash leaves either the old set of snapshots or the new one, plus at
//! worst a `.tmp` file that recovery deletes.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::codec::{self, Reader};
use super::{sync_dir, StorageError};
use crate::api::Versioned;

pub const SNAPSHOT_EXT: &str = "snap";
const MAGIC: &[u8; 8] = b"KVLABSNP";
const FORMAT: u32 = 1;
/// Encoded bytes are handed to the file (and the checksum) in chunks of
/// about this size, so writing a big snapshot needs little extra memory.
const CHUNK: usize = 1 << 20;

/// The full state of a node as of log position `seq`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The last log entry reflected in `data` (0: none).
    pub seq: u64,
    /// The term of that entry.
    pub term: u64,
    pub data: BTreeMap<String, Versioned>,
}

pub fn snapshot_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.{SNAPSHOT_EXT}"))
}

pub fn parse_snapshot_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(&format!(".{SNAPSHOT_EXT}"))?;
    if stem.len() != 20 {
        return None;
    }
    stem.parse().ok()
}

/// Writes `snap` durably into `dir` and returns its path.
pub fn write(dir: &Path, snap: &Snapshot) -> Result<PathBuf, StorageError> {
    let path = snapshot_path(dir, snap.seq);
    let tmp = path.with_extension("snap.tmp");
    let io = |source| StorageError::io(&tmp, source);
    let mut file = File::create(&tmp).map_err(io)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = Vec::with_capacity(CHUNK + 4096);

    buf.extend_from_slice(MAGIC);
    codec::put_u32(&mut buf, FORMAT);
    codec::put_u64(&mut buf, snap.seq);
    codec::put_u64(&mut buf, snap.term);
    codec::put_u64(&mut buf, snap.data.len() as u64);
    for (key, v) in &snap.data {
        codec::put_str(&mut buf, key);
        codec::put_str(&mut buf, &v.value);
        codec::put_u64(&mut buf, v.version);
        if buf.len() >= CHUNK {
            hasher.update(&buf);
            file.write_all(&buf).map_err(io)?;
            buf.clear();
        }
    }
    hasher.update(&buf);
    codec::put_u32(&mut buf, hasher.finalize());
    file.write_all(&buf).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);

    fs::rename(&tmp, &path).map_err(|e| StorageError::io(&path, e))?;
    sync_dir(dir)?;
    Ok(path)
}

/// Reads and fully validates the snapshot at `path`.
pub fn read(path: &Path) -> Result<Snapshot, StorageError> {
    let buf = fs::read(path).map_err(|e| StorageError::io(path, e))?;
    let corrupt = |reason: &str| StorageError::CorruptSnapshot {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if buf.len() < MAGIC.len() + 4 + 3 * 8 + 4 {
        return Err(corrupt("file too short"));
    }
    let (body, crc) = buf.split_at(buf.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().unwrap()) {
        return Err(corrupt("checksum mismatch"));
    }
    decode(body).map_err(|e| corrupt(e.0))
}

fn decode(body: &[u8]) -> Result<Snapshot, codec::DecodeError> {
    let mut r = Reader::new(body);
    if r.bytes(MAGIC.len())? != MAGIC {
        return Err(codec::DecodeError("not a kvlab snapshot (bad magic)"));
    }
    if r.u32()? != FORMAT {
        return Err(codec::DecodeError("unsupported snapshot format version"));
    }
    let seq = r.u64()?;
    if seq > super::MAX_SEQ {
        return Err(codec::DecodeError("snapshot seq out of range"));
    }
    let term = r.u64()?;
    let count = r.u64()?;
    // Keys were written in sorted order, so collecting a Vec and handing it to
    // BTreeMap (which bulk-builds from sorted input) beats inserting one by one.
    let mut pairs = Vec::with_capacity(count.min(body.len() as u64 / 16) as usize);
    for _ in 0..count {
        let key = r.string()?;
        let value = r.string()?;
        let version = r.u64()?;
        pairs.push((key, Versioned { value, version }));
    }
    if !r.is_empty() {
        return Err(codec::DecodeError("trailing bytes after the last key"));
    }
    Ok(Snapshot {
        seq,
        term,
        data: pairs.into_iter().collect(),
    })
}

/// Seqs of the snapshot files in `dir`, newest first.
pub fn list(dir: &Path) -> Result<Vec<u64>, StorageError> {
    let mut seqs: Vec<u64> = super::list_dir(dir)?
        .iter()
        .filter_map(|name| parse_snapshot_name(name))
        .collect();
    seqs.sort_unstable_by(|a, b| b.cmp(a));
    Ok(seqs)
}

/// Deletes every snapshot older than `keep_seq`; returns the deleted paths.
pub fn remove_older(dir: &Path, keep_seq: u64) -> Result<Vec<PathBuf>, StorageError> {
    let mut removed = Vec::new();
    for seq in list(dir)?.into_iter().filter(|&s| s < keep_seq) {
        let path = snapshot_path(dir, seq);
        fs::remove_file(&path).map_err(|e| StorageError::io(&path, e))?;
        removed.push(path);
    }
    Ok(removed)
}

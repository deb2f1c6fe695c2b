//! Fuzz target: crash recovery of a whole data directory (`Wal::open`).
//!
//! The input describes up to four files, segments and snapshots, written to
//! an empty directory before recovery runs. Byte 0: bit 0 builds valid
//! headers and checksums (so the fuzzer gets past them), bits 1-2 are the
//! number of files minus one. Then per file: a kind byte (even: segment,
//! odd: snapshot), a seq byte naming the file (255 and 254 name seqs near
//! `u64::MAX`, others themselves), a u16 length and that many bytes.
//!
//! Beyond "no panic", a recovery that succeeds must leave a log that
//! accepts the next seq, and recovering again must find that entry on top
//! of the same state.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kvlab::api::Entry;
use kvlab::storage::{codec, segment, snapshot, FsyncPolicy, StorageConfig, Wal};
use libfuzzer_sys::fuzz_target;

/// The on-disk magics and format versions (private in the library; the
/// segment and snapshot module docs give the layouts).
const SEGMENT_MAGIC: &[u8; 8] = b"KVLABLOG";
const SNAPSHOT_MAGIC: &[u8; 8] = b"KVLABSNP";
const FORMAT: u32 = 1;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    })
}

fn scratch() -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    base.join(format!("kvlab-fuzz-recover-{}", std::process::id()))
}

fn seq_of(b: u8) -> u64 {
    match b {
        255 => u64::MAX,
        254 => u64::MAX - 1,
        n => n as u64,
    }
}

/// A segment: a valid header for `base`, then `records` with every record
/// checksum that can be repaired repaired.
fn valid_segment(base: u64, records: &[u8]) -> Vec<u8> {
    let mut out = SEGMENT_MAGIC.to_vec();
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&base.to_le_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    let start = out.len();
    out.extend_from_slice(records);
    let mut at = start;
    while at + codec::RECORD_HEADER_LEN <= out.len() {
        let len = u32::from_le_bytes(out[at..at + 4].try_into().unwrap()) as usize;
        let payload = at + codec::RECORD_HEADER_LEN;
        if len == 0 || payload + len > out.len() {
            break;
        }
        let crc = crc32fast::hash(&out[payload..payload + len]);
        out[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        at = payload + len;
    }
    out
}

/// A snapshot: magic and format, `body` (seq, term, count, pairs), checksum.
fn valid_snapshot(body: &[u8]) -> Vec<u8> {
    let mut out = SNAPSHOT_MAGIC.to_vec();
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(body);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn write_files(dir: &Path, data: &[u8]) -> Option<()> {
    let (&mode, mut rest) = data.split_first()?;
    let valid = mode & 1 != 0;
    let files = ((mode >> 1) & 3) + 1;
    for _ in 0..files {
        if rest.len() < 4 {
            break;
        }
        let (kind, seq) = (rest[0], seq_of(rest[1]));
        let len = (u16::from_le_bytes([rest[2], rest[3]]) as usize).min(rest.len() - 4);
        let content = &rest[4..4 + len];
        rest = &rest[4 + len..];
        let (path, bytes) = match (kind % 2, valid) {
            (0, true) => (segment::segment_path(dir, seq), valid_segment(seq, content)),
            (0, false) => (segment::segment_path(dir, seq), content.to_vec()),
            (_, true) => (snapshot::snapshot_path(dir, seq), valid_snapshot(content)),
            (_, false) => (snapshot::snapshot_path(dir, seq), content.to_vec()),
        };
        std::fs::write(path, bytes).unwrap();
    }
    Some(())
}

fn config(dir: &Path) -> StorageConfig {
    StorageConfig {
        dir: dir.to_path_buf(),
        fsync: FsyncPolicy::Never,
        segment_bytes: 4096,
        snapshot_every: None,
    }
}

fn check(dir: &Path) {
    let Ok((wal, recovered)) = Wal::open_blocking(config(dir)) else {
        return;
    };
    let state = recovered.state;
    assert_eq!(recovered.report.last_seq, state.seq);
    assert_eq!(wal.last_seq(), state.seq);
    for (i, e) in recovered.tail.iter().enumerate() {
        let from_end = (recovered.tail.len() - 1 - i) as u64;
        assert_eq!(e.seq, state.seq - from_end, "tail is not contiguous");
    }
    let Some(next) = state.seq.checked_add(1) else {
        runtime().block_on(wal.close());
        return;
    };
    let entry = Entry {
        seq: next,
        term: state.term,
        key: "fuzz".into(),
        value: "after recovery".into(),
        version: 1,
    };
    let appended = runtime().block_on(wal.append(vec![entry.clone()]));
    runtime().block_on(wal.close());
    appended.unwrap_or_else(|e| panic!("a recovered log refuses seq {next}: {e}"));

    let (wal, again) = Wal::open_blocking(config(dir)).expect("recovering a log we just wrote");
    runtime().block_on(wal.close());
    assert_eq!(again.state.seq, next);
    let mut expected = state.data.clone();
    expected.insert(
        entry.key.clone(),
        kvlab::api::Versioned {
            value: entry.value.clone(),
            version: entry.version,
        },
    );
    assert_eq!(again.state.data, expected);
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    if write_files(&dir, data).is_some() {
        check(&dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
});

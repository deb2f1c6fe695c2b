//! Fuzz target: one WAL segment file, as recovery reads it.
//!
//! The input is a whole segment file (24-byte header, then records). The
//! first byte is not part of it but chooses how it is read:
//! - bit 0: scan it as the last segment (zero tail and torn tail allowed);
//! - bit 1: repair the checksums first (header and every record whose
//!   length fits), so the fuzzer reaches the entry decoder and the seq
//!   checks instead of stopping at a CRC it cannot guess;
//! - bits 2-3: the base seq the file is named after (1, from the header, or
//!   near `u64::MAX`).
//!
//! Invariants checked beyond "no panic": a successful scan hands out
//! `records` entries with contiguous seqs from the base, its `valid_len`
//! lies in the file, rescanning the valid prefix finds the same entries and
//! no damage, and every decoded entry survives an encode/decode round trip.

#![no_main]

use std::path::PathBuf;

use kvlab::api::Entry;
use kvlab::storage::codec;
use kvlab::storage::segment;
use libfuzzer_sys::fuzz_target;

const HEADER_LEN: usize = segment::HEADER_LEN;

/// A private directory on tmpfs where possible: the scan API reads files.
fn scratch() -> PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("kvlab-fuzz-segment-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Rewrites the header CRC and the CRC of each record whose declared length
/// fits in the buffer, walking records the way the scanner does.
fn repair_checksums(buf: &mut [u8]) {
    if buf.len() < HEADER_LEN {
        return;
    }
    let crc = crc32fast::hash(&buf[..HEADER_LEN - 4]);
    buf[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    let mut at = HEADER_LEN;
    while at + codec::RECORD_HEADER_LEN <= buf.len() {
        let len = u32::from_le_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
        let start = at + codec::RECORD_HEADER_LEN;
        if len == 0 || start + len > buf.len() {
            return;
        }
        let crc = crc32fast::hash(&buf[start..start + len]);
        buf[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        at = start + len;
    }
}

fn check_entry_round_trip(e: &Entry) {
    let mut buf = Vec::new();
    codec::encode_entry_record(e, &mut buf);
    let codec::Frame::Valid { payload, next } = codec::parse_record(&buf, 0) else {
        panic!("an encoded record does not parse: {e:?}");
    };
    assert_eq!(next, buf.len());
    assert_eq!(&codec::decode_entry(payload).unwrap(), e);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, file)) = data.split_first() else {
        return;
    };
    // The bare decoder, on the raw bytes.
    if let Ok(e) = codec::decode_entry(file) {
        check_entry_round_trip(&e);
    }

    let is_last = mode & 1 != 0;
    let mut file = file.to_vec();
    if mode & 2 != 0 {
        repair_checksums(&mut file);
    }
    let header_base = file
        .get(12..20)
        .map_or(1, |b| u64::from_le_bytes(b.try_into().unwrap()));
    let base = match (mode >> 2) & 3 {
        0 => 1,
        1 => header_base,
        2 => u64::MAX - (header_base & 0xff),
        _ => header_base & 0xffff,
    };

    let dir = scratch();
    let path = segment::segment_path(&dir, base);
    std::fs::write(&path, &file).unwrap();
    let mut entries = Vec::new();
    let result = segment::scan(&path, base, is_last, |e| entries.push(e));
    if let Ok(scan) = &result {
        assert_eq!(scan.records, entries.len() as u64);
        assert!(scan.valid_len as usize <= file.len());
        assert!(scan.valid_len as usize >= HEADER_LEN);
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.seq, base.wrapping_add(i as u64));
            check_entry_round_trip(e);
        }
        // The valid prefix alone is a clean segment holding the same entries.
        std::fs::write(&path, &file[..scan.valid_len as usize]).unwrap();
        let mut again = Vec::new();
        let rescan = segment::scan(&path, base, is_last, |e| again.push(e))
            .expect("the valid prefix of a segment must scan");
        assert!(rescan.torn.is_none());
        assert_eq!(again, entries);
        // Cutting before any record it holds finds that record's start.
        for k in [0, entries.len() as u64 / 2, entries.len() as u64] {
            let off = segment::offset_of(&path, base, base.wrapping_add(k));
            assert!(off.is_ok(), "offset_of seq {k} of {}", entries.len());
        }
    } else {
        let _ = segment::offset_of(&path, base, base.wrapping_add(mode as u64 >> 4));
    }
    let _ = std::fs::remove_file(&path);
});

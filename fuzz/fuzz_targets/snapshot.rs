//! Fuzz target: a snapshot file, as recovery reads it (`snapshot::read`).
//!
//! The first input byte chooses the mode, the rest is the file:
//! - bit 0: the rest is the file's body and the target appends its correct
//!   CRC-32, so the fuzzer reaches the decoder behind the checksum;
//! - otherwise the bytes are the whole file, checksum included.
//!
//! Beyond "no panic": a snapshot that reads is written back with
//! `snapshot::write` and read again unchanged, and a corrupt file is
//! reported as `CorruptSnapshot`, never as another kind of error.

#![no_main]

use std::path::PathBuf;

use kvlab::storage::{snapshot, StorageError};
use libfuzzer_sys::fuzz_target;

/// A private directory on tmpfs where possible: the snapshot API reads files.
fn scratch() -> PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("kvlab-fuzz-snapshot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut file = rest.to_vec();
    if mode & 1 != 0 {
        let crc = crc32fast::hash(&file);
        file.extend_from_slice(&crc.to_le_bytes());
    }
    let dir = scratch();
    let path = dir.join("input.snap");
    std::fs::write(&path, &file).unwrap();
    match snapshot::read(&path) {
        Ok(snap) => {
            let written = snapshot::write(&dir, &snap).expect("writing a snapshot back");
            let again = snapshot::read(&written).expect("a written snapshot reads");
            assert_eq!(again, snap);
            let _ = std::fs::remove_file(&written);
        }
        Err(StorageError::CorruptSnapshot { .. }) => {}
        Err(other) => panic!("unexpected error kind for a bad snapshot: {other}"),
    }
    let _ = std::fs::remove_file(&path);
});

//! Tests of the storage engine through its public API: what survives a
//! restart, and how damage to the files is told apart (torn tail vs. middle).

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kvlab::api::{Entry, Versioned};
use kvlab::storage::{FsyncPolicy, Recovered, Snapshot, StorageConfig, StorageError, Wal};

fn entry(seq: u64) -> Entry {
    Entry {
        seq,
        term: 1,
        key: format!("key-{}", seq % 7),
        value: format!("value-{seq}"),
        version: seq,
    }
}

fn entries(range: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    range.map(entry).collect()
}

/// The state the entries `1..=last` produce.
fn expected_state(last: u64) -> BTreeMap<String, Versioned> {
    let mut map = BTreeMap::new();
    for e in entries(1..=last) {
        let v = Versioned {
            value: e.value,
            version: e.version,
        };
        map.insert(e.key, v);
    }
    map
}

fn config(dir: &Path) -> StorageConfig {
    let mut c = StorageConfig::new(dir);
    c.fsync = FsyncPolicy::Always;
    c
}

async fn open(dir: &Path) -> (Wal, Recovered) {
    Wal::open(config(dir)).await.expect("open")
}

/// Opens `dir`, appends `1..=n` in batches of 5 and closes it again.
async fn write_log(dir: &Path, n: u64) {
    let (wal, _) = open(dir).await;
    for start in (1..=n).step_by(5) {
        wal.append(entries(start..=(start + 4).min(n)))
            .await
            .unwrap();
    }
    wal.close().await;
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    files_with_ext(dir, "wal")
}

fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    out.sort();
    out
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x5a;
    fs::write(path, bytes).unwrap();
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

/// The bytes of a durable marker record: its header and payload.
const MARKER_RECORD: u64 = 8 + kvlab::storage::codec::MARKER_LEN as u64;

/// Offset of the start of each entry record in a segment (header is 24
/// bytes), durable markers skipped. The records stop at the end of the file
/// or at the preallocated zero tail of the last segment (a zero length).
fn record_offsets(path: &Path) -> Vec<u64> {
    all_records(path)
        .into_iter()
        .filter(|&(_, len)| len != kvlab::storage::codec::MARKER_LEN)
        .map(|(at, _)| at)
        .collect()
}

/// Offset and payload length of every record, durable markers included.
fn all_records(path: &Path) -> Vec<(u64, usize)> {
    let bytes = fs::read(path).unwrap();
    let mut records = Vec::new();
    let mut at = 24usize;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        records.push((at as u64, len));
        at += 8 + len;
    }
    records
}

/// Where the records of a segment end: the start of its zero tail, if any.
fn records_end(path: &Path) -> u64 {
    let (last, len) = *all_records(path).last().unwrap();
    last + 8 + len as u64
}

#[tokio::test]
async fn appends_round_trip_through_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, rec) = open(dir.path()).await;
    assert_eq!(rec.state.seq, 0);
    assert_eq!(wal.append(entries(1..=3)).await.unwrap(), 3);
    assert_eq!(wal.append(entries(4..=10)).await.unwrap(), 10);
    assert_eq!(wal.durable_seq(), 10);
    wal.close().await;

    let (wal, rec) = open(dir.path()).await;
    assert_eq!(rec.state.seq, 10);
    assert_eq!(rec.state.term, 1);
    assert_eq!(rec.state.data, expected_state(10));
    assert_eq!(rec.tail, entries(1..=10));
    assert_eq!(rec.report.torn_tail, None);
    // The log continues where it stopped.
    assert_eq!(wal.append(entries(11..=11)).await.unwrap(), 11);
}

#[tokio::test]
async fn out_of_order_append_is_refused_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path()).await;
    wal.append(entries(1..=2)).await.unwrap();
    let err = wal.append(entries(4..=4)).await.unwrap_err();
    assert!(matches!(
        err,
        StorageError::OutOfOrder {
            expected: 3,
            got: 4
        }
    ));
    assert_eq!(wal.append(entries(3..=3)).await.unwrap(), 3);
}

#[tokio::test]
async fn empty_directory_is_a_fresh_state() {
    let dir = tempfile::tempdir().unwrap();
    let (_wal, rec) = open(dir.path()).await;
    assert!(!rec.report.created_dir);
    assert_eq!(rec.state, Snapshot::default());
    assert!(rec.tail.is_empty());
    assert_eq!(segments(dir.path()).len(), 1);
}

#[tokio::test]
async fn missing_directory_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a/b/node-1");
    let (wal, rec) = open(&data).await;
    assert!(rec.report.created_dir);
    assert_eq!(rec.state.seq, 0);
    wal.append(entries(1..=1)).await.unwrap();
    assert!(data.is_dir());
}

#[tokio::test]
async fn torn_tail_is_truncated_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 10).await;
    let seg = &segments(dir.path())[0];
    let last_record = *record_offsets(seg).last().unwrap();
    let full = records_end(seg);
    // Cut the last record in the middle, as a crash mid-write would (this
    // cuts the preallocated zero tail off too, as if it had never been).
    // Cut after a non-zero byte (the low byte of the seq): trailing zeros of a
    // torn record cannot be told from a zero tail, so they are not counted in
    // `dropped_bytes`.
    let cut = last_record + 9;
    OpenOptions::new()
        .write(true)
        .open(seg)
        .unwrap()
        .set_len(cut)
        .unwrap();

    let (wal, rec) = open(dir.path()).await;
    let torn = rec.report.torn_tail.clone().expect("torn tail reported");
    assert_eq!(torn.offset, last_record);
    assert_eq!(torn.dropped_bytes, cut - last_record);
    assert!(rec.report.to_string().contains("TORN TAIL"));
    assert_eq!(rec.state.seq, 9);
    assert_eq!(rec.state.data, expected_state(9));
    assert_eq!(file_len(seg), last_record);
    // The dropped entry can be written again and survives the next restart.
    wal.append(entries(10..=10)).await.unwrap();
    wal.close().await;
    let (_wal, rec) = open(dir.path()).await;
    assert_eq!(rec.report.torn_tail, None);
    assert_eq!(rec.state.seq, 10);
    // Seq 10 again, after a durable marker for 1..=9 (24 bytes).
    assert_eq!(records_end(seg), full + MARKER_RECORD);
}

#[tokio::test]
async fn torn_write_into_the_preallocated_tail_is_a_torn_tail() {
    // The last record half written over the zeros, as a crash mid-write
    // leaves it: the file length does not change, the record's end is zeros.
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 10).await;
    let seg = &segments(dir.path())[0];
    let last_record = *record_offsets(seg).last().unwrap();
    let end = records_end(seg);
    let mut bytes = fs::read(seg).unwrap();
    let len = bytes.len();
    assert!(len as u64 > end, "the segment has a zero tail");
    bytes[(last_record + 11) as usize..end as usize].fill(0);
    fs::write(seg, &bytes).unwrap();

    let (wal, rec) = open(dir.path()).await;
    let torn = rec.report.torn_tail.clone().expect("torn tail reported");
    assert_eq!(torn.offset, last_record);
    assert_eq!(rec.state.data, expected_state(9));
    wal.append(entries(10..=10)).await.unwrap();
    wal.close().await;
    let (_wal, rec) = open(dir.path()).await;
    assert_eq!(rec.report.torn_tail, None);
    assert_eq!(rec.state.data, expected_state(10));
    assert_eq!(records_end(seg), end + MARKER_RECORD);
}

#[tokio::test]
async fn preallocated_zero_tail_is_a_clean_end() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 10).await;
    let seg = &segments(dir.path())[0];
    assert!(
        file_len(seg) > records_end(seg),
        "the segment has a zero tail"
    );
    let (wal, rec) = open(dir.path()).await;
    assert_eq!(rec.report.torn_tail, None);
    assert!(!rec.report.to_string().contains("TORN"), "{}", rec.report);
    assert_eq!(rec.tail, entries(1..=10));
    // Appends go on over the zeros, not after them.
    let len = file_len(seg);
    wal.append(entries(11..=12)).await.unwrap();
    wal.close().await;
    assert_eq!(file_len(seg), len);
    let (_wal, rec) = open(dir.path()).await;
    assert_eq!(rec.tail, entries(1..=12));
}

#[tokio::test]
async fn flipped_byte_in_last_record_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 10).await;
    let seg = &segments(dir.path())[0];
    let last_record = *record_offsets(seg).last().unwrap();
    flip_byte(seg, last_record + 20);

    let (_wal, rec) = open(dir.path()).await;
    let torn = rec.report.torn_tail.expect("torn tail reported");
    assert_eq!(torn.offset, last_record);
    assert_eq!(torn.reason, "checksum mismatch");
    assert_eq!(rec.state.seq, 9);
}

#[tokio::test]
async fn flipped_byte_in_the_middle_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 10).await;
    let seg = &segments(dir.path())[0];
    let fifth = record_offsets(seg)[4];
    flip_byte(seg, fifth + 30);

    let err = Wal::open(config(dir.path())).await.unwrap_err();
    match err {
        StorageError::Corrupt {
            segment, offset, ..
        } => {
            assert_eq!(&segment, seg);
            assert_eq!(offset, fifth);
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    // Nothing was truncated: the evidence stays for a human to look at.
    assert!(file_len(seg) > fifth + 100);
}

#[tokio::test]
async fn flipped_length_in_the_middle_is_corruption_not_a_torn_tail() {
    // A damaged length makes the record seem to run past the end of the file,
    // like a torn write; the valid records behind it must still be noticed.
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 10).await;
    let seg = &segments(dir.path())[0];
    let third = record_offsets(seg)[2];
    flip_byte(seg, third + 2);

    let err = Wal::open(config(dir.path())).await.unwrap_err();
    assert!(
        matches!(err, StorageError::Corrupt { offset, .. } if offset == third),
        "{err}"
    );
}

#[tokio::test]
async fn damage_in_a_non_last_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_bytes = 200;
    let (wal, _) = Wal::open(cfg.clone()).await.unwrap();
    for seq in 1..=30 {
        wal.append(entries(seq..=seq)).await.unwrap();
    }
    wal.close().await;
    let segs = segments(dir.path());
    assert!(segs.len() > 2, "{segs:?}");
    // Damage the very last record of the first segment: were it the last
    // segment, that would be a torn tail.
    let last_record = *record_offsets(&segs[0]).last().unwrap();
    flip_byte(&segs[0], last_record + 20);

    let err = Wal::open(cfg).await.unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { ref segment, .. } if segment == &segs[0]));
}

#[tokio::test]
async fn missing_segment_is_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_bytes = 200;
    let (wal, _) = Wal::open(cfg.clone()).await.unwrap();
    for seq in 1..=30 {
        wal.append(entries(seq..=seq)).await.unwrap();
    }
    wal.close().await;
    let segs = segments(dir.path());
    fs::remove_file(&segs[1]).unwrap();

    let err = Wal::open(cfg).await.unwrap_err();
    assert!(matches!(err, StorageError::Gap { .. }), "{err}");
}

#[tokio::test]
async fn snapshot_and_truncation_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_bytes = 300;
    cfg.snapshot_every = Some(100);
    let (wal, _) = Wal::open(cfg.clone()).await.unwrap();
    for start in (1..=120).step_by(4) {
        wal.append(entries(start..=start + 3)).await.unwrap();
    }
    let before = segments(dir.path()).len();
    assert!(before > 5);
    assert!(wal.should_snapshot(120));

    let snap = Snapshot {
        seq: 100,
        term: 1,
        data: expected_state(100),
    };
    let report = wal.compact(snap).await.unwrap();
    assert_eq!(wal.snapshot_seq(), 100);
    assert!(!wal.should_snapshot(120));
    assert!(!report.removed_segments.is_empty());
    let remaining = segments(dir.path());
    assert_eq!(remaining.len(), before - report.removed_segments.len());
    // Every remaining segment holds something the snapshot lacks... except
    // that the first may start before it: it is only deleted once covered whole.
    let first_base: u64 = remaining[0]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(first_base <= 101);
    assert!(first_base > 1);

    // A second snapshot replaces the first.
    wal.append(entries(121..=130)).await.unwrap();
    let snap = Snapshot {
        seq: 125,
        term: 1,
        data: expected_state(125),
    };
    wal.compact(snap).await.unwrap();
    assert_eq!(files_with_ext(dir.path(), "snap").len(), 1);
    wal.close().await;

    let (_wal, rec) = Wal::open(cfg).await.unwrap();
    assert_eq!(rec.report.snapshot_seq, 125);
    assert_eq!(rec.report.entries_replayed, 5);
    assert_eq!(rec.tail, entries(126..=130));
    assert_eq!(rec.state.seq, 130);
    assert_eq!(rec.state.data, expected_state(130));
}

#[tokio::test]
async fn compaction_rejects_snapshots_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path()).await;
    wal.append(entries(1..=10)).await.unwrap();
    let ahead = Snapshot {
        seq: 11,
        ..Default::default()
    };
    assert!(matches!(
        wal.compact(ahead).await,
        Err(StorageError::SnapshotAhead { last: 10, got: 11 })
    ));
    let snap = Snapshot {
        seq: 8,
        term: 1,
        data: expected_state(8),
    };
    wal.compact(snap).await.unwrap();
    let behind = Snapshot {
        seq: 5,
        ..Default::default()
    };
    assert!(matches!(
        wal.compact(behind).await,
        Err(StorageError::SnapshotBehind { have: 8, got: 5 })
    ));
}

#[tokio::test]
async fn corrupt_newest_snapshot_falls_back_to_an_older_one() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 20).await;
    // Two snapshots written directly, the newest then damaged.
    for seq in [10, 15] {
        let snap = Snapshot {
            seq,
            term: 1,
            data: expected_state(seq),
        };
        kvlab::storage::snapshot::write(dir.path(), &snap).unwrap();
    }
    let newest = kvlab::storage::snapshot::snapshot_path(dir.path(), 15);
    flip_byte(&newest, 40);

    let (_wal, rec) = open(dir.path()).await;
    assert_eq!(rec.report.snapshot_seq, 10);
    assert_eq!(rec.report.skipped_snapshots.len(), 1);
    assert_eq!(rec.state.data, expected_state(20));
}

#[tokio::test]
async fn install_snapshot_resets_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path()).await;
    wal.append(entries(1..=50)).await.unwrap();

    let mut data = BTreeMap::new();
    data.insert(
        "from-leader".to_string(),
        Versioned {
            value: "x".into(),
            version: 4,
        },
    );
    let snap = Snapshot {
        seq: 1000,
        term: 2,
        data: data.clone(),
    };
    wal.install_snapshot(snap).await.unwrap();
    assert_eq!(wal.last_seq(), 1000);
    assert_eq!(wal.durable_seq(), 1000);
    assert_eq!(wal.snapshot_seq(), 1000);
    assert_eq!(segments(dir.path()).len(), 1);
    // The old seqs are gone: the log now continues at 1001.
    assert!(wal.append(entries(51..=51)).await.is_err());
    wal.append(entries(1001..=1002)).await.unwrap();
    // Installing an older snapshot would go back in time.
    let older = Snapshot {
        seq: 999,
        ..Default::default()
    };
    assert!(matches!(
        wal.install_snapshot(older).await,
        Err(StorageError::SnapshotBehind { .. })
    ));
    wal.close().await;

    let (_wal, rec) = open(dir.path()).await;
    assert_eq!(rec.report.snapshot_seq, 1000);
    assert_eq!(rec.state.seq, 1002);
    assert_eq!(rec.tail, entries(1001..=1002));
    data.extend(expected_state(1002).into_iter().filter(|(k, _)| {
        // Only the keys written by entries 1001 and 1002.
        k == &entry(1001).key || k == &entry(1002).key
    }));
    assert_eq!(rec.state.data, data);
}

#[tokio::test]
async fn snapshot_ahead_of_a_short_log_starts_a_new_segment() {
    // A crash right after an installed snapshot became durable, before the log
    // was reset: the log ends below the snapshot.
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 10).await;
    let snap = Snapshot {
        seq: 500,
        term: 3,
        data: expected_state(3),
    };
    kvlab::storage::snapshot::write(dir.path(), &snap).unwrap();

    let (wal, rec) = open(dir.path()).await;
    assert_eq!(rec.state, snap);
    assert!(rec.tail.is_empty());
    assert_eq!(segments(dir.path()).len(), 1);
    wal.append(entries(501..=501)).await.unwrap();
    wal.close().await;
    let (_wal, rec) = open(dir.path()).await;
    assert_eq!(rec.state.seq, 501);
}

#[tokio::test]
async fn leftover_temp_files_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 3).await;
    let tmp = dir.path().join("00000000000000000003.snap.tmp");
    fs::File::create(&tmp)
        .unwrap()
        .write_all(b"half a snapshot")
        .unwrap();
    let (_wal, rec) = open(dir.path()).await;
    assert_eq!(rec.report.removed_files, vec![tmp.clone()]);
    assert!(!tmp.exists());
    assert_eq!(rec.state.seq, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_shares_fsyncs_between_concurrent_appenders() {
    const TASKS: u64 = 32;
    const PER_TASK: u64 = 50;
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path()).await;
    let wal = Arc::new(wal);
    // The node's pattern: take a seq and submit under one lock, wait outside.
    let next_seq = Arc::new(std::sync::Mutex::new(1u64));

    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (wal, next_seq) = (wal.clone(), next_seq.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..PER_TASK {
                let ticket = {
                    let mut seq = next_seq.lock().unwrap();
                    let t = wal.submit(vec![std::sync::Arc::new(entry(*seq))]);
                    *seq += 1;
                    t
                };
                let seq = ticket.await.unwrap();
                // An acknowledged append is durable.
                assert!(wal.durable_seq() >= seq);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    let stats = wal.stats();
    let total = TASKS * PER_TASK;
    eprintln!("{stats:?}");
    assert_eq!(stats.appends, total);
    assert_eq!(wal.durable_seq(), total);
    // With 32 appenders in flight, an fsync is shared by many appends.
    assert!(
        stats.fsyncs * 4 < total,
        "{} fsyncs for {total} appends: no group commit",
        stats.fsyncs
    );
}

#[tokio::test]
async fn interval_policy_syncs_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.fsync = FsyncPolicy::Interval(Duration::from_millis(10));
    let (wal, _) = Wal::open(cfg).await.unwrap();
    for seq in 1..=5 {
        assert_eq!(wal.append(entries(seq..=seq)).await.unwrap(), seq);
    }
    for _ in 0..100 {
        if wal.durable_seq() == 5 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("durable_seq stuck at {}", wal.durable_seq());
}

#[tokio::test]
async fn never_policy_does_not_fsync_but_keeps_data_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.fsync = FsyncPolicy::Never;
    let (wal, _) = Wal::open(cfg.clone()).await.unwrap();
    wal.append(entries(1..=20)).await.unwrap();
    assert_eq!(wal.stats().fsyncs, 0);
    assert_eq!(wal.durable_seq(), 0);
    // Dropped without close: a process exit, the OS still has the data.
    drop(wal);
    let (_wal, rec) = Wal::open(cfg).await.unwrap();
    assert_eq!(rec.state.seq, 20);
}

#[tokio::test]
async fn interrupted_compaction_is_finished_by_recovery() {
    // A crash after the snapshot became durable but before the segments it
    // covers were deleted: recovery deletes them.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_bytes = 200;
    let (wal, _) = Wal::open(cfg.clone()).await.unwrap();
    for seq in 1..=40 {
        wal.append(entries(seq..=seq)).await.unwrap();
    }
    wal.close().await;
    let before = segments(dir.path()).len();
    let snap = Snapshot {
        seq: 30,
        term: 1,
        data: expected_state(30),
    };
    kvlab::storage::snapshot::write(dir.path(), &snap).unwrap();

    let (_wal, rec) = Wal::open(cfg).await.unwrap();
    assert!(!rec.report.removed_files.is_empty());
    assert_eq!(
        segments(dir.path()).len(),
        before - rec.report.removed_files.len()
    );
    assert_eq!(rec.report.entries_replayed, 10);
    assert_eq!(rec.state.data, expected_state(40));
}

// ---------------------------------------------------------------------------
// Truncation after a divergence (failover)
// ---------------------------------------------------------------------------

/// A diverged tail is cut across segments; the log continues right after the
/// cut, with new entries (another term) at the same seqs, and a restart sees
/// exactly that.
#[tokio::test]
async fn truncate_after_cuts_across_segments_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_bytes = 300;
    let (wal, _) = Wal::open(cfg.clone()).await.unwrap();
    for seq in 1..=40 {
        wal.append(entries(seq..=seq)).await.unwrap();
    }
    let before = segments(dir.path()).len();
    assert!(before > 3);

    let rec = wal.truncate_after(17).await.unwrap();
    assert_eq!(rec.state.seq, 17);
    assert_eq!(rec.state.data, expected_state(17));
    assert_eq!(rec.tail, entries(1..=17));
    assert_eq!(wal.last_seq(), 17);
    assert_eq!(wal.durable_seq(), 17);
    assert!(segments(dir.path()).len() < before);

    let other_term = |seq| Entry {
        term: 2,
        ..entry(seq)
    };
    wal.append((18..=20).map(other_term).collect())
        .await
        .unwrap();
    wal.close().await;
    let (_wal, rec) = Wal::open(cfg).await.unwrap();
    assert_eq!(rec.state.seq, 20);
    assert_eq!(
        rec.tail[17..],
        (18..=20).map(other_term).collect::<Vec<_>>()
    );
}

/// Cutting after the last seq changes nothing; cutting at a segment boundary
/// leaves the previous segment as the active one.
#[tokio::test]
async fn truncate_after_the_end_or_at_a_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path()).await;
    wal.append(entries(1..=10)).await.unwrap();
    let rec = wal.truncate_after(10).await.unwrap();
    assert_eq!(rec.state.seq, 10);
    let rec = wal.truncate_after(0).await.unwrap();
    assert_eq!(rec.state.seq, 0);
    assert!(rec.state.data.is_empty());
    wal.append(entries(1..=3)).await.unwrap();
    assert_eq!(wal.last_seq(), 3);
    wal.close().await;
    let (_wal, rec) = open(dir.path()).await;
    assert_eq!(rec.state.data, expected_state(3));
}

/// Below the snapshot the entries cannot be rebuilt: the node starts empty
/// (the leader then sends a snapshot).
#[tokio::test]
async fn truncate_below_the_snapshot_empties_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path()).await;
    wal.append(entries(1..=20)).await.unwrap();
    let snap = Snapshot {
        seq: 15,
        term: 1,
        data: expected_state(15),
    };
    wal.compact(snap).await.unwrap();
    let rec = wal.truncate_after(12).await.unwrap();
    assert_eq!(rec.state.seq, 0);
    assert_eq!(wal.snapshot_seq(), 0);
    assert!(files_with_ext(dir.path(), "snap").is_empty());
    wal.append(entries(1..=2)).await.unwrap();
    wal.close().await;
    let (_wal, rec) = open(dir.path()).await;
    assert_eq!(rec.state.data, expected_state(2));

    // Above the snapshot, the snapshot stays and the tail is cut.
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path()).await;
    wal.append(entries(1..=20)).await.unwrap();
    let snap = Snapshot {
        seq: 15,
        term: 1,
        data: expected_state(15),
    };
    wal.compact(snap).await.unwrap();
    let rec = wal.truncate_after(17).await.unwrap();
    assert_eq!(rec.state.seq, 17);
    assert_eq!(rec.state.data, expected_state(17));
    assert_eq!(rec.report.snapshot_seq, 15);
}

// Seqs at the end of the u64 range (found by fuzzing `wal_recover`): every
// seq must leave room for the next one, which recovery starts a segment at.

#[tokio::test]
async fn a_snapshot_at_u64_max_is_skipped_as_corrupt_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let snap = Snapshot {
        seq: u64::MAX,
        term: 1,
        data: expected_state(3),
    };
    kvlab::storage::snapshot::write(dir.path(), &snap).unwrap();
    // Recovery used to overflow computing the first seq after it.
    let (wal, rec) = open(dir.path()).await;
    assert_eq!(rec.report.skipped_snapshots.len(), 1, "{:?}", rec.report);
    assert_eq!(rec.state.seq, 0);
    wal.append(entries(1..=1)).await.unwrap();
}

#[tokio::test]
async fn installing_a_snapshot_at_u64_max_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path()).await;
    let snap = Snapshot {
        seq: u64::MAX,
        ..Default::default()
    };
    // It used to panic the writer thread (the log would continue at seq + 1).
    assert!(matches!(
        wal.install_snapshot(snap).await,
        Err(StorageError::SeqOutOfRange(u64::MAX))
    ));
    wal.append(entries(1..=2)).await.unwrap();
}

#[tokio::test]
async fn the_last_seq_storage_holds_is_u64_max_minus_one() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path()).await;
    let last = kvlab::storage::MAX_SEQ;
    let snap = Snapshot {
        seq: last - 1,
        ..Default::default()
    };
    wal.install_snapshot(snap).await.unwrap();
    wal.append(vec![entry(last)]).await.unwrap();
    // An entry at u64::MAX would be written, then fail every recovery.
    assert!(matches!(
        wal.append(vec![entry(u64::MAX)]).await,
        Err(StorageError::SeqOutOfRange(u64::MAX))
    ));
    wal.close().await;
    let (_wal, rec) = open(dir.path()).await;
    assert_eq!(rec.state.seq, last);
}

// ---------------------------------------------------------------------------
// Durable markers: a torn write told from corruption of durable data
// ---------------------------------------------------------------------------

/// After a clean stop (the log sealed), damage just before the last record
/// hits data the node had made durable: corruption, never a torn tail.
#[tokio::test]
async fn a_sealed_log_damaged_before_its_last_record_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path()).await;
    for seq in 1..=10 {
        wal.append(entries(seq..=seq)).await.unwrap();
    }
    wal.seal().await.unwrap();
    wal.close().await;
    let seg = &segments(dir.path())[0];
    let last = *record_offsets(seg).last().unwrap();
    let mut bytes = fs::read(seg).unwrap();
    bytes[last as usize - 128..last as usize].fill(0);
    fs::write(seg, &bytes).unwrap();

    let err = Wal::open(config(dir.path())).await.unwrap_err();
    match err {
        StorageError::Corrupt { reason, .. } => {
            assert!(reason.contains("valid record follows"), "{reason}");
            assert!(reason.contains("durable"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other}"),
    }
}

/// A power cut tears the last group (never sealed, no marker after it): its
/// first bytes are lost, its later records reached the disk. Recovery drops
/// the group as a torn write and keeps everything before it.
#[tokio::test]
async fn a_hole_in_the_last_group_before_valid_records_is_a_torn_write() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path()).await;
    wal.append(entries(1..=5)).await.unwrap();
    wal.append(entries(6..=10)).await.unwrap();
    wal.close().await; // not sealed: as if the power went off here
    let seg = &segments(dir.path())[0];
    // The second group starts with a marker for seqs 1..=5: wipe it and the
    // start of seq 6, as a torn write would.
    let (marker, len) = all_records(seg)[5];
    assert_eq!(len, kvlab::storage::codec::MARKER_LEN);
    let mut bytes = fs::read(seg).unwrap();
    bytes[marker as usize..marker as usize + 40].fill(0);
    fs::write(seg, &bytes).unwrap();

    let (wal, rec) = open(dir.path()).await;
    let torn = rec.report.torn_tail.clone().expect("torn tail");
    assert_eq!(torn.offset, marker);
    assert!(torn.reason.contains("power cut"), "{}", torn.reason);
    assert_eq!(rec.state.data, expected_state(5));
    // The log goes on where the torn write was.
    wal.append(entries(6..=6)).await.unwrap();
    wal.close().await;
    let (_wal, rec) = open(dir.path()).await;
    assert_eq!(rec.report.torn_tail, None);
    assert_eq!(rec.state.data, expected_state(6));
}

/// A log written before durable markers existed (segment format 1) is still
/// read, and the log goes on in a new segment of the current format.
#[tokio::test]
async fn a_format_1_log_is_read_and_continued_in_a_new_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"KVLABLOG");
    bytes.extend_from_slice(&1u32.to_le_bytes());
    bytes.extend_from_slice(&1u64.to_le_bytes());
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    for e in entries(1..=3) {
        kvlab::storage::codec::encode_entry_record(&e, &mut bytes);
    }
    bytes.resize(bytes.len() + 4096, 0); // its preallocated zero tail
    fs::create_dir_all(dir.path()).unwrap();
    fs::write(dir.path().join("00000000000000000001.wal"), &bytes).unwrap();

    let (wal, rec) = open(dir.path()).await;
    assert_eq!(rec.report.torn_tail, None);
    assert_eq!(rec.state.data, expected_state(3));
    wal.append(entries(4..=5)).await.unwrap();
    wal.close().await;
    let segs = segments(dir.path());
    assert_eq!(segs.len(), 2, "{segs:?}");
    assert!(segs[1].ends_with("00000000000000000004.wal"), "{segs:?}");
    let (_wal, rec) = open(dir.path()).await;
    assert_eq!(rec.state.data, expected_state(5));
}

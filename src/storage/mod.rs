//! Durable storage for a node: a write-ahead log plus snapshots.
//!
//! A node keeps its state (key -> [`Versioned`]) and its replication log
//! (entries with contiguous seqs) in memory. This module makes both survive a
//! crash. Everything lives in one data directory:
//!
//! ```text
//! <dir>/00000000000000000001.wal    log segment, first record seq 1
//! <dir>/00000000000000004097.wal    next segment, first record seq 4097
//! <dir>/00000000000000004000.snap   snapshot of the state at seq 4000
//! ```
//!
//! - [`segment`]/[`codec`]: the append-only log, split into segment files of
//!   checksummed, length-prefixed records, one [`Entry`] each. The active
//!   (last) segment is preallocated ahead of the write position with zeros,
//!   so that the fsync of each group commit has only data to flush.
//! - [`snapshot`]: the full state at a seq, written atomically. Once a
//!   snapshot at seq S is durable, every segment holding only seqs <= S is
//!   deleted: that is how the log stays bounded.
//! - [`Wal`]: the async handle the node uses. A dedicated writer thread owns
//!   the files; appends from many tasks are queued to it and share fsyncs
//!   (group commit).
//!
//! Recovery ([`Wal::open`]) loads the newest valid snapshot and replays the
//! log records after it. A torn tail (a crash mid-write, or a power cut that
//! tore a write never fsynced: see the durable markers in [`segment`]) is cut
//! off and reported in [`RecoveryReport`]; damage to what the log shows was
//! durable is a hard [`StorageError::Corrupt`] error, because serving from a
//! log with a hole in it would silently serve wrong data.
//! - [`power`]: a simulated power cut for tests (unsynced writes held in
//!   memory until their fsync).
//!
//! [`Versioned`]: crate::api::Versioned
//! [`Entry`]: crate::api::Entry

pub mod codec;
mod log;
pub mod power;
pub mod segment;
pub mod snapshot;
pub mod wal;

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

pub use self::log::{CompactReport, Recovered, RecoveryReport, TornTailReport};
pub use self::snapshot::Snapshot;
pub use self::wal::{AppendTicket, Wal, WalStats};

/// The highest seq storage holds. Recovery starts the next segment at the
/// last seq + 1, so every seq must leave room for its successor: `u64::MAX`
/// is never a log position. Found on disk it is corruption; in an append or
/// an installed snapshot it is refused ([`StorageError::SeqOutOfRange`]).
pub const MAX_SEQ: u64 = u64::MAX - 1;

/// Everything that can go wrong in storage.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A log segment is damaged somewhere other than its tail: the node must
    /// refuse to serve rather than guess what was lost.
    #[error("corrupt log segment {} at offset {offset}: {reason}", segment.display())]
    Corrupt {
        segment: PathBuf,
        offset: u64,
        reason: String,
    },

    /// A snapshot file failed validation. Recovery skips it and tries an
    /// older one; this error only escapes from direct snapshot reads.
    #[error("corrupt snapshot {}: {reason}", path.display())]
    CorruptSnapshot { path: PathBuf, reason: String },

    /// The log on disk is missing seqs: between two segments, or between the
    /// snapshot and the first segment.
    #[error("gap in the log: expected seq {expected}, next available is {found}")]
    Gap { expected: u64, found: u64 },

    /// An append did not continue the log (seqs must be contiguous).
    #[error("append out of order: expected seq {expected}, got {got}")]
    OutOfOrder { expected: u64, got: u64 },

    /// A seq above [`MAX_SEQ`] in an append or a snapshot.
    #[error("seq {0} is beyond the highest seq storage holds ({MAX_SEQ})")]
    SeqOutOfRange(u64),

    /// A snapshot at `got` would move the storage back from `have`.
    #[error("snapshot at seq {got} is older than the current one at seq {have}")]
    SnapshotBehind { have: u64, got: u64 },

    /// A compaction snapshot claims a seq the log has not reached.
    #[error("snapshot at seq {got} is beyond the end of the log at seq {last}")]
    SnapshotAhead { last: u64, got: u64 },

    /// The writer thread hit an I/O error earlier (or was shut down) and no
    /// longer accepts work. After a failed fsync the state of the file is
    /// unknown, so the only safe course is to stop and recover from disk.
    #[error("storage writer stopped: {0}")]
    Stopped(String),
}

impl StorageError {
    /// True when the disk is full (`ENOSPC`), also when the writer stopped
    /// on it earlier and only its message is left.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StorageError::Io { source, .. } => {
                source.kind() == std::io::ErrorKind::StorageFull
                    || source.raw_os_error() == Some(libc::ENOSPC)
            }
            StorageError::Stopped(why) => {
                let full = std::io::Error::from_raw_os_error(libc::ENOSPC).to_string();
                why.contains(&full)
            }
            _ => false,
        }
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        StorageError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// When the log is fsynced, i.e. what an acknowledged append survives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// The default. An append completes only once it is fsynced: it survives a power loss.
    /// Concurrent appends share fsyncs (group commit).
    #[default]
    Always,
    /// Appends complete once written to the OS; a background fsync runs this
    /// often. A process crash loses nothing, a power loss up to one interval.
    Interval(Duration),
    /// Never fsync: a process crash loses nothing (the OS has the data), a
    /// power loss or kernel crash may lose anything not yet written back.
    /// (The log's preallocated space is still fsynced when it is added, once
    /// per [`segment::PREALLOC_CHUNK`]: that does not make any entry durable.)
    Never,
}

impl FsyncPolicy {
    pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(5);
    const VARIANTS: [FsyncPolicy; 3] = [
        FsyncPolicy::Always,
        FsyncPolicy::Interval(FsyncPolicy::DEFAULT_INTERVAL),
        FsyncPolicy::Never,
    ];

    /// The same policy with `interval` as the period if it is `Interval`:
    /// lets a CLI take the period from its own flag.
    pub fn with_interval(self, interval: Duration) -> Self {
        match self {
            FsyncPolicy::Interval(_) => FsyncPolicy::Interval(interval),
            other => other,
        }
    }

    /// `always`, `interval` or `never`: the value of the `--fsync` flag.
    pub fn name(&self) -> &'static str {
        match self {
            FsyncPolicy::Always => "always",
            FsyncPolicy::Interval(_) => "interval",
            FsyncPolicy::Never => "never",
        }
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsyncPolicy::Interval(d) => write!(f, "interval:{}", d.as_millis()),
            other => f.write_str(other.name()),
        }
    }
}

/// Accepts `always`, `never`, `interval` (every 5 ms) and `interval:<ms>`.
impl FromStr for FsyncPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            "interval" => Ok(FsyncPolicy::Interval(Self::DEFAULT_INTERVAL)),
            other => other
                .strip_prefix("interval:")
                .and_then(|ms| ms.trim_end_matches("ms").parse().ok())
                .map(|ms| FsyncPolicy::Interval(Duration::from_millis(ms)))
                .ok_or_else(|| {
                    format!("invalid fsync policy {s:?}: expected always, interval[:<ms>] or never")
                }),
        }
    }
}

/// Lets `#[arg(long, value_enum)] fsync: FsyncPolicy` work in clap, with the
/// three names listed in `--help`. `interval` gets the default period; pair it
/// with a separate flag and [`FsyncPolicy::with_interval`] to change it.
impl clap::ValueEnum for FsyncPolicy {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::VARIANTS
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

/// How a [`Wal`] is set up.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// The data directory; created if missing.
    pub dir: PathBuf,
    pub fsync: FsyncPolicy,
    /// A segment is closed and a new one started once it reaches this size.
    /// Smaller segments let compaction free space sooner.
    pub segment_bytes: u64,
    /// Snapshot policy hook: [`Wal::should_snapshot`] says yes once this many
    /// entries were appended since the last snapshot. `None`: never.
    pub snapshot_every: Option<u64>,
}

impl StorageConfig {
    pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
    pub const DEFAULT_SNAPSHOT_EVERY: u64 = 100_000;

    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StorageConfig {
            dir: dir.into(),
            fsync: FsyncPolicy::default(),
            segment_bytes: Self::DEFAULT_SEGMENT_BYTES,
            snapshot_every: Some(Self::DEFAULT_SNAPSHOT_EVERY),
        }
    }
}

/// Makes renames, creations and deletions in `dir` durable. Without this, a
/// crash can undo a rename even though the renamed file itself was fsynced.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io(dir, e))
}

/// The names of the entries of `dir` (non-UTF-8 names are skipped: we never
/// create them).
pub(crate) fn list_dir(dir: &Path) -> Result<Vec<String>> {
    let io = |e| StorageError::io(dir, e);
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        if let Ok(name) = entry.map_err(io)?.file_name().into_string() {
            names.push(name);
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_recognised_also_after_the_writer_stopped() {
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let io = StorageError::io(Path::new("/data/wal"), full);
        assert!(io.is_disk_full());
        assert!(StorageError::Stopped(io.to_string()).is_disk_full());
        let other = StorageError::io(Path::new("/x"), std::io::Error::other("bad"));
        assert!(!other.is_disk_full());
        assert!(!StorageError::Stopped(other.to_string()).is_disk_full());
    }

    #[test]
    fn fsync_policy_parses() {
        assert_eq!("always".parse(), Ok(FsyncPolicy::Always));
        assert_eq!("Never".parse(), Ok(FsyncPolicy::Never));
        assert_eq!(
            "interval".parse(),
            Ok(FsyncPolicy::Interval(FsyncPolicy::DEFAULT_INTERVAL))
        );
        assert_eq!(
            "interval:20".parse(),
            Ok(FsyncPolicy::Interval(Duration::from_millis(20)))
        );
        assert!("sometimes".parse::<FsyncPolicy>().is_err());
        let via_clap = <FsyncPolicy as clap::ValueEnum>::from_str("never", true);
        assert_eq!(via_clap, Ok(FsyncPolicy::Never));
    }
}

//! The disk's floor: how long concurrent fsyncs take on this machine, for
//! `bench/compare.sh` (`kvlab bench-disk`, hidden).
//!
//! A durable kvlab write is acknowledged once the leader and each of the W
//! sync followers have fsynced it, and the async followers fsync it at the
//! same moment: with 1 leader + 3 followers, four `fdatasync`s are in flight
//! together, on one disk when the cluster runs on one machine. No code in a
//! node can make a write's answer come before the slowest of the fsyncs it
//! waits for, so "the k-th of n concurrent fsyncs" is part of the floor of a
//! lone write's latency (the rest is the network round trips, which the bare
//! server measures).
//!
//! Each round, `files` threads each write `bytes` into a file of their own
//! and `fdatasync` it; a barrier starts them together. The bytes go over
//! zeros written and fsynced before the first round, as the WAL writes a
//! record into its preallocated segment (`storage::segment`): the
//! `fdatasync` then flushes the data only, not a new file size (on ext4,
//! a growing file's fsync writes its inode too, and takes longer alone).
//! The records of all rounds fit in the zeros, so no round extends a file.
//! A round's k-th figure is the time from the earliest thread's start to
//! the k-th `fdatasync` that returned. Timing from the threads' own clocks,
//! not from the barrier's release, leaves the threads' wake-up out of the
//! figure: the floor is never overstated by the tool.
//!
//! Invariants: the files live in a directory the tool creates under `--dir`
//! and removes when it ends, however it ends short of a crash; nothing else
//! is written.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// `kvlab bench-disk` (hidden): the flags.
#[derive(Debug, Clone, clap::Args)]
pub struct DiskArgs {
    /// Where the files go: a directory on the disk the cluster writes to.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// How many files are fsynced together (a node each).
    #[arg(long, default_value_t = 4)]
    pub files: usize,
    /// Rounds to time (after a few untimed ones).
    #[arg(long, default_value_t = 500)]
    pub rounds: usize,
    /// Bytes written to each file before its fsync (one small WAL record).
    #[arg(long, default_value_t = 256)]
    pub bytes: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The median and tail of the k-th completion, for k = 1..=files.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Completion {
    /// 1 for the first fsync to return, `files` for the last.
    pub k: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}

/// Rounds untimed before the measured ones: the threads are running, the
/// disk's queue has seen the pattern.
const WARMUP_ROUNDS: usize = 20;

/// The most each file may take on the disk: the tool measures fsyncs, it
/// should not fill a disk by a typo in `--rounds` or `--bytes`.
const MAX_FILE_BYTES: usize = 1 << 30;

/// `kvlab bench-disk`: measure and print.
pub fn run(args: &DiskArgs) -> anyhow::Result<()> {
    let completions = measure(args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&completions)?);
        return Ok(());
    }
    println!(
        "{} concurrent fdatasyncs of {} B records, {} rounds, in {}:",
        args.files,
        args.bytes,
        args.rounds,
        args.dir.display()
    );
    println!("  k-th done     p50 ms    p90 ms    p99 ms");
    for c in &completions {
        println!(
            "  {:>8}  {:>9.3} {:>9.3} {:>9.3}",
            c.k, c.p50_ms, c.p90_ms, c.p99_ms
        );
    }
    Ok(())
}

/// Runs the rounds; one [`Completion`] per k.
pub fn measure(args: &DiskArgs) -> anyhow::Result<Vec<Completion>> {
    if args.files == 0 || args.rounds == 0 {
        bail!("--files and --rounds must be at least 1");
    }
    if args.files > 64 {
        bail!("--files {} is more than 64: one thread each", args.files);
    }
    let rounds = WARMUP_ROUNDS + args.rounds;
    let size = rounds
        .checked_mul(args.bytes)
        .filter(|&size| size <= MAX_FILE_BYTES)
        .with_context(|| {
            format!(
                "--rounds {} of --bytes {} is more than {} MiB a file",
                args.rounds,
                args.bytes,
                MAX_FILE_BYTES >> 20
            )
        })?;
    let scratch = Scratch::new(&args.dir)?;
    let files = (0..args.files)
        .map(|i| scratch.open(i, size))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let barrier = Arc::new(Barrier::new(args.files));
    let record = vec![b'x'; args.bytes];
    let threads: Vec<_> = files
        .into_iter()
        .map(|file| {
            let barrier = barrier.clone();
            let record = record.clone();
            thread::spawn(move || write_and_sync(file, &record, &barrier, rounds))
        })
        .collect();
    let mut spans = Vec::with_capacity(threads.len());
    for t in threads {
        let joined = t
            .join()
            .map_err(|_| anyhow::anyhow!("an fsync thread panicked"))?;
        spans.push(joined?);
    }
    Ok(completions(&spans[..], WARMUP_ROUNDS))
}

/// One thread's rounds: (start, end) of each write + fdatasync.
fn write_and_sync(
    mut file: File,
    record: &[u8],
    barrier: &Barrier,
    rounds: usize,
) -> anyhow::Result<Vec<(Instant, Instant)>> {
    let mut spans = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        barrier.wait();
        let start = Instant::now();
        file.write_all(record).context("write")?;
        file.sync_data().context("fdatasync")?;
        spans.push((start, Instant::now()));
    }
    Ok(spans)
}

/// For each k, the k-th completion of every round after the warm-up, as
/// percentiles. `spans[thread][round]`.
fn completions(spans: &[Vec<(Instant, Instant)>], skip: usize) -> Vec<Completion> {
    let rounds = spans[0].len();
    let mut by_k: Vec<Vec<Duration>> = vec![Vec::new(); spans.len()];
    for round in skip..rounds {
        let start = spans.iter().map(|s| s[round].0).min().expect("a thread");
        let mut done: Vec<Duration> = spans.iter().map(|s| s[round].1 - start).collect();
        done.sort();
        for (k, d) in done.into_iter().enumerate() {
            by_k[k].push(d);
        }
    }
    by_k.into_iter()
        .enumerate()
        .map(|(k, mut ds)| {
            ds.sort();
            let at = |q: f64| {
                let i = ((ds.len() as f64 * q) as usize).min(ds.len() - 1);
                ds[i].as_secs_f64() * 1e3
            };
            Completion {
                k: k + 1,
                p50_ms: at(0.50),
                p90_ms: at(0.90),
                p99_ms: at(0.99),
            }
        })
        .collect()
}

/// The tool's own directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(parent: &Path) -> anyhow::Result<Self> {
        let dir = parent.join(format!("kvlab-bench-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Scratch(dir))
    }

    /// A file of `size` zeros on the disk, preallocated as the WAL
    /// preallocates a segment, and positioned at its start.
    fn open(&self, i: usize, size: usize) -> anyhow::Result<File> {
        let path = self.0.join(format!("file-{i}"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        crate::storage::segment::preallocate(&file, &path, 0, size as u64)?;
        Ok(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path, files: usize) -> DiskArgs {
        DiskArgs {
            dir: dir.to_path_buf(),
            files,
            rounds: 5,
            bytes: 16,
            json: false,
        }
    }

    #[test]
    fn one_figure_per_file_in_completion_order_and_nothing_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        let got = measure(&args(dir.path(), 3)).unwrap();
        assert_eq!(got.iter().map(|c| c.k).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(
            got.windows(2).all(|w| w[0].p50_ms <= w[1].p50_ms),
            "{got:?}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn impossible_counts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(measure(&args(dir.path(), 0)).is_err());
        assert!(measure(&args(dir.path(), 65)).is_err());
        let huge = DiskArgs {
            rounds: usize::MAX / 2,
            ..args(dir.path(), 1)
        };
        let err = measure(&huge).unwrap_err();
        assert!(err.to_string().contains("MiB a file"), "{err:#}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_directory_that_cannot_be_made_is_an_error_not_a_panic() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let err = measure(&args(file.path(), 2)).unwrap_err();
        assert!(err.to_string().contains("cannot create"), "{err:#}");
    }
}

//! [`Wal`]: the async handle to the log, and the writer thread behind it.
//!
//! File I/O blocks, and blocking a tokio worker thread stalls every task on
//! it, so one dedicated OS thread owns the [`Log`] and does all log I/O. Tasks
//! talk to it through a channel of [`Command`]s and get answers on oneshots.
//!
//! Group commit: the writer takes *everything* queued at once, writes all of
//! it, then (under `FsyncPolicy::Always`) fsyncs once and only then completes
//! every append in the group. While one fsync runs, new appends pile up in
//! the channel and form the next group, so the fsync rate adapts to the load
//! instead of capping throughput at one append per fsync.
//!
//! Ordering: appends reach the writer in the order [`Wal::submit`] was
//! called, and each must continue the log (seq = last + 1). The node assigns
//! seqs and calls `submit` under the same lock, then awaits outside it.
//!
//! After an I/O error the writer stops for good: after a failed fsync the
//! kernel may have dropped the dirty pages, so retrying could "succeed"
//! without the data. Every later call fails with [`StorageError::Stopped`];
//! the node should restart and recover from disk.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::log::{CompactReport, Log, Recovered};
use super::snapshot::{self, Snapshot};
use super::{FsyncPolicy, Result, StorageConfig, StorageError};
use crate::api::Entry;

/// Most commands the writer takes into one group. Bounds the latency of the
/// first append of a group when the queue is very long.
const MAX_GROUP: usize = 4096;

enum Command {
    Append {
        /// Shared with the node's in-memory log: queuing copies no value.
        entries: Vec<Arc<Entry>>,
        done: oneshot::Sender<Result<u64>>,
    },
    /// Delete what the durable snapshot at `seq` covers.
    Compact {
        seq: u64,
        done: oneshot::Sender<Result<CompactReport>>,
    },
    /// Replace the log by the durable snapshot at `seq`.
    Reset {
        seq: u64,
        done: oneshot::Sender<Result<CompactReport>>,
    },
    /// Cut the log after `seq` and recover what remains.
    Truncate {
        seq: u64,
        done: oneshot::Sender<Result<Recovered>>,
    },
    /// Fsync now, whatever the policy; answers the durable seq.
    Sync { done: oneshot::Sender<Result<u64>> },
    /// Fsync, then seal the log with a durable marker (a clean stop).
    Seal { done: oneshot::Sender<Result<u64>> },
    /// A simulated power cut (see `power`): with `tear`, armed for the next
    /// group that writes, which is torn; without, at once.
    PowerCut { tear: bool },
}

/// Counters, mostly for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Append commands completed successfully.
    pub appends: u64,
    /// Groups written (one `write` call each).
    pub groups: u64,
    /// Fsyncs of the log by the policy (group commits, intervals, `sync`).
    /// The rare fsyncs that make preallocated space durable (one per
    /// `segment::PREALLOC_CHUNK` of log) are not counted.
    pub fsyncs: u64,
    /// Bytes of records written to the log.
    pub bytes: u64,
}

/// State shared between the handle and the writer thread.
struct Shared {
    last_seq: AtomicU64,
    durable_seq: AtomicU64,
    snapshot_seq: AtomicU64,
    appends: AtomicU64,
    groups: AtomicU64,
    fsyncs: AtomicU64,
    bytes: AtomicU64,
    /// How long each policy fsync took (served at the node's `/metrics`).
    fsync_seconds: crate::metrics::Histogram,
    /// Why the writer stopped, once it has.
    stopped: Mutex<Option<String>>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            last_seq: AtomicU64::new(0),
            durable_seq: AtomicU64::new(0),
            snapshot_seq: AtomicU64::new(0),
            appends: AtomicU64::new(0),
            groups: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            fsync_seconds: crate::metrics::Histogram::new(crate::metrics::FSYNC_BUCKETS),
            stopped: Mutex::new(None),
        }
    }
}

impl Shared {
    fn stopped_error(&self) -> StorageError {
        let why = self.stopped.lock().unwrap().clone();
        StorageError::Stopped(why.unwrap_or_else(|| "writer thread exited".into()))
    }
}

/// The handle to a node's durable log. Cheap to share behind an `Arc`.
pub struct Wal {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    dir: PathBuf,
    snapshot_every: Option<u64>,
    /// Serialises compactions and snapshot installs with each other.
    snapshot_lock: tokio::sync::Mutex<()>,
    writer: thread::JoinHandle<()>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("last_seq", &self.last_seq())
            .field("durable_seq", &self.durable_seq())
            .field("snapshot_seq", &self.snapshot_seq())
            .finish_non_exhaustive()
    }
}

impl Wal {
    /// Recovers the directory and starts the writer thread. Recovery reads
    /// the whole log, so it runs on tokio's blocking pool.
    pub async fn open(config: StorageConfig) -> Result<(Wal, Recovered)> {
        tokio::task::spawn_blocking(move || Wal::open_blocking(config))
            .await
            .expect("recovery panicked")
    }

    /// [`Wal::open`] for callers outside an async context.
    pub fn open_blocking(config: StorageConfig) -> Result<(Wal, Recovered)> {
        let (log, recovered) = Log::recover(&config.dir, config.segment_bytes)?;
        let shared = Arc::new(Shared::default());
        let last = log.last_seq();
        shared.last_seq.store(last, Ordering::Release);
        // Everything recovery read from disk is as durable as it gets.
        shared.durable_seq.store(last, Ordering::Release);
        shared
            .snapshot_seq
            .store(recovered.report.snapshot_seq, Ordering::Release);

        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            log,
            rx,
            shared: shared.clone(),
            policy: config.fsync,
            waiting: Vec::new(),
            dirty: false,
            tear_armed: false,
        };
        let writer = thread::Builder::new()
            .name("kvlab-wal".into())
            .spawn(move || writer.run())
            .map_err(|e| StorageError::io(&config.dir, e))?;

        let wal = Wal {
            tx,
            shared,
            dir: config.dir,
            snapshot_every: config.snapshot_every,
            snapshot_lock: tokio::sync::Mutex::new(()),
            writer,
        };
        Ok((wal, recovered))
    }

    /// Queues `entries` (which must continue the log) and returns a future
    /// for their completion. Queuing happens now, not when the ticket is
    /// first polled, so the order of `submit` calls is the order on disk.
    pub fn submit(&self, entries: Vec<Arc<Entry>>) -> AppendTicket {
        let (done, rx) = oneshot::channel();
        let rx = match self.tx.send(Command::Append { entries, done }) {
            Ok(()) => Some(rx),
            Err(_) => None,
        };
        AppendTicket {
            rx,
            shared: self.shared.clone(),
        }
    }

    /// Appends `entries` and resolves to the seq of the last of them once
    /// the policy is satisfied: fsynced under `Always`, written to the OS
    /// otherwise. See [`Wal::submit`] about ordering.
    pub async fn append(&self, entries: Vec<Entry>) -> Result<u64> {
        self.submit(entries.into_iter().map(Arc::new).collect())
            .await
    }

    /// The highest seq known to be fsynced.
    pub fn durable_seq(&self) -> u64 {
        self.shared.durable_seq.load(Ordering::Acquire)
    }

    /// The highest seq written to the log (maybe not yet fsynced).
    pub fn last_seq(&self) -> u64 {
        self.shared.last_seq.load(Ordering::Acquire)
    }

    /// The seq of the newest durable snapshot (0: none).
    pub fn snapshot_seq(&self) -> u64 {
        self.shared.snapshot_seq.load(Ordering::Acquire)
    }

    /// The snapshot policy hook: whether the node should call
    /// [`Wal::compact`] now that it has applied up to `applied_seq`.
    pub fn should_snapshot(&self, applied_seq: u64) -> bool {
        self.snapshot_every
            .is_some_and(|every| applied_seq >= self.snapshot_seq().saturating_add(every))
    }

    pub fn stats(&self) -> WalStats {
        let s = &self.shared;
        WalStats {
            appends: s.appends.load(Ordering::Relaxed),
            groups: s.groups.load(Ordering::Relaxed),
            fsyncs: s.fsyncs.load(Ordering::Relaxed),
            bytes: s.bytes.load(Ordering::Relaxed),
        }
    }

    /// The fsync duration histogram (shares its counts with the writer).
    pub fn fsync_histogram(&self) -> crate::metrics::Histogram {
        self.shared.fsync_seconds.clone()
    }

    /// Fsyncs everything written so far, whatever the policy; returns the
    /// durable seq. Useful before a clean shutdown under `Interval`/`Never`.
    pub async fn sync(&self) -> Result<u64> {
        let (done, rx) = oneshot::channel();
        self.request(Command::Sync { done }, rx).await
    }

    /// Fsyncs everything written so far (unless the policy is `Never`) and
    /// seals the log with a final durable marker: after a clean stop, damage anywhere in the log is
    /// known to hit durable data (never taken for a torn write). Appends
    /// after it are fine (they start a new group).
    pub async fn seal(&self) -> Result<u64> {
        let (done, rx) = oneshot::channel();
        self.request(Command::Seal { done }, rx).await
    }

    /// A simulated power cut (only when `power::simulating`): the process
    /// dies, losing every write no fsync covered. With `tear`, it dies at
    /// the next group written instead, tearing it (a hole, then the rest).
    pub fn power_cut(&self, tear: bool) {
        if !super::power::simulating() {
            return;
        }
        let _ = self.tx.send(Command::PowerCut { tear });
    }

    /// Shuts the writer down after it has finished everything queued (with a
    /// final fsync unless the policy is `Never`) and waits for it to exit.
    /// Merely dropping the `Wal` does the same without waiting.
    pub async fn close(self) {
        let Wal { tx, writer, .. } = self;
        drop(tx);
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    }

    /// Makes `snapshot` durable, then deletes the log segments and older
    /// snapshots it covers. `snapshot.data` must be the state as of
    /// `snapshot.seq`, which the log must already hold.
    pub async fn compact(&self, snapshot: Snapshot) -> Result<CompactReport> {
        let _guard = self.snapshot_lock.lock().await;
        let (have, last) = (self.snapshot_seq(), self.last_seq());
        if snapshot.seq < have {
            return Err(StorageError::SnapshotBehind {
                have,
                got: snapshot.seq,
            });
        }
        if snapshot.seq > last {
            return Err(StorageError::SnapshotAhead {
                last,
                got: snapshot.seq,
            });
        }
        let seq = self.write_snapshot(snapshot).await?;
        let (done, rx) = oneshot::channel();
        self.request(Command::Compact { seq, done }, rx).await
    }

    /// Replaces the whole state by `snapshot` (a follower that fell behind
    /// the leader's log): the snapshot becomes durable, the log is emptied
    /// and continues at `snapshot.seq + 1`. Appends still queued before this
    /// call are written first and then discarded with the old log.
    pub async fn install_snapshot(&self, snapshot: Snapshot) -> Result<CompactReport> {
        let _guard = self.snapshot_lock.lock().await;
        if snapshot.seq > super::MAX_SEQ {
            // The log would continue at `seq + 1`.
            return Err(StorageError::SeqOutOfRange(snapshot.seq));
        }
        let have = self.snapshot_seq();
        if snapshot.seq < have {
            return Err(StorageError::SnapshotBehind {
                have,
                got: snapshot.seq,
            });
        }
        let seq = self.write_snapshot(snapshot).await?;
        let (done, rx) = oneshot::channel();
        self.request(Command::Reset { seq, done }, rx).await
    }

    /// Cuts the log after `seq` and returns the state it now holds (see
    /// `Log::truncate_after`): a follower whose tail diverged from the
    /// leader's history. Appends queued before this call are written first,
    /// then cut with the rest.
    pub async fn truncate_after(&self, seq: u64) -> Result<Recovered> {
        let _guard = self.snapshot_lock.lock().await;
        let (done, rx) = oneshot::channel();
        self.request(Command::Truncate { seq, done }, rx).await
    }

    /// Writes the snapshot file on the blocking pool (it can take a while for
    /// a big state) so appends keep flowing meanwhile.
    async fn write_snapshot(&self, snapshot: Snapshot) -> Result<u64> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || snapshot::write(&dir, &snapshot).map(|_| snapshot.seq))
            .await
            .expect("snapshot writer panicked")
    }

    async fn request<T>(&self, cmd: Command, rx: oneshot::Receiver<Result<T>>) -> Result<T> {
        self.tx.send(cmd).map_err(|_| self.shared.stopped_error())?;
        rx.await
            .unwrap_or_else(|_| Err(self.shared.stopped_error()))
    }
}

/// The completion of one [`Wal::submit`]: resolves to the last seq of the
/// batch once it is durable (under `Always`) or written.
pub struct AppendTicket {
    /// `None` if the writer had already stopped when the batch was submitted.
    rx: Option<oneshot::Receiver<Result<u64>>>,
    shared: Arc<Shared>,
}

impl Future for AppendTicket {
    type Output = Result<u64>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(rx) = this.rx.as_mut() else {
            return Poll::Ready(Err(this.shared.stopped_error()));
        };
        Pin::new(rx)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(this.shared.stopped_error())))
    }
}

/// The writer thread's state.
struct Writer {
    log: Log,
    rx: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    policy: FsyncPolicy,
    /// Appends written but not yet completed (waiting for the fsync).
    waiting: Vec<(u64, oneshot::Sender<Result<u64>>)>,
    /// Whether anything was written since the last fsync.
    dirty: bool,
    /// A simulated power cut tears the next group written (see `power`).
    tear_armed: bool,
}

impl Writer {
    fn run(mut self) {
        let mut next_sync = Instant::now();
        loop {
            let first = match self.next_command(next_sync) {
                Ok(Some(cmd)) => cmd,
                Ok(None) => {
                    // Interval elapsed with nothing queued.
                    if let Err(e) = self.sync_now() {
                        return self.stop(e);
                    }
                    next_sync = self.next_deadline();
                    continue;
                }
                // Every handle is gone: make what we have durable and exit.
                // (Not sealed: only [`Wal::seal`] says the stop is clean.)
                Err(()) => {
                    if self.policy != FsyncPolicy::Never && self.dirty {
                        let _ = self.sync_now();
                    }
                    return;
                }
            };
            if let Err(e) = self.run_group(first) {
                return self.stop(e);
            }
            if matches!(self.policy, FsyncPolicy::Interval(_)) && Instant::now() >= next_sync {
                if let Err(e) = self.sync_now() {
                    return self.stop(e);
                }
                next_sync = self.next_deadline();
            }
        }
    }

    /// Blocks for the next command. Under `Interval` with unsynced data, gives
    /// up at `deadline` and returns `Ok(None)`. `Err` once all senders are gone.
    fn next_command(&self, deadline: Instant) -> std::result::Result<Option<Command>, ()> {
        match self.policy {
            FsyncPolicy::Interval(_) if self.dirty => {
                let wait = deadline.saturating_duration_since(Instant::now());
                match self.rx.recv_timeout(wait) {
                    Ok(cmd) => Ok(Some(cmd)),
                    Err(RecvTimeoutError::Timeout) => Ok(None),
                    Err(RecvTimeoutError::Disconnected) => Err(()),
                }
            }
            _ => self.rx.recv().map(Some).map_err(|_| ()),
        }
    }

    fn next_deadline(&self) -> Instant {
        match self.policy {
            FsyncPolicy::Interval(d) => Instant::now() + d,
            _ => Instant::now(),
        }
    }

    /// Handles `first` and everything else already queued, as one group.
    fn run_group(&mut self, first: Command) -> Result<()> {
        let mut group = vec![first];
        group.extend(self.rx.try_iter().take(MAX_GROUP - 1));
        self.shared.groups.fetch_add(1, Ordering::Relaxed);
        let mut rest = group.into_iter();
        let result = rest
            .by_ref()
            .try_for_each(|cmd| self.handle(cmd))
            .and_then(|()| self.commit());
        if let Err(e) = &result {
            // Record the reason while `rest` still holds the unhandled
            // commands: dropping them fails their callers, who read it.
            *self.shared.stopped.lock().unwrap() = Some(e.to_string());
        }
        result
    }

    fn handle(&mut self, cmd: Command) -> Result<()> {
        match cmd {
            Command::Append { entries, done } => self.append(entries, done)?,
            // Anything but an append acts on a log whose earlier appends are
            // complete, so finish the group so far first.
            Command::Sync { done } => {
                self.sync_now()?;
                self.complete_waiting();
                let _ = done.send(Ok(self.log.last_seq()));
            }
            Command::Compact { seq, done } => {
                self.commit()?;
                let result = self.log.compact(seq);
                if result.is_ok() {
                    self.shared.snapshot_seq.fetch_max(seq, Ordering::AcqRel);
                }
                let _ = done.send(result);
            }
            Command::Truncate { seq, done } => {
                self.commit()?;
                match self.log.truncate_after(seq) {
                    Ok((log, recovered)) => {
                        self.log = log;
                        self.publish_truncation(&recovered);
                        let _ = done.send(Ok(recovered));
                    }
                    // The files are in an unknown state: stop, as after
                    // any other I/O error, and let a restart recover.
                    Err(e) => {
                        let _ = done.send(Err(StorageError::Stopped(e.to_string())));
                        return Err(e);
                    }
                }
            }
            // Under `Never` nothing is claimed durable, so nothing is sealed.
            Command::Seal { done } => {
                if self.policy != FsyncPolicy::Never {
                    self.sync_now()?;
                    self.log.seal()?;
                }
                self.complete_waiting();
                let _ = done.send(Ok(self.log.last_seq()));
            }
            Command::PowerCut { tear: false } => self.log.power_cut(false),
            Command::PowerCut { tear: true } => self.tear_armed = true,
            Command::Reset { seq, done } => {
                self.commit()?;
                let result = self.log.reset(seq);
                if result.is_ok() {
                    self.publish_reset(seq);
                }
                let _ = done.send(result);
            }
        }
        Ok(())
    }

    fn append(
        &mut self,
        entries: Vec<Arc<Entry>>,
        done: oneshot::Sender<Result<u64>>,
    ) -> Result<()> {
        match self.log.append(&entries) {
            Ok(bytes) => {
                self.shared.bytes.fetch_add(bytes, Ordering::Relaxed);
                self.dirty |= !entries.is_empty();
                let last = self.log.last_seq();
                self.shared.last_seq.store(last, Ordering::Release);
                self.waiting.push((last, done));
                Ok(())
            }
            // A caller's mistake: refuse this batch, keep going.
            Err(e @ (StorageError::OutOfOrder { .. } | StorageError::SeqOutOfRange(_))) => {
                let _ = done.send(Err(e));
                Ok(())
            }
            Err(e) => {
                let _ = done.send(Err(StorageError::Stopped(e.to_string())));
                Err(e)
            }
        }
    }

    /// Ends a group: fsync if the policy wants it, then complete the appends.
    fn commit(&mut self) -> Result<()> {
        if self.tear_armed && self.log.has_unsynced_writes() {
            self.log.power_cut(true);
        }
        if self.policy == FsyncPolicy::Always && self.dirty {
            self.sync_now()?;
        }
        self.complete_waiting();
        Ok(())
    }

    fn sync_now(&mut self) -> Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let started = std::time::Instant::now();
        slow_fsync_pause();
        self.log.sync()?;
        self.shared.fsync_seconds.observe(started.elapsed());
        self.dirty = false;
        self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.shared
            .durable_seq
            .store(self.log.last_seq(), Ordering::Release);
        Ok(())
    }

    fn complete_waiting(&mut self) {
        // Counted before anyone is told: a caller that saw its append
        // complete must also see it in the stats.
        let n = self.waiting.len() as u64;
        self.shared.appends.fetch_add(n, Ordering::Relaxed);
        for (seq, done) in self.waiting.drain(..) {
            let _ = done.send(Ok(seq));
        }
    }

    /// After a reset the log restarts at `seq`, durably (the snapshot is).
    fn publish_reset(&mut self, seq: u64) {
        self.dirty = false;
        let s = &self.shared;
        s.last_seq.store(seq, Ordering::Release);
        s.durable_seq.store(seq, Ordering::Release);
        s.snapshot_seq.store(seq, Ordering::Release);
    }

    /// After a truncation the log ends where recovery found it, durably.
    fn publish_truncation(&mut self, recovered: &Recovered) {
        self.dirty = false;
        let s = &self.shared;
        let last = self.log.last_seq();
        s.last_seq.store(last, Ordering::Release);
        s.durable_seq.store(last, Ordering::Release);
        s.snapshot_seq
            .store(recovered.report.snapshot_seq, Ordering::Release);
    }

    /// Records why the writer stops and fails everything in flight. Commands
    /// still in the channel are dropped with it, which fails them too.
    fn stop(mut self, error: StorageError) {
        let why = error.to_string();
        *self.shared.stopped.lock().unwrap() = Some(why.clone());
        for (_, done) in self.waiting.drain(..) {
            let _ = done.send(Err(StorageError::Stopped(why.clone())));
        }
    }
}

/// Fault injection (`/admin/slow-disk`, see `node::faults`): until when, and
/// by how much, every fsync is slowed. Process-wide: a node has one disk.
static SLOW_FSYNCS: std::sync::Mutex<Option<(Duration, Instant)>> = std::sync::Mutex::new(None);

/// Makes every fsync take `extra` longer for `length` (zero ends it).
pub fn slow_down_fsyncs(extra: Duration, length: Duration) {
    *SLOW_FSYNCS.lock().unwrap() = Some((extra, Instant::now() + length));
}

/// On the writer thread, before an fsync: the injected delay, if any.
fn slow_fsync_pause() {
    let slow = *SLOW_FSYNCS.lock().unwrap();
    if let Some((extra, until)) = slow {
        if Instant::now() < until {
            thread::sleep(extra);
        }
    }
}

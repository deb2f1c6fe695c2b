//! How a node uses its write-ahead log ([`crate::storage`]) so that no
//! acknowledged write is lost in a crash.
//!
//! The rules, and why each holds the guarantee up:
//! - **Log order is seq order.** A write (leader) or a replicated batch
//!   (follower) is applied in memory and submitted to the log under the same
//!   lock, so the log on disk has the entries in seq order with no holes.
//! - **Ack after persist.** The leader answers a write, and a follower
//!   answers a replication batch, only once its log has completed the
//!   entries: fsynced under `--fsync always`, handed to the OS otherwise.
//!   A quorum write is therefore on the disks of the leader and of W sync
//!   followers before the client hears "ok".
//! - **Two fsyncs, one wait.** The leader streams a batch as soon as it has
//!   appended it, so the followers write it to their disks while the leader
//!   writes it to its own. A leader crash can therefore leave followers
//!   holding entries the leader's disk lacks (none of them acknowledged: an
//!   ack waits for both). A node that comes back behind its followers (that
//!   way, or after a damaged last record) is not elected over them:
//!   elections make the most advanced node lead, and its log is reconciled
//!   like any follower's (see `coordinator::failover`).
//! - **A clean stop seals the log** ([`crate::storage::Wal::seal`]): a last
//!   durable marker, so that damage found at the next start is known to hit
//!   durable data (corruption, repaired from the cluster) and is never taken
//!   for a torn write.
//! - **Bounded growth.** Every `--snapshot-every` entries the node writes a
//!   snapshot of its state and the log before it is deleted; recovery reads
//!   one snapshot plus a short log.
//!
//! A write the leader logged but did not get quorum for may or may not
//! survive a leader crash: if the log of the node elected next completed
//! it, it is recovered (and then replicated), otherwise it is gone. The client was told the write
//! failed (503) or timed out, so either outcome is allowed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;

use super::{Args, NodeState};
use crate::api::StorageStats;
use crate::http::ApiError;
use crate::storage::{
    AppendTicket, FsyncPolicy, Recovered, Snapshot, StorageConfig, StorageError, Wal,
};

/// A node's durable storage: the log handle plus the snapshot bookkeeping.
pub struct Durability {
    pub wal: Wal,
    pub dir: PathBuf,
    pub fsync: FsyncPolicy,
    /// Set while a snapshot is being taken, so at most one runs at a time.
    compacting: AtomicBool,
    recovered_seq: u64,
    recovery: String,
}

impl Durability {
    pub fn stats(&self) -> StorageStats {
        StorageStats {
            data_dir: self.dir.display().to_string(),
            fsync: self.fsync.to_string(),
            durable_seq: self.wal.durable_seq(),
            snapshot_seq: self.wal.snapshot_seq(),
            fsyncs: self.wal.stats().fsyncs,
            recovered_seq: self.recovered_seq,
            recovery: self.recovery.clone(),
        }
    }
}

/// The storage settings the node's flags ask for; `None` means in-memory.
pub fn config(args: &Args) -> Option<StorageConfig> {
    let dir = args.data_dir.clone()?;
    let mut config = StorageConfig::new(dir);
    config.fsync = args
        .fsync
        .with_interval(Duration::from_millis(args.fsync_interval_ms.max(1)));
    config.snapshot_every = (args.snapshot_every > 0).then_some(args.snapshot_every);
    Some(config)
}

/// Marks the error of a start whose log is damaged in the middle (or has a
/// gap): not a passing failure but data the node cannot serve. The node
/// exits with [`EXIT_CORRUPT_LOG`], so its supervisor can tell this case
/// apart and repair it (the coordinator rebuilds a follower from the leader).
#[derive(Debug, thiserror::Error)]
#[error("the node's log is corrupt")]
pub struct CorruptLog;

/// The exit code of a node that refused to serve a corrupt log.
pub use crate::api::EXIT_CORRUPT_LOG;

/// Opens the data directory and recovers what it holds. A damaged log is an
/// error (marked [`CorruptLog`]): the node must refuse to serve rather than
/// serve a state with a hole in it. A torn tail (the last record half-written by a crash) is normal: it
/// is cut off and reported.
pub async fn open(config: StorageConfig) -> anyhow::Result<(Durability, Recovered)> {
    let started = Instant::now();
    let dir = config.dir.clone();
    let fsync = config.fsync;
    let (wal, recovered) = Wal::open(config).await.map_err(|e| {
        let corrupt = matches!(e, StorageError::Corrupt { .. } | StorageError::Gap { .. });
        let error = anyhow::anyhow!(
            "refusing to serve: cannot recover the data directory {}: {e}",
            dir.display()
        );
        if corrupt {
            error.context(CorruptLog)
        } else {
            error
        }
    })?;
    let report = &recovered.report;
    if let Some(torn) = &report.torn_tail {
        tracing::warn!(
            segment = %torn.segment.display(),
            offset = torn.offset,
            dropped_bytes = torn.dropped_bytes,
            reason = %torn.reason,
            "the log ended in a torn write (a crash or power cut mid-write, never fsynced): dropped it"
        );
    }
    tracing::info!(
        dir = %dir.display(),
        %fsync,
        keys = recovered.state.data.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "{report}"
    );
    let durability = Durability {
        wal,
        dir,
        fsync,
        compacting: AtomicBool::new(false),
        recovered_seq: recovered.state.seq,
        recovery: report.to_string(),
    };
    Ok((durability, recovered))
}

/// Waits until the log has completed an append. A storage failure is fatal
/// for the node: after a failed fsync nobody knows what the disk holds, so
/// the node stops and a restart recovers from what is really there.
pub async fn wait_persisted(node: &NodeState, ticket: AppendTicket) -> Result<u64, ApiError> {
    ticket.await.map_err(|e| storage_failed(node, e))
}

/// Answers 500 and stops the node (see [`wait_persisted`]).
pub fn storage_failed(node: &NodeState, error: StorageError) -> ApiError {
    tracing::error!(%error, "storage failed: stopping the node");
    // Its supervisor learns why from the exit code.
    let code = if error.is_disk_full() {
        crate::api::EXIT_DISK_FULL
    } else {
        crate::api::EXIT_STORAGE_FAILED
    };
    let _ = node
        .exit_code
        .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
    node.shutdown.notify_one();
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("{}: storage failed, the node is stopping: {error}", node.id),
    )
}

/// Takes a snapshot in the background once enough entries have accumulated
/// since the last one, so the log (and recovery time) stays bounded.
pub fn snapshot_if_due(node: &Arc<NodeState>, applied_seq: u64) {
    let Some(d) = &node.durability else { return };
    if !d.wal.should_snapshot(applied_seq) || d.compacting.swap(true, Ordering::AcqRel) {
        return;
    }
    let node = node.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        match take_snapshot(&node).await {
            Ok(report) => tracing::info!(
                seq = report.snapshot_seq,
                removed_segments = report.removed_segments.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "snapshot written, log truncated"
            ),
            // A snapshot installed from the leader meanwhile makes ours
            // stale; nothing is lost, the next one will do.
            Err(e) => tracing::warn!(error = %e, "snapshot skipped"),
        }
        if let Some(d) = &node.durability {
            d.compacting.store(false, Ordering::Release);
        }
    });
}

async fn take_snapshot(node: &Arc<NodeState>) -> anyhow::Result<crate::storage::CompactReport> {
    let d = node.durability.as_ref().expect("only called when durable");
    // Copying a big state takes a while: do it off the async threads.
    let copier = node.clone();
    let (seq, term, data) = tokio::task::spawn_blocking(move || {
        let core = copier.core.lock().unwrap();
        let seq = core.store.applied_seq();
        let term = core.terms.history.term_at(seq).unwrap_or(0);
        (seq, term, core.store.to_map())
    })
    .await?;
    // Everything up to `seq` was submitted to the log before we copied the
    // state; make sure it is written before the snapshot replaces it.
    d.wal.sync().await?;
    let snapshot = Snapshot { seq, term, data };
    Ok(d.wal.compact(snapshot).await?)
}

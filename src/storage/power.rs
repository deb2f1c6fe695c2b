//! Simulated power loss: a test switch that makes a process kill behave like
//! a power cut for the log.
//!
//! A killed process loses nothing it wrote: the kernel's page cache keeps it.
//! A power cut loses everything that was not fsynced, and may tear the last
//! write (its later pages on disk, its earlier ones not). To test the second
//! without a special file system, the node (hidden flag
//! `--simulate-power-loss`) keeps the log's writes that were not fsynced in
//! memory ([`Volatile`]) and writes them to the file only right before the
//! fsync that makes them durable. Killing such a node (`SIGKILL`, or the
//! whole cluster) then loses exactly what a power cut would, and
//! [`Volatile::cut`] can also tear the last write on purpose.
//!
//! What it models, and what it does not (see README "Durability"): it holds
//! back the writes of the active log segment, which are kvlab's only writes
//! that wait for a later fsync; every other file (segment headers, snapshots,
//! the term file, renames) is fsynced as it is written, so a power cut can
//! lose none of it. It does not model a disk that lies about fsync, nor the
//! kernel writing pages back on its own (that only makes more data durable,
//! except under `--fsync never`, where up to [`WRITEBACK_BYTES`] are kept
//! back before the oldest are written, as writeback would).
//!
//! Invariant: with the switch off, [`Volatile`] writes straight through and
//! holds nothing.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Result, StorageError};

static SIMULATE: AtomicBool = AtomicBool::new(false);

/// How many unsynced bytes are held back at most: past this the oldest
/// writes go to the file (the kernel's writeback, for `--fsync never`).
pub const WRITEBACK_BYTES: usize = 4 * 1024 * 1024;

/// The hole a torn write leaves at its start: a record header and a little
/// more, so that the record there cannot be read, while whole records after
/// it can.
pub const TEAR_HOLE: usize = 16;

/// Turns the simulation on for this process (the node's hidden flag).
pub fn simulate_power_loss() {
    SIMULATE.store(true, Ordering::Release);
}

/// Whether this process simulates power loss.
pub fn simulating() -> bool {
    SIMULATE.load(Ordering::Acquire)
}

/// The writes of the active segment that no fsync has covered yet (only
/// while simulating; see the module doc).
#[derive(Debug, Default)]
pub(crate) struct Volatile {
    pending: Vec<(u64, Vec<u8>)>,
    bytes: usize,
}

impl Volatile {
    /// Writes `buf` at `offset`: held back while simulating, else at once.
    pub fn write(&mut self, file: &File, path: &Path, buf: &[u8], offset: u64) -> Result<()> {
        if !simulating() {
            return write_at(file, path, buf, offset);
        }
        self.pending.push((offset, buf.to_vec()));
        self.bytes += buf.len();
        while self.bytes > WRITEBACK_BYTES && self.pending.len() > 1 {
            let (at, oldest) = self.pending.remove(0);
            self.bytes -= oldest.len();
            write_at(file, path, &oldest, at)?;
        }
        Ok(())
    }

    /// Writes everything held back to the file: called right before an
    /// fsync (or anything that reads or cuts the file).
    pub fn flush(&mut self, file: &File, path: &Path) -> Result<()> {
        self.bytes = 0;
        for (at, buf) in self.pending.drain(..) {
            write_at(file, path, &buf, at)?;
        }
        Ok(())
    }

    /// Whether writes are held back (a power cut now would lose them).
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The power cut: everything held back is lost, except that with `tear`
    /// the held-back bytes after their first [`TEAR_HOLE`] reach the disk (a
    /// write torn by the cut: a hole, then what may be valid records). Then
    /// the process dies at once, as the machine would.
    pub fn cut(&mut self, file: &File, tear: bool) -> ! {
        if tear {
            let start = self.pending.first().map_or(0, |(at, _)| *at);
            let mut bytes = Vec::new();
            for (at, buf) in &self.pending {
                // Appends are contiguous; anything else is left out.
                if *at == start + bytes.len() as u64 {
                    bytes.extend_from_slice(buf);
                }
            }
            if bytes.len() > TEAR_HOLE {
                let _ = file.write_all_at(&bytes[TEAR_HOLE..], start + TEAR_HOLE as u64);
                let _ = file.sync_data();
            }
        }
        tracing::warn!(tear, "simulated power cut: the node dies now");
        // SAFETY: raising a signal on our own process has no memory effects.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        std::process::abort()
    }
}

fn write_at(file: &File, path: &Path, buf: &[u8], offset: u64) -> Result<()> {
    file.write_all_at(buf, offset)
        .map_err(|e| StorageError::io(path, e))
}

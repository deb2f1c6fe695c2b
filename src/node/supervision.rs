//! Who supervises this node: the coordinator's epoch, adoption by a
//! restarted coordinator, and the orphan rule.
//!
//! A node started by kvlab's process runtime outlives its coordinator: when
//! the coordinator crashes, the cluster's data keeps running, and the next
//! coordinator *adopts* the node (`POST /admin/adopt`) instead of starting
//! it again. Three rules keep that safe:
//! - **Epochs only grow.** Every coordinator that takes charge has an epoch
//!   higher than any before it, and sends it on every request
//!   (`api::HEADER_COORDINATOR_EPOCH`). The node keeps the highest epoch it
//!   has obeyed (on disk, `<data dir>/coordinator-epoch`, written before it
//!   answers the request that raised it) and refuses a lower one with 409
//!   `api::STALE_COORDINATOR`: a coordinator that was replaced cannot
//!   reconfigure anything. Requests without the header (the leader's
//!   replication, curl) are not checked.
//! - **Adoption names the process.** `POST /admin/adopt` carries the
//!   incarnation the coordinator knows this process by; another number is a
//!   409, since the coordinator means another process.
//! - **No orphan lives forever.** With `--supervisor-pid`, the node checks
//!   every second that this process still exists. Once it has been gone for
//!   `--orphan-timeout` seconds and no coordinator adopted the node (which
//!   replaces the watched pid), the node says why and stops gracefully
//!   (exit 0).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde_json::json;

use super::{NodeState, Shared};
use crate::api::{self, AdoptRequest, AdoptResponse};
use crate::http::{ApiError, ApiJson};

/// The file, in the node's data directory, that holds the highest
/// coordinator epoch the node has obeyed.
pub const EPOCH_FILE: &str = "coordinator-epoch";

/// How often the orphan watch looks at the supervisor.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// The node's side of supervision (see the module doc).
pub struct Supervision {
    /// The highest coordinator epoch obeyed.
    epoch: AtomicU64,
    /// Raises of the epoch take turns, so the file never goes back.
    raising: tokio::sync::Mutex<()>,
    /// Where the epoch is kept; `None` in memory.
    file: Option<PathBuf>,
    /// The process whose death starts the orphan countdown.
    supervisor: Mutex<Option<u32>>,
    orphan_timeout: Duration,
}

impl Supervision {
    /// Reads the epoch kept in `data_dir` (0 when there is none).
    pub fn new(
        data_dir: Option<&Path>,
        supervisor: Option<u32>,
        orphan_timeout: Duration,
    ) -> Supervision {
        let file = data_dir.map(|d| d.join(EPOCH_FILE));
        let epoch = file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        Supervision {
            epoch: AtomicU64::new(epoch),
            raising: tokio::sync::Mutex::new(()),
            file,
            supervisor: Mutex::new(supervisor),
            orphan_timeout,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }
}

/// The 409 to a coordinator older than one the node has obeyed.
fn stale(node: &NodeState, given: u64, current: u64) -> ApiError {
    ApiError::conflict(json!({
        "error": api::STALE_COORDINATOR,
        "coordinator_epoch": current,
        "given": given,
        "node_id": node.id,
        "message": format!(
            "this node obeys coordinator epoch {current}; a request of epoch {given} comes \
             from a coordinator that was replaced"
        ),
    }))
}

/// Checks the `X-Kvlab-Coordinator-Epoch` header of a request, if it has
/// one: lower is refused, higher is kept (on disk first).
pub async fn check_request_epoch(node: &NodeState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(api::HEADER_COORDINATOR_EPOCH) else {
        return Ok(());
    };
    let epoch = value
        .to_str()
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| ApiError::bad_request("X-Kvlab-Coordinator-Epoch must be a whole number"))?;
    obey(node, epoch).await
}

/// Refuses an epoch below the one obeyed; keeps a higher one durably
/// before returning, so a restarted node still refuses the old coordinator.
async fn obey(node: &NodeState, epoch: u64) -> Result<(), ApiError> {
    let s = &node.supervision;
    let current = s.epoch();
    if epoch == current {
        return Ok(()); // the steady state: no lock, no disk
    }
    let _turn = s.raising.lock().await;
    let current = s.epoch();
    if epoch < current {
        return Err(stale(node, epoch, current));
    }
    if epoch == current {
        return Ok(());
    }
    if let Some(file) = s.file.clone() {
        tokio::task::spawn_blocking(move || save_epoch(&file, epoch))
            .await
            .map_err(|e| ApiError::internal(format!("saving the coordinator epoch: {e}")))?
            .map_err(|e| ApiError::internal(format!("cannot save the coordinator epoch: {e}")))?;
    }
    s.epoch.store(epoch, Ordering::Release);
    tracing::info!(
        epoch,
        previous = current,
        "a new coordinator is in charge (epoch {current} -> {epoch}); requests of older epochs \
         are refused from now on"
    );
    Ok(())
}

/// Writes the epoch atomically: a temporary file, fsynced, renamed.
fn save_epoch(file: &Path, epoch: u64) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = file.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(format!("{epoch}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, file)?;
    if let Some(dir) = file.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// `POST /admin/adopt`: a coordinator takes charge of this running process.
pub async fn adopt(
    State(node): Shared,
    ApiJson(req): ApiJson<AdoptRequest>,
) -> Result<Json<AdoptResponse>, ApiError> {
    if req.incarnation != node.incarnation {
        return Err(ApiError::conflict(json!({
            "error": "wrong incarnation",
            "node_id": node.id,
            "incarnation": node.incarnation,
            "given": req.incarnation,
            "message": format!(
                "{} is incarnation {}, not {}: the coordinator means another process of \
                 this slot",
                node.id, node.incarnation, req.incarnation
            ),
        })));
    }
    obey(&node, req.epoch).await?;
    if let Some(pid) = req.coordinator_pid {
        *node.supervision.supervisor.lock().unwrap() = Some(pid);
    }
    let by = if req.coordinator_url.is_empty() {
        "a coordinator".to_string()
    } else {
        format!("the coordinator at {}", req.coordinator_url)
    };
    tracing::info!(
        epoch = req.epoch,
        coordinator_pid = ?req.coordinator_pid,
        "🤝 adopted by {by} (epoch {}): this process keeps running and serving",
        req.epoch
    );
    Ok(Json(AdoptResponse {
        node_id: node.id.clone(),
        incarnation: node.incarnation,
        role: node.role(),
        term: node.term(),
        coordinator_epoch: node.supervision.epoch(),
        pid: std::process::id(),
    }))
}

/// The orphan watch (see the module doc): stops the node once its
/// supervisor has been gone for the orphan timeout without an adoption.
pub async fn watch_orphan(node: Arc<NodeState>) {
    let timeout = node.supervision.orphan_timeout;
    let mut gone_since: Option<(u32, Instant)> = None;
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let Some(pid) = *node.supervision.supervisor.lock().unwrap() else {
            continue;
        };
        if crate::process::exists(pid) {
            gone_since = None;
            continue;
        }
        // A new supervisor (an adoption) restarts the countdown.
        let since = match gone_since {
            Some((p, t)) if p == pid => t,
            _ => {
                tracing::warn!(
                    supervisor_pid = pid,
                    "the coordinator that supervises this node (pid {pid}) is gone; this node \
                     keeps serving, and stops in {} s unless a coordinator adopts it",
                    timeout.as_secs()
                );
                let now = Instant::now();
                gone_since = Some((pid, now));
                now
            }
        };
        if since.elapsed() >= timeout {
            tracing::warn!(
                supervisor_pid = pid,
                "stopping: no coordinator has supervised this node for {} s (--orphan-timeout); \
                 an orphan must not run forever",
                timeout.as_secs()
            );
            node.shutdown.notify_one();
            return;
        }
    }
}

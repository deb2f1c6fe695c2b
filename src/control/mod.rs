//! The control store: where a coordinator keeps what it must not forget.
//!
//! A coordinator's memory is not enough: if its process dies, the next
//! coordinator (the same one restarted, or a standby taking over) must know
//! the cluster it is taking charge of: which slots exist, which process
//! serves each (its incarnation and pid), the term, who led, and the epoch
//! of the last coordinator in charge. That is a [`ClusterMap`], kept in one
//! of two places:
//!
//! - [`file`]: `coordinator.json` in the coordinator's data directory (the
//!   embedded default: one coordinator, nothing to install);
//! - [`etcd`]: an etcd cluster shared by several coordinator processes, one
//!   of which holds a lease and is *active* (see `coordinator::control`).
//!
//! Invariants:
//! - a map is saved before anything relies on it: an incarnation before the
//!   process that carries it starts, a term before a node is promoted to it;
//!   so incarnations and terms never repeat across coordinator restarts;
//! - epochs only grow: every coordinator that takes charge gets one higher
//!   than any before it, and nodes refuse a lower one
//!   (`api::HEADER_COORDINATOR_EPOCH`).

use serde::{Deserialize, Serialize};

use crate::api::Role;

pub mod etcd;
pub mod file;

/// Where a coordinator keeps its map (`--control-store`): `file` (the
/// default) or `etcd://HOST:PORT[,HOST:PORT...]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoreSpec {
    #[default]
    File,
    /// The etcd endpoints, `HOST:PORT` each.
    Etcd(Vec<String>),
}

impl std::str::FromStr for StoreSpec {
    type Err = etcd::EtcdError;

    fn from_str(given: &str) -> Result<StoreSpec, etcd::EtcdError> {
        if given == "file" {
            return Ok(StoreSpec::File);
        }
        etcd::parse_endpoints(given).map(StoreSpec::Etcd)
    }
}

/// The store the coordinator in charge saves its map to: one call whatever
/// the mode.
#[derive(Debug, Clone)]
pub enum ControlStore {
    File(file::FileStore),
    /// The active coordinator's mandate: its saves are fenced.
    Etcd(etcd::Mandate),
}

impl ControlStore {
    /// The saved map, if any.
    pub async fn load(&self) -> Result<Option<ClusterMap>, StoreError> {
        match self {
            ControlStore::File(f) => {
                let f = f.clone();
                tokio::task::spawn_blocking(move || f.load())
                    .await
                    .expect("loading the map does not panic")
            }
            ControlStore::Etcd(m) => Ok(m.store().load_map().await?),
        }
    }

    /// Saves the map durably; in etcd mode only while this coordinator is
    /// still the active one ([`etcd::EtcdError::Deposed`] otherwise).
    pub async fn save(&self, map: &ClusterMap) -> Result<(), StoreError> {
        match self {
            ControlStore::File(f) => {
                let (f, map) = (f.clone(), map.clone());
                tokio::task::spawn_blocking(move || f.save(&map))
                    .await
                    .expect("saving the map does not panic")
            }
            ControlStore::Etcd(m) => Ok(m.save_map(map).await?),
        }
    }

    /// `/status`' `control_plane.store`: the file, or the endpoints.
    pub fn describe(&self) -> String {
        match self {
            ControlStore::File(f) => f.path().display().to_string(),
            ControlStore::Etcd(m) => m.store().endpoints(),
        }
    }
}

/// What a coordinator must not forget, saved in the control store.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterMap {
    /// The epoch of the coordinator that saved this map.
    pub epoch: u64,
    /// The next incarnation to hand out: no process of this cluster has had
    /// it or any number above it.
    pub next_incarnation: u64,
    /// The highest term a coordinator of this cluster has promoted a node to.
    pub term: u64,
    /// The node id of the slot that led in `term`, if any.
    #[serde(default)]
    pub leader: Option<String>,
    /// Every slot, leader included, sorted by port.
    #[serde(default)]
    pub slots: Vec<SlotRecord>,
    /// The shape the cluster was started with (N, W, R): a coordinator
    /// started with another shape says so instead of adopting it silently.
    pub followers: usize,
    pub w: usize,
    pub r: usize,
}

/// One slot as the control store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRecord {
    pub node_id: String,
    pub role: Role,
    pub port: u16,
    pub url: String,
    /// The process serving the slot (0: none started yet).
    pub incarnation: u64,
    #[serde(default)]
    pub pid: Option<u32>,
}

/// A control store that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Etcd(#[from] etcd::EtcdError),
    #[error("cannot read the coordinator's state {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write the coordinator's state {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the coordinator's state {path} is not valid JSON ({source}); move it aside to start \
         a new control plane over the nodes' data"
    )]
    Corrupt {
        path: String,
        source: serde_json::Error,
    },
}

//! The coordinator's durable state: the [`ClusterMap`] in `coordinator.json`,
//! next to the nodes' data (`<data dir>/coordinator.json`; in memory, `<log
//! dir>/coordinator.json`), the embedded control plane; or in etcd, for the
//! active coordinator of several (see [`super::control`]), whose saves are
//! fenced by its mandate.
//!
//! Invariants:
//! - **the epoch grows with every start**: the saved epoch + 1, saved before
//!   the coordinator sends its first request, and sent on every request to
//!   a node (`api::HEADER_COORDINATOR_EPOCH`, a default header of the
//!   coordinator's client), so the nodes refuse a replaced coordinator;
//! - **saved before relied on**: a new incarnation is saved before its
//!   process starts, a term before a node is promoted to it; so neither is
//!   ever handed out twice, even across a crash of the coordinator;
//! - saves take turns and run off the async threads (`spawn_blocking`).

use std::sync::{Arc, Mutex};

use super::Coordinator;
use crate::api::{ControlPlaneView, CoordinatorRef};
use crate::control::file::FileStore;
use crate::control::{ClusterMap, ControlStore, SlotRecord};

/// `/status`' `control_plane` when someone else knows it better (etcd
/// mode: the control plane, which reads the standbys from etcd).
pub type ViewSource = Arc<dyn Fn() -> ControlPlaneView + Send + Sync>;

/// Where the map is kept and what this coordinator knows of it.
pub struct ControlState {
    store: ControlStore,
    /// etcd mode: where `/status`' `control_plane` comes from.
    view_source: Option<ViewSource>,
    /// This coordinator's epoch.
    pub epoch: u64,
    /// This coordinator, as `/status` names it.
    pub me: CoordinatorRef,
    /// The map a previous coordinator left, as found at start (before this
    /// coordinator's own first save): what it may adopt.
    found: Mutex<Option<ClusterMap>>,
    /// Saves take turns, so an older map never lands after a newer one.
    saving: tokio::sync::Mutex<()>,
}

impl ControlState {
    /// Loads the map in `dir`, takes the next epoch and saves it at once.
    /// Runs once, before the coordinator serves anything: the one blocking
    /// read and write of its start.
    pub fn open(
        dir: &std::path::Path,
        me: CoordinatorRef,
        shape: (usize, usize, usize),
    ) -> anyhow::Result<ControlState> {
        let store = FileStore::in_dir(dir);
        let found = store.load()?;
        let (followers, w, r) = shape;
        let mut map = found.clone().unwrap_or(ClusterMap {
            next_incarnation: 1,
            followers,
            w,
            r,
            ..ClusterMap::default()
        });
        map.epoch += 1;
        store.save(&map)?;
        Ok(ControlState {
            store: ControlStore::File(store),
            view_source: None,
            epoch: map.epoch,
            me,
            found: Mutex::new(found),
            saving: tokio::sync::Mutex::new(()),
        })
    }

    /// The active coordinator's state in etcd mode: the mandate it won
    /// (its epoch, its fenced saves) and the map found in etcd.
    pub fn taken_over(
        mandate: crate::control::etcd::Mandate,
        found: Option<ClusterMap>,
        me: CoordinatorRef,
        view_source: ViewSource,
    ) -> ControlState {
        ControlState {
            epoch: mandate.epoch,
            store: ControlStore::Etcd(mandate),
            view_source: Some(view_source),
            me,
            found: Mutex::new(found),
            saving: tokio::sync::Mutex::new(()),
        }
    }

    /// Where the map lives: the file, or the etcd endpoints.
    pub fn describe(&self) -> String {
        self.store.describe()
    }

    /// The map found at start, if a previous coordinator left one.
    pub fn found(&self) -> Option<ClusterMap> {
        self.found.lock().unwrap().clone()
    }

    /// Forgets the previous coordinator's slots (`--fresh`): its nodes are
    /// gone. Its epoch and incarnations still count.
    pub fn forget_found_slots(&self) {
        if let Some(map) = self.found.lock().unwrap().as_mut() {
            map.slots.clear();
            map.leader = None;
        }
    }

    /// Saves the found map again with this epoch (after `--fresh` wiped
    /// the directory). At start only, before anything is served; the file
    /// store only (etcd mode refuses `--fresh`).
    pub fn save_found(&self) -> anyhow::Result<()> {
        let mut map = self.found().unwrap_or_default();
        map.epoch = self.epoch;
        map.next_incarnation = map.next_incarnation.max(1);
        match &self.store {
            ControlStore::File(file) => Ok(file.save(&map)?),
            ControlStore::Etcd(_) => anyhow::bail!("--fresh does not go with --control-store etcd"),
        }
    }

    /// `/status`'s `control_plane`.
    pub fn view(&self) -> ControlPlaneView {
        if let Some(source) = &self.view_source {
            return source();
        }
        ControlPlaneView {
            mode: "embedded".into(),
            store: self.store.describe(),
            active: Some(self.me.clone()),
            epoch: self.epoch,
            standbys: vec![],
            lease_ttl_s: None,
            this: "active".into(),
        }
    }
}

impl Coordinator {
    /// The map as the table stands now (the term at least `term`).
    fn current_map(&self, term: u64) -> ClusterMap {
        let c = self.snapshot();
        let slots = std::iter::once(&c.leader)
            .chain(c.followers.iter())
            .map(|s| SlotRecord {
                node_id: s.node_id.clone(),
                role: s.role,
                port: s.port,
                url: s.url.clone(),
                incarnation: s.incarnation,
                pid: s.pid,
            })
            .collect();
        ClusterMap {
            epoch: self.control.epoch,
            next_incarnation: c.next_incarnation(),
            term: c.term.max(term).max(self.promoted_in()),
            leader: Some(c.leader.node_id.clone()),
            slots,
            followers: self.config.followers,
            w: self.config.w,
            r: self.config.r,
        }
    }

    /// Saves the table (see the module's invariants), with the term at
    /// least `term` (a term about to be promoted).
    pub(super) async fn save_map(&self, term: u64) -> anyhow::Result<()> {
        let _turn = self.control.saving.lock().await;
        let map = self.current_map(term);
        // The file is written on the blocking pool (`ControlStore::save`);
        // in etcd mode a deposed coordinator's save is refused here.
        self.control.store.save(&map).await?;
        Ok(())
    }
}

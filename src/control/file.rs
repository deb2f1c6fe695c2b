//! The embedded control store: the [`ClusterMap`] in one JSON file,
//! `coordinator.json`, in the coordinator's data directory.
//!
//! Invariant: a save is atomic and durable before it returns: the map is
//! written to a temporary file, fsynced, renamed over the old one, and the
//! directory is fsynced; a crash at any point leaves the old map or the new
//! one, never a mix.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{ClusterMap, StoreError};

/// The file's name inside the coordinator's directory.
pub const FILE_NAME: &str = "coordinator.json";

/// `coordinator.json` in one directory.
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    pub fn in_dir(dir: &Path) -> FileStore {
        FileStore {
            path: dir.join(FILE_NAME),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved map, or `None` if no coordinator saved one here.
    pub fn load(&self) -> Result<Option<ClusterMap>, StoreError> {
        let path = self.path.display().to_string();
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StoreError::Corrupt { path, source })
    }

    /// Saves the map durably (see the module's invariant). Blocking: call it
    /// from `spawn_blocking` on an async thread.
    pub fn save(&self, map: &ClusterMap) -> Result<(), StoreError> {
        let err = |source| StoreError::Write {
            path: self.path.display().to_string(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(err)?;
        let tmp = self.path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(map).expect("a map always serializes");
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&json).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_map_loads_back_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::in_dir(dir.path());
        assert_eq!(store.load().unwrap(), None);
        let map = ClusterMap {
            epoch: 3,
            next_incarnation: 7,
            term: 2,
            leader: Some("follower-1".into()),
            followers: 2,
            w: 2,
            r: 1,
            ..ClusterMap::default()
        };
        store.save(&map).unwrap();
        assert_eq!(store.load().unwrap(), Some(map));
    }

    #[test]
    fn a_garbled_map_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::in_dir(dir.path());
        std::fs::write(store.path(), b"{not json").unwrap();
        let e = store.load().unwrap_err().to_string();
        assert!(
            e.contains("not valid JSON") && e.contains("move it aside"),
            "{e}"
        );
    }
}

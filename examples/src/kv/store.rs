//! The log store of a `kv-node`, behind one type alias and one function so that the backend is
//! chosen in one place.

use std::path::Path;

/// The log store `kv-node` runs on: LMDB, every acknowledged write synced to disk.
pub type Store = raft_lmdb::LmdbLogStore;

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the log store in {path}: {message}")]
pub struct StoreOpenError {
    /// The directory.
    pub path: String,
    /// What went wrong.
    pub message: String,
}

/// Opens (or creates) the node's log store in `dir`.
pub fn open_store(dir: &Path) -> Result<Store, StoreOpenError> {
    raft_lmdb::LmdbLogStore::open_dir(dir)
        .map_err(|e| StoreOpenError { path: dir.display().to_string(), message: e.to_string() })
}

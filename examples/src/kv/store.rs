//! The log store of a `kv-node`, behind one type alias and one function so that the backend is
//! chosen in one place.

use std::path::Path;

/// The log store `kv-node` runs on.
pub type Store = raft_mem::MemLogStore;

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
///
/// Until `raft-lmdb` lands this is an in-memory store: a restarted process starts empty.
pub fn open_store(dir: &Path) -> Result<Store, StoreOpenError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| StoreOpenError { path: dir.display().to_string(), message: e.to_string() })?;
    Ok(raft_mem::MemLogStore::new())
}

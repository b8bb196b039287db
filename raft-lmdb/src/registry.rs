//! Exclusive ownership of a store directory: at most one open store per directory in this
//! process (a process-wide registry) and across processes (an advisory lock on a lock file).
//!
//! This is what makes the one `unsafe` call of the crate sound: LMDB must not map the same
//! environment twice in one process, and the data file must not be modified behind the map by
//! anyone but LMDB itself.

use std::collections::HashSet;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::error::OpenError;

/// Name of the lock file in a store directory.
pub(crate) const LOCK_FILE: &str = "raft-lmdb.lock";

/// Canonical paths of the directories opened by a live store of this process.
static OPEN_DIRS: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

fn open_dirs() -> MutexGuard<'static, Option<HashSet<PathBuf>>> {
    // The set is only inserted into or removed from; a panic elsewhere cannot leave it torn.
    OPEN_DIRS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Proof that this store exclusively owns a directory. Dropping it releases the directory (the
/// environment must have been closed before).
#[derive(Debug)]
pub(crate) struct DirGuard {
    path: PathBuf,
    /// Holds the exclusive advisory lock for as long as it is open.
    _lock_file: File,
}

impl DirGuard {
    /// Claims `dir` (already canonical) for this store, or says who holds it.
    pub(crate) fn acquire(dir: &Path) -> Result<DirGuard, OpenError> {
        let path = dir.to_path_buf();
        {
            let mut dirs = open_dirs();
            let set = dirs.get_or_insert_with(HashSet::new);
            if !set.insert(path.clone()) {
                return Err(OpenError::AlreadyOpenInProcess { path });
            }
        }
        match lock_file(&path) {
            Ok(file) => Ok(DirGuard { path, _lock_file: file }),
            Err(err) => {
                release(&path);
                Err(err)
            }
        }
    }

    /// The canonical directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        release(&self.path);
    }
}

fn release(path: &Path) {
    if let Some(set) = open_dirs().as_mut() {
        set.remove(path);
    }
}

fn lock_file(dir: &Path) -> Result<File, OpenError> {
    let lock_path = dir.join(LOCK_FILE);
    let io = |source| OpenError::Io { path: lock_path.clone(), source };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => {
            Err(OpenError::LockedByOtherProcess { path: dir.to_path_buf() })
        }
        Err(TryLockError::Error(source)) => Err(io(source)),
    }
}

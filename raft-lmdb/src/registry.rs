//! Exclusive ownership of a store directory (an LMDB store's or a snapshot store's): at most one
//! open store per directory in this process (a process-wide registry) and across processes (an
//! advisory `flock` on the directory itself).
//!
//! This is what makes the one `unsafe` call of the crate sound: LMDB must not map the same
//! environment twice in one process, and the data file must not be modified behind the map by
//! anyone but LMDB itself. It also keeps two snapshot stores from writing into one directory.
//!
//! # Why a lock on the directory
//!
//! The lock is held on an open descriptor of the directory, not on a lock file inside it. A lock
//! file can be deleted (by an operator tidying up, a script cleaning "stale locks", a restore
//! from a backup): the next process then creates a new file, locks that one and opens the store
//! while the first process still has it open. The directory cannot be deleted while it holds the
//! store's files, and a directory moved elsewhere keeps its lock (the lock belongs to the inode,
//! whatever path reaches it), so whoever reaches the store's files through any path meets the
//! lock. A lock on `data.mdb` would protect the LMDB store equally well, but the file would have
//! to be created before LMDB opens it, and a snapshot directory has no file that is always
//! there. `flock` locks belong to the open file description, so LMDB's own descriptors and
//! locks (`fcntl` on `lock.mdb`) neither release nor conflict with it; it is released when the
//! process exits, however it exits. Directory locks need a Unix `flock`; like LMDB itself, they
//! are meant for local file systems. One consequence of a lock that belongs to the open file: a
//! child process being spawned holds a copy of every descriptor until it runs its program, so a
//! store dropped and reopened at that moment by another thread of the same process can be told
//! the directory is locked by another process (the old lock file behaved the same way).
//!
//! Builds before this one locked a file `raft-lmdb.lock` in the store directory. While such a
//! file exists, [`LegacyLock`] takes it too, so that an older build still running on the store
//! is detected; it is deleted once the store is open (and the format upgrade makes older builds
//! refuse the store from then on).

use std::collections::HashSet;
use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::error::OpenError;
use crate::fsdir;

/// Name of the lock file that builds before directory locks kept in a store directory.
pub(crate) const LEGACY_LOCK_FILE: &str = "raft-lmdb.lock";

/// Canonical paths of the directories opened by a live store of this process.
static OPEN_DIRS: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

fn open_dirs() -> MutexGuard<'static, Option<HashSet<PathBuf>>> {
    // The set is only inserted into or removed from; a panic elsewhere cannot leave it torn.
    OPEN_DIRS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Proof that this store exclusively owns a directory. Dropping it releases the directory (an
/// LMDB environment in it must have been closed before).
#[derive(Debug)]
pub(crate) struct DirGuard {
    path: PathBuf,
    /// The directory, open, holding the exclusive advisory lock for as long as it is open.
    _locked_dir: File,
}

impl DirGuard {
    /// Creates `dir` if it does not exist and makes its entry durable either way (see
    /// [`fsdir::create_dir_durably`]: a directory left by a run killed before it synced the
    /// entry is synced now), and claims it for this store, or says why not (not a directory,
    /// held by someone else).
    pub(crate) fn open(dir: &Path) -> Result<DirGuard, OpenError> {
        let io_err = |source: io::Error| OpenError::Io { path: dir.to_path_buf(), source };
        match std::fs::metadata(dir) {
            Ok(meta) if !meta.is_dir() => {
                return Err(OpenError::NotADirectory { path: dir.to_path_buf() })
            }
            Ok(_) => fsdir::create_dir_durably(dir).map_err(io_err)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fsdir::create_dir_durably(dir).map_err(io_err)?;
            }
            Err(e) => return Err(io_err(e)),
        }
        Self::acquire(&std::fs::canonicalize(dir).map_err(io_err)?)
    }

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
        let io = |source| OpenError::Io { path: path.clone(), source };
        let locked = File::open(&path).map_err(io).and_then(|file| {
            lock_with_retries(&file, &path, LOCK_ATTEMPTS, LOCK_RETRY_PAUSE).map(|()| file)
        });
        match locked {
            Ok(file) => Ok(DirGuard { path, _locked_dir: file }),
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

/// How many times [`DirGuard::acquire`] tries the directory's `flock` before it reports the
/// directory as held by another process, and the pause between two tries.
///
/// A child process this process spawns (on any thread, at any time) shares the lock's open file
/// description from its fork until its exec closes it (the descriptor is close-on-exec): a
/// reopen that meets that window would report a lock held by "another process" that is in fact
/// this one's child. The tries outlast such a window (a spawn's fork to exec takes well under a
/// millisecond) and bound the wait when another process really holds the directory (~100 ms).
const LOCK_ATTEMPTS: u32 = 20;
/// See [`LOCK_ATTEMPTS`].
const LOCK_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

/// Takes the exclusive `flock` on `file`, trying `attempts` times `pause` apart while another
/// open file description holds it (see [`LOCK_ATTEMPTS`]).
fn lock_with_retries(
    file: &File,
    dir: &Path,
    attempts: u32,
    pause: std::time::Duration,
) -> Result<(), OpenError> {
    let mut tried = 1;
    loop {
        match try_lock(file, dir) {
            Err(OpenError::LockedByOtherProcess { .. }) if tried < attempts => {
                tried += 1;
                std::thread::sleep(pause);
            }
            result => return result,
        }
    }
}

/// Takes the exclusive `flock` on `file`, or reports `dir` as held by another process.
fn try_lock(file: &File, dir: &Path) -> Result<(), OpenError> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(TryLockError::WouldBlock) => {
            Err(OpenError::LockedByOtherProcess { path: dir.to_path_buf() })
        }
        Err(TryLockError::Error(source)) => Err(OpenError::Io { path: dir.to_path_buf(), source }),
    }
}

/// The lock file of an older build, locked while this build opens the store.
#[derive(Debug)]
pub(crate) struct LegacyLock {
    path: PathBuf,
    _file: File,
}

impl LegacyLock {
    /// Locks the legacy lock file in `dir` if there is one: fails if an older build holds it.
    pub(crate) fn take(dir: &Path) -> Result<Option<LegacyLock>, OpenError> {
        let path = dir.join(LEGACY_LOCK_FILE);
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(OpenError::Io { path, source }),
        };
        try_lock(&file, dir)?;
        Ok(Some(LegacyLock { path, _file: file }))
    }

    /// Deletes the legacy lock file (the directory lock replaces it) and releases it.
    pub(crate) fn remove(self) -> io::Result<()> {
        std::fs::remove_file(&self.path)?;
        match self.path.parent() {
            Some(dir) => fsdir::sync_dir(dir),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::{Duration, Instant};

    /// A lock held for a moment by another open file description of the directory (as a child
    /// process between its fork and its exec holds this process's) does not fail the open;
    /// one held for good still does, after the bounded tries.
    #[test]
    fn a_lock_held_for_a_moment_is_waited_for_and_one_held_for_good_is_reported() {
        let root = tempfile::tempdir().unwrap();
        let dir = std::fs::canonicalize(root.path()).unwrap();
        let holder = File::open(&dir).unwrap();
        holder.try_lock().unwrap();
        let released = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            drop(holder);
        });
        let guard = DirGuard::acquire(&dir);
        released.join().unwrap();
        assert!(guard.is_ok(), "a lock held for 20 ms failed the open: {guard:?}");
        drop(guard);

        let holder = File::open(&dir).unwrap();
        holder.try_lock().unwrap();
        let start = Instant::now();
        let err = DirGuard::acquire(&dir).unwrap_err();
        assert!(matches!(err, OpenError::LockedByOtherProcess { .. }), "{err}");
        assert!(start.elapsed() >= LOCK_RETRY_PAUSE * (LOCK_ATTEMPTS - 1), "no retries");
        drop(holder);
    }
}

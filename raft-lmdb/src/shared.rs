//! State shared by a store handle and its writer thread.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use event_listener::Event;
use raft_core::StorageError;

use crate::env::Handles;
use crate::registry::DirGuard;

/// What the store handle and the writer thread share.
///
/// Field order matters: the environment (`handles`) is closed before the directory is released
/// (`guard`), so that no other store can open the directory while it is still mapped.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The open environment. Readers hold the read lock for the length of a read transaction;
    /// the writer holds it for a write transaction, and takes the write lock only to close and
    /// reopen the environment with a larger map (no transaction may be live then). `None` once
    /// reopening failed.
    handles: RwLock<Option<Handles>>,
    /// Set when a write failed: from then on every write fails with [`StorageError::Closed`].
    poisoned: AtomicBool,
    /// Notified each time the writer takes requests out of the queue (room for more).
    pub(crate) space: Event,
    /// Transactions committed by the writer.
    pub(crate) commits: AtomicU64,
    /// Requests answered by those transactions.
    pub(crate) committed_requests: AtomicU64,
    /// Test hook: the next commit fails as if the disk were full.
    #[cfg(test)]
    pub(crate) fail_next_commit: AtomicBool,
    /// Test hook: the writer waits for this lock after receiving a request, before gathering
    /// the rest of its group.
    #[cfg(test)]
    pub(crate) pause: std::sync::Mutex<()>,
    /// Exclusive ownership of the directory.
    pub(crate) guard: DirGuard,
}

impl Shared {
    pub(crate) fn new(handles: Handles, guard: DirGuard) -> Self {
        Self {
            handles: RwLock::new(Some(handles)),
            poisoned: AtomicBool::new(false),
            space: Event::new(),
            commits: AtomicU64::new(0),
            committed_requests: AtomicU64::new(0),
            #[cfg(test)]
            fail_next_commit: AtomicBool::new(false),
            #[cfg(test)]
            pause: std::sync::Mutex::new(()),
            guard,
        }
    }

    /// Shared access to the environment, for one transaction.
    pub(crate) fn handles(&self) -> RwLockReadGuard<'_, Option<Handles>> {
        // A panic while the lock was held leaves either the old or the new handles in place, or
        // `None`: all consistent states. Keep going rather than propagate the panic.
        self.handles.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Exclusive access to the environment, to replace it.
    pub(crate) fn handles_mut(&self) -> RwLockWriteGuard<'_, Option<Handles>> {
        self.handles.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether an earlier write failed.
    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// Stops all further writes.
    pub(crate) fn poison(&self) {
        self.poisoned.store(true, Ordering::Release);
    }
}

/// Runs `f` on the open environment, or fails with [`StorageError::Closed`].
pub(crate) fn with_handles<T>(
    shared: &Shared,
    f: impl FnOnce(&Handles) -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    let guard = shared.handles();
    match guard.as_ref() {
        Some(handles) => f(handles),
        None => Err(StorageError::Closed),
    }
}

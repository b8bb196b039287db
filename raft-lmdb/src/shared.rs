//! State shared by an environment's handles (the environment, its group stores) and its writer
//! thread.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use raft_core::{GroupId, StorageError};

use crate::env::Handles;
use crate::journal::ReadIndex;
use crate::layout::Layout;
use crate::queue::Queue;
use crate::registry::DirGuard;
use crate::store::{DiskStats, StoreStats};
use crate::thread_io;
use crate::wal::Pending;

/// What the handles of an environment and its writer thread share.
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
    /// How the groups are laid out in the databases.
    pub(crate) layout: Layout,
    /// Where readers find the records of the journal (multi-group layout; empty otherwise).
    pub(crate) read_index: ReadIndex,
    /// The entries acknowledged through the write-ahead file and not yet in LMDB (`wal.rs`).
    pub(crate) pending: Pending,
    /// Set when a write failed: from then on every write fails with [`StorageError::Closed`].
    poisoned: AtomicBool,
    /// The writer's requests.
    pub(crate) queue: Queue,
    /// The groups with a store open in this process (or being removed).
    open_groups: Mutex<HashSet<GroupId>>,
    /// Held while a group is opened or removed, so that those never interleave.
    group_changes: Mutex<()>,
    /// The failed groups found at open, with why (see `journal.rs`): opening one fails until
    /// it is removed.
    failed_groups: Mutex<BTreeMap<GroupId, String>>,
    /// Transactions committed by the writer.
    pub(crate) commits: AtomicU64,
    /// Of `commits`, those made by a frame of the write-ahead file (one `fdatasync`).
    pub(crate) wal_commits: AtomicU64,
    /// LMDB transactions that applied the write-ahead file's entries (checkpoints).
    pub(crate) checkpoints: AtomicU64,
    /// Entries recovered from the write-ahead file at open.
    pub(crate) recovered_entries: AtomicU64,
    /// Requests answered by those transactions.
    pub(crate) committed_requests: AtomicU64,
    /// Bytes of zeros written ahead of LMDB's use of the data file (`headroom.rs`).
    pub(crate) headroom_bytes: AtomicU64,
    /// Where the writer thread's time went (`StoreStats`'s timings).
    pub(crate) timings: WriterTimings,
    /// The writer thread's I/O counters in `/proc` (set by the writer when it starts, if any).
    pub(crate) writer_io: OnceLock<PathBuf>,
    /// Test hook: the next commit fails as if the disk were full.
    #[cfg(test)]
    pub(crate) fail_next_commit: AtomicBool,
    /// Test hook: the next transaction's commit finds the map full (nothing committed): the
    /// writer grows the map and applies the requests again.
    #[cfg(test)]
    pub(crate) map_full_next_commit: AtomicBool,
    /// Test hook: the writer's reads of this group's metadata record fail as LMDB does on a
    /// damaged page (`env::META_READ_FAILS`, set on the writer's thread by each transaction).
    #[cfg(test)]
    pub(crate) writer_meta_read_fails: Mutex<Option<raft_core::GroupId>>,
    /// Test hook: the writer stops without its close checkpoint, leaving the pending entries
    /// in the write-ahead file alone, as a crash would.
    #[cfg(test)]
    pub(crate) skip_close_checkpoint: AtomicBool,
    /// Test hook: transactions appending to one group use the journal too.
    #[cfg(test)]
    pub(crate) always_journal: AtomicBool,
    /// Test hook: the writer waits for this lock after receiving a request, before gathering
    /// the rest of its group.
    #[cfg(test)]
    pub(crate) pause: std::sync::Mutex<()>,
    /// Test hook: the next read waits at this barrier twice once it has its snapshot (the test
    /// commits in between).
    #[cfg(test)]
    pub(crate) read_barrier: Mutex<Option<std::sync::Arc<std::sync::Barrier>>>,
    /// Test hook: the writer waits at this barrier twice after a checkpoint's commit, before
    /// emptying the pending entries (the test reads in between).
    #[cfg(test)]
    pub(crate) checkpoint_barrier: Mutex<Option<std::sync::Arc<std::sync::Barrier>>>,
    /// Test hook: snapshots taken by reads of entries.
    #[cfg(test)]
    pub(crate) read_attempts: AtomicU64,
    /// Test hooks: failures of the write-ahead file and of checkpoints (`faults.rs`).
    #[cfg(test)]
    pub(crate) faults: std::sync::Arc<crate::faults::Faults>,
    /// Exclusive ownership of the directory.
    pub(crate) guard: DirGuard,
}

impl Shared {
    pub(crate) fn new(
        handles: Handles,
        guard: DirGuard,
        queue: Queue,
        read_index: ReadIndex,
        pending: Pending,
    ) -> Self {
        Self {
            layout: handles.layout,
            read_index,
            pending,
            handles: RwLock::new(Some(handles)),
            poisoned: AtomicBool::new(false),
            queue,
            open_groups: Mutex::new(HashSet::new()),
            group_changes: Mutex::new(()),
            failed_groups: Mutex::new(BTreeMap::new()),
            commits: AtomicU64::new(0),
            wal_commits: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            recovered_entries: AtomicU64::new(0),
            committed_requests: AtomicU64::new(0),
            headroom_bytes: AtomicU64::new(0),
            timings: WriterTimings::default(),
            writer_io: OnceLock::new(),
            #[cfg(test)]
            fail_next_commit: AtomicBool::new(false),
            #[cfg(test)]
            map_full_next_commit: AtomicBool::new(false),
            #[cfg(test)]
            writer_meta_read_fails: Mutex::new(None),
            #[cfg(test)]
            skip_close_checkpoint: AtomicBool::new(false),
            #[cfg(test)]
            always_journal: AtomicBool::new(false),
            #[cfg(test)]
            pause: std::sync::Mutex::new(()),
            #[cfg(test)]
            read_barrier: Mutex::new(None),
            #[cfg(test)]
            checkpoint_barrier: Mutex::new(None),
            #[cfg(test)]
            read_attempts: AtomicU64::new(0),
            #[cfg(test)]
            faults: crate::faults::take_opening(),
            guard,
        }
    }

    /// Test hook, called by a read of entries once it has its snapshot.
    #[cfg(test)]
    pub(crate) fn read_snapshot_taken(&self) {
        self.read_attempts.fetch_add(1, Ordering::SeqCst);
        let barrier = self.read_barrier.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(barrier) = barrier {
            barrier.wait();
            barrier.wait();
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

    /// The writer's counters.
    pub(crate) fn stats(&self) -> StoreStats {
        // The writer adds a commit's transaction time before its sync time (Release), so
        // loading the sync total first (Acquire) gives `sync_us <= transaction_us`.
        let sync_us = self.timings.sync.micros();
        let transaction_us = self.timings.transaction.micros();
        StoreStats {
            commits: self.commits.load(Ordering::Relaxed),
            wal_commits: self.wal_commits.load(Ordering::Relaxed),
            checkpoints: self.checkpoints.load(Ordering::Relaxed),
            recovered_entries: self.recovered_entries.load(Ordering::Relaxed),
            requests: self.committed_requests.load(Ordering::Relaxed),
            headroom_bytes: self.headroom_bytes.load(Ordering::Relaxed),
            transaction_us,
            sync_us,
            answer_us: self.timings.answer.micros(),
            linger_us: self.timings.linger.micros(),
            lingers: self.timings.lingers.load(Ordering::Relaxed),
            linger_timeouts: self.timings.linger_timeouts.load(Ordering::Relaxed),
        }
    }

    /// How LMDB uses the data file as of the last commit, and what the writer wrote.
    pub(crate) fn disk_stats(&self) -> Result<DiskStats, StorageError> {
        let mut stats = with_handles(self, Handles::disk_stats)?;
        stats.written_bytes = self.writer_io.get().and_then(|path| thread_io::written_bytes(path));
        Ok(stats)
    }

    /// Stops all further writes.
    pub(crate) fn poison(&self) {
        self.poisoned.store(true, Ordering::Release);
    }

    /// Claims `group` for one store (or a removal): `false` if it is claimed already.
    pub(crate) fn claim_group(&self, group: GroupId) -> bool {
        self.groups_in_use().insert(group)
    }

    /// Releases a group claimed by [`Shared::claim_group`].
    pub(crate) fn release_group(&self, group: GroupId) {
        self.groups_in_use().remove(&group);
    }

    /// Records the failed groups found at open (see `journal.rs`).
    pub(crate) fn set_failed_groups(&self, failed: BTreeMap<GroupId, String>) {
        *self.failed() = failed;
    }

    /// Why `group` is failed, `None` if it is not.
    pub(crate) fn failed_group(&self, group: GroupId) -> Option<String> {
        self.failed().get(&group).cloned()
    }

    /// `group` was removed (durably): it is no longer failed.
    pub(crate) fn group_removed(&self, group: GroupId) {
        self.failed().remove(&group);
    }

    fn failed(&self) -> MutexGuard<'_, BTreeMap<GroupId, String>> {
        // Only assigned, inserted into or removed from: a panic elsewhere cannot leave it torn.
        self.failed_groups.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn groups_in_use(&self) -> MutexGuard<'_, HashSet<GroupId>> {
        // Only inserted into or removed from: a panic elsewhere cannot leave it torn.
        self.open_groups.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Serializes opening and removing groups.
    pub(crate) fn changing_groups(&self) -> MutexGuard<'_, ()> {
        self.group_changes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A total of durations, added to by the writer thread and read by anyone. Each addition is a
/// Release and each read an Acquire: a reader that sees an addition also sees everything the
/// writer did before it (`WriterTimings`'s order).
#[derive(Debug, Default)]
pub(crate) struct TotalTime(AtomicU64);

impl TotalTime {
    /// Adds `took` in nanoseconds (a `took` beyond `u64::MAX` nanoseconds counts as that). The
    /// total wraps around past `u64::MAX` nanoseconds (584 years).
    pub(crate) fn add(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.0.fetch_add(nanos, Ordering::Release);
    }

    fn micros(&self) -> u64 {
        self.0.load(Ordering::Acquire) / 1_000
    }
}

/// The writer thread's timings (see `StoreStats`). The writer adds a commit's `transaction`
/// before its `sync`, and `Shared::stats` reads `sync` before `transaction`, so that a
/// snapshot never shows more sync time than transaction time.
#[derive(Debug, Default)]
pub(crate) struct WriterTimings {
    /// Building and committing the transactions that committed.
    pub(crate) transaction: TotalTime,
    /// LMDB's commit of those transactions (their page writes and syncs).
    pub(crate) sync: TotalTime,
    /// Answering the requests of each transaction, failed ones included.
    pub(crate) answer: TotalTime,
    /// Waiting for expected requests with a transaction's first request in hand.
    pub(crate) linger: TotalTime,
    /// Lingers: the times the writer waited for expected requests.
    pub(crate) lingers: AtomicU64,
    /// Lingers that ended at their time limit short of the expected requests.
    pub(crate) linger_timeouts: AtomicU64,
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

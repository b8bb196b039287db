//! [`LmdbLogStore`]: the public handle, the read path and the `LogStore` implementation.

use std::future::Future;
use std::ops::Range;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures::channel::oneshot;
use heed::{RoTxn, WithoutTls};
use raft_core::{
    DurableState, Entry, GroupId, LogId, LogIndex, LogStore, StorageError, WriteBatch,
    DEFAULT_GROUP_ID,
};

use crate::codec;
use crate::env::Handles;
use crate::environment::{self, Running};
use crate::error::{storage_error, OpenError};
use crate::journal;
use crate::layout::{GroupKeys, Layout};
use crate::options::LmdbOptions;
use crate::queue::Refused;
use crate::shared::{with_handles, Shared};
use crate::wal::PendingView;
use crate::writer::{Op, Request};

/// A durable [`LogStore`] on LMDB: a store of its own ([`LmdbLogStore::open_dir`]), or one
/// group of a shared [`crate::LmdbEnvironment`] ([`crate::LmdbEnvironment::log_store`]).
///
/// # Guarantees
///
/// * **Durability.** When [`LogStore::write`] or [`LogStore::purge`] returns `Ok`, the change
///   has been committed by an LMDB transaction with LMDB's default (synchronous) flags (the data
///   pages and then the meta page were synced to disk), or, for writes that only append
///   entries, by a frame of the write-ahead file synced with `fdatasync`
///   ([`crate::LmdbOptions::with_wal_bytes`]; applied to LMDB later, and at open after a
///   crash). It survives a process crash and a power loss, as far as the disk honours
///   `fdatasync`.
/// * **Atomicity.** Each batch is all-or-nothing, including its hard state, truncation and
///   entries. Several concurrent calls may share one transaction (group commit), with calls of
///   other groups of the same environment too; each returns only once the transaction holding
///   its own batch is durable.
/// * **Order.** A store's requests are applied in the order they entered the writer's queue; a
///   call to [`LmdbLogStore::submit`] fixes that order before it returns.
/// * **Isolation between groups.** A group's requests touch only its own records; an invalid
///   request fails alone, whichever groups share its transaction.
/// * **No acknowledgement after a failure.** If a commit fails (disk full, I/O error), every
///   caller of that transaction gets the error and every later write, of every group of the
///   environment, fails with [`StorageError::Closed`]. A full memory map is not a failure: the
///   map grows and the transaction is retried.
/// * **Reads** use LMDB read transactions and see every write that has returned. They run on
///   the caller's thread, never wait for a commit in progress, and wait only while the map is
///   being grown.
///
/// Dropping the store waits until the writer thread has answered every request of the store
/// already queued. The store of [`LmdbLogStore::open_dir`] then closes its environment and
/// releases the directory; a group store of an environment releases its group (it may be
/// opened again, or removed).
#[derive(Debug)]
pub struct LmdbLogStore {
    /// Keeps the environment and its writer thread running while the store exists.
    _running: Arc<Running>,
    pub(crate) shared: Arc<Shared>,
    group: GroupId,
}

impl LmdbLogStore {
    /// The store of `group`, claimed already, on `running`.
    pub(crate) fn new(running: Arc<Running>, group: GroupId) -> Self {
        let shared = Arc::clone(&running.shared);
        Self { _running: running, shared, group }
    }

    /// Opens the store in `dir` with default [`LmdbOptions`], creating the directory and a new
    /// store if it does not exist. See [`LmdbLogStore::open_dir_with`].
    pub fn open_dir(dir: impl AsRef<Path>) -> Result<Self, OpenError> {
        Self::open_dir_with(dir, LmdbOptions::default())
    }

    /// Opens the store in `dir`, creating the directory and a new store if it does not exist.
    /// The store has an LMDB environment and a writer thread of its own; to keep several Raft
    /// groups in one environment, use [`crate::LmdbEnvironment`] instead (another directory
    /// layout: neither opens the other's directory).
    ///
    /// Fails with a clear [`OpenError`], never a panic, when `dir` is not a directory, holds
    /// files raft-lmdb does not create, holds another program's LMDB environment (or a
    /// multi-group environment), was written with another format version, is inconsistent, is
    /// already open in this process or is held by another process. It checks, before
    /// returning, that the log holds exactly the entries the metadata says it does.
    ///
    /// The directory and the files in it are durable when this returns: a directory it creates
    /// is synced into its parent, and the directory itself is synced once LMDB's files exist.
    /// The store holds the directory exclusively (an advisory lock on the directory itself, which
    /// no file deletion defeats) until it is dropped. A store of an older format version is
    /// upgraded (see [`crate::STORE_FORMAT_VERSION`]).
    pub fn open_dir_with(dir: impl AsRef<Path>, options: LmdbOptions) -> Result<Self, OpenError> {
        let running = environment::start(dir.as_ref(), options, Layout::Single)?;
        if !running.shared.claim_group(DEFAULT_GROUP_ID) {
            return Err(OpenError::GroupInUse {
                path: running.shared.guard.path().to_path_buf(),
                group: DEFAULT_GROUP_ID,
            });
        }
        Ok(Self::new(running, DEFAULT_GROUP_ID))
    }

    /// The Raft group this store holds ([`raft_core::DEFAULT_GROUP_ID`] for a store opened
    /// with [`LmdbLogStore::open_dir`]).
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The directory of the store's environment (canonical).
    pub fn path(&self) -> &Path {
        self.shared.guard.path()
    }

    /// The current size of LMDB's memory map in bytes (it grows when full), or `None` once the
    /// environment has stopped.
    pub fn map_size(&self) -> Option<usize> {
        self.shared.handles().as_ref().map(Handles::map_size)
    }

    /// Counters of the environment's writer thread since the environment was opened (all its
    /// groups together: a commit serves requests of any group).
    pub fn stats(&self) -> StoreStats {
        self.shared.stats()
    }

    /// How the environment uses its data file as of the last commit, and what its writer
    /// thread has written (a diagnostic: it reads the disk and `/proc`).
    pub fn disk_stats(&self) -> Result<DiskStats, StorageError> {
        self.shared.disk_stats()
    }

    /// True once a write has failed: the environment (every group of it) then accepts no more
    /// writes.
    pub fn has_failed(&self) -> bool {
        self.shared.is_poisoned()
    }

    /// Queues `batch` for the writer and returns once it is queued, with a [`PendingWrite`] that
    /// resolves when the batch is durable (or failed).
    ///
    /// Queued batches are applied in queue order, so several writes may be in flight at once
    /// (pipelining, group commit) while their order stays the order of the `submit` calls that
    /// returned. Waits (asynchronously) while the queue is full. Once queued, a batch is applied
    /// even if the `PendingWrite` is dropped. `LogStore::write` is `submit(batch).await?.await`.
    pub async fn submit(&self, batch: WriteBatch) -> Result<PendingWrite, StorageError> {
        self.enqueue(Op::Write(batch)).await
    }

    /// Queues a purge of every entry up to `up_to`, like [`LmdbLogStore::submit`] queues a
    /// write: ordered with the writes around it, durable when the [`PendingWrite`] resolves.
    /// `LogStore::purge` is `submit_purge(up_to).await?.await`.
    pub async fn submit_purge(&self, up_to: LogIndex) -> Result<PendingWrite, StorageError> {
        self.enqueue(Op::Purge(up_to)).await
    }

    /// Queues a reset of the log to an empty log after `last_included` (see
    /// [`LogStore::reset`]), ordered with the writes around it like [`LmdbLogStore::submit`].
    pub async fn submit_reset(&self, last_included: LogId) -> Result<PendingWrite, StorageError> {
        self.enqueue(Op::Reset(last_included)).await
    }

    async fn enqueue(&self, op: Op) -> Result<PendingWrite, StorageError> {
        enqueue(&self.shared, self.group, op).await
    }

    fn keys(&self) -> GroupKeys {
        self.shared.layout.keys(self.group)
    }

    fn durable_state(&self) -> Result<DurableState, StorageError> {
        with_handles(&self.shared, |handles| {
            let (txn, pending) =
                self.shared.pending.view(self.group, 0..0, 0, || handles.read_txn())?;
            let meta = handles.read_meta(&txn, self.keys())?;
            let pending_last = match handles.wal_generation(&txn)? == pending.generation {
                true => pending.last,
                // A checkpoint committed and the snapshot holds the pending entries.
                false => None,
            };
            Ok(DurableState {
                hard_state: meta.hard_state(),
                purged: meta.purged(),
                last: pending_last.unwrap_or(meta.last()),
            })
        })
    }

    fn read_entries(
        &self,
        range: Range<LogIndex>,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        if range.start >= range.end {
            return Ok(Vec::new());
        }
        with_handles(&self.shared, |handles| {
            for _ in 0..READ_ATTEMPTS {
                let (txn, pending) =
                    self.shared
                        .pending
                        .view(self.group, range.clone(), max_bytes, || handles.read_txn())?;
                #[cfg(test)]
                self.shared.read_snapshot_taken();
                if let Some(entries) = self.try_read(handles, &txn, pending, &range, max_bytes)? {
                    return Ok(entries);
                }
            }
            Err(StorageError::Other(format!(
                "the entries {range:?} were moved in the journal {READ_ATTEMPTS} times while being read"
            )))
        })
    }

    /// Reads `range` in one snapshot and the pending entries of the write-ahead file copied
    /// with it (`pending`, used only if they follow that snapshot: see `wal.rs`): the entries,
    /// or `None` if a commit made since the snapshot began deleted a journal record the
    /// snapshot needs (a move or a truncation): reading again with a new snapshot then
    /// succeeds (see `journal.rs`).
    pub(crate) fn try_read(
        &self,
        handles: &Handles,
        txn: &RoTxn<'_, WithoutTls>,
        pending: PendingView,
        range: &Range<LogIndex>,
        max_bytes: u64,
    ) -> Result<Option<Vec<Entry>>, StorageError> {
        let keys = self.keys();
        let meta = handles.read_meta(txn, keys)?;
        let current = handles.wal_generation(txn)? == pending.generation;
        let (pending_last, pending) = match current {
            true => (pending.last, pending.entries),
            // A checkpoint committed after the pending entries were added: the snapshot
            // holds them (as that commit's requests left them).
            false => (None, Vec::new()),
        };
        let stored_end = meta.last().index.saturating_add(1).min(range.end);
        let last = pending_last.map_or(meta.last().index, |id| id.index);
        let first = meta.purged().index + 1;
        if range.start < first || range.end - 1 > last {
            return Err(StorageError::InvalidRequest(format!(
                "read of {range:?} outside stored entries {first}..={last}"
            )));
        }
        let mut out = Vec::new();
        let mut bytes = 0u64;
        let mut expected = range.start;
        let mut push = |entry: Entry, out: &mut Vec<Entry>| {
            bytes += entry.size_bytes();
            let full = !out.is_empty() && bytes > max_bytes;
            if !full {
                out.push(entry);
            }
            full
        };
        let (start, end) = (keys.log(range.start), keys.log(stored_end.max(range.start)));
        let bounds = start.until(&end);
        for item in handles.log.range(txn, &bounds).map_err(storage_error)? {
            let (key, value) = item.map_err(storage_error)?;
            let index = keys.index_of(key).unwrap_or_default();
            if index != expected {
                return Err(StorageError::Corrupt(format!(
                    "log entry {expected} is missing (found {index})"
                )));
            }
            if push(codec::decode_entry(index, value)?, &mut out) {
                return Ok(Some(out));
            }
            expected += 1;
        }
        // The rest is in the journal (the log holds a group's older entries).
        if let (Some(journal), true) = (&handles.journal, expected < stored_end) {
            let candidates = self.shared.read_index.candidates(self.group, expected, stored_end);
            let mut candidates = candidates.iter().peekable();
            while expected < stored_end {
                let mut found = None;
                while let Some(&&(index, seq)) = candidates.peek() {
                    if index > expected {
                        break;
                    }
                    candidates.next();
                    if found.is_none() && index == expected {
                        found = journal::read_record(journal, txn, seq, self.group, index)?;
                    }
                }
                let Some(record) = found else { return Ok(None) };
                if push(codec::decode_entry(expected, record)?, &mut out) {
                    return Ok(Some(out));
                }
                expected += 1;
            }
        }
        // The rest is pending in the write-ahead file (it follows the snapshot's log).
        let from = expected;
        for entry in pending.into_iter().skip_while(|e| e.index < from) {
            if entry.index != expected {
                break;
            }
            if push(entry, &mut out) {
                return Ok(Some(out));
            }
            expected += 1;
        }
        if expected != range.end {
            return Err(StorageError::Corrupt(format!("log entry {expected} is missing")));
        }
        Ok(Some(out))
    }
}

/// How many snapshots a read takes at most before giving up: it takes another only when a
/// commit deleted journal records it needed while it was reading, so each attempt fails only if
/// such a commit races it again.
const READ_ATTEMPTS: usize = 64;

impl Drop for LmdbLogStore {
    fn drop(&mut self) {
        // The requests of this store already queued are answered before the group is released:
        // a store of the group opened next reads a state no earlier request changes any more.
        self.shared.queue.wait_idle(self.group);
        self.shared.release_group(self.group);
        // Dropping the last handle on the environment (`running`) stops its writer thread once
        // it has answered every queued request, then closes the environment.
    }
}

#[async_trait]
impl LogStore for LmdbLogStore {
    async fn open(&self) -> Result<DurableState, StorageError> {
        self.durable_state()
    }

    async fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        self.submit(batch).await?.await
    }

    async fn read(
        &self,
        range: Range<LogIndex>,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read_entries(range, max_bytes)
    }

    async fn purge(&self, up_to: LogIndex) -> Result<(), StorageError> {
        self.submit_purge(up_to).await?.await
    }

    async fn reset(&self, last_included: LogId) -> Result<(), StorageError> {
        self.submit_reset(last_included).await?.await
    }
}

/// Counters of a store's writer thread. `requests / commits` is the mean group size: how many
/// writes and purges shared one synced transaction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreStats {
    /// Synced commits: LMDB transactions (two syncs each: data pages, then meta page) and
    /// frames of the write-ahead file (one `fdatasync` each, counted also in `wal_commits`).
    /// `requests / commits` is the mean number of requests one commit made durable.
    pub commits: u64,
    /// Of `commits`, the frames of the write-ahead file ([`crate::LmdbOptions::with_wal_bytes`]):
    /// cycles of pure appends made durable with one `fdatasync`.
    pub wal_commits: u64,
    /// Of the LMDB transactions in `commits`, those that applied entries of the write-ahead file
    /// to LMDB first (checkpoints; an open that recovers frames makes one).
    pub checkpoints: u64,
    /// Entries read back from the write-ahead file when the store (environment) was opened:
    /// acknowledged through frames by an earlier run and not yet in LMDB (it crashed, or its
    /// close checkpoint failed). They were applied to LMDB before the store was handed out.
    pub recovered_entries: u64,
    /// Write and purge requests answered by those transactions (valid or not).
    pub requests: u64,
    /// Bytes of zeros written past LMDB's last page to keep the data file grown ahead of use
    /// ([`crate::LmdbOptions::with_file_headroom`]), open included.
    pub headroom_bytes: u64,
    /// Microseconds the writer thread spent on the transactions counted in `commits`, each
    /// from the end of its linger (its requests in hand) to the end of LMDB's commit and the
    /// journal's bookkeeping after it: the requests applied, the headroom zeros written
    /// (`headroom_bytes`), LMDB's commit and, when the map was full, the abandoned attempt,
    /// the reopening with a larger map and the retry; for a frame of the write-ahead file,
    /// its encoding, write and sync. Failed transactions and requests
    /// answered at once with an error (after a failure) are not included. The sum of their
    /// durations; a snapshot never shows it below `sync_us`.
    pub transaction_us: u64,
    /// Microseconds of `transaction_us` spent in LMDB's commit: writing the transactions'
    /// pages and syncing them, then their meta page; for a frame of the write-ahead file, its
    /// `pwrite` and `fdatasync`.
    pub sync_us: u64,
    /// Microseconds the writer thread spent answering the requests of each transaction (waking
    /// their callers; failed requests included), from the end of the transaction: taking the
    /// requests queued meanwhile, then sending every answer. An answer can reach its caller
    /// before the time it took is added here.
    pub answer_us: u64,
    /// Microseconds the writer thread waited, with a transaction's first request in hand, for
    /// requests it expected before beginning the transaction (callers it has just answered,
    /// likely to write again at once): each linger is limited to a quarter of the previous
    /// commit's duration and at most 500 µs, and its measured time also covers the condition
    /// variable waking the writer after that limit and the taking of requests that arrived.
    /// The rest of the writer's time is spent waiting for a first request, or on bookkeeping.
    pub linger_us: u64,
    /// Lingers: the transactions for which the writer waited for expected requests (it does
    /// not when the requests in hand already reach the expected count or the byte limit).
    pub lingers: u64,
    /// Lingers that ended at their time limit before the expected requests had arrived (not
    /// those ended by the store closing).
    pub linger_timeouts: u64,
}

/// How an environment uses its data file, as of its last commit: a diagnostic
/// (`bench-lmdb --io` prints it). The fields are read one after the other while the writer
/// may go on committing, so they agree exactly only when no write is in flight. Page counts
/// are in pages of `page_size` bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiskStats {
    /// LMDB's page size in bytes.
    pub page_size: u64,
    /// Pages from the start of the file up to the last page LMDB uses (its two meta pages
    /// included): the file LMDB needs.
    pub used_pages: u64,
    /// Pages of the B-trees of the databases (the main one included): what the data occupies.
    pub tree_pages: u64,
    /// The data file's length in bytes (LMDB's pages and the headroom beyond them).
    pub file_bytes: u64,
    /// Bytes the writer thread has handed to the operating system since it started (`wchar` of
    /// its `/proc/<pid>/task/<tid>/io`): the pages and meta pages of LMDB's commits and the
    /// headroom zeros written between commits (plus any log line a `tracing` subscriber writes
    /// on that thread). These are the bytes a commit really writes; `write_bytes` of
    /// `/proc/self/io` is no measure of them on kernels whose page cache uses large folios
    /// (it counts a whole folio, up to 2 MiB, for a 4 KiB write). `None` where `/proc` does not
    /// tell (not Linux) or once the writer has stopped.
    pub written_bytes: Option<u64>,
}

impl DiskStats {
    /// Pages LMDB holds but no database uses: its free list (pages it may reuse) and the free
    /// list's own pages.
    pub fn free_pages(&self) -> u64 {
        self.used_pages.saturating_sub(self.tree_pages).saturating_sub(META_PAGES)
    }
}

/// LMDB's meta pages at the start of the file.
const META_PAGES: u64 = 2;

/// A write that has been queued: resolves to `Ok(())` once it is durable, or to the error that
/// stopped it. Dropping it does not cancel the write.
#[derive(Debug)]
#[must_use = "a PendingWrite tells when the write is durable"]
pub struct PendingWrite {
    outcome: oneshot::Receiver<Result<(), StorageError>>,
}

impl Future for PendingWrite {
    type Output = Result<(), StorageError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.outcome)
            .poll(cx)
            .map(|outcome| outcome.unwrap_or(Err(StorageError::Closed)))
    }
}

/// Queues `op` for `group` on the writer of `shared` and returns once it is queued, with a
/// [`PendingWrite`] that resolves when it is durable (or failed). Waits (asynchronously) while
/// the queue has no room for the group.
pub(crate) async fn enqueue(
    shared: &Shared,
    group: GroupId,
    op: Op,
) -> Result<PendingWrite, StorageError> {
    if shared.is_poisoned() {
        return Err(StorageError::Closed);
    }
    let (reply, outcome) = oneshot::channel();
    let mut request = Request { group, op, reply };
    loop {
        request = match shared.queue.try_push(request) {
            Ok(()) => return Ok(PendingWrite { outcome }),
            Err(Refused::Closed) => return Err(StorageError::Closed),
            Err(Refused::Full(request)) => request,
        };
        // Register before trying again so that a wake-up between the two is not lost.
        let room = shared.queue.listen();
        request = match shared.queue.try_push(request) {
            Ok(()) => return Ok(PendingWrite { outcome }),
            Err(Refused::Closed) => return Err(StorageError::Closed),
            Err(Refused::Full(request)) => request,
        };
        room.await;
    }
}

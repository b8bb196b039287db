//! [`LmdbLogStore`]: the public handle, the read path and the `LogStore` implementation.

use std::fs;
use std::future::Future;
use std::io;
use std::ops::Range;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use async_trait::async_trait;
use futures::channel::oneshot;
use raft_core::{DurableState, Entry, LogId, LogIndex, LogStore, StorageError, WriteBatch};

use crate::codec;
use crate::env::{self, Handles};
use crate::error::{storage_error, OpenError};
use crate::fsdir;
use crate::headroom::{Headroom, DATA_FILE};
use crate::options::LmdbOptions;
use crate::registry::{DirGuard, LegacyLock, LEGACY_LOCK_FILE};
use crate::shared::{with_handles, Shared};
use crate::writer::{self, GroupLimits, Op, Request};

/// Files LMDB and this crate (this build or an older one) create in a store directory; anything
/// else makes the directory foreign.
const OWN_FILES: [&str; 3] = [DATA_FILE, "lock.mdb", LEGACY_LOCK_FILE];

/// A durable [`LogStore`] on LMDB.
///
/// # Guarantees
///
/// * **Durability.** When [`LogStore::write`] or [`LogStore::purge`] returns `Ok`, the change
///   has been committed by an LMDB transaction with LMDB's default (synchronous) flags: the data
///   pages and then the meta page were synced to disk. It survives a process crash and a power
///   loss, as far as the disk honours `fdatasync`.
/// * **Atomicity.** Each batch is all-or-nothing, including its hard state, truncation and
///   entries. Several concurrent calls may share one transaction (group commit); each returns
///   only once the transaction holding its own batch is durable.
/// * **Order.** Requests are applied in the order they entered the writer's queue; a call to
///   [`LmdbLogStore::submit`] fixes that order before it returns.
/// * **No acknowledgement after a failure.** If a commit fails (disk full, I/O error), every
///   caller of that group gets the error and every later write fails with
///   [`StorageError::Closed`]. A full memory map is not a failure: the map grows and the
///   transaction is retried.
/// * **Reads** use LMDB read transactions and see every write that has returned. They run on
///   the caller's thread, never wait for a commit in progress, and wait only while the map is
///   being grown.
///
/// Dropping the store waits for the writer thread to finish the requests already queued, then
/// closes the environment and releases the directory.
#[derive(Debug)]
pub struct LmdbLogStore {
    tx: Option<SyncSender<Request>>,
    writer: Option<JoinHandle<()>>,
    pub(crate) shared: Arc<Shared>,
}

impl LmdbLogStore {
    /// Opens the store in `dir` with default [`LmdbOptions`], creating the directory and a new
    /// store if it does not exist. See [`LmdbLogStore::open_dir_with`].
    pub fn open_dir(dir: impl AsRef<Path>) -> Result<Self, OpenError> {
        Self::open_dir_with(dir, LmdbOptions::default())
    }

    /// Opens the store in `dir`, creating the directory and a new store if it does not exist.
    ///
    /// Fails with a clear [`OpenError`], never a panic, when `dir` is not a directory, holds
    /// files raft-lmdb does not create, holds another program's LMDB environment, was written
    /// with another format version, is inconsistent, is already open in this process or is held
    /// by another process. It checks, before returning, that the log holds exactly the entries
    /// the metadata says it does.
    ///
    /// The directory and the files in it are durable when this returns: a directory it creates
    /// is synced into its parent, and the directory itself is synced once LMDB's files exist.
    /// The store holds the directory exclusively (an advisory lock on the directory itself, which
    /// no file deletion defeats) until it is dropped. A store of an older format version is
    /// upgraded (see [`crate::FORMAT_VERSION`]).
    pub fn open_dir_with(dir: impl AsRef<Path>, options: LmdbOptions) -> Result<Self, OpenError> {
        let guard = DirGuard::open(dir.as_ref())?;
        let dir = guard.path().to_path_buf();
        check_own_files(&dir)?;
        let legacy_lock = LegacyLock::take(&dir)?;
        let data_len = fs::metadata(dir.join(DATA_FILE)).map(|m| m.len()).unwrap_or(0);
        let map_size = env::initial_map_size(options.initial_map_size, data_len);
        let (handles, meta) = env::open_store(&guard, map_size)?;
        let io_err = |source| OpenError::Io { path: dir.clone(), source };
        // The entries of LMDB's files (created by the first open) become durable.
        fsdir::sync_dir(&dir).map_err(io_err)?;
        if let Some(legacy_lock) = legacy_lock {
            legacy_lock.remove().map_err(io_err)?;
        }
        tracing::debug!(path = %dir.display(), map_size, ?meta, "opened raft-lmdb store");
        let shared = Arc::new(Shared::new(handles, guard));
        let (tx, rx) = mpsc::sync_channel(options.queue_capacity);
        let limits = GroupLimits {
            max_requests: options.max_group_requests,
            max_bytes: options.max_group_bytes,
        };
        let mut headroom = Headroom::open(&dir, options.file_headroom_bytes).map_err(io_err)?;
        if let Some(handles) = shared.handles().as_ref() {
            // Before the first write, not during it (the writer thread has not started).
            let (page_size, used) = handles.pages();
            headroom.ensure(used, 0, page_size);
        }
        let writer =
            writer::spawn(Arc::clone(&shared), rx, meta, limits, headroom).map_err(io_err)?;
        Ok(Self { tx: Some(tx), writer: Some(writer), shared })
    }

    /// The store's directory (canonical).
    pub fn path(&self) -> &Path {
        self.shared.guard.path()
    }

    /// The current size of LMDB's memory map in bytes (it grows when full), or `None` once the
    /// store has stopped.
    pub fn map_size(&self) -> Option<usize> {
        self.shared.handles().as_ref().map(Handles::map_size)
    }

    /// Counters of the writer thread since the store was opened.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            commits: self.shared.commits.load(Ordering::Relaxed),
            requests: self.shared.committed_requests.load(Ordering::Relaxed),
        }
    }

    /// True once a write has failed: the store then accepts no more writes.
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
        if self.shared.is_poisoned() {
            return Err(StorageError::Closed);
        }
        let tx = self.tx.as_ref().ok_or(StorageError::Closed)?;
        let (reply, outcome) = oneshot::channel();
        let mut request = Request { op, reply };
        loop {
            request = match tx.try_send(request) {
                Ok(()) => return Ok(PendingWrite { outcome }),
                Err(TrySendError::Disconnected(_)) => return Err(StorageError::Closed),
                Err(TrySendError::Full(request)) => request,
            };
            // Register before trying again so that a wake-up between the two is not lost.
            let room = self.shared.space.listen();
            request = match tx.try_send(request) {
                Ok(()) => return Ok(PendingWrite { outcome }),
                Err(TrySendError::Disconnected(_)) => return Err(StorageError::Closed),
                Err(TrySendError::Full(request)) => request,
            };
            room.await;
        }
    }

    fn durable_state(&self) -> Result<DurableState, StorageError> {
        with_handles(&self.shared, |handles| {
            let txn = handles.read_txn()?;
            let meta = handles.read_meta(&txn)?;
            Ok(DurableState {
                hard_state: meta.hard_state(),
                purged: meta.purged(),
                last: meta.last(),
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
            let txn = handles.read_txn()?;
            let meta = handles.read_meta(&txn)?;
            let (first, last) = (meta.purged().index + 1, meta.last().index);
            if range.start < first || range.end - 1 > last {
                return Err(StorageError::InvalidRequest(format!(
                    "read of {range:?} outside stored entries {first}..={last}"
                )));
            }
            let mut out = Vec::new();
            let mut bytes = 0u64;
            let mut expected = range.start;
            for item in handles.log.range(&txn, &range).map_err(storage_error)? {
                let (index, value) = item.map_err(storage_error)?;
                if index != expected {
                    return Err(StorageError::Corrupt(format!(
                        "log entry {expected} is missing (found {index})"
                    )));
                }
                let entry = codec::decode_entry(index, value)?;
                bytes += entry.size_bytes();
                if !out.is_empty() && bytes > max_bytes {
                    return Ok(out);
                }
                out.push(entry);
                expected += 1;
            }
            if expected != range.end {
                return Err(StorageError::Corrupt(format!("log entry {expected} is missing")));
            }
            Ok(out)
        })
    }
}

impl Drop for LmdbLogStore {
    fn drop(&mut self) {
        // Closing the queue makes the writer finish what is queued and stop.
        drop(self.tx.take());
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::error!("the raft-lmdb writer thread panicked");
            }
        }
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
    /// Transactions committed (each one sync).
    pub commits: u64,
    /// Write and purge requests answered by those transactions (valid or not).
    pub requests: u64,
}

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

/// Checks that `dir` holds no file a raft-lmdb store does not create.
fn check_own_files(dir: &Path) -> Result<(), OpenError> {
    let io_err = |source: io::Error| OpenError::Io { path: dir.to_path_buf(), source };
    for entry in fs::read_dir(dir).map_err(io_err)? {
        let name = entry.map_err(io_err)?.file_name();
        if !OWN_FILES.iter().any(|own| name == *own) {
            return Err(OpenError::ForeignDirectory {
                path: dir.to_path_buf(),
                entry: name.to_string_lossy().into_owned(),
            });
        }
    }
    Ok(())
}

//! The `LogStore` trait: where a node keeps its Raft persistent state (hard state and log).
//!
//! # The persistence contract
//!
//! Raft is safe only if what a node has acknowledged survives a crash. A store promises:
//!
//! * When [`LogStore::write`] returns `Ok`, everything in the batch is **durable**: it survives a
//!   process kill and a power loss (fsync or an equivalent synced commit, never a bare `write()`).
//! * A batch is atomic: after a crash the store holds either all of it or none of it. A crash in
//!   the middle of a batch leaves the state of the previous batch.
//! * Batches are applied in the order the calls return: a store may merge concurrent calls into
//!   one transaction (group commit), but each call returns only once its own batch is durable.
//!
//! The node relies on this to keep the ordering of the Raft paper: `currentTerm`/`votedFor` are
//! durable before it votes or sends a message of a new term, and entries are durable before a
//! follower acknowledges them or a leader counts its own copy toward a quorum.

use std::ops::Range;

use async_trait::async_trait;

use crate::types::{Entry, HardState, LogId, LogIndex};

/// What a store holds when it is opened: everything a node needs to restart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DurableState {
    /// The last durable hard state (term 0, no vote, for a new store).
    pub hard_state: HardState,
    /// The log id just before the first stored entry: `(0, 0)` for a log never purged, else the
    /// last purged entry (its term is kept so that `prev_log_id` checks still work).
    pub purged: LogId,
    /// The id of the last stored entry, or `purged` if the log is empty.
    pub last: LogId,
}

impl DurableState {
    /// The index of the first stored entry (`purged.index + 1`); greater than `last.index` when
    /// the log is empty.
    pub fn first_index(&self) -> LogIndex {
        self.purged.index + 1
    }
}

/// One atomic, durable write: an optional hard state, an optional truncation and new entries.
///
/// Applied in this order: set `hard_state` (if any), delete every entry with index `>=
/// truncate_from` (if any), then append `entries`. The entries are contiguous, and the first one
/// follows the last entry left after truncation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    /// The new hard state, if it changed.
    pub hard_state: Option<HardState>,
    /// Delete the log suffix starting at this index before appending.
    pub truncate_from: Option<LogIndex>,
    /// Entries to append.
    pub entries: Vec<Entry>,
}

impl WriteBatch {
    /// True when the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.hard_state.is_none() && self.truncate_from.is_none() && self.entries.is_empty()
    }

    /// Folds `later` into `self`, as if `self` were written and then `later`: the result is one
    /// batch with the same effect, which lets a writer commit both with one sync.
    pub fn merge(&mut self, later: WriteBatch) {
        if later.hard_state.is_some() {
            self.hard_state = later.hard_state;
        }
        if let Some(cut) = later.truncate_from {
            // Entries of `self` at or after the cut never reach the disk.
            let first_own = self.entries.first().map(|e| e.index);
            match first_own {
                Some(first) if cut > first => {
                    self.entries.retain(|e| e.index < cut);
                }
                _ => {
                    self.entries.clear();
                    self.truncate_from = Some(self.truncate_from.map_or(cut, |own| own.min(cut)));
                }
            }
        }
        self.entries.extend(later.entries);
    }
}

/// An error from a [`LogStore`].
///
/// After any error the node stops: it cannot know what became durable, so it accepts no more
/// writes and acknowledges nothing more (it never "retries" around a failed sync).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// An I/O error from the operating system (disk full, permission, hardware).
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Stored data could not be decoded or violates the store's invariants.
    #[error("corrupt log store: {0}")]
    Corrupt(String),
    /// The store was written by an incompatible version of its format.
    #[error("unsupported log store format version {found} (this build reads {supported})")]
    UnsupportedVersion {
        /// The version found on disk.
        found: u32,
        /// The version this build understands.
        supported: u32,
    },
    /// The request is not valid for the store's state (a gap in the log, a read of purged entries,
    /// a truncation below the first index...). This is a bug in the caller.
    #[error("invalid log store request: {0}")]
    InvalidRequest(String),
    /// The store has been closed or has stopped after an earlier error.
    #[error("log store is closed")]
    Closed,
    /// The store does not implement this operation (for example [`LogStore::reset`] on a store
    /// written before snapshots existed).
    #[error("unsupported by this store: {0}")]
    Unsupported(String),
    /// Any other error of a particular store.
    #[error("log store error: {0}")]
    Other(String),
}

/// Durable storage for a node's hard state and log.
///
/// Implementations take `&self` (use interior mutability) so that reads can run while a write is
/// in progress. A node issues at most one `write` at a time and waits for it before the next one;
/// other users (benchmarks, tools) may call `write` concurrently, and a store may then merge
/// calls into one transaction (group commit) as long as each call returns only once its own batch
/// is durable.
///
/// A panic in any method is caught: the node stops with
/// [`FatalError::Panicked`](crate::FatalError::Panicked), as after an error.
#[async_trait]
pub trait LogStore: Send + Sync + 'static {
    /// Opens (or creates) the store and returns its durable state. Called once, before any other
    /// method. Must not return before earlier durable writes are visible.
    async fn open(&self) -> Result<DurableState, StorageError>;

    /// Writes `batch` atomically. When this returns `Ok`, the whole batch is durable (survives
    /// power loss). When it returns `Err`, the store may hold the batch or not, and the node stops.
    async fn write(&self, batch: WriteBatch) -> Result<(), StorageError>;

    /// Reads the entries in `range`, in order, stopping once `max_bytes` (counted with
    /// [`Entry::size_bytes`]) would be exceeded; it returns at least one entry when the range is
    /// not empty, whatever its size. Reads see every write that has returned. Reading purged or
    /// missing entries is an [`StorageError::InvalidRequest`].
    async fn read(
        &self,
        range: Range<LogIndex>,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError>;

    /// Removes every entry with index `<= up_to` (log compaction after a snapshot), remembering
    /// the id of the last removed entry as the new `purged`. Durable when it returns. Purging
    /// beyond the last entry is an [`StorageError::InvalidRequest`]; `up_to <= purged.index` is a
    /// no-op.
    async fn purge(&self, up_to: LogIndex) -> Result<(), StorageError>;

    /// Discards every entry and makes `last_included` the new `purged`, whatever the log held
    /// (even entries after it, or a log that ends before it): the next write appends at
    /// `last_included.index + 1`. The hard state is kept. Atomic and durable when it returns.
    ///
    /// A node calls it after installing a snapshot from the leader whose last entry its log does
    /// not hold, and only once that snapshot is durable in its snapshot store. The default fails
    /// with [`StorageError::Unsupported`]; every store meant to be used with snapshots
    /// implements it.
    async fn reset(&self, last_included: LogId) -> Result<(), StorageError> {
        Err(StorageError::Unsupported(format!(
            "LogStore::reset (to {last_included:?}) is not implemented by this store"
        )))
    }
}

#[async_trait]
impl<S: LogStore + ?Sized> LogStore for std::sync::Arc<S> {
    async fn open(&self) -> Result<DurableState, StorageError> {
        (**self).open().await
    }
    async fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        (**self).write(batch).await
    }
    async fn read(
        &self,
        range: Range<LogIndex>,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        (**self).read(range, max_bytes).await
    }
    async fn purge(&self, up_to: LogIndex) -> Result<(), StorageError> {
        (**self).purge(up_to).await
    }
    async fn reset(&self, last_included: LogId) -> Result<(), StorageError> {
        (**self).reset(last_included).await
    }
}

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

pub use crate::batch::{DurableState, WriteBatch};
pub use crate::error::StorageError;
use crate::types::{Entry, LogId, LogIndex};

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
///
/// **The futures must not block the thread that polls them.** The node polls a `write` once
/// from its main loop (a store that is done at once, like an in-memory one, finishes there
/// without a task hop) and only then hands it to its log writer task; in a looped host
/// ([`Host::with_loop`](crate::multi::Host::with_loop)) the node has no log writer task: the
/// host loop polls the write in the group's turns, in the one task that steps every group of
/// the host, until it is done. A store that does blocking IO inside the future (`std::fs`
/// plus `sync_all`, a synchronous database call) would stall the main loop (in a looped host,
/// every group of the host), hence heartbeats and votes, for the length of each sync. Do
/// blocking work on a thread of the store's own and await its completion, as `raft-lmdb` does
/// (one writer thread, answers through a channel), or through the runtime's blocking pool.
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

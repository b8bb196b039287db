//! Snapshots: their metadata, the [`SnapshotStore`] trait where a node keeps them, and the
//! checksum that identifies a snapshot's data.
//!
//! A snapshot is the state machine's state as of one applied entry (`last_included`). Once a
//! snapshot is durable, the node may purge the log prefix it covers; a follower whose next entry
//! was purged receives the snapshot from the leader in chunks (InstallSnapshot).
//!
//! # Durability contract of a [`SnapshotStore`]
//!
//! * Data written through a [`SnapshotWriter`] is invisible until
//!   [`commit`](SnapshotWriter::commit) returns `Ok`: then the data **and** its metadata are
//!   durable (they survive power loss) and atomically become the latest snapshot. A crash before
//!   that leaves the previous latest snapshot intact.
//! * The latest snapshot never goes backwards: a commit whose `last_included.index` is below the
//!   latest's is discarded.
//! * A writer dropped without `commit` leaves nothing behind that a reader could see.

use async_trait::async_trait;
use bytes::Bytes;

pub use crate::error::StorageError;
pub use crate::snapshot_meta::{chunk_len, Checksum, SnapshotMeta, SnapshotStream};

/// Writes one new snapshot into a [`SnapshotStore`]. Obtained from [`SnapshotStore::begin`].
///
/// Dropping a writer without committing it abandons the snapshot (nothing becomes visible).
#[async_trait]
pub trait SnapshotWriter: Send {
    /// Appends `data` to the snapshot being written. Not durable by itself.
    async fn write(&mut self, data: Bytes) -> Result<(), StorageError>;

    /// Makes the written data and `meta` durable and atomically the latest snapshot, unless the
    /// store already holds a snapshot with a higher `last_included.index` (then this one is
    /// discarded and `Ok` is returned: the latest never goes backwards). `meta.size` must equal
    /// the number of bytes written, else [`StorageError::InvalidRequest`].
    async fn commit(self: Box<Self>, meta: SnapshotMeta) -> Result<(), StorageError>;
}

/// Durable storage for a node's snapshots (the latest one, plus snapshots being written).
///
/// Implementations take `&self` and must allow calls from several tasks at once: a node may
/// build its own snapshot, receive one from the leader and stream its latest one to a follower
/// concurrently. See the [module docs](self) for the durability contract. A panic in any method
/// is caught: the node stops with [`FatalError::Panicked`](crate::FatalError::Panicked).
#[async_trait]
pub trait SnapshotStore: Send + Sync + 'static {
    /// The metadata of the latest committed snapshot, or `None` if there is none.
    async fn latest(&self) -> Result<Option<SnapshotMeta>, StorageError>;

    /// Starts writing a new snapshot.
    async fn begin(&self) -> Result<Box<dyn SnapshotWriter>, StorageError>;

    /// Reads at most `max_bytes` of the data of snapshot `meta` starting at `offset` (fewer only
    /// at the end of the data; empty at or past the end). Fails with
    /// [`StorageError::InvalidRequest`] if `meta` is not the latest snapshot any more (it was
    /// superseded): readers must never mix the data of two snapshots.
    async fn read(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        max_bytes: u64,
    ) -> Result<Bytes, StorageError>;
}

#[async_trait]
impl<S: SnapshotStore + ?Sized> SnapshotStore for std::sync::Arc<S> {
    async fn latest(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        (**self).latest().await
    }
    async fn begin(&self) -> Result<Box<dyn SnapshotWriter>, StorageError> {
        (**self).begin().await
    }
    async fn read(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        max_bytes: u64,
    ) -> Result<Bytes, StorageError> {
        (**self).read(meta, offset, max_bytes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_ignores_chunking_and_sees_changes() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let whole = Checksum::of(&data);
        for split in [1, 3, 7, 8, 9, 100, 999] {
            let mut c = Checksum::new();
            for chunk in data.chunks(split) {
                c.update(chunk);
            }
            assert_eq!(c.value(), whole, "split {split}");
            assert_eq!(c.len(), 1000);
        }
        let mut changed = data.clone();
        changed[500] ^= 1;
        assert_ne!(Checksum::of(&changed), whole);
        assert_ne!(Checksum::of(&data[..999]), whole, "length matters");
        assert_ne!(Checksum::of(&[]), Checksum::of(&[0]));
    }

    #[test]
    fn chunk_lengths() {
        assert_eq!(chunk_len(10, 0, 4), 4);
        assert_eq!(chunk_len(10, 8, 4), 2);
        assert_eq!(chunk_len(10, 10, 4), 0);
        assert_eq!(chunk_len(0, 0, 4), 0);
    }
}

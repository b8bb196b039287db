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
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::membership::Membership;
use crate::state_machine::StateMachineError;
use crate::storage::StorageError;
use crate::types::LogId;

/// What describes a snapshot, stored durably with its data.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The last entry whose effect the snapshot includes (index and term).
    pub last_included: LogId,
    /// The cluster membership as of `last_included`.
    pub membership: Membership,
    /// The size of the snapshot's data in bytes.
    pub size: u64,
    /// The [`Checksum`] of the data. Together with `last_included` it identifies the data: two
    /// snapshots of the same state may serialize differently, and a transfer never mixes them.
    pub checksum: u64,
}

/// A stream of snapshot data, in order: what [`StateMachine::snapshot`] produces and
/// [`StateMachine::restore`] consumes. Chunks may have any size; memory stays bounded as long
/// as each chunk is.
///
/// [`StateMachine::snapshot`]: crate::StateMachine::snapshot
/// [`StateMachine::restore`]: crate::StateMachine::restore
pub type SnapshotStream = BoxStream<'static, Result<Bytes, StateMachineError>>;

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

/// A fast, non-cryptographic 64-bit checksum of a byte stream, independent of how the stream is
/// split into chunks. It detects corrupted or mixed snapshot data; it does not resist an
/// adversary (the transport authenticates peers).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checksum {
    state: u64,
    pending: [u8; 8],
    pending_len: usize,
    total: u64,
}

const CHECKSUM_MUL: u64 = 0x9E37_79B9_7F4A_7C15;

impl Checksum {
    /// A checksum of the empty stream so far.
    pub fn new() -> Self {
        Self::default()
    }

    fn mix(&mut self, word: u64) {
        self.state = (self.state.rotate_left(23) ^ word).wrapping_mul(CHECKSUM_MUL);
    }

    /// Feeds the next bytes of the stream.
    pub fn update(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.pending_len > 0 {
            let take = (8 - self.pending_len).min(data.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&data[..take]);
            self.pending_len += take;
            data = &data[take..];
            if self.pending_len < 8 {
                return;
            }
            let word = u64::from_le_bytes(self.pending);
            self.mix(word);
            self.pending_len = 0;
        }
        let mut words = data.chunks_exact(8);
        for chunk in &mut words {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(bytes));
        }
        let rest = words.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.pending_len = rest.len();
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether no byte was fed.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The checksum of everything fed so far.
    pub fn value(&self) -> u64 {
        let mut copy = self.clone();
        let mut last = [0u8; 8];
        last[..copy.pending_len].copy_from_slice(&copy.pending[..copy.pending_len]);
        copy.mix(u64::from_le_bytes(last));
        copy.mix(copy.total);
        let mut z = copy.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The checksum of `data` in one call.
    pub fn of(data: &[u8]) -> u64 {
        let mut checksum = Self::new();
        checksum.update(data);
        checksum.value()
    }
}

/// The length of the chunk of a snapshot of `size` bytes that starts at `offset`, for chunks of
/// at most `chunk_bytes`: what a leader sends in one InstallSnapshot.
pub fn chunk_len(size: u64, offset: u64, chunk_bytes: u64) -> u64 {
    size.saturating_sub(offset).min(chunk_bytes)
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

//! Snapshots as plain data: [`SnapshotMeta`] (what describes one), [`SnapshotStream`] (its
//! data, in order), [`Checksum`] and [`chunk_len`]. The `SnapshotStore` trait (in `snapshot`)
//! and the `StateMachine` trait use these; these use no trait.

use bytes::Bytes;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::error::StateMachineError;
use crate::membership::Membership;
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

//! An in-memory `LogStore`.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use raft_core::{
    DurableState, Entry, HardState, LogId, LogIndex, LogStore, StorageError, WriteBatch,
};

#[derive(Debug, Default, Clone)]
struct Inner {
    hard_state: HardState,
    purged: LogId,
    entries: VecDeque<Entry>,
    writes: u64,
    /// Lowest index written or removed since the last `take_change`, and whether anything was
    /// removed (for the simulation's invariant checker).
    changed_from: Option<LogIndex>,
    truncated: bool,
}

impl Inner {
    fn last(&self) -> LogId {
        self.entries.back().map_or(self.purged, Entry::log_id)
    }

    fn position(&self, index: LogIndex) -> Option<usize> {
        let offset = index.checked_sub(self.purged.index + 1)?;
        usize::try_from(offset).ok().filter(|&p| p < self.entries.len())
    }

    fn note_change(&mut self, index: LogIndex, truncated: bool) {
        self.changed_from = Some(self.changed_from.map_or(index, |c| c.min(index)));
        self.truncated |= truncated;
    }

    fn apply(&mut self, batch: WriteBatch) -> Result<(), StorageError> {
        let invalid = |msg: String| Err(StorageError::InvalidRequest(msg));
        if let Some(cut) = batch.truncate_from {
            if cut <= self.purged.index {
                return invalid(format!(
                    "truncate_from {cut} is at or below purged index {}",
                    self.purged.index
                ));
            }
        }
        let first = batch.truncate_from.unwrap_or(self.last().index + 1).min(self.last().index + 1);
        for (expected, entry) in (first..).zip(&batch.entries) {
            if entry.index != expected {
                return invalid(format!("entry {} where {expected} was expected", entry.index));
            }
        }
        if let Some(hard_state) = batch.hard_state {
            self.hard_state = hard_state;
        }
        if let Some(cut) = batch.truncate_from {
            if let Some(pos) = self.position(cut) {
                self.entries.truncate(pos);
                self.note_change(cut, true);
            }
        }
        if let Some(first) = batch.entries.first() {
            self.note_change(first.index, false);
        }
        self.entries.extend(batch.entries);
        self.writes += 1;
        Ok(())
    }
}

/// An in-memory [`LogStore`]. Cloning gives another handle to the same log.
///
/// Everything written is "durable" for as long as the `MemLogStore` lives: give a restarted node a
/// clone of the crashed node's store and it finds exactly what had been written. Writes are
/// atomic and validated like a real store's (gaps and truncation below the purged prefix are
/// rejected).
#[derive(Clone, Debug, Default)]
pub struct MemLogStore {
    inner: Arc<Mutex<Inner>>,
}

impl MemLogStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` half-updated (`apply` validates
        // before mutating), so a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every stored entry, in order (for tests and invariant checks).
    pub fn entries(&self) -> Vec<Entry> {
        self.lock().entries.iter().cloned().collect()
    }

    /// The stored hard state.
    pub fn hard_state(&self) -> HardState {
        self.lock().hard_state
    }

    /// What changed in the log since the previous call (`None` if nothing): the simulation
    /// feeds it to the [`InvariantChecker`](crate::sim::InvariantChecker).
    pub fn take_change(&self) -> Option<crate::sim::LogChange> {
        let mut inner = self.lock();
        // Entries written and purged since the last look are gone: report from the first held.
        let first_changed = inner.changed_from.take()?.max(inner.purged.index + 1);
        let truncated = std::mem::take(&mut inner.truncated);
        let prev_term = if first_changed <= inner.purged.index + 1 {
            inner.purged.term
        } else {
            inner.position(first_changed - 1).map_or(0, |p| inner.entries[p].term)
        };
        let start = inner.position(first_changed).unwrap_or(inner.entries.len());
        let entries = inner.entries.iter().skip(start).cloned().collect();
        Some(crate::sim::LogChange { first_changed, truncated, prev_term, entries })
    }

    /// How many `write` calls have completed (each would be one sync on a disk).
    pub fn write_count(&self) -> u64 {
        self.lock().writes
    }

    /// The last purged entry (`(0, 0)` if none).
    pub fn purged(&self) -> LogId {
        self.lock().purged
    }

    /// The size of the persisted Raft state as a store would encode it: the hard state, the
    /// purged id and every entry, postcard-encoded (what a compacted log must keep small).
    pub fn persisted_bytes(&self) -> u64 {
        let inner = self.lock();
        let entries: u64 = inner.entries.iter().map(encoded_size).sum();
        encoded_size(&inner.hard_state) + encoded_size(&inner.purged) + entries
    }

    /// The term of the stored entry at `index` (the purged one's included), if the store holds
    /// it.
    pub fn term_at(&self, index: LogIndex) -> Option<raft_core::Term> {
        let inner = self.lock();
        if index == inner.purged.index {
            return Some(inner.purged.term);
        }
        inner.position(index).map(|p| inner.entries[p].term)
    }

    /// The id of the last stored entry (the purged one's if none is held).
    pub(crate) fn last_id(&self) -> LogId {
        self.lock().last()
    }

    /// The ids of the stored entries from `index` on (what a truncation there removes).
    pub(crate) fn ids_from(&self, index: LogIndex) -> Vec<LogId> {
        let inner = self.lock();
        let start = inner.position(index).unwrap_or(inner.entries.len());
        inner.entries.iter().skip(start).map(Entry::log_id).collect()
    }

    /// `LogStore::write` without awaiting: validates and applies `batch` atomically.
    pub(crate) fn write_now(&self, batch: WriteBatch) -> Result<(), StorageError> {
        self.lock().apply(batch)
    }

    /// `LogStore::purge` without awaiting.
    pub(crate) fn purge_now(&self, up_to: LogIndex) -> Result<(), StorageError> {
        let mut inner = self.lock();
        if up_to <= inner.purged.index {
            return Ok(());
        }
        let Some(pos) = inner.position(up_to) else {
            return Err(StorageError::InvalidRequest(format!(
                "purge up to {up_to} beyond last index {}",
                inner.last().index
            )));
        };
        let last_purged = inner.entries[pos].log_id();
        inner.entries.drain(..=pos);
        inner.purged = last_purged;
        Ok(())
    }

    /// `LogStore::reset` without awaiting.
    pub(crate) fn reset_now(&self, last_included: LogId) {
        let mut inner = self.lock();
        let first = inner.purged.index + 1;
        if !inner.entries.is_empty() {
            inner.note_change(first, true);
        }
        inner.entries.clear();
        inner.purged = last_included;
        inner.writes += 1;
    }

    /// A copy of the stored contents (a disk image), independent of this store.
    pub(crate) fn image(&self) -> MemLogStore {
        let copy = self.lock().clone();
        MemLogStore { inner: Arc::new(Mutex::new(copy)) }
    }

    /// Replaces the stored contents by `image`'s (a disk swapped for an older one). The change
    /// is reported to the checker as a rewrite of the whole log.
    pub(crate) fn restore_image(&self, image: &MemLogStore) {
        let copy = image.lock().clone();
        let mut inner = self.lock();
        let first = inner.purged.index.min(copy.purged.index) + 1;
        *inner = copy;
        inner.changed_from = Some(first);
        inner.truncated = true;
    }
}

#[async_trait]
impl LogStore for MemLogStore {
    async fn open(&self) -> Result<DurableState, StorageError> {
        let inner = self.lock();
        Ok(DurableState { hard_state: inner.hard_state, purged: inner.purged, last: inner.last() })
    }

    async fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        self.write_now(batch)
    }

    async fn read(
        &self,
        range: Range<LogIndex>,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let inner = self.lock();
        if range.start >= range.end {
            return Ok(Vec::new());
        }
        let (Some(start), Some(_)) = (inner.position(range.start), inner.position(range.end - 1))
        else {
            return Err(StorageError::InvalidRequest(format!(
                "read of {range:?} outside stored entries {}..={}",
                inner.purged.index + 1,
                inner.last().index
            )));
        };
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for entry in inner.entries.iter().skip(start).take((range.end - range.start) as usize) {
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(entry.clone());
        }
        Ok(out)
    }

    async fn purge(&self, up_to: LogIndex) -> Result<(), StorageError> {
        self.purge_now(up_to)
    }

    async fn reset(&self, last_included: LogId) -> Result<(), StorageError> {
        self.reset_now(last_included);
        Ok(())
    }
}

fn encoded_size<T: serde::Serialize>(value: &T) -> u64 {
    postcard::experimental::serialized_size(value).map_or(0, |n| n as u64)
}

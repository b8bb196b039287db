//! An in-memory `SnapshotStore`.

use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use raft_core::{Bytes, SnapshotMeta, SnapshotStore, SnapshotWriter, StorageError};

#[derive(Debug, Default, Clone)]
struct Inner {
    latest: Option<(SnapshotMeta, Bytes)>,
    commits: u64,
}

/// An in-memory [`SnapshotStore`]. Cloning gives another handle to the same storage.
///
/// Like [`MemLogStore`](crate::MemLogStore), it survives a simulated crash: give the restarted
/// node a clone of the crashed node's store. A snapshot being written lives in its
/// [`SnapshotWriter`] until committed, so a crash (the writer is dropped) loses it and leaves
/// the previous latest snapshot, as a real store must. It keeps only the latest snapshot.
#[derive(Clone, Debug, Default)]
pub struct MemSnapshotStore {
    inner: Arc<Mutex<Inner>>,
}

impl MemSnapshotStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update replaces whole values: a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The metadata of the latest snapshot (for tests and invariant checks).
    pub fn latest_meta(&self) -> Option<SnapshotMeta> {
        self.lock().latest.as_ref().map(|(meta, _)| meta.clone())
    }

    /// The data of the latest snapshot (for tests).
    pub fn latest_data(&self) -> Option<Bytes> {
        self.lock().latest.as_ref().map(|(_, data)| data.clone())
    }

    /// How many commits made a snapshot the latest.
    pub fn commit_count(&self) -> u64 {
        self.lock().commits
    }

    /// `SnapshotWriter::commit` of `data` without awaiting: checks the size, then makes it the
    /// latest snapshot unless a newer one is stored.
    pub(crate) fn commit_now(&self, meta: SnapshotMeta, data: Bytes) -> Result<(), StorageError> {
        if meta.size != data.len() as u64 {
            return Err(StorageError::InvalidRequest(format!(
                "snapshot meta says {} bytes, {} were written",
                meta.size,
                data.len()
            )));
        }
        let mut inner = self.lock();
        let newer = inner
            .latest
            .as_ref()
            .is_some_and(|(latest, _)| latest.last_included.index > meta.last_included.index);
        if !newer {
            inner.latest = Some((meta, data));
            inner.commits += 1;
        }
        Ok(())
    }

    /// A copy of the stored snapshot (a disk image), independent of this store.
    pub(crate) fn image(&self) -> MemSnapshotStore {
        let copy = self.lock().clone();
        MemSnapshotStore { inner: Arc::new(Mutex::new(copy)) }
    }

    /// Replaces the stored snapshot by `image`'s (a disk swapped for an older one).
    pub(crate) fn restore_image(&self, image: &MemSnapshotStore) {
        let copy = image.lock().clone();
        *self.lock() = copy;
    }

    /// `SnapshotStore::read` without awaiting.
    pub(crate) fn read_now(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        max_bytes: u64,
    ) -> Result<Bytes, StorageError> {
        let inner = self.lock();
        let Some((latest, data)) = inner.latest.as_ref().filter(|(latest, _)| latest == meta)
        else {
            return Err(StorageError::InvalidRequest(format!(
                "snapshot {:?} is not the latest",
                meta.last_included
            )));
        };
        let start = usize::try_from(offset.min(latest.size)).unwrap_or(usize::MAX);
        let len = usize::try_from(max_bytes).unwrap_or(usize::MAX);
        let end = start.saturating_add(len).min(data.len());
        Ok(data.slice(start.min(end)..end))
    }
}

struct MemWriter {
    store: MemSnapshotStore,
    data: Vec<u8>,
}

#[async_trait]
impl SnapshotWriter for MemWriter {
    async fn write(&mut self, data: Bytes) -> Result<(), StorageError> {
        self.data.extend_from_slice(&data);
        Ok(())
    }

    async fn commit(self: Box<Self>, meta: SnapshotMeta) -> Result<(), StorageError> {
        self.store.commit_now(meta, Bytes::from(self.data))
    }
}

#[async_trait]
impl SnapshotStore for MemSnapshotStore {
    async fn latest(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        Ok(self.latest_meta())
    }

    async fn begin(&self) -> Result<Box<dyn SnapshotWriter>, StorageError> {
        Ok(Box::new(MemWriter { store: self.clone(), data: Vec::new() }))
    }

    async fn read(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        max_bytes: u64,
    ) -> Result<Bytes, StorageError> {
        self.read_now(meta, offset, max_bytes)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use raft_core::{Checksum, LogId};

    fn meta(index: u64, data: &[u8]) -> SnapshotMeta {
        SnapshotMeta {
            last_included: LogId::new(1, index),
            membership: raft_core::Membership::with_voters([1, 2, 3]),
            size: data.len() as u64,
            checksum: Checksum::of(data),
        }
    }

    #[test]
    fn commit_read_and_never_backwards() {
        futures::executor::block_on(async {
            let store = MemSnapshotStore::new();
            assert_eq!(store.latest().await.unwrap(), None);
            let mut w = store.begin().await.unwrap();
            w.write(Bytes::from_static(b"hello ")).await.unwrap();
            assert_eq!(store.latest().await.unwrap(), None, "invisible until committed");
            w.write(Bytes::from_static(b"world")).await.unwrap();
            let m10 = meta(10, b"hello world");
            w.commit(m10.clone()).await.unwrap();
            assert_eq!(store.latest().await.unwrap(), Some(m10.clone()));
            assert_eq!(&store.read(&m10, 6, 100).await.unwrap()[..], b"world");
            assert_eq!(&store.read(&m10, 0, 5).await.unwrap()[..], b"hello");
            assert!(store.read(&m10, 11, 5).await.unwrap().is_empty());
            // An older snapshot committed later is discarded.
            let mut w = store.begin().await.unwrap();
            w.write(Bytes::from_static(b"old")).await.unwrap();
            w.commit(meta(5, b"old")).await.unwrap();
            assert_eq!(store.latest().await.unwrap(), Some(m10.clone()));
            // A dropped writer leaves nothing; a wrong size is refused.
            drop(store.begin().await.unwrap());
            let mut w = store.begin().await.unwrap();
            w.write(Bytes::from_static(b"abc")).await.unwrap();
            assert!(w.commit(meta(20, b"abcd")).await.is_err());
            // A newer one supersedes: reads of the old one fail.
            let mut w = store.begin().await.unwrap();
            w.write(Bytes::from_static(b"new")).await.unwrap();
            w.commit(meta(20, b"new")).await.unwrap();
            assert!(store.read(&m10, 0, 5).await.is_err());
            assert_eq!(store.clone().latest_meta(), Some(meta(20, b"new")), "clones share");
        });
    }
}

//! Snapshots on disk: `FileSnapshotStore` on its own (including exclusive opening within this
//! process; across processes is in `exclusive.rs`), and a 3-node cluster on `LmdbLogStore` +
//! `FileSnapshotStore` that compacts its logs, restarts from snapshots, and brings a wiped node
//! back by InstallSnapshot.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use raft_core::runtime::TokioRuntime;
use raft_core::{
    Bytes, Checksum, Config, Entry, LogId, LogStore, Node, NodeId, ProposeError, Role,
    SnapshotMeta, SnapshotStore, SnapshotStream, StateMachine, StateMachineError, StorageError,
};
use raft_lmdb::{FileSnapshotStore, LmdbLogStore};
use raft_mem::MemNetwork;

const PATIENCE: Duration = Duration::from_secs(30);
const IDS: [NodeId; 3] = [1, 2, 3];

fn meta(index: u64, data: &[u8]) -> SnapshotMeta {
    SnapshotMeta {
        last_included: LogId::new(2, index),
        membership: raft_core::Membership::with_voters(IDS),
        size: data.len() as u64,
        checksum: Checksum::of(data),
    }
}

async fn commit(store: &FileSnapshotStore, index: u64, data: &[u8]) -> SnapshotMeta {
    let mut writer = store.begin().await.unwrap();
    for chunk in data.chunks(7) {
        writer.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    let m = meta(index, data);
    writer.commit(m.clone()).await.unwrap();
    m
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn file_snapshot_store_commits_atomically_and_never_goes_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileSnapshotStore::open_dir(dir.path()).unwrap();
    assert_eq!(store.latest().await.unwrap(), None);
    let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    let m10 = commit(&store, 10, &data).await;
    assert_eq!(store.latest().await.unwrap(), Some(m10.clone()));
    let mut read = Vec::new();
    while (read.len() as u64) < m10.size {
        let chunk = store.read(&m10, read.len() as u64, 300).await.unwrap();
        assert!(chunk.len() <= 300);
        read.extend_from_slice(&chunk);
    }
    assert_eq!(read, data);
    assert!(store.read(&m10, 1000, 10).await.unwrap().is_empty());

    // An abandoned writer leaves nothing; an older commit is discarded.
    let mut writer = store.begin().await.unwrap();
    writer.write(Bytes::from_static(b"abandoned")).await.unwrap();
    drop(writer);
    commit(&store, 5, b"older").await;
    assert_eq!(store.latest().await.unwrap(), Some(m10.clone()));
    assert_eq!(files(dir.path()).len(), 1, "{:?}", files(dir.path()));
    let mut writer = store.begin().await.unwrap();
    writer.write(Bytes::from_static(b"abc")).await.unwrap();
    assert!(matches!(writer.commit(meta(30, b"abcd")).await, Err(StorageError::InvalidRequest(_))));

    // A newer one supersedes it: the old one can no longer be read, and its file is gone.
    let m20 = commit(&store, 20, b"the newer snapshot").await;
    assert!(matches!(store.read(&m10, 0, 10).await, Err(StorageError::InvalidRequest(_))));
    assert_eq!(files(dir.path()).len(), 1);

    // Reopen: the latest survives; leftovers of a crash (a temporary file, a torn snapshot
    // file) are cleaned or ignored.
    drop(store);
    std::fs::write(dir.path().join("7.tmp"), b"half a snapshot").unwrap();
    let torn = dir.path().join(format!("snapshot-{:020}-{:020}-{:016x}.snap", 99, 2, 1));
    std::fs::write(&torn, b"no trailer").unwrap();
    let store = FileSnapshotStore::open_dir(dir.path()).unwrap();
    assert_eq!(store.latest().await.unwrap(), Some(m20.clone()));
    assert_eq!(&store.read(&m20, 4, 5).await.unwrap()[..], b"newer");
    assert!(!dir.path().join("7.tmp").exists());
}

#[test]
fn a_snapshot_directory_opens_once_per_process() {
    let root = tempfile::tempdir().unwrap();
    let store = FileSnapshotStore::open_dir(root.path()).unwrap();
    let handle = store.clone();
    let err = FileSnapshotStore::open_dir(root.path()).unwrap_err();
    assert!(matches!(err, raft_lmdb::OpenError::AlreadyOpenInProcess { .. }), "{err}");
    assert!(err.to_string().contains("already open in this process"), "{err}");
    drop(store);
    // A clone is the same store: the directory stays held until the last handle goes.
    assert!(FileSnapshotStore::open_dir(root.path()).is_err());
    drop(handle);
    FileSnapshotStore::open_dir(root.path()).unwrap();
}

#[tokio::test]
async fn a_snapshot_never_writes_into_a_file_it_did_not_create() {
    let root = tempfile::tempdir().unwrap();
    let store = FileSnapshotStore::open_dir(root.path()).unwrap();
    // Files under the names a per-store counter would pick, made by someone else.
    for n in 0..4 {
        std::fs::write(root.path().join(format!("{n}.tmp")), b"not yours").unwrap();
    }
    let mut writer = store.begin().await.unwrap();
    writer.write(Bytes::from_static(b"snapshot data")).await.unwrap();
    let meta = meta(10, b"snapshot data");
    writer.commit(meta.clone()).await.unwrap();
    assert_eq!(store.latest().await.unwrap(), Some(meta.clone()));
    assert_eq!(&store.read(&meta, 0, 100).await.unwrap()[..], b"snapshot data");
    for n in 0..4 {
        assert_eq!(std::fs::read(root.path().join(format!("{n}.tmp"))).unwrap(), b"not yours");
    }
}

#[tokio::test]
async fn a_superseded_snapshot_that_cannot_be_deleted_does_not_fail_the_commit() {
    let root = tempfile::tempdir().unwrap();
    let store = FileSnapshotStore::open_dir(root.path()).unwrap();
    commit(&store, 1, b"first").await;
    // The first snapshot's file becomes something `remove_file` cannot delete.
    let [first] = files(root.path()).try_into().unwrap();
    let first = root.path().join(first);
    std::fs::remove_file(&first).unwrap();
    std::fs::create_dir(&first).unwrap();
    std::fs::write(first.join("x"), b"x").unwrap();
    let mut writer = store.begin().await.unwrap();
    writer.write(Bytes::from_static(b"second")).await.unwrap();
    let second = meta(2, b"second");
    writer.commit(second.clone()).await.unwrap();
    assert_eq!(store.latest().await.unwrap(), Some(second));
}

/// A state machine that keeps every applied entry and snapshots them (postcard).
#[derive(Clone, Default)]
struct Recorder {
    applied: Arc<Mutex<Vec<Entry>>>,
    restored: Arc<Mutex<Vec<LogId>>>,
}

#[async_trait]
impl StateMachine for Recorder {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        self.applied.lock().unwrap().extend(entries.iter().cloned());
        Ok(entries.iter().map(|e| e.command().cloned().unwrap_or_default()).collect())
    }

    async fn snapshot(&mut self) -> Result<Option<SnapshotStream>, StateMachineError> {
        let captured = self.applied.lock().unwrap().clone();
        let encoded = postcard::to_allocvec(&captured).unwrap();
        let chunks: Vec<Result<Bytes, StateMachineError>> =
            encoded.chunks(100).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        Ok(Some(futures::stream::iter(chunks).boxed()))
    }

    async fn restore(
        &mut self,
        meta: &SnapshotMeta,
        mut data: SnapshotStream,
    ) -> Result<(), StateMachineError> {
        let mut encoded = Vec::new();
        while let Some(chunk) = data.next().await {
            encoded.extend_from_slice(&chunk?);
        }
        let entries: Vec<Entry> =
            postcard::from_bytes(&encoded).map_err(|e| StateMachineError::new(e.to_string()))?;
        assert_eq!(entries.last().unwrap().log_id(), meta.last_included);
        *self.applied.lock().unwrap() = entries;
        self.restored.lock().unwrap().push(meta.last_included);
        Ok(())
    }
}

fn config(id: NodeId) -> Config {
    let mut config = Config::new(id, IDS);
    config.tick_interval_ms = 5;
    config.heartbeat_interval_ms = 25;
    config.election_timeout_ms_min = 150;
    config.election_timeout_ms_max = 300;
    config.snapshot_interval_entries = 20;
    config.snapshot_keep_entries = 5;
    config.snapshot_chunk_bytes = 512;
    config
}

fn dirs(root: &Path, id: NodeId) -> (PathBuf, PathBuf) {
    (root.join(format!("node-{id}/raft")), root.join(format!("node-{id}/snapshots")))
}

struct Cluster {
    network: MemNetwork,
    nodes: BTreeMap<NodeId, Node>,
    recorders: BTreeMap<NodeId, Recorder>,
}

impl Cluster {
    async fn start(root: &Path) -> Cluster {
        let mut cluster = Cluster {
            network: MemNetwork::new(),
            nodes: BTreeMap::new(),
            recorders: BTreeMap::new(),
        };
        for id in IDS {
            cluster.boot(root, id).await;
        }
        cluster
    }

    async fn boot(&mut self, root: &Path, id: NodeId) {
        let (log_dir, snap_dir) = dirs(root, id);
        let recorder = Recorder::default();
        let node = Node::builder(
            config(id),
            LmdbLogStore::open_dir(log_dir).unwrap(),
            self.network.endpoint(id),
            recorder.clone(),
            TokioRuntime::current().unwrap(),
        )
        .snapshot_store(FileSnapshotStore::open_dir(snap_dir).unwrap())
        .start()
        .await
        .unwrap();
        self.network.register(id, Arc::new(node.clone()));
        self.nodes.insert(id, node);
        self.recorders.insert(id, recorder);
    }

    async fn stop(&mut self, id: NodeId) {
        self.network.unregister(id);
        let node = self.nodes.remove(&id).unwrap();
        node.shutdown().await;
        assert!(node.fatal_error().is_none(), "node {id}: {:?}", node.fatal_error());
    }

    async fn write(&self, command: Bytes) -> u64 {
        within("a committed write", async {
            loop {
                let leader = self
                    .nodes
                    .values()
                    .map(Node::status)
                    .find(|s| s.role == Role::Leader)
                    .map(|s| s.id);
                if let Some(leader) = leader {
                    match self.nodes[&leader].propose(command.clone()).await {
                        Ok(proposal) => {
                            let index = proposal.index;
                            if proposal.response().await.is_ok() {
                                return index;
                            }
                        }
                        Err(ProposeError::NotLeader { .. }) => {}
                        Err(e) => panic!("propose failed: {e}"),
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
    }

    async fn wait_applied(&self, index: u64) {
        for node in self.nodes.values() {
            let mut watch = node.watch();
            within("applies", watch.wait_for(|s| s.applied_index >= index)).await;
        }
    }

    fn commands(&self, id: NodeId) -> Vec<(u64, Bytes)> {
        let applied = self.recorders[&id].applied.lock().unwrap();
        applied.iter().filter_map(|e| Some((e.index, e.command()?.clone()))).collect()
    }
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lmdb_cluster_compacts_restarts_from_snapshots_and_installs_them() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(root.path()).await;
    let mut last = 0;
    for i in 0..120 {
        last = cluster.write(Bytes::from(format!("w{i:04}"))).await;
    }
    cluster.wait_applied(last).await;
    let expected = cluster.commands(1);
    for id in IDS {
        cluster.stop(id).await;
    }
    // Every log was compacted on disk, below a durable snapshot.
    let mut snapshots = BTreeMap::new();
    for id in IDS {
        let (log_dir, snap_dir) = dirs(root.path(), id);
        let state = LmdbLogStore::open_dir(&log_dir).unwrap().open().await.unwrap();
        let snap = FileSnapshotStore::open_dir(&snap_dir).unwrap().latest().await.unwrap().unwrap();
        assert!(state.purged.index >= 80, "node {id}: {state:?}");
        assert!(state.purged.index + 5 <= snap.last_included.index, "node {id}: tail kept");
        assert!(state.last.index - state.purged.index < 50, "node {id}: short log {state:?}");
        snapshots.insert(id, snap.last_included);
    }
    // Restart: every node restores its snapshot first, then applies only the tail.
    for id in IDS {
        cluster.boot(root.path(), id).await;
        let status = cluster.nodes[&id].status();
        assert_eq!(status.applied_index, snapshots[&id].index, "node {id}");
        assert_eq!(*cluster.recorders[&id].restored.lock().unwrap(), vec![snapshots[&id]]);
    }
    let after = cluster.write(Bytes::from_static(b"after restart")).await;
    cluster.wait_applied(after).await;
    for id in IDS {
        assert_eq!(cluster.commands(id)[..expected.len()], expected[..], "node {id}");
    }
    // Wipe node 3: it comes back empty and catches up by InstallSnapshot.
    cluster.stop(3).await;
    std::fs::remove_dir_all(root.path().join("node-3")).unwrap();
    for i in 0..30 {
        last = cluster.write(Bytes::from(format!("x{i:04}"))).await;
    }
    cluster.boot(root.path(), 3).await;
    cluster.wait_applied(last).await;
    assert!(!cluster.recorders[&3].restored.lock().unwrap().is_empty(), "installed a snapshot");
    assert_eq!(cluster.commands(3), cluster.commands(1));
    for id in IDS {
        cluster.stop(id).await;
    }
}

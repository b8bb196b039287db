//! Snapshots on disk: `FileSnapshotStore` on its own (including exclusive opening within this
//! process; across processes is in `exclusive.rs`), and a 3-node cluster on `LmdbLogStore` +
//! `FileSnapshotStore` that compacts its logs, restarts from snapshots, and brings a wiped node
//! back by InstallSnapshot.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use raft_core::runtime::TokioRuntime;
use raft_core::{
    Bytes, Checksum, Config, LogId, LogStore, NodeId, SnapshotMeta, SnapshotStore, StorageError,
};
use raft_lmdb::{FileSnapshotStore, LmdbLogStore};
use raft_mem::harness::{test_config, Cluster, RecordingStateMachine};
use raft_mem::MemNetwork;

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

fn config(id: NodeId) -> Config {
    let mut config = test_config(id);
    config.snapshot_interval_entries = 20;
    config.snapshot_keep_entries = 5;
    config.snapshot_chunk_bytes = 512;
    config
}

fn dirs(root: &Path, id: NodeId) -> (PathBuf, PathBuf) {
    (root.join(format!("node-{id}/raft")), root.join(format!("node-{id}/snapshots")))
}

type LmdbCluster = Cluster<TokioRuntime, MemNetwork, LmdbLogStore, RecordingStateMachine>;

/// The cluster of nodes whose stores are in directories under `root` (bootstrapping the
/// cluster at a node's start if its directories are new), none of them started.
fn cluster(root: &Path) -> LmdbCluster {
    let (logs, snapshots, new) = (root.to_path_buf(), root.to_path_buf(), root.to_path_buf());
    Cluster::builder(
        TokioRuntime::current().unwrap(),
        MemNetwork::new(),
        IDS,
        move |id| Ok(LmdbLogStore::open_dir(dirs(&logs, id).0)?),
        |_| RecordingStateMachine::new(),
    )
    .config(config)
    .snapshot_store(move |id| Ok(Some(FileSnapshotStore::open_dir(dirs(&snapshots, id).1)?)))
    .bootstrap_if(move |id| !dirs(&new, id).0.exists())
    .build()
}

async fn write(cluster: &LmdbCluster, command: Bytes) -> u64 {
    cluster.propose(command).await.unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lmdb_cluster_compacts_restarts_from_snapshots_and_installs_them() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = cluster(root.path());
    cluster.start_all().await.unwrap();
    let mut last = 0;
    for i in 0..120 {
        last = write(&cluster, Bytes::from(format!("w{i:04}"))).await;
    }
    cluster.wait_applied(last).await.unwrap();
    let expected = cluster.applied(1);
    for id in IDS {
        cluster.stop(id).await.unwrap();
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
        cluster.start(id).await.unwrap();
        let status = cluster.node(id).unwrap().status();
        assert_eq!(status.applied_index, snapshots[&id].index, "node {id}");
        assert_eq!(cluster.restored(id), vec![snapshots[&id]]);
    }
    let after = write(&cluster, Bytes::from_static(b"after restart")).await;
    cluster.wait_applied(after).await.unwrap();
    for id in IDS {
        assert_eq!(cluster.applied(id)[..expected.len()], expected[..], "node {id}");
    }
    // Wipe node 3: it comes back empty and catches up by InstallSnapshot.
    cluster.stop(3).await.unwrap();
    std::fs::remove_dir_all(root.path().join("node-3")).unwrap();
    for i in 0..30 {
        last = write(&cluster, Bytes::from(format!("x{i:04}"))).await;
    }
    cluster.start(3).await.unwrap();
    cluster.wait_applied(last).await.unwrap();
    assert!(!cluster.restored(3).is_empty(), "installed a snapshot");
    assert_eq!(cluster.applied(3), cluster.applied(1));
    for id in IDS {
        cluster.stop(id).await.unwrap();
    }
}

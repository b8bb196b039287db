//! A 3-node in-process cluster on `LmdbLogStore` (and `MemNetwork`) survives a whole-cluster
//! restart: every committed entry is still in every log and is applied again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use raft_core::runtime::TokioRuntime;
use raft_core::{Bytes, LogStore, NodeId};
use raft_lmdb::LmdbLogStore;
use raft_mem::harness::{Cluster, RecordingStateMachine};
use raft_mem::MemNetwork;

const IDS: [NodeId; 3] = [1, 2, 3];

type LmdbCluster = Cluster<TokioRuntime, MemNetwork, LmdbLogStore, RecordingStateMachine>;

/// Starts every node from the store in its directory under `root` (bootstrapping the cluster
/// if the directories are new).
async fn start(root: &Path) -> LmdbCluster {
    let (stores, new) = (root.to_path_buf(), root.to_path_buf());
    let mut cluster = Cluster::builder(
        TokioRuntime::current().unwrap(),
        MemNetwork::new(),
        IDS,
        move |id| Ok(LmdbLogStore::open_dir(node_dir(&stores, id))?),
        |_| RecordingStateMachine::new(),
    )
    .bootstrap_if(move |id| !node_dir(&new, id).exists())
    .build();
    cluster.start_all().await.unwrap();
    cluster
}

/// Proposes `command` until a leader commits it; returns its index.
async fn write(cluster: &LmdbCluster, command: Bytes) -> u64 {
    cluster.propose(command).await.unwrap().0
}

/// The commands node `id` applied, by index.
fn applied(cluster: &LmdbCluster, id: NodeId) -> BTreeMap<u64, Bytes> {
    cluster.applied(id).into_iter().collect()
}

fn node_dir(root: &Path, id: NodeId) -> PathBuf {
    root.join(format!("node-{id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_cluster_restart_keeps_every_committed_entry() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = start(root.path()).await;
    let mut committed = BTreeMap::new();
    for i in 0..20 {
        let command = Bytes::from(format!("sequential {i}"));
        committed.insert(write(&cluster, command.clone()).await, command);
    }
    // Concurrent proposals: the leader's store merges them into shared commits.
    let writes = (0..40).map(|i| {
        let command = Bytes::from(format!("concurrent {i}"));
        let cluster = &cluster;
        async move { (write(cluster, command.clone()).await, command) }
    });
    committed.extend(futures::future::join_all(writes).await);
    let last = *committed.keys().last().unwrap();
    cluster.wait_applied(last).await.unwrap();
    cluster.stop_all().await.unwrap();

    // Every node stopped: the stores are closed, and the cluster starts again from disk.
    let mut cluster = start(root.path()).await;
    let after = write(&cluster, Bytes::from_static(b"after the restart")).await;
    assert!(after > last);
    cluster.wait_applied(after).await.unwrap();
    for id in IDS {
        let applied = applied(&cluster, id);
        for (index, command) in &committed {
            assert_eq!(applied.get(index), Some(command), "node {id} lost entry {index}");
        }
    }
    cluster.stop_all().await.unwrap();

    // And the logs on disk hold every committed entry at its index.
    for id in IDS {
        let store = LmdbLogStore::open_dir(node_dir(root.path(), id)).unwrap();
        let state = store.open().await.unwrap();
        assert!(state.last.index >= after, "node {id}: {state:?}");
        let log = store.read(1..state.last.index + 1, u64::MAX).await.unwrap();
        for (index, command) in &committed {
            let entry = &log[(*index - 1) as usize];
            assert_eq!(entry.command(), Some(command), "node {id}, entry {index}");
        }
    }
}

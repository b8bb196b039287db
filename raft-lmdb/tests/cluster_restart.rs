//! A 3-node in-process cluster on `LmdbLogStore` (and `MemNetwork`) survives a whole-cluster
//! restart: every committed entry is still in every log and is applied again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use raft_core::runtime::TokioRuntime;
use raft_core::{
    Bytes, Config, Entry, LogStore, Membership, Node, NodeId, ProposeError, Role, StateMachine,
    StateMachineError,
};
use raft_lmdb::LmdbLogStore;
use raft_mem::MemNetwork;

/// A bound that only turns a hang into a failure; it measures nothing.
const PATIENCE: Duration = Duration::from_secs(30);
const IDS: [NodeId; 3] = [1, 2, 3];

/// Records every applied entry and answers each command with its own bytes.
#[derive(Clone, Default)]
struct Recorder {
    applied: Arc<Mutex<Vec<Entry>>>,
}

#[async_trait]
impl StateMachine for Recorder {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        self.applied.lock().unwrap().extend(entries.iter().cloned());
        Ok(entries.iter().map(|e| e.command().cloned().unwrap_or_default()).collect())
    }
}

fn config(id: NodeId) -> Config {
    let mut config = Config::new(id);
    config.tick_interval_ms = 5;
    config.heartbeat_interval_ms = 25;
    config.election_timeout_ms_min = 150;
    config.election_timeout_ms_max = 300;
    config
}

struct Cluster {
    network: MemNetwork,
    nodes: BTreeMap<NodeId, Node>,
    recorders: BTreeMap<NodeId, Recorder>,
}

impl Cluster {
    /// Starts every node from the store in its directory under `root` (bootstrapping the
    /// cluster if the directories are new).
    async fn start(root: &Path) -> Cluster {
        let runtime = TokioRuntime::current().unwrap();
        let network = MemNetwork::new();
        let (mut nodes, mut recorders) = (BTreeMap::new(), BTreeMap::new());
        for id in IDS {
            let first_start = !node_dir(root, id).exists();
            let store = LmdbLogStore::open_dir(node_dir(root, id)).unwrap();
            let recorder = Recorder::default();
            let builder = Node::builder(
                config(id),
                store,
                network.endpoint(id),
                recorder.clone(),
                runtime.clone(),
            );
            let builder =
                if first_start { builder.bootstrap(Membership::with_voters(IDS)) } else { builder };
            let node = builder.start().await.unwrap();
            network.register(id, Arc::new(node.clone()));
            nodes.insert(id, node);
            recorders.insert(id, recorder);
        }
        Cluster { network, nodes, recorders }
    }

    async fn leader(&self) -> NodeId {
        within("a leader", async {
            loop {
                let statuses: Vec<_> = self.nodes.values().map(Node::status).collect();
                let leaders: Vec<_> = statuses.iter().filter(|s| s.role == Role::Leader).collect();
                if let [leader] = leaders[..] {
                    if statuses.iter().all(|s| s.leader_id == Some(leader.id)) {
                        return leader.id;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
    }

    /// Proposes `command` until a leader accepts it; returns its index once applied there.
    async fn write(&self, command: Bytes) -> u64 {
        within("a committed write", async {
            loop {
                let leader = self.leader().await;
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

    /// The commands node `id` applied, by index.
    fn applied(&self, id: NodeId) -> BTreeMap<u64, Bytes> {
        let applied = self.recorders[&id].applied.lock().unwrap();
        applied.iter().filter_map(|e| Some((e.index, e.command()?.clone()))).collect()
    }

    async fn shutdown(self) {
        for (id, node) in &self.nodes {
            self.network.unregister(*id);
            node.shutdown().await;
            assert!(node.fatal_error().is_none(), "node {id} failed: {:?}", node.fatal_error());
        }
    }
}

fn node_dir(root: &Path, id: NodeId) -> PathBuf {
    root.join(format!("node-{id}"))
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_cluster_restart_keeps_every_committed_entry() {
    let root = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(root.path()).await;
    let mut committed = BTreeMap::new();
    for i in 0..20 {
        let command = Bytes::from(format!("sequential {i}"));
        committed.insert(cluster.write(command.clone()).await, command);
    }
    // Concurrent proposals: the leader's store merges them into shared commits.
    let writes = (0..40).map(|i| {
        let command = Bytes::from(format!("concurrent {i}"));
        let cluster = &cluster;
        async move { (cluster.write(command.clone()).await, command) }
    });
    committed.extend(futures::future::join_all(writes).await);
    let last = *committed.keys().last().unwrap();
    cluster.wait_applied(last).await;
    cluster.shutdown().await;

    // Every node stopped: the stores are closed, and the cluster starts again from disk.
    let cluster = Cluster::start(root.path()).await;
    let after = cluster.write(Bytes::from_static(b"after the restart")).await;
    assert!(after > last);
    cluster.wait_applied(after).await;
    for id in IDS {
        let applied = cluster.applied(id);
        for (index, command) in &committed {
            assert_eq!(applied.get(index), Some(command), "node {id} lost entry {index}");
        }
    }
    cluster.shutdown().await;

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

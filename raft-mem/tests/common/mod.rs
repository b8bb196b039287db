//! A test cluster of real `Node`s on `MemNetwork` and `MemLogStore`, generic over the runtime.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use raft_core::{
    Bytes, Entry, Membership, Node, NodeId, ProposeError, Role, Runtime, StateMachine,
    StateMachineError, Status,
};
use raft_mem::{MemLogStore, MemNetwork};

/// Records every applied entry; answers each command with its own bytes.
#[derive(Clone, Default)]
pub struct Recorder {
    pub applied: Arc<Mutex<Vec<Entry>>>,
}

#[async_trait]
impl StateMachine for Recorder {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        let mut applied = self.applied.lock().unwrap();
        if let (Some(last), Some(first)) = (applied.last(), entries.first()) {
            assert_eq!(first.index, last.index + 1, "applies happen in order without gaps");
        }
        applied.extend(entries.iter().cloned());
        Ok(entries.iter().map(|e| e.command().cloned().unwrap_or_default()).collect())
    }
}

/// A generous bound used only to turn a hang into a failure, never to measure speed.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub struct Cluster<R: Runtime + Clone> {
    pub runtime: R,
    pub network: MemNetwork,
    pub ids: Vec<NodeId>,
    /// The initial voters: each bootstraps the cluster at its first boot.
    pub founders: Vec<NodeId>,
    /// The nodes booted at least once (their stores are initialized or joining).
    pub booted: BTreeSet<NodeId>,
    pub stores: BTreeMap<NodeId, MemLogStore>,
    pub nodes: BTreeMap<NodeId, Node>,
    pub recorders: BTreeMap<NodeId, Recorder>,
}

/// Short timeouts keep the tests quick; they are still many ticks long.
pub use raft_mem::harness::test_config as config;

impl<R: Runtime + Clone> Cluster<R> {
    pub async fn start(n: u64, runtime: R) -> Self {
        let ids: Vec<NodeId> = (1..=n).collect();
        let mut cluster = Self {
            runtime,
            network: MemNetwork::new(),
            stores: ids.iter().map(|&id| (id, MemLogStore::new())).collect(),
            founders: ids.clone(),
            booted: BTreeSet::new(),
            ids,
            nodes: BTreeMap::new(),
            recorders: BTreeMap::new(),
        };
        for id in cluster.ids.clone() {
            cluster.boot(id).await;
        }
        cluster
    }

    /// Adds node `id` to the test, started empty as a node joining the cluster (no initial
    /// voters); a leader must add it with a membership change.
    pub async fn boot_joining(&mut self, id: NodeId) {
        self.stores.insert(id, MemLogStore::new());
        self.ids.push(id);
        self.boot(id).await;
    }

    /// Starts node `id` from whatever its store holds, with a fresh state machine. A founder
    /// bootstraps the cluster at its first boot.
    pub async fn boot(&mut self, id: NodeId) {
        let recorder = Recorder::default();
        let builder = Node::builder(
            config(id),
            self.stores[&id].clone(),
            self.network.endpoint(id),
            recorder.clone(),
            self.runtime.clone(),
        );
        let first_boot = self.booted.insert(id);
        let builder = if first_boot && self.founders.contains(&id) {
            builder.bootstrap(Membership::with_voters(self.founders.iter().copied()))
        } else {
            builder
        };
        let node = builder.start().await.unwrap();
        self.network.serve(id, Arc::new(node.clone()));
        self.nodes.insert(id, node);
        self.recorders.insert(id, recorder);
    }

    /// Crashes node `id`: it stops, keeping only what its store made durable.
    pub async fn crash(&mut self, id: NodeId) {
        self.network.stop_serving(id);
        if let Some(node) = self.nodes.remove(&id) {
            node.shutdown().await;
        }
    }

    pub async fn restart(&mut self, id: NodeId) {
        self.crash(id).await;
        self.boot(id).await;
    }

    pub async fn shutdown(self) {
        for node in self.nodes.values() {
            node.shutdown().await;
        }
    }

    pub async fn sleep(&self, duration: Duration) {
        self.runtime.sleep(duration).await;
    }

    /// Runs `future`, failing the test if it takes longer than [`PATIENCE`].
    pub async fn within<T>(&self, what: &str, future: impl std::future::Future<Output = T>) -> T {
        futures::select! {
            value = future.fuse() => value,
            _ = self.runtime.sleep(PATIENCE).fuse() => panic!("timed out waiting for {what}"),
        }
    }

    /// The statuses of the running, connected nodes.
    pub fn connected_statuses(&self) -> Vec<Status> {
        self.nodes
            .iter()
            .filter(|(id, _)| !self.network.is_disconnected(**id))
            .map(|(_, node)| node.status())
            .collect()
    }

    /// Waits until exactly one connected node leads, and every connected node follows it in
    /// its term; returns it.
    pub async fn wait_for_leader(&self) -> NodeId {
        self.within("a leader", async {
            loop {
                let statuses = self.connected_statuses();
                let leaders: Vec<&Status> =
                    statuses.iter().filter(|s| s.role == Role::Leader).collect();
                if let [leader] = leaders[..] {
                    if statuses.iter().all(|s| {
                        s.current_term == leader.current_term && s.leader_id == Some(leader.id)
                    }) {
                        return leader.id;
                    }
                }
                self.sleep(Duration::from_millis(5)).await;
            }
        })
        .await
    }

    /// Proposes on the current leader until accepted, and returns the applied response.
    pub async fn write(&self, data: &[u8]) -> (u64, Bytes) {
        let data = Bytes::copy_from_slice(data);
        self.within("a write", async {
            loop {
                let leader = self.wait_for_leader().await;
                match self.nodes[&leader].propose(data.clone()).await {
                    Ok(proposal) => {
                        let index = proposal.index;
                        if let Ok(response) = proposal.response().await {
                            return (index, response);
                        }
                    }
                    Err(ProposeError::NotLeader { .. }) => {}
                    Err(e) => panic!("propose failed: {e}"),
                }
                self.sleep(Duration::from_millis(5)).await;
            }
        })
        .await
    }

    /// Waits until every running node has applied up to `index`.
    pub async fn wait_applied(&self, nodes: &[NodeId], index: u64) {
        for id in nodes {
            let mut watch = self.nodes[id].watch();
            self.within("applies", watch.wait_for(|s| s.applied_index >= index)).await;
        }
    }

    pub fn applied_commands(&self, id: NodeId) -> Vec<Bytes> {
        self.recorders[&id]
            .applied
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| e.command().cloned())
            .collect()
    }

    /// State Machine Safety across nodes: no two nodes applied different entries at one index.
    pub fn check_applied_agree(&self) {
        let logs: Vec<Vec<Entry>> =
            self.recorders.values().map(|r| r.applied.lock().unwrap().clone()).collect();
        for a in &logs {
            for b in &logs {
                for (x, y) in a.iter().zip(b.iter()) {
                    assert_eq!(x, y, "two nodes applied different entries at index {}", x.index);
                }
            }
        }
    }
}

/// Defines, for each async test function named (generic over the runtime), one test under
/// tokio, one under async-std and one under smol.
#[allow(unused_macros)]
macro_rules! under_runtimes {
    ($($name:ident),* $(,)?) => {
        mod tokio_rt {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let rt = raft_core::runtime::TokioRuntime::current().unwrap();
                    super::$name(rt).await;
                }
            )*
        }
        mod async_std_rt {
            $(
                #[test]
                fn $name() {
                    async_std::task::block_on(super::$name(raft_core::runtime::AsyncStdRuntime));
                }
            )*
        }
        mod smol_rt {
            $(
                #[test]
                fn $name() {
                    smol::block_on(super::$name(raft_core::runtime::SmolRuntime));
                }
            )*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use under_runtimes;

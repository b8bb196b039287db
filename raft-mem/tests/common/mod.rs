//! Setup shared by the tests of real nodes on the in-memory backends: `raft_mem::harness`'s
//! `Cluster` on `MemNetwork` and `MemLogStore` (a store per node that survives its restarts),
//! nodes running a `RecordingStateMachine`, and the checks these tests make of it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raft_core::{Entry, NodeId, Runtime, Status};
use raft_mem::harness::{Cluster, RecordingStateMachine};
use raft_mem::{MemLogStore, MemNetwork};

/// A generous bound used only to turn a hang into a failure, never to measure speed.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Short timeouts keep the tests quick; they are still many ticks long.
#[allow(unused_imports)]
pub use raft_mem::harness::test_config as config;

/// A cluster of real nodes on the in-memory network and log stores.
pub type MemCluster<R> = Cluster<R, MemNetwork, MemLogStore, RecordingStateMachine>;

/// The nodes' log stores (each node's survives its restarts), shared with the cluster.
#[derive(Clone, Default)]
pub struct Stores(Arc<Mutex<BTreeMap<NodeId, MemLogStore>>>);

impl Stores {
    /// Node `id`'s store, created empty on first use.
    pub fn get(&self, id: NodeId) -> MemLogStore {
        self.0.lock().unwrap().entry(id).or_default().clone()
    }
}

/// Starts `n` founding voters on `runtime`; returns the cluster and the nodes' stores. Nodes
/// started later (with `Cluster::start`) join with an empty store.
pub async fn start<R: Runtime + Clone>(n: u64, runtime: R) -> (MemCluster<R>, Stores) {
    let stores = Stores::default();
    let factory = stores.clone();
    let mut cluster = Cluster::builder(
        runtime,
        MemNetwork::new(),
        1..=n,
        move |id| Ok(factory.get(id)),
        |_id| RecordingStateMachine::new(),
    )
    .patience(PATIENCE)
    .build();
    cluster.start_all().await.unwrap();
    (cluster, stores)
}

/// The statuses of the running nodes that the network has not disconnected.
pub fn connected_statuses<R: Runtime + Clone>(cluster: &MemCluster<R>) -> Vec<Status> {
    let network = cluster.transport();
    cluster
        .running()
        .into_iter()
        .filter(|&id| !network.is_disconnected(id))
        .filter_map(|id| cluster.node(id).map(raft_core::Node::status))
        .collect()
}

/// Waits until exactly one connected node leads and every connected node follows it in its
/// term (a disconnected node may still believe it leads); returns it.
pub async fn wait_for_leader<R: Runtime + Clone>(cluster: &MemCluster<R>) -> NodeId {
    let network = cluster.transport();
    cluster.leader_among(|id| !network.is_disconnected(id)).await.unwrap()
}

/// Proposes `data` on the leader among the connected nodes until one commits and applies it;
/// returns its index and the state machine's response.
pub async fn write<R: Runtime + Clone>(
    cluster: &MemCluster<R>,
    data: &[u8],
) -> (u64, raft_core::Bytes) {
    let data = raft_core::Bytes::copy_from_slice(data);
    cluster
        .within("a write", async {
            loop {
                let leader = wait_for_leader(cluster).await;
                match cluster.running_node(leader).unwrap().propose(data.clone()).await {
                    Ok(proposal) => {
                        let index = proposal.index;
                        if let Ok(response) = proposal.response().await {
                            return (index, response);
                        }
                    }
                    Err(raft_core::ProposeError::NotLeader { .. }) => {}
                    Err(e) => panic!("propose failed: {e}"),
                }
                cluster.runtime().sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap()
}

/// Waits until each of `nodes` applied `index`.
pub async fn wait_applied<R: Runtime + Clone>(
    cluster: &MemCluster<R>,
    nodes: &[NodeId],
    index: u64,
) {
    for &id in nodes {
        cluster.wait_applied_on(id, index).await.unwrap();
    }
}

/// What node `id`'s state machine applied since its latest start: applies come in order
/// without gaps.
pub fn applied_entries<R: Runtime + Clone>(cluster: &MemCluster<R>, id: NodeId) -> Vec<Entry> {
    in_order(cluster.state_machine(id).map(RecordingStateMachine::entries).unwrap_or_default())
}

/// The entries a `RecordingStateMachine` applied, checked to come in order without gaps.
pub fn in_order(entries: Vec<Entry>) -> Vec<Entry> {
    for pair in entries.windows(2) {
        assert_eq!(pair[1].index, pair[0].index + 1, "applies happen in order without gaps");
    }
    entries
}

/// The commands node `id` applied since its latest start, in order.
pub fn applied_commands<R: Runtime + Clone>(
    cluster: &MemCluster<R>,
    id: NodeId,
) -> Vec<raft_core::Bytes> {
    applied_entries(cluster, id).iter().filter_map(|e| e.command().cloned()).collect()
}

/// State Machine Safety across nodes: no two nodes applied different entries at one index.
pub fn check_applied_agree<R: Runtime + Clone>(cluster: &MemCluster<R>) {
    let logs: Vec<Vec<Entry>> =
        cluster.running().into_iter().map(|id| applied_entries(cluster, id)).collect();
    for a in &logs {
        for b in &logs {
            for (x, y) in a.iter().zip(b.iter()) {
                assert_eq!(x, y, "two nodes applied different entries at index {}", x.index);
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

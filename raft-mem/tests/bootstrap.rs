//! Explicit, one-time bootstrap (`NodeBuilder::bootstrap`): a node on empty stores founds a
//! cluster only when told to, a bootstrapped node refuses a second bootstrap, and one founder is
//! enough to start a cluster of several voters.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use raft_core::runtime::TokioRuntime;
use raft_core::{
    BootstrapError, EntryPayload, HardState, LogStore, Membership, Node, NodeId, Role, StartError,
    WriteBatch,
};
use raft_mem::{MemLogStore, MemNetwork};

use common::{config, in_order, PATIENCE};
use raft_mem::harness::RecordingStateMachine;

fn runtime() -> TokioRuntime {
    TokioRuntime::current().unwrap()
}

/// Starts node `id` on `store`, bootstrapping with `bootstrap` if given.
async fn start(
    network: &MemNetwork,
    id: NodeId,
    store: &MemLogStore,
    bootstrap: Option<Membership>,
) -> Result<(Node, RecordingStateMachine), StartError> {
    let recorder = RecordingStateMachine::new();
    let builder =
        Node::builder(config(id), store.clone(), network.endpoint(id), recorder.clone(), runtime());
    let builder = match bootstrap {
        Some(membership) => builder.bootstrap(membership),
        None => builder,
    };
    let node = builder.start().await?;
    network.serve(id, Arc::new(node.clone()));
    Ok((node, recorder))
}

async fn wait_leader(node: &Node) {
    let mut watch = node.watch();
    tokio::time::timeout(PATIENCE, watch.wait_for(|s| s.role == Role::Leader)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_is_a_one_time_step() {
    let network = MemNetwork::new();
    let store = MemLogStore::new();
    let (node, recorder) =
        start(&network, 1, &store, Some(Membership::with_voters([1]))).await.unwrap();
    wait_leader(&node).await;
    let written = node.propose("x".into()).await.unwrap();
    tokio::time::timeout(PATIENCE, written.response()).await.unwrap().unwrap();
    let first = in_order(recorder.entries())[0].clone();
    assert_eq!((first.index, first.term), (1, 1), "the membership is the log's first entry");
    assert!(
        matches!(first.payload, EntryPayload::Membership(m) if m == Membership::with_voters([1]))
    );
    node.shutdown().await;
    network.stop_serving(1);

    // A second bootstrap is refused and writes nothing.
    let before = store.open().await.unwrap();
    let again = start(&network, 1, &store, Some(Membership::with_voters([1]))).await;
    assert!(matches!(again, Err(StartError::Bootstrap(BootstrapError::AlreadyInitialized))));
    assert_eq!(store.open().await.unwrap(), before);

    // A restart without it finds the membership in the log.
    let (node, _) = start(&network, 1, &store, None).await.unwrap();
    assert_eq!(node.membership(), Membership::with_voters([1]));
    wait_leader(&node).await;
    node.shutdown().await;
}

/// A node started on empty stores without `bootstrap` has no members and never campaigns,
/// however long it waits (the wait only gives a broken implementation time to campaign).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_bootstrap_waits_to_be_added() {
    let network = MemNetwork::new();
    let (node, _) = start(&network, 1, &MemLogStore::new(), None).await.unwrap();
    assert_eq!(node.membership(), Membership::default());
    // Five maximal election timeouts of the test configuration.
    tokio::time::sleep(Duration::from_millis(5 * 300)).await;
    let status = node.status();
    assert_eq!((status.role, status.current_term, status.leader_id), (Role::Follower, 0, None));
    assert_eq!(status.last_log_index, 0);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_refuses_used_stores_and_foreign_memberships() {
    let network = MemNetwork::new();
    // A node that voted (term 3) but holds no membership: it took part in some cluster.
    let store = MemLogStore::new();
    let hard_state = HardState { current_term: 3, voted_for: Some(2) };
    store
        .write(WriteBatch { hard_state: Some(hard_state), ..WriteBatch::default() })
        .await
        .unwrap();
    let used = start(&network, 1, &store, Some(Membership::with_voters([1]))).await;
    let expected = BootstrapError::NotEmpty { current_term: 3, last_index: 0 };
    assert!(matches!(used, Err(StartError::Bootstrap(e)) if e == expected));
    assert_eq!(store.open().await.unwrap().hard_state, hard_state, "nothing written");

    // A membership this node does not vote in.
    let store = MemLogStore::new();
    let foreign = start(&network, 1, &store, Some(Membership::with_voters([2, 3]))).await;
    assert!(matches!(foreign, Err(StartError::Bootstrap(BootstrapError::NotAVoter(1)))));
    assert_eq!(store.open().await.unwrap(), Default::default(), "nothing written");
}

/// One founder bootstraps a membership of three voters; the other two start empty and get the
/// membership from the first leader, like joining nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_founder_starts_a_cluster_of_three() {
    let network = MemNetwork::new();
    let voters = Membership::with_voters([1, 2, 3]);
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let bootstrap = (id == 1).then(|| voters.clone());
        nodes.push(start(&network, id, &MemLogStore::new(), bootstrap).await.unwrap());
    }
    let leader = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some((node, _)) = nodes.iter().find(|(n, _)| n.status().role == Role::Leader) {
                return node.clone();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    let written = leader.propose("x".into()).await.unwrap();
    let index = written.index;
    tokio::time::timeout(PATIENCE, written.response()).await.unwrap().unwrap();
    for (node, _) in &nodes {
        let mut watch = node.watch();
        tokio::time::timeout(PATIENCE, watch.wait_for(|s| s.applied_index >= index)).await.unwrap();
        assert_eq!(node.membership(), voters, "node {}", node.status().id);
    }
    for (node, _) in nodes {
        node.shutdown().await;
    }
}

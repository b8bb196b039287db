//! Test support: a one-voter kv node on an in-memory network.

use std::sync::Arc;
use std::time::Duration;

use raft_core::runtime::TokioRuntime;
use raft_core::{Config, Membership, Node, Role};
use raft_mem::{MemLogStore, MemNetwork};

use super::state_machine::KvStateMachine;

/// Node 1, the one voter of its group, on its own in-memory network, applying to `machine`;
/// returned once it leads. Panics (a test failure) if it does not within 30 s.
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) async fn one_voter_node(machine: KvStateMachine) -> Node {
    let runtime = TokioRuntime::current().expect("a tokio runtime");
    let network = MemNetwork::new();
    let builder =
        Node::builder(Config::new(1), MemLogStore::new(), network.endpoint(1), machine, runtime);
    let node = builder.bootstrap(Membership::with_voters([1])).start().await.unwrap();
    network.serve(1, Arc::new(node.clone()));
    let led = async {
        while node.status().role != Role::Leader {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), led).await.expect("node 1 leads");
    node
}

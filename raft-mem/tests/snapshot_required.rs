//! A node without a snapshot store cannot catch up with a leader that compacted its log: adding
//! it as a voter says so at once (`MembershipError::SnapshotRefused`) instead of waiting out the
//! catch-up timeout without a cause.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use raft_core::runtime::TokioRuntime;
use raft_core::{MembershipError, NodeInfo, SnapshotFailure};

use support::{within, Cluster, Machine, Recipe};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_node_without_snapshot_store_fails_with_the_cause() {
    let rt = TokioRuntime::current().unwrap();
    let compacting = Recipe {
        machine: Machine { takes_snapshots: true, ..Machine::default() },
        with_snapshots: true,
        configure: Some(|c: &mut raft_core::Config| {
            c.snapshot_interval_entries = 10;
            c.snapshot_keep_entries = 0;
        }),
    };
    let mut cluster = Cluster::start(rt.clone(), 1, |_| compacting.clone()).await;
    let leader = cluster.leader().await;
    for i in 0..25 {
        cluster.write_on(leader, &format!("w{i}")).await;
    }
    // Node 2 joins without a snapshot store; the entries it lacks are compacted away.
    cluster.add(2, &[], Recipe::default()).await;
    // A catch-up timeout far beyond the test's patience: only the refusal ends the call in time.
    let added = cluster.node(leader).add_voter(2, NodeInfo::default(), support::PATIENCE * 10);
    let refused = within(&rt, "add_voter", added).await;
    assert!(
        matches!(
            refused,
            Err(MembershipError::SnapshotRefused { id: 2, reason: SnapshotFailure::Unsupported })
        ),
        "{refused:?}"
    );
    assert!(cluster.node(leader).membership().is_learner(2), "it stays a learner");
    cluster.shutdown().await;
}

/// A transport that carries requests of at most `limit` bytes.
struct Limited(raft_mem::MemEndpoint, u64);

#[async_trait::async_trait]
impl raft_core::Network for Limited {
    async fn send(
        &self,
        request: raft_core::Envelope,
    ) -> Result<raft_core::RpcResponse, raft_core::NetworkError> {
        raft_core::Network::send(&self.0, request).await
    }

    fn max_request_bytes(&self) -> Option<u64> {
        Some(self.1)
    }
}

/// A snapshot chunk that cannot fit the transport's frames is refused when the node starts, not
/// when the first transfer fails.
#[tokio::test]
async fn a_chunk_larger_than_the_transport_carries_is_refused_at_start() {
    let start = |chunk_bytes: u64, limit: u64| async move {
        let network = raft_mem::MemNetwork::new();
        let mut config = support::config(1);
        config.snapshot_chunk_bytes = chunk_bytes;
        let rt = TokioRuntime::current().unwrap();
        let limited = Limited(network.endpoint(1), limit);
        let store = raft_mem::MemLogStore::new();
        let started = raft_core::Node::builder(config, store, limited, Machine::default(), rt)
            .snapshot_store(raft_mem::MemSnapshotStore::new())
            .start()
            .await;
        match started {
            Ok(node) => {
                node.shutdown().await;
                Ok(())
            }
            Err(error) => Err(error),
        }
    };
    let overhead = raft_core::config::REQUEST_OVERHEAD_BYTES;
    let refused = start(4 << 20, 4 << 20).await;
    assert!(
        matches!(
            refused,
            Err(raft_core::StartError::ExceedsTransport { setting: "snapshot_chunk_bytes", .. })
        ),
        "{refused:?}"
    );
    start(1 << 20, (1 << 20) + overhead).await.unwrap();
}

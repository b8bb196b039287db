//! Back-pressure: a stalled state machine must make proposers wait instead of letting memory
//! grow. The assertions are bounds that must hold at every moment; the pauses only give a
//! broken implementation the chance to exceed them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use raft_core::runtime::TokioRuntime;
use raft_core::{Bytes, Config, Entry, Membership, Node, Role, StateMachine, StateMachineError};
use raft_mem::{MemLogStore, MemNetwork};

/// Applies nothing until the gate opens.
struct Gated {
    gate: async_channel::Receiver<()>,
}

#[async_trait]
impl StateMachine for Gated {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        if self.gate.recv().await.is_err() {
            // Gate dropped: the test is over; keep answering.
        }
        Ok(vec![Bytes::new(); entries.len()])
    }
}

async fn single_node(config: Config) -> (Node, async_channel::Sender<()>) {
    let (open, gate) = async_channel::unbounded();
    let network = MemNetwork::new();
    let node = Node::builder(
        config,
        MemLogStore::new(),
        network.endpoint(1),
        Gated { gate },
        TokioRuntime::current().unwrap(),
    )
    .bootstrap(Membership::with_voters([1]))
    .start()
    .await
    .unwrap();
    network.serve(1, Arc::new(node.clone()));
    let mut watch = node.watch();
    tokio::time::timeout(Duration::from_secs(20), watch.wait_for(|s| s.role == Role::Leader))
        .await
        .unwrap();
    (node, open)
}

async fn accepted_while_stalled(
    node: &Node,
    proposals: usize,
) -> (Arc<AtomicUsize>, Vec<tokio::task::JoinHandle<()>>) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..proposals {
        let (node, accepted) = (node.clone(), accepted.clone());
        tasks.push(tokio::spawn(async move {
            let proposal = node.propose(Bytes::from(format!("p{i}"))).await.unwrap();
            accepted.fetch_add(1, Ordering::SeqCst);
            proposal.response().await.unwrap();
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    (accepted, tasks)
}

fn config() -> Config {
    let mut config = Config::new(1);
    config.tick_interval = Duration::from_millis(5);
    config.heartbeat_interval = Duration::from_millis(25);
    config.election_timeout_min = Duration::from_millis(100);
    config.election_timeout_max = Duration::from_millis(200);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unapplied_backlog_makes_proposers_wait() {
    let mut config = config();
    config.max_unapplied_entries = 8;
    let (node, open) = single_node(config).await;
    let (accepted, tasks) = accepted_while_stalled(&node, 40).await;
    let while_stalled = accepted.load(Ordering::SeqCst);
    assert!(
        while_stalled <= 8,
        "{while_stalled} proposals accepted with 8 entries allowed unapplied"
    );
    assert!(node.status().last_log_index <= 8, "the log grew past the backlog bound");
    // Unblock: every proposal completes.
    for _ in 0..100 {
        let _ = open.try_send(());
    }
    drop(open);
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(20), task).await.unwrap().unwrap();
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 40);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_proposal_slots_make_proposers_wait() {
    let mut config = config();
    config.max_pending_proposals = 5;
    let (node, open) = single_node(config).await;
    let (accepted, tasks) = accepted_while_stalled(&node, 30).await;
    let while_stalled = accepted.load(Ordering::SeqCst);
    assert!(while_stalled <= 5, "{while_stalled} proposals pending with 5 slots");
    drop(open);
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(20), task).await.unwrap().unwrap();
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 30);
    node.shutdown().await;
}

//! `Node::write` (propose and wait for the response in one call) on real nodes: responses,
//! order, refusals and the outcome when the node stops, mixed with `propose` callers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{applied_commands, check_applied_agree, start, wait_applied, wait_for_leader};
use raft_core::{Bytes, CommitError, ProposeError, Runtime, WriteError};

/// Concurrent writes and proposals on the leader all get their own response, and every node
/// applies all of them.
async fn concurrent_writes_get_their_responses<R: Runtime + Clone>(rt: R) {
    let (mut cluster, _) = start(3, rt).await;
    let leader = wait_for_leader(&cluster).await;
    let node = cluster.node(leader).unwrap().clone();
    let writes = futures::future::join_all((0..300u32).map(|i| {
        let node = node.clone();
        async move {
            let command = Bytes::from(format!("w{i}"));
            let response = if i % 3 == 0 {
                // Interleaved with the two-step API: both kinds of waiters share a step.
                node.propose(command.clone()).await.unwrap().response().await.unwrap()
            } else {
                node.write(command.clone()).await.unwrap()
            };
            assert_eq!(response, command, "each caller gets the response to its own command");
        }
    }));
    cluster.within("300 writes", writes).await.unwrap();
    let last = node.status().last_log_index;
    wait_applied(&cluster, &cluster.running(), last).await;
    let mut applied: Vec<Bytes> = applied_commands(&cluster, leader);
    applied.sort();
    let mut expected: Vec<Bytes> = (0..300u32).map(|i| Bytes::from(format!("w{i}"))).collect();
    expected.sort();
    assert_eq!(applied, expected, "every write applied exactly once");
    check_applied_agree(&cluster);
    cluster.stop_all().await.unwrap();
}

/// `write` refuses what `propose` refuses, with the same error: on a follower (with the
/// leader's id), and on the leader for a command over the size limit.
async fn writes_are_refused_like_proposals<R: Runtime + Clone>(rt: R) {
    let (mut cluster, _) = start(3, rt).await;
    let leader = wait_for_leader(&cluster).await;
    let follower = cluster.voters().iter().copied().find(|&id| id != leader).unwrap();
    let big = Bytes::from(vec![0u8; 2 << 20]);
    for (node, command) in [(follower, Bytes::from_static(b"x")), (leader, big)] {
        let node = cluster.node(node).unwrap();
        let refused = node.propose(command.clone()).await.map(|p| p.index).unwrap_err();
        assert!(matches!(refused, ProposeError::NotLeader { .. } | ProposeError::TooLarge { .. }));
        assert_eq!(node.write(command).await, Err(WriteError::Refused(refused)));
    }
    cluster.stop_all().await.unwrap();
}

/// A write that cannot commit (the followers are cut off) fails when its node stops, with an
/// unknown outcome (the entry was appended); a write after the stop is refused with `Shutdown`.
async fn a_pending_write_fails_at_shutdown<R: Runtime + Clone>(rt: R) {
    let (mut cluster, _) = start(3, rt.clone()).await;
    let leader = wait_for_leader(&cluster).await;
    let node = cluster.node(leader).unwrap().clone();
    for id in cluster.voters().iter().copied().filter(|&id| id != leader) {
        cluster.transport().disconnect(id);
    }
    let before = node.status().last_log_index;
    let pending = {
        let node = node.clone();
        async move { node.write(Bytes::from_static(b"pending")).await }
    };
    let stop = async {
        // Let the write reach the node (and its entry the log) before stopping it.
        let mut watch = node.watch();
        cluster.within("appended", watch.wait_for(|s| s.last_log_index > before)).await.unwrap();
        rt.sleep(Duration::from_millis(10)).await;
        node.shutdown().await;
    };
    let (outcome, ()) =
        cluster.within("shutdown", futures::future::join(pending, stop)).await.unwrap();
    assert_eq!(outcome, Err(WriteError::Failed(CommitError::Shutdown)));
    // A stopped node says so (not "not the leader, leader unknown").
    let after = node.write(Bytes::from_static(b"x")).await;
    assert_eq!(after, Err(WriteError::Refused(ProposeError::Shutdown)));
    let after = node.propose(Bytes::from_static(b"x")).await.map(|p| p.index);
    assert_eq!(after, Err(ProposeError::Shutdown));
    cluster.stop_all().await.unwrap();
}

macro_rules! under_runtimes {
    ($($name:ident),* $(,)?) => {
        mod tokio_rt {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(raft_core::runtime::TokioRuntime::current().unwrap()).await;
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

under_runtimes!(
    concurrent_writes_get_their_responses,
    writes_are_refused_like_proposals,
    a_pending_write_fails_at_shutdown,
);

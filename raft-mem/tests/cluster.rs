//! Scenario tests of real nodes on the in-memory backends, under tokio, smol and async-std.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::Cluster;
use raft_core::{Bytes, MembershipChange, NodeInfo, ProposeError, Role, Runtime};

async fn one_leader_is_elected<R: Runtime + Clone>(rt: R) {
    for n in [3, 5] {
        let cluster = Cluster::start(n, rt.clone()).await;
        let leader = cluster.wait_for_leader().await;
        let term = cluster.nodes[&leader].status().current_term;
        // Without faults the leader keeps its term.
        cluster.sleep(Duration::from_millis(600)).await;
        assert_eq!(cluster.wait_for_leader().await, leader);
        assert_eq!(cluster.nodes[&leader].status().current_term, term);
        cluster.shutdown().await;
    }
}

async fn proposals_replicate_and_apply_in_order<R: Runtime + Clone>(rt: R) {
    let cluster = Cluster::start(3, rt).await;
    let mut last = 0;
    for i in 0..50u32 {
        let (index, response) = cluster.write(format!("cmd-{i}").as_bytes()).await;
        assert_eq!(
            response,
            Bytes::from(format!("cmd-{i}")),
            "the state machine's response comes back"
        );
        assert!(index > last, "indexes grow");
        last = index;
    }
    cluster.wait_applied(&cluster.ids, last).await;
    let expected: Vec<Bytes> = (0..50).map(|i| Bytes::from(format!("cmd-{i}"))).collect();
    for &id in &cluster.ids {
        assert_eq!(
            cluster.applied_commands(id),
            expected,
            "node {id} applied every command in order"
        );
    }
    cluster.check_applied_agree();
    cluster.shutdown().await;
}

async fn concurrent_proposals_all_commit<R: Runtime + Clone>(rt: R) {
    let cluster = Cluster::start(3, rt).await;
    let leader = cluster.wait_for_leader().await;
    let node = cluster.nodes[&leader].clone();
    let proposals = futures::future::join_all((0..200u32).map(|i| {
        let node = node.clone();
        async move {
            node.propose(Bytes::from(i.to_be_bytes().to_vec()))
                .await
                .unwrap()
                .response()
                .await
                .unwrap()
        }
    }));
    let responses = cluster.within("200 concurrent proposals", proposals).await;
    assert_eq!(responses.len(), 200);
    let last = node.status().last_log_index;
    cluster.wait_applied(&cluster.ids, last).await;
    cluster.check_applied_agree();
    cluster.shutdown().await;
}

async fn new_leader_after_leader_disconnects<R: Runtime + Clone>(rt: R) {
    let cluster = Cluster::start(3, rt).await;
    let old = cluster.wait_for_leader().await;
    cluster.write(b"before").await;
    cluster.network.disconnect(old);
    let new = cluster.wait_for_leader().await;
    assert_ne!(new, old);
    cluster.write(b"after").await;
    // The old leader steps down (CheckQuorum) and, reconnected, follows the new one.
    let mut watch = cluster.nodes[&old].watch();
    cluster.within("old leader steps down", watch.wait_for(|s| s.role != Role::Leader)).await;
    cluster.network.reconnect(old);
    let (index, _) = cluster.write(b"healed").await;
    cluster.wait_applied(&cluster.ids, index).await;
    let expected: Vec<Bytes> =
        ["before", "after", "healed"].iter().map(|s| Bytes::from(*s)).collect();
    assert_eq!(cluster.applied_commands(old), expected);
    cluster.check_applied_agree();
    cluster.shutdown().await;
}

async fn minority_cannot_commit<R: Runtime + Clone>(rt: R) {
    let cluster = Cluster::start(5, rt).await;
    let leader = cluster.wait_for_leader().await;
    let (committed, _) = cluster.write(b"ok").await;
    let others: Vec<u64> = cluster.ids.iter().copied().filter(|&id| id != leader).take(3).collect();
    for &id in &others {
        cluster.network.disconnect(id);
    }
    let proposal = cluster.nodes[&leader].propose(Bytes::from_static(b"lost")).await;
    // Whatever happens on the minority side, nothing after `committed` commits there.
    cluster.sleep(Duration::from_millis(500)).await;
    let minority: Vec<u64> =
        cluster.ids.iter().copied().filter(|id| !others.contains(id)).collect();
    for id in &minority {
        assert_eq!(
            cluster.nodes[id].status().commit_index,
            committed,
            "node {id} committed without a majority"
        );
    }
    if let Ok(proposal) = proposal {
        use futures::FutureExt;
        assert!(proposal.response().now_or_never().is_none_or(|r| r.is_err()));
    }
    for &id in &others {
        cluster.network.reconnect(id);
    }
    let (index, _) = cluster.write(b"after heal").await;
    assert!(index > committed);
    cluster.wait_applied(&cluster.ids, index).await;
    cluster.check_applied_agree();
    cluster.shutdown().await;
}

async fn restarted_node_keeps_term_vote_and_log<R: Runtime + Clone>(rt: R) {
    let mut cluster = Cluster::start(3, rt).await;
    let leader = cluster.wait_for_leader().await;
    let (index, _) = cluster.write(b"durable").await;
    let follower = cluster.ids.iter().copied().find(|&id| id != leader).unwrap();
    cluster.wait_applied(&[follower], index).await;
    let hard_state = cluster.stores[&follower].hard_state();
    let log = cluster.stores[&follower].entries();
    cluster.restart(follower).await;
    let status = cluster.nodes[&follower].status();
    assert!(status.current_term >= hard_state.current_term, "term survives a restart");
    assert!(status.last_log_index >= index, "log survives a restart");
    let after = cluster.stores[&follower].hard_state();
    if after.current_term == hard_state.current_term {
        assert_eq!(after.voted_for, hard_state.voted_for, "never votes twice in one term");
    }
    assert_eq!(&cluster.stores[&follower].entries()[..log.len()], &log[..]);
    let (next, _) = cluster.write(b"after restart").await;
    cluster.wait_applied(&cluster.ids, next).await;
    assert_eq!(
        cluster.applied_commands(follower),
        vec![Bytes::from_static(b"durable"), Bytes::from_static(b"after restart")]
    );
    cluster.shutdown().await;
}

async fn whole_cluster_restart_recovers_every_committed_entry<R: Runtime + Clone>(rt: R) {
    let mut cluster = Cluster::start(5, rt).await;
    let mut expected = Vec::new();
    for i in 0..30u32 {
        let data = format!("entry-{i}");
        cluster.write(data.as_bytes()).await;
        expected.push(Bytes::from(data));
    }
    for id in cluster.ids.clone() {
        cluster.crash(id).await;
    }
    for id in cluster.ids.clone() {
        cluster.boot(id).await;
    }
    let (index, _) = cluster.write(b"after").await;
    expected.push(Bytes::from_static(b"after"));
    cluster.wait_applied(&cluster.ids, index).await;
    for &id in &cluster.ids {
        assert_eq!(
            cluster.applied_commands(id),
            expected,
            "node {id} recovered every committed entry"
        );
    }
    cluster.shutdown().await;
}

async fn proposals_on_a_follower_fail_at_once<R: Runtime + Clone>(rt: R) {
    let cluster = Cluster::start(3, rt).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.ids.iter().copied().find(|&id| id != leader).unwrap();
    let error = cluster.nodes[&follower].propose(Bytes::from_static(b"x")).await.unwrap_err();
    // The bootstrap membership gives no metadata: the leader's is empty, but known.
    let leader_info = Some(NodeInfo::default());
    assert_eq!(error, ProposeError::NotLeader { leader_id: Some(leader), leader_info });
    let big = Bytes::from(vec![0u8; 2 << 20]);
    assert!(matches!(
        cluster.nodes[&leader].propose(big).await,
        Err(ProposeError::TooLarge { .. })
    ));
    cluster.shutdown().await;
}

async fn shutdown_stops_and_fails_pending<R: Runtime + Clone>(rt: R) {
    let cluster = Cluster::start(3, rt).await;
    let leader = cluster.wait_for_leader().await;
    let node = cluster.nodes[&leader].clone();
    for id in cluster.ids.iter().copied().filter(|&id| id != leader) {
        cluster.network.disconnect(id);
    }
    let proposal = node.propose(Bytes::from_static(b"pending")).await.unwrap();
    cluster.within("shutdown", node.shutdown()).await;
    assert!(proposal.response().await.is_err(), "a pending proposal fails at shutdown");
    assert!(matches!(
        node.propose(Bytes::from_static(b"x")).await,
        Err(ProposeError::NotLeader { .. } | ProposeError::Shutdown)
    ));
    let mut watch = node.watch();
    assert!(
        cluster.within("watch closes", watch.changed()).await.is_none()
            || node.status().role != Role::Leader
    );
    cluster.within("second shutdown", node.shutdown()).await;
    cluster.shutdown().await;
}

/// Replaces a node in a running cluster: a joining node is added as a voter, serves a
/// ReadIndex read as a follower, takes over leadership by transfer, and the old leader is
/// removed; then many concurrent reads on the new leader all see the last write.
async fn a_node_is_replaced_and_serves_reads<R: Runtime + Clone>(rt: R) {
    let mut cluster = Cluster::start(3, rt).await;
    let old = cluster.wait_for_leader().await;
    let mut last = 0;
    for i in 0..5u32 {
        last = cluster.write(format!("before-{i}").as_bytes()).await.0;
    }
    cluster.boot_joining(4).await;
    let added = cluster.nodes[&old].add_voter(4, NodeInfo::default(), Duration::from_secs(10));
    let membership = cluster.within("add_voter", added).await.unwrap();
    assert_eq!(membership.voters(), &[1, 2, 3, 4].into());
    let replication = cluster.nodes[&old].replication().await;
    let new = replication.iter().find(|p| p.id == 4).expect("the leader replicates to node 4");
    assert!(new.voter && new.in_sync && new.match_index >= last, "{new:?}");
    assert_eq!(replication.len(), 3, "one entry per other member");
    let index = cluster.within("a follower read", cluster.nodes[&4].read_index()).await.unwrap();
    assert!(index >= last);
    assert_eq!(cluster.applied_commands(4).len(), 5, "the read saw every write");

    cluster.within("a transfer", cluster.nodes[&old].transfer_leadership(4)).await.unwrap();
    assert_eq!(cluster.wait_for_leader().await, 4);
    let removed = cluster.nodes[&4].change_membership(MembershipChange::RemoveNode(old));
    assert!(!cluster.within("remove", removed).await.unwrap().voters().contains(&old));
    cluster.crash(old).await;
    cluster.ids.retain(|&id| id != old);
    last = cluster.write(b"after").await.0;
    let leader = cluster.nodes[&4].clone();
    let reads = futures::future::join_all((0..100).map(|_| leader.read_index()));
    for read in cluster.within("100 reads", reads).await {
        assert!(read.unwrap() >= last);
    }
    cluster.wait_applied(&cluster.ids, last).await;
    cluster.check_applied_agree();
    cluster.shutdown().await;
}

common::under_runtimes!(
    one_leader_is_elected,
    proposals_replicate_and_apply_in_order,
    concurrent_proposals_all_commit,
    new_leader_after_leader_disconnects,
    minority_cannot_commit,
    restarted_node_keeps_term_vote_and_log,
    whole_cluster_restart_recovers_every_committed_entry,
    proposals_on_a_follower_fail_at_once,
    shutdown_stops_and_fails_pending,
    a_node_is_replaced_and_serves_reads,
);

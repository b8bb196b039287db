//! Scenario tests of real nodes on the in-memory backends, under tokio, smol and async-std.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{applied_commands, check_applied_agree, start, wait_applied, wait_for_leader, write};
use raft_core::{Bytes, MembershipChange, NodeInfo, ProposeError, Role, Runtime};

async fn one_leader_is_elected<R: Runtime + Clone>(rt: R) {
    for n in [3, 5] {
        let (mut cluster, _) = start(n, rt.clone()).await;
        let leader = wait_for_leader(&cluster).await;
        let term = cluster.node(leader).unwrap().status().current_term;
        // Without faults the leader keeps its term.
        cluster.runtime().sleep(Duration::from_millis(600)).await;
        assert_eq!(wait_for_leader(&cluster).await, leader);
        assert_eq!(cluster.node(leader).unwrap().status().current_term, term);
        cluster.stop_all().await.unwrap();
    }
}

async fn proposals_replicate_and_apply_in_order<R: Runtime + Clone>(rt: R) {
    let (mut cluster, _) = start(3, rt).await;
    let mut last = 0;
    for i in 0..50u32 {
        let (index, response) = write(&cluster, format!("cmd-{i}").as_bytes()).await;
        assert_eq!(
            response,
            Bytes::from(format!("cmd-{i}")),
            "the state machine's response comes back"
        );
        assert!(index > last, "indexes grow");
        last = index;
    }
    wait_applied(&cluster, &cluster.running(), last).await;
    let expected: Vec<Bytes> = (0..50).map(|i| Bytes::from(format!("cmd-{i}"))).collect();
    for id in cluster.running() {
        assert_eq!(
            applied_commands(&cluster, id),
            expected,
            "node {id} applied every command in order"
        );
    }
    check_applied_agree(&cluster);
    cluster.stop_all().await.unwrap();
}

async fn concurrent_proposals_all_commit<R: Runtime + Clone>(rt: R) {
    let (mut cluster, _) = start(3, rt).await;
    let leader = wait_for_leader(&cluster).await;
    let node = cluster.node(leader).unwrap().clone();
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
    let responses = cluster.within("200 concurrent proposals", proposals).await.unwrap();
    assert_eq!(responses.len(), 200);
    let last = node.status().last_log_index;
    wait_applied(&cluster, &cluster.running(), last).await;
    check_applied_agree(&cluster);
    cluster.stop_all().await.unwrap();
}

async fn new_leader_after_leader_disconnects<R: Runtime + Clone>(rt: R) {
    let (mut cluster, _) = start(3, rt).await;
    let old = wait_for_leader(&cluster).await;
    write(&cluster, b"before").await;
    cluster.transport().disconnect(old);
    let new = wait_for_leader(&cluster).await;
    assert_ne!(new, old);
    write(&cluster, b"after").await;
    // The old leader steps down (CheckQuorum) and, reconnected, follows the new one.
    let mut watch = cluster.node(old).unwrap().watch();
    cluster
        .within("old leader steps down", watch.wait_for(|s| s.role != Role::Leader))
        .await
        .unwrap();
    cluster.transport().reconnect(old);
    let (index, _) = write(&cluster, b"healed").await;
    wait_applied(&cluster, &cluster.running(), index).await;
    let expected: Vec<Bytes> =
        ["before", "after", "healed"].iter().map(|s| Bytes::from(*s)).collect();
    assert_eq!(applied_commands(&cluster, old), expected);
    check_applied_agree(&cluster);
    cluster.stop_all().await.unwrap();
}

async fn minority_cannot_commit<R: Runtime + Clone>(rt: R) {
    let (mut cluster, _) = start(5, rt).await;
    let leader = wait_for_leader(&cluster).await;
    let (committed, _) = write(&cluster, b"ok").await;
    let others: Vec<u64> =
        cluster.voters().iter().copied().filter(|&id| id != leader).take(3).collect();
    for &id in &others {
        cluster.transport().disconnect(id);
    }
    let proposal = cluster.node(leader).unwrap().propose(Bytes::from_static(b"lost")).await;
    // Whatever happens on the minority side, nothing after `committed` commits there.
    cluster.runtime().sleep(Duration::from_millis(500)).await;
    let minority: Vec<u64> =
        cluster.voters().iter().copied().filter(|id| !others.contains(id)).collect();
    for id in &minority {
        assert_eq!(
            cluster.node(*id).unwrap().status().commit_index,
            committed,
            "node {id} committed without a majority"
        );
    }
    if let Ok(proposal) = proposal {
        use futures::FutureExt;
        assert!(proposal.response().now_or_never().is_none_or(|r| r.is_err()));
    }
    for &id in &others {
        cluster.transport().reconnect(id);
    }
    let (index, _) = write(&cluster, b"after heal").await;
    assert!(index > committed);
    wait_applied(&cluster, &cluster.running(), index).await;
    check_applied_agree(&cluster);
    cluster.stop_all().await.unwrap();
}

async fn restarted_node_keeps_term_vote_and_log<R: Runtime + Clone>(rt: R) {
    let (mut cluster, stores) = start(3, rt).await;
    let leader = wait_for_leader(&cluster).await;
    let (index, _) = write(&cluster, b"durable").await;
    let follower = cluster.voters().iter().copied().find(|&id| id != leader).unwrap();
    wait_applied(&cluster, &[follower], index).await;
    let hard_state = stores.get(follower).hard_state();
    let log = stores.get(follower).entries();
    cluster.restart(follower).await.unwrap();
    let status = cluster.node(follower).unwrap().status();
    assert!(status.current_term >= hard_state.current_term, "term survives a restart");
    assert!(status.last_log_index >= index, "log survives a restart");
    let after = stores.get(follower).hard_state();
    if after.current_term == hard_state.current_term {
        assert_eq!(after.voted_for, hard_state.voted_for, "never votes twice in one term");
    }
    assert_eq!(&stores.get(follower).entries()[..log.len()], &log[..]);
    let (next, _) = write(&cluster, b"after restart").await;
    wait_applied(&cluster, &cluster.running(), next).await;
    assert_eq!(
        applied_commands(&cluster, follower),
        vec![Bytes::from_static(b"durable"), Bytes::from_static(b"after restart")]
    );
    cluster.stop_all().await.unwrap();
}

async fn whole_cluster_restart_recovers_every_committed_entry<R: Runtime + Clone>(rt: R) {
    let (mut cluster, _) = start(5, rt).await;
    let mut expected = Vec::new();
    for i in 0..30u32 {
        let data = format!("entry-{i}");
        write(&cluster, data.as_bytes()).await;
        expected.push(Bytes::from(data));
    }
    for id in cluster.voters().to_vec() {
        cluster.stop(id).await.unwrap();
    }
    for id in cluster.voters().to_vec() {
        cluster.start(id).await.unwrap();
    }
    let (index, _) = write(&cluster, b"after").await;
    expected.push(Bytes::from_static(b"after"));
    wait_applied(&cluster, &cluster.running(), index).await;
    for id in cluster.running() {
        assert_eq!(
            applied_commands(&cluster, id),
            expected,
            "node {id} recovered every committed entry"
        );
    }
    cluster.stop_all().await.unwrap();
}

async fn proposals_on_a_follower_fail_at_once<R: Runtime + Clone>(rt: R) {
    let (mut cluster, _) = start(3, rt).await;
    let leader = wait_for_leader(&cluster).await;
    let follower = cluster.voters().iter().copied().find(|&id| id != leader).unwrap();
    let error =
        cluster.node(follower).unwrap().propose(Bytes::from_static(b"x")).await.unwrap_err();
    // The bootstrap membership gives no metadata: the leader's is empty, but known.
    let leader_info = Some(NodeInfo::default());
    assert_eq!(error, ProposeError::NotLeader { leader_id: Some(leader), leader_info });
    let big = Bytes::from(vec![0u8; 2 << 20]);
    assert!(matches!(
        cluster.node(leader).unwrap().propose(big).await,
        Err(ProposeError::TooLarge { .. })
    ));
    cluster.stop_all().await.unwrap();
}

async fn shutdown_stops_and_fails_pending<R: Runtime + Clone>(rt: R) {
    let (mut cluster, _) = start(3, rt).await;
    let leader = wait_for_leader(&cluster).await;
    let node = cluster.node(leader).unwrap().clone();
    for id in cluster.voters().iter().copied().filter(|&id| id != leader) {
        cluster.transport().disconnect(id);
    }
    let proposal = node.propose(Bytes::from_static(b"pending")).await.unwrap();
    cluster.within("shutdown", node.shutdown()).await.unwrap();
    assert!(proposal.response().await.is_err(), "a pending proposal fails at shutdown");
    assert!(matches!(
        node.propose(Bytes::from_static(b"x")).await,
        Err(ProposeError::NotLeader { .. } | ProposeError::Shutdown)
    ));
    let mut watch = node.watch();
    assert!(
        cluster.within("watch closes", watch.changed()).await.unwrap().is_none()
            || node.status().role != Role::Leader
    );
    cluster.within("second shutdown", node.shutdown()).await.unwrap();
    cluster.stop_all().await.unwrap();
}

/// Replaces a node in a running cluster: a joining node is added as a voter, serves a
/// ReadIndex read as a follower, takes over leadership by transfer, and the old leader is
/// removed; then many concurrent reads on the new leader all see the last write.
async fn a_node_is_replaced_and_serves_reads<R: Runtime + Clone>(rt: R) {
    let (mut cluster, _) = start(3, rt).await;
    let old = wait_for_leader(&cluster).await;
    let mut last = 0;
    for i in 0..5u32 {
        last = write(&cluster, format!("before-{i}").as_bytes()).await.0;
    }
    cluster.start(4).await.unwrap();
    let added =
        cluster.node(old).unwrap().add_voter(4, NodeInfo::default(), Duration::from_secs(10));
    let membership = cluster.within("add_voter", added).await.unwrap().unwrap();
    assert_eq!(membership.voters(), &[1, 2, 3, 4].into());
    let replication = cluster.node(old).unwrap().replication().await;
    let new = replication.iter().find(|p| p.id == 4).expect("the leader replicates to node 4");
    assert!(new.voter && new.in_sync && new.match_index >= last, "{new:?}");
    assert_eq!(replication.len(), 3, "one entry per other member");
    let index = cluster
        .within("a follower read", cluster.node(4).unwrap().read_index())
        .await
        .unwrap()
        .unwrap();
    assert!(index >= last);
    assert_eq!(applied_commands(&cluster, 4).len(), 5, "the read saw every write");

    cluster
        .within("a transfer", cluster.node(old).unwrap().transfer_leadership(4))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(wait_for_leader(&cluster).await, 4);
    let removed = cluster.node(4).unwrap().change_membership(MembershipChange::RemoveNode(old));
    assert!(!cluster.within("remove", removed).await.unwrap().unwrap().voters().contains(&old));
    cluster.stop(old).await.unwrap();
    last = write(&cluster, b"after").await.0;
    let leader = cluster.node(4).unwrap().clone();
    let reads = futures::future::join_all((0..100).map(|_| leader.read_index()));
    for read in cluster.within("100 reads", reads).await.unwrap() {
        assert!(read.unwrap() >= last);
    }
    wait_applied(&cluster, &cluster.running(), last).await;
    check_applied_agree(&cluster);
    cluster.stop_all().await.unwrap();
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

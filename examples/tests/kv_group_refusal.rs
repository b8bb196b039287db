//! The per-(node, group) refusal of a sharded kv service, end to end over QUIC: real `kv-node`
//! processes (`--groups 2`), a node removed from one group only by a committed membership
//! change, and that node's still-valid certificate speaking Raft to a member. Its requests for
//! the group that removed it are refused (`RpcError::UnknownGroup`), and leave that group's term
//! alone; its requests for the group it still belongs to are served. Everything between the
//! wire and the refusal is `kv-node`'s own wiring (the network's handler, the firewall, the
//! removals reported by each group's state machine). Time limits only turn a hang into a
//! failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use examples::kv::cluster::{wait_for_group_leaders, ClusterSpec, Launcher, ProcessCluster};
use examples::kv::protocol::MemberRequest;
use examples::kv::{cluster_id, ClientOptions, Connections};
use raft_core::{
    AppendEntriesRequest, Envelope, GroupId, LogId, Network, NetworkError, NodeId, RefusalReason,
    RequestVoteRequest, RpcError, RpcRequest, RpcResponse, Term,
};
use raft_quic::{NodeTls, QuicConfig, QuicNetwork, QuinnTokioRuntime};

const PATIENCE: Duration = Duration::from_secs(30);
/// The node removed from group 0 (still a voter of group 1).
const REMOVED: NodeId = 3;
/// The member it speaks to.
const MEMBER: NodeId = 1;

/// Node `MEMBER`'s current term in `group`.
async fn term_of(connections: &Connections, group: GroupId) -> Term {
    let status = connections.status(MEMBER).await.unwrap();
    let group = status.groups.iter().find(|g| g.group == group).unwrap();
    group.status.current_term
}

/// A RequestVote and an AppendEntries of term `term` from `REMOVED` to `MEMBER`, as a
/// candidate and a leader of `group` would send them.
fn disruptive(group: GroupId, term: Term, cluster: u64) -> [Envelope; 2] {
    let vote = RpcRequest::RequestVote(RequestVoteRequest {
        term,
        candidate_id: REMOVED,
        last_log_id: LogId::new(term, u64::MAX / 2),
        pre_vote: false,
        leadership_transfer: false,
    });
    let append = RpcRequest::AppendEntries(AppendEntriesRequest {
        term,
        leader_id: REMOVED,
        prev_log_id: LogId::default(),
        entries: Vec::new(),
        leader_commit: 0,
        read_round: 0,
        quiesce: false,
    });
    [vote, append]
        .map(|request| Envelope::new(MEMBER, request).with_cluster_id(cluster).with_group_id(group))
}

fn is_refused_as_unknown(answer: &Result<RpcResponse, NetworkError>, group: GroupId) -> bool {
    matches!(
        answer,
        Err(NetworkError::Refused { reason: RefusalReason::Rpc(RpcError::UnknownGroup { group: g }), .. })
            if *g == group
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_removed_from_one_group_is_refused_there_over_quic_and_served_in_the_other() {
    let launcher = Launcher::program(env!("CARGO_BIN_EXE_kv-node"));
    let spec = ClusterSpec { nodes: 3, groups: 2, ..ClusterSpec::default() };
    let mut cluster = ProcessCluster::start(launcher, spec).unwrap();
    let connections = cluster.connections(ClientOptions::default()).unwrap();
    let ids = cluster.ids();
    let (leaders, led) =
        wait_for_group_leaders(&connections, &ids, PATIENCE, |l| l.len() == 2).await;
    assert!(led, "every group elects a leader: {leaders:?}");

    // A committed removal from group 0 only: node 3 stays a voter of group 1.
    let removal = MemberRequest::Remove { id: REMOVED };
    connections.member_request_in(Some(0), removal).await.unwrap();
    cluster.stop(REMOVED, Duration::from_secs(10)).unwrap();

    // Node 3's own certificate, on an endpoint of the test's: what a removed node keeps.
    let tls = NodeTls::load(cluster.certs_dir(), REMOVED).unwrap();
    let cluster_id = cluster_id::derive(&tls.trust_anchors).unwrap();
    let config = QuicConfig::new(REMOVED, "127.0.0.1:0".parse().unwrap(), tls);
    let network = QuicNetwork::bind(config, std::sync::Arc::new(QuinnTokioRuntime)).unwrap();
    network.set_peer(MEMBER, cluster.addrs(MEMBER).unwrap().raft);

    // Node 1 applies the removal when it commits (it may lag the leader): until then it may
    // still hear node 3 in group 0, so wait for the first refusal.
    let refused = async {
        loop {
            let term = term_of(&connections, 0).await;
            let [vote, _] = disruptive(0, term + 1, cluster_id);
            if is_refused_as_unknown(&network.send(vote).await, 0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let refused = tokio::time::timeout(PATIENCE, refused).await;
    assert!(refused.is_ok(), "node {MEMBER} never refused node {REMOVED} in group 0");

    // From then on: refused in group 0, whose term its requests leave alone (once group 0's
    // leadership settled among its voters: node 3 may have led it) ...
    let voters = [1, 2];
    let (leaders, led) =
        wait_for_group_leaders(&connections, &voters, PATIENCE, |l| l.contains_key(&0)).await;
    assert!(led, "group 0 elects a leader among its voters: {leaders:?}");
    // Its term stays put. An election of group 0's own voters on a loaded machine can move the
    // term too, so a moved term is tried again, up to three times: requests the node accepted
    // would move it every time, an unrelated election does not recur three times in a row.
    let mut terms = Vec::new();
    for _ in 0..3 {
        let term = term_of(&connections, 0).await;
        for request in disruptive(0, term + 1, cluster_id) {
            let answer = network.send(request).await;
            assert!(is_refused_as_unknown(&answer, 0), "group 0: {answer:?}");
        }
        let after = term_of(&connections, 0).await;
        terms.push((term, after));
        if after == term {
            break;
        }
    }
    assert!(
        terms.iter().any(|(before, after)| before == after),
        "the removed node moved group 0's term: {terms:?}"
    );
    // ... and served in group 1, where it is still a voter (its connection is not refused).
    let term = term_of(&connections, 1).await;
    let [vote, append] = disruptive(1, term + 1, cluster_id);
    let answer = network.send(vote).await;
    assert!(matches!(answer, Ok(RpcResponse::RequestVote(_))), "group 1: {answer:?}");
    let answer = network.send(append).await;
    assert!(matches!(answer, Ok(RpcResponse::AppendEntries(_))), "group 1: {answer:?}");
    assert!(term_of(&connections, 1).await > term, "group 1 heard its voter's later term");

    network.close().await;
    connections.close().await;
    let killed = cluster.stop_all(Duration::from_secs(10)).unwrap();
    assert!(killed.is_empty(), "nodes {killed:?} did not shut down cleanly");
}

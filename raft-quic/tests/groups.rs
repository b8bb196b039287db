//! Several Raft groups in one process over one `QuicNetwork` (issue 21.2): one endpoint and one
//! connection per peer process for all groups, each group's member addresses kept apart
//! (`QuicNetwork::for_group`), the same identity checks for every group.
//!
//! The handler each process serves is [`Router`], a stand-in for raft-core's multi-group host:
//! it hands each request to its group's handler by the envelope's group id.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::scenarios::{client_material, raw_endpoint};
use common::*;
use raft_core::{
    Bytes, Envelope, GroupId, Membership, Network, NetworkError, Node, NodeId, NodeInfo, RpcError,
    RpcHandler, RpcResponse,
};
use raft_mem::harness::RecordingStateMachine;
use raft_mem::MemLogStore;
use raft_quic::bounded::Limits;
use raft_quic::quinn::{self, Runtime, TokioRuntime};
use raft_quic::{frame, tls, ClusterCa, QuicGroupNetwork, QuicNetwork, WireResponse};

/// Routes each request to the handler of its envelope's group; a group it does not host is
/// refused. (Replaceable by raft-core's multi-group host.)
struct Router {
    groups: BTreeMap<GroupId, Arc<dyn RpcHandler>>,
}

#[async_trait]
impl RpcHandler for Router {
    async fn handle_rpc(&self, request: Envelope) -> Result<RpcResponse, RpcError> {
        match self.groups.get(&request.group_id) {
            Some(group) => group.handle_rpc(request).await,
            None => Err(RpcError::Shutdown),
        }
    }
}

/// Serves one [`TestHandler`] per group on `net`; returns them by group.
fn serve_groups(net: &QuicNetwork, groups: &[GroupId]) -> BTreeMap<GroupId, Arc<TestHandler>> {
    let handlers: BTreeMap<GroupId, Arc<TestHandler>> =
        groups.iter().map(|&g| (g, TestHandler::new(net.node_id()))).collect();
    let routes = handlers.iter().map(|(&g, h)| (g, h.clone() as Arc<dyn RpcHandler>)).collect();
    net.serve(Arc::new(Router { groups: routes }));
    handlers
}

fn rt() -> Arc<dyn Runtime> {
    Arc::new(TokioRuntime)
}

fn members(list: &[(NodeId, &QuicNetwork)]) -> BTreeMap<NodeId, NodeInfo> {
    list.iter()
        .map(|&(id, net)| (id, NodeInfo::with_address(net.local_addr().to_string())))
        .collect()
}

/// Whether a heartbeat of group `group` from `view` reaches node `id` (false: no address).
async fn reaches(view: &QuicGroupNetwork, id: NodeId, group: GroupId) -> bool {
    let request = Envelope::new(id, heartbeat(view.node_id())).with_group_id(group);
    match bounded(&rt(), "a heartbeat", view.send(request)).await {
        Ok(_) => true,
        Err(NetworkError::UnknownPeer(_)) => false,
        Err(other) => panic!("{other:?}"),
    }
}

/// Issue 21.2: a group's membership change forgets only the addresses no other group names.
/// Group 1 names nodes 2 and 3, group 2 names 3 and 4; node 3 leaving group 1 leaves it
/// reachable (group 2 still needs it); it goes once no group names it, and a removed group's
/// (dropped view's) addresses go with it. (With one address set for the whole network, group 1's
/// change forgot node 3 while group 2 still had it as a member.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_groups_membership_change_keeps_the_addresses_another_group_names() {
    init_tracing();
    let rt = rt();
    let ca = ClusterCa::generate().unwrap();
    let nets: Vec<QuicNetwork> = (1..=4)
        .map(|id| QuicNetwork::bind(test_config(&ca, id, loopback()), rt.clone()).unwrap())
        .collect();
    for net in &nets[1..] {
        serve_groups(net, &[1, 2]);
    }
    let (g1, g2) = (nets[0].for_group(1), nets[0].for_group(2));
    assert_eq!((g1.group_id(), g2.group_id()), (1, 2));
    g1.members_changed(&members(&[(1, &nets[0]), (2, &nets[1]), (3, &nets[2])]));
    g2.members_changed(&members(&[(1, &nets[0]), (3, &nets[2]), (4, &nets[3])]));
    for (view, group, peer) in [(&g1, 1, 2), (&g1, 1, 3), (&g2, 2, 3), (&g2, 2, 4)] {
        assert!(reaches(view, peer, group).await, "group {group} reaches node {peer}");
    }

    // Node 3 leaves group 1 only: group 2 still reaches it.
    g1.members_changed(&members(&[(1, &nets[0]), (2, &nets[1])]));
    assert!(reaches(&g2, 3, 2).await, "group 2 lost node 3 when it left group 1");
    assert!(reaches(&g1, 2, 1).await);
    // And group 2 too: no group names it any more.
    g2.members_changed(&members(&[(1, &nets[0]), (4, &nets[3])]));
    assert!(!reaches(&g2, 3, 2).await, "node 3 is a member of no group");

    // Group 2 is removed: its view is dropped, and its addresses go; group 1's stay.
    let clone = g2.clone();
    drop(g2);
    assert!(reaches(&clone, 4, 2).await, "a clone keeps the view");
    drop(clone);
    assert!(!reaches(&g1, 4, 1).await, "node 4 was only group 2's member");
    assert!(reaches(&g1, 2, 1).await);
    for net in &nets {
        net.close().await;
    }
}

/// Two groups name different addresses for one node (it moved, and one group's log says so
/// first): the one set last is dialed; when that group stops naming it, the other group's comes
/// back. An unchanged address handed over again does not count as newer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_latest_address_of_a_node_wins_across_groups() {
    init_tracing();
    let rt = rt();
    let ca = ClusterCa::generate().unwrap();
    let net1 = QuicNetwork::bind(test_config(&ca, 1, loopback()), rt.clone()).unwrap();
    // Node 2 at its old address and at its new one (two endpoints with its certificate).
    let old = QuicNetwork::bind(test_config(&ca, 2, loopback()), rt.clone()).unwrap();
    let new = QuicNetwork::bind(test_config(&ca, 2, loopback()), rt.clone()).unwrap();
    let at_old = serve_groups(&old, &[1, 2]);
    let at_new = serve_groups(&new, &[1, 2]);
    let calls = |handlers: &BTreeMap<GroupId, Arc<TestHandler>>| {
        handlers.values().map(|h| h.calls()).sum::<usize>()
    };
    let (g1, g2) = (net1.for_group(1), net1.for_group(2));

    g1.members_changed(&members(&[(2, &old)]));
    g2.members_changed(&members(&[(2, &new)]));
    assert!(reaches(&g1, 2, 1).await);
    assert_eq!((calls(&at_old), calls(&at_new)), (0, 1), "group 2 named the newer address");
    // Group 1 hands its (old) address over again: still not newer.
    g1.members_changed(&members(&[(2, &old)]));
    assert!(reaches(&g1, 2, 1).await);
    assert_eq!((calls(&at_old), calls(&at_new)), (0, 2));
    // Group 2 stops naming an address for node 2: group 1's comes back.
    g2.members_changed(&BTreeMap::from([(2, NodeInfo::default())]));
    assert!(reaches(&g2, 2, 2).await);
    assert_eq!((calls(&at_old), calls(&at_new)), (1, 2));
    for net in [net1, old, new] {
        net.close().await;
    }
}

/// Three processes, three groups each, one endpoint per process: every group elects a leader
/// and commits through its own view of the shared network, and each endpoint admitted at most
/// one connection per peer process, whatever the number of groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_share_one_endpoint_and_one_connection_per_peer() {
    const GROUPS: [GroupId; 3] = [1, 2, 3];
    init_tracing();
    let rt = rt();
    let core_rt = raft_core::runtime::TokioRuntime::current().unwrap();
    let ca = ClusterCa::generate().unwrap();
    let ids = [1, 2, 3];
    let nets = bind_cluster(&ca, &ids, &rt);
    let mut nodes: BTreeMap<(NodeId, GroupId), (Node, RecordingStateMachine)> = BTreeMap::new();
    for net in &nets {
        let mut routes: BTreeMap<GroupId, Arc<dyn RpcHandler>> = BTreeMap::new();
        for group in GROUPS {
            let mut config = raft_mem::harness::test_config(net.node_id());
            config.group_id = group;
            let state_machine = RecordingStateMachine::new();
            let node = Node::builder(
                config,
                MemLogStore::new(),
                net.for_group(group),
                state_machine.clone(),
                core_rt.clone(),
            )
            .bootstrap(Membership::with_voters(ids))
            .start()
            .await
            .unwrap();
            routes.insert(group, Arc::new(node.clone()));
            nodes.insert((net.node_id(), group), (node, state_machine));
        }
        net.serve(Arc::new(Router { groups: routes }));
    }
    for group in GROUPS {
        let command = Bytes::from(format!("group {group}"));
        // Written on whichever node leads the group (the others refuse: not the leader).
        let written = eventually(&rt, "a leader commits", Duration::from_millis(20), || {
            let members: Vec<Node> = ids.iter().map(|&id| nodes[&(id, group)].0.clone()).collect();
            let command = command.clone();
            async move {
                for node in members {
                    if node.write(command.clone()).await.is_ok() {
                        return Some(());
                    }
                }
                None
            }
        });
        bounded(&rt, "a write", written).await;
        for &id in &ids {
            let state_machine = nodes[&(id, group)].1.clone();
            let expected = command.clone();
            let applied = || {
                let found = state_machine.commands().iter().any(|(_, c)| *c == expected);
                async move { found.then_some(()) }
            };
            eventually(&rt, "applied on every member", Duration::from_millis(20), applied).await;
            let others = GROUPS.iter().filter(|&&g| g != group);
            for other in others {
                let commands = nodes[&(id, *other)].1.commands();
                assert!(
                    commands.iter().all(|(_, c)| *c != command),
                    "group {other} applied group {group}'s command"
                );
            }
        }
    }
    for net in &nets {
        let stats = net.accept_stats();
        // Only the nodes that dialed it (leaders and candidates of any group) connected, once.
        assert!(stats.admitted <= (ids.len() - 1) as u64, "node {}: {stats:?}", net.node_id());
    }
    for (node, _) in nodes.values() {
        node.shutdown().await;
    }
    for net in &nets {
        net.close().await;
    }
}

/// Sends one request of group `group` claiming `sender` over `conn`; the answer, or the error at
/// whichever step failed.
async fn raw_group_rpc(
    conn: &quinn::Connection,
    group: GroupId,
    sender: NodeId,
) -> Result<WireResponse, String> {
    bounded(&rt(), "a raw RPC", async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let request = Envelope::new(1, heartbeat(sender)).with_group_id(group);
        let frame = frame::encode_request(&request, 1 << 20).unwrap();
        send.write_all(&frame).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let bytes = recv.read_to_end(1 << 20).await.map_err(|e| e.to_string())?;
        let limits = Limits { max_items: 1024, max_depth: 32 };
        frame::decode::<WireResponse>(&bytes, 1 << 20, limits)
            .map(|(response, _)| response)
            .map_err(|e| e.to_string())
    })
    .await
}

/// The shared endpoint checks identities as a single group's did, for every group: a client
/// certificate (no node role) is refused before any group's request is served; a request whose
/// claimed sender is not the certificate's id is refused in every group; a refused (removed)
/// node reaches no group, while another node reaches all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_checks_hold_for_every_group() {
    const GROUPS: [GroupId; 3] = [0, 1, 7];
    init_tracing();
    let rt = rt();
    let ca = ClusterCa::generate().unwrap();
    let nets = bind_cluster(&ca, &[1, 2, 3], &rt);
    let handlers = serve_groups(&nets[0], &GROUPS);
    let served = || handlers.values().map(|h| h.calls()).sum::<usize>();

    // A client certificate of the node CA: the connection is refused, whatever the group.
    let client = client_material(&ca, "client-app.kv", Duration::from_secs(3600));
    let endpoint = raw_endpoint(&rt);
    let connecting = endpoint
        .connect_with(
            tls::quic_client_config(&client).unwrap(),
            nets[0].local_addr(),
            "node-1.raft",
        )
        .unwrap();
    if let Ok(conn) = bounded(&rt, "a client's handshake", connecting).await {
        for group in GROUPS {
            let result = raw_group_rpc(&conn, group, 2).await;
            assert!(result.is_err(), "group {group} served a client certificate: {result:?}");
        }
    }
    endpoint.close(0u32.into(), b"");

    // Node 2 claiming to be node 3, in every group.
    for group in GROUPS {
        let view = nets[1].for_group(group);
        let spoofed = Envelope::new(1, heartbeat(3)).with_group_id(group);
        match bounded(&rt, "a spoofed RPC", view.send(spoofed)).await {
            Err(NetworkError::Refused { reason, .. }) => {
                assert!(reason.contains("claims sender 3"), "{reason}")
            }
            other => panic!("group {group}: spoofed request not refused: {other:?}"),
        }
    }
    assert_eq!(served(), 0);

    // Node 2 removed: none of its groups' requests is served; node 3's are, in every group.
    nets[0].refuse(2);
    for group in GROUPS {
        let request = Envelope::new(1, heartbeat(2)).with_group_id(group);
        let view = nets[1].for_group(group);
        let result = bounded(&rt, "a removed node's RPC", view.send(request)).await;
        assert!(result.is_err(), "group {group} served a removed node");
        let request = Envelope::new(1, heartbeat(3)).with_group_id(group);
        bounded(&rt, "a member's RPC", nets[2].for_group(group).send(request)).await.unwrap();
        assert_eq!(handlers[&group].calls(), 1, "group {group}");
    }
    for net in &nets {
        net.close().await;
    }
}

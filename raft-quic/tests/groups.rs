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
    Bytes, Envelope, GroupId, Membership, Network, NetworkError, Node, NodeId, NodeInfo,
    RefusalReason, RpcError, RpcHandler, RpcResponse,
};
use raft_mem::harness::RecordingStateMachine;
use raft_mem::MemLogStore;
use raft_quic::bounded::Limits;
use raft_quic::quinn::{self, Runtime, TokioRuntime};
use raft_quic::{frame, tls, ClusterCa, QuicGroupNetwork, QuicNetwork, Refusal, WireResponse};

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

/// Node 2 at its old address and at its new one (two endpoints with its certificate), each
/// serving groups 1 and 2 with handlers that count the requests they get.
struct Moved {
    old: QuicNetwork,
    new: QuicNetwork,
    at_old: BTreeMap<GroupId, Arc<TestHandler>>,
    at_new: BTreeMap<GroupId, Arc<TestHandler>>,
}

impl Moved {
    fn bind(ca: &ClusterCa, rt: &Arc<dyn Runtime>) -> Self {
        let old = QuicNetwork::bind(test_config(ca, 2, loopback()), rt.clone()).unwrap();
        let new = QuicNetwork::bind(test_config(ca, 2, loopback()), rt.clone()).unwrap();
        let (at_old, at_new) = (serve_groups(&old, &[1, 2]), serve_groups(&new, &[1, 2]));
        Self { old, new, at_old, at_new }
    }
}

/// The set-up of the tests below: tracing, the runtime, a CA, and node 2 bound with its test
/// configuration, serving `groups` with handlers that count the requests they get.
struct Node2 {
    rt: Arc<dyn Runtime>,
    ca: ClusterCa,
    net: QuicNetwork,
    handlers: BTreeMap<GroupId, Arc<TestHandler>>,
}

impl Node2 {
    fn start(groups: &[GroupId]) -> Self {
        init_tracing();
        let rt = rt();
        let ca = ClusterCa::generate().unwrap();
        let net = QuicNetwork::bind(test_config(&ca, 2, loopback()), rt.clone()).unwrap();
        let handlers = serve_groups(&net, groups);
        Self { rt, ca, net, handlers }
    }
}

/// Node 1 bound with its test configuration, node 2 configured at `node2_at`.
fn node1_reaching(
    ca: &ClusterCa,
    rt: &Arc<dyn Runtime>,
    node2_at: std::net::SocketAddr,
) -> QuicNetwork {
    let mut config1 = test_config(ca, 1, loopback());
    config1.peers.insert(2, node2_at);
    QuicNetwork::bind(config1, rt.clone()).unwrap()
}

/// Closes every network of `nets`, one after the other (each dropped once closed).
async fn close_all(nets: impl IntoIterator<Item = QuicNetwork>) {
    for net in nets {
        net.close().await;
    }
}

/// The requests `handlers` got, in all.
fn calls(handlers: &BTreeMap<GroupId, Arc<TestHandler>>) -> usize {
    handlers.values().map(|h| h.calls()).sum()
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
    let Moved { old, new, at_old, at_new } = Moved::bind(&ca, &rt);
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
    close_all([net1, old, new]).await;
}

/// Review finding (rev_host, LIVENESS, low): which address of a moved node is dialed depends
/// on the order the groups hand their memberships over, not on which membership is newer. Node
/// 2 moved; group 2's log already says so, group 1's (lagging) does not. Before a restart group
/// 1 had named the old address first, so the new one won. After a restart of node 1, its groups
/// start in another order (group 2, then group 1): the stale address is now the latest set, and
/// every group of node 1 dials node 2 at its old address (here the old endpoint still answers,
/// to count; in life nothing answers there, or another node does and fails the identity check),
/// until group 1's log learns the move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "not a transport bug: with two LIVE endpoints proving node 2's identity (two processes with one node id, an operator error) the transport cannot tell which is current and uses the most recently set address that answers (make before break probes it too); a dead or wrong-identity old address is handled (see the two tests below)"]
async fn the_address_a_newer_membership_names_wins_whatever_the_groups_start_order() {
    init_tracing();
    let rt = rt();
    let ca = ClusterCa::generate().unwrap();
    let Moved { old, new, at_old, at_new } = Moved::bind(&ca, &rt);
    // Before the restart: group 1 named the old address, then group 2 learned the move.
    let net1 = QuicNetwork::bind(test_config(&ca, 1, loopback()), rt.clone()).unwrap();
    let (g1, g2) = (net1.for_group(1), net1.for_group(2));
    g1.members_changed(&members(&[(2, &old)]));
    g2.members_changed(&members(&[(2, &new)]));
    assert!(reaches(&g1, 2, 1).await);
    assert_eq!((calls(&at_old), calls(&at_new)), (0, 1), "the moved node's new address");
    drop((g1, g2));
    net1.close().await;
    // Node 1 restarts; its groups hand over the same memberships, group 2's first.
    let net1 = QuicNetwork::bind(test_config(&ca, 1, loopback()), rt.clone()).unwrap();
    let (g1, g2) = (net1.for_group(1), net1.for_group(2));
    g2.members_changed(&members(&[(2, &new)]));
    g1.members_changed(&members(&[(2, &old)]));
    assert!(reaches(&g2, 2, 2).await);
    assert_eq!(
        (calls(&at_old), calls(&at_new)),
        (0, 2),
        "after the restart group 2's request went to node 2's old address"
    );
    close_all([net1, old, new]).await;
}

/// How many heartbeats of group `group` from `view` it took until one reached node `id` (those
/// that fail as unreachable or timed out are retried after a short pause; the 20 s bound of
/// [`eventually`] is generous, not a speed assertion).
async fn attempts_to_reach(view: &QuicGroupNetwork, id: NodeId, group: GroupId) -> usize {
    let runtime = rt();
    let mut attempts = 0;
    let what = format!("group {group} reaches node {id}");
    eventually(&runtime, &what, Duration::from_millis(20), || {
        attempts += 1;
        let request = Envelope::new(id, heartbeat(view.node_id())).with_group_id(group);
        async move {
            match bounded(&rt(), "a heartbeat", view.send(request)).await {
                Ok(_) => Some(()),
                Err(NetworkError::Unreachable { .. } | NetworkError::Timeout(_)) => None,
                Err(other) => panic!("{other:?}"),
            }
        }
    })
    .await;
    attempts
}

/// The most attempts a group may need to reach the moved node: the first dial at the stale
/// address fails (nothing answers within the connect timeout, or the identity check fails),
/// a few more are turned away by the backoff, then the new address is dialed. Generous.
const MOVED_NODE_ATTEMPTS: usize = 20;

/// After node 1's restart, its groups hand their memberships over with the lagging group's
/// (stale) address of node 2 set last (the order of the ignored test above): node 2's new
/// address is named by group 2 (`new`), its old one by group 1 (`stale`). Returns how many
/// attempts each group took to reach node 2.
async fn reach_the_moved_node_after_a_restart(
    ca: &ClusterCa,
    stale: std::net::SocketAddr,
    new: &QuicNetwork,
) -> (QuicNetwork, Vec<usize>) {
    let rt = rt();
    let net1 = QuicNetwork::bind(test_config(ca, 1, loopback()), rt.clone()).unwrap();
    let (g1, g2) = (net1.for_group(1), net1.for_group(2));
    g2.members_changed(&members(&[(2, new)]));
    let stale_member = NodeInfo::with_address(stale.to_string());
    g1.members_changed(&BTreeMap::from([(2, stale_member)]));
    let mut attempts = Vec::new();
    for (view, group) in [(&g1, 1), (&g2, 2)] {
        attempts.push(attempts_to_reach(view, 2, group).await);
    }
    (net1, attempts)
}

/// Review finding (rev_host, LIVENESS) with nothing listening at the moved node's old address
/// any more: after the restart order that sets the lagging group's stale address last, every
/// group of node 1 still reaches node 2, at its new address, within a bounded number of
/// attempts (the failed dial at the stale address makes the next one try the other candidate).
/// (Before, every dial went to the stale address until group 1's log learned the move.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_node_is_reached_at_its_new_address_when_nothing_answers_at_the_old_one() {
    let Node2 { ca, net: new, handlers: at_new, .. } = Node2::start(&[1, 2]);
    // An address nothing answers at: a socket kept bound (no concurrent test can take its
    // port), never read.
    let (silent, stale) = silent_address();
    let (net1, attempts) = reach_the_moved_node_after_a_restart(&ca, stale, &new).await;
    assert!(attempts.iter().all(|&n| n <= MOVED_NODE_ATTEMPTS), "attempts by group: {attempts:?}");
    for group in [1, 2] {
        assert_eq!(at_new[&group].calls(), 1, "group {group}'s heartbeat at the new address");
    }
    close_all([net1, new]).await;
    drop(silent);
}

/// A UDP socket bound on loopback and never read, and its address: nothing answers there, and
/// no other test can bind its port while it is held.
fn silent_address() -> (std::net::UdpSocket, std::net::SocketAddr) {
    let socket = std::net::UdpSocket::bind(loopback()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// One heartbeat of group `group` from `view` to node `id`, which must succeed (first try).
async fn heartbeat_ok(view: &QuicGroupNetwork, id: NodeId, group: GroupId, what: &str) {
    let request = Envelope::new(id, heartbeat(view.node_id())).with_group_id(group);
    if let Err(error) = bounded(&rt(), what, view.send(request)).await {
        panic!("{what}: {error:?}");
    }
}

/// Review finding M1 (rev_qaddr): node 1 is connected to node 2 at its new address (named by
/// group 2) when a lagging group 1 names node 2's old address later (a staggered restart, a
/// group added at run time, a rolled-back membership). The working connection stays: group 2's
/// next heartbeat goes through on it at once, no new connection. (Before, the new first
/// candidate closed the connection, failing every group's RPCs in flight, and the next dial
/// went to the silent old address: a connect timeout and a backoff before node 2 was reached
/// again, longer than an election timeout.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_working_connection_stays_when_another_group_names_a_stale_address_later() {
    let Node2 { rt, ca, net: new, handlers: at_new } = Node2::start(&[1, 2]);
    let (silent, stale) = silent_address();
    let net1 = QuicNetwork::bind(test_config(&ca, 1, loopback()), rt.clone()).unwrap();
    let (g1, g2) = (net1.for_group(1), net1.for_group(2));
    g2.members_changed(&members(&[(2, &new)]));
    heartbeat_ok(&g2, 2, 2, "group 2's first heartbeat").await;
    assert_eq!(new.accept_stats().admitted, 1);
    g1.members_changed(&BTreeMap::from([(2, NodeInfo::with_address(stale.to_string()))]));
    heartbeat_ok(&g2, 2, 2, "group 2's heartbeat once group 1 named the old address").await;
    assert_eq!(new.accept_stats().admitted, 1, "the working connection was dropped");
    assert_eq!(at_new[&2].calls(), 2);
    close_all([net1, new]).await;
    drop(silent);
}

/// Review finding M-A (second review of qaddr): node 2 is reachable at its configured address
/// A (here through a proxy) and at B; node 1 is connected at A when the membership of group 1
/// names B (node 2 moved, the membership committed). Node 1 probes B in the background and
/// moves there once the dial succeeds, so when the operator retires A (a firewall dropping
/// every datagram) the next heartbeat goes through at B at once. (Before, the working
/// connection at A was kept until it failed: every RPC timed out until the idle timeout, and
/// elections broke out everywhere.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_working_connection_moves_to_a_newly_named_address_that_answers() {
    let Node2 { rt, ca, net: new, handlers: at_new } = Node2::start(&[1]);
    let proxy = common::proxy::UdpProxy::start(new.local_addr());
    let net1 = node1_reaching(&ca, &rt, proxy.addr());
    let g1 = net1.for_group(1);
    heartbeat_ok(&g1, 2, 1, "the heartbeat at the configured address").await;
    assert_eq!(new.accept_stats().admitted, 1);
    g1.members_changed(&members(&[(2, &new)]));
    // The probe starts lazily from the RPCs (Raft's heartbeats).
    heartbeats_until(&g1, 2, 1, "node 1 dials node 2 at its new address", || {
        new.accept_stats().admitted == 2
    })
    .await;
    // Node 1 closes the old connection once it moved to the new one (one RPC timeout later,
    // for the RPCs in flight on it): one connection left at node 2 means node 1 moved.
    heartbeats_until(&g1, 2, 1, "node 1 closes its connection at the old address", || {
        new.accept_stats().connections == 1
    })
    .await;
    let calls = at_new[&1].calls();
    heartbeat_ok(&g1, 2, 1, "the heartbeat after the membership named the new address").await;
    proxy.block();
    heartbeat_ok(&g1, 2, 1, "the heartbeat after the old path is retired").await;
    assert_eq!(at_new[&1].calls(), calls + 2);
    assert_eq!(new.accept_stats().admitted, 2, "one dial at the new address");
    close_all([net1, new]).await;
}

/// Heartbeats of group `group` from `view` to node `id` (each must succeed), one every 20 ms,
/// until `done` holds (within the generous bound of [`bounded`]).
async fn heartbeats_until(
    view: &QuicGroupNetwork,
    id: NodeId,
    group: GroupId,
    what: &str,
    done: impl Fn() -> bool,
) {
    bounded(&rt(), what, async {
        while !done() {
            heartbeat_ok(view, id, group, what).await;
            sleep(&rt(), Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Heartbeats of group `group` from `view` to node `id` (each must succeed), one every 20 ms,
/// for `duration`.
async fn heartbeats_for(view: &QuicGroupNetwork, id: NodeId, group: GroupId, duration: Duration) {
    let until = std::time::Instant::now() + duration;
    heartbeats_until(view, id, group, "heartbeats", || std::time::Instant::now() >= until).await;
}

/// Review finding M-2 (third review of qaddr): the probe of node 2's new address B fails (B does
/// not answer yet when the membership naming it is applied: a proxy drops everything for 1 s);
/// the probe is retried (from the RPCs, under its own backoff) while B is still the newly
/// preferred address, so node 1 moves there once B answers, and the old path retired later
/// costs nothing. (Before, a failed probe was retried only once the candidates changed: the
/// heartbeat after the old path was retired timed out.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_probe_is_retried_while_the_new_address_is_preferred() {
    let Node2 { rt, ca, net: new, handlers: at_new } = Node2::start(&[1]);
    let old_path = common::proxy::UdpProxy::start(new.local_addr());
    let new_path = common::proxy::UdpProxy::start(new.local_addr());
    let net1 = node1_reaching(&ca, &rt, old_path.addr());
    let g1 = net1.for_group(1);
    heartbeat_ok(&g1, 2, 1, "the heartbeat at the configured address").await;
    new_path.block();
    g1.members_changed(&BTreeMap::from([(2, NodeInfo::with_address(new_path.addr().to_string()))]));
    heartbeats_for(&g1, 2, 1, Duration::from_secs(1)).await;
    new_path.unblock();
    heartbeats_for(&g1, 2, 1, Duration::from_secs(3)).await;
    old_path.block();
    heartbeat_ok(&g1, 2, 1, "the heartbeat after the old path is retired").await;
    assert!(at_new[&1].calls() > 2);
    close_all([net1, new]).await;
}

/// Review finding M-3 (third review of qaddr): a failed probe is charged to the probe's own
/// backoff, not to the peer's: once node 2's connection is lost (a routine restart), the next
/// RPC dials it at once. (Before, the probe's failure put the peer in its backoff, 5 s here:
/// the first heartbeat after the restart failed with "reconnecting in".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_probe_does_not_delay_the_peers_redial() {
    init_tracing();
    let rt = rt();
    let ca = ClusterCa::generate().unwrap();
    let config2 = test_config(&ca, 2, loopback());
    let node2 = QuicNetwork::bind(config2.clone(), rt.clone()).unwrap();
    serve_groups(&node2, &[1, 2]);
    let at = node2.local_addr();
    let (silent, dead) = silent_address();
    let mut config1 = test_config(&ca, 1, loopback());
    config1.backoff_min = Duration::from_secs(5);
    config1.backoff_max = Duration::from_secs(5);
    let net1 = QuicNetwork::bind(config1, rt.clone()).unwrap();
    let (g1, g2) = (net1.for_group(1), net1.for_group(2));
    g2.members_changed(&members(&[(2, &node2)]));
    heartbeat_ok(&g2, 2, 2, "group 2's first heartbeat").await;
    // Group 1 names a silent address: probed (from the next RPC), the probe fails.
    g1.members_changed(&BTreeMap::from([(2, NodeInfo::with_address(dead.to_string()))]));
    heartbeats_for(&g2, 2, 2, Duration::from_millis(800)).await;
    // Group 1 names node 2's address again: the silent one is no candidate any more.
    g1.members_changed(&members(&[(2, &node2)]));
    // Node 2 restarts on the same port.
    node2.close().await;
    drop(node2);
    sleep(&rt, Duration::from_millis(200)).await;
    let mut config2 = config2;
    config2.listen_addr = at;
    let restarted = eventually(&rt, "rebind node 2", Duration::from_millis(10), || {
        let (config, rt) = (config2.clone(), rt.clone());
        async move { QuicNetwork::bind(config, rt).ok() }
    })
    .await;
    serve_groups(&restarted, &[1, 2]);
    heartbeat_ok(&g2, 2, 2, "group 2's first heartbeat after node 2's restart").await;
    close_all([net1, restarted]).await;
    drop(silent);
}

/// Review finding M-1 (third review of qaddr): moves by probe are paced: at most one per peer
/// per `backoff_max` (5 s here). Node 2 is reachable through two proxies; node 1 moves from P1
/// (configured) to P2 (group 1) by probe, then group 2 names P1 again: no second move (no new
/// handshake at node 2) within 1 s of heartbeats, and node 2 never holds more than two of node
/// 1's connections (the current one and at most one retiring). (Before, every change of the
/// first address moved the connection at once: a hostile leader could make node 1 hop without
/// bound, each move keeping the old connection open for an RPC timeout.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_by_probe_are_paced() {
    let Node2 { rt, ca, net: node2, .. } = Node2::start(&[1, 2]);
    let p1 = common::proxy::UdpProxy::start(node2.local_addr());
    let p2 = common::proxy::UdpProxy::start(node2.local_addr());
    let mut config1 = test_config(&ca, 1, loopback());
    config1.backoff_max = Duration::from_secs(5);
    config1.peers.insert(2, p1.addr());
    let net1 = QuicNetwork::bind(config1, rt.clone()).unwrap();
    let (g1, g2) = (net1.for_group(1), net1.for_group(2));
    heartbeat_ok(&g1, 2, 1, "the heartbeat at P1").await;
    g1.members_changed(&BTreeMap::from([(2, NodeInfo::with_address(p2.addr().to_string()))]));
    heartbeats_until(&g1, 2, 1, "node 1 moves to P2", || node2.accept_stats().admitted == 2).await;
    g2.members_changed(&BTreeMap::from([(2, NodeInfo::with_address(p1.addr().to_string()))]));
    let until = std::time::Instant::now() + Duration::from_secs(1);
    heartbeats_until(&g2, 2, 2, "heartbeats after group 2 named P1", || {
        assert!(node2.accept_stats().connections <= 2, "{:?}", node2.accept_stats());
        std::time::Instant::now() >= until
    })
    .await;
    assert_eq!(node2.accept_stats().admitted, 2, "a second move within backoff_max");
    close_all([net1, node2]).await;
}

/// Review finding MEDIUM/LOW-2 (fourth review of qaddr): a probe that connects after the
/// preferred address changed under it (stale, closed unused) counts against the probes'
/// backoff like a failed one, so a group leader flipping a node's address while probes are in
/// flight cannot make this node handshake once per change. Before, the next RPC probed the
/// new first address at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_probe_paces_the_next_one() {
    let Node2 { rt, ca, net: node2, .. } = Node2::start(&[1, 2]);
    let p1 = common::proxy::UdpProxy::start(node2.local_addr());
    let p2 = common::proxy::UdpProxy::start(node2.local_addr());
    let mut config1 = test_config(&ca, 1, loopback());
    config1.backoff_min = Duration::from_secs(5);
    config1.backoff_max = Duration::from_secs(5);
    // Room for the probe's handshake to wait behind the blocked proxy and still connect.
    config1.connect_timeout = Duration::from_secs(4);
    config1.rpc_timeout = Duration::from_secs(5);
    config1.peers.insert(2, node2.local_addr());
    let net1 = QuicNetwork::bind(config1, rt.clone()).unwrap();
    let g1 = net1.for_group(1);
    heartbeat_ok(&g1, 2, 1, "the heartbeat at the configured address").await;
    p1.block();
    g1.members_changed(&BTreeMap::from([(2, NodeInfo::with_address(p1.addr().to_string()))]));
    // This heartbeat (on the working connection) starts the probe of P1, which waits.
    heartbeat_ok(&g1, 2, 1, "the heartbeat that starts the probe of P1").await;
    g1.members_changed(&BTreeMap::from([(2, NodeInfo::with_address(p2.addr().to_string()))]));
    p1.unblock();
    heartbeats_until(&g1, 2, 1, "the stale probe through P1 connects", || {
        node2.accept_stats().admitted == 2
    })
    .await;
    heartbeats_for(&g1, 2, 1, Duration::from_secs(1)).await;
    assert_eq!(node2.accept_stats().admitted, 2, "P2 probed right after the stale probe of P1");
    close_all([net1, node2]).await;
}

/// Review finding L1 (third review of qaddr): refusing a node closes the connection a move
/// retired too, at once (not one RPC timeout later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_a_node_closes_its_retiring_connection() {
    let Node2 { rt, ca, net: new, .. } = Node2::start(&[1]);
    let proxy = common::proxy::UdpProxy::start(new.local_addr());
    let net1 = node1_reaching(&ca, &rt, proxy.addr());
    let g1 = net1.for_group(1);
    heartbeat_ok(&g1, 2, 1, "the heartbeat at the configured address").await;
    g1.members_changed(&members(&[(2, &new)]));
    heartbeats_until(&g1, 2, 1, "node 1 moves", || new.accept_stats().admitted == 2).await;
    net1.refuse(2);
    sleep(&rt, Duration::from_millis(300)).await;
    assert_eq!(new.accept_stats().connections, 0, "a connection to the refused node is open");
    close_all([net1, new]).await;
}

/// Review finding L3 (rev_qaddr): the address the application set (`set_peer`) is the most
/// recently set one, wherever it is put among the candidates: a membership handing over the
/// same (old) address again does not make that address the preferred one, with or without a
/// connection. (Before, `set_peer` put its address first and every later membership change
/// touching the id put it last: an unchanged hand-over moved the peer to the dead address.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_applications_address_stays_preferred_when_a_membership_repeats_an_old_one() {
    let Node2 { rt, ca, net: new, handlers: at_new } = Node2::start(&[1]);
    let (silent, dead) = silent_address();
    let net1 = QuicNetwork::bind(test_config(&ca, 1, loopback()), rt.clone()).unwrap();
    let g1 = net1.for_group(1);
    let old_membership = BTreeMap::from([(2, NodeInfo::with_address(dead.to_string()))]);
    g1.members_changed(&old_membership);
    net1.set_peer(2, new.local_addr());
    // No connection yet.
    g1.members_changed(&old_membership);
    heartbeat_ok(&g1, 2, 1, "the heartbeat after the same membership, unconnected").await;
    // Connected.
    g1.members_changed(&old_membership);
    heartbeat_ok(&g1, 2, 1, "the heartbeat after the same membership, connected").await;
    assert_eq!(new.accept_stats().admitted, 1);
    assert_eq!(at_new[&1].calls(), 2);
    close_all([net1, new]).await;
    drop(silent);
}

/// Review finding L5 (rev_qaddr), and the "moved meanwhile" branch of a failed dial: a dial at
/// the old address that fails after the application moved the peer (`set_peer`) charges no
/// failure to the new address (no backoff: the backoff here is long) and does not turn the next
/// dial away from it (to the old address, still a candidate). (Before, the old dial's failure
/// was charged after the move had reset the backoff, and the next RPC was turned away for the
/// backoff's wait.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_that_fails_after_the_peer_moved_is_not_charged_to_the_new_address() {
    let Node2 { rt, ca, net: new, handlers: at_new } = Node2::start(&[1]);
    let (silent, dead) = silent_address();
    let mut config1 = test_config(&ca, 1, loopback());
    config1.backoff_min = Duration::from_secs(30);
    config1.backoff_max = Duration::from_secs(30);
    // The move (at 150 ms) must come while the dial at the old address is still running: a
    // connect timeout far above it keeps that order on a loaded machine (a stall of up to
    // ~1.8 s), where 500 ms did not.
    config1.connect_timeout = Duration::from_secs(2);
    config1.rpc_timeout = Duration::from_secs(3);
    let net1 = QuicNetwork::bind(config1, rt.clone()).unwrap();
    let g1 = net1.for_group(1);
    // Group 1 names the old address, so that it stays a candidate after the move: a failure
    // there must not turn the next dial to it either.
    g1.members_changed(&BTreeMap::from([(2, NodeInfo::with_address(dead.to_string()))]));
    let move_during_the_dial = async {
        sleep(&rt, Duration::from_millis(150)).await;
        net1.set_peer(2, new.local_addr());
    };
    let request = Envelope::new(2, heartbeat(1)).with_group_id(1);
    let (old_dial, ()) = bounded(
        &rt,
        "the dial at the old address",
        futures::future::join(g1.send(request), move_during_the_dial),
    )
    .await;
    assert!(old_dial.is_err(), "{old_dial:?}");
    heartbeat_ok(&g1, 2, 1, "the heartbeat after the move").await;
    assert_eq!(at_new[&1].calls(), 1);
    close_all([net1, new]).await;
    drop(silent);
}

/// The same with ANOTHER node (3) listening at node 2's old address: the dial there fails the
/// identity check (node 3's certificate does not name node 2), so node 3 never gets a request
/// meant for node 2, and the next dial reaches node 2 at its new address, for every group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_node_is_reached_at_its_new_address_when_another_node_answers_at_the_old_one() {
    let Node2 { rt, ca, net: new, handlers: at_new } = Node2::start(&[1, 2]);
    let other = QuicNetwork::bind(test_config(&ca, 3, loopback()), rt.clone()).unwrap();
    let at_other = serve_groups(&other, &[1, 2]);
    let stale = other.local_addr();
    let (net1, attempts) = reach_the_moved_node_after_a_restart(&ca, stale, &new).await;
    assert!(attempts.iter().all(|&n| n <= MOVED_NODE_ATTEMPTS), "attempts by group: {attempts:?}");
    for group in [1, 2] {
        assert_eq!(at_new[&group].calls(), 1, "group {group}'s heartbeat at the new address");
    }
    assert_eq!(calls(&at_other), 0, "node 3 got a request meant for node 2");
    assert_eq!(other.accept_stats().admitted, 0, "node 3 admitted node 1's dial for node 2");
    close_all([net1, new, other]).await;
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
            Err(NetworkError::Refused { reason: RefusalReason::Transport(error), .. }) => {
                assert!(
                    matches!(
                        error.downcast_ref::<Refusal>(),
                        Some(Refusal::SenderMismatch { claimed: 3, authenticated: 2 })
                    ),
                    "{error}"
                )
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

/// Serves `handler` for every group of `groups` on `net` (one handler counting them all).
fn serve_shared(net: &QuicNetwork, groups: impl IntoIterator<Item = GroupId>) -> Arc<TestHandler> {
    let handler = TestHandler::new(net.node_id());
    let routes = groups.into_iter().map(|g| (g, handler.clone() as Arc<dyn RpcHandler>)).collect();
    net.serve(Arc::new(Router { groups: routes }));
    handler
}

/// A sender and a receiver with a 4 MiB connection window (2 MiB of it for bulk requests) and
/// 1 MiB frames, an RPC timeout far beyond the test's length (a bulk request held by the
/// receiver must not time out and make room), and group `group`'s bulk request of ~512 KiB,
/// held by the receiver's handler, with the number of them the bulk window lets in flight.
fn bulk_setup(ca: &ClusterCa) -> (QuicNetwork, QuicNetwork, usize) {
    let config = |id| {
        let mut config = test_config(ca, id, loopback());
        config.max_frame_size = 1 << 20;
        config.stream_receive_window = 1 << 20;
        config.connection_receive_window = 4 << 20;
        config.rpc_timeout = Duration::from_secs(60);
        config
    };
    let sender = QuicNetwork::bind(config(1), rt()).unwrap();
    let receiver = QuicNetwork::bind(config(2), rt()).unwrap();
    sender.set_peer(2, receiver.local_addr());
    let frame = frame::encode_request(&bulk_request(1), 1 << 20).unwrap();
    // Half the window, half the streams (256 / 2): the bytes bind here.
    let in_flight = ((2 << 20) / frame.len()).min(128);
    assert_eq!(in_flight, 3);
    (sender, receiver, in_flight)
}

/// A ~512 KiB AppendEntries of `group`, which the test handler holds until its gate opens.
fn bulk_request(group: GroupId) -> Envelope {
    Envelope::new(2, append(1, 5, 128 << 10, b"gated")).with_group_id(group)
}

/// Issue 21.2, fairness: group 1 has sixteen ~512 KiB AppendEntries outstanding to a follower
/// that holds them (8 MiB: twice the connection's flow-control window and the sender's send
/// window), and group 2's votes and heartbeats to the same process are answered, forty of them,
/// while every one of group 1's is still incomplete. The bound: at most half the connection
/// window (2 MiB here) of bulk requests is ever in flight to one peer, all groups together (the
/// follower's handler sees exactly three of them), so small requests never wait for flow
/// control credit, send buffer or a stream slot behind bulk data. (Before, the bulk requests
/// the follower could not read yet took all the connection's credit: group 2's first heartbeat
/// waited until the bulk requests were answered, or timed out.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_groups_bulk_backlog_never_holds_up_another_groups_votes_and_heartbeats() {
    use futures::StreamExt;
    init_tracing();
    let rt = rt();
    let ca = ClusterCa::generate().unwrap();
    let (sender, receiver, in_flight) = bulk_setup(&ca);
    let handlers = serve_groups(&receiver, &[1, 2]);
    let gate = handlers[&1].close_gate();
    let (group1, group2) = (sender.for_group(1), sender.for_group(2));

    let mut bulk: futures::stream::FuturesUnordered<_> = (0..16)
        .map(|_| {
            let view = group1.clone();
            async move { view.send(bulk_request(1)).await }
        })
        .collect();
    let small = async {
        for _ in 0..20 {
            let heartbeat = Envelope::new(2, heartbeat(1)).with_group_id(2);
            group2.send(heartbeat).await.unwrap();
            group2.send(Envelope::new(2, vote(1)).with_group_id(2)).await.unwrap();
        }
    };
    let outcome =
        bounded(&rt, "group 2's RPCs", futures::future::select(bulk.next(), Box::pin(small)));
    if let futures::future::Either::Left((done, _)) = outcome.await {
        panic!("a held bulk request finished: {done:?}");
    }
    assert_eq!(handlers[&2].calls(), 40);
    // No more than the window's worth of bulk requests reached the follower.
    let reached = || {
        let calls = handlers[&1].calls();
        async move { (calls >= in_flight).then_some(()) }
    };
    eventually(&rt, "bulk requests in the handler", Duration::from_millis(10), reached).await;
    sleep(&rt, Duration::from_millis(300)).await;
    assert_eq!(handlers[&1].calls(), in_flight, "bulk requests beyond the window");

    drop(gate);
    let results: Vec<_> = bounded(&rt, "group 1's bulk requests", bulk.collect()).await;
    assert_eq!(results.len(), 16);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(handlers[&1].calls(), 16);
    sender.close().await;
    receiver.close().await;
}

/// Issue 21.2/21.3: the bulk window is one per peer process, not one per group: 64 groups with
/// one bulk request each get exactly as many in flight as one group with 64.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bulk_window_is_one_per_peer_for_all_groups() {
    init_tracing();
    let rt = rt();
    let ca = ClusterCa::generate().unwrap();
    let (sender, receiver, in_flight) = bulk_setup(&ca);
    let handler = serve_shared(&receiver, 0..64);
    let views: Vec<QuicGroupNetwork> = (0..64).map(|g| sender.for_group(g)).collect();
    let requests = views.iter().map(|view| view.send(bulk_request(view.group_id())));
    let results = only_some_reach_the_handler(&rt, &handler, requests, in_flight).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(handler.calls(), 64);
    sender.close().await;
    receiver.close().await;
}

/// Issue 21.3: the receiver's memory budget is one per peer node id (process), whatever the
/// groups its requests belong to: with a 256 KiB budget, two ~100 KB requests are held at once,
/// the third waits, though each is of another group (as the same three of one group do in the
/// transport scenario `requests_stay_within_the_connection_memory_budget`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receivers_memory_budget_is_one_per_peer_for_all_groups() {
    init_tracing();
    let rt = rt();
    let ca = ClusterCa::generate().unwrap();
    let config = small_budget_config(&ca, 2);
    let receiver = QuicNetwork::bind(config, rt.clone()).unwrap();
    let sender = QuicNetwork::bind(test_config(&ca, 1, loopback()), rt.clone()).unwrap();
    sender.set_peer(2, receiver.local_addr());
    let handler = serve_shared(&receiver, 0..3);
    let views: Vec<QuicGroupNetwork> = (0..3).map(|g| sender.for_group(g)).collect();
    let requests = views.iter().map(|view| {
        let request = append(1, 2, 100_000, b"gated");
        view.send(Envelope::new(2, request).with_group_id(view.group_id()))
    });
    let results = only_some_reach_the_handler(&rt, &handler, requests, 2).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(handler.calls(), 3);
    sender.close().await;
    receiver.close().await;
}

/// Review finding M-4 (third review of qaddr): a membership change from a thread outside the
/// runtime (the runtime alive, not inside `block_on`) while node 1 is connected to node 2 must
/// not spawn anything: the probe of the newly preferred address starts lazily from the next
/// RPC, on the runtime. (Before, `members_changed` spawned the probe at once and panicked: "no
/// reactor running".)
#[test]
fn a_membership_change_outside_the_runtime_spawns_nothing() {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let ca = ClusterCa::generate().unwrap();
    let (new, net1, g2) = runtime.block_on(async {
        init_tracing();
        let new = QuicNetwork::bind(test_config(&ca, 2, loopback()), rt()).unwrap();
        serve_groups(&new, &[2]);
        let mut config1 = test_config(&ca, 1, loopback());
        config1.peers.insert(2, new.local_addr());
        let net1 = QuicNetwork::bind(config1, rt()).unwrap();
        let g2 = net1.for_group(2);
        heartbeat_ok(&g2, 2, 2, "the first heartbeat").await;
        (new, net1, g2)
    });
    let (silent, elsewhere) = silent_address();
    g2.members_changed(&BTreeMap::from([(2, NodeInfo::with_address(elsewhere.to_string()))]));
    drop(g2);
    runtime.block_on(async {
        for net in [net1, new] {
            net.close().await;
        }
    });
    drop(silent);
}

/// Review finding L7 (third review of qaddr), the probing guard: many RPCs at once, each of
/// which finds the connection working while a newly preferred address waits, start one probe
/// between them (one handshake at the new address), not one each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rpcs_start_one_probe() {
    let Node2 { rt, ca, net: new, .. } = Node2::start(&[1]);
    let proxy = common::proxy::UdpProxy::start(new.local_addr());
    let net1 = node1_reaching(&ca, &rt, proxy.addr());
    let g1 = net1.for_group(1);
    heartbeat_ok(&g1, 2, 1, "the heartbeat at the configured address").await;
    g1.members_changed(&members(&[(2, &new)]));
    let many = (0..20).map(|_| heartbeat_ok(&g1, 2, 1, "a concurrent heartbeat"));
    futures::future::join_all(many).await;
    heartbeats_until(&g1, 2, 1, "node 1 moves", || new.accept_stats().admitted >= 2).await;
    sleep(&rt, Duration::from_millis(300)).await;
    assert_eq!(new.accept_stats().admitted, 2, "more than one probe");
    close_all([net1, new]).await;
}

/// Review findings M-1's variant and L7 (third review of qaddr): an RPC in flight on the old
/// connection when a probe moves the peer (group 2's request, held by node 2's handler until
/// after the move) still gets its answer: the old connection retires, it is not closed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rpc_in_flight_at_a_move_gets_its_answer() {
    let Node2 { rt, ca, net: new, handlers } = Node2::start(&[1, 2]);
    let proxy = common::proxy::UdpProxy::start(new.local_addr());
    let net1 = node1_reaching(&ca, &rt, proxy.addr());
    let (g1, g2) = (net1.for_group(1), net1.for_group(2));
    heartbeat_ok(&g1, 2, 1, "the heartbeat at the configured address").await;
    let gate = handlers[&2].close_gate();
    let held = g2.send(Envelope::new(2, append(1, 1, 10, b"gated")).with_group_id(2));
    let move_then_open = async {
        sleep(&rt, Duration::from_millis(50)).await;
        g1.members_changed(&members(&[(2, &new)]));
        heartbeats_until(&g1, 2, 1, "node 1 moves", || new.accept_stats().admitted == 2).await;
        sleep(&rt, Duration::from_millis(100)).await;
        drop(gate);
    };
    let (answer, ()) =
        bounded(&rt, "the held request", futures::future::join(held, move_then_open)).await;
    assert!(answer.is_ok(), "{answer:?}");
    close_all([net1, new]).await;
}

//! Real `raft_core::Node`s on `QuicNetwork` over loopback, with certificates generated into a
//! temporary directory (no manual step): a 3-node cluster elects a leader and commits, a
//! restarted node reconnects and catches up, and a follower left behind by log compaction gets
//! a multi-chunk InstallSnapshot, and a node is replaced in the live cluster (a joining node is
//! added as a voter, serves a ReadIndex read as a follower, takes leadership by transfer, and
//! the old leader is removed). Run under tokio and smol.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use raft_core::{Bytes, MembershipChange, Node, NodeId, NodeInfo, Runtime};
use raft_mem::harness::{test_config, BoxError, Cluster, RecordingStateMachine, Transport};
use raft_mem::{MemLogStore, MemSnapshotStore};
use raft_quic::{generate_cluster_certs, NodeTls, QuicConfig, QuicNetwork};

use common::{init_tracing, loopback};

/// A generous bound that turns a hang into a failure; never a speed assertion.
const PATIENCE: Duration = Duration::from_secs(30);

/// The QUIC endpoints of a cluster, with certificates generated into a temporary directory.
struct QuicTransport<R> {
    runtime: R,
    quic_runtime: Arc<dyn raft_quic::quinn::Runtime>,
    cert_dir: tempfile::TempDir,
    addrs: BTreeMap<NodeId, SocketAddr>,
    nets: BTreeMap<NodeId, QuicNetwork>,
    /// Nodes whose endpoint stays bound (refusing requests) while they are stopped, so that
    /// restarting them needs no rebind: a freed port could be taken by a concurrent test.
    keep_bound: BTreeSet<NodeId>,
    /// Nodes to bind at their next start knowing no peer address, at the address given,
    /// without telling anyone their address: only the membership will.
    unannounced: BTreeMap<NodeId, SocketAddr>,
}

impl<R: Runtime + Clone> QuicTransport<R> {
    /// Binds node `id`'s endpoint at `addr`, knowing the addresses of `peers`.
    fn bind_knowing(
        &self,
        id: NodeId,
        addr: SocketAddr,
        peers: &BTreeMap<NodeId, SocketAddr>,
    ) -> Result<QuicNetwork, raft_quic::BindError> {
        let tls = NodeTls::load(self.cert_dir.path().join("certs"), id).unwrap();
        let mut config = QuicConfig::new(id, addr, tls);
        config.connect_timeout = Duration::from_millis(300);
        config.backoff_min = Duration::from_millis(10);
        config.backoff_max = Duration::from_millis(200);
        for (&peer, &peer_addr) in peers {
            if peer != id {
                config.peers.insert(peer, peer_addr);
            }
        }
        QuicNetwork::bind(config, self.quic_runtime.clone())
    }

    fn bind(&self, id: NodeId, addr: SocketAddr) -> Result<QuicNetwork, raft_quic::BindError> {
        self.bind_knowing(id, addr, &self.addrs)
    }

    /// Binds at `addr`, retrying while an old socket of the node goes away.
    async fn bind_retrying(
        &self,
        id: NodeId,
        addr: SocketAddr,
        peers: &BTreeMap<NodeId, SocketAddr>,
    ) -> Option<QuicNetwork> {
        for _ in 0..50 {
            if let Ok(net) = self.bind_knowing(id, addr, peers) {
                return Some(net);
            }
            self.runtime.sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

#[async_trait]
impl<R: Runtime + Clone> Transport for QuicTransport<R> {
    type Network = QuicNetwork;

    async fn endpoint(&mut self, id: NodeId) -> Result<QuicNetwork, BoxError> {
        if let Some(net) = self.nets.get(&id) {
            // Bound before the first start, or kept bound while the node was stopped.
            return Ok(net.clone());
        }
        let net = if let Some(addr) = self.unannounced.remove(&id) {
            let net = self.bind_retrying(id, addr, &BTreeMap::new()).await.ok_or("no bind")?;
            self.addrs.insert(id, net.local_addr());
            net
        } else if let Some(&addr) = self.addrs.get(&id) {
            // A restart, on the old address. If a concurrent test took the freed port
            // meanwhile, on a fresh port, and the peers learn the new address, as an operator
            // would tell them.
            let addrs = self.addrs.clone();
            match self.bind_retrying(id, addr, &addrs).await {
                Some(net) => net,
                None => {
                    let net = self.bind(id, loopback())?;
                    let fresh = net.local_addr();
                    self.addrs.insert(id, fresh);
                    for (&other, peer_net) in &self.nets {
                        if other != id {
                            peer_net.set_peer(id, fresh);
                        }
                    }
                    net
                }
            }
        } else {
            // A new node: every other node learns its address.
            let net = self.bind(id, loopback())?;
            let addr = net.local_addr();
            for (&other, peer_net) in &self.nets {
                peer_net.set_peer(id, addr);
                net.set_peer(other, self.addrs[&other]);
            }
            self.addrs.insert(id, addr);
            net
        };
        self.nets.insert(id, net.clone());
        Ok(net)
    }

    fn serve(&mut self, id: NodeId, node: &Node) {
        self.nets[&id].serve(Arc::new(node.clone()));
    }

    async fn unserve(&mut self, id: NodeId) {
        if let Some(net) = self.nets.get(&id) {
            net.stop_serving();
        }
    }

    async fn release(&mut self, id: NodeId) {
        if !self.keep_bound.remove(&id) {
            if let Some(net) = self.nets.remove(&id) {
                net.close().await;
            }
        }
    }
}

type QuicCluster<R> = Cluster<R, QuicTransport<R>, MemLogStore, RecordingStateMachine>;

/// What the test keeps of each node's stores (clones share their contents with the node's).
struct Stores {
    logs: BTreeMap<NodeId, MemLogStore>,
    /// With snapshots: each node's snapshot store (compaction every 10 entries, 4 KiB chunks).
    snapshots: Option<BTreeMap<NodeId, MemSnapshotStore>>,
}

async fn start<R: Runtime + Clone>(
    n: u64,
    runtime: R,
    quic_runtime: Arc<dyn raft_quic::quinn::Runtime>,
) -> QuicCluster<R> {
    start_with(n, runtime, quic_runtime, false).await.0
}

/// Starts `n` founding voters on loopback, with stores for one more node added later.
async fn start_with<R: Runtime + Clone>(
    n: u64,
    runtime: R,
    quic_runtime: Arc<dyn raft_quic::quinn::Runtime>,
    snapshots: bool,
) -> (QuicCluster<R>, Stores) {
    let cert_dir = tempfile::tempdir().unwrap();
    // One spare certificate, for a node added later.
    generate_cluster_certs(cert_dir.path().join("ca"), cert_dir.path().join("certs"), 1..=n + 1)
        .unwrap();
    let mut transport = QuicTransport {
        runtime: runtime.clone(),
        quic_runtime,
        cert_dir,
        addrs: BTreeMap::new(),
        nets: BTreeMap::new(),
        keep_bound: BTreeSet::new(),
        unannounced: BTreeMap::new(),
    };
    // Bind every endpoint on port 0 first, to learn the addresses.
    for id in 1..=n {
        let net = transport.bind(id, loopback()).unwrap();
        transport.addrs.insert(id, net.local_addr());
        transport.nets.insert(id, net);
    }
    for (&id, net) in &transport.nets {
        for (&peer, &addr) in &transport.addrs {
            if peer != id {
                net.set_peer(peer, addr);
            }
        }
    }
    let stores = Stores {
        logs: (1..=n + 1).map(|id| (id, MemLogStore::new())).collect(),
        snapshots: snapshots.then(|| (1..=n + 1).map(|id| (id, MemSnapshotStore::new())).collect()),
    };
    let logs = stores.logs.clone();
    let mut builder = Cluster::builder(
        runtime,
        transport,
        1..=n,
        move |id| Ok(logs[&id].clone()),
        |_| RecordingStateMachine::new(),
    )
    .patience(PATIENCE);
    if let Some(snapshot_stores) = stores.snapshots.clone() {
        builder = builder
            .config(|id| {
                let mut config = test_config(id);
                config.snapshot_interval_entries = 10;
                config.snapshot_keep_entries = 0;
                config.snapshot_chunk_bytes = 4096;
                config
            })
            .snapshot_store(move |id| Ok(Some(snapshot_stores[&id].clone())));
    }
    let mut cluster = builder.build();
    cluster.start_all().await.unwrap();
    (cluster, stores)
}

/// Starts node `id` as a joining node that knows no peer address, on `addr`, without telling
/// anyone its address: only the membership will.
async fn start_unannounced<R: Runtime + Clone>(
    cluster: &mut QuicCluster<R>,
    id: NodeId,
    addr: SocketAddr,
) {
    cluster.transport_mut().unannounced.insert(id, addr);
    cluster.start(id).await.unwrap();
}

/// Stops node `id` but keeps its endpoint bound (refusing requests).
async fn pause<R: Runtime + Clone>(cluster: &mut QuicCluster<R>, id: NodeId) {
    cluster.transport_mut().keep_bound.insert(id);
    cluster.stop(id).await.unwrap();
}

async fn within<R: Runtime + Clone, T>(
    cluster: &QuicCluster<R>,
    what: &str,
    future: impl std::future::Future<Output = T>,
) -> T {
    cluster.within(what, future).await.unwrap()
}

/// Proposes on the leader until accepted and applied; returns the entry's index.
async fn write<R: Runtime + Clone>(cluster: &QuicCluster<R>, data: Bytes) -> u64 {
    let (index, response) = cluster.propose(data.clone()).await.unwrap();
    assert_eq!(response, data);
    index
}

fn node<R: Runtime + Clone>(cluster: &QuicCluster<R>, id: NodeId) -> &Node {
    cluster.node(id).unwrap()
}

/// Issue 17.1: a node joins with its address in the membership only (no `set_peer` anywhere),
/// serves follower reads by dialing the leader it learned from the log, learns every address
/// from its log again after a restart, and leads.
async fn adds_a_node_by_its_metadata_alone<R: Runtime + Clone>(
    runtime: R,
    quic: Arc<dyn raft_quic::quinn::Runtime>,
) {
    init_tracing();
    let mut cluster = start(3, runtime, quic).await;
    let leader = cluster.leader().await.unwrap();
    let mut last = 0;
    for i in 0..5u32 {
        last = write(&cluster, Bytes::from(format!("before-{i}"))).await;
    }
    start_unannounced(&mut cluster, 4, loopback()).await;
    let info = |cluster: &QuicCluster<R>, id| {
        NodeInfo::with_address(cluster.transport().addrs[&id].to_string())
    };
    let current = node(&cluster, leader).membership();
    let nodes: Vec<(NodeId, NodeInfo)> = (1..=4).map(|id| (id, info(&cluster, id))).collect();
    let target = current.target([1, 2, 3, 4], [], nodes).unwrap();
    let set = node(&cluster, leader).set_membership(target.clone(), PATIENCE);
    assert_eq!(within(&cluster, "set_membership", set).await.unwrap(), target);
    let index = within(&cluster, "a follower read", node(&cluster, 4).read_index()).await.unwrap();
    assert!(index >= last);

    // Restarted with an endpoint that knows no peer, node 4 learns them from its log.
    let addr = cluster.transport().addrs[&4];
    cluster.stop(4).await.unwrap();
    start_unannounced(&mut cluster, 4, addr).await;
    assert_eq!(cluster.transport().addrs[&4], addr);
    last = write(&cluster, Bytes::from_static(b"after restart")).await;
    let read = within(&cluster, "a read after the restart", async {
        loop {
            match node(&cluster, 4).read_index().await {
                Ok(index) if index >= last => return index,
                _ => cluster.runtime().sleep(Duration::from_millis(20)).await,
            }
        }
    });
    assert!(read.await >= last);
    within(&cluster, "a transfer to node 4", node(&cluster, leader).transfer_leadership(4))
        .await
        .unwrap();
    last = write(&cluster, Bytes::from_static(b"led by 4")).await;
    cluster.wait_applied(last).await.unwrap();
    assert_eq!(cluster.commands(4), cluster.commands(leader));
    cluster.stop_all().await.unwrap();
}

async fn elects_and_commits<R: Runtime + Clone>(
    runtime: R,
    quic: Arc<dyn raft_quic::quinn::Runtime>,
) {
    init_tracing();
    let mut cluster = start(3, runtime, quic).await;
    let leader = cluster.leader().await.unwrap();
    assert!(cluster.voters().contains(&leader));
    let mut last = 0;
    let mut expected = Vec::new();
    for i in 0..20u32 {
        let data = Bytes::from(format!("cmd-{i}"));
        last = write(&cluster, data.clone()).await;
        expected.push(data);
    }
    // A batch large enough to span many QUIC packets (and several entries per AppendEntries).
    let big = Bytes::from(vec![7u8; 256 << 10]);
    last = last.max(write(&cluster, big.clone()).await);
    expected.push(big);
    cluster.wait_applied(last).await.unwrap();
    for id in cluster.running() {
        assert_eq!(cluster.commands(id), expected, "node {id} applied a different sequence");
    }
    cluster.stop_all().await.unwrap();
}

async fn restarted_node_catches_up<R: Runtime + Clone>(
    runtime: R,
    quic: Arc<dyn raft_quic::quinn::Runtime>,
) {
    init_tracing();
    let mut cluster = start(3, runtime, quic).await;
    let leader = cluster.leader().await.unwrap();
    for i in 0..5u32 {
        write(&cluster, Bytes::from(format!("before-{i}"))).await;
    }
    // Restart a follower; the other two keep committing while it is down.
    let follower = *cluster.voters().iter().find(|&&id| id != leader).unwrap();
    cluster.stop(follower).await.unwrap();
    for i in 0..10u32 {
        write(&cluster, Bytes::from(format!("while-down-{i}"))).await;
    }
    cluster.start(follower).await.unwrap();
    let mut last = 0;
    for i in 0..5u32 {
        last = write(&cluster, Bytes::from(format!("after-{i}"))).await;
    }
    cluster.wait_applied(last).await.unwrap();
    let reference = cluster.commands(leader);
    assert_eq!(reference.len(), 20);
    assert_eq!(cluster.commands(follower), reference, "the restarted node did not catch up");
    cluster.stop_all().await.unwrap();
}

async fn lagging_follower_installs_snapshot<R: Runtime + Clone>(
    runtime: R,
    quic: Arc<dyn raft_quic::quinn::Runtime>,
) {
    init_tracing();
    let (mut cluster, stores) = start_with(3, runtime, quic, true).await;
    let leader = cluster.leader().await.unwrap();
    let follower = *cluster.voters().iter().find(|&&id| id != leader).unwrap();
    pause(&mut cluster, follower).await;
    // About 60 KiB of state: the snapshot travels in about 15 chunks of 4 KiB.
    for i in 0..60u32 {
        write(&cluster, Bytes::from(format!("{i:04}-{}", "x".repeat(1000)))).await;
    }
    let compacted = stores.logs[&leader].purged().index;
    assert!(compacted > 40, "the leader compacted its log (to {compacted})");
    cluster.start(follower).await.unwrap();
    let last = write(&cluster, Bytes::from_static(b"after")).await;
    cluster.wait_applied(last).await.unwrap();
    let restored = cluster.restored(follower);
    assert!(!restored.is_empty() && restored[0].index > 40, "installed: {restored:?}");
    let size = stores.snapshots.as_ref().unwrap()[&follower].latest_meta().unwrap().size;
    assert!(size > 8 * 4096, "a multi-chunk snapshot ({size} bytes)");
    assert_eq!(cluster.commands(follower), cluster.commands(leader));
    cluster.stop_all().await.unwrap();
}

async fn replaces_a_node_live<R: Runtime + Clone>(
    runtime: R,
    quic: Arc<dyn raft_quic::quinn::Runtime>,
) {
    init_tracing();
    let mut cluster = start(3, runtime, quic).await;
    let old_leader = cluster.leader().await.unwrap();
    let mut last = 0;
    for i in 0..10u32 {
        last = write(&cluster, Bytes::from(format!("before-{i}"))).await;
    }
    cluster.start(4).await.unwrap();
    let leader = node(&cluster, old_leader);
    let membership = within(
        &cluster,
        "adding node 4",
        leader.add_voter(4, NodeInfo::default(), Duration::from_secs(10)),
    )
    .await
    .unwrap();
    assert_eq!(membership.voters(), &[1, 2, 3, 4].into());

    // The new node serves a linearizable read as a follower (it asks the leader).
    let index = within(&cluster, "a follower read", node(&cluster, 4).read_index()).await.unwrap();
    assert!(index >= last, "read index {index} covers the write at {last}");
    assert_eq!(cluster.commands(4).len(), 10);

    // Hand leadership to the new node, then remove the old leader through it.
    within(&cluster, "a transfer", node(&cluster, old_leader).transfer_leadership(4))
        .await
        .unwrap();
    assert_eq!(cluster.leader().await.unwrap(), 4);
    let change = node(&cluster, 4).change_membership(MembershipChange::RemoveNode(old_leader));
    let membership = within(&cluster, "removing the old leader", change).await.unwrap();
    assert_eq!(membership.voters().len(), 3);
    assert!(!membership.voters().contains(&old_leader));
    cluster.stop(old_leader).await.unwrap();
    for i in 0..5u32 {
        last = write(&cluster, Bytes::from(format!("after-{i}"))).await;
    }
    cluster.wait_applied(last).await.unwrap();
    for id in cluster.running() {
        assert_eq!(cluster.commands(id), cluster.commands(4), "node {id}");
    }
    assert_eq!(cluster.commands(4).len(), 15);
    cluster.stop_all().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_replaces_a_node_live() {
    let rt = raft_core::runtime::TokioRuntime::current().unwrap();
    replaces_a_node_live(rt, Arc::new(raft_quic::quinn::TokioRuntime)).await;
}

#[test]
fn smol_replaces_a_node_live() {
    smol::block_on(replaces_a_node_live(
        raft_core::runtime::SmolRuntime,
        Arc::new(raft_quic::quinn::SmolRuntime),
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_lagging_follower_installs_snapshot() {
    let rt = raft_core::runtime::TokioRuntime::current().unwrap();
    lagging_follower_installs_snapshot(rt, Arc::new(raft_quic::quinn::TokioRuntime)).await;
}

#[test]
fn smol_lagging_follower_installs_snapshot() {
    smol::block_on(lagging_follower_installs_snapshot(
        raft_core::runtime::SmolRuntime,
        Arc::new(raft_quic::quinn::SmolRuntime),
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_three_nodes_elect_and_commit() {
    let rt = raft_core::runtime::TokioRuntime::current().unwrap();
    elects_and_commits(rt, Arc::new(raft_quic::quinn::TokioRuntime)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_restarted_node_catches_up() {
    let rt = raft_core::runtime::TokioRuntime::current().unwrap();
    restarted_node_catches_up(rt, Arc::new(raft_quic::quinn::TokioRuntime)).await;
}

#[test]
fn smol_three_nodes_elect_and_commit() {
    smol::block_on(elects_and_commits(
        raft_core::runtime::SmolRuntime,
        Arc::new(raft_quic::quinn::SmolRuntime),
    ));
}

#[test]
fn smol_restarted_node_catches_up() {
    smol::block_on(restarted_node_catches_up(
        raft_core::runtime::SmolRuntime,
        Arc::new(raft_quic::quinn::SmolRuntime),
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_adds_a_node_by_its_metadata_alone() {
    let rt = raft_core::runtime::TokioRuntime::current().unwrap();
    adds_a_node_by_its_metadata_alone(rt, Arc::new(raft_quic::quinn::TokioRuntime)).await;
}

#[test]
fn smol_adds_a_node_by_its_metadata_alone() {
    smol::block_on(adds_a_node_by_its_metadata_alone(
        raft_core::runtime::SmolRuntime,
        Arc::new(raft_quic::quinn::SmolRuntime),
    ));
}

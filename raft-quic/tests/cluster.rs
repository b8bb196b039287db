//! Real `raft_core::Node`s on `QuicNetwork` over loopback, with certificates generated into a
//! temporary directory (no manual step): a 3-node cluster elects a leader and commits, a
//! restarted node reconnects and catches up, and a follower left behind by log compaction gets
//! a multi-chunk InstallSnapshot, and a node is replaced in the live cluster (a joining node is
//! added as a voter, serves a ReadIndex read as a follower, takes leadership by transfer, and
//! the old leader is removed). Run under tokio and smol.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use raft_core::{
    Bytes, Config, Entry, LogId, MembershipChange, Node, NodeId, NodeInfo, ProposeError, Role,
    Runtime, SnapshotMeta, SnapshotStream, StateMachine, StateMachineError, Status,
};
use raft_mem::{MemLogStore, MemSnapshotStore};
use raft_quic::{generate_cluster_certs, NodeTls, QuicConfig, QuicNetwork};

use common::{init_tracing, loopback};

/// A generous bound that turns a hang into a failure; never a speed assertion.
const PATIENCE: Duration = Duration::from_secs(30);

/// Records every applied entry; answers each command with its own bytes. Its snapshot is the
/// list of applied entries.
#[derive(Clone, Default)]
struct Recorder {
    applied: Arc<Mutex<Vec<Entry>>>,
    restored: Arc<Mutex<Vec<LogId>>>,
}

#[async_trait]
impl StateMachine for Recorder {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        self.applied.lock().unwrap().extend(entries.iter().cloned());
        Ok(entries.iter().map(|e| e.command().cloned().unwrap_or_default()).collect())
    }

    async fn snapshot(&mut self) -> Result<Option<SnapshotStream>, StateMachineError> {
        let encoded = postcard::to_allocvec(&*self.applied.lock().unwrap()).unwrap();
        let chunks: Vec<Result<Bytes, StateMachineError>> =
            encoded.chunks(1000).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        Ok(Some(futures::stream::iter(chunks).boxed()))
    }

    async fn restore(
        &mut self,
        meta: &SnapshotMeta,
        mut data: SnapshotStream,
    ) -> Result<(), StateMachineError> {
        let mut encoded = Vec::new();
        while let Some(chunk) = data.next().await {
            encoded.extend_from_slice(&chunk?);
        }
        let entries: Vec<Entry> =
            postcard::from_bytes(&encoded).map_err(|e| StateMachineError::new(e.to_string()))?;
        *self.applied.lock().unwrap() = entries;
        self.restored.lock().unwrap().push(meta.last_included);
        Ok(())
    }
}

fn raft_config(id: NodeId, ids: &[NodeId]) -> Config {
    let mut config = Config::new(id, ids.iter().copied());
    config.tick_interval_ms = 5;
    config.heartbeat_interval_ms = 25;
    config.election_timeout_ms_min = 150;
    config.election_timeout_ms_max = 300;
    config
}

struct QuicCluster<R: Runtime + Clone> {
    runtime: R,
    quic_runtime: Arc<dyn raft_quic::quinn::Runtime>,
    cert_dir: tempfile::TempDir,
    ids: Vec<NodeId>,
    addrs: BTreeMap<NodeId, SocketAddr>,
    stores: BTreeMap<NodeId, MemLogStore>,
    /// With snapshots: each node's snapshot store (compaction every 10 entries, 4 KiB chunks).
    snapshot_stores: Option<BTreeMap<NodeId, MemSnapshotStore>>,
    nets: BTreeMap<NodeId, QuicNetwork>,
    nodes: BTreeMap<NodeId, Node>,
    recorders: BTreeMap<NodeId, Recorder>,
}

impl<R: Runtime + Clone> QuicCluster<R> {
    async fn start(n: u64, runtime: R, quic_runtime: Arc<dyn raft_quic::quinn::Runtime>) -> Self {
        Self::start_with(n, runtime, quic_runtime, false).await
    }

    async fn start_with(
        n: u64,
        runtime: R,
        quic_runtime: Arc<dyn raft_quic::quinn::Runtime>,
        snapshots: bool,
    ) -> Self {
        let ids: Vec<NodeId> = (1..=n).collect();
        let cert_dir = tempfile::tempdir().unwrap();
        // One spare certificate, for a node added later.
        generate_cluster_certs(
            cert_dir.path().join("ca"),
            cert_dir.path().join("certs"),
            1..=n + 1,
        )
        .unwrap();
        let mut cluster = Self {
            runtime,
            quic_runtime,
            cert_dir,
            stores: ids.iter().map(|&id| (id, MemLogStore::new())).collect(),
            snapshot_stores: snapshots
                .then(|| ids.iter().map(|&id| (id, MemSnapshotStore::new())).collect()),
            ids,
            addrs: BTreeMap::new(),
            nets: BTreeMap::new(),
            nodes: BTreeMap::new(),
            recorders: BTreeMap::new(),
        };
        // Bind every endpoint on port 0 first, to learn the addresses.
        for id in cluster.ids.clone() {
            let net = cluster.bind(id, loopback()).unwrap();
            cluster.addrs.insert(id, net.local_addr());
            cluster.nets.insert(id, net);
        }
        for (&id, net) in &cluster.nets {
            for (&peer, &addr) in &cluster.addrs {
                if peer != id {
                    net.set_peer(peer, addr);
                }
            }
        }
        for id in cluster.ids.clone() {
            cluster.start_node(id).await;
        }
        cluster
    }

    fn bind(&self, id: NodeId, addr: SocketAddr) -> Result<QuicNetwork, raft_quic::BindError> {
        self.bind_knowing(id, addr, &self.addrs)
    }

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

    /// Binds and starts node `id` as a joining node that knows no peer address, on `addr`
    /// (retrying while an old socket of it goes away), without telling anyone its address:
    /// only the membership will.
    async fn start_unannounced(&mut self, id: NodeId, addr: SocketAddr) {
        let mut bound = self.bind_knowing(id, addr, &BTreeMap::new());
        for _ in 0..50 {
            if bound.is_ok() {
                break;
            }
            self.runtime.sleep(Duration::from_millis(20)).await;
            bound = self.bind_knowing(id, addr, &BTreeMap::new());
        }
        let net = bound.unwrap();
        self.addrs.insert(id, net.local_addr());
        self.nets.insert(id, net);
        self.stores.entry(id).or_default();
        if !self.ids.contains(&id) {
            self.ids.push(id);
        }
        self.start_node(id).await;
    }

    /// Binds and starts node `id` as a node joining the cluster (no initial voters), and tells
    /// every other node its address.
    async fn add_node(&mut self, id: NodeId) {
        let net = self.bind(id, loopback()).unwrap();
        let addr = net.local_addr();
        for (&other, peer_net) in &self.nets {
            peer_net.set_peer(id, addr);
            net.set_peer(other, self.addrs[&other]);
        }
        self.addrs.insert(id, addr);
        self.nets.insert(id, net);
        self.stores.insert(id, MemLogStore::new());
        self.ids.push(id);
        self.start_node(id).await;
    }

    async fn start_node(&mut self, id: NodeId) {
        let recorder = Recorder::default();
        let net = self.nets[&id].clone();
        let founders: Vec<NodeId> = self.ids.iter().copied().filter(|&i| i <= 3).collect();
        let mut config = if founders.contains(&id) {
            raft_config(id, &founders)
        } else {
            let mut c = raft_config(id, &[id]);
            c.voters.clear();
            c
        };
        let mut builder = Node::builder(
            config.clone(),
            self.stores[&id].clone(),
            net.clone(),
            recorder.clone(),
            self.runtime.clone(),
        );
        if let Some(stores) = &self.snapshot_stores {
            config.snapshot_interval_entries = 10;
            config.snapshot_keep_entries = 0;
            config.snapshot_chunk_bytes = 4096;
            builder = Node::builder(
                config,
                self.stores[&id].clone(),
                net.clone(),
                recorder.clone(),
                self.runtime.clone(),
            )
            .snapshot_store(stores[&id].clone());
        }
        let node = builder.start().await.unwrap();
        net.serve(Arc::new(node.clone()));
        self.nodes.insert(id, node);
        self.recorders.insert(id, recorder);
    }

    /// Stops node `id` and its endpoint; its store keeps what was durable.
    async fn stop(&mut self, id: NodeId) {
        if let Some(node) = self.nodes.remove(&id) {
            node.shutdown().await;
        }
        if let Some(net) = self.nets.remove(&id) {
            net.close().await;
        }
    }

    /// Stops node `id` but keeps its endpoint bound (refusing requests), so that restarting it
    /// needs no rebind: a freed port could be taken by a concurrent test.
    async fn pause(&mut self, id: NodeId) {
        self.nets[&id].stop_serving();
        if let Some(node) = self.nodes.remove(&id) {
            node.shutdown().await;
        }
    }

    /// Starts node `id` again on its old address (the old socket may take a moment to go). If
    /// a concurrent test took the freed port meanwhile, it restarts on a fresh port and the
    /// peers learn the new address, as an operator would tell them.
    async fn restart(&mut self, id: NodeId) {
        let addr = self.addrs[&id];
        let mut rebound = None;
        for _ in 0..50 {
            match self.bind(id, addr) {
                Ok(net) => {
                    rebound = Some(net);
                    break;
                }
                Err(_) => self.runtime.sleep(Duration::from_millis(20)).await,
            }
        }
        let net = match rebound {
            Some(net) => net,
            None => {
                let net = self.bind(id, loopback()).unwrap();
                let fresh = net.local_addr();
                self.addrs.insert(id, fresh);
                for (&other, peer_net) in &self.nets {
                    if other != id {
                        peer_net.set_peer(id, fresh);
                    }
                }
                net
            }
        };
        self.nets.insert(id, net);
        self.start_node(id).await;
    }

    async fn shutdown(mut self) {
        for id in self.ids.clone() {
            self.stop(id).await;
        }
    }

    async fn within<T>(&self, what: &str, future: impl std::future::Future<Output = T>) -> T {
        futures::select! {
            value = future.fuse() => value,
            _ = self.runtime.sleep(PATIENCE).fuse() => panic!("timed out waiting for {what}"),
        }
    }

    /// Waits until exactly one running node leads and every running node follows it.
    async fn wait_for_leader(&self) -> NodeId {
        self.within("a leader", async {
            loop {
                let statuses: Vec<Status> = self.nodes.values().map(Node::status).collect();
                let leaders: Vec<&Status> =
                    statuses.iter().filter(|s| s.role == Role::Leader).collect();
                if let [leader] = leaders[..] {
                    if statuses.iter().all(|s| {
                        s.current_term == leader.current_term && s.leader_id == Some(leader.id)
                    }) {
                        return leader.id;
                    }
                }
                self.runtime.sleep(Duration::from_millis(5)).await;
            }
        })
        .await
    }

    /// Proposes on the leader until accepted and applied; returns the entry's index.
    async fn write(&self, data: Bytes) -> u64 {
        self.within("a write", async {
            loop {
                let leader = self.wait_for_leader().await;
                match self.nodes[&leader].propose(data.clone()).await {
                    Ok(proposal) => {
                        let index = proposal.index;
                        if let Ok(response) = proposal.response().await {
                            assert_eq!(response, data);
                            return index;
                        }
                    }
                    Err(ProposeError::NotLeader { .. }) => {}
                    Err(e) => panic!("propose failed: {e}"),
                }
                self.runtime.sleep(Duration::from_millis(5)).await;
            }
        })
        .await
    }

    async fn wait_applied(&self, index: u64) {
        for node in self.nodes.values() {
            let mut watch = node.watch();
            self.within("applies", watch.wait_for(|s| s.applied_index >= index)).await;
        }
    }

    fn commands(&self, id: NodeId) -> Vec<Bytes> {
        let applied = self.recorders[&id].applied.lock().unwrap();
        applied.iter().filter_map(|e| e.command().cloned()).collect()
    }
}

/// Issue 17.1: a node joins with its address in the membership only (no `set_peer` anywhere),
/// serves follower reads by dialing the leader it learned from the log, learns every address
/// from its log again after a restart, and leads.
async fn adds_a_node_by_its_metadata_alone<R: Runtime + Clone>(
    runtime: R,
    quic: Arc<dyn raft_quic::quinn::Runtime>,
) {
    init_tracing();
    let mut cluster = QuicCluster::start(3, runtime, quic).await;
    let leader = cluster.wait_for_leader().await;
    let mut last = 0;
    for i in 0..5u32 {
        last = cluster.write(Bytes::from(format!("before-{i}"))).await;
    }
    cluster.start_unannounced(4, loopback()).await;
    let info =
        |cluster: &QuicCluster<R>, id| NodeInfo::with_address(cluster.addrs[&id].to_string());
    let current = cluster.nodes[&leader].membership();
    let nodes: Vec<(NodeId, NodeInfo)> = (1..=4).map(|id| (id, info(&cluster, id))).collect();
    let target = current.target([1, 2, 3, 4], [], nodes).unwrap();
    let set = cluster.nodes[&leader].set_membership(target.clone(), PATIENCE);
    assert_eq!(cluster.within("set_membership", set).await.unwrap(), target);
    let index = cluster.within("a follower read", cluster.nodes[&4].read_index()).await.unwrap();
    assert!(index >= last);

    // Restarted with an endpoint that knows no peer, node 4 learns them from its log.
    let addr = cluster.addrs[&4];
    cluster.stop(4).await;
    cluster.start_unannounced(4, addr).await;
    assert_eq!(cluster.addrs[&4], addr);
    last = cluster.write(Bytes::from_static(b"after restart")).await;
    let read = cluster.within("a read after the restart", async {
        loop {
            match cluster.nodes[&4].read_index().await {
                Ok(index) if index >= last => return index,
                _ => cluster.runtime.sleep(Duration::from_millis(20)).await,
            }
        }
    });
    assert!(read.await >= last);
    cluster
        .within("a transfer to node 4", cluster.nodes[&leader].transfer_leadership(4))
        .await
        .unwrap();
    last = cluster.write(Bytes::from_static(b"led by 4")).await;
    cluster.wait_applied(last).await;
    assert_eq!(cluster.commands(4), cluster.commands(leader));
    cluster.shutdown().await;
}

async fn elects_and_commits<R: Runtime + Clone>(
    runtime: R,
    quic: Arc<dyn raft_quic::quinn::Runtime>,
) {
    init_tracing();
    let cluster = QuicCluster::start(3, runtime, quic).await;
    let leader = cluster.wait_for_leader().await;
    assert!(cluster.ids.contains(&leader));
    let mut last = 0;
    let mut expected = Vec::new();
    for i in 0..20u32 {
        let data = Bytes::from(format!("cmd-{i}"));
        last = cluster.write(data.clone()).await;
        expected.push(data);
    }
    // A batch large enough to span many QUIC packets (and several entries per AppendEntries).
    let big = Bytes::from(vec![7u8; 256 << 10]);
    last = last.max(cluster.write(big.clone()).await);
    expected.push(big);
    cluster.wait_applied(last).await;
    for &id in &cluster.ids {
        assert_eq!(cluster.commands(id), expected, "node {id} applied a different sequence");
    }
    cluster.shutdown().await;
}

async fn restarted_node_catches_up<R: Runtime + Clone>(
    runtime: R,
    quic: Arc<dyn raft_quic::quinn::Runtime>,
) {
    init_tracing();
    let mut cluster = QuicCluster::start(3, runtime, quic).await;
    let leader = cluster.wait_for_leader().await;
    for i in 0..5u32 {
        cluster.write(Bytes::from(format!("before-{i}"))).await;
    }
    // Restart a follower; the other two keep committing while it is down.
    let follower = *cluster.ids.iter().find(|&&id| id != leader).unwrap();
    cluster.stop(follower).await;
    for i in 0..10u32 {
        cluster.write(Bytes::from(format!("while-down-{i}"))).await;
    }
    cluster.restart(follower).await;
    let mut last = 0;
    for i in 0..5u32 {
        last = cluster.write(Bytes::from(format!("after-{i}"))).await;
    }
    cluster.wait_applied(last).await;
    let reference = cluster.commands(leader);
    assert_eq!(reference.len(), 20);
    assert_eq!(cluster.commands(follower), reference, "the restarted node did not catch up");
    cluster.shutdown().await;
}

async fn lagging_follower_installs_snapshot<R: Runtime + Clone>(
    runtime: R,
    quic: Arc<dyn raft_quic::quinn::Runtime>,
) {
    init_tracing();
    let mut cluster = QuicCluster::start_with(3, runtime, quic, true).await;
    let leader = cluster.wait_for_leader().await;
    let follower = *cluster.ids.iter().find(|&&id| id != leader).unwrap();
    cluster.pause(follower).await;
    // About 60 KiB of state: the snapshot travels in about 15 chunks of 4 KiB.
    for i in 0..60u32 {
        cluster.write(Bytes::from(format!("{i:04}-{}", "x".repeat(1000)))).await;
    }
    let compacted = cluster.stores[&leader].purged().index;
    assert!(compacted > 40, "the leader compacted its log (to {compacted})");
    cluster.start_node(follower).await;
    let last = cluster.write(Bytes::from_static(b"after")).await;
    cluster.wait_applied(last).await;
    let restored = cluster.recorders[&follower].restored.lock().unwrap().clone();
    assert!(!restored.is_empty() && restored[0].index > 40, "installed: {restored:?}");
    let size = cluster.snapshot_stores.as_ref().unwrap()[&follower].latest_meta().unwrap().size;
    assert!(size > 8 * 4096, "a multi-chunk snapshot ({size} bytes)");
    assert_eq!(cluster.commands(follower), cluster.commands(leader));
    cluster.shutdown().await;
}

async fn replaces_a_node_live<R: Runtime + Clone>(
    runtime: R,
    quic: Arc<dyn raft_quic::quinn::Runtime>,
) {
    init_tracing();
    let mut cluster = QuicCluster::start(3, runtime, quic).await;
    let old_leader = cluster.wait_for_leader().await;
    let mut last = 0;
    for i in 0..10u32 {
        last = cluster.write(Bytes::from(format!("before-{i}"))).await;
    }
    cluster.add_node(4).await;
    let leader = &cluster.nodes[&old_leader];
    let membership = cluster
        .within("adding node 4", leader.add_voter(4, NodeInfo::default(), Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(membership.voters(), &[1, 2, 3, 4].into());

    // The new node serves a linearizable read as a follower (it asks the leader).
    let index = cluster.within("a follower read", cluster.nodes[&4].read_index()).await.unwrap();
    assert!(index >= last, "read index {index} covers the write at {last}");
    assert_eq!(cluster.commands(4).len(), 10);

    // Hand leadership to the new node, then remove the old leader through it.
    cluster.within("a transfer", cluster.nodes[&old_leader].transfer_leadership(4)).await.unwrap();
    assert_eq!(cluster.wait_for_leader().await, 4);
    let change = cluster.nodes[&4].change_membership(MembershipChange::RemoveNode(old_leader));
    let membership = cluster.within("removing the old leader", change).await.unwrap();
    assert_eq!(membership.voters().len(), 3);
    assert!(!membership.voters().contains(&old_leader));
    cluster.stop(old_leader).await;
    cluster.ids.retain(|&id| id != old_leader);
    for i in 0..5u32 {
        last = cluster.write(Bytes::from(format!("after-{i}"))).await;
    }
    cluster.wait_applied(last).await;
    for &id in &cluster.ids {
        assert_eq!(cluster.commands(id), cluster.commands(4), "node {id}");
    }
    assert_eq!(cluster.commands(4).len(), 15);
    cluster.shutdown().await;
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

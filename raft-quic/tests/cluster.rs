//! Real `raft_core::Node`s on `QuicNetwork` over loopback, with certificates generated into a
//! temporary directory (no manual step): a 3-node cluster elects a leader and commits, and a
//! restarted node reconnects and catches up. Run under tokio and smol.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use raft_core::{
    Bytes, Config, Entry, Node, NodeId, ProposeError, Role, Runtime, StateMachine,
    StateMachineError, Status,
};
use raft_mem::MemLogStore;
use raft_quic::{generate_cluster_certs, NodeTls, QuicConfig, QuicNetwork};

use common::{init_tracing, loopback};

/// A generous bound that turns a hang into a failure; never a speed assertion.
const PATIENCE: Duration = Duration::from_secs(30);

/// Records every applied entry; answers each command with its own bytes.
#[derive(Clone, Default)]
struct Recorder {
    applied: Arc<Mutex<Vec<Entry>>>,
}

#[async_trait]
impl StateMachine for Recorder {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        self.applied.lock().unwrap().extend(entries.iter().cloned());
        Ok(entries.iter().map(|e| e.command().cloned().unwrap_or_default()).collect())
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
    nets: BTreeMap<NodeId, QuicNetwork>,
    nodes: BTreeMap<NodeId, Node>,
    recorders: BTreeMap<NodeId, Recorder>,
}

impl<R: Runtime + Clone> QuicCluster<R> {
    async fn start(n: u64, runtime: R, quic_runtime: Arc<dyn raft_quic::quinn::Runtime>) -> Self {
        let ids: Vec<NodeId> = (1..=n).collect();
        let cert_dir = tempfile::tempdir().unwrap();
        generate_cluster_certs(cert_dir.path(), ids.iter().copied()).unwrap();
        let mut cluster = Self {
            runtime,
            quic_runtime,
            cert_dir,
            stores: ids.iter().map(|&id| (id, MemLogStore::new())).collect(),
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
        let tls = NodeTls::load(self.cert_dir.path(), id).unwrap();
        let mut config = QuicConfig::new(id, addr, tls);
        config.connect_timeout = Duration::from_millis(300);
        config.backoff_min = Duration::from_millis(10);
        config.backoff_max = Duration::from_millis(200);
        for (&peer, &peer_addr) in &self.addrs {
            if peer != id {
                config.peers.insert(peer, peer_addr);
            }
        }
        QuicNetwork::bind(config, self.quic_runtime.clone())
    }

    async fn start_node(&mut self, id: NodeId) {
        let recorder = Recorder::default();
        let net = self.nets[&id].clone();
        let node = Node::start(
            raft_config(id, &self.ids),
            self.stores[&id].clone(),
            net.clone(),
            recorder.clone(),
            self.runtime.clone(),
        )
        .await
        .unwrap();
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

    /// Starts node `id` again on its old address (the old socket may take a moment to go).
    async fn restart(&mut self, id: NodeId) {
        let addr = self.addrs[&id];
        let net = self
            .within("rebinding the restarted node", async {
                loop {
                    match self.bind(id, addr) {
                        Ok(net) => return net,
                        Err(_) => self.runtime.sleep(Duration::from_millis(20)).await,
                    }
                }
            })
            .await;
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

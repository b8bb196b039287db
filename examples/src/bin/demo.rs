//! The one-command demo: a 3-node cluster, writes, a leader crash, re-election, the crashed node
//! restarted and caught up, every write verified.
//!
//! `cargo run --release -p examples --bin demo`
//!
//! This version runs the nodes in one process on the in-memory backends (`raft-mem`); the
//! QUIC + LMDB version replaces it when the key-value service lands.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use raft_core::runtime::TokioRuntime;
use raft_core::{
    Bytes, Config, Entry, Node, NodeId, ProposeError, Role, StateMachine, StateMachineError,
};
use raft_mem::{MemLogStore, MemNetwork};

const KEYS: usize = 2_000;

/// A tiny key-value map: commands are `key=value`.
#[derive(Clone, Default)]
struct KvMap(Arc<Mutex<BTreeMap<String, String>>>);

#[async_trait]
impl StateMachine for KvMap {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        let mut map = self.0.lock().map_err(|_| StateMachineError::new("map lock poisoned"))?;
        for entry in entries {
            if let Some(command) = entry.command() {
                let text = std::str::from_utf8(command)
                    .map_err(|e| StateMachineError::new(e.to_string()))?;
                if let Some((key, value)) = text.split_once('=') {
                    map.insert(key.to_owned(), value.to_owned());
                }
            }
        }
        Ok(vec![Bytes::new(); entries.len()])
    }
}

struct Cluster {
    network: MemNetwork,
    stores: BTreeMap<NodeId, MemLogStore>,
    nodes: BTreeMap<NodeId, Node>,
    maps: BTreeMap<NodeId, KvMap>,
    runtime: TokioRuntime,
}

impl Cluster {
    async fn boot(&mut self, id: NodeId) -> Result<(), Box<dyn std::error::Error>> {
        let map = KvMap::default();
        let node = Node::start(
            Config::new(id, [1, 2, 3]),
            self.stores[&id].clone(),
            self.network.endpoint(id),
            map.clone(),
            self.runtime.clone(),
        )
        .await?;
        self.network.register(id, Arc::new(node.clone()));
        self.nodes.insert(id, node);
        self.maps.insert(id, map);
        Ok(())
    }

    async fn leader(&self, timeout: Duration) -> Option<NodeId> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(node) = self.nodes.values().find(|n| n.status().role == Role::Leader) {
                return Some(node.id());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        None
    }

    async fn put(&self, key: usize) -> Result<(), Box<dyn std::error::Error>> {
        let command = Bytes::from(format!("key-{key}=value-{key}"));
        for _ in 0..1000 {
            let leader = self.leader(Duration::from_secs(5)).await.ok_or("no leader")?;
            match self.nodes[&leader].propose(command.clone()).await {
                Ok(proposal) => {
                    if proposal.response().await.is_ok() {
                        return Ok(());
                    }
                }
                Err(ProposeError::NotLeader { .. }) => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err("write did not succeed after 1000 attempts".into())
    }
}

fn progress(label: &str, done: usize, total: usize) {
    let width = 40;
    let filled = done * width / total.max(1);
    print!("\r  {label:<22} [{}{}] {done}/{total}", "#".repeat(filled), " ".repeat(width - filled));
    if done == total {
        println!();
    }
    let _ = std::io::Write::flush(&mut std::io::stdout());
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let runtime = TokioRuntime::current().ok_or("no tokio runtime")?;
    let mut cluster = Cluster {
        network: MemNetwork::new(),
        stores: (1..=3).map(|id| (id, MemLogStore::new())).collect(),
        nodes: BTreeMap::new(),
        maps: BTreeMap::new(),
        runtime,
    };
    println!("Starting a 3-node Raft cluster (in-process, in-memory backends)...");
    for id in 1..=3 {
        cluster.boot(id).await?;
    }
    let t = Instant::now();
    let first_leader = cluster.leader(Duration::from_secs(10)).await.ok_or("no leader elected")?;
    let election = t.elapsed();
    println!("  node {first_leader} elected leader in {election:?}");

    let half = KEYS / 2;
    let t = Instant::now();
    for key in 0..half {
        cluster.put(key).await?;
        if key % 50 == 49 || key + 1 == half {
            progress("writing keys", key + 1, half);
        }
    }
    let write_rate = half as f64 / t.elapsed().as_secs_f64();

    println!("Crashing the leader, node {first_leader}...");
    cluster.network.unregister(first_leader);
    cluster.network.disconnect(first_leader);
    if let Some(node) = cluster.nodes.remove(&first_leader) {
        node.shutdown().await;
    }
    let t = Instant::now();
    let second_leader = cluster.leader(Duration::from_secs(10)).await.ok_or("no re-election")?;
    let failover = t.elapsed();
    println!("  node {second_leader} took over in {failover:?}");

    for key in half..KEYS {
        cluster.put(key).await?;
        if key % 50 == 49 || key + 1 == KEYS {
            progress("writing more keys", key + 1 - half, KEYS - half);
        }
    }

    println!("Restarting node {first_leader} from its log...");
    cluster.network.reconnect(first_leader);
    let t = Instant::now();
    cluster.boot(first_leader).await?;
    let target = cluster.nodes[&second_leader].status().commit_index;
    let mut watch = cluster.nodes[&first_leader].watch();
    tokio::time::timeout(Duration::from_secs(20), watch.wait_for(|s| s.applied_index >= target))
        .await
        .map_err(|_| "restarted node did not catch up")?;
    let catch_up = t.elapsed();
    println!("  node {first_leader} caught up to index {target} in {catch_up:?}");

    let target = cluster.nodes[&second_leader].status().commit_index;
    for node in cluster.nodes.values() {
        let mut watch = node.watch();
        tokio::time::timeout(
            Duration::from_secs(20),
            watch.wait_for(|s| s.applied_index >= target),
        )
        .await
        .map_err(|_| "a node did not apply every write")?;
    }
    let mut verified = 0;
    for (id, map) in &cluster.maps {
        let map = map.0.lock().map_err(|_| "lock poisoned")?;
        for key in 0..KEYS {
            let expected = format!("value-{key}");
            if map.get(&format!("key-{key}")) != Some(&expected) {
                return Err(format!("node {id} lost key-{key}").into());
            }
        }
        verified += KEYS;
    }
    println!("\nSummary");
    println!("  {:<34} {:>12}", "initial election", format!("{election:.1?}"));
    println!("  {:<34} {:>12}", "sequential writes/s (1 client)", format!("{write_rate:.0}"));
    println!("  {:<34} {:>12}", "failover (leader crash to new leader)", format!("{failover:.1?}"));
    println!("  {:<34} {:>12}", "restarted node catch-up", format!("{catch_up:.1?}"));
    println!("  {:<34} {:>12}", "keys verified on 3 nodes", format!("{verified}/{}", 3 * KEYS));
    println!("  {:<34} {:>12}", "total", format!("{:.1?}", started.elapsed()));
    for node in cluster.nodes.values() {
        node.shutdown().await;
    }
    Ok(())
}

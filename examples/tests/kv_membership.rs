//! Membership changes of the key-value service on real `kv-node` processes, under writes: a
//! node joins (`kv-node --join`, `kv member add`), leadership moves (`kv transfer-leader`), the
//! leader is removed (`kv member remove`) and its process stopped, a node restarts while a
//! member added at run time leads (it must rebuild that member's address from its own state),
//! and every acknowledged write is then read back (ReadIndex gets) through the new node alone.
//! And two of three nodes, the leader among them, are replaced in one change (`kv member set`,
//! joint consensus), every acknowledged write then read back through each new node alone.
//! Time limits here only turn a hang into a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use examples::kv::cluster::{
    free_udp_ports, read_log, wait_for_leader, ClusterSpec, Launcher, ProcessCluster,
};
use examples::kv::{ClientOptions, Connections, KvClient};
use raft_core::NodeId;

const PATIENCE: Duration = Duration::from_secs(60);

fn kv_cli(cluster: &ProcessCluster, endpoints: &[NodeId], args: &[&str]) -> (bool, String) {
    kv_cli_within(cluster, endpoints, 40, args)
}

fn kv_cli_within(
    cluster: &ProcessCluster,
    endpoints: &[NodeId],
    timeout_secs: u64,
    args: &[&str],
) -> (bool, String) {
    let timeout = timeout_secs.to_string();
    common::kv_cli_to(cluster, endpoints, &[&["--timeout", timeout.as_str()], args].concat())
}

/// The `role` column of `kv member list` output, by node id.
fn roles(table: &str) -> BTreeMap<NodeId, String> {
    table
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let id = words.next()?.parse().ok()?;
            Some((id, words.next()?.to_owned()))
        })
        .collect()
}

/// Keeps writing unique keys until stopped; records every acknowledged one.
struct Writer {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Vec<u64>>>,
    failed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

fn start_writer(connections: Connections) -> Writer {
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(AtomicU64::new(0));
    let task = {
        let (stop, acknowledged, failed) = (stop.clone(), acknowledged.clone(), failed.clone());
        tokio::spawn(async move {
            let client = KvClient::new(connections);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match client.put(format!("w-{n}"), format!("v-{n}")).await {
                    Ok(()) => acknowledged.lock().unwrap().push(n),
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                n += 1;
            }
        })
    };
    Writer { stop, acknowledged, failed, task }
}

impl Writer {
    fn count(&self) -> usize {
        self.acknowledged.lock().unwrap().len()
    }

    /// Waits until `more` further writes are acknowledged.
    async fn wait_for(&self, more: usize) {
        let target = self.count() + more;
        tokio::time::timeout(PATIENCE, async {
            while self.count() < target {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("writes go on");
    }

    async fn finish(self) -> (Vec<u64>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        tokio::time::timeout(PATIENCE, self.task).await.unwrap().unwrap();
        let acknowledged = self.acknowledged.lock().unwrap().clone();
        (acknowledged, self.failed.load(Ordering::Relaxed))
    }
}

/// Reads every acknowledged write back (ReadIndex gets) through node `only` alone.
async fn read_back_through(cluster: &ProcessCluster, only: NodeId, acknowledged: &[u64]) {
    let endpoints: BTreeMap<_, _> =
        cluster.client_endpoints().into_iter().filter(|(id, _)| *id == only).collect();
    let reader_connections =
        Connections::new(endpoints, cluster.client_tls(), ClientOptions::default()).unwrap();
    let reader = KvClient::new(reader_connections.clone());
    for &n in acknowledged {
        let value = reader.get(format!("w-{n}")).await.unwrap();
        assert_eq!(value, Some(Bytes::from(format!("v-{n}"))), "acknowledged write {n} lost");
    }
    reader_connections.close().await;
}

async fn wait_applied(connections: &Connections, id: NodeId, index: u64) {
    let caught_up = examples::kv::cluster::wait_applied(connections, id, index, PATIENCE);
    assert!(caught_up.await, "node {id} applied {index}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_a_node_under_writes() {
    let launcher = Launcher::program(env!("CARGO_BIN_EXE_kv-node"));
    // Frequent snapshots: the new node is sent one, so its address book comes from a snapshot
    // and from the log.
    let spec = ClusterSpec { nodes: 3, snapshot_entries: 50, ..ClusterSpec::default() };
    let mut cluster = ProcessCluster::start(launcher, spec).unwrap();
    let connections = cluster.connections(ClientOptions::default()).unwrap();
    wait_for_leader(&connections, &[1, 2, 3], 3, PATIENCE).await.expect("a leader");

    let (ok, list) = kv_cli(&cluster, &[1, 2, 3], &["member", "list"]);
    assert!(ok, "{list}");
    let before = roles(&list);
    assert_eq!(before.keys().copied().collect::<Vec<_>>(), [1, 2, 3], "{list}");
    assert_eq!(before.values().filter(|r| *r == "leader").count(), 1, "{list}");

    let writer = start_writer(connections.clone());
    writer.wait_for(100).await;

    // Node 4 joins and is added while the writes go on.
    let addrs = cluster.start_joining(4).unwrap();
    let (ok, added) = kv_cli(
        &cluster,
        &[1, 2, 3],
        &["member", "add", "4", &addrs.raft.to_string(), &addrs.client.to_string()],
    );
    assert!(ok, "{added}");
    assert!(added.contains("node 4 is a voter"), "{added}");
    let after_add = roles(&added);
    assert_eq!(after_add.keys().copied().collect::<Vec<_>>(), [1, 2, 3, 4], "{added}");
    assert!(added.contains(&addrs.client.to_string()), "the list shows node 4's address: {added}");
    // Adding it again is a no-op success; an id that is not a member cannot be removed.
    let (ok, again) = kv_cli(
        &cluster,
        &[2],
        &["member", "add", "4", &addrs.raft.to_string(), &addrs.client.to_string()],
    );
    assert!(ok, "{again}");
    let (ok, missing) = kv_cli(&cluster, &[2], &["member", "remove", "9"]);
    assert!(!ok && missing.contains("node 9 is not a member"), "{missing}");
    writer.wait_for(50).await;

    // A node that is not running is added as a learner but never promoted (it would take part
    // in the quorum without answering); it is removed again. Writes go on meanwhile.
    let ports = free_udp_ports(2).unwrap();
    let (raft5, client5) = (format!("127.0.0.1:{}", ports[0]), format!("127.0.0.1:{}", ports[1]));
    let (ok, late) = kv_cli_within(&cluster, &[2], 2, &["member", "add", "5", &raft5, &client5]);
    assert!(!ok && late.contains("node 5 did not catch up"), "{late}");
    let (ok, list) = kv_cli(&cluster, &[2], &["member", "list"]);
    assert!(ok && roles(&list).get(&5).map(String::as_str) == Some("learner"), "{list}");
    let (ok, removed) = kv_cli(&cluster, &[2], &["member", "remove", "5"]);
    assert!(ok && !roles(&removed).contains_key(&5), "{removed}");
    // A removed id is never used again (its certificate stays valid).
    let (ok, refused) = kv_cli(&cluster, &[2], &["member", "add", "5", &raft5, &client5]);
    assert!(!ok && refused.contains("node 5 was removed"), "{refused}");
    writer.wait_for(50).await;

    // Node 1 becomes the leader, then is removed while leading, and its process stops.
    let (ok, moved) = kv_cli(&cluster, &[2, 3, 4], &["transfer-leader", "1"]);
    assert!(ok && moved.contains("node 1 is the leader"), "{moved}");
    let (ok, removed) = kv_cli(&cluster, &[2, 3, 4], &["member", "remove", "1"]);
    assert!(ok, "{removed}");
    let after_remove = roles(&removed);
    assert_eq!(after_remove.keys().copied().collect::<Vec<_>>(), [2, 3, 4], "{removed}");
    writer.wait_for(50).await;
    cluster.retire(1, Duration::from_secs(10)).unwrap();
    writer.wait_for(50).await;

    // Node 4 (added at run time) leads; node 2 crashes and restarts from its own state (its
    // command line names only the founding members): it must know node 4's address to accept
    // it as leader and catch up.
    let (ok, moved) = kv_cli(&cluster, &[2, 3, 4], &["transfer-leader", "4"]);
    assert!(ok && moved.contains("node 4 is the leader"), "{moved}");
    cluster.kill(2).unwrap();
    writer.wait_for(50).await;
    cluster.spawn(2).unwrap();
    let commit = connections.status(4).await.unwrap().status.commit_index;
    wait_applied(&connections, 2, commit).await;
    writer.wait_for(20).await;
    let (acknowledged, failed) = writer.finish().await;

    let (ok, list) = kv_cli(&cluster, &[3], &["member", "list"]);
    assert!(ok, "{list}");
    let after = roles(&list);
    assert_eq!(after.get(&4).map(String::as_str), Some("leader"), "{list}");
    assert_eq!(after.keys().copied().collect::<Vec<_>>(), [2, 3, 4], "{list}");

    // Every acknowledged write is readable through node 4 alone (ReadIndex gets), and through
    // a follower alone.
    for only in [4, 3] {
        read_back_through(&cluster, only, &acknowledged).await;
    }
    eprintln!("{} writes acknowledged, {failed} failed or of unknown outcome", acknowledged.len());

    connections.close().await;
    let killed = cluster.stop_all(Duration::from_secs(10)).unwrap();
    assert!(killed.is_empty(), "nodes {killed:?} did not shut down cleanly");
    // Node 2's command line never named node 4: it knew it from its snapshot or its log.
    let log = read_log(&cluster.log_path(2));
    assert_eq!(log.matches("node started").count(), 2, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_two_of_three_nodes_in_one_change_under_writes() {
    let launcher = Launcher::program(env!("CARGO_BIN_EXE_kv-node"));
    let spec = ClusterSpec { nodes: 3, snapshot_entries: 200, ..ClusterSpec::default() };
    let mut cluster = ProcessCluster::start(launcher, spec).unwrap();
    let connections = cluster.connections(ClientOptions::default()).unwrap();
    let leader = wait_for_leader(&connections, &[1, 2, 3], 3, PATIENCE).await.expect("a leader").id;
    let writer = start_writer(connections.clone());
    writer.wait_for(100).await;

    // Nodes 4 and 5 join; one founder stays, the other two (the leader among them) go.
    let keep = (1..=3).find(|&id| id != leader).unwrap();
    let gone: Vec<NodeId> = (1..=3).filter(|&id| id != keep).collect();
    let spec = |id: NodeId, cluster: &mut ProcessCluster| {
        let addrs = cluster.start_joining(id).unwrap();
        format!("{id}={},{}", addrs.raft, addrs.client)
    };
    let (four, five) = (spec(4, &mut cluster), spec(5, &mut cluster));
    let keep_word = keep.to_string();
    let started = std::time::Instant::now();
    let (ok, set) = kv_cli(&cluster, &[1, 2, 3], &["member", "set", &keep_word, &four, &five]);
    let took = started.elapsed();
    assert!(ok, "{set}");
    let mut voters = vec![keep, 4, 5];
    voters.sort_unstable();
    let expected = voters.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    assert!(set.contains(&format!("the voters are {expected}")), "{set}");
    let after = roles(&set);
    assert_eq!(after.keys().copied().collect::<Vec<_>>(), voters, "{set}");
    assert!(after.values().all(|role| role != "learner"), "{set}");
    writer.wait_for(50).await;
    // The same change again is a no-op success; a removed id is never used again.
    let (ok, again) = kv_cli(&cluster, &[4, 5], &["member", "set", &keep_word, "4", "5"]);
    assert!(ok && roles(&again).keys().copied().collect::<Vec<_>>() == voters, "{again}");
    let stale = format!("{}=127.0.0.1:1,127.0.0.1:2", gone[0]);
    let (ok, refused) = kv_cli(&cluster, &[4, 5], &["member", "set", &keep_word, "4", &stale]);
    assert!(!ok && refused.contains(&format!("node {} was removed", gone[0])), "{refused}");

    for &id in &gone {
        cluster.retire(id, Duration::from_secs(10)).unwrap();
    }
    writer.wait_for(50).await;
    let (acknowledged, failed) = writer.finish().await;
    for only in [4, 5] {
        read_back_through(&cluster, only, &acknowledged).await;
    }
    eprintln!(
        "replacing nodes {gone:?} by 4 and 5 (`kv member set`) took {took:?}; {} writes \
         acknowledged, {failed} failed or of unknown outcome",
        acknowledged.len()
    );
    connections.close().await;
    let killed = cluster.stop_all(Duration::from_secs(10)).unwrap();
    assert!(killed.is_empty(), "nodes {killed:?} did not shut down cleanly");
}

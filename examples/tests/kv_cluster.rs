//! The key-value service end to end on 3 `kv-node` processes: every operation, follower
//! redirects, the `kv` command-line client, a crashed node restarting from its snapshot and
//! LMDB log, and a clean shutdown. Time limits here only turn a hang into a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use examples::kv::cluster::{wait_for_leader, ClusterSpec, Launcher, ProcessCluster};
use examples::kv::{ClientOptions, Connections, KvClient};

use common::kv_cli;

const PATIENCE: Duration = Duration::from_secs(30);

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn start(nodes: u64) -> ProcessCluster {
    let launcher = Launcher::program(env!("CARGO_BIN_EXE_kv-node"));
    // Frequent snapshots: a restarted node restores one, a lagging one is sent one.
    let spec = ClusterSpec { nodes, snapshot_entries: 8, ..ClusterSpec::default() };
    ProcessCluster::start(launcher, spec).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_redirects_cli_restart_and_shutdown() {
    let mut cluster = start(3);
    let connections = cluster.connections(ClientOptions::default()).unwrap();
    let ids = cluster.ids();
    let leader = wait_for_leader(&connections, &ids, 3, PATIENCE).await.expect("a leader");

    // Every operation, through a client that knows only one follower: it must be redirected.
    let follower = *ids.iter().find(|&&id| id != leader.id).unwrap();
    let only_follower: BTreeMap<_, _> =
        cluster.client_endpoints().into_iter().filter(|(id, _)| *id == follower).collect();
    let redirected =
        Connections::new(only_follower, cluster.client_tls(), ClientOptions::default()).unwrap();
    let client = KvClient::new(redirected.clone());
    assert_eq!(client.get("k").await.unwrap(), None);
    client.put("k", "1").await.unwrap();
    assert_eq!(client.get("k").await.unwrap(), Some(b("1")));
    assert!(!client.cas("k", Some(b("0")), Some(b("2"))).await.unwrap());
    assert!(client.cas("k", Some(b("1")), Some(b("2"))).await.unwrap());
    assert!(client.cas("new", None, Some(b("x"))).await.unwrap());
    assert!(client.delete("k").await.unwrap());
    assert!(!client.delete("k").await.unwrap());
    assert_eq!(client.get("k").await.unwrap(), None);
    assert_eq!(redirected.leader(), Some(leader.id), "the client learned the leader");

    // The command-line client.
    assert_eq!(kv_cli(&cluster, &["put", "greeting", "hello"]), (true, "OK".into()));
    assert_eq!(kv_cli(&cluster, &["get", "greeting"]), (true, "hello".into()));
    assert_eq!(kv_cli(&cluster, &["get", "missing"]), (true, "(nil)".into()));
    assert_eq!(kv_cli(&cluster, &["cas", "greeting", "hello", "bye"]), (true, "swapped".into()));
    assert_eq!(kv_cli(&cluster, &["del", "greeting"]), (true, "deleted".into()));
    let (ok, status) = kv_cli(&cluster, &["status"]);
    assert!(ok, "{status}");
    assert_eq!(
        status.lines().filter(|l| l.split_whitespace().nth(1) == Some("leader")).count(),
        1,
        "{status}"
    );
    assert_eq!(status.lines().count(), 4, "{status}");

    // A crashed follower restarts from its LMDB log and catches up.
    let writer = KvClient::new(connections.clone());
    for i in 0..20 {
        writer.put(format!("before-{i}"), "v").await.unwrap();
    }
    cluster.kill(follower).unwrap();
    for i in 0..20 {
        writer.put(format!("during-{i}"), "v").await.unwrap();
    }
    let commit = connections.status(leader.id).await.unwrap().status.commit_index;
    cluster.spawn(follower).unwrap();
    let caught_up = examples::kv::cluster::wait_applied(&connections, follower, commit, PATIENCE);
    assert!(caught_up.await, "the restarted node caught up");
    // Its log survived the crash: the restarted node loaded a non-empty log from LMDB.
    let log = examples::kv::cluster::read_log(&cluster.log_path(follower));
    let starts: Vec<&str> = log.lines().filter(|l| l.contains("node started")).collect();
    assert_eq!(starts.len(), 2, "{log}");
    assert!(!starts[1].contains("index: 0 }"), "restarted with an empty log: {}", starts[1]);
    assert!(log.contains("restored from the latest snapshot"), "no snapshot restored: {log}");

    // Clean shutdown: every node exits on its own, with success.
    connections.close().await;
    redirected.close().await;
    let killed = cluster.stop_all(Duration::from_secs(10)).unwrap();
    assert!(killed.is_empty(), "nodes {killed:?} did not shut down cleanly");
}

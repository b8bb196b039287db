//! The sharded key-value service (`kv-node --groups N`) as real processes over QUIC on LMDB:
//! keys spread over the groups, every operation per key, leaders spread over the nodes by the
//! balancer, `kv` and `kv status`, a restart that keeps every group's data, a restart with
//! another number of groups refused, and the fault test (kills, partitions, linearizability per
//! key) on a sharded cluster. Time limits here only turn a hang into a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use examples::kv::balancer::preferred;
use examples::kv::cluster::{
    wait_for_group_leaders, wait_for_leader, ClusterSpec, Launcher, ProcessCluster,
};
use examples::kv::shard::group_of;
use examples::kv::{ClientOptions, Connections, KvClient};
use raft_core::{GroupId, NodeId};

use common::fault::{run, FaultSpec};
use common::kv_cli;

const PATIENCE: Duration = Duration::from_secs(30);

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn start(nodes: u64, groups: u32) -> ProcessCluster {
    let launcher = Launcher::program(env!("CARGO_BIN_EXE_kv-node"));
    let spec = ClusterSpec { nodes, groups, snapshot_entries: 50, ..ClusterSpec::default() };
    ProcessCluster::start(launcher, spec).unwrap()
}

/// Closes the client and stops every node; each must exit on its own.
async fn stop_cleanly(mut cluster: ProcessCluster, connections: Connections) {
    connections.close().await;
    let killed = cluster.stop_all(Duration::from_secs(10)).unwrap();
    assert!(killed.is_empty(), "nodes {killed:?} did not shut down cleanly");
}

/// Whether every group of `0..groups` is led by its preferred node (members `ids`).
fn spread(leaders: &BTreeMap<GroupId, NodeId>, groups: u32, ids: &[NodeId]) -> bool {
    let voters: BTreeSet<NodeId> = ids.iter().copied().collect();
    (0..GroupId::from(groups)).all(|g| leaders.get(&g).copied() == preferred(g, &voters))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_operations_status_restart_and_refused_regroup() {
    const GROUPS: u32 = 4;
    let mut cluster = start(3, GROUPS);
    let connections = cluster.connections(ClientOptions::default()).unwrap();
    let ids = cluster.ids();
    let all_led = |leaders: &BTreeMap<GroupId, NodeId>| leaders.len() == GROUPS as usize;
    let (leaders, led) = wait_for_group_leaders(&connections, &ids, PATIENCE, all_led).await;
    assert!(led, "every group elects a leader: {leaders:?}");

    // Sessions that start together on one client send their first commands in one batch,
    // which names no group: the service answers `Sharded` and nobody suspects the node.
    let options = ClientOptions { suspect_for: Duration::from_secs(600), ..Default::default() };
    let fresh = cluster.connections(options).unwrap();
    let puts = (0..16).map(|i| {
        let client = KvClient::new(fresh.clone());
        async move { client.put(format!("together-{i}"), "v").await }
    });
    for put in futures::future::join_all(puts).await {
        put.unwrap();
    }
    for &id in &ids {
        assert!(!fresh.is_suspect(id), "node {id} suspected after a batch answered Sharded");
    }
    fresh.close().await;

    // Puts and gets land in every group; every operation works per key.
    let client = KvClient::new(connections.clone());
    let keys: Vec<String> = (0..40).map(|i| format!("key-{i}")).collect();
    let groups: BTreeSet<GroupId> = keys.iter().map(|k| group_of(k.as_bytes(), GROUPS)).collect();
    assert_eq!(groups.len(), GROUPS as usize, "the keys cover every group");
    for key in &keys {
        client.put(key.clone(), format!("v-{key}")).await.unwrap();
    }
    assert_eq!(connections.routing().groups(), GROUPS, "the client learned the groups");
    for key in &keys {
        assert_eq!(client.get(key.clone()).await.unwrap(), Some(b(&format!("v-{key}"))));
    }
    for g in 0..GroupId::from(GROUPS) {
        assert!(connections.routing().leader_of(g).is_some(), "a leader cached for group {g}");
    }
    for key in &keys[..8] {
        let value = Some(b(&format!("v-{key}")));
        assert!(!client.cas(key.clone(), Some(b("wrong")), Some(b("x"))).await.unwrap());
        assert!(client.cas(key.clone(), value, Some(b("swapped"))).await.unwrap());
        assert!(client.delete(key.clone()).await.unwrap());
        assert!(!client.delete(key.clone()).await.unwrap());
        assert_eq!(client.get(key.clone()).await.unwrap(), None);
    }
    let status = connections.statuses().await;
    for (id, answer) in &status {
        let answer = answer.as_ref().unwrap();
        let hosted: Vec<GroupId> = answer.groups.iter().map(|g| g.group).collect();
        assert_eq!(hosted, [0, 1, 2, 3], "node {id} hosts every group");
        for group in &answer.groups {
            assert_eq!(group.voters.to_vec(), ids, "group {} has every node", group.group);
            assert!(group.status.applied_index > 1, "group {} applied writes", group.group);
        }
    }

    // The command-line client finds each key's leader; `kv status` shows every group.
    assert_eq!(kv_cli(&cluster, &["put", "greeting", "hello"]), (true, "OK".into()));
    assert_eq!(kv_cli(&cluster, &["get", "greeting"]), (true, "hello".into()));
    assert_eq!(kv_cli(&cluster, &["get", "key-20"]), (true, "v-key-20".into()));
    assert_eq!(kv_cli(&cluster, &["cas", "greeting", "hello", "bye"]), (true, "swapped".into()));
    assert_eq!(kv_cli(&cluster, &["del", "greeting"]), (true, "deleted".into()));
    let (ok, text) = kv_cli(&cluster, &["status"]);
    assert!(ok, "{text}");
    let group_rows: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("group"))
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(group_rows.len(), 3 * GROUPS as usize, "a row per group and node:\n{text}");
    let leader_rows = group_rows.iter().filter(|l| l.split_whitespace().nth(2) == Some("leader"));
    assert_eq!(leader_rows.count(), GROUPS as usize, "one leader per group:\n{text}");

    // Leaders spread: each group ends up led by its preferred node.
    let (leaders, spread_out) =
        wait_for_group_leaders(&connections, &ids, PATIENCE, |l| spread(l, GROUPS, &ids)).await;
    assert!(spread_out, "leaders are not spread: {leaders:?}");

    // A clean restart of every node keeps every group's data.
    let killed = cluster.stop_all(Duration::from_secs(10)).unwrap();
    assert!(killed.is_empty(), "nodes {killed:?} did not shut down cleanly");
    for &id in &ids {
        cluster.spawn(id).unwrap();
    }
    let (_, led) = wait_for_group_leaders(&connections, &ids, PATIENCE, all_led).await;
    assert!(led, "every group elects a leader after the restart");
    for key in &keys[8..] {
        assert_eq!(client.get(key.clone()).await.unwrap(), Some(b(&format!("v-{key}"))));
    }

    // A node restarted with another number of groups refuses to start, saying why.
    cluster.stop(1, Duration::from_secs(10)).unwrap();
    let mut args = cluster.node_args(1);
    let at = args.iter().position(|a| a == "--groups").unwrap();
    args[at + 1] = "2".into();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kv-node"))
        .args(&args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "started with another number of groups: {stderr}");
    assert!(stderr.contains("--groups is 2") && stderr.contains("--groups 4"), "{stderr}");

    stop_cleanly(cluster, connections).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_groups_on_three_nodes_give_each_node_two_leaders() {
    const GROUPS: u32 = 6;
    let cluster = start(3, GROUPS);
    let connections = cluster.connections(ClientOptions::default()).unwrap();
    let ids = cluster.ids();
    let (leaders, spread_out) =
        wait_for_group_leaders(&connections, &ids, PATIENCE, |l| spread(l, GROUPS, &ids)).await;
    assert!(spread_out, "leaders are not spread: {leaders:?}");
    for &id in &ids {
        assert_eq!(leaders.values().filter(|&&l| l == id).count(), 2, "{leaders:?}");
    }
    // Balanced leaders stay where they are (no flapping).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (again, _) = wait_for_group_leaders(&connections, &ids, PATIENCE, |_| true).await;
    assert_eq!(again, leaders, "leaders moved once balanced");
    stop_cleanly(cluster, connections).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_linearizable_under_crashes_and_partitions() {
    const GROUPS: u32 = 4;
    let keys: &[&str] = &["a", "b", "c", "d", "e", "f", "g", "h"];
    let covered: BTreeSet<GroupId> = keys.iter().map(|k| group_of(k.as_bytes(), GROUPS)).collect();
    assert_eq!(covered.len(), GROUPS as usize, "the contended keys cover every group");
    run(FaultSpec { nodes: 5, groups: GROUPS, keys, chaos: Duration::from_secs(20) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_group_cluster_keeps_its_layout() {
    let mut cluster = start(3, 1);
    let connections = cluster.connections(ClientOptions::default()).unwrap();
    let ids = cluster.ids();
    wait_for_leader(&connections, &ids, 3, PATIENCE).await.expect("a leader");
    KvClient::new(connections.clone()).put("k", "v").await.unwrap();
    assert_eq!(connections.routing().groups(), 1);
    let dir = cluster.data_dir(1);
    assert!(dir.join("raft").is_dir() && dir.join("snapshots").is_dir());
    assert!(!dir.join("groups").exists() && !dir.join("raft-groups").exists());
    connections.close().await;
    let _ = cluster.stop_all(Duration::from_secs(10));
}

//! The sharded key-value service (`kv-node --groups N`) as real processes over QUIC on LMDB:
//! keys spread over the groups, every operation per key, leaders spread over the nodes by the
//! balancer, `kv` and `kv status`, a restart that keeps every group's data, a restart with
//! another number of groups refused, a node added to and a node removed from every group (the
//! leaders then spread over the new voters), a client's batch split per group across a leader
//! crash (each command applied once), and the fault test (kills, partitions, linearizability per
//! key) on a sharded cluster. Time limits here only turn a hang into a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use examples::kv::balancer::preferred;
use examples::kv::cluster::{
    read_log, wait_for_group_leaders, wait_for_leader, ClusterSpec, Launcher, ProcessCluster,
};
use examples::kv::protocol::{Member, MemberRequest};
use examples::kv::shard::group_of;
use examples::kv::{ClientError, ClientOptions, Connections, KvClient, NodeStatus};
use raft_core::{GroupId, NodeId};

use common::fault::{run, FaultSpec};
use common::{kv_cli, kv_cli_to};

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
    // Every node applied every group's writes: a group's log holds its bootstrap entry and a
    // first leader's blank entry, then (at least) one entry per put of `keys` in the group (one
    // client, one put at a time; other entries only add). Followers learn the last commits
    // with the next heartbeat: wait for them.
    let mut puts: BTreeMap<GroupId, u64> = BTreeMap::new();
    for key in &keys {
        *puts.entry(group_of(key.as_bytes(), GROUPS)).or_default() += 1;
    }
    let applied_all = |status: &[(NodeId, Result<NodeStatus, ClientError>)]| {
        status.iter().all(|(_, answer)| {
            answer.as_ref().is_ok_and(|answer| {
                answer.groups.len() == GROUPS as usize
                    && answer.groups.iter().all(|g| g.status.applied_index >= 2 + puts[&g.group])
            })
        })
    };
    let deadline = std::time::Instant::now() + PATIENCE;
    let status = loop {
        let status = connections.statuses().await;
        if applied_all(&status) || std::time::Instant::now() >= deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for (id, answer) in &status {
        let answer = answer.as_ref().unwrap();
        let hosted: Vec<GroupId> = answer.groups.iter().map(|g| g.group).collect();
        assert_eq!(hosted, [0, 1, 2, 3], "node {id} hosts every group");
        for group in &answer.groups {
            let (g, applied) = (group.group, group.status.applied_index);
            assert_eq!(group.voters.to_vec(), ids, "group {g} has every node");
            assert!(
                applied >= 2 + puts[&g],
                "node {id} applied group {g} up to {applied}: not its {} puts",
                puts[&g]
            );
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

/// Reads every key of `keys` (value `v-KEY`) through node `only` alone.
async fn read_back_through(cluster: &ProcessCluster, only: NodeId, keys: &[String]) {
    let endpoints: BTreeMap<_, _> =
        cluster.client_endpoints().into_iter().filter(|(id, _)| *id == only).collect();
    let connections =
        Connections::new(endpoints, cluster.client_tls(), ClientOptions::default()).unwrap();
    let reader = KvClient::new(connections.clone());
    for key in keys {
        let value = reader.get(key.clone()).await.unwrap();
        assert_eq!(value, Some(b(&format!("v-{key}"))), "{key} read through node {only}");
    }
    connections.close().await;
}

/// Every group's voters (and no learner), as each group's leader lists them.
async fn assert_voters_everywhere(connections: &Connections, groups: u32, voters: &[NodeId]) {
    let lists = connections.member_lists().await;
    assert_eq!(lists.len(), groups as usize, "{lists:?}");
    for (group, list) in lists {
        let list = list.unwrap();
        let ids: Vec<NodeId> = list.members.iter().map(|m| m.id).collect();
        assert_eq!(ids, voters, "the members of group {group:?}");
        assert!(list.members.iter().all(|m| m.voter), "group {group:?}: {list:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_every_group_and_a_founder_leaves_every_group() {
    const GROUPS: u32 = 4;
    let mut cluster = start(3, GROUPS);
    let connections = cluster.connections(ClientOptions::default()).unwrap();
    let all_led = |leaders: &BTreeMap<GroupId, NodeId>| leaders.len() == GROUPS as usize;
    let (leaders, led) = wait_for_group_leaders(&connections, &[1, 2, 3], PATIENCE, all_led).await;
    assert!(led, "every group elects a leader: {leaders:?}");
    let client = KvClient::new(connections.clone());
    let keys: Vec<String> = (0..40).map(|i| format!("key-{i}")).collect();
    let groups: BTreeSet<GroupId> = keys.iter().map(|k| group_of(k.as_bytes(), GROUPS)).collect();
    assert_eq!(groups.len(), GROUPS as usize, "the keys cover every group");
    for key in &keys[..20] {
        client.put(key.clone(), format!("v-{key}")).await.unwrap();
    }

    // Node 4 joins: one command makes it a voter of every group (learner, catch-up, voter).
    let addrs = cluster.start_joining(4).unwrap();
    connections.learn(&Member { id: 4, client_addr: addrs.client });
    let (raft, client_addr) = (addrs.raft.to_string(), addrs.client.to_string());
    let add = ["--timeout", "60", "member", "add", "4", raft.as_str(), client_addr.as_str()];
    let (ok, added) = kv_cli_to(&cluster, &[1, 2, 3], &add);
    assert!(ok && added.contains("node 4 is a voter in all 4 groups"), "{added}");
    assert_voters_everywhere(&connections, GROUPS, &[1, 2, 3, 4]).await;
    // Adding it again does nothing more, in every group.
    let (ok, again) = kv_cli_to(&cluster, &[2], &add);
    assert!(ok, "{again}");
    let (ok, list) = kv_cli_to(&cluster, &[3], &["member", "list"]);
    assert!(ok, "{list}");
    let group_rows = list.lines().skip_while(|l| !l.trim_start().starts_with("group")).skip(1);
    let voters: Vec<Option<&str>> = group_rows.map(|l| l.split_whitespace().nth(2)).collect();
    assert_eq!(voters, [Some("1,2,3,4"); GROUPS as usize], "{list}");
    // Leadership moves per group: the group must be named.
    let (ok, moved) = kv_cli_to(&cluster, &[2], &["transfer-leader", "4", "0"]);
    assert!(ok && moved.contains("node 4 is the leader of group 0"), "{moved}");
    let (ok, unnamed) = kv_cli_to(&cluster, &[2], &["transfer-leader", "4"]);
    assert!(!ok && unnamed.contains("name the group"), "{unnamed}");
    for key in &keys[20..] {
        client.put(key.clone(), format!("v-{key}")).await.unwrap();
    }
    // Every group's data, old and new, is served through node 4 alone.
    read_back_through(&cluster, 4, &keys).await;
    // The balancer spreads the leaders over the four voters: one group each.
    let four = [1, 2, 3, 4];
    let (leaders, spread_out) =
        wait_for_group_leaders(&connections, &four, PATIENCE, |l| spread(l, GROUPS, &four)).await;
    assert!(spread_out, "leaders are not spread over the new voters: {leaders:?}");

    // Node 1 (the preferred leader of group 0, so leading it) leaves every group.
    let (ok, removed) = kv_cli_to(&cluster, &[2, 3, 4], &["member", "remove", "1"]);
    assert!(ok && removed.contains("node 1 removed in all 4 groups"), "{removed}");
    assert_voters_everywhere(&connections, GROUPS, &[2, 3, 4]).await;
    // A removed id is never used again, in any group.
    let (ok, refused) = kv_cli_to(&cluster, &[2], &["member", "add", "1", &raft, &client_addr]);
    assert!(!ok && refused.contains("node 1 was removed"), "{refused}");
    cluster.retire(1, Duration::from_secs(10)).unwrap();
    let rest = [2, 3, 4];
    let (leaders, spread_out) =
        wait_for_group_leaders(&connections, &rest, PATIENCE, |l| spread(l, GROUPS, &rest)).await;
    assert!(spread_out, "leaders are not spread over the remaining voters: {leaders:?}");
    for &id in &rest {
        assert!(leaders.values().any(|&l| l == id), "node {id} leads no group: {leaders:?}");
    }
    read_back_through(&cluster, 4, &keys).await;
    stop_cleanly(cluster, connections).await;
}

/// How many times node `id`'s log says it refuses a removed node.
fn refusals(cluster: &ProcessCluster, id: NodeId) -> usize {
    const REFUSED: &str = "refusing removed node from now on";
    read_log(&cluster.log_path(id)).lines().filter(|l| l.contains(REFUSED)).count()
}

/// A `member add` that reached some groups only (here: group 0 of 2) is undone by `member
/// remove`: the group that never had the node records its tombstone, so the removal succeeds
/// in every group and the founders refuse the node's Raft connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_to_some_groups_only_is_removed_from_all_and_refused() {
    const GROUPS: u32 = 2;
    let mut cluster = start(3, GROUPS);
    let connections = cluster.connections(ClientOptions::default()).unwrap();
    let all_led = |leaders: &BTreeMap<GroupId, NodeId>| leaders.len() == GROUPS as usize;
    let (leaders, led) = wait_for_group_leaders(&connections, &[1, 2, 3], PATIENCE, all_led).await;
    assert!(led, "every group elects a leader: {leaders:?}");
    let addrs = cluster.start_joining(4).unwrap();
    connections.learn(&Member { id: 4, client_addr: addrs.client });
    let add = MemberRequest::Add {
        id: 4,
        raft_addr: addrs.raft,
        client_addr: addrs.client,
        catch_up_ms: 0,
        promote: false,
    };
    connections.member_request_in(Some(0), add).await.unwrap();
    let removed = connections.member_remove(4).await;
    assert!(removed.is_ok(), "the removal of a node that group 1 never had: {removed:?}");
    let refused = async {
        while refusals(&cluster, 1) == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let refused = tokio::time::timeout(PATIENCE, refused).await;
    assert!(refused.is_ok(), "node 1 never refused node 4");
    stop_cleanly(cluster, connections).await;
}

/// Commands of many sessions issued together span every group: the client sends them as one
/// batch per group (to each group's leader, in parallel), and a leader killed while a round is
/// in flight loses none and applies none twice: every command is a compare-and-swap from the
/// previous round's value, so a command applied twice would answer "not swapped", and one
/// never applied would leave its key behind. (The client runs on one thread here, so the
/// commands of a round are all queued before any batch is sent.)
#[tokio::test(flavor = "current_thread")]
async fn a_batch_spanning_every_group_applies_each_command_once_across_a_leader_crash() {
    const GROUPS: u32 = 4;
    const ROUNDS: u32 = 8;
    const CRASH_ROUND: u32 = 3;
    let mut cluster = start(3, GROUPS);
    let connections = cluster.connections(ClientOptions::default()).unwrap();
    let ids = cluster.ids();
    let (leaders, spread_out) =
        wait_for_group_leaders(&connections, &ids, PATIENCE, |l| spread(l, GROUPS, &ids)).await;
    assert!(spread_out, "leaders are not spread: {leaders:?}");
    let client = KvClient::new(connections.clone());
    let keys: Vec<String> = (0..64).map(|i| format!("batch-{i}")).collect();
    let groups: BTreeSet<GroupId> = keys.iter().map(|k| group_of(k.as_bytes(), GROUPS)).collect();
    assert_eq!(groups.len(), GROUPS as usize, "the keys cover every group");
    // One write per group opens the client's session there and finds the group's leader.
    for group in 0..GroupId::from(GROUPS) {
        let key =
            (0..).map(|i| format!("open-{i}")).find(|k| group_of(k.as_bytes(), GROUPS) == group);
        client.put(key.unwrap(), "v").await.unwrap();
    }
    let client = &client;
    let round = |r: u32| {
        futures::future::join_all(keys.iter().map(move |key| {
            let expected = r.checked_sub(1).map(|previous| b(&previous.to_string()));
            client.cas(key.clone(), expected, Some(b(&r.to_string())))
        }))
    };
    let victim = leaders[&0];
    for r in 0..ROUNDS {
        let (requests_before, commands_before) = connections.batching();
        let results = if r == CRASH_ROUND {
            // The leader of group 0 dies once the round's commands are queued and its batches
            // sent (the batcher and the sends run at the yields), before their answers.
            let round = round(r);
            tokio::pin!(round);
            let early = futures::poll!(&mut round);
            assert!(early.is_pending(), "a round needs the nodes to answer");
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            cluster.kill(victim).unwrap();
            round.await
        } else {
            round(r).await
        };
        for (key, result) in keys.iter().zip(&results) {
            assert_eq!(result, &Ok(true), "round {r}: the compare-and-swap of {key}");
        }
        let (requests, commands) = connections.batching();
        let (requests, commands) = (requests - requests_before, commands - commands_before);
        if r == 0 {
            assert!(
                commands >= keys.len() as u64 && requests < commands,
                "the round's commands were not batched: {commands} commands in {requests} requests"
            );
        }
        if r == CRASH_ROUND + 2 {
            cluster.spawn(victim).unwrap();
        }
    }
    let last = Some(b(&(ROUNDS - 1).to_string()));
    for key in &keys {
        assert_eq!(client.get(key.clone()).await.unwrap(), last, "{key}");
    }
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

//! A `kv-node` whose state machine panics on a command (a test-only poisoned key) must not leave
//! its cluster without writes: the panicking leader stops (the panic is its fatal error), the
//! others elect a leader, and writes go on. Time limits here only turn a hang into a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use examples::kv::cluster::{read_log, wait_for_leader, ClusterSpec, Launcher, ProcessCluster};
use examples::kv::{ClientOptions, KvClient};

const PATIENCE: Duration = Duration::from_secs(60);
const POISONED: u64 = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_state_machine_panics_is_replaced() {
    let launcher = Launcher::program(env!("CARGO_BIN_EXE_kv-node"));
    let spec = ClusterSpec {
        nodes: 3,
        fault_injection: true,
        node_args: BTreeMap::from([(POISONED, vec!["--panic-on-key".into(), "poison".into()])]),
        ..ClusterSpec::default()
    };
    let mut cluster = ProcessCluster::start(launcher, spec).unwrap();
    let connections = cluster.connections(ClientOptions::default()).unwrap();
    let client = KvClient::new(connections.clone());
    let ids = cluster.ids();
    let leader = wait_for_leader(&connections, &ids, 3, PATIENCE).await.expect("a leader");
    if leader.id != POISONED {
        connections.transfer_leader(POISONED).await.unwrap();
    }
    let leader = wait_for_leader(&connections, &ids, 3, PATIENCE).await.expect("a leader");
    assert_eq!(leader.id, POISONED);
    client.put("before", "1").await.unwrap();

    // Applying this put panics on the leader only; its outcome is unknown to the client.
    let _ = tokio::time::timeout(PATIENCE, client.put("poison", "x")).await;
    let deadline = Instant::now() + PATIENCE;
    let written = loop {
        match tokio::time::timeout(Duration::from_secs(5), client.put("after", "2")).await {
            Ok(Ok(())) => break true,
            _ if Instant::now() > deadline => break false,
            _ => {}
        }
    };
    let log = read_log(&cluster.log_path(POISONED));
    assert!(written, "the cluster takes no writes after its leader panicked; its log:\n{log}");
    assert_eq!(client.get("after").await.unwrap(), Some(Bytes::from_static(b"2")));
    let others: Vec<u64> = ids.iter().copied().filter(|&id| id != POISONED).collect();
    let new = wait_for_leader(&connections, &others, 3, PATIENCE).await.expect("a new leader");
    assert_ne!(new.id, POISONED);
    assert!(log.contains("panicked"), "the panic is the node's fatal error; its log:\n{log}");
    let _ = cluster.stop_all(Duration::from_secs(10));
}

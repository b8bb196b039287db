//! The fault test on one Raft group: 5 `kv-node` processes, concurrent clients on three
//! contended keys and keys of their own, a nemesis that kills and partitions nodes, then the
//! history checked for linearizability per key and every acknowledged own-key write read back
//! (see `common::fault`). `KV_FAULT_SEED=<n>` replays the nemesis's choices.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::fault::{run, FaultSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_under_crashes_and_partitions() {
    let keys = &["x", "y", "z"];
    run(FaultSpec { nodes: 5, groups: 1, keys, chaos: Duration::from_secs(30) }).await;
}

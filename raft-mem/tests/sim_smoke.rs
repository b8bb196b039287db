//! Determinism of the simulation: a seed replays exactly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use raft_core::Bytes;
use raft_mem::sim::{Simulation, SimulationConfig};
use raft_mem::LinkFaults;

fn trace(seed: u64) -> (u64, Duration, Vec<u64>, u64) {
    let mut config = SimulationConfig::new(5, seed);
    config.faults = LinkFaults::UNRELIABLE;
    let mut sim = Simulation::new(config).unwrap_or_else(|e| panic!("{e}"));
    let leader = sim.wait_for_leader(Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    let mut indexes = Vec::new();
    for i in 0..20u32 {
        indexes.push(
            sim.write(Bytes::from(i.to_be_bytes().to_vec()), Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    (leader, sim.now(), indexes, sim.runtime.polls())
}

#[test]
fn same_seed_same_run() {
    let seed = SimulationConfig::seed_from_env(42);
    let a = trace(seed);
    let b = trace(seed);
    assert_eq!(a, b, "seed {seed} did not replay identically");
    println!("seed {seed}: leader {} at {:?}, {} polls", a.0, a.1, a.3);
}

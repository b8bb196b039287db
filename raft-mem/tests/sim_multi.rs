//! Several Raft groups on the same simulated nodes (issue 21 item 5): 3 nodes, each a host of
//! one node of every group, under seeded faults that hit whole nodes (crashes take every group
//! down, partitions cut them all). Each group's invariants are checked after every step, and
//! every group with a connected majority must acknowledge a write within the same liveness
//! bound (no group is starved). A failure prints its seed; `RAFT_SIM_SEED=<seed>` replays it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use raft_mem::sim::{MultiSimConfig, MultiSimulation, SimulationConfig};

/// Runs `groups` groups on 3 nodes for `rounds` fault rounds from `seed`.
fn run(seed: u64, groups: u64, rounds: u64) {
    let seed = SimulationConfig::seed_from_env(seed);
    let outcome = MultiSimulation::new(MultiSimConfig::new(3, groups, seed))
        .and_then(|mut sim| sim.run_faults(rounds).map(|()| sim));
    let sim = outcome.unwrap_or_else(|failure| panic!("{failure}"));
    let stats = sim.stats();
    println!("seed {seed}: {stats:?}");
    assert_eq!(stats.acknowledged.len() as u64, groups, "{stats:?}");
    assert!(stats.progress_checks >= rounds, "{stats:?}");
    for group in 1..=groups {
        let checker = sim.checker(group).unwrap();
        assert!(checker.observations() > 0 && checker.committed_entries().count() > 1);
    }
}

#[test]
fn four_groups_on_three_nodes_under_faults() {
    for seed in [1, 2, 3] {
        run(seed, 4, 6);
    }
}

#[test]
fn sixteen_groups_on_three_nodes_under_faults() {
    run(11, 16, 4);
}

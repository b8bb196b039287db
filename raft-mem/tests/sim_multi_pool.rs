//! The multi-group simulation with every node's groups on a [`raft_core::runtime::TaskPool`]
//! (issue 21 item 7, step 1 of the host-level loop): the same invariants, linearizability and
//! starvation checks as `sim_multi.rs`, with every group's tasks run inside one or two driver
//! tasks of its node. A seed replays to the same outcome.
//!
//! `RAFT_POOL_SEEDS=N RAFT_POOL_FIRST=S` runs N seeds from S (a swarm on the pool: 1 to 8
//! groups on 3 nodes, 1 to 3 drivers, 2 to 4 fault rounds, drawn from the seed);
//! `RAFT_SIM_SEED` replays the listed tests' seeds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use raft_mem::sim::{MultiSimConfig, MultiSimStats, MultiSimulation, SimulationConfig};

/// Runs `groups` groups on 3 nodes on pools of `drivers` drivers, `rounds` fault rounds from
/// `seed` (each group's history checked for linearizability at the end); the run's stats.
fn run(seed: u64, groups: u64, drivers: usize, rounds: u64) -> MultiSimStats {
    let mut config = MultiSimConfig::new(3, groups, seed);
    config.task_pool_drivers = drivers;
    let outcome =
        MultiSimulation::new(config).and_then(|mut sim| sim.run_faults(rounds).map(|()| sim));
    let sim = outcome.unwrap_or_else(|failure| panic!("pool of {drivers}: {failure}"));
    let stats = sim.stats();
    println!("seed {seed}, {groups} groups, pool of {drivers}: {stats:?}");
    assert_eq!(stats.acknowledged.len() as u64, groups, "{stats:?}");
    assert!(stats.acknowledged.values().all(|&n| n > 0), "{stats:?}");
    assert!(stats.progress_checks >= rounds, "{stats:?}");
    for group in 1..=groups {
        let checker = sim.checker(group).unwrap();
        assert!(checker.observations() > 0 && checker.committed_entries().count() > 1);
    }
    stats
}

#[test]
fn groups_on_one_driver_per_node_under_faults() {
    run(SimulationConfig::seed_from_env(1), 4, 1, 4);
}

#[test]
fn groups_on_two_drivers_per_node_under_faults_replay_the_same() {
    let seed = SimulationConfig::seed_from_env(3);
    let first = run(seed, 4, 2, 3);
    let again = run(seed, 4, 2, 3);
    assert_eq!(first, again, "seed {seed}: the same seed, the same run");
}

#[test]
fn a_swarm_of_seeds_on_pools() {
    let env = |name: &str, default: u64| {
        std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
    };
    let (count, first) = (env("RAFT_POOL_SEEDS", 2), env("RAFT_POOL_FIRST", 20_914_000));
    for seed in first..first + count {
        let mix = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        let groups = 1 + mix % 8;
        let drivers = 1 + (mix / 8 % 3) as usize;
        let rounds = 2 + mix / 24 % 3;
        run(seed, groups, drivers, rounds);
    }
}

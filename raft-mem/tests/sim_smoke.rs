//! Determinism of the simulation: a seed replays exactly. Each scenario runs twice in this
//! process and the whole traces (every message with its virtual time, every status change,
//! every crash, start and pause) must be identical, as must the executor's step count and the
//! final virtual time. The scenarios cover what could leak nondeterminism in: seeded
//! scheduling and jitter, disk latency and crashes with operations in flight, injected disk and
//! state machine failures (nodes stopping mid-run drop their queues), pauses and clock skew,
//! snapshots, membership changes and a lone voter with learners.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod sim_support;

use std::sync::Arc;
use std::time::Duration;

use raft_core::{Bytes, Config, MembershipChange};
use raft_mem::sim::{
    ConfigHook, DiskFaults, InFlight, NodeClock, Simulation, SimulationConfig, StateMachineFaults,
};
use raft_mem::LinkFaults;
use sim_support::*;

/// What a run leaves behind: its trace, step count and end time.
type Trace = (Vec<String>, u64, Duration);

fn traced(nodes: u64, seed: u64) -> SimulationConfig {
    let mut config = SimulationConfig::new(nodes, seed);
    config.trace = true;
    config
}

fn finish(mut sim: Simulation) -> Trace {
    (sim.take_trace(), sim.runtime.polls(), sim.now())
}

fn writes_on_an_unreliable_network(seed: u64) -> Result<Trace, raft_mem::sim::SimFailure> {
    let mut config = traced(5, seed);
    config.faults = LinkFaults::UNRELIABLE;
    let mut sim = Simulation::new(config)?;
    sim.wait_for_leader(LONG)?;
    for i in 0..20u32 {
        sim.write(Bytes::from(i.to_be_bytes().to_vec()), Duration::from_secs(60))?;
    }
    Ok(finish(sim))
}

fn crashes_pauses_and_failing_disks(seed: u64) -> Result<Trace, raft_mem::sim::SimFailure> {
    let mut config = traced(5, seed);
    config.faults = LinkFaults::RELIABLE;
    config.disk = DiskFaults { error_chance: 0.002, ..DiskFaults::SPINNING };
    config.state_machine =
        StateMachineFaults { slow_chance: 0.1, slow_us: (100, 20_000), error_chance: 0.002 };
    config.rpc_timeout = Some((Duration::from_secs(2), 0.3));
    let mut sim = Simulation::new(config)?;
    sim.set_clock(2, NodeClock { rate: 1.04, late_chance: 0.02, late_max_us: 50_000 });
    let clients = [sim.spawn_client("a"), sim.spawn_client("b")];
    let readers = [sim.spawn_reader()];
    let mut dice = Dice(seed);
    for _ in 0..15 {
        let id = dice.pick(&[1, 2, 3, 4, 5]);
        match dice.below(5) {
            0 => sim.crash_after(id, Duration::from_micros(dice.below(300_000)), InFlight::Random),
            1 => sim.pause(id),
            2 => sim.resume(id),
            3 => sim.network.cut_one_way(id, dice.pick(&[1, 2, 3, 4, 5])),
            _ => sim.start(id)?,
        }
        sim.run_for(Duration::from_micros(dice.below(800_000)))?;
    }
    readers[0].stop();
    converge_and_check(&mut sim, &clients)?;
    Ok(finish(sim))
}

fn snapshots_and_membership_with_a_lone_voter(
    seed: u64,
) -> Result<Trace, raft_mem::sim::SimFailure> {
    let hook: ConfigHook = Arc::new(|c: &mut Config| {
        c.snapshot_interval_entries = 8;
        c.snapshot_keep_entries = 1;
        c.snapshot_chunk_bytes = 128;
    });
    let mut sim = Simulation::with_config_hook(traced(1, seed), Some(hook))?;
    let clients = [sim.spawn_client("c")];
    sim.wait_for_leader(LONG)?;
    for id in [2, 3] {
        sim.add_node(id)?;
        sim.change_membership(
            MembershipChange::AddLearner(id, raft_core::NodeInfo::default()),
            LONG,
        )?;
        sim.run_for(Duration::from_millis(300))?;
    }
    sim.change_membership(MembershipChange::PromoteLearner(2), LONG)?;
    sim.crash_all();
    for id in [1, 2, 3] {
        sim.start(id)?;
    }
    sim.run_for(Duration::from_secs(1))?;
    converge_and_check(&mut sim, &clients)?;
    Ok(finish(sim))
}

fn same_trace_twice(
    name: &str,
    seed: u64,
    run: fn(u64) -> Result<Trace, raft_mem::sim::SimFailure>,
) {
    let seed = raft_mem::sim::SimulationConfig::seed_from_env(seed);
    let first = run(seed).unwrap_or_else(|e| panic!("{name}: {e}"));
    let second = run(seed).unwrap_or_else(|e| panic!("{name}: {e}"));
    if let Some(at) = first.0.iter().zip(&second.0).position(|(a, b)| a != b) {
        panic!(
            "{name}: seed {seed} diverged at trace event {at}:\n  first:  {}\n  second: {}",
            first.0[at], second.0[at]
        );
    }
    assert_eq!(first.0.len(), second.0.len(), "{name}: seed {seed}: trace lengths differ");
    assert_eq!((first.1, first.2), (second.1, second.2), "{name}: seed {seed}");
    assert!(first.0.len() > 100, "{name}: the trace records the run ({} events)", first.0.len());
    println!(
        "{name}: seed {seed}: {} trace events, {} steps, {:?}",
        first.0.len(),
        first.1,
        first.2
    );
}

#[test]
fn same_seed_same_trace() {
    same_trace_twice("unreliable network", 42, writes_on_an_unreliable_network);
    same_trace_twice("crashes, pauses, failing disks", 43, crashes_pauses_and_failing_disks);
    same_trace_twice("snapshots and a lone voter", 44, snapshots_and_membership_with_a_lone_voter);
}

#[test]
fn different_seeds_different_traces() {
    let a = writes_on_an_unreliable_network(1).unwrap();
    let b = writes_on_an_unreliable_network(2).unwrap();
    assert_ne!(a.0, b.0, "the seed drives the run");
}

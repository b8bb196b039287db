//! Helpers shared by the simulation test files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code, unreachable_pub)]

use std::time::Duration;

use raft_core::{Bytes, NodeId};
use raft_mem::sim::{ClientLog, SimFailure, Simulation, SimulationConfig};
use raft_mem::LinkFaults;

pub type Outcome = Result<(), SimFailure>;

/// Election timeouts are 300-600 ms by default.
pub const ELECTION_TIMEOUT_MAX: Duration = Duration::from_millis(600);
pub const LONG: Duration = Duration::from_secs(30);

pub fn scenario(name: &str, default_seed: u64, body: impl Fn(u64) -> Outcome) {
    let seed = SimulationConfig::seed_from_env(default_seed);
    if let Err(failure) = body(seed) {
        panic!("{name} failed: {failure}");
    }
}

pub fn sim(nodes: u64, seed: u64, faults: LinkFaults) -> Result<Simulation, SimFailure> {
    let mut config = SimulationConfig::new(nodes, seed);
    config.faults = faults;
    Simulation::new(config)
}

pub fn cmd(text: &str) -> Bytes {
    Bytes::from(text.to_owned())
}

pub use raft_mem::sim::Dice;

pub fn commit_indexes(sim: &Simulation, ids: &[NodeId]) -> Vec<u64> {
    ids.iter().filter_map(|&id| sim.node(id)).map(|n| n.status().commit_index).collect()
}

/// Brings every node back, heals the network, writes a final entry, waits until all nodes
/// applied it, and checks that every acknowledged client write is in every node's applied log
/// at its index.
pub fn converge_and_check(sim: &mut Simulation, clients: &[ClientLog]) -> Outcome {
    for client in clients {
        client.stop();
    }
    sim.calm();
    for id in sim.ids().to_vec() {
        sim.start(id)?;
    }
    // A disk operation or an apply issued before the calm may still fail (its fault was drawn
    // when it was issued) and stop its node: let them all land, then start the stopped ones.
    sim.run_for(Duration::from_secs(2))?;
    for id in sim.ids().to_vec() {
        sim.start(id)?;
    }
    let index = sim.write(cmd("final"), LONG)?;
    sim.wait_for_leader(LONG)?;
    // Every member of the leader's membership applies the final write. Membership changes
    // started before may still commit meanwhile, so the members are looked up as it goes.
    sim.run_until("the final write applied by every member", LONG, |sim| {
        let Some(members) = sim.members() else { return false };
        sim.ids()
            .iter()
            .filter(|id| members.contains(id))
            .all(|&id| sim.node(id).is_some_and(|n| n.status().applied_index >= index))
    })?;
    // Nodes removed from the membership (or never added) get no more entries: retire them.
    let members = sim.members().unwrap_or_default();
    for id in sim.ids().to_vec() {
        if !members.contains(&id) {
            sim.retire(id);
        }
    }
    for &id in sim.ids() {
        let applied = sim.applied(id);
        for client in clients {
            for (command, at) in client.acknowledged() {
                let entry = applied.iter().find(|e| e.index == at);
                assert_eq!(
                    entry.and_then(|e| e.command()),
                    Some(&command),
                    "seed {}: acknowledged write {command:?} at {at} missing on node {id}",
                    sim.seed()
                );
            }
        }
    }
    Ok(())
}

//! Randomized swarm: many seeds, each with a random cluster size, random link faults and a
//! random schedule of partitions, disconnections, crashes and restarts while clients write.
//! Half of the seeds also add, promote and remove nodes and transfer leadership at random
//! moments (without waiting for the outcome), and run a reader checking that every read index
//! covers the writes acknowledged before it. Every invariant is checked after every step; at
//! the end the cluster must converge with every acknowledged write in place.
//!
//! CI runs `SWARM_SEEDS_CI` seeds (split across tests so they run in parallel). Run more with
//! `RAFT_SWARM_SEEDS=<n>`, start elsewhere with `RAFT_SWARM_FIRST=<seed>`, or replay one with
//! `RAFT_SIM_SEED=<seed>`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod sim_support;

use std::sync::Arc;
use std::time::Duration;

use raft_core::{Config, MembershipChange, NodeId};
use raft_mem::sim::{Simulation, SimulationConfig};
use raft_mem::LinkFaults;
use sim_support::*;

const SWARM_SEEDS_CI: u64 = 500;
const SHARDS: u64 = 4;

fn random_faults(dice: &mut Dice) -> LinkFaults {
    match dice.below(4) {
        0 => LinkFaults::NONE,
        1 => LinkFaults::RELIABLE,
        2 => LinkFaults::UNRELIABLE,
        _ => LinkFaults {
            drop_request: dice.below(30) as f64 / 100.0,
            drop_response: dice.below(30) as f64 / 100.0,
            duplicate: dice.below(10) as f64 / 100.0,
            delay_ms: (0, dice.below(50)),
            long_delay: dice.below(20) as f64 / 100.0,
            long_delay_ms_max: dice.below(3000),
        },
    }
}

/// Snapshot settings for a third of the seeds: small intervals, tails and chunks, so that
/// compaction and InstallSnapshot (with lost, duplicated and reordered chunks) happen often;
/// and lease reads for a quarter of the seeds. Drawn from their own dice so that the rest of
/// each seed's scenario is unchanged.
fn snapshot_hook(seed: u64) -> Option<raft_mem::sim::ConfigHook> {
    let mut dice = Dice(seed ^ 0x5A9_5407);
    // Lease reads for a quarter of the seeds (own dice, so the snapshot choice is unchanged).
    let lease_reads = Dice(seed ^ 0x1EA5E).chance(25);
    if !dice.chance(33) {
        return lease_reads
            .then(|| Arc::new(|c: &mut Config| c.lease_reads = true) as raft_mem::sim::ConfigHook);
    }
    let interval = 3 + dice.below(40);
    let keep = dice.below(8);
    let chunk = 64 + dice.below(2048);
    let window = 1 + dice.below(3) as usize;
    let timeout = 200 + dice.below(3000);
    Some(Arc::new(move |c: &mut Config| {
        c.lease_reads = lease_reads;
        c.snapshot_interval_entries = interval;
        c.snapshot_keep_entries = keep;
        c.snapshot_chunk_bytes = chunk;
        c.snapshot_max_inflight_chunks = window;
        c.snapshot_transfer_timeout_ms = timeout;
    }))
}

fn swarm_run(seed: u64) -> Outcome {
    let mut dice = Dice(seed ^ 0x5EED);
    let nodes = [3, 5, 5, 7][dice.below(4) as usize];
    let mut config = SimulationConfig::new(nodes, seed);
    config.faults = random_faults(&mut dice);
    if std::env::var("RAFT_SWARM_VERBOSE").is_ok() {
        println!("  default faults: {:?}", config.faults);
    }
    let snapshots = snapshot_hook(seed);
    let with_snapshots = Dice(seed ^ 0x5A9_5407).chance(33); // as drawn in snapshot_hook
    let mut sim = Simulation::with_config_hook(config, snapshots)?;
    let mut ids: Vec<NodeId> = sim.ids().to_vec();
    // Membership changes and reads, drawn from their own dice (the rest of each seed's
    // scenario keeps its shape).
    let mut changes = Dice(seed ^ 0xC0_4F16);
    let with_changes = changes.chance(50);
    let mut next_id = 100;
    for _ in 0..dice.below(3) {
        let (a, b) = (dice.pick(&ids), dice.pick(&ids));
        let faults = random_faults(&mut dice);
        if std::env::var("RAFT_SWARM_VERBOSE").is_ok() {
            println!("  link {a}->{b}: {faults:?}");
        }
        sim.network.set_link_faults(a, b, faults);
    }
    let clients: Vec<_> =
        (0..1 + dice.below(3)).map(|c| sim.spawn_client(&format!("s{c}"))).collect();
    let reader = with_changes.then(|| sim.spawn_reader());
    for _ in 0..(5 + dice.below(20)) {
        if with_changes && changes.chance(40) {
            change_at_random(&mut sim, &mut changes, &mut ids, &mut next_id)?;
        }
        match dice.below(7) {
            0 => {
                let split = 1 + dice.below(ids.len() as u64 - 1) as usize;
                let mut shuffled = ids.clone();
                for i in (1..shuffled.len()).rev() {
                    shuffled.swap(i, dice.below(i as u64 + 1) as usize);
                }
                sim.network.partition(&[shuffled[..split].to_vec(), shuffled[split..].to_vec()]);
            }
            1 => sim.network.heal(),
            2 => sim.network.disconnect(dice.pick(&ids)),
            3 => sim.network.reconnect(dice.pick(&ids)),
            4 => sim.crash(dice.pick(&ids)),
            5 => sim.start(dice.pick(&ids))?,
            _ => {
                let id = dice.pick(&ids);
                sim.restart(id)?;
            }
        }
        sim.run_for(Duration::from_millis(dice.below(2000)))?;
        if std::env::var("RAFT_SWARM_VERBOSE").is_ok() {
            println!(
                "  t={:?} polls={} statuses={:?}",
                sim.now(),
                sim.runtime.polls(),
                sim.statuses()
                    .iter()
                    .map(|s| (s.id, s.role, s.current_term, s.commit_index, s.last_log_index))
                    .collect::<Vec<_>>()
            );
        }
    }
    if let Some(reader) = reader {
        reader.stop();
    }
    converge_and_check(&mut sim, &clients)?;
    let committed_changes = sim
        .checker()
        .committed_entries()
        .filter(|e| matches!(e.payload, raft_core::EntryPayload::Membership(_)))
        .count();
    MEMBERSHIP_CHANGES.fetch_add(committed_changes as u64, std::sync::atomic::Ordering::Relaxed);
    if with_snapshots {
        SNAPSHOT_SEEDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let restores: usize = ids.iter().map(|&id| sim.restores(id).len()).sum();
        RESTORES.fetch_add(restores as u64, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(())
}

/// Starts a random membership change or leadership transfer on the current leader, without
/// waiting for its outcome (it may fail, commit or be overwritten under the faults).
fn change_at_random(
    sim: &mut Simulation,
    dice: &mut Dice,
    ids: &mut Vec<NodeId>,
    next_id: &mut NodeId,
) -> Outcome {
    let Some(leader) = sim.leader() else { return Ok(()) };
    let Some(node) = sim.node(leader).cloned() else { return Ok(()) };
    let membership = node.membership();
    let pick = |dice: &mut Dice, set: &std::collections::BTreeSet<NodeId>| {
        let v: Vec<NodeId> = set.iter().copied().collect();
        (!v.is_empty()).then(|| dice.pick(&v))
    };
    let change = match dice.below(4) {
        0 => {
            let id = *next_id;
            *next_id += 1;
            sim.add_node(id)?;
            ids.push(id);
            MembershipChange::AddLearner(id, raft_core::NodeInfo::default())
        }
        1 => match pick(dice, membership.learners()) {
            Some(id) => MembershipChange::PromoteLearner(id),
            None => return Ok(()),
        },
        2 => match pick(dice, &membership.members()) {
            Some(id) => MembershipChange::RemoveNode(id),
            None => return Ok(()),
        },
        _ => {
            if let Some(target) = pick(dice, membership.voters()) {
                sim.runtime.spawn_task(async move {
                    let _ = node.transfer_leadership(target).await;
                });
            }
            return Ok(());
        }
    };
    if std::env::var("RAFT_SWARM_VERBOSE").is_ok() {
        println!("  t={:?} {change:?} on leader {leader}", sim.now());
    }
    sim.runtime.spawn_task(async move {
        let _ = node.change_membership(change).await;
    });
    Ok(())
}

static SNAPSHOT_SEEDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static MEMBERSHIP_CHANGES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static RESTORES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn shard(index: u64) {
    if let Some(seed) = env_u64("RAFT_SIM_SEED") {
        if index == 0 {
            swarm_run(seed).unwrap_or_else(|failure| panic!("swarm failed: {failure}"));
        }
        return;
    }
    let total = env_u64("RAFT_SWARM_SEEDS").unwrap_or(SWARM_SEEDS_CI);
    let first = env_u64("RAFT_SWARM_FIRST").unwrap_or(1_000_000);
    let started = std::time::Instant::now();
    let mut ran = 0;
    for seed in (first..first + total).filter(|s| s % SHARDS == index) {
        if std::env::var("RAFT_SWARM_VERBOSE").is_ok() {
            println!("seed {seed}");
        }
        swarm_run(seed).unwrap_or_else(|failure| panic!("swarm failed: {failure}"));
        ran += 1;
    }
    println!(
        "swarm shard {index}: {ran} seeds passed in {:?} (all shards so far: {} with snapshots, {} snapshot restores, {} committed membership changes)",
        started.elapsed(),
        SNAPSHOT_SEEDS.load(std::sync::atomic::Ordering::Relaxed),
        RESTORES.load(std::sync::atomic::Ordering::Relaxed),
        MEMBERSHIP_CHANGES.load(std::sync::atomic::Ordering::Relaxed)
    );
}

#[test]
fn swarm_shard_0() {
    shard(0);
}

#[test]
fn swarm_shard_1() {
    shard(1);
}

#[test]
fn swarm_shard_2() {
    shard(2);
}

#[test]
fn swarm_shard_3() {
    shard(3);
}

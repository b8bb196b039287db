//! Snapshots, log compaction and InstallSnapshot in deterministic simulation: real nodes in
//! virtual time with `MemSnapshotStore`s, every invariant checked after every step (including
//! that restored state machines continue from their snapshot and that restarts never go back
//! before the durable snapshot). `RAFT_SIM_SEED=<seed>` replays a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod sim_support;

use std::sync::Arc;
use std::time::Duration;

use raft_core::{Config, NodeId};
use raft_mem::sim::{Simulation, SimulationConfig};
use raft_mem::LinkFaults;
use sim_support::*;

/// Snapshots every `interval` entries, `keep` entries kept below them, small chunks.
fn snapshot_sim(
    nodes: u64,
    seed: u64,
    faults: LinkFaults,
    interval: u64,
    keep: u64,
) -> Result<Simulation, raft_mem::sim::SimFailure> {
    let mut config = SimulationConfig::new(nodes, seed);
    config.faults = faults;
    let hook = Arc::new(move |c: &mut Config| {
        c.snapshot_interval_entries = interval;
        c.snapshot_keep_entries = keep;
        c.snapshot_chunk_bytes = 256;
        c.snapshot_max_inflight_chunks = 2;
    });
    Simulation::with_config_hook(config, Some(hook))
}

fn write_n(sim: &mut Simulation, prefix: &str, n: usize) -> Outcome {
    for i in 0..n {
        sim.write(cmd(&format!("{prefix}{i:05}")), LONG)?;
    }
    Ok(())
}

/// Every node's state reflects the same entries (restored or applied).
fn same_state(sim: &Simulation) {
    let ids = sim.ids().to_vec();
    let reference = sim.applied(ids[0]);
    for &id in &ids[1..] {
        let other = sim.applied(id);
        let n = reference.len().min(other.len());
        assert_eq!(reference[..n], other[..n], "node {id} diverges from node {}", ids[0]);
    }
}

fn snapshot_index(sim: &Simulation, id: NodeId) -> u64 {
    sim.snapshot_store(id).and_then(|s| s.latest_meta()).map_or(0, |m| m.last_included.index)
}

#[test]
fn snapshot_basic() {
    scenario("snapshot_basic", 101, |seed| {
        let mut sim = snapshot_sim(3, seed, LinkFaults::RELIABLE, 10, 5)?;
        write_n(&mut sim, "v", 60)?;
        let index = sim.write(cmd("last"), LONG)?;
        sim.wait_applied(index, LONG)?;
        sim.run_for(Duration::from_secs(1))?;
        for &id in sim.ids() {
            let snap = snapshot_index(&sim, id);
            assert!(snap >= 50, "node {id} snapshot at {snap}");
            let purged = sim.store(id).unwrap().purged().index;
            assert!(
                purged > 0 && purged + 5 <= snap,
                "node {id} compacted to {purged} (snap {snap})"
            );
            assert!(sim.store(id).unwrap().entries().len() < 30, "node {id} log is short");
            assert_eq!(sim.applied(id).last().unwrap().index, index);
        }
        same_state(&sim);
        // The manual trigger on the leader: a snapshot covering everything applied.
        let leader = sim.wait_for_leader(LONG)?;
        let node = sim.node(leader).unwrap().clone();
        let meta = sim.block_on("snapshot", LONG, async move { node.snapshot().await })?;
        let meta = meta.unwrap().unwrap();
        assert!(meta.last_included.index >= index);
        assert_eq!(snapshot_index(&sim, leader), meta.last_included.index);
        Ok(())
    });
}

fn install_to_disconnected_follower(name: &str, seed: u64, faults: LinkFaults) {
    scenario(name, seed, |seed| {
        let mut sim = snapshot_sim(3, seed, faults, 10, 3)?;
        let leader = sim.wait_for_leader(LONG)?;
        let follower = sim.ids().iter().copied().find(|&id| id != leader).unwrap();
        sim.network.disconnect(follower);
        write_n(&mut sim, "d", 80)?;
        let leader = sim.wait_for_leader(LONG)?;
        let purged = sim.store(leader).unwrap().purged().index;
        assert!(purged > 40, "the leader compacted past the follower ({purged})");
        sim.network.reconnect(follower);
        let index = sim.write(cmd("after"), LONG)?;
        sim.wait_applied(index, LONG)?;
        let restores = sim.restores(follower);
        assert!(!restores.is_empty(), "the follower installed a snapshot");
        assert!(restores[0].index > 40, "{restores:?}");
        assert!(snapshot_index(&sim, follower) >= restores[0].index);
        same_state(&sim);
        Ok(())
    });
}

#[test]
fn install_snapshot_to_disconnected_follower_reliable() {
    install_to_disconnected_follower("install_reliable", 102, LinkFaults::RELIABLE);
}

#[test]
fn install_snapshot_to_disconnected_follower_unreliable() {
    install_to_disconnected_follower("install_unreliable", 103, LinkFaults::UNRELIABLE);
}

#[test]
fn install_snapshot_with_crashes() {
    scenario("install_with_crashes", 104, |seed| {
        let mut sim = snapshot_sim(5, seed, LinkFaults::RELIABLE, 10, 2)?;
        let mut dice = Dice(seed);
        let clients: Vec<_> = (0..2).map(|c| sim.spawn_client(&format!("c{c}"))).collect();
        for round in 0..30 {
            let id = dice.pick(sim.ids());
            match round % 3 {
                0 => sim.network.disconnect(id),
                1 => sim.restart(id)?,
                _ => {
                    sim.crash(id);
                    sim.run_for(Duration::from_millis(dice.below(800)))?;
                    sim.start(id)?;
                }
            }
            sim.run_for(Duration::from_millis(200 + dice.below(1500)))?;
            if round % 3 == 0 {
                sim.network.reconnect(id);
            }
        }
        converge_and_check(&mut sim, &clients)?;
        same_state(&sim);
        let restored: usize = sim.ids().iter().map(|&id| sim.restores(id).len()).sum();
        assert!(restored > 0, "some node restored a snapshot");
        Ok(())
    });
}

#[test]
fn all_nodes_crash_after_snapshots() {
    scenario("all_crash_after_snapshots", 105, |seed| {
        let mut sim = snapshot_sim(3, seed, LinkFaults::RELIABLE, 10, 4)?;
        for round in 0..4 {
            write_n(&mut sim, &format!("r{round}-"), 25)?;
            let floors: Vec<(NodeId, u64)> =
                sim.ids().iter().map(|&id| (id, snapshot_index(&sim, id))).collect();
            for &id in &sim.ids().to_vec() {
                sim.crash(id);
            }
            sim.run_for(Duration::from_millis(300))?;
            for &id in &sim.ids().to_vec() {
                sim.start(id)?;
            }
            // The checker verifies after every step that each restarted node starts at or after
            // its durable snapshot; here we look at the restored states too.
            for (id, floor) in floors {
                let status = sim.node(id).unwrap().status();
                assert!(status.applied_index >= floor, "node {id} applied {status:?} < {floor}");
                if floor > 0 {
                    assert_eq!(sim.restores(id).first().map(|l| l.index), Some(floor));
                    assert_eq!(sim.applied(id).len() as u64, floor, "state restored up to it");
                }
            }
        }
        let index = sim.write(cmd("end"), LONG)?;
        sim.wait_applied(index, LONG)?;
        same_state(&sim);
        Ok(())
    });
}

#[test]
fn init_after_restart_with_a_snapshot() {
    scenario("init_after_restart_with_snapshot", 106, |seed| {
        let mut sim = snapshot_sim(3, seed, LinkFaults::RELIABLE, 10, 3)?;
        write_n(&mut sim, "i", 35)?;
        let leader = sim.wait_for_leader(LONG)?;
        let id = sim.ids().iter().copied().find(|&id| id != leader).unwrap();
        let before = sim.applied(id);
        let snap = snapshot_index(&sim, id);
        assert!(snap >= 30);
        sim.restart(id)?;
        let status = sim.node(id).unwrap().status();
        assert_eq!((status.applied_index, status.commit_index), (snap, snap));
        assert_eq!(sim.restores(id), vec![before[snap as usize - 1].log_id()]);
        assert_eq!(sim.applied(id)[..], before[..snap as usize], "restored exactly");
        let index = sim.write(cmd("next"), LONG)?;
        sim.wait_applied(index, LONG)?;
        let after = sim.applied(id);
        assert_eq!(after[..before.len()], before[..], "continued from the snapshot");
        assert_eq!(after.last().unwrap().index, index);
        Ok(())
    });
}

/// Issue bound: 3 nodes, a snapshot every 10 entries, 300 proposals of 8-byte commands: the
/// persisted Raft state (log + hard state, not the snapshot) stays under 2,000 bytes.
#[test]
fn compacted_state_stays_small() {
    scenario("compacted_state_stays_small", 107, |seed| {
        let mut sim = snapshot_sim(3, seed, LinkFaults::RELIABLE, 10, 10)?;
        let mut max = 0;
        for i in 0..300u64 {
            sim.write(raft_core::Bytes::from(i.to_be_bytes().to_vec()), LONG)?;
            for &id in sim.ids() {
                max = max.max(sim.store(id).unwrap().persisted_bytes());
            }
        }
        println!("max persisted raft state over 300 proposals: {max} bytes");
        assert!(max < 2_000, "persisted state reached {max} bytes");
        Ok(())
    });
}

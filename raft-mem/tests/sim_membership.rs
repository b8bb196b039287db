//! Membership changes, leadership transfer and linearizable reads in the deterministic
//! simulation, with faults. Every scenario runs the real node on virtual time; the invariant
//! checker (including "consecutive committed memberships differ by one voter" and, with readers,
//! "every read index covers every write acknowledged before the read began") runs after every
//! step. A failure prints its seed; `RAFT_SIM_SEED=<seed>` replays it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod sim_support;

use std::sync::Arc;
use std::time::Duration;

use raft_core::{Config, MembershipChange, NodeId, NodeInfo, Role};
use raft_mem::sim::{ConfigHook, ReaderLog, Simulation, SimulationConfig};
use raft_mem::LinkFaults;
use sim_support::*;

/// Lossy links: 2% of requests and responses lost, 0-10 ms delays, 1% held up to 500 ms.
const LOSSY: LinkFaults = LinkFaults {
    drop_request: 0.02,
    drop_response: 0.02,
    duplicate: 0.01,
    delay_ms: (0, 10),
    long_delay: 0.01,
    long_delay_ms_max: 500,
};

/// Adds `new` as a voter: starts it empty, adds it as a learner, promotes it once caught up.
fn add_voter(sim: &mut Simulation, new: NodeId) -> Outcome {
    sim.add_node(new)?;
    sim.change_membership(MembershipChange::AddLearner(new, NodeInfo::default()), LONG)?;
    sim.run_until("the learner catches up", LONG, |sim| {
        let commit = sim.leader().and_then(|l| sim.node(l)).map_or(0, |n| n.status().commit_index);
        sim.node(new).is_some_and(|n| commit > 0 && n.status().applied_index + 5 >= commit)
    })?;
    sim.change_membership(MembershipChange::PromoteLearner(new), LONG)
}

/// Removes `old` from the membership and stops it for good.
fn remove_voter(sim: &mut Simulation, old: NodeId) -> Outcome {
    sim.change_membership(MembershipChange::RemoveNode(old), LONG)?;
    sim.retire(old);
    Ok(())
}

fn stop_readers(readers: &[ReaderLog]) -> u64 {
    readers
        .iter()
        .map(|r| {
            r.stop();
            r.completed()
        })
        .sum()
}

#[test]
fn replacing_each_node_of_three_under_load_loses_nothing() {
    for default_seed in [11, 12, 13] {
        scenario("replace each node", default_seed, |seed| {
            let mut sim = sim(3, seed, LOSSY)?;
            sim.wait_for_leader(LONG)?;
            let clients = [sim.spawn_client("a"), sim.spawn_client("b")];
            let readers = [sim.spawn_reader(), sim.spawn_reader()];
            for old in 1..=3 {
                sim.run_for(Duration::from_millis(1000))?;
                add_voter(&mut sim, old + 3)?;
                remove_voter(&mut sim, old)?;
            }
            sim.run_for(Duration::from_secs(1))?;
            let reads = stop_readers(&readers);
            let failed: u64 = readers.iter().map(ReaderLog::failed).sum();
            println!("seed {seed}: {:?} virtual, {reads} reads, {failed} failed", sim.now());
            converge_and_check(&mut sim, &clients)?;
            let leader = sim.leader().unwrap();
            assert_eq!(
                sim.node(leader).unwrap().membership().voters(),
                &[4, 5, 6].into(),
                "seed {seed}"
            );
            let writes: usize = clients.iter().map(|c| c.acknowledged().len()).sum();
            assert!(writes > 50, "seed {seed}: only {writes} writes were acknowledged");
            assert!(reads > 20, "seed {seed}: only {reads} reads completed");
            Ok(())
        });
    }
}

#[test]
fn removing_the_leader_hands_over_to_the_remaining_voters() {
    scenario("remove the leader", 21, |seed| {
        let mut sim = sim(3, seed, LinkFaults::RELIABLE)?;
        let leader = sim.wait_for_leader(LONG)?;
        let clients = [sim.spawn_client("a")];
        sim.run_for(Duration::from_millis(500))?;
        sim.change_membership(MembershipChange::RemoveNode(leader), LONG)?;
        // The removed leader steps down by itself once the change commits.
        sim.run_until("the removed leader steps down", LONG, |sim| {
            sim.node(leader).is_some_and(|n| n.status().role != Role::Leader)
        })?;
        let new_leader = sim.wait_for_leader(LONG)?;
        assert_ne!(new_leader, leader, "seed {seed}");
        sim.retire(leader);
        sim.run_for(Duration::from_millis(500))?;
        converge_and_check(&mut sim, &clients)?;
        let voters = sim.node(new_leader).unwrap().membership().voters().clone();
        assert_eq!(voters.len(), 2, "seed {seed}");
        assert!(!voters.contains(&leader), "seed {seed}");
        Ok(())
    });
}

#[test]
fn a_partition_during_a_membership_change_keeps_every_invariant() {
    for default_seed in [31, 32, 33, 34] {
        scenario("partition during a change", default_seed, |seed| {
            let mut sim = sim(3, seed, LOSSY)?;
            let leader = sim.wait_for_leader(LONG)?;
            let clients = [sim.spawn_client("a")];
            sim.add_node(4)?;
            sim.change_membership(MembershipChange::AddLearner(4, NodeInfo::default()), LONG)?;
            sim.run_for(Duration::from_millis(500))?;
            // Promote on the leader, and cut it off with the new node while the change is in
            // flight: the change may commit or be overwritten by the majority's new leader.
            let node = sim.node(leader).unwrap().clone();
            sim.runtime.spawn_task(async move {
                let _ = node.change_membership(MembershipChange::PromoteLearner(4)).await;
            });
            let mut dice = Dice(seed);
            sim.run_for(Duration::from_millis(dice.below(20)))?;
            let others: Vec<NodeId> = (1..=3).filter(|&id| id != leader).collect();
            sim.network.partition(&[vec![leader, 4], others]);
            sim.run_for(Duration::from_secs(3))?;
            sim.network.heal();
            sim.run_for(Duration::from_secs(1))?;
            // Finish the change through whoever leads now, then remove an old node.
            sim.change_membership(MembershipChange::PromoteLearner(4), LONG)?;
            remove_voter(&mut sim, dice.pick(&[1, 2, 3]))?;
            converge_and_check(&mut sim, &clients)?;
            let members = sim.members().unwrap();
            assert_eq!(members.len(), 3, "seed {seed}: {members:?}");
            assert!(members.contains(&4), "seed {seed}");
            for &id in sim.ids() {
                let m = sim.node(id).unwrap().membership();
                assert_eq!(m.members(), members, "seed {seed}: node {id} disagrees");
            }
            Ok(())
        });
    }
}

#[test]
fn reads_are_never_stale_while_leaders_change() {
    // Without CheckQuorum a partitioned leader keeps believing it leads while the majority
    // elects another and commits writes: only the ReadIndex quorum round keeps its reads fresh.
    // With lease reads the leader skips the round while a majority's promise holds.
    let runs = [(41, true, false), (42, false, false), (43, false, false), (44, true, false)];
    let lease_runs = [(45, true, true), (46, true, true), (47, true, true), (48, true, true)];
    for (default_seed, check_quorum, lease_reads) in runs.into_iter().chain(lease_runs) {
        scenario("linearizable reads", default_seed, |seed| {
            let mut config = SimulationConfig::new(5, seed);
            config.faults = LOSSY;
            let hook: ConfigHook = Arc::new(move |c: &mut Config| {
                c.check_quorum = check_quorum;
                c.lease_reads = lease_reads;
            });
            let mut sim = Simulation::with_config_hook(config, Some(hook))?;
            sim.wait_for_leader(LONG)?;
            sim.set_client_timeout(Duration::from_millis(300));
            let clients = [sim.spawn_client("a"), sim.spawn_client("b")];
            let readers = [sim.spawn_reader(), sim.spawn_reader(), sim.spawn_reader()];
            let mut dice = Dice(seed);
            let mut transfers = 0;
            for _ in 0..12 {
                sim.run_for(Duration::from_millis(300 + dice.below(700)))?;
                let Some(leader) = sim.leader() else { continue };
                match dice.below(4) {
                    0 => sim.restart(leader)?,
                    1 => {
                        sim.network.disconnect(leader);
                        sim.run_for(Duration::from_millis(1000 + dice.below(4000)))?;
                        sim.network.reconnect(leader);
                    }
                    _ => {
                        let target = dice.pick(&[1, 2, 3, 4, 5]);
                        let node = sim.node(leader).unwrap().clone();
                        sim.runtime.spawn_task(async move {
                            let _ = node.transfer_leadership(target).await;
                        });
                        transfers += 1;
                    }
                }
            }
            sim.run_for(Duration::from_secs(1))?;
            let reads = stop_readers(&readers);
            converge_and_check(&mut sim, &clients)?;
            let failed: u64 = readers.iter().map(ReaderLog::failed).sum();
            assert!(reads > 100, "seed {seed}: only {reads} reads completed ({failed} failed)");
            println!("seed {seed}: {reads} reads checked, {failed} failed, {transfers} transfers");
            Ok(())
        });
    }
}

#[test]
fn leadership_transfer_moves_the_leader_under_load() {
    scenario("leadership transfer", 51, |seed| {
        let mut sim = sim(3, seed, LinkFaults::RELIABLE)?;
        sim.wait_for_leader(LONG)?;
        let clients = [sim.spawn_client("a"), sim.spawn_client("b")];
        for round in 0..6 {
            sim.run_for(Duration::from_millis(200))?;
            let leader = sim.wait_for_leader(LONG)?;
            let target = [1, 2, 3]
                .into_iter()
                .find(|&id| id != leader && (id + round) % 2 == 0)
                .unwrap_or(if leader == 1 { 2 } else { 1 });
            let node = sim.node(leader).unwrap().clone();
            let result =
                sim.block_on(
                    "a transfer",
                    LONG,
                    async move { node.transfer_leadership(target).await },
                )?;
            assert_eq!(result, Ok(()), "seed {seed}: transfer {leader} -> {target}");
            assert_eq!(sim.wait_for_leader(LONG)?, target, "seed {seed}");
        }
        converge_and_check(&mut sim, &clients)
    });
}

#[test]
fn a_partitioned_leader_serves_no_stale_lease_read() {
    // The leader is cut off; as soon as the majority has elected another leader and committed
    // a write, the old leader (which may still believe it leads, until CheckQuorum) is asked
    // for a read: it must not answer with an index below that write, lease or not.
    for (default_seed, lease_reads) in [(61, true), (62, true), (63, true), (64, false)] {
        scenario("no stale lease read", default_seed, |seed| {
            let mut config = SimulationConfig::new(3, seed);
            config.faults = LinkFaults::RELIABLE;
            let hook: ConfigHook = Arc::new(move |c: &mut Config| c.lease_reads = lease_reads);
            let mut sim = Simulation::with_config_hook(config, Some(hook))?;
            let old = sim.wait_for_leader(LONG)?;
            sim.write(cmd("before"), LONG)?;
            sim.run_for(Duration::from_millis(Dice(seed).below(100)))?;
            sim.network.disconnect(old);
            sim.run_until("a new leader", LONG, |sim| sim.leader().is_some_and(|l| l != old))?;
            let written = sim.write(cmd("after"), LONG)?;
            let node = sim.node(old).unwrap().clone();
            let still_leader = node.status().role == Role::Leader;
            let runtime = sim.runtime.clone();
            let read = sim.block_on("a read on the old leader", LONG, async move {
                futures::select_biased! {
                    result = futures::FutureExt::fuse(node.read_index()) => result.ok(),
                    _ = futures::FutureExt::fuse(runtime.sleep_for(Duration::from_secs(2))) => None,
                }
            })?;
            println!("seed {seed}: old leader still leading: {still_leader}, read: {read:?}");
            // Cut off from every voter, it cannot confirm anything: no answer is the only
            // correct one (an answer below the write would be a stale read).
            assert_eq!(read, None, "seed {seed}: wrote {written} through the new leader");
            Ok(())
        });
    }
}

/// The setting of the single-server change bug (Ongaro, raft-dev 2015). Four voters: leader 1,
/// cut off, removes a voter `x`; the others elect a leader, which at once removes node 1 and
/// keeps only `p` in reach (`s` is cut off from it). With one-voter changes and no own-term
/// commit rule, `{l, p}` would commit `{l, p, s}` and node 1, back, would be elected by
/// `{1, s}` under `{1, p, s}` and overwrite a committed entry (that failed with Leader
/// Completeness, seed 71, under calibration mutation 6 before joint consensus). Voter changes
/// now go through a joint membership, whose quorums include a majority of the four: neither
/// change can commit without the other side, whatever the order.
#[test]
fn a_new_leader_changes_the_membership_only_after_an_entry_of_its_term_commits() {
    for default_seed in [71, 72, 73] {
        scenario("membership change by a new leader", default_seed, |seed| {
            let mut sim = sim(4, seed, LinkFaults::RELIABLE)?;
            let first = sim.wait_for_leader(LONG)?;
            let x = sim.ids().iter().copied().find(|&id| id != first).unwrap();
            sim.network.disconnect(first);
            let node = sim.node(first).cloned().unwrap();
            sim.runtime.spawn_task(async move {
                let _ = node.change_membership(MembershipChange::RemoveNode(x)).await;
            });
            let mut acted = false;
            sim.on_election(Some(Box::new(move |sim: &mut Simulation, leader: NodeId| {
                if acted || leader == first {
                    return;
                }
                acted = true;
                let rest: Vec<NodeId> =
                    sim.ids().iter().copied().filter(|&id| id != first && id != leader).collect();
                // `p` keeps in touch with the new leader; `x` is `p` unless it leads.
                let s = if rest[0] == x { rest[1] } else { rest[0] };
                sim.network.cut_one_way(leader, s);
                sim.network.cut_one_way(s, leader);
                let node = sim.node(leader).cloned().unwrap();
                sim.runtime.spawn_task(async move {
                    let _ = node.change_membership(MembershipChange::RemoveNode(first)).await;
                });
            })));
            sim.run_for(Duration::from_secs(3))?;
            sim.network.reconnect(first);
            sim.run_for(Duration::from_secs(5))?;
            converge_and_check(&mut sim, &[])
        });
    }
}

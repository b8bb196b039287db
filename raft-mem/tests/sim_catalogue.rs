//! The classic Raft test catalogue, in deterministic simulation. Every scenario runs real
//! nodes in virtual time from one seed, with every Raft invariant checked after every step; a
//! failure prints its seed, and `RAFT_SIM_SEED=<seed>` replays it exactly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod sim_support;

use std::collections::BTreeSet;
use std::time::Duration;

use raft_core::{Bytes, NodeId, Role};
use raft_mem::sim::ClientLog;
use raft_mem::LinkFaults;
use sim_support::*;

#[test]
fn initial_election() {
    scenario("initial_election", 1, |seed| {
        let mut sim = sim(3, seed, LinkFaults::RELIABLE)?;
        let leader = sim.wait_for_leader(2 * ELECTION_TIMEOUT_MAX)?;
        let term = sim.node(leader).unwrap().status().current_term;
        for s in sim.statuses() {
            assert_eq!(s.current_term, term, "terms agree");
        }
        sim.run_for(Duration::from_secs(10))?;
        assert_eq!(sim.wait_for_leader(LONG)?, leader, "no re-election without faults");
        assert_eq!(sim.node(leader).unwrap().status().current_term, term);
        Ok(())
    });
}

#[test]
fn re_election() {
    scenario("re_election", 2, |seed| {
        let mut sim = sim(3, seed, LinkFaults::RELIABLE)?;
        let first = sim.wait_for_leader(LONG)?;
        sim.network.disconnect(first);
        let second = sim.wait_for_leader(LONG)?;
        assert_ne!(first, second);
        // The old leader rejoins: it must not disturb the new one.
        sim.network.reconnect(first);
        sim.run_for(Duration::from_secs(2))?;
        assert_eq!(sim.wait_for_leader(LONG)?, second);
        // Two of three gone: no leader.
        let third = sim.ids().iter().copied().find(|&id| id != second && id != first).unwrap();
        sim.network.disconnect(second);
        sim.network.disconnect(third);
        sim.run_for(2 * ELECTION_TIMEOUT_MAX + Duration::from_secs(1))?;
        assert!(
            sim.statuses().iter().all(|s| s.role != Role::Leader),
            "no leader while 2 of 3 are gone"
        );
        sim.network.reconnect(third);
        sim.wait_for_leader(LONG)?;
        sim.network.reconnect(second);
        sim.wait_for_leader(LONG)?;
        Ok(())
    });
}

#[test]
fn many_elections() {
    scenario("many_elections", 3, |seed| {
        let mut sim = sim(7, seed, LinkFaults::RELIABLE)?;
        let mut dice = Dice(seed);
        sim.wait_for_leader(LONG)?;
        for _ in 0..10 {
            let ids = sim.ids().to_vec();
            let mut cut = BTreeSet::new();
            while cut.len() < 3 {
                cut.insert(dice.pick(&ids));
            }
            for &id in &cut {
                sim.network.disconnect(id);
            }
            sim.wait_for_leader(LONG)?;
            assert_eq!(sim.leaders_with_quorum().len(), 1, "exactly one leader");
            for &id in &cut {
                sim.network.reconnect(id);
            }
        }
        sim.wait_for_leader(LONG)?;
        Ok(())
    });
}

#[test]
fn basic_agreement() {
    scenario("basic_agreement", 4, |seed| {
        let mut sim = sim(3, seed, LinkFaults::RELIABLE)?;
        for i in 0..10 {
            let index = sim.write(cmd(&format!("v{i}")), LONG)?;
            sim.wait_applied(index, LONG)?;
        }
        let first = sim.applied(1);
        for id in [2, 3] {
            assert_eq!(sim.applied(id), first, "node {id} applied the same entries");
        }
        Ok(())
    });
}

#[test]
fn agreement_despite_a_failed_follower() {
    scenario("agreement_despite_a_failed_follower", 5, |seed| {
        let mut sim = sim(3, seed, LinkFaults::RELIABLE)?;
        let leader = sim.wait_for_leader(LONG)?;
        let follower = sim.ids().iter().copied().find(|&id| id != leader).unwrap();
        sim.network.disconnect(follower);
        for i in 0..5 {
            sim.write(cmd(&format!("a{i}")), LONG)?;
        }
        sim.network.reconnect(follower);
        let index = sim.write(cmd("after"), LONG)?;
        sim.wait_applied(index, LONG)?;
        assert_eq!(
            sim.applied(follower).len(),
            sim.applied(leader).len(),
            "the follower caught up"
        );
        Ok(())
    });
}

#[test]
fn no_agreement_without_a_quorum() {
    scenario("no_agreement_without_a_quorum", 6, |seed| {
        let mut sim = sim(5, seed, LinkFaults::RELIABLE)?;
        let index = sim.write(cmd("first"), LONG)?;
        let leader = sim.wait_for_leader(LONG)?;
        let followers: Vec<NodeId> = sim.ids().iter().copied().filter(|&id| id != leader).collect();
        for &id in &followers[..3] {
            sim.network.disconnect(id);
        }
        let committed = sim.node(leader).unwrap().status().commit_index;
        assert_eq!(
            sim.propose_on(leader, cmd("lost"), Duration::from_secs(2))?,
            None,
            "no commit without a majority"
        );
        for commit in commit_indexes(&sim, &[leader, followers[3]]) {
            assert!(
                commit <= committed,
                "commit index {commit} passed {committed} with 3 of 5 followers gone"
            );
        }
        for &id in &followers[..3] {
            sim.network.reconnect(id);
        }
        let next = sim.write(cmd("second"), LONG)?;
        assert!(next > index, "the index continues after healing");
        sim.wait_applied(next, LONG)?;
        let commands: Vec<Bytes> =
            sim.applied(leader).iter().filter_map(|e| e.command().cloned()).collect();
        assert_eq!(commands.first(), Some(&cmd("first")));
        assert_eq!(commands.last(), Some(&cmd("second")));
        Ok(())
    });
}

#[test]
fn concurrent_proposals_in_one_term_all_commit() {
    scenario("concurrent_proposals_in_one_term_all_commit", 7, |seed| {
        let mut sim = sim(3, seed, LinkFaults::RELIABLE)?;
        let leader = sim.wait_for_leader(LONG)?;
        let node = sim.node(leader).unwrap().clone();
        let term = node.status().current_term;
        let results = sim.block_on("50 concurrent proposals", LONG, async move {
            let proposals = (0..50u32).map(|i| {
                let node = node.clone();
                async move {
                    let p = node.propose(Bytes::from(format!("c{i}"))).await.ok()?;
                    let term = p.term;
                    p.response().await.ok().map(|_| term)
                }
            });
            futures::future::join_all(proposals).await
        })?;
        assert!(
            results.iter().all(|r| *r == Some(term)),
            "all 50 committed in term {term}: {results:?}"
        );
        Ok(())
    });
}

#[test]
fn partitioned_leader_with_stale_entries_rejoins() {
    scenario("partitioned_leader_with_stale_entries_rejoins", 8, |seed| {
        let mut sim = sim(3, seed, LinkFaults::RELIABLE)?;
        sim.write(cmd("101"), LONG)?;
        let old = sim.wait_for_leader(LONG)?;
        sim.network.disconnect(old);
        for text in ["102", "103", "104"] {
            sim.propose_on(old, cmd(text), Duration::from_millis(100))?;
        }
        let new = sim.wait_for_leader(LONG)?;
        assert_ne!(new, old);
        sim.write(cmd("103b"), LONG)?;
        // The new leader is cut off too, with the old one back.
        sim.network.disconnect(new);
        sim.network.reconnect(old);
        sim.write(cmd("104b"), LONG)?;
        sim.network.reconnect(new);
        let index = sim.write(cmd("105"), LONG)?;
        sim.wait_applied(index, LONG)?;
        let expected: Vec<Bytes> = ["101", "103b", "104b", "105"].map(cmd).to_vec();
        for &id in sim.ids() {
            let commands: Vec<Bytes> =
                sim.applied(id).iter().filter_map(|e| e.command().cloned()).collect();
            assert_eq!(commands, expected, "node {id}: stale entries were discarded");
        }
        Ok(())
    });
}

#[test]
fn backup_repairs_divergent_logs_quickly() {
    scenario("backup_repairs_divergent_logs_quickly", 9, |seed| {
        let mut sim = sim(5, seed, LinkFaults::RELIABLE)?;
        sim.write(cmd("start"), LONG)?;
        for round in 0..2 {
            let leader = sim.wait_for_leader(LONG)?;
            let others: Vec<NodeId> =
                sim.ids().iter().copied().filter(|&id| id != leader).collect();
            // Leader and one follower in a minority: 50 proposals that cannot commit.
            let minority = vec![leader, others[0]];
            let majority: Vec<NodeId> = others[1..].to_vec();
            sim.network.partition(&[minority.clone(), majority.clone()]);
            for i in 0..50 {
                sim.propose_on(leader, cmd(&format!("lost-{round}-{i}")), Duration::ZERO)?;
            }
            sim.run_for(Duration::from_millis(100))?;
            // The majority elects a leader and commits 50 entries.
            sim.wait_for_leader(LONG)?;
            for i in 0..50 {
                sim.write(cmd(&format!("kept-{round}-{i}")), LONG)?;
            }
            sim.network.heal();
        }
        sim.network.reset_stats();
        let start = sim.now();
        let index = sim.write(cmd("end"), LONG)?;
        sim.wait_applied(index, LONG)?;
        let elapsed = sim.now() - start;
        let stats = sim.network.stats();
        // With one term skipped per round trip, repairing two divergent followers takes a few
        // round trips; entry-by-entry backtracking over 100 entries would take hundreds.
        assert!(stats.rpcs <= 150, "seed {seed}: repair took {} RPCs over {elapsed:?}", stats.rpcs);
        println!("backup: repair and one write took {} RPCs over {elapsed:?}", stats.rpcs);
        let reference = sim.applied(sim.ids()[0]);
        for &id in sim.ids() {
            assert_eq!(sim.applied(id), reference, "node {id} converged");
        }
        Ok(())
    });
}

#[test]
fn rpc_counts() {
    scenario("rpc_counts", 10, |seed| {
        let mut sim = sim(3, seed, LinkFaults::RELIABLE)?;
        sim.wait_for_leader(LONG)?;
        let election = sim.network.stats().rpcs;
        assert!(election <= 30, "an election used {election} RPCs");
        sim.run_for(Duration::from_secs(1))?;
        sim.network.reset_stats();
        for i in 0..11 {
            sim.write(cmd(&format!("{i}")), LONG)?;
        }
        let proposals = sim.network.stats().rpcs;
        assert!(proposals <= 42, "11 proposals used {proposals} RPCs");
        sim.network.reset_stats();
        sim.run_for(Duration::from_secs(10))?;
        let idle = sim.network.stats().rpcs as f64 / 10.0;
        assert!(idle <= 60.0, "idle traffic of {idle} RPCs per second");
        println!("election {election} RPCs, 11 proposals {proposals} RPCs, idle {idle}/s");
        Ok(())
    });
}

#[test]
fn rpc_bytes() {
    scenario("rpc_bytes", 11, |seed| {
        let mut sim = sim(3, seed, LinkFaults::RELIABLE)?;
        sim.wait_for_leader(LONG)?;
        sim.network.reset_stats();
        for i in 0..10u8 {
            sim.write(Bytes::from(vec![i; 5000]), LONG)?;
        }
        let bytes = sim.network.stats().bytes;
        assert!(bytes <= 200_000, "10 proposals of 5000 bytes cost {bytes} bytes");
        println!("10 x 5000-byte proposals: {bytes} bytes on the wire");
        Ok(())
    });
}

#[test]
fn follower_failure() {
    scenario("follower_failure", 12, |seed| {
        let mut sim = sim(3, seed, LinkFaults::RELIABLE)?;
        let leader = sim.wait_for_leader(LONG)?;
        let followers: Vec<NodeId> = sim.ids().iter().copied().filter(|&id| id != leader).collect();
        sim.crash(followers[0]);
        sim.write(cmd("one follower down"), LONG)?;
        sim.crash(followers[1]);
        let before = commit_indexes(&sim, &[leader]);
        assert_eq!(sim.propose_on(leader, cmd("no majority"), Duration::from_secs(2))?, None);
        assert_eq!(commit_indexes(&sim, &[leader]), before, "no commit without a majority");
        Ok(())
    });
}

#[test]
fn leader_failure() {
    scenario("leader_failure", 13, |seed| {
        let mut sim = sim(3, seed, LinkFaults::RELIABLE)?;
        let first = sim.wait_for_leader(LONG)?;
        sim.write(cmd("a"), LONG)?;
        sim.crash(first);
        let second = sim.wait_for_leader(LONG)?;
        sim.write(cmd("b"), LONG)?;
        sim.crash(second);
        let last = sim.ids().iter().copied().find(|&id| sim.is_running(id)).unwrap();
        let before = commit_indexes(&sim, &[last]);
        sim.run_for(Duration::from_secs(3))?;
        assert!(sim.statuses().iter().all(|s| s.role != Role::Leader));
        assert_eq!(commit_indexes(&sim, &[last]), before, "no commit without a majority");
        Ok(())
    });
}

#[test]
fn persistence_across_restarts_and_partitions() {
    scenario("persistence_across_restarts_and_partitions", 14, |seed| {
        let mut sim = sim(5, seed, LinkFaults::RELIABLE)?;
        let mut dice = Dice(seed);
        let mut acknowledged = Vec::new();
        for round in 0..30 {
            let value = cmd(&format!("p{round}"));
            let index = sim.write(value.clone(), LONG)?;
            acknowledged.push((value, index));
            match round % 5 {
                0 => {
                    let id = dice.pick(sim.ids());
                    sim.restart(id)?;
                }
                1 => {
                    let leader = sim.wait_for_leader(LONG)?;
                    sim.restart(leader)?;
                }
                2 => {
                    for id in sim.ids().to_vec() {
                        sim.crash(id);
                    }
                    for id in sim.ids().to_vec() {
                        sim.start(id)?;
                    }
                }
                3 => {
                    let ids = sim.ids().to_vec();
                    let split = 1 + dice.below(4) as usize;
                    sim.network.partition(&[ids[..split].to_vec(), ids[split..].to_vec()]);
                    sim.run_for(Duration::from_secs(1))?;
                    let id = dice.pick(&ids);
                    sim.restart(id)?;
                    sim.network.heal();
                }
                _ => sim.run_for(Duration::from_millis(dice.below(1000)))?,
            }
        }
        let clients = [ClientLog::default()];
        *clients[0].acknowledged.lock().unwrap() = acknowledged;
        converge_and_check(&mut sim, &clients)
    });
}

fn figure_8(seed: u64, faults: LinkFaults) -> Outcome {
    let mut sim = sim(5, seed, faults)?;
    let mut dice = Dice(seed);
    let ids = sim.ids().to_vec();
    let mut up = ids.len();
    let mut acknowledged = Vec::new();
    for round in 0..1000 {
        if let Some(leader) = sim.leader() {
            let value = cmd(&format!("f{round}"));
            let wait = Duration::from_millis(dice.below(100));
            if let Some(index) = sim.propose_on(leader, value.clone(), wait)? {
                acknowledged.push((value, index));
            }
        }
        let pause = if dice.chance(10) { dice.below(500) } else { dice.below(13) };
        sim.run_for(Duration::from_millis(pause))?;
        if let Some(leader) = sim.leader() {
            if dice.chance(50) {
                sim.crash(leader);
                up -= 1;
            }
        }
        if up < 3 {
            let down: Vec<NodeId> = ids.iter().copied().filter(|&id| !sim.is_running(id)).collect();
            let id = dice.pick(&down);
            sim.start(id)?;
            up += 1;
        }
    }
    println!("figure 8 ({faults:?}): {} acknowledged writes", acknowledged.len());
    assert!(
        !acknowledged.is_empty(),
        "seed {seed}: no write was acknowledged; the final check would be empty"
    );
    let clients = [ClientLog::default()];
    *clients[0].acknowledged.lock().unwrap() = acknowledged;
    converge_and_check(&mut sim, &clients)
}

#[test]
fn figure_8_reliable() {
    scenario("figure_8_reliable", 15, |seed| figure_8(seed, LinkFaults::RELIABLE));
}

#[test]
fn figure_8_unreliable() {
    scenario("figure_8_unreliable", 16, |seed| figure_8(seed, LinkFaults::UNRELIABLE));
}

#[test]
fn unreliable_agreement() {
    scenario("unreliable_agreement", 17, |seed| {
        let mut sim = sim(5, seed, LinkFaults::UNRELIABLE)?;
        let clients: Vec<ClientLog> = (0..4).map(|c| sim.spawn_client(&format!("u{c}"))).collect();
        sim.run_for(Duration::from_secs(20))?;
        let acknowledged: usize = clients.iter().map(|c| c.acknowledged().len()).sum();
        assert!(
            acknowledged >= 20,
            "seed {seed}: only {acknowledged} writes committed on an unreliable network"
        );
        converge_and_check(&mut sim, &clients)
    });
}

fn churn(seed: u64, faults: LinkFaults) -> Outcome {
    let mut sim = sim(5, seed, faults)?;
    let mut dice = Dice(seed);
    let ids = sim.ids().to_vec();
    let clients: Vec<ClientLog> = (0..3).map(|c| sim.spawn_client(&format!("c{c}"))).collect();
    for _ in 0..40 {
        let id = dice.pick(&ids);
        match dice.below(4) {
            0 => sim.network.disconnect(id),
            1 => sim.network.reconnect(id),
            2 => sim.crash(id),
            _ => sim.start(id)?,
        }
        // Keep a majority alive most of the time so that progress is possible.
        let alive =
            ids.iter().filter(|&&i| sim.is_running(i) && !sim.network.is_disconnected(i)).count();
        if alive < 3 {
            let revive = dice.pick(&ids);
            sim.network.reconnect(revive);
            sim.start(revive)?;
        }
        sim.run_for(Duration::from_millis(dice.below(1500)))?;
    }
    let acknowledged: usize = clients.iter().map(|c| c.acknowledged().len()).sum();
    assert!(acknowledged > 0, "seed {seed}: no write committed during churn");
    converge_and_check(&mut sim, &clients)
}

#[test]
fn reliable_churn() {
    scenario("reliable_churn", 18, |seed| churn(seed, LinkFaults::RELIABLE));
}

#[test]
fn unreliable_churn() {
    scenario("unreliable_churn", 19, |seed| churn(seed, LinkFaults::UNRELIABLE));
}

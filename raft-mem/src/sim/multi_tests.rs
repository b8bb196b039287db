//! Negative tests of the multi-group oracles' wiring (review M2 of oracles): a real fault, or a
//! known-bad message, goes through the same path as everything a run observes, and the run must
//! report it, naming the group. Deleting the disk feed of `MultiSimulation::observe` fails the
//! first test; deleting its oracle-findings loop (or the network's observer) fails the second.
//! The convergence check (review M1) must catch a node that stays behind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use raft_core::{Envelope, LogId, Network, RequestVoteRequest, RpcRequest};

use super::{MultiSimConfig, MultiSimulation};
use crate::sim::DiskImage;

/// 4 groups on 3 nodes (even seed: no quiescence), every group past its first write.
fn started(seed: u64) -> MultiSimulation {
    let mut sim = MultiSimulation::new(MultiSimConfig::new(3, 4, seed)).unwrap();
    let groups = sim.group_ids();
    sim.require_progress(&groups, "after the start").unwrap();
    sim
}

#[test]
fn a_disk_that_goes_back_on_one_group_fails_the_run_in_that_group() {
    let mut sim = started(42);
    sim.crash(2);
    sim.run_for(Duration::from_millis(50)).unwrap();
    // The fault: node 2's disk of group 3 is swapped for an empty one while the node is down
    // (a disk that lost what it had made durable). Only the disk feed sees it (the node sends
    // nothing while down).
    let disk = sim.disk(2, 3);
    assert!(disk.hard_state().current_term > 0);
    disk.restore_image(&DiskImage::empty());
    let failure = sim.run_for(Duration::from_millis(100)).unwrap_err();
    assert_eq!(failure.violation.invariant, "durable term and vote never go back", "{failure}");
    assert!(failure.violation.detail.starts_with("group 3: node 2:"), "{failure}");
}

#[test]
fn a_message_ahead_of_its_senders_disk_fails_the_run_in_its_group() {
    let mut sim = started(44);
    sim.run_for(Duration::from_millis(50)).unwrap();
    // A RequestVote of group 2 leaves node 1 over the network in a term node 1's disk of group
    // 2 has not reached: what a node that campaigns before its new term is durable sends. Only
    // the message-boundary oracle sees it (node 1's disks are untouched).
    let term = sim.disk(1, 2).hard_state().current_term;
    let request = RpcRequest::RequestVote(RequestVoteRequest {
        term: term + 5,
        candidate_id: 1,
        last_log_id: LogId::default(),
        pre_vote: false,
        leadership_transfer: false,
    });
    let envelope = Envelope::new(2, request).with_group_id(2);
    // A second endpoint of node 1 (it retires the node's own: no matter, the run ends here).
    let endpoint = sim.network.endpoint(1);
    sim.runtime.spawn_task(async move {
        let _ = endpoint.send(envelope).await;
    });
    let failure = sim.run_for(Duration::from_millis(100)).unwrap_err();
    assert_eq!(failure.violation.invariant, "durability at the message boundary", "{failure}");
    assert!(failure.violation.detail.starts_with("group 2: node 1 sent RequestVote"), "{failure}");
}

#[test]
fn a_node_that_stays_behind_fails_the_convergence_check() {
    let mut sim = started(46);
    // Node 3 stops (paused, its clock running on) while the others acknowledge more writes:
    // it misses them, and nothing brings it back before the check.
    sim.pause(3);
    let groups = sim.group_ids();
    sim.require_progress(&groups, "with node 3 paused").unwrap();
    let failure = sim.require_convergence().unwrap_err();
    let detail = &failure.violation.detail;
    assert_eq!(
        failure.violation.invariant,
        "every acknowledged write is at its index on every node after the heal",
        "{failure}"
    );
    assert!(detail.contains("missing on node 3"), "{failure}");
    // Healed, it catches up: the same check passes, over every acknowledged write.
    sim.heal().unwrap();
    sim.require_convergence().unwrap();
    let stats = sim.stats();
    assert_eq!(stats.converged_writes, stats.acknowledged.values().sum::<u64>(), "{stats:?}");
}

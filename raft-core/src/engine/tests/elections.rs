//! Election timers (Raft Figure 2: a follower's timer restarts only when it hears from the
//! current leader or grants a vote).

use super::*;
use crate::membership::{Membership, MembershipChange};

/// Without PreVote, a node with a stale log and the shortest election timeout campaigns again
/// and again and can never win. Its RequestVotes move everyone to its term; if refusing such a
/// vote restarted the others' timers, none of them would ever time out first, and the cluster
/// would stay without a leader for as long as the stale node keeps its short timeout (found by
/// the simulation swarm, seed 2000666: node 1 at 300-600 ms behind nodes at 800-1600 ms).
#[test]
fn a_refused_vote_does_not_restart_the_election_timer() {
    for check_quorum in [false, true] {
        let configs = (1..=3)
            .map(|id| {
                let mut c = config(id, 3);
                c.pre_vote = false;
                c.check_quorum = check_quorum;
                // Node 1 always times out long before the others could.
                let (min_ms, max_ms) = if id == 1 { (100, 120) } else { (300, 600) };
                c.election_timeout_min = std::time::Duration::from_millis(min_ms);
                c.election_timeout_max = std::time::Duration::from_millis(max_ms);
                c
            })
            .collect();
        let mut c = Cluster::with_configs(configs);
        c.isolated.insert(1);
        let leader = c.elect();
        c.propose(leader, b"a");
        c.tick(5);
        let stale_term = c.nodes[&1].engine.hard_state().current_term;
        let term = c.nodes[&leader].engine.hard_state().current_term;
        assert!(stale_term > term, "the cut-off node campaigned on its own");
        assert!(c.nodes[&1].engine.last_log_id().index < c.nodes[&leader].engine.commit_index());
        c.isolated.clear();
        // Node 1 deposes the leader (its higher term reaches it) but cannot win; one of the
        // others must, within a few of their election timeouts.
        let mut elected = None;
        for _ in 0..300 {
            c.tick(1);
            let deposed = c.nodes[&leader].engine.hard_state().current_term > stale_term;
            if let ([new_leader], true) = (&c.leaders()[..], deposed) {
                elected = Some(*new_leader);
                break;
            }
        }
        let new_leader = elected.unwrap_or_else(|| {
            panic!(
                "check_quorum {check_quorum}: no leader within 3 s (5 of the longest election timeouts); terms {:?}",
                c.nodes.values().map(|n| n.engine.hard_state().current_term).collect::<Vec<_>>()
            )
        });
        assert_ne!(new_leader, 1, "the stale node cannot win");
        c.propose(new_leader, b"b");
        c.tick(10);
        assert_eq!(commands(&c.nodes[&1].applied), [&b"a"[..], b"b"], "node 1 caught up");
    }
}

/// A node that may not campaign (a learner, or a voter whose log does not say so yet) lets its
/// election timer run on: once it has not heard from a leader for an election timeout, it no
/// longer refuses votes as if that leader were alive (the CheckQuorum lease). It used to restart
/// the timer at each timeout without campaigning, which renewed its belief in the last leader
/// forever: a learner promoted while cut off, whose leader then failed, refused the only vote
/// that could elect the next one (found by the swarm, seed 3001388: a change of the whole voter
/// set to a node added again on an empty disk).
#[test]
fn a_node_that_cannot_campaign_does_not_keep_a_dead_leaders_lease() {
    let configs = vec![config(1, 2), config(2, 2), NodeConfig::joining(3)];
    let mut c = Cluster::with_configs(configs);
    let leader = c.elect();
    let other = 3 - leader;
    let learner = MembershipChange::AddLearner(3, crate::membership::NodeInfo::default());
    c.engine(leader).propose_membership(learner).unwrap();
    c.settle();
    c.tick(5);
    // Promoted while cut off: the learner never hears of it.
    c.isolated.insert(3);
    c.engine(leader).propose_membership(MembershipChange::PromoteLearner(3)).unwrap();
    c.tick(5);
    for id in [leader, other] {
        assert_eq!(c.nodes[&id].engine.membership(), &Membership::with_voters([1, 2, 3]));
    }
    assert!(!c.nodes[&3].engine.membership().is_voter(3));
    // The leader fails for good, and node 3 hears from no one for a while: it must not go on
    // believing in the leader's lease.
    c.isolated = BTreeSet::from([leader, other]);
    let timeout = c.nodes[&3].engine.timing.election_ticks_max as usize;
    c.tick(timeout);
    for _ in 0..2 * timeout {
        c.tick(1);
        assert!(!c.nodes[&3].engine.in_leader_lease(), "node 3 heard from no leader for long");
    }
    // `other` needs the vote of node 3.
    c.isolated = BTreeSet::from([leader]);
    c.tick(2 * timeout);
    assert!(c.leaders().iter().any(|&l| l != leader), "a leader elected without the failed one");
}

//! Learners and single-server membership changes, driven by the synchronous test cluster.

use super::*;
use crate::membership::{InvalidChange, Membership, MembershipChange, NodeInfo};

/// The entry a membership step appended.
pub(super) fn appended(progress: MembershipProgress) -> LogId {
    match progress {
        MembershipProgress::Changed(id)
        | MembershipProgress::Joint(id)
        | MembershipProgress::LearnersAdded(id) => id,
        MembershipProgress::Done => panic!("nothing was appended"),
    }
}

fn change(c: &mut Cluster, leader: NodeId, change: MembershipChange) -> LogId {
    let id = appended(c.engine(leader).propose_membership(change).unwrap());
    c.settle();
    id
}

fn add_learner(id: NodeId) -> MembershipChange {
    MembershipChange::AddLearner(id, NodeInfo::default())
}

#[test]
fn a_learner_catches_up_never_votes_then_is_promoted() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    c.propose(leader, b"a");
    c.add_node(Config::joining(4));
    c.isolated.insert(4);
    change(&mut c, leader, add_learner(4));
    assert!(
        matches!(
            c.engine(leader).propose_membership(MembershipChange::PromoteLearner(4)),
            Err(MembershipRefusal::LearnerBehind { learner: 4, match_index: 0, .. })
        ),
        "a learner that never answered is not promoted"
    );
    c.isolated.clear();
    c.tick(5);
    assert_eq!(commands(&c.nodes[&4].applied), vec![Bytes::from_static(b"a")]);
    assert_eq!(c.nodes[&4].engine.membership().learners(), &BTreeSet::from([4]));
    let learner = c.nodes[&leader].engine.replication().into_iter().find(|p| p.id == 4).unwrap();
    assert!(!learner.voter && learner.in_sync, "{learner:?}");
    assert_eq!(learner.match_index, c.nodes[&leader].engine.last_log_id().index);

    // The learner does not count: with two voters cut off, nothing commits.
    let others: Vec<NodeId> = (1..=3).filter(|&id| id != leader).collect();
    c.isolated.extend(others.iter().copied());
    let stuck = c.engine(leader).propose(Bytes::from_static(b"stuck")).unwrap();
    c.settle();
    assert!(c.nodes[&leader].engine.commit_index() < stuck.index);
    // ... and it never campaigns, however long it hears nothing.
    c.isolated.insert(leader);
    let term = c.nodes[&4].engine.hard_state().current_term;
    c.tick(300);
    assert_eq!(c.nodes[&4].engine.hard_state().current_term, term);
    assert_eq!(c.nodes[&4].engine.role(), Role::Follower);
    c.isolated.clear();
    let leader = c.elect();
    let votes_to_learner = c
        .log
        .iter()
        .any(|(_, a)| matches!(a, Action::Send { to: 4, request: RpcRequest::RequestVote(_), .. }));
    assert!(!votes_to_learner, "candidates ask only voters");

    change(&mut c, leader, MembershipChange::PromoteLearner(4));
    c.tick(5);
    for node in c.nodes.values() {
        assert_eq!(node.engine.membership(), &Membership::with_voters([1, 2, 3, 4]));
    }
}

#[test]
fn removing_the_leader_steps_it_down_once_committed() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    let id = change(&mut c, leader, MembershipChange::RemoveNode(leader));
    assert!(c.nodes[&leader].engine.commit_index() >= id.index);
    assert_ne!(c.nodes[&leader].engine.role(), Role::Leader);
    // It handed over with TimeoutNow: a new leader exists without any tick.
    let new_leaders = c.leaders();
    assert_eq!(new_leaders.len(), 1, "elected at once: {new_leaders:?}");
    let new_leader = c.elect();
    assert_eq!(new_leaders, vec![new_leader]);
    assert_ne!(new_leader, leader);
    let remaining: BTreeSet<NodeId> = (1..=3).filter(|&n| n != leader).collect();
    assert_eq!(c.nodes[&new_leader].engine.membership().voters(), &remaining);
    // The two remaining voters commit on their own.
    c.isolated.insert(leader);
    c.propose(new_leader, b"x");
    c.tick(5);
    for id in &remaining {
        assert_eq!(commands(&c.nodes[id].applied), vec![Bytes::from_static(b"x")]);
    }
}

#[test]
fn one_change_at_a_time_and_invalid_changes_are_refused() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    assert_eq!(
        c.engine(leader).propose_membership(MembershipChange::PromoteLearner(9)),
        Err(MembershipRefusal::Invalid(InvalidChange::NotLearner(9)))
    );
    let others: Vec<NodeId> = (1..=3).filter(|&id| id != leader).collect();
    c.isolated.extend(others.iter().copied());
    appended(c.engine(leader).propose_membership(add_learner(9)).unwrap());
    assert_eq!(
        c.engine(leader).propose_membership(add_learner(10)),
        Err(MembershipRefusal::ChangeInProgress),
        "the first change is not committed"
    );
    assert_eq!(
        c.engine(leader).propose_membership(MembershipChange::PromoteLearner(9)),
        Err(MembershipRefusal::ChangeInProgress)
    );
    let follower = others[0];
    assert_eq!(
        c.engine(follower).propose_membership(add_learner(10)),
        Err(MembershipRefusal::NotLeader(Some(leader)))
    );
}

#[test]
fn an_uncommitted_change_is_rolled_back_when_overwritten() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    c.isolated.insert(leader);
    appended(c.engine(leader).propose_membership(add_learner(9)).unwrap());
    c.settle();
    assert!(c.nodes[&leader].engine.membership().learners().contains(&9));
    let new_leader = c.elect();
    c.propose(new_leader, b"x");
    c.isolated.clear();
    c.tick(60);
    assert_eq!(c.nodes[&leader].engine.membership(), &Membership::with_voters([1, 2, 3]));
    assert_eq!(commands(&c.nodes[&leader].applied), vec![Bytes::from_static(b"x")]);
}

#[test]
fn a_restarted_node_knows_its_membership_from_the_log_and_the_snapshot() {
    let mut c = Cluster::with_configs(snapshot_configs(3));
    let leader = c.elect();
    c.add_node(Config::joining(4));
    change(&mut c, leader, add_learner(4));
    c.tick(5);
    let node = &c.nodes[&4];
    let durable = DurableState { hard_state: node.durable_hard_state, ..DurableState::default() };
    let restarted = Engine::new(Config::joining(4), &durable, node.durable_log.clone());
    assert_eq!(restarted.membership().learners(), &BTreeSet::from([4]));

    // Compact everything: the snapshot carries the membership.
    for i in 0..30 {
        c.propose(leader, if i % 2 == 0 { b"p" } else { b"q" });
    }
    c.tick(5);
    let (meta, _, _) = c.nodes[&leader].snapshot.clone().expect("a snapshot was taken");
    assert_eq!(meta.membership.learners(), &BTreeSet::from([4]));
    let restarted = Engine::with_snapshots(
        Config::joining(leader),
        &DurableState::default(),
        Vec::new(),
        Some(meta),
    );
    assert_eq!(restarted.membership().voters(), &BTreeSet::from([1, 2, 3]));
}

#[test]
fn a_leader_cut_off_after_removing_itself_still_lets_the_cluster_elect() {
    // Found by the swarm (seed 3000724): voters {1, 2}; leader 1 appends "remove 1", loses its
    // quorum before node 2 gets the entry and steps down. Node 1 has the longer log, so node 2
    // can never win; node 1 must campaign although its latest membership excludes it.
    let mut c = Cluster::new(2);
    let leader = c.elect();
    let other = 3 - leader;
    c.isolated.insert(other);
    appended(c.engine(leader).propose_membership(MembershipChange::RemoveNode(leader)).unwrap());
    c.settle();
    for _ in 0..200 {
        c.tick(1);
        if c.nodes[&leader].engine.role() != Role::Leader {
            break;
        }
    }
    assert_ne!(c.nodes[&leader].engine.role(), Role::Leader, "CheckQuorum stepped it down");
    c.isolated.clear();
    for _ in 0..400 {
        c.tick(1);
        if c.leaders() == vec![other] {
            break;
        }
    }
    assert_eq!(c.leaders(), vec![other]);
    assert_eq!(c.nodes[&other].engine.membership().voters(), &BTreeSet::from([other]));
    c.propose(other, b"alone");
    assert_eq!(commands(&c.nodes[&other].applied), vec![Bytes::from_static(b"alone")]);
}

/// raft-core lets a learner be removed and added again under the same id (the transport must
/// then reach it again: see raft-quic's `members_changed`): it is replicated to from scratch,
/// with its new metadata, catches up and can be promoted.
#[test]
fn a_learner_removed_and_added_again_catches_up_and_is_promoted() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    c.propose(leader, b"a");
    c.add_node(Config::joining(4));
    change(&mut c, leader, add_learner(4));
    c.tick(5);
    change(&mut c, leader, MembershipChange::RemoveNode(4));
    c.tick(5);
    assert!(!c.nodes[&leader].engine.membership().contains(4));
    assert!(c.nodes[&leader].engine.replication().iter().all(|p| p.id != 4));
    c.propose(leader, b"b");

    let moved = NodeInfo::with_address("10.0.0.4:7001");
    change(&mut c, leader, MembershipChange::AddLearner(4, moved.clone()));
    c.tick(5);
    assert_eq!(c.nodes[&leader].engine.membership().node(4), Some(&moved));
    let learner = c.nodes[&leader].engine.replication().into_iter().find(|p| p.id == 4).unwrap();
    assert_eq!(learner.match_index, c.nodes[&leader].engine.last_log_id().index, "{learner:?}");
    change(&mut c, leader, MembershipChange::PromoteLearner(4));
    c.tick(5);
    assert!(c.nodes[&4].engine.membership().is_voter(4));
    assert_eq!(commands(&c.nodes[&4].applied), [&b"a"[..], b"b"].map(Bytes::from_static));
}

//! Joint consensus (issue 18): changes of any set of voters in one step, and every corner of
//! them, driven by the synchronous test cluster.

use super::membership::appended;
use super::*;
use crate::membership::{InvalidChange, Membership, MembershipChange, NodeInfo};

fn info(id: NodeId) -> NodeInfo {
    NodeInfo::new(format!("10.0.0.{id}:7000"), format!("client {id}"))
}

/// A 3-voter cluster with a leader, an entry committed, and `learners` added as learners
/// that have caught up.
fn cluster_with_learners(learners: &[NodeId]) -> (Cluster, NodeId) {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    c.propose(leader, b"a");
    for &id in learners {
        c.add_node(NodeConfig::joining(id));
        let add = MembershipChange::AddLearner(id, info(id));
        appended(c.engine(leader).propose_membership(add).unwrap());
        c.settle();
    }
    c.tick(5);
    (c, leader)
}

/// The membership with exactly `voters` (and no learner), built from `leader`'s.
fn target(c: &Cluster, leader: NodeId, voters: &[NodeId]) -> Membership {
    let new = voters.iter().map(|&id| (id, info(id)));
    let current = c.nodes[&leader].engine.membership();
    let new = new.filter(|(id, _)| !current.contains(*id)).collect::<Vec<_>>();
    current.target(voters.iter().copied(), [], new).unwrap()
}

/// Leaders seen so far, by term: at most one per term (Election Safety).
#[derive(Default)]
struct LeadersByTerm(BTreeMap<Term, NodeId>);

impl LeadersByTerm {
    fn record(&mut self, c: &Cluster) {
        for (&id, node) in &c.nodes {
            if node.engine.role() == Role::Leader {
                let term = node.engine.hard_state().current_term;
                let first = *self.0.entry(term).or_insert(id);
                assert_eq!(first, id, "two leaders in term {term}");
            }
        }
    }

    /// Ticks `n` times, recording the leaders after each tick.
    fn tick(&mut self, c: &mut Cluster, n: usize) {
        for _ in 0..n {
            c.tick(1);
            self.record(c);
        }
    }
}

/// The leaders among `ids`.
fn leaders_among(c: &Cluster, ids: &[NodeId]) -> Vec<NodeId> {
    ids.iter().copied().filter(|id| c.nodes[id].engine.role() == Role::Leader).collect()
}

/// Ticks until exactly one of `ids` leads, and returns it.
fn elect_among(c: &mut Cluster, seen: &mut LeadersByTerm, ids: &[NodeId]) -> NodeId {
    for _ in 0..400 {
        seen.tick(c, 1);
        if let [leader] = leaders_among(c, ids)[..] {
            return leader;
        }
    }
    panic!("no leader among {ids:?}");
}

/// Whether `id` holds `target` as a committed membership.
fn committed(c: &Cluster, id: NodeId, target: &Membership) -> bool {
    let engine = &c.nodes[&id].engine;
    engine.membership() == target && engine.commit_index() >= engine.membership_index()
}

#[test]
fn two_of_three_voters_are_replaced_in_one_change() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    c.propose(leader, b"a");
    for id in [4, 5] {
        c.add_node(NodeConfig::joining(id));
    }
    let keep = (1..=3).find(|&id| id != leader).unwrap();
    let goal = target(&c, leader, &[keep, 4, 5]);
    assert_eq!(goal.node(4), Some(&info(4)));

    // Step 1: the new voters join as learners, and nothing waits for them yet.
    let step = c.engine(leader).propose_membership_target(&goal).unwrap();
    assert!(matches!(step, MembershipProgress::LearnersAdded(_)), "{step:?}");
    c.settle();
    let membership = c.nodes[&leader].engine.membership().clone();
    assert_eq!(membership.voters(), &BTreeSet::from([1, 2, 3]));
    assert_eq!(membership.learners(), &BTreeSet::from([4, 5]));
    assert_eq!(membership.node(5), Some(&info(5)), "metadata travels with the membership");
    let step = c.engine(leader).propose_membership_target(&goal);
    assert!(
        matches!(step, Err(MembershipRefusal::LearnerBehind { .. })),
        "learners that never answered do not vote yet: {step:?}"
    );
    c.tick(5);

    // Step 2: the joint membership, then the target, appended by the leader by itself.
    let step = c.engine(leader).propose_membership_target(&goal).unwrap();
    let MembershipProgress::Joint(joint) = step else { panic!("{step:?}") };
    assert!(c.nodes[&leader].engine.membership().is_joint(), "in force when appended");
    c.settle();
    c.tick(5);
    for id in [keep, 4, 5] {
        assert!(committed(&c, id, &goal), "node {id}: {:?}", c.nodes[&id].engine.membership());
        assert!(c.nodes[&id].engine.membership_index() > joint.index);
    }
    assert_eq!(
        c.engine(leader).propose_membership_target(&goal),
        Err(MembershipRefusal::NotLeader(c.nodes[&leader].engine.leader_id()))
    );
    assert_ne!(c.nodes[&leader].engine.role(), Role::Leader, "the removed leader handed over");
    let new_leader = c.elect();
    assert!([keep, 4, 5].contains(&new_leader));
    assert_eq!(c.engine(new_leader).propose_membership_target(&goal), Ok(MembershipProgress::Done));

    // The removed voters are not needed any more.
    c.isolated.extend((1..=3).filter(|&id| id != keep));
    c.propose(new_leader, b"b");
    c.tick(5);
    for id in [keep, 4, 5] {
        assert_eq!(commands(&c.nodes[&id].applied), [&b"a"[..], b"b"].map(Bytes::from_static));
    }
}

#[test]
fn during_a_joint_change_the_old_majority_alone_commits_nothing_and_elects_no_one() {
    let (mut c, leader) = cluster_with_learners(&[4, 5, 6]);
    let mut seen = LeadersByTerm::default();
    let goal = target(&c, leader, &[4, 5, 6]);
    c.groups = vec![[1, 2, 3].into(), [4, 5, 6].into()];
    let joint = appended(c.engine(leader).propose_membership_target(&goal).unwrap());
    let stuck = c.engine(leader).propose(Bytes::from_static(b"x")).unwrap();
    c.settle();
    for id in 1..=3 {
        assert!(c.nodes[&id].engine.membership().is_joint());
        assert!(c.nodes[&id].engine.commit_index() < joint.index);
    }
    // CheckQuorum deposes the leader (no majority of the new voters), and no one of the old
    // voters can win an election: they need a majority of the new voters too.
    seen.tick(&mut c, 400);
    assert_eq!(leaders_among(&c, &[1, 2, 3]), Vec::<NodeId>::new());
    for id in 1..=6 {
        assert!(c.nodes[&id].engine.commit_index() < stuck.index, "node {id} committed x");
    }

    // Healed, an old voter holding the joint entry wins (the learners have no vote yet) and
    // finishes the change; `x` commits with it.
    c.groups.clear();
    elect_among(&mut c, &mut seen, &[1, 2, 3, 4, 5, 6]);
    seen.tick(&mut c, 20);
    for id in [4, 5, 6] {
        assert!(committed(&c, id, &goal), "node {id}");
        assert_eq!(commands(&c.nodes[&id].applied), [&b"a"[..], b"x"].map(Bytes::from_static));
    }
}

#[test]
fn during_a_joint_change_the_new_majority_alone_commits_nothing_and_the_change_rolls_back() {
    let (mut c, leader) = cluster_with_learners(&[4, 5, 6]);
    let mut seen = LeadersByTerm::default();
    let others: Vec<NodeId> = (1..=3).filter(|&id| id != leader).collect();
    let goal = target(&c, leader, &[4, 5, 6]);
    let before = c.nodes[&leader].engine.membership().clone();
    // The joint entry reaches the new voters only.
    c.groups = vec![others.iter().copied().collect(), [leader, 4, 5, 6].into()];
    let joint = appended(c.engine(leader).propose_membership_target(&goal).unwrap());
    c.settle();
    for id in [leader, 4, 5, 6] {
        assert!(c.nodes[&id].engine.membership().is_joint());
        assert!(c.nodes[&id].engine.commit_index() < joint.index, "node {id}");
    }
    // Neither side of the joint membership can elect a leader: it needs both majorities. The
    // old voters without the entry elect one of theirs, under the old membership.
    seen.tick(&mut c, 400);
    assert_eq!(leaders_among(&c, &[leader, 4, 5, 6]), Vec::<NodeId>::new());
    let old_side = elect_among(&mut c, &mut seen, &others);
    c.propose(old_side, b"y");

    // Healed: the old side's log wins; the joint entry is overwritten and rolled back.
    c.groups.clear();
    seen.tick(&mut c, 30);
    for id in 1..=6 {
        assert_eq!(c.nodes[&id].engine.membership(), &before, "node {id}");
        assert_eq!(commands(&c.nodes[&id].applied), [&b"a"[..], b"y"].map(Bytes::from_static));
    }
    // The change can be made again.
    let leader = elect_among(&mut c, &mut seen, &[1, 2, 3]);
    appended(c.engine(leader).propose_membership_target(&goal).unwrap());
    c.settle();
    seen.tick(&mut c, 10);
    assert!(committed(&c, 4, &goal));
}

#[test]
fn a_new_leader_finishes_the_joint_change_of_a_leader_that_crashed() {
    let (mut c, leader) = cluster_with_learners(&[4]);
    let mut seen = LeadersByTerm::default();
    let others: Vec<NodeId> = (1..=3).filter(|&id| id != leader).collect();
    let goal = target(&c, leader, &[others[0], others[1], 4]);
    // The leader sends the joint entry and crashes before it hears any answer.
    c.deaf.insert(leader);
    let joint = appended(c.engine(leader).propose_membership_target(&goal).unwrap());
    c.settle();
    c.isolated.insert(leader);
    for id in [others[0], others[1], 4] {
        assert!(c.nodes[&id].engine.membership().is_joint(), "node {id}");
    }
    let new_leader = elect_among(&mut c, &mut seen, &[others[0], others[1], 4]);
    seen.tick(&mut c, 10);
    let term = c.nodes[&new_leader].engine.hard_state().current_term;
    for id in [others[0], others[1], 4] {
        assert!(committed(&c, id, &goal), "node {id}");
        let index = c.nodes[&id].engine.membership_index();
        assert!(index > joint.index);
        assert_eq!(c.nodes[&id].engine.term_at(index), Some(term), "appended by the new leader");
    }
}

/// Restarts every node from its durable log and hard state.
fn restart_all_from_logs(c: &mut Cluster) {
    let ids: Vec<NodeId> = c.nodes.keys().copied().collect();
    for id in ids {
        restart_from_log(c, id);
    }
}

/// Restarts node `id` from its durable log and hard state.
fn restart_from_log(c: &mut Cluster, id: NodeId) {
    let node = &c.nodes[&id];
    let log = node.durable_log.clone();
    let hard_state = node.durable_hard_state;
    let last = log.last().map_or(LogId::default(), Entry::log_id);
    let durable = DurableState { hard_state, purged: LogId::default(), last };
    let engine = node.config.clone().engine_with_snapshots(&durable, log.clone(), None);
    c.restart(engine, hard_state, log);
}

#[test]
fn a_cluster_restarted_in_the_joint_phase_finishes_the_change_from_its_logs() {
    let (mut c, leader) = cluster_with_learners(&[4, 5]);
    let mut seen = LeadersByTerm::default();
    let goal = target(&c, leader, &[4, 5, leader]);
    c.deaf.insert(leader);
    let joint = appended(c.engine(leader).propose_membership_target(&goal).unwrap());
    c.settle();
    c.deaf.clear();
    restart_all_from_logs(&mut c);
    for id in 1..=5 {
        let engine = &c.nodes[&id].engine;
        assert!(engine.membership().is_joint(), "node {id} restarted with the joint membership");
        assert_eq!(engine.membership_index(), joint.index);
    }
    elect_among(&mut c, &mut seen, &[1, 2, 3, 4, 5]);
    seen.tick(&mut c, 10);
    for id in [leader, 4, 5] {
        assert!(committed(&c, id, &goal), "node {id}");
    }
}

#[test]
fn a_cluster_restarted_from_snapshots_taken_in_the_joint_phase_finishes_the_change() {
    let old = Membership::new((1..=3).map(|id| (id, info(id))), [(4, info(4))]).unwrap();
    let goal = old.target([2, 3, 4], [], []).unwrap();
    let joint = old.joint_to(&goal);
    let data = b"state".to_vec();
    let meta = SnapshotMeta {
        last_included: LogId::new(2, 10),
        membership: joint.clone(),
        size: data.len() as u64,
        checksum: crate::snapshot_meta::Checksum::of(&data),
    };
    let mut c = Cluster::with_configs(snapshot_configs(4));
    let hard_state = HardState { current_term: 2, voted_for: None };
    let durable = DurableState { hard_state, purged: meta.last_included, last: meta.last_included };
    for id in 1..=4 {
        let config = c.nodes[&id].config.clone();
        let engine = config.engine_with_snapshots(&durable, Vec::new(), Some(meta.clone()));
        assert_eq!(engine.membership(), &joint);
        c.restart(engine, hard_state, Vec::new());
        c.nodes.get_mut(&id).unwrap().snapshot = Some((meta.clone(), data.clone(), Vec::new()));
    }
    let mut seen = LeadersByTerm::default();
    elect_among(&mut c, &mut seen, &[1, 2, 3, 4]);
    seen.tick(&mut c, 10);
    for id in [2, 3, 4] {
        assert!(committed(&c, id, &goal), "node {id}: {:?}", c.nodes[&id].engine.membership());
    }
    let leader = elect_among(&mut c, &mut seen, &[2, 3, 4]);
    c.propose(leader, b"after");
    c.tick(5);
    assert_eq!(commands(&c.nodes[&4].applied), [Bytes::from_static(b"after")]);
}

#[test]
fn a_second_change_waits_while_one_is_in_progress() {
    let (mut c, leader) = cluster_with_learners(&[4]);
    let others: Vec<NodeId> = (1..=3).filter(|&id| id != leader).collect();
    let goal = target(&c, leader, &[1, 2, 3, 4]);
    c.isolated.extend(others.iter().copied());
    appended(c.engine(leader).propose_membership_target(&goal).unwrap());
    c.settle();
    let other = target(&c, leader, &[leader]);
    let add = MembershipChange::AddLearner(5, info(5));
    assert_eq!(
        c.engine(leader).propose_membership_target(&other),
        Err(MembershipRefusal::ChangeInProgress)
    );
    assert_eq!(
        c.engine(leader).propose_membership(add.clone()),
        Err(MembershipRefusal::ChangeInProgress)
    );
    assert_eq!(
        c.engine(leader).propose_membership_target(&goal),
        Err(MembershipRefusal::ChangeInProgress),
        "even the same target: the leader finishes it by itself"
    );
    c.isolated.clear();
    c.tick(5);
    assert!(committed(&c, leader, &goal));
    assert_eq!(c.engine(leader).propose_membership_target(&goal), Ok(MembershipProgress::Done));
    let step = c.engine(leader).propose_membership(add).unwrap();
    assert!(matches!(step, MembershipProgress::Changed(_)), "a learner is one entry: {step:?}");
}

#[test]
fn invalid_targets_are_refused_with_the_reason() {
    let (mut c, leader) = cluster_with_learners(&[4]);
    let refuse = |c: &mut Cluster, t: &Membership| c.engine(leader).propose_membership_target(t);
    assert_eq!(
        refuse(&mut c, &Membership::default()),
        Err(MembershipRefusal::Invalid(InvalidChange::NoVoters))
    );
    let current = c.nodes[&leader].engine.membership().clone();
    let joint = current.joint_to(&Membership::with_voters([4]));
    assert_eq!(refuse(&mut c, &joint), Err(MembershipRefusal::Invalid(InvalidChange::Joint)));
    assert_eq!(current.target([1, 9], [], []), Err(InvalidChange::UnknownNode(9)));
    assert_eq!(current.target([], [4], []), Err(InvalidChange::NoVoters));
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    assert_eq!(
        c.engine(follower).propose_membership_target(&current),
        Err(MembershipRefusal::NotLeader(Some(leader)))
    );
    assert_eq!(refuse(&mut c, &current), Ok(MembershipProgress::Done), "already there");
}

#[test]
fn a_removed_leader_cut_off_before_the_final_configuration_commits_lets_the_cluster_elect() {
    removed_leader_cut_off_before_the_final_configuration_commits(false);
}

/// The same, with the removed leader restarted once cut off: the voter refuses no vote for it
/// (it has not committed the final membership, see `Engine::candidate_superseded`).
#[test]
fn a_removed_leader_restarted_before_the_final_configuration_commits_lets_the_cluster_elect() {
    removed_leader_cut_off_before_the_final_configuration_commits(true);
}

fn removed_leader_cut_off_before_the_final_configuration_commits(restart: bool) {
    // Voters {1, 2} become {other}. The leader appends the final configuration and loses the
    // only voter of it before it gets the entry: the leader has the longer log, so the other
    // node can never win; the leader must campaign although the final configuration excludes
    // it (it was a voter of the joint one before).
    let mut c = Cluster::new(2);
    let leader = c.elect();
    let other = 3 - leader;
    let goal = target(&c, leader, &[other]);
    appended(c.engine(leader).propose_membership_target(&goal).unwrap());
    c.drain_all();
    while c.nodes[&leader].engine.membership().is_joint() {
        assert!(c.deliver_one(), "the joint entry commits");
    }
    c.isolated.insert(other);
    c.settle();
    assert_eq!(c.nodes[&leader].engine.membership(), &goal);
    assert!(c.nodes[&other].engine.membership().is_joint(), "the final entry never reached it");
    let mut seen = LeadersByTerm::default();
    while c.nodes[&leader].engine.role() == Role::Leader {
        seen.tick(&mut c, 1);
    }
    if restart {
        restart_from_log(&mut c, leader);
    }
    c.isolated.clear();
    for _ in 0..400 {
        seen.tick(&mut c, 1);
        if leaders_among(&c, &[1, 2]) == vec![other] && committed(&c, other, &goal) {
            break;
        }
    }
    assert_eq!(leaders_among(&c, &[1, 2]), vec![other]);
    assert!(committed(&c, other, &goal));
    c.propose(other, b"alone");
    assert_eq!(commands(&c.nodes[&other].applied), vec![Bytes::from_static(b"alone")]);
}

/// A lease rests on promises of a quorum of the membership in force. A lease a leader got from
/// the old voters (long election timeouts) must end once it keeps leading a new voter set (short
/// ones): the old voters' promises do not stop the new voters from electing another leader.
/// Before, the lease only ever grew, so a leader cut off after the change served a stale read
/// while the new voters had elected a leader and committed a write.
#[test]
fn a_lease_from_the_old_voters_ends_with_the_change() {
    let lease = |mut c: NodeConfig, timeout_ms: u64| {
        c.lease_reads = true;
        c.election_timeout_min = std::time::Duration::from_millis(timeout_ms);
        c.election_timeout_max = std::time::Duration::from_millis(2 * timeout_ms);
        c.max_clock_drift = std::time::Duration::from_millis(50);
        c
    };
    let mut c = Cluster::with_configs((1..=3).map(|id| lease(config(id, 3), 1000)).collect());
    let leader = c.elect();
    c.propose(leader, b"a");
    for id in [4, 5] {
        c.add_node(lease(NodeConfig::joining(id), 200));
        let add = MembershipChange::AddLearner(id, info(id));
        appended(c.engine(leader).propose_membership(add).unwrap());
        c.settle();
    }
    c.tick(5);
    c.engine(leader).read_index(ReadId(1));
    c.drain(leader);
    let commit = c.nodes[&leader].engine.commit_index();
    assert_eq!(c.reads, vec![(leader, ReadId(1), Ok(commit))], "a lease from the old voters");

    // The leader stays, the other old voters go; the change completes at once.
    let goal = target(&c, leader, &[leader, 4, 5]);
    appended(c.engine(leader).propose_membership_target(&goal).unwrap());
    c.settle();
    c.tick(1);
    assert!(committed(&c, leader, &goal));
    let changed = c.now;

    // Cut off, the leader still believes it leads while 4 and 5 elect one of them and commit.
    c.isolated.insert(leader);
    let mut new_commit = None;
    for _ in 0..60 {
        c.tick(1);
        if let Some(&other) = c.leaders().iter().find(|&&id| id != leader) {
            let index = c.propose(other, b"b").index;
            if c.nodes[&other].engine.commit_index() >= index {
                new_commit = Some(index);
                break;
            }
        }
    }
    let new_commit = new_commit.expect("4 and 5 elect a leader and commit");
    assert!(c.now < changed + std::time::Duration::from_millis(800), "the old lease would hold");
    assert_eq!(c.nodes[&leader].engine.role(), Role::Leader, "it still believes it leads");
    c.engine(leader).read_index(ReadId(2));
    c.drain(leader);
    let stale =
        c.reads.iter().any(|&(_, id, r)| id == ReadId(2) && r.is_ok_and(|i| i < new_commit));
    assert!(!stale, "a stale read: {:?} while {new_commit} is committed", c.reads);
}

/// A joining node knows no membership below the first membership entry it gets (its base is
/// empty). A snapshot it takes there must not store that empty membership, which every node
/// refuses when this node later leads and sends it (review LOW 2): it waits until it has applied
/// a membership entry, and the snapshot then holds the real one.
#[test]
fn a_joining_node_snapshots_no_empty_membership() {
    let mut configs: Vec<NodeConfig> = (1..=3).map(|id| config(id, 3)).collect();
    for c in &mut configs {
        c.snapshot_interval_entries = 0;
        c.snapshot_interval_bytes = 0;
    }
    let mut c = Cluster::with_configs(configs);
    let leader = c.elect();
    for _ in 0..5 {
        c.propose(leader, b"x");
    }
    let mut joining = NodeConfig::joining(4);
    joining.max_apply_batch = 1;
    joining.snapshot_interval_entries = 2;
    joining.snapshot_keep_entries = 0;
    c.add_node(joining);
    let add = appended(
        c.engine(leader).propose_membership(MembershipChange::AddLearner(4, info(4))).unwrap(),
    );
    c.settle();
    c.tick(5);
    let engine = &c.nodes[&4].engine;
    assert!(engine.log.applied_index >= add.index, "the learner caught up");
    for (id, action) in &c.log {
        if let (4, Action::TakeSnapshot { last_included, membership }) = (*id, action) {
            assert!(
                !membership.voters().is_empty(),
                "a snapshot at {last_included:?} without voters"
            );
        }
    }
    let meta = engine.snapshot_meta().expect("the learner took a snapshot");
    assert!(meta.last_included.index >= add.index, "{meta:?}");
    assert_eq!(meta.membership.voters(), &BTreeSet::from([1, 2, 3]), "{meta:?}");
    assert!(meta.membership.is_learner(4));
}

/// Ticks node `id` alone `n` times (the others' clocks stand still), settling after each tick.
fn tick_only(c: &mut Cluster, id: NodeId, n: usize) {
    for _ in 0..n {
        c.now += c.nodes[&id].engine.config.tick_interval;
        let now = c.now;
        c.engine(id).set_now(now);
        c.engine(id).tick();
        c.settle();
    }
}

/// A node that a committed change demoted to a learner restarts: every membership looks
/// uncommitted to it (it knows no commit index), so it campaigns again as a voter of the joint
/// membership before. The voters know the final membership is committed and refuse it, so it
/// is never elected (review LOW 1: it was, then led a membership it is not a voter of, and
/// handed over again). CheckQuorum is off so that the voters' leader lease, which refuses
/// while they hear a leader, does not hide what happens once no leader is live.
#[test]
fn a_node_demoted_by_a_committed_change_is_not_elected_after_a_restart() {
    let mut c = Cluster::with_configs(
        (1..=4)
            .map(|id| {
                let mut config = config(id, 4);
                config.check_quorum = false;
                config
            })
            .collect(),
    );
    let leader = c.elect();
    c.propose(leader, b"a");
    let demoted = (1..=4).find(|&id| id != leader).unwrap();
    let voters: Vec<NodeId> = (1..=4).filter(|&id| id != demoted).collect();
    let goal = c.nodes[&leader].engine.membership().target(voters.clone(), [demoted], []).unwrap();
    appended(c.engine(leader).propose_membership_target(&goal).unwrap());
    c.settle();
    for _ in 0..50 {
        if (1..=4).all(|id| committed(&c, id, &goal)) {
            break;
        }
        c.tick(1);
    }
    for id in 1..=4 {
        let engine = &c.nodes[&id].engine;
        assert!(committed(&c, id, &goal), "node {id}: {:?}", engine.membership());
    }
    let term = c.nodes[&leader].engine.hard_state().current_term;

    restart_from_log(&mut c, demoted);
    assert!(c.nodes[&demoted].engine.may_campaign(), "its final membership looks uncommitted");

    let ticks = c.nodes[&demoted].engine.timing.election_ticks_max as usize * 3;
    for _ in 0..ticks {
        tick_only(&mut c, demoted, 1);
        let role = c.nodes[&demoted].engine.role();
        assert!(matches!(role, Role::Follower | Role::PreCandidate), "{role:?}");
    }
    assert_eq!(leaders_among(&c, &[1, 2, 3, 4]), vec![leader]);
    for id in voters {
        assert_eq!(c.nodes[&id].engine.hard_state().current_term, term, "node {id}");
    }
}

/// A target that also gives the members it keeps new metadata (their addresses, say) hands it
/// to the newcomers in the first membership entry they receive, the one that makes them
/// learners: a newcomer knows every member's address as soon as it is replicated to, not only
/// once the joint entry reaches it (which the leader can commit without it).
#[test]
fn the_learners_entry_carries_the_targets_metadata_of_kept_members() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    c.propose(leader, b"a");
    c.add_node(NodeConfig::joining(4));
    let current = c.nodes[&leader].engine.membership().clone();
    assert_eq!(current.node(1), Some(&NodeInfo::default()), "founders start without metadata");
    let goal = current.target([1, 2, 3, 4], [], (1..=4).map(|id| (id, info(id)))).unwrap();

    let step = c.engine(leader).propose_membership_target(&goal).unwrap();
    assert!(matches!(step, MembershipProgress::LearnersAdded(_)), "{step:?}");
    let membership = c.nodes[&leader].engine.membership().clone();
    assert_eq!(membership.learners(), &BTreeSet::from([4]));
    for id in 1..=4 {
        assert_eq!(membership.node(id), Some(&info(id)), "node {id}'s metadata in {membership:?}");
    }
    c.settle();
    c.tick(5);
    assert_eq!(c.nodes[&4].engine.membership(), &membership, "what the newcomer first learns");
}

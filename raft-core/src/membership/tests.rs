#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

fn info(address: &'static str) -> NodeInfo {
    NodeInfo::with_address(Bytes::from_static(address.as_bytes()))
}

fn ids(set: &BTreeSet<NodeId>) -> Vec<NodeId> {
    set.iter().copied().collect()
}

#[test]
fn changes_apply_one_node_at_a_time() {
    let m = Membership::with_voters([1, 2, 3]);
    let added = m.apply(MembershipChange::AddLearner(4, info("d:4"))).unwrap();
    assert_eq!(ids(added.learners()), [4]);
    assert!(added.contains(4) && !added.is_voter(4) && added.is_learner(4));
    assert_eq!(added.node(4), Some(&info("d:4")));
    let promoted = added.apply(MembershipChange::PromoteLearner(4)).unwrap();
    assert_eq!(ids(promoted.voters()), [1, 2, 3, 4]);
    assert!(promoted.learners().is_empty());
    assert_eq!(promoted.node(4), Some(&info("d:4")), "metadata stays with the node");
    let removed = promoted.apply(MembershipChange::RemoveNode(1)).unwrap();
    assert_eq!(ids(removed.voters()), [2, 3, 4]);
    assert_eq!(removed.members(), [2, 3, 4].into());
    assert_eq!(removed.node(1), None, "a removed node's metadata goes with it");
    let moved = removed.apply(MembershipChange::SetNodeInfo(2, info("b:2"))).unwrap();
    assert_eq!(moved.node(2), Some(&info("b:2")));
    assert_eq!(moved.voters(), removed.voters());
}

#[test]
fn invalid_changes_are_refused() {
    let m = Membership::with_voters([1]);
    let add = |id| MembershipChange::AddLearner(id, NodeInfo::default());
    assert_eq!(m.apply(add(1)), Err(InvalidChange::AlreadyMember(1)));
    assert_eq!(m.apply(MembershipChange::PromoteLearner(2)), Err(InvalidChange::NotLearner(2)));
    assert_eq!(m.apply(MembershipChange::PromoteLearner(1)), Err(InvalidChange::NotLearner(1)));
    assert_eq!(m.apply(MembershipChange::RemoveNode(2)), Err(InvalidChange::NotMember(2)));
    assert_eq!(m.apply(MembershipChange::RemoveNode(1)), Err(InvalidChange::LastVoter(1)));
    let set = MembershipChange::SetNodeInfo(2, NodeInfo::default());
    assert_eq!(m.apply(set), Err(InvalidChange::NotMember(2)));
    let huge = NodeInfo::with_address(vec![0; MAX_NODE_INFO_BYTES + 1]);
    assert_eq!(
        m.apply(MembershipChange::AddLearner(2, huge)),
        Err(InvalidChange::NodeInfoTooLarge(2))
    );
}

#[test]
fn targets_need_voters_and_metadata_for_every_member() {
    assert_eq!(Membership::new([], [(4, info("d"))]), Err(InvalidChange::NoVoters));
    assert_eq!(Membership::from_ids([1, 2], [2]), Err(InvalidChange::VoterIsLearner(2)));
    let m = Membership::new([(1, info("a")), (2, info("b"))], [(3, info("c"))]).unwrap();
    assert_eq!(m.nodes().len(), 3);

    // `target` keeps known metadata, takes new metadata, and names unknown nodes.
    let t = m.target([2, 4], [1], [(4, info("d"))]).unwrap();
    assert_eq!(ids(t.voters()), [2, 4]);
    assert_eq!(ids(t.learners()), [1]);
    assert_eq!(t.node(1), Some(&info("a")));
    assert_eq!(t.node(4), Some(&info("d")));
    assert_eq!(t.node(3), None);
    assert_eq!(m.target([2, 9], [], []), Err(InvalidChange::UnknownNode(9)));
    assert_eq!(m.target([2], [], [(7, info("g"))]), Err(InvalidChange::NotMember(7)));
    assert_eq!(m.target([], [1], []), Err(InvalidChange::NoVoters));
    let too_many = (0..MAX_MEMBERS as u64 + 1).map(|id| (id, NodeInfo::default()));
    assert_eq!(Membership::new(too_many, []), Err(InvalidChange::TooManyMembers(MAX_MEMBERS + 1)));
}

#[test]
fn a_joint_membership_moves_to_its_target() {
    let old = Membership::new([(1, info("a")), (2, info("b")), (3, info("c"))], [(9, info("i"))])
        .unwrap();
    let target = old.target([3, 4, 5], [2], [(4, info("d")), (5, info("e"))]).unwrap();
    let joint = old.joint_to(&target);
    assert!(joint.is_joint());
    assert_eq!(ids(joint.outgoing_voters()), [1, 2, 3]);
    assert_eq!(ids(joint.voters()), [3, 4, 5]);
    assert_eq!(joint.all_voters(), [1, 2, 3, 4, 5].into());
    assert!(joint.is_voter(2) && !joint.is_learner(2), "a demoted voter votes until the end");
    assert!(!joint.contains(9), "a learner the target drops is gone at once");
    assert_eq!(joint.node(1), Some(&info("a")), "outgoing voters keep their metadata");
    assert_eq!(joint.check(), Ok(()));
    assert_eq!(joint.finalized(), target);
    assert_eq!(target.finalized(), target);
    assert_eq!(joint.check_target(), Err(InvalidChange::Joint));
    // Changes apply to the configuration being entered.
    let next = joint.apply(MembershipChange::RemoveNode(5)).unwrap();
    assert_eq!(ids(next.voters()), [3, 4]);
    assert!(!next.is_joint());
}

#[test]
fn the_quorum_rule_needs_a_majority_of_every_voter_set() {
    let single = Membership::with_voters([1, 2, 3, 4, 5]);
    let values = |id: NodeId| [0, 9, 7, 5, 3, 1][id as usize];
    assert_eq!(single.agreed_value(values), 5, "three of five hold 5 or more");
    assert!(single.has_quorum(|id| id <= 3));
    assert!(!single.has_quorum(|id| id <= 2));

    let joint = Membership::with_voters([1, 2, 3]).joint_to(&Membership::with_voters([3, 4, 5]));
    assert_eq!(joint.agreed_value(values), 3, "old set: 7; new set: 3");
    assert!(!joint.has_quorum(|id| id <= 3), "the old majority alone");
    assert!(!joint.has_quorum(|id| id >= 3), "the new majority alone");
    assert!(joint.has_quorum(|id| id == 2 || id == 3 || id == 4));

    assert_eq!(Membership::default().agreed_value(|_| 7), 0, "no voters, no quorum");
    assert!(!Membership::default().has_quorum(|_| true));
    let even = Membership::with_voters([1, 2, 3, 4]);
    assert_eq!(even.agreed_value(|id| [0, 7, 7, 0, 0][id as usize]), 0, "two of four");
}

#[test]
fn the_serde_form_is_versioned_and_decodes_the_format_of_earlier_builds() {
    let old = Membership::new([(1, info("a")), (2, info("b"))], [(3, info("c"))]).unwrap();
    let joint = old.joint_to(&old.target([2, 4], [], [(4, info("d"))]).unwrap());
    for m in [old, joint, Membership::default()] {
        let bytes = postcard::to_allocvec(&m).unwrap();
        assert_eq!(bytes[0], 0, "variant 0: format 2");
        assert_eq!(postcard::from_bytes::<Membership>(&bytes).unwrap(), m);
    }

    // Decoding checks the invariants: a voter that is also a learner, metadata for nobody.
    let bad = Membership::from_parts_unchecked(
        [1].into(),
        BTreeSet::new(),
        [1].into(),
        [(1, NodeInfo::default())].into(),
    );
    assert!(postcard::from_bytes::<Membership>(&postcard::to_allocvec(&bad).unwrap()).is_err());
    let bad = Membership::from_parts_unchecked(
        [1].into(),
        BTreeSet::new(),
        BTreeSet::new(),
        [(1, NodeInfo::default()), (5, NodeInfo::default())].into(),
    );
    assert!(postcard::from_bytes::<Membership>(&postcard::to_allocvec(&bad).unwrap()).is_err());
}

/// Only the canonical encoding decodes: ids in ascending order, each once, in every set and in
/// the metadata (a set or map would otherwise take the others silently).
#[test]
fn the_serde_form_refuses_ids_out_of_order_or_repeated() {
    // Variant, voters, outgoing, learners (count, ids each), metadata (count, then id, address,
    // data per member); empty metadata is `0, 0`.
    let canonical: &[u8] = &[0, 2, 1, 2, 0, 0, 2, 1, 0, 0, 2, 0, 0];
    let decoded = postcard::from_bytes::<Membership>(canonical).unwrap();
    assert_eq!(decoded, Membership::from_ids([1, 2], []).unwrap());
    assert_eq!(postcard::to_allocvec(&decoded).unwrap(), canonical);
    for bad in [
        &[0, 2, 2, 1, 0, 0, 2, 1, 0, 0, 2, 0, 0][..],
        &[0, 2, 1, 1, 0, 0, 1, 1, 0, 0],
        &[0, 1, 1, 0, 2, 2, 2, 2, 1, 0, 0, 2, 0, 0],
        &[0, 1, 1, 0, 0, 2, 1, 0, 0, 1, 0, 0],
        &[0, 2, 1, 2, 0, 0, 2, 2, 0, 0, 1, 0, 0],
    ] {
        assert!(postcard::from_bytes::<Membership>(bad).is_err(), "{bad:?} decoded");
    }
    // Format 1 (an entry payload of earlier builds): voters {2, 1}.
    assert!(postcard::from_bytes::<crate::Entry>(&[7, 3, 2, 2, 2, 1, 0]).is_err());
    assert!(postcard::from_bytes::<crate::Entry>(&[7, 3, 2, 2, 1, 2, 0]).is_ok());
}

//! Cluster membership: who votes, who only learns, and how that changes.
//!
//! The membership lives in the replicated log as [`EntryPayload::Membership`] entries and in
//! snapshots ([`SnapshotMeta::membership`]). A node uses the latest membership in its log as soon
//! as the entry is appended, committed or not (single-server changes, Raft thesis §4.1), and
//! falls back to the one before it if the entry is overwritten. A node whose log and snapshot
//! hold no membership uses [`Config::voters`] (how a new cluster bootstraps).
//!
//! Changes go one node at a time ([`MembershipChange`]): any two consecutive memberships then
//! have overlapping majorities, so two leaders cannot be elected in one term across a change. A
//! leader proposes a change only after an entry of its own term is committed and while no other
//! change is uncommitted (the fix to the single-server algorithm described on raft-dev in 2015).
//!
//! [`EntryPayload::Membership`]: crate::EntryPayload::Membership
//! [`SnapshotMeta::membership`]: crate::SnapshotMeta::membership
//! [`Config::voters`]: crate::Config::voters

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// The members of the cluster at one point of the log.
///
/// Invariant (kept by [`Membership::apply`]): `voters` and `learners` are disjoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Membership {
    /// The voting members: elections and commitment need a majority of them.
    pub voters: BTreeSet<NodeId>,
    /// Non-voting members: they receive the log (or a snapshot) but never vote, never count
    /// toward a quorum and never start elections.
    pub learners: BTreeSet<NodeId>,
}

/// One step of a membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Adds a node as a learner: the leader starts replicating to it.
    AddLearner(NodeId),
    /// Makes a learner a voter. The leader refuses until the learner has answered its
    /// replication and while it is more than `Config::max_promotion_lag_entries` behind the
    /// commit index, so that a new voter never stalls commitment while it catches up.
    PromoteLearner(NodeId),
    /// Removes a voter or a learner. Removing the leader is allowed: it keeps leading until the
    /// change commits (without counting itself), then steps down.
    RemoveNode(NodeId),
}

impl MembershipChange {
    /// The node the change is about.
    pub fn node(&self) -> NodeId {
        match *self {
            MembershipChange::AddLearner(id)
            | MembershipChange::PromoteLearner(id)
            | MembershipChange::RemoveNode(id) => id,
        }
    }
}

/// Why a [`MembershipChange`] cannot be applied to a membership.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidChange {
    /// `AddLearner` of a node that is already a voter or a learner.
    #[error("node {0} is already a member")]
    AlreadyMember(NodeId),
    /// `PromoteLearner` of a node that is not a learner.
    #[error("node {0} is not a learner")]
    NotLearner(NodeId),
    /// `RemoveNode` of a node that is not a member.
    #[error("node {0} is not a member")]
    NotMember(NodeId),
    /// Removing the only voter would leave a cluster that can never commit again.
    #[error("node {0} is the last voter")]
    LastVoter(NodeId),
    /// The membership would have this many members, more than nodes accept from the wire
    /// (65,536).
    #[error("{0} members exceed the limit of {max}", max = crate::engine::MAX_MEMBERS)]
    TooManyMembers(usize),
}

impl Membership {
    /// A membership of `voters` and no learners.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Self { voters: voters.into_iter().collect(), learners: BTreeSet::new() }
    }

    /// Whether `id` votes.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id)
    }

    /// Whether `id` is a voter or a learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    /// Every member, voters and learners, in increasing id order.
    pub fn members(&self) -> BTreeSet<NodeId> {
        self.voters.union(&self.learners).copied().collect()
    }

    /// The membership after `change`, or why the change does not apply.
    pub fn apply(&self, change: MembershipChange) -> Result<Membership, InvalidChange> {
        let mut next = self.clone();
        match change {
            MembershipChange::AddLearner(id) => {
                if self.contains(id) {
                    return Err(InvalidChange::AlreadyMember(id));
                }
                next.learners.insert(id);
            }
            MembershipChange::PromoteLearner(id) => {
                if !next.learners.remove(&id) {
                    return Err(InvalidChange::NotLearner(id));
                }
                next.voters.insert(id);
            }
            MembershipChange::RemoveNode(id) => {
                if self.voters.len() == 1 && self.is_voter(id) {
                    return Err(InvalidChange::LastVoter(id));
                }
                if !(next.voters.remove(&id) || next.learners.remove(&id)) {
                    return Err(InvalidChange::NotMember(id));
                }
            }
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_apply_one_node_at_a_time() {
        let m = Membership::with_voters([1, 2, 3]);
        let added = m.apply(MembershipChange::AddLearner(4)).unwrap_or_default();
        assert_eq!(added.learners, [4].into());
        assert!(added.contains(4) && !added.is_voter(4));
        let promoted = added.apply(MembershipChange::PromoteLearner(4)).unwrap_or_default();
        assert_eq!(promoted.voters, [1, 2, 3, 4].into());
        assert!(promoted.learners.is_empty());
        let removed = promoted.apply(MembershipChange::RemoveNode(1)).unwrap_or_default();
        assert_eq!(removed.voters, [2, 3, 4].into());
        assert_eq!(removed.members(), [2, 3, 4].into());
    }

    #[test]
    fn invalid_changes_are_refused() {
        let m = Membership::with_voters([1]);
        assert_eq!(m.apply(MembershipChange::AddLearner(1)), Err(InvalidChange::AlreadyMember(1)));
        assert_eq!(m.apply(MembershipChange::PromoteLearner(2)), Err(InvalidChange::NotLearner(2)));
        assert_eq!(m.apply(MembershipChange::PromoteLearner(1)), Err(InvalidChange::NotLearner(1)));
        assert_eq!(m.apply(MembershipChange::RemoveNode(2)), Err(InvalidChange::NotMember(2)));
        assert_eq!(m.apply(MembershipChange::RemoveNode(1)), Err(InvalidChange::LastVoter(1)));
    }
}

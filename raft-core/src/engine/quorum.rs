//! Vote tallies. Whether votes make a quorum is [`Membership::agreed_value`]'s question, the one
//! quorum rule of the engine (a majority of every voter set of a joint membership).

use crate::membership::Membership;
use crate::types::NodeId;
use std::collections::BTreeSet;

/// The outcome of an election so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VoteResult {
    Won,
    Lost,
    Pending,
}

/// Votes collected in one (pre-)election.
#[derive(Debug, Default)]
pub(crate) struct VoteTally {
    granted: BTreeSet<NodeId>,
    rejected: BTreeSet<NodeId>,
}

impl VoteTally {
    pub(crate) fn record(&mut self, from: NodeId, granted: bool) {
        if granted {
            self.granted.insert(from);
        } else {
            self.rejected.insert(from);
        }
    }

    /// Won once the granted votes form a quorum; lost once they cannot any more (even if every
    /// voter yet to answer granted its vote).
    pub(crate) fn result(&self, membership: &Membership) -> VoteResult {
        if membership.has_quorum(|id| self.granted.contains(&id)) {
            VoteResult::Won
        } else if !membership.has_quorum(|id| !self.rejected.contains(&id)) {
            VoteResult::Lost
        } else {
            VoteResult::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_wins_loses_or_waits() {
        let voters = Membership::with_voters([1, 2, 3, 4, 5]);
        let mut tally = VoteTally::default();
        tally.record(1, true);
        tally.record(2, true);
        assert_eq!(tally.result(&voters), VoteResult::Pending);
        tally.record(9, true); // not a voter
        assert_eq!(tally.result(&voters), VoteResult::Pending);
        tally.record(3, true);
        assert_eq!(tally.result(&voters), VoteResult::Won);

        let mut tally = VoteTally::default();
        tally.record(1, true);
        tally.record(2, false);
        tally.record(3, false);
        assert_eq!(tally.result(&voters), VoteResult::Pending);
        tally.record(4, false);
        assert_eq!(tally.result(&voters), VoteResult::Lost);
    }

    #[test]
    fn a_joint_election_needs_both_majorities() {
        let old = Membership::with_voters([1, 2, 3]);
        let joint = old.joint_to(&Membership::with_voters([3, 4, 5]));
        let mut tally = VoteTally::default();
        for id in [1, 2, 3] {
            tally.record(id, true);
        }
        assert_eq!(tally.result(&joint), VoteResult::Pending, "the old majority alone");
        tally.record(4, true);
        assert_eq!(tally.result(&joint), VoteResult::Won);

        let mut tally = VoteTally::default();
        for id in [3, 4, 5] {
            tally.record(id, true);
        }
        tally.record(1, false);
        assert_eq!(tally.result(&joint), VoteResult::Pending, "the new majority alone");
        tally.record(2, false);
        assert_eq!(tally.result(&joint), VoteResult::Lost, "no majority of the old set left");
    }
}

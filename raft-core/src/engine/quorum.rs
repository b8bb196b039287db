//! Majority arithmetic.

use crate::types::{LogIndex, NodeId};
use std::collections::BTreeSet;

/// The number of votes that make a majority of `voters`.
pub(crate) fn majority(voters: usize) -> usize {
    voters / 2 + 1
}

/// The highest index that a majority has reached, given each voter's index.
pub(crate) fn committed_index(mut indexes: Vec<LogIndex>) -> LogIndex {
    if indexes.is_empty() {
        return 0;
    }
    indexes.sort_unstable_by(|a, b| b.cmp(a));
    indexes[majority(indexes.len()) - 1]
}

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

    pub(crate) fn result(&self, voters: &BTreeSet<NodeId>) -> VoteResult {
        let need = majority(voters.len());
        if self.granted.iter().filter(|id| voters.contains(id)).count() >= need {
            VoteResult::Won
        } else if self.rejected.iter().filter(|id| voters.contains(id)).count()
            > voters.len().saturating_sub(need)
        {
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
    fn majorities() {
        assert_eq!(majority(1), 1);
        assert_eq!(majority(2), 2);
        assert_eq!(majority(3), 2);
        assert_eq!(majority(4), 3);
        assert_eq!(majority(5), 3);
    }

    #[test]
    fn committed_index_is_the_majority_minimum() {
        assert_eq!(committed_index(vec![5]), 5);
        assert_eq!(committed_index(vec![5, 3, 1]), 3);
        assert_eq!(committed_index(vec![1, 5, 3, 4, 2]), 3);
        assert_eq!(committed_index(vec![7, 7, 0, 0]), 0);
    }

    #[test]
    fn tally_wins_loses_or_waits() {
        let voters: BTreeSet<NodeId> = [1, 2, 3, 4, 5].into();
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
}

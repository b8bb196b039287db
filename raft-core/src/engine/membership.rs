//! The membership history of the log: the membership in force at the log's base (the snapshot
//! or the configuration) and every membership entry after it, so that the effective membership
//! (the latest one) can be rolled back when entries are overwritten and read as of any index
//! when a snapshot is taken; and the leader's side of membership changes.

use super::progress::{Progress, ReplicationMode};
use super::transfer::LeaderTransfer;
use super::{Engine, RoleState};
use crate::membership::{InvalidChange, Membership, MembershipChange};
use crate::message::{RpcRequest, TimeoutNowRequest};
use crate::types::{Entry, EntryPayload, LogId, LogIndex, NodeId};

/// Why the leader refused a membership change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipRefusal {
    /// This node is not the leader; the known leader, if any.
    NotLeader(Option<NodeId>),
    /// Another change is not committed yet, or the leader has not committed an entry of its own
    /// term yet: try again shortly.
    ChangeInProgress,
    /// A leadership transfer is in progress.
    TransferInProgress,
    /// The change does not apply to the current membership.
    Invalid(InvalidChange),
    /// `PromoteLearner` of a learner more than `Config::max_promotion_lag_entries` behind the
    /// commit index: wait for it to catch up.
    LearnerBehind {
        /// The last entry the learner is known to hold.
        match_index: LogIndex,
        /// The leader's commit index.
        commit_index: LogIndex,
    },
}

impl Engine {
    /// The membership in force: the latest one in the log (committed or not), else the latest
    /// snapshot's, else the configured one.
    pub fn membership(&self) -> &Membership {
        self.log.membership().latest()
    }

    /// Leader: what it knows of each follower's replication, in id order (empty on other
    /// roles).
    pub fn replication(&self) -> Vec<crate::types::PeerReplication> {
        let RoleState::Leader(leader) = &self.role else { return Vec::new() };
        let membership = self.membership();
        leader
            .progress
            .iter()
            .map(|(&id, p)| crate::types::PeerReplication {
                id,
                voter: membership.is_voter(id),
                match_index: p.match_index,
                in_sync: p.mode == ReplicationMode::Replicate,
                snapshot_in_progress: p.mode == ReplicationMode::Snapshot,
                snapshot_failures: p.snapshot_failures.streak,
                snapshot_error: p.snapshot_failures.last,
            })
            .collect()
    }

    /// The index of the entry that set [`Engine::membership`] (0: the configured one; at most
    /// the snapshot's last index when a snapshot's).
    pub fn membership_index(&self) -> LogIndex {
        self.log.membership().latest_index()
    }

    /// Leader: appends the membership after `change`. It is in force at once; the change is
    /// complete once the entry commits (a removed leader then steps down).
    pub fn propose_membership(
        &mut self,
        change: MembershipChange,
    ) -> Result<LogId, MembershipRefusal> {
        let RoleState::Leader(leader) = &self.role else {
            return Err(MembershipRefusal::NotLeader(self.leader_id));
        };
        if leader.transfer.is_some() {
            return Err(MembershipRefusal::TransferInProgress);
        }
        let commit_index = self.log.commit_index;
        if !self.own_term_committed() || self.membership_index() > commit_index {
            return Err(MembershipRefusal::ChangeInProgress);
        }
        let next = self.membership().apply(change).map_err(MembershipRefusal::Invalid)?;
        let size = next.voters.len() + next.learners.len(); // disjoint
        if size > super::MAX_MEMBERS {
            return Err(MembershipRefusal::Invalid(InvalidChange::TooManyMembers(size)));
        }
        if let MembershipChange::PromoteLearner(id) = change {
            // The learner must have answered (its position is known: Replicate mode) and be
            // close enough to the commit index.
            let progress = leader.progress.get(&id);
            let match_index = progress.map_or(0, |p| p.match_index);
            let known = progress.is_some_and(|p| p.mode == ReplicationMode::Replicate);
            let lag_allowed = self.config.max_promotion_lag_entries;
            if !known || match_index.saturating_add(lag_allowed) < commit_index {
                return Err(MembershipRefusal::LearnerBehind { match_index, commit_index });
            }
        }
        tracing::info!(id = self.id, ?change, voters = ?next.voters, learners = ?next.learners, "membership change");
        let id = self.append_entry(EntryPayload::Membership(next));
        self.sync_membership();
        Ok(id)
    }

    /// Brings the leader's bookkeeping in line with the membership in force, after any change of
    /// the log (append, truncation, snapshot install): replication to new members, none to
    /// removed ones, quorums of the new voters.
    pub(super) fn sync_membership(&mut self) {
        if self.membership_seen == *self.membership() {
            return;
        }
        self.membership_seen = self.membership().clone();
        let members = self.membership_seen.members();
        let next = self.log.last_index() + 1;
        let (max_requests, max_bytes) =
            (self.config.max_inflight_append_entries, self.config.max_inflight_bytes);
        if let RoleState::Leader(leader) = &mut self.role {
            leader.progress.retain(|id, _| members.contains(id));
            for &id in members.iter().filter(|&&id| id != self.id) {
                leader
                    .progress
                    .entry(id)
                    .or_insert_with(|| Progress::new(next, max_requests, max_bytes));
            }
            self.check_transfer_target();
            self.maybe_commit();
        }
    }

    /// Whether this node may start an election: it is a voter of the membership in force, or
    /// that membership removes it but is not known committed and it was a voter before it.
    /// Without the second case a node holding an uncommitted change that removes it (a leader
    /// that lost its quorum mid-change) could be the only one with an up-to-date log and yet
    /// never campaign, and the others could never win: no leader ever again. Votes are still
    /// counted among the voters of the membership in force, so a node elected this way commits
    /// the change and steps down.
    pub(super) fn may_campaign(&self) -> bool {
        if self.membership().is_voter(self.id) {
            return true;
        }
        self.membership_index() > self.log.commit_index
            && self.log.membership().previous().is_some_and(|m| m.is_voter(self.id))
    }

    /// A leader that is not a voter of the membership in force (it was removed) steps down
    /// once that membership is committed; until then it replicates without counting itself.
    /// It hands over so that the cluster does not wait an election timeout for a new leader: if
    /// the most up-to-date voter holds the whole log it gets TimeoutNow at once; otherwise a
    /// leadership transfer to it starts (no new proposals, TimeoutNow once it caught up), and the
    /// leader steps down by itself only if that transfer times out.
    pub(super) fn step_down_if_removed(&mut self) {
        let last_index = self.log.last_index();
        let RoleState::Leader(leader) = &mut self.role else { return };
        let membership = self.log.membership().latest();
        if membership.is_voter(self.id)
            || self.log.commit_index < self.log.membership().latest_index()
        {
            return;
        }
        let successor = leader
            .progress
            .iter()
            .filter(|(id, _)| membership.is_voter(**id))
            .max_by_key(|(_, progress)| progress.match_index)
            .map(|(&id, progress)| (id, progress.match_index));
        if leader.transfer.is_some() {
            return; // a hand-over (or a transfer asked for before) is under way
        }
        if let Some((to, match_index)) = successor {
            if match_index < last_index && !leader.handover_started {
                tracing::info!(
                    id = self.id,
                    successor = to,
                    "removed from the voters; handing over"
                );
                leader.handover_started = true;
                leader.transfer = Some(LeaderTransfer::new(to));
                return;
            }
        }
        let successor = successor.map(|(id, _)| id);
        tracing::info!(id = self.id, ?successor, "removed from the voters; stepping down");
        if let Some(to) = successor {
            let term = self.hard_state.current_term;
            let request = RpcRequest::TimeoutNow(TimeoutNowRequest { term, leader_id: self.id });
            self.send(to, request, false);
        }
        self.become_follower(self.hard_state.current_term, None);
    }
}

/// Memberships by log index. Invariant: `changes` are in increasing index order, all after
/// `base.0`.
#[derive(Debug, Clone)]
pub(crate) struct MembershipLog {
    /// The membership in force at `base.0` (0: the configured initial membership).
    base: (LogIndex, Membership),
    /// Membership entries after `base.0`.
    changes: Vec<(LogIndex, Membership)>,
}

impl MembershipLog {
    /// The membership `base` in force at index `at`, with no later change known.
    pub(crate) fn new(at: LogIndex, base: Membership) -> Self {
        Self { base: (at, base), changes: Vec::new() }
    }

    /// Records `entry` if it carries a membership and follows the base.
    pub(crate) fn appended(&mut self, entry: &Entry) {
        if let EntryPayload::Membership(m) = &entry.payload {
            if entry.index > self.base.0 {
                self.changes.push((entry.index, m.clone()));
            }
        }
    }

    /// Forgets the changes at `from` or later (their entries were overwritten).
    pub(crate) fn truncated(&mut self, from: LogIndex) {
        self.changes.retain(|(index, _)| *index < from);
    }

    /// Folds the changes up to `up_to` into the base (their entries were compacted away).
    pub(crate) fn compacted(&mut self, up_to: LogIndex) {
        if up_to <= self.base.0 {
            return;
        }
        let folded = self.changes.iter().take_while(|(index, _)| *index <= up_to).count();
        let base = match folded {
            0 => self.base.1.clone(),
            n => self.changes[n - 1].1.clone(),
        };
        self.changes.drain(..folded);
        self.base = (up_to, base);
    }

    /// Replaces the whole history by `membership` in force at `at` (a snapshot was installed).
    pub(crate) fn reset(&mut self, at: LogIndex, membership: Membership) {
        *self = Self::new(at, membership);
    }

    /// The latest membership: the one in force now.
    pub(crate) fn latest(&self) -> &Membership {
        self.changes.last().map_or(&self.base.1, |(_, m)| m)
    }

    /// The index of the latest membership entry (the base's index if there is none after it).
    pub(crate) fn latest_index(&self) -> LogIndex {
        self.changes.last().map_or(self.base.0, |(index, _)| *index)
    }

    /// The membership before the latest change (`None` if no change follows the base).
    pub(crate) fn previous(&self) -> Option<&Membership> {
        match self.changes.len() {
            0 => None,
            1 => Some(&self.base.1),
            n => Some(&self.changes[n - 2].1),
        }
    }

    /// The membership in force at `index` (not before the base).
    pub(crate) fn at(&self, index: LogIndex) -> &Membership {
        self.changes.iter().rev().find(|(at, _)| *at <= index).map_or(&self.base.1, |(_, m)| m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(index: LogIndex, voters: &[u64]) -> Entry {
        let m = Membership::with_voters(voters.iter().copied());
        Entry { index, term: 1, payload: EntryPayload::Membership(m) }
    }

    #[test]
    fn latest_rolls_back_on_truncation_and_folds_on_compaction() {
        let mut log = MembershipLog::new(0, Membership::with_voters([1, 2, 3]));
        log.appended(&Entry { index: 1, term: 1, payload: EntryPayload::Blank });
        log.appended(&change(2, &[1, 2, 3, 4]));
        log.appended(&change(5, &[2, 3, 4]));
        assert_eq!(log.latest().voters, [2, 3, 4].into());
        assert_eq!(log.latest_index(), 5);
        assert_eq!(log.at(4).voters, [1, 2, 3, 4].into());
        assert_eq!(log.at(1).voters, [1, 2, 3].into());
        log.truncated(5);
        assert_eq!(log.latest().voters, [1, 2, 3, 4].into());
        log.compacted(3);
        assert_eq!(log.latest().voters, [1, 2, 3, 4].into());
        assert_eq!(log.latest_index(), 3);
        log.truncated(4); // nothing after the base to forget
        assert_eq!(log.latest().voters, [1, 2, 3, 4].into());
        log.reset(10, Membership::with_voters([7]));
        log.appended(&change(9, &[8])); // before the base: ignored
        assert_eq!(log.latest().voters, [7].into());
    }
}

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
#[non_exhaustive]
pub enum MembershipRefusal {
    /// This node is not the leader; the known leader, if any.
    NotLeader(Option<NodeId>),
    /// Another change is not complete yet (an uncommitted membership, or a joint one that the
    /// leader finishes once it commits), or the leader has not committed an entry of its own
    /// term yet: try again shortly.
    ChangeInProgress,
    /// A leadership transfer is in progress.
    TransferInProgress,
    /// The change does not apply to the current membership, or the target is not a valid one.
    Invalid(InvalidChange),
    /// A learner that would become a voter has not answered the leader's replication yet or is
    /// more than `Config::max_promotion_lag_entries` behind the commit index: wait for it to
    /// catch up.
    LearnerBehind {
        /// The learner.
        learner: NodeId,
        /// The last entry the learner is known to hold.
        match_index: LogIndex,
        /// The leader's commit index.
        commit_index: LogIndex,
    },
}

/// What a leader did to move the membership toward a target (see
/// [`Engine::propose_membership_target`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MembershipProgress {
    /// The target is the membership in force, and it is committed: nothing to do.
    Done,
    /// Appended the target itself (a change that keeps the voters): complete once this entry
    /// commits.
    Changed(LogId),
    /// Appended the joint membership of the current voters and the target's. Once it commits,
    /// the leader (this one or the next) appends the target by itself: the change is complete
    /// once that later entry commits.
    Joint(LogId),
    /// Appended the current membership plus the target's new voters as learners: propose the
    /// same target again once they caught up.
    LearnersAdded(LogId),
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

    /// A number that changes whenever [`Engine::membership`] may have changed: while it stays
    /// the same, so does the membership (a cheap test for a driver that follows it).
    pub fn membership_generation(&self) -> u64 {
        self.log.membership().generation()
    }

    /// The index of the entry that set [`Engine::membership`] (0: the configured one; at most
    /// the snapshot's last index when a snapshot's).
    pub fn membership_index(&self) -> LogIndex {
        self.log.membership().latest_index()
    }

    /// The first membership after index `index` as far as the log knows it (see
    /// `MembershipLog::first_after`: a membership entry, or the membership in force at the end
    /// of a compacted prefix that covers `index + 1`, which is not claimed to be the first).
    pub(crate) fn membership_after(&self, index: LogIndex) -> FirstAfter<'_> {
        self.log.membership().first_after(index)
    }

    /// Leader: takes one step of `change`, applied to the membership in force (see
    /// [`Engine::propose_membership_target`]; a change never adds a voter that is not a member
    /// yet, so it never needs a `LearnersAdded` step).
    pub fn propose_membership(
        &mut self,
        change: MembershipChange,
    ) -> Result<MembershipProgress, MembershipRefusal> {
        self.check_can_change()?;
        let target = self.membership().apply(change).map_err(MembershipRefusal::Invalid)?;
        self.step_toward(&target)
    }

    /// Leader: takes the next step from the membership in force toward `target` (a single
    /// configuration with a voter). Refused while another change is in progress. Then, in this
    /// order: nothing if `target` is in force and committed; else the target's voters that are
    /// not members yet join as learners (one entry); else, once every learner that becomes a
    /// voter has caught up (the rule of [`MembershipRefusal::LearnerBehind`]), the target itself
    /// if it keeps the voters, or the joint membership of the current and the target's voters.
    /// A joint membership is in force at once; once it commits, the leader appends the target by
    /// itself. Memberships take effect when appended; a removed leader steps down (handing over)
    /// once the membership without it commits.
    pub fn propose_membership_target(
        &mut self,
        target: &Membership,
    ) -> Result<MembershipProgress, MembershipRefusal> {
        self.check_can_change()?;
        target.check_target().map_err(MembershipRefusal::Invalid)?;
        self.step_toward(target)
    }

    /// Whether this leader may propose a membership change now.
    fn check_can_change(&self) -> Result<(), MembershipRefusal> {
        let RoleState::Leader(leader) = &self.role else {
            return Err(MembershipRefusal::NotLeader(self.leader_id));
        };
        if leader.transfer.is_some() {
            return Err(MembershipRefusal::TransferInProgress);
        }
        if !self.own_term_committed()
            || self.membership_index() > self.log.commit_index
            || self.membership().is_joint()
        {
            return Err(MembershipRefusal::ChangeInProgress);
        }
        Ok(())
    }

    /// One step toward `target` (valid), from a committed single configuration.
    fn step_toward(
        &mut self,
        target: &Membership,
    ) -> Result<MembershipProgress, MembershipRefusal> {
        let current = self.membership().clone();
        if current == *target {
            return Ok(MembershipProgress::Done);
        }
        if current.voters() != target.voters() {
            // The joint membership names the outgoing voters and the target's members together:
            // refuse now a change that would need one over a bound (followers refuse it).
            current.joint_to(target).check().map_err(MembershipRefusal::Invalid)?;
        }
        let newcomers: Vec<NodeId> =
            target.voters().iter().copied().filter(|&id| !current.contains(id)).collect();
        if !newcomers.is_empty() {
            // The learners' entry is the first membership a newcomer receives: it carries the
            // target's metadata of the members kept too, so that a newcomer can reach (say,
            // ask the leader for a read index) every member as soon as it is replicated to,
            // not only once the joint entry, which may commit without it, reaches it.
            let mut next = current.clone();
            for (&id, info) in target.nodes() {
                if current.node(id).is_some_and(|old| old != info) {
                    next = next
                        .apply(MembershipChange::SetNodeInfo(id, info.clone()))
                        .map_err(MembershipRefusal::Invalid)?;
                }
            }
            for id in newcomers {
                let info = target.node(id).cloned().unwrap_or_default();
                next = next
                    .apply(MembershipChange::AddLearner(id, info))
                    .map_err(MembershipRefusal::Invalid)?;
            }
            return Ok(MembershipProgress::LearnersAdded(self.append_membership(next)));
        }
        for &learner in target.voters().iter().filter(|&&id| current.is_learner(id)) {
            self.check_caught_up(learner)?;
        }
        if current.voters() == target.voters() {
            return Ok(MembershipProgress::Changed(self.append_membership(target.clone())));
        }
        let joint = current.joint_to(target);
        Ok(MembershipProgress::Joint(self.append_membership(joint)))
    }

    /// A learner may become a voter once it answered (its position is known: Replicate mode)
    /// and is at most `max_promotion_lag_entries` behind the commit index.
    fn check_caught_up(&self, learner: NodeId) -> Result<(), MembershipRefusal> {
        let RoleState::Leader(leader) = &self.role else {
            return Err(MembershipRefusal::NotLeader(self.leader_id));
        };
        let commit_index = self.log.commit_index;
        let progress = leader.progress.get(&learner);
        let match_index = progress.map_or(0, |p| p.match_index);
        let known = progress.is_some_and(|p| p.mode == ReplicationMode::Replicate);
        if !known
            || match_index.saturating_add(self.config.max_promotion_lag_entries) < commit_index
        {
            return Err(MembershipRefusal::LearnerBehind { learner, match_index, commit_index });
        }
        Ok(())
    }

    /// Appends `next` (in force at once) and brings the leader's bookkeeping in line.
    fn append_membership(&mut self, next: Membership) -> LogId {
        tracing::info!(
            id = self.id,
            voters = ?next.voters(),
            outgoing = ?next.outgoing_voters(),
            learners = ?next.learners(),
            "membership change"
        );
        let id = self.append_entry(EntryPayload::Membership(next));
        self.sync_membership();
        id
    }

    /// Leader: once a joint membership is committed (and an entry of this leader's term, so
    /// that its commit index is the cluster's), appends the configuration it moves to. Any
    /// leader does it, so a change interrupted by a crash is finished by the next leader.
    pub(super) fn finish_joint_change(&mut self) {
        let latest = self.log.membership().latest();
        if !self.is_leader()
            || !latest.is_joint()
            || self.membership_index() > self.log.commit_index
            || !self.own_term_committed()
        {
            return;
        }
        let target = latest.finalized();
        self.append_membership(target);
    }

    /// Brings the leader's bookkeeping in line with the membership in force, after any change of
    /// the log (append, truncation, snapshot install): replication to new members, none to
    /// removed ones, quorums of the new voters.
    pub(super) fn sync_membership(&mut self) {
        // Cheap test first: this runs after every append (each AppendEntries on a follower).
        let generation = self.log.membership().generation();
        if self.membership_generation_seen == generation {
            return;
        }
        self.membership_generation_seen = generation;
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
            self.lease_membership_changed();
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
    ///
    /// A node knows its commit index only from a leader, so after a restart every membership
    /// looks uncommitted to it, and a node that a committed change removed or demoted campaigns
    /// again (thesis §4.2.2: it "should still start new elections, as it might still be needed
    /// until the C_new entry is committed", which it cannot know). The voters that know stop it
    /// instead ([`Engine::candidate_superseded`]).
    pub(super) fn may_campaign(&self) -> bool {
        if self.membership().is_voter(self.id) {
            return true;
        }
        self.membership_index() > self.log.commit_index
            && self.log.membership().previous().is_some_and(|m| m.is_voter(self.id))
    }

    /// Whether a (pre-)vote for `candidate`, whose log ends at `last_log_id`, is refused because
    /// the candidate is not needed: it votes in neither set of the membership in force here,
    /// which is committed here, and its log is the same as this node's (so that membership is
    /// its latest too: it campaigns only because it cannot know that it is committed, see
    /// [`Engine::may_campaign`]). Refusing it costs no liveness: any voter with this log wins
    /// with the same votes, and a candidate with a more up-to-date log (one that may hold a
    /// newer membership in which it votes, or entries the others lack) is not refused here.
    /// Thesis §4.2.3 stops removed servers with the leader lease; this also covers the time
    /// when no leader is live, in which a removed node would otherwise win, lead a membership
    /// it is not a voter of, and hand over again.
    pub(super) fn candidate_superseded(&self, candidate: NodeId, last_log_id: LogId) -> bool {
        !self.membership().is_voter(candidate)
            && self.membership_index() <= self.log.commit_index
            && last_log_id == self.log.last_log_id()
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

/// The first membership after an index of a [`MembershipLog`] (see
/// [`MembershipLog::first_after`]), as far as the log still knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FirstAfter<'a> {
    /// Known: the membership entry at this index is the first one after the index asked for
    /// (the entries between them are in the log and carry none).
    Entry(LogIndex, &'a Membership),
    /// Unknown: the entries after the index asked for, up to `base`'s index, were compacted
    /// away (or replaced by an installed snapshot), so whether one of them carried a membership,
    /// and which, is unknown. `base` is the membership in force at the end of that prefix (the
    /// last membership entry in it, else the one in force before it); `next` is the first
    /// membership entry after the prefix still in the log, if any. Neither is necessarily the
    /// first membership after the index asked for.
    Compacted { base: (LogIndex, &'a Membership), next: Option<(LogIndex, &'a Membership)> },
    /// The log holds no membership entry after the index asked for, and none was compacted.
    None,
}

/// Memberships by log index. Invariant: `changes` are in increasing index order, all after
/// `base.0`.
#[derive(Debug, Clone)]
pub(crate) struct MembershipLog {
    /// The membership in force at `base.0` (0: the configured initial membership).
    base: (LogIndex, Membership),
    /// Membership entries after `base.0`.
    changes: Vec<(LogIndex, Membership)>,
    /// Grows whenever the latest membership may have changed (see [`MembershipLog::generation`]).
    generation: u64,
}

impl MembershipLog {
    /// The membership `base` in force at index `at`, with no later change known.
    pub(crate) fn new(at: LogIndex, base: Membership) -> Self {
        Self { base: (at, base), changes: Vec::new(), generation: 0 }
    }

    /// A number that changes whenever [`MembershipLog::latest`] may have changed: equal
    /// generations (of the same log) mean the same latest membership, so callers that follow
    /// the membership compare this instead of the memberships on every step.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Records `entry` if it carries a membership and follows the base.
    pub(crate) fn appended(&mut self, entry: &Entry) {
        if let EntryPayload::Membership(m) = &entry.payload {
            if entry.index > self.base.0 {
                self.changes.push((entry.index, m.clone()));
                self.generation += 1;
            }
        }
    }

    /// Forgets the changes at `from` or later (their entries were overwritten).
    pub(crate) fn truncated(&mut self, from: LogIndex) {
        let before = self.changes.len();
        self.changes.retain(|(index, _)| *index < from);
        if self.changes.len() != before {
            self.generation += 1;
        }
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
        self.generation += 1;
    }

    /// Replaces the whole history by `membership` in force at `at` (a snapshot was installed).
    pub(crate) fn reset(&mut self, at: LogIndex, membership: Membership) {
        let generation = self.generation + 1;
        *self = Self::new(at, membership);
        self.generation = generation;
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

    /// The first membership entry after `index` if the log still holds every entry after
    /// `index` ([`FirstAfter::Entry`], or [`FirstAfter::None`] if there is none); else
    /// [`FirstAfter::Compacted`]: the entries after `index` up to the base's index were
    /// compacted away, and the base is only the membership in force at its index (it is not
    /// claimed to be the first change after `index`). O(log n) in the changes held.
    pub(crate) fn first_after(&self, index: LogIndex) -> FirstAfter<'_> {
        let next = self.changes.partition_point(|(at, _)| *at <= index);
        let next = self.changes.get(next).map(|(at, m)| (*at, m));
        if self.base.0 > index {
            return FirstAfter::Compacted { base: (self.base.0, &self.base.1), next };
        }
        next.map_or(FirstAfter::None, |(at, m)| FirstAfter::Entry(at, m))
    }

    /// The membership in force at `index` (not before the base).
    pub(crate) fn at(&self, index: LogIndex) -> &Membership {
        self.changes.iter().rev().find(|(at, _)| *at <= index).map_or(&self.base.1, |(_, m)| m)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

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
        assert_eq!(log.latest().voters(), &BTreeSet::from([2, 3, 4]));
        assert_eq!(log.latest_index(), 5);
        assert_eq!(log.at(4).voters(), &BTreeSet::from([1, 2, 3, 4]));
        assert_eq!(log.at(1).voters(), &BTreeSet::from([1, 2, 3]));
        let (m2, m5) = (log.at(2).clone(), log.latest().clone());
        assert_eq!(log.first_after(1), FirstAfter::Entry(2, &m2));
        assert_eq!(log.first_after(2), FirstAfter::Entry(5, &m5));
        assert_eq!(log.first_after(4), FirstAfter::Entry(5, &m5));
        assert_eq!(log.first_after(5), FirstAfter::None);
        log.truncated(5);
        assert_eq!(log.latest().voters(), &BTreeSet::from([1, 2, 3, 4]));
        log.compacted(3);
        assert_eq!(log.latest().voters(), &BTreeSet::from([1, 2, 3, 4]));
        assert_eq!(log.latest_index(), 3);
        // The change at 2 was folded into the base: the first membership after 1 is not known
        // any more, only the base (the membership in force at 3).
        let base = FirstAfter::Compacted { base: (3, &m2), next: None };
        assert_eq!(log.first_after(1), base);
        assert_eq!(log.first_after(3), FirstAfter::None);
        log.truncated(4); // nothing after the base to forget
        assert_eq!(log.latest().voters(), &BTreeSet::from([1, 2, 3, 4]));
        log.reset(10, Membership::with_voters([7]));
        log.appended(&change(9, &[8])); // before the base: ignored
        assert_eq!(log.latest().voters(), &BTreeSet::from([7]));
    }

    /// Review HIGH-1 of memwait: once the entries after an index are compacted, the base (the
    /// membership in force at the compaction index) is not the first change after that index.
    /// Changes at 2 and 5, compacted up to 3: the first change after 2 is the one at 5, and
    /// the base holds the one at 2; `first_after(2)` says the entries after 2 were compacted,
    /// not that the base is the first change after 2.
    #[test]
    fn a_compacted_prefix_is_not_taken_for_the_first_change_after_an_index_in_it() {
        let mut log = MembershipLog::new(0, Membership::with_voters([1, 2, 3]));
        log.appended(&change(2, &[1, 2, 3, 4]));
        log.appended(&change(5, &[2, 3, 4]));
        let (m2, m5) = (log.at(2).clone(), log.latest().clone());
        log.compacted(3);
        let after_2 = log.first_after(2);
        assert_eq!(after_2, FirstAfter::Compacted { base: (3, &m2), next: Some((5, &m5)) });
        assert!(!matches!(after_2, FirstAfter::Entry(..)), "the base claimed as the first change");
        assert_eq!(log.first_after(0), after_2, "the change at 2 is folded: unknown too");
        assert_eq!(log.first_after(3), FirstAfter::Entry(5, &m5));
        log.compacted(5);
        let base = FirstAfter::Compacted { base: (5, &m5), next: None };
        assert_eq!(log.first_after(2), base);
        assert_eq!(log.first_after(5), FirstAfter::None);
    }

    /// Whatever changes the latest membership changes the generation (the driver and the
    /// leader's bookkeeping skip their work while it stays the same); other entries do not.
    #[test]
    fn the_generation_changes_whenever_the_latest_membership_may_change() {
        let mut log = MembershipLog::new(0, Membership::with_voters([1, 2, 3]));
        let mut seen = log.generation();
        let mut changed = |log: &MembershipLog| {
            let now = log.generation();
            let changed = now != seen;
            seen = now;
            changed
        };
        log.appended(&Entry { index: 1, term: 1, payload: EntryPayload::Blank });
        assert!(!changed(&log), "a command or blank entry leaves the membership");
        log.appended(&change(2, &[1, 2]));
        assert!(changed(&log));
        log.truncated(3);
        assert!(!changed(&log), "a truncation after the change keeps it");
        log.truncated(2);
        assert!(changed(&log), "the change was overwritten");
        // The same membership appended again at the same index after a truncation, and a
        // different one at the same index: both are seen.
        log.appended(&change(2, &[1, 2]));
        assert!(changed(&log));
        log.truncated(2);
        log.appended(&change(2, &[1, 2, 4]));
        assert!(changed(&log));
        assert_eq!(log.latest(), &Membership::with_voters([1, 2, 4]));
        log.compacted(2);
        assert!(changed(&log));
        log.reset(10, Membership::with_voters([5]));
        assert!(changed(&log), "an installed snapshot's membership");
    }

    #[test]
    fn a_joint_membership_is_read_as_of_its_indexes() {
        let old = Membership::with_voters([1, 2, 3]);
        let target = Membership::with_voters([3, 4, 5]);
        let joint = old.joint_to(&target);
        let mut log = MembershipLog::new(0, old.clone());
        log.appended(&Entry {
            index: 4,
            term: 1,
            payload: EntryPayload::Membership(joint.clone()),
        });
        log.appended(&Entry {
            index: 7,
            term: 1,
            payload: EntryPayload::Membership(target.clone()),
        });
        assert_eq!(log.at(5), &joint, "what a snapshot taken at 5 stores");
        assert_eq!(log.previous(), Some(&joint));
        log.truncated(7);
        assert_eq!(log.latest(), &joint);
        log.compacted(5);
        log.truncated(5);
        assert_eq!(log.latest(), &joint, "the base keeps the joint membership");
    }
}

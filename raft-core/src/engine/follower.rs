//! Handling of inbound requests: AppendEntries (the follower's side of replication),
//! RequestVote/PreVote (any role) and TimeoutNow.

use super::{validate, Engine, RoleState};
use crate::message::{
    AppendEntriesRequest, AppendEntriesResponse, ConflictHint, RequestVoteRequest,
    RequestVoteResponse, TimeoutNowRequest, TimeoutNowResponse,
};
use crate::types::{HardState, LogIndex};

impl Engine {
    pub(super) fn handle_append_entries(
        &mut self,
        req: AppendEntriesRequest,
    ) -> AppendEntriesResponse {
        if req.term < self.hard_state.current_term {
            return self.append_answer(None, None);
        }
        if req.term > self.hard_state.current_term || !matches!(self.role, RoleState::Follower) {
            self.become_follower(req.term, Some(req.leader_id));
        }
        self.heard_from_leader(req.leader_id);

        let prev = req.prev_log_id;
        if prev.index < self.log.commit_index.max(self.log.compacted().index) {
            // Everything up to our commit index matches the leader (Log Matching + Leader
            // Completeness); only the part after it needs checking. Skip what we already know.
            return self.append_after_committed(req);
        }
        if !self.log.matches(prev) {
            let last_log_index = self.log.last_index();
            let conflict = match self.log.term_at(prev.index) {
                None => ConflictHint { conflict_term: 0, first_index_of_term: 0, last_log_index },
                Some(conflict_term) => ConflictHint {
                    conflict_term,
                    first_index_of_term: self.log.first_index_of_term(conflict_term, prev.index),
                    last_log_index,
                },
            };
            return self.append_answer(None, Some(conflict));
        }
        let last_new = last_new_index(&req);
        if !self.store_entries(req.entries) {
            return self.append_answer(None, None);
        }
        self.advance_follower_commit(req.leader_commit, last_new);
        self.append_answer(Some(last_new), None)
    }

    /// The answer to an AppendEntries, in the current term; one that acknowledges the leader
    /// carries the lease this node promises it (see `lease.rs`).
    fn append_answer(
        &self,
        match_index: Option<LogIndex>,
        conflict: Option<ConflictHint>,
    ) -> AppendEntriesResponse {
        let mut answer = AppendEntriesResponse {
            term: self.hard_state.current_term,
            match_index,
            conflict,
            lease_promise_ms: 0,
            quiesced: false,
        };
        if validate::acknowledges_leader(&answer) {
            answer.lease_promise_ms = self.lease_promise_ms();
        }
        answer
    }

    /// An AppendEntries whose `prev_log_id` lies before our commit point (a duplicate or a
    /// message delayed in the network): drop the committed part (validation checked that it
    /// matches where our log still holds it) and handle the rest.
    fn append_after_committed(&mut self, mut req: AppendEntriesRequest) -> AppendEntriesResponse {
        let committed = self.log.commit_index.max(self.log.compacted().index);
        let last_new = last_new_index(&req);
        if last_new <= committed {
            return self.append_answer(Some(last_new), None);
        }
        let skip = usize::try_from(committed.saturating_sub(req.prev_log_id.index))
            .unwrap_or(usize::MAX)
            .min(req.entries.len());
        drop_stored_prefix(&mut req.entries, skip);
        if !self.store_entries(req.entries) {
            return self.append_answer(None, None);
        }
        self.advance_follower_commit(req.leader_commit, last_new);
        self.append_answer(Some(last_new), None)
    }

    /// Appends entries that follow a matching entry, truncating a conflicting suffix first.
    /// Returns false, storing nothing, if that would overwrite a committed entry (validation
    /// refuses such requests first; this is the last line of defence).
    fn store_entries(&mut self, mut entries: Vec<crate::types::Entry>) -> bool {
        let Some(first_new) = entries.iter().position(|e| !self.log.matches(e.log_id())) else {
            return true;
        };
        let conflict_index = entries[first_new].index;
        if conflict_index <= self.log.last_index() {
            if conflict_index <= self.log.commit_index {
                tracing::error!(
                    id = self.id,
                    conflict_index,
                    commit = self.log.commit_index,
                    "leader tried to overwrite committed entries; refused"
                );
                return false;
            }
            self.log.truncate(conflict_index, self.writes_emitted + 1);
            self.pending_write.truncate_from = Some(
                self.pending_write.truncate_from.map_or(conflict_index, |t| t.min(conflict_index)),
            );
            self.pending_write.entries.retain(|e| e.index < conflict_index);
        }
        drop_stored_prefix(&mut entries, first_new);
        for entry in &entries {
            self.log.push(entry.clone());
        }
        if self.pending_write.entries.is_empty() {
            // The request's own vector becomes the write: no copy, no allocation.
            self.pending_write.entries = entries;
        } else {
            self.pending_write.entries.append(&mut entries);
        }
        self.sync_membership();
        true
    }

    fn advance_follower_commit(&mut self, leader_commit: u64, last_new: u64) {
        let commit = leader_commit.min(last_new);
        if commit > self.log.commit_index {
            self.log.commit_index = commit;
        }
    }

    pub(super) fn handle_request_vote(&mut self, req: &RequestVoteRequest) -> RequestVoteResponse {
        let current_term = self.hard_state.current_term;
        let refuse =
            |term| RequestVoteResponse { term, vote_granted: false, pre_vote: req.pre_vote };
        let leader_here = matches!(self.role, RoleState::Leader(_));
        if !req.leadership_transfer
            && (self.in_leader_lease() || (leader_here && self.config.check_quorum))
        {
            // A live leader exists: do not let a partitioned or lagging node depose it.
            return refuse(current_term);
        }
        if self.candidate_superseded(req.candidate_id, req.last_log_id) {
            return refuse(current_term);
        }
        let up_to_date = self.log.is_up_to_date(req.last_log_id);
        if req.pre_vote {
            let granted = req.term > current_term && up_to_date;
            let term = if granted { req.term } else { current_term };
            return RequestVoteResponse { term, vote_granted: granted, pre_vote: true };
        }
        if req.term < current_term {
            return refuse(current_term);
        }
        if req.term > current_term {
            self.become_follower(req.term, None);
        }
        let can_vote = match self.hard_state.voted_for {
            None => self.leader_id.is_none(),
            Some(candidate) => candidate == req.candidate_id,
        };
        if !(can_vote && up_to_date) {
            return refuse(self.hard_state.current_term);
        }
        self.set_hard_state(HardState {
            current_term: req.term,
            voted_for: Some(req.candidate_id),
        });
        self.reset_election_timer();
        // Past its promise (`in_leader_lease`), or a leadership transfer overrode it: the
        // leader that sent TimeoutNow serves no more lease reads.
        self.heard_leader_elapsed = None;
        RequestVoteResponse { term: req.term, vote_granted: true, pre_vote: false }
    }

    pub(super) fn handle_timeout_now(&mut self, req: &TimeoutNowRequest) -> TimeoutNowResponse {
        let term = self.hard_state.current_term;
        if req.term == term
            && self.leader_id == Some(req.leader_id)
            && matches!(self.role, RoleState::Follower)
        {
            tracing::info!(id = self.id, term, "TimeoutNow from the leader: campaigning");
            self.campaign(false, true);
        }
        TimeoutNowResponse { term }
    }
}

/// The index of the last entry an AppendEntries carries (`prev_log_id.index` for a heartbeat).
/// Validation bounds it by `MAX_LOG_INDEX`.
fn last_new_index(req: &AppendEntriesRequest) -> LogIndex {
    req.prev_log_id.index.saturating_add(req.entries.len() as u64)
}

/// Drops the first `count` entries of a request, stored (or committed) here already. If most
/// of the request was, the rest is moved to a smaller allocation: it becomes the log write, which
/// need not keep the request's memory.
fn drop_stored_prefix(entries: &mut Vec<crate::types::Entry>, count: usize) {
    if count > 0 {
        entries.drain(..count);
        if entries.len() < entries.capacity() / 4 {
            entries.shrink_to_fit();
        }
    }
}

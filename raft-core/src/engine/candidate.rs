//! Elections: PreVote and RequestVote rounds.

use super::quorum::{VoteResult, VoteTally};
use super::{Engine, RoleState};
use crate::message::{RequestVoteRequest, RequestVoteResponse, RpcRequest};
use crate::types::{HardState, NodeId, Term, MAX_TERM};

impl Engine {
    /// Starts an election: a PreVote round if `pre_vote`, else a real one in the next term.
    /// `transfer` marks an election asked for by the leader (TimeoutNow).
    pub(super) fn campaign(&mut self, pre_vote: bool, transfer: bool) {
        if !self.may_campaign() {
            return;
        }
        let Some(term) = self.hard_state.current_term.checked_add(1).filter(|&t| t <= MAX_TERM)
        else {
            // Only after 2^46 inflating messages (see the term reserve in `validate.rs`).
            tracing::error!(id = self.id, "the term cannot grow any more; not campaigning");
            return;
        };
        self.reset_election_timer();
        let mut tally = VoteTally::default();
        tally.record(self.id, true);
        if pre_vote {
            tracing::debug!(id = self.id, term, "starting pre-vote");
            self.counters.pre_votes_started += 1;
            self.role = RoleState::PreCandidate(tally);
        } else {
            tracing::debug!(id = self.id, term, "starting election");
            self.counters.elections_started += 1;
            self.set_hard_state(HardState { current_term: term, voted_for: Some(self.id) });
            self.role = RoleState::Candidate(tally);
        }
        self.leader_id = None;
        // Its promise to refuse votes ran out before its election timer did, or a TimeoutNow
        // overrode it (the leader that sent it serves no more lease reads).
        self.heard_leader_elapsed = None;
        if self.check_election() {
            return;
        }
        let request = RpcRequest::RequestVote(RequestVoteRequest {
            term,
            candidate_id: self.id,
            last_log_id: self.log.last_log_id(),
            pre_vote,
            leadership_transfer: transfer,
        });
        for peer in self.voter_peers() {
            self.send(peer, request.clone(), true);
        }
    }

    pub(super) fn handle_vote_response(
        &mut self,
        from: NodeId,
        request_term: Term,
        pre_vote: bool,
        resp: &RequestVoteResponse,
    ) {
        let current = self.hard_state.current_term;
        let tally = match &mut self.role {
            RoleState::PreCandidate(tally)
                if pre_vote && Some(request_term) == current.checked_add(1) =>
            {
                tally
            }
            RoleState::Candidate(tally) if !pre_vote && request_term == current => tally,
            _ => return, // a late answer to an election that is over
        };
        tally.record(from, resp.vote_granted);
        self.check_election();
    }

    /// Acts on the tally: wins (becomes candidate or leader), loses (back to follower) or
    /// waits. Returns whether the round ended.
    fn check_election(&mut self) -> bool {
        let result = match &self.role {
            RoleState::PreCandidate(tally) | RoleState::Candidate(tally) => {
                tally.result(self.membership())
            }
            _ => return true,
        };
        match (result, &self.role) {
            (VoteResult::Won, RoleState::PreCandidate(_)) => {
                self.campaign(false, false);
                true
            }
            (VoteResult::Won, _) => {
                self.become_leader();
                true
            }
            (VoteResult::Lost, _) => {
                tracing::debug!(
                    id = self.id,
                    term = self.hard_state.current_term,
                    "lost the election"
                );
                self.become_follower(self.hard_state.current_term, None);
                true
            }
            (VoteResult::Pending, _) => false,
        }
    }
}

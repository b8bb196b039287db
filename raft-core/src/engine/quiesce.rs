//! Quiescence of idle groups (`Config::quiesce_idle`): a group with nothing going on stops its
//! timers, so that a process hosting many groups pays nothing for the idle ones.
//!
//! **The leader** quiesces at a heartbeat when nothing is going on: every entry is committed,
//! durable on it and applied; every member (voters and learners) answered since the last
//! CheckQuorum round began (or since the leader woke), is in Replicate mode, matched at the last
//! index, with nothing in flight, and was sent the current commit index; no read is waiting, no
//! transfer or joint membership is in progress, and it is a voter. It then sends
//! every member a heartbeat marked `quiesce`, and from then on its ticks do nothing: no
//! heartbeats, no lease rounds, no CheckQuorum counting.
//!
//! **A follower** quiesces when an AppendEntries marked `quiesce` comes from the leader it
//! already follows in its current term, carries no entries, and leaves its log ending at
//! `prev_log_id` with its commit index at `leader_commit`. Its ticks then do not advance its
//! election timer.
//!
//! **Waking** ([`Engine::unquiesce`]): any valid inbound request other than such a mark (a
//! heartbeat without it, a vote request, TimeoutNow, InstallSnapshot, ReadIndex, a higher term)
//! wakes the node before it is handled as usual; so do an entry appended to the leader's log (a
//! proposal, a membership change), a leadership transfer, a read, a failed request, any
//! response but a full success of an AppendEntries, a role change, and [`Engine::wake`] (the
//! host's liveness layer). A leader wakes with its CheckQuorum round starting afresh (it must
//! hear from a quorum again within an election timeout), a follower with its election timer at
//! zero. A malformed message changes nothing, quiescence included.
//!
//! Quiescence only suspends timers: what is voted, appended, committed or read is decided by
//! the same code as ever. See ARCHITECTURE.md ("Quiescence") for why lease reads and CheckQuorum
//! stay safe.

use super::progress::ReplicationMode;
use super::{Engine, RoleState, SentRequest};
use crate::message::{AppendEntriesResponse, RpcRequest, RpcResponse};
use crate::types::{LogId, LogIndex};

/// What a follower checks, after handling it, of a quiesce-marked AppendEntries from its leader.
#[derive(Debug, Clone, Copy)]
pub(super) struct QuiesceMark {
    prev_log_id: LogId,
    leader_commit: LogIndex,
}

impl Engine {
    /// Whether this engine is quiesced: its ticks do nothing until an input wakes it (see the
    /// [module docs](self)).
    pub fn is_quiesced(&self) -> bool {
        self.quiesced
    }

    /// Whether [`Engine::tick`] does anything now: false while quiesced. A host may then stop
    /// ticking this engine until it feeds it any other input (a request, a response, a
    /// proposal, a read, [`Engine::wake`]) and asks again after the next
    /// [`Engine::take_actions`]. (Ticks skipped meanwhile only lengthen the vote refusal of a
    /// node's first election timeout after a restart, and the spacing of its warnings.)
    pub fn needs_ticks(&self) -> bool {
        !self.quiesced
    }

    /// Wakes a quiesced engine (no-op otherwise): a follower's election timer runs again from
    /// zero, so it campaigns after a normal election timeout unless it hears from a leader
    /// (it still refuses votes for an election timeout, as after any AppendEntries: the lease
    /// it promised is kept); a leader heartbeats again and must hear from a quorum within an
    /// election timeout (CheckQuorum). A host calls it when it suspects the node of this
    /// group's leader is dead.
    pub fn wake(&mut self) {
        self.unquiesce();
    }

    /// Leaves quiescence, if quiesced, restarting the suspended timers (see [`Engine::wake`]).
    pub(super) fn unquiesce(&mut self) {
        if !std::mem::replace(&mut self.quiesced, false) {
            return;
        }
        tracing::trace!(id = self.id, "waking from quiescence");
        match &mut self.role {
            RoleState::Leader(leader) => {
                // CheckQuorum counts from now, on answers that come from now on.
                self.election_elapsed = 0;
                for progress in leader.progress.values_mut() {
                    progress.recent_active = false;
                }
            }
            _ => self.reset_election_timer(),
        }
    }

    /// Leader, at a heartbeat: whether nothing is going on, so that this heartbeat may be the
    /// last one (see the module docs).
    pub(super) fn may_quiesce(&self) -> bool {
        let RoleState::Leader(leader) = &self.role else { return false };
        let log = &self.log;
        let last = log.last_index();
        let membership = self.membership();
        self.config.quiesce_idle
            && log.commit_index == last
            && log.durable_index == last
            && log.applied_index == last
            && self.pending_write.is_empty()
            && leader.transfer.is_none()
            && leader.reads.is_idle()
            && !membership.is_joint()
            && membership.is_voter(self.id)
            && leader.progress.values().all(|p| {
                p.recent_active
                    && p.mode == ReplicationMode::Replicate
                    && p.match_index == last
                    && p.commit_sent == log.commit_index
                    && p.inflight.is_empty()
                    && p.heartbeats_in_flight == 0
            })
    }

    /// Before an inbound request is handled: the mark it carries, if it may quiesce this
    /// follower (a quiesce-marked heartbeat of the leader it already follows in its term).
    pub(super) fn quiesce_mark(&self, request: &RpcRequest) -> Option<QuiesceMark> {
        let RpcRequest::AppendEntries(r) = request else { return None };
        let from_leader = matches!(self.role, RoleState::Follower)
            && r.term == self.hard_state.current_term
            && self.leader_id == Some(r.leader_id);
        (self.config.quiesce_idle && r.quiesce && from_leader && r.entries.is_empty())
            .then_some(QuiesceMark { prev_log_id: r.prev_log_id, leader_commit: r.leader_commit })
    }

    /// After a quiesce-marked heartbeat was handled with `answer`: quiesces if it was accepted
    /// and the follower's log and commit index are the leader's.
    pub(super) fn quiesce_follower(&mut self, mark: QuiesceMark, answer: &AppendEntriesResponse) {
        if matches!(self.role, RoleState::Follower)
            && answer.match_index == Some(mark.prev_log_id.index)
            && self.log.last_log_id() == mark.prev_log_id
            && self.log.commit_index == mark.leader_commit
        {
            tracing::trace!(id = self.id, "quiesced by the leader");
            self.quiesced = true;
        }
    }

    /// Whether a response leaves a quiesced leader quiet: only the full success of an
    /// AppendEntries of its term (the answer to its quiesce-marked heartbeat).
    pub(super) fn keeps_quiet(&self, request: &SentRequest, response: &RpcResponse) -> bool {
        match (request, response) {
            (
                SentRequest::AppendEntries { term, last_index, .. },
                RpcResponse::AppendEntries(r),
            ) => {
                *term == self.hard_state.current_term
                    && r.match_index == Some(*last_index)
                    && *last_index == self.log.last_index()
            }
            _ => false,
        }
    }
}

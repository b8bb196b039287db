//! Quiescence of idle groups (`Config::quiesce_idle`): a group with nothing going on stops its
//! timers, so that a process hosting many groups pays little for the idle ones.
//!
//! **The leader** quiesces at a heartbeat when nothing is going on: every entry is committed,
//! durable on it and applied; every member (voters and learners) answered since the last
//! CheckQuorum round began (or since the leader woke), is in Replicate mode, matched at the last
//! index, with nothing in flight, and was sent the current commit index; no read is waiting, no
//! transfer or joint membership is in progress, and it is a voter. It then sends
//! every member a heartbeat marked `quiesce`, and from then on its ticks do nothing but count
//! towards its *refresh*: every `quiesce_check_interval / 2` to `quiesce_check_interval`
//! (random) it sends every member the marked heartbeat again. No lease rounds, no CheckQuorum
//! counting meanwhile; a refresh that fails wakes it (and then CheckQuorum runs as usual).
//!
//! **A follower** quiesces when an AppendEntries marked `quiesce` comes from the leader it
//! already follows in its current term, carries no entries, and leaves its log ending at
//! `prev_log_id` with its commit index at `leader_commit`. Its ticks then do not advance its
//! election timer; they count towards its *fallback deadline* instead: when no mark came from
//! its leader for 2 to 3 `quiesce_check_interval`s (random; every mark restarts the count), it
//! wakes by itself. So a follower whose leader died, or whose leader's group stopped on a live
//! node, campaigns within 3 `quiesce_check_interval`s plus an election timeout, with no help
//! from the host.
//!
//! **Waking** ([`Engine::unquiesce`]): any valid inbound request other than such a mark (a
//! heartbeat without it, a vote request, TimeoutNow, InstallSnapshot, ReadIndex, a higher term)
//! wakes the node before it is handled as usual; so do an entry appended to the leader's log (a
//! proposal, a membership change), a leadership transfer, a read, a failed request, any
//! response but a full success of an AppendEntries, the fallback deadline, and
//! [`Engine::wake`] (the host). A leader wakes with its CheckQuorum round starting afresh (it
//! must hear from a quorum again within an election timeout) and heartbeats every member at
//! once; a follower wakes with its election timer at zero. A follower woken by anything but an
//! AppendEntries of its leader (the host, the fallback deadline, a vote request, a read) also
//! tells its leader, with a `ReadIndex` request the leader answers after a heartbeat round:
//! a live leader wakes and its heartbeats reach every follower before any election timeout,
//! so a false suspicion deposes nobody. Such a follower ignores marks until it accepted an
//! unmarked AppendEntries (the live leader's heartbeat): a mark the leader sent before it died,
//! delivered late or twice, cannot put it back to sleep. A malformed message changes nothing,
//! quiescence included.
//!
//! Quiescence only suspends timers: what is voted, appended, committed or read is decided by
//! the same code as ever. See ARCHITECTURE.md ("Quiescence") for why lease reads and CheckQuorum
//! stay safe.

use super::progress::ReplicationMode;
use super::{Engine, RoleState, SentRequest};
use std::time::Duration;

use rand_core::RngCore;

use crate::message::{AppendEntriesResponse, RpcRequest, RpcResponse};
use crate::types::{LogId, LogIndex, NodeId};

/// What a follower checks, after handling it, of a quiesce-marked AppendEntries from its leader.
#[derive(Debug, Clone, Copy)]
pub(super) struct QuiesceMark {
    prev_log_id: LogId,
    leader_commit: LogIndex,
}

/// The quiescence state of an engine.
#[derive(Debug, Default)]
pub(super) struct Quiet {
    /// Timers are suspended until an input (or the deadline) wakes the node.
    pub(super) quiesced: bool,
    /// Ticks since quiescing, or since the leader's last refresh or the follower's last mark.
    elapsed: u64,
    /// The driver's clock then (`Engine::set_now`).
    since: Duration,
    /// The driver gives a clock: it called `Engine::set_now`.
    pub(super) clocked: bool,
    /// When `elapsed` reaches it, the leader refreshes its marks and a follower wakes.
    deadline: u64,
    /// A follower woken by anything but its leader's AppendEntries: it ignores marks until it
    /// accepts an unmarked AppendEntries.
    marks_ignored: bool,
    /// Woken since the last `take_actions`: the leader heartbeats, a follower pings its leader.
    announce: bool,
}

/// What woke a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Waker {
    /// An AppendEntries of the current (or a newer) leader: it is alive.
    LeaderAppend,
    /// Anything else.
    Other,
}

impl Engine {
    /// Whether this engine is quiesced: its ticks only count towards its next deadline until
    /// an input wakes it (`Config::quiesce_idle` says when an engine quiesces).
    pub fn is_quiesced(&self) -> bool {
        self.quiet.quiesced
    }

    /// How many ticks may pass before the engine needs [`Engine::tick`] again: 1 while it is
    /// awake (tick it every `tick_interval`); while quiesced, the ticks until its deadline (a
    /// leader's refresh, a follower's fallback wake-up). A driver may sleep that long and then
    /// deliver the ticks that passed (calling `tick` once per tick: a quiesced engine only
    /// counts them), provided it asks again after every other input it feeds and every
    /// [`Engine::take_actions`], since inputs wake the engine. Ticks delivered late or never
    /// only delay what they trigger. A driver that has called [`Engine::set_now`] once must
    /// call it again before every tick and every read: leases are judged by that clock, and a
    /// quiesced engine counts no more ticks than that clock says passed since the last mark,
    /// so a clock left frozen would keep a quiesced engine from ever reaching its deadline.
    pub fn ticks_until_needed(&self) -> u64 {
        if self.quiet.quiesced {
            self.quiet.deadline.saturating_sub(self.quiet.elapsed).max(1)
        } else {
            1
        }
    }

    /// Wakes a quiesced engine (no-op otherwise): a follower's election timer runs again from
    /// zero, so it campaigns after a normal election timeout unless it hears from a leader
    /// (it still refuses votes for an election timeout, as after any AppendEntries: the lease
    /// it promised is kept), and it asks its leader to heartbeat; a leader heartbeats at once
    /// and must hear from a quorum within an election timeout (CheckQuorum). A host may call it
    /// when it suspects the node of this group's leader is dead, for a detection faster than
    /// the fallback deadline; calling it again while the suspicion lasts is harmless (a no-op
    /// on an awake engine).
    pub fn wake(&mut self) {
        self.unquiesce(Waker::Other);
    }

    /// Leaves quiescence, if quiesced, restarting the suspended timers (see [`Engine::wake`]).
    pub(super) fn unquiesce(&mut self, waker: Waker) {
        if !std::mem::replace(&mut self.quiet.quiesced, false) {
            return;
        }
        tracing::trace!(id = self.id, ?waker, "waking from quiescence");
        match &mut self.role {
            RoleState::Leader(leader) => {
                // CheckQuorum counts from now, on answers that come from now on.
                self.election_elapsed = 0;
                for progress in leader.progress.values_mut() {
                    progress.recent_active = false;
                }
                self.quiet.announce = true;
            }
            _ => {
                self.reset_election_timer();
                if self.heard_leader_elapsed.is_some() {
                    // The promise to refuse votes restarts too (see `Engine::wake`).
                    self.heard_leader_elapsed = Some(0);
                }
                if waker == Waker::Other {
                    self.quiet.marks_ignored = true;
                    self.quiet.announce = true;
                }
            }
        }
    }

    /// Enters quiescence: the deadline of a leader's refresh or of a follower's fallback
    /// wake-up starts now.
    fn quiesce(&mut self) {
        let interval = self.timing.quiesce_check_ticks.max(2);
        // Saturating: an interval of more than `u64::MAX / 2` ticks (`Duration::MAX`, which
        // `Config::validate` accepts) means "effectively never", not an overflow.
        let (base, span) = match self.role {
            RoleState::Leader(_) => (interval / 2, interval - interval / 2),
            _ => (interval.saturating_mul(2), interval),
        };
        self.quiet.quiesced = true;
        self.quiet.elapsed = 0;
        self.quiet.since = self.now;
        self.quiet.deadline = base.saturating_add(self.rng.next_u64() % span.max(1));
    }

    /// A tick of a quiesced engine: counts towards its deadline; at the deadline a leader
    /// sends its marks again and a follower wakes.
    pub(super) fn tick_quiesced(&mut self) {
        self.quiet.elapsed += 1;
        // A driver that slept delivers the ticks that passed in one batch, which may have begun
        // before the last mark: with a clock (`set_now`), no more ticks count than it says
        // passed since then, so ticks delivered late only delay the deadline.
        if self.quiet.clocked {
            let passed = self.now.saturating_sub(self.quiet.since).as_nanos();
            let by_clock = passed / self.config.tick_interval.as_nanos().max(1);
            let by_clock = u64::try_from(by_clock).unwrap_or(u64::MAX);
            self.quiet.elapsed = self.quiet.elapsed.min(by_clock);
        }
        if self.quiet.elapsed < self.quiet.deadline {
            return;
        }
        if self.is_leader() {
            self.quiesce();
            for peer in self.peers() {
                self.replicate_to(peer, true);
            }
        } else {
            tracing::debug!(
                id = self.id,
                leader = ?self.leader_id,
                "no quiesce mark from the leader within the fallback deadline: waking"
            );
            self.unquiesce(Waker::Other);
        }
    }

    /// Leader, at a heartbeat: quiesces if nothing is going on (see the module docs); the
    /// heartbeats then sent carry the mark.
    pub(super) fn maybe_quiesce(&mut self) -> bool {
        if !self.may_quiesce() {
            return false;
        }
        tracing::trace!(id = self.id, "quiescing");
        self.quiesce();
        true
    }

    /// Leader, at a heartbeat: whether nothing is going on, so that this heartbeat may be the
    /// last one (see the module docs).
    fn may_quiesce(&self) -> bool {
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

    /// When actions are taken after a wake: a leader heartbeats every member it is not sending
    /// to already; a follower asks its leader for a read index (answered after a heartbeat
    /// round, which wakes a live leader and shows it alive to every follower).
    pub(super) fn announce_wake(&mut self) {
        if !std::mem::take(&mut self.quiet.announce) {
            return;
        }
        match &self.role {
            RoleState::Leader(leader) => {
                let idle: Vec<NodeId> = leader
                    .progress
                    .iter()
                    .filter(|(_, p)| p.heartbeats_in_flight == 0 && p.inflight.is_empty())
                    .map(|(&id, _)| id)
                    .collect();
                for peer in idle {
                    self.replicate_to(peer, true);
                }
            }
            RoleState::Follower => self.ping_leader(),
            _ => {}
        }
    }

    /// Whether `request` is a PreVote of a node outside the membership in force: it wakes no
    /// quiesced node (a PreVote changes no term nor vote). A quiesced node's membership is its
    /// leader's committed one; a later one reaches it by AppendEntries or InstallSnapshot,
    /// which wake it, or, if it missed them (isolated meanwhile), its fallback deadline wakes
    /// it, after which a new member's PreVote counts as before.
    pub(super) fn is_strangers_pre_vote(&self, request: &RpcRequest) -> bool {
        matches!(request, RpcRequest::RequestVote(r)
            if r.pre_vote && !self.membership().contains(r.candidate_id))
    }

    /// Before an inbound request is handled: what wakes the node, and the mark the request
    /// carries if it may quiesce this follower (a quiesce-marked heartbeat of the leader it
    /// already follows in its term, unless it ignores marks).
    pub(super) fn quiesce_mark(&self, request: &RpcRequest) -> (Waker, Option<QuiesceMark>) {
        let RpcRequest::AppendEntries(r) = request else { return (Waker::Other, None) };
        if r.term < self.hard_state.current_term {
            return (Waker::Other, None);
        }
        let from_leader = matches!(self.role, RoleState::Follower)
            && r.term == self.hard_state.current_term
            && self.leader_id == Some(r.leader_id);
        let quiesces = self.config.quiesce_idle
            && r.quiesce
            && from_leader
            && r.entries.is_empty()
            && !self.quiet.marks_ignored;
        let mark = QuiesceMark { prev_log_id: r.prev_log_id, leader_commit: r.leader_commit };
        (Waker::LeaderAppend, quiesces.then_some(mark))
    }

    /// After an AppendEntries of the current term was handled with `answer`: an unmarked one
    /// shows the leader alive (marks count again); a mark quiesces the follower if it was
    /// accepted and the follower's log and commit index are the leader's.
    pub(super) fn after_append(
        &mut self,
        marked: bool,
        mark: Option<QuiesceMark>,
        answer: &AppendEntriesResponse,
    ) {
        if !marked && answer.match_index.is_some() {
            self.quiet.marks_ignored = false;
        }
        let Some(mark) = mark else { return };
        if matches!(self.role, RoleState::Follower)
            && answer.match_index == Some(mark.prev_log_id.index)
            && self.log.last_log_id() == mark.prev_log_id
            && self.log.commit_index == mark.leader_commit
        {
            tracing::trace!(id = self.id, "quiesced by the leader");
            self.quiesce();
        }
    }

    /// Whether a response leaves a quiesced leader quiet: only the full success of an
    /// AppendEntries of its term (the answer to its quiesce-marked heartbeat) from a follower
    /// that says it quiesced. One that did not (restarted and following nobody when the mark
    /// came, running without the flag, ignoring marks after a wake) would time out and
    /// campaign while the leader stays silent: the leader wakes and heartbeats it instead,
    /// and quiesces again, with a mark that quiesces it, once everything is quiet.
    pub(super) fn keeps_quiet(&self, request: &SentRequest, response: &RpcResponse) -> bool {
        match (request, response) {
            (
                SentRequest::AppendEntries { term, last_index, .. },
                RpcResponse::AppendEntries(r),
            ) => {
                *term == self.hard_state.current_term
                    && r.match_index == Some(*last_index)
                    && *last_index == self.log.last_index()
                    && r.quiesced
            }
            _ => false,
        }
    }
}

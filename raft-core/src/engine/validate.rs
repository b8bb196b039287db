//! Validation of every inbound request and response before the engine acts on it.
//!
//! Messages come from authenticated peers, but a peer may run another version, have a bug, or be
//! hostile: nothing it sends may make this node panic, wrap an integer, or acknowledge what it
//! did not store. A message that fails a check is *malformed*: it is refused (a request gets an
//! answer that acknowledges nothing, a response is treated like no answer at all), counted
//! ([`Engine::malformed_count`]) and logged, and it changes no state.
//!
//! **Overflow policy.** Terms and indexes in messages are bounded by [`MAX_TERM`] and
//! [`MAX_LOG_INDEX`] (2^63 - 1): a node never adopts a term or stores an index above them, so the
//! engine's own `term + 1` / `index + 1` have 2^63 increments of headroom and cannot overflow.
//! Sums of values from the wire (`prev + entries.len()`, `offset + data.len()`) are computed with
//! checked arithmetic before the bound is applied.
//!
//! **The term reserve.** A bound alone would let one message stop the cluster for good: a term
//! of `MAX_TERM` is adopted (durably) by every node it reaches, and no node can campaign any
//! more (`MAX_TERM + 1` is refused everywhere). So the terms above [`TERM_RESERVE_START`]
//! (2^62) are a reserve that a message may climb by at most [`MAX_TERM_STEP_IN_RESERVE`] (2^16)
//! terms at once: a message whose term is in the reserve and more than that above the
//! receiver's term is malformed. Below the reserve any jump is accepted (a node cut off for long
//! with PreVote off comes back with a much higher term, and a new node starts at term 0), and
//! elections work everywhere but at `MAX_TERM` itself, which a peer inflating terms as fast as
//! the rule allows reaches only after 2^46 messages in a row. A correct cluster raises its term
//! by one per election and never sees the reserve: a node entering it logs an error (and every
//! refused jump is counted as malformed with the sender's id). Recovery is described in
//! ARCHITECTURE.md ("Inbound validation").

use super::{Engine, SentRequest};
use crate::membership::{Membership, MAX_MEMBERS};
use crate::message::{
    AppendEntriesRequest, AppendEntriesResponse, ConflictHint, InstallSnapshotRequest,
    InstallSnapshotResponse, ReadIndexResponse, RequestVoteRequest, RequestVoteResponse,
    RpcRequest, RpcResponse, SnapshotRefusal, TimeoutNowResponse,
};
use crate::types::{EntryPayload, LogId, LogIndex, NodeId, Term, MAX_LOG_INDEX, MAX_TERM};

/// Terms above this one are the reserve: a message may raise a node's term into or within it by
/// at most [`MAX_TERM_STEP_IN_RESERVE`] (see the module docs).
pub(crate) const TERM_RESERVE_START: Term = 1 << 62;

/// The most a message may raise a node's term inside the reserve: more than any correct cluster
/// needs (one term per election missed), few enough that the reserve outlasts any attack.
pub(crate) const MAX_TERM_STEP_IN_RESERVE: Term = 1 << 16;

/// Warnings about one peer (malformed messages, term jumps) are logged at most once per this
/// interval.
const WARNING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Why an inbound message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Malformed {
    #[error("term {0} out of range")]
    Term(Term),
    #[error("term {term} climbs the reserve too fast from term {current}")]
    TermStep { term: Term, current: Term },
    #[error("log id {0:?} out of range or inconsistent")]
    LogId(LogId),
    #[error("the request claims to come from this node")]
    FromSelf,
    #[error("entries are not contiguous from prev_log_id.index + 1 (at index {0})")]
    NotContiguous(LogIndex),
    #[error("entry terms decrease or exceed the request's term (at index {0})")]
    EntryTerm(LogIndex),
    #[error("invalid membership (no voter, a voter that is also a learner, members without metadata, or over a bound)")]
    Membership,
    #[error("snapshot chunk inconsistent with its metadata")]
    SnapshotChunk,
    #[error("the answer does not match the request it answers")]
    Mismatch,
    #[error("success answer {0} outside the entries sent")]
    MatchIndex(LogIndex),
    #[error("conflict hint {0:?} inconsistent with the request")]
    ConflictHint(ConflictHint),
    #[error("snapshot offset {0} beyond the snapshot")]
    SnapshotOffset(u64),
    #[error("read index {0} out of range")]
    ReadIndex(LogIndex),
    #[error("a second leader in term {0}")]
    SecondLeader(Term),
    #[error("would overwrite committed entry {0}")]
    OverwritesCommitted(LogIndex),
}

type Checked = Result<(), Malformed>;

fn term(term: Term) -> Checked {
    if term > MAX_TERM {
        return Err(Malformed::Term(term));
    }
    Ok(())
}

/// A term a node in term `current` may act on (see the module docs: the reserve).
fn term_step(current: Term, t: Term) -> Checked {
    term(t)?;
    if t > TERM_RESERVE_START && t > current.saturating_add(MAX_TERM_STEP_IN_RESERVE) {
        return Err(Malformed::TermStep { term: t, current });
    }
    Ok(())
}

/// A leader's term: at least 1 (term 0 is "no term yet").
fn leader_term(t: Term) -> Checked {
    if t == 0 {
        return Err(Malformed::Term(t));
    }
    term(t)
}

/// A log id: within bounds, and `(0, 0)` for "no entry" (entries have terms >= 1).
fn log_id(id: LogId) -> Checked {
    if id.term > MAX_TERM || id.index > MAX_LOG_INDEX || (id.index == 0) != (id.term == 0) {
        return Err(Malformed::LogId(id));
    }
    Ok(())
}

/// A membership from the wire: its invariants and bounds (decoding checks them too, but a
/// transport need not decode), and at least one voter.
fn membership(m: &Membership) -> Checked {
    if m.voters().is_empty() || m.check().is_err() {
        return Err(Malformed::Membership);
    }
    Ok(())
}

/// The shape of a request: bounds and internal consistency, independent of this node's state.
fn request_shape(request: &RpcRequest) -> Checked {
    match request {
        RpcRequest::RequestVote(r) => request_vote(r),
        RpcRequest::AppendEntries(r) => append_entries(r),
        RpcRequest::TimeoutNow(r) => leader_term(r.term),
        RpcRequest::InstallSnapshot(r) => install_snapshot(r),
        RpcRequest::ReadIndex(r) => term(r.term),
    }
}

fn request_vote(r: &RequestVoteRequest) -> Checked {
    leader_term(r.term)?;
    log_id(r.last_log_id)?;
    if r.last_log_id.term > r.term {
        return Err(Malformed::LogId(r.last_log_id));
    }
    Ok(())
}

fn append_entries(r: &AppendEntriesRequest) -> Checked {
    leader_term(r.term)?;
    log_id(r.prev_log_id)?;
    if r.prev_log_id.term > r.term {
        return Err(Malformed::LogId(r.prev_log_id));
    }
    if r.leader_commit > MAX_LOG_INDEX {
        return Err(Malformed::LogId(LogId::new(r.term, r.leader_commit)));
    }
    let mut previous = r.prev_log_id;
    for entry in &r.entries {
        let expected = previous.index.checked_add(1).filter(|&i| i <= MAX_LOG_INDEX);
        if expected != Some(entry.index) {
            return Err(Malformed::NotContiguous(entry.index));
        }
        if entry.term < previous.term.max(1) || entry.term > r.term {
            return Err(Malformed::EntryTerm(entry.index));
        }
        if let EntryPayload::Membership(m) = &entry.payload {
            membership(m)?;
        }
        previous = entry.log_id();
    }
    Ok(())
}

fn install_snapshot(r: &InstallSnapshotRequest) -> Checked {
    leader_term(r.term)?;
    let last = r.meta.last_included;
    log_id(last)?;
    if last.index == 0 || last.term > r.term {
        return Err(Malformed::LogId(last));
    }
    membership(&r.meta.membership)?;
    let end = u64::try_from(r.data.len()).ok().and_then(|len| r.offset.checked_add(len));
    match end {
        Some(end) if end <= r.meta.size && r.done == (end == r.meta.size) => Ok(()),
        _ => Err(Malformed::SnapshotChunk),
    }
}

/// A response, against the request it answers (which this node sent, so it is well-formed).
pub(super) fn response(sent: &SentRequest, response: &RpcResponse) -> Checked {
    term(response.term())?;
    match (sent, response) {
        (SentRequest::RequestVote { term, pre_vote }, RpcResponse::RequestVote(r)) => {
            // A refusal may carry a lower term (a voter in a leader lease answers before it
            // adopts the candidate's); a granted vote is for the term asked.
            if r.pre_vote != *pre_vote || (r.vote_granted && r.term != *term) {
                return Err(Malformed::Mismatch);
            }
            Ok(())
        }
        (
            SentRequest::AppendEntries { term, prev_index, last_index, .. },
            RpcResponse::AppendEntries(r),
        ) => append_entries_response(*term, *prev_index, *last_index, r),
        (SentRequest::TimeoutNow { .. }, RpcResponse::TimeoutNow(_)) => Ok(()),
        (SentRequest::InstallSnapshot { term, size, .. }, RpcResponse::InstallSnapshot(r)) => {
            let refused = r.refusal.is_some();
            if (refused && r.complete) || (!refused && r.term < *term) {
                return Err(Malformed::Mismatch);
            }
            if r.next_offset > *size {
                return Err(Malformed::SnapshotOffset(r.next_offset));
            }
            Ok(())
        }
        (SentRequest::ReadIndex { term, .. }, RpcResponse::ReadIndex(r)) => match r.read_index {
            Some(index) if index > MAX_LOG_INDEX => Err(Malformed::ReadIndex(index)),
            Some(_) if r.term < *term || r.leader_id.is_some() => Err(Malformed::Mismatch),
            _ => Ok(()),
        },
        _ => Err(Malformed::Mismatch),
    }
}

fn append_entries_response(
    term: Term,
    prev_index: LogIndex,
    last_index: LogIndex,
    r: &AppendEntriesResponse,
) -> Checked {
    match (r.match_index, r.conflict) {
        (Some(_), Some(_)) => Err(Malformed::Mismatch),
        (Some(m), None) if r.term != term || m < prev_index || m > last_index => {
            Err(Malformed::MatchIndex(m))
        }
        (None, Some(hint)) if r.term != term || !hint_fits(hint, term, prev_index) => {
            Err(Malformed::ConflictHint(hint))
        }
        // A rejection for a stale term, or a refusal (which carries the follower's term).
        _ => Ok(()),
    }
}

/// Whether an answer to an AppendEntries of the leader's term acknowledges the leader: it
/// accepted the entries or reported where its log diverges. Neither is a refusal (a malformed
/// request, or entries that would overwrite committed ones), which acknowledges nothing: it
/// confirms no read round and extends no lease.
pub(super) fn acknowledges_leader(r: &AppendEntriesResponse) -> bool {
    r.match_index.is_some() || r.conflict.is_some()
}

/// Whether a follower's conflict hint can answer an AppendEntries of `term` after
/// `prev_index`: its log is shorter than `prev_index` (no conflicting term), or it holds a
/// different entry there whose term starts at or before `prev_index`.
fn hint_fits(hint: ConflictHint, term: Term, prev_index: LogIndex) -> bool {
    if hint.conflict_term == 0 {
        return hint.first_index_of_term == 0 && hint.last_log_index < prev_index;
    }
    hint.conflict_term <= term
        && (1..=prev_index).contains(&hint.first_index_of_term)
        && (prev_index..=MAX_LOG_INDEX).contains(&hint.last_log_index)
}

impl Engine {
    /// Every check of an inbound request: its shape, then what only this node's state tells.
    pub(super) fn check_request(&self, request: &RpcRequest) -> Checked {
        request_shape(request)?;
        self.check_term(request.term())?;
        if request.sender() == self.id {
            return Err(Malformed::FromSelf);
        }
        match request {
            RpcRequest::AppendEntries(r) => {
                self.check_single_leader(r.term)?;
                self.check_committed_kept(r)
            }
            RpcRequest::InstallSnapshot(r) => self.check_single_leader(r.term),
            _ => Ok(()),
        }
    }

    /// The term of a message: refused if it climbs the reserve too fast (see the module docs).
    pub(super) fn check_term(&self, t: Term) -> Checked {
        term_step(self.hard_state.current_term, t)
    }

    /// A valid message from `from` carries term `t`: a jump of more than
    /// [`MAX_TERM_STEP_IN_RESERVE`] (accepted below the reserve) is logged with the sender, as no
    /// correct cluster needs it (the sign of a peer inflating terms, or of one cut off for long
    /// with PreVote off).
    pub(super) fn note_term(&mut self, from: NodeId, t: Term) {
        let current = self.hard_state.current_term;
        if t > current.saturating_add(MAX_TERM_STEP_IN_RESERVE) {
            if let Some(left_out) = self.may_warn_about(from) {
                tracing::warn!(
                    id = self.id,
                    peer = from,
                    term = t,
                    current,
                    "a message raises the term by more than 2^16 at once ({left_out} more \
                     warnings about this peer left out since the last one)"
                );
            }
        }
    }

    /// Election Safety: while this node leads `term`, no other node leads it.
    fn check_single_leader(&self, term: Term) -> Checked {
        if self.is_leader() && term == self.hard_state.current_term {
            return Err(Malformed::SecondLeader(term));
        }
        Ok(())
    }

    /// A leader of this node's term or a later one holds every entry this node knows committed
    /// (Leader Completeness): an AppendEntries of such a term that contradicts one is refused
    /// before anything is stored or acknowledged. (A request of an older term is refused for its
    /// term; an old leader may legitimately hold different uncommitted entries.)
    fn check_committed_kept(&self, r: &AppendEntriesRequest) -> Checked {
        if r.term < self.hard_state.current_term {
            return Ok(());
        }
        let committed = self.log.commit_index;
        let ids = std::iter::once(r.prev_log_id).chain(r.entries.iter().map(|e| e.log_id()));
        for id in ids.take_while(|id| id.index <= committed) {
            if self.log.term_at(id.index).is_some_and(|term| term != id.term) {
                return Err(Malformed::OverwritesCommitted(id.index));
            }
        }
        Ok(())
    }

    /// The answer to a refused request: it acknowledges nothing.
    pub(super) fn refusal(&self, request: &RpcRequest) -> RpcResponse {
        let term = self.hard_state.current_term;
        match request {
            RpcRequest::RequestVote(r) => RpcResponse::RequestVote(RequestVoteResponse {
                term,
                vote_granted: false,
                pre_vote: r.pre_vote,
            }),
            RpcRequest::AppendEntries(_) => RpcResponse::AppendEntries(AppendEntriesResponse {
                term,
                match_index: None,
                conflict: None,
                lease_promise_ms: 0,
                quiesced: false,
            }),
            RpcRequest::TimeoutNow(_) => RpcResponse::TimeoutNow(TimeoutNowResponse { term }),
            RpcRequest::InstallSnapshot(_) => {
                RpcResponse::InstallSnapshot(InstallSnapshotResponse {
                    term,
                    next_offset: 0,
                    complete: false,
                    refusal: Some(SnapshotRefusal::Malformed),
                })
            }
            RpcRequest::ReadIndex(_) => RpcResponse::ReadIndex(ReadIndexResponse {
                term,
                read_index: None,
                leader_id: None,
            }),
        }
    }

    /// How many inbound messages were refused as malformed since the engine started.
    pub fn malformed_count(&self) -> u64 {
        self.malformed
    }

    /// Counts and logs a malformed message from `from`: a warning at most once per peer per
    /// [`WARNING_INTERVAL`] (with how many were left out since), the rest at debug level, so
    /// that a peer sending them in a loop cannot flood the log.
    pub(super) fn count_malformed(&mut self, from: NodeId, kind: &str, reason: &Malformed) {
        self.malformed = self.malformed.saturating_add(1);
        match self.may_warn_about(from) {
            Some(left_out) => tracing::warn!(
                id = self.id,
                peer = from,
                kind,
                %reason,
                "refused a malformed message ({left_out} more warnings about this peer left out \
                 since the last one)"
            ),
            None => {
                tracing::debug!(id = self.id, peer = from, kind, %reason, "refused a malformed message")
            }
        }
    }

    /// Whether a warning about peer `from` may be logged now: at most one per
    /// [`WARNING_INTERVAL`] per peer. `Some(n)`: yes, and `n` were left out since the last.
    fn may_warn_about(&mut self, from: NodeId) -> Option<u64> {
        let (now, interval) = (self.now_tick, self.config.ticks(WARNING_INTERVAL));
        let warnings = &mut self.peer_warnings;
        if warnings.len() >= MAX_MEMBERS && !warnings.contains_key(&from) {
            warnings.clear(); // a bound on the memory; at worst a few more warnings
        }
        match warnings.get_mut(&from) {
            Some((warned_at, left_out)) if now < warned_at.saturating_add(interval) => {
                *left_out = left_out.saturating_add(1);
                None
            }
            entry => {
                let left_out = entry.map_or(0, |(_, left_out)| *left_out);
                warnings.insert(from, (now, 0));
                Some(left_out)
            }
        }
    }
}

//! The oracles at the message boundary: every message the network carries is checked against
//! its sender's durable state at the moment it leaves (see
//! [`check_request`](super::checker::check_request) and
//! [`check_response`](super::checker::check_response)), and what it reveals (votes cast, leaders
//! acting in a term) is handed to the [`InvariantChecker`](super::InvariantChecker). Optionally
//! it records a trace of every message for the determinism tests.
//!
//! The oracle works per Raft group: a node that hosts several groups (a
//! [`MultiSimulation`](super::MultiSimulation)) has one disk per group, and each message is
//! checked against the disk of its envelope's group; its findings come back per group.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use raft_core::{GroupId, LogId, NodeId, RpcRequest, RpcResponse, Term, DEFAULT_GROUP_ID};

use super::checker::{
    check_request, check_response, DurableView, Incarnation, InvariantChecker, Violation,
};
use super::disk::SimDisk;
use super::executor::SimRuntime;
use super::recorder::lock;
use crate::network::WireObserver;

impl DurableView for SimDisk {
    fn hard_state(&self) -> raft_core::HardState {
        SimDisk::hard_state(self)
    }

    fn covers(&self, id: LogId, since: u64) -> bool {
        SimDisk::covers(self, id, since)
    }

    fn term_at(&self, index: raft_core::LogIndex) -> Option<raft_core::Term> {
        self.log().term_at(index)
    }

    fn overwritten_since(&self, index: raft_core::LogIndex, since: u64) -> Option<raft_core::Term> {
        SimDisk::overwritten_since(self, index, since)
    }

    fn replaced_since(&self, id: LogId, since: u64) -> Option<Term> {
        SimDisk::replaced_since(self, id, since)
    }
}

/// What the oracle learned about one group since the simulation last looked.
#[derive(Default)]
pub(crate) struct WireFindings {
    pub(crate) violations: Vec<Violation>,
    /// (voter, term, candidate).
    pub(crate) votes: Vec<(NodeId, Term, NodeId)>,
    /// Incarnations that sent a leader's message of a term.
    pub(crate) leaders_acted: Vec<(Incarnation, Term)>,
}

impl WireFindings {
    /// Hands these findings to their group's `checker`: the first message that left ahead of
    /// its sender's durable state, then the votes cast and the leaders that acted.
    pub(crate) fn feed(self, checker: &mut InvariantChecker) -> Result<(), Violation> {
        if let Some(violation) = self.violations.into_iter().next() {
            return Err(violation);
        }
        for (voter, term, candidate) in self.votes {
            checker.observe_vote(voter, term, candidate)?;
        }
        for (incarnation, term) in self.leaders_acted {
            checker.observe_leader_acted(incarnation, term)?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct WireState {
    /// Each node's disk of each group.
    disks: BTreeMap<(NodeId, GroupId), SimDisk>,
    incarnations: BTreeMap<NodeId, u64>,
    findings: BTreeMap<GroupId, WireFindings>,
    trace: Option<Vec<String>>,
    /// The highest match index each follower acknowledged to each leader of each group in each
    /// term, and the furthest offset it reached in each snapshot that leader sent.
    matched: BTreeMap<(GroupId, NodeId, NodeId, Term), raft_core::LogIndex>,
    received: BTreeMap<(GroupId, NodeId, NodeId, Term, LogId), u64>,
    /// How many answers raised one of those (replication progress).
    match_progress: u64,
    /// When each node last acknowledged a quiesce-marked AppendEntries of each group (the mark
    /// its fallback deadline counts from, if it quiesced).
    marks: BTreeMap<(GroupId, NodeId), Duration>,
    /// Each leader's requests (AppendEntries, InstallSnapshot) of each group to each
    /// follower: the term and the virtual times the last two left.
    leader_requests: BTreeMap<(GroupId, NodeId, NodeId), LeaderRequests>,
    /// InstallSnapshot requests sent.
    snapshot_requests: u64,
    /// Messages checked against their sender's disk (requests and responses).
    checked: u64,
    /// Messages whose sender has no disk of the message's group here: left unchecked.
    unplaced: u64,
}

/// When the last two requests of one leader of one group to one follower left (the
/// starvation oracle's record, `multi_starve.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LeaderRequests {
    /// The term of the last request.
    pub(crate) term: Term,
    /// When the request before the last left, if it was of the same term.
    pub(crate) previous: Option<Duration>,
    /// When the last request left.
    pub(crate) last: Duration,
}

/// Checks every message against its sender's [`SimDisk`] of the message's group.
pub(crate) struct WireOracle {
    runtime: SimRuntime,
    state: Mutex<WireState>,
}

impl WireOracle {
    pub(crate) fn new(runtime: SimRuntime, trace: bool) -> Self {
        let state = WireState { trace: trace.then(Vec::new), ..WireState::default() };
        Self { runtime, state: Mutex::new(state) }
    }

    /// Node `id` runs incarnation `incarnation` from now on, with its group `group` on `disk`
    /// (call it for each group the node hosts).
    pub(crate) fn started(&self, id: NodeId, group: GroupId, incarnation: u64, disk: SimDisk) {
        let mut state = lock(&self.state);
        state.disks.insert((id, group), disk);
        state.incarnations.insert(id, incarnation);
    }

    /// What the oracle found since the last call, per group (taken).
    pub(crate) fn take_findings(&self) -> BTreeMap<GroupId, WireFindings> {
        std::mem::take(&mut lock(&self.state).findings)
    }

    /// Appends an event to the trace (if tracing).
    pub(crate) fn trace(&self, event: impl FnOnce() -> String) {
        let mut state = lock(&self.state);
        if let Some(trace) = state.trace.as_mut() {
            let at = self.runtime.now();
            trace.push(format!("{:>12?} {}", at, event()));
        }
    }

    /// How many answers raised a follower's match index or a snapshot transfer's offset so far
    /// (progress that no status shows: a new leader confirming entries a follower already
    /// holds, a snapshot on its way).
    pub(crate) fn match_progress(&self) -> u64 {
        lock(&self.state).match_progress
    }

    /// How many messages were checked against their sender's disk, and how many could not be
    /// (no disk of the message's group is known for the sender: the message went unchecked).
    pub(crate) fn counts(&self) -> (u64, u64) {
        let state = lock(&self.state);
        (state.checked, state.unplaced)
    }

    /// When the last two AppendEntries or InstallSnapshot requests of group `group` from
    /// `from` to `to` left, in the term of the last.
    pub(crate) fn leader_requests(
        &self,
        group: GroupId,
        from: NodeId,
        to: NodeId,
    ) -> Option<LeaderRequests> {
        lock(&self.state).leader_requests.get(&(group, from, to)).copied()
    }

    /// How many InstallSnapshot requests were sent so far (all groups).
    pub(crate) fn snapshot_requests(&self) -> u64 {
        lock(&self.state).snapshot_requests
    }

    /// When node `id` last acknowledged a quiesce-marked AppendEntries of group `group`.
    pub(crate) fn last_mark(&self, group: GroupId, id: NodeId) -> Option<Duration> {
        lock(&self.state).marks.get(&(group, id)).copied()
    }

    pub(crate) fn take_trace(&self) -> Vec<String> {
        lock(&self.state).trace.as_mut().map(std::mem::take).unwrap_or_default()
    }

    fn record(
        &self,
        state: &mut WireState,
        group: GroupId,
        outcome: Result<Option<(Term, NodeId)>, Violation>,
        voter: NodeId,
    ) {
        let findings = state.findings.entry(group).or_default();
        match outcome {
            Ok(Some((term, candidate))) => findings.votes.push((voter, term, candidate)),
            Ok(None) => {}
            Err(violation) => findings.violations.push(violation),
        }
    }
}

/// How the trace names a message's group: nothing for a node's only group.
fn group_tag(group: GroupId) -> String {
    if group == DEFAULT_GROUP_ID {
        String::new()
    } else {
        format!("g{group} ")
    }
}

fn describe(request: &RpcRequest) -> String {
    match request {
        RpcRequest::AppendEntries(r) => format!(
            "AppendEntries t{} prev {:?} n{} commit {}",
            r.term,
            (r.prev_log_id.term, r.prev_log_id.index),
            r.entries.len(),
            r.leader_commit
        ),
        other => format!("{} t{}", other.kind(), other.term()),
    }
}

impl WireObserver for WireOracle {
    fn on_request(&self, group: GroupId, from: NodeId, to: NodeId, request: &RpcRequest) {
        let mut state = lock(&self.state);
        if let Some(trace) = state.trace.as_mut() {
            let (at, tag) = (self.runtime.now(), group_tag(group));
            trace.push(format!("{at:>12?} {tag}{from}->{to} {}", describe(request)));
        }
        let Some(disk) = state.disks.get(&(from, group)).cloned() else {
            state.unplaced += 1;
            return;
        };
        state.checked += 1;
        let outcome = check_request(from, request, &disk);
        self.record(&mut state, group, outcome, from);
        let leads = matches!(
            request,
            RpcRequest::AppendEntries(_)
                | RpcRequest::InstallSnapshot(_)
                | RpcRequest::TimeoutNow(_)
        );
        if matches!(request, RpcRequest::AppendEntries(_) | RpcRequest::InstallSnapshot(_)) {
            let (now, term) = (self.runtime.now(), request.term());
            state.snapshot_requests += u64::from(matches!(request, RpcRequest::InstallSnapshot(_)));
            let key = (group, from, to);
            let before = state.leader_requests.get(&key);
            let previous = before.filter(|r| r.term == term).map(|r| r.last);
            state.leader_requests.insert(key, LeaderRequests { term, previous, last: now });
        }
        if leads {
            let incarnation = state.incarnations.get(&from).copied().unwrap_or(0);
            let findings = state.findings.entry(group).or_default();
            findings.leaders_acted.push(((from, incarnation), request.term()));
        }
    }

    fn on_delivery(&self, _group: GroupId, _from: NodeId, _to: NodeId, _: &RpcRequest) -> u64 {
        self.runtime.polls()
    }

    fn on_response(
        &self,
        group: GroupId,
        from: NodeId,
        to: NodeId,
        request: &RpcRequest,
        response: &RpcResponse,
        delivered: u64,
    ) {
        let mut state = lock(&self.state);
        if let Some(trace) = state.trace.as_mut() {
            let at: Duration = self.runtime.now();
            let tag = group_tag(group);
            trace.push(format!("{at:>12?} {tag}{to}=>{from} {response:?}"));
        }
        let raised = match (request, response) {
            (_, RpcResponse::AppendEntries(ack)) => ack.match_index.is_some_and(|matched| {
                let best = state.matched.entry((group, to, from, ack.term)).or_default();
                std::mem::replace(best, matched.max(*best)) < matched
            }),
            (RpcRequest::InstallSnapshot(req), RpcResponse::InstallSnapshot(ack)) => {
                let key = (group, to, from, ack.term, req.meta.last_included);
                let best = state.received.entry(key).or_default();
                std::mem::replace(best, ack.next_offset.max(*best)) < ack.next_offset
            }
            _ => false,
        };
        state.match_progress += u64::from(raised);
        if let (RpcRequest::AppendEntries(req), RpcResponse::AppendEntries(ack)) =
            (request, response)
        {
            if req.quiesce && ack.match_index.is_some() {
                state.marks.insert((group, to), self.runtime.now());
            }
        }
        let Some(disk) = state.disks.get(&(to, group)).cloned() else {
            state.unplaced += 1;
            return;
        };
        state.checked += 1;
        let outcome = check_response(to, request, response, delivered, &disk);
        self.record(&mut state, group, outcome, to);
    }
}

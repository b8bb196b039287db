//! The oracles at the message boundary: every message the network carries is checked against
//! its sender's durable state at the moment it leaves (see
//! [`check_request`](super::checker::check_request) and
//! [`check_response`](super::checker::check_response)), and what it reveals (votes cast, leaders
//! acting in a term) is handed to the [`InvariantChecker`](super::InvariantChecker). Optionally
//! it records a trace of every message for the determinism tests.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use raft_core::{LogId, NodeId, RpcRequest, RpcResponse, Term};

use super::checker::{check_request, check_response, DurableView, Incarnation, Violation};
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

/// What the oracle learned since the simulation last looked.
#[derive(Default)]
pub(crate) struct WireFindings {
    pub(crate) violations: Vec<Violation>,
    /// (voter, term, candidate).
    pub(crate) votes: Vec<(NodeId, Term, NodeId)>,
    /// Incarnations that sent a leader's message of a term.
    pub(crate) leaders_acted: Vec<(Incarnation, Term)>,
}

#[derive(Default)]
struct WireState {
    disks: BTreeMap<NodeId, SimDisk>,
    incarnations: BTreeMap<NodeId, u64>,
    findings: WireFindings,
    trace: Option<Vec<String>>,
    /// The highest match index each follower acknowledged to each leader in each term, and the
    /// furthest offset it reached in each snapshot that leader sent.
    matched: BTreeMap<(NodeId, NodeId, Term), raft_core::LogIndex>,
    received: BTreeMap<(NodeId, NodeId, Term, LogId), u64>,
    /// How many answers raised one of those (replication progress).
    match_progress: u64,
}

/// Checks every message against its sender's [`SimDisk`].
pub(crate) struct WireOracle {
    runtime: SimRuntime,
    state: Mutex<WireState>,
}

impl WireOracle {
    pub(crate) fn new(runtime: SimRuntime, trace: bool) -> Self {
        let state = WireState { trace: trace.then(Vec::new), ..WireState::default() };
        Self { runtime, state: Mutex::new(state) }
    }

    /// Node `id` runs incarnation `incarnation` on `disk` from now on.
    pub(crate) fn started(&self, id: NodeId, incarnation: u64, disk: SimDisk) {
        let mut state = lock(&self.state);
        state.disks.insert(id, disk);
        state.incarnations.insert(id, incarnation);
    }

    pub(crate) fn take_findings(&self) -> WireFindings {
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

    pub(crate) fn take_trace(&self) -> Vec<String> {
        lock(&self.state).trace.as_mut().map(std::mem::take).unwrap_or_default()
    }

    fn record(
        &self,
        state: &mut WireState,
        outcome: Result<Option<(Term, NodeId)>, Violation>,
        voter: NodeId,
    ) {
        match outcome {
            Ok(Some((term, candidate))) => state.findings.votes.push((voter, term, candidate)),
            Ok(None) => {}
            Err(violation) => state.findings.violations.push(violation),
        }
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
    fn on_request(&self, from: NodeId, to: NodeId, request: &RpcRequest) {
        let mut state = lock(&self.state);
        if let Some(trace) = state.trace.as_mut() {
            trace.push(format!("{:>12?} {from}->{to} {}", self.runtime.now(), describe(request)));
        }
        let Some(disk) = state.disks.get(&from).cloned() else { return };
        let outcome = check_request(from, request, &disk);
        self.record(&mut state, outcome, from);
        let leads = matches!(
            request,
            RpcRequest::AppendEntries(_)
                | RpcRequest::InstallSnapshot(_)
                | RpcRequest::TimeoutNow(_)
        );
        if leads {
            let incarnation = state.incarnations.get(&from).copied().unwrap_or(0);
            state.findings.leaders_acted.push(((from, incarnation), request.term()));
        }
    }

    fn on_delivery(&self, _from: NodeId, _to: NodeId, _request: &RpcRequest) -> u64 {
        self.runtime.polls()
    }

    fn on_response(
        &self,
        from: NodeId,
        to: NodeId,
        request: &RpcRequest,
        response: &RpcResponse,
        delivered: u64,
    ) {
        let mut state = lock(&self.state);
        if let Some(trace) = state.trace.as_mut() {
            let at: Duration = self.runtime.now();
            trace.push(format!("{at:>12?} {to}=>{from} {response:?}"));
        }
        let raised = match (request, response) {
            (_, RpcResponse::AppendEntries(ack)) => ack.match_index.is_some_and(|matched| {
                let best = state.matched.entry((to, from, ack.term)).or_default();
                std::mem::replace(best, matched.max(*best)) < matched
            }),
            (RpcRequest::InstallSnapshot(req), RpcResponse::InstallSnapshot(ack)) => {
                let key = (to, from, ack.term, req.meta.last_included);
                let best = state.received.entry(key).or_default();
                std::mem::replace(best, ack.next_offset.max(*best)) < ack.next_offset
            }
            _ => false,
        };
        state.match_progress += u64::from(raised);
        let Some(disk) = state.disks.get(&to).cloned() else { return };
        let outcome = check_response(to, request, response, delivered, &disk);
        self.record(&mut state, outcome, to);
    }
}

//! The main loop: the only owner of the engine.

mod snapshots;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_channel::{Sender, TrySendError};
use futures::channel::oneshot;

use self::snapshots::SnapshotDriver;
use super::applier::{Answer, ApplyMsg, Waiter};
use super::inbox::Proposed;
use super::peer::PeerQueue;
use super::probe::LatencyProbe;
use super::supervisor::Inputs;
use super::writer::{InlineWriter, StartWrite, WriteRequest, WriterMsg, Written};
use super::{membership, Input, PeerFactory, PendingRead, Proposal, ProposeReply};
use crate::engine::{
    Action, Engine, FirstAfter, MembershipProgress, MembershipRefusal, ProposeRefusal, ReadId,
    ReadIndexRefusal, ReplyId, SentRequest, TransferRefusal,
};
use crate::error::{
    CommitError, FatalError, MembershipError, ProposeError, ReadIndexError, TransferError,
};
use crate::membership::{Membership, NodeInfo};
use crate::message::{RpcRequest, RpcResponse};
pub(super) use crate::metrics::LoopMetrics;
use crate::runtime::Runtime;
use crate::types::{LogIndex, NodeId, Role, Term};

/// Inputs handled per step before the engine's actions are taken (bounds latency under load
/// while letting many proposals share one write and one AppendEntries).
pub(super) const MAX_INPUTS_PER_STEP: usize = 1024;

/// Why the main loop stops.
enum Stop {
    /// `Node::shutdown`.
    Requested,
    /// A fatal error (the node stops on its own).
    Failed(FatalError),
}

/// What a [`CoreLoop::step`] did: how many inputs it took, and what it leaves to its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Step {
    /// The inputs the step took, as it counts them against its room (each proposal taken
    /// from the inbox one): what a runner charges to a budget of inputs.
    pub(crate) inputs: usize,
    /// Whether the node goes on.
    pub(crate) then: Stepped,
}

/// What a [`CoreLoop::step`] leaves to its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stepped {
    /// The node goes on: the next step waits for the next input.
    Continue,
    /// The node must stop (shutdown asked for, or a fatal error): no more steps; the caller
    /// calls [`CoreLoop::finish`].
    Stop,
}

/// A message waiting for the writes before it to become durable.
enum Held {
    Send { to: NodeId, request: RpcRequest },
    Respond { reply_to: ReplyId, response: RpcResponse },
}

pub(super) struct CoreLoop {
    /// This node's token (see `reentrancy`), given to its proposals.
    token: u64,
    engine: Engine,
    /// The input queue, and what the node publishes when it stops.
    inputs: Arc<Inputs>,
    /// The log writer task, for writes issued while another one is in progress, or (in a
    /// host loop) the writes in flight and queued, kept here.
    writer: LogWriter,
    /// Starts a store write in this task (when nothing else is being written).
    start_write: StartWrite,
    /// The sequence number of the last batch handed to the log writer (the task is idle
    /// once it is durable).
    writer_seq: u64,
    applier: Sender<ApplyMsg>,
    /// Proposers of this step, handed to the applier in one message before anything else
    /// goes to it (so before the entries can be applied).
    new_waiters: Vec<(LogIndex, Waiter)>,
    /// Sender tasks of the peers this node talks to (members, and the leader for reads).
    peers: BTreeMap<NodeId, PeerQueue>,
    peer_factory: PeerFactory,
    replies: HashMap<u64, oneshot::Sender<RpcResponse>>,
    next_reply: u64,
    reads: HashMap<u64, PendingRead>,
    next_read: u64,
    /// A caller gave up on its read: the applier is to let go of abandoned reads.
    prune_reads: bool,
    /// The membership published to the node handle.
    membership: Arc<Mutex<Membership>>,
    membership_seen: Membership,
    /// The engine's membership generation when `membership_seen` was last checked.
    membership_generation_seen: u64,
    /// The membership changed since the peer tasks were last pruned.
    peers_stale: bool,
    /// Callers waiting for a joint change to be complete, with the joint membership's index.
    membership_waiters: Vec<(LogIndex, membership::CommitWaiter)>,
    /// The leader when the peer tasks were last pruned.
    leader_seen: Option<NodeId>,
    /// Sequence number of the last `Persist` handed to the writer.
    issued_seq: u64,
    /// Sequence number of the last `Persist` known durable.
    durable_seq: u64,
    held: VecDeque<(u64, Held)>,
    /// Proposals waiting for room, in arrival order: while any waits, new ones queue behind it.
    deferred: VecDeque<Proposed>,
    /// The proposals taken from the inbox, being handed to the engine (kept for its capacity,
    /// at most a step's inputs).
    arrived: Vec<Proposed>,
    /// The term this node led in when last checked (`None`: it did not lead), checked after
    /// every input and at the end of each step: a leadership that ends is noticed then, even
    /// one won and lost inside one step.
    led_term: Option<Term>,
    /// A leadership ended and the applier (and the membership waiters) were not told yet: they
    /// are told at the end of the step or when the node leads again, whichever comes first
    /// (`report_lost_leadership`).
    leadership_lost: bool,
    snap: SnapshotDriver,
    /// Follows one proposal at a time through its stages (when its `tracing` target is on).
    probe: LatencyProbe,
    /// The runtime's monotonic clock, read before every input (`Engine::set_now`).
    clock: Arc<dyn Runtime>,
    /// The clock read during the current step, if it was (see [`CoreLoop::step_now`]).
    step_now: Option<Duration>,
    metrics: LoopMetrics,
    stop: Option<Stop>,
    /// Tells the ticker how many ticks the engine may go without.
    pacer: super::ticker::Pacer,
}

/// Where a node's log writes go once they are not done at the first poll.
pub(super) enum LogWriter {
    /// Tasks mode: to the node's log writer task ([`super::writer::run`]).
    Task(Sender<WriterMsg>),
    /// A host loop runs the main loop: kept here, and polled by the host loop
    /// ([`CoreLoop::poll_log_write`]); the node has no log writer task.
    Inline(InlineWriter),
}

impl LogWriter {
    /// Lets nothing more reach the store (the task's queue closed, or the inline writer's
    /// queued batches dropped).
    fn close(&mut self) {
        match self {
            LogWriter::Task(queue) => {
                queue.close();
            }
            LogWriter::Inline(inline) => inline.close(),
        }
    }
}

/// Where the main loop sends its work: the log writer, the applier and the peers' sender tasks.
pub(super) struct Outlets {
    pub(super) writer: LogWriter,
    pub(super) start_write: StartWrite,
    pub(super) applier: Sender<ApplyMsg>,
    pub(super) peer_factory: PeerFactory,
}

impl CoreLoop {
    pub(super) fn new(
        token: u64,
        engine: Engine,
        inputs: Arc<Inputs>,
        outlets: Outlets,
        membership: Arc<Mutex<Membership>>,
        clock: Arc<dyn Runtime>,
        metrics: LoopMetrics,
    ) -> Self {
        let Outlets { writer, start_write, applier, mut peer_factory } = outlets;
        let membership_seen = engine.membership().clone();
        let membership_generation_seen = engine.membership_generation();
        peer_factory.network.members_changed(membership_seen.nodes());
        let mut peers = BTreeMap::new();
        for peer in membership_seen.members() {
            if peer != engine.id() {
                peers.insert(peer, peer_factory.start(peer));
            }
        }
        Self {
            token,
            engine,
            inputs,
            writer,
            start_write,
            writer_seq: 0,
            applier,
            new_waiters: Vec::new(),
            peers,
            peer_factory,
            replies: HashMap::new(),
            next_reply: 0,
            reads: HashMap::new(),
            next_read: 0,
            prune_reads: false,
            membership,
            membership_generation_seen,
            membership_seen,
            peers_stale: false,
            membership_waiters: Vec::new(),
            leader_seen: None,
            issued_seq: 0,
            durable_seq: 0,
            held: VecDeque::new(),
            deferred: VecDeque::new(),
            arrived: Vec::new(),
            led_term: None,
            leadership_lost: false,
            snap: SnapshotDriver::default(),
            probe: LatencyProbe::default(),
            clock,
            step_now: None,
            metrics,
            stop: None,
            pacer: super::ticker::Pacer::new(),
        }
    }

    /// The clock, read at most once per step for the proposals of the step (unless an input
    /// already read it): when they were appended, for their latency.
    fn step_now(&mut self) -> Duration {
        let clock = &self.clock;
        *self.step_now.get_or_insert_with(|| clock.now())
    }

    /// One step of the main loop, without waiting: handles `first`, then the inputs `more`
    /// gives (until it gives none, `room` inputs were taken, or the node must stop), then
    /// takes the engine's actions and publishes what the step changed.
    ///
    /// Every input the step takes is handled (`more` is not called once the step is full or
    /// the node must stop; each proposal taken from the inbox counts as one input, at most
    /// `room` in all). Unless the node must stop, the engine's actions are then processed by
    /// [`CoreLoop::process_actions`], which keeps the persistence rules (nothing is sent or
    /// answered before the writes it depends on are durable), and the waiters, peers,
    /// membership, status, metrics and ticker pacing are brought up to date. Returns how many
    /// inputs the step took (as counted against `room`), and [`Stepped::Stop`] when the node
    /// must stop: the caller then ends the loop and calls [`CoreLoop::finish`].
    pub(super) fn step(
        &mut self,
        first: Input,
        more: &mut dyn FnMut() -> Option<Input>,
        room: usize,
    ) -> Step {
        // Proposals wait for room across steps only at a leader: a step that ends
        // elsewhere refuses them (`process_actions`).
        debug_assert!(
            self.deferred.is_empty() || self.engine.role() == Role::Leader,
            "deferred proposals outlived the node's leadership"
        );
        self.step_now = None;
        // Each proposal taken from the inbox counts as one input.
        let mut taken = self.handle(first, room);
        self.check_leadership();
        while taken < room && self.stop.is_none() {
            match more() {
                Some(input) => taken += self.handle(input, room - taken),
                None => break,
            }
            self.check_leadership();
        }
        if self.stop.is_some() {
            return Step { inputs: taken, then: Stepped::Stop };
        }
        self.propose_deferred(room.saturating_sub(taken));
        self.publish_membership();
        self.process_actions();
        if !self.deferred.is_empty() && self.engine.can_accept_proposal().is_ok() {
            // The step's room ran out, or room came during `process_actions` (a write
            // that finished at once can commit and end a leadership transfer): the next
            // step proposes more.
            self.inputs.inbox.wake_again(self.clock.as_ref());
        }
        self.flush_waiters();
        self.probe.committed(self.engine.commit_index(), || self.clock.now());
        if self.stop.is_some() {
            return Step { inputs: taken, then: Stepped::Stop };
        }
        self.sync_peers();
        self.answer_membership_waiters();
        let status = self.engine.status();
        self.metrics.node.step(&status, &self.engine);
        self.inputs.status.publish(status);
        self.pacer.set(self.engine.ticks_until_needed());
        Step { inputs: taken, then: Stepped::Continue }
    }

    /// Connects the ticker: after each step it learns how many ticks the engine may go without.
    pub(super) fn with_pacer(mut self, pacer: super::ticker::Pacer) -> Self {
        self.pacer = pacer;
        self
    }

    /// Feeds one input to the engine (or at most `room` proposals of the inbox); sets `stop`
    /// when the node must stop. Returns how many inputs that was (proposals count one each).
    fn handle(&mut self, input: Input, room: usize) -> usize {
        // For the inputs whose time matters to lease reads (a tick starts a lease round; a
        // read, local or from a follower, checks the lease), read after the input arrived: a
        // read is answered from the lease only if it still holds after the read was asked for.
        // Other inputs happen at the last reading, which can only make a lease shorter.
        if matches!(input, Input::Tick(_) | Input::ReadIndex { .. } | Input::Request { .. }) {
            let now = self.clock.now();
            self.step_now = Some(now);
            self.engine.set_now(now);
        }
        match input {
            Input::Tick(ticks) => {
                let engine = std::cell::RefCell::new(&mut self.engine);
                super::ticker::deliver_ticks(
                    ticks,
                    || engine.borrow_mut().tick(),
                    || engine.borrow().is_quiesced(),
                );
                if self.engine.role() == Role::Leader {
                    self.metrics.replication(&self.engine);
                }
            }
            Input::Proposals => return self.take_proposals(room),
            Input::Request { request, reply } => {
                let id = self.next_reply;
                if let RpcRequest::AppendEntries(append) = &request {
                    let last = append.entries.last().map_or(0, |e| e.index);
                    self.probe.received(id, last, || self.clock.now());
                }
                self.next_reply += 1;
                self.replies.insert(id, reply);
                self.metrics.received(request.sender(), &SentRequest::of(&request));
                self.engine.on_request(request, ReplyId(id));
            }
            Input::Response { from, sent, result } => {
                if let Some(peer) = self.peers.get_mut(&from) {
                    peer.outcome(&result);
                }
                match result {
                    Ok(response) => {
                        if let RpcResponse::AppendEntries(r) = &response {
                            let acked = r.match_index.unwrap_or(0);
                            self.probe.acked(acked, || self.clock.now());
                        }
                        self.engine.on_response(from, sent, response)
                    }
                    Err(error) => {
                        tracing::trace!(id = self.engine.id(), peer = from, %error, "RPC failed");
                        self.engine.on_unreachable(from, sent);
                    }
                }
            }
            Input::Persisted { seq, written, result, ended } => {
                self.persisted(Written { seq, written, result, ended })
            }
            Input::Applied(index) => {
                self.probe.applied(index, || self.clock.now());
                self.engine.on_applied(index)
            }
            Input::ReadIndex { read } => {
                if read.abandoned() {
                    return 1; // the caller gave up before the read started
                }
                let id = self.next_read;
                self.next_read += 1;
                self.reads.insert(id, read);
                self.engine.read_index(ReadId(id));
            }
            Input::ReadAbandoned => self.prune_reads = true,
            Input::ChangeMembership { request, permit, reply } => {
                let _ = reply.send(self.change_membership(request, permit));
            }
            Input::MembershipCommitted { after, waiter } => {
                self.membership_waiters.push((after, waiter));
            }
            Input::Replication { reply } => {
                let _ = reply.send(self.engine.replication());
            }
            Input::LastRefusal { peer, reply } => {
                let _ = reply.send(self.peers.get(&peer).and_then(PeerQueue::last_refusal));
            }
            Input::TransferLeadership { target, reply } => {
                let result = self.engine.transfer_leadership(target).map_err(|r| match r {
                    TransferRefusal::NotLeader(leader_id) => TransferError::NotLeader {
                        leader_id,
                        leader_info: self.member_info(leader_id),
                    },
                    TransferRefusal::NotVoter(id) => TransferError::NotVoter(id),
                    TransferRefusal::InProgress(id) => TransferError::InProgress(id),
                });
                let _ = reply.send(result);
            }
            Input::ApplyFailed(message) => self.fail(FatalError::StateMachine(message)),
            Input::Snapshot(input) => self.snapshot_input(input),
            Input::Fatal(error) => self.fail(error),
            Input::Shutdown => {
                if self.stop.is_none() {
                    self.stop = Some(Stop::Requested);
                }
            }
        }
        1
    }

    /// Hands proposals to the engine in arrival order, at most `room`: first those that
    /// waited for room (if the engine has room now), then those waiting in the inbox (which
    /// wakes the loop again for the rest); returns how many there were.
    fn take_proposals(&mut self, room: usize) -> usize {
        let proposed = self.propose_deferred(room);
        let mut arrived = std::mem::take(&mut self.arrived);
        self.inputs.inbox.take(&mut arrived, room - proposed, self.clock.as_ref());
        let count = proposed + arrived.len();
        for proposal in arrived.drain(..) {
            if self.deferred.is_empty() {
                self.propose(proposal);
            } else {
                // Older proposals wait for room: this one waits behind them.
                self.deferred.push_back(proposal);
            }
        }
        self.arrived = arrived;
        count
    }

    /// Hands a proposal to the engine; one that must wait for room goes to the front of
    /// the deferred queue (it is older than every proposal queued there).
    fn propose(&mut self, proposal: Proposed) {
        match self.engine.propose(proposal.command.clone()) {
            Ok(id) => {
                self.metrics.node.proposals.increment(1);
                let reply = match proposal.reply {
                    ProposeReply::Appended(appended) => {
                        let (reply, response) = oneshot::channel();
                        let (index, term, node) = (id.index, id.term, self.token);
                        let _ = appended.send(Ok(Proposal { index, term, response, node }));
                        Answer::Proposal(reply)
                    }
                    ProposeReply::Applied(reply) => Answer::Write(reply),
                };
                let proposed_at = self.step_now();
                let waiter = Waiter { term: id.term, reply, proposed_at, _permit: proposal.permit };
                self.new_waiters.push((id.index, waiter));
                self.probe.accepted(id.index, || self.clock.now());
            }
            Err(ProposeRefusal::NotLeader(leader_id)) => {
                self.metrics.node.proposals_failed.increment(1);
                let leader_info = self.member_info(leader_id);
                proposal.reply.refuse(ProposeError::NotLeader { leader_id, leader_info });
            }
            Err(ProposeRefusal::Backlogged | ProposeRefusal::TransferInProgress) => {
                self.deferred.push_front(proposal)
            }
        }
    }

    /// Proposes deferred proposals, oldest first, at most `room` of them, while the engine
    /// has room; returns how many it handed to the engine. Each counts as one of the step's
    /// inputs: proposals that gathered while the engine refused them (up to
    /// `max_pending_proposals`, during a leadership transfer or a backlog) are spread over
    /// steps, not written and sent in one batch.
    fn propose_deferred(&mut self, room: usize) -> usize {
        let mut proposed = 0;
        while proposed < room && self.engine.can_accept_proposal().is_ok() {
            let Some(proposal) = self.deferred.pop_front() else { break };
            self.propose(proposal);
            proposed += 1;
        }
        proposed
    }

    /// One step of a membership change (see `node/membership.rs`).
    fn change_membership(
        &mut self,
        request: membership::Request,
        permit: super::slots::SlotGuard,
    ) -> Result<membership::Step, MembershipError> {
        let result = match request {
            membership::Request::Change(change) => self.engine.propose_membership(change),
            membership::Request::Target(target) => self.engine.propose_membership_target(&target),
        };
        let progress = result.map_err(|refusal| match refusal {
            MembershipRefusal::NotLeader(leader_id) => {
                MembershipError::NotLeader { leader_id, leader_info: self.member_info(leader_id) }
            }
            MembershipRefusal::ChangeInProgress => MembershipError::ChangeInProgress,
            MembershipRefusal::TransferInProgress => MembershipError::TransferInProgress,
            MembershipRefusal::Invalid(invalid) => MembershipError::Invalid(invalid),
            MembershipRefusal::LearnerBehind { learner, match_index, commit_index } => {
                MembershipError::LearnerBehind { learner, match_index, commit_index }
            }
        })?;
        let id = match progress {
            MembershipProgress::Done => {
                return Ok(membership::Step::Done(self.engine.membership().clone()))
            }
            MembershipProgress::Changed(id)
            | MembershipProgress::Joint(id)
            | MembershipProgress::LearnersAdded(id) => id,
        };
        let (reply, response) = oneshot::channel();
        let proposed_at = self.step_now();
        let waiter =
            Waiter { term: id.term, reply: Answer::Proposal(reply), proposed_at, _permit: permit };
        self.new_waiters.push((id.index, waiter));
        let proposal = Proposal { index: id.index, term: id.term, response, node: self.token };
        let membership = self.engine.membership().clone();
        Ok(membership::Step::Appended { proposal, progress, membership })
    }

    /// The metadata of member `id` of the membership in force.
    fn member_info(&self, id: Option<NodeId>) -> Option<NodeInfo> {
        id.and_then(|id| self.engine.membership().node(id).cloned())
    }

    /// Answers the callers waiting for a joint change to be complete: never with a joint
    /// membership, and with `LeadershipLost` (outcome unknown: the next leader, maybe this
    /// node again, may still commit the final configuration, or did) when the joint entry's
    /// leadership may have ended before it knew its final configuration committed. Their final
    /// configuration is the first membership after their joint entry:
    ///
    /// * Known (its entry is in the log, with its index and term): if it is their own (its
    ///   term is the joint entry's: the joint entry's leadership appended it) and committed,
    ///   they get it once it is applied here (as a change that keeps the voters is answered
    ///   when applied; applying needs no leader, and a removed leader steps down only once it
    ///   committed); if it is committed but another leadership appended it, `LeadershipLost`;
    ///   while it is not committed, they wait if this node leads in the joint entry's term,
    ///   else `LeadershipLost`, as the proposers above the commit index get. The same while no
    ///   membership follows the joint entry (or only a joint one, which a leader never appends
    ///   there: it is no final configuration).
    /// * Unknown (the entries after the joint one were compacted away, or replaced by an
    ///   installed snapshot). If the membership in force at the end of the prefix is still
    ///   their joint one, the first membership entry after the prefix is taken for the first
    ///   after their joint entry, with the rules above (none there yet: they wait while this
    ///   node leads in the joint entry's term, else `LeadershipLost`). Else the first
    ///   membership after their joint entry is in the prefix: if this node's current term is
    ///   still the joint entry's, no other leader wrote in it, so every entry after the joint
    ///   one up to the prefix's end is this leadership's and that membership is their own final
    ///   configuration, the joint membership finalized (kept with the waiter), committed and
    ///   applied (compaction only takes applied entries): they get it, whether the node still
    ///   leads or stepped down, being removed (review MEDIUM-1 of memtest: a removed leader's
    ///   caller got `LeadershipLost`). In a later term, `LeadershipLost`. They get their final
    ///   configuration, never the prefix's membership: that may fold a later change
    ///   (memtest; `Ok` with a learner added after their final configuration, before). Review
    ///   HIGH-1 of memwait: the compacted prefix, joint or another node's, was taken for their
    ///   final configuration. A later joint membership equal to theirs ending the prefix (their
    ///   final configuration, then another change back to it, compacted) is taken for theirs:
    ///   if its final configuration is appended in the same term, the answer is that, equal to
    ///   theirs; else it can be `LeadershipLost` (outcome unknown) though their own final
    ///   configuration committed, when this leadership ends before the later final one is
    ///   applied.
    ///
    /// `LeadershipLost` also when the node lost and won leadership again, within one step or
    /// before the caller asked to wait (review MEDIUM-1 of memwait: such a caller waited on,
    /// and got `Ok` with whatever the new leadership committed, possibly a configuration
    /// another leader wrote over its own). Called at the end of each step and when a
    /// leadership loss is reported (`report_lost_leadership`).
    fn answer_membership_waiters(&mut self) {
        if self.membership_waiters.is_empty() {
            return;
        }
        let commit_index = self.engine.commit_index();
        let applied_index = self.engine.status().applied_index;
        let current_term = self.engine.hard_state().current_term;
        let waiters = std::mem::take(&mut self.membership_waiters);
        for (after, waiter) in waiters {
            // Decided from the waiter's own final configuration, not the latest membership: a
            // later change (accepted before the final one was applied) neither holds the
            // answer back nor replaces it (review LOW-1 of memwait).
            let leading = self.led_term == Some(waiter.joint_term);
            let lost = || Err(MembershipError::Commit(CommitError::LeadershipLost));
            let first_final = |next: Option<(LogIndex, &Membership)>| match next {
                Some((index, membership)) if !membership.is_joint() => {
                    let own = self.engine.term_at(index) == Some(waiter.joint_term);
                    let committed = index <= commit_index;
                    if own && index <= applied_index {
                        Some(Ok(membership.clone()))
                    } else if (committed && !own) || (!committed && !leading) {
                        Some(lost())
                    } else {
                        None
                    }
                }
                _ => (!leading).then(lost),
            };
            let answer = match self.engine.membership_after(after) {
                FirstAfter::Entry(index, membership) => first_final(Some((index, membership))),
                FirstAfter::None => first_final(None),
                // Their joint membership is in force at the end of the prefix: the first
                // membership after the prefix is the first after their joint entry (unless a
                // later joint membership equal to theirs ended the prefix: then the answer may
                // be `LeadershipLost` though theirs committed; see above).
                FirstAfter::Compacted { base: (_, in_force), next }
                    if *in_force == waiter.joint =>
                {
                    first_final(next)
                }
                // The first membership after their joint entry is in the prefix: their own
                // final configuration, committed and applied, if this node's term is still the
                // joint entry's (no other leader wrote in that term).
                FirstAfter::Compacted { .. } if current_term == waiter.joint_term => {
                    Some(Ok(waiter.joint.finalized()))
                }
                FirstAfter::Compacted { .. } => Some(lost()),
            };
            match answer {
                Some(reply) => {
                    let _ = waiter.reply.send(reply);
                }
                None if !waiter.reply.is_canceled() => {
                    self.membership_waiters.push((after, waiter));
                }
                None => {}
            }
        }
    }

    /// Publishes a new membership in force to the node handle, and hands its members' metadata
    /// to the network if that changed (before any request to a new member leaves).
    fn publish_membership(&mut self) {
        // Runs twice per step: the generation spares comparing whole memberships each time.
        let generation = self.engine.membership_generation();
        if self.membership_generation_seen == generation {
            return;
        }
        self.membership_generation_seen = generation;
        if self.membership_seen == *self.engine.membership() {
            return;
        }
        let nodes_changed = self.membership_seen.nodes() != self.engine.membership().nodes();
        self.membership_seen = self.engine.membership().clone();
        *self.membership.lock().unwrap_or_else(|p| p.into_inner()) = self.membership_seen.clone();
        if nodes_changed {
            self.peer_factory.network.members_changed(self.membership_seen.nodes());
        }
        self.peers_stale = true;
    }

    /// Stops the sender tasks of nodes that are neither members nor the leader (which followers
    /// ask for read indexes) any more: when the membership or the leader changed. A stopped
    /// sender reports its RPCs in flight as failed, so nothing waits for their answers.
    fn sync_peers(&mut self) {
        self.publish_membership();
        let leader = self.engine.leader_id();
        if !self.peers_stale && self.leader_seen == leader {
            return;
        }
        self.leader_seen = leader;
        self.peers_stale = false;
        let members = self.membership_seen.nodes();
        self.peers.retain(|id, _| members.contains_key(id) || leader == Some(*id));
    }

    /// Hands a read index to the applier, which answers once the state machine applied it.
    fn answer_read(&mut self, id: ReadId, result: Result<LogIndex, ReadIndexRefusal>) {
        let Some(read) = self.reads.remove(&id.0) else { return };
        if let Ok(index) = result {
            if !read.abandoned() {
                self.send_to_applier(ApplyMsg::ReadAt { index, read });
            }
            return;
        }
        read.answer(result.map_err(|refusal| match refusal {
            ReadIndexRefusal::NotLeader(leader_id) => {
                ReadIndexError::NotLeader { leader_id, leader_info: self.member_info(leader_id) }
            }
            ReadIndexRefusal::Backlogged => ReadIndexError::Backlogged,
            ReadIndexRefusal::LeadershipLost => ReadIndexError::LeadershipLost,
            ReadIndexRefusal::Unreachable => ReadIndexError::Unreachable,
        }));
    }

    /// Carries out the engine's actions until it has none left.
    fn process_actions(&mut self) {
        if std::mem::take(&mut self.prune_reads) {
            self.send_to_applier(ApplyMsg::PruneReads);
        }
        loop {
            let actions = self.engine.take_actions();
            if actions.is_empty() {
                break;
            }
            for action in actions {
                match action {
                    Action::Persist(batch) => {
                        self.issued_seq += 1;
                        self.persist(WriteRequest { seq: self.issued_seq, batch });
                    }
                    Action::Send { to, request, after_persist } => {
                        if after_persist && self.durable_seq < self.issued_seq {
                            self.held.push_back((self.issued_seq, Held::Send { to, request }));
                        } else {
                            self.send(to, request);
                        }
                    }
                    Action::Respond { reply_to, response, after_persist } => {
                        if after_persist && self.durable_seq < self.issued_seq {
                            self.held
                                .push_back((self.issued_seq, Held::Respond { reply_to, response }));
                        } else {
                            self.respond(reply_to, response);
                        }
                    }
                    Action::Apply(entries) => self.send_to_applier(ApplyMsg::Apply(entries)),
                    Action::ReadIndexReady { id, result } => self.answer_read(id, result),
                    other => self.snapshot_action(other),
                }
            }
        }
        self.check_leadership();
        self.report_lost_leadership();
        if self.led_term.is_none() && !self.deferred.is_empty() {
            // Refused whenever the node is not leader at the end of a step, not only when it
            // stopped leading since the last one: a node that won and lost an election in one
            // step (review MEDIUM-2 of perf6) kept them, and every later proposal queued
            // behind them until it led again.
            let leader_id = self.engine.leader_id();
            let leader_info = self.member_info(leader_id);
            for proposal in std::mem::take(&mut self.deferred) {
                let leader_info = leader_info.clone();
                proposal.reply.refuse(ProposeError::NotLeader { leader_id, leader_info });
            }
        }
    }

    /// Notes when the leadership this node held at the last check ended (it follows, or leads
    /// in a later term), and reports it when the node leads again (before any proposer of the
    /// new leadership is handed over: the check runs after every input, and no input both
    /// starts a leadership and proposes). Checked after every input, not once per step: a node
    /// that won and lost an election within one step never told the applier, and the proposals
    /// it accepted meanwhile waited until their entries were applied or overwritten (a
    /// committing leader: possibly never).
    fn check_leadership(&mut self) {
        let leading =
            (self.engine.role() == Role::Leader).then(|| self.engine.hard_state().current_term);
        if self.led_term.is_some() && self.led_term != leading {
            self.leadership_lost = true;
        }
        self.led_term = leading;
        if leading.is_some() {
            self.report_lost_leadership();
        }
    }

    /// Tells the applier of a leadership loss noted by `check_leadership`, with the commit
    /// index of this moment: the proposers above it fail with `LeadershipLost`; those at or
    /// below it are answered when their index is applied (with their entry, or `Dropped`).
    /// The callers waiting for a joint change to be complete whose final configuration is not
    /// committed at this moment fail with `LeadershipLost` too (`answer_membership_waiters`).
    /// Not at the input that ended the leadership: a later input of the same step can commit
    /// the proposals accepted before (a new leader's AppendEntries with its commit index), and
    /// those then get their response, as when the loss was reported at the end of the step.
    fn report_lost_leadership(&mut self) {
        if std::mem::take(&mut self.leadership_lost) {
            let commit_index = self.engine.commit_index();
            self.send_to_applier(ApplyMsg::LeadershipLost { commit_index });
            self.answer_membership_waiters();
        }
    }

    /// Sends `message` to the applier, after the proposers waiting to be handed to it (the
    /// applier sees everything in the order the main loop produced it).
    fn send_to_applier(&mut self, message: ApplyMsg) {
        self.flush_waiters();
        if self.applier.try_send(message).is_err() {
            self.lost("applier (state machine)");
        }
    }

    /// Hands this step's proposers to the applier, in one message. If the applier is gone,
    /// their reply channels are dropped: they see `Shutdown`.
    fn flush_waiters(&mut self) {
        if self.new_waiters.is_empty() {
            return;
        }
        // The next step's proposers start with room for as many (under load, steps are alike),
        // at most a step's inputs (each proposer and membership change counts as one): no
        // reservation larger than the step bound outlives the hand-over that caused it.
        let room = Vec::with_capacity(self.new_waiters.len().min(MAX_INPUTS_PER_STEP));
        let waiters = std::mem::replace(&mut self.new_waiters, room);
        if self.applier.try_send(ApplyMsg::Wait(waiters)).is_err() {
            self.lost("applier (state machine)");
        }
    }

    /// A log write ended: what it made durable is acknowledged to the engine, and the messages
    /// and storage operations waiting for it go out.
    fn persisted(&mut self, done: Written) {
        let Written { seq, written, result, ended } = done;
        if let Err(error) = result {
            return self.fail(FatalError::Storage(error));
        }
        self.durable_seq = seq;
        let last = written.last_entry.map_or(0, |id| id.index);
        self.probe.written(last, ended);
        self.probe.persisted(last, || self.clock.now());
        self.engine.on_persisted(written);
        self.release_held();
        self.release_storage();
    }

    fn release_held(&mut self) {
        while let Some((seq, _)) = self.held.front() {
            if *seq > self.durable_seq {
                break;
            }
            let Some((_, held)) = self.held.pop_front() else { break };
            match held {
                Held::Send { to, request } => self.send(to, request),
                Held::Respond { reply_to, response } => self.respond(reply_to, response),
            }
        }
    }

    fn send(&mut self, to: NodeId, request: RpcRequest) {
        if to == self.engine.id() {
            return;
        }
        let carries = match &request {
            RpcRequest::AppendEntries(append) => append.entries.last().map_or(0, |e| e.index),
            _ => 0,
        };
        let factory = &mut self.peer_factory;
        let peer = self.peers.entry(to).or_insert_with(|| factory.start(to));
        match factory.send(to, peer, request) {
            Ok(()) => self.probe.sent(carries, || self.clock.now()),
            Err(error) => self.unsent(to, error),
        }
    }

    /// Hosted node: polls its peers' inline senders with `cx` (the group's waker), after a
    /// step of its host loop. A sender that panicked stops the node, as a sender task's panic
    /// does: reported through the input queue, or taken here if that queue refused it.
    pub(super) fn poll_peers(&mut self, cx: &mut std::task::Context<'_>) {
        for error in self.peer_factory.poll_inline(cx) {
            self.fail(error);
        }
    }

    /// A request that could not be handed to the sender task of peer `to`.
    fn unsent(&mut self, to: NodeId, error: TrySendError<RpcRequest>) {
        // The peer's queue is full (it is not answering): count the request as lost; the
        // engine retries on a later heartbeat. A closed queue means its task ended, which
        // only a panic does (reported on its way): the node stops.
        let request = match error {
            TrySendError::Full(r) => r,
            TrySendError::Closed(r) => {
                self.lost(&format!("sender to peer {to}"));
                r
            }
        };
        self.engine.on_unreachable(to, SentRequest::of(&request));
    }

    fn respond(&mut self, reply_to: ReplyId, response: RpcResponse) {
        if let RpcResponse::AppendEntries(r) = &response {
            self.probe.answered(reply_to.0, r.match_index, || self.clock.now());
        }
        if let Some(reply) = self.replies.remove(&reply_to.0) {
            let _ = reply.send(response);
        }
    }

    /// Stops the node after a fatal error (the first one counts; a task's report replaces the
    /// bare "it ended" of [`CoreLoop::lost`]).
    fn fail(&mut self, error: FatalError) {
        let known = matches!(&self.stop,
            Some(Stop::Failed(e)) if !matches!(e, FatalError::TaskEnded(_)));
        if !known {
            self.stop = Some(Stop::Failed(error));
        }
    }

    /// A task's queue is closed: the task ended, which it does only after reporting why (an
    /// error or a panic, found among the inputs at the latest when the loop stops). The node
    /// cannot run without it: it stops.
    fn lost(&mut self, task: &str) {
        if self.stop.is_none() {
            self.stop = Some(Stop::Failed(FatalError::TaskEnded(task.to_owned())));
        }
    }

    /// Polls the log write in flight with `cx` (a host loop's group waker) and returns its
    /// report once it ended (`Input::Persisted`, or `Input::Fatal` for a panic in the store),
    /// starting the batches queued behind it (see [`InlineWriter::poll`]); the caller's next
    /// step takes the report as its first input. `None` in tasks mode (the log writer task
    /// reports through the input queue) and while the write is pending.
    pub(super) fn poll_log_write(&mut self, cx: &mut std::task::Context<'_>) -> Option<Input> {
        match &mut self.writer {
            LogWriter::Task(_) => None,
            LogWriter::Inline(inline) => inline.poll(cx),
        }
    }

    /// Takes the log write in flight out (inline writes only), as a future that ends when the
    /// store's call returned: whoever stops the node runs it to its end before the node counts
    /// as stopped (as the log writer task finishes its write).
    pub(super) fn take_log_write(&mut self) -> Option<futures::future::BoxFuture<'static, ()>> {
        match &mut self.writer {
            LogWriter::Task(_) => None,
            LogWriter::Inline(inline) => inline.take_in_flight(),
        }
    }

    /// The node's runtime.
    pub(super) fn runtime(&self) -> Arc<dyn Runtime> {
        self.clock.clone()
    }

    /// Stops the node's other tasks by closing their queues, and fails what is pending: the
    /// inputs still queued too, so that every caller gets `Shutdown` at once. Called once, after
    /// the last step (not after a step panicked: see `supervisor::main_loop_panicked`).
    pub(super) fn finish(&mut self) {
        self.pacer.stop();
        let cause = self.inputs.close();
        let fatal = match self.stop.take() {
            // A task that ended reported why before its queue closed: that report is the cause.
            Some(Stop::Failed(FatalError::TaskEnded(task))) => {
                Some(cause.unwrap_or(FatalError::TaskEnded(task)))
            }
            Some(Stop::Failed(error)) => Some(error),
            Some(Stop::Requested) | None => None,
        };
        if let Some(error) = &fatal {
            self.metrics.node.failed(error);
        }
        self.writer.close();
        self.applier.close();
        // Dropping a peer's queue stops its task, even one whose RPCs never return.
        self.peers.clear();
        self.stop_snapshots();
        for proposal in std::mem::take(&mut self.deferred) {
            proposal.reply.refuse(ProposeError::Shutdown);
        }
        self.new_waiters.clear();
        self.held.clear();
        self.replies.clear();
        self.reads.clear();
        self.membership_waiters.clear();
        self.inputs.finish(fatal, self.engine.status());
        tracing::info!(id = self.engine.id(), "node stopped");
    }
}

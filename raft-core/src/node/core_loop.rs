//! The main loop: the only owner of the engine.

mod snapshots;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_channel::{Receiver, Sender, TrySendError};
use futures::channel::oneshot;

use self::snapshots::SnapshotDriver;
use super::applier::{ApplyMsg, Waiter};
use super::watch::StatusCell;
use super::writer::WriteRequest;
use super::{Input, PeerFactory, Proposal};
use crate::engine::{
    Action, Engine, MembershipRefusal, ProposeRefusal, ReadId, ReadIndexRefusal, ReplyId,
    SentRequest, TransferRefusal,
};
use crate::error::{FatalError, MembershipError, ProposeError, ReadIndexError, TransferError};
use crate::membership::{Membership, MembershipChange};
use crate::message::{RpcRequest, RpcResponse};
use crate::runtime::Runtime;
use crate::types::{LogIndex, NodeId, Role};

/// Inputs handled per step before the engine's actions are taken (bounds latency under load
/// while letting many proposals share one write and one AppendEntries).
const MAX_INPUTS_PER_STEP: usize = 1024;

/// What the main loop publishes to the node handle.
pub(super) struct Published {
    pub(super) status: Arc<StatusCell>,
    pub(super) fatal: Arc<Mutex<Option<FatalError>>>,
    pub(super) membership: Arc<Mutex<Membership>>,
}

/// A message waiting for the writes before it to become durable.
enum Held {
    Send { to: NodeId, request: RpcRequest },
    Respond { reply_to: ReplyId, response: RpcResponse },
}

/// A proposal the engine could not take yet (state machine backlog); retried after applies.
struct Deferred {
    command: bytes::Bytes,
    permit: async_lock::SemaphoreGuardArc,
    reply: oneshot::Sender<Result<Proposal, ProposeError>>,
}

pub(super) struct CoreLoop {
    engine: Engine,
    inputs: Receiver<Input>,
    writer: Sender<WriteRequest>,
    applier: Sender<ApplyMsg>,
    /// Sender tasks of the peers this node talks to (members, and the leader for reads).
    peers: BTreeMap<NodeId, Sender<RpcRequest>>,
    peer_factory: PeerFactory,
    replies: HashMap<u64, oneshot::Sender<RpcResponse>>,
    next_reply: u64,
    reads: HashMap<u64, oneshot::Sender<Result<LogIndex, ReadIndexError>>>,
    next_read: u64,
    /// The membership published to the node handle.
    membership: Arc<Mutex<Membership>>,
    membership_seen: Membership,
    /// Sequence number of the last `Persist` handed to the writer.
    issued_seq: u64,
    /// Sequence number of the last `Persist` known durable.
    durable_seq: u64,
    held: VecDeque<(u64, Held)>,
    deferred: VecDeque<Deferred>,
    status: Arc<StatusCell>,
    fatal: Arc<Mutex<Option<FatalError>>>,
    was_leader: bool,
    snap: SnapshotDriver,
    /// The runtime's monotonic clock, read before every input (`Engine::set_now`).
    clock: Arc<dyn Runtime>,
}

impl CoreLoop {
    pub(super) fn new(
        engine: Engine,
        inputs: Receiver<Input>,
        writer: Sender<WriteRequest>,
        applier: Sender<ApplyMsg>,
        peer_factory: PeerFactory,
        published: Published,
        clock: Arc<dyn Runtime>,
    ) -> Self {
        let Published { status, fatal, membership } = published;
        let membership_seen = engine.membership().clone();
        let mut peers = BTreeMap::new();
        for peer in membership_seen.members() {
            if peer != engine.id() {
                peers.insert(peer, peer_factory.start(peer));
            }
        }
        Self {
            engine,
            inputs,
            writer,
            applier,
            peers,
            peer_factory,
            replies: HashMap::new(),
            next_reply: 0,
            reads: HashMap::new(),
            next_read: 0,
            membership,
            membership_seen,
            issued_seq: 0,
            durable_seq: 0,
            held: VecDeque::new(),
            deferred: VecDeque::new(),
            status,
            fatal,
            was_leader: false,
            snap: SnapshotDriver::default(),
            clock,
        }
    }

    pub(super) async fn run(mut self) {
        'outer: while let Ok(input) = self.inputs.recv().await {
            if !self.handle(input) {
                break;
            }
            for _ in 1..MAX_INPUTS_PER_STEP {
                match self.inputs.try_recv() {
                    Ok(input) => {
                        if !self.handle(input) {
                            break 'outer;
                        }
                    }
                    Err(_) => break,
                }
            }
            if !self.deferred.is_empty() && self.engine.can_accept_proposal().is_ok() {
                for proposal in std::mem::take(&mut self.deferred) {
                    self.propose(proposal);
                }
            }
            self.process_actions();
            self.sync_membership();
            self.status.publish(self.engine.status());
        }
        self.stop();
    }

    /// Feeds one input to the engine. Returns false when the node must stop.
    fn handle(&mut self, input: Input) -> bool {
        // For the inputs whose time matters to lease reads (a tick starts a lease round; a
        // read, local or from a follower, checks the lease), read after the input arrived: a
        // read is answered from the lease only if it still holds after the read was asked for.
        // Other inputs happen at the last reading, which can only make a lease shorter.
        if matches!(input, Input::Tick | Input::ReadIndex { .. } | Input::Request { .. }) {
            self.engine.set_now(self.clock.now());
        }
        match input {
            Input::Tick => self.engine.tick(),
            Input::Propose { command, permit, reply } => {
                self.propose(Deferred { command, permit, reply })
            }
            Input::Request { request, reply } => {
                let id = self.next_reply;
                self.next_reply += 1;
                self.replies.insert(id, reply);
                self.engine.on_request(request, ReplyId(id));
            }
            Input::Response { from, sent, result } => match result {
                Ok(response) => self.engine.on_response(from, sent, response),
                Err(error) => {
                    tracing::trace!(id = self.engine.id(), peer = from, %error, "RPC failed");
                    self.engine.on_unreachable(from, sent);
                }
            },
            Input::Persisted { seq, written, result } => {
                if let Err(error) = result {
                    return self.fail(FatalError::Storage(error.to_string()));
                }
                self.durable_seq = seq;
                self.engine.on_persisted(written);
                self.release_held();
                self.release_storage();
            }
            Input::Applied(index) => self.engine.on_applied(index),
            Input::ReadIndex { reply } => {
                let id = self.next_read;
                self.next_read += 1;
                self.reads.insert(id, reply);
                self.engine.read_index(ReadId(id));
            }
            Input::ChangeMembership { change, permit, reply } => {
                let _ = reply.send(self.change_membership(change, permit));
            }
            Input::Replication { reply } => {
                let _ = reply.send(self.engine.replication());
            }
            Input::TransferLeadership { target, reply } => {
                let result = self.engine.transfer_leadership(target).map_err(|r| match r {
                    TransferRefusal::NotLeader(leader_hint) => {
                        TransferError::NotLeader { leader_hint }
                    }
                    TransferRefusal::NotVoter(id) => TransferError::NotVoter(id),
                    TransferRefusal::InProgress(id) => TransferError::InProgress(id),
                });
                let _ = reply.send(result);
            }
            Input::ApplyFailed(message) => return self.fail(FatalError::StateMachine(message)),
            Input::Snapshot(input) => return self.snapshot_input(input),
            Input::Shutdown => return false,
        }
        true
    }

    fn propose(&mut self, proposal: Deferred) {
        match self.engine.propose(proposal.command.clone()) {
            Ok(id) => {
                let (reply, response) = oneshot::channel();
                let waiter = Waiter { term: id.term, reply, _permit: proposal.permit };
                if self.applier.try_send(ApplyMsg::Wait { index: id.index, waiter }).is_err() {
                    return; // the applier stopped: the node is stopping; the proposer sees Shutdown
                }
                let _ =
                    proposal.reply.send(Ok(Proposal { index: id.index, term: id.term, response }));
            }
            Err(ProposeRefusal::NotLeader(leader_hint)) => {
                let _ = proposal.reply.send(Err(ProposeError::NotLeader { leader_hint }));
            }
            Err(ProposeRefusal::Backlogged | ProposeRefusal::TransferInProgress) => {
                self.deferred.push_back(proposal)
            }
        }
    }

    fn change_membership(
        &mut self,
        change: MembershipChange,
        permit: async_lock::SemaphoreGuardArc,
    ) -> Result<(Proposal, crate::membership::Membership), MembershipError> {
        let id = self.engine.propose_membership(change).map_err(|refusal| match refusal {
            MembershipRefusal::NotLeader(leader_hint) => MembershipError::NotLeader { leader_hint },
            MembershipRefusal::ChangeInProgress => MembershipError::ChangeInProgress,
            MembershipRefusal::TransferInProgress => MembershipError::TransferInProgress,
            MembershipRefusal::Invalid(invalid) => MembershipError::Invalid(invalid),
            MembershipRefusal::LearnerBehind { match_index, commit_index } => {
                MembershipError::LearnerBehind { match_index, commit_index }
            }
        })?;
        let (reply, response) = oneshot::channel();
        let waiter = Waiter { term: id.term, reply, _permit: permit };
        self.applier
            .try_send(ApplyMsg::Wait { index: id.index, waiter })
            .map_err(|_| MembershipError::Shutdown)?;
        let proposal = Proposal { index: id.index, term: id.term, response };
        Ok((proposal, self.engine.membership().clone()))
    }

    /// Publishes a new membership to the node handle, and stops the sender tasks of nodes that
    /// are no longer members (unless one is the leader, which followers ask for read indexes).
    fn sync_membership(&mut self) {
        if self.membership_seen == *self.engine.membership() {
            return;
        }
        self.membership_seen = self.engine.membership().clone();
        *self.membership.lock().unwrap_or_else(|p| p.into_inner()) = self.membership_seen.clone();
        let (members, leader) = (self.membership_seen.members(), self.engine.leader_id());
        self.peers.retain(|id, queue| {
            let keep = members.contains(id) || leader == Some(*id);
            if !keep {
                queue.close();
            }
            keep
        });
    }

    /// Hands a read index to the applier, which answers once the state machine applied it.
    fn answer_read(&mut self, id: ReadId, result: Result<LogIndex, ReadIndexRefusal>) {
        let Some(reply) = self.reads.remove(&id.0) else { return };
        if let Ok(index) = result {
            let _ = self.applier.try_send(ApplyMsg::ReadAt { index, reply });
            return;
        }
        let _ = reply.send(result.map_err(|refusal| match refusal {
            ReadIndexRefusal::NotLeader(leader_hint) => ReadIndexError::NotLeader { leader_hint },
            ReadIndexRefusal::Backlogged => ReadIndexError::Backlogged,
            ReadIndexRefusal::LeadershipLost => ReadIndexError::LeadershipLost,
            ReadIndexRefusal::Unreachable => ReadIndexError::Unreachable,
        }));
    }

    /// Carries out the engine's actions until it has none left.
    fn process_actions(&mut self) {
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
                    Action::Apply(entries) => {
                        let _ = self.applier.try_send(ApplyMsg::Apply(entries));
                    }
                    Action::ReadIndexReady { id, result } => self.answer_read(id, result),
                    other => self.snapshot_action(other),
                }
            }
        }
        let is_leader = self.engine.role() == Role::Leader;
        if self.was_leader && !is_leader {
            let commit_index = self.engine.commit_index();
            let _ = self.applier.try_send(ApplyMsg::LeadershipLost { commit_index });
            let leader_hint = self.engine.leader_id();
            for proposal in std::mem::take(&mut self.deferred) {
                let _ = proposal.reply.send(Err(ProposeError::NotLeader { leader_hint }));
            }
        }
        self.was_leader = is_leader;
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
        let factory = &self.peer_factory;
        let peer = self.peers.entry(to).or_insert_with(|| factory.start(to));
        if let Err(error) = peer.try_send(request) {
            // The peer's queue is full (it is not answering) or its task ended: count the
            // request as lost; the engine retries on a later heartbeat.
            let request = match error {
                TrySendError::Full(r) | TrySendError::Closed(r) => r,
            };
            self.engine.on_unreachable(to, SentRequest::of(&request));
        }
    }

    fn respond(&mut self, reply_to: ReplyId, response: RpcResponse) {
        if let Some(reply) = self.replies.remove(&reply_to.0) {
            let _ = reply.send(response);
        }
    }

    fn fail(&mut self, error: FatalError) -> bool {
        tracing::error!(id = self.engine.id(), %error, "node stopping after a fatal error");
        *self.fatal.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
        false
    }

    /// Stops the node's other tasks by closing their queues, and fails what is pending.
    fn stop(&mut self) {
        self.inputs.close();
        self.writer.close();
        self.applier.close();
        for peer in self.peers.values() {
            peer.close();
        }
        self.stop_snapshots();
        for proposal in std::mem::take(&mut self.deferred) {
            let _ = proposal.reply.send(Err(ProposeError::Shutdown));
        }
        self.held.clear();
        self.replies.clear();
        self.reads.clear();
        let mut status = self.engine.status();
        status.role = Role::Follower;
        status.leader_id = None;
        self.status.publish(status);
        self.status.close();
        tracing::info!(id = self.engine.id(), "node stopped");
    }
}

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
use super::{Input, Proposal};
use crate::engine::{Action, Engine, ProposeRefusal, ReplyId, SentRequest};
use crate::error::{FatalError, ProposeError};
use crate::message::{RpcRequest, RpcResponse};
use crate::types::{NodeId, Role};

/// Inputs handled per step before the engine's actions are taken (bounds latency under load
/// while letting many proposals share one write and one AppendEntries).
const MAX_INPUTS_PER_STEP: usize = 1024;

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
    peers: BTreeMap<NodeId, Sender<RpcRequest>>,
    replies: HashMap<u64, oneshot::Sender<RpcResponse>>,
    next_reply: u64,
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
}

impl CoreLoop {
    pub(super) fn new(
        engine: Engine,
        inputs: Receiver<Input>,
        writer: Sender<WriteRequest>,
        applier: Sender<ApplyMsg>,
        peers: BTreeMap<NodeId, Sender<RpcRequest>>,
        status: Arc<StatusCell>,
        fatal: Arc<Mutex<Option<FatalError>>>,
    ) -> Self {
        Self {
            engine,
            inputs,
            writer,
            applier,
            peers,
            replies: HashMap::new(),
            next_reply: 0,
            issued_seq: 0,
            durable_seq: 0,
            held: VecDeque::new(),
            deferred: VecDeque::new(),
            status,
            fatal,
            was_leader: false,
            snap: SnapshotDriver::default(),
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
            self.process_actions();
            self.status.publish(self.engine.status());
        }
        self.stop();
    }

    /// Feeds one input to the engine. Returns false when the node must stop.
    fn handle(&mut self, input: Input) -> bool {
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
            Input::Persisted { seq, last, result } => {
                if let Err(error) = result {
                    return self.fail(FatalError::Storage(error.to_string()));
                }
                self.durable_seq = seq;
                self.engine.on_persisted(last);
                self.release_held();
                self.release_storage();
            }
            Input::Applied(index) => {
                self.engine.on_applied(index);
                let waiting = std::mem::take(&mut self.deferred);
                for proposal in waiting {
                    self.propose(proposal);
                }
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
            Err(ProposeRefusal::Backlogged) => self.deferred.push_back(proposal),
        }
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
        let Some(peer) = self.peers.get(&to) else { return };
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
        let mut status = self.engine.status();
        status.role = Role::Follower;
        status.leader_id = None;
        self.status.publish(status);
        self.status.close();
        tracing::info!(id = self.engine.id(), "node stopped");
    }
}

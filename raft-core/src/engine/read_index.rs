//! Linearizable reads without log writes: ReadIndex (Raft thesis §6.4).
//!
//! The leader records its commit index as the read index, then confirms it is still the leader
//! with a round of AppendEntries acknowledged by a quorum of voters. Reads registered before a
//! round is sent share it: every AppendEntries carries the leader's current round number
//! (`read_round`), and an answer in the leader's term to a request of round `r` confirms every
//! read of round `r` or earlier. A new leader answers reads only after an entry of its own term
//! is committed (before that its commit index may be behind the previous leader's).
//!
//! A follower asks the leader for a read index with a `ReadIndex` RPC, one RPC for all the reads
//! that arrived in the same step (the leader's answer serves them all: it covers every write
//! acknowledged before the RPC was sent). Either way the caller then waits until its state
//! machine has applied the read index before reading.

use std::collections::{BTreeMap, VecDeque};

use super::progress::ReplicationMode;
use super::{Action, Engine, ReplyId, RoleState};
use crate::message::{ReadIndexRequest, ReadIndexResponse, RpcRequest, RpcResponse};
use crate::types::{LogIndex, NodeId};

/// Identifies a read asked for with [`Engine::read_index`] (chosen by the caller, echoed in
/// [`Action::ReadIndexReady`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReadId(pub u64);

/// Why a read index could not be obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadIndexRefusal {
    /// Neither this node nor the node it asked is the leader; the known leader, if any.
    NotLeader(Option<NodeId>),
    /// The leader holds `Config::max_pending_reads` reads already: try again shortly.
    Backlogged,
    /// The leader stepped down before a quorum confirmed its leadership: retry on the new one.
    LeadershipLost,
    /// The leader could not be reached (follower reads).
    Unreachable,
}

/// Who waits for a read index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadWaiter {
    /// A read of this node.
    Local(ReadId),
    /// A follower's `ReadIndex` request.
    Remote(ReplyId),
}

/// A leader's reads.
#[derive(Debug, Default)]
pub(super) struct ReadQueue {
    /// The latest round number sent.
    round: u64,
    /// A read is waiting for the next round.
    round_wanted: bool,
    /// Reads waiting for an entry of the leader's term to commit.
    waiting_commit: Vec<ReadWaiter>,
    /// Reads with their index, waiting for a majority to acknowledge `round`, oldest first.
    pending: VecDeque<(u64, LogIndex, ReadWaiter)>,
}

/// A follower's reads forwarded to the leader.
#[derive(Debug, Default)]
pub(super) struct ForwardedReads {
    /// Reads asked for since the last `ReadIndex` RPC was sent.
    batch: Vec<ReadId>,
    /// Reads waiting for the answer to each RPC in flight, by the RPC's `read_id`.
    in_flight: BTreeMap<u64, Vec<ReadId>>,
    next_rpc: u64,
}

impl ReadQueue {
    /// The round stamped on AppendEntries sent now.
    pub(super) fn round(&self) -> u64 {
        self.round
    }

    /// Starts a new round: AppendEntries sent from now on carry it.
    pub(super) fn next_round(&mut self) {
        self.round += 1;
    }

    fn len(&self) -> usize {
        self.waiting_commit.len() + self.pending.len()
    }

    /// Whether no read waits and no round is wanted.
    pub(super) fn is_idle(&self) -> bool {
        self.len() == 0 && !self.round_wanted
    }
}

impl Engine {
    /// Asks for a read index. The outcome comes as [`Action::ReadIndexReady`] for `id`: on the
    /// leader once a quorum confirmed its leadership, on a follower once the leader answered
    /// its `ReadIndex` request. Reading the state machine after it applied that index is
    /// linearizable. Wakes a quiesced node (a quiesced leader answers from its lease only while
    /// the lease holds by the clock, as ever, and else runs a round).
    pub fn read_index(&mut self, id: ReadId) {
        self.unquiesce(super::quiesce::Waker::Other);
        if matches!(self.role, RoleState::Leader(_)) {
            self.register_read(ReadWaiter::Local(id));
            return;
        }
        match self.leader_id {
            Some(leader) if leader != self.id => self.forwarded.batch.push(id),
            _ => self.reply_read(ReadWaiter::Local(id), Err(ReadIndexRefusal::NotLeader(None))),
        }
    }

    /// Follower, when actions are taken: sends one `ReadIndex` RPC for the reads asked for since
    /// the last one (or fails them if the leader is no longer known).
    pub(super) fn forward_reads(&mut self) {
        if self.forwarded.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.forwarded.batch);
        let Some(leader) = self.leader_id.filter(|&l| l != self.id) else {
            for id in batch {
                self.reply_read(ReadWaiter::Local(id), Err(ReadIndexRefusal::NotLeader(None)));
            }
            return;
        };
        let read_id = self.forwarded.next_rpc;
        self.forwarded.next_rpc += 1;
        self.forwarded.in_flight.insert(read_id, batch);
        let request = RpcRequest::ReadIndex(ReadIndexRequest {
            term: self.hard_state.current_term,
            sender: self.id,
            read_id,
        });
        self.send(leader, request, false);
    }

    /// Follower woken from quiescence by anything but its leader: asks its leader for a read
    /// index that no read waits for (unless a forwarded read does it already). A live leader
    /// answers it after a heartbeat round, which reaches every follower.
    pub(super) fn ping_leader(&mut self) {
        let Some(leader) = self.leader_id.filter(|&l| l != self.id) else { return };
        if !self.forwarded.batch.is_empty() {
            return;
        }
        let read_id = self.forwarded.next_rpc;
        self.forwarded.next_rpc += 1;
        let request = RpcRequest::ReadIndex(ReadIndexRequest {
            term: self.hard_state.current_term,
            sender: self.id,
            read_id,
        });
        self.send(leader, request, false);
    }

    /// A follower's `ReadIndex` request.
    pub(super) fn handle_read_index(&mut self, req: &ReadIndexRequest, reply_to: ReplyId) {
        let waiter = ReadWaiter::Remote(reply_to);
        if matches!(self.role, RoleState::Leader(_)) && req.term <= self.hard_state.current_term {
            self.register_read(waiter);
        } else {
            self.reply_read(waiter, Err(ReadIndexRefusal::NotLeader(self.leader_id)));
        }
    }

    /// The leader's answer to our `ReadIndex` request `read_id`.
    pub(super) fn handle_read_index_response(&mut self, read_id: u64, resp: &ReadIndexResponse) {
        let result = resp.read_index.ok_or(ReadIndexRefusal::NotLeader(resp.leader_id));
        self.answer_forwarded(read_id, result);
    }

    /// Our `ReadIndex` request `read_id` got no answer.
    pub(super) fn read_index_unreachable(&mut self, read_id: u64) {
        self.answer_forwarded(read_id, Err(ReadIndexRefusal::Unreachable));
    }

    fn answer_forwarded(&mut self, read_id: u64, result: Result<LogIndex, ReadIndexRefusal>) {
        for id in self.forwarded.in_flight.remove(&read_id).unwrap_or_default() {
            self.reply_read(ReadWaiter::Local(id), result);
        }
    }

    fn register_read(&mut self, waiter: ReadWaiter) {
        let own_term_committed = self.own_term_committed();
        let (commit, max) = (self.log.commit_index, self.config.max_pending_reads);
        let leased = own_term_committed && self.lease_holds();
        let RoleState::Leader(leader) = &mut self.role else { return };
        let reads = &mut leader.reads;
        if leased {
            self.reply_read(waiter, Ok(commit));
        } else if reads.len() >= max {
            self.reply_read(waiter, Err(ReadIndexRefusal::Backlogged));
        } else if own_term_committed {
            reads.pending.push_back((reads.round + 1, commit, waiter));
            reads.round_wanted = true;
        } else {
            reads.waiting_commit.push(waiter);
        }
    }

    /// Whether the commit index is at an entry of the current term (a leader's commit index is
    /// then at least every earlier leader's).
    pub(super) fn own_term_committed(&self) -> bool {
        self.log.term_at(self.log.commit_index) == Some(self.hard_state.current_term)
    }

    /// Leader, before replicating: gives waiting reads their index once the leader's term has a
    /// committed entry, starts a round for the reads registered since the last one, and makes
    /// sure every voter that has not acknowledged the newest read's round gets an AppendEntries
    /// carrying it (entries if there are some to send, else a heartbeat). Heartbeats are
    /// coalesced: a voter gets none while one is in flight to it or while an AppendEntries
    /// carrying the round (or a later one) is on its way; once the heartbeat in flight is
    /// answered, the next step sends the newer round. So reads never pile heartbeats up on a
    /// slow link (which would fill the peer's queue and drop it to Probe).
    pub(super) fn start_read_round(&mut self) {
        let own_term_committed = self.own_term_committed();
        let commit = self.log.commit_index;
        let RoleState::Leader(leader) = &mut self.role else { return };
        let reads = &mut leader.reads;
        if own_term_committed && !reads.waiting_commit.is_empty() {
            for waiter in std::mem::take(&mut reads.waiting_commit) {
                reads.pending.push_back((reads.round + 1, commit, waiter));
            }
            reads.round_wanted = true;
        }
        if std::mem::take(&mut reads.round_wanted) {
            reads.next_round();
        }
        let Some(&(needed, _, _)) = reads.pending.back() else { return };
        let membership = self.log.membership().latest();
        let to_ask: Vec<NodeId> = leader
            .progress
            .iter()
            .filter(|&(&id, p)| {
                membership.is_voter(id)
                    && p.read_round_acked < needed
                    && p.read_round_sent < needed
                    && p.heartbeats_in_flight == 0
                    && p.mode != ReplicationMode::Snapshot
            })
            .map(|(&id, _)| id)
            .collect();
        for peer in to_ask {
            self.replicate_to(peer, true);
        }
        self.confirm_reads();
    }

    /// `from` answered an AppendEntries of `round` in the current term.
    pub(super) fn read_round_acked(&mut self, from: NodeId, round: u64) {
        let RoleState::Leader(leader) = &mut self.role else { return };
        let Some(progress) = leader.progress.get_mut(&from) else { return };
        if round > progress.read_round_acked {
            progress.read_round_acked = round;
            self.confirm_reads();
        }
    }

    /// The highest round a quorum of voters acknowledged (this node's own acknowledgement is
    /// its current round, if it votes).
    fn confirmed_round(&self) -> u64 {
        let RoleState::Leader(leader) = &self.role else { return 0 };
        self.log.membership().latest().agreed_value(|voter| match leader.progress.get(&voter) {
            _ if voter == self.id => leader.reads.round(),
            Some(progress) => progress.read_round_acked,
            None => 0,
        })
    }

    /// Answers every read whose round a quorum of voters acknowledged.
    fn confirm_reads(&mut self) {
        if !matches!(&self.role, RoleState::Leader(l) if !l.reads.pending.is_empty()) {
            return;
        }
        let confirmed = self.confirmed_round();
        let RoleState::Leader(leader) = &mut self.role else { return };
        let mut ready = Vec::new();
        while let Some(&(round, index, waiter)) = leader.reads.pending.front() {
            if round > confirmed {
                break;
            }
            leader.reads.pending.pop_front();
            ready.push((waiter, index));
        }
        for (waiter, index) in ready {
            self.reply_read(waiter, Ok(index));
        }
    }

    /// Fails every read of a leader that stepped down.
    pub(super) fn abandon_reads(&mut self, reads: ReadQueue) {
        let waiters =
            reads.waiting_commit.into_iter().chain(reads.pending.into_iter().map(|r| r.2));
        for waiter in waiters {
            self.reply_read(waiter, Err(ReadIndexRefusal::LeadershipLost));
        }
    }

    fn reply_read(&mut self, waiter: ReadWaiter, result: Result<LogIndex, ReadIndexRefusal>) {
        match waiter {
            ReadWaiter::Local(id) => self.actions.push(Action::ReadIndexReady { id, result }),
            ReadWaiter::Remote(reply_to) => {
                let leader_id = match result {
                    Err(ReadIndexRefusal::NotLeader(hint)) => hint,
                    _ => None,
                };
                let response = RpcResponse::ReadIndex(ReadIndexResponse {
                    term: self.hard_state.current_term,
                    read_index: result.ok(),
                    leader_id,
                });
                self.respond(reply_to, response, false);
            }
        }
    }
}

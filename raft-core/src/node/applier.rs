//! The applier task: hands committed entries to the state machine in order and answers the
//! proposers waiting for them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_channel::{Receiver, Sender};
use bytes::Bytes;
use futures::channel::oneshot;

use super::snapshot::{self, ApplierSnapshots};
use super::waiters::IndexQueue;
use super::{Input, PendingRead};
use crate::error::{CommitError, StateMachineError, WriteError};
use crate::membership::Membership;
use crate::metrics::NodeMetrics;
use crate::snapshot::SnapshotMeta;
use crate::state_machine::StateMachine;
use crate::types::{Entry, LogId, LogIndex, Term};

/// A proposer waiting for the response to its entry.
pub(super) struct Waiter {
    pub(super) term: Term,
    pub(super) reply: Answer,
    /// When the entry was appended (the runtime's clock, read once per main loop step).
    pub(super) proposed_at: Duration,
    /// Holds one of the node's proposal slots until the proposal is answered.
    pub(super) _permit: super::slots::SlotGuard,
}

/// Where the response to a proposal goes.
pub(super) enum Answer {
    /// The channel behind a [`Proposal`](super::Proposal) (`Node::propose`).
    Proposal(oneshot::Sender<Result<Bytes, CommitError>>),
    /// The caller of `Node::write`, which waits for the response in one call.
    Write(super::reply::ReplySender<Result<Bytes, WriteError>>),
}

impl Answer {
    /// Sends the outcome (a proposer that gave up is not an error).
    pub(super) fn send(self, outcome: Result<Bytes, CommitError>) {
        match self {
            Answer::Proposal(reply) => {
                let _ = reply.send(outcome);
            }
            Answer::Write(reply) => reply.send(outcome.map_err(WriteError::Failed)),
        }
    }
}

pub(super) enum ApplyMsg {
    /// Answer these proposers (by index, ascending) when their entries are applied: the
    /// proposals of one step of the main loop, in one message.
    Wait(Vec<(LogIndex, Waiter)>),
    /// Apply these committed entries.
    Apply(Vec<Entry>),
    /// This node stopped leading: fail waiters above `commit_index` (their fate is unknown).
    LeadershipLost { commit_index: LogIndex },
    /// Capture a snapshot of the state as of now (`last_included`).
    TakeSnapshot(LogId, Membership),
    /// Replace the state by this stored snapshot.
    Restore(SnapshotMeta),
    /// Answer a linearizable read once the state machine has applied `index`.
    ReadAt { index: LogIndex, read: PendingRead },
    /// A reader gave up: drop the reads whose callers are gone (freeing their slots).
    PruneReads,
}

/// Reads waiting for the state machine to reach their read index. Each holds a read slot until
/// answered, or until its caller gave up (the caller's `read_index` then asks for a prune).
#[derive(Default)]
struct ReadWaiters {
    by_index: BTreeMap<LogIndex, Vec<PendingRead>>,
}

impl ReadWaiters {
    fn wait(&mut self, index: LogIndex, read: PendingRead) {
        self.by_index.entry(index).or_default().push(read);
    }

    /// Drops the reads whose callers gave up.
    fn prune(&mut self) {
        self.by_index.retain(|_, reads| {
            reads.retain(|read| !read.abandoned());
            !reads.is_empty()
        });
    }

    /// Answers every read whose index is at most `applied`.
    fn applied(&mut self, applied: LogIndex) {
        let rest = self.by_index.split_off(&(applied + 1));
        for (index, reads) in std::mem::replace(&mut self.by_index, rest) {
            for read in reads {
                read.answer(Ok(index));
            }
        }
    }
}

pub(super) async fn run<M: StateMachine>(
    mut state_machine: M,
    messages: Receiver<ApplyMsg>,
    inputs: Sender<Input>,
    snapshots: Option<ApplierSnapshots>,
    mut applied: LogIndex,
    metrics: Arc<NodeMetrics>,
) {
    let mut waiters: IndexQueue<Waiter> = IndexQueue::default();
    let mut reads = ReadWaiters::default();
    while let Ok(message) = messages.recv().await {
        match message {
            ApplyMsg::ReadAt { index, read } => {
                if index <= applied {
                    read.answer(Ok(index));
                } else if !read.abandoned() {
                    reads.wait(index, read);
                }
            }
            ApplyMsg::PruneReads => reads.prune(),
            ApplyMsg::Wait(batch) => waiters.extend(batch),
            ApplyMsg::LeadershipLost { commit_index } => {
                for (_, waiter) in waiters.split_above(commit_index) {
                    metrics.proposal_answered(waiter.proposed_at, Duration::ZERO, false);
                    waiter.reply.send(Err(CommitError::LeadershipLost));
                }
            }
            ApplyMsg::TakeSnapshot(last_included, membership) => {
                let s = snapshots.as_ref();
                let at = (last_included, membership);
                if !snapshot::take(&mut state_machine, s, at, &inputs).await {
                    return;
                }
            }
            ApplyMsg::Restore(meta) => {
                let s = snapshots.as_ref();
                let last = meta.last_included.index;
                if !snapshot::restore(&mut state_machine, s, meta, &mut waiters, &inputs).await {
                    return;
                }
                applied = applied.max(last);
                reads.applied(applied);
            }
            ApplyMsg::Apply(entries) => {
                let Some(last) = entries.last().map(|e| e.index) else { continue };
                let started = metrics.now();
                let responses = match state_machine.apply(&entries).await {
                    Ok(responses) if responses.len() == entries.len() => responses,
                    Ok(responses) => {
                        let message = format!(
                            "state machine returned {} responses for {} entries",
                            responses.len(),
                            entries.len()
                        );
                        let error = StateMachineError::new(message);
                        let _ = inputs.send(Input::ApplyFailed(Arc::new(error))).await;
                        return;
                    }
                    Err(error) => {
                        let _ = inputs.send(Input::ApplyFailed(Arc::new(error))).await;
                        return;
                    }
                };
                let ended = metrics.now();
                metrics.apply_done(entries.len(), started, ended);
                for (entry, response) in entries.iter().zip(responses) {
                    if let Some(waiter) = waiters.remove(entry.index) {
                        let ok = waiter.term == entry.term;
                        metrics.proposal_answered(waiter.proposed_at, ended, ok);
                        let outcome = if ok {
                            Ok(response)
                        } else {
                            Err(CommitError::Dropped { index: entry.index, term: waiter.term })
                        };
                        waiter.reply.send(outcome);
                    }
                }
                applied = last;
                reads.applied(applied);
                if inputs.send(Input::Applied(last)).await.is_err() {
                    return;
                }
            }
        }
    }
}

//! Clients of a user's state machine in virtual time: writes and linearizable reads, each
//! recorded in a [`History`] with its call and return times and its outcome.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use raft_core::{Bytes, CommitError, Node, NodeId, ProposeError, ReadIndexError, StateMachine};

use super::clients::{check_answer, next_node, Directory, Shared};
use super::executor::SimRuntime;
use super::history::{History, OpOutcome};
use super::recorder::{lock, Record, StateMachineHandle};
use super::simulation::Simulation;

/// A simulated client of the cluster (see [`Simulation::client`]): it runs inside a task on
/// the simulation's executor ([`Simulation::spawn`]) and records every operation in its
/// [`History`]. It follows leader hints and retries refused operations (those that certainly
/// did not take effect) on other nodes until its timeout; it never retries an operation whose
/// outcome it does not know.
pub struct SimClient<S, Op, Res> {
    id: u64,
    history: History<Op, Res>,
    directory: Directory<S>,
    shared: Arc<Shared>,
    runtime: SimRuntime,
    timeout: Duration,
    target: NodeId,
}

impl<S, Op, Res> std::fmt::Debug for SimClient<S, Op, Res> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimClient").field("id", &self.id).field("target", &self.target).finish()
    }
}

/// The nodes running at each moment, for tasks that run while the simulation does (a fault
/// schedule crashes and restarts nodes meanwhile): a user's own client reaches the nodes
/// through it. Cheap to clone; see [`Simulation::running_nodes`].
pub struct RunningNodes<S> {
    directory: Directory<S>,
}

impl<S> Clone for RunningNodes<S> {
    fn clone(&self) -> Self {
        Self { directory: self.directory.clone() }
    }
}

impl<S> std::fmt::Debug for RunningNodes<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RunningNodes").field(&self.ids()).finish()
    }
}

impl<S> RunningNodes<S> {
    /// Node `id`'s handle, if it runs now (the handle of its current incarnation).
    pub fn get(&self, id: NodeId) -> Option<Node> {
        lock(&self.directory).get(&id).map(|(node, _, _)| node.clone())
    }

    /// The ids of the nodes running now, in order.
    pub fn ids(&self) -> Vec<NodeId> {
        lock(&self.directory).keys().copied().collect()
    }
}

impl<S: StateMachine> Simulation<S> {
    /// The nodes running at each moment (see [`RunningNodes`]).
    pub fn running_nodes(&self) -> RunningNodes<S> {
        RunningNodes { directory: self.directory.clone() }
    }

    /// A client numbered `id` that records its operations in `history`, waiting at most the
    /// client timeout ([`Simulation::set_client_timeout`], 3 s by default) for each.
    pub fn client<Op: Clone, Res: Clone>(
        &self,
        id: u64,
        history: &History<Op, Res>,
    ) -> SimClient<S, Op, Res> {
        SimClient {
            id,
            history: history.clone(),
            directory: self.directory.clone(),
            shared: self.shared.clone(),
            runtime: self.runtime.clone(),
            timeout: self.client_timeout,
            target: 0,
        }
    }

    /// Runs `task` on the simulation's executor (in virtual time, alongside the nodes): a
    /// client's workload, for instance.
    pub fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.runtime.spawn_task(task);
    }
}

impl<S: StateMachine, Op: Clone, Res: Clone> SimClient<S, Op, Res> {
    /// Virtual time now.
    pub fn now(&self) -> Duration {
        self.runtime.now()
    }

    /// Sleeps for `duration` of virtual time (a client's think time).
    pub async fn sleep(&self, duration: Duration) {
        self.runtime.sleep_for(duration).await;
    }

    /// Proposes `command` (the encoding of `op`) and waits until it is applied, recording `op`
    /// with its outcome: `Ok(decode(response))` once applied, [`OpOutcome::Failed`] if it was
    /// refused everywhere until the timeout or overwritten before it committed, and
    /// [`OpOutcome::Unknown`] if it was accepted but the client timed out or the leader lost
    /// its leadership or stopped first. Every answer is also checked against what the
    /// answering node's state machine was given at that index.
    pub async fn write(
        &mut self,
        op: Op,
        command: Bytes,
        decode: impl FnOnce(&Bytes) -> Res,
    ) -> OpOutcome<Res> {
        let pending = self.history.call(self.id, op, self.now());
        let deadline = self.now() + self.timeout;
        let outcome = loop {
            let Some((left, (node, record, _))) = self.next_attempt(deadline).await else {
                break OpOutcome::Failed;
            };
            let attempt = async {
                let proposal = node.propose(command.clone()).await?;
                let (index, term) = (proposal.index, proposal.term);
                Ok::<_, ProposeError>((index, term, proposal.response().await))
            };
            let outcome = futures::select_biased! {
                outcome = attempt.fuse() => Some(outcome),
                _ = self.runtime.sleep_for(left).fuse() => None,
            };
            match outcome {
                // The proposal may have been appended before the client stopped waiting.
                None => break OpOutcome::Unknown,
                Some(Err(ProposeError::TooLarge { .. })) => break OpOutcome::Failed,
                Some(Err(ProposeError::NotLeader { leader_id, .. })) => {
                    self.back_off(leader_id).await
                }
                Some(Err(_)) => self.back_off(None).await,
                Some(Ok((index, term, answer))) => {
                    let shared = &self.shared;
                    check_answer(shared, &record, node.id(), (&command, index, term), &answer);
                    break match answer {
                        Ok(response) => {
                            shared.max_acknowledged.fetch_max(index, Ordering::SeqCst);
                            OpOutcome::Ok(decode(&response))
                        }
                        Err(CommitError::Dropped { .. }) => OpOutcome::Failed,
                        Err(_) => OpOutcome::Unknown,
                    };
                }
            }
        };
        pending.finish(outcome.clone(), self.now());
        outcome
    }

    /// A linearizable read: asks a node for a read index ([`raft_core::Node::read_index`]),
    /// then runs `query` on its state machine (which then reflects at least that index) and
    /// records `op` with `Ok(answer)`, or [`OpOutcome::Failed`] if no node answered before the
    /// timeout (a read has no effect). Every read index is also checked: it must cover every
    /// write acknowledged and every commit index reported before the read began.
    pub async fn read(&mut self, op: Op, query: impl FnOnce(&S) -> Res) -> OpOutcome<Res> {
        let pending = self.history.call(self.id, op, self.now());
        let floor = self
            .shared
            .max_acknowledged
            .load(Ordering::SeqCst)
            .max(self.shared.max_committed.load(Ordering::SeqCst));
        let deadline = self.now() + self.timeout;
        let outcome = loop {
            let Some((left, (node, record, handle))) = self.next_attempt(deadline).await else {
                break OpOutcome::Failed;
            };
            let outcome = futures::select_biased! {
                result = node.read_index().fuse() => Some(result),
                _ = self.runtime.sleep_for(left).fuse() => None,
            };
            match outcome {
                None => break OpOutcome::Failed,
                Some(Err(ReadIndexError::NotLeader { leader_id, .. })) => {
                    self.back_off(leader_id).await
                }
                Some(Err(_)) => self.back_off(None).await,
                Some(Ok(index)) => {
                    let state_machine = handle.lock().await;
                    let state_end = record.state_end().index;
                    if index < floor || state_end < index {
                        self.shared.report(
                            "Linearizable reads",
                            format!(
                                "node {} returned read index {index} with its state at {state_end}; index {floor} was acknowledged or committed before the read began",
                                node.id()
                            ),
                        );
                    }
                    break OpOutcome::Ok(query(&state_machine));
                }
            }
        };
        pending.finish(outcome.clone(), self.now());
        outcome
    }

    /// The node to try next (the target if it runs, else the next running one, waiting for
    /// one to run) and the time left before `deadline`; `None` once it passed.
    async fn next_attempt(
        &mut self,
        deadline: Duration,
    ) -> Option<(Duration, (Node, Record, StateMachineHandle<S>))> {
        loop {
            let left = deadline.checked_sub(self.now()).filter(|d| !d.is_zero())?;
            if !lock(&self.directory).contains_key(&self.target) {
                self.target = next_node(&self.directory, self.target);
            }
            let entry = lock(&self.directory).get(&self.target).cloned();
            match entry {
                Some(entry) => return Some((left, entry)),
                None => self.back_off(None).await,
            }
        }
    }

    /// After a refusal: try `hint` (or the next node) after a moment.
    async fn back_off(&mut self, hint: Option<NodeId>) {
        self.target = hint.unwrap_or_else(|| next_node(&self.directory, self.target));
        self.runtime.sleep_for(Duration::from_millis(20)).await;
    }
}

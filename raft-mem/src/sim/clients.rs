//! Simulated clients: writers that record every acknowledged write and check each answer
//! against what the state machine applied, and readers that check every linearizable read.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use raft_core::{Bytes, CommitError, LogIndex, Node, NodeId, ProposeError};

use super::checker::Violation;
use super::recorder::{lock, Record, StateMachineHandle};
use super::simulation::Simulation;

/// The running nodes and their state machines, shared with client tasks.
pub(crate) type Directory<S> = Arc<Mutex<BTreeMap<NodeId, (Node, Record, StateMachineHandle<S>)>>>;

/// What clients and readers share with the checker.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// The highest log index of any acknowledged write so far.
    pub(crate) max_acknowledged: AtomicU64,
    /// The highest commit index any node has reported so far (every read must cover it).
    pub(crate) max_committed: AtomicU64,
    /// What clients and readers found wrong.
    pub(crate) violations: Mutex<Vec<Violation>>,
}

impl Shared {
    pub(crate) fn report(&self, invariant: &'static str, detail: String) {
        lock(&self.violations).push(Violation { invariant, detail });
    }
}

/// How a simulated writer behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientOptions {
    /// How long the client waits for a write (proposal and answer) before trying another node.
    pub timeout: Duration,
    /// The size of each command, uniform in this range (at least the size of its name and
    /// number).
    pub payload_bytes: (usize, usize),
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(3), payload_bytes: (0, 0) }
    }
}

/// What one simulated client saw: every write it was told committed, in order.
#[derive(Debug, Clone, Default)]
pub struct ClientLog {
    /// `(command, index)` of every acknowledged write.
    pub acknowledged: Arc<Mutex<Vec<(Bytes, LogIndex)>>>,
    /// Set to stop the client after its current write.
    pub stop: Arc<AtomicBool>,
}

impl ClientLog {
    /// The acknowledged writes so far.
    pub fn acknowledged(&self) -> Vec<(Bytes, LogIndex)> {
        lock(&self.acknowledged).clone()
    }

    /// Asks the client to stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// What one simulated reader saw.
#[derive(Debug, Clone, Default)]
pub struct ReaderLog {
    /// Reads that returned a read index (all checked).
    pub completed: Arc<AtomicU64>,
    /// Reads that failed (no leader, leadership lost, unreachable, timed out).
    pub failed: Arc<AtomicU64>,
    /// Set to stop the reader after its current read.
    pub stop: Arc<AtomicBool>,
}

impl ReaderLog {
    /// Reads completed and checked so far.
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::SeqCst)
    }

    /// Reads that failed so far.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::SeqCst)
    }

    /// Asks the reader to stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The running node after `current` in id order (wrapping), or `current` if none runs.
pub(crate) fn next_node<S>(directory: &Directory<S>, current: NodeId) -> NodeId {
    let directory = lock(directory);
    directory
        .range(current + 1..)
        .next()
        .or_else(|| directory.iter().next())
        .map_or(current, |(&id, _)| id)
}

/// Checks the answer to a write proposed as `command`, accepted at `index` in `term`, against
/// what the answering incarnation's state machine applied there.
pub(crate) fn check_answer(
    shared: &Shared,
    recorder: &Record,
    node: NodeId,
    (command, index, term): (&Bytes, LogIndex, raft_core::Term),
    answer: &Result<Bytes, CommitError>,
) {
    let (entry, response) = recorder.applied_at(index);
    match answer {
        Ok(bytes) => {
            let applied =
                entry.as_ref().is_some_and(|e| e.term == term && e.command() == Some(command));
            if !applied || response.as_ref() != Some(bytes) {
                shared.report(
                    "write answers match what was applied",
                    format!(
                        "node {node} answered the write at {index} (term {term}) with {bytes:?}; its state machine applied {:?} there and answered {response:?}",
                        entry.map(|e| e.log_id())
                    ),
                );
            }
        }
        Err(CommitError::Dropped { .. }) => {
            if entry.as_ref().is_some_and(|e| e.term == term) {
                shared.report(
                    "write answers match what was applied",
                    format!("node {node} answered the write at {index} (term {term}) as dropped, but applied it"),
                );
            }
        }
        Err(_) => {}
    }
}

impl<S: raft_core::StateMachine> Simulation<S> {
    /// Starts a client task that writes `"{name}-{k}"` for k = 0, 1, ... through whichever node
    /// accepts it (following leader hints, retrying after failures) until stopped. Every write it
    /// is told committed is recorded with its index, and every answer is checked against what
    /// the answering node's state machine applied at that index.
    pub fn spawn_client(&self, name: &str) -> ClientLog {
        let options = ClientOptions { timeout: self.client_timeout, ..ClientOptions::default() };
        self.spawn_client_with(name, options)
    }

    /// [`Simulation::spawn_client`] with options (timeout, payload sizes).
    pub fn spawn_client_with(&self, name: &str, options: ClientOptions) -> ClientLog {
        let log = ClientLog::default();
        let (directory, runtime, record, name) =
            (self.directory.clone(), self.runtime.clone(), log.clone(), name.to_owned());
        let shared = self.shared.clone();
        self.runtime.spawn_task(async move {
            let mut target = next_node(&directory, 0);
            let mut k = 0u64;
            while !record.stop.load(Ordering::SeqCst) {
                let mut text = format!("{name}-{k}");
                let (low, high) = options.payload_bytes;
                let size = low + runtime.below(high.saturating_sub(low) as u64 + 1) as usize;
                if text.len() < size {
                    text.push('.');
                    text.extend(std::iter::repeat_n('x', size - text.len()));
                }
                let command = Bytes::from(text);
                let entry = lock(&directory).get(&target).cloned();
                let mut hint = None;
                if let Some((node, recorder, _)) = entry {
                    let attempt = async {
                        match node.propose(command.clone()).await {
                            Ok(proposal) => {
                                let (index, term) = (proposal.index, proposal.term);
                                Ok((index, term, proposal.response().await))
                            }
                            Err(error) => Err(error),
                        }
                    };
                    let outcome = futures::select_biased! {
                        outcome = attempt.fuse() => Some(outcome),
                        _ = runtime.sleep_for(options.timeout).fuse() => None,
                    };
                    match outcome {
                        Some(Ok((index, term, answer))) => {
                            let id = node.id();
                            check_answer(&shared, &recorder, id, (&command, index, term), &answer);
                            if answer.is_ok() {
                                lock(&record.acknowledged).push((command, index));
                                shared.max_acknowledged.fetch_max(index, Ordering::SeqCst);
                                k += 1;
                                // Think time: a client never issues work in zero virtual time.
                                runtime.sleep_for(Duration::from_millis(1 + k % 7)).await;
                                continue;
                            }
                        }
                        Some(Err(ProposeError::NotLeader { leader_id, .. })) => hint = leader_id,
                        _ => {}
                    }
                }
                target = hint.unwrap_or_else(|| next_node(&directory, target));
                runtime.sleep_for(Duration::from_millis(20)).await;
            }
        });
        log
    }

    /// Starts a reader task that asks running nodes chosen at random (followers included) for
    /// linearizable reads with [`Node::read_index`], each with a random timeout, and checks each
    /// answer: the read index must cover every write acknowledged (by any client of
    /// [`Simulation::spawn_client`]) and every commit index any node reported before the read
    /// began, and the node's state must hold that index when the call returns. A stale read
    /// fails the run as a violation of "Linearizable reads".
    pub fn spawn_reader(&self) -> ReaderLog {
        self.spawn_reader_with(None, None)
    }

    /// A reader like [`Simulation::spawn_reader`] that asks only node `id` (a client sticking
    /// to the node it believes leads), for `duration` of virtual time.
    pub fn spawn_reader_on(&self, id: NodeId, duration: Duration) -> ReaderLog {
        self.spawn_reader_with(Some(id), Some(self.now() + duration))
    }

    fn spawn_reader_with(&self, only: Option<NodeId>, until: Option<Duration>) -> ReaderLog {
        let log = ReaderLog::default();
        let (directory, runtime, record, shared) =
            (self.directory.clone(), self.runtime.clone(), log.clone(), self.shared.clone());
        self.runtime.spawn_task(async move {
            while !record.stop.load(Ordering::SeqCst) && until.is_none_or(|t| runtime.now() < t) {
                let chosen = {
                    let directory = lock(&directory);
                    match only {
                        Some(id) => directory.get(&id).map(|entry| (id, entry.clone())),
                        None => {
                            let at = runtime.below(directory.len() as u64) as usize;
                            directory.iter().nth(at).map(|(&id, entry)| (id, entry.clone()))
                        }
                    }
                };
                let Some((target, (node, recorder, _))) = chosen else {
                    runtime.sleep_for(Duration::from_millis(20)).await;
                    continue;
                };
                let floor = shared
                    .max_acknowledged
                    .load(Ordering::SeqCst)
                    .max(shared.max_committed.load(Ordering::SeqCst));
                let timeout = Duration::from_millis(50 + runtime.below(2950));
                let outcome = futures::select_biased! {
                    result = node.read_index().fuse() => result.ok(),
                    _ = runtime.sleep_for(timeout).fuse() => None,
                };
                let Some(index) = outcome else {
                    record.failed.fetch_add(1, Ordering::SeqCst);
                    runtime.sleep_for(Duration::from_millis(20)).await;
                    continue;
                };
                let state_end = recorder.state_end().index;
                if index < floor || state_end < index {
                    shared.report(
                        "Linearizable reads",
                        format!(
                            "node {target} returned read index {index} with its state at {state_end}; \
                             index {floor} was acknowledged or committed before the read began"
                        ),
                    );
                }
                record.completed.fetch_add(1, Ordering::SeqCst);
                runtime.sleep_for(Duration::from_millis(3)).await;
            }
        });
        log
    }
}

//! The built-in state machine of simulations and clusters: it records every entry it applies.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use futures::StreamExt;
use raft_core::{
    Bytes, Entry, LogId, SnapshotMeta, SnapshotStream, StateMachine, StateMachineError,
};

/// Snapshot data is sent in pieces of this size.
const PIECE_BYTES: usize = 512;

/// A state machine whose state is the list of every entry it applied (so a snapshot holds the
/// whole history, and a restore checks it ends at the snapshot's entry), answering each
/// command with its own bytes (and library entries with nothing). It accepts any command: the
/// default state machine of a [`Simulation`](crate::sim::Simulation) and of a
/// [`Cluster`](super::Cluster), and a stand-in for tests that need one.
///
/// A clone shares the state with the original: keep one while the node owns the other, to read
/// what the node applied ([`entries`](Self::entries), [`commands`](Self::commands)) and which
/// snapshots it restored ([`restored`](Self::restored)).
#[derive(Debug, Clone, Default)]
pub struct RecordingStateMachine {
    state: Arc<Mutex<Recorded>>,
}

#[derive(Debug, Default)]
struct Recorded {
    /// Every entry the state reflects, in log order.
    entries: Vec<Entry>,
    /// The entry of every snapshot restored, in order.
    restored: Vec<LogId>,
}

impl RecordingStateMachine {
    /// An empty state machine.
    pub fn new() -> Self {
        Self::default()
    }

    /// The shared state. A panic while holding the lock cannot leave it half-updated (every
    /// update is one assignment or extension), so a poisoned lock is still read.
    fn state(&self) -> MutexGuard<'_, Recorded> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every entry the state reflects (applied, or restored from a snapshot), in log order.
    pub fn entries(&self) -> Vec<Entry> {
        self.state().entries.clone()
    }

    /// The commands among [`entries`](Self::entries), with their indexes, in log order
    /// (library entries such as membership changes and blank entries are left out).
    pub fn commands(&self) -> Vec<(u64, Bytes)> {
        let state = self.state();
        state.entries.iter().filter_map(|e| Some((e.index, e.command()?.clone()))).collect()
    }

    /// The last entry the state reflects.
    pub fn last(&self) -> Option<LogId> {
        self.state().entries.last().map(Entry::log_id)
    }

    /// The last entry of every snapshot this state machine restored, in the order restored.
    pub fn restored(&self) -> Vec<LogId> {
        self.state().restored.clone()
    }
}

#[async_trait]
impl StateMachine for RecordingStateMachine {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        self.state().entries.extend_from_slice(entries);
        Ok(entries.iter().map(|e| e.command().cloned().unwrap_or_default()).collect())
    }

    async fn snapshot(&mut self) -> Result<Option<SnapshotStream>, StateMachineError> {
        // Capture now (a copy of the entries), serialize later in the stream.
        let captured = self.entries();
        let stream = futures::stream::once(async move {
            postcard::to_allocvec(&captured)
                .map_err(|e| StateMachineError::new(format!("encoding a snapshot: {e}")))
        })
        .flat_map(|encoded| {
            let pieces: Vec<Result<Bytes, StateMachineError>> = match encoded {
                Ok(bytes) => {
                    let bytes = Bytes::from(bytes);
                    (0..bytes.len())
                        .step_by(PIECE_BYTES)
                        .map(|at| Ok(bytes.slice(at..(at + PIECE_BYTES).min(bytes.len()))))
                        .collect()
                }
                Err(error) => vec![Err(error)],
            };
            futures::stream::iter(pieces)
        });
        Ok(Some(stream.boxed()))
    }

    async fn restore(
        &mut self,
        meta: &SnapshotMeta,
        mut data: SnapshotStream,
    ) -> Result<(), StateMachineError> {
        let mut encoded = Vec::new();
        while let Some(chunk) = data.next().await {
            encoded.extend_from_slice(&chunk?);
        }
        let entries: Vec<Entry> = postcard::from_bytes(&encoded)
            .map_err(|e| StateMachineError::new(format!("decoding a snapshot: {e}")))?;
        let last = entries.last().map_or(LogId::default(), Entry::log_id);
        if last != meta.last_included {
            return Err(StateMachineError::new(format!(
                "snapshot {:?} holds entries up to {last:?}",
                meta.last_included
            )));
        }
        let mut state = self.state();
        state.entries = entries;
        state.restored.push(meta.last_included);
        Ok(())
    }
}

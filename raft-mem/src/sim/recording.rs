//! The built-in state machine of simulations: it records every entry it applies.

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
/// default state machine of a [`Simulation`](super::Simulation), and a stand-in for tests
/// that need one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordingStateMachine {
    entries: Vec<Entry>,
}

impl RecordingStateMachine {
    /// An empty state machine.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every entry the state reflects (applied, or restored from a snapshot), in log order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The last entry the state reflects.
    pub fn last(&self) -> Option<LogId> {
        self.entries.last().map(Entry::log_id)
    }
}

#[async_trait]
impl StateMachine for RecordingStateMachine {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        self.entries.extend_from_slice(entries);
        Ok(entries.iter().map(|e| e.command().cloned().unwrap_or_default()).collect())
    }

    async fn snapshot(&mut self) -> Result<Option<SnapshotStream>, StateMachineError> {
        // Capture now (a copy of the entries), serialize later in the stream.
        let captured = self.entries.clone();
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
        self.entries = entries;
        Ok(())
    }
}

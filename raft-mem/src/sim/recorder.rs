//! The state machine of simulated nodes, and the record the checker reads around it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use raft_core::{
    Bytes, Entry, LogId, LogIndex, SnapshotMeta, SnapshotStream, StateMachine, StateMachineError,
};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use super::executor::SimRuntime;

/// How the simulated state machine misbehaves: slow applies and failures.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StateMachineFaults {
    /// Probability that an `apply` call takes time (a slow state machine).
    pub slow_chance: f64,
    /// How long a slow `apply` takes, uniform in this range, in microseconds.
    pub slow_us: (u64, u64),
    /// Probability that an `apply` call fails (the node stops with a fatal error).
    pub error_chance: f64,
}

/// What a simulated state machine did since the checker last looked.
pub(crate) enum Event {
    Applied(Vec<Entry>),
    /// Restored from a snapshot ending at this entry and holding these entries.
    Restored(LogId, Vec<Entry>),
}

/// The state machine of simulated nodes: its state is the list of every entry it applied (so a
/// snapshot holds the whole history, which the checker verifies), and it answers each command
/// with its own bytes. One per incarnation.
#[derive(Clone)]
pub(crate) struct Recorder {
    /// Done since the checker last looked.
    pub(crate) fresh: Arc<Mutex<Vec<Event>>>,
    /// Every entry the state reflects (applied, or restored from a snapshot).
    pub(crate) history: Arc<Mutex<Vec<Entry>>>,
    /// The answer given for each entry applied by this incarnation.
    responses: Arc<Mutex<BTreeMap<LogIndex, Bytes>>>,
    /// The snapshots this incarnation restored, in order.
    pub(crate) restores: Arc<Mutex<Vec<LogId>>>,
    /// Shared with the simulation, which may turn the faults off.
    faults: Arc<Mutex<StateMachineFaults>>,
    rng: Arc<Mutex<ChaCha8Rng>>,
    runtime: SimRuntime,
    /// Whether an injected failure stopped this incarnation.
    pub(crate) failed: Arc<std::sync::atomic::AtomicBool>,
}

/// Snapshot data is sent in pieces of this size by the recorder.
const RECORDER_PIECE_BYTES: usize = 512;

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Recorder {
    /// A recorder whose slow applies sleep on `runtime` (the node's) and whose faults are drawn
    /// from `seed`.
    pub(crate) fn new(
        runtime: SimRuntime,
        faults: Arc<Mutex<StateMachineFaults>>,
        seed: u64,
    ) -> Self {
        Self {
            fresh: Arc::default(),
            history: Arc::default(),
            responses: Arc::default(),
            restores: Arc::default(),
            faults,
            rng: Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(seed))),
            runtime,
            failed: Arc::default(),
        }
    }

    /// The entry this incarnation's state holds at `index` and the answer it gave when applying
    /// it (`None` for entries it restored from a snapshot).
    pub(crate) fn applied_at(&self, index: LogIndex) -> (Option<Entry>, Option<Bytes>) {
        let entry = {
            let history = lock(&self.history);
            let first = history.first().map_or(1, |e| e.index);
            index
                .checked_sub(first)
                .and_then(|p| usize::try_from(p).ok())
                .and_then(|p| history.get(p).cloned())
        };
        (entry, lock(&self.responses).get(&index).cloned())
    }

    /// The last index the state reflects.
    pub(crate) fn state_end(&self) -> LogIndex {
        lock(&self.history).last().map_or(0, |e| e.index)
    }

    fn draw(&self, probability: f64) -> bool {
        probability > 0.0 && (lock(&self.rng).next_u64() as f64 / u64::MAX as f64) < probability
    }
}

#[async_trait]
impl StateMachine for Recorder {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        let faults = *lock(&self.faults);
        if self.draw(faults.slow_chance) {
            let (low, high) = faults.slow_us;
            let us = low + lock(&self.rng).next_u64() % (high.saturating_sub(low) + 1);
            self.runtime.sleep_virtual(Duration::from_micros(us)).await;
        }
        if self.draw(faults.error_chance) {
            self.failed.store(true, std::sync::atomic::Ordering::SeqCst);
            return Err(StateMachineError::new("injected state machine failure"));
        }
        let answers: Vec<Bytes> =
            entries.iter().map(|e| e.command().cloned().unwrap_or_default()).collect();
        lock(&self.fresh).push(Event::Applied(entries.to_vec()));
        lock(&self.history).extend_from_slice(entries);
        let mut responses = lock(&self.responses);
        for (entry, answer) in entries.iter().zip(&answers) {
            responses.insert(entry.index, answer.clone());
        }
        Ok(answers)
    }

    async fn snapshot(&mut self) -> Result<Option<SnapshotStream>, StateMachineError> {
        // Capture now (a copy of the history), serialize later in the stream.
        let captured = lock(&self.history).clone();
        let stream = futures::stream::once(async move {
            postcard::to_allocvec(&captured)
                .map_err(|e| StateMachineError::new(format!("encoding a snapshot: {e}")))
        })
        .flat_map(|encoded| {
            let pieces: Vec<Result<Bytes, StateMachineError>> = match encoded {
                Ok(bytes) => {
                    let bytes = Bytes::from(bytes);
                    (0..bytes.len())
                        .step_by(RECORDER_PIECE_BYTES)
                        .map(|at| Ok(bytes.slice(at..(at + RECORDER_PIECE_BYTES).min(bytes.len()))))
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
        lock(&self.fresh).push(Event::Restored(last, entries.clone()));
        lock(&self.restores).push(last);
        *lock(&self.history) = entries;
        Ok(())
    }
}

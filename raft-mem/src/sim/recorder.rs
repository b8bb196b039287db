//! What the checker sees of a simulated node's state machine: a wrapper around the user's
//! [`StateMachine`] that forwards every call and records, around it, what was applied, what
//! each snapshot was captured at and what each restore installed. Nothing is asked of the
//! user's state machine beyond the trait.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures::{Stream, StreamExt};
use raft_core::{
    Bytes, Entry, LogId, LogIndex, SnapshotMeta, SnapshotStream, StateMachine, StateMachineError,
};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use super::executor::SimRuntime;

/// How the simulated state machines misbehave (whatever state machine the simulation runs: the
/// faults are injected around it): slow applies and failures.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StateMachineFaults {
    /// Probability that an `apply` call takes time (a slow state machine).
    pub slow_chance: f64,
    /// How long a slow `apply` takes, uniform in this range, in microseconds.
    pub slow_us: (u64, u64),
    /// Probability that an `apply` call fails (the node stops with a fatal error).
    pub error_chance: f64,
}

/// A digest of a state machine's state, for divergence detection: two state machines that
/// applied the same entries must report the same digest. See
/// [`SimulationBuilder::digest`](super::SimulationBuilder::digest).
pub type DigestFn<S> = Arc<dyn Fn(&S) -> u64 + Send + Sync>;

/// What a simulated state machine did since the checker last looked.
pub(crate) enum Event {
    /// Applied these entries; the state's digest afterwards (with a digest hook).
    Applied(Vec<Entry>, Option<u64>),
    /// Restored from a snapshot ending at this entry (or resumed there: a state machine that
    /// persists its own state), with the state's digest afterwards. `Err` says why the data
    /// restored is not a snapshot any state machine captured at that entry.
    Restored(LogId, Result<(), String>, Option<u64>),
}

/// The record of one incarnation's state machine, shared with the simulation and its clients.
#[derive(Clone, Default)]
pub(crate) struct Record {
    /// Done since the checker last looked.
    pub(crate) fresh: Arc<Mutex<Vec<Event>>>,
    /// The last snapshot restored (or resumed from), whose entries the state reflects, and
    /// every entry applied after it.
    pub(crate) state: Arc<Mutex<(LogId, Vec<Entry>)>>,
    /// The answer given for each entry applied by this incarnation.
    responses: Arc<Mutex<BTreeMap<LogIndex, Bytes>>>,
    /// The snapshots this incarnation restored, in order.
    pub(crate) restores: Arc<Mutex<Vec<LogId>>>,
    /// Whether an injected failure stopped this incarnation.
    pub(crate) failed: Arc<AtomicBool>,
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Record {
    /// The entry this incarnation applied at `index` and the answer it gave (`None` for
    /// entries it did not apply itself: restored from a snapshot, or not yet applied).
    pub(crate) fn applied_at(&self, index: LogIndex) -> (Option<Entry>, Option<Bytes>) {
        let entry = {
            let state = lock(&self.state);
            let first = state.0.index + 1;
            index
                .checked_sub(first)
                .and_then(|p| usize::try_from(p).ok())
                .and_then(|p| state.1.get(p).cloned())
        };
        (entry, lock(&self.responses).get(&index).cloned())
    }

    /// The last entry the state reflects.
    pub(crate) fn state_end(&self) -> LogId {
        let state = lock(&self.state);
        state.1.last().map_or(state.0, Entry::log_id)
    }

    fn push(&self, event: Event) {
        lock(&self.fresh).push(event);
    }

    fn restored(&self, last: LogId) {
        *lock(&self.state) = (last, Vec::new());
    }
}

/// Which snapshot data was captured at which entry, over the whole simulation (by a hash of the
/// data's bytes: restores are verified against it without decoding the user's format).
#[derive(Debug, Default)]
pub(crate) struct SnapshotRegistry {
    captured: HashMap<(u64, u64), BTreeSet<LogId>>,
}

pub(crate) type Registry = Arc<Mutex<SnapshotRegistry>>;

impl SnapshotRegistry {
    fn verify(&self, key: (u64, u64), last: LogId) -> Result<(), String> {
        match self.captured.get(&key) {
            Some(ids) if ids.contains(&last) => Ok(()),
            Some(ids) => Err(format!(
                "the data restored as a snapshot at {last:?} was captured by a state machine at {ids:?}"
            )),
            None => Err(format!(
                "the data restored as a snapshot at {last:?} ({} bytes) is no snapshot any state machine produced",
                key.1
            )),
        }
    }
}

/// Called with (hash, length) of snapshot data that was read to its end.
type OnEnd = Box<dyn FnOnce((u64, u64)) + Send>;

/// A stream that passes snapshot data through and hashes it; when it ends, `on_end` gets the
/// hash and the length.
struct Hashing {
    inner: SnapshotStream,
    hasher: std::collections::hash_map::DefaultHasher,
    len: u64,
    on_end: Option<OnEnd>,
}

impl Hashing {
    fn new(inner: SnapshotStream, on_end: impl FnOnce((u64, u64)) + Send + 'static) -> Self {
        Self { inner, hasher: Default::default(), len: 0, on_end: Some(Box::new(on_end)) }
    }
}

impl Stream for Hashing {
    type Item = Result<Bytes, StateMachineError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let next = this.inner.poll_next_unpin(cx);
        match &next {
            Poll::Ready(Some(Ok(chunk))) => {
                this.hasher.write(chunk);
                this.len += chunk.len() as u64;
            }
            Poll::Ready(None) => {
                if let Some(on_end) = this.on_end.take() {
                    on_end((this.hasher.finish(), this.len));
                }
            }
            Poll::Ready(Some(Err(_))) => this.on_end = None,
            Poll::Pending => {}
        }
        next
    }
}

/// A shared handle to a simulated node's state machine (the user's, inside the wrapper the
/// node runs). Lock it to read the state; the node cannot apply while it is locked.
#[derive(Debug)]
pub struct StateMachineHandle<S> {
    inner: Arc<futures::lock::Mutex<S>>,
}

impl<S> Clone for StateMachineHandle<S> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl<S> StateMachineHandle<S> {
    /// Waits until the node is not inside a call to the state machine, then locks it.
    pub async fn lock(&self) -> futures::lock::MutexGuard<'_, S> {
        self.inner.lock().await
    }

    /// Locks the state machine unless the node is inside a call to it (an `apply` suspended in
    /// virtual time, say).
    pub fn try_lock(&self) -> Option<futures::lock::MutexGuard<'_, S>> {
        self.inner.try_lock()
    }
}

/// The state machine a simulated node runs: the user's, wrapped. Every call is forwarded; the
/// wrapper injects [`StateMachineFaults`] and records what the checker needs.
pub(crate) struct Observed<S> {
    inner: StateMachineHandle<S>,
    record: Record,
    /// Shared with the simulation, which may turn the faults off.
    faults: Arc<Mutex<StateMachineFaults>>,
    rng: ChaCha8Rng,
    runtime: SimRuntime,
    registry: Registry,
    digest: Option<DigestFn<S>>,
}

impl<S> Observed<S> {
    /// Wraps `inner`; slow applies sleep on `runtime` (the node's) and faults are drawn from
    /// `seed`.
    pub(crate) fn new(
        inner: S,
        (runtime, seed): (SimRuntime, u64),
        faults: Arc<Mutex<StateMachineFaults>>,
        registry: Registry,
        digest: Option<DigestFn<S>>,
    ) -> Self {
        Self {
            inner: StateMachineHandle { inner: Arc::new(futures::lock::Mutex::new(inner)) },
            record: Record::default(),
            faults,
            rng: ChaCha8Rng::seed_from_u64(seed),
            runtime,
            registry,
            digest,
        }
    }

    pub(crate) fn record(&self) -> Record {
        self.record.clone()
    }

    pub(crate) fn handle(&self) -> StateMachineHandle<S> {
        self.inner.clone()
    }

    fn draw(&mut self, probability: f64) -> bool {
        probability > 0.0 && (self.rng.next_u64() as f64 / u64::MAX as f64) < probability
    }
}

#[async_trait]
impl<S: StateMachine> StateMachine for Observed<S> {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        let faults = *lock(&self.faults);
        if self.draw(faults.slow_chance) {
            let (low, high) = faults.slow_us;
            let us = low + self.rng.next_u64() % (high.saturating_sub(low) + 1);
            self.runtime.sleep_virtual(Duration::from_micros(us)).await;
        }
        if self.draw(faults.error_chance) {
            self.record.failed.store(true, Ordering::SeqCst);
            return Err(StateMachineError::new("injected state machine failure"));
        }
        let mut inner = self.inner.lock().await;
        let answers = inner.apply(entries).await?;
        let digest = self.digest.as_ref().map(|digest| digest(&inner));
        // Recorded before the state machine is unlocked: whoever locks it next sees a record
        // that matches its state.
        self.record.push(Event::Applied(entries.to_vec(), digest));
        lock(&self.record.state).1.extend_from_slice(entries);
        let mut responses = lock(&self.record.responses);
        for (entry, answer) in entries.iter().zip(&answers) {
            responses.insert(entry.index, answer.clone());
        }
        drop(inner);
        Ok(answers)
    }

    fn applied_index(&self) -> Option<LogId> {
        let inner = self.inner.try_lock()?;
        let applied = inner.applied_index().filter(|a| a.index > 0)?;
        let digest = self.digest.as_ref().map(|digest| digest(&inner));
        // It resumes there: the checker treats it as a restore (of the entries it held).
        self.record.push(Event::Restored(applied, Ok(()), digest));
        self.record.restored(applied);
        Some(applied)
    }

    async fn snapshot(&mut self) -> Result<Option<SnapshotStream>, StateMachineError> {
        let captured_at = self.record.state_end();
        let Some(stream) = self.inner.lock().await.snapshot().await? else { return Ok(None) };
        let registry = self.registry.clone();
        let hashing = Hashing::new(stream, move |key| {
            lock(&registry).captured.entry(key).or_default().insert(captured_at);
        });
        Ok(Some(hashing.boxed()))
    }

    async fn restore(
        &mut self,
        meta: &SnapshotMeta,
        data: SnapshotStream,
    ) -> Result<(), StateMachineError> {
        let read = Arc::new(Mutex::new(None));
        let seen = read.clone();
        let data = Hashing::new(data, move |key| *lock(&seen) = Some(key)).boxed();
        let mut inner = self.inner.lock().await;
        inner.restore(meta, data).await?;
        let digest = self.digest.as_ref().map(|digest| digest(&inner));
        let last = meta.last_included;
        // A state machine that stopped reading before the end is not checked.
        let key = *lock(&read);
        let verified = key.map_or(Ok(()), |key| lock(&self.registry).verify(key, last));
        self.record.push(Event::Restored(last, verified, digest));
        lock(&self.record.restores).push(last);
        self.record.restored(last);
        drop(inner);
        Ok(())
    }
}

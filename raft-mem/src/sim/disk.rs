//! A simulated disk per node: storage operations take virtual time, stall now and then, fail
//! on demand, and a crash decides which of the operations in flight landed.
//!
//! A [`SimDisk`] holds a node's durable contents (a [`MemLogStore`] and a [`MemSnapshotStore`]
//! that survive crashes) and hands each incarnation of the node its own [`SimLogStore`] and
//! [`SimSnapshotStore`] ([`SimDisk::attach`]). Every operation through them (log writes, purges
//! and resets, snapshot chunks and commits, reads) takes a latency drawn from the disk's
//! [`DiskFaults`], with rare long stalls, and may fail with an injected I/O error; while the disk
//! is full, every operation that needs space fails. An operation changes the durable contents
//! when it completes, atomically. When the node crashes ([`SimDisk::crash`]) the operations still
//! in flight resolve as a prefix that landed and a rest that did not (which prefix is drawn from
//! the disk's seed, or chosen by the test): what a power loss leaves of writes whose `fsync` had
//! not returned.
//!
//! The disk also keeps what the simulation's oracles need: the durable hard state and log at any
//! moment, since when each log entry that a truncation removed had been gone, and which of the
//! latest writes truncated or wrote which indexes, when and under which durable term.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use raft_core::{
    Bytes, DurableState, Entry, HardState, LogId, LogIndex, LogStore, SnapshotMeta, SnapshotStore,
    SnapshotWriter, StorageError, Term, WriteBatch,
};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use super::executor::SimRuntime;
use crate::{MemLogStore, MemSnapshotStore};

/// How many landed truncations, and how many landed writes of entries, a disk remembers for
/// the message-boundary oracle.
const MAX_LANDED: usize = 1024;

/// How a simulated disk behaves: latency, stalls, errors, interleaving.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiskFaults {
    /// Every operation that writes takes a uniform time in this range, in microseconds.
    pub latency_us: (u64, u64),
    /// Every read takes a uniform time in this range (reads are mostly served by the page
    /// cache and readahead), in microseconds.
    pub read_latency_us: (u64, u64),
    /// Probability that an operation stalls instead (a long flush, a busy device).
    pub stall_chance: f64,
    /// How long a stall lasts, uniform in this range, in milliseconds.
    pub stall_ms: (u64, u64),
    /// Probability that an operation fails with an I/O error (nothing of it lands).
    pub error_chance: f64,
    /// Probability that an operation lets every other ready task run before it starts.
    pub yield_chance: f64,
}

impl DiskFaults {
    /// Operations complete in the instant they are issued, never fail: a crash finds nothing in
    /// flight.
    pub const INSTANT: DiskFaults = DiskFaults {
        latency_us: (0, 0),
        read_latency_us: (0, 0),
        stall_chance: 0.0,
        stall_ms: (0, 0),
        error_chance: 0.0,
        yield_chance: 0.0,
    };

    /// A fast SSD: 20 to 300 µs per write (5 to 50 µs per read), one operation in a thousand
    /// stalled for 20 to 200 ms.
    pub const SSD: DiskFaults = DiskFaults {
        latency_us: (20, 300),
        read_latency_us: (5, 50),
        stall_chance: 0.001,
        stall_ms: (20, 200),
        error_chance: 0.0,
        yield_chance: 0.2,
    };

    /// A spinning disk: 2 to 15 ms per write (50 to 500 µs per read), one operation in a hundred
    /// stalled for up to a second.
    pub const SPINNING: DiskFaults = DiskFaults {
        latency_us: (2_000, 15_000),
        read_latency_us: (50, 500),
        stall_chance: 0.01,
        stall_ms: (50, 1_000),
        error_chance: 0.0,
        yield_chance: 0.2,
    };
}

impl Default for DiskFaults {
    fn default() -> Self {
        Self::INSTANT
    }
}

/// An event that makes the simulation crash the node at a precise point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashTrigger {
    /// `delay` after the next log write is issued (while it is likely still in flight).
    AfterWriteIssued {
        /// How long after the write was issued.
        delay: Duration,
    },
    /// Right after the next snapshot commit lands (before the log is purged or reset after it).
    AfterSnapshotCommit,
}

/// Which of the operations in flight land when the node crashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InFlight {
    /// A prefix of random length (drawn from the disk's seed).
    Random,
    /// All of them.
    Land,
    /// None of them.
    Lose,
}

/// What a crash did to the operations in flight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CrashOutcome {
    /// Operations that landed.
    pub landed: usize,
    /// Operations that were lost.
    pub lost: usize,
}

/// Counters of a disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiskStats {
    /// Operations issued.
    pub ops: u64,
    /// Operations that stalled.
    pub stalls: u64,
    /// Injected failures (I/O errors and full disk).
    pub errors: u64,
    /// Operations in flight at a crash that landed.
    pub crash_landed: u64,
    /// Operations in flight at a crash that were lost.
    pub crash_lost: u64,
}

/// A copy of a disk's durable contents, to restart a node with an older disk.
#[derive(Debug, Clone)]
pub struct DiskImage {
    log: MemLogStore,
    snapshots: MemSnapshotStore,
}

impl DiskImage {
    /// An empty disk.
    pub fn empty() -> Self {
        Self { log: MemLogStore::new(), snapshots: MemSnapshotStore::new() }
    }
}

/// An operation that changes the durable contents when it lands.
#[derive(Debug)]
enum Op {
    Write(WriteBatch),
    Purge(LogIndex),
    Reset(LogId),
    SnapshotCommit(SnapshotMeta, Bytes),
}

impl Op {
    /// Whether the operation needs free space (fails on a full disk).
    fn needs_space(&self) -> bool {
        matches!(self, Op::Write(_) | Op::SnapshotCommit(..))
    }
}

struct DiskState {
    runtime: SimRuntime,
    rng: ChaCha8Rng,
    faults: DiskFaults,
    full: bool,
    /// The incarnation whose handles may use the disk (0: none).
    owner: u64,
    next_owner: u64,
    in_flight: BTreeMap<u64, Op>,
    next_op: u64,
    /// Virtual time (µs) until which an operation in flight is stalled.
    stalled_until_us: u64,
    /// Bumped when a stall begins and when a stalled operation ends.
    stall_epoch: u64,
    /// The armed trigger, and how the crash it causes resolves the operations in flight.
    trigger: Option<(CrashTrigger, InFlight)>,
    /// When the simulation should crash the node, and how.
    crash_at: Option<(Duration, InFlight)>,
    /// Log entries a truncation or reset removed, with the step at which they went.
    removed: BTreeMap<LogId, u64>,
    /// The latest truncations that landed: (first index cut, step, durable term after it).
    truncations: VecDeque<(LogIndex, u64, Term)>,
    /// The latest writes of entries that landed: (indexes written, step, durable term after it).
    appends: VecDeque<(Range<LogIndex>, u64, Term)>,
    stats: DiskStats,
}

impl DiskState {
    fn below(&mut self, n: u64) -> u64 {
        if n <= 1 {
            0
        } else {
            self.rng.next_u64() % n
        }
    }

    fn chance(&mut self, probability: f64) -> bool {
        probability > 0.0 && (self.rng.next_u64() as f64 / u64::MAX as f64) < probability
    }

    fn uniform(&mut self, (low, high): (u64, u64)) -> u64 {
        low + self.below(high.saturating_sub(low) + 1)
    }

    /// The time an operation issued now takes (a read or a write), and whether it stalls.
    fn latency(&mut self, read: bool) -> (Duration, bool) {
        let stall_chance = self.faults.stall_chance;
        if self.chance(stall_chance) {
            self.stats.stalls += 1;
            self.stall_epoch += 1;
            let stall_ms = self.faults.stall_ms;
            let ms = self.uniform(stall_ms);
            let until = self.runtime.now().as_micros() as u64 + ms * 1_000;
            self.stalled_until_us = self.stalled_until_us.max(until);
            return (Duration::from_millis(ms), true);
        }
        let range = if read { self.faults.read_latency_us } else { self.faults.latency_us };
        (Duration::from_micros(self.uniform(range)), false)
    }
}

/// A node's simulated disk: durable contents that survive crashes, operations that take virtual
/// time, stall and fail on demand, and a crash that decides which operations in flight landed.
/// Cloning gives another handle to the same disk.
#[derive(Clone)]
pub struct SimDisk {
    log: MemLogStore,
    snapshots: MemSnapshotStore,
    state: Arc<Mutex<DiskState>>,
}

impl std::fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("SimDisk")
            .field("faults", &state.faults)
            .field("in_flight", &state.in_flight.len())
            .field("stats", &state.stats)
            .finish_non_exhaustive()
    }
}

fn io_error(reason: &str) -> StorageError {
    StorageError::Io(std::io::Error::other(format!("simulated disk: {reason}")))
}

impl SimDisk {
    /// An empty disk whose timing runs on `runtime` and whose random choices come from `seed`.
    pub fn new(runtime: SimRuntime, seed: u64) -> Self {
        let state = DiskState {
            runtime,
            rng: ChaCha8Rng::seed_from_u64(seed),
            faults: DiskFaults::INSTANT,
            full: false,
            owner: 0,
            next_owner: 1,
            in_flight: BTreeMap::new(),
            next_op: 0,
            stalled_until_us: 0,
            stall_epoch: 0,
            trigger: None,
            crash_at: None,
            removed: BTreeMap::new(),
            truncations: VecDeque::new(),
            appends: VecDeque::new(),
            stats: DiskStats::default(),
        };
        Self {
            log: MemLogStore::new(),
            snapshots: MemSnapshotStore::new(),
            state: Arc::new(Mutex::new(state)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, DiskState> {
        // Every update leaves the state consistent: a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The durable log (what survives a crash).
    pub fn log(&self) -> &MemLogStore {
        &self.log
    }

    /// The durable snapshots (what survives a crash).
    pub fn snapshots(&self) -> &MemSnapshotStore {
        &self.snapshots
    }

    /// The durable hard state.
    pub fn hard_state(&self) -> HardState {
        self.log.hard_state()
    }

    /// Sets how the disk behaves from now on.
    pub fn set_faults(&self, faults: DiskFaults) {
        self.lock().faults = faults;
    }

    /// How the disk behaves.
    pub fn faults(&self) -> DiskFaults {
        self.lock().faults
    }

    /// Fills the disk (every operation that needs space fails) or frees it.
    pub fn set_full(&self, full: bool) {
        self.lock().full = full;
    }

    /// Whether the disk is full.
    pub fn is_full(&self) -> bool {
        self.lock().full
    }

    /// The counters.
    pub fn stats(&self) -> DiskStats {
        self.lock().stats
    }

    /// Operations in flight.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight.len()
    }

    /// A number that changes whenever a stall begins or ends.
    pub fn stall_epoch(&self) -> u64 {
        self.lock().stall_epoch
    }

    /// Whether an operation in flight is stalled now.
    pub fn stalled(&self) -> bool {
        let state = self.lock();
        state.stalled_until_us > state.runtime.now().as_micros() as u64
    }

    /// The stores of a new incarnation of the node. Handles of earlier incarnations fail from
    /// now on (with [`StorageError::Closed`]).
    pub fn attach(&self) -> (SimLogStore, SimSnapshotStore) {
        let owner = {
            let mut state = self.lock();
            state.owner = state.next_owner;
            state.next_owner += 1;
            state.owner
        };
        (SimLogStore { disk: self.clone(), owner }, SimSnapshotStore { disk: self.clone(), owner })
    }

    /// The node crashed: resolves the operations in flight (a prefix lands, by `policy`) and
    /// detaches the current incarnation.
    pub fn crash(&self, policy: InFlight) -> CrashOutcome {
        let mut state = self.lock();
        state.owner = 0;
        state.trigger = None;
        state.crash_at = None;
        state.stall_epoch += 1;
        state.stalled_until_us = 0;
        let ops: Vec<Op> = std::mem::take(&mut state.in_flight).into_values().collect();
        let landing = match policy {
            InFlight::Land => ops.len(),
            InFlight::Lose => 0,
            InFlight::Random => state.below(ops.len() as u64 + 1) as usize,
        };
        let outcome = CrashOutcome { landed: landing, lost: ops.len() - landing };
        state.stats.crash_landed += outcome.landed as u64;
        state.stats.crash_lost += outcome.lost as u64;
        for op in ops.into_iter().take(landing) {
            // A landed prefix of valid operations is valid: no error can occur here that the
            // live run would not have seen.
            let _ = self.land(&mut state, op);
        }
        outcome
    }

    /// Crashes the node at the next `trigger` event, resolving its operations in flight by
    /// `policy` (the simulation carries it out: see [`SimDisk::take_crash_request`]).
    pub fn set_crash_trigger(&self, trigger: Option<(CrashTrigger, InFlight)>) {
        self.lock().trigger = trigger;
    }

    /// A triggered crash that is due, with how to resolve the operations in flight (taken:
    /// reported once).
    pub fn take_crash_request(&self) -> Option<InFlight> {
        let mut state = self.lock();
        let (_, policy) = state.crash_at.filter(|&(at, _)| at <= state.runtime.now())?;
        state.crash_at = None;
        Some(policy)
    }

    /// The virtual time at which a triggered crash will be due, if one is planned.
    pub fn crash_request(&self) -> Option<Duration> {
        self.lock().crash_at.map(|(at, _)| at)
    }

    /// A copy of the durable contents.
    pub fn image(&self) -> DiskImage {
        DiskImage { log: self.log.image(), snapshots: self.snapshots.image() }
    }

    /// Replaces the durable contents by `image` (a disk swapped for an older or an empty one;
    /// the node must be down).
    pub fn restore_image(&self, image: &DiskImage) {
        self.log.restore_image(&image.log);
        self.snapshots.restore_image(&image.snapshots);
    }

    /// Whether the durable state holds entry `id`: in the log, or covered by the compacted
    /// prefix or the latest snapshot.
    pub fn holds(&self, id: LogId) -> bool {
        let snapshot = self.snapshots.latest_meta().map_or(0, |m| m.last_included.index);
        id.index <= self.log.purged().index.max(snapshot)
            || self.log.term_at(id.index) == Some(id.term)
    }

    /// Whether entry `id` is held now (see [`SimDisk::holds`]) or was removed from the durable
    /// log at or after step `since` (it was durable at some moment since then).
    pub fn covers(&self, id: LogId, since: u64) -> bool {
        self.holds(id) || self.lock().removed.get(&id).is_some_and(|&at| at >= since)
    }

    /// The highest durable term under which a write that truncated the log at or below `index`
    /// landed at or after step `since` (among the latest 1,024).
    pub fn overwritten_since(&self, index: LogIndex, since: u64) -> Option<Term> {
        let state = self.lock();
        let found = state.truncations.iter().filter(|&&(cut, at, _)| cut <= index && at >= since);
        found.map(|&(_, _, term)| term).max()
    }

    /// If the durable log holds another entry than `id` at `id.index`, and a write that landed
    /// at or after step `since` wrote that index: the highest durable term under which such a
    /// write landed (among the latest 1,024). Group commit can merge a newer leader's
    /// overwrite with the write of the entries it replaces, so that no truncation of them ever
    /// lands: this is what such a merged write leaves.
    pub fn replaced_since(&self, id: LogId, since: u64) -> Option<Term> {
        let state = self.lock();
        if self.log.term_at(id.index).is_none_or(|term| term == id.term) {
            return None;
        }
        let found = state
            .appends
            .iter()
            .filter(|&(written, at, _)| written.contains(&id.index) && *at >= since);
        found.map(|&(_, _, term)| term).max()
    }

    /// Issues `op` for incarnation `owner` and waits for it to land.
    async fn run(&self, owner: u64, op: Op) -> Result<(), StorageError> {
        let (seq, (latency, stalls), failure, yield_chance, runtime) = {
            let mut state = self.lock();
            if state.owner != owner {
                return Err(StorageError::Closed);
            }
            state.stats.ops += 1;
            let latency = state.latency(false);
            let error_chance = state.faults.error_chance;
            let failure = if state.full && op.needs_space() {
                Some("no space left on device")
            } else if state.chance(error_chance) {
                Some("injected I/O error")
            } else {
                None
            };
            let seq = state.next_op;
            state.next_op += 1;
            if failure.is_some() {
                state.stats.errors += 1;
            } else {
                if let (Op::Write(_), Some((CrashTrigger::AfterWriteIssued { delay }, policy))) =
                    (&op, state.trigger)
                {
                    state.trigger = None;
                    state.crash_at = Some((state.runtime.now() + delay, policy));
                }
                state.in_flight.insert(seq, op);
            }
            (seq, latency, failure, state.faults.yield_chance, state.runtime.clone())
        };
        runtime.maybe_yield(yield_chance).await;
        runtime.sleep_virtual(latency).await;
        self.stall_ended(stalls);
        if let Some(reason) = failure {
            return Err(io_error(reason));
        }
        let mut state = self.lock();
        // Gone from the map: a crash resolved it meanwhile (this incarnation is dead anyway).
        let op = state.in_flight.remove(&seq).ok_or(StorageError::Closed)?;
        let commit = matches!(op, Op::SnapshotCommit(..));
        let result = self.land(&mut state, op);
        if let (true, Some((CrashTrigger::AfterSnapshotCommit, policy))) = (commit, state.trigger) {
            state.trigger = None;
            state.crash_at = Some((state.runtime.now(), policy));
        }
        result
    }

    /// A read: takes time and may fail, changes nothing.
    async fn read<T>(&self, owner: u64, read: impl FnOnce() -> T) -> Result<T, StorageError> {
        let ((latency, stalls), failed, yield_chance, runtime) = {
            let mut state = self.lock();
            if state.owner != owner {
                return Err(StorageError::Closed);
            }
            state.stats.ops += 1;
            let latency = state.latency(true);
            let error_chance = state.faults.error_chance;
            let failed = state.chance(error_chance);
            if failed {
                state.stats.errors += 1;
            }
            (latency, failed, state.faults.yield_chance, state.runtime.clone())
        };
        runtime.maybe_yield(yield_chance).await;
        runtime.sleep_virtual(latency).await;
        self.stall_ended(stalls);
        if failed {
            return Err(io_error("injected I/O error on a read"));
        }
        if self.lock().owner != owner {
            return Err(StorageError::Closed);
        }
        Ok(read())
    }

    fn stall_ended(&self, stalled: bool) {
        if stalled {
            self.lock().stall_epoch += 1;
        }
    }

    /// Makes `op` durable (the state's lock is held: landing is atomic).
    fn land(&self, state: &mut DiskState, op: Op) -> Result<(), StorageError> {
        let step = state.runtime.polls();
        match op {
            Op::Write(batch) => {
                let cut = batch.truncate_from;
                let removed = cut.map(|cut| self.log.ids_from(cut));
                let written = batch.entries.first().zip(batch.entries.last());
                let written = written.map(|(first, last)| first.index..last.index + 1);
                self.log.write_now(batch)?;
                for id in removed.into_iter().flatten() {
                    state.removed.insert(id, step);
                }
                let term = self.log.hard_state().current_term;
                if let Some(cut) = cut {
                    remember(&mut state.truncations, (cut, step, term));
                }
                if let Some(written) = written {
                    remember(&mut state.appends, (written, step, term));
                }
                Ok(())
            }
            Op::Purge(up_to) => self.log.purge_now(up_to),
            Op::Reset(last) => {
                let first = self.log.purged().index + 1;
                for id in self.log.ids_from(first).into_iter().filter(|id| id.index > last.index) {
                    state.removed.insert(id, step);
                }
                self.log.reset_now(last);
                Ok(())
            }
            Op::SnapshotCommit(meta, data) => self.snapshots.commit_now(meta, data),
        }
    }
}

/// Appends `item` to `latest`, forgetting the oldest beyond [`MAX_LANDED`].
fn remember<T>(latest: &mut VecDeque<T>, item: T) {
    if latest.len() == MAX_LANDED {
        latest.pop_front();
    }
    latest.push_back(item);
}

/// The [`LogStore`] of one incarnation of a node on a [`SimDisk`].
#[derive(Clone, Debug)]
pub struct SimLogStore {
    disk: SimDisk,
    owner: u64,
}

#[async_trait]
impl LogStore for SimLogStore {
    async fn open(&self) -> Result<DurableState, StorageError> {
        let log = self.disk.log.clone();
        let durable = self.disk.read(self.owner, || log.open()).await?;
        durable.await
    }

    async fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        self.disk.run(self.owner, Op::Write(batch)).await
    }

    async fn read(
        &self,
        range: Range<LogIndex>,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let log = self.disk.log.clone();
        let entries = self.disk.read(self.owner, || log.read(range, max_bytes)).await?;
        entries.await
    }

    async fn purge(&self, up_to: LogIndex) -> Result<(), StorageError> {
        self.disk.run(self.owner, Op::Purge(up_to)).await
    }

    async fn reset(&self, last_included: LogId) -> Result<(), StorageError> {
        self.disk.run(self.owner, Op::Reset(last_included)).await
    }
}

/// The [`SnapshotStore`] of one incarnation of a node on a [`SimDisk`].
#[derive(Clone, Debug)]
pub struct SimSnapshotStore {
    disk: SimDisk,
    owner: u64,
}

/// A snapshot being written: its data stays in memory (lost on a crash) until the commit lands.
struct SimSnapshotWriter {
    disk: SimDisk,
    owner: u64,
    data: Vec<u8>,
}

#[async_trait]
impl SnapshotWriter for SimSnapshotWriter {
    async fn write(&mut self, data: Bytes) -> Result<(), StorageError> {
        let full = self.disk.is_full();
        self.disk.read(self.owner, || ()).await?;
        if full {
            self.disk.lock().stats.errors += 1;
            return Err(io_error("no space left on device"));
        }
        self.data.extend_from_slice(&data);
        Ok(())
    }

    async fn commit(self: Box<Self>, meta: SnapshotMeta) -> Result<(), StorageError> {
        let data = Bytes::from(self.data);
        if meta.size != data.len() as u64 {
            return Err(StorageError::InvalidRequest(format!(
                "snapshot meta says {} bytes, {} were written",
                meta.size,
                data.len()
            )));
        }
        self.disk.run(self.owner, Op::SnapshotCommit(meta, data)).await
    }
}

#[async_trait]
impl SnapshotStore for SimSnapshotStore {
    async fn latest(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        let snapshots = self.disk.snapshots.clone();
        self.disk.read(self.owner, || snapshots.latest_meta()).await
    }

    async fn begin(&self) -> Result<Box<dyn SnapshotWriter>, StorageError> {
        self.disk.read(self.owner, || ()).await?;
        Ok(Box::new(SimSnapshotWriter {
            disk: self.disk.clone(),
            owner: self.owner,
            data: Vec::new(),
        }))
    }

    async fn read(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        max_bytes: u64,
    ) -> Result<Bytes, StorageError> {
        let snapshots = self.disk.snapshots.clone();
        self.disk.read(self.owner, || snapshots.read_now(meta, offset, max_bytes)).await?
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use raft_core::EntryPayload;
    use std::collections::BTreeSet;

    fn entry(index: LogIndex, term: u64) -> Entry {
        Entry { index, term, payload: EntryPayload::Blank }
    }

    fn batch(entries: Vec<Entry>) -> WriteBatch {
        WriteBatch {
            hard_state: Some(HardState { current_term: 1, voted_for: Some(1) }),
            truncate_from: None,
            entries,
            seq: 0,
        }
    }

    #[test]
    fn writes_take_time_and_land_when_they_complete() {
        let rt = SimRuntime::new();
        let disk = SimDisk::new(rt.clone(), 1);
        disk.set_faults(DiskFaults { latency_us: (1_000, 1_000), ..DiskFaults::INSTANT });
        let (store, _) = disk.attach();
        rt.spawn_task(async move {
            store.write(batch(vec![entry(1, 1)])).await.unwrap();
        });
        rt.run_for(Duration::from_micros(500), || {});
        assert_eq!(disk.in_flight(), 1);
        assert!(disk.log().entries().is_empty(), "not durable before it completes");
        rt.run_for(Duration::from_micros(600), || {});
        assert_eq!(disk.log().entries(), vec![entry(1, 1)]);
        assert_eq!(disk.in_flight(), 0);
    }

    #[test]
    fn a_crash_lands_a_prefix_of_the_operations_in_flight() {
        let mut seen = BTreeSet::new();
        for seed in 0..40 {
            let rt = SimRuntime::new();
            let disk = SimDisk::new(rt.clone(), seed);
            disk.set_faults(DiskFaults { latency_us: (1_000, 1_000), ..DiskFaults::INSTANT });
            let (store, _) = disk.attach();
            for index in 1..=3 {
                let store = store.clone();
                rt.spawn_task(async move {
                    let _ = store.write(batch(vec![entry(index, 1)])).await;
                });
            }
            rt.run_for(Duration::from_micros(10), || {});
            let outcome = disk.crash(InFlight::Random);
            assert_eq!(outcome.landed + outcome.lost, 3);
            let held: Vec<LogIndex> = disk.log().entries().iter().map(|e| e.index).collect();
            assert_eq!(held, (1..=outcome.landed as u64).collect::<Vec<_>>(), "a prefix");
            seen.insert(outcome.landed);
            // The dead incarnation's writes never land afterwards.
            rt.run_for(Duration::from_millis(5), || {});
            assert_eq!(disk.log().entries().len(), outcome.landed);
            let (fresh, _) = disk.attach();
            assert!(futures::executor::block_on(store.open()).is_err(), "old handle is dead");
            drop(fresh);
        }
        assert_eq!(seen, (0..=3).collect(), "every prefix length is explored");
    }

    #[test]
    fn a_full_disk_refuses_writes_and_errors_land_nothing() {
        let rt = SimRuntime::new();
        let disk = SimDisk::new(rt.clone(), 3);
        let (store, _) = disk.attach();
        disk.set_full(true);
        let result = rt.block_on(
            Duration::from_secs(1),
            {
                let store = store.clone();
                async move { store.write(batch(vec![entry(1, 1)])).await }
            },
            || {},
        );
        assert!(matches!(result, Some(Err(StorageError::Io(_)))));
        assert!(disk.log().entries().is_empty());
        disk.set_full(false);
        disk.set_faults(DiskFaults { error_chance: 1.0, ..DiskFaults::INSTANT });
        let result =
            rt.block_on(Duration::from_secs(1), async move { store.purge(0).await }, || {});
        assert!(matches!(result, Some(Err(StorageError::Io(_)))));
        assert_eq!(disk.stats().errors, 2);
    }

    #[test]
    fn removed_entries_stay_covered_since_before_their_removal() {
        let rt = SimRuntime::new();
        let disk = SimDisk::new(rt.clone(), 4);
        let (store, _) = disk.attach();
        let write = |b: WriteBatch| {
            let store = store.clone();
            rt.block_on(Duration::from_secs(1), async move { store.write(b).await }, || {})
        };
        write(batch(vec![entry(1, 1), entry(2, 1)])).unwrap().unwrap();
        let before = rt.polls();
        let mut overwrite = batch(vec![entry(2, 2)]);
        overwrite.truncate_from = Some(2);
        write(overwrite).unwrap().unwrap();
        assert!(disk.holds(LogId::new(2, 2)) && !disk.holds(LogId::new(1, 2)));
        assert!(disk.covers(LogId::new(1, 2), before), "removed after `before`");
        assert!(!disk.covers(LogId::new(1, 2), rt.polls() + 1));
        assert!(!disk.covers(LogId::new(3, 2), 0), "never held");
    }

    #[test]
    fn a_write_that_put_another_entry_at_an_index_replaced_it_since_it_landed() {
        let rt = SimRuntime::new();
        let disk = SimDisk::new(rt.clone(), 5);
        let (store, _) = disk.attach();
        let write = |b: WriteBatch| {
            let store = store.clone();
            rt.block_on(Duration::from_secs(1), async move { store.write(b).await }, || {})
        };
        write(batch(vec![entry(1, 1)])).unwrap().unwrap();
        let before = rt.polls() + 1;
        // A newer term's entry at 2, as group commit leaves it when it merged the write of an
        // older term's entries 2..=3 with the overwrite: no truncation lands.
        let mut merged = batch(vec![entry(2, 6)]);
        merged.hard_state = Some(HardState { current_term: 6, voted_for: None });
        write(merged).unwrap().unwrap();
        let after = rt.polls() + 1;
        assert_eq!(disk.overwritten_since(2, before), None);
        assert_eq!(disk.replaced_since(LogId::new(3, 2), before), Some(6));
        assert_eq!(disk.replaced_since(LogId::new(3, 2), after), None, "landed before `after`");
        assert_eq!(disk.replaced_since(LogId::new(6, 2), before), None, "the entry it holds");
        assert_eq!(disk.replaced_since(LogId::new(3, 3), before), None, "holds nothing at 3");
        assert_eq!(disk.replaced_since(LogId::new(2, 1), before), None, "not written since");
    }
}

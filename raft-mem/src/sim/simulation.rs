//! A whole cluster of real nodes in virtual time, checked after every step.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use raft_core::{
    Bytes, Config, Entry, InvalidChange, LogId, LogIndex, Membership, MembershipChange,
    MembershipError, Node, NodeId, ProposeError, Role, SnapshotMeta, SnapshotStream, StateMachine,
    StateMachineError, Status,
};

use super::checker::{InvariantChecker, Violation};
use super::executor::SimRuntime;
use crate::{LinkFaults, MemLogStore, MemNetwork, MemSnapshotStore};

/// Adjusts the [`Config`] of every simulated node (for example, shorter timeouts).
pub type ConfigHook = Arc<dyn Fn(&mut Config) + Send + Sync>;

/// How to build a [`Simulation`].
#[derive(Debug, Clone)]
pub struct SimulationConfig {
    /// Number of voters, with ids `1..=nodes`.
    pub nodes: u64,
    /// The seed every random choice derives from (election timeouts, faults, schedules).
    pub seed: u64,
    /// Faults on every link at the start.
    pub faults: LinkFaults,
}

impl SimulationConfig {
    /// `nodes` voters, the given seed, a reliable network with small delays.
    pub fn new(nodes: u64, seed: u64) -> Self {
        Self { nodes, seed, faults: LinkFaults::RELIABLE }
    }

    /// The seed from `RAFT_SIM_SEED` if set (to replay a failure), else `default`.
    pub fn seed_from_env(default: u64) -> u64 {
        std::env::var("RAFT_SIM_SEED").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(default)
    }
}

/// A failed simulation: the violated invariant (or stuck scenario), when, and how to replay it.
#[derive(Debug, Clone)]
pub struct SimFailure {
    /// The seed of the run.
    pub seed: u64,
    /// Virtual time of the failure.
    pub at: Duration,
    /// What went wrong.
    pub violation: Violation,
}

impl std::fmt::Display for SimFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} at {:?}: {} (replay with RAFT_SIM_SEED={})",
            self.seed, self.at, self.violation, self.seed
        )
    }
}

impl std::error::Error for SimFailure {}

/// What a simulated state machine did since the checker last looked.
enum Event {
    Applied(Vec<Entry>),
    /// Restored from a snapshot ending at this entry and holding these entries.
    Restored(LogId, Vec<Entry>),
}

/// The state machine of simulated nodes: its state is the list of every entry it applied (so a
/// snapshot holds the whole history, which the checker verifies), and it answers each command
/// with its own bytes.
#[derive(Clone, Default)]
struct Recorder {
    /// Done since the checker last looked.
    fresh: Arc<Mutex<Vec<Event>>>,
    /// Every entry the state reflects (applied, or restored from a snapshot).
    history: Arc<Mutex<Vec<Entry>>>,
    /// The snapshots this incarnation restored, in order.
    restores: Arc<Mutex<Vec<LogId>>>,
}

/// Snapshot data is sent in pieces of this size by the recorder.
const RECORDER_PIECE_BYTES: usize = 512;

#[async_trait]
impl StateMachine for Recorder {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        lock(&self.fresh).push(Event::Applied(entries.to_vec()));
        lock(&self.history).extend_from_slice(entries);
        Ok(entries.iter().map(|e| e.command().cloned().unwrap_or_default()).collect())
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

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

struct Running {
    node: Node,
    incarnation: u64,
    recorder: Recorder,
}

/// A cluster of real [`Node`]s on a [`SimRuntime`] and a fault-injecting [`MemNetwork`], with
/// durable [`MemLogStore`]s that survive crashes. After every executor step it feeds the
/// [`InvariantChecker`]; the first violation stops the run and is returned as a [`SimFailure`]
/// naming the seed.
pub struct Simulation {
    /// The executor (virtual time).
    pub runtime: SimRuntime,
    /// The network (faults, partitions, counters).
    pub network: MemNetwork,
    seed: u64,
    /// The initial voters (their bootstrap configuration).
    founders: Vec<NodeId>,
    /// Every node that is part of the scenario: founders and added nodes, minus retired ones.
    ids: Vec<NodeId>,
    stores: BTreeMap<NodeId, MemLogStore>,
    snapshot_stores: BTreeMap<NodeId, MemSnapshotStore>,
    running: BTreeMap<NodeId, Running>,
    incarnations: BTreeMap<NodeId, u64>,
    checker: InvariantChecker,
    failure: Option<SimFailure>,
    config_hook: Option<ConfigHook>,
    /// The running nodes and their state machines, shared with client tasks.
    directory: Arc<Mutex<BTreeMap<NodeId, (Node, Recorder)>>>,
    /// Linearizability bookkeeping shared by writers and readers.
    reads: Arc<ReadCheck>,
    /// How long a client of [`Simulation::spawn_client`] waits for a write before trying
    /// another node.
    client_timeout: Duration,
    /// (virtual instant, steps run at it): too many steps at one instant is a livelock.
    livelock: (Duration, u64),
}

/// More executor steps than this at one virtual instant is reported as a livelock (every real
/// activity of a node takes virtual time: ticks, network delays, client think time).
const MAX_STEPS_PER_INSTANT: u64 = 200_000;

/// What readers check: every read index covers every write acknowledged before the read began.
#[derive(Debug, Default)]
struct ReadCheck {
    /// The highest log index of any acknowledged write so far.
    max_acknowledged: AtomicU64,
    /// Reads that observed a state missing a write acknowledged before they began.
    violations: Mutex<Vec<String>>,
}

/// What one simulated reader saw.
#[derive(Debug, Clone, Default)]
pub struct ReaderLog {
    /// Reads that returned a read index (all checked).
    pub completed: Arc<AtomicU64>,
    /// Reads that failed (no leader, leadership lost, unreachable, timed out).
    pub failed: Arc<AtomicU64>,
    /// Set to stop the reader after its current read.
    pub stop: Arc<std::sync::atomic::AtomicBool>,
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

/// What one simulated client saw: every write it was told committed, in order.
#[derive(Debug, Clone, Default)]
pub struct ClientLog {
    /// `(command, index)` of every acknowledged write.
    pub acknowledged: Arc<Mutex<Vec<(Bytes, LogIndex)>>>,
    /// Set to stop the client after its current write.
    pub stop: Arc<std::sync::atomic::AtomicBool>,
}

impl ClientLog {
    /// The acknowledged writes so far.
    pub fn acknowledged(&self) -> Vec<(Bytes, LogIndex)> {
        lock(&self.acknowledged).clone()
    }

    /// Asks the client to stop.
    pub fn stop(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl std::fmt::Debug for Simulation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulation")
            .field("seed", &self.seed)
            .field("now", &self.runtime.now())
            .finish_non_exhaustive()
    }
}

impl Drop for Simulation {
    fn drop(&mut self) {
        // Tasks hold handles to the executor and the executor holds the tasks: break the cycle
        // so that a finished simulation frees its cluster (a swarm runs thousands in a row).
        self.runtime.clear();
    }
}

/// Mixes the simulation seed with a salt (SplitMix64 finalizer).
fn mix(seed: u64, salt: u64) -> u64 {
    let mut z = seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Simulation {
    /// Builds and starts the cluster.
    pub fn new(config: SimulationConfig) -> Result<Self, SimFailure> {
        Self::with_config_hook(config, None)
    }

    /// Builds and starts the cluster, letting `hook` adjust every node's [`Config`].
    pub fn with_config_hook(
        config: SimulationConfig,
        hook: Option<ConfigHook>,
    ) -> Result<Self, SimFailure> {
        let runtime = SimRuntime::new();
        let network = MemNetwork::with_runtime(runtime.clone(), mix(config.seed, 0));
        network.set_default_faults(config.faults);
        let ids: Vec<NodeId> = (1..=config.nodes).collect();
        let mut sim = Self {
            stores: ids.iter().map(|&id| (id, MemLogStore::new())).collect(),
            snapshot_stores: ids.iter().map(|&id| (id, MemSnapshotStore::new())).collect(),
            runtime,
            network,
            seed: config.seed,
            founders: ids.clone(),
            ids,
            running: BTreeMap::new(),
            incarnations: BTreeMap::new(),
            checker: InvariantChecker::new(),
            failure: None,
            config_hook: hook,
            directory: Arc::default(),
            reads: Arc::default(),
            client_timeout: Duration::from_secs(3),
            livelock: (Duration::ZERO, 0),
        };
        for id in sim.ids.clone() {
            sim.start(id)?;
        }
        Ok(sim)
    }

    /// The seed of this run.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The nodes of the scenario: the founding voters and added nodes, minus retired ones.
    pub fn ids(&self) -> &[NodeId] {
        &self.ids
    }

    /// Adds node `id` to the scenario and starts it empty, as a node joining the cluster
    /// (without bootstrap): it does nothing until a leader adds it with a membership change.
    pub fn add_node(&mut self, id: NodeId) -> Result<(), SimFailure> {
        if !self.ids.contains(&id) {
            self.ids.push(id);
            self.stores.entry(id).or_default();
            self.snapshot_stores.entry(id).or_default();
        }
        self.start(id)
    }

    /// Crashes node `id` for good (after it was removed from the membership) and drops it from
    /// [`Simulation::ids`].
    pub fn retire(&mut self, id: NodeId) {
        self.crash(id);
        self.ids.retain(|&n| n != id);
    }

    /// Applies `change` through whichever node leads, retrying through leader changes, lost
    /// leadership and changes still in progress, for at most `max`. A retry that finds the change
    /// already made (an earlier attempt committed after all) counts as success.
    pub fn change_membership(
        &mut self,
        change: MembershipChange,
        max: Duration,
    ) -> Result<(), SimFailure> {
        let deadline = self.now() + max;
        while self.now() < deadline {
            if let Some(node) = self.leader().and_then(|leader| self.node(leader).cloned()) {
                let runtime = self.runtime.clone();
                let this_change = change.clone();
                let attempt = async move {
                    futures::select! {
                        result = node.change_membership(this_change).fuse() => Some(result),
                        _ = runtime.sleep_for(Duration::from_secs(3)).fuse() => None,
                    }
                };
                let outcome =
                    self.block_on("a membership change", Duration::from_secs(4), attempt)?;
                match outcome {
                    Some(Ok(_)) => return Ok(()),
                    Some(Err(MembershipError::Invalid(invalid))) => {
                        let done = matches!(
                            (&change, &invalid),
                            (MembershipChange::AddLearner(..), InvalidChange::AlreadyMember(_))
                                | (MembershipChange::RemoveNode(_), InvalidChange::NotMember(_))
                        ) || matches!(change, MembershipChange::PromoteLearner(id)
                            if self.leader().and_then(|l| self.node(l))
                                .is_some_and(|n| n.membership().is_voter(id)));
                        if done {
                            return Ok(());
                        }
                        return Err(self.fail(stuck(format!("{change:?} refused: {invalid}"))));
                    }
                    _ => {}
                }
            }
            self.run_for(Duration::from_millis(50))?;
        }
        Err(self.fail(stuck(format!("{change:?} did not complete within {max:?}"))))
    }

    /// The node `id`, if it is running.
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.running.get(&id).map(|r| &r.node)
    }

    /// The durable store of node `id`.
    pub fn store(&self, id: NodeId) -> Option<&MemLogStore> {
        self.stores.get(&id)
    }

    /// The durable snapshot store of node `id`.
    pub fn snapshot_store(&self, id: NodeId) -> Option<&MemSnapshotStore> {
        self.snapshot_stores.get(&id)
    }

    /// The invariant checker (its record of committed entries, for instance).
    pub fn checker(&self) -> &InvariantChecker {
        &self.checker
    }

    /// Virtual time since the start.
    pub fn now(&self) -> Duration {
        self.runtime.now()
    }

    /// Every entry node `id`'s current incarnation's state reflects: restored from a snapshot or
    /// applied.
    pub fn applied(&self, id: NodeId) -> Vec<Entry> {
        self.running.get(&id).map(|r| lock(&r.recorder.history).clone()).unwrap_or_default()
    }

    /// The snapshots node `id`'s current incarnation restored (at start or installed from the
    /// leader), in order.
    pub fn restores(&self, id: NodeId) -> Vec<LogId> {
        self.running.get(&id).map(|r| lock(&r.recorder.restores).clone()).unwrap_or_default()
    }

    fn fail(&self, violation: Violation) -> SimFailure {
        SimFailure { seed: self.seed, at: self.runtime.now(), violation }
    }

    /// Starts node `id` from its durable store (a boot or a restart after a crash).
    pub fn start(&mut self, id: NodeId) -> Result<(), SimFailure> {
        if self.running.contains_key(&id) {
            return Ok(());
        }
        let incarnation = {
            let counter = self.incarnations.entry(id).or_insert(0);
            *counter += 1;
            *counter
        };
        let mut config = Config::new(id);
        config.random_seed = mix(self.seed, id * 1_000 + incarnation);
        if let Some(hook) = &self.config_hook {
            hook(&mut config);
        }
        let recorder = Recorder::default();
        let store = self.stores.get(&id).cloned().unwrap_or_default();
        let snapshots = self.snapshot_stores.get(&id).cloned().unwrap_or_default();
        let start = Node::builder(
            config,
            store,
            self.network.endpoint(id),
            recorder.clone(),
            self.runtime.tagged(id),
        )
        .snapshot_store(snapshots);
        // A founder bootstraps the cluster at its first start; restarts find the membership
        // in its stores.
        let start = if incarnation == 1 && self.founders.contains(&id) {
            start.bootstrap(Membership::with_voters(self.founders.iter().copied()))
        } else {
            start
        }
        .start();
        let started = self.runtime.block_on(Duration::from_secs(1), start, || {});
        let node = match started {
            Some(Ok(node)) => node,
            Some(Err(error)) => {
                return Err(self.fail(stuck(format!("node {id} failed to start: {error}"))))
            }
            None => return Err(self.fail(stuck(format!("node {id} did not start")))),
        };
        self.network.register(id, Arc::new(node.clone()));
        lock(&self.directory).insert(id, (node.clone(), recorder.clone()));
        self.running.insert(id, Running { node, incarnation, recorder });
        Ok(())
    }

    /// Sets how long clients started afterwards wait for a write before trying another node
    /// (3 s by default). Short timeouts make clients find a new leader while an old one is
    /// still cut off, which is when stale reads would show.
    pub fn set_client_timeout(&mut self, timeout: Duration) {
        self.client_timeout = timeout;
    }

    /// Starts a client task that writes `"{name}-{k}"` for k = 0, 1, ... through whichever node
    /// accepts it (following leader hints, retrying after failures) until stopped. Every write it
    /// is told committed is recorded with its index.
    pub fn spawn_client(&self, name: &str) -> ClientLog {
        let log = ClientLog::default();
        let (directory, runtime, record, name) =
            (self.directory.clone(), self.runtime.clone(), log.clone(), name.to_owned());
        let (reads, client_timeout) = (self.reads.clone(), self.client_timeout);
        self.runtime.spawn_task(async move {
            let mut target = next_node(&directory, 0);
            let mut k = 0u64;
            while !record.stop.load(std::sync::atomic::Ordering::SeqCst) {
                let command = Bytes::from(format!("{name}-{k}"));
                let node = lock(&directory).get(&target).map(|(node, _)| node.clone());
                let mut hint = None;
                if let Some(node) = node {
                    match node.propose(command.clone()).await {
                        Ok(proposal) => {
                            let index = proposal.index;
                            let outcome = futures::select! {
                                response = proposal.response().fuse() => response.ok(),
                                _ = runtime.sleep_for(client_timeout).fuse() => None,
                            };
                            if outcome.is_some() {
                                lock(&record.acknowledged).push((command, index));
                                reads.max_acknowledged.fetch_max(index, Ordering::SeqCst);
                                k += 1;
                                // Think time: a client never issues work in zero virtual time.
                                runtime.sleep_for(Duration::from_millis(1 + k % 7)).await;
                                continue;
                            }
                        }
                        Err(ProposeError::NotLeader { leader_hint, .. }) => hint = leader_hint,
                        Err(_) => {}
                    }
                }
                target = hint.unwrap_or_else(|| next_node(&directory, target));
                runtime.sleep_for(Duration::from_millis(20)).await;
            }
        });
        log
    }

    /// Starts a reader task that asks running nodes in turn (followers included) for a
    /// linearizable read with [`Node::read_index`] and checks each answer: the read index must
    /// cover every write acknowledged (by any client of [`Simulation::spawn_client`]) before the
    /// read began, and the node's state must hold that index when the call returns. A stale
    /// read fails the run as a violation of "Linearizable reads".
    pub fn spawn_reader(&self) -> ReaderLog {
        let log = ReaderLog::default();
        let (directory, runtime, record, reads) =
            (self.directory.clone(), self.runtime.clone(), log.clone(), self.reads.clone());
        self.runtime.spawn_task(async move {
            let mut target = 0;
            while !record.stop.load(Ordering::SeqCst) {
                target = next_node(&directory, target);
                let Some((node, recorder)) = lock(&directory).get(&target).cloned() else {
                    runtime.sleep_for(Duration::from_millis(20)).await;
                    continue;
                };
                let floor = reads.max_acknowledged.load(Ordering::SeqCst);
                let outcome = futures::select! {
                    result = node.read_index().fuse() => result.ok(),
                    _ = runtime.sleep_for(Duration::from_secs(3)).fuse() => None,
                };
                let Some(index) = outcome else {
                    record.failed.fetch_add(1, Ordering::SeqCst);
                    runtime.sleep_for(Duration::from_millis(20)).await;
                    continue;
                };
                let state_end = lock(&recorder.history).last().map_or(0, |e| e.index);
                if index < floor || state_end < index {
                    lock(&reads.violations).push(format!(
                        "node {target} returned read index {index} with its state at {state_end}; \
                         a write at index {floor} was acknowledged before the read began"
                    ));
                }
                record.completed.fetch_add(1, Ordering::SeqCst);
                runtime.sleep_for(Duration::from_millis(3)).await;
            }
        });
        log
    }

    /// Crashes node `id`: its tasks vanish mid-flight; only what its store made durable remains.
    pub fn crash(&mut self, id: NodeId) {
        lock(&self.directory).remove(&id);
        self.network.unregister(id);
        self.runtime.kill(id);
        self.running.remove(&id);
    }

    /// Crashes and restarts node `id`.
    pub fn restart(&mut self, id: NodeId) -> Result<(), SimFailure> {
        self.crash(id);
        self.start(id)
    }

    /// Whether node `id` is running.
    pub fn is_running(&self, id: NodeId) -> bool {
        self.running.contains_key(&id)
    }

    /// Feeds everything observable since the last step to the checker.
    fn check_step(&mut self) {
        if self.failure.is_some() {
            return;
        }
        let now = self.runtime.now();
        if now == self.livelock.0 {
            self.livelock.1 += 1;
            if self.livelock.1 > MAX_STEPS_PER_INSTANT {
                self.failure = Some(self.fail(stuck(format!(
                    "livelock: {MAX_STEPS_PER_INSTANT} steps without virtual time advancing"
                ))));
                return;
            }
        } else {
            self.livelock = (now, 0);
        }
        if let Err(violation) = self.observe() {
            self.failure = Some(self.fail(violation));
        }
        if let Some(stale) = lock(&self.reads.violations).first() {
            let violation = Violation { invariant: "Linearizable reads", detail: stale.clone() };
            self.failure = Some(self.fail(violation));
        }
    }

    fn observe(&mut self) -> Result<(), Violation> {
        for (&id, running) in &self.running {
            let status = running.node.status();
            self.checker.observe_status((id, running.incarnation), &status)?;
            let incarnation = (id, running.incarnation);
            for event in std::mem::take(&mut *lock(&running.recorder.fresh)) {
                match event {
                    Event::Applied(entries) => {
                        self.checker.observe_applied(incarnation, &entries)?;
                    }
                    Event::Restored(last, entries) => {
                        self.checker.observe_snapshot(incarnation, last, &entries)?;
                    }
                }
            }
        }
        for (&id, store) in &self.snapshot_stores {
            if let Some(meta) = store.latest_meta() {
                self.checker.observe_durable_snapshot(id, meta.last_included)?;
            }
        }
        for (&id, store) in &self.stores {
            self.checker.observe_purged(id, store.purged())?;
            if let Some(change) = store.take_change() {
                self.checker.observe_log(id, &change, || store.entries())?;
            }
        }
        Ok(())
    }

    fn outcome(&mut self) -> Result<(), SimFailure> {
        match self.failure.take() {
            Some(failure) => Err(failure),
            None => Ok(()),
        }
    }

    /// Runs the cluster for `duration` of virtual time, checking the invariants after every step.
    pub fn run_for(&mut self, duration: Duration) -> Result<(), SimFailure> {
        let runtime = self.runtime.clone();
        runtime.run_for(duration, || self.check_step());
        self.outcome()
    }

    /// Runs until `done` holds (checked after every step) or `max` passes; a timeout is a
    /// failure named after `what`.
    pub fn run_until(
        &mut self,
        what: &str,
        max: Duration,
        mut done: impl FnMut(&Simulation) -> bool,
    ) -> Result<(), SimFailure> {
        let runtime = self.runtime.clone();
        let this = std::cell::RefCell::new(self);
        let reached = runtime.run_until(
            max,
            || this.borrow_mut().check_step(),
            || {
                let sim = this.borrow();
                sim.failure.is_some() || done(&sim)
            },
        );
        let sim = this.into_inner();
        sim.outcome()?;
        if reached {
            Ok(())
        } else {
            Err(sim.fail(stuck(format!("{what} did not happen within {max:?}"))))
        }
    }

    /// Runs `future` on the executor (with the cluster), for at most `max`.
    pub fn block_on<T: Send + 'static>(
        &mut self,
        what: &str,
        max: Duration,
        future: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, SimFailure> {
        let runtime = self.runtime.clone();
        let value = runtime.block_on(max, future, || self.check_step());
        self.outcome()?;
        value.ok_or_else(|| self.fail(stuck(format!("{what} did not finish within {max:?}"))))
    }

    /// Statuses of the running nodes that `from`'s side of the network can reach (all running
    /// nodes when `from` is `None`).
    pub fn statuses(&self) -> Vec<Status> {
        self.running.values().map(|r| r.node.status()).collect()
    }

    /// The leader with the highest term among running nodes, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.statuses()
            .into_iter()
            .filter(|s| s.role == Role::Leader)
            .max_by_key(|s| s.current_term)
            .map(|s| s.id)
    }

    /// The leaders among the running nodes that can reach a majority of the voters of their
    /// membership.
    pub fn leaders_with_quorum(&self) -> Vec<NodeId> {
        self.running
            .values()
            .filter(|r| r.node.status().role == Role::Leader)
            .filter(|r| {
                let id = r.node.id();
                r.node.membership().has_quorum(|p| {
                    self.is_running(p) && (p == id || self.network.connected(id, p))
                })
            })
            .map(|r| r.node.id())
            .collect()
    }

    /// The voters and learners according to the current leader (`None` without a leader).
    pub fn members(&self) -> Option<BTreeSet<NodeId>> {
        self.leader().and_then(|l| self.node(l)).map(|n| n.membership().members())
    }

    /// Runs until some node is leader with a quorum reachable and every running member it can
    /// reach follows it in its term; returns it.
    pub fn wait_for_leader(&mut self, max: Duration) -> Result<NodeId, SimFailure> {
        self.run_until("a stable leader", max, |sim| sim.stable_leader().is_some())?;
        self.stable_leader().ok_or_else(|| self.fail(stuck("leader vanished".into())))
    }

    fn stable_leader(&self) -> Option<NodeId> {
        let [leader] = self.leaders_with_quorum()[..] else { return None };
        let node = &self.running.get(&leader)?.node;
        let (term, members) = (node.status().current_term, node.membership().members());
        self.running
            .iter()
            .filter(|(&id, _)| {
                id != leader && members.contains(&id) && self.network.connected(leader, id)
            })
            .all(|(_, r)| {
                let s = r.node.status();
                s.current_term == term && s.leader_id == Some(leader)
            })
            .then_some(leader)
    }

    /// Proposes `command` on node `id`; returns the proposal's index once applied there, or
    /// `None` if it was refused or lost (not leader, leadership lost, overwritten) or did not
    /// finish within `max`.
    pub fn propose_on(
        &mut self,
        id: NodeId,
        command: Bytes,
        max: Duration,
    ) -> Result<Option<LogIndex>, SimFailure> {
        let Some(node) = self.node(id).cloned() else { return Ok(None) };
        let runtime = self.runtime.clone();
        let attempt = async move {
            let proposal = match node.propose(command).await {
                Ok(p) => p,
                Err(ProposeError::NotLeader { .. } | ProposeError::Shutdown) => return None,
                Err(_) => return None,
            };
            let index = proposal.index;
            futures::select! {
                response = proposal.response().fuse() => response.ok().map(|_| index),
                _ = runtime.sleep_for(max).fuse() => None,
            }
        };
        let value = self.block_on("a proposal", max + Duration::from_secs(1), attempt)?;
        Ok(value)
    }

    /// Writes `command` through whichever node leads, retrying (for at most `max`) until it is
    /// applied on the leader. Returns its index.
    pub fn write(&mut self, command: Bytes, max: Duration) -> Result<LogIndex, SimFailure> {
        let deadline = self.now() + max;
        while self.now() < deadline {
            if let Some(leader) = self.leader() {
                if let Some(index) =
                    self.propose_on(leader, command.clone(), Duration::from_secs(2))?
                {
                    return Ok(index);
                }
            }
            self.run_for(Duration::from_millis(50))?;
        }
        Err(self.fail(stuck(format!("write did not commit within {max:?}"))))
    }

    /// Runs until every running node has applied at least up to `index`.
    pub fn wait_applied(&mut self, index: LogIndex, max: Duration) -> Result<(), SimFailure> {
        self.run_until("applies", max, |sim| {
            sim.statuses().iter().all(|s| s.applied_index >= index)
        })
    }
}

/// The running node after `current` in id order (wrapping), or `current` if none runs.
fn next_node(directory: &Mutex<BTreeMap<NodeId, (Node, Recorder)>>, current: NodeId) -> NodeId {
    let directory = lock(directory);
    directory
        .range(current + 1..)
        .next()
        .or_else(|| directory.iter().next())
        .map_or(current, |(&id, _)| id)
}

fn stuck(detail: String) -> Violation {
    Violation { invariant: "liveness (scenario expectation)", detail }
}

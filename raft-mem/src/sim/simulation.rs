//! A whole cluster of real nodes in virtual time, checked after every step: its construction,
//! the life of its nodes (start, crash, restart, pause, shutdown) and the faults a test sets.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use raft_core::{
    Config, Entry, LogId, LogIndex, Membership, Node, NodeId, StateMachine, Term, DEFAULT_GROUP_ID,
};

use super::checker::{InvariantChecker, Violation};
use super::clients::{Directory, Shared};
use super::disk::{CrashOutcome, DiskFaults, DiskImage, InFlight, SimDisk};
use super::executor::{NodeClock, SimRuntime};
use super::liveness::{LivenessBounds, LivenessState};
use super::recorder::{
    lock, DigestFn, Observed, Record, Registry, StateMachineFaults, StateMachineHandle,
};
use super::wire_oracle::WireOracle;
use crate::harness::RecordingStateMachine;
use crate::{LinkFaults, MemLogStore, MemNetwork, MemSnapshotStore};

/// Adjusts the [`Config`] of every simulated node (for example, shorter timeouts). It sees the
/// node's id (`config.id`), so nodes can be given different settings.
pub type ConfigHook = Arc<dyn Fn(&mut Config) + Send + Sync>;

/// Called with the simulation and the node each time a node is seen winning an election (see
/// [`Simulation::on_election`]).
pub type ElectionHook<S = RecordingStateMachine> =
    Box<dyn FnMut(&mut Simulation<S>, NodeId) + Send>;

/// Called with the simulation, a node and a duration each time the fault schedule makes clients
/// keep asking that node, which it believes leads, for reads while it is isolated or paused
/// (see [`Simulation::on_pinned_reads`]).
pub type PinnedReadsHook<S = RecordingStateMachine> =
    Box<dyn FnMut(&Simulation<S>, NodeId, Duration) + Send>;

/// Makes the state machine of a simulated node: called with the node's id at every start (the
/// first one and each restart after a crash: a state machine keeps only what it persisted
/// itself, exactly as in production).
pub type StateMachineFactory<S> = Arc<dyn Fn(NodeId) -> S + Send + Sync>;

/// How to build a [`Simulation`].
#[derive(Debug, Clone)]
pub struct SimulationConfig {
    /// Number of voters, with ids `1..=nodes`.
    pub nodes: u64,
    /// The seed every random choice derives from (election timeouts, faults, schedules).
    pub seed: u64,
    /// Faults on every link at the start.
    pub faults: LinkFaults,
    /// How every node's disk behaves at the start (each can be changed later).
    pub disk: DiskFaults,
    /// How the simulated state machine misbehaves.
    pub state_machine: StateMachineFaults,
    /// Every sleep is extended by a random jitter of up to this many microseconds.
    pub jitter_us: u64,
    /// The transport's RPC timeout (raft-quic's is 2 s) and the probability that a failed RPC
    /// hangs that long instead of failing fast.
    pub rpc_timeout: Option<(Duration, f64)>,
    /// Record a trace of every message and status change ([`Simulation::take_trace`]).
    pub trace: bool,
}

impl SimulationConfig {
    /// `nodes` voters, the given seed, a reliable network with small delays, SSD-like disks,
    /// seeded scheduling with up to 100 µs of jitter, and a 2 s RPC timeout.
    pub fn new(nodes: u64, seed: u64) -> Self {
        Self {
            nodes,
            seed,
            faults: LinkFaults::RELIABLE,
            disk: DiskFaults::SSD,
            state_machine: StateMachineFaults::default(),
            jitter_us: 100,
            rpc_timeout: Some((Duration::from_secs(2), 0.0)),
            trace: false,
        }
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

/// What happened to the nodes of a simulation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimStats {
    /// Crashes (including those after a node stopped on an injected fault).
    pub crashes: u64,
    /// Storage operations in flight at a crash that landed / were lost.
    pub crash_landed: u64,
    /// See `crash_landed`.
    pub crash_lost: u64,
    /// Nodes that stopped on an injected disk or state machine failure.
    pub fault_stops: u64,
    /// Starts that failed on an injected disk failure (the node stayed down).
    pub failed_starts: u64,
    /// Pauses.
    pub pauses: u64,
    /// Graceful shutdowns.
    pub shutdowns: u64,
    /// Healthy periods the liveness oracle watched.
    pub healthy_periods: u64,
    /// Healthy periods in which it saw a leader commit an entry of its term.
    pub live_periods: u64,
}

/// A crash the simulation will carry out by itself.
#[derive(Debug, Clone, Copy)]
pub(super) enum Planned {
    /// Crash `node` once virtual time reaches `at`.
    At { at: Duration, node: NodeId, policy: InFlight },
    /// Crash `node` once `step` executor steps have run.
    AtStep { step: u64, node: NodeId, policy: InFlight },
    /// Crash the next node (or `node`) that wins an election, `delay` after it does.
    OnLeadership { node: Option<NodeId>, delay: Duration, policy: InFlight },
}

pub(super) struct Running<S> {
    pub(super) node: Node,
    pub(super) incarnation: u64,
    pub(super) record: Record,
    pub(super) handle: StateMachineHandle<S>,
    /// The disk's injected failures when this incarnation started.
    pub(super) disk_errors_at_start: u64,
}

/// A cluster of real [`Node`]s on a [`SimRuntime`] and a fault-injecting [`MemNetwork`], each on
/// a [`SimDisk`] that survives crashes. After every executor step it feeds the
/// [`InvariantChecker`] and the message-boundary and liveness oracles; the first violation
/// stops the run and is returned as a [`SimFailure`] naming the seed.
pub struct Simulation<S = RecordingStateMachine> {
    /// The executor (virtual time).
    pub runtime: SimRuntime,
    /// The network (faults, partitions, counters).
    pub network: MemNetwork,
    pub(super) seed: u64,
    /// The initial voters (their bootstrap configuration).
    founders: Vec<NodeId>,
    /// Every node that is part of the scenario: founders and added nodes, minus retired ones.
    ids: Vec<NodeId>,
    pub(super) disks: BTreeMap<NodeId, SimDisk>,
    pub(super) running: BTreeMap<NodeId, Running<S>>,
    incarnations: BTreeMap<NodeId, u64>,
    /// The configuration each node last started with.
    pub(super) configs: BTreeMap<NodeId, Config>,
    pub(super) checker: InvariantChecker,
    pub(super) failure: Option<SimFailure>,
    config_hook: Option<ConfigHook>,
    pub(crate) directory: Directory<S>,
    pub(crate) shared: Arc<Shared>,
    /// How long a client of [`Simulation::spawn_client`] waits for a write before trying
    /// another node.
    pub(crate) client_timeout: Duration,
    /// (virtual instant, progress then, steps run at it without progress): too many is a
    /// livelock.
    pub(super) livelock: (Duration, u64, u64),
    /// The sum of every running node's commit, applied and last log indexes (progress).
    pub(super) progress: u64,
    /// Polls per tag when the current livelock count started.
    pub(super) livelock_polls: BTreeMap<u64, u64>,
    pub(super) oracle: Arc<WireOracle>,
    disk_faults: DiskFaults,
    sm_faults: Arc<std::sync::Mutex<StateMachineFaults>>,
    /// Ids that came back after their removal: they join, whatever they were before.
    rejoined: BTreeSet<NodeId>,
    pub(super) planned: Vec<Planned>,
    pub(super) paused: BTreeSet<NodeId>,
    /// Bumped by every change of the nodes' lives and of their disks (with the network's
    /// `fault_epoch`, what the liveness oracle watches).
    pub(super) epoch: u64,
    pub(super) liveness: Option<LivenessState>,
    /// Per incarnation: the last term it was seen leading, and its commit index then.
    pub(super) leading: BTreeMap<(NodeId, u64), (Term, LogIndex)>,
    /// The durable hard state last fed to the checker, per node.
    pub(super) hard_states: BTreeMap<NodeId, raft_core::HardState>,
    /// The status last traced, per node.
    pub(super) traced: BTreeMap<NodeId, raft_core::Status>,
    /// Virtual times at which a timer was planted for a planned crash.
    pub(super) wakeups: BTreeSet<Duration>,
    pub(super) stats: SimStats,
    pub(super) election_hook: Option<ElectionHook<S>>,
    pinned_reads_hook: Option<PinnedReadsHook<S>>,
    factory: StateMachineFactory<S>,
    digest: Option<DigestFn<S>>,
    registry: Registry,
    /// Per applied index, the first digest reported there and by which node.
    pub(super) digests: BTreeMap<LogIndex, (u64, NodeId)>,
}

impl<S> std::fmt::Debug for Simulation<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulation")
            .field("seed", &self.seed)
            .field("now", &self.runtime.now())
            .finish_non_exhaustive()
    }
}

impl<S> Drop for Simulation<S> {
    fn drop(&mut self) {
        // Tasks hold handles to the executor and the executor holds the tasks: break the cycle
        // so that a finished simulation frees its cluster (a swarm runs thousands in a row).
        self.runtime.clear();
    }
}

/// Mixes the simulation seed with a salt (SplitMix64 finalizer).
pub(super) fn mix(seed: u64, salt: u64) -> u64 {
    let mut z = seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Counts a new incarnation of node `id` and returns its number (1 for the first start).
pub(super) fn next_incarnation(incarnations: &mut BTreeMap<NodeId, u64>, id: NodeId) -> u64 {
    let counter = incarnations.entry(id).or_insert(0);
    *counter += 1;
    *counter
}

/// An empty simulated disk with `faults`, its randomness drawn from `seed`.
pub(super) fn new_disk(runtime: SimRuntime, seed: u64, faults: DiskFaults) -> SimDisk {
    let disk = SimDisk::new(runtime, seed);
    disk.set_faults(faults);
    disk
}

pub(super) fn stuck(detail: String) -> Violation {
    Violation { invariant: "liveness (scenario expectation)", detail }
}

impl Simulation {
    /// Builds and starts the cluster, each node running a [`RecordingStateMachine`].
    pub fn new(config: SimulationConfig) -> Result<Self, SimFailure> {
        Self::builder(config).build()
    }

    /// Builds and starts the cluster, letting `hook` adjust every node's [`Config`].
    pub fn with_config_hook(
        config: SimulationConfig,
        hook: Option<ConfigHook>,
    ) -> Result<Self, SimFailure> {
        let builder = Self::builder(config);
        match hook {
            Some(hook) => builder.config_hook(hook).build(),
            None => builder.build(),
        }
    }

    /// A builder for a simulation of `config`, whose nodes run a [`RecordingStateMachine`]
    /// unless [`SimulationBuilder::state_machine`] gives another.
    pub fn builder(config: SimulationConfig) -> SimulationBuilder<RecordingStateMachine> {
        SimulationBuilder {
            config,
            hook: None,
            factory: Arc::new(|_| RecordingStateMachine::new()),
            digest: None,
        }
    }
}

/// How to build a [`Simulation`]: its [`SimulationConfig`], the state machine its nodes run
/// (yours, made by a factory), an optional digest of that state machine's state for divergence
/// detection, and an optional [`ConfigHook`].
pub struct SimulationBuilder<S> {
    config: SimulationConfig,
    hook: Option<ConfigHook>,
    factory: StateMachineFactory<S>,
    digest: Option<DigestFn<S>>,
}

impl<S> std::fmt::Debug for SimulationBuilder<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulationBuilder")
            .field("config", &self.config)
            .field("digest", &self.digest.is_some())
            .finish_non_exhaustive()
    }
}

impl<S: StateMachine> SimulationBuilder<S> {
    /// Runs the state machines `factory` makes: it is called with the node's id each time a
    /// node starts (at boot and after every crash), so a node keeps only what its state machine
    /// persisted itself. The simulation records what the checker needs *around* the state
    /// machine (the entries it was given, the snapshots it captured and restored): nothing more
    /// is asked of it than the [`StateMachine`] trait. A digest given before is dropped (it was
    /// for the other type).
    pub fn state_machine<T: StateMachine>(
        self,
        factory: impl Fn(NodeId) -> T + Send + Sync + 'static,
    ) -> SimulationBuilder<T> {
        SimulationBuilder {
            config: self.config,
            hook: self.hook,
            factory: Arc::new(factory),
            digest: None,
        }
    }

    /// Divergence detection: after every `apply` and `restore`, the simulation asks `digest`
    /// for a digest of the state machine's state (a hash of it, say) and checks that every node
    /// reports the same digest at the same applied index. A non-deterministic `apply` (iteration
    /// over a `HashMap`, a clock read, a random number) then fails the run, naming the seed.
    pub fn digest(mut self, digest: impl Fn(&S) -> u64 + Send + Sync + 'static) -> Self {
        self.digest = Some(Arc::new(digest));
        self
    }

    /// Lets `hook` adjust every node's [`Config`] (for example, shorter timeouts).
    pub fn config_hook(mut self, hook: ConfigHook) -> Self {
        self.hook = Some(hook);
        self
    }

    /// Builds and starts the cluster.
    pub fn build(self) -> Result<Simulation<S>, SimFailure> {
        let Self { config, hook, factory, digest } = self;
        let runtime = SimRuntime::seeded(mix(config.seed, 1), config.jitter_us);
        let network = MemNetwork::with_runtime(runtime.clone(), mix(config.seed, 0));
        network.set_default_faults(config.faults);
        network.set_yield_chance(0.2);
        if let Some((timeout, hang_chance)) = config.rpc_timeout {
            network.set_rpc_timeout(Some(timeout), hang_chance);
        }
        let oracle = Arc::new(WireOracle::new(runtime.clone(), config.trace));
        network.set_observer(Some(oracle.clone()));
        let ids: Vec<NodeId> = (1..=config.nodes).collect();
        let mut sim = Simulation {
            runtime,
            network,
            seed: config.seed,
            founders: ids.clone(),
            ids,
            disks: BTreeMap::new(),
            running: BTreeMap::new(),
            incarnations: BTreeMap::new(),
            configs: BTreeMap::new(),
            checker: InvariantChecker::new(),
            failure: None,
            config_hook: hook,
            directory: Arc::default(),
            shared: Arc::default(),
            client_timeout: Duration::from_secs(3),
            livelock: (Duration::ZERO, 0, 0),
            progress: 0,
            livelock_polls: BTreeMap::new(),
            oracle,
            disk_faults: config.disk,
            sm_faults: Arc::new(std::sync::Mutex::new(config.state_machine)),
            rejoined: BTreeSet::new(),
            planned: Vec::new(),
            paused: BTreeSet::new(),
            epoch: 0,
            liveness: None,
            leading: BTreeMap::new(),
            hard_states: BTreeMap::new(),
            traced: BTreeMap::new(),
            wakeups: BTreeSet::new(),
            stats: SimStats::default(),
            election_hook: None,
            pinned_reads_hook: None,
            factory,
            digest,
            registry: Registry::default(),
            digests: BTreeMap::new(),
        };
        for id in sim.ids.clone() {
            sim.start(id)?;
            // Nodes boot at random moments: their tickers run in different phases.
            let phase = Duration::from_micros(sim.runtime.below(10_000));
            sim.run_for(phase)?;
        }
        Ok(sim)
    }
}

impl<S: StateMachine> Simulation<S> {
    /// The seed of this run.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The founding voters: those that bootstrap the cluster (on an empty disk).
    pub fn founders(&self) -> &[NodeId] {
        &self.founders
    }

    /// The nodes of the scenario (see [`Simulation::founders`] for the first voters).
    pub fn ids(&self) -> &[NodeId] {
        &self.ids
    }

    /// What happened to the nodes so far.
    pub fn stats(&self) -> SimStats {
        self.stats
    }

    /// Adds node `id` to the scenario and starts it empty, as a node joining the cluster
    /// (without bootstrap): it does nothing until a leader adds it with a membership change.
    /// An id that was retired before may be added again: it starts on an empty disk.
    pub fn add_node(&mut self, id: NodeId) -> Result<(), SimFailure> {
        if !self.ids.contains(&id) {
            self.ids.push(id);
            if let Some(disk) = self.disks.get(&id) {
                disk.restore_image(&DiskImage::empty());
                self.checker.forget_disk(id);
                self.hard_states.remove(&id);
                self.rejoined.insert(id);
            }
        }
        self.start(id)
    }

    /// Crashes node `id` for good (after it was removed from the membership) and drops it from
    /// [`Simulation::ids`].
    pub fn retire(&mut self, id: NodeId) {
        self.crash(id);
        self.ids.retain(|&n| n != id);
    }

    /// The node `id`, if it is running.
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.running.get(&id).map(|r| &r.node)
    }

    /// The durable log of node `id`.
    pub fn store(&self, id: NodeId) -> Option<&MemLogStore> {
        self.disks.get(&id).map(SimDisk::log)
    }

    /// The durable snapshots of node `id`.
    pub fn snapshot_store(&self, id: NodeId) -> Option<&MemSnapshotStore> {
        self.disks.get(&id).map(SimDisk::snapshots)
    }

    /// The disk of node `id` (latency, faults, crash triggers, images).
    pub fn disk(&self, id: NodeId) -> Option<&SimDisk> {
        self.disks.get(&id)
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
        let Some(running) = self.running.get(&id) else { return Vec::new() };
        let (base, applied) = lock(&running.record.state).clone();
        // What a snapshot (or a state machine's own persistence) holds is what was committed up
        // to it: the checker verified both.
        let mut entries: Vec<Entry> = self
            .checker
            .committed_entries()
            .take_while(|e| e.index <= base.index)
            .cloned()
            .collect();
        entries.extend(applied);
        entries
    }

    /// A handle to node `id`'s state machine (of its current incarnation), if it is running.
    pub fn state_machine(&self, id: NodeId) -> Option<StateMachineHandle<S>> {
        self.running.get(&id).map(|r| r.handle.clone())
    }

    /// Calls `read` with node `id`'s state machine, unless the node is down or inside a call
    /// to it (an `apply` suspended in virtual time).
    pub fn inspect<R>(&self, id: NodeId, read: impl FnOnce(&S) -> R) -> Option<R> {
        let handle = self.state_machine(id)?;
        let guard = handle.try_lock()?;
        Some(read(&guard))
    }

    /// The snapshots node `id`'s current incarnation restored (at start or installed from the
    /// leader), in order.
    pub fn restores(&self, id: NodeId) -> Vec<LogId> {
        self.running.get(&id).map(|r| lock(&r.record.restores).clone()).unwrap_or_default()
    }

    /// The configuration node `id` last started with.
    pub fn config(&self, id: NodeId) -> Option<&Config> {
        self.configs.get(&id)
    }

    /// The trace recorded so far (with [`SimulationConfig::trace`]); taken.
    pub fn take_trace(&mut self) -> Vec<String> {
        self.oracle.take_trace()
    }

    pub(super) fn fail(&self, violation: Violation) -> SimFailure {
        SimFailure { seed: self.seed, at: self.runtime.now(), violation }
    }

    /// Sets how long clients started afterwards wait for a write before trying another node
    /// (3 s by default). Short timeouts make clients find a new leader while an old one is
    /// still cut off, which is when stale reads would show.
    pub fn set_client_timeout(&mut self, timeout: Duration) {
        self.client_timeout = timeout;
    }

    /// Checks bounded liveness from now on (see [`LivenessBounds`]).
    pub fn enable_liveness(&mut self, bounds: LivenessBounds) {
        self.liveness = Some(LivenessState::new(bounds));
    }

    /// Tells the liveness oracle that the scenario disturbed the cluster on purpose (a
    /// leadership transfer, a membership change): the current healthy period starts over.
    pub fn note_disruption(&mut self) {
        self.epoch += 1;
    }

    /// The disk of node `id`, created (empty, with the configured faults) on first use.
    fn disk_of(&mut self, id: NodeId) -> SimDisk {
        let (runtime, seed, faults) = (self.runtime.clone(), self.seed, self.disk_faults);
        self.disks
            .entry(id)
            .or_insert_with(|| new_disk(runtime, mix(seed, 7_000 + id), faults))
            .clone()
    }

    /// Starts node `id` from its disk (a boot or a restart after a crash). A start that fails
    /// on an injected disk failure leaves the node down; any other failure to start fails the
    /// run.
    pub fn start(&mut self, id: NodeId) -> Result<(), SimFailure> {
        if self.running.contains_key(&id) {
            return Ok(());
        }
        let incarnation = next_incarnation(&mut self.incarnations, id);
        let mut config = Config::new(id);
        config.random_seed = mix(self.seed, id * 1_000 + incarnation);
        if let Some(hook) = &self.config_hook {
            hook(&mut config);
        }
        let disk = self.disk_of(id);
        // A founder bootstraps the cluster when its disk holds nothing (its first start, or a
        // restart on an empty disk: the same entry again, so Log Matching holds); a node added
        // later, or a founder retired and added again, joins and waits for a leader.
        let bootstrap = self.founders.contains(&id)
            && !self.rejoined.contains(&id)
            && disk.hard_state().current_term == 0;
        let (log, snapshots) = disk.attach();
        let disk_errors_at_start = disk.stats().errors;
        let node_runtime = self.runtime.tagged(id);
        let seed = mix(self.seed, 0x5_3000 + id * 1_000 + incarnation);
        let state_machine = Observed::new(
            (self.factory)(id),
            (node_runtime.clone(), seed),
            self.sm_faults.clone(),
            self.registry.clone(),
            self.digest.clone(),
        );
        let (record, handle) = (state_machine.record(), state_machine.handle());
        self.oracle.started(id, DEFAULT_GROUP_ID, incarnation, disk.clone());
        self.configs.insert(id, config.clone());
        self.epoch += 1;
        let builder =
            Node::builder(config, log, self.network.endpoint(id), state_machine, node_runtime)
                .snapshot_store(snapshots);
        let builder = if bootstrap {
            builder.bootstrap(Membership::with_voters(self.founders.iter().copied()))
        } else {
            builder
        };
        let start = builder.start();
        let runtime = self.runtime.clone();
        let started = runtime.block_on(Duration::from_secs(60), start, || self.check_step());
        self.outcome()?;
        let node = match started {
            Some(Ok(node)) => node,
            Some(Err(error)) if disk.stats().errors > disk_errors_at_start => {
                tracing::debug!(id, %error, "start failed on an injected disk failure");
                self.stats.failed_starts += 1;
                disk.crash(InFlight::Random);
                return Ok(());
            }
            Some(Err(error)) => {
                return Err(self.fail(stuck(format!("node {id} failed to start: {error}"))))
            }
            None => {
                self.runtime.kill(id);
                return Err(self.fail(stuck(format!("node {id} did not start"))));
            }
        };
        self.oracle.trace(|| format!("start {id} incarnation {incarnation}"));
        self.network.serve(id, Arc::new(node.clone()));
        lock(&self.directory).insert(id, (node.clone(), record.clone(), handle.clone()));
        self.running
            .insert(id, Running { node, incarnation, record, handle, disk_errors_at_start });
        Ok(())
    }

    /// Crashes node `id`: its tasks vanish mid-flight; of its storage operations in flight a
    /// random prefix lands; only what its disk holds remains.
    pub fn crash(&mut self, id: NodeId) {
        self.crash_with(id, InFlight::Random);
    }

    /// Crashes node `id`, resolving its storage operations in flight by `policy`. Returns what
    /// happened to them (`None`, doing nothing, if the node was not running: a planned crash
    /// that falls due while the node is down, or while it is starting, is dropped).
    pub fn crash_with(&mut self, id: NodeId, policy: InFlight) -> Option<CrashOutcome> {
        if !self.running.contains_key(&id) {
            return None;
        }
        lock(&self.directory).remove(&id);
        self.network.stop_serving(id);
        self.network.resume(id);
        self.runtime.kill(id);
        self.paused.remove(&id);
        self.running.remove(&id)?;
        self.checker.observe_down(id);
        self.epoch += 1;
        let outcome = self.disks.get(&id).map(|disk| disk.crash(policy)).unwrap_or_default();
        self.stats.crashes += 1;
        self.stats.crash_landed += outcome.landed as u64;
        self.stats.crash_lost += outcome.lost as u64;
        self.oracle.trace(|| format!("crash {id} {outcome:?}"));
        Some(outcome)
    }

    /// Crashes every running node at the same instant (a power cut of the whole cluster).
    pub fn crash_all(&mut self) {
        for id in self.running.keys().copied().collect::<Vec<_>>() {
            self.crash(id);
        }
    }

    /// Crashes and restarts node `id`.
    pub fn restart(&mut self, id: NodeId) -> Result<(), SimFailure> {
        self.crash(id);
        self.start(id)
    }

    /// Crashes node `id` and restarts it on a different disk: `image` (an empty one, or a copy
    /// taken earlier with [`SimDisk::image`]). Raft's safety assumes disks never go back; the
    /// checker reports what breaks.
    pub fn restart_with_disk(&mut self, id: NodeId, image: &DiskImage) -> Result<(), SimFailure> {
        self.crash(id);
        if let Some(disk) = self.disks.get(&id) {
            disk.restore_image(image);
        }
        self.start(id)
    }

    /// Shuts node `id` down gracefully ([`Node::shutdown`]: its writes complete) and leaves it
    /// down.
    pub fn shutdown(&mut self, id: NodeId) -> Result<(), SimFailure> {
        let Some(node) = self.node(id).cloned() else { return Ok(()) };
        self.resume(id);
        self.block_on("a graceful shutdown", Duration::from_secs(30), async move {
            node.shutdown().await
        })?;
        self.stats.shutdowns += 1;
        self.crash_with(id, InFlight::Land);
        Ok(())
    }

    /// Whether node `id` is running.
    pub fn is_running(&self, id: NodeId) -> bool {
        self.running.contains_key(&id)
    }

    /// Pauses node `id` (a stopped process, a long GC pause, a frozen VM): its tasks and timers
    /// stop, messages to it wait; its clock keeps running. [`Simulation::resume`] continues it
    /// with its old timers and beliefs, and the messages that waited reach it in a seeded order.
    pub fn pause(&mut self, id: NodeId) {
        if self.is_running(id) && self.paused.insert(id) {
            self.runtime.pause(id);
            self.network.pause(id);
            self.stats.pauses += 1;
            self.epoch += 1;
            self.oracle.trace(|| format!("pause {id}"));
        }
    }

    /// Resumes a paused node.
    pub fn resume(&mut self, id: NodeId) {
        if self.paused.remove(&id) {
            self.runtime.resume(id);
            self.network.resume(id);
            self.epoch += 1;
            self.oracle.trace(|| format!("resume {id}"));
        }
    }

    /// Whether node `id` is paused.
    pub fn is_paused(&self, id: NodeId) -> bool {
        self.paused.contains(&id)
    }

    /// Sets node `id`'s clock (rate, late timers) from now on.
    pub fn set_clock(&mut self, id: NodeId, clock: NodeClock) {
        self.runtime.set_clock(id, clock);
        self.epoch += 1;
    }

    /// Sets node `id`'s disk behavior.
    pub fn set_disk_faults(&mut self, id: NodeId, faults: DiskFaults) {
        self.disk_of(id).set_faults(faults);
        self.epoch += 1;
    }

    /// Sets how the state machines misbehave from now on (every incarnation, running or not).
    pub fn set_state_machine_faults(&mut self, faults: StateMachineFaults) {
        *lock(&self.sm_faults) = faults;
    }

    /// Fills node `id`'s disk (its writes fail, so it stops) or frees it.
    pub fn set_disk_full(&mut self, id: NodeId, full: bool) {
        self.disk_of(id).set_full(full);
        self.epoch += 1;
    }

    /// Crashes node `id` once `delay` of virtual time has passed (at any step in between, with
    /// whatever it has in flight).
    pub fn crash_after(&mut self, id: NodeId, delay: Duration, policy: InFlight) {
        let at = self.now() + delay;
        self.plant_wakeup(at);
        self.planned.push(Planned::At { at, node: id, policy });
    }

    /// Crashes node `id` after `steps` more executor steps.
    pub fn crash_after_steps(&mut self, id: NodeId, steps: u64, policy: InFlight) {
        let step = self.runtime.polls() + steps;
        self.planned.push(Planned::AtStep { step, node: id, policy });
    }

    /// Crashes the next node to win an election (or `id` the next time it does), `delay` after
    /// it is seen leading.
    pub fn crash_on_leadership(&mut self, id: Option<NodeId>, delay: Duration, policy: InFlight) {
        self.planned.push(Planned::OnLeadership { node: id, delay, policy });
    }

    /// Calls `hook` each time a node is seen winning an election (right after the step in which
    /// it did), for example to propose a membership change on every new leader at once.
    pub fn on_election(&mut self, hook: Option<ElectionHook<S>>) {
        self.election_hook = hook;
    }

    /// Calls `hook` each time the fault schedule pins readers to a node (an isolated or paused
    /// leader, asked for reads by clients that believe it leads), with the node and how long
    /// they keep asking: start your own clients there, so that reads through your service's
    /// read path meet the stale leader too. The built-in reader
    /// ([`Simulation::spawn_reader_on`]) runs as well. Not cleared by [`Simulation::calm`].
    pub fn on_pinned_reads(&mut self, hook: Option<PinnedReadsHook<S>>) {
        self.pinned_reads_hook = hook;
    }

    /// Pins readers to node `id` for `duration`: the built-in reader and the test's own
    /// ([`Simulation::on_pinned_reads`]).
    pub(super) fn pin_readers(&mut self, id: NodeId, duration: Duration) {
        self.spawn_reader_on(id, duration);
        if let Some(mut hook) = self.pinned_reads_hook.take() {
            hook(self, id, duration);
            self.pinned_reads_hook.get_or_insert(hook);
        }
    }

    /// Makes sure the executor stops at virtual time `at` (a timer is due then).
    pub(super) fn plant_wakeup(&mut self, at: Duration) {
        if at > self.now() && self.wakeups.insert(at) {
            let sleep = self.runtime.sleep_until(at);
            self.runtime.spawn_task(sleep);
        }
    }

    /// Brings the cluster back to health: resumes paused nodes, frees full disks and stops
    /// injecting disk errors, stalls and state machine failures, cancels planned crashes and the
    /// election hook, removes every network fault, partition and disconnection. Crashed nodes
    /// stay down.
    pub fn calm(&mut self) {
        for id in self.paused.clone() {
            self.resume(id);
        }
        self.planned.clear();
        self.election_hook = None;
        *lock(&self.sm_faults) = StateMachineFaults::default();
        for disk in self.disks.values() {
            disk.set_full(false);
            disk.set_crash_trigger(None);
            let faults = disk.faults();
            disk.set_faults(DiskFaults { error_chance: 0.0, stall_chance: 0.0, ..faults });
        }
        for id in self.ids.clone() {
            self.network.reconnect(id);
        }
        self.network.clear_faults();
        self.network.heal();
        self.epoch += 1;
    }

    pub(super) fn outcome(&mut self) -> Result<(), SimFailure> {
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
        mut done: impl FnMut(&Simulation<S>) -> bool,
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
}

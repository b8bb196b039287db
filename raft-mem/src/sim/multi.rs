//! Several Raft groups on the same simulated nodes ([`MultiSimulation`]): each node is one
//! process, a [`Host`] of one node of every group behind one registration on the network and
//! one endpoint; a crash takes every group of the node down at once and a partition cuts them
//! all. Every group has its own disks and its own [`InvariantChecker`], fed as a single-group
//! [`Simulation`](super::Simulation) feeds its one, the message-boundary oracle checks every
//! message against its sender's disk of the message's group, each group's client history is
//! checked for linearizability at the end of a run (every group must have answered reads, on its
//! followers too, for that check to mean something), every node must hold every acknowledged
//! write of every group at its index after the last heal, and two starvation checks: every
//! group with a connected majority must make progress within one liveness bound, and after
//! every step every light group's awake leader must have sent each sound follower a request
//! within the starvation bound while some seeds load one or two groups hot (`multi_starve.rs`,
//! [`MultiSimConfig::hot_groups`]). Idle phases let groups
//! quiesce (`Config::quiesce_idle`, on in odd seeds), and what quiescence did is counted and
//! checked (`multi_quiet.rs`; the rounds are in `multi_rounds.rs`). A node's host runs each group
//! as its own main-loop task, or every group's steps in one host loop
//! ([`MultiSimConfig::host_loop`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raft_core::{
    Bytes, Config, GroupId, HardState, Host, LogIndex, Membership, Node, NodeId, Role, Status, Term,
};

use super::checker::{InvariantChecker, Violation};
use super::disk::{DiskFaults, InFlight, SimDisk};
use super::executor::SimRuntime;
use super::history::{OpOutcome, OpRecord};
use super::multi_clients::{
    check_history, command_of, spawn_clients, ClientBoard, GroupHistory, GroupNode, GroupReads,
    RegisterOp,
};
use super::multi_quiet::{QuiescenceStats, QuietWatch};
use super::multi_starve::{starvation_bound, StarvationStats, StarveWatch};
use super::observe::{check_digest, commit_durable, feed_disk, feed_events};
use super::recorder::{lock, Observed, Record, Registry, StateMachineFaults};
use super::schedule::Dice;
use super::simulation::{mix, new_disk, next_incarnation, stuck, SimFailure};
use super::wire_oracle::WireOracle;
use crate::harness::RecordingStateMachine;
use crate::{LinkFaults, MemNetwork};

/// The `quiesce_check_interval` of the seeds that quiesce idle groups: short, so that a
/// quiesced follower whose leader vanished wakes within 3 s and the runs stay short.
const QUIESCE_CHECK_INTERVAL: Duration = Duration::from_millis(1_000);

/// How often the convergence check looks whether every node applied every acknowledged write.
const CONVERGE_POLL: Duration = Duration::from_millis(100);

/// How many entries a hot group's snapshots are apart ([`MultiSimConfig::hot_groups`]).
const HOT_SNAPSHOT_INTERVAL: u64 = 1_000;

/// A hot group's snapshot chunk size: a snapshot of 1,000 entries of 1 KiB is 60 chunks or more.
const HOT_SNAPSHOT_CHUNK_BYTES: u64 = 16 * 1024;

/// The groups `MultiSimConfig::new` loads hot for `seed`: none with fewer than 2 groups (a
/// light one must be left to check); otherwise one in half the seeds, and a second in a
/// quarter of those with 4 groups or more.
fn draw_hot_groups(groups: u64, seed: u64) -> BTreeSet<GroupId> {
    let mut dice = Dice(mix(seed, 0xb07_6a11));
    let mut hot = BTreeSet::new();
    if groups < 2 || !dice.chance(50) {
        return hot;
    }
    hot.insert(1 + dice.below(groups));
    if groups >= 4 && dice.chance(25) {
        hot.insert(1 + dice.below(groups));
    }
    hot
}

/// How to build a [`MultiSimulation`].
#[derive(Debug, Clone)]
pub struct MultiSimConfig {
    /// Number of nodes (processes), with ids `1..=nodes`: each is a voter of every group.
    pub nodes: u64,
    /// Number of groups, with ids `1..=groups`.
    pub groups: u64,
    /// The seed every random choice derives from.
    pub seed: u64,
    /// How long a group with a connected majority (and its client) may go without an
    /// acknowledged write before the run fails as starved: the liveness bound, the same for
    /// every group.
    pub liveness_bound: Duration,
    /// The disks' latencies and stalls (I/O errors are not injected: a group stopped by one
    /// would starve).
    pub disk: DiskFaults,
    /// `Some(interval)`: every group quiesces when idle (`Config::quiesce_idle`) with this
    /// `quiesce_check_interval`; `None`: no group quiesces.
    pub quiesce_check_interval: Option<Duration>,
    /// How each node runs its groups. `false` (the default): a plain [`Host::new`], each group
    /// running its own main-loop task on the node's runtime. `true`: [`Host::with_loop`], the
    /// groups' main-loop steps run in one host task, spawned on the node's tagged runtime (the
    /// one its groups' builders are given), so a crash kills that task with the node.
    pub host_loop: bool,
    /// The groups loaded on purpose (the starvation check's aggressors): besides their
    /// register clients, four concurrent writers
    /// of 1 KiB entries, and snapshots every 1,000 entries streamed in 16 KiB chunks (a node
    /// that restarts or falls behind gets a many-chunk InstallSnapshot). The starvation oracle
    /// (`multi_starve.rs`) checks every other group after every step.
    pub hot_groups: BTreeSet<GroupId>,
}

impl MultiSimConfig {
    /// `nodes` nodes, `groups` groups, the given seed, and a liveness bound of 10 s of virtual
    /// time (elections take up to 0.6 s with the default `Config`, RPCs time out after 2 s);
    /// odd seeds quiesce idle groups, with a check interval of 1 s (a quiesced follower whose
    /// leader vanished wakes within 3 s, inside the liveness bound); each group runs its own
    /// main-loop task (`host_loop` off); with 2 groups or more, half the seeds load one group
    /// hot, and a quarter of those with 4 groups or more a second one
    /// ([`MultiSimConfig::hot_groups`]).
    pub fn new(nodes: u64, groups: u64, seed: u64) -> Self {
        let quiesce_check_interval = (seed % 2 == 1).then_some(QUIESCE_CHECK_INTERVAL);
        Self {
            hot_groups: draw_hot_groups(groups, seed),
            nodes,
            groups,
            seed,
            liveness_bound: Duration::from_secs(10),
            disk: DiskFaults::SSD,
            quiesce_check_interval,
            host_loop: false,
        }
    }
}

/// What a [`MultiSimulation`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MultiSimStats {
    /// Node crashes (each takes every group of the node down).
    pub crashes: u64,
    /// Partitions set.
    pub partitions: u64,
    /// Node pauses (every group of the node stops, its clock runs on).
    pub pauses: u64,
    /// Progress checks passed (every group acknowledged a write within the bound).
    pub progress_checks: u64,
    /// Writes acknowledged to the clients, per group.
    pub acknowledged: BTreeMap<GroupId, u64>,
    /// Client operations whose histories were checked for linearizability (all groups).
    pub operations_checked: u64,
    /// What each group's reader got: reads answered (on followers, during faults) and failed.
    pub reads: BTreeMap<GroupId, GroupReads>,
    /// Read checks passed (every group answered reads on its leader and on a follower within
    /// the bound, after the last heal).
    pub read_checks: u64,
    /// Acknowledged writes the convergence check found at their index on every node of their
    /// group (all groups).
    pub converged_writes: u64,
    /// Writes recorded as certainly not applied (refused, or dropped before they committed):
    /// the linearizability check holds the library to it (all groups).
    pub failed_writes: u64,
    /// Messages the message-boundary oracle checked against their sender's disk of their
    /// group (requests and responses; a message it could not place fails the run).
    pub messages_checked: u64,
    /// What quiescence did (all zero when it is off).
    pub quiescence: QuiescenceStats,
    /// What the starvation oracle saw.
    pub starvation: StarvationStats,
}

/// One group's checking state.
struct GroupCheck {
    checker: InvariantChecker,
    hard_states: BTreeMap<NodeId, HardState>,
    /// Snapshots captured by the group's state machines (restores are verified against them).
    registry: Registry,
    /// Per leader incarnation: the term and commit index last seen.
    leading: BTreeMap<(NodeId, u64), (Term, LogIndex)>,
    digests: BTreeMap<LogIndex, (u64, NodeId)>,
    /// The group's clients' operations.
    history: GroupHistory,
}

/// A running node: its host and, per group, the record of its state machine.
struct RunningHost {
    host: Host,
    incarnation: u64,
    records: BTreeMap<GroupId, Record>,
}

/// Several Raft groups on the same simulated nodes, in virtual time, under faults that hit
/// nodes (every group of a crashed node goes down with it, a partition cuts every group),
/// each group's invariants checked after every step, every message checked against its
/// sender's durable state of its group, each group's client history checked for
/// linearizability ([`MultiSimulation::check_histories`], at the end of
/// [`MultiSimulation::run_faults`]), plus starvation checks: every group with a connected
/// majority acknowledges a client write within [`MultiSimConfig::liveness_bound`], and after
/// every step the leader of every group not loaded hot ([`MultiSimConfig::hot_groups`]) has
/// sent each follower a request within `heartbeat_interval + 2 * tick_interval` while both are
/// sound (running, not paused, not hit by the fault in force; see [`StarvationStats`]).
/// A failure names its seed (replay with `RAFT_SIM_SEED=<seed>` in tests that read it with
/// [`SimulationConfig::seed_from_env`](super::SimulationConfig::seed_from_env)).
pub struct MultiSimulation {
    /// The executor (virtual time).
    pub runtime: SimRuntime,
    /// The network every host is registered on, once.
    pub network: MemNetwork,
    seed: u64,
    nodes: Vec<NodeId>,
    groups: Vec<GroupId>,
    bound: Duration,
    disk_faults: DiskFaults,
    quiesce_check_interval: Option<Duration>,
    host_loop: bool,
    disks: BTreeMap<(NodeId, GroupId), SimDisk>,
    running: BTreeMap<NodeId, RunningHost>,
    paused: BTreeSet<NodeId>,
    pub(super) quiet: QuietWatch,
    hot: BTreeSet<GroupId>,
    /// The nodes the fault in force hit (cut off, paused, on faulty links, crashed), until
    /// the heal.
    impaired: BTreeSet<NodeId>,
    starve: StarveWatch,
    incarnations: BTreeMap<NodeId, u64>,
    checks: BTreeMap<GroupId, GroupCheck>,
    board: Arc<ClientBoard>,
    oracle: Arc<WireOracle>,
    failure: Option<SimFailure>,
    stats: MultiSimStats,
}

impl std::fmt::Debug for MultiSimulation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiSimulation")
            .field("seed", &self.seed)
            .field("nodes", &self.nodes)
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

impl MultiSimulation {
    /// Builds the nodes, starts every group on every node (each node's groups found one
    /// cluster of all the nodes) and per group a client that keeps writing to its leader and
    /// one that keeps reading from each node in turn.
    pub fn new(config: MultiSimConfig) -> Result<Self, SimFailure> {
        let runtime = SimRuntime::seeded(config.seed, 100);
        let network = MemNetwork::with_runtime(runtime.clone(), mix(config.seed, 1));
        network.set_default_faults(LinkFaults::RELIABLE);
        network.set_rpc_timeout(Some(Duration::from_secs(2)), 0.0);
        let oracle = Arc::new(WireOracle::new(runtime.clone(), false));
        network.set_observer(Some(oracle.clone()));
        let groups: Vec<GroupId> = (1..=config.groups).collect();
        let checks = groups
            .iter()
            .map(|&g| {
                let check = GroupCheck {
                    checker: InvariantChecker::new(),
                    hard_states: BTreeMap::new(),
                    registry: Registry::default(),
                    leading: BTreeMap::new(),
                    digests: BTreeMap::new(),
                    history: GroupHistory::new(),
                };
                (g, check)
            })
            .collect();
        let mut sim = Self {
            runtime,
            network,
            seed: config.seed,
            nodes: (1..=config.nodes).collect(),
            groups,
            bound: config.liveness_bound,
            disk_faults: DiskFaults { error_chance: 0.0, ..config.disk },
            quiesce_check_interval: config.quiesce_check_interval,
            host_loop: config.host_loop,
            disks: BTreeMap::new(),
            running: BTreeMap::new(),
            paused: BTreeSet::new(),
            quiet: QuietWatch::default(),
            hot: config.hot_groups.clone(),
            impaired: BTreeSet::new(),
            starve: StarveWatch::default(),
            incarnations: BTreeMap::new(),
            checks,
            board: Arc::default(),
            oracle,
            failure: None,
            stats: MultiSimStats::default(),
        };
        if let Some(group_config) = sim.some_group_config() {
            let bound = starvation_bound(&group_config);
            sim.starve = StarveWatch::new(bound, sim.hot.clone());
        }
        for id in sim.nodes.clone() {
            sim.start(id)?;
        }
        for (&group, check) in &sim.checks {
            let hot = sim.hot.contains(&group);
            spawn_clients(&sim.board, &sim.runtime, group, &check.history, hot);
        }
        Ok(sim)
    }

    /// The seed of this run.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// What happened so far.
    pub fn stats(&self) -> MultiSimStats {
        let mut stats = self.stats.clone();
        stats.acknowledged = lock(&self.board.acknowledged).clone();
        stats.reads = lock(&self.board.reads).clone();
        stats.messages_checked = self.oracle.counts().0;
        stats.quiescence = self.quiet.stats.clone();
        stats.starvation = self.starve.stats.clone();
        stats.starvation.hot_writes = self.board.hot_acknowledged.load(Ordering::SeqCst);
        stats.starvation.snapshot_requests = self.oracle.snapshot_requests();
        stats
    }

    /// The groups' ids.
    pub fn group_ids(&self) -> Vec<GroupId> {
        self.groups.clone()
    }

    /// The nodes' ids.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.clone()
    }

    /// The `quiesce_check_interval` of the groups, if they quiesce when idle.
    pub fn quiesce_check_interval(&self) -> Option<Duration> {
        self.quiesce_check_interval
    }

    /// Whether the nodes run their groups in one host loop ([`MultiSimConfig::host_loop`]).
    pub fn host_loop(&self) -> bool {
        self.host_loop
    }

    /// The status of every group's node on every running node, by group.
    pub fn statuses(&self) -> Vec<(GroupId, Status)> {
        let mut statuses = Vec::new();
        for running in self.running.values() {
            for &group in running.records.keys() {
                if let Some(node) = running.host.group(group) {
                    statuses.push((group, node.status()));
                }
            }
        }
        statuses
    }

    /// From now on the clients of the groups in `idle` stand still (once their operation in
    /// flight ended), and those of the other groups run: nothing wakes an idle group but the
    /// protocol itself and faults.
    pub fn set_idle(&self, idle: impl IntoIterator<Item = GroupId>) {
        self.board.set_idle(idle.into_iter().collect());
    }

    /// The host of node `id`, if it runs.
    pub fn host(&self, id: NodeId) -> Option<&Host> {
        self.running.get(&id).map(|r| &r.host)
    }

    /// Group `group`'s invariant checker.
    pub fn checker(&self, group: GroupId) -> Option<&InvariantChecker> {
        self.checks.get(&group).map(|c| &c.checker)
    }

    /// Whether node `id` runs.
    pub fn is_running(&self, id: NodeId) -> bool {
        self.running.contains_key(&id)
    }

    pub(super) fn fail(&self, violation: Violation) -> SimFailure {
        SimFailure { seed: self.seed, at: self.runtime.now(), violation }
    }

    fn disk(&mut self, id: NodeId, group: GroupId) -> SimDisk {
        let (runtime, seed, faults) = (self.runtime.clone(), self.seed, self.disk_faults);
        self.disks
            .entry((id, group))
            .or_insert_with(|| new_disk(runtime, mix(seed, 7_000 + id * 1_000_003 + group), faults))
            .clone()
    }

    /// The configuration of group `group`'s node on node `id`, in its `incarnation`: every
    /// setting of a group's node is made here.
    fn group_config(&self, id: NodeId, group: GroupId, incarnation: u64) -> Config {
        let mut config = Config::new(id);
        config.random_seed = mix(self.seed, (id * 1_000 + incarnation) * 1_000 + group);
        if let Some(interval) = self.quiesce_check_interval {
            config.quiesce_idle = true;
            config.quiesce_check_interval = interval;
        }
        if self.hot.contains(&group) {
            config.snapshot_interval_entries = HOT_SNAPSHOT_INTERVAL;
            config.snapshot_keep_entries = HOT_SNAPSHOT_INTERVAL / 10;
            config.snapshot_chunk_bytes = HOT_SNAPSHOT_CHUNK_BYTES;
        }
        config
    }

    /// The configuration of one group's node (every group's timing is the same).
    pub(super) fn some_group_config(&self) -> Option<Config> {
        let (&id, &group) = (self.nodes.first()?, self.groups.first()?);
        Some(self.group_config(id, group, 0))
    }

    /// The disks' latencies and stalls.
    pub(super) fn disk_faults(&self) -> DiskFaults {
        self.disk_faults
    }

    /// The message-boundary oracle (which also notes the quiesce marks acknowledged).
    pub(super) fn oracle(&self) -> &WireOracle {
        &self.oracle
    }

    /// A fault of a round is in force from now on (until the heal): the reads that begin
    /// meanwhile are counted as reads during faults.
    pub(super) fn fault_begins(&mut self) {
        self.quiet.fault_active = true;
        self.board.faulted.store(true, Ordering::SeqCst);
    }

    /// The fault in force hit `nodes` (until the heal): the starvation oracle leaves their
    /// pairs alone.
    pub(super) fn impair(&mut self, nodes: impl IntoIterator<Item = NodeId>) {
        self.impaired.extend(nodes);
    }

    /// Counts a partition the rounds set.
    pub(super) fn count_partition(&mut self) {
        self.stats.partitions += 1;
    }

    /// Pauses node `id` (a stopped process): every group of it stops, its clock runs on,
    /// messages to it wait; [`MultiSimulation::heal`] resumes it.
    pub fn pause(&mut self, id: NodeId) {
        if self.running.contains_key(&id) && self.paused.insert(id) {
            self.runtime.pause(id);
            self.network.pause(id);
            self.stats.pauses += 1;
        }
    }

    fn resume(&mut self, id: NodeId) {
        if self.paused.remove(&id) {
            self.runtime.resume(id);
            self.network.resume(id);
        }
    }

    /// Heals the cluster: the network's faults are cleared (links reliable again), paused nodes
    /// resume, crashed ones restart, and every group's clients run.
    pub fn heal(&mut self) -> Result<(), SimFailure> {
        self.network.heal();
        self.network.clear_faults();
        self.network.set_default_faults(LinkFaults::RELIABLE);
        for id in self.paused.clone() {
            self.resume(id);
        }
        for id in self.nodes.clone() {
            self.start(id)?;
        }
        self.quiet.fault_active = false;
        self.impaired.clear();
        self.board.faulted.store(false, Ordering::SeqCst);
        self.set_idle([]);
        Ok(())
    }

    /// Starts node `id` (a boot, or a restart after a crash): a new host with every group on
    /// its disks, registered once on the network; a group founds its cluster when its disk
    /// holds nothing.
    pub fn start(&mut self, id: NodeId) -> Result<(), SimFailure> {
        if self.running.contains_key(&id) {
            return Ok(());
        }
        let incarnation = next_incarnation(&mut self.incarnations, id);
        let endpoint = self.network.endpoint(id);
        let node_runtime = self.runtime.tagged(id);
        // The host task runs on the node's tagged runtime, like its groups' tasks: a crash
        // kills it with the node.
        let host =
            if self.host_loop { Host::with_loop(id, node_runtime.clone()) } else { Host::new(id) };
        let mut builders = Vec::new();
        let mut records = BTreeMap::new();
        for group in self.groups.clone() {
            let disk = self.disk(id, group);
            self.oracle.started(id, group, incarnation, disk.clone());
            let config = self.group_config(id, group, incarnation);
            let bootstrap = disk.hard_state().current_term == 0;
            let (log, snapshots) = disk.attach();
            let registry = self.checks.get(&group).map(|c| c.registry.clone()).unwrap_or_default();
            let recording = RecordingStateMachine::new();
            let state_machine = Observed::new(
                recording.clone(),
                (node_runtime.clone(), mix(self.seed, 0x6_3000 + id * 1_000 + group)),
                Arc::new(Mutex::new(StateMachineFaults::default())),
                registry,
                None,
            );
            records.insert(group, (state_machine.record(), state_machine.handle(), recording));
            let builder =
                Node::builder(config, log, endpoint.clone(), state_machine, node_runtime.clone())
                    .snapshot_store(snapshots);
            let builder = if bootstrap {
                builder.bootstrap(Membership::with_voters(self.nodes.iter().copied()))
            } else {
                builder
            };
            builders.push((group, builder));
        }
        let adding = host.clone();
        let start = async move {
            let mut failures = Vec::new();
            for (group, builder) in builders {
                if let Err(error) = adding.add_group(group, builder).await {
                    failures.push(error.to_string());
                }
            }
            failures
        };
        let runtime = self.runtime.clone();
        let started = runtime.block_on(Duration::from_secs(60), start, || self.check_step());
        self.outcome()?;
        match started {
            Some(failures) if failures.is_empty() => {}
            Some(failures) => {
                return Err(self.fail(stuck(format!("node {id} failed to start: {failures:?}"))))
            }
            None => return Err(self.fail(stuck(format!("node {id} did not start")))),
        }
        self.network.serve(id, Arc::new(host.clone()));
        let mut board = lock(&self.board.nodes);
        let mut recorded = BTreeMap::new();
        for (group, (record, state_machine, recording)) in records {
            if let Some(node) = host.group(group) {
                let record = record.clone();
                board.insert((group, id), GroupNode { node, record, state_machine, recording });
            }
            recorded.insert(group, record);
        }
        drop(board);
        self.running.insert(id, RunningHost { host, incarnation, records: recorded });
        Ok(())
    }

    /// Crashes node `id`: every group of it stops mid-flight at once (its tasks vanish); of each
    /// group's storage operations in flight a random prefix lands.
    pub fn crash(&mut self, id: NodeId) {
        self.resume(id);
        if self.running.remove(&id).is_none() {
            return;
        }
        self.quiet.crashed(id);
        lock(&self.board.nodes).retain(|(_, node), _| *node != id);
        self.network.stop_serving(id);
        self.runtime.kill(id);
        for group in self.groups.clone() {
            if let Some(check) = self.checks.get_mut(&group) {
                check.checker.observe_down(id);
            }
            self.disk(id, group).crash(InFlight::Random);
        }
        self.stats.crashes += 1;
    }

    /// Feeds every group's observations to its checker; the first violation stops the run.
    pub(super) fn check_step(&mut self) {
        if self.failure.is_some() {
            return;
        }
        if let Err(violation) = self.observe() {
            self.failure = Some(self.fail(violation));
        }
    }

    fn observe(&mut self) -> Result<(), Violation> {
        let mut statuses = Vec::new();
        for (&id, running) in &self.running {
            for (&group, record) in &running.records {
                let Some(node) = running.host.group(group) else { continue };
                let Some(check) = self.checks.get_mut(&group) else { continue };
                let at = (id, running.incarnation);
                let status = observe_group(check, &self.disks, (group, at), &node, record)
                    .map_err(|v| in_group(group, v))?;
                statuses.push((group, status));
            }
        }
        let board = &self.board;
        let now = self.runtime.now();
        self.quiet.observe(now, &statuses, |g| board.is_idle(g))?;
        let sound: BTreeSet<NodeId> = (self.running.keys())
            .filter(|id| !self.paused.contains(id) && !self.impaired.contains(id))
            .copied()
            .collect();
        self.starve.observe(now, &self.nodes, &sound, &statuses, &self.oracle)?;
        for (&(id, group), disk) in &self.disks {
            let Some(check) = self.checks.get_mut(&group) else { continue };
            feed_disk(&mut check.checker, id, disk, &mut check.hard_states)
                .map_err(|v| in_group(group, v))?;
        }
        for (group, findings) in self.oracle.take_findings() {
            if let Some(check) = self.checks.get_mut(&group) {
                findings.feed(&mut check.checker).map_err(|v| in_group(group, v))?;
            }
        }
        let unplaced = self.oracle.counts().1;
        if unplaced > 0 {
            return Err(Violation {
                invariant: "every message is checked against its sender's disk of its group",
                detail: format!("{unplaced} messages came from a node with no disk of their group"),
            });
        }
        if let Some(error) = self.network.take_wire_errors().into_iter().next() {
            return Err(Violation {
                invariant: "messages survive their wire encoding",
                detail: error,
            });
        }
        if let Some(violation) = lock(&self.board.violations).first() {
            return Err(violation.clone());
        }
        Ok(())
    }

    /// Checks every group's client history so far for linearizability (operations still in
    /// flight count as of unknown outcome); the first group whose history is not linearizable
    /// fails the run, naming its contradicting operations.
    pub fn check_histories(&mut self) -> Result<(), SimFailure> {
        for (&group, check) in &self.checks {
            let history = check.history.records();
            self.stats.operations_checked += history.len() as u64;
            let failed = |r: &&OpRecord<RegisterOp, _>| {
                matches!((r.op, &r.outcome), (RegisterOp::Write(_), OpOutcome::Failed))
            };
            self.stats.failed_writes += history.iter().filter(failed).count() as u64;
            check_history(group, &history).map_err(|violation| self.fail(violation))?;
        }
        Ok(())
    }

    /// The failure found by the last steps, if any (taken).
    pub(super) fn outcome(&mut self) -> Result<(), SimFailure> {
        self.failure.take().map_or(Ok(()), Err)
    }

    /// Runs every group for `duration` of virtual time, checking after every step.
    pub fn run_for(&mut self, duration: Duration) -> Result<(), SimFailure> {
        let runtime = self.runtime.clone();
        runtime.run_for(duration, || self.check_step());
        self.outcome()
    }

    /// The starvation check: runs until each of `groups` has acknowledged at least one more
    /// write, and fails naming the groups that did not within the liveness bound. Call it only
    /// while those groups have a connected majority and running clients (`why` says what the
    /// cluster is going through).
    pub fn require_progress(&mut self, groups: &[GroupId], why: &str) -> Result<(), SimFailure> {
        let before = lock(&self.board.acknowledged).clone();
        let board = self.board.clone();
        let groups = groups.to_vec();
        let behind = move || -> Vec<GroupId> {
            let now = lock(&board.acknowledged);
            let count = |acks: &BTreeMap<GroupId, u64>, g| acks.get(&g).copied().unwrap_or(0);
            groups.iter().copied().filter(|&g| count(&now, g) <= count(&before, g)).collect()
        };
        let runtime = self.runtime.clone();
        let waiting = behind.clone();
        let done = runtime.run_until(self.bound, || self.check_step(), || waiting().is_empty());
        self.outcome()?;
        if !done {
            let starved = behind();
            return Err(self.fail(Violation {
                invariant: "no group is starved (liveness per group)",
                detail: format!(
                    "groups {starved:?} acknowledged no write within {:?} {why}, with a connected majority",
                    self.bound
                ),
            }));
        }
        self.stats.progress_checks += 1;
        Ok(())
    }

    /// The read check: runs until each of `groups` has answered at least one more read begun
    /// on its leader and (with more than one node) one more begun on a follower, and fails
    /// naming the groups that did not within the liveness bound. Call it only while those
    /// groups have every node up, a healthy network and running clients: a reader asks each
    /// node in turn, so both come within a few reads.
    pub fn require_reads(&mut self, groups: &[GroupId], why: &str) -> Result<(), SimFailure> {
        let before = lock(&self.board.reads).clone();
        let followers = self.nodes.len() > 1;
        let board = self.board.clone();
        let groups = groups.to_vec();
        let behind = move || -> Vec<GroupId> {
            let now = lock(&board.reads);
            let reads = |reads: &BTreeMap<GroupId, GroupReads>, g| {
                let counts = reads.get(&g).copied().unwrap_or_default();
                (counts.ok - counts.ok_on_followers, counts.ok_on_followers)
            };
            let short = |g: &GroupId| {
                let ((leader, follower), (leader_0, follower_0)) =
                    (reads(&now, *g), reads(&before, *g));
                leader <= leader_0 || (followers && follower <= follower_0)
            };
            groups.iter().copied().filter(short).collect()
        };
        let runtime = self.runtime.clone();
        let waiting = behind.clone();
        let done = runtime.run_until(self.bound, || self.check_step(), || waiting().is_empty());
        self.outcome()?;
        if !done {
            let short = behind();
            return Err(self.fail(Violation {
                invariant: "every group answers linearizable reads, on its leader and its followers",
                detail: format!(
                    "groups {short:?} did not answer a read on their leader and one on a follower within {:?} {why}",
                    self.bound
                ),
            }));
        }
        self.stats.read_checks += 1;
        Ok(())
    }

    /// The convergence check, after the last heal (every node up, the network healthy): the
    /// clients stand still, and within the liveness bound every node of every group must hold
    /// every write acknowledged to the group's clients in its state machine, at one index, the
    /// same on every node (as the single-group scenarios check after healing). The clients run
    /// again afterwards.
    pub fn require_convergence(&mut self) -> Result<(), SimFailure> {
        self.set_idle(self.groups.clone());
        let deadline = self.runtime.now() + self.bound;
        let outcome = loop {
            let outcome = self.converged();
            if outcome.is_ok() || self.runtime.now() >= deadline {
                break outcome;
            }
            self.run_for(CONVERGE_POLL)?;
        };
        self.set_idle([]);
        match outcome {
            Ok(writes) => {
                self.stats.converged_writes += writes;
                Ok(())
            }
            Err(detail) => Err(self.fail(Violation {
                invariant: "every acknowledged write is at its index on every node after the heal",
                detail: format!("after {:?}: {detail}", self.bound),
            })),
        }
    }

    /// How many acknowledged writes every node of their group holds, each at one index, the
    /// same on every node; or the first that one does not.
    fn converged(&self) -> Result<u64, String> {
        let nodes = lock(&self.board.nodes);
        let mut writes = 0;
        for (&group, check) in &self.checks {
            let mut applied = Vec::new();
            for &id in &self.nodes {
                let Some(member) = nodes.get(&(group, id)) else {
                    return Err(format!("group {group}: node {id} is not running"));
                };
                let mut at: BTreeMap<Bytes, u64> = BTreeMap::new();
                for (index, command) in member.recording.commands() {
                    if let Some(first) = at.insert(command.clone(), index) {
                        return Err(format!(
                            "group {group}: node {id} applied {command:?} twice, at {first} and {index}"
                        ));
                    }
                }
                applied.push((id, at));
            }
            for record in check.history.records() {
                let (RegisterOp::Write(value), OpOutcome::Ok(_)) = (record.op, &record.outcome)
                else {
                    continue;
                };
                let command = command_of(group, value);
                let mut seen: Option<(NodeId, u64)> = None;
                for (id, at) in &applied {
                    let Some(&index) = at.get(&command) else {
                        return Err(format!(
                            "group {group}: acknowledged write {command:?} missing on node {id}"
                        ));
                    };
                    match seen {
                        Some((other, first)) if first != index => {
                            return Err(format!(
                                "group {group}: acknowledged write {command:?} at index {first} on node {other}, at {index} on node {id}"
                            ))
                        }
                        _ => seen = Some((*id, index)),
                    }
                }
                writes += 1;
            }
        }
        Ok(writes)
    }
}

/// Feeds what node incarnation `at` of group `group` shows (its status, its state machine's
/// applies and restores) to the group's checks.
fn observe_group(
    check: &mut GroupCheck,
    disks: &BTreeMap<(NodeId, GroupId), SimDisk>,
    (group, at): (GroupId, (NodeId, u64)),
    node: &Node,
    record: &Record,
) -> Result<Status, Violation> {
    let id = at.0;
    if let Some(error) = node.fatal_error() {
        return Err(Violation {
            invariant: "no fatal error without an injected fault",
            detail: format!("node {id} stopped: {error}"),
        });
    }
    let status = node.status();
    check.checker.observe_status(at, &status)?;
    if status.role == Role::Leader {
        let durable_term = disks.get(&(id, group)).map_or(0, |d| d.hard_state().current_term);
        if durable_term >= status.current_term {
            check.checker.observe_leader_acted(at, status.current_term)?;
        }
        let seen = (status.current_term, status.commit_index);
        let before = check.leading.insert(at, seen);
        // A commit made by this leader's own count in this term.
        if before.is_some_and(|(term, commit)| term == status.current_term && commit < seen.1) {
            let disk_of = |voter| disks.get(&(voter, group));
            commit_durable(id, &status, &node.membership(), disk_of)?;
        }
    }
    let events = std::mem::take(&mut *lock(&record.fresh));
    let digests = &mut check.digests;
    feed_events(&mut check.checker, at, events, disks.get(&(id, group)), |index, digest| {
        check_digest(digests, id, index, digest)
    })?;
    Ok(status)
}

#[cfg(test)]
#[path = "multi_tests.rs"]
mod tests;

/// `violation`, naming the group it happened in.
fn in_group(group: GroupId, mut violation: Violation) -> Violation {
    violation.detail = format!("group {group}: {}", violation.detail);
    violation
}

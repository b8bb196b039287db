//! The key-value service under deterministic simulation: the real `KvStateMachine` (map, client
//! sessions, snapshots) on `raft_mem::sim::Simulation`, clients that keep the real client's
//! session protocol (a session registered through the log, one sequence number per write kept
//! across its retries, `ack_below` = the lowest unanswered one), gets through the server's
//! own read path (`ClientService::read`: ReadIndex, then the local state), and a seeded nemesis
//! (crashes, the crash of every node at once, partitions, an isolated or paused leader, lossy
//! links). Each seed's history must be linearizable (raft-mem's checker with the kv model) and
//! every acknowledged write to a key of its own must be readable at the end.
//!
//! `KV_SIM_SEEDS` (default 200) seeds from `KV_SIM_FIRST` (default 1); `RAFT_SIM_SEED=<n>` runs
//! one seed. A failure prints its seed and the operations that contradict each other.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use examples::kv::command::{
    decode_responses, encode_entry, Command, KvError, Op, OpResult, SessionRef,
};
use examples::kv::fault::Firewall;
use examples::kv::protocol::CommandAnswer;
use examples::kv::server::ClientService;
use examples::kv::state_machine::{KvStateMachine, SharedState};
use examples::linearizability::kv::{check_kv_history, format_explanation, KvOperation};
use examples::linearizability::{Budget, Verdict};
use futures::FutureExt;
use raft_core::{CommitError, Node, NodeId, ProposeError, WriteError};
use raft_mem::sim::{History, OpOutcome, SimRuntime, Simulation, SimulationConfig};
use raft_mem::LinkFaults;

/// The certificate name the simulated clients' entries carry (sessions belong to it).
const OWNER: &str = "client-sim.kv";
const KEYS: [&str; 2] = ["x", "y"];
/// How long a client keeps retrying one operation (the real client's `op_timeout`).
const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one attempt at one node may take before the client tries another, at least. The
/// real client keeps its first attempt in flight until the operation's deadline while it hedges
/// to other nodes; here an attempt lives for a random time up to that deadline, so that an
/// answer from a node that was paused or cut off can still arrive late, as it would there.
const ATTEMPT_TIMEOUT_MIN: Duration = Duration::from_millis(200);
/// The pause before a retry (the real client's `retry_delay`).
const RETRY_DELAY: Duration = Duration::from_millis(20);
/// How long the nemesis runs.
const CHAOS: Duration = Duration::from_secs(6);

/// The running nodes and their states, refreshed by the test after every change it makes.
#[derive(Clone, Default)]
struct Directory(Arc<Mutex<BTreeMap<NodeId, ClientServiceRef>>>);

type ClientServiceRef = Arc<ClientService>;

impl Directory {
    fn refresh(&self, sim: &Simulation<KvStateMachine>, states: &States) {
        let states = states.lock().unwrap();
        let mut running = BTreeMap::new();
        for &id in sim.ids() {
            if let (Some(node), Some(state)) = (sim.node(id), states.get(&id)) {
                let service = ClientService::new(
                    node.clone(),
                    state.clone(),
                    BTreeMap::new(),
                    Firewall::new(),
                    false,
                );
                running.insert(id, Arc::new(service));
            }
        }
        *self.0.lock().unwrap() = running;
    }

    fn get(&self, id: NodeId) -> Option<ClientServiceRef> {
        self.0.lock().unwrap().get(&id).cloned()
    }

    /// The running node after `after` (wrapping).
    fn next(&self, after: NodeId) -> Option<(NodeId, ClientServiceRef)> {
        let running = self.0.lock().unwrap();
        running
            .range(after + 1..)
            .next()
            .or_else(|| running.iter().next())
            .map(|(&id, s)| (id, s.clone()))
    }
}

/// The state each node's current state machine applies to (a new one at every start).
type States = Arc<Mutex<BTreeMap<NodeId, SharedState>>>;

/// What one attempt at one node came to.
enum Attempt {
    Answered(Result<OpResult, KvError>),
    /// Try `Some(node)` next (a redirect), or another node.
    Elsewhere(Option<NodeId>),
    /// The node may have applied the write (lost leadership after accepting it, timed out).
    MaybeApplied,
}

/// The server's proposal path for one write (as `ClientService::propose`): one entry owned by
/// the client, answered with the state machine's response.
async fn propose(node: &Node, command: Command) -> Attempt {
    let Ok(bytes) = encode_entry(Some(OWNER), vec![command]) else {
        return Attempt::Elsewhere(None);
    };
    match node.write(bytes).await {
        Ok(answer) => match decode_responses(&answer, 1).pop() {
            Some(response) => Attempt::Answered(response),
            None => Attempt::MaybeApplied,
        },
        Err(WriteError::Failed(CommitError::Dropped { .. })) => Attempt::Elsewhere(None),
        Err(WriteError::Refused(ProposeError::NotLeader { leader_id, .. })) => {
            Attempt::Elsewhere(leader_id)
        }
        Err(WriteError::Refused(_)) => Attempt::Elsewhere(None),
        Err(_) => Attempt::MaybeApplied,
    }
}

/// One client: its session, as the real client keeps it.
struct Client {
    id: u64,
    runtime: SimRuntime,
    directory: Directory,
    target: NodeId,
    session: Option<(u128, u64)>,
    next_seq: u64,
}

impl Client {
    /// Runs `command` until a node answers it or [`OP_TIMEOUT`] passes, following redirects.
    /// `Err(true)`: it may have been applied.
    async fn run(&mut self, command: Command) -> Result<Result<OpResult, KvError>, bool> {
        let deadline = self.runtime.now() + OP_TIMEOUT;
        let mut maybe_applied = false;
        while self.runtime.now() < deadline {
            let service = match self.directory.get(self.target) {
                Some(service) => service,
                None => match self.directory.next(self.target) {
                    Some((id, service)) => {
                        self.target = id;
                        service
                    }
                    None => {
                        self.runtime.sleep_for(RETRY_DELAY).await;
                        continue;
                    }
                },
            };
            let attempt = async {
                if command.op.is_read() {
                    match service.read(vec![command.clone()]).await.pop() {
                        Some(CommandAnswer::Applied(response)) => Attempt::Answered(response),
                        _ => Attempt::Elsewhere(None),
                    }
                } else {
                    propose(&service.node, command.clone()).await
                }
            };
            let left = deadline.saturating_sub(self.runtime.now()).as_millis() as u64;
            let patience =
                ATTEMPT_TIMEOUT_MIN + Duration::from_millis(self.runtime.below(left + 1));
            let outcome = futures::select_biased! {
                outcome = attempt.fuse() => outcome,
                _ = self.runtime.sleep_for(patience).fuse() => Attempt::MaybeApplied,
            };
            match outcome {
                Attempt::Answered(response) => return Ok(response),
                Attempt::Elsewhere(Some(leader)) if leader != self.target => self.target = leader,
                Attempt::Elsewhere(_) => {
                    self.target = self.directory.next(self.target).map_or(self.target, |(id, _)| id)
                }
                Attempt::MaybeApplied => {
                    maybe_applied = true;
                    self.target =
                        self.directory.next(self.target).map_or(self.target, |(id, _)| id);
                }
            }
            self.runtime.sleep_for(RETRY_DELAY).await;
        }
        Err(maybe_applied && !command.op.is_read())
    }

    /// A write in the client's session (registered first if needed): the same sequence number
    /// on every retry; `ack_below` is the sequence number itself (one write at a time, every
    /// earlier one answered).
    async fn write(&mut self, op: Op) -> OpOutcome<OpResult> {
        if self.session.is_none() {
            let id = (u128::from(self.runtime.below(u64::MAX)) << 64) | u128::from(self.id);
            match self.run(Command { session: None, op: Op::Register { id } }).await {
                Ok(Ok(OpResult::Registered { id: opened, incarnation })) if opened == id => {
                    self.session = Some((id, incarnation));
                    self.next_seq = 0;
                }
                // The write itself was not sent.
                _ => return OpOutcome::Failed,
            }
        }
        let Some((id, incarnation)) = self.session else { return OpOutcome::Failed };
        let seq = self.next_seq;
        self.next_seq += 1;
        let session = Some(SessionRef { id, incarnation, seq, ack_below: seq });
        match self.run(Command { session, op }).await {
            Ok(Ok(result)) => OpOutcome::Ok(result),
            Ok(Err(KvError::UnknownSession)) => {
                // Evicted: an earlier attempt may have been applied before (as the real
                // client's `SessionExpired`, whose outcome is unknown).
                self.session = None;
                OpOutcome::Unknown
            }
            Ok(Err(_)) => OpOutcome::Failed,
            Err(true) => OpOutcome::Unknown,
            Err(false) => OpOutcome::Failed,
        }
    }

    async fn get(&mut self, key: Bytes) -> OpOutcome<OpResult> {
        match self.run(Command { session: None, op: Op::Get { key } }).await {
            Ok(Ok(result)) => OpOutcome::Ok(result),
            _ => OpOutcome::Failed,
        }
    }
}

/// What a run produced.
struct Run {
    history: Vec<KvOperation>,
    /// `(key, value)` of every acknowledged write to a key of its own.
    acknowledged: Vec<(Bytes, Bytes)>,
    /// What the final reads found for those keys.
    read_back: Vec<Option<Bytes>>,
}

fn spawn_client(
    sim: &Simulation<KvStateMachine>,
    directory: &Directory,
    history: &History<Op, OpResult>,
    acknowledged: &Arc<Mutex<Vec<(Bytes, Bytes)>>>,
    stop: &Arc<AtomicBool>,
    id: u64,
) {
    let runtime = sim.runtime.clone();
    let mut client = Client {
        id,
        runtime: runtime.clone(),
        directory: directory.clone(),
        target: 1,
        session: None,
        next_seq: 0,
    };
    let (history, acknowledged, stop) = (history.clone(), acknowledged.clone(), stop.clone());
    sim.runtime.spawn_task(async move {
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let key =
                Bytes::from_static(KEYS[runtime.below(KEYS.len() as u64) as usize].as_bytes());
            let unique = Bytes::from(format!("c{id}-{n}"));
            let op = match runtime.below(100) {
                0..35 => Op::Get { key },
                35..60 => Op::Put { key, value: unique },
                60..70 => Op::Delete { key },
                70..88 => {
                    let expected = (runtime.below(4) != 0).then(|| {
                        let (other, back) = (runtime.below(3), runtime.below(4));
                        Bytes::from(format!("c{other}-{}", n.saturating_sub(back)))
                    });
                    Op::Cas { key, expected, new: Some(unique) }
                }
                _ => Op::Put { key: Bytes::from(format!("own-{id}-{n}")), value: unique },
            };
            let own = matches!(&op, Op::Put { key, .. } if key.starts_with(b"own-"));
            let pending = history.call(id, op.clone(), runtime.now());
            let outcome = match op.clone() {
                Op::Get { key } => client.get(key).await,
                op => client.write(op).await,
            };
            if let (true, OpOutcome::Ok(_), Op::Put { key, value }) = (own, &outcome, &op) {
                acknowledged.lock().unwrap().push((key.clone(), value.clone()));
            }
            pending.finish(outcome, runtime.now());
            runtime.sleep_for(Duration::from_millis(1 + runtime.below(10))).await;
        }
    });
}

/// A client that believes `node` leads reads one key from it (and only it), waiting up to
/// [`OP_TIMEOUT`] for the answer.
fn spawn_pinned_read(
    sim: &Simulation<KvStateMachine>,
    directory: &Directory,
    history: &History<Op, OpResult>,
    node: NodeId,
    client: u64,
) {
    let Some(service) = directory.get(node) else { return };
    let runtime = sim.runtime.clone();
    let key = Bytes::from_static(KEYS[runtime.below(KEYS.len() as u64) as usize].as_bytes());
    let command = Command { session: None, op: Op::Get { key } };
    let pending = history.call(client, command.op.clone(), runtime.now());
    sim.runtime.spawn_task(async move {
        let outcome = futures::select_biased! {
            answers = service.read(vec![command]).fuse() => match answers.into_iter().next() {
                Some(CommandAnswer::Applied(Ok(result))) => OpOutcome::Ok(result),
                _ => OpOutcome::Failed,
            },
            _ = runtime.sleep_for(OP_TIMEOUT).fuse() => OpOutcome::Failed,
        };
        pending.finish(outcome, runtime.now());
    });
}

/// The faults of one seed, one at a time, between slices of virtual time.
fn nemesis(
    sim: &mut Simulation<KvStateMachine>,
    directory: &Directory,
    states: &States,
    history: &History<Op, OpResult>,
) -> Result<(), String> {
    let mut readers = 100;
    let ids: Vec<NodeId> = sim.ids().to_vec();
    let end = sim.now() + CHAOS;
    while sim.now() < end {
        let pick =
            |sim: &Simulation<KvStateMachine>| ids[sim.runtime.below(ids.len() as u64) as usize];
        let leader = ids
            .iter()
            .copied()
            .find(|&id| sim.node(id).is_some_and(|n| n.status().leader_id == Some(id)));
        let victim = match leader {
            Some(l) if sim.runtime.below(2) == 0 => l,
            _ => pick(sim),
        };
        let hold = Duration::from_millis(200 + sim.runtime.below(1500));
        match sim.runtime.below(10) {
            0..3 => {
                sim.crash(victim);
                directory.refresh(sim, states);
                sim.run_for(hold).map_err(|f| f.to_string())?;
                sim.start(victim).map_err(|f| f.to_string())?;
            }
            3 => {
                // A power cut of the whole cluster.
                sim.crash_all();
                directory.refresh(sim, states);
                sim.run_for(hold).map_err(|f| f.to_string())?;
                for &id in &ids {
                    sim.start(id).map_err(|f| f.to_string())?;
                }
            }
            4..6 => {
                let mut minority = vec![victim];
                if ids.len() > 3 && sim.runtime.below(2) == 0 {
                    let other = pick(sim);
                    if other != victim {
                        minority.push(other);
                    }
                }
                let majority: Vec<NodeId> =
                    ids.iter().copied().filter(|id| !minority.contains(id)).collect();
                sim.network.partition(&[minority, majority]);
                sim.run_for(hold).map_err(|f| f.to_string())?;
                sim.network.heal();
            }
            6 => {
                // A paused node (SIGSTOP, a long GC pause), often the leader; clients that
                // believe it leads keep sending it reads, which wait for it to resume.
                sim.pause(victim);
                let started = sim.now();
                while sim.now() < started + hold {
                    readers += 1;
                    spawn_pinned_read(sim, directory, history, victim, readers);
                    let pause = Duration::from_millis(50 + sim.runtime.below(100));
                    sim.run_for(pause).map_err(|f| f.to_string())?;
                }
                sim.resume(victim);
            }
            7 => {
                sim.network.set_default_faults(LinkFaults::UNRELIABLE);
                sim.run_for(hold).map_err(|f| f.to_string())?;
                sim.network.set_default_faults(LinkFaults::RELIABLE);
            }
            _ => sim.run_for(hold).map_err(|f| f.to_string())?,
        }
        directory.refresh(sim, states);
        sim.run_for(Duration::from_millis(sim.runtime.below(300))).map_err(|f| f.to_string())?;
    }
    Ok(())
}

fn run_seed(seed: u64) -> Result<Run, String> {
    let nodes = if seed.is_multiple_of(4) { 5 } else { 3 };
    let config = SimulationConfig::new(nodes, seed);
    let states: States = Arc::default();
    let factory_states = states.clone();
    let mut sim = Simulation::builder(config)
        .state_machine(move |id| {
            let state = SharedState::new();
            factory_states.lock().unwrap().insert(id, state.clone());
            KvStateMachine::new(state)
        })
        .config_hook(Arc::new(|config: &mut raft_core::Config| {
            // Snapshots every few dozen entries: restarts restore them, laggards install them.
            config.snapshot_interval_entries = 40;
            config.snapshot_keep_entries = 10;
        }))
        .build()
        .map_err(|f| f.to_string())?;
    let directory = Directory::default();
    directory.refresh(&sim, &states);
    let history = History::new();
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    for client in 0..3 {
        spawn_client(&sim, &directory, &history, &acknowledged, &stop, client);
    }
    sim.run_for(Duration::from_millis(500)).map_err(|f| f.to_string())?;
    nemesis(&mut sim, &directory, &states, &history)?;
    // Heal, restart everything, let the clients finish on a healthy cluster.
    sim.calm();
    for id in sim.ids().to_vec() {
        sim.start(id).map_err(|f| f.to_string())?;
    }
    directory.refresh(&sim, &states);
    sim.run_for(Duration::from_secs(2)).map_err(|f| f.to_string())?;
    stop.store(true, Ordering::SeqCst);
    sim.run_for(OP_TIMEOUT + Duration::from_secs(1)).map_err(|f| f.to_string())?;

    // Final reads of every own key, through the read path, by a fresh client.
    let acknowledged = acknowledged.lock().unwrap().clone();
    let reader = Arc::new(futures::lock::Mutex::new(Client {
        id: 99,
        runtime: sim.runtime.clone(),
        directory: directory.clone(),
        target: 1,
        session: None,
        next_seq: 0,
    }));
    let mut read_back = Vec::new();
    for (key, _) in &acknowledged {
        let (reader, key) = (reader.clone(), key.clone());
        let value = sim
            .block_on("a final read", Duration::from_secs(30), async move {
                reader.lock().await.get(key).await
            })
            .map_err(|f| f.to_string())?;
        read_back.push(match value {
            OpOutcome::Ok(OpResult::Value(value)) => value,
            other => return Err(format!("a final read failed: {other:?}")),
        });
    }
    Ok(Run { history: history.records(), acknowledged, read_back })
}

/// Runs one seed and checks its history; returns the number of operations checked.
fn check_seed(seed: u64) -> Result<usize, String> {
    let run = run_seed(seed)?;
    let lost: Vec<_> = run
        .acknowledged
        .iter()
        .zip(&run.read_back)
        .filter(|((_, value), read)| read.as_ref() != Some(value))
        .collect();
    if !lost.is_empty() {
        return Err(format!("acknowledged writes lost: {lost:?}"));
    }
    let report = check_kv_history(&run.history, Budget::default());
    match report.verdict {
        Verdict::Linearizable => Ok(report.searched),
        Verdict::NotLinearizable(explanation) => Err(format!(
            "not linearizable; these {} operations contradict each other (minimal: {}):\n{}",
            explanation.ops.len(),
            explanation.minimal,
            format_explanation(&run.history, &explanation)
        )),
        Verdict::Unknown => {
            Err(format!("the check ran out of budget ({} operations)", report.searched))
        }
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(default)
}

/// The seeds of this run: `RAFT_SIM_SEED` alone, or `KV_SIM_SEEDS` from `KV_SIM_FIRST`.
fn seeds() -> Vec<u64> {
    match std::env::var("RAFT_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => vec![seed],
        None => {
            let first = env("KV_SIM_FIRST", 1);
            (first..first + env("KV_SIM_SEEDS", 200)).collect()
        }
    }
}

/// Runs every `SHARDS`-th seed from position `shard` (the shards run in parallel, one per core).
fn run_shard(shard: usize) {
    let seeds: Vec<u64> = seeds().into_iter().skip(shard).step_by(SHARDS).collect();
    let started = std::time::Instant::now();
    let mut operations = 0;
    let mut failures = Vec::new();
    for &seed in &seeds {
        match check_seed(seed) {
            Ok(checked) => operations += checked,
            Err(error) => {
                eprintln!("seed {seed} failed (replay with RAFT_SIM_SEED={seed}): {error}");
                failures.push(seed);
                if std::env::var("KV_SIM_KEEP_GOING").is_err() {
                    break;
                }
            }
        }
    }
    println!(
        "shard {shard}: {} seeds, {operations} operations checked, {:?}; failing seeds: {failures:?}",
        seeds.len(),
        started.elapsed()
    );
    assert!(failures.is_empty(), "failing seeds: {failures:?}");
}

/// How many tests share the seeds.
const SHARDS: usize = 2;

#[test]
fn the_kv_service_is_linearizable_under_faults_shard_0() {
    run_shard(0);
}

#[test]
fn the_kv_service_is_linearizable_under_faults_shard_1() {
    run_shard(1);
}

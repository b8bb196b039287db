//! The key-value service under deterministic simulation: the real `KvStateMachine` (map, client
//! sessions, snapshots) on `raft_mem::sim::Simulation`, the real client (`KvClient`: its
//! session numbering, retries, hedging, redirects and back-off) talking to the real server
//! (`ClientService::handle`: writes through the log, reads through ReadIndex) through an
//! in-process transport in virtual time, and the library's seeded `FaultSchedule` (crashes,
//! the crash of every node at once, pauses, partitions with or without a bridge, an isolated or
//! paused leader with readers pinned to it, lossy and slow links, full disks, membership
//! changes). Each seed's history must be linearizable (raft-mem's checker with the kv model)
//! and every acknowledged write to a key of its own must be readable at the end.
//!
//! `KV_SIM_SEEDS` (default 200) seeds from `KV_SIM_FIRST` (default 1); `RAFT_SIM_SEED=<n>` runs
//! one seed. A failure prints its seed and the operations that contradict each other.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use examples::kv::attempt::{ClientTransport, Routing};
use examples::kv::auth::{CertRole, Principal};
use examples::kv::client::{ClientError, KvClient};
use examples::kv::clock::within;
use examples::kv::command::{Op, OpResult, SessionId};
use examples::kv::config::MemberAddrs;
use examples::kv::connections::{CallError, ClientOptions};
use examples::kv::fault::Firewall;
use examples::kv::protocol::{ClientRequest, ClientResponse};
use examples::kv::server::ClientService;
use examples::kv::state_machine::{KvStateMachine, SharedState};
use examples::linearizability::kv::{check_kv_history, format_explanation, KvOperation};
use examples::linearizability::{Budget, Verdict};
use futures::future::BoxFuture;
use futures::FutureExt;
use raft_core::NodeId;
use raft_mem::sim::{
    FaultSchedule, History, OpOutcome, RunningNodes, SimRuntime, Simulation, SimulationConfig,
};

const KEYS: [&str; 2] = ["x", "y"];
/// The client's options: the real client's defaults, but an operation gives up after 5 s
/// instead of 15 (the run ends sooner after the clients stop).
fn client_options() -> ClientOptions {
    ClientOptions { op_timeout: Duration::from_secs(5), ..ClientOptions::default() }
}
/// Ids that may have an address (founders and the nodes the schedule adds).
const MAX_ID: NodeId = 64;

/// The state each node's current state machine applies to (a new one at every start).
type States = Arc<Mutex<BTreeMap<NodeId, SharedState>>>;

/// The address of node `id` in this simulation: only a name (the transport finds nodes by id).
fn address(id: NodeId, port: u16) -> SocketAddr {
    let [.., a, b] = id.to_be_bytes();
    SocketAddr::from(([10, 0, a, b], port))
}

fn addresses(ids: impl IntoIterator<Item = NodeId>) -> BTreeMap<NodeId, SocketAddr> {
    ids.into_iter().map(|id| (id, address(id, 7000))).collect()
}

/// The client port of the simulated nodes: a request runs `ClientService::handle` as a task of
/// the node (a paused node answers once it resumes, a crash loses the answer), after and
/// before a small network delay; a node that is down refuses the connection.
struct SimTransport {
    runtime: SimRuntime,
    nodes: RunningNodes<KvStateMachine>,
    states: States,
    routing: Routing,
    options: ClientOptions,
}

impl SimTransport {
    fn new(sim: &Simulation<KvStateMachine>, states: &States, known: &[NodeId]) -> Self {
        Self::with(&sim.runtime, &sim.running_nodes(), states, known)
    }

    /// A transport to the nodes of `nodes`, knowing the addresses of `known`.
    fn with(
        runtime: &SimRuntime,
        nodes: &RunningNodes<KvStateMachine>,
        states: &States,
        known: &[NodeId],
    ) -> Self {
        let options = client_options();
        Self {
            runtime: runtime.clone(),
            nodes: nodes.clone(),
            states: states.clone(),
            routing: Routing::new(addresses(known.iter().copied()), options.suspect_for),
            options,
        }
    }
}

/// The node's client service, if it runs: the server's own request handling, its bounds on
/// the virtual clock.
fn service(
    runtime: &SimRuntime,
    nodes: &RunningNodes<KvStateMachine>,
    states: &States,
    id: NodeId,
) -> Option<ClientService> {
    let node = nodes.get(id)?;
    let state = states.lock().unwrap().get(&id)?.clone();
    let configured = (1..=MAX_ID)
        .map(|id| (id, MemberAddrs { raft: address(id, 6000), client: address(id, 7000) }))
        .collect();
    let mut service = ClientService::new(node, state, configured, Firewall::new(), false);
    service.clock = Arc::new(runtime.clone());
    Some(service)
}

impl ClientTransport for SimTransport {
    fn send(
        &self,
        node: NodeId,
        request: Arc<ClientRequest>,
    ) -> BoxFuture<'static, Result<ClientResponse, CallError>> {
        let (runtime, nodes, states) =
            (self.runtime.clone(), self.nodes.clone(), self.states.clone());
        let limit = self.options.attempt_timeout;
        async move {
            let delay = |runtime: &SimRuntime| Duration::from_micros(200 + runtime.below(4_000));
            let exchange = async {
                runtime.sleep_for(delay(&runtime)).await;
                let Some(service) = service(&runtime, &nodes, &states, node) else {
                    return Err(CallError::Connect { node, reason: "node down".into() });
                };
                let (answer, answered) = futures::channel::oneshot::channel();
                let principal = Principal { role: CertRole::Client, name: "sim".into() };
                runtime.tagged(node).spawn_task(async move {
                    let _ = answer.send(service.handle(&principal, (*request).clone()).await);
                });
                let response = answered
                    .await
                    .map_err(|_| CallError::NoAnswer { node, reason: "connection lost".into() })?;
                runtime.sleep_for(delay(&runtime)).await;
                Ok(response)
            };
            within(&runtime, limit, exchange)
                .await
                .unwrap_or_else(|| Err(CallError::NoAnswer { node, reason: "timed out".into() }))
        }
        .boxed()
    }

    fn routing(&self) -> &Routing {
        &self.routing
    }

    fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Drawn from the simulation's seed: a run replays exactly.
    fn session_id(&self) -> Result<SessionId, ClientError> {
        Ok((u128::from(self.runtime.below(u64::MAX)) << 64)
            | u128::from(self.runtime.below(u64::MAX)))
    }
}

type SimKvClient = KvClient<SimTransport, SimRuntime>;

/// Runs `op` through the real client and records its outcome as the history needs it: what the
/// client answered, unknown when the client says the outcome is unknown, failed otherwise.
async fn perform(client: &SimKvClient, op: Op) -> OpOutcome<OpResult> {
    let result = match op {
        Op::Get { key } => client.get(key).await.map(OpResult::Value),
        Op::Put { key, value } => client.put(key, value).await.map(|()| OpResult::Written),
        Op::Delete { key } => client.delete(key).await.map(|existed| OpResult::Deleted { existed }),
        Op::Cas { key, expected, new } => {
            client.cas(key, expected, new).await.map(|swapped| OpResult::Cas { swapped })
        }
        Op::Register { .. } | Op::Tombstone { .. } => return OpOutcome::Failed,
    };
    match result {
        Ok(result) => OpOutcome::Ok(result),
        Err(e) if e.outcome_unknown() => OpOutcome::Unknown,
        Err(_) => OpOutcome::Failed,
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

/// The shared record of a run's clients.
#[derive(Clone, Default)]
struct Record {
    history: History<Op, OpResult>,
    acknowledged: Arc<Mutex<Vec<(Bytes, Bytes)>>>,
    stop: Arc<AtomicBool>,
    /// Clients still running.
    running: Arc<AtomicU64>,
}

fn spawn_client(sim: &Simulation<KvStateMachine>, states: &States, record: &Record, id: u64) {
    let runtime = sim.runtime.clone();
    let client =
        KvClient::with_transport(SimTransport::new(sim, states, sim.founders()), runtime.clone());
    let record = record.clone();
    record.running.fetch_add(1, Ordering::SeqCst);
    sim.spawn(async move {
        let mut n = 0u64;
        while !record.stop.load(Ordering::SeqCst) {
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
            let pending = record.history.call(id, op.clone(), runtime.now());
            let outcome = perform(&client, op.clone()).await;
            if let (OpOutcome::Ok(_), Op::Put { key, value }) = (&outcome, &op) {
                if key.starts_with(b"own-") {
                    record.acknowledged.lock().unwrap().push((key.clone(), value.clone()));
                }
            }
            pending.finish(outcome, runtime.now());
            runtime.sleep_for(Duration::from_millis(1 + runtime.below(10))).await;
        }
        record.running.fetch_sub(1, Ordering::SeqCst);
    });
}

/// A client that knows only `node` (configured with that one address, believing it leads)
/// reads a key from it, again and again for `duration`, one read at a time: the fault schedule
/// pins it to an isolated or paused leader. Each read starts from that one address (a redirect
/// teaches a client other nodes), as a fresh client configured with it would.
fn spawn_pinned_reader(
    sim: &Simulation<KvStateMachine>,
    states: &States,
    record: &Record,
    node: NodeId,
    duration: Duration,
    id: u64,
) {
    let (runtime, nodes, states) = (sim.runtime.clone(), sim.running_nodes(), states.clone());
    let history = record.history.clone();
    let end = runtime.now() + duration;
    sim.spawn(async move {
        while runtime.now() < end {
            let transport = SimTransport::with(&runtime, &nodes, &states, &[node]);
            let client = KvClient::with_transport(transport, runtime.clone());
            let key =
                Bytes::from_static(KEYS[runtime.below(KEYS.len() as u64) as usize].as_bytes());
            let op = Op::Get { key };
            let pending = history.call(id, op.clone(), runtime.now());
            let outcome = perform(&client, op).await;
            pending.finish(outcome, runtime.now());
            runtime.sleep_for(Duration::from_millis(3 + runtime.below(20))).await;
        }
    });
}

/// The fault schedule of one seed: six rounds (up to 1.2 s each, the actions' own durations
/// added), every fault on every node, membership changes included; 200 seeds meet every
/// action many times within the CI budget.
fn schedule() -> FaultSchedule {
    FaultSchedule {
        rounds: Some(6),
        max_round: Duration::from_millis(1200),
        ..FaultSchedule::default()
    }
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
    let record = Record::default();
    for client in 0..3 {
        spawn_client(&sim, &states, &record, client);
    }
    let (pinned_states, pinned_record) = (states.clone(), record.clone());
    let mut next_reader = 1_000;
    sim.on_pinned_reads(Some(Box::new(move |sim, node, duration| {
        spawn_pinned_reader(sim, &pinned_states, &pinned_record, node, duration, next_reader);
        next_reader += 1;
    })));
    sim.run_for(Duration::from_millis(500)).map_err(|f| f.to_string())?;
    sim.run_fault_schedule(&schedule()).map_err(|f| f.to_string())?;
    // Heal, restart everything, let the clients finish on a healthy cluster.
    sim.converge(Duration::from_secs(30)).map_err(|f| f.to_string())?;
    sim.run_for(Duration::from_secs(1)).map_err(|f| f.to_string())?;
    record.stop.store(true, Ordering::SeqCst);
    let patience = client_options().op_timeout * 2;
    sim.run_until("the clients finished", patience, |_| record.running.load(Ordering::SeqCst) == 0)
        .map_err(|f| f.to_string())?;

    // Final reads of every own key, through the read path, by a fresh client.
    let acknowledged = record.acknowledged.lock().unwrap().clone();
    let known: Vec<NodeId> = sim.ids().to_vec();
    let reader = Arc::new(KvClient::with_transport(
        SimTransport::new(&sim, &states, &known),
        sim.runtime.clone(),
    ));
    let mut read_back = Vec::new();
    for (key, _) in &acknowledged {
        let (reader, key) = (reader.clone(), key.clone());
        let value = sim
            .block_on("a final read", Duration::from_secs(30), async move { reader.get(key).await })
            .map_err(|f| f.to_string())?;
        read_back.push(value.map_err(|e| format!("a final read failed: {e}"))?);
    }
    Ok(Run { history: record.history.records(), acknowledged, read_back })
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

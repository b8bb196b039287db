//! Testing your own state machine: the example the README's "Testing your state machine"
//! section points to. It uses only the public API of `raft-core` and `raft-mem`, as a user's
//! crate would.
//!
//! The state machine is a small "list-append" store: each key holds a list of numbers, a write
//! appends a number to a key's list and answers the list, a read returns it. It takes snapshots
//! in its own format. The simulation runs three nodes of it under the seeded fault schedule
//! (crashes, restarts, pauses, partitions, lossy and slow links, membership changes) while
//! clients write and read; every Raft invariant is checked after every step, every node's
//! state is compared through a digest at every applied index, and at the end the recorded
//! history is checked for linearizability by `raft_mem::linearizability` against a model of
//! the state machine written here (`ListAppendModel`), as a user would write one.
//!
//! A failing seed is printed; replay it with `RAFT_SIM_SEED=<seed> cargo test -p raft-mem
//! --test user_state_machine`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use raft_core::{
    Bytes, Config, Entry, SnapshotMeta, SnapshotStream, StateMachine, StateMachineError,
};
use raft_mem::linearizability::{self, Budget, Model, Verdict};
use raft_mem::sim::{
    Dice, FaultSchedule, History, OpOutcome, OpRecord, SimFailure, Simulation, SimulationConfig,
};

// ---------------------------------------------------------------------------------------------
// The user's state machine.

/// Each key holds the list of numbers appended to it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash)]
struct ListAppend {
    lists: BTreeMap<u64, Vec<u64>>,
}

/// What clients ask: append `value` to `key`'s list, or read `key`'s list.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Append { key: u64, value: u64 },
    Read { key: u64 },
}

fn encode_append(key: u64, value: u64) -> Bytes {
    Bytes::from(format!("{key}={value}"))
}

fn decode_append(command: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(command).ok()?;
    let (key, value) = text.split_once('=')?;
    Some((key.parse().ok()?, value.parse().ok()?))
}

fn encode_list(list: &[u64]) -> String {
    list.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

fn decode_list(text: &str) -> Vec<u64> {
    text.split(',').filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect()
}

impl ListAppend {
    fn append(&mut self, key: u64, value: u64) -> String {
        let list = self.lists.entry(key).or_default();
        list.push(value);
        encode_list(list)
    }

    fn read(&self, key: u64) -> Vec<u64> {
        self.lists.get(&key).cloned().unwrap_or_default()
    }

    /// A digest of the whole state, for divergence detection.
    fn digest(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        self.lists.hash(&mut hasher);
        hasher.finish()
    }
}

#[async_trait]
impl StateMachine for ListAppend {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        let mut answers = Vec::with_capacity(entries.len());
        for entry in entries {
            // Entries the library appends itself (no command) are answered with nothing.
            let answer = match entry.command().map(|c| decode_append(c)) {
                None => String::new(),
                Some(Some((key, value))) => self.append(key, value),
                Some(None) => return Err(StateMachineError::new("not an append command")),
            };
            answers.push(Bytes::from(answer));
        }
        Ok(answers)
    }

    async fn snapshot(&mut self) -> Result<Option<SnapshotStream>, StateMachineError> {
        // One line per key: "key:v1,v2,...".
        let text: String =
            self.lists.iter().map(|(key, list)| format!("{key}:{}\n", encode_list(list))).collect();
        let chunk: Result<Bytes, StateMachineError> = Ok(Bytes::from(text));
        Ok(Some(futures::stream::iter([chunk]).boxed()))
    }

    async fn restore(
        &mut self,
        _meta: &SnapshotMeta,
        mut data: SnapshotStream,
    ) -> Result<(), StateMachineError> {
        let mut bytes = Vec::new();
        while let Some(chunk) = data.next().await {
            bytes.extend_from_slice(&chunk?);
        }
        let text =
            String::from_utf8(bytes).map_err(|e| StateMachineError::with_source("utf-8", e))?;
        let mut lists = BTreeMap::new();
        for line in text.lines() {
            let (key, list) =
                line.split_once(':').ok_or_else(|| StateMachineError::new("corrupt snapshot"))?;
            let key = key.parse().map_err(|e| StateMachineError::with_source("key", e))?;
            lists.insert(key, decode_list(list));
        }
        self.lists = lists;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The simulation.

/// One operation of the recorded history.
type Record = OpRecord<Op, Vec<u64>>;

const KEYS: u64 = 3;
const CLIENTS: u64 = 3;
const OPS_PER_CLIENT: u64 = 150;

/// Snapshots every 20 entries, so that restarts and lagging nodes restore them.
fn with_snapshots(config: &mut Config) {
    config.snapshot_interval_entries = 20;
    config.snapshot_keep_entries = 5;
}

/// One client: appends unique numbers to random keys and reads random keys.
async fn client_workload(
    mut client: raft_mem::sim::SimClient<ListAppend, Op, Vec<u64>>,
    number: u64,
    seed: u64,
    done: Arc<AtomicU64>,
) {
    let mut dice = Dice(seed ^ number);
    for k in 0..OPS_PER_CLIENT {
        let key = dice.below(KEYS);
        if dice.chance(50) {
            // Unique values: client number and sequence.
            let value = number * 1_000_000 + k;
            let command = encode_append(key, value);
            let decode = |bytes: &Bytes| decode_list(std::str::from_utf8(bytes).unwrap_or(""));
            client.write(Op::Append { key, value }, command, decode).await;
        } else {
            client.read(Op::Read { key }, |sm: &ListAppend| sm.read(key)).await;
        }
        client.sleep(Duration::from_millis(5 + dice.below(50))).await;
    }
    done.fetch_add(1, Ordering::SeqCst);
}

/// Runs one seed: three nodes of the user's state machine under the fault schedule while
/// clients run, then heals the cluster and checks the history.
fn simulate(seed: u64) -> Result<Vec<Record>, SimFailure> {
    let mut sim = Simulation::builder(SimulationConfig::new(3, seed))
        .state_machine(|_id| ListAppend::default())
        .digest(ListAppend::digest)
        .config_hook(Arc::new(with_snapshots))
        .build()?;
    let history = History::new();
    let done = Arc::new(AtomicU64::new(0));
    for number in 0..CLIENTS {
        let client = sim.client(number, &history);
        sim.spawn(client_workload(client, number, seed, done.clone()));
    }
    let schedule = sim.run_fault_schedule(&FaultSchedule::default())?;
    sim.converge(Duration::from_secs(30))?;
    sim.run_until("every client finished", Duration::from_secs(120), |_| {
        done.load(Ordering::SeqCst) == CLIENTS
    })?;
    // Every running node's state machine holds the same lists once caught up.
    let leader = sim.converge(Duration::from_secs(30))?;
    let reference = sim.inspect(leader, |sm| sm.clone()).expect("the leader runs");
    for &id in sim.ids() {
        if let Some(state) = sim.inspect(id, |sm| sm.clone()) {
            if sim.members().is_some_and(|m| m.contains(&id)) {
                assert_eq!(state, reference, "seed {seed}: node {id} agrees with the leader");
            }
        }
    }
    let stats = sim.stats();
    let restores: usize = sim.ids().iter().map(|&id| sim.restores(id).len()).sum();
    println!(
        "seed {seed}: {} schedule rounds, {} crashes, {} pauses, {} snapshot restores (current incarnations), {:?} virtual",
        schedule.rounds, stats.crashes, stats.pauses, restores, sim.now()
    );
    Ok(history.records())
}

// ---------------------------------------------------------------------------------------------
// The history check: the state machine's sequential specification as a `Model` for raft-mem's
// linearizability checker.

/// List-append, one key at a time: the state is the key's list; an append answers the list
/// with its value at the end, a read answers the list.
struct ListAppendModel;

impl Model for ListAppendModel {
    type State = Vec<u64>;
    type Input = Op;
    type Output = Vec<u64>;

    fn init(&self) -> Vec<u64> {
        Vec::new()
    }

    fn step(&self, list: &Vec<u64>, op: &Op) -> (Vec<u64>, Vec<u64>) {
        match op {
            Op::Append { value, .. } => {
                let mut list = list.clone();
                list.push(*value);
                (list.clone(), list)
            }
            Op::Read { .. } => (list.clone(), list.clone()),
        }
    }

    /// Keys are independent: each key's operations are checked alone.
    fn partition(&self, history: &[Record]) -> Vec<Vec<usize>> {
        let mut by_key: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (i, record) in history.iter().enumerate() {
            let (Op::Append { key, .. } | Op::Read { key }) = record.op;
            by_key.entry(key).or_default().push(i);
        }
        by_key.into_values().collect()
    }

    fn is_read_only(&self, op: &Op) -> bool {
        matches!(op, Op::Read { .. })
    }
}

/// Checks `history` for linearizability against [`ListAppendModel`]; the verdict.
fn check_history(history: &[Record]) -> Verdict {
    linearizability::check(&ListAppendModel, history, Budget::default()).verdict
}

#[test]
fn a_user_state_machine_survives_the_fault_schedule() {
    let seeds: Vec<u64> = match std::env::var("RAFT_SIM_SEED") {
        Ok(_) => vec![SimulationConfig::seed_from_env(0)],
        Err(_) => (7_000..7_004).collect(),
    };
    for seed in seeds {
        let history = simulate(seed).unwrap_or_else(|failure| panic!("{failure}"));
        let count =
            |f: fn(&OpOutcome<Vec<u64>>) -> bool| history.iter().filter(|r| f(&r.outcome)).count();
        let acknowledged = count(|o| matches!(o, OpOutcome::Ok(_)));
        let unknown = count(|o| matches!(o, OpOutcome::Unknown));
        let failed = count(|o| matches!(o, OpOutcome::Failed));
        println!("seed {seed}: {acknowledged} ok, {unknown} unknown, {failed} failed operations");
        assert!(acknowledged > 0, "seed {seed}: some operations completed");
        match check_history(&history) {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable(explanation) => {
                let ops: Vec<&Record> = explanation.ops.iter().map(|&i| &history[i]).collect();
                panic!("seed {seed}: not linearizable; these contradict each other: {ops:#?}")
            }
            Verdict::Unknown => panic!("seed {seed}: the check ran out of budget"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Divergence detection.

/// A state machine with a non-deterministic apply: each append also records which key a
/// `HashMap` iterates first, and `HashMap` iteration order differs from one instance to the
/// next (as it does between processes).
#[derive(Debug, Default)]
struct NonDeterministic {
    seen: HashMap<u64, u64>,
    trail: Vec<u64>,
}

#[async_trait]
impl StateMachine for NonDeterministic {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        for entry in entries {
            if let Some((key, value)) = entry.command().and_then(|c| decode_append(c)) {
                self.seen.insert(key, value);
                let first = self.seen.keys().next().copied().unwrap_or_default();
                self.trail.push(first);
            }
        }
        Ok(vec![Bytes::new(); entries.len()])
    }
}

fn trail_digest(sm: &NonDeterministic) -> u64 {
    let mut hasher = DefaultHasher::new();
    sm.trail.hash(&mut hasher);
    hasher.finish()
}

/// Writes to many keys through the leader and lets every node apply them.
fn run_writes<S: StateMachine>(sim: &mut Simulation<S>) -> Result<(), SimFailure> {
    let mut last = 0;
    for k in 0..40 {
        last = sim.write(encode_append(k % 16, k), Duration::from_secs(10))?;
    }
    sim.wait_applied(last, Duration::from_secs(10))
}

#[test]
fn a_non_deterministic_apply_is_caught() {
    let seed = SimulationConfig::seed_from_env(7_100);
    let outcome = Simulation::builder(SimulationConfig::new(3, seed))
        .state_machine(|_id| NonDeterministic::default())
        .digest(trail_digest)
        .build()
        .and_then(|mut sim| run_writes(&mut sim));
    let failure = outcome.expect_err("the divergence is caught");
    assert_eq!(
        failure.violation.invariant,
        "state machines agree at every applied index (deterministic apply)"
    );
    assert_eq!(failure.seed, seed);
    assert!(failure.to_string().contains(&format!("RAFT_SIM_SEED={seed}")), "{failure}");
}

#[test]
fn a_deterministic_apply_passes_the_digest_check() {
    let seed = SimulationConfig::seed_from_env(7_100);
    let mut sim = Simulation::builder(SimulationConfig::new(3, seed))
        .state_machine(|_id| ListAppend::default())
        .digest(ListAppend::digest)
        .build()
        .unwrap_or_else(|failure| panic!("{failure}"));
    run_writes(&mut sim).unwrap_or_else(|failure| panic!("{failure}"));
}

/// A completed operation of `client`, called and returned at `(call, ret)` milliseconds.
fn record(client: u64, op: Op, (call, ret): (u64, u64), outcome: OpOutcome<Vec<u64>>) -> Record {
    let at = Duration::from_millis;
    Record { client, op, call: at(call), ret: Some(at(ret)), outcome }
}

#[test]
fn the_history_check_rejects_a_stale_read() {
    let history = vec![
        record(0, Op::Append { key: 0, value: 1 }, (1, 2), OpOutcome::Ok(vec![1])),
        // Called after the append returned, yet it does not see it.
        record(1, Op::Read { key: 0 }, (3, 4), OpOutcome::Ok(vec![])),
    ];
    match check_history(&history) {
        Verdict::NotLinearizable(explanation) => assert_eq!(explanation.ops, vec![0, 1]),
        other => panic!("a stale read went unnoticed: {other:?}"),
    }
}

#[test]
fn the_history_check_rejects_a_failed_append_that_took_effect() {
    let history = vec![
        // Certainly not applied...
        record(0, Op::Append { key: 0, value: 1 }, (1, 2), OpOutcome::Failed),
        // ...yet a later read sees it.
        record(1, Op::Read { key: 0 }, (3, 4), OpOutcome::Ok(vec![1])),
    ];
    assert!(!check_history(&history).is_linearizable());
    // The same append of unknown outcome may have taken effect.
    let mut unknown = history;
    unknown[0].outcome = OpOutcome::Unknown;
    assert!(check_history(&unknown).is_linearizable());
}

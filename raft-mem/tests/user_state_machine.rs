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
//! history is checked for linearizability.
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
// The history check: linearizability of a list-append store. (A generic checker, given a model
// of the state machine, can replace this function: the history is a plain list of records.)

/// Checks that `history` is linearizable for list-append: per key, every list observed is a
/// prefix of one list (a single order of appends), an acknowledged append ends the list it
/// returned, an append that certainly failed appears nowhere, and an operation sees everything
/// that completed before it was called.
fn check_linearizable(seed: u64, history: &[Record]) {
    let key_of = |op: &Op| match op {
        Op::Append { key, .. } | Op::Read { key } => *key,
    };
    for key in 0..KEYS {
        let ops: Vec<&Record> = history.iter().filter(|r| key_of(&r.op) == key).collect();
        let observed: Vec<(&Record, &Vec<u64>)> =
            ops.iter().filter_map(|r| r.outcome.ok().map(|list| (*r, list))).collect();
        let longest = observed.iter().map(|(_, l)| *l).max_by_key(|l| l.len()).cloned();
        let longest = longest.unwrap_or_default();
        for (record, list) in &observed {
            assert!(
                longest.starts_with(list),
                "seed {seed}: key {key}: {list:?} ({record:?}) is not a prefix of {longest:?}"
            );
            if let Op::Append { value, .. } = record.op {
                assert_eq!(list.last(), Some(&value), "seed {seed}: {record:?} ends its list");
            }
        }
        for record in &ops {
            if let (Op::Append { value, .. }, OpOutcome::Failed) = (&record.op, &record.outcome) {
                assert!(!longest.contains(value), "seed {seed}: failed {record:?} took effect");
            }
        }
        // Real time: what completed before an operation was called is visible to it.
        for (before, seen_before) in &observed {
            let Some(returned) = before.ret else { continue };
            for (after, seen_after) in &observed {
                if after.call > returned {
                    assert!(
                        seen_after.starts_with(seen_before),
                        "seed {seed}: key {key}: {after:?} saw {seen_after:?}, missing {seen_before:?} seen by {before:?} which returned before"
                    );
                }
            }
        }
    }
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
        check_linearizable(seed, &history);
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

#[test]
#[should_panic(expected = "missing")]
fn the_history_check_rejects_a_stale_read() {
    let at = Duration::from_millis;
    let history = vec![
        Record {
            client: 0,
            op: Op::Append { key: 0, value: 1 },
            call: at(1),
            ret: Some(at(2)),
            outcome: OpOutcome::Ok(vec![1]),
        },
        // Called after the append returned, yet it does not see it.
        Record {
            client: 1,
            op: Op::Read { key: 0 },
            call: at(3),
            ret: Some(at(4)),
            outcome: OpOutcome::Ok(vec![]),
        },
    ];
    check_linearizable(0, &history);
}

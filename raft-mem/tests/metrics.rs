//! The metrics a node records through the `metrics` facade: a recorder installed for this test
//! binary sees the status gauges, per-follower replication, proposals, reads, log writes,
//! applies, snapshots (taken, sent, installed), elections, per-peer RPCs and a fatal error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use raft_core::runtime::TokioRuntime;
use raft_core::{FatalError, NodeId};
use support::{wait_until, within, Cluster, Gate, Machine, Recipe};

/// A metric's name and labels, rendered `name{a="1",b="2"}` with the labels sorted.
fn render(key: &Key) -> String {
    let mut labels: Vec<String> =
        key.labels().map(|l| format!("{}=\"{}\"", l.key(), l.value())).collect();
    labels.sort();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

#[derive(Default)]
struct Cell {
    counter: AtomicU64,
    gauge: Mutex<f64>,
    samples: Mutex<Vec<f64>>,
}

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.counter.fetch_add(value, Ordering::SeqCst);
    }
    fn absolute(&self, value: u64) {
        self.counter.fetch_max(value, Ordering::SeqCst);
    }
}

impl GaugeFn for Cell {
    fn increment(&self, value: f64) {
        *self.gauge.lock().unwrap() += value;
    }
    fn decrement(&self, value: f64) {
        *self.gauge.lock().unwrap() -= value;
    }
    fn set(&self, value: f64) {
        *self.gauge.lock().unwrap() = value;
    }
}

impl HistogramFn for Cell {
    fn record(&self, value: f64) {
        self.samples.lock().unwrap().push(value);
    }
}

/// Keeps every metric in a map, by rendered key.
#[derive(Default)]
struct TestRecorder {
    cells: Mutex<BTreeMap<String, Arc<Cell>>>,
}

impl TestRecorder {
    fn cell(&self, key: &Key) -> Arc<Cell> {
        self.cells.lock().unwrap().entry(render(key)).or_default().clone()
    }

    fn find(&self, name: &str, labels: &[(&str, String)]) -> Option<Arc<Cell>> {
        let mut wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        wanted.sort();
        self.cells.lock().unwrap().get(&format!("{name}{{{}}}", wanted.join(","))).cloned()
    }

    fn counter(&self, name: &str, labels: &[(&str, String)]) -> u64 {
        self.find(name, labels).map_or(0, |c| c.counter.load(Ordering::SeqCst))
    }

    fn gauge(&self, name: &str, labels: &[(&str, String)]) -> Option<f64> {
        self.find(name, labels).map(|c| *c.gauge.lock().unwrap())
    }

    fn samples(&self, name: &str, labels: &[(&str, String)]) -> Vec<f64> {
        self.find(name, labels).map(|c| c.samples.lock().unwrap().clone()).unwrap_or_default()
    }
}

impl Recorder for &'static TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.cell(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.cell(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.cell(key))
    }
}

fn recorder() -> &'static TestRecorder {
    static RECORDER: OnceLock<&'static TestRecorder> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder: &'static TestRecorder = Box::leak(Box::default());
        metrics::set_global_recorder(recorder).unwrap();
        recorder
    })
}

fn node(id: NodeId) -> Vec<(&'static str, String)> {
    vec![("node_id", id.to_string())]
}

fn with(id: NodeId, more: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut labels = node(id);
    labels.extend(more.iter().map(|(k, v)| (*k, v.to_string())));
    labels
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_records_what_it_does() {
    let metrics = recorder();
    let rt = TokioRuntime::current().unwrap();
    let recipe = |_| Recipe {
        machine: Machine { takes_snapshots: true, ..Machine::default() },
        with_snapshots: true,
        configure: Some(|c| {
            c.snapshot_interval_entries = 1_000_000;
            c.snapshot_keep_entries = 0;
            c.snapshot_chunk_bytes = 64;
        }),
    };
    let cluster = Cluster::start(rt.clone(), 3, recipe).await;
    let leader = cluster.leader().await;
    let lagging = *cluster.members.keys().find(|&&id| id != leader).unwrap();
    let other = *cluster.members.keys().find(|&&id| id != leader && id != lagging).unwrap();

    // The lagging follower misses writes that a snapshot then compacts away: it catches up by
    // InstallSnapshot once it is back.
    cluster.network.disconnect(lagging);
    let mut last = 0;
    for i in 0..30 {
        last = cluster.write_on(leader, &format!("w{i}")).await;
    }
    let snapshot = within(&rt, "a snapshot", cluster.node(leader).snapshot()).await.unwrap();
    assert!(snapshot.is_some(), "the leader took a snapshot");
    cluster.network.reconnect(lagging);
    cluster.wait_applied(lagging, last).await;
    for _ in 0..5 {
        within(&rt, "a read", cluster.node(other).read_index()).await.unwrap();
    }
    // The lag gauges are refreshed on the leader's ticks.
    // Wait for a refresh after the catch-up: a lag of 0 alone may still be the value of a tick
    // before the follower was cut off (no tick need fall within the writes).
    let follower = with(leader, &[("peer", &lagging.to_string())]);
    wait_until(&rt, "the gauges show the follower caught up", || {
        metrics.gauge("raft_follower_lag_entries", &follower) == Some(0.0)
            && metrics.gauge("raft_follower_match_index", &follower) >= Some(last as f64)
    })
    .await;

    let status = cluster.node(leader).status();
    let l = node(leader);
    assert_eq!(metrics.gauge("raft_role", &l), Some(3.0));
    assert_eq!(metrics.gauge("raft_role", &node(other)), Some(0.0));
    assert_eq!(metrics.gauge("raft_term", &l), Some(status.current_term as f64));
    assert_eq!(metrics.gauge("raft_leader_id", &node(other)), Some(leader as f64));
    assert!(metrics.gauge("raft_commit_index", &l).unwrap() >= last as f64);
    assert!(metrics.gauge("raft_applied_index", &l).unwrap() >= last as f64);
    assert!(metrics.gauge("raft_last_log_index", &l).unwrap() >= last as f64);
    let peer = lagging.to_string();
    let match_index = metrics.gauge("raft_follower_match_index", &with(leader, &[("peer", &peer)]));
    assert!(match_index.unwrap() >= last as f64);

    assert_eq!(metrics.counter("raft_elections_won_total", &l), 1);
    assert!(metrics.counter("raft_elections_started_total", &l) >= 1);
    assert_eq!(metrics.counter("raft_proposals_total", &l), 30);
    assert_eq!(metrics.samples("raft_proposal_duration_seconds", &l).len(), 30);
    assert_eq!(metrics.counter("raft_reads_total", &node(other)), 5);
    assert_eq!(metrics.samples("raft_read_duration_seconds", &node(other)).len(), 5);
    assert!(metrics.counter("raft_log_writes_total", &l) >= 1);
    let batches = metrics.samples("raft_log_write_entries", &l);
    assert!(batches.iter().sum::<f64>() >= 31.0, "every entry was written: {batches:?}");
    assert!(!metrics.samples("raft_log_write_duration_seconds", &l).is_empty());
    assert!(metrics.counter("raft_applied_entries_total", &l) >= 31);
    assert!(!metrics.samples("raft_apply_duration_seconds", &l).is_empty());

    let size = snapshot.unwrap().size;
    assert_eq!(metrics.counter("raft_snapshots_taken_total", &l), 1);
    assert_eq!(metrics.counter("raft_snapshot_taken_bytes_total", &l), size);
    assert_eq!(metrics.counter("raft_snapshots_installed_total", &node(lagging)), 1);
    assert_eq!(metrics.counter("raft_snapshot_installed_bytes_total", &node(lagging)), size);
    assert!(metrics.counter("raft_snapshots_sent_total", &with(leader, &[("peer", &peer)])) >= 1);
    let chunks = with(leader, &[("peer", &peer), ("rpc", "install_snapshot")]);
    assert!(metrics.counter("raft_rpc_sent_total", &chunks) >= 1);
    assert!(metrics.counter("raft_rpc_sent_bytes_total", &chunks) >= size);

    let appends = with(leader, &[("peer", &other.to_string()), ("rpc", "append_entries")]);
    assert!(metrics.counter("raft_rpc_sent_total", &appends) >= 30);
    assert!(metrics.counter("raft_rpc_sent_bytes_total", &appends) > 0);
    assert!(!metrics.samples("raft_rpc_duration_seconds", &appends).is_empty());
    // While it was disconnected, AppendEntries to the lagging follower failed.
    let to_lagging = with(leader, &[("peer", &peer), ("rpc", "append_entries")]);
    assert!(metrics.counter("raft_rpc_errors_total", &to_lagging) >= 1);
    let received = with(other, &[("peer", &leader.to_string()), ("rpc", "append_entries")]);
    assert!(metrics.counter("raft_rpc_received_total", &received) >= 30);
    let asked = with(leader, &[("peer", &other.to_string()), ("rpc", "read_index")]);
    assert!(metrics.counter("raft_rpc_received_total", &asked) >= 1);

    // A store that fails stops the node, and the metrics say why.
    assert_eq!(metrics.gauge("raft_node_failed", &with(other, &[("kind", "panicked")])), None);
    cluster.members[&other].store.panic_on_write.store(true, Ordering::SeqCst);
    cluster.write_on(leader, "after").await;
    wait_until(&rt, "the follower's store to fail", || {
        matches!(cluster.node(other).fatal_error(), Some(FatalError::Panicked { .. }))
    })
    .await;
    wait_until(&rt, "the failure to show in the metrics", || {
        metrics.gauge("raft_node_failed", &with(other, &[("kind", "panicked")])) == Some(1.0)
    })
    .await;
    cluster.shutdown().await;
}

/// A step of the main loop takes at most 1,024 inputs, proposals included: a burst of
/// proposals gathered in the inbox before the main loop runs is spread over several steps,
/// so over several log writes none larger than a step (review L1 of perf5: one wake-up took
/// the whole inbox, up to `max_pending_proposals`, into one step and one write).
#[tokio::test(flavor = "current_thread")]
async fn a_burst_of_proposals_is_spread_over_steps() {
    let metrics = recorder();
    let id = 41; // its own labels: the other test's nodes are 1 to 3
    let cluster = single_node(id, Recipe::default()).await;
    let burst = 3_000;
    // On this one thread, the proposers all queue their proposals before the main loop,
    // woken by the first, runs.
    let writes = spawn_writes(cluster.node(id), burst);
    for write in writes {
        assert!(matches!(write.await, Ok(Ok(_))));
    }
    let batches = metrics.samples("raft_log_write_entries", &node(id));
    assert!(batches.iter().sum::<f64>() >= f64::from(burst), "{batches:?}");
    assert!(batches.iter().all(|&entries| entries <= 1024.0), "{batches:?}");
    // The proposals did gather beyond a step's room: whole steps of them were written.
    assert!(batches.iter().any(|&entries| entries >= 1000.0), "{batches:?}");
    cluster.shutdown().await;
}

/// Proposals that waited for room are handed to the engine at most a step's room at a time
/// too (review L1 of perf6: while the engine refused them, for a backlog of unapplied entries
/// as here or a leadership transfer, they gathered in the main loop's deferred queue, up to
/// `max_pending_proposals`, and the step that found room again proposed them all: one log
/// write and one AppendEntries round of thousands of entries).
#[tokio::test(flavor = "current_thread")]
async fn proposals_that_waited_for_room_are_spread_over_steps() {
    let metrics = recorder();
    let id = 42; // its own labels
    let gate = Gate::default();
    let machine = Machine { apply_gate: Some(gate.clone()), ..Machine::default() };
    let recipe = Recipe {
        machine,
        configure: Some(|c| c.max_unapplied_entries = 2_000),
        ..Recipe::default()
    };
    let cluster = single_node(id, recipe).await;
    let rt = cluster.runtime.clone();
    let leader = cluster.node(id).clone();
    let burst = 5_000;
    let writes = spawn_writes(&leader, burst);
    // Nothing is applied (the state machine waits at the gate): the engine takes entries up
    // to the backlog bound (the blank entry and 1,999 writes), the other writes wait.
    let mut watch = leader.watch();
    within(&rt, "the backlog", watch.wait_for(|s| s.last_log_index >= 2_000)).await;
    // Round trips through the input queue, each behind the inbox's wake-up: the main loop
    // takes every queued write (five steps' worth) into its queue of proposals waiting.
    for _ in 0..20 {
        within(&rt, "a round trip", leader.replication()).await;
    }
    assert_eq!(leader.status().last_log_index, 2_000, "the backlog bound holds");
    // The applier applies the 2,000 entries at once: room for 2,000 more in one step.
    gate.open();
    // A second burst arrives while the waiting ones drain: it queues behind them, and the
    // steps' room is shared between the two queues (review LOW-2 of perf6).
    let second = 2_000;
    let later = spawn_writes(&leader, second);
    for write in writes.into_iter().chain(later) {
        assert!(matches!(write.await, Ok(Ok(_))));
    }
    let batches = metrics.samples("raft_log_write_entries", &node(id));
    assert_eq!(batches.iter().sum::<f64>(), f64::from(burst + second + 1), "{batches:?}");
    assert!(batches.iter().all(|&entries| entries <= 1024.0), "{batches:?}");
    cluster.shutdown().await;
}

/// A cluster of node `id` alone, leading.
async fn single_node(id: NodeId, recipe: Recipe) -> Cluster<TokioRuntime> {
    let mut cluster = Cluster::new(TokioRuntime::current().unwrap());
    cluster.add(id, &[id], recipe).await;
    assert_eq!(cluster.leader().await, id);
    cluster
}

/// Spawns `count` writes on `node`, each of its own command.
fn spawn_writes(
    node: &raft_core::Node,
    count: u32,
) -> Vec<tokio::task::JoinHandle<Result<raft_core::Bytes, raft_core::WriteError>>> {
    (0..count)
        .map(|i| {
            let node = node.clone();
            tokio::spawn(async move { node.write(raft_core::Bytes::from(format!("w{i}"))).await })
        })
        .collect()
}

// ---- The step's room, deterministically (review LOW of corefix) ------------------------------
//
// The two tests above run on tokio: they pass with the main loop's own wake-up for the proposals
// it left waiting (`Inbox::wake_again`) removed, and with the step's room not shared between
// waiting and new proposals, because the applier's answers and the ticks wake the loop anyway
// and the inputs do not land in the steps that matter. These run one node on the deterministic
// executor: its tasks are paused while the test queues work, its state machine applies only up
// to an index the test gives, and the node runs only until nothing is ready at the current
// instant (no tick falls due), so every step is one the test arranged.
//
// They check "a step proposes at most 1,024 entries" through the entries of each log write
// (`raft_log_write_entries`), which no metric separates from the step's persist: the log writer
// merges the batches queued behind a write in progress (up to 65,536 entries), so a write may
// hold several steps' entries. Here no batch ever queues behind another: the main loop starts a
// write itself when none is outstanding and `MemLogStore` is done at its first poll, within the
// step, so each write is one step's persist. A store that takes time (or yields) to write would let
// batches merge, and these checks would then fail although no step proposed too much: run them
// on a store that finishes at once, or count the persists of each step instead.

/// A step's inputs (the main loop's `MAX_INPUTS_PER_STEP`).
const STEP_INPUTS: u64 = 1024;

/// Applies entries only up to the index last sent on `limits`; opens `reached` once it has
/// applied up to a positive limit.
struct AppliesUpTo {
    limit: u64,
    limits: async_channel::Receiver<u64>,
    reached: Gate,
}

#[async_trait::async_trait]
impl raft_core::StateMachine for AppliesUpTo {
    async fn apply(
        &mut self,
        entries: &[raft_core::Entry],
    ) -> Result<Vec<raft_core::Bytes>, raft_core::StateMachineError> {
        let last = entries.last().map_or(0, |e| e.index);
        while self.limit < last {
            match self.limits.recv().await {
                Ok(limit) => self.limit = limit,
                Err(_) => self.limit = u64::MAX, // the test is over
            }
        }
        if self.limit > 0 && last >= self.limit {
            self.reached.open();
        }
        Ok(vec![raft_core::Bytes::new(); entries.len()])
    }
}

/// One node on the deterministic executor whose state machine applies nothing yet.
struct HeldNode {
    rt: raft_mem::sim::SimRuntime,
    id: NodeId,
    node: raft_core::Node,
    limits: async_channel::Sender<u64>,
    /// Opens once the state machine applied up to the last limit sent.
    reached: Gate,
    /// Writes answered `Ok`, and the other answers.
    ok: Arc<AtomicU64>,
    failed: Arc<Mutex<Vec<raft_core::WriteError>>>,
}

impl HeldNode {
    /// Node `id`, alone and leading, with at most `max_unapplied_entries` unapplied.
    fn start(id: NodeId, max_unapplied_entries: u64) -> Self {
        let rt = raft_mem::sim::SimRuntime::new();
        let mut config = support::config(id);
        config.max_unapplied_entries = max_unapplied_entries;
        let (limits, receiver) = async_channel::unbounded();
        let reached = Gate::default();
        let machine = AppliesUpTo { limit: 0, limits: receiver, reached: reached.clone() };
        let network = raft_mem::MemNetwork::with_runtime(rt.clone(), id);
        let builder = raft_core::Node::builder(
            config,
            raft_mem::MemLogStore::new(),
            network.endpoint(id),
            machine,
            rt.tagged(id),
        )
        .bootstrap(raft_core::Membership::with_voters([id]));
        let node = rt.block_on(Duration::from_secs(5), builder.start(), || {}).unwrap().unwrap();
        let leads = || node.status().role == raft_core::Role::Leader;
        assert!(rt.run_until(Duration::from_secs(10), || {}, leads), "it never led");
        let (ok, failed) = Default::default();
        Self { rt, id, node, limits, reached, ok, failed }
    }

    /// Spawns `count` writes (not run yet); each first waits at `gate` if given.
    fn spawn_writes(&self, count: u64, gate: Option<&Gate>) {
        for i in 0..count {
            let (node, ok, failed) = (self.node.clone(), self.ok.clone(), self.failed.clone());
            let gate = gate.cloned();
            self.rt.spawn_task(async move {
                if let Some(gate) = gate {
                    gate.pass().await;
                }
                match node.write(raft_core::Bytes::from(format!("w{i}"))).await {
                    Ok(_) => ok.fetch_add(1, Ordering::SeqCst),
                    Err(error) => {
                        failed.lock().unwrap().push(error);
                        0
                    }
                };
            });
        }
    }

    /// Runs everything ready at the current instant (no timer falls due: no tick).
    fn settle(&self) {
        self.rt.run_for(Duration::ZERO, || {});
    }

    /// Queues `count` writes into the node's inbox while its tasks are paused, then lets it
    /// take them: with nothing applied, the engine takes them up to its backlog bound, the
    /// others wait for room in the main loop's queue.
    fn queue_writes(&self, count: u64) {
        self.rt.pause(self.id);
        self.spawn_writes(count, None);
        self.settle();
        self.rt.resume(self.id);
        self.settle();
    }

    /// Lets the state machine apply up to `index`.
    fn apply_up_to(&self, index: u64) {
        assert!(self.limits.try_send(index).is_ok());
    }

    fn last_log_index(&self) -> u64 {
        self.node.status().last_log_index
    }

    /// The entries of each log write so far.
    fn write_batches(&self) -> Vec<f64> {
        recorder().samples("raft_log_write_entries", &node(self.id))
    }

    /// Applies everything; checks that every write completed; stops the node.
    fn finish(self, writes: u64) {
        self.apply_up_to(u64::MAX);
        let done =
            || self.ok.load(Ordering::SeqCst) + self.failed.lock().unwrap().len() as u64 >= writes;
        assert!(self.rt.run_until(Duration::from_secs(10), || {}, done), "writes left");
        assert!(self.failed.lock().unwrap().is_empty(), "{:?}", self.failed.lock().unwrap());
        let node = self.node.clone();
        self.rt.block_on(Duration::from_secs(5), async move { node.shutdown().await }, || {});
        self.rt.clear();
    }
}

/// Proposals left waiting for room are proposed a step's room at a time, and the main loop
/// wakes itself for the rest: nothing else would wake it (nothing is applied, no tick falls
/// due). Fails with the main loop's `wake_again` removed (the proposals beyond the first step
/// wait for a tick or an answer) and with the deferred proposals the end of a step proposes
/// not counted against the step's room (a write of more than 1,024 entries). Each write is one
/// step's persist only because `MemLogStore` finishes it at once (see above).
#[test]
fn deferred_proposals_are_proposed_a_step_at_a_time_and_wake_the_loop_themselves() {
    let _ = recorder();
    let (backlog, waiting) = (3_000, 2_500);
    let held = HeldNode::start(43, backlog);
    // The entries of its start (unapplied too) and the first writes fill the backlog; 2,500
    // wait.
    let writes = backlog - held.last_log_index() + waiting;
    held.queue_writes(writes);
    assert_eq!(held.last_log_index(), backlog);
    // All of it applied: room for 3,000 more. Nothing else happens at this instant: the
    // steps that propose the 2,500 are woken by the applier's answers and the loop itself.
    held.apply_up_to(backlog);
    held.settle();
    assert_eq!(held.last_log_index(), backlog + waiting, "some waited for another input");
    let batches = held.write_batches();
    assert!(batches.iter().all(|&entries| entries <= STEP_INPUTS as f64), "{batches:?}");
    held.finish(writes);
}

/// New proposals share a step's room with the proposals that waited for room: a step that
/// proposes the last 300 waiting ones takes at most 724 (less the step's other inputs) from
/// the inbox. The writes reach the inbox just after the applier's answers (they wait for the
/// state machine to apply the backlog), so one step learns of the room, proposes the waiting
/// ones and takes new ones. Fails with the inbox taking a whole step's room after the
/// deferred proposals (a write of more than 1,024 entries). Each write is one step's persist
/// only because `MemLogStore` finishes it at once (see above).
#[test]
fn new_proposals_share_the_step_room_with_the_waiting_ones() {
    let _ = recorder();
    let (backlog, waiting, later) = (2_000, 300, 1_500);
    let held = HeldNode::start(44, backlog);
    let writes = backlog - held.last_log_index() + waiting;
    held.queue_writes(writes);
    assert_eq!(held.last_log_index(), backlog);
    held.rt.pause(held.id);
    let reached = held.reached.clone();
    held.spawn_writes(later, Some(&reached));
    held.settle();
    held.apply_up_to(backlog);
    held.rt.resume(held.id);
    held.settle();
    assert_eq!(held.last_log_index(), backlog + waiting + later, "every write proposed");
    let batches = held.write_batches();
    assert!(batches.iter().all(|&entries| entries <= STEP_INPUTS as f64), "{batches:?}");
    held.finish(writes + later);
}

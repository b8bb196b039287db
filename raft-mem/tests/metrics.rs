//! The metrics a node records through the `metrics` facade: a recorder installed for this test
//! binary sees the status gauges, per-follower replication, proposals, reads, log writes,
//! applies, snapshots (taken, sent, installed), elections, per-peer RPCs and a fatal error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

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

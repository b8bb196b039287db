//! The driver under faults of the application's code and of time: panics in every callback,
//! RPCs that never return, callers that give up or call in at shutdown, a follower restoring a
//! snapshot while a newer one arrives. Real nodes on the in-memory backends, under tokio, smol
//! and async-std.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod support;

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use raft_core::{
    Bytes, Entry, Envelope, FatalError, LogIndex, Membership, MembershipChange, MembershipError,
    Node, NodeId, NodeInfo, ProposeError, ReadIndexError, ReadIndexRequest, RpcError, RpcHandler,
    RpcRequest, Runtime, SnapshotError, StateMachine, StateMachineError, StorageError,
};
use support::{before, wait_until, within, Cluster, Gate, Machine, Recipe, PATIENCE};

fn other_than(cluster: &Cluster<impl Runtime + Clone>, not: &[NodeId]) -> Vec<NodeId> {
    cluster.members.keys().copied().filter(|id| !not.contains(id)).collect()
}

/// Waits for `id` to stop on its own and returns why.
async fn fatal_of<R: Runtime + Clone>(cluster: &Cluster<R>, id: NodeId) -> FatalError {
    let node = cluster.node(id);
    wait_until(&cluster.runtime, "a fatal error", || node.fatal_error().is_some()).await;
    node.fatal_error().unwrap()
}

fn assert_panicked(error: &FatalError, task_part: &str, message_part: &str) {
    match error {
        FatalError::Panicked { task, message } => {
            assert!(task.contains(task_part), "{error}");
            assert!(message.contains(message_part), "{error}");
        }
        other => panic!("expected a panic of the {task_part}, got: {other}"),
    }
}

// ---- 14.1: callers queued at stop ------------------------------------------------------------

/// Inputs queued behind `Shutdown` are answered with `Shutdown` at once, and the proposal permits
/// they hold come back (a later membership change does not wait forever for a permit).
async fn callers_queued_at_stop_get_shutdown<R: Runtime + Clone>(rt: R) {
    let recipe = |_| Recipe {
        configure: Some(|c: &mut raft_core::Config| c.max_pending_proposals = 2),
        ..Recipe::default()
    };
    let cluster = Cluster::start(rt.clone(), 1, recipe).await;
    let leader = cluster.leader().await;
    let node = cluster.node(leader).clone();
    let request = RpcRequest::ReadIndex(ReadIndexRequest { term: 1, sender: 9, read_id: 0 });
    let request = Envelope::new(leader, request);
    // `shutdown` is polled first: its input is queued first, every other one behind it.
    let (_, read, first, second, rpc, snapshot, replication) =
        within(&rt, "every caller queued at stop", async {
            futures::join!(
                node.shutdown(),
                node.read_index(),
                node.propose(Bytes::from_static(b"a")),
                node.propose(Bytes::from_static(b"b")),
                node.handle_rpc(request),
                node.snapshot(),
                node.replication(),
            )
        })
        .await;
    assert_eq!(read, Err(ReadIndexError::Shutdown));
    assert!(matches!(first, Err(ProposeError::Shutdown)), "{first:?}");
    assert!(matches!(second, Err(ProposeError::Shutdown)), "{second:?}");
    assert!(matches!(rpc, Err(RpcError::Shutdown)), "{rpc:?}");
    assert_eq!(snapshot, Err(SnapshotError::Shutdown));
    assert!(replication.is_empty());
    let change = node.change_membership(MembershipChange::AddLearner(5, NodeInfo::default()));
    let change = within(&rt, "a change after stop (proposal permits returned)", change).await;
    assert_eq!(change, Err(MembershipError::Shutdown));
}

#[tokio::test]
async fn callers_queued_at_stop_get_shutdown_tokio() {
    callers_queued_at_stop_get_shutdown(raft_core::runtime::TokioRuntime::current().unwrap()).await;
}

#[test]
fn callers_queued_at_stop_get_shutdown_smol() {
    // One thread runs the test and the node: the inputs are queued before the node runs.
    let executor = Arc::new(smol::Executor::new());
    let rt = raft_core::runtime::SmolRuntime::with_executor(executor.clone());
    smol::block_on(executor.run(callers_queued_at_stop_get_shutdown(rt)));
}

#[test]
fn callers_queued_at_stop_get_shutdown_async_std() {
    async_std::task::block_on(callers_queued_at_stop_get_shutdown(
        raft_core::runtime::AsyncStdRuntime,
    ));
}

// ---- 14.2: panics ----------------------------------------------------------------------------

/// Makes the state machine of leader `id` panic on a command, and waits for the node to stop
/// with that panic as its fatal error.
async fn poison<R: Runtime + Clone>(cluster: &Cluster<R>, id: NodeId) {
    cluster.write_on(id, "before").await;
    cluster.members[&id].machine.poison_armed.store(true, Ordering::SeqCst);
    let proposal = cluster.node(id).propose(Bytes::from_static(b"poison")).await.unwrap();
    let response = within(&cluster.runtime, "the poisoned proposal", proposal.response()).await;
    assert!(response.is_err());
    assert_panicked(&fatal_of(cluster, id).await, "applier", "poisoned command");
}

/// The leader's state machine panics on a command: the leader stops with the panic as its fatal
/// error, stops heartbeating, and the others elect a leader that takes writes.
async fn a_leader_whose_state_machine_panics_is_replaced<R: Runtime + Clone>(rt: R) {
    let cluster = Cluster::start(rt.clone(), 3, |_| Recipe::default()).await;
    let old = cluster.leader().await;
    poison(&cluster, old).await;
    within(&rt, "the stopped node's tasks end", cluster.node(old).shutdown()).await;
    let new = cluster.leader_among(&other_than(&cluster, &[old])).await;
    assert_ne!(new, old);
    cluster.write_on(new, "after").await;
    cluster.shutdown().await;
}

/// A panic in `LogStore::write` stops the node with the panic as its fatal error.
async fn a_panicking_log_store_stops_the_node<R: Runtime + Clone>(rt: R) {
    let cluster = Cluster::start(rt.clone(), 1, |_| Recipe::default()).await;
    let id = cluster.leader().await;
    cluster.write_on(id, "before").await;
    cluster.members[&id].store.panic_on_write.store(true, Ordering::SeqCst);
    let proposal = cluster.node(id).propose(Bytes::from_static(b"lost")).await.unwrap();
    assert!(within(&rt, "the proposal", proposal.response()).await.is_err());
    assert_panicked(&fatal_of(&cluster, id).await, "log writer", "log store exploded");
    cluster.shutdown().await;
}

/// A panic in `Network::send` (in the sender task of a peer) stops the node; the others elect a
/// new leader.
async fn a_leader_whose_network_panics_is_replaced<R: Runtime + Clone>(rt: R) {
    let cluster = Cluster::start(rt.clone(), 3, |_| Recipe::default()).await;
    let old = cluster.leader().await;
    cluster.write_on(old, "before").await;
    cluster.members[&old].network.panic_on_send.store(true, Ordering::SeqCst);
    assert_panicked(&fatal_of(&cluster, old).await, "sender to peer", "network exploded");
    let new = cluster.leader_among(&other_than(&cluster, &[old])).await;
    cluster.write_on(new, "after").await;
    cluster.shutdown().await;
}

/// A panic in the snapshot store stops the node; `Node::snapshot` returns.
async fn a_panicking_snapshot_store_stops_the_node<R: Runtime + Clone>(rt: R) {
    let recipe = |_| Recipe {
        machine: Machine { takes_snapshots: true, ..Machine::default() },
        with_snapshots: true,
        ..Recipe::default()
    };
    let cluster = Cluster::start(rt.clone(), 1, recipe).await;
    let id = cluster.leader().await;
    cluster.write_on(id, "before").await;
    cluster.members[&id].snapshots.panic_on_begin.store(true, Ordering::SeqCst);
    let snapshot = within(&rt, "a snapshot", cluster.node(id).snapshot()).await;
    assert!(snapshot.is_err(), "{snapshot:?}");
    assert_panicked(&fatal_of(&cluster, id).await, "snapshot builder", "snapshot store exploded");
    cluster.shutdown().await;
}

/// A state machine that panicked left its thread marked as running inside the state machine, so
/// on that thread (every thread of a single-threaded runtime) the stopped node's `read_index`
/// failed with `InsideStateMachine` instead of `Shutdown`, and `shutdown` returned at once
/// without waiting for the node's tasks (review finding 4).
async fn a_panicking_state_machine_leaves_no_mark_on_its_thread<R: Runtime + Clone>(rt: R) {
    let cluster = Cluster::start(rt.clone(), 1, |_| Recipe::default()).await;
    let id = cluster.leader().await;
    poison(&cluster, id).await;
    let read = within(&rt, "a read after the panic", cluster.node(id).read_index()).await;
    assert_eq!(read, Err(ReadIndexError::Shutdown));
    let snapshot = within(&rt, "a snapshot after the panic", cluster.node(id).snapshot()).await;
    assert_eq!(snapshot, Err(SnapshotError::Shutdown));
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_panicking_state_machine_leaves_no_mark_on_its_thread_tokio_current_thread() {
    let rt = raft_core::runtime::TokioRuntime::current().unwrap();
    a_panicking_state_machine_leaves_no_mark_on_its_thread(rt).await;
}

#[test]
fn a_panicking_state_machine_leaves_no_mark_on_its_thread_smol_one_thread() {
    let executor = Arc::new(smol::Executor::new());
    let rt = raft_core::runtime::SmolRuntime::with_executor(executor.clone());
    smol::block_on(executor.run(a_panicking_state_machine_leaves_no_mark_on_its_thread(rt)));
}

// ---- 14.3: restoring a snapshot while a newer one arrives ------------------------------------

/// A 3-node cluster whose follower restores snapshot L slowly (at its gate) while the leader,
/// which compacted past L meanwhile, has delivered it the last chunk of a newer snapshot L2.
struct RestoringFollower<R: Runtime + Clone> {
    cluster: Cluster<R>,
    gates: BTreeMap<NodeId, Gate>,
    leader: NodeId,
    follower: NodeId,
    /// L's last index.
    first: LogIndex,
}

async fn restoring_follower_offered_a_newer_snapshot<R: Runtime + Clone>(
    rt: &R,
) -> RestoringFollower<R> {
    let gates: BTreeMap<NodeId, Gate> = (1..=3).map(|id| (id, Gate::default())).collect();
    let recipe = |id| Recipe {
        machine: Machine {
            takes_snapshots: true,
            restore_gate: Some(gates[&id].clone()),
            ..Machine::default()
        },
        with_snapshots: true,
        configure: Some(|c: &mut raft_core::Config| {
            c.snapshot_interval_entries = 10;
            c.snapshot_keep_entries = 0;
            c.snapshot_chunk_bytes = 64;
        }),
    };
    let cluster = Cluster::start(rt.clone(), 3, recipe).await;
    let leader = cluster.leader().await;
    let follower = other_than(&cluster, &[leader])[0];
    cluster.network.disconnect(follower);
    for i in 0..25 {
        cluster.write_on(leader, &format!("first-{i:04}")).await;
    }
    cluster.network.reconnect(follower);
    let machine = cluster.members[&follower].machine.clone();
    wait_until(rt, "the follower's restore", || {
        machine.restores_started.load(Ordering::SeqCst) >= 1
    })
    .await;
    let restoring = cluster.members[&follower].snapshots.inner.latest_meta().unwrap();
    let first = restoring.last_included.index;

    // While the restore waits, the leader moves on and compacts past what the follower holds.
    cluster.network.disconnect(follower);
    for i in 0..25 {
        cluster.write_on(leader, &format!("second-{i:04}")).await;
    }
    let newer_delivered = Arc::new(AtomicBool::new(false));
    let seen = newer_delivered.clone();
    let node = cluster.members[&follower].node.clone();
    let watched = support::Watched {
        node,
        seen: Box::new(move |request| {
            if let RpcRequest::InstallSnapshot(chunk) = request {
                if chunk.done && chunk.meta.last_included.index > first {
                    seen.store(true, Ordering::SeqCst);
                }
            }
        }),
    };
    cluster.network.serve(follower, Arc::new(watched));
    cluster.network.reconnect(follower);
    wait_until(rt, "the newer snapshot's last chunk", || newer_delivered.load(Ordering::SeqCst))
        .await;
    RestoringFollower { cluster, gates, leader, follower, first }
}

/// A follower restores snapshot L slowly; meanwhile the leader compacts past L and sends it a
/// newer snapshot L2. The follower must not lose L under its restore (it waits to install L2 until
/// the restore is done), must not stop, and ends with the leader's state.
async fn a_restoring_follower_survives_a_newer_snapshot<R: Runtime + Clone>(rt: R) {
    let RestoringFollower { mut cluster, gates, leader, follower, first } =
        restoring_follower_offered_a_newer_snapshot(&rt).await;
    let machine = cluster.members[&follower].machine.clone();
    // A chance for a broken node to install the newer snapshot under the restore (a correct one
    // never does: the wait then runs out).
    let snapshots = cluster.members[&follower].snapshots.inner.clone();
    let superseded = async {
        while snapshots.latest_meta().is_some_and(|m| m.last_included.index == first) {
            rt.sleep(Duration::from_millis(2)).await;
        }
    };
    before(&rt, Duration::from_millis(300), superseded).await;
    gates[&follower].open();

    let index = cluster.write_on(leader, "after").await;
    cluster.wait_applied(follower, index).await;
    let fatal = cluster.node(follower).fatal_error();
    assert!(fatal.is_none(), "{fatal:?}");
    assert!(machine.restores_done.load(Ordering::SeqCst) >= 1);
    assert_eq!(
        *machine.commands.lock().unwrap(),
        *cluster.members[&leader].machine.commands.lock().unwrap(),
        "the follower has the leader's state"
    );
    cluster.members.remove(&follower); // keep the follower's node alive until here
    cluster.shutdown().await;
}

/// While a follower's state machine restores snapshot L, the leader sends it a newer snapshot L2;
/// the third node goes down. The follower keeps answering (votes, heartbeats, chunks) meanwhile,
/// so the cluster keeps a leader through the slow restore (review finding 3). Before, the install
/// of L2 waited for the restore and every later write and answer of the follower waited behind
/// it: the leader lost CheckQuorum and nobody could be elected until the restore finished.
async fn a_restoring_follower_keeps_answering<R: Runtime + Clone>(rt: R) {
    let RestoringFollower { mut cluster, gates, leader, follower, .. } =
        restoring_follower_offered_a_newer_snapshot(&rt).await;
    let machine = cluster.members[&follower].machine.clone();
    let third = other_than(&cluster, &[leader, follower])[0];

    // The third node goes down while the restore goes on for three election timeouts.
    cluster.network.disconnect(third);
    rt.sleep(Duration::from_millis(3 * 300)).await;
    assert!(!gates[&follower].is_open() && machine.restores_done.load(Ordering::SeqCst) == 0);
    let elected = cluster.leader_among(&[leader, follower]).await;
    assert_eq!(machine.restores_done.load(Ordering::SeqCst), 0, "a leader during the restore");

    gates[&follower].open();
    cluster.network.reconnect(third);
    let index = cluster.write_on(elected, "after").await;
    cluster.wait_applied(follower, index).await;
    let fatal = cluster.node(follower).fatal_error();
    assert!(fatal.is_none(), "{fatal:?}");
    assert_eq!(
        *machine.commands.lock().unwrap(),
        *cluster.members[&elected].machine.commands.lock().unwrap(),
        "the follower has the leader's state"
    );
    cluster.members.remove(&follower);
    cluster.shutdown().await;
}

// ---- 14.4, 12.4, 14.10: reads and peers ------------------------------------------------------

/// Nodes that hold at most 2 reads.
fn two_read_slots(_: NodeId) -> Recipe {
    Recipe {
        configure: Some(|c: &mut raft_core::Config| c.max_pending_reads = 2),
        ..Recipe::default()
    }
}

/// Callers that give up on their reads do not free the reads' slots: with `max_pending_reads`
/// 2 and forwarded reads that never get an answer, at most 2 reads ever reach the leader.
async fn abandoned_reads_keep_their_slots<R: Runtime + Clone>(rt: R) {
    let cluster = Cluster::start(rt.clone(), 3, two_read_slots).await;
    let leader = cluster.leader().await;
    cluster.write_on(leader, "x").await;
    let follower = other_than(&cluster, &[leader])[0];
    let faults = cluster.members[&follower].network.clone();
    faults.hang_read_index.store(true, Ordering::SeqCst);
    for _ in 0..6 {
        let read = before(&rt, Duration::from_millis(40), cluster.node(follower).read_index());
        assert!(read.await.is_none(), "the leader never answers");
    }
    let sent = faults.read_index_sent.load(Ordering::SeqCst);
    assert!(sent <= 2, "{sent} reads in progress with 2 read slots");
    cluster.shutdown().await;
}

/// Reads that got their index and wait for the state machine free their slots as soon as their
/// callers give up, not only when a new read arrives (which needs a slot first): with
/// `max_pending_reads` 2 and a follower that cannot apply (its log writes hang), two abandoned
/// reads used to block every later `read_index` until the follower caught up (review finding 6).
async fn abandoned_reads_free_their_slots_while_waiting_to_apply<R: Runtime + Clone>(rt: R) {
    let cluster = Cluster::start(rt.clone(), 3, two_read_slots).await;
    let leader = cluster.leader().await;
    let follower = other_than(&cluster, &[leader])[0];
    cluster.write_on(leader, "x").await;
    let gate = Gate::default();
    *cluster.members[&follower].store.write_gate.lock().unwrap() = Some(gate.clone());
    cluster.write_on(leader, "y").await; // committed without the follower's copy
    let faults = cluster.members[&follower].network.clone();
    // Each read asks the leader, gets its index (the answer takes far less than the 100 ms
    // given), waits for the state machine, and is given up.
    let asked = |sent| {
        let (rt, faults) = (rt.clone(), faults.clone());
        async move {
            let asked = || faults.read_index_sent.load(Ordering::SeqCst) >= sent;
            wait_until(&rt, &format!("read {sent} to reach the leader"), asked).await;
            rt.sleep(Duration::from_millis(100)).await;
        }
    };
    for sent in 1..=2 {
        let read = cluster.node(follower).read_index().fuse();
        let asked = asked(sent).fuse();
        futures::pin_mut!(read, asked);
        futures::select! {
            read = read => panic!("the follower cannot apply the read index: {read:?}"),
            () = asked => {}
        }
    }
    let read = cluster.node(follower).read_index().fuse();
    let asked = asked(3).fuse();
    futures::pin_mut!(read, asked);
    futures::select! {
        read = read => panic!("the follower still cannot apply the read index: {read:?}"),
        () = asked => {} // the third read got a slot
    }
    gate.open();
    cluster.shutdown().await;
}

/// A follower's read forwarded to the leader is in flight when that node stops being leader and
/// member: the follower stops talking to it, and the read ends (`Unreachable`) instead of
/// waiting forever.
async fn a_forwarded_read_ends_when_its_leader_is_removed<R: Runtime + Clone>(rt: R) {
    let cluster = Cluster::start(rt.clone(), 3, |_| Recipe::default()).await;
    let old = cluster.leader().await;
    let follower = other_than(&cluster, &[old])[0];
    let new = other_than(&cluster, &[old, follower])[0];
    let faults = cluster.members[&follower].network.clone();
    faults.hang_read_index.store(true, Ordering::SeqCst);
    let read = cluster.node(follower).read_index();
    let script = async {
        wait_until(&rt, "the forwarded read", || faults.read_index_sent.load(Ordering::SeqCst) > 0)
            .await;
        cluster.node(old).transfer_leadership(new).await.unwrap();
        cluster.node(new).change_membership(MembershipChange::RemoveNode(old)).await.unwrap();
    };
    let (read, ()) = within(&rt, "the read", futures::future::join(read, script)).await;
    assert_eq!(read, Err(ReadIndexError::Unreachable));
    faults.hang_read_index.store(false, Ordering::SeqCst);
    within(&rt, "a read", cluster.node(follower).read_index()).await.unwrap();
    cluster.shutdown().await;
}

/// The same when the leader removes itself: the follower sees the removal while the old leader
/// still leads, and stops talking to it once another leader is known.
async fn a_forwarded_read_ends_when_its_leader_removes_itself<R: Runtime + Clone>(rt: R) {
    let cluster = Cluster::start(rt.clone(), 3, |_| Recipe::default()).await;
    let old = cluster.leader().await;
    let follower = other_than(&cluster, &[old])[0];
    let faults = cluster.members[&follower].network.clone();
    faults.hang_read_index.store(true, Ordering::SeqCst);
    let read = cluster.node(follower).read_index();
    let script = async {
        wait_until(&rt, "the forwarded read", || faults.read_index_sent.load(Ordering::SeqCst) > 0)
            .await;
        cluster.node(old).change_membership(MembershipChange::RemoveNode(old)).await.unwrap();
    };
    let (read, ()) = within(&rt, "the read", futures::future::join(read, script)).await;
    assert_eq!(read, Err(ReadIndexError::Unreachable));
    cluster.leader_among(&other_than(&cluster, &[old])).await;
    cluster.shutdown().await;
}

// ---- 14.5, 14.6: shutdown --------------------------------------------------------------------

/// RPCs that never return fill a peer's window and queue: shutdown still completes.
async fn shutdown_completes_when_rpcs_never_return<R: Runtime + Clone>(rt: R) {
    let mut cluster = Cluster::new(rt.clone());
    let recipe = Recipe {
        configure: Some(|c: &mut raft_core::Config| {
            c.max_inflight_append_entries = 1;
            c.tick_interval = Duration::from_millis(1);
            c.heartbeat_interval = Duration::from_millis(2);
            c.election_timeout_min = Duration::from_millis(10);
            c.election_timeout_max = Duration::from_millis(20);
        }),
        ..Recipe::default()
    };
    // Node 2 never runs: node 1 keeps asking it for votes.
    cluster.add(1, &[1, 2], recipe).await;
    let faults = cluster.members[&1].network.clone();
    faults.hang_all.store(true, Ordering::SeqCst);
    // The window (1 + 8) and the queue behind it (9) are full.
    wait_until(&rt, "a full window", || faults.sent.load(Ordering::SeqCst) >= 9).await;
    cluster.runtime.sleep(Duration::from_millis(200)).await;
    within(&rt, "shutdown", cluster.node(1).shutdown()).await;
}

/// A `shutdown` dropped while the writer is still writing leaves the next call waiting for the
/// writer to finish (the store is not used after `shutdown` returns).
async fn a_dropped_shutdown_leaves_the_next_one_waiting<R: Runtime + Clone>(rt: R) {
    let cluster = Cluster::start(rt.clone(), 1, |_| Recipe::default()).await;
    let id = cluster.leader().await;
    cluster.write_on(id, "before").await;
    let store = cluster.members[&id].store.clone();
    let gate = Gate::default();
    *store.write_gate.lock().unwrap() = Some(gate.clone());
    let node = cluster.node(id).clone();
    let _held = node.propose(Bytes::from_static(b"held")).await.unwrap();
    let writes = store.writes_finished.load(Ordering::SeqCst);
    wait_until(&rt, "a write in progress", || store.writes_started.load(Ordering::SeqCst) > writes)
        .await;
    let first = before(&rt, Duration::from_millis(50), node.shutdown()).await;
    assert!(first.is_none(), "shutdown returned while a write was in progress");
    let second = async {
        node.shutdown().await;
        store.writes_finished.load(Ordering::SeqCst)
    };
    let opener = async {
        rt.sleep(Duration::from_millis(100)).await;
        gate.open();
    };
    let (finished, ()) = within(&rt, "shutdown", futures::future::join(second, opener)).await;
    assert!(finished > writes, "shutdown returned before the write finished");
}

// ---- 14.7: snapshot() ------------------------------------------------------------------------

/// `Node::snapshot` answers at once when nothing was applied since the state machine declined.
async fn snapshot_answers_at_once_when_nothing_is_new<R: Runtime + Clone>(rt: R) {
    let recipe = |_| Recipe { with_snapshots: true, ..Recipe::default() };
    let cluster = Cluster::start(rt.clone(), 1, recipe).await;
    let id = cluster.leader().await;
    cluster.write_on(id, "a").await;
    let node = cluster.node(id);
    assert_eq!(within(&rt, "a first snapshot", node.snapshot()).await, Ok(None));
    assert_eq!(within(&rt, "a second snapshot", node.snapshot()).await, Ok(None));
    cluster.shutdown().await;
}

// ---- 14.8: windows ---------------------------------------------------------------------------

/// A snapshot chunk window larger than the AppendEntries window still transfers the snapshot.
async fn a_snapshot_window_wider_than_the_append_window_completes<R: Runtime + Clone>(rt: R) {
    let recipe = |_| Recipe {
        machine: Machine { takes_snapshots: true, ..Machine::default() },
        with_snapshots: true,
        configure: Some(|c: &mut raft_core::Config| {
            c.max_inflight_append_entries = 1;
            c.snapshot_max_inflight_chunks = 32;
            c.snapshot_chunk_bytes = 16;
            c.snapshot_interval_entries = 10;
            c.snapshot_keep_entries = 0;
        }),
    };
    let cluster = Cluster::start(rt.clone(), 3, recipe).await;
    let leader = cluster.leader().await;
    let follower = other_than(&cluster, &[leader])[0];
    cluster.network.disconnect(follower);
    for i in 0..30 {
        cluster.write_on(leader, &format!("entry-{i:04}-of-the-log")).await;
    }
    cluster.network.reconnect(follower);
    let index = cluster.write_on(leader, "after").await;
    cluster.wait_applied(follower, index).await;
    cluster.shutdown().await;
}

// ---- 14.10: calls from inside the state machine ---------------------------------------------

/// A state machine that, on the command `reenter`, calls every waiting method of its own node,
/// and on `stop` shuts its node down.
struct Reentrant {
    node: Arc<Mutex<Option<Node>>>,
    results: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl StateMachine for Reentrant {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        let node = self.node.lock().unwrap().clone();
        for entry in entries {
            let (Some(node), Some(command)) = (&node, entry.command()) else { continue };
            let mut results = Vec::new();
            if command == "reenter" {
                results.push(format!("{:?}", node.read_index().await));
                results.push(format!("{:?}", node.snapshot().await));
                let change = node
                    .change_membership(MembershipChange::AddLearner(9, NodeInfo::default()))
                    .await;
                results.push(format!("{change:?}"));
                results
                    .push(format!("{:?}", node.add_voter(9, NodeInfo::default(), PATIENCE).await));
                let target = raft_core::Membership::with_voters([1, 9]);
                results.push(format!("{:?}", node.set_membership(target, PATIENCE).await));
                let inner = node.propose(Bytes::from_static(b"inner")).await.unwrap();
                results.push(format!("{:?}", inner.response().await));
                results.push(format!("{:?}", node.write(Bytes::from_static(b"w")).await));
            } else if command == "stop" {
                node.shutdown().await;
                results.push("stopped".into());
            }
            self.results.lock().unwrap().extend(results);
        }
        Ok(vec![Bytes::new(); entries.len()])
    }
}

/// Calls into a node from inside its own state machine fail at once instead of deadlocking;
/// `shutdown` only asks the node to stop.
async fn calls_from_inside_the_state_machine_fail_at_once<R: Runtime + Clone>(rt: R) {
    let slot = Arc::new(Mutex::new(None));
    let results = Arc::new(Mutex::new(Vec::new()));
    let machine = Reentrant { node: slot.clone(), results: results.clone() };
    let network = raft_mem::MemNetwork::new();
    let config = support::config(1);
    let store = raft_mem::MemLogStore::new();
    let node = Node::builder(config, store, network.endpoint(1), machine, rt.clone())
        .snapshot_store(raft_mem::MemSnapshotStore::new())
        .bootstrap(Membership::with_voters([1]))
        .start()
        .await
        .unwrap();
    network.serve(1, Arc::new(node.clone()));
    *slot.lock().unwrap() = Some(node.clone());
    let mut watch = node.watch();
    within(&rt, "leadership", watch.wait_for(|s| s.role == raft_core::Role::Leader)).await;
    let proposal = node.propose(Bytes::from_static(b"reenter")).await.unwrap();
    within(&rt, "the re-entrant apply", proposal.response()).await.unwrap();
    assert_eq!(
        *results.lock().unwrap(),
        [
            "Err(InsideStateMachine)",
            "Err(InsideStateMachine)",
            "Err(InsideStateMachine)",
            "Err(InsideStateMachine)",
            "Err(InsideStateMachine)",
            "Err(InsideStateMachine)",
            "Err(Refused(InsideStateMachine))",
        ]
    );
    // The node goes on: the inner proposal applies too.
    let index = node.propose(Bytes::from_static(b"later")).await.unwrap().index;
    within(&rt, "a later write", watch.wait_for(|s| s.applied_index >= index)).await;
    let _stop = node.propose(Bytes::from_static(b"stop")).await.unwrap();
    within(&rt, "the node stops", watch.wait_for(|_| false)).await;
    within(&rt, "shutdown", node.shutdown()).await;
    assert_eq!(results.lock().unwrap().last().map(String::as_str), Some("stopped"));
}

// ---- 17.7: typed fatal errors ---------------------------------------------------------------

/// Whether `error` is the I/O error of a full disk the faulty store and state machine return.
fn is_disk_full(error: &(dyn std::error::Error + 'static)) -> bool {
    error.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == ErrorKind::StorageFull)
}

/// A log store that fails stops the node with `FatalError::Storage` holding the store's own
/// error (not its text): a caller can tell a full disk from corruption.
async fn a_failing_log_store_stops_the_node_with_its_error<R: Runtime + Clone>(rt: R) {
    let cluster = Cluster::start(rt.clone(), 1, |_| Recipe::default()).await;
    let id = cluster.leader().await;
    cluster.write_on(id, "before").await;
    cluster.members[&id].store.fail_writes.store(true, Ordering::SeqCst);
    let proposal = cluster.node(id).propose(Bytes::from_static(b"lost")).await.unwrap();
    assert!(within(&rt, "the proposal", proposal.response()).await.is_err());
    let fatal = fatal_of(&cluster, id).await;
    let FatalError::Storage(error) = &fatal else { panic!("not a storage error: {fatal:?}") };
    assert!(
        matches!(&**error, StorageError::Io(io) if io.kind() == ErrorKind::StorageFull),
        "{error:?}"
    );
    let source = std::error::Error::source(&fatal).expect("the store's error is the source");
    assert!(source.downcast_ref::<StorageError>().is_some(), "{source:?}");
    cluster.shutdown().await;
}

/// A state machine that fails stops the node with `FatalError::StateMachine` holding its
/// `StateMachineError`, whose own source (an I/O error here) is kept.
async fn a_failing_state_machine_stops_the_node_with_its_error<R: Runtime + Clone>(rt: R) {
    let cluster = Cluster::start(rt.clone(), 1, |_| Recipe::default()).await;
    let id = cluster.leader().await;
    let proposal = cluster.node(id).propose(Bytes::from_static(b"fail")).await.unwrap();
    assert!(within(&rt, "the proposal", proposal.response()).await.is_err());
    let fatal = fatal_of(&cluster, id).await;
    let FatalError::StateMachine(error) = &fatal else { panic!("not an apply error: {fatal:?}") };
    assert_eq!(error.message, "cannot apply");
    let cause = std::error::Error::source(&**error).expect("the state machine's cause");
    assert!(is_disk_full(cause), "{cause:?}");
    cluster.shutdown().await;
}

common::under_runtimes!(
    a_failing_log_store_stops_the_node_with_its_error,
    a_failing_state_machine_stops_the_node_with_its_error,
    a_leader_whose_state_machine_panics_is_replaced,
    a_panicking_log_store_stops_the_node,
    a_leader_whose_network_panics_is_replaced,
    a_panicking_snapshot_store_stops_the_node,
    a_restoring_follower_survives_a_newer_snapshot,
    a_restoring_follower_keeps_answering,
    abandoned_reads_keep_their_slots,
    abandoned_reads_free_their_slots_while_waiting_to_apply,
    a_forwarded_read_ends_when_its_leader_is_removed,
    a_forwarded_read_ends_when_its_leader_removes_itself,
    shutdown_completes_when_rpcs_never_return,
    a_dropped_shutdown_leaves_the_next_one_waiting,
    snapshot_answers_at_once_when_nothing_is_new,
    a_snapshot_window_wider_than_the_append_window_completes,
    calls_from_inside_the_state_machine_fail_at_once,
);

// ---- 14.9: runtime adapters from any thread --------------------------------------------------

/// Starts a cluster, transfers leadership, removes and adds members, all from a thread that is
/// not in the runtime's context.
async fn membership_from_a_plain_thread<R: Runtime + Clone>(rt: R) {
    let mut cluster = Cluster::start(rt.clone(), 3, |_| Recipe::default()).await;
    let old = cluster.leader().await;
    cluster.write_on(old, "before").await;
    let new = other_than(&cluster, &[old])[0];
    within(&rt, "a transfer", cluster.node(old).transfer_leadership(new)).await.unwrap();
    let removed = cluster.node(new).change_membership(MembershipChange::RemoveNode(old));
    within(&rt, "a removal", removed).await.unwrap();
    cluster.add(4, &[], Recipe::default()).await;
    let added = cluster.node(new).add_voter(4, NodeInfo::default(), PATIENCE);
    assert!(within(&rt, "add_voter", added).await.unwrap().voters().contains(&4));
    cluster.write_on(new, "after").await;
    cluster.shutdown().await;
}

#[test]
fn tokio_runtime_works_from_a_plain_thread() {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let rt = raft_core::runtime::TokioRuntime::from_handle(runtime.handle().clone());
    std::thread::spawn(move || futures::executor::block_on(membership_from_a_plain_thread(rt)))
        .join()
        .unwrap();
}

#[test]
fn smol_runtime_runs_on_the_applications_executor() {
    let executor = Arc::new(smol::Executor::new());
    let (stop, stopped) = async_channel::bounded::<()>(1);
    let driver = std::thread::spawn({
        let executor = executor.clone();
        move || smol::block_on(executor.run(stopped.recv()))
    });
    let rt = raft_core::runtime::SmolRuntime::with_executor(executor);
    futures::executor::block_on(membership_from_a_plain_thread(rt));
    drop(stop);
    let _ = driver.join().unwrap();
}

// ---- 14.10: proposal fairness ----------------------------------------------------------------

/// Proposes `late` from inside its second `apply` call (without waiting for it), right after the
/// first call's completion was reported, so that both reach the node in the same step.
struct Injector {
    node: Arc<Mutex<Option<Node>>>,
    gate: Gate,
    calls: u64,
    applied: Arc<Mutex<Vec<Bytes>>>,
    last: Arc<AtomicU64>,
}

#[async_trait]
impl StateMachine for Injector {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        self.gate.pass().await;
        self.calls += 1;
        let node = self.node.lock().unwrap().clone();
        if let Some(node) = node.filter(|_| self.calls == 2) {
            // Queues the proposal and gives up on the answer (the entry is proposed anyway).
            let _ = node.propose(Bytes::from_static(b"late")).now_or_never();
        }
        let mut applied = self.applied.lock().unwrap();
        applied.extend(entries.iter().filter_map(|e| e.command().cloned()));
        self.last.store(entries.last().map_or(0, |e| e.index), Ordering::SeqCst);
        Ok(vec![Bytes::new(); entries.len()])
    }
}

/// Proposals that wait for room are proposed in arrival order: a later one never overtakes
/// them, even when it arrives in the same step as the room.
#[tokio::test]
async fn deferred_proposals_are_not_overtaken() {
    let rt = raft_core::runtime::TokioRuntime::current().unwrap();
    let mut config = support::config(1);
    config.max_unapplied_entries = 2;
    config.max_apply_batch = 1;
    let gate = Gate::default();
    let slot = Arc::new(Mutex::new(None));
    let applied = Arc::new(Mutex::new(Vec::new()));
    let machine = Injector {
        node: slot.clone(),
        gate: gate.clone(),
        calls: 0,
        applied: applied.clone(),
        last: Arc::new(AtomicU64::new(0)),
    };
    let network = raft_mem::MemNetwork::new();
    let store = raft_mem::MemLogStore::new();
    let node = Node::builder(config, store, network.endpoint(1), machine, rt.clone())
        .bootstrap(Membership::with_voters([1]))
        .start()
        .await
        .unwrap();
    network.serve(1, Arc::new(node.clone()));
    let mut watch = node.watch();
    within(&rt, "leadership", watch.wait_for(|s| s.role == raft_core::Role::Leader)).await;
    let proposer = node.clone();
    let proposals = tokio::spawn(async move {
        let all = (0..10).map(|i| proposer.propose(Bytes::from(format!("p{i}"))));
        futures::future::join_all(all).await
    });
    // Let the proposals arrive: the first ones fill the unapplied window, the rest wait.
    rt.sleep(Duration::from_millis(100)).await;
    *slot.lock().unwrap() = Some(node.clone());
    gate.open();
    let accepted = within(&rt, "the proposals", proposals).await.unwrap();
    let last = accepted.iter().map(|p| p.as_ref().unwrap().index).max().unwrap();
    wait_until(&rt, "every proposal applied", || applied.lock().unwrap().len() == 11).await;
    let expected: Vec<Bytes> = (0..10)
        .map(|i| Bytes::from(format!("p{i}")))
        .chain([Bytes::from_static(b"late")])
        .collect();
    assert_eq!(*applied.lock().unwrap(), expected, "applied in arrival order (last {last})");
    node.shutdown().await;
}

// ---- 14.8: settings checked together ---------------------------------------------------------

#[test]
fn settings_that_overflow_the_driver_limits_are_refused() {
    let valid = support::config(1);
    assert_eq!(valid.validate(), Ok(()));
    let mut window = valid.clone();
    window.max_inflight_append_entries = 1 << 20;
    assert!(window.validate().is_err(), "a per-peer queue of a million slots");
    let mut transfer = valid.clone();
    transfer.snapshot_chunk_bytes = raft_core::config::MAX_SNAPSHOT_CHUNK_BYTES;
    transfer.snapshot_max_inflight_chunks = 64;
    assert!(transfer.validate().is_err(), "4 GiB of snapshot chunks in flight per follower");
    let mut reads = valid.clone();
    reads.max_pending_reads = usize::MAX;
    assert!(reads.validate().is_err(), "unbounded reads");
    // The bound on a group's held inbound requests leaves room above the in-flight window.
    let room = raft_core::config::INBOUND_REQUEST_ROOM;
    let mut inbound = valid;
    inbound.max_inflight_append_entries = 48;
    inbound.max_inbound_requests = 48 + room - 1;
    assert!(inbound.validate().is_err(), "a busy group would meet its inbound bound");
    inbound.max_inbound_requests = 48 + room;
    assert_eq!(inbound.validate(), Ok(()));
    inbound.snapshot_max_inflight_chunks = 64;
    assert!(inbound.validate().is_err(), "a snapshot window would meet the inbound bound");
}

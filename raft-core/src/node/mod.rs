//! The node: a handle to a running Raft node, and the async driver behind it.
//!
//! The driver is a few tasks connected by channels:
//!
//! * the **main loop** owns the [`Engine`] and is the only code that touches it; it feeds inputs
//!   in batches (many proposals and messages per step) and dispatches the resulting actions;
//! * the **log writer** writes `Persist` batches in order, merging the ones that queue up while a
//!   write is in progress (one sync for many proposals); the main loop starts a write itself
//!   when none is in progress, and finishes it in its step if the store is done at once;
//! * the **applier** runs the state machine and answers proposers;
//! * one **sender per peer** runs that peer's RPCs concurrently;
//! * the **ticker** turns the runtime's timer into engine ticks (only at the engine's next
//!   deadline while it is quiesced).
//!
//! Messages that acknowledge state wait in the main loop until the writes before them are
//! durable; the leader's own AppendEntries go out at once (see the engine's ordering contract).

mod applier;
mod bootstrap;
mod builder;
mod core_loop;
mod hosted;
mod inbox;
mod membership;
mod peer;
mod probe;
mod quiet;
mod reentrancy;
mod reply;
mod resume;
mod slots;
mod snapshot;
mod supervisor;
mod ticker;
mod waiters;
mod watch;
mod writer;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_channel::Sender;
use async_lock::Semaphore;
use async_trait::async_trait;
use bytes::Bytes;
use futures::channel::{mpsc, oneshot};
use futures::{FutureExt, StreamExt};

pub use self::builder::NodeBuilder;
pub(crate) use self::hosted::{Hosted, Stepped};
pub use self::probe::LATENCY_TARGET;
use self::snapshot::SnapshotInput;
pub(crate) use self::supervisor::panic_message;
use self::supervisor::{Spawner, Task};
pub use self::ticker::{quiesced_wake_grid, QUIESCED_WAKE_GRID_MAX};
use self::watch::StatusCell;
pub use self::watch::StatusWatch;
use crate::config::Config;
use crate::engine::{Engine, SentRequest};
use crate::error::{
    CommitError, FatalError, MembershipError, ProposeError, ReadIndexError, SnapshotError,
    StartError, TransferError, WriteError,
};
use crate::membership::{Membership, NodeInfo};
use crate::message::{Envelope, RpcRequest, RpcResponse};
use crate::metrics::{NodeMetrics, PeerMetrics};
use crate::network::{Network, NetworkError, RpcError, RpcHandler};
use crate::runtime::Runtime;
use crate::snapshot::{SnapshotMeta, SnapshotStore};
use crate::state_machine::{StateMachine, StateMachineError};
use crate::storage::{LogStore, StorageError};
use crate::types::{Entry, LogIndex, NodeId, PeerReplication, Role, Status, Term};

use self::slots::{SlotGuard, Slots};

/// Inputs of the main loop.
pub(crate) enum Input {
    /// This many ticks of `tick_interval` passed.
    Tick(u64),
    /// Proposals are waiting in the node's [`inbox::Inbox`] (sent by the proposer that found
    /// it empty, or by the inbox for what a step had no room for).
    Proposals,
    Request {
        request: RpcRequest,
        reply: oneshot::Sender<RpcResponse>,
    },
    ReadIndex {
        read: PendingRead,
    },
    /// The caller of a `read_index` gave up: reads waiting for the state machine whose callers
    /// are gone can be let go (freeing their slots).
    ReadAbandoned,
    ChangeMembership {
        request: membership::Request,
        permit: SlotGuard,
        reply: oneshot::Sender<Result<membership::Step, MembershipError>>,
    },
    /// Answer once a single-configuration membership after `after` is committed.
    MembershipCommitted {
        after: LogIndex,
        waiter: membership::CommitWaiter,
    },
    TransferLeadership {
        target: NodeId,
        reply: oneshot::Sender<Result<(), TransferError>>,
    },
    Replication {
        reply: oneshot::Sender<Vec<PeerReplication>>,
    },
    /// Why `peer` refused the latest RPC to it, if it did.
    LastRefusal {
        peer: NodeId,
        reply: oneshot::Sender<Option<crate::network::RefusalReason>>,
    },
    Response {
        from: NodeId,
        sent: SentRequest,
        result: Result<RpcResponse, NetworkError>,
    },
    Persisted {
        seq: u64,
        written: crate::engine::PersistedWrite,
        result: Result<(), Arc<StorageError>>,
        /// When the store's future resolved (the runtime's clock).
        ended: std::time::Duration,
    },
    Applied(LogIndex),
    ApplyFailed(Arc<StateMachineError>),
    Snapshot(SnapshotInput),
    /// A task failed (panicked): the node stops.
    Fatal(FatalError),
    Shutdown,
}

/// Whom the main loop answers about a proposal.
pub(crate) enum ProposeReply {
    /// `Node::propose`: the [`Proposal`] once the entry is appended (or the refusal).
    Appended(oneshot::Sender<Result<Proposal, ProposeError>>),
    /// `Node::write`: the state machine's response once the entry is applied (or the refusal),
    /// on one channel: one message to the caller instead of two.
    Applied(reply::ReplySender<Result<Bytes, WriteError>>),
}

impl ProposeReply {
    /// Tells the proposer that its proposal was not accepted.
    pub(crate) fn refuse(self, error: ProposeError) {
        match self {
            ProposeReply::Appended(reply) => {
                let _ = reply.send(Err(error));
            }
            ProposeReply::Applied(reply) => reply.send(Err(WriteError::Refused(error))),
        }
    }
}

/// A `Node::read_index` call on its way through the node: its reply channel and its read slot,
/// which the read holds wherever it waits (input queue, main loop, engine, applier) until it is
/// answered or dropped, whatever the caller does with its future.
pub(crate) struct PendingRead {
    pub(crate) reply: oneshot::Sender<Result<LogIndex, ReadIndexError>>,
    pub(crate) _slot: async_lock::SemaphoreGuardArc,
}

impl PendingRead {
    /// Answers the read (freeing its slot).
    pub(crate) fn answer(self, result: Result<LogIndex, ReadIndexError>) {
        let _ = self.reply.send(result);
    }

    /// Whether the caller stopped waiting (then the read can be dropped, freeing its slot).
    pub(crate) fn abandoned(&self) -> bool {
        self.reply.is_canceled()
    }
}

/// The answer a `read_index` caller waits for. Dropped before it came (the caller gave up), it
/// tells the node, which then lets go of the read at once if it waits for the state machine (a
/// read waiting for a round or an RPC is let go when that ends), freeing its slot for others.
struct WaitingRead<'a> {
    answer: Option<oneshot::Receiver<Result<LogIndex, ReadIndexError>>>,
    shared: &'a Shared,
}

impl Drop for WaitingRead<'_> {
    fn drop(&mut self) {
        let Some(answer) = self.answer.take() else { return };
        drop(answer); // the read is abandoned from now on
        match self.shared.inputs.try_send(Input::ReadAbandoned) {
            Err(async_channel::TrySendError::Full(input)) => {
                // The node is busy: tell it as soon as there is room.
                let inputs = self.shared.inputs.clone();
                self.shared.runtime.spawn(Box::pin(async move {
                    let _ = inputs.send(input).await;
                }));
            }
            Ok(()) | Err(async_channel::TrySendError::Closed(_)) => {}
        }
    }
}

/// State shared by every clone of a [`Node`].
struct Shared {
    id: NodeId,
    /// The cluster and group this node serves: required on every inbound request.
    address: peer::Address,
    /// Refused inbound requests, logged at most once per interval per sender and refusal.
    refusals: Mutex<quiet::QuietLog<(NodeId, &'static str)>>,
    /// The inbound requests being handled (received, not yet answered).
    inbound_held: AtomicUsize,
    /// Bounds `inbound_held` (`Config::max_inbound_requests`): beyond it a request is refused
    /// (`RpcError::Overloaded`), so that one group with a stalled store cannot hold what a
    /// transport shares between groups (raft-quic: the streams of a connection).
    max_inbound_requests: usize,
    max_payload_bytes: u64,
    heartbeat_interval: Duration,
    /// How long a membership change waits for an earlier one (or the leader's first commit).
    change_wait: Duration,
    transfer_timeout: Duration,
    runtime: Arc<dyn Runtime>,
    membership: Arc<Mutex<Membership>>,
    inputs: Sender<Input>,
    /// Proposals on their way to the main loop.
    inbox: Arc<inbox::Inbox>,
    status: Arc<StatusCell>,
    proposal_slots: Arc<Slots>,
    /// Bounds the reads this node holds (`Config::max_pending_reads`), wherever they wait.
    read_slots: Arc<Semaphore>,
    fatal: Arc<Mutex<Option<FatalError>>>,
    /// Names this node to detect calls from inside its own state machine.
    token: u64,
    /// Completes (yields `None`) once every task of the node has ended.
    tasks_done: async_lock::Mutex<mpsc::Receiver<()>>,
    metrics: Arc<NodeMetrics>,
}

/// A handle to a running Raft node. Cheap to clone; every clone controls the same node.
///
/// The node runs on the tasks it spawned on the [`Runtime`] given to [`Node::start`] until
/// [`Node::shutdown`] is called, or until a fatal store or state machine error stops it
/// ([`Node::fatal_error`] says which). Dropping handles does not stop it.
#[derive(Clone)]
pub struct Node {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.shared.id).finish_non_exhaustive()
    }
}

/// An accepted proposal: its position in the log and a way to wait for the state machine's
/// response.
#[derive(Debug)]
pub struct Proposal {
    /// The index of the entry in the log.
    pub index: LogIndex,
    /// The term of the entry (the leader's term when it was proposed).
    pub term: Term,
    response: oneshot::Receiver<Result<Bytes, CommitError>>,
    /// The proposing node's token (see `reentrancy`).
    node: u64,
}

impl Proposal {
    /// Waits until the entry is applied and returns the state machine's response for it. The
    /// entry is then committed: it is on a majority of nodes and will survive any failure the
    /// cluster survives.
    ///
    /// Awaited inside the proposing node's own state machine before the entry was applied, it
    /// fails at once with [`CommitError::InsideStateMachine`] (it would wait for itself).
    pub async fn response(mut self) -> Result<Bytes, CommitError> {
        if reentrancy::inside_state_machine(self.node) {
            return match self.response.try_recv() {
                Ok(Some(answer)) => answer,
                Ok(None) => Err(CommitError::InsideStateMachine),
                Err(_) => Err(CommitError::Shutdown),
            };
        }
        self.response.await.unwrap_or(Err(CommitError::Shutdown))
    }
}

/// Slots in the main loop's input queue. Proposals are bounded separately (by
/// `max_pending_proposals`); this only decides when senders start to wait.
pub(crate) const INPUT_QUEUE_CAPACITY: usize = 16_384;

/// Bytes of entries read per store call while loading the log at start.
const LOAD_CHUNK_BYTES: u64 = 16 << 20;

/// Most RPCs in flight to one peer: the larger of the AppendEntries and InstallSnapshot
/// windows, plus heartbeats and votes (so that a full window of either never crowds out the
/// other messages, nor the window itself).
pub(crate) fn max_in_flight_per_peer(config: &Config) -> usize {
    config.max_inflight_append_entries.max(config.snapshot_max_inflight_chunks) + 8
}

/// Starts the sender of one peer: a task, or in a hosted node a future its host loop polls
/// ([`peer::InlineSenders`]).
pub(crate) struct PeerFactory {
    spawner: Spawner,
    network: Arc<dyn Network>,
    inputs: Sender<Input>,
    capacity: usize,
    metrics: Arc<NodeMetrics>,
    chunk_bytes: u64,
    address: peer::Address,
    /// Hosted node (`NodeBuilder::start_hosted`): the senders its host loop polls. `None`:
    /// each sender is a task.
    inline: Option<peer::InlineSenders>,
}

impl PeerFactory {
    /// Starts the sender of `peer` and returns its queue: spawns it as a task, or in a hosted
    /// node keeps its future for the host loop to poll ([`PeerFactory::poll_inline`]).
    pub(crate) fn start(&mut self, peer: NodeId) -> peer::PeerQueue {
        let (queue, task) = self.queue(peer);
        match &mut self.inline {
            None => self.spawner.spawn(Task::Other(format!("sender to peer {peer}")), task.boxed()),
            Some(inline) => inline.push(peer, task.boxed()),
        }
        queue
    }

    /// A new queue to `peer` and its sender's future.
    fn queue(
        &self,
        peer: NodeId,
    ) -> (peer::PeerQueue, impl std::future::Future<Output = ()> + Send + 'static) {
        let metrics = PeerMetrics::new(self.metrics.clone(), peer, self.chunk_bytes);
        let network = self.network.clone();
        peer::PeerQueue::new(
            peer,
            self.address,
            network,
            self.inputs.clone(),
            self.capacity,
            metrics,
        )
    }

    /// Hands `request` to the sender of `peer` (whose queue is `queue`). In a hosted node an
    /// InstallSnapshot goes to the peer's snapshot sender task, started on the first one: its
    /// chunk is read from the snapshot store inside the send, which must not stall the host
    /// loop.
    pub(crate) fn send(
        &self,
        peer: NodeId,
        queue: &mut peer::PeerQueue,
        request: RpcRequest,
    ) -> Result<(), async_channel::TrySendError<RpcRequest>> {
        if self.inline.is_none() || !matches!(request, RpcRequest::InstallSnapshot(_)) {
            return queue.queue().try_send(request);
        }
        let start = || {
            let (queue, task) = self.queue(peer);
            self.spawner.spawn(Task::Other(format!("sender to peer {peer}")), task.boxed());
            queue
        };
        queue.snapshots(start).try_send(request)
    }

    /// Hosted node: polls its inline senders with `cx` ([`peer::InlineSenders::poll`]) and
    /// reports each that panicked as a task's supervisor does: logged, and
    /// `Input::Fatal` queued to the main loop (which wakes the group). Returns the failures
    /// that could not be queued (the input queue full or closed), for the main loop to take
    /// itself.
    pub(crate) fn poll_inline(&mut self, cx: &mut std::task::Context<'_>) -> Vec<FatalError> {
        let Some(inline) = &mut self.inline else { return Vec::new() };
        let mut unqueued = Vec::new();
        for error in inline.poll(cx) {
            tracing::error!(%error, "a task of the node panicked");
            if let Err(refused) = self.inputs.try_send(Input::Fatal(error)) {
                if let Input::Fatal(error) = refused.into_inner() {
                    unqueued.push(error);
                }
            }
        }
        unqueued
    }
}

impl Node {
    /// Starts a node with snapshots: opens `store` and `snapshots`, restores the state machine
    /// from the latest snapshot, loads the log after it, and spawns the node's tasks on
    /// `runtime`. Same as `Node::builder(..).snapshot_store(snapshots).start()` (see
    /// [`NodeBuilder::snapshot_store`] and [`NodeBuilder::start`]).
    ///
    /// The node takes snapshots by the policy of `Config::snapshot_interval_*` (on by default)
    /// if the state machine implements `StateMachine::snapshot`, compacts its log, and sends or
    /// installs snapshots when a follower is too far behind. It starts as a follower and learns
    /// the commit index from the leader. Inbound RPCs must be routed to the returned node (it
    /// implements [`RpcHandler`]). To found a new cluster on its first start, or to run without
    /// snapshots, use [`Node::builder`] ([`NodeBuilder::bootstrap`]).
    pub async fn start<S, N, M, R>(
        config: Config,
        store: S,
        snapshots: impl SnapshotStore,
        network: N,
        state_machine: M,
        runtime: R,
    ) -> Result<Node, StartError>
    where
        S: LogStore,
        N: Network,
        M: StateMachine,
        R: Runtime,
    {
        let builder = Self::builder(config, store, network, state_machine, runtime);
        builder.snapshot_store(snapshots).start().await
    }

    /// A builder for a node with options: a snapshot store ([`NodeBuilder::snapshot_store`];
    /// without one the node keeps its whole log and cannot catch up through a snapshot) and a
    /// bootstrap ([`NodeBuilder::bootstrap`]).
    pub fn builder<S, N, M, R>(
        config: Config,
        store: S,
        network: N,
        state_machine: M,
        runtime: R,
    ) -> NodeBuilder<S, N, M, R>
    where
        S: LogStore,
        N: Network,
        M: StateMachine,
        R: Runtime,
    {
        NodeBuilder::new(config, store, network, state_machine, runtime)
    }

    /// Starts a node (see [`NodeBuilder::start`]): [`Node::prepare`]s it with its ticker task,
    /// then spawns its main loop as its own task on `runtime`.
    async fn launch<S, N, M, R>(
        config: Config,
        store: S,
        network: N,
        state_machine: M,
        runtime: R,
        options: builder::Options,
    ) -> Result<Node, StartError>
    where
        S: LogStore,
        N: Network,
        M: StateMachine,
        R: Runtime,
    {
        let (node, hosted) =
            Self::prepare(config, store, network, state_machine, runtime, options, Runner::Task)
                .await?;
        hosted.spawn(node.shared.runtime.clone());
        Ok(node)
    }

    /// Prepares a node: opens `store` (and the snapshot store), restores the state machine and
    /// loads the log as [`NodeBuilder::start`] says, spawns the node's tasks other than the
    /// main loop (applier, snapshot tasks, ticker; log writer and peer senders unless a host
    /// loop runs it, see [`Runner`]; in an order kept since the spawn order is part of a
    /// deterministic simulation's schedule) and builds the main loop. Returns the node's handle and its
    /// main loop, which does nothing until its runner runs it: its own task
    /// ([`hosted::Hosted::spawn`]) or a host loop (which then also sends its ticks: plan S1).
    async fn prepare<S, N, M, R>(
        config: Config,
        store: S,
        network: N,
        mut state_machine: M,
        runtime: R,
        options: builder::Options,
        runner: Runner,
    ) -> Result<(Node, hosted::Hosted), StartError>
    where
        S: LogStore,
        N: Network,
        M: StateMachine,
        R: Runtime,
    {
        let builder::Options { snapshots, bootstrap, metric_labels } = options;
        config.validate()?;
        if let Some(limit) = network.max_request_bytes() {
            config.check_request_limit(limit).map_err(|(setting, needed)| {
                StartError::ExceedsTransport { setting, needed, limit }
            })?;
        }
        let mut durable = store.open().await?;
        let mut entries = load_log(&store, durable.first_index(), durable.last.index).await?;
        if let Some(membership) = bootstrap {
            let (id, snaps) = (config.id, snapshots.as_ref());
            bootstrap::bootstrap(&store, snaps, id, membership, &mut durable, &mut entries).await?;
        }
        // A state machine that persists its own state says what it holds.
        let applied = state_machine.applied_index().filter(|a| a.index > 0);
        let engine = match &snapshots {
            None => {
                if let Some(applied) = applied {
                    resume::check(applied, &durable, &entries, None)?;
                }
                Engine::new(config.clone(), &durable, entries)
            }
            Some(snaps) => {
                let chunk = config.snapshot_chunk_bytes;
                let latest = snapshot::recover(
                    &store,
                    snaps,
                    &mut state_machine,
                    (&mut durable, &mut entries),
                    chunk,
                    applied,
                )
                .await?;
                Engine::with_snapshots(config.clone(), &durable, entries, latest)
            }
        };
        let engine = match applied {
            Some(applied) => engine.resume_applied(applied.index),
            None => engine,
        };
        let store = Arc::new(store);
        let id = config.id;
        let token = reentrancy::new_node_token();
        let status = StatusCell::new(engine.status());
        let applied_at_start = engine.status().applied_index;
        let fatal = Arc::new(Mutex::new(None));
        let (inputs_tx, inputs_rx) = async_channel::bounded(INPUT_QUEUE_CAPACITY);
        let (applier_tx, applier_rx) = async_channel::unbounded();
        let (done_tx, done_rx) = mpsc::channel::<()>(0);
        let network = Arc::new(snapshot::ChunkFiller {
            inner: network,
            store: snapshots.clone(),
            chunk_bytes: config.snapshot_chunk_bytes,
        });
        let runtime: Arc<dyn Runtime> = Arc::new(runtime);
        let metrics = Arc::new(NodeMetrics::new(id, &metric_labels, runtime.clone()));
        let spawner =
            Spawner { runtime: runtime.clone(), done: done_tx, inputs: inputs_tx.clone() };
        let spawn = |name: &str, future| spawner.spawn(Task::Other(name.to_owned()), future);
        let peer_factory = PeerFactory {
            spawner: spawner.clone(),
            network: network.clone() as Arc<dyn Network>,
            inputs: inputs_tx.clone(),
            capacity: max_in_flight_per_peer(&config),
            metrics: metrics.clone(),
            chunk_bytes: config.snapshot_chunk_bytes,
            address: peer::Address { cluster_id: config.cluster_id, group_id: config.group_id },
            inline: (runner == Runner::HostLoop).then(peer::InlineSenders::default),
        };
        let membership = Arc::new(Mutex::new(engine.membership().clone()));
        let (snap_ops, applier_snapshots) = match &snapshots {
            None => (None, None),
            Some(snaps) => {
                let (ops_tx, ops_rx) = async_channel::unbounded();
                let ops =
                    snapshot::run_ops(store.clone(), snaps.clone(), ops_rx, inputs_tx.clone());
                spawn("snapshot storage task", ops.boxed());
                let (jobs_tx, jobs_rx) = async_channel::bounded(1);
                let builder = snapshot::run_builder(snaps.clone(), jobs_rx, inputs_tx.clone());
                spawn("snapshot builder", builder.boxed());
                let chunk_bytes = config.snapshot_chunk_bytes;
                let applier = snapshot::ApplierSnapshots {
                    store: snaps.clone(),
                    builder: jobs_tx,
                    chunk_bytes,
                };
                (Some(ops_tx), Some(applier))
            }
        };
        let start_write = writer::start_write(store);
        let writer = if runner == Runner::HostLoop {
            core_loop::LogWriter::Inline(writer::InlineWriter::new(
                start_write.clone(),
                metrics.clone(),
            ))
        } else {
            let (writer_tx, writer_rx) = async_channel::unbounded();
            let writer =
                writer::run(start_write.clone(), writer_rx, inputs_tx.clone(), metrics.clone());
            spawn("log writer", writer.boxed());
            core_loop::LogWriter::Task(writer_tx)
        };
        spawn(
            "applier (state machine)",
            applier::run(
                reentrancy::Marked { token, inner: state_machine },
                applier_rx,
                inputs_tx.clone(),
                applier_snapshots,
                applied_at_start,
                metrics.clone(),
            )
            .boxed(),
        );
        let ticking = ticker::Ticking {
            pacer: ticker::Pacer::new(),
            tick: config.tick_interval,
            grid: ticker::quiesced_wake_grid(config.quiesce_check_interval),
            inputs: inputs_tx.clone(),
        };
        let ticks = ticker::run(
            ticking.pacer.clone(),
            runtime.clone(),
            ticking.tick,
            ticking.grid,
            ticking.inputs.clone(),
        );
        spawn("ticker", ticks.boxed());
        let inbox = Arc::new(inbox::Inbox::new(inputs_tx.clone()));
        let ends = Arc::new(supervisor::Inputs {
            receiver: inputs_rx,
            inbox: inbox.clone(),
            status: status.clone(),
            fatal: fatal.clone(),
        });
        let main_loop = core_loop::CoreLoop::new(
            token,
            engine,
            ends.clone(),
            core_loop::Outlets { writer, start_write, applier: applier_tx, peer_factory },
            membership.clone(),
            runtime.clone(),
            core_loop::LoopMetrics::new(metrics.clone()),
        )
        .with_snapshots(snap_ops)
        .with_pacer(ticking.pacer.clone());
        let hosted = hosted::Hosted { core: main_loop, ends, done: spawner.done.clone(), ticking };
        drop(spawner);
        tracing::info!(
            id,
            cluster_id = config.cluster_id,
            term = durable.hard_state.current_term,
            last = ?durable.last,
            "node started"
        );
        let node = Node {
            shared: Arc::new(Shared {
                id,
                address: peer::Address { cluster_id: config.cluster_id, group_id: config.group_id },
                refusals: Mutex::new(quiet::QuietLog::default()),
                inbound_held: AtomicUsize::new(0),
                max_inbound_requests: config.max_inbound_requests,
                max_payload_bytes: config.max_payload_bytes,
                heartbeat_interval: config.heartbeat_interval,
                change_wait: config.election_timeout_max,
                transfer_timeout: config
                    .leadership_transfer_timeout
                    .saturating_add(config.election_timeout_max),
                runtime,
                membership,
                inputs: inputs_tx,
                inbox,
                status,
                proposal_slots: Arc::new(Slots::new(config.max_pending_proposals)),
                read_slots: Arc::new(Semaphore::new(config.max_pending_reads)),
                fatal,
                token,
                tasks_done: async_lock::Mutex::new(done_rx),
                metrics,
            }),
        };
        Ok((node, hosted))
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.shared.id
    }

    /// Proposes `command` for the replicated log.
    ///
    /// Fails at once with [`ProposeError::NotLeader`] on a node that is not the leader. On the
    /// leader, waits for room if `max_pending_proposals` proposals are already pending or the
    /// state machine is `max_unapplied_entries` behind (back-pressure), then appends the entry
    /// and returns its index and term; [`Proposal::response`] waits for it to be applied.
    pub async fn propose(&self, command: Bytes) -> Result<Proposal, ProposeError> {
        self.check_proposal(&command)?;
        let permit = self.proposal_slot().await;
        let (reply, answer) = oneshot::channel();
        self.submit(inbox::Proposed { command, permit, reply: ProposeReply::Appended(reply) })?;
        answer.await.unwrap_or(Err(ProposeError::Shutdown))
    }

    /// Proposes `command` and waits until it is applied: [`Node::propose`] followed by
    /// [`Proposal::response`], in one call and at a lower cost (one message to the node and
    /// one answer, instead of an answer when the entry is appended and another when it is
    /// applied). Refusals are those of `propose` ([`WriteError::Refused`]: nothing was
    /// appended), failures after the entry was appended those of `response`
    /// ([`WriteError::Failed`]). If the node stops before answering, the outcome is unknown:
    /// [`WriteError::Failed`] with [`CommitError::Shutdown`].
    ///
    /// Called inside this node's own state machine, it fails at once with
    /// [`ProposeError::InsideStateMachine`] without proposing (it would wait for itself).
    pub async fn write(&self, command: Bytes) -> Result<Bytes, WriteError> {
        if reentrancy::inside_state_machine(self.shared.token) {
            return Err(ProposeError::InsideStateMachine.into());
        }
        self.check_proposal(&command)?;
        let permit = self.proposal_slot().await;
        let (reply, answer) = reply::channel();
        self.submit(inbox::Proposed { command, permit, reply: ProposeReply::Applied(reply) })?;
        // Dropped unanswered: the node stopped, before or after appending the entry.
        answer.await.unwrap_or(Err(WriteError::Failed(CommitError::Shutdown)))
    }

    /// One of the node's `max_pending_proposals` slots, waiting for one if none is free (the
    /// wait's future is built only then).
    async fn proposal_slot(&self) -> SlotGuard {
        match self.shared.proposal_slots.try_acquire() {
            Some(permit) => permit,
            None => self.shared.proposal_slots.acquire().await,
        }
    }

    /// Hands `proposal` to the main loop (through the inbox; the proposer that finds the inbox
    /// empty wakes the main loop). Never waits: proposals are bounded by their slots, not by
    /// the input queue. Fails if the node stopped.
    fn submit(&self, proposal: inbox::Proposed) -> Result<(), ProposeError> {
        match self.shared.inbox.push(proposal) {
            Ok(inbox::Pushed::Queued) => {}
            Ok(inbox::Pushed::WakeMainLoop) => {
                self.shared.inbox.wake_main_loop(self.shared.runtime.as_ref())
            }
            Err(_) => return Err(ProposeError::Shutdown),
        }
        Ok(())
    }

    /// The checks of a proposal that need no round trip to the main loop: its size, and
    /// whether this node is the leader as far as it knows.
    fn check_proposal(&self, command: &Bytes) -> Result<(), ProposeError> {
        let size = command.len() as u64;
        if size > self.shared.max_payload_bytes {
            self.shared.metrics.proposals_failed.increment(1);
            return Err(ProposeError::TooLarge { size, limit: self.shared.max_payload_bytes });
        }
        if self.shared.status.is_leader() {
            return Ok(());
        }
        let status = self.shared.status.get();
        if status.role != Role::Leader {
            self.shared.metrics.proposals_failed.increment(1);
            // A stopped node publishes "follower" after closing its inputs: it says so.
            if self.shared.inputs.is_closed() {
                return Err(ProposeError::Shutdown);
            }
            let leader_info = self.member_info(status.leader_id);
            return Err(ProposeError::NotLeader { leader_id: status.leader_id, leader_info });
        }
        Ok(())
    }

    /// Takes a snapshot now (the manual trigger) and returns the latest snapshot once it covers
    /// every entry applied when this was called; returns at once if the latest snapshot already
    /// does. `Ok(None)`: the node has no snapshot store or its state machine takes no
    /// snapshots. Runs beside the policy of `Config::snapshot_interval_*`, and compacts the log
    /// like a policy snapshot.
    ///
    /// Called inside this node's own state machine, it fails at once with
    /// [`SnapshotError::InsideStateMachine`] (the snapshot is taken on the apply path).
    pub async fn snapshot(&self) -> Result<Option<SnapshotMeta>, SnapshotError> {
        if reentrancy::inside_state_machine(self.shared.token) {
            return Err(SnapshotError::InsideStateMachine);
        }
        let answer = self.ask(|reply| Input::Snapshot(SnapshotInput::Trigger(reply))).await;
        answer.ok_or(SnapshotError::Shutdown)
    }

    /// A linearizable read point (ReadIndex, Raft thesis §6.4): returns an index such that every
    /// write acknowledged before this call is at or below it, once this node's state machine
    /// has applied it. Reading the local state machine afterwards observes every such write.
    ///
    /// On the leader, the index is the commit index confirmed by a quorum round shared with
    /// every other read that arrived meanwhile (no log write), or at once while its lease holds
    /// with `Config::lease_reads`. On a follower, the leader is asked for the index (one RPC for
    /// all the reads of a step) and the follower waits to apply it, so followers can serve
    /// reads. Fails at once with [`ReadIndexError::NotLeader`] when no leader is known. At most
    /// `Config::max_pending_reads` calls are in progress at once; more wait for room. The wait
    /// for the local state machine has no deadline: wrap the call in your runtime's timeout if
    /// needed.
    ///
    /// A read holds its slot until it is answered, wherever it waits in the node: a caller that
    /// gives up (drops this future) does not free the slot before the node has let go of the
    /// read: at once if the read waits for the state machine, when its quorum round or its RPC
    /// to the leader ends otherwise.
    ///
    /// Called inside this node's own state machine, it fails at once with
    /// [`ReadIndexError::InsideStateMachine`] (it would wait for itself).
    pub async fn read_index(&self) -> Result<LogIndex, ReadIndexError> {
        if reentrancy::inside_state_machine(self.shared.token) {
            return Err(ReadIndexError::InsideStateMachine);
        }
        let started = self.shared.metrics.now();
        let slot = self.shared.read_slots.acquire_arc().await;
        // The applier answers once the state machine has applied the index.
        let (reply, answer) = oneshot::channel();
        let read = PendingRead { reply, _slot: slot };
        if self.shared.inputs.send(Input::ReadIndex { read }).await.is_err() {
            self.shared.metrics.read_done(started, false);
            return Err(ReadIndexError::Shutdown);
        }
        let mut waiting = WaitingRead { answer: Some(answer), shared: &self.shared };
        let answer = match waiting.answer.as_mut() {
            Some(answer) => answer.await,
            None => Err(oneshot::Canceled),
        };
        waiting.answer = None; // answered: nothing to let go of
        let result = answer.unwrap_or(Err(ReadIndexError::Shutdown));
        self.shared.metrics.read_done(started, result.is_ok());
        result
    }

    /// Leader: what it knows of each follower's replication (match index, whether it is in
    /// sync, whether a snapshot is on its way), e.g. to watch a learner catch up before promoting
    /// it. Empty on a node that is not the leader, and after shutdown.
    pub async fn replication(&self) -> Vec<PeerReplication> {
        self.ask(|reply| Input::Replication { reply }).await.unwrap_or_default()
    }

    /// Why `peer` refused this node's latest RPC to it, if it did (`None` once another RPC
    /// has another outcome, and for a peer this node does not talk to): why a learner does
    /// not catch up.
    async fn last_refusal(&self, peer: NodeId) -> Option<crate::network::RefusalReason> {
        self.ask(|reply| Input::LastRefusal { peer, reply }).await.flatten()
    }

    /// The cluster membership this node uses now (the latest in its log, committed or not).
    pub fn membership(&self) -> Membership {
        self.shared.membership.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The metadata of member `id` in [`Node::membership`] (`None` for `None` or a non-member).
    fn member_info(&self, id: Option<NodeId>) -> Option<NodeInfo> {
        let membership = self.shared.membership.lock().unwrap_or_else(|p| p.into_inner());
        id.and_then(|id| membership.node(id).cloned())
    }

    /// Leader: hands leadership to the voter `target` (Raft thesis §3.10): stops taking proposals
    /// (they wait), brings `target` up to date, and tells it to campaign at once. Returns once
    /// this node sees `target` as leader, or [`TransferError::TimedOut`] after
    /// `Config::leadership_transfer_timeout` plus an election timeout (the old leader then
    /// takes proposals again if it still leads). A transfer to this node returns at once.
    pub async fn transfer_leadership(&self, target: NodeId) -> Result<(), TransferError> {
        let answer = self.ask(|reply| Input::TransferLeadership { target, reply }).await;
        answer.unwrap_or(Err(TransferError::Shutdown))?;
        if target == self.shared.id {
            return Ok(());
        }
        let mut watch = self.watch();
        let moved = async move {
            watch.wait_for(|s| s.leader_id == Some(target) && s.role != Role::Leader).await
        };
        let timeout = self.shared.runtime.sleep(self.shared.transfer_timeout);
        let outcome = match futures::future::select(Box::pin(moved), timeout).await {
            futures::future::Either::Left((seen, _)) => Some(seen.is_some()),
            futures::future::Either::Right(_) => None,
        };
        match outcome {
            Some(true) => Ok(()),
            Some(false) => Err(TransferError::Shutdown),
            None => Err(TransferError::TimedOut { leader_id: self.status().leader_id }),
        }
    }

    /// Sends the main loop the input `make` builds around a reply channel and waits for the
    /// reply; `None` if the node stopped before answering.
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Input) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        self.shared.inputs.send(make(reply)).await.ok()?;
        answer.await.ok()
    }

    /// The node's current status.
    pub fn status(&self) -> Status {
        self.shared.status.get()
    }

    /// A watch of the node's status.
    pub fn watch(&self) -> StatusWatch {
        StatusWatch::new(self.shared.status.clone())
    }

    /// Why the node stopped on its own, if it did (a store or state machine failure).
    pub fn fatal_error(&self) -> Option<FatalError> {
        self.shared.fatal.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether the node has stopped (shut down or failed): it takes no more inputs.
    pub(crate) fn is_stopped(&self) -> bool {
        self.shared.inputs.is_closed()
    }

    /// Whether this runs inside a call of this node's own state machine (`apply`, `snapshot`,
    /// `restore`): the node cannot stop before that call returns.
    pub(crate) fn inside_own_state_machine(&self) -> bool {
        reentrancy::inside_state_machine(self.shared.token)
    }

    /// Whether `other` is a handle to this very node (not another node started later).
    pub(crate) fn same_node(&self, other: &Node) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Stops the node: every task and timer ends, pending proposals, reads and inbound RPCs
    /// fail with `Shutdown` (those still queued too), and writes already handed to the store
    /// complete (a node of a [`Host::with_loop`](crate::Host::with_loop) host hands the store
    /// one write at a time and drops the batches queued behind it: nothing was acknowledged
    /// for them, as after a crash; in its own task the log writer writes them too). Returns
    /// once everything has stopped (then the stores are no longer used).
    ///
    /// Idempotent and cancellation-safe: calling it again (or on a node that stopped on its own)
    /// waits for the same end, and returns at once if the node has already stopped; a call
    /// dropped before it returned leaves the next call waiting just the same.
    ///
    /// Called inside this node's own state machine, it only asks the node to stop and returns at
    /// once: the node waits for that call to finish, so waiting here would wait for itself.
    /// (`Host::remove_group`, which promises a stopped node, refuses such a call instead.)
    pub async fn shutdown(&self) {
        if self.inside_own_state_machine() {
            let _ = self.shared.inputs.try_send(Input::Shutdown);
            return;
        }
        let _ = self.shared.inputs.send(Input::Shutdown).await;
        // The receiver stays in place until it has yielded `None`: a dropped call loses nothing.
        let mut done = self.shared.tasks_done.lock().await;
        while done.next().await.is_some() {}
    }
}

#[async_trait]
impl RpcHandler for Node {
    /// Checks the envelope, then hands the request to the main loop and waits for its answer
    /// (an AppendEntries is answered once its entries are durable). The node holds at most
    /// `Config::max_inbound_requests` requests at once; beyond, a request is refused at once
    /// with [`RpcError::Overloaded`] (the sender retries it as a failed RPC).
    async fn handle_rpc(&self, envelope: Envelope) -> Result<RpcResponse, RpcError> {
        let shared = &self.shared;
        let refused = |refusal: RpcError, envelope: &Envelope| {
            let sender = envelope.request.sender();
            let now = shared.runtime.now();
            let mut refusals = shared.refusals.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(suppressed) = refusals.record((sender, refusal.kind()), now) {
                tracing::warn!(
                    id = shared.id,
                    peer = sender,
                    kind = envelope.request.kind(),
                    suppressed,
                    "refused a request: {refusal}"
                );
            }
            Err(refusal)
        };
        if let Err(refusal) = shared.address.accepts(shared.id, &envelope) {
            return refused(refusal, &envelope);
        }
        let Some(_held) = InboundSlot::take(&shared.inbound_held, shared.max_inbound_requests)
        else {
            let limit = u64::try_from(shared.max_inbound_requests).unwrap_or(u64::MAX);
            return refused(RpcError::Overloaded { group: envelope.group_id, limit }, &envelope);
        };
        let request = envelope.request;
        self.ask(|reply| Input::Request { request, reply }).await.ok_or(RpcError::Shutdown)
    }
}

/// One inbound request held by a node (counted in `Shared::inbound_held`), given back when its
/// handling ends or is dropped.
struct InboundSlot<'a> {
    held: &'a AtomicUsize,
}

impl<'a> InboundSlot<'a> {
    /// Takes a slot, unless `limit` are held.
    fn take(held: &'a AtomicUsize, limit: usize) -> Option<Self> {
        let taken = held.fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
            (now < limit).then_some(now + 1)
        });
        taken.ok().map(|_| Self { held })
    }
}

impl Drop for InboundSlot<'_> {
    fn drop(&mut self) {
        self.held.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Reads the stored log `first..=last` in bounded chunks, checking that it is contiguous.
async fn load_log<S: LogStore>(
    store: &S,
    first: LogIndex,
    last: LogIndex,
) -> Result<Vec<Entry>, StorageError> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut next = first;
    while next <= last {
        let chunk = store.read(next..last + 1, LOAD_CHUNK_BYTES).await?;
        if chunk.is_empty() {
            return Err(StorageError::Corrupt(format!(
                "log read at {next} returned nothing (last is {last})"
            )));
        }
        for entry in chunk {
            if entry.index != next {
                return Err(StorageError::Corrupt(format!(
                    "expected entry {next}, found {}",
                    entry.index
                )));
            }
            if entries.last().is_some_and(|prev| prev.term > entry.term) {
                return Err(StorageError::Corrupt(format!("term goes backwards at entry {next}")));
            }
            next += 1;
            entries.push(entry);
        }
    }
    Ok(entries)
}

/// Who runs a prepared node's main loop ([`Node::prepare`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Runner {
    /// Its own task (`NodeBuilder::start`); the node has a log writer task and a sender task
    /// per peer.
    Task,
    /// A host loop (`NodeBuilder::start_hosted`): the main loop writes its log inline (plan
    /// S2), and its peer senders, but InstallSnapshot's, are futures the host loop polls
    /// (`Hosted::poll_peers`, plan S3b-lite).
    HostLoop,
}

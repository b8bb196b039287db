//! Test doubles for the driver fault tests: a state machine, a log store, a snapshot store and a
//! network that can be made to panic, hang or wait at chosen points, and a small cluster of
//! nodes built from them on any runtime.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code, unreachable_pub)]

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use raft_core::{
    Bytes, Config, DurableState, Entry, Envelope, LogId, LogIndex, LogStore, Membership, Network,
    NetworkError, Node, NodeId, RpcError, RpcHandler, RpcRequest, RpcResponse, Runtime,
    SnapshotMeta, SnapshotStore, SnapshotStream, SnapshotWriter, StateMachine, StateMachineError,
    StorageError, WriteBatch,
};
use raft_mem::{MemLogStore, MemNetwork, MemSnapshotStore};

/// A generous bound used only to turn a hang into a failure, never to measure speed.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Runs `future`, failing the test if it takes longer than [`PATIENCE`].
pub async fn within<R: Runtime, T>(
    rt: &R,
    what: &str,
    future: impl std::future::Future<Output = T>,
) -> T {
    futures::select! {
        value = future.fuse() => value,
        _ = rt.sleep(PATIENCE).fuse() => panic!("timed out waiting for {what}"),
    }
}

/// Waits (within [`PATIENCE`]) until `condition` holds, checking every few milliseconds.
pub async fn wait_until<R: Runtime>(rt: &R, what: &str, mut condition: impl FnMut() -> bool) {
    within(rt, what, async {
        while !condition() {
            rt.sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// `Some(value)` if `future` completes within `duration`.
pub async fn before<R: Runtime, T>(
    rt: &R,
    duration: Duration,
    future: impl std::future::Future<Output = T>,
) -> Option<T> {
    futures::select! {
        value = future.fuse() => Some(value),
        _ = rt.sleep(duration).fuse() => None,
    }
}

/// Short timeouts keep the tests quick; they are still many ticks long.
pub use raft_mem::harness::test_config as config;

/// A gate that tasks wait at until the test opens it (for good).
#[derive(Clone)]
pub struct Gate {
    /// Never sent on: closing it (opening the gate) wakes every waiter.
    closed: async_channel::Sender<()>,
    wait: async_channel::Receiver<()>,
}

impl Default for Gate {
    fn default() -> Self {
        let (closed, wait) = async_channel::bounded(1);
        Self { closed, wait }
    }
}

impl Gate {
    pub fn open(&self) {
        self.closed.close();
    }

    pub fn is_open(&self) -> bool {
        self.closed.is_closed()
    }

    pub async fn pass(&self) {
        let _ = self.wait.recv().await;
    }
}

/// The state machine: its state is the list of commands applied. Panics on the command
/// `poison` once armed; fails the command `fail` (with an I/O error as its source); takes
/// snapshots if asked to; its restores can be held at a gate.
#[derive(Clone, Default)]
pub struct Machine {
    pub commands: Arc<Mutex<Vec<Bytes>>>,
    pub poison_armed: Arc<AtomicBool>,
    pub takes_snapshots: bool,
    /// Restores wait here (when set) after announcing themselves in `restores_started`.
    pub restore_gate: Option<Gate>,
    pub restores_started: Arc<AtomicUsize>,
    pub restores_done: Arc<AtomicUsize>,
    /// Applies wait here (when set).
    pub apply_gate: Option<Gate>,
}

/// Snapshot data comes in pieces of this size.
const PIECE_BYTES: usize = 64;

#[async_trait]
impl StateMachine for Machine {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        if let Some(gate) = &self.apply_gate {
            gate.pass().await;
        }
        let mut responses = Vec::with_capacity(entries.len());
        for entry in entries {
            let command = entry.command().cloned().unwrap_or_default();
            if entry.command().is_some() {
                if command == "poison" && self.poison_armed.load(Ordering::SeqCst) {
                    panic!("poisoned command at index {}", entry.index);
                }
                if command == "fail" {
                    let cause = std::io::Error::new(std::io::ErrorKind::StorageFull, "disk full");
                    return Err(StateMachineError::with_source("cannot apply", cause));
                }
                self.commands.lock().unwrap().push(command.clone());
            }
            responses.push(command);
        }
        Ok(responses)
    }

    async fn snapshot(&mut self) -> Result<Option<SnapshotStream>, StateMachineError> {
        if !self.takes_snapshots {
            return Ok(None);
        }
        let state: Vec<Vec<u8>> =
            self.commands.lock().unwrap().iter().map(|c| c.to_vec()).collect();
        let encoded = Bytes::from(postcard::to_allocvec(&state).unwrap());
        let pieces: Vec<Result<Bytes, StateMachineError>> = (0..encoded.len())
            .step_by(PIECE_BYTES)
            .map(|at| Ok(encoded.slice(at..(at + PIECE_BYTES).min(encoded.len()))))
            .collect();
        Ok(Some(futures::stream::iter(pieces).boxed()))
    }

    async fn restore(
        &mut self,
        _meta: &SnapshotMeta,
        mut data: SnapshotStream,
    ) -> Result<(), StateMachineError> {
        self.restores_started.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = &self.restore_gate {
            gate.pass().await;
        }
        let mut encoded = Vec::new();
        while let Some(chunk) = data.next().await {
            encoded.extend_from_slice(&chunk?);
        }
        let state: Vec<Vec<u8>> = postcard::from_bytes(&encoded)
            .map_err(|e| StateMachineError::new(format!("decoding a snapshot: {e}")))?;
        *self.commands.lock().unwrap() = state.into_iter().map(Bytes::from).collect();
        self.restores_done.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// What a [`FaultyNetwork`] does.
#[derive(Default)]
pub struct NetworkFaults {
    pub panic_on_send: AtomicBool,
    /// Every RPC hangs forever.
    pub hang_all: AtomicBool,
    /// ReadIndex RPCs hang forever.
    pub hang_read_index: AtomicBool,
    pub sent: AtomicUsize,
    pub read_index_sent: AtomicUsize,
}

#[derive(Clone)]
pub struct FaultyNetwork<N> {
    pub inner: N,
    pub faults: Arc<NetworkFaults>,
}

#[async_trait]
impl<N: Network> Network for FaultyNetwork<N> {
    async fn send(&self, envelope: Envelope) -> Result<RpcResponse, NetworkError> {
        let (target, request) = (envelope.receiver, &envelope.request);
        let faults = &self.faults;
        faults.sent.fetch_add(1, Ordering::SeqCst);
        if faults.panic_on_send.load(Ordering::SeqCst) {
            panic!("network exploded sending to {target}");
        }
        let read_index = matches!(request, RpcRequest::ReadIndex(_));
        if read_index {
            faults.read_index_sent.fetch_add(1, Ordering::SeqCst);
        }
        if faults.hang_all.load(Ordering::SeqCst)
            || (read_index && faults.hang_read_index.load(Ordering::SeqCst))
        {
            futures::future::pending::<()>().await;
        }
        self.inner.send(envelope).await
    }
}

/// A log store that can be made to panic in `write`, to fail it (a full disk), or to hold
/// writes at a gate.
#[derive(Clone, Default)]
pub struct FaultyStore {
    pub inner: MemLogStore,
    pub panic_on_write: Arc<AtomicBool>,
    pub fail_writes: Arc<AtomicBool>,
    pub write_gate: Arc<Mutex<Option<Gate>>>,
    pub writes_started: Arc<AtomicUsize>,
    pub writes_finished: Arc<AtomicUsize>,
    /// Called as each write ends, before its future resolves.
    pub after_write: Arc<Mutex<Option<AfterWrite>>>,
}

/// What [`FaultyStore::after_write`] calls.
pub type AfterWrite = Arc<dyn Fn() + Send + Sync>;

#[async_trait]
impl LogStore for FaultyStore {
    async fn open(&self) -> Result<DurableState, StorageError> {
        self.inner.open().await
    }
    async fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        if self.panic_on_write.load(Ordering::SeqCst) {
            panic!("log store exploded");
        }
        if self.fail_writes.load(Ordering::SeqCst) {
            let full = std::io::Error::new(std::io::ErrorKind::StorageFull, "disk full");
            return Err(StorageError::Io(full));
        }
        self.writes_started.fetch_add(1, Ordering::SeqCst);
        let gate = self.write_gate.lock().unwrap().clone();
        if let Some(gate) = gate {
            gate.pass().await;
        }
        let result = self.inner.write(batch).await;
        self.writes_finished.fetch_add(1, Ordering::SeqCst);
        if let Some(after_write) = self.after_write.lock().unwrap().clone() {
            after_write();
        }
        result
    }
    async fn read(
        &self,
        range: Range<LogIndex>,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.inner.read(range, max_bytes).await
    }
    async fn purge(&self, up_to: LogIndex) -> Result<(), StorageError> {
        self.inner.purge(up_to).await
    }
    async fn reset(&self, last_included: LogId) -> Result<(), StorageError> {
        self.inner.reset(last_included).await
    }
}

/// A snapshot store that can be made to panic when a snapshot is begun.
#[derive(Clone, Default)]
pub struct FaultySnapshots {
    pub inner: MemSnapshotStore,
    pub panic_on_begin: Arc<AtomicBool>,
}

#[async_trait]
impl SnapshotStore for FaultySnapshots {
    async fn latest(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        self.inner.latest().await
    }
    async fn begin(&self) -> Result<Box<dyn SnapshotWriter>, StorageError> {
        if self.panic_on_begin.load(Ordering::SeqCst) {
            panic!("snapshot store exploded");
        }
        self.inner.begin().await
    }
    async fn read(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        max_bytes: u64,
    ) -> Result<Bytes, StorageError> {
        self.inner.read(meta, offset, max_bytes).await
    }
}

/// Sees every request delivered to a node before the node does.
pub struct Watched {
    pub node: Node,
    pub seen: Box<dyn Fn(&RpcRequest) + Send + Sync>,
}

#[async_trait]
impl RpcHandler for Watched {
    async fn handle_rpc(&self, request: Envelope) -> Result<RpcResponse, RpcError> {
        (self.seen)(&request.request);
        self.node.handle_rpc(request).await
    }
}

/// One node of a [`Cluster`] and its doubles.
pub struct Member {
    pub node: Node,
    pub machine: Machine,
    pub store: FaultyStore,
    pub snapshots: FaultySnapshots,
    pub network: Arc<NetworkFaults>,
}

/// Nodes on one [`MemNetwork`], each with its own doubles.
pub struct Cluster<R: Runtime + Clone> {
    pub runtime: R,
    pub network: MemNetwork,
    pub members: std::collections::BTreeMap<NodeId, Member>,
}

/// How to build one member.
#[derive(Clone, Default)]
pub struct Recipe {
    pub machine: Machine,
    pub with_snapshots: bool,
    pub configure: Option<fn(&mut Config)>,
}

impl<R: Runtime + Clone> Cluster<R> {
    pub fn new(runtime: R) -> Self {
        Self { runtime, network: MemNetwork::new(), members: Default::default() }
    }

    /// Starts a cluster of voters `1..=n` built by `recipe(id)`.
    pub async fn start(runtime: R, n: u64, recipe: impl Fn(NodeId) -> Recipe) -> Self {
        let mut cluster = Self::new(runtime);
        let voters: Vec<NodeId> = (1..=n).collect();
        for &id in &voters {
            cluster.add(id, &voters, recipe(id)).await;
        }
        cluster
    }

    /// Starts node `id` on empty stores: founding a cluster of `voters`, or waiting to join one
    /// if `voters` is empty.
    pub async fn add(&mut self, id: NodeId, voters: &[NodeId], recipe: Recipe) {
        let mut config = config(id);
        if let Some(configure) = recipe.configure {
            configure(&mut config);
        }
        let faults = Arc::new(NetworkFaults::default());
        let network = FaultyNetwork { inner: self.network.endpoint(id), faults: faults.clone() };
        let store = FaultyStore::default();
        let snapshots = FaultySnapshots::default();
        let builder = Node::builder(
            config,
            store.clone(),
            network,
            recipe.machine.clone(),
            self.runtime.clone(),
        );
        let builder =
            if recipe.with_snapshots { builder.snapshot_store(snapshots.clone()) } else { builder };
        let builder = if voters.is_empty() {
            builder
        } else {
            builder.bootstrap(Membership::with_voters(voters.iter().copied()))
        };
        let node = builder.start().await.unwrap();
        self.network.serve(id, Arc::new(node.clone()));
        let member = Member { node, machine: recipe.machine, store, snapshots, network: faults };
        self.members.insert(id, member);
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.members[&id].node
    }

    /// Waits until exactly one running node leads and every other running node follows it.
    pub async fn leader(&self) -> NodeId {
        self.leader_among(&self.running()).await
    }

    /// The members that have not stopped.
    pub fn running(&self) -> Vec<NodeId> {
        self.members
            .iter()
            .filter(|(_, m)| m.node.fatal_error().is_none())
            .map(|(&id, _)| id)
            .collect()
    }

    pub async fn leader_among(&self, ids: &[NodeId]) -> NodeId {
        within(&self.runtime, "a leader", async {
            loop {
                let statuses: Vec<_> = ids.iter().map(|id| self.node(*id).status()).collect();
                let leaders: Vec<_> =
                    statuses.iter().filter(|s| s.role == raft_core::Role::Leader).collect();
                if let [leader] = leaders[..] {
                    if statuses.iter().all(|s| s.leader_id == Some(leader.id)) {
                        return leader.id;
                    }
                }
                self.runtime.sleep(Duration::from_millis(5)).await;
            }
        })
        .await
    }

    /// Proposes `data` on `leader` and waits for its response.
    pub async fn write_on(&self, leader: NodeId, data: &str) -> LogIndex {
        let node = self.node(leader);
        within(&self.runtime, "a write", async {
            let proposal = node.propose(Bytes::copy_from_slice(data.as_bytes())).await.unwrap();
            let index = proposal.index;
            proposal.response().await.unwrap();
            index
        })
        .await
    }

    pub async fn wait_applied(&self, id: NodeId, index: LogIndex) {
        let mut watch = self.node(id).watch();
        within(&self.runtime, "applies", watch.wait_for(|s| s.applied_index >= index)).await;
    }

    pub async fn shutdown(&self) {
        for member in self.members.values() {
            within(&self.runtime, "shutdown", member.node.shutdown()).await;
        }
    }
}

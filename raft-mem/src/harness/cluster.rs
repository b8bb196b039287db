//! A cluster of real nodes on a real runtime, built from per-node factories.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use raft_core::{
    Bytes, Config, LogIndex, LogStore, Membership, Network, Node, NodeId, ProposeError, Role,
    Runtime, SnapshotStore, StartError, StateMachine, Status,
};

use super::RecordingStateMachine;
use crate::MemNetwork;

/// An error a factory returns (opening a store, binding an endpoint).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a [`Cluster`] waits for anything by default: a bound that only turns a hang into a
/// failure, never a measure of speed.
pub const DEFAULT_PATIENCE: Duration = Duration::from_secs(30);

/// Why a [`Cluster`] operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// What the cluster waited for did not happen within its patience.
    #[error("timed out after {patience:?} waiting for {what}")]
    Timeout {
        /// What it waited for.
        what: String,
        /// How long it waited.
        patience: Duration,
    },
    /// A factory failed to make a part of node `id`.
    #[error("making the {part} of node {id}: {source}")]
    Factory {
        /// The node.
        id: NodeId,
        /// The part: "log store", "snapshot store" or "network endpoint".
        part: &'static str,
        /// The factory's error.
        source: BoxError,
    },
    /// Node `id` did not start.
    #[error("starting node {id}: {source}")]
    Start {
        /// The node.
        id: NodeId,
        /// Why.
        source: StartError,
    },
    /// A proposal failed for a reason other than a change of leader.
    #[error("proposing on node {id}: {source}")]
    Propose {
        /// The node proposed on.
        id: NodeId,
        /// Why.
        source: ProposeError,
    },
    /// Node `id` stopped with a fatal error.
    #[error("node {id} failed: {error}")]
    Fatal {
        /// The node.
        id: NodeId,
        /// Its fatal error.
        error: String,
    },
    /// Node `id` is not running.
    #[error("node {0} is not running")]
    NotRunning(NodeId),
    /// Node `id` runs already.
    #[error("node {0} runs already")]
    AlreadyRunning(NodeId),
}

/// How the nodes of a [`Cluster`] reach each other: makes each node's [`Network`] endpoint and
/// hands incoming requests to the node. Implemented for [`MemNetwork`]; a test of another
/// transport implements it for its own endpoints.
#[async_trait]
pub trait Transport: Send + 'static {
    /// A node's endpoint.
    type Network: Network;

    /// The endpoint node `id` sends through, at each start of the node.
    async fn endpoint(&mut self, id: NodeId) -> Result<Self::Network, BoxError>;

    /// Delivers the requests addressed to `id` to `node`, which just started.
    fn serve(&mut self, id: NodeId, node: &Node);

    /// Stops delivering requests to `id`: called before the node shuts down.
    async fn unserve(&mut self, id: NodeId);

    /// Called after node `id` shut down (release its endpoint, for instance). Does nothing by
    /// default.
    async fn release(&mut self, _id: NodeId) {}
}

#[async_trait]
impl Transport for MemNetwork {
    type Network = crate::MemEndpoint;

    async fn endpoint(&mut self, id: NodeId) -> Result<Self::Network, BoxError> {
        Ok(MemNetwork::endpoint(self, id))
    }

    fn serve(&mut self, id: NodeId, node: &Node) {
        MemNetwork::serve(self, id, Arc::new(node.clone()));
    }

    async fn unserve(&mut self, id: NodeId) {
        self.stop_serving(id);
    }
}

type ConfigFn = Box<dyn Fn(NodeId) -> Config + Send + Sync>;
type PartFn<T> = Box<dyn FnMut(NodeId) -> Result<T, BoxError> + Send>;
type SnapshotStoreFn = PartFn<Option<Arc<dyn SnapshotStore>>>;
type BootstrapFn = Box<dyn FnMut(NodeId) -> bool + Send>;

/// Builds a [`Cluster`]: the runtime, the transport, the founding voters, and a factory for
/// each part of a node (called at every start of the node, so a factory decides what survives
/// a restart: give back the same durable store, or a fresh one).
pub struct ClusterBuilder<R, T, S, M> {
    runtime: R,
    transport: T,
    voters: Vec<NodeId>,
    log_store: PartFn<S>,
    state_machine: Box<dyn FnMut(NodeId) -> M + Send>,
    config: ConfigFn,
    snapshot_store: Option<SnapshotStoreFn>,
    bootstrap_if: Option<BootstrapFn>,
    patience: Duration,
}

impl<R, T, S, M> std::fmt::Debug for ClusterBuilder<R, T, S, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterBuilder")
            .field("voters", &self.voters)
            .field("patience", &self.patience)
            .finish_non_exhaustive()
    }
}

/// A configuration with fast timers for tests on a real clock: 5 ms ticks, 25 ms heartbeats,
/// elections after 150 to 300 ms. The default of [`ClusterBuilder::config`].
pub fn test_config(id: NodeId) -> Config {
    let mut config = Config::new(id);
    config.tick_interval = Duration::from_millis(5);
    config.heartbeat_interval = Duration::from_millis(25);
    config.election_timeout_min = Duration::from_millis(150);
    config.election_timeout_max = Duration::from_millis(300);
    config
}

impl<R, T, S, M> ClusterBuilder<R, T, S, M>
where
    R: Runtime + Clone,
    T: Transport,
    S: LogStore,
    M: StateMachine + Clone,
{
    /// Each node's configuration (default: [`test_config`]).
    pub fn config(mut self, config: impl Fn(NodeId) -> Config + Send + Sync + 'static) -> Self {
        self.config = Box::new(config);
        self
    }

    /// Gives each start of a node a snapshot store, or none (`Ok(None)`; the default: no
    /// snapshots).
    pub fn snapshot_store<F, P>(mut self, mut factory: F) -> Self
    where
        F: FnMut(NodeId) -> Result<Option<P>, BoxError> + Send + 'static,
        P: SnapshotStore,
    {
        self.snapshot_store = Some(Box::new(move |id| {
            Ok(factory(id)?.map(|store| Arc::new(store) as Arc<dyn SnapshotStore>))
        }));
        self
    }

    /// Decides whether a start of a founding voter bootstraps the cluster (for stores that
    /// outlive the `Cluster`, such as directories on disk: bootstrap when they are new). By
    /// default a voter bootstraps at its first start by this `Cluster`.
    pub fn bootstrap_if(mut self, decide: impl FnMut(NodeId) -> bool + Send + 'static) -> Self {
        self.bootstrap_if = Some(Box::new(decide));
        self
    }

    /// How long to wait for anything before failing with [`HarnessError::Timeout`] (default
    /// [`DEFAULT_PATIENCE`]).
    pub fn patience(mut self, patience: Duration) -> Self {
        self.patience = patience;
        self
    }

    /// The cluster, with no node started yet (see [`Cluster::start`], [`Cluster::start_all`]).
    pub fn build(self) -> Cluster<R, T, S, M> {
        Cluster {
            setup: self,
            nodes: BTreeMap::new(),
            state_machines: BTreeMap::new(),
            started: BTreeSet::new(),
        }
    }
}

/// Real [`Node`]s on a real runtime (tokio, smol, ... through [`Runtime`]) with any log store,
/// network and snapshot store: start, stop and restart nodes, wait for a leader, propose and
/// wait for every node to apply, and read what each node applied. Every wait is bounded by the
/// cluster's patience and fails with [`HarnessError::Timeout`] rather than hanging.
///
/// The cluster keeps a clone of the state machine of each node's latest start: with a state
/// machine whose clones share their state, such as [`RecordingStateMachine`], a test reads
/// what the node applied.
pub struct Cluster<R, T, S, M> {
    /// The runtime, the transport, the voters, the factories and the patience.
    setup: ClusterBuilder<R, T, S, M>,
    nodes: BTreeMap<NodeId, Node>,
    state_machines: BTreeMap<NodeId, M>,
    started: BTreeSet<NodeId>,
}

impl<R, T, S, M> std::fmt::Debug for Cluster<R, T, S, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("voters", &self.setup.voters)
            .field("running", &self.nodes.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Cluster<(), (), (), ()> {
    /// A builder of a cluster whose founding `voters` run on `runtime` and talk through
    /// `transport`, each start of node `id` opening `log_store(id)` and running
    /// `state_machine(id)`.
    pub fn builder<R, T, S, M>(
        runtime: R,
        transport: T,
        voters: impl IntoIterator<Item = NodeId>,
        log_store: impl FnMut(NodeId) -> Result<S, BoxError> + Send + 'static,
        state_machine: impl FnMut(NodeId) -> M + Send + 'static,
    ) -> ClusterBuilder<R, T, S, M> {
        ClusterBuilder {
            runtime,
            transport,
            voters: voters.into_iter().collect(),
            log_store: Box::new(log_store),
            state_machine: Box::new(state_machine),
            config: Box::new(test_config),
            snapshot_store: None,
            bootstrap_if: None,
            patience: DEFAULT_PATIENCE,
        }
    }
}

impl<R, T, S, M> Cluster<R, T, S, M>
where
    R: Runtime + Clone,
    T: Transport,
    S: LogStore,
    M: StateMachine + Clone,
{
    /// Starts node `id` (a founding voter bootstraps the cluster at its first start, see
    /// [`ClusterBuilder::bootstrap_if`]; any other node starts as a node joining the cluster).
    /// Fails if it runs already.
    pub async fn start(&mut self, id: NodeId) -> Result<&Node, HarnessError> {
        if self.nodes.contains_key(&id) {
            return Err(HarnessError::AlreadyRunning(id));
        }
        // Decided before the factories run: opening a store may create what `bootstrap_if`
        // looks for.
        let bootstrap = match &mut self.setup.bootstrap_if {
            Some(decide) => decide(id),
            None => !self.started.contains(&id),
        } && self.setup.voters.contains(&id);
        let factory = |part| move |source| HarnessError::Factory { id, part, source };
        let store = (self.setup.log_store)(id).map_err(factory("log store"))?;
        let snapshots = match &mut self.setup.snapshot_store {
            Some(make) => make(id).map_err(factory("snapshot store"))?,
            None => None,
        };
        let network =
            self.setup.transport.endpoint(id).await.map_err(factory("network endpoint"))?;
        let state_machine = (self.setup.state_machine)(id);
        let mut builder = Node::builder(
            (self.setup.config)(id),
            store,
            network,
            state_machine.clone(),
            self.setup.runtime.clone(),
        );
        if let Some(snapshots) = snapshots {
            builder = builder.snapshot_store(snapshots);
        }
        if bootstrap {
            builder = builder.bootstrap(Membership::with_voters(self.setup.voters.iter().copied()));
        }
        let node = builder.start().await.map_err(|source| HarnessError::Start { id, source })?;
        self.setup.transport.serve(id, &node);
        self.started.insert(id);
        self.state_machines.insert(id, state_machine);
        Ok(self.nodes.entry(id).or_insert(node))
    }

    /// Starts every founding voter that is not running.
    pub async fn start_all(&mut self) -> Result<(), HarnessError> {
        for id in self.setup.voters.clone() {
            if !self.nodes.contains_key(&id) {
                self.start(id).await?;
            }
        }
        Ok(())
    }

    /// Stops node `id`: the transport stops delivering to it, the node shuts down (its stores
    /// keep what was durable), the transport releases its endpoint. Fails if the node had
    /// stopped with a fatal error, or was not running.
    pub async fn stop(&mut self, id: NodeId) -> Result<(), HarnessError> {
        let node = self.nodes.remove(&id).ok_or(HarnessError::NotRunning(id))?;
        self.setup.transport.unserve(id).await;
        node.shutdown().await;
        self.setup.transport.release(id).await;
        match node.fatal_error() {
            Some(error) => Err(HarnessError::Fatal { id, error: error.to_string() }),
            None => Ok(()),
        }
    }

    /// Stops and starts node `id` again.
    pub async fn restart(&mut self, id: NodeId) -> Result<&Node, HarnessError> {
        self.stop(id).await?;
        self.start(id).await
    }

    /// Stops every running node (each of them, even if one fails); the first failure.
    pub async fn stop_all(&mut self) -> Result<(), HarnessError> {
        let mut result = Ok(());
        for id in self.running() {
            let stopped = self.stop(id).await;
            if result.is_ok() {
                result = stopped;
            }
        }
        result
    }

    /// Treats node `id` as never started: its next start bootstraps again if it is a founding
    /// voter (after its stores were wiped, say) unless [`ClusterBuilder::bootstrap_if`] says
    /// otherwise.
    pub fn forget(&mut self, id: NodeId) {
        self.started.remove(&id);
    }

    /// The running nodes' ids, in order.
    pub fn running(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// The founding voters.
    pub fn voters(&self) -> &[NodeId] {
        &self.setup.voters
    }

    /// Node `id`, if it runs.
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(&id)
    }

    /// Node `id`, or [`HarnessError::NotRunning`].
    pub fn running_node(&self, id: NodeId) -> Result<&Node, HarnessError> {
        self.node(id).ok_or(HarnessError::NotRunning(id))
    }

    /// The state machine of node `id`'s latest start (a clone of what the node runs).
    pub fn state_machine(&self, id: NodeId) -> Option<&M> {
        self.state_machines.get(&id)
    }

    /// The runtime the nodes run on.
    pub fn runtime(&self) -> &R {
        &self.setup.runtime
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.setup.transport
    }

    /// The transport, to change (add a peer, inject a fault).
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.setup.transport
    }

    /// The cluster's patience.
    pub fn patience(&self) -> Duration {
        self.setup.patience
    }

    /// Runs `future` for at most the cluster's patience; [`HarnessError::Timeout`] naming
    /// `what` after that.
    pub async fn within<F: Future>(
        &self,
        what: &str,
        future: F,
    ) -> Result<F::Output, HarnessError> {
        futures::select! {
            value = future.fuse() => Ok(value),
            _ = self.setup.runtime.sleep(self.setup.patience).fuse() => Err(HarnessError::Timeout {
                what: what.to_string(),
                patience: self.setup.patience,
            }),
        }
    }

    /// Waits until exactly one running node leads and every running node follows it in its
    /// term; returns its id.
    pub async fn leader(&self) -> Result<NodeId, HarnessError> {
        self.leader_among(|_| true).await
    }

    /// Waits until exactly one of the running nodes that `counts` leads and every one of them
    /// follows it in its term (the others, e.g. nodes cut off by the network, are not looked
    /// at: one may still believe it leads); returns its id.
    pub async fn leader_among(
        &self,
        counts: impl Fn(NodeId) -> bool,
    ) -> Result<NodeId, HarnessError> {
        self.within("a leader", async {
            loop {
                let statuses: Vec<Status> = self
                    .nodes
                    .iter()
                    .filter(|(&id, _)| counts(id))
                    .map(|(_, node)| node.status())
                    .collect();
                let leaders: Vec<&Status> =
                    statuses.iter().filter(|s| s.role == Role::Leader).collect();
                if let [leader] = leaders[..] {
                    if statuses.iter().all(|s| {
                        s.current_term == leader.current_term && s.leader_id == Some(leader.id)
                    }) {
                        return leader.id;
                    }
                }
                self.setup.runtime.sleep(Duration::from_millis(5)).await;
            }
        })
        .await
    }

    /// Proposes `command` on the leader until one commits and applies it (retrying after a
    /// change of leader); returns its index and the leader's state machine's response.
    pub async fn propose(&self, command: Bytes) -> Result<(LogIndex, Bytes), HarnessError> {
        self.within("a committed proposal", async {
            loop {
                let leader = self.leader().await?;
                match self.running_node(leader)?.propose(command.clone()).await {
                    Ok(proposal) => {
                        let index = proposal.index;
                        if let Ok(response) = proposal.response().await {
                            return Ok((index, response));
                        }
                    }
                    Err(ProposeError::NotLeader { .. }) => {}
                    Err(source) => return Err(HarnessError::Propose { id: leader, source }),
                }
                self.setup.runtime.sleep(Duration::from_millis(5)).await;
            }
        })
        .await?
    }

    /// Proposes `command` as [`propose`](Self::propose) does, then waits until every running
    /// node applied it; returns its index.
    pub async fn propose_everywhere(&self, command: Bytes) -> Result<LogIndex, HarnessError> {
        let (index, _) = self.propose(command).await?;
        self.wait_applied(index).await?;
        Ok(index)
    }

    /// Waits until node `id` applied `index`.
    pub async fn wait_applied_on(&self, id: NodeId, index: LogIndex) -> Result<(), HarnessError> {
        let mut watch = self.running_node(id)?.watch();
        let what = format!("node {id} to apply {index}");
        self.within(&what, watch.wait_for(|s| s.applied_index >= index)).await?;
        Ok(())
    }

    /// Waits until every running node applied `index`.
    pub async fn wait_applied(&self, index: LogIndex) -> Result<(), HarnessError> {
        for id in self.running() {
            self.wait_applied_on(id, index).await?;
        }
        Ok(())
    }
}

impl<R, T, S> Cluster<R, T, S, RecordingStateMachine>
where
    R: Runtime + Clone,
    T: Transport,
    S: LogStore,
{
    /// The commands node `id` applied (or restored from a snapshot) since its latest start,
    /// with their indexes, in log order; empty if it never started.
    pub fn applied(&self, id: NodeId) -> Vec<(LogIndex, Bytes)> {
        self.state_machine(id).map(RecordingStateMachine::commands).unwrap_or_default()
    }

    /// The commands of [`applied`](Self::applied), without their indexes.
    pub fn commands(&self, id: NodeId) -> Vec<Bytes> {
        self.applied(id).into_iter().map(|(_, command)| command).collect()
    }

    /// The snapshots node `id` restored since its latest start (see
    /// [`RecordingStateMachine::restored`]).
    pub fn restored(&self, id: NodeId) -> Vec<raft_core::LogId> {
        self.state_machine(id).map(RecordingStateMachine::restored).unwrap_or_default()
    }
}

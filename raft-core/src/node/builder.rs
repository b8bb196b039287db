//! [`NodeBuilder`]: starting a node with options.

use std::sync::Arc;

use super::Node;
use crate::config::Config;
use crate::error::StartError;
use crate::membership::Membership;
use crate::network::Network;
use crate::runtime::Runtime;
use crate::snapshot::SnapshotStore;
use crate::state_machine::StateMachine;
use crate::storage::LogStore;

/// Starts a [`Node`] with options. Made by [`Node::builder`]; [`Node::start`] is
/// `Node::builder(..).snapshot_store(..).start()`.
///
/// ```ignore
/// let node = Node::builder(config, log_store, network, state_machine, runtime)
///     .snapshot_store(snapshot_store)
///     .bootstrap(Membership::with_voters([1, 2, 3])) // first start of a founding node only
///     .start()
///     .await?;
/// ```
///
/// Without [`snapshot_store`](NodeBuilder::snapshot_store) the node runs without snapshots: it
/// keeps its whole log, a restart applies it all again, and it refuses InstallSnapshot
/// (`SnapshotRefusal::Unsupported`), so it cannot join a cluster whose leader compacted its log
/// (`Node::add_voter` on the leader then fails with `MembershipError::SnapshotRefused`).
pub struct NodeBuilder<S, N, M, R> {
    config: Config,
    store: S,
    network: N,
    state_machine: M,
    runtime: R,
    snapshots: Option<Arc<dyn SnapshotStore>>,
    bootstrap: Option<Membership>,
    metric_labels: Vec<(String, String)>,
}

impl<S, N, M, R> std::fmt::Debug for NodeBuilder<S, N, M, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBuilder")
            .field("id", &self.config.id)
            .field("snapshots", &self.snapshots.is_some())
            .field("bootstrap", &self.bootstrap)
            .finish_non_exhaustive()
    }
}

impl<S, N, M, R> NodeBuilder<S, N, M, R>
where
    S: LogStore,
    N: Network,
    M: StateMachine,
    R: Runtime,
{
    pub(super) fn new(config: Config, store: S, network: N, state_machine: M, runtime: R) -> Self {
        let metric_labels = Vec::new();
        Self {
            config,
            store,
            network,
            state_machine,
            runtime,
            snapshots: None,
            bootstrap: None,
            metric_labels,
        }
    }

    /// Keeps snapshots in `store`: the node takes snapshots of its state machine by the policy of
    /// `Config::snapshot_interval_*` (and on [`Node::snapshot`]), compacts its log once a
    /// snapshot is durable (keeping `Config::snapshot_keep_entries`), sends the snapshot to
    /// followers that need compacted entries, installs snapshots from its leader, and restarts
    /// from the latest snapshot plus the log after it. The log store must implement
    /// [`LogStore::reset`].
    pub fn snapshot_store(mut self, store: impl SnapshotStore) -> Self {
        self.snapshots = Some(Arc::new(store));
        self
    }

    /// Founds a new cluster whose first membership is `membership` (this node must be one of its
    /// voters): [`start`](NodeBuilder::start) writes it durably as the first entry of the log,
    /// before anything else happens. A one-time step, for the first start of a founding node:
    /// on stores that hold anything (a membership, a term, a vote, an entry or a snapshot) the
    /// start fails with [`StartError::Bootstrap`] and writes nothing, so starting a node that
    /// already runs in a cluster with `bootstrap` is refused instead of founding a second
    /// cluster. Every later start, and every node that joins the cluster, goes without it.
    ///
    /// Bootstrap one founding node, or several with the *same* membership (each writes the same
    /// entry); the others start empty and receive the membership from the first leader.
    /// Bootstrapping nodes of one cluster with different memberships breaks Raft's safety. A
    /// node started without `bootstrap` on empty stores has no members: it never campaigns and
    /// waits for a leader to send it the log (add it with `Node::add_voter` or
    /// `MembershipChange::AddLearner` on the leader).
    pub fn bootstrap(mut self, membership: Membership) -> Self {
        self.bootstrap = Some(membership);
        self
    }

    /// Adds labels (name, value) to every metric the node records, besides `node_id`: for
    /// instance the group id when several Raft groups share a process, or a cluster name.
    /// Metrics go through the `metrics` facade to the recorder installed before the node starts
    /// (none: they cost a branch each); [`crate::metrics`] lists them.
    pub fn metric_labels(mut self, labels: impl IntoIterator<Item = (String, String)>) -> Self {
        self.metric_labels.extend(labels);
        self
    }

    /// Starts the node: opens the log store and loads its log; with a snapshot store, restores
    /// the state machine from the latest snapshot (before returning, and before any entry is
    /// applied) so that the node resumes with commit and applied indexes at the snapshot and
    /// never applies an entry it covers; then spawns the node's tasks on the runtime.
    ///
    /// Fails with [`StartError::LogAfterSnapshot`] if the log store was compacted past the
    /// latest snapshot, and [`StartError::Restore`] if the state machine cannot restore it.
    pub async fn start(self) -> Result<Node, StartError> {
        Node::launch(
            self.config,
            self.store,
            self.network,
            self.state_machine,
            self.runtime,
            Options {
                snapshots: self.snapshots,
                bootstrap: self.bootstrap,
                metric_labels: self.metric_labels,
            },
        )
        .await
    }

    /// Starts the node as [`NodeBuilder::start`] does, except for its main loop: returns the
    /// node's handle and its main loop, which does nothing until its runner (a host loop) runs
    /// it. Every other task of the node (ticker included) is spawned on the builder's runtime
    /// as `start` does, except the log writer (the main loop writes inline, and the host loop
    /// polls its writes: plan S2) and its peer senders: futures the runner polls
    /// (`Hosted::poll_peers`), but for InstallSnapshot, which keeps a sender task per peer.
    pub(crate) async fn start_hosted(self) -> Result<(Node, super::Hosted), StartError> {
        let options = Options {
            snapshots: self.snapshots,
            bootstrap: self.bootstrap,
            metric_labels: self.metric_labels,
        };
        let (config, store, network) = (self.config, self.store, self.network);
        let runner = super::Runner::HostLoop;
        Node::prepare(config, store, network, self.state_machine, self.runtime, options, runner)
            .await
    }
}

impl<S, N, M, R> NodeBuilder<S, N, M, R> {
    /// The id of the node this builder starts (`Config::id`).
    pub(crate) fn node_id(&self) -> crate::types::NodeId {
        self.config.id
    }

    /// Makes the node a member of Raft group `group` (`Config::group_id`) and labels its metrics
    /// with the group (`group_id`) unless the caller already did: what a
    /// [`Host`](crate::multi::Host) does to every group it adds.
    pub(crate) fn in_group(mut self, group: crate::types::GroupId) -> Self {
        self.config.group_id = group;
        if !self.metric_labels.iter().any(|(name, _)| name == "group_id") {
            self.metric_labels.push(("group_id".to_owned(), group.to_string()));
        }
        self
    }
}

/// The options a [`NodeBuilder`] collected, handed to the start.
pub(super) struct Options {
    pub(super) snapshots: Option<Arc<dyn SnapshotStore>>,
    pub(super) bootstrap: Option<Membership>,
    pub(super) metric_labels: Vec<(String, String)>,
}

//! [`NodeBuilder`]: starting a node with options.

use std::sync::Arc;

use super::Node;
use crate::config::Config;
use crate::error::StartError;
use crate::network::Network;
use crate::runtime::Runtime;
use crate::snapshot::SnapshotStore;
use crate::state_machine::StateMachine;
use crate::storage::LogStore;

/// Starts a [`Node`] with options. Made by [`Node::builder`]; [`Node::start`] is
/// `Node::builder(..).start()` without options.
///
/// ```ignore
/// let node = Node::builder(config, log_store, network, state_machine, runtime)
///     .snapshot_store(snapshot_store)
///     .start()
///     .await?;
/// ```
pub struct NodeBuilder<S, N, M, R> {
    config: Config,
    store: S,
    network: N,
    state_machine: M,
    runtime: R,
    snapshots: Option<Arc<dyn SnapshotStore>>,
    metric_labels: Vec<(String, String)>,
}

impl<S, N, M, R> std::fmt::Debug for NodeBuilder<S, N, M, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBuilder")
            .field("id", &self.config.id)
            .field("snapshots", &self.snapshots.is_some())
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
        Self { config, store, network, state_machine, runtime, snapshots: None, metric_labels }
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
            self.snapshots,
            self.metric_labels,
        )
        .await
    }
}

//! Multi-Raft: the Raft groups one process runs as one node id, behind one transport.
//!
//! A service that outgrows one Raft group shards its data over many groups, each an ordinary
//! [`Node`] with its own log, state machine and leader. A [`Host`] is the set of groups of one
//! process: the node id the process has in every group's cluster, and the [`RpcHandler`] its
//! transport serves. It routes each inbound request to the group named by the envelope's
//! `group_id` and refuses a request for a group it does not host with
//! [`RpcError::UnknownGroup`].
//!
//! ```ignore
//! let host = Host::new(node_id);
//! network.serve(host.clone()); // one registration for every group (the transport's own call)
//! for group in 1..=4 {
//!     let builder = Node::builder(Config::new(node_id), log(group), endpoint.clone(), sm(group), rt.clone());
//!     let node = host.add_group(group, builder.snapshot_store(snaps(group))).await?;
//! }
//! // ... one group's node is used exactly as a single-group node:
//! host.group(3).unwrap().write(command).await?;
//! // A failed group is reported, and can be removed while the others serve on:
//! for info in host.groups() { if let GroupHealth::Failed(error) = info.health { ... } }
//! let removed = host.remove_group(3).await?; // its stores are unused from now on
//! ```
//!
//! **Guarantees.** Each group keeps every guarantee of a single [`Node`]: the host only routes.
//! Groups are independent: each has its own tasks, queues and bounds; a group whose store fails
//! or whose state machine panics (in `apply`, while taking or restoring a snapshot, or at
//! start) stops alone, with its [`FatalError`] saying why, and the host serves the others on.
//! A host made by [`Host::new`] spawns nothing and holds no runtime: groups run on the runtimes
//! their builders were given, each with its own main-loop task.
//!
//! **Host loop (opt-in).** A host made by [`Host::with_loop`] runs the main loops of all its
//! groups in one task of its own (the *host loop*), instead of one task per group: each pass
//! of that task steps every group that has inputs, one step each (at most 4,096 inputs a
//! pass), so that the work of many groups becomes one unit for the runtime. Everything else
//! about a group is as with [`Host::new`]: its [`Node`] handle, its other tasks (log writer,
//! applier, peer senders, ticker) on its builder's runtime, its guarantees, and its failure
//! isolation (a group whose step panics stops alone with [`FatalError::Panicked`], task
//! "main loop"). One thing differs: a group's step runs in the loop's task, so a group's
//! blocking network or store callback (one that blocks the thread instead of returning a
//! future) stalls the whole loop, every group of the host; in tasks mode it stalls one worker.
//!
//! **What a group shares.** The transport: every group of a host is given the same network
//! (a clone of one endpoint), which stamps each request with the sender group's id. Since the
//! network is shared, each group's node tells it *its* membership (see
//! [`crate::Network::members_changed`]). Stores are the caller's:
//! one per group, or per-group views of a shared one.

mod error;
mod host_loop;
mod ready;

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use futures::FutureExt;

pub use self::error::{AddGroupError, RemoveGroupError};
pub use self::host_loop::HostLoopStats;
use self::host_loop::LoopHandle;
use crate::error::FatalError;
use crate::message::{Envelope, RpcResponse};
use crate::network::{Network, RpcError, RpcHandler};
use crate::node::{panic_message, Node, NodeBuilder};
use crate::runtime::Runtime;
use crate::state_machine::StateMachine;
use crate::storage::LogStore;
use crate::types::{GroupId, NodeId, Status};

/// How many groups a [`Host::new`] holds at most: each group is a node with its own tasks and
/// memory, so the number is bounded like every other resource.
pub const DEFAULT_MAX_GROUPS: usize = 65_536;

/// The Raft groups of one process, as one node id: routes inbound RPCs by group id, adds and
/// removes groups at run time, and reports each group's health. Cheap to clone; every clone is
/// the same host.
///
/// `G` is what the caller attaches to each group ([`Host::add_group_with`]) and gets back when
/// the group is removed ([`RemovedGroup::state`]): the paths or handles it needs to delete the
/// group's state, for instance. It defaults to `()`.
pub struct Host<G = ()> {
    inner: Arc<Inner<G>>,
}

impl<G> Clone for Host<G> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl<G> std::fmt::Debug for Host<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<GroupId> = self.inner.read().keys().copied().collect();
        let mut host = f.debug_struct("Host");
        host.field("id", &self.inner.id).field("groups", &ids);
        // Only a looped host says so: a host of tasks prints as it did before host loops.
        if self.inner.looped.is_some() {
            host.field("host_loop", &true);
        }
        host.finish()
    }
}

struct Inner<G> {
    id: NodeId,
    max_groups: usize,
    groups: RwLock<BTreeMap<GroupId, Slot<G>>>,
    /// The host loop running the groups' main loops ([`Host::with_loop`]); `None`: each group's
    /// main loop has its own task.
    looped: Option<LoopHandle>,
}

impl<G> Inner<G> {
    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<GroupId, Slot<G>>> {
        self.groups.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<GroupId, Slot<G>>> {
        self.groups.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// A group id taken by the host.
enum Slot<G> {
    /// Reserved by an `add_group` whose node is starting.
    Starting,
    /// The group's node (running, or stopped: until it is removed).
    Hosted { node: Node, state: G },
}

impl<G> Slot<G> {
    fn node(&self) -> Option<&Node> {
        match self {
            Slot::Starting => None,
            Slot::Hosted { node, .. } => Some(node),
        }
    }
}

/// How a hosted group is doing. Not `PartialEq`: a failure carries the typed error that stopped
/// the group; compare with `matches!`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum GroupHealth {
    /// Its `add_group` has not returned yet; requests for it are refused as unknown.
    Starting,
    /// Its node runs.
    Running,
    /// Its node stopped on its own, for this reason (a store failure, a state machine
    /// failure or panic, ...). Requests for it are answered `RpcError::Shutdown`; remove it
    /// ([`Host::remove_group`]) to free its id and its stores (how its id may be added again:
    /// see there).
    Failed(FatalError),
    /// Its node was shut down ([`Node::shutdown`] on its handle) but the group was not removed.
    Stopped,
}

/// One group of a host, as [`Host::groups`] reports it.
#[derive(Debug, Clone)]
pub struct GroupInfo {
    /// The group's id.
    pub id: GroupId,
    /// How it is doing.
    pub health: GroupHealth,
    /// Its node's status (`None` while it starts).
    pub status: Option<Status>,
}

/// A group taken out of a host by [`Host::remove_group`]: its node has stopped (every task
/// ended, its stores are no longer used), so its state can be deleted.
#[derive(Debug)]
pub struct RemovedGroup<G = ()> {
    /// The group's id (free again in the host).
    pub id: GroupId,
    /// What the caller attached to the group when it added it.
    pub state: G,
    /// Why the group had stopped on its own before it was removed, if it had.
    pub fatal_error: Option<FatalError>,
    /// Its node's last status.
    pub status: Status,
}

/// Frees a reserved group id unless the group's start completed (an `add_group` that failed,
/// panicked or was dropped while its node started).
struct Reservation<'a, G> {
    inner: &'a Inner<G>,
    group: GroupId,
    armed: bool,
}

impl<G> Drop for Reservation<'_, G> {
    fn drop(&mut self) {
        if self.armed {
            let mut groups = self.inner.write();
            if matches!(groups.get(&self.group), Some(Slot::Starting)) {
                groups.remove(&self.group);
            }
        }
    }
}

impl<G> Host<G> {
    /// An empty host for node `id`, holding at most [`DEFAULT_MAX_GROUPS`] groups.
    pub fn new(id: NodeId) -> Self {
        Self::with_max_groups(id, DEFAULT_MAX_GROUPS)
    }

    /// An empty host for node `id`, holding at most `max_groups` groups (starting ones
    /// included): [`Host::add_group`] fails with [`AddGroupError::TooManyGroups`] beyond.
    pub fn with_max_groups(id: NodeId, max_groups: usize) -> Self {
        let groups = RwLock::new(BTreeMap::new());
        Self { inner: Arc::new(Inner { id, max_groups, groups, looped: None }) }
    }

    /// An empty host for node `id`, holding at most [`DEFAULT_MAX_GROUPS`] groups, whose groups
    /// run their main loops in one host task spawned on `runtime` now, instead of one task per
    /// group (see the module documentation, "Host loop"). Everything else about a group (its
    /// [`Node`] handle, its other tasks, its guarantees, failure isolation) is as with
    /// [`Host::new`].
    ///
    /// Give the groups' builders this same runtime: a group's other tasks, its timers and its
    /// clock stay on its builder's runtime, and the host loop steps it on `runtime` (nothing
    /// checks that they are the same). The host task ends once no clone of the host is left
    /// and every group has stopped; dropped with its runtime (shut down, or a simulated
    /// crash), it drops the groups' main loops, as their own tasks would be dropped.
    ///
    /// Every group's steps run in that one task, and its log writes and its RPCs to peers (but
    /// InstallSnapshot) are polled there too: those `LogStore::write` and `Network::send`
    /// futures have no task of their own. A group's blocking network or store callback (e.g.
    /// `Network::members_changed`, or a store method or `send` that blocks before its future's
    /// first `Pending`) stalls the whole loop, so every group of the host; in tasks mode it
    /// stalls one worker thread.
    ///
    /// **Experimental.** The steps of a host-level loop meant to batch many groups' writes and
    /// messages; so far it measured 1.0-1.2x the throughput of [`Host::new`] at 64 groups, with
    /// less CPU per write, but 0.8x with one busy group and 64 writers (its senders no longer
    /// run beside its steps): prefer [`Host::new`] for a few busy groups (ARCHITECTURE.md,
    /// "S2 and S3b-lite measured").
    pub fn with_loop<R: Runtime>(id: NodeId, runtime: R) -> Self {
        let groups = RwLock::new(BTreeMap::new());
        let looped = Some(LoopHandle::spawn(runtime));
        let max_groups = DEFAULT_MAX_GROUPS;
        Self { inner: Arc::new(Inner { id, max_groups, groups, looped }) }
    }

    /// Diagnostics of a host made by [`Host::with_loop`] (`None` for others): how many passes
    /// its loop made, and how many group steps and inputs they ran, since it started. For
    /// benchmarks and debugging; not a stable interface.
    pub fn loop_stats(&self) -> Option<HostLoopStats> {
        self.inner.looped.as_ref().map(LoopHandle::stats)
    }

    /// The node id this host is in every group.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// Adds group `group` (see [`Host::add_group_with`]), attaching `G::default()` to it.
    pub async fn add_group<S, N, M, R>(
        &self,
        group: GroupId,
        builder: NodeBuilder<S, N, M, R>,
    ) -> Result<Node, AddGroupError>
    where
        G: Default,
        S: LogStore,
        N: Network,
        M: StateMachine,
        R: Runtime,
    {
        self.add_group_with(group, builder, G::default()).await
    }

    /// Starts group `group`'s node from `builder` (made by [`Node::builder`] with this host's
    /// node id, with any options) and routes the group's requests to it from the moment it
    /// runs; returns its handle, the same [`Node`] a single-group user has. The host sets
    /// `Config::group_id` to `group` (whatever the builder's config said) and labels the node's
    /// metrics with `group_id`. `state` is handed back when the group is removed.
    ///
    /// Refused, without starting anything, for a group id the host already has
    /// ([`AddGroupError::Duplicate`], also while that group starts or after it stopped), for a
    /// builder of another node id ([`AddGroupError::WrongNode`]) and beyond the host's limit
    /// ([`AddGroupError::TooManyGroups`]). A start that fails or panics leaves the id free
    /// ([`AddGroupError::Start`], [`AddGroupError::Panicked`]); so does dropping this future
    /// before it returns. Requests for the group that arrive while it starts are refused with
    /// [`RpcError::UnknownGroup`] (the senders retry).
    ///
    /// On a host made by [`Host::with_loop`], the node's main loop is handed to the host loop
    /// (which steps it from its next pass on) instead of getting a task of its own; the node's
    /// other tasks are spawned on the builder's runtime either way.
    pub async fn add_group_with<S, N, M, R>(
        &self,
        group: GroupId,
        builder: NodeBuilder<S, N, M, R>,
        state: G,
    ) -> Result<Node, AddGroupError>
    where
        S: LogStore,
        N: Network,
        M: StateMachine,
        R: Runtime,
    {
        let host = self.inner.id;
        if builder.node_id() != host {
            return Err(AddGroupError::WrongNode { host, builder: builder.node_id() });
        }
        {
            let mut groups = self.inner.write();
            if groups.contains_key(&group) {
                return Err(AddGroupError::Duplicate { group });
            }
            if groups.len() >= self.inner.max_groups {
                return Err(AddGroupError::TooManyGroups { limit: self.inner.max_groups });
            }
            groups.insert(group, Slot::Starting);
        }
        let mut reservation = Reservation { inner: &self.inner, group, armed: true };
        let builder = builder.in_group(group);
        let start = match &self.inner.looped {
            None => {
                AssertUnwindSafe(builder.start()).catch_unwind().await.map(|s| s.map(|n| (n, None)))
            }
            Some(_) => AssertUnwindSafe(builder.start_hosted())
                .catch_unwind()
                .await
                .map(|s| s.map(|(n, hosted)| (n, Some(hosted)))),
        };
        let node = match start {
            Ok(Ok((node, hosted))) => {
                if let (Some(looped), Some(hosted)) = (&self.inner.looped, hosted) {
                    looped.add(hosted);
                }
                node
            }
            Ok(Err(error)) => return Err(AddGroupError::Start { group, error }),
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                tracing::error!(id = host, group, %message, "starting a group panicked");
                return Err(AddGroupError::Panicked { group, message });
            }
        };
        self.inner.write().insert(group, Slot::Hosted { node: node.clone(), state });
        reservation.armed = false;
        tracing::info!(id = host, group, "group added");
        Ok(node)
    }

    /// The node of group `group`, if the host has it and it has started (it may have stopped
    /// since: see [`Host::groups`]).
    pub fn group(&self, group: GroupId) -> Option<Node> {
        self.inner.read().get(&group).and_then(Slot::node).cloned()
    }

    /// Every group of the host, by id, with its health and status.
    pub fn groups(&self) -> Vec<GroupInfo> {
        let groups = self.inner.read();
        groups
            .iter()
            .map(|(&id, slot)| match slot {
                Slot::Starting => GroupInfo { id, health: GroupHealth::Starting, status: None },
                Slot::Hosted { node, .. } => {
                    let health = match (node.fatal_error(), node.is_stopped()) {
                        (Some(error), _) => GroupHealth::Failed(error),
                        (None, true) => GroupHealth::Stopped,
                        (None, false) => GroupHealth::Running,
                    };
                    GroupInfo { id, health, status: Some(node.status()) }
                }
            })
            .collect()
    }

    /// The groups that stopped on their own, with why.
    pub fn failed_groups(&self) -> Vec<(GroupId, FatalError)> {
        let groups = self.inner.read();
        let nodes = groups.iter().filter_map(|(&id, slot)| Some((id, slot.node()?)));
        nodes.filter_map(|(id, node)| Some((id, node.fatal_error()?))).collect()
    }

    /// Removes group `group`: shuts its node down ([`Node::shutdown`]: pending calls fail with
    /// `Shutdown`, writes handed to its store complete, every task ends), then stops routing to
    /// it; returns once the node has stopped, with what the caller needs to delete the group's
    /// state. Requests for the group get `RpcError::Shutdown` while it stops and
    /// [`RpcError::UnknownGroup`] afterwards; its id can be added again, as one of:
    ///
    /// * the same replica restarted: on the group's stores, kept;
    /// * a new replica of the same group on fresh stores: only as a new member, through the
    ///   group's membership change, under a node id that never was a member. A replica that
    ///   loses its stores loses its term and vote: added again as itself it could vote twice
    ///   in one term (two leaders of a term);
    /// * a new group on fresh stores (the id removed from every host): with a
    ///   [`crate::Config::cluster_id`] of its own. Requests carry the cluster id, so that
    ///   requests of the removed incarnation still in flight are refused; under the old
    ///   cluster id the new group would take them as its own (its term, its entries).
    ///
    /// Works on failed groups alike. Cancellation-safe: dropped before it returns, the group
    /// stays hosted (stopping or stopped) and a later call removes it.
    ///
    /// Called from inside the group's own state machine (`apply`, `snapshot`, `restore`), it
    /// is refused with [`RemoveGroupError::InsideStateMachine`] and does nothing: the node
    /// cannot stop before that call returns, so it could neither wait for the node (it would
    /// wait for itself) nor return a [`RemovedGroup`] whose node still runs (an `add_group` of
    /// the id on the same stores would then run two nodes on them). A group that removes
    /// itself (a "destroy this shard" command) does it from another task, spawned from its
    /// state machine: that call returns once the state machine call has returned and the node
    /// stopped. Called from another group's state machine, it works as from anywhere else.
    pub async fn remove_group(&self, group: GroupId) -> Result<RemovedGroup<G>, RemoveGroupError> {
        let node = match self.inner.read().get(&group) {
            None => return Err(RemoveGroupError::NotHosted { group }),
            Some(Slot::Starting) => return Err(RemoveGroupError::Starting { group }),
            Some(Slot::Hosted { node, .. }) => node.clone(),
        };
        if node.inside_own_state_machine() {
            return Err(RemoveGroupError::InsideStateMachine { group });
        }
        node.shutdown().await;
        let mut groups = self.inner.write();
        // Another call may have removed it (and someone added the id again) meanwhile.
        match groups.get(&group) {
            Some(Slot::Hosted { node: hosted, .. }) if hosted.same_node(&node) => {}
            _ => return Err(RemoveGroupError::NotHosted { group }),
        }
        let Some(Slot::Hosted { state, .. }) = groups.remove(&group) else {
            return Err(RemoveGroupError::NotHosted { group });
        };
        drop(groups);
        tracing::info!(id = self.inner.id, group, "group removed");
        Ok(RemovedGroup {
            id: group,
            state,
            fatal_error: node.fatal_error(),
            status: node.status(),
        })
    }

    /// Removes every group that has started (see [`Host::remove_group`]), all at once, and
    /// returns them. Groups still starting are left in place, and so is the group whose state
    /// machine makes this call, if one does (see [`RemoveGroupError::InsideStateMachine`]):
    /// remove it afterwards from outside its state machine.
    pub async fn shutdown(&self) -> Vec<RemovedGroup<G>> {
        let ids: Vec<GroupId> = {
            let groups = self.inner.read();
            groups.iter().filter(|(_, slot)| slot.node().is_some()).map(|(&id, _)| id).collect()
        };
        let removals = ids.into_iter().map(|id| self.remove_group(id));
        futures::future::join_all(removals).await.into_iter().filter_map(Result::ok).collect()
    }
}

#[async_trait]
impl<G: Send + Sync + 'static> RpcHandler for Host<G> {
    /// Hands `request` to the node of its group, which checks the rest of the envelope (cluster,
    /// receiver) as a single node does. A request for a group this host does not have (never
    /// added, still starting, or removed) is refused with [`RpcError::UnknownGroup`], or with
    /// [`RpcError::WrongNode`] if it was not even meant for this node id.
    ///
    /// Each group's node holds at most its [`Config::max_inbound_requests`](crate::Config::max_inbound_requests)
    /// requests at once and refuses more with [`RpcError::Overloaded`], so that one group whose
    /// log store stalls cannot take what the transport shares between the groups (raft-quic: a
    /// connection's 256 streams, for every group of the peer; the default bound, 64, is a
    /// quarter of them).
    async fn handle_rpc(&self, request: Envelope) -> Result<RpcResponse, RpcError> {
        let node = self.inner.read().get(&request.group_id).and_then(Slot::node).cloned();
        match node {
            Some(node) => node.handle_rpc(request).await,
            None if request.receiver != self.inner.id => {
                Err(RpcError::WrongNode { expected: request.receiver, actual: self.inner.id })
            }
            None => {
                tracing::debug!(
                    id = self.inner.id,
                    group = request.group_id,
                    peer = request.request.sender(),
                    "refused a request for a group this host does not have"
                );
                Err(RpcError::UnknownGroup { group: request.group_id })
            }
        }
    }
}

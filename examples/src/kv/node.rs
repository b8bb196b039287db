//! Running one `kv-node`: the log store, the Raft node over QUIC, the client port, and a clean
//! shutdown on SIGINT, SIGTERM or (for supervised children) the end of standard input.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use raft_core::runtime::TokioRuntime;
use raft_core::{
    BootstrapError, GroupId, HardState, Host, LogStore, Node, NodeId, SnapshotStore, StartError,
};
use raft_quic::quinn::Endpoint;
use raft_quic::{QuicConfig, QuicNetwork};
use tracing::{debug, error, info};

use super::balancer::{self, Balancer};
use super::cluster_id;
use super::config::{NodeConfig, USAGE};
use super::fault::{Firewall, FirewalledHandler, FirewalledNetwork, PanicOnKey};
use super::health::{self, HealthConfig};
use super::metrics;
use super::port::{accept_loop, ClientPort};
use super::router::GroupRouter;
use super::server::ClientService;
use super::shard;
use super::state_machine::{KvStateMachine, OnRemoved, SharedState};
use super::store::{open_store, Store, StoreOpenError};
use super::tls::{server_config, ClientPortLimits, KvTlsError, ReloadTargets, Reloader};

/// Why a node could not run.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// TLS material could not be loaded.
    #[error("TLS: {0}")]
    Cert(#[from] raft_quic::CertError),
    /// The client port's TLS configuration failed.
    #[error(transparent)]
    Tls(#[from] KvTlsError),
    /// The log store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreOpenError),
    /// The snapshot store could not be opened.
    #[error("snapshot store: {0}")]
    Snapshots(#[from] raft_lmdb::OpenError),
    /// The Raft endpoint could not be bound.
    #[error("Raft endpoint: {0}")]
    Bind(#[from] raft_quic::BindError),
    /// The client endpoint could not be bound.
    #[error("client endpoint {addr}: {source}")]
    ClientBind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The Raft node could not start.
    #[error("Raft node: {0}")]
    Start(#[from] raft_core::StartError),
    /// No async runtime.
    #[error("no tokio runtime")]
    Runtime,
    /// The node stopped on its own.
    #[error("the node stopped: {0}")]
    Fatal(String),
    /// The metrics recorder or listener could not be set up.
    #[error(transparent)]
    Metrics(#[from] super::metrics::MetricsError),
    /// The cluster id could not be settled (the data directory is another cluster's).
    #[error("cluster id: {0}")]
    ClusterId(#[from] cluster_id::ClusterIdError),
    /// The data directory was created with another number of groups (`--groups`).
    #[error("groups: {0}")]
    Groups(#[from] shard::GroupsError),
    /// The LMDB environment of a sharded node could not be opened.
    #[error("log store of the groups: {0}")]
    Environment(#[source] raft_lmdb::OpenError),
    /// A group's node could not start.
    #[error("Raft group: {0}")]
    AddGroup(#[from] raft_core::multi::AddGroupError),
    /// The configuration names no group (`--groups` must be at least 1).
    #[error("no Raft group to run")]
    NoGroups,
}

/// Why the node is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    Signal(&'static str),
    StdinClosed,
    NodeStopped,
}

/// What the state machines of a node's groups call for a member removed for good: the Raft
/// transport refuses it (`QuicNetwork::refuse`) once *every* group of the node has removed it.
/// A sharded service removes a node one group at a time (each group has its own membership):
/// until the last group's removal is applied, the node is still a member of the others, which
/// must go on hearing it (it may even lead them). Removals are reported on apply and again from
/// every restored snapshot, so a restarted node refuses the node again once all its groups
/// have started. A single group refuses at its one report.
#[derive(Clone)]
pub struct Removals {
    groups: usize,
    /// The groups that removed each node, until all of them did.
    seen: Arc<std::sync::Mutex<BTreeMap<NodeId, BTreeSet<GroupId>>>>,
    refuse: Arc<dyn Fn(NodeId) + Send + Sync>,
}

impl std::fmt::Debug for Removals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Removals").field("groups", &self.groups).finish_non_exhaustive()
    }
}

impl Removals {
    /// Calls `refuse` for a node once each of `groups` groups removed it.
    pub fn new(groups: u32, refuse: impl Fn(NodeId) + Send + Sync + 'static) -> Self {
        let groups = usize::try_from(groups).unwrap_or(usize::MAX).max(1);
        Self { groups, seen: Arc::default(), refuse: Arc::new(refuse) }
    }

    /// The callback of group `group`'s state machine.
    pub fn of_group(&self, group: GroupId) -> OnRemoved {
        let removals = self.clone();
        OnRemoved(Arc::new(move |id| removals.removed(group, id)))
    }

    /// Whether group `group`'s state machine reported node `id` removed (a committed removal, or
    /// a tombstone of its restored state).
    pub fn removed_from(&self, group: GroupId, id: NodeId) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(&id).is_some_and(|groups| groups.contains(&group))
    }

    fn removed(&self, group: GroupId, id: NodeId) {
        let everywhere = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            let groups = seen.entry(id).or_default();
            groups.insert(group);
            groups.len() >= self.groups
        };
        if everywhere {
            (self.refuse)(id);
        } else {
            debug!(group, peer = id, "peer removed from this group; other groups still have it");
        }
    }
}

/// Refuses removed peers on `network` (not this node itself).
fn refuse_removed(network: QuicNetwork, own: NodeId) -> impl Fn(NodeId) + Send + Sync {
    move |id| {
        if id != own {
            debug!(peer = id, "peer removed from the cluster: refused from now on");
            network.refuse(id);
        }
    }
}

/// Whether the stores hold no Raft state at all (a node's first start).
async fn stores_empty(
    store: &Store,
    snapshots: &raft_lmdb::FileSnapshotStore,
) -> Result<bool, StartError> {
    let durable = store.open().await?;
    let empty_log = durable.last.index == 0 && durable.hard_state == HardState::default();
    Ok(empty_log && snapshots.latest().await?.is_none())
}

/// The log and snapshot store of each group, in group order: a single group in the
/// single-group layout (`DATA_DIR/raft`, `DATA_DIR/snapshots`); several in one LMDB environment
/// (one writer, one sync for all groups) in `DATA_DIR/raft-groups`.
fn open_group_stores(
    config: &NodeConfig,
) -> Result<Vec<(Store, raft_lmdb::FileSnapshotStore)>, NodeError> {
    let dir = &config.data_dir;
    if config.groups <= 1 {
        let store = open_store(&dir.join(shard::SINGLE_STORE_DIR))?;
        let snapshots = raft_lmdb::FileSnapshotStore::open_dir(dir.join("snapshots"))?;
        return Ok(vec![(store, snapshots)]);
    }
    let open = || -> Result<_, raft_lmdb::OpenError> {
        let env = raft_lmdb::LmdbEnvironment::open(dir.join(shard::GROUPS_STORE_DIR))?;
        (0..GroupId::from(config.groups))
            .map(|group| Ok((env.log_store(group)?, env.snapshot_store(group)?)))
            .collect()
    };
    open().map_err(NodeError::Environment)
}

/// What one group's node is built from, besides its configuration and network.
struct GroupParts {
    store: Store,
    snapshots: raft_lmdb::FileSnapshotStore,
    state_machine: PanicOnKey<KvStateMachine>,
    bootstrap: Option<raft_core::Membership>,
}

impl GroupParts {
    /// The group's node builder on `network`. The members' addresses come with the membership
    /// of the log and the snapshot (the node hands them to the network when it starts); the
    /// tombstones of the snapshot are refused.
    fn builder<N: raft_core::Network>(
        self,
        config: raft_core::Config,
        network: N,
        runtime: TokioRuntime,
    ) -> raft_core::NodeBuilder<Arc<Store>, N, PanicOnKey<KvStateMachine>, TokioRuntime> {
        let builder =
            Node::builder(config, Arc::new(self.store), network, self.state_machine, runtime)
                .snapshot_store(self.snapshots);
        match self.bootstrap {
            Some(membership) => builder.bootstrap(membership),
            None => builder,
        }
    }
}

/// Runs a node until a stop signal; returns once everything is shut down.
pub async fn run(config: NodeConfig) -> Result<(), NodeError> {
    // First: from here a SIGHUP reloads instead of killing, and changed files are noticed.
    let reloader = Reloader::start(config.certs.clone());
    // Before the network and the node start: they register their metrics then.
    let exporter = match config.metrics_listen {
        Some(addr) => Some((metrics::install_recorder()?, metrics::bind(addr).await?)),
        None => None,
    };
    let material = reloader.load()?;
    let cluster_id =
        cluster_id::settle(&config.data_dir, config.cluster_id, &material.node.trust_anchors)?;
    info!(id = config.id, cluster_id, groups = config.groups, "cluster id (pass --cluster-id {cluster_id} to a node that joins after a node-CA roll-over)");
    shard::settle(&config.data_dir, config.groups)?;
    let stores = open_group_stores(&config)?;
    // A founding node bootstraps each group at its first start (empty stores); a joining node
    // (`--join`) never does.
    let founding = config.bootstrap_membership();
    let founding = founding.map_err(|e| StartError::Bootstrap(BootstrapError::Invalid(e)))?;

    let mut quic_config = QuicConfig::new(config.id, config.listen, material.node.clone());
    quic_config.backoff_max = Duration::from_millis(500);
    for (&id, addrs) in &config.members {
        if id != config.id {
            quic_config.peers.insert(id, addrs.raft);
        }
    }
    let network = QuicNetwork::bind(quic_config, Arc::new(raft_quic::QuinnTokioRuntime))?;
    let firewall = Firewall::new();
    let runtime = TokioRuntime::current().ok_or(NodeError::Runtime)?;
    // One handler for every group; requests for a group that has not started yet are refused
    // as unknown (the sender retries).
    // A sharded node serves one handler for every group (requests for a group that has not
    // started yet are refused as unknown: the sender retries); a single-group node serves its
    // node as it always did (no group label on its metrics).
    let host: Host = Host::new(config.id);
    let removals = Removals::new(config.groups, refuse_removed(network.clone(), config.id));
    if config.groups > 1 {
        let handler = FirewalledHandler::new(host.clone(), firewall.clone());
        network.serve(Arc::new(handler.refusing_removed(removals.clone())));
    }
    let mut services = Vec::with_capacity(stores.len());
    for (group, (store, snapshots)) in (0..).zip(stores) {
        let bootstrap = match &founding {
            Some(membership) if stores_empty(&store, &snapshots).await? => Some(membership.clone()),
            _ => None,
        };
        let state = SharedState::new();
        let kv = KvStateMachine::new(state.clone()).on_removed(removals.of_group(group));
        let parts = GroupParts {
            store,
            snapshots,
            state_machine: PanicOnKey::new(kv, config.panic_on_key.clone()),
            bootstrap,
        };
        let raft_config = config.raft_config(cluster_id);
        let node = if config.groups > 1 {
            let view = FirewalledNetwork::new(network.for_group(group), firewall.clone());
            host.add_group(group, parts.builder(raft_config, view, runtime.clone())).await?
        } else {
            let view = FirewalledNetwork::new(network.clone(), firewall.clone());
            let node = parts.builder(raft_config, view, runtime.clone()).start().await?;
            let handler = FirewalledHandler::new(node.clone(), firewall.clone());
            network.serve(Arc::new(handler.refusing_removed(removals.clone())));
            node
        };
        let mut service = ClientService::new(
            node,
            state,
            config.members.clone(),
            firewall.clone(),
            config.fault_injection,
        );
        service.health = HealthConfig {
            max_lag: config.health_max_lag,
            data_dir: Some(config.data_dir.clone()),
        };
        service.group = group;
        service.sharded = config.groups > 1;
        services.push(Arc::new(service));
    }
    let nodes: Vec<Node> = services.iter().map(|s| s.node.clone()).collect();
    let service = GroupRouter::new(services).ok_or(NodeError::NoGroups)?;
    let balancer = (config.groups > 1).then(|| {
        let groups = (0..).zip(nodes.iter().cloned()).collect();
        tokio::spawn(Balancer::new(groups).run(balancer::INTERVAL))
    });

    let limits = ClientPortLimits {
        max_streams: config.max_client_streams,
        max_connections: config.max_client_connections,
    };
    let server = server_config(&material, limits)?;
    let endpoint = Endpoint::server(server, config.client_listen)
        .map_err(|source| NodeError::ClientBind { addr: config.client_listen, source })?;
    let exporter = exporter.map(|(handle, listener)| {
        let service = service.clone();
        let health: metrics::HealthSource = Arc::new(move || {
            let service = service.clone();
            Box::pin(async move { service.health().await })
        });
        tokio::spawn(metrics::serve(listener, handle, health))
    });
    let port = ClientPort::new(service, config.max_client_connections);
    let targets = ReloadTargets {
        network: network.clone(),
        client_endpoint: endpoint.clone(),
        client_gate: Some(port.gate()),
        limits,
    };
    let reload = tokio::spawn(reloader.run(targets));
    tokio::spawn(accept_loop(endpoint.clone(), port));
    info!(
        id = config.id,
        raft = %network.local_addr(),
        client = ?endpoint.local_addr().ok(),
        groups = config.groups,
        "kv-node ready"
    );

    let mut reason = wait_for_stop(&nodes, config.stop_on_stdin_eof).await;
    let fault = || nodes.iter().find_map(|node| health::fault_of(node, Some(&config.data_dir)));
    if let (StopReason::NodeStopped, Some(fault)) = (reason, fault()) {
        // Logged once, here: the process stays up to report the fault (status, health: not
        // live; metrics: raft_node_failed) until it is stopped, and exits with the cause.
        error!(
            id = config.id,
            "the Raft node stopped: {fault}; it acknowledges nothing more and serves no reads; \
             still answering status, health and metrics until stopped: fix the cause, then \
             restart the node"
        );
        reason = wait_for_stop(&[], config.stop_on_stdin_eof).await;
    }
    info!(id = config.id, ?reason, "shutting down");
    reload.abort();
    if let Some(balancer) = balancer {
        balancer.abort();
    }
    if let Some(exporter) = exporter {
        exporter.abort();
    }
    endpoint.close(0u32.into(), b"node shutting down");
    futures::future::join_all(nodes.iter().map(Node::shutdown)).await;
    host.shutdown().await;
    network.close().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    info!(id = config.id, "stopped");
    match fault() {
        Some(fault) => Err(NodeError::Fatal(fault)),
        None => Ok(()),
    }
}

/// Waits for a signal, the end of standard input (if asked to) or for one of `nodes` (the
/// node's groups) to stop on its own.
async fn wait_for_stop(nodes: &[Node], stop_on_stdin_eof: bool) -> StopReason {
    let stdin_closed = async {
        if !stop_on_stdin_eof {
            return std::future::pending().await;
        }
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // A plain thread: a blocking read of stdin would pin a runtime worker.
        let spawned = std::thread::Builder::new().name("stdin-watch".into()).spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 256];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
            let _ = tx.send(());
        });
        if spawned.is_ok() {
            let _ = rx.await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let stopped = async {
        if nodes.is_empty() {
            return std::future::pending::<()>().await;
        }
        let watches = nodes.iter().map(|node| {
            let mut watch = node.watch();
            Box::pin(async move {
                watch.wait_for(|_| false).await;
            })
        });
        futures::future::select_all(watches).await;
    };
    tokio::select! {
        reason = signal() => reason,
        () = stdin_closed => StopReason::StdinClosed,
        () = stopped => StopReason::NodeStopped,
    }
}

#[cfg(unix)]
async fn signal() -> StopReason {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = tokio::signal::ctrl_c() => StopReason::Signal("SIGINT"),
            _ = term.recv() => StopReason::Signal("SIGTERM"),
        },
        Err(e) => {
            error!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            StopReason::Signal("SIGINT")
        }
    }
}

#[cfg(not(unix))]
async fn signal() -> StopReason {
    let _ = tokio::signal::ctrl_c().await;
    StopReason::Signal("ctrl-c")
}

/// Sets up logging to stderr (`RUST_LOG`, default `info`).
pub fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// The whole `kv-node` program: parses `args` (without the program name), runs the node on its
/// own tokio runtime, and returns the exit code.
pub fn main_with_args(args: impl IntoIterator<Item = String>) -> ExitCode {
    let args: Vec<String> = args.into_iter().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    init_tracing("info");
    let config = match NodeConfig::from_args(args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("kv-node: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads)
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("kv-node: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("kv-node failed: {e}");
            eprintln!("kv-node: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use raft_core::{
        AppendEntriesRequest, Envelope, LogId, RequestVoteRequest, RpcError, RpcHandler,
        RpcRequest, Term,
    };

    use crate::kv::testing::one_voter_node;

    /// An AppendEntries of self-declared leader `from` in term `term` (group 0), and a
    /// RequestVote of candidate `from` in that term with a log ahead of any.
    fn hostile(from: NodeId, term: Term) -> [Envelope; 2] {
        let append = AppendEntriesRequest {
            term,
            leader_id: from,
            prev_log_id: LogId::default(),
            entries: Vec::new(),
            leader_commit: 0,
            read_round: 0,
            quiesce: false,
        };
        let vote = RequestVoteRequest {
            term,
            candidate_id: from,
            last_log_id: LogId { term, index: u64::MAX / 2 },
            pre_vote: false,
            leadership_transfer: false,
        };
        [RpcRequest::AppendEntries(append), RpcRequest::RequestVote(vote)]
            .map(|request| Envelope::new(1, request))
    }

    /// A peer that group 0 removed but group 1 still has is refused in group 0: its
    /// RequestVote and AppendEntries of a later term leave node 1's term alone there.
    #[tokio::test(flavor = "current_thread")]
    async fn a_peer_removed_from_one_group_is_refused_in_that_group() {
        let node = one_voter_node(KvStateMachine::new(SharedState::new())).await;
        let removals = Removals::new(2, |_| {});
        let handler = FirewalledHandler::new(node.clone(), Firewall::new())
            .refusing_removed(removals.clone());
        (removals.of_group(0).0)(4);
        assert!(!removals.removed_from(1, 4) && removals.removed_from(0, 4));
        let term = node.status().current_term;
        for envelope in hostile(4, term + 1) {
            let answer = handler.handle_rpc(envelope).await;
            assert!(matches!(answer, Err(RpcError::UnknownGroup { group: 0 })), "{answer:?}");
        }
        assert_eq!(node.status().current_term, term, "the removed peer moved the term");
        // A peer no group removed is heard: the same requests move the term.
        for envelope in hostile(5, term + 1) {
            assert!(handler.handle_rpc(envelope).await.is_ok());
        }
        assert!(node.status().current_term > term);
    }

    #[test]
    fn a_node_is_refused_once_every_group_removed_it() {
        let refused = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = refused.clone();
        let removals = Removals::new(3, move |id| log.lock().unwrap().push(id));
        let report = |group: GroupId, id: NodeId| (removals.of_group(group).0)(id);
        report(0, 5);
        report(1, 5);
        report(1, 5); // a restored snapshot reports it again
        report(0, 6);
        assert!(refused.lock().unwrap().is_empty(), "still a member of group 2");
        report(2, 5);
        assert_eq!(*refused.lock().unwrap(), [5]);
        // A single group refuses at once.
        let log = refused.clone();
        let single = Removals::new(1, move |id| log.lock().unwrap().push(id));
        (single.of_group(0).0)(7);
        assert_eq!(*refused.lock().unwrap(), [5, 7]);
    }
}

//! Running one `kv-node`: the log store, the Raft node over QUIC, the client port, and a clean
//! shutdown on SIGINT, SIGTERM or (for supervised children) the end of standard input.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use raft_core::runtime::TokioRuntime;
use raft_core::{LogStore, Node, NodeId};
use raft_quic::quinn::Endpoint;
use raft_quic::{QuicConfig, QuicNetwork};
use tracing::{debug, error, info, warn};

use super::command::{decode_entry, Op};
use super::config::{MemberAddrs, NodeConfig, USAGE};
use super::fault::{Firewall, FirewalledHandler, FirewalledNetwork, PanicOnKey};
use super::port::{accept_loop, ClientPort};
use super::server::ClientService;
use super::state_machine::{KvStateMachine, PeerDirectory, SharedState};
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
}

/// Why the node is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    Signal(&'static str),
    StdinClosed,
    NodeStopped,
}

/// The Raft transport as the state machine's [`PeerDirectory`]: members added at run time
/// become peers (reachable, and accepted when they connect); removed ones are refused for good
/// (`QuicNetwork::refuse`), on apply and again from every restored snapshot, so a restarted
/// node refuses them before it serves Raft traffic.
#[derive(Debug)]
struct QuicDirectory {
    network: QuicNetwork,
    own: NodeId,
}

impl PeerDirectory for QuicDirectory {
    fn set(&self, id: NodeId, addrs: MemberAddrs) {
        if id != self.own {
            debug!(peer = id, raft = %addrs.raft, "peer address set");
            self.network.set_peer(id, addrs.raft);
        }
    }

    fn removed(&self, id: NodeId) {
        if id != self.own {
            debug!(peer = id, "peer removed from the cluster: refused from now on");
            self.network.refuse(id);
        }
    }
}

/// Reports the address-book commands of the log entries that the state machine has not applied
/// yet (`after..=last`) to `directory`, in log order. The state restored from the snapshot
/// covers everything before; these entries are applied only once the leader confirms them,
/// but the leader may be a member that only they name, and it must be reachable (and accepted)
/// before it can confirm anything. An address is a hint, never a safety matter, so reporting
/// one from an entry that a leader later overwrites is harmless.
async fn addresses_from_log(
    store: &Store,
    after: u64,
    last: u64,
    directory: &dyn PeerDirectory,
) -> Result<usize, raft_core::StorageError> {
    let mut next = after + 1;
    let mut found = 0;
    while next <= last {
        let entries = store.read(next..last + 1, 4 << 20).await?;
        let Some(end) = entries.last().map(|e| e.index) else { break };
        for entry in &entries {
            let Some(bytes) = entry.command() else { continue };
            let commands = decode_entry(bytes).map(|e| e.commands.into_inner()).unwrap_or_default();
            for command in commands {
                match command.op {
                    Op::SetMemberAddress { id, raft_addr, client_addr } => {
                        directory.set(id, MemberAddrs { raft: raft_addr, client: client_addr });
                        found += 1;
                    }
                    Op::ForgetMember { id } => {
                        directory.removed(id);
                        found += 1;
                    }
                    _ => {}
                }
            }
        }
        next = end + 1;
    }
    Ok(found)
}

/// Runs a node until a stop signal; returns once everything is shut down.
pub async fn run(config: NodeConfig) -> Result<(), NodeError> {
    // First: from here a SIGHUP reloads instead of killing, and changed files are noticed.
    let reloader = Reloader::start(config.certs.clone());
    let material = reloader.load()?;
    let store = Arc::new(open_store(&config.data_dir.join("raft"))?);
    let snapshots = raft_lmdb::FileSnapshotStore::open_dir(config.data_dir.join("snapshots"))?;

    let mut quic_config = QuicConfig::new(config.id, config.listen, material.node.clone());
    quic_config.backoff_max = Duration::from_millis(500);
    for (&id, addrs) in &config.members {
        if id != config.id {
            quic_config.peers.insert(id, addrs.raft);
        }
    }
    let network = QuicNetwork::bind(quic_config, Arc::new(raft_quic::TokioRuntime))?;
    let firewall = Firewall::new();
    let state = SharedState::new();
    let runtime = TokioRuntime::current().ok_or(NodeError::Runtime)?;
    let directory = Arc::new(QuicDirectory { network: network.clone(), own: config.id });
    let node = Node::builder(
        config.raft_config(),
        Arc::clone(&store),
        FirewalledNetwork::new(network.clone(), firewall.clone()),
        PanicOnKey::new(
            KvStateMachine::new(state.clone()).with_directory(directory.clone()),
            config.panic_on_key.clone(),
        ),
        runtime,
    )
    .snapshot_store(snapshots)
    .start()
    .await?;
    // The snapshot's address book is in place (restore); add the one of the unapplied log
    // before serving, so that a leader added after the snapshot is accepted.
    let status = node.status();
    match addresses_from_log(&store, status.applied_index, status.last_log_index, &*directory).await
    {
        Ok(0) => {}
        Ok(n) => info!(id = config.id, commands = n, "address book updated from the log"),
        Err(e) => warn!(id = config.id, "cannot scan the log for member addresses: {e}"),
    }
    network.serve(Arc::new(FirewalledHandler::new(node.clone(), firewall.clone())));

    let limits = ClientPortLimits {
        max_streams: config.max_client_streams,
        max_connections: config.max_client_connections,
    };
    let server = server_config(&material, limits)?;
    let endpoint = Endpoint::server(server, config.client_listen)
        .map_err(|source| NodeError::ClientBind { addr: config.client_listen, source })?;
    let service = Arc::new(ClientService::new(
        node.clone(),
        state,
        config.members.clone(),
        firewall,
        config.fault_injection,
    ));
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
        "kv-node ready"
    );

    let reason = wait_for_stop(&node, config.stop_on_stdin_eof).await;
    info!(id = config.id, ?reason, "shutting down");
    reload.abort();
    endpoint.close(0u32.into(), b"node shutting down");
    node.shutdown().await;
    network.close().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    info!(id = config.id, "stopped");
    match (reason, node.fatal_error()) {
        (StopReason::NodeStopped, Some(e)) => Err(NodeError::Fatal(e.to_string())),
        _ => Ok(()),
    }
}

async fn wait_for_stop(node: &Node, stop_on_stdin_eof: bool) -> StopReason {
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
    let mut watch = node.watch();
    tokio::select! {
        reason = signal() => reason,
        () = stdin_closed => StopReason::StdinClosed,
        _ = watch.wait_for(|_| false) => StopReason::NodeStopped,
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
    use std::sync::Mutex;

    use raft_core::{Entry, EntryPayload, WriteBatch};

    use super::*;
    use crate::kv::command::{encode_entry, Command};

    #[derive(Debug, Default)]
    struct Recorder(Mutex<Vec<(NodeId, Option<MemberAddrs>)>>);

    impl PeerDirectory for Recorder {
        fn set(&self, id: NodeId, addrs: MemberAddrs) {
            self.0.lock().unwrap().push((id, Some(addrs)));
        }
        fn removed(&self, id: NodeId) {
            self.0.lock().unwrap().push((id, None));
        }
    }

    #[test]
    fn unapplied_log_entries_give_their_addresses_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path()).unwrap();
        let addrs = MemberAddrs {
            raft: "127.0.0.1:1".parse().unwrap(),
            client: "127.0.0.1:2".parse().unwrap(),
        };
        let set =
            |id| Op::SetMemberAddress { id, raft_addr: addrs.raft, client_addr: addrs.client };
        let entry = |index, ops: Vec<Op>| {
            let commands: Vec<Command> =
                ops.into_iter().map(|op| Command { session: None, op }).collect();
            Entry {
                index,
                term: 1,
                payload: EntryPayload::Command(encode_entry(None, commands).unwrap()),
            }
        };
        let put = Op::Put { key: "k".into(), value: "v".into() };
        let entries = vec![
            entry(1, vec![set(9)]),
            Entry { index: 2, term: 1, payload: EntryPayload::Blank },
            entry(3, vec![put.clone(), set(4)]),
            entry(4, vec![Op::ForgetMember { id: 1 }, put]),
        ];
        futures::executor::block_on(async {
            store.open().await.unwrap();
            store.write(WriteBatch { entries, ..WriteBatch::default() }).await.unwrap();
            let recorder = Recorder::default();
            // Entry 1 is covered by the state (applied); 2..=4 are scanned.
            assert_eq!(addresses_from_log(&store, 1, 4, &recorder).await.unwrap(), 2);
            assert_eq!(*recorder.0.lock().unwrap(), vec![(4, Some(addrs)), (1, None)]);
        });
    }
}

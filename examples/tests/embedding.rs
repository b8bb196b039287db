//! The embedding path, written only against the public API as a user would (issue 17, "done
//! when"): a small bank ledger replicated on raft-lmdb (log and snapshots) and raft-quic (mutual
//! TLS), with exactly-once transfers through `raft_core::session`.
//!
//! The cluster is founded once (`bootstrap` with each founder's address in its `NodeInfo`),
//! grows by a fourth node that no one is told about except through `add_voter`'s `NodeInfo`
//! (no application-level address book), and is restarted node by node; balances read back
//! after every restart. The same scenario runs under tokio and under smol.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use raft_core::session::{
    call, Attempt, CallError, ClientSession, LeaderTracker, RetryPolicy, SessionError, SessionId,
    SessionRef, SessionTable,
};
use raft_core::{
    Bytes, Config, Entry, EntryPayload, Membership, Node, NodeId, NodeInfo, Runtime, SnapshotMeta,
    SnapshotStream, StateMachine, StateMachineError,
};
use raft_lmdb::{FileSnapshotStore, LmdbLogStore};
use raft_quic::{ClusterCa, QuicConfig, QuicNetwork};
use serde::{Deserialize, Serialize};

/// A bound that only turns a hang into a failure.
const PATIENCE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// The service: commands, answers and the state machine.
// ---------------------------------------------------------------------------------------------

/// What a client asks of the ledger.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Op {
    /// Opens session `id` for the client.
    OpenSession { id: SessionId },
    /// Adds `amount` to `account`.
    Deposit { account: String, amount: u64 },
    /// Moves `amount` from `from` to `to`, unless `from` holds less.
    Transfer { from: String, to: String, amount: u64 },
}

/// One log command: the client that sent it, its session reference (every write but the
/// session's opening has one) and the operation.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Command {
    client: String,
    session: Option<SessionRef>,
    op: Op,
}

/// The ledger's answer to a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Answer {
    Opened { incarnation: u64 },
    Done,
    InsufficientFunds { balance: u64 },
    Refused(SessionError),
    Malformed,
}

/// The replicated state: balances and client sessions.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct LedgerState {
    balances: BTreeMap<String, u64>,
    sessions: SessionTable<String, Answer>,
}

impl LedgerState {
    fn run(&mut self, index: u64, command: Command) -> Answer {
        let Command { client, session, op } = command;
        let balances = &mut self.balances;
        match (op, session) {
            (Op::OpenSession { id }, _) => match self.sessions.register(&client, id, index) {
                Ok(incarnation) => Answer::Opened { incarnation },
                Err(refused) => Answer::Refused(refused),
            },
            (op, Some(session)) => self
                .sessions
                .apply(&client, session, index, || execute(balances, op))
                .unwrap_or_else(Answer::Refused),
            (_, None) => Answer::Refused(SessionError::Unknown),
        }
    }
}

fn execute(balances: &mut BTreeMap<String, u64>, op: Op) -> Answer {
    match op {
        Op::Deposit { account, amount } => {
            let balance = balances.entry(account).or_default();
            *balance = balance.saturating_add(amount);
            Answer::Done
        }
        Op::Transfer { from, to, amount } => {
            let balance = balances.get(&from).copied().unwrap_or(0);
            if balance < amount {
                return Answer::InsufficientFunds { balance };
            }
            balances.insert(from, balance - amount);
            let credit = balances.entry(to).or_default();
            *credit = credit.saturating_add(amount);
            Answer::Done
        }
        Op::OpenSession { .. } => Answer::Malformed,
    }
}

/// The state machine: the state behind a mutex the test reads balances from.
#[derive(Clone, Default)]
struct Ledger(Arc<Mutex<LedgerState>>);

impl Ledger {
    fn balances(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap().balances.clone()
    }
}

fn encode<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(postcard::to_allocvec(value).unwrap())
}

#[async_trait]
impl StateMachine for Ledger {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        let mut state = self.0.lock().unwrap();
        Ok(entries
            .iter()
            .map(|entry| match &entry.payload {
                EntryPayload::Command(bytes) => {
                    let answer = match postcard::from_bytes::<Command>(bytes) {
                        Ok(command) => state.run(entry.index, command),
                        Err(_) => Answer::Malformed,
                    };
                    encode(&answer)
                }
                _ => Bytes::new(),
            })
            .collect())
    }

    async fn snapshot(&mut self) -> Result<Option<SnapshotStream>, StateMachineError> {
        let bytes = encode(&*self.0.lock().unwrap());
        Ok(Some(futures::stream::once(async move { Ok(bytes) }).boxed()))
    }

    async fn restore(
        &mut self,
        _meta: &SnapshotMeta,
        mut data: SnapshotStream,
    ) -> Result<(), StateMachineError> {
        let mut bytes = Vec::new();
        while let Some(chunk) = data.next().await {
            bytes.extend_from_slice(&chunk?);
        }
        let state = postcard::from_bytes(&bytes)
            .map_err(|e| StateMachineError::with_source("undecodable ledger snapshot", e))?;
        *self.0.lock().unwrap() = state;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The nodes: LMDB stores, a QUIC network, addresses only in the membership.
// ---------------------------------------------------------------------------------------------

struct Running {
    node: Node,
    network: QuicNetwork,
    ledger: Ledger,
}

struct Cluster<R: Runtime + Clone> {
    runtime: R,
    quic: Arc<dyn raft_quic::quinn::Runtime>,
    ca: ClusterCa,
    dir: tempfile::TempDir,
    addrs: BTreeMap<NodeId, SocketAddr>,
    running: BTreeMap<NodeId, Running>,
}

fn config(id: NodeId) -> Config {
    let mut config = Config::new(id);
    config.cluster_id = 0x1ed9e5;
    // Snapshot often, so restarts restore one and node 4 may well be sent one.
    config.snapshot_interval_entries = 8;
    config.snapshot_keep_entries = 2;
    config
}

impl<R: Runtime + Clone> Cluster<R> {
    async fn within<T>(&self, what: &str, future: impl std::future::Future<Output = T>) -> T {
        futures::select_biased! {
            value = future.fuse() => value,
            () = self.runtime.sleep(PATIENCE).fuse() => panic!("{what} took longer than {PATIENCE:?}"),
        }
    }

    /// Binds node `id`'s QUIC endpoint (on its earlier address if it had one). It is told no
    /// peer: addresses come from the membership.
    async fn bind(&mut self, id: NodeId) -> QuicNetwork {
        let addr = self.addrs.get(&id).copied().unwrap_or(([127, 0, 0, 1], 0).into());
        let mut tries = 0;
        loop {
            let config = QuicConfig::new(id, addr, self.ca.node_tls(id).unwrap());
            match QuicNetwork::bind(config, self.quic.clone()) {
                Ok(network) => {
                    self.addrs.insert(id, network.local_addr());
                    return network;
                }
                // The previous incarnation's socket may take a moment to go.
                Err(e) if tries < 50 => {
                    tries += 1;
                    tracing::debug!("binding node {id} failed ({e}); retrying");
                    self.runtime.sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot bind node {id}: {e}"),
            }
        }
    }

    fn info(&self, id: NodeId) -> NodeInfo {
        NodeInfo::with_address(self.addrs[&id].to_string())
    }

    /// Starts node `id` on its stores, founding the cluster with `bootstrap` on a first start.
    async fn start(&mut self, id: NodeId, network: QuicNetwork, bootstrap: Option<Membership>) {
        let log = LmdbLogStore::open_dir(self.dir.path().join(format!("node-{id}/log"))).unwrap();
        let snapshots =
            FileSnapshotStore::open_dir(self.dir.path().join(format!("node-{id}/snapshots")))
                .unwrap();
        let ledger = Ledger::default();
        let builder =
            Node::builder(config(id), log, network.clone(), ledger.clone(), self.runtime.clone())
                .snapshot_store(snapshots);
        let builder = match bootstrap {
            Some(membership) => builder.bootstrap(membership),
            None => builder,
        };
        let node = self.within("a node start", builder.start()).await.unwrap();
        network.serve(Arc::new(node.clone()));
        self.running.insert(id, Running { node, network, ledger });
    }

    async fn stop(&mut self, id: NodeId) {
        let running = self.running.remove(&id).unwrap();
        running.network.stop_serving();
        self.within("a node shutdown", running.node.shutdown()).await;
        running.network.close().await;
    }

    /// A client's view: every running node, by id.
    fn nodes(&self) -> BTreeMap<NodeId, Node> {
        self.running.iter().map(|(&id, r)| (id, r.node.clone())).collect()
    }

    /// Reads balances on `id` linearizably (a read index, then the local state).
    async fn balances_on(&self, id: NodeId) -> BTreeMap<String, u64> {
        let running = &self.running[&id];
        let this_node = Mutex::new(LeaderTracker::new([(id, NodeInfo::default())]));
        let read = call(&this_node, &self.runtime, RetryPolicy::default(), |_, _| {
            let node = running.node.clone();
            async move {
                match node.read_index().await {
                    Ok(_) => Attempt::Done(()),
                    Err(e) => {
                        Attempt::<(), ()>::Retry { reason: e.to_string(), maybe_applied: false }
                    }
                }
            }
        });
        self.within("a linearizable read", read).await.unwrap();
        running.ledger.balances()
    }

    async fn shutdown(mut self) {
        for id in self.running.keys().copied().collect::<Vec<_>>() {
            self.stop(id).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The client: one session, exactly-once writes, leader discovery.
// ---------------------------------------------------------------------------------------------

struct Client {
    name: String,
    session: Mutex<ClientSession>,
    tracker: Mutex<LeaderTracker>,
}

impl Client {
    fn new(
        name: &str,
        id: SessionId,
        members: impl IntoIterator<Item = (NodeId, NodeInfo)>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            session: Mutex::new(ClientSession::new(id)),
            tracker: Mutex::new(LeaderTracker::new(members)),
        }
    }

    /// Sends `command` to the leader until it is applied; returns the ledger's answer.
    async fn submit<R: Runtime + Clone>(
        &self,
        cluster: &Cluster<R>,
        command: &Command,
    ) -> Result<Answer, CallError<raft_core::WriteError>> {
        let nodes = cluster.nodes();
        let bytes = encode(command);
        let result = call(&self.tracker, &cluster.runtime, RetryPolicy::default(), |id, _info| {
            let (node, bytes) = (nodes.get(&id).cloned(), bytes.clone());
            async move {
                match node {
                    Some(node) => Attempt::from_write(node.write(bytes).await),
                    None => Attempt::Retry { reason: "not running".into(), maybe_applied: false },
                }
            }
        });
        let answer = cluster.within("a client call", result).await?;
        Ok(postcard::from_bytes(&answer).unwrap())
    }

    async fn open<R: Runtime + Clone>(&self, cluster: &Cluster<R>) {
        let id = self.session.lock().unwrap().id();
        let command =
            Command { client: self.name.clone(), session: None, op: Op::OpenSession { id } };
        match self.submit(cluster, &command).await.unwrap() {
            Answer::Opened { incarnation } => self.session.lock().unwrap().opened(incarnation),
            other => panic!("opening the session: {other:?}"),
        }
    }

    /// Runs `op` in the session, exactly once however often it is retried.
    async fn write<R: Runtime + Clone>(&self, cluster: &Cluster<R>, op: Op) -> Answer {
        let session = self.session.lock().unwrap().begin().expect("the session is open");
        let command = Command { client: self.name.clone(), session: Some(session), op };
        let answer = self.submit(cluster, &command).await.unwrap();
        self.session.lock().unwrap().finish(session.seq);
        answer
    }
}

fn balances(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|&(account, amount)| (account.to_owned(), amount)).collect()
}

// ---------------------------------------------------------------------------------------------
// The scenario.
// ---------------------------------------------------------------------------------------------

async fn ledger_service<R: Runtime + Clone>(runtime: R, quic: Arc<dyn raft_quic::quinn::Runtime>) {
    let mut cluster = Cluster {
        runtime,
        quic,
        ca: ClusterCa::generate().unwrap(),
        dir: tempfile::tempdir().unwrap(),
        addrs: BTreeMap::new(),
        running: BTreeMap::new(),
    };
    // Found the cluster: nodes 1, 2 and 3, each with its address in the first membership.
    let mut networks = BTreeMap::new();
    for id in [1, 2, 3] {
        networks.insert(id, cluster.bind(id).await);
    }
    let founders = Membership::new([1, 2, 3].map(|id| (id, cluster.info(id))), []).unwrap();
    for (id, network) in networks {
        cluster.start(id, network, Some(founders.clone())).await;
    }

    let alice =
        Client::new("alice", 0x000a_11ce_5e55_10e0, [1, 2, 3].map(|id| (id, cluster.info(id))));
    alice.open(&cluster).await;
    assert_eq!(
        alice.write(&cluster, Op::Deposit { account: "alice".into(), amount: 100 }).await,
        Answer::Done
    );
    let transfer = Op::Transfer { from: "alice".into(), to: "bob".into(), amount: 30 };
    assert_eq!(alice.write(&cluster, transfer).await, Answer::Done);
    let overdraft = Op::Transfer { from: "bob".into(), to: "alice".into(), amount: 31 };
    assert_eq!(alice.write(&cluster, overdraft).await, Answer::InsufficientFunds { balance: 30 });

    // A retry of a transfer whose outcome the client did not learn (as after LeadershipLost):
    // the same session reference, sent twice, moves the money once.
    let session = alice.session.lock().unwrap().begin().unwrap();
    let retried = Command {
        client: "alice".into(),
        session: Some(session),
        op: Op::Transfer { from: "alice".into(), to: "bob".into(), amount: 20 },
    };
    assert_eq!(alice.submit(&cluster, &retried).await.unwrap(), Answer::Done);
    assert_eq!(alice.submit(&cluster, &retried).await.unwrap(), Answer::Done);
    alice.session.lock().unwrap().finish(session.seq);
    let expected = balances(&[("alice", 50), ("bob", 50)]);
    let leader = alice.tracker.lock().unwrap().leader_id().unwrap();
    assert_eq!(cluster.balances_on(leader).await, expected);

    // Another client cannot use alice's session, even knowing its id.
    let mallory = Command {
        client: "mallory".into(),
        session: Some(session),
        op: Op::Transfer { from: "alice".into(), to: "mallory".into(), amount: 50 },
    };
    assert_eq!(
        alice.submit(&cluster, &mallory).await.unwrap(),
        Answer::Refused(SessionError::Unknown)
    );

    // Node 4 joins: started on empty stores without bootstrap, knowing no peer; the leader
    // learns its address from add_voter's NodeInfo, node 4 learns the others' from the log.
    let network = cluster.bind(4).await;
    cluster.start(4, network, None).await;
    let leader_node = cluster.running[&leader].node.clone();
    let joined = cluster
        .within("adding node 4", leader_node.add_voter(4, cluster.info(4), Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(joined.voters(), &[1, 2, 3, 4].into());
    assert_eq!(cluster.balances_on(4).await, expected);
    for i in 0..10 {
        let op = Op::Deposit { account: "carol".into(), amount: 1 };
        assert_eq!(alice.write(&cluster, op).await, Answer::Done, "deposit {i}");
    }
    let expected = balances(&[("alice", 50), ("bob", 50), ("carol", 10)]);

    // Restart every node, one at a time, and read the balances back from each.
    for id in [1, 2, 3, 4] {
        cluster.stop(id).await;
        let network = cluster.bind(id).await;
        cluster.start(id, network, None).await;
        assert_eq!(cluster.balances_on(id).await, expected, "after restarting node {id}");
    }
    // Writes go on after the restarts, in the same session.
    let op = Op::Transfer { from: "carol".into(), to: "alice".into(), amount: 10 };
    assert_eq!(alice.write(&cluster, op).await, Answer::Done);
    let expected = balances(&[("alice", 60), ("bob", 50), ("carol", 0)]);
    for id in [1, 2, 3, 4] {
        assert_eq!(cluster.balances_on(id).await, expected, "node {id}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_on_lmdb_and_quic_under_tokio() {
    let runtime = raft_core::runtime::TokioRuntime::current().unwrap();
    ledger_service(runtime, Arc::new(raft_quic::QuinnTokioRuntime)).await;
}

#[test]
fn a_ledger_on_lmdb_and_quic_under_smol() {
    smol::block_on(ledger_service(
        raft_core::runtime::SmolRuntime,
        Arc::new(raft_quic::QuinnSmolRuntime),
    ));
}

//! [`Connections`]: one QUIC connection per node, shared by every session of a client process,
//! with the cluster's client addresses and what the client knows about the leader.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use raft_core::runtime::monotonic_now;
use raft_core::{GroupId, NodeId};
use raft_quic::quinn::{self, Connection, Endpoint};
use raft_quic::{node_dns_name, NodeTls};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::debug;

use super::attempt::{ClientTransport, Routing};
use super::command::Command;
use super::protocol::{
    self, ClientRequest, ClientResponse, CommandAnswer, CommandBatch, Member, MAX_BATCH_BYTES,
    MAX_BATCH_LEN,
};
use super::tls::{client_config, KvTlsError};

/// Timeouts and pacing of a client.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The longest one attempt (connect, send, wait for the answer) at one node may take before
    /// the client tries another node.
    pub attempt_timeout: Duration,
    /// The longest an operation may take, retries included; then it fails with
    /// [`ClientError::Timeout`](super::client::ClientError::Timeout).
    pub op_timeout: Duration,
    /// The longest a QUIC handshake may take.
    pub connect_timeout: Duration,
    /// The pause before retrying when no leader is known.
    pub retry_delay: Duration,
    /// How long a node that timed out is avoided (unless no other node is left).
    pub suspect_for: Duration,
    /// When an answer takes longer than this, the client also tries another node with the
    /// same request (safe: writes are deduplicated by their session), so that a dead leader
    /// costs about an election, not a whole attempt timeout.
    pub hedge_after: Duration,
    /// After `hedge_after`, how often another node is probed while the answer is still late.
    pub probe_interval: Duration,
    /// The attempt timeout of status requests.
    pub status_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            attempt_timeout: Duration::from_secs(1),
            op_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_millis(500),
            retry_delay: Duration::from_millis(20),
            suspect_for: Duration::from_secs(1),
            hedge_after: Duration::from_millis(100),
            probe_interval: Duration::from_millis(25),
            status_timeout: Duration::from_millis(500),
        }
    }
}

/// Why one attempt at one node failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The node's address is unknown.
    #[error("unknown node {0}")]
    UnknownNode(NodeId),
    /// No connection could be established; the request was not sent.
    #[error("cannot connect to node {node}: {reason}")]
    Connect {
        /// The node.
        node: NodeId,
        /// Why.
        reason: String,
    },
    /// The request may have been sent, but no answer arrived (in time).
    #[error("no answer from node {node}: {reason}")]
    NoAnswer {
        /// The node.
        node: NodeId,
        /// Why.
        reason: String,
    },
    /// TLS failed with the node: retrying cannot help until a certificate or the configuration
    /// changes. The request was not handled.
    #[error("TLS with node {node} failed: {failure}")]
    Tls {
        /// The node.
        node: NodeId,
        /// What failed.
        failure: TlsFailure,
    },
}

impl CallError {
    /// Whether the request may have reached the node.
    pub fn maybe_sent(&self) -> bool {
        matches!(self, CallError::NoAnswer { .. })
    }
}

/// Why TLS failed between a client and a node (see [`CallError::Tls`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsFailure {
    /// The client refused the node's certificate; `reason` is the TLS library's (unknown
    /// issuer or bad signature: not signed by a CA of the client's `node-ca.pem`; not valid
    /// for the name: the address belongs to another node; expired).
    #[error("the node's certificate was refused: {reason}")]
    NodeCertificate {
        /// The TLS library's reason.
        reason: String,
    },
    /// The node refused the client's certificate (its TLS alert: unknown CA, bad certificate,
    /// certificate expired, certificate required...).
    #[error("the node refused our certificate (TLS alert: {alert})")]
    ClientCertificate {
        /// The alert the node sent.
        alert: String,
    },
    /// The node accepted the certificate but it names no client role (`client-NAME.kv` or
    /// `admin-NAME.kv`).
    #[error("the node refused our certificate: it names no client role ({reason})")]
    NoRole {
        /// The node's reason.
        reason: String,
    },
    /// The node speaks another version of the client protocol (no common ALPN).
    #[error("the node speaks another version of the client protocol ({reason})")]
    Protocol {
        /// The TLS library's reason.
        reason: String,
    },
}

/// The TLS alert of a crypto error code (QUIC carries TLS alerts as codes `0x100 + alert`).
fn alert_of(code: u64) -> Option<quinn::rustls::AlertDescription> {
    let alert = code.checked_sub(0x100).filter(|a| *a <= 0xff)?;
    u8::try_from(alert).ok().map(quinn::rustls::AlertDescription::from)
}

/// Classifies a failed connection: `Some` for a TLS failure, which no retry can fix.
pub fn tls_failure(error: &quinn::ConnectionError) -> Option<TlsFailure> {
    use quinn::rustls::AlertDescription;
    use quinn::ConnectionError;
    match error {
        // Raised here: the client's TLS refused the handshake.
        ConnectionError::TransportError(e) => match alert_of(u64::from(e.code))? {
            AlertDescription::NoApplicationProtocol => {
                Some(TlsFailure::Protocol { reason: e.reason.clone() })
            }
            _ => Some(TlsFailure::NodeCertificate { reason: e.reason.clone() }),
        },
        // Sent by the node: its TLS refused the handshake.
        ConnectionError::ConnectionClosed(close) => match alert_of(u64::from(close.error_code))? {
            AlertDescription::NoApplicationProtocol => {
                Some(TlsFailure::Protocol { reason: close.to_string() })
            }
            alert => Some(TlsFailure::ClientCertificate { alert: format!("{alert:?}") }),
        },
        ConnectionError::ApplicationClosed(close) if close.error_code == super::port::NO_ROLE => {
            let reason = String::from_utf8_lossy(&close.reason).into_owned();
            Some(TlsFailure::NoRole { reason })
        }
        _ => None,
    }
}

#[derive(Default)]
struct Slot {
    connection: Option<Connection>,
    /// After a failed connection attempt, further attempts fail fast until then, with that
    /// attempt's error (a TLS failure stays one: it is not mistaken for a transient one).
    failed: Option<(Instant, CallError)>,
}

struct Inner {
    endpoint: Endpoint,
    config: quinn::ClientConfig,
    options: ClientOptions,
    /// The nodes' addresses, the leader believed, the nodes suspected (on the OS clock).
    routing: Routing,
    slots: Mutex<BTreeMap<NodeId, Arc<tokio::sync::Mutex<Slot>>>>,
    batchers: Mutex<BTreeMap<NodeId, mpsc::Sender<Pending>>>,
    /// The in-flight bound of each node's batches of each group.
    in_flight: Mutex<BTreeMap<BatchTarget, Arc<Semaphore>>>,
    counts: BatchCounts,
    /// Commands inside [`Connections::call`] (to any node), from their entry until answered.
    calls: AtomicUsize,
}

/// One command inside [`Connections::call`]: counted in `Inner::calls` while it lives.
struct InCall<'a> {
    calls: &'a AtomicUsize,
    /// How many other commands were inside when this one entered.
    others: usize,
}

impl<'a> InCall<'a> {
    fn enter(calls: &'a AtomicUsize) -> Self {
        Self { calls, others: calls.fetch_add(1, Ordering::AcqRel) }
    }
}

impl Drop for InCall<'_> {
    fn drop(&mut self) {
        self.calls.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A command waiting for its node's batcher.
struct Pending {
    /// The Raft group of a sharded service the command is for (`None`: a single-group one).
    group: Option<GroupId>,
    command: Command,
    reply: oneshot::Sender<Result<ClientResponse, CallError>>,
}

/// How many commands may wait for one node's batcher.
const BATCHER_QUEUE: usize = 4096;
/// How many batches of one Raft group may be in flight to one node at a time (a batch is
/// held back, its commands waiting, until an earlier one of its group is answered).
pub const MAX_GROUP_BATCHES_IN_FLIGHT: usize = 64;

/// A node and a Raft group of it (`None`: a single-group service) that batches go to.
type BatchTarget = (NodeId, Option<GroupId>);

/// How many requests carried the commands this client sent (see [`Connections::batching`]).
#[derive(Debug, Default)]
struct BatchCounts {
    requests: AtomicU64,
    commands: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Connections to a cluster's client ports. Cheap to clone; clones share the connections.
#[derive(Clone)]
pub struct Connections {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections").field("routing", &self.inner.routing).finish()
    }
}

impl Connections {
    /// Connections to the nodes at `endpoints` (id to client address), authenticating with
    /// `tls` (a client certificate from the cluster CA). Must be called inside a tokio runtime.
    pub fn new(
        endpoints: BTreeMap<NodeId, SocketAddr>,
        tls: &NodeTls,
        options: ClientOptions,
    ) -> Result<Self, KvTlsError> {
        let ipv6 = endpoints.values().next().is_some_and(SocketAddr::is_ipv6);
        let bind: SocketAddr = if ipv6 {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            ([0, 0, 0, 0], 0).into()
        };
        let endpoint = Endpoint::client(bind).map_err(|e| KvTlsError::Config(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                endpoint,
                config: client_config(tls)?,
                routing: Routing::new(endpoints, options.suspect_for),
                options,
                slots: Mutex::new(BTreeMap::new()),
                batchers: Mutex::new(BTreeMap::new()),
                in_flight: Mutex::new(BTreeMap::new()),
                counts: BatchCounts::default(),
                calls: AtomicUsize::new(0),
            }),
        })
    }

    /// The client's options.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// What this client believes about the cluster (nodes, leader, suspects).
    pub fn routing(&self) -> &Routing {
        &self.inner.routing
    }

    /// The known nodes, in id order.
    pub fn nodes(&self) -> Vec<NodeId> {
        self.inner.routing.nodes()
    }

    /// Records the address of a member this client does not know yet (see [`Routing::learn`]).
    pub fn learn(&self, member: &Member) {
        self.inner.routing.learn(member);
    }

    /// The node believed to lead, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.inner.routing.leader()
    }

    /// Records the node believed to lead (`None`: unknown).
    pub fn set_leader(&self, leader: Option<NodeId>) {
        self.inner.routing.set_leader(leader);
    }

    /// Marks `node` as not answering: [`Connections::pick`] avoids it for a while.
    pub fn suspect(&self, node: NodeId) {
        self.inner.routing.suspect(node, monotonic_now());
    }

    /// Whether `node` is currently suspected of being down.
    pub fn is_suspect(&self, node: NodeId) -> bool {
        self.inner.routing.is_suspect(node, monotonic_now())
    }

    /// A node to try after `previous`: the next one in id order that is not suspect (or simply
    /// the next one if every node is suspect).
    pub fn pick(&self, previous: Option<NodeId>) -> Option<NodeId> {
        self.inner.routing.pick(previous, monotonic_now())
    }

    fn slot(&self, node: NodeId) -> Arc<tokio::sync::Mutex<Slot>> {
        lock(&self.inner.slots).entry(node).or_default().clone()
    }

    async fn connection(&self, node: NodeId) -> Result<Connection, CallError> {
        let addr = self.inner.routing.address(node).ok_or(CallError::UnknownNode(node))?;
        let slot = self.slot(node);
        let mut slot = slot.lock().await;
        if let Some(connection) = &slot.connection {
            if connection.close_reason().is_none() {
                return Ok(connection.clone());
            }
        }
        let connect_error = |reason: String| CallError::Connect { node, reason };
        if let Some((until, error)) = &slot.failed {
            if *until > Instant::now() {
                return Err(error.clone());
            }
        }
        let attempt = async {
            let connecting = self
                .inner
                .endpoint
                .connect_with(self.inner.config.clone(), addr, &node_dns_name(node))
                .map_err(|e| connect_error(e.to_string()))?;
            connecting.await.map_err(|e| match tls_failure(&e) {
                Some(failure) => CallError::Tls { node, failure },
                None => connect_error(e.to_string()),
            })
        };
        match tokio::time::timeout(self.inner.options.connect_timeout, attempt).await {
            Ok(Ok(connection)) => {
                debug!(node, %addr, "connected");
                slot.connection = Some(connection.clone());
                slot.failed = None;
                Ok(connection)
            }
            outcome => {
                slot.connection = None;
                let error = match outcome {
                    Ok(Err(e)) => e,
                    _ => connect_error("handshake timed out".into()),
                };
                let until = Instant::now() + self.inner.options.retry_delay * 5;
                slot.failed = Some((until, error.clone()));
                Err(error)
            }
        }
    }

    /// Sends one request to `node` and waits for its answer, within the attempt timeout.
    ///
    /// Commands issued at the same moment by several sessions of this process are sent to the
    /// node together, in one [`ClientRequest::Batch`] on one stream (each is still handled on
    /// its own by the node): one stream and a few packets instead of one per command. Those of
    /// a sharded service ([`ClientRequest::InGroup`]) are split by group: one
    /// [`ClientRequest::GroupBatch`] per group, sent in parallel (at most
    /// [`MAX_GROUP_BATCHES_IN_FLIGHT`] per node and group). A command that finds no other
    /// inside this call (the batcher idle, no batch in flight) is sent at once from the
    /// caller's task, without the batcher's task hops: nothing could join its batch.
    pub async fn call(
        &self,
        node: NodeId,
        request: &ClientRequest,
    ) -> Result<ClientResponse, CallError> {
        let limit = self.inner.options.attempt_timeout;
        let (group, command) = match request {
            ClientRequest::Command(command) => (None, command),
            ClientRequest::InGroup { group, command } => (Some(*group), command),
            _ => return self.call_within(node, request, limit).await,
        };
        let in_call = InCall::enter(&self.inner.calls);
        if in_call.others == 0 {
            let counts = &self.inner.counts;
            counts.requests.fetch_add(1, Ordering::Relaxed);
            counts.commands.fetch_add(1, Ordering::Relaxed);
            return self.call_within(node, request, limit).await;
        }
        let queue = self.batcher(node);
        let (reply, answer) = oneshot::channel();
        let pending = Pending { group, command: command.clone(), reply };
        let wait = async {
            queue.send(pending).await.map_err(|_| CallError::Connect {
                node,
                reason: "client is shutting down".into(),
            })?;
            answer.await.unwrap_or_else(|_| {
                Err(CallError::NoAnswer { node, reason: "batch abandoned".into() })
            })
        };
        tokio::time::timeout(limit, wait)
            .await
            .unwrap_or_else(|_| Err(CallError::NoAnswer { node, reason: "timed out".into() }))
    }

    /// The queue of `node`'s batcher task (started on first use).
    fn batcher(&self, node: NodeId) -> mpsc::Sender<Pending> {
        let mut batchers = lock(&self.inner.batchers);
        if let Some(queue) = batchers.get(&node) {
            return queue.clone();
        }
        let (queue, receiver) = mpsc::channel(BATCHER_QUEUE);
        tokio::spawn(run_batcher(Arc::downgrade(&self.inner), node, receiver));
        batchers.insert(node, queue.clone());
        queue
    }

    /// How many requests carried the commands this client sent through the batchers, and how
    /// many commands: `(requests, commands)` (a batch is one request).
    pub fn batching(&self) -> (u64, u64) {
        let counts = &self.inner.counts;
        (counts.requests.load(Ordering::Relaxed), counts.commands.load(Ordering::Relaxed))
    }

    /// The in-flight bound of `node`'s batches of `group`.
    fn in_flight(&self, node: NodeId, group: Option<GroupId>) -> Arc<Semaphore> {
        let mut bounds = lock(&self.inner.in_flight);
        let bound = bounds.entry((node, group));
        bound.or_insert_with(|| Arc::new(Semaphore::new(MAX_GROUP_BATCHES_IN_FLIGHT))).clone()
    }

    /// Sends `batch`, commands of `group` (`None`: a single-group service), on one stream
    /// (alone if it holds one command) once fewer than [`MAX_GROUP_BATCHES_IN_FLIGHT`] of the
    /// group's batches are in flight to `node`, and answers each waiter. Commands whose caller
    /// gave up (its answer channel closed, e.g. its attempt timed out) are dropped, before and
    /// after the wait for a permit: nobody would read their answers.
    async fn send_batch(&self, node: NodeId, group: Option<GroupId>, mut batch: Vec<Pending>) {
        let limit = self.inner.options.attempt_timeout;
        // Keeps the commands someone still waits for; whether none is left.
        let abandoned = |batch: &mut Vec<Pending>| {
            batch.retain(|pending| !pending.reply.is_closed());
            batch.is_empty()
        };
        if abandoned(&mut batch) {
            return;
        }
        let bound = self.in_flight(node, group);
        // The semaphore is never closed.
        let Ok(_permit) = bound.acquire().await else { return };
        if abandoned(&mut batch) {
            return;
        }
        let counts = &self.inner.counts;
        counts.requests.fetch_add(1, Ordering::Relaxed);
        counts.commands.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let alone = |command| match group {
            None => ClientRequest::Command(command),
            Some(group) => ClientRequest::InGroup { group, command },
        };
        if batch.len() == 1 {
            if let Some(pending) = batch.pop() {
                let answer = self.call_within(node, &alone(pending.command), limit).await;
                let _ = pending.reply.send(answer);
            }
            return;
        }
        let (commands, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.command, p.reply)).unzip();
        let count = commands.len();
        let request = CommandBatch::new(commands.clone()).map(|commands| match group {
            None => ClientRequest::Batch(commands),
            Some(group) => ClientRequest::GroupBatch { group, commands },
        });
        let outcome = match request {
            Ok(request) => self.call_within(node, &request, limit).await,
            Err(e) => Ok(ClientResponse::Refused(e.to_string())),
        };
        match outcome {
            Ok(ClientResponse::Batch(answers)) if answers.len() == count => {
                let answered = commands.into_iter().zip(replies).zip(answers.into_inner());
                for ((command, reply), answer) in answered {
                    if answer == CommandAnswer::TooLarge {
                        // A read whose value did not fit in the batch's answer: read it alone.
                        let connections = self.clone();
                        let request = alone(command);
                        tokio::spawn(async move {
                            let _ =
                                reply.send(connections.call_within(node, &request, limit).await);
                        });
                    } else {
                        let _ = reply.send(Ok(answer.into()));
                    }
                }
            }
            Ok(sharded @ ClientResponse::Sharded { .. }) => {
                // A sharded service applies no batch that names no group (nor one of a group
                // it does not have): each command gets the answer, and its client sends it
                // again in its key's group.
                for reply in replies {
                    let _ = reply.send(Ok(sharded.clone()));
                }
            }
            outcome => {
                let error = match outcome {
                    Err(e) => e,
                    Ok(other) => CallError::NoAnswer {
                        node,
                        reason: format!("unexpected answer to a batch: {other:?}"),
                    },
                };
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }

    /// Sends one request on its own stream and waits for the answer, within `limit`. A
    /// connection on which a request timed out is not reused for new requests (the node may
    /// have died: a new connection finds out within the connect timeout), but requests
    /// already on it carry on.
    pub async fn call_within(
        &self,
        node: NodeId,
        request: &ClientRequest,
        limit: std::time::Duration,
    ) -> Result<ClientResponse, CallError> {
        let deadline = tokio::time::Instant::now() + limit;
        let connection = tokio::time::timeout_at(deadline, self.connection(node))
            .await
            .map_err(|_| CallError::Connect { node, reason: "connect timed out".into() })??;
        let no_answer = |reason: String| CallError::NoAnswer { node, reason };
        let exchange = async {
            let (mut send, mut recv) = connection
                .open_bi()
                .await
                .map_err(|e| CallError::Connect { node, reason: e.to_string() })?;
            protocol::write(&mut send, request).await.map_err(|e| no_answer(e.to_string()))?;
            protocol::read(&mut recv).await.map_err(|e| no_answer(e.to_string()))
        };
        match tokio::time::timeout_at(deadline, exchange).await {
            // A node that refuses the certificate's role closes the connection at once.
            Ok(Err(error)) => match connection.close_reason().as_ref().and_then(tls_failure) {
                Some(failure) => {
                    self.retire(node, &connection).await;
                    Err(CallError::Tls { node, failure })
                }
                None => Err(error),
            },
            Ok(result) => result,
            Err(_) => {
                self.retire(node, &connection).await;
                Err(no_answer("timed out".into()))
            }
        }
    }

    /// Stops handing out `connection` for `node` (if it is still the current one).
    async fn retire(&self, node: NodeId, connection: &Connection) {
        let slot = self.slot(node);
        let mut slot = slot.lock().await;
        if slot.connection.as_ref().is_some_and(|c| c.stable_id() == connection.stable_id()) {
            slot.connection = None;
        }
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.inner.endpoint.close(0u32.into(), b"client done");
        let _ =
            tokio::time::timeout(Duration::from_millis(500), self.inner.endpoint.wait_idle()).await;
    }
}

/// The production transport: QUIC, commands of concurrent sessions batched per node.
impl ClientTransport for Connections {
    fn send(
        &self,
        node: NodeId,
        request: Arc<ClientRequest>,
    ) -> BoxFuture<'static, Result<ClientResponse, CallError>> {
        let connections = self.clone();
        async move { connections.call(node, &request).await }.boxed()
    }

    fn routing(&self) -> &Routing {
        &self.inner.routing
    }

    fn options(&self) -> &ClientOptions {
        &self.inner.options
    }
}

/// Collects the commands queued for `node` into batches and sends each batch in its own task,
/// without waiting for earlier batches: a batch holds what queued up while the task ran, so a
/// lone command is never delayed. The commands of a sharded service are split by group: one
/// batch per group, all sent at once.
async fn run_batcher(inner: Weak<Inner>, node: NodeId, mut queue: mpsc::Receiver<Pending>) {
    while let Some(first) = queue.recv().await {
        // Let the sessions woken together with this one queue their commands too.
        tokio::task::yield_now().await;
        let mut bytes = first.command.approximate_size();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_LEN && bytes < MAX_BATCH_BYTES {
            match queue.try_recv() {
                Ok(pending) => {
                    bytes += pending.command.approximate_size();
                    batch.push(pending);
                }
                Err(_) => break,
            }
        }
        let Some(inner) = inner.upgrade() else { return };
        let connections = Connections { inner };
        let mut by_group: BTreeMap<Option<GroupId>, Vec<Pending>> = BTreeMap::new();
        for pending in batch {
            by_group.entry(pending.group).or_default().push(pending);
        }
        for (group, batch) in by_group {
            let connections = connections.clone();
            tokio::spawn(async move { connections.send_batch(node, group, batch).await });
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::kv::command::Op;
    use crate::kv::tls::{gen_certs, load_client_tls, CertRole, DEFAULT_ADMIN};

    /// An admin client's TLS of a fresh cluster CA (its files are read, then deleted).
    fn admin_tls() -> NodeTls {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        gen_certs(&dir.path().join("ca"), &certs, [1]).unwrap();
        load_client_tls(&certs, &CertRole::Admin.file_stem(DEFAULT_ADMIN)).unwrap()
    }

    /// Commands whose callers gave up while their batch waited for an in-flight permit are not
    /// sent: a batch of only such commands sends nothing.
    #[tokio::test(flavor = "current_thread")]
    async fn commands_whose_callers_gave_up_are_not_sent() {
        let tls = admin_tls();
        let endpoints = [(1, "127.0.0.1:9".parse().unwrap())].into();
        let connections = Connections::new(endpoints, &tls, ClientOptions::default()).unwrap();
        // Every in-flight permit of node 1's group 0 is taken: the batch waits for one.
        let bound = connections.in_flight(1, Some(0));
        let all = u32::try_from(MAX_GROUP_BATCHES_IN_FLIGHT).unwrap();
        let held = bound.acquire_many_owned(all).await.unwrap();
        let mut answers = Vec::new();
        let batch: Vec<Pending> = (0..2)
            .map(|i| {
                let (reply, answer) = oneshot::channel();
                answers.push(answer);
                let key = bytes::Bytes::from(format!("k{i}"));
                let command = Command { session: None, op: Op::Get { key } };
                Pending { group: Some(0), command, reply }
            })
            .collect();
        let sender = connections.clone();
        let sending = tokio::spawn(async move { sender.send_batch(1, Some(0), batch).await });
        tokio::task::yield_now().await;
        drop(answers); // the callers give up
        drop(held);
        sending.await.unwrap();
        assert_eq!(connections.batching(), (0, 0), "a batch nobody waits for was sent");
        connections.close().await;
    }

    /// A command alone inside `call` goes from its caller's task without the batcher; one
    /// issued while another is inside goes through the batcher (which may join it to others).
    #[tokio::test(flavor = "current_thread")]
    async fn a_lone_command_skips_the_batcher_and_a_concurrent_one_does_not() {
        let tls = admin_tls();
        // Nothing answers there: every attempt fails within the short timeouts.
        let nowhere: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let endpoints = [(1, nowhere), (2, nowhere)].into();
        let options = ClientOptions {
            attempt_timeout: Duration::from_millis(200),
            connect_timeout: Duration::from_millis(50),
            ..ClientOptions::default()
        };
        let connections = Connections::new(endpoints, &tls, options).unwrap();
        let get = |key: &'static str| {
            let key = bytes::Bytes::from_static(key.as_bytes());
            ClientRequest::Command(Command { session: None, op: Op::Get { key } })
        };
        let started = |c: &Connections| lock(&c.inner.batchers).contains_key(&1);

        assert!(connections.call(1, &get("a")).await.is_err());
        assert!(!started(&connections), "a lone command went through the batcher");
        assert_eq!(connections.batching(), (1, 1));

        let first = connections.clone();
        // To node 2, whose first connection attempt is still to be made (node 1's failure is
        // remembered for a while): the command stays inside `call` while it connects.
        let first = tokio::spawn(async move { first.call(2, &get("b")).await });
        tokio::task::yield_now().await;
        assert!(connections.call(1, &get("c")).await.is_err());
        assert!(started(&connections), "a command issued beside another skipped the batcher");
        assert!(first.await.unwrap().is_err());
        assert_eq!(connections.inner.calls.load(Ordering::Acquire), 0);
        connections.close().await;
    }
}

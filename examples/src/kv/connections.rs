//! [`Connections`]: one QUIC connection per node, shared by every session of a client process,
//! with the cluster's client addresses and what the client knows about the leader.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use raft_core::NodeId;
use raft_quic::quinn::{self, Connection, Endpoint};
use raft_quic::{node_dns_name, NodeTls};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::command::Command;
use super::protocol::{
    self, ClientRequest, ClientResponse, CommandBatch, Member, MAX_BATCH_BYTES, MAX_BATCH_LEN,
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
}

impl CallError {
    /// Whether the request may have reached the node.
    pub fn maybe_sent(&self) -> bool {
        matches!(self, CallError::NoAnswer { .. })
    }
}

#[derive(Default)]
struct Slot {
    connection: Option<Connection>,
    /// After a failed connection attempt, further attempts fail fast until then.
    failed_until: Option<Instant>,
}

struct Inner {
    endpoint: Endpoint,
    config: quinn::ClientConfig,
    options: ClientOptions,
    addrs: Mutex<BTreeMap<NodeId, SocketAddr>>,
    slots: Mutex<BTreeMap<NodeId, Arc<tokio::sync::Mutex<Slot>>>>,
    leader: Mutex<Option<NodeId>>,
    suspects: Mutex<BTreeMap<NodeId, Instant>>,
    batchers: Mutex<BTreeMap<NodeId, mpsc::Sender<Pending>>>,
}

/// A command waiting for its node's batcher.
struct Pending {
    command: Command,
    reply: oneshot::Sender<Result<ClientResponse, CallError>>,
}

/// How many commands may wait for one node's batcher.
const BATCHER_QUEUE: usize = 4096;

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
        f.debug_struct("Connections").field("nodes", &*lock(&self.inner.addrs)).finish()
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
                options,
                addrs: Mutex::new(endpoints),
                slots: Mutex::new(BTreeMap::new()),
                leader: Mutex::new(None),
                suspects: Mutex::new(BTreeMap::new()),
                batchers: Mutex::new(BTreeMap::new()),
            }),
        })
    }

    /// The client's options.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// The known nodes, in id order.
    pub fn nodes(&self) -> Vec<NodeId> {
        lock(&self.inner.addrs).keys().copied().collect()
    }

    /// Records a member's address (learned from a redirect or a status answer).
    pub fn learn(&self, member: &Member) {
        let mut addrs = lock(&self.inner.addrs);
        if addrs.insert(member.id, member.client_addr) != Some(member.client_addr) {
            lock(&self.inner.slots).remove(&member.id);
        }
    }

    /// The node believed to lead, if any.
    pub fn leader(&self) -> Option<NodeId> {
        *lock(&self.inner.leader)
    }

    /// Records the node believed to lead (`None`: unknown).
    pub fn set_leader(&self, leader: Option<NodeId>) {
        *lock(&self.inner.leader) = leader;
        if let Some(id) = leader {
            lock(&self.inner.suspects).remove(&id);
        }
    }

    /// Marks `node` as not answering: [`Connections::pick`] avoids it for a while.
    pub fn suspect(&self, node: NodeId) {
        lock(&self.inner.suspects).insert(node, Instant::now() + self.inner.options.suspect_for);
        let mut leader = lock(&self.inner.leader);
        if *leader == Some(node) {
            *leader = None;
        }
    }

    /// Whether `node` is currently suspected of being down.
    pub fn is_suspect(&self, node: NodeId) -> bool {
        let mut suspects = lock(&self.inner.suspects);
        match suspects.get(&node) {
            Some(&until) if until > Instant::now() => true,
            Some(_) => {
                suspects.remove(&node);
                false
            }
            None => false,
        }
    }

    /// A node to try after `previous`: the next one in id order that is not suspect (or simply
    /// the next one if every node is suspect).
    pub fn pick(&self, previous: Option<NodeId>) -> Option<NodeId> {
        let nodes = self.nodes();
        let start = previous.and_then(|p| nodes.iter().position(|&n| n == p)).map_or(0, |i| i + 1);
        let rotated: Vec<NodeId> =
            nodes.iter().cycle().skip(start).take(nodes.len()).copied().collect();
        rotated.iter().copied().find(|&n| !self.is_suspect(n)).or(rotated.first().copied())
    }

    fn slot(&self, node: NodeId) -> Arc<tokio::sync::Mutex<Slot>> {
        lock(&self.inner.slots).entry(node).or_default().clone()
    }

    async fn connection(&self, node: NodeId) -> Result<Connection, CallError> {
        let addr =
            lock(&self.inner.addrs).get(&node).copied().ok_or(CallError::UnknownNode(node))?;
        let slot = self.slot(node);
        let mut slot = slot.lock().await;
        if let Some(connection) = &slot.connection {
            if connection.close_reason().is_none() {
                return Ok(connection.clone());
            }
        }
        let connect_error = |reason: String| CallError::Connect { node, reason };
        if slot.failed_until.is_some_and(|t| t > Instant::now()) {
            return Err(connect_error("recent connection attempt failed".into()));
        }
        let attempt = async {
            let connecting = self
                .inner
                .endpoint
                .connect_with(self.inner.config.clone(), addr, &node_dns_name(node))
                .map_err(|e| e.to_string())?;
            connecting.await.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(self.inner.options.connect_timeout, attempt).await {
            Ok(Ok(connection)) => {
                debug!(node, %addr, "connected");
                slot.connection = Some(connection.clone());
                slot.failed_until = None;
                Ok(connection)
            }
            outcome => {
                slot.connection = None;
                slot.failed_until = Some(Instant::now() + self.inner.options.retry_delay * 5);
                let reason = match outcome {
                    Ok(Err(e)) => e,
                    _ => "handshake timed out".into(),
                };
                Err(connect_error(reason))
            }
        }
    }

    /// Sends one request to `node` and waits for its answer, within the attempt timeout.
    ///
    /// Commands issued at the same moment by several sessions of this process are sent to the
    /// node together, in one [`ClientRequest::Batch`] on one stream (each is still handled on
    /// its own by the node): one stream and a few packets instead of one per command.
    pub async fn call(
        &self,
        node: NodeId,
        request: &ClientRequest,
    ) -> Result<ClientResponse, CallError> {
        let limit = self.inner.options.attempt_timeout;
        let ClientRequest::Command(command) = request else {
            return self.call_within(node, request, limit).await;
        };
        let queue = self.batcher(node);
        let (reply, answer) = oneshot::channel();
        let pending = Pending { command: command.clone(), reply };
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

    /// Sends `batch` on one stream (alone if it holds one command) and answers each waiter.
    async fn send_batch(&self, node: NodeId, mut batch: Vec<Pending>) {
        let limit = self.inner.options.attempt_timeout;
        if batch.len() == 1 {
            if let Some(pending) = batch.pop() {
                let request = ClientRequest::Command(pending.command);
                let answer = self.call_within(node, &request, limit).await;
                let _ = pending.reply.send(answer);
            }
            return;
        }
        let (commands, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.command, p.reply)).unzip();
        let count = commands.len();
        let outcome = match CommandBatch::new(commands) {
            Ok(commands) => self.call_within(node, &ClientRequest::Batch(commands), limit).await,
            Err(e) => Ok(ClientResponse::Refused(e.to_string())),
        };
        match outcome {
            Ok(ClientResponse::Batch(answers)) if answers.len() == count => {
                for (reply, answer) in replies.into_iter().zip(answers.into_inner()) {
                    let _ = reply.send(Ok(answer.into()));
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

/// Collects the commands queued for `node` into batches and sends each batch in its own task,
/// without waiting for earlier batches: a batch holds what queued up while the task ran, so a
/// lone command is never delayed.
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
        tokio::spawn(async move { connections.send_batch(node, batch).await });
    }
}

//! [`QuicNetwork`]: the `Network` implementation and the lifecycle of the endpoint.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use quinn::{Endpoint, IdleTimeout, TransportConfig, VarInt};
use raft_core::{Network, NetworkError, NodeId, RpcHandler, RpcRequest, RpcResponse};
use tracing::info;

use crate::backoff::Backoff;
use crate::client::{lock, Client, Peer};
use crate::config::{ConfigError, QuicConfig};
use crate::identity::{check_node_cert, IdentityError};
use crate::timer::timeout;
use crate::tls::{endpoint_config, quic_server_crypto, rustls_client_config, TlsError};
use crate::wire::code;

/// How long [`QuicNetwork::close`] waits for peers to acknowledge the close.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Why [`QuicNetwork::bind`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The TLS material could not be turned into a TLS configuration.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The node's own certificate would be refused by its peers (wrong CA, wrong name, wrong
    /// key usage).
    #[error("this node's certificate is unusable: {0}")]
    Certificate(#[from] IdentityError),
    /// The UDP socket could not be bound or set up.
    #[error("cannot bind the QUIC endpoint: {0}")]
    Io(#[from] std::io::Error),
}

/// The limits copied out of the configuration.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) rpc_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_frame_size: u32,
    pub(crate) max_inbound_connections: usize,
    pub(crate) priority_frame_threshold: usize,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
}

/// State shared by the dialer, the accept loop and the stream tasks. Holds no endpoint, so the
/// tasks never keep a dropped network's endpoint open.
pub(crate) struct Shared {
    pub(crate) id: NodeId,
    pub(crate) runtime: Arc<dyn quinn::Runtime>,
    pub(crate) limits: Limits,
    pub(crate) inbound: AtomicUsize,
    handler: RwLock<Option<Arc<dyn RpcHandler>>>,
    peers: RwLock<BTreeMap<NodeId, Arc<Peer>>>,
    closed: AtomicBool,
}

impl Shared {
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn handler(&self) -> Option<Arc<dyn RpcHandler>> {
        self.handler.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn peer(&self, id: NodeId) -> Option<Arc<Peer>> {
        self.peers.read().unwrap_or_else(|p| p.into_inner()).get(&id).cloned()
    }

    /// The ids an inbound connection may prove to be.
    pub(crate) fn peer_ids(&self) -> Vec<NodeId> {
        self.peers.read().unwrap_or_else(|p| p.into_inner()).keys().copied().collect()
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(self.limits.backoff_min, self.limits.backoff_max)
    }
}

struct Inner {
    client: Client,
    local_addr: SocketAddr,
    /// Serializes `close`.
    closing: Mutex<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Ends the accept loop and every connection once the last handle is gone.
        self.client.endpoint.close(code::SHUTDOWN, b"network dropped");
    }
}

/// A [`Network`] over QUIC with mutual TLS: one UDP endpoint per node that both serves inbound
/// RPCs and dials peers.
///
/// Guarantees:
/// - **Authentication.** Every connection is mutually authenticated against the cluster CA. An
///   inbound request is handed to the handler only if its [`RpcRequest::sender`] is the node id
///   the peer's certificate names; a dialed peer must present a certificate naming the id that
///   was dialed.
/// - **No head-of-line blocking.** Each RPC has its own QUIC stream; small frames (votes,
///   heartbeats) have a higher send priority than bulk ones; each inbound RPC runs in its own
///   task.
/// - **Bounded.** Frame size, streams per connection, inbound connections, flow-control
///   windows and every wait are bounded by [`QuicConfig`].
/// - **Robust.** Malformed input closes the offending stream (or connection) with a logged
///   reason; nothing a peer sends can make the node panic.
/// - **Self-healing.** A failed or lost connection is redialed on the next RPC, with capped
///   exponential backoff between failed attempts.
///
/// Requests that arrive before [`QuicNetwork::serve`] installs a handler are refused. Clones
/// share the endpoint; it closes on [`QuicNetwork::close`] or when the last clone is dropped.
#[derive(Clone)]
pub struct QuicNetwork {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for QuicNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicNetwork")
            .field("node_id", &self.inner.client.shared.id)
            .field("local_addr", &self.inner.local_addr)
            .finish_non_exhaustive()
    }
}

fn transport_config(config: &QuicConfig) -> Result<TransportConfig, ConfigError> {
    let idle = IdleTimeout::try_from(config.idle_timeout)
        .map_err(|_| ConfigError { field: "idle_timeout", reason: "is too large" })?;
    let mut transport = TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(config.max_concurrent_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(config.stream_receive_window))
        .receive_window(VarInt::from_u32(config.connection_receive_window))
        .send_window(u64::from(config.connection_receive_window))
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(config.keep_alive_interval))
        .datagram_receive_buffer_size(None);
    Ok(transport)
}

impl QuicNetwork {
    /// Binds the endpoint at `config.listen_addr` on the caller's async `runtime` (for example
    /// `Arc::new(raft_quic::TokioRuntime)` inside a tokio runtime, or
    /// `Arc::new(raft_quic::SmolRuntime)`), and starts accepting connections.
    ///
    /// Checks first that the node's certificate chains to the cluster CA and names
    /// `config.node_id`. Inbound requests are refused until [`serve`](Self::serve) is called.
    /// With tokio, call it from within the runtime (quinn registers the socket with it).
    pub fn bind(config: QuicConfig, runtime: Arc<dyn quinn::Runtime>) -> Result<Self, BindError> {
        config.validate()?;
        let tls = &config.tls;
        let Some((leaf, intermediates)) = tls.cert_chain.split_first() else {
            return Err(IdentityError::NoCertificate.into());
        };
        check_node_cert(&tls.ca_cert, leaf, intermediates, config.node_id)?;
        let transport = Arc::new(transport_config(&config)?);

        let mut server = quinn::ServerConfig::with_crypto(quic_server_crypto(tls)?);
        server
            .transport_config(Arc::clone(&transport))
            .max_incoming(config.max_inbound_connections)
            .migration(false);
        let client_crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(rustls_client_config(tls)?)
                .map_err(TlsError::from)?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(transport);

        let socket = std::net::UdpSocket::bind(config.listen_addr)?;
        let endpoint =
            Endpoint::new(endpoint_config(tls), Some(server), socket, Arc::clone(&runtime))?;
        let local_addr = endpoint.local_addr()?;

        let limits = Limits {
            rpc_timeout: config.rpc_timeout,
            connect_timeout: config.connect_timeout,
            max_frame_size: config.max_frame_size,
            max_inbound_connections: config.max_inbound_connections,
            priority_frame_threshold: config.priority_frame_threshold,
            backoff_min: config.backoff_min,
            backoff_max: config.backoff_max,
        };
        let shared = Arc::new(Shared {
            id: config.node_id,
            runtime: Arc::clone(&runtime),
            limits,
            inbound: AtomicUsize::new(0),
            handler: RwLock::new(None),
            peers: RwLock::new(BTreeMap::new()),
            closed: AtomicBool::new(false),
        });
        {
            let mut peers = shared.peers.write().unwrap_or_else(|p| p.into_inner());
            for (&id, &addr) in &config.peers {
                peers.insert(id, Arc::new(Peer::new(id, addr, shared.backoff())));
            }
        }
        runtime.spawn(Box::pin(crate::server::accept_loop(endpoint.clone(), Arc::clone(&shared))));
        info!(node = config.node_id, %local_addr, "QUIC endpoint bound");
        let client = Client { endpoint, config: client, shared };
        Ok(Self { inner: Arc::new(Inner { client, local_addr, closing: Mutex::new(()) }) })
    }

    fn shared(&self) -> &Shared {
        &self.inner.client.shared
    }

    /// Installs (or replaces) the handler of inbound requests; from now on authenticated
    /// requests are handed to it. Typically the node: `network.serve(Arc::new(node.clone()))`.
    pub fn serve(&self, handler: Arc<dyn RpcHandler>) {
        *self.shared().handler.write().unwrap_or_else(|p| p.into_inner()) = Some(handler);
    }

    /// Removes the handler: inbound requests are refused again (for example while a node is
    /// restarted in-process).
    pub fn stop_serving(&self) {
        *self.shared().handler.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.shared().id
    }

    /// The address the endpoint is bound to (the actual port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Adds peer `id` at `addr`, or moves it there (its connection is closed and its backoff
    /// reset). Inbound connections proving `id` are accepted from now on.
    pub fn set_peer(&self, id: NodeId, addr: SocketAddr) {
        let shared = self.shared();
        if id == shared.id {
            return;
        }
        let mut peers = shared.peers.write().unwrap_or_else(|p| p.into_inner());
        match peers.get(&id) {
            Some(peer) => peer.set_addr(addr),
            None => {
                peers.insert(id, Arc::new(Peer::new(id, addr, shared.backoff())));
            }
        }
    }

    /// Forgets peer `id`: RPCs to it fail with `UnknownPeer`, its outbound connection is closed
    /// and new inbound connections proving `id` are refused.
    pub fn remove_peer(&self, id: NodeId) {
        let removed = self.shared().peers.write().unwrap_or_else(|p| p.into_inner()).remove(&id);
        if let Some(peer) = removed {
            peer.close(b"peer removed");
        }
    }

    /// Closes the endpoint: every connection is closed, RPCs fail with `Shutdown` from now on,
    /// and the UDP socket is released once peers acknowledged the close (or after a short
    /// grace period). Idempotent.
    pub async fn close(&self) {
        let shared = self.shared();
        {
            let _closing = lock(&self.inner.closing);
            if shared.closed.swap(true, Ordering::AcqRel) {
                return;
            }
            *shared.handler.write().unwrap_or_else(|p| p.into_inner()) = None;
            self.inner.client.endpoint.close(code::SHUTDOWN, b"shutdown");
        }
        let idle = self.inner.client.endpoint.wait_idle();
        let _ = timeout(&*shared.runtime, CLOSE_GRACE, idle).await;
        info!(node = shared.id, "QUIC endpoint closed");
    }
}

#[async_trait]
impl Network for QuicNetwork {
    async fn send(&self, target: NodeId, request: RpcRequest) -> Result<RpcResponse, NetworkError> {
        self.inner.client.call(target, &request).await
    }
}

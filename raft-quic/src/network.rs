//! [`QuicNetwork`]: the `Network` implementation and the lifecycle of the endpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use quinn::{Endpoint, IdleTimeout, TransportConfig, VarInt};
use raft_core::{
    Envelope, GroupId, Network, NetworkError, NodeId, NodeInfo, RpcHandler, RpcResponse,
};
use tracing::{info, warn};

use crate::accept::{Gate, GateStats};
use crate::backoff::Backoff;
use crate::bounded::Limits;
use crate::bulk::BulkWindow;
use crate::candidates::Candidates;
use crate::certs::NodeTls;
use crate::cid::endpoint_config;
use crate::client::{lock, Check, Client, ClientTls, Peer};
use crate::config::{QuicConfig, QuicConfigError};
use crate::expiry::expiry_warning;
use crate::frame::{MAX_DEPTH, MAX_RESPONSE_FRAME_SIZE};
use crate::group::QuicGroupNetwork;
use crate::identity::{check_node_cert, recheck_peer, IdentityError};
use crate::inbound::{canonical, IdentityLimits, Inbound};
use crate::members::{MembershipAddresses, NETWORK_SOURCE};
use crate::metrics::PeerStats;
use crate::offload::Offload;
use crate::timer::timeout;
use crate::tls::{quic_server_crypto, rustls_client_config, PeerRole, TlsError};
use crate::wire::code;

/// How long [`QuicNetwork::close`] waits for peers to acknowledge the close.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Why [`QuicNetwork::bind`] (or [`QuicNetwork::update_tls`]) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] QuicConfigError),
    /// The TLS material could not be turned into a TLS configuration.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The node's own certificate would be refused by its peers (wrong CA, wrong name, no node
    /// role, expired).
    #[error("this node's certificate is unusable: {0}")]
    Certificate(#[from] IdentityError),
    /// The UDP socket could not be bound or set up.
    #[error("cannot bind the QUIC endpoint: {0}")]
    Io(#[from] std::io::Error),
}

/// The limits copied out of the configuration.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) rpc_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_frame_size: u32,
    /// The largest response frame sent or read: `max_frame_size`, at most
    /// [`MAX_RESPONSE_FRAME_SIZE`](crate::frame::MAX_RESPONSE_FRAME_SIZE).
    pub(crate) max_response_frame_size: u32,
    pub(crate) decode: Limits,
    pub(crate) priority_frame_threshold: usize,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    /// The bytes of bulk requests (frames above `priority_frame_threshold`) in flight to one
    /// peer, all groups together: half of `connection_receive_window`.
    pub(crate) bulk_window_bytes: u64,
    /// The bulk requests in flight to one peer: half of `max_concurrent_streams`.
    pub(crate) bulk_window_requests: usize,
}

/// State shared by the dialer, the accept loop and the stream tasks. Holds no endpoint, so the
/// tasks never keep a dropped network's endpoint open.
pub(crate) struct Shared {
    pub(crate) id: NodeId,
    pub(crate) runtime: Arc<dyn quinn::Runtime>,
    pub(crate) limits: Settings,
    handler: RwLock<Option<Arc<dyn RpcHandler>>>,
    pub(crate) peers: RwLock<BTreeMap<NodeId, Arc<Peer>>>,
    refused: RwLock<BTreeSet<NodeId>>,
    /// Established inbound connections, by the node id they proved.
    pub(crate) inbound: Arc<Inbound>,
    /// Decodes large request bodies off the runtime's threads.
    pub(crate) offload: Offload,
    /// Inbound batch frames refused whole (see [`QuicNetwork::bad_batches_received`]).
    pub(crate) bad_batches: AtomicU64,
    /// Inbound requests refused as bad (see [`QuicNetwork::bad_requests_received`]).
    pub(crate) bad_requests: AtomicU64,
    /// Answers ignored as stray (see [`QuicNetwork::stray_answers_received`]).
    pub(crate) stray_answers: AtomicU64,
    /// Inbound streams whose answers the peer did not take in time (see
    /// [`QuicNetwork::answer_timeouts`]).
    pub(crate) answer_timeouts: AtomicU64,
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

    /// Whether node `id` was removed from the cluster.
    pub(crate) fn is_refused(&self, id: NodeId) -> bool {
        self.refused.read().unwrap_or_else(|p| p.into_inner()).contains(&id)
    }

    /// Whether `addr` is where a known peer listens or where a node last authenticated from.
    fn is_expected(&self, addr: SocketAddr) -> bool {
        let addr = canonical(addr);
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        peers.values().any(|peer| peer.is_at(|at| canonical(at) == addr))
            || self.inbound.is_remembered(addr)
    }

    /// A new peer at `addrs`: no connection yet, a fresh backoff and bulk window.
    fn new_peer(&self, id: NodeId, addrs: Candidates) -> Arc<Peer> {
        let backoff = Backoff::new(self.limits.backoff_min, self.limits.backoff_max);
        let window =
            BulkWindow::new(self.limits.bulk_window_bytes, self.limits.bulk_window_requests);
        Arc::new(Peer::new(id, addrs, backoff, window))
    }
}

struct Inner {
    client: Client,
    local_addr: SocketAddr,
    gate: Gate,
    /// The transports of inbound and outbound connections, to rebuild the configurations with
    /// new TLS material.
    transport: Transports,
    max_incoming: usize,
    cert_expiry_warning: Duration,
    /// Serializes `close` and `update_tls`.
    closing: Mutex<()>,
    /// The addresses taken from the membership (`members_changed`).
    members: MembershipAddresses,
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
/// - **Only nodes speak Raft.** Every connection is mutually authenticated against the trusted
///   node CA(s), and both certificates must carry the node role
///   ([`NODE_ROLE_OID`](crate::NODE_ROLE_OID)) and name one node id: a client certificate
///   never passes for a node. A dialed peer must prove the id that was dialed. An inbound
///   connection is bound to the id its certificate names, whatever the address book holds,
///   except ids this network [refuses](QuicNetwork::refuse) (removed nodes), whose connections
///   are closed.
/// - **Authenticated senders.** An inbound request is handed to the handler only if its
///   [`RpcRequest::sender`](raft_core::RpcRequest::sender) is that id; the claim is checked from a small header before the
///   body is read.
/// - **No head-of-line blocking.** Each frame has its own QUIC stream; small frames (votes,
///   heartbeats) have a higher send priority than bulk ones; each inbound frame is served in
///   its own task.
/// - **Coalesced.** The small requests (frames up to `priority_frame_threshold`) to one peer
///   that are issued while a send to it is in progress, of every group, travel in one batch
///   frame on one stream (at most 256 requests, and a small frame's bytes); each is checked as
///   a lone request is (its own sender header against the certificate: a spoofed one is
///   refused alone), handled at once, and answered on the batch's stream as soon as its
///   handler finishes, so a slow handler holds up no other request. A lone request waits for
///   no timer: it is sent after the tasks ready at that moment ran once (see
///   [`peer_stats`](QuicNetwork::peer_stats) for the frames sent). A malformed batch resets its
///   own stream only.
/// - **Shared by groups, fair between them.** All the Raft groups of a process may share one
///   network: each group's node gets a view ([`for_group`](QuicNetwork::for_group)), requests
///   carry their group id, and the one handler served routes them. Bulk requests (frames above
///   `priority_frame_threshold`) to one peer take at most half its connection window and half
///   its streams, all groups together, admitted round robin by group while they wait; so a
///   vote or heartbeat of any group waits behind at most half the connection window of other
///   groups' bulk bytes, and only those already sent: never for flow-control credit, send
///   buffer or a stream slot. No limit is per group.
/// - **Bounded.** Handshakes, connections (in all and per node id), frame sizes (a response
///   at most [`MAX_RESPONSE_FRAME_SIZE`](crate::frame::MAX_RESPONSE_FRAME_SIZE)), decoded
///   elements per frame, streams, flow-control windows, memory per node id and every wait for
///   a peer are bounded by [`QuicConfig`]. The handlers' time is this node's own and not
///   bounded here (an inbound stream's answers wait for the peer at most one RPC timeout in
///   all, after the handlers finished).
/// - **Certificates hold for a connection's lifetime.** A connection is closed once its
///   peer's certificate expires, and [`update_tls`](QuicNetwork::update_tls) closes those a
///   new trust bundle no longer accepts, the connections whose handshake was under way
///   included (when it completes, before any RPC uses them).
/// - **Robust.** Malformed input closes the offending stream (or connection) with a logged
///   reason; nothing a peer sends can make the node panic. A peer of another wire version is
///   refused at the handshake with an error that says so.
/// - **Self-healing.** A failed or lost connection is redialed on the next RPC, with capped
///   exponential backoff between failed attempts. When several groups (or the configuration)
///   name different addresses for a peer, a failed dial makes the next one try the next address,
///   the most recently set first, under the same backoff (see `members.rs`). A newly
///   preferred address named while the peer's connection works is dialed in the background,
///   and the connection moves there only once that dial succeeds (make before break).
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

/// The transport parameters of a node's connections. `peer_streams` is how many streams the
/// peer may open at once: `max_concurrent_streams` on inbound connections, none on outbound ones
/// (a dialed peer only answers our streams; one it opens would never be read, yet could pin
/// flow-control credit).
fn transport_config(
    config: &QuicConfig,
    peer_streams: u32,
) -> Result<TransportConfig, QuicConfigError> {
    let idle = IdleTimeout::try_from(config.idle_timeout)
        .map_err(|_| QuicConfigError::new("idle_timeout", "is too large"))?;
    let mut transport = TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(peer_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(config.stream_receive_window))
        .receive_window(VarInt::from_u32(config.connection_receive_window))
        .send_window(u64::from(config.connection_receive_window))
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(config.keep_alive_interval))
        .datagram_receive_buffer_size(None);
    Ok(transport)
}

/// Checks that `tls` holds a usable certificate for node `id`: the checks its peers will make.
fn check_own_certificate(tls: &NodeTls, id: NodeId) -> Result<(), IdentityError> {
    let Some((leaf, intermediates)) = tls.cert_chain.split_first() else {
        return Err(IdentityError::NoCertificate);
    };
    check_node_cert(&tls.trust_anchors, leaf, intermediates, id)
}

/// The transport configurations of inbound (served) and outbound (dialed) connections.
#[derive(Clone)]
struct Transports {
    inbound: Arc<TransportConfig>,
    outbound: Arc<TransportConfig>,
}

impl Transports {
    fn new(config: &QuicConfig) -> Result<Self, QuicConfigError> {
        Ok(Self {
            inbound: Arc::new(transport_config(config, config.max_concurrent_streams)?),
            outbound: Arc::new(transport_config(config, 0)?),
        })
    }
}

fn server_config(
    tls: &NodeTls,
    transport: &Arc<TransportConfig>,
    max_incoming: usize,
) -> Result<quinn::ServerConfig, TlsError> {
    let mut server = quinn::ServerConfig::with_crypto(quic_server_crypto(tls)?);
    server.transport_config(Arc::clone(transport)).max_incoming(max_incoming).migration(false);
    Ok(server)
}

fn client_config(
    tls: &NodeTls,
    transport: &Arc<TransportConfig>,
) -> Result<quinn::ClientConfig, TlsError> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(rustls_client_config(tls)?)?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::clone(transport));
    Ok(client)
}

fn warn_if_expiring(id: NodeId, tls: &NodeTls, within: Duration) {
    if let Some(warning) = expiry_warning(&tls.cert_chain, within) {
        warn!(node = id, "{warning}");
    }
}

impl QuicNetwork {
    /// Binds the endpoint at `config.listen_addr` on the caller's async `runtime` (for example
    /// `Arc::new(raft_quic::QuinnTokioRuntime)` inside a tokio runtime, or
    /// `Arc::new(raft_quic::QuinnSmolRuntime)`), and starts accepting connections.
    ///
    /// Checks first that the node's certificate chains to a trusted CA, carries the node role
    /// and names `config.node_id`, and warns if it expires soon. Inbound requests are refused
    /// until [`serve`](Self::serve) is called. With tokio, call it from within the runtime
    /// (quinn registers the socket with it).
    pub fn bind(config: QuicConfig, runtime: Arc<dyn quinn::Runtime>) -> Result<Self, BindError> {
        config.validate()?;
        let tls = &config.tls;
        check_own_certificate(tls, config.node_id)?;
        warn_if_expiring(config.node_id, tls, config.cert_expiry_warning);
        let transport = Transports::new(&config)?;
        // quinn queues attempts until the accept loop screens them, which it does at once.
        let accept = &config.accept;
        let max_incoming = accept
            .max_handshakes
            .saturating_add(accept.reserved_handshakes)
            .saturating_mul(4)
            .max(64);
        let server = server_config(tls, &transport.inbound, max_incoming)?;
        let client = client_config(tls, &transport.outbound)?;

        let socket = std::net::UdpSocket::bind(config.listen_addr)?;
        let endpoint = Endpoint::new(
            endpoint_config(tls, config.idle_timeout, config.accept.handshake_timeout),
            Some(server),
            socket,
            Arc::clone(&runtime),
        )?;
        let local_addr = endpoint.local_addr()?;

        let limits = Settings {
            rpc_timeout: config.rpc_timeout,
            connect_timeout: config.connect_timeout,
            max_frame_size: config.max_frame_size,
            max_response_frame_size: config.max_frame_size.min(MAX_RESPONSE_FRAME_SIZE),
            decode: Limits { max_items: config.max_decoded_items, max_depth: MAX_DEPTH },
            priority_frame_threshold: config.priority_frame_threshold,
            backoff_min: config.backoff_min,
            backoff_max: config.backoff_max,
            bulk_window_bytes: u64::from(config.connection_receive_window / 2),
            bulk_window_requests: (config.max_concurrent_streams / 2) as usize,
        };
        let shared = Arc::new(Shared {
            id: config.node_id,
            runtime: Arc::clone(&runtime),
            limits,
            handler: RwLock::new(None),
            peers: RwLock::new(BTreeMap::new()),
            refused: RwLock::new(config.refused.clone()),
            inbound: Inbound::new(
                config.node_id,
                IdentityLimits {
                    max_connections: config.max_connections_per_node,
                    memory: u64::from(config.connection_receive_window),
                    log_interval: config.accept.log_interval,
                },
            ),
            offload: Offload::start(format!("raft-quic-decode-{}", config.node_id))?,
            bad_batches: AtomicU64::new(0),
            bad_requests: AtomicU64::new(0),
            stray_answers: AtomicU64::new(0),
            answer_timeouts: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        });
        let configured: BTreeMap<NodeId, SocketAddr> = config
            .peers
            .iter()
            .filter(|(id, _)| !config.refused.contains(id))
            .map(|(&id, &addr)| (id, addr))
            .collect();
        {
            let mut peers = shared.peers.write().unwrap_or_else(|p| p.into_inner());
            for (&id, &addr) in &configured {
                if let Some(addrs) = Candidates::new([addr]) {
                    peers.insert(id, shared.new_peer(id, addrs));
                }
            }
        }
        let gate = Gate::new("raft", config.accept.clone(), Arc::clone(&runtime));
        let known = Arc::downgrade(&shared);
        gate.set_expected(move |addr| {
            known.upgrade().is_some_and(|shared| shared.is_expected(addr))
        });
        let accept =
            crate::server::accept_loop(endpoint.clone(), Arc::clone(&shared), gate.clone());
        runtime.spawn(Box::pin(accept));
        info!(node = config.node_id, %local_addr, "QUIC endpoint bound");
        let client =
            Client { endpoint, tls: Arc::new(RwLock::new(ClientTls::new(client))), shared };
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                local_addr,
                gate,
                transport,
                max_incoming,
                cert_expiry_warning: config.cert_expiry_warning,
                closing: Mutex::new(()),
                members: MembershipAddresses::new(configured),
            }),
        })
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.inner.client.shared
    }

    pub(crate) fn member_addresses(&self) -> &MembershipAddresses {
        &self.inner.members
    }

    /// A view of this network for Raft group `group_id`, to hand to that group's node: all
    /// the groups of a process share this endpoint, its one connection per peer process and its
    /// limits, and the one handler it [serves](Self::serve) receives every group's requests
    /// (the envelope names the group). Each view keeps its group's member addresses apart
    /// (`members_changed`); the network dials from the union of every view's, of this network's
    /// own (`members_changed` called on it directly) and of the configured ones (see
    /// [`QuicGroupNetwork`]). Call it once per group and clone the view; a group's addresses
    /// are forgotten when its view's last clone is dropped. A process with one group may use
    /// this network directly instead.
    pub fn for_group(&self, group_id: GroupId) -> QuicGroupNetwork {
        QuicGroupNetwork::new(self.clone(), group_id)
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

    /// Adds peer `id` at `addr`, or moves it there at once (its connection is closed and its
    /// backoff reset), so that RPCs can be sent to it. Ignored for this node's own id and for
    /// refused ids. (Inbound connections do not depend on it: see [`QuicNetwork`].) The
    /// addresses the memberships name (`members_changed`) are the other candidates, ranked with
    /// this one by when each was set (see the `members` module); this address stays one while
    /// no membership names one too.
    pub fn set_peer(&self, id: NodeId, addr: SocketAddr) {
        self.inner.members.configure(self, id, Some(addr));
    }

    /// Forgets peer `id`'s address: RPCs to it fail with `UnknownPeer` and its outbound
    /// connection is closed. Its inbound connections are still accepted (it may be a member
    /// whose address is unknown here); to shut a node out, use [`QuicNetwork::refuse`]. A later
    /// membership naming an address for `id` gives it one again.
    pub fn remove_peer(&self, id: NodeId) {
        self.inner.members.configure(self, id, None);
    }

    /// Puts peer `id` at the candidate addresses `addrs` (adds it, or gives it those: see
    /// [`Candidates::replace`]; `at_once`: the application's word, a newly preferred address
    /// is used at once even if the peer's connection works); false, and nothing done, for this
    /// node's own id and for refused ids.
    pub(crate) fn place_peer(&self, id: NodeId, addrs: Candidates, at_once: bool) -> bool {
        let shared = self.shared();
        if id == shared.id {
            return false;
        }
        if shared.is_refused(id) {
            warn!(node = shared.id, peer = id, "not adding a refused (removed) node as a peer");
            return false;
        }
        let mut peers = shared.peers.write().unwrap_or_else(|p| p.into_inner());
        match peers.get(&id) {
            // A newly preferred address is probed lazily, by the next RPC (see
            // `Client::probe_if_due`): nothing is spawned from this synchronous call.
            Some(peer) => peer.set_addrs(addrs, at_once),
            None => {
                peers.insert(id, shared.new_peer(id, addrs));
            }
        }
        true
    }

    /// Drops peer `id`'s address and closes its outbound connection.
    pub(crate) fn drop_peer(&self, id: NodeId) {
        let removed = self.shared().peers.write().unwrap_or_else(|p| p.into_inner()).remove(&id);
        if let Some(peer) = removed {
            peer.close(b"peer removed");
        }
    }

    /// Refuses node `id` from now on, for good: a node removed from the cluster, whose
    /// certificate may still be valid. Its address is forgotten, every connection to or from
    /// it is closed (with [`code::REMOVED_NODE`]), later connections proving `id` are closed
    /// at once, and its requests are refused. Node ids are never reused; the refusal lasts as
    /// long as this network: persist the refused ids and pass them in
    /// [`QuicConfig::refused`] when the node restarts. Ignored for this node's own id.
    pub fn refuse(&self, id: NodeId) {
        let shared = self.shared();
        if id == shared.id {
            return;
        }
        let added = shared.refused.write().unwrap_or_else(|p| p.into_inner()).insert(id);
        self.remove_peer(id);
        for conn in shared.inbound.connections_of(id) {
            conn.close(code::REMOVED_NODE, b"node removed from the cluster");
        }
        if added {
            info!(node = shared.id, peer = id, "refusing removed node from now on");
        }
    }

    /// The refused node ids (see [`QuicNetwork::refuse`]).
    pub fn refused(&self) -> BTreeSet<NodeId> {
        self.shared().refused.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces this node's TLS material (a renewed certificate, a new trust bundle during a CA
    /// roll-over) without a restart: new connections, in both directions, use it, and the
    /// established ones are checked again against the new trust bundle: those whose peer's
    /// certificate it no longer accepts (a CA dropped from the bundle) are closed
    /// ([`code::UNTRUSTED`]); the others stay up. So are the connections whose handshake was
    /// under way (verified against the old bundle), inbound and outbound, when it completes:
    /// one the new bundle refuses is closed instead of used. Fails, keeping the current material, unless
    /// the new certificate passes the checks of [`bind`](Self::bind); warns if it expires
    /// soon. The stateless-reset and connection-id keys stay those derived from the key the
    /// endpoint was bound with.
    pub fn update_tls(&self, tls: &NodeTls) -> Result<(), BindError> {
        let shared = self.shared();
        check_own_certificate(tls, shared.id)?;
        warn_if_expiring(shared.id, tls, self.inner.cert_expiry_warning);
        let transport = &self.inner.transport;
        let server = server_config(tls, &transport.inbound, self.inner.max_incoming)?;
        let client = client_config(tls, &transport.outbound)?;
        let _serialized = lock(&self.inner.closing);
        // The server configuration first: the gate then re-checks the handshakes that began
        // before (with the old trust bundle) when they complete (see `Gate::revalidate`).
        self.inner.client.endpoint.set_server_config(Some(server));
        let anchors = tls.trust_anchors.clone();
        let trusted: Check = Arc::new(move |conn: &quinn::Connection| {
            recheck_peer(conn, &anchors, PeerRole::Node)
                .map_err(|e| format!("its certificate is no longer trusted: {e}"))
        });
        let inbound = Arc::clone(&trusted);
        let closed = self.inner.gate.revalidate(code::UNTRUSTED, move |conn| inbound(conn))
            + self.inner.client.update_tls(client, code::UNTRUSTED, trusted);
        info!(
            node = shared.id,
            closed, "TLS material replaced: new connections use it, untrusted ones were closed"
        );
        Ok(())
    }

    /// What this node sent to peer `id` so far: requests, and the frames (streams) that carried
    /// them, lone or batched, each counted once its stream took it whole; and apart, the frames
    /// the peer stopped before that (all zero for a peer never sent to or unknown; see
    /// [`PeerStats`]).
    pub fn peer_stats(&self, id: NodeId) -> PeerStats {
        self.shared().peer(id).map(|peer| peer.sent.stats()).unwrap_or_default()
    }

    /// The inbound batch frames this node refused whole, all peers together, each once when
    /// refused: a frame whose header has the batch kind and is refused (a length of 0 or above
    /// the maximum frame size), one whose structure is broken (truncated, a count of 0 or above
    /// [`MAX_BATCH_REQUESTS`](crate::frame::MAX_BATCH_REQUESTS), fewer or more bytes than its
    /// requests, a request frame with a bad header, a batch inside it), and one whose bytes
    /// did not all come within the RPC timeout. Each one's stream was reset, nothing else, and
    /// each is also one bad request ([`bad_requests_received`](Self::bad_requests_received)).
    /// Not counted here: a request of a well-formed batch refused alone (a bad request each), a
    /// batch the peer reset itself, and one refused as busy (this node had no room for it: its
    /// memory budget for the peer refused it, or kept it waiting, or the decoding thread did,
    /// past the RPC timeout).
    pub fn bad_batches_received(&self) -> u64 {
        self.shared().bad_batches.load(Ordering::Relaxed)
    }

    /// The inbound requests this node refused as bad, all peers together, each once when
    /// found: what `quic_bad_requests_total` counts, summed over its peers (see
    /// [`crate::metrics`]). A request of a well-formed batch refused alone is counted when the
    /// batch is read, whether or not its answer can be written.
    pub fn bad_requests_received(&self) -> u64 {
        self.shared().bad_requests.load(Ordering::Relaxed)
    }

    /// The answer frames on this node's batch streams that were ignored, all peers together:
    /// well-framed answers for a position nobody awaits (never part of the batch, or answered
    /// already), read but not decoded. Each is a protocol violation by the peer (logged at most
    /// once per interval per peer); the batch's other callers still get their answers. At most
    /// as many per batch as it has requests: the next one is taken for broken framing (the
    /// callers still waiting fail) and is not counted here. Frames after the last awaited
    /// answer are not read, so not counted.
    pub fn stray_answers_received(&self) -> u64 {
        self.shared().stray_answers.load(Ordering::Relaxed)
    }

    /// The inbound streams this node gave up because their peer did not take their answers
    /// (did not read them, so the stream had no flow-control credit for them) within one RPC
    /// timeout of waiting in all, all peers together: a lone request's answer, or every answer
    /// of a batch together (not one timeout per answer), each stream once. What
    /// `quic_answer_timeouts_total` counts, summed over its peers (see [`crate::metrics`]).
    /// Each such stream was reset (`code::TIMEOUT`), its handlers still running dropped and
    /// the memory of its requests released. Not counted: a stream the peer stopped itself. The
    /// waiting is the wall time of each pending write: this node's own delays while a write is
    /// pending (a busy runtime, a process pause) count against the peer too.
    pub fn answer_timeouts(&self) -> u64 {
        self.shared().answer_timeouts.load(Ordering::Relaxed)
    }

    /// The accept gate's counters: handshakes and connections now, retries, refusals, failures.
    pub fn accept_stats(&self) -> GateStats {
        self.inner.gate.stats()
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
    async fn send(&self, request: Envelope) -> Result<RpcResponse, NetworkError> {
        self.inner.client.call(request).await
    }

    /// `QuicConfig::max_frame_size` less what a request frame holds besides the request (the
    /// version byte and the sender header).
    fn max_request_bytes(&self) -> Option<u64> {
        let frame = u64::from(self.inner.client.shared.limits.max_frame_size);
        Some(frame.saturating_sub((crate::frame::HEADER_LEN - 4 + crate::frame::SENDER_LEN) as u64))
    }

    /// Takes every member's address (`ip:port`) from the membership: sets or moves the peer's
    /// address, and forgets those it took from an earlier membership for nodes that left it.
    /// Never refuses a node (see [`QuicNetwork::refuse`]); ignores empty and invalid addresses
    /// (names are not resolved here), and leaves alone the addresses of nodes the membership
    /// gives none for. This is one group's membership: with several groups, give each its own
    /// view ([`for_group`](QuicNetwork::for_group)), whose memberships are kept apart from this
    /// one's and from each other's.
    fn members_changed(&self, members: &BTreeMap<NodeId, NodeInfo>) {
        self.inner.members.apply(self, NETWORK_SOURCE, None, members);
    }
}

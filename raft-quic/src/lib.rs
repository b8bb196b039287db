//! # raft-quic
//!
//! A [`Network`](raft_core::Network) for `raft-core` over QUIC (through `quinn`) with mutual
//! TLS (through `rustls` with the `ring` provider).
//!
//! - **Transport.** One UDP endpoint per node serves inbound RPCs and dials peers. Each node
//!   keeps one outbound connection per peer, reused by every RPC it sends there (a pair of
//!   nodes thus shares two connections, one per direction, which avoids any simultaneous-dial
//!   tie-breaking). Each frame runs on its own bidirectional QUIC stream, so frames never wait
//!   for each other (no head-of-line blocking), and small frames (votes, heartbeats) get a
//!   higher send priority than bulk transfers. The small requests to one peer issued together
//!   (every group's, while a send to that peer is in progress) share one batch frame, and their
//!   answers come back on its stream as each handler finishes; a lone request waits for no
//!   timer and travels alone. A failed dial is retried with capped exponential
//!   backoff; a restarted peer's stateless reset tears down the stale connection at once.
//! - **Many groups.** All the Raft groups of a process share one network: one endpoint, one
//!   connection per peer process, one handler that routes by the envelope's group id; each
//!   group's node gets a view ([`QuicNetwork::for_group`]) that keeps its membership's
//!   addresses apart. Bulk requests to a peer share a window, taking turns by group, that
//!   leaves room for every group's votes and heartbeats; no limit is per group.
//! - **Framing.** `u32 length | u8 version | [u64 sender] | postcard body` ([`frame`]), or a
//!   batch of such request frames (and its answers, tagged with their position), at most
//!   [`QuicConfig::max_frame_size`] (a response or answer at most
//!   [`frame::MAX_RESPONSE_FRAME_SIZE`]), checked before anything is allocated; bodies decode within
//!   a budget of elements and depth ([`bounded`]), and a request's sender is checked from its
//!   header before its body is read. The wire version policy is in [`wire`].
//! - **Identity.** A node CA signs one certificate per node, naming `node-<id>.raft`
//!   ([`node_dns_name`]) and carrying the node role ([`NODE_ROLE_OID`]); certificates without
//!   the role (clients of an application, say) are refused on both sides of every handshake.
//!   A request whose claimed sender differs from the certificate's node id is refused, and so
//!   is every connection of a node removed from the cluster ([`QuicNetwork::refuse`]).
//! - **Addresses.** [`QuicNetwork::set_peer`], or the membership: a member's
//!   [`NodeInfo::address`](raft_core::NodeInfo) (`ip:port`) becomes its peer address when the
//!   node hands its membership over (`Network::members_changed`), so adding a node needs no
//!   address plumbing and a restarted node knows every address its log holds.
//!   [`generate_cluster_certs`] creates everything needed, with the CA key in a directory of
//!   its own; [`QuicNetwork::update_tls`] swaps in renewed certificates without a restart and
//!   closes the connections of a CA dropped from the trust bundle (those whose handshake was
//!   under way too, once it completes); a connection is closed once its peer's certificate
//!   expires.
//! - **Admission.** Inbound connection attempts go through a [`Gate`]: address
//!   validation, handshake limits (per IP, per network prefix, in all) and timeout, handshakes
//!   reserved for known peers, connection slots counted after the handshake; then at most a
//!   few connections and one memory budget per node id.
//! - **Runtime.** The caller's: any `quinn::Runtime` (`QuinnTokioRuntime`,
//!   `QuinnSmolRuntime` and `QuinnAsyncStdRuntime` behind the features `tokio`, `smol` and
//!   `async-std`; they are quinn's runtimes, not raft-core's `Runtime`s of the same runtime). Timeouts use the runtime's own timers.
//!
//! ```no_run
//! # async fn demo(node: std::sync::Arc<dyn raft_core::RpcHandler>) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use raft_quic::{generate_cluster_certs, NodeTls, QuicConfig, QuicNetwork};
//!
//! // The CA key stays in `ca/`; a node needs only its own files in `certs/`.
//! let files = generate_cluster_certs("ca", "certs", [1, 2, 3])?;
//! let config = QuicConfig::new(1, "127.0.0.1:7001".parse()?, NodeTls::load(&files.dir, 1)?)
//!     .with_peer(2, "127.0.0.1:7002".parse()?)
//!     .with_peer(3, "127.0.0.1:7003".parse()?);
//! # let runtime: Arc<dyn raft_quic::quinn::Runtime> = unimplemented!();
//! let network = QuicNetwork::bind(config, runtime)?; // e.g. Arc::new(raft_quic::QuinnTokioRuntime)
//! network.serve(node); // the node, once started with `network.clone()`
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod accept;
mod backoff;
pub mod bounded;
mod bulk;
mod ca;
mod candidates;
mod cert_dirs;
pub mod certs;
mod cid;
mod client;
mod config;
pub mod expiry;
pub mod frame;
mod group;
mod handshakes;
mod identity;
mod inbound;
mod members;
mod memory;
pub mod metrics;
mod network;
mod node_tls;
mod offload;
mod outbox;
mod server;
mod timer;
pub mod tls;
pub mod wire;

pub use accept::{Gate, GateConfig, GateStats, PeerIdentity};
pub use certs::{
    ensure_cluster_certs, generate_cluster_certs, CaKind, CertError, ClientCert, ClusterCa,
    ClusterCertFiles, NodeCert, NodeCertFiles, NodeTls, NODE_CA,
};
pub use config::{QuicConfig, QuicConfigError};
pub use frame::FrameError;
pub use group::QuicGroupNetwork;
pub use identity::{
    dns_names, node_dns_name, node_id_of, peer_certificate, recheck_peer, IdentityError,
    NODE_NAME_SUFFIX, NODE_ROLE_OID,
};
pub use metrics::PeerStats;
pub use network::{BindError, QuicNetwork};
pub use tls::{PeerRole, TlsError};
pub use wire::{Refusal, WireResponse, ALPN, PROTOCOL_VERSION};

/// The `quinn` crate this network is built on, for its runtime types and for tools that speak
/// to a node directly.
pub use quinn;
/// The `rustls` crate of the TLS configurations ([`tls`]), and its certificate types.
pub use rustls;

/// quinn's async-std runtime, for [`QuicNetwork::bind`] (raft-core's node runtime of the same
/// runtime is `raft_core::runtime::AsyncStdRuntime`, a different trait).
#[cfg(feature = "async-std")]
pub use quinn::AsyncStdRuntime as QuinnAsyncStdRuntime;
/// quinn's smol runtime, for [`QuicNetwork::bind`] (raft-core's node runtime of the same runtime
/// is `raft_core::runtime::SmolRuntime`, a different trait).
#[cfg(feature = "smol")]
pub use quinn::SmolRuntime as QuinnSmolRuntime;
/// quinn's tokio runtime, for [`QuicNetwork::bind`] (raft-core's node runtime of the same
/// runtime is `raft_core::runtime::TokioRuntime`, a different trait).
#[cfg(feature = "tokio")]
pub use quinn::TokioRuntime as QuinnTokioRuntime;

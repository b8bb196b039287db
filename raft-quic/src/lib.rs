//! # raft-quic
//!
//! A [`Network`](raft_core::Network) for `raft-core` over QUIC (through `quinn`) with mutual
//! TLS (through `rustls` with the `ring` provider).
//!
//! - **Transport.** One UDP endpoint per node serves inbound RPCs and dials peers. Each node
//!   keeps one outbound connection per peer, reused by every RPC it sends there (a pair of
//!   nodes thus shares two connections, one per direction, which avoids any simultaneous-dial
//!   tie-breaking). Each RPC runs on its own bidirectional QUIC stream, so RPCs never wait for
//!   each other (no head-of-line blocking), and small frames (votes, heartbeats) get a higher
//!   send priority than bulk transfers. A failed dial is retried with capped exponential
//!   backoff; a restarted peer's stateless reset tears down the stale connection at once.
//! - **Framing.** `u32 length | u8 version | postcard body` ([`frame`]), at most
//!   [`QuicConfig::max_frame_size`], checked before anything is allocated.
//! - **Identity.** A cluster CA signs one certificate per node, naming `node-<id>.raft`
//!   ([`node_dns_name`]). Both sides verify; a request whose claimed sender differs from the
//!   certificate's node id is refused. [`generate_cluster_certs`] creates everything needed.
//! - **Runtime.** The caller's: any `quinn::Runtime` (tokio, smol and async-std behind the
//!   features of the same names). Timeouts use the runtime's own timers.
//!
//! ```no_run
//! # async fn demo(node: std::sync::Arc<dyn raft_core::RpcHandler>) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use raft_quic::{generate_cluster_certs, NodeTls, QuicConfig, QuicNetwork};
//!
//! let files = generate_cluster_certs("certs", [1, 2, 3])?;
//! let config = QuicConfig::new(1, "127.0.0.1:7001".parse()?, NodeTls::load(&files.dir, 1)?)
//!     .with_peer(2, "127.0.0.1:7002".parse()?)
//!     .with_peer(3, "127.0.0.1:7003".parse()?);
//! # let runtime: Arc<dyn raft_quic::quinn::Runtime> = unimplemented!();
//! let network = QuicNetwork::bind(config, runtime)?; // e.g. Arc::new(raft_quic::TokioRuntime)
//! network.serve(node); // the node, once started with `network.clone()`
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod backoff;
pub mod certs;
mod client;
mod config;
pub mod frame;
mod identity;
mod network;
mod node_tls;
mod server;
mod timer;
pub mod tls;
pub mod wire;

pub use certs::{
    ensure_cluster_certs, generate_cluster_certs, CertError, ClusterCa, ClusterCertFiles, NodeCert,
    NodeCertFiles, NodeTls,
};
pub use config::{ConfigError, QuicConfig};
pub use frame::FrameError;
pub use identity::{node_dns_name, IdentityError, NODE_NAME_SUFFIX};
pub use network::{BindError, QuicNetwork};
pub use tls::TlsError;
pub use wire::{Refusal, WireResponse, ALPN, PROTOCOL_VERSION};

/// The `quinn` crate this network is built on, for its runtime types and for tools that speak
/// to a node directly.
pub use quinn;

#[cfg(feature = "async-std")]
pub use quinn::AsyncStdRuntime;
#[cfg(feature = "smol")]
pub use quinn::SmolRuntime;
#[cfg(feature = "tokio")]
pub use quinn::TokioRuntime;

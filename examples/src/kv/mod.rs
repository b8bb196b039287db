//! A replicated key-value service on `raft-core`: the state machine, the client protocol, the
//! node program and the client library.
//!
//! * [`command`] and [`state`]: the log commands (put, get, delete, compare-and-swap, session
//!   registration, and the internal address-book updates of membership changes) and the state
//!   they apply to: the map, client sessions and the members' addresses, serde-serializable in
//!   full (a snapshot is the serialized state).
//! * [`state_machine`]: the `StateMachine` implementation; it reports address-book changes to a
//!   `PeerDirectory` (the node's QUIC transport).
//! * [`protocol`], [`server`], [`tls`]: the client port (one request per QUIC stream, mutual TLS
//!   against the cluster CA) and its handler: writes through the log with leader redirects,
//!   reads through ReadIndex on any node, membership requests on the leader.
//! * [`config`], [`node`], [`store`], [`fault`]: the `kv-node` program.
//! * [`connections`], [`client`]: the client library (leader discovery, retries, sessions).
//! * [`cluster`]: starting and killing `kv-node` processes on loopback (demo, benchmark, tests).

pub mod client;
pub mod cluster;
pub mod command;
pub mod config;
pub mod connections;
pub mod fault;
pub mod node;
pub mod protocol;
pub mod server;
pub mod state;
pub mod state_machine;
pub mod store;
pub mod tls;

pub use client::{ClientError, KvClient, NodeStatus};
pub use connections::{ClientOptions, Connections};

//! A replicated key-value service on `raft-core`: the state machine, the client protocol, the
//! node program and the client library.
//!
//! * [`command`], [`state`] and [`sessions`]: the log commands (put, get, delete,
//!   compare-and-swap, session registration, and the internal address-book updates of
//!   membership changes) and the state they apply to: the map, client sessions (each owned by
//!   the client certificate that opened it) and the members' addresses and tombstones,
//!   serde-serializable in full (a snapshot is the serialized state, after a format version).
//! * [`state_machine`]: the `StateMachine` implementation; it reports address-book changes to a
//!   `PeerDirectory` (the node's QUIC transport).
//! * [`protocol`], [`bounded`], [`port`], [`auth`], [`server`], [`tls`]: the client port (one
//!   request per QUIC stream, mutual TLS, decoding bounded before it allocates, answer memory
//!   bounded per connection and per node), the roles certificates grant, and the handler:
//!   writes through the log with leader redirects, reads through ReadIndex on any node,
//!   membership requests on the leader (admin certificates only).
//! * [`config`], [`node`], [`store`], [`fault`]: the `kv-node` program.
//! * [`connections`], [`client`]: the client library (leader discovery, retries, sessions).
//! * [`cluster`]: starting and killing `kv-node` processes on loopback (demo, benchmark, tests).

pub mod auth;
pub mod bounded;
pub mod client;
pub mod cluster;
pub mod command;
pub mod config;
pub mod connections;
pub mod fault;
pub mod node;
pub mod port;
pub mod protocol;
pub mod server;
pub mod sessions;
pub mod state;
pub mod state_machine;
pub mod store;
pub mod tls;

pub use client::{ClientError, KvClient, NodeStatus};
pub use connections::{ClientOptions, Connections};

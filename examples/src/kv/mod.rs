//! A replicated key-value service on `raft-core`: the state machine, the client protocol, the
//! node program and the client library.
//!
//! * [`command`] and [`state`]: the log commands (put, get, delete,
//!   compare-and-swap, session registration) and the state they apply to: the map, client
//!   sessions (`raft_core::session::SessionTable`, each owned by the client certificate that
//!   opened it) and the tombstones of
//!   removed members (derived from membership entries), serde-serializable in full (a snapshot
//!   is the serialized state, after a format version). Members' addresses are not state: they
//!   travel in the Raft membership (`NodeInfo`: Raft address, client address).
//! * [`state_machine`]: the `StateMachine` implementation; it reports members removed for good
//!   ([`state_machine::OnRemoved`]) so that the node's QUIC transport refuses them.
//! * [`protocol`], [`bounded`], [`port`], [`auth`], [`server`], [`tls`]: the client port (one
//!   request per QUIC stream, mutual TLS, decoding bounded before it allocates, answer memory
//!   bounded per connection and per node), the roles certificates grant, and the handler:
//!   writes through the log with leader redirects, reads through ReadIndex on any node,
//!   membership requests on the leader (admin certificates only).
//! * [`config`], [`node`], [`store`], [`fault`]: the `kv-node` program; [`health`] and
//!   [`metrics`]: its health (live, ready, lag) and its metrics listener.
//! * [`connections`], [`client`], [`attempt`], [`clock`]: the client library (leader
//!   discovery, retries, hedging, sessions); its attempt loop is generic over the transport
//!   (QUIC in production, in-process nodes in the simulation) and the clock.
//! * [`shard`], [`router`], [`balancer`]: the sharded service (`kv-node --groups N`): the fixed
//!   hash of keys to groups and the number of groups a data directory was created with, the
//!   client port's dispatch to each group's [`server::ClientService`], and the leadership
//!   balancer that spreads the groups' leaders over the nodes.
//! * [`cluster`]: starting and killing `kv-node` processes on loopback (demo, benchmark, tests).

pub mod attempt;
pub mod auth;
pub mod balancer;
pub mod bounded;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod cluster_id;
pub mod command;
pub mod config;
pub mod connections;
pub mod fault;
pub mod health;
pub mod metrics;
pub mod node;
pub mod port;
pub mod protocol;
pub mod router;
pub mod server;
pub mod shard;
pub mod state;
pub mod state_machine;
pub mod store;
#[cfg(test)]
mod testing;
pub mod tls;

pub use client::{ClientError, KvClient, NodeStatus};
pub use connections::{ClientOptions, Connections};

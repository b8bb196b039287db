//! # raft-core
//!
//! The Raft consensus algorithm as a library: a sans-IO protocol [`engine`], the async
//! [`LogStore`], [`Network`] and [`StateMachine`] traits an application plugs in, and a [`Node`]
//! handle that drives the engine on any async runtime (through the [`Runtime`] trait).
//!
//! `raft-core` depends on no async runtime. Adapters for tokio, smol and async-std are behind the
//! cargo features of the same names.
//!
//! See `ARCHITECTURE.md` at the root of the repository for the design.
#![forbid(unsafe_code)]

mod batch;
pub mod config;
pub mod engine;
pub mod error;
mod ids;
pub mod membership;
pub mod message;
pub mod metrics;
pub mod multi;
pub mod network;
mod node;
pub mod quiet_log;
pub mod runtime;
pub mod session;
pub mod snapshot;
mod snapshot_meta;
pub mod state_machine;
pub mod storage;
#[cfg(feature = "testing")]
pub mod testing;
pub mod types;
mod yield_now;

pub use config::{Config, ConfigError};
pub use error::{
    BootstrapError, CommitError, FatalError, MembershipError, ProposeError, ReadIndexError,
    SnapshotError, StartError, TransferError, WriteError,
};
pub use membership::{InvalidChange, Membership, MembershipChange, NodeInfo};
pub use message::*;
pub use multi::Host;
pub use network::{Network, NetworkError, RefusalReason, RpcError, RpcHandler, RPC_ERROR_VARIANTS};
pub use node::{
    quiesced_wake_grid, Node, NodeBuilder, Proposal, StatusWatch, LATENCY_TARGET,
    QUIESCED_WAKE_GRID_MAX,
};
pub use quiet_log::QuietLog;
pub use runtime::Runtime;
pub use snapshot::{Checksum, SnapshotMeta, SnapshotStore, SnapshotStream, SnapshotWriter};
pub use state_machine::{StateMachine, StateMachineError};
pub use storage::{DurableState, LogStore, StorageError, WriteBatch};
pub use types::*;
pub use yield_now::{yield_now, YieldNow};

pub use bytes::Bytes;

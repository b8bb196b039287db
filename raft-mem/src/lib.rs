//! # raft-mem
//!
//! In-memory backends for `raft-core`, for your tests and for deterministic simulation:
//!
//! * [`MemLogStore`]: a `LogStore` whose contents survive a simulated crash (keep a clone and
//!   give it to the restarted node).
//! * [`MemSnapshotStore`]: a `SnapshotStore` that survives simulated crashes the same way.
//! * [`MemNetwork`]: an in-process `Network` with fault injection (loss, delay, reordering,
//!   duplication, partitions, disconnection) driven by one seed, and RPC/byte counters.
//! * [`harness`]: a [`harness::Cluster`] of real nodes on a real runtime with any stores and
//!   network, and the [`harness::RecordingStateMachine`]: the harness of every crate's tests.
//! * [`sim`]: a deterministic executor with virtual time ([`sim::SimRuntime`]), a whole-cluster
//!   [`sim::Simulation`] and the [`sim::InvariantChecker`] that checks the Raft safety
//!   properties after every step.
//! * [`linearizability`]: a checker of recorded client histories against a sequential model you
//!   write, with a bounded search that answers "unknown" rather than hanging.
#![forbid(unsafe_code)]

pub mod harness;
pub mod linearizability;
mod log_store;
mod network;
pub mod sim;
mod snapshot_store;

pub use log_store::MemLogStore;
pub use network::{LinkFaults, MemEndpoint, MemNetwork, NetworkStats, WireObserver};
pub use snapshot_store::MemSnapshotStore;

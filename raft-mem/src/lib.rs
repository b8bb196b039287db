//! # raft-mem
//!
//! In-memory backends for `raft-core`: a [`MemLogStore`] whose durable state survives a simulated
//! crash, and a [`MemNetwork`] that connects nodes of one process and can cut them off.
//! Use them in your own tests: they behave like the real backends, minus the disk and the wire.
#![forbid(unsafe_code)]

mod log_store;
mod network;

pub use log_store::MemLogStore;
pub use network::{MemEndpoint, MemNetwork};

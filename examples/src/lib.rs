//! Shared code of the example programs.
#![forbid(unsafe_code)]

pub mod bench;
pub mod kv;
pub mod linearizability;

use async_trait::async_trait;
use raft_core::{Bytes, Entry, StateMachine, StateMachineError};

/// A state machine that does nothing and answers every entry with an empty response (for
/// benchmarks that measure the replication path alone).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopStateMachine;

#[async_trait]
impl StateMachine for NoopStateMachine {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        Ok(vec![Bytes::new(); entries.len()])
    }
}

/// The Rust snippets of the repository's README, compiled by `cargo test --doc -p examples` so
/// that they cannot rot unnoticed (they start nodes, so they are `no_run`).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

//! The `StateMachine` trait: the application's replicated state.

use async_trait::async_trait;
use bytes::Bytes;

use crate::types::Entry;

/// An error from a [`StateMachine`]. The node stops applying and shuts down: entries must apply in
/// order, so it cannot skip the one that failed.
#[derive(Debug, thiserror::Error)]
#[error("state machine error: {message}")]
pub struct StateMachineError {
    /// What went wrong.
    pub message: String,
}

impl StateMachineError {
    /// Creates an error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into() }
    }
}

/// The application's deterministic state machine.
///
/// The node calls [`apply`](StateMachine::apply) with committed entries, in log order, without
/// gaps, each entry exactly once per node lifetime (a restarted node applies again from the
/// beginning of its log until snapshots are configured). Every node applies the same entries in
/// the same order, so `apply` must be deterministic: the same entries on the same state give the
/// same state and the same responses.
///
/// Snapshot and restore will be added as provided methods with defaults, so implementations of
/// this trait keep compiling when they arrive.
#[async_trait]
pub trait StateMachine: Send + 'static {
    /// Applies `entries` (consecutive, committed, in order) and returns exactly one response per
    /// entry, in the same order. Entries the library appended itself ([`Entry::command`] is
    /// `None`) must be answered too, usually with an empty response. The responses go back to the
    /// proposers on the node that proposed each entry.
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError>;
}

#[async_trait]
impl<S: StateMachine + ?Sized> StateMachine for Box<S> {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        (**self).apply(entries).await
    }
}

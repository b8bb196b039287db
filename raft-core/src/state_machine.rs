//! The `StateMachine` trait: the application's replicated state.

use async_trait::async_trait;
use bytes::Bytes;

pub use crate::error::StateMachineError;
use crate::snapshot_meta::{SnapshotMeta, SnapshotStream};
use crate::types::{Entry, LogId};

/// The application's deterministic state machine.
///
/// The node calls [`apply`](StateMachine::apply) with committed entries, in log order, without
/// gaps, each entry exactly once per node lifetime. Every node applies the same entries in the
/// same order, so `apply` must be deterministic: the same entries on the same state give the
/// same state and the same responses.
///
/// # Snapshots
///
/// [`snapshot`](StateMachine::snapshot) and [`restore`](StateMachine::restore) are provided
/// methods: a state machine that does not override them never has a snapshot taken, and its
/// node never compacts its log (a restarted node applies its whole log again). With a
/// [`SnapshotStore`](crate::SnapshotStore) given to the node and these methods implemented, the
/// node takes snapshots by policy (see [`Config`](crate::Config)) and compacts its log; a
/// restarted node restores the latest snapshot and applies only the entries after it.
///
/// Every call (`apply`, `snapshot`, `restore`) comes from one task, in log order: a `restore`
/// is on the same ordered path as the entries, so after `restore(meta, ..)` the next entry
/// applied is `meta.last_included.index + 1`, and no entry at or below it is applied again.
///
/// # Re-entrancy
///
/// The node waits for each call to return before it applies anything else, so a call must not
/// wait for something that needs the state machine to move on. Inside `apply`, `snapshot` or
/// `restore`, never await (directly, or through a task the call waits for):
///
/// * [`Node::read_index`](crate::Node::read_index): the read is answered once the state machine
///   has applied the read index, which may be after the entries being applied;
/// * [`Proposal::response`](crate::Proposal::response) (or a `propose` that waits for room, which
///   the node gives once entries are applied);
/// * [`Node::shutdown`](crate::Node::shutdown): it waits for this very task to end;
/// * `change_membership` and `add_voter`, which wait for their entry to be applied.
///
/// Awaited directly inside the call (polled by the node's own apply task), these fail at once
/// with an `InsideStateMachine` error instead, and `shutdown` only asks the node to stop. Awaited
/// through another task that the call waits for (a spawned task's join handle, a channel), the
/// node cannot tell: that deadlocks the node (entries stop being applied, proposals wait
/// forever). `propose` is allowed, but waits (forever) if the leader's unapplied backlog is full.
/// Hand such work to a task that the call does not wait for.
///
/// # Panics
///
/// A panic in any of these methods is caught: the node stops as after an error, with
/// [`FatalError::Panicked`](crate::FatalError::Panicked) naming it (a leader so stopped stops
/// heartbeating, and the cluster elects another).
#[async_trait]
pub trait StateMachine: Send + 'static {
    /// Applies `entries` (consecutive, committed, in order) and returns exactly one response per
    /// entry, in the same order. Entries the library appended itself ([`Entry::command`] is
    /// `None`) must be answered too, usually with an empty response. The responses go back to the
    /// proposers on the node that proposed each entry.
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError>;

    /// For a state machine that persists its own state: the last entry it holds the effect of
    /// (the `log_id` of the last entry applied and made durable with the state, or of the
    /// snapshot last restored), read when the node starts; `None` (the default) for a state
    /// machine that starts empty.
    ///
    /// The node then applies only the entries after it (and never one at or before it again)
    /// instead of replaying the log, and restores a snapshot only if it is newer. The entry must
    /// be one the node's stores hold, with the same term (or the latest snapshot's last entry):
    /// otherwise the node refuses to start ([`StartError::AppliedNotStored`]). A state machine
    /// that may lose its latest applies in a crash (it syncs less often than the log) reports an
    /// older entry, and the node applies the rest again.
    ///
    /// [`StartError::AppliedNotStored`]: crate::StartError::AppliedNotStored
    fn applied_index(&self) -> Option<LogId> {
        None
    }

    /// Captures the state as of the last applied entry and returns a stream that serializes it,
    /// or `None` if this state machine does not take snapshots (the default).
    ///
    /// It is called on the apply path, between two `apply` calls, so it must only *capture* the
    /// state cheaply (clone a persistent/copy-on-write structure, take an immutable handle, fork
    /// a database view); the returned stream does the expensive serialization in the node's
    /// snapshot task while entries keep being applied. The stream must yield the state as of
    /// this call, whatever is applied afterwards. The node writes the stream's chunks to its
    /// [`SnapshotStore`](crate::SnapshotStore) as they come, so memory is bounded by the chunk
    /// size the stream chooses.
    async fn snapshot(&mut self) -> Result<Option<SnapshotStream>, StateMachineError> {
        Ok(None)
    }

    /// Replaces the whole state with the snapshot described by `meta`, whose data `data` yields
    /// in order (exactly what a [`snapshot`](StateMachine::snapshot) stream produced, possibly in
    /// other chunk sizes). After it returns, the next entry applied is
    /// `meta.last_included.index + 1`. The stream fails (yields an error) if the stored data is
    /// corrupt; `restore` should then return that error.
    ///
    /// The default fails: a state machine that takes no snapshots is never asked to restore one
    /// unless its node was given a snapshot store that holds snapshots from elsewhere.
    async fn restore(
        &mut self,
        meta: &SnapshotMeta,
        data: SnapshotStream,
    ) -> Result<(), StateMachineError> {
        let _ = data;
        Err(StateMachineError::new(format!(
            "this state machine cannot restore snapshots (asked for {:?})",
            meta.last_included
        )))
    }
}

#[async_trait]
impl<S: StateMachine + ?Sized> StateMachine for Box<S> {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        (**self).apply(entries).await
    }
    fn applied_index(&self) -> Option<LogId> {
        (**self).applied_index()
    }
    async fn snapshot(&mut self) -> Result<Option<SnapshotStream>, StateMachineError> {
        (**self).snapshot().await
    }
    async fn restore(
        &mut self,
        meta: &SnapshotMeta,
        data: SnapshotStream,
    ) -> Result<(), StateMachineError> {
        (**self).restore(meta, data).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::error::Error;

    use super::StateMachineError;

    #[test]
    fn an_error_keeps_its_source() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "state file gone");
        let error = StateMachineError::with_source("cannot open the state", io);
        let source = error.source().unwrap();
        let io = source.downcast_ref::<std::io::Error>().unwrap();
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
        assert!(StateMachineError::new("plain").source().is_none());
    }
}

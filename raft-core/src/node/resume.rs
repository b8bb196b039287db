//! Resuming a state machine that persists its own state (`StateMachine::applied_index`).

use crate::error::StartError;
use crate::snapshot::SnapshotMeta;
use crate::storage::DurableState;
use crate::types::{Entry, LogId};

/// Checks that the stores hold `applied`, the last entry the state machine says it holds the
/// effect of: the stored log (`entries`, after `durable.purged`) holds it with its term, or it is
/// the log's compaction point or the last entry of `snapshot`. A state machine ahead of or
/// beside the stores cannot be resumed.
pub(super) fn check(
    applied: LogId,
    durable: &DurableState,
    entries: &[Entry],
    snapshot: Option<&SnapshotMeta>,
) -> Result<(), StartError> {
    let position = applied.index.checked_sub(durable.first_index());
    let stored = position.and_then(|p| usize::try_from(p).ok()).and_then(|p| entries.get(p));
    let in_log = stored.is_some_and(|e| e.log_id() == applied);
    let in_snapshot = snapshot.is_some_and(|m| m.last_included == applied);
    if in_log || in_snapshot || applied == durable.purged {
        return Ok(());
    }
    Err(StartError::AppliedNotStored {
        applied,
        purged: durable.purged,
        log_last: durable.last,
        snapshot: snapshot.map(|m| m.last_included),
    })
}
